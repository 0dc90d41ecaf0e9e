"""A1111 prompt emphasis parsing and encoding, checked against A1111's documented examples, diffusers'
own encode_prompt, and the emphasis formula written out here."""
import pytest
import torch

from lora_ui.engine.conditioning import encode_prompts, parse_prompt_attention, tokenize_chunks
from lora_ui.testing.tiny_models import clip_tokenizer, tiny_sd1_pipeline


# Examples from A1111's parse_prompt_attention docstring (modules/prompt_parser.py).
@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("[word]", [("word", 1 / 1.1)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("", [("", 1.0)]),
])
def test_parse_prompt_attention_matches_a1111(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


def test_plain_prompt_is_one_chunk_like_the_tokenizer(tok):
    chunks = tokenize_chunks(tok, "a photo of a cat, highly detailed")
    assert len(chunks) == 1
    assert chunks[0].tokens == tok("a photo of a cat, highly detailed", padding="max_length", max_length=77).input_ids
    assert chunks[0].tokens[:10] == [49406, 320, 1125, 539, 320, 2368, 267, 5302, 12609, 49407]
    assert chunks[0].multipliers == [1.0] * 77


def test_weights_land_on_their_tokens(tok):
    (chunk,) = tokenize_chunks(tok, "a (cat:1.5) [dog]")
    assert chunk.tokens[1:4] == [320, 2368, 1929]
    assert chunk.multipliers[:5] == pytest.approx([1.0, 1.0, 1.5, 1 / 1.1, 1.0])


def test_break_and_long_prompts_make_chunks(tok):
    two = tokenize_chunks(tok, "cat BREAK dog")
    assert len(two) == 2 and two[0].tokens[1:3] == [2368, 49407] and two[1].tokens[1:3] == [1929, 49407]
    long = tokenize_chunks(tok, " ".join(["cat"] * 80))
    assert len(long) == 2
    assert long[0].tokens == [49406] + [2368] * 75 + [49407]
    assert long[1].tokens[:7] == [49406] + [2368] * 5 + [49407]
    assert all(len(c.tokens) == 77 == len(c.multipliers) for c in long)


def test_chunk_breaks_at_a_recent_comma(tok):
    chunks = tokenize_chunks(tok, " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10))
    assert chunks[0].tokens[1:73] == [2368] * 70 + [267] + [49407]   # ends after the comma, then padding
    assert chunks[1].tokens[1:12] == [1929] * 10 + [49407]


@pytest.fixture(scope="module")
def sd1_pipe():
    pipe = tiny_sd1_pipeline(3)
    with torch.no_grad():  # a trained final layer norm has a non-zero bias (the hidden states' mean is not 0)
        pipe.text_encoder.final_layer_norm.bias.copy_(torch.linspace(-1.0, 2.0, 32))
    return pipe


def test_plain_prompt_equals_diffusers_encode_prompt_sd1(sd1_pipe):
    cond = encode_prompts(sd1_pipe, "sd1", "a photo of a cat", "ugly, blurry")
    pe, npe = sd1_pipe.encode_prompt("a photo of a cat", "cpu", 1, True, "ugly, blurry")
    assert torch.equal(cond.prompt_embeds, pe) and torch.equal(cond.negative_prompt_embeds, npe)
    assert cond.pooled_prompt_embeds is None


def test_plain_prompt_equals_diffusers_encode_prompt_sdxl(sdxl_model):
    pipe = sdxl_model.pipe
    cond = encode_prompts(pipe, "sdxl", "a photo of a cat", "ugly")
    pe, npe, pooled, npooled = pipe.encode_prompt("a photo of a cat", device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=True, negative_prompt="ugly")
    assert cond.prompt_embeds.shape == (1, 77, 32 + 48) and cond.pooled_prompt_embeds.shape == (1, 48)
    for mine, theirs in [(cond.prompt_embeds, pe), (cond.negative_prompt_embeds, npe),
                         (cond.pooled_prompt_embeds, pooled), (cond.negative_pooled_prompt_embeds, npooled)]:
        assert torch.equal(mine, theirs)
    empty = encode_prompts(pipe, "sdxl", "a cat", "")
    assert not empty.negative_prompt_embeds.any() and not empty.negative_pooled_prompt_embeds.any()


def test_weight_one_equals_plain_word(sd1_pipe):
    a = encode_prompts(sd1_pipe, "sd1", "a (cat:1.0) on a mat").prompt_embeds
    b = encode_prompts(sd1_pipe, "sd1", "a cat on a mat").prompt_embeds
    assert torch.equal(a, b)


def test_emphasis_follows_the_a1111_formula(sd1_pipe, tok):
    ids = torch.tensor([tok("a cat on a mat", padding="max_length", max_length=77).input_ids])
    with torch.no_grad():
        z = sd1_pipe.text_encoder(ids)[0]
    w = torch.ones(77)
    w[2] = 1.5          # "cat"
    w[5] = 1 / 1.1      # "mat"
    weighted = z * w[None, :, None]
    expected = weighted * (z.mean() / weighted.mean())
    got = encode_prompts(sd1_pipe, "sd1", "a (cat:1.5) on a [mat]").prompt_embeds
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, z, atol=1e-3)


def test_clip_skip_uses_an_earlier_layer_and_the_final_norm(sd1_pipe, tok):
    ids = torch.tensor([tok("a cat", padding="max_length", max_length=77).input_ids])
    with torch.no_grad():
        hidden = sd1_pipe.text_encoder(ids, output_hidden_states=True).hidden_states
        expected = sd1_pipe.text_encoder.final_layer_norm(hidden[-2])
    got = encode_prompts(sd1_pipe, "sd1", "a cat", clip_skip=2).prompt_embeds
    assert torch.allclose(got, expected, atol=1e-6)


def test_long_prompt_concatenates_chunks_and_pads_the_negative_with_the_empty_prompt(sd1_pipe):
    prompt = " ".join(["cat"] * 80)
    cond = encode_prompts(sd1_pipe, "sd1", prompt, "ugly")
    assert cond.prompt_embeds.shape == cond.negative_prompt_embeds.shape == (1, 154, 32)
    first = encode_prompts(sd1_pipe, "sd1", " ".join(["cat"] * 75)).prompt_embeds
    assert torch.allclose(cond.prompt_embeds[:, :77], first, atol=1e-6)
    empty = encode_prompts(sd1_pipe, "sd1", "").prompt_embeds
    ugly = encode_prompts(sd1_pipe, "sd1", "ugly").prompt_embeds
    assert torch.equal(cond.negative_prompt_embeds[:, :77], ugly)
    assert torch.equal(cond.negative_prompt_embeds[:, 77:], empty)


def test_degenerate_zero_mean_hidden_states_stay_finite():
    pipe = tiny_sd1_pipeline(0)  # untrained final layer norm: bias 0, hidden-state mean ~ 0
    cond = encode_prompts(pipe, "sd1", "a (cat:1.4)")
    assert torch.isfinite(cond.prompt_embeds).all()


def test_comma_id_is_the_vocabularys_without_copying_it(tok):
    from lora_ui.engine.conditioning import _comma_id

    class NoComma:
        unk_token_id = 3

        def convert_tokens_to_ids(self, token):
            return self.unk_token_id

        def convert_ids_to_tokens(self, token_id):
            return "<unk>"

    assert _comma_id(tok) == tok.get_vocab()[",</w>"] == 267
    assert _comma_id(NoComma()) is None
