"""Network type, rank, architecture and metadata decoding from headers of synthetic LoRA files."""
import json

import numpy as np
import pytest

from lora_ui.library.inspect import decode_metadata, detect_arch, split_key, summarize_header, tag_frequency
from lora_ui.library.synthetic import (
    CONTEXT_WIDTH,
    NETWORK_TYPES,
    kohya_metadata,
    network_tensors,
    peft_tensors,
    sd1_modules,
    sdxl_modules,
    write_lora,
)
from lora_ui.safetensors_header import read_header


def summary_of(tmp_path, tensors, metadata=None, name="x"):
    return summarize_header(read_header(write_lora(tmp_path / f"{name}.safetensors", tensors, metadata)))


EXPECTED_RANK = {"LoRA": 4, "LoCon": 4, "DoRA": 4, "LoHa": 4, "LoKr": 4, "IA3": None, "Full": None, "Norm": None,
                 "GLoRA": 4, "OFT": 4, "BOFT": 4}


@pytest.mark.parametrize("network_type", NETWORK_TYPES)
@pytest.mark.parametrize("arch", ["SD1", "SDXL"])
def test_every_network_type_on_both_layouts_without_metadata(tmp_path, network_type, arch):
    resnets = network_type == "LoCon"
    modules = sd1_modules(resnets=resnets) if arch == "SD1" else sdxl_modules(resnets=resnets)
    summary = summary_of(tmp_path, network_tensors(modules, network_type, rank=4, conv_rank=2))
    assert summary.network_type == network_type
    assert summary.rank == EXPECTED_RANK[network_type]
    assert summary.conv_rank == (2 if network_type == "LoCon" else None)
    assert summary.dora == (network_type == "DoRA")
    assert summary.module_count == len(modules)
    assert summary.unmatched_keys == 0
    assert summary.has_metadata is False and summary.alias is None
    assert summary.arch == arch  # by context width (LoRA family, LoHa) or else by key names
    expected_te = sum(1 for m, _, _ in modules if m.startswith(("lora_te", "oft_te")))
    assert summary.te_modules == expected_te


def test_sdxl_detected_by_key_names_when_widths_say_nothing(tmp_path):
    # context width 8 (tiny): only the names tell
    assert summary_of(tmp_path, network_tensors(sdxl_modules(context=8), "LoRA"), name="a").arch == "SDXL"
    unet_only = network_tensors(sdxl_modules(text_encoder=False, context=8), "LoRA")
    assert summary_of(tmp_path, unet_only, name="b").arch == "SDXL"  # input_blocks names
    te2_only = {k: v for k, v in network_tensors(sdxl_modules(context=8), "LoRA").items() if k.startswith("lora_te2")}
    assert summary_of(tmp_path, te2_only, name="c").arch == "SDXL"
    assert summary_of(tmp_path, network_tensors(sd1_modules(context=8), "LoRA"), name="d").arch == "SD1"


def test_sd1_ldm_names_are_not_mistaken_for_sdxl(tmp_path):
    tensors = {}
    rng = np.random.default_rng(0)
    for block in (1, 2, 4):
        tensors[f"lora_unet_input_blocks_{block}_1_proj_in.lora_down.weight"] = rng.standard_normal((4, 8)).astype(np.float16)
        tensors[f"lora_unet_input_blocks_{block}_1_proj_in.lora_up.weight"] = rng.standard_normal((8, 4)).astype(np.float16)
    assert summary_of(tmp_path, tensors).arch == "SD1"


def test_sd2_by_context_width_and_by_metadata(tmp_path):
    assert summary_of(tmp_path, network_tensors(sd1_modules(context=CONTEXT_WIDTH["SD2"]), "LoRA"), name="a").arch == "SD2"
    meta = kohya_metadata("x", arch="SD2")
    assert summary_of(tmp_path, network_tensors(sd1_modules(context=8), "LoRA"), meta, name="b").arch == "SD2"


def test_metadata_comes_first_like_a1111(tmp_path):
    # SD1-shaped tensors but metadata says SDXL: A1111 trusts the metadata
    meta = {"ss_base_model_version": "sdxl_base_v1-0"}
    assert summary_of(tmp_path, network_tensors(sd1_modules(), "LoRA"), meta, name="a").arch == "SDXL"
    meta = {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}
    assert summary_of(tmp_path, network_tensors(sd1_modules(context=8), "LoRA"), meta, name="b").arch == "SDXL"
    # any kohya metadata and nothing telling in the keys -> SD1 (A1111's fallback)
    unknown_keys = {"weird_prefix_thing.lora_down.weight": np.zeros((2, 8), np.float16),
                    "weird_prefix_thing.lora_up.weight": np.zeros((8, 2), np.float16)}
    assert summary_of(tmp_path, unknown_keys, {"ss_network_dim": "2"}, name="c").arch == "SD1"
    assert summary_of(tmp_path, unknown_keys, None, name="d").arch == "Unknown"
    # diffusers' {"format": "pt"} says nothing: keys decide
    assert summary_of(tmp_path, network_tensors(sdxl_modules(context=8), "LoRA"), {"format": "pt"}, name="e").arch == "SDXL"


def test_peft_dotted_names(tmp_path):
    summary = summary_of(tmp_path, peft_tensors(sd1_modules(), rank=6))
    assert (summary.network_type, summary.rank, summary.arch) == ("LoRA", 6, "SD1")
    assert summary.module_count == len(sd1_modules())
    assert summary.unmatched_keys == 0


def test_split_key():
    assert split_key("lora_unet_down_blocks_0_attn1_to_q.lora_down.weight") == ("lora_unet_down_blocks_0_attn1_to_q", "lora_down.weight")
    assert split_key("unet.down_blocks.0.attn1.to_q.lora_A.weight") == ("unet.down_blocks.0.attn1.to_q", "lora_A.weight")
    assert split_key("text_encoder.x.lora.down.weight") == ("text_encoder.x", "lora.down.weight")
    assert split_key("something") == ("something", "")


def test_alias_alpha_hash_and_embeddings(tmp_path):
    tensors = network_tensors(sd1_modules(), "LoRA", rank=8)
    tensors["bundle_emb.mychar.string_to_param.*"] = np.zeros((2, 768), np.float16)
    meta = kohya_metadata("My Alias", dim=8, alpha=4, extra={"sshs_model_hash": "ABCDEF0123456789" * 4})
    summary = summary_of(tmp_path, tensors, meta)
    assert summary.alias == "My Alias"
    assert summary.alpha == 4.0
    assert summary.rank == 8
    assert summary.embeddings == 1
    assert summary.sshs_model_hash == "ABCDEF0123456789" * 4
    assert summary.base_model_name == "v1-5-pruned-emaonly.safetensors"


def test_mixed_lycoris_file_takes_the_majority_type_and_ignores_norm(tmp_path):
    mods = sd1_modules()
    tensors = network_tensors(mods[:50], "LoHa") | network_tensors(mods[50:60], "LoRA") | network_tensors(mods[:70], "Norm")
    assert summary_of(tmp_path, tensors).network_type == "LoHa"


def test_decode_metadata_and_tag_frequency():
    meta = {"ss_tag_frequency": json.dumps({"10_a": {" 1girl": 3, "solo": 2}, "5_b": {"1girl": 4, "hat": 2}}),
            "ss_bucket_info": '{"buckets": {}}', "ss_dim": "4", "broken": "{not json", "list": "[1, 2]"}
    decoded = decode_metadata(meta)
    assert decoded["ss_bucket_info"] == {"buckets": {}}
    assert decoded["ss_dim"] == "4"          # only JSON-looking values are parsed
    assert decoded["broken"] == "{not json"  # left as text
    assert decoded["list"] == [1, 2]
    freq = tag_frequency(decoded)
    assert freq == {"1girl": 7, "hat": 2, "solo": 2}
    assert list(freq) == ["1girl", "hat", "solo"]
    assert tag_frequency(meta) == freq  # raw JSON text too
    assert tag_frequency({"ss_tag_frequency": "garbage"}) == {}
    assert tag_frequency({"ss_tag_frequency": {"d": {"x": "three", "y": True, "z": 1}}}) == {"z": 1}


def test_detect_arch_directly():
    assert detect_arch({"ss_v2": "True"}, {}) == "SD2"
    assert detect_arch({}, {}) == "Unknown"
    assert detect_arch({"ss_base_model_version": "sd_v1"}, {}) == "SD1"


def test_locon_by_resnet_layer_names_without_3x3_kernels(tmp_path):
    mods = sd1_modules(te_layers=1)[:12] + [("lora_unet_down_blocks_0_resnets_0_time_emb_proj", 8, False)]
    summary = summary_of(tmp_path, network_tensors(mods, "LoRA", rank=4), name="a")
    assert (summary.network_type, summary.rank, summary.conv_rank) == ("LoCon", 4, None)
    plain = summary_of(tmp_path, network_tensors(mods[:-1], "LoRA", rank=4), name="b")
    assert plain.network_type == "LoRA"
