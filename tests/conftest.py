"""Test-wide setup: offline, quiet, one torch thread (these machines share 2 cores)."""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="lora-ui-gradio-"))

import torch  # noqa: E402

torch.set_num_threads(1)

# ---- Hypothesis: reproducible by default ---------------------------------------------------------------
# "ci" (default, and what CI runs): derandomized -> every run draws the same examples; no example
# database, so a run never depends on what an earlier run found. "explore" (HYPOTHESIS_PROFILE=explore):
# random and many examples, to look for new failures locally; a failure prints the
# `@reproduce_failure` / `--hypothesis-seed` that replays it.
from hypothesis import HealthCheck, settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
_hypothesis_settings.register_profile("explore", max_examples=500, deadline=None, database=None, print_blob=True,
                                      suppress_health_check=[HealthCheck.too_slow])
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import pytest  # noqa: E402

# ---- Every test starts from the same global random state -------------------------------------------------
# Tests that draw from torch's / numpy's / Python's global generators (torch.randn(...) without a generator)
# then see the same numbers in every run, whatever ran before them and in whatever order.
import random  # noqa: E402

import numpy as np  # noqa: E402


@pytest.fixture(autouse=True)
def _fixed_global_seeds():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    yield


# ---- Threads and processes: whatever the tests start, they stop -----------------------------------------
import threading  # noqa: E402

import psutil  # noqa: E402

# Our own threads are named "lora-..." / "lora-ui-..."; a daemon one still inside torch at interpreter exit
# can abort the process (status 134) after every test passed.
OWNED_THREAD_PREFIXES = ("lora-", "lora-ui-")
JOIN_GRACE_S = 15.0  # background releases of W-sized buffers finish in well under a second


def _alive_after_grace(threads: list[threading.Thread]) -> list[threading.Thread]:
    for thread in threads:
        if not thread.name.startswith("lora-ui-worker"):
            thread.join(JOIN_GRACE_S)  # background work may still be finishing: give it time, then judge
    return [t for t in threads if t.is_alive()]


def _event_loop_executor_thread(thread: threading.Thread) -> bool:
    """An idle worker of an asyncio loop's default executor ("asyncio_N", started by `run_in_executor`).
    Its lifetime is its loop's: the session-scoped servers and Playwright own those loops, and such a worker
    can start lazily in any module (e.g. a getaddrinfo); it never holds up exit (concurrent.futures joins
    idle workers at exit). Our own threads are named "lora-..." and are judged below and at session end."""
    return thread.name.startswith("asyncio_")


def _describe(threads: list[threading.Thread]) -> str:
    return ", ".join(f"{t.name} (daemon={t.daemon})" for t in threads)


@pytest.fixture(scope="module", autouse=True)
def _module_joins_its_non_daemon_threads():
    """A non-daemon thread a module leaves running would hold up the interpreter's exit: the module fails.
    (Threads of session-scoped fixtures may start lazily inside a module; the session check judges those.)"""
    before = set(threading.enumerate())
    yield
    new = [t for t in threading.enumerate() if t not in before and not t.daemon and t.is_alive()
           and t is not threading.current_thread() and not _event_loop_executor_thread(t)]
    leaked = _alive_after_grace(new)
    if leaked:
        pytest.fail(f"non-daemon threads left running by this module (close what you open): {_describe(leaked)}",
                    pytrace=False)


def _is_resource_tracker(process: psutil.Process) -> bool:
    """multiprocessing's own resource tracker (started with the first 'spawn' pool) lives until this
    interpreter exits, by design; it is Python's, not something a test forgot."""
    try:
        return any("multiprocessing.resource_tracker" in part for part in process.cmdline())
    except psutil.Error:
        return False


@pytest.fixture(scope="session", autouse=True)
def _session_joins_everything():
    """Torn down last (set up first): after every fixture closed what it opened, none of our threads and
    no child process of pytest may still be running."""
    yield
    ours = [t for t in threading.enumerate() if t.name.startswith(OWNED_THREAD_PREFIXES) and t.is_alive()
            and not t.name.startswith("lora-shadow-expiry")]
    leaked = _alive_after_grace(ours)
    children = [c for c in psutil.Process().children(recursive=True)
                if c.is_running() and c.status() != psutil.STATUS_ZOMBIE and not _is_resource_tracker(c)]
    _, alive = psutil.wait_procs(children, timeout=10)
    problems = []
    if leaked:
        problems.append(f"threads still running at the end of the session: {_describe(leaked)}")
    if alive:
        problems.append("child processes left running: "
                        + ", ".join(f"{p.pid} {' '.join(p.cmdline()[:3])}" for p in alive))
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: without it they are deselected (shown as "deselected" in the
    summary, never as passed or skipped-green)."""
    _deselect_ray_without_ray(config, items)
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


def _ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def _deselect_ray_without_ray(config, items) -> None:
    """Tests marked `ray` run whenever Ray is installed (bounded: one local Ray, 2 CPU replicas). Without
    Ray they are deselected from a plain run (the suite needs no Ray), but a run that asks for them
    (`-m ray`) keeps them, and they fail on the missing import: never a green skip."""
    if _ray_installed() or "ray" in (config.getoption("markexpr", "") or ""):
        return
    ray_items = [item for item in items if item.get_closest_marker("ray")]
    if ray_items:
        config.hook.pytest_deselected(items=ray_items)
        items[:] = [item for item in items if not item.get_closest_marker("ray")]
