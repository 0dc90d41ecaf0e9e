"""The model seen by the samplers: sigma <-> timestep, the eps/v UNet as an x0 denoiser, and CFG.

    DiscreteSchedule   the 1000 training noise levels (betas -> float64 cumprod -> float32 alphas_cumprod)
    DiscreteDenoiser   D(x, sigma, cond) = x0 estimate from an eps- or v-prediction UNet
                       (Karras et al. 2022 preconditioning with sigma_data = 1, as k-diffusion's
                       DiscreteEpsDDPMDenoiser / CompVisVDenoiser); eps_at_timestep for DDIM/PLMS/UniPC
    LCMDenoiser        A1111's LCM wrapper (50 sigmas, consistency-model output scaling)
    CFGDenoiser        A1111's batching of AND conds and negatives, CFG combined in order, call counting

Shapes: x (B, C, h, w) latents in sigma space (x = x0 + sigma * eps); sigma (B,); cond rows as CondBatch.
Inpainting UNets (9 input channels): `CFGDenoiser.image_cond` (B or 1, 5, h, w) = A1111's c_concat (mask,
masked-image latents; engine/inpainting.py) rides in each CondBatch row (`CondBatch.image`, the same for a
cond row and its image's negative row) and `apply_unet` appends it to the (c_in-scaled) latents.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .cond import Cond, ImageConds, StepConds


def _dims(v: Tensor, ndim: int) -> Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting over (B, C, h, w)."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


# --- training noise levels ------------------------------------------------------------------------

def alphas_cumprod_from_betas(beta_start: float = 0.00085, beta_end: float = 0.012, n: int = 1000,
                              schedule: str = "scaled_linear") -> Tensor:
    """(n,) float32: betas in float64, cumprod(1 - beta) in float64, then rounded once to float32.

    (A float32 cumprod gives sigma_max 14.614647 instead of A1111's 14.614642.)
    """
    if schedule == "scaled_linear":
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=np.float64) ** 2
    elif schedule == "linear":
        betas = np.linspace(beta_start, beta_end, n, dtype=np.float64)
    else:
        raise ValueError(f"beta_schedule {schedule!r} is not supported (scaled_linear, linear)")
    return torch.from_numpy(np.cumprod(1.0 - betas)).float()


class DiscreteSchedule:
    """Maps continuous sigma to fractional training timesteps and back (log-sigma interpolation).

    sigmas (1000,) ascending: sigma_k = sqrt((1 - abar_k) / abar_k); sigma_min = sigmas[0].
    """

    def __init__(self, alphas_cumprod: Tensor):
        self.alphas_cumprod = alphas_cumprod.float()                      # (1000,)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "DiscreteSchedule":
        """From a diffusers scheduler config (beta_start, beta_end, beta_schedule, num_train_timesteps)."""
        if config.get("trained_betas") is not None:
            betas = np.asarray(config["trained_betas"], dtype=np.float64)
            return cls(torch.from_numpy(np.cumprod(1.0 - betas)).float())
        return cls(alphas_cumprod_from_betas(
            config.get("beta_start", 0.00085), config.get("beta_end", 0.012),
            config.get("num_train_timesteps", 1000), config.get("beta_schedule", "scaled_linear")))

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional t (same shape as sigma): k = last index with log sigma_k <= log sigma (<= 998),
        w = (log sigma_k - log sigma) / (log sigma_k - log sigma_k+1) clamped to [0, 1], t = k + w."""
        log_sigma = sigma.float().log()
        low = (torch.searchsorted(self.log_sigmas, log_sigma.reshape(-1), right=True) - 1)
        low = low.clamp(0, len(self.log_sigmas) - 2).reshape(log_sigma.shape)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return (1 - w) * low + w * (low + 1)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """exp of the log-sigma linearly interpolated between floor(t) and ceil(t)."""
        t = torch.as_tensor(t).float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def get_sigmas(self, n: int) -> Tensor:
        """The model's own n-step schedule (= Uniform): sigma(linspace(999, 0, n)) + [0]."""
        from .schedules import uniform

        return uniform(n, self)


# --- the UNet as a denoiser -----------------------------------------------------------------------

@dataclass(frozen=True)
class CondBatch:
    """Conditioning rows for one UNet call: embeds (N, L, D), pooled (N, P) or None (SD1), image (N, 5, h, w)
    or None: an inpainting UNet's image conditioning (mask, masked-image latents), concatenated to x."""

    embeds: Tensor
    pooled: Tensor | None = None
    image: Tensor | None = None

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def rows(self, a: int, b: int) -> "CondBatch":
        return CondBatch(self.embeds[a:b], None if self.pooled is None else self.pooled[a:b],
                         None if self.image is None else self.image[a:b])


def sdxl_time_ids(height: int, width: int, crop_top: int = 0, crop_left: int = 0) -> Tensor:
    """(6,) SDXL micro-conditioning: original size, crop (top, left), target size (A1111: both = image size)."""
    return torch.tensor([height, width, crop_top, crop_left, height, width], dtype=torch.float32)


class DiscreteDenoiser:
    """D(x, sigma, cond) -> x0 for a diffusers UNet trained on a discrete DDPM schedule.

    epsilon:      D = x - sigma * eps(x * c_in, t(sigma)),             c_in = 1 / sqrt(sigma^2 + 1)
    v_prediction: D = c_skip * x + c_out * v(x * c_in, t(sigma)),      c_skip = 1 / (sigma^2 + 1),
                  c_out = -sigma / sqrt(sigma^2 + 1)
    The UNet gets input and (fractional, unrounded) t cast to its dtype; the result is cast back to x's.
    `time_ids` (6,) enables SDXL's added_cond_kwargs (text_embeds = pooled rows).
    """

    def __init__(self, unet: Callable[..., Any], schedule: DiscreteSchedule, prediction_type: str = "epsilon",
                 *, time_ids: Tensor | None = None, unet_dtype: torch.dtype | None = None):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {prediction_type!r}: expected 'epsilon' or 'v_prediction'")
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.time_ids = time_ids
        self.unet_dtype = unet_dtype or getattr(unet, "dtype", torch.float32)

    def apply_unet(self, x_in: Tensor, t: Tensor, cond: CondBatch) -> Tensor:
        """The raw UNet output (N, C, h, w) at integer-or-fractional timesteps t (N,); an inpainting UNet
        gets concat([x_in, cond.image]) on channels (A1111's "hybrid" conditioning)."""
        dt = self.unet_dtype
        kwargs: dict[str, Any] = {}
        unet_in = x_in if cond.image is None else torch.cat([x_in, cond.image.to(x_in.device, x_in.dtype)], dim=1)
        if self.time_ids is not None:
            if cond.pooled is None:
                raise ValueError("SDXL UNet needs pooled text embeddings")
            kwargs["added_cond_kwargs"] = {
                "text_embeds": cond.pooled.to(x_in.device, dt),
                "time_ids": self.time_ids.to(x_in.device, dt).expand(len(cond), -1),
            }
        out = self.unet(unet_in.to(dt), t.to(dt), encoder_hidden_states=cond.embeds.to(x_in.device, dt), **kwargs)
        out = getattr(out, "sample", out)
        return out.to(x_in.dtype)

    def __call__(self, x: Tensor, sigma: Tensor, cond: CondBatch) -> Tensor:
        s = _dims(sigma, x.ndim)
        c_in = 1 / (s ** 2 + 1) ** 0.5
        out = self.apply_unet(x * c_in, self.schedule.sigma_to_t(sigma), cond)
        if self.prediction_type == "epsilon":
            return x + out * -s
        c_skip, c_out = 1 / (s ** 2 + 1), -s / (s ** 2 + 1) ** 0.5
        return out * c_out + x * c_skip

    def eps_at_timestep(self, x: Tensor, t: Tensor, cond: CondBatch) -> Tensor:
        """eps for DDIM/PLMS/UniPC: x is x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (not sigma-scaled).

        v-prediction: eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t with t truncated to an integer.
        """
        out = self.apply_unet(x, t, cond)
        if self.prediction_type == "epsilon":
            return out
        abar = self.schedule.alphas_cumprod.double()[t.long()].float()
        return _dims(abar.sqrt(), x.ndim) * out + _dims((1 - abar).sqrt(), x.ndim) * x


class LCMSchedule(DiscreteSchedule):
    """A1111's LCM noise levels: the 50 sigmas of abar[19, 39, ..., 999]; its timesteps are UNet
    timesteps: sigma_to_t = 20 k + 19 for the nearest (in log sigma) level k, t_to_sigma maps
    t -> fractional level (t - 19) / 20 (clamped) and interpolates log sigma."""

    skip = 20

    def __init__(self, alphas_cumprod: Tensor):
        super().__init__(alphas_cumprod[self.skip - 1::self.skip])                     # (50,)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        dists = sigma.float().log().reshape(-1) - self.log_sigmas[:, None]
        return (dists.abs().argmin(dim=0) * self.skip + (self.skip - 1)).reshape(sigma.shape)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        level = ((torch.as_tensor(t) - (self.skip - 1)) / self.skip).float().clamp(0, len(self.sigmas) - 1)
        return super().t_to_sigma(level)

    def get_sigmas(self, n: int) -> Tensor:
        """sigma(t) at t = linspace(t(sigma_max), t(sigma_min), n) = linspace(999, 19, n), + [0]."""
        from .schedules import append_zero

        start = float(self.sigma_to_t(self.sigmas[-1]))
        end = float(self.sigma_to_t(self.sigmas[0]))
        return append_zero(self.t_to_sigma(torch.linspace(start, end, n)))


class LCMDenoiser:
    """A1111's LCM model wrapper (Luo et al. 2023, "Latent Consistency Models", sigma_data = 0.5):
    x0 = x - sigma * eps(x * c_in, t), t = LCMSchedule.sigma_to_t(sigma) (integer 20 k + 19), then
    out = c_skip * x + c_out * x0 with s = 10 t, c_skip = 0.25 / (s^2 + 0.25), c_out = s / sqrt(s^2 + 0.25)."""

    def __init__(self, base: DiscreteDenoiser):
        self.base = base
        self.schedule = LCMSchedule(base.schedule.alphas_cumprod)

    def __call__(self, x: Tensor, sigma: Tensor, cond: CondBatch) -> Tensor:
        s = _dims(sigma, x.ndim)
        t = self.schedule.sigma_to_t(sigma)
        eps = self.base.apply_unet(x * (1 / (s ** 2 + 1) ** 0.5), t, cond)
        x0 = x + eps * -s
        st = _dims(t.float(), x.ndim) * 10.0
        c_skip, c_out = 0.25 / (st ** 2 + 0.25), st / (st ** 2 + 0.25) ** 0.5
        return c_out * x0 + c_skip * x


# --- classifier-free guidance ---------------------------------------------------------------------

@dataclass(frozen=True)
class LatentMask:
    """Inpainting's latent-mask method (A1111's CFGDenoiser blend): `blend(x) = x * nmask + init * mask`.

    init (B, C, h, w): the init latents (already filled for "latent noise" / "latent nothing");
    nmask (1 or B, C, h, w): 1 where the picture is repainted; mask = 1 - nmask (1 = keep the original).
    """

    init: Tensor
    nmask: Tensor

    def blend(self, x: Tensor) -> Tensor:
        mask = 1.0 - self.nmask
        return x * self.nmask.to(x.dtype) + self.init.to(x.device, x.dtype) * mask.to(x.dtype)


def _stack(conds: list[Cond]) -> CondBatch:
    """Rows of possibly different lengths: shorter ones padded by repeating their last vector."""
    length = max(c.length for c in conds)
    embeds = [c.embeds[0] if c.length == length
              else torch.cat([c.embeds[0], c.embeds[0, -1:].expand(length - c.length, -1)]) for c in conds]
    pooled = None if conds[0].pooled is None else torch.cat([c.pooled for c in conds])
    return CondBatch(torch.stack(embeds), pooled)


def _cat(a: CondBatch, b: CondBatch) -> CondBatch:
    pooled = None if a.pooled is None else torch.cat([a.pooled, b.pooled])
    image = None if a.image is None else torch.cat([a.image, b.image])
    return CondBatch(torch.cat([a.embeds, b.embeds]), pooled, image)


@dataclass
class CFGDenoiser:
    """Classifier-free guidance over B images, A1111 1.10 style.

    `inner(x_rows (N,C,h,w), s_rows (N,), CondBatch of N rows) -> (N,C,h,w)`: a DiscreteDenoiser
    (combines x0), `DiscreteDenoiser.eps_at_timestep` (combines eps, for timestep samplers) or LCMDenoiser.
    Rows: for each image its AND terms in order, then the B negatives. One inner call when every cond
    row has the negatives' token length (batch_cond_uncond); otherwise the cond rows in groups of 2B
    and the negative rows in one more call. Result per image i:
        D_i = U_i + sum_j (C_ij - U_i) * (w_ij * cfg_scale * scale_multiplier), in term order.
    Every call uses step_conds(calls) and then increments `calls` (A1111 counts denoiser calls, so
    second-order samplers advance prompt editing twice per step).
    `latent_mask` (inpainting): A1111 blends the guided output D (k-samplers, `mask_before=False`) or, for
    the timestep samplers (`mask_before=True`), the input x before the UNet sees it.
    `image_cond` (B or 1, 5, h, w): an inpainting UNet's image conditioning, given to image i's cond rows
    and its negative row alike (A1111 repeats c_concat for cond and uncond).
    """

    inner: Callable[[Tensor, Tensor, CondBatch], Tensor]
    cfg_scale: float
    step_conds: StepConds
    batch_cond_uncond: bool = True
    calls: int = 0
    latent_mask: LatentMask | None = None
    mask_before: bool = False
    image_cond: Tensor | None = None

    def with_inner(self, inner: Callable[[Tensor, Tensor, CondBatch], Tensor]) -> "CFGDenoiser":
        return dataclasses.replace(self, inner=inner, calls=0)

    def __call__(self, x: Tensor, sigma: Tensor, *, scale_multiplier: float = 1.0) -> Tensor:
        return self.forward(x, sigma, scale_multiplier=scale_multiplier)[0]

    def forward(self, x: Tensor, sigma: Tensor, *, scale_multiplier: float = 1.0) -> tuple[Tensor, Tensor]:
        """(guided (B,C,h,w), negative-only output (B,C,h,w))."""
        images: list[ImageConds] = self.step_conds(self.calls)
        self.calls += 1
        if self.latent_mask is not None and self.mask_before:
            x = self.latent_mask.blend(x)
        if len(images) != x.shape[0]:
            raise ValueError(f"step_conds gave {len(images)} images for a batch of {x.shape[0]}")
        owner = [i for i, ic in enumerate(images) for _ in ic.terms]
        x_in = torch.cat([x[owner], x])
        s_in = torch.cat([sigma[owner], sigma])
        conds, unconds = _stack([c for ic in images for c, _ in ic.terms]), _stack([ic.uncond for ic in images])
        if self.image_cond is not None:
            image = self.image_cond.expand(len(images), -1, -1, -1)
            conds, unconds = dataclasses.replace(conds, image=image[owner]), dataclasses.replace(unconds, image=image)
        out = self._run(x_in, s_in, conds, unconds, len(images))
        uncond = out[-len(images):]
        guided = uncond.clone()
        row = 0
        for i, ic in enumerate(images):
            for _, weight in ic.terms:
                guided[i] += (out[row] - uncond[i]) * (weight * self.cfg_scale * scale_multiplier)
                row += 1
        if self.latent_mask is not None and not self.mask_before:
            guided = self.latent_mask.blend(guided)
        return guided, uncond

    def _run(self, x_in: Tensor, s_in: Tensor, conds: CondBatch, unconds: CondBatch, b: int) -> Tensor:
        n_cond = len(conds)
        if conds.embeds.shape[1] == unconds.embeds.shape[1]:
            everything = _cat(conds, unconds)
            if self.batch_cond_uncond:
                return self.inner(x_in, s_in, everything)
            return torch.cat([self.inner(x_in[a:a + b], s_in[a:a + b], everything.rows(a, a + b))
                              for a in range(0, len(x_in), b)])
        group = 2 * b if self.batch_cond_uncond else b
        parts = [self.inner(x_in[a:min(a + group, n_cond)], s_in[a:min(a + group, n_cond)],
                            conds.rows(a, min(a + group, n_cond))) for a in range(0, n_cond, group)]
        parts.append(self.inner(x_in[n_cond:], s_in[n_cond:], unconds))
        return torch.cat(parts)
