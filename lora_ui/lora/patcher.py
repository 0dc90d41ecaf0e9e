"""Per-instance forward patching of the pipeline's layers. Base parameters are never written.

A patched layer gets an instance attribute ``forward`` (shadowing its class's method, on that one
module only; torch classes are never touched). Unpatching deletes the attribute, so the module is
exactly as before: same parameters (never written), same forward.

Two execution modes per layer:
- fast: a shadow weight ``W + Σ m·ΔW`` computed in fp32 and rounded once to the model dtype; the
  forward calls F.linear / conv / norm with it, so a step costs what a base step costs. Contributions
  are stacked in order, each ΔW computed against the weight already holding the earlier ones.
- low-memory: for plain LoRA the branch ``scale·m·up(down(x))`` is added in forward (no W-sized
  copy); a layer with any other type (or DoRA) falls back to a shadow weight for that layer.

On the CPU, shadows freed by an unload or a swap go to a `ShadowPool` for a while and are reused
by the next apply on the same layers (see there for why).
"""
from __future__ import annotations

import mmap
import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lora_ui.background import BackgroundLane, Deadline

FAST = "fast"
LOWMEM = "lowmem"
_MISSING = object()


@dataclass(frozen=True, eq=False)
class Contribution:
    """One LoRA's network module on one layer, with its effective multiplier (te/unet weight x
    block weight) and dyn. `source` identifies the parsed file (a cache entry), for change detection."""

    source: object
    module: object  # NetworkModule
    multiplier: float
    dyn: int | None

    def signature(self) -> tuple:
        return (id(self.source), id(self.module), float(self.multiplier), self.dyn)


def fp32_branch_factors(module, dyn, multiplier: float, dtype: torch.dtype, device) -> tuple | None:
    """(down, mid, up_scaled) in the model dtype for a forward-time branch, or None if not plain LoRA."""
    factors = module.low_rank_factors(dyn)
    if factors is None:
        return None
    # The scale and multiplier ride on `up` (out x r): computed in fp32, rounded once.
    up = (factors.up.to(device=device, dtype=torch.float32) * (factors.scale * multiplier)).to(dtype)
    down = factors.down.to(device=device, dtype=dtype)
    mid = None if factors.mid is None else factors.mid.to(device=device, dtype=dtype)
    return down, mid, up


class LayerPatch:
    """The state of one patched module: its contributions and either a shadow weight or branches."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.signature: tuple = ()
        self.shadow_weight: Tensor | None = None
        self.shadow_bias: Tensor | None = None
        self.branches: list[tuple[Tensor, Tensor | None, Tensor]] = []
        self.mode = FAST
        self.contributions: list[Contribution] = []
        self._previous_forward = _MISSING  # an instance forward someone else set before us

    # ---- building ------------------------------------------------------------------------------

    def build(self, contributions: list[Contribution], mode: str, pooled: "Pooled | None" = None) -> None:
        """Compute the new state (shadow or branches) without installing it. Raises on bad math.
        pooled: a buffer of this layer's shape to write the shadow into instead of fresh memory."""
        weight = self.module.weight
        branches = []
        if mode == LOWMEM:
            for c in contributions:
                b = fp32_branch_factors(c.module, c.dyn, c.multiplier, weight.dtype, weight.device)
                if b is None:
                    branches = None
                    break
                branches.append(b)
        if mode == LOWMEM and branches is not None:
            self.shadow_weight, self.shadow_bias, self.branches, self.mode = None, None, branches, LOWMEM
        else:
            out, staged = (pooled.buffer, pooled.staged) if pooled is not None else (None, False)
            self.shadow_weight, self.shadow_bias = shadow_weights(self.module, contributions, out=out, staged=staged)
            self.branches, self.mode = [], FAST
        self.signature = tuple(c.signature() for c in contributions) + (mode,)
        self.contributions = contributions  # keeps the modules alive, so signature ids stay unique

    # ---- forward -------------------------------------------------------------------------------

    def install(self) -> None:
        module = self.module
        self._previous_forward = module.__dict__.get("forward", _MISSING)
        if self.mode == FAST:
            forward = _shadow_forward(module, self)
        else:
            base = self._previous_forward if self._previous_forward is not _MISSING else type(module).forward.__get__(module)
            forward = _branch_forward(module, self, base)
        module.forward = forward  # instance attribute: this module only

    def uninstall(self) -> None:
        if self._previous_forward is _MISSING:
            self.module.__dict__.pop("forward", None)
        else:
            self.module.forward = self._previous_forward
        self._previous_forward = _MISSING
        self.shadow_weight = self.shadow_bias = None
        self.branches = []
        self.signature = ()
        self.contributions = []


def shadow_weights(module: nn.Module, contributions: list[Contribution],
                   out: Tensor | None = None, staged: bool = False) -> tuple[Tensor, Tensor | None]:
    """(W', b') = the layer's weight/bias with all contributions stacked in order, fp32 math,
    rounded once to the weight's dtype. b' is None when no contribution changes the bias.

    out: an old shadow (weight-shaped, weight dtype) to write W' into instead of a new tensor (a
    weight change then neither allocates nor frees W-sized memory). For fp32 weights it is the
    accumulator itself; otherwise an fp32 temporary is rounded into it once.
    staged: `out` already holds an exact copy of W (a re-staged pooled buffer), so for fp32 weights
    the first contribution is added in place (`addmm_`: the same gemm with beta=1 as `addmm(W, out=)`,
    bit-identical) and W is not read again.
    """
    weight = module.weight.detach()
    bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
    fp32_out = out if (out is not None and out.dtype == torch.float32) else None
    staged = staged and fp32_out is not None
    current: Tensor | None = None  # fp32 accumulator, created lazily by the first contribution
    bias32: Tensor | None = None
    for c in contributions:
        factors = c.module.low_rank_factors(c.dyn)
        if factors is not None and factors.mid is None:
            # Plain LoRA: one addmm pass (W + s·m·up@down), no W-sized ΔW temporary.
            up = factors.up.reshape(factors.up.shape[0], -1).to(device=weight.device, dtype=torch.float32)
            down = factors.down.reshape(factors.down.shape[0], -1).to(device=weight.device, dtype=torch.float32)
            alpha = factors.scale * c.multiplier
            if current is None:
                base = weight.reshape(weight.shape[0], -1)
                if base.dtype == torch.float32 and staged:
                    current = fp32_out  # == W already: one in-place pass, as a merge into W would be
                    current.view(weight.shape[0], -1).addmm_(up, down, alpha=alpha)
                elif base.dtype == torch.float32:
                    # One pass from W straight into the shadow (a reused one, else fresh memory).
                    current = fp32_out if fp32_out is not None else fresh_like(weight)
                    torch.addmm(base, up, down, alpha=alpha, out=current.view(weight.shape[0], -1))
                else:
                    current = torch.addmm(base.float(), up, down, alpha=alpha).reshape(weight.shape)
            else:
                current.view(weight.shape[0], -1).addmm_(up, down, alpha=alpha)
            continue
        orig = weight if current is None else current
        delta_w, delta_b = c.module.delta(orig, c.multiplier, c.dyn)
        if current is None:
            if fp32_out is not None:
                current = fp32_out if staged else fp32_out.copy_(weight)
            else:
                current = weight.float() if weight.dtype != torch.float32 else weight.clone()
        current += delta_w.reshape(weight.shape)
        if delta_b is not None:
            if bias is None:
                raise ValueError("the network changes a bias but the layer has none")
            if bias32 is None:
                bias32 = bias.float().clone()
            bias32 += delta_b.reshape(bias32.shape)
    if current is None:  # no contributions: the base weight itself (never written)
        return weight, None
    new_bias = None if bias32 is None else bias32.to(bias.dtype)
    if current is fp32_out:  # fp32: the reused buffer is the accumulator itself
        return current, new_bias
    if out is not None:
        return out.copy_(current), new_bias  # the one rounding to the model dtype
    return current.to(weight.dtype), new_bias


def fresh_like(weight: Tensor) -> Tensor:
    """An uninitialised tensor like `weight` (contiguous). On Linux CPUs its pages are mapped in
    one kernel call (MAP_POPULATE) instead of one page fault per 4 KiB on first write: a fast
    apply writes ~1.3 GB of new shadows for SD1.5, and mapping those pages costs ~0.5 s with
    populate vs ~0.7 s by faults on this CPU. The memory is returned when the tensor dies."""
    nbytes = weight.numel() * weight.element_size()
    if weight.device.type != "cpu" or nbytes < POPULATE_MIN_BYTES or not hasattr(mmap, "MAP_POPULATE"):
        return torch.empty_like(weight, memory_format=torch.contiguous_format)
    buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    return torch.frombuffer(buffer, dtype=weight.dtype).view(weight.shape)  # the tensor keeps `buffer` alive


POPULATE_MIN_BYTES = 1 << 20  # smaller shadows come from torch's allocator (often reused heap memory)


def _shadow_forward(module: nn.Module, patch: LayerPatch):
    """A forward computing the layer with the shadow weight (same op as the class forward)."""
    def bias_of():
        return patch.shadow_bias if patch.shadow_bias is not None else module.bias

    if isinstance(module, nn.Linear):
        def forward(x: Tensor) -> Tensor:
            return F.linear(x, patch.shadow_weight, bias_of())
    elif isinstance(module, nn.Conv2d):
        def forward(x: Tensor) -> Tensor:
            return module._conv_forward(x, patch.shadow_weight, bias_of())
    elif isinstance(module, nn.GroupNorm):
        def forward(x: Tensor) -> Tensor:
            return F.group_norm(x, module.num_groups, patch.shadow_weight, bias_of(), module.eps)
    elif isinstance(module, nn.LayerNorm):
        def forward(x: Tensor) -> Tensor:
            return F.layer_norm(x, module.normalized_shape, patch.shadow_weight, bias_of(), module.eps)
    else:
        raise TypeError(f"cannot patch a {type(module).__name__}")
    return forward


def _branch_forward(module: nn.Module, patch: LayerPatch, base_forward):
    """A forward adding Σ up(mid(down(x))) to the layer's own output (plain LoRA, low-memory mode).

    In inference (no grad) the branch is accumulated into the base output in place (`addmm_` /
    `baddbmm_`, no output-sized temporaries): the LoRA then costs its two small matmuls only.
    The per-branch op sequence is `add_branch` (shared with the mixed-batch patcher, lora/mixed.py,
    so that a row there gets exactly the ops it gets here).
    """
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"low-memory branches patch Linear/Conv2d, not {type(module).__name__}")

    def forward(x: Tensor) -> Tensor:
        out = base_forward(x)
        in_place = not torch.is_grad_enabled() and out.is_contiguous()
        for down, mid, up in patch.branches:
            out = add_branch(module, x, out, down, mid, up, in_place)
        return out
    return forward


def add_branch(module: nn.Module, x: Tensor, out: Tensor, down: Tensor, mid: Tensor | None, up: Tensor,
               in_place: bool) -> Tensor:
    """out + up(mid(down(x))) for one low-rank branch on a Linear or Conv2d (in place when asked)."""
    if isinstance(module, nn.Linear):
        h = F.linear(x, down)  # (..., r)
        if in_place:
            out.view(-1, out.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), up.t())
            return out
        return out + F.linear(h, up)
    if mid is None:
        # down carries the layer's kernel (or is 1x1 on a 1x1 layer): same geometry.
        h = F.conv2d(x, down, None, module.stride, module.padding, module.dilation)
    else:
        h = F.conv2d(x, down)
        h = F.conv2d(h, mid, None, module.stride, module.padding, module.dilation)
    if in_place and up.shape[2:] == (1, 1) and h.shape[2:] == out.shape[2:] and out.dim() == 4:
        # (B, C, HW) += (C, r) @ (B, r, HW): the 1x1 `up` conv as a batched in-place matmul
        b, r = h.shape[0], h.shape[1]
        out.view(b, out.shape[1], -1).baddbmm_(up.view(up.shape[0], r).expand(b, -1, -1), h.reshape(b, r, -1))
        return out
    if in_place:
        return out.add_(F.conv2d(h, up))
    return out + F.conv2d(h, up)


@dataclass(frozen=True, eq=False)
class _InPlace:
    """A planned in-place rebuild of an existing fast-mode shadow (same modules, new multipliers)."""

    contributions: list
    signature: tuple


def release_on(lane: BackgroundLane, tensors: list[Tensor]) -> None:
    """Drop the last references to big tensors on `lane`: returning W-sized buffers to the OS takes
    time that an unload should not wait for."""
    if tensors:
        lane.submit(tensors.clear)


@dataclass(eq=False)
class Pooled:
    """A shadow buffer of one layer, kept after its patch went away. staged: it equals W exactly."""

    buffer: Tensor
    module_ref: weakref.ref
    staged: bool = False


class ShadowPool:
    """Shadow buffers of layers that were unpatched or swapped, kept a while for the same layers.

    Why: on the CPU most of a first fast apply is not math but fresh memory. A shadow set for SD1.5
    is ~1.3 GB, and mapping that many new pages costs more than the addmm pass itself; writing into
    memory that is mapped but not in cache still costs a read per line. So freed shadows are kept,
    and a background thread re-stages each to an exact copy of its layer's W (idle time, right after
    the unload). The next apply on that layer is then one in-place `addmm_` into mapped memory: the
    same work as merging into W, and bit-identical to a shadow built from scratch. Buffers not taken
    within `keep_seconds` go back to the OS. Only CPU buffers are pooled: CUDA and MPS have caching
    allocators of their own, and their memory is better given back to the next generation.
    """

    def __init__(self, keep_seconds: float = 120.0, lane: BackgroundLane | None = None):
        """`lane`: the thread that stages and releases buffers (the Patcher's; its own if None)."""
        self.keep_seconds = keep_seconds
        self._lock = threading.Lock()
        self._entries: dict[str, Pooled] = {}
        self._generation = 0
        self._lane = lane or BackgroundLane("lora-shadow-pool")
        self._staging = False       # a staging pass is queued or running on the lane
        self._timer: Deadline | None = None  # the one pending expiry

    def put(self, items: list[tuple[str, nn.Module, Tensor]]) -> list[Tensor]:
        """Keep the buffers that fit their layer (CPU, same shape and dtype as its weight) and start
        re-staging them; returns the ones not kept."""
        rejected: list[Tensor] = []
        if self.keep_seconds <= 0:
            return [t for _, _, t in items]
        with self._lock:
            for target_id, module, buffer in items:
                weight = module.weight
                if (buffer.device.type != "cpu" or buffer.shape != weight.shape or buffer.dtype != weight.dtype
                        or buffer is weight or target_id in self._entries):
                    rejected.append(buffer)
                    continue
                self._entries[target_id] = Pooled(buffer, weakref.ref(module))
            if not self._entries:
                return rejected
            self._generation += 1
            generation = self._generation
        self._start_staging()
        with self._lock:
            old, self._timer = self._timer, Deadline(self.keep_seconds, lambda: self._expire(generation),
                                                     self._lane, "lora-shadow-expiry")
        if old is not None:
            old.cancel()  # the newest buffers set the pool's deadline
        return rejected

    def take(self, target_id: str, module: nn.Module) -> Pooled | None:
        """The pooled buffer of this layer (staged or not yet), removed from the pool; None if none."""
        with self._lock:  # the stager copies under this lock: at most one layer's copy to wait for
            entry = self._entries.pop(target_id, None)
        if entry is None or entry.module_ref() is not module or entry.buffer.shape != module.weight.shape:
            return None
        return entry

    def wait_staged(self, timeout: float | None = None) -> None:
        """Block until the background re-staging (and any release queued before it) is done."""
        self._lane.wait(timeout)

    def release(self, wait: bool = False) -> None:
        """Return every pooled buffer to the OS now (on a background thread unless `wait`)."""
        with self._lock:
            buffers = [e.buffer for e in self._entries.values()]
            self._entries.clear()
            self._generation += 1
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()  # nothing left to expire (harmless when called from the timer itself)
        if wait:
            buffers.clear()
        else:
            release_on(self._lane, buffers)

    def close(self, timeout: float | None = 30.0) -> bool:
        """Release every buffer and stop the expiry timer; True when the lane finished in time."""
        self.release(wait=True)
        return self._lane.wait(timeout)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.buffer.numel() * e.buffer.element_size() for e in self._entries.values())

    def _start_staging(self) -> None:
        with self._lock:
            if self._staging:
                return  # the queued or running pass picks up the new entries too
            self._staging = True
        self._lane.submit(self._stage_all)

    def _stage_all(self) -> None:
        while True:
            with self._lock:
                entry = next((e for e in self._entries.values() if not e.staged), None)
                if entry is None:
                    self._staging = False
                    return
                module = entry.module_ref()
                if module is not None:
                    with torch.no_grad():
                        entry.buffer.copy_(module.weight)
                entry.staged = True

    def _expire(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return  # buffers came or went since: a later timer owns the pool
        self.release()


class LayerBuildError(Exception):
    """Computing a layer's new weights failed (shape/dtype problem in a network module)."""

    def __init__(self, target_id: str, contributions: list[Contribution], cause: Exception):
        super().__init__(f"{target_id}: {type(cause).__name__}: {cause}")
        self.target_id = target_id
        self.contributions = contributions
        self.cause = cause


class Patcher:
    """All patched layers of one pipeline, keyed by target id."""

    def __init__(self, keep_shadows_seconds: float = 120.0):
        self.layers: dict[str, LayerPatch] = {}
        self._lane = BackgroundLane("lora-release")  # frees and re-stages W-sized buffers off the hot path
        self.pool = ShadowPool(keep_shadows_seconds, self._lane)

    def plan(self, wanted: dict[str, tuple[nn.Module, list[Contribution]]], mode: str) -> dict[str, object]:
        """Build the new state of every layer whose contributions changed, without touching any
        module. Returns target id -> built LayerPatch (to install), None (to unpatch), or an
        `_InPlace` rebuild. Raises LayerBuildError; nothing is changed then.

        A layer whose sources and network modules are unchanged (only multipliers/dyn differ) and
        that has a fast-mode shadow is rebuilt in place at commit: the same math already succeeded
        on it, so commit stays safe, and a weight change neither allocates nor frees W-sized memory.
        """
        changes: dict[str, object] = {}
        for target_id, (module, contributions) in wanted.items():
            signature = tuple(c.signature() for c in contributions) + (mode,)
            current = self.layers.get(target_id)
            if current is not None and current.signature == signature:
                continue
            if (current is not None and mode == FAST and current.mode == FAST
                    and current.shadow_weight is not None and current.shadow_weight is not module.weight
                    and [s[:2] for s in current.signature[:-1]] == [s[:2] for s in signature[:-1]]):
                changes[target_id] = _InPlace(contributions, signature)
                continue
            patch = LayerPatch(module)
            pooled = self.pool.take(target_id, module) if mode == FAST else None
            try:
                patch.build(contributions, mode, pooled)
            except Exception as e:  # noqa: BLE001 - re-raised with the layer and its sources named
                raise LayerBuildError(target_id, contributions, e) from e
            changes[target_id] = patch
        for target_id in self.layers:
            if target_id not in wanted:
                changes[target_id] = None
        return changes

    def commit(self, changes: dict[str, object], keep_freed: bool = True) -> None:
        """Install planned changes. Freed shadows go to the pool (CPU; unless not `keep_freed`) or
        are released on a background thread, so that an unload returns at once."""
        garbage: list[Tensor] = []
        freed: list[tuple[str, nn.Module, Tensor]] = []
        for target_id, change in changes.items():
            if isinstance(change, _InPlace):
                patch = self.layers[target_id]
                patch.shadow_weight, patch.shadow_bias = shadow_weights(
                    patch.module, change.contributions, out=patch.shadow_weight)
                patch.signature = change.signature
                patch.contributions = change.contributions
                continue
            old = self.layers.pop(target_id, None)
            if old is not None:
                _collect_freed(target_id, old, freed, garbage)
                old.uninstall()
            if change is not None:
                change.install()
                self.layers[target_id] = change
        garbage += self.pool.put(freed) if keep_freed else [t for _, _, t in freed]
        release_on(self._lane, garbage)

    def clear(self) -> None:
        """Unpatch every layer (their shadows go to the pool)."""
        self.commit(dict.fromkeys(self.layers))

    def close(self, timeout: float | None = 30.0) -> bool:
        """Unpatch everything, give every buffer back and join the background thread (the pipeline is
        going away). False (logged) when the thread did not end within `timeout`."""
        self.commit(dict.fromkeys(self.layers), keep_freed=False)
        self.pool.close(timeout)
        return self._lane.close(timeout)

    @property
    def shadow_bytes(self) -> int:
        """Bytes of the installed shadows (the pool's are `pool.nbytes`)."""
        return sum(p.shadow_weight.numel() * p.shadow_weight.element_size()
                   for p in self.layers.values() if p.shadow_weight is not None)


def _collect_freed(target_id: str, patch: LayerPatch, freed: list, garbage: list) -> None:
    """Sort an outgoing patch's tensors: its own shadow weight may be pooled, the rest is garbage."""
    if patch.shadow_weight is not None and patch.shadow_weight is not patch.module.weight:
        freed.append((target_id, patch.module, patch.shadow_weight))
    if patch.shadow_bias is not None:
        garbage.append(patch.shadow_bias)
