"""Owned background work: every thread the app starts belongs to one object that stops and joins it.

Why this module exists: a daemon thread still inside torch (freeing a tensor, copying a weight) while
the interpreter finalizes can end the process with `terminate called without an active exception`
(exit status 134) after everything else went well. So no background thread here is a daemon: each
one exits as soon as its queue is empty, `close()` joins it with a timeout that is reported, and the
interpreter itself waits for a running one at exit instead of killing it half-way through torch code.

    lane = BackgroundLane("lora-release")
    lane.submit(buffers.clear)          # runs on the lane's thread, in order
    lane.close(timeout=10)              # waits for what is queued; False (and a warning) on timeout

A delayed call (`Deadline`) is a plain timer that only *waits* on its own thread: when it fires it
submits its callback to a lane, so the work itself runs on a joinable thread, and `cancel()` + `close()`
stop it without waiting for the delay.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class BackgroundLane:
    """Runs submitted callables one after another on a thread that lives only while there is work.

    Thread-safe. A callable's exception is logged, never raised into the submitter. After `close()`
    new submissions run synchronously in the caller (nothing is ever dropped silently)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._pending: collections.deque[Callable[[], object]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, fn: Callable[[], object]) -> None:
        with self._lock:
            if not self._closed:
                self._pending.append(fn)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._drain, name=self.name, daemon=False)
                    self._thread.start()
                return
        _run_logged(fn, self.name)  # closed: do it now, in the caller

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
                fn = self._pending.popleft()
            _run_logged(fn, self.name)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the queue is empty and the thread ended. True if it did within `timeout`."""
        with self._lock:
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._thread is not None

    def close(self, timeout: float | None = 30.0) -> bool:
        """Finish what is queued, then refuse new background work. Returns False (and logs a warning)
        when the thread did not end within `timeout`."""
        with self._lock:
            self._closed = True
        done = self.wait(timeout)
        if not done:
            log.warning("background thread %r did not finish within %s s", self.name, timeout)
        return done


class Deadline:
    """Calls `fn` on `lane` after `delay` seconds unless cancelled. The waiting thread runs no work."""

    def __init__(self, delay: float, fn: Callable[[], object], lane: BackgroundLane, name: str) -> None:
        self._cancelled = threading.Event()
        self._fn = fn
        self._lane = lane
        self._delay = delay
        # A daemon only because it does nothing but wait on an Event; the work goes to the lane.
        self._thread = threading.Thread(target=self._wait, name=name, daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        if not self._cancelled.wait(self._delay):
            self._lane.submit(self._fn)

    def cancel(self, join: bool = True, timeout: float | None = 5.0) -> None:
        self._cancelled.set()
        if join and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def _run_logged(fn: Callable[[], object], name: str) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - background work must not kill its thread
        log.exception("background task on %r failed", name)
