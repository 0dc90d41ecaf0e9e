"""Settings from flags, A1111 paths under the data dir, config.json load/save keeping unknown keys."""
import json

import pytest

from lora_ui.settings import REPO_ROOT, Settings, SettingsError, build_parser, parse_auth


def from_flags(*argv, load_config=True):
    return Settings.from_args(build_parser().parse_args(list(argv)), load_config=load_config)


def test_defaults_follow_the_a1111_layout_in_the_repository():
    s = from_flags(load_config=False)
    assert s.data_dir == REPO_ROOT and s.port == 7860 and s.server_name == "127.0.0.1"
    assert s.ckpt_dirs == [REPO_ROOT / "models" / "Stable-diffusion"]
    assert s.lora_dirs == [REPO_ROOT / "models" / "Lora", REPO_ROOT / "models" / "LyCORIS"]
    assert s.outputs_path == REPO_ROOT / "outputs"
    assert (s.device, s.precision, s.allow_pickle, s.api, s.listen) == ("auto", "auto", False, False, False)


def test_data_dir_moves_every_path(tmp_path):
    s = from_flags("--data-dir", str(tmp_path))
    assert s.ckpt_dirs == [tmp_path / "models" / "Stable-diffusion"]
    assert s.lora_dirs == [tmp_path / "models" / "Lora", tmp_path / "models" / "LyCORIS"]
    assert s.config_path == tmp_path / "config.json" and s.cache_dir == tmp_path / "cache"
    assert s.outputs_path == tmp_path / "outputs"


def test_flags_override(tmp_path):
    s = from_flags("--data-dir", str(tmp_path), "--ckpt", "model.safetensors", "--ckpt-dir", "/ckpts",
                   "--lora-dir", "/a", "--lora-dir", "/b", "--listen", "--port", "7861", "--api", "--autolaunch",
                   "--gradio-auth", "me:secret,you:p:w", "--api-auth", "bot:token", "--device", "cpu",
                   "--no-half", "--allow-pickle")
    assert s.ckpt == "model.safetensors" and [str(p) for p in s.ckpt_dirs] == ["/ckpts"]
    assert [str(p) for p in s.lora_dirs] == ["/a", "/b"]
    assert s.server_name == "0.0.0.0" and s.port == 7861 and s.api and s.autolaunch
    assert s.gradio_auth == [("me", "secret"), ("you", "p:w")] and s.api_auth == [("bot", "token")]
    assert (s.device, s.precision, s.no_half, s.allow_pickle) == ("cpu", "fp32", True, True)


@pytest.mark.parametrize("argv, words", [
    (["--gradio-auth", "nocolon"], "--gradio-auth: 'nocolon' is not user:password"),
    (["--api-auth", "user:"], "--api-auth: 'user:' is not user:password"),
    (["--no-half", "--precision", "fp16"], "--no-half means fp32"),
    (["--data-dir", "/does/not/exist"], "--data-dir /does/not/exist does not exist"),
    (["--port", "70000"], "not a port number"),
])
def test_bad_flags_are_named(argv, words):
    with pytest.raises(SettingsError, match=words):
        from_flags(*argv)


def test_parse_auth_empty_is_no_auth():
    assert parse_auth(None) == [] and parse_auth("  ") == []


def test_config_json_round_trip_keeps_unknown_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"card_size": 200, "some_extension_option": [1, 2],
                                                      "default_lora_weight": 0.8}))
    s = from_flags("--data-dir", str(tmp_path))
    assert s.card_size == 200 and s.default_lora_weight == 0.8 and s.config_warnings == []
    s.card_size = 96
    s.outputs_dir = "renders"
    s.save()
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["some_extension_option"] == [1, 2] and data["card_size"] == 96 and data["outputs_dir"] == "renders"
    again = from_flags("--data-dir", str(tmp_path))
    assert again.card_size == 96 and again.outputs_path == tmp_path / "renders"


def test_bad_config_values_keep_defaults_with_a_warning(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"card_size": "huge", "clip_skip": 3}))
    s = from_flags("--data-dir", str(tmp_path))
    assert s.card_size == 160 and s.clip_skip == 3
    assert len(s.config_warnings) == 1 and "card_size must be a whole number from 64 to 512" in s.config_warnings[0]


def test_saving_a_bad_value_names_it_and_writes_nothing(tmp_path):
    s = from_flags("--data-dir", str(tmp_path))
    s.default_lora_weight = 7
    with pytest.raises(SettingsError, match="default_lora_weight must be a number from -2 to 2"):
        s.save()
    assert not (tmp_path / "config.json").exists()


def test_unreadable_config_is_not_overwritten(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    s = from_flags("--data-dir", str(tmp_path))
    assert s.card_size == 160 and "is not valid JSON" in s.config_warnings[0]
    with pytest.raises(SettingsError, match="not saving: .*config.json is not valid JSON"):
        s.save()
    assert (tmp_path / "config.json").read_text() == "{not json"
