"""``max_instances`` under racing claims on SQLite: servers claiming queued runs and
``fastflow run`` creating its run count and write under one lock (``runs.lock_claims``),
so processes that start claiming at the same instant never exceed the limit.

Before the lock, SQLite's driver began the transaction only at the first write: two
processes could both count 0 and both take a slot."""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.synchronize import Barrier

from sqlalchemy import func, select

from fastflow.config import load_settings
from fastflow.context import Context
from fastflow.db.engine import Database
from fastflow.db.models import PipelineRun
from fastflow.orchestration import queue
from fastflow.runs import store as runs
from tests.conftest import FORKSERVER_PRELOAD

PROCESSES = 4
ROUNDS = 8


def _claimant(url: str, pipeline: str, index: int, barrier: Barrier) -> None:
    """One process: a server's claim (even ``index``) or ``fastflow run``'s create (odd)."""
    db = Database(load_settings(database_url=url))
    try:
        with db.session() as s:  # connected and warm before the start line
            s.scalar(select(func.count()).select_from(PipelineRun))
        barrier.wait(timeout=60)
        if index % 2 == 0:
            queue.claim(db, 1, lambda _name: 1)
        else:
            runs.create_within(db, pipeline, "cli", 1, pid=os.getpid())
    finally:
        db.dispose()


def test_racing_claims_never_exceed_max_instances(app: Context, ff_env: dict[str, str]) -> None:
    url = ff_env["DATABASE_URL"]
    # not "fork": a child forked while another thread of this process (a notification
    # worker left by an earlier test) held a lock could hang on it before the start line
    fork = multiprocessing.get_context("forkserver")
    fork.set_forkserver_preload(FORKSERVER_PRELOAD)
    over: list[tuple[str, int]] = []
    for round_ in range(ROUNDS):
        pipeline = f"race-{round_}"
        for _ in range(PROCESSES):
            queue.enqueue(app.db, pipeline, "webhook")
        app.db.dispose()  # (the children open their own connections)
        barrier = fork.Barrier(PROCESSES)
        procs = [
            fork.Process(target=_claimant, args=(url, pipeline, i, barrier))
            for i in range(PROCESSES)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0] * PROCESSES
        with app.db.session() as s:
            active = s.scalar(
                select(func.count())
                .select_from(PipelineRun)
                .where(
                    PipelineRun.pipeline_name == pipeline,
                    PipelineRun.status.in_(runs.RUNNING_STATES),
                )
            )
        assert active is not None and active >= 1  # somebody got the slot
        if active > 1:
            over.append((pipeline, active))
    assert over == []
