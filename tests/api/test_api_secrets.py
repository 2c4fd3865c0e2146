"""``/api/secrets``: admin only, names only; a value goes in and never comes out — not in
a response, an error or a log record."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fastflow import accounts
from fastflow.api import schemas
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import PipelineSecret, utcnow
from fastflow.runs import secret_store
from fastflow.server import create_app
from tests.conftest import MakePipeline

VALUE = "api-value-DO-NOT-LEAK-7"
LEAK = "DO-NOT-LEAK"


class Api:
    def __init__(self, client: TestClient, ctx: Context) -> None:
        self.client = client
        self.ctx = ctx
        self.admin = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'a', 'admin')}"}
        self.viewer = {"Authorization": f"Bearer {accounts.create_token(ctx.db, 'v', 'viewer')}"}
        self.bodies: list[str] = []  # every response body, to look for leaks

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", self.admin)
        res = self.client.request(method, path, **kwargs)
        self.bodies.append(res.text)
        return res


@pytest.fixture
def api(ff_env: dict[str, str], caplog: pytest.LogCaptureFixture) -> Iterator[Api]:
    caplog.set_level(logging.DEBUG)  # every record of every logger, to look for leaks
    ctx = bootstrap(load_settings())
    api = Api(TestClient(create_app(ctx, schedule=False)), ctx)
    yield api
    assert all(LEAK not in body for body in api.bodies)
    assert LEAK not in caplog.text
    ctx.db.dispose()


def _raw(ctx: Context) -> dict[str, str]:
    with ctx.db.session() as s:
        return {r.name: r.ciphertext for r in s.scalars(select(PipelineSecret))}


def test_put_list_delete(api: Api, make_pipeline: MakePipeline) -> None:
    make_pipeline("etl", config='{"secrets": ["API_TOKEN"]}')
    make_pipeline("other", config='{"secrets": ["API_TOKEN", "NOT_SET_YET"]}')
    res = api.call("PUT", "/api/secrets/API_TOKEN", json={"value": VALUE})
    assert res.status_code == 200, res.text
    body = res.json()
    assert list(body) == ["name", "updated_at", "pipelines"]
    assert body["name"] == "API_TOKEN" and body["pipelines"] == ["etl", "other"]
    assert VALUE not in _raw(api.ctx)["API_TOKEN"]
    assert secret_store.values_for(api.ctx.db, api.ctx.settings, ["API_TOKEN"]) == {
        "API_TOKEN": VALUE
    }

    listed = api.call("GET", "/api/secrets")
    assert listed.status_code == 200
    assert listed.json() == [body]  # the same object as `fastflow secret list --json`
    view = secret_store.overview(api.ctx.db, api.ctx.settings.pipelines_dir)
    assert listed.json() == [s.to_dict() for s in view.secrets]

    short = api.call("PUT", "/api/secrets/PIN", json={"value": "123"})
    assert short.status_code == 200
    (warning,) = short.json()["warnings"]
    assert "shorter than 4 characters: it is not masked" in warning and "123" not in warning
    assert api.call("DELETE", "/api/secrets/PIN").status_code == 200

    again = api.call("PUT", "/api/secrets/API_TOKEN", json={"value": "replaced-value"})
    assert again.status_code == 200
    assert again.json()["updated_at"] > body["updated_at"]
    assert secret_store.values_for(api.ctx.db, api.ctx.settings, ["API_TOKEN"]) == {
        "API_TOKEN": "replaced-value"
    }

    gone = api.call("DELETE", "/api/secrets/API_TOKEN")
    assert gone.status_code == 200
    assert gone.json() == {"name": "API_TOKEN", "deleted": True, "pipelines": ["etl", "other"]}
    assert _raw(api.ctx) == {}
    assert api.call("GET", "/api/secrets").json() == []
    missing = api.call("DELETE", "/api/secrets/API_TOKEN")
    assert missing.status_code == 404
    assert "API_TOKEN" in missing.json()["detail"]


def test_the_schema_names_the_keys_of_the_listing() -> None:
    listing = secret_store.SecretListing("A", utcnow(), ("p",))
    assert list(schemas.SecretOut.model_fields) == list(listing.to_dict())
    assert schemas.SecretOut.model_validate(listing.to_dict()).model_dump() == listing.to_dict()


def test_viewers_get_403_and_anonymous_callers_401(api: Api) -> None:
    secret_store.set_secret(api.ctx.db, api.ctx.settings, "API_TOKEN", VALUE)
    for method, kwargs in (
        ("GET", {}),
        ("PUT", {"json": {"value": "viewer-value"}}),
        ("DELETE", {}),
    ):
        path = "/api/secrets" if method == "GET" else "/api/secrets/API_TOKEN"
        assert api.call(method, path, headers=api.viewer, **kwargs).status_code == 403
        assert api.call(method, path, headers={}, **kwargs).status_code == 401
    assert secret_store.values_for(api.ctx.db, api.ctx.settings, ["API_TOKEN"]) == {
        "API_TOKEN": VALUE
    }


@pytest.mark.parametrize(
    ("path", "kwargs", "detail"),
    [
        ("/api/secrets/api_token", {"json": {"value": VALUE}}, "secret name"),
        ("/api/secrets/1ABC", {"json": {"value": VALUE}}, "secret name"),
        ("/api/secrets/A-B", {"json": {"value": VALUE}}, "secret name"),
        ("/api/secrets/OK", {"json": {"value": ""}}, "must not be empty"),
        ("/api/secrets/OK", {"json": {"value": 4242424242}}, "must be a string"),
        ("/api/secrets/OK", {"json": {"value": None}}, "must be a string"),
        ("/api/secrets/OK", {"json": {"value": [VALUE]}}, "must be a string"),
        ("/api/secrets/OK", {"json": {"value": "a\x00" + VALUE}}, "NUL"),
        ("/api/secrets/OK", {"json": {"other": VALUE}}, "JSON object"),
        ("/api/secrets/OK", {"json": {"value": "x", "note": VALUE}}, "only hold"),
        ("/api/secrets/OK", {"json": VALUE}, "JSON object"),
        ("/api/secrets/OK", {"json": [VALUE]}, "JSON object"),
        ("/api/secrets/OK", {}, "JSON object"),
        ("/api/secrets/OK", {"content": VALUE.encode()}, "JSON object"),
    ],
)
def test_bad_names_and_values_are_422_without_echo(
    api: Api, path: str, kwargs: dict[str, Any], detail: str
) -> None:
    res = api.call("PUT", path, **kwargs)
    assert res.status_code == 422, res.text
    assert detail in res.json()["detail"]
    assert "4242424242" not in res.text
    assert _raw(api.ctx) == {}


def test_malformed_json_is_422_without_echo(api: Api) -> None:
    headers = {**api.admin, "Content-Type": "application/json"}
    for body in (b'{"value": "' + VALUE.encode(), b'{"value": "' + VALUE.encode() + b'"} x'):
        res = api.call("PUT", "/api/secrets/OK", content=body, headers=headers)
        assert res.status_code == 422
    assert _raw(api.ctx) == {}


def test_a_session_needs_the_csrf_token_to_set(api: Api) -> None:
    accounts.create_user(api.ctx.db, "admin", "a-long-password", "admin")
    login = api.call(
        "POST", "/api/auth/login", json={"username": "admin", "password": "a-long-password"}
    )
    assert login.status_code == 200, login.text
    csrf = login.json()["csrf_token"]
    without = api.call("PUT", "/api/secrets/API_TOKEN", json={"value": VALUE}, headers={})
    assert without.status_code == 403
    assert _raw(api.ctx) == {}
    ok = api.call(
        "PUT", "/api/secrets/API_TOKEN", json={"value": VALUE}, headers={"X-CSRF-Token": csrf}
    )
    assert ok.status_code == 200
    assert list(_raw(api.ctx)) == ["API_TOKEN"]
