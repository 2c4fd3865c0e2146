"""A cleanup pass that fails because the database cannot be written (its disk is full)
still tells the operators: the incident cannot be kept, so the message goes out directly
(an outside audit: such a pass notified no one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.harness.fixtures import notify_env
from tests.harness.ports import LOCALHOST, free_port
from tests.harness.smtp import SmtpCapture
from tests.harness.teams import TeamsEndpoint
from tests.harness.tmpfs import fill, mounted


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs (root only) for the database, unmounted at teardown."""
    with mounted(tmp_path / "db", "4m") as mount_point:
        yield mount_point


def test_a_pass_the_database_cannot_record_is_still_announced(
    ff_env: dict[str, str],
    small_fs: Path,
    smtp_factory: Callable[..., SmtpCapture],
    teams_endpoint: TeamsEndpoint,
) -> None:
    smtp = smtp_factory()
    env = {
        **ff_env,
        **notify_env(smtp, teams_endpoint),
        "DATABASE_URL": f"sqlite:///{small_fs / 'fastflow.db'}",
    }
    first = run_cli("cleanup", env=env)  # creates and migrates the database
    assert first.returncode == 0, first.stderr
    fill(small_fs)

    res = run_cli("cleanup", env=env)
    assert res.returncode != 0
    assert "file system" in res.stderr and "Traceback" not in res.stderr
    (mail,) = smtp.wait_for(1, 30)
    subject = mail.message["Subject"]
    assert subject.startswith("[fastflow] S3 log backup failed: the cleanup pass failed")
    plain = mail.message.get_body(("plain",))
    assert plain is not None and "the database could not record the pass" in plain.get_content()
    (card,) = teams_endpoint.wait_for(1, 30)
    assert "the database could not record the pass" in str(card.json)


def test_a_server_pass_the_database_could_not_record_is_announced_once_a_day(
    ff_env: dict[str, str],
    smtp_factory: Callable[..., SmtpCapture],
    teams_endpoint: TeamsEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In ``fastflow serve`` the database opened, then its disk filled: the pass crashed
    and could not be recorded (no pass id). The message goes out without the incident,
    and a server passing every few minutes does not repeat it before the reminder."""
    from fastflow import notify
    from fastflow.config import load_settings
    from fastflow.context import bootstrap
    from fastflow.lifecycle.summary import PassSummary
    from fastflow.notify import dispatch

    smtp = smtp_factory()
    for key, value in notify_env(smtp).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(dispatch, "_unrecorded_at", [])
    ctx = bootstrap(load_settings())
    try:
        crashed = PassSummary(trigger="schedule", error="the cleanup pass failed: disk full")
        assert crashed.pass_id is None
        first = notify.after_pass(ctx, crashed)
        assert first.kind == notify.Kind.FAILURE and first.wait(30)
        assert [(r.channel, r.ok) for r in first.results] == [("email", True)]
        assert notify.after_pass(ctx, crashed).kind is None  # the next pass: not again
        (mail,) = smtp.messages
        assert "disk full" in mail.message["Subject"]
    finally:
        ctx.db.dispose()


def test_a_pass_whose_postgresql_server_is_away_is_still_announced(
    ff_env: dict[str, str],
    smtp_factory: Callable[..., SmtpCapture],
    teams_endpoint: TeamsEndpoint,
) -> None:
    """``fastflow cleanup`` with its PostgreSQL server unreachable (nothing listens on its
    port): no pass can run or be recorded, and the operators are told directly; the
    database's address is not in the message."""
    smtp = smtp_factory()
    port = free_port()
    env = {
        **ff_env,
        **notify_env(smtp, teams_endpoint),
        "DATABASE_URL": f"postgresql://fastflow:s3cr3t-pw@{LOCALHOST}:{port}/fastflow",
    }
    res = run_cli("cleanup", env=env)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and "s3cr3t-pw" not in res.stderr
    (mail,) = smtp.wait_for(1, 30)
    assert mail.message["Subject"].startswith(
        "[fastflow] S3 log backup failed: the cleanup pass failed"
    )
    plain = mail.message.get_body(("plain",))
    assert plain is not None
    text = plain.get_content()
    assert "the database could not record the pass" in text
    assert "s3cr3t-pw" not in text
    (card,) = teams_endpoint.wait_for(1, 30)
    assert "the database could not record the pass" in str(card.json)
    assert "s3cr3t-pw" not in str(card.json)
