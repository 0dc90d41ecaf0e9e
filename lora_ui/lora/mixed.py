"""Mixed-LoRA batches: one UNet / text-encoder forward for rows that carry different LoRA sets.

For a batch whose rows belong to different LoRA sets, every patched layer computes

    y = base(x) + Σ_k rows_k ⊙ up_k(mid_k(down_k(x)))      (up_k already holds scale_k · m_k)

with the base weights shared and untouched, and each (LoRA module, multiplier, dyn) applied as one
matmul over exactly the rows that use it (`index_select` in, `index_copy_` out). The per-row op
sequence is the low-memory patcher's own (`patcher.add_branch`, same factors from
`patcher.fp32_branch_factors`, same order of the LoRAs on a layer), so a row's output is bit-identical
to the same request rendered alone in low-memory mode wherever the base op is batch-invariant.

Batch-invariance, measured (CPU, fp32, MKL): convolutions, attention, norms and Linear layers over
(B, L, C) inputs give each row the same bits at any batch size; a Linear over a 2-D (B, C) input (the
UNet's time-embedding MLP and every resnet's `time_emb_proj`) does not (the GEMM picks its kernel by
M = B). Those layers therefore run per *group* (a group = the rows of one request, in its own order,
i.e. the batch that request has when rendered alone): `RowMap.groups`.

Planner rule (`mix_blocker`): a LoRA takes part when every layer it patches is a Linear/Conv2d and
has a low-rank form (`NetworkModule.low_rank_factors(dyn)` is not None: LoRA/LoCon, LoCon 3x3 down,
Tucker mid), it has no start/stop schedule and no bundled embeddings. Anything else (full, OFT, norm,
LoHa, LoKr, GLoRA, IA3, DoRA, a LyCORIS weight-shaped `bias`) makes the request render in a batch of
its own, through the ordinary `LoraManager` path.

Use (on the thread that owns the pipeline; the LoraManager must hold no LoRAs: `manager.clear()`):

    with MixedLoras(manager, [specs_a, specs_b, []]) as mixed:     # installs per-instance forwards
        with mixed.uniform(0):                                     # every row -> set 0 (text encoding)
            encode(prompt_a)
        with mixed.rows(RowMap(sets=(0, 1, 2, 0, 1, 2), groups=(0, 1, 2, 0, 1, 2))):
            unet(x, t, encoder_hidden_states=...)
    # closed: every forward is exactly as before (instance attributes removed / restored)

A patched layer called with no row map set raises (a silent base-only output would be a wrong image).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .patcher import add_branch, fp32_branch_factors
from .spec import LoraError, LoraSpec

_MISSING = object()

# UNet Linear layers fed a 2-D (B, C) input: batch-variant on CPU GEMMs (see the module doc).
BATCH_VARIANT_NAMES = ("time_embedding.", "add_embedding.", "class_embedding.", "time_emb_proj")


class NotMixable(LoraError):
    """A LoRA set cannot take part in a mixed batch; `reason` says why (the request renders alone)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RowMap:
    """Which LoRA set each row of the next forward uses, and which solo batch (group) it belongs to.

    sets[i]: index into the MixedLoras' sets for row i. groups[i]: the request row i belongs to; rows
    of one group, in order, are the batch that request has when rendered alone (used by the
    batch-variant layers)."""

    sets: tuple[int, ...]
    groups: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.sets) != len(self.groups):
            raise ValueError(f"RowMap: {len(self.sets)} sets for {len(self.groups)} groups")

    def __len__(self) -> int:
        return len(self.sets)

    @classmethod
    def for_cfg(cls, image_sets: Sequence[int], image_groups: Sequence[int], terms: Sequence[int]) -> "RowMap":
        """The rows of a CFGDenoiser call (sampling/denoiser.py): for each image its AND terms (in
        order), then the B negatives, one per image. image_sets/groups/terms: per image."""
        owner = [i for i, n in enumerate(terms) for _ in range(n)] + list(range(len(terms)))
        return cls(tuple(image_sets[i] for i in owner), tuple(image_groups[i] for i in owner))


def mix_blocker(active) -> str | None:
    """Why a resolved LoRA set (LoraManager.resolve) cannot be mixed, or None when it can."""
    for a in active:
        name = a.spec.name or Path(a.spec.path).stem
        if a.spec.start is not None or a.spec.stop is not None:
            return f"LoRA '{name}' has a start/stop step schedule"
        if a.network.embeddings:
            return f"LoRA '{name}' bundles embeddings"
        for target_id, layer in a.network.layers.items():
            module = layer.target.module
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                return f"LoRA '{name}' patches {type(module).__name__} {target_id} (no low-rank branch)"
            if layer.module.low_rank_factors(a.spec.dyn) is None:
                return f"LoRA '{name}' has {layer.module.kind} modules without a low-rank form ({target_id})"
    return None


class _Layer:
    """One patched module: per set, its branches in the set's (A1111) order."""

    def __init__(self, owner: "MixedLoras", module: nn.Module, name: str, batch_variant: bool):
        self.owner = owner
        self.module = module
        self.name = name
        self.batch_variant = batch_variant
        self.per_set: list[list[tuple[tuple, tuple]]] = [[] for _ in owner.sets]  # [(key, (down, mid, up))]
        self._previous = _MISSING
        self._base = None
        self._plans: dict[RowMap, list] = {}

    # ---- install / uninstall -----------------------------------------------------------------
    def install(self) -> None:
        module = self.module
        self._previous = module.__dict__.get("forward", _MISSING)
        self._base = self._previous if self._previous is not _MISSING else type(module).forward.__get__(module)
        module.forward = self.forward  # instance attribute: this module only

    def uninstall(self) -> None:
        if self._previous is _MISSING:
            self.module.__dict__.pop("forward", None)
        else:
            self.module.forward = self._previous
        self._previous, self._base = _MISSING, None
        self._plans.clear()

    # ---- forward -----------------------------------------------------------------------------
    def _solo(self, x: Tensor, set_index: int) -> Tensor:
        """What the low-memory patcher computes for a batch that is all one set."""
        out = self._base(x)
        branches = self.per_set[set_index]
        if branches:
            in_place = not torch.is_grad_enabled() and out.is_contiguous()
            for _key, (down, mid, up) in branches:
                out = add_branch(self.module, x, out, down, mid, up, in_place)
        return out

    def forward(self, x: Tensor) -> Tensor:
        state = self.owner._state()
        if state.uniform is not None:
            return self._solo(x, state.uniform)
        rows = state.rows
        if rows is None:
            raise RuntimeError(f"mixed-LoRA layer {self.name} ran outside a row map (MixedLoras.rows/uniform)")
        if x.shape[0] != len(rows):
            raise RuntimeError(f"mixed-LoRA layer {self.name}: batch of {x.shape[0]} rows, row map of {len(rows)}")
        plan = self._plans.get(rows)
        if plan is None:
            plan = self._plans[rows] = self._plan(rows, x.device)
        if self.batch_variant and x.dim() == 2 and plan[0] is not None:
            return self._per_group(x, plan[0])
        out = self._base(x)
        in_place = not torch.is_grad_enabled() and out.is_contiguous()
        for bucket in plan[1]:
            for index, (down, mid, up) in bucket:
                if index is None:  # every row: no gather
                    out = add_branch(self.module, x, out, down, mid, up, in_place)
                    continue
                part = add_branch(self.module, x.index_select(0, index), out.index_select(0, index),
                                  down, mid, up, in_place)
                out = out.index_copy_(0, index, part) if in_place else out.index_copy(0, index, part)
        return out

    def _per_group(self, x: Tensor, groups: list[tuple[Tensor, int]]) -> Tensor:
        out: Tensor | None = None
        for index, set_index in groups:
            part = self._solo(x.index_select(0, index), set_index)
            if out is None:
                out = part.new_empty((x.shape[0], *part.shape[1:]))
            out.index_copy_(0, index, part)
        return out

    def _plan(self, rows: RowMap, device) -> tuple:
        """(groups or None, buckets): groups = [(row index, set)] per request group (batch-variant
        layers, when there is more than one group); buckets[p] = [(row index or None, factors)], one
        per distinct branch at position p of the rows' sets, in first-row order."""
        n = len(rows)
        groups = None
        if self.batch_variant and len(set(rows.groups)) > 1:
            by_group: dict[int, list[int]] = {}
            for i, g in enumerate(rows.groups):
                by_group.setdefault(g, []).append(i)
            groups = []
            for members in by_group.values():
                set_indices = {rows.sets[i] for i in members}
                if len(set_indices) != 1:
                    raise RuntimeError(f"mixed-LoRA: group of rows {members} mixes LoRA sets {sorted(set_indices)}")
                groups.append((torch.tensor(members, device=device), set_indices.pop()))
        depth = max((len(self.per_set[s]) for s in set(rows.sets)), default=0)
        buckets = []
        for p in range(depth):
            by_key: dict[tuple, tuple[list[int], tuple]] = {}
            for i, s in enumerate(rows.sets):
                branches = self.per_set[s]
                if p < len(branches):
                    key, factors = branches[p]
                    by_key.setdefault(key, ([], factors))[0].append(i)
            bucket = []
            for members, factors in by_key.values():
                index = None if len(members) == n else torch.tensor(members, device=device)
                bucket.append((index, factors))
            buckets.append(bucket)
        return groups, buckets


class _State(threading.local):
    uniform: int | None = None
    rows: RowMap | None = None


class MixedLoras:
    """Per-instance forward patches that serve several LoRA sets in one batch. See the module doc.

    manager: the pipeline's LoraManager (its parse cache, key map and multiplier rules are used; it
    must hold no LoRAs while this is installed). sets: one list of LoraSpec per set (may be empty).
    Raises NotMixable (reason) when a set cannot be mixed, LoraError for bad specs; nothing is
    installed then."""

    def __init__(self, manager, sets: Sequence[Sequence[LoraSpec]]):
        self.manager = manager
        self.sets = [list(s) for s in sets]
        self._local = _State()
        self._installed = False
        self.layers: dict[str, _Layer] = {}
        self.shared_branches = 0   # distinct (module, multiplier, dyn) factor sets built
        factors: dict[tuple, tuple] = {}
        for set_index, specs in enumerate(self.sets):
            active = manager.resolve(specs)
            reason = mix_blocker(active)
            if reason is not None:
                raise NotMixable(reason)
            for a in active:
                for target_id, layer in a.network.layers.items():
                    m = manager._multiplier(a, layer.target)
                    if m == 0.0:
                        continue  # as LoraManager._plan: W + 0·ΔW == W, the layer is left alone
                    module = layer.target.module
                    key = (id(layer.module), float(m), a.spec.dyn)
                    if key not in factors:
                        weight = module.weight
                        with torch.no_grad():
                            factors[key] = (fp32_branch_factors(layer.module, a.spec.dyn, m, weight.dtype,
                                                                weight.device), layer.module)
                    entry = self.layers.get(target_id)
                    if entry is None:
                        entry = self.layers[target_id] = _Layer(self, module, target_id,
                                                                _is_batch_variant(target_id, module))
                    entry.per_set[set_index].append((key, factors[key][0]))
        self.shared_branches = len(factors)
        self._factor_owners = [owner for _, owner in factors.values()]  # keep modules alive: ids stay unique
        unet = getattr(manager.pipe, "unet", None)
        if unet is not None:
            patched = {id(layer.module) for layer in self.layers.values()}
            for name, module in unet.named_modules():
                if isinstance(module, nn.Linear) and id(module) not in patched and _is_batch_variant(name, module):
                    self.layers[f"unet:{name}"] = _Layer(self, module, f"unet:{name}", True)

    # ---- lifecycle ---------------------------------------------------------------------------
    def install(self) -> "MixedLoras":
        if self._installed:
            return self
        if getattr(self.manager, "active", None) or getattr(self.manager.patcher, "layers", None):
            raise RuntimeError("MixedLoras needs the LoraManager cleared first (manager.clear())")
        for layer in self.layers.values():
            layer.install()
        self._installed = True
        return self

    def close(self) -> None:
        """Exact unload: every forward this installed is removed (or the earlier one restored)."""
        if not self._installed:
            return
        for layer in reversed(list(self.layers.values())):
            layer.uninstall()
        self._installed = False
        self._local.rows = None
        self._local.uniform = None

    def __enter__(self) -> "MixedLoras":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- row context -------------------------------------------------------------------------
    def _state(self) -> _State:
        return self._local

    @contextlib.contextmanager
    def uniform(self, set_index: int) -> Iterator[None]:
        """Every row of the forwards inside belongs to set `set_index` (e.g. one request's prompts)."""
        if not 0 <= set_index < len(self.sets):
            raise IndexError(f"no LoRA set {set_index} (there are {len(self.sets)})")
        state = self._local
        saved = (state.uniform, state.rows)
        state.uniform, state.rows = set_index, None
        try:
            yield
        finally:
            state.uniform, state.rows = saved

    @contextlib.contextmanager
    def rows(self, row_map: RowMap) -> Iterator[None]:
        """The forwards inside get batches laid out as `row_map`."""
        if any(not 0 <= s < len(self.sets) for s in row_map.sets):
            raise IndexError(f"row map names a LoRA set outside 0..{len(self.sets) - 1}")
        state = self._local
        saved = (state.uniform, state.rows)
        state.uniform, state.rows = None, row_map
        try:
            yield
        finally:
            state.uniform, state.rows = saved


def _is_batch_variant(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and any(part in name for part in BATCH_VARIANT_NAMES) \
        and not name.startswith(("text_encoder", "text_encoder_2"))
