"""A raw TCP server on 127.0.0.1 whose connections are each handled by a function in a
thread of their own: for servers that misbehave at the byte level (answers dripped a
byte at a time, endless bodies, late confirmations). ``close`` stops it and ends every
connection."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from tests.harness.ports import LOCALHOST

Handler = Callable[[socket.socket, threading.Event], None]


class RawServer:
    """Accepts connections and runs ``handler(conn, stopped)`` for each; a handler
    should return once ``stopped`` is set (``close`` sets it)."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.stopped = threading.Event()
        self.connections = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._sock = socket.create_server((LOCALHOST, 0))
        self.port = self._sock.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self._handler(conn, self.stopped)

    def close(self) -> None:
        self.stopped.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
        for t in self._threads:
            t.join(timeout=10)

    def __enter__(self) -> RawServer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def drip(
    conn: socket.socket, head: bytes, loop: bytes, every: float, stopped: threading.Event
) -> None:
    """Send ``head`` at once, then the bytes of ``loop`` one per ``every`` seconds, over
    and over, until ``stopped``: an answer that never ends, though every read gets a
    byte well within any read timeout."""
    conn.sendall(head)
    pos = 0
    while not stopped.wait(every):
        conn.sendall(loop[pos % len(loop) : pos % len(loop) + 1])
        pos += 1


def read_until(conn: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    """Bytes read from ``conn`` up to and including ``marker`` (or what came before EOF)."""
    got = b""
    while marker not in got and len(got) < limit:
        chunk = conn.recv(65536)
        if not chunk:
            break
        got += chunk
    return got
