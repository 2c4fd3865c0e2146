"""The "Search" page: find text across the logs of many runs."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
