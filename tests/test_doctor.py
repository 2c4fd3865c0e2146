"""``fastflow doctor``: one line per outside part (database, S3, SMTP, Teams, Docker), ok /
error / skipped, against real servers — SQLite and PostgreSQL, moto, aiosmtpd, a local
Teams endpoint, a real dockerd — and against ports where nothing (or nothing useful)
answers. Read-only: no mail, no Teams post, no object, no database file is created."""

from __future__ import annotations

import json
import pwd
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastflow.config import Settings, load_settings
from fastflow.context import Context
from fastflow.db import settings_store
from fastflow.doctor import Check, DockerHealth, check_docker, run_checks
from fastflow.errors import ConfigError
from tests.conftest import MakePipeline, run_cli
from tests.dockerd import Daemon, docker_daemon  # noqa: F401
from tests.harness.fixtures import S3Env
from tests.harness.ports import LOCALHOST, free_port
from tests.harness.smtp import SmtpCapture
from tests.harness.teams import TeamsEndpoint

NAMES = ["database", "s3", "smtp", "teams", "docker"]
SMTP_SECRET = "smtp-pass-DO-NOT-LEAK-1"
S3_SECRET = "s3-secret-DO-NOT-LEAK-2"
TEAMS_TOKEN = "teams-token-DO-NOT-LEAK-3"
PG_SECRET = "pg-pass-DO-NOT-LEAK-4"


class Listener:
    """A TCP port on 127.0.0.1 that is not the service a check expects: ``silent`` accepts
    connections (the kernel does) but never says a word; otherwise every connection is
    counted and closed at once."""

    def __init__(self, *, silent: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind((LOCALHOST, 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if not silent:
            self._thread = threading.Thread(target=self._serve, daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            conn.close()

    @property
    def count(self) -> int:
        with self._lock:
            return self.accepted

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self._thread is not None:
            self._thread.join(5)


@pytest.fixture
def silent() -> Iterator[Listener]:
    listener = Listener(silent=True)
    yield listener
    listener.close()


@pytest.fixture
def closing() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


def settings_with(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def by_name(checks: list[Check]) -> dict[str, Check]:
    assert [c.check for c in checks] == NAMES
    return {c.check: c for c in checks}


def smtp_env(server: SmtpCapture, **more: str) -> dict[str, str]:
    return {
        "EMAIL_ENABLED": "true",
        "SMTP_HOST": server.host,
        "SMTP_PORT": str(server.port),
        "SMTP_FROM": "fastflow@example.org",
        "EMAIL_RECIPIENTS": "ops@example.org",
        **more,
    }


# --- the command ------------------------------------------------------------------------


def test_fresh_install_everything_skipped_but_database_exit_0(ff_env: dict[str, str]) -> None:
    res = run_cli("doctor")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split()[0] for line in lines] == NAMES
    assert [line.split()[1] for line in lines] == ["ok", *["skipped"] * 4]
    assert "no database yet" in lines[0]
    assert "S3_BACKUP_ENABLED=false" in lines[1]
    assert "EMAIL_ENABLED=false" in lines[2]
    assert "TEAMS_ENABLED=false" in lines[3]
    assert "not used by any pipeline" in lines[4]
    assert not Path(ff_env["DATA_DIR"]).exists()  # the doctor created nothing


def test_a_run_as_user_this_machine_lacks_is_invalid_configuration(
    ff_env: dict[str, str],
) -> None:
    """``serve`` and ``run`` refuse such a RUN_AS_USER: the doctor must not call it ok."""
    for args in (("doctor",), ("doctor", "--json")):
        res = run_cli(*args, env={"RUN_AS_USER": "no-such-user-xyz"})
        assert res.returncode == 2, res.stdout
        assert "RUN_AS_USER=no-such-user-xyz: no such user on this machine" in res.stderr
        assert res.stdout == ""
    # an existing user, by name or by uid, is fine (the doctor switches no users itself)
    for user in ("nobody", str(pwd.getpwnam("nobody").pw_uid)):
        res = run_cli("doctor", env={"RUN_AS_USER": user})
        assert res.returncode == 0, res.stderr
    assert not Path(ff_env["DATA_DIR"]).exists()


def test_json_lists_every_check_and_any_error_exits_1(ff_env: dict[str, str]) -> None:
    port = free_port()
    res = run_cli(
        "doctor", "--json", env={"EXECUTOR": "docker", "DOCKER_HOST": f"tcp://{LOCALHOST}:{port}"}
    )
    assert res.returncode == 1, res.stderr
    checks = json.loads(res.stdout)
    assert [c["check"] for c in checks] == NAMES
    assert all(set(c) == {"check", "status", "detail"} for c in checks)
    docker = checks[-1]
    assert docker["status"] == "error"
    assert docker["detail"] == (
        f"cannot reach the daemon at tcp://{LOCALHOST}:{port}: connection refused"
    )


def test_no_secret_in_any_output(ff_env: dict[str, str], closing: Listener) -> None:
    """Every part configured with a secret and failing: the text and JSON name what
    failed, never a password, key or webhook token."""
    port = free_port()
    env = {
        "DATABASE_URL": f"postgresql://fastflow:{PG_SECRET}@{LOCALHOST}:{port}/fastflow",
        "S3_BACKUP_ENABLED": "true",
        "S3_ENDPOINT_URL": f"http://{LOCALHOST}:{port}",
        "S3_BUCKET": "fastflow-test",
        "S3_ACCESS_KEY": "AKIAFASTFLOW",
        "S3_SECRET_ACCESS_KEY": S3_SECRET,
        "EMAIL_ENABLED": "true",
        "SMTP_HOST": LOCALHOST,
        "SMTP_PORT": str(closing.port),
        "SMTP_SECURITY": "ssl",
        "SMTP_USER": "fastflow",
        "SMTP_PASSWORD": SMTP_SECRET,
        "SMTP_FROM": "fastflow@example.org",
        "EMAIL_RECIPIENTS": "ops@example.org",
        "TEAMS_ENABLED": "true",
        "TEAMS_WEBHOOK_URL": f"https://{LOCALHOST}:{port}/webhookb2/abc/IncomingWebhook/{TEAMS_TOKEN}",
        "EXECUTOR": "docker",
        "DOCKER_HOST": f"tcp://{LOCALHOST}:{port}",
    }
    outputs = [
        run_cli(*args, "--timeout", "2", env=env) for args in (("doctor",), ("doctor", "--json"))
    ]
    for res in outputs:
        assert res.returncode == 1, res.stderr
        out = res.stdout + res.stderr
        assert "DO-NOT-LEAK" not in out, out
        assert "IncomingWebhook" not in out
    lines = {line.split()[0]: line for line in outputs[0].stdout.splitlines()}
    assert all(lines[name].split()[1] == "error" for name in NAMES), lines
    assert f"postgresql://fastflow:***@{LOCALHOST}:{port}/fastflow" in lines["database"]
    assert f"https://{LOCALHOST}:{port}: connection refused" in lines["teams"]


# --- database ---------------------------------------------------------------------------


def test_database_at_head_after_start(app: Context) -> None:
    [database] = run_checks(app.settings)[:1]
    assert database.status == "ok"
    assert database.detail.startswith(f"sqlite:///{app.settings.data_dir}/fastflow.db")
    assert "(migrations at head " in database.detail


def test_database_on_postgres(
    ff_env: dict[str, str], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_with(monkeypatch, DATABASE_URL=pg_url)
    [database] = run_checks(settings)[:1]
    assert database.status == "ok"
    assert "empty: tables are created at the next start" in database.detail


def test_postgres_that_refuses_is_an_error(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    url = f"postgresql://fastflow:{PG_SECRET}@{LOCALHOST}:{port}/fastflow"
    [database] = run_checks(settings_with(monkeypatch, DATABASE_URL=url))[:1]
    assert database.status == "error"
    assert database.detail.startswith(f"postgresql://fastflow:***@{LOCALHOST}:{port}/fastflow: ")
    assert "refused" in database.detail.lower()
    assert PG_SECRET not in database.detail


def test_schema_newer_than_this_fastflow_is_an_error(app: Context) -> None:
    path = app.settings.data_dir / "fastflow.db"
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    [database] = run_checks(app.settings)[:1]
    assert database.status == "error"
    assert "schema 9999 is newer than this fastflow knows" in database.detail


def test_a_file_that_is_not_a_database_is_an_error(ff_env: dict[str, str]) -> None:
    path = Path(ff_env["DATA_DIR"]) / "fastflow.db"
    path.parent.mkdir()
    path.write_bytes(b"not a database, just text " * 100)
    [database] = run_checks(load_settings())[:1]
    assert database.status == "error"
    assert "not a database" in database.detail


def test_settings_saved_in_the_ui_are_checked(app: Context, teams_endpoint: TeamsEndpoint) -> None:
    """Teams enabled only by a stored override: the doctor checks it, as the server
    would use it."""
    settings_store.update(
        app.db, app.base, {"teams_enabled": True, "teams_webhook_url": teams_endpoint.url}
    )
    res = run_cli("doctor")
    teams = res.stdout.splitlines()[3]
    assert teams.split()[:2] == ["teams", "ok"], res.stdout
    assert teams_endpoint.posts == []


# --- S3 -------------------------------------------------------------------------------


def test_s3_bucket_reachable_nothing_written(
    ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = by_name(run_checks(settings_with(monkeypatch, **s3.env())))
    assert checks["s3"].status == "ok"
    assert (
        checks["s3"].detail
        == f"bucket 'fastflow-test' at {s3.endpoint_url} reachable (HEAD bucket)"
    )
    assert s3.client().list_objects_v2(Bucket=s3.bucket).get("KeyCount") == 0
    assert {r.method for r in s3.proxy.requests} == {"HEAD"}


def test_s3_missing_bucket_is_an_error(
    ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**s3.env(), "S3_BUCKET": "no-such-bucket"}
    checks = by_name(run_checks(settings_with(monkeypatch, **env)))
    assert checks["s3"].status == "error"
    assert "does not exist" in checks["s3"].detail


def test_s3_enabled_but_incomplete_is_an_error(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = by_name(run_checks(settings_with(monkeypatch, S3_BACKUP_ENABLED="true")))
    assert checks["s3"].status == "error"
    assert (
        "missing S3_ENDPOINT_URL, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_ACCESS_KEY"
        in checks["s3"].detail
    )


def test_s3_server_down_is_an_error(
    ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    env = {**s3.env(), "S3_ENDPOINT_URL": f"http://{LOCALHOST}:{port}"}
    checks = by_name(run_checks(settings_with(monkeypatch, **env)))
    assert checks["s3"].status == "error"
    assert checks["s3"].detail.startswith(f"connection refused at http://{LOCALHOST}:{port}")


# --- SMTP -----------------------------------------------------------------------------


def test_smtp_plain_ok_and_no_mail_sent(
    ff_env: dict[str, str], smtp_server: SmtpCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = by_name(
        run_checks(settings_with(monkeypatch, **smtp_env(smtp_server, SMTP_SECURITY="none")))
    )
    assert checks["smtp"] == Check(
        "smtp",
        "ok",
        f"{LOCALHOST}:{smtp_server.port} (none): connect, EHLO, QUIT ok (no mail sent)",
    )
    assert smtp_server.messages == []


def test_smtp_starttls_and_login(
    ff_env: dict[str, str],
    smtp_factory: Callable[..., SmtpCapture],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = smtp_factory(starttls=True, username="fastflow", password=SMTP_SECRET)
    env = smtp_env(
        server, SMTP_SECURITY="starttls", SMTP_USER="fastflow", SMTP_PASSWORD=SMTP_SECRET
    )
    checks = by_name(
        run_checks(settings_with(monkeypatch, **env), ssl_context=server.client_context())
    )
    assert checks["smtp"].status == "ok", checks["smtp"]
    assert "connect, EHLO, STARTTLS, login as 'fastflow', QUIT ok" in checks["smtp"].detail
    assert server.messages == []


def test_smtp_wrong_password_is_an_error(
    ff_env: dict[str, str],
    smtp_factory: Callable[..., SmtpCapture],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = smtp_factory(starttls=True, username="fastflow", password="the-right-one")
    env = smtp_env(
        server, SMTP_SECURITY="starttls", SMTP_USER="fastflow", SMTP_PASSWORD=SMTP_SECRET
    )
    checks = by_name(
        run_checks(settings_with(monkeypatch, **env), ssl_context=server.client_context())
    )
    assert checks["smtp"].status == "error"
    assert "authentication as 'fastflow' failed: 535" in checks["smtp"].detail
    assert SMTP_SECRET not in checks["smtp"].detail


def test_smtp_without_starttls_is_an_error(
    ff_env: dict[str, str], smtp_server: SmtpCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = smtp_env(smtp_server, SMTP_SECURITY="starttls")
    checks = by_name(run_checks(settings_with(monkeypatch, **env)))
    assert checks["smtp"].status == "error"
    assert "does not offer STARTTLS" in checks["smtp"].detail


def test_smtp_enabled_but_incomplete_is_an_error(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = by_name(run_checks(settings_with(monkeypatch, EMAIL_ENABLED="true")))
    assert checks["smtp"].status == "error"
    assert "missing SMTP_HOST, SMTP_FROM, EMAIL_RECIPIENTS" in checks["smtp"].detail


# --- Teams ----------------------------------------------------------------------------


def test_teams_reachable_without_posting(
    ff_env: dict[str, str], teams_endpoint: TeamsEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"TEAMS_ENABLED": "true", "TEAMS_WEBHOOK_URL": teams_endpoint.url}
    checks = by_name(run_checks(settings_with(monkeypatch, **env)))
    assert checks["teams"].status == "ok"
    assert checks["teams"].detail.startswith(f"http://{LOCALHOST}:{teams_endpoint.port} reachable")
    assert (
        "SECRET-TOKEN" not in checks["teams"].detail and "webhook/abc" not in checks["teams"].detail
    )
    assert teams_endpoint.posts == []


def test_teams_down_is_an_error(ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    url = f"http://{LOCALHOST}:{port}/webhook/abc/{TEAMS_TOKEN}"
    checks = by_name(
        run_checks(settings_with(monkeypatch, TEAMS_ENABLED="true", TEAMS_WEBHOOK_URL=url))
    )
    assert checks["teams"] == Check(
        "teams", "error", f"http://{LOCALHOST}:{port}: connection refused"
    )


def test_teams_plain_http_to_a_remote_host_is_refused(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://teams.example.org/webhook/abc/{TEAMS_TOKEN}"
    # refused as a setting: the doctor never gets to run with it (exit 2, the token hidden)
    with pytest.raises(ConfigError) as refused:
        settings_with(monkeypatch, TEAMS_ENABLED="true", TEAMS_WEBHOOK_URL=url)
    assert "must use https" in str(refused.value) and TEAMS_TOKEN not in str(refused.value)


# --- never hangs ----------------------------------------------------------------------


def test_silent_servers_time_out(
    ff_env: dict[str, str], silent: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every network check against a port that accepts and never answers ends as an
    error within its timeout (plus the grace second), all at the same time."""
    where = f"{LOCALHOST}:{silent.port}"
    env = {
        "S3_BACKUP_ENABLED": "true",
        "S3_ENDPOINT_URL": f"http://{where}",
        "S3_BUCKET": "fastflow-test",
        "S3_ACCESS_KEY": "AKIAFASTFLOW",
        "S3_SECRET_ACCESS_KEY": S3_SECRET,
        "EMAIL_ENABLED": "true",
        "SMTP_HOST": LOCALHOST,
        "SMTP_PORT": str(silent.port),
        "SMTP_FROM": "fastflow@example.org",
        "EMAIL_RECIPIENTS": "ops@example.org",
        "TEAMS_ENABLED": "true",
        "TEAMS_WEBHOOK_URL": f"http://{where}/webhook/abc/{TEAMS_TOKEN}",
        "EXECUTOR": "docker",
        "DOCKER_HOST": f"tcp://{where}",
    }
    started = time.monotonic()
    checks = by_name(run_checks(settings_with(monkeypatch, **env), timeout=0.5))
    elapsed = time.monotonic() - started
    assert checks["database"].status == "ok"
    for name in ("s3", "smtp", "teams", "docker"):
        assert checks[name].status == "error", checks[name]
    assert "read timeout" in checks["s3"].detail
    for name in ("smtp", "teams", "docker"):
        # its own timeout, or (a loaded machine) the hard deadline after the grace second
        detail = checks[name].detail
        assert detail.endswith("timed out after 0.5 s") or detail == "no answer within 0.5 s"
    assert elapsed < 2 * (0.5 + 1.0) + 2.0  # database, then the four together; never hangs


# --- Docker (unreachable daemons first; the real dockerd last) -------------------------


def test_docker_skipped_when_no_pipeline_uses_it(
    ff_env: dict[str, str], make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pipeline("local-one", config='{"executor": "local"}')
    make_pipeline("default-one")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    docker = check_docker(load_settings(), 1.0)
    assert docker.status == "skipped"


def test_docker_used_by_a_pipeline_and_socket_missing(
    ff_env: dict[str, str], make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pipeline("boxed", config='{"executor": "docker", "image": "python:3.11-slim"}')
    make_pipeline("plain")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    docker = check_docker(load_settings(), 1.0)
    assert docker == Check(
        "docker",
        "error",
        "cannot reach the daemon at unix:///nonexistent/docker.sock: no such socket",
    )
    public = check_docker(load_settings(), 1.0, public=True)
    assert public.detail == "cannot reach the daemon at the local socket: no such socket"


def test_docker_used_by_executor_and_port_refused(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://{LOCALHOST}:{port}")
    docker = check_docker(settings_with(monkeypatch, EXECUTOR="docker"), 1.0)
    assert (
        docker.detail == f"cannot reach the daemon at tcp://{LOCALHOST}:{port}: connection refused"
    )


def test_every_pipeline_local_despite_executor_docker_skips(
    ff_env: dict[str, str], make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pipeline("pinned-local", config='{"executor": "local"}')
    assert check_docker(settings_with(monkeypatch, EXECUTOR="docker"), 1.0).status == "skipped"


def test_invalid_docker_host_is_an_error(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "gopher://127.0.0.1:70")
    docker = check_docker(settings_with(monkeypatch, EXECUTOR="docker"), 1.0)
    assert docker.status == "error"
    assert docker.detail.endswith("DOCKER_HOST is not a valid address")


def test_docker_tls_without_certificates_is_an_error(
    ff_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://{LOCALHOST}:{free_port()}")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path / "no-certs-here"))
    docker = check_docker(settings_with(monkeypatch, EXECUTOR="docker"), 1.0, public=True)
    assert docker.status == "error"
    assert "TLS settings incomplete" in docker.detail
    assert "no-certs-here" not in docker.detail


def test_health_answer_is_cached_for_its_ttl(
    ff_env: dict[str, str], closing: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many polls: one daemon connection per TTL (time injected)."""
    monkeypatch.setenv("DOCKER_HOST", f"tcp://{LOCALHOST}:{closing.port}")
    settings = settings_with(monkeypatch, EXECUTOR="docker")
    now = [1000.0]
    health = DockerHealth(lambda: settings, ttl=5.0, timeout=1.0, clock=lambda: now[0])
    first = health.get()
    assert first is not None and first["status"] == "error"
    seen = closing.count
    assert seen >= 1
    for _ in range(20):
        now[0] += 0.2
        assert health.get() == first
    assert closing.count == seen  # 4 s of polls: no new connection
    now[0] += 1.5
    health.get()
    assert closing.count > seen  # past the TTL: asked again


def test_health_polls_during_a_refresh_get_the_previous_answer(
    ff_env: dict[str, str], silent: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow daemon delays only the poll that refreshes; the others answer at once."""
    monkeypatch.setenv("DOCKER_HOST", f"tcp://{LOCALHOST}:{silent.port}")
    settings = settings_with(monkeypatch, EXECUTOR="docker")
    now = [0.0]
    health = DockerHealth(lambda: settings, ttl=5.0, timeout=0.5, clock=lambda: now[0])
    first = health.get()  # times out after 0.5 s
    assert first is not None and first["detail"].endswith("timed out after 0.5 s")
    now[0] = 10.0
    refreshing = threading.Thread(target=health.get)
    refreshing.start()
    try:
        started = time.monotonic()
        while not health._refresh.locked():  # the refresh has begun
            assert time.monotonic() - started < 5
            threading.Event().wait(0.005)
        assert health.get() == first
    finally:
        refreshing.join(5)


def test_docker_reachable(
    ff_env: dict[str, str],
    make_pipeline: MakePipeline,
    docker_daemon: Daemon,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_pipeline("boxed", config='{"executor": "docker"}')
    monkeypatch.setenv("DOCKER_HOST", docker_daemon.host)
    docker = check_docker(load_settings(), 5.0)
    assert docker.status == "ok", docker
    assert docker.detail.startswith(f"{docker_daemon.host}: Docker ")
    assert docker.detail.endswith("), used by pipeline boxed")
    res = run_cli("doctor")
    assert res.returncode == 0, res.stdout + res.stderr
    line = res.stdout.splitlines()[-1]
    assert line.startswith(f"docker     ok      {docker_daemon.host}: Docker ")
