"""``/api/search``: find text across the logs of many runs, local and archived."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api", tags=["search"])
