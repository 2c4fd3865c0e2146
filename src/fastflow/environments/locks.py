"""File locks (``fcntl.flock``) on ``DATA_DIR/envs/<key>.lock`` and ``<key>.use``.

Guarantees: a lock is held on the file that is at the path *now* — after acquiring, the
open file is compared with the path (device and inode) and the attempt is repeated when
``gc`` unlinked or replaced it meanwhile; so ``gc`` may unlink a lock file while it holds
it, and nobody ever holds a lock on a file that is no longer there. Locks end with the
``with`` block or with the process (the kernel releases them on a crash).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fastflow.errors import BuildStopped

_STOP_POLL_S = 0.2  # how often a wait for a build lock looks at its stop event


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _acquire(
    path: Path,
    mode: int,
    *,
    wait: bool,
    on_wait: Callable[[], None] | None,
    stop: threading.Event | None = None,
) -> int | None:
    """An fd holding ``mode`` on ``path``, or ``None`` when ``wait`` is false and another
    process holds a conflicting lock; with ``stop``, the wait looks at it every
    ``_STOP_POLL_S`` and raises ``BuildStopped`` once it is set."""
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:  # (0644 before: a run's user could hold it)
                os.fchmod(fd, 0o600)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    return None
                if on_wait is not None and not told:
                    told = True
                    on_wait()
                if stop is None:
                    fcntl.flock(fd, mode)
                else:
                    _flock_unless(fd, mode, stop)
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # unlinked by gc while we waited: lock the new file


def _flock_unless(fd: int, mode: int, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise BuildStopped("the environment build was stopped")
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(_STOP_POLL_S)  # (flock has no timeout; a poll bounds the wait)


@contextlib.contextmanager
def exclusive(
    path: Path,
    on_wait: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[None]:
    """Hold an exclusive lock on ``path``, waiting for it (``on_wait`` is called once if
    another process holds it; ``BuildStopped`` once ``stop`` is set while waiting)."""
    fd = _acquire(path, fcntl.LOCK_EX, wait=True, on_wait=on_wait, stop=stop)
    assert fd is not None
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def shared(path: Path) -> Iterator[None]:
    """Hold a shared lock on ``path`` (waits only while an exclusive holder has it)."""
    fd = _acquire(path, fcntl.LOCK_SH, wait=True, on_wait=None)
    assert fd is not None
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_exclusive(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` if nobody holds any lock on it; yields whether
    it is held. Never waits."""
    fd = _acquire(path, fcntl.LOCK_EX, wait=False, on_wait=None)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)
