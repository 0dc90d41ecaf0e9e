"""Pydantic request/response models of the A1111-compatible API. Unknown fields are ignored (clients
written for A1111 send many we do not use), so every request model uses `extra="ignore"`."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Txt2ImgBody(_Lenient):
    """A1111's StableDiffusionTxt2ImgProcessingAPI, the fields this app uses."""

    prompt: str = Field("", description="Prompt; `<lora:name:weight>` tags apply LoRAs for this request only.")
    negative_prompt: str = ""
    seed: int = Field(-1, description="-1 = random")
    subseed: int = Field(-1, description="Variation seed (-1 = random); used when subseed_strength > 0")
    subseed_strength: float = Field(0.0, description="Variation strength, 0..1 (slerp towards the subseed's noise)")
    seed_resize_from_h: int = Field(-1, description="'Seed resize from' height (> 0 with the width to take effect)")
    seed_resize_from_w: int = Field(-1, description="'Seed resize from' width")
    eta: float | None = Field(None, description="Eta of ancestral/SDE/DDIM samplers; None = A1111's default")
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float | None = None
    s_noise: float = 1.0
    sampler_name: str | None = Field(None, description="A1111 sampler name, e.g. 'Euler a', 'DPM++ 2M'")
    sampler_index: str | None = Field(None, description="Old A1111 alias of sampler_name")
    scheduler: str | None = Field(None, description="A1111 'Schedule type': Automatic, Karras, ...")
    steps: int = 20
    cfg_scale: float = 7.0
    width: int | None = Field(None, description="Pixels, multiple of 8; default: the model's native size")
    height: int | None = None
    batch_size: int = 1
    n_iter: int = Field(1, description="Batch count")
    override_settings: dict[str, Any] | None = Field(
        None, description="Per-request options: sd_model_checkpoint, CLIP_stop_at_last_layers")
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = False


class Txt2ImgResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs with the infotext in their `parameters` chunk")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: prompt, all_prompts, seed, all_seeds, infotexts, ...")


class PngInfoBody(_Lenient):
    image: str = Field(description="base64 image (PNG, JPEG or WebP), with or without a data: URL prefix")


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class SdModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class ProgressStateModel(BaseModel):
    skipped: bool
    interrupted: bool
    stopping_generation: bool = False
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    progress: float = Field(description="0..1 of the current job")
    eta_relative: float = Field(description="seconds left, estimated")
    state: ProgressStateModel
    current_image: str | None = Field(description="base64 PNG preview of the current latents")
    textinfo: str | None
    current_task: str | None = None


class LoraWeight(_Lenient):
    name: str
    weight: float = 1.0


class CompareBody(Txt2ImgBody):
    """A txt2img body plus the LoRAs to compare; the seed is fixed once for both sides."""

    loras: list[LoraWeight] = Field(default_factory=list,
                                    description="LoRAs for the 'with' side; empty: the prompt's own tags")
    change_threshold: int = Field(2, description="a pixel counts as changed above this (0..255)")


class CompareResponse(BaseModel):
    without: str = Field(description="base64 PNG rendered without any LoRA")
    with_lora: str = Field(description="base64 PNG rendered with the LoRA(s), same seed and settings")
    heatmap: str = Field(description="base64 PNG of |with - without| with its colour scale")
    mean_abs_diff: float = Field(description="mean |with - without| over pixels and channels, 0..255")
    changed_share: float = Field(description="share of pixels (0..1) changed by more than the threshold")
    max_abs_diff: int
    threshold: int
    seed: int
    without_prompt: str
    with_prompt: str
    infotexts: list[str]
    warnings: list[str]


class SweepBody(Txt2ImgBody):
    weights: list[float] | str = Field("0, 0.25, 0.5, 0.75, 1",
                                       description="weights (columns): a list or A1111 X/Y text such as '0-1 [5]'")
    loras: list[str] = Field(default_factory=list, description="LoRA names (rows); empty: the prompt's own tags")


class SweepResponse(BaseModel):
    grid: str = Field(description="base64 PNG grid with labels and the infotext embedded")
    weights: list[float]
    loras: list[str]
    seed: int
    renders: int
    infotext: str
