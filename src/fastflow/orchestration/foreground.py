"""``fastflow run``: one pipeline in the foreground, with its retries, then its triggers.

Guarantees: every attempt is its own run (own id, log, metrics) with ``attempt`` and
``retry_of``; the wait between attempts is the pipeline's retry delay (a process killed
during it leaves the retry to be queued for a server by the next sweep, as
``orchestration.followup`` says; one stopped by Ctrl-C/SIGTERM owes none); after the
last attempt the downstream triggers are queued for a server to run; the caller learns the
outcome of every attempt (``on_attempt``) and gets the last one back; a cancel request
for the running attempt (from any process) stops it within about a second
(``CancelWatch``).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastflow import notify
from fastflow.context import Context
from fastflow.db.engine import Database
from fastflow.errors import RetryTakenOver
from fastflow.lifecycle import disk
from fastflow.orchestration.followup import Ended, drop, follow_triggers, retry_spec
from fastflow.orchestration.retries import retry_delay, should_retry
from fastflow.runs import liveness, pipelines
from fastflow.runs import store as runs
from fastflow.runs.runner import RunResult, run_pipeline

log = logging.getLogger(__name__)


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
    each attempt's result and the delay before the next one (None: no next attempt).
    ``stop`` (``stop_on_signals``) ends the running attempt as a cancel does (CANCELLED:
    no retry, no trigger); set while waiting for a slot or for the next attempt, it
    raises ``KeyboardInterrupt`` with nothing more recorded."""
    pipeline = pipelines.load(ctx.settings.pipelines_dir, name)
    liveness.hold(ctx.db)  # other servers can tell this process is alive
    spec = retry_spec(pipeline, None)
    attempt, first = 1, None
    owed = None  # the attempt whose retry this process owes (it is ``follow_up_due``)
    pause = stop or threading.Event()
    try:
        while True:
            disk.check_soon(ctx)  # the disk-pressure incident (issue 16); never raises
            liveness.hold(ctx.db)  # (again: a lost lock connection is taken anew)
            try:
                with CancelWatch(ctx.db, also=stop) as cancel:
                    result = run_pipeline(
                        ctx.db,
                        ctx.settings,
                        name,
                        triggered_by if attempt == 1 else "retry",
                        echo=echo,
                        cancel=cancel,
                        env=env,
                        attempt=attempt,
                        retry_of=first,
                        follows=owed,  # the new attempt is that retry: one transaction
                    )
            except RetryTakenOver as e:  # a server runs it: this process is done
                print(f"fastflow: {e}", file=sys.stderr, flush=True)
                return result
            first = first or result.run_id
            again = should_retry(spec, attempt, result.status.value)
            delay = retry_delay(spec, attempt) if again else None
            # owed from its end on: stopped from here (even by a second Ctrl-C in the
            # notification wait below), the retry is dropped; killed, a sweep queues it
            owed = result.run_id if delay is not None else None
            if on_attempt is not None:
                on_attempt(result, delay)
            # a foreground process exits soon: give the delivery a bounded time to go out
            final = delay is None
            notify.cli_wait(notify.after_run(ctx, result.run_id, result.status.value, final))
            if delay is None:
                break
            if _wait(ctx, pause, delay):  # stopped: no further attempt, no trigger
                raise KeyboardInterrupt
            attempt += 1
    except KeyboardInterrupt:  # stopped on purpose: the retry is not owed any more
        _flag_stopped(ctx.db)  # (quit by a second signal: a running attempt, CANCELLED)
        if owed is not None:
            drop(ctx.db, owed)
        raise
    ended = Ended(
        result.run_id,
        pipeline.name,
        result.status.value,
        attempt,
        None if attempt == 1 else first,
        None,
        env,
    )
    follow_triggers(ctx.db, ctx.settings.pipelines_dir, pipeline, ended)
    return result


def _flag_stopped(db: Database) -> None:
    """This process is quitting on purpose: its running attempt, if any, is flagged as
    asked to stop, so that whoever retires it ends it CANCELLED (no retry, no trigger)
    instead of retrying it as interrupted. Never raises."""
    try:
        runs.request_cancel_here(db)
    except Exception as e:  # the database away: the run is retired as interrupted
        log.warning("could not record the stop of the running attempt: %s", type(e).__name__)


def _wait(ctx: Context, pause: threading.Event, delay: float) -> bool:
    """Wait ``delay`` seconds for the next attempt, keeping this process's liveness lock
    (``liveness.hold``); whether ``pause`` was set meanwhile."""
    deadline = time.monotonic() + delay
    while (left := deadline - time.monotonic()) > 0:
        if pause.wait(min(left, liveness.CHECK_S)):
            return True
        try:
            liveness.hold(ctx.db)
        except Exception as e:  # the database away: taken again at the next look
            log.debug("liveness lock not taken again: %s", type(e).__name__)
    return pause.is_set()


class CancelWatch:
    """While open, a thread looks every ``POLL_S`` for a cancel request (``fastflow
    cancel``, ``POST /api/runs/{id}/cancel``) on a run this process runs, and sets the
    event it yields: the runner then stops the run's process tree, as a server does for
    its runs. A failed look is tried again at the next poll."""

    POLL_S = 1.0

    def __init__(self, db: Database, also: threading.Event | None = None) -> None:
        self._db = db
        self._also = also  # this process was asked to stop (``stop_on_signals``)
        self.event = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cancel-watch", daemon=True)

    def __enter__(self) -> threading.Event:
        self._thread.start()
        return self.event

    def __exit__(self, *_: object) -> None:
        self._closed.set()
        self._thread.join(5)

    def _watch(self) -> None:
        # a stop request of this process is looked at twenty times a second; the database
        # (a cancel from elsewhere) once per POLL_S, as without one
        tick = self.POLL_S if self._also is None else self.POLL_S / 20
        ticks = 0
        while not self._closed.wait(tick):
            if self._also is not None and self._also.is_set():
                # recorded first: should this process die before the run is stopped (a
                # second Ctrl-C, kill -9), the run is still retired CANCELLED, not retried
                _flag_stopped(self._db)
                self.event.set()
                return
            ticks += 1
            if ticks * tick < self.POLL_S - 1e-9:
                continue
            ticks = 0
            try:
                if runs.cancel_requested_here(self._db):
                    self.event.set()
                    return
            except Exception:  # the database away for a moment: look again
                log.debug("looking for a cancel request failed", exc_info=True)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """While open, SIGINT (Ctrl-C) and SIGTERM (``timeout``, systemd, a closed terminal's
    SIGHUP) set ``stop`` — the running attempt then ends CANCELLED, as a cancel ends it,
    instead of the process dying and leaving its run to be retired as interrupted (and
    retried) by the next fastflow process. A second signal quits at once
    (``KeyboardInterrupt``). Main thread only; the previous handlers come back."""
    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            f"fastflow: {signal.Signals(signum).name}: stopping (a running attempt ends "
            "CANCELLED; a wait for a slot or a retry ends with nothing more recorded); "
            "again to quit at once",
            file=sys.stderr,
            flush=True,
        )

    previous = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
