"""``/api/secrets``: names of the pipelines' secrets; values are write-only (admin)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/secrets", tags=["secrets"])
