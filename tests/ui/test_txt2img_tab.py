"""txt2img handlers: widgets -> Txt2ImgRequest -> worker; progress polling; seeds; bad input."""
from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from PIL import Image

from lora_ui.engine.txt2img import Txt2ImgRequest
from lora_ui.ui import txt2img_tab as t2i
from lora_ui.ui.core_access import ProgressView, progress_view
from ui.fakes import FakeWorker, make_ctx

ARGS = dict(prompt="a cat <lora:style:0.5>", negative="blurry", sampler="Euler", schedule="Karras", steps=6, cfg=5.5,
            width=32, height=0, seed=42, batch_size=1, batch_count=2, clip_skip=2)


def run(handlers: t2i.Txt2ImgHandlers, **overrides) -> list[tuple]:
    return list(handlers.generate(**{**ARGS, **overrides}))


def test_request_holds_every_widget_value(tmp_path):
    ctx = make_ctx(tmp_path)
    run(t2i.Txt2ImgHandlers(ctx, poll_seconds=0.005, temp_dir=tmp_path / "tmp"))
    (req,) = ctx.worker.requests
    assert isinstance(req, Txt2ImgRequest)
    assert (req.prompt, req.negative_prompt, req.sampler, req.scheduler, req.steps, req.cfg_scale, req.width,
            req.height, req.seed, req.batch_size, req.batch_count, req.clip_skip) == (
        "a cat <lora:style:0.5>", "blurry", "Euler", "Karras", 6, 5.5, 32, None, 42, 1, 2, 2)


def test_seed_extras_and_sampler_options_reach_the_request(tmp_path):
    from lora_ui.ui.sampling_extras import EXTRA_NAMES

    ctx = make_ctx(tmp_path)
    extras = {"subseed": 7, "subseed_strength": 0.4, "seed_resize_from_w": 24, "seed_resize_from_h": 16, "rng": "NV",
              "ensd": 31337, "eta": 0.0, "s_churn": 0.5, "s_noise": 0.9, "sigma_min": 0.1, "sigma_max": 10.0, "rho": 5.0}
    handlers = t2i.Txt2ImgHandlers(ctx, poll_seconds=0.005, temp_dir=tmp_path / "tmp")
    list(handlers.generate(*ARGS.values(), *[extras[n] for n in EXTRA_NAMES]))
    (req,) = ctx.worker.requests
    assert {n: getattr(req, n) for n in EXTRA_NAMES} == extras  # eta 0 stays 0 (not "the default")
    list(handlers.generate(*ARGS.values(), *[None if n == "eta" else extras[n] for n in EXTRA_NAMES]))
    assert ctx.worker.requests[-1].eta is None  # empty eta: the sampler's own default
    with pytest.warns(UserWarning, match="Variation strength"):
        list(handlers.generate(*ARGS.values(), *["x" if n == "subseed_strength" else extras[n] for n in EXTRA_NAMES]))
    assert len(ctx.worker.requests) == 2


def test_progress_is_yielded_while_rendering_then_gallery_and_infotext(tmp_path):
    ctx = make_ctx(tmp_path, worker=FakeWorker(step_seconds=0.03))
    outputs = run(t2i.Txt2ImgHandlers(ctx, poll_seconds=0.005, temp_dir=tmp_path / "tmp"))
    progress_texts = [o[0] for o in outputs[:-1]]
    assert any("Step " in p and "/6" in p for p in progress_texts)
    previews = [o[1] for o in outputs[:-1] if isinstance(o[1], dict) and o[1].get("value") is not None]
    assert previews and previews[0]["value"].size == (8, 8)  # the worker's preview PNG, decoded
    progress, preview, gallery, infotext, last_images, last_seeds, last_infotexts = outputs[-1]
    assert progress == "" and preview["visible"] is False
    assert len(gallery) == 1 and gallery == last_images
    with Image.open(gallery[0]) as image:  # saving was off in the fake: a temp PNG keeps the infotext
        assert image.info["parameters"] == infotext
    assert infotext.startswith("a cat <lora:style:0.5>") and "Seed: 42" in infotext
    assert last_seeds == [42] and last_infotexts == [infotext]


def test_result_warnings_become_page_warnings(tmp_path):
    ctx = make_ctx(tmp_path, worker=FakeWorker(warnings=["<lora:nope>: no LoRA named 'nope'; skipped"]))
    with pytest.warns(UserWarning, match="no LoRA named 'nope'"):
        outputs = run(t2i.Txt2ImgHandlers(ctx, poll_seconds=0.005, temp_dir=tmp_path / "tmp"))
    assert len(outputs[-1][2]) == 1  # the image still comes


def test_failed_job_warns_and_keeps_the_gallery(tmp_path):
    ctx = make_ctx(tmp_path, worker=FakeWorker(fail="out of memory"))
    with pytest.warns(UserWarning, match="Generation failed: out of memory"):
        outputs = run(t2i.Txt2ImgHandlers(ctx, poll_seconds=0.005, temp_dir=tmp_path / "tmp"))
    assert outputs[-1][2] == {"__type__": "update"}  # gallery untouched


@pytest.mark.parametrize("override, message", [
    ({"width": 30}, "width must be a multiple of 8, got 30"),
    ({"steps": 0}, "steps must be between 1 and 150"),
    ({"seed": 2.5}, "seed 2.5 is not a whole number"),
    ({"cfg": float("nan")}, "CFG scale must be between"),
    ({"batch_count": "x"}, "batch count 'x' is not a number"),
])
def test_bad_widget_values_warn_and_submit_nothing(tmp_path, override, message):
    ctx = make_ctx(tmp_path)
    with pytest.warns(UserWarning, match=message):
        outputs = run(t2i.Txt2ImgHandlers(ctx, temp_dir=tmp_path / "tmp"), **override)
    assert ctx.worker.requests == [] and len(outputs) == 1


def test_worker_refusing_the_job_warns(tmp_path):
    ctx = make_ctx(tmp_path)

    def refuse(req):
        raise RuntimeError("the worker is shut down; no new jobs are accepted")

    ctx.worker.txt2img = refuse
    with pytest.warns(UserWarning, match="worker is shut down"):
        run(t2i.Txt2ImgHandlers(ctx, temp_dir=tmp_path / "tmp"))


def test_random_and_reuse_seed(tmp_path):
    h = t2i.Txt2ImgHandlers(make_ctx(tmp_path))
    assert h.random_seed() == -1
    assert h.reuse_seed([7, 8], None) == 7
    assert h.reuse_seed([7, 8], 1) == 8
    with pytest.warns(UserWarning, match="nothing to reuse"):
        assert h.reuse_seed([], None) == {"__type__": "update"}


def test_selecting_a_gallery_image_shows_its_infotext():
    evt = SimpleNamespace(index=1)
    assert t2i.Txt2ImgHandlers.select_image(["one", "two"], evt) == ("two", 1)


def test_interrupt_calls_the_worker_and_says_when_idle(tmp_path, capsys):
    ctx = make_ctx(tmp_path)
    t2i.Txt2ImgHandlers(ctx).interrupt()
    assert ctx.worker.interrupted == 1 and "Nothing is being generated" in capsys.readouterr().out


def test_progress_text_matches_the_state():
    from lora_ui.engine.progress import ProgressState

    state = ProgressState(job_id="j", job_count=2, job_no=1, sampling_step=5, sampling_steps=20,
                          job_started_at=100.0, now=110.0)
    view = progress_view(state)
    # A1111: progress = (job_no + step/steps) / job_count; eta = elapsed / progress - elapsed
    expected_fraction = (1 + 5 / 20) / 2
    assert view.fraction == pytest.approx(expected_fraction)
    assert view.eta_s == pytest.approx(10 / expected_fraction - 10)
    assert view.text() == f"Step 5/20 · image 2/2 · 62% · ETA {10 / expected_fraction - 10:.0f} s"
    html = t2i.progress_html(view)
    assert "width:62.5%" in html and "data-step='5'" in html
    assert ProgressView(False, 0, 0, 0, 0, 0.0, 0.0, None).text() == "Waiting…"


def test_preview_png_bytes_decode():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(buf, format="PNG")
    assert t2i._png_bytes_to_image(buf.getvalue()).getpixel((0, 0)) == (9, 9, 9)


def test_ui_requests_carry_their_gradio_session_as_owner(monkeypatch):
    """The worker serves owners round-robin: a UI request names its page's session (issue #17)."""
    from lora_ui.engine.txt2img import Txt2ImgRequest
    from lora_ui.ui.txt2img_tab import with_session_owner

    monkeypatch.setattr("lora_ui.ui.session_jobs.current_session_hash", lambda: "sess-1")
    assert with_session_owner(Txt2ImgRequest(prompt="x")).owner == "sess-1"
    assert with_session_owner(Txt2ImgRequest(owner="api-user:bob")).owner == "api-user:bob"
    monkeypatch.setattr("lora_ui.ui.session_jobs.current_session_hash", lambda: None)
    assert with_session_owner(Txt2ImgRequest()).owner is None
