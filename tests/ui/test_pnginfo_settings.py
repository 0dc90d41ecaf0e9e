"""PNG Info and Settings handlers, called directly."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from lora_ui.infotext import png_info_with_infotext
from lora_ui.ui import pnginfo_tab as pi
from lora_ui.ui import settings_tab as st
from ui.fakes import make_ctx

INFOTEXT = ('a cat <lora:old_name:0.35> inkstyle\nNegative prompt: blurry\n'
            'Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 777, Size: 48x64, '
            'Clip skip: 2, Lora hashes: "old_name: {h}", Version: v1.10.1')


@pytest.fixture
def ctx(tmp_path):
    return make_ctx(tmp_path)


def image_with(tmp_path, text: str | None):
    path = tmp_path / "in.png"
    Image.new("RGB", (16, 16)).save(path, pnginfo=png_info_with_infotext(text) if text else None)
    return str(path)


def test_dropped_image_shows_its_parameters(ctx, tmp_path):
    text = INFOTEXT.format(h=ctx.library.entries[0].hash12)
    shown, rows = pi.PngInfoHandlers(ctx).on_image(image_with(tmp_path, text))
    assert shown == text
    assert ["Steps", "12"] in rows and ["Size", "48x64"] in rows and ["Seed", "777"] in rows


def test_image_without_metadata_warns(ctx, tmp_path):
    with pytest.warns(UserWarning, match="no generation parameters"):
        assert pi.PngInfoHandlers(ctx).on_image(image_with(tmp_path, None)) == ("", [])


def test_not_an_image_warns(ctx, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="not a readable image"):
        assert pi.PngInfoHandlers(ctx).on_image(str(bad)) == ("", [])


def test_send_to_txt2img_resolves_renamed_lora_by_hash_and_restores_settings(ctx):
    style = ctx.library.entries[0]
    text = INFOTEXT.format(h=style.hash12)
    choices = {"sampler": ["Euler a", "DPM++ 2M"], "scheduler": ["Automatic", "Karras"]}
    with pytest.warns(UserWarning, match="matched by hash"):
        values = pi.PngInfoHandlers(ctx).send(text, choices, [])
    prompt, *settings = values
    assert prompt == "a cat <lora:style:0.35> inkstyle"
    # Karras is DPM++ 2M's own schedule: A1111 1.10 reads it back as Automatic; every sampling field
    # the infotext does not name gets A1111's default, not the widget's current value
    assert dict(zip(pi.SEND_FIELDS, settings)) == {
        "negative_prompt": "blurry", "sampler": "DPM++ 2M", "scheduler": "Automatic", "steps": 12,
        "cfg_scale": 6.5, "width": 48, "height": 64, "seed": 777, "clip_skip": 2, "subseed": -1,
        "subseed_strength": 0.0, "seed_resize_from_w": 0, "seed_resize_from_h": 0, "rng": "GPU", "ensd": 0,
        "eta": None, "s_churn": 0.0, "s_noise": 1.0, "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0,
        **{f: {"__type__": "update"} for f in pi.SEND_FIELDS[-11:]}, "enable_hr": False}


def test_send_keeps_widgets_for_unknown_sampler_and_missing_keys(ctx):
    text = "a dog\nSteps: 5, Sampler: Mystery, Seed: 3"
    with pytest.warns(UserWarning, match="Mystery"):
        values = pi.PngInfoHandlers(ctx).send(text, {"sampler": ["Euler a"]}, [])
    settings = dict(zip(pi.SEND_FIELDS, values[1:]))
    assert values[0] == "a dog" and settings["steps"] == 5 and settings["seed"] == 3
    assert settings["sampler"] == {"__type__": "update"} and settings["cfg_scale"] == {"__type__": "update"}


def test_send_with_nothing_warns_and_changes_nothing(ctx):
    with pytest.warns(UserWarning, match="Nothing to send"):
        values = pi.PngInfoHandlers(ctx).send("", {}, [])
    assert values == [{"__type__": "update"}] * (1 + len(pi.SEND_FIELDS))


def test_settings_apply_writes_config_json(ctx, tmp_path, capsys):
    status = st.SettingsHandlers(ctx).apply(0.6, 200, False)
    assert status == "Saved."
    assert json.loads((tmp_path / "config.json").read_text()) == {
        "default_lora_weight": 0.6, "card_size": 200, "outputs_dir": "outputs",
        "add_lora_hashes_to_infotext": False}
    assert "Settings saved" in capsys.readouterr().out
    assert st.SettingsHandlers(ctx).current() == (0.6, 200, False)


@pytest.mark.parametrize("args, message", [
    ((5, 160, True), "default LoRA weight must be between -2 and 2"),
    (("x", 160, True), "default LoRA weight 'x' is not a number"),
    ((1, 10, True), "card size must be between 64 and 512"),
])
def test_bad_settings_are_refused_and_nothing_changes(ctx, tmp_path, args, message):
    with pytest.warns(UserWarning, match=message):
        assert st.SettingsHandlers(ctx).apply(*args) == ""
    assert not (tmp_path / "config.json").exists() and ctx.settings.default_lora_weight == 1.0


def test_failed_save_restores_the_previous_values(tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.settings.fail_save = True
    with pytest.warns(UserWarning, match="permission denied"):
        st.SettingsHandlers(ctx).apply(0.5, 300, False)
    assert (ctx.settings.default_lora_weight, ctx.settings.card_size, ctx.settings.outputs_dir) == (1.0, 160, "outputs")


def test_apply_with_the_real_settings_writes_config_json_and_never_moves_the_outputs(tmp_path):
    from types import SimpleNamespace

    from lora_ui.settings import Settings

    settings = Settings(data_dir=tmp_path)
    worker = SimpleNamespace(outputs_dir=settings.outputs_path)
    ctx = SimpleNamespace(settings=settings, worker=worker)
    assert st.SettingsHandlers(ctx).apply(-0.5, 96, True) == "Saved."
    written = json.loads((tmp_path / "config.json").read_text())
    assert (written["default_lora_weight"], written["card_size"], written["outputs_dir"]) == (-0.5, 96, "outputs")
    assert worker.outputs_dir == tmp_path / "outputs"
    reloaded = Settings(data_dir=tmp_path)
    reloaded.load()
    assert (reloaded.default_lora_weight, reloaded.card_size, reloaded.outputs_path) == (-0.5, 96, tmp_path / "outputs")