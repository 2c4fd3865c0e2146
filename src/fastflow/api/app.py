"""Build the FastAPI application from a bootstrapped context."""

from __future__ import annotations

from fastapi import FastAPI

from fastflow import __version__
from fastflow.app_context import Context


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(title="fastflow", version=__version__)
    app.state.ctx = ctx

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
