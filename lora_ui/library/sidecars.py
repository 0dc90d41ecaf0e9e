"""A1111 sidecar files next to `name.safetensors`: preview, description, user metadata, civitai info.

Reading never raises: a broken sidecar gives a warning and an empty value. Writing (only
`write_user_metadata`, only when the user saves) is atomic: a temp file in the same folder, then rename.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

__all__ = ["PREVIEW_EXTENSIONS", "USER_META_KEYS", "SD_VERSIONS", "SidecarError", "find_preview_name",
           "find_description_name", "read_text_sidecar", "read_json_sidecar", "civitai_fields",
           "validate_user_metadata", "write_user_metadata", "decode_cover_image", "atomic_write_text"]

PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")
USER_META_KEYS = ("description", "sd version", "activation text", "preferred weight", "negative text", "notes")
SD_VERSIONS = ("SD1", "SD2", "SDXL", "Unknown")
from lora_ui.files import read_capped
from lora_ui.limits import MAX_SIDECAR_BYTES as _MAX_SIDECAR_BYTES


class SidecarError(ValueError):
    """A sidecar cannot be written; the message names the file and the problem. Nothing was written."""


def find_preview_name(stem: str, names_lower: Mapping[str, str]) -> str | None:
    """The preview file name next to `stem`, in A1111's order (name.png, name.preview.png, name.jpg, ...).

    `names_lower` maps lower-cased file names of the folder to their real names (so NAME.PNG counts).
    """
    for ext in PREVIEW_EXTENSIONS:
        for candidate in (f"{stem}.{ext}", f"{stem}.preview.{ext}"):
            real = names_lower.get(candidate.lower())
            if real is not None:
                return real
    return None


def find_description_name(stem: str, names_lower: Mapping[str, str]) -> str | None:
    for candidate in (f"{stem}.txt", f"{stem}.description.txt"):
        real = names_lower.get(candidate.lower())
        if real is not None:
            return real
    return None


def read_text_sidecar(path: Path) -> tuple[str, str | None]:
    """(text, warning). Undecodable bytes are replaced; unreadable files give ("", warning)."""
    try:  # regular files only (a FIFO or /dev/zero link is refused), at most _MAX_SIDECAR_BYTES
        return read_capped(path, _MAX_SIDECAR_BYTES, "sidecar").decode("utf-8", errors="replace").strip(), None
    except OSError as exc:
        return "", f"{path.name}: cannot be read ({exc.strerror or exc}); ignored"


def read_json_sidecar(path: Path) -> tuple[dict[str, Any], str | None]:
    """(object, warning). Broken JSON or a non-object gives ({}, warning naming the file)."""
    try:  # regular files only (a FIFO or /dev/zero link is refused), at most _MAX_SIDECAR_BYTES
        raw = read_capped(path, _MAX_SIDECAR_BYTES, "sidecar")
    except OSError as exc:
        return {}, f"{path.name}: cannot be read ({exc.strerror or exc}); ignored"
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        return {}, f"{path.name}: not UTF-8 text; ignored"
    except (ValueError, RecursionError) as exc:
        return {}, f"{path.name}: not valid JSON ({str(exc)[:100]}); ignored"
    if not isinstance(data, dict):
        return {}, f"{path.name}: JSON {type(data).__name__}, expected an object; ignored"
    return data, None


def civitai_fields(info: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a `name.civitai.info` we use: trained words (list of str) and base model (str)."""
    words = info.get("trainedWords")
    trained = [w.strip() for w in words if isinstance(w, str) and w.strip()] if isinstance(words, list) else []
    base = info.get("baseModel")
    return {"trained_words": trained, "base_model": base if isinstance(base, str) and base else None}


def validate_user_metadata(values: Mapping[str, Any]) -> None:
    """Raise SidecarError naming the first bad A1111 field (unknown keys are allowed and kept)."""
    if not isinstance(values, Mapping):
        raise SidecarError(f"user metadata must be a mapping, got {type(values).__name__}")
    for key in ("description", "activation text", "negative text", "notes"):
        if key in values and values[key] is not None and not isinstance(values[key], str):
            raise SidecarError(f"'{key}' must be text, got {type(values[key]).__name__}")
    if "sd version" in values and values["sd version"] is not None and values["sd version"] not in SD_VERSIONS:
        raise SidecarError(f"'sd version' must be one of {', '.join(SD_VERSIONS)}, got {values['sd version']!r}")
    if "preferred weight" in values and values["preferred weight"] is not None:
        weight = values["preferred weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise SidecarError(f"'preferred weight' must be a finite number (0 = default), got {weight!r}")
    for key in values:
        if not isinstance(key, str):
            raise SidecarError(f"user metadata keys must be text, got {key!r}")
    try:
        json.dumps(dict(values), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise SidecarError(f"user metadata cannot be stored as JSON ({exc})") from None


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file in the same folder and os.replace (never half-written)."""
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        raise


def write_user_metadata(path: Path, values: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `values` into the `name.json` at `path` and write it atomically; returns what was written.

    Keys already in the file that `values` does not mention are kept (A1111 and other tools add their
    own); a value of None removes that key. A file that is not valid JSON is kept as `name.json.bak`
    before the new one is written, so the user's text is never lost.
    """
    validate_user_metadata(values)
    existing: dict[str, Any] = {}
    backup_broken = False
    if path.exists():
        existing, warning = read_json_sidecar(path)
        backup_broken = warning is not None
    merged = dict(existing)
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    text = json.dumps(merged, indent=4, ensure_ascii=False)
    try:
        if backup_broken:
            backup = path.with_name(path.name + ".bak")
            backup.write_bytes(path.read_bytes())
        atomic_write_text(path, text)
    except OSError as exc:
        raise SidecarError(f"{path}: cannot be written ({exc.strerror or exc}); nothing was changed") from None
    return merged


_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"))


def decode_cover_image(value: str) -> tuple[bytes, str] | None:
    """First image of `ssmd_cover_images` (a JSON list of base64 strings, or one base64 string, maybe a
    data: URL) as (bytes, extension); None when absent or undecodable."""
    candidates: list[Any]
    try:
        parsed = json.loads(value)
        candidates = parsed if isinstance(parsed, list) else [parsed]
    except ValueError:
        candidates = [value]
    for item in candidates:
        if not isinstance(item, str) or not item:
            continue
        if item.startswith("data:") and "," in item:
            item = item.split(",", 1)[1]
        try:
            data = base64.b64decode(item, validate=False)
        except (binascii.Error, ValueError):
            continue
        for magic, ext in _IMAGE_MAGIC:
            if data.startswith(magic):
                return data, ext
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return data, "webp"
    return None
