"""Training of the demo model: VAE stage, then UNet + text encoder stage; resumable; export.

Stage 1 (VAE): a near-deterministic autoencoder (posterior mean + small noise, MSE + L1, tiny KL);
at the end the latent scaling factor is fitted so scaled latents have unit standard deviation.
Stage 2 (UNet + text encoder): epsilon prediction on SD1's noise schedule, min-SNR-gamma loss
weighting, caption dropout (for classifier-free guidance), EMA of both trained models.

Everything is seeded: batch k of a stage is drawn from `np.random.default_rng([seed, stage, k])`, so a
resumed run sees exactly the batches an uninterrupted one would. A checkpoint (`ckpt.pt` in the work
dir, written atomically) holds models, optimisers, EMA and the step; `train()` continues from it.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import world
from .models import DEMO, TOKENIZER_DIR, DemoConfig, build_scheduler, build_text_encoder, build_tokenizer, build_unet, build_vae

CKPT_NAME = "ckpt.pt"
STAGE_VAE, STAGE_UNET, STAGE_VAE_GENERAL, STAGE_DONE = "vae", "unet", "vae_general", "done"


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (the defaults built the shipped demo model)."""

    model: DemoConfig = field(default_factory=lambda: DEMO)
    seed: int = 1234
    vae_steps: int = 600
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_general_steps: int = 150
    vae_general_lr: float = 5e-4
    unet_steps: int = 9000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    te_lr: float = 5e-4
    warmup: int = 100
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    # Offset noise (Crosslabs): a per-channel constant added to the noise lets the model move an
    # image's mean colour, which plain noise at SD1's non-zero terminal SNR hardly teaches; this
    # world is all flat colours.
    offset_noise: float = 0.1
    ema_decay: float = 0.998
    latent_pool: int = 12000
    ckpt_every: int = 100
    sample_every: int = 500


# ----------------------------------------------------------------------------------------------------
# helpers


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> float32 (n, 3, h, w) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10 % of the base learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def stage_rng(seed: int, stage: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, step])


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def log(work_dir: Path, msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    with open(work_dir / "train.log", "a") as f:
        f.write(f"{stamp} {msg}\n")


# ----------------------------------------------------------------------------------------------------
# state


class DemoTrainer:
    """Holds every model and optimiser of a run; `run()` trains the remaining steps of each stage."""

    def __init__(self, cfg: TrainConfig, work_dir: Path, progress: bool = True):
        self.cfg = cfg
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        torch.manual_seed(cfg.seed)
        self.vae = build_vae(cfg.model)
        self.unet = build_unet(cfg.model)
        self.text_encoder = build_text_encoder(cfg.model)
        self.tokenizer = build_tokenizer()
        self.scheduler = build_scheduler()
        # Small init for unused token rows keeps out-of-vocabulary prompts near the trained ones.
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        self.unet_opt = torch.optim.AdamW(
            [{"params": self.unet.parameters(), "lr": cfg.unet_lr, "weight_decay": 1e-2},
             {"params": self.text_encoder.parameters(), "lr": cfg.te_lr, "weight_decay": 0.0}]
        )
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_te = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.stage = STAGE_VAE
        self.step = 0
        self.scaling_factor = 1.0
        self.losses: dict[str, list[float]] = {STAGE_VAE: [], STAGE_UNET: [], STAGE_VAE_GENERAL: []}
        self.vae_anchor = None  # frozen stage-1 VAE, set when the generalisation stage starts
        self._token_cache: dict[str, torch.Tensor] = {}
        self._pool: torch.Tensor | None = None
        self._pool_scenes: list[world.Scene] | None = None
        alphas = self.scheduler.alphas_cumprod.float()
        self.alphas_cumprod = alphas  # (1000,)

    # --- checkpoints -----------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.work_dir / CKPT_NAME

    def state_dict(self) -> dict:
        return {
            "config": asdict(self.cfg), "stage": self.stage, "step": self.step,
            "scaling_factor": self.scaling_factor, "losses": self.losses,
            "vae": self.vae.state_dict(), "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(), "ema_unet": self.ema_unet.state_dict(),
            "ema_te": self.ema_te.state_dict(), "vae_opt": self.vae_opt.state_dict(),
            "unet_opt": self.unet_opt.state_dict(),
            "vae_anchor": self.vae_anchor.state_dict() if self.vae_anchor is not None else None,
            "vae_general_opt": (self.vae_general_opt.state_dict()
                                if getattr(self, "vae_general_opt", None) is not None else None),
        }

    def save(self) -> None:
        atomic_save(self.state_dict(), self.ckpt_path)

    def load(self) -> bool:
        """Restore from the work dir's checkpoint; False when there is none."""
        if not self.ckpt_path.exists():
            return False
        sd = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
        self.stage, self.step = sd["stage"], sd["step"]
        self.scaling_factor, self.losses = sd["scaling_factor"], sd["losses"]
        self.vae.load_state_dict(sd["vae"])
        self.unet.load_state_dict(sd["unet"])
        self.text_encoder.load_state_dict(sd["text_encoder"])
        self.ema_unet.load_state_dict(sd["ema_unet"])
        self.ema_te.load_state_dict(sd["ema_te"])
        self.vae_opt.load_state_dict(sd["vae_opt"])
        self.unet_opt.load_state_dict(sd["unet_opt"])
        self.losses.setdefault(STAGE_VAE_GENERAL, [])
        if sd.get("vae_anchor") is not None:
            self.vae_anchor = build_vae(self.cfg.model).requires_grad_(False).eval()
            self.vae_anchor.load_state_dict(sd["vae_anchor"])
            self.vae_general_opt = torch.optim.AdamW(self.vae.parameters(), lr=self.cfg.vae_general_lr)
            if sd.get("vae_general_opt") is not None:
                self.vae_general_opt.load_state_dict(sd["vae_general_opt"])
        return True

    # --- stage 1: VAE ----------------------------------------------------------------------------
    def vae_step(self, step: int) -> float:
        cfg = self.cfg
        rng = stage_rng(cfg.seed, 1, step)
        images, _, _ = world.render_batch(rng, cfg.vae_batch, cfg.model.image_size)
        x = to_unit_range(images)
        torch.manual_seed(cfg.seed * 1000 + step)
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + 0.05 * torch.randn_like(posterior.mean)
        rec = self.vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-7 * posterior.kl().mean()
        for g in self.vae_opt.param_groups:
            g["lr"] = cfg.vae_lr * lr_factor(step, cfg.vae_steps, cfg.warmup)
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.vae_opt.step()
        return loss.item()

    @torch.no_grad()
    def fit_scaling_factor(self) -> float:
        """1 / std of posterior means over a fixed set of images."""
        rng = stage_rng(self.cfg.seed, 9, 0)
        images, _, _ = world.render_batch(rng, 256, self.cfg.model.image_size)
        self.vae.eval()
        z = torch.cat([self.vae.encode(to_unit_range(images[i:i + 64])).latent_dist.mean for i in range(0, 256, 64)])
        return float(1.0 / z.std())

    # --- stage 3: VAE generalisation ---------------------------------------------------------------
    def vae_general_step(self, step: int) -> float:
        """Teach the VAE colours and textures outside the palette (what the demo LoRAs paint) while
        anchoring it to the stage-1 VAE on world images: the encoder must keep giving the latents the
        UNet was trained on, and the decoder must keep decoding those latents to the same images."""
        from .lora_train import style_dark, style_outline, style_pastel, style_stripes

        cfg = self.cfg
        if self.vae_anchor is None:
            self.vae_anchor = copy.deepcopy(self.vae).requires_grad_(False).eval()
            self.vae_general_opt = None
        if getattr(self, "vae_general_opt", None) is None:
            self.vae_general_opt = torch.optim.AdamW(self.vae.parameters(), lr=cfg.vae_general_lr)
        rng = stage_rng(cfg.seed, 4, step)
        n = cfg.vae_batch
        size = cfg.model.image_size
        world_imgs, _, _ = world.render_batch(rng, n, size)
        k = n // 4
        styled = [style_dark(world_imgs[:k]), style_pastel(world_imgs[k:2 * k]),
                  style_stripes(world_imgs[2 * k:3 * k]), style_outline(world_imgs[3 * k:])]
        # random-colour scenes: palette colours scaled by a random brightness and tint
        gains = rng.uniform(0.15, 1.0, size=(n, 1, 1, 3))
        offset = rng.uniform(0, 110, size=(n, 1, 1, 1)) * (rng.random((n, 1, 1, 1)) < 0.5)
        recoloured = np.clip(world_imgs * gains + offset, 0, 255).astype(np.uint8)
        mixed = to_unit_range(np.concatenate(styled + [recoloured]))
        x_world = to_unit_range(world_imgs)
        torch.manual_seed(cfg.seed * 1000 + step)
        self.vae.train()
        rec = self.vae.decode(self.vae.encode(mixed).latent_dist.mean).sample
        with torch.no_grad():
            anchor_z = self.vae_anchor.encode(x_world).latent_dist.mean
        new_z = self.vae.encode(x_world).latent_dist.mean
        rec_world = self.vae.decode(anchor_z).sample
        latent_var = anchor_z.var().clamp_min(1e-6)
        loss = (F.mse_loss(rec, mixed) + 0.5 * F.l1_loss(rec, mixed)
                + F.mse_loss(rec_world, x_world) + 0.5 * F.l1_loss(rec_world, x_world)
                + 10.0 * F.mse_loss(new_z, anchor_z) / latent_var)
        for g in self.vae_general_opt.param_groups:
            g["lr"] = cfg.vae_general_lr * lr_factor(step, cfg.vae_general_steps, min(cfg.warmup, 20))
        self.vae_general_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.vae_general_opt.step()
        return loss.item()

    # --- stage 2: UNet + text encoder ------------------------------------------------------------
    @torch.no_grad()
    def build_latent_pool(self) -> None:
        """Render and encode a fixed pool of scenes once (scaled latents (n, 4, h, w))."""
        cfg = self.cfg
        rng = stage_rng(cfg.seed, 2, 0)
        self.vae.eval()
        latents, scenes = [], []
        chunks = range(0, cfg.latent_pool, 128)
        for start in tqdm(chunks, desc="encode pool", disable=not self.progress):
            n = min(128, cfg.latent_pool - start)
            images, sc, _ = world.render_batch(rng, n, cfg.model.image_size)
            latents.append(self.vae.encode(to_unit_range(images)).latent_dist.mean * self.scaling_factor)
            scenes += sc
        self._pool = torch.cat(latents)
        self._pool_scenes = scenes

    def encode_tokens(self, captions: list[str]) -> torch.Tensor:
        """captions -> token ids (n, 77), cached per caption."""
        rows = []
        for c in captions:
            if c not in self._token_cache:
                self._token_cache[c] = self.tokenizer(
                    c, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids[0]
            rows.append(self._token_cache[c])
        return torch.stack(rows)

    def training_noise(self, latents: torch.Tensor) -> torch.Tensor:
        """Gaussian noise like `latents` (n, c, h, w), plus `offset_noise` x one normal draw per
        (image, channel) when set: the model then learns to move whole-image colour means."""
        noise = torch.randn_like(latents)
        if self.cfg.offset_noise:
            noise = noise + self.cfg.offset_noise * torch.randn(latents.shape[0], latents.shape[1], 1, 1)
        return noise

    def unet_step(self, step: int) -> float:
        cfg = self.cfg
        if self._pool is None:
            self.build_latent_pool()
        rng = stage_rng(cfg.seed, 3, step)
        idx = rng.integers(len(self._pool), size=cfg.unet_batch)
        latents = self._pool[torch.from_numpy(idx)]
        captions = [world.caption(self._pool_scenes[i], rng) for i in idx]
        captions = ["" if rng.random() < cfg.caption_dropout else c for c in captions]
        ids = self.encode_tokens(captions)
        torch.manual_seed(cfg.seed * 1000 + step)
        noise = self.training_noise(latents)
        t = torch.randint(0, 1000, (len(idx),))
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        self.unet.train()
        self.text_encoder.train()
        cond = self.text_encoder(ids).last_hidden_state
        pred = self.unet(noisy, t, cond).sample
        snr = self.alphas_cumprod[t] / (1 - self.alphas_cumprod[t])
        weight = torch.clamp(snr, max=cfg.min_snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (weight * per_sample).mean()
        factor = lr_factor(step, cfg.unet_steps, cfg.warmup)
        self.unet_opt.param_groups[0]["lr"] = cfg.unet_lr * factor
        self.unet_opt.param_groups[1]["lr"] = cfg.te_lr * factor
        self.unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.unet.parameters()) + list(self.text_encoder.parameters()), 1.0)
        self.unet_opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        ema_update(self.ema_unet, self.unet, decay)
        ema_update(self.ema_te, self.text_encoder, decay)
        return per_sample.mean().item()

    # --- driver ----------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> None:
        """Train the remaining steps of every stage. `stop_after`: return after that many steps
        (counted in this call) — used to simulate an interruption in tests."""
        done_here = 0
        cfg = self.cfg
        for stage, total, fn in ((STAGE_VAE, cfg.vae_steps, self.vae_step),
                                 (STAGE_UNET, cfg.unet_steps, self.unet_step),
                                 (STAGE_VAE_GENERAL, cfg.vae_general_steps, self.vae_general_step)):
            if self.stage != stage:
                continue
            bar = tqdm(total=total, initial=self.step, desc=f"train {stage}", disable=not self.progress)
            while self.stage == stage and self.step < total:
                loss = fn(self.step)
                self.losses[stage].append(loss)
                self.step += 1
                done_here += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if self.step % 20 == 0:
                    recent = self.losses[stage][-20:]
                    log(self.work_dir, f"{stage} step {self.step}/{total} loss {sum(recent) / len(recent):.5f}")
                if self.step % cfg.ckpt_every == 0 or self.step == total:
                    if self.step == total:
                        self._finish_stage(stage)
                    self.save()
                if stage == STAGE_UNET and self.step % cfg.sample_every == 0:
                    self.write_samples()
                if stop_after is not None and done_here >= stop_after:
                    bar.close()
                    self.save()
                    return
            bar.close()

    def _finish_stage(self, stage: str) -> None:
        if stage == STAGE_VAE:
            self.scaling_factor = self.fit_scaling_factor()
            log(self.work_dir, f"vae done; scaling factor {self.scaling_factor:.4f}")
            self.stage, self.step = STAGE_UNET, 0
        elif stage == STAGE_UNET:
            self.stage, self.step = STAGE_VAE_GENERAL, 0
            log(self.work_dir, "unet done")
        else:
            self.stage = STAGE_DONE
            log(self.work_dir, "vae generalisation done")

    # --- pipelines and samples -------------------------------------------------------------------
    def pipeline(self, ema: bool = True):
        """A StableDiffusionPipeline over (copies of) the current weights, fp32, eval mode."""
        from diffusers import StableDiffusionPipeline

        vae = build_vae(self.cfg.model, self.scaling_factor)
        vae.load_state_dict(self.vae.state_dict())
        unet = copy.deepcopy(self.ema_unet if ema else self.unet).eval()
        te = copy.deepcopy(self.ema_te if ema else self.text_encoder).eval()
        pipe = StableDiffusionPipeline(
            vae=vae.eval(), text_encoder=te, tokenizer=self.tokenizer, unet=unet, scheduler=build_scheduler(),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def write_samples(self) -> Path:
        """A grid of 8 canonical prompts (EMA weights) -> samples/step_XXXXX.png in the work dir."""
        from PIL import Image

        pipe = self.pipeline()
        rng = np.random.default_rng(7)
        scenes = [world.random_scene(rng) for _ in range(8)]
        prompts = [world.canonical_caption(s) for s in scenes]
        size = self.cfg.model.image_size
        out = pipe(prompts, height=size, width=size, num_inference_steps=20, guidance_scale=5.0,
                   generator=torch.Generator().manual_seed(0), output_type="np").images
        grid = np.concatenate([np.concatenate([world.render(s, size) for s in scenes], axis=1),
                               np.concatenate(list((out * 255).round().astype(np.uint8)), axis=1)], axis=0)
        path = self.work_dir / "samples" / f"step_{self.step:05d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(grid).save(path)
        (path.parent / "prompts.txt").write_text("\n".join(prompts) + "\n")
        return path


def save_pipeline(pipe, out_dir: Path, fp16: bool = True) -> None:
    """Save as a normal diffusers folder (fp16 safetensors)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fp16:
        pipe = copy.copy(pipe)
        for name in ("vae", "unet", "text_encoder"):
            getattr(pipe, name).to(torch.float16)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    if fp16:
        for name in ("vae", "unet", "text_encoder"):
            getattr(pipe, name).to(torch.float32)
    # Ship the plain CLIP vocab.json + merges.txt (1.5 MB) rather than the 3.6 MB tokenizer.json.
    tok_dir = out_dir / "tokenizer"
    shutil.rmtree(tok_dir)
    shutil.copytree(TOKENIZER_DIR, tok_dir)
    index = json.loads((out_dir / "model_index.json").read_text())
    index["safety_checker"] = [None, None]
    index["feature_extractor"] = [None, None]
    index["requires_safety_checker"] = False
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def train(work_dir: Path, out_dir: Path | None, cfg: TrainConfig | None = None, progress: bool = True) -> DemoTrainer:
    """Train (or resume) and, when `out_dir` is given, export the EMA model there."""
    trainer = DemoTrainer(cfg or TrainConfig(), work_dir, progress=progress)
    if trainer.load():
        log(trainer.work_dir, f"resumed at stage {trainer.stage} step {trainer.step}")
    trainer.run()
    if out_dir is not None:
        save_pipeline(trainer.pipeline(), out_dir)
    return trainer
