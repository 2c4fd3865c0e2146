"""A local stand-in for a Microsoft Teams incoming webhook that records POSTed JSON."""

from __future__ import annotations

import json
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

from tests.harness.ports import LOCALHOST

DEFAULT_PATH = "/webhook/abc/SECRET-TOKEN"


@dataclass
class TeamsPost:
    """One POST received; ``headers`` keys are lower-case, ``json`` is None if unparsable."""

    path: str
    headers: dict[str, str]
    body: bytes
    json: Any


@dataclass
class _Mode:
    kind: Literal["respond", "hang"]
    times: int | None
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TeamsEndpoint

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet; ``TeamsEndpoint.posts`` is the log."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        mode = self.server._record_and_take(TeamsPost(self.path, headers, body, parsed))
        if mode is not None and mode.kind == "hang":
            self.server._hold()
            mode = None
        if mode is None:
            self._send(200, (("Content-Type", "text/plain"),), b"1")
        else:
            self._send(mode.status, mode.headers, mode.body)

    def do_GET(self) -> None:
        self._send(405, (("Allow", "POST"),), b"")

    def _send(self, status: int, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        try:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True


class TeamsEndpoint(ThreadingHTTPServer):
    """Webhook receiver on 127.0.0.1, serving from construction on.

    Default answer: ``200`` with body ``"1"`` (legacy Teams connector behaviour).  ``respond``
    and ``hang`` queue modes that are used in order, each for ``times`` requests.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, path: str = DEFAULT_PATH, port: int = 0) -> None:
        self.path = path if path.startswith("/") else f"/{path}"
        self._cond = threading.Condition()
        self._posts: list[TeamsPost] = []
        self._modes: list[_Mode] = []
        self._release = threading.Event()
        self._closed = False
        super().__init__((LOCALHOST, port), _Handler)
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"TeamsEndpoint:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def server_bind(self) -> None:
        """Bind without the reverse-DNS lookup ``HTTPServer.server_bind`` does."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = LOCALHOST
        self.server_port = self.port

    @property
    def port(self) -> int:
        """The listening port."""
        port: int = self.server_address[1]
        return port

    @property
    def url(self) -> str:
        """Full webhook URL, e.g. ``http://127.0.0.1:PORT/webhook/abc/SECRET-TOKEN``."""
        return f"http://{LOCALHOST}:{self.port}{self.path}"

    def respond(
        self,
        status: int,
        times: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: str = "",
    ) -> None:
        """Answer the next ``times`` POSTs (None = all) with ``status``, ``headers`` and ``body``.

        Example: ``respond(429, times=1, headers={"Retry-After": "1"})``.
        """
        items = tuple((headers or {}).items())
        self._add(_Mode("respond", times, status=status, headers=items, body=body.encode()))

    def hang(self, times: int | None = None) -> None:
        """Hold the next ``times`` POSTs (None = all) until ``release()`` or ``close()``."""
        self._add(_Mode("hang", times))

    def release(self) -> None:
        """Let every currently held request finish (with the default 200 answer)."""
        with self._cond:
            self._release.set()
            self._release = threading.Event()

    def clear(self) -> None:
        """Drop queued modes, release held requests and forget recorded posts."""
        with self._cond:
            self._modes.clear()
            self._posts.clear()
        self.release()

    @property
    def posts(self) -> list[TeamsPost]:
        """Snapshot of all POSTs received so far (held ones included)."""
        with self._cond:
            return list(self._posts)

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[TeamsPost]:
        """Block until at least ``count`` POSTs arrived; raise ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._posts) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"expected {count} POST(s), got {len(self._posts)} in {timeout}s"
                    )
                self._cond.wait(remaining)
            return list(self._posts)

    def close(self) -> None:
        """Release held requests and stop listening."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._modes.clear()
        self.release()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> TeamsEndpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        """Ignore client disconnects; report anything else."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def _add(self, mode: _Mode) -> None:
        if mode.times is not None and mode.times <= 0:
            raise ValueError("times must be positive or None")
        with self._cond:
            self._modes.append(mode)

    def _record_and_take(self, post: TeamsPost) -> _Mode | None:
        with self._cond:
            self._posts.append(post)
            self._cond.notify_all()
            if not self._modes:
                return None
            mode = self._modes[0]
            if mode.times is not None:
                mode.times -= 1
                if mode.times == 0:
                    self._modes.pop(0)
            return mode

    def _hold(self) -> None:
        with self._cond:
            release = self._release
            closed = self._closed
        if not closed:
            release.wait()
