"""``fastflow run``: one pipeline in the foreground, with its retries, then its triggers.

Guarantees: every attempt is its own run (own id, log, metrics) with ``attempt`` and
``retry_of``; the wait between attempts is the pipeline's retry delay; after the last
attempt the downstream triggers are queued for a server to run; the caller learns the
outcome of every attempt (``on_attempt``) and gets the last one back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from fastflow import notify
from fastflow.context import Context
from fastflow.lifecycle import disk
from fastflow.orchestration.followup import Ended, queue_triggers, retry_spec
from fastflow.orchestration.retries import retry_delay, should_retry
from fastflow.runs import liveness, pipelines
from fastflow.runs.runner import RunResult, run_pipeline


def run_in_foreground(
    ctx: Context,
    name: str,
    triggered_by: str,
    *,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] | None = None,
    on_attempt: Callable[[RunResult, float | None], None] | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """Run ``name`` until it succeeds or its retries are used up; ``on_attempt`` gets
    each attempt's result and the delay before the next one (None: no next attempt)."""
    pipeline = pipelines.load(ctx.settings.pipelines_dir, name)
    liveness.hold(ctx.db)  # other servers can tell this process is alive
    spec = retry_spec(pipeline, None)
    attempt, first = 1, None
    pause = stop or threading.Event()
    while True:
        disk.check_soon(ctx)  # the disk-pressure incident (issue 16); never raises
        result = run_pipeline(
            ctx.db,
            ctx.settings,
            name,
            triggered_by if attempt == 1 else "retry",
            echo=echo,
            env=env,
            attempt=attempt,
            retry_of=first,
        )
        first = first or result.run_id
        again = should_retry(spec, attempt, result.status.value)
        delay = retry_delay(spec, attempt) if again else None
        if on_attempt is not None:
            on_attempt(result, delay)
        # a foreground process exits soon: give the delivery a bounded time to go out
        notify.after_run(ctx, result.run_id, result.status.value, delay is None).wait(
            notify.CLI_WAIT_S
        )
        if delay is None or pause.wait(delay):
            break
        attempt += 1
    ended = Ended(
        result.run_id,
        pipeline.name,
        result.status.value,
        attempt,
        None if attempt == 1 else first,
        None,
        env,
    )
    queue_triggers(ctx.db, ctx.settings.pipelines_dir, pipeline, ended)
    return result
