"""Fixtures for executor tests: the real test Docker daemon (``tests.dockerd``), a
fastflow environment pointed at it, and helpers to look at what a run left behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from fastflow.config import Settings, load_settings
from fastflow.context import Context, bootstrap
from fastflow.executors.docker import instance_label
from tests.dockerd import Daemon, docker_daemon  # noqa: F401

if TYPE_CHECKING:
    import docker


@pytest.fixture
def docker_env(
    ff_env: dict[str, str],
    docker_daemon: Daemon,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """``ff_env`` plus ``EXECUTOR=docker`` on the test daemon, its offline image, and
    ``DOCKER_NETWORK=none`` (the test daemon has no bridge network)."""
    extra = {**docker_daemon.env(), "EXECUTOR": "docker", "DOCKER_NETWORK": "none"}
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    return {**ff_env, **extra}


@pytest.fixture
def docker_settings(docker_env: dict[str, str]) -> Settings:
    return load_settings()


@pytest.fixture
def docker_ctx(docker_env: dict[str, str], docker_daemon: Daemon) -> Iterator[Context]:  # noqa: F811
    """A bootstrapped context on the test daemon; whatever containers and volumes its
    runs left (a failed test) are removed afterwards."""
    ctx = bootstrap(load_settings())
    yield ctx
    ctx.db.dispose()
    c = docker_daemon.client()
    label = {"label": f"fastflow.instance={instance_label(ctx.settings)}"}
    for found in c.api.containers(all=True, filters=label):
        c.api.remove_container(found["Id"], force=True)
    for volume in c.api.volumes(filters=label).get("Volumes") or []:
        c.api.remove_volume(volume["Name"])
    c.close()


@pytest.fixture
def client(docker_daemon: Daemon) -> Iterator[docker.DockerClient]:  # noqa: F811
    c = docker_daemon.client()
    yield c
    c.close()


def leftovers(client: docker.DockerClient, run_id: uuid.UUID | str) -> list[dict[str, Any]]:
    """The containers and volumes labelled with ``run_id`` (none once a run is over)."""
    label = {"label": f"fastflow.run_id={run_id}"}
    found: list[dict[str, Any]] = list(client.api.containers(all=True, filters=label))
    found += client.api.volumes(filters=label).get("Volumes") or []
    return found
