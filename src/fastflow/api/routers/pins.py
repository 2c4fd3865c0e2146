"""``/api/runs/{id}/pin``: pinned runs are never deleted or truncated (admin)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api", tags=["pins"])
