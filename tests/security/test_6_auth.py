"""Item 6: the UI's password covers the API; schema and docs need auth; paths are command-line only."""
from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from lora_ui.api import create_api
from tests.api.conftest import ServerThread

pytestmark = pytest.mark.timeout(900)
CREDS = ("ui-user", "ui-pass")


@pytest.fixture
def protected(api_env):
    from webui import api_credentials

    settings = SimpleNamespace(api_auth=[], gradio_auth=[CREDS])
    app = FastAPI()  # FastAPI's own /openapi.json and /docs are on, as on gradio's app
    api = create_api(app, api_env.ctx, api_credentials(settings))
    server = ServerThread(app)
    yield server.url
    server.stop()
    api.close()


@pytest.mark.parametrize("path", ["/sdapi/v1/loras", "/sdapi/v1/options", "/openapi.json", "/docs",
                                  "/sdapi/v1/openapi.json", "/sdapi/v1/docs"])
def test_everything_needs_the_ui_credentials(protected, path):
    with httpx.Client(base_url=protected, timeout=30) as c:
        assert c.get(path).status_code == 401
        assert c.get(path, auth=("ui-user", "wrong")).status_code == 401
        assert c.get(path, auth=CREDS).status_code == 200


def test_exposure_summary_says_who_may_use_what(tmp_path):
    from lora_ui.settings import Settings
    from webui import exposure_summary

    s = Settings(data_dir=tmp_path, listen=True, api=True, gradio_auth=[CREDS])
    text = "\n".join(exposure_summary(s))
    assert "your network" in text and "--gradio-auth (no --api-auth given)" in text and str(tmp_path) in text
