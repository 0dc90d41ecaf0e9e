"""Textual-inversion embeddings: A1111's formats, token substitution in the prompt encoder, TI hashes."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora_ui.engine import conditioning
from lora_ui.engine.checkpoints import wrap_pipeline
from lora_ui.engine.txt2img import Txt2ImgRequest, generate
from lora_ui.infotext import parse_infotext
from lora_ui.pickles import load_pickle_weights  # noqa: F401  (the .pt path below goes through it)
from lora_ui.testing.tiny_models import tiny_sd1_pipeline, tiny_sdxl_pipeline
from lora_ui.textual_inversion import EmbeddingError, EmbeddingLibrary, load_embedding


def _req(prompt: str, **kw) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt=prompt, sampler="Euler", steps=2, seed=11, save_images=False, **kw)


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("embeddings")
    gen = torch.Generator().manual_seed(0)
    save_file({"emb_params": torch.randn(2, 32, generator=gen)}, str(d / "twovec.safetensors"))
    save_file({"clip_l": torch.randn(3, 32, generator=gen), "clip_g": torch.randn(3, 48, generator=gen)},
              str(d / "xlemb.safetensors"))
    save_file({"<cat-toy>": torch.randn(32, generator=gen)}, str(d / "concept.safetensors"))
    torch.save({"string_to_param": {"*": torch.randn(1, 32, generator=gen)}, "step": 1500,
                "sd_checkpoint": "abcdef1234", "name": "ignored"}, d / "trained.pt")
    save_file({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, str(d / "broken.safetensors"))
    return d


@pytest.fixture(scope="module")
def sd1(emb_dir):
    model = wrap_pipeline(tiny_sd1_pipeline(0), name="tiny-sd1")
    model.embeddings = EmbeddingLibrary([emb_dir], allow_pickle=True).refresh()
    return model


def test_formats_shapes_vectors_and_steps(emb_dir):
    lib = EmbeddingLibrary([emb_dir], allow_pickle=True).refresh()
    assert set(lib.entries) == {"twovec", "xlemb", "concept", "trained"}
    assert "broken" in lib.errors and "neither" in lib.errors["broken"]
    two, xl, trained = lib.entries["twovec"], lib.entries["xlemb"], lib.entries["trained"]
    assert (two.shape, two.vectors) == (32, 2)
    assert (xl.shape, xl.vectors) == (80, 3)
    assert trained.info() == {"step": 1500, "sd_checkpoint": "abcdef1234", "sd_checkpoint_name": None,
                              "shape": 32, "vectors": 1}
    assert lib.entries["concept"].vectors == 1
    with pytest.raises(EmbeddingError, match="pickle"):
        load_embedding(emb_dir / "trained.pt", allow_pickle=False)
    assert "trained" not in EmbeddingLibrary([emb_dir]).refresh().entries


def test_loaded_and_skipped_depend_on_the_model(emb_dir, sd1):
    lib = sd1.embeddings
    loaded, skipped = lib.split(sd1)
    assert sorted(loaded) == ["concept", "trained", "twovec"]
    assert list(skipped) == ["xlemb"] and "80 wide" in skipped["xlemb"][1] and "needs 32" in skipped["xlemb"][1]
    xl = wrap_pipeline(tiny_sdxl_pipeline(0), name="tiny-xl")
    loaded, skipped = lib.split(xl)
    assert list(loaded) == ["xlemb"] and set(skipped) == {"concept", "trained", "twovec"}


def test_tokenize_chunks_places_every_vector_with_the_text_weight(sd1):
    tok = sd1.pipe.tokenizer
    hook = sd1.embeddings.substitution(sd1)
    with conditioning.token_substitution(hook):
        chunks = conditioning.tokenize_chunks(tok, "a (twovec:1.5) dog")
    plain = conditioning.tokenize_chunks(tok, "a dog")[0]
    chunk = chunks[0]
    a_id, dog_id = plain.tokens[1], plain.tokens[2]
    assert chunk.tokens[:6] == [tok.bos_token_id, a_id, 0, 0, dog_id, tok.eos_token_id]
    assert chunk.multipliers[1:5] == [1.0, 1.5, 1.5, 1.0]
    assert [(offset, key.name) for offset, key in chunk.fixes] == [(1, "twovec")]
    assert list(hook.used) == ["twovec"]
    # an embedding never straddles two chunks: 74 plain tokens + a 2-vector embedding -> next chunk
    with conditioning.token_substitution(hook):
        long = conditioning.tokenize_chunks(tok, "a " * 74 + "twovec")
    assert len(long) == 2 and long[0].fixes == [] and [o for o, _ in long[1].fixes] == [0]
    assert long[0].tokens[75] == tok.eos_token_id  # padded after the 74 tokens


def test_embedding_vectors_replace_the_token_embeddings(sd1):
    """The encoder output equals encoding with the vectors put into the input embeddings by hand."""
    pipe = sd1.pipe
    hook = sd1.embeddings.substitution(sd1)
    with conditioning.token_substitution(hook):
        z, _ = conditioning.encode_texts_with_encoder(pipe.text_encoder, pipe.tokenizer, ["a twovec dog"],
                                                      hidden_index=None, final_norm=False)
    chunk = conditioning.tokenize_chunks(pipe.tokenizer, "a ! ! dog")[0]  # "!" is token 0: the placeholder
    ids = torch.tensor([chunk.tokens])
    table = pipe.text_encoder.get_input_embeddings()
    vec = sd1.embeddings.entries["twovec"].vec
    original = table.forward

    def by_hand(x):
        out = original(x).clone()
        out[0, 2:4] = vec
        return out

    table.forward = by_hand
    try:
        expected = pipe.text_encoder(ids).last_hidden_state
    finally:
        del table.forward
    assert "forward" not in table.__dict__
    assert torch.equal(z, expected.float())


def test_two_vector_embedding_changes_the_image_and_the_infotext_has_its_hash(sd1, emb_dir):
    unknown = generate(sd1, _req("a photo of zzqqvec"))
    used = generate(sd1, _req("a photo of twovec"))
    assert not np.array_equal(np.asarray(unknown.images[0]), np.asarray(used.images[0]))
    info = parse_infotext(used.infotexts[0])
    a1111_hash = hashlib.sha256((emb_dir / "twovec.safetensors").read_bytes()).hexdigest()[:12]
    assert info["TI hashes"] == f"twovec: {a1111_hash}"
    assert f'TI hashes: "twovec: {a1111_hash}"' in used.infotexts[0]
    assert "TI hashes" not in parse_infotext(unknown.infotexts[0])
    # the negative prompt's embeddings count too; a skipped one gives a warning, not a hash
    neg = generate(sd1, _req("a photo of twovec", negative_prompt="trained, xlemb"))
    assert parse_infotext(neg.infotexts[0])["TI hashes"].startswith(f"twovec: {a1111_hash}, trained: ")
    assert any("xlemb" in w and "skipped" in w for w in neg.warnings)


def test_sdxl_embedding_uses_clip_l_and_clip_g(emb_dir):
    xl = wrap_pipeline(tiny_sdxl_pipeline(0), name="tiny-xl")
    xl.embeddings = EmbeddingLibrary([emb_dir]).refresh()
    hook = xl.embeddings.substitution(xl)
    emb = xl.embeddings.entries["xlemb"]
    assert torch.equal(hook.vectors(emb, xl.pipe.text_encoder), emb.vec["clip_l"])
    assert torch.equal(hook.vectors(emb, xl.pipe.text_encoder_2), emb.vec["clip_g"])
    plain = generate(xl, _req("a xlemb"))
    xl.embeddings = None
    words = generate(xl, _req("a xlemb"))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(words.images[0]))
    assert "TI hashes" in parse_infotext(plain.infotexts[0])
