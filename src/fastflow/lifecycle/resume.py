"""Resume phase: finish every ledger entry whose local deletion did not complete.

A pass killed after verifying and recording an archive, a file that could not be
deleted, a file that grew after it was archived: the next pass starts here. For each
pending entry it checks every local file against the ledger, HEADs the object, and only
then deletes (identity-checked, like the main path). Guarantees:
- a local file identical to its archived bytes is deleted once its object verifies;
- a file that only grew since (the archived bytes are its prefix), or whose object
  vanished from the bucket or holds other bytes than the ones archived (the server's
  MD5 ETag of an uncompressed object against the local copy's; a compressed object is
  read back and hashed), is archived again from the local copy, then deleted — the new
  object holds everything the old one did;
- a file rewritten otherwise is kept and reported; its archived copy is never replaced;
- one run's problem (an immutable file, a permission error) is recorded for that run and
  never stops the others;
- an active run (QUEUED, PENDING, RUNNING) is never touched, whatever its entry says.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastflow.archive import ledger
from fastflow.db.models import ACTIVE_STATUSES, ArchivedRun, PipelineRun
from fastflow.errors import (
    ArchiveError,
    FileChanged,
    LogsDirUnavailable,
    ObjectChanged,
    ObjectMissing,
    PassLockLost,
)
from fastflow.lifecycle.deletion import Expected, FileIdentity
from fastflow.lifecycle.executor import WHICH, PassRun, grew_from, identify
from fastflow.lifecycle.policy import RunRef
from fastflow.runs import files as logfiles

log = logging.getLogger(__name__)


def resume(p: PassRun) -> None:
    """Finish every pending ledger entry (S3 enabled only)."""
    if p.store is None:
        return
    for entry in ledger.pending(p.db):
        if p.circuit_open:
            p.bump(skipped_runs=1)
            continue
        resume_one(p, entry)


def _ref(entry: ArchivedRun, row: PipelineRun | None) -> RunRef:
    rid = str(entry.run_id)
    return RunRef(
        entry.run_id,
        entry.pipeline_name,
        entry.status,
        entry.triggered_by,
        entry.started_at,
        entry.finished_at,
        entry.exit_code,
        row.log_file if row else logfiles.log_rel(entry.pipeline_name, rid),
        row.metrics_file if row else logfiles.metrics_rel(entry.pipeline_name, rid),
        None,
    )


def resume_one(p: PassRun, entry: ArchivedRun) -> None:
    with p.db.session() as s:
        row = s.get(PipelineRun, entry.run_id)
    if row is not None and row.status in ACTIVE_STATUSES:
        # no pass archives an active run: this entry did not come from one (a manifest
        # written by someone else, indexed by rebuild-index) — never touch a live run
        log.warning(
            "run %s is %s: its pending ledger entry is left alone (no local file deleted)",
            entry.run_id,
            row.status,
        )
        p.bump(skipped_runs=1)
        return
    ref = _ref(entry, row)
    try:
        p.guard()
        if not p.can_archive(ref):
            return
        files = p.local_files(ref.log_file, ref.metrics_file)
        expect: Expected = {}
        again: dict[str, Path] = {}
        checked: dict[str, FileIdentity] = {}  # the versions to archive again
        for name, path in files.items():
            ident, archive_again = _check_one(p, entry, name, path)
            if archive_again:
                again[name] = path
                checked[name] = ident
            else:
                expect[WHICH[name]] = ident
        if again:
            log.warning(
                "run %s: archiving %s again from the local copy (it grew after archiving, "
                "or its object is gone from the bucket)",
                entry.run_id,
                ", ".join(again),
            )
            store = p.store_for(entry)
            expect.update(
                p.archive_files(ref, again, entry.reason, "rearchived_runs", store, checked)
            )
        payload = p.archive_payload(ref)
        p.guard()
        p.remove(entry.run_id, ref.log_file, ref.metrics_file, expect, entry.reason, True)
        if entry.reason != "archive_and_drop_files":
            p.remove_payload(payload)
    except (PassLockLost, LogsDirUnavailable):  # the pass stops
        raise
    except Exception as e:
        p.fail_from(ref, e)


def _verify_copy(
    p: PassRun, key: str, path: Path, ident: FileIdentity, size: int, sha: str
) -> None:
    """``verify_copy_of`` reading the local file through its held run folder (no link
    followed, no FIFO opened), the very file that was identified."""
    assert p.store is not None
    with logfiles.held(p.logs_root, logfiles.rel_below(p.logs_root, path)) as f:
        if f.identity() != ident:
            raise FileChanged(f"{path.name} changed while it was checked; kept for the next pass")
        p.store.verify_copy_of(key, f.path, size, sha)


def _check_one(p: PassRun, entry: ArchivedRun, name: str, path: Path) -> tuple[FileIdentity, bool]:
    """The identity of ``path`` as it was checked, and whether it must be archived again
    (that very version; else the identity to delete it with)."""
    assert p.store is not None
    which = WHICH[name]
    key = getattr(entry, f"{which}_key")
    stored = getattr(entry, f"{which}_size"), getattr(entry, f"{which}_sha256")
    if key is None or None in stored:
        raise ArchiveError(f"{path.name} exists locally but was not archived")
    ident, size, sha = identify(p.logs_root, path)
    truncated_copy = (which == "log" and entry.log_truncated_at is not None) and (
        size,
        sha,
    ) == entry.local_identity("log")
    if (size, sha) in (entry.local_identity(which), entry.original(which)):
        try:
            if entry.encoding is None and (size, sha) == stored:
                # the object holds the local bytes: what the server computed of the
                # bytes it holds (its MD5 ETag) must agree too, not only the metadata
                _verify_copy(p, key, path, ident, size, sha)
            elif entry.encoding is not None and (size, sha) == entry.original(which):
                # the object holds them compressed: its ETag cannot be computed here,
                # so it is read back (a pending entry is rare: a crash, a kept file)
                p.store.verify(key, *stored)
                p.store.verify_content(key, entry.encoding, size, sha)
            else:
                p.store.verify(key, *stored)
        except ObjectMissing as e:
            if truncated_copy:
                raise ObjectMissing(
                    f"the full log archived at s3://{entry.bucket}/{key} is missing; the "
                    "local truncated copy is kept"
                ) from e
            return ident, True  # the object vanished: archive the local file again
        except ObjectChanged as e:
            # the local file is the one archived (its SHA-256 is the ledger's): it
            # replaces the object's other bytes, verified as any upload, then goes
            log.warning("run %s: %s; archiving the local copy again", entry.run_id, e)
            return ident, True
        return ident, False
    # the archived full log plus lines after it — also when the ledger says truncated
    # and the truncation did not happen (an append in its last instant, or a crash)
    if grew_from(p.logs_root, path, *entry.original(which), ident):
        return ident, True
    raise FileChanged(
        f"{path.name} changed since it was archived; keeping it (archived copy "
        f"s3://{entry.bucket}/{key} left untouched)"
    )
