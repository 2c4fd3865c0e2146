"""``s3rver`` (npm), a second S3 implementation, in a subprocess on 127.0.0.1.

The benchmarks run against it besides moto so that no figure depends on one server's
quirks: s3rver keeps objects on disk and answers faster than moto, but ignores the
SHA-256 a client sends (fastflow's HEAD-verification still compares size and hash).
The npm package is installed once into ``~/.cache/fastflow-bench/s3rver`` (npm registry;
``S3RVER_DIR`` overrides the place); the server's data lives in a temporary folder that
``close()`` removes.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.harness.ports import LOCALHOST, free_port

VERSION = "3.7.1"
CACHE = Path(os.environ.get("S3RVER_DIR", Path.home() / ".cache" / "fastflow-bench" / "s3rver"))


def install() -> Path:
    """The s3rver executable, installed with npm when missing (idempotent)."""
    binary = CACHE / "node_modules" / ".bin" / "s3rver"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: s3rver (the second S3 server) needs Node.js")
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", f"s3rver@{VERSION}"],
        cwd=CACHE,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return binary


class S3rverServer:
    """Like ``MotoS3Server``: ``url``, credentials, ``start``/``stop``/``close``."""

    access_key = "S3RVER"
    secret_key = "S3RVER"
    region = "us-east-1"

    def __init__(self, port: int | None = None, startup_timeout: float = 30.0) -> None:
        self.port = port or free_port()
        self.host = LOCALHOST
        self.startup_timeout = startup_timeout
        self.data = Path(tempfile.mkdtemp(prefix="s3rver-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> S3rverServer:
        if self._proc is not None and self._proc.poll() is None:
            return self
        binary = install()
        self._proc = subprocess.Popen(
            [str(binary), "-d", str(self.data), "-a", self.host, "-p", str(self.port), "--silent"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"s3rver exited with {self._proc.returncode}")
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
                try:
                    conn.request("GET", "/")
                    conn.getresponse().read()
                    return self
                finally:
                    conn.close()
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self.stop()
                raise TimeoutError(f"s3rver not ready after {self.startup_timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)

    def __enter__(self) -> S3rverServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
