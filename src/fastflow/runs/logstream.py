"""Follow a run while it runs: the new bytes of its log from a byte offset, its new CPU/RAM
samples, its status changes, and its end. Used by the server-sent-events route and by
``fastflow logs --follow``; each caller polls (``Follower.poll``) at its own pace.

Guarantees:
- offsets are exact bytes of the log: a ``LogChunk`` covers ``[start, end)`` and the next
  one starts at ``end``, so a client that resumes from the last ``end`` gets every byte
  once, in order;
- chunks are whole lines, except a line longer than ``MAX_PARTIAL`` still being written
  (cut at a character boundary) and the last bytes of a log once its run has ended;
- nothing but offsets is kept between polls, and one poll reads at most ``MAX_POLL_BYTES``
  of the log (``more`` says there is more to read at once);
- ``Ended`` comes once, after the last byte of the log, when the run has a final status
  (or its row is gone); the database is asked at most every ``status_every`` seconds.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fastflow.context import Context
from fastflow.db.models import FINAL_STATUSES, PipelineRun
from fastflow.errors import LogNotAvailable, RunNotFound, UnsafePath
from fastflow.runs import files as logfiles
from fastflow.runs import readback
from fastflow.runs import store as runs

MAX_POLL_BYTES = 1024 * 1024
MAX_PARTIAL = 64 * 1024
STATUS_EVERY_S = 1.0


@dataclass(frozen=True)
class LogChunk:
    """Log bytes ``[start, end)``."""

    start: int
    end: int
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class Samples:
    """New CPU/RAM samples; ``first`` is the index of the first one in the run's series."""

    first: int
    samples: list[dict[str, Any]]


@dataclass(frozen=True)
class StatusChanged:
    """The run, still active, has a new status (QUEUED, PENDING, RUNNING)."""

    status: str


@dataclass(frozen=True)
class Ended:
    """The run has ended; every byte of its log was sent before this."""

    status: str
    exit_code: int | None
    failure_reason: str | None


Event = LogChunk | Samples | StatusChanged | Ended


def _cut(data: bytes, final: bool) -> int:
    """How much of ``data`` (read at the end of what is known) to send now: up to the
    last newline; everything once the run has ended; a long unfinished line at a
    character boundary."""
    if final:
        return len(data)
    cut = data.rfind(b"\n") + 1
    if cut == 0 and len(data) >= MAX_PARTIAL:
        cut = _whole_characters(data)
    return cut


def _whole_characters(data: bytes) -> int:
    """The length of ``data`` without a UTF-8 character cut at its end."""
    start = len(data) - 1
    while start > len(data) - 4 and start > 0 and 0x80 <= data[start] <= 0xBF:
        start -= 1
    lead = data[start]
    need = 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return len(data) if len(data) - start >= need else start


class _Tail:
    """An open file read from an offset, by whole lines. Opened through a walk from
    ``LOGS_DIR`` that follows no link (``runs.files.open_below``), once it exists."""

    def __init__(self, logs_root: Path, rel: str) -> None:
        self.path = logfiles.resolve(logs_root, rel)  # (refuses an escape at once)
        self._root, self._rel = logs_root, rel
        self.file: BinaryIO | None = None

    def read(self, offset: int, final: bool) -> tuple[bytes, bool]:
        """Bytes to send from ``offset`` and whether more are waiting."""
        if self.file is None:
            self.file = logfiles.open_below(self._root, self._rel)
            if self.file is None:
                return b"", False
        size = os.fstat(self.file.fileno()).st_size
        if size <= offset:
            return b"", False
        self.file.seek(offset)
        data = self.file.read(min(size - offset, MAX_POLL_BYTES))
        more = offset + len(data) < size
        return data[: _cut(data, final and not more)], more

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Follower:
    """One client following one run (see the module's guarantees)."""

    def __init__(
        self,
        ctx: Context,
        run_id: uuid.UUID,
        offset: int = 0,
        *,
        metrics: bool = True,
        status_every: float = STATUS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.run_id = run_id
        self.offset = offset
        self.more = False  # poll again at once: more bytes are waiting
        self.done = False
        self._metrics = metrics
        self._status_every = status_every
        self._clock = clock
        self._checked_at: float | None = None
        self._status: str | None = None
        self._ended: Ended | None = None
        self._log: _Tail | None = None
        self._samples: _Tail | None = None
        self._samples_offset = 0
        self._samples_sent = 0
        self._archived: Iterator[bytes] | None = None
        self._carry = b""
        self._lock = threading.Lock()  # close() may come from another thread than poll()

    # --- status ----------------------------------------------------------------------

    def _check_status(self, events: list[Event]) -> None:
        now = self._clock()
        if self._ended is not None:
            return
        if self._checked_at is not None and now - self._checked_at < self._status_every:
            return
        self._checked_at = now
        run = runs.get(self.ctx.db, self.run_id)
        if run is None:
            entry = readback.ledger_entry(self.ctx, self.run_id)
            if entry is None:
                raise RunNotFound(f"run {self.run_id} not found")
            self._ended = Ended(entry.status, entry.exit_code, None)
            self._open_archived(None, had_log=entry.log_key is not None)
            return
        root = self.ctx.settings.logs_root
        if self._log is None and run.log_file:
            self._log = _Tail(root, run.log_file)
        if self._samples is None and run.metrics_file and self._metrics:
            try:
                self._samples = _Tail(root, run.metrics_file)
            except UnsafePath:  # metrics are secondary: the log goes on without them
                self._metrics = False
        if run.status in FINAL_STATUSES:
            self._ended = Ended(run.status, run.exit_code, run.failure_reason)
            if self._log is None or not self._log.path.exists():
                self._log = None
                # a run that wrote a log has its size recorded; one cancelled while it
                # was queued names a log file that was never created
                self._open_archived(run, had_log=bool(run.log_file and run.log_size))
        elif run.status != self._status:
            self._status = run.status
            events.append(StatusChanged(run.status))

    def _open_archived(self, run: PipelineRun | None, *, had_log: bool) -> None:
        """A finished run whose log is no longer local: read it back from the archive.
        A run that never had a log ends without more; one whose log is neither local
        nor archived raises ``LogNotAvailable`` (an outside audit: it ended as a clean,
        empty success, while every other reader reports the loss)."""
        try:
            source = readback.open_log(self.ctx, self.run_id, run, start=self.offset)
        except RunNotFound:
            return  # its row and entry went meanwhile: nothing left to send
        except LogNotAvailable:
            if had_log:
                raise
            return  # it never had a log
        self._archived = iter(source.chunks)

    # --- reading ---------------------------------------------------------------------

    def poll(self) -> list[Event]:
        """What is new since the last poll (possibly nothing)."""
        with self._lock:
            return self._poll()

    def _poll(self) -> list[Event]:
        if self.done:
            return []
        events: list[Event] = []
        self._check_status(events)
        final = self._ended is not None
        self.more = False
        if self._archived is not None:
            self._poll_archived(events)
        elif self._log is not None:
            data, self.more = self._log.read(self.offset, final)
            if data:
                events.append(LogChunk(self.offset, self.offset + len(data), data))
                self.offset += len(data)
        if self._samples is not None:
            self._poll_samples(events)
        if self._ended is not None and not self.more:
            events.append(self._ended)
            self.done = True
            self._release()
        return events

    def _poll_archived(self, events: list[Event]) -> None:
        assert self._archived is not None
        taken = 0
        for chunk in self._archived:
            data = self._carry + chunk
            cut = _cut(data, False)
            self._carry = data[cut:]
            if cut:
                events.append(LogChunk(self.offset, self.offset + cut, data[:cut]))
                self.offset += cut
            taken += len(chunk)
            if taken >= MAX_POLL_BYTES:
                self.more = True
                return
        if self._carry:
            end = self.offset + len(self._carry)
            events.append(LogChunk(self.offset, end, self._carry))
            self.offset, self._carry = end, b""
        self._archived = None

    def _poll_samples(self, events: list[Event]) -> None:
        assert self._samples is not None
        try:
            data, _ = self._samples.read(self._samples_offset, False)
        except (UnsafePath, OSError):
            # a link, a FIFO or an unreadable file in the metrics file's place: the
            # samples stop, the log goes on (metrics are secondary)
            self._samples.close()
            self._samples, self._metrics = None, False
            return
        if not data:
            return
        self._samples_offset += len(data)
        found: list[dict[str, Any]] = []
        for line in data.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                found.append(item)
        if found:
            events.append(Samples(self._samples_sent, found))
            self._samples_sent += len(found)

    def close(self) -> None:
        """Release the open files (and an archived object being read)."""
        with self._lock:
            self.done = True
            self._release()

    def _release(self) -> None:
        for tail in (self._log, self._samples):
            if tail is not None:
                tail.close()
        if self._archived is not None:
            close = getattr(self._archived, "close", None)
            if close is not None:
                close()
            self._archived = None
