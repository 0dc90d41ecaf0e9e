#!/usr/bin/env python3
"""LoRA UI entry point: flags -> Settings -> AppContext -> gradio web UI (+ /sdapi/v1 with --api).

    python webui.py                       # http://127.0.0.1:7860 with the embedded demo model
    python webui.py --data-dir ~/stable-diffusion-webui --api
    python webui.py --help                # every flag
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("lora_ui")


def _quiet_environment() -> None:
    """No telemetry and no hub access (everything ships with the app); a proxy must not catch localhost."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    for var in ("NO_PROXY", "no_proxy"):
        current = os.environ.get(var, "")
        if "127.0.0.1" not in current:
            os.environ[var] = ",".join(x for x in (current, "127.0.0.1,localhost") if x)


def api_credentials(settings) -> list[tuple[str, str]]:
    """Who may use the REST API: --api-auth, else the UI's --gradio-auth (a password set for the UI
    covers everything), else nobody needs one."""
    return list(settings.api_auth or settings.gradio_auth or [])


def security_warnings(settings) -> list[str]:
    """What is exposed without a password when listening on the network."""
    warnings = []
    if settings.listen and not settings.gradio_auth:
        warnings.append("--listen without --gradio-auth: anyone on your network can use this UI. "
                        "Add --gradio-auth user:password.")
    if settings.listen and settings.api and not api_credentials(settings):
        warnings.append("--listen --api without --api-auth or --gradio-auth: anyone on your network can use the "
                        "REST API. Add --api-auth user:password.")
    return warnings


def exposure_summary(settings) -> list[str]:
    """One line per surface: where it listens and who may use it (printed at start-up)."""
    where = "your network (0.0.0.0)" if settings.listen else "this machine only (127.0.0.1)"
    ui_who = (f"users of --gradio-auth ({len(settings.gradio_auth)} account(s))" if settings.gradio_auth
              else "anyone who can connect")
    lines = [f"Web UI on port {settings.port}, reachable from {where}: {ui_who}."]
    if settings.api:
        creds = api_credentials(settings)
        source = "--api-auth" if settings.api_auth else "--gradio-auth (no --api-auth given)"
        api_who = f"HTTP Basic, accounts of {source}" if creds else "anyone who can connect"
        lines.append(f"REST API /sdapi/v1 (and /sdapi/v1/docs, /openapi.json): {api_who}.")
    else:
        lines.append("REST API: off (--api turns it on).")
    lines.append(f"Images are written under {settings.outputs_path} (command line only: --data-dir / --outputs-dir); "
                 f"pickle files: {'weights-only' if settings.allow_pickle else 'refused'}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    from lora_ui.settings import settings_from_argv

    settings = settings_from_argv(argv)  # --help and usage errors exit here, before anything heavy
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_environment()
    if settings.desktop:
        from lora_ui import desktop

        try:
            desktop.find_browser()
        except desktop.DesktopError as e:
            log.error("%s", e)
            return 2
        running = desktop.running_instance(settings.data_dir)
        if running:  # single instance: one more window on the running server, nothing else
            log.info("LoRA UI is already running on %s: opening another window", running)
            return desktop.open_another_window(running, settings.data_dir)
        settings.port = desktop.free_port(settings.port, settings.server_name)
    for warning in settings.config_warnings + security_warnings(settings):
        log.warning(warning)
    for line in exposure_summary(settings):
        log.info(line)

    from lora_ui.app import AppContext
    from lora_ui.engine.checkpoints import CheckpointError

    ctx = AppContext.build(settings)
    try:
        model = ctx.models.require()
    except CheckpointError as e:
        log.error("Cannot load the checkpoint: %s", e)
        ctx.close()
        return 2
    log.info("Model ready: %s (%s, %s on %s)", model.name, model.arch, model.dtype, model.device)

    from lora_ui.ui import build_ui
    from lora_ui.ui.app import APP_ICON, UI_CSS

    from lora_ui.ui.core_access import gradio_allowed_paths

    blocks = build_ui(ctx)
    app, local_url, _ = blocks.queue().launch(
        server_name=settings.server_name, server_port=settings.port,
        allowed_paths=gradio_allowed_paths(settings),  # images under a --data-dir outside the working dir
        auth=settings.gradio_auth or None, inbrowser=settings.autolaunch and not settings.desktop,
        prevent_thread_lock=True, share=False, ssr_mode=False, css=UI_CSS,
        pwa=True, favicon_path=str(APP_ICON),  # /manifest.json + icon: browsers offer "install"
    )
    from lora_ui.api import guard

    # body limit, JSON depth and auth on /openapi.json, /docs for the whole app (also without --api)
    guard.install(app, max_body_bytes=settings.limits.max_body_bytes, auth=api_credentials(settings))
    api = None
    if settings.api:
        from lora_ui.api import create_api

        api = create_api(app, ctx, api_credentials(settings) or None)
        log.info("REST API on %ssdapi/v1 (docs: %ssdapi/v1/docs)", local_url, local_url)
    log.info("LoRA UI running on %s", local_url)
    _stop_on_sigterm()
    window = None
    try:
        if settings.desktop:
            window = _open_desktop_window(settings, local_url)
        blocks.block_thread()  # returns on Ctrl+C (SIGINT) or SIGTERM (both raise KeyboardInterrupt here)
    except KeyboardInterrupt:
        pass
    finally:
        if window is not None:
            window.close()     # the browser, when the server stops first (Ctrl+C, SIGTERM)
            from lora_ui import desktop

            desktop.remove_instance(settings.data_dir)
        blocks.close()         # no new requests first, then the worker and background threads
        clean = ctx.close()
        if api is not None:
            api.close()
    log.info("LoRA UI stopped%s", "" if clean else " (some background work did not finish in time)")
    return 0


def _open_desktop_window(settings, url: str):
    """--desktop: record this server for a second start, open the app window and stop the server (as on
    Ctrl+C) when the browser exits. A missing browser is an error that stops the server."""
    import _thread

    from lora_ui import desktop

    try:
        process = desktop.open_window(url, settings.data_dir)
    except (desktop.DesktopError, OSError) as e:
        log.error("%s", e)
        raise KeyboardInterrupt from None
    desktop.write_instance(settings.data_dir, url, settings.port)
    # The main thread gets the SIGTERM handler's KeyboardInterrupt (installed by _stop_on_sigterm), not a
    # simulated SIGINT: a process started in the background ignores SIGINT, and then interrupt_main()'s
    # default SIGINT does nothing at all. Simulated, so no real signal is sent (fine on Windows too).
    return desktop.WindowWatcher(process, lambda: _thread.interrupt_main(signal.SIGTERM))


def _stop_on_sigterm() -> None:
    """`docker stop`, systemd and `kill` send SIGTERM: shut down as cleanly as on Ctrl+C."""
    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
