"""Helpers for cleanup tests: seed finished runs with real files, inspect the archive."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastflow.context import Context
from fastflow.db.models import ArchivedRun, BackupFailure, PipelineRun
from fastflow.runs import files as logfiles

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@dataclass
class Seeded:
    id: uuid.UUID
    pipeline: str
    log: Path
    metrics: Path
    log_bytes: bytes
    metrics_bytes: bytes

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.log_bytes).hexdigest()


def seed_run(
    ctx: Context,
    pipeline: str,
    started_at: datetime,
    *,
    status: str = "SUCCESS",
    log: bytes | None = None,
    metrics: bool = True,
    write_log: bool = True,
) -> Seeded:
    """A run as the runner leaves it: row plus run.log and metrics.jsonl on disk."""
    rid = uuid.uuid4()
    log_rel = logfiles.log_rel(pipeline, str(rid))
    metrics_rel = logfiles.metrics_rel(pipeline, str(rid))
    root = ctx.settings.logs_root
    log_path, metrics_path = root / log_rel, root / metrics_rel
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_bytes = (
        log
        if log is not None
        else (f"[2026-01-01 00:00:00.000] run {rid} of {pipeline}\n".encode() * 20)
    )
    metrics_bytes = b'{"timestamp": "2026-01-01T00:00:00+00:00", "cpu_percent": 1, "ram_mb": 2}\n'
    if write_log:
        log_path.write_bytes(log_bytes)
    if metrics:
        metrics_path.write_bytes(metrics_bytes)
    with ctx.db.session() as s:
        s.add(
            PipelineRun(
                id=rid,
                pipeline_name=pipeline,
                status=status,
                triggered_by="schedule",
                started_at=started_at,
                finished_at=None
                if status in ("RUNNING", "PENDING")
                else started_at + timedelta(seconds=5),
                exit_code=None if status in ("RUNNING", "PENDING") else 0,
                log_file=log_rel,
                metrics_file=metrics_rel if metrics else None,
                log_size=len(log_bytes) if write_log else None,
            )
        )
    return Seeded(rid, pipeline, log_path, metrics_path, log_bytes, metrics_bytes)


def seed_series(ctx: Context, pipeline: str, n: int, *, days_apart: float = 1.0) -> list[Seeded]:
    """``n`` finished runs, oldest first, the newest one day before ``NOW``."""
    return [seed_run(ctx, pipeline, NOW - timedelta(days=days_apart * (n - i))) for i in range(n)]


def run_row(ctx: Context, rid: uuid.UUID) -> PipelineRun | None:
    with ctx.db.session() as s:
        return s.get(PipelineRun, rid)


def ledger(ctx: Context) -> dict[uuid.UUID, ArchivedRun]:
    with ctx.db.session() as s:
        return {e.run_id: e for e in s.query(ArchivedRun).all()}


def failures(ctx: Context, *, unresolved: bool = True) -> list[BackupFailure]:
    with ctx.db.session() as s:
        q = s.query(BackupFailure)
        if unresolved:
            q = q.filter(BackupFailure.resolved_at.is_(None))
        return list(q.order_by(BackupFailure.id).all())


def object_bytes(client: object, bucket: str, key: str) -> bytes:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]  # type: ignore[attr-defined]
    data: bytes = body.read()
    return data


def keys(client: object, bucket: str, *, manifests: bool = False) -> set[str]:
    """The object keys in ``bucket``; the passes' manifests (``/_manifests/``) only when
    ``manifests`` — every archiving pass writes one besides the run objects."""
    out: set[str] = set()
    paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    for page in paginator.paginate(Bucket=bucket):
        out.update(o["Key"] for o in page.get("Contents", []))
    return out if manifests else {k for k in out if "/_manifests/" not in k}


@contextmanager
def unchanged(path: Path) -> Iterator[None]:
    """Assert that the bytes of ``path`` are the same after the block."""
    before = path.read_bytes()
    yield
    assert path.read_bytes() == before


def pending_entry(ctx: Context, bucket: str, run: Seeded, pipeline: str) -> str:
    """Archive ``run``'s log (key ``pipeline-logs/<pipeline>/<id>/run.log``) and record it
    in the ledger as archived but not yet deleted locally — what a pass killed between
    the two leaves; the object's key."""
    from fastflow.archive import s3 as archive

    store = archive.open_store(ctx.settings)
    key = f"pipeline-logs/{pipeline}/{run.id}/run.log"
    stored = store.put_verified(key, run.log, {"run_id": str(run.id)})
    with ctx.db.session() as s:
        s.add(
            ArchivedRun(
                run_id=run.id,
                pipeline_name=pipeline,
                status="SUCCESS",
                triggered_by="schedule",
                started_at=NOW,
                bucket=bucket,
                log_key=stored.key,
                log_size=stored.size,
                log_sha256=stored.sha256,
                reason="archive_and_delete_run",
            )
        )
    return stored.key
