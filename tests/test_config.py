"""Configuration: every variable, good and bad values, one clear line per error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastflow.config import DEFAULT_CLEANUP_SCHEDULE, load_settings
from fastflow.errors import ConfigError

pytestmark = pytest.mark.usefixtures("ff_env")


def test_defaults_match_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "DATA_DIR", "LOGS_DIR", "PIPELINES_DIR"):
        monkeypatch.delenv(name)
    s = load_settings()
    assert s.database_url == "sqlite:///./data/fastflow.db"
    assert s.data_dir == Path("./data")
    assert s.logs_dir == Path("./logs")
    assert s.pipelines_dir == Path("./pipelines")
    assert s.log_retention_runs is None and s.log_retention_days is None
    assert s.log_max_size_mb is None
    assert s.cleanup_schedule == DEFAULT_CLEANUP_SCHEDULE == "0 2 * * *"
    assert s.s3_backup_enabled is False
    assert s.s3_region == "us-east-1" and s.s3_prefix == "pipeline-logs"
    assert s.s3_use_path_style is True
    assert s.s3_max_concurrency == 8
    assert s.email_enabled is False and s.smtp_port == 587 and s.email_recipients == []
    assert s.teams_enabled is False and s.teams_webhook_url is None
    assert s.fastflow_base_url == "http://localhost:8000"


GOOD = [
    ("LOG_RETENTION_RUNS", "5", "log_retention_runs", 5),
    ("LOG_RETENTION_RUNS", "0", "log_retention_runs", None),
    ("LOG_RETENTION_DAYS", "30", "log_retention_days", 30),
    ("LOG_RETENTION_DAYS", "0", "log_retention_days", None),
    ("LOG_MAX_SIZE_MB", "10", "log_max_size_mb", 10),
    ("CLEANUP_SCHEDULE", "*/15 * * * *", "cleanup_schedule", "*/15 * * * *"),
    ("CLEANUP_SCHEDULE", "0  3 * *  1-5", "cleanup_schedule", "0 3 * * 1-5"),
    ("S3_BACKUP_ENABLED", "true", "s3_backup_enabled", True),
    ("S3_BACKUP_ENABLED", "0", "s3_backup_enabled", False),
    ("S3_ENDPOINT_URL", "http://minio:9000", "s3_endpoint_url", "http://minio:9000"),
    ("S3_BUCKET", "logs", "s3_bucket", "logs"),
    ("S3_REGION", "eu-central-1", "s3_region", "eu-central-1"),
    ("S3_PREFIX", "/a/b/", "s3_prefix", "a/b"),
    ("S3_USE_PATH_STYLE", "false", "s3_use_path_style", False),
    ("S3_MAX_CONCURRENCY", "4", "s3_max_concurrency", 4),
    ("EMAIL_ENABLED", "yes", "email_enabled", True),
    ("SMTP_HOST", "mail.example.org", "smtp_host", "mail.example.org"),
    ("SMTP_PORT", "465", "smtp_port", 465),
    ("SMTP_USER", "bot", "smtp_user", "bot"),
    ("SMTP_FROM", "fastflow@example.org", "smtp_from", "fastflow@example.org"),
    (
        "EMAIL_RECIPIENTS",
        "a@example.org, b@example.org,",
        "email_recipients",
        ["a@example.org", "b@example.org"],
    ),
    ("TEAMS_ENABLED", "true", "teams_enabled", True),
    ("FASTFLOW_BASE_URL", "https://ff.example.org/", "fastflow_base_url", "https://ff.example.org"),
    ("DATABASE_URL", "postgresql://u@db/ff", "database_url", "postgresql://u@db/ff"),
]


@pytest.mark.parametrize(("var", "value", "field", "expected"), GOOD)
def test_good_values(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(var, value)
    assert getattr(load_settings(), field) == expected


def test_secrets_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("SMTP_PASSWORD", "pw-value")
    s = load_settings()
    assert s.s3_secret_access_key is not None
    assert s.s3_secret_access_key.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(s) and "pw-value" not in repr(s)


BAD = [
    ("LOG_RETENTION_RUNS", "-1"),
    ("LOG_RETENTION_RUNS", "ten"),
    ("LOG_RETENTION_DAYS", "-5"),
    ("LOG_RETENTION_DAYS", "1.5"),
    ("LOG_MAX_SIZE_MB", "abc"),
    ("LOG_MAX_SIZE_MB", "0"),
    ("LOG_MAX_SIZE_MB", "-3"),
    ("CLEANUP_SCHEDULE", "not a cron"),
    ("CLEANUP_SCHEDULE", "61 * * * *"),
    ("CLEANUP_SCHEDULE", "0 2 * * * *"),
    ("CLEANUP_SCHEDULE", "0 0 31 2 *"),  # valid syntax, never fires
    ("ARCHIVE_VERIFY_SCHEDULE", "0 0 30 2 *"),
    ("S3_BACKUP_ENABLED", "maybe"),
    ("S3_ENDPOINT_URL", "minio:9000"),
    ("S3_ENDPOINT_URL", "ftp://minio"),
    ("S3_USE_PATH_STYLE", "sometimes"),
    ("S3_MAX_CONCURRENCY", "0"),
    ("S3_PREFIX", "a/../b"),
    ("S3_PREFIX", " "),  # a folder named " ": nobody finds it by name
    ("S3_PREFIX", "logs /2026"),
    ("EMAIL_ENABLED", "perhaps"),
    ("SMTP_PORT", "70000"),
    ("SMTP_FROM", "not-an-address"),
    ("SMTP_SECURITY", "tls13"),
    ("EMAIL_RECIPIENTS", "ops@example.org, not an address"),
    ("TEAMS_ENABLED", "2x"),
    ("FASTFLOW_BASE_URL", "localhost:8000"),
    ("DATABASE_URL", "mysql://x"),
    ("DATABASE_URL", "sqlite:///"),
    ("DATABASE_URL", "postgresql://u@127.0.0.1:notaport/x"),
    ("DATABASE_URL", "postgresql://u@[::1/x"),
]


@pytest.mark.parametrize(("var", "value"), BAD)
def test_bad_values_name_variable_and_value(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert var in message
    assert value.strip() in message or value in message
    assert "\n" not in message


def test_credentials_in_the_s3_endpoint_are_refused_and_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by an outside audit: a user and password in S3_ENDPOINT_URL were accepted
    and shown to every viewer (settings page, /api/settings)."""
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://AKIA:SECRETS3INURL@127.0.0.1:9000/")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "S3_ENDPOINT_URL" in str(err.value) and "S3_ACCESS_KEY" in str(err.value)
    assert "SECRETS3INURL" not in str(err.value)


@pytest.mark.parametrize(
    "tail", ["/?k=testing-secret", "/#testing-secret", "?a=1&k=testing-secret"]
)
def test_a_query_in_the_s3_endpoint_is_refused_and_not_shown(
    monkeypatch: pytest.MonkeyPatch, tail: str
) -> None:
    """An outside audit: the refusal of a query string in S3_ENDPOINT_URL printed it, a
    token in it included (the user:password part was masked)."""
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:1{tail}")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "S3_ENDPOINT_URL=http://127.0.0.1:1" in str(err.value)
    assert "must not have a query string" in str(err.value)
    assert "testing-secret" not in str(err.value)


@pytest.mark.parametrize("var", ["TEAMS_WEBHOOK_URL", "S3_SECRET_ACCESS_KEY"])
def test_bad_secret_value_is_masked(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv("TEAMS_WEBHOOK_URL", "no-scheme/secret-token-123")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "TEAMS_WEBHOOK_URL" in str(err.value)
    assert "secret-token-123" not in str(err.value)


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("LOG_RETENTION_RUNS=7\nS3_PREFIX=audit\n")
    s = load_settings()
    assert s.log_retention_runs == 7 and s.s3_prefix == "audit"


def test_environment_overrides_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("LOG_RETENTION_RUNS=7\n")
    monkeypatch.setenv("LOG_RETENTION_RUNS", "3")
    assert load_settings().log_retention_runs == 3


def test_empty_value_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_MAX_SIZE_MB", "")
    monkeypatch.setenv("S3_BUCKET", "")
    s = load_settings()
    assert s.log_max_size_mb is None and s.s3_bucket is None


def test_s3_missing_names_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_BACKUP_ENABLED", "true")
    monkeypatch.setenv("S3_BUCKET", "bkt")
    assert load_settings().s3_missing() == [
        "S3_ENDPOINT_URL",
        "S3_ACCESS_KEY",
        "S3_SECRET_ACCESS_KEY",
    ]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:hunter2pw@127.0.0.1:notaport/x",
        "sqlite:///",
        "postgresql://u:hunter2pw@[::1/x",
    ],
)
def test_a_malformed_database_url_stops_a_command_with_one_line(url: str) -> None:
    """Found by an outside contract check: these crashed every command with a traceback
    and exit 1 (the driver failed on them); the contract is exit 2 and one line."""
    from tests.conftest import run_cli

    res = run_cli("runs", env={"DATABASE_URL": url})
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "DATABASE_URL" in res.stderr and "hunter2pw" not in res.stderr


@pytest.mark.parametrize("var", ["S3_ACCESS_KEY", "S3_SECRET_ACCESS_KEY", "SMTP_PASSWORD"])
def test_a_credential_with_a_line_break_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    """An outside audit: ``S3_ACCESS_KEY=$'AKVAL\\nx'`` was accepted, and every upload then
    failed with botocore's "invalid header value" naming the Authorization header."""
    monkeypatch.setenv(var, "AKVALUE123\nx")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert f"{var}=***" in message and "control characters" in message
    assert "AKVALUE123" not in message


@pytest.mark.parametrize("var", ["S3_SECRET_ACCESS_KEY", "SMTP_PASSWORD", "SMTP_USER"])
def test_a_credential_in_bytes_that_are_not_utf8_is_refused_at_start(var: str) -> None:
    """A Latin-1 password in the environment reached Python as a lone surrogate and failed
    only when the first mail or upload was sent. It stops every command with exit 2."""
    env = {**os.environb, var.encode(): b"hunter\xe9pw"}
    res = subprocess.run(
        [sys.executable, "-m", "fastflow", "runs"], env=env, capture_output=True, text=True
    )
    assert res.returncode == 2, res.stderr
    assert var in res.stderr and "valid UTF-8" in res.stderr and "Traceback" not in res.stderr
    assert ("hunter" in res.stderr) is (var == "SMTP_USER")  # a user name is no secret


def test_an_smtp_user_with_a_line_break_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_USER", "ops\nRCPT TO:<x@example.org>")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "SMTP_USER" in str(err.value) and "control characters" in str(err.value)
    assert "\n" not in str(err.value)  # one line
