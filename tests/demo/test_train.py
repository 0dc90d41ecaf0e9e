"""Demo-model training on a tiny config: the loss falls, interruption resumes exactly, export loads."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lora_ui.demo.models import TINY
from lora_ui.demo.train import CKPT_NAME, STAGE_DONE, STAGE_UNET, DemoTrainer, TrainConfig, save_pipeline, train

CFG = TrainConfig(model=TINY, vae_steps=40, vae_batch=8, vae_lr=3e-3, unet_steps=40, unet_batch=8,
                  latent_pool=128, ckpt_every=10, sample_every=1000, warmup=5,
                  vae_general_steps=6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo-train")
    out = work / "model"
    trainer = train(work, out, CFG, progress=False)
    return trainer, work, out


def test_every_stage_ran_and_the_loss_fell(trained):
    trainer, _, _ = trained
    assert trainer.stage == STAGE_DONE
    assert len(trainer.losses["vae_general"]) == CFG.vae_general_steps
    vae, unet = trainer.losses["vae"], trainer.losses["unet"]
    assert len(vae) == CFG.vae_steps and len(unet) == CFG.unet_steps
    assert np.mean(vae[-8:]) < 0.85 * np.mean(vae[:8])
    assert np.mean(unet[-10:]) < np.mean(unet[:10])


def test_scaling_factor_gives_unit_latents(trained):
    trainer, _, _ = trained
    from lora_ui.demo import world
    from lora_ui.demo.train import to_unit_range

    images, _, _ = world.render_batch(np.random.default_rng(5), 64, TINY.image_size)
    with torch.no_grad():
        z = trainer.vae.encode(to_unit_range(images)).latent_dist.mean * trainer.scaling_factor
    assert z.std().item() == pytest.approx(1.0, rel=0.25)


def test_export_is_a_diffusers_folder_in_fp16(trained):
    from diffusers import StableDiffusionPipeline

    trainer, _, out = trained
    index = json.loads((out / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    for f in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
              "text_encoder/model.safetensors"):
        with safe_open(str(out / f), "pt") as st:
            assert {st.get_tensor(k).dtype for k in st.keys()} == {torch.float16}, f
    assert (out / "tokenizer" / "vocab.json").is_file() and (out / "tokenizer" / "merges.txt").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True, dtype=torch.float32)
    assert len(pipe.tokenizer) == 49408
    assert pipe.vae.config.scaling_factor == pytest.approx(trainer.scaling_factor, rel=1e-6)
    # the loaded UNet is the EMA UNet, rounded to fp16
    sd = trainer.ema_unet.state_dict()
    for k, v in pipe.unet.state_dict().items():
        torch.testing.assert_close(v, sd[k].half().float())
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a big red circle on a blue background", height=32, width=32, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert img.shape == (32, 32, 3) and np.isfinite(img).all()


def test_interrupted_run_resumes_from_its_checkpoint_and_matches(tmp_path):
    """Stop inside each stage, start a new trainer each time: it continues from the saved step and
    ends with exactly the weights of an uninterrupted run."""
    cfg = replace(CFG, vae_steps=6, unet_steps=6, vae_general_steps=4, latent_pool=16, ckpt_every=2)
    full = DemoTrainer(cfg, tmp_path / "full", progress=False)
    full.run()
    work = tmp_path / "w"
    DemoTrainer(cfg, work, progress=False).run(stop_after=3)  # inside the VAE stage
    assert (work / CKPT_NAME).exists()
    second = DemoTrainer(cfg, work, progress=False)
    assert second.load() and second.stage == "vae" and second.step == 3
    second.run(stop_after=3 + 4)  # finishes the VAE, 4 UNet steps
    third = DemoTrainer(cfg, work, progress=False)
    assert third.load() and third.stage == STAGE_UNET and third.step == 4
    third.run(stop_after=2 + 1)  # finishes the UNet, 1 generalisation step
    fourth = DemoTrainer(cfg, work, progress=False)
    assert fourth.load() and fourth.stage == "vae_general" and fourth.step == 1
    fourth.run()
    assert fourth.stage == STAGE_DONE
    for stage in ("vae", "unet", "vae_general"):
        assert fourth.losses[stage] == pytest.approx(full.losses[stage], rel=1e-5), stage
    for mine, ref in ((fourth.ema_unet, full.ema_unet), (fourth.vae, full.vae), (fourth.ema_te, full.ema_te)):
        for k, v in mine.state_dict().items():
            torch.testing.assert_close(v, ref.state_dict()[k], rtol=1e-5, atol=1e-6)


def test_train_on_a_finished_checkpoint_does_no_more_steps(tmp_path, trained):
    _, work, _ = trained
    again = DemoTrainer(CFG, work, progress=False)
    assert again.load() and again.stage == STAGE_DONE
    before = {k: v.clone() for k, v in again.unet.state_dict().items()}
    again.run()
    assert all(torch.equal(before[k], v) for k, v in again.unet.state_dict().items())


def test_offset_noise_moves_whole_channel_means(tmp_path):
    """Each (image, channel) spatial mean of plain N(0,1) noise over h*w pixels has std 1/sqrt(h*w);
    offset noise s adds an independent N(0, s^2) per (image, channel): std sqrt(s^2 + 1/(h*w))."""
    latents = torch.zeros(512, 4, 16, 16)
    stds = {}
    for strength in (0.0, 0.1):
        trainer = DemoTrainer(replace(CFG, offset_noise=strength), tmp_path / str(strength), progress=False)
        torch.manual_seed(0)
        noise = trainer.training_noise(latents)
        assert noise.shape == latents.shape
        stds[strength] = float(noise.mean(dim=(2, 3)).std())
        assert abs(float(noise.std()) - (1 + strength ** 2) ** 0.5) < 0.02
    assert abs(stds[0.0] - 1 / 16) < 0.01
    assert abs(stds[0.1] - (0.1 ** 2 + 1 / 256) ** 0.5) < 0.01
