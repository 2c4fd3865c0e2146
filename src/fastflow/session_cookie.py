"""The browser session cookie, shared by the JSON API's login and the web UI's login
form (both set and clear it the same way)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from fastflow import accounts

SESSION_COOKIE = "fastflow_session"


def set_session_cookie(response: Response, token: str, request: Request) -> None:
    """HttpOnly, SameSite=Lax, Secure over https, as long as the session lives."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        path="/",
        secure=request.url.scheme == "https",
        max_age=int(accounts.SESSION_LIFETIME.total_seconds()),
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")
