"""AppContext: the app's parts, built once from Settings and passed to the UI and the REST API.

    ctx = AppContext.build(settings)     # ModelManager, LoraLibrary (refreshed), Worker (thread started)
    ctx.models.require()                 # load the configured / default model now (else on first job)
    ...
    ctx.close()                          # stop the worker

Tolerant of parts not present: without `lora_ui.library` the library is None (prompts' LoRA tags then
produce a warning); the LoRA engine is imported by the worker only when a model is first used.
No gradio here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lora_ui.engine.checkpoints import ModelManager
from lora_ui.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class AppContext:
    settings: Settings
    models: ModelManager
    library: Any            # lora_ui.library.LoraLibrary | None
    worker: Any             # lora_ui.engine.worker.Worker | None

    @classmethod
    def build(cls, settings: Settings, *, start_worker: bool = True, refresh_library: bool = True) -> "AppContext":
        models = ModelManager(settings)
        library = build_library(settings, refresh=refresh_library)
        worker = build_worker(settings, models, library) if start_worker else None
        return cls(settings=settings, models=models, library=library, worker=worker)

    def close(self, timeout: float = 30.0) -> bool:
        """Stop and join every thread the app started (worker, LoRA background work, hashing).
        Returns False when something did not stop within `timeout` (each part logs which)."""
        done = True
        if self.worker is not None:
            done = self.worker.shutdown(timeout=timeout) and done
        if self.library is not None and hasattr(self.library, "close"):
            done = self.library.close(timeout) and done
        return done


def build_library(settings: Settings, *, refresh: bool = True):
    """The LoRA library over settings.lora_dirs (missing folders are fine), or None if the module is absent."""
    try:
        from lora_ui.library import LoraLibrary
    except ImportError as e:
        log.warning("LoRA library unavailable (%s); <lora:...> tags will be ignored", e)
        return None
    library = LoraLibrary([d for d in settings.lora_dirs], cache_dir=settings.cache_dir,
                          allow_pickle=settings.allow_pickle)
    if refresh:
        report = library.refresh()
        log.info("LoRA library: %s", report)
        # Hashes (for infotext and paste-by-hash) are computed in the background, cached on disk.
        library.start_background_hashing()
    return library


def build_worker(settings: Settings, models: ModelManager, library):
    """The one Worker: renders `models.require()` (loaded on first use) and switches through the manager."""
    from lora_ui.engine.worker import Worker

    def lora_manager_factory(pipe):
        from lora_ui.lora.manager import LoraManager

        return LoraManager(pipe, allow_pickle=settings.allow_pickle)

    from lora_ui.engine.upscalers import Upscalers

    worker = Worker.for_model_manager(models, library=library, outputs_dir=settings.outputs_path,
                                      lora_manager_factory=lora_manager_factory,
                                      upscalers=Upscalers.for_data_dir(settings.data_dir, settings.allow_pickle))
    if getattr(settings, "ray", False):  # --ray: txt2img goes to Ray Serve, compound jobs stay here
        from lora_ui.scale.ray_backend import ray_worker_for_settings

        try:
            return ray_worker_for_settings(settings, worker)
        except BaseException:
            worker.shutdown()
            raise
    return worker
