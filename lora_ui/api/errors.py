"""The API's error format: A1111's JSON body `{"error", "detail", "body", "errors"}`, never an HTML
traceback page. Every route of the API uses `ApiRoute`, which turns whatever goes wrong into that
body: 422 for bad input (naming the field), 401 for missing credentials, 500 for a failed render."""
from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

log = logging.getLogger(__name__)

MAX_ECHOED_BODY = 2000  # characters of the request body repeated in an error response


class ApiError(Exception):
    """A request the API refuses. `field` names the offending input ("steps", "override_settings.
    sd_model_checkpoint", "image", ...); the message says what is wrong and what is allowed."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.status = status


class ApiErrors(Exception):
    """Several field errors found at once (all of a request's problems in one answer)."""

    def __init__(self, errors: list[ApiError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors
        self.status = max(e.status for e in errors)


def error_response(status: int, error: str, detail: str, body: str, errors: list[dict[str, Any]],
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": error, "detail": detail, "body": body, "errors": errors})


def _pydantic_field(loc: tuple) -> str:
    """("body", "override_settings", "x") -> "override_settings.x"; ("query", "n") -> "n"."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) if parts else "body"


def validation_errors(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    """Human detail and the per-field list for a FastAPI/pydantic validation failure."""
    fields = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            fields.append({"field": "body", "message": f"the request body is not valid JSON ({ctx.get('error', err.get('msg'))})"})
        elif err.get("type") == "missing" and tuple(err.get("loc", ())) == ("body",):
            fields.append({"field": "body", "message": "a JSON request body is required"})
        else:
            fields.append({"field": _pydantic_field(tuple(err.get("loc", ()))), "message": err.get("msg", "invalid")})
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return detail, fields


class ApiRoute(APIRoute):
    """An APIRoute whose handler answers every failure with the JSON error body."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                detail, fields = validation_errors(exc)
                return error_response(422, "ValidationError", detail, await _body_text(request), fields)
            except (ApiError, ApiErrors) as exc:
                errors = exc.errors if isinstance(exc, ApiErrors) else [exc]
                fields = [{"field": e.field, "message": e.message} for e in errors]
                kind = "NotImplemented" if exc.status == 501 else "BadRequest" if exc.status < 500 else "ServerError"
                return error_response(exc.status, kind, str(exc),
                                      await _body_text(request), fields)
            except (UnicodeError, RecursionError) as exc:  # text that is not Unicode, nesting too deep
                return error_response(422, "BadRequest", f"body: {type(exc).__name__}", await _body_text(request),
                                      [{"field": "body", "message": f"cannot be processed ({type(exc).__name__})"}])
            except HTTPException as exc:
                return error_response(exc.status_code, "HTTPException", str(exc.detail), await _body_text(request),
                                      [], headers=getattr(exc, "headers", None))
            except Exception as exc:  # noqa: BLE001 - a failed render is a 500 JSON answer, not a traceback page
                log.exception("API %s %s failed", request.method, request.url.path)
                return error_response(500, type(exc).__name__, f"{type(exc).__name__}: {exc}",
                                      await _body_text(request), [])

        return handle


async def _body_text(request: Request) -> str:
    try:
        raw = await request.body()  # cached by Starlette after the first read
    except Exception:  # noqa: BLE001 - the body may be gone (client disconnected); the error still answers
        return ""
    text = raw.decode("utf-8", errors="replace")
    return text if len(text) <= MAX_ECHOED_BODY else text[:MAX_ECHOED_BODY] + "..."
