"""Delete local files and run rows — only for runs whose archive is verified.

Every function here is idempotent: a file already gone counts as deleted, a row already
gone is not an error, so a pass interrupted at any instant can simply be run again.
The callers (``cleanup``) guarantee the precondition: a committed ``archived_runs`` row
for the run (or S3 backup disabled, or nothing to archive).

``delete_files`` with ``expect`` proves that each file it removes is the file that was
verified: device, inode, size, modification and change time must be those recorded when
the file was hashed, checked immediately before unlinking; otherwise nothing is deleted and
``FileChanged`` is raised. A run row is deleted only while the run is finished.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, delete, update

from fastflow.archive import ledger
from fastflow.db.engine import Database
from fastflow.db.models import ACTIVE_STATUSES, PipelineRun
from fastflow.errors import FileChanged
from fastflow.runs import files as logfiles
from fastflow.runs.files import FileIdentity as FileIdentity  # (where it is defined)
from fastflow.runs.files import RunFolder


@dataclass
class Removed:
    log: bool = False
    metrics: bool = False


Expected = dict[str, FileIdentity]  # "log"/"metrics" -> the identity that was verified


def _check_unchanged(
    folder: RunFolder, name: str, wanted: FileIdentity | None, strict: bool
) -> None:
    now = folder.identity(name)  # (refuses a link)
    if now is None:
        return  # already gone: nothing to protect
    if wanted is None:
        if strict:  # there now, but not when the run's files were listed and archived
            raise FileChanged(
                f"{name} was not found when the run's files were archived; kept — the "
                "next pass archives it"
            )
        return
    if now != wanted:
        raise FileChanged(
            f"{name} changed after it was archived and verified ({wanted.size} bytes "
            f"verified, {now.size} bytes now); kept — the next pass archives it again"
        )


def delete_files(
    logs_root: Path,
    log_file: str | None,
    metrics_file: str | None,
    expect: Expected | None = None,
    *,
    root_fd: int | None = None,
) -> Removed:
    """Delete the run's log and metrics files and its then-empty folders (found from the
    open ``LOGS_DIR`` ``root_fd`` when given, see ``RunFolder``).

    With ``expect`` (S3 on), every file is first checked against its verified identity;
    if one differs, or one exists that ``expect`` does not name (it was not there when
    the files were listed: a folder moved away and back meanwhile), nothing is deleted
    and ``FileChanged`` is raised. ``expect=None`` (S3 off): no check. A path that ``resolve``
    would refuse (``..``, absolute, a link below ``LOGS_DIR``) raises ``UnsafePath``.
    Checks and unlinks go through the run folder's descriptor (``RunFolder``): a folder
    swapped for a link after the paths were checked cannot make this delete anything
    outside it.
    """
    removed = Removed()
    strict = expect is not None
    expect = expect or {}
    files = [(rel, attr) for rel, attr in ((log_file, "log"), (metrics_file, "metrics")) if rel]
    with ExitStack() as stack:
        folders: dict[str, RunFolder] = {}
        targets: list[tuple[RunFolder, str, str]] = []
        for rel, attr in files:
            names = logfiles.parts(rel)
            folder_rel = "/".join(names[:-1])
            if folder_rel not in folders:
                folders[folder_rel] = stack.enter_context(
                    RunFolder(logs_root, folder_rel, root_fd=root_fd)
                )
            targets.append((folders[folder_rel], names[-1], attr))
        for folder, name, attr in targets:
            _check_unchanged(folder, name, expect.get(attr), strict)
        for folder, name, attr in targets:
            setattr(removed, attr, folder.unlink(name))
        if targets:
            last = targets[-1][0]
            last.remove_temp_files()
            last.remove_if_empty()
    return removed


def delete_verified(logs_root: Path, rel: str, identity: FileIdentity) -> bool:
    """Delete one file if it is still the version ``identity`` describes (else
    ``FileChanged``, nothing deleted), then its then-empty folders — through its
    folder's descriptor, as ``delete_files``. True if it existed."""
    folder, name = RunFolder.of_file(logs_root, rel)
    with folder:
        now = folder.identity(name)
        if now is None:
            return False
        if now != identity:
            raise FileChanged(f"{name} changed after it was archived; kept")
        gone = folder.unlink(name)
        folder.remove_if_empty()
        return gone


def delete_run_row(db: Database, run_id: uuid.UUID, now: datetime, *, archived: bool) -> bool:
    """Delete the run row (never an active one); mark its ledger entry as locally deleted
    in the same commit."""
    with db.session() as s:
        result = s.execute(
            delete(PipelineRun).where(
                PipelineRun.id == run_id, PipelineRun.status.not_in(ACTIVE_STATUSES)
            )
        )
        gone = cast(CursorResult[Any], result).rowcount
        if archived:
            s.execute(ledger.mark_local_deleted_stmt(run_id, now))
    return bool(gone)


def drop_file_columns(db: Database, run_id: uuid.UUID, now: datetime, *, archived: bool) -> None:
    """Fallback end state: the run stays, without ``log_file``/``metrics_file``."""
    with db.session() as s:
        s.execute(
            update(PipelineRun)
            .where(PipelineRun.id == run_id)
            .values(log_file=None, metrics_file=None, log_size=None)
        )
        if archived:
            s.execute(ledger.mark_local_deleted_stmt(run_id, now))
