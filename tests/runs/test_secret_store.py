"""The secret store on real SQLite and PostgreSQL: values only encrypted at rest, names
and the pipelines that list them, every missing name reported, a changed key named."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from fastflow import exit_codes, security
from fastflow.config import Settings, load_settings
from fastflow.db.engine import Database
from fastflow.db.models import PipelineSecret
from fastflow.errors import FastflowError, InvalidSecret, MissingSecrets, SecretUnreadable
from fastflow.runs import secret_store
from tests.conftest import MakePipeline

VALUE = "tok-3f9a-DO-NOT-LEAK-ÄÖ\nsecond line"


@pytest.fixture
def settings(ff_env: dict[str, str]) -> Settings:
    return load_settings()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, ff_env: dict[str, str]) -> Iterator[Database]:
    """A migrated database: SQLite through the ``app`` fixture, or a fresh PostgreSQL."""
    if request.param == "sqlite":
        yield request.getfixturevalue("app").db
        return
    pg_url: str = request.getfixturevalue("pg_url")
    database = Database(load_settings(database_url=pg_url))
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()


def _raw(db: Database) -> dict[str, str]:
    with db.session() as s:
        return {r.name: r.ciphertext for r in s.scalars(select(PipelineSecret))}


def test_a_value_is_stored_only_encrypted_and_read_back_by_values_for(
    db: Database, settings: Settings
) -> None:
    info = secret_store.set_secret(db, settings, "API_TOKEN", VALUE)
    assert info.name == "API_TOKEN" and info.updated_at.tzinfo is not None
    stored = _raw(db)["API_TOKEN"]
    for form in (VALUE, "tok-3f9a", base64.b64encode(VALUE.encode()).decode()):
        assert form not in stored
    assert security.decrypt(settings, stored) == VALUE  # fastflow's Fernet key
    assert secret_store.values_for(db, settings, ["API_TOKEN"]) == {"API_TOKEN": VALUE}


def test_setting_again_replaces_the_value_and_updated_at(db: Database, settings: Settings) -> None:
    first = secret_store.set_secret(db, settings, "API_TOKEN", "old-value")
    second = secret_store.set_secret(db, settings, "API_TOKEN", "new-value")
    assert second.updated_at > first.updated_at
    assert secret_store.values_for(db, settings, ["API_TOKEN"]) == {"API_TOKEN": "new-value"}
    assert secret_store.list_secrets(db) == [second]
    assert len(_raw(db)) == 1


def test_list_gives_names_and_times_only_and_delete_removes(
    db: Database, settings: Settings
) -> None:
    secret_store.set_secret(db, settings, "ZED", "value-z")
    secret_store.set_secret(db, settings, "_A1", "value-a")
    listed = secret_store.list_secrets(db)
    assert [s.name for s in listed] == ["ZED", "_A1"]  # by name (ASCII order)
    assert all(set(vars(s)) == {"name", "updated_at"} for s in listed)
    assert secret_store.delete_secret(db, "ZED") is True
    assert secret_store.delete_secret(db, "ZED") is False
    assert [s.name for s in secret_store.list_secrets(db)] == ["_A1"]
    assert secret_store.get_info(db, "ZED") is None


def test_values_for_names_every_missing_secret(db: Database, settings: Settings) -> None:
    secret_store.set_secret(db, settings, "PRESENT", "here-it-is")
    with pytest.raises(MissingSecrets) as err:
        secret_store.values_for(db, settings, ["API_TOKEN", "PRESENT", "X", "API_TOKEN"])
    assert err.value.names == ["API_TOKEN", "X"]
    expected = "secret(s) not found: API_TOKEN, X (set with: fastflow secret set NAME)"
    assert str(err.value) == expected
    assert isinstance(err.value, FastflowError)
    assert exit_codes.for_error(err.value) == (exit_codes.FAILED, str(err.value))
    assert secret_store.values_for(db, settings, []) == {}
    both = secret_store.values_for(db, settings, ("PRESENT", "PRESENT"))
    assert both == {"PRESENT": "here-it-is"}


def test_a_changed_key_is_a_clear_error_naming_the_secret(db: Database, settings: Settings) -> None:
    secret_store.set_secret(db, settings, "API_TOKEN", VALUE)
    secret_store.set_secret(db, settings, "OTHER", "other-value")
    ciphertext = _raw(db)["API_TOKEN"]
    other_key = load_settings(fastflow_secret_key="a-different-key-than-the-key-file")
    with pytest.raises(SecretUnreadable) as err:
        secret_store.values_for(db, other_key, ["API_TOKEN"])
    message = str(err.value)
    assert "secret API_TOKEN cannot be decrypted" in message
    assert "FASTFLOW_SECRET_KEY" in message and "fastflow secret set" in message
    assert ciphertext not in message and ciphertext[:20] not in message and VALUE not in message
    assert exit_codes.for_error(err.value) == (exit_codes.CONFIG, message)
    with pytest.raises(SecretUnreadable) as both:
        secret_store.values_for(db, other_key, ["API_TOKEN", "OTHER"])
    assert both.value.names == ["API_TOKEN", "OTHER"]


@pytest.mark.parametrize(
    "name", ["", "api_token", "1ABC", "A-B", "A B", "ÄPI", "API\n", "A\x00", "A" * 256]
)
def test_bad_names_are_refused(db: Database, settings: Settings, name: str) -> None:
    with pytest.raises(InvalidSecret) as err:
        secret_store.set_secret(db, settings, name, "some-value")
    assert "secret name" in str(err.value)
    assert exit_codes.for_error(err.value) == (exit_codes.CONFIG, str(err.value))
    assert _raw(db) == {}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "must not be empty"),
        ("abc\x00-DO-NOT-LEAK", "NUL"),
        ("\ud800-DO-NOT-LEAK", "Unicode"),
        ("x" * (secret_store.MAX_VALUE_BYTES + 1), "longer than"),
        (12345678, "must be a string"),
    ],
)
def test_bad_values_are_refused_without_repeating_them(
    db: Database, settings: Settings, value: object, why: str
) -> None:
    with pytest.raises(InvalidSecret) as err:
        secret_store.set_secret(db, settings, "NAME", value)  # type: ignore[arg-type]
    assert why in str(err.value)
    assert "DO-NOT-LEAK" not in str(err.value) and "12345678" not in str(err.value)
    assert _raw(db) == {}


def test_the_longest_value_allowed_is_kept_whole(db: Database, settings: Settings) -> None:
    value = "é" * (secret_store.MAX_VALUE_BYTES // 2)  # two bytes each: exactly the limit
    secret_store.set_secret(db, settings, "BIG", value)
    assert secret_store.values_for(db, settings, ["BIG"])["BIG"] == value


def test_concurrent_sets_of_a_new_name_leave_one_whole_value(
    db: Database, settings: Settings
) -> None:
    security.fernet(settings)  # create DATA_DIR/secret.key first: its creation is not race-free
    values = [f"value-{i}-" + "x" * 40 for i in range(6)]
    start = threading.Barrier(len(values))
    errors: list[BaseException] = []

    def set_one(value: str) -> None:
        try:
            start.wait()
            secret_store.set_secret(db, settings, "RACE", value)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=set_one, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(_raw(db)) == 1
    assert secret_store.values_for(db, settings, ["RACE"])["RACE"] in values


def test_overview_names_the_pipelines_missing_names_and_skipped_folders(
    db: Database, settings: Settings, make_pipeline: MakePipeline
) -> None:
    make_pipeline("etl", config='{"secrets": ["API_TOKEN", "DB_PASSWORD"]}')
    make_pipeline("report", config='{"secrets": ["API_TOKEN"]}')
    make_pipeline("plain")
    make_pipeline("broken", config='{"secrets": ["API_TOKEN"], "no_such_key": 1}')
    secret_store.set_secret(db, settings, "API_TOKEN", "value-1")
    secret_store.set_secret(db, settings, "UNUSED", "value-2")
    view = secret_store.overview(db, settings.pipelines_dir)
    assert [s.to_dict()["pipelines"] for s in view.secrets] == [["etl", "report"], []]
    first = view.secrets[0].to_dict()
    assert list(first) == ["name", "updated_at", "pipelines"]
    assert first["name"] == "API_TOKEN"
    assert first["updated_at"] == view.secrets[0].updated_at.isoformat()
    assert view.missing == {"DB_PASSWORD": ("etl",)}
    assert view.skipped == ("broken",)
