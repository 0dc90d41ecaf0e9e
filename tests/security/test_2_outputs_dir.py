"""Item 2: nothing is written outside the data dir unless the operator said so on the command line."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lora_ui.settings import Settings, build_parser


@pytest.mark.parametrize("configured", ["/tmp/lora-ui-escape", "../escape", "a/../../escape", "~/escape"])
def test_config_json_cannot_move_outputs_out_of_the_data_dir(tmp_path, configured):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.json").write_text(json.dumps({"outputs_dir": configured}))
    settings = Settings(data_dir=data)
    settings.load()
    assert settings.outputs_path.resolve().is_relative_to(data.resolve())
    assert any("outputs_dir" in w for w in settings.config_warnings)


def test_symlink_out_of_the_data_dir_is_not_followed(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    (data / "link").symlink_to(outside)
    settings = Settings(data_dir=data, outputs_dir="link")
    assert settings.outputs_path == data / "outputs"


def test_only_the_command_line_may_put_outputs_elsewhere(tmp_path):
    args = build_parser().parse_args(["--data-dir", str(tmp_path), "--outputs-dir", str(tmp_path / "../else")])
    assert Settings.from_args(args, load_config=False).outputs_path == tmp_path / "../else"


def test_settings_tab_endpoint_has_no_outputs_field(tmp_path):
    from lora_ui.ui import settings_tab as st

    settings = Settings(data_dir=tmp_path)
    ctx = SimpleNamespace(settings=settings, worker=SimpleNamespace(outputs_dir=settings.outputs_path))
    with pytest.raises(TypeError):
        st.SettingsHandlers(ctx).apply(1.0, 160, "/tmp/evil", True)  # the old 4-field endpoint is gone
    assert st.SettingsHandlers(ctx).apply(1.0, 160, True) == "Saved."
    assert ctx.worker.outputs_dir == tmp_path / "outputs"
    assert json.loads((tmp_path / "config.json").read_text())["outputs_dir"] == "outputs"


def test_sweep_grids_go_under_the_data_dir(tmp_path, monkeypatch):
    from lora_ui.ui.compare_tab import CompareHandlers

    monkeypatch.chdir(tmp_path)  # the old code wrote to ./outputs (the working directory)
    data = tmp_path / "data"
    data.mkdir()
    ctx = SimpleNamespace(settings=Settings(data_dir=data), worker=None, models=None, library=None)
    path = CompareHandlers(ctx)._grid_path(7)
    assert path.resolve().is_relative_to((data / "outputs").resolve())


def test_api_options_refuse_paths(client):
    r = client.post("/sdapi/v1/options", json={"outdir_txt2img_samples": "/tmp/evil"})
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "outdir_txt2img_samples"
