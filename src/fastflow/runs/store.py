"""Queries and state changes of ``pipeline_runs`` rows."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import Select, func, literal, select, text, union_all, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from fastflow.archive import ledger
from fastflow.db import cache as readcache
from fastflow.db.engine import Database, begin_write
from fastflow.db.models import (
    CANCELLED_BEFORE_START,
    FINAL_STATUSES,
    FOLLOW_UP_DUE_WHERE,
    PipelineRun,
    RunStatus,
    utcnow,
)
from fastflow.errors import FastflowError, InvalidInput, RetryTakenOver, RunNotFound, UnsafePath
from fastflow.runs import files as logfiles
from fastflow.runs import isolation, logsdir

HOSTNAME = socket.gethostname()
log = logging.getLogger("fastflow.runs")
RUNNING_STATES = (RunStatus.PENDING.value, RunStatus.RUNNING.value)


def no_log_yet(status: str | None, failure_reason: str | None) -> str | None:
    """Why a run in this state may have no log at all (None: it should have one): still
    QUEUED (a log is made when a server takes the run), or cancelled while queued."""
    if status == RunStatus.QUEUED.value:
        return "it has not started yet"
    if status == RunStatus.CANCELLED.value and failure_reason == CANCELLED_BEFORE_START:
        return "it was cancelled before it started"
    return None


# the final statuses with something to follow: a retry, or on_success/on_failure triggers
FOLLOWED_UP = frozenset({RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.TIMEOUT})
CLAIM_LOCK_KEY = 0x66666C71  # "fflq": one claim of a run slot at a time (PostgreSQL)
MIN_PREFIX = 4  # hex digits of the shortest run id prefix accepted (the UI shows 8)
MAX_CANDIDATES = 10  # ambiguous prefix: candidates named in the error
_HEX_RE = re.compile(r"[0-9a-f]+")


class AmbiguousRunId(FastflowError):
    """A short run id matches more than one run; ``candidates`` are (some of) them, as
    ``(id, pipeline_name, started_at)``."""

    def __init__(self, prefix: str, candidates: list[tuple[uuid.UUID, str, datetime]]) -> None:
        shown = ", ".join(
            f"{rid} ({name}, {started.strftime('%Y-%m-%d %H:%M:%S')})"
            for rid, name, started in candidates[:MAX_CANDIDATES]
        )
        more = " and more" if len(candidates) > MAX_CANDIDATES else ""
        super().__init__(
            f"run id {prefix!r} is ambiguous: it matches {shown}{more}",
            hint="give more of the id",
        )
        self.candidates = [rid for rid, _, _ in candidates]


def parse_run_id(raw: str) -> uuid.UUID:
    """A full run id (no lookup; see ``resolve_run_id`` for short ones)."""
    try:
        return uuid.UUID(str(raw).strip())
    except ValueError:
        raise RunNotFound(f"{raw!r} is not a valid run id (expected a UUID)") from None


def resolve_run_id(db: Database, raw: str) -> uuid.UUID:
    """The run a full id or a short one names: a UUID is returned as it is; otherwise
    ``raw`` must be the first ``MIN_PREFIX``..32 hex digits of one (dashes ignored,
    e.g. the 8 the UI shows), matched against the runs and the archive ledger (runs
    deleted by retention count). ``RunNotFound`` when nothing matches,
    ``AmbiguousRunId`` when several runs do, ``InvalidInput`` when ``raw`` is neither."""
    text = str(raw).strip()
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    digits = text.lower().replace("-", "")
    if not (MIN_PREFIX <= len(digits) <= 32) or not _HEX_RE.fullmatch(digits):
        raise InvalidInput(
            f"{raw!r} is not a valid run id (expected a UUID or at least its first "
            f"{MIN_PREFIX} hex digits, as the UI shows 8)"
        )
    low, high = uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
    limit = MAX_CANDIDATES + 1
    q = (
        select(PipelineRun.id, PipelineRun.pipeline_name, PipelineRun.started_at)
        .where(PipelineRun.id >= low, PipelineRun.id <= high)
        .order_by(PipelineRun.id)
        .limit(limit)
    )
    with db.session() as s:
        found = {rid: (rid, name, started) for rid, name, started in s.execute(q).all()}
    for rid, name, started in ledger.ids_between(db, low, high, limit):
        found.setdefault(rid, (rid, name, started))
    if not found:
        raise RunNotFound(f"run {text} not found")
    if len(found) > 1:
        candidates = sorted(found.values(), key=lambda c: c[2], reverse=True)
        raise AmbiguousRunId(text, candidates)
    return next(iter(found))


def process_started(pid: int) -> float | None:
    """When process ``pid`` started; None when there is none."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _living_since(pid: int) -> float | None:
    """``process_started`` of a process that still runs: None for a zombie too (it has
    died; a parent that never reaps it would otherwise keep its runs "alive" for good)."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except psutil.Error:
        return None


def create(
    db: Database,
    pipeline_name: str,
    triggered_by: str,
    *,
    pid: int,
    attempt: int = 1,
    retry_of: uuid.UUID | None = None,
    env: dict[str, str] | None = None,
) -> PipelineRun:
    """Insert a PENDING run owned by process ``pid`` on this host (no slot limit)."""
    run, _ = create_within(
        db, pipeline_name, triggered_by, None, pid=pid, attempt=attempt, retry_of=retry_of, env=env
    )
    assert run is not None  # no limit: always created
    return run


def create_within(
    db: Database,
    pipeline_name: str,
    triggered_by: str,
    limit: int | None,
    *,
    pid: int,
    attempt: int = 1,
    retry_of: uuid.UUID | None = None,
    env: dict[str, str] | None = None,
    follows: uuid.UUID | None = None,
) -> tuple[PipelineRun | None, int]:
    """``create`` — only while the pipeline has fewer than ``limit`` PENDING/RUNNING runs
    on every server (its ``max_instances``): (the run, None when it is at its limit; the
    runs counted). The count and the insert hold the servers' claim lock (``lock_claims``).
    ``limit`` None: no count, no lock. ``follows``: the run this one retries; its
    ``follow_up_due`` is cleared in the same transaction — ``RetryTakenOver`` (nothing
    created) when another process had followed it up already."""
    active = 0
    with db.session() as s:
        if limit is not None:
            lock_claims(s)
            active = _active_count(s, pipeline_name)
            if active >= limit:
                return None, active
        if follows is not None:
            taken = s.execute(
                update(PipelineRun)
                .where(PipelineRun.id == follows, PipelineRun.follow_up_due.is_(True))
                .values(follow_up_due=False)
                .execution_options(synchronize_session=False)
            )
            if getattr(taken, "rowcount", 0) != 1:
                raise RetryTakenOver(
                    f"the next attempt after run {follows} was queued for a server by another "
                    "process (it took this one for dead); it is not run here too"
                )
        run = _pending_row(pipeline_name, triggered_by, pid, attempt, retry_of, env)
        s.add(run)
    readcache.invalidate()
    return run, active


def lock_claims(s: Session) -> None:
    """Hold the servers' claim lock until ``s`` ends — its first statement: on PostgreSQL
    a transaction-scoped advisory lock, on SQLite the database's write lock (``BEGIN
    IMMEDIATE``: without it the driver begins a transaction only at the first write, so a
    count read before it could be stale by then). Claims of run slots, on every server
    and in ``fastflow run``, thus count and write one at a time."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLAIM_LOCK_KEY})
    else:
        begin_write(s)


def _active_count(s: Session, pipeline_name: str) -> int:
    q = (
        select(func.count())
        .select_from(PipelineRun)
        .where(PipelineRun.pipeline_name == pipeline_name, PipelineRun.status.in_(RUNNING_STATES))
    )
    return int(s.scalar(q) or 0)


def _pending_row(
    pipeline_name: str,
    triggered_by: str,
    pid: int,
    attempt: int,
    retry_of: uuid.UUID | None,
    env: dict[str, str] | None,
) -> PipelineRun:
    run_id = uuid.uuid4()
    return PipelineRun(
        id=run_id,
        pipeline_name=pipeline_name,
        status=RunStatus.PENDING.value,
        triggered_by=triggered_by,
        started_at=utcnow(),
        log_file=logfiles.log_rel(pipeline_name, str(run_id)),
        metrics_file=logfiles.metrics_rel(pipeline_name, str(run_id)),
        runner_host=HOSTNAME,
        runner_pid=pid,
        runner_started=process_started(pid),
        attempt=attempt,
        retry_of=retry_of,
        env_overrides=json.dumps(env) if env else None,
    )


def mark_running(db: Database, run_id: uuid.UUID, *, pid: int, executor: str | None = None) -> None:
    """The run starts now in process ``pid``; ``executor`` says where its pipeline runs
    (``local``, ``docker``)."""
    with db.session() as s:
        run = s.get(PipelineRun, run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} not found")
        run.status = RunStatus.RUNNING.value
        run.started_at = utcnow()
        run.runner_pid = pid
        run.runner_started = process_started(pid)
        if executor is not None:
            run.executor = executor
    readcache.invalidate()


def mark_container(
    db: Database, run_id: uuid.UUID, *, image: str | None = None, container_id: str | None = None
) -> None:
    """Record the image a container run starts from, then its container's id (so that a
    restarted server finds the container again)."""
    with db.session() as s:
        run = s.get(PipelineRun, run_id)
        if run is None:
            return
        if image is not None:
            run.image = image
        if container_id is not None:
            run.container_id = container_id
    readcache.invalidate()


CONTAINER_EXECUTORS = ("docker",)  # their runs outlive their supervisor: re-attached


def survives_supervisor(run: PipelineRun) -> bool:
    """A RUNNING container run: its container goes on when the process supervising it
    dies, and the next ``fastflow serve`` re-attaches to it instead of failing it."""
    return run.status == RunStatus.RUNNING.value and run.executor in CONTAINER_EXECUTORS


def runner_alive(run: PipelineRun) -> bool:
    """Whether the process that runs ``run`` still lives (on this host: pid and start
    time)."""
    return _runner_alive(run)


def container_runs(db: Database) -> list[PipelineRun]:
    """The RUNNING container runs (of any host)."""
    with db.session() as s:
        return list(
            s.scalars(
                select(PipelineRun).where(
                    PipelineRun.status == RunStatus.RUNNING.value,
                    PipelineRun.executor.in_(CONTAINER_EXECUTORS),
                )
            )
        )


def orphaned_container_runs(
    db: Database, alive: Callable[[PipelineRun], bool]
) -> list[PipelineRun]:
    """RUNNING container runs whose supervising process ``alive`` says is gone."""
    return [run for run in container_runs(db) if not alive(run)]


def adopt(db: Database, run: PipelineRun, *, pid: int) -> bool:
    """Make process ``pid`` on this host the supervisor of an orphaned container run,
    if nobody else did first (the row still names the dead supervisor)."""
    same_host = (
        PipelineRun.runner_host.is_(None)
        if run.runner_host is None
        else PipelineRun.runner_host == run.runner_host
    )
    same_pid = (
        PipelineRun.runner_pid.is_(None)
        if run.runner_pid is None
        else PipelineRun.runner_pid == run.runner_pid
    )
    with db.session() as s:
        done = s.execute(
            update(PipelineRun)
            .where(
                PipelineRun.id == run.id,
                PipelineRun.status == RunStatus.RUNNING.value,
                same_host,
                same_pid,
            )
            .values(runner_host=HOSTNAME, runner_pid=pid, runner_started=process_started(pid))
        )
        adopted = bool(getattr(done, "rowcount", 0))
    readcache.invalidate()
    return adopted


def statuses(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The status of each run of ``ids`` that exists."""
    if not ids:
        return {}
    with db.session() as s:
        rows = s.execute(
            select(PipelineRun.id, PipelineRun.status).where(PipelineRun.id.in_(ids))
        ).all()
    return {rid: str(status) for rid, status in rows}


def mark_pipeline_process(db: Database, run_id: uuid.UUID, pid: int) -> None:
    """Record the pipeline's process (its group leader) and start time."""
    with db.session() as s:
        run = s.get(PipelineRun, run_id)
        if run is not None:
            run.pipeline_pid = pid
            run.pipeline_started = process_started(pid)


def finish(
    db: Database,
    run_id: uuid.UUID,
    status: RunStatus,
    exit_code: int | None,
    log_size: int | None,
    failure_reason: str | None = None,
) -> None:
    """End a run; ``failure_reason`` says why it did not succeed (None for SUCCESS). A
    SUCCESS, FAILED or TIMEOUT run is marked ``follow_up_due`` in the same transaction
    (its retry or triggers: ``orchestration.followup``). A database that is away is tried
    again for about ``FINISH_RETRY_S`` (the run has ended: its end must not be lost to a
    blip); then the error is raised."""
    for pause in (*FINISH_PAUSES_S, None):
        try:
            return _finish(db, run_id, status, exit_code, log_size, failure_reason)
        except OperationalError as e:
            if pause is None:
                raise
            detail = str(getattr(e, "orig", None) or e).splitlines()[0]
            log.warning(
                "run %s: its end not recorded (%s); trying again in %g s", run_id, detail, pause
            )
            threading.Event().wait(pause)


FINISH_PAUSES_S = (0.5, 1.0, 2.0, 4.0, 8.0)  # about 15 s in all
FINISH_RETRY_S = sum(FINISH_PAUSES_S)


def _finish(
    db: Database,
    run_id: uuid.UUID,
    status: RunStatus,
    exit_code: int | None,
    log_size: int | None,
    failure_reason: str | None,
) -> None:
    with db.session() as s:
        run = s.get(PipelineRun, run_id)
        if run is None:
            return
        run.status = status.value
        run.exit_code = exit_code
        run.finished_at = utcnow()
        run.log_size = log_size
        run.failure_reason = None if status is RunStatus.SUCCESS else failure_reason
        run.follow_up_due = status in FOLLOWED_UP
    readcache.invalidate()


def get(db: Database, run_id: uuid.UUID) -> PipelineRun | None:
    with db.session() as s:
        return s.get(PipelineRun, run_id)


def get_many(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, PipelineRun]:
    if not ids:
        return {}
    with db.session() as s:
        return {r.id: r for r in s.scalars(select(PipelineRun).where(PipelineRun.id.in_(ids)))}


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of the UTC day ``day`` (``InvalidInput`` for the last day there is)."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    if day >= date.max:
        raise InvalidInput(f"{day.isoformat()} is out of range: give a day before 9999-12-31")
    return start, start + timedelta(days=1)


def list_runs(
    db: Database,
    *,
    pipeline: str | None = None,
    status: str | None = None,
    day: date | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[PipelineRun]:
    """Runs, newest first; ``day``: only those that started that UTC day."""
    q = select(PipelineRun)
    if pipeline:
        q = q.where(PipelineRun.pipeline_name == pipeline)
    if status:
        q = q.where(PipelineRun.status == status.upper())
    if day is not None:
        start, end = _day_bounds(day)
        q = q.where(PipelineRun.started_at >= start, PipelineRun.started_at < end)
    q = q.order_by(PipelineRun.started_at.desc(), PipelineRun.id).limit(limit).offset(offset)
    with db.session() as s:
        return list(s.scalars(q))


def page_with_archived(
    db: Database,
    *,
    pipeline: str | None = None,
    status: str | None = None,
    day: date | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[tuple[uuid.UUID, bool]]:
    """One page of the runs and of the runs whose rows retention deleted (known from
    the archive ledger), merged newest first (``started_at``, then id, as ``list_runs``)
    in one SQL query: ``limit``/``offset`` count both kinds; ``day``: only those that
    started that UTC day. Returns ``(id, row_deleted)`` pairs."""
    rows: Select[uuid.UUID, datetime, bool] = select(
        PipelineRun.id.label("id"),
        PipelineRun.started_at.label("started_at"),
        literal(False).label("row_deleted"),
    )
    if pipeline:
        rows = rows.where(PipelineRun.pipeline_name == pipeline)
    if status:
        rows = rows.where(PipelineRun.status == status.upper())
    deleted = ledger.rows_deleted(pipeline, status)
    if day is not None:
        start, end = _day_bounds(day)
        rows = rows.where(PipelineRun.started_at >= start, PipelineRun.started_at < end)
        started = deleted.selected_columns.started_at
        deleted = deleted.where(started >= start, started < end)
    # each side only needs its first offset+limit keys (index order): bounded sorting
    top = offset + limit
    sides = [
        side.order_by(side.selected_columns.started_at.desc(), side.selected_columns.id)
        .limit(top)
        .subquery()
        for side in (rows, deleted)
    ]
    merged = union_all(*(select(*side.c) for side in sides)).subquery()
    q = (
        select(merged.c.id, merged.c.row_deleted)
        .order_by(merged.c.started_at.desc(), merged.c.id)
        .limit(limit)
        .offset(offset)
    )
    with db.session() as s:
        return [(rid, bool(deleted)) for rid, deleted in s.execute(q).all()]


def status_counts(db: Database) -> list[tuple[str, int]]:
    """(status, number of runs) for every status present."""
    with db.session() as s:
        rows = s.execute(
            select(PipelineRun.status, func.count()).group_by(PipelineRun.status)
        ).all()
    return [(str(status), int(n)) for status, n in rows]


def local_log_bytes(db: Database) -> int:
    """Bytes of the logs that are still on local disk (from the recorded sizes)."""
    with db.session() as s:
        total = s.scalar(
            select(func.coalesce(func.sum(PipelineRun.log_size), 0)).where(
                PipelineRun.log_file.is_not(None)
            )
        )
    return int(total or 0)


def _runner_alive(run: PipelineRun) -> bool:
    if run.runner_pid is None:
        return False
    started = _living_since(run.runner_pid)
    if started is None:
        return False
    # a recycled pid belongs to a process started later than the recorded one
    return run.runner_started is None or abs(started - run.runner_started) < 1.0


def recover_orphans(
    db: Database,
    logs_root: Path,
    now: datetime | None = None,
    failed: list[PipelineRun] | None = None,
) -> int:
    """Runs left PENDING/RUNNING by a dead process on this host: a claimed run that never
    started goes back to the queue; any other is marked FAILED (what is left of its
    process tree is killed). Runs of a live process or of another host are left alone
    (see ``sweep_dead``), and so are RUNNING container runs (``fastflow serve``
    re-attaches to them). A note is appended to each failed run's log; the failed runs
    are appended to ``failed``."""
    return sweep_dead(
        db, logs_root, lambda run: _runner_alive(run), this_host=True, now=now, failed=failed
    )


def sweep_dead(
    db: Database,
    logs_root: Path,
    alive: Callable[[PipelineRun], bool],
    *,
    this_host: bool,
    now: datetime | None = None,
    failed: list[PipelineRun] | None = None,
    why: str = "the fastflow process that ran it is gone",
) -> int:
    """Retire the active runs (of this host, or of every other host) whose runner
    ``alive`` says is gone; RUNNING container runs are left for ``fastflow serve`` to
    re-attach (``orphaned_container_runs``, ``adopt``). A run asked to stop
    (``cancel_requested_at``) ends CANCELLED. Returns how many runs were failed,
    cancelled or re-queued; the runs failed here are appended to ``failed`` (their retries
    and triggers are the caller's: ``orchestration.followup.after_interrupted``). Each
    change is made only while the run is still as it was read, so processes sweeping at
    the same time retire a run once."""
    now = now or utcnow()
    host = PipelineRun.runner_host == HOSTNAME if this_host else PipelineRun.runner_host != HOSTNAME
    retired = 0
    notes: list[bool] = []  # whether notes may be written: checked once, when first needed
    with db.session() as s:
        rows = s.scalars(
            select(PipelineRun).where(PipelineRun.status.in_(RUNNING_STATES), host)
        ).all()
        for run in rows:
            if survives_supervisor(run) or alive(run):
                continue
            if run.status == "PENDING" and run.queued_at is not None and run.pipeline_pid is None:
                # claimed but never started: another server takes it
                if _move(s, run, status=RunStatus.QUEUED.value, runner_host=None, runner_pid=None):
                    retired += 1
                continue
            if this_host:
                kill_orphaned_group(run.pipeline_pid, run.pipeline_started)
                isolation.remove_leftover_workdirs(run.id)  # its scratch folder
            # a run asked to stop ends CANCELLED (never retried, no trigger), also when
            # its fastflow process died before it could stop it
            cancelled = run.cancel_requested_at is not None
            status = RunStatus.CANCELLED if cancelled else RunStatus.FAILED
            reason = f"cancelled; {why}" if cancelled else f"interrupted: {why}"
            moved = _move(
                s,
                run,
                status=status.value,
                finished_at=now,
                failure_reason=reason,
                follow_up_due=not cancelled,
            )
            if not moved:
                continue  # another process retired it first
            retired += 1
            if failed is not None and not cancelled:
                failed.append(run)
            if run.log_file and not notes:
                # nothing is written to a LOGS_DIR that is not this installation's
                notes.append(logsdir.problem(db, logs_root, mark=False) is None)
            if run.log_file and notes[0]:
                size = _append_note(
                    logs_root,
                    run.log_file,
                    f"run interrupted: {why} (pid {run.runner_pid} on {run.runner_host}); "
                    f"marked {status.value} at {now.isoformat(timespec='seconds')}",
                )
                s.execute(
                    update(PipelineRun)
                    .where(PipelineRun.id == run.id)
                    .values(log_size=size)
                    .execution_options(synchronize_session=False)
                )
                set_committed_value(run, "log_size", size)
    if retired:
        readcache.invalidate()
    return retired


def unfollowed(
    db: Database, alive: Callable[[PipelineRun], bool], *, this_host: bool
) -> list[PipelineRun]:
    """The finished runs (of this host, or of every other host) still ``follow_up_due``
    whose process ``alive`` says is gone: it died between committing the final status
    and queuing the retry or triggers (``orchestration.followup`` queues them, once)."""
    host = PipelineRun.runner_host == HOSTNAME if this_host else PipelineRun.runner_host != HOSTNAME
    with db.session() as s:
        rows = s.scalars(
            select(PipelineRun)
            .where(text(FOLLOW_UP_DUE_WHERE), host)
            .order_by(PipelineRun.finished_at)
        ).all()
        s.expunge_all()
    return [run for run in rows if run.status in FINAL_STATUSES and not alive(run)]


def _move(s: Session, run: PipelineRun, **values: Any) -> bool:
    """``move_if`` while the run still has the status and runner it was read with
    (another sweeper, a claim or the run's end may have changed it)."""
    return move_if(
        s,
        run,
        [
            PipelineRun.status == run.status,
            PipelineRun.runner_host.is_(None)
            if run.runner_host is None
            else PipelineRun.runner_host == run.runner_host,
            PipelineRun.runner_pid.is_(None)
            if run.runner_pid is None
            else PipelineRun.runner_pid == run.runner_pid,
        ],
        **values,
    )


def move_if(s: Session, run: PipelineRun, conditions: list[Any], **values: Any) -> bool:
    """Write ``values`` to ``run``'s row only while ``conditions`` hold for it (one
    conditional ``UPDATE``: a change committed by another process since the row was read
    is never overwritten); the object gets the values too. Whether the row was changed."""
    moved = s.execute(
        update(PipelineRun)
        .where(PipelineRun.id == run.id, *conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if getattr(moved, "rowcount", 0) != 1:
        return False
    for key, value in values.items():
        set_committed_value(run, key, value)
    return True


def kill_orphaned_group(pgid: int | None, started: float | None) -> int:
    """SIGKILL what is left of a dead runner's pipeline process group; return how many
    processes were signalled. A recycled pid is never killed: the group leader, if it
    still exists, must have the recorded start time, and without a leader only members
    started after it are signalled (a process group id is not reused while members
    live)."""
    if pgid is None or started is None or pgid <= 1:
        return 0
    leader = process_started(pgid)
    if leader is not None and abs(leader - started) >= 1.0:
        return 0  # the pid now belongs to another process
    killed = 0
    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            if os.getpgid(proc.pid) != pgid or proc.info["create_time"] < started - 1.0:
                continue
            proc.kill()
            killed += 1
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return killed


def fail_with_note(
    db: Database,
    logs_root: Path,
    run_id: uuid.UUID,
    text: str,
    *,
    note: bool = True,
    status: RunStatus = RunStatus.FAILED,
) -> None:
    """End a run that could not be executed as FAILED (or ``status``), with the reason in
    its log (and, ``note=False`` when nothing may be written to ``LOGS_DIR``, only in
    its row)."""
    # nothing is written to a LOGS_DIR that is not this installation's (``logsdir``)
    note = note and logsdir.problem(db, logs_root, mark=False) is None
    with db.session() as s:
        run = s.get(PipelineRun, run_id)
        if run is None or run.status in FINAL_STATUSES:
            return
        run.status = status.value
        run.finished_at = utcnow()
        run.failure_reason = text
        run.follow_up_due = True
        if run.log_file and note:
            run.log_size = _append_note(logs_root, run.log_file, text)
    readcache.invalidate()


def _append_note(logs_root: Path, rel: str, text: str) -> int | None:
    """Append a fastflow note line to a log; return the new size (None if impossible)."""
    try:
        # made and opened through descriptors from LOGS_DIR: no link on the way followed
        fd = logfiles.open_for_writing(logs_root, rel, append=True, readable=True)
        stamp = utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        with open(fd, "a+b") as f:
            needs_newline = f.tell() > 0 and (f.seek(-1, 2), f.read(1))[1] != b"\n"
            line = f"[{stamp}] [fastflow] {text}\n".encode()
            f.write(b"\n" + line if needs_newline else line)
            return f.tell()
    except (OSError, UnsafePath):  # (a link on the way: the note is written nowhere)
        return None


def cancel_requested_here(db: Database) -> bool:
    """Whether a running run of this process (this host, this pid) has been asked to
    stop (``cancel_requested_at``)."""
    with db.engine.connect() as conn:
        row = conn.execute(
            select(PipelineRun.id)
            .where(
                PipelineRun.status.in_(RUNNING_STATES),
                PipelineRun.runner_host == HOSTNAME,
                PipelineRun.runner_pid == os.getpid(),
                PipelineRun.cancel_requested_at.is_not(None),
            )
            .limit(1)
        ).first()
    return row is not None


def request_cancel_here(db: Database) -> int:
    """Flag the running runs of this process (this host, this pid) as asked to stop
    (``cancel_requested_at``, kept where already set): a run whose process then dies
    before it could stop it is retired CANCELLED — no retry, no trigger — not FAILED.
    One UPDATE; returns how many runs were flagged."""
    with db.engine.begin() as conn:
        result = conn.execute(
            update(PipelineRun)
            .where(
                PipelineRun.status.in_(RUNNING_STATES),
                PipelineRun.runner_host == HOSTNAME,
                PipelineRun.runner_pid == os.getpid(),
                PipelineRun.cancel_requested_at.is_(None),
            )
            .values(cancel_requested_at=utcnow())
        )
    return int(result.rowcount or 0)
