"""Key map coverage: every convention's names, on both architectures, resolve to the right module."""
from __future__ import annotations

import pytest
from torch import nn

from lora_ui.lora.keymap import build_keymap

from tests.lora import files


@pytest.fixture(scope="module")
def maps(sd1, sdxl):
    return {"sd1": (sd1, build_keymap(sd1)), "sdxl": (sdxl, build_keymap(sdxl))}


def test_arch_from_pipeline(maps):
    assert maps["sd1"][1].arch == "sd1"
    assert maps["sdxl"][1].arch == "sdxl"


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
@pytest.mark.parametrize("convention", ["kohya", "kohya_ldm", "kohya_te1", "peft", "lycoris"])
def test_every_layer_resolves_in_every_convention(maps, arch, convention):
    pipe, km = maps[arch]
    layers = files.layers_of(pipe, unet="all", te=convention != "lycoris")
    assert len(layers) > 100
    for layer in layers:
        prefix = files.key_prefix(pipe, layer, convention)
        suffix = ".lora_A.weight" if convention == "peft" else ".lora_down.weight"
        hit = km.resolve(prefix + suffix)
        assert hit is not None, prefix
        target, part = hit
        assert target.module is layer.module, (prefix, target.id)
        assert part == "lora_down.weight"


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_every_patchable_module_has_a_kohya_name(maps, arch):
    pipe, km = maps[arch]
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, comp, None)
        if model is None:
            continue
        for path, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)):
                assert km.targets[f"{comp}:{path}"].module is m


LDM_SD1 = {
    "input_blocks_0_0": "conv_in",
    "time_embed_0": "time_embedding.linear_1",
    "time_embed_2": "time_embedding.linear_2",
    "input_blocks_1_1_proj_in": "down_blocks.0.attentions.0.proj_in",
    "input_blocks_2_1_transformer_blocks_0_attn2_to_k": "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k",
    "input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
    "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "input_blocks_7_0_skip_connection": "down_blocks.2.resnets.0.conv_shortcut",
    "input_blocks_11_0_emb_layers_1": "down_blocks.3.resnets.1.time_emb_proj",
    "middle_block_0_in_layers_0": "mid_block.resnets.0.norm1",
    "middle_block_1_transformer_blocks_0_ff_net_0_proj": "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "middle_block_2_out_layers_3": "mid_block.resnets.1.conv2",
    "output_blocks_0_0_out_layers_0": "up_blocks.0.resnets.0.norm2",
    "output_blocks_2_1_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_3_1_transformer_blocks_0_attn1_to_out_0": "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "output_blocks_5_2_conv": "up_blocks.1.upsamplers.0.conv",
    "output_blocks_11_1_proj_out": "up_blocks.3.attentions.2.proj_out",
    "out_0": "conv_norm_out",
    "out_2": "conv_out",
}

LDM_SDXL = {
    "input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
    "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "input_blocks_4_1_transformer_blocks_0_attn1_to_q": "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "input_blocks_8_1_transformer_blocks_1_attn2_to_v": "down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_v",
    "label_emb_0_0": "add_embedding.linear_1",
    "label_emb_0_2": "add_embedding.linear_2",
    "middle_block_1_transformer_blocks_1_ff_net_2": "mid_block.attentions.0.transformer_blocks.1.ff.net.2",
    "output_blocks_0_1_transformer_blocks_1_attn1_to_k": "up_blocks.0.attentions.0.transformer_blocks.1.attn1.to_k",
    "output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_5_2_conv": "up_blocks.1.upsamplers.0.conv",
    "output_blocks_8_0_skip_connection": "up_blocks.2.resnets.2.conv_shortcut",
}


@pytest.mark.parametrize("arch,table", [("sd1", LDM_SD1), ("sdxl", LDM_SDXL)])
def test_ldm_names_from_reference_table(maps, arch, table):
    pipe, km = maps[arch]
    for ldm, path in table.items():
        target, part = km.resolve(f"lora_unet_{ldm}.lora_up.weight")
        assert target.module is pipe.unet.get_submodule(path), ldm
        assert part == "lora_up.weight"


def test_text_encoder_names_with_and_without_text_model(maps):
    pipe, km = maps["sd1"]
    fc1 = pipe.text_encoder.get_submodule("encoder.layers.1.mlp.fc1")
    for key in ("lora_te_text_model_encoder_layers_1_mlp_fc1.alpha", "lora_te_encoder_layers_1_mlp_fc1.alpha",
                "lora_te1_text_model_encoder_layers_1_mlp_fc1.alpha", "text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_A.weight",
                "text_encoder.encoder.layers.1.mlp.fc1.lora.down.weight"):
        target, _ = km.resolve(key)
        assert target.module is fc1, key
    assert km.resolve("lora_te2_text_model_encoder_layers_1_mlp_fc1.alpha") is None  # SD1 has one encoder
    xl, kmx = maps["sdxl"]
    q2 = xl.text_encoder_2.get_submodule("text_model.encoder.layers.0.self_attn.q_proj")
    q1 = xl.text_encoder.get_submodule("encoder.layers.0.self_attn.q_proj")
    assert kmx.resolve("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha")[0].module is q2
    assert kmx.resolve("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight")[0].module is q2
    assert kmx.resolve("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha")[0].module is q1


def test_dotted_network_parts_are_normalised(maps):
    pipe, km = maps["sd1"]
    base = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    expect = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
              "lora.down.weight": "lora_down.weight", "lora.up.weight": "lora_up.weight",
              "lora_linear_layer.down.weight": "lora_down.weight", "alpha": "alpha"}
    for part, want in expect.items():
        target, got = km.resolve(f"{base}.{part}")
        assert target.path == base[len("unet."):]
        assert got == want
    # bare diffusers path and oft_unet_ prefix
    assert km.resolve("down_blocks.0.attentions.0.proj_in.lora_A.weight")[0].path == "down_blocks.0.attentions.0.proj_in"
    assert km.resolve("oft_unet_input_blocks_1_1_proj_in.oft_blocks")[0].path == "down_blocks.0.attentions.0.proj_in"


def test_unknown_names_are_not_guessed(maps):
    _, km = maps["sd1"]
    for key in ("lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight",
                "lora_unet_downblocks_0_attentions_0_proj_in.lora_up.weight",  # no underscore guessing
                "lora_unet_input_blocks_12_1_proj_in.lora_up.weight",
                "unet.down_blocks.0.attentions.0.lora_A.weight",  # not a patchable module
                "something", "model.diffusion_model.input_blocks.1.1.proj_in.weight"):
        assert km.resolve(key) is None, key


def test_block_ids(maps):
    pipe, km = maps["sd1"]
    by_path = {t.path: t for t in km.targets.values() if t.component == "unet"}
    assert by_path["conv_in"].lbw_block == "IN00"
    assert by_path["down_blocks.1.attentions.1.proj_in"].lbw_block == "IN05"
    assert by_path["down_blocks.2.downsamplers.0.conv"].lbw_block == "IN09"
    assert by_path["mid_block.resnets.1.conv2"].lbw_block == "M00"
    assert by_path["up_blocks.3.attentions.2.proj_out"].lbw_block == "OUT11"
    assert by_path["time_embedding.linear_1"].lbw_block == ""
    assert by_path["up_blocks.2.resnets.0.conv1"].level == "up_2"
    assert all(t.lbw_block == "BASE" and t.level == "te" for t in km.targets.values() if t.component == "text_encoder")
    _, kmx = maps["sdxl"]
    by_path = {t.path: t for t in kmx.targets.values() if t.component == "unet"}
    assert by_path["down_blocks.2.attentions.1.transformer_blocks.1.attn1.to_q"].lbw_block == "IN08"
    assert by_path["up_blocks.0.attentions.0.proj_in"].lbw_block == "OUT00"
    assert by_path["up_blocks.2.resnets.2.conv2"].lbw_block == "OUT08"
