"""Core compare / sweep: weight lists, difference numbers, heatmap, grids, and real renders through the
tiny SD1 pipeline with a generated kohya LoRA, through the real Worker and txt2img (see test_compare_support)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lora_ui import compare as cmp
from tests.compare_fixtures import (InterruptingWorker, pipe, prompt_colour, rig,  # noqa: F401 (fixtures)
                                    tiny_lora_files)
from tests.test_compare_support import Context, make_rig, tiny_request

SEED = 1234


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lora_files(pipe, tmp_path_factory):
    return tiny_lora_files(pipe, tmp_path_factory, styleA=1, charB=2, x3=3)


@pytest.fixture
def ctx(rig):
    return Context(worker=rig.worker, library=rig.library)


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def independent_stats(a: np.ndarray, b: np.ndarray, threshold: int) -> tuple[float, float, int]:
    """Mean |a-b| over pixels x channels, share of pixels with some channel moving > threshold, max."""
    height, width, _ = a.shape
    total, changed, largest = 0, 0, 0
    for y in range(height):
        for x in range(width):
            diffs = [abs(int(a[y, x, c]) - int(b[y, x, c])) for c in range(3)]
            total += sum(diffs)
            changed += max(diffs) > threshold
            largest = max(largest, max(diffs))
    return total / (height * width * 3), changed / (height * width), largest


# ------------------------------------------------------------------------------------ weight lists


@pytest.mark.parametrize("text, expected", [
    ("0, 0.25, 0.5, 0.75, 1", [0, 0.25, 0.5, 0.75, 1]),
    (" -1 ,1.5,.5 ", [-1, 1.5, 0.5]),
    ("0-1 (+0.25)", [0, 0.25, 0.5, 0.75, 1]),
    ("1-0 (-0.5)", [1, 0.5, 0]),
    ("0-1 [3], 2", [0, 0.5, 1, 2]),
    ("-1-1 [5]", [-1, -0.5, 0, 0.5, 1]),
])
def test_parse_weight_list_accepts_numbers_and_a1111_ranges(text, expected):
    assert cmp.parse_weight_list(text) == pytest.approx(expected)


@pytest.mark.parametrize("text, named", [
    ("", "empty"),
    ("   ", "empty"),
    ("0, abc, 1", "'abc' (item 2"),
    ("0,,1", "Item 2"),
    ("0-1 (+0)", "'0-1 (+0)'"),
    ("0-1 (-0.25)", "never reaches"),
    ("0-1 [1]", "at least 2"),
    ("0-10 [40]", "at most 32"),
    ("nan", "'nan'"),
])
def test_parse_weight_list_rejects_bad_text_naming_the_problem(text, named):
    with pytest.raises(cmp.CompareError, match=None) as info:
        cmp.parse_weight_list(text)
    assert named in str(info.value)


# ------------------------------------------------------------------------------ difference numbers


def test_difference_stats_match_an_independent_computation():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    b = a.copy()
    b[2:5, 1:4] = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    b[0, 0, 1] = np.uint8(min(255, int(a[0, 0, 1]) + 2))  # exactly at the threshold: not "changed"
    stats, pixel_diff = cmp.difference_stats(Image.fromarray(a), Image.fromarray(b), threshold=2)
    mean, share, largest = independent_stats(a, b, threshold=2)
    assert stats.mean_abs_diff == pytest.approx(mean, rel=1e-12)
    assert stats.changed_share == pytest.approx(share, rel=1e-12)
    assert stats.max_abs_diff == largest
    assert pixel_diff.shape == (9, 7)
    assert int(pixel_diff[0, 0]) == abs(int(a[0, 0, 1]) - int(b[0, 0, 1]))


def test_identical_images_have_zero_difference():
    image = Image.new("RGB", (5, 4), (10, 200, 30))
    stats, pixel_diff = cmp.difference_stats(image, image.copy())
    assert (stats.mean_abs_diff, stats.changed_share, stats.max_abs_diff) == (0.0, 0.0, 0)
    assert not pixel_diff.any()


def test_difference_stats_refuse_size_mismatch_and_bad_threshold():
    with pytest.raises(cmp.CompareError, match="differ in size"):
        cmp.difference_stats(Image.new("RGB", (4, 4)), Image.new("RGB", (4, 5)))
    with pytest.raises(cmp.CompareError, match="threshold"):
        cmp.difference_stats(Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4)), threshold=300)


def test_colour_scale_runs_from_black_to_pale_yellow_through_its_stops():
    values = np.array([0.0, 25.0, 50.0, 100.0])
    colours = cmp.colorize(values, full_scale=100.0)
    assert colours.tolist() == [[0, 0, 0], [87, 16, 110], [188, 55, 84], [252, 255, 164]]
    # Halfway between the first two stops is their average colour.
    assert cmp.colorize(np.array([12.5]), 100.0).tolist() == [[44, 8, 55]]


def test_heatmap_is_enlarged_and_carries_its_colour_scale():
    pixel_diff = np.zeros((32, 32), dtype=np.uint8)
    pixel_diff[3, 5] = 40  # the largest difference -> top of the scale
    heat = cmp.heatmap_image(pixel_diff, min_side=256)
    arr = as_array(heat)
    assert heat.height == 256 and heat.width > 256  # 8x enlarged, plus the scale on the right
    assert arr[3 * 8 + 4, 5 * 8 + 4].tolist() == [252, 255, 164]
    assert arr[100, 100].tolist() == [0, 0, 0]
    bar_x = 256 + 8 + 9  # middle of the bar
    assert arr[0, bar_x].tolist() == [252, 255, 164]
    assert arr[255, bar_x].tolist() == [0, 0, 0]
    label_area = arr[:, 256 + 8 + 18 + 8:]
    assert (label_area < 100).all(axis=2).any(), "the scale has no value labels"


# ------------------------------------------------------------------------------------------- grids


def test_grid_places_cells_pixel_exact_under_their_labels():
    rng = np.random.default_rng(1)
    cells = [[Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)) for _ in range(3)] for _ in range(2)]
    grid, layout = cmp.make_grid(cells, ["0", "0.5", "1"], ["styleA", "charB"])
    assert grid.size == layout.size == (layout.left + 3 * 30, layout.top + 2 * 20)
    assert layout.left > 0 and layout.top > 0
    for r in range(2):
        for c in range(3):
            assert np.array_equal(as_array(grid.crop(layout.cell_box(r, c))), as_array(cells[r][c]))
    arr = as_array(grid)
    for c in range(3):  # some dark text above every column
        x0, _, x1, _ = layout.cell_box(0, c)
        assert (arr[: layout.top, x0:x1] < 100).all(axis=2).any()
    for r in range(2):  # and left of every row
        _, y0, _, y1 = layout.cell_box(r, 0)
        assert (arr[y0:y1, : layout.left] < 100).all(axis=2).any()


def test_grid_refuses_mixed_sizes_and_mismatched_labels():
    a, b = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 9))
    with pytest.raises(cmp.CompareError, match="same size"):
        cmp.make_grid([[a, b]], ["0", "1"], ["x"])
    with pytest.raises(cmp.CompareError, match="labels"):
        cmp.make_grid([[a, a]], ["0"], ["x"])


def test_sweep_infotext_appends_xy_fields_a1111_style():
    text = cmp.sweep_infotext("a cat <lora:styleA:1>\nSteps: 3, Seed: 5", [0, 0.5, 1], ["styleA", "charB"])
    assert text == ('a cat <lora:styleA:1>\nSteps: 3, Seed: 5, Script: X/Y/Z plot, X Type: LoRA weight, '
                    'X Values: "0, 0.5, 1", Y Type: LoRA, Y Values: "styleA, charB"')


# ----------------------------------------------------------------------------------- real renders


def test_compare_without_side_equals_plain_txt2img_and_with_side_differs(ctx, rig):
    request = cmp.CompareRequest(base=tiny_request(prompt="a red cube, sunny", seed=SEED), loras=[("styleA", 1.0)])
    result = cmp.compare(ctx, request)

    plain = rig.worker.txt2img(tiny_request(prompt="a red cube, sunny", seed=SEED)).result().images[0]
    assert np.array_equal(as_array(result.without), as_array(plain))
    assert not np.array_equal(as_array(result.with_lora), as_array(result.without))
    assert result.seed == SEED
    assert result.with_prompt == "a red cube, sunny <lora:styleA:1>"
    rendered = rig.requests[:2]
    assert [r.seed for r in rendered] == [SEED, SEED]
    assert "<lora" not in rendered[0].prompt and "<lora:styleA:1>" in rendered[1].prompt
    assert (rendered[0].steps, rendered[0].cfg_scale) == (rendered[1].steps, rendered[1].cfg_scale)

    mean, share, largest = independent_stats(as_array(result.without), as_array(result.with_lora), result.stats.threshold)
    assert result.stats.mean_abs_diff == pytest.approx(mean, rel=1e-12)
    assert result.stats.changed_share == pytest.approx(share, rel=1e-12)
    assert result.stats.max_abs_diff == largest > 0
    assert result.heatmap.height >= 256
    assert "styleA" in result.with_infotext


def test_compare_at_weight_zero_equals_the_baseline(ctx, rig):
    request = cmp.CompareRequest(base=tiny_request(prompt="a red cube", seed=SEED), loras=[("styleA", 0.0)])
    result = cmp.compare(ctx, request)
    assert "<lora:styleA:0>" in rig.requests[1].prompt  # the LoRA side really rendered the tag
    assert np.array_equal(as_array(result.with_lora), as_array(result.without))
    assert (result.stats.mean_abs_diff, result.stats.changed_share) == (0.0, 0.0)


def test_compare_uses_the_prompt_tags_when_no_lora_is_picked_and_fixes_a_random_seed(ctx, rig):
    request = cmp.CompareRequest(base=tiny_request(prompt="a cube, <lora:charB:0.8>, blue", seed=-1))
    result = cmp.compare(ctx, request)
    first, second = rig.requests
    assert first.seed == second.seed == result.seed >= 0
    assert second.prompt == "a cube, <lora:charB:0.8>, blue"
    assert first.prompt == "a cube, , blue"  # exactly the text the LoRA side encodes
    assert result.stats.max_abs_diff > 0


def test_compare_reports_progress(ctx):
    calls = []
    cmp.compare(ctx, cmp.CompareRequest(base=tiny_request(prompt="x", seed=1), loras=[("styleA", 1)]),
                on_progress=lambda done, total, what: calls.append((done, total)))
    assert calls == [(0, 2), (1, 2), (2, 2)]


@pytest.mark.parametrize("loras, prompt, message", [
    ([], "a cube", "Nothing to compare"),
    ([("nosuch", 1.0)], "a cube", "Unknown LoRA 'nosuch'"),
    ([], "a cube <lora:ghost:1>", "Unknown LoRA 'ghost'"),
    ([("styleA", float("nan"))], "a cube", "finite"),
    ([("  ", 1.0)], "a cube", "empty name"),
    ([("bad:name", 1.0)], "a cube", "Cannot write a tag"),
])
def test_compare_refuses_bad_input_before_rendering(ctx, rig, loras, prompt, message):
    with pytest.raises(cmp.CompareError) as info:
        cmp.compare(ctx, cmp.CompareRequest(base=tiny_request(prompt=prompt, seed=1), loras=loras))
    assert message in str(info.value)
    assert rig.requests == []


def test_compare_without_a_library_relies_on_what_the_worker_applied(pipe, lora_files):
    rig = make_rig(pipe, lora_files, with_library=False)
    try:
        with pytest.raises(cmp.CompareError, match="applied no LoRA.*no LoRA library is configured"):
            cmp.compare(rig.worker, cmp.CompareRequest(base=tiny_request(prompt="cube", seed=1), loras=[("styleA", 1)]))
        assert len(rig.requests) == 2
        # The failed job left the worker usable.
        assert rig.worker.txt2img(tiny_request(prompt="cube", seed=1)).result().images
    finally:
        rig.close()


def test_an_interrupted_comparison_shows_nothing(ctx, rig):
    def interrupt_before_the_lora_side(done, total, what):
        if done == 1:
            rig.worker.interrupt()

    with pytest.raises(cmp.CompareError, match="interrupted"):
        cmp.compare(ctx, cmp.CompareRequest(base=tiny_request(prompt="cube", seed=1), loras=[("styleA", 1)]),
                    on_progress=interrupt_before_the_lora_side)
    assert len(rig.requests) == 2


def test_comparison_is_one_worker_job_counting_its_renders(ctx, rig):
    seen = []
    cmp.compare(ctx, cmp.CompareRequest(base=tiny_request(prompt="cube", seed=1), loras=[("styleA", 1)]),
                on_progress=lambda done, total, what: seen.append(rig.worker.progress(with_preview=False)))
    assert {(state.job, state.job_count) for state in seen} == {("compare", 2)}
    assert len({state.job_id for state in seen}) == 1


def test_sweep_renders_the_baseline_once_and_builds_a_labelled_grid(ctx, rig, tmp_path):
    base = tiny_request(prompt="a red cube <lora:charB:0.3>", seed=SEED)
    progress = []
    result = cmp.sweep(ctx, cmp.SweepRequest(base=base, weights=[0, 0.5, 1], loras=["styleA", "charB"]),
                       on_progress=lambda done, total, what: progress.append((done, total)))

    # 1 baseline + 2 LoRAs x 2 non-zero weights; the baseline is the only request without a tag.
    assert result.renders == len(rig.requests) == 5
    untagged = [r for r in rig.requests if "<lora" not in r.prompt]
    assert len(untagged) == 1
    assert {r.seed for r in rig.requests} == {SEED}
    assert sorted(r.prompt for r in rig.requests if "<lora" in r.prompt) == sorted([
        "a red cube <lora:styleA:0.5>", "a red cube <lora:styleA:1>",
        "a red cube <lora:charB:0.5>", "a red cube <lora:charB:1>"])
    assert untagged[0].prompt == "a red cube "  # exactly the text every cell encodes
    assert progress[0] == (0, 5) and progress[-1] == (5, 5)

    assert result.loras == ["styleA", "charB"] and result.weights == [0, 0.5, 1]
    layout = result.layout
    assert (layout.rows, layout.columns, layout.cell_width, layout.cell_height) == (2, 3, 32, 32)
    assert result.grid.size == (layout.left + 3 * 32, layout.top + 2 * 32)
    for r in range(2):
        assert result.cells[r][0] is result.baseline  # weight 0 reuses the one baseline
        for c in range(3):
            assert np.array_equal(as_array(result.grid.crop(layout.cell_box(r, c))), as_array(result.cells[r][c]))
    assert not np.array_equal(as_array(result.cells[0][2]), as_array(result.baseline))
    assert not np.array_equal(as_array(result.cells[0][2]), as_array(result.cells[1][2]))

    # A cell is the same image a comparison at that weight shows.
    compared = cmp.compare(ctx, cmp.CompareRequest(base=tiny_request(prompt="a red cube", seed=SEED), loras=[("styleA", 1)]))
    assert np.array_equal(as_array(compared.with_lora), as_array(result.cells[0][2]))

    saved = cmp.save_png(result.grid, tmp_path / "grid.png", result.infotext)
    with Image.open(saved) as reread:
        assert reread.info["parameters"] == result.infotext
        assert reread.size == result.grid.size
    assert 'X Values: "0, 0.5, 1"' in result.infotext and 'Y Values: "styleA, charB"' in result.infotext


def test_sweep_without_zero_renders_no_baseline_and_defaults_to_prompt_loras(ctx, rig):
    result = cmp.sweep(ctx, cmp.SweepRequest(base=tiny_request(prompt="cube <lora:styleA:1>", seed=3), weights=[0.5, 1]))
    assert result.baseline is None and result.renders == len(rig.requests) == 2
    assert result.loras == ["styleA"]
    assert all("<lora:styleA:" in r.prompt for r in rig.requests)


@pytest.mark.parametrize("request_kwargs, message", [
    (dict(weights=[], loras=["styleA"]), "empty"),
    (dict(weights=[0, 1], loras=[]), "Nothing to sweep"),
    (dict(weights=[0, 1], loras=["styleA", "nosuch"]), "Unknown LoRA 'nosuch'"),
    (dict(weights=[0.1 * i for i in range(1, 31)], loras=["styleA", "charB", "x3"]), "renders"),
    (dict(weights=[0, float("inf")], loras=["styleA"]), "finite"),
])
def test_sweep_refuses_bad_input_before_rendering(ctx, rig, request_kwargs, message):
    with pytest.raises(cmp.CompareError) as info:
        cmp.sweep(ctx, cmp.SweepRequest(base=tiny_request(prompt="cube", seed=1), **request_kwargs))
    assert message in str(info.value)
    assert rig.requests == []


# ------------------------------------------------------------------------------ interrupted sweeps

GREY = (128, 128, 128)


def is_placeholder(cell: np.ndarray) -> bool:
    """Mostly the neutral grey, with some lighter label pixels, and nothing of the half-done render."""
    grey = np.all(cell == GREY, axis=-1).mean()
    light = np.all(cell > 200, axis=-1).any()
    return grey > 0.6 and light and not np.any(np.all(cell == (255, 0, 255), axis=-1))


def test_an_interrupted_sweep_shows_the_cells_done_and_placeholders_for_the_rest():
    worker = InterruptingWorker(stop_after=9)
    weights, loras = [0.2, 0.4, 0.6, 0.8, 1.0], ["a", "b", "c"]
    progress = []
    result = cmp.sweep(worker, cmp.SweepRequest(base=tiny_request(prompt="cube", seed=7), weights=weights, loras=loras),
                       on_progress=lambda done, total, what: progress.append((done, total, what)))

    assert worker.jobs == [("sweep", 15)]
    assert len(worker.requests) == 10  # 9 renders done, the 10th interrupted, nothing after it
    assert result.interrupted and result.renders == 9
    assert (result.cells_done, result.cells_total) == (9, 15)
    assert result.missing == [(1, 4)] + [(2, c) for c in range(5)]
    assert progress[-1] == (9, 15, "interrupted")

    layout = result.layout
    assert (layout.rows, layout.columns) == (3, 5)
    for r, name in enumerate(loras):
        for c, weight in enumerate(weights):
            cell = as_array(result.grid.crop(layout.cell_box(r, c)))
            if (r, c) in result.missing:
                assert is_placeholder(cell), (r, c)
            else:  # exactly the render of that LoRA at that weight
                prompt = worker.requests[5 * r + c].prompt
                assert f"<lora:{name}:" in prompt
                assert np.all(cell == prompt_colour(prompt)), (r, c)
    assert 'X Values: "0.2, 0.4, 0.6, 0.8, 1"' in result.infotext


def test_an_interrupted_sweep_keeps_the_baseline_cells_of_every_row():
    worker = InterruptingWorker(stop_after=2)  # the baseline and 'a' at 0.5
    result = cmp.sweep(worker, cmp.SweepRequest(base=tiny_request(prompt="cube", seed=7), weights=[0, 0.5, 1],
                                                loras=["a", "b"]))
    assert result.interrupted and (result.cells_done, result.cells_total) == (3, 6)
    assert result.missing == [(0, 2), (1, 1), (1, 2)]
    baseline = as_array(result.baseline)
    for r in range(2):
        assert np.array_equal(as_array(result.grid.crop(result.layout.cell_box(r, 0))), baseline)
    assert np.all(as_array(result.cells[0][1]) == prompt_colour(worker.requests[1].prompt))
    assert is_placeholder(as_array(result.cells[1][1]))


@pytest.mark.parametrize("weights, stop_after", [
    ([0, 0.5, 1], 0),     # interrupted in the baseline
    ([0, 0.5, 1], 1),     # only the baseline was done: no LoRA cell to show
    ([0.5, 1], 0),        # interrupted in the first LoRA cell
])
def test_a_sweep_interrupted_before_any_lora_cell_gives_the_clear_error(weights, stop_after):
    worker = InterruptingWorker(stop_after=stop_after)
    with pytest.raises(cmp.CompareError, match="interrupted before any LoRA cell.*nothing is shown"):
        cmp.sweep(worker, cmp.SweepRequest(base=tiny_request(prompt="cube", seed=7), weights=weights, loras=["a"]))
    assert len(worker.requests) == stop_after + 1


def test_a_comparison_interrupted_on_its_lora_side_still_shows_nothing():
    worker = InterruptingWorker(stop_after=1)
    with pytest.raises(cmp.CompareError, match="interrupted before the comparison finished; nothing is shown"):
        cmp.compare(worker, cmp.CompareRequest(base=tiny_request(prompt="cube", seed=7), loras=[("a", 1)]))
    assert len(worker.requests) == 2


def test_a_real_sweep_interrupted_between_cells_returns_the_cells_done(ctx, rig):
    def interrupt_before_charB(done, total, what):
        if what.startswith("charB"):
            rig.worker.interrupt()

    result = cmp.sweep(ctx, cmp.SweepRequest(base=tiny_request(prompt="a red cube", seed=SEED), weights=[0, 0.5, 1],
                                             loras=["styleA", "charB"]), on_progress=interrupt_before_charB)
    assert result.interrupted and result.renders == 3 and len(rig.requests) == 4
    assert result.missing == [(1, 1), (1, 2)] and (result.cells_done, result.cells_total) == (4, 6)
    assert not np.array_equal(as_array(result.cells[0][2]), as_array(result.baseline))
    assert is_placeholder(as_array(result.grid.crop(result.layout.cell_box(1, 2))))
    # The worker is usable again after the interrupted job.
    assert rig.worker.txt2img(tiny_request(prompt="cube", seed=1)).result().images


# -------------------------------------------------------------------------------------- inspector


@pytest.mark.parametrize("block, group", [
    ("te", "text encoder"), ("te2", "text encoder"), ("BASE", "text encoder"),
    ("down_0", "down"), ("IN04", "down"), ("mid", "mid"), ("M00", "mid"),
    ("up_3", "up"), ("OUT11", "up"), ("other", "other"),
])
def test_block_group_knows_engine_and_lbw_names(block, group):
    assert cmp.block_group(block) == group


def test_block_profile_orders_blocks_and_shares_squared_norms():
    profile = cmp.block_profile({"up_10": 1.0, "up_2": 2.0, "mid": 2.0, "te": 1.0, "down_0": 0.0, "other": 1.0})
    assert [b for b, _, _ in profile.blocks] == ["te", "down_0", "mid", "up_2", "up_10", "other"]
    total = 1 + 0 + 4 + 4 + 1 + 1
    assert profile.group_shares == pytest.approx({"text encoder": 1 / total, "down": 0.0, "mid": 4 / total,
                                                  "up": 5 / total, "other": 1 / total})
    assert sum(profile.group_shares.values()) == pytest.approx(1.0)
    summary = profile.summary()
    assert summary.startswith("Weight change by part: up 45%, mid 36%")
    assert "up_2 (2)" in summary and "spread" in summary


def test_block_profile_names_the_dominant_part_and_a_preset():
    summary = cmp.block_profile({"up_0": 3.0, "down_0": 1.0}).summary()
    assert "Mostly up (90%)" in summary and "lbw=OUTALL" in summary
    assert "no weight" in cmp.block_profile({"up_0": 0.0}).summary()


@pytest.mark.parametrize("norms", [{"up_0": -1.0}, {"up_0": float("nan")}])
def test_block_profile_refuses_broken_norms(norms):
    with pytest.raises(cmp.CompareError, match="invalid weight-change size"):
        cmp.block_profile(norms)


def test_inspect_measures_each_block_from_the_file(ctx, lora_files):
    from safetensors.torch import load_file

    profile = cmp.inspect_lora(ctx, "styleA")
    # Independent: group kohya prefixes by UNet block and add ||alpha/rank * up @ down||^2.
    state = load_file(str(lora_files["styleA"]))
    expected: dict[str, float] = {}
    for key in state:
        if not key.endswith(".lora_down.weight"):
            continue
        prefix = key[: -len(".lora_down.weight")]
        parts = prefix[len("lora_unet_"):].split("_")
        block = "mid" if parts[0] == "mid" else f"{parts[0]}_{parts[2]}"
        down, up = state[key].double(), state[f"{prefix}.lora_up.weight"].double()
        delta = up @ down * float(state[f"{prefix}.alpha"]) / down.shape[0]
        expected[block] = expected.get(block, 0.0) + float(delta.pow(2).sum())
    measured = {block: norm for block, _, norm in profile.blocks}
    assert measured == pytest.approx({block: value ** 0.5 for block, value in expected.items()}, rel=1e-6)
    assert set(profile.group_shares) == {"down", "mid", "up"}


@pytest.mark.parametrize("name, message", [("", "Pick a LoRA"), ("nosuch", "Unknown LoRA 'nosuch'")])
def test_inspect_refuses_unknown_names(ctx, name, message):
    with pytest.raises(cmp.CompareError, match=message):
        cmp.inspect_lora(ctx, name)
