"""Checkpoint loading (diffusers folder, A1111 single file SD1/SDXL, pickle), detection, hashes,
listing, switching, and every bad input leaving the old model loaded and usable."""
import dataclasses
import gc
import hashlib
import json
import logging
import shutil
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora_ui.engine import checkpoints
from lora_ui.engine.checkpoints import CheckpointError, ModelManager, detect_architecture, list_checkpoints
from lora_ui.engine.txt2img import Txt2ImgRequest, generate
from lora_ui.testing.ldm_export import export_single_file, ldm_state_dict, write_config_folder
from lora_ui.testing.tiny_models import tiny_sd1_pipeline, tiny_sdxl_pipeline

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def assert_same_weights(expected_pipe, got_pipe):
    for comp in COMPONENTS:
        a, b = getattr(expected_pipe, comp, None), getattr(got_pipe, comp, None)
        if a is None:
            assert b is None
            continue
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb), comp
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{comp}.{k} changed in the round trip"


def render(model, seed=3):
    r = generate(model, Txt2ImgRequest(prompt="a cat", sampler="Euler", steps=2, seed=seed, save_images=False))
    return np.asarray(r.images[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    sd1, sdxl = tiny_sd1_pipeline(5), tiny_sdxl_pipeline(6)
    out = SimpleNamespace(root=root, sd1_pipe=sd1, sdxl_pipe=sdxl)
    out.sd1_file = export_single_file(sd1, root / "Stable-diffusion" / "tiny_sd1.safetensors")
    out.sdxl_file = export_single_file(sdxl, root / "Stable-diffusion" / "xl" / "tiny_sdxl.safetensors")
    out.sd1_cfg = write_config_folder(sd1, "sd1", root / "cfg-sd1")
    out.sdxl_cfg = write_config_folder(sdxl, "sdxl", root / "cfg-sdxl")
    out.folder = root / "Stable-diffusion" / "tiny-folder"
    sd1.save_pretrained(out.folder)
    return out


@pytest.fixture(scope="module")
def sd1_loaded(files):
    """The tiny SD1 single file, loaded once through the real path (its config folder is the override)."""
    return ModelManager().load(files.sd1_file, config_dir=files.sd1_cfg)


@pytest.fixture()
def manager(files, sd1_loaded):
    """A manager whose current model is the loaded tiny SD1 single file."""
    m = ModelManager(SimpleNamespace(ckpt_dirs=[files.root / "Stable-diffusion"], demo_model_dir=files.root / "no-demo"))
    m.set_current(sd1_loaded)
    return m


def test_single_file_sd1_round_trip_is_bit_exact(files, manager):
    model = manager.current
    assert (model.arch, model.name, model.kind, model.default_size) == ("sd1", "tiny_sd1", "single_file", 32)
    assert len(model.pipe.tokenizer) == 49408
    assert_same_weights(files.sd1_pipe, model.pipe)
    assert render(model).shape == (32, 32, 3)


def test_single_file_sdxl_round_trip_is_bit_exact(files):
    model = ModelManager().load(files.sdxl_file, config_dir=files.sdxl_cfg)
    assert model.arch == "sdxl" and type(model.pipe).__name__ == "StableDiffusionXLPipeline"
    assert model.pipe.tokenizer_2.pad_token == "!" and len(model.pipe.tokenizer_2) == 49408
    assert_same_weights(files.sdxl_pipe, model.pipe)
    assert render(model).shape == (32, 32, 3)


def test_diffusers_folder_loads(files):
    model = ModelManager().load(files.folder)
    assert (model.arch, model.name, model.kind) == ("sd1", "tiny-folder", "folder")
    assert_same_weights(files.sd1_pipe, model.pipe)


def test_single_file_and_folder_render_the_same_image(files, manager):
    folder_model = ModelManager().load(files.folder)
    assert np.array_equal(render(manager.current), render(folder_model))


def test_pickle_checkpoint_needs_allow_pickle(files, tmp_path, manager):
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": ldm_state_dict(files.sd1_pipe)}, ckpt)
    before = manager.current
    with pytest.raises(CheckpointError, match="pickle checkpoint.*--allow-pickle"):
        manager.switch(ckpt, config_dir=files.sd1_cfg)
    assert manager.current is before
    trusting = ModelManager(SimpleNamespace(allow_pickle=True))
    model = trusting.load(ckpt, config_dir=files.sd1_cfg)
    assert model.arch == "sd1"
    assert_same_weights(files.sd1_pipe, model.pipe)


def test_short_hash_is_autov2_computed_lazily(files, manager):
    model = dataclasses.replace(manager.current, _short_hash=None)
    assert model._short_hash is None
    expected = hashlib.sha256(files.sd1_file.read_bytes()).hexdigest()[:10]
    assert model.short_hash == expected
    assert model.title == f"tiny_sd1.safetensors [{expected}]"
    info = generate(model, Txt2ImgRequest(prompt="x", steps=1, seed=1, save_images=False)).infotexts[0]
    assert f"Model hash: {expected}, Model: tiny_sd1, " in info


def test_list_checkpoints_finds_files_and_folders(files, manager, tmp_path):
    (files.root / "Stable-diffusion" / "notes.txt").write_text("not a model")
    h = manager.current.short_hash  # hashed once -> shown in the title from then on
    found = list_checkpoints([files.root / "Stable-diffusion", tmp_path / "missing"])
    assert [c.filename for c in found] == ["tiny-folder", "tiny_sd1.safetensors", "xl/tiny_sdxl.safetensors"]
    by_name = {c.filename: c for c in found}
    assert by_name["tiny_sd1.safetensors"].title == f"tiny_sd1.safetensors [{h}]"
    assert by_name["xl/tiny_sdxl.safetensors"].name == "xl/tiny_sdxl"


def test_resolve_by_title_name_or_path(files, manager):
    title = f"tiny_sd1.safetensors [{manager.current.short_hash}]"
    assert manager.resolve(title) == files.sd1_file
    assert manager.resolve("tiny_sd1") == files.sd1_file
    assert manager.resolve("xl/tiny_sdxl.safetensors") == files.sdxl_file
    assert manager.resolve(str(files.folder)) == files.folder
    with pytest.raises(CheckpointError, match="'nope' not found. Known checkpoints: .*tiny_sd1.safetensors"):
        manager.resolve("nope")


def test_switch_frees_the_old_pipeline_and_notifies(files):
    manager = ModelManager()  # its own models: the module's shared one must survive
    manager.switch(files.sd1_file, config_dir=files.sd1_cfg)
    old_unet = weakref.ref(manager.current.pipe.unet)
    seen = []
    manager.on_switch(lambda m: seen.append(m.name))
    new = manager.switch(files.folder)
    gc.collect()
    assert old_unet() is None, "the old pipeline is still referenced after a switch"
    assert manager.current is new and seen == ["tiny-folder"]


def _fake_safetensors(path: Path, shapes: dict[str, tuple]) -> Path:
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


BAD_ARCHS = {
    "sd2.safetensors": ({"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
                         "cond_stage_model.model.token_embedding.weight": (4, 4)}, "Stable Diffusion 2.x"),
    "instruct.safetensors": ({"model.diffusion_model.input_blocks.0.0.weight": (8, 8, 3, 3),
                              "cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)},
                             "8 UNet input channels"),
    "refiner.safetensors": ({"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
                             "conditioner.embedders.0.model.token_embedding.weight": (4, 4)}, "SDXL refiner"),
    "lora.safetensors": ({"lora_unet_down_blocks_0_attn.lora_down.weight": (4, 8)}, "is a LoRA"),
    "other.safetensors": ({"transformer.blocks.0.weight": (4, 4)}, "architecture not recognised"),
}


@pytest.mark.parametrize("filename", list(BAD_ARCHS))
def test_unsupported_architectures_are_refused_and_the_old_model_stays(manager, tmp_path, filename):
    shapes, words = BAD_ARCHS[filename]
    path = _fake_safetensors(tmp_path / filename, shapes)
    before, pixels = manager.current, render(manager.current)
    with pytest.raises(CheckpointError) as err:
        manager.switch(path)
    assert words in str(err.value) and filename in str(err.value)
    assert manager.current is before and np.array_equal(render(manager.current), pixels)


def test_detect_architecture_from_markers():
    sd1 = {"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
           "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768]}
    sdxl = {"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
            "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
            "conditioner.embedders.1.model.token_embedding.weight": [49408, 1280]}
    assert detect_architecture(sd1) == "sd1" and detect_architecture(sdxl) == "sdxl"


def _truncated(files, tmp_path):
    data = files.sd1_file.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) - 1000])
    return path


@pytest.mark.parametrize("make, words", [
    (lambda f, t: t / "missing.safetensors", "Checkpoint not found"),
    (lambda f, t: (t / "garbage.safetensors").write_bytes(b"\x13" * 4096) and t / "garbage.safetensors",
     "not a valid .safetensors file"),
    (lambda f, t: (t / "empty.safetensors").write_bytes(b"") == 0 and t / "empty.safetensors", r"empty \(0 bytes\)"),
    (_truncated, "is truncated"),
    (lambda f, t: (t / "model.gguf").write_bytes(b"GGUF....") and t / "model.gguf", "unknown checkpoint file type"),
    (lambda f, t: (t / "lfs.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab")
     and t / "lfs.safetensors", "Git LFS pointer"),
])
def test_missing_and_corrupt_files_give_one_clear_message(files, manager, tmp_path, make, words):
    path = make(files, tmp_path)
    before, pixels = manager.current, render(manager.current)
    with pytest.raises(CheckpointError, match=words):
        manager.switch(path)
    assert manager.current is before and np.array_equal(render(manager.current), pixels)


def test_weights_that_do_not_fit_the_config_are_a_clear_error(files, manager):
    before = manager.current
    with pytest.raises(CheckpointError, match="loading as an SD1 checkpoint failed"):
        manager.switch(files.sd1_file)  # tiny weights against the real SD1.5 configs: shapes mismatch
    assert manager.current is before


def test_broken_tokenizer_is_refused(files, tmp_path):
    folder = tmp_path / "bad-tok"
    shutil.copytree(files.folder, folder)
    (folder / "tokenizer" / "tokenizer.json").unlink()
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(CheckpointError, match="tokenizer has 2 tokens, not CLIP's 49408"):
        ModelManager().load(folder)


def test_unsupported_diffusers_pipeline_class(files, tmp_path):
    folder = tmp_path / "other"
    shutil.copytree(files.folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInpaintPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="StableDiffusionInpaintPipeline diffusers folder; only"):
        ModelManager().load(folder)


def test_default_is_the_demo_model_when_present(files, tmp_path):
    demo = tmp_path / "lora-ui-demo"
    shutil.copytree(files.folder, demo)
    for name in ("vocab.json", "merges.txt"):  # the demo model ships the slow-tokenizer files
        shutil.copy(checkpoints.TOKENIZER_DIR / name, demo / "tokenizer" / name)
    model = ModelManager(SimpleNamespace(demo_model_dir=demo)).require()
    assert model.name == "lora-ui-demo" and model.kind == "folder"


def test_broken_demo_model_gets_the_demo_modules_message(files, tmp_path):
    demo = tmp_path / "lora-ui-demo"
    shutil.copytree(files.folder, demo)
    with pytest.raises(CheckpointError, match=r"demo model is incomplete: .*vocab.json is missing; rebuild it"):
        ModelManager(SimpleNamespace(demo_model_dir=demo)).require()


def test_default_falls_back_to_a_tiny_model_with_a_log_line(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lora_ui.engine.checkpoints"):
        model = ModelManager(SimpleNamespace(demo_model_dir=tmp_path / "absent")).require()
    assert model.kind == "builtin" and model.arch == "sd1" and model.short_hash is None
    assert "demo model" in caplog.text and "does not exist yet" in caplog.text


def test_shipped_configs_describe_the_real_models():
    """Instantiated on the meta device: parameter counts of SD1.5 and SDXL base (public figures)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    cfg = checkpoints.CONFIGS_DIR

    def count(module):
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        assert count(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "sd1" / "unet"))) == 859_520_964
        assert count(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "sdxl" / "unet"))) == 2_567_463_684
        assert count(AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "sd1" / "vae"))) == 83_653_863
        assert count(CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "sd1" / "text_encoder"))) == 123_060_480
        assert count(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(cfg / "sdxl" / "text_encoder_2"))) == 694_659_840
    assert json.loads((cfg / "sd1" / "vae" / "config.json").read_text())["scaling_factor"] == 0.18215
    assert json.loads((cfg / "sdxl" / "vae" / "config.json").read_text())["scaling_factor"] == 0.13025
    for arch, sub, pad in [("sd1", "tokenizer", 49407), ("sdxl", "tokenizer", 49407), ("sdxl", "tokenizer_2", 0)]:
        tok = CLIPTokenizer.from_pretrained(cfg / arch / sub)
        assert len(tok) == 49408 and tok.pad_token_id == pad


def test_remembered_checkpoint_is_used_and_a_stale_one_falls_back(files, tmp_path, caplog):
    remembered = ModelManager(SimpleNamespace(sd_model_checkpoint=str(files.folder), demo_model_dir=tmp_path / "x"))
    assert remembered.require().name == "tiny-folder"
    stale = ModelManager(SimpleNamespace(sd_model_checkpoint="gone.safetensors", demo_model_dir=tmp_path / "x"))
    with caplog.at_level(logging.WARNING, logger="lora_ui.engine.checkpoints"):
        assert stale.require().kind == "builtin"
    assert "last used checkpoint could not be loaded" in caplog.text
