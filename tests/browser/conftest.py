"""The real app served on a free port, driven by Debian's headless Chromium through Playwright.

The app is `lora_ui.ui.build_ui` over a real context: the ModelManager's default model (the demo model
in models/Stable-diffusion/lora-ui-demo/ when it exists, else the built-in tiny SD1 pipeline), the real
Worker, and a real LoraLibrary over a temporary LoRA folder holding kohya LoRAs written for the loaded
UNet. Browser tests FAIL (never skip) when the browser or Playwright is missing. A failing test leaves a
screenshot in test-artifacts/.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]
ARTIFACTS = ROOT / "test-artifacts"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """(url, ctx, lora folder) of the running app; closed at the end of the session."""
    from lora_ui.ui.devserver import build_dev_context, launch

    ctx = build_dev_context(tmp_path_factory.mktemp("browser-app"))
    demo, url = launch(ctx)
    yield SimpleNamespace(url=url, ctx=ctx, lora_dir=ctx.lora_dir)
    demo.close()
    ctx.worker.shutdown()


@pytest.fixture(scope="session")
def browser():
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); browser tests need it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def page(browser, app_server, request):
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # these machines are shared and often loaded
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(app_server.url)
    page.wait_for_selector("#txt2img_prompt textarea")
    yield page
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True, animations="disabled")
    context.close()
