"""create_api on the FastAPI app gradio serves (what webui.py does with --api): our routes answer
next to the page, gradio's own routes keep working, and auth applies to ours only."""
from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import AUTH, free_port

pytestmark = pytest.mark.timeout(900)  # includes the shared server set-up, slow on a loaded machine


@pytest.fixture
def gradio_app_with_api(api_env):
    import gradio as gr

    from lora_ui.api import create_api

    with gr.Blocks() as demo:
        gr.Textbox(label="page", elem_id="page_box")
    app, local_url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                    quiet=True, share=False, ssr_mode=False)
    api = create_api(app, api_env.ctx, [AUTH])
    yield local_url.rstrip("/")
    demo.close()
    api.close()


def test_api_routes_answer_on_the_gradio_app(gradio_app_with_api):
    with httpx.Client(base_url=gradio_app_with_api, timeout=600) as c:
        page = c.get("/")
        assert page.status_code == 200 and "gradio" in page.text.lower()
        assert c.get("/sdapi/v1/samplers").status_code == 401  # --api-auth guards the API ...
        assert c.get("/config").status_code == 200             # ... and not gradio's own routes
        samplers = c.get("/sdapi/v1/samplers", auth=AUTH)
        assert samplers.status_code == 200 and any(s["name"] == "Euler a" for s in samplers.json())
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "x <lora:alpha:1>", "steps": 2, "save_images": False},
                   auth=AUTH)
        assert r.status_code == 200 and len(r.json()["images"]) == 1
        bad = c.post("/sdapi/v1/txt2img", json={"steps": 0}, auth=AUTH)
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "steps"
        assert "/sdapi/v1/lora-ui/compare" in c.get("/sdapi/v1/openapi.json", auth=AUTH).json()["paths"]
