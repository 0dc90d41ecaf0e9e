"""The UI's one door into the core (AppContext, library entries, worker progress, settings).

Every attribute the UI reads from a core object goes through here, so the tab modules stay about
widgets and the contract with the core lives in one place (docs/ARCHITECTURE.md). No gradio here.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

# Display names for `LoraEntry.network_type` (the engine's kinds and kohya/LyCORIS module names).
NETWORK_TYPE_LABELS = {
    "lora": "LoRA", "locon": "LoCon", "lierla": "LoRA", "c3lier": "LoCon", "loha": "LoHa", "hada": "LoHa",
    "lokr": "LoKr", "ia3": "IA3", "full": "Full", "norm": "Norm", "glora": "GLoRA", "oft": "OFT",
    "boft": "BOFT", "dora": "DoRA",
}
ARCH_LABELS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}
# A1111 user-metadata sidecar keys (`name.json`), in the order the editor shows them.
USER_META_KEYS = ("description", "activation text", "preferred weight", "negative text", "sd version", "notes")
SD_VERSIONS = ("Unknown", "SD1", "SD2", "SDXL")


def network_type_label(kind: str | None) -> str:
    """'lokr' -> 'LoKr'; unknown kinds are shown as written, missing ones as 'LoRA'."""
    if not kind:
        return "LoRA"
    return NETWORK_TYPE_LABELS.get(str(kind).lower(), str(kind))


def normalize_arch(arch: Any) -> str:
    """'SDXL' / 'sdxl' / 'SD1' / 'sd1' / 'Unknown' / None -> 'sdxl' | 'sd1' | 'sd2' | 'unknown'."""
    text = str(arch or "unknown").strip().lower().replace(".", "").replace(" ", "")
    if text.startswith("sdxl"):
        return "sdxl"
    if text in ("sd1", "sd15", "sd1x", "sdv1"):
        return "sd1"
    if text in ("sd2", "sd21", "sd2x", "sdv2"):
        return "sd2"
    return "unknown"


def arch_label(arch: Any) -> str:
    return ARCH_LABELS.get(normalize_arch(arch), "?")


def fits_model(entry_arch: Any, model_arch: Any) -> bool:
    """A LoRA fits unless both architectures are known and differ (unknown ones are not marked)."""
    a, b = normalize_arch(entry_arch), normalize_arch(model_arch)
    return a == "unknown" or b == "unknown" or a == b


def entry_name(entry: Any) -> str:
    return str(getattr(entry, "name", "") or Path(str(getattr(entry, "path", "?"))).stem)


def entry_user_meta(entry: Any) -> dict[str, Any]:
    meta = getattr(entry, "user_meta", None) or getattr(entry, "user_metadata", None) or {}
    return dict(meta) if isinstance(meta, dict) else {}


def entry_metadata(entry: Any) -> dict[str, Any]:
    meta = getattr(entry, "metadata", None) or {}
    return dict(meta) if isinstance(meta, dict) else {}


def entry_short_hash(entry: Any) -> str:
    value = getattr(entry, "short_hash", None)
    try:
        return str(value() if callable(value) else (value or ""))
    except Exception as exc:  # a file that vanished or cannot be read: show why, keep going
        return f"(unavailable: {exc})"


def entry_sha256(entry: Any) -> str:
    value = getattr(entry, "sha256", None)
    try:
        return str(value() if callable(value) else (value or ""))
    except Exception as exc:
        return f"(unavailable: {exc})"


def activation_text(entry: Any) -> str:
    """The library's activation text (user metadata, else civitai trained words), else name.json's."""
    value = getattr(entry, "activation_text", None)
    if isinstance(value, str):
        return value.strip()
    return str(entry_user_meta(entry).get("activation text", "") or "").strip()


def preferred_weight(entry: Any, default_weight: float) -> float:
    """A1111: 'preferred weight' 0 or missing means 'use the default weight'."""
    value = getattr(entry, "preferred_weight", None)
    if value is None or callable(value):
        value = entry_user_meta(entry).get("preferred weight", 0)
    try:
        value = float(value or 0)
    except (TypeError, ValueError):
        return default_weight
    return value if value != 0 and math.isfinite(value) else default_weight


def entry_arch(entry: Any) -> str:
    """The architecture the entry is for: the user's "sd version" override when set, else detected."""
    return normalize_arch(getattr(entry, "effective_arch", None) or getattr(entry, "arch", None))


def is_broken(entry: Any) -> bool:
    return bool(getattr(entry, "broken", False))


def entry_error(entry: Any) -> str:
    return str(getattr(entry, "error", "") or "the file cannot be read")


def description(entry: Any) -> str:
    return str(entry_user_meta(entry).get("description", "") or getattr(entry, "description", "") or "")


def training_tags(entry: Any) -> list[tuple[str, int]]:
    """Kohya `ss_tag_frequency` (JSON: dataset -> tag -> count) summed over datasets, most used first."""
    frequency = getattr(entry, "tag_frequency", None)
    if isinstance(frequency, dict):
        return sorted(((str(k), int(v)) for k, v in frequency.items()), key=lambda kv: (-kv[1], kv[0]))
    raw = entry_metadata(entry).get("ss_tag_frequency")
    if not raw:
        return []
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except (TypeError, ValueError):
        return []
    counts: dict[str, int] = {}
    if isinstance(data, dict):
        for tags in data.values():
            if not isinstance(tags, dict):
                continue
            for tag, count in tags.items():
                tag = str(tag).strip()
                if tag:
                    try:
                        counts[tag] = counts.get(tag, 0) + int(count)
                    except (TypeError, ValueError):
                        continue
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


# -- the app context -------------------------------------------------------------------------------

def current_model(ctx: Any) -> Any | None:
    """The LoadedModel of the ModelManager, or None when nothing is loaded."""
    models = getattr(ctx, "models", None)
    for attr in ("current", "loaded", "model"):
        value = getattr(models, attr, None)
        if callable(value):
            try:
                value = value()
            except Exception:
                value = None
        if value is not None:
            return value
    return None


def default_size(ctx: Any) -> int | None:
    """The loaded model's native size in px (None when no model is loaded yet)."""
    size = getattr(current_model(ctx), "default_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def limits(ctx: Any) -> Any:
    """The per-request limits (lora_ui.limits) the UI applies: the same as the REST API's."""
    from lora_ui import limits as app_limits

    return app_limits.of(getattr(ctx, "settings", None))


def current_arch(ctx: Any) -> str:
    return normalize_arch(getattr(current_model(ctx), "arch", None))


def library_entries(ctx: Any) -> list[Any]:
    library = getattr(ctx, "library", None)
    entries = getattr(library, "entries", None) or []
    return list(entries() if callable(entries) else entries)


def find_entry(ctx: Any, name: str) -> Any | None:
    """Resolve a name as written in a tag (alias or stem) through the library."""
    library = getattr(ctx, "library", None)
    if library is not None and hasattr(library, "resolve"):
        found = library.resolve(name)
        if found is not None:
            return found
    for entry in library_entries(ctx):
        if entry_name(entry) == name or getattr(entry, "alias", None) == name:
            return entry
    return None


def card_key(entry: Any) -> str:
    """A name that always resolves back to this entry (relative path without extension when known)."""
    return str(getattr(entry, "rel_name", "") or entry_name(entry))


def prompt_name(ctx: Any, entry: Any) -> str:
    """The name a card click writes into `<lora:NAME:...>` (A1111: the alias when it is unambiguous)."""
    library = getattr(ctx, "library", None)
    if library is not None and hasattr(library, "name_for"):
        return str(library.name_for(entry))
    return entry_name(entry)


def same_entry(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    return a is b or (getattr(a, "path", None) is not None and getattr(a, "path", None) == getattr(b, "path", None))


def save_user_meta(ctx: Any, entry: Any, meta: dict[str, Any]) -> None:
    """Write the A1111 `name.json` sidecar through the library (which keeps unknown keys)."""
    library = getattr(ctx, "library", None)
    if library is not None and hasattr(library, "save_user_metadata"):
        library.save_user_metadata(entry, meta)
    elif hasattr(entry, "save_user_metadata"):
        entry.save_user_metadata(meta)
    else:
        raise RuntimeError("the LoRA library cannot save user metadata (save_user_metadata missing)")


def refresh_library(ctx: Any) -> Any:
    library = getattr(ctx, "library", None)
    return library.refresh() if library is not None and hasattr(library, "refresh") else None


# -- settings --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SettingField:
    """One setting the Settings tab edits: the attribute name on `ctx.settings` and its fallback."""

    attr: str
    label: str
    default: Any


SETTING_FIELDS: tuple[SettingField, ...] = (
    SettingField("default_lora_weight", "Default LoRA weight (used when a LoRA has no preferred weight)", 1.0),
    SettingField("card_size", "LoRA card size (px)", 160),
    SettingField("outputs_dir", "Save images to", "outputs"),
    SettingField("add_lora_hashes_to_infotext", "Add LoRA hashes to infotext", True),
)


def outputs_path(ctx: Any) -> Path:
    """The folder every image the app writes goes under (Settings.outputs_path; the worker's as a fallback)."""
    settings = getattr(ctx, "settings", None)
    path = getattr(settings, "outputs_path", None)
    if isinstance(path, Path):
        return path
    worker_dir = getattr(getattr(ctx, "worker", None), "outputs_dir", None)
    if isinstance(worker_dir, Path):
        return worker_dir
    data_dir = getattr(settings, "data_dir", None)
    return Path(data_dir) / "outputs" if data_dir is not None else Path("outputs").resolve()


def ui_temp_dir(ctx: Any) -> Path | None:
    """Where the gallery writes the PNGs it shows when saving is off: under the data dir (every file the
    app writes goes there), in its cache folder; None without a data dir (tests: the system temp dir)."""
    data_dir = getattr(getattr(ctx, "settings", None), "data_dir", None)
    return Path(data_dir) / "cache" / "ui-images" if isinstance(data_dir, (str, Path)) else None


def gradio_allowed_paths(settings: Any) -> list[str]:
    """The folders Gradio may serve files from besides its own cache, the working directory and the
    system temp dir: the data dir (gallery PNGs, temporary images, sweep grids) and the outputs folder
    (which --outputs-dir may put elsewhere). Without them a --data-dir outside the working directory
    gives 'Cannot move ... to the gradio cache dir' on every image route."""
    paths: list[str] = []
    for value in (getattr(settings, "data_dir", None), getattr(settings, "outputs_path", None)):
        if isinstance(value, (str, Path)):
            resolved = str(Path(value).expanduser().resolve())
            if resolved not in paths:
                paths.append(resolved)
    return paths


def setting(ctx: Any, attr: str) -> Any:
    field = next(f for f in SETTING_FIELDS if f.attr == attr)
    value = getattr(getattr(ctx, "settings", None), attr, None)
    return field.default if value is None else value


# -- worker progress -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProgressView:
    """What the txt2img tab shows while a job runs: 'Step 7/20 · image 1/2 · ETA 3 s' and a preview."""

    active: bool
    step: int
    steps: int
    job_no: int
    job_count: int
    fraction: float
    eta_s: float
    preview_png: bytes | None

    def text(self) -> str:
        if not self.active:
            return "Waiting…"
        parts = [f"Step {self.step}/{self.steps}"]
        if self.job_count > 1:
            parts.append(f"image {self.job_no + 1}/{self.job_count}")
        parts.append(f"{self.fraction * 100:.0f}%")
        parts.append(f"ETA {self.eta_s:.0f} s" if self.fraction > 0 else "ETA …")
        return " · ".join(parts)


def progress_view(state: Any) -> ProgressView:
    """ProgressState (lora_ui/engine/progress.py) -> ProgressView."""
    active = bool(getattr(state, "active", getattr(state, "job_id", None) is not None))
    return ProgressView(
        active=active,
        step=int(getattr(state, "sampling_step", 0) or 0),
        steps=int(getattr(state, "sampling_steps", 0) or 0),
        job_no=int(getattr(state, "job_no", 0) or 0),
        job_count=int(getattr(state, "job_count", 0) or 0),
        fraction=float(getattr(state, "progress", 0.0) or 0.0),
        eta_s=float(getattr(state, "eta_relative", 0.0) or 0.0),
        preview_png=getattr(state, "preview_png", None),
    )


def names_in(entries: Iterable[Any]) -> list[str]:
    return [entry_name(e) for e in entries]
