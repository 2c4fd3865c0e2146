"""Hash-chained manifests: the bucket's own record of every archived object (issue 16).

Every cleanup pass that archived anything writes one object
``{S3_PREFIX}/_manifests/{YYYY}/{MM}/{DD}/{pass_id}.jsonl``: one JSON line per archived
object (``key``, ``size``, ``sha256``, ``original_sha256``, ``encoding``, ``run_id``,
``pipeline_name``, ``started_at``, ``archived_at``, and what a rebuilt ledger needs:
``file``, ``original_size``, ``status``, ``triggered_by``, ``finished_at``, ``exit_code``,
``reason``), then a last line ``{"previous": "<SHA-256 of the previous manifest>",
"count": N}`` (``previous`` is null for the first manifest).

Guarantees:

- a manifest lists every ledger entry that no earlier manifest lists (``manifest_key``
  NULL): the entries of its own pass and those of a pass killed before it wrote its
  manifest — so no entry is ever left out;
- it is uploaded like a log (uncompressed; size and SHA-256 confirmed by a HEAD or by a
  proving PutObject answer, ``S3Store._confirm``; with Object Lock
  configured, under retention) and only then recorded (``archive_manifests``) and named
  on its entries, in one transaction;
- memory stays bounded: lines are written to a temporary file from keyset batches, and
  read back streaming.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from fastflow.archive import ledger
from fastflow.archive.s3 import META_SHA256, S3Store
from fastflow.context import Context
from fastflow.db.engine import Database
from fastflow.db.models import ArchivedRun, ArchiveManifest, utcnow
from fastflow.errors import ArchiveError

DIRECTORY = "_manifests"
SUFFIX = ".jsonl"
BATCH = 1000
SPOOL_CHUNK = 256 * 1024
TEMP_PREFIX = "archive-manifest-"  # swept by the next pass like other "archive-*.part" files
LINE_FIELDS = (
    "key",
    "size",
    "sha256",
    "original_sha256",
    "encoding",
    "run_id",
    "pipeline_name",
    "started_at",
    "archived_at",
)


@dataclass(frozen=True)
class Written:
    """A manifest uploaded, verified and recorded."""

    key: str
    sha256: str
    previous: str | None
    count: int
    size: int


def prefix(store: S3Store) -> str:
    """``{S3_PREFIX}/_manifests/`` (``_manifests/`` with an empty prefix)."""
    return f"{store.prefix}/{DIRECTORY}/" if store.prefix else f"{DIRECTORY}/"


_KEY_TAIL = re.compile(r"\d{4}/\d{2}/\d{2}/[^/]+" + re.escape(SUFFIX))


def is_manifest_key(store: S3Store, key: str) -> bool:
    """True for ``{prefix}YYYY/MM/DD/<name>.jsonl``: what a pass writes there — not a
    run's files under a pipeline folder of the same name (reserved since, see
    ``pipelines.RESERVED_NAMES``)."""
    head = prefix(store)
    return key.startswith(head) and _KEY_TAIL.fullmatch(key[len(head) :]) is not None


def key_for(store: S3Store, pass_id: int | None, at: datetime, attempt: int = 1) -> str:
    name = str(pass_id) if pass_id is not None else at.strftime("%H%M%S%f")
    if attempt > 1:
        name += f"-{attempt}"
    return f"{prefix(store)}{at.astimezone(UTC):%Y/%m/%d}/{name}{SUFFIX}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def lines_of(entry: ArchivedRun) -> Iterator[dict[str, Any]]:
    """The manifest lines of one ledger entry (one per object)."""
    for which in ("log", "metrics"):
        key = getattr(entry, f"{which}_key")
        if key is None:
            continue
        size, sha = getattr(entry, f"{which}_size"), getattr(entry, f"{which}_sha256")
        original_size, original_sha = entry.original(which)
        yield {
            "key": key,
            "size": size,
            "sha256": sha,
            "original_sha256": original_sha,
            "encoding": entry.encoding,
            "run_id": str(entry.run_id),
            "pipeline_name": entry.pipeline_name,
            "started_at": _iso(entry.started_at),
            "archived_at": _iso(entry.archived_at),
            "file": which,
            "original_size": original_size,
            "status": entry.status,
            "triggered_by": entry.triggered_by,
            "finished_at": _iso(entry.finished_at),
            "exit_code": entry.exit_code,
            "reason": entry.reason,
        }


def dump(line: dict[str, Any]) -> bytes:
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def trailer(previous: str | None, count: int) -> dict[str, Any]:
    return {"previous": previous, "count": count}


# --- the chain's end ---------------------------------------------------------------------------


def latest_recorded(db: Database) -> ArchiveManifest | None:
    """The newest recorded manifest (the chain's end as this database knows it)."""
    with db.session() as s:
        return s.scalars(
            select(ArchiveManifest)
            .order_by(ArchiveManifest.created_at.desc(), ArchiveManifest.key.desc())
            .limit(1)
        ).first()


def previous_sha256(ctx: Context, store: S3Store) -> str | None:
    """SHA-256 of the manifest a new one follows: the newest recorded one; with none
    recorded (a new or lost database), the newest manifest in the bucket; None for the
    first manifest of all."""
    last = latest_recorded(ctx.db)
    if last is not None:
        return last.sha256
    newest: tuple[datetime, str] | None = None
    for key, _, modified in store.list_keys(prefix(store)):
        if key.endswith(SUFFIX) and (newest is None or (modified, key) > newest):
            newest = (modified, key)
    if newest is None:
        return None
    info = store.head(newest[1])
    if info is not None and info.metadata.get(META_SHA256):
        return info.metadata[META_SHA256]
    return read(store, newest[1], lambda _: None).sha256


# --- writing ---------------------------------------------------------------------------------


def _temp_file(ctx: Context) -> Path:
    folder = ctx.settings.data_dir.expanduser().resolve() / "tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=folder)
        os.close(fd)
    except OSError as e:
        raise ArchiveError(f"cannot create a temporary file in {folder}: {e}") from e
    return Path(name)


def _free_key(store: S3Store, pass_id: int | None, at: datetime) -> str:
    """The manifest's key; never one that exists (pass ids restart with a new database)."""
    for attempt in range(1, 1000):
        key = key_for(store, pass_id, at, attempt)
        if store.head(key) is None:
            return key
    raise ArchiveError(f"no free manifest key for pass {pass_id}")  # pragma: no cover


def write_for_pass(
    ctx: Context, store: S3Store, pass_id: int | None, *, now: datetime | None = None
) -> Written | None:
    """Write the manifest of every unlisted ledger entry (None when there is none);
    ``ArchiveError`` when it cannot be uploaded and verified (the entries stay unlisted,
    the next pass lists them)."""
    now = now or utcnow()
    tmp = _temp_file(ctx)
    try:
        count = 0
        with tmp.open("wb") as f:
            for batch in ledger.unlisted(ctx.db, BATCH):
                for entry in batch:
                    for line in lines_of(entry):
                        f.write(dump(line))
                        count += 1
            if count == 0:
                return None
            previous = previous_sha256(ctx, store)
            f.write(dump(trailer(previous, count)))
        key = _free_key(store, pass_id, now)
        meta = {"fastflow_manifest": "1", "count": str(count), "previous": previous or ""}
        stored = store.uncompressed().put_verified(key, tmp, meta)
        written = Written(key, stored.sha256, previous, count, stored.size)
        _record(ctx.db, written, pass_id, now, _run_ids(tmp))
        return written
    finally:
        tmp.unlink(missing_ok=True)


def _run_ids(path: Path) -> Iterator[list[uuid.UUID]]:
    """The run ids a manifest file lists, in batches (consecutive duplicates dropped)."""
    batch: list[uuid.UUID] = []
    last = None
    with path.open("rb") as f:
        for raw in f:
            line = json.loads(raw)
            rid = line.get("run_id")
            if rid is None or rid == last:
                continue
            last = rid
            batch.append(uuid.UUID(rid))
            if len(batch) >= BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _record(
    db: Database,
    written: Written,
    pass_id: int | None,
    now: datetime,
    run_ids: Iterator[list[uuid.UUID]],
) -> None:
    """The manifest's row and its name on its entries, in one transaction."""
    with db.session() as s:
        s.add(
            ArchiveManifest(
                key=written.key,
                pass_id=pass_id,
                sha256=written.sha256,
                previous_sha256=written.previous,
                count=written.count,
                size=written.size,
                created_at=now,
            )
        )
        s.flush()
        for batch in run_ids:
            s.execute(ledger.mark_listed_stmt(written.key, batch))


# --- reading ---------------------------------------------------------------------------------


@dataclass
class Read:
    """What reading one manifest found: its SHA-256 and size as stored, its trailer, the
    number of object lines, and ``error`` when it is not a well-formed manifest.
    ``withheld``: its bytes did not have the expected SHA-256, so none of its lines was
    handed on."""

    key: str
    sha256: str = ""
    size: int = 0
    previous: str | None = None
    count: int | None = None
    lines: int = 0
    error: str | None = None
    missing: bool = False
    withheld: bool = False


def read(
    store: S3Store,
    key: str,
    on_lines: Callable[[list[dict[str, Any]]], None],
    batch: int = BATCH,
    expect_sha256: str | None = None,
) -> Read:
    """Stream manifest ``key``: hash every byte, hand its object lines to ``on_lines`` in
    batches (a run's lines never split across two batches), parse the trailer. Memory:
    one batch. ``ArchiveError`` only for a failure to read (not for a bad manifest).

    With ``expect_sha256``, no line is handed on unless the whole manifest has that
    SHA-256: it is first copied to a temporary file while it is hashed (the lines then
    come from that copy, so they are the bytes that were hashed), and a manifest with
    other bytes is only hashed and sized (``withheld``)."""
    result = Read(key)
    if store.head(key) is None:
        result.missing = True
        result.error = "the manifest does not exist"
        return result
    if expect_sha256 is None:
        return _parse(store.open(key), result, on_lines, batch)
    with tempfile.TemporaryFile(prefix="fastflow-manifest-") as spool:
        h = hashlib.sha256()
        for chunk in store.open(key):
            h.update(chunk)
            spool.write(chunk)
        if h.hexdigest() != expect_sha256:
            result.sha256 = h.hexdigest()
            result.size = spool.tell()
            result.withheld = True
            result.error = "its bytes differ from the SHA-256 it was stored with"
            return result
        spool.seek(0)
        return _parse(iter(lambda: spool.read(SPOOL_CHUNK), b""), result, on_lines, batch)


def _parse(
    chunks: Iterable[bytes],
    result: Read,
    on_lines: Callable[[list[dict[str, Any]]], None],
    batch: int,
) -> Read:
    """``read``'s parser over ``chunks``: hash, hand on object lines, check the trailer."""
    h = hashlib.sha256()
    pending: list[dict[str, Any]] = []
    held: bytes | None = None  # the last complete line: the trailer, unless more follow
    buf = b""
    number = 0

    def take(raw: bytes) -> None:
        nonlocal number
        number += 1
        if result.error is not None:
            return
        try:
            line = json.loads(raw)
        except ValueError:
            result.error = f"line {number} is not valid JSON"
            return
        if not isinstance(line, dict) or "key" not in line:
            result.error = f"line {number} is not an object line"
            return
        if pending and len(pending) >= batch and pending[-1].get("run_id") != line.get("run_id"):
            on_lines(pending[:])
            pending.clear()
        pending.append(line)
        result.lines += 1

    for chunk in chunks:
        h.update(chunk)
        result.size += len(chunk)
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for raw in complete:
            if not raw.strip():
                continue
            if held is not None:
                take(held)
            held = raw
    if buf.strip():  # no final newline
        if held is not None:
            take(held)
        held = buf
    if pending and result.error is None:
        on_lines(pending)
    result.sha256 = h.hexdigest()
    if held is None:
        result.error = result.error or "the manifest is empty"
        return result
    try:
        last = json.loads(held)
    except ValueError:
        last = None
    if not isinstance(last, dict) or "count" not in last or "previous" not in last:
        result.error = result.error or "the last line is not the chain line"
        return result
    result.previous = last["previous"] or None
    result.count = last["count"] if isinstance(last["count"], int) else None
    if result.error is None and result.count != result.lines:
        result.error = f"says it lists {last['count']} objects, but lists {result.lines}"
    return result


def recorded(db: Database, batch: int = 500) -> Iterator[list[ArchiveManifest]]:
    """Every recorded manifest in chain order (oldest first), in batches (keyset)."""
    cursor: tuple[datetime, str] | None = None
    while True:
        q = (
            select(ArchiveManifest)
            .order_by(ArchiveManifest.created_at, ArchiveManifest.key)
            .limit(batch)
        )
        if cursor is not None:
            after_time = ArchiveManifest.created_at > cursor[0]
            same_time = (ArchiveManifest.created_at == cursor[0]) & (
                ArchiveManifest.key > cursor[1]
            )
            q = q.where(after_time | same_time)
        with db.session() as s:
            rows = list(s.scalars(q))
        if not rows:
            return
        yield rows
        cursor = (rows[-1].created_at, rows[-1].key)


def recorded_keys(db: Database) -> set[str]:
    with db.session() as s:
        return set(s.scalars(select(ArchiveManifest.key)))


def recorded_shas(db: Database) -> dict[str, str]:
    """Every recorded manifest's key and the SHA-256 this database recorded for it."""
    with db.session() as s:
        rows = s.execute(select(ArchiveManifest.key, ArchiveManifest.sha256))
        return {key: sha for key, sha in rows}
