"""Device and precision choice: automatic per backend, overridable, clear refusals."""
import pytest
import torch

from lora_ui.engine import devices
from lora_ui.engine.devices import DeviceError


@pytest.fixture()
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture()
def cuda_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


def test_auto_on_a_cpu_machine_is_cpu_fp32(no_gpu):
    choice = devices.choose()
    assert choice.device == torch.device("cpu") and choice.dtype == torch.float32 and choice.precision == "fp32"


def test_auto_prefers_cuda_with_fp16(cuda_present):
    choice = devices.choose()
    assert choice.device.type == "cuda" and choice.dtype == torch.float16


def test_auto_uses_mps_with_fp16_when_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    choice = devices.choose()
    assert choice.device.type == "mps" and choice.dtype == torch.float16


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_precision_override_on_cuda(cuda_present, precision, dtype):
    assert devices.choose("cuda", precision).dtype == dtype


def test_no_half_is_fp32(cuda_present):
    assert devices.choose(no_half=True).dtype == torch.float32
    with pytest.raises(DeviceError, match="--no-half means fp32 but --precision fp16"):
        devices.choose(precision="fp16", no_half=True)


def test_fp16_on_cpu_is_refused_with_what_to_do(no_gpu):
    with pytest.raises(DeviceError, match="fp16 is not supported on the CPU.*--precision fp32"):
        devices.choose("cpu", "fp16")
    assert devices.choose("cpu", "bf16").dtype == torch.bfloat16


def test_asking_for_a_missing_gpu_is_refused(no_gpu):
    with pytest.raises(DeviceError, match="no CUDA GPU is available"):
        devices.choose("cuda")
    with pytest.raises(DeviceError, match="MPS backend is not available"):
        devices.choose("mps")


def test_unknown_names_list_the_choices():
    with pytest.raises(DeviceError, match="auto, cuda, mps, cpu"):
        devices.choose("tpu")
    with pytest.raises(DeviceError, match="auto, fp16, bf16, fp32"):
        devices.choose("cpu", "fp8")
