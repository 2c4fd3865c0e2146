"""``fastflow archive rebuild-index``: the archive ledger rebuilt from the manifests in the
bucket, after the database was lost (or into a partial one).

Guarantees:

- every object a manifest lists gets its ledger entry back (bucket, keys, sizes, SHA-256,
  encoding, run facts), so that ``fastflow logs RUN_ID``, the API and the UI read it by
  run id again;
- idempotent: a second run changes nothing; an existing entry only gains the objects it
  lacks, and is replaced only by a newer record of the same run (``archived_at``) — a
  newer entry is never overwritten;
- the manifests are recorded (``archive_manifests``) in the chain's order, followed from
  the ``previous`` links; a broken link is reported;
- a manifest whose bytes differ from the SHA-256 it was stored with is reported and
  none of its lines is indexed (``include_damaged`` indexes them anyway); it is recorded
  with the SHA-256 it was stored with, so ``verify --manifests`` keeps reporting it and
  the chain goes on from the original. An intact manifest is the authority for the
  entries that name it: an entry rebuilt from a damaged copy of it gets the intact
  manifest's values back;
- rebuilt entries whose local files are gone count as deleted locally; those with local
  files stay pending, and the next cleanup pass verifies their objects before it deletes
  anything (as after a crash); while ``LOGS_DIR`` is not this installation's
  (``runs.logsdir``: an unmounted volume) every entry stays pending, and that is
  reported;
- read-only towards the bucket; memory bounded by the list of manifest keys and one batch
  of lines.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from fastflow.archive import ledger, manifests
from fastflow.archive import s3 as archive
from fastflow.context import Context
from fastflow.db.models import ArchivedRun, ArchiveManifest, PipelineRun, utcnow
from fastflow.errors import InvalidPipelineName
from fastflow.runs import files as logfiles
from fastflow.runs import logsdir, pipelines

TAIL_BYTES = 4096  # the chain line is short; read only the end of each manifest for it
MAX_PROBLEMS = 100


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    modified: datetime
    sha256: str | None  # as stored with the object (metadata)
    previous: str | None


@dataclass
class RebuildReport:
    manifests: int = 0
    manifests_done: int = 0
    manifests_recorded: int = 0
    objects: int = 0
    entries_created: int = 0
    entries_updated: int = 0
    entries_unchanged: int = 0
    manifests_withheld: int = 0
    entries_conflicting: int = 0
    entries_skipped: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def rebuild(
    ctx: Context,
    progress: Callable[[RebuildReport], None] | None = None,
    include_damaged: bool = False,
    replace_conflicting: bool = False,
) -> RebuildReport:
    """Rebuild the ledger (and the manifest records) from the manifests in the bucket.
    A manifest whose bytes differ from the SHA-256 this database recorded for it (or, if
    it recorded none, the one it was stored with) is not indexed unless
    ``include_damaged``; an existing entry that a manifest describes otherwise is kept
    and reported unless ``replace_conflicting``."""
    store = archive.open_store(ctx.settings)
    report = RebuildReport()
    listed = [_tail(store, key, size, modified) for key, size, modified in _manifest_keys(store)]
    report.manifests = len(listed)
    ordered = chain_order(listed, report)
    order = {m.key: i for i, m in enumerate(ordered)}
    known = manifests.recorded_shas(ctx.db)
    local: Callable[[str, uuid.UUID], bool] = _LocalFiles(ctx)
    away = logsdir.problem(ctx.db, ctx.settings.logs_root, mark=False)
    if away is not None:  # an unmounted volume: local files cannot be told gone
        report.problem(f"{away}; every rebuilt entry is left pending local deletion")
        local = _pending
    created_at: datetime | None = None
    for m in ordered:

        def on_lines(lines: list[dict[str, Any]], key: str = m.key) -> None:
            report.objects += len(lines)
            rows = _rows(local, store.bucket, key, lines, report)
            rows = _not_live(ctx, rows, local, key, report)
            c, u, n, conflicts = ledger.upsert_rebuilt(ctx.db, rows, order, replace_conflicting)
            report.entries_created += c
            report.entries_updated += u
            report.entries_unchanged += n
            report.entries_conflicting += len(conflicts)
            for conflict in conflicts:
                report.problem(
                    f"{key}: {conflict}; the ledger entry is kept (--replace-conflicting "
                    "takes the manifest's record)"
                )
            if progress is not None:
                progress(report)

        recorded = known.get(m.key)
        expected = recorded or m.sha256
        read = manifests.read(
            store, m.key, on_lines, expect_sha256=None if include_damaged else expected
        )
        where = "this database recorded it with" if recorded else "it was stored with"
        if read.withheld:
            report.manifests_withheld += 1
            report.problem(
                f"{m.key}: its SHA-256 is {read.sha256}, but {where} {expected}; "
                "none of its objects was indexed (restore it and run rebuild-index again, "
                "or index it as it reads with --include-damaged)"
            )
        elif read.error is not None:
            report.problem(f"{m.key}: {read.error}")
        if expected and read.sha256 != expected and not read.withheld:
            report.problem(f"{m.key}: its SHA-256 is {read.sha256}, but {where} {expected}")
        stamp = (
            max(m.modified, created_at + timedelta(microseconds=1)) if created_at else m.modified
        )
        created_at = stamp
        if m.key not in known and not read.missing:
            _record_manifest(ctx, m, read, stamp)
            report.manifests_recorded += 1
        report.manifests_done += 1
        if progress is not None:
            progress(report)
    return report


def _manifest_keys(store: archive.S3Store) -> list[tuple[str, int, datetime]]:
    return [
        (key, size, modified)
        for key, size, modified in store.list_keys(manifests.prefix(store))
        if manifests.is_manifest_key(store, key)
    ]


def _tail(store: archive.S3Store, key: str, size: int, modified: datetime) -> Listed:
    """The manifest's stored SHA-256 (HEAD) and its ``previous`` link (its last line)."""
    info = store.head(key)
    sha = info.metadata.get(archive.META_SHA256) if info is not None else None
    data = b"".join(store.open(key, max(0, size - TAIL_BYTES))) if size else b""
    previous: str | None = None
    for raw in reversed(data.splitlines()):
        if raw.strip():
            try:
                last = json.loads(raw)
            except ValueError:
                break
            if isinstance(last, dict) and "previous" in last:
                previous = last["previous"] or None
            break
    stamp = modified if modified.tzinfo else modified.replace(tzinfo=UTC)
    return Listed(key, size, stamp, sha, previous)


def chain_order(listed: list[Listed], report: RebuildReport) -> list[Listed]:
    """The manifests in chain order: from the first (no ``previous``, or one pointing to
    no manifest in the bucket) along the links; forks side by side by time; a broken
    link is reported. Every manifest appears once."""
    by_sha = {m.sha256: m for m in listed if m.sha256}
    followers: dict[str | None, list[Listed]] = {}
    for m in listed:
        followers.setdefault(m.previous if m.previous in by_sha else None, []).append(m)
    for m in listed:
        if m.previous is not None and m.previous not in by_sha:
            report.problem(
                f"{m.key}: links to a manifest with SHA-256 {m.previous}, which is not in "
                "the bucket (the chain starts again here)"
            )
    out: list[Listed] = []
    seen: set[str] = set()
    stack = sorted(followers.get(None, []), key=_when, reverse=True)
    while stack:
        m = stack.pop()
        if m.key in seen:
            continue
        seen.add(m.key)
        out.append(m)
        nxt = followers.get(m.sha256, []) if m.sha256 else []
        if len(nxt) > 1:
            report.problem(
                f"{m.key} is followed by {len(nxt)} manifests ("
                + ", ".join(n.key for n in sorted(nxt, key=_when))
                + "): a pass may have been killed after writing its manifest"
            )
        stack.extend(sorted(nxt, key=_when, reverse=True))
    for m in sorted(listed, key=_when):  # a cycle: appended by time, reported
        if m.key not in seen:
            report.problem(f"{m.key}: not reachable from the start of the chain")
            out.append(m)
            seen.add(m.key)
    return out


def _when(m: Listed) -> tuple[datetime, str]:
    return (m.modified, m.key)


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _which(line: dict[str, Any]) -> str:
    which = line.get("file")
    if which in ("log", "metrics"):
        return str(which)
    name = str(line.get("key", "")).rsplit("/", 1)[-1]
    return "metrics" if name.startswith(logfiles.METRICS_NAME) else "log"


def _rows(
    local: Callable[[str, uuid.UUID], bool],
    bucket: str,
    manifest_key: str,
    lines: list[dict[str, Any]],
    report: RebuildReport,
) -> list[dict[str, Any]]:
    """Ledger rows from manifest lines: one per run (its objects merged). A line without
    a valid run id or with a pipeline name fastflow would refuse is left out, reported."""
    rows: dict[uuid.UUID, dict[str, Any]] = {}
    now = utcnow()
    for line in lines:
        try:
            rid = uuid.UUID(str(line["run_id"]))
            pipeline = pipelines.validate_name(str(line.get("pipeline_name") or ""))
        except (KeyError, ValueError, InvalidPipelineName) as e:
            report.entries_skipped += 1
            report.problem(f"{manifest_key}: a line is left out: {e}")
            continue
        row = rows.get(rid)
        if row is None:
            row = rows[rid] = {
                "run_id": rid,
                "pipeline_name": pipeline,
                "status": str(line.get("status") or "UNKNOWN")[:16],
                "triggered_by": str(line.get("triggered_by") or "unknown")[:16],
                "started_at": _parse_time(line.get("started_at")) or now,
                "finished_at": _parse_time(line.get("finished_at")),
                "exit_code": line.get("exit_code"),
                "bucket": bucket,
                "reason": str(line.get("reason") or "rebuild")[:32],
                "encoding": line.get("encoding") or None,
                "archived_at": _parse_time(line.get("archived_at")) or now,
                "local_deleted_at": None if local(pipeline, rid) else now,
                "manifest_key": manifest_key,
            }
        which = _which(line)
        row[f"{which}_key"] = line.get("key")
        row[f"{which}_size"] = line.get("size")
        row[f"{which}_sha256"] = line.get("sha256")
        row[f"{which}_original_size"] = line.get("original_size")
        row[f"{which}_original_sha256"] = line.get("original_sha256")
    return list(rows.values())


def _not_live(
    ctx: Context,
    rows: list[dict[str, Any]],
    local: Callable[[str, uuid.UUID], bool],
    manifest_key: str,
    report: RebuildReport,
) -> list[dict[str, Any]]:
    """``rows`` without the runs this database still holds with their local files and no
    ledger entry: an entry pending local deletion would let the bucket's word delete a
    run that retention never chose (a manifest written by someone else). Such a run is
    archived by the pass that selects it; it is reported here."""
    pending = [r["run_id"] for r in rows if r["local_deleted_at"] is None]
    if not pending:
        return rows
    with ctx.db.session() as s:
        live = set(s.scalars(select(PipelineRun.id).where(PipelineRun.id.in_(pending))))
        live -= set(s.scalars(select(ArchivedRun.run_id).where(ArchivedRun.run_id.in_(live))))
    if not live:
        return rows
    for rid in sorted(live, key=str):
        report.entries_skipped += 1
        report.problem(
            f"{manifest_key}: run {rid} is still in this database with its local files and "
            "has no ledger entry; not indexed (the pass that selects it archives it)"
        )
    return [r for r in rows if r["run_id"] not in live]


def _pending(pipeline: str, rid: uuid.UUID) -> bool:
    """Every run counts as having local files: the next pass settles each entry (it
    verifies the objects, then deletes what it finds locally)."""
    return True


class _LocalFiles:
    """Which runs still have a log or metrics file under LOGS_DIR. Only names that are
    real folders of LOGS_DIR are looked into (read once), so a name from a manifest never
    leads outside it, and a pipeline without a folder costs no system call."""

    def __init__(self, ctx: Context) -> None:
        self.root = ctx.settings.logs_root
        try:
            self.pipelines = {p.name for p in self.root.iterdir() if p.is_dir()}
        except OSError:
            self.pipelines = set()

    def __call__(self, pipeline: str, rid: uuid.UUID) -> bool:
        if pipeline not in self.pipelines:
            return False
        folder = self.root / pipeline / str(rid)
        return any((folder / name).exists() for name in (logfiles.LOG_NAME, logfiles.METRICS_NAME))


def _record_manifest(ctx: Context, m: Listed, read: manifests.Read, at: datetime) -> None:
    """Record manifest ``m`` with the SHA-256 it was stored with (what its bytes hashed
    to when that is unknown): a damaged manifest stays damaged to ``verify --manifests``,
    and the next pass links to the original."""
    key = m.key
    name = key.rsplit("/", 1)[-1].removesuffix(manifests.SUFFIX).split("-", 1)[0]
    with ctx.db.session() as s:
        if s.scalar(select(ArchiveManifest.key).where(ArchiveManifest.key == key)) is not None:
            return
        s.add(
            ArchiveManifest(
                key=key,
                pass_id=int(name) if name.isdigit() and len(name) < 10 else None,
                sha256=m.sha256 or read.sha256,
                previous_sha256=m.previous if read.withheld else read.previous,
                count=read.lines,
                size=read.size,
                created_at=at,
            )
        )
