"""HTTP reverse proxy with fault injection, meant to sit between the app and the moto S3 server.

Rules are evaluated per request, in the order they were added.  Every matching rule uses up one
of its ``times`` (``None`` = until ``clear()``).  ``delay`` and ``corrupt_get`` rules modify the
request and evaluation goes on; the first matching ``fail`` or ``drop`` rule ends it.  Requests
that no terminal rule claims are forwarded upstream unchanged (same Host header, same signed
headers; only hop-by-hop headers are rewritten and chunked request bodies are de-chunked).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal, NamedTuple
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from tests.harness.ports import LOCALHOST

Matcher = Callable[[str, str], bool]
"""``match(method, path)`` -> True when a rule applies; ``path`` includes the query string."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_S3_CODES = {
    400: "BadRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    409: "Conflict",
    429: "SlowDown",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
_FLIP = bytes(i ^ 0xFF for i in range(256))
_NO_BODY_STATUSES = frozenset({204, 304})


def s3_error_body(status: int, code: str | None = None, message: str | None = None) -> bytes:
    """Return an S3-style XML error document for ``status``."""
    code = code or _S3_CODES.get(status, "InternalError")
    if message is None:
        try:
            message = f"Injected fault: {HTTPStatus(status).phrase}"
        except ValueError:
            message = "Injected fault"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        "<RequestId>faultproxy</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()


class ProxiedRequest(NamedTuple):
    """One request seen by the proxy; ``status`` is 0 when the connection was dropped."""

    method: str
    path: str
    status: int


@dataclass
class _Rule:
    kind: Literal[
        "fail",
        "delay",
        "delay_answer",
        "drop_answer",
        "drop",
        "corrupt",
        "corrupt_body",
        "opaque_etag",
        "no_metadata",
        "cut",
        "check_sha256",
        "swallow",
    ]
    times: int | None
    match: Matcher | None
    status: int = 0
    body: bytes = b""
    seconds: float = 0.0
    after_bytes: int = 0

    def applies(self, method: str, path: str) -> bool:
        if self.kind == "corrupt" and method != "GET":
            return False
        if self.kind == "corrupt_body" and method not in ("PUT", "POST"):
            return False
        if self.kind == "check_sha256" and method != "PUT":
            return False
        return self.match is None or self.match(method, path)


# rules that only mark a request for a change of its body or answer
_FLAGS = frozenset(
    {"corrupt", "corrupt_body", "opaque_etag", "no_metadata", "check_sha256", "drop_answer"}
)


@dataclass
class _Actions:
    """What the rules matching one request do to it."""

    delays: list[float] = field(default_factory=list)  # before it is forwarded
    late: list[float] = field(default_factory=list)  # after, before its answer
    flags: set[str] = field(default_factory=set)  # kinds in ``_FLAGS``
    cut: int | None = None
    terminal: _Rule | None = None  # answered or dropped instead of forwarded


class _Dropped(Exception):
    """The handler must abort the connection without a response."""


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet; ``FaultProxy.requests`` is the log."""

    def _handle(self) -> None:
        proxy = self.server
        method, path = self.command, self.path
        try:
            actions = proxy._take_actions(method, path)
            flags, cut, terminal = actions.flags, actions.cut, actions.terminal
            for seconds in actions.delays:
                if not proxy._pause(seconds):
                    raise _Dropped
            if terminal is not None and terminal.kind == "drop":
                self._read_body(limit=terminal.after_bytes)
                raise _Dropped
            body = self._read_body()
            if "corrupt_body" in flags and body:  # one byte in the middle, the length kept
                middle = len(body) // 2
                body = body[:middle] + bytes([body[middle] ^ 0x01]) + body[middle + 1 :]
            checked = "check_sha256" in flags
            if terminal is None and checked and not _matches_its_sha256(self.headers, body):
                terminal = _Rule("fail", 1, None, status=400, body=s3_error_body(400, "BadDigest"))
            if terminal is not None and terminal.kind == "swallow":
                # what a failing write-behind cache does: the right answer, nothing kept
                etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
                self._respond(200, "", [("ETag", f'"{etag}"')], b"")
                return
            if terminal is not None:
                xml = [("Content-Type", "application/xml")]
                self._respond(terminal.status, "", xml, terminal.body)
                return
            try:
                status, reason, headers, data = proxy._forward(
                    method, path, self._forward_headers(), body, self._has_body()
                )
            except OSError as exc:
                message = f"upstream unreachable: {exc}"
                xml = [("Content-Type", "application/xml")]
                self._respond(502, "", xml, s3_error_body(502, message=message))
                return
            for seconds in actions.late:  # forwarded (and stored): only the answer waits
                if not proxy._pause(seconds):
                    raise _Dropped
            if "drop_answer" in flags:  # forwarded (and stored), the answer lost
                raise _Dropped
            if "corrupt" in flags:
                data = data.translate(_FLIP)
            if "opaque_etag" in flags:
                headers = [(k, _opaque(v) if k.lower() == "etag" else v) for k, v in headers]
            if "no_metadata" in flags:
                headers = [(k, v) for k, v in headers if not k.lower().startswith("x-amz-meta-")]
            if cut is not None and len(data) > cut:
                self._respond(status, reason, headers, data, cut_after=cut)
                self._abort()
                return
            self._respond(status, reason, headers, data)
        except _Dropped:
            self.server._record(ProxiedRequest(method, path, 0))
            self._abort()
        except OSError:
            self.close_connection = True

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def _has_body(self) -> bool:
        return "Content-Length" in self.headers or "Transfer-Encoding" in self.headers

    def _read_body(self, limit: int | None = None) -> bytes:
        """Read the request body (de-chunked), stopping after ``limit`` bytes if given."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length = int(self.headers.get("Content-Length") or 0)
        if limit is not None:
            length = min(length, limit)
        data = self.rfile.read(length) if length > 0 else b""
        if len(data) < length:
            raise ConnectionError("client closed the connection mid-body")
        return data

    def _read_chunked(self, limit: int | None) -> bytes:
        parts: list[bytes] = []
        total = 0
        while limit is None or total < limit:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("client closed the connection mid-chunk")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # HTTP trailers are discarded
                break
            want = size if limit is None else min(size, limit - total)
            chunk = self.rfile.read(want)
            if len(chunk) < want:
                raise ConnectionError("client closed the connection mid-chunk")
            parts.append(chunk)
            total += len(chunk)
            if want == size:
                self.rfile.readline(3)  # CRLF after the chunk data
        return b"".join(parts)

    def _forward_headers(self) -> list[tuple[str, str]]:
        extra_hop = {
            token.strip().lower()
            for value in self.headers.get_all("Connection", [])
            for token in value.split(",")
        }
        skip = HOP_BY_HOP | extra_hop | {"content-length", "expect"}
        return [(k, v) for k, v in self.headers.items() if k.lower() not in skip]

    def _respond(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes,
        cut_after: int | None = None,
    ) -> None:
        """Send the response; with ``cut_after``, announce the whole body but send only
        that many bytes of it (the caller then resets the connection)."""
        # Record first, so the entry exists by the time the client sees the response.
        self.server._record(ProxiedRequest(self.command, self.path, status))
        self.send_response_only(status, reason or None)
        content_length: str | None = None
        for key, value in headers:
            lower = key.lower()
            if lower == "content-length":
                content_length = value
            elif lower not in HOP_BY_HOP:
                self.send_header(key, value)
        if self.command == "HEAD":
            # HEAD keeps the upstream Content-Length (the object's size) and sends no body.
            self.send_header("Content-Length", content_length or str(len(body)))
            body = b""
        elif status in _NO_BODY_STATUSES or 100 <= status < 200:
            body = b""
        else:
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if cut_after is not None:
            body = body[:cut_after]
        if body:
            self.wfile.write(body)
        self.wfile.flush()

    def _abort(self) -> None:
        """Close the client connection with a TCP RST and no response."""
        self.close_connection = True
        with suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with suppress(OSError):
            self.rfile.close()
        with suppress(OSError):
            self.connection.close()


class FaultProxy(ThreadingHTTPServer):
    """Fault-injecting HTTP/1.1 reverse proxy on 127.0.0.1, serving from construction on.

    ``stop()`` closes the listener and all client connections (new connections are refused);
    ``start()`` listens again on the same port.  All rule methods are thread-safe.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, upstream: str, port: int = 0, upstream_timeout: float = 60.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self._up_host: str = parts.hostname
        self._up_port: int = parts.port or 80
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._seen: list[ProxiedRequest] = []
        self._conns: set[socket.socket] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._serving = False
        super().__init__((LOCALHOST, port), _ProxyHandler)
        self.start()

    # ----------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        """The listening port (stable across stop/start)."""
        port: int = self.server_address[1]
        return port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` - point the S3 client's endpoint_url here."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the proxy accepts connections."""
        return self._serving

    def server_bind(self) -> None:
        """Bind without the reverse-DNS lookup ``HTTPServer.server_bind`` does."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = LOCALHOST
        self.server_port = self.port

    def start(self) -> FaultProxy:
        """Serve again (re-binding the same port after ``stop()``); no-op when running."""
        with self._lock:
            if self._serving:
                return self
            if self.socket.fileno() == -1:
                self.socket = socket.socket(self.address_family, self.socket_type)
                try:
                    self.server_bind()
                    self.server_activate()
                except BaseException:
                    self.socket.close()
                    raise
            self._thread = threading.Thread(
                target=self.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"FaultProxy:{self.port}",
                daemon=True,
            )
            self._thread.start()
            self._serving = True
        return self

    def stop(self) -> None:
        """Stop listening and cut every open client connection (clients get refused/reset)."""
        with self._lock:
            if not self._serving:
                return
            self._serving = False
            self._wake_sleepers()
            conns = list(self._conns)
        self.shutdown()
        self.server_close()
        for conn in conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def close(self) -> None:
        """Clear all rules and stop for good."""
        self.clear()
        self.stop()
        self.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        """Track the client connection so ``stop()`` can cut it."""
        if isinstance(request, socket.socket):
            with self._lock:
                self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        """Forget a finished client connection."""
        if isinstance(request, socket.socket):
            with self._lock:
                self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        """Ignore client disconnects; report anything else."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    # ----------------------------------------------------------------- fault API
    def fail(
        self,
        status: int,
        times: int | None = None,
        match: Matcher | None = None,
        body: str | None = None,
        code: str | None = None,
    ) -> None:
        """Answer matching requests with ``status`` and an S3 XML error, without forwarding.

        ``code`` overrides the S3 error code (e.g. ``"SlowDown"`` for 503); ``body`` replaces
        the whole response body.
        """
        payload = body.encode() if body is not None else s3_error_body(status, code)
        self._add(_Rule("fail", times, match, status=status, body=payload))

    def swallow(self, times: int | None = None, match: Matcher | None = None) -> None:
        """Answer matching requests 200 with the MD5 ETag of their body, without forwarding
        them: an upload acknowledged as stored, and lost."""
        self._add(_Rule("swallow", times, match))

    def delay(self, seconds: float, times: int | None = None, match: Matcher | None = None) -> None:
        """Wait ``seconds`` before handling matching requests (cut short by clear()/stop())."""
        self._add(_Rule("delay", times, match, seconds=seconds))

    def delay_answer(
        self, seconds: float, times: int | None = None, match: Matcher | None = None
    ) -> None:
        """Forward matching requests at once, then wait ``seconds`` before passing the
        answer on (cut short by clear()/stop()): a PUT stored long before the client
        hears of it."""
        self._add(_Rule("delay_answer", times, match, seconds=seconds))

    def drop_answer(self, times: int | None = None, match: Matcher | None = None) -> None:
        """Forward matching requests, then reset the connection instead of answering: a
        PUT stored whose client never hears of it."""
        self._add(_Rule("drop_answer", times, match))

    def drop(
        self, times: int | None = None, match: Matcher | None = None, after_bytes: int = 0
    ) -> None:
        """Read up to ``after_bytes`` of the body, then reset the connection with no response."""
        self._add(_Rule("drop", times, match, after_bytes=after_bytes))

    def corrupt_get(self, times: int | None = None, match: Matcher | None = None) -> None:
        """Forward GETs but invert every byte of the response body (Content-Length kept)."""
        self._add(_Rule("corrupt", times, match))

    def corrupt_body(self, times: int | None = None, match: Matcher | None = None) -> None:
        """Forward PUTs and POSTs with one byte of the request body changed (a bit flipped
        in the middle, Content-Length kept): what a faulty link or server would store."""
        self._add(_Rule("corrupt_body", times, match))

    def cut_response(
        self, after_bytes: int, times: int | None = None, match: Matcher | None = None
    ) -> None:
        """Forward requests, then send the response's headers (its whole Content-Length)
        and only ``after_bytes`` of its body before resetting the connection: a link or
        server that fails in the middle of a download."""
        self._add(_Rule("cut", times, match, after_bytes=after_bytes))

    def check_sha256(self, times: int | None = None, match: Matcher | None = None) -> None:
        """Refuse (400 BadDigest, not forwarded) a PUT whose body, as it arrived, does not
        match its ``x-amz-checksum-sha256`` header: what AWS S3 and MinIO do, and moto
        and s3rver do not."""
        self._add(_Rule("check_sha256", times, match))

    def opaque_etag(self, times: int | None = None, match: Matcher | None = None) -> None:
        """Forward requests but answer with an ETag that is not an MD5 of the object (as
        SSE-KMS objects, MinIO's encrypted ones and some gateways have)."""
        self._add(_Rule("opaque_etag", times, match))

    def hide_metadata(self, times: int | None = None, match: Matcher | None = None) -> None:
        """Forward requests but answer without the objects' user metadata
        (``x-amz-meta-*``): a server or gateway that does not keep it."""
        self._add(_Rule("no_metadata", times, match))

    def clear(self) -> None:
        """Remove all rules and wake requests currently held by ``delay``."""
        with self._lock:
            self._rules.clear()
            self._wake_sleepers()

    def clear_requests(self) -> None:
        """Forget the request log."""
        with self._lock:
            self._seen.clear()

    @property
    def requests(self) -> list[ProxiedRequest]:
        """Snapshot of ``(method, path, status)`` for every request handled so far."""
        with self._lock:
            return list(self._seen)

    def seen(self, method: str, within: str = "") -> list[ProxiedRequest]:
        """The requests handled so far with ``method`` whose path contains ``within``."""
        return [r for r in self.requests if r.method == method and within in r.path]

    # ----------------------------------------------------------------- internals
    def _add(self, rule: _Rule) -> None:
        if rule.times is not None and rule.times <= 0:
            raise ValueError("times must be positive or None")
        with self._lock:
            self._rules.append(rule)

    def _wake_sleepers(self) -> None:
        """Caller holds ``_lock``."""
        self._wake.set()
        self._wake = threading.Event()

    def _take_actions(self, method: str, path: str) -> _Actions:
        actions = _Actions()
        with self._lock:
            for rule in list(self._rules):
                if not rule.applies(method, path):
                    continue
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times == 0:
                        self._rules.remove(rule)
                if rule.kind == "delay":
                    actions.delays.append(rule.seconds)
                elif rule.kind == "delay_answer":
                    actions.late.append(rule.seconds)
                elif rule.kind == "cut":
                    actions.cut = rule.after_bytes
                elif rule.kind in _FLAGS:
                    actions.flags.add(rule.kind)
                else:
                    actions.terminal = rule
                    break
        return actions

    def _pause(self, seconds: float) -> bool:
        """Sleep interruptibly; return False if the proxy was stopped meanwhile."""
        with self._lock:
            wake = self._wake
        wake.wait(seconds)
        return self._serving

    def _record(self, entry: ProxiedRequest) -> None:
        with self._lock:
            self._seen.append(entry)

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes, has_body: bool
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(
            self._up_host, self._up_port, timeout=self.upstream_timeout
        )
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for key, value in headers:
                conn.putheader(key, value)
            if has_body or body:
                conn.putheader("Content-Length", str(len(body)))
            conn.putheader("Connection", "close")
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()


def _matches_its_sha256(headers: Message, body: bytes) -> bool:
    """Whether ``body`` matches the request's ``x-amz-checksum-sha256`` (or has none)."""
    sent = headers.get("x-amz-checksum-sha256")
    return sent is None or sent == base64.b64encode(hashlib.sha256(body).digest()).decode()


def _opaque(etag: str) -> str:
    """An ETag that is no MD5 (nor MD5-N) but still differs per object."""
    return '"' + hashlib.sha256(etag.encode()).hexdigest() + '"'


def method_is(*methods: str) -> Matcher:
    """Matcher for the given HTTP methods, e.g. ``proxy.fail(500, match=method_is("PUT"))``."""
    wanted = {m.upper() for m in methods}
    return lambda method, _path: method.upper() in wanted
