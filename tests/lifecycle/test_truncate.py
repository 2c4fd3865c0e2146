"""Streaming, atomic, line-safe truncation of real log files."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from fastflow.lifecycle.truncate import MARKER_RESERVE, TruncateResult, marker, truncate_log
from tests.harness.tmpfs import mounted

NOW = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
STAMP = "2026-05-04 03:02:01"
MARKER_RE = re.compile(
    rb"\A\[\.\.\. (\d+) bytes truncated by fastflow at "
    rb"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC \.\.\.\]\n"
)
MiB = 1024 * 1024


def split_marker(data: bytes) -> tuple[int, str, bytes]:
    """(bytes removed, time stamp, kept content) of a truncated file; fails without marker."""
    m = MARKER_RE.match(data)
    assert m is not None, f"no marker line at the start of {data[:120]!r}"
    return int(m.group(1)), m.group(2).decode(), data[m.end() :]


def numbered_lines(count: int, width: int = 40) -> bytes:
    """Log lines of varying length: ``line 0000 xx...\\n``."""
    return b"".join(f"line {i:04d} {'x' * (i * 7 % width)}\n".encode() for i in range(count))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".truncate-"))


def assert_truncated(original: bytes, result_bytes: bytes, limit: int) -> bytes:
    """Common invariants of a truncated log; returns the kept content."""
    assert len(result_bytes) <= limit
    removed, stamp, kept = split_marker(result_bytes)
    assert stamp == STAMP
    assert kept == original[len(original) - len(kept) :]
    assert removed == len(original) - len(kept)
    return kept


# --- the marker -------------------------------------------------------------------------


def test_marker_line_has_the_exact_format() -> None:
    assert marker(123, NOW) == (
        b"[... 123 bytes truncated by fastflow at 2026-05-04 03:02:01 UTC ...]\n"
    )


def test_marker_fits_in_the_reserved_space_for_any_realistic_size() -> None:
    assert len(marker(10**18, NOW)) <= MARKER_RESERVE


def test_marker_converts_an_aware_time_to_utc() -> None:
    berlin_summer = NOW.astimezone(timezone(timedelta(hours=2)))

    assert marker(5, berlin_summer) == marker(5, NOW)


# --- line-safe truncation ---------------------------------------------------------------


@pytest.mark.parametrize("limit", [300, 1000, 4096, 65_536])
def test_result_fits_the_limit_and_keeps_the_newest_whole_lines(tmp_path: Path, limit: int) -> None:
    original = numbered_lines(5000)
    log = tmp_path / "run.log"
    log.write_bytes(original)

    result = truncate_log(log, limit, NOW)

    data = log.read_bytes()
    kept = assert_truncated(original, data, limit)
    # the kept part starts right after a newline of the original
    assert original[len(original) - len(kept) - 1 : len(original) - len(kept)] == b"\n"
    # and is not shorter than needed: at most one (partial) line beyond the budget is lost
    longest_line = max(len(line) for line in original.splitlines(keepends=True))
    assert len(kept) > limit - MARKER_RESERVE - longest_line
    assert result == TruncateResult(
        old_size=len(original), new_size=len(data), removed=len(original) - len(kept)
    )


def test_cut_inside_a_multibyte_character_moves_to_the_next_line(tmp_path: Path) -> None:
    line = "Größe café — naïve €uro\n".encode()
    original = line * 400
    # pick the limit so that the raw cut (size - budget) falls inside a multi-byte character
    limit = next(
        n
        for n in range(2000, 2100)
        if original[len(original) - (n - MARKER_RESERVE)] & 0xC0 == 0x80
    )
    budget = limit - MARKER_RESERVE
    log = tmp_path / "run.log"
    log.write_bytes(original)

    truncate_log(log, limit, NOW)

    data = log.read_bytes()
    kept = assert_truncated(original, data, limit)
    data.decode("utf-8")  # strict: raises on a split character
    assert kept.startswith(line)
    assert len(kept) == (budget // len(line)) * len(line)


@pytest.mark.parametrize("char", ["é", "€", "😀"], ids=["2-byte", "3-byte", "4-byte"])
@pytest.mark.parametrize("shift", [1, 2, 3])
def test_single_huge_line_is_cut_at_a_character_boundary(
    tmp_path: Path, char: str, shift: int
) -> None:
    limit = 10_000
    budget = limit - MARKER_RESERVE
    width = len(char.encode())
    # no newline at all: the tail must be cut mid-line, at a character start
    original = b"a" * shift + (char * (3 * limit // width)).encode()
    log = tmp_path / "run.log"
    log.write_bytes(original)

    truncate_log(log, limit, NOW)

    data = log.read_bytes()
    kept = assert_truncated(original, data, limit)
    assert data.decode("utf-8").endswith(char)
    assert budget - width < len(kept) <= budget
    assert len(kept) % width == 0


def test_huge_line_longer_than_the_scan_window_is_cut_mid_line(tmp_path: Path) -> None:
    limit = 3 * MiB
    original = b"head\n" + ("ü" * (3 * MiB)).encode() + b"tail without newline"
    log = tmp_path / "run.log"
    log.write_bytes(original)

    truncate_log(log, limit, NOW)

    data = log.read_bytes()
    kept = assert_truncated(original, data, limit)
    data.decode("utf-8")
    assert len(kept) > limit - MARKER_RESERVE - 2


def test_single_huge_line_ending_in_newline_keeps_its_newest_bytes(tmp_path: Path) -> None:
    limit = 10_000
    original = ("€" * 10_000).encode() + b"\n"
    log = tmp_path / "run.log"
    log.write_bytes(original)

    truncate_log(log, limit, NOW)

    data = log.read_bytes()
    kept = assert_truncated(original, data, limit)
    data.decode("utf-8")
    assert len(kept) > limit // 2


# --- files that need nothing ------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 999, 1000])
def test_file_at_or_under_the_limit_is_untouched(tmp_path: Path, size: int) -> None:
    log = tmp_path / "run.log"
    original = (b"x" * 9 + b"\n") * (size // 10) + b"y" * (size % 10)
    log.write_bytes(original)
    os.utime(log, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    before = log.stat()

    assert truncate_log(log, 1000, NOW) is None

    after = log.stat()
    assert log.read_bytes() == original
    assert after.st_mtime_ns == before.st_mtime_ns == 1_600_000_000_000_000_000
    assert after.st_ino == before.st_ino
    assert leftovers(tmp_path) == []


def test_truncating_again_with_the_same_limit_does_nothing(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_bytes(numbered_lines(2000))
    first = truncate_log(log, 4096, NOW)
    assert first is not None
    once = log.read_bytes()

    assert truncate_log(log, 4096, NOW + timedelta(days=1)) is None
    assert log.read_bytes() == once


# --- atomicity --------------------------------------------------------------------------


def test_original_is_replaced_by_rename_and_no_temp_file_remains(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_bytes(numbered_lines(3000))
    log.chmod(0o640)
    before = log.stat()

    assert truncate_log(log, 2048, NOW) is not None

    after = log.stat()
    assert after.st_ino != before.st_ino  # a new file took the name: never rewritten in place
    assert after.st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.log"]


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs (root only), unmounted at teardown."""
    with mounted(tmp_path / "tiny", "64k") as mount_point:
        yield mount_point


def test_disk_full_leaves_the_original_byte_identical_and_no_temp_file(tiny_fs: Path) -> None:
    folder = tiny_fs / "etl" / "run-1"
    folder.mkdir(parents=True)
    log = folder / "run.log"
    original = numbered_lines(1300)  # ~39 KiB of the 64 KiB
    assert 36 * 1024 < len(original) < 44 * 1024
    log.write_bytes(original)
    free_before = os.statvfs(tiny_fs).f_bfree
    before = log.stat()

    with pytest.raises(OSError) as caught:
        truncate_log(log, 32 * 1024, NOW)  # the 32 KiB copy does not fit beside it

    assert caught.value.errno == errno.ENOSPC
    assert log.read_bytes() == original
    assert log.stat().st_ino == before.st_ino
    assert log.stat().st_mtime_ns == before.st_mtime_ns
    assert leftovers(folder) == []
    assert os.statvfs(tiny_fs).f_bfree == free_before  # the partial copy was released


_CHILD = """
import sys
from datetime import UTC, datetime
from pathlib import Path

from fastflow.lifecycle.truncate import truncate_log

if sys.argv[1] == "truncate":
    result = truncate_log(Path(sys.argv[2]), int(sys.argv[3]), datetime.now(UTC))
    assert result is not None
    print(result.removed, result.new_size)
"""


def _peak_rss_kib(*args: str) -> tuple[int, str]:
    """Run the child script; return its peak RSS (KiB, from wait4) and its stdout."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == 0, err
    return usage.ru_maxrss, out


@pytest.mark.slow
def test_truncating_a_200_mib_log_uses_constant_memory(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    lines = numbered_lines(40_000)
    block = lines[: lines.rfind(b"\n", 0, MiB - 1) + 1].ljust(MiB - 1, b"-") + b"\n"
    assert len(block) == MiB
    with log.open("wb") as fh:
        for _ in range(200):
            fh.write(block)
    size = log.stat().st_size
    limit = 150 * MiB  # copies ~150 MiB: a read-it-all implementation would need far more

    baseline_kib, _ = _peak_rss_kib("baseline")
    peak_kib, out = _peak_rss_kib("truncate", str(log), str(limit))

    removed, new_size = (int(v) for v in out.split())
    assert new_size == log.stat().st_size <= limit
    assert removed > size - limit
    with log.open("rb") as fh:
        assert MARKER_RE.match(fh.readline())
    extra_mib = (peak_kib - baseline_kib) / 1024
    assert extra_mib < 60, f"truncation raised peak RSS by {extra_mib:.0f} MiB"


# --- a run folder swapped for a link (only someone who can write in LOGS_DIR) ---------------


def _swappable(tmp_path: Path) -> tuple[Path, Path, Path, bytes]:
    """LOGS_DIR with ``p/r/run.log`` (oversized) and a folder outside with a same-named
    file: (root, run folder, outside folder, the outside file's bytes)."""
    root = tmp_path / "logs"
    run = root / "p" / "r"
    run.mkdir(parents=True)
    (run / "run.log").write_bytes(numbered_lines(2000))
    outside = tmp_path / "outside"
    outside.mkdir()
    theirs = numbered_lines(3000)
    (outside / "run.log").write_bytes(theirs)
    return root, run, outside, theirs


def test_a_folder_swapped_for_a_link_before_truncation_is_refused(tmp_path: Path) -> None:
    """The path was checked, then the folder was replaced by a link to outside: the walk
    from LOGS_DIR refuses the link; the outside file is not truncated."""
    from fastflow.errors import UnsafePath
    from fastflow.runs import files

    root, run, outside, theirs = _swappable(tmp_path)
    path = files.resolve(root, "p/r/run.log")
    run.rename(root / "p" / "moved")
    run.symlink_to(outside, target_is_directory=True)

    with pytest.raises(UnsafePath, match="symbolic link"):
        truncate_log(path, 4096, NOW, logs_root=root)
    assert (outside / "run.log").read_bytes() == theirs
    assert leftovers(outside) == []


def test_a_folder_swapped_for_a_link_during_truncation_replaces_nothing_outside(
    tmp_path: Path,
) -> None:
    """The swap happens while the copy is made (here: just before the rename): the
    rename goes to the folder that was opened, now moved; outside, nothing changes."""
    root, run, outside, theirs = _swappable(tmp_path)
    ours = (run / "run.log").read_bytes()
    moved = root / "p" / "moved"

    def swap(new_size: int, new_sha: str) -> None:
        run.rename(moved)
        run.symlink_to(outside, target_is_directory=True)

    result = truncate_log(run / "run.log", 4096, NOW, before_replace=swap, logs_root=root)

    assert result is not None
    assert (outside / "run.log").read_bytes() == theirs and leftovers(outside) == []
    assert_truncated(ours, (moved / "run.log").read_bytes(), 4096)
    assert leftovers(moved) == []


def test_a_log_changed_before_the_rename_is_kept(tmp_path: Path) -> None:
    """``expect``: the log must still be the archived file right before the rename."""
    from fastflow.errors import FileChanged
    from fastflow.runs.files import FileIdentity

    root, run, _, _ = _swappable(tmp_path)
    log = run / "run.log"
    expect = FileIdentity.of(log)
    with log.open("ab") as f:
        f.write(b"late line\n")
    grown = log.read_bytes()

    with pytest.raises(FileChanged, match="changed while it was truncated"):
        truncate_log(log, 4096, NOW, logs_root=root, expect=expect)
    assert log.read_bytes() == grown and leftovers(run) == []


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_what_is_not_a_regular_file_is_refused_at_once_without_a_leak(tmp_path: Path) -> None:
    """A FIFO in the log's place would block a plain open until a writer came (the
    pass would hang holding its lock); a folder there made the descriptor leak (found
    by a review)."""
    root = tmp_path / "logs"
    (root / "p" / "fifo").mkdir(parents=True)
    os.mkfifo(root / "p" / "fifo" / "run.log")
    (root / "p" / "dir" / "run.log").mkdir(parents=True)
    before = _open_fds()
    for _ in range(20):
        for kind in ("fifo", "dir"):
            with pytest.raises(OSError, match="not a regular file"):
                truncate_log(root / "p" / kind / "run.log", 10, NOW, logs_root=root)
    assert _open_fds() == before


def test_an_unwritable_journal_leaks_no_descriptor_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    root, run, _, _ = _swappable(tmp_path)
    original = (run / "run.log").read_bytes()
    (tmp_path / "a-file").write_text("not a folder")
    before = _open_fds()
    for _ in range(20):
        with pytest.raises(OSError):
            truncate_log(
                run / "run.log", 4096, NOW, logs_root=root, journal=tmp_path / "a-file" / "j"
            )
    assert _open_fds() == before
    assert (run / "run.log").read_bytes() == original and leftovers(run) == []


def test_a_log_removed_during_truncation_is_not_brought_back(tmp_path: Path) -> None:
    root, run, _, _ = _swappable(tmp_path)
    log = run / "run.log"

    with pytest.raises(FileNotFoundError, match="removed while it was truncated"):
        truncate_log(log, 4096, NOW, before_replace=lambda n, s: log.unlink(), logs_root=root)
    assert not log.exists() and leftovers(run) == []


def test_a_log_appended_to_during_truncation_is_kept(tmp_path: Path) -> None:
    """Without S3 too: the lines written meanwhile would be lost by the rename."""
    from fastflow.errors import FileChanged

    root, run, _, _ = _swappable(tmp_path)
    log = run / "run.log"

    def append(new_size: int, new_sha: str) -> None:
        with log.open("ab") as f:
            f.write(b"written meanwhile\n")

    with pytest.raises(FileChanged, match="changed while it was truncated"):
        truncate_log(log, 4096, NOW, before_replace=append, logs_root=root)
    assert log.read_bytes().endswith(b"written meanwhile\n") and leftovers(run) == []


def test_the_recovery_sweep_removes_the_journaled_temp_file_only_below_logs_dir(
    tmp_path: Path,
) -> None:
    """After a kill, the journal names the temporary copy; if its run folder was
    swapped for a link meanwhile, the sweep must not unlink through the link (found by
    an outside audit: a same-named file outside was deleted)."""
    from fastflow.lifecycle.truncate import remove_journaled_temp
    from fastflow.runs import files

    root, run, outside, _ = _swappable(tmp_path)
    tmp_name = f"{files.TEMP_PREFIX}0123456789abcdef{files.TEMP_SUFFIX}"
    (run / tmp_name).write_bytes(b"partial copy")
    (outside / tmp_name).write_bytes(b"theirs")
    journal = tmp_path / "truncate.journal"
    journal.write_text(str(files.resolve(root, f"p/r/{tmp_name}")))
    moved = root / "p" / "moved"
    run.rename(moved)
    run.symlink_to(outside, target_is_directory=True)

    assert remove_journaled_temp(journal, root) is None  # refused: a link on the way
    assert (outside / tmp_name).read_bytes() == b"theirs" and not journal.exists()

    run.unlink()
    moved.rename(run)
    journal.write_text(str(files.resolve(root, f"p/r/{tmp_name}")))
    assert remove_journaled_temp(journal, root) is not None
    assert not (run / tmp_name).exists() and not journal.exists()
    journal.write_text(str(outside / tmp_name))  # a journal naming a file elsewhere
    assert remove_journaled_temp(journal, root) is None
    assert (outside / tmp_name).exists()
