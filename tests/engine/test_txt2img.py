"""txt2img: seeds and CPU noise, batches, saving with infotext, validation, interrupt, LoRA wiring."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_ui.engine import txt2img
from lora_ui.engine.checkpoints import LoadedModel
from lora_ui.engine.txt2img import GenerationInterrupted, RequestError, Txt2ImgRequest, generate
from lora_ui.infotext import parse_infotext, read_infotext


def px(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def req(**kw) -> Txt2ImgRequest:
    base = dict(prompt="a red circle", negative_prompt="blurry", sampler="Euler", steps=3, seed=42, save_images=False)
    base.update(kw)
    return Txt2ImgRequest(**base)


class SpyPipe:
    """Delegates to a real pipeline and records the kwargs of each call."""

    def __init__(self, pipe):
        object.__setattr__(self, "_pipe", pipe)
        object.__setattr__(self, "calls", [])

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __setattr__(self, name, value):
        setattr(self._pipe, name, value)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self._pipe(**kwargs)


def spy_model(model: LoadedModel) -> tuple[LoadedModel, SpyPipe]:
    spy = SpyPipe(model.pipe)
    return LoadedModel(pipe=spy, arch=model.arch, name=model.name, path=None, default_size=model.default_size,
                       dtype=model.dtype, device=model.device), spy


def test_same_seed_gives_identical_pixels_and_other_seed_differs(sd1_model):
    a = generate(sd1_model, req(sampler="Euler a"))
    b = generate(sd1_model, req(sampler="Euler a"))
    c = generate(sd1_model, req(sampler="Euler a", seed=43))
    assert a.images[0].size == (32, 32)
    assert np.array_equal(px(a.images[0]), px(b.images[0]))
    assert not np.array_equal(px(a.images[0]), px(c.images[0]))


def test_initial_noise_is_torch_randn_on_a_cpu_generator_per_seed(sd1_model, monkeypatch):
    """The first draw handed to the sampler is torch.randn from a CPU generator seeded seed+i (A1111 on a
    machine without CUDA, RNG "GPU" or "CPU"); with RNG "NV" it is not."""
    from lora_ui.engine.sampling import registry

    seen = []
    real = registry.sample

    def spy(name, schedule, cfg, noise, *args, **kwargs):
        seen.append(noise.clone())
        return real(name, schedule, cfg, noise, *args, **kwargs)

    monkeypatch.setattr(registry, "sample", spy)
    expected = torch.stack([torch.randn((4, 16, 16), generator=torch.Generator("cpu").manual_seed(s))
                            for s in (1000, 1001)])
    for rng in ("GPU", "CPU", "NV"):
        generate(sd1_model, req(seed=1000, batch_size=2, rng=rng))
        assert seen[-1].shape == (2, 4, 16, 16)
        assert torch.equal(seen[-1].cpu(), expected) == (rng != "NV"), rng


def test_image_in_a_batch_equals_the_same_seed_rendered_alone(sd1_model):
    """Per-image CPU generators (A1111's ImageRNG): ancestral noise does not depend on the batch."""
    batch = generate(sd1_model, req(sampler="Euler a", seed=7, batch_size=2))
    alone = generate(sd1_model, req(sampler="Euler a", seed=8))
    assert batch.seeds == [7, 8]
    assert np.abs(px(batch.images[1]) - px(alone.images[0])).max() <= 1


def test_random_seed_when_minus_one_and_consecutive_seeds(sd1_model):
    r = generate(sd1_model, req(seed=-1, batch_size=2, batch_count=2))
    s = r.seeds[0]
    assert 0 <= s <= txt2img.MAX_SEED
    assert r.seeds == [s, s + 1, s + 2, s + 3]
    assert len(r.images) == 4 and len(r.infotexts) == 4
    assert [parse_infotext(t)["Seed"] for t in r.infotexts] == r.seeds


def test_pngs_saved_with_a1111_names_and_infotext(sd1_model, tmp_path):
    r = generate(sd1_model, req(seed=5, batch_size=2, save_images=True, clip_skip=2), outputs_dir=tmp_path)
    folder = r.saved_paths[0].parent
    assert folder.parent == tmp_path / "txt2img-images"
    assert len(folder.name) == 10 and folder.name[4] == "-"  # YYYY-MM-DD
    assert [p.name for p in r.saved_paths] == ["00000-5.png", "00001-6.png"]
    text = read_infotext(r.saved_paths[1])
    assert text == r.infotexts[1]
    lines = text.split("\n")
    assert lines[0] == "a red circle" and lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 6, "
                               "Size: 32x32, Model: tiny-sd1, Clip skip: 2, Version: ")
    # numbering continues after the highest existing number
    (folder / "00041-123.png").write_bytes(b"")
    r2 = generate(sd1_model, req(seed=9, save_images=True), outputs_dir=tmp_path)
    assert r2.saved_paths[0].name == "00042-9.png"


def test_default_size_is_the_models(sd1_model):
    r = generate(sd1_model, req(width=None, height=None))
    assert r.images[0].size == (sd1_model.default_size, sd1_model.default_size) == (32, 32)
    r = generate(sd1_model, req(width=48, height=32))
    assert r.images[0].size == (48, 32)


@pytest.mark.parametrize("changes, field, words", [
    ({"width": 33}, "width", "multiple of 8"),
    ({"height": 100}, "height", "multiple of 8"),
    ({"width": 4096}, "width", "between"),
    ({"steps": 0}, "steps", "between 1"),
    ({"steps": -3}, "steps", "between 1"),
    ({"steps": 2.5}, "steps", "whole number"),
    ({"sampler": "Bogus"}, "sampler", "valid: DPM++ 2M, DPM++ SDE"),
    ({"scheduler": "Weird"}, "scheduler", "valid: Automatic, Uniform, Karras"),
    ({"rng": "cuda"}, "rng", "valid: CPU, GPU, NV"),
    ({"subseed_strength": 1.5}, "subseed_strength", "between 0 and 1"),
    ({"eta": float("inf")}, "eta", "number"),
    ({"seed_resize_from_w": 12}, "seed_resize_from_w", "between"),
    ({"batch_size": 0}, "batch_size", "between 1"),
    ({"batch_count": 0}, "batch_count", "between 1"),
    ({"cfg_scale": float("nan")}, "cfg_scale", "number"),
    ({"seed": -5}, "seed", "-1 (random)"),
    ({"clip_skip": 0}, "clip_skip", "between 1"),
    ({"prompt": None}, "prompt", "text"),
])
def test_bad_request_names_the_field_and_renders_nothing(sd1_model, tmp_path, changes, field, words):
    model, spy = spy_model(sd1_model)
    with pytest.raises(RequestError) as err:
        generate(model, req(save_images=True, **changes), outputs_dir=tmp_path)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ") and words in str(err.value)
    assert spy.calls == [] and list(tmp_path.iterdir()) == []
    # the model is still usable
    assert len(generate(sd1_model, req()).images) == 1


def test_interrupt_stops_and_returns_the_partial_image(sd1_model):
    calls = []

    def on_step(step, total, latents):
        calls.append((step, total, tuple(latents.shape)))
        if step == 2:
            raise GenerationInterrupted()

    r = generate(sd1_model, req(steps=6, batch_count=3), on_step=on_step)
    assert r.interrupted
    assert calls == [(1, 6, (1, 4, 16, 16)), (2, 6, (1, 4, 16, 16))]
    assert len(r.images) == 1 and r.images[0].size == (32, 32)


def test_on_step_counts_requested_steps_for_second_order_samplers(sd1_model):
    seen = []
    generate(sd1_model, req(sampler="Heun", steps=4), on_step=lambda s, t, l: seen.append((s, t)))
    assert seen[-1] == (4, 4) and all(t == 4 for _, t in seen)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)


@dataclass
class FakeEntry:
    path: Path

    def short_hash(self):
        return "0123456789ab"


class FakeLibrary:
    def __init__(self, path):
        self.entries = [FakeEntry(path)]
        self.asked = []

    def specs_for(self, tags):
        from lora_ui.lora.spec import LoraSpec

        self.asked.append([t.name for t in tags])
        specs = [LoraSpec(path=self.entries[0].path, name=t.name, te=t.te) for t in tags if t.name == "style"]
        return specs, [f"LoRA '{t.name}' not found" for t in tags if t.name != "style"]


class FakeLoras:
    def __init__(self):
        self.sets, self.steps = [], []

    def set_loras(self, specs):
        self.sets.append(list(specs))

    def on_step(self, step, total):
        self.steps.append((step, total))


def test_lora_tags_go_library_to_manager_and_are_removed_before_encoding(sd1_model, tmp_path):
    lib, loras = FakeLibrary(tmp_path / "style.safetensors"), FakeLoras()
    r = generate(sd1_model, req(prompt="a red circle <lora:style:0.7> <lora:missing:1>"), library=lib, loras=loras)
    plain = generate(sd1_model, req(prompt="a red circle  "))
    assert lib.asked == [["style", "missing"]]
    assert [[(s.name, s.te) for s in specs] for specs in loras.sets] == [[("style", 0.7)]]
    assert [s.name for s in r.loras] == ["style"]
    assert "LoRA 'missing' not found" in r.warnings
    assert loras.steps == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert np.array_equal(px(r.images[0]), px(plain.images[0]))  # the tags are not encoded
    info = parse_infotext(r.infotexts[0])
    assert info["Prompt"] == "a red circle <lora:style:0.7> <lora:missing:1>"
    assert 'Lora hashes: "style: 0123456789ab"' in r.infotexts[0]


def test_lora_hashes_left_out_of_infotext_when_switched_off(sd1_model, tmp_path):
    lib, loras = FakeLibrary(tmp_path / "style.safetensors"), FakeLoras()
    r = generate(sd1_model, req(prompt="a red circle <lora:style:0.7>", add_lora_hashes=False), library=lib, loras=loras)
    assert "Lora hashes" not in r.infotexts[0]
    assert "<lora:style:0.7>" in r.infotexts[0]  # the tag itself stays in the prompt, as in A1111


def test_no_tags_clears_loras(sd1_model):
    loras = FakeLoras()
    generate(sd1_model, req(), library=None, loras=loras)
    assert loras.sets == [[]]


def test_sdxl_renders_reproducibly(sdxl_model):
    a = generate(sdxl_model, req(sampler="DPM++ 2M", negative_prompt=""))
    b = generate(sdxl_model, req(sampler="DPM++ 2M", negative_prompt=""))
    assert a.images[0].size == (32, 32)
    assert np.array_equal(px(a.images[0]), px(b.images[0]))


BATCH_INDEPENDENT = [s for s in __import__("lora_ui.engine.sampling.registry", fromlist=["x"]).SAMPLER_NAMES
                     if s != "DPM adaptive"]  # its step sizes are chosen for the whole batch (as in A1111)


@pytest.mark.parametrize("sampler", BATCH_INDEPENDENT)
def test_a_batch_of_four_equals_four_single_images_for_every_sampler(sd1_model, sampler):
    """Per-image generators and Brownian trees: image i of a batch is the image of seed+i alone. The UNet
    itself may round a row differently at another batch size (CPU kernels pick blocking by shape), so the
    bound is one level of the uint8 output, and most pixels must be exactly equal."""
    batch = generate(sd1_model, req(sampler=sampler, seed=500, batch_size=4, steps=4))
    for i in range(4):
        alone = generate(sd1_model, req(sampler=sampler, seed=500 + i, steps=4))
        a, b = px(batch.images[i]), px(alone.images[0])
        assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.99, f"{sampler}: image {i}"
        assert batch.infotexts[i] == alone.infotexts[0]
    assert not np.array_equal(px(batch.images[0]), px(batch.images[1]))
