"""An ASGI guard in front of the whole app (gradio's page and the REST API): body size, JSON nesting,
and HTTP Basic auth on the schema/docs routes.

* Every request body is counted as it streams in: a declared Content-Length over the limit is a 413
  before a byte is read; under the API prefix the body is read here (at most the limit, then 413) and
  a JSON body nested deeper than `max_json_depth` is a 422 (before the recursive parser sees it), then
  handed on unchanged; elsewhere (gradio uploads) a body that goes over the limit ends the request as a
  client disconnect.
* `/openapi.json`, `/docs`, `/redoc` (the app's) need the same credentials as the API when it has any.
"""
from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any, Awaitable, Callable

from lora_ui.limits import MAX_JSON_DEPTH, json_depth_ok

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SCHEMA_PATHS = ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect")


def credentials_ok(header_value: str | None, auth: list[tuple[str, str]] | None) -> bool:
    """True when `auth` is empty or the Authorization header carries one of its (user, password) pairs."""
    if not auth:
        return True
    if not header_value or not header_value.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(header_value[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return False
    ok = False
    for want_user, want_password in auth:
        user_ok = secrets.compare_digest(user.encode(), want_user.encode())
        password_ok = secrets.compare_digest(password.encode(), want_password.encode())
        ok |= user_ok and password_ok
    return ok


async def send_error(send: Send, status: int, field: str, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": {401: "Unauthorized", 413: "PayloadTooLarge"}.get(status, "BadRequest"),
                       "detail": f"{field}: {message}", "body": "",
                       "errors": [{"field": field, "message": message}]}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware; see the module doc. `auth` guards SCHEMA_PATHS (the API routes check it too)."""

    def __init__(self, app: Any, *, max_body_bytes: int, api_prefix: str = "/sdapi/v1",
                 max_json_depth: int = MAX_JSON_DEPTH, auth: list[tuple[str, str]] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_prefix = api_prefix
        self.max_json_depth = max_json_depth
        self.auth = list(auth or [])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.auth and (path in SCHEMA_PATHS or path.startswith(self.api_prefix + "/docs")
                          or path == self.api_prefix + "/openapi.json"):
            if not credentials_ok(headers.get("authorization"), self.auth):
                await send_error(send, 401, "authorization", "credentials required (HTTP Basic)",
                                 [(b"www-authenticate", b"Basic")])
                return
        declared = headers.get("content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body_bytes
            except ValueError:
                too_big = False
            if too_big:
                await send_error(send, 413, "body", f"is {declared} bytes; at most {self.max_body_bytes} are "
                                                    "accepted (--max-body-mb)")
                return
        if path.startswith(self.api_prefix) and scope.get("method") in ("POST", "PUT", "PATCH"):
            await self._buffered(scope, receive, send, headers)
            return
        await self.app(scope, self._counting(receive), send)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]) -> None:
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                await send_error(send, 413, "body", f"is larger than {self.max_body_bytes} bytes (--max-body-mb)")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if "json" in headers.get("content-type", "json") and not json_depth_ok(body, self.max_json_depth):
            await send_error(send, 422, "body", f"JSON nested deeper than {self.max_json_depth} levels")
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, when it comes

        await self.app(scope, replay, send)

    def _counting(self, receive: Receive) -> Receive:
        total = 0

        async def counted() -> dict[str, Any]:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_body_bytes:
                    return {"type": "http.disconnect"}
            return message

        return counted


def install(app: Any, **kwargs: Any) -> RequestGuard:
    """Put a RequestGuard in front of `app` (a Starlette/FastAPI app, started or not): it wraps the
    app's middleware stack, so it also works on the app gradio already serves. Idempotent."""
    stack = getattr(app, "middleware_stack", None)
    if isinstance(stack, RequestGuard):
        for key, value in kwargs.items():
            setattr(stack, key, list(value or []) if key == "auth" else value)
        return stack
    inner = stack if stack is not None else app.build_middleware_stack()
    guard = RequestGuard(inner, **kwargs)
    app.middleware_stack = guard
    return guard
