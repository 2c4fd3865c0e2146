"""What follows the end of a run: the next attempt, or the downstream triggers.

Guarantees: a FAILED or TIMEOUT run whose pipeline allows more attempts gets exactly one
next attempt, queued with ``not_before`` = end + the retry delay, ``attempt`` + 1 and
``retry_of`` = the first attempt's id (a CANCELLED run is never retried). Only after the
last attempt are triggers queued: ``on_success`` after SUCCESS, ``on_failure`` after a
final FAILED/TIMEOUT; each triggered run gets ``triggered_by = "upstream"``,
``upstream_run_id`` and ``FASTFLOW_UPSTREAM_RUN_ID``/``FASTFLOW_UPSTREAM_STATUS`` in its
environment. Triggers are not followed while the pipelines have a trigger cycle, nor to
a disabled pipeline (``"enabled": false``). An invalid ``pipeline.json`` is read again
for up to ``SETTLE_S`` before the follow-up is given up (logged).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from fastflow.context import Context
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


@dataclass(frozen=True)
class FollowUp:
    retry: uuid.UUID | None = None
    retry_delay_s: float | None = None
    triggered: tuple[uuid.UUID, ...] = ()


def retry_spec(pipeline: pipelines.Pipeline, run_config_id: str | None) -> RetrySpec:
    """The schedule's own retries (Fast-Flow named schedules), else the pipeline's."""
    per = pipeline.config.schedule_retries
    return (
        per.get(run_config_id, pipeline.config.retries)
        if run_config_id
        else (pipeline.config.retries)
    )


SETTLE_S = 5.0  # how long an invalid pipeline.json is read again (an editor saving it)
SETTLE_POLL_S = 0.25


def _load_settled(pipelines_dir: Path, ended: Ended) -> pipelines.Pipeline:
    """The pipeline, read again for up to ``SETTLE_S`` while its ``pipeline.json`` is
    invalid: a file caught half-saved as the run ended must not cost it its retries and
    triggers (an outside audit). A missing pipeline is not waited for."""
    deadline = time.monotonic() + SETTLE_S
    said = False
    while True:
        try:
            return pipelines.load(pipelines_dir, ended.pipeline_name)
        except InvalidPipelineConfig as e:
            if time.monotonic() >= deadline:
                raise
            if not said:
                log.info(
                    "run %s: %s; reading it again for up to %g s (a file being saved?)",
                    ended.run_id,
                    e,
                    SETTLE_S,
                )
                said = True
            threading.Event().wait(SETTLE_POLL_S)


def follow_up(db: Database, pipelines_dir: Path, ended: Ended) -> FollowUp:
    """Queue the next attempt or the triggered pipelines; never raises for a pipeline
    that vanished or became invalid (logged instead)."""
    try:
        pipeline = _load_settled(pipelines_dir, ended)
    except Exception as e:  # the folder changed under us: nothing to follow
        log.warning("no follow-up for run %s: %s", ended.run_id, e)
        return FollowUp()
    spec = retry_spec(pipeline, ended.run_config_id)
    if should_retry(spec, ended.attempt, ended.status):
        delay = retry_delay(spec, ended.attempt)
        next_id = queue.enqueue(
            db,
            pipeline.name,
            Trigger.RETRY.value,
            env=ended.env,
            attempt=ended.attempt + 1,
            retry_of=ended.retry_of or ended.run_id,
            not_before=utcnow() + timedelta(seconds=min(delay, 10**8)),
            run_config_id=ended.run_config_id,
        )
        log.info(
            "run %s %s: attempt %d in %.1f s", ended.run_id, ended.status, ended.attempt + 1, delay
        )
        return FollowUp(retry=next_id, retry_delay_s=delay)
    return FollowUp(triggered=queue_triggers(db, pipelines_dir, pipeline, ended))


def queue_triggers(
    db: Database, pipelines_dir: Path, pipeline: pipelines.Pipeline, ended: Ended
) -> tuple[uuid.UUID, ...]:
    if ended.status == RunStatus.SUCCESS.value:
        targets = pipeline.config.triggers.on_success
    elif ended.status in (RunStatus.FAILED.value, RunStatus.TIMEOUT.value):
        targets = pipeline.config.triggers.on_failure
    else:
        return ()
    if not targets:
        return ()
    _, problems = pipelines.check_all(pipelines_dir)
    cycles = [p for p in problems if p.message.startswith("trigger cycle")]
    if cycles:
        log.error("triggers of %s not followed: %s", pipeline.name, cycles[0].message)
        return ()
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
            queue.enqueue(
                db,
                name,
                Trigger.UPSTREAM.value,
                env=run_env,
                upstream_run_id=ended.run_id,
                run_config_id=config_id,
            )
        )
    return tuple(out)


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
    )


def after_interrupted(ctx: Context, interrupted: list[PipelineRun], wait_s: float = 0.0) -> None:
    """What the end of each run retired as interrupted (its fastflow process died) would
    have done: its next attempt or its triggers, and its failure notification — waiting
    at most ``wait_s`` for the deliveries (a short-lived command). Never raises."""
    from fastflow import notify

    deliveries = []
    for run in interrupted:
        final = True
        try:
            final = follow_up(ctx.db, ctx.settings.pipelines_dir, ended_of(run)).retry is None
        except Exception:
            log.exception("follow-up of interrupted run %s failed", run.id)
        deliveries.append(notify.after_run(ctx, run.id, run.status, final))
    for delivery in deliveries:
        delivery.wait(wait_s)
