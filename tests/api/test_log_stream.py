"""Live logs: ``GET /api/runs/{id}/logs/stream`` (server-sent events) against a real
``fastflow serve`` and a pipeline that prints a numbered line every 50 ms for 10 s; and
``runs.logstream.Follower`` (exact offsets, whole lines, samples, the end of a run, a log
read back from the archive) on files the test writes itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import PipelineRun
from fastflow.errors import LogNotAvailable
from fastflow.lifecycle.cleanup import run_pass
from fastflow.runs import logstream
from fastflow.runs.logstream import Ended, Follower, LogChunk, Samples, StatusChanged
from tests.conftest import MakePipeline, run_cli
from tests.harness.fixtures import S3Env
from tests.harness.serve import fastflow_serve
from tests.seeding import NOW, ledger, run_row, seed_run

TICKER = """\
import time
for i in range(200):
    print(f"line {i:04d}", flush=True)
    time.sleep(0.05)
"""
PASSWORD = "stream-test-password"
BAR = "print('before')\nprint('10%\\r50%\\rdone', flush=True)\nprint('after')\n"
LINE = re.compile(r"\] line (\d{4})$")


@dataclass
class Event:
    name: str
    id: str | None
    data: str


def sse(lines: Iterator[str]) -> Iterator[Event]:
    """A server-sent-events parser (as browsers parse): ``data`` lines joined by newlines,
    comments and ``retry`` ignored."""
    name: str = "message"
    eid: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield Event(name, eid, "\n".join(data))
            name, eid, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            eid = value


@dataclass
class Server:
    url: str
    env: dict[str, str]
    admin: dict[str, str]


@pytest.fixture
def server(ff_env: dict[str, str], make_pipeline: MakePipeline) -> Iterator[Server]:
    make_pipeline("ticker", TICKER)
    make_pipeline("quick", "print('quick one')\n")
    make_pipeline("bar", BAR)
    env = {**os.environ, **ff_env}
    res = run_cli("token", "create", "--name", "t", "--role", "admin", env=env)
    assert res.returncode == 0, res.stderr
    admin = {"Authorization": f"Bearer {res.stdout.strip()}"}
    res = run_cli("user", "create", "viewer", "--role", "viewer", env=env, input=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    with fastflow_serve(env) as url:
        yield Server(url, env, admin)


def _start(server: Server, pipeline: str) -> str:
    res = httpx.post(f"{server.url}/api/pipelines/{pipeline}/run", headers=server.admin)
    assert res.status_code == 202, res.text
    return str(res.json()["run_id"])


def _status(server: Server, run_id: str) -> str:
    res = httpx.get(f"{server.url}/api/runs/{run_id}", headers=server.admin)
    return str(res.json()["status"])


def test_a_client_that_disconnects_twice_gets_every_line_exactly_once(server: Server) -> None:
    run_id = _start(server, "ticker")
    url = f"{server.url}/api/runs/{run_id}/logs/stream"
    received: list[str] = []  # the text of every log event, in order
    last_id: str | None = None
    ended: dict[str, Any] | None = None
    for stop_after in (50, 120, None):  # disconnect after these lines, then to the end
        headers = dict(server.admin)
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        with httpx.stream("GET", url, headers=headers, timeout=60) as res:
            assert res.status_code == 200
            assert res.headers["content-type"].startswith("text/event-stream")
            for ev in sse(res.iter_lines()):
                if ev.name == "log":
                    assert ev.id is not None and int(ev.id) > int(last_id or 0)
                    received.append(ev.data)
                    last_id = ev.id
                    numbers = [int(m.group(1)) for m in map(LINE.search, ev.data.splitlines()) if m]
                    if stop_after is not None and numbers and numbers[-1] >= stop_after:
                        assert _status(server, run_id) == "RUNNING"  # live, not replayed
                        break
                elif ev.name == "status":
                    ended = json.loads(ev.data)
            else:
                assert stop_after is None  # the stream closed by itself after "status"
    assert ended == {"status": "SUCCESS", "exit_code": 0, "failure_reason": None}
    text = "".join(received)
    numbers = [int(m.group(1)) for m in map(LINE.search, text.splitlines()) if m]
    assert numbers == list(range(200))  # every line once, in order
    full = httpx.get(f"{server.url}/api/runs/{run_id}/logs", headers=server.admin)
    assert text == full.text  # byte for byte, whatever the cuts
    assert int(last_id or 0) == len(full.content)


def test_the_stream_needs_authentication_and_takes_sessions(server: Server) -> None:
    run_id = _start(server, "quick")
    url = f"{server.url}/api/runs/{run_id}/logs/stream"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    with httpx.Client(base_url=server.url) as browser:
        login = browser.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD})
        assert login.status_code == 200, login.text
        with browser.stream("GET", f"/api/runs/{run_id[:8]}/logs/stream", timeout=60) as res:
            assert res.status_code == 200
            events = list(sse(res.iter_lines()))
    assert events[-1].name == "status"
    assert "quick one" in "".join(e.data for e in events if e.name == "log")
    bad = httpx.get(url, headers={**server.admin, "Last-Event-ID": "abc"})
    assert bad.status_code == 422 and "not a byte offset" in bad.json()["detail"]


def test_a_carriage_return_in_a_line_is_not_a_line_break_on_the_stream(server: Server) -> None:
    """An outside audit: a progress bar's CR ended the SSE data field like a line feed,
    so the run page live showed more lines than the log has and numbered every later
    line wrong. A CR travels as U+240D; turned back, the text is the log's, byte for
    byte."""
    run_id = _start(server, "bar")
    url = f"{server.url}/api/runs/{run_id}/logs/stream"
    with httpx.stream("GET", url, headers=server.admin, timeout=60) as res:
        events = list(sse(res.iter_lines()))
    text = "".join(e.data for e in events if e.name == "log")
    assert "10%\u240d50%\u240ddone" in text and "\r" not in text
    full = httpx.get(f"{server.url}/api/runs/{run_id}/logs", headers=server.admin)
    assert text.replace("\u240d", "\r") == full.text
    assert len(text.splitlines()) == full.content.count(b"\n")


# --- the follower on files written by the test --------------------------------------------


def _running(ctx: Context, tmp: Path) -> tuple[uuid.UUID, Path, Path]:
    run = seed_run(ctx, "live", NOW, status="RUNNING", log=b"", metrics=True)
    run.metrics.write_bytes(b"")
    return run.id, run.log, run.metrics


def _finish(ctx: Context, rid: uuid.UUID, status: str = "FAILED") -> None:
    with ctx.db.session() as s:
        row = s.get(PipelineRun, rid)
        assert row is not None
        row.status, row.exit_code, row.failure_reason = status, 3, "exit code 3"


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_follower_sends_whole_lines_at_exact_offsets(app: Context, tmp_path: Path) -> None:
    rid, log, metrics = _running(app, tmp_path)
    f = Follower(app, rid, 0, status_every=0)
    assert f.poll() == [StatusChanged("RUNNING")]
    _append(log, b"first line\nsecond, unfin")
    assert f.poll() == [LogChunk(0, 11, b"first line\n")]
    assert f.poll() == []  # an unfinished line waits for its end
    _append(log, b"ished\n")
    assert f.poll() == [LogChunk(11, 30, b"second, unfinished\n")]
    # a line longer than MAX_PARTIAL still being written goes out whole characters at a time
    long = "é" * logstream.MAX_PARTIAL
    _append(log, long.encode())
    first = f.poll()
    assert len(first) == 1 and isinstance(first[0], LogChunk)
    assert first[0].start == 30 and first[0].data.decode("utf-8") == long  # no broken "é"
    _append(metrics, b'{"timestamp": "t1", "cpu_percent": 1, "ram_mb": 2}\n')
    _append(metrics, b'{"timestamp": "t2", "cpu_percent": 3, "ram_mb": 4}\nnot json\n{"times')
    assert f.poll() == [
        Samples(
            0,
            [
                {"timestamp": "t1", "cpu_percent": 1, "ram_mb": 2},
                {"timestamp": "t2", "cpu_percent": 3, "ram_mb": 4},
            ],
        )
    ]
    _append(metrics, b'tamp": "t3", "cpu_percent": 5, "ram_mb": 6}\n')
    assert f.poll() == [Samples(2, [{"timestamp": "t3", "cpu_percent": 5, "ram_mb": 6}])]
    _append(log, b"\nlast words without a newline")
    _finish(app, rid)
    end = len(log.read_bytes())
    events = f.poll()
    assert isinstance(events[0], LogChunk) and events[0].end == end
    assert events[0].data.endswith(b"last words without a newline")
    assert events[-1] == Ended("FAILED", 3, "exit code 3")
    assert f.done and f.poll() == []
    # a follower started from any offset sends exactly the rest
    rest = Follower(app, rid, 11, status_every=0, metrics=False)
    chunks = [e for e in rest.poll() if isinstance(e, LogChunk)]
    assert b"".join(c.data for c in chunks) == log.read_bytes()[11:]


def test_follower_waits_for_the_log_of_a_queued_run(app: Context, tmp_path: Path) -> None:
    rid, log, _ = _running(app, tmp_path)
    log.unlink()
    with app.db.session() as s:
        row = s.get(PipelineRun, rid)
        assert row is not None
        row.status = "QUEUED"
    f = Follower(app, rid, 0, status_every=0, metrics=False)
    assert f.poll() == [StatusChanged("QUEUED")]
    with app.db.session() as s:
        row = s.get(PipelineRun, rid)
        assert row is not None
        row.status = "RUNNING"
    log.write_bytes(b"started\n")
    assert f.poll() == [StatusChanged("RUNNING"), LogChunk(0, 8, b"started\n")]


@pytest.fixture
def s3_app(ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Context]:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("S3_COMPRESSION", "zstd")
    monkeypatch.setenv("LOG_RETENTION_RUNS", "1")
    ctx = bootstrap(load_settings())
    yield ctx
    ctx.db.dispose()


def test_follower_of_a_run_archived_and_deleted_reads_the_archive(
    s3_app: Context, s3: S3Env
) -> None:
    data = b"".join(f"archived line {i}\n".encode() for i in range(5000))
    old = seed_run(s3_app, "gone", NOW - timedelta(days=2), log=data)
    seed_run(s3_app, "gone", NOW - timedelta(days=1))
    run_pass(s3_app, "test", now=NOW)
    assert run_row(s3_app, old.id) is None and ledger(s3_app)[old.id].encoding == "zstd"
    f = Follower(s3_app, old.id, 1000, metrics=False)
    events: list[logstream.Event] = []
    while not f.done:
        events += f.poll()
    chunks = [e for e in events if isinstance(e, LogChunk)]
    assert b"".join(c.data for c in chunks) == data[1000:]
    assert all(c.data.endswith(b"\n") for c in chunks)
    assert [c.start for c in chunks] == [1000] + [c.end for c in chunks[:-1]]
    assert events[-1] == Ended("SUCCESS", 0, None)


def test_a_log_neither_local_nor_archived_is_reported_not_ended_as_empty(app: Context) -> None:
    """An outside audit: ``logs --follow`` and the stream of a finished run whose log was
    lost (gone from disk, never archived) ended as a clean, empty success — exit 0, no
    ``log-error`` — while every other reader reports the loss."""
    lost = seed_run(app, "lost", NOW - timedelta(days=1))
    lost.log.unlink()
    f = Follower(app, lost.id, 0, metrics=False)
    with pytest.raises(LogNotAvailable, match="neither local nor archived"):
        while not f.done:
            f.poll()
    f.close()
    res = run_cli("logs", str(lost.id), "--follow", timeout=60)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "neither local nor archived" in res.stderr and "Traceback" not in res.stderr
    # a run that never had a log (no file named) still just ends
    never = seed_run(app, "never", NOW - timedelta(days=1), write_log=False)
    with app.db.session() as s:
        row = s.get(PipelineRun, never.id)
        assert row is not None
        row.log_file = None
    f = Follower(app, never.id, 0, metrics=False)
    events: list[logstream.Event] = []
    while not f.done:
        events += f.poll()
    assert events[-1] == Ended("SUCCESS", 0, None)
    # nor does a run cancelled while it was queued: its log file was never created
    queued = seed_run(app, "queued", NOW - timedelta(days=1), status="CANCELLED", write_log=False)
    f = Follower(app, queued.id, 0, metrics=False)
    events = []
    while not f.done:
        events += f.poll()
    assert isinstance(events[-1], Ended) and events[-1].status == "CANCELLED"


@pytest.mark.parametrize("char", ["é", "€", "𝄞"])
def test_a_long_unfinished_line_is_never_cut_inside_a_character(char: str) -> None:
    encoded = char.encode()
    body = b"x" * logstream.MAX_PARTIAL
    for cut in range(len(encoded) + 1):
        data = body + encoded[:cut]
        whole = logstream._cut(data, final=False)
        assert whole == (len(data) if cut in (0, len(encoded)) else len(body))
        assert data[:whole].decode("utf-8")  # decodes: no broken character
    assert logstream._cut(b"ab\ncd", final=False) == 3
    assert logstream._cut(b"ab\ncd", final=True) == 5
    assert logstream._cut(b"short, unfinished", final=False) == 0


def test_a_client_that_goes_away_releases_its_follower(app: Context, tmp_path: Path) -> None:
    """What the server does when a client disconnects (its stream task is cancelled, or
    the generator closed): the follower's files are closed, nothing keeps polling."""
    from fastflow.api.routers import runs as runs_router

    rid, log, _ = _running(app, tmp_path)
    log.write_bytes(b"one\n")
    follower = Follower(app, rid, 0)

    async def client() -> bytes:
        events = runs_router._events(follower, app.settings)
        assert await anext(events) == b"retry: 1000\n\n"
        second = await anext(events)
        await events.aclose()
        return second

    second = asyncio.run(client())
    assert b'event: run\ndata: {"status": "RUNNING"}' in second
    assert b"event: log\nid: 4\ndata: one\ndata: \n\n" in second
    assert follower.done and follower.poll() == []
    assert follower._log is None or follower._log.file is None


@pytest.mark.parametrize("kind", ["fifo", "link", "folder"])
def test_a_bad_metrics_file_stops_the_samples_not_the_log(
    app: Context, tmp_path: Path, kind: str
) -> None:
    """A FIFO, a link or a folder in the metrics file's place ended the whole stream
    with ``log-error`` (found by an outside audit): the log lines stop too. The samples
    now stop alone; the log is followed to its end."""
    rid, log, metrics = _running(app, tmp_path)
    metrics.unlink()
    if kind == "fifo":
        os.mkfifo(metrics)
    elif kind == "link":
        (tmp_path / "elsewhere.jsonl").write_bytes(b'{"timestamp": "outside"}\n')
        metrics.symlink_to(tmp_path / "elsewhere.jsonl")
    else:
        metrics.mkdir()
    f = Follower(app, rid, 0, status_every=0)
    _append(log, b"first line\n")
    events = f.poll()
    assert LogChunk(0, 11, b"first line\n") in events
    assert not any(isinstance(e, Samples) for e in events)
    _append(log, b"second line\n")
    _finish(app, rid)
    events = f.poll()
    assert LogChunk(11, 23, b"second line\n") in events and events[-1] == Ended(
        "FAILED", 3, "exit code 3"
    )
