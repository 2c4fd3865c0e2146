"""Audit the archive: every ledger entry's objects exist with the recorded size and SHA-256.

``--deep`` downloads each object and re-hashes it (streaming, bounded memory); otherwise
the server's size and the SHA-256 stored in the object's metadata are compared with the
ledger, and an object whose metadata lacks that SHA-256 or holds another one is
re-hashed: its bytes decide (an object restored without its metadata is intact when its
content matches). Read-only: nothing is uploaded, changed or deleted.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from fastflow.archive import ledger, manifests
from fastflow.archive import s3 as archive
from fastflow.context import Context
from fastflow.db.models import ArchivedRun, ArchiveManifest, ArchiveVerification, utcnow
from fastflow.errors import ArchiveError, FastflowError
from fastflow.security import redact

BATCH = 500


@dataclass(frozen=True)
class ObjectCheck:
    run_id: str
    pipeline_name: str
    key: str
    state: str  # intact, missing, changed, error
    detail: str = ""


@dataclass
class VerifyReport:
    checked_runs: int = 0
    intact: int = 0
    missing: int = 0
    changed: int = 0
    errors: int = 0
    problems: list[ObjectCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == self.changed == self.errors == 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def _entries(
    ctx: Context, pipeline: str | None, since: datetime | None
) -> Iterator[list[ArchivedRun]]:
    return ledger.entries(ctx.db, pipeline, since, BATCH)


def _check(
    store: archive.S3Store,
    entry: ArchivedRun,
    key: str,
    size: int | None,
    sha: str | None,
    deep: bool,
) -> ObjectCheck:
    rid, pipe = str(entry.run_id), entry.pipeline_name
    try:
        info = store.head(key)
        if info is None:
            return ObjectCheck(rid, pipe, key, "missing", "object does not exist")
        if info.size != size:
            return ObjectCheck(rid, pipe, key, "changed", f"{info.size} bytes, ledger {size}")
        stored = info.metadata.get(archive.META_SHA256)
        if stored != sha or deep:
            # the bytes decide: an object copied back without its metadata (a restore
            # from another copy) is intact when its content hashes to the ledger's
            n, digest = _content_sha256(store, key)
            if n != size or digest != sha:
                return ObjectCheck(
                    rid, pipe, key, "changed", f"content hash {digest} differs from ledger {sha}"
                )
            if stored != sha:
                note = (
                    "no SHA-256 in its metadata"
                    if stored is None
                    else "another SHA-256 in its metadata"
                )
                return ObjectCheck(rid, pipe, key, "intact", f"{note}; its content matches")
        return ObjectCheck(rid, pipe, key, "intact")
    except ArchiveError as e:
        return ObjectCheck(rid, pipe, key, "error", str(e))


def _content_sha256(store: archive.S3Store, key: str) -> tuple[int, str]:
    """The object's length and SHA-256, streamed (bounded memory)."""
    h = hashlib.sha256()
    n = 0
    for chunk in store.open(key):
        h.update(chunk)
        n += len(chunk)
    return n, h.hexdigest()


def verify(
    ctx: Context,
    *,
    pipeline: str | None = None,
    since: datetime | None = None,
    deep: bool = False,
    progress: Callable[[VerifyReport], None] | None = None,
) -> VerifyReport:
    store = archive.open_store(ctx.settings)
    report = VerifyReport()
    with ThreadPoolExecutor(max_workers=ctx.settings.s3_max_concurrency) as pool:
        for batch in _entries(ctx, pipeline, since):
            jobs = []
            for entry in batch:
                report.checked_runs += 1
                for key, size, sha in (
                    (entry.log_key, entry.log_size, entry.log_sha256),
                    (entry.metrics_key, entry.metrics_size, entry.metrics_sha256),
                ):
                    if key:
                        jobs.append(pool.submit(_check, store, entry, key, size, sha, deep))
            for job in jobs:
                result = job.result()
                if result.state == "intact":
                    report.intact += 1
                else:
                    counter = "errors" if result.state == "error" else result.state
                    setattr(report, counter, getattr(report, counter) + 1)
                    report.problems.append(result)
            if progress is not None:
                progress(report)
    return report


# --- verify --manifests: the chain, and ledger against manifests (issue 16) ----------------

MAX_PROBLEMS = 1000  # listed; every problem is counted
MAX_NAMED_UNLISTED = 20


@dataclass(frozen=True)
class ManifestProblem:
    """One disagreement. ``state``: ``missing``, ``changed``, ``reordered`` (a manifest's
    link does not point to the manifest before it), ``not_listed`` (ledger entries name a
    manifest that does not list their objects), ``mismatch`` (a manifest and the ledger
    describe an object differently), ``not_in_ledger``, ``unlisted`` (an entry no manifest
    lists yet), ``unknown_manifest`` (an entry names a manifest that is not recorded)."""

    state: str
    manifest: str | None = None
    run_id: str | None = None
    key: str | None = None
    detail: str = ""


@dataclass
class ManifestReport:
    manifests_checked: int = 0
    objects_listed: int = 0
    problem_count: int = 0
    unlisted: int = 0
    problems: list[ManifestProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def damaged(self) -> int:
        """Problems other than entries waiting for the next pass's manifest."""
        return self.problem_count - self.unlisted

    def add(self, problem: ManifestProblem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "manifests_checked": self.manifests_checked,
            "objects_listed": self.objects_listed,
            "problem_count": self.problem_count,
            "unlisted": self.unlisted,
            "problems": [asdict(p) for p in self.problems],
            "notes": self.notes,
        }


def verify_manifests(
    ctx: Context, progress: Callable[[ManifestReport], None] | None = None
) -> ManifestReport:
    """Check the hash chain of the recorded manifests (each one's SHA-256 as stored, each
    link to the one before, in order) and that the ledger and the manifests agree object
    for object. Read-only; memory bounded by one batch of lines."""
    store = archive.open_store(ctx.settings)
    report = ManifestReport()
    order: dict[str, int] = {}
    for batch in manifests.recorded(ctx.db):
        for m in batch:
            order[m.key] = len(order)
    expected: str | None = None
    first = True
    for batch in manifests.recorded(ctx.db):
        for m in batch:
            _check_manifest(ctx, store, m, order, report, None if first else expected)
            expected, first = m.sha256, False
            if progress is not None:
                progress(report)
    _check_ledger_side(ctx, order, report)
    recorded = set(order)
    strays = [
        key
        for key, _, _ in store.list_keys(manifests.prefix(store))
        if manifests.is_manifest_key(store, key) and key not in recorded
    ]
    if strays:
        report.notes.append(
            f"{len(strays)} manifest(s) in the bucket are not recorded in this database "
            f"(e.g. {strays[0]}): written by a pass killed before it recorded them, or by "
            "another database; `fastflow archive rebuild-index` records them"
        )
    for key in strays:
        _check_stray(ctx, store, key, report)
    return report


def _with_entries(ctx: Context, lines: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Any]]:
    """Each manifest line with its run's ledger facts (``ledger.listing_facts``; None for
    no entry or no valid run id), read in one query."""
    ids: dict[int, uuid.UUID] = {}
    for i, line in enumerate(lines):
        try:
            ids[i] = uuid.UUID(str(line.get("run_id")))
        except ValueError:
            continue
    entries = ledger.listing_facts(ctx.db, list(ids.values()))
    return [(line, entries.get(ids[i]) if i in ids else None) for i, line in enumerate(lines)]


def _check_stray(ctx: Context, store: archive.S3Store, key: str, report: ManifestReport) -> None:
    """A manifest this database did not record: a pass killed before recording it lists
    objects as the ledger holds them (the ledger is written first), so each object it
    describes otherwise is a ``mismatch`` — a manifest written by someone else, or by
    another database (which ``rebuild-index`` would report as a conflict)."""

    def on_lines(lines: list[dict[str, Any]]) -> None:
        for line, entry in _with_entries(ctx, lines):
            rid, listed = str(line.get("run_id")), str(line.get("key"))
            if entry is None:
                continue  # nothing to contradict: rebuild-index would add it
            for which in ("log", "metrics"):
                if getattr(entry, f"{which}_key") != listed:
                    continue
                held = getattr(entry, f"{which}_size"), getattr(entry, f"{which}_sha256")
                said = line.get("size"), line.get("sha256")
                if held != said:
                    report.add(
                        ManifestProblem(
                            "mismatch",
                            key,
                            rid,
                            listed,
                            f"this manifest is not recorded in this database and lists "
                            f"{said[0]} bytes, SHA-256 {said[1]}; the ledger records "
                            f"{held[0]} bytes, SHA-256 {held[1]}",
                        )
                    )

    manifests.read(store, key, on_lines)


def _check_manifest(
    ctx: Context,
    store: archive.S3Store,
    m: ArchiveManifest,
    order: dict[str, int],
    report: ManifestReport,
    expected_previous: str | None,
) -> None:
    report.manifests_checked += 1
    matched = 0

    def on_lines(lines: list[dict[str, Any]]) -> None:
        nonlocal matched
        matched += _compare_lines(ctx, m.key, lines, order, report)

    read = manifests.read(store, m.key, on_lines)
    if read.missing:
        report.add(ManifestProblem("missing", m.key, detail="recorded, but not in the bucket"))
    elif read.sha256 != m.sha256:
        report.add(
            ManifestProblem(
                "changed",
                m.key,
                detail=f"its SHA-256 is {read.sha256}, recorded {m.sha256}"
                + (f"; {read.error}" if read.error else ""),
            )
        )
    elif read.error is not None:
        report.add(ManifestProblem("changed", m.key, detail=read.error))
    if expected_previous is not None and m.previous_sha256 != expected_previous:
        report.add(
            ManifestProblem(
                "reordered",
                m.key,
                detail=f"links to {m.previous_sha256 or 'nothing'}, but the manifest before "
                f"it has SHA-256 {expected_previous}",
            )
        )
    if not read.missing:
        listed = ledger.listed_objects(ctx.db, m.key)
        if matched < listed:
            report.add(
                ManifestProblem(
                    "not_listed",
                    m.key,
                    detail=f"{listed - matched} object(s) of ledger entries that name this "
                    "manifest are not in it as the ledger records them",
                )
            )


def _compare_lines(
    ctx: Context,
    manifest_key: str,
    lines: list[dict[str, Any]],
    order: dict[str, int],
    report: ManifestReport,
) -> int:
    """Compare manifest lines with the ledger; the number that match an entry naming
    this manifest."""
    here = order.get(manifest_key, -1)
    matched = 0
    for line, entry in _with_entries(ctx, lines):
        report.objects_listed += 1
        rid, key = str(line.get("run_id")), str(line.get("key"))
        if entry is None:
            report.add(ManifestProblem("not_in_ledger", manifest_key, rid, key, "no ledger entry"))
            continue
        which = "log" if key == entry.log_key else "metrics" if key == entry.metrics_key else None
        ledger_says = (
            (getattr(entry, f"{which}_size"), getattr(entry, f"{which}_sha256"))
            if which
            else (None, None)
        )
        listed_says = (line.get("size"), line.get("sha256"))
        if entry.manifest_key == manifest_key:
            if which is None:
                report.add(
                    ManifestProblem(
                        "mismatch", manifest_key, rid, key, "the ledger entry has no such object"
                    )
                )
            elif ledger_says != listed_says:
                report.add(
                    ManifestProblem(
                        "mismatch",
                        manifest_key,
                        rid,
                        key,
                        f"ledger: {ledger_says[0]} bytes, SHA-256 {ledger_says[1]}; "
                        f"manifest: {listed_says[0]} bytes, SHA-256 {listed_says[1]}",
                    )
                )
            else:
                matched += 1
        elif (
            entry.manifest_key is not None
            and order.get(entry.manifest_key, -1) < here
            and which is not None
            and ledger_says != listed_says
        ):
            # a later manifest lists the object, the ledger names an older one: the same
            # bytes are fine (listed twice), other bytes mean the ledger went back in time
            report.add(
                ManifestProblem(
                    "mismatch",
                    manifest_key,
                    rid,
                    key,
                    f"this later manifest lists {listed_says[0]} bytes, SHA-256 "
                    f"{listed_says[1]}; the ledger records {ledger_says[1]} and names "
                    f"the older {entry.manifest_key}",
                )
            )
        # else: listed again by a later manifest (its objects were archived again), or
        # unlisted (counted with the ledger's side)
    return matched


def _check_ledger_side(ctx: Context, order: dict[str, int], report: ManifestReport) -> None:
    """Entries that no manifest lists, and entries naming a manifest nobody recorded."""
    report.unlisted = ledger.unlisted_count(ctx.db)
    if report.unlisted:
        named = 0
        for batch in ledger.unlisted(ctx.db, MAX_NAMED_UNLISTED):
            for entry in batch:
                if named < MAX_NAMED_UNLISTED:
                    report.add(
                        ManifestProblem(
                            "unlisted",
                            run_id=str(entry.run_id),
                            key=entry.log_key or entry.metrics_key,
                            detail="in the ledger, in no manifest yet (the next cleanup pass "
                            "lists it)",
                        )
                    )
                named += 1
            break
        report.problem_count += report.unlisted - named
    for key, n in ledger.manifest_keys_named(ctx.db):
        if key not in order:
            report.add(
                ManifestProblem(
                    "unknown_manifest",
                    manifest=key,
                    detail=f"{n} ledger entries name this manifest, which is not recorded",
                )
            )


# --- full verifications (scheduled, CLI, API) and their record (issue 16) --------------------

MAX_RECORDED_PROBLEMS = 100
MAX_LISTED_VERIFICATIONS = 1000


@dataclass
class Verification:
    """One full verification: HEAD of every object, a deep re-hash of a sample, the
    manifest chain. ``damaged``: objects missing or altered, and manifest damage (entries
    merely waiting for the next pass's manifest do not count). ``ok`` is None when the
    verification could not run to its end (``error``)."""

    trigger: str
    started_at: datetime
    id: int | None = None
    finished_at: datetime | None = None
    objects_checked: int = 0
    objects_deep_checked: int = 0
    objects_damaged: int = 0
    manifests_checked: int = 0
    errors: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    found: set[str] = field(default_factory=set, repr=False)  # keys found not intact

    @property
    def ok(self) -> bool | None:
        if self.error is not None:
            return None
        return self.objects_damaged == 0 and self.errors == 0

    def note(self, kind: str, problem: ObjectCheck | ManifestProblem) -> None:
        """Keep a problem (the first ``MAX_RECORDED_PROBLEMS``), in one shape: ``kind``
        (object, deep, manifest), ``state``, ``key``, ``run_id``, ``pipeline_name``,
        ``manifest``, ``detail``."""
        if len(self.problems) < MAX_RECORDED_PROBLEMS:
            self.problems.append(
                {
                    "kind": kind,
                    "state": problem.state,
                    "key": problem.key,
                    "run_id": problem.run_id,
                    "pipeline_name": getattr(problem, "pipeline_name", None),
                    "manifest": getattr(problem, "manifest", None),
                    "detail": problem.detail,
                }
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "trigger": self.trigger,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "objects_checked": self.objects_checked,
            "objects_deep_checked": self.objects_deep_checked,
            "objects_damaged": self.objects_damaged,
            "manifests_checked": self.manifests_checked,
            "ok": self.ok,
            "problems": self.problems,
            "error": self.error,
        }


def run_verification(
    ctx: Context,
    trigger: str,
    *,
    deep_sample: int | None = None,
    check_manifests: bool = True,
    now: datetime | None = None,
) -> Verification:
    """HEAD every archived object, re-hash ``deep_sample`` objects (default
    ``ARCHIVE_VERIFY_DEEP_SAMPLE``; those re-hashed longest ago first), check the manifest
    chain; stamp ``verified_at``/``deep_verified_at`` on intact entries and record the
    result. Memory: one batch of entries. Never raises for archive problems: they end up
    in ``error``/``problems``."""
    now = now or utcnow()
    sample = ctx.settings.archive_verify_deep_sample if deep_sample is None else deep_sample
    result = Verification(trigger, now)
    result.id = _record_start(ctx, result)
    try:
        store = archive.open_store(ctx.settings)
        _head_everything(ctx, store, result, now)
        _deep_sample(ctx, store, result, sample, now)
        if check_manifests:
            report = verify_manifests(ctx)
            result.manifests_checked = report.manifests_checked
            result.objects_damaged += report.damaged
            for p in report.problems:
                if p.state != "unlisted":
                    result.note("manifest", p)
    except FastflowError as e:
        result.error = str(e)
    except Exception as e:  # a database or client fault: recorded, never raised
        result.error = f"the verification failed: {type(e).__name__}: {e}"
    result.finished_at = utcnow()
    _record_finish(ctx, result)
    return result


def _head_everything(
    ctx: Context, store: archive.S3Store, result: Verification, now: datetime
) -> None:
    with ThreadPoolExecutor(max_workers=ctx.settings.s3_max_concurrency) as pool:
        for batch in ledger.entries(ctx.db, batch=BATCH):
            jobs = [
                (entry, pool.submit(_check, store, entry, key, size, sha, False))
                for entry in batch
                for key, size, sha in _objects(entry)
            ]
            _tally(ctx, result, jobs, now, deep=False)


def _deep_sample(
    ctx: Context, store: archive.S3Store, result: Verification, sample: int, now: datetime
) -> None:
    entries = ledger.deep_sample(ctx.db, sample)
    if not entries:
        return
    # exactly ``sample`` objects (ARCHIVE_VERIFY_DEEP_SAMPLE): an entry whose second object
    # does not fit is not stamped, so it comes first again next time
    picked: list[tuple[ArchivedRun, str, int | None, str | None]] = []
    unfinished: set[uuid.UUID] = set()
    for entry in entries:
        for key, size, sha in _objects(entry):
            if key in result.found:  # already counted by the HEAD check
                continue
            if len(picked) >= sample:
                unfinished.add(entry.run_id)
                break
            picked.append((entry, key, size, sha))
    with ThreadPoolExecutor(max_workers=ctx.settings.s3_max_concurrency) as pool:
        jobs = [
            (entry, pool.submit(_check, store, entry, key, size, sha, True))
            for entry, key, size, sha in picked
        ]
        _tally(ctx, result, jobs, now, deep=True, unfinished=unfinished)


def _objects(entry: ArchivedRun) -> list[tuple[str, int | None, str | None]]:
    return [
        (key, size, sha)
        for key, size, sha in (
            (entry.log_key, entry.log_size, entry.log_sha256),
            (entry.metrics_key, entry.metrics_size, entry.metrics_sha256),
        )
        if key
    ]


def _tally(
    ctx: Context,
    result: Verification,
    jobs: list[tuple[ArchivedRun, Any]],
    now: datetime,
    *,
    deep: bool,
    unfinished: set[uuid.UUID] | None = None,
) -> None:
    """Count the checks of one batch; stamp the entries whose objects are all intact
    (not those in ``unfinished``: some of their objects were not checked)."""
    bad: set[uuid.UUID] = set()
    for entry, job in jobs:
        check: ObjectCheck = job.result()
        if deep:
            result.objects_deep_checked += 1
        else:
            result.objects_checked += 1
        if check.state == "intact":
            continue
        bad.add(entry.run_id)
        result.found.add(check.key)
        if check.state == "error":
            result.errors += 1
        else:
            result.objects_damaged += 1
        result.note("deep" if deep else "object", check)
    skip = bad | (unfinished or set())
    intact = list(dict.fromkeys(e.run_id for e, _ in jobs if e.run_id not in skip))
    ledger.mark_verified(ctx.db, intact, now, deep=deep)


def _record_start(ctx: Context, v: Verification) -> int:
    with ctx.db.session() as s:
        row = ArchiveVerification(trigger=v.trigger, started_at=v.started_at)
        s.add(row)
        s.flush()
        return row.id


def _record_finish(ctx: Context, v: Verification) -> None:
    with ctx.db.session() as s:
        s.execute(
            update(ArchiveVerification)
            .where(ArchiveVerification.id == v.id)
            .values(
                finished_at=v.finished_at,
                objects_checked=v.objects_checked,
                objects_deep_checked=v.objects_deep_checked,
                objects_damaged=v.objects_damaged,
                manifests_checked=v.manifests_checked,
                ok=v.ok,
                problems=json.dumps(v.problems, ensure_ascii=False),
                error=redact(v.error, ctx.settings) if v.error else None,
            )
        )


def _row_dict(row: ArchiveVerification) -> dict[str, Any]:
    try:
        problems = json.loads(row.problems) if row.problems else []
    except ValueError:
        problems = []
    return {
        "id": row.id,
        "trigger": row.trigger,
        "started_at": row.started_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "objects_checked": row.objects_checked,
        "objects_deep_checked": row.objects_deep_checked,
        "objects_damaged": row.objects_damaged,
        "manifests_checked": row.manifests_checked,
        "ok": row.ok,
        "problems": problems,
        "error": row.error,
    }


def verifications(ctx: Context, limit: int = 50) -> list[dict[str, Any]]:
    """Recorded verifications, newest first (``problems`` at most 100 each)."""
    limit = max(1, min(limit, MAX_LISTED_VERIFICATIONS))
    with ctx.db.session() as s:
        rows = s.scalars(
            select(ArchiveVerification)
            .order_by(ArchiveVerification.started_at.desc(), ArchiveVerification.id.desc())
            .limit(limit)
        ).all()
    return [_row_dict(r) for r in rows]


@dataclass(frozen=True)
class VerificationStats:
    """For ``/metrics``: when the last verification finished, what it found damaged, and
    the objects checked by every recorded verification."""

    last_finished_at: datetime | None
    last_damaged: int | None
    objects_verified_total: int


def verification_stats(ctx: Context) -> VerificationStats:
    with ctx.db.session() as s:
        last = s.scalars(
            select(ArchiveVerification)
            .where(ArchiveVerification.finished_at.is_not(None))
            .order_by(ArchiveVerification.finished_at.desc(), ArchiveVerification.id.desc())
            .limit(1)
        ).first()
        total = s.scalar(
            select(
                func.coalesce(
                    func.sum(
                        ArchiveVerification.objects_checked
                        + ArchiveVerification.objects_deep_checked
                    ),
                    0,
                )
            )
        )
    return VerificationStats(
        last.finished_at if last else None,
        last.objects_damaged if last else None,
        int(total or 0),
    )
