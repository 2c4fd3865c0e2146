"""Pipeline runs started from the API or UI, executed in background threads.

The row is created (PENDING, owned by this process) before the thread starts, so a run id
can be returned at once; if the process dies, start-up recovery marks the run FAILED.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid

from fastflow.context import Context
from fastflow.db.models import RunStatus
from fastflow.runs import pipelines, runner
from fastflow.runs import store as runs

log = logging.getLogger("fastflow.background")


class RunLauncher:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._active: dict[uuid.UUID, tuple[threading.Thread, threading.Event]] = {}

    def start(self, name: str, triggered_by: str) -> uuid.UUID:
        """Validate the pipeline, record a PENDING run, execute it in a thread."""
        pipeline = pipelines.load(self._ctx.settings.pipelines_dir, name)
        run = runs.create(self._ctx.db, pipeline.name, triggered_by, pid=os.getpid())
        cancel = threading.Event()
        thread = threading.Thread(
            target=self._execute,
            args=(pipeline, run.id, cancel),
            name=f"run-{run.id}",
            daemon=True,
        )
        with self._lock:
            self._active[run.id] = (thread, cancel)
        thread.start()
        return run.id

    def _execute(
        self, pipeline: pipelines.Pipeline, run_id: uuid.UUID, cancel: threading.Event
    ) -> None:
        try:
            runner.execute(self._ctx.db, self._ctx.settings, pipeline, run_id, cancel=cancel)
        except Exception:
            log.exception("run %s of %s failed to execute", run_id, pipeline.name)
            runs.finish(self._ctx.db, run_id, RunStatus.FAILED, None, None)
        finally:
            with self._lock:
                self._active.pop(run_id, None)

    def cancel(self, run_id: uuid.UUID) -> bool:
        with self._lock:
            entry = self._active.get(run_id)
        if entry is None:
            return False
        entry[1].set()
        return True
