"""A run's end is recorded even when the database is locked (or away) for longer than
its busy timeout at that moment: ``runs.finish`` tries again for about 15 s (an outside
audit had a run stay RUNNING for the life of its server after such a blip)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from fastflow.config import load_settings
from fastflow.context import bootstrap
from fastflow.runs import runner
from fastflow.runs import store as runs
from fastflow.runs.runner import RunResult
from tests.conftest import MakePipeline, wait_until


def test_the_end_of_a_run_outlasts_a_database_locked_longer_than_its_busy_timeout(
    ff_env: dict[str, str],
    make_pipeline: MakePipeline,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db_file = tmp_path / "data" / "fastflow.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{db_file}?timeout=0.2")
    ctx = bootstrap(load_settings())
    gate = tmp_path / "gate"
    make_pipeline(
        "ending",
        "import pathlib, time\n"
        "print('about to end', flush=True)\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n"
        "    time.sleep(0.02)\n",
    )
    caplog.set_level(logging.WARNING, logger="fastflow.runs")
    result: list[RunResult] = []
    worker = threading.Thread(
        target=lambda: result.append(runner.run_pipeline(ctx.db, ctx.settings, "ending", "manual"))
    )
    logs = Path(ff_env["LOGS_DIR"]) / "ending"
    worker.start()
    locker = sqlite3.connect(db_file, timeout=30, isolation_level=None)
    try:
        wait_until(
            lambda: any(b"about to end" in f.read_bytes() for f in logs.glob("*/run.log")),
            60,
            "the pipeline's last line",
        )
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the database
        gate.touch()  # the pipeline ends now, while the database is locked
        wait_until(lambda: "its end not recorded" in caplog.text, 60, "a failed attempt")
        locker.execute("COMMIT")  # the lock goes: the next attempt records the end
    finally:
        locker.close()
        worker.join(60)
    (done,) = result
    assert done.status.value == "SUCCESS"
    row = runs.get(ctx.db, done.run_id)
    assert row is not None and row.status == "SUCCESS" and row.follow_up_due
    assert "database is locked" in caplog.text
    ctx.db.dispose()
