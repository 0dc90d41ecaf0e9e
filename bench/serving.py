"""Serving benchmark: `python -m bench.serving [--quick] [--no-ray] [--requests N] [--steps S]`.

Model: the tiny SD1 pipeline (lora_ui/testing/tiny_models.py; real block layout, tiny widths) at
--size (default 32: 16x16 latents), 1 torch thread; four LoRAs of ranks 2/4/8/3 (plain, LoCon with 3x3 downs on
every layer, PEFT, Tucker) written by tests/scale/mixed_fixtures.py; N requests, each with its own LoRA
set and weights, Euler a, CFG 5.

1. mixed batch vs one by one, same Worker (one worker, one LoraManager; its `batching` set to
   `BatchingConfig(max_images=4)` or `max_images=1` before each run), all N queued at once; the two
   alternate repeat by repeat (so both see the same machine load); throughput = N / wall time; fastest
   of the repeats. Also one by one through today's LoraManager (fast and low-memory modes) for reference.
2. bit-identity: every batched image vs the same request rendered alone through a low-memory
   LoraManager (engine.batching.render_batch(mixed=False)).
3. (with Ray) a sweep of 8 cells on a local Ray Serve deployment with 1 replica, then 2 (replica
   batching off, so the ratio is replica parallelism): wall time 2 replicas / 1, the fastest of the
   repeats, 1 and 2 replicas alternating on one Ray (the deployment rescaled), each after a warm-up
   sweep. Every replica, the 1-replica baseline's included, has `num_cpus=1` and one torch thread
   (`tiny_factory`: torch.set_num_threads(1), OMP_NUM_THREADS=1); Ray gets 2 CPUs in both.
The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = ["<lora:a:0.8>", "<lora:b:1>", "<lora:c:0.7> <lora:d:1.2>", "<lora:d:0.6> <lora:b:0.9>",
        "<lora:a:0.3> <lora:c:0.5>", "<lora:b:0.4>", "<lora:c:1>", "<lora:a:1.1> <lora:d:0.3>"]


def _world(folder: Path):
    from lora_ui.engine.checkpoints import LoadedModel
    from lora_ui.library import LoraLibrary
    from lora_ui.testing.tiny_models import tiny_sd1_pipeline
    from tests.scale.mixed_fixtures import write_loras

    pipe = tiny_sd1_pipeline(0)
    write_loras(pipe, folder)
    model = LoadedModel(pipe=pipe, arch="sd1", name="tiny", path=None, default_size=32, dtype=torch.float32,
                        device=torch.device("cpu"), scheduler_config=dict(pipe.scheduler.config))
    library = LoraLibrary([folder], cache_dir=None)
    library.refresh()
    return model, library


def _reqs(n: int, steps: int, size: int):
    from lora_ui.engine.txt2img import Txt2ImgRequest

    return [Txt2ImgRequest(prompt=f"a house by the sea {SETS[k % len(SETS)]}", negative_prompt="blurry",
                           sampler="Euler a", steps=steps, cfg_scale=5.0, width=size, height=size, seed=1000 + k,
                           save_images=False) for k in range(n)]


def _timed_run(worker, reqs):
    """All of `reqs` queued behind a gate, then released: (seconds, images, batch sizes)."""
    gate = threading.Event()
    worker.submit(lambda s: gate.wait(60), kind="gate")
    worker.batches_run.clear()
    futures = [worker.txt2img(r) for r in reqs]
    start = time.perf_counter()
    cpu = time.process_time()
    gate.set()
    results = [f.result() for f in futures]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return elapsed, [np.asarray(r.images[0]) for r in results], list(worker.batches_run), cpu


def _single_vs_mixed(model, library, reqs, repeats: int):
    """{max_images: (best seconds, images, batches, CPU seconds of that run)} for 1 and 4, alternating on
    one worker. CPU seconds (this process; 1 torch thread) hardly move with other processes' load."""
    from lora_ui.engine.worker import BatchingConfig, Worker
    from lora_ui.lora.manager import LoraManager

    worker = Worker(model, library=library, batching=BatchingConfig(window_s=0.005, max_images=4),
                    lora_manager_factory=lambda pipe: LoraManager(pipe, keep_shadows_seconds=0))
    best: dict[int, tuple] = {}
    try:
        worker.txt2img(reqs[0]).result()  # warm-up (file parsing, allocator)
        for _ in range(repeats):
            for max_images in (1, 4):
                worker.batching = BatchingConfig(window_s=0.005, max_images=max_images)  # worker is idle here
                run = _timed_run(worker, reqs)
                if max_images not in best or run[0] < best[max_images][0]:
                    best[max_images] = run
    finally:
        worker.shutdown()
    return best


def _one_by_one_manager(model, library, reqs, mode: str, repeats: int):
    from lora_ui.engine.batching import BatchItem, render_batch
    from lora_ui.engine.worker import specs_for_prompt
    from lora_ui.lora.manager import LoraManager

    manager = LoraManager(model.pipe, mode=mode, keep_shadows_seconds=0)
    best, images = float("inf"), []
    try:
        for _ in range(repeats):
            images = []
            start = time.perf_counter()
            for r in reqs:
                specs, warnings = specs_for_prompt(library, r.prompt)
                (res,) = render_batch(model, [BatchItem(r, specs, warnings)], manager=manager, mixed=False)
                images.append(np.asarray(res.images[0]))
            best = min(best, time.perf_counter() - start)
    finally:
        manager.close()
    return best, images


def _scale(backend, replicas: int) -> None:
    """Redeploy the backend's app with `replicas` replicas (Serve updates it in place; returns when ready)."""
    from dataclasses import replace

    from ray import serve

    from lora_ui.scale.ray_backend import APP_NAME, _deployment

    backend.config = replace(backend.config, replicas=replicas, max_replicas=None)
    backend.handle = serve.run(_deployment(backend.config), name=APP_NAME, route_prefix=None)


def _ray_sweeps(folder: Path, cells, rounds: int) -> dict[int, float]:
    """{replicas: fastest sweep seconds} for 1 and 2 replicas, alternating on one local Ray (the
    deployment is scaled between them), so both see the same machine load."""
    from lora_ui.engine.worker import BatchingConfig
    from lora_ui.scale.ray_backend import RayConfig, RayWorker

    backend = RayWorker(RayConfig(replicas=1, num_cpus=2, cpus_per_replica=1.0,
                                  model_factory="lora_ui.scale.ray_backend:tiny_factory",
                                  factory_kwargs={"lora_dir": str(folder)},
                                  batching=BatchingConfig(window_s=0.0, max_images=1)))
    best = {1: float("inf"), 2: float("inf")}
    try:
        for _ in range(rounds):
            for replicas in (1, 2):
                _scale(backend, replicas)
                for _ in backend.sweep(cells):  # warm every replica (and every LoRA set on it)
                    pass
                start = time.perf_counter()
                got = sorted(i for i, _ in backend.sweep(cells))
                best[replicas] = min(best[replicas], time.perf_counter() - start)
                assert got == list(range(len(cells)))
        return best
    finally:
        backend.shutdown()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--size", type=int, default=32, help="image side (the tiny model's native 32 by default)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    steps = args.steps or (8 if args.quick else 20)
    repeats = 4 if args.quick else 6
    out: dict = {"model": "tiny SD1 (testing/tiny_models)", "size": args.size, "steps": steps,
                 "requests": args.requests, "batch": 4, "threads": 1, "device": "cpu", "cpu_count": os.cpu_count(),
                 "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        folder = Path(tmp) / "loras"
        model, library = _world(folder)
        reqs = _reqs(args.requests, steps, args.size)
        runs = _single_vs_mixed(model, library, reqs, repeats)
        (t_single, img_single, _, cpu_single), (t_mixed, img_mixed, batches, cpu_mixed) = runs[1], runs[4]
        t_low, img_low = _one_by_one_manager(model, library, reqs, "lowmem", repeats)
        t_fast, img_fast = _one_by_one_manager(model, library, reqs, "fast", repeats)
        library.close()
        identical = all(np.array_equal(a, b) for a, b in zip(img_mixed, img_low)) and \
            all(np.array_equal(a, b) for a, b in zip(img_mixed, img_single))
        fast_max_diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(img_mixed, img_fast))
        out.update({
            "one_by_one_s": round(t_single, 3), "mixed_batch_s": round(t_mixed, 3), "batches": batches,
            "one_by_one_lowmem_manager_s": round(t_low, 3), "one_by_one_fast_manager_s": round(t_fast, 3),
            "mixed_batch_speedup": round(t_single / t_mixed, 3),
            "one_by_one_cpu_s": round(cpu_single, 3), "mixed_batch_cpu_s": round(cpu_mixed, 3),
            "mixed_batch_speedup_cpu": round(cpu_single / cpu_mixed, 3),
            "mixed_batch_speedup_vs_fast_manager": round(t_fast / t_mixed, 3),
            "mixed_batch_throughput_rps": round(len(reqs) / t_mixed, 3),
            "mixed_batch_bit_identical": bool(identical), "fast_mode_max_pixel_diff": fast_max_diff,
        })
        print(f"one by one (worker, batch 1): {t_single:.2f} s; mixed batches {batches}: {t_mixed:.2f} s; "
              f"speedup {t_single / t_mixed:.2f}x; one by one via LoraManager lowmem {t_low:.2f} s, fast {t_fast:.2f} s",
              flush=True)
        if not args.no_ray:
            try:
                import ray  # noqa: F401
            except ImportError:
                out["sweep_2_replicas_vs_1"] = None
                out["ray"] = "not installed (pip install -r requirements-ray.txt)"
            else:
                from lora_ui.engine.txt2img import Txt2ImgRequest

                cells = [Txt2ImgRequest(prompt=f"a boat <lora:a:{w / 4}>", sampler="Euler a", steps=steps,
                                        cfg_scale=5.0, width=args.size, height=args.size, seed=7, save_images=False)
                         for w in range(8)]
                sweeps = _ray_sweeps(folder, cells, rounds=repeats)
                one, two = sweeps[1], sweeps[2]
                out.update({"sweep_1_replica_s": round(one, 3), "sweep_2_replicas_s": round(two, 3),
                            "sweep_2_replicas_vs_1": round(two / one, 3)})
                print(f"sweep of {len(cells)} cells: 1 replica {one:.2f} s, 2 replicas {two:.2f} s", flush=True)
    out["loadavg_1m_end"] = round(os.getloadavg()[0], 2)  # other processes on a shared machine skew wall times
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
