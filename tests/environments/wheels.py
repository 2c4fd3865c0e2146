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


# A PEP 517 backend of its own (``backend-path``), so that a source package builds with no
# index: ``PRELUDE`` (code run inside ``build_wheel``) sets ``INIT``, the text of the
# package's ``__init__.py``. The backend runs in uv's build, as the build's user.
_BACKEND = """
import base64, hashlib, os, zipfile

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
{prelude}
    dist = "{name}-1.0.dist-info"
    files = {{
        "{name}/__init__.py": INIT,
        dist + "/METADATA": "Metadata-Version: 2.1\\nName: {name}\\nVersion: 1.0\\n",
        dist + "/WHEEL": "Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\n"
        "Tag: py3-none-any\\n",
    }}
    record = []
    for path, text in files.items():
        sha = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append("%s,sha256=%s,%d" % (path, sha.decode(), len(text.encode())))
    files[dist + "/RECORD"] = "\\n".join(record + [dist + "/RECORD,,"]) + "\\n"
    wheel = "{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel
"""


def write_source_package(folder: Path, name: str, prelude: str) -> Path:
    """A source package ``name`` in ``folder`` (created, world-readable) built by its own
    backend: ``prelude`` is the body of ``build_wheel`` (indented four spaces) up to the
    point where it has set ``INIT``."""
    folder.mkdir(mode=0o755, parents=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        f'\n[project]\nname = "{name}"\nversion = "1.0"\n'
    )
    (folder / "backend.py").write_text(_BACKEND.format(name=name, prelude=prelude))
    for path in (folder, folder / "pyproject.toml", folder / "backend.py"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder
