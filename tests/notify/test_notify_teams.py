"""Teams notifications against a real local HTTP endpoint: the card, retries, URL safety."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fastflow import notify
from fastflow.config import load_settings
from fastflow.context import Context
from fastflow.errors import ConfigError
from fastflow.notify import messages, teams
from fastflow.notify.incidents import Kind
from fastflow.notify.messages import FailedRun, Notice
from fastflow.security import mask_url, redact
from tests.harness.ports import free_port
from tests.harness.teams import TeamsEndpoint

FAST = notify.DeliveryOptions(
    timeout_s=2, attempts=3, backoff_s=(0.05,), max_retry_after_s=2, budget_s=6
)
TOKEN = "SECRET-TOKEN"
AT = datetime(2026, 6, 1, 2, 0, 7, tzinfo=UTC)
RUNS = (
    FailedRun(
        "11111111-1111-1111-1111-111111111111",
        "etl",
        "2026-05-01T02:00:00+00:00",
        "S3 server error 500",
    ),
    FailedRun(
        "22222222-2222-2222-2222-222222222222",
        "Lohn-Ü",
        "2026-05-02T02:00:00+00:00",
        "connection failed",
    ),
)


def teams_ctx(app: Context, url: str, **overrides: Any) -> Context:
    data = app.settings.model_dump()
    data.update(
        teams_enabled=True, teams_webhook_url=url, fastflow_base_url="https://ff.example.com"
    )
    data.update(overrides)
    return Context(settings=load_settings(**data), db=app.db)


def _options(**changes: Any) -> notify.DeliveryOptions:
    return notify.DeliveryOptions(**{**FAST.__dict__, **changes})


def _test(ctx: Context, **options: Any) -> notify.ChannelResult:
    (result,) = notify.send_test(ctx, email=False, teams=True, options=_options(**options))
    assert result.channel == "teams"
    return result


def _failure_notice() -> Notice:
    return Notice(
        kind=Kind.FAILURE, at=AT, base_url="https://ff.example.com", runs=RUNS, total_runs=2
    )


# --- the card -------------------------------------------------------------------------------


def test_failure_card_is_an_adaptive_card_message(
    app: Context, teams_endpoint: TeamsEndpoint
) -> None:
    ctx = teams_ctx(app, teams_endpoint.url)
    outcome = teams.post(ctx.settings, messages.teams_card(_failure_notice()), FAST)
    assert outcome.ok and outcome.attempts == 1
    (post,) = teams_endpoint.posts
    assert post.headers["content-type"].startswith("application/json")
    message = post.json
    assert message["type"] == "message"
    (attachment,) = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    title = card["body"][0]
    assert title["type"] == "TextBlock" and title["text"] == "S3 log backup failed: 2 runs"
    containers = [b for b in card["body"] if b["type"] == "Container"]
    assert len(containers) == 2
    by_run = {}
    for c in containers:
        facts = {f["title"]: f["value"] for f in c["items"][0]["facts"]}
        (action,) = c["items"][1]["actions"]
        by_run[facts["Run"]] = (facts, action)
    for run in RUNS:
        facts, action = by_run[run.run_id]
        assert facts["Pipeline"] == run.pipeline_name and facts["Error"] == run.error
        assert action == {
            "type": "Action.OpenUrl",
            "title": "Open run",
            "url": f"https://ff.example.com/runs/{run.run_id}",
        }
    assert card["actions"][0]["url"] == "https://ff.example.com/settings"
    assert "Lohn-Ü" in post.body.decode("utf-8")


def test_card_is_bounded() -> None:
    runs = tuple(
        FailedRun(f"{i:08d}-0000-0000-0000-000000000000", "p", None, "x" * 2000) for i in range(40)
    )
    notice = Notice(kind=Kind.FAILURE, at=AT, base_url="https://ff", runs=runs, total_runs=300)
    card = messages.teams_card(notice)["attachments"][0]["content"]
    containers = [b for b in card["body"] if b["type"] == "Container"]
    assert len(containers) == messages.MAX_CARD_RUNS
    assert card["body"][-1]["text"] == f"and {300 - messages.MAX_CARD_RUNS} more"
    assert len(str(card)) < 20_000


def test_recovery_card(app: Context, teams_endpoint: TeamsEndpoint) -> None:
    notice = Notice(
        kind=Kind.RECOVERY,
        at=AT,
        base_url="https://ff",
        since=AT - timedelta(days=2),
        archived_runs=5,
        incident_runs=3,
        recovered_runs=3,
    )
    card = messages.teams_card(notice)["attachments"][0]["content"]
    assert card["body"][0]["text"] == "S3 log backup works again: 5 runs archived"
    assert "Backups succeed again; 5 runs archived" in card["body"][1]["text"]


# --- retries and faults ---------------------------------------------------------------------


def test_500_is_retried_three_times_then_recorded(
    app: Context, teams_endpoint: TeamsEndpoint
) -> None:
    teams_endpoint.respond(500, body="boom")
    ctx = teams_ctx(app, teams_endpoint.url)
    result = _test(ctx)
    assert not result.ok and result.attempts == 3 and len(teams_endpoint.posts) == 3
    assert result.error is not None
    assert "HTTP 500 (3 attempts)" in result.error and "boom" not in result.error
    assert f"http://127.0.0.1:{teams_endpoint.port}/webhook/***" in result.error
    assert TOKEN not in result.error
    last = notify.last_results(ctx)["teams"]
    assert last["ok"] is False and last["error"] == result.error


def test_503_once_then_success(app: Context, teams_endpoint: TeamsEndpoint) -> None:
    teams_endpoint.respond(503, times=1)
    result = _test(teams_ctx(app, teams_endpoint.url))
    assert result.ok and result.attempts == 2 and len(teams_endpoint.posts) == 2


def test_429_honours_retry_after(app: Context, teams_endpoint: TeamsEndpoint) -> None:
    teams_endpoint.respond(429, times=1, headers={"Retry-After": "1"})
    started = time.monotonic()
    result = _test(teams_ctx(app, teams_endpoint.url), backoff_s=(0.0,))
    assert result.ok and result.attempts == 2
    assert time.monotonic() - started >= 0.9  # waited as told, not the (zero) backoff


def test_retry_after_is_capped(app: Context, teams_endpoint: TeamsEndpoint) -> None:
    teams_endpoint.respond(429, times=1, headers={"Retry-After": "3600"})
    started = time.monotonic()
    result = _test(teams_ctx(app, teams_endpoint.url), max_retry_after_s=0.1)
    assert result.ok and result.attempts == 2
    assert time.monotonic() - started < 5


def test_400_is_not_retried(app: Context, teams_endpoint: TeamsEndpoint) -> None:
    teams_endpoint.respond(400, body="Bad payload")
    result = _test(teams_ctx(app, teams_endpoint.url))
    assert not result.ok and result.attempts == 1 and len(teams_endpoint.posts) == 1
    assert result.error is not None and "HTTP 400" in result.error
    assert "Bad payload" not in result.error  # the remote answer is never recorded


def test_hanging_endpoint_times_out_and_is_recorded(
    app: Context, teams_endpoint: TeamsEndpoint
) -> None:
    teams_endpoint.hang()
    ctx = teams_ctx(app, teams_endpoint.url)
    try:
        result = _test(ctx, timeout_s=0.3, attempts=2)
    finally:
        teams_endpoint.release()
    assert not result.ok and result.attempts == 2
    assert result.error is not None and "timed out (2 attempts)" in result.error


def test_endpoint_down(app: Context, teams_endpoint: TeamsEndpoint) -> None:
    url = teams_endpoint.url
    teams_endpoint.close()
    result = _test(teams_ctx(app, url))
    assert not result.ok and result.attempts == 3
    assert result.error is not None and "connection refused" in result.error
    assert TOKEN not in result.error


# --- URL rules and masking ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://example.webhook.office.com/webhookb2/abc/IncomingWebhook/def/ghi",
        "http://127.0.0.1:8080/hook/x",
        "http://127.9.9.9/hook/x",
        "http://localhost:9/hook/x",
        "http://[::1]:9/hook/x",
    ],
)
def test_allowed_urls(url: str) -> None:
    assert teams.check_url(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/webhookb2/SECRET-TOKEN",
        "http://10.0.0.5/hook/SECRET-TOKEN",
        "http://127.0.0.1.example.com/x/SECRET-TOKEN",
    ],
)
def test_plain_http_off_loopback_is_refused_without_showing_the_token(
    app: Context, url: str
) -> None:
    error = teams.check_url(url)
    assert error is not None and "must use https" in error and TOKEN not in error
    # refused as a setting already (exit 2 at start-up; 422 from PUT /api/settings)
    with pytest.raises(ConfigError) as refused:
        teams_ctx(app, url)
    assert "TEAMS_WEBHOOK_URL" in str(refused.value) and "must use https" in str(refused.value)
    assert TOKEN not in str(refused.value)


def test_other_schemes_are_refused() -> None:
    error = teams.check_url("ftp://127.0.0.1/hook/SECRET-TOKEN")
    assert error is not None and "must use https" in error and TOKEN not in error


def test_mask_url() -> None:
    workflow = (
        "https://prod-12.westeurope.logic.azure.com:443/workflows/0a1b2c3d/triggers/manual/"
        "paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=AbCdEf123456"
    )
    assert mask_url(workflow) == "https://prod-12.westeurope.logic.azure.com:443/workflows/***"
    assert mask_url("https://x.webhook.office.com/webhookb2/a@b/IncomingWebhook/c/d") == (
        "https://x.webhook.office.com/webhookb2/***"
    )
    assert mask_url("http://[::1]:8/h/tok") == "http://[::1]:8/h/***"
    assert mask_url("https://host") == "https://host"
    # a token as the only (or the first) segment is never shown (an outside audit)
    assert mask_url("http://127.0.0.1:1/LEAKME0123456789/") == "http://127.0.0.1:1/***"
    assert mask_url("http://host//SECRETTOKEN") == "http://host/***"
    assert mask_url("https://relay/a1b2c3d4e5/teams") == "https://relay/***"
    settings = load_settings(teams_webhook_url=workflow)
    text = f"failed: {workflow}; sig was AbCdEf123456 and id 0a1b2c3d"
    cleaned = redact(text, settings)
    assert "AbCdEf123456" not in cleaned and "0a1b2c3d" not in cleaned
    assert "https://prod-12.westeurope.logic.azure.com:443/workflows/***" in cleaned


def test_retry_after_parsing() -> None:
    now = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
    assert teams.retry_after("3", now, 10) == 3
    assert teams.retry_after("120", now, 10) == 10
    assert teams.retry_after("-5", now, 10) == 0
    assert teams.retry_after("Mon, 01 Jun 2026 12:00:04 GMT", now, 10) == 4
    assert teams.retry_after("soon", now, 10) is None
    assert teams.retry_after(None, now, 10) is None


def test_httpx_request_log_line_is_masked(
    app: Context, teams_endpoint: TeamsEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = _test(teams_ctx(app, teams_endpoint.url))
    assert result.ok
    assert "HTTP Request: POST" in caplog.text  # httpx's own line is there ...
    assert TOKEN not in caplog.text  # ... but masked
    assert f"127.0.0.1:{teams_endpoint.port}/webhook/***" in caplog.text


def test_a_token_in_the_first_path_segment_is_never_shown(
    app: Context, caplog: pytest.LogCaptureFixture
) -> None:
    """The outside audit's leak: ``http://127.0.0.1:1/LEAKME0123456789/`` — the delivery
    error (shown to viewers in GET /api/settings) and the server log named the token."""
    token = "LEAKME0123456789"
    for url in (f"http://127.0.0.1:1/{token}/", f"http://127.0.0.1:1//{token}"):
        settings = load_settings(teams_webhook_url=url)
        error = f"Teams webhook {url.rstrip('/')}: connection refused"
        cleaned = redact(error, settings)
        assert token not in cleaned and "connection refused" in cleaned
    caplog.set_level(logging.INFO)
    result = _test(teams_ctx(app, f"http://127.0.0.1:{free_port()}/{token}/"))
    assert not result.ok and result.error is not None
    assert token not in result.error and token not in caplog.text
