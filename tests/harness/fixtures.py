"""pytest fixtures for fastflow tests: S3 (moto + fault proxy), SMTP, Teams, PostgreSQL.

Loaded through ``pytest_plugins = ["tests.harness.fixtures"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config

from tests.harness.faultproxy import FaultProxy
from tests.harness.postgres import create_database, drop_database, postgres_unavailable_reason
from tests.harness.s3server import MotoS3Server
from tests.harness.smtp import SmtpCapture
from tests.harness.teams import TeamsEndpoint

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "fastflow-test"


@dataclass
class S3Env:
    """Everything a test needs to talk to the per-test S3 bucket.

    ``endpoint_url`` is the fault proxy (give it to the code under test); ``direct_url`` is moto
    itself (for assertions that must not be affected by injected faults).
    """

    endpoint_url: str
    direct_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str
    proxy: FaultProxy
    server: MotoS3Server

    def client(self, *, proxied: bool = False, config: Config | None = None) -> S3Client:
        """A path-style boto3 S3 client on ``direct_url`` (or on the proxy if ``proxied``).

        Note: botocore's ``retries={"max_attempts": N}`` means N *retries*; use
        ``{"total_max_attempts": 1}`` for a client that never retries.
        """
        base = Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=30)
        client: S3Client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url if proxied else self.direct_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=base.merge(config) if config is not None else base,
        )
        return client

    def env(self) -> dict[str, str]:
        """Environment variables that point fastflow's S3 backup at the proxy."""
        return {
            "S3_BACKUP_ENABLED": "true",
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_BUCKET": self.bucket,
            "S3_ACCESS_KEY": self.access_key,
            "S3_SECRET_ACCESS_KEY": self.secret_key,
            "S3_REGION": self.region,
            "S3_USE_PATH_STYLE": "true",
        }


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3Server]:
    """One moto server subprocess for the whole session."""
    server = MotoS3Server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def fault_proxy(s3_server: MotoS3Server) -> Iterator[FaultProxy]:
    """One fault-injecting proxy in front of ``s3_server`` for the whole session."""
    proxy = FaultProxy(s3_server.url)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def s3(s3_server: MotoS3Server, fault_proxy: FaultProxy) -> Iterator[S3Env]:
    """Fresh moto state with bucket ``fastflow-test``, proxy running with no rules."""
    s3_server.start()
    fault_proxy.start()
    fault_proxy.clear()
    fault_proxy.clear_requests()
    s3_server.reset()
    env = S3Env(
        endpoint_url=fault_proxy.url,
        direct_url=s3_server.url,
        bucket=BUCKET,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        region=s3_server.region,
        proxy=fault_proxy,
        server=s3_server,
    )
    env.client().create_bucket(Bucket=BUCKET)
    try:
        yield env
    finally:
        fault_proxy.clear()


@pytest.fixture
def smtp_server() -> Iterator[SmtpCapture]:
    """Plain SMTP capture server (no TLS, no AUTH)."""
    server = SmtpCapture()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_factory() -> Iterator[Callable[..., SmtpCapture]]:
    """Factory taking ``SmtpCapture`` keyword arguments; every server is stopped at teardown."""
    servers: list[SmtpCapture] = []

    def make(**kwargs: Any) -> SmtpCapture:
        server = SmtpCapture(**kwargs)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


def notify_env(smtp: SmtpCapture, teams: TeamsEndpoint | None = None) -> dict[str, str]:
    """Settings that send e-mail to ``smtp`` (no login, no TLS) and, given ``teams``,
    Teams cards to it."""
    env = {
        "EMAIL_ENABLED": "true",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SMTP_SECURITY": "none",
        "SMTP_FROM": "fastflow@example.com",
        "EMAIL_RECIPIENTS": "ops@example.com",
    }
    if teams is not None:
        env.update(TEAMS_ENABLED="true", TEAMS_WEBHOOK_URL=teams.url)
    return env


@pytest.fixture
def teams_endpoint() -> Iterator[TeamsEndpoint]:
    """Teams webhook stand-in answering 200 ``"1"`` unless told otherwise."""
    endpoint = TeamsEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database, dropped at teardown.

    Skips when PostgreSQL is unreachable, but fails when ``CI=true``.
    """
    reason = postgres_unavailable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI but unavailable: {reason}")
        pytest.skip(reason)
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)
