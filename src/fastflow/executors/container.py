"""One pipeline run in a Docker container: image, container, output into the run's
capture, final status, clean-up; and the resumption of such a run after a restart.

Guarantees: the log has the format of a local run (``runs.capture``: each line with its
time, secrets masked before anything is written) where a line's time is the time Docker
received it; the run ends with a status and a ``failure_reason`` for every non-success
(daemon unreachable, image missing or not buildable, container lost, exit code, signal,
``memory limit exceeded (N MiB)``, timeout, cancel), never with an exception; the
container and its volume are removed before the run's row is final, unless
``DOCKER_KEEP_CONTAINERS=true`` and the run did not succeed (a note says what was kept).
A resumed run appends exactly what its container wrote after the log's last complete
line (see ``resume``), then ends like any run; its timeout counts from its start.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

from fastflow.config import Settings
from fastflow.db.engine import Database
from fastflow.db.models import PipelineRun, RunStatus
from fastflow.errors import FastflowError, UnsafePath
from fastflow.executors import images
from fastflow.executors import resume as resuming
from fastflow.executors.base import Ended, ExecutorError, LaunchSpec, OutputSink, Watch
from fastflow.executors.docker import (
    DEFAULT_COMMAND,
    PIPELINE_DIR,
    WORKSPACE,
    DockerExecutor,
    volume_name,
)
from fastflow.executors.metrics import MetricsFile
from fastflow.runs import files as logfiles
from fastflow.runs import pipelines, secret_store
from fastflow.runs import store as runs
from fastflow.runs.bootstrap import OUTPUT_MARK_ENV
from fastflow.runs.capture import LogCapture
from fastflow.runs.masking import Masker
from fastflow.runs.output_streams import mark_for, without_frames

PAYLOAD_ENV = "FASTFLOW_PAYLOAD"
FLUSH_EVERY_S = 0.5
RESUMED_NOTE = "re-attached to the run's container after a restart of fastflow"


@dataclass(frozen=True)
class Outcome:
    status: RunStatus
    exit_code: int | None
    reason: str | None


class FrameClock:
    """The capture's clock: the Docker time of the bytes being fed (exactly that
    millisecond in the stamp), else the current time (for fastflow's own notes)."""

    def __init__(self) -> None:
        self.ms: int | None = None

    def __call__(self) -> float:
        return (self.ms + 0.5) / 1000 if self.ms is not None else time.time()


class _LiveLog:
    """Feeds output to the capture and flushes the log every ``FLUSH_EVERY_S`` (from a
    thread, so a quiet run's last lines show up live too)."""

    def __init__(self, capture: LogCapture, clock: FrameClock, log_out: TextIO) -> None:
        self._capture, self._clock, self._out = capture, clock, log_out
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def feed(self, ms: int, data: bytes) -> None:
        with self._lock:
            self._clock.ms = ms
            try:
                self._capture.feed(data)
            finally:
                self._clock.ms = None

    def note(self, text: str) -> None:
        """A fastflow note, written between two output chunks."""
        with self._lock:
            self._capture.write_note(text)

    @contextlib.contextmanager
    def flushing(self) -> Iterator[None]:
        thread = threading.Thread(target=self._loop, name="docker-log-flush", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_EVERY_S):
            with self._lock:
                self._capture.tick()  # what waited too long behind a possible secret
                self._out.flush()


def run_env(
    settings: Settings,
    pipeline: pipelines.Pipeline,
    run_id: uuid.UUID,
    extra: dict[str, str] | None,
    secrets: dict[str, str],
) -> dict[str, str]:
    """The container's environment: ``PASS_ENV``, the pipeline's ``env``, the run's
    parameters, the secrets, then the ``FASTFLOW_*`` variables with container paths;
    nothing else of fastflow's environment (the image supplies ``PATH``)."""
    env = {name: os.environ[name] for name in settings.pass_env if name in os.environ}
    if pipeline.config.command is not None:
        env["PYTHONUNBUFFERED"] = "1"  # a Python command's output shows up live
    env.update(pipeline.env)
    env.update(extra or {})
    env.update(secrets)
    env.update(
        FASTFLOW_RUN_ID=str(run_id),
        FASTFLOW_PIPELINE=pipeline.name,
        FASTFLOW_PIPELINE_DIR=PIPELINE_DIR,
        FASTFLOW_WORKDIR=WORKSPACE,
        TMPDIR=WORKSPACE,
    )
    return env


def _payload(env: dict[str, str], logs_root: Path) -> dict[str, bytes]:
    """A webhook payload (a file under ``LOGS_DIR``) goes into the workspace, and
    ``FASTFLOW_PAYLOAD`` names the copy."""
    source = env.get(PAYLOAD_ENV)
    if source is None:
        return {}
    path = Path(source)
    data = logfiles.read_below(logs_root, path)  # (no link followed: see runner)
    if data is None:
        return {}
    env[PAYLOAD_ENV] = f"{WORKSPACE}/{path.name}"
    return {path.name: data}


def final_status(ended: Ended, memory_mb: int | None, capture: LogCapture) -> Outcome:
    """Status, exit code and failure reason of a container run (a note says why it was
    stopped)."""
    if ended.kind == "lost":
        reason = f"container lost: {ended.detail}"
        capture.write_note(reason)
        return Outcome(RunStatus.FAILED, ended.exit_code, reason)
    if ended.kind == "timeout":
        return Outcome(RunStatus.TIMEOUT, ended.exit_code, None)  # reason: the caller's
    if ended.kind == "cancelled":
        capture.write_note("run cancelled: container stopped")
        return Outcome(RunStatus.CANCELLED, ended.exit_code, "cancelled")
    code = ended.exit_code
    if ended.oom_killed and code != 0:
        limit = memory_mb or ended.memory_limit_mb
        reason = f"memory limit exceeded ({limit} MiB)"
        capture.write_note(f"{reason}: the container was killed")
        return Outcome(RunStatus.FAILED, code, reason)
    if code is not None and code < 0:
        capture.write_note(f"pipeline killed by signal {-code}")
        return Outcome(RunStatus.FAILED, code, f"killed by signal {-code}")
    if code == 0:
        return Outcome(RunStatus.SUCCESS, 0, None)
    return Outcome(RunStatus.FAILED, code, f"exit code {code}")


def _timeout_outcome(ended: Ended, timeout: float | None, capture: LogCapture) -> Outcome:
    reason = f"timeout after {timeout:g} s" if timeout is not None else "timeout"
    capture.write_note(f"{reason}: container killed")
    return Outcome(RunStatus.TIMEOUT, ended.exit_code, reason)


def _supervise(
    executor: DockerExecutor,
    cid: str,
    sink: OutputSink,
    live: _LiveLog,
    metrics: MetricsFile,
    watch: Watch,
    since_ms: int | None = None,
) -> Ended:
    with live.flushing():
        return executor.supervise(cid, sink, metrics, watch, since_ms=since_ms)


def _end(
    executor: DockerExecutor,
    settings: Settings,
    cid: str,
    run_id: uuid.UUID,
    outcome: Outcome,
    capture: LogCapture,
) -> None:
    """Remove the container and its volume, or keep them for debugging."""
    if settings.docker_keep_containers and outcome.status is not RunStatus.SUCCESS:
        capture.write_note(
            f"container {cid[:12]} and volume {volume_name(run_id)} kept for debugging "
            "(DOCKER_KEEP_CONTAINERS=true); remove them with docker rm and docker volume rm"
        )
        return
    try:
        executor.remove(cid, run_id)
    except ExecutorError as e:
        capture.write_note(f"warning: {e}")


@dataclass(frozen=True)
class Output:
    """Where a run's output goes: its capture (writing to ``log_out`` with ``clock``)
    and its metrics file."""

    capture: LogCapture
    clock: FrameClock
    log_out: TextIO
    metrics_out: TextIO


def run(
    db: Database,
    settings: Settings,
    pipeline: pipelines.Pipeline,
    run_id: uuid.UUID,
    out: Output,
    *,
    secrets: dict[str, str],
    extra_env: dict[str, str] | None,
    stop: threading.Event | None,
    grace: float,
) -> Outcome:
    """Execute a RUNNING run of ``pipeline`` in a container (see the module docstring)."""
    capture = out.capture
    try:
        executor = DockerExecutor(settings)
    except ExecutorError as e:
        capture.write_note(f"not started: {e}")
        return Outcome(RunStatus.FAILED, None, str(e))
    try:
        prepared = _image_unless_stopped(executor, settings, pipeline, capture, stop)
        if isinstance(prepared, Outcome):
            return prepared
        if stop is not None and stop.is_set():  # cancelled as the image became ready
            capture.write_note("not started: the run was cancelled")
            return Outcome(RunStatus.CANCELLED, None, "cancelled")
        runs.mark_container(db, run_id, image=prepared.image)
        config = pipeline.config
        env = run_env(settings, pipeline, run_id, extra_env, secrets)
        mark = capture.split_streams(mark_for(run_id))  # stderr told apart, see capture
        if config.command is None:  # the bootstrap frames stderr (a command does not)
            env[OUTPUT_MARK_ENV] = mark
        spec = LaunchSpec(
            run_id=run_id,
            pipeline=pipeline.name,
            folder=pipeline.path,
            image=prepared.image,
            command=config.command or DEFAULT_COMMAND,
            env=env,
            network=config.network or settings.docker_network,
            memory_mb=config.limits.memory_mb,
            cpu=config.limits.cpu,
            files=_payload(env, settings.logs_root),
        )
        with images.in_use(settings, prepared):
            try:
                cid = executor.start(spec)
            except ExecutorError as e:
                capture.write_note(f"not started: {e}")
                return Outcome(RunStatus.FAILED, None, str(e))
            runs.mark_container(db, run_id, container_id=cid)
            live = _LiveLog(capture, out.clock, out.log_out)
            metrics = MetricsFile(
                out.metrics_out,
                memory_soft_mb=config.limits.memory_soft_mb,
                cpu_soft=config.limits.cpu_soft,
            )
            deadline = time.time() + pipeline.timeout if pipeline.timeout else None
            watch = Watch(deadline, stop, grace)
            ended = _supervise(executor, cid, live.feed, live, metrics, watch)
            capture.close()
            outcome = _outcome(ended, pipeline.timeout, config.limits.memory_mb, metrics, capture)
            _end(executor, settings, cid, run_id, outcome, capture)
        return outcome
    finally:
        executor.close()


IMAGE_POLL_S = 0.2  # how often a run waiting for its image looks at its stop event
CANCELLED_DURING_BUILD = (
    "not started: the run was cancelled while its image was prepared; the image build "
    "goes on in the background and its image is kept for the next run"
)
_Refused = tuple[Outcome, str]  # the run's outcome and the note for its log


def _image_unless_stopped(
    executor: DockerExecutor,
    settings: Settings,
    pipeline: pipelines.Pipeline,
    capture: LogCapture,
    stop: threading.Event | None,
) -> images.Prepared | Outcome:
    """The image to run (derived when the pipeline has requirements), or why not (noted
    in the log). Left behind as soon as ``stop`` is set: the run ends CANCELLED at once
    instead of after the build (Docker's API cannot stop a build). The build goes on in
    a daemon thread on its own client and writes nothing more into the run's log (when
    this process exits first, its connection to the daemon goes with it)."""
    if stop is None:
        found = _image(executor, settings, pipeline, capture.write_line)
    else:
        found = _image_in_thread(settings, pipeline, capture, stop)
    if isinstance(found, tuple):
        capture.write_note(found[1])
        return found[0]
    return found


def _image_in_thread(
    settings: Settings, pipeline: pipelines.Pipeline, capture: LogCapture, stop: threading.Event
) -> images.Prepared | _Refused:
    lock = threading.Lock()
    left = False
    result: list[images.Prepared | _Refused] = []

    def line(text: str) -> None:
        with lock:  # never after the run was left: its log is closed by then
            if not left:
                capture.write_line(text)

    def build() -> None:
        try:
            own = DockerExecutor(settings)
        except Exception as e:  # (an ExecutorError names the daemon and why)
            result.append((Outcome(RunStatus.FAILED, None, str(e)), f"not started: {e}"))
            return
        try:
            result.append(_image(own, settings, pipeline, line))
        except BaseException as e:  # never lost silently: the run reports it
            why = f"image preparation failed: {e}"
            result.append((Outcome(RunStatus.FAILED, None, why), f"not started: {why}"))
        finally:
            own.close()

    worker = threading.Thread(target=build, name=f"image-{pipeline.name}", daemon=True)
    worker.start()
    while True:
        worker.join(IMAGE_POLL_S)
        with lock:
            if not worker.is_alive():
                return result[0]
            if stop.is_set():
                left = True
                return Outcome(RunStatus.CANCELLED, None, "cancelled"), CANCELLED_DURING_BUILD


def _image(
    executor: DockerExecutor,
    settings: Settings,
    pipeline: pipelines.Pipeline,
    write_line: Callable[[str], None],
) -> images.Prepared | _Refused:
    """The image to run, or the outcome and note of a run that cannot have one; build
    lines go to ``write_line`` as ``[env] …``."""
    try:
        return images.prepare(
            executor.client,
            settings,
            pipeline.name,
            pipeline.path,
            pipeline.config.image or settings.docker_default_image,
            lambda text: write_line(f"[env] {text}"),
        )
    except images.ImageBuildError as e:
        reason = f"environment build failed: {e}"
        return Outcome(RunStatus.FAILED, None, reason), reason
    except FastflowError as e:
        return Outcome(RunStatus.FAILED, None, str(e)), f"not started: {e}"


def _outcome(
    ended: Ended,
    timeout: float | None,
    memory_mb: int | None,
    metrics: MetricsFile,
    capture: LogCapture,
) -> Outcome:
    for what in sorted(metrics.soft_exceeded):
        capture.write_note(f"warning: the soft {what} limit was exceeded (the run went on)")
    if ended.kind == "timeout":
        return _timeout_outcome(ended, timeout, capture)
    return final_status(ended, memory_mb, capture)


# --- resumption after a restart ------------------------------------------------------------


def render_line(masker: Masker, mark: str | None = None) -> Callable[[int, bytes], bytes]:
    """How the capture writes one raw line: its stamp, its text without the stderr
    frames of ``mark`` (when given), masked (no newline)."""

    def render(ms: int, raw: bytes) -> bytes:
        base = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000))
        if mark is not None:
            raw = without_frames(raw, mark)
        text = masker.mask(raw.rstrip(b"\n").decode("utf-8", "replace"))
        return f"[{base}.{ms % 1000:03d}] {text}".encode()

    return render


def resume(
    db: Database,
    settings: Settings,
    run: PipelineRun,
    *,
    cancel: threading.Event | None,
    grace: float,
) -> Outcome:
    """Supervise the container of ``run`` (RUNNING, its previous supervisor gone) to its
    end, appending to the run's log what the container wrote meanwhile; finish the
    run's row. The row must already be owned by this process."""
    logs_root = settings.logs_root
    log_rel = run.log_file or logfiles.log_rel(run.pipeline_name, str(run.id))
    metrics_rel = run.metrics_file or logfiles.metrics_rel(run.pipeline_name, str(run.id))
    pipeline: pipelines.Pipeline | None
    try:
        pipeline = pipelines.load(settings.pipelines_dir, run.pipeline_name)
    except FastflowError:
        pipeline = None  # removed meanwhile: no timeout, nothing to mask
    values: dict[str, str] = {}
    if pipeline is not None:
        with contextlib.suppress(FastflowError):
            values = secret_store.values_for(db, settings, pipeline.config.secrets)
    try:
        executor = DockerExecutor(settings)
    except ExecutorError as e:
        return _fail(db, logs_root, run.id, f"interrupted: cannot re-attach: {e}")
    try:
        cid = executor.find(run.id, run.container_id)
        if cid is None:
            why = (
                "its container is gone"
                if run.container_id
                else "the fastflow process that ran it is gone (its container never started)"
            )
            return _fail(db, logs_root, run.id, f"interrupted: {why}")
        try:
            boundary = resuming.read_boundary_below(logs_root, log_rel)
        except UnsafePath as e:  # a link in the log's place: never truncated through
            with contextlib.suppress(ExecutorError):
                executor.remove(cid, run.id)  # nothing may supervise it
            return _fail(db, logs_root, run.id, f"interrupted: cannot re-attach: {e}")
        masker_values = secret_store.masked_for(db, settings, values)
        with _append(logs_root, log_rel, newline="", buffering=1 << 20) as log_out, \
                _append(logs_root, metrics_rel) as metrics_out:  # fmt: skip
            clock = FrameClock()
            capture = LogCapture(log_out, clock=clock, masker=Masker(masker_values))
            mark = capture.split_streams(mark_for(run.id))
            live = _LiveLog(capture, clock, log_out)
            skipper = resuming.Skipper(
                boundary, render_line(Masker(masker_values), mark), live.feed, live.note
            )
            config = pipeline.config if pipeline is not None else None
            metrics = MetricsFile(
                metrics_out,
                memory_soft_mb=config.limits.memory_soft_mb if config else None,
                cpu_soft=config.limits.cpu_soft if config else None,
            )
            timeout = pipeline.timeout if pipeline is not None else None
            deadline = run.started_at.timestamp() + timeout if timeout else None
            watch = Watch(deadline, cancel, grace)
            ended = _supervise(executor, cid, skipper, live, metrics, watch, boundary.since_ms)
            skipper.finish()
            capture.close()
            memory_mb = config.limits.memory_mb if config else None
            outcome = _outcome(ended, timeout, memory_mb, metrics, capture)
            capture.write_note(RESUMED_NOTE)
            _end(executor, settings, cid, run.id, outcome, capture)
            _sync(log_out)
            _sync(metrics_out)
    except ExecutorError as e:
        return _fail(db, logs_root, run.id, f"interrupted: cannot re-attach: {e}")
    finally:
        executor.close()
    runs.finish(
        db,
        run.id,
        outcome.status,
        outcome.exit_code,
        logfiles.size_below(logs_root, log_rel),
        outcome.reason,
    )
    return outcome


def _append(logs_root: Path, rel: str, **kwargs: Any) -> TextIO:
    """The run file ``rel`` open for appending text, through descriptors from
    ``LOGS_DIR`` (``runs.files.open_for_writing``: no link on the way is followed)."""
    fd = logfiles.open_for_writing(logs_root, rel, append=True)
    try:
        return cast(TextIO, open(fd, "a", encoding="utf-8", **kwargs))
    except BaseException:
        os.close(fd)
        raise


def _fail(db: Database, logs_root: Path, run_id: uuid.UUID, reason: str) -> Outcome:
    runs.fail_with_note(db, logs_root, run_id, reason)
    return Outcome(RunStatus.FAILED, None, reason)


def _sync(f: TextIO) -> None:
    with contextlib.suppress(OSError, ValueError):
        f.flush()
        os.fsync(f.fileno())


# --- housekeeping at start-up --------------------------------------------------------------


def uses_docker(db: Database, settings: Settings) -> bool:
    """Whether this installation uses Docker: ``EXECUTOR=docker``, a pipeline that asks
    for it, or a container run still RUNNING."""
    if settings.executor == "docker" or runs.container_runs(db):
        return True
    try:
        found = pipelines.discover(settings.pipelines_dir)
    except FastflowError:
        return False
    return any(p.config.executor == "docker" for p in found)


def remove_stale(db: Database, settings: Settings) -> int:
    """Remove the containers and volumes of this installation (or unlabelled by
    installation) whose run is not RUNNING; with ``DOCKER_KEEP_CONTAINERS=true`` the
    ones of runs that did not succeed stay. Returns how many were removed; raises
    ``ExecutorError`` when Docker cannot be reached."""
    executor = DockerExecutor(settings)
    try:
        items = [
            item for item in executor.leftovers() if item.instance in (None, executor.instance)
        ]
        ids: dict[str, uuid.UUID | None] = {}
        for item in items:
            try:
                ids[item.run_id] = uuid.UUID(item.run_id)
            except ValueError:
                ids[item.run_id] = None
        known = runs.statuses(db, [rid for rid in ids.values() if rid is not None])
        removed = 0
        for item in items:
            rid = ids[item.run_id]
            status = known.get(rid) if rid is not None else None
            if status in (RunStatus.RUNNING.value, RunStatus.PENDING.value):
                continue
            kept = settings.docker_keep_containers and status not in (None, RunStatus.SUCCESS.value)
            if kept:
                continue
            with contextlib.suppress(Exception):
                executor.remove_leftover(item)
                removed += 1
        return removed
    finally:
        executor.close()
