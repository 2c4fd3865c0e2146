"""Run objects as the API and UI show them: the row, plus archive information; a run
whose row was deleted by retention is shown from its archive ledger entry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from fastflow.archive import ledger
from fastflow.config import Settings
from fastflow.context import Context
from fastflow.db.models import ArchivedRun, PipelineRun
from fastflow.errors import RunNotFound
from fastflow.runs import store as runs
from fastflow.runs.readback import open_run_file
from fastflow.security import public_text

MAX_METRIC_LINES = 200_000


def _archive_info(entry: ArchivedRun | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {
        "bucket": entry.bucket,
        "log_key": entry.log_key,
        "log_sha256": entry.log_sha256,
        "log_size": entry.log_size,
        "metrics_key": entry.metrics_key,
        "archived_at": entry.archived_at.isoformat(),
        "local_deleted_at": entry.local_deleted_at.isoformat() if entry.local_deleted_at else None,
        "reason": entry.reason,
        "log_truncated_at": entry.log_truncated_at.isoformat() if entry.log_truncated_at else None,
        "full_log_archived": entry.full_log_archived,
    }


def _ledger(ctx: Context, ids: list[uuid.UUID]) -> dict[uuid.UUID, ArchivedRun]:
    return ledger.get_many(ctx.db, ids)


def _pin(run: PipelineRun | ArchivedRun | None) -> dict[str, Any]:
    """Who pinned the run, when and why (all None: not pinned; issue 16)."""
    at = run.pinned_at if run is not None else None
    return {
        "pinned_at": at.isoformat() if at else None,
        "pinned_by": run.pinned_by if run is not None and at else None,
        "pin_reason": run.pin_reason if run is not None and at else None,
    }


def view(run: PipelineRun, entry: ArchivedRun | None, settings: Settings | None) -> dict[str, Any]:
    """The run as the API and UI show it. With ``settings`` (a client's view), its failure
    reason names the server's folders by their settings (``PIPELINES_DIR/x``), as all
    error text a client reads does; without (the CLI, on the server), as recorded."""
    data = run.to_dict()
    if run.failure_reason and settings is not None:
        data["failure_reason"] = public_text(run.failure_reason, settings)
    data.update(_pin(run))
    data["duration_s"] = (
        round((run.finished_at - run.started_at).total_seconds(), 3) if run.finished_at else None
    )
    data["archived"] = entry is not None
    data["archive"] = _archive_info(entry)
    data["row_deleted"] = False
    return data


def view_from_ledger(entry: ArchivedRun) -> dict[str, Any]:
    return {
        "id": str(entry.run_id),
        "pipeline_name": entry.pipeline_name,
        "status": entry.status,
        "triggered_by": entry.triggered_by,
        "started_at": entry.started_at.isoformat(),
        "finished_at": entry.finished_at.isoformat() if entry.finished_at else None,
        "exit_code": entry.exit_code,
        "log_file": None,
        "metrics_file": None,
        "log_size": entry.log_size,
        "executor": None,  # not recorded in the archive ledger
        "image": None,
        "attempt": 1,
        "retry_of": None,
        "upstream_run_id": None,
        "scheduled_for": None,
        "queued_at": None,
        "run_config_id": None,
        "failure_reason": None,
        **_pin(entry),  # a run retention removed is pinned on its ledger entry
        "duration_s": (
            round((entry.finished_at - entry.started_at).total_seconds(), 3)
            if entry.finished_at
            else None
        ),
        "archived": True,
        "archive": _archive_info(entry),
        "row_deleted": True,
    }


def list_views(
    ctx: Context, *, include_archived: bool = False, public: bool = True, **filters: Any
) -> list[dict[str, Any]]:
    """Runs, newest first (filters: ``pipeline``, ``status``, ``day`` (a UTC ``date``),
    ``limit``, ``offset``).
    ``include_archived``: runs whose rows retention deleted are listed too, from their
    archive ledger entries (``row_deleted``), in the same order and page.
    ``public``: as a client reads them (``view``); False for the CLI on the server."""
    settings = ctx.settings if public else None
    if not include_archived:
        rows = runs.list_runs(ctx.db, **filters)
        entries = _ledger(ctx, [r.id for r in rows])
        return [view(r, entries.get(r.id), settings) for r in rows]
    page = runs.page_with_archived(ctx.db, **filters)
    ids = [rid for rid, _ in page]
    found = runs.get_many(ctx.db, ids)
    entries = _ledger(ctx, ids)
    out = []
    for rid in ids:  # a row deleted meanwhile is shown from its entry; a vanished run not
        if rid in found:
            out.append(view(found[rid], entries.get(rid), settings))
        elif rid in entries:
            out.append(view_from_ledger(entries[rid]))
    return out


def get_view(ctx: Context, run_id: uuid.UUID) -> dict[str, Any]:
    run = runs.get(ctx.db, run_id)
    entry = _ledger(ctx, [run_id]).get(run_id)
    if run is not None:
        return view(run, entry, ctx.settings)
    if entry is not None:
        return view_from_ledger(entry)
    raise RunNotFound(f"run {run_id} not found")


def list_archive(
    ctx: Context, pipeline: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    return [e.to_dict() for e in ledger.page(ctx.db, pipeline, limit, offset)]


def _metric_lines(ctx: Context, run_id: uuid.UUID) -> Iterator[bytes]:
    source = open_run_file(ctx, run_id, "metrics", runs.get(ctx.db, run_id))
    if source is not None:
        yield from source.chunks


def metrics(ctx: Context, run_id: uuid.UUID) -> list[dict[str, Any]]:
    """The run's samples (malformed lines are skipped)."""
    out: list[dict[str, Any]] = []
    pending = b""
    for chunk in _metric_lines(ctx, run_id):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _add_sample(out, line)
        if len(out) >= MAX_METRIC_LINES:
            break
    _add_sample(out, pending)
    return out[:MAX_METRIC_LINES]


def _add_sample(out: list[dict[str, Any]], line: bytes) -> None:
    if not line.strip():
        return
    try:
        item = json.loads(line)
    except ValueError:
        return
    if isinstance(item, dict):
        out.append(item)
