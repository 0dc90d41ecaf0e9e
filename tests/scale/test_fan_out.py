"""Sweeps and X/Y/Z plots fan their cells out through `Worker.fan_out` (what --ray wires to the Ray replicas;
here a stand-in that renders on a second copy of the tiny model, in another order): the grid is the one the
worker draws alone, every distinct cell is rendered once, and an interrupt stops taking cells and closes
the fan-out (which cancels what is still pending)."""
from __future__ import annotations

import numpy as np
import pytest

from lora_ui import compare
from lora_ui.engine.txt2img import Txt2ImgRequest, generate
from lora_ui.engine.worker import Worker
from lora_ui.library import LoraLibrary
from lora_ui.lora.manager import LoraManager
from tests.scale.mixed_fixtures import tiny_model_with_loras

REQUEST = dict(weights=(0.0, 0.5, 1.0), loras=("a", "b"))


def lowmem(pipe):
    return LoraManager(pipe, mode="lowmem", keep_shadows_seconds=0)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    model, _ = tiny_model_with_loras(folder)
    other, _ = tiny_model_with_loras(tmp_path_factory.mktemp("unused"))  # the "replica": same weights
    library = LoraLibrary([folder], cache_dir=None)
    library.refresh()
    manager = lowmem(other.pipe)
    yield model, other, library, manager
    manager.close()
    library.close()


def base() -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt="a boat", sampler="Euler a", steps=3, cfg_scale=5.0, width=32, height=32,
                          seed=901, save_images=False)


class StandIn:
    """fan_out(requests): renders them on `other` in reverse order, yielding (index, result)."""

    def __init__(self, other, library, manager, interrupt_after: int | None = None, worker=None):
        self.other, self.library, self.manager = other, library, manager
        self.interrupt_after, self.worker = interrupt_after, worker
        self.batches: list[list[str]] = []
        self.yielded = 0
        self.closed = False

    def __call__(self, requests):
        self.batches.append([r.prompt for r in requests])
        return self._results(requests)

    def _results(self, requests):
        try:
            for index in reversed(range(len(requests))):
                if self.interrupt_after is not None and self.yielded == self.interrupt_after:
                    self.worker.interrupt()
                self.yielded += 1
                yield index, generate(self.other, requests[index], library=self.library, loras=self.manager)
        finally:
            self.closed = True


def sweep_on(model, library, fan_out=None):
    worker = Worker(model, library=library, lora_manager_factory=lowmem, fan_out=fan_out)
    if isinstance(fan_out, StandIn):
        fan_out.worker = worker
    try:
        return compare.sweep(worker, compare.SweepRequest(base=base(), **REQUEST))
    finally:
        worker.shutdown()


def test_a_fanned_out_sweep_equals_the_local_sweep_with_each_cell_rendered_once(parts):
    model, other, library, manager = parts
    stand_in = StandIn(other, library, manager)
    fanned = sweep_on(model, library, stand_in)
    alone = sweep_on(model, library)
    assert len(stand_in.batches) == 1
    assert sorted(p.strip() for p in stand_in.batches[0]) == sorted(["a boat", "a boat <lora:a:0.5>", "a boat <lora:a:1>",
                                                  "a boat <lora:b:0.5>", "a boat <lora:b:1>"])
    assert np.array_equal(np.asarray(fanned.grid), np.asarray(alone.grid))
    assert fanned.renders == alone.renders == 5 and not fanned.interrupted and stand_in.closed


def test_an_interrupt_stops_taking_cells_and_closes_the_fan_out(parts):
    model, other, library, manager = parts
    stand_in = StandIn(other, library, manager, interrupt_after=2)
    partial = sweep_on(model, library, stand_in)
    assert partial.interrupted and stand_in.closed
    assert stand_in.yielded == 3          # the third result came back after the interrupt and was not taken
    assert partial.renders == 2 and len(partial.missing) == 4  # 6 cells (the baseline twice), 2 LoRA cells taken
