"""Helpers for the security tests: hostile files, worker barriers, bounded waits."""
from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Callable

MARKER_ENV = "LORA_UI_TEST_MARKER"


class Evil:
    """Unpickling this calls os.system(touch <marker>): proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_pickle(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"state_dict": {"w": torch.zeros(2)}, "callback": Evil(marker)}, path)
    return path


def bomb_png(path: Path, side: int = 14000) -> Path:
    """A valid PNG header claiming side x side pixels with almost no data: decoding it would need
    gigabytes; PIL refuses it with DecompressionBombError at open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Wait for `condition` (checked on a short event wait, not a fixed sleep); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        tick.wait(0.01)


def unblock_fifo(path: Path) -> None:
    """Open a FIFO for writing and close it: a reader blocked in open() gets EOF (teardown of tests
    that would hang on the old code)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


class WorkerGate:
    """A job that holds the worker until `release()`: requests queue behind it deterministically."""

    def __init__(self, worker) -> None:
        self.event = threading.Event()
        self.started = threading.Event()
        self.future = worker.submit(self._job, kind="gate")

    def _job(self, session):
        self.started.set()
        self.event.wait(60)

    def release(self) -> None:
        self.event.set()
        self.future.result(timeout=60)


POOL_MARKER_ENV = "LORA_UI_TEST_POOL_MARKERS"


def block_in_pool_worker(job):
    """Stands in for the library's `read_file_record` in a pool worker: records this worker's pid
    (a file named after it in $LORA_UI_TEST_POOL_MARKERS), then blocks (bounded) as a slow read would."""
    folder = Path(os.environ[POOL_MARKER_ENV])
    (folder / str(os.getpid())).touch()
    threading.Event().wait(120)
    return {}
