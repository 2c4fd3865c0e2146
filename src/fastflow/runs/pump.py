"""Supervise one pipeline process: read its output pipe, reap it, enforce the deadline
and cancellation, and end what it leaves behind.

Guarantees: every byte written to the pipe before EOF is fed to the capture; the
process is reaped with ``wait4`` (its rusage is the exact CPU time of the tree's
waited-for part); on timeout or cancel the whole tree gets SIGTERM, then SIGKILL after
``kill_grace`` (past a hard memory limit: SIGKILL at once); what the process leaves in
its process group when it exits is killed — at once when it closed the pipe, after
``DRAIN_AFTER_EXIT_S`` when it keeps the pipe open — before the process is reaped (its
pid, the group's id, cannot be taken by another process until then), and the log notes
how many were ended. Only a descendant that left the group (``setsid``) outlives the run.
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
    _exited_at: float | None = None  # the process exited (a zombie until ``_end``)
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
        if self._exited_at is None:
            # exited? (WNOWAIT: left a zombie, so its pid — the group's id — stays ours)
            if os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                return
            self._exited_at = now
        if self._sel is not None:
            return  # still draining the pipe (``_enforce`` ends that)
        self._end_leftovers()
        _, status, rusage = os.wait4(self.proc.pid, 0)  # a zombie: returns at once
        self.outcome.wait_status, self.outcome.rusage = status, rusage
        self.proc.returncode = os.waitstatus_to_exitcode(status)

    def _end_leftovers(self) -> None:
        """SIGKILL what is left in the run's process group (the exited process is its
        leader, not yet reaped); a note in the log says how many."""
        left = _group_members(self.proc.pid)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if left and self.outcome.kind == "exited":
            self.capture.write_note(
                f"ended {left} process(es) the pipeline left running in its process group"
            )

    def _enforce(self, now: float, deadline: float | None) -> None:
        running = self._exited_at is None
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
            # (``_reap`` then kills the group and reaps the process)
            self._close_pipe()


def _group_members(pgid: int) -> int:
    """How many live processes other than ``pgid`` itself are in process group ``pgid``
    (read from ``/proc``; 0 where it cannot be read)."""
    count = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit() or int(entry) == pgid:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # after the command name's closing parenthesis: state, ppid, pgrp
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            count += 1
    return count
