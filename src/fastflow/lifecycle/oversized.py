"""Oversized logs: with S3 backup enabled, archive the full log (verified, ledgered),
then truncate the local copy; without S3, truncate only.

Guarantees: nothing is truncated before the full log's archive is verified and recorded
(when archiving fails, nothing is truncated and the failure is recorded); the truncated
copy is never uploaded over the full log; the ledger learns the truncated copy's size
and SHA-256 before it replaces the log, so a crash at any instant leaves a local file
the ledger recognises; a truncation that fails (disk full, permissions) falls back to
archive-and-drop-files; a pinned run is never truncated (issue 16) — the pin is checked
before anything starts and again right before the truncated copy replaces the log (and
before the ledger is told), so a run pinned meanwhile keeps its log (and a full copy
archived for it gets the legal hold when configured).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import update

from fastflow.archive import ledger
from fastflow.db.models import TRUNCATION_REASON, PipelineRun, utcnow
from fastflow.errors import ArchiveError, FileChanged, LogsDirUnavailable, PassLockLost, UnsafePath
from fastflow.lifecycle.executor import PassRun, grew_from, identify
from fastflow.lifecycle.policy import Action, RunRef, fallback
from fastflow.lifecycle.truncate import TruncateResult, truncate_log
from fastflow.runs import files as logfiles
from fastflow.runs import pins


class _Pinned(Exception):
    """The run was pinned while its log was being truncated: stop before replacing it."""


def truncate(p: PassRun, action: Action, limit: int) -> None:
    """Truncate an oversized log; with S3 enabled, archive the full log first."""
    run = action.run
    assert run.log_file is not None
    archive_first = p.store is not None or p.summary.config_error is not None
    archived: list[bool] = []
    try:
        p.guard()
        if pins.pinned(p.db, run.id):  # pinned after planning
            p.keep_pinned(run.id, archived=False)
            return
        path = logfiles.resolve(p.logs_root, run.log_file)
        with logfiles.RunFolder.containing(p.logs_root, path) as folder:
            folder.remove_temp_files()
        if archive_first:
            result = _archive_and_truncate(p, run, path, limit, archived)
        else:
            result = truncate_log(
                path,
                limit,
                p.now,
                before_replace=_unless_pinned(p, run),
                journal=p.journal,
                logs_root=p.logs_root,
            )
    except _Pinned:
        p.keep_pinned(run.id, archived=bool(archived))
        return
    except FileNotFoundError:
        return  # nothing left to truncate
    except (PassLockLost, LogsDirUnavailable):  # the pass stops
        raise
    except ArchiveError as e:
        p.record_failure(run, e)
        return
    except UnsafePath as e:
        # a link in the log's place or on its way (or something that is not a regular
        # file): not an I/O failure of the truncation — the log is kept, never dropped
        p.record_failure(run, str(e))
        return
    except OSError as e:
        reason = e.strerror or str(e)
        p.archive_then_remove(fallback(action, reason))
        return
    if result is not None:
        with p.db.session() as s:
            s.execute(
                update(PipelineRun).where(PipelineRun.id == run.id).values(log_size=result.new_size)
            )
        p.bump(truncated_logs=1)


def _unless_pinned(p: PassRun, run: RunRef) -> Callable[[int, str], None]:
    def check(new_size: int, new_sha: str) -> None:
        p.guard()
        if pins.pinned(p.db, run.id):
            raise _Pinned()

    return check


def _archive_and_truncate(
    p: PassRun, run: RunRef, path: Path, limit: int, archived: list[bool]
) -> TruncateResult | None:
    """Archive the full log (unless it already is), then truncate; None when skipped.
    ``archived`` gets an entry when this call archived the full log."""
    if not p.can_archive(run):
        return None
    assert p.store is not None
    entry = ledger.get(p.db, run.id)
    if entry is not None and not entry.full_log_archived:
        p.bump(skipped_runs=1)  # the resume phase owns it
        return None
    ident, size, sha = identify(p.logs_root, path)
    if size <= limit:
        return None
    if entry is not None and (size, sha) in (
        entry.local_identity("log"),
        entry.original("log"),
    ):
        assert entry.log_key and entry.log_size is not None and entry.log_sha256
        p.store.verify(entry.log_key, entry.log_size, entry.log_sha256)
    elif entry is None or grew_from(p.logs_root, path, *entry.original("log"), ident):
        # (also after a truncation that did not happen — an append in its last instant,
        # or a crash between the ledger and the rename: the log is still the full one,
        # grown; archiving it again loses nothing)
        counter = "archived_before_truncation" if entry is None else "rearchived_runs"
        store = p.store if entry is None else p.store_for(entry)
        files = {logfiles.LOG_NAME: path}
        required = {logfiles.LOG_NAME: ident}  # the version measured (and checked) above
        ident = p.archive_files(run, files, TRUNCATION_REASON, counter, store, required)["log"]
        archived.append(True)
    else:
        raise FileChanged(
            f"{path.name} changed after it was truncated (its full log is archived at "
            f"s3://{entry.bucket}/{entry.log_key}); kept, not truncated again"
        )

    def before_replace(new_size: int, new_sha: str) -> None:
        # (``truncate_log`` has just checked, through the folder, that the log is still
        # the archived file)
        p.guard()
        if pins.pinned(p.db, run.id):
            raise _Pinned()
        ledger.mark_truncated(p.db, run.id, utcnow(), new_size, new_sha)

    return truncate_log(
        path,
        limit,
        p.now,
        before_replace=before_replace,
        journal=p.journal,
        logs_root=p.logs_root,
        expect=ident,
    )
