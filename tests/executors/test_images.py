"""Derived images (issue 15): a pipeline with ``requirements.txt`` runs in an image built
once per content hash (``FROM <image>`` + pip with the index settings as build args),
tagged ``fastflow/<pipeline>:<hash>``, reused, and removed by ``fastflow env gc`` when
unused, never while a container uses it. Offline: the wheels are served on 127.0.0.1
and the build reaches them through ``DOCKER_NETWORK=host``."""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fastflow.context import Context
from fastflow.db.models import RunStatus
from fastflow.executors import images
from fastflow.runs import runner
from tests.conftest import MakePipeline, run_cli
from tests.environments.wheels import write_demo_wheels

if TYPE_CHECKING:
    import docker

READER = "import ffdemo\nprint('ffdemo', ffdemo.VERSION)\n"


@pytest.fixture
def wheel_index(tmp_path: Path) -> Iterator[str]:
    """A folder of wheels served over HTTP on 127.0.0.1 (pip ``--find-links``)."""
    folder = write_demo_wheels(tmp_path / "wheels")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def offline_index(wheel_index: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in ("PIP_INDEX_URL", "UV_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_FIND_LINKS", wheel_index)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    return wheel_index  # builds run on DOCKER_NETWORK=host to reach it; runs say "none"


def test_repository_names_are_valid_and_distinct() -> None:
    assert images.repository("etl") == "fastflow/etl"
    cafe = images.repository("Café Report")
    assert re.fullmatch(r"fastflow/cafe-report-[0-9a-f]{8}", cafe)
    assert images.repository("Cafe Report") != cafe
    assert re.fullmatch(r"fastflow/pipeline-[0-9a-f]{8}", images.repository("日本語"))
    for name in ("a.b", "A_B", "x" * 100, "--x--"):
        repo = images.repository(name).removeprefix("fastflow/")
        assert re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", repo), repo


def test_index_settings_become_build_args() -> None:
    args = images.build_args(
        {
            "UV_INDEX_URL": "https://mirror.example/simple",
            "UV_EXTRA_INDEX_URL": "https://extra.example/simple",
            "UV_FIND_LINKS": "/local/folder",
            "PIP_NO_INDEX": "no",
            "PATH": "/bin",
        }
    )
    assert args == {
        "PIP_INDEX_URL": "https://mirror.example/simple",
        "PIP_EXTRA_INDEX_URL": "https://extra.example/simple",
    }


def test_requirements_get_a_derived_image_built_once_reused_and_collected(
    docker_ctx: Context,
    make_pipeline: MakePipeline,
    offline_index: str,
    client: docker.DockerClient,
) -> None:
    name = "Café Report"
    folder = make_pipeline(name, READER, config='{"network": "none"}')
    (folder / "requirements.txt").write_text("ffdemo==2.0\n")
    settings = docker_ctx.settings.model_copy(update={"docker_network": "host"})
    first = runner.run_pipeline(docker_ctx.db, settings, name, "cli")
    text = first.log_path.read_text()
    assert first.status is RunStatus.SUCCESS, text
    assert "ffdemo 2.0" in text
    m = re.search(r"\[env\] building image (fastflow/cafe-report-[0-9a-f]{8}:[0-9a-f]{16})", text)
    assert m, text
    tag = m.group(1)
    assert re.search(r"\[env\] .*Successfully installed ffdemo-2.0", text), text
    second = runner.run_pipeline(docker_ctx.db, settings, name, "cli")
    assert second.status is RunStatus.SUCCESS
    assert f"[env] reusing image {tag}" in second.log_path.read_text()
    listed = {r["id"]: r for r in json.loads(run_cli("runs", "--json").stdout)}
    assert listed[str(second.run_id)]["image"] == tag
    assert listed[str(second.run_id)]["executor"] == "docker"

    # a container made from the image blocks its removal; then gc removes it
    holder = client.api.create_container(tag, ["true"])["Id"]
    try:
        busy = run_cli("env", "gc", "--older-than", "0d", "--json")
        assert busy.returncode == 0, busy.stderr
        report = json.loads(busy.stdout)["images"]
        assert report["removed"] == []
        assert report["skipped"] == [{"tag": tag, "reason": "in use by a container"}]
    finally:
        client.api.remove_container(holder, force=True)
    done = run_cli("env", "gc", "--older-than", "0d", "--json")
    assert done.returncode == 0, done.stderr
    removed = json.loads(done.stdout)["images"]["removed"]
    assert [r["tag"] for r in removed] == [tag] and removed[0]["pipelines"] == [name]
    assert client.api.images(name=tag.split(":")[0]) == []


def test_a_build_that_fails_fails_the_run_with_pips_reason(
    docker_ctx: Context, make_pipeline: MakePipeline, offline_index: str
) -> None:
    folder = make_pipeline("needs-more", READER, config='{"network": "none"}')
    (folder / "requirements.txt").write_text("ffdemo==9.9\n")
    settings = docker_ctx.settings.model_copy(update={"docker_network": "host"})
    result = runner.run_pipeline(docker_ctx.db, settings, "needs-more", "cli")
    assert result.status is RunStatus.FAILED
    reason = result.failure_reason or ""
    assert reason.startswith("environment build failed: cannot build image fastflow/needs-more:")
    assert "ffdemo==9.9" in reason
    assert "Traceback" not in result.log_path.read_text()


def test_a_run_cancelled_while_its_image_is_built_ends_at_once(
    docker_ctx: Context, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel during a long image build (pip waiting on a slow index) ended the run
    only after the build. It now ends CANCELLED at once, main.py never starts, and the
    build is left to finish in the background."""
    import socket

    from tests.conftest import wait_until

    release = threading.Event()
    asked = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def hold_every_request() -> None:  # an index that never answers while the test runs
        listener.settimeout(0.2)
        while not release.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)
            asked.set()

    server = threading.Thread(target=hold_every_request, daemon=True)
    server.start()
    for name in ("PIP_INDEX_URL", "UV_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_FIND_LINKS", f"http://127.0.0.1:{listener.getsockname()[1]}/")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    marker = docker_ctx.settings.logs_root.parent / "main-ran"
    folder = make_pipeline("slow-image", f"open({str(marker)!r}, 'w')\n", '{"network": "none"}')
    (folder / "requirements.txt").write_text("ffdemo==2.0\n")
    settings = docker_ctx.settings.model_copy(update={"docker_network": "host"})
    cancel = threading.Event()
    results: list[runner.RunResult] = []
    worker = threading.Thread(
        target=lambda: results.append(
            runner.run_pipeline(docker_ctx.db, settings, "slow-image", "cli", cancel=cancel)
        )
    )
    worker.start()
    try:
        wait_until(asked.is_set, 300, "pip asking the index during the image build")
        cancel.set()
        worker.join(10)  # a cancel ends the run within its poll, not with the build
        assert not worker.is_alive(), "the run waited for the image build"
    finally:
        release.set()
        for conn in held:
            conn.close()
        server.join(10)
        listener.close()
        worker.join(120)
    (result,) = results
    assert result.status is RunStatus.CANCELLED, result
    text = result.log_path.read_text()
    assert "[env] building image fastflow/slow-image:" in text
    assert "not started: the run was cancelled while its image was prepared" in text
    assert not marker.exists()
