"""Runs, their logs and metrics, and the archive ledger.

``{run_id}`` is a full run id or a unique prefix of at least 4 hex digits (the UI shows
8); runs deleted by retention but in the archive ledger count. Unknown: 404; a prefix
that matches several runs: 409 naming them; not a run id at all: 422."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import JSONResponse, StreamingResponse

from fastflow.api.deps import AdminDep, CtxDep, LauncherDep, PrincipalDep
from fastflow.api.schemas import (
    ArchiveEntryListOut,
    CancelOut,
    MetricSampleListOut,
    RunListOut,
    RunOut,
)
from fastflow.db import cache as readcache
from fastflow.db.models import RunStatus
from fastflow.errors import RunAlreadyFinished
from fastflow.runs import store as run_rows
from fastflow.runs import views as runviews
from fastflow.runs.readback import open_log

router = APIRouter(prefix="/api", tags=["runs"])
MAX_OFFSET = 2**31 - 1  # larger offsets overflow the database's integer (a 422, not a 500)

# The log is streamed as text; its media type is declared for the OpenAPI schema.
LOG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The log (UTF-8 text), or its last ``tail_bytes`` bytes.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


def resolve_run_id(
    run_id: Annotated[str, Path(max_length=100, description="A run id or a unique prefix.")],
    ctx: CtxDep,
    _: PrincipalDep,
) -> uuid.UUID:
    """The run ``{run_id}`` names (after authentication: ids are never probed
    anonymously)."""
    try:
        return run_rows.resolve_run_id(ctx.db, run_id)
    except run_rows.AmbiguousRunId as e:
        raise HTTPException(status_code=409, detail=str(e)) from None


RunIdDep = Annotated[uuid.UUID, Depends(resolve_run_id)]


@router.get("/runs", response_model=RunListOut)
def list_runs(
    ctx: CtxDep,
    _: PrincipalDep,
    pipeline_name: str | None = None,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    include_archived: bool = False,
) -> JSONResponse:
    """Runs, newest first, with archive information; ``include_archived=true`` also
    lists the runs whose rows retention deleted (``row_deleted``, read from the archive
    ledger), merged into the same order and pages."""
    return JSONResponse(
        readcache.cached(
            ("runs", pipeline_name, status, limit, offset, include_archived),
            lambda: runviews.list_views(
                ctx,
                include_archived=include_archived,
                pipeline=pipeline_name,
                status=status.value if status else None,
                limit=limit,
                offset=offset,
            ),
        )
    )


@router.get("/runs/{run_id}", response_model=RunOut)
def get_run(run_id: RunIdDep, ctx: CtxDep) -> dict[str, Any]:
    return runviews.get_view(ctx, run_id)


@router.get("/runs/{run_id}/logs", response_class=StreamingResponse, responses=LOG_RESPONSES)
def get_logs(
    run_id: RunIdDep,
    ctx: CtxDep,
    tail_bytes: Annotated[int | None, Query(ge=0)] = None,
    full: bool = False,
) -> StreamingResponse:
    """The log as text (streamed), from local disk or read back from the archive;
    ``full=true`` reads the full archived copy of a log that was truncated locally."""
    source = open_log(ctx, run_id, run_rows.get(ctx.db, run_id), tail_bytes, full=full)
    return StreamingResponse(
        source.chunks,
        media_type="text/plain; charset=utf-8",
        headers={
            "X-Log-Source": source.origin,
            "X-Log-Size": str(source.size),
            "Cache-Control": "no-store",
        },
    )


@router.get("/runs/{run_id}/metrics", response_model=MetricSampleListOut)
def get_metrics(run_id: RunIdDep, ctx: CtxDep) -> JSONResponse:
    """The run's CPU/RAM samples."""
    return JSONResponse(runviews.metrics(ctx, run_id))


@router.post("/runs/{run_id}/cancel", response_model=CancelOut)
def cancel_run(_: AdminDep, run_id: RunIdDep, launcher: LauncherDep) -> dict[str, bool]:
    """Cancel a run: a QUEUED one at once; a running one on whichever server executes it
    (its process tree is stopped within seconds). 409 when it already finished."""
    if launcher.cancel(run_id) == "finished":
        raise RunAlreadyFinished(f"run {run_id} has already finished")
    return {"cancelled": True}


@router.get("/archive", response_model=ArchiveEntryListOut)
def list_archive(
    ctx: CtxDep,
    _: PrincipalDep,
    pipeline_name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JSONResponse:
    """Archive ledger entries, newest first."""
    return JSONResponse(runviews.list_archive(ctx, pipeline_name, limit, offset))
