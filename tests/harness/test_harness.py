"""Self-tests of the harness, each against real servers with real clients."""

from __future__ import annotations

import http.client
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import botocore.exceptions
import httpx
import psycopg
import pytest
from botocore.config import Config

from tests.harness.faultproxy import FaultProxy, method_is
from tests.harness.fixtures import S3Env
from tests.harness.ports import free_port, port_open, wait_for_port
from tests.harness.smtp import SmtpCapture
from tests.harness.teams import TeamsEndpoint

ROOT = Path(__file__).resolve().parents[2]
NO_RETRY = Config(retries={"total_max_attempts": 1})


def _keys(env: S3Env) -> list[str]:
    listing = env.client().list_objects_v2(Bucket=env.bucket)
    return [obj["Key"] for obj in listing.get("Contents", [])]


# ----------------------------------------------------------------------------- ports


def test_free_port_and_wait_for_port() -> None:
    port = free_port()
    assert not port_open("127.0.0.1", port)
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", port, timeout=0.1)
    with TeamsEndpoint() as endpoint:
        wait_for_port("127.0.0.1", endpoint.port, timeout=2)


# ----------------------------------------------------------------------------- S3


def test_put_get_through_proxy(s3: S3Env) -> None:
    client = s3.client(proxied=True)
    client.put_object(Bucket=s3.bucket, Key="logs/run-1.log", Body=b"hello\n" * 1000)
    assert client.get_object(Bucket=s3.bucket, Key="logs/run-1.log")["Body"].read() == (
        b"hello\n" * 1000
    )
    head = client.head_object(Bucket=s3.bucket, Key="logs/run-1.log")
    assert head["ContentLength"] == 6000
    assert _keys(s3) == ["logs/run-1.log"]
    assert [(r.method, r.path, r.status) for r in s3.proxy.requests] == [
        ("PUT", "/fastflow-test/logs/run-1.log", 200),
        ("GET", "/fastflow-test/logs/run-1.log", 200),
        ("HEAD", "/fastflow-test/logs/run-1.log", 200),
    ]
    assert s3.env()["S3_ENDPOINT_URL"] == s3.proxy.url


def test_fail_500_raises_without_forwarding(s3: S3Env) -> None:
    s3.proxy.fail(500, match=method_is("PUT"))
    client = s3.client(proxied=True, config=NO_RETRY)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.put_object(Bucket=s3.bucket, Key="k", Body=b"data")
    assert info.value.response["Error"]["Code"] == "InternalError"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert _keys(s3) == []
    client.list_objects_v2(Bucket=s3.bucket)  # GETs are not matched


def test_fail_503_once_then_retry_succeeds(s3: S3Env) -> None:
    s3.proxy.fail(503, times=1)
    client = s3.client(proxied=True, config=Config(retries={"total_max_attempts": 3}))
    client.put_object(Bucket=s3.bucket, Key="k", Body=b"data")
    assert [r.status for r in s3.proxy.requests] == [503, 200]
    assert _keys(s3) == ["k"]


def test_delay_beyond_read_timeout_times_out(s3: S3Env) -> None:
    s3.proxy.delay(10, times=1)
    client = s3.client(proxied=True, config=NO_RETRY.merge(Config(read_timeout=0.3)))
    started = time.monotonic()
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        client.list_objects_v2(Bucket=s3.bucket)
    assert time.monotonic() - started < 5
    s3.proxy.clear()  # wakes the held request
    client.list_objects_v2(Bucket=s3.bucket)


@pytest.mark.parametrize("after_bytes", [0, 1024])
def test_drop_breaks_upload(s3: S3Env, after_bytes: int) -> None:
    s3.proxy.drop(times=1, after_bytes=after_bytes)
    client = s3.client(proxied=True, config=NO_RETRY)
    with pytest.raises(
        (botocore.exceptions.ConnectionClosedError, botocore.exceptions.EndpointConnectionError)
    ):
        client.put_object(Bucket=s3.bucket, Key="big", Body=b"x" * 256 * 1024)
    assert s3.proxy.requests[-1].status == 0
    assert _keys(s3) == []
    client.put_object(Bucket=s3.bucket, Key="big", Body=b"x" * 256 * 1024)
    assert _keys(s3) == ["big"]


def test_corrupt_get_is_detected_by_botocore_checksum(s3: S3Env) -> None:
    client = s3.client(proxied=True, config=NO_RETRY)
    client.put_object(Bucket=s3.bucket, Key="k", Body=b"payload")
    s3.proxy.corrupt_get(times=1)
    body = client.get_object(Bucket=s3.bucket, Key="k")["Body"]
    with pytest.raises(botocore.exceptions.FlexibleChecksumError):
        body.read()
    assert client.get_object(Bucket=s3.bucket, Key="k")["Body"].read() == b"payload"


def test_proxy_and_server_stop_start(s3: S3Env) -> None:
    client = s3.client(proxied=True, config=NO_RETRY)
    client.put_object(Bucket=s3.bucket, Key="k", Body=b"1")
    s3.proxy.stop()
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        client.list_objects_v2(Bucket=s3.bucket)
    s3.proxy.start()
    assert client.list_objects_v2(Bucket=s3.bucket)["KeyCount"] == 1

    s3.server.stop()
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.list_objects_v2(Bucket=s3.bucket)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502
    s3.server.start()  # same port; moto state is gone after a restart
    assert client.list_buckets()["Buckets"] == []
    # Leave both down: the next test's ``s3`` fixture must bring them back.
    s3.proxy.stop()
    s3.server.stop()


def test_s3_fixture_recovers_and_reset_clears_state(s3: S3Env) -> None:
    client = s3.client()
    assert [b["Name"] for b in client.list_buckets()["Buckets"]] == [s3.bucket]
    client.create_bucket(Bucket="another-bucket")
    s3.server.reset()
    assert client.list_buckets()["Buckets"] == []


def test_proxy_preserves_host_and_dechunks_body() -> None:
    with TeamsEndpoint() as upstream, FaultProxy(f"http://127.0.0.1:{upstream.port}") as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        payload = json.dumps({"text": "x" * 5000}).encode()
        chunks = [payload[:1000], payload[1000:]]
        for _ in range(2):  # two requests on one keep-alive connection
            conn.request(
                "POST",
                "/hook?x=1",
                body=iter(chunks),
                headers={"Host": "bucket.example:9000", "X-Amz-Meta-A": "b"},
                encode_chunked=True,
            )
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"1")
        conn.close()
        posts = upstream.wait_for(2)
        assert posts[0].path == "/hook?x=1"
        assert posts[0].json == {"text": "x" * 5000}
        assert posts[0].headers["host"] == "bucket.example:9000"
        assert posts[0].headers["x-amz-meta-a"] == "b"
        assert posts[0].headers["content-length"] == str(len(payload))
        assert "transfer-encoding" not in posts[0].headers
        assert [(r.method, r.status) for r in proxy.requests] == [("POST", 200)] * 2


def test_moto_child_dies_with_killed_parent(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        "from tests.harness.s3server import MotoS3Server\n"
        "s = MotoS3Server()\n"
        "print(s.port, flush=True)\n"
        "input()\n"
    )
    with subprocess.Popen(
        [sys.executable, str(script)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        try:
            assert parent.stdout is not None
            port = int(parent.stdout.readline())
            assert port_open("127.0.0.1", port)
        finally:
            parent.send_signal(signal.SIGKILL)
            parent.wait()
    deadline = time.monotonic() + 10
    while port_open("127.0.0.1", port):
        assert time.monotonic() < deadline, "orphaned moto server still listening"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- SMTP


def _mail(subject: str = "Run failed") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "fastflow@example.org"
    msg["To"] = "ops@example.org"
    msg["Subject"] = subject
    msg.set_content("pipeline nightly failed: exit 1 \u2713")
    return msg


def test_smtp_plain(smtp_server: SmtpCapture) -> None:
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=5) as client:
        client.send_message(_mail())
    (mail,) = smtp_server.wait_for(1)
    assert mail.mail_from == "fastflow@example.org"
    assert mail.rcpt_tos == ["ops@example.org"]
    assert mail.message["Subject"] == "Run failed"
    assert "exit 1 \u2713" in mail.message.get_content()
    assert not mail.tls and mail.auth_login is None


def test_smtp_auth_required(smtp_factory: Callable[..., SmtpCapture]) -> None:
    server = smtp_factory(auth_required=True, username="bot", password="pw")
    with smtplib.SMTP(server.host, server.port, timeout=5) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.send_message(_mail())
        assert refused.value.smtp_code == 530
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("bot", "wrong")
        client.login("bot", "pw")
        client.send_message(_mail())
    assert server.wait_for(1)[0].auth_login == "bot"


def test_smtp_starttls_with_auth(smtp_factory: Callable[..., SmtpCapture]) -> None:
    server = smtp_factory(require_starttls=True, auth_required=True)
    with smtplib.SMTP("localhost", server.port, timeout=5) as client:
        client.starttls(context=server.client_context())
        client.login(server.username or "", server.password)
        client.send_message(_mail())
    mail = server.wait_for(1)[0]
    assert mail.tls and mail.auth_login == server.username


def test_smtp_implicit_tls_reject_and_restart(smtp_factory: Callable[..., SmtpCapture]) -> None:
    server = smtp_factory(implicit_tls=True)
    ctx = server.client_context()
    with smtplib.SMTP_SSL(server.host, server.port, context=ctx, timeout=5) as client:
        client.send_message(_mail("first"))
        server.reject(times=1)
        with pytest.raises(smtplib.SMTPDataError):
            client.send_message(_mail("rejected"))
    assert [m.message["Subject"] for m in server.wait_for(1)] == ["first"]
    assert server.messages[0].tls
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP_SSL(server.host, server.port, context=ctx, timeout=5)
    server.start()
    with smtplib.SMTP_SSL(server.host, server.port, context=ctx, timeout=5) as client:
        client.send_message(_mail("second"))
    assert len(server.wait_for(2)) == 2


# ----------------------------------------------------------------------------- Teams


def test_teams_records_json(teams_endpoint: TeamsEndpoint) -> None:
    assert teams_endpoint.url.endswith("/webhook/abc/SECRET-TOKEN")
    resp = httpx.post(teams_endpoint.url, json={"text": "run failed"}, timeout=5)
    assert (resp.status_code, resp.text) == (200, "1")
    (post,) = teams_endpoint.wait_for(1)
    assert post.path == "/webhook/abc/SECRET-TOKEN"
    assert post.json == {"text": "run failed"}
    assert post.headers["content-type"] == "application/json"


def test_teams_error_modes(teams_endpoint: TeamsEndpoint) -> None:
    teams_endpoint.respond(429, times=1, headers={"Retry-After": "1"})
    teams_endpoint.respond(500, times=1, body="boom")
    with httpx.Client(timeout=5) as client:
        first = client.post(teams_endpoint.url, json={"n": 1})
        second = client.post(teams_endpoint.url, json={"n": 2})
        third = client.post(teams_endpoint.url, json={"n": 3})
    assert first.status_code == 429 and first.headers["Retry-After"] == "1"
    assert (second.status_code, second.text) == (500, "boom")
    assert third.status_code == 200
    assert [p.json["n"] for p in teams_endpoint.posts] == [1, 2, 3]


def test_teams_hang_and_release(teams_endpoint: TeamsEndpoint) -> None:
    teams_endpoint.hang(times=2)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(teams_endpoint.url, json={"n": 1}, timeout=0.3)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(httpx.post, teams_endpoint.url, json={"n": 2}, timeout=10)
        teams_endpoint.wait_for(2)
        assert not future.done()
        teams_endpoint.release()
        assert future.result(timeout=5).status_code == 200


# ----------------------------------------------------------------------------- PostgreSQL


def test_pg_url_is_a_fresh_database(pg_url: str) -> None:
    assert pg_url.startswith("postgresql://") and "/fastflow_test_" in pg_url
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE runs (id serial PRIMARY KEY, name text)")
        conn.execute("INSERT INTO runs (name) VALUES ('nightly')")
        assert conn.execute("SELECT name FROM runs").fetchall() == [("nightly",)]
