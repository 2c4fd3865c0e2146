"""Notifications about failed pipeline runs: real runs' rows and logs, real SMTP, real webhook.

How the tests know that nothing more is coming without sleeping: ``after_run`` writes one
"in progress" delivery row per channel before it returns, and only such a row leads to a
message. So the rows say exactly how many messages are on their way; the tests then wait
for that many on the harness servers (``wait_for``) and compare the exact counts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fastflow import notify
from fastflow.config import Settings, load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.engine import Database
from fastflow.db.models import PipelineRun
from fastflow.lifecycle.summary import Failure, PassSummary
from fastflow.notify import run_messages
from fastflow.notify.incidents import REMINDER_INTERVAL, Kind, decide_run
from fastflow.notify.models import NotificationDelivery, NotificationIncident
from fastflow.notify.run_messages import MAX_LOG_LINE_CHARS, tail_lines
from tests.conftest import MakePipeline
from tests.harness.smtp import CapturedMail, SmtpCapture
from tests.harness.teams import TeamsEndpoint, TeamsPost
from tests.seeding import seed_run

SMTP_PASSWORD = "smtp-Pa55word-7f3k"
BASE = "https://fastflow.example.com"
FAST = notify.DeliveryOptions(
    timeout_s=2, attempts=3, backoff_s=(0.05,), max_retry_after_s=2, budget_s=6
)
WAIT = 15.0  # generous upper bound for a delivery (they end within FAST.budget_s)
REMINDER_HOURS = 6  # NOTIFY_REMINDER_HOURS in these tests (the default is 23)
T0 = datetime(2026, 6, 1, 2, 0, 4, tzinfo=UTC)
RUN_TIME = timedelta(minutes=3, seconds=5)


@dataclass
class World:
    ctx: Context
    smtp: SmtpCapture
    teams: TeamsEndpoint

    def failed(
        self,
        pipeline: str,
        *,
        status: str = "FAILED",
        attempt: int = 1,
        exit_code: int | None = 1,
        log: bytes | None = None,
        at: datetime = T0,
    ) -> uuid.UUID:
        """A finished run (row plus run.log), ``RUN_TIME`` long, ending at ``at``."""
        seeded = seed_run(self.ctx, pipeline, at - RUN_TIME, status=status, log=log or LOG)
        with self.ctx.db.session() as s:
            row = s.get(PipelineRun, seeded.id)
            assert row is not None
            row.attempt, row.exit_code, row.finished_at = attempt, exit_code, at
        return seeded.id

    def succeeded(self, pipeline: str, *, at: datetime = T0) -> uuid.UUID:
        return self.failed(pipeline, status="SUCCESS", exit_code=0, at=at, log=b"all good\n")

    def end(
        self, run_id: uuid.UUID, status: str, *, final: bool = True, at: datetime | None = None
    ) -> notify.Delivery:
        return notify.after_run(self.ctx, run_id, status, final, now=at, options=FAST)

    def sent(self, n: int) -> tuple[list[CapturedMail], list[TeamsPost]]:
        """Exactly ``n`` messages per channel were queued; wait until all have arrived."""
        queued = Counter(d.channel for d in deliveries(self.ctx))
        assert queued == Counter({"email": n, "teams": n} if n else {})
        mails, cards = self.smtp.wait_for(n, WAIT), self.teams.wait_for(n, WAIT)
        assert (len(mails), len(cards)) == (n, n)
        return mails, cards


def _log() -> bytes:
    """A log larger than the 64 KiB tail that is read, ending with a secret and an error."""
    lines = [
        f"[2026-06-01 02:00:{i % 60:02d}.000] step {i:04d}: loading batch, all fine so far\n"
        for i in range(2000)
    ]
    lines.append(f"[2026-06-01 02:03:08.000] connecting with password={SMTP_PASSWORD}\n")
    lines.append("[2026-06-01 02:03:09.000] ValueError: boom\n")
    return "".join(lines).encode()


LOG = _log()


@pytest.fixture
def world(
    ff_env: dict[str, str],
    smtp_factory: Callable[..., SmtpCapture],
    teams_endpoint: TeamsEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:
    smtp = smtp_factory(username="fastflow", password=SMTP_PASSWORD, auth_required=True)
    env = {
        "EMAIL_ENABLED": "true",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SMTP_SECURITY": "none",
        "SMTP_ALLOW_PLAINTEXT_AUTH": "true",  # the test server has no TLS
        "SMTP_USER": "fastflow",
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "SMTP_FROM": "fastflow@example.com",
        "EMAIL_RECIPIENTS": "ops@example.com, oncall@example.net",
        "TEAMS_ENABLED": "true",
        "TEAMS_WEBHOOK_URL": teams_endpoint.url,
        "FASTFLOW_BASE_URL": BASE,
        "NOTIFY_REMINDER_HOURS": str(REMINDER_HOURS),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    try:
        yield World(ctx, smtp, teams_endpoint)
    finally:
        teams_endpoint.release()
        ctx.db.dispose()


def deliveries(ctx: Context) -> list[NotificationDelivery]:
    with ctx.db.session() as s:
        return list(s.query(NotificationDelivery).order_by(NotificationDelivery.id))


def _plain(mail: CapturedMail) -> str:
    """The plain-text part, whitespace normalised (the facts are aligned in columns)."""
    part = mail.message.get_body(("plain",))
    assert part is not None
    return " ".join(str(part.get_content()).split())


def _html(mail: CapturedMail) -> str:
    part = mail.message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def _card(post: TeamsPost) -> str:
    return json.dumps(post.json, ensure_ascii=False)


def _assert_announces(mail: CapturedMail, post: TeamsPost, run: uuid.UUID, attempts: int) -> None:
    """The e-mail and the card name the failed run, its facts and its last log lines."""
    assert mail.message["Subject"] == f"[fastflow] pipeline etl failed (run {str(run)[:8]})"
    assert sorted(mail.rcpt_tos) == ["oncall@example.net", "ops@example.com"]
    plain, html, card = _plain(mail), _html(mail), _card(post)
    for fact in (
        "Pipeline: etl",
        f"Run: {run}",
        "Status: FAILED",
        "Exit code: 1",
        f"Attempts: {attempts}",
        "Duration: 3 min 5 s",
        "Last 20 lines of the log:",
    ):
        assert fact in plain, fact
    for text in (plain, html, card):
        assert f"{BASE}/runs/{run}" in text
        assert "ValueError: boom" in text and "step 1982" in text
        assert "step 1981" not in text  # only the last 20 lines
        assert "password=***" in text and SMTP_PASSWORD not in text
    assert post.json["type"] == "message"
    assert '"Attempts"' in card and '"Open run"' in card


# --- the incident of one pipeline ---------------------------------------------------------


def test_five_final_failures_send_one_message_and_a_success_one_recovery(
    world: World, make_pipeline: MakePipeline
) -> None:
    make_pipeline("etl")
    ids = [world.failed("etl", attempt=3, at=T0 + timedelta(minutes=i)) for i in range(5)]
    handles = [world.end(rid, "FAILED", at=T0 + timedelta(minutes=i)) for i, rid in enumerate(ids)]
    assert [h.kind for h in handles] == [Kind.RUN_FAILURE, None, None, None, None]
    (mail,), (post,) = world.sent(1)

    _assert_announces(mail, post, ids[0], attempts=3)
    assert notify.open_run_incidents(world.ctx) == [
        {
            "pipeline": "etl",
            "run_id": str(ids[-1]),
            "status": "FAILED",
            "since": T0.isoformat(),
            "failures": 5,
        }
    ]

    ok = world.succeeded("etl", at=T0 + timedelta(hours=1))
    assert world.end(ok, "SUCCESS", at=T0 + timedelta(hours=1)).kind == Kind.RUN_RECOVERY
    mails, cards = world.sent(2)
    assert mails[-1].message["Subject"] == "[fastflow] pipeline etl recovered"
    recovered = _plain(mails[-1])
    assert f"Pipeline etl succeeds again: run {ok} succeeded" in recovered
    assert "It had been failing since 2026-06-01 02:00 UTC (5 failed runs)." in recovered
    assert f"{BASE}/runs/{ok}" in recovered
    assert '"Pipeline etl recovered"' in _card(cards[-1])
    assert notify.open_run_incidents(world.ctx) == []

    # the next success is quiet, and the record counts every delivery by kind
    again = world.succeeded("etl", at=T0 + timedelta(hours=2))
    assert world.end(again, "SUCCESS").kind is None
    world.sent(2)
    kinds = Counter(d.kind for d in deliveries(world.ctx))
    assert kinds == {"run_failure": 2, "run_recovery": 2}


def test_a_failure_message_that_did_not_get_through_goes_out_with_the_next_failure(
    world: World, make_pipeline: MakePipeline
) -> None:
    make_pipeline("etl")
    world.teams.respond(500, times=3)  # every attempt of the first message
    first = world.end(world.failed("etl"), "FAILED")
    assert first.kind == Kind.RUN_FAILURE and first.wait(WAIT)
    assert {r.channel: r.ok for r in first.results} == {"email": True, "teams": False}

    again = world.failed("etl", at=T0 + timedelta(minutes=5))
    second = world.end(again, "FAILED", at=T0 + timedelta(minutes=5))
    assert second.kind == Kind.RUN_REMINDER and second.wait(WAIT)
    assert [(r.channel, r.ok) for r in second.results] == [("teams", True)]
    assert '"Pipeline etl still failing' in _card(world.teams.posts[-1])
    assert len(world.smtp.messages) == 1  # e-mail had it

    assert world.end(again, "FAILED").kind is None  # the same run reported twice: nothing
    third = world.end(world.failed("etl", at=T0 + timedelta(minutes=9)), "FAILED")
    assert third.kind is None  # delivered everywhere: back to the quiet rules
    assert Counter(d.kind for d in deliveries(world.ctx)) == {"run_failure": 2, "run_reminder": 1}


def test_a_recovery_message_that_did_not_get_through_goes_out_with_the_next_success(
    world: World, make_pipeline: MakePipeline
) -> None:
    make_pipeline("etl")
    first = world.end(world.failed("etl"), "FAILED")
    assert first.kind == Kind.RUN_FAILURE and first.wait(WAIT)
    world.teams.respond(500, times=3)  # every attempt of the recovery card
    at = T0 + timedelta(minutes=5)
    recovered = world.end(world.succeeded("etl", at=at), "SUCCESS", at=at)
    assert recovered.kind == Kind.RUN_RECOVERY and recovered.wait(WAIT)
    assert {r.channel: r.ok for r in recovered.results} == {"email": True, "teams": False}

    at += timedelta(minutes=5)
    ok = world.succeeded("etl", at=at)
    again = world.end(ok, "SUCCESS", at=at)
    assert again.kind == Kind.RUN_RECOVERY and again.wait(WAIT)
    assert [(r.channel, r.ok) for r in again.results] == [("teams", True)]
    assert '"Pipeline etl recovered"' in _card(world.teams.posts[-1])
    assert len(world.smtp.messages) == 2  # the failure and the recovery: e-mail had it

    at += timedelta(minutes=5)
    assert world.end(world.succeeded("etl", at=at), "SUCCESS", at=at).kind is None
    kinds = Counter((d.kind, d.channel) for d in deliveries(world.ctx))
    assert kinds == {
        ("run_failure", "email"): 1,
        ("run_failure", "teams"): 1,
        ("run_recovery", "email"): 1,
        ("run_recovery", "teams"): 2,
    }


def test_a_recovery_that_did_not_get_through_is_not_sent_again_once_it_is_stale(
    world: World, make_pipeline: MakePipeline
) -> None:
    make_pipeline("etl")
    assert world.end(world.failed("etl"), "FAILED").wait(WAIT)
    world.teams.respond(500, times=3)
    at = T0 + timedelta(minutes=5)
    assert world.end(world.succeeded("etl", at=at), "SUCCESS", at=at).wait(WAIT)
    later = at + timedelta(hours=REMINDER_HOURS, minutes=1)  # NOTIFY_REMINDER_HOURS on
    assert world.end(world.succeeded("etl", at=later), "SUCCESS", at=later).kind is None


def test_a_timeout_is_a_failure_and_says_so(world: World, make_pipeline: MakePipeline) -> None:
    make_pipeline("etl")
    rid = world.failed("etl", status="TIMEOUT", exit_code=None)
    world.end(rid, "TIMEOUT")
    (mail,), _ = world.sent(1)
    assert mail.message["Subject"] == f"[fastflow] pipeline etl timed out (run {str(rid)[:8]})"
    assert "Status: TIMEOUT" in _plain(mail) and "Exit code: -" in _plain(mail)


def test_on_failure_false_silences_the_pipeline(world: World, make_pipeline: MakePipeline) -> None:
    make_pipeline("quiet", config=json.dumps({"notify": {"on_failure": False}}))
    for i in range(3):
        handle = world.end(world.failed("quiet"), "FAILED", at=T0 + timedelta(hours=10 * i))
        assert handle.kind is None and handle.done
    world.sent(0)
    assert notify.open_run_incidents(world.ctx) == []
    world.end(world.succeeded("quiet"), "SUCCESS")
    world.sent(0)


def test_on_recovery_false_closes_the_incident_quietly(
    world: World, make_pipeline: MakePipeline
) -> None:
    make_pipeline("etl", config=json.dumps({"notify": {"on_recovery": False}}))
    world.end(world.failed("etl"), "FAILED")
    world.sent(1)
    assert world.end(world.succeeded("etl"), "SUCCESS").kind is None
    world.sent(1)
    assert notify.open_run_incidents(world.ctx) == []


def test_an_attempt_that_will_be_retried_sends_nothing(
    world: World, make_pipeline: MakePipeline
) -> None:
    make_pipeline("etl")
    first = world.failed("etl", attempt=1)
    assert world.end(first, "FAILED", final=False).kind is None
    cancelled = world.failed("etl", status="CANCELLED", exit_code=None)
    assert world.end(cancelled, "CANCELLED").kind is None
    assert world.end(uuid.uuid4(), "FAILED").kind is None  # not in the database
    world.sent(0)
    assert notify.open_run_incidents(world.ctx) == []

    last = world.failed("etl", attempt=2)
    assert world.end(last, "FAILED", final=True).kind == Kind.RUN_FAILURE
    (mail,), _ = world.sent(1)
    assert "Attempts: 2" in _plain(mail) and str(last) in _plain(mail)
    assert world.end(last, "FAILED").kind is None  # the same run reported twice counts once
    assert notify.open_run_incidents(world.ctx)[0]["failures"] == 1


def test_lasting_failure_reminds_every_notify_reminder_hours(
    world: World, make_pipeline: MakePipeline
) -> None:
    make_pipeline("etl")

    def fail_at(hours: float) -> Kind | None:
        at = T0 + timedelta(hours=hours)
        return world.end(world.failed("etl", at=at), "FAILED", at=at).kind

    assert fail_at(0) == Kind.RUN_FAILURE
    assert fail_at(REMINDER_HOURS - 0.5) is None
    world.sent(1)
    assert fail_at(REMINDER_HOURS) == Kind.RUN_REMINDER
    mails, cards = world.sent(2)
    assert mails[-1].message["Subject"] == (
        "[fastflow] pipeline etl still failing since 2026-06-01 02:00 UTC (3 failed runs)"
    )
    reminder = _plain(mails[-1])
    assert "Pipeline etl is still failing: 3 failed runs since 2026-06-01 02:00 UTC." in reminder
    assert "ValueError: boom" in reminder and "password=***" in reminder
    assert "still failing since" in _card(cards[-1])
    assert fail_at(REMINDER_HOURS + 1) is None  # counted from the reminder, not the start
    assert fail_at(2 * REMINDER_HOURS) == Kind.RUN_REMINDER
    world.sent(3)
    assert Counter(d.kind for d in deliveries(world.ctx))["run_reminder"] == 4


def test_two_pipelines_have_two_incidents(world: World, make_pipeline: MakePipeline) -> None:
    make_pipeline("etl")
    # "billing" has no folder: it cannot be loaded, and is notified about with the defaults
    etl, billing = world.failed("etl"), world.failed("billing")
    assert world.end(etl, "FAILED").kind == Kind.RUN_FAILURE
    assert world.end(billing, "FAILED").kind == Kind.RUN_FAILURE
    assert world.end(world.failed("etl"), "FAILED").kind is None
    mails, cards = world.sent(2)
    subjects = sorted(str(m.message["Subject"]) for m in mails)
    assert subjects == [
        f"[fastflow] pipeline billing failed (run {str(billing)[:8]})",
        f"[fastflow] pipeline etl failed (run {str(etl)[:8]})",
    ]
    titles = sorted(c.json["attachments"][0]["content"]["body"][0]["text"] for c in cards)
    assert titles == ["Pipeline" + s.removeprefix("[fastflow] pipeline") for s in subjects]
    assert {r["pipeline"]: r["failures"] for r in notify.open_run_incidents(world.ctx)} == {
        "etl": 2,
        "billing": 1,
    }
    with world.ctx.db.session() as s:
        assert len({d.incident_id for d in s.query(NotificationDelivery)}) == 2

    assert world.end(world.succeeded("etl"), "SUCCESS").kind == Kind.RUN_RECOVERY
    mails, _ = world.sent(3)
    assert mails[-1].message["Subject"] == "[fastflow] pipeline etl recovered"
    assert [r["pipeline"] for r in notify.open_run_incidents(world.ctx)] == ["billing"]


def _pass(pass_id: int, failing: bool) -> PassSummary:
    failures = [Failure("0b6f2a4e-5d1c-4c31-9a57-3f1e8c2d7a10", "etl", None, "S3 error 500")]
    return PassSummary(
        trigger="test",
        pass_id=pass_id,
        backup_failures=1 if failing else 0,
        failures=failures if failing else [],
    )


def test_backup_and_run_incidents_are_kept_apart(world: World, make_pipeline: MakePipeline) -> None:
    make_pipeline("etl")
    later = T0 + timedelta(hours=REMINDER_HOURS)

    def backup(pass_id: int, failing: bool, at: datetime) -> Kind | None:
        handle = notify.after_pass(world.ctx, _pass(pass_id, failing), now=at, options=FAST)
        return handle.kind

    assert world.end(world.failed("etl"), "FAILED", at=T0).kind == Kind.RUN_FAILURE
    assert backup(1, True, T0) == Kind.FAILURE  # a run incident does not hide a backup one
    # backups remind after NOTIFY_REMINDER_HOURS too
    assert backup(2, True, later) == Kind.REMINDER
    assert backup(3, False, later) == Kind.RECOVERY
    assert [r["pipeline"] for r in notify.open_run_incidents(world.ctx)] == ["etl"]
    assert world.end(world.succeeded("etl"), "SUCCESS", at=later).kind == Kind.RUN_RECOVERY
    assert backup(4, False, later) is None
    world.sent(5)
    with world.ctx.db.session() as s:
        incidents = s.query(NotificationIncident).all()
        assert len(incidents) == 2 and all(i.closed_at is not None for i in incidents)
    kinds = Counter(d.kind for d in deliveries(world.ctx) if d.channel == "email")
    assert kinds == {
        "run_failure": 1,
        "failure": 1,
        "reminder": 1,
        "recovery": 1,
        "run_recovery": 1,
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_failures_open_one_incident(
    world: World, make_pipeline: MakePipeline, backend: str, request: pytest.FixtureRequest
) -> None:
    make_pipeline("etl")
    here = world
    if backend == "postgresql":
        data = world.ctx.settings.model_dump()
        data.update(database_url=request.getfixturevalue("pg_url"))
        here = World(bootstrap(load_settings(**data)), world.smtp, world.teams)
    try:
        ids = [here.failed("etl") for _ in range(8)]
        start = threading.Barrier(len(ids))
        kinds: list[Kind | None] = []

        def end(rid: uuid.UUID) -> None:
            start.wait()
            kinds.append(here.end(rid, "FAILED").kind)

        threads = [threading.Thread(target=end, args=(rid,)) for rid in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert Counter(kinds) == {Kind.RUN_FAILURE: 1, None: 7}
        (incident,) = notify.open_run_incidents(here.ctx)
        assert incident["failures"] == 8
        here.sent(1)
    finally:
        if here is not world:
            here.ctx.db.dispose()


# --- never blocking, never raising -----------------------------------------------------------


def test_returns_at_once_while_the_webhook_hangs(world: World, make_pipeline: MakePipeline) -> None:
    make_pipeline("etl")
    world.teams.hang(times=1)
    rid = world.failed("etl")
    started = time.monotonic()
    handle = world.end(rid, "FAILED")
    assert time.monotonic() - started < 1.0
    assert not handle.done  # the hanging webhook is waited for elsewhere
    world.smtp.wait_for(1, WAIT)
    world.teams.wait_for(1, WAIT)
    world.teams.release()
    assert handle.wait(WAIT)
    assert {r.channel for r in handle.results} == {"email", "teams"}
    last = notify.last_results(world.ctx)
    assert last["email"]["ok"] is True and last["email"]["kind"] == "run_failure"


def test_never_raises_when_the_database_is_broken(
    world: World, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastflow")
    data = world.ctx.settings.model_dump()
    data.update(database_url=f"sqlite:///{tmp_path / 'empty.db'}")  # never migrated
    settings = load_settings(**data)
    broken = Context(settings=settings, db=Database(settings))
    try:
        handle = notify.after_run(broken, uuid.uuid4(), "FAILED", True, options=FAST)
        assert handle.done and handle.kind is None
        assert notify.open_run_incidents(broken) == []
    finally:
        broken.db.dispose()
    assert "cannot notify about run" in caplog.text
    assert "cannot read the run incidents" in caplog.text


def test_a_message_that_cannot_be_composed_is_recorded_as_failed(
    world: World, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pipeline("etl")

    def broken(notice: Any) -> Any:
        raise RuntimeError(f"bug near {SMTP_PASSWORD}")

    monkeypatch.setattr(run_messages, "render", broken)
    handle = world.end(world.failed("etl"), "FAILED")
    assert handle.wait(WAIT)
    assert [(r.channel, r.ok) for r in handle.results] == [("email", False), ("teams", False)]
    for d in deliveries(world.ctx):
        assert d.ok is False and d.error is not None and "cannot compose" in d.error
        assert SMTP_PASSWORD not in d.error
    assert world.smtp.messages == [] and world.teams.posts == []


def test_an_unreadable_log_still_notifies(world: World, make_pipeline: MakePipeline) -> None:
    make_pipeline("etl")
    rid = world.failed("etl")
    with world.ctx.db.session() as s:
        row = s.get(PipelineRun, rid)
        assert row is not None and row.log_file is not None
        (world.ctx.settings.logs_root / row.log_file).unlink()
    world.end(rid, "FAILED")
    (mail,), _ = world.sent(1)
    assert "Log: the run has no log" in _plain(mail)


# --- pure parts ------------------------------------------------------------------------------


def test_decide_run_rules() -> None:
    first = decide_run(None, "a", "FAILED", T0)
    assert first.kind == Kind.RUN_FAILURE and first.incident is not None
    assert decide_run(first.incident, "a", "FAILED", T0 + timedelta(days=2)).kind is None
    assert decide_run(None, "b", "SUCCESS", T0).kind is None
    assert decide_run(first.incident, "b", "CANCELLED", T0).incident == first.incident
    quiet = decide_run(first.incident, "c", "SUCCESS", T0, on_recovery=False)
    assert quiet.kind is None and quiet.incident is None and quiet.ended == first.incident
    assert decide_run(None, "d", "TIMEOUT", T0, on_failure=False).incident is None
    # the default interval is the default of NOTIFY_REMINDER_HOURS
    default = Settings.model_fields["notify_reminder_hours"].default
    assert timedelta(hours=default) == REMINDER_INTERVAL


def test_tail_lines_are_cleaned_cut_and_bounded() -> None:
    text = "half a line\n" + "".join(f"\x1b[31mline {i}\x1b[0m\r\n" for i in range(30))
    text += "x" * 1000 + "\n\n"
    lines = tail_lines(text, partial_first=True)
    assert len(lines) == 20 and lines[0] == "line 11" and lines[-2] == "line 29"
    assert len(lines[-1]) == MAX_LOG_LINE_CHARS and lines[-1].endswith("…")
    assert tail_lines("only\n", partial_first=False) == ("only",)


def test_a_last_line_longer_than_the_tail_is_shown_by_its_end(
    world: World, make_pipeline: MakePipeline
) -> None:
    """An outside audit: a log whose last line is longer than the 64 KiB tail read made
    the message say "the log is empty"."""
    make_pipeline("etl")
    log = b"starting\n" + b"y" * 100_000 + b" ValueError: the real cause\n"
    world.end(world.failed("etl", log=log), "FAILED")
    (mail,), (post,) = world.sent(1)
    for text in (_plain(mail), _html(mail), _card(post)):
        assert "the log is empty" not in text
        assert "…yyy" in text and "ValueError: the real cause" in text


def test_hidden_controls_never_reach_a_message(world: World, make_pipeline: MakePipeline) -> None:
    """An outside audit: C1 controls and bidirectional overrides in a log line (or a
    reason) went into the mail and the card, where U+202E shows text reversed."""
    make_pipeline("etl")
    log = "fine\nsaved report\u202etxt.exe\u202c here\x85 and \x9b31m\u2066x\u2069\n".encode()
    world.end(world.failed("etl", log=log), "FAILED")
    (mail,), (post,) = world.sent(1)
    raw = mail.message.as_string() + json.dumps(post.json)
    for hidden in ("\u202e", "\u202c", "\x85", "\x9b", "\u2066", "\u2069"):
        assert hidden not in raw and hidden not in _plain(mail) + _card(post)
    assert "saved reporttxt.exe here and 31mx" in _plain(mail)


def test_tail_lines_keep_the_end_of_a_single_partial_line() -> None:
    lines = tail_lines("z" * 5000 + "END\n", partial_first=True)
    assert lines == ("…" + ("z" * 5000 + "END")[-(MAX_LOG_LINE_CHARS - 1) :],)
