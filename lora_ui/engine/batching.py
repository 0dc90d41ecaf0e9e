"""Batched txt2img over our own sampling core: several requests, one sampling loop, mixed LoRA sets.

    items = [BatchItem(req_a, specs_a), BatchItem(req_b, specs_b)]
    outcomes = render_batch(model, items, manager=loras, mixed=True, library=lib, outputs_dir=out)
    # outcomes[k]: Txt2ImgResult or the exception that failed item k only

What is shared by a batch (`batch_key`): checkpoint, width, height, sampler, schedule type, steps and
CFG scale. Per request: prompt, negative prompt, LoRA set and weights, seed, batch size, clip skip.
Each request's prompts are encoded alone (its own LoRA set on the text encoder, the batch it has
alone), all images are sampled in one loop (one UNet call per denoiser call, rows laid out as
CFGDenoiser does: every image's AND terms, then the negatives; `lora/mixed.RowMap.for_cfg`), and each
request's latents are decoded alone. Noise is per image (CPU generators, `rng.ImageRNG`, per-image
Brownian trees), so an image does not depend on its batch.

Bit-identity: with `mixed=True` a request's images equal the same request rendered alone with
`mixed=False` through a low-memory LoraManager, bit for bit, on batch-invariant kernels (tested on
the CPU). Requests whose conditioning lengths differ (prompts over 75 tokens, BREAK) are sampled in
separate sub-batches of equal length (CFGDenoiser would otherwise pad or split their rows), and DPM
adaptive (its step size is chosen over the whole batch) never shares a batch.

Per request inside a batch: `BatchItem.on_step(done, total, latents)` reports progress; raising
`GenerationInterrupted` there ends that request (its latents of that step are decoded, the result
says `interrupted=True`), the others go on; when every request has stopped the loop ends.

The narrow hook a sampling loop needs to run mixed LoRA sets is the UNet callable given to
`DiscreteDenoiser`: `MixedUNet(pipe.unet, mixed, row_map)` (below) sets the row map around each call.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable

import torch

from lora_ui.lora.mixed import MixedLoras, RowMap

MAX_SEED = 2**32 - 2
NOT_BATCHABLE_SAMPLERS = ("DPM adaptive",)


@dataclass
class BatchItem:
    req: Any                                   # Txt2ImgRequest
    specs: list = field(default_factory=list)  # LoraSpec, resolved from the prompt's tags
    warnings: list[str] = field(default_factory=list)
    on_step: Callable[[int, int, Any], None] | None = None


class _AllStopped(Exception):
    """Every request of the batch asked to stop: end the sampling loop."""


class MixedUNet:
    """The UNet as DiscreteDenoiser calls it, with the mixed-LoRA row map set around each call.

    rows: the RowMap of a full CFGDenoiser call; a call with another row count (CFGDenoiser splitting
    rows) raises instead of giving rows the wrong LoRAs. uniform: instead of rows, every row belongs to
    this one set (a sub-batch of one request, whose calls CFGDenoiser may split any way it likes)."""

    def __init__(self, unet, mixed: MixedLoras, rows: RowMap | None = None, uniform: int | None = None):
        if (rows is None) == (uniform is None):
            raise ValueError("MixedUNet takes a row map or a uniform set, not both")
        self.unet, self.mixed, self.rows, self.uniform = unet, mixed, rows, uniform
        self.dtype = unet.dtype

    def __call__(self, x, t, **kwargs):
        if self.uniform is not None:
            with self.mixed.uniform(self.uniform):
                return self.unet(x, t, **kwargs)
        if x.shape[0] != len(self.rows):
            raise RuntimeError(f"mixed batch: the UNet got {x.shape[0]} rows, the row map has {len(self.rows)}")
        with self.mixed.rows(self.rows):
            return self.unet(x, t, **kwargs)


def batch_key(model, req) -> tuple | None:
    """What requests must share to be sampled together, or None when this one never shares
    (invalid fields, batch_count > 1, a sampler whose steps depend on the whole batch)."""
    from lora_ui.engine.sampling import registry
    from lora_ui.engine.txt2img import validate

    try:
        width, height = validate(model, req)
        sampler, schedule = registry.parse_sampler_and_schedule(req.sampler, req.scheduler)
        spec = registry.find_sampler(sampler)
    except (ValueError, registry.SamplingError):
        return None
    if spec.name in NOT_BATCHABLE_SAMPLERS or int(req.batch_count) != 1:
        return None
    label = registry.schedule_label(spec, schedule)
    return (model.name, str(model.path), id(model.pipe), width, height, spec.name, label, int(req.steps),
            float(req.cfg_scale))


def _cond_lengths(step_conds) -> set[int]:
    lengths: set[int] = set()
    for terms, negative in step_conds.images:
        for scheduled in [s for s, _ in terms] + [negative]:
            lengths.update(c.length for c in scheduled.conds)
    return lengths


@dataclass
class _Prepared:
    index: int
    item: BatchItem
    width: int
    height: int
    seeds: list[int]
    text: str
    conds: Any          # ScheduledConds
    lengths: frozenset
    latents: torch.Tensor | None = None
    stopped: bool = False


def render_batch(model, items: list[BatchItem], *, manager, mixed: bool = True, library=None,
                 outputs_dir: Path | None = None, rng_source: str = "CPU") -> list:
    """Render `items` together (see the module doc). Returns one Txt2ImgResult or exception per item.

    mixed=False: exactly one item, its LoRA set applied through `manager` (its own mode): the
    one-by-one reference path. mixed=True: the manager is cleared and `MixedLoras` serves every set.
    Raises (for the whole batch) NotMixable / LoraError from building the mixed LoRAs."""
    from lora_ui.engine import conditioning
    from lora_ui.engine.sampling import registry
    from lora_ui.engine.txt2img import RequestError, validate
    from lora_ui.prompt import extract_lora_tags

    pipe = model.pipe
    if pipe is None:
        raise RuntimeError("this model was unloaded (a checkpoint switch freed it); use the current model")
    if not mixed and len(items) != 1:
        raise ValueError("mixed=False renders exactly one request")
    outcomes: list = [None] * len(items)
    prepared: list[_Prepared] = []
    keys = set()
    for k, item in enumerate(items):
        try:
            width, height = validate(model, item.req)
        except RequestError as e:
            outcomes[k] = e
            continue
        keys.add(batch_key(model, item.req))
        seed = int(item.req.seed) if item.req.seed is not None and item.req.seed >= 0 else random.randint(0, MAX_SEED)
        text, _, _ = extract_lora_tags(item.req.prompt)
        prepared.append(_Prepared(k, item, width, height, [seed + i for i in range(int(item.req.batch_size))], text,
                                  None, frozenset()))
    if not prepared:
        return outcomes
    if len(keys) != 1 or None in keys:
        raise ValueError("render_batch: the requests do not share checkpoint, size, sampler, schedule, steps and CFG")
    req0 = prepared[0].item.req
    sampler, schedule = registry.parse_sampler_and_schedule(req0.sampler, req0.scheduler)
    spec = registry.find_sampler(sampler)
    prompt_steps = int(req0.steps) * (2 if spec.second_order else 1)

    manager.clear()
    lora_set = MixedLoras(manager, [p.item.specs for p in prepared]) if mixed else None
    try:
        if lora_set is not None:
            lora_set.install()
        else:
            manager.set_loras(prepared[0].item.specs)
        with torch.no_grad():
            for s, p in enumerate(prepared):
                negative, _, _ = extract_lora_tags(p.item.req.negative_prompt)
                n = len(p.seeds)
                encode = lambda: conditioning.encode_step_conds(  # noqa: E731
                    pipe, model.arch, [p.text] * n, [negative] * n, prompt_steps, clip_skip=int(p.item.req.clip_skip))
                if lora_set is not None:
                    with lora_set.uniform(s):
                        p.conds = encode()
                else:
                    p.conds = encode()
                p.lengths = frozenset(_cond_lengths(p.conds))
            # equal conditioning lengths sample together (one UNet call per denoiser call)
            partitions: dict[frozenset, list[int]] = {}
            for s, p in enumerate(prepared):
                key = p.lengths if len(p.lengths) == 1 else frozenset({-1 - s})
                partitions.setdefault(key, []).append(s)
            for members in partitions.values():
                _sample(model, [prepared[s] for s in members], members, lora_set, manager, spec.name, schedule, req0,
                        rng_source)
            for p in prepared:
                outcomes[p.index] = _finish(model, p, spec, schedule, library, outputs_dir)
    finally:
        if lora_set is not None:
            lora_set.close()
    return outcomes


def _sample(model, group: list[_Prepared], set_indices: list[int], lora_set, manager, sampler: str, schedule: str,
            req0, rng_source: str) -> None:
    from lora_ui.engine.sampling import registry
    from lora_ui.engine.sampling.denoiser import CFGDenoiser, DiscreteDenoiser, DiscreteSchedule, sdxl_time_ids
    from lora_ui.engine.sampling.rng import BrownianNoise, ImageRNG
    from lora_ui.engine.txt2img import GenerationInterrupted, vae_scale_factor

    pipe = model.pipe
    p0 = group[0]
    factor = vae_scale_factor(pipe)
    shape = (int(pipe.unet.config.in_channels), p0.height // factor, p0.width // factor)
    seeds = [s for p in group for s in p.seeds]
    image_sets = [s for s, p in zip(set_indices, group) for _ in p.seeds]
    per_request = [p.conds for p in group]

    def step_conds(call: int):
        return [ic for conds in per_request for ic in conds(call)]

    terms = [len(ic.terms) for ic in step_conds(0)]
    unet = pipe.unet
    if lora_set is not None and len(group) == 1:
        unet = MixedUNet(pipe.unet, lora_set, uniform=set_indices[0])
    elif lora_set is not None:
        unet = MixedUNet(pipe.unet, lora_set, RowMap.for_cfg(image_sets, image_sets, terms))
    config = getattr(model, "scheduler_config", None) or dict(pipe.scheduler.config)
    denoiser = DiscreteDenoiser(unet, DiscreteSchedule.from_config(config),
                                config.get("prediction_type", "epsilon") or "epsilon",
                                time_ids=sdxl_time_ids(p0.height, p0.width) if model.arch == "sdxl" else None,
                                unet_dtype=pipe.unet.dtype)
    cfg = CFGDenoiser(denoiser, float(req0.cfg_scale), step_conds)
    rng = ImageRNG(shape, seeds, source=rng_source, device=model.device)
    noise = rng.next().to(model.device)
    bounds = []
    start = 0
    for p in group:
        bounds.append((start, start + len(p.seeds)))
        start += len(p.seeds)
    steps = int(req0.steps)
    if manager is not None and lora_set is None:
        manager.on_step(0, steps)

    def callback(d: dict) -> None:
        done = min(steps, int(d["i"]) + 1)
        x = d["x"]
        for p, (a, b) in zip(group, bounds):
            if p.stopped or p.item.on_step is None:
                continue
            try:
                p.item.on_step(done, steps, x[a:b])
            except GenerationInterrupted:
                p.stopped = True
                p.latents = x[a:b].clone()
        if all(p.stopped for p in group):
            raise _AllStopped()
        if manager is not None and lora_set is None and done < steps:
            manager.on_step(done, steps)

    def brownian(x, lo, hi):
        return BrownianNoise(x, lo, hi, seeds, rng_source)

    try:
        latents = registry.sample(sampler, schedule, cfg, noise, steps, rng, brownian, callback=callback)
    except _AllStopped:
        return
    for p, (a, b) in zip(group, bounds):
        if not p.stopped:
            p.latents = latents[a:b]


def _finish(model, p: _Prepared, spec, schedule: str, library, outputs_dir: Path | None):
    from PIL import Image

    from lora_ui.engine.sampling import registry
    from lora_ui.engine.sampling.rng import to_uint8
    from lora_ui.engine.txt2img import Txt2ImgResult, _lora_hashes, build_infotext, save_png

    pipe = model.pipe
    req = p.item.req
    vae = pipe.vae
    with torch.no_grad():
        decoded = vae.decode(p.latents.to(vae.dtype) / vae.config.scaling_factor).sample
    arrays = to_uint8(decoded)
    label = registry.schedule_label(spec, schedule)
    hashes = _lora_hashes(library, p.item.specs) if getattr(req, "add_lora_hashes", True) else {}
    folder = Path(outputs_dir) / "txt2img-images" / date.today().isoformat() if outputs_dir else None
    result = Txt2ImgResult(warnings=list(p.item.warnings), loras=list(p.item.specs), interrupted=p.stopped)
    for seed, array in zip(p.seeds, arrays):
        image = Image.fromarray(array)
        info = build_infotext(model, req, seed=seed, width=p.width, height=p.height, lora_hashes=hashes,
                              schedule=label)
        result.images.append(image)
        result.infotexts.append(info)
        result.seeds.append(seed)
        if req.save_images and folder is not None:
            result.saved_paths.append(save_png(image, info, folder, seed))
    return result
