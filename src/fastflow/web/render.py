"""Jinja2 rendering for the web pages: the ``templates/`` directory, the context every
logged-in page gets (``user`` and the navigation's ``active`` entry), the login form and
the error page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from fastflow.accounts import Principal

TEMPLATES_DIR = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


def render(request: Request, name: str, principal: Principal, **data: Any) -> HTMLResponse:
    """Template ``name`` for a logged-in user; ``active`` is the name without ``.html``."""
    return templates.TemplateResponse(
        request, name, {"user": principal, "active": name.split(".")[0], **data}
    )


def render_login(
    request: Request,
    next_url: str,
    *,
    error: str | None,
    no_users: bool,
    status_code: int = 200,
) -> HTMLResponse:
    """The login form; it posts back to ``next_url`` after a successful login."""
    return templates.TemplateResponse(
        request,
        "login.html",
        {"next": next_url, "error": error, "no_users": no_users},
        status_code=status_code,
    )


def render_not_found(request: Request, principal: Principal, message: str) -> HTMLResponse:
    """The 404 error page (under the Runs navigation entry)."""
    return templates.TemplateResponse(
        request,
        "error.html",
        {"user": principal, "active": "runs", "message": message},
        status_code=404,
    )
