"""Read a run's log back: from local disk, or from the archive via the ledger.

A run archived by retention stays readable after its files and its ``pipeline_runs`` row
are gone, as long as its ``archived_runs`` entry exists and S3 is configured. A local
file is read up to the size it had when it was opened (``LogSource.size``): a log that is
still growing gives a consistent snapshot, and its size is the offset to follow it from.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from fastflow.archive import compression, ledger
from fastflow.context import Context
from fastflow.db.models import ArchivedRun, PipelineRun
from fastflow.errors import ArchiveNotConfigured, LogNotAvailable, LogNotStarted, RunNotFound
from fastflow.runs import files as logfiles
from fastflow.runs import store as runs


@dataclass(frozen=True)
class LogSource:
    """Where a log is read from, its size, and the stream of its bytes."""

    origin: str  # "local" or "archive"
    size: int
    chunks: Iterator[bytes]
    location: str


def ledger_entry(ctx: Context, run_id: uuid.UUID) -> ArchivedRun | None:
    return ledger.get(ctx.db, run_id)


RunFiles = ledger.RunFiles


@dataclass(frozen=True, slots=True)
class Located:
    """What reading a run's files back needs: its row's file columns (None when the row
    is gone) and its ledger entry (None when it has none), as read together."""

    run: RunFiles | None
    entry: ArchivedRun | None


def locate(ctx: Context, run_id: uuid.UUID) -> Located:
    """The run's file columns and its ledger entry in one query (read fresh each time:
    a run may be archived, truncated or deleted by another process at any moment)."""
    run, entry = ledger.locate(ctx.db, run_id)
    return Located(run, entry)


FileKind = Literal["log", "metrics"]


def open_run_file(
    ctx: Context,
    run_id: uuid.UUID,
    kind: FileKind,
    run: PipelineRun | RunFiles | None = None,
    tail_bytes: int | None = None,
    *,
    full: bool = False,
    start: int | None = None,
    chunk: int = logfiles.READ_CHUNK,
    entry: ArchivedRun | None = None,
    entry_known: bool = False,
) -> LogSource | None:
    """The one reader of a run's files: the local copy first, then the archived object
    (through the ledger). None when the run has no such file anywhere; ``RunNotFound``
    when neither the run nor a ledger entry exists. ``full`` (logs): when the local log
    was truncated after its full copy was archived, read the full copy. ``start``: from
    that byte offset instead of the last ``tail_bytes``; ``chunk``: local read size;
    ``entry``: the run's ledger entry when the caller already has it; ``entry_known``:
    ``entry`` is what the ledger held when the caller read the row (None: no entry), not
    to be looked up again — unless the local file the row names has gone meanwhile (it
    may have been archived and deleted since: its entry is written first)."""
    if full and kind == "log" and entry is None and not entry_known:
        entry = ledger_entry(ctx, run_id)
    if full and entry is not None and entry.full_log_archived:
        return _from_archive(ctx, run_id, entry, kind, tail_bytes, start)
    rel = (run.log_file if kind == "log" else run.metrics_file) if run is not None else None
    if rel:
        path = logfiles.resolve(ctx.settings.logs_root, rel)
        opened = _open_local(ctx.settings.logs_root, rel)
        if opened is not None:
            f, size = opened
            first = _first_byte(size, tail_bytes, start)
            return LogSource("local", size, _read_range(f, first, size, chunk), str(path))
    vanished = rel and (entry is None or getattr(entry, f"{kind}_key") is None)
    if (entry is None and not entry_known) or (entry_known and vanished):
        entry = ledger_entry(ctx, run_id)
    if entry is None and run is None:
        raise RunNotFound(f"run {run_id} not found")
    if entry is None or getattr(entry, f"{kind}_key") is None:
        return None
    return _from_archive(ctx, run_id, entry, kind, tail_bytes, start)


def _first_byte(size: int, tail_bytes: int | None, start: int | None) -> int:
    if start is not None:
        return min(max(0, start), size)
    return logfiles.tail_start(size, tail_bytes)


def _open_local(logs_root: Path, rel: str) -> tuple[BinaryIO, int] | None:
    """The open file and its size now, or None when it does not exist. Opened through
    a walk from ``LOGS_DIR`` that follows no link (``runs.files.open_below``): a folder
    swapped for a link after ``resolve`` checked the path cannot make this read a file
    outside ``LOGS_DIR``."""
    f = logfiles.open_below(logs_root, rel)
    if f is None:
        return None
    return f, os.fstat(f.fileno()).st_size


def _read_range(f: BinaryIO, start: int, end: int, chunk: int) -> Iterator[bytes]:
    """Bytes ``start`` to ``end`` of an open file, in chunks; the file is closed at the end
    or when the iterator is."""
    with f:
        f.seek(start)
        left = end - start
        while left > 0:
            data = f.read(min(chunk, left))
            if not data:
                return
            left -= len(data)
            yield data


def open_log(
    ctx: Context,
    run_id: uuid.UUID,
    run: PipelineRun | RunFiles | None,
    tail_bytes: int | None = None,
    *,
    full: bool = False,
    start: int | None = None,
    chunk: int = logfiles.READ_CHUNK,
    entry: ArchivedRun | None = None,
    entry_known: bool = False,
) -> LogSource:
    """Stream the log (or its last ``tail_bytes``, or from byte ``start``);
    ``LogNotAvailable`` when it is neither local nor archived. ``entry``/``entry_known``:
    as for ``open_run_file``."""
    source = open_run_file(
        ctx,
        run_id,
        "log",
        run,
        tail_bytes,
        full=full,
        start=start,
        chunk=chunk,
        entry=entry,
        entry_known=entry_known,
    )
    if source is None:
        why = None if run is None else runs.no_log_yet(run.status, run.failure_reason)
        if why is not None:
            raise LogNotStarted(f"run {run_id} has no log: {why}")
        raise LogNotAvailable(f"run {run_id} has no log: it is neither local nor archived")
    return source


def _from_archive(
    ctx: Context,
    run_id: uuid.UUID,
    entry: ArchivedRun,
    kind: FileKind,
    tail_bytes: int | None,
    from_byte: int | None = None,
) -> LogSource:
    key = getattr(entry, f"{kind}_key")
    assert key is not None
    location = f"s3://{entry.bucket}/{key}"
    from fastflow.archive import s3 as archive  # boto3: only when an archive is read

    try:
        store = archive.open_store(ctx.settings)
    except ArchiveNotConfigured as e:
        raise LogNotAvailable(
            f"the {kind} of run {run_id} is archived at {location}, but it cannot be read back: {e}"
        ) from e
    recorded = entry.original(kind)[0]
    size = recorded or 0
    start = _first_byte(size, tail_bytes, from_byte)
    if entry.encoding:
        # a compressed object cannot be read from the middle: decompress and skip, streaming
        chunks = compression.skip(store.open_original(key, entry.encoding, recorded), start)
        return LogSource("archive", size, chunks, location)
    if recorded is None:  # (an entry without sizes: read what is there)
        return LogSource("archive", size, store.open(key, start), location)
    if start >= recorded:
        # nothing after ``start`` (S3 answers such a range with 416): the object's length
        # is checked by a HEAD instead, so that a damaged one is not served as empty
        info = store.head(key)
        held = None if info is None else info.size
        if held != recorded:
            why = "it is missing" if held is None else f"it holds {held:,} bytes"
            raise compression.damaged(location, f"{why}, not the {recorded:,} recorded")
        return LogSource("archive", size, iter(()), location)
    # an object shorter or longer than recorded is damaged: never served as the whole log
    chunks = compression.exactly(store.open(key, start), recorded - start, location, start)
    return LogSource("archive", size, chunks, location)
