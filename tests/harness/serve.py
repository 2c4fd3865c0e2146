"""Start a real `fastflow serve` subprocess on a free port and wait until it answers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import httpx

from tests.harness.ports import free_port


@contextmanager
def fastflow_serve(
    env: dict[str, str],
    *,
    stderr: IO[Any] | int = subprocess.DEVNULL,
    stdout: IO[Any] | int = subprocess.DEVNULL,
    timeout: float = 60,
) -> Iterator[str]:
    """Yield the base URL of a running server; terminate it afterwards. uvicorn writes
    its access lines to stdout, its other lines to stderr."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastflow", "serve", "--port", str(port)],
        env=env,
        stdout=stdout,
        stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"fastflow serve exited with status {proc.returncode}")
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"fastflow serve did not answer within {timeout} s")
            pause.wait(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
