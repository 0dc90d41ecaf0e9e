"""A1111-compatible REST API (`/sdapi/v1/*`, FastAPI) over the core; see docs/api.md.

`create_api(app, ctx, auth)` adds the routes to the FastAPI app gradio serves (webui.py, `--api`)."""
from lora_ui.api.routes import ApiLimits, build_router, create_api

__all__ = ["ApiLimits", "build_router", "create_api"]
