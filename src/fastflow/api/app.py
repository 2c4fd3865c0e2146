"""Build the JSON API (FastAPI) from a bootstrapped context."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import unquote_to_bytes

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastflow import __version__, notify
from fastflow.accounts import AuthError
from fastflow.api import errors
from fastflow.api.deps import principal_from
from fastflow.api.prometheus import registry_for
from fastflow.api.routers import (
    auth,
    hooks,
    integrity,
    pins,
    pipelines,
    runs,
    search,
    secrets,
    settings,
    stats,
)
from fastflow.api.schemas import HealthOut
from fastflow.context import Context
from fastflow.doctor import DockerHealth
from fastflow.lifecycle.cleanup import PassSummary
from fastflow.lifecycle.scheduler import CleanupScheduler
from fastflow.orchestration.dispatcher import Dispatcher
from fastflow.orchestration.ticker import ScheduleLoop

log = logging.getLogger("fastflow.api")

FIRST_ADMIN_HINT = (
    "no user exists yet: create the first admin with\n"
    "    fastflow user create admin --role admin\n"
    "(the password is prompted, or read from stdin)"
)


MAX_BODY_BYTES = 1024 * 1024
BODY_TOO_LARGE = "request body too large: at most 1 MiB is accepted"


class _BodyTooLarge(HTTPException):
    """Raised while the body is read (FastAPI passes ``HTTPException`` through): 413."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail=BODY_TOO_LARGE)


class BodySizeLimit:
    """Every request body is capped at ``limit`` bytes: a larger declared
    ``Content-Length`` is answered 413 before anything is read, and a body that grows past
    the limit while it is read (chunked) fails with 413 at that point — never stored."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await JSONResponse({"detail": BODY_TOO_LARGE}, status_code=413)(
                        scope, receive, send
                    )
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge()
            return message

        await self.app(scope, limited, send)


QUERY_NOT_UTF8 = {
    "detail": [
        {
            "type": "string_unicode",
            "loc": ["query"],
            "msg": "the query string is not valid UTF-8 once its %-escapes are decoded",
        }
    ]
}


# the webhooks' callers are other systems: what they send is theirs
WEBHOOKS = ("/api/hooks/", "/api/webhooks/")


class QueryText:
    """A query string whose %-escapes decode to bytes that are not UTF-8 (``%FF``, an
    encoded surrogate ``%ED%A0%80``) is answered 422, on every route but the webhooks':
    the framework would turn them into U+FFFD, and a search for that would match every
    line holding any invalid byte (an outside audit)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not scope.get("path", "").startswith(WEBHOOKS)
            and not _utf8_query(scope.get("query_string", b""))
        ):
            await JSONResponse(QUERY_NOT_UTF8, status_code=422)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _utf8_query(raw: bytes) -> bool:
    """Whether ``raw`` (a query string as sent) is UTF-8 once %-decoded."""
    if b"%" not in raw and raw.isascii():
        return True  # the usual query: nothing to decode
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class QuietBrokenTransfers(logging.Filter):
    """Drops the server's report of an exception that is a ``TransferBrokenOff`` (or
    caused by one): the route logged that transfer as one line already, and the report
    — two tracebacks per request — let any viewer fill the log (an outside audit)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not _broken_off(exc)


def _broken_off(exc: BaseException, depth: int = 0) -> bool:
    """``exc`` is a ``TransferBrokenOff``, raised from one (``__cause__``: a framework
    wrapping it), or a group of only such: an error merely seen while one was being
    handled (``__context__``) is reported as usual."""
    if isinstance(exc, runs.TransferBrokenOff):
        return True
    if depth > 10:
        return False
    if isinstance(exc, BaseExceptionGroup):
        return all(_broken_off(e, depth + 1) for e in exc.exceptions)
    return exc.__cause__ is not None and _broken_off(exc.__cause__, depth + 1)


_QUIET = QuietBrokenTransfers()


def _after_scheduled_pass(ctx: Context) -> Callable[[PassSummary], None]:
    def hook(summary: PassSummary) -> None:
        notify.after_pass(ctx, summary)

    return hook


def create_app(
    ctx: Context,
    *,
    schedule: bool = True,
    extend: Callable[[FastAPI], None] | None = None,
) -> FastAPI:
    """The JSON API; with ``schedule`` it runs cleanup passes on ``CLEANUP_SCHEDULE``.
    ``extend`` adds more routes (``fastflow.server`` adds the web UI this way)."""
    logging.getLogger("uvicorn.error").addFilter(_QUIET)  # (once: the same filter object)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scheduler = CleanupScheduler(ctx, on_pass=_after_scheduled_pass(ctx)) if schedule else None
        if scheduler:
            scheduler.start()
        dispatcher.ensure_running()  # queued runs (also from other servers) start here
        ticker = ScheduleLoop(ctx, on_queued=dispatcher.wake) if schedule else None
        if ticker:
            ticker.start()
        try:
            yield
        finally:
            if ticker:
                ticker.stop()
            dispatcher.stop()
            if scheduler:
                scheduler.stop()

    app = FastAPI(
        title="fastflow",
        version=__version__,
        lifespan=lifespan,
        openapi_url=None,  # served below, behind the same authentication as /api
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.add_middleware(BodySizeLimit)  # every route, also the web UI's
    app.add_middleware(QueryText)
    dispatcher = Dispatcher(ctx)
    app.state.launcher = dispatcher
    errors.install(app)

    docker_health = DockerHealth(lambda: ctx.settings)

    @app.get(
        "/api/health", tags=["health"], response_model=HealthOut, response_model_exclude_none=True
    )
    def health() -> dict[str, object]:
        """Liveness; the only route that needs no authentication. ``status`` is always
        "ok"; ``docker`` (only when a pipeline uses Docker) says whether the daemon answers,
        checked at most once per few seconds however often this is polled."""
        out: dict[str, object] = {"status": "ok", "version": __version__}
        docker = docker_health.get()
        if docker is not None:
            out["docker"] = docker
        return out

    # HEAD too: load balancers and uptime monitors probe with it (no body; not in the
    # OpenAPI document, where it would repeat the GET's operation id)
    @app.head("/api/health", include_in_schema=False)
    def health_head() -> Response:
        return Response(status_code=200, media_type="application/json")

    for router in (
        auth.router,
        runs.router,
        pipelines.router,
        settings.router,
        secrets.router,
        search.router,
        stats.router,
        pins.router,
        integrity.router,
    ):
        app.include_router(router, dependencies=[Depends(errors.unique_json_keys)])
    # a webhook's payload is the caller's: passed on as it came (keys given twice too)
    app.include_router(hooks.router)
    _install_metrics(app, ctx)
    _install_docs(app, ctx)
    if extend is not None:
        extend(app)
    return app


# the API reference, rendered in the browser from /openapi.json by a script of fastflow's
# own: no CDN and no inline script (Swagger UI and ReDoc need both), so the page keeps the
# Content-Security-Policy of every other page and works offline
API_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fastflow API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/app.css"><script src="/static/apidocs.js" defer></script>
</head><body><main><h1>fastflow API</h1><div id="api-docs">Loading /openapi.json…</div>
</main></body></html>
"""


def _install_docs(app: FastAPI, ctx: Context) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc`` need a session or an API token, like
    ``/api``, unless ``DOCS_PUBLIC=true``."""

    def allowed(request: Request) -> None:
        if not ctx.settings.docs_public and principal_from(request, ctx) is None:
            raise AuthError("authentication required: send 'Authorization: Bearer <token>'")

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request) -> JSONResponse:
        allowed(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> Response:
        allowed(request)
        return HTMLResponse(API_DOCS_PAGE)

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> Response:
        allowed(request)
        return RedirectResponse("/docs", status_code=307)  # one reference page


def _install_metrics(app: FastAPI, ctx: Context) -> None:
    registry = registry_for(ctx)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        """Prometheus metrics; needs a token unless METRICS_PUBLIC=true."""
        if not ctx.settings.metrics_public and principal_from(request, ctx) is None:
            raise AuthError("authentication required: send 'Authorization: Bearer <token>'")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
