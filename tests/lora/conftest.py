"""Shared fixtures for the LoRA engine tests: one tiny SD1 and one tiny SDXL pipeline per test module
(module scope: a module may patch them, the next module starts from fresh ones)."""
import pytest

from lora_ui.testing.tiny_models import tiny_sd1_pipeline, tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def sd1():
    return tiny_sd1_pipeline(0)


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl_pipeline(0)
