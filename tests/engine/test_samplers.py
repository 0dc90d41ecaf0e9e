"""A1111 sampler names -> diffusers schedulers; each one renders, and they differ where they should."""
import itertools

import numpy as np
import pytest

from lora_ui.engine import samplers
from lora_ui.engine.txt2img import Txt2ImgRequest, generate

EXPECTED_CLASSES = {
    "Euler": "EulerDiscreteScheduler",
    "Euler a": "EulerAncestralDiscreteScheduler",
    "DPM++ 2M": "DPMSolverMultistepScheduler",
    "DPM++ 2M Karras": "DPMSolverMultistepScheduler",
    "DPM++ SDE": "DPMSolverSDEScheduler",
    "DDIM": "DDIMScheduler",
    "UniPC": "UniPCMultistepScheduler",
    "Heun": "HeunDiscreteScheduler",
    "LMS": "LMSDiscreteScheduler",
}


def test_the_issue_lists_exactly_these_samplers():
    assert set(samplers.SAMPLER_NAMES) == set(EXPECTED_CLASSES)


@pytest.mark.parametrize("name", list(EXPECTED_CLASSES))
def test_each_sampler_builds_its_class_from_the_models_config(sd1_model, name):
    sched = samplers.make_scheduler(sd1_model.pipe.scheduler.config, name)
    assert type(sched).__name__ == EXPECTED_CLASSES[name]
    assert sched.config.beta_end == 0.012 and sched.config.beta_schedule == "scaled_linear"


def test_karras_variants_use_karras_sigmas_and_plain_ones_do_not(sd1_model):
    cfg = dict(sd1_model.pipe.scheduler.config, use_karras_sigmas=True)  # a model config that has it on
    assert samplers.make_scheduler(cfg, "DPM++ 2M Karras").config.use_karras_sigmas is True
    assert samplers.make_scheduler(cfg, "DPM++ 2M").config.use_karras_sigmas is False
    assert samplers.make_scheduler(cfg, "DPM++ 2M").config.algorithm_type == "dpmsolver++"
    euler_k = samplers.make_scheduler(cfg, "Euler", "Karras")
    assert euler_k.config.use_karras_sigmas is True
    assert samplers.make_scheduler(cfg, "Euler", "SGM Uniform").config.timestep_spacing == "trailing"


def test_aliases_and_case_are_accepted():
    assert samplers.resolve_sampler("k_euler_a").name == "Euler a"
    assert samplers.resolve_sampler("dpm++ 2m karras").name == "DPM++ 2M Karras"
    assert samplers.resolve_schedule("karras") == "Karras"


def test_unknown_sampler_lists_the_valid_names():
    with pytest.raises(samplers.SamplerError) as err:
        samplers.resolve_sampler("Euler b")
    assert "'Euler b'" in str(err.value)
    for name in EXPECTED_CLASSES:
        assert name in str(err.value)


def test_schedule_a_solver_cannot_do_is_refused():
    with pytest.raises(samplers.SamplerError, match="'DDIM' cannot use schedule type 'Karras'"):
        samplers.scheduler_options("DDIM", "Karras")


@pytest.fixture(scope="module")
def renders(sd1_model):
    out = {}
    for name in EXPECTED_CLASSES:
        r = generate(sd1_model, Txt2ImgRequest(prompt="a cat", sampler=name, steps=3, seed=11, save_images=False))
        out[name] = (np.asarray(r.images[0], dtype=np.int16), r.infotexts[0])
    return out


def test_every_sampler_renders_and_names_itself_in_the_infotext(renders):
    for name, (pixels, info) in renders.items():
        assert pixels.shape == (32, 32, 3)
        assert f"Sampler: {name}, " in info


def test_samplers_give_different_images(renders):
    for a, b in itertools.combinations(EXPECTED_CLASSES, 2):
        assert not np.array_equal(renders[a][0], renders[b][0]), f"{a} and {b} rendered the same image"


@pytest.mark.parametrize("name", ["DPM++ SDE", "Euler a"])
def test_stochastic_samplers_are_reproducible_from_the_seed(sd1_model, renders, name):
    r = generate(sd1_model, Txt2ImgRequest(prompt="a cat", sampler=name, steps=3, seed=11, save_images=False))
    assert np.array_equal(np.asarray(r.images[0], dtype=np.int16), renders[name][0])


def test_a_requests_schedule_does_not_leak_into_the_next(sd1_model, renders):
    generate(sd1_model, Txt2ImgRequest(prompt="a cat", sampler="Euler", scheduler="SGM Uniform", steps=3, seed=11,
                                       save_images=False))
    r = generate(sd1_model, Txt2ImgRequest(prompt="a cat", sampler="Euler", steps=3, seed=11, save_images=False))
    assert sd1_model.pipe.scheduler.config.timestep_spacing == "leading"
    assert np.array_equal(np.asarray(r.images[0], dtype=np.int16), renders["Euler"][0])
