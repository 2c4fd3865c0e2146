"""What a ``pipeline.json`` asks the orchestrator for, as immutable values: schedules,
retries, downstream triggers, failure notifications. Parsed (native keys and Fast-Flow
aliases) by ``runs.pipeline_config``; computed with by ``orchestration``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Backoff = Literal["exponential", "fixed", "custom_schedule"]
Overlap = Literal["skip", "queue"]
DEFAULT_MISFIRE_GRACE_S = 300


@dataclass(frozen=True)
class ScheduleSpec:
    """One schedule: exactly one of ``cron`` (5 fields), ``interval_seconds`` or
    ``once_at``. Times are timezone-aware UTC. ``timezone`` is an IANA name, or None for
    the server's ``SCHEDULER_TIMEZONE``. ``key`` identifies the schedule within its
    pipeline (the Fast-Flow ``id``, else its position) — one run per (pipeline, key,
    tick) is enforced in the database."""

    key: str
    cron: str | None = None
    interval_seconds: int | None = None
    once_at: datetime | None = None
    timezone: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    env: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    misfire_grace_seconds: int = DEFAULT_MISFIRE_GRACE_S
    run_config_id: str | None = None  # the Fast-Flow schedule ``id``, recorded on runs


@dataclass(frozen=True)
class RetrySpec:
    """Attempts after the first: ``max``; the wait before attempt n+1 (n >= 1) is
    ``delay_seconds`` (fixed), ``delay_seconds`` × ``multiplier``^(n−1) (exponential) or
    ``delays[n−1]`` (custom_schedule, the last value repeating), capped by
    ``max_delay_seconds``."""

    max: int = 0
    delay_seconds: float = 0.0
    backoff: Backoff = "fixed"
    max_delay_seconds: float | None = None
    multiplier: float = 2.0
    delays: tuple[float, ...] = ()


@dataclass(frozen=True)
class TriggerSpec:
    """Pipelines queued when a run ends (after its last attempt)."""

    on_success: tuple[str, ...] = ()
    on_failure: tuple[str, ...] = ()
    # Fast-Flow ``downstream_triggers[].run_config_id``: (target, the target's schedule
    # ``id``) — the triggered run is that configuration (its run_config_id and env)
    configs: tuple[tuple[str, str], ...] = ()

    def config_of(self, target: str) -> str | None:
        return next((cfg for name, cfg in self.configs if name == target), None)


@dataclass(frozen=True)
class NotifySpec:
    on_failure: bool = True
    on_recovery: bool = True


@dataclass(frozen=True)
class LimitsSpec:
    """Resource limits of one run. Hard limits stop the run (``memory_mb``: the process
    tree's resident memory in MiB; ``cpu``: CPUs, enforced only by an executor that can);
    soft limits only mark the run's metrics and warn."""

    memory_mb: int | None = None
    cpu: float | None = None
    memory_soft_mb: int | None = None
    cpu_soft: float | None = None
