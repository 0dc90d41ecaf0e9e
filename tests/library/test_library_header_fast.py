"""The orjson fast path of parse_header decides every header exactly as the stdlib json path does."""
from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lora_ui import safetensors_header
from lora_ui.safetensors_header import SafetensorsHeaderError, parse_header


def test_orjson_is_installed():
    """orjson is pinned in requirements.txt: without it the comparisons below would test nothing."""
    assert safetensors_header._orjson is not None


def outcome(prefix: bytes, body: bytes, file_size: int, use_orjson: bool) -> tuple:
    """("ok", metadata, entries, header_size) or ("error", message) with or without orjson."""
    with pytest.MonkeyPatch.context() as patch:
        if not use_orjson:
            patch.setattr(safetensors_header, "_orjson", None)
        try:
            header = parse_header(prefix, body, file_size=file_size)
        except SafetensorsHeaderError as exc:
            return ("error", str(exc))
    return ("ok", header.metadata, header.raw_tensors, header.header_size)


entry = st.fixed_dictionaries({"dtype": st.sampled_from(["F16", "F32", "BF16", "Q"]),
                               "shape": st.lists(st.integers(-1, 5) | st.just(2**70) | st.just(True), max_size=3),
                               "data_offsets": st.lists(st.integers(-1, 40) | st.just(2**65), max_size=3)})
scalars = st.none() | st.booleans() | st.integers(-5, 2**70) | st.floats() | st.text(max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["__metadata__", "a.alpha", "u.lora_up.weight", "\ud800x"]),
                       entry | scalars | st.dictionaries(st.text(max_size=4), scalars, max_size=3)),
       st.integers(0, 64), st.booleans())
def test_fast_path_matches_stdlib_path(obj, data_len, ascii_only):
    body = json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    prefix = struct.pack("<Q", len(body))
    fast = outcome(prefix, body, 8 + len(body) + data_len, True)
    reference = outcome(prefix, body, 8 + len(body) + data_len, False)
    assert fast == reference


def test_big_integer_offsets_are_judged_like_stdlib():
    # orjson reads integers beyond 64 bits as floats; the header must still be judged by exact integers
    body = json.dumps({"t": {"dtype": "F16", "shape": [2**70], "data_offsets": [0, 2]}}).encode()
    prefix = struct.pack("<Q", len(body))
    fast = outcome(prefix, body, 8 + len(body) + 2, True)
    assert fast == outcome(prefix, body, 8 + len(body) + 2, False)
    assert fast[0] == "ok" and fast[2]["t"]["shape"] == [2**70]
