"""Prompt editing / alternation / AND (reference §6) checked against A1111's documented examples, and
the per-call conditioning lookup on the tiny SD1 pipeline."""
import pytest
import torch

from lora_ui.engine.prompt_schedule import get_schedule, index_at_call, split_and, text_at_call

# A1111's documented behaviour (wiki + the examples in its prompt parser's documentation), 10 steps
# unless given. Tuples instead of lists.
DOCUMENTED = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]),
    ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
    ("[fe|||]male", [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
]


@pytest.mark.parametrize("prompt, expected", DOCUMENTED)
def test_documented_examples(prompt, expected):
    assert get_schedule(prompt, 10) == expected


def test_wiki_example_and_fractions():
    assert get_schedule("a [fantasy:cyberpunk:16] landscape", 30) == [
        (16, "a fantasy landscape"), (30, "a cyberpunk landscape")]
    assert get_schedule("a [fantasy:cyberpunk:0.25] landscape", 30) == [
        (7, "a fantasy landscape"), (30, "a cyberpunk landscape")]          # floor(0.25 * 30)
    assert get_schedule("[a:b:1.]", 30) == [(30, "a")]                      # "1." is a fraction: 30
    assert get_schedule("[a:b:100]", 30) == [(30, "a")]                     # clamped to steps
    assert get_schedule("[a:b:0]", 30) == [(30, "b")]                       # never before
    assert get_schedule("[a:b:-2]", 30) == [(30, "b")]
    assert get_schedule("[to:5] x", 10) == [(5, " x"), (10, "to x")]
    assert get_schedule("[from::5] x", 10) == [(5, "from x"), (10, " x")]


def test_second_order_steps_are_given_scaled():
    # a second-order sampler at 10 steps schedules over 20 (the caller doubles)
    assert get_schedule("[a:b:0.5]", 20) == [(10, "a"), (20, "b")]


def test_nested():
    assert get_schedule("[a:[b:c:5]:10]", 20) == [(5, "a"), (10, "a"), (20, "c")]
    assert get_schedule("[[b:c:5]:a:10]", 20) == [(5, "b"), (10, "c"), (20, "a")]
    assert get_schedule("[x|[y:z:2]]", 4) == [(1, "x"), (2, "y"), (3, "x"), (4, "z")]


def test_emphasis_is_kept_for_the_attention_parser():
    assert get_schedule("(a:1.2) [b:(c:1.1):3] (d)", 5) == [(3, "(a:1.2) b (d)"), (5, "(a:1.2) (c:1.1) (d)")]


@pytest.mark.parametrize("prompt", [
    "a \\[b:c:2\\] d", "\\(x:2\\)", "a | b", "(a|b)", "[a|b:0.5]", "[a:b:c:5]", "x\\", "[", "]", ":", "[[[", "(((",
    "[a:b:1e400]x|", "a [b:c:5", "\\",
])
def test_literal_or_unparsable_prompts_stay_as_written(prompt):
    sched = get_schedule(prompt, 8)
    assert sched == [(8, prompt)]


@pytest.mark.parametrize("prompt", [
    "[a:b:1e400]", "[a:b:-1e400]", "[" * 500 + "a" + "]" * 3, "(" * 2000, "[a|" * 300, "[:::]", "[|]", "[:1]",
    "\n[a:\nb:2]\n", "[a:b:+3]", "[a:b:.]", "[a:b:1e2]", "AND AND", ":",
])
def test_malformed_input_never_raises(prompt):
    sched = get_schedule(prompt, 8)
    assert sched and all(isinstance(end, int) and isinstance(text, str) for end, text in sched)
    assert sched[-1][0] == 8
    assert split_and(prompt)


def test_huge_and_signed_numbers():
    assert get_schedule("[a:b:1e400]", 8) == [(8, "a")]
    assert get_schedule("[a:b:+3]", 8) == [(3, "a"), (8, "b")]
    assert get_schedule("[a:b:1e2]", 8) == [(8, "a")]                       # no ".": a step number


def test_hires_pass_and_old_timelines():
    # hires pass of 10 steps after 10 base steps: integers count from the base steps, fractions from 1.0
    assert get_schedule("a [b:.5] c", 10, hires_base_steps=10) == [(10, "a b c")]
    assert get_schedule("a [b:1.5] c", 10, hires_base_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert get_schedule("a [b:13] c", 10, hires_base_steps=10) == [(3, "a  c"), (10, "a b c")]
    # before 1.6: a value below 1 is a fraction whether or not it has a "."
    assert get_schedule("[a:b:0.5]", 10, old_timelines=True) == [(5, "a"), (10, "b")]
    assert get_schedule("[a:b:3.0]", 10, old_timelines=True) == [(3, "a"), (10, "b")]
    assert get_schedule("[a:b:3.0]", 10) == [(10, "a")]


def test_per_call_lookup_boundary():
    sched = get_schedule("[b:c:10]", 20)
    assert sched == [(10, "b"), (20, "c")]
    assert [text_at_call(sched, c) for c in range(20)] == ["b"] * 11 + ["c"] * 9
    assert index_at_call(sched, 25) == 0                                    # past the end: entry 0 (A1111)


def test_alternation_per_call():
    sched = get_schedule("[x|y]", 6)
    assert [text_at_call(sched, c) for c in range(6)] == ["x", "x", "y", "x", "y", "x"]


@pytest.mark.parametrize("prompt, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
    ("a cat :1.5 AND a dog:0.5", [("a cat", 1.5), (" a dog", 0.5)]),
    ("a:-.5 AND b : 2. AND c:1.2.3", [("a", -0.5), (" b", 2.0), (" c:1.2.3", 1.0)]),
    ("ANDROID AND(x:1.2)", [("ANDROID", 1.0), ("(x:1.2)", 1.0)]),
    ("a cat:1.2", [("a cat", 1.2)]),                 # a final ":w" is an AND weight even without AND
    ("[a AND b:c:5]", [("[a", 1.0), (" b:c:5]", 1.0)]),   # split before scheduling
    ("", [("", 1.0)]),
])
def test_split_and(prompt, expected):
    assert split_and(prompt) == expected


# ------------------------------------------------------------------------ conditioning on tiny SD1 --

@pytest.fixture(scope="module")
def pipe():
    from lora_ui.testing.tiny_models import tiny_sd1_pipeline
    pipe = tiny_sd1_pipeline(0)
    # an untrained final layer norm (bias 0) gives hidden states with mean ~0, where the emphasis
    # rescale is skipped as degenerate; a bias makes the mean clearly non-zero, like real CLIP
    with torch.no_grad():
        te = pipe.text_encoder
        getattr(te, "text_model", te).final_layer_norm.bias.add_(0.25)
    return pipe


def _plain(pipe, text, clip_skip=1):
    from lora_ui.engine.conditioning import _encode_sd1
    return _encode_sd1(pipe, text, clip_skip)[0]


def test_step_conds_follow_the_schedule(pipe):
    from lora_ui.engine.conditioning import encode_step_conds

    conds = encode_step_conds(pipe, "sd1", ["a [red:blue:5] cat AND a dog:0.7", "[x|y] house"],
                              ["ugly [blurry::3]", "bad"], steps=10)
    red, blue, dog = _plain(pipe, "a red cat"), _plain(pipe, "a blue cat"), _plain(pipe, " a dog")
    x, y = _plain(pipe, "x house"), _plain(pipe, "y house")
    neg_early, neg_late, bad = _plain(pipe, "ugly blurry"), _plain(pipe, "ugly "), _plain(pipe, "bad")
    for call in range(10):
        img0, img1 = conds(call)
        (c0, w0), (c1, w1) = img0.terms
        assert (w0, w1) == (1.0, 0.7)
        assert torch.allclose(c0.embeds, red if call <= 5 else blue, atol=1e-5)
        assert torch.allclose(c1.embeds, dog, atol=1e-5)
        assert torch.allclose(img0.uncond.embeds, neg_early if call <= 3 else neg_late, atol=1e-5)
        assert len(img1.terms) == 1 and img1.terms[0][1] == 1.0
        want = x if call in (0, 1, 3, 5, 7, 9) else y             # calls: x, x, y, x, y, ...
        assert torch.allclose(img1.terms[0][0].embeds, want, atol=1e-5)
        assert torch.allclose(img1.uncond.embeds, bad, atol=1e-5)
        assert img0.uncond.pooled is None


def test_step_conds_no_padding_by_default_and_pad_conds(pipe):
    from lora_ui.engine.conditioning import encode_step_conds

    long = "a cat BREAK on a mat"                                  # 2 chunks
    conds = encode_step_conds(pipe, "sd1", [long], [""], steps=4)
    (img,) = conds(0)
    assert img.terms[0][0].embeds.shape[1] == 154 and img.uncond.embeds.shape[1] == 77
    padded = encode_step_conds(pipe, "sd1", [long], [""], steps=4, pad_conds=True)
    (img,) = padded(0)
    empty = _plain(pipe, "")
    assert img.uncond.embeds.shape[1] == 154
    assert torch.allclose(img.uncond.embeds, torch.cat([empty, empty], dim=1), atol=1e-5)
    assert torch.allclose(img.terms[0][0].embeds, _plain(pipe, long), atol=1e-5)


def test_edit_variants_share_chunk_count_and_emphasis_rescale(pipe):
    from lora_ui.engine.conditioning import CHUNK_LENGTH, apply_emphasis, encode_step_conds, tokenize_chunks

    # the variants of one prompt are encoded as one batch: equal chunk counts (empty chunks appended)
    conds = encode_step_conds(pipe, "sd1", ["[(cat:1.5) BREAK dog:bird:2]"], ["neg"], steps=4)
    early, late = conds(0)[0].terms[0][0].embeds, conds(3)[0].terms[0][0].embeds
    assert early.shape[1] == late.shape[1] == 2 * (CHUNK_LENGTH + 2)
    # chunk 0: "(cat:1.5) " and "bird" rows rescaled together by the mean over both rows
    tok = pipe.tokenizer
    rows = [tokenize_chunks(tok, t)[0] for t in ("(cat:1.5) ", "bird")]
    ids = torch.tensor([r.tokens for r in rows])
    mults = torch.tensor([r.multipliers for r in rows])
    with torch.no_grad():
        z = pipe.text_encoder(ids).last_hidden_state
    want = apply_emphasis(z, mults)
    assert torch.allclose(early[:, :CHUNK_LENGTH + 2], want[:1], atol=1e-5)
    assert torch.allclose(late[:, :CHUNK_LENGTH + 2], want[1:], atol=1e-5)
    # encoded alone, the emphasised text is rescaled differently
    assert not torch.allclose(early[:, :CHUNK_LENGTH + 2], _plain(pipe, "(cat:1.5) "), atol=1e-5)


def test_sdxl_step_conds_keep_pooled():
    from lora_ui.engine.conditioning import _encode_sdxl, encode_step_conds
    from lora_ui.testing.tiny_models import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline(0)
    conds = encode_step_conds(pipe, "sdxl", ["[a cat:a dog:2]"], [""], steps=4)
    for call, text in [(0, "a cat"), (3, "a dog")]:
        (img,) = conds(call)
        z, pooled = _encode_sdxl(pipe, text)
        assert torch.allclose(img.terms[0][0].embeds, z, atol=1e-5)
        assert torch.allclose(img.terms[0][0].pooled, pooled, atol=1e-5)
    zero_neg = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
    if zero_neg:
        assert img.uncond.embeds.abs().sum() == 0 and img.uncond.pooled.abs().sum() == 0


def test_repeated_variants_weigh_in_the_shared_rescale(pipe):
    from lora_ui.engine.conditioning import apply_emphasis, encode_step_conds, tokenize_chunks

    # 3 steps of [x|y]: texts x, y, x encoded as A1111's batch of 3 (x counted twice in the means)
    conds = encode_step_conds(pipe, "sd1", ["[(cat:1.4)|bird]"], [""], steps=3)
    rows = [tokenize_chunks(pipe.tokenizer, t)[0] for t in ("(cat:1.4)", "bird", "(cat:1.4)")]
    with torch.no_grad():
        z = pipe.text_encoder(torch.tensor([r.tokens for r in rows])).last_hidden_state
    want = apply_emphasis(z, torch.tensor([r.multipliers for r in rows]))
    assert torch.allclose(conds(0)[0].terms[0][0].embeds, want[:1], atol=1e-5)
    assert torch.allclose(conds(2)[0].terms[0][0].embeds, want[1:2], atol=1e-5)
    two = apply_emphasis(z[:2], torch.tensor([r.multipliers for r in rows[:2]]))
    assert not torch.allclose(want[:1], two[:1], atol=1e-5)


def test_pad_conds_when_the_negative_is_longer(pipe):
    from lora_ui.engine.conditioning import encode_step_conds

    conds = encode_step_conds(pipe, "sd1", ["a", "b BREAK c"], ["x BREAK y BREAK z"] * 2, steps=4, pad_conds=True)
    img0, img1 = conds(0)
    empty = _plain(pipe, "")
    a, bc = _plain(pipe, "a"), _plain(pipe, "b BREAK c")
    # cond batch is 2 chunks long: "a" repeats its last vector to 154, then one empty block
    want_a = torch.cat([a, a[:, -1:].repeat(1, 77, 1), empty], dim=1)
    assert torch.allclose(img0.terms[0][0].embeds, want_a, atol=1e-5)
    assert torch.allclose(img1.terms[0][0].embeds, torch.cat([bc, empty], dim=1), atol=1e-5)
    assert img0.uncond.length == img1.uncond.length == 231
    unpadded = encode_step_conds(pipe, "sd1", ["a", "b BREAK c"], ["x BREAK y BREAK z"] * 2, steps=4)
    assert [im.terms[0][0].length for im in unpadded(0)] == [77, 154]
