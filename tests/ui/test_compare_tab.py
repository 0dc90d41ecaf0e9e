"""Compare-tab and inspector handlers, called directly (no browser), on the tiny SD1 pipeline through
the real Worker, txt2img and LoraManager (see tests/test_compare_support.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lora_ui import compare as cmp
from lora_ui.ui.compare_tab import CompareHandlers, build_compare_tab, picked_names
from lora_ui.ui.inspector import InspectorHandlers
from lora_ui.testing.tiny_models import tiny_sd1_pipeline
from tests.test_compare_support import IMAGE_SIZE, STEPS, Context, make_rig, write_tiny_lora

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

SETTINGS = dict(sampler="Euler", schedule="Automatic", steps=STEPS, cfg=7, width=IMAGE_SIZE, height=IMAGE_SIZE)


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd1_pipeline(seed=0)


@pytest.fixture(scope="module")
def lora_files(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return {"styleA": write_tiny_lora(pipe, folder / "styleA.safetensors", seed=1),
            "charB": write_tiny_lora(pipe, folder / "charB.safetensors", seed=2)}


@pytest.fixture
def rig(pipe, lora_files):
    rig = make_rig(pipe, lora_files)
    yield rig
    rig.close()


@pytest.fixture
def handlers(rig, tmp_path):
    return CompareHandlers(Context(worker=rig.worker, library=rig.library), poll_seconds=0.01,
                           grids_dir=tmp_path / "grids")


def run_compare(handlers, prompt="a red cube", loras=("styleA",), weight=1.0, seed=77, **settings):
    return list(handlers.compare(prompt, "", list(loras), weight, **{**SETTINGS, **settings, "seed": seed}))


def test_picked_names_accepts_every_dropdown_value():
    assert picked_names(None) == [] and picked_names("") == []
    assert picked_names("styleA") == ["styleA"]
    assert picked_names(["styleA", " ", "charB "]) == ["styleA", "charB"]


def test_compare_handler_shows_both_sides_the_heatmap_and_the_numbers(handlers, rig):
    outputs = run_compare(handlers, seed=77)
    progress, slider, without, with_lora, heatmap, numbers = outputs[-1]
    assert progress == ""
    assert slider == (without, with_lora)
    assert isinstance(without, Image.Image) and without.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert not np.array_equal(np.asarray(without), np.asarray(with_lora))
    assert heatmap.height >= 256
    # The numbers shown are the ones of these two images.
    stats, _ = cmp.difference_stats(without, with_lora)
    assert f"{stats.mean_abs_diff:.2f} / 255" in numbers and f"{100 * stats.changed_share:.1f}%" in numbers
    assert "**Seed:** 77" in numbers and "<lora:styleA:1>" in numbers
    # Both renders used the widgets' settings and one seed.
    assert [(r.seed, r.steps, r.width, r.sampler) for r in rig.requests] == [(77, STEPS, IMAGE_SIZE, "Euler")] * 2
    assert all(r.save_images is False and r.batch_size == 1 for r in rig.requests)


def test_compare_handler_yields_progress_while_the_worker_renders(handlers, rig):
    outputs = run_compare(handlers, steps=20)
    bars = [values[0] for values in outputs[:-1]]
    assert bars, "no progress was shown while rendering"
    assert any("Step" in bar for bar in bars)
    assert all(values[1:] == tuple([values[1]] * 5) for values in outputs[:-1])  # only the bar changes


@pytest.mark.parametrize("loras, weight, seed, warning", [
    ((), 1.0, 1, "Nothing to compare"),
    (("nosuch",), 1.0, 1, "Unknown LoRA 'nosuch'"),
    (("styleA",), float("nan"), 1, "finite"),
    (("styleA",), 1.0, "abc", "seed"),
])
def test_compare_handler_warns_on_bad_input_and_renders_nothing(handlers, rig, loras, weight, seed, warning):
    with pytest.warns(UserWarning, match=f"Not compared: .*{warning}"):
        outputs = run_compare(handlers, loras=loras, weight=weight, seed=seed)
    assert len(outputs) == 1 and outputs[0][0] == ""
    assert rig.requests == []


def test_sweep_handler_saves_a_grid_png_with_infotext(handlers, rig, tmp_path):
    outputs = list(handlers.sweep("a red cube", "", ["styleA", "charB"], "0, 0.5, 1", **{**SETTINGS, "seed": 5}))
    progress, grid_path, file_path, caption = outputs[-1]
    assert progress == "" and grid_path == file_path
    assert grid_path.startswith(str(tmp_path / "grids"))
    with Image.open(grid_path) as grid:
        assert 'X Values: "0, 0.5, 1"' in grid.info["parameters"]
        assert grid.width > 3 * IMAGE_SIZE and grid.height > 2 * IMAGE_SIZE
    assert len(rig.requests) == 5 and "5 renders" in caption


@pytest.mark.parametrize("loras, weights, warning", [
    (["styleA"], "0, x", "'x' \\(item 2"),
    (["styleA"], "", "empty"),
    ([], "0, 1", "Nothing to sweep"),
    (["ghost"], "0, 1", "Unknown LoRA 'ghost'"),
])
def test_sweep_handler_warns_on_bad_input(handlers, rig, loras, weights, warning):
    with pytest.warns(UserWarning, match=f"No sweep: .*{warning}"):
        outputs = list(handlers.sweep("cube", "", loras, weights, **{**SETTINGS, "seed": 1}))
    assert len(outputs) == 1 and rig.requests == []


def test_interrupt_with_nothing_running_says_so(handlers, monkeypatch):
    said = []
    monkeypatch.setattr("lora_ui.ui.compare_tab.notify.info", said.append)
    handlers.interrupt()
    assert said == ["Nothing is being rendered."]


def test_inspector_handler_charts_blocks_in_model_order(rig):
    frame, summary = InspectorHandlers(Context(worker=rig.worker, library=rig.library)).inspect(["styleA", "charB"])
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["block", "part", "size"]
    assert list(frame["block"]) == ["down_0", "down_1", "down_2", "mid", "up_1", "up_2", "up_3"]
    assert set(frame["part"]) == {"down", "mid", "up"} and (frame["size"] > 0).all()
    assert summary.startswith("**styleA**") and "Weight change by part" in summary


def test_inspector_handler_warns_for_an_unknown_lora(rig):
    with pytest.warns(UserWarning, match="Not inspected: Unknown LoRA 'ghost'"):
        frame, summary = InspectorHandlers(Context(worker=rig.worker, library=rig.library)).inspect("ghost")
    assert frame == summary == {"__type__": "update"}


def test_the_tab_builds_with_the_components_send_to_compare_needs(rig):
    import gradio as gr

    ctx = Context(worker=rig.worker, library=rig.library)
    with gr.Blocks():
        tab = build_compare_tab(ctx)
    assert tab.lora.multiselect and sorted(tab.lora.choices) == [("charB", "charB"), ("styleA", "styleA")]
    assert (tab.weight.minimum, tab.weight.maximum, tab.weight.step) == (-2, 2, 0.05)
    assert tab.sweep_weights.value == "0, 0.25, 0.5, 0.75, 1"
    assert tab.slider.format == "png" and tab.seed.value == -1


def test_a_stopped_worker_gives_a_warning_not_a_traceback(pipe, lora_files, tmp_path):
    rig = make_rig(pipe, lora_files)
    rig.close()
    handlers = CompareHandlers(Context(worker=rig.worker, library=rig.library), poll_seconds=0.01, grids_dir=tmp_path)
    with pytest.warns(UserWarning, match="Not compared: .*shut down"):
        outputs = run_compare(handlers)
    assert len(outputs) == 1
