"""The composition root of ``fastflow serve``: the JSON API plus the web UI in one app.

``api`` and ``web`` never import each other; this module joins them."""

from __future__ import annotations

from fastapi import FastAPI

from fastflow.api.app import FIRST_ADMIN_HINT
from fastflow.api.app import create_app as create_api
from fastflow.context import Context
from fastflow.web.pages import install as install_web

__all__ = ["FIRST_ADMIN_HINT", "create_app"]


def create_app(ctx: Context, *, schedule: bool = True) -> FastAPI:
    """API, web UI and (with ``schedule``) the cleanup scheduler."""
    return create_api(ctx, schedule=schedule, extend=install_web)
