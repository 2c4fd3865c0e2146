"""One place that maps domain errors to HTTP statuses (services never raise HTTPException)."""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import DataError, StatementError
from starlette.exceptions import HTTPException

from fastflow import strict_json
from fastflow.errors import (
    ArchiveError,
    AuthError,
    ConfigError,
    FastflowError,
    Forbidden,
    InvalidInput,
    InvalidPipelineConfig,
    InvalidPipelineName,
    LogNotAvailable,
    LogsDirUnavailable,
    PassAlreadyRunning,
    PipelineNotFound,
    RunAlreadyFinished,
    RunNotFound,
    UnsafePath,
)
from fastflow.security import public_text

STATUS: list[tuple[type[FastflowError], int]] = [
    (AuthError, 401),
    (Forbidden, 403),
    (RunNotFound, 404),
    (PipelineNotFound, 404),
    (LogNotAvailable, 404),
    (PassAlreadyRunning, 409),
    (RunAlreadyFinished, 409),
    (InvalidInput, 422),
    (InvalidPipelineName, 422),
    (InvalidPipelineConfig, 422),
    (ConfigError, 422),
    (UnsafePath, 400),
    (ArchiveError, 502),
    (LogsDirUnavailable, 503),
]


def status_for(exc: FastflowError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def install(app: FastAPI) -> None:
    @app.exception_handler(FastflowError)
    async def _domain_error(request: Request, exc: FastflowError) -> JSONResponse:
        ctx = request.app.state.ctx
        # a lone surrogate quoted from the request cannot be encoded: shown escaped
        text = public_text(str(exc), ctx.settings)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        body: dict[str, object] = {"detail": text}
        if isinstance(exc, PassAlreadyRunning) and exc.started_at:
            body["started_at"] = exc.started_at
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        return JSONResponse(body, status_code=status_for(exc), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = [_without_input(e) for e in exc.errors()]
        if _wants_page(request):  # a browser on a page (``/runs?page=x``): a page
            return _html_error(errors)
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        # FastAPI answers a JSON body that ``json.loads`` rejects with anything but a
        # decode error (nesting too deep, an integer of > 4,300 digits, bytes that are not
        # UTF-8) with a bare 400; it is as invalid as any other bad JSON: the same 422
        unparsed = exc.status_code == 400 and exc.detail == BODY_NOT_PARSED
        if unparsed and isinstance(exc.__cause__, ValueError | RecursionError):
            return _unstorable(request, "json_invalid", UNPARSABLE, loc="body")
        return await http_exception_handler(request, exc)

    @app.exception_handler(UnicodeEncodeError)
    async def _unencodable(request: Request, exc: UnicodeEncodeError) -> Response:
        return _unstorable(request, "string_unicode", UNENCODABLE)

    @app.exception_handler(StatementError)
    async def _statement(request: Request, exc: StatementError) -> Response:
        # text the database cannot take (a lone surrogate; NUL on PostgreSQL) came from
        # the request: 422; anything else stays a server error
        cause = exc.orig
        if isinstance(cause, UnicodeEncodeError):
            return _unstorable(request, "string_unicode", UNENCODABLE)
        if isinstance(exc, DataError) and "NUL" in str(cause):
            return _unstorable(request, "string_nul", WITH_NUL)
        raise exc


async def unique_json_keys(request: Request) -> None:
    """A JSON body that gives a key twice (``{"env": {"A": "1", "A": "2"}}``) is a 422,
    as for ``pipeline.json``: Python's parser keeps the last value silently, so a run
    started with the first one in mind got the other (an outside audit). Only the key's
    name is quoted, never a value."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not (media == "application/json" or media.endswith("+json")):
        return  # (what FastAPI parses as JSON)
    body = await request.body()  # (kept by the request: the route reads it again)
    if not body:
        return
    try:
        strict_json.loads(body, unique_keys=True)
    except strict_json.DuplicateKey as e:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ["body"], "msg": f"JSON decode error: {e}"}]
        ) from None
    except (ValueError, RecursionError):
        return  # any other fault: the route's own parsing answers it


UNENCODABLE = "text must be valid Unicode (it holds a lone surrogate)"
WITH_NUL = "text must not contain NUL characters"
BODY_NOT_PARSED = "There was an error parsing the body"  # FastAPI's text for them
UNPARSABLE = (
    "JSON decode error: the body is nested too deeply, holds a number too long, or is not UTF-8"
)


def _unstorable(request: Request, kind: str, msg: str, *, loc: str = "request") -> Response:
    """The request held text no query can carry (found by an outside audit: a 500, also
    on the login form): a 422 in the validation errors' shape, the value not repeated."""
    errors = [{"type": kind, "loc": [loc], "msg": msg}]
    if _wants_page(request):
        return _html_error(errors)
    return JSONResponse({"detail": errors}, status_code=422)


def _wants_page(request: Request) -> bool:
    """A browser asking for one of the web UI's pages (not the API, webhooks included)."""
    path = request.url.path
    return not path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def _html_error(errors: list[dict[str, Any]]) -> HTMLResponse:
    """A bare 422 page naming what was wrong (``page: Input should be ...``)."""
    items = "".join(
        f"<li>{escape(str(e['loc'][-1]) if e['loc'] else 'request')}: {escape(e['msg'])}</li>"
        for e in errors
    )
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Invalid request · fastflow</title></head><body>"
        f"<h1>Invalid request</h1><ul>{items}</ul>"
        '<p><a href="/">Back to the overview</a></p></body></html>'
    )
    return HTMLResponse(body, status_code=422)


def _without_input(error: Any) -> dict[str, Any]:
    """One of FastAPI's validation errors without what was sent: its ``input`` (and any
    text in its ``ctx``) may be a password sent in the wrong shape, and error text never
    repeats a secret. ``type``, ``loc``, ``msg`` and numeric limits stay."""
    out: dict[str, Any] = {
        "type": error.get("type"),
        "loc": list(error.get("loc", ())),
        "msg": str(error.get("msg", "")),
    }
    ctx = error.get("ctx")
    if isinstance(ctx, dict):
        limits = {
            k: v for k, v in ctx.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if limits:
            out["ctx"] = limits
    return out
