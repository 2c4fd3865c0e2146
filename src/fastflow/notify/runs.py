"""After a run: one incident per pipeline, announced by e-mail and on Teams in the background.

Guarantees (guarantee 6 of DESIGN.md; pinned by ``tests/notify/test_notify_runs.py``):

- ``after_run`` only reads the run's row and its ``pipeline.json`` and writes the incident
  and the "in progress" delivery rows before it returns; reading the log's tail (which
  may come from the archive) and all network traffic happen in the notification worker
  (``delivery.submit``), so a down SMTP server or a hanging webhook cannot delay the caller;
- no exception escapes ``after_run`` or ``open_run_incidents``: failures are logged and
  recorded as a delivery with ``ok = False``;
- per pipeline, the final failure that opens its incident is announced once, further
  failures only by a reminder every ``NOTIFY_REMINDER_HOURS``, the next success once
  (``incidents.decide_run``); an attempt that will be retried (``final=False``) changes
  nothing; ``pipeline.json`` ``"notify"`` can silence failures or recoveries;
- the log lines sent are the last ``MAX_LOG_LINES`` of at most ``TAIL_BYTES`` read (memory
  stays bounded whatever the log's size), and pass ``redact``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from fastflow.context import Context
from fastflow.db.models import PipelineRun, utcnow
from fastflow.notify import records, run_messages
from fastflow.notify.delivery import (
    Delivery,
    enabled_channels,
    log,
    reminder_interval,
    safe,
    start_rows,
    submit,
)
from fastflow.notify.incidents import (
    RUN_FAILED_STATUSES,
    RUN_SUCCESS_STATUS,
    Kind,
    RunDecision,
    RunIncident,
)
from fastflow.notify.messages import Message
from fastflow.notify.retry import DeliveryOptions
from fastflow.notify.run_messages import RunNotice
from fastflow.runs import pipelines
from fastflow.runs import store as run_rows
from fastflow.runs.specs import NotifySpec
from fastflow.security import redact

TAIL_BYTES = 64 * 1024  # read from the end of the log for its last lines


def after_run(
    ctx: Context,
    run_id: uuid.UUID,
    status: str,
    final: bool,
    *,
    now: datetime | None = None,
    options: DeliveryOptions | None = None,
) -> Delivery:
    """Announce what the end of run ``run_id`` (``status``) means for its pipeline's
    incident, in the background. Call it after every run: ``final`` is False for a
    FAILED/TIMEOUT attempt that will be retried (then nothing happens); a SUCCESS always
    counts (it closes an open incident).

    Returns at once with a handle; a short-lived process (a foreground ``fastflow run``)
    can give the delivery time with ``cli_wait(handle)``. Never raises.
    """
    try:
        if status not in (RUN_SUCCESS_STATUS, *RUN_FAILED_STATUSES):
            return Delivery.nothing()  # CANCELLED (or still running): neither fails nor heals
        if status != RUN_SUCCESS_STATUS and not final:
            return Delivery.nothing()
        run = run_rows.get(ctx.db, uuid.UUID(str(run_id)))
        if run is None:
            log.warning("no notification about run %s: the run is not in the database", run_id)
            return Delivery.nothing()
        return _announce(ctx, run, status, now or utcnow(), options or DeliveryOptions())
    except Exception as e:
        log.error("cannot notify about run %s: %s", run_id, safe(ctx, f"{type(e).__name__}: {e}"))
        return Delivery.nothing()


def _announce(
    ctx: Context, run: PipelineRun, status: str, now: datetime, options: DeliveryOptions
) -> Delivery:
    spec = notify_spec(ctx, run.pipeline_name)
    applied = records.apply_run(
        ctx.db,
        run.pipeline_name,
        str(run.id),
        status,
        now,
        on_failure=spec.on_failure,
        on_recovery=spec.on_recovery,
        reminder_interval=reminder_interval(ctx),
    )
    decision = applied.decision
    channels = enabled_channels(ctx)
    if decision.kind is None and decision.counted and spec.on_failure and applied.incident_id:
        # another failure of a failing pipeline: nothing new, unless the last message
        # about it did not get through
        channels = records.undelivered(ctx.db, applied.incident_id, channels, now)
        if channels:
            log.warning(
                "the last notification about pipeline %s was not delivered on %s: sending it again",
                run.pipeline_name,
                ", ".join(channels),
            )
            decision = replace(decision, kind=Kind.RUN_REMINDER)
    incident_id = applied.incident_id
    if decision.kind is None and applied.closed is not None:
        # all well: was the pipeline's last recovery told everywhere?
        again = _recovery_again(ctx, run.pipeline_name, applied.closed, channels, now)
        if again is not None:
            incident_id, ended, channels = again
            decision = replace(decision, kind=Kind.RUN_RECOVERY, ended=ended)
    notice = _notice(ctx, run, status, now, decision)
    if notice is None:
        return Delivery.nothing()
    subject = run_messages.subject(notice)
    log.info("run notification (%s): %s", notice.kind.value, subject)
    if not channels:
        return Delivery.nothing(notice.kind)
    rows = start_rows(ctx, channels, notice.kind, subject, incident_id)
    delivery = Delivery(notice.kind)
    submit(ctx, delivery, rows, lambda: _render(ctx, run, notice), options)
    return delivery


def _recovery_again(
    ctx: Context,
    pipeline: str,
    closed: tuple[int, RunIncident],
    channels: list[str],
    now: datetime,
) -> tuple[int, RunIncident, list[str]] | None:
    """``closed`` (the pipeline's incident closed last within ``NOTIFY_REMINDER_HOURS``,
    found by ``records.apply_run``) if its recovery message did not get through on some
    of ``channels`` (failed, or cut short): its id, its state and those channels — the
    next successful run sends the recovery again there. None when there is nothing to
    send again (older news is stale)."""
    if not channels:
        return None
    incident_id, ended = closed
    failed = records.undelivered(ctx.db, incident_id, channels, now, kind=Kind.RUN_RECOVERY.value)
    if not failed:
        return None
    log.warning(
        "the recovery message about pipeline %s was not delivered on %s: sending it again",
        pipeline,
        ", ".join(failed),
    )
    return incident_id, ended, failed


def notify_spec(ctx: Context, pipeline: str) -> NotifySpec:
    """The pipeline's ``"notify"`` settings; the defaults (notify) when it cannot be loaded."""
    try:
        return pipelines.load(ctx.settings.pipelines_dir, pipeline).config.notify
    except Exception as e:
        log.info(
            "pipeline %s cannot be loaded (%s): notifying with the defaults",
            pipeline,
            safe(ctx, f"{type(e).__name__}: {e}"),
        )
        return NotifySpec()


def _notice(
    ctx: Context, run: PipelineRun, status: str, now: datetime, decision: RunDecision
) -> RunNotice | None:
    if decision.kind is None:
        return None
    incident = decision.incident or decision.ended
    return RunNotice(
        kind=decision.kind,
        at=now,
        base_url=ctx.settings.fastflow_base_url,
        pipeline=run.pipeline_name,
        run_id=str(run.id),
        status=status,
        exit_code=run.exit_code,
        attempt=run.attempt or 1,
        started_at=run.started_at,
        finished_at=run.finished_at,
        since=incident.opened_at if incident is not None else None,
        failures=incident.failures if incident is not None else 0,
    )


def _render(ctx: Context, run: PipelineRun, notice: RunNotice) -> Message:
    """The final words; a failure or reminder first gets the log's last lines (worker)."""
    if notice.kind != Kind.RUN_RECOVERY:
        lines, note = log_tail(ctx, run)
        notice = replace(notice, log_lines=lines, log_note=note)
    return run_messages.render(notice)


def log_tail(ctx: Context, run: PipelineRun) -> tuple[tuple[str, ...], str | None]:
    """The last lines of the run's log, secrets masked, and why there are none (or None)."""
    try:
        from fastflow.runs import readback  # boto3 only when a message is really built

        source = readback.open_run_file(ctx, run.id, "log", run, tail_bytes=TAIL_BYTES)
        if source is None:
            return (), "the run has no log"
        data = _last_bytes(source.chunks, TAIL_BYTES)
    except Exception as e:
        return (), "the log cannot be read: " + safe(ctx, f"{type(e).__name__}: {e}")
    text = redact(data.decode("utf-8", "replace"), ctx.settings)
    lines = run_messages.tail_lines(text, partial_first=source.size > TAIL_BYTES)
    return lines, None if lines else "the log is empty"


def _last_bytes(chunks: Iterable[bytes], limit: int) -> bytes:
    """The last ``limit`` bytes of ``chunks`` (never holding much more than twice that)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if len(buf) > 2 * limit:
            del buf[: len(buf) - limit]
    return bytes(buf[-limit:])


def open_run_incidents(ctx: Context) -> list[dict[str, Any]]:
    """Pipelines whose incident is open, oldest first, for the UI's bell: ``pipeline``,
    ``run_id`` and ``status`` of the latest failed run, ``since`` (ISO 8601) and
    ``failures`` (final failed runs so far). Never raises (an empty list instead)."""
    try:
        return records.open_run_incidents(ctx.db)
    except Exception as e:
        log.error("cannot read the run incidents: %s", safe(ctx, f"{type(e).__name__}: {e}"))
        return []
