"""Tiny SD1.x / SDXL pipelines built from configs, with seeded random weights.

They keep the real block layout (SD1: 4 levels x 2 layers, SDXL: 3 levels with
transformer_layers_per_block [1, 1, 2], two text encoders of different widths), so every key
convention (kohya diffusers names, LDM names, PEFT dotted names) can be exercised, at a size that
runs in milliseconds on a CPU. No network: the tokenizer is the real CLIP BPE vocabulary shipped in
`lora_ui/engine/configs/clip_tokenizer`.
"""
from __future__ import annotations

from pathlib import Path

import torch

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "engine" / "configs" / "clip_tokenizer"


def clip_tokenizer(pad_token: str | None = None):
    """The real 49,408-token CLIP tokenizer from the shipped files (SDXL's second one pads with "!")."""
    from transformers import CLIPTokenizer

    kwargs = {"pad_token": pad_token} if pad_token else {}
    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), **kwargs)
    assert len(tok) == 49408, "CLIP tokenizer files are incomplete"
    return tok


def _text_encoder(hidden: int, layers: int, with_projection: bool, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act="quick_gelu" if not with_projection else "gelu",
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(cfg).eval()


def _vae(seed: int, scaling_factor: float):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=scaling_factor,
    ).eval()


def tiny_sd1_pipeline(seed: int = 0):
    """SD1-shaped StableDiffusionPipeline: UNet 4 levels x 2 layers, cross-attn 32, fp32, CPU.

    Latents are 4 x (H/2) x (W/2) because the tiny VAE downsamples once; use 32x32 images.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=False,  # SD1: conv proj_in/proj_out
    ).eval()
    te = _text_encoder(32, 2, False, seed + 1)
    vae = _vae(seed + 2, 0.18215)
    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading",
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=clip_tokenizer(), unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0):
    """SDXL-shaped StableDiffusionXLPipeline: 3 levels, transformer_layers_per_block [1, 1, 2],
    text_time addition embedding, text encoders of widths 32 (CLIP-L like) and 48 (OpenCLIP-G like)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    te1 = _text_encoder(32, 2, False, seed + 1)
    te2 = _text_encoder(48, 2, True, seed + 3)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=32 + 48,
        attention_head_dim=(2, 4, 4),
        norm_num_groups=8,
        use_linear_projection=True,  # SDXL: linear proj_in/proj_out
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 48,
    ).eval()
    vae = _vae(seed + 2, 0.13025)
    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"), unet=unet, scheduler=sched,
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
