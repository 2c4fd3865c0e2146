"""Where a run's files live, and safe access to them.

Guarantee: every path this module returns lies inside ``LOGS_DIR``; a stored relative
path that would escape it (``..``, absolute paths, symlinks pointing out) raises
``UnsafePath`` instead of being opened or deleted.
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fastflow.errors import UnsafePath

LOG_NAME = "run.log"
METRICS_NAME = "metrics.jsonl"
READ_CHUNK = 64 * 1024
TEMP_PREFIX = ".truncate-"  # fastflow's own temporary files in a run folder
TEMP_SUFFIX = ".tmp"


def run_dir_rel(pipeline_name: str, run_id: str) -> str:
    return f"{pipeline_name}/{run_id}"


def log_rel(pipeline_name: str, run_id: str) -> str:
    return f"{run_dir_rel(pipeline_name, run_id)}/{LOG_NAME}"


def metrics_rel(pipeline_name: str, run_id: str) -> str:
    return f"{run_dir_rel(pipeline_name, run_id)}/{METRICS_NAME}"


_O_PATH: int | None = getattr(os, "O_PATH", None)  # Linux


def real_path(path: str | os.PathLike[str]) -> str:
    """``os.path.realpath(path)``: absolute, every symbolic link followed, ``..`` applied.

    On Linux the kernel resolves it (``open(O_PATH)`` and ``/proc/self/fd``: three
    system calls instead of Python's ``lstat`` per component, a fifth of the time); a
    name that does not exist (not even as a dangling link) is appended to its folder's
    real path. Anything else — no ``/proc``, a file removed meanwhile — goes through
    ``os.path.realpath``."""
    if _O_PATH is None:
        return os.path.realpath(path)
    try:
        fd = os.open(path, _O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return _missing_real_path(os.fspath(path))
    except OSError:
        return os.path.realpath(path)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)
    finally:
        os.close(fd)
    if not real.startswith("/") or real.endswith(" (deleted)"):
        return os.path.realpath(path)  # not a path, or the file was removed meanwhile
    return real


def _missing_real_path(path: str) -> str:
    head, name = os.path.split(path)
    if not head or name in ("", ".", "..") or ".." in head.split(os.sep):
        # a ``..`` after a missing folder cannot be resolved without guessing
        return os.path.realpath(path)
    try:
        os.lstat(path)
    except FileNotFoundError:  # no such name: nothing to follow in it
        parent = real_path(head)
        return parent + name if parent.endswith("/") else f"{parent}/{name}"
    except OSError:
        pass
    return os.path.realpath(path)  # a dangling link, or a race: the careful way


def _inside(root: str, candidate: str) -> bool:
    """``candidate`` is ``root`` or below it (both real, absolute paths)."""
    return candidate == root or candidate.startswith(root if root.endswith("/") else root + "/")


def parts(rel: str, *, folder: bool = False) -> list[str]:
    """The parts of a stored relative path (``.`` and empty ones dropped); an absolute
    path, a NUL byte or a ``..`` part raises ``UnsafePath``, and so does an empty path
    unless it names a ``folder`` (``LOGS_DIR`` itself)."""
    if "\x00" in rel or rel.startswith("/") or (not rel and not folder):
        raise UnsafePath(f"refusing log path {rel!r}: not a relative path under LOGS_DIR")
    names = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in names:
        raise UnsafePath(f"refusing log path {rel!r}: a '..' part may lead outside LOGS_DIR")
    if not names and not folder:
        raise UnsafePath(f"refusing log path {rel!r}: not a relative path under LOGS_DIR")
    return names


def resolve(logs_root: Path, rel: str) -> Path:
    """Absolute path of ``rel`` under ``logs_root``; raise ``UnsafePath`` if it escapes.

    ``rel`` is what fastflow stores (``<pipeline>/<run id>/<file>``): a ``..`` part is
    refused outright — after a missing folder or a symlink loop, no resolver can say
    where it leads — and so is a symbolic link anywhere below ``LOGS_DIR`` (``LOGS_DIR``
    itself may be one). An existing path that is neither a regular file nor a folder
    (a FIFO, a socket, a device) is refused too."""
    parts(rel)
    root = real_path(logs_root)
    written = os.path.normpath(os.path.join(root, rel))
    candidate = real_path(written)
    if not _inside(root, candidate):
        raise UnsafePath(f"refusing log path {rel!r}: it resolves outside LOGS_DIR")
    if candidate != written:
        # fastflow never links inside LOGS_DIR: a link there could make one run's
        # cleanup delete another run's file
        raise UnsafePath(f"refusing log path {rel!r}: a symbolic link below LOGS_DIR")
    try:
        mode = os.lstat(candidate).st_mode
    except OSError:
        mode = None  # not there (yet): nothing to read
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        # a FIFO would block its reader (the pass, holding its lock) until a writer came
        raise UnsafePath(f"refusing log path {rel!r}: not a regular file")
    return Path(candidate)


@dataclass(frozen=True)
class FileIdentity:
    """What identifies one version of a file without reading it again: what a write
    changes. The change time is part of it: a rewrite that puts the old modification
    time back (``cp -p``, ``rsync -t --inplace``) still moves ``ctime``, which no
    program can set."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileIdentity:
        return cls.of_stat(os.stat(path))

    @classmethod
    def of_stat(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def size_of(path: Path) -> int | None:
    """Size in bytes, or None when the file does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def iter_file(path: Path, start: int = 0, chunk: int = READ_CHUNK) -> Iterator[bytes]:
    """Stream a file from ``start`` in bounded chunks."""
    with path.open("rb") as f:
        f.seek(start)
        while data := f.read(chunk):
            yield data


def tail_start(size: int, tail_bytes: int | None) -> int:
    return 0 if tail_bytes is None or tail_bytes >= size else size - tail_bytes


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RunFolder:
    """A folder below ``LOGS_DIR``, held open: its descriptor comes from a walk down from
    the real ``LOGS_DIR``, one part at a time, that follows no symbolic link
    (``O_NOFOLLOW``). Every check and every unlink goes through that descriptor, so
    what it removes lies in the folder that was opened — a folder renamed, or replaced
    by a link to elsewhere, after the path was checked cannot redirect it (unlinking by
    path would follow such a link). ``missing`` when the folder is gone: nothing to do.
    Use it in a ``with`` block (the descriptors are closed at its end)."""

    def __init__(
        self, logs_root: Path, rel_dir: str, *, create: bool = False, root_fd: int | None = None
    ) -> None:
        """``create``: make the missing folders on the way below ``LOGS_DIR`` (as
        ``mkdir -p``; each through its parent's descriptor, so a link on the way is
        refused, never followed). ``LOGS_DIR`` itself must exist. ``root_fd``: walk from
        that open ``LOGS_DIR`` (a pass's, whose marker it confirmed) instead of its path."""
        self._names = parts(rel_dir, folder=True)
        self._fds: list[int] = []
        self.missing = False
        try:
            # (``LOGS_DIR`` itself may be a link: followed; never made here — see
            # ``runs.logsdir``: a missing one may be a volume that is not mounted)
            self._fds.append(
                os.dup(root_fd)
                if root_fd is not None
                else os.open(logs_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            )
            for name in self._names:
                if create:
                    try:
                        os.mkdir(name, dir_fd=self._fds[-1])
                    except FileExistsError:
                        pass  # a link there is refused by the open below
                self._fds.append(os.open(name, _DIR_FLAGS, dir_fd=self._fds[-1]))
        except FileNotFoundError:
            self.missing = True  # (``LOGS_DIR`` too may be gone: nothing to delete)
        except BaseException as e:
            self.close()
            if isinstance(e, OSError) and e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePath(
                    f"refusing run folder {rel_dir!r}: a symbolic link or a file below LOGS_DIR"
                ) from None
            raise

    @classmethod
    def containing(cls, logs_root: Path, path: Path) -> RunFolder:
        """The folder of ``path``, a path that ``resolve`` returned for ``logs_root``."""
        return cls(logs_root, os.path.relpath(path.parent, real_path(logs_root)))

    @classmethod
    def of_file(cls, logs_root: Path, rel: str) -> tuple[RunFolder, str]:
        """The folder of the stored relative path ``rel``, and the file's name in it."""
        names = parts(rel)
        return cls(logs_root, "/".join(names[:-1])), names[-1]

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())

    @property
    def root_open(self) -> bool:
        """Whether ``LOGS_DIR`` itself was opened (``missing`` then means a folder below)."""
        return bool(self._fds)

    @property
    def root_fd(self) -> int:
        """The descriptor of ``LOGS_DIR`` this folder was found from."""
        if not self._fds:
            raise FileNotFoundError(errno.ENOENT, "LOGS_DIR is gone")
        return self._fds[0]

    @property
    def fd(self) -> int:
        """The folder's descriptor (for ``dir_fd=`` calls; not when ``missing``)."""
        if self.missing:
            raise FileNotFoundError(errno.ENOENT, "the run folder is gone")
        return self._fds[-1]

    def open_file(self, name: str) -> int:
        """A read-only descriptor of the regular file ``name`` in this folder. A link
        there is refused (``OSError`` ELOOP), never followed; so is anything else that
        is not a regular file (a FIFO would block the reader: it is opened without
        waiting, then refused)."""
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd
        )
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{name} is not a regular file")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_for_writing(
        self, name: str, *, append: bool, exclusive: bool = False, readable: bool = False
    ) -> int:
        """A write descriptor of the regular file ``name`` in this folder, created when
        missing (mode 0666 less the umask, as ``open`` does); truncated unless
        ``append``. ``exclusive``: it must not exist yet; ``readable``: read-write. A
        link there is refused (``OSError`` ELOOP), never followed, and so is anything
        that is not a regular file (a FIFO is not waited on)."""
        flags = os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        flags |= os.O_RDWR if readable else os.O_WRONLY
        flags |= os.O_APPEND if append else 0
        flags |= os.O_EXCL if exclusive else 0
        fd = os.open(name, flags, 0o666, dir_fd=self.fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{name} is not a regular file")
            if not append:
                os.ftruncate(fd, 0)  # (only now: a FIFO or a device is never truncated)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def create_temp(self) -> tuple[int, str]:
        """A new, empty temporary file of fastflow's naming in this folder, private
        (0600): (write descriptor, name)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            name = f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
            try:
                return os.open(name, flags, 0o600, dir_fd=self.fd), name
            except FileExistsError:
                continue

    def identity(self, name: str) -> FileIdentity | None:
        """The identity of the file ``name`` in this folder; None when there is no such
        file. A symbolic link there is refused (``UnsafePath``), never followed."""
        if self.missing:
            return None
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            # fastflow never links inside LOGS_DIR (see ``resolve``)
            raise UnsafePath(f"refusing {name!r}: a symbolic link below LOGS_DIR")
        return FileIdentity.of_stat(st)

    def unlink(self, name: str) -> bool:
        """Delete ``name`` in this folder (a link itself, never its target); a file
        already gone counts as deleted. True if it existed."""
        if self.missing:
            return False
        try:
            os.unlink(name, dir_fd=self.fd)
            return True
        except FileNotFoundError:
            return False

    def remove_temp_files(self) -> int:
        """Remove fastflow's temporary files in this folder (a killed truncation's; only
        while holding the pass lock: truncation runs only inside a pass); how many were
        removed."""
        if self.missing:
            return 0
        try:
            entries = list(os.scandir(self.fd))
        except OSError:
            return 0
        return sum(
            self.unlink(e.name)
            for e in entries
            if e.is_file(follow_symlinks=False) and is_own_temp(Path(e.name))
        )

    def remove_if_empty(self) -> None:
        """Remove this folder and its then-empty parents, never ``LOGS_DIR`` itself:
        each through its parent's descriptor."""
        if self.missing:
            return
        for i in range(len(self._names), 0, -1):
            try:
                os.rmdir(self._names[i - 1], dir_fd=self._fds[i - 1])
            except OSError:
                return


_PROC_FD = Path("/proc/self/fd")


@functools.cache
def _has_proc_fd() -> bool:
    return _PROC_FD.is_dir()


class HeldFile:
    """A regular file below ``LOGS_DIR``, held open through its ``RunFolder``: whatever
    is read through it is the file that was opened, even when its name or a folder on
    its path is renamed or replaced by a link meanwhile (reading by path would follow
    such a link out of ``LOGS_DIR``)."""

    def __init__(self, folder: RunFolder, name: str, fd: int, found: Path) -> None:
        self.folder = folder
        self.name = name
        self.fd = fd
        self._found = found

    @property
    def path(self) -> Path:
        """A path that opens this very file again (``/proc/self/fd/N``, for code that
        opens by name, e.g. s3transfer's part readers); valid while it is held. Without
        ``/proc``, the path the file was found at (checked, but open to a swap)."""
        if _has_proc_fd():
            return _PROC_FD / str(self.fd)
        return self._found  # pragma: no cover (not Linux)

    def identity(self) -> FileIdentity:
        """The identity of the file held open."""
        return FileIdentity.of_stat(os.fstat(self.fd))

    def named(self) -> FileIdentity | None:
        """The identity of the file its name now stands for in the folder that was
        opened (None: gone); equal to ``identity()`` while nothing replaced or changed
        it."""
        return self.folder.identity(self.name)


def _refused(rel: str, e: OSError) -> UnsafePath | None:
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafePath(f"refusing log path {rel!r}: a symbolic link below LOGS_DIR")
    if e.errno == errno.EINVAL:
        return UnsafePath(f"refusing log path {rel!r}: not a regular file")
    return None


def _open_in(folder: RunFolder, rel: str, name: str) -> int:
    """``folder.open_file(name)``, a link or what is not a regular file refused as
    ``UnsafePath`` (``FileNotFoundError`` when it, or the folder, does not exist)."""
    try:
        return folder.open_file(name)
    except OSError as e:
        refused = _refused(rel, e)
        if refused is not None:
            raise refused from None
        raise


@contextmanager
def held(logs_root: Path, rel: str) -> Iterator[HeldFile]:
    """Open the stored relative path ``rel`` for reading through a walk from
    ``LOGS_DIR`` that follows no link (``RunFolder``); closed at the end of the block.
    ``FileNotFoundError`` when it (or its folder) does not exist; ``UnsafePath`` for a
    symbolic link, a ``..`` part or anything that is not a regular file."""
    folder, name = RunFolder.of_file(logs_root, rel)
    with folder:
        fd = _open_in(folder, rel, name)
        try:
            yield HeldFile(folder, name, fd, logs_root / rel)
        finally:
            os.close(fd)


def open_below(logs_root: Path, rel: str) -> BinaryIO | None:
    """The regular file at the stored relative path ``rel``, open for reading (buffered),
    found through a walk from ``LOGS_DIR`` that follows no link; None when it does not
    exist. ``UnsafePath`` as for ``held``. What is read is the file that was opened,
    whatever happens to its path afterwards."""
    folder, name = RunFolder.of_file(logs_root, rel)
    with folder:
        try:
            fd = _open_in(folder, rel, name)
        except FileNotFoundError:
            return None
    return os.fdopen(fd, "rb")


def open_for_writing(
    logs_root: Path, rel: str, *, append: bool, exclusive: bool = False, readable: bool = False
) -> int:
    """A write descriptor of the stored relative path ``rel`` (see
    ``RunFolder.open_for_writing``), its missing folders created on the way: every part
    is made and opened through its parent's descriptor, so a folder swapped for a link
    after the path was checked cannot make fastflow write outside ``LOGS_DIR``.
    ``UnsafePath`` for a link, a ``..`` part or what is not a regular file; ``OSError``
    otherwise (a full disk, a file that exists with ``exclusive``)."""
    names = parts(rel)
    try:
        with RunFolder(logs_root, "/".join(names[:-1]), create=True) as folder:
            return folder.open_for_writing(
                names[-1], append=append, exclusive=exclusive, readable=readable
            )
    except OSError as e:
        refused = _refused(rel, e)
        if refused is not None:
            raise refused from None
        raise


def open_for_writing_in(folder: RunFolder, rel: str, *, append: bool) -> int:
    """``open_for_writing`` of the file ``rel`` in the run folder held open as ``folder``
    (its last part is the file's name): the file is made where that folder is, whatever
    happened to its path since it was opened."""
    try:
        return folder.open_for_writing(parts(rel)[-1], append=append)
    except OSError as e:
        refused = _refused(rel, e)
        if refused is not None:
            raise refused from None
        raise


def read_below(logs_root: Path, path: Path) -> bytes | None:
    """The bytes of the regular file at ``path``, an absolute path below ``LOGS_DIR`` (a
    webhook run's ``FASTFLOW_PAYLOAD``), read through ``open_below``; None when it is
    not below ``LOGS_DIR``, does not exist, is a link (or has one on its way) or is not
    a regular file — never the bytes of a file elsewhere."""
    rel = rel_below(logs_root, path)
    try:
        f = open_below(logs_root, rel)
    except UnsafePath:
        return None
    if f is None:
        return None
    with f:
        return f.read()


def size_below(logs_root: Path, rel: str) -> int | None:
    """The size of the file at the stored relative path ``rel``, looked up through its
    folder's descriptor (``RunFolder``: no link followed); None when it does not exist
    or cannot be reached safely — never the size of a file elsewhere."""
    try:
        folder, name = RunFolder.of_file(logs_root, rel)
        with folder:
            found = folder.identity(name)
    except (UnsafePath, OSError):
        return None
    return None if found is None else found.size


def rel_below(logs_root: Path, path: Path) -> str:
    """The stored relative form of ``path``, a path ``resolve`` returned for
    ``logs_root``."""
    return os.path.relpath(path, real_path(logs_root))


def remove_quietly(path: Path) -> bool:
    """Delete a file; a file already gone counts as deleted. Returns True if it existed."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def is_own_temp(path: Path) -> bool:
    """True for a temporary file of fastflow's own naming (left by a killed truncation)."""
    return path.name.startswith(TEMP_PREFIX) and path.name.endswith(TEMP_SUFFIX)
