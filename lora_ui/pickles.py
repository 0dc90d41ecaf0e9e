"""The app's one way to read a pickle (.ckpt/.pt/.pth/.bin) file: `torch.load(weights_only=True)`.

`--allow-pickle` lets the app open pickle files at all; it never lets them run code. torch's
weights-only unpickler accepts tensors, dicts, lists, numbers and strings and refuses every other
global, so a file whose pickle would call a function (or needs a class to be rebuilt) is refused with a
message saying so, for checkpoints, LoRAs and embeddings alike.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from lora_ui.files import NotRegularFileError, open_regular

__all__ = ["load_pickle_weights", "NEEDS_MORE_THAN_WEIGHTS"]

NEEDS_MORE_THAN_WEIGHTS = "needs more than plain tensors to load"


def load_pickle_weights(path: Path, error: type[Exception] = ValueError) -> Any:
    """The object of the pickle file at `path`, read with weights_only=True on the CPU. Raises
    `error(message)` when the file is refused (it would run code / needs other classes) or unreadable."""
    import torch

    path = Path(path)
    try:
        with open_regular(path) as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except NotRegularFileError as e:
        raise error(f"{path.name}: {e}") from None
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower() or "global" in str(e).lower():
            detail = next((line.strip() for line in str(e).splitlines() if "global" in line.lower()), first)
            raise error(f"{path.name} is a pickle that {NEEDS_MORE_THAN_WEIGHTS} (it would run code or rebuild "
                        f"objects: {detail[:200]}); it is refused, also with --allow-pickle, which only reads "
                        "plain tensors. Use a .safetensors version of it.") from None
        raise error(f"{path.name} could not be read as a pickle file (UnpicklingError: {first[:200]}); "
                    "it is corrupt. Download it again.") from None
    except Exception as e:  # noqa: BLE001 - any other failure is a damaged file to the user
        raise error(f"{path.name} could not be read as a pickle file ({type(e).__name__}: {str(e)[:200]}); "
                    "it is corrupt. Download it again.") from None
