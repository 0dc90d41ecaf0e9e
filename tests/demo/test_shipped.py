"""The shipped demo model and demo LoRAs: complete, loadable, in budget, and doing what they say."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from lora_ui.demo import DEMO_LORA_DIR, DEMO_MODEL_DIR, check_demo_model
from lora_ui.demo.adapters import kohya_prefix
from lora_ui.demo.classify import classify
from lora_ui.demo.evaluate import lora_net, load_demo_pipeline
from lora_ui.demo.lora_train import DEMO_LORAS, render
from lora_ui.demo.paths import ROOT


@pytest.fixture(scope="module")
def pipe():
    return load_demo_pipeline(DEMO_MODEL_DIR)


def test_models_folder_fits_the_budget():
    total = sum(f.stat().st_size for f in (ROOT / "models").rglob("*") if f.is_file())
    assert total <= 30 * 1024 * 1024, f"models/ is {total / 2**20:.1f} MB"


def test_shipped_model_is_complete_and_sd1_shaped(pipe):
    check_demo_model(DEMO_MODEL_DIR)
    assert (DEMO_MODEL_DIR / "README.md").is_file()
    assert len(pipe.tokenizer) == 49408
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    names = dict(pipe.unet.named_modules())
    assert isinstance(names["down_blocks.0.attentions.0.proj_in"], torch.nn.Conv2d)  # SD1: conv proj_in
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in names
    with safe_open(str(DEMO_MODEL_DIR / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16


def test_shipped_model_follows_prompts_far_above_chance(pipe):
    """24 fixed prompts, one seed. Chance is 1/8 for the shape colour, 1/7 for the background and 1/3
    for the shape; the model card reports 96 / 96 / 82 % over 3 seeds. The bounds leave room for one
    seed's spread (a few images) while failing any model that does not follow its prompts."""
    from lora_ui.demo import world
    from lora_ui.demo.evaluate import eval_scenes, render_prompts, score

    scenes = eval_scenes()
    images = render_prompts(pipe, [world.canonical_caption(s) for s in scenes], seeds=(0,))
    result = score(images, scenes)
    assert result["colour"] >= 0.8 and result["background"] >= 0.8 and result["shape"] >= 0.6, result


@pytest.mark.parametrize("name", list(DEMO_LORAS))
def test_shipped_lora_files(pipe, name):
    spec = DEMO_LORAS[name]
    path = DEMO_LORA_DIR / f"{name}.safetensors"
    sd = load_file(str(path))
    known = {kohya_prefix("unet", n) for n, _ in pipe.unet.named_modules()} | \
            {kohya_prefix("text_encoder", n) for n, _ in pipe.text_encoder.named_modules()}
    assert {k.split(".", 1)[0] for k in sd} <= known
    assert {t.dtype for t in sd.values()} == {torch.float16}
    with safe_open(str(path), "pt") as f:
        md = f.metadata()
    assert md["ss_output_name"] == name and md["ss_base_model_version"] == "sd_v1"
    assert md["ss_network_module"] == ("networks.lora" if spec.kind == "lora" else "lycoris.kohya")
    if spec.kind != "lora":
        assert json.loads(md["ss_network_args"])["algo"] == spec.kind
    assert re.fullmatch(r"[0-9a-f]{64}", md["sshs_model_hash"])
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["activation text"] == spec.activation_text and side["sd version"] == "SD1"
    preview = Image.open(path.with_suffix(".png"))
    assert preview.size == (64, 64)


def test_demo_dark_darkens_more_with_more_weight(pipe):
    """The issue's measure (mean brightness over evaluation prompts, weight 1 <= 70 % of weight 0) on
    8 of the 24 evaluation prompts, one seed; a single very bright prompt (a white background) darkens
    less in relative terms, so one prompt alone would not be the target's measure."""
    from lora_ui.demo import world
    from lora_ui.demo.evaluate import eval_scenes

    net = lora_net(pipe, "demo-dark", DEMO_LORA_DIR / "demo-dark.safetensors")
    prompts = [world.canonical_caption(s) for s in eval_scenes()[::3]]
    b = [np.mean([render(pipe, p, seed=3, net=net, weight=w, steps=15).mean() for p in prompts])
         for w in (0.0, 0.5, 1.0)]
    assert b[0] > b[1] > b[2], b
    assert b[2] <= 0.7 * b[0], b


@pytest.mark.parametrize("name", [n for n in DEMO_LORAS if n != "demo-dark"])
def test_style_loras_grow_with_weight(pipe, name):
    spec = DEMO_LORAS[name]
    net = lora_net(pipe, name, DEMO_LORA_DIR / f"{name}.safetensors")
    change = np.zeros(3)
    for prompt in ("a big green triangle on a black background", "a small red square on a yellow background"):
        prompt = f"{spec.activation_text}, {prompt}"
        imgs = [render(pipe, prompt, seed=4, net=net, weight=w, steps=15).astype(np.float32) for w in (0.0, 0.5, 1.0)]
        change += [np.abs(i - imgs[0]).mean() for i in imgs]
    assert change[0] == 0 < change[1] < change[2], change


@pytest.mark.parametrize("name", list(DEMO_LORAS))
def test_project_engine_applies_demo_loras_like_the_trainer(pipe, name):
    """The project's LoraManager and the trainer's own adapters give the same UNet/text-encoder outputs."""
    from lora_ui.lora.manager import LoraManager
    from lora_ui.lora.spec import LoraSpec

    path = DEMO_LORA_DIR / f"{name}.safetensors"
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ids = pipe.tokenizer([f"{DEMO_LORAS[name].activation_text}, a red circle"], padding="max_length",
                         max_length=77, return_tensors="pt").input_ids

    def run():
        with torch.no_grad():
            cond = pipe.text_encoder(ids).last_hidden_state
            return cond, pipe.unet(x, torch.tensor([600]), cond).sample

    base_cond, base = run()
    net = lora_net(pipe, name, path)
    with net:
        net.set_multiplier(0.7)
        our_cond, ours = run()
    manager = LoraManager(pipe)
    manager.set_loras([LoraSpec(path=path, name=name, te=0.7, unet=0.7)])
    try:
        eng_cond, eng = run()
    finally:
        manager.clear()
    assert (ours - base).abs().mean() > 1e-3
    torch.testing.assert_close(eng_cond, our_cond, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(eng, ours, rtol=1e-4, atol=1e-5)
    after_cond, after = run()
    assert torch.equal(after, base) and torch.equal(after_cond, base_cond)


def test_shipped_demo_dark_gives_the_same_image_in_our_engine_and_in_diffusers_peft():
    """The shipped file, as a user would load it: our LoraManager on one pipeline, diffusers'
    load_lora_weights (kohya converter + peft) on a second copy; same seed, same weight -> the
    same darkened image within 2/255, and clearly darker than the base image."""
    from lora_ui.lora.manager import LoraManager
    from lora_ui.lora.spec import LoraSpec

    path = DEMO_LORA_DIR / "demo-dark.safetensors"
    prompt = "a big yellow circle on a blue background"

    def image(pipe):
        out = pipe(prompt, height=64, width=64, num_inference_steps=12, guidance_scale=7.0,
                   generator=torch.Generator().manual_seed(5), output_type="np").images[0]
        return (out * 255).round()

    ours_pipe = load_demo_pipeline(DEMO_MODEL_DIR)
    base = image(ours_pipe)
    manager = LoraManager(ours_pipe)
    manager.set_loras([LoraSpec(path=path, name="demo-dark", te=0.8, unet=0.8)])
    ours = image(ours_pipe)
    manager.clear()
    theirs_pipe = load_demo_pipeline(DEMO_MODEL_DIR)
    theirs_pipe.load_lora_weights(str(path), adapter_name="dark")
    theirs_pipe.set_adapters(["dark"], [0.8])
    theirs = image(theirs_pipe)
    assert ours.mean() < 0.85 * base.mean(), (ours.mean(), base.mean())
    assert np.abs(ours - theirs).max() <= 2, np.abs(ours - theirs).max()
    assert np.array_equal(image(ours_pipe), base)  # and our unload gives the base image back
