"""Component configs of the demo model (SD1 architecture at tiny width) and a small test variant.

Demo: VAE channels 16/32/64 (64x64 px <-> latent 4x16x16), UNet channels 32/64/64 with one layer
per block and conv proj_in/proj_out (SD1 key names apply unchanged), 2-layer CLIP text encoder of
width 64 over the real 49,408-token CLIP vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "engine" / "configs" / "clip_tokenizer"


@dataclass(frozen=True)
class DemoConfig:
    """Widths of one model variant. `image_size` is the training resolution in pixels."""

    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_groups: int = 8
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_groups: int = 8
    unet_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    image_size: int = 64

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


DEMO = DemoConfig()
TINY = DemoConfig(vae_channels=(8, 16, 16), vae_groups=4, unet_channels=(16, 16, 16), unet_groups=4,
                  unet_heads=2, text_hidden=16, text_layers=1, image_size=32)


def build_vae(cfg: DemoConfig, scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels, layers_per_block=1, latent_channels=4,
        norm_num_groups=cfg.vae_groups, sample_size=cfg.image_size, scaling_factor=scaling_factor,
    )


def build_unet(cfg: DemoConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg.latent_size, in_channels=4, out_channels=4,
        block_out_channels=cfg.unet_channels, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cfg.text_hidden, attention_head_dim=cfg.unet_heads,
        norm_num_groups=cfg.unet_groups, use_linear_projection=False,  # SD1: conv proj_in/proj_out
    )


def build_text_encoder(cfg: DemoConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    te_cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_hidden * 2,
        num_hidden_layers=cfg.text_layers, num_attention_heads=2, max_position_embeddings=77,
        projection_dim=cfg.text_hidden, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(te_cfg)


def build_tokenizer():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    if len(tok) != 49408:
        raise RuntimeError(f"CLIP tokenizer files in {TOKENIZER_DIR} are incomplete ({len(tok)} tokens)")
    return tok


def build_scheduler():
    """SD1's training schedule (scaled_linear 0.00085..0.012, 1000 steps, epsilon), Euler sampling."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    )


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
