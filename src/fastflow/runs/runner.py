"""Execute one pipeline run: secrets, environment, subprocess, log capture, metrics,
final status.

Guarantees: the run's row reaches a final status (SUCCESS, FAILED, TIMEOUT, CANCELLED)
with a ``failure_reason`` for every non-success, whatever the pipeline does; a missing
secret, an unenforceable limit or a failed environment build end the run before its
process starts; the process runs in its own environment (``environments``), in a
private scratch folder, as ``RUN_AS_USER`` when set, with only the variables of
``isolation.run_env``; every secret value given to it is masked before the log is
written (``masking``); on timeout, cancel or a hard memory limit the whole process tree
is killed; output is captured line by line with bounded memory (see ``capture``) and
fsynced at the end.

Where the process runs (issue 15): ``pipeline.json``'s ``executor``, else ``EXECUTOR``.
``local`` is the subprocess described here; ``docker`` hands the run, after its secrets
and its capture are ready, to ``executors.container`` (a container per run, the same
capture and masking, the same statuses), and ``resume`` supervises a container run
whose supervisor died.

Disk space (issue 16): a run does not start when the file system of ``LOGS_DIR`` has
less than ``min_free_bytes`` free — it ends FAILED at once with ``failure_reason``
``no space left in LOGS_DIR (…)``; a write of its log or metrics that fails with ENOSPC
(or EDQUOT) while it runs stops its process tree and ends it FAILED with that reason,
never with an exception that would leave the run unrecorded.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, cast

import psutil

from fastflow import environments
from fastflow.config import Settings
from fastflow.db.engine import Database
from fastflow.db.models import PipelineRun, RunStatus
from fastflow.errors import BuildStopped, FastflowError, InvalidPipelineConfig, UnsafePath
from fastflow.runs import files as logfiles
from fastflow.runs import isolation, logsdir, pipelines, secret_store
from fastflow.runs import store as runs
from fastflow.runs.bootstrap import DIE_WITH_PARENT, OUTPUT_MARK_ENV, bootstrap
from fastflow.runs.capture import LogCapture
from fastflow.runs.masking import Masker
from fastflow.runs.output_streams import mark_for
from fastflow.runs.pump import Outcome, Pump
from fastflow.runs.sampler import TreeSampler
from fastflow.security import path_masker as without_paths_of

# the pipeline's output order, buffering and death with its supervisor: see ``bootstrap``
_BOOTSTRAP = bootstrap(DIE_WITH_PARENT)

log = logging.getLogger(__name__)


MIN_FREE_BYTES = 16 * 1024 * 1024  # a run needs this much free space in LOGS_DIR to start
MIN_FREE_FRACTION = 0.02  # ... or 2 % of a smaller file system (at least MIN_FREE_FLOOR)
MIN_FREE_FLOOR = 64 * 1024
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
WAIT_FOR_SLOT_S = 0.5  # how often a foreground run at its max_instances looks again


def free_space(path: Path) -> tuple[int, int]:
    """(bytes free for unprivileged writers, total bytes) of the file system that holds
    ``path`` (or its nearest existing parent)."""
    probe = path.expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def min_free_bytes(total: int) -> int:
    """Free space a run needs to start: 16 MiB, or 2 % of a file system under 800 MiB."""
    return min(MIN_FREE_BYTES, max(MIN_FREE_FLOOR, int(total * MIN_FREE_FRACTION)))


def size_text(n: float) -> str:
    """``12.0 MiB``: bytes for people."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def no_space_reason(logs_root: Path) -> str | None:
    """Why a run cannot start for lack of space in LOGS_DIR, or None."""
    try:
        free, total = free_space(logs_root)
    except OSError:
        return None  # cannot tell: the run's own writes report a full disk
    need = min_free_bytes(total)
    if free >= need:
        return None
    return (
        f"no space left in LOGS_DIR ({logs_root}: {size_text(free)} free, a run needs "
        f"{size_text(need)} to start)"
    )


class _SpaceGuard:
    """Set when a write to the run's log or metrics failed for lack of space: the run is
    then stopped (``full`` doubles as a cancel event) and what it writes is discarded."""

    def __init__(self) -> None:
        self.full = threading.Event()

    def trip(self, e: OSError) -> None:
        if e.errno not in _NO_SPACE:
            raise e
        self.full.set()

    def reason(self, logs_root: Path) -> str:
        return (
            f"no space left in LOGS_DIR ({logs_root}): writing the run's log failed, the "
            "pipeline was stopped"
        )


class _GuardedText:
    """A text file whose ENOSPC/EDQUOT errors trip the guard instead of raising."""

    def __init__(self, raw: TextIO, guard: _SpaceGuard) -> None:
        self._raw = raw
        self._guard = guard

    def write(self, text: str) -> int:
        if not self._guard.full.is_set():
            try:
                self._raw.write(text)
            except OSError as e:
                self._guard.trip(e)
        return len(text)

    def flush(self) -> None:
        if not self._guard.full.is_set():
            try:
                self._raw.flush()
            except OSError as e:
                self._guard.trip(e)

    def fileno(self) -> int:
        return self._raw.fileno()


@contextmanager
def _guarded_open(
    folder: logfiles.RunFolder, rel: str, guard: _SpaceGuard, **kwargs: object
) -> Iterator[TextIO]:
    """The run file ``rel`` created (or emptied) for writing in the run's folder, held
    open since it was made (``runs.files.open_for_writing_in``: no link followed)."""
    fd = logfiles.open_for_writing_in(folder, rel, append=False)
    try:
        raw = open(fd, "w", encoding="utf-8", newline="", **kwargs)  # type: ignore[call-overload]  # noqa: SIM115
    except BaseException:
        os.close(fd)
        raise
    try:
        yield cast(TextIO, _GuardedText(raw, guard))
    finally:
        try:
            raw.close()
        except OSError as e:  # the buffered tail could not be written
            guard.trip(e)


class _Either(threading.Event):
    """Set when any of ``events`` is (what ``Pump`` asks of its cancel event)."""

    def __init__(self, *events: threading.Event) -> None:
        super().__init__()
        self._events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self._events)


@dataclass(frozen=True)
class RunResult:
    run_id: uuid.UUID
    pipeline_name: str
    status: RunStatus
    exit_code: int | None
    log_path: Path
    metrics_path: Path
    failure_reason: str | None = None


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
    follows: uuid.UUID | None = None,
) -> RunResult:
    """Create a run of pipeline ``name`` and execute it in the foreground (``env``: run
    parameters over the pipeline's own ``env``; ``follows``: the attempt this one retries,
    marked followed up in the transaction that creates it)."""
    pipeline = pipelines.load(settings.pipelines_dir, name)
    limit = pipeline.config.max_instances
    said = False
    while True:  # max_instances holds for a foreground run too, across every server
        run, active = runs.create_within(
            db,
            pipeline.name,
            triggered_by,
            limit,
            pid=os.getpid(),
            attempt=attempt,
            retry_of=retry_of,
            env=env,
            follows=follows,
        )
        if run is not None:
            break
        if not said:  # (on stderr: the last line of stdout is the run's id)
            print(
                f"fastflow: waiting: {pipeline.name} has {active} run(s) pending or running "
                f"(max_instances {limit}); this run starts when one ends",
                file=sys.stderr,
                flush=True,
            )
            said = True
        if cancel is not None and cancel.wait(WAIT_FOR_SLOT_S):
            raise KeyboardInterrupt  # stopped while waiting: nothing was recorded yet
        if cancel is None:
            time.sleep(WAIT_FOR_SLOT_S)  # Ctrl-C ends the wait; nothing was recorded yet
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


def _start(
    python: Path,
    pipeline: pipelines.Pipeline,
    env: dict[str, str],
    workdir: Path,
    user: isolation.RunAs | None,
) -> subprocess.Popen[bytes]:
    """The pipeline in its own session, under the bootstrap (dies with this process),
    in its scratch folder, as ``user`` when given."""
    ids: dict[str, object] = {}
    if user is not None:
        ids = {"user": user.uid, "group": user.gid, "extra_groups": []}
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        [str(python), "-c", _BOOTSTRAP, str(os.getpid()), str(pipeline.main.resolve())],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **ids,
    )


class _TreeWatch:
    """Kills the pipeline's process group if this process dies without saying it is done
    (SIGKILL, OOM killer): the bootstrap's parent-death signal reaches only the pipeline's
    own process, not what it started. A ``/bin/sh`` in its own session reads one line
    from a pipe that only this process can write: ``done`` when the run ended here, end
    of file when this process died — then ``kill -9 -PGID``."""

    def __init__(self, pgid: int) -> None:
        read_end, self._write_end = os.pipe()
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                ["/bin/sh", "-c", f"IFS= read -r line || kill -9 -{int(pgid)} 2>/dev/null"],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # not stopped by a terminal's Ctrl-C with this one
            )
        except OSError:
            self._proc = None  # no shell here: the parent-death signal alone, as before
        finally:
            os.close(read_end)

    def __enter__(self) -> _TreeWatch:
        return self

    def __exit__(self, *_: object) -> None:
        self.done()

    def done(self) -> None:
        """The run ended under supervision: the watch ends without killing anything."""
        try:
            os.write(self._write_end, b"done\n")
        except OSError:
            pass
        finally:
            os.close(self._write_end)
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _final_status(
    ended: Outcome, pipeline: pipelines.Pipeline, capture: LogCapture
) -> tuple[RunStatus, int | None, str | None]:
    """Status, exit code and failure reason from how the process ended; a note in the
    log says why it was stopped."""
    status = ended.wait_status
    exit_code = os.waitstatus_to_exitcode(status) if status is not None else None
    if ended.kind == "timeout":
        reason = f"timeout after {pipeline.timeout:g} s"
        capture.write_note(f"{reason}: process tree killed")
        return RunStatus.TIMEOUT, exit_code, reason
    if ended.kind == "cancelled":
        capture.write_note("run cancelled: process tree killed")
        return RunStatus.CANCELLED, exit_code, "cancelled"
    if ended.kind == "memory":
        reason = f"memory limit exceeded ({pipeline.config.limits.memory_mb} MiB)"
        capture.write_note(f"{reason}: process tree killed")
        return RunStatus.FAILED, exit_code, reason
    if exit_code is not None and exit_code < 0:
        capture.write_note(f"pipeline killed by signal {-exit_code}")
        return RunStatus.FAILED, exit_code, f"killed by signal {-exit_code}"
    if exit_code == 0:
        return RunStatus.SUCCESS, 0, None
    return RunStatus.FAILED, exit_code, f"exit code {exit_code}"


@dataclass
class _Prepared:
    """What a run needs before its process starts."""

    secrets: dict[str, str]
    user: isolation.RunAs | None = None
    env: environments.PreparedEnv | None = None


def _prepare(
    db: Database,
    settings: Settings,
    pipeline: pipelines.Pipeline,
    log_out: TextIO,
    echo: Callable[[str], None] | None,
    *,
    clock: Callable[[], float] | None = None,
    local: bool = True,
    stop: threading.Event | None = None,
    stopped_because: Callable[[], str] = lambda: "the run was cancelled",
) -> tuple[LogCapture, _Prepared | None, str | None]:
    """Secrets, limits, user and environment, in that order; the first problem ends the
    run before it starts, with its reason (in the log too). A run that is not ``local``
    gets its secrets only: its executor owns the rest. ``stop`` set during the build
    stops it (uv and all it started are killed)."""
    when = clock or time.time
    try:
        values = secret_store.values_for(db, settings, pipeline.config.secrets)
    except FastflowError as e:
        capture = LogCapture(log_out, echo=echo, clock=when)
        capture.write_note(f"not started: {e}")
        return capture, None, str(e)
    masked_values = secret_store.masked_for(db, settings, values)
    capture = LogCapture(log_out, echo=echo, clock=when, masker=Masker(masked_values))
    prepared = _Prepared(values)
    if not local:
        return capture, prepared, None
    try:
        _check_limits(pipeline)
        prepared.user = isolation.run_as(settings)
        if prepared.user is not None and isolation.folder_writable_by(pipeline.path, prepared.user):
            capture.write_note(
                f"warning: the pipeline folder is writable by {prepared.user.name}; "
                "make it read-only for that user (chmod go-w, chown)"
            )
        above = isolation.writable_above(pipeline.path, prepared.user) if prepared.user else None
        if above is not None and prepared.user is not None:
            capture.write_note(
                f"warning: {above}, a folder above the pipeline, is writable by "
                f"{prepared.user.name}: uv reads uv.toml and workspace files from there, so "
                "a run could change what the builds of other pipelines install; make it "
                "read-only for that user"
            )
    except FastflowError as e:
        capture.write_note(f"not started: {e}")
        return capture, None, str(e)

    # the build's lines name the server's folders (``Creating virtual environment at:
    # /srv/…/envs/…``): a run's log is read by viewers, who are never told where the
    # server keeps its files — named by their settings, as in error text
    unplaced = without_paths_of(settings)

    def env_line(line: str) -> None:
        capture.write_line(f"[env] {unplaced(line)}")
        log_out.flush()  # a build can take minutes: its lines are followed as they come

    try:
        prepared.env = environments.prepare(
            settings,
            pipeline.name,
            pipeline.path,
            pipeline.config.python,
            env_line,
            user=(prepared.user.uid, prepared.user.gid) if prepared.user else None,
            stop=stop,
        )
    except BuildStopped as e:
        why = f"{e}: {stopped_because()}"
        capture.write_note(f"not started: {why}")
        return capture, None, why
    except FastflowError as e:
        # the reason is stored and printed too: masked like the log
        reason = capture.masked(f"environment build failed: {e}")
        capture.write_note(reason)
        return capture, None, reason
    return capture, prepared, None


def _check_limits(pipeline: pipelines.Pipeline) -> None:
    if pipeline.config.limits.cpu is not None:
        raise InvalidPipelineConfig(
            f"limits.cpu ({pipeline.config.limits.cpu:g} CPUs) cannot be enforced by the "
            "local executor; remove it or run the pipeline in a container"
        )


def _run_env(
    settings: Settings,
    pipeline: pipelines.Pipeline,
    run_id: uuid.UUID,
    prepared: _Prepared,
    workdir: Path,
    extra: dict[str, str] | None,
) -> dict[str, str]:
    """The run's whole environment (see ``isolation.run_env``); run parameters win over
    the pipeline's ``env``, secrets over both."""
    bin_dir = prepared.env.python.parent if prepared.env is not None else None
    return isolation.run_env(
        settings,
        prepared.user,
        bin_dir=bin_dir,
        layers=[pipeline.env, extra or {}, prepared.secrets],
        run_vars={
            "FASTFLOW_RUN_ID": str(run_id),
            "FASTFLOW_PIPELINE": pipeline.name,
            "FASTFLOW_PIPELINE_DIR": str(pipeline.path.resolve()),
            "FASTFLOW_WORKDIR": str(workdir),
            "TMPDIR": str(workdir),
        },
    )


PAYLOAD_ENV = "FASTFLOW_PAYLOAD"  # a webhook's body (orchestration.webhooks writes it)


def _payload_for_user(
    extra: dict[str, str] | None, workdir: Path, user: isolation.RunAs | None, logs_root: Path
) -> dict[str, str] | None:
    """A run as ``RUN_AS_USER`` cannot reach ``LOGS_DIR`` (private to fastflow, see
    ``FASTFLOW_UMASK``): its webhook payload is copied into its scratch folder, owned by
    the run's user, and ``FASTFLOW_PAYLOAD`` names the copy."""
    source = (extra or {}).get(PAYLOAD_ENV)
    if user is None or extra is None or source is None:
        return extra
    path = Path(source)
    # read through a walk from LOGS_DIR that follows no link: a link put in the
    # payload's place must not hand the run's user a file from elsewhere
    data = logfiles.read_below(logs_root, path)
    if data is None:
        return extra
    copy = workdir / path.name
    copy.write_bytes(data)
    os.chown(copy, user.uid, user.gid)
    return {**extra, PAYLOAD_ENV: str(copy)}


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
    """Execute an existing PENDING run of ``pipeline``; a stopped run (timeout, cancel)
    gets ``kill_grace`` seconds (default ``CANCEL_GRACE_SECONDS``) between SIGTERM and
    SIGKILL, whoever runs it."""
    if kill_grace is None:
        kill_grace = settings.cancel_grace_seconds
    logs_root = settings.logs_root
    log_rel = logfiles.log_rel(pipeline.name, str(run_id))
    metrics_rel = logfiles.metrics_rel(pipeline.name, str(run_id))
    guard = _SpaceGuard()
    # an unmounted volume, another installation's folder: nothing written there (a new
    # installation's LOGS_DIR is made and marked here)
    home = logsdir.problem(db, logs_root, create=True)
    if home is not None:
        runs.fail_with_note(db, logs_root, run_id, home, note=False)
        return RunResult(
            run_id,
            pipeline.name,
            RunStatus.FAILED,
            None,
            logs_root / log_rel,
            logs_root / metrics_rel,
            home,
        )
    cannot = no_space_reason(logs_root)
    try:
        log_path = logfiles.resolve(logs_root, log_rel)
        metrics_path = logfiles.resolve(logs_root, metrics_rel)
    except UnsafePath as e:  # a link where the run's folder goes: written nowhere
        log_path, metrics_path = logs_root / log_rel, logs_root / metrics_rel
        cannot = f"cannot create the run's log: {e}"
    folder: logfiles.RunFolder | None = None
    if cannot is None:
        try:
            folder = _make_run_folder(logs_root, pipeline.name, run_id)
        except UnsafePath as e:  # a link where the run's folder goes: written nowhere
            cannot = f"cannot create the run's log: {e}"
        except OSError as e:
            guard.trip(e)
            cannot = guard.reason(logs_root)
    if folder is None and cannot is None:  # LOGS_DIR went away since the check
        home = f"LOGS_DIR ({logs_root}) went away while the run started"
    if folder is not None:
        # the folder was made in the LOGS_DIR it was found from: that one must carry the
        # marker (a volume unmounted since the check above leaves another folder there)
        try:
            home = logsdir.confirmed_at(db, folder.root_fd, logs_root)
        except BaseException:
            folder.close()
            raise
        if home is not None:
            folder.remove_if_empty()
            folder.close()
            folder = None
    if home is not None:  # nothing written there
        runs.fail_with_note(db, logs_root, run_id, home, note=False)
        return RunResult(
            run_id, pipeline.name, RunStatus.FAILED, None, log_path, metrics_path, home
        )
    if cannot is not None:  # ends FAILED before it starts, instead of a half-written log
        runs.fail_with_note(db, logs_root, run_id, cannot)
        return RunResult(
            run_id, pipeline.name, RunStatus.FAILED, None, log_path, metrics_path, cannot
        )
    assert folder is not None
    executor = pipeline.config.executor or settings.executor
    try:
        runs.mark_running(db, run_id, pid=os.getpid(), executor=executor)
    except BaseException:
        folder.close()
        raise
    status, exit_code = RunStatus.FAILED, None
    reason: str | None = None
    stop = _Either(cancel, guard.full) if cancel is not None else guard.full
    with ExitStack() as files:
        try:
            with folder:
                log_out = files.enter_context(
                    _guarded_open(folder, log_rel, guard, buffering=1 << 20)
                )
                metrics_out = files.enter_context(_guarded_open(folder, metrics_rel, guard))
        except UnsafePath as e:  # a link put there since the folder was made
            files.close()
            why = f"cannot create the run's log: {e}"
            runs.finish(db, run_id, status, None, None, why)
            return RunResult(run_id, pipeline.name, status, None, log_path, metrics_path, why)
        except OSError as e:
            guard.trip(e)
            files.close()
            size = logfiles.size_below(logs_root, log_rel)
            runs.finish(db, run_id, status, None, size, guard.reason(logs_root))
            return RunResult(
                run_id, pipeline.name, status, None, log_path, metrics_path, guard.reason(logs_root)
            )
        frame_clock = None  # a container run's lines carry Docker's time
        if executor == "docker":
            from fastflow.executors.container import FrameClock

            frame_clock = FrameClock()
        capture, prepared, reason = _prepare(
            db,
            settings,
            pipeline,
            log_out,
            echo,
            clock=frame_clock,
            local=executor == "local",
            stop=stop,
            stopped_because=lambda: (
                "LOGS_DIR's disk is full" if guard.full.is_set() else "the run was cancelled"
            ),
        )
        if prepared is not None and guard.full.is_set():
            prepared = None  # the disk filled up while the environment was prepared
        if cancel is not None and cancel.is_set() and not guard.full.is_set():
            if prepared is not None:  # cancelled as the build ended: main.py never starts
                capture.write_note("not started: the run was cancelled")
            prepared = None
            status, reason = RunStatus.CANCELLED, "cancelled"
        if prepared is not None and frame_clock is not None:
            from fastflow.executors import container

            ended = container.run(
                db,
                settings,
                pipeline,
                run_id,
                container.Output(capture, frame_clock, log_out, metrics_out),
                secrets=prepared.secrets,
                extra_env=extra_env,
                stop=stop,
                grace=kill_grace,
            )
            status, exit_code, reason = ended.status, ended.exit_code, ended.reason
        elif prepared is not None:
            assert prepared.env is not None
            with environments.in_use(prepared.env):
                workdir = isolation.make_workdir(run_id, prepared.user)
                try:
                    extra = _payload_for_user(extra_env, workdir, prepared.user, logs_root)
                    env = _run_env(settings, pipeline, run_id, prepared, workdir, extra)
                    status, exit_code, reason = _run_process(
                        db,
                        pipeline,
                        run_id,
                        prepared,
                        env,
                        workdir,
                        capture,
                        log_out,
                        metrics_out,
                        stop,
                        kill_grace,
                    )
                finally:
                    isolation.remove_workdir(workdir)
        if prepared is not None and not guard.full.is_set() and _unlinked(log_out):
            capture.write_note(
                "the run's log file was deleted while the run ran; fastflow restored it "
                "from the copy it held open"
            )
        _close(log_out)
        _close(metrics_out)
        if not guard.full.is_set():
            for f, rel in ((log_out, log_rel), (metrics_out, metrics_rel)):
                _restore_if_unlinked(logs_root, pipeline.name, run_id, f, rel)
        size = _size_of(log_out)  # the file written, wherever its path now leads
    if guard.full.is_set():  # the log is incomplete: the run failed for lack of space
        status, reason = RunStatus.FAILED, guard.reason(logs_root)
    if size is None:
        size = logfiles.size_below(logs_root, log_rel)
    runs.finish(db, run_id, status, exit_code, size, reason)
    return RunResult(run_id, pipeline.name, status, exit_code, log_path, metrics_path, reason)


def resume(
    db: Database,
    settings: Settings,
    run: PipelineRun,
    *,
    cancel: threading.Event | None = None,
    kill_grace: float | None = None,
) -> RunResult:
    """Supervise a RUNNING container run whose supervisor died (this process must
    already own its row, see ``store.adopt``) to its end: its log gets what the
    container wrote meanwhile, its row a final status."""
    from fastflow.executors import container

    grace = kill_grace if kill_grace is not None else settings.cancel_grace_seconds
    outcome = container.resume(db, settings, run, cancel=cancel, grace=grace)
    logs_root = settings.logs_root
    log_path = logfiles.resolve(logs_root, logfiles.log_rel(run.pipeline_name, str(run.id)))
    metrics_path = logfiles.resolve(logs_root, logfiles.metrics_rel(run.pipeline_name, str(run.id)))
    return RunResult(
        run.id,
        run.pipeline_name,
        outcome.status,
        outcome.exit_code,
        log_path,
        metrics_path,
        outcome.reason,
    )


def _run_process(
    db: Database,
    pipeline: pipelines.Pipeline,
    run_id: uuid.UUID,
    prepared: _Prepared,
    env: dict[str, str],
    workdir: Path,
    capture: LogCapture,
    log_out: TextIO,
    metrics_out: TextIO,
    cancel: threading.Event | None,
    kill_grace: float,
) -> tuple[RunStatus, int | None, str | None]:
    assert prepared.env is not None
    env = {**env, OUTPUT_MARK_ENV: capture.split_streams(mark_for(run_id))}  # see capture
    if cancel is not None and cancel.is_set():  # the last moment a cancel can prevent
        capture.write_note("not started: the run was cancelled")  # the start (a review)
        return RunStatus.CANCELLED, None, "cancelled"
    try:
        proc = _start(prepared.env.python, pipeline, env, workdir, prepared.user)
    except OSError as e:
        reason = f"could not start the pipeline: {e}"
        capture.write_note(reason)
        return RunStatus.FAILED, None, reason
    with _TreeWatch(proc.pid):  # start_new_session: the pipeline's pid is its group
        runs.mark_pipeline_process(db, run_id, proc.pid)
        limits = pipeline.config.limits
        sampler = TreeSampler(
            proc.pid,
            metrics_out,
            memory_limit_mb=limits.memory_mb,
            memory_soft_mb=limits.memory_soft_mb,
            cpu_soft=limits.cpu_soft,
        )
        sampler.start()
        started = time.monotonic()
        pump = Pump(
            proc,
            capture,
            log_out,
            _kill_tree,
            pipeline.timeout,
            cancel,
            memory_exceeded=sampler.exceeded,
        )
        pump.kill_grace = kill_grace
        ended = pump.run()
        ru = ended.rusage
        cpu_seconds = ru.ru_utime + ru.ru_stime if ru is not None else 0.0
        sampler.stop(cpu_seconds=cpu_seconds, wall_seconds=time.monotonic() - started)
        for what in sorted(sampler.soft_exceeded):
            capture.write_note(f"warning: the soft {what} limit was exceeded (the run went on)")
        return _final_status(ended, pipeline, capture)


def _make_run_folder(
    logs_root: Path, pipeline_name: str, run_id: uuid.UUID, attempts: int = 3
) -> logfiles.RunFolder | None:
    """The run's folder, made (each part through its parent's descriptor: no link
    followed) and held open until the log and metrics are made in it; None when
    ``LOGS_DIR`` itself is gone. A part removed while it was made (a pass removing a
    pipeline's emptied folder at that instant) is made again."""
    rel = logfiles.run_dir_rel(pipeline_name, str(run_id))
    for _ in range(attempts):
        folder = logfiles.RunFolder(logs_root, rel, create=True)
        if not folder.missing:
            return folder
        root_opened = folder.root_open
        folder.close()
        if not root_opened:
            return None
    return None


def _unlinked(f: TextIO) -> bool:
    """True when the open file ``f`` has no name any more (its run deleted it)."""
    try:
        return os.fstat(f.fileno()).st_nlink == 0
    except (OSError, ValueError):
        return False


def _restore_if_unlinked(
    logs_root: Path, pipeline_name: str, run_id: uuid.UUID, f: TextIO, rel: str
) -> None:
    """Write the bytes of ``f`` — a run file its pipeline deleted while it still ran
    (fastflow's descriptor kept them) — back to its place, made again as at the start.
    Whatever the pipeline put there instead (a file, a symbolic link, a FIFO) is
    replaced, never followed or opened: the copy is written to a temporary file in the
    run's folder and renamed over the name. Best effort: a failure is logged."""
    if not _unlinked(f):
        return
    try:
        src = os.open(f"/proc/self/fd/{f.fileno()}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        log.error("run %s: cannot restore its deleted %s: %s", run_id, rel, e)
        return
    try:
        folder = _make_run_folder(logs_root, pipeline_name, run_id)
        if folder is None:
            raise FileNotFoundError(f"LOGS_DIR ({logs_root}) is gone")
        with folder:
            _copy_into_place(folder, src, logfiles.parts(rel)[-1])
        log.warning("run %s: its pipeline deleted %s; restored", run_id, rel)
    except (OSError, UnsafePath) as e:
        log.error("run %s: cannot restore its deleted %s: %s", run_id, rel, e)
    finally:
        os.close(src)


def _copy_into_place(folder: logfiles.RunFolder, src: int, name: str) -> None:
    """The bytes of ``src`` as the file ``name`` of ``folder``, with ``src``'s mode: a
    temporary file, filled and synced, renamed over ``name`` (the name's old entry,
    whatever it is, is replaced; a folder there is an error)."""
    dst, temp = folder.create_temp()
    try:
        try:
            os.fchmod(dst, stat.S_IMODE(os.fstat(src).st_mode) & 0o666)
            while os.sendfile(dst, src, None, 1 << 20):
                pass
            os.fsync(dst)
        finally:
            os.close(dst)
        os.rename(temp, name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
    except BaseException:
        folder.unlink(temp)
        raise


def _size_of(f: TextIO) -> int | None:
    """The size of the open file ``f`` (flushed by ``_close``), or None."""
    try:
        return os.fstat(f.fileno()).st_size
    except (OSError, ValueError):
        return None


def _close(f: object) -> None:
    """Flush and fsync so that the finished log survives a power loss."""
    try:
        f.flush()  # type: ignore[attr-defined]
        os.fsync(f.fileno())  # type: ignore[attr-defined]
    except (OSError, ValueError):
        pass
