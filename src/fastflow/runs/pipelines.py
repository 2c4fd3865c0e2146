"""Pipeline discovery, name validation and ``pipeline.json``.

A pipeline is a folder ``PIPELINES_DIR/<name>/`` containing ``main.py``. Names are used
as folder names under LOGS_DIR and as S3 key segments, so they are validated strictly:
Unicode letters, digits, spaces, ``-``, ``_`` and ``.``; no leading dot, at most 100
characters.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastflow import strict_json
from fastflow.config import MAX_LOG_SIZE_MB, MAX_RETENTION_DAYS, MAX_RETENTION_RUNS
from fastflow.errors import InvalidPipelineConfig, InvalidPipelineName, PipelineNotFound
from fastflow.runs.pipeline_config import PipelineConfig, parse

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 100
# names the archive uses itself: ``_manifests`` is the bucket's manifest folder
# (``archive.manifests.DIRECTORY``), next to the pipelines' folders
RESERVED_NAMES = frozenset({"_manifests"})
_CRON_PROBE = 1767225600.0  # 2026-01-01 UTC: where a cron's next match is looked for
MAX_CONFIG_BYTES = 1024 * 1024  # pipeline.json at most (a real one is a few hundred bytes)
MIN_WEBHOOK_KEY = 16  # characters: shorter keys in pipeline.json are warned about
_ALLOWED_PUNCT = frozenset(" -_.")


# letters (category Lo) that render as nothing: a name of them is invisible in every list
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


def validate_name(name: str) -> str:
    """Return ``name`` unchanged if it is a valid pipeline name, else raise."""
    # repr: readable letters (``'ünï'``), every unprintable or invisible one escaped
    shown = repr(name) if len(name) <= 120 else repr(name[:117]) + "..."
    if not name:
        raise InvalidPipelineName("pipeline name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidPipelineName(
            f"pipeline name {shown} is longer than {MAX_NAME_LENGTH} characters"
        )
    if "/" in name or "\\" in name:
        raise InvalidPipelineName(f"pipeline name {shown} must not contain '/' or '\\'")
    if name.startswith("."):
        raise InvalidPipelineName(f"pipeline name {shown} must not start with '.'")
    if name in RESERVED_NAMES:
        raise InvalidPipelineName(
            f"pipeline name {shown} is reserved (the archive's manifest folder)"
        )
    if name != name.strip():
        raise InvalidPipelineName(f"pipeline name {shown} must not start or end with whitespace")
    for ch in name:
        if unicodedata.category(ch).startswith("C"):
            raise InvalidPipelineName(
                f"pipeline name {shown} contains a control character (U+{ord(ch):04X})"
            )
        if ch in _BLANK_LETTERS:
            raise InvalidPipelineName(
                f"pipeline name {shown} contains a letter that shows as nothing (U+{ord(ch):04X})"
            )
        if not (ch.isalnum() or ch in _ALLOWED_PUNCT):
            raise InvalidPipelineName(
                f"pipeline name {shown} contains {ch!r}; allowed are letters, digits, "
                "spaces, '-', '_' and '.'"
            )
    return name


@dataclass(frozen=True)
class Retention:
    """Per-pipeline overrides of the global retention settings (None = use global).

    ``keep_last_success``: the newest SUCCESS run survives count and age retention;
    ``keep_failed``: the newest N failed runs (FAILED, TIMEOUT) do too."""

    runs: int | None = None
    days: int | None = None
    max_size_mb: int | None = None
    keep_last_success: bool | None = None
    keep_failed: int | None = None


@dataclass(frozen=True)
class Pipeline:
    name: str
    path: Path
    description: str = ""
    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    retention: Retention = field(default_factory=Retention)
    config: PipelineConfig = field(default_factory=PipelineConfig)

    @property
    def main(self) -> Path:
        return self.path / "main.py"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "timeout": self.timeout,
            "retention": {
                "runs": self.retention.runs,
                "days": self.retention.days,
                "max_size_mb": self.retention.max_size_mb,
                "keep_last_success": self.retention.keep_last_success,
                "keep_failed": self.retention.keep_failed,
            },
        }


def _int_or_none(raw: Any, what: str, where: Path, *, minimum: int, maximum: int) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not minimum <= raw <= maximum:
        raise InvalidPipelineConfig(
            f"{where}: {what} must be an integer from {minimum} to {maximum} (got {raw!r})"
        )
    return raw


def _bool_or_none(raw: Any, what: str, where: Path) -> bool | None:
    if raw is None or isinstance(raw, bool):
        return raw
    raise InvalidPipelineConfig(f"{where}: {what} must be true or false (got {raw!r})")


RETENTION_KEYS = frozenset({"runs", "days", "max_size_mb", "keep_last_success", "keep_failed"})


def _config_bytes(cfg_file: Path) -> bytes:
    """``pipeline.json``'s bytes: a regular file of at most ``MAX_CONFIG_BYTES``. A FIFO
    or a link to ``/dev/zero`` is refused without reading, since the server reads every
    pipeline's file and would otherwise wait for ever or fill the memory. A device is
    refused before it is opened (opening one can have effects, a tape rewinds); the
    descriptor is checked again, so a device swapped in between is not read (it was
    opened, though: that race is not closed)."""
    if not stat.S_ISREG(os.stat(cfg_file).st_mode):
        raise ValueError("not a regular file")
    fd = os.open(cfg_file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{st.st_size} bytes, more than the {MAX_CONFIG_BYTES} allowed")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"it grew past the {MAX_CONFIG_BYTES} bytes allowed")
    return data


def _read_config(path: Path) -> dict[str, Any]:
    cfg_file = path / "pipeline.json"
    if not cfg_file.exists():
        if cfg_file.is_symlink():  # a link to nothing is a mistake, not "no settings"
            raise InvalidPipelineConfig(
                f"{cfg_file}: pipeline.json is a link to a file that does not exist"
            )
        return {}
    try:
        data = strict_json.loads(_config_bytes(cfg_file).decode("utf-8"), unique_keys=True)
    except (OSError, ValueError) as e:  # (also invalid UTF-8, NaN, a key given twice)
        raise InvalidPipelineConfig(f"{cfg_file}: cannot read pipeline.json: {e}") from e
    if not isinstance(data, dict):
        raise InvalidPipelineConfig(f"{cfg_file}: pipeline.json must hold a JSON object")
    return data


SETTLE_S = 5.0  # how long an invalid pipeline.json is read again (an editor saving it)
SETTLE_POLL_S = 0.25


def load_settled(
    pipelines_dir: Path,
    name: str,
    *,
    waiting: Callable[[InvalidPipelineConfig], None] | None = None,
    stop: threading.Event | None = None,
) -> Pipeline:
    """``load``, read again for up to ``SETTLE_S`` while ``pipeline.json`` is invalid: a
    file caught half-saved by an editor must not fail a run or cost it its retries (an
    outside audit). ``waiting`` is told once, at the first invalid read; a set ``stop``
    ends the wait with the last error. A missing pipeline is not waited for."""
    deadline = time.monotonic() + SETTLE_S
    said = False
    while True:
        try:
            return load(pipelines_dir, name)
        except InvalidPipelineConfig as e:
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                raise
            if not said and waiting is not None:
                waiting(e)
            said = True
            (stop or threading.Event()).wait(SETTLE_POLL_S)


def canonical_name(name: str) -> str:
    """``name``, or its composed form (NFC) when only that is a valid name: a name typed
    decomposed (``u`` + U+0308, as macOS keyboards give ``ü``) names the folder ``ü``."""
    if unicodedata.is_normalized("NFC", name):
        return name
    composed = unicodedata.normalize("NFC", name)
    try:
        validate_name(name)
    except InvalidPipelineName:
        return composed  # (its own error, if any, is the one load then raises)
    return name  # valid as typed (a folder may be named so)


def load(pipelines_dir: Path, name: str) -> Pipeline:
    """Load one pipeline by name; raise if the name is invalid or it does not exist. A
    name typed in decomposed form (``u`` + U+0308, as macOS keyboards give it) is taken
    in its composed form (NFC), as its folder is named; a combining mark is never valid
    in a name otherwise."""
    name = validate_name(canonical_name(name))
    path = pipelines_dir / name
    if not (path / "main.py").is_file():
        raise PipelineNotFound(
            f"pipeline {name!r} not found: no {path / 'main.py'}",
            hint="run 'fastflow pipelines' to list the available ones",
        )
    data = _read_config(path)
    cfg_file = path / "pipeline.json"
    ret = data.pop("retention", {})
    if not isinstance(ret, dict):
        raise InvalidPipelineConfig(f"{cfg_file}: retention must be an object")
    unknown = sorted(set(ret) - RETENTION_KEYS)
    if unknown:
        raise InvalidPipelineConfig(f"{cfg_file}: retention.{unknown[0]} is not a known key")
    retention = Retention(
        runs=_int_or_none(
            ret.get("runs"), "retention.runs", cfg_file, minimum=0, maximum=MAX_RETENTION_RUNS
        ),
        days=_int_or_none(
            ret.get("days"), "retention.days", cfg_file, minimum=0, maximum=MAX_RETENTION_DAYS
        ),
        max_size_mb=_int_or_none(
            ret.get("max_size_mb"),
            "retention.max_size_mb",
            cfg_file,
            minimum=1,
            maximum=MAX_LOG_SIZE_MB,
        ),
        keep_last_success=_bool_or_none(
            ret.get("keep_last_success"), "retention.keep_last_success", cfg_file
        ),
        keep_failed=_int_or_none(
            ret.get("keep_failed"),
            "retention.keep_failed",
            cfg_file,
            minimum=0,
            maximum=MAX_RETENTION_RUNS,
        ),
    )
    config = parse(data, cfg_file)
    return Pipeline(
        name=name,
        path=path,
        description=config.description,
        timeout=config.timeout,
        env=config.env,
        retention=retention,
        config=config,
    )


def discover(pipelines_dir: Path) -> list[Pipeline]:
    """All valid pipelines under ``pipelines_dir``, sorted by name.

    Folders with invalid names or unreadable ``pipeline.json`` are skipped here (``scan``
    names them; loading them by name reports the reason).
    """
    return scan(pipelines_dir)[0]


def scan(pipelines_dir: Path) -> tuple[list[Pipeline], dict[str, str]]:
    """The valid pipelines under ``pipelines_dir`` (sorted by name), and why each other
    pipeline folder (one with a ``main.py``) was skipped, by folder name."""
    if not pipelines_dir.is_dir():
        return [], {}
    found: list[Pipeline] = []
    skipped: dict[str, str] = {}
    for child in sorted(pipelines_dir.iterdir(), key=lambda p: p.name):
        if not (child / "main.py").is_file():
            continue
        try:
            found.append(load(pipelines_dir, child.name))
        except (InvalidPipelineName, InvalidPipelineConfig) as e:
            skipped[child.name] = str(e)
        except Exception as e:  # a bug reading one pipeline must not hide the others
            log.exception("pipeline folder %r could not be read; skipped", child.name)
            skipped[child.name] = f"could not be read ({type(e).__name__})"
    return found, skipped


@dataclass(frozen=True)
class Problem:
    """One finding of ``check_all``: ``level`` is ``error`` or ``warning``."""

    pipeline: str
    level: str
    message: str


def trigger_cycle(graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A cycle in the downstream-trigger graph (``a -> b -> a`` as ``[a, b, a]``)."""
    cycles = trigger_cycles(graph)
    return cycles[0] if cycles else None


def trigger_graph(found: list[Pipeline]) -> dict[str, tuple[str, ...]]:
    """Each pipeline's trigger targets (on success and on failure, each once)."""
    return {
        p.name: tuple(dict.fromkeys((*p.config.triggers.on_success, *p.config.triggers.on_failure)))
        for p in found
    }


def cycle_reached_from(graph: dict[str, tuple[str, ...]], name: str) -> list[str] | None:
    """The trigger cycle that a chain of triggers starting at ``name`` can reach (one
    ``name`` is part of, or one downstream of it), or None: only such a chain could run
    for ever, so only its triggers are held back."""
    cycles = trigger_cycles(graph)
    if not cycles:
        return None
    on_cycle = {node: cycle for cycle in cycles for node in cycle}
    seen, todo = {name}, [name]
    while todo:  # a member of a cycle's group not on its path reaches that path too
        node = todo.pop()
        if node in on_cycle:
            return on_cycle[node]
        for target in graph.get(node, ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return None


def trigger_cycles(graph: dict[str, tuple[str, ...]]) -> list[list[str]]:
    """One cycle of each group of pipelines that trigger each other (each strongly
    connected part of the trigger graph with a cycle), in name order: every independent
    cycle is reported, not only the first found."""
    order: list[str] = []
    seen: set[str] = set()

    def finish_order(start: str) -> None:  # iterative DFS: finishing order
        stack = [(start, iter(graph.get(start, ())))]
        seen.add(start)
        while stack:
            node, rest = stack[-1]
            nxt = next(rest, None)
            if nxt is None:
                stack.pop()
                order.append(node)
            elif nxt in graph and nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, iter(graph.get(nxt, ()))))

    for node in sorted(graph):
        if node not in seen:
            finish_order(node)
    reverse: dict[str, list[str]] = {n: [] for n in graph}
    for node, targets in graph.items():
        for t in targets:
            if t in reverse:
                reverse[t].append(node)
    part_of: dict[str, int] = {}
    parts: list[list[str]] = []
    for node in reversed(order):  # Kosaraju: components of the reversed graph
        if node in part_of:
            continue
        part_of[node] = len(parts)
        members, todo = [node], [node]
        while todo:
            for prev in reverse[todo.pop()]:
                if prev not in part_of:
                    part_of[prev] = len(parts)
                    members.append(prev)
                    todo.append(prev)
        parts.append(members)
    cycles: list[list[str]] = []
    for members in parts:
        inside = set(members)
        first = min(members)
        if len(members) == 1 and first not in graph.get(first, ()):
            continue  # a single pipeline that does not trigger itself
        path, node = [first], first
        visited = {first}
        while True:  # walk inside the component until the path closes on itself
            nxt = min(t for t in graph[node] if t in inside)
            if nxt in visited:
                cycles.append([*path[path.index(nxt) :], nxt])
                break
            path.append(nxt)
            visited.add(nxt)
            node = nxt
    return sorted(cycles)


def check_all(pipelines_dir: Path) -> tuple[list[Pipeline], list[Problem]]:
    """Load every pipeline folder: the valid pipelines, and every problem (invalid names
    or ``pipeline.json``, triggers naming unknown pipelines, trigger cycles, webhook keys
    committed in a file)."""
    found, skipped = scan(pipelines_dir)
    problems = [Problem(name, "error", why) for name, why in skipped.items()]
    names = {p.name for p in found}
    graph = trigger_graph(found)
    for p in found:
        for target in graph[p.name]:
            if target not in names:
                problems.append(Problem(p.name, "error", f"triggers unknown pipeline {target!r}"))
        by_name = {q.name: q for q in found}
        for target, config_id in p.config.triggers.configs:
            known = by_name.get(target)
            if known is not None and not any(
                spec.run_config_id == config_id for spec in known.config.schedules
            ):
                problems.append(
                    Problem(
                        p.name,
                        "error",
                        f"triggers {target!r} with run_config_id {config_id!r}, which is not "
                        f"the id of a schedule of {target!r}",
                    )
                )
        if p.config.webhook_keys:
            problems.append(
                Problem(
                    p.name,
                    "warning",
                    "webhook_key in pipeline.json is a secret stored in the repository; "
                    "prefer 'fastflow webhook create'",
                )
            )
            short = min(len(k) for k in p.config.webhook_keys.values())
            if short < MIN_WEBHOOK_KEY:
                problems.append(
                    Problem(
                        p.name,
                        "warning",
                        f"a webhook_key in pipeline.json is {short} characters long: a key "
                        f"shorter than {MIN_WEBHOOK_KEY} can be guessed ('fastflow webhook "
                        "create' makes one of 256 random bits)",
                    )
                )
    for cycle in trigger_cycles(graph):
        problems.append(Problem(cycle[0], "error", "trigger cycle refused: " + " -> ".join(cycle)))
    for p in found:
        problems.extend(_silent_schedules(p))
    return found, problems


def _silent_schedules(p: Pipeline) -> list[Problem]:
    """A warning for each cron schedule that matches no date (``0 0 30 2 *``): valid
    syntax, but it never fires."""
    from croniter import CroniterBadDateError, croniter

    out = []
    for spec in p.config.schedules:
        if spec.cron is None:
            continue
        try:
            croniter(spec.cron, _CRON_PROBE).get_next(float)
        except CroniterBadDateError:
            out.append(
                Problem(
                    p.name,
                    "warning",
                    f"schedule {spec.key!r}: cron {spec.cron!r} matches no date; it never fires",
                )
            )
    return out
