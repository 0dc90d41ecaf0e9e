"""Pasting an A1111 infotext: every sampling key maps to its request field, a missing key means A1111's
default (never "whatever the UI showed"), old sampler names split into sampler + schedule type, keys we
cannot render are named; and a pasted infotext renders the same picture as its own request."""
import numpy as np
import pytest

from lora_ui.engine.paste import request_fields_from_infotext
from lora_ui.engine.txt2img import Txt2ImgRequest, generate
from lora_ui.infotext import parse_infotext

A1111_FULL = (
    "a big red circle on a blue background <lora:LowRA:0.5>\n"
    "Negative prompt: green, blurry\n"
    "Steps: 7, Sampler: DPM++ 2M SDE, Schedule type: Exponential, CFG scale: 6.5, Seed: 3135098381, "
    "Size: 64x64, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Variation seed: 77, "
    "Variation seed strength: 0.25, Seed resize from: 48x40, Clip skip: 2, ENSD: 31337, RNG: NV, Eta: 0.6, "
    "Sigma noise: 0.9, Schedule rho: 3.5, Lora hashes: \"LowRA: 0dfafd9d0f1b\", Version: v1.10.1")
A1111_DEFAULTS = ("a cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, "
                  "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1")


def test_every_sampling_key_reaches_its_field():
    fields, messages = request_fields_from_infotext(parse_infotext(A1111_FULL))
    assert messages == []
    assert fields == {
        "sampler": "DPM++ 2M SDE", "scheduler": "Automatic",  # Exponential is DPM++ 2M SDE's own: Automatic
        "rng": "NV", "eta": 0.6, "steps": 7, "cfg_scale": 6.5, "seed": 3135098381, "width": 64, "height": 64,
        "clip_skip": 2, "subseed": 77, "subseed_strength": 0.25, "seed_resize_from_w": 48, "seed_resize_from_h": 40,
        "ensd": 31337, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 0.9, "sigma_min": 0.0,
        "sigma_max": 0.0, "rho": 3.5, "negative_prompt": "green, blurry", "enable_hr": False}


def test_missing_keys_are_a1111_defaults_not_the_current_widgets():
    fields, _ = request_fields_from_infotext(parse_infotext(A1111_DEFAULTS))
    assert fields["rng"] == "GPU" and fields["eta"] is None and fields["clip_skip"] == 1
    assert fields["subseed_strength"] == 0.0 and (fields["seed_resize_from_w"], fields["seed_resize_from_h"]) == (0, 0)
    assert fields["ensd"] == 0 and fields["s_noise"] == 1.0 and fields["rho"] == 0.0
    assert "subseed" in fields and fields["negative_prompt"] == ""
    no_sampler, _ = request_fields_from_infotext(parse_infotext("a cat\nSteps: 20, CFG scale: 7, Seed: 1, Size: 8x8"))
    assert (no_sampler["sampler"], no_sampler["scheduler"]) == ("DPM++ 2M", "Automatic")


@pytest.mark.parametrize("sampler, want", [
    ("DPM++ 2M Karras", ("DPM++ 2M", "Automatic")),  # Karras is DPM++ 2M's own schedule in 1.10
    ("Euler a Karras", ("Euler a", "Karras")),
    ("DPM++ SDE Exponential", ("DPM++ SDE", "Exponential")),
    ("k_euler_a", ("Euler a", "Automatic")),
    ("Euler SGM Uniform", ("Euler", "SGM Uniform")),
])
def test_old_sampler_names(sampler, want):
    fields, messages = request_fields_from_infotext(parse_infotext(
        f"x\nSteps: 5, Sampler: {sampler}, CFG scale: 7, Seed: 1, Size: 8x8"))
    assert (fields["sampler"], fields["scheduler"]) == want and messages == []


def test_unusable_and_unrendered_keys_are_named():
    text = ("x\nSteps: 5, Sampler: Bogus, CFG scale: 7, Seed: 1, Size: 8x8, RNG: Quantum, Eta: lots, "
            "Face restoration: CodeFormer, ENSD: many")
    fields, messages = request_fields_from_infotext(parse_infotext(text))
    joined = " | ".join(messages)
    assert "Sampler" in joined and "Quantum" in joined and "Eta 'lots'" in joined and "ENSD 'many'" in joined
    assert "Not applied" in joined and "Face restoration" in joined
    assert "sampler" not in fields and fields["rng"] == "GPU" and fields["eta"] is None and "ensd" not in fields


def test_hires_and_vae_keys_are_applied():
    text = ("x\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Denoising strength: 0.45, "
            "Hires upscale: 2, Hires steps: 3, Hires upscaler: Latent (nearest), VAE: my-vae.safetensors")
    fields, messages = request_fields_from_infotext(parse_infotext(text))
    assert messages == []
    assert (fields["enable_hr"], fields["hr_scale"], fields["hr_second_pass_steps"], fields["hr_upscaler"],
            fields["denoising_strength"], fields["vae"]) == (True, 2.0, 3, "Latent (nearest)", 0.45, "my-vae.safetensors")


def test_a_pasted_infotext_renders_the_picture_it_describes(sd1_model):
    """Render with every option set, paste the infotext it wrote, render again: the same bytes."""
    first = generate(sd1_model, Txt2ImgRequest(
        prompt="a red circle", negative_prompt="blue", sampler="Euler a", scheduler="Karras", steps=4,
        cfg_scale=6.0, seed=1234, subseed=99, subseed_strength=0.3, seed_resize_from_w=24, seed_resize_from_h=16,
        rng="NV", eta=0.8, ensd=5, clip_skip=2, save_images=False))
    parsed = parse_infotext(first.infotexts[0])
    fields, messages = request_fields_from_infotext(parsed)
    assert messages == []
    again = generate(sd1_model, Txt2ImgRequest(prompt=parsed["Prompt"], save_images=False, **fields))
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    assert again.infotexts == first.infotexts
    # and the options mattered: without them it is another picture
    plain = generate(sd1_model, Txt2ImgRequest(prompt="a red circle", negative_prompt="blue", sampler="Euler a",
                                               scheduler="Karras", steps=4, cfg_scale=6.0, seed=1234,
                                               clip_skip=2, save_images=False))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(plain.images[0]))
