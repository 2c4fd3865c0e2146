"""Settings, the S3 connection test, forced cleanup, passes and backup failures."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from fastflow import notify
from fastflow.api.deps import AdminDep, CtxDep, PrincipalDep
from fastflow.api.schemas import (
    BackupFailuresOut,
    ChannelResultListOut,
    CleanupPassListOut,
    DiskPressureOut,
    PassSummaryOut,
    S3TestOut,
    SettingsOut,
)
from fastflow.archive import probe as s3probe
from fastflow.db import cache as readcache
from fastflow.db import settings_store
from fastflow.errors import PassAlreadyRunning
from fastflow.lifecycle import disk, scheduler
from fastflow.lifecycle import records as failures
from fastflow.lifecycle.child import run_pass_in_child
from fastflow.lifecycle.cleanup import PassSummary, busy_with_start

router = APIRouter(prefix="/api/settings", tags=["settings"])


def _view(ctx: CtxDep, notices: list[str] | None = None) -> dict[str, Any]:
    overrides = settings_store.load_overrides(ctx.db, ctx.base)
    data = settings_store.public_view(ctx.settings, set(overrides))
    data["last_s3_test"] = s3probe.last(ctx.db)
    last = failures.last_backup_at(ctx)
    data["last_backup_at"] = last.isoformat() if last else None
    data["unresolved_backup_failures"] = failures.unresolved_count(ctx)
    data["notifications"] = _notification_results(ctx)
    upcoming = scheduler.next_pass_at(ctx)
    data["next_cleanup_at"] = upcoming.isoformat(timespec="seconds") if upcoming else None
    data["notices"] = notices or []
    return data


def _notification_results(ctx: CtxDep) -> dict[str, Any]:
    return notify.last_results(ctx)


@router.get("", response_model=SettingsOut)
def get_settings(ctx: CtxDep, _: PrincipalDep) -> dict[str, Any]:
    """Effective settings; secrets only as ``<name>_configured``."""
    return _view(ctx)


@router.put("", response_model=SettingsOut)
def put_settings(
    ctx: CtxDep, _: AdminDep, changes: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    """Store the fields given (validated like the environment; null removes a field's
    override, so that the environment's value or the default applies again). Changing
    ``smtp_host`` without ``smtp_password`` drops the password (see ``notices``). A new
    ``cleanup_schedule`` takes effect at once (``next_cleanup_at``)."""
    updated = settings_store.update(ctx.db, ctx.base, changes)
    ctx.reload_settings()
    readcache.invalidate()
    scheduler.settings_changed(ctx)
    return _view(ctx, updated.notices)


@router.post("/s3/test", response_model=S3TestOut)
def test_s3(
    ctx: CtxDep,
    _: AdminDep,
    unsaved: Annotated[dict[str, Any] | None, Body()] = None,
) -> dict[str, Any]:
    """Write, read back and delete a probe object under the prefix. An optional body of
    unsaved S3 fields (names and meaning as in ``PUT /api/settings``; an empty secret
    uses the stored one) is validated like ``PUT`` and tested instead, without saving it;
    only a test of the saved settings is remembered as ``last_s3_test``."""
    tested = ctx.settings
    if unsaved:
        tested = settings_store.preview(ctx.db, ctx.base, unsaved, allowed=settings_store.S3_FIELDS)
    result = s3probe.probe(tested)
    if all(getattr(tested, k) == getattr(ctx.settings, k) for k in settings_store.S3_FIELDS):
        s3probe.remember(ctx.db, result)
    return {"ok": result.ok, "error": result.error, "tested_at": result.tested_at}


@router.post("/cleanup/force", response_model=PassSummaryOut)
def force_cleanup(ctx: CtxDep, _: AdminDep) -> dict[str, Any]:
    """Run a cleanup pass now (a worker thread runs it in a child process, so the API
    stays responsive); 409 while another pass runs. A pass that crashed answers with its
    summary, ``error`` saying why, recorded and notified like a failed backup."""
    try:
        summary = run_pass_in_child(ctx, "api")
    except PassAlreadyRunning as e:
        raise busy_with_start(ctx, e) from e
    _notify(ctx, summary)
    data = summary.to_dict()
    data.pop("plan", None)
    return data


def _notify(ctx: CtxDep, summary: PassSummary) -> None:
    notify.after_pass(ctx, summary)  # returns at once; delivery runs in the background


@router.post("/notifications/test", response_model=ChannelResultListOut)
def test_notifications(
    ctx: CtxDep, _: AdminDep, channel: Literal["email", "teams", "all"] = "all"
) -> list[dict[str, Any]]:
    """Send a test message through the same path as real notifications."""
    results = notify.send_test(
        ctx, email=channel in ("email", "all"), teams=channel in ("teams", "all")
    )
    return [r.to_dict() for r in results]


# older passes stored fewer summary keys: return the stored keys only
@router.get("/cleanup/passes", response_model=CleanupPassListOut, response_model_exclude_unset=True)
def passes(
    ctx: CtxDep, _: PrincipalDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> list[dict[str, Any]]:
    return failures.recent_passes(ctx, limit)


@router.get("/backup-failures", response_model=BackupFailuresOut)
def backup_failures(
    ctx: CtxDep, _: PrincipalDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> JSONResponse:
    """Persisted failures, unresolved first, newest first; and the last successful backup."""

    def compute() -> dict[str, Any]:
        last = failures.last_backup_at(ctx)
        return {
            "failures": failures.recent_failures(ctx, limit),
            "last_backup_at": last.isoformat() if last else None,
        }

    return JSONResponse(readcache.cached(("backup-failures", limit), compute))


@router.get("/disk", response_model=DiskPressureOut)
def disk_pressure(ctx: CtxDep, _: PrincipalDep) -> JSONResponse:
    """LOGS_DIR's free space, local log growth per day, the bytes waiting for archive and
    the forecast days until full (``warning`` below ``DISK_WARN_DAYS``, with its cause)."""
    return JSONResponse(readcache.cached(("disk",), lambda: disk.report(ctx)))


class RunIncidentOut(BaseModel):
    """An open run-failure incident: the pipeline's last attempt failed."""

    pipeline: str
    run_id: str | None
    status: str | None
    since: str | None
    failures: int


class RunIncidentsOut(BaseModel):
    incidents: list[RunIncidentOut]


@router.get("/run-incidents", response_model=RunIncidentsOut)
def run_incidents(ctx: CtxDep, _: PrincipalDep) -> JSONResponse:
    """Pipelines whose final attempt failed and that have not succeeded since (the UI
    bell shows them next to backup failures)."""
    return JSONResponse(
        readcache.cached(("run-incidents",), lambda: {"incidents": notify.open_run_incidents(ctx)})
    )
