"""Which folder holds this installation's run logs: the marker file in ``LOGS_DIR``.

An empty folder where ``LOGS_DIR``'s volume should be mounted (an NFS mount that dropped,
a disk not mounted after a reboot) looks exactly like a folder whose runs' files were
all deleted: a cleanup pass would delete the rows of every due run as "files already
gone", and the logs would come back with the volume, orphaned. So the first run or pass
writes a marker, ``LOGS_DIR/.fastflow-logs-dir``, holding an id; the database keeps the
id and the folder's real path (``app_state``).

Guarantee: once a database has marked a folder, no cleanup pass acts and no run starts
while ``LOGS_DIR`` is that same path and the folder is missing, lacks the marker, or
holds another id — they report why (``problem``) instead. ``adopt`` (``fastflow cleanup
--adopt-logs-dir``) marks the current folder when its logs are gone for good. A folder
the database has not marked (a new installation, one from before the marker, or
``LOGS_DIR`` set to another path) is marked on first use; a pass refuses it only while
it is missing and runs recorded logs.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from fastflow.db.engine import Database
from fastflow.db.models import AppState, PipelineRun, utcnow

MARKER_NAME = ".fastflow-logs-dir"
STATE_KEY = "logs_dir_id"
_ID_LENGTH = 32  # hex digits
_NOTE = (
    "# fastflow: this folder holds the run logs of the installation with the id above.\n"
    "# Keep this file: without it no cleanup pass acts and no run starts here\n"
    "# (an empty folder in place of an unmounted volume must not look like deleted logs).\n"
)
ADOPT_HINT = (
    "if its logs are gone for good, `fastflow cleanup --adopt-logs-dir` marks this folder "
    "as LOGS_DIR and the next pass removes their runs"
)


def problem(
    db: Database, logs_root: Path, *, mark: bool = True, create: bool = False
) -> str | None:
    """Why ``logs_root`` is not the folder this installation's runs wrote their logs in,
    or None when it is. Refused only where the database marked this very path before
    (see the module docstring). ``mark``: a folder not marked yet is marked now; with
    ``mark=False`` (a dry run) nothing is written and such a folder passes. ``create``:
    a missing folder not marked before is made and marked (the runner's case; a pass
    leaves it missing, and refuses it while runs recorded logs). A folder that cannot be
    read or marked (permissions, a full or read-only disk) is a problem too."""
    try:
        return _problem(db, str(logs_root), mark=mark, create=create)
    except OSError as e:
        return (
            f"cannot check or mark LOGS_DIR ({logs_root}) as this installation's: {e.strerror or e}"
        )


def _problem(db: Database, root: str, *, mark: bool, create: bool) -> str | None:
    stored = _stored(db)
    path = os.path.realpath(root)
    found, state = _read_marker(root)
    if stored is not None and found == stored.id and stored.path == path:
        return None
    if stored is not None and stored.path == path:  # marked here before: refuse
        if state == "missing-dir":
            return (
                f"LOGS_DIR ({root}) does not exist (or cannot be reached) while runs record "
                "logs in it: mount its volume (or fix LOGS_DIR); " + ADOPT_HINT
            )
        if state == "refused":
            return _garbage(root)
        if found is None:
            return (
                f"LOGS_DIR ({root}) is not the folder this installation's logs are in: it "
                f"has no {MARKER_NAME} (an empty folder where a volume should be mounted?); "
                "mount its volume (or fix LOGS_DIR); " + ADOPT_HINT
            )
        return (
            f"LOGS_DIR ({root}) holds another installation's logs: its {MARKER_NAME} names "
            f"{found}, this database {stored.id}; fix LOGS_DIR or DATABASE_URL, or " + ADOPT_HINT
        )
    # a new installation, one from before the marker, or LOGS_DIR set to another folder
    if state == "missing-dir":
        if create:
            if mark:
                os.makedirs(root, exist_ok=True)
                _adopt_found(db, root, path, None, stored)
            return None
        if _runs_recorded_logs(db):
            return (
                f"LOGS_DIR ({root}) does not exist (or cannot be reached) while runs record "
                "logs in it: mount its volume (or fix LOGS_DIR); " + ADOPT_HINT
            )
        return None
    if state == "refused":
        return _garbage(root)
    if mark:
        _adopt_found(db, root, path, found, stored)
    return None


def _garbage(root: str) -> str:
    return (
        f"LOGS_DIR ({root}): its {MARKER_NAME} is not a marker (a link, a folder, or not "
        "an id); restore the marker, or " + ADOPT_HINT
    )


def adopt(db: Database, logs_root: Path) -> str:
    """Mark ``logs_root`` (made if missing) as this installation's ``LOGS_DIR``, replacing
    any marker there; returns the id. Runs whose files are not in it then count as gone."""
    root = str(logs_root)
    os.makedirs(root, exist_ok=True)
    stored = _stored(db)
    marker_id = stored.id if stored is not None else secrets.token_hex(_ID_LENGTH // 2)
    _write_marker(root, marker_id, replace=True)
    _store(db, _Mark(marker_id, os.path.realpath(root)))
    return marker_id


class _Mark(NamedTuple):
    id: str
    path: str  # the real path of the folder that was marked


def _adopt_found(
    db: Database, root: str, path: str, found: str | None, stored: _Mark | None
) -> None:
    """Take the marker's id into the database, writing a marker first when there is none
    (the database's id, else a new one; a crash before the database row leaves a marker
    that the next check adopts)."""
    marker_id = found
    if marker_id is None:
        new_id = stored.id if stored is not None else secrets.token_hex(_ID_LENGTH // 2)
        marker_id = _write_marker(root, new_id, replace=False)
    _store(db, _Mark(marker_id, path))


def _stored(db: Database) -> _Mark | None:
    with db.engine.connect() as conn:
        value = conn.execute(
            select(AppState.value).where(AppState.key == STATE_KEY)
        ).scalar_one_or_none()
    try:
        data = json.loads(value) if value else None
        return _Mark(str(data["id"]), str(data["path"])) if data else None
    except (ValueError, TypeError, KeyError):
        return None  # unreadable: as if never marked (the folder is marked again)


def _store(db: Database, mark: _Mark) -> None:
    """Record ``mark`` (insert, or update the row another process inserted meanwhile)."""
    value = json.dumps(mark._asdict())
    for _ in range(2):
        try:
            with db.session() as s:
                row = s.get(AppState, STATE_KEY)
                if row is None:
                    s.add(AppState(key=STATE_KEY, value=value, updated_at=utcnow()))
                else:
                    row.value, row.updated_at = value, utcnow()
            return
        except IntegrityError:
            continue  # inserted by another process meanwhile: update it


def _runs_recorded_logs(db: Database) -> bool:
    """Whether some run wrote a log (a queued run already names its log; ``log_size`` is
    recorded once the log was written)."""
    with db.engine.connect() as conn:
        row = conn.execute(
            select(PipelineRun.id)
            .where(PipelineRun.log_file.is_not(None), PipelineRun.log_size.is_not(None))
            .limit(1)
        ).first()
    return row is not None


def _read_marker(root: str) -> tuple[str | None, str]:
    """``(id, state)``: state "ok" (id None when there is no marker), "missing-dir", or
    "refused" (a link, a folder or garbage in the marker's place)."""
    try:
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EIO, errno.ESTALE):
            return None, "missing-dir"
        raise
    try:
        try:
            fd = os.open(
                MARKER_NAME,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                dir_fd=dir_fd,
            )
        except FileNotFoundError:
            return None, "ok"
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                return None, "refused"
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None, "refused"
        with open(fd, "rb") as f:
            first = f.read(256).split(b"\n", 1)[0].strip()
    finally:
        os.close(dir_fd)
    text = first.decode("ascii", "replace")
    if len(text) != _ID_LENGTH or any(c not in "0123456789abcdef" for c in text):
        return None, "refused"
    return text, "ok"


def _write_marker(root: str, marker_id: str, *, replace: bool) -> str:
    """Write the marker whole (a temporary file, synced, then linked or renamed into
    place). Without ``replace``, a marker another process wrote meanwhile wins: its id
    is returned."""
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tmp = f"{MARKER_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=dir_fd,
        )
        with open(fd, "wb") as f:
            f.write(f"{marker_id}\n{_NOTE}".encode())
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.rename(tmp, MARKER_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            try:
                os.link(tmp, MARKER_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except FileExistsError:
                theirs = _read_marker(root)[0]
                if theirs is None:
                    raise OSError(
                        errno.EEXIST, f"{MARKER_NAME} appeared meanwhile and is unreadable"
                    ) from None
                marker_id = theirs
            os.unlink(tmp, dir_fd=dir_fd)
        os.fsync(dir_fd)
        return marker_id
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    finally:
        os.close(dir_fd)
