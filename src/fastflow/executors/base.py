"""The executor interface: what a run needs from whatever executes its process.

An executor starts a run's process from a :class:`LaunchSpec` and returns a *handle*, a
string fastflow persists on the run (``container_id``) so that a restarted server can
find the process again (``find``) and supervise it to its end. ``supervise`` streams
the output bytes, each chunk with the time the executor recorded it, to a sink; it
samples CPU and memory into a :class:`MetricsSink`; it enforces the :class:`Watch`
(deadline, cancel with a grace period) and says how the process ended
(:class:`Ended`). ``remove`` deletes what the run left (its process record, its
scratch space). The Docker executor implements it with containers and volumes; a
Kubernetes Jobs executor would with Jobs, pod logs (``sinceTime``) and the metrics API.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from fastflow.errors import FastflowError

# (Unix time in milliseconds when the executor recorded the bytes, the bytes)
OutputSink = Callable[[int, bytes], None]

EndKind = Literal["exited", "timeout", "cancelled", "lost"]


class ExecutorError(FastflowError):
    """The executor cannot run or reach a run's process (daemon unreachable, image
    missing, container gone); the message is safe to show and record."""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything an executor needs to start one run's process."""

    run_id: uuid.UUID
    pipeline: str
    folder: Path  # the pipeline's folder, visible read-only to the run
    image: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    network: str
    memory_mb: int | None = None
    cpu: float | None = None
    files: Mapping[str, bytes] = field(default_factory=dict)  # put into the workspace


@dataclass(frozen=True)
class Watch:
    """When to stop a run: ``deadline`` (Unix time; kill, TIMEOUT), ``cancel`` (stop
    with ``grace`` seconds before a kill, CANCELLED)."""

    deadline: float | None = None
    cancel: threading.Event | None = None
    grace: float = 10.0


@dataclass(frozen=True)
class Ended:
    """How a run's process ended. ``exited``: by itself (``exit_code``; negative: the
    signal that killed it; ``oom_killed``: the memory limit did); ``timeout`` and
    ``cancelled``: stopped by the watch; ``lost``: the executor could not tell
    (``detail`` says why)."""

    kind: EndKind
    exit_code: int | None = None
    oom_killed: bool = False
    memory_limit_mb: int | None = None
    detail: str = ""


class MetricsSink(Protocol):
    """Receives resource samples: ``sample`` while the run lives, ``close`` once."""

    def sample(self, cpu_percent: float, ram_bytes: int) -> None: ...

    def close(self, cpu_seconds: float | None, wall_seconds: float) -> None: ...


class Executor(Protocol):
    """A place where runs execute (see the module docstring)."""

    name: str

    def start(self, spec: LaunchSpec) -> str:
        """Start the run's process; return its handle. Raises ``ExecutorError``."""
        ...

    def find(self, run_id: uuid.UUID, handle: str | None) -> str | None:
        """The handle of ``run_id``'s process if it still exists (by ``handle``, else
        by the run id it was labelled with)."""
        ...

    def supervise(
        self,
        handle: str,
        sink: OutputSink,
        metrics: MetricsSink,
        watch: Watch,
        *,
        since_ms: int | None = None,
    ) -> Ended:
        """Stream the output (from ``since_ms`` on, else all of it) to ``sink`` until
        the process ended and its output is drained."""
        ...

    def remove(self, handle: str, run_id: uuid.UUID) -> None:
        """Delete the process record and the run's scratch space (gone is fine)."""
        ...
