"""Hires fix cost: `python -m bench.hires [--quick] [--threads 1]`.

On the 64 px demo model (CPU): txt2img with hires fix 2x (Latent upscaler) against the same work done
separately with the engine's public pieces: a plain txt2img (first pass + its decode), the latent upscale,
and a second pass (conditioning, per-image RNG, `sample_pass` from the upscaled latents, decode).
The hires run has no hidden re-encode or model reload, so it should cost at most that (ratio <= 1.05;
it skips the first pass's decode, so it is usually below 1). Each timing is the fastest of its repeats,
taken in interleaved rounds. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from lora_ui.demo import DEMO_MODEL_DIR
from lora_ui.demo.evaluate import load_demo_pipeline
from lora_ui.engine import conditioning
from lora_ui.engine.checkpoints import wrap_pipeline
from lora_ui.engine.hires import target_size, upscale_latents
from lora_ui.engine.sampling import registry
from lora_ui.engine.sampling.rng import ImageRNG
from lora_ui.engine.txt2img import (Txt2ImgRequest, generate, pass_of, sample_pass, vae_scale_factor)
from lora_ui.engine.vae import decode_to_images

PROMPT = "a big red circle on a blue background"


def separately(model, req: Txt2ImgRequest) -> float:
    """Seconds for: plain txt2img + latent upscale + second pass + decode, each through public pieces."""
    pipe = model.pipe
    start = time.perf_counter()
    generate(model, replace(req, enable_hr=False))
    # the first pass's latents again, outside the timing (plain txt2img returns images only)
    paused = time.perf_counter()
    conds = conditioning.encode_step_conds(pipe, model.arch, [PROMPT], "", req.steps)
    shape = (4, 64 // vae_scale_factor(pipe), 64 // vae_scale_factor(pipe))
    first = sample_pass(model, pass_of(model, req), conds, ImageRNG(shape, [req.seed], source=req.rng), 64, 64,
                        None, None).latents
    start += time.perf_counter() - paused
    target = target_size(64, 64, 2.0, 0, 0, vae_scale_factor(pipe))
    init = upscale_latents(first, "Latent", target)
    length, t_enc = registry.img2img_steps(req.steps, req.denoising_strength, exact=True)
    conds = conditioning.encode_step_conds(pipe, model.arch, [PROMPT], "", req.steps)
    rng = ImageRNG(tuple(init.shape[1:]), [req.seed], source=req.rng)
    spec = replace(pass_of(model, req), steps=length, t_enc=t_enc, init=init)
    latents = sample_pass(model, spec, conds, rng, target.width, target.height, None, None).latents
    decode_to_images(pipe, latents)
    return time.perf_counter() - start


def with_hires(model, req: Txt2ImgRequest) -> float:
    start = time.perf_counter()
    out = generate(model, req)
    assert out.images[0].size == (128, 128)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 steps, 3 rounds (default: 20 steps, 5 rounds)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps, rounds = (8, 3) if args.quick else (20, 5)
    model = wrap_pipeline(load_demo_pipeline(DEMO_MODEL_DIR), name="lora-ui-demo")
    req = Txt2ImgRequest(prompt=PROMPT, seed=1, steps=steps, sampler="Euler a", save_images=False, enable_hr=True,
                         hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.6)
    with_hires(model, req), separately(model, req)          # warm-up
    hires_times, separate_times = [], []
    for _ in range(rounds):
        hires_times.append(with_hires(model, req))
        separate_times.append(separately(model, req))
    result = {"hires_s": round(min(hires_times), 4), "separate_s": round(min(separate_times), 4),
              "ratio": round(min(hires_times) / min(separate_times), 3), "target_ratio": 1.05,
              "steps": steps, "size": "64x64 -> 128x128", "threads": args.threads}
    print(f"hires fix 2x: {result['hires_s']} s; separately: {result['separate_s']} s; ratio {result['ratio']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
