"""The re-attach boundary: what a killed server's log holds, what Docker returns from
``since``, and what gets appended (no line lost or doubled). Pure: no daemon needed;
the end-to-end restart is ``test_reattach.py``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from fastflow.executors.container import FrameClock, render_line
from fastflow.executors.resume import REORDER_MS, Boundary, Skipper, line_ms, read_boundary
from fastflow.runs.capture import LogCapture
from fastflow.runs.masking import Masker

T0 = 1_780_000_000_000  # ms


def write_log(path: Path, entries: list[tuple[int, bytes]], masker: Masker | None = None) -> None:
    """What the capture writes for Docker ``entries`` (ms, bytes)."""
    out = io.StringIO()
    clock = FrameClock()
    capture = LogCapture(out, clock=clock, masker=masker)
    for ms, data in entries:
        clock.ms = ms
        capture.feed(data)
    clock.ms = None
    path.write_text(out.getvalue(), encoding="utf-8")


class Collector:
    def __init__(self) -> None:
        self.got: list[tuple[int, bytes]] = []
        self.guesses: list[str] = []

    def __call__(self, ms: int, data: bytes) -> None:
        self.got.append((ms, data))

    @property
    def data(self) -> bytes:
        return b"".join(d for _, d in self.got)


def since(entries: list[tuple[int, bytes]], boundary: Boundary) -> list[tuple[int, bytes]]:
    """What Docker answers to ``since=boundary.since_ms``."""
    if boundary.since_ms is None:
        return entries
    return [(ms, d) for ms, d in entries if ms >= boundary.since_ms]


def replay(path: Path, entries: list[tuple[int, bytes]], masker: Masker | None = None) -> Collector:
    boundary = read_boundary(path)
    got = Collector()
    skipper = Skipper(boundary, render_line(masker or Masker([])), got, got.guesses.append)
    for ms, data in since(entries, boundary):
        skipper(ms, data)
    skipper.finish()
    return got


def test_a_half_written_last_line_is_cut_and_appended_again(tmp_path: Path) -> None:
    entries = [(T0 + i * 100, f"n {i}\n".encode()) for i in range(10)]
    log = tmp_path / "run.log"
    write_log(log, entries[:6])
    whole = log.read_bytes()
    log.write_bytes(whole + b"[2026-01-01 00:00:00.600] n ")  # killed mid-write
    got = replay(log, entries)
    assert log.read_bytes() == whole  # the half line is gone
    assert got.data == b"n 6\nn 7\nn 8\nn 9\n"
    assert not got.guesses


def test_boundary_starts_a_little_before_the_newest_line(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    write_log(log, [(T0, b"a\n"), (T0 + 1, b"b\n"), (T0 + 50, b"c\n")])
    boundary = read_boundary(log)
    assert boundary.since_ms == T0 + 50 - REORDER_MS
    assert [line_ms(x) for x in boundary.expected] == [T0 + 50]
    assert boundary.newest_ms == T0 + 50


def test_lines_of_one_millisecond_are_matched_one_by_one(tmp_path: Path) -> None:
    """Identical lines in one millisecond: the log had two of four, two are appended."""
    entries = [(T0, b"tick\n")] * 4 + [(T0 + 1, b"tock\n")]
    log = tmp_path / "run.log"
    write_log(log, entries[:2])
    got = replay(log, entries)
    assert got.data == b"tick\ntick\ntock\n"


def test_fastflow_notes_in_the_log_are_not_container_output(tmp_path: Path) -> None:
    entries = [(T0 + i, f"line {i}\n".encode()) for i in range(5)]
    log = tmp_path / "run.log"
    write_log(log, entries[:3])
    with log.open("a") as f:
        f.write("[2026-01-01 00:00:00.000] [fastflow] re-attached to the run's container\n")
    got = replay(log, entries)
    assert got.data == b"line 3\nline 4\n"


def test_a_long_line_split_by_docker_is_one_line(tmp_path: Path) -> None:
    """Docker splits lines over 16 KiB into entries with their own times; the line's
    time is its first piece's, on both sides."""
    long = b"x" * 40_000
    entries = [
        (T0, b"before\n"),
        (T0 + 1, long[:16384]),
        (T0 + 2, long[16384:32768]),
        (T0 + 3, long[32768:] + b"\n"),
        (T0 + 4, b"after\n"),
    ]
    log = tmp_path / "run.log"
    write_log(log, entries[:4])
    got = replay(log, entries)
    assert got.data == b"after\n"


def test_a_fragment_of_an_older_long_line_leading_dockers_answer_is_skipped(
    tmp_path: Path,
) -> None:
    """``since`` can start inside a long line whose first piece is older: that tail is
    not a line of its own."""
    entries = [
        (T0, b"y" * 16384),
        (T0 + 10, b"tail of y\n"),
        (T0 + 10, b"short\n"),
        (T0 + 11, b"new\n"),
    ]
    log = tmp_path / "run.log"
    write_log(log, entries[:3])
    boundary = read_boundary(log)
    got = Collector()
    skipper = Skipper(boundary, render_line(Masker([])), got, got.guesses.append)
    for ms, data in [(T0 + 10, b"tail of y\n"), (T0 + 10, b"short\n"), (T0 + 11, b"new\n")]:
        skipper(ms, data)
    skipper.finish()
    assert got.data == b"new\n"
    assert not got.guesses


def test_secrets_are_matched_as_the_log_holds_them(tmp_path: Path) -> None:
    secret = "hunter2-token"
    masker_values = [secret]
    entries = [(T0 + i, f"token {secret} {i}\n".encode()) for i in range(4)]
    log = tmp_path / "run.log"
    write_log(log, entries[:2], Masker(masker_values))
    assert secret not in log.read_text()
    got = replay(log, entries, Masker(masker_values))
    assert got.data == f"token {secret} 2\ntoken {secret} 3\n".encode()  # masked by the capture


def test_nothing_written_yet_means_everything_is_appended(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_text("[2026-01-01 00:00:00.000] [env] reusing image x\n[2026-01-01 00:00:00.0")
    entries = [(T0, b"first\n"), (T0 + 5, b"second\n")]
    boundary = read_boundary(log)
    assert boundary.since_ms is None
    got = replay(log, entries)
    assert got.data == b"first\nsecond\n"
    assert log.read_text().endswith("[env] reusing image x\n")


def test_the_skipper_waits_until_it_can_tell(tmp_path: Path) -> None:
    """While Docker has returned only part of what the log holds, nothing is passed on."""
    entries = [(T0, b"a\n"), (T0, b"b\n"), (T0, b"c\n"), (T0 + 1, b"d\n")]
    log = tmp_path / "run.log"
    write_log(log, entries[:3])
    boundary = read_boundary(log)
    got = Collector()
    skipper = Skipper(boundary, render_line(Masker([])), got)
    skipper(T0, b"a\n")
    skipper(T0, b"b\n")
    assert got.got == []
    skipper(T0, b"c\n")
    skipper(T0 + 1, b"d\n")
    assert got.data == b"d\n"
    skipper(T0 + 2, b"e\n")  # from now on, everything passes straight on
    assert got.got[-1] == (T0 + 2, b"e\n")


def test_a_log_that_does_not_match_gets_the_newer_lines_and_a_warning(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    write_log(log, [(T0, b"edited by hand\n")])
    entries = [(T0, b"original\n"), (T0 + 1, b"later\n")]
    got = replay(log, entries)
    assert got.data == b"later\n"
    assert got.guesses and "could not find" in got.guesses[0]


def test_a_missing_log_is_an_empty_one(tmp_path: Path) -> None:
    assert read_boundary(tmp_path / "nope.log") == Boundary(None)


def test_a_link_in_the_logs_place_is_refused_not_truncated_through(tmp_path: Path) -> None:
    """Re-attaching cuts a half-written last line off the run's log. It opened the log by
    path: a link put in its place had a file outside LOGS_DIR truncated (and its end
    read). Now the log is opened through a walk that follows no link."""
    from fastflow.errors import UnsafePath
    from fastflow.executors.resume import read_boundary_below

    root = tmp_path / "logs"
    (root / "p" / "r").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious\nhalf a line")
    (root / "p" / "r" / "run.log").symlink_to(outside)

    with pytest.raises(UnsafePath, match="symbolic link"):
        read_boundary_below(root, "p/r/run.log")
    assert outside.read_bytes() == b"precious\nhalf a line"


def test_read_boundary_below_cuts_a_half_line_and_makes_a_missing_log(tmp_path: Path) -> None:
    from fastflow.executors.resume import read_boundary_below

    root = tmp_path / "logs"
    log = root / "p" / "r" / "run.log"
    log.parent.mkdir(parents=True)
    write_log(log, [(T0, b"whole\n")])
    with log.open("ab") as f:
        f.write(b"[2026-01-02 03:04:05.6")  # a crash mid-line
    boundary = read_boundary_below(root, "p/r/run.log")
    assert boundary.dropped == len(b"[2026-01-02 03:04:05.6") and boundary.newest_ms == T0
    assert log.read_bytes().endswith(b"whole\n")
    assert read_boundary_below(root, "p/q/run.log") == Boundary(None)
    assert (root / "p" / "q" / "run.log").read_bytes() == b""
