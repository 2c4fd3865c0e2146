"""``fastflow secret set|list|rm`` as real subprocesses: the value comes from stdin (or a
hidden prompt on a terminal), is stored only encrypted and never printed."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from subprocess import CompletedProcess
from typing import Any

import pytest
from sqlalchemy import select as sql_select

from fastflow.context import Context
from fastflow.db.models import PipelineSecret
from fastflow.runs import secret_store
from tests.conftest import MakePipeline

Cli = Callable[..., CompletedProcess[str]]
VALUE = "s3cr3t-DO-NOT-LEAK-42"
LEAK = "DO-NOT-LEAK"


def _stored(app: Context, *names: str) -> dict[str, str]:
    return secret_store.values_for(app.db, app.settings, names)


def _raw(app: Context) -> dict[str, str]:
    with app.db.session() as s:
        return {r.name: r.ciphertext for r in s.scalars(sql_select(PipelineSecret))}


def _no_leak(*results: CompletedProcess[str]) -> None:
    for res in results:
        assert LEAK not in res.stdout and LEAK not in res.stderr, res


def test_set_list_rm_round_trip_never_shows_the_value(
    cli: Cli, app: Context, make_pipeline: MakePipeline
) -> None:
    make_pipeline("etl", config='{"secrets": ["API_TOKEN"]}')
    make_pipeline("report", config='{"secrets": ["API_TOKEN", "DB_PASSWORD"]}')
    make_pipeline("plain")
    set_ = cli("secret", "set", "API_TOKEN", input=VALUE + "\n")
    assert set_.returncode == 0, set_.stderr
    assert set_.stdout == ""
    assert "API_TOKEN" in set_.stderr and "etl, report" in set_.stderr
    assert _stored(app, "API_TOKEN") == {"API_TOKEN": VALUE}
    raw = _raw(app)["API_TOKEN"]
    assert VALUE not in raw and LEAK not in raw

    listed = cli("secret", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [list(r) for r in rows] == [["name", "updated_at", "pipelines"]]
    assert rows[0]["name"] == "API_TOKEN" and rows[0]["pipelines"] == ["etl", "report"]
    info = secret_store.get_info(app.db, "API_TOKEN")
    assert info is not None and rows[0]["updated_at"] == info.updated_at.isoformat()
    # a name a pipeline lists but nobody set: reported, outside the JSON
    assert "DB_PASSWORD" in listed.stderr and "report" in listed.stderr

    table = cli("secret", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("API_TOKEN") and lines[0].endswith("etl, report")
    assert lines[1].startswith("DB_PASSWORD") and "NOT SET" in lines[1]

    rm = cli("secret", "rm", "API_TOKEN")
    assert rm.returncode == 0, rm.stderr
    assert "etl, report" in rm.stderr  # they now lack it
    assert secret_store.list_secrets(app.db) == []
    assert json.loads(cli("secret", "list", "--json").stdout) == []
    _no_leak(set_, listed, table, rm)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("value\n", "value"),
        ("value\r\n", "value"),
        ("value", "value"),
        ("value\n\n", "value\n"),
        ("  spaced value \n", "  spaced value "),
        ("-----BEGIN-----\nabc\n-----END-----\n", "-----BEGIN-----\nabc\n-----END-----"),
    ],
)
def test_exactly_one_trailing_newline_is_stripped(
    cli: Cli, app: Context, given: str, stored: str
) -> None:
    res = cli("secret", "set", "MY_KEY", input=given)
    assert res.returncode == 0, res.stderr
    assert _stored(app, "MY_KEY") == {"MY_KEY": stored}


def test_setting_again_replaces_the_value_and_updated_at(cli: Cli, app: Context) -> None:
    assert cli("secret", "set", "API_TOKEN", input="first-value\n").returncode == 0
    before = json.loads(cli("secret", "list", "--json").stdout)[0]["updated_at"]
    assert cli("secret", "set", "API_TOKEN", input="second-value\n").returncode == 0
    after = json.loads(cli("secret", "list", "--json").stdout)[0]["updated_at"]
    assert after > before
    assert _stored(app, "API_TOKEN") == {"API_TOKEN": "second-value"}
    assert len(_raw(app)) == 1


def test_a_value_too_short_to_be_masked_is_stored_with_a_warning(cli: Cli, app: Context) -> None:
    """Found by an outside audit: a 3-character value was taken without a word, and then
    showed in every run log (values under 4 characters are not masked)."""
    res = cli("secret", "set", "PIN", input="123\n")
    assert res.returncode == 0, res.stderr
    assert "warning: the value of PIN is shorter than 4 characters" in res.stderr
    assert "123" not in res.stderr and _stored(app, "PIN") == {"PIN": "123"}
    assert "warning" not in cli("secret", "set", "PIN", input="1234\n").stderr


@pytest.mark.parametrize("name", ["api_token", "1TOKEN", "API-TOKEN", "API TOKEN", ""])
def test_a_bad_name_exits_2_and_stores_nothing(cli: Cli, app: Context, name: str) -> None:
    res = cli("secret", "set", name, input=VALUE + "\n")
    assert res.returncode == 2, res
    assert "secret name" in res.stderr and "[A-Z_][A-Z0-9_]*" in res.stderr
    assert "Traceback" not in res.stderr
    assert _raw(app) == {}
    _no_leak(res)


@pytest.mark.parametrize("given", ["", "\n", "\r\n"])
def test_an_empty_value_exits_2(cli: Cli, app: Context, given: str) -> None:
    res = cli("secret", "set", "API_TOKEN", input=given)
    assert res.returncode == 2, res
    assert "empty" in res.stderr and "stdin" in res.stderr
    assert _raw(app) == {}


def test_a_value_over_the_limit_exits_2(cli: Cli, app: Context) -> None:
    limit = secret_store.MAX_VALUE_BYTES
    ok = cli("secret", "set", "BIG", input="x" * limit + "\r\n")
    assert ok.returncode == 0, ok.stderr
    assert _stored(app, "BIG") == {"BIG": "x" * limit}
    for size in (limit + 1, 10 * limit):
        res = cli("secret", "set", "BIG", input="y" * size + "\n")
        assert res.returncode == 2, res
        assert f"longer than {limit} bytes" in res.stderr
    assert _stored(app, "BIG") == {"BIG": "x" * limit}


def test_a_value_on_the_command_line_is_refused_without_echoing_it(cli: Cli, app: Context) -> None:
    for args in (["API_TOKEN", VALUE], ["API_TOKEN", f"--value={VALUE}"]):
        res = cli("secret", "set", *args, input="from-stdin\n")
        assert res.returncode == 2, res
        assert "stdin" in res.stderr
        _no_leak(res)
    assert _raw(app) == {}


def test_a_value_that_is_not_utf8_is_refused(ff_env: dict[str, str], app: Context) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "fastflow", "secret", "set", "BINARY"],
        input=b"\xff\xfeDO-NOT-LEAK\n",
        capture_output=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert res.returncode == 2
    assert b"UTF-8" in res.stderr and b"DO-NOT-LEAK" not in res.stderr
    assert _raw(app) == {}


def test_rm_of_an_unknown_name_exits_1_naming_it(cli: Cli, app: Context) -> None:
    res = cli("secret", "rm", "NO_SUCH_SECRET")
    assert res.returncode == 1
    assert "NO_SUCH_SECRET" in res.stderr and "Traceback" not in res.stderr


def test_list_tolerates_pipelines_with_an_invalid_config(
    cli: Cli, app: Context, make_pipeline: MakePipeline
) -> None:
    make_pipeline("good", config='{"secrets": ["API_TOKEN"]}')
    make_pipeline("bad json", config='{"secrets": ["API_TOKEN"')
    make_pipeline("bad key", config='{"secrets": ["API_TOKEN"], "nope": 1}')
    assert cli("secret", "set", "API_TOKEN", input="v-1\n").returncode == 0
    res = cli("secret", "list", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["pipelines"] == ["good"]
    assert "bad json" in res.stderr and "bad key" in res.stderr


def test_empty_list(cli: Cli, ff_env: dict[str, str]) -> None:
    res = cli("secret", "list")
    assert res.returncode == 0 and res.stdout == ""
    assert "no secrets" in res.stderr


def test_on_a_terminal_the_value_is_prompted_with_hidden_input(
    ff_env: dict[str, str], app: Context
) -> None:
    master, slave = pty.openpty()
    # a session of its own: no controlling terminal but the pty on stdin (getpass uses it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastflow", "secret", "set", "TTY_TOKEN"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        env=os.environ.copy(),
    )
    os.close(slave)
    seen = bytearray()

    def read_until(marker: bytes | None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while marker is None or marker not in seen:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {marker!r} on the terminal; got {bytes(seen)!r}")
            ready, _, _ = select.select([master], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                if marker is None:
                    return
                pytest.fail(f"terminal closed before {marker!r}; got {bytes(seen)!r}")
            seen.extend(chunk)

    try:
        # the prompt is written after echo was turned off: only then is the value typed
        read_until(b"Value of TTY_TOKEN: ")
        os.write(master, b"typed-DO-NOT-LEAK\n")
        read_until(b"Repeat for confirmation: ")
        os.write(master, b"typed-DO-NOT-LEAK\n")
        read_until(None)
        assert proc.wait(timeout=60) == 0, bytes(seen)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"DO-NOT-LEAK" not in seen  # not echoed
    assert _stored(app, "TTY_TOKEN") == {"TTY_TOKEN": "typed-DO-NOT-LEAK"}


def test_round_trip_on_postgresql(cli: Cli, ff_env: dict[str, str], pg_url: str) -> None:
    env: dict[str, Any] = {"DATABASE_URL": pg_url}
    assert cli("secret", "set", "PG_TOKEN", input=VALUE + "\n", env=env).returncode == 0
    listed = cli("secret", "list", "--json", env=env)
    assert [r["name"] for r in json.loads(listed.stdout)] == ["PG_TOKEN"]
    assert cli("secret", "rm", "PG_TOKEN", env=env).returncode == 0
    assert cli("secret", "rm", "PG_TOKEN", env=env).returncode == 1
    _no_leak(listed)
