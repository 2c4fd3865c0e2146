"""Build the FastAPI application from a bootstrapped context."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fastflow import __version__
from fastflow.app_context import Context
from fastflow.scheduler import CleanupScheduler


def create_app(ctx: Context, *, schedule: bool = True) -> FastAPI:
    """The app; with ``schedule`` it runs cleanup passes on ``CLEANUP_SCHEDULE``."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scheduler = CleanupScheduler(ctx) if schedule else None
        if scheduler:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler:
                scheduler.stop()

    app = FastAPI(title="fastflow", version=__version__, lifespan=lifespan)
    app.state.ctx = ctx

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
