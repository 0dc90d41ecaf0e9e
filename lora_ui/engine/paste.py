"""A pasted A1111 infotext -> the Txt2ImgRequest fields that render the same picture (no gradio).

A1111 1.10 reads an infotext this way (modules/infotext_utils, as documented in
/work/shared/reference/a1111-sampling.md §8): a key that is missing means its default, not "keep what the
UI shows" - a PNG made with the default RNG has no "RNG" key, and must not be rendered with the NV source
left selected from an earlier paste. So every sampling field gets a value: the pasted one or A1111's
default for a missing key:

    Sampler            DPM++ 2M          ("DPM++ 2M Karras", "k_euler_a"... resolve to sampler + schedule)
    Schedule type      Automatic         (a sampler's own default schedule reads back as Automatic)
    Clip skip          1                 RNG                GPU
    Variation seed(+strength)  -, 0      Seed resize from   0x0 (off)
    ENSD               0                 Eta / Eta DDIM     the sampler's default
    Sigma churn/tmin/tmax/noise, Schedule min sigma/max sigma/rho: 0 (1 for noise) = A1111's defaults
    Hires upscale/resize/steps/upscaler/sampler/...   hires fix off
    VAE                the app's own VAE setting (a pasted name selects that file)

Keys that change the picture but that this app does not render (hires fix, VAE, refiner...) are named in
the messages, never dropped silently.
"""
from __future__ import annotations

from typing import Any, Mapping

from lora_ui.engine.sampling import registry

# infotext key -> (request field, A1111's value when the key is missing)
_NUMBERS: dict[str, tuple[str, Any]] = {
    "Steps": ("steps", None), "CFG scale": ("cfg_scale", None), "Seed": ("seed", None),
    "Size-1": ("width", None), "Size-2": ("height", None), "Clip skip": ("clip_skip", 1),
    "Variation seed": ("subseed", -1), "Variation seed strength": ("subseed_strength", 0.0),
    "Seed resize from-1": ("seed_resize_from_w", 0), "Seed resize from-2": ("seed_resize_from_h", 0),
    "ENSD": ("ensd", 0), "Sigma churn": ("s_churn", 0.0), "Sigma tmin": ("s_tmin", 0.0),
    "Sigma tmax": ("s_tmax", 0.0), "Sigma noise": ("s_noise", 1.0), "Schedule min sigma": ("sigma_min", 0.0),
    "Schedule max sigma": ("sigma_max", 0.0), "Schedule rho": ("rho", 0.0),
}
_INTS = {"steps", "seed", "width", "height", "clip_skip", "subseed", "seed_resize_from_w", "seed_resize_from_h", "ensd"}
# keys A1111 writes that change the image and that this app does not (yet) honour
NOT_RENDERED = ("Refiner", "Face restoration", "Tiling", "Pad conds", "Pad conds v0",
                "Old prompt editing timelines", "Downcast alphas_cumprod", "NGMS", "Emphasis")
# the hires fix's fields when the infotext has no hires keys (A1111: off)
HIRES_OFF = {"enable_hr": False}


def _number(field: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    number = float(value)
    if field in _INTS:
        if not number.is_integer():
            raise ValueError
        return int(number)
    return number


def sampling_from_infotext(parsed: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(sampler, scheduler, eta, rng) fields, messages. Raises nothing: a value that cannot be used
    is reported and the A1111 default is used instead."""
    messages: list[str] = []
    fields: dict[str, Any] = {}
    try:
        sampler, schedule = registry.parse_sampler_and_schedule(
            str(parsed.get("Sampler") or "DPM++ 2M"), str(parsed.get("Schedule type") or "Automatic"))
    except registry.SamplingError as exc:
        messages.append(f"Sampler/Schedule type not available here ({exc}); kept the current one")
    else:
        fields.update(sampler=sampler, scheduler=schedule)
    rng = str(parsed.get("RNG", "GPU"))
    if rng in ("GPU", "CPU", "NV"):
        fields["rng"] = rng
    else:
        messages.append(f"RNG '{rng}' is not one of GPU, CPU, NV; using GPU")
        fields["rng"] = "GPU"
    eta = parsed.get("Eta DDIM", parsed.get("Eta"))
    try:
        fields["eta"] = None if eta is None else float(eta)
    except (TypeError, ValueError):
        messages.append(f"Eta '{eta}' is not a number; using the sampler's default")
        fields["eta"] = None
    return fields, messages


def request_fields_from_infotext(parsed: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`parse_infotext` output -> (Txt2ImgRequest fields except the prompt, messages for the user).

    Fields whose key is missing get A1111's default (module doc); a key present with an unusable value
    is left out with a message (the widget keeps its value)."""
    fields, messages = sampling_from_infotext(parsed)
    for key, (field, default) in _NUMBERS.items():
        if key not in parsed:
            if default is not None:
                fields[field] = default
            continue
        try:
            fields[field] = _number(field, parsed[key])
        except (TypeError, ValueError):
            messages.append(f"{key} '{parsed[key]}' is not a number; kept the current one")
    fields["negative_prompt"] = str(parsed.get("Negative prompt", ""))
    fields.update(_hires(parsed, messages))
    if "VAE" in parsed:  # no key: the app's own VAE setting, as A1111 (it does not reset sd_vae on paste)
        fields["vae"] = str(parsed["VAE"])
    ignored = [k for k in NOT_RENDERED if k in parsed]
    if ignored:
        messages.append("Not applied (this app does not render them yet): " + ", ".join(ignored))
    return fields, messages


def _hires(parsed: Mapping[str, Any], messages: list[str]) -> dict[str, Any]:
    """The hires fix fields (engine.hires reads its own infotext keys); off when the keys are missing."""
    from lora_ui.engine.hires import hires_request_from_infotext

    try:
        return hires_request_from_infotext(dict(parsed)) or dict(HIRES_OFF)
    except (TypeError, ValueError) as exc:
        messages.append(f"Hires fix values not usable ({exc}); hires fix left as it is")
        return {}
