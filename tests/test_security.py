"""One redactor (``security.redact``) for API errors, pass records, notifications and log
records: no secret of the settings ever appears in their text."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fastflow.config import load_settings
from fastflow.security import (
    install_log_redaction,
    mask_url,
    public_text,
    redact,
    without_paths,
)

S3_SECRET = "s3-secret-value-123"
SMTP_PASSWORD = "smtp-pass-456"
WEBHOOK = "https://example.webhook.office.com/webhookb2/abc-def-token/IncomingWebhook/xyz-sig?sig=qwerty123"


@pytest.fixture
def settings(ff_env: dict[str, str]):  # type: ignore[no-untyped-def]
    return load_settings(
        s3_secret_access_key=S3_SECRET,
        s3_access_key="AKIAEXAMPLEKEY",
        smtp_password=SMTP_PASSWORD,
        teams_webhook_url=WEBHOOK,
    )


def test_redact_masks_every_secret_field_and_the_webhook_tokens(settings: object) -> None:
    text = f"boom {S3_SECRET} {SMTP_PASSWORD} AKIAEXAMPLEKEY {WEBHOOK} sig=qwerty123"
    clean = redact(text, settings)  # type: ignore[arg-type]
    for secret in (S3_SECRET, SMTP_PASSWORD, "AKIAEXAMPLEKEY", "qwerty123", "abc-def-token"):
        assert secret not in clean
    assert mask_url(WEBHOOK) in clean and "boom" in clean


def test_log_records_are_redacted_whatever_the_logger(
    settings: object, caplog: pytest.LogCaptureFixture
) -> None:
    install_log_redaction(settings)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO):
        logging.getLogger("botocore.something").warning("key %s refused", S3_SECRET)
        logging.getLogger("fastflow.notify").info("smtp login with %s", SMTP_PASSWORD)
    text = caplog.text
    assert S3_SECRET not in text and SMTP_PASSWORD not in text
    assert "key *** refused" in text


def test_an_access_line_with_a_secret_is_written_masked(
    settings: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """uvicorn's access formatter unpacks the record's five arguments: a masked record
    keeps them (before, found by an outside audit, the line was lost and ~100 lines of
    "Logging error" traceback were written instead, for any request carrying a secret)."""
    from uvicorn.logging import AccessFormatter

    install_log_redaction(settings)  # type: ignore[arg-type]
    handler = logging.StreamHandler()
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s'))
    logger = logging.getLogger("uvicorn.access.test")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        path = f"/api/health?x={S3_SECRET}"
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 200)
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.strip() == '127.0.0.1:5000 - "GET /api/health?x=*** HTTP/1.1" 200 OK'
    assert "Logging error" not in err and S3_SECRET not in err


@pytest.mark.parametrize("token", ["SECRET TOKENAB", "SECRÉTTOKEN", "tökenvalue"])
def test_webhook_tokens_are_masked_as_an_http_client_logs_them(
    ff_env: dict[str, str], token: str
) -> None:
    """Found by an outside audit: httpx logs the URL percent-encoded (``SECRET%20TOKENAB``),
    which the redactor, replacing exact strings, let through."""
    import httpx

    url = f"https://hooks.example.org/webhookb2/{token}/IncomingWebhook/x"
    settings = load_settings(teams_webhook_url=url)
    logged = f'HTTP Request: POST {httpx.URL(url)} "HTTP/1.1 200 OK"'
    clean = redact(logged, settings)
    assert token not in clean
    assert "SECRET%20" not in clean and "SECR%C3%89T" not in clean and "t%C3%B6k" not in clean


def test_uv_credentials_are_fastflows_own_secrets() -> None:
    """Found by an outside audit: a build backend printing its environment showed the
    index password (split out of ``UV_INDEX_URL``) and ``UV_INDEX_*_PASSWORD`` in the
    run's log: only ``scheme://user:password@`` spelled whole was masked."""
    from fastflow.security import uv_credentials

    found = uv_credentials(
        {
            "UV_INDEX_URL": "https://bob:p%40ss-Word9@pypi.example/simple",
            "UV_EXTRA_INDEX_URL": "https://a.example/simple https://x:tok-7Hh2@b.example/s",
            "UV_INDEX_PRIVATE_PASSWORD": "idx-pass-9876",
            "UV_INDEX_PRIVATE_USERNAME": "bob",
            "UV_OFFLINE": "1",
            "PASSWORD_NOT_UV": "not-ours-1234",
        }
    )
    assert set(found) == {"p%40ss-Word9", "p@ss-Word9", "tok-7Hh2", "idx-pass-9876"}


def test_error_text_names_the_servers_folders_by_their_settings(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    data = logs / "data"  # inside LOGS_DIR: the longer folder wins
    link = tmp_path / "pipes-link"
    (tmp_path / "pipes").mkdir()
    link.symlink_to(tmp_path / "pipes")
    settings = load_settings(logs_dir=logs, data_dir=data, pipelines_dir=link)
    text = (
        f"no {link}/x/main.py; {tmp_path / 'pipes'}/y; '{data}/envs/k' ({logs}/a.log), "
        f"{logs}2/other, {logs}"
    )
    clean = without_paths(text, settings)
    assert clean == (
        "no PIPELINES_DIR/x/main.py; PIPELINES_DIR/y; 'DATA_DIR/envs/k' (LOGS_DIR/a.log), "
        f"{logs}2/other, LOGS_DIR"
    )
    assert (
        public_text(
            f"{S3_SECRET} at {logs}", load_settings(logs_dir=logs, s3_secret_access_key=S3_SECRET)
        )
        == "*** at LOGS_DIR"
    )


def test_fastflows_own_tokens_and_keys_are_masked_by_their_form(ff_env: dict[str, str]) -> None:
    from fastflow.security import new_token

    settings = load_settings()
    token = new_token()
    key = "ffwh_" + new_token().removeprefix("ff_")
    text = f'POST /api/webhooks/etl/{key} 202; Authorization: Bearer {token}; "{token}"'
    clean = redact(text, settings)
    assert token not in clean and key not in clean
    assert clean == 'POST /api/webhooks/etl/ffwh_*** 202; Authorization: Bearer ff_***; "ff_***"'
    # names that merely start like one stay: a pipeline "ff_daily", a longer identifier
    for kept in ("ff_daily_report", "ff_" + "a" * 39, "xff_" + "a" * 43):
        assert redact(f"run of {kept} failed", settings) == f"run of {kept} failed"


def test_a_credential_close_to_fastflows_form_is_masked_too(ff_env: dict[str, str]) -> None:
    """An outside audit: a key or token with one character more (mistyped, or with
    something glued to it), or an ``f`` percent-encoded, was written in clear — and gave
    the real credential away."""
    from fastflow.security import new_token

    settings = load_settings()
    body = new_token().removeprefix("ff_")
    for text, prefix in (
        (f"ff_{body}X", "ff_"),
        (f"ffwh_{body}-", "ffwh_"),
        (f"ffwh_{body[:-3]}", "ffwh_"),
        (f"%66fwh_{body}", "ffwh_"),  # (shown decoded: see the test below)
        (f"f%66_{body}", "ff_"),
        (f"FFWH_{body}", "FFWH_"),
    ):
        line = f'"GET /api/runs?token={text} HTTP/1.1" 401'
        assert redact(line, settings) == f'"GET /api/runs?token={prefix}*** HTTP/1.1" 401'
    # a review: a percent-encoded or escaped separator just before it
    for before, shown in (
        ("token%3D", "token="),  # (shown decoded)
        ("Bearer%20", "Bearer%20"),
        ("next=%2Fapi%2Fwebhooks%2Fp%2F", "next=%2Fapi%2Fwebhooks%2Fp%2F"),
        ("'a\\n", "'a\\n"),
    ):
        line = f"GET /login?{before}ffwh_{body} 302"
        assert redact(line, settings) == f"GET /login?{shown}ffwh_*** 302", before


def test_a_pipeline_json_webhook_key_in_the_path_is_masked_whatever_its_form() -> None:
    """An outside audit: a ``webhook_key`` from pipeline.json (any text, not fastflow's
    ``ffwh_`` form) reached the access log in clear through ``/api/webhooks/{p}/{key}``."""
    from fastflow.security import redact

    settings = load_settings()
    line = '127.0.0.1:5 - "POST /api/webhooks/etl/My-Own%20Key-123?x=1 HTTP/1.1" 202'
    assert redact(line, settings) == '127.0.0.1:5 - "POST /api/webhooks/etl/***?x=1 HTTP/1.1" 202'
    assert redact("GET /api/webhooks/etl HTTP/1.1", settings) == "GET /api/webhooks/etl HTTP/1.1"


def test_a_credential_percent_encoded_in_a_routed_path_is_masked(ff_env: dict[str, str]) -> None:
    """A second outside audit: the server routes the decoded path, so
    ``/api/%77ebhooks/p/ffwh%5F…`` queued a run — and was logged as sent, key and all.
    Such a line is shown decoded and masked; decoding never adds a line break."""
    from fastflow.security import new_token

    settings = load_settings()
    body = new_token().removeprefix("ff_")
    cases = {
        f'"POST /api/%77ebhooks/p/ffwh%5F{body} HTTP/1.1" 202': (
            '"POST /api/webhooks/p/ffwh_*** HTTP/1.1" 202'
        ),
        '"POST /api/%77ebhooks/p/my-own-key-1234 HTTP/1.1" 202': (
            '"POST /api/webhooks/p/*** HTTP/1.1" 202'
        ),
        f'"GET /api/health?t=ff%255F{body}%0A HTTP/1.1" 200': (
            '"GET /api/health?t=ff_***%0A HTTP/1.1" 200'
        ),
        '"GET /api/runs?q=a%20b%0A HTTP/1.1" 200': '"GET /api/runs?q=a%20b%0A HTTP/1.1" 200',
    }
    for line, shown in cases.items():
        assert redact(line, settings) == shown
