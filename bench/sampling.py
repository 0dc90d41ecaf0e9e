"""Sampling-loop benchmark: `python -m bench.sampling [--quick] [--threads 1] [--device cpu|cuda]`.

Our own A1111 sampling loop (lora_ui.engine.txt2img.generate) against diffusers' own
StableDiffusionPipeline on the same UNet, text encoder and VAE, in one process: the real SD1.5 UNet and
CLIP-L (built from their configs in bench.lora, seeded random weights: real layer count and shapes), a
small 8x VAE (both contenders decode with it; decoding is not what is measured).

What is measured: the wall time of one denoising step, for Euler, DPM++ 2M (Karras) and DPM++ SDE
(Karras) at CFG 7, batch 1 (two UNet rows per step). Per-step time = (T(long) - T(short)) / (long - short)
steps: the prompt encoding, the noise draw, the VAE decode and the PNG conversion, paid once per image,
cancel out. Wall time and this process's CPU time are both recorded (on a shared machine the CPU time is
the steadier measure of the work; the target is on wall time). Each timing is the fastest of its repeats, and the contenders run in interleaved rounds (ours,
then diffusers', for each sampler and length) so that a slow minute on a shared machine hits both alike.

The last line printed is one JSON object: `step_ratio_vs_diffusers` (ours / diffusers per sampler, wall;
target <= 1.02), `step_ratio_vs_diffusers_cpu_time`, and the per-step seconds behind them.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from bench.lora import CLIP_L, UNET_SD15, _init_random

SAMPLERS = {  # A1111 name -> (diffusers scheduler class, its options), all from SD1.5's training betas
    "Euler": ("EulerDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
}
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def log(msg: str) -> None:
    print(f"[bench.sampling {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_pipeline(device: str, dtype: torch.dtype):
    """SD1.5 UNet + CLIP-L (random weights) and a 4-level (8x) VAE with 8 channels per level."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_ui.testing.tiny_models import clip_tokenizer

    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_SD15)
    unet = unet.to_empty(device="cpu")
    _init_random(unet, 0)
    te = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    _init_random(te, 1)
    te.get_input_embeddings().weight.data.mul_(0.02 * CLIP_L["hidden_size"] ** 0.5)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te.eval(), tokenizer=clip_tokenizer(), unet=unet.eval(),
                                   scheduler=EulerDiscreteScheduler(**BETAS), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def ours(model, sampler: str, steps: int, size: int):
    from lora_ui.engine.txt2img import Txt2ImgRequest, generate

    def run():
        generate(model, Txt2ImgRequest(prompt="a photo of a cat", negative_prompt="blurry", sampler=sampler,
                                       steps=steps, cfg_scale=7.0, width=size, height=size, seed=1,
                                       save_images=False))
    return run


def diffusers(pipe, sampler: str, steps: int, size: int):
    import diffusers as d

    cls_name, options = SAMPLERS[sampler]
    scheduler = getattr(d, cls_name)(**BETAS, **options)

    def run():
        pipe.scheduler = scheduler
        pipe(prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=steps, guidance_scale=7.0,
             width=size, height=size, generator=torch.Generator("cpu").manual_seed(1), output_type="np")
    return run


def timed(fn, device: str) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call. On a shared machine the CPU time is the
    steadier measure of the work done (other processes' load shows in wall time only)."""
    if device == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.no_grad():
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def run(quick: bool, device: str) -> dict:
    from lora_ui.engine.checkpoints import wrap_pipeline

    size, short, long_, rounds = (128, 2, 8, 3) if quick else (512, 4, 14, 3)
    dtype = torch.float16 if device == "cuda" else torch.float32
    log(f"building SD1.5-shaped pipeline on {device} ({dtype}); {size}x{size}, {short} vs {long_} steps")
    pipe = build_pipeline(device, dtype)
    model = wrap_pipeline(pipe, name="sd15-random")
    best: dict[tuple, float] = {}
    best_cpu: dict[tuple, float] = {}
    for sampler in SAMPLERS:  # warm-up: first calls allocate
        timed(ours(model, sampler, 1, size), device)
        timed(diffusers(pipe, sampler, 1, size), device)
    for r in range(rounds):
        for sampler in SAMPLERS:
            for steps in (short, long_):
                for name, make in (("ours", lambda: ours(model, sampler, steps, size)),
                                   ("diffusers", lambda: diffusers(pipe, sampler, steps, size))):
                    wall, cpu = timed(make(), device)
                    key = (name, sampler, steps)
                    best[key] = min(best.get(key, float("inf")), wall)
                    best_cpu[key] = min(best_cpu.get(key, float("inf")), cpu)
        log(f"round {r + 1}/{rounds} done")
    def per_step(times):
        return {name: {s: (times[(name, s, long_)] - times[(name, s, short)]) / (long_ - short) for s in SAMPLERS}
                for name in ("ours", "diffusers")}

    wall, cpu = per_step(best), per_step(best_cpu)
    return {
        "device": device, "size": size, "steps": [short, long_], "rounds": rounds,
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "per_step_s": wall, "per_step_cpu_s": cpu,
        "step_ratio_vs_diffusers": {s: round(wall["ours"][s] / wall["diffusers"][s], 3) for s in SAMPLERS},
        "step_ratio_vs_diffusers_cpu_time": {s: round(cpu["ours"][s] / cpu["diffusers"][s], 3) for s in SAMPLERS},
    }


def table(r: dict) -> str:
    rows = ["| sampler | ours, s/step | diffusers, s/step | wall ratio (target <= 1.02) | CPU-time ratio |",
            "|---|---|---|---|---|"]
    for s in SAMPLERS:
        ratio = r["step_ratio_vs_diffusers"][s]
        rows.append(f"| {s} | {r['per_step_s']['ours'][s]:.3f} | {r['per_step_s']['diffusers'][s]:.3f} | "
                    f"{ratio:.3f} {'(met)' if ratio <= 1.02 else '(not met)'} | "
                    f"{r['step_ratio_vs_diffusers_cpu_time'][s]:.3f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128x128, 2 vs 8 steps, 3 rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.quick, args.device)
    print(table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
