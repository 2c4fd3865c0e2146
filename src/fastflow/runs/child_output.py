"""How a pipeline's Python writes its output: the source of this module runs inside the
pipeline's interpreter (``bootstrap``); fastflow never imports it for itself.

Guarantees, for what Python code writes (``print``, ``logging``, tracebacks):
- both streams reach the one output pipe as whole lines, in the order the lines were
  completed: a line written to one stream never lands inside a line of the other, so a
  secret printed to standard output in pieces is masked even when standard error was
  written between the pieces (the capture masks the merged stream);
- a line written with one ``write()`` is never split or mixed with another thread's;
- standard output is block-buffered in C (one Python call per 64 KiB, not per line);
  each standard-error write first hands on what standard output buffered, so the order
  of the two is kept;
- an unfinished line is held back until its newline, until it reaches ``LINE_LIMIT``
  bytes, or for at most two ticks of ``TICK_S`` (a line that never ends still shows
  up); everything is written at exit, and a forked child (``multiprocessing``) also
  hands on what it holds whenever it flushes (its workers end with ``os._exit``).
What C code or a child process writes to file descriptors 1 and 2 directly bypasses
this and is merged as it comes.
"""

from __future__ import annotations

import io
import os
import sys
import threading

TYPE_CHECKING = False  # (typing itself is not imported: this runs in every pipeline)
if TYPE_CHECKING:
    from collections.abc import Callable

LINE_LIMIT = 65536
TICK_S = 0.2


class _Sink:
    """Whole lines of both streams, in order, written to fd 1 in batches. Its one lock
    guards the streams' held lines too (reentrant: a signal handler may print while a
    write runs)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.parts: list[bytes] = []
        self.size = 0
        self.direct = False  # in a forked child and at exit: whole lines written at once
        self.exiting = False  # at exit: unfinished lines too

    def flush(self) -> None:
        with self.lock:
            self.write_out()

    def write_out(self) -> None:
        # taken in one step (no call in between: a signal handler that writes cannot run
        # there and take the same parts again)
        parts, self.parts, self.size = self.parts, [], 0
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        done = os.write(1, data)
        if done < len(data):  # (a signal, or a pipe that took part of it)
            view = memoryview(data)[done:]
            while view:
                view = view[os.write(1, view) :]


_HOLDING: list[_Held] = []  # the streams holding an unfinished line, the earliest first


class _Held:
    """One stream's unfinished line; whole lines go on to the sink."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self.parts: list[bytes] = []
        self.size = 0
        self.aged = False

    def take(self, data: bytes) -> None:
        sink = self.sink
        with sink.lock:
            cut = len(data) if sink.exiting else data.rfind(b"\n") + 1
            if cut:
                if self.parts:
                    self.parts.append(data[:cut])
                    self._release()
                else:
                    sink.parts.append(data if cut == len(data) else data[:cut])
                    sink.size += cut
            if cut < len(data):
                if not self.parts:
                    self.aged = False
                    _HOLDING.append(self)
                self.parts.append(data[cut:])
                self.size += len(data) - cut
                if self.size >= LINE_LIMIT:
                    self._release()
            if sink.size >= LINE_LIMIT or sink.direct:
                sink.write_out()

    def tick(self) -> None:
        """Hand on a line held since the previous tick."""
        with self.sink.lock:
            if self.parts and self.aged:
                self._release()
            self.aged = True

    def release(self) -> None:
        with self.sink.lock:
            self._release()
            self.sink.write_out()

    def forget(self) -> None:
        self.parts, self.size = [], 0

    def _release(self) -> None:
        parts, self.parts, self.size = self.parts, [], 0  # (in one step, as in write_out)
        if parts:
            data = b"".join(parts)
            self.sink.parts.append(data)
            self.sink.size += len(data)
            if self in _HOLDING:
                _HOLDING.remove(self)


class _Pipe:
    """What both streams answer about themselves: their usual descriptor, not a tty."""

    fd: int

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


class _StdoutRaw(_Pipe, io.RawIOBase):
    """The raw end of standard output's C ``BufferedWriter``: called once per buffer."""

    # the buffer asks its raw end whether it is closed at every write: a plain class
    # attribute answers several times faster than the inherited property (fd 1 is
    # never closed here)
    closed = False

    def __init__(self, held: _Held) -> None:
        self.held = held

    fd = 1

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.held.take(bytes(b))
        return len(b)

    def flush(self) -> None:
        self.held.sink.flush()


class _Stderr(_Pipe, io.BufferedIOBase):
    """Standard error's binary layer: hands on what standard output buffered, then its
    own bytes."""

    closed = False  # (asked at every write, as above)

    def __init__(self, held: _Held, stdout: _StdoutBuffer) -> None:
        self.held, self.stdout = held, stdout
        self.sink = held.sink
        self.hand_on = io.BufferedWriter.flush.__get__(stdout)  # into the sink, unwritten

    fd = 2

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        data = bytes(b)
        try:
            self.hand_on()
        except RuntimeError:  # a signal handler that logs, run in the middle of this
            pass  # very buffer's hand-on: its line goes first (CPython refuses reentry)
        sink, held = self.sink, self.held
        with sink.lock:  # the usual case (a log record): one whole line, nothing held
            if data[-1:] == b"\n" and not held.parts and not sink.direct:  # (batched)
                sink.parts.append(data)
                sink.size += len(data)
                if sink.size >= LINE_LIMIT:
                    sink.write_out()
                return len(data)
        held.take(data)
        return len(data)

    on_flush: Callable[[], None] | None = None  # (a forked child: release held lines)

    def flush(self) -> None:
        try:
            self.hand_on()
        except RuntimeError:  # (as in write)
            pass
        if self.on_flush is not None:
            self.on_flush()
        self.sink.flush()


class _StdoutBuffer(io.BufferedWriter):
    """Standard output's C buffer; a flush hands on what it holds and writes it out
    (the C buffer does not flush its raw end)."""

    sink: _Sink
    closed = False  # (asked at every write, as above)
    on_flush: Callable[[], None] | None = None  # (a forked child: release held lines)

    def flush(self) -> None:
        super().flush()
        if self.on_flush is not None:
            self.on_flush()
        self.sink.flush()


def install() -> None:
    """Replace ``sys.stdout`` and ``sys.stderr`` (both to fd 1) and start the ticker."""
    sink = _Sink()
    out_held, err_held = _Held(sink), _Held(sink)
    stdout = _StdoutBuffer(_StdoutRaw(out_held), LINE_LIMIT)  # type: ignore[arg-type]
    stdout.sink = sink
    stderr = _Stderr(err_held, stdout)

    def text(old: io.TextIOBase, binary: io.BufferedIOBase) -> io.TextIOWrapper:
        return io.TextIOWrapper(  # write-through: its own buffer is not thread-safe
            binary,  # type: ignore[arg-type]
            encoding="utf-8",
            errors=old.errors,
            write_through=True,
        )

    sys.stdout = text(sys.stdout, stdout)  # type: ignore[arg-type]
    sys.stderr = text(sys.stderr, stderr)  # type: ignore[arg-type]
    quit_ = threading.Event()

    # a fork waits for the ticker's round: a child never starts with standard output's
    # buffer locked by a thread it does not have (it would hang at its first print)
    fork_guard = threading.Lock()

    def tick() -> None:
        while not quit_.wait(TICK_S):
            with fork_guard:
                try:
                    stdout.flush()
                    for held in (out_held, err_held):
                        held.tick()
                    sink.flush()
                except Exception:  # (a full disk must not end the pipeline)
                    pass

    def start_ticker() -> None:
        ticker = threading.Thread(target=tick, name="fastflow-flush", daemon=True)
        ticker.start()
        tickers[:] = [ticker]

    def at_exit() -> None:
        quit_.set()
        for ticker in tickers:
            ticker.join()
        stdout.flush()
        sink.direct = sink.exiting = True
        release_all()

    def release_all() -> None:
        for held in list(_HOLDING):
            held.release()
        sink.flush()

    def in_forked_child() -> None:
        # the parent writes what it held and batched; this process writes whole lines
        # at once (a multiprocessing pool ends its workers with SIGTERM, some before they
        # flushed), gets its own ticker, and hands on its held lines at every flush (a
        # worker ends with os._exit right after flushing, before any tick)
        fork_guard.release()
        sink.lock = threading.RLock()
        sink.parts, sink.size, sink.direct = [], 0, True
        for held in (out_held, err_held):
            held.forget()
        _HOLDING.clear()
        stdout.on_flush = stderr.on_flush = release_all
        start_ticker()

    tickers: list[threading.Thread] = []
    start_ticker()
    import atexit

    atexit.register(at_exit)
    os.register_at_fork(
        before=fork_guard.acquire,
        after_in_parent=fork_guard.release,
        after_in_child=in_forked_child,
    )
