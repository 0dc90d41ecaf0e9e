"""Every bad input: one LoraError naming the file, the reason and the first keys; model bit-identical."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_ui.lora.manager import LoraManager
from lora_ui.lora.spec import LoraError, LoraSpec
from tests.lora import files


@pytest.fixture(scope="module")
def good_sd1(sd1, tmp_path_factory):
    sd, _ = files.make_lora(sd1, unet="attn", seed=1)
    return files.save(sd, tmp_path_factory.mktemp("good") / "good.safetensors")


def _rejects(pipe, specs, *needles, manager=None):
    """Apply specs expecting LoraError; check the message and that nothing changed."""
    manager = manager or LoraManager(pipe, mode="fast")
    before = files.snapshot(pipe)
    active_before = list(manager.active)
    with pytest.raises(LoraError) as info:
        manager.set_loras(specs)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    files.assert_same_state(pipe, before)
    assert manager.active == active_before
    return msg


def test_missing_file(sd1, tmp_path):
    _rejects(sd1, [LoraSpec(tmp_path / "nope.safetensors", "nope")], "nope.safetensors", "not found")


def test_corrupt_file(sd1, tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64))
    _rejects(sd1, [LoraSpec(path, "broken")], "broken.safetensors", "corrupt")


def test_truncated_file(sd1, good_sd1, tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(good_sd1.read_bytes()[:-100])
    _rejects(sd1, [LoraSpec(path, "cut")], "cut.safetensors", "corrupt")


def test_unknown_layout(sd1, tmp_path):
    path = files.save({"model.weird.key.weight": torch.ones(3), "other.thing": torch.ones(2)}, tmp_path / "weird.safetensors")
    _rejects(sd1, [LoraSpec(path, "weird")], "weird.safetensors", "unknown key layout", "model.weird.key.weight")


def _skips(pipe, specs, *needles):
    """A LoRA for another architecture is left out with a warning (not an error); nothing changes."""
    manager = LoraManager(pipe, mode="fast")
    before = files.snapshot(pipe)
    report = manager.set_loras(specs)
    assert len(report.skipped) == 1 and report.skipped[0] in report.warnings
    for needle in (*needles, "skipped"):
        assert needle in report.skipped[0], f"{needle!r} not in {report.skipped[0]!r}"
    files.assert_same_state(pipe, before)
    assert manager.active == [] and report.loras == []
    return report.skipped[0]


def test_sdxl_lora_on_sd1_from_keys(sd1, sdxl, tmp_path):
    sd, _ = files.make_lora(sdxl, convention="kohya_ldm")
    path = files.save(sd, tmp_path / "xl.safetensors")
    _skips(sd1, [LoraSpec(path, "xl")], "xl.safetensors", "for SDXL", "SD1")


def test_sd1_lora_on_sdxl_from_keys(sd1, sdxl, good_sd1):
    _skips(sdxl, [LoraSpec(good_sd1, "good")], "good.safetensors", "for SD1", "SDXL")


def test_other_arch_from_metadata(sd1, sdxl, tmp_path):
    # Only the UNet's mid block: the keys alone cannot tell; the metadata does.
    sd, _ = files.make_lora(sdxl, unet="attn", te=False)
    sd = {k: v for k, v in sd.items() if "mid_block" in k and "transformer_blocks_0" in k}
    path = files.save(sd, tmp_path / "xlmeta.safetensors", metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    _skips(sd1, [LoraSpec(path, "xlmeta")], "xlmeta.safetensors", "for SDXL")


def test_shape_mismatch(sd1, tmp_path):
    sd, _ = files.make_lora(sd1, unet="attn")
    bad_key = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"
    sd[bad_key] = torch.randn(7, 4)
    path = files.save(sd, tmp_path / "shape.safetensors")
    _rejects(sd1, [LoraSpec(path, "shape")], "shape.safetensors", "does not fit", bad_key)


def test_nan_and_inf(sd1, tmp_path):
    sd, _ = files.make_lora(sd1, unet="attn")
    key = "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"
    sd[key] = sd[key].clone()
    sd[key][0, 0] = float("nan")
    path = files.save(sd, tmp_path / "nan.safetensors")
    _rejects(sd1, [LoraSpec(path, "nan")], "nan.safetensors", "NaN or Inf", key)
    sd[key][0, 0] = float("inf")
    path = files.save(sd, tmp_path / "inf.safetensors")
    _rejects(sd1, [LoraSpec(path, "inf")], "inf.safetensors", "NaN or Inf", key)


def test_pickle_refused_by_default_then_weights_only(sd1, tmp_path):
    sd, truth = files.make_lora(sd1, unet="attn")
    path = tmp_path / "old.pt"
    torch.save(sd, path)
    _rejects(sd1, [LoraSpec(path, "old")], "old.pt", "pickle", "--allow-pickle")
    manager = LoraManager(sd1, mode="fast", allow_pickle=True)
    report = manager.set_loras([LoraSpec(path, "old")])
    assert report.loras[0].layers == len(truth)
    manager.clear()


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_malicious_pickle_blocked_even_when_allowed(sd1, tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"x": _Evil()}))
    manager = LoraManager(sd1, mode="fast", allow_pickle=True)
    _rejects(sd1, [LoraSpec(path, "evil")], "evil.ckpt", "needs more than plain tensors", manager=manager)


@pytest.mark.parametrize("field,value,needle", [
    ("te", float("nan"), "te weight"), ("unet", float("inf"), "unet weight"), ("dyn", 0, "dyn"),
    ("lbw", "NOSUCHPRESET", "NOSUCHPRESET"), ("lbw", "1,2,3", "17, 26"), ("lbw", "1,x" + ",1" * 15, "'x'"),
    ("start", -1, "start"), ("stop", 0, "stop"),
])
def test_bad_spec_values(sd1, good_sd1, field, value, needle):
    kwargs = {field: value}
    if field == "stop":
        kwargs["start"] = 3
    _rejects(sd1, [LoraSpec(good_sd1, "good", **kwargs)], "good.safetensors", needle)


def test_same_file_twice(sd1, good_sd1):
    _rejects(sd1, [LoraSpec(good_sd1, "good"), LoraSpec(good_sd1, "good", te=0.3)], "good.safetensors", "twice")


def test_failed_call_keeps_previous_set(sd1, good_sd1, tmp_path):
    """A good LoRA is active; a request adding a broken one changes nothing (weights included)."""
    manager = LoraManager(sd1, mode="fast")
    manager.set_loras([LoraSpec(good_sd1, "good", te=0.5, unet=0.5)])
    image = files.render(sd1)
    broken = tmp_path / "b.safetensors"
    broken.write_bytes(b"garbage")
    _rejects(sd1, [LoraSpec(good_sd1, "good", te=1.0, unet=1.0), LoraSpec(broken, "b")], "b.safetensors",
             manager=manager)
    np.testing.assert_array_equal(files.render(sd1), image)
    manager.clear()


def test_partial_match_applies_and_reports(sd1, tmp_path):
    sd, truth = files.make_lora(sd1, unet="attn")
    sd["lora_unet_not_a_layer_anywhere.lora_up.weight"] = torch.ones(4, 4)
    sd["lora_unet_not_a_layer_anywhere.lora_down.weight"] = torch.ones(4, 4)
    path = files.save(sd, tmp_path / "partial.safetensors")
    manager = LoraManager(sd1, mode="fast")
    report = manager.set_loras([LoraSpec(path, "partial")])
    lora = report.loras[0]
    assert lora.layers == len(truth)
    assert sorted(lora.unmatched_keys) == ["lora_unet_not_a_layer_anywhere.lora_down.weight",
                                           "lora_unet_not_a_layer_anywhere.lora_up.weight"]
    assert lora.matched_keys == 3 * len(truth)
    assert any("partial" in w and "2 of" in w for w in report.warnings)
    manager.clear()
