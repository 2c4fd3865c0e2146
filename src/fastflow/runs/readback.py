"""Read a run's log back: from local disk, or from the archive via the ledger.

A run archived by retention stays readable after its files and its ``pipeline_runs`` row
are gone, as long as its ``archived_runs`` entry exists and S3 is configured.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from fastflow.archive import compression, ledger
from fastflow.archive import s3 as archive
from fastflow.context import Context
from fastflow.db.models import ArchivedRun, PipelineRun
from fastflow.errors import ArchiveNotConfigured, LogNotAvailable, RunNotFound
from fastflow.runs import files as logfiles


@dataclass(frozen=True)
class LogSource:
    """Where a log is read from, its size, and the stream of its bytes."""

    origin: str  # "local" or "archive"
    size: int
    chunks: Iterator[bytes]
    location: str


def ledger_entry(app: Context, run_id: uuid.UUID) -> ArchivedRun | None:
    return ledger.get(app.db, run_id)


def open_log(
    app: Context,
    run_id: uuid.UUID,
    run: PipelineRun | None,
    tail_bytes: int | None = None,
    *,
    full: bool = False,
) -> LogSource:
    """Stream the log (or its last ``tail_bytes``); local copy first, then the archive.

    ``full``: when the local log was truncated after its full copy was archived, read
    the full log from the archive (otherwise the local copy is the full log)."""
    entry = ledger_entry(app, run_id) if full else None
    if entry is not None and entry.full_log_archived and entry.log_key is not None:
        return _from_archive(app, run_id, entry, tail_bytes)
    if run is not None and run.log_file:
        path = logfiles.resolve(app.settings.logs_root, run.log_file)
        size = logfiles.size_of(path)
        if size is not None:
            start = logfiles.tail_start(size, tail_bytes)
            return LogSource("local", size, logfiles.iter_file(path, start), str(path))
    entry = ledger_entry(app, run_id)
    if entry is None or entry.log_key is None:
        if run is None:
            raise RunNotFound(f"run {run_id} not found")
        raise LogNotAvailable(f"run {run_id} has no log: it is neither local nor archived")
    return _from_archive(app, run_id, entry, tail_bytes)


def _from_archive(
    app: Context, run_id: uuid.UUID, entry: ArchivedRun, tail_bytes: int | None
) -> LogSource:
    assert entry.log_key is not None
    try:
        store = archive.open_store(app.settings)
    except ArchiveNotConfigured as e:
        raise LogNotAvailable(
            f"the log of run {run_id} is archived at s3://{entry.bucket}/{entry.log_key}, "
            f"but it cannot be read back: {e}"
        ) from e
    location = f"s3://{entry.bucket}/{entry.log_key}"
    size = entry.original("log")[0] or 0
    start = logfiles.tail_start(size, tail_bytes)
    if entry.encoding:
        # a compressed object cannot be read from the middle: decompress and skip, streaming
        chunks = compression.skip(store.open_original(entry.log_key, entry.encoding), start)
        return LogSource("archive", size, chunks, location)
    return LogSource("archive", size, store.open(entry.log_key, start), location)
