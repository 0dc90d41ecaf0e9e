"""Hires fix sizes, upscalers (built-in and an RRDBNet through spandrel), infotext round trip, refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lora_ui.demo import DEMO_MODEL_DIR
from lora_ui.demo.evaluate import load_demo_pipeline
from lora_ui.engine.checkpoints import wrap_pipeline
from lora_ui.engine.hires import LATENT_UPSCALE_MODES, hires_request_from_infotext, target_size
from lora_ui.engine.txt2img import RequestError, Txt2ImgRequest, generate
from lora_ui.engine.upscalers import Upscalers, UpscalerError, _import_spandrel, load_model
from lora_ui.infotext import parse_infotext

PROMPT = "a big red circle on a blue background"


@pytest.fixture(scope="module")
def demo():
    return wrap_pipeline(load_demo_pipeline(DEMO_MODEL_DIR), name="lora-ui-demo")


def rrdb_file(folder, scale=4):
    """A random-weight ESRGAN (RRDBNet, old-arch keys) saved as safetensors in `folder`."""
    from safetensors.torch import save_file

    _import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tiny-x{scale}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def hires(demo, upscalers=None, **kw):
    base = dict(prompt=PROMPT, seed=11, steps=4, save_images=False, enable_hr=True, denoising_strength=0.5)
    return generate(demo, Txt2ImgRequest(**{**base, **kw}), upscalers=upscalers)


@pytest.mark.parametrize("upscaler", [*LATENT_UPSCALE_MODES, "Lanczos", "Nearest", "None"])
def test_output_is_exactly_factor_times_size(demo, upscaler):
    out = hires(demo, hr_upscaler=upscaler, hr_scale=1.5)
    assert out.images[0].size == (96, 96)
    assert np.asarray(out.images[0]).std() > 5


@pytest.mark.parametrize("rx,ry,size", [(128, 0, (128, 128)), (0, 96, (96, 96)), (128, 96, (128, 96))])
def test_resize_to_size_and_a1111_truncation(demo, rx, ry, size):
    out = hires(demo, hr_resize_x=rx, hr_resize_y=ry)
    assert out.images[0].size == size
    assert parse_infotext(out.infotexts[0])["Hires resize"] == f"{rx}x{ry}"


def test_target_size_matches_a1111():
    assert target_size(512, 512, 2.0, 0, 0).width == 1024
    t = target_size(512, 768, 1.0, 1024, 1024)      # portrait into a square: width fixed, then crop
    assert (t.to_x, t.to_y, t.width, t.height) == (1024, 1536, 1024, 1024)
    t = target_size(768, 512, 1.0, 1024, 512)
    assert (t.to_x, t.to_y, t.truncate_x, t.truncate_y, t.width, t.height) == (1024, 682, 0, 21, 1024, 512)


def test_esrgan_rrdbnet_loads_through_spandrel_and_upscales_by_its_scale(tmp_path):
    path = rrdb_file(tmp_path / "models" / "ESRGAN", scale=4)
    descriptor = load_model(path)
    assert descriptor.architecture.name == "ESRGAN" and descriptor.scale == 4
    ups = Upscalers.for_data_dir(tmp_path)
    assert ups.names() == ["None", "Lanczos", "Nearest", "tiny-x4"]
    step = ups.load(ups.find("tiny-x4"))
    small = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8))
    assert step(small).size == (96, 80)
    assert ups.resize(small, 48, 40, "tiny-x4").size == (48, 40)


def test_hires_with_an_esrgan_model(demo, tmp_path):
    rrdb_file(tmp_path / "models" / "RealESRGAN", scale=2)
    out = hires(demo, upscalers=Upscalers.for_data_dir(tmp_path), hr_upscaler="tiny-x2")
    assert out.images[0].size == (128, 128)
    assert parse_infotext(out.infotexts[0])["Hires upscaler"] == "tiny-x2"


def test_pickles_need_the_opt_in(tmp_path):
    folder = tmp_path / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    torch.save({"x": torch.zeros(1)}, folder / "old.pth")
    assert "old" not in Upscalers.for_data_dir(tmp_path).names()
    with pytest.raises(UpscalerError, match="allow-pickle"):
        load_model(folder / "old.pth")
    with pytest.raises(UpscalerError, match="not an upscaler"):
        load_model(folder / "old.pth", allow_pickle=True)


def test_infotext_round_trips_to_the_same_request_and_image(demo):
    req = dict(hr_scale=2.0, hr_upscaler="Latent (bicubic antialiased)", hr_second_pass_steps=3,
               hr_sampler_name="DPM++ 2M", hr_scheduler="Exponential", hr_prompt="a big red circle",
               hr_negative_prompt="blue", denoising_strength=0.45)
    out = hires(demo, **req)
    parsed = parse_infotext(out.infotexts[0])
    for key in ("Hires upscale", "Hires steps", "Hires upscaler", "Hires sampler", "Hires schedule type",
                "Hires prompt", "Hires negative prompt", "Denoising strength"):
        assert key in parsed, key
    back = hires_request_from_infotext(parsed)
    assert back == {"enable_hr": True, **req}
    again = hires(demo, **back)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(out.images[0]))


@pytest.mark.parametrize("field,value", [("hr_upscaler", "4x-Nothing"), ("hr_scale", 0.5), ("denoising_strength", 0),
                                         ("hr_resize_x", 100), ("hr_sampler_name", "Bogus"), ("hr_scale", 40.0)])
def test_bad_hires_fields_are_refused_by_name(demo, field, value):
    with pytest.raises(RequestError) as e:
        hires(demo, **{field: value})
    assert e.value.field == field
