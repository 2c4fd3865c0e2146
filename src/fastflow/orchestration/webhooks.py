"""Webhook keys of pipelines (create, list, revoke, verify), the queued run a webhook
call starts (with its JSON payload), and the per-pipeline rate limit.

Guarantees:
- a key made by ``create_key`` is returned once and stored only as its SHA-256
  (``Webhook.key_hash``) with a short prefix to recognise it;
- keys written in ``pipeline.json`` (Fast-Flow's ``webhook_key``, also per schedule) are
  compared where they are written and never copied anywhere;
- ``verify`` does the same work whatever the outcome: it hashes the presented key (also
  an empty one), looks the hash up, loads the pipeline and compares in constant time
  against every file key (or a stand-in when there is none), so neither the answer nor
  its timing tells whether a pipeline exists;
- a run with a payload is committed only after ``payload.json`` is on disk, so the
  dispatcher never starts it without its payload;
- ``RateLimiter`` is an exact sliding window over the last minute, in this process only
  (every server process counts on its own), with a bounded number of tracked names.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from fastflow import security
from fastflow.db import cache as readcache
from fastflow.db.engine import Database
from fastflow.db.models import PipelineRun, Trigger, Webhook, utcnow
from fastflow.errors import FastflowError, LogsDirUnavailable
from fastflow.orchestration import queue
from fastflow.runs import files as logfiles
from fastflow.runs import logsdir, pipelines
from fastflow.runs.pipelines import Pipeline

KEY_PREFIX = "ffwh_"  # tells a webhook key apart from an API token (``ff_``)
SHOWN_PREFIX = 12  # characters kept in clear to recognise a key in ``webhook list``
SOURCE_CLI = "cli"
SOURCE_FILE = "file"
PAYLOAD_NAME = "payload.json"
PAYLOAD_ENV = "FASTFLOW_PAYLOAD"
MAX_PAYLOAD_BYTES = 1024 * 1024
WINDOW_S = 60.0
MAX_TRACKED = 10_000
_STAND_IN = "fastflow-webhook-timing-equaliser"  # compared when a pipeline has no file key


# --- keys -------------------------------------------------------------------------------


def create_key(db: Database, pipelines_dir: Path, pipeline_name: str) -> str:
    """A new key for a pipeline that exists; the clear text is returned once."""
    pipeline = pipelines.load(pipelines_dir, pipeline_name)
    key = KEY_PREFIX + security.new_token().removeprefix(security.TOKEN_PREFIX)
    with db.session() as s:
        s.add(
            Webhook(
                pipeline_name=pipeline.name,
                key_hash=security.token_hash(key),
                prefix=key[:SHOWN_PREFIX],
                run_config_id=None,
                source=SOURCE_CLI,
            )
        )
    return key


@dataclass(frozen=True)
class KeyInfo:
    """One key as ``webhook list`` shows it: never the key itself."""

    pipeline: str
    prefix: str | None  # None for keys in pipeline.json (a prefix of a short key is most of it)
    created: datetime | None  # None for keys in pipeline.json
    source: str  # cli | file
    run_config_id: str | None
    revoked: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "pipeline": self.pipeline,
            "prefix": self.prefix,
            "created": self.created.isoformat() if self.created else None,
            "source": self.source,
            "run_config_id": self.run_config_id,
            "revoked": self.revoked,
        }


def list_keys(db: Database, pipelines_dir: Path, *, include_revoked: bool = False) -> list[KeyInfo]:
    """The keys made with ``create_key`` (active ones, unless ``include_revoked``) and the
    keys in the ``pipeline.json`` of every valid pipeline, by pipeline."""
    q = select(Webhook).order_by(Webhook.pipeline_name, Webhook.id)
    if not include_revoked:
        q = q.where(Webhook.revoked_at.is_(None))
    with db.session() as s:
        out = [
            KeyInfo(
                w.pipeline_name,
                w.prefix,
                w.created_at,
                w.source,
                w.run_config_id,
                w.revoked_at is not None,
            )
            for w in s.scalars(q)
        ]
    for p in pipelines.discover(pipelines_dir):
        for config_id in p.config.webhook_keys:
            out.append(KeyInfo(p.name, None, None, SOURCE_FILE, config_id, False))
    return sorted(out, key=lambda k: k.pipeline)  # stable: made keys first, oldest first


def revoke_keys(db: Database, pipelines_dir: Path, pipeline_name: str) -> int:
    """Revoke every active key of a pipeline made with ``create_key`` (also when the
    pipeline folder is gone); how many. ``PipelineNotFound`` when there was none and the
    pipeline does not exist."""
    pipelines.validate_name(pipeline_name)
    now = utcnow()
    with db.session() as s:
        rows = list(
            s.scalars(
                select(Webhook).where(
                    Webhook.pipeline_name == pipeline_name,
                    Webhook.source == SOURCE_CLI,
                    Webhook.revoked_at.is_(None),
                )
            )
        )
        for row in rows:
            row.revoked_at = now
    if not rows:
        pipelines.load(pipelines_dir, pipeline_name)
    return len(rows)


@dataclass(frozen=True)
class Match:
    """A key that opens a pipeline: which one, and the run configuration it stands for."""

    pipeline: Pipeline
    run_config_id: str | None
    source: str


def verify(db: Database, pipelines_dir: Path, pipeline_name: str, key: str | None) -> Match | None:
    """The match of ``key`` for ``pipeline_name``, or None (wrong or missing key, unknown
    or invalid pipeline: indistinguishable, and the same work in every case).

    Raises the pipeline's loading error only to a caller whose key made with
    ``create_key`` is right (a broken ``pipeline.json`` or a removed folder is then
    worth saying)."""
    presented = security.token_hash(key or "")
    pipeline: Pipeline | None = None
    load_error: FastflowError | None = None
    try:
        pipeline = pipelines.load(pipelines_dir, pipeline_name)
    except FastflowError as e:  # invalid name, no such pipeline, invalid pipeline.json
        load_error = e
    with db.session() as s:
        row = s.scalar(
            select(Webhook).where(Webhook.key_hash == presented, Webhook.revoked_at.is_(None))
        )
        owner = row.pipeline_name if row is not None else ""
        row_config = row.run_config_id if row is not None else None
    db_ok = security.same(owner, pipeline_name) and row is not None
    file_keys = pipeline.config.webhook_keys if pipeline is not None else {}
    file_ok, file_config = False, None
    for config_id, candidate in list(file_keys.items()) or [(None, "")]:
        expected = security.token_hash(candidate or _STAND_IN)
        if security.same(expected, presented) and candidate and not file_ok:
            file_ok, file_config = True, config_id
    if not key:
        return None
    if db_ok:
        if pipeline is None:
            assert load_error is not None
            raise load_error
        return Match(pipeline, row_config, SOURCE_CLI)
    if file_ok and pipeline is not None:
        return Match(pipeline, file_config, SOURCE_FILE)
    return None


def disabled_schedule(match: Match) -> str | None:
    """The id of the schedule whose run configuration ``match`` runs when that schedule
    is disabled (``"enabled": false``): its key queues nothing, as its timer fires
    nothing. None otherwise."""
    if match.run_config_id is None:
        return None
    for spec in match.pipeline.config.schedules:  # (``key``: the id, or the index)
        if spec.key == match.run_config_id and not spec.enabled:
            return match.run_config_id
    return None


# --- the queued run and its payload ------------------------------------------------------


def payload_rel(pipeline_name: str, run_id: str) -> str:
    """``<pipeline>/<run_id>/payload.json``, relative to LOGS_DIR (next to ``run.log``)."""
    return f"{logfiles.run_dir_rel(pipeline_name, run_id)}/{PAYLOAD_NAME}"


def _write_new(logs_root: Path, rel: str, data: bytes) -> None:
    """Write ``data`` to the new file ``rel`` (it must not exist), its folders made on the
    way, all through descriptors from ``LOGS_DIR`` (no link followed)."""
    with open(logfiles.open_for_writing(logs_root, rel, append=False, exclusive=True), "wb") as f:
        f.write(data)


def _remove_new(logs_root: Path, rel: str) -> None:
    """Undo ``_write_new`` as far as it got: the file and its emptied folders, through the
    folder's descriptor (never through a link put in its place meanwhile)."""
    try:
        folder, name = logfiles.RunFolder.of_file(logs_root, rel)
        with folder:
            folder.unlink(name)
            folder.remove_if_empty()
    except (OSError, FastflowError):
        pass  # nothing was made, or it cannot be reached safely: leave it


def schedule_env(match: Match) -> dict[str, str]:
    """The ``default_env`` of the named schedule whose ``webhook_key`` matched (Fast-Flow:
    such a webhook runs that configuration), as a scheduled tick of it gets; {} else."""
    if match.run_config_id is None:
        return {}
    for spec in match.pipeline.config.schedules:  # (``key``: the id, or the index)
        if spec.key == match.run_config_id:
            return dict(spec.env)
    return {}


def queue_run(
    db: Database,
    logs_root: Path,
    match: Match,
    payload: bytes | None,
) -> uuid.UUID:
    """Queue a run of the matched pipeline (``triggered_by`` webhook). A ``payload``
    (JSON, already checked) is written to ``LOGS_DIR/<pipeline>/<run_id>/payload.json``
    and its absolute path given to the run as ``FASTFLOW_PAYLOAD``; the run row is
    committed only once the file exists, and nothing is left behind when either fails."""
    name = match.pipeline.name
    trigger = Trigger.WEBHOOK.value
    env = schedule_env(match)
    if payload is None:
        return queue.enqueue(db, name, trigger, env=env or None, run_config_id=match.run_config_id)
    home = logsdir.problem(db, logs_root, create=True)
    if home is not None:  # the payload would land where the run cannot read it
        raise LogsDirUnavailable(home)
    rel: str | None = None
    try:
        with db.session() as s:
            run_id = queue.enqueue(
                db, name, trigger, env=env or None, run_config_id=match.run_config_id, session=s
            )
            rel = payload_rel(name, str(run_id))
            path = logfiles.resolve(logs_root, rel)
            _write_new(logs_root, rel, payload)
            # the id exists only now: the path goes into the run's parameters before commit
            run = next(o for o in s.new if isinstance(o, PipelineRun) and o.id == run_id)
            run.env_overrides = json.dumps({**env, PAYLOAD_ENV: str(path)})
    except BaseException:
        if rel is not None:
            _remove_new(logs_root, rel)
        raise
    readcache.invalidate()
    return run_id


# --- the rate limit ---------------------------------------------------------------------


class RateLimiter:
    """At most ``limit`` requests per name in any ``window`` seconds (sliding window).

    Only allowed requests are counted, so a caller who keeps trying is let through
    again as soon as the window allows. At most ``max_tracked`` names are remembered
    (the least recently seen is forgotten first), so made-up names cannot exhaust
    memory. Thread-safe; per process."""

    def __init__(self, window: float = WINDOW_S, max_tracked: int = MAX_TRACKED) -> None:
        self.window = window
        self.max_tracked = max_tracked
        self._lock = threading.Lock()
        self._hits: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def hit(self, bucket: tuple[str, str], limit: int, now: float | None = None) -> float | None:
        """Count a request in ``bucket``: None when it is allowed, else the seconds until
        one will be (the refused request is not counted)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            hits = self._hits.get(bucket)
            if hits is None:
                hits = self._hits[bucket] = deque()
            self._hits.move_to_end(bucket)
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= limit:
                # wait until enough of the oldest hits leave the window for one more
                return max(hits[len(hits) - limit] + self.window - now, 0.0)
            hits.append(now)
            while len(self._hits) > self.max_tracked:
                self._hits.popitem(last=False)
            return None
