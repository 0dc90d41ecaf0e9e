"""The gradio web UI (one module per tab). Entry point: `build_ui(ctx) -> gr.Blocks`."""
from __future__ import annotations

from typing import Any


def build_ui(ctx: Any):
    """Build the Blocks app for an AppContext (imported lazily so `import lora_ui.ui` stays cheap)."""
    from lora_ui.ui.app import build_ui as _build_ui

    return _build_ui(ctx)


__all__ = ["build_ui"]
