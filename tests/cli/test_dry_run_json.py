"""``fastflow cleanup --dry-run --json``: timestamps are ISO 8601 or null (never ""), and
the plan is a list of objects ``{"run_id", "pipeline_name", "action", "reason",
"bytes"}``; the text output keeps its lines."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from fastflow.context import Context
from fastflow.db.models import utcnow
from fastflow.lifecycle.summary import PassSummary
from tests.conftest import run_cli
from tests.seeding import seed_run

ENV = {"LOG_RETENTION_RUNS": "1", "LOG_MAX_SIZE_MB": "1"}


def _is_timestamp_or_null(value: object) -> bool:
    if value is None:
        return True
    assert isinstance(value, str) and value, value
    return datetime.fromisoformat(value).tzinfo is not None


def _seed(app: Context) -> tuple[list[str], str, int]:
    now = utcnow()
    old = [seed_run(app, "etl", now - timedelta(days=d)) for d in (3, 2)]
    newest = seed_run(app, "etl", now - timedelta(days=1))
    big = seed_run(app, "big", now, log=b"y" * 1_500_000)
    assert newest.id not in {r.id for r in old}
    return [str(r.id) for r in old], str(big.id), len(big.log_bytes)


def test_dry_run_json_has_timestamps_and_plan_objects(app: Context) -> None:
    deleted, truncated, big_size = _seed(app)
    res = run_cli("cleanup", "--dry-run", "--json", env=ENV)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["dry_run"] is True
    assert data["finished_at"] != ""
    assert _is_timestamp_or_null(data["finished_at"])
    assert _is_timestamp_or_null(data["started_at"]) and data["started_at"] is not None
    plan = data["plan"]
    assert len(plan) == data["planned_runs"] + data["planned_truncations"] == 3
    for entry in plan:
        assert isinstance(entry, dict), entry
        assert list(entry) == ["run_id", "pipeline_name", "action", "reason", "bytes"]
    by_run = {entry["run_id"]: entry for entry in plan}
    for rid in deleted:
        assert by_run[rid]["action"] == "archive_and_delete_run"
        assert by_run[rid]["pipeline_name"] == "etl"
        assert by_run[rid]["reason"] == "more than 1 finished runs of this pipeline"
        assert isinstance(by_run[rid]["bytes"], int) and by_run[rid]["bytes"] > 0
    assert by_run[truncated]["action"] == "truncate_log"
    assert by_run[truncated]["pipeline_name"] == "big"
    assert by_run[truncated]["bytes"] == big_size
    assert by_run[truncated]["reason"] == f"log is {big_size} bytes, limit 1048576 bytes"


def test_dry_run_text_keeps_one_line_per_action(app: Context) -> None:
    deleted, truncated, _ = _seed(app)
    res = run_cli("cleanup", "--dry-run", env=ENV)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 3
    assert any(line.startswith("archive_and_delete_run") and deleted[0] in line for line in lines)
    assert any(line.startswith("truncate_log") and truncated in line for line in lines)
    assert "nothing changed" in res.stderr


def test_a_summary_that_has_not_finished_says_null() -> None:
    data = PassSummary(trigger="cli", dry_run=True).to_dict()
    assert data["finished_at"] is None and data["plan"] == []
    assert json.loads(json.dumps(data))["finished_at"] is None
