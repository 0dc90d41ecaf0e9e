"""A closed page cancels its render (issue #14 item 4): a long txt2img started in the page is
interrupted on the worker once the page goes away, long before it would have finished."""
from __future__ import annotations

import time

from playwright.sync_api import expect

from tests.browser.helpers import open_page

STEPS = 150        # the UI's limit (lora_ui.limits MAX_STEPS)
BATCH_COUNT = 20   # 3000 denoising steps in all: minutes on the CPU


def _poll(what, predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_closing_the_page_interrupts_its_running_render(browser, app_server):
    worker = app_server.ctx.worker
    _poll("an idle worker before the test", lambda: not worker.busy, 120)
    context, page = open_page(browser, app_server.url, 1400, 1000)
    try:
        page.locator("#txt2img_prompt textarea").fill("a long render")
        for elem_id, value in (("txt2img_steps", STEPS), ("txt2img_batch_count", BATCH_COUNT)):
            box = page.locator(f"#{elem_id} input[type=number]")
            box.fill(str(value))
            box.press("Tab")
            expect(box).to_have_value(str(value))
        page.locator("#txt2img_generate").click()

        # the render runs: a few steps done, and the job carries this page's session as its owner
        state = _poll("the render to take steps", lambda: (lambda s: s if s.job == "txt2img" and s.sampling_step >= 2
                                                           else None)(worker.progress(with_preview=False)), 120)
        assert state.sampling_steps == STEPS and state.job_count == BATCH_COUNT
        job_id = state.job_id
        assert worker.owner_of(job_id), "the UI's job was submitted without its Gradio session"
        started = time.monotonic()
        step_before_close = state.job_no * STEPS + state.sampling_step
    finally:
        context.close()  # the page goes away: its heartbeat stream closes, Gradio runs demo.unload

    _poll("the worker to go idle after the page closed", lambda: not worker.busy, 60)
    elapsed = time.monotonic() - started
    after = worker.progress(with_preview=False)
    assert after.job_id is None and after.interrupted is True  # ended by an interrupt, not by finishing
    # the render had taken `step_before_close` steps in ~its first seconds; all 3000 would take far longer
    total = STEPS * BATCH_COUNT
    assert step_before_close < total / 10
    assert worker.owner_of(job_id) is None
    assert elapsed < 60
