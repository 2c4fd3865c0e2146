"""Real small file systems for full-disk tests: a tmpfs mounted for the test (root
only; required in CI) and a filler that leaves a chosen number of bytes free."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@contextmanager
def mounted(mount_point: Path, size: str) -> Iterator[Path]:
    """``mount_point`` (made if needed) as a tmpfs of ``size`` (``"8m"``), unmounted
    (lazily) afterwards."""
    mount_point.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        _unavailable("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        _unavailable(f"cannot mount a tmpfs: {res.stderr.strip() or res.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` up to ``leave`` free bytes (a filler file)."""
    filler = folder / "filler.bin"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - max(0, leave - free)))
    return filler
