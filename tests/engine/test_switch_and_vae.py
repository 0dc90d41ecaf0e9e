"""Checkpoint switching through the worker (LRU cache, LoRAs kept) and the VAE choice (sd_vae)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora_ui.engine import devices
from lora_ui.engine.checkpoints import ModelManager
from lora_ui.engine.txt2img import Txt2ImgRequest, generate
from lora_ui.engine.vae import AUTOMATIC, NONE, VaeError, VaeManager, near_checkpoint
from lora_ui.engine.worker import Worker
from lora_ui.infotext import parse_infotext
from lora_ui.testing.ldm_export import export_single_file, vae_state_dict, write_config_folder
from lora_ui.testing.tiny_models import tiny_sd1_pipeline, tiny_sdxl_pipeline

CPU = devices.DeviceChoice(torch.device("cpu"), torch.float32)


def _req(**kw) -> Txt2ImgRequest:
    base = dict(prompt="a red circle", sampler="Euler", steps=2, seed=7, save_images=False)
    base.update(kw)
    return Txt2ImgRequest(**base)


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0])


def _lora(pipe, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in pipe.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(("to_q", "to_v")):
            prefix = "lora_unet_" + name.replace(".", "_")
            sd[f"{prefix}.lora_down.weight"] = torch.randn(4, module.in_features, generator=gen) * 0.6
            sd[f"{prefix}.lora_up.weight"] = torch.randn(module.out_features, 4, generator=gen) * 0.6
            sd[f"{prefix}.alpha"] = torch.tensor(4.0)
    return sd


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from lora_ui.library import LoraLibrary

    root = tmp_path_factory.mktemp("switch")
    ckpts = root / "Stable-diffusion"
    a = tiny_sd1_pipeline(0)
    a.save_pretrained(ckpts / "tiny-a")
    tiny_sd1_pipeline(5).save_pretrained(ckpts / "tiny-b")
    tiny_sdxl_pipeline(1).save_pretrained(ckpts / "tiny-xl")
    (root / "Lora").mkdir()
    save_file(_lora(a, 3), str(root / "Lora" / "alpha.safetensors"))
    library = LoraLibrary([root / "Lora"], cache_dir=root / "cache")
    library.refresh()
    return SimpleNamespace(root=root, ckpts=ckpts, library=library)


def _stack(env, cache: int):
    settings = SimpleNamespace(ckpt_dirs=[env.ckpts], demo_model_dir=env.root / "none", checkpoint_cache=cache,
                               vae_dirs=[env.root / "VAE"], embeddings_dirs=[env.root / "embeddings"])
    models = ModelManager(settings, device_choice=CPU)
    models.switch("tiny-a")
    return models, Worker.for_model_manager(models, library=env.library)


@pytest.mark.parametrize("cache", [1, 2])
def test_switch_a_b_a_gives_a_again_bit_for_bit(env, cache):
    models, worker = _stack(env, cache)
    try:
        first_a = models.current
        img_a = worker.txt2img(_req()).result()
        assert parse_infotext(img_a.infotexts[0])["Model"] == "tiny-a"
        report = worker.switch_checkpoint("tiny-b").result()
        assert report.model.name == "tiny-b" and models.current is report.model
        img_b = worker.txt2img(_req()).result()
        info_b = parse_infotext(img_b.infotexts[0])
        assert info_b["Model"] == "tiny-b"
        assert info_b["Model hash"] == report.model.short_hash and info_b["Model hash"] != \
            parse_infotext(img_a.infotexts[0])["Model hash"]
        assert not np.array_equal(_pixels(img_a), _pixels(img_b))
        worker.switch_checkpoint("tiny-a").result()
        again = worker.txt2img(_req()).result()
        assert np.array_equal(_pixels(again), _pixels(img_a))
        assert again.infotexts[0] == img_a.infotexts[0]
        cached = models.cached()
        assert len(cached) == cache and cached[-1] is models.current
        if cache == 1:
            assert models.current is not first_a and first_a.pipe is None  # evicted and freed, reloaded
        else:
            assert models.current is first_a  # taken from the cache: no reload
    finally:
        worker.shutdown()


def test_switch_keeps_fitting_loras_and_names_the_ones_that_do_not_fit(env):
    models, worker = _stack(env, 1)
    try:
        prompt = "a red circle <lora:alpha:1>"
        with_lora_a = worker.txt2img(_req(prompt=prompt)).result()
        report = worker.switch_checkpoint("tiny-b", prompt).result()
        assert report.kept == ["alpha"] and report.messages == []
        assert [spec.name for spec in worker.submit(lambda s: s.loras.active and [a.spec for a in s.loras.active]
                                                    or []).result()] == ["alpha"]
        report = worker.switch_checkpoint("tiny-xl", prompt).result()
        assert report.model.arch == "sdxl" and "alpha" not in report.kept
        assert len(report.messages) == 1 and "alpha" in report.messages[0] and "tiny-xl" in report.messages[0]
        report = worker.switch_checkpoint("tiny-a", prompt).result()
        assert report.kept == ["alpha"]
        again = worker.txt2img(_req(prompt=prompt)).result()
        assert np.array_equal(_pixels(again), _pixels(with_lora_a))
    finally:
        worker.shutdown()


# ------------------------------------------------------------------------------------------- VAE

@pytest.fixture(scope="module")
def vae_env(tmp_path_factory):
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("vae")
    pipe = tiny_sd1_pipeline(0)
    ckpt = export_single_file(pipe, root / "Stable-diffusion" / "tiny_sd1.safetensors")
    cfg = write_config_folder(pipe, "sd1", root / "cfg")
    other = tiny_sd1_pipeline(9).vae  # same layout, other weights
    vae_dir = root / "VAE"
    vae_dir.mkdir()
    save_file({k: v.contiguous() for k, v in vae_state_dict(other).items()}, str(vae_dir / "ldm-vae.safetensors"))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(vae_dir / "diffusers-vae.safetensors"))
    wide = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=(16, 32), latent_channels=4,
                         norm_num_groups=8, layers_per_block=1)
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(vae_dir / "xl-shaped.safetensors"))
    settings = SimpleNamespace(ckpt_dirs=[root / "Stable-diffusion"], demo_model_dir=root / "none",
                               vae_dirs=[vae_dir], embeddings_dirs=[root / "embeddings"])
    models = ModelManager(settings, device_choice=CPU)
    models.switch(ckpt, config_dir=cfg)
    worker = Worker.for_model_manager(models)
    yield SimpleNamespace(root=root, ckpt=ckpt, vae_dir=vae_dir, other=other, models=models, worker=worker)
    worker.shutdown()


def test_vae_choice_changes_the_image_and_none_restores_it(vae_env):
    worker, model = vae_env.worker, vae_env.models.current
    own = worker.txt2img(_req(vae=NONE)).result()
    ldm = worker.txt2img(_req(vae="ldm-vae.safetensors")).result()
    assert model.pipe.vae is not model.base_vae
    diffusers_keys = worker.txt2img(_req(vae="diffusers-vae.safetensors")).result()
    # independent expectation: the same render with the other pipeline's VAE module put in by hand
    model.pipe.vae = vae_env.other
    expected = generate(model, _req())
    model.pipe.vae = model.base_vae
    assert not np.array_equal(_pixels(own), _pixels(ldm))
    assert np.array_equal(_pixels(ldm), _pixels(expected))
    assert np.array_equal(_pixels(diffusers_keys), _pixels(expected))
    back = worker.txt2img(_req(vae=NONE)).result()
    assert np.array_equal(_pixels(back), _pixels(own)) and model.pipe.vae is model.base_vae
    info = parse_infotext(ldm.infotexts[0])
    file_hash = hashlib.sha256((vae_env.vae_dir / "ldm-vae.safetensors").read_bytes()).hexdigest()[:10]
    assert info["VAE"] == "ldm-vae.safetensors" and info["VAE hash"] == file_hash
    assert "VAE: ldm-vae.safetensors" in ldm.infotexts[0]
    # A1111's order: ... Model hash, Model, VAE hash, VAE ...
    line = ldm.infotexts[0].splitlines()[-1]
    assert line.index("Model: ") < line.index("VAE hash: ") < line.index("VAE: ")
    assert "VAE" not in parse_infotext(own.infotexts[0])


def test_automatic_takes_the_vae_next_to_the_checkpoint(vae_env):
    worker = vae_env.worker
    own = worker.txt2img(_req(vae=NONE)).result()
    with_file = worker.txt2img(_req(vae="ldm-vae.safetensors")).result()
    assert np.array_equal(_pixels(worker.txt2img(_req(vae=AUTOMATIC)).result()), _pixels(own))
    near = vae_env.ckpt.with_name("tiny_sd1.vae.safetensors")
    shutil.copy(vae_env.vae_dir / "ldm-vae.safetensors", near)
    try:
        assert near_checkpoint(vae_env.ckpt) == near
        auto = worker.txt2img(_req(vae=AUTOMATIC)).result()
        assert np.array_equal(_pixels(auto), _pixels(with_file))
        assert parse_infotext(auto.infotexts[0])["VAE"] == "tiny_sd1.vae.safetensors"
        vae_env.models.vaes.selection = AUTOMATIC  # the app's sd_vae when a request names none
        assert np.array_equal(_pixels(worker.txt2img(_req()).result()), _pixels(with_file))
    finally:
        near.unlink()
    assert np.array_equal(_pixels(worker.txt2img(_req(vae=AUTOMATIC)).result()), _pixels(own))


def test_a_vae_that_does_not_fit_is_refused_and_the_model_keeps_its_vae(vae_env):
    worker, model = vae_env.worker, vae_env.models.current
    with pytest.raises(VaeError, match="xl-shaped.safetensors does not fit this model"):
        worker.txt2img(_req(vae="xl-shaped.safetensors")).result()
    assert model.pipe.vae is model.base_vae and model.vae_path is None
    with pytest.raises(VaeError, match="unknown VAE 'nope.safetensors'; valid: Automatic, None, diffusers-vae"):
        worker.txt2img(_req(vae="nope.safetensors")).result()


def test_vae_listing_and_pickles(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.safetensors").write_bytes(b"")
    (tmp_path / "a.pt").write_bytes(b"")
    assert [v.name for v in VaeManager([tmp_path]).list()] == ["sub/b.safetensors"]
    assert VaeManager([tmp_path], allow_pickle=True).choices() == [AUTOMATIC, NONE, "a.pt", "sub/b.safetensors"]
    with pytest.raises(VaeError, match="pickle"):
        from lora_ui.engine.vae import read_vae_state_dict

        read_vae_state_dict(tmp_path / "a.pt", {}, allow_pickle=False)
