"""Supervise one pipeline process: read its output pipe, reap it, enforce the deadline
and cancellation, and end what it leaves behind.

Guarantees: every byte written to the pipe before EOF is fed to the capture; the
process is reaped with ``wait4`` (its rusage is the exact CPU time of the tree's
waited-for part); on timeout or cancel the whole tree gets SIGTERM, then SIGKILL after
``KILL_GRACE_S`` (past a hard memory limit: SIGKILL at once); descendants that keep the
pipe open after the process exited are killed after ``DRAIN_AFTER_EXIT_S``.
"""

from __future__ import annotations

import os
import resource
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fastflow.runs.capture import LogCapture

READ_SIZE = 256 * 1024
FLUSH_EVERY_S = 0.5
DRAIN_AFTER_EXIT_S = 2.0
KILL_GRACE_S = 3.0
SELECT_S = 0.2
IDLE_FIRST_S = 0.001  # after EOF: first wait for the exit, doubling up to IDLE_MAX_S
IDLE_MAX_S = 0.05


class Flushable(Protocol):
    def flush(self) -> None: ...


@dataclass
class Outcome:
    """How the process ended: ``exited``, ``timeout``, ``cancelled`` or ``memory``."""

    kind: str = "exited"
    wait_status: int | None = None
    rusage: resource.struct_rusage | None = None


@dataclass
class Pump:
    proc: subprocess.Popen[bytes]
    capture: LogCapture
    log_out: Flushable
    kill_tree: Callable[[subprocess.Popen[bytes], int], None]
    timeout: float | None = None
    cancel: threading.Event | None = None
    memory_exceeded: threading.Event | None = None
    kill_grace: float = KILL_GRACE_S
    outcome: Outcome = field(default_factory=Outcome)
    _fd: int = -1
    _sel: selectors.BaseSelector | None = None
    _exited_at: float | None = None
    _killed_at: float | None = None
    _last_flush: float = 0.0
    _idle_s: float = IDLE_FIRST_S

    def run(self) -> Outcome:
        """Read until EOF and until the process is reaped."""
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._fd, selectors.EVENT_READ)
        deadline = time.monotonic() + self.timeout if self.timeout else None
        self._last_flush = time.monotonic()
        try:
            while self._sel is not None or self.outcome.wait_status is None:
                self._read()
                now = time.monotonic()
                self.capture.tick(now)
                self._flush(now)
                self._reap(now)
                self._enforce(now, deadline)
        finally:
            self._close_pipe()
        if self.outcome.kind != "exited":
            self.kill_tree(self.proc, signal.SIGKILL)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.outcome

    def _read(self) -> None:
        if self._sel is None:
            # output closed (EOF comes a moment before the exit can be reaped, or early):
            # keep watching the process and the deadline, checking soon at first
            time.sleep(self._idle_s)
            self._idle_s = min(self._idle_s * 2, IDLE_MAX_S)
            return
        if not self._sel.select(timeout=SELECT_S):
            return
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        if data:
            self.capture.feed(data)
        else:
            self._close_pipe()

    def _close_pipe(self) -> None:
        if self._sel is not None:
            self._sel.close()
            self._sel = None
            self.capture.close()

    def _flush(self, now: float) -> None:
        if now - self._last_flush >= FLUSH_EVERY_S:
            self.log_out.flush()
            self._last_flush = now

    def _reap(self, now: float) -> None:
        if self.outcome.wait_status is not None:
            return
        pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid:
            self.outcome.wait_status, self.outcome.rusage = status, rusage
            self._exited_at = now
            self.proc.returncode = os.waitstatus_to_exitcode(status)

    def _enforce(self, now: float, deadline: float | None) -> None:
        running = self.outcome.wait_status is None
        if running and self._killed_at is None:
            if deadline is not None and now >= deadline:
                self.outcome.kind = "timeout"
            elif self.cancel is not None and self.cancel.is_set():
                self.outcome.kind = "cancelled"
            elif self.memory_exceeded is not None and self.memory_exceeded.is_set():
                self.outcome.kind = "memory"  # no grace: the machine's memory is at stake
                self.kill_tree(self.proc, signal.SIGKILL)
                self._killed_at = now
                return
            if self.outcome.kind != "exited":
                self.kill_tree(self.proc, signal.SIGTERM)
                self._killed_at = now
        if running and self._killed_at is not None and now - self._killed_at > self.kill_grace:
            self.kill_tree(self.proc, signal.SIGKILL)
        exited = self._exited_at
        if exited is not None and self._sel is not None and now - exited > DRAIN_AFTER_EXIT_S:
            # leftover descendants keep the pipe open: the run owns its tree, end it
            self.kill_tree(self.proc, signal.SIGKILL)
            self._close_pipe()
