"""LBW parsing: presets, the four value formats, errors."""
from __future__ import annotations

import pytest

from lora_ui.lora.block_weights import BlockWeightError, parse_block_weights, ratio_for

IN = [f"IN{i:02d}" for i in range(12)]
OUT = [f"OUT{i:02d}" for i in range(12)]


def test_presets_follow_the_extension_table():
    inall = parse_block_weights("INALL")
    assert [inall[b] for b in ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00")] == [1, 1, 1, 1, 1, 1, 1, 0]
    assert all(inall[b] == 0 for b in OUT)
    midd = parse_block_weights("midd")  # case-insensitive
    assert [midd[b] for b in ("BASE", "IN01", "IN04", "IN08", "M00", "OUT03", "OUT06", "OUT07", "OUT11")] == [1, 0, 0, 1, 1, 1, 1, 0, 0]
    half = parse_block_weights("ALL0.5")
    assert half["OUT11"] == 0.5 and half["IN00"] == 0.0  # IN00 is not one of the 17 blocks


@pytest.mark.parametrize("n,ids", [
    (17, ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00"] + OUT[3:]),
    (26, ["BASE"] + IN + ["M00"] + OUT),
    (12, ["BASE", "IN04", "IN05", "IN07", "IN08", "M00"] + OUT[:6]),
    (20, ["BASE"] + IN[:9] + ["M00"] + OUT[:9]),
])
def test_value_formats_map_in_order(n, ids):
    values = [round(0.01 * (i + 1), 2) for i in range(n)]
    ratios = parse_block_weights(",".join(str(v) for v in values))
    assert [ratios[b] for b in ids] == values
    assert all(ratios[b] == 0.0 for b in ratios if b not in ids)


@pytest.mark.parametrize("text,needle", [("FOO", "unknown block-weight preset"), ("1,1,1", "got 3"),
                                         (",".join(["1"] * 16 + ["a"]), "'a'"), (",".join(["1"] * 16 + ["nan"]), "not finite")])
def test_errors(text, needle):
    with pytest.raises(BlockWeightError, match=needle):
        parse_block_weights(text)


def test_ratio_for():
    ratios = parse_block_weights("OUTS")
    assert ratio_for(None, "IN04") == 1.0
    assert ratio_for(ratios, "") == 1.0  # modules outside every block keep their weight
    assert ratio_for(ratios, "OUT11") == 1.0 and ratio_for(ratios, "OUT05") == 0.0
