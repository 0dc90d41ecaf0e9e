"""LoRA engine benchmark: `python -m bench.lora [--quick] [--threads 1] [--out docs/bench-lora.md]`.

The real SD1.5 UNet and CLIP-L text encoder, built from their configs (written below) with seeded
random weights: real layer count and shapes. A realistic kohya file made with a fixed seed (rank 32,
alpha 16, fp16, every attention/ff/proj layer of the UNet + the text encoder's q/k/v/out/fc1/fc2,
~36 MB), a LoCon variant (plus the resnet 3x3 convs, conv rank 16) and a LoHa variant.

Side by side in one process, same thread count (default 1: on shared 2-core machines two threads
make small ops stall), against diffusers+peft on the same model:
  apply (file on disk -> ready; the OS page cache is warm for both), weight change, unload, one UNet
  step (CFG batch 2) with the LoRA on vs off, peak extra memory during apply, and the floor for a
  merged apply: read the file + one `addmm_` pass of up@down into each weight.
Fast-mode apply is timed twice: the first apply of a session (fresh shadow memory) and an apply
after an earlier unload (the freed shadows pooled and re-staged to W by a background thread, whose
time is reported on its own row); the targets use the latter.
--quick: 128x128 images (16x16 latents), 3 timing repeats (5 for UNet steps, 2 for the 20-step
generations); full: 512x512, 5 (7, 2) repeats; each timing is the fastest of its repeats. UNet steps
are timed in interleaved rounds (plain, fast, low-mem, diffusers unfused back to back, each round),
and so are the weight change + 20-step generations (ours, then diffusers', per round), so a slow
minute on the shared machine hits every contender alike.
The last line printed is one JSON object with the target keys (issue 4).
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import torch

UNET_SD15 = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
    use_linear_projection=False,
)
CLIP_L = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5,
)
UNET_ATTN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
             "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TE_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


# ---- model and files ----------------------------------------------------------------------------

def _init_random(model: torch.nn.Module, seed: int) -> None:
    """N(0, 1/fan_in) weights, unit norms, zero biases: fast, and activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=g)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()


TINY_UNET = dict(UNET_SD15, block_out_channels=(32, 32, 64, 64), cross_attention_dim=64, norm_num_groups=8)
TINY_CLIP = dict(CLIP_L, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 projection_dim=64)


def log(msg: str) -> None:
    import sys

    print(f"[bench.lora {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_pipeline(device: str, dtype: torch.dtype, tiny: bool = False):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_ui.testing.tiny_models import clip_tokenizer

    unet_cfg, clip_cfg = (TINY_UNET, TINY_CLIP) if tiny else (UNET_SD15, CLIP_L)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
    unet = unet.to_empty(device="cpu")
    _init_random(unet, 0)
    torch.manual_seed(1)
    te = CLIPTextModel(CLIPTextConfig(**clip_cfg))
    _init_random(te, 1)
    te.get_input_embeddings().weight.data.mul_(0.02 * clip_cfg["hidden_size"] ** 0.5)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te.eval(), tokenizer=clip_tokenizer(), unet=unet.eval(),
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def _targets(pipe, convs: bool):
    out = []
    for path, m in pipe.unet.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and (
                path.endswith(UNET_ATTN) and "attentions" in path
                or convs and (".resnets." in path or "samplers" in path) and isinstance(m, torch.nn.Conv2d)):
            out.append(("lora_unet_" + path.replace(".", "_"), m))
    for path, m in pipe.text_encoder.named_modules():
        if isinstance(m, torch.nn.Linear) and path.endswith(TE_LAYERS):
            core = path[len("text_model."):] if path.startswith("text_model.") else path
            out.append(("lora_te_text_model_" + core.replace(".", "_"), m))
    return out


def make_files(pipe, folder: Path) -> dict[str, Path]:
    """kohya LoRA (rank 32, alpha 16), LoCon (+3x3 resnet convs, rank 16) and LoHa (rank 16), fp16."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1234)

    def randn(*shape, std):
        return (torch.randn(*shape, generator=g) * std).to(torch.float16)

    paths = {}
    for kind in ("lora", "locon", "loha"):
        sd = {}
        for prefix, m in _targets(pipe, convs=kind == "locon"):
            w = m.weight
            out_dim, fan_in = w.shape[0], w[0].numel()
            is_conv3 = w.dim() == 4 and w.shape[2] > 1
            rank = 16 if (kind != "lora" and (is_conv3 or kind == "loha")) else 32
            if kind == "loha":
                for i in (1, 2):
                    sd[f"{prefix}.hada_w{i}_a"] = randn(out_dim, rank, std=0.1)
                    sd[f"{prefix}.hada_w{i}_b"] = randn(rank, fan_in, std=fan_in ** -0.5)
            else:
                down_shape = (rank, *w.shape[1:]) if w.dim() == 4 else (rank, w.shape[1])
                up_shape = (out_dim, rank, 1, 1) if w.dim() == 4 else (out_dim, rank)
                sd[f"{prefix}.lora_down.weight"] = randn(*down_shape, std=fan_in ** -0.5)
                sd[f"{prefix}.lora_up.weight"] = randn(*up_shape, std=0.02)
            sd[f"{prefix}.alpha"] = torch.tensor(rank / 2, dtype=torch.float16)
        meta = {"ss_network_module": "networks.lora" if kind == "lora" else "lycoris.kohya",
                "ss_base_model_version": "sd_v1", "ss_network_dim": "32", "ss_network_alpha": "16"}
        paths[kind] = folder / f"bench_{kind}.safetensors"
        save_file(sd, str(paths[kind]), metadata=meta)
    return paths


# ---- measuring ----------------------------------------------------------------------------------

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak extra resident memory (CPU) or allocated memory (CUDA) while the block runs, in MB."""

    def __init__(self, device: str):
        self.device = device
        self.peak_mb = 0.0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = _rss()
        self.peak = self.base
        self.running = True

        def sample():
            while self.running:
                self.peak = max(self.peak, _rss())
                time.sleep(0.002)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
            return
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, _rss())
        self.peak_mb = (self.peak - self.base) / 2**20


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def best(fn, reps: int, device: str, setup=None) -> float:
    """Fastest of `reps` timings (setup runs untimed before each). The minimum, as timeit advises:
    on a shared machine other jobs only ever add time, so the fastest run is the one closest to the
    code's own cost; every contender is timed the same way."""
    times = []
    for _ in range(reps):
        if setup is not None:
            setup()
        times.append(timed(fn, device))
    return min(times)


def snapshot_params(pipe) -> dict:
    return {f"{c}.{n}": p.detach().clone() for c in ("unet", "text_encoder")
            for n, p in getattr(pipe, c).named_parameters()}


def bit_exact(pipe, snap) -> bool:
    now = {f"{c}.{n}": p for c in ("unet", "text_encoder") for n, p in getattr(pipe, c).named_parameters()}
    forwards = [n for c in ("unet", "text_encoder") for n, m in getattr(pipe, c).named_modules() if "forward" in m.__dict__]
    return not forwards and all(torch.equal(now[k], v) for k, v in snap.items())


# ---- the benchmark ------------------------------------------------------------------------------

def run(quick: bool, threads: int, device: str, tiny: bool = False) -> dict:
    from safetensors.torch import load_file

    from lora_ui.lora.manager import LoraManager
    from lora_ui.lora.spec import LoraSpec

    torch.set_num_threads(threads)
    dtype = torch.float16 if device == "cuda" else torch.float32
    reps = 3 if quick else 5
    latent = 16 if quick else 64
    steps = 20
    results: dict = {"device": device, "dtype": str(dtype).replace("torch.", ""), "threads": threads,
                     "image": latent * 8, "reps": reps}
    t0 = time.perf_counter()
    log(f"building the {'tiny' if tiny else 'SD1.5'} UNet + text encoder on {device} ({dtype})")
    pipe = build_pipeline(device, dtype, tiny)
    results["build_s"] = time.perf_counter() - t0
    folder = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    paths = make_files(pipe, folder)
    results["file_mb"] = {k: p.stat().st_size / 2**20 for k, p in paths.items()}
    for p in paths.values():
        p.read_bytes()  # warm the page cache for every contender alike

    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, latent, latent, generator=gen).to(device, dtype)
    with torch.no_grad():
        ids = pipe.tokenizer(["a photo of a cat", ""], padding="max_length", max_length=77,
                             return_tensors="pt").input_ids.to(device)
        text = pipe.text_encoder(ids)[0]

    def unet_step():
        with torch.no_grad():
            pipe.unet(sample, 500, encoder_hidden_states=text)

    def generate(weight_change=None):
        def go():
            if weight_change is not None:
                weight_change()
            with torch.no_grad():
                pipe(prompt_embeds=text[:1], negative_prompt_embeds=text[1:], num_inference_steps=steps,
                     height=latent * pipe.vae_scale_factor, width=latent * pipe.vae_scale_factor,
                     guidance_scale=7.0, output_type="latent",
                     generator=torch.Generator().manual_seed(1))
        return go

    log("files written; timing lora_ui")
    snap = snapshot_params(pipe)
    step_reps = reps + 2  # the step targets are ratios of ~2 % differences: more samples

    # ---- ours ----
    ours: dict = {}
    manager = LoraManager(pipe, mode="fast")
    lora = paths["lora"]

    def cold_reset():
        """No LoRA, no parsed file in memory, no pooled shadow memory: a first apply."""
        manager.clear()
        manager.patcher.pool.wait_staged()
        manager.patcher.pool.release(wait=True)
        manager.cache.entries.clear()
        gc.collect()

    def after_unload():
        """The state after the user removed the LoRA a moment ago: file not in memory, freed
        shadows pooled and re-staged to W (a background thread does that right after the unload)."""
        manager.clear()
        manager.patcher.pool.wait_staged()
        manager.cache.entries.clear()
        gc.collect()

    def apply_full():
        manager.set_loras([LoraSpec(lora, "l", te=1.0, unet=1.0)])

    for mode in ("fast", "lowmem"):
        manager.mode = mode
        ours[f"apply_{mode}_first_s"] = best(apply_full, reps, device, setup=cold_reset)
        if mode == "fast":
            apply_full()
            after_unload()
            ours["apply_fast_s"] = best(apply_full, reps, device, setup=after_unload)
            manager.clear()
            ours["restage_after_unload_s"] = timed(manager.patcher.pool.wait_staged, device)
        else:
            ours["apply_lowmem_s"] = ours["apply_lowmem_first_s"]
        cold_reset()
        with PeakMemory(device) as mem:
            apply_full()
        ours[f"apply_{mode}_peak_mb"] = mem.peak_mb
        weights = itertools.cycle([0.5, 0.8, 0.6, 0.9, 0.7, 0.4, 0.3])
        ours[f"change_{mode}_s"] = best(
            lambda: manager.set_loras([LoraSpec(lora, "l", te=next(weights), unet=next(weights))]), reps, device)
        ours[f"unload_{mode}_s"] = best(manager.clear, reps, device,
                                        setup=lambda: (manager.patcher.pool.wait_staged(), apply_full()))
        cold_reset()
        log(f"lora_ui {mode}: " + ", ".join(f"{k}={v:.4g}" for k, v in ours.items() if mode in k))
    for kind in ("locon", "loha"):
        manager.mode = "fast"
        ours[f"apply_fast_{kind}_s"] = best(lambda: manager.set_loras([LoraSpec(paths[kind], kind)]), reps, device,
                                            setup=cold_reset)
        manager.mode = "lowmem"
        ours[f"apply_lowmem_{kind}_s"] = best(lambda: manager.set_loras([LoraSpec(paths[kind], kind)]), reps,
                                              device, setup=cold_reset)
        cold_reset()
    log(f"lora_ui all: {ours}")
    results["unload_bit_exact"] = bit_exact(pipe, snap)  # before diffusers touches the model
    results["ours"] = ours

    # ---- UNet steps, interleaved: the step targets are ratios of a few per cent, and on a shared
    # machine the speed drifts more than that between minutes; so each round times one step of every
    # contender back to back, and each gets the fastest of its rounds.
    log("timing UNet steps (interleaved rounds)")
    step_times: dict[str, list[float]] = {"plain": [], "fast": [], "lowmem": [], "unfused": []}
    for _ in range(step_reps):
        unet_step()  # warm-up, as for every contender below
        step_times["plain"].append(timed(unet_step, device))
        for mode in ("fast", "lowmem"):
            manager.mode = mode
            apply_full()
            unet_step()  # warm-up after a change
            step_times[mode].append(timed(unet_step, device))
            cold_reset()
        pipe.load_lora_weights(str(lora), adapter_name="bench")
        unet_step()
        step_times["unfused"].append(timed(unet_step, device))
        pipe.unload_lora_weights()
        gc.collect()
    results["step_plain_s"] = min(step_times["plain"])
    ours["step_fast_s"], ours["step_lowmem_s"] = min(step_times["fast"]), min(step_times["lowmem"])
    step_unfused_s = min(step_times["unfused"])
    results["step_rounds"] = step_times

    # ---- a weight change then a 20-step generation, interleaved the same way (fastest of 2 rounds)
    log("timing weight change + generation (interleaved rounds)")
    ours_weights = iter([0.5, 0.8, 0.6, 0.9, 0.7, 0.4, 0.3] * 3)
    their_weights = iter([0.5, 0.8, 0.6, 0.9, 0.7, 0.4, 0.3] * 3)
    gen_times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for _ in range(2):
        manager.mode = "fast"
        apply_full()
        gen_times["ours"].append(timed(generate(
            lambda: manager.set_loras([LoraSpec(lora, "l", te=next(ours_weights), unet=next(ours_weights))])), device))
        cold_reset()
        pipe.load_lora_weights(str(lora), adapter_name="bench")
        gen_times["diffusers"].append(timed(generate(
            lambda: pipe.set_adapters(["bench"], adapter_weights=[next(their_weights)])), device))
        pipe.unload_lora_weights()
        gc.collect()
    ours["change_and_generate_s"] = min(gen_times["ours"])
    change_and_generate_diffusers_s = min(gen_times["diffusers"])
    del manager
    gc.collect()

    log("timing diffusers + peft")
    # ---- diffusers + peft (unfused and fused) ----
    theirs: dict = {}

    def d_load():
        pipe.load_lora_weights(str(lora), adapter_name="bench")

    def d_unload():
        pipe.unload_lora_weights()
        gc.collect()

    load_times, fuse_times = [], []
    for _ in range(2 if quick else reps):
        load_times.append(timed(d_load, device))
        fuse_times.append(timed(lambda: pipe.fuse_lora(lora_scale=1.0), device))
        pipe.unfuse_lora()
        d_unload()
    theirs["load_s"] = min(load_times)
    theirs["fuse_s"] = min(fuse_times)
    with PeakMemory(device) as mem:
        d_load()
    theirs["load_peak_mb"] = mem.peak_mb
    weights = iter([0.5, 0.8, 0.6, 0.9, 0.7, 0.4, 0.3] * 3)
    theirs["set_adapters_s"] = best(lambda: pipe.set_adapters(["bench"], adapter_weights=[next(weights)]), reps,
                                    device)
    theirs["step_unfused_s"] = step_unfused_s
    theirs["change_and_generate_s"] = change_and_generate_diffusers_s
    theirs["unload_s"] = timed(d_unload, device)
    for _ in range(reps - 1):
        d_load()
        theirs["unload_s"] = min(theirs["unload_s"], timed(d_unload, device))
    results["diffusers"] = theirs
    log(f"diffusers: {theirs}")

    log("timing the floor")
    # ---- the floor: read the file + one addmm_ pass of up@down into each weight ----
    modules = dict(_targets(pipe, convs=False))

    def floor():
        sd = load_file(str(lora), device=device)
        with torch.no_grad():
            for prefix, m in modules.items():
                up = sd[f"{prefix}.lora_up.weight"].to(dtype).flatten(1)
                down = sd[f"{prefix}.lora_down.weight"].to(dtype).flatten(1)
                m.weight.view(m.weight.shape[0], -1).addmm_(up, down, alpha=0.5)

    results["floor_merged_apply_s"] = best(floor, reps, device)
    for p in paths.values():
        p.unlink()
    folder.rmdir()

    o, d = ours, theirs
    results["targets"] = {
        "apply_fast_ratio_vs_diffusers_fused": o["apply_fast_s"] / (d["load_s"] + d["fuse_s"]),
        "apply_fast_ratio_vs_limit": o["apply_fast_s"] / results["floor_merged_apply_s"],
        "apply_lowmem_ratio_vs_diffusers_load": o["apply_lowmem_s"] / d["load_s"],
        "step_overhead_fast": o["step_fast_s"] / results["step_plain_s"],
        "step_overhead_lowmem_vs_diffusers_unfused": o["step_lowmem_s"] / d["step_unfused_s"],
        "change_and_generate_ratio_vs_diffusers": o["change_and_generate_s"] / d["change_and_generate_s"],
        "unload_ratio_vs_diffusers": o["unload_fast_s"] / d["unload_s"],
        "unload_bit_exact": results["unload_bit_exact"],
    }
    return results


LIMITS = {"apply_fast_ratio_vs_diffusers_fused": 0.35, "apply_fast_ratio_vs_limit": 1.5,
          "apply_lowmem_ratio_vs_diffusers_load": 0.25, "step_overhead_fast": 1.02,
          "step_overhead_lowmem_vs_diffusers_unfused": 1.0, "change_and_generate_ratio_vs_diffusers": 0.95,
          "unload_ratio_vs_diffusers": 0.05}


def table(r: dict) -> str:
    o, d = r["ours"], r["diffusers"]
    ms = lambda s: f"{s * 1000:.1f} ms" if s < 0.1 else f"{s * 1000:.0f} ms"  # noqa: E731
    rows = [
        ("apply, file on disk -> ready (after an earlier unload)",
         f"fast {ms(o['apply_fast_s'])} / low-mem {ms(o['apply_lowmem_s'])}",
         f"load {ms(d['load_s'])} + fuse {ms(d['fuse_s'])}"),
        ("apply, first of the session (no pooled memory)",
         f"fast {ms(o['apply_fast_first_s'])} / low-mem {ms(o['apply_lowmem_first_s'])}", "same as above"),
        ("re-staging freed shadows to W after an unload (background thread)", ms(o["restage_after_unload_s"]), "-"),
        ("apply LoCon (3x3 convs)", f"fast {ms(o['apply_fast_locon_s'])} / low-mem {ms(o['apply_lowmem_locon_s'])}", "-"),
        ("apply LoHa", f"fast {ms(o['apply_fast_loha_s'])} / low-mem {ms(o['apply_lowmem_loha_s'])}", "rejected (LoHa)"),
        ("floor: read + one addmm_ per weight", ms(r["floor_merged_apply_s"]), ""),
        ("weight change", f"fast {ms(o['change_fast_s'])} / low-mem {ms(o['change_lowmem_s'])}",
         f"set_adapters {ms(d['set_adapters_s'])}"),
        ("unload", f"fast {ms(o['unload_fast_s'])} / low-mem {ms(o['unload_lowmem_s'])} (bit-exact: {r['unload_bit_exact']})",
         f"{ms(d['unload_s'])}"),
        ("UNet step (CFG batch 2), plain", ms(r["step_plain_s"]), ms(r["step_plain_s"])),
        ("UNet step with the LoRA", f"fast {ms(o['step_fast_s'])} / low-mem {ms(o['step_lowmem_s'])}",
         f"unfused {ms(d['step_unfused_s'])}"),
        ("weight change + 20-step generation", f"{o['change_and_generate_s']:.2f} s", f"{d['change_and_generate_s']:.2f} s"),
        ("peak extra memory during apply", f"fast {o['apply_fast_peak_mb']:.0f} MB / low-mem {o['apply_lowmem_peak_mb']:.0f} MB",
         f"load {d['load_peak_mb']:.0f} MB"),
    ]
    lines = ["| | lora_ui | diffusers + peft |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "| target | value | limit | met |", "|---|---|---|---|"]
    for key, value in r["targets"].items():
        if key == "unload_bit_exact":
            lines.append(f"| {key} | {value} | true | {'yes' if value else 'NO'} |")
        else:
            lines.append(f"| {key} | {value:.3f} | <= {LIMITS[key]} | {'yes' if value <= LIMITS[key] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128x128 images, 3 repeats (under 10 minutes on a CPU)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny widths: checks that the script runs (seconds)")
    ap.add_argument("--out", type=Path, default=None, help="write the table (markdown) to this file")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    r = run(args.quick, args.threads, args.device, args.tiny)
    r["total_s"] = time.perf_counter() - started
    md = table(r)
    print(md)
    if args.out is not None:
        head = (f"# LoRA engine benchmark\n\n`python -m bench.lora{' --quick' if args.quick else ''}` on "
                f"{platform.processor() or platform.machine()}, {args.device}, {r['dtype']}, {args.threads} thread(s), "
                f"{r['image']}x{r['image']} images, SD1.5 UNet + CLIP-L (random weights), kohya file "
                f"{r['file_mb']['lora']:.1f} MB, total {r['total_s']:.0f} s, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n")
        args.out.write_text(head + md + "\n")
    print(json.dumps({**r["targets"], "total_s": round(r["total_s"], 1)}))


if __name__ == "__main__":
    main()
