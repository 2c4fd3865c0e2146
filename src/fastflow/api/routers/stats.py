"""``/api/stats``: the overview dashboard's and the pipeline pages' figures."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api", tags=["stats"])
