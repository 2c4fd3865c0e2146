"""The Docker executor: one container per run, through the Docker SDK.

A run's container is named ``fastflow-run-<run id>`` and labelled ``fastflow.run_id``,
``fastflow.pipeline`` and ``fastflow.instance`` (this installation: a hash of its
``DATA_DIR`` and database, so two installations sharing a daemon never touch each
other's containers). It sees the pipeline folder read-only at ``/pipeline``, a named
volume ``fastflow-run-<run id>`` at ``/workspace`` (its working directory), the
environment it is given and nothing else of the host; it runs under Docker's init
(signals reach the pipeline, zombies are reaped), with ``no-new-privileges``, the
``json-file`` log driver (so its output can be read back after a restart), the memory
limit as a hard limit without swap and the CPU limit as a quota.

Guarantees of ``supervise``: every byte the container wrote reaches the sink once, in
Docker's order, with Docker's time; a deadline kills the container (SIGKILL); a cancel
stops it (SIGTERM, SIGKILL after the grace period); an OOM kill is reported as such;
a lost daemon or a container removed behind fastflow's back ends in ``lost``, never in
an exception. Errors never carry a traceback or a credential of ``DOCKER_HOST``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import os
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastflow.config import Settings
from fastflow.executors import logs
from fastflow.executors.base import (
    Ended,
    EndKind,
    ExecutorError,
    LaunchSpec,
    MetricsSink,
    OutputSink,
    Watch,
)
from fastflow.runs.bootstrap import MERGE_STDERR, bootstrap

if TYPE_CHECKING:
    import docker

LABEL_RUN = "fastflow.run_id"
LABEL_PIPELINE = "fastflow.pipeline"
LABEL_INSTANCE = "fastflow.instance"
PIPELINE_DIR = "/pipeline"
WORKSPACE = "/workspace"
API_TIMEOUT_S = 60
POLL_S = 0.2
STATS_EVERY_S = 1.0
SAMPLE_WINDOW = 2  # polls: CPU over the metrics line interval
DRAIN_TIMEOUT_S = 30.0  # after the exit: no output for this long ends the reading
DEFAULT_HOST = "unix:///var/run/docker.sock"

# The default command: ``python /pipeline/main.py`` under the runner's bootstrap, with
# stderr sent to stdout (fd 2 becomes fd 1) through one buffered writer: the log keeps
# the order in which the pipeline wrote to both, as with the local executor.
BOOTSTRAP = bootstrap(MERGE_STDERR)
DEFAULT_COMMAND = ("python", "-c", BOOTSTRAP, f"{PIPELINE_DIR}/main.py")


def docker_host() -> str:
    """Where the daemon is (``DOCKER_HOST`` as Docker reads it), credentials masked."""
    from fastflow.environments.builder import mask_credentials

    return mask_credentials(os.environ.get("DOCKER_HOST") or DEFAULT_HOST)


def reason_of(e: BaseException) -> str:
    """A short, traceback-free reason for a Docker error (the innermost OS error when
    there is one, else Docker's own explanation)."""
    from fastflow.environments.builder import mask_credentials

    seen: set[int] = set()
    todo: list[BaseException] = [e]
    while todo:
        err = todo.pop(0)
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.strerror:
            return err.strerror
        todo += [a for a in err.args if isinstance(a, BaseException)]
        todo += [c for c in (err.__cause__, err.__context__) if c is not None]
    raw = str(getattr(e, "explanation", None) or e).strip()
    text = mask_credentials(raw.splitlines()[0] if raw else type(e).__name__)
    return text if len(text) <= 300 else text[:299] + "…"


def connect(timeout: int = API_TIMEOUT_S) -> docker.DockerClient:
    """A client for the daemon of ``DOCKER_HOST`` (TLS per ``DOCKER_TLS_VERIFY`` /
    ``DOCKER_CERT_PATH``); ``ExecutorError`` when it cannot be reached."""
    try:
        import docker
    except ImportError as e:  # pragma: no cover - a dependency of fastflow
        raise ExecutorError(f"the Docker SDK is not installed ({e})") from None
    try:
        return docker.from_env(timeout=timeout)
    except Exception as e:
        raise ExecutorError(
            f"cannot reach the Docker daemon at {docker_host()}: {reason_of(e)}",
            hint="start Docker or set DOCKER_HOST",
        ) from None


def instance_label(settings: Settings) -> str:
    """This installation's label value: its ``DATA_DIR`` and database (no password)."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(settings.database_url).set(password=None).render_as_string()
    except Exception:
        url = "?"
    ident = f"{settings.data_dir.expanduser().resolve()}|{url}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def container_name(run_id: uuid.UUID) -> str:
    return f"fastflow-run-{run_id}"


def volume_name(run_id: uuid.UUID) -> str:
    return f"fastflow-run-{run_id}"


def exit_code_of(status: int) -> int:
    """Docker's exit status as fastflow records it: 128+N (Docker's init when the
    pipeline was killed by signal N) becomes -N, as for local runs."""
    return -(status - 128) if 128 < status <= 128 + 64 else status


@dataclass(frozen=True)
class Leftover:
    """A container or volume labelled with a run id."""

    kind: str  # "container" | "volume"
    ref: str  # container id or volume name
    run_id: str
    instance: str | None


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _parse_time(text: str | None) -> float | None:
    """Docker's RFC 3339 time with nanoseconds -> Unix seconds (None for the zero time)."""
    if not text or text.startswith("0001-"):
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    zone = ""
    for sign in ("+", "-"):
        if sign in frac:
            frac, _, rest = frac.partition(sign)
            zone = sign + rest
    try:
        when = datetime.fromisoformat(head + (zone or "+00:00"))
    except ValueError:
        return None
    return when.timestamp() + (float("0." + frac) if frac.isdigit() else 0.0)


class DockerExecutor:
    """The ``Executor`` of ``base`` on one Docker daemon (see the module docstring)."""

    name = "docker"

    def __init__(self, settings: Settings, client: docker.DockerClient | None = None) -> None:
        self._settings = settings
        self.client = client if client is not None else connect()
        self.instance = instance_label(settings)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    # --- start ----------------------------------------------------------------------------

    def labels(self, spec: LaunchSpec) -> dict[str, str]:
        return {
            LABEL_RUN: str(spec.run_id),
            LABEL_PIPELINE: spec.pipeline,
            LABEL_INSTANCE: self.instance,
        }

    def start(self, spec: LaunchSpec) -> str:
        """Create the run's volume and container, copy ``spec.files`` into the
        workspace, start it; return the container id. ``ExecutorError`` on failure
        (nothing is left behind)."""
        import docker
        from docker.types import LogConfig, Mount

        api = self.client.api
        labels = self.labels(spec)
        volume = volume_name(spec.run_id)
        memory = f"{spec.memory_mb}m" if spec.memory_mb else None
        try:
            api.create_volume(name=volume, labels=labels)
            host_config = api.create_host_config(
                mounts=[
                    Mount(PIPELINE_DIR, str(spec.folder.resolve()), type="bind", read_only=True),
                    Mount(WORKSPACE, volume, type="volume"),
                ],
                network_mode=spec.network,
                mem_limit=memory,
                memswap_limit=memory,
                nano_cpus=int(spec.cpu * 1e9) if spec.cpu else None,
                init=True,
                security_opt=["no-new-privileges"],
                log_config=LogConfig(type="json-file"),
            )
            created = api.create_container(
                spec.image,
                command=list(spec.command),
                environment=dict(spec.env),
                working_dir=WORKSPACE,
                labels=labels,
                host_config=host_config,
                name=container_name(spec.run_id),
                stdin_open=False,
                tty=False,
            )
        except docker.errors.ImageNotFound:
            self._discard(None, spec.run_id)
            raise ExecutorError(f"image {spec.image!r} is not on the Docker daemon") from None
        except Exception as e:
            self._discard(None, spec.run_id)
            raise ExecutorError(f"cannot create the container: {reason_of(e)}") from None
        cid = str(created["Id"])
        try:
            if spec.files:
                api.put_archive(cid, WORKSPACE, _tar(dict(spec.files)))
            api.start(cid)
        except Exception as e:
            self._discard(cid, spec.run_id)
            raise ExecutorError(f"cannot start the container: {reason_of(e)}") from None
        return cid

    def _discard(self, cid: str | None, run_id: uuid.UUID) -> None:
        with contextlib.suppress(Exception):
            self.remove(cid or container_name(run_id), run_id)

    # --- find, remove, leftovers --------------------------------------------------------------

    def find(self, run_id: uuid.UUID, handle: str | None) -> str | None:
        """The id of ``run_id``'s container (by ``handle``, else by label), or None."""
        import docker

        api = self.client.api
        if handle:
            try:
                return str(api.inspect_container(handle)["Id"])
            except docker.errors.NotFound:
                pass
            except Exception as e:
                raise ExecutorError(f"cannot inspect the container: {reason_of(e)}") from None
        try:
            found = api.containers(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})
        except Exception as e:
            raise ExecutorError(f"cannot list containers: {reason_of(e)}") from None
        return str(found[0]["Id"]) if found else None

    def remove(self, handle: str, run_id: uuid.UUID) -> None:
        """Remove the container (forced) and the run's volume; gone counts as removed."""
        import docker

        api = self.client.api
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(handle, force=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                api.remove_volume(volume_name(run_id))
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as e:
                # "volume is in use" right after a forced removal: the daemon catches up
                if e.status_code != 409 or time.monotonic() > deadline:
                    raise ExecutorError(f"cannot remove the volume: {reason_of(e)}") from None
                threading.Event().wait(0.1)

    def leftovers(self) -> list[Leftover]:
        """Every container and volume labelled with a run id (any installation)."""
        api = self.client.api
        out: list[Leftover] = []
        try:
            for c in api.containers(all=True, filters={"label": LABEL_RUN}):
                labels = c.get("Labels") or {}
                out.append(
                    Leftover("container", c["Id"], labels[LABEL_RUN], labels.get(LABEL_INSTANCE))
                )
            volumes = api.volumes(filters={"label": LABEL_RUN}).get("Volumes") or []
        except Exception as e:
            raise ExecutorError(f"cannot list containers: {reason_of(e)}") from None
        for v in volumes:
            labels = v.get("Labels") or {}
            out.append(Leftover("volume", v["Name"], labels[LABEL_RUN], labels.get(LABEL_INSTANCE)))
        return out

    def remove_leftover(self, item: Leftover) -> None:
        import docker

        api = self.client.api
        with contextlib.suppress(docker.errors.NotFound):
            if item.kind == "container":
                api.remove_container(item.ref, force=True)
            else:
                api.remove_volume(item.ref)

    # --- supervise ----------------------------------------------------------------------------

    def supervise(
        self,
        handle: str,
        sink: OutputSink,
        metrics: MetricsSink,
        watch: Watch,
        *,
        since_ms: int | None = None,
    ) -> Ended:
        """See ``base.Executor.supervise`` and the module docstring. A container that
        was created but never started (a crash in between) is started now."""
        return _Supervision(self.client, handle, sink, metrics, watch, since_ms).run()


class _Supervision:
    """The threads of one ``supervise``: output, exit, stats; the caller's thread
    enforces the watch."""

    def __init__(
        self,
        client: docker.DockerClient,
        cid: str,
        sink: OutputSink,
        metrics: MetricsSink,
        watch: Watch,
        since_ms: int | None,
    ) -> None:
        self.api = client.api
        self.cid = cid
        self.sink = sink
        self.metrics = metrics
        self.watch = watch
        self.since_ms = since_ms
        self.exited = threading.Event()
        self.output_done = threading.Event()
        self.quiet = threading.Event()  # set: the sink gets nothing more
        self.errors: list[str] = []
        self.cpu_total_ns: int | None = None
        self.last_output = time.monotonic()

    def run(self) -> Ended:
        import docker

        try:
            state = self.api.inspect_container(self.cid)["State"]
            if state.get("Status") == "created":
                self.api.start(self.cid)
        except docker.errors.NotFound:
            return Ended("lost", detail="its container is gone")
        except Exception as e:
            return Ended("lost", detail=f"lost the Docker daemon: {reason_of(e)}")
        threads = [
            threading.Thread(target=self._output, name=f"docker-logs-{self.cid[:12]}", daemon=True),
            threading.Thread(target=self._wait, name=f"docker-wait-{self.cid[:12]}", daemon=True),
            threading.Thread(target=self._stats, name=f"docker-stats-{self.cid[:12]}", daemon=True),
        ]
        for t in threads:
            t.start()
        kind: EndKind = self._enforce()
        # Docker's log API may trail the exit by many seconds after a burst: wait while
        # output still arrives; give up only when it stalled
        self.last_output = time.monotonic()
        while not self.output_done.wait(POLL_S):
            if time.monotonic() - self.last_output > DRAIN_TIMEOUT_S:
                self.errors.append("the container's output stopped arriving")
                break
        self.quiet.set()
        threads[2].join(timeout=5)
        return self._ended(kind)

    def _enforce(self) -> EndKind:
        """Wait for the exit; kill at the deadline, stop on cancel (or Ctrl-C)."""
        kind: EndKind = "exited"
        while True:
            try:
                if self.exited.wait(POLL_S):
                    return kind
                if kind != "exited":
                    continue  # stopping: the exit follows
                if self.watch.deadline is not None and time.time() >= self.watch.deadline:
                    kind = "timeout"
                    self._signal(stop=False)
                elif self.watch.cancel is not None and self.watch.cancel.is_set():
                    kind = "cancelled"
                    self._signal(stop=True)
            except KeyboardInterrupt:  # fastflow run interrupted: the container goes too
                kind = "cancelled"
                self._signal(stop=False)

    def _signal(self, *, stop: bool) -> None:
        import docker

        try:
            if stop:
                self.api.stop(self.cid, timeout=max(0, round(self.watch.grace)))
            else:
                self.api.kill(self.cid)
        except docker.errors.APIError as e:
            if e.status_code not in (404, 409):  # gone or not running: it ended anyway
                self.errors.append(f"cannot stop the container: {reason_of(e)}")
        except Exception as e:
            self.errors.append(f"cannot stop the container: {reason_of(e)}")

    def _output(self) -> None:
        def forward(ms: int, data: bytes) -> None:
            self.last_output = time.monotonic()
            if not self.quiet.is_set():
                self.sink(ms, data)

        since = self.since_ms / 1000 if self.since_ms else None
        try:
            entries = self.api.logs(
                self.cid, stream=True, follow=True, timestamps=True, since=since
            )
            logs.relay(entries, forward)
        except Exception as e:
            self.errors.append(f"reading the container's output failed: {reason_of(e)}")
        finally:
            self.output_done.set()

    def _wait(self) -> None:
        try:
            self.api.wait(self.cid, timeout=None)
        except Exception as e:
            self.errors.append(f"waiting for the container failed: {reason_of(e)}")
        finally:
            self.exited.set()

    def _stats(self) -> None:
        """Poll the stats API every ``STATS_EVERY_S``; the CPU of a sample is measured
        over the last ``SAMPLE_WINDOW`` polls (the metrics line interval), so a run
        that alternates work and sleep is not sampled in one phase only."""
        window: collections.deque[tuple[int, int]] = collections.deque(maxlen=SAMPLE_WINDOW + 1)
        while not self.exited.is_set():
            try:
                stat = self.api.stats(self.cid, stream=False, one_shot=True)
            except Exception:
                stat = None
            sample = _sample(stat) if isinstance(stat, dict) else None
            if sample is not None:
                total, system, cpus, ram = sample
                self.cpu_total_ns = total
                window.append((total, system))
                first_total, first_system = window[0]
                cpu = 0.0
                if system > first_system:
                    cpu = (total - first_total) / (system - first_system) * cpus * 100.0
                if not self.exited.is_set():
                    self.metrics.sample(max(cpu, 0.0), ram)
            self.exited.wait(STATS_EVERY_S)

    def _ended(self, kind: EndKind) -> Ended:
        import docker

        try:
            info = self.api.inspect_container(self.cid)
        except docker.errors.NotFound:
            self.metrics.close(None, 0.0)
            return Ended("lost", detail="its container was removed while it ran")
        except Exception as e:
            self.metrics.close(None, 0.0)
            return Ended("lost", detail=f"lost the Docker daemon: {reason_of(e)}")
        state = info.get("State") or {}
        began, ended = _parse_time(state.get("StartedAt")), _parse_time(state.get("FinishedAt"))
        wall = ended - began if began is not None and ended is not None and ended > began else 0.0
        cpu_s = self.cpu_total_ns / 1e9 if self.cpu_total_ns is not None else None
        self.metrics.close(cpu_s, wall)
        memory = (info.get("HostConfig") or {}).get("Memory") or 0
        limit_mb = int(memory) // 1_048_576 if memory else None
        if state.get("Running"):
            detail = "; ".join(self.errors) or "the container did not stop"
            return Ended("lost", detail=detail, memory_limit_mb=limit_mb)
        code = exit_code_of(int(state.get("ExitCode", 0)))
        oom = bool(state.get("OOMKilled"))
        return Ended(kind, exit_code=code, oom_killed=oom, memory_limit_mb=limit_mb)


def _sample(stat: dict[str, Any]) -> tuple[int, int, int, int] | None:
    """(container CPU ns, system CPU ns, CPUs, RAM bytes without the file cache) of one
    stats answer; None when the container is not running."""
    cpu = stat.get("cpu_stats") or {}
    usage = cpu.get("cpu_usage") or {}
    memory = stat.get("memory_stats") or {}
    if "total_usage" not in usage or "usage" not in memory:
        return None
    cpus = cpu.get("online_cpus") or len(usage.get("percpu_usage") or []) or 1
    inner = memory.get("stats") or {}
    cache = inner.get("total_inactive_file", inner.get("inactive_file", 0))
    ram = max(0, int(memory["usage"]) - int(cache))
    return int(usage["total_usage"]), int(cpu.get("system_cpu_usage") or 0), int(cpus), ram
