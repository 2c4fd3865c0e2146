"""Where a re-attached run's log left off, and a sink that drops what the log holds.

A server killed during a container run leaves a log whose end is the end of what it had
flushed: possibly half a line. On re-attach, ``read_boundary`` cuts that half line off
and reads the log's newest lines; the executor is then asked for its output from
``since_ms`` (a little before the newest line's time), and ``Skipper`` drops the
container lines the log already holds before passing the rest on.

Why no line is lost or doubled: every log line of a container carries the Docker time
of its first piece, truncated to the millisecond, and Docker's ``since`` filter keeps
exactly the entries at or after a millisecond. The log is a prefix of Docker's log (in
Docker's order), so the log's lines stamped at or after ``since_ms`` are a prefix of
what Docker returns from ``since_ms`` on: ``Skipper`` matches them one by one (lines
shaped like fastflow's notes and ``[env]`` lines excluded on both sides) and passes on
what follows. ``since_ms`` lies ``REORDER_MS`` before the
newest line so that stdout and stderr entries whose Docker times are slightly out of
file order are still found. If a piece of a long line written before ``since_ms``
leads Docker's answer, up to ``MAX_OFFSET`` leading lines are tried as such fragments.
If nothing matches (a log edited by hand, clocks that jumped), the lines newer than
the log's newest one are appended and ``on_guess`` is told.
"""

from __future__ import annotations

import calendar
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fastflow.runs import files as logfiles

STAMP_LEN = len(b"[2026-01-02 03:04:05.678] ")
OWN = (b"[fastflow] ", b"[env] ")  # fastflow's notes and image build lines
WINDOW = 4 * 1024 * 1024  # bytes of the log's end that are read
REORDER_MS = 2
MAX_OFFSET = 4
_STAMP_RE = re.compile(rb"^\[(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{3})\] ")

Sink = Callable[[int, bytes], None]


def line_ms(line: bytes) -> int | None:
    """The Unix milliseconds of a log line's stamp (None: no stamp)."""
    m = _STAMP_RE.match(line)
    if m is None:
        return None
    y, mo, d, h, mi, s, ms = (int(g) for g in m.groups())
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 1000 + ms


def is_note(line: bytes) -> bool:
    """A line as fastflow writes its own (a note, an ``[env]`` line). Such lines are
    left out of the matching on both sides, so one the pipeline printed itself does no
    harm."""
    return line[STAMP_LEN:].startswith(OWN)


@dataclass(frozen=True)
class Boundary:
    """``since_ms``: ask for output from here (None: all of it); ``expected``: the
    container lines the log holds from there on (as written, without newline);
    ``newest_ms``: the newest container line's time; ``dropped``: bytes of a
    half-written last line that were cut off."""

    since_ms: int | None
    expected: list[bytes] = field(default_factory=list)
    newest_ms: int | None = None
    dropped: int = 0


def _last_newline(f: object, size: int) -> int:
    """Offset just past the file's last newline (0 when it has none)."""
    pos = size
    block = 1024 * 1024
    while pos > 0:
        start = max(0, pos - block)
        f.seek(start)  # type: ignore[attr-defined]
        chunk: bytes = f.read(pos - start)  # type: ignore[attr-defined]
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def read_boundary(path: Path, window: int = WINDOW) -> Boundary:
    """Cut a half-written last line off the log at ``path`` (durably) and say where
    its container output stopped. A missing log is an empty one."""
    try:
        f = path.open("r+b")
    except FileNotFoundError:
        return Boundary(None)
    return boundary_of(f, window)


def read_boundary_below(logs_root: Path, rel: str, window: int = WINDOW) -> Boundary:
    """``read_boundary`` of a run's log at the stored relative path ``rel``, opened (or
    created empty) through a walk from ``LOGS_DIR`` that follows no link: a link in the
    log's place is refused (``UnsafePath``), never truncated through."""
    fd = logfiles.open_for_writing(logs_root, rel, append=True, readable=True)
    return boundary_of(os.fdopen(fd, "r+b"), window)


def boundary_of(f: BinaryIO, window: int = WINDOW) -> Boundary:
    """``read_boundary`` of the open log ``f`` (read-write); closes it."""
    with f:
        size = f.seek(0, os.SEEK_END)
        keep = _last_newline(f, size)
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        start = max(0, keep - window)
        f.seek(start)
        data = f.read(keep - start)
    lines = data.split(b"\n")[:-1]
    if start > 0 and lines:
        lines = lines[1:]  # may begin mid-line
    stamped = [(line_ms(line), line) for line in lines if not is_note(line)]
    container = [(ms, line) for ms, line in stamped if ms is not None]
    if not container:
        # nothing of the container yet (only fastflow's notes and [env] lines)
        return (
            Boundary(None, dropped=size - keep)
            if start == 0
            else Boundary(_newest(lines), newest_ms=_newest(lines), dropped=size - keep)
        )
    newest = container[-1][0]
    since = newest - REORDER_MS
    expected = [line for ms, line in container if ms >= since]
    return Boundary(since, expected, newest, size - keep)


def _newest(lines: list[bytes]) -> int | None:
    stamps = [ms for ms in map(line_ms, lines) if ms is not None]
    return max(stamps) if stamps else None


class Skipper:
    """An output sink in front of ``forward``: drops the container output the log
    already holds (``boundary.expected``), then passes everything on unchanged.
    ``render(ms, line)`` must give a raw line as the log writes it (stamp, masking),
    without its newline. Call ``finish`` when the output ended."""

    def __init__(
        self,
        boundary: Boundary,
        render: Callable[[int, bytes], bytes],
        forward: Sink,
        on_guess: Callable[[str], None] | None = None,
    ) -> None:
        self._expected = boundary.expected
        self._newest = boundary.newest_ms
        self._render = render
        self._forward = forward
        self._on_guess = on_guess
        self._passing = not boundary.expected
        self._lines: list[tuple[int, bytes]] = []  # complete lines: (first piece's ms, bytes)
        self._rendered: list[bytes] = []
        self._open: list[tuple[int, bytes]] = []  # pieces of the unfinished line

    def __call__(self, ms: int, data: bytes) -> None:
        if self._passing:
            self._forward(ms, data)
            return
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                if pos < len(data):
                    self._open.append((ms, data[pos:]))
                break
            piece = data[pos : nl + 1]
            if self._open:
                first = self._open[0][0]
                piece = b"".join(p for _, p in self._open) + piece
                self._open = []
            else:
                first = ms
            self._lines.append((first, piece))
            pos = nl + 1
        self._decide(final=False)

    def finish(self) -> None:
        """The output ended: decide with what came."""
        if not self._passing:
            self._decide(final=True)

    def _rendered_line(self, i: int) -> bytes:
        while len(self._rendered) <= i:
            ms, raw = self._lines[len(self._rendered)]
            self._rendered.append(self._render(ms, raw))
        return self._rendered[i]

    def _compare(self, offset: int) -> tuple[str, int]:
        """("match", lines to drop) | ("mismatch", 0) | ("more", 0)."""
        i, j = offset, 0
        while j < len(self._expected):
            if i >= len(self._lines):
                return "more", 0
            line = self._rendered_line(i)
            if not is_note(line):
                if line != self._expected[j]:
                    return "mismatch", 0
                j += 1
            i += 1
        return "match", i

    def _decide(self, *, final: bool) -> None:
        for offset in range(MAX_OFFSET + 1):
            verdict, drop = self._compare(offset)
            if verdict == "match":
                self._release(self._lines[drop:])
                return
            if verdict == "more" and not final:
                return  # an earlier offset might still match: wait for more lines
        # nothing matches: append what is newer than the log's newest line
        if self._on_guess is not None:
            self._on_guess(
                "could not find where the log stopped in the container's output; "
                "appending the lines written after its last line"
            )
        newest = self._newest if self._newest is not None else -1
        self._release([(ms, line) for ms, line in self._lines if ms > newest], newest)

    def _release(self, lines: list[tuple[int, bytes]], newer_than: int | None = None) -> None:
        self._passing = True
        for ms, line in lines:
            self._forward(ms, line)
        pieces, self._open = self._open, []
        if pieces and (newer_than is None or pieces[0][0] > newer_than):
            for ms, piece in pieces:
                self._forward(ms, piece)
        self._lines, self._rendered = [], []
