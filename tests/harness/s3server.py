"""A real moto S3 server running as a subprocess on 127.0.0.1 (restartable on the same port)."""

from __future__ import annotations

import atexit
import http.client
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType

from tests.harness.ports import LOCALHOST, free_port

ACCESS_KEY = "testing"
SECRET_KEY = "testing-secret"
REGION = "us-east-1"

# The child runs moto's own CLI entry point, plus a watchdog thread that exits as soon as its
# stdin reaches EOF, i.e. when the parent (pytest) dies without running any cleanup at all.
_CHILD_CODE = (
    "import os, sys, threading\n"
    "def _watch():\n"
    "    sys.stdin.buffer.read()\n"
    "    os._exit(0)\n"
    "threading.Thread(target=_watch, daemon=True).start()\n"
    "from moto.server import main\n"
    "main(sys.argv[1:])\n"
)

_LIVE: weakref.WeakSet[MotoS3Server] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.close()


class MotoS3Server:
    """moto's standalone server (``python -m moto.server``) in a subprocess, started on creation.

    ``stop()`` kills the process (clients see connection refused); ``start()`` launches it again on
    the same port, so clients configured with ``url`` simply reconnect.  moto keeps its state in
    memory, so a restart starts with no buckets.  The process is killed by ``close()``, at
    interpreter exit, and - via a stdin watchdog - even if the parent process is SIGKILLed.
    """

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    region = REGION

    def __init__(
        self, port: int | None = None, startup_timeout: float = 30.0, autostart: bool = True
    ) -> None:
        self.port: int = port or free_port()
        self.host = LOCALHOST
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        fd, log_name = tempfile.mkstemp(prefix="moto-server-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        if autostart:
            self.start()

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the subprocess is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> MotoS3Server:
        """Start the subprocess (no-op if running) and wait until it answers HTTP."""
        if self.running:
            return self
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE, "-H", self.host, "-p", str(self.port)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"moto server exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
                try:
                    conn.request("GET", "/moto-api/data.json")
                    if conn.getresponse().status == 200:
                        return
                finally:
                    conn.close()
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"moto server not ready after {self.startup_timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def reset(self) -> None:
        """Drop all moto state (buckets, objects) via ``POST /moto-api/reset``."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def stop(self) -> None:
        """Kill the subprocess; the port is then refused until ``start()``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # Closing stdin makes the child's watchdog call os._exit(); SIGKILL is the fallback.
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def close(self) -> None:
        """Stop for good and remove the log file."""
        self.stop()
        _LIVE.discard(self)
        self.log_path.unlink(missing_ok=True)

    def log_tail(self, chars: int = 4000) -> str:
        """Last ``chars`` characters of the server's combined stdout/stderr."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> MotoS3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
