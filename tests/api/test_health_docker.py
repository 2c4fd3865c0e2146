"""``GET /api/health`` and the Docker daemon: a ``docker`` entry only when a pipeline uses
Docker, its answer cached for a few seconds, no path or secret in it, and the top-level
``status`` always "ok" (liveness). Real daemons: unreachable ones first, dockerd last."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from fastflow import __version__
from fastflow.config import load_settings
from fastflow.context import bootstrap
from fastflow.server import create_app
from tests.conftest import MakePipeline
from tests.dockerd import Daemon, docker_daemon  # noqa: F401
from tests.harness.ports import LOCALHOST, free_port
from tests.test_doctor import Listener


@pytest.fixture
def client(ff_env: dict[str, str]) -> Iterator[TestClient]:
    ctx = bootstrap(load_settings())
    yield TestClient(create_app(ctx, schedule=False))
    ctx.db.dispose()


@pytest.fixture
def docker_pipeline(make_pipeline: MakePipeline) -> None:
    make_pipeline("boxed", config='{"executor": "docker"}')


def test_no_docker_key_when_no_pipeline_uses_docker(
    make_pipeline: MakePipeline, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pipeline("plain")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    res = client.get("/api/health")
    assert res.status_code == 200
    assert res.json() == {"status": "ok", "version": __version__}


def test_missing_socket_is_reported_without_its_path(
    docker_pipeline: None, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/secret-place/docker.sock")
    res = client.get("/api/health")  # no token, no session: still answered
    assert res.status_code == 200
    assert res.json() == {
        "status": "ok",
        "version": __version__,
        "docker": {
            "status": "error",
            "detail": "cannot reach the daemon at the local socket: no such socket",
        },
    }
    assert "secret-place" not in res.text


def test_refused_tcp_daemon_is_reported_by_scheme_and_host(
    docker_pipeline: None, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://{LOCALHOST}:{port}/some/path")
    docker = client.get("/api/health").json()["docker"]
    assert docker == {
        "status": "error",
        "detail": f"cannot reach the daemon at tcp://{LOCALHOST}:{port}: connection refused",
    }


def test_executor_docker_alone_adds_the_entry(
    ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECUTOR", "docker")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    ctx = bootstrap(load_settings())
    try:
        body = TestClient(create_app(ctx, schedule=False)).get("/api/health").json()
    finally:
        ctx.db.dispose()
    assert body["status"] == "ok"
    assert body["docker"]["status"] == "error"


def test_a_flood_of_polls_reaches_the_daemon_once(
    docker_pipeline: None, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = Listener()  # accepts and hangs up: every daemon request is counted
    try:
        monkeypatch.setenv("DOCKER_HOST", f"tcp://{LOCALHOST}:{listener.port}")
        answers = [client.get("/api/health").json()["docker"] for _ in range(30)]
        assert all(a == answers[0] for a in answers)
        assert answers[0]["status"] == "error"
        # 30 polls well within the 5 s TTL: one request (plus at most one retry of it)
        assert 1 <= listener.count <= 2
    finally:
        listener.close()


def test_reachable_daemon_is_ok(
    docker_pipeline: None,
    client: TestClient,
    docker_daemon: Daemon,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_daemon.host)
    body = client.get("/api/health").json()
    assert body == {
        "status": "ok",
        "version": __version__,
        "docker": {"status": "ok", "detail": "daemon at the local socket reachable"},
    }
