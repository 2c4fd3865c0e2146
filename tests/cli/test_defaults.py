"""Defaults a new user relies on: the SQLite database lives in DATA_DIR, and a server
started on another port links to itself in notifications."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_cli
from tests.harness.serve import fastflow_serve


def test_the_default_database_lives_in_data_dir(
    ff_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL")
    data = tmp_path / "elsewhere" / "state"
    res = run_cli("user", "list", env={"DATA_DIR": str(data)})
    assert res.returncode == 0, res.stderr
    assert (data / "fastflow.db").is_file()
    assert not (tmp_path / "data" / "fastflow.db").exists()


def test_serve_links_to_its_own_port_unless_configured(ff_env: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FASTFLOW_BASE_URL"}
    token = run_cli("token", "create", "--name", "t", "--role", "viewer", env=env)
    assert token.returncode == 0, token.stderr
    headers = {"Authorization": "Bearer " + token.stdout.strip()}
    with fastflow_serve(env) as url:
        settings = httpx.get(url + "/api/settings", headers=headers).json()
        assert settings["fastflow_base_url"] == url
    with fastflow_serve({**env, "FASTFLOW_BASE_URL": "https://flow.example.com"}) as url:
        settings = httpx.get(url + "/api/settings", headers=headers).json()
        assert settings["fastflow_base_url"] == "https://flow.example.com"
