"""The real app served on a free port, driven by Debian's headless Chromium through Playwright.

The app is `lora_ui.ui.build_ui` over a real context: the ModelManager's default model (the demo model
in models/Stable-diffusion/lora-ui-demo/ when it exists, else the built-in tiny SD1 pipeline), the real
Worker, and a real LoraLibrary over a temporary LoRA folder holding kohya LoRAs written for the loaded
UNet. Browser tests FAIL (never skip) when the browser or Playwright is missing. A failing test leaves a
screenshot in test-artifacts/.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]
ARTIFACTS = ROOT / "test-artifacts"
LORA_NAMES = ("inkwash", "papercut")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.browser)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_unet_lora(pipe, path: Path, seed: int, rank: int = 4, std: float = 0.3) -> Path:
    """A kohya LoRA (lora_down/lora_up/alpha) on every UNet attention projection of `pipe`."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in pipe.unet.named_modules():
        last = name.rsplit(".", 1)[-1]
        if ".attn" in name and (last in ("to_q", "to_k", "to_v") or name.endswith("to_out.0")):
            prefix = "lora_unet_" + name.replace(".", "_")
            out_features, in_features = module.weight.shape[:2]
            tensors[f"{prefix}.lora_down.weight"] = torch.randn(rank, in_features, generator=generator) * std
            tensors[f"{prefix}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * std
            tensors[f"{prefix}.alpha"] = torch.tensor(float(rank))
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                "ss_tag_frequency": json.dumps({"set": {"ink": 3, "wash": 2}})}
    save_file(tensors, str(path), metadata=metadata)
    return path


class BrowserSettings:
    """The settings the UI edits, saved to config.json (used while lora_ui.settings is not there)."""

    def __init__(self, config_path: Path, outputs_dir: Path) -> None:
        self.config_path = config_path
        self.default_lora_weight = 1.0
        self.card_size = 140
        self.outputs_dir = str(outputs_dir)
        self.add_lora_hashes_to_infotext = True

    def save(self) -> None:
        keys = ("default_lora_weight", "card_size", "outputs_dir", "add_lora_hashes_to_infotext")
        self.config_path.write_text(json.dumps({k: getattr(self, k) for k in keys}), encoding="utf-8")


def build_context(tmp: Path):
    from lora_ui.engine.checkpoints import ModelManager
    from lora_ui.engine.worker import Worker
    from lora_ui.library import LoraLibrary

    lora_dir = tmp / "Lora"
    lora_dir.mkdir(parents=True)
    settings = BrowserSettings(tmp / "config.json", tmp / "outputs")
    models = ModelManager(SimpleNamespace(device="cpu"))
    model = models.require()
    for i, name in enumerate(LORA_NAMES):
        write_unet_lora(model.pipe, lora_dir / f"{name}.safetensors", seed=10 + i)
    library = LoraLibrary([lora_dir], cache_dir=tmp / "cache")
    library.refresh()
    worker = Worker.for_model_manager(models, library=library, outputs_dir=tmp / "outputs")
    try:
        from lora_ui.app import AppContext

        ctx = AppContext(settings=settings, models=models, library=library, worker=worker)
    except (ImportError, TypeError):
        ctx = SimpleNamespace(settings=settings, models=models, library=library, worker=worker)
    return ctx


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """(base url, ctx, lora folder) of the running app; closed at the end of the session."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from lora_ui.ui import build_ui
    from lora_ui.ui.app import UI_CSS

    tmp = tmp_path_factory.mktemp("browser-app")
    ctx = build_context(tmp)
    demo = build_ui(ctx)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        share=False, ssr_mode=False, css=UI_CSS)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", ctx=ctx, lora_dir=tmp / "Lora")
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

    expect.set_options(timeout=20_000)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(app_server.url)
    page.wait_for_selector("#txt2img_prompt textarea")
    yield page
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True, animations="disabled")
    context.close()
