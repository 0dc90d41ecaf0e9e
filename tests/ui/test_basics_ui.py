"""UI handlers of the checkpoint/VAE pickers, styles, embeddings and the X/Y/Z panel over a real
ModelManager + Worker (tiny models), without a browser."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    from lora_ui.engine import devices
    from lora_ui.engine.checkpoints import ModelManager
    from lora_ui.engine.worker import Worker
    from lora_ui.testing.ldm_export import vae_state_dict
    from lora_ui.testing.tiny_models import tiny_sd1_pipeline

    root = tmp_path_factory.mktemp("basics-ui")
    ckpts = root / "models" / "Stable-diffusion"
    tiny_sd1_pipeline(0).save_pretrained(ckpts / "tiny-a")
    tiny_sd1_pipeline(5).save_pretrained(ckpts / "tiny-b")
    (root / "models" / "VAE").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in vae_state_dict(tiny_sd1_pipeline(9).vae).items()},
              str(root / "models" / "VAE" / "v.safetensors"))
    (root / "embeddings").mkdir()
    save_file({"emb_params": torch.ones(2, 32)}, str(root / "embeddings" / "shiny.safetensors"))
    (root / "styles.csv").write_text("name,prompt,negative_prompt\nink,ink drawing of {prompt},colour\n")
    saved = []
    settings = SimpleNamespace(data_dir=root, ckpt_dirs=[ckpts], demo_model_dir=root / "none",
                               vae_dirs=[root / "models" / "VAE"], embeddings_dirs=[root / "embeddings"],
                               styles_path=root / "styles.csv", sd_model_checkpoint=None, sd_vae="Automatic",
                               save=lambda: saved.append(1), limits=None)
    models = ModelManager(settings, device_choice=devices.choose("cpu", "fp32"))
    models.switch("tiny-a")
    worker = Worker.for_model_manager(models)
    yield SimpleNamespace(settings=settings, models=models, library=None, worker=worker, saved=saved)
    worker.shutdown()


def test_checkpoint_picker_lists_switches_and_remembers(ctx):
    from lora_ui.ui.basics import ModelBarHandlers

    h = ModelBarHandlers(ctx, poll_seconds=0.01)
    titles = h.checkpoint_titles()
    assert titles[0].startswith("tiny-a [") and any(t.startswith("tiny-b") for t in titles)
    steps = list(h.switch_checkpoint("tiny-b", "a cat"))
    dropdown, status = steps[-1]
    assert ctx.models.current.name == "tiny-b"
    assert dropdown["value"] == ctx.models.current.title and "Loaded tiny-b [" in status
    assert ctx.settings.sd_model_checkpoint == ctx.models.current.title and ctx.saved
    assert list(h.switch_checkpoint(ctx.models.current.title, ""))[-1][1] == ""  # the current one: nothing to do
    list(h.switch_checkpoint(titles[0], ""))
    assert ctx.models.current.name == "tiny-a"


def test_vae_picker_sets_the_selection(ctx):
    from lora_ui.ui.basics import ModelBarHandlers

    h = ModelBarHandlers(ctx)
    assert h.vae_choices() == ["Automatic", "None", "v.safetensors"]
    assert "VAE: v.safetensors" in h.switch_vae("v.safetensors")
    assert ctx.models.vaes.selection == "v.safetensors" == ctx.settings.sd_vae
    h.switch_vae("Automatic")
    assert ctx.models.vaes.selection == "Automatic"


def test_styles_apply_and_save(ctx):
    from lora_ui.ui.basics import StyleHandlers

    h = StyleHandlers(ctx)
    assert h.names() == ["ink"]
    prompt, negative, cleared = h.apply(["ink"], "a cat", "blurry")
    assert (prompt, negative, cleared["value"]) == ("ink drawing of a cat", "blurry, colour", [])
    update = h.save("cats", "a cat", "dogs")
    assert update["choices"] == ["ink", "cats"]
    assert "cats,a cat,dogs" in (ctx.settings.styles_path).read_text(encoding="utf-8-sig")


def test_embedding_cards_and_insert(ctx):
    from lora_ui.ui.basics import EmbeddingHandlers

    h = EmbeddingHandlers(ctx)
    assert h.rows() == [["shiny", "2 vectors · 32"]]
    assert h.insert(["shiny", ""], "a cat") == "a cat, shiny"
    assert h.insert(["shiny", ""], "") == "shiny"


def test_xyz_panel_renders_a_grid_and_its_cells(ctx):
    from lora_ui.ui.basics import XyzHandlers

    h = XyzHandlers(ctx, poll_seconds=0.01)
    fields = dict(prompt="a cat", sampler="Euler", steps=2, seed=5, save_images=False)
    out = list(h.run(fields, [("Steps", "1-2"), ("CFG Scale", "3, 7"), ("Nothing", "")]))
    gallery, infotext, _ = out[-1]
    assert len(gallery) == 5 and "X Type: Steps" in infotext and "Y Type: CFG Scale" in infotext
    grid, last = np.asarray(gallery[0][0]), np.asarray(gallery[4][0])
    h_, w_ = last.shape[:2]
    assert np.array_equal(grid[-h_:, -w_:], last)  # the grid's bottom-right cell is the last cell
