"""Which folder holds this installation's run logs: the marker file in ``LOGS_DIR``.

An empty folder where ``LOGS_DIR``'s volume should be mounted (an NFS mount that dropped,
a disk not mounted after a reboot) looks exactly like a folder whose runs' files were
all deleted: a cleanup pass would delete the rows of every due run as "files already
gone", and the logs would come back with the volume, orphaned. So the first run or pass
writes a marker, ``LOGS_DIR/.fastflow-logs-dir``, holding an id that the database keeps
too (``app_state``).

Guarantee: once the database holds an id, no cleanup pass acts, no run starts and no
note is written while ``LOGS_DIR`` — whatever its path — is missing, lacks a marker with
that id, or has something else in the marker's place; ``problem`` says why. Only
``adopt`` (``fastflow cleanup --adopt-logs-dir``) marks such a folder, with a new id
(every folder marked before then fails the check). Before the
database holds an id (a new installation, or one from before the marker), the folder is
marked on first use — a run makes it when it is missing; a pass refuses it only while it
is missing and runs recorded logs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from fastflow.db.engine import Database
from fastflow.db.models import AppState, PipelineRun, utcnow

MARKER_NAME = ".fastflow-logs-dir"
STATE_KEY = "logs_dir_id"
_ID_LENGTH = 32  # hex digits
_TEMP_PREFIX = f"{MARKER_NAME}."
_TEMP_SUFFIX = ".tmp"
_STALE_TEMP_S = 600  # a marker is written in milliseconds: older temporary files are left
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
    or None when it is. ``mark``: a folder not marked yet is marked now, while the
    database holds no id (with ``mark=False`` — a dry run, a note — nothing is written
    and such a folder passes). ``create``: such a folder, missing, is made and marked
    (the runner's case; a pass refuses it while runs recorded logs). A folder that cannot be read or
    marked (permissions, a full or read-only disk) is a problem too."""
    root = str(logs_root)
    try:
        return _problem(db, root, mark=mark, create=create)
    except OSError as e:
        return f"cannot check or mark LOGS_DIR ({root}) as this installation's: {e.strerror or e}"


def _problem(db: Database, root: str, *, mark: bool, create: bool) -> str | None:
    stored = _stored_id(db)
    found, state = _read_marker(root)
    if stored is not None and found == stored:
        return None
    if state == "not-a-folder":
        return f"LOGS_DIR ({root}) is not a folder: fix LOGS_DIR"
    if state == "refused":
        return (
            f"LOGS_DIR ({root}): its {MARKER_NAME} is not a marker (a link, a folder, or not "
            "an id); remove what is there and restore the marker, or " + ADOPT_HINT
        )
    if state == "missing-dir":
        if stored is None and create:  # never marked: a run makes LOGS_DIR, as always
            if mark:
                os.makedirs(root, exist_ok=True)
                _adopt_found(db, root, None)
            return None
        if stored is None and not _runs_recorded_logs(db):
            return None  # a new installation: nothing to do until its first run
        return (
            f"LOGS_DIR ({root}) does not exist (or cannot be reached) while runs record "
            "logs in it: mount its volume (or fix LOGS_DIR); " + ADOPT_HINT
        )
    if stored is None:  # a new installation, or one from before the marker
        if mark:
            _adopt_found(db, root, found)
        return None
    if found is None:
        return (
            f"LOGS_DIR ({root}) is not the folder this installation's logs are in: it has "
            f"no {MARKER_NAME} (an empty folder where a volume should be mounted?); mount "
            "its volume (or fix LOGS_DIR); " + ADOPT_HINT
        )
    return (
        f"LOGS_DIR ({root}) is not this installation's current folder: its {MARKER_NAME} "
        f"names {found}, this database {stored} (another installation's logs, or a folder "
        "marked before the last --adopt-logs-dir, e.g. one under a mount point); mount "
        "its volume (or fix LOGS_DIR or DATABASE_URL), or " + ADOPT_HINT
    )


def adopt(db: Database, logs_root: Path) -> str:
    """Mark ``logs_root`` (made if missing) as this installation's ``LOGS_DIR`` with a new
    id, replacing any marker there; returns the id. Runs whose files are not in it then
    count as gone, and every folder marked before (e.g. the one under a volume's mount
    point) no longer passes. The marker is written before the id is stored; adopters
    running at once end with one id, in the marker and in the database: the id stored
    last (a compare-and-swap), which each adopter writes into the marker until what it
    reads back agrees (a check made in between may refuse once)."""
    root = str(logs_root)
    if os.path.lexists(root) and not os.path.isdir(root):
        raise NotADirectoryError(errno.ENOTDIR, f"{root} is not a folder")
    os.makedirs(root, exist_ok=True)
    before = _stored_id(db)
    marker_id = _new_id()
    _write_marker(root, marker_id, replace=True)
    return _settle(db, root, _swap_id(db, before, marker_id))


_SETTLE_ROUNDS = 50  # each round needs another process to change the id meanwhile


def _settle(db: Database, root: str, stored: str) -> str:
    """Write the stored id into the marker until the marker, read after the stored id,
    agrees with it. Writing once is not enough: another adopter may swap in its id
    between this one's reading the stored id and writing it, and would then find its own
    id stored and its marker overwritten with the old one. The last writer always reads
    the id after its write, so whoever changed the id after that read sees its marker
    replaced and writes again: adopters at once end in agreement."""
    for _ in range(_SETTLE_ROUNDS):
        if _read_marker(root)[0] == stored:
            return stored
        _write_marker(root, stored, replace=True)
        stored = _stored_id(db) or stored
    raise OSError(
        errno.EBUSY,
        f"the id in {MARKER_NAME} kept changing while it was written: is another "
        "`fastflow cleanup --adopt-logs-dir` running? Run it again once that one ended",
    )


def confirmed_at(
    db: Database, dir_fd: int, root: Path, when: str = "while the run started"
) -> str | None:
    """Why the folder open as ``dir_fd`` (``LOGS_DIR``, as a run holds it) is not this
    installation's, or None: its marker must carry the stored id (no id stored: None).
    Checked through the descriptor, so a volume unmounted (or a folder swapped) after
    ``problem`` cannot make a run write where it looked."""
    stored = _stored_id(db)
    if stored is None:
        return None
    try:
        found = _read_marker_at(dir_fd)[0]
    except OSError as e:
        found = None
        why = e.strerror or str(e)
    else:
        why = f"its {MARKER_NAME} is missing or names another installation"
    if found == stored:
        return None
    return f"LOGS_DIR ({root}) changed {when}: {why}; " + ADOPT_HINT


def _new_id() -> str:
    return secrets.token_hex(_ID_LENGTH // 2)


def _adopt_found(db: Database, root: str, found: str | None) -> None:
    """Take the marker's id into the database, writing a marker first when there is none
    (a crash before the database row leaves a marker that the next check adopts)."""
    marker_id = found if found is not None else _write_marker(root, _new_id(), replace=False)
    _store_id(db, marker_id)


def _stored_id(db: Database) -> str | None:
    with db.engine.connect() as conn:
        value = conn.execute(
            select(AppState.value).where(AppState.key == STATE_KEY)
        ).scalar_one_or_none()
    return value.strip() if value else None


def _store_id(db: Database, marker_id: str) -> str:
    """Store ``marker_id`` unless an id is stored already (another process's, first):
    the stored id."""
    try:
        with db.session() as s:
            if s.get(AppState, STATE_KEY) is None:
                s.add(AppState(key=STATE_KEY, value=marker_id, updated_at=utcnow()))
    except IntegrityError:
        pass  # inserted by another process meanwhile: that one stands
    return _stored_id(db) or marker_id


def _swap_id(db: Database, before: str | None, marker_id: str) -> str:
    """Replace the stored id ``before`` (None: no row) with ``marker_id``, unless another
    process changed it meanwhile; the stored id afterwards."""
    if before is None:
        return _store_id(db, marker_id)
    with db.session() as s:
        s.execute(
            update(AppState)
            .where(AppState.key == STATE_KEY, AppState.value == before)
            .values(value=marker_id, updated_at=utcnow())
        )
    return _stored_id(db) or marker_id


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
    """``(id, state)``: state "ok" (id None when there is no marker), "missing-dir",
    "not-a-folder" (``LOGS_DIR`` is a file), or "refused" (a link, a folder or garbage in
    the marker's place)."""
    try:
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOTDIR and os.path.lexists(root) and not os.path.isdir(root):
            return None, "not-a-folder"
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EIO, errno.ESTALE):
            return None, "missing-dir"
        raise
    try:
        return _read_marker_at(dir_fd)
    finally:
        os.close(dir_fd)


def _read_marker_at(dir_fd: int) -> tuple[str | None, str]:
    """``_read_marker`` of the folder open as ``dir_fd``: "ok" or "refused"."""
    try:
        fd = os.open(
            MARKER_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
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
    text = first.decode("ascii", "replace")
    if len(text) != _ID_LENGTH or any(c not in "0123456789abcdef" for c in text):
        return None, "refused"
    return text, "ok"


def _write_marker(root: str, marker_id: str, *, replace: bool) -> str:
    """Write the marker whole (a temporary file, synced, then linked or renamed into
    place). Without ``replace``, a marker another process wrote meanwhile wins: its id
    is returned."""
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tmp = f"{_TEMP_PREFIX}{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
    try:
        _create_synced(tmp, marker_id, dir_fd)
        if replace:
            try:
                os.rename(tmp, MARKER_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except IsADirectoryError:
                raise OSError(
                    errno.EISDIR, f"a folder is in the place of {MARKER_NAME}: remove it first"
                ) from None
        else:
            try:
                _link_or_create(tmp, marker_id, dir_fd)
            except FileExistsError:
                theirs = _read_marker(root)[0]
                if theirs is None:
                    raise OSError(
                        errno.EEXIST, f"{MARKER_NAME} appeared meanwhile and is unreadable"
                    ) from None
                marker_id = theirs
            os.unlink(tmp, dir_fd=dir_fd)
        with contextlib.suppress(OSError):  # (some filesystems refuse to sync a folder)
            os.fsync(dir_fd)
        _remove_stale_temp_files(dir_fd)
        return marker_id
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    finally:
        os.close(dir_fd)


def _link_or_create(tmp: str, marker_id: str, dir_fd: int) -> None:
    """Put the marker in place unless one is there (``FileExistsError``): a hard link of
    the written temporary file (whole at once); on a filesystem without hard links (SMB,
    some FUSE mounts), an exclusive create written and synced in place."""
    try:
        os.link(tmp, MARKER_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    except OSError as e:
        if e.errno not in _NO_LINKS:
            raise
    _create_synced(MARKER_NAME, marker_id, dir_fd)


def _create_synced(name: str, marker_id: str, dir_fd: int) -> None:
    """Create ``name`` (it must not exist; no link followed) in the folder ``dir_fd``
    with the marker's text, synced to disk."""
    fd = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o644,
        dir_fd=dir_fd,
    )
    with open(fd, "wb") as f:
        f.write(f"{marker_id}\n{_NOTE}".encode())
        f.flush()
        os.fsync(f.fileno())


_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV)


def _remove_stale_temp_files(dir_fd: int) -> None:
    """Remove the temporary files of markers whose writer was killed (older than
    ``_STALE_TEMP_S``; a live writer's file is milliseconds old)."""
    cutoff = time.time() - _STALE_TEMP_S
    with os.scandir(dir_fd) as entries:
        names = [
            e.name
            for e in entries
            if e.name.startswith(_TEMP_PREFIX) and e.name.endswith(_TEMP_SUFFIX)
        ]
    for name in names:
        try:  # (another writer's file may be renamed or linked away meanwhile)
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass  # gone meanwhile: nothing to do
