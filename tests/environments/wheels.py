"""Tiny hand-written wheels, so that environment builds need no package index: serve a
folder of them with ``UV_FIND_LINKS=<folder>`` and ``UV_OFFLINE=1``."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

PACKAGE = "ffdemo"


def write_wheel(folder: Path, name: str, version: str) -> Path:
    """``<name>-<version>-py3-none-any.whl`` in ``folder``: a package ``<name>`` whose
    ``VERSION`` is ``version``, with ``METADATA``, ``WHEEL`` and ``RECORD``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'VERSION = "{version}"\n',
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: fastflow-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        data = text.encode()
        sha = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={sha},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return out


def write_demo_wheels(folder: Path) -> Path:
    """Versions 1.0 and 2.0 of ``ffdemo`` in ``folder``; returns ``folder``."""
    for version in ("1.0", "2.0"):
        write_wheel(folder, PACKAGE, version)
    return folder
