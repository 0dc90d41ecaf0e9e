"""Mixed-LoRA batches end to end on the tiny SD1 model: every request of one batch gets the pixels it
gets rendered alone (low-memory LoraManager, bit for bit), within rounding of fast mode; per-request
interrupt; sub-batches for different conditioning lengths."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lora_ui.engine.batching import BatchItem, batch_key, render_batch
from lora_ui.engine.txt2img import GenerationInterrupted, Txt2ImgRequest
from lora_ui.lora.manager import LoraManager
from tests.lora.files import assert_same_state, snapshot
from tests.scale.mixed_fixtures import tiny_model_with_loras, four_sets


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    model, paths = tiny_model_with_loras(tmp_path_factory.mktemp("loras"))
    manager = LoraManager(model.pipe, mode="lowmem", keep_shadows_seconds=0)
    yield model, paths, manager
    manager.close()


PROMPTS = ["a red cat", "a blue house AND a dog:0.6", "[a tree:a boat:2] at night", "a plain field", "two birds"]


def _items(paths, sampler="Euler a", steps=4):
    sets = four_sets(paths)
    items = []
    for k, specs in enumerate(sets):
        req = Txt2ImgRequest(prompt=PROMPTS[k], negative_prompt="blurry" if k % 2 else "", sampler=sampler,
                             steps=steps, cfg_scale=6.0, width=32, height=32, seed=100 + 7 * k,
                             batch_size=2 if k == 1 else 1, save_images=False)
        items.append(BatchItem(req, specs))
    return items


def _pixels(result):
    return np.stack([np.asarray(im) for im in result.images])


def _alone(model, manager, item, mode="lowmem"):
    manager.mode = mode
    try:
        (result,) = render_batch(model, [replace(item)], manager=manager, mixed=False)
    finally:
        manager.clear()
        manager.mode = "lowmem"
    return result


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE", "DDIM"])
def test_mixed_batch_equals_each_request_alone(world, sampler):
    model, paths, manager = world
    items = _items(paths, sampler)
    assert len({batch_key(model, it.req) for it in items}) == 1
    before = snapshot(model.pipe)
    mixed = render_batch(model, items, manager=manager, mixed=True)
    assert_same_state(model.pipe, before)
    for k, item in enumerate(items):
        alone = _alone(model, manager, item)
        assert mixed[k].seeds == alone.seeds and len(mixed[k].images) == item.req.batch_size
        assert np.array_equal(_pixels(mixed[k]), _pixels(alone)), f"request {k} differs from its solo render"
        assert mixed[k].infotexts == alone.infotexts
        fast = _alone(model, manager, item, mode="fast")
        assert np.abs(_pixels(mixed[k]).astype(int) - _pixels(fast).astype(int)).max() <= 2
    # the LoRA sets make a difference: request 0 without its LoRA is another image
    plain = _alone(model, manager, replace(items[0], specs=[]))
    assert np.abs(_pixels(plain).astype(int) - _pixels(mixed[0]).astype(int)).max() > 5


def test_interrupting_one_request_keeps_the_others(world):
    model, paths, manager = world
    items = _items(paths)[:3]
    reference = render_batch(model, [replace(it) for it in items], manager=manager, mixed=True)
    seen = []

    def stop_at_2(done, total, latents):
        seen.append((done, total, tuple(latents.shape)))
        if done == 2:
            raise GenerationInterrupted("interrupted")

    items[1] = replace(items[1], on_step=stop_at_2)
    out = render_batch(model, items, manager=manager, mixed=True)
    assert out[1].interrupted and not out[0].interrupted and not out[2].interrupted
    assert seen == [(1, 4, (2, 4, 16, 16)), (2, 4, (2, 4, 16, 16))]
    assert np.array_equal(_pixels(out[0]), _pixels(reference[0]))
    assert np.array_equal(_pixels(out[2]), _pixels(reference[2]))
    assert not np.array_equal(_pixels(out[1]), _pixels(reference[1]))


def test_long_prompt_samples_in_its_own_sub_batch_and_still_matches(world):
    model, paths, manager = world
    items = _items(paths)[:3]
    items[2] = replace(items[2], req=replace(items[2].req, prompt="a cat, " * 40))  # two 75-token chunks
    mixed = render_batch(model, items, manager=manager, mixed=True)
    for k in (0, 2):
        assert np.array_equal(_pixels(mixed[k]), _pixels(_alone(model, manager, items[k])))


def test_not_batchable_keys(world):
    model, paths, manager = world
    base = Txt2ImgRequest(prompt="x", width=32, height=32, steps=3)
    assert batch_key(model, base) == batch_key(model, replace(base, seed=5, prompt="y", clip_skip=2))
    assert batch_key(model, base) != batch_key(model, replace(base, steps=4))
    assert batch_key(model, replace(base, sampler="DPM adaptive")) is None
    assert batch_key(model, replace(base, batch_count=2)) is None
    assert batch_key(model, replace(base, width=33)) is None


def test_a_request_alone_in_a_batch_equals_plain_txt2img(world):
    """One pipeline: render_batch builds on txt2img's denoiser, RNG, sampler and decode, so a request
    rendered through it equals txt2img.generate's image, infotext included."""
    from lora_ui.engine.txt2img import generate

    model, paths, manager = world
    item = _items(paths, "DPM++ 2M")[1]  # two images, an AND prompt, a negative prompt
    batched = _alone(model, manager, item)

    class ItsLoras:  # txt2img resolves tags through a library; this request carries resolved specs
        def set_loras(self, _specs):
            manager.set_loras(item.specs)

        def on_step(self, step, total):
            manager.on_step(step, total)

    try:
        plain = generate(model, replace(item.req), loras=ItsLoras())
    finally:
        manager.clear()
    assert np.array_equal(_pixels(batched), _pixels(plain))
    assert batched.infotexts == plain.infotexts and batched.seeds == plain.seeds
