"""Small helpers shared by the API tests: decoding responses, comparing pixels."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image


def decode_png(b64: str) -> Image.Image:
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def pixels(b64: str) -> np.ndarray:
    return np.asarray(decode_png(b64).convert("RGB"))


def info_of(response_json: dict) -> dict:
    assert isinstance(response_json["info"], str), "A1111 sends info as a JSON string"
    return json.loads(response_json["info"])


def render(client, **body) -> dict:
    """POST /txt2img with small defaults (3 steps, seed 1234, no saving); asserts 200."""
    payload = {"prompt": "a red circle on blue", "steps": 3, "seed": 1234, "save_images": False}
    payload.update(body)
    r = client.post("/sdapi/v1/txt2img", json=payload)
    assert r.status_code == 200, r.text
    return r.json()


def assert_error(response, status: int, field: str) -> dict:
    """The A1111 error body with `status`, naming `field` in `errors` and in `detail`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"}, body
    fields = [e["field"] for e in body["errors"]]
    assert field in fields, (field, body)
    assert field in body["detail"], body
    return body
