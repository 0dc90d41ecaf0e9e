"""Progress of the worker's current job, shared by the worker, the UI and the REST API.

The worker owns one `ProgressTracker` and updates it from its thread; readers (UI polling, the
`/sdapi/v1/progress` endpoint) take an immutable `ProgressState` snapshot, so they never see a
half-updated state. The live preview is A1111's "Approx cheap" latent -> RGB projection: a fixed
4x3 linear map per architecture, no VAE call, so it costs next to nothing per step.
"""
from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

# A1111 modules/sd_vae_approx.py cheap_approximation(): rgb[c] = sum_l latent[l] * coeffs[l][c].
# Rows are the 4 latent channels, columns R, G, B; the result is in [-1, 1] like a decoded image.
LATENT_RGB_FACTORS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "sd1": (
        (0.298, 0.207, 0.208),
        (0.187, 0.286, 0.173),
        (-0.158, 0.189, 0.264),
        (-0.184, -0.271, -0.473),
    ),
    "sdxl": (
        (0.3448, 0.4168, 0.4395),
        (-0.1953, -0.0290, 0.0250),
        (0.1074, 0.0886, -0.0163),
        (-0.3730, -0.2499, -0.2088),
    ),
}


def latents_to_preview_rgb(latents: torch.Tensor, arch: str) -> np.ndarray:
    """Cheap latent -> RGB approximation of the first image of a batch.

    latents: (B, 4, h, w) or (4, h, w), any dtype/device (diffusers' scaled latents, as A1111's samples).
    Returns uint8 (h, w, 3): ((L^T . factors) + 1) / 2 clamped to [0, 1], times 255, rounded.
    """
    if arch not in LATENT_RGB_FACTORS:
        raise ValueError(f"no latent preview factors for architecture {arch!r}; known: {sorted(LATENT_RGB_FACTORS)}")
    sample = latents[0] if latents.dim() == 4 else latents
    if sample.dim() != 3 or sample.shape[0] != 4:
        raise ValueError(f"latents must be (B, 4, h, w) or (4, h, w), got {tuple(latents.shape)}")
    factors = torch.tensor(LATENT_RGB_FACTORS[arch], dtype=torch.float32)  # (4, 3)
    sample = sample.detach().to("cpu", torch.float32)
    rgb = torch.einsum("lhw,lc->hwc", sample, factors)
    rgb = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)
    return (rgb * 255.0).round().to(torch.uint8).numpy()


def rgb_to_png(rgb: np.ndarray) -> bytes:
    """uint8 (h, w, 3) -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class ProgressState:
    """One consistent snapshot of the worker's progress (A1111 `shared.state` fields, renamed).

    `job_no` is 0-based (A1111), `job_count` is the number of images/iterations of the job (batch
    count; compound jobs such as compare count their renders). Times are `time.time()` seconds.
    """

    job_id: str | None = None          # None when the worker is idle
    job: str = ""                      # job kind: "txt2img", "switch_model", "compare", ...
    job_count: int = 0
    job_no: int = 0
    sampling_step: int = 0             # steps done in the current iteration
    sampling_steps: int = 0
    job_started_at: float | None = None
    sampling_started_at: float | None = None
    interrupted: bool = False
    skipped: bool = False
    textinfo: str = ""
    queue_size: int = 0                # jobs waiting behind the current one
    preview_png: bytes | None = None   # the current latents' cheap preview, PNG
    preview_step: int = 0              # the sampling step the preview shows
    now: float = 0.0                   # when the snapshot was taken

    @property
    def active(self) -> bool:
        return self.job_id is not None

    @property
    def progress(self) -> float:
        """Fraction of the job done, 0..1: (job_no + step/steps) / job_count (A1111's formula)."""
        if not self.active or self.job_count <= 0:
            return 0.0
        within = self.sampling_step / self.sampling_steps if self.sampling_steps > 0 else 0.0
        return min(1.0, (self.job_no + within) / self.job_count)

    @property
    def eta_relative(self) -> float:
        """Seconds left, extrapolated from the time spent so far: elapsed / progress - elapsed."""
        done = self.progress
        if self.job_started_at is None or done <= 0.0:
            return 0.0
        elapsed = max(0.0, self.now - self.job_started_at)
        return max(0.0, elapsed / done - elapsed)


class ProgressTracker:
    """Thread-safe mutable progress, written by the worker thread, read as `ProgressState`.

    The preview is kept as a small uint8 array and encoded to PNG only when a snapshot asks for it.
    """

    def __init__(self, preview_max_side: int = 256) -> None:
        self._lock = threading.Lock()
        self._preview_max_side = preview_max_side
        self._state = ProgressState()
        self._preview_rgb: np.ndarray | None = None
        self._preview_png: bytes | None = None

    # -- writers (worker thread) --
    def begin_job(self, job_id: str, kind: str, job_count: int = 1, queue_size: int = 0) -> None:
        with self._lock:
            self._state = ProgressState(job_id=job_id, job=kind, job_count=max(1, job_count),
                                        job_started_at=time.time(), queue_size=queue_size)
            self._preview_rgb = None
            self._preview_png = None

    def begin_iteration(self, job_no: int, sampling_steps: int, textinfo: str = "") -> None:
        """A new image/iteration starts; grows job_count when a compound job renders more than announced."""
        with self._lock:
            s = self._state
            self._state = _replace(s, job_no=job_no, job_count=max(s.job_count, job_no + 1), sampling_step=0,
                                   sampling_steps=sampling_steps, sampling_started_at=time.time(),
                                   skipped=False, textinfo=textinfo or s.textinfo)

    def step(self, step: int, total: int, latents: torch.Tensor | None = None, arch: str | None = None) -> None:
        """After denoising step `step` (1-based) of `total`; latents (B, 4, h, w) feed the preview."""
        rgb = None
        if latents is not None and arch in LATENT_RGB_FACTORS:
            rgb = _shrink(latents_to_preview_rgb(latents, arch), self._preview_max_side)
        with self._lock:
            self._state = _replace(self._state, sampling_step=step, sampling_steps=total,
                                   preview_step=step if rgb is not None else self._state.preview_step)
            if rgb is not None:
                self._preview_rgb = rgb
                self._preview_png = None

    def set_textinfo(self, text: str) -> None:
        with self._lock:
            self._state = _replace(self._state, textinfo=text)

    def mark_interrupted(self) -> None:
        with self._lock:
            if self._state.active:
                self._state = _replace(self._state, interrupted=True)

    def mark_skipped(self) -> None:
        with self._lock:
            if self._state.active:
                self._state = _replace(self._state, skipped=True)

    def set_queue_size(self, n: int) -> None:
        with self._lock:
            self._state = _replace(self._state, queue_size=n)

    def end_job(self, queue_size: int = 0) -> None:
        """Back to idle. `interrupted` stays set until the next job begins, as in A1111's
        `shared.state`, so a client polling /progress after the render still sees why it ended."""
        with self._lock:
            self._state = ProgressState(queue_size=queue_size, interrupted=self._state.interrupted)
            self._preview_rgb = None
            self._preview_png = None

    # -- reader (any thread) --
    def snapshot(self, with_preview: bool = True) -> ProgressState:
        with self._lock:
            state = self._state
            png = None
            if with_preview and self._preview_rgb is not None:
                if self._preview_png is None:
                    self._preview_png = rgb_to_png(self._preview_rgb)
                png = self._preview_png
        return _replace(state, preview_png=png, now=time.time())


def _replace(state: ProgressState, **changes) -> ProgressState:
    return replace(state, **changes)


def _shrink(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Keep previews small: nearest-neighbour subsample so that max(h, w) <= max_side."""
    h, w = rgb.shape[:2]
    stride = max(1, -(-max(h, w) // max_side))
    return rgb[::stride, ::stride] if stride > 1 else rgb
