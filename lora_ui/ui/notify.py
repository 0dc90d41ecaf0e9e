"""Plain messages in the page: gradio's toast warnings/infos (outside a request they go to
`warnings.warn` / stdout, which is how the unit tests see them)."""
from __future__ import annotations

from typing import Iterable

import gradio as gr


def warn(message: str) -> None:
    gr.Warning(message)


def warn_all(messages: Iterable[str]) -> None:
    for message in messages:
        gr.Warning(message)


def info(message: str) -> None:
    gr.Info(message)
