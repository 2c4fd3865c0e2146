"""Fixtures shared by the system tests: a fastflow environment with S3 backup on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from tests.harness.fixtures import S3Env


@pytest.fixture
def env(ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``ff_env`` with S3 backup on against the test server, one run kept per pipeline."""
    full = {**ff_env, **s3.env(), "LOG_RETENTION_RUNS": "1", "S3_READ_TIMEOUT": "20"}
    for key, value in full.items():
        monkeypatch.setenv(key, value)
    return full


@pytest.fixture
def ctx(env: dict[str, str]) -> Iterator[Context]:
    """A bootstrapped context on ``env``."""
    context = bootstrap(load_settings())
    yield context
    context.db.dispose()
