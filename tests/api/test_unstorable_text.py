"""Text no query can carry — a lone surrogate (``"\\ud800"`` in JSON), a NUL on
PostgreSQL — is answered 422 in the validation errors' shape, never a 500 (an outside
audit found 500s, the login route's without any credentials), and the value is never
repeated (it may be a password)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from fastflow.config import load_settings
from fastflow.context import bootstrap
from fastflow.server import create_app
from tests.api.test_api import Api
from tests.seeding import NOW, seed_run

SURROGATE = "\\ud800"  # JSON's escape: the parsed string holds a lone surrogate


@pytest.fixture(params=["sqlite", "postgresql"])
def any_api(
    request: pytest.FixtureRequest, ff_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Api]:
    if request.param == "postgresql":
        monkeypatch.setenv("DATABASE_URL", request.getfixturevalue("pg_url"))
    ctx = bootstrap(load_settings())
    yield Api(TestClient(create_app(ctx, schedule=False)), ctx)
    ctx.db.dispose()


def _raw(api: Api, method: str, url: str, body: str, auth: bool = True) -> tuple[int, object]:
    headers = {"Content-Type": "application/json", **(api.admin if auth else {})}
    res = api.client.request(method, url, content=body.encode("ascii"), headers=headers)
    return res.status_code, res.json()


def _is_unstorable(status: int, body: object, kind: str) -> bool:
    assert isinstance(body, dict), body
    detail = body["detail"]
    return status == 422 and isinstance(detail, list) and detail[0]["type"] == kind


def test_a_lone_surrogate_is_a_422_on_every_route_that_stores_or_looks_up_text(
    any_api: Api,
) -> None:
    api = any_api
    run = seed_run(api.ctx, "etl", NOW - timedelta(days=1))
    login = f'{{"username": "a{SURROGATE}", "password": "x"}}'
    status, body = _raw(api, "POST", "/api/auth/login", login, auth=False)
    assert _is_unstorable(status, body, "string_unicode"), (status, body)
    password = f'{{"username": "alice", "password": "pw{SURROGATE}"}}'
    status, body = _raw(api, "POST", "/api/auth/login", password, auth=False)
    assert status in (401, 422) and "pw" not in str(body), (status, body)
    pin = f'{{"reason": "ab{SURROGATE}cd"}}'
    status, body = _raw(api, "POST", f"/api/runs/{run.id}/pin", pin)
    assert status == 422 and "printable" in str(body), (status, body)
    # a domain error quoting the value: its text still encodes
    status, body = _raw(api, "PUT", "/api/settings", f'{{"s3_prefix": "ab{SURROGATE}cd"}}')
    assert status == 422, (status, body)
    assert api.client.get(f"/api/runs/{run.id}", headers=api.viewer).json()["pinned_at"] is None


def test_a_nul_in_a_lookup_or_a_stored_text_is_never_a_500(any_api: Api) -> None:
    api = any_api
    run = seed_run(api.ctx, "etl", NOW - timedelta(days=1))
    on_pg = api.ctx.db.engine.dialect.name == "postgresql"
    login = '{"username": "al\\u0000ice", "password": "x"}'
    status, body = _raw(api, "POST", "/api/auth/login", login, auth=False)
    assert _is_unstorable(status, body, "string_nul") if on_pg else status == 401, (status, body)
    res = api.client.get("/api/runs?pipeline_name=a%00b", headers=api.viewer)
    assert res.status_code == 422 or (res.status_code == 200 and res.json() == []), res.text
    res = api.client.delete("/api/secrets/AB%00C", headers=api.admin)
    assert res.status_code in (404, 422), res.text
    for reason in ("a \\u0000 b", "a \\u202e b", "a \\u0007 b"):
        status, body = _raw(api, "POST", f"/api/runs/{run.id}/pin", f'{{"reason": "{reason}"}}')
        assert status == 422 and "printable" in str(body), (reason, status, body)
    page = api.client.get("/runs?pipeline=a%00b", headers={**api.viewer, "Accept": "text/html"})
    assert page.status_code != 500


UNPARSABLE = [
    b"[" * 50_000 + b"]" * 50_000,  # nested past the parser's recursion limit
    b'{"log_retention_runs": ' + b"7" * 5_000 + b"}",  # past Python's 4,300-digit limit
    b'{"s3_prefix": "caf\xe9"}',  # Latin-1, not UTF-8
]


@pytest.mark.parametrize("body", UNPARSABLE, ids=["deep", "long-int", "latin-1"])
def test_json_the_parser_refuses_is_a_422_like_any_bad_json(any_api: Api, body: bytes) -> None:
    """An outside audit: such bodies got FastAPI's bare 400 "There was an error parsing the
    body" instead of the 422 ``json_invalid`` every other malformed JSON body gets."""
    api = any_api
    for method, url, auth in (("POST", "/api/auth/login", False), ("PUT", "/api/settings", True)):
        headers = {"Content-Type": "application/json", **(api.admin if auth else {})}
        res = api.client.request(method, url, content=body, headers=headers)
        assert res.status_code == 422, (url, res.status_code, res.text[:200])
        detail = res.json()["detail"]
        assert detail[0]["type"] == "json_invalid" and detail[0]["loc"] == ["body"]
    # other HTTP errors keep their own answers
    assert api.client.get("/api/nothing-here", headers=api.admin).status_code == 404
    denied = api.client.get("/api/runs")
    assert denied.status_code == 401 and denied.headers.get("www-authenticate") == "Bearer"
    assert api.client.delete("/api/health").status_code == 405


@pytest.mark.parametrize("query", ["q=%FF", "q=%ED%A0%80", "grep=a%C3", "q=ok&x=%80"])
def test_a_query_string_that_is_not_utf8_is_a_422_on_every_route(any_api: Api, query: str) -> None:
    """An outside audit: ``%FF`` in a query became U+FFFD, and a search for it matched
    every line holding any invalid byte (the CLI found nothing for the same byte). It is
    a 422 in the validation errors' shape now — also where no parameter reads it."""
    api = any_api
    run = seed_run(api.ctx, "etl", NOW - timedelta(days=1), log=b"caf\xff\n")
    for path in ("/api/search", f"/api/runs/{run.id}/logs", "/api/health", "/api/runs"):
        res = api.client.get(f"{path}?{query}", headers=api.viewer)
        assert _is_unstorable(res.status_code, res.json(), "string_unicode"), (path, res.text)
        assert res.json()["detail"][0]["loc"] == ["query"]
    # valid UTF-8, escaped or not, passes
    ok = api.client.get("/api/search?q=caf%C3%A9+x", headers=api.viewer)
    assert ok.status_code == 200, ok.text
    found = api.client.get(f"/api/runs/{run.id}/logs?grep=caf", headers=api.viewer)
    assert found.status_code == 200 and "caf" in found.text


def test_a_json_body_that_gives_a_key_twice_is_a_422_and_starts_nothing(any_api: Api) -> None:
    """An outside audit: ``{"env": {"A": "first", "A": "second"}}`` started a run with
    ``A=second`` (and ``{"env": {...}, "env": {...}}`` dropped the first object): the last
    value won silently, where pipeline.json refuses a key given twice. A 422 now, naming
    the key, never a value; a webhook's payload is still passed on as it came."""
    from fastflow.db.models import PipelineRun

    api = any_api
    folder = api.ctx.settings.pipelines_dir / "envp"
    folder.mkdir(parents=True)
    (folder / "main.py").write_text("print('hi')\n")
    for body in (
        '{"env": {"A": "first", "A": "s3cret-second"}}',
        '{"env": {"A": "first"}, "env": {"B": "s3cret-second"}}',
    ):
        status, answer = _raw(api, "POST", "/api/pipelines/envp/run", body)
        assert _is_unstorable(status, answer, "json_invalid"), (status, answer)
        assert "given twice" in str(answer) and "s3cret" not in str(answer)
    with api.ctx.db.session() as s:
        assert s.query(PipelineRun).count() == 0
    status, answer = _raw(api, "POST", "/api/pipelines/envp/run", '{"env": {"A": "1", "B": "2"}}')
    assert status == 202, answer
    # a webhook's payload is the caller's: passed on as it came, with its query string
    from fastflow.orchestration import webhooks

    key = webhooks.create_key(api.ctx.db, api.ctx.settings.pipelines_dir, "envp")
    res = api.client.post(
        "/api/hooks/envp?source=caf%E9",
        content=b'{"a": 1, "a": 2}',
        headers={"Content-Type": "application/json", "X-Fastflow-Key": key},
    )
    assert res.status_code == 202, res.text
