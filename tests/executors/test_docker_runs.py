"""Issue 15 acceptance, with the real test daemon: the example pipelines run in
containers with the log format, statuses and metrics of local runs; ``runs --json``
shows the executor and the image; limits are the container's; timeout and cancel leave
no container and no volume behind; an unreachable daemon or a missing image end the run
FAILED with a clear reason."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fastflow.config import Settings
from fastflow.context import Context
from fastflow.db.models import RunStatus
from fastflow.executors import container
from fastflow.executors.base import Executor
from fastflow.executors.docker import DockerExecutor, instance_label
from fastflow.runs import pipelines, runner
from fastflow.runs import store as runs
from tests.conftest import MakePipeline, run_cli, wait_until
from tests.dockerd import Daemon
from tests.executors.conftest import leftovers

if TYPE_CHECKING:
    import docker

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pipelines"
LINE_RE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] ")


def body(path: Path, run_id: object) -> list[str]:
    """The log's lines without their stamps, [env] lines and the run's own id."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(LINE_RE.match(line) for line in lines), lines[:5]
    return [
        line[26:].replace(str(run_id), "<run>")
        for line in lines
        if not line[26:].startswith("[env] ")
    ]


def test_the_examples_run_in_containers_as_they_run_locally(
    docker_ctx: Context, client: docker.DockerClient
) -> None:
    settings = docker_ctx.settings
    local = settings.model_copy(update={"executor": "local"})
    for name in ("hello", "failing", "noisy"):
        shutil.copytree(EXAMPLES / name, settings.pipelines_dir / name)
    docker_ids = []
    for name in ("hello", "failing", "noisy"):
        in_docker = runner.run_pipeline(docker_ctx.db, settings, name, "cli")
        at_home = runner.run_pipeline(docker_ctx.db, local, name, "cli")
        docker_ids.append(str(in_docker.run_id))
        assert (in_docker.status, in_docker.exit_code, in_docker.failure_reason) == (
            at_home.status,
            at_home.exit_code,
            at_home.failure_reason,
        ), name
        assert body(in_docker.log_path, in_docker.run_id) == body(
            at_home.log_path, at_home.run_id
        ), name
        samples = [json.loads(x) for x in in_docker.metrics_path.read_text().splitlines()]
        assert samples and samples[-1]["exit"] is True
        assert all({"timestamp", "cpu_percent", "ram_mb"} <= set(s) for s in samples)
        assert leftovers(client, in_docker.run_id) == []
    listed = run_cli("runs", "--json")
    assert listed.returncode == 0, listed.stderr
    by_id = {r["id"]: r for r in json.loads(listed.stdout)}
    for rid in docker_ids:
        assert by_id[rid]["executor"] == "docker"
        assert by_id[rid]["image"] == settings.docker_default_image
    assert {r["executor"] for r in by_id.values()} == {"docker", "local"}
    statuses = {by_id[rid]["pipeline_name"]: by_id[rid]["status"] for rid in docker_ids}
    assert statuses == {"hello": "SUCCESS", "failing": "FAILED", "noisy": "SUCCESS"}


def test_memory_limit_ends_the_run_failed_with_the_memory_reason(
    docker_ctx: Context, make_pipeline: MakePipeline, client: docker.DockerClient
) -> None:
    make_pipeline(
        "hungry",
        """
        blocks = []
        for i in range(200):
            blocks.append(bytearray(8 * 1024 * 1024))
            print(f"{(i + 1) * 8} MiB", flush=True)
        print("survived")
        """,
        config='{"limits": {"memory_mb": 64}}',
    )
    result = runner.run_pipeline(docker_ctx.db, docker_ctx.settings, "hungry", "cli")
    assert result.status is RunStatus.FAILED
    assert result.failure_reason == "memory limit exceeded (64 MiB)"
    text = result.log_path.read_text()
    assert "survived" not in text and "8 MiB" in text
    assert "[fastflow] memory limit exceeded (64 MiB)" in text
    assert leftovers(client, result.run_id) == []


CGROUP_PROBE = """
import os
def read(*paths):
    for p in paths:
        if os.path.exists(p):
            return open(p).read().strip()
    return "?"
v2 = read("/sys/fs/cgroup/cpu.max")
if v2 != "?":
    quota, period = v2.split()
else:
    v1 = "/sys/fs/cgroup/cpu/cpu.cfs_"
    quota, period = read(v1 + "quota_us"), read(v1 + "period_us")
memory = read("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
print(f"cpus {int(quota) / int(period):g}")
print(f"memory {int(memory) // 1048576} MiB")
"""


def test_cpu_and_memory_limits_are_the_containers_quota_and_limit(
    docker_ctx: Context, make_pipeline: MakePipeline
) -> None:
    """The local executor refuses ``limits.cpu``; a container enforces it."""
    make_pipeline("limited", CGROUP_PROBE, config='{"limits": {"memory_mb": 96, "cpu": 0.5}}')
    result = runner.run_pipeline(docker_ctx.db, docker_ctx.settings, "limited", "cli")
    assert result.status is RunStatus.SUCCESS, result.log_path.read_text()
    text = result.log_path.read_text()
    assert "cpus 0.5" in text
    assert "memory 96 MiB" in text


def test_timeout_kills_the_container_and_leaves_nothing_behind(
    docker_ctx: Context, make_pipeline: MakePipeline, client: docker.DockerClient
) -> None:
    make_pipeline(
        "sleepy",
        "import time\nprint('started', flush=True)\ntime.sleep(60)\n",
        config='{"timeout": 2}',
    )
    result = runner.run_pipeline(docker_ctx.db, docker_ctx.settings, "sleepy", "cli")
    assert result.status is RunStatus.TIMEOUT
    assert result.failure_reason == "timeout after 2 s"
    assert "[fastflow] timeout after 2 s: container killed" in result.log_path.read_text()
    assert leftovers(client, result.run_id) == []


def test_cancel_stops_the_container_and_leaves_nothing_behind(
    docker_ctx: Context, make_pipeline: MakePipeline, client: docker.DockerClient
) -> None:
    make_pipeline(
        "endless",
        """
        import signal, sys, time
        def bye(*_):
            print("got SIGTERM, cleaning up", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, bye)
        print("started", flush=True)
        time.sleep(120)
        """,
    )
    pipeline = pipelines.load(docker_ctx.settings.pipelines_dir, "endless")
    run = runs.create(docker_ctx.db, "endless", "api", pid=0)
    cancel = threading.Event()
    results: list[runner.RunResult] = []
    thread = threading.Thread(
        target=lambda: results.append(
            runner.execute(docker_ctx.db, docker_ctx.settings, pipeline, run.id, cancel=cancel)
        )
    )
    thread.start()
    log = docker_ctx.settings.logs_root / "endless" / str(run.id) / "run.log"
    wait_until(lambda: log.exists() and "started" in log.read_text(), 30, "the run to start")
    cancel.set()
    thread.join(timeout=60)
    assert results and results[0].status is RunStatus.CANCELLED
    assert results[0].failure_reason == "cancelled"
    text = log.read_text()
    assert "got SIGTERM, cleaning up" in text  # stop: SIGTERM first, the pipeline's handler ran
    assert "[fastflow] run cancelled: container stopped" in text
    assert leftovers(client, run.id) == []


def test_a_failed_container_is_kept_with_docker_keep_containers(
    docker_ctx: Context,
    make_pipeline: MakePipeline,
    client: docker.DockerClient,
) -> None:
    """Kept for debugging, also by the start-up clean-up; removed by it once the
    setting is off."""
    make_pipeline("broken", "raise SystemExit(4)\n")
    keep = docker_ctx.settings.model_copy(update={"docker_keep_containers": True})
    result = runner.run_pipeline(docker_ctx.db, keep, "broken", "cli")
    assert result.status is RunStatus.FAILED and result.exit_code == 4
    assert len(leftovers(client, result.run_id)) == 2  # the container and its volume
    assert "kept for debugging (DOCKER_KEEP_CONTAINERS=true)" in result.log_path.read_text()
    assert container.remove_stale(docker_ctx.db, keep) == 0
    assert len(leftovers(client, result.run_id)) == 2
    assert container.remove_stale(docker_ctx.db, docker_ctx.settings) == 2
    assert leftovers(client, result.run_id) == []


def test_stale_containers_of_this_installation_are_removed_others_stay(
    docker_ctx: Context, client: docker.DockerClient, docker_daemon: Daemon
) -> None:
    """What ``fastflow serve`` does at start-up: containers and volumes labelled with a
    run that is not RUNNING (or unknown) go; a RUNNING run's and another
    installation's stay."""
    db, settings = docker_ctx.db, docker_ctx.settings
    finished = runs.create(db, "p", "cli", pid=0)
    runs.finish(db, finished.id, RunStatus.SUCCESS, 0, 0)
    running = runs.create(db, "p", "cli", pid=0)
    runs.mark_running(db, running.id, pid=0, executor="docker")
    unknown = uuid.uuid4()
    ours = instance_label(settings)
    made = []
    for rid, instance in (
        (finished.id, ours),
        (running.id, ours),
        (unknown, None),
        (uuid.uuid4(), "another-installation"),
    ):
        labels = {"fastflow.run_id": str(rid)}
        if instance is not None:
            labels["fastflow.instance"] = instance
        cid = client.api.create_container(docker_daemon.image, ["true"], labels=labels)["Id"]
        client.api.create_volume(name=f"fastflow-run-{rid}", labels=labels)
        made.append((rid, cid))
    try:
        assert container.remove_stale(db, settings) == 4
        assert leftovers(client, finished.id) == [] and leftovers(client, unknown) == []
        assert len(leftovers(client, running.id)) == 2
        assert len(leftovers(client, made[3][0])) == 2
    finally:
        for rid, cid in made:
            with contextlib.suppress(Exception):
                client.api.remove_container(cid, force=True)
            with contextlib.suppress(Exception):
                client.api.remove_volume(f"fastflow-run-{rid}")


def test_an_unreachable_daemon_fails_the_run_with_a_clear_reason(
    docker_env: dict[str, str],
    docker_ctx: Context,
    make_pipeline: MakePipeline,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_pipeline("hello")
    for host, why in (
        ("unix:///nonexistent/docker.sock", "No such file or directory"),
        ("tcp://127.0.0.1:9", "Connection refused"),
    ):
        monkeypatch.setenv("DOCKER_HOST", host)
        result = runner.run_pipeline(docker_ctx.db, docker_ctx.settings, "hello", "cli")
        assert result.status is RunStatus.FAILED
        assert result.failure_reason is not None
        assert result.failure_reason.startswith(f"cannot reach the Docker daemon at {host}: {why}")
        text = result.log_path.read_text()
        assert "[fastflow] not started: cannot reach the Docker daemon" in text
        assert "Traceback" not in text


def test_a_missing_image_fails_the_run_with_a_clear_reason(
    docker_ctx: Context, make_pipeline: MakePipeline, client: docker.DockerClient
) -> None:
    make_pipeline("hello", config='{"image": "127.0.0.1:9/fastflow-missing:1"}')
    result = runner.run_pipeline(docker_ctx.db, docker_ctx.settings, "hello", "cli")
    assert result.status is RunStatus.FAILED
    assert result.failure_reason is not None
    assert result.failure_reason.startswith(
        "image '127.0.0.1:9/fastflow-missing:1' is not on the Docker daemon and could not be pulled"
    )
    assert "Traceback" not in result.log_path.read_text()
    assert leftovers(client, result.run_id) == []


def test_the_docker_executor_implements_the_executor_interface(docker_settings: Settings) -> None:
    """mypy checks the structure; a Kubernetes executor is checked the same way."""
    docker_executor = DockerExecutor(docker_settings)
    executor: Executor = docker_executor
    try:
        assert executor.name == "docker"
        assert executor.find(uuid.uuid4(), None) is None
    finally:
        docker_executor.close()
