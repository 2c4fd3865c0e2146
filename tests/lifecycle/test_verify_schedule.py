"""Scheduled archive verification (``ARCHIVE_VERIFY_SCHEDULE``) against the real S3 test
server, the real SMTP server and the real Teams endpoint of the harness: an object deleted
behind fastflow's back opens the integrity incident (one e-mail, one card), its
restoration resolves it (one recovery each); the results are recorded and exported."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fastflow import accounts, notify
from fastflow.archive import audit
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import ArchivedRun
from fastflow.lifecycle.cleanup import run_pass
from fastflow.lifecycle.scheduler import CleanupScheduler
from fastflow.lifecycle.verify_schedule import VerifyScheduler, next_verification_at
from fastflow.notify.system import open_incidents
from fastflow.server import create_app
from tests.conftest import run_cli
from tests.harness.fixtures import S3Env
from tests.harness.smtp import SmtpCapture
from tests.harness.teams import TeamsEndpoint
from tests.seeding import NOW, Seeded, seed_series

FAST = notify.DeliveryOptions(timeout_s=2, attempts=2, backoff_s=(0.05,), budget_s=5)
WAIT = 30.0


@dataclass
class World:
    ctx: Context
    s3: S3Env
    smtp: SmtpCapture
    teams: TeamsEndpoint
    runs: list[Seeded]
    env: dict[str, str]

    def log_key(self, run: Seeded) -> str:
        return f"pipeline-logs/etl/{run.id}/run.log"


@pytest.fixture
def world(
    ff_env: dict[str, str],
    s3: S3Env,
    smtp_server: SmtpCapture,
    teams_endpoint: TeamsEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:
    env = {
        **s3.env(),
        "LOG_RETENTION_RUNS": "1",
        "EMAIL_ENABLED": "true",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_SECURITY": "none",
        "SMTP_FROM": "fastflow@example.com",
        "EMAIL_RECIPIENTS": "ops@example.com",
        "TEAMS_ENABLED": "true",
        "TEAMS_WEBHOOK_URL": teams_endpoint.url,
        "ARCHIVE_VERIFY_SCHEDULE": "* * * * *",
        "ARCHIVE_VERIFY_DEEP_SAMPLE": "2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    runs = seed_series(ctx, "etl", 4)
    assert run_pass(ctx, "test", now=NOW).archived_runs == 3
    try:
        yield World(ctx, s3, smtp_server, teams_endpoint, runs[:3], {**ff_env, **env})
    finally:
        teams_endpoint.release()
        ctx.db.dispose()


def _due_now() -> Callable[[], datetime]:
    """A clock 50 ms before a minute boundary that then runs on: ``* * * * *`` fires at
    once, and the next time is a minute away."""
    base = datetime.now().astimezone().replace(second=59, microsecond=950_000)
    start = time.monotonic()
    return lambda: base + timedelta(seconds=time.monotonic() - start)


def _one_scheduled_run(ctx: Context) -> tuple[audit.Verification | None, notify.Delivery]:
    """Start the scheduler, wait for its first verification and its delivery, stop it."""
    done = threading.Event()
    seen: list[tuple[audit.Verification | None, notify.Delivery]] = []

    def on_done(result: audit.Verification | None, delivery: notify.Delivery) -> None:
        seen.append((result, delivery))
        done.set()

    scheduler = VerifyScheduler(ctx, clock=_due_now(), on_done=on_done, options=FAST)
    scheduler.start()
    try:
        assert done.wait(WAIT), "no scheduled verification ran"
    finally:
        scheduler.stop()
    result, delivery = seen[0]
    assert delivery.wait(WAIT), "the notification was not delivered"
    return result, delivery


def test_a_deleted_object_alerts_once_and_its_restoration_recovers(world: World) -> None:
    client = world.s3.client()
    key = world.log_key(world.runs[1])
    original = client.get_object(Bucket=world.s3.bucket, Key=key)
    body, metadata = original["Body"].read(), original["Metadata"]
    clean, _ = _one_scheduled_run(world.ctx)
    assert clean is not None and clean.ok and clean.objects_checked == 6
    assert world.smtp.messages == [] and world.teams.posts == []

    client.delete_object(Bucket=world.s3.bucket, Key=key)  # behind fastflow's back
    damaged, delivery = _one_scheduled_run(world.ctx)
    assert damaged is not None and damaged.ok is False and damaged.objects_damaged == 1
    assert delivery.kind == notify.Kind.FAILURE
    (mail,) = world.smtp.wait_for(1, WAIT)
    (card,) = world.teams.wait_for(1, WAIT)
    subject = mail.message["Subject"]
    assert subject == "[fastflow] Archive integrity: 1 damaged object in fastflow-test"
    assert key in _plain(mail)
    assert key in json.dumps(card.json)
    (incident,) = open_incidents(world.ctx)
    assert incident["kind"] == "integrity" and key in incident["detail"]

    still, quiet = _one_scheduled_run(world.ctx)  # still missing: no second message
    assert still is not None and still.objects_damaged == 1 and quiet.kind is None
    assert len(world.smtp.messages) == 1 and len(world.teams.posts) == 1

    client.put_object(Bucket=world.s3.bucket, Key=key, Body=body, Metadata=metadata)
    healed, recovery = _one_scheduled_run(world.ctx)
    assert healed is not None and healed.ok and recovery.kind == notify.Kind.RECOVERY
    mails, cards = world.smtp.wait_for(2, WAIT), world.teams.wait_for(2, WAIT)
    assert mails[1].message["Subject"] == f"[fastflow] Resolved: {subject[len('[fastflow] ') :]}"
    assert '"color": "Good"' in json.dumps(cards[1].json)
    assert open_incidents(world.ctx) == []
    recorded = audit.verifications(world.ctx)
    assert [v["ok"] for v in recorded] == [True, False, False, True]
    assert all(v["trigger"] == "schedule" for v in recorded)
    assert recorded[1]["problems"][0]["key"] == key
    assert recorded[1]["problems"][0]["state"] == "missing"


def test_every_object_is_rehashed_over_time_oldest_first(world: World) -> None:
    ctx = world.ctx
    order: list[set[str]] = []
    for _ in range(3):  # ARCHIVE_VERIFY_DEEP_SAMPLE=2: one run (log + metrics) each time
        before = _deep_times(ctx)
        result = audit.run_verification(ctx, "test")
        assert result.ok and result.objects_deep_checked == 2
        after = _deep_times(ctx)
        order.append({rid for rid, at in after.items() if at != before[rid]})
    assert [len(s) for s in order] == [1, 1, 1]
    assert set().union(*order) == {str(r.id) for r in world.runs}
    assert all(at is not None for at in _deep_times(ctx).values())
    with ctx.db.session() as s:
        assert all(e.verified_at is not None for e in s.scalars(select(ArchivedRun)))

    # the next sample is the run re-hashed longest ago; it sees same-size tampering
    victim = next(r for r in world.runs if str(r.id) in order[0])
    key = world.log_key(victim)
    client = world.s3.client()
    head = client.head_object(Bucket=world.s3.bucket, Key=key)
    forged = bytes(reversed(client.get_object(Bucket=world.s3.bucket, Key=key)["Body"].read()))
    client.put_object(Bucket=world.s3.bucket, Key=key, Body=forged, Metadata=head["Metadata"])
    result = audit.run_verification(ctx, "test")
    assert result.objects_damaged == 1
    (problem,) = result.problems
    assert problem["kind"] == "deep" and problem["key"] == key
    assert hashlib.sha256(forged).hexdigest() in problem["detail"]


def test_the_deep_sample_is_exactly_that_many_objects(world: World) -> None:
    """``ARCHIVE_VERIFY_DEEP_SAMPLE`` counts objects, not runs: 3 re-hashes 3 objects
    (it re-hashed 4 before: whole runs of two). The run whose second object did not fit
    is not stamped as re-hashed, so it comes first the next time."""
    ctx = world.ctx
    before = _deep_times(ctx)
    first = audit.run_verification(ctx, "test", deep_sample=3)
    assert first.ok and first.objects_deep_checked == 3
    stamped = {rid for rid, at in _deep_times(ctx).items() if at != before[rid]}
    assert len(stamped) == 1
    for rounds in (2, 3):  # the unfinished run first, then the next one
        again = audit.run_verification(ctx, "test", deep_sample=3)
        assert again.ok and again.objects_deep_checked == 3
        after = _deep_times(ctx)
        assert len({rid for rid, at in after.items() if at is not None}) == rounds


def _deep_times(ctx: Context) -> dict[str, Any]:
    with ctx.db.session() as s:
        return {str(e.run_id): e.deep_verified_at for e in s.scalars(select(ArchivedRun))}


def test_serve_runs_the_verification_schedule_next_to_the_cleanup(world: World) -> None:
    scheduler = CleanupScheduler(world.ctx)
    assert next_verification_at(world.ctx) is None
    scheduler.start()
    try:
        upcoming = next_verification_at(world.ctx)
        assert upcoming is not None and upcoming.second == 0  # "* * * * *"
    finally:
        scheduler.stop()
    assert next_verification_at(world.ctx) is None


def test_results_in_the_api_the_cli_and_metrics(world: World) -> None:
    ctx = world.ctx
    key = world.log_key(world.runs[0])
    world.s3.client().delete_object(Bucket=world.s3.bucket, Key=key)
    res = run_cli("archive", "verify", "--record", "--json", env=world.env)
    assert res.returncode == 1, res.stderr
    assert json.loads(res.stdout)["objects_damaged"] == 1 and "Traceback" not in res.stderr
    listed = run_cli("archive", "verifications", "--json", env=world.env)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["trigger"] == "cli" and row["ok"] is False and row["objects_checked"] == 6
    text = run_cli("archive", "verifications", env=world.env).stdout
    assert "DAMAGED" in text and "6 objects checked" in text

    client = TestClient(create_app(ctx, schedule=False))
    viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'v', 'viewer')}"}
    assert client.get("/api/archive/verifications").status_code == 401
    data = client.get("/api/archive/verifications", headers=viewer).json()
    (v,) = data["verifications"]
    assert v["objects_damaged"] == 1 and v["problems"][0]["key"] == key
    assert v["problems"][0]["state"] == "missing" and v["problems"][0]["kind"] == "object"
    metrics = client.get("/metrics", headers=viewer).text
    finished = datetime.fromisoformat(v["finished_at"]).timestamp()
    assert _metric(metrics, "fastflow_archive_objects_damaged") == 1
    checked = v["objects_checked"] + v["objects_deep_checked"]  # the missing one once
    assert _metric(metrics, "fastflow_archive_objects_verified_total") == checked
    assert _metric(metrics, "fastflow_archive_last_verification_timestamp_seconds") == (
        pytest.approx(finished)
    )


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _plain(mail: Any) -> str:
    """The plain-text part of a captured e-mail."""
    part = mail.message.get_body(("plain",))
    assert part is not None
    text: str = part.get_content()
    return text
