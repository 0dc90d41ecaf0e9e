"""Read a .safetensors header (tensor names, dtypes, shapes, `__metadata__`) without reading tensors.

File layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the tensor bytes.
Every way a file can be wrong raises SafetensorsHeaderError with a message naming the file and the
problem; nothing else escapes (the library shows the entry as broken and goes on).
"""
from __future__ import annotations

import json
import os
import struct
from itertools import chain
from operator import gt, itemgetter
from pathlib import Path
from typing import Any, NamedTuple

try:  # optional accelerator (installed with gradio): parses big headers ~2x faster than the json module
    import orjson as _orjson
except ImportError:  # pragma: no cover - the stdlib path below gives the same results
    _orjson = None

__all__ = ["SafetensorsHeaderError", "SafetensorsHeader", "TensorInfo", "read_header", "parse_header",
           "MAX_HEADER_BYTES"]

from lora_ui.files import NotRegularFileError, open_regular
from lora_ui.limits import MAX_HEADER_BYTES  # real LoRA headers are KBs (MBs with embedded cover images)

_DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1,
                "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
                "I64": 8, "U64": 8, "F64": 8, "C64": 8}


_DTYPE_NAMES = frozenset(_DTYPE_SIZES)
_GET_DTYPE, _GET_SHAPE, _GET_OFFSETS = itemgetter("dtype"), itemgetter("shape"), itemgetter("data_offsets")
_FIRST, _SECOND = itemgetter(0), itemgetter(1)


class SafetensorsHeaderError(ValueError):
    """The file is not a valid safetensors file; the message says which file and why."""


class TensorInfo(NamedTuple):
    """One tensor's entry in the header: dtype name ("F16"...), shape, byte range after the header."""

    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]


class SafetensorsHeader:
    """A parsed, validated header. `data_start` = 8 + N is where tensor bytes begin (the addnet hash
    starts there). `raw_tensors` holds the header's own entries ({"dtype", "shape", "data_offsets"},
    already validated); `tensors` gives them as TensorInfo (built on first use: listing thousands of
    files only needs a few shapes)."""

    __slots__ = ("raw_tensors", "metadata", "header_size", "_tensors")

    def __init__(self, raw_tensors: dict[str, dict[str, Any]], metadata: dict[str, str], header_size: int):
        self.raw_tensors = raw_tensors
        self.metadata = metadata
        self.header_size = header_size
        self._tensors: dict[str, TensorInfo] | None = None

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        if self._tensors is None:
            self._tensors = {name: TensorInfo(e["dtype"], tuple(e["shape"]), tuple(e["data_offsets"]))
                             for name, e in self.raw_tensors.items()}
        return self._tensors

    @property
    def data_start(self) -> int:
        return 8 + self.header_size


def _fail(label: str, problem: str) -> SafetensorsHeaderError:
    return SafetensorsHeaderError(f"{label}: {problem}")


def parse_header(prefix: bytes, header_bytes: bytes, file_size: int | None = None,
                 label: str = "safetensors data") -> SafetensorsHeader:
    """Validate and parse a header given its 8-byte length prefix and JSON bytes.

    `file_size`, when known, bounds the header and the tensors' byte ranges.
    """
    if len(prefix) < 8:
        raise _fail(label, f"file is too short to be safetensors ({len(prefix)} bytes, need at least 8)")
    (size,) = struct.unpack("<Q", prefix[:8])
    if size > MAX_HEADER_BYTES:
        raise _fail(label, f"header length {size} bytes is larger than the {MAX_HEADER_BYTES} byte limit "
                           "(not a safetensors file, or corrupt)")
    if file_size is not None and 8 + size > file_size:
        raise _fail(label, f"header length {size} bytes is larger than the file ({file_size} bytes); "
                           "the file is truncated or not safetensors")
    if len(header_bytes) < size:
        raise _fail(label, f"header is truncated (expected {size} bytes, got {len(header_bytes)})")
    body = header_bytes if len(header_bytes) == size else header_bytes[:size]
    data_size = file_size - 8 - size if file_size is not None else None
    fast = _parse_fast(body, data_size)
    if fast is not None:
        return SafetensorsHeader(fast[0], fast[1], size)
    # The reference path (stdlib json): gives every error message, and decides every header the fast
    # path did not accept, so the result never depends on whether orjson is installed.
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(label, f"header is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    raw = _loads(text, label)
    if not isinstance(raw, dict):
        raise _fail(label, f"header is a JSON {type(raw).__name__}, expected an object")
    metadata_raw = raw.pop("__metadata__", None)
    metadata: dict[str, str] = {}
    if metadata_raw is not None:
        if not isinstance(metadata_raw, dict):
            raise _fail(label, f"__metadata__ is a JSON {type(metadata_raw).__name__}, expected an object of strings")
        for key, value in metadata_raw.items():
            if not isinstance(value, str):
                raise _fail(label, f"__metadata__ value of {key!r} is a JSON {type(value).__name__}, "
                                   "but safetensors metadata values must be strings")
            metadata[key] = value
    if not _entries_valid(raw, data_size):
        _raise_first_bad_entry(label, raw, data_size)
    return SafetensorsHeader(raw, metadata, size)


def _loads(text: str, label: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _fail(label, f"header is not valid JSON ({str(exc)[:120]})") from None


def _parse_fast(body: bytes, data_size: int | None) -> tuple[dict[str, Any], dict[str, str]] | None:
    """(tensor entries, metadata) when orjson parses `body` into a valid header, else None (no orjson,
    not JSON, or anything unusual). orjson differs from the json module only in what it refuses
    (lone surrogates, NaN, nesting over 1024) and in turning integers beyond 64 bits into floats;
    floats never pass the checks here, so every header accepted here parses the same with json."""
    if _orjson is None:
        return None
    try:
        raw = _orjson.loads(body)
    except (ValueError, RecursionError):
        return None
    if type(raw) is not dict:
        return None
    metadata = raw.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif type(metadata) is not dict or set(map(type, metadata.values())) - {str}:
        return None
    if not _entries_valid(raw, data_size):
        return None
    return raw, metadata


def _entries_valid(raw: dict[str, Any], data_size: int | None) -> bool:
    """True when every tensor entry is well-formed and inside the file. Checks run as C-level loops
    (map/set/min/max): a LoRA header has thousands of entries and listing reads thousands of headers."""
    values = list(raw.values())
    if not values:
        return True
    try:
        dtypes = set(map(_GET_DTYPE, values))
        shapes = list(map(_GET_SHAPE, values))
        offsets = list(map(_GET_OFFSETS, values))
        if not dtypes <= _DTYPE_NAMES or set(map(type, shapes)) != {list} or set(map(type, offsets)) != {list}:
            return False
        if set(map(len, offsets)) != {2}:
            return False
        begins = list(map(_FIRST, offsets))
        ends = list(map(_SECOND, offsets))
        dims = list(chain.from_iterable(shapes))
    except (TypeError, KeyError):
        return False
    if (set(map(type, begins)) | set(map(type, ends))) != {int} or min(begins) < 0 or any(map(gt, begins, ends)):
        return False
    if dims and (set(map(type, dims)) != {int} or min(dims) < 0):
        return False
    return data_size is None or max(ends) <= data_size


def _raise_first_bad_entry(label: str, raw: dict[str, Any], data_size: int | None) -> None:
    """Slow path, only for bad headers: find the first bad entry and raise its precise message."""
    for name, entry in raw.items():
        try:
            dtype = entry["dtype"]
            shape = entry["shape"]
            begin, end = entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise _tensor_entry_error(label, name, entry) from None
        if (type(dtype) is not str or dtype not in _DTYPE_SIZES or type(shape) is not list
                or type(begin) is not int or type(end) is not int or not 0 <= begin <= end
                or any(type(dim) is not int or dim < 0 for dim in shape)):
            raise _tensor_entry_error(label, name, entry)
        if data_size is not None and end > data_size:
            raise _fail(label, f"tensor {name!r}: data ends at byte {end} but the file holds only "
                               f"{data_size} bytes of tensor data (truncated file)")
    raise _fail(label, "tensor entries are malformed")  # unreachable when the fast check is right


def _tensor_entry_error(label: str, name: str, entry: Any) -> SafetensorsHeaderError:
    """The precise message for a malformed tensor entry (slow path, only on errors)."""
    if not isinstance(entry, dict):
        return _fail(label, f"tensor {name!r}: entry is a JSON {type(entry).__name__}, expected an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPE_SIZES:
        return _fail(label, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        return _fail(label, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    return _fail(label, f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end] byte positions")


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Read and validate the header of the file at `path`; tensors are never read.

    The one safetensors header reader of the app (library, LoRA loader, checkpoints): regular files
    only (a FIFO, a device or a symlink to one is refused without blocking), header at most
    MAX_HEADER_BYTES, every byte range inside the file."""
    path = Path(path)
    label = str(path)
    try:
        with open_regular(path) as handle:
            file_size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _fail(label, f"file is too short to be safetensors ({file_size} bytes, need at least 8)")
            (size,) = struct.unpack("<Q", prefix)
            if size > MAX_HEADER_BYTES or 8 + size > file_size:
                return parse_header(prefix, b"", file_size, label)  # raises the right message
            header_bytes = handle.read(size)
    except FileNotFoundError:
        raise _fail(label, "file not found") from None
    except IsADirectoryError:
        raise _fail(label, "is a directory, not a file") from None
    except NotRegularFileError as exc:
        raise _fail(label, str(exc).removeprefix(label + " ")) from None
    except PermissionError:
        raise _fail(label, "permission denied") from None
    except OSError as exc:
        raise _fail(label, f"cannot be read ({exc.strerror or exc})") from None
    return parse_header(prefix, header_bytes, file_size, label)
