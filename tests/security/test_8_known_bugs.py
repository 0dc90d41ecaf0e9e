"""Item 8: known bugs. (a) paste-by-hash for a LoRA whose metadata sets an alias; (b) a LoRA for another
architecture is really skipped (warning, the render goes on); (c) every vector of a multi-vector bundled
embedding reaches the text encoder through the app's own prompt encoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lora_ui.engine import conditioning
from lora_ui.engine.checkpoints import wrap_pipeline
from lora_ui.engine.txt2img import Txt2ImgRequest, generate
from lora_ui.infotext import parse_infotext, resolve_pasted_loras
from lora_ui.library import LoraLibrary
from lora_ui.library.synthetic import network_tensors, sd1_modules, sdxl_modules, write_lora
from lora_ui.lora.manager import LoraManager
from lora_ui.lora.spec import LoraSpec
from lora_ui.testing.tiny_models import tiny_sd1_pipeline
from tests.api.helpers import info_of, pixels, render
from tests.lora import files

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def sd1_pipe():
    return tiny_sd1_pipeline(0)


class _NoLoras:
    """Stands in for the LoRA manager where only the infotext matters."""

    def set_loras(self, specs):
        pass

    def on_step(self, step, total):
        pass


def _library(root, files_and_aliases, tmp_path):
    for stem, alias, seed in files_and_aliases:
        write_lora(root / f"{stem}.safetensors", network_tensors(sd1_modules(te_layers=1)[:8], "LoRA", seed=seed),
                   {"ss_output_name": alias} if alias else None)
    library = LoraLibrary([root], cache_dir=tmp_path / f"cache-{root.name}")
    library.refresh()
    return library


# ---------------------------------------------------------------------------------------------- (a)

def test_paste_by_hash_finds_a_lora_written_by_its_alias(sd1_pipe, tmp_path):
    """Rendered with `<lora:style:0.6>` (the alias of style_v2.safetensors); pasted where `style` is
    another file's name and our file is called `renamed`: the hash picks our file."""
    here = _library(tmp_path / "here", [("style_v2", "style", 1)], tmp_path)
    wanted_hash = here.resolve("style").short_hash()
    result = generate(wrap_pipeline(sd1_pipe, name="tiny"),
                      Txt2ImgRequest(prompt="a cat <lora:style:0.6>", steps=1, seed=1, sampler="Euler",
                                     save_images=False),
                      library=here, loras=_NoLoras())
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Lora hashes"] == f"style: {wanted_hash}"  # A1111: keyed by the name as written

    there = _library(tmp_path / "there", [("style", None, 7), ("renamed", "style", 1)], tmp_path)
    assert there.resolve("style").name == "style"  # a stem beats an alias: the wrong file by name
    prompt, messages = resolve_pasted_loras(parsed["Prompt"], parsed["Lora hashes"], there)
    assert prompt == "a cat <lora:renamed:0.6>", messages
    assert messages == [f"<lora:style>: matched by hash {wanted_hash} to the local file 'renamed'"]

    # An image written before the fix (hash keyed by the file's stem, the prompt by its alias)
    prompt, _ = resolve_pasted_loras("a cat <lora:style:0.6>", f"style_v2: {wanted_hash}", there)
    assert prompt == "a cat <lora:renamed:0.6>"


# ---------------------------------------------------------------------------------------------- (b)

def test_lora_for_another_architecture_is_skipped_with_a_warning(api_env, client):
    path = api_env.lora_dir / "xl_only.safetensors"
    write_lora(path, network_tensors(sdxl_modules(text_encoder=False)[:6], "LoRA", seed=3),
               {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": "4"})
    body = {"prompt": "a red circle on blue <lora:alpha:0.7>", "steps": 2, "seed": 5}
    try:
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        plain = pixels(render(client, **body)["images"][0])
        r = client.post("/sdapi/v1/txt2img", json={**body, "save_images": False,
                                                    "prompt": body["prompt"] + " <lora:xl_only:1>"})
        assert r.status_code == 200, r.text
        warnings = info_of(r.json())["warnings"]
        assert any("xl_only.safetensors" in w and "SDXL" in w and "skipped" in w for w in warnings), warnings
        assert np.array_equal(pixels(r.json()["images"][0]), plain)  # alpha applied, xl_only not
        hashes = parse_infotext(info_of(r.json())["infotexts"][0]).get("Lora hashes", "")
        assert "alpha:" in hashes and "xl_only" not in hashes  # the infotext names only what was applied
    finally:
        path.unlink()
        client.post("/sdapi/v1/refresh-loras")


# ---------------------------------------------------------------------------------------------- (c)

def test_every_vector_of_a_bundled_embedding_reaches_the_text_encoder(sd1_pipe, tmp_path):
    sd, _ = files.make_lora(sd1_pipe, te=False, seed=4)
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(9))
    sd["bundle_emb.trio.string_to_param.*"] = vectors
    path = files.save(sd, tmp_path / "trio.safetensors")
    manager = LoraManager(sd1_pipe, mode="fast")
    manager.set_loras([LoraSpec(path, "trio")])
    table = sd1_pipe.text_encoder.get_input_embeddings()
    installed = table.forward
    seen: list[torch.Tensor] = []

    def spy(ids):
        seen.append(ids.clone())
        return installed(ids)

    table.forward = spy
    try:
        conditioning.encode_prompts(sd1_pipe, "sd1", "a trio cat", "")
    finally:
        table.forward = installed
    vocab, tok = table.num_embeddings, sd1_pipe.tokenizer
    a, cat = tok("a cat", add_special_tokens=False)["input_ids"]
    rows = [row.tolist() for ids in seen for row in ids]
    # the prompt's row: BOS, a, the three vectors of `trio` in order, cat, EOS
    assert [tok.bos_token_id, a, vocab, vocab + 1, vocab + 2, cat, tok.eos_token_id] in [r[:7] for r in rows]

    # Kept in one chunk: 74 words then the 3 vectors -> the embedding starts the second chunk.
    chunks = conditioning.tokenize_chunks(sd1_pipe.tokenizer, "cat " * 74 + "trio")
    assert len(chunks) == 2 and all(len(c.tokens) == 77 for c in chunks)
    assert vocab not in chunks[0].tokens and chunks[1].tokens[1:4] == [vocab, vocab + 1, vocab + 2]
    manager.clear()
