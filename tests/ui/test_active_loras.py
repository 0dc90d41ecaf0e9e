"""Active-LoRA rows: slider <-> prompt tag sync, split, block-weight preset, enable, remove."""
from __future__ import annotations

import pytest

from lora_ui import prompt as prompt_tags
from lora_ui.ui import active_loras as al
from ui.fakes import make_ctx


@pytest.fixture
def ctx(tmp_path):
    return make_ctx(tmp_path)


def resolver(ctx):
    return ctx.library.resolve


def row_values(updates: list, i: int) -> list:
    """The 8 values of pool row i from `row_updates` output (index 0 is the 'no LoRAs' note)."""
    return updates[1 + 8 * i: 1 + 8 * (i + 1)]


def test_rows_follow_the_prompt_tags_in_order(ctx):
    rows = al.rows_for_prompt("a <lora:style:0.3> b <lora:loha_thing:1.2:0.4:lbw=MIDD>", {}, resolver(ctx), "sd1")
    assert [(r.name, r.te, r.unet, r.lbw, r.enabled, r.note) for r in rows] == [
        ("style", 0.3, None, None, True, ""),
        ("loha_thing", 1.2, 0.4, "MIDD", True, ""),
    ]


def test_rows_flag_unknown_and_other_arch_loras(ctx):
    rows = al.rows_for_prompt("<lora:nope:1> <lora:xl_char:0.5>", {}, resolver(ctx), "sd1")
    assert "'nope' is not in the LoRA library" in rows[0].note
    assert "SDXL LoRA, the loaded model is SD1" in rows[1].note


def test_editing_the_tag_moves_the_slider(ctx):
    h = al.ActiveLoraHandlers(ctx)
    updates = h.rows("x <lora:style:0.3>", {})
    assert updates[0]["visible"] is False  # the "no LoRAs" note hides
    group, name, label, enabled, weight, split, unet, lbw = row_values(updates, 0)
    assert group["visible"] is True and name == "style" and "**style**" in label
    assert weight["value"] == 0.3 and split["value"] is False and unet["visible"] is False
    assert lbw["value"] == al.NO_PRESET and enabled["value"] is True
    assert all(row_values(updates, i)[0]["visible"] is False for i in range(1, al.MAX_ROWS))


def test_weight_outside_the_slider_range_widens_the_slider_instead_of_clamping(ctx):
    weight = row_values(al.ActiveLoraHandlers(ctx).rows("<lora:style:3.5>", {}), 0)[4]
    assert weight["value"] == 3.5 and weight["maximum"] == 3.5 and weight["minimum"] == -2.0


def test_no_loras_shows_the_note(ctx):
    updates = al.ActiveLoraHandlers(ctx).rows("just text", {})
    assert updates[0]["visible"] is True


def test_moving_the_slider_rewrites_only_that_tag(ctx):
    prompt = "a cat, <lora:style:0.3> inkstyle, <lora:loha_thing:1>"
    new = al.ActiveLoraHandlers(ctx).rewrite(prompt, "style", 0.85, False, 1.0, al.NO_PRESET)
    assert new == "a cat, <lora:style:0.85> inkstyle, <lora:loha_thing:1>"
    # and the parsed weight is what the slider said (round trip through the core parser)
    assert prompt_tags.extract_lora_tags(new)[1][0].te == pytest.approx(0.85)


def test_split_and_block_preset_are_written_into_the_tag_keeping_dyn_and_kind(ctx):
    prompt = "<lyco:style:0.5:dyn=4:start=2>"
    new = al.rewrite_tag(prompt, "style", -1.25, True, 0.4, "INALL")
    assert new == "<lyco:style:-1.25:0.4:dyn=4:lbw=INALL:start=2>"
    tag = prompt_tags.extract_lora_tags(new)[1][0]
    assert (tag.kind, tag.te, tag.unet, tag.dyn, tag.lbw, tag.start) == ("lyco", -1.25, 0.4, 4, "INALL", 2)
    # split off again, preset cleared
    assert al.rewrite_tag(new, "style", 0.5, False, 0.4, al.NO_PRESET) == "<lyco:style:0.5:dyn=4:start=2>"


def test_bad_slider_value_warns_and_keeps_the_prompt(ctx):
    with pytest.warns(UserWarning, match="weight for 'style' 'abc' is not a number"):
        assert al.ActiveLoraHandlers(ctx).rewrite("<lora:style:1>", "style", "abc", False, 1, None) == "<lora:style:1>"
    with pytest.warns(UserWarning, match="'style' is no longer in the prompt"):
        assert al.ActiveLoraHandlers(ctx).rewrite("no tags", "style", 0.5, False, 1, None) == "no tags"


def test_disable_takes_the_tag_out_and_enable_puts_it_back(ctx):
    h = al.ActiveLoraHandlers(ctx)
    prompt, disabled = h.toggle("a cat <lora:style:0.35:lbw=MIDD> night", {}, "style", False)
    assert prompt == "a cat night" and disabled == {"style": "<lora:style:0.35:lbw=MIDD>"}
    rows = al.rows_for_prompt(prompt, disabled, resolver(ctx), "sd1")
    assert [(r.name, r.te, r.enabled) for r in rows] == [("style", 0.35, False)]
    prompt, disabled = h.toggle(prompt, disabled, "style", True)
    assert prompt == "a cat night <lora:style:0.35:lbw=MIDD>" and disabled == {}


def test_enable_when_the_user_typed_the_tag_again_keeps_the_prompt(ctx):
    prompt, disabled = al.set_enabled("<lora:style:0.2>", {"style": "<lora:style:0.9>"}, "style", True)
    assert prompt == "<lora:style:0.2>" and disabled == {}


def test_remove_takes_out_tag_and_activation_text_and_forgets_disabled(ctx):
    h = al.ActiveLoraHandlers(ctx)
    prompt, disabled = h.remove("a cat <lora:style:0.8> inkstyle", {"loha_thing": "<lora:loha_thing:1>"}, "style")
    assert prompt == "a cat" and disabled == {"loha_thing": "<lora:loha_thing:1>"}
    prompt, disabled = h.remove(prompt, disabled, "loha_thing")
    assert disabled == {}


def test_rows_beyond_the_pool_get_no_row_and_a_visible_note(ctx):
    prompt = " ".join(f"<lora:l{i}:1>" for i in range(al.MAX_ROWS + 3))
    updates = al.ActiveLoraHandlers(ctx).rows(prompt, {})
    assert len(updates) == 1 + 8 * al.MAX_ROWS + 1  # 'no LoRAs' note, the rows, then the overflow note
    assert [row_values(updates, i)[1] for i in range(al.MAX_ROWS)] == [f"l{i}" for i in range(al.MAX_ROWS)]
    note = updates[-1]
    assert note["visible"] is True
    assert note["value"].startswith("⚠ 3 more LoRAs in the prompt have no slider: edit their tags in the prompt")
    names = [f"'l{i}'" for i in range(al.MAX_ROWS, al.MAX_ROWS + 3)]
    assert ", ".join(names) in note["value"] and f"'l{al.MAX_ROWS - 1}'" not in note["value"]


def test_the_overflow_note_is_hidden_when_every_lora_has_a_row(ctx):
    prompt = " ".join(f"<lora:l{i}:1>" for i in range(al.MAX_ROWS))
    note = al.ActiveLoraHandlers(ctx).rows(prompt, {})[-1]
    assert note == {"__type__": "update", "value": "", "visible": False}


def test_the_overflow_note_counts_one_lora_and_disabled_ones_apart(ctx):
    prompt = " ".join(f"<lora:l{i}:1>" for i in range(al.MAX_ROWS + 1))
    note = al.ActiveLoraHandlers(ctx).rows(prompt, {"off": "<lora:off:0.5>"})[-1]["value"]
    first, second = note.split("  \n")
    assert first.startswith(f"⚠ 1 more LoRA in the prompt has no slider: edit its tag in the prompt ('l{al.MAX_ROWS}'")
    assert second.startswith("⚠ 1 disabled LoRA has no row ('off')")
    # Only disabled LoRAs beyond the pool: no word about the prompt.
    prompt = " ".join(f"<lora:l{i}:1>" for i in range(al.MAX_ROWS))
    note = al.ActiveLoraHandlers(ctx).rows(prompt, {"off": "<lora:off:0.5>", "off2": "<lora:off2:1>"})[-1]["value"]
    assert note.startswith("⚠ 2 disabled LoRAs have no row ('off', 'off2')") and "in the prompt" not in note


def test_many_extra_loras_are_counted_and_the_names_shortened(ctx):
    prompt = " ".join(f"<lora:l{i}:1>" for i in range(al.MAX_ROWS + 7))
    note = al.ActiveLoraHandlers(ctx).rows(prompt, {})[-1]["value"]
    assert note.startswith("⚠ 7 more LoRAs in the prompt have no slider")
    assert f"'l{al.MAX_ROWS + 4}' and 2 more" in note and f"'l{al.MAX_ROWS + 5}'" not in note


def test_the_built_rows_take_exactly_the_handler_updates(ctx):
    import gradio as gr

    with gr.Blocks():
        prompt = gr.Textbox()
        active = al.build_active_loras(ctx, prompt)
    assert active.outputs()[-1] is active.overflow and active.overflow.elem_id == "active_loras_overflow"
    assert active.overflow.visible is False
    updates = al.ActiveLoraHandlers(ctx).rows("<lora:style:1>", {})
    assert len(updates) == len(active.outputs())


def test_block_weight_presets_offer_none_and_the_usual_names():
    presets = al.lbw_presets()
    assert presets[0] == al.NO_PRESET and {"INALL", "MIDD", "OUTALL"} <= set(presets)


def test_row_handlers_find_their_lora_by_position_in_the_prompt(ctx):
    h = al.ActiveLoraHandlers(ctx)
    prompt = "a <lora:style:0.3> b <lora:loha_thing:1>"
    assert h.rewrite_at(1, prompt, {}, 0.45, False, 1, None) == "a <lora:style:0.3> b <lora:loha_thing:0.45>"
    new_prompt, disabled = h.toggle_at(0, prompt, {}, False)
    assert new_prompt == "a b <lora:loha_thing:1>" and disabled == {"style": "<lora:style:0.3>"}
    # the disabled row comes after the prompt's tags: row 1 is now 'style'
    assert h.name_at(new_prompt, disabled, 1) == "style"
    assert h.toggle_at(1, new_prompt, disabled, True) == ("a b <lora:loha_thing:1> <lora:style:0.3>", {})
    assert h.remove_at(0, prompt, {}) == ("a b <lora:loha_thing:1>", {})
    assert h.rewrite_at(5, prompt, {}, 0.1, False, 1, None) == prompt  # an empty row changes nothing
