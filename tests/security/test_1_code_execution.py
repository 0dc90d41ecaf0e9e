"""Item 1: a pickle never runs code, even with --allow-pickle (weights_only=True everywhere)."""
from __future__ import annotations

import pytest

from lora_ui.lora.manager import LoraManager
from lora_ui.lora.spec import LoraError, LoraSpec
from tests.security.helpers import evil_pickle

pytestmark = pytest.mark.timeout(900)


def test_checkpoint_switch_through_options_never_runs_the_pickle(api_env, client, tmp_path):
    marker = tmp_path / "pwned-checkpoint"
    ckpt_dir = api_env.ctx.settings.ckpt_dirs[0]
    path = evil_pickle(ckpt_dir / "evil.ckpt", marker)
    api_env.ctx.settings.allow_pickle = True
    try:
        before = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
        r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "evil.ckpt"})
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "sd_model_checkpoint"
        assert "needs more than plain tensors" in r.text and "--allow-pickle" in r.text
        assert not marker.exists()
        assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == before
    finally:
        api_env.ctx.settings.allow_pickle = False
        path.unlink()


def test_lora_pickle_never_runs_even_when_allowed(api_env, tmp_path):
    marker = tmp_path / "pwned-lora"
    path = evil_pickle(tmp_path / "evil.pt", marker)
    pipe = api_env.ctx.models.current.pipe
    manager = LoraManager(pipe, allow_pickle=True)
    with pytest.raises(LoraError, match="needs more than plain tensors"):
        manager.set_loras([LoraSpec(path, "evil")])
    assert not marker.exists()
    manager.clear()
