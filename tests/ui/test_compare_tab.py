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
from tests.compare_fixtures import InterruptingWorker, pipe, rig, tiny_lora_files  # noqa: F401 (fixtures)
from tests.test_compare_support import IMAGE_SIZE, STEPS, Context, make_rig

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

SETTINGS = dict(sampler="Euler", schedule="Automatic", steps=STEPS, cfg=7, width=IMAGE_SIZE, height=IMAGE_SIZE)


@pytest.fixture(scope="module")
def lora_files(pipe, tmp_path_factory):
    return tiny_lora_files(pipe, tmp_path_factory, styleA=1, charB=2)


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


def test_an_interrupted_sweep_shows_its_partial_grid_with_a_notice(tmp_path, monkeypatch):
    worker = InterruptingWorker(stop_after=9)
    handlers = CompareHandlers(Context(worker=worker, library=None), poll_seconds=0.01, grids_dir=tmp_path / "grids")
    said = []
    monkeypatch.setattr("lora_ui.ui.compare_tab.notify.info", said.append)
    outputs = list(handlers.sweep("cube", "", ["a", "b", "c"], "0.2, 0.4, 0.6, 0.8, 1", **{**SETTINGS, "seed": 5}))
    progress, grid_path, file_path, caption = outputs[-1]
    assert progress == "" and grid_path == file_path and grid_path.startswith(str(tmp_path / "grids"))
    assert "Interrupted after 9 of 15 cells" in caption and "9 renders" in caption
    assert said == ["Sweep interrupted after 9 of 15 cells: showing the cells done."]
    with Image.open(grid_path) as grid:  # the whole 3 x 5 grid, the cells not rendered included
        assert grid.width > 5 * 24 and grid.height > 3 * 24
        assert 'X Values: "0.2, 0.4, 0.6, 0.8, 1"' in grid.info["parameters"]


def test_a_complete_sweep_caption_has_no_interrupt_notice(tmp_path):
    handlers = CompareHandlers(Context(worker=InterruptingWorker(stop_after=99), library=None), poll_seconds=0.01,
                               grids_dir=tmp_path)
    caption = list(handlers.sweep("cube", "", ["a"], "0.5, 1", **{**SETTINGS, "seed": 5}))[-1][3]
    assert "Interrupted" not in caption and "2 renders" in caption


@pytest.mark.parametrize("stop_after", [0, 1])
def test_an_interrupted_comparison_warns_and_shows_nothing(tmp_path, stop_after):
    handlers = CompareHandlers(Context(worker=InterruptingWorker(stop_after=stop_after), library=None),
                               poll_seconds=0.01, grids_dir=tmp_path)
    with pytest.warns(UserWarning, match="Comparison failed: Rendering was interrupted.*nothing is shown"):
        outputs = run_compare(handlers, loras=("a",))
    assert outputs[-1] == ("", *[{"__type__": "update"}] * 5)


def test_a_sweep_interrupted_before_any_lora_cell_warns(tmp_path):
    handlers = CompareHandlers(Context(worker=InterruptingWorker(stop_after=1), library=None), poll_seconds=0.01,
                               grids_dir=tmp_path)
    with pytest.warns(UserWarning, match="Sweep failed: .*before any LoRA cell"):
        outputs = list(handlers.sweep("cube", "", ["a"], "0, 1", **{**SETTINGS, "seed": 5}))
    assert outputs[-1] == ("", *[{"__type__": "update"}] * 3)
    assert not list(tmp_path.iterdir())  # no grid file written


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


def test_inspector_charts_the_picked_lora_chosen_in_its_dropdown(rig):
    h = InspectorHandlers(Context(worker=rig.worker, library=rig.library))
    first_frame, first_summary = h.inspect(["styleA", "charB"], None)   # default: the first picked
    frame, summary = h.inspect(["styleA", "charB"], "charB")
    assert first_summary.startswith("**styleA**") and summary.startswith("**charB**")
    assert list(frame["block"]) == list(first_frame["block"])
    assert not np.allclose(frame["size"], first_frame["size"])  # another LoRA, other numbers


def test_inspector_dropdown_offers_only_the_picked_loras():
    which = InspectorHandlers.which_choices
    assert which(["styleA", "charB"], None) == {"__type__": "update", "choices": ["styleA", "charB"], "value": "styleA"}
    assert which(["styleA", "charB"], "charB")["value"] == "charB"           # a still-picked choice stays
    assert which(["charB"], "styleA") == {"__type__": "update", "choices": ["charB"], "value": "charB"}
    assert which([], "styleA") == {"__type__": "update", "choices": [], "value": None}
    assert which("styleA", "")["choices"] == ["styleA"]


def test_inspector_refuses_a_lora_that_is_not_picked(rig):
    h = InspectorHandlers(Context(worker=rig.worker, library=rig.library))
    with pytest.warns(UserWarning, match="Not inspected: 'charB' is not one of the picked LoRAs \\('styleA'\\)"):
        frame, summary = h.inspect(["styleA"], "charB")
    assert frame == summary == {"__type__": "update"}


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
    # The inspector charts one of the picked LoRAs, chosen in its own dropdown (empty until one is picked).
    assert tab.inspector.lora is tab.lora and tab.inspector.which is not None
    assert tab.inspector.which.choices == [] and tab.inspector.which.value is None


def test_a_stopped_worker_gives_a_warning_not_a_traceback(pipe, lora_files, tmp_path):
    rig = make_rig(pipe, lora_files)
    rig.close()
    handlers = CompareHandlers(Context(worker=rig.worker, library=rig.library), poll_seconds=0.01, grids_dir=tmp_path)
    with pytest.warns(UserWarning, match="Not compared: .*shut down"):
        outputs = run_compare(handlers)
    assert len(outputs) == 1
