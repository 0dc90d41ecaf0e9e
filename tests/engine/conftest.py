"""Fixtures for the engine tests: tiny SD1/SDXL models wrapped as LoadedModel (CPU, fp32)."""
import pytest

from lora_ui.engine.checkpoints import wrap_pipeline
from lora_ui.testing.tiny_models import tiny_sd1_pipeline, tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def sd1_model():
    return wrap_pipeline(tiny_sd1_pipeline(0), name="tiny-sd1")


@pytest.fixture(scope="module")
def sdxl_model():
    return wrap_pipeline(tiny_sdxl_pipeline(0), name="tiny-sdxl")
