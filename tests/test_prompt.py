"""<lora:...> tag parsing and prompt rewriting (lora_ui/prompt.py)."""
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_ui.prompt import (
    LoraTag,
    PromptSyntaxError,
    add_lora,
    extract_lora_tags,
    format_weight,
    parse_lora_tag,
    remove_lora,
    replace_tag_name,
    set_lora_weight,
)


def only_tag(prompt):
    text, tags, warnings = extract_lora_tags(prompt)
    assert warnings == []
    assert len(tags) == 1
    return text, tags[0]


def test_positional_forms_follow_a1111_defaults():
    _, tag = only_tag("<lora:detail>")
    assert (tag.name, tag.te, tag.unet, tag.unet_weight, tag.dyn) == ("detail", 1.0, None, 1.0, None)
    _, tag = only_tag("<lora:detail:0.6>")
    assert (tag.te, tag.unet, tag.unet_weight) == (0.6, None, 0.6)
    _, tag = only_tag("<lora:detail:0.6:-0.25:8>")
    assert (tag.te, tag.unet, tag.unet_weight, tag.dyn) == (0.6, -0.25, -0.25, 8)


def test_named_options_override_positionals():
    _, tag = only_tag("<lora:x:0.5:0.5:te=0.9:unet=0.1:dyn=4:lbw=INALL:start=3:stop=12>")
    assert (tag.te, tag.unet, tag.dyn, tag.lbw, tag.start, tag.stop) == (0.9, 0.1, 4, "INALL", 3, 12)
    _, tag = only_tag("<lyco:x:lbw=1,0,0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1>")
    assert tag.kind == "lyco"
    assert tag.lbw == "1,0,0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1"


def test_tags_are_removed_and_spans_and_text_point_at_them():
    prompt = "a cat, <lora:foo:0.8> on a mat <lyco:bar:1:0.5>!"
    text, tags, warnings = extract_lora_tags(prompt)
    assert warnings == []
    assert text == "a cat,  on a mat !"
    assert [t.name for t in tags] == ["foo", "bar"]
    for tag in tags:
        assert prompt[tag.span[0]:tag.span[1]] == tag.text
    assert tags[1].text == "<lyco:bar:1:0.5>"


def test_names_with_spaces_dots_and_unicode_are_kept():
    _, tag = only_tag("<lora: my style v1.5 (final) ñ :0.7>")
    assert tag.name == "my style v1.5 (final) ñ"


@pytest.mark.parametrize(
    "tag, needle",
    [
        ("<lora:>", "name is missing"),
        ("<lora::1>", "name is missing"),
        ("<lora:x:abc>", "'abc' is not a number"),
        ("<lora:x:1:zz>", "unet weight 'zz'"),
        ("<lora:x:1:1:2.5>", "dyn '2.5' is not a whole number"),
        ("<lora:x:dyn=0>", "dyn must be at least 1"),
        ("<lora:x:nan>", "not a finite number"),
        ("<lora:x:bogus=1>", "unknown option 'bogus'"),
        ("<lora:x:te=1:te=2>", "given twice"),
        ("<lora:x:start=5:stop=5>", "stop (5) must be after start (5)"),
        ("<lora:x:start=-1>", "start must be at least 0"),
        ("<lora:x:lbw=>", "lbw is empty"),
        ("<lora:x:1:1:4:9>", "too many values"),
    ],
)
def test_malformed_tags_warn_naming_the_tag_and_generation_goes_on(tag, needle):
    text, tags, warnings = extract_lora_tags(f"a cat {tag} <lora:good:0.5>")
    assert [t.name for t in tags] == ["good"]
    assert text == "a cat  "
    assert len(warnings) == 1
    assert warnings[0].startswith(tag)
    assert needle in warnings[0]
    with pytest.raises(PromptSyntaxError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_lora_tag("lora", tag[len("<lora:"):-1])


def test_other_extra_network_types_are_stripped_with_a_warning():
    text, tags, warnings = extract_lora_tags("x <hypernet:anime:1> y")
    assert (text, tags) == ("x  y", [])
    assert warnings == ["<hypernet:anime:1>: 'hypernet' extra networks are not supported; tag ignored"]


def test_unclosed_tag_stays_text_and_does_not_swallow_the_next_tag():
    text, tags, warnings = extract_lora_tags("<lora:broken <lora:ok:0.3>")
    assert [t.name for t in tags] == ["ok"]
    assert text == "<lora:broken "
    assert len(warnings) == 1 and "not closed" in warnings[0] and "<lora:broken" in warnings[0]


def test_same_name_twice_keeps_first():
    _, tags, warnings = extract_lora_tags("<lora:a:0.2> <lora:a:0.9>")
    assert [(t.name, t.te) for t in tags] == [("a", 0.2)]
    assert warnings == ["<lora:a:0.9>: 'a' is already used by <lora:a:0.2>; this tag is ignored"]


def test_non_text_prompt_gives_a_warning_not_an_exception():
    text, tags, warnings = extract_lora_tags(None)
    assert (text, tags) == ("", [])
    assert "not text" in warnings[0]


@pytest.mark.parametrize("weight, text", [(1, "1"), (1.0, "1"), (0.8, "0.8"), (0.75, "0.75"), (-0.5, "-0.5"),
                                          (0.123456, "0.1235"), (0, "0"), (-0.00001, "0")])
def test_format_weight(weight, text):
    assert format_weight(weight) == text


def test_set_lora_weight_rewrites_only_the_weight():
    assert set_lora_weight("cat <lora:foo:0.8>, dog", "foo", 0.35) == "cat <lora:foo:0.35>, dog"
    assert set_lora_weight("cat <lora:foo>", "foo", 0.5) == "cat <lora:foo:0.5>"
    assert set_lora_weight("<lyco:foo:1:0.2:8:lbw=INALL>", "foo", 2) == "<lyco:foo:2:0.2:8:lbw=INALL>"
    assert set_lora_weight("<lora:foo:te=1:unet=0.3>", "foo", 0.6) == "<lora:foo:te=0.6:unet=0.3>"
    assert set_lora_weight("<lora:foo:lbw=OUTD>", "foo", 0.6) == "<lora:foo:0.6:lbw=OUTD>"
    # absent -> appended
    assert set_lora_weight("cat", "bar", 0.7) == "cat <lora:bar:0.7>"
    with pytest.raises(PromptSyntaxError, match="not a finite number"):
        set_lora_weight("cat", "bar", float("inf"))


def test_set_lora_weight_result_parses_to_the_new_weight():
    prompt = "a <lora:x:1:0.5:4> b <lora:y:0.1>"
    new = set_lora_weight(prompt, "y", 0.9)
    _, tags, _ = extract_lora_tags(new)
    assert {t.name: (t.te, t.unet, t.dyn) for t in tags} == {"x": (1.0, 0.5, 4), "y": (0.9, None, None)}


def test_add_then_remove_restores_the_prompt():
    base = "masterpiece, a cat"
    added = add_lora(base, "style", 0.8, "stylekw, painting")
    assert added == "masterpiece, a cat <lora:style:0.8> stylekw, painting"
    assert remove_lora(added, "style", "stylekw, painting") == base
    assert add_lora("", "style") == "<lora:style:1>"
    assert remove_lora(add_lora("", "style"), "style") == ""
    assert add_lora("cat ", "s", 1) == "cat <lora:s:1>"


def test_remove_lora_removes_every_tag_of_that_name_only():
    prompt = "<lora:a:1> cat, <lora:b:0.5> <lora:a:0.2>"
    assert remove_lora(prompt, "a") == "cat, <lora:b:0.5>"
    assert remove_lora(prompt, "missing") == prompt


def test_add_lora_refuses_names_that_cannot_be_written():
    with pytest.raises(PromptSyntaxError, match="may not contain"):
        add_lora("x", "bad:name")
    with pytest.raises(PromptSyntaxError, match="may not contain"):
        add_lora("x", "")


def test_replace_tag_name_keeps_the_weights():
    prompt = "x <lora:old name:0.4:0.3:lbw=INALL> y"
    _, tags, _ = extract_lora_tags(prompt)
    assert replace_tag_name(prompt, tags[0], "new") == "x <lora:new:0.4:0.3:lbw=INALL> y"


# ---------------------------------------------------------------- fuzzing

tag_alphabet = string.ascii_letters + string.digits + " .:=,-<>_()\n\t\"'ñ漢"


@settings(max_examples=250, deadline=None)
@given(st.text(alphabet=tag_alphabet, max_size=80))
def test_fuzz_extract_never_raises_and_spans_are_consistent(prompt):
    text, tags, warnings = extract_lora_tags(prompt)
    assert isinstance(text, str) and all(isinstance(w, str) for w in warnings)
    for tag in tags:
        assert isinstance(tag, LoraTag)
        assert prompt[tag.span[0]:tag.span[1]] == tag.text
        assert tag.name and tag.name == tag.name.strip()
    # tags come in order, do not overlap, and the text is the prompt minus every matched tag span
    spans = [t.span for t in tags]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert len(text) <= len(prompt) - sum(end - start for start, end in spans)


def test_removal_is_one_pass_like_a1111():
    # removing the inner tag joins text that looks like a tag; A1111 does not re-parse it either
    text, tags, _ = extract_lora_tags("<lo<lora:a:1>ra:b>")
    assert [t.name for t in tags] == ["a"] and text == "<lora:b>"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=tag_alphabet, max_size=40))
def test_fuzz_parse_lora_tag_raises_only_its_own_error(args):
    try:
        tag = parse_lora_tag("lora", args)
    except PromptSyntaxError as exc:
        assert str(exc).startswith(f"<lora:{args}>")
    else:
        assert tag.name


names = st.text(alphabet=string.ascii_letters + string.digits + " _-.", min_size=1, max_size=12).filter(
    lambda s: s.strip() == s and s)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=string.ascii_letters + " ,", max_size=30), names,
       st.floats(min_value=-4, max_value=4, allow_nan=False).map(lambda w: round(w, 2)))
def test_fuzz_add_set_remove(base, name, weight):
    prompt = add_lora(base, name, 1.0)
    prompt = set_lora_weight(prompt, name, weight)
    _, tags, warnings = extract_lora_tags(prompt)
    assert warnings == []
    assert [(t.name, t.te) for t in tags] == [(name, float(format_weight(weight)))]
    removed = remove_lora(prompt, name)
    assert extract_lora_tags(removed)[1] == []
    # the prompt comes back, less at most the one space that joined the tag when base ended in one
    assert removed == base or (base[-1:].isspace() and removed == base[:-1])
