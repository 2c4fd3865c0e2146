"""The composition root of ``fastflow serve``: the JSON API plus the web UI in one app.

``api`` and ``web`` never import each other; this module joins them."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastflow.api.app import FIRST_ADMIN_HINT
from fastflow.api.app import create_app as create_api
from fastflow.context import Context
from fastflow.web.pages import install as install_web

__all__ = ["FIRST_ADMIN_HINT", "create_app"]


# Every response: no MIME sniffing, never framed, no referrer to other sites. Every HTML
# page also gets a Content-Security-Policy without inline script (the API docs at /docs
# too: fastflow renders them itself, no Swagger UI from a CDN).
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class SecurityHeaders:
    """Pure ASGI middleware: adds ``HEADERS`` to every HTTP response (and ``CSP`` to our
    HTML pages) where the route did not set them. It only edits the response-start
    message, so bodies and streams (server-sent events) pass through untouched — unlike
    ``@app.middleware("http")``, which wrapped every response in extra tasks and streams
    (15–20 % of the server's time on a small archived-tail answer)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in _RAW_HEADERS:
                    if name not in present:
                        headers.append((name, value))
                if _CSP_NAME not in present:
                    ctype = next((v for n, v in headers if n.lower() == b"content-type"), b"")
                    if ctype.startswith(b"text/html"):
                        headers.append((_CSP_NAME, _CSP_VALUE))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_RAW_HEADERS = tuple((k.lower().encode(), v.encode()) for k, v in HEADERS.items())
_CSP_NAME, _CSP_VALUE = b"content-security-policy", CSP.encode()


def create_app(ctx: Context, *, schedule: bool = True) -> FastAPI:
    """API, web UI and (with ``schedule``) the cleanup scheduler."""

    def extend(app: FastAPI) -> None:
        install_web(app)
        # outermost, around Starlette's error middleware too: a 500 for an unhandled
        # exception carries the headers like every other answer
        build = app.build_middleware_stack

        def with_headers() -> ASGIApp:
            return SecurityHeaders(build())

        app.build_middleware_stack = with_headers  # type: ignore[method-assign]

    return create_api(ctx, schedule=schedule, extend=extend)
