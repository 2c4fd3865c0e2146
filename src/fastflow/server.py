"""The composition root of ``fastflow serve``: the JSON API plus the web UI in one app.

``api`` and ``web`` never import each other; this module joins them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from fastflow.api.app import FIRST_ADMIN_HINT
from fastflow.api.app import create_app as create_api
from fastflow.context import Context
from fastflow.web.pages import install as install_web

__all__ = ["FIRST_ADMIN_HINT", "create_app"]


# Every response: no MIME sniffing, never framed, no referrer to other sites. Our own HTML
# pages also get a Content-Security-Policy without inline script (the API docs load
# Swagger UI's own assets and keep the default).
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_NO_CSP = ("/docs", "/redoc")


def _security_headers(app: FastAPI) -> None:
    @app.middleware("http")
    async def headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        html = response.headers.get("content-type", "").startswith("text/html")
        if html and not request.url.path.startswith(_NO_CSP):
            response.headers.setdefault("Content-Security-Policy", CSP)
        return response


def create_app(ctx: Context, *, schedule: bool = True) -> FastAPI:
    """API, web UI and (with ``schedule``) the cleanup scheduler."""

    def extend(app: FastAPI) -> None:
        install_web(app)
        _security_headers(app)

    return create_api(ctx, schedule=schedule, extend=extend)
