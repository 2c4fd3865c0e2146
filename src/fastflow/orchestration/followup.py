"""What follows the end of a run: the next attempt, or the downstream triggers.

Guarantees: a FAILED or TIMEOUT run whose pipeline allows more attempts gets exactly one
next attempt, queued with ``not_before`` = end + the retry delay, ``attempt`` + 1 and
``retry_of`` = the first attempt's id (a CANCELLED run is never retried). Only after the
last attempt are triggers queued: ``on_success`` after SUCCESS, ``on_failure`` after a
final FAILED/TIMEOUT; each triggered run gets ``triggered_by = "upstream"``,
``upstream_run_id`` and ``FASTFLOW_UPSTREAM_RUN_ID``/``FASTFLOW_UPSTREAM_STATUS`` in its
environment. Triggers are not followed while they lead into a trigger cycle, nor to
a disabled pipeline (``"enabled": false``). An invalid ``pipeline.json`` is read again
for up to ``pipelines.SETTLE_S`` before the follow-up is given up (logged).

The follow-up survives its process: a run's final status is committed with
``follow_up_due`` set, and the runs it queues commit with that mark cleared (``commit``).
A process that dies in between leaves the mark; the sweep of a live process (``fastflow
serve`` every few seconds, any other command at start-up) finds the run of a dead
process and follows it up then, once, whichever process sweeps first.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from fastflow.context import Context
from fastflow.db import cache as readcache
from fastflow.db.engine import Database
from fastflow.db.models import PipelineRun, RunStatus, Trigger, utcnow
from fastflow.errors import InvalidPipelineConfig
from fastflow.orchestration import queue
from fastflow.orchestration.retries import retry_delay, should_retry
from fastflow.runs import pipelines
from fastflow.runs.specs import RetrySpec

log = logging.getLogger("fastflow.orchestration")


@dataclass(frozen=True)
class Ended:
    """The facts about a finished run that the follow-up needs."""

    run_id: uuid.UUID
    pipeline_name: str
    status: str
    attempt: int
    retry_of: uuid.UUID | None
    run_config_id: str | None = None
    env: dict[str, str] | None = None
    finished_at: datetime | None = None  # the retry delay counts from here (else: now)


@dataclass(frozen=True)
class FollowUp:
    """What a follow-up queued; ``done``: nothing, another process had followed the run
    up already (its notification is that process's too)."""

    retry: uuid.UUID | None = None
    retry_delay_s: float | None = None
    triggered: tuple[uuid.UUID, ...] = ()
    done: bool = False


def retry_spec(pipeline: pipelines.Pipeline, run_config_id: str | None) -> RetrySpec:
    """The schedule's own retries (Fast-Flow named schedules), else the pipeline's."""
    per = pipeline.config.schedule_retries
    return (
        per.get(run_config_id, pipeline.config.retries)
        if run_config_id
        else (pipeline.config.retries)
    )


def _load_settled(pipelines_dir: Path, ended: Ended) -> pipelines.Pipeline:
    """The pipeline, waiting for an invalid ``pipeline.json`` to settle: a file caught
    half-saved as the run ended must not cost it its retries and triggers."""

    def waiting(e: InvalidPipelineConfig) -> None:
        log.info(
            "run %s: %s; reading it again for up to %g s (a file being saved?)",
            ended.run_id,
            e,
            pipelines.SETTLE_S,
        )

    return pipelines.load_settled(pipelines_dir, ended.pipeline_name, waiting=waiting)


@dataclass(frozen=True)
class Queued:
    """One run a follow-up queues (the arguments of ``queue.enqueue``)."""

    pipeline_name: str
    triggered_by: str
    env: dict[str, str] | None = None
    attempt: int = 1
    retry_of: uuid.UUID | None = None
    upstream_run_id: uuid.UUID | None = None
    not_before: datetime | None = None
    run_config_id: str | None = None


_kept: set[uuid.UUID] = set()  # runs whose invalid pipeline.json was logged (once each)


def follow_up(db: Database, pipelines_dir: Path, ended: Ended, *, swept: bool = False) -> FollowUp:
    """Queue the next attempt or the triggered pipelines, at most once per run across
    every process (``commit``); never raises for a pipeline that vanished or became
    invalid (logged instead, and the run counts as followed up).

    ``swept``: the run's own process is gone and a sweep follows it up. Its
    ``pipeline.json`` is read once, without waiting for it to settle (the sweep must not
    stall a server or a command), and while it is invalid the run stays due — nothing
    is given up that a fixed file would have queued (logged once per run)."""
    try:
        if swept:
            pipeline = pipelines.load(pipelines_dir, ended.pipeline_name)
        else:
            pipeline = _load_settled(pipelines_dir, ended)
    except InvalidPipelineConfig as e:
        if not swept:
            log.warning("no follow-up for run %s: %s", ended.run_id, e)
            return FollowUp() if commit(db, ended.run_id, []) is not None else FollowUp(done=True)
        if ended.run_id not in _kept:
            if len(_kept) > 10_000:
                _kept.clear()
            _kept.add(ended.run_id)
            log.warning("run %s: follow-up waits until %s", ended.run_id, e)
        return FollowUp(done=True)  # still due: the next sweep reads the file again
    except Exception as e:  # the folder changed under us: nothing to follow
        log.warning("no follow-up for run %s: %s", ended.run_id, e)
        return FollowUp() if commit(db, ended.run_id, []) is not None else FollowUp(done=True)
    spec = retry_spec(pipeline, ended.run_config_id)
    if should_retry(spec, ended.attempt, ended.status):
        delay = retry_delay(spec, ended.attempt)
        since = ended.finished_at or utcnow()
        retry = Queued(
            pipeline.name,
            Trigger.RETRY.value,
            env=ended.env,
            attempt=ended.attempt + 1,
            retry_of=ended.retry_of or ended.run_id,
            not_before=since + timedelta(seconds=min(delay, 10**8)),
            run_config_id=ended.run_config_id,
        )
        ids = commit(db, ended.run_id, [retry])
        if ids is None:
            return FollowUp(done=True)
        log.info(
            "run %s %s: attempt %d in %.1f s", ended.run_id, ended.status, ended.attempt + 1, delay
        )
        return FollowUp(retry=ids[0], retry_delay_s=delay)
    ids = commit(db, ended.run_id, trigger_plan(pipelines_dir, pipeline, ended))
    return FollowUp(done=True) if ids is None else FollowUp(triggered=tuple(ids))


def commit(db: Database, run_id: uuid.UUID, queued: list[Queued]) -> list[uuid.UUID] | None:
    """Queue ``queued`` as run ``run_id``'s follow-up, in the transaction that clears its
    ``follow_up_due``: the runs and the mark commit together, so a process dying at any
    moment leaves either both or neither, and of processes following one run up at once
    exactly one queues anything. None: the run was followed up already (nothing queued).
    A run without a row (already deleted) is followed up as asked."""
    with db.session() as s:
        taken = s.execute(
            update(PipelineRun)
            .where(PipelineRun.id == run_id, PipelineRun.follow_up_due.is_(True))
            .values(follow_up_due=False)
            .execution_options(synchronize_session=False)
        )
        if getattr(taken, "rowcount", 0) != 1 and s.get(PipelineRun, run_id) is not None:
            return None
        ids = [
            queue.enqueue(
                db,
                q.pipeline_name,
                q.triggered_by,
                env=q.env,
                attempt=q.attempt,
                retry_of=q.retry_of,
                upstream_run_id=q.upstream_run_id,
                not_before=q.not_before,
                run_config_id=q.run_config_id,
                session=s,
            )
            for q in queued
        ]
    readcache.invalidate()
    return ids


def drop(db: Database, run_id: uuid.UUID) -> None:
    """Mark run ``run_id`` followed up with nothing queued (``fastflow run`` stopped
    before its next attempt: no retry is owed)."""
    commit(db, run_id, [])


def follow_triggers(
    db: Database, pipelines_dir: Path, pipeline: pipelines.Pipeline, ended: Ended
) -> tuple[uuid.UUID, ...]:
    """Queue the triggers of the last attempt ``ended`` (``fastflow run``), once."""
    return tuple(commit(db, ended.run_id, trigger_plan(pipelines_dir, pipeline, ended)) or ())


def trigger_plan(pipelines_dir: Path, pipeline: pipelines.Pipeline, ended: Ended) -> list[Queued]:
    """The runs that the end of the last attempt ``ended`` triggers (none while its
    triggers lead into a trigger cycle — other pipelines' triggers are followed; a
    missing, invalid or disabled target is skipped, logged)."""
    if ended.status == RunStatus.SUCCESS.value:
        targets = pipeline.config.triggers.on_success
    elif ended.status in (RunStatus.FAILED.value, RunStatus.TIMEOUT.value):
        targets = pipeline.config.triggers.on_failure
    else:
        return []
    if not targets:
        return []
    found, _ = pipelines.scan(pipelines_dir)
    cycle = pipelines.cycle_reached_from(pipelines.trigger_graph(found), pipeline.name)
    if cycle is not None:
        log.error(
            "triggers of %s not followed: they lead into the trigger cycle %s",
            pipeline.name,
            " -> ".join(cycle),
        )
        return []
    env = {"FASTFLOW_UPSTREAM_RUN_ID": str(ended.run_id), "FASTFLOW_UPSTREAM_STATUS": ended.status}
    out = []
    for name in targets:
        try:
            target = pipelines.load(pipelines_dir, name)
        except Exception as e:
            log.error("trigger %s -> %s not queued: %s", pipeline.name, name, e)
            continue
        if not target.config.enabled:  # as its schedules and webhooks: nothing automatic
            log.info("trigger %s -> %s not queued: %s is disabled", pipeline.name, name, name)
            continue
        config_id = pipeline.config.triggers.config_of(name)
        run_env = env
        if config_id is not None:  # that configuration of the target: its env under ours
            spec = next((x for x in target.config.schedules if x.run_config_id == config_id), None)
            if spec is None:
                log.error(
                    "trigger %s -> %s: %s has no schedule %r; queued without it",
                    pipeline.name,
                    name,
                    name,
                    config_id,
                )
                config_id = None
            else:
                run_env = {**spec.env, **env}
        out.append(
            Queued(
                name,
                Trigger.UPSTREAM.value,
                env=run_env,
                upstream_run_id=ended.run_id,
                run_config_id=config_id,
            )
        )
    return out


def ended_of(run: PipelineRun) -> Ended:
    """The follow-up's facts of a run row (its status as it is now)."""
    return Ended(
        run.id,
        run.pipeline_name,
        run.status,
        run.attempt or 1,
        run.retry_of,
        run.run_config_id,
        queue.env_of(run),
        run.finished_at,
    )


def after_interrupted(ctx: Context, interrupted: list[PipelineRun]) -> None:
    """What the end of each run retired as interrupted (its fastflow process died) would
    have done: its next attempt or its triggers, and its failure notification. Never
    raises, never waits: the messages go out while the command works (a short-lived
    command waits for them at its exit, within its shared ``CLI_WAIT_S``; a review
    found that waiting here first delayed the start of a ``fastflow run`` by up to 20 s
    when the mail server was slow)."""
    from fastflow import notify

    for run in interrupted:
        final = True
        try:
            done = follow_up(ctx.db, ctx.settings.pipelines_dir, ended_of(run), swept=True)
            if done.done:
                continue  # another process followed it up, and told about it
            final = done.retry is None
        except Exception:
            log.exception("follow-up of interrupted run %s failed", run.id)
        notify.after_run(ctx, run.id, run.status, final)
