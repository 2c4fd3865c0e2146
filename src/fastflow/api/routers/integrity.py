"""``/api/archive/verifications``, ``/api/archive/bucket-check`` and the system incidents
(``/api/settings/system-incidents``) that the UI's bell shows. Every route needs a
logged-in user or an API token of any role; none changes anything."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from fastflow import notify
from fastflow.api.deps import CtxDep, PrincipalDep
from fastflow.api.schemas import BucketCheckOut, SystemIncidentsOut, VerificationListOut
from fastflow.archive import audit, bucket_check
from fastflow.db import cache as readcache

router = APIRouter(prefix="/api", tags=["integrity"])


@router.get("/settings/system-incidents", response_model=SystemIncidentsOut)
def system_incidents(ctx: CtxDep, _: PrincipalDep) -> dict[str, Any]:
    """Open incidents of fastflow itself, newest first: archive integrity (a missing or
    altered object found by a verification) and disk pressure. Each stays until it is
    resolved."""
    found: dict[str, Any] = readcache.cached(
        ("system-incidents",), lambda: {"incidents": notify.open_incidents(ctx)}
    )
    return found


@router.get("/archive/verifications", response_model=VerificationListOut)
def archive_verifications(
    ctx: CtxDep,
    _: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """Recorded archive verifications (``ARCHIVE_VERIFY_SCHEDULE`` and ``fastflow archive
    verify --record``), newest first, each with at most 100 problems."""
    return {"verifications": audit.verifications(ctx, limit)}


@router.get("/archive/bucket-check", response_model=BucketCheckOut)
async def archive_bucket_check(ctx: CtxDep, _: PrincipalDep) -> dict[str, Any]:
    """Versioning, Object Lock, default retention, default encryption and lifecycle rules
    of the bucket, each ``ok``/``warning``/``error``/``unknown`` with one line. 422 when S3
    is not configured, 502 when the server cannot be reached."""
    report = await run_in_threadpool(bucket_check.check_bucket, ctx.settings)
    return report.to_dict()
