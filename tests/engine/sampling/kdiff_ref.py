"""k-diffusion 0.1.1.post1 (MIT, A1111's pinned version) as a test-only reference, without its package
__init__ (which imports training deps): sampling.py and external.py are loaded from the installed files
into a private package with a one-function `utils` stub (append_dims, the only helper they use) and, if
torchdiffeq is absent, a stub (only log_likelihood, unused here, needs it).

`noise_stream(stream)` routes k-diffusion's `torch.randn_like` to `stream.next()`, as A1111 does with its
per-image generators, so both implementations consume the same draws in the same order.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

_PKG = "_kdiff_ref"


def _append_dims(x, target_dims):
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError("input has more dimensions than target")
    return x[(...,) + (None,) * dims_to_append]


def _load():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.fail("k-diffusion==0.1.1.post1 is not installed: run ./run_tests.sh (it installs requirements-test-nodeps.txt)", pytrace=False)
    root = Path(spec.submodule_search_locations[0])
    pkg = types.ModuleType(_PKG)
    pkg.__path__ = [str(root)]
    utils = types.ModuleType(f"{_PKG}.utils")
    utils.append_dims = _append_dims
    sys.modules[_PKG], sys.modules[f"{_PKG}.utils"] = pkg, utils
    stub_diffeq = importlib.util.find_spec("torchdiffeq") is None
    if stub_diffeq:
        sys.modules["torchdiffeq"] = types.SimpleNamespace(odeint=None)
    try:
        mods = {}
        for name in ("sampling", "external"):
            mspec = importlib.util.spec_from_file_location(f"{_PKG}.{name}", root / f"{name}.py")
            mod = importlib.util.module_from_spec(mspec)
            sys.modules[mspec.name] = mod
            mspec.loader.exec_module(mod)
            setattr(pkg, name, mod)
            mods[name] = mod
    finally:
        if stub_diffeq:
            del sys.modules["torchdiffeq"]
    return mods["sampling"], mods["external"]


if f"{_PKG}.sampling" in sys.modules:
    sampling, external = sys.modules[f"{_PKG}.sampling"], sys.modules[f"{_PKG}.external"]
else:
    sampling, external = _load()


class _TorchWithStream:
    """`torch` for k-diffusion's sampling module, with randn_like taken from a stream."""

    def __init__(self, stream):
        self._stream = stream

    def randn_like(self, x, *args, **kwargs):
        out = self._stream.next()
        assert out.shape == x.shape
        return out

    def __getattr__(self, name):
        return getattr(torch, name)


@contextlib.contextmanager
def noise_stream(stream):
    sampling.torch = _TorchWithStream(stream)
    try:
        yield
    finally:
        sampling.torch = torch
