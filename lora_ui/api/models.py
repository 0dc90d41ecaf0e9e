"""Pydantic request/response models of the A1111-compatible API. Unknown fields are ignored (clients
written for A1111 send many we do not use), so every request model uses `extra="ignore"`."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field


def _no_bool(value: Any) -> Any:
    """JSON true/false is not a number here (pydantic would read `steps: true` as 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


def _no_surrogates(value: str) -> str:
    """A lone UTF-16 surrogate ("\\ud800") cannot be encoded as UTF-8 (tokenizer, PNG text): refuse it here."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"holds a lone surrogate at character {exc.start} (not valid Unicode text)") from None
    return value


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
Text = Annotated[str, AfterValidator(_no_surrogates)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# A1111 txt2img fields this app does not implement. Sent with a value that would change the image they
# are refused (422 naming the field) rather than silently ignored; their A1111 defaults (what clients
# send when they do not use them) are accepted. Sampler, scheduler, subseed, seed-resize and RNG fields
# are not listed here: the sampling engine owns them.
UNSUPPORTED_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "hr_checkpoint_name": (None, ""),
    "firstphase_width": (None, 0),
    "firstphase_height": (None, 0),
    "restore_faces": (None, False),
    "tiling": (None, False),
    "do_not_save_samples": (None, False),
    "do_not_save_grid": (None, False),
    "alwayson_scripts": (None, {}),
    "refiner_checkpoint": (None, ""),
    "refiner_switch_at": (None, 0, 0.0),
    "init_images": (None, []),
    "mask": (None, ""),
    "initial_noise_multiplier": (None, 1, 1.0),
    "image_cfg_scale": (None, 0, 0.0, 1, 1.0, 1.5),   # instruct-pix2pix models only
    "inpainting_mask_weight": (None, 1, 1.0),
}


def unsupported_fields(extra: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """(field, value) for each A1111 field we do not implement that asks for something."""
    out = []
    hires_off = (extra or {}).get("enable_hr") in (False, None)
    for name, value in (extra or {}).items():
        if hires_off and name.startswith("hr_"):
            continue  # A1111 reads the hires fields only with enable_hr (webuiapi sends hr_upscaler "Latent")
        allowed = UNSUPPORTED_DEFAULTS.get(name)
        if allowed is not None and not any(value == a and type(value) is type(a) or (value is None and a is None)
                                           or (isinstance(a, (int, float)) and not isinstance(a, bool)
                                               and isinstance(value, (int, float)) and not isinstance(value, bool)
                                               and value == a)
                                           for a in allowed):
            out.append((name, value))
    return out


class Txt2ImgBody(_Lenient):
    """A1111's StableDiffusionTxt2ImgProcessingAPI, the fields this app uses. Other A1111 fields it does
    not implement (hires fix, styles, restore faces, scripts...) are refused when they ask for
    something (`UNSUPPORTED_DEFAULTS`); fields A1111 does not know are ignored."""

    model_config = ConfigDict(extra="allow")

    prompt: Text = Field("", description="Prompt; `<lora:name:weight>` tags apply LoRAs for this request only.")
    negative_prompt: Text = ""
    seed: Int = Field(-1, description="-1 = random")
    subseed: Int = Field(-1, description="Variation seed (-1 = random); used when subseed_strength > 0")
    subseed_strength: Float = Field(0.0, description="Variation strength, 0..1 (slerp towards the subseed's noise)")
    seed_resize_from_h: Int = Field(-1, description="'Seed resize from' height (> 0 with the width to take effect)")
    seed_resize_from_w: Int = Field(-1, description="'Seed resize from' width")
    eta: Float | None = Field(None, description="Eta of ancestral/SDE/DDIM samplers; None = A1111's default")
    s_churn: Float = 0.0
    s_tmin: Float = 0.0
    s_tmax: Float | None = None
    s_noise: Float = 1.0
    sampler_name: str | None = Field(None, description="A1111 sampler name, e.g. 'Euler a', 'DPM++ 2M'")
    sampler_index: str | None = Field(None, description="Old A1111 alias of sampler_name")
    scheduler: str | None = Field(None, description="A1111 'Schedule type': Automatic, Karras, ...")
    steps: Int = 20
    cfg_scale: Float = 7.0
    width: Int | None = Field(None, description="Pixels, multiple of 8; default: the model's native size")
    height: Int | None = None
    batch_size: Int = 1
    n_iter: Int = Field(1, description="Batch count")
    styles: list[Text] | None = Field(None, description="Style names from styles.csv (GET /sdapi/v1/prompt-styles), "
                                                         "applied in order to the prompt and negative prompt")
    script_name: str | None = Field(None, description="'x/y/z plot' (GET /sdapi/v1/scripts); empty: no script")
    script_args: list[Any] = Field(default_factory=list, description="The script's arguments, as A1111's x/y/z plot "
                                   "takes them: x_type, x_values, x_values_dropdown, y_type, ...")
    override_settings: dict[str, Any] | None = Field(
        None, description="Per-request options: sd_model_checkpoint, sd_vae, CLIP_stop_at_last_layers")
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = False
    enable_hr: bool = Field(False, description="Hires. fix: a second img2img pass at hr_scale or hr_resize_x/y")
    denoising_strength: Float | None = Field(None, description="Hires / img2img denoising, 0..1 (None: 0.7)")
    hr_scale: Float = 2.0
    hr_upscaler: str | None = Field(None, description="/sdapi/v1/upscalers or /latent-upscale-modes name (None: Latent)")
    hr_second_pass_steps: Int = Field(0, description="0: the same as steps")
    hr_resize_x: Int = 0
    hr_resize_y: Int = 0
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: Text = ""
    hr_negative_prompt: Text = ""


class Img2ImgBody(Txt2ImgBody):
    """A1111's StableDiffusionImg2ImgProcessingAPI: the txt2img fields plus init images and inpainting."""

    init_images: list[Text] = Field(default_factory=list, description="base64 images (one, or one per batch image)")
    resize_mode: Int = Field(0, description="0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale")
    denoising_strength: Float | None = Field(0.75, description="0..1")
    mask: Text | None = Field(None, description="base64 mask: white (or opaque) = repaint")
    mask_blur: Int | None = Field(None, description="Gaussian blur of the mask in px (default 4)")
    mask_blur_x: Int = 4
    mask_blur_y: Int = 4
    inpainting_fill: Int = Field(0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool | Int = Field(True, description="Inpaint area: true = only masked")
    inpaint_full_res_padding: Int = 0
    inpainting_mask_invert: Int = Field(0, description="1 = inpaint not masked")
    include_init_images: bool = False


class ExtraSingleImageBody(_Lenient):
    """A1111's ExtrasSingleImageRequest: upscale one image (face restoration is not implemented)."""

    model_config = ConfigDict(extra="allow")

    image: Text = Field(description="base64 image")
    resize_mode: Int = Field(0, description="0: upscale by upscaling_resize, 1: to upscaling_resize_w x _h")
    upscaling_resize: Float = 2.0
    upscaling_resize_w: Int = 512
    upscaling_resize_h: Int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: Float = 0.0
    gfpgan_visibility: Float = 0.0
    codeformer_visibility: Float = 0.0
    show_extras_results: bool = True


class ExtraSingleImageResponse(BaseModel):
    html_info: str
    image: str


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscaleModeItem(BaseModel):
    name: str


class Txt2ImgResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs with the infotext in their `parameters` chunk")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: prompt, all_prompts, seed, all_seeds, infotexts, ...")


class PngInfoBody(_Lenient):
    image: Text = Field(description="base64 image (PNG, JPEG or WebP), with or without a data: URL prefix")


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


class SdVaeItem(BaseModel):
    model_name: str
    filename: str


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None
    negative_prompt: str | None


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
    name: Text
    weight: Float = 1.0


class CompareBody(Txt2ImgBody):
    """A txt2img body plus the LoRAs to compare; the seed is fixed once for both sides."""

    loras: list[LoraWeight] = Field(default_factory=list,
                                    description="LoRAs for the 'with' side; empty: the prompt's own tags")
    change_threshold: Int = Field(2, description="a pixel counts as changed above this (0..255)")


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
    weights: list[Float] | Text = Field("0, 0.25, 0.5, 0.75, 1",
                                       description="weights (columns): a list or A1111 X/Y text such as '0-1 [5]'")
    loras: list[Text] = Field(default_factory=list, description="LoRA names (rows); empty: the prompt's own tags")


class SweepResponse(BaseModel):
    grid: str = Field(description="base64 PNG grid with labels and the infotext embedded")
    weights: list[float]
    loras: list[str]
    seed: int
    renders: int
    infotext: str
