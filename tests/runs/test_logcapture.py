"""Line capture: prefixes, partial lines, invalid UTF-8, long lines."""

from __future__ import annotations

import io
import re

from fastflow.runs.capture import LONG_LINE, LogCapture

STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] ")


class Clock:
    def __init__(self) -> None:
        self.t = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC

    def __call__(self) -> float:
        return self.t


def _capture() -> tuple[LogCapture, io.StringIO, Clock]:
    out = io.StringIO()
    clock = Clock()
    return LogCapture(out, clock=clock), out, clock


def test_lines_get_utc_arrival_prefix() -> None:
    cap, out, clock = _capture()
    cap.feed(b"one\ntwo\n")
    clock.t += 1.5
    cap.feed(b"three\n")
    cap.close()
    assert out.getvalue().splitlines() == [
        "[2026-01-01 00:00:00.000] one",
        "[2026-01-01 00:00:00.000] two",
        "[2026-01-01 00:00:01.500] three",
    ]


def test_partial_line_keeps_its_first_arrival_time() -> None:
    cap, out, clock = _capture()
    cap.feed(b"par")
    clock.t += 2
    cap.feed(b"tial\nnext")
    cap.close()
    assert out.getvalue().splitlines() == [
        "[2026-01-01 00:00:00.000] partial",
        "[2026-01-01 00:00:02.000] next",
    ]


def test_invalid_utf8_becomes_replacement_and_split_chars_survive() -> None:
    cap, out, _ = _capture()
    euro = "€".encode()
    cap.feed(b"bad \xff\xfe end\n" + euro[:1])
    cap.feed(euro[1:] + b"\n")
    cap.close()
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("bad \ufffd\ufffd end")
    assert lines[1].endswith("] €")


def test_long_line_is_streamed_whole() -> None:
    cap, out, _ = _capture()
    chunk = b"x" * 10_000
    for _ in range(100):  # 1,000,000 chars, well above LONG_LINE
        cap.feed(chunk)
    cap.feed(b"\nafter\n")
    cap.close()
    lines = out.getvalue().split("\n")
    assert STAMP.match(lines[0])
    assert lines[0].count("x") == 1_000_000 and len(lines[0]) == 1_000_000 + 26
    assert lines[1].endswith("] after")
    assert LONG_LINE < 1_000_000


def test_note_never_lands_inside_an_open_line() -> None:
    cap, out, _ = _capture()
    cap.feed(b"y" * (LONG_LINE + 10))
    cap.write_note("timeout")
    cap.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].endswith("[fastflow] timeout")


def test_empty_lines_and_crlf_are_kept() -> None:
    cap, out, _ = _capture()
    cap.feed(b"a\n\nb\r\n")
    cap.close()
    assert out.getvalue().split("\n")[:3] == [
        "[2026-01-01 00:00:00.000] a",
        "[2026-01-01 00:00:00.000] ",
        "[2026-01-01 00:00:00.000] b\r",
    ]
