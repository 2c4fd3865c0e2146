"""Webhooks that queue pipeline runs, end to end: keys made with the real ``fastflow
webhook`` command, calls to the real app (its dispatcher runs the pipelines), payloads
that reach the pipeline, the same 401 for every refusal, body limits, the rate limit,
revocation, and Fast-Flow's key-in-the-path form with keys from ``pipeline.json``."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select

from fastflow import accounts, security
from fastflow.api.deps import optional_principal, require_principal
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import PipelineRun, Webhook
from fastflow.orchestration import webhooks
from fastflow.orchestration.webhooks import RateLimiter
from fastflow.server import create_app
from tests.conftest import MakePipeline, wait_until

Cli = Callable[..., subprocess.CompletedProcess[str]]

# the /api routes that take no Bearer token or session: the key is their credential
KEY_AUTH_ROUTES = {("POST", "/api/hooks/{pipeline}"), ("POST", "/api/webhooks/{pipeline}/{key}")}
NO_LOGIN_ROUTES = {("GET", "/api/health"), ("HEAD", "/api/health"), ("POST", "/api/auth/login")}
FINAL = ("SUCCESS", "FAILED", "TIMEOUT", "CANCELLED")
KEY_RE = re.compile(r"^ffwh_[A-Za-z0-9_-]{43}$")
MIB = 1024 * 1024

SHOW_PAYLOAD = """
import os, pathlib
path = os.environ.get("FASTFLOW_PAYLOAD")
print("path:", path)
print("payload:", pathlib.Path(path).read_text() if path else None)
"""


class Hooks:
    def __init__(self, client: TestClient, ctx: Context) -> None:
        self.client = client
        self.ctx = ctx

    def post(
        self,
        pipeline: str,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> Any:
        sent = {**(headers or {}), **({"X-Fastflow-Key": key} if key is not None else {})}
        return self.client.post(f"/api/hooks/{pipeline}", headers=sent, **kw)

    def post_path(self, pipeline: str, key: str, **kwargs: Any) -> Any:
        return self.client.post(f"/api/webhooks/{pipeline}/{key}", **kwargs)

    def run(self, run_id: str) -> PipelineRun:
        with self.ctx.db.session() as s:
            row = s.get(PipelineRun, uuid.UUID(run_id))
            assert row is not None
            s.expunge(row)
            return row

    def finished(self, run_id: str) -> PipelineRun:
        wait_until(lambda: self.run(run_id).status in FINAL, 60, f"run {run_id} to finish")
        return self.run(run_id)

    def log(self, run: PipelineRun) -> str:
        assert run.log_file is not None
        return (self.ctx.settings.logs_root / run.log_file).read_text(encoding="utf-8")

    def runs(self) -> list[PipelineRun]:
        with self.ctx.db.session() as s:
            rows = list(s.scalars(select(PipelineRun)))
            s.expunge_all()
            return rows


@pytest.fixture
def hooks(ff_env: dict[str, str]) -> Iterator[Hooks]:
    ctx = bootstrap(load_settings())
    app = create_app(ctx, schedule=False)
    # no lifespan (see tests/api/test_api.py): a webhook call starts the dispatcher itself
    h = Hooks(TestClient(app), ctx)
    yield h
    wait_until(lambda: all(r.status in FINAL for r in h.runs()), 60, "every queued run to finish")
    app.state.launcher.stop()
    ctx.db.dispose()


def _create(cli: Cli, pipeline: str) -> str:
    res = cli("webhook", "create", pipeline)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and KEY_RE.match(lines[0]), res.stdout
    return lines[0]


def _listed(cli: Cli, *extra: str) -> list[dict[str, Any]]:
    res = cli("webhook", "list", "--json", *extra)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert isinstance(data, list)
    return data


# --- the whole path ---------------------------------------------------------------------


def test_created_key_queues_a_run_whose_pipeline_reads_the_payload(
    hooks: Hooks, make_pipeline: MakePipeline, cli: Cli
) -> None:
    make_pipeline("etl", SHOW_PAYLOAD)
    key = _create(cli, "etl")

    # stored hashed only, and never shown again
    with hooks.ctx.db.session() as s:
        (row,) = s.scalars(select(Webhook)).all()
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert row.source == "cli" and row.pipeline_name == "etl"
        assert key not in repr([getattr(row, c.key) for c in Webhook.__table__.columns])
    listed = _listed(cli)
    assert [(k["pipeline"], k["prefix"], k["source"]) for k in listed] == [("etl", key[:12], "cli")]
    assert listed[0]["created"] and key not in json.dumps(listed)
    text = cli("webhook", "list")
    assert text.returncode == 0 and "etl" in text.stdout and key not in text.stdout

    sent = {"event": "push", "ref": "refs/heads/main", "n": [1, 2, 3]}
    raw = json.dumps(sent, indent=1).encode()  # kept as sent, byte for byte
    res = hooks.post("etl", key, content=raw, headers={"Content-Type": "application/json"})
    assert res.status_code == 202, res.text
    body = res.json()
    assert set(body) == {"run_id", "status"} and body["status"] == "QUEUED"

    run = hooks.finished(body["run_id"])
    assert run.status == "SUCCESS" and run.triggered_by == "webhook"
    payload = hooks.ctx.settings.logs_root / "etl" / body["run_id"] / "payload.json"
    assert payload.read_bytes() == raw and json.loads(raw) == sent
    env = json.loads(run.env_overrides or "{}")
    assert env == {"FASTFLOW_PAYLOAD": str(payload)} and Path(env["FASTFLOW_PAYLOAD"]).is_absolute()
    log = hooks.log(run)
    assert f"path: {payload}" in log
    assert log.count('"ref": "refs/heads/main"') == 1 and "payload: {" in log

    # no body: no file and no variable
    res = hooks.post("etl", key)
    assert res.status_code == 202, res.text
    run = hooks.finished(res.json()["run_id"])
    assert run.status == "SUCCESS" and "payload: None" in hooks.log(run)
    assert not (payload.parent.parent / res.json()["run_id"] / "payload.json").exists()


# --- refusals ---------------------------------------------------------------------------


def test_wrong_key_missing_key_and_unknown_pipeline_get_the_same_401(
    hooks: Hooks, make_pipeline: MakePipeline
) -> None:
    make_pipeline("etl", SHOW_PAYLOAD)
    make_pipeline("other")
    make_pipeline("filed", config='{"webhook_key": "file-key-0123456789"}')
    db, pdir = hooks.ctx.db, hooks.ctx.settings.pipelines_dir
    key = webhooks.create_key(db, pdir, "etl")
    other = webhooks.create_key(db, pdir, "other")
    admin = accounts.create_token(db, "admin", "admin")
    refused = [
        hooks.post("etl", "ffwh_" + "x" * 43),  # wrong key
        hooks.post("etl", key[:-1]),  # almost right
        hooks.post("etl"),  # no key
        hooks.post("etl", ""),  # empty key
        hooks.post("etl", other),  # another pipeline's key
        hooks.post("etl", "file-key-0123456789"),  # another pipeline's file key
        hooks.post("nope", key),  # unknown pipeline
        hooks.post(".hidden", key),  # not even a valid name
        hooks.post("etl", headers={"Authorization": f"Bearer {admin}"}),  # a token is no key
        hooks.post_path("etl", "wrong"),
        hooks.post_path("nope", key),
        hooks.post_path("filed", "file-key-012345678"),
    ]
    assert {r.status_code for r in refused} == {401}
    assert {r.text for r in refused} == {'{"detail":"missing or wrong webhook key"}'}
    assert {r.headers.get("www-authenticate") for r in refused} == {"Bearer"}
    assert hooks.runs() == []


def test_every_refusal_does_the_same_work(
    hooks: Hooks, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timing: the key is always hashed, looked up and compared in constant time, also
    for an unknown pipeline or a pipeline without keys."""
    make_pipeline("bare")
    make_pipeline("filed", config='{"webhook_key": "file-key-0123456789"}')
    db, pdir = hooks.ctx.db, hooks.ctx.settings.pipelines_dir
    webhooks.create_key(db, pdir, "bare")
    calls: list[str] = []
    real_same, real_hash = security.same, security.token_hash

    def same(a: str, b: str) -> bool:
        calls.append("same")
        return real_same(a, b)

    def token_hash(value: str) -> str:
        calls.append("hash")
        return real_hash(value)

    monkeypatch.setattr(security, "same", same)
    monkeypatch.setattr(security, "token_hash", token_hash)
    seen = []
    for pipeline, key in (("nope", "wrong"), ("bare", "wrong"), ("filed", "wrong"), ("x", None)):
        calls.clear()
        assert webhooks.verify(db, pdir, pipeline, key) is None
        seen.append((calls.count("same"), calls.count("hash")))
    assert seen == [(2, 2)] * 4


def test_body_over_1_mib_is_413_even_without_content_length_and_non_json_is_422(
    hooks: Hooks, make_pipeline: MakePipeline
) -> None:
    make_pipeline("quiet", "import os; assert os.path.getsize(os.environ['FASTFLOW_PAYLOAD'])\n")
    key = webhooks.create_key(hooks.ctx.db, hooks.ctx.settings.pipelines_dir, "quiet")
    too_big = b'"' + b"a" * (MIB - 1) + b'"'  # valid JSON, 1 MiB + 1 byte
    res = hooks.post("quiet", key, content=too_big)
    assert res.status_code == 413 and "detail" in res.json()

    def chunks() -> Iterator[bytes]:  # sent chunked: no Content-Length to trust
        yield b'"'
        for _ in range(4):
            yield b"a" * (MIB // 2)
        yield b'"'

    res = hooks.post("quiet", key, content=chunks())
    assert res.status_code == 413, res.text
    bad_bodies = (
        b"not json",
        b'{"a": ',
        b"\xff\xfe\xfa",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"amount": NaN}',  # not JSON, though Python's parser takes it
        b"[Infinity]",
        # JSON, but not in UTF-8 as the pipeline reads it (an outside audit: accepted,
        # then the run failed on its payload)
        '{"ref": "main"}'.encode("utf-16"),
        '{"ref": "main"}'.encode("utf-32"),
        b'\xef\xbb\xbf{"ref": "main"}',
    )
    for bad in bad_bodies:
        res = hooks.post("quiet", key, content=bad)
        assert res.status_code == 422, (bad[:10], res.status_code)
        assert "JSON" in res.json()["detail"]
    assert hooks.runs() == []
    assert not (hooks.ctx.settings.logs_root / "quiet").exists()

    exactly = b'"' + b"a" * (MIB - 2) + b'"'
    res = hooks.post("quiet", key, content=exactly)
    assert res.status_code == 202, res.text
    run = hooks.finished(res.json()["run_id"])
    assert run.status == "SUCCESS", hooks.log(run)
    payload = hooks.ctx.settings.logs_root / "quiet" / str(run.id) / "payload.json"
    assert payload.read_bytes() == exactly


def test_disabled_pipeline_is_refused_to_a_caller_with_the_key(
    hooks: Hooks, make_pipeline: MakePipeline
) -> None:
    make_pipeline("off", config='{"enabled": false}')
    key = webhooks.create_key(hooks.ctx.db, hooks.ctx.settings.pipelines_dir, "off")
    assert hooks.post("off", key).status_code == 409
    assert hooks.post("off", "wrong").status_code == 401
    assert hooks.runs() == []


# --- the rate limit ---------------------------------------------------------------------


def test_more_calls_than_the_rate_get_429_with_retry_after(
    hooks: Hooks, make_pipeline: MakePipeline
) -> None:
    hooks.ctx.settings = hooks.ctx.settings.model_copy(update={"webhook_rate_per_minute": 3})
    make_pipeline("a")
    make_pipeline("b")
    db, pdir = hooks.ctx.db, hooks.ctx.settings.pipelines_dir
    key_a, key_b = webhooks.create_key(db, pdir, "a"), webhooks.create_key(db, pdir, "b")

    codes = [hooks.post("a", key_a, json={"i": i}).status_code for i in range(3)]
    assert codes == [202, 202, 202]
    limited = hooks.post("a", key_a)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert "detail" in limited.json()
    assert hooks.post("b", key_b).status_code == 202  # per pipeline

    # wrong keys are limited as much, but apart: they cannot lock the key holder out
    wrong = [hooks.post("b", "guess").status_code for _ in range(4)]
    assert wrong == [401, 401, 401, 429]
    assert hooks.post("b", key_b).status_code == 202
    # an unknown pipeline behaves exactly like a known one
    assert [hooks.post("nope", "guess").status_code for _ in range(4)] == wrong
    assert len(hooks.runs()) == 5


def test_sliding_window() -> None:
    limiter = RateLimiter(window=60.0, max_tracked=2)
    bucket = ("accepted", "p")
    assert [limiter.hit(bucket, 3, now=t) for t in (0.0, 10.0, 20.0)] == [None, None, None]
    assert limiter.hit(bucket, 3, now=30.0) == pytest.approx(30.0)  # until t=60
    assert limiter.hit(bucket, 3, now=60.0) is None  # t=0 left the window
    assert limiter.hit(bucket, 3, now=61.0) == pytest.approx(9.0)  # until t=70
    assert limiter.hit(bucket, 1, now=61.0) == pytest.approx(59.0)  # a lowered limit
    # only max_tracked names are remembered (the least recently seen is forgotten)
    limiter.hit(("accepted", "q"), 3, now=62.0)
    limiter.hit(("accepted", "r"), 3, now=62.0)
    assert limiter.hit(bucket, 3, now=62.0) is None


# --- revocation -------------------------------------------------------------------------


def test_revoke_ends_every_key_made_with_the_cli(
    hooks: Hooks, make_pipeline: MakePipeline, cli: Cli
) -> None:
    make_pipeline("etl")
    make_pipeline("keep")
    first, second = _create(cli, "etl"), _create(cli, "etl")
    kept = _create(cli, "keep")
    assert hooks.post("etl", first).status_code == 202
    assert hooks.post("etl", second).status_code == 202

    res = cli("webhook", "revoke", "etl")
    assert res.returncode == 0, res.stderr
    assert hooks.post("etl", first).status_code == 401
    assert hooks.post_path("etl", second).status_code == 401
    assert hooks.post("keep", kept).status_code == 202
    assert [k["pipeline"] for k in _listed(cli)] == ["keep"]
    revoked = [k for k in _listed(cli, "--all") if k["revoked"]]
    assert [k["prefix"] for k in revoked] == [first[:12], second[:12]]

    again = cli("webhook", "revoke", "etl")
    assert again.returncode == 1 and "no active key" in again.stderr
    for args in (("revoke", "nope"), ("create", "nope")):
        res = cli("webhook", *args)
        assert res.returncode == 1 and res.stdout == ""
        assert "pipeline 'nope' not found" in res.stderr


# --- Fast-Flow's form -------------------------------------------------------------------


def test_fast_flow_path_with_keys_from_pipeline_json(
    hooks: Hooks, make_pipeline: MakePipeline, cli: Cli
) -> None:
    top, nightly = "top-secret-0123456789", "nightly-secret-9876543210"
    config = {
        "webhook_key": top,
        "schedules": [
            {
                "id": "nightly",
                "cron": "0 3 * * *",
                "webhook_key": nightly,
                "default_env": {"MODE": "nightly"},
            }
        ],
    }
    show_mode = SHOW_PAYLOAD + "print('mode:', os.environ.get('MODE'))\n"
    make_pipeline("legacy", show_mode, config=json.dumps(config))

    res = hooks.post_path("legacy", top, json={"from": "fast-flow"})
    assert res.status_code == 202, res.text
    assert set(res.json()) == {"run_id", "status"}
    run = hooks.finished(res.json()["run_id"])
    assert run.status == "SUCCESS" and run.run_config_id is None
    assert 'payload: {"from":"fast-flow"}' in hooks.log(run)  # as httpx sent it

    assert "mode: None" in hooks.log(run)  # the pipeline's own key: no schedule's env
    res = hooks.post_path("legacy", nightly)
    assert res.status_code == 202
    run = hooks.finished(res.json()["run_id"])
    assert run.run_config_id == "nightly"
    # a named schedule's key runs that configuration: its default_env too (it was left out)
    assert "mode: nightly" in hooks.log(run)
    res = hooks.post_path("legacy", nightly, json={"with": "payload"})
    log = hooks.log(hooks.finished(res.json()["run_id"]))
    assert "mode: nightly" in log and 'payload: {"with":"payload"}' in log
    assert hooks.post("legacy", top).status_code == 202  # the header works for them too
    made = webhooks.create_key(hooks.ctx.db, hooks.ctx.settings.pipelines_dir, "legacy")
    assert hooks.post_path("legacy", made).status_code == 202  # and the path for made keys
    assert hooks.post_path("legacy", top[:-1]).status_code == 401

    # file keys are never copied: not in the database, not in the list
    with hooks.ctx.db.session() as s:
        assert [w.source for w in s.scalars(select(Webhook))] == ["cli"]
    listed = _listed(cli)
    assert [(k["source"], k["run_config_id"], k["prefix"]) for k in listed] == [
        ("cli", None, made[:12]),
        ("file", None, None),
        ("file", "nightly", None),
    ]
    assert top not in json.dumps(listed) and nightly not in json.dumps(listed)


def test_a_disabled_schedules_key_queues_nothing(hooks: Hooks, make_pipeline: MakePipeline) -> None:
    """An outside audit: the key of a schedule with ``"enabled": false`` still queued runs
    of that schedule's configuration. It is refused like a disabled pipeline's (409); the
    pipeline's own key still works."""
    top, nightly = "top-secret-0123456789", "nightly-secret-9876543210"
    unnamed = "unnamed-secret-5555555555"
    config = {
        "webhook_key": top,
        "schedules": [
            {"id": "nightly", "cron": "0 3 * * *", "webhook_key": nightly, "enabled": False},
            # no id: the schedule is known by its index (a review found it slipped through)
            {"cron": "0 4 * * *", "webhook_key": unnamed, "enabled": False},
        ],
    }
    make_pipeline("legacy", config=json.dumps(config))
    res = hooks.post_path("legacy", nightly)
    assert res.status_code == 409 and "schedule 'nightly'" in res.json()["detail"]
    res = hooks.post_path("legacy", unnamed)
    assert res.status_code == 409 and "schedule '1'" in res.json()["detail"]
    assert hooks.runs() == []
    assert hooks.post_path("legacy", top).status_code == 202


# --- the routes -------------------------------------------------------------------------


def _flatten(routes: list[Any]) -> Iterator[Any]:
    """Every route, also inside included routers (as tests/api/test_api.py walks them)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flatten(inner.routes)
        else:
            yield route


def _dependencies(dep: Any) -> Iterator[Any]:
    for sub in dep.dependencies:
        yield sub.call
        yield from _dependencies(sub)


def test_webhook_routes_are_the_only_key_authenticated_api_routes(hooks: Hooks) -> None:
    without_login = set()
    for route in _flatten(hooks.client.app.routes):  # type: ignore[attr-defined]
        if not isinstance(route, APIRoute) or not route.path.startswith("/api"):
            continue
        calls = set(_dependencies(route.dependant))
        if not calls & {require_principal, optional_principal}:
            without_login |= {(m, route.path) for m in route.methods or ()}
    assert without_login == NO_LOGIN_ROUTES | KEY_AUTH_ROUTES
    admin = accounts.create_token(hooks.ctx.db, "admin", "admin")
    for method, path in sorted(KEY_AUTH_ROUTES):
        url = path.replace("{pipeline}", "etl").replace("{key}", "nokey")
        for headers in ({}, {"Authorization": f"Bearer {admin}"}):
            res = hooks.client.request(method, url, headers=headers)
            assert res.status_code == 401, (path, res.status_code)
    spec = hooks.client.get("/openapi.json", headers={"Authorization": f"Bearer {admin}"}).json()
    for _, path in KEY_AUTH_ROUTES:
        ok = spec["paths"][path]["post"]["responses"]["202"]["content"]["application/json"]
        assert ok["schema"]["$ref"].endswith("/WebhookQueuedOut")


def test_a_link_put_where_the_payload_goes_gets_nothing_written_outside(
    hooks: Hooks,
    make_pipeline: MakePipeline,
    cli: Cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Someone who can write in LOGS_DIR puts a link to a folder outside where the
    pipeline's log folder is, just after the payload's path was checked: the caller's
    bytes were written through it, outside LOGS_DIR. The payload is now written through
    descriptors that follow no link: the call is refused, no run is queued, and nothing
    is written outside."""
    from fastflow.runs import files as logfiles

    make_pipeline("etl", SHOW_PAYLOAD)
    key = _create(cli, "etl")
    outside = tmp_path / "outside"
    outside.mkdir()
    link = hooks.ctx.settings.logs_root / "etl"
    real_resolve = logfiles.resolve

    def resolve_then_link(root: Path, rel: str) -> Path:
        found = real_resolve(root, rel)
        if rel.endswith("payload.json") and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(outside, target_is_directory=True)
        return found

    monkeypatch.setattr(logfiles, "resolve", resolve_then_link)
    res = hooks.post("etl", key, json={"caller": "bytes"})

    assert res.status_code == 400 and "symbolic link" in res.text
    assert list(outside.iterdir()) == [] and hooks.runs() == []


def test_a_key_in_the_path_never_reaches_the_servers_access_log(
    ff_env: dict[str, str], make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    """An outside audit: ``POST /api/webhooks/{pipeline}/{key}`` put the key in clear into
    ``fastflow serve``'s own access log line. Every log record now masks fastflow's API
    tokens and webhook keys by their form."""
    import os

    make_pipeline("hello")
    created = subprocess.run(
        [sys.executable, "-m", "fastflow", "webhook", "create", "hello"],
        env={**os.environ, **ff_env},
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith(webhooks.KEY_PREFIX)
    text = _server_log_of_calls(ff_env, tmp_path, [f"/api/webhooks/hello/{key}"])
    assert key not in text and key[len(webhooks.KEY_PREFIX) :] not in text
    assert "/api/webhooks/hello/ffwh_***" in text


def test_a_pipeline_json_key_in_the_path_never_reaches_the_servers_access_log(
    ff_env: dict[str, str], make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    """An outside audit: a Fast-Flow ``webhook_key`` from pipeline.json (any text, not
    fastflow's ``ffwh_`` form) was logged in clear by ``fastflow serve``."""
    key = "my-own-Fast-Flow-key-7731"
    make_pipeline("hello", config=f'{{"webhook_key": "{key}"}}')
    ctx = bootstrap(load_settings())
    try:
        made = webhooks.create_key(ctx.db, ctx.settings.pipelines_dir, "hello")
    finally:
        ctx.db.dispose()
    # a second outside audit: percent-encoded, the path is routed the same (202) but
    # was logged as sent, key and all
    text = _server_log_of_calls(
        ff_env,
        tmp_path,
        [
            f"/api/webhooks/hello/{key}",
            f"/api/%77ebhooks/hello/{key.replace('-', '%2D')}",
            f"/api/%77ebhooks/hello/{made.replace('_', '%5F')}",
        ],
    )
    assert key not in text and made not in text
    assert made.removeprefix("ffwh_")[:20] not in text
    assert "/api/webhooks/hello/***" in text and "/api/webhooks/hello/ffwh_***" in text


def test_a_caller_that_leaves_mid_body_queues_nothing_and_logs_no_traceback(
    ff_env: dict[str, str], make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    """An outside audit: a caller that closed its connection in the middle of the body
    gave an unhandled ``ClientDisconnect`` traceback in ``fastflow serve``'s log."""
    import os
    import socket

    from tests.harness.serve import fastflow_serve

    key = "k-mid-body-4411"
    make_pipeline("hello", config=f'{{"webhook_key": "{key}"}}')
    log = tmp_path / "serve.log"
    with (
        open(log, "wb") as err,
        fastflow_serve({**os.environ, **ff_env}, stderr=err, stdout=err) as url,
    ):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                f"POST /api/webhooks/hello/{key} HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
                + b'{"half": '
            )
        wait_until(lambda: b"before its body ended" in log.read_bytes(), 30, "the log line")
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text and "ClientDisconnect" not in text
    ctx = bootstrap(load_settings())
    try:
        with ctx.db.session() as s:
            assert s.scalars(select(PipelineRun)).all() == []
    finally:
        ctx.db.dispose()


def _server_log_of_calls(ff_env: dict[str, str], tmp_path: Path, paths: list[str]) -> str:
    """What a real ``fastflow serve`` logged (access lines included) while each of
    ``paths`` was POSTed and answered 202."""
    import os

    import httpx

    from tests.harness.serve import fastflow_serve

    log = tmp_path / "serve.log"
    with (
        open(log, "wb") as err,
        fastflow_serve({**os.environ, **ff_env}, stderr=err, stdout=err) as url,
    ):
        for path in paths:
            res = httpx.post(url + path, timeout=30)
            assert res.status_code == 202, (path, res.text)
        wait_until(
            lambda: log.read_bytes().count(b"/api/webhooks/hello/") >= len(paths),
            30,
            "the access lines",
        )
    return log.read_text(encoding="utf-8", errors="replace")
