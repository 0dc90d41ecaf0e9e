"""img2img compare (issue #16) on the demo model and its demo LoRAs, through the real Worker:
with / without the LoRA from one init image and seed, and the denoising-strength x LoRA-weight grid
(the X/Y/Z engine with its "Denoising" axis)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lora_ui import compare, xyz
from lora_ui.demo import DEMO_MODEL_DIR
from lora_ui.demo.evaluate import load_demo_pipeline
from lora_ui.engine.checkpoints import wrap_pipeline
from lora_ui.engine.img2img import Img2ImgRequest
from lora_ui.engine.txt2img import Txt2ImgRequest, generate
from lora_ui.engine.worker import Worker
from lora_ui.infotext import parse_infotext
from lora_ui.library import LoraLibrary

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a big red circle on a blue background"
LORA = "demo-dark"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    model = wrap_pipeline(load_demo_pipeline(DEMO_MODEL_DIR), name="lora-ui-demo")
    library = LoraLibrary([ROOT / "models" / "Lora"], cache_dir=tmp_path_factory.mktemp("cache"))
    library.refresh()
    w = Worker(model, library=library)
    yield w
    w.shutdown()


@pytest.fixture(scope="module")
def init(worker):
    return generate(worker.model, Txt2ImgRequest(prompt=PROMPT, seed=5, steps=8, save_images=False)).images[0]


def base(init, **kw):
    fields = dict(prompt=f"{PROMPT} <lora:{LORA}:1>", seed=11, steps=8, init_images=[init], save_images=False,
                  denoising_strength=0.75)
    return Img2ImgRequest(**{**fields, **kw})


def arr(image):
    return np.asarray(image.convert("RGB")).astype(int)


def test_img2img_compare_without_side_is_plain_img2img_and_with_side_differs(worker, init):
    result = compare.compare(worker, compare.CompareRequest(base=base(init)))
    # the without side is exactly a plain img2img render of the tagless prompt, same init and seed
    plain = worker.img2img(Img2ImgRequest(prompt=PROMPT, seed=11, steps=8, init_images=[init], save_images=False,
                                          denoising_strength=0.75)).result(300)
    assert np.array_equal(arr(result.without), arr(plain.images[0]))
    assert result.seed == 11 and f"<lora:{LORA}:1>" in result.with_prompt and "<lora:" not in result.without_prompt
    # the LoRA acts: the with side differs clearly (demo-dark darkens the picture)
    diff = np.abs(arr(result.with_lora) - arr(result.without))
    assert diff.mean() > 5 and result.stats.changed_share > 0.2
    assert arr(result.with_lora).mean() < arr(result.without).mean()
    for text in (result.without_infotext, result.with_infotext):
        params = parse_infotext(text)
        assert float(params["Denoising strength"]) == pytest.approx(0.75) and int(params["Seed"]) == 11
    assert "Lora hashes" in result.with_infotext and "Lora hashes" not in result.without_infotext


def test_strength_x_weight_grid_has_every_cell_with_its_values_in_its_infotext(worker, init):
    strengths, weights = [0.3, 0.9], [0.0, 0.5, 1.0]
    result = compare.submit_strength_weight_grid(worker, base(init), strengths, weights).result(600)
    rows, = result.images
    assert len(rows) == len(strengths) and all(len(row) == len(weights) for row in rows)
    assert result.labels[0] == ["LoRA weight: 0", "LoRA weight: 0.5", "LoRA weight: 1"]
    assert result.labels[1] == ["Denoising: 0.3", "Denoising: 0.9"]
    assert result.renders == len(strengths) * len(weights) and not result.missing
    for y, strength in enumerate(strengths):
        for x, weight in enumerate(weights):
            params = parse_infotext(result.infotexts[0][y][x])
            assert float(params["Denoising strength"]) == pytest.approx(strength)
            assert int(params["Seed"]) == 11
            if weight == 0:
                assert "<lora:" not in params["Prompt"] and "Lora hashes" not in params
            else:
                assert f"<lora:{LORA}:{weight:g}>" in params["Prompt"] and LORA in params["Lora hashes"]
    # where the LoRA acts the cells differ; a stronger denoise moves further from the init image
    for y in range(len(strengths)):
        assert np.abs(arr(rows[y][2]) - arr(rows[y][0])).mean() > 3
    assert np.abs(arr(rows[0][0]) - arr(init)).mean() < np.abs(arr(rows[1][0]) - arr(init)).mean()
    # weight-0 cells equal a plain img2img of that strength (same engine, same seed)
    plain = worker.img2img(base(init, prompt=PROMPT, denoising_strength=0.3)).result(300)
    assert np.array_equal(arr(rows[0][0]), arr(plain.images[0]))
    info = parse_infotext(result.infotext)
    assert info["X Type"] == "LoRA weight" and info["Y Type"] == "Denoising"
    assert info["Y Values"] == "0.3, 0.9"


def test_grid_and_denoising_axis_refuse_bad_input_before_rendering(worker, init):
    with pytest.raises(compare.CompareError, match="Nothing to compare"):
        compare.plan_strength_weight_grid(worker, base(init, prompt=PROMPT), [0.5], [1.0])
    with pytest.raises(compare.CompareError, match="init image"):
        compare.plan_strength_weight_grid(worker, base(init, init_images=[]), [0.5], [1.0])
    with pytest.raises(compare.CompareError, match="Denoising: 1.5"):
        compare.plan_strength_weight_grid(worker, base(init), [1.5], [1.0])
    with pytest.raises(xyz.XyzError, match="out of range"):
        xyz.plan_xyz(None, base(init), [xyz.Axis("Denoising", "-0.1, 0.5")])


def test_img2img_tab_handlers_compare_and_grid_from_the_widget_values(worker, init):
    from types import SimpleNamespace

    from lora_ui.ui.img2img_tab import Img2ImgCompareHandlers

    ctx = SimpleNamespace(worker=worker, library=worker.library, settings=SimpleNamespace(), models=None)
    handlers = Img2ImgCompareHandlers(ctx)
    # the Generate button's inputs: prompt ... clip skip, then the editor and the inpaint/resize widgets
    inputs = [f"{PROMPT} <lora:{LORA}:1>", "", "Euler a", "Automatic", 8, 7, 64, 64, 11, 1, 1, 1,
              {"background": init, "layers": []}, None, "Just resize", 0.75, 4, "original", "Whole picture", 32,
              "Inpaint masked"]
    without, with_lora, heatmap, info = handlers.compare(*inputs)
    assert np.abs(arr(with_lora) - arr(without)).mean() > 5 and heatmap.size[0] >= 256
    assert "Seed: 11" in info and "Denoising strength: 0.75" in info
    grid, text = handlers.grid("0.4, 0.8", "0, 1", *inputs)
    params = parse_infotext(text)
    assert params["X Values"] == "0, 1" and params["Y Values"] == "0.4, 0.8" and params["Y Type"] == "Denoising"
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # 2 x 2 cells of 64 px plus labels
