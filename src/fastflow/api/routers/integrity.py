"""``/api/archive/verifications`` and the archive's integrity figures."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api", tags=["integrity"])
