"""img2img tab handlers: ImageEditor value -> image + mask, widgets -> request, a real render on the demo model."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from PIL import Image

from lora_ui.ui.hires_fix import hires_fields
from lora_ui.ui.img2img_tab import Img2ImgHandlers, editor_image_and_mask, extras_upscale_handler, img2img_fields


def editor_value():
    background = Image.new("RGB", (64, 64), (200, 10, 10))
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (16, 16, 32, 32))
    return {"background": background, "layers": [layer], "composite": background}


def test_painted_layers_become_the_mask():
    image, mask = editor_image_and_mask(editor_value())
    assert image.size == (64, 64) and mask.mode == "L"
    arr = np.asarray(mask)
    assert arr[20, 20] == 255 and arr[0, 0] == 0 and (arr > 0).sum() == 16 * 16
    assert editor_image_and_mask({"background": Image.new("RGB", (8, 8)), "layers": []})[1] is None


def test_widget_values_to_request_fields():
    fields = img2img_fields(editor_value(), None, "Crop and resize", 0.4, 6, "latent noise", "Only masked", 16,
                            "Inpaint not masked")
    assert fields["resize_mode"] == 1 and fields["inpainting_fill"] == 2 and fields["inpaint_full_res"]
    assert fields["inpainting_mask_invert"] == 1 and fields["mask"] is not None
    assert hires_fields(False) == {}
    assert hires_fields(True, "Lanczos", 1.5, 4, 0.3)["hr_upscaler"] == "Lanczos"


def test_a_real_img2img_render_through_the_worker(tmp_path):
    from lora_ui.demo import DEMO_MODEL_DIR
    from lora_ui.demo.evaluate import load_demo_pipeline
    from lora_ui.engine.checkpoints import wrap_pipeline
    from lora_ui.engine.upscalers import Upscalers
    from lora_ui.engine.worker import Worker

    worker = Worker(wrap_pipeline(load_demo_pipeline(DEMO_MODEL_DIR), name="demo"), upscalers=Upscalers())
    try:
        ctx = SimpleNamespace(worker=worker, settings=SimpleNamespace(), models=None, library=None)
        h = Img2ImgHandlers(ctx, poll_seconds=0.01, temp_dir=tmp_path)
        outputs = list(h.generate("a red circle", "", "Euler a", "Automatic", 4, 7, 64, 64, 3, 1, 1, 1,
                                  editor_value(), None, "Just resize", 0.6, 4, "original", "Whole picture", 0,
                                  "Inpaint masked"))
        paths, infotext, seeds = outputs[-1][2], outputs[-1][3], outputs[-1][5]
        assert len(paths) == 1 and seeds == [3] and "Denoising strength: 0.6" in infotext
        out = np.asarray(Image.open(paths[0]).convert("RGB")).astype(int)
        assert np.abs(out[48:, 48:] - np.array([200, 10, 10])).max() <= 2      # outside the mask: kept
        image, info = extras_upscale_handler(ctx, Image.new("RGB", (16, 16)), "Lanczos", 2)
        assert image.size == (32, 32) and "Postprocess upscale by: 2" in info
    finally:
        worker.shutdown()
