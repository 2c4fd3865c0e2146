"""The executing side of the queue in ``fastflow serve``: claim QUEUED runs, execute
them in threads, stop cancelled ones, queue what follows.

Guarantees: at most ``MAX_CONCURRENT_RUNS`` runs execute in this process at once; a
run's cancellation (from any server sharing the database) is noticed within
``WATCH_S`` and ends its process tree (SIGTERM, then SIGKILL after
``CANCEL_GRACE_SECONDS``); every run reaches a final status even if its pipeline
vanished; the retry or triggers of every finished run are queued exactly once (by the
thread that ran it).

Container runs survive their server: at start-up, and whenever dead servers are swept,
the RUNNING container runs of dead supervisors are adopted (``runs.store.adopt``: one
server wins) and supervised to their end here (``runs.runner.resume``); once at
start-up the containers of runs that are no longer RUNNING are removed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import replace
from datetime import timedelta

from fastflow import notify
from fastflow.context import Context
from fastflow.db.models import PipelineRun, RunStatus, utcnow
from fastflow.errors import FastflowError
from fastflow.lifecycle import disk
from fastflow.orchestration import queue
from fastflow.orchestration.followup import Ended, follow_up
from fastflow.runs import liveness, logsdir, pipelines, runner
from fastflow.runs import store as runs

log = logging.getLogger("fastflow.orchestration")
POLL_S = 0.5
WATCH_S = 1.0
CONFIG_TTL_S = 5.0
SWEEP_S = 5.0
STALE_S = 60.0  # this process's own finished runs still due after this: follow-up failed
SAID_MAX = 10_000  # runs whose sweep follow-up was logged (a bounded memory of them)


class Dispatcher:
    """Starts on first use; ``stop()`` ends the loop: nothing is claimed after it. Runs
    still executing end with the process (their threads are daemons); the next start
    retires them as interrupted and follows them up (retries, triggers)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._active: dict[uuid.UUID, threading.Event] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._limits: dict[str, tuple[float, int]] = {}
        self._adopt_blocked: str | None = None  # why container runs wait (said once)
        self._said: set[uuid.UUID] = set()  # runs followed up by a sweep (logged once)

    # --- the API's view -----------------------------------------------------------------

    def start(self, name: str, triggered_by: str, env: dict[str, str] | None = None) -> uuid.UUID:
        """Queue a run of ``name`` (validated now) and wake the loop."""
        pipeline = pipelines.load(self._ctx.settings.pipelines_dir, name)
        run_id = queue.enqueue(self._ctx.db, pipeline.name, triggered_by, env=env)
        self.ensure_running()
        self._wake.set()
        return run_id

    def cancel(self, run_id: uuid.UUID) -> str:
        """Cancel a queued run now, or ask the server that runs it to stop it."""
        outcome = queue.cancel(self._ctx.db, run_id)
        with self._lock:
            event = self._active.get(run_id)
        if event is not None:
            event.set()
        return outcome

    def ensure_running(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Look at the queue now (new runs were queued)."""
        self._wake.set()

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._active)

    # --- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        last_watch = last_sweep = 0.0
        liveness.hold(self._ctx.db)
        threading.Thread(
            target=self._containers_at_startup, name="docker-housekeeping", daemon=True
        ).start()
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_sweep >= SWEEP_S:
                    self._sweep_dead_servers()
                    last_sweep = time.monotonic()
                self._claim_and_start()
                if time.monotonic() - last_watch >= WATCH_S:
                    self._watch_cancellations()
                    last_watch = time.monotonic()
            except Exception:
                log.exception("dispatcher pass failed; retrying")
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _max_instances(self, name: str) -> int:
        cached = self._limits.get(name)
        if cached is not None and time.monotonic() - cached[0] < CONFIG_TTL_S:
            return cached[1]
        try:
            limit = pipelines.load(self._ctx.settings.pipelines_dir, name).config.max_instances
        except Exception:
            limit = 1  # the run fails with a clear note when it starts
        self._limits[name] = (time.monotonic(), limit)
        return limit

    def _claim_and_start(self) -> None:
        free = self._ctx.settings.max_concurrent_runs - self.active
        for run in queue.claim(self._ctx.db, free, self._max_instances):
            cancel = threading.Event()
            with self._lock:
                self._active[run.id] = cancel
            threading.Thread(
                target=self._execute, args=(run, cancel), name=f"run-{run.id}", daemon=True
            ).start()

    def _sweep_dead_servers(self) -> None:
        """Runs of a server that died: claimed-but-unstarted ones go back to the queue,
        running ones are marked FAILED (on this host, or — PostgreSQL — on any)."""
        db, logs = self._ctx.db, self._ctx.settings.logs_root
        try:
            liveness.hold(db)  # (again: a lost lock connection is taken anew)
        except Exception as e:  # the database away: the sweep below fails as well
            log.warning("liveness lock not taken again: %s", type(e).__name__)
        failed: list[PipelineRun] = []
        n = runs.recover_orphans(db, logs, failed=failed)
        n += runs.sweep_dead(
            db,
            logs,
            lambda r: liveness.is_alive(db, r.runner_host, r.runner_pid, r.runner_started),
            this_host=False,
            failed=failed,
        )
        if n:
            log.warning("%d runs of dead fastflow processes retired or re-queued", n)
        for run in failed:  # their retries and triggers, as if they had ended here
            self._after(run, run.status, swept=True)
        self._retire_lost()
        self._follow_up_left_over()
        self._adopt_containers()

    def _retire_lost(self) -> None:
        """Runs this process claimed whose thread ended without recording their end (the
        database was away as they ended, longer than ``runs.finish`` tries): retired as
        interrupted and followed up, so that they neither stay RUNNING for the life of
        the server nor hold their pipeline's ``max_instances`` slots."""
        me = os.getpid()
        with self._lock:
            active = set(self._active)
        lost: list[PipelineRun] = []
        n = runs.sweep_dead(
            self._ctx.db,
            self._ctx.settings.logs_root,
            lambda r: r.runner_pid != me or r.id in active,
            this_host=True,
            failed=lost,
            why="its end could not be recorded (the database was unavailable)",
        )
        if n:
            log.warning("%d runs whose end could not be recorded retired as interrupted", n)
        for run in lost:
            self._after(run, run.status, swept=True)

    def _follow_up_left_over(self) -> None:
        """Follow up the finished runs whose process died before it queued their retry
        or triggers — and this process's own that are still due ``STALE_S`` after their
        end (their follow-up failed: the database was away)."""
        db, me = self._ctx.db, os.getpid()
        stale = utcnow() - timedelta(seconds=STALE_S)

        def here(run: PipelineRun) -> bool:
            if run.runner_pid == me:
                return run.finished_at is None or run.finished_at > stale
            return runs.runner_alive(run)

        def elsewhere(run: PipelineRun) -> bool:
            return liveness.is_alive(db, run.runner_host, run.runner_pid, run.runner_started)

        left = runs.unfollowed(db, here, this_host=True)
        left += runs.unfollowed(db, elsewhere, this_host=False)
        for run in left:
            if run.id not in self._said:  # (once: an invalid pipeline.json keeps it due)
                if len(self._said) > SAID_MAX:
                    self._said.clear()  # (bounded: said again at worst, never grows)
                self._said.add(run.id)
                log.warning(
                    "run %s (%s) ended without its retry or triggers queued: following it up",
                    run.id,
                    run.status,
                )
            self._after(run, run.status, swept=True)

    # --- container runs that outlived their server ------------------------------------

    def _containers_at_startup(self) -> None:
        """Remove the containers of runs that are no longer RUNNING (best effort)."""
        from fastflow.executors import container
        from fastflow.executors.base import ExecutorError

        db, settings = self._ctx.db, self._ctx.settings
        try:
            if not container.uses_docker(db, settings):
                return
            removed = container.remove_stale(db, settings)
        except ExecutorError as e:
            log.warning("Docker housekeeping skipped: %s", e)
            return
        except Exception:
            log.exception("Docker housekeeping failed")
            return
        if removed:
            log.info("removed %d containers or volumes of runs no longer running", removed)

    def _adopt_containers(self) -> None:
        """Supervise the RUNNING container runs whose server died (this one, before a
        restart, or another one on PostgreSQL)."""
        db = self._ctx.db

        def alive(run: PipelineRun) -> bool:
            if run.runner_host == runs.HOSTNAME:
                return runs.runner_alive(run)
            return liveness.is_alive(db, run.runner_host, run.runner_pid, run.runner_started)

        orphans = runs.orphaned_container_runs(db, alive)
        if not orphans:
            return
        root = self._ctx.settings.logs_root
        away = logsdir.problem(db, root, mark=False)
        if away is None and not root.is_dir():
            # never marked (an installation from before the marker): a running run has
            # its log there, so a missing LOGS_DIR is a volume that is away here too
            away = f"LOGS_DIR ({root}) does not exist while container runs log into it"
        if away is not None:  # their output would go where the volume should be:
            # the containers go on, and are re-attached once LOGS_DIR is back
            if away != self._adopt_blocked:  # (said once per reason)
                log.warning("not re-attaching %d container runs yet: %s", len(orphans), away)
            self._adopt_blocked = away
            return
        self._adopt_blocked = None
        for run in orphans:
            with self._lock:
                if run.id in self._active:
                    continue
            if not runs.adopt(db, run, pid=os.getpid()):
                continue  # another server was first
            log.warning("run %s: re-attaching to its container", run.id)
            cancel = threading.Event()
            with self._lock:
                self._active[run.id] = cancel
            threading.Thread(
                target=self._resume, args=(run, cancel), name=f"run-{run.id}", daemon=True
            ).start()

    def _resume(self, run: PipelineRun, cancel: threading.Event) -> None:
        settings = self._ctx.settings
        status = RunStatus.FAILED.value
        try:
            result = runner.resume(
                self._ctx.db, settings, run, cancel=cancel, kill_grace=settings.cancel_grace_seconds
            )
            status = result.status.value
        except Exception as e:
            log.exception("run %s: re-attaching to its container failed", run.id)
            try:
                runs.fail_with_note(
                    self._ctx.db,
                    settings.logs_root,
                    run.id,
                    f"interrupted: re-attaching failed: {e}",
                )
            except Exception:  # the database away: the sweep retires it (``_retire_lost``)
                log.exception("run %s: its end cannot be recorded", run.id)
        finally:
            with self._lock:
                self._active.pop(run.id, None)
        self._after(run, status)

    def _watch_cancellations(self) -> None:
        with self._lock:
            ids = list(self._active)
        for run_id in queue.cancel_requested(self._ctx.db, ids):
            with self._lock:
                event = self._active.get(run_id)
            if event is not None and not event.is_set():
                log.info("run %s: cancellation requested; stopping its process tree", run_id)
                event.set()

    def _execute(self, run: PipelineRun, cancel: threading.Event) -> None:
        settings = self._ctx.settings
        status = RunStatus.FAILED.value
        try:
            pipeline = self._settled(run, cancel)
            if isinstance(pipeline, str):
                status = self._not_started(run, cancel, pipeline)
            else:
                timeouts = pipeline.config.schedule_timeouts
                if run.run_config_id is not None and run.run_config_id in timeouts:
                    # a Fast-Flow named schedule's own timeout (None = unlimited)
                    pipeline = replace(pipeline, timeout=timeouts[run.run_config_id])
                disk.check_soon(self._ctx)  # the disk-pressure incident (issue 16); cheap
                result = runner.execute(
                    self._ctx.db,
                    settings,
                    pipeline,
                    run.id,
                    cancel=cancel,
                    extra_env=queue.env_of(run),
                    kill_grace=settings.cancel_grace_seconds,
                )
                status = result.status.value
        except Exception as e:
            log.exception("run %s of %s failed to execute", run.id, run.pipeline_name)
            status = self._end_after_error(run, cancel, e)
        finally:
            with self._lock:
                self._active.pop(run.id, None)
        self._after(run, status)

    def _end_after_error(self, run: PipelineRun, cancel: threading.Event, e: Exception) -> str:
        """End ``run`` after an error escaped its execution; its status as recorded. A run
        asked to stop (here or in the database) ends CANCELLED, not retried; a status
        the run already reached stays (the error came after it)."""
        db = self._ctx.db
        try:
            row = runs.get(db, run.id)
            asked = cancel.is_set() or (row is not None and row.cancel_requested_at is not None)
            end = RunStatus.CANCELLED if asked else RunStatus.FAILED
            runs.fail_with_note(
                db,
                self._ctx.settings.logs_root,
                run.id,
                f"fastflow could not execute the run: {e}",
                status=end,
            )
            row = runs.get(db, run.id)
            return row.status if row is not None else end.value
        except Exception:  # the database away: the sweep retires it (``_retire_lost``)
            log.exception("run %s: its end cannot be recorded", run.id)
            return RunStatus.CANCELLED.value if cancel.is_set() else RunStatus.FAILED.value

    def _settled(self, run: PipelineRun, cancel: threading.Event) -> pipelines.Pipeline | str:
        """The run's pipeline, its ``pipeline.json`` read again for up to
        ``pipelines.SETTLE_S`` while invalid (an editor saving it; an outside audit: the
        run failed and used up a retry); why not — logged, without a traceback — when it
        stays invalid, is gone, or the run is cancelled meanwhile."""
        try:
            return pipelines.load_settled(
                self._ctx.settings.pipelines_dir,
                run.pipeline_name,
                waiting=lambda e: log.info(
                    "run %s: %s; reading it again for up to %g s before it starts",
                    run.id,
                    e,
                    pipelines.SETTLE_S,
                ),
                stop=cancel,
            )
        except FastflowError as e:
            log.warning("run %s of %s not started: %s", run.id, run.pipeline_name, e)
            return str(e)

    def _not_started(self, run: PipelineRun, cancel: threading.Event, why: str) -> str:
        """End ``run``, whose pipeline could not be loaded (``why``): CANCELLED when it was
        cancelled meanwhile, else FAILED; its final status."""
        end = RunStatus.CANCELLED if cancel.is_set() else RunStatus.FAILED
        note = "the run was cancelled" if cancel.is_set() else why
        try:
            runs.fail_with_note(
                self._ctx.db,
                self._ctx.settings.logs_root,
                run.id,
                f"not started: {note}",
                status=end,
            )
        except Exception:  # the database away: the sweep retires it (``_retire_lost``)
            log.exception("run %s: its end cannot be recorded", run.id)
        return end.value

    def _after(self, run: PipelineRun, status: str, *, swept: bool = False) -> None:
        """Queue the retry or triggers of a finished run and notify (never raises);
        ``swept``: found by a sweep, its own thread or process gone (``follow_up``)."""
        settings = self._ctx.settings
        ended = Ended(
            run.id,
            run.pipeline_name,
            status,
            run.attempt or 1,
            run.retry_of,
            run.run_config_id,
            queue.env_of(run),
            run.finished_at,
        )
        final = True
        try:
            done = follow_up(self._ctx.db, settings.pipelines_dir, ended, swept=swept)
            if done.done:
                return  # another process followed it up (and notified)
            final = done.retry is None
        except Exception:  # left due: the sweep tries again (``_follow_up_left_over``)
            log.exception("follow-up of run %s failed", run.id)
        notify.after_run(self._ctx, run.id, status, final)  # background; never raises
        self._wake.set()
