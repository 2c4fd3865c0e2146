"""Audit the archive: every ledger entry's objects exist with the recorded size and SHA-256.

``--deep`` downloads each object and re-hashes it (streaming, bounded memory); otherwise
the server's size and the SHA-256 stored in the object's metadata are compared with the
ledger. Read-only: nothing is uploaded, changed or deleted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from fastflow.archive import ledger
from fastflow.archive import s3 as archive
from fastflow.context import Context
from fastflow.db.models import ArchivedRun
from fastflow.errors import ArchiveError

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
        if info.metadata.get(archive.META_SHA256) != sha:
            return ObjectCheck(rid, pipe, key, "changed", "stored SHA-256 differs from ledger")
        if deep:
            h = hashlib.sha256()
            n = 0
            for chunk in store.open(key):
                h.update(chunk)
                n += len(chunk)
            if n != size or h.hexdigest() != sha:
                return ObjectCheck(
                    rid,
                    pipe,
                    key,
                    "changed",
                    f"content hash {h.hexdigest()} differs from ledger {sha}",
                )
        return ObjectCheck(rid, pipe, key, "intact")
    except ArchiveError as e:
        return ObjectCheck(rid, pipe, key, "error", str(e))


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
