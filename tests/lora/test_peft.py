"""A plain kohya LoRA gives the same image as diffusers+peft (`load_lora_weights`) at the same scale."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from lora_ui.lora.manager import LoraManager
from lora_ui.lora.spec import LoraSpec
from lora_ui.testing.tiny_models import tiny_sd1_pipeline, tiny_sdxl_pipeline
from tests.lora import files

WEIGHT = 0.7


@pytest.mark.parametrize("build", [tiny_sd1_pipeline, tiny_sdxl_pipeline], ids=["sd1", "sdxl"])
@pytest.mark.parametrize("mode", ["fast", "lowmem"])
def test_same_image_as_diffusers_peft(build, mode, tmp_path):
    pipe = build(0)
    # 4-D factors on SD1's 1x1 proj convs: diffusers' kohya converter expects conv-shaped factors.
    sd, truth = files.make_lora(pipe, convention="kohya", alpha=4.0, sd1_linear_proj=False)
    path = files.save(sd, tmp_path / "k.safetensors")
    base = files.render(pipe)

    theirs = copy.deepcopy(pipe)
    theirs.load_lora_weights({k: v.clone() for k, v in sd.items()}, adapter_name="k")
    theirs.set_adapters(["k"], adapter_weights=[WEIGHT])
    n_peft = sum(1 for c in ("unet", "text_encoder", "text_encoder_2") if getattr(theirs, c, None) is not None
                 for _, m in getattr(theirs, c).named_modules() if hasattr(m, "lora_A"))
    assert n_peft == len(truth)  # diffusers took every layer, so the comparison covers them all
    reference = files.render(theirs)

    manager = LoraManager(pipe, mode=mode)
    manager.set_loras([LoraSpec(path, "k", te=WEIGHT, unet=WEIGHT)])
    ours = files.render(pipe)
    manager.clear()

    assert np.abs(reference - base).max() > 5 / 255  # the LoRA matters
    assert np.abs(ours - reference).max() <= 2 / 255
