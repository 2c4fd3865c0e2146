"""Docker's log stream with timestamps, as ``(milliseconds, bytes)`` chunks.

With ``timestamps=True`` every log entry Docker returns starts with its RFC 3339 time
(nanoseconds) and a space; an entry is one line, or a piece of a line longer than
Docker's 16 KiB buffer (or the unfinished last line), each piece with its own time.

Guarantees: the payload bytes are passed on exactly, in Docker's order; each chunk
carries the time (Unix milliseconds, truncated) of the entries it came from, so a
line's time is its first piece's; entries are passed on as soon as they arrived, in
chunks of what arrived together (entries of one millisecond merged), so a burst costs
few calls of the sink. Memory: the reader is faster than Docker's log API (which is
the bottleneck), so what waits between the two threads stays small.
"""

from __future__ import annotations

import calendar
import contextlib
import queue
import threading
from collections.abc import Callable, Iterable

Sink = Callable[[int, bytes], None]
BATCH = 4096  # entries handled per turn at most


class StampParser:
    """``2026-01-02T03:04:05.123456789Z`` (or ``+01:00``) -> Unix milliseconds; the
    seconds part of the last stamp is cached (consecutive entries share it)."""

    def __init__(self) -> None:
        self._head = b""
        self._seconds = 0

    def ms(self, stamp: bytes) -> int:
        head = stamp[:19]
        if head != self._head:
            self._seconds = calendar.timegm(
                (
                    int(head[0:4]),
                    int(head[5:7]),
                    int(head[8:10]),
                    int(head[11:13]),
                    int(head[14:16]),
                    int(head[17:19]),
                    0,
                    0,
                    0,
                )
            )
            self._head = head
        rest = stamp[19:]
        millis = 0
        if rest[:1] == b".":
            digits = rest[1:].split(b"Z", 1)[0].split(b"+", 1)[0].split(b"-", 1)[0]
            millis = int((digits[:3] + b"000")[:3])
            rest = rest[1 + len(digits) :]
        offset = 0
        if rest[:1] in (b"+", b"-") and len(rest) >= 6:
            offset = int(rest[1:3]) * 3600 + int(rest[4:6]) * 60
            offset = offset if rest[:1] == b"+" else -offset
        return (self._seconds - offset) * 1000 + millis


def split_entry(entry: bytes, parser: StampParser) -> tuple[int, bytes]:
    """``b"<stamp> <payload>"`` -> (milliseconds, payload)."""
    space = entry.find(b" ")
    if space < 0:
        raise ValueError("a Docker log entry without a timestamp")
    return parser.ms(entry[:space]), entry[space + 1 :]


def relay(entries: Iterable[bytes], sink: Sink, batch: int = BATCH) -> int:
    """Feed Docker's timestamped entries to ``sink``: a helper thread reads them while
    this one passes on everything that arrived meanwhile, consecutive entries of one
    millisecond merged into one chunk (live: nothing waits for more output). Returns
    the number of entries; an error of the reading is raised here, after what came
    before it was passed on."""
    box: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()

    def read() -> None:
        try:
            for entry in entries:
                box.put(entry)
        except BaseException as e:  # raised in the caller's thread below
            box.put(e)
        finally:
            box.put(None)

    threading.Thread(target=read, name="docker-log-reader", daemon=True).start()
    parser = StampParser()
    n = 0
    while True:
        items = [box.get()]
        with contextlib.suppress(queue.Empty):
            while len(items) < batch:
                items.append(box.get_nowait())
        pending: list[bytes] = []
        pending_ms = -1
        for item in items:
            if isinstance(item, bytes):
                n += 1
                ms, payload = split_entry(item, parser)
                if ms != pending_ms and pending:
                    sink(pending_ms, b"".join(pending))
                    pending.clear()
                pending_ms = ms
                pending.append(payload)
                continue
            if pending:
                sink(pending_ms, b"".join(pending))
                pending.clear()
            if item is None:
                return n
            raise item
        if pending:
            sink(pending_ms, b"".join(pending))
