"""A closed page cancels its renders: every job the UI submits is tagged with the Gradio session that
asked for it, and `demo.unload` (the page's heartbeat stream closed: tab closed or reloaded) cancels
that session's queued jobs and interrupts its running one on the worker.

    install_session_cancel(demo, ctx.worker)      # inside build_ui, once

The tag comes from `gradio.context.LocalContext.request`, which Gradio sets for the thread of the event
handler that runs (txt2img, img2img, compare, sweep and X/Y/Z all submit from their handler), so no
handler needs to pass it. REST API jobs run outside Gradio's events: they have no owner and are never
cancelled this way (the API cancels on client disconnect itself).
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def current_session_hash() -> str | None:
    """The session hash of the Gradio event being handled on this thread, or None outside one."""
    try:
        from gradio.context import LocalContext
    except ImportError:  # pragma: no cover - gradio is a dependency of the UI
        return None
    request = LocalContext.request.get(None)
    return getattr(request, "session_hash", None) or None


def cancel_session_jobs(worker: Any, session_hash: str | None) -> dict[str, int]:
    """Cancel/interrupt the worker jobs of one closed session; a worker without owners is left alone."""
    cancel = getattr(worker, "cancel_owner", None)
    if cancel is None or not session_hash:
        return {"cancelled": 0, "interrupted": 0}
    outcome = cancel(session_hash)
    if any(outcome.values()):
        log.info("page closed (session %s): %s", session_hash[:8], outcome)
    return outcome


def install_session_cancel(demo: Any, worker: Any) -> bool:
    """Tag the worker's UI jobs with their session and cancel them when the page unloads.

    Returns False (nothing installed) for a worker without owner support (a test fake)."""
    if worker is None or not hasattr(worker, "cancel_owner") or not hasattr(worker, "owner_provider"):
        return False
    if worker.owner_provider is None:
        worker.owner_provider = current_session_hash

    def on_unload(request: "gr.Request") -> None:  # noqa: F821 - gradio injects it by annotation
        cancel_session_jobs(worker, getattr(request, "session_hash", None))

    import gradio as gr

    on_unload.__annotations__["request"] = gr.Request
    demo.unload(on_unload)
    return True
