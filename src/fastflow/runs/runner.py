"""Execute one pipeline run: subprocess, log capture, metrics, final status.

Guarantees: the run's row reaches a final status (SUCCESS, FAILED, TIMEOUT, CANCELLED)
whatever the pipeline does; on timeout or cancel the whole process tree is killed; output
is captured line by line with bounded memory (see ``logcapture``) and fsynced at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from fastflow.config import Settings
from fastflow.db.engine import Database
from fastflow.db.models import RunStatus
from fastflow.runs import files as logfiles
from fastflow.runs import pipelines
from fastflow.runs import store as runs
from fastflow.runs.capture import LogCapture
from fastflow.runs.pump import Outcome, Pump
from fastflow.runs.sampler import TreeSampler

SETTINGS_VARS = frozenset(name.upper() for name in Settings.model_fields)

# stdout and stderr share one pipe and one locked BufferedWriter inside the pipeline; the
# text layers write through to it. So the log keeps the exact order in which the pipeline
# wrote, a line written with one write() is never split or mixed (TextIOWrapper's own
# pending buffer is not thread-safe on Python 3.11, hence write-through), and output is
# block-buffered for speed. A daemon thread flushes every 0.2 s so output shows up live.
_BOOTSTRAP = (
    "import io, os, runpy, sys, threading\n"
    # die with the supervisor: a killed `fastflow run` never leaves the pipeline running
    # unsupervised (prctl(PR_SET_PDEATHSIG, SIGKILL); then close the race with its death)
    "if sys.platform.startswith('linux'):\n"
    "    import ctypes\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(137)\n"
    "del sys.argv[1]\n"
    "_buf = io.BufferedWriter(io.FileIO(1, 'w', closefd=False), 65536)\n"
    "def _text(old):\n"
    "    return io.TextIOWrapper(_buf, encoding='utf-8', errors=old.errors,\n"
    "                            write_through=True)\n"
    "sys.stdout, sys.stderr = _text(sys.stdout), _text(sys.stderr)\n"
    "def _flush_now_and_then():\n"
    "    tick = threading.Event()\n"
    "    while not tick.wait(0.2):\n"
    "        try:\n"
    "            _buf.flush()\n"
    "        except Exception:\n"
    "            pass\n"
    "threading.Thread(target=_flush_now_and_then, name='fastflow-flush', daemon=True).start()\n"
    "sys.argv = sys.argv[1:]\n"
    "sys.path[0] = __import__('os').path.dirname(sys.argv[0])\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


@dataclass(frozen=True)
class RunResult:
    run_id: uuid.UUID
    pipeline_name: str
    status: RunStatus
    exit_code: int | None
    log_path: Path
    metrics_path: Path


def run_pipeline(
    db: Database,
    settings: Settings,
    name: str,
    triggered_by: str,
    *,
    echo: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    env: dict[str, str] | None = None,
    attempt: int = 1,
    retry_of: uuid.UUID | None = None,
) -> RunResult:
    """Create a run of pipeline ``name`` and execute it in the foreground (``env``: run
    parameters over the pipeline's own ``env``)."""
    pipeline = pipelines.load(settings.pipelines_dir, name)
    run = runs.create(
        db,
        pipeline.name,
        triggered_by,
        pid=os.getpid(),
        attempt=attempt,
        retry_of=retry_of,
        env=env,
    )
    return execute(db, settings, pipeline, run.id, echo=echo, cancel=cancel, extra_env=env)


def _kill_tree(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for child in children:
        try:
            child.send_signal(sig)
        except psutil.Error:
            pass


def _pipeline_env(
    pipeline: pipelines.Pipeline, run_id: uuid.UUID, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The pipeline's environment: fastflow's own settings (credentials, database URL,
    ...) are not the pipeline's business; ``extra`` (run parameters) wins over the
    pipeline's ``env``."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTINGS_VARS}
    env.update(pipeline.env)
    env.update(extra or {})
    env.update(FASTFLOW_RUN_ID=str(run_id), FASTFLOW_PIPELINE=pipeline.name)
    return env


def _start(pipeline: pipelines.Pipeline, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The pipeline in its own session, under the bootstrap (dies with this process)."""
    return subprocess.Popen(
        [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), str(pipeline.main.resolve())],
        cwd=pipeline.path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _final_status(
    ended: Outcome, timeout: float | None, capture: LogCapture
) -> tuple[RunStatus, int | None]:
    """Status and exit code from how the process ended; a note in the log says why."""
    status = ended.wait_status
    exit_code = os.waitstatus_to_exitcode(status) if status is not None else None
    if ended.kind == "timeout":
        capture.write_note(f"timeout after {timeout:g} s: process tree killed")
        return RunStatus.TIMEOUT, exit_code
    if ended.kind == "cancelled":
        capture.write_note("run cancelled: process tree killed")
        return RunStatus.CANCELLED, exit_code
    if exit_code is not None and exit_code < 0:
        capture.write_note(f"pipeline killed by signal {-exit_code}")
    return (RunStatus.SUCCESS if exit_code == 0 else RunStatus.FAILED), exit_code


def execute(
    db: Database,
    settings: Settings,
    pipeline: pipelines.Pipeline,
    run_id: uuid.UUID,
    *,
    echo: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    extra_env: dict[str, str] | None = None,
    kill_grace: float | None = None,
) -> RunResult:
    """Execute an existing PENDING run of ``pipeline``."""
    logs_root = settings.logs_root
    log_path = logfiles.resolve(logs_root, logfiles.log_rel(pipeline.name, str(run_id)))
    metrics_path = logfiles.resolve(logs_root, logfiles.metrics_rel(pipeline.name, str(run_id)))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    runs.mark_running(db, run_id, pid=os.getpid())
    status, exit_code = RunStatus.FAILED, None
    with (
        log_path.open("w", encoding="utf-8", newline="", buffering=1 << 20) as log_out,
        metrics_path.open("w", encoding="utf-8", newline="") as metrics_out,
    ):
        capture = LogCapture(log_out, echo=echo)
        try:
            proc = _start(pipeline, _pipeline_env(pipeline, run_id, extra_env))
        except OSError as e:
            capture.write_note(f"could not start the pipeline: {e}")
            proc = None
        if proc is not None:
            runs.mark_pipeline_process(db, run_id, proc.pid)
            sampler = TreeSampler(proc.pid, metrics_out)
            sampler.start()
            started = time.monotonic()
            pump = Pump(proc, capture, log_out, _kill_tree, pipeline.timeout, cancel)
            if kill_grace is not None:
                pump.kill_grace = kill_grace
            ended = pump.run()
            ru = ended.rusage
            cpu_seconds = ru.ru_utime + ru.ru_stime if ru is not None else 0.0
            sampler.stop(cpu_seconds=cpu_seconds, wall_seconds=time.monotonic() - started)
            status, exit_code = _final_status(ended, pipeline.timeout, capture)
        _close(log_out)
        _close(metrics_out)
    runs.finish(db, run_id, status, exit_code, logfiles.size_of(log_path))
    return RunResult(run_id, pipeline.name, status, exit_code, log_path, metrics_path)


def _close(f: object) -> None:
    """Flush and fsync so that the finished log survives a power loss."""
    try:
        f.flush()  # type: ignore[attr-defined]
        os.fsync(f.fileno())  # type: ignore[attr-defined]
    except (OSError, ValueError):
        pass
