"""LoraManager: brings one pipeline to exactly a wanted set of LoRAs, atomically.

    manager = LoraManager(pipe, mode="auto")        # "fast" | "lowmem" | "auto"
    report = manager.set_loras([LoraSpec(path, "name", te=0.8, unet=0.6, lbw="INALL")])
    manager.on_step(i, total)                        # before denoising step i (0-based): start/stop
    manager.clear()                                  # exact unload
    manager.close()                                  # unload and give pooled memory back

Order of work in `set_loras`: validate the specs; get each file's parsed network (the active set
and an LRU cache, bounded by bytes, are consulted first: a weight change reads no file); compute
every layer's new state off to the side (nothing touched yet); only then swap the forwards and the
embeddings in. Any failure raises one LoraError and leaves the pipeline as it was, except a LoRA
for another architecture (LoraArchMismatch): it is left out with a warning in the report
(`skipped`, `warnings`) and the others are applied, as the UI announces ("it will be skipped").

Multipliers: text-encoder modules use `te`, UNet modules `unet`, times the LBW ratio of the
module's block. Several LoRAs on a layer stack in the order given (A1111's order).
Start/stop: UNet contributions of a LoRA are active for steps i with start <= i < stop (0-based
step index, i.e. `stop=10` = the first 10 steps, `start=5` = skip the first 5); text encoders,
which run once before sampling, are not scheduled.

Mode "auto": on CUDA, fast when free memory (torch.cuda.mem_get_info) holds the shadow weights
with 25% to spare, else low-memory; on CPU, fast unless the OS reports less available RAM than
that (os.sysconf, no psutil), since CPU RAM is normally far larger than one model's weights.
"""
from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .block_weights import BlockWeightError, parse_block_weights, ratio_for
from .embeddings import EmbeddingSet
from .keymap import KeyMap, build_keymap
from .loader import LoraNetwork, parse_lora
from .patcher import FAST, LOWMEM, Contribution, LayerBuildError, Patcher
from .spec import LoraArchMismatch, LoraError, LoraSpec

MODES = ("auto", FAST, LOWMEM)
DEFAULT_CACHE_BYTES = 1 << 30


@dataclass
class LoraReport:
    """What happened to one LoRA of the set. unmatched_keys: file keys that patch nothing here."""

    name: str
    path: Path
    layers: int
    matched_keys: int
    unmatched_keys: list[str]
    kinds: list[str]
    embeddings: list[str]
    from_cache: bool


@dataclass
class ApplyReport:
    """Result of set_loras. changed_layers: layers whose forward was (re)built or removed;
    files_read: files read from disk in this call; warnings: user-readable (partial matches ...)."""

    loras: list[LoraReport] = field(default_factory=list)
    mode: str = FAST
    changed_layers: int = 0
    files_read: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # LoRAs for another architecture: left out, not applied


@dataclass(eq=False)
class _Active:
    spec: LoraSpec
    network: LoraNetwork
    ratios: dict[str, float] | None
    from_cache: bool


def _file_key(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


class _NetworkCache:
    """Parsed networks by (path, mtime, size), least recently used evicted past `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, LoraNetwork] = OrderedDict()

    def get(self, key: tuple) -> LoraNetwork | None:
        network = self.entries.get(key)
        if network is not None:
            self.entries.move_to_end(key)
        return network

    def put(self, key: tuple, network: LoraNetwork) -> None:
        self.entries[key] = network
        self.entries.move_to_end(key)
        total = sum(n.nbytes for n in self.entries.values())
        while total > self.max_bytes and len(self.entries) > 1:
            _, evicted = self.entries.popitem(last=False)
            total -= evicted.nbytes

    @property
    def nbytes(self) -> int:
        return sum(n.nbytes for n in self.entries.values())


def _available_cpu_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class LoraManager:
    """One per loaded pipeline. See the module docstring."""

    def __init__(self, pipe, *, mode: str = "auto", allow_pickle: bool = False, cache_bytes: int | None = None,
                 keep_shadows_seconds: float = 120.0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.pipe = pipe
        self.mode = mode
        self.allow_pickle = allow_pickle
        self.keymap: KeyMap = build_keymap(pipe)
        self.patcher = Patcher(keep_shadows_seconds)  # freed CPU shadows are reused for that long
        self.cache = _NetworkCache(DEFAULT_CACHE_BYTES if cache_bytes is None else int(cache_bytes))
        self.embeddings = EmbeddingSet(pipe)
        self._mismatched: dict[tuple, str] = {}  # file key -> why it is for another architecture
        self.active: list[_Active] = []
        self.step: int = 0
        self.resolved_mode: str = FAST

    # ---- public API --------------------------------------------------------------------------

    def set_loras(self, specs: Sequence[LoraSpec]) -> ApplyReport:
        """Bring the pipeline to exactly `specs` (in order). Atomic: LoraError leaves it unchanged."""
        started = time.perf_counter()
        report = ApplyReport()
        active = self.resolve(specs, report)

        self.step = 0
        mode = self._pick_mode(active)
        changes = self._plan(active, mode)
        new_embeddings = {name: vecs for a in active for name, vecs in a.network.embeddings.items()}
        embedding_plan = self.embeddings.plan(new_embeddings)  # validates, touches nothing

        # Commit: nothing below can fail on bad input.
        self.patcher.commit(changes)
        self.embeddings.commit(embedding_plan)
        self.active = active
        self.resolved_mode = mode

        report.mode = mode
        report.changed_layers = len(changes)
        for a in active:
            n = a.network
            report.loras.append(LoraReport(a.spec.name, Path(a.spec.path), len(n.layers), len(n.matched_keys),
                                           list(n.unmatched_keys), sorted(n.kinds), sorted(n.embeddings), a.from_cache))
            if n.unmatched_keys:
                shown = ", ".join(n.unmatched_keys[:3])
                report.warnings.append(
                    f"LoRA '{a.spec.name}': {len(n.unmatched_keys)} of {len(n.unmatched_keys) + len(n.matched_keys)} "
                    f"keys match no layer of this model and were skipped (e.g. {shown})")
        report.seconds = time.perf_counter() - started
        return report

    def resolve(self, specs: Sequence[LoraSpec], report: ApplyReport | None = None) -> list[_Active]:
        """Validate `specs` and get each file's parsed network (active set, cache, else disk), in order.
        Touches no layer (the mixed-batch patcher, lora/mixed.py, shares this with set_loras)."""
        specs = list(specs)
        for spec in specs:
            self._check_spec(spec)
        seen: set[Path] = set()
        for spec in specs:
            key = Path(spec.path)
            if key in seen:
                raise LoraError(f"LoRA '{key.name}': listed twice in one request; give it once with one weight")
            seen.add(key)
        active: list[_Active] = []
        for spec in specs:
            try:
                network, from_cache, read = self._network_for(spec)
            except LoraArchMismatch as exc:  # the UI says "it will be skipped": skip it, the render goes on
                if report is not None:
                    report.skipped.append(f"{exc}; skipped")
                    report.warnings.append(f"{exc}; skipped")
                continue
            if report is not None:
                report.files_read += read
            ratios = parse_block_weights(spec.lbw) if spec.lbw else None
            active.append(_Active(spec, network, ratios, from_cache))
        return active

    def clear(self) -> None:
        """Exact unload: every forward restored, embeddings removed."""
        self.patcher.clear()
        self.embeddings.commit(self.embeddings.plan({}))
        self.active = []
        self.step = 0

    def close(self) -> None:
        """Unload, and return all shadow memory at once, pooled too (the pipeline is being replaced)."""
        self.patcher.close()
        self.clear()

    def on_step(self, step: int, total: int) -> None:
        """Call before denoising step `step` (0-based) of `total`: switches scheduled LoRAs on/off.
        Costs nothing when no active LoRA has start/stop; otherwise rebuilds only the layers of the
        LoRAs whose state flips at this step."""
        if not any(a.spec.start is not None or a.spec.stop is not None for a in self.active):
            self.step = step
            return
        self.step = step
        changes = self._plan(self.active, self.resolved_mode)
        self.patcher.commit(changes)

    def delta_norms(self, path: Path) -> dict[str, float]:
        """Per-block Frobenius norm of the LoRA's ΔW at weight 1 (no block weights):
        keys "te", "te2", "down_0".., "mid", "up_0".., "other" (only blocks it touches)."""
        spec = LoraSpec(path=Path(path), name=Path(path).stem)
        network, _, _ = self._network_for(spec)
        sums: dict[str, float] = {}
        with torch.no_grad():
            for layer in network.layers.values():
                weight = layer.target.module.weight.detach()
                delta_w, delta_b = layer.module.delta(weight, 1.0, None)
                sq = float(delta_w.double().pow(2).sum())
                if delta_b is not None:
                    sq += float(delta_b.double().pow(2).sum())
                sums[layer.target.level] = sums.get(layer.target.level, 0.0) + sq
        return {level: math.sqrt(v) for level, v in sums.items()}

    # ---- internals ---------------------------------------------------------------------------

    @staticmethod
    def _check_spec(spec: LoraSpec) -> None:
        name = Path(spec.path).name
        for label, value in (("te", spec.te), ("unet", spec.unet)):
            if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise LoraError(f"LoRA '{name}': the {label} weight must be a finite number, got {value!r}")
        if spec.dyn is not None and (not isinstance(spec.dyn, int) or spec.dyn < 1):
            raise LoraError(f"LoRA '{name}': dyn must be a positive rank, got {spec.dyn!r}")
        for label, value in (("start", spec.start), ("stop", spec.stop)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise LoraError(f"LoRA '{name}': {label} must be a step number >= 0, got {value!r}")
        if spec.start is not None and spec.stop is not None and spec.stop <= spec.start:
            raise LoraError(f"LoRA '{name}': stop ({spec.stop}) must be after start ({spec.start})")
        if spec.lbw:
            try:
                parse_block_weights(spec.lbw)
            except BlockWeightError as e:
                raise LoraError(f"LoRA '{name}': {e}") from None

    def _network_for(self, spec: LoraSpec) -> tuple[LoraNetwork, bool, int]:
        """(network, from memory?, files read). A file in the active set is reused without reading
        it while it is unchanged on disk (or gone: a weight change never needs the file)."""
        path = Path(spec.path)
        key = _file_key(path)
        for a in self.active:
            if Path(a.spec.path) == path and (key is None or a.network.cache_key == key):
                return a.network, True, 0
        if key is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return cached, True, 0
            mismatch = self._mismatched.get(key)
            if mismatch is not None:  # known to be for another architecture: not read again each render
                raise LoraArchMismatch(mismatch)
        try:
            network = parse_lora(path, self.keymap, allow_pickle=self.allow_pickle)
        except LoraArchMismatch as exc:
            if key is not None:
                if len(self._mismatched) >= 256:
                    self._mismatched.clear()
                self._mismatched[key] = str(exc)
            raise
        network.cache_key = key
        if key is not None:
            self.cache.put(key, network)
        return network, False, 1

    def _multiplier(self, a: _Active, target) -> float:
        spec = a.spec
        if target.is_text_encoder:
            base = spec.te
        else:
            base = spec.unet
            if spec.start is not None and self.step < spec.start:
                return 0.0
            if spec.stop is not None and self.step >= spec.stop:
                return 0.0
        return float(base) * ratio_for(a.ratios, target.lbw_block)

    def _plan(self, active: list[_Active], mode: str):
        wanted: dict[str, tuple] = {}
        for a in active:
            for target_id, layer in a.network.layers.items():
                m = self._multiplier(a, layer.target)
                if m == 0.0:
                    continue  # W + 0·ΔW == W: leave the layer alone
                entry = wanted.setdefault(target_id, (layer.target.module, []))
                entry[1].append(Contribution(a.network, layer.module, m, a.spec.dyn))
        try:
            with torch.no_grad():
                return self.patcher.plan(wanted, mode)
        except LayerBuildError as e:
            files = sorted({Path(c.source.path).name for c in e.contributions})
            keys = [k for a in active for t_id, layer in a.network.layers.items() if t_id == e.target_id
                    for k in layer.keys]
            raise LoraError(f"LoRA {', '.join(repr(f) for f in files)}: cannot compute the new weights of "
                            f"{e.target_id} ({e.cause}); first offending keys: {', '.join(keys[:5])}") from e

    def _pick_mode(self, active: list[_Active]) -> str:
        if self.mode != "auto":
            return self.mode
        needed = 0
        device = None
        targets = {t_id: layer.target for a in active for t_id, layer in a.network.layers.items()}
        for target in targets.values():
            w = target.module.weight
            needed += w.numel() * w.element_size()
            device = w.device
        if needed == 0:
            return FAST
        needed += self.patcher.shadow_bytes  # the old shadows live until the swap
        if device is not None and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return FAST if free > needed * 1.25 else LOWMEM
        available = _available_cpu_bytes()
        if available is not None:
            available += self.patcher.pool.nbytes  # pooled shadows are taken, not allocated anew
        if available is not None and available < needed * 1.25:
            return LOWMEM
        return FAST
