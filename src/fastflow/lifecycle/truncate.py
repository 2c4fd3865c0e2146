"""Streaming, atomic, line-safe truncation of a log to its newest bytes.

Guarantees: the result is at most ``limit`` bytes, starts with one marker line
``[... N bytes truncated by fastflow at <UTC time> ...]``, continues at a line boundary
(or, for a single line longer than the budget, at a UTF-8 character boundary) and is valid
UTF-8 if the input was. The tail is copied to a temporary file in the same folder, fsynced
and renamed over the original: a crash leaves the old file or the new one, never a
partial or empty one. Memory is constant whatever the file size.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from fastflow.errors import FileChanged, UnsafePath
from fastflow.runs.files import TEMP_PREFIX, TEMP_SUFFIX, FileIdentity, RunFolder, real_path

COPY_CHUNK = 1024 * 1024
SCAN_LIMIT = 1024 * 1024  # how far to look for the next newline before cutting mid-line
MARKER_RESERVE = 120  # bytes kept free for the marker line


@dataclass(frozen=True)
class TruncateResult:
    old_size: int
    new_size: int
    removed: int
    sha256: str = field(default="", compare=False)  # of the new, truncated file


# Called with (size, SHA-256) of the truncated copy after it is on disk and before it
# replaces the log; raising aborts the truncation with the log untouched.
BeforeReplace = Callable[[int, str], None]


def marker(removed: int, now: datetime) -> bytes:
    stamp = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"[... {removed} bytes truncated by fastflow at {stamp} ...]\n".encode()


def _tail_start(fh: BinaryIO, size: int, budget: int) -> int:
    """Offset of the first byte to keep: after a newline, or at a UTF-8 char start."""
    start = max(0, size - budget)
    if start == 0:
        return 0
    fh.seek(start - 1)
    window = fh.read(min(SCAN_LIMIT, size - start + 1))
    nl = window.find(b"\n")
    if nl >= 0 and start + nl < size:
        return start + nl  # window[0] is the byte before start
    # one very long line: cut at a character boundary instead
    offset = start
    fh.seek(start)
    head = fh.read(4)
    for byte in head:
        if byte & 0xC0 != 0x80:
            break
        offset += 1
    return offset


def truncate_log(
    path: Path,
    limit: int,
    now: datetime,
    *,
    before_replace: BeforeReplace | None = None,
    journal: Path | None = None,
    logs_root: Path | None = None,
    expect: FileIdentity | None = None,
) -> TruncateResult | None:
    """Keep the newest bytes of ``path`` within ``limit``; None if already small enough.

    Raises ``OSError`` (disk full, permissions, a link in the file's place, ...) with the
    original file untouched. ``journal``, when given, names the temporary file while it
    exists, so that a later pass can remove it after a kill (``remove_journaled_temp``).
    Every step — reading, the temporary copy, the check, the rename — goes through the
    descriptor of the file's folder (``RunFolder``; with ``logs_root``, reached by a walk
    from it that follows no link), so a folder swapped for a link meanwhile cannot make
    it read or replace a file elsewhere. Right before ``before_replace`` and again right
    before the rename, the log must still be the file that was read — or, with
    ``expect``, have that identity — else ``FileChanged`` (appended to or replaced
    meanwhile) or ``FileNotFoundError`` (removed), and nothing is replaced.
    """
    folder = (
        RunFolder.containing(logs_root, path)
        if logs_root is not None
        else RunFolder(path.parent, "")
    )
    with folder:
        name = path.name
        with os.fdopen(folder.open_file(name), "rb") as src:
            st = os.fstat(src.fileno())
            size = st.st_size
            if size <= limit:
                return None
            wanted = expect or FileIdentity.of_stat(st)
            budget = max(0, limit - MARKER_RESERVE)
            start = _tail_start(src, size, budget)
            removed = start
            fd, tmp_name = folder.create_temp()
            try:
                with os.fdopen(fd, "wb") as dst:
                    if journal is not None:
                        _write_journal(journal, path.parent / tmp_name)
                    digest = _copy_tail(src, start, dst, marker(removed, now))
                    new_size = os.fstat(dst.fileno()).st_size
                    os.fchmod(dst.fileno(), st.st_mode & 0o777)
                _check_unchanged(folder, name, wanted)
                if before_replace is not None:
                    before_replace(new_size, digest.hexdigest())
                    _check_unchanged(folder, name, wanted)  # (the callback took time)
                os.replace(tmp_name, name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
            except BaseException:
                folder.unlink(tmp_name)
                raise
            finally:
                if journal is not None:
                    journal.unlink(missing_ok=True)
        try:
            os.fsync(folder.fd)  # the rename is durable
        except OSError:
            pass
    return TruncateResult(
        old_size=size, new_size=new_size, removed=removed, sha256=digest.hexdigest()
    )


def _check_unchanged(folder: RunFolder, name: str, wanted: FileIdentity) -> None:
    """The log is still the file that was read (or the archived one): not removed,
    appended to or replaced meanwhile — else nothing is replaced."""
    now = folder.identity(name)
    if now is None:
        raise FileNotFoundError(errno.ENOENT, f"{name} was removed while it was truncated")
    if now != wanted:
        raise FileChanged(f"{name} changed while it was truncated; kept")


def _copy_tail(src: BinaryIO, start: int, dst: BinaryIO, head: bytes) -> hashlib._Hash:
    """Write ``head`` and ``src`` from ``start`` to ``dst``, fsync; return their SHA-256."""
    digest = hashlib.sha256(head)
    dst.write(head)
    src.seek(start)
    while chunk := src.read(COPY_CHUNK):
        dst.write(chunk)
        digest.update(chunk)
    dst.flush()
    os.fsync(dst.fileno())
    return digest


def _write_journal(journal: Path, tmp: Path) -> None:
    journal.parent.mkdir(parents=True, exist_ok=True)
    with journal.open("w", encoding="utf-8") as f:
        f.write(str(tmp))
        f.flush()
        os.fsync(f.fileno())


def remove_journaled_temp(journal: Path, logs_root: Path) -> Path | None:
    """Remove the temporary file a killed truncation left behind; return its path. Only a
    file of fastflow's temporary naming below ``LOGS_DIR`` is removed, through its
    folder's descriptor (``RunFolder``): a run folder swapped for a link since the kill
    cannot redirect the unlink."""
    try:
        name = journal.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    tmp = Path(name)
    removed = None
    if tmp.name.startswith(TEMP_PREFIX) and tmp.name.endswith(TEMP_SUFFIX):
        try:
            rel = os.path.relpath(tmp, real_path(logs_root))
            folder, file_name = RunFolder.of_file(logs_root, rel)  # (refuses "..")
            with folder:
                if folder.unlink(file_name):
                    removed = tmp
        except (OSError, UnsafePath):
            pass
    journal.unlink(missing_ok=True)
    return removed
