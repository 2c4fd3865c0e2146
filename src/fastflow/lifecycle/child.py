"""Run a cleanup pass in a child process (`fastflow cleanup --json`) for the server.

The pass hashes, uploads and deletes with several threads; inside the server process it
would compete with every API request for Python's GIL. In a child process it has its own
interpreter, the API stays responsive, and a crash of the pass cannot take the server
down. The child gets exactly the effective settings of the server; the server sends the
notifications itself (the child is told not to).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from pydantic import SecretStr

from fastflow.config import Settings
from fastflow.context import Context
from fastflow.errors import ConfigError, FastflowError, PassAlreadyRunning
from fastflow.lifecycle.cleanup import Failure, PassSummary

EXIT_BUSY = 3


def settings_env(settings: Settings) -> dict[str, str]:
    """The process environment that reproduces ``settings`` in a child process."""
    env = dict(os.environ)
    for name in Settings.model_fields:
        key = name.upper()
        value: Any = getattr(settings, name)
        env.pop(key, None)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list):
            value = ",".join(value)
        elif value == "" and name == "s3_prefix":
            value = "/"  # an empty variable counts as unset; "/" is the empty prefix
        env[key] = str(value)
    return env


def run_pass_in_child(ctx: Context, trigger: str, timeout: float | None = None) -> PassSummary:
    """Run one pass in a child process; raise like ``cleanup.run_pass`` would."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastflow",
            "cleanup",
            "--json",
            "--trigger",
            trigger,
            "--no-notify",
        ],
        env=settings_env(ctx.settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode == EXIT_BUSY:
        raise PassAlreadyRunning("another cleanup pass is running")
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        detail = detail.removeprefix("fastflow: ")
        if proc.returncode == 2:
            raise ConfigError(detail) from None
        raise FastflowError(f"the cleanup pass failed: {detail}") from None
    data["failures"] = [Failure(**f) for f in data.get("failures", [])]
    data.setdefault("plan", [])
    return PassSummary(**data)
