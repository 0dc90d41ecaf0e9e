"""Fuzz (Hypothesis, derandomized, bounded): txt2img / png-info JSON bodies and safetensors headers.
No 500, no hang, and the model is bit-identical after every refused request / rejected file."""
from __future__ import annotations

import json
import struct
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_ui.safetensors_header import SafetensorsHeaderError, read_header

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
FUZZ = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
FIELDS = ["prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "batch_size", "n_iter",
          "sampler_name", "scheduler", "override_settings", "enable_hr", "styles", "send_images", "save_images"]
prompt_text = st.one_of(st.text(max_size=60), st.builds(lambda n, w: f"x <lora:{n}:{w}>",
                                                       st.sampled_from(["alpha", "nope", "../x", ""]),
                                                       st.one_of(st.floats(allow_nan=True), st.text(max_size=6))))
bodies = st.fixed_dictionaries({}, optional={**{f: values for f in FIELDS}, "prompt": prompt_text,
                                             "steps": st.integers(-5, 5) | values})


def _state(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


@pytest.fixture(scope="module")
def fuzz_client(api_env):
    with api_env.client() as c:
        yield c


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@FUZZ
@given(body=bodies)
def test_txt2img_bodies_never_500(api_env, fuzz_client, body):
    body = {**body, "save_images": False, "send_images": False}
    if isinstance(body.get("steps"), int) and not isinstance(body["steps"], bool):
        body["steps"] = min(body["steps"], 2)  # a valid body renders quickly
    body.pop("n_iter", None), body.pop("batch_size", None), body.pop("width", None), body.pop("height", None)
    before = _state(api_env.ctx.models.current.pipe)
    started = time.monotonic()
    try:
        raw = json.dumps(body, allow_nan=True)
    except (ValueError, UnicodeEncodeError):
        return
    r = fuzz_client.post("/sdapi/v1/txt2img", content=raw.encode("utf-8", "surrogatepass"),
                         headers={"content-type": "application/json"})
    assert r.status_code != 500 and r.status_code < 500, r.text
    assert time.monotonic() - started < 60
    if r.status_code != 200:
        assert _same(before, _state(api_env.ctx.models.current.pipe))


@FUZZ
@given(image=st.one_of(st.text(max_size=80), st.binary(max_size=80).map(lambda b: __import__("base64").b64encode(b).decode()),
                       values))
def test_png_info_bodies_never_500(fuzz_client, image):
    try:
        raw = json.dumps({"image": image})
    except ValueError:
        return
    r = fuzz_client.post("/sdapi/v1/png-info", content=raw.encode("utf-8", "surrogatepass"),
                         headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text


entry = st.fixed_dictionaries({"dtype": st.sampled_from(["F16", "F32", "X9", 3]),
                               "shape": st.lists(st.integers(-2, 2**40), max_size=3) | values,
                               "data_offsets": st.lists(st.integers(-4, 2**64), max_size=3) | values})
headers = st.dictionaries(st.text(max_size=10), entry | values, max_size=4)


@FUZZ
@given(header=headers, declared=st.one_of(st.none(), st.integers(0, 2**64 - 1)), tail=st.binary(max_size=64))
def test_safetensors_headers_only_raise_the_header_error(tmp_path_factory, header, declared, tail):
    raw = json.dumps(header, allow_nan=True).encode("utf-8", "surrogatepass")
    length = len(raw) if declared is None else declared
    path = tmp_path_factory.mktemp("fuzz") / "f.safetensors"
    path.write_bytes(struct.pack("<Q", length) + raw + tail)
    try:
        parsed = read_header(path)
    except SafetensorsHeaderError:
        return
    assert parsed.data_start == 8 + length


@FUZZ
@given(header=headers, tail=st.binary(max_size=64))
def test_a_fuzzed_lora_file_leaves_the_model_bit_identical(api_env, tmp_path_factory, header, tail):
    from lora_ui.lora.manager import LoraManager
    from lora_ui.lora.spec import LoraError, LoraSpec

    raw = json.dumps(header, allow_nan=True).encode("utf-8", "surrogatepass")
    path = tmp_path_factory.mktemp("fuzzlora") / "f.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + tail)
    pipe = api_env.ctx.models.current.pipe
    before = _state(pipe)
    manager = LoraManager(pipe)
    try:
        manager.set_loras([LoraSpec(path, "f")])
    except LoraError:
        pass
    finally:
        manager.clear()
    assert _same(before, _state(pipe))
