"""Issue 14's goals as data: each benchmark returns ``"goals"``, a list of ``goal(...)``
entries (a ratio per interleaved round, its median, spread and verdict); ``run_all``
prints them as one table with PASS/FAIL. Nothing here is asserted in tests."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


def goal(name: str, values: list[float], op: str, target: float, unit: str = "x") -> dict[str, Any]:
    """One goal: ``values`` (one per round) compared by their median with ``op`` ("<=",
    "<" or ">=") against ``target``."""
    if op not in ("<=", ">=", "<"):
        raise ValueError(f"op must be '<=', '<' or '>=', not {op!r}")
    if not values:
        return {"name": name, "op": op, "target": target, "unit": unit, "verdict": "NO DATA"}
    med = statistics.median(values)
    ok = {"<=": med <= target, "<": med < target, ">=": med >= target}[op]
    return {
        "name": name,
        "values": values,
        "median": med,
        "min": min(values),
        "max": max(values),
        "op": op,
        "target": target,
        "unit": unit,
        "verdict": "PASS" if ok else "FAIL",
    }


def spread(xs: list[float], fmt: str = ".2f") -> str:
    """``median [min-max]`` of ``xs``, each formatted with ``fmt``."""
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}-{max(xs):{fmt}}]"


def ratios(a: list[float], b: list[float]) -> list[float]:
    """Per-round ratios a/b (rounds are interleaved, so each pair shared the machine)."""
    return [x / y for x, y in zip(a, b, strict=True) if y]


def row(g: dict[str, Any]) -> str:
    """A Markdown table row: goal | median [min-max] | target | verdict."""
    unit = g["unit"]
    fmt = ".2f" if unit == "x" else ".0f" if unit in ("ms", "MiB") else ".2f"
    suffix = "" if unit == "x" else f" {unit}"
    target = f"{g['op']} {g['target']:g}{'x' if unit == 'x' else suffix}"
    if "median" not in g:
        return f"| {g['name']} | - | {target} | {g['verdict']} |"
    spread = f"{g['median']:{fmt}} [{g['min']:{fmt}}-{g['max']:{fmt}}]{suffix}"
    return f"| {g['name']} | {spread} | {target} | **{g['verdict']}** |"


def table(goals: list[dict[str, Any]]) -> str:
    out = ["| goal (issue 14) | median [min-max] | target | verdict |", "|---|---|---|---|"]
    out += [row(g) for g in goals]
    return "\n".join(out)


def instance_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a throwaway fastflow instance under ``root`` (SQLite), with
    ``extra`` over it."""
    return {
        **os.environ,
        "DATA_DIR": str(root / "data"),
        "LOGS_DIR": str(root / "logs"),
        "PIPELINES_DIR": str(root / "pipelines"),
        "DATABASE_URL": f"sqlite:///{root / 'data' / 'fastflow.db'}",
        **extra,
    }


def viewer_token(env: dict[str, str], cwd: Path | None = None) -> str:
    """A new API token with the viewer role, made by the CLI."""
    create = ("token", "create", "--name", "bench", "--role", "viewer")
    return subprocess.run(
        [sys.executable, "-m", "fastflow", *create],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
    ).stdout.strip()
