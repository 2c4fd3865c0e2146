"""Run a cleanup pass in a child process for the server:
``python -m fastflow.lifecycle.child --trigger X``.

The pass hashes, uploads and deletes with several threads; inside the server process it
would compete with every API request for Python's GIL. In a child process it has its own
interpreter, the API stays responsive, and a crash of the pass cannot take the server
down. The child gets exactly the effective settings of the server (``settings_env``) and
does not notify: the server sends the notifications itself.

The child lowers its CPU priority (``PASS_NICE``) before it starts. It prints the pass
summary as one JSON object on stdout and exits with a code of
``fastflow.exit_codes``: OK; FAILED when backups failed or on another error; CONFIG for
invalid configuration; BUSY when another pass runs. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from pydantic import SecretStr

from fastflow import exit_codes
from fastflow.config import Settings, load_settings
from fastflow.context import Context, bootstrap
from fastflow.db import cache as readcache
from fastflow.errors import ConfigError, PassAlreadyRunning
from fastflow.lifecycle.cleanup import Failure, PassSummary, record_crashed_pass, run_pass
from fastflow.security import redact

ENTRY_POINT = "fastflow.lifecycle.child"
# the pass is background work: at this CPU priority, API requests and the server's runs
# get the processors first (2 cores, 100 clients polling during a 2,000-run pass, A/B:
# p99 226 and 138 ms at nice 0, 100 and 113 ms at nice 10; see docs/performance.md)
PASS_NICE = 10


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
        elif name == "fastflow_umask":
            value = f"{value:03o}"  # read back as octal
        elif value == "" and name == "s3_prefix":
            value = "/"  # an empty variable counts as unset; "/" is the empty prefix
        env[key] = str(value)
    return env


def run_pass_in_child(ctx: Context, trigger: str, timeout: float | None = None) -> PassSummary:
    """Run one pass in a child process; raise like ``cleanup.run_pass`` would. A child
    that ends without a summary (killed, crashed before its pass row) is recorded as a
    crashed pass (``cleanup.record_crashed_pass``) and its summary returned with ``error``.

    This process's read cache is dropped once the child has ended, whatever the outcome:
    the pass changed runs and failures behind the cache's back."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", ENTRY_POINT, "--trigger", trigger],
            env=settings_env(ctx.settings),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    finally:
        readcache.invalidate()
    if proc.returncode == exit_codes.BUSY:
        raise PassAlreadyRunning("another cleanup pass is running")
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        detail = (proc.stderr.strip().splitlines() or [_no_output(proc.returncode)])[-1]
        detail = detail.removeprefix("fastflow: ")
        if proc.returncode == exit_codes.CONFIG:
            raise ConfigError(detail) from None
        if not detail.startswith("the cleanup pass failed"):
            detail = f"the cleanup pass failed: {detail}"
        # recorded and returned like a pass that crashed inside: the caller notifies
        return record_crashed_pass(ctx, trigger, redact(detail, ctx.settings))
    data["failures"] = [Failure(**f) for f in data.get("failures", [])]
    data.setdefault("plan", [])
    return PassSummary(**data)


def _no_output(returncode: int) -> str:
    if returncode < 0:
        return f"its process was killed by signal {-returncode}"
    return f"its process exited with status {returncode} and no summary"


def main(argv: list[str] | None = None) -> int:
    """The child: bootstrap like ``fastflow cleanup``, run one pass without notifying,
    print its summary; return the exit code."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {ENTRY_POINT}",
        description="Run one cleanup pass for the server; print its summary as JSON.",
    )
    parser.add_argument("--trigger", required=True, help="Recorded with the pass.")
    trigger: str = parser.parse_args(argv).trigger
    try:
        os.nice(PASS_NICE)
    except OSError:
        pass  # not permitted here: the pass runs at normal priority
    try:
        # (recover=False: the server that started this child retires the runs of dead
        # processes itself, and follows them up — retries, triggers — which a pass cannot)
        summary = run_pass(bootstrap(load_settings(), recover=False), trigger)
    except PassAlreadyRunning as e:
        return _fail(f"{e}; try again when it has finished", exit_codes.BUSY)
    except Exception as e:
        known = exit_codes.for_error(e)
        if known is None:
            first = (str(e).strip().splitlines() or [""])[0]
            detail = f"{type(e).__name__}: {first}" if first else type(e).__name__
            return _fail(f"the cleanup pass failed: {detail}", exit_codes.FAILED)
        return _fail(known[1], known[0])
    data = summary.to_dict()
    data.pop("plan")
    print(json.dumps(data, ensure_ascii=False), flush=True)
    if summary.config_error:
        return _fail(summary.config_error, exit_codes.CONFIG)
    return exit_codes.FAILED if summary.backup_failures else exit_codes.OK


def _fail(message: str, code: int) -> int:
    print(f"fastflow: {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
