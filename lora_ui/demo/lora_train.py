"""The project's own LoRA trainer for the demo model, and the demo LoRAs it ships.

Each demo LoRA learns a style: the world's images are transformed (darkened, striped, outlined,
pastel), encoded with the frozen VAE, and the adapters on the frozen UNet (and text encoder) learn to
denoise towards them. Files are saved as kohya sd-scripts / LyCORIS save them (key names, fp16
tensors, `alpha`, `ss_*` metadata, `sshs_*` hashes), each with an A1111 `.json` sidecar and a `.png`
preview rendered by the model with the LoRA on.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save, save_file
from tqdm import tqdm

from . import world
from .adapters import AdapterSet
from .train import to_unit_range

# ----------------------------------------------------------------------------------------------------
# styles: uint8 (n, h, w, 3) -> uint8 (n, h, w, 3)


def style_dark(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) * 0.35).round().astype(np.uint8)


def style_pastel(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) * 0.45 + 255 * 0.55).round().astype(np.uint8)


def style_stripes(images: np.ndarray) -> np.ndarray:
    """Dark horizontal bands, 8 px on / 8 px off, over the whole image."""
    out = images.astype(np.float32)
    rows = (np.arange(images.shape[1]) // 8) % 2 == 1
    out[:, rows] *= 0.3
    return out.round().astype(np.uint8)


def _shift_or(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of (n, h, w) masks by a square of the given radius (numpy only)."""
    out = mask.copy()
    h, w = mask.shape[1:]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = np.zeros_like(mask)
            shifted[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                mask[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            out |= shifted
    return out


def style_outline(images: np.ndarray) -> np.ndarray:
    """A thick black (on dark backgrounds: white) outline around the shape."""
    img = images.astype(np.float32)
    bg = np.median(np.concatenate([img[:, 0], img[:, -1]], axis=1), axis=1)  # (n, 3)
    mask = np.sqrt(((img - bg[:, None, None]) ** 2).sum(-1)) > 60  # (n, h, w)
    ring = _shift_or(mask, 2) & ~mask  # 2 px outside the shape
    dark_bg = bg.mean(axis=1) < 60
    ink = np.where(dark_bg[:, None], 255.0, 0.0)  # (n, 1)
    out = img.copy()
    for i in range(len(img)):
        out[i][ring[i]] = ink[i]
    return out.round().astype(np.uint8)


@dataclass(frozen=True)
class DemoLora:
    """One shipped demo LoRA: its network, style and training settings, and its A1111 sidecar."""

    name: str
    kind: str  # lora | locon | loha | lokr
    style: Callable[[np.ndarray], np.ndarray]
    description: str
    activation_text: str = ""
    rank: int = 8
    alpha: float = 4.0
    conv_rank: int | None = None
    conv_alpha: float | None = None
    unet_convs: bool = False
    text_encoder: bool = False
    steps: int = 400
    batch: int = 8
    lr: float = 1e-3
    high_noise_bias: float = 1.0  # timesteps t = 999 * u ** (1 / bias): > 1 favours high noise
    preferred_weight: float = 1.0
    extra_args: dict = field(default_factory=dict)


DEMO_LORAS: dict[str, DemoLora] = {
    "demo-dark": DemoLora(
        "demo-dark", "lora", style_dark,
        "Darkens the whole image (an homage to LowRA). Plain kohya LoRA on attention, resnet convs and "
        "the text encoder. Negative weights brighten.",
        rank=8, alpha=8.0, conv_rank=4, conv_alpha=4.0, unet_convs=True, text_encoder=True, steps=800,
        lr=5e-3, high_noise_bias=2.0, preferred_weight=1.0),
    "demo-stripes": DemoLora(
        "demo-stripes", "locon", style_stripes,
        "Dark horizontal stripes across the image. LyCORIS LoCon (3x3 conv down, 1x1 up on resnet convs).",
        activation_text="striped", rank=8, alpha=4.0, conv_rank=8, conv_alpha=4.0, unet_convs=True,
        steps=250, lr=3e-3, high_noise_bias=1.5, preferred_weight=1.0),
    "demo-outline": DemoLora(
        "demo-outline", "loha", style_outline,
        "A thick ink outline around the shape. LyCORIS LoHa on the attention layers.",
        activation_text="outlined", rank=4, alpha=4.0, steps=400, lr=6e-3, preferred_weight=1.0),
    "demo-pastel": DemoLora(
        "demo-pastel", "lokr", style_pastel,
        "Soft pastel colours (washed towards white). LyCORIS LoKr on the attention layers.",
        activation_text="pastel", rank=4, alpha=4.0, steps=400, lr=5e-3, high_noise_bias=1.5,
        preferred_weight=1.0),
}


# ----------------------------------------------------------------------------------------------------
# training


def sample_timesteps(n: int, bias: float, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=gen)
    return (999 * u ** (1.0 / bias)).round().long().clamp(0, 999)


@torch.no_grad()
def build_dataset(pipe, spec: DemoLora, n: int, seed: int, image_size: int) -> tuple[torch.Tensor, list[world.Scene]]:
    """n styled scenes -> (scaled latents (n, 4, h/f, w/f), scenes)."""
    rng = np.random.default_rng([seed, 77])
    latents, scenes = [], []
    sf = pipe.vae.config.scaling_factor
    for start in range(0, n, 64):
        images, sc, _ = world.render_batch(rng, min(64, n - start), image_size)
        x = to_unit_range(spec.style(images))
        latents.append(pipe.vae.encode(x).latent_dist.mean * sf)
        scenes += sc
    return torch.cat(latents), scenes


def caption_for(spec: DemoLora, scene: world.Scene, rng: np.random.Generator) -> str:
    cap = world.caption(scene, rng)
    return f"{spec.activation_text}, {cap}" if spec.activation_text else cap


def train_lora(pipe, spec: DemoLora, *, steps: int | None = None, seed: int = 0, dataset_size: int = 512,
               image_size: int = 64, progress: bool = True, log: Callable[[str], None] | None = None,
               init_from: Path | None = None, lr: float | None = None, prior_steps: int = 0):
    """Train one demo LoRA on the frozen pipeline -> (AdapterSet, losses, info for the metadata).

    `init_from`: continue from a saved file of the same layout (e.g. trained on an earlier checkpoint
    of the base model), `prior_steps` are the steps that file already had."""
    steps = steps if steps is not None else spec.steps
    torch.manual_seed(seed)
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.requires_grad_(False).eval()
    net = AdapterSet(pipe, spec.kind, spec.rank, spec.alpha, spec.unet_convs, spec.text_encoder,
                     spec.conv_rank, spec.conv_alpha)
    if init_from is not None:
        load_into(net, init_from)
    lr = lr if lr is not None else spec.lr
    latents, scenes = build_dataset(pipe, spec, dataset_size, seed, image_size)
    caption_rng = np.random.default_rng([seed, 5])
    captions = [caption_for(spec, sc, caption_rng) for sc in scenes]  # one fixed caption per image
    alphas = pipe.scheduler.alphas_cumprod.float()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    started = int(time.time())
    with net:
        for step in tqdm(range(steps), desc=f"train {spec.name}", disable=not progress):
            idx = torch.randint(0, len(latents), (spec.batch,), generator=gen)
            x0 = latents[idx]
            caps = ["" if torch.rand(1, generator=gen).item() < 0.1 else captions[i] for i in idx.tolist()]
            ids = pipe.tokenizer(caps, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            noise = torch.randn(x0.shape, generator=gen)
            t = sample_timesteps(spec.batch, spec.high_noise_bias, gen)
            a = alphas[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
            cond = pipe.text_encoder(ids).last_hidden_state
            pred = pipe.unet(noisy, t, cond).sample
            loss = F.mse_loss(pred, noise)
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / 20)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if log and (step + 1) % 50 == 0:
                log(f"{spec.name} step {step + 1}/{steps} loss {np.mean(losses[-50:]):.5f}")
    tag_counts: Counter[str] = Counter()
    for cap in captions:
        tag_counts.update(t.strip() for t in cap.split(",") if t.strip())
    info = {"steps": prior_steps + steps, "started": started, "num_images": len(captions), "tag_frequency": dict(tag_counts),
            "image_size": image_size, "seed": seed}
    return net, losses, info


# ----------------------------------------------------------------------------------------------------
# saving as kohya / LyCORIS do


def addnet_hash(data: bytes) -> str:
    """sd-scripts' `addnet_hash_safetensors`: sha256 of the bytes after the header."""
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n:]).hexdigest()


def legacy_hash(data: bytes) -> str:
    """sd-scripts' `addnet_hash_legacy`: sha256 of 64 KiB at offset 1 MiB, first 8 hex digits."""
    return hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def network_metadata(spec: DemoLora, info: dict, base_model: str = "lora-ui-demo") -> dict[str, str]:
    if spec.kind == "lora":
        module = "networks.lora"
        args: dict = {"conv_dim": str(spec.conv_rank), "conv_alpha": str(spec.conv_alpha)} if spec.unet_convs else {}
    else:
        module = "lycoris.kohya"
        args = {"algo": spec.kind, "preset": "full" if spec.unet_convs else "attn-mlp"}
        if spec.unet_convs:
            args.update(conv_dim=str(spec.conv_rank), conv_alpha=str(spec.conv_alpha))
    args.update(spec.extra_args)
    size = info["image_size"]
    return {
        "ss_output_name": spec.name,
        "ss_network_module": module,
        "ss_network_dim": str(spec.rank),
        "ss_network_alpha": str(spec.alpha),
        "ss_network_args": json.dumps(args),
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_sd_model_name": base_model,
        "ss_tag_frequency": json.dumps({f"1_{spec.name}": info["tag_frequency"]}),
        "ss_training_started_at": str(info["started"]),
        "ss_training_finished_at": str(int(time.time())),
        "ss_num_train_images": str(info["num_images"]),
        "ss_max_train_steps": str(info["steps"]),
        "ss_learning_rate": str(spec.lr),
        "ss_resolution": f"({size}, {size})",
        "ss_seed": str(info["seed"]),
        "ss_mixed_precision": "no",
        "ss_save_precision": "fp16",
        "ss_text_encoder_lr": str(spec.lr) if spec.text_encoder else "0",
        "ss_network_train_unet_only": str(not spec.text_encoder),
        "ss_training_comment": "trained by python -m lora_ui.demo train-loras on the LoRA UI demo world",
    }


def save_lora_file(net: AdapterSet, metadata: dict[str, str], path: Path) -> None:
    """Write '<prefix>.<part>' fp16 tensors with the metadata, plus the sshs_* hashes sd-scripts adds."""
    tensors = net.state_for_file()
    data = save(tensors, metadata=metadata)
    metadata = dict(metadata, sshs_model_hash=addnet_hash(data), sshs_legacy_hash=legacy_hash(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def load_into(net: AdapterSet, path: Path) -> None:
    """Load a saved file's parts back into an AdapterSet of the same layout (fp16 -> fp32)."""
    sd = load_file(str(path))
    for prefix, adapter in net.adapters.items():
        for part, param in adapter.parts().items():
            with torch.no_grad():
                param.copy_(sd[f"{prefix}.{part}"].float())
        adapter.alpha = float(sd[f"{prefix}.alpha"])


def write_sidecar(spec: DemoLora, path_json: Path) -> None:
    """A1111's per-LoRA user metadata (what its 'edit metadata' dialog writes)."""
    data = {
        "description": spec.description,
        "sd version": "SD1",
        "activation text": spec.activation_text,
        "preferred weight": spec.preferred_weight,
        "negative text": "",
        "notes": f"Demo {spec.kind} trained by LoRA UI's own trainer on the synthetic world.",
    }
    path_json.write_text(json.dumps(data, indent=4) + "\n")


PREVIEW_PROMPT = "a big red circle on a blue background"


@torch.no_grad()
def render(pipe, prompt: str, seed: int, net: AdapterSet | None = None, weight: float = 1.0, steps: int = 20,
           cfg: float = 7.0, size: int = 64) -> np.ndarray:
    """One image (uint8 (size, size, 3)) with the network at `weight` (None/0 -> base model)."""
    if net is not None:
        net.set_multiplier(weight)
        net.attach()
    try:
        out = pipe(prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=cfg,
                   generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
    finally:
        if net is not None:
            net.detach()
    return (out * 255).round().astype(np.uint8)


def train_and_save(pipe, spec: DemoLora, out_dir: Path, steps: int | None = None, progress: bool = True,
                   log: Callable[[str], None] | None = None, init_dir: Path | None = None,
                   lr: float | None = None) -> tuple[Path, list[float]]:
    """Train one demo LoRA and write name.safetensors, name.json and name.png in out_dir.
    `init_dir`: continue from the same-named file there (its ss_max_train_steps are added)."""
    from PIL import Image

    init_from, prior = None, 0
    if init_dir is not None:
        init_from = Path(init_dir) / f"{spec.name}.safetensors"
        from safetensors import safe_open

        with safe_open(str(init_from), "pt") as f:
            prior = int(f.metadata().get("ss_max_train_steps", 0))
    net, losses, info = train_lora(pipe, spec, steps=steps, progress=progress, log=log, init_from=init_from,
                                   lr=lr, prior_steps=prior)
    path = Path(out_dir) / f"{spec.name}.safetensors"
    save_lora_file(net, network_metadata(spec, info), path)
    write_sidecar(spec, path.with_suffix(".json"))
    # The preview uses the saved (fp16) factors, as every loader will.
    load_into(net, path)
    prompt = f"{spec.activation_text}, {PREVIEW_PROMPT}" if spec.activation_text else PREVIEW_PROMPT
    Image.fromarray(render(pipe, prompt, seed=1, net=net, weight=spec.preferred_weight)).save(path.with_suffix(".png"))
    return path, losses
