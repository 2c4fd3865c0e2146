"""Parse a ``pipeline.json``: fastflow's own keys and Fast-Flow's aliases for them.

Guarantees: every key is either understood or refused — an unknown key, or a Fast-Flow
key fastflow does not implement yet, is an ``InvalidPipelineConfig`` naming the key and
the file, never silently ignored; every value is checked (type, range, cron syntax, time
zone, ISO 8601 times) with a message that names the key. Aliases mean exactly what their
native counterparts mean (docs/migrating-from-fast-flow.md maps every key).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastflow.config import cron_problem
from fastflow.errors import InvalidPipelineConfig
from fastflow.runs import params
from fastflow.runs.specs import (
    DEFAULT_MISFIRE_GRACE_S,
    LimitsSpec,
    NotifySpec,
    Overlap,
    RetrySpec,
    ScheduleSpec,
    TriggerSpec,
)

NATIVE_KEYS = frozenset(
    {
        "description",
        "timeout",
        "env",
        "retention",
        "schedules",
        "max_instances",
        "on_overlap",
        "retries",
        "triggers",
        "notify",
        "enabled",
        "tags",
        "python",
        "secrets",
        "limits",
        "executor",
        "image",
        "network",
        "command",
    }
)
FASTFLOW_KEYS = frozenset(
    {
        "schedule_cron",
        "schedule_interval_seconds",
        "schedule_start",
        "schedule_end",
        "run_once_at",
        "retry_attempts",
        "retry_strategy",
        "downstream_triggers",
        "default_env",
        "webhook_key",
        "type",
        "python_version",
        "cpu_hard_limit",
        "mem_hard_limit",
        "cpu_soft_limit",
        "mem_soft_limit",
    }
)
# Fast-Flow keys with no fastflow meaning yet: refused, so that nobody relies on them
NOT_IMPLEMENTED = {
    "restart_on_crash": "daemon restarts are not implemented",
    "restart_cooldown": "daemon restarts are not implemented",
    "restart_interval": "daemon restarts are not implemented",
    "cells": "notebook pipelines are not implemented",
    "encrypted_env": (
        "values encrypted with another product's key cannot be read here; store each "
        'value with `fastflow secret set NAME` and list the names in "secrets"'
    ),
}
SCHEDULE_KEYS = frozenset(
    {
        "cron",
        "interval_seconds",
        "timezone",
        "start",
        "end",
        "env",
        "enabled",
        "misfire_grace_seconds",
        # Fast-Flow's names inside ``schedules[]``
        "id",
        "schedule_cron",
        "schedule_interval_seconds",
        "schedule_start",
        "schedule_end",
        "default_env",
        "timeout",
        "retry_attempts",
        "retry_strategy",
        "webhook_key",
    }
)
MAX_RETRIES = 100
MAX_INSTANCES = 1000
MAX_MEMORY_MB = 16 * 1024 * 1024  # 16 TiB
MAX_CPUS = 1024
MAX_INTERVAL_SECONDS = 100 * 366 * 86400  # a century: larger steps overflow every date
MIN_YEAR, MAX_YEAR = 1970, 9998  # schedule start/end: room for a time zone either side
SECRET_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_PYTHON_RE = re.compile(r"^3\.\d{1,2}(\.\d{1,2})?$")
_NAME_RE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,255}$")
Executor = Literal["local", "docker"]
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a ``pipeline.json`` says beyond the retention overrides."""

    description: str = ""
    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    tags: tuple[str, ...] = ()
    schedules: tuple[ScheduleSpec, ...] = ()
    max_instances: int = 1
    on_overlap: Overlap = "skip"
    retries: RetrySpec = field(default_factory=RetrySpec)
    triggers: TriggerSpec = field(default_factory=TriggerSpec)
    notify: NotifySpec = field(default_factory=NotifySpec)
    # webhook keys from the file (Fast-Flow): run_config_id (None = pipeline) -> key
    webhook_keys: dict[str | None, str] = field(default_factory=dict)
    # per schedule (run_config_id) overrides of timeout and retries (Fast-Flow)
    schedule_timeouts: dict[str, float | None] = field(default_factory=dict)
    schedule_retries: dict[str, RetrySpec] = field(default_factory=dict)
    # the interpreter version ("3.11"; None = fastflow's own), the secrets the run gets
    # as environment variables, its resource limits
    python: str | None = None
    secrets: tuple[str, ...] = ()
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    # where it runs (issue 15): None = EXECUTOR; a container's image (None =
    # DOCKER_DEFAULT_IMAGE), network (None = DOCKER_NETWORK) and command (None =
    # ``python main.py``)
    executor: Executor | None = None
    image: str | None = None
    network: str | None = None
    command: tuple[str, ...] | None = None


class _Reader:
    """Typed access to one JSON object, with errors that name the file and the key."""

    def __init__(self, data: dict[str, Any], where: Path, prefix: str = "") -> None:
        self.data, self.where, self.prefix = data, where, prefix

    def fail(self, key: str, what: str) -> InvalidPipelineConfig:
        return InvalidPipelineConfig(f"{self.where}: {self.prefix}{key} {what}")

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def number(self, key: str, *, minimum: float, integer: bool = False) -> float | None:
        raw = self.data.get(key)
        if raw is None:
            return None
        ok = isinstance(raw, int) if integer else isinstance(raw, int | float)
        if isinstance(raw, bool) or not ok or raw < minimum or raw != raw:
            kind = "an integer" if integer else "a number"
            raise self.fail(key, f"must be {kind} >= {minimum:g} (got {raw!r})")
        if raw > 10**12:
            raise self.fail(key, f"is too large (got {raw!r})")
        return float(raw)

    def integer(self, key: str, *, minimum: int, maximum: int | None = None) -> int | None:
        value = self.number(key, minimum=minimum, integer=True)
        if value is not None and maximum is not None and value > maximum:
            raise self.fail(key, f"must be at most {maximum} (got {int(value)})")
        return None if value is None else int(value)

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.data.get(key, default)
        if not isinstance(raw, bool):
            raise self.fail(key, f"must be true or false (got {raw!r})")
        return raw

    def text(self, key: str, *, secret: bool = False) -> str | None:
        """A non-empty string; ``secret``: an error names the value's type, never the
        value (a key written with the wrong type is still the key)."""
        raw = self.data.get(key)
        if raw is None:
            return None
        if not isinstance(raw, str) or not raw.strip():
            got = f"a {type(raw).__name__}" if secret else repr(raw)
            raise self.fail(key, f"must be a non-empty string (got {got})")
        return raw

    def env(self, key: str) -> dict[str, str]:
        """Environment variables: text, numbers (as JSON writes them) or true/false;
        each name and value one a process can be started with (``params.problem``)."""
        raw = self.data.get(key, {})
        if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
            raise self.fail(key, "must be an object of strings")
        out: dict[str, str] = {}
        for name, value in raw.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str | int | float):
                text = value if isinstance(value, str) else json.dumps(value)
            else:
                kind = "null" if value is None else type(value).__name__
                raise self.fail(key, f"{name!r} must be text or a number, not {kind}")
            found = params.problem(name, text)
            if found is not None:
                raise self.fail(key, found)
            out[name] = text
        return out

    def names(self, key: str) -> tuple[str, ...]:
        raw = self.data.get(key, [])
        if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
            raise self.fail(key, "must be a list of pipeline names")
        return tuple(raw)

    def when(self, key: str) -> datetime | None:
        raw = self.text(key)
        if raw is None:
            return None
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
        except (ValueError, OverflowError):
            raise self.fail(key, f"must be an ISO 8601 time (got {raw!r})") from None
        if not MIN_YEAR <= value.year <= MAX_YEAR:
            raise self.fail(key, f"must be a time between the years {MIN_YEAR} and {MAX_YEAR}")
        return value

    def obj(self, key: str) -> dict[str, Any]:
        raw = self.data.get(key, {})
        if not isinstance(raw, dict):
            raise self.fail(key, "must be an object")
        return raw

    def unknown(self, known: frozenset[str]) -> None:
        for key in self.data:
            if key in NOT_IMPLEMENTED:
                raise self.fail(key, f"is not supported: {NOT_IMPLEMENTED[key]}")
            if key not in known:
                raise self.fail(key, "is not a known pipeline.json key")


def _check_cron(r: _Reader, key: str, expr: str) -> str:
    problem = cron_problem(expr)
    if problem is not None:
        raise r.fail(key, f"{problem} (got {expr!r})")
    return expr


def _check_tz(r: _Reader, key: str, name: str | None) -> str | None:
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise r.fail(
            key, f"must be an IANA time zone such as 'Europe/Berlin' (got {name!r})"
        ) from None
    return name


def _retry_strategy(r: _Reader, attempts: int | None) -> RetrySpec:
    """Fast-Flow's ``retry_attempts`` + ``retry_strategy``."""
    s = _Reader(r.obj("retry_strategy"), r.where, f"{r.prefix}retry_strategy.")
    kind = s.data.get("type", "custom_schedule" if s.has("delays") else "fixed_delay")
    s.unknown(frozenset({"type", "initial_delay", "max_delay", "multiplier", "delay", "delays"}))
    if s.has("delays") and kind != "custom_schedule":
        raise s.fail(
            "delays", f"is used only with type custom_schedule (type is {kind!r}): remove one"
        )
    base = RetrySpec(max=attempts or 0, delay_seconds=60.0)
    if kind == "exponential_backoff":
        return RetrySpec(
            max=base.max,
            backoff="exponential",
            delay_seconds=_or(s.number("initial_delay", minimum=0), 60.0),
            max_delay_seconds=s.number("max_delay", minimum=0),
            multiplier=_or(s.number("multiplier", minimum=1), 2.0),
        )
    if kind == "fixed_delay":
        return RetrySpec(max=base.max, delay_seconds=_or(s.number("delay", minimum=0), 60.0))
    if kind == "custom_schedule":
        return RetrySpec(max=base.max, backoff="custom_schedule", delays=_delays(s))
    raise s.fail("type", f"must be exponential_backoff, fixed_delay or custom_schedule ({kind!r})")


def _or(value: float | None, default: float) -> float:
    """``value`` unless it was not given (a 0 given is a 0)."""
    return default if value is None else value


def _delays(r: _Reader) -> tuple[float, ...]:
    raw = r.data.get("delays", [])
    ok = isinstance(raw, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x <= 10**9 for x in raw
    )
    if not ok or not raw:
        raise r.fail("delays", "must be a non-empty list of seconds >= 0")
    return tuple(float(x) for x in raw)


def _retries(r: _Reader) -> RetrySpec:
    if r.has("retries"):
        aliases = [k for k in ("retry_attempts", "retry_strategy") if r.has(k)]
        if aliases:
            raise r.fail(
                "retries",
                f"and {' and '.join(aliases)} (Fast-Flow's names) both say how to retry: "
                "keep one of them",
            )
        n = _Reader(r.obj("retries"), r.where, "retries.")
        n.unknown(frozenset({"max", "delay_seconds", "backoff", "max_delay_seconds", "delays"}))
        # ``delays`` alone means a custom schedule; next to another backoff it would be
        # ignored, so it is refused (an outside audit)
        backoff = n.data.get("backoff", "custom_schedule" if n.has("delays") else "fixed")
        if backoff not in ("exponential", "fixed", "custom_schedule"):
            raise n.fail("backoff", f"must be exponential, fixed or custom_schedule ({backoff!r})")
        if n.has("delays") and backoff != "custom_schedule":
            raise n.fail(
                "delays",
                f"is used only with backoff custom_schedule (backoff is {backoff!r}): "
                "remove one of them",
            )
        return RetrySpec(
            max=n.integer("max", minimum=0) or 0,
            delay_seconds=n.number("delay_seconds", minimum=0) or 0.0,
            backoff=backoff,
            max_delay_seconds=n.number("max_delay_seconds", minimum=0),
            delays=_delays(n) if backoff == "custom_schedule" else (),
        )
    attempts = r.integer("retry_attempts", minimum=0)
    if r.has("retry_strategy") or attempts:
        return _retry_strategy(r, attempts)
    return RetrySpec()


def _limit_retries(r: _Reader, spec: RetrySpec) -> RetrySpec:
    if spec.max > MAX_RETRIES:
        raise r.fail("retries", f"allow at most {MAX_RETRIES} attempts after the first")
    return spec


def _one_schedule(r: _Reader, key: str) -> ScheduleSpec:
    """One ``schedules[]`` entry, native or Fast-Flow names."""
    r.unknown(SCHEDULE_KEYS)
    for native, fast_flow in _SCHEDULE_ALIASES:
        if r.has(native) and r.has(fast_flow) and _meaning(r, native) != _meaning(r, fast_flow):
            raise r.fail(native, f"and {fast_flow} (Fast-Flow's name) differ: keep one")
    cron = r.text("cron") or r.text("schedule_cron")
    interval = r.integer("interval_seconds", minimum=1, maximum=MAX_INTERVAL_SECONDS)
    if interval is None:
        interval = r.integer("schedule_interval_seconds", minimum=1, maximum=MAX_INTERVAL_SECONDS)
    if cron is not None and interval is not None:
        if r.has("cron") or r.has("interval_seconds"):
            raise r.fail("cron", "and interval_seconds exclude each other: give one")
        interval = None  # Fast-Flow: cron wins when both are given
    if cron is None and interval is None:
        raise r.fail("cron", "or interval_seconds is required in every schedule")
    start = r.when("start") or r.when("schedule_start")
    end = r.when("end") or r.when("schedule_end")
    if start is not None and end is not None and end < start:
        raise r.fail("end", "is before start")
    env = _env(r)
    config_id = r.text("id")
    return ScheduleSpec(
        key=config_id or key,
        cron=_check_cron(r, "cron", cron) if cron is not None else None,
        interval_seconds=interval,
        timezone=_check_tz(r, "timezone", r.text("timezone")),
        start=start,
        end=end,
        env=env,
        enabled=r.boolean("enabled", True),
        misfire_grace_seconds=_grace(r),
        run_config_id=config_id,
    )


def _grace(r: _Reader) -> int:
    grace = r.integer("misfire_grace_seconds", minimum=0)
    return DEFAULT_MISFIRE_GRACE_S if grace is None else grace


def _max_instances(r: _Reader) -> int:
    n = r.integer("max_instances", minimum=1)
    if n is not None and n > MAX_INSTANCES:
        raise r.fail("max_instances", f"must be at most {MAX_INSTANCES} (got {n})")
    return n or 1


# a schedule's keys and their Fast-Flow names: both given must agree (``env`` and
# ``default_env`` are merged, see ``_env``)
def _meaning(r: _Reader, key: str) -> object:
    """What a schedule key says, for comparing a native key with its alias: the same
    instant written two ways, or a cron with other spacing, agree (each value is also
    validated here)."""
    if key.endswith("interval_seconds"):
        return r.integer(key, minimum=1, maximum=MAX_INTERVAL_SECONDS)
    if key.endswith(("start", "end")):
        return r.when(key)
    return " ".join(str(r.text(key)).split())


_SCHEDULE_ALIASES = (
    ("cron", "schedule_cron"),
    ("interval_seconds", "schedule_interval_seconds"),
    ("start", "schedule_start"),
    ("end", "schedule_end"),
)


def _schedules(r: _Reader) -> tuple[ScheduleSpec, ...]:
    raw = r.data.get("schedules")
    out: list[ScheduleSpec] = []
    if raw is not None:
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            raise r.fail("schedules", "must be a list of objects")
        out = [
            _one_schedule(_Reader(item, r.where, f"schedules[{i}]."), str(i))
            for i, item in enumerate(raw)
        ]
        keys = [s.key for s in out]
        if len(set(keys)) != len(keys):
            raise r.fail("schedules", "have duplicate ids")
        if "once" in keys and r.has("run_once_at"):
            raise r.fail("schedules", "have an entry with the id 'once', which run_once_at uses")
    top = {
        k: r.data[k]
        for k in ("schedule_cron", "schedule_interval_seconds", "schedule_start", "schedule_end")
        if r.has(k)
    }
    if raw and top:
        raise r.fail(
            "schedules",
            f"and {', '.join(top)} (one schedule in Fast-Flow's top-level keys) both define "
            "schedules: move it into schedules[]",
        )
    if "schedule_cron" in top or "schedule_interval_seconds" in top:
        out.append(_one_schedule(_Reader(top, r.where), "0"))
    once = r.when("run_once_at")
    if once is not None:
        out.append(ScheduleSpec(key="once", once_at=once, misfire_grace_seconds=10**9))
    return tuple(out)


def _triggers(r: _Reader) -> TriggerSpec:
    success: list[str] = []
    failure: list[str] = []
    if r.has("triggers"):
        t = _Reader(r.obj("triggers"), r.where, "triggers.")
        t.unknown(frozenset({"on_success", "on_failure"}))
        success += t.names("on_success")
        failure += t.names("on_failure")
    configs: list[tuple[str, str]] = []
    raw = r.data.get("downstream_triggers", [])
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise r.fail("downstream_triggers", "must be a list of objects")
    for i, item in enumerate(raw):
        d = _Reader(item, r.where, f"downstream_triggers[{i}].")
        d.unknown(frozenset({"pipeline", "on_success", "on_failure", "run_config_id", "on_route"}))
        if d.has("on_route"):
            raise d.fail("on_route", "is not supported: route-based triggers are not implemented")
        name = d.text("pipeline")
        if name is None:
            raise d.fail("pipeline", "is required")
        config_id = d.text("run_config_id")
        if config_id is not None:
            if any(n == name and c != config_id for n, c in configs):
                raise d.fail("run_config_id", f"differs from another trigger of {name!r}")
            configs.append((name, config_id))
        if d.boolean("on_success", True):
            success.append(name)
        if d.boolean("on_failure", False):
            failure.append(name)
    return TriggerSpec(
        tuple(dict.fromkeys(success)), tuple(dict.fromkeys(failure)), tuple(dict.fromkeys(configs))
    )


def _env(r: _Reader) -> dict[str, str]:
    """``env`` over Fast-Flow's ``default_env``; a variable both give different values
    is an error (which one was meant?)."""
    fastflow, native = r.env("default_env"), r.env("env")
    clash = sorted(k for k in native.keys() & fastflow.keys() if native[k] != fastflow[k])
    if clash:
        raise r.fail(
            "env",
            f"and default_env (Fast-Flow's name) give {', '.join(map(repr, clash))} different "
            "values: keep one",
        )
    return {**fastflow, **native}


def _notify(r: _Reader) -> NotifySpec:
    n = _Reader(r.obj("notify"), r.where, "notify.")
    n.unknown(frozenset({"on_failure", "on_recovery"}))
    return NotifySpec(n.boolean("on_failure", True), n.boolean("on_recovery", True))


def _timeout(r: _Reader) -> float | None:
    value = r.number("timeout", minimum=0)
    return value or None  # 0 = no timeout (as in Fast-Flow)


def _webhook_keys(r: _Reader) -> dict[str | None, str]:
    keys: dict[str | None, str] = {}
    top = r.text("webhook_key", secret=True)
    if top:
        keys[None] = top
    for i, item in enumerate(r.data.get("schedules") or []):
        key = _Reader(item, r.where, f"schedules[{i}].").text("webhook_key", secret=True)
        if key:
            if key in keys.values():
                raise r.fail(f"schedules[{i}].webhook_key", "is used twice in this pipeline")
            keys[str(item.get("id") or i)] = key  # the schedule's ``key`` (its id, or index)
    return keys


def _per_schedule(r: _Reader) -> tuple[dict[str, float | None], dict[str, RetrySpec]]:
    timeouts: dict[str, float | None] = {}
    retries: dict[str, RetrySpec] = {}
    for i, item in enumerate(r.data.get("schedules") or []):
        s = _Reader(item, r.where, f"schedules[{i}].")
        key = str(item.get("id") or i)  # the schedule's ``key`` (its id, or its index)
        if s.has("timeout"):
            timeouts[key] = _timeout(s)
        if s.has("retry_attempts") or s.has("retry_strategy"):
            retries[key] = _limit_retries(s, _retries(s))
    return timeouts, retries


def _type(r: _Reader) -> None:
    kind = r.data.get("type", "script")
    if kind != "script":
        raise r.fail("type", f"is not supported: only 'script' pipelines run ({kind!r})")


def _python(r: _Reader) -> str | None:
    if r.has("python") and r.has("python_version"):
        raise r.fail("python", "and python_version mean the same: give one")
    key = "python" if r.has("python") else "python_version"
    raw = r.data.get(key)
    if raw is None:
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        text = str(raw)  # 3.11 written as a number
        if isinstance(raw, float) and text.partition(".")[2] in ("1", "2"):
            # JSON reads 3.10 as 3.1 (and 3.20 as 3.2): the version meant cannot be told
            raise r.fail(
                key,
                f'must be written as a string such as "3.10" (got the number {raw!r}, '
                "which JSON reads without its trailing 0)",
            )
        raw = text
    if not isinstance(raw, str) or not _PYTHON_RE.fullmatch(raw.strip()):
        raise r.fail(key, f'must be a Python version such as "3.11" (got {raw!r})')
    return raw.strip()


def _secrets(r: _Reader) -> tuple[str, ...]:
    raw = r.data.get("secrets", [])
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise r.fail("secrets", "must be a list of secret names")
    bad = [x for x in raw if not SECRET_NAME_RE.fullmatch(x)]
    if bad:
        raise r.fail("secrets", f"must be names matching [A-Z_][A-Z0-9_]* (got {bad[0]!r})")
    return tuple(dict.fromkeys(raw))


def _mebibytes(r: _Reader, key: str) -> int | None:
    """A memory size: an integer of MiB, or Fast-Flow's "512m" / "1g" / "1.5g"."""
    raw = r.data.get(key)
    if raw is None:
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        mib = raw if key.endswith("_mb") else raw // (1024 * 1024)  # bare bytes (Docker)
    else:
        m = _SIZE_RE.match(raw) if isinstance(raw, str) else None
        if m is None:
            raise r.fail(key, f'must be a size such as "512m" or "2g" (got {raw!r})')
        factor = {"": 1 / (1024 * 1024), "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
        mib = int(float(m.group(1)) * factor[m.group(2).lower()])
    if not 1 <= mib <= MAX_MEMORY_MB:
        raise r.fail(key, f"must be from 1 MiB to {MAX_MEMORY_MB} MiB (got {raw!r})")
    return mib


def _cpus(r: _Reader, key: str) -> float | None:
    value = r.number(key, minimum=0.01)
    if value is not None and value > MAX_CPUS:
        raise r.fail(key, f"must be at most {MAX_CPUS} CPUs (got {value:g})")
    return value


def _limits(r: _Reader) -> LimitsSpec:
    native = _Reader(r.obj("limits"), r.where, "limits.")
    native.unknown(frozenset({"memory_mb", "cpu", "memory_soft_mb", "cpu_soft"}))
    pairs = (
        ("memory_mb", "mem_hard_limit"),
        ("cpu", "cpu_hard_limit"),
        ("memory_soft_mb", "mem_soft_limit"),
        ("cpu_soft", "cpu_soft_limit"),
    )
    for mine, theirs in pairs:
        if native.has(mine) and r.has(theirs):
            raise r.fail(theirs, f"and limits.{mine} mean the same: give one")
    spec = LimitsSpec(
        memory_mb=_mebibytes(native, "memory_mb") or _mebibytes(r, "mem_hard_limit"),
        cpu=_cpus(native, "cpu") or _cpus(r, "cpu_hard_limit"),
        memory_soft_mb=_mebibytes(native, "memory_soft_mb") or _mebibytes(r, "mem_soft_limit"),
        cpu_soft=_cpus(native, "cpu_soft") or _cpus(r, "cpu_soft_limit"),
    )
    return spec


def parse(data: dict[str, Any], where: Path) -> PipelineConfig:
    """The configuration in ``data`` (the JSON object of ``where``)."""
    r = _Reader(data, where)
    r.unknown(NATIVE_KEYS | FASTFLOW_KEYS)
    _type(r)
    on_overlap = data.get("on_overlap", "skip")
    if on_overlap not in ("skip", "queue"):
        raise r.fail("on_overlap", f"must be 'skip' or 'queue' (got {on_overlap!r})")
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise r.fail("tags", "must be a list of strings")
    description = data.get("description")
    description = "" if description is None else description
    if not isinstance(description, str):
        raise r.fail("description", f"must be a string (got a {type(description).__name__})")
    schedules = _schedules(r)  # first: the per-schedule readers below assume its shape
    timeouts, per_schedule_retries = _per_schedule(r)
    return PipelineConfig(
        description=description,
        timeout=_timeout(r),
        env=_env(r),
        enabled=r.boolean("enabled", True),
        tags=tuple(tags),
        schedules=schedules,
        max_instances=_max_instances(r),
        on_overlap=on_overlap,
        retries=_limit_retries(r, _retries(r)),
        triggers=_triggers(r),
        notify=_notify(r),
        webhook_keys=_webhook_keys(r),
        schedule_timeouts=timeouts,
        schedule_retries=per_schedule_retries,
        python=_python(r),
        secrets=_secrets(r),
        limits=_limits(r),
        executor=_executor(r),
        image=_plain_text(r, "image"),
        network=_plain_text(r, "network"),
        command=_command(r),
    )


def _executor(r: _Reader) -> Executor | None:
    raw = r.data.get("executor")
    if raw is None:
        return None
    if raw not in ("local", "docker"):
        raise r.fail("executor", f"must be 'local' or 'docker' (got {raw!r})")
    return cast(Executor, raw)


def _plain_text(r: _Reader, key: str) -> str | None:
    """A short name (image, network): no spaces or control characters."""
    raw = r.data.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str) or not _NAME_RE.fullmatch(raw):
        raise r.fail(key, f"must be a name without spaces, at most 255 characters (got {raw!r})")
    return raw


def _command(r: _Reader) -> tuple[str, ...] | None:
    """The container's command: a list of strings, or one string split like a shell."""
    raw = r.data.get("command")
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            parts = shlex.split(raw)
        except ValueError as e:
            raise r.fail("command", f"cannot be split into words: {e}") from None
    elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        parts = list(raw)
    else:
        raise r.fail("command", "must be a string or a list of strings")
    if not parts or any("\x00" in p for p in parts):
        raise r.fail("command", "must name a program (got an empty command)")
    return tuple(parts)
