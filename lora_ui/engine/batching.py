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
from pathlib import Path
from typing import Any, Callable

import torch

from lora_ui.limits import MAX_SEED
from lora_ui.lora.mixed import MixedLoras, RowMap

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
    """What requests must share to be sampled together (txt2img.sampling_key plus the model), or None
    when this one never shares (invalid fields, batch_count > 1, a sampler whose steps depend on the
    whole batch)."""
    from lora_ui.engine.sampling import registry
    from lora_ui.engine.txt2img import sampling_key

    try:
        key = sampling_key(model, req)
    except (ValueError, registry.SamplingError):
        return None
    if key[2] in NOT_BATCHABLE_SAMPLERS or int(req.batch_count) != 1:
        return None
    return (model.name, str(model.path), id(model.pipe), *key)


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
    subseeds: list[int]
    text: str
    conds: Any          # ScheduledConds
    lengths: frozenset
    latents: torch.Tensor | None = None
    stopped: bool = False
    ti_hashes: str | None = None


def render_batch(model, items: list[BatchItem], *, manager, mixed: bool = True, library=None,
                 outputs_dir: Path | None = None) -> list:
    """Render `items` together (see the module doc). Returns one Txt2ImgResult or exception per item.

    mixed=False: exactly one item, its LoRA set applied through `manager` (its own mode): the
    one-by-one reference path. mixed=True: the manager is cleared and `MixedLoras` serves every set.
    Raises (for the whole batch) NotMixable / LoraError from building the mixed LoRAs."""
    from lora_ui.engine.sampling import registry
    from lora_ui.engine.txt2img import (RequestError, embeddings_for, encode_conds, model_schedule, prompt_steps,
                                        sampling_options, seeds_for, validate)
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
        req = item.req
        seed = int(req.seed) if req.seed >= 0 else random.randint(0, MAX_SEED)
        subseed = int(req.subseed) if req.subseed >= 0 else random.randint(0, MAX_SEED)
        seeds, subseeds = seeds_for(req, seed, subseed, 0)
        text, _, _ = extract_lora_tags(req.prompt)
        prepared.append(_Prepared(k, item, width, height, seeds, subseeds, text, None, frozenset()))
    if not prepared:
        return outcomes
    if len(keys) != 1 or None in keys:
        raise ValueError("render_batch: the requests do not share checkpoint, size, sampler, schedule, steps and CFG")
    req0 = prepared[0].item.req
    plan = registry.plan(req0.sampler, req0.scheduler, int(req0.steps), model_schedule(model),
                         sampling_options(model, req0))

    ti = embeddings_for(model)
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
                encode = lambda: encode_conds(model, p.item.req, p.text, negative, len(p.seeds),  # noqa: E731
                                              prompt_steps(plan), ti)
                if lora_set is not None:
                    with lora_set.uniform(s):
                        p.conds, p.ti_hashes = encode()
                else:
                    p.conds, p.ti_hashes = encode()
                p.lengths = frozenset(_cond_lengths(p.conds))
            # equal conditioning lengths sample together (one UNet call per denoiser call)
            partitions: dict[frozenset, list[int]] = {}
            for s, p in enumerate(prepared):
                key = p.lengths if len(p.lengths) == 1 else frozenset({-1 - s})
                partitions.setdefault(key, []).append(s)
            for members in partitions.values():
                _sample(model, [prepared[s] for s in members], members, lora_set, manager, plan, req0)
            for p in prepared:
                outcomes[p.index] = _finish(model, p, plan, library, outputs_dir)
    finally:
        if lora_set is not None:
            lora_set.close()
    return outcomes


def _sample(model, group: list[_Prepared], set_indices: list[int], lora_set, manager, plan, req0) -> None:
    """One sampling loop over the images of `group`: txt2img's own pass (denoiser, RNG, sampler), the UNet
    wrapped for mixed LoRA rows; sets each request's latents (its last x0 estimate when it stopped)."""
    from lora_ui.engine.txt2img import GenerationInterrupted, latent_shape, make_rng, pass_of, sample_pass

    pipe = model.pipe
    p0 = group[0]
    seeds = [s for p in group for s in p.seeds]
    subseeds = [s for p in group for s in p.subseeds]
    image_sets = [s for s, p in zip(set_indices, group) for _ in p.seeds]
    per_request = [p.conds for p in group]

    def step_conds(call: int):
        return [ic for conds in per_request for ic in conds(call)]

    terms = [len(ic.terms) for ic in step_conds(0)]
    unet = None
    if lora_set is not None and len(group) == 1:
        unet = MixedUNet(pipe.unet, lora_set, uniform=set_indices[0])
    elif lora_set is not None:
        unet = MixedUNet(pipe.unet, lora_set, RowMap.for_cfg(image_sets, image_sets, terms))
    rng = make_rng(model, req0, seeds, subseeds, latent_shape(pipe, p0.width, p0.height), plan)
    bounds, start = [], 0
    for p in group:
        bounds.append((start, start + len(p.seeds)))
        start += len(p.seeds)

    def each_request(done: int, total: int, x0) -> None:
        """Progress to every request still running; one that raises GenerationInterrupted stops alone."""
        for p, (a, b) in zip(group, bounds):
            if p.stopped or p.item.on_step is None:
                continue
            try:
                p.item.on_step(done, total, x0[a:b])
            except GenerationInterrupted:
                p.stopped = True
                p.latents = x0[a:b].clone()
        if all(p.stopped for p in group):
            raise _AllStopped()

    try:
        sampled = sample_pass(model, pass_of(model, req0), step_conds, rng, p0.width, p0.height,
                              manager if lora_set is None else None, each_request, unet=unet)
    except _AllStopped:
        return
    for p, (a, b) in zip(group, bounds):
        if not p.stopped:
            p.latents = sampled.latents[a:b]


def _finish(model, p: _Prepared, plan, library, outputs_dir: Path | None):
    """The request's result, exactly as txt2img.generate finishes one (decode, infotext, save)."""
    from lora_ui.engine.txt2img import Txt2ImgResult, _lora_hashes, finish_images, outputs_folder

    req = p.item.req
    hashes = _lora_hashes(library, p.item.specs) if getattr(req, "add_lora_hashes", True) else {}
    result = Txt2ImgResult(warnings=list(p.item.warnings), loras=list(p.item.specs), interrupted=p.stopped)
    finish_images(model, req, p.latents, p.seeds, p.subseeds, p.width, p.height, hashes, plan,
                  outputs_folder(outputs_dir), result, ti_hashes=p.ti_hashes)
    return result
