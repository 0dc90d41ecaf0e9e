"""`/sdapi/v1/*`: A1111's REST API over the app's core, plus the project's own compare and sweep.

Every render goes through `ctx.worker` (the one owner of the model). Handlers are plain `def`
functions, so FastAPI runs them in its thread pool and a request waiting for its render never blocks
the event loop (progress and interrupt answer while a render runs). Bad input is refused before
anything is queued, with a 422 JSON body naming the field; the worker and the model stay untouched.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import math
import os
import re
import secrets
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from lora_ui import limits as app_limits
from lora_ui.api import models as m
from lora_ui.api.errors import ApiError, ApiErrors, ApiRoute
from lora_ui.limits import MAX_CFG, MAX_CLIP_SKIP, MAX_IMAGE_BASE64_CHARS, MAX_IMAGE_PIXELS, MAX_REQUEST_SEED, Limits

PREFIX = "/sdapi/v1"
# options that name server-wide paths: command-line only (--data-dir, --outputs-dir)
PATH_OPTION_MARKERS = ("outdir", "_dir", "dir_", "path", "directory", "folder")


ApiLimits = Limits  # the API applies lora_ui.limits.Limits (the same as the UI); old name kept


class SdApi:
    """The API's handlers, bound to one AppContext (settings, models, library, worker).

    The default clip skip for requests without CLIP_stop_at_last_layers is `ctx.settings.clip_skip`
    (POST /options sets it for this run; the API object holds no state of its own)."""

    def __init__(self, ctx: Any, limits: Limits) -> None:
        self.ctx = ctx
        self.limits = limits
        # Threads that wait for renders (and model switches). Not the event loop's thread pool: a queue
        # of waiting renders never delays a listing (loras, sd-models, progress, png-info), which runs there.
        self.render_waiters = ThreadPoolExecutor(max_workers=64, thread_name_prefix="lora-ui-api-render")

    def close(self, timeout: float = 30.0) -> None:
        """Cancel waits not started and join the waiting threads (their renders end with the worker)."""
        self.render_waiters.shutdown(wait=True, cancel_futures=True)

    @property
    def clip_skip(self) -> int:
        value = getattr(getattr(self.ctx, "settings", None), "clip_skip", 1)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1

    @clip_skip.setter
    def clip_skip(self, value: int) -> None:
        settings = getattr(self.ctx, "settings", None)
        if settings is not None:
            settings.clip_skip = int(value)

    # ------------------------------------------------------------------ validation helpers
    def _check_lora_names(self, names: list[str], field: str) -> list[ApiError]:
        """Names must be plain names in the library: never paths that could leave the LoRA folders."""
        errors = []
        library = getattr(self.ctx, "library", None)
        for name in names:
            if _looks_like_path(name):
                errors.append(ApiError(field, f"LoRA name {name!r} must be a plain name (no '/', '\\', '..' "
                                              "or absolute path); use the name GET /sdapi/v1/loras lists"))
            elif library is None:
                errors.append(ApiError(field, f"LoRA {name!r} asked for, but no LoRA folder is configured"))
            elif (entry := library.resolve(name)) is not None and getattr(entry, "broken", False):
                errors.append(ApiError(field, f"LoRA {name!r} cannot be used: {getattr(entry, 'error', '') or 'broken file'}"))
            elif entry is not None and getattr(entry, "unsafe", False):
                errors.append(ApiError(field, f"LoRA {name!r} is a pickle file (.pt/.ckpt), refused: pickles can run "
                                              "code; convert it to .safetensors (or start the server with --allow-pickle)"))
            elif entry is None:
                known = sorted(e.name for e in getattr(library, "entries", []))
                shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
                errors.append(ApiError(field, f"unknown LoRA {name!r}; known LoRAs: {shown or 'none'} "
                                              "(POST /sdapi/v1/refresh-loras after adding files)"))
        return errors

    def _check_checkpoint(self, ref: Any, field: str) -> str:
        from lora_ui.engine.checkpoints import CheckpointError

        if not isinstance(ref, str) or not ref.strip():
            raise ApiError(field, f"must be a checkpoint title or name (GET /sdapi/v1/sd-models), got {ref!r}")
        listed = self.ctx.models.list()
        names = {n for c in listed for n in (c.title, c.filename, c.name, c.model_name)}
        bare = ref.strip().rsplit(" [", 1)[0] if ref.strip().endswith("]") else ref.strip()
        if ref.strip() not in names and bare not in names:
            # only listed checkpoints: an API client may not make the server load an arbitrary path
            known = ", ".join(sorted(c.title for c in listed)) or "none"
            raise ApiError(field, f"unknown checkpoint {ref!r}; known checkpoints: {known}")
        try:
            self.ctx.models.resolve(ref)
        except CheckpointError as exc:
            raise ApiError(field, str(exc)) from None
        return ref

    def _check_vae(self, choice: Any, field: str) -> str:
        from lora_ui.engine.vae import VaeError

        if not isinstance(choice, str) or not choice.strip():
            raise ApiError(field, f"must be Automatic, None or a VAE name (GET /sdapi/v1/sd-vae), got {choice!r}")
        try:
            return self.ctx.models.vaes.check_choice(choice.strip())
        except VaeError as exc:
            raise ApiError(field, str(exc)) from None

    def _is_current_checkpoint(self, ref: str) -> bool:
        current = self.ctx.worker.model or getattr(self.ctx.models, "current", None)
        if current is None:
            return False
        try:  # by path: two checkpoints may share a file name (one per --ckpt-dir folder)
            path = self.ctx.models.resolve(ref)
        except Exception:  # noqa: BLE001 - an unresolvable ref is the current model only by its own title
            return ref in {current.title, current.name, current.filename}
        if path is None or current.path is None:
            return ref in {current.title, current.name, current.filename}
        return path.resolve() == current.path.resolve()

    def _current_title(self, current) -> str:
        """The current model's title; qualified by its folder as /sd-models lists it when another
        checkpoint has the same file name (so the title selects this file)."""
        if current.path is not None:
            for info in self.ctx.models.list():
                if Path(info.path).resolve() == Path(current.path).resolve() and info.filename != current.filename:
                    return f"{info.filename} [{current.short_hash}]" if current.short_hash else info.filename
        return current.title

    @staticmethod
    def _clip_skip_override(overrides: dict[str, Any], field: str) -> int | None:
        if "CLIP_stop_at_last_layers" not in overrides:
            return None
        value = overrides["CLIP_stop_at_last_layers"]
        whole = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
                 and int(value) == value)
        if not whole or not 1 <= int(value) <= MAX_CLIP_SKIP:
            raise ApiError(field, f"must be a whole number from 1 to {MAX_CLIP_SKIP}, got {value!r}")
        return int(value)

    def build_request(self, body: m.Txt2ImgBody, extra_lora_names: list[str] = (),
                      owner: str | None = None) -> tuple[Any, str | None, list]:
        """Body -> (Txt2ImgRequest, checkpoint to render with or None, warnings). Raises ApiErrors.
        `owner`: who asked (`request_owner`), carried by the request for the worker's round-robin."""
        from lora_ui.engine.sampling import registry
        from lora_ui.engine.txt2img import Txt2ImgRequest
        from lora_ui.prompt import extract_lora_tags

        limits = self.limits
        errors: list[ApiError] = []
        if body.styles:  # A1111: the styles expand the prompt first; everything below sees the result
            from lora_ui.styles import StyleError, for_context

            try:
                prompt, negative = for_context(self.ctx).apply(body.prompt, body.negative_prompt, body.styles)
            except StyleError as exc:
                raise ApiError("styles", f"{exc} (GET /sdapi/v1/prompt-styles)") from None
            body = body.model_copy(update={"prompt": prompt, "negative_prompt": negative})

        def int_range(field: str, value: int | None, low: int, high: int) -> None:
            if value is not None and not low <= value <= high:
                errors.append(ApiError(field, f"must be between {low} and {high}, got {value}"))

        for field in ("width", "height"):
            value = getattr(body, field)
            int_range(field, value, 16, limits.max_size)
            if value is not None and 16 <= value <= limits.max_size and value % 8:
                errors.append(ApiError(field, f"{value} is not a multiple of 8"))
        int_range("steps", body.steps, 1, limits.max_steps)
        int_range("batch_size", body.batch_size, 1, limits.max_batch_size)
        int_range("n_iter", body.n_iter, 1, limits.max_batch_count)
        if body.seed < -1 or body.seed > MAX_REQUEST_SEED:
            errors.append(ApiError("seed", f"must be -1 (random) or 0 to {MAX_REQUEST_SEED}, got {body.seed}"))
        if not math.isfinite(body.cfg_scale) or not 0 <= body.cfg_scale <= MAX_CFG:
            errors.append(ApiError("cfg_scale", f"must be a number from 0 to {MAX_CFG:g}, got {body.cfg_scale}"))
        if not errors:
            model = self.ctx.worker.model or getattr(self.ctx.models, "current", None)
            for exc in limits.request_errors(prompt=body.prompt, negative_prompt=body.negative_prompt,
                                             steps=body.steps, width=body.width, height=body.height,
                                             batch_size=body.batch_size, batch_count=body.n_iter,
                                             default_size=getattr(model, "default_size", None),
                                             second_pass=_hires_cost(body, getattr(model, "default_size", None))):
                errors.append(ApiError(_API_FIELD.get(exc.field, exc.field), exc.message))
        hr = _hires_cost(body, getattr(self.ctx.worker.model or getattr(self.ctx.models, "current", None),
                                       "default_size", None))
        if hr is not None and max(hr[1], hr[2]) > limits.max_size:
            errors.append(ApiError("hr_scale", f"the hires size {hr[1]}x{hr[2]} is over {limits.max_size} px "
                                               "(--max-size)"))
        for name, value in m.unsupported_fields(body.model_extra):
            errors.append(ApiError(name, f"is not implemented by LoRA UI (got {value!r}); leave it out or at "
                                         "its A1111 default"))
        sampler_field = "sampler_name" if body.sampler_name is not None else "sampler_index"
        sampler = body.sampler_name or body.sampler_index or "Euler"  # A1111's API default
        scheduler = body.scheduler or "Automatic"
        try:  # old names ("DPM++ 2M Karras", "k_euler_a") resolve to a sampler + schedule type, as in A1111
            sampler, scheduler = registry.parse_sampler_and_schedule(sampler, scheduler, convert_automatic=False)
        except registry.SamplingError as exc:
            errors.append(ApiError("scheduler" if "schedule" in str(exc) else sampler_field, str(exc)))

        _, tags, warnings = extract_lora_tags(body.prompt)
        errors += _malformed_lora_tags(body.prompt)
        for tag in tags:
            for what, value in (("weight", tag.te), ("UNet weight", tag.unet)):
                if value is not None:
                    try:
                        limits.check_lora_weight(value, "prompt", f"<lora:{tag.name}> {what}")
                    except app_limits.LimitError as exc:
                        errors.append(ApiError("prompt", exc.message))
        errors += self._check_lora_names([t.name for t in tags], "prompt")
        errors += self._check_lora_names(list(extra_lora_names), "loras")

        overrides = body.override_settings or {}
        errors += [ApiError(f"override_settings.{key}", "not an option this app implements per request; "
                            f"valid: {', '.join(sorted(PER_REQUEST_OPTIONS))}")
                   for key in overrides if key not in PER_REQUEST_OPTIONS]
        checkpoint = None
        clip_skip = self.clip_skip
        try:
            override_clip = self._clip_skip_override(overrides, "override_settings.CLIP_stop_at_last_layers")
            if override_clip is not None:
                clip_skip = override_clip
        except ApiError as exc:
            errors.append(exc)
        if "sd_model_checkpoint" in overrides:
            try:
                ref = self._check_checkpoint(overrides["sd_model_checkpoint"], "override_settings.sd_model_checkpoint")
                checkpoint = None if self._is_current_checkpoint(ref) else ref
            except ApiError as exc:
                errors.append(exc)
        vae = None
        if "sd_vae" in overrides:
            try:
                vae = self._check_vae(overrides["sd_vae"], "override_settings.sd_vae")
            except ApiError as exc:
                errors.append(exc)
        if errors:
            raise ApiErrors(errors)
        request = Txt2ImgRequest(vae=vae,
            prompt=body.prompt, negative_prompt=body.negative_prompt, sampler=sampler, scheduler=scheduler,
            steps=body.steps, cfg_scale=body.cfg_scale, width=body.width, height=body.height, seed=body.seed,
            batch_size=body.batch_size, batch_count=body.n_iter, clip_skip=clip_skip,
            save_images=body.save_images, **sampling_fields(body, overrides), **hires_fields(body), owner=owner,
        )
        return request, checkpoint, list(warnings)

    # ------------------------------------------------------------------ txt2img
    def txt2img(self, body: m.Txt2ImgBody, watch: "JobWatch | None" = None, owner: str | None = None) -> dict[str, Any]:
        if body.script_name and body.script_name.strip():
            return self.xyz(body, watch)
        req, checkpoint, _ = self.build_request(body, owner=owner)
        return self._render(body, req, checkpoint, "txt2img", watch)

    def img2img(self, body: m.Img2ImgBody, watch: "JobWatch | None" = None, owner: str | None = None) -> dict[str, Any]:
        """A1111's /img2img: the txt2img checks, then the images decoded and the img2img fields mapped."""
        from dataclasses import asdict

        from lora_ui.engine.img2img import Img2ImgRequest

        if body.enable_hr:
            raise ApiError("enable_hr", "hires fix is a txt2img option")
        base, checkpoint, _ = self.build_request(body.model_copy(update={"enable_hr": False}), owner=owner)
        errors: list[ApiError] = []
        images = []
        for i, data in enumerate(body.init_images):
            try:
                images.append(decode_base64_image(data, f"init_images[{i}]"))
            except ApiError as exc:
                errors.append(exc)
        if not body.init_images:
            errors.append(ApiError("init_images", "needs at least one base64 image"))
        mask = None
        if body.mask:
            try:
                mask = decode_base64_image(body.mask, "mask")
            except ApiError as exc:
                errors.append(exc)
        if errors:
            raise ApiErrors(errors)
        fields = {k: v for k, v in asdict(base).items() if k not in ("init_images", "mask")}
        req = Img2ImgRequest(**{**fields, **img2img_fields(body)}, init_images=images, mask=mask)
        if body.script_name and body.script_name.strip():  # the X/Y/Z plot over img2img (Denoising axis)
            return self.xyz(body, watch, base=(req, checkpoint))
        return self._render(body, req, checkpoint, "img2img", watch)

    def _model_of(self, result: Any) -> tuple[str | None, str | None]:
        """(name, short hash) of the checkpoint that rendered `result`, from its own infotext (a Ray replica's
        render included); the loaded model's when nothing was rendered."""
        from lora_ui.infotext import parse_infotext

        fields = parse_infotext(result.infotexts[0]) if result.infotexts else {}
        if "Model" in fields:
            return str(fields["Model"]), (str(fields["Model hash"]) if "Model hash" in fields else None)
        model = self.ctx.models.current
        return (model.name, model.short_hash) if model is not None else (None, None)

    def _submit_render(self, req: Any, checkpoint: str | None, kind: str, restore: bool) -> Any:
        """Queue one render; Future of its result. Without a checkpoint override it is the worker's own
        `txt2img`/`img2img`, as from the UI: it joins mixed-LoRA batches and, with --ray, runs on a replica."""
        if checkpoint is None:
            return getattr(self.ctx.worker, kind)(req)

        def job(session):
            previous = session.model
            session.switch_model(checkpoint)
            try:
                return getattr(session, kind)(req)
            finally:
                if restore:
                    session.switch_model(str(previous.path) if previous.path is not None else None)

        owned = {"owner": req.owner} if getattr(req, "owner", None) else {}
        return self.ctx.worker.submit(job, kind=kind, job_count=req.batch_count, **owned)

    def _render(self, body: m.Txt2ImgBody, req: Any, checkpoint: str | None, kind: str,
                watch: "JobWatch | None") -> dict[str, Any]:
        started = time.time()
        future = self._submit_render(req, checkpoint, kind, body.override_settings_restore_afterwards)
        if watch is not None:
            watch.add(future, self.ctx.worker)
        result = _await_render(future)
        model_name, model_hash = self._model_of(result)
        images = [_png_base64(image, text) for image, text in zip(result.images, result.infotexts)]
        n = len(result.images)
        width, height = result.images[0].size if result.images else (req.width, req.height)
        info = {
            "prompt": req.prompt,
            "all_prompts": [req.prompt] * n,
            "negative_prompt": req.negative_prompt,
            "all_negative_prompts": [req.negative_prompt] * n,
            "seed": result.seeds[0] if result.seeds else req.seed,
            "all_seeds": list(result.seeds),
            "subseed": -1,
            "all_subseeds": [-1] * n,
            "subseed_strength": 0,
            "width": width,
            "height": height,
            "sampler_name": req.sampler,
            "scheduler": req.scheduler,
            "cfg_scale": req.cfg_scale,
            "steps": req.steps,
            "batch_size": req.batch_size,
            "n_iter": req.batch_count,
            "clip_skip": req.clip_skip,
            "sd_model_name": model_name,
            "sd_model_hash": model_hash,
            "index_of_first_image": 0,
            "infotexts": list(result.infotexts),
            "styles": list(body.styles or []),
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)),
            "extra_generation_params": {},
            "loras": [{"name": s.name, "te": s.te, "unet": s.unet} for s in result.loras],
            "warnings": list(result.warnings),
            "interrupted": bool(getattr(result, "interrupted", False)),
            "saved_paths": [str(p) for p in result.saved_paths],
        }
        if getattr(body, "include_init_images", False):
            images += [_png_base64(im, None) for im in req.init_images]
        parameters = body.model_dump(exclude=set(body.model_extra or ()) | {"init_images", "mask"})
        return {"images": images if body.send_images else [], "parameters": parameters, "info": json.dumps(info)}

    # ------------------------------------------------------------------ upscalers / extras
    def upscalers(self) -> list[dict[str, Any]]:
        items = []
        for u in self._upscalers().items():
            items.append({"name": u.name, "model_name": None if u.kind != "model" else u.name,
                          "model_path": str(u.path) if u.path else None, "model_url": None,
                          "scale": 4 if u.kind in ("lanczos", "nearest") else None})
        return items

    def _upscalers(self):
        from lora_ui.engine.upscalers import Upscalers

        worker_ups = getattr(self.ctx.worker, "upscalers", None)
        if worker_ups is not None:
            return worker_ups
        settings = getattr(self.ctx, "settings", None)
        data_dir = getattr(settings, "data_dir", None)
        return Upscalers.for_data_dir(data_dir, bool(getattr(settings, "allow_pickle", False))) if data_dir \
            else Upscalers()

    def extra_single_image(self, body: m.ExtraSingleImageBody) -> dict[str, Any]:
        """A1111's Extras upscale of one image (upscaler_1 only; a second upscaler / face restoration: 422)."""
        from lora_ui.engine.upscalers import UpscalerError, extras_upscale

        errors = [ApiError(name, "is not implemented by LoRA UI; leave it at 0")
                  for name in ("gfpgan_visibility", "codeformer_visibility", "extras_upscaler_2_visibility")
                  if getattr(body, name)]
        ups = self._upscalers()
        try:
            ups.find(body.upscaler_1)
        except UpscalerError as exc:
            errors.append(ApiError("upscaler_1", str(exc)))
        if body.resize_mode not in (0, 1):
            errors.append(ApiError("resize_mode", f"must be 0 (scale by) or 1 (scale to), got {body.resize_mode}"))
        image = None
        try:
            image = decode_base64_image(body.image, "image")
        except ApiError as exc:
            errors.append(exc)
        if errors:
            raise ApiErrors(errors)
        size = (body.upscaling_resize_w, body.upscaling_resize_h) if body.resize_mode == 1 else None
        try:
            out, info = self.ctx.worker.submit(
                lambda session: extras_upscale(ups, image.convert("RGB"), body.upscaler_1, float(body.upscaling_resize),
                                               size, body.upscaling_crop, self.limits.max_size,
                                               device=session.model.device if session.model else "cpu"),
                kind="extras").result()
        except UpscalerError as exc:
            raise ApiError("upscaling_resize" if "size" in str(exc) else "upscaler_1", str(exc)) from None
        html = ", ".join(f"{k}: {v}" for k, v in info.items())
        return {"html_info": html, "image": _png_base64(out, html)}

    # ------------------------------------------------------------------ scripts: X/Y/Z plot
    def xyz(self, body: m.Txt2ImgBody, watch: "JobWatch | None" = None,
            base: "tuple[Any, str | None] | None" = None) -> dict[str, Any]:
        """A1111's `script_name: "x/y/z plot"` with its positional `script_args`. Images: the grid, the
        Z sub-grids (with a Z axis), then every cell; info.infotexts match them one to one.
        `base`: (request, checkpoint) already built (img2img's); else built from the txt2img body."""
        from lora_ui import xyz

        if body.script_name.strip().lower() not in SCRIPTS:
            raise ApiError("script_name", f"unknown script {body.script_name!r}; available: {', '.join(SCRIPTS)} "
                                          "(GET /sdapi/v1/scripts)")
        req, checkpoint = base if base is not None else self.build_request(body)[:2]
        if checkpoint is not None:
            raise ApiError("override_settings.sd_model_checkpoint", "the X/Y/Z plot renders with the loaded model "
                           "(or its Checkpoint name axis); switch first with POST /sdapi/v1/options")
        args = list(body.script_args) + list(XYZ_ARG_DEFAULTS[len(body.script_args):])
        for index, name in XYZ_FIXED_ARGS.items():
            if bool(args[index]):
                raise ApiError("script_args", f"x/y/z plot argument {index} ({name}) is not supported by LoRA UI; "
                                              "send false")
        csv_mode = bool(args[17])
        axes = []
        for letter, start in (("x", 0), ("y", 3), ("z", 6)):
            kind, text, dropdown = args[start], args[start + 1], args[start + 2]
            try:
                axis_type = xyz.find_axis(kind if kind is not None else 0)
            except xyz.XyzError as exc:
                raise ApiError("script_args", f"{letter}_type: {exc}") from None
            use_dropdown = axis_type.choices is not None and not csv_mode and isinstance(dropdown, list) and dropdown
            axes.append(xyz.Axis(axis_type.label, list(dropdown) if use_dropdown else str(text or "")))
        try:
            plan = xyz.plan_xyz(xyz.XyzEnv(self.ctx), _single(req), axes)
        except xyz.XyzError as exc:
            raise ApiError("script_args", str(exc)) from None
        model = self.ctx.worker.model or getattr(self.ctx.models, "current", None)
        for cell in plan.cells.values():  # every cell within the limits before anything renders
            for exc in self.limits.request_errors(
                    prompt=cell.req.prompt, negative_prompt=cell.req.negative_prompt, steps=cell.req.steps,
                    width=cell.req.width, height=cell.req.height, batch_size=1, batch_count=1,
                    default_size=getattr(model, "default_size", None)):
                raise ApiError("script_args", f"a cell of the plot asks for {exc.field} beyond the limits: "
                                              f"{exc.message}")
        started = time.time()
        future = self.ctx.worker.submit(lambda session: xyz.run_xyz(session, plan), kind="xyz", job_count=plan.renders)
        if watch is not None:
            watch.add(future, self.ctx.worker)
        try:
            result = _await_render(future)
        except xyz.XyzError as exc:
            raise ApiError("script_args", str(exc)) from None
        images = [(result.grid, result.infotext)]
        if len(result.grids) > 1:
            images += [(g, result.infotext) for g in result.grids]
        for z, plane in enumerate(result.images):
            for y, row in enumerate(plane):
                for x, image in enumerate(row):
                    images.append((image, result.infotexts[z][y][x]))
        infotexts = [text for _, text in images]
        info = {
            "prompt": req.prompt, "negative_prompt": req.negative_prompt, "seed": result.seed,
            "all_seeds": [result.seed] * len(images), "infotexts": infotexts, "styles": list(body.styles or []),
            "sampler_name": req.sampler, "steps": req.steps, "cfg_scale": req.cfg_scale,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)), "index_of_first_image": 1,
            "xyz": {"labels": {"x": result.labels[0], "y": result.labels[1], "z": result.labels[2]},
                    "renders": result.renders, "missing": [list(m) for m in result.missing]},
            "warnings": list(result.warnings), "interrupted": result.interrupted,
        }
        return {"images": [_png_base64(i, t) for i, t in images] if body.send_images else [],
                "parameters": body.model_dump(exclude=set(body.model_extra or ())), "info": json.dumps(info)}

    def scripts(self) -> dict[str, list[str]]:
        return {"txt2img": list(SCRIPTS), "img2img": list(SCRIPTS)}

    def script_info(self) -> list[dict[str, Any]]:
        from lora_ui import xyz

        names = [a.label for a in xyz.AXES]
        args = []
        for letter in "XYZ":
            args += [{"label": f"{letter} type", "value": 0, "choices": names},
                     {"label": f"{letter} values", "value": ""},
                     {"label": f"{letter} values (dropdown)", "value": []}]
        args += [{"label": label, "value": value} for label, value in
                 zip(["Draw legend", "Include Sub Images", "Include Sub Grids", "Keep -1 for seeds",
                      "Vary seeds for X", "Vary seeds for Y", "Vary seeds for Z", "Grid margins (px)",
                      "Use text inputs instead of dropdowns"], XYZ_ARG_DEFAULTS[9:])]
        return [{"name": "x/y/z plot", "is_alwayson": False, "is_img2img": False, "args": args}]

    # ------------------------------------------------------------------ compare / sweep
    def compare(self, body: m.CompareBody, watch: "JobWatch | None" = None) -> dict[str, Any]:
        from lora_ui import compare as core

        req, checkpoint, _ = self.build_request(body, [lw.name for lw in body.loras])
        for lw in body.loras:
            try:
                self.limits.check_lora_weight(lw.weight, "loras", f"weight of {lw.name!r}")
            except app_limits.LimitError as exc:
                raise ApiError("loras", exc.message) from None
        if checkpoint is not None:
            raise ApiError("override_settings.sd_model_checkpoint",
                           "compare renders with the loaded model; switch it first with POST /sdapi/v1/options")
        if not 0 <= body.change_threshold <= 254:
            raise ApiError("change_threshold", f"must be from 0 to 254, got {body.change_threshold}")
        req = _single(req)
        try:
            with _request_errors_as_422():
                result = _watched(core.submit_compare(self.ctx, core.CompareRequest(
                    base=req, loras=[(lw.name, lw.weight) for lw in body.loras],
                    change_threshold=body.change_threshold)), self.ctx.worker, watch)
        except core.CompareError as exc:
            raise ApiError("loras", str(exc)) from None
        return {
            "without": _png_base64(result.without, result.without_infotext),
            "with_lora": _png_base64(result.with_lora, result.with_infotext),
            "heatmap": _png_base64(result.heatmap, None),
            "mean_abs_diff": result.stats.mean_abs_diff,
            "changed_share": result.stats.changed_share,
            "max_abs_diff": result.stats.max_abs_diff,
            "threshold": result.stats.threshold,
            "seed": result.seed,
            "without_prompt": result.without_prompt,
            "with_prompt": result.with_prompt,
            "infotexts": [result.without_infotext, result.with_infotext],
            "warnings": list(result.warnings),
        }

    def sweep(self, body: m.SweepBody, watch: "JobWatch | None" = None) -> dict[str, Any]:
        from lora_ui import compare as core

        req, checkpoint, _ = self.build_request(body, list(body.loras))
        if checkpoint is not None:
            raise ApiError("override_settings.sd_model_checkpoint",
                           "sweep renders with the loaded model; switch it first with POST /sdapi/v1/options")
        try:
            weights = core.parse_weight_list(body.weights) if isinstance(body.weights, str) else list(body.weights)
        except core.CompareError as exc:
            raise ApiError("weights", str(exc)) from None
        for weight in weights:
            try:
                self.limits.check_lora_weight(weight, "weights", "sweep weight")
            except app_limits.LimitError as exc:
                raise ApiError("weights", exc.message) from None
        try:
            with _request_errors_as_422():
                result = _watched(core.submit_sweep(self.ctx, core.SweepRequest(
                    base=_single(req), weights=weights, loras=list(body.loras))), self.ctx.worker, watch)
        except core.CompareError as exc:
            raise ApiError("weights" if "weight" in str(exc).lower() else "loras", str(exc)) from None
        return {"grid": _png_base64(result.grid, result.infotext), "weights": list(result.weights),
                "loras": list(result.loras), "seed": result.seed, "renders": result.renders,
                "infotext": result.infotext}

    # ------------------------------------------------------------------ listings and options
    def loras(self) -> list[dict[str, Any]]:
        library = getattr(self.ctx, "library", None)
        if library is None:
            return []
        return [{"name": e.name, "alias": e.alias or e.name, "path": str(e.path),
                 "metadata": _jsonable(getattr(e, "metadata", {}) or {})} for e in library.entries]

    def refresh_loras(self) -> None:
        library = getattr(self.ctx, "library", None)
        if library is not None:
            library.refresh()

    def sd_models(self) -> list[dict[str, Any]]:
        return [{"title": c.title, "model_name": c.model_name, "hash": c.short_hash, "sha256": None,
                 "filename": str(c.path), "config": None} for c in self.ctx.models.list()]

    def options(self) -> dict[str, Any]:
        current = self.ctx.worker.model or getattr(self.ctx.models, "current", None)
        outputs = getattr(self.ctx.worker, "outputs_dir", None)
        return {
            "sd_model_checkpoint": self._current_title(current) if current is not None else None,
            "sd_vae": self.ctx.models.vaes.selection,
            "sd_checkpoint_hash": current.short_hash if current is not None else None,
            "CLIP_stop_at_last_layers": self.clip_skip,
            "samples_save": True,
            "samples_format": "png",
            "outdir_txt2img_samples": str(outputs / "txt2img-images") if outputs is not None else "",
        }

    def set_options(self, body: dict[str, Any]) -> dict[str, Any]:
        for key in body:
            if any(marker in str(key).lower() for marker in PATH_OPTION_MARKERS):
                raise ApiError(str(key), "server-wide paths are set on the command line only (--data-dir, "
                                         "--outputs-dir), never through the API", status=403)
        clip = self._clip_skip_override(body, "CLIP_stop_at_last_layers")
        ref = None
        if "sd_model_checkpoint" in body:
            ref = self._check_checkpoint(body["sd_model_checkpoint"], "sd_model_checkpoint")
        vae = self._check_vae(body["sd_vae"], "sd_vae") if "sd_vae" in body else None
        if clip is not None:
            self.clip_skip = clip
        if vae is not None:
            self.ctx.models.vaes.selection = vae
            if getattr(self.ctx, "settings", None) is not None and hasattr(self.ctx.settings, "sd_vae"):
                self.ctx.settings.sd_vae = vae
        if ref is not None and not self._is_current_checkpoint(ref):
            from lora_ui.engine.checkpoints import CheckpointError

            try:
                self.ctx.worker.switch_model(ref).result()
            except CheckpointError as exc:
                raise ApiError("sd_model_checkpoint", str(exc)) from None
        known = {"sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"}
        return {"updated": sorted(k for k in body if k in known), "ignored": sorted(k for k in body if k not in known)}

    def sd_vae(self) -> list[dict[str, Any]]:
        return [{"model_name": v.name, "filename": str(v.path)} for v in self.ctx.models.vaes.list()]

    def embeddings(self) -> dict[str, Any]:
        """A1111's shape: loaded/skipped for the current model, each {step, sd_checkpoint, ..., shape, vectors}."""
        library = self.ctx.models.embeddings
        model = self.ctx.worker.model or getattr(self.ctx.models, "current", None)
        if model is None or getattr(model, "pipe", None) is None:
            return {"loaded": {}, "skipped": {n: e.info() for n, e in library.entries.items()}}
        loaded, skipped = library.split(model)
        return {"loaded": {n: e.info() for n, e in loaded.items()},
                "skipped": {n: {**e.info(), "reason": reason} for n, (e, reason) in skipped.items()}}

    def prompt_styles(self) -> list[dict[str, Any]]:
        from lora_ui.styles import for_context

        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in for_context(self.ctx).styles()]

    def progress(self, skip_current_image: bool) -> dict[str, Any]:
        state = self.ctx.worker.progress(with_preview=not skip_current_image)
        started = state.job_started_at
        return {
            "progress": state.progress,
            "eta_relative": state.eta_relative,
            "state": {
                "skipped": state.skipped, "interrupted": state.interrupted, "stopping_generation": False,
                "job": state.job, "job_count": state.job_count if state.active else 0,
                "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)) if started else "0",
                "job_no": state.job_no, "sampling_step": state.sampling_step,
                "sampling_steps": state.sampling_steps,
            },
            "current_image": base64.b64encode(state.preview_png).decode("ascii") if state.preview_png else None,
            "textinfo": state.textinfo or None,
            "current_task": state.job_id,
        }

    def png_info(self, body: m.PngInfoBody) -> dict[str, Any]:
        from lora_ui.infotext import InfotextError, parse_infotext, read_infotext

        image = decode_base64_image(body.image, "image")
        try:
            text = read_infotext(image) or ""
        except InfotextError as exc:
            raise ApiError("image", str(exc)) from None
        items = {k: _jsonable(v) for k, v in (image.info or {}).items()
                 if k not in ("parameters", "exif", "icc_profile", "dpi", "transparency") and isinstance(k, str)}
        return {"info": text, "items": items, "parameters": parse_infotext(text) if text else {}}

    def memory(self) -> dict[str, Any]:
        import torch

        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        free = os.sysconf("SC_AVPHYS_PAGES") * page
        rss = _process_rss()
        ram = {"free": free, "used": total - free, "total": total, "process_rss": rss}
        if torch.cuda.is_available():
            cuda_free, cuda_total = torch.cuda.mem_get_info()
            cuda: dict[str, Any] = {
                "system": {"free": cuda_free, "used": cuda_total - cuda_free, "total": cuda_total},
                "allocated": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()},
                "reserved": {"current": torch.cuda.memory_reserved(), "peak": torch.cuda.max_memory_reserved()},
            }
        else:
            cuda = {"error": "CUDA is not available on this machine"}
        return {"ram": ram, "cuda": cuda}


# ---------------------------------------------------------------------------------------- helpers
def _looks_like_path(name: str) -> bool:
    return ("/" in name or "\\" in name or ".." in name or PurePosixPath(name).is_absolute()
            or PureWindowsPath(name).is_absolute() or bool(PureWindowsPath(name).drive) or "\x00" in name)


_LORA_TAG_RE = re.compile(r"<(lora|lyco):([^<>]*)>", re.IGNORECASE)


# override_settings key (A1111's option name) -> Txt2ImgRequest field, for the options that change sampling
SAMPLING_OVERRIDES = {"eta_noise_seed_delta": "ensd", "randn_source": "rng", "sigma_min": "sigma_min",
                      "sigma_max": "sigma_max", "rho": "rho", "eta_ancestral": "eta", "s_churn": "s_churn",
                      "s_tmin": "s_tmin", "s_tmax": "s_tmax", "s_noise": "s_noise"}


PER_REQUEST_OPTIONS = frozenset({"sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "eta_ddim",
                                 *SAMPLING_OVERRIDES})

SCRIPTS = ("x/y/z plot",)
# A1111's x/y/z plot script_args after the three axes: draw_legend, include_lone_images, include_sub_grids,
# no_fixed_seeds, vary_seeds_x/y/z, margin_size, csv_mode
XYZ_ARG_DEFAULTS = (0, "", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False)
XYZ_FIXED_ARGS = {12: "Keep -1 for seeds", 13: "Vary seeds for X", 14: "Vary seeds for Y", 15: "Vary seeds for Z"}


def sampling_fields(body: m.Txt2ImgBody, overrides: dict[str, Any]) -> dict[str, Any]:
    """The A1111 sampling fields of a body (+ the sampling options in override_settings) as
    Txt2ImgRequest fields; values are checked by the engine's validation (a 422 naming the field)."""
    fields: dict[str, Any] = {
        "subseed": body.subseed, "subseed_strength": body.subseed_strength,
        "seed_resize_from_w": max(0, body.seed_resize_from_w), "seed_resize_from_h": max(0, body.seed_resize_from_h),
        "eta": body.eta, "s_churn": body.s_churn, "s_tmin": body.s_tmin, "s_noise": body.s_noise,
        "s_tmax": body.s_tmax if body.s_tmax is not None else 0.0,
    }
    for option, name in SAMPLING_OVERRIDES.items():
        if option in overrides:
            fields[name] = overrides[option]
    if fields["eta"] is None and "eta_ddim" in overrides and body.sampler_name in ("DDIM", "DDIM CFG++"):
        fields["eta"] = overrides["eta_ddim"]
    return fields


def hires_fields(body: m.Txt2ImgBody) -> dict[str, Any]:
    """A1111 txt2img hires fields as Txt2ImgRequest fields (checked by the engine: a 422 naming the field)."""
    return {
        "enable_hr": bool(body.enable_hr),
        "denoising_strength": 0.7 if body.denoising_strength is None else body.denoising_strength,
        "hr_scale": body.hr_scale, "hr_upscaler": body.hr_upscaler or "Latent",
        "hr_second_pass_steps": body.hr_second_pass_steps, "hr_resize_x": body.hr_resize_x,
        "hr_resize_y": body.hr_resize_y, "hr_sampler_name": body.hr_sampler_name or "",
        "hr_scheduler": body.hr_scheduler or "", "hr_prompt": body.hr_prompt or "",
        "hr_negative_prompt": body.hr_negative_prompt or "",
    }


def img2img_fields(body: m.Img2ImgBody) -> dict[str, Any]:
    blur = body.mask_blur if body.mask_blur is not None else max(body.mask_blur_x, body.mask_blur_y)
    return {"enable_hr": False, "resize_mode": body.resize_mode,
            "denoising_strength": 0.75 if body.denoising_strength is None else body.denoising_strength,
            "mask_blur": blur, "inpainting_fill": body.inpainting_fill,
            "inpaint_full_res": bool(body.inpaint_full_res), "inpaint_full_res_padding": body.inpaint_full_res_padding,
            "inpainting_mask_invert": body.inpainting_mask_invert}


def _hires_cost(body: m.Txt2ImgBody, default_size: int | None) -> tuple[int, int, int] | None:
    """(steps, width, height) of the hires pass for the cost cap, or None (no hires / not computable)."""
    if not body.enable_hr or not isinstance(body.hr_scale, (int, float)) or not math.isfinite(body.hr_scale):
        return None
    from lora_ui.engine.hires import target_size

    w, h = body.width or default_size, body.height or default_size
    if not w or not h or min(w, h) <= 0 or body.hr_resize_x < 0 or body.hr_resize_y < 0:
        return None
    t = target_size(w, h, float(body.hr_scale), body.hr_resize_x, body.hr_resize_y)
    return (body.hr_second_pass_steps or body.steps), max(t.width, 1), max(t.height, 1)


def sampler_options_item(spec) -> dict[str, Any]:
    """A1111's /samplers "options" of one sampler: its Automatic schedule and flags."""
    options: dict[str, Any] = {}
    if spec.schedule:
        options["scheduler"] = spec.schedule
    for flag, key in (("second_order", "second_order"), ("brownian", "brownian_noise"), ("uses_ensd", "uses_ensd"),
                      ("discard_penultimate", "discard_next_to_last_sigma")):
        if getattr(spec, flag):
            options[key] = True
    options.update({k: v for k, v in spec.extra.items()})
    return options


def schedule_item(st) -> dict[str, Any]:
    """A1111's /schedulers entry; `need_inner_model`: the schedule reads the model's own sigma table."""
    return {"name": st.key, "label": st.name, "aliases": list(st.aliases) or None, "default_rho": st.default_rho,
            "need_inner_model": st.key in ("automatic", "uniform", "sgm_uniform", "simple", "normal", "ddim")}


def _malformed_lora_tags(prompt: str) -> list[ApiError]:
    """The UI drops a malformed `<lora:...>` tag with a warning; an API client gets a 422 instead,
    since it asked for a LoRA it would silently not get (e.g. a path such as `<lora:C:\\x:1>`)."""
    from lora_ui.prompt import PromptSyntaxError, parse_lora_tag

    errors = []
    for match in _LORA_TAG_RE.finditer(prompt):
        try:
            parse_lora_tag(match.group(1), match.group(2), text=match.group(0))
        except PromptSyntaxError as exc:
            errors.append(ApiError("prompt", str(exc)))
    return errors


def _single(req: Any) -> Any:
    from dataclasses import replace

    return replace(req, batch_size=1, batch_count=1)


@contextmanager
def _request_errors_as_422():
    """Engine errors caused by the request (raised on the worker thread, re-raised by `.result()`)
    become 422 naming the field; anything else stays an exception (500)."""
    from lora_ui.engine.checkpoints import CheckpointError
    from lora_ui.engine.txt2img import RequestError
    from lora_ui.engine.vae import VaeError
    from lora_ui.lora.spec import LoraError

    try:
        yield
    except RequestError as exc:
        raise ApiError(_API_FIELD.get(exc.field, exc.field), str(exc).split(": ", 1)[-1]) from None
    except LoraError as exc:
        raise ApiError("prompt", str(exc)) from None
    except CheckpointError as exc:
        raise ApiError("override_settings.sd_model_checkpoint", str(exc)) from None
    except VaeError as exc:
        raise ApiError("override_settings.sd_vae", str(exc)) from None


def _await_render(future: Any) -> Any:
    with _request_errors_as_422():
        return future.result()


_API_FIELD = {"sampler": "sampler_name", "batch_count": "n_iter", "clip_skip": "override_settings.CLIP_stop_at_last_layers"}


def _png_base64(image: Any, infotext: str | None) -> str:
    from lora_ui.infotext import png_info_with_infotext

    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=png_info_with_infotext(infotext) if infotext else None)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_base64_image(data: str, field: str):
    """base64 (optionally a data: URL) -> a loaded PIL image; ApiError naming `field` otherwise."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BASE64_CHARS:
        raise ApiError(field, f"is {len(data)} characters; at most {MAX_IMAGE_BASE64_CHARS} are accepted")
    text = data.strip()
    if text.startswith("data:"):
        text = text.split(",", 1)[1] if "," in text else ""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(field, "is not valid base64") from None
    if not raw:
        raise ApiError(field, "is empty")
    try:
        image = Image.open(io.BytesIO(raw))
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:  # checked from the header, before decoding a pixel
            raise ApiError(field, f"is a {width}x{height} image; at most {MAX_IMAGE_PIXELS} pixels are decoded")
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, EOFError,
            SyntaxError, struct.error) as exc:
        raise ApiError(field, f"is base64 but not a readable image ({type(exc).__name__})") from None
    return image


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _process_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class JobWatch:
    """The worker jobs one HTTP request submitted; `cancel()` (the client went away) cancels a queued
    job or interrupts the running one, and cancels any job the request submits afterwards."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: list[tuple[Any, Any]] = []
        self.cancelled = False

    def add(self, future: Any, worker: Any) -> None:
        with self._lock:
            self._jobs.append((future, worker))
            cancelled = self.cancelled
        if cancelled:
            _stop_job(future, worker)

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            jobs = list(self._jobs)
        for future, worker in jobs:
            _stop_job(future, worker)


def _watched(future: Any, worker: Any, watch: "JobWatch | None") -> Any:
    """The job's result, the job registered with the request's watch first (a client that goes away
    cancels it while queued, or interrupts it while it runs)."""
    if watch is not None:
        watch.add(future, worker)
    return future.result()


def _stop_job(future: Any, worker: Any) -> None:
    """Cancel a queued job, interrupt a running one. A render on a Ray replica (its future has no local
    job id) is cancelled while queued and otherwise finishes there: no local job is interrupted for it."""
    job_id = getattr(future, "job_id", None)
    if not future.cancel() and not future.done() and job_id is not None:
        worker.interrupt(job_id)


async def run_render(request: Any, waiters: ThreadPoolExecutor, call: Callable[["JobWatch"], Any]) -> Any:
    """Run `call(watch)` (which submits to the worker and waits) on a render-waiting thread; when the
    HTTP client disconnects first, the job is cancelled/interrupted and nothing is answered."""
    loop = asyncio.get_running_loop()
    watch = JobWatch()
    task = asyncio.ensure_future(loop.run_in_executor(waiters, call, watch))

    async def client_gone() -> None:
        while True:
            message = await request.receive()
            if message.get("type") == "http.disconnect":
                return

    watcher = asyncio.ensure_future(client_gone())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not watcher.done():
            watcher.cancel()
    if task in done:
        return task.result()
    watch.cancel()
    try:
        await task
    except Exception:  # noqa: BLE001 - the client is gone; the job's end is logged by the worker
        pass
    return Response(status_code=499)


# ---------------------------------------------------------------------------------------- wiring
def request_owner(request: Any, auth: list[tuple[str, str]] | None) -> str:
    """Who an API request is from, for the worker's round-robin: "api-user:NAME" with auth on (the
    dependency has already checked the credentials), else "api-client:HOST" (the client address)."""
    if auth:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                return "api-user:" + base64.b64decode(token, validate=True).decode("utf-8").partition(":")[0]
            except (binascii.Error, UnicodeDecodeError, ValueError):
                pass
    client = getattr(request, "client", None)
    return f"api-client:{getattr(client, 'host', None) or 'unknown'}"


def _auth_dependency(auth: list[tuple[str, str]] | None):
    basic = HTTPBasic(auto_error=False)

    def check(credentials: HTTPBasicCredentials | None = Depends(basic)) -> None:
        if not auth:
            return
        if credentials is not None:
            for user, password in auth:
                user_ok = secrets.compare_digest(credentials.username.encode(), user.encode())
                password_ok = secrets.compare_digest(credentials.password.encode(), password.encode())
                if user_ok and password_ok:
                    return
        raise HTTPException(status_code=401, detail="Incorrect or missing credentials (HTTP Basic, --api-auth)",
                            headers={"WWW-Authenticate": "Basic"})

    return check


def build_router(ctx: Any, auth: list[tuple[str, str]] | None, limits: Limits | None = None,
                 api: SdApi | None = None) -> APIRouter:
    """The /sdapi/v1 routes over `api` (a new SdApi over ctx if None; its owner closes it)."""
    api = api or SdApi(ctx, limits or app_limits.of(getattr(ctx, "settings", None)))
    router = APIRouter(prefix=PREFIX, route_class=ApiRoute, dependencies=[Depends(_auth_dependency(auth))])
    a1111 = ["A1111-compatible"]
    own = ["LoRA UI"]

    @router.post("/txt2img", response_model=m.Txt2ImgResponse, tags=a1111)
    async def txt2img(body: m.Txt2ImgBody, request: Request):
        """Render; `<lora:name:weight>` tags in the prompt apply LoRAs for this request only. A client
        that disconnects cancels its job."""
        owner = request_owner(request, auth)
        return await run_render(request, api.render_waiters, lambda watch: api.txt2img(body, watch, owner))

    @router.get("/loras", response_model=list[m.LoraItem], tags=a1111)
    def loras():
        return api.loras()

    @router.post("/refresh-loras", tags=a1111)
    def refresh_loras():
        return api.refresh_loras()

    @router.get("/sd-models", response_model=list[m.SdModelItem], tags=a1111)
    def sd_models():
        return api.sd_models()

    @router.post("/refresh-checkpoints", tags=a1111)
    def refresh_checkpoints():
        return None  # checkpoint folders are listed live on every GET /sd-models (and the UI's picker)

    @router.get("/sd-vae", response_model=list[m.SdVaeItem], tags=a1111)
    def sd_vae():
        """VAE files in models/VAE (--vae-dir); choose one with POST /options {"sd_vae": name} or per
        request with override_settings.sd_vae ("Automatic", "None" or a name)."""
        return api.sd_vae()

    @router.post("/refresh-vae", tags=a1111)
    def refresh_vae():
        ctx.models.vaes.refresh()
        return None

    @router.get("/embeddings", tags=a1111)
    def embeddings():
        """Textual-inversion embeddings: loaded (fit the current model) and skipped (with the reason)."""
        return api.embeddings()

    @router.post("/refresh-embeddings", tags=a1111)
    def refresh_embeddings():
        ctx.models.embeddings.refresh()
        return None

    @router.get("/prompt-styles", response_model=list[m.PromptStyleItem], tags=a1111)
    def prompt_styles():
        """Styles from styles.csv in the data dir; apply with the txt2img `styles` field."""
        return api.prompt_styles()

    @router.get("/scripts", tags=a1111)
    def scripts():
        return api.scripts()

    @router.get("/script-info", tags=a1111)
    def script_info():
        return api.script_info()

    @router.get("/options", tags=a1111)
    def get_options():
        return api.options()

    @router.post("/options", tags=a1111)
    async def set_options(body: dict[str, Any], request: Request):
        """`sd_model_checkpoint` switches the model (through the worker, between renders);
        `CLIP_stop_at_last_layers` sets the default clip skip. Paths are refused (command line only);
        other keys are ignored and listed as such."""
        return await run_render(request, api.render_waiters, lambda watch: api.set_options(body))

    @router.get("/samplers", response_model=list[m.SamplerItem], tags=a1111)
    def samplers():
        """Every sampler, as A1111 lists them: name, aliases, options (its Automatic schedule type...)."""
        from lora_ui.engine.sampling.registry import SAMPLERS

        return [{"name": s.name, "aliases": list(s.aliases), "options": sampler_options_item(s)} for s in SAMPLERS]

    @router.get("/schedulers", response_model=list[m.SchedulerItem], tags=a1111)
    def schedulers():
        """Every schedule type, as A1111 lists them (name, label, aliases, default_rho, need_inner_model)."""
        from lora_ui.engine.sampling.schedules import SCHEDULE_TYPES

        return [schedule_item(st) for st in SCHEDULE_TYPES]

    # progress / interrupt / skip are `async`: they run on the event loop, so they answer even while
    # every thread of the pool is busy waiting for a queued render
    @router.get("/progress", response_model=m.ProgressResponse, tags=a1111)
    async def progress(skip_current_image: bool = False):
        return api.progress(skip_current_image)

    @router.post("/interrupt", tags=a1111)
    async def interrupt():
        ctx.worker.interrupt()
        return {}

    @router.post("/skip", tags=a1111)
    async def skip():
        ctx.worker.skip()
        return {}

    @router.post("/png-info", response_model=m.PngInfoResponse, tags=a1111)
    def png_info(body: m.PngInfoBody):
        return api.png_info(body)

    @router.get("/memory", tags=a1111)
    def memory():
        return api.memory()

    # Listings A1111 clients read at start-up; this app has none of these, so they are empty.
    empty_lists = ("hypernetworks", "face-restorers")
    for path in empty_lists:
        router.add_api_route(f"/{path}", lambda: [], methods=["GET"], tags=a1111, name=path,
                             summary="Always empty here (A1111 clients read it at start-up)")

    @router.post("/img2img", response_model=m.Txt2ImgResponse, tags=a1111)
    async def img2img(body: m.Img2ImgBody, request: Request):
        """img2img / inpainting (base64 init_images and mask); A1111's fields and defaults."""
        owner = request_owner(request, auth)
        return await run_render(request, api.render_waiters, lambda watch: api.img2img(body, watch, owner))

    @router.get("/upscalers", response_model=list[m.UpscalerItem], tags=a1111)
    def upscalers():
        return api.upscalers()

    @router.get("/latent-upscale-modes", response_model=list[m.LatentUpscaleModeItem], tags=a1111)
    def latent_upscale_modes():
        from lora_ui.engine.hires import LATENT_UPSCALE_MODES

        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    @router.post("/extra-single-image", response_model=m.ExtraSingleImageResponse, tags=a1111)
    def extra_single_image(body: m.ExtraSingleImageBody):
        return api.extra_single_image(body)

    @router.post("/lora-ui/compare", response_model=m.CompareResponse, tags=own,
                 summary="Render without and with LoRAs at one seed; difference numbers and heatmap")
    async def compare(body: m.CompareBody, request: Request):
        """The same request twice at one fixed seed: once with every LoRA tag removed, once with the
        prompt's tags plus `loras`. Returns both images, a heatmap of |with - without| and its numbers."""
        return await run_render(request, api.render_waiters, lambda watch: api.compare(body, watch))

    @router.post("/lora-ui/sweep", response_model=m.SweepResponse, tags=own,
                 summary="Weight sweep: a labelled grid of LoRA (rows) x weight (columns)")
    async def sweep(body: m.SweepBody, request: Request):
        """Renders each LoRA at each weight at one seed (weight 0 = the shared baseline, rendered once)
        and returns the labelled grid PNG (infotext embedded)."""
        return await run_render(request, api.render_waiters, lambda watch: api.sweep(body, watch))

    @router.get("/openapi.json", include_in_schema=False)
    def openapi_json():
        return get_openapi(title="LoRA UI API", version="1", routes=router.routes,
                           description="A1111-compatible /sdapi/v1 endpoints and LoRA UI's own compare/sweep.")

    @router.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs():
        return get_swagger_ui_html(openapi_url=f"{PREFIX}/openapi.json", title="LoRA UI API")

    return router


def create_api(app: FastAPI, ctx: Any, auth: list[tuple[str, str]] | None = None,
               limits: Limits | None = None) -> SdApi:
    """Add the `/sdapi/v1/*` routes to `app` (the FastAPI app gradio serves, or any FastAPI app).

    auth: HTTP Basic (user, password) pairs (`--api-auth`, else `--gradio-auth`: webui.py passes the UI's
    credentials when the API has none); None or empty -> no authentication. A RequestGuard (body size,
    JSON depth, auth on /openapi.json and /docs) is put in front of the whole app.
    Our routes are moved to the front of the app's route list, so a catch-all route the app may
    already have (gradio's) cannot shadow them. Returns the SdApi: the caller closes it (`api.close()`)
    after the server stopped."""
    from lora_ui.api import guard

    limits = limits or app_limits.of(getattr(ctx, "settings", None))
    api = SdApi(ctx, limits)
    router = build_router(ctx, auth, limits, api)
    guard.install(app, max_body_bytes=limits.max_body_bytes, api_prefix=PREFIX, auth=auth)
    before = list(app.router.routes)
    app.include_router(router)
    added = [r for r in app.router.routes if r not in before]
    app.router.routes[:] = added + before
    app.openapi_schema = None  # regenerate the app's own schema (if it has one) with our routes
    return api
