"""A1111 "infotext": the generation parameters text stored in images. Write, parse, read, paste.

Format (A1111 v1.10 `processing.create_infotext`):

    <prompt>
    Negative prompt: <negative>            (line omitted when the negative prompt is empty)
    Steps: 20, Sampler: Euler a, ..., Lora hashes: "a: 0123456789ab, b: ba9876543210", Version: v1.10.1

Values containing ',' ':' newline, '"' or outer whitespace are JSON-quoted (A1111 quotes the first
three; quoting the others too keeps such values lossless and A1111 reads them back the same way). Stored in PNG as the
`parameters` text chunk, in JPEG/WebP as EXIF UserComment with the 8-byte "UNICODE\\0" prefix and
UTF-16 big-endian text (what A1111 writes through piexif). No torch, no gradio.
"""
from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

from PIL import ExifTags, Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

__all__ = [
    "InfotextError",
    "A1111_PARAM_ORDER",
    "quote",
    "unquote",
    "format_value",
    "format_lora_hashes",
    "parse_lora_hashes",
    "create_infotext",
    "parse_infotext",
    "params_for_infotext",
    "read_infotext",
    "png_info_with_infotext",
    "exif_bytes_with_infotext",
    "save_image_with_infotext",
    "decode_user_comment",
    "encode_user_comment",
    "resolve_pasted_loras",
]


class InfotextError(ValueError):
    """An image file could not be read or written; the message names the file and the reason."""


# Fixed positions in A1111's generation_params dict; any other key (extra_generation_params such as
# "Lora hashes", "Hires upscale") goes after "Tiling", in the caller's order; "Version" and "User" last.
A1111_PARAM_ORDER: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration",
    "Size", "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE",
    "Variation seed", "Variation seed strength", "Seed resize from", "Denoising strength",
    "Conditional mask weight", "Clip skip", "ENSD", "Token merging ratio", "Token merging ratio hr",
    "Init image hash", "RNG", "Tiling",
)
_TRAILING_KEYS: tuple[str, ...] = ("Version", "User")

# A1111 `infotext_utils.re_param_code`
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")
_INT_KEYS = frozenset({"Steps", "Seed", "Clip skip", "Variation seed", "Hires steps", "ENSD", "Batch size",
                       "Batch pos", "Mask blur", "Masked area padding"})
_FLOAT_KEYS = frozenset({"CFG scale", "Image CFG scale", "Denoising strength", "Variation seed strength",
                         "Hires upscale", "Conditional mask weight", "Token merging ratio",
                         "Token merging ratio hr", "Eta"})
_SCHEDULER_SUFFIXES = ("Karras", "Exponential", "SGM Uniform", "Uniform", "Polyexponential")

_USER_COMMENT_UNICODE = b"UNICODE\x00"
_USER_COMMENT_ASCII = b"ASCII\x00\x00\x00"
_USER_COMMENT_JIS = b"JIS\x00\x00\x00\x00\x00"


# --------------------------------------------------------------------------- writing

def quote(value: Any) -> str:
    """A1111's `quote`: JSON-encode values containing ',', ':' or a newline. Here also values with
    '"' or leading/trailing whitespace, which A1111 would lose on reading; it reads these back right."""
    text = str(value)
    if not any(ch in text for ch in ',:\n"') and text == text.strip():
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """A1111's `unquote`: JSON-decode a value that starts and ends with '"'; anything else as is."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def format_value(value: Any) -> str:
    """One parameter value as A1111 prints it: integral floats without ".0" (CFG scale: 7),
    others by Python's shortest repr (0.7), booleans as True/False, (w, h) sizes as "WxH"."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return str(int(value))
        return repr(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"
    if isinstance(value, Mapping):
        return format_lora_hashes(value)
    return str(value)


def format_lora_hashes(hashes: Mapping[str, str]) -> str:
    """{"name": "0123456789ab"} -> "name: 0123456789ab, ..." with ':' and ',' removed from names (A1111)."""
    parts = []
    for name, short_hash in hashes.items():
        clean = str(name).replace(":", "").replace(",", "")
        if clean and short_hash:
            parts.append(f"{clean}: {short_hash}")
    return ", ".join(parts)


def parse_lora_hashes(text: Any) -> dict[str, str]:
    """"a: hash, b: hash" -> {"a": "hash", "b": "hash"}; malformed items are skipped. Never raises."""
    if not isinstance(text, str):
        return {}
    result: dict[str, str] = {}
    for item in text.split(","):
        name, sep, short_hash = item.partition(":")
        if sep and name.strip() and short_hash.strip():
            result[name.strip()] = short_hash.strip()
    return result


def _ordered_params(params: Mapping[str, Any]) -> list[tuple[str, Any]]:
    fixed = [(k, params[k]) for k in A1111_PARAM_ORDER if k in params]
    extras = [(k, v) for k, v in params.items() if k not in A1111_PARAM_ORDER and k not in _TRAILING_KEYS]
    trailing = [(k, params[k]) for k in _TRAILING_KEYS if k in params]
    return fixed + extras + trailing


def create_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """Build the infotext exactly as A1111 does.

    `params` maps A1111 parameter names to values; None values are left out; a value equal to its key
    is written as the key alone (A1111 quirk). Known keys are put in A1111's order, the others follow
    in the given order, then "Version" and "User". "Lora hashes" may be a dict {name: short hash}.
    """
    parts = []
    for key, value in _ordered_params(params):
        if value is None:
            continue
        text = format_value(value)
        parts.append(key if key == text else f"{key}: {quote(text)}")
    negative_line = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_line}\n{', '.join(parts)}".strip()


# --------------------------------------------------------------------------- parsing

def _typed(key: str, value: str) -> Any:
    try:
        if key in _INT_KEYS:
            return int(value)
        if key in _FLOAT_KEYS:
            number = float(value)
            return number if math.isfinite(number) else value
    except ValueError:
        return value
    return value


def parse_infotext(text: Any) -> dict[str, Any]:
    """Parse infotext back into parameters, as A1111's `parse_generation_parameters` does.

    Returns "Prompt", "Negative prompt" and one key per parameter. Numbers of known keys are converted
    (Steps, Seed, Clip skip -> int; CFG scale, Denoising strength -> float); "WxH" values also give
    "<key>-1"/"<key>-2" ints (Size-1 = width); a missing "Clip skip" is 1; "Sampler: DPM++ 2M Karras"
    without "Schedule type" is split into sampler and schedule. Unparseable values stay strings.
    Never raises: garbage gives a dict with the garbage as the prompt.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return {"Prompt": "", "Negative prompt": ""}
    result: dict[str, Any] = {}
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    done_with_prompt = False
    *lines, last_line = text.strip().split("\n")
    if len(_RE_PARAM.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if done_with_prompt else prompt_lines).append(line)
    for key, value in _RE_PARAM.findall(last_line):
        value = value.strip()
        if value[:1] == '"' and value[-1:] == '"':
            value = unquote(value)
        size = _RE_IMAGESIZE.match(value)
        if size is not None:
            result[f"{key}-1"] = int(size.group(1))
            result[f"{key}-2"] = int(size.group(2))
        result[key] = _typed(key, value)
    if last_line and "Clip skip" not in result:
        result["Clip skip"] = 1
    sampler = result.get("Sampler")
    if isinstance(sampler, str) and "Schedule type" not in result:
        for suffix in _SCHEDULER_SUFFIXES:
            if sampler.endswith(" " + suffix):
                result["Sampler"] = sampler[: -len(suffix) - 1]
                result["Schedule type"] = suffix
                break
    result["Prompt"] = "\n".join(prompt_lines)
    result["Negative prompt"] = "\n".join(negative_lines)
    return result


def params_for_infotext(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of a `parse_infotext` result, ready for `create_infotext` again: without
    "Prompt"/"Negative prompt", the derived "<key>-1"/"<key>-2" numbers, and "Clip skip" 1 (A1111
    never writes it)."""
    derived = {f"{k}-{i}" for k in parsed for i in (1, 2)}
    return {k: v for k, v in parsed.items()
            if k not in ("Prompt", "Negative prompt") and k not in derived
            and not (k == "Clip skip" and v == 1)}


# --------------------------------------------------------------------------- images

def encode_user_comment(text: str) -> bytes:
    """EXIF UserComment bytes as piexif's `UserComment.dump(text, encoding="unicode")` writes them."""
    return _USER_COMMENT_UNICODE + text.encode("utf-16-be")


def decode_user_comment(data: Any) -> str | None:
    """Decode an EXIF UserComment (8-byte charset prefix + text). UNICODE is UTF-16; its byte order is
    taken from a BOM if present, else guessed from where the zero bytes of ASCII characters fall (some
    tools write little-endian). Returns None for empty or undecodable data."""
    if isinstance(data, str):
        return data or None
    if not isinstance(data, (bytes, bytearray)) or len(data) < 8:
        return None
    prefix, body = bytes(data[:8]), bytes(data[8:])
    if prefix == _USER_COMMENT_UNICODE:
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            return body.decode("utf-16", errors="replace") or None
        even_zeros = body[0::2].count(0)
        odd_zeros = body[1::2].count(0)
        encoding = "utf-16-le" if odd_zeros > even_zeros else "utf-16-be"
        return body[: len(body) // 2 * 2].decode(encoding, errors="replace") or None
    if prefix == _USER_COMMENT_ASCII:
        return body.decode("ascii", errors="replace").rstrip("\x00") or None
    if prefix == _USER_COMMENT_JIS:
        return body.decode("shift_jis", errors="replace").rstrip("\x00") or None
    # Undefined prefix: A1111 falls back to UTF-8 of the whole value.
    return bytes(data).decode("utf-8", errors="ignore").strip("\x00") or None


def _open_image(image_or_path: Any) -> tuple[Image.Image, bool, str]:
    """(image, whether we opened it and must close it, a label for messages)."""
    if isinstance(image_or_path, Image.Image):
        return image_or_path, False, "image"
    if isinstance(image_or_path, (bytes, bytearray)):
        source: Any = io.BytesIO(bytes(image_or_path))
        label = "image data"
    elif isinstance(image_or_path, (str, Path)):
        source = Path(image_or_path)
        label = str(image_or_path)
    else:
        raise InfotextError(f"cannot read infotext from a {type(image_or_path).__name__}; "
                            "give a PIL image, a path or image bytes")
    try:
        return Image.open(source), True, label
    except FileNotFoundError:
        raise InfotextError(f"{label}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InfotextError(f"{label}: not a readable image ({exc})") from None


def read_infotext(image_or_path: Any) -> str | None:
    """The infotext stored in a PNG (`parameters` text chunk), JPEG or WebP (EXIF UserComment, or a
    JPEG comment). None when the image has none. InfotextError when it is not a readable image."""
    image, opened, label = _open_image(image_or_path)
    try:
        info = image.info or {}
        parameters = info.get("parameters")
        if isinstance(parameters, bytes):
            parameters = parameters.decode("utf-8", errors="replace")
        if isinstance(parameters, str) and parameters:
            return parameters
        try:
            exif = image.getexif()
            comment = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
        except Exception:  # Pillow raises many types on a corrupt EXIF block: treat it as "no infotext"
            comment = None
        decoded = decode_user_comment(comment)
        if decoded:
            return decoded
        jpeg_comment = info.get("comment")
        if isinstance(jpeg_comment, bytes):
            jpeg_comment = jpeg_comment.decode("utf-8", errors="replace")
        if isinstance(jpeg_comment, str) and jpeg_comment:
            return jpeg_comment
        return None
    except InfotextError:
        raise
    except Exception as exc:
        raise InfotextError(f"{label}: could not read image metadata ({exc})") from None
    finally:
        if opened:
            image.close()


def png_info_with_infotext(text: str) -> PngInfo:
    """PngInfo holding `parameters` = text (tEXt, or iTXt when the text is not Latin-1), as A1111."""
    info = PngInfo()
    info.add_text("parameters", text)
    return info


def exif_bytes_with_infotext(text: str) -> bytes:
    """EXIF block (bytes for `Image.save(exif=...)`) with the infotext as UserComment, as A1111 writes
    for JPEG and WebP."""
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = encode_user_comment(text)
    return exif.tobytes()


def save_image_with_infotext(image: Image.Image, path: str | Path, text: str | None,
                             image_format: str | None = None, quality: int = 90) -> Path:
    """Save `image` to `path` (format from the suffix unless given) with the infotext embedded:
    PNG text chunk, or EXIF UserComment for JPEG/WebP. Raises InfotextError on unknown formats."""
    path = Path(path)
    fmt = (image_format or path.suffix.lstrip(".")).upper()
    fmt = {"JPG": "JPEG"}.get(fmt, fmt)
    try:
        if fmt == "PNG":
            image.save(path, "PNG", pnginfo=png_info_with_infotext(text) if text else None)
        elif fmt in ("JPEG", "WEBP"):
            to_save = image.convert("RGB") if fmt == "JPEG" and image.mode not in ("RGB", "L") else image
            kwargs: dict[str, Any] = {"quality": quality}
            if text:
                kwargs["exif"] = exif_bytes_with_infotext(text)
            to_save.save(path, fmt, **kwargs)
        else:
            raise InfotextError(f"{path}: cannot save infotext in format {fmt or '(none)'}; use png, jpg or webp")
    except InfotextError:
        raise
    except (OSError, ValueError) as exc:
        raise InfotextError(f"{path}: could not save image ({exc})") from None
    return path


# --------------------------------------------------------------------------- pasting

_RE_PASTED_LORA = re.compile(r"<lora:([^:<>]+):")


def resolve_pasted_loras(prompt: str, lora_hashes: Any, library: Any) -> tuple[str, list[str]]:
    """Rewrite `<lora:X:` so X names the local file whose short hash matches X's entry in the pasted
    "Lora hashes", even if the file was renamed (A1111's `infotext_pasted`). `lora_hashes` is the
    infotext value (str) or a dict. `library` needs `find_by_hash(h)` and `resolve(name)`, and entries
    with `.name` (a library may also offer `name_for(entry)`, the name that resolves to that entry).

    Returns (new prompt, messages for the user). Tags without a hash, or whose hash matches nothing
    here, are kept as written (with a message when the name is unknown too).

    The hash is looked up under the name as written (A1111 keys "Lora hashes" by it, and so does this
    app). Images written before that was so keyed the hash by the file's stem while the prompt named
    the alias: a tag without a hash of its own takes a hash no tag names whose file here has the tag's
    name as its alias or stem.
    """
    hashes = parse_lora_hashes(lora_hashes) if not isinstance(lora_hashes, Mapping) else dict(lora_hashes)
    messages: list[str] = []
    if not isinstance(prompt, str):
        return "", ["pasted prompt is not text"]
    written_names = {m.group(1).replace(":", "").replace(",", "").strip() for m in _RE_PASTED_LORA.finditer(prompt)}
    orphan_hashes = [h for name, h in hashes.items() if name not in written_names]

    def hash_by_alias(clean: str) -> str | None:
        for short_hash in orphan_hashes:
            entry = library.find_by_hash(short_hash)
            if entry is not None and clean in (getattr(entry, "alias", None), getattr(entry, "name", None)):
                return short_hash
        return None

    def replacement(match: re.Match) -> str:
        written = match.group(1)
        clean = written.replace(":", "").replace(",", "").strip()
        short_hash = hashes.get(clean) or (hash_by_alias(clean) if orphan_hashes else None)
        local_by_name = library.resolve(written.strip())
        if not short_hash:
            if local_by_name is None:
                messages.append(f"<lora:{written}>: no local LoRA has this name and the infotext has no hash for it")
            return match.group(0)
        entry = library.find_by_hash(short_hash)
        if entry is None:
            if local_by_name is None:
                messages.append(f"<lora:{written}>: no local LoRA has this name or the hash {short_hash}")
            else:
                messages.append(f"<lora:{written}>: the local file has a different hash than {short_hash}; "
                                "using it anyway")
            return match.group(0)
        if local_by_name is entry:
            return match.group(0)
        local_name = library.name_for(entry) if hasattr(library, "name_for") else entry.name
        messages.append(f"<lora:{written}>: matched by hash {short_hash} to the local file '{local_name}'")
        return f"<lora:{local_name}:"

    return _RE_PASTED_LORA.sub(replacement, prompt), messages
