"""LoRA Block Weight (LBW): per-block ratios from a preset name or a comma list.

Formats (the popular sd-webui-lora-block-weight extension's block ids; BASE = text encoder(s)):
  17 values  SD1 LoRA:    BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03..OUT11
  26 values  SD1 LoCon:   BASE, IN00..IN11, M00, OUT00..OUT11
  12 values  SDXL LoRA:   BASE, IN04, IN05, IN07, IN08, M00, OUT00..OUT05
  20 values  SDXL LoCon:  BASE, IN00..IN08, M00, OUT00..OUT08
Blocks a format does not list get ratio 0 (as the extension fills its 26 slots). UNet modules that
belong to no LDM block (time/label embeddings, conv_norm_out, conv_out) keep ratio 1. The values are
matched to the model by block id, so a 17-value preset on SDXL weights the SDXL blocks of the same
ids (IN01, IN02, IN04 ...); blocks that do not exist in the model are ignored.
"""
from __future__ import annotations

import math

BLOCK_IDS_26 = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
BLOCK_IDS_17 = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00"] + [f"OUT{i:02d}" for i in range(3, 12)]
BLOCK_IDS_12 = ["BASE", "IN04", "IN05", "IN07", "IN08", "M00"] + [f"OUT{i:02d}" for i in range(6)]
BLOCK_IDS_20 = ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)]
FORMATS = {17: BLOCK_IDS_17, 26: BLOCK_IDS_26, 12: BLOCK_IDS_12, 20: BLOCK_IDS_20}

# The extension's default presets (17-value format).
PRESETS: dict[str, str] = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}


class BlockWeightError(ValueError):
    """A malformed lbw value (unknown preset, wrong count, not a number)."""


def parse_block_weights(lbw: str) -> dict[str, float]:
    """Block id -> ratio for a preset name (case-insensitive) or a comma list of 17/26/12/20 numbers.

    Every id of BLOCK_IDS_26 is present in the result (unlisted ones 0.0). Raises BlockWeightError.
    """
    text = lbw.strip()
    preset = PRESETS.get(text.upper())
    values_text = preset if preset is not None else text
    items = [v.strip() for v in values_text.split(",")]
    if len(items) == 1 and preset is None:
        raise BlockWeightError(f"unknown block-weight preset '{text}' (known: {', '.join(PRESETS)})")
    if len(items) not in FORMATS:
        raise BlockWeightError(
            f"block weights need 17, 26 (SD1) or 12, 20 (SDXL) values, got {len(items)} in '{text}'")
    values = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise BlockWeightError(f"block weight '{item}' in '{text}' is not a number") from None
        if not math.isfinite(value):
            raise BlockWeightError(f"block weight '{item}' in '{text}' is not finite")
        values.append(value)
    ratios = {block: 0.0 for block in BLOCK_IDS_26}
    ratios.update(zip(FORMATS[len(values)], values))
    return ratios


def ratio_for(ratios: dict[str, float] | None, lbw_block: str) -> float:
    """The ratio of one target's block ("" = outside every block -> 1.0; no lbw -> 1.0)."""
    if ratios is None or lbw_block == "":
        return 1.0
    return ratios.get(lbw_block, 0.0)
