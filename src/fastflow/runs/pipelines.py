"""Pipeline discovery, name validation and ``pipeline.json``.

A pipeline is a folder ``PIPELINES_DIR/<name>/`` containing ``main.py``. Names are used
as folder names under LOGS_DIR and as S3 key segments, so they are validated strictly:
Unicode letters, digits, spaces, ``-``, ``_`` and ``.``; no leading dot, at most 100
characters.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastflow.errors import InvalidPipelineConfig, InvalidPipelineName, PipelineNotFound

MAX_NAME_LENGTH = 100
_ALLOWED_PUNCT = frozenset(" -_.")


def validate_name(name: str) -> str:
    """Return ``name`` unchanged if it is a valid pipeline name, else raise."""
    shown = ascii(name) if len(name) <= 120 else ascii(name[:117]) + "..."
    if not name:
        raise InvalidPipelineName("pipeline name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidPipelineName(
            f"pipeline name {shown} is longer than {MAX_NAME_LENGTH} characters"
        )
    if "/" in name or "\\" in name:
        raise InvalidPipelineName(f"pipeline name {shown} must not contain '/' or '\\'")
    if name.startswith("."):
        raise InvalidPipelineName(f"pipeline name {shown} must not start with '.'")
    if name != name.strip():
        raise InvalidPipelineName(f"pipeline name {shown} must not start or end with whitespace")
    for ch in name:
        if unicodedata.category(ch).startswith("C"):
            raise InvalidPipelineName(
                f"pipeline name {shown} contains a control character (U+{ord(ch):04X})"
            )
        if not (ch.isalnum() or ch in _ALLOWED_PUNCT):
            raise InvalidPipelineName(
                f"pipeline name {shown} contains {ch!r}; allowed are letters, digits, "
                "spaces, '-', '_' and '.'"
            )
    return name


@dataclass(frozen=True)
class Retention:
    """Per-pipeline overrides of the global retention settings (None = use global)."""

    runs: int | None = None
    days: int | None = None
    max_size_mb: int | None = None


@dataclass(frozen=True)
class Pipeline:
    name: str
    path: Path
    description: str = ""
    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    retention: Retention = field(default_factory=Retention)

    @property
    def main(self) -> Path:
        return self.path / "main.py"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "timeout": self.timeout,
            "retention": {
                "runs": self.retention.runs,
                "days": self.retention.days,
                "max_size_mb": self.retention.max_size_mb,
            },
        }


def _int_or_none(raw: Any, what: str, where: Path, *, minimum: int) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
        raise InvalidPipelineConfig(f"{where}: {what} must be an integer >= {minimum}")
    return raw


def _read_config(path: Path) -> dict[str, Any]:
    cfg_file = path / "pipeline.json"
    if not cfg_file.exists():
        return {}
    try:
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidPipelineConfig(f"{cfg_file}: cannot read pipeline.json: {e}") from e
    if not isinstance(data, dict):
        raise InvalidPipelineConfig(f"{cfg_file}: pipeline.json must hold a JSON object")
    return data


def load(pipelines_dir: Path, name: str) -> Pipeline:
    """Load one pipeline by name; raise if the name is invalid or it does not exist."""
    validate_name(name)
    path = pipelines_dir / name
    if not (path / "main.py").is_file():
        raise PipelineNotFound(
            f"pipeline {name!r} not found: no {path / 'main.py'}",
            hint="run 'fastflow pipelines' to list the available ones",
        )
    data = _read_config(path)
    cfg_file = path / "pipeline.json"
    timeout = data.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise InvalidPipelineConfig(f"{cfg_file}: timeout must be a positive number of seconds")
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise InvalidPipelineConfig(f"{cfg_file}: env must be an object of strings")
    ret = data.get("retention", {})
    if not isinstance(ret, dict):
        raise InvalidPipelineConfig(f"{cfg_file}: retention must be an object")
    retention = Retention(
        runs=_int_or_none(ret.get("runs"), "retention.runs", cfg_file, minimum=0),
        days=_int_or_none(ret.get("days"), "retention.days", cfg_file, minimum=0),
        max_size_mb=_int_or_none(
            ret.get("max_size_mb"), "retention.max_size_mb", cfg_file, minimum=1
        ),
    )
    description = data.get("description", "")
    return Pipeline(
        name=name,
        path=path,
        description=description if isinstance(description, str) else str(description),
        timeout=float(timeout) if timeout is not None else None,
        env={k: str(v) for k, v in env.items()},
        retention=retention,
    )


def discover(pipelines_dir: Path) -> list[Pipeline]:
    """All valid pipelines under ``pipelines_dir``, sorted by name.

    Folders with invalid names or unreadable ``pipeline.json`` are skipped here; loading
    them by name reports the reason.
    """
    if not pipelines_dir.is_dir():
        return []
    found: list[Pipeline] = []
    for child in sorted(pipelines_dir.iterdir(), key=lambda p: p.name):
        if not (child / "main.py").is_file():
            continue
        try:
            found.append(load(pipelines_dir, child.name))
        except (InvalidPipelineName, InvalidPipelineConfig):
            continue
    return found
