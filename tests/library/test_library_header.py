"""Safetensors header reader: agrees with the safetensors library, rejects every bad file clearly."""
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from lora_ui.safetensors_header import (
    MAX_HEADER_BYTES,
    SafetensorsHeaderError,
    TensorInfo,
    parse_header,
    read_header,
)


def raw_file(path, header_obj, data=b"", length=None, header_bytes=None):
    body = header_bytes if header_bytes is not None else json.dumps(header_obj).encode()
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return path


def test_matches_what_safetensors_reads(tmp_path):
    tensors = {"a.lora_down.weight": np.ones((4, 768), np.float16), "a.alpha": np.array(4.0, np.float32),
               "b.w": np.zeros((2, 3, 1, 1), np.float32)}
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata={"ss_output_name": "nice", "k": "{\"a\": 1}"})
    header = read_header(path)
    with safe_open(str(path), "np") as reference:
        assert header.metadata == reference.metadata()
        assert set(header.tensors) == set(reference.keys())
        for key in reference.keys():
            assert header.tensors[key].shape == tuple(reference.get_slice(key).get_shape())
    assert header.tensors["a.alpha"] == TensorInfo("F32", (), header.tensors["a.alpha"].data_offsets)
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header.header_size == n and header.data_start == 8 + n


def test_file_without_metadata(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"t": np.zeros(3, np.float32)}, str(path))
    assert read_header(path).metadata == {}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: (p.write_bytes(b"abc"), p)[1], "too short to be safetensors (3 bytes"),
        (lambda p: raw_file(p, {}, length=10**6), "header length 1000000 bytes is larger than the file"),
        (lambda p: raw_file(p, {}, length=MAX_HEADER_BYTES + 1), "larger than the 104857600 byte limit"),
        (lambda p: raw_file(p, None, header_bytes=b"{not json"), "header is not valid JSON"),
        (lambda p: raw_file(p, None, header_bytes=b"\xff\xfe{}"), "header is not UTF-8 text"),
        (lambda p: raw_file(p, [1, 2]), "header is a JSON list, expected an object"),
        (lambda p: raw_file(p, {"__metadata__": {"a": 1}}), "__metadata__ value of 'a' is a JSON int"),
        (lambda p: raw_file(p, {"__metadata__": ["x"]}), "__metadata__ is a JSON list"),
        (lambda p: raw_file(p, {"t": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}), "unknown dtype 'F99'"),
        (lambda p: raw_file(p, {"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"0000"),
         "shape [-1] is not a list"),
        (lambda p: raw_file(p, {"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}), "data_offsets [4, 0]"),
        (lambda p: raw_file(p, {"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"1234"),
         "data ends at byte 16 but the file holds only 4 bytes"),
        (lambda p: raw_file(p, {"t": "nope"}), "tensor 't': entry is a JSON str"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, make, message):
    path = make(tmp_path / "bad.safetensors")
    with pytest.raises(SafetensorsHeaderError) as info:
        read_header(path)
    assert str(info.value).startswith(str(path) + ": ")
    assert message in str(info.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(SafetensorsHeaderError, match="file not found"):
        read_header(tmp_path / "nope.safetensors")
    with pytest.raises(SafetensorsHeaderError, match="is a directory"):
        read_header(tmp_path)


def test_truncated_copy_of_a_real_file_is_rejected_at_every_length(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"a": np.ones((8, 8), np.float32)}, str(good), metadata={"m": "v"})
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for length in range(0, len(data), 5):
        cut.write_bytes(data[:length])
        with pytest.raises(SafetensorsHeaderError):
            read_header(cut)


@settings(max_examples=250, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=200))
def test_fuzz_random_bytes_only_raise_header_error(prefix, body):
    try:
        header = parse_header(prefix, body, file_size=len(prefix) + len(body))
    except SafetensorsHeaderError:
        return
    assert isinstance(header.tensors, dict)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=5,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["__metadata__", "t", "u.lora_up.weight", "x"]),
                       json_values | st.fixed_dictionaries({"dtype": st.sampled_from(["F16", "F32", "Q"]),
                                                            "shape": st.lists(st.integers(-2, 5), max_size=3),
                                                            "data_offsets": st.lists(st.integers(-1, 40), max_size=3)})),
       st.integers(0, 64))
def test_fuzz_structured_headers_only_raise_header_error(obj, data_len):
    body = json.dumps(obj).encode()
    prefix = struct.pack("<Q", len(body))
    try:
        header = parse_header(prefix, body, file_size=8 + len(body) + data_len)
    except SafetensorsHeaderError as exc:
        assert str(exc).startswith("safetensors data: ")
        return
    for info in header.tensors.values():
        assert info.data_offsets[1] <= data_len
    assert all(isinstance(v, str) for v in header.metadata.values())
