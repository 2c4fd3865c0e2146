"""Runs, their logs and metrics, and the archive ledger.

``{run_id}`` is a full run id or a unique prefix of at least 4 hex digits (the UI shows
8); runs deleted by retention but in the archive ledger count. Unknown: 404; a prefix
that matches several runs: 409 naming them; not a run id at all: 422."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncGenerator, Iterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BeforeValidator
from starlette.concurrency import run_in_threadpool

from fastflow.api.deps import AdminDep, CtxDep, LauncherDep, PrincipalDep
from fastflow.api.routers.search import NDJSON, NDJSON_HEADERS, ndjson
from fastflow.api.schemas import (
    ArchiveEntryListOut,
    CancelOut,
    LogStreamStatusOut,
    MetricSampleListOut,
    RunListOut,
    RunOut,
)
from fastflow.config import Settings
from fastflow.context import Context
from fastflow.db import cache as readcache
from fastflow.db.models import RunStatus
from fastflow.errors import FastflowError, InvalidInput, RunAlreadyFinished, RunNotFound
from fastflow.runs import files as logfiles
from fastflow.runs import logsearch, logstream, readback
from fastflow.runs import store as run_rows
from fastflow.runs import views as runviews
from fastflow.runs.readback import open_log
from fastflow.security import public_text

router = APIRouter(prefix="/api", tags=["runs"])
log = logging.getLogger("fastflow.api")


class TransferBrokenOff(Exception):
    """A log's transfer ended early on purpose (its archived copy failed to read after
    the answer started): logged as one line here, so the server's own report of the
    escaping exception is dropped (``app.QuietBrokenTransfers``)."""


MAX_OFFSET = 2**31 - 1  # larger offsets overflow the database's integer (a 422, not a 500)
MAX_WINDOW_LINES = 5000  # lines of one ``from_line`` window
GREP_CHUNK = 1024 * 1024  # local reads of a search

# The log is streamed as text; its media type is declared for the OpenAPI schema.
LOG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The log (UTF-8 text), or its last ``tail_bytes`` bytes.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


async def resolve_run_id(
    run_id: Annotated[str, Path(max_length=100, description="A run id or a unique prefix.")],
    ctx: CtxDep,
    _: PrincipalDep,
) -> uuid.UUID:
    """The run ``{run_id}`` names (after authentication: ids are never probed
    anonymously). A full id needs no lookup and is taken here, on the event loop; a
    short one is resolved in a worker thread (a plain ``def`` dependency would cost
    that thread round trip on every request)."""
    try:
        return uuid.UUID(run_id.strip())
    except ValueError:
        pass
    try:
        return await run_in_threadpool(run_rows.resolve_run_id, ctx.db, run_id)
    except run_rows.AmbiguousRunId as e:
        raise HTTPException(status_code=409, detail=str(e)) from None


RunIdDep = Annotated[uuid.UUID, Depends(resolve_run_id)]


def _blank_is(default: object) -> BeforeValidator:
    """An empty query value (``?limit=``, as DESIGN.md writes the route) means the
    parameter's default, not an invalid number."""
    return BeforeValidator(lambda v: default if v == "" else v)


@router.get("/runs", response_model=RunListOut)
async def list_runs(
    ctx: CtxDep,
    _: PrincipalDep,
    pipeline_name: str | None = None,
    status: Annotated[RunStatus | None, _blank_is(None)] = None,
    limit: Annotated[int, _blank_is(50), Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, _blank_is(0), Query(ge=0, le=MAX_OFFSET)] = 0,
    include_archived: Annotated[bool, _blank_is(False)] = False,
) -> Response:
    """Runs, newest first, with archive information; ``include_archived=true`` also
    lists the runs whose rows retention deleted (``row_deleted``, read from the archive
    ledger), merged into the same order and pages. The encoded JSON is what the
    one-second read cache keeps: a poll within it costs no query, no encoding and no
    worker thread (the database is read in one on a miss)."""
    key = ("runs", pipeline_name, status, limit, offset, include_archived)

    def compute() -> bytes:
        views = runviews.list_views(
            ctx,
            include_archived=include_archived,
            pipeline=pipeline_name,
            status=status.value if status else None,
            limit=limit,
            offset=offset,
        )
        return bytes(JSONResponse(views).body)

    body = readcache.peek(key)
    if body is readcache.MISS:
        body = await run_in_threadpool(readcache.cached, key, compute)
    return Response(content=body, media_type="application/json")


@router.get("/runs/{run_id}", response_model=RunOut)
def get_run(run_id: RunIdDep, ctx: CtxDep) -> dict[str, Any]:
    return runviews.get_view(ctx, run_id)


SMALL_TAIL = 1 << 20  # tails up to this many bytes are answered in one piece


@router.get("/runs/{run_id}/logs", response_class=StreamingResponse, responses=LOG_RESPONSES)
def get_logs(
    run_id: RunIdDep,
    ctx: CtxDep,
    tail_bytes: Annotated[int | None, Query(ge=0)] = None,
    full: bool = False,
    grep: Annotated[str | None, Query(description="Search: text or a regex.")] = None,
    regex: bool = False,
    context: Annotated[int, Query(ge=0, le=logsearch.MAX_CONTEXT)] = 0,
    case_sensitive: bool = False,
    max_matches: Annotated[int | None, Query(ge=1)] = None,
    from_line: Annotated[int | None, Query(ge=1, le=MAX_OFFSET)] = None,
    max_lines: Annotated[int, Query(ge=1, le=MAX_WINDOW_LINES)] = 200,
    download: bool = False,
) -> Response:
    """The log as text (streamed), from local disk or read back from the archive;
    ``full=true`` reads the full archived copy of a log that was truncated locally.

    ``grep=TEXT``: the matching lines instead, as NDJSON ``{"line", "text",
    "context_before", "context_after"}`` (``application/x-ndjson``): plain text,
    case-insensitive unless ``case_sensitive=true``; ``regex=true`` for a regular
    expression (at most 1,000 characters, 1 s per line); ``context=N`` lines around each
    match; ``max_matches`` to stop early. Streamed with bounded memory from local,
    archived and compressed archived logs alike.

    ``from_line=N``: ``max_lines`` lines from line N (1-based) as text, first line number
    in ``X-Log-First-Line``. ``download=true``: ``Content-Disposition: attachment`` naming
    the pipeline and the run."""
    # the run's file columns and its ledger entry: one Core query, no ORM session
    found = readback.locate(ctx, run_id)
    if grep is not None:
        matcher = logsearch.Matcher(grep, is_regex=regex, case_sensitive=case_sensitive)
        source = _open(ctx, run_id, found, full=full, chunk=GREP_CHUNK)
        steps = _limited(
            logsearch.search_steps(source.chunks, matcher, context=context), max_matches
        )
        return StreamingResponse(
            ndjson(steps, _grep_line, ctx.settings),
            media_type=NDJSON,
            headers={**NDJSON_HEADERS, **_source_headers(source)},
        )
    if from_line is not None:
        source = _open(ctx, run_id, found, full=full, chunk=GREP_CHUNK)
        window = logsearch.line_window(source.chunks, from_line, max_lines)
        return Response(
            window,
            media_type="text/plain; charset=utf-8",
            headers={**_source_headers(source), "X-Log-First-Line": str(from_line)},
        )
    source = _open(ctx, run_id, found, tail_bytes, full=full)
    headers = _source_headers(source)
    if download:
        headers["Content-Disposition"] = _attachment(run_id, found, full)
    if tail_bytes is not None and tail_bytes <= SMALL_TAIL:
        # a tail (what the run page and `fastflow logs` ask for) is read here, in this
        # worker thread, and sent at once: streaming it would cost a thread hop per chunk
        return Response(
            b"".join(source.chunks), media_type="text/plain; charset=utf-8", headers=headers
        )
    return StreamingResponse(
        _primed(source.chunks, run_id), media_type="text/plain; charset=utf-8", headers=headers
    )


def _primed(chunks: Iterator[bytes], run_id: uuid.UUID) -> Iterator[bytes]:
    """The stream with its first chunk read now: an error at its start (an unreachable
    or damaged archived object) becomes an error response instead of a 200 that breaks
    off at once. An error later still breaks the transfer off — never a complete-looking
    log — with one warning line in the server's log (``TransferBrokenOff``)."""
    try:
        first = next(chunks)
    except StopIteration:
        return iter(())
    except BaseException:
        _close(chunks)
        raise
    return _after_first(first, chunks, run_id)


def _after_first(first: bytes, rest: Iterator[bytes], run_id: uuid.UUID) -> Iterator[bytes]:
    try:
        yield first
        yield from rest
    except FastflowError as e:
        log.warning("run %s: the transfer of its log broke off: %s", run_id, e)
        raise TransferBrokenOff(str(e)) from None
    finally:
        _close(rest)


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def _open(
    ctx: Context,
    run_id: uuid.UUID,
    found: readback.Located,
    tail_bytes: int | None = None,
    *,
    full: bool,
    chunk: int = logfiles.READ_CHUNK,
) -> readback.LogSource:
    return open_log(
        ctx,
        run_id,
        found.run,
        tail_bytes,
        full=full,
        chunk=chunk,
        entry=found.entry,
        entry_known=True,
    )


def _source_headers(source: readback.LogSource) -> dict[str, str]:
    return {
        "X-Log-Source": source.origin,
        "X-Log-Size": str(source.size),
        "Cache-Control": "no-store",
    }


def _limited(
    steps: Iterator[logsearch.Hit | int], max_matches: int | None
) -> Iterator[logsearch.Hit | int]:
    found = 0
    try:
        for step in steps:
            yield step
            if isinstance(step, logsearch.Hit):
                found += 1
                if max_matches is not None and found >= max_matches:
                    return
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()


def _grep_line(step: logsearch.Hit | int) -> dict[str, object] | None:
    return step.to_dict() if isinstance(step, logsearch.Hit) else None


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _attachment(run_id: uuid.UUID, found: readback.Located, full: bool) -> str:
    """``attachment`` named ``<pipeline>-<run id>[-full].log`` (an ASCII fallback and the
    UTF-8 name, RFC 6266)."""
    pipeline = found.run.pipeline_name if found.run is not None else None
    if pipeline is None:
        pipeline = found.entry.pipeline_name if found.entry is not None else "run"
    name = f"{pipeline}-{run_id}{'-full' if full else ''}.log"
    fallback = _UNSAFE_NAME.sub("_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


# --- live: server-sent events --------------------------------------------------------------

STREAM_POLL_S = 0.2
HEARTBEAT_S = 15.0
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events: ``log`` (text of new whole lines; ``id`` is "
        'the byte offset after them), ``metrics`` (``{"from", "samples"}``), ``run`` '
        '(``{"status"}`` while active), and ``status`` (``LogStreamStatusOut``) when '
        "the run has ended, after which the stream closes.",
        "content": {
            "text/event-stream": {"schema": {"type": "string"}},
            # the JSON ``data`` of the closing ``status`` event, for clients and generators
            "application/json": {"schema": {"$ref": "#/components/schemas/LogStreamStatusOut"}},
        },
    }
}
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _sse(event: str, data: str, event_id: int | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    body = "".join(f"data: {part}\n" for part in _LINE_BREAK.split(data))
    return (head + body + "\n").encode("utf-8")


# an SSE data field cannot hold a carriage return (it ends the field, as a line feed
# does): a log's CR (a progress bar's) is sent as U+240D, which the run page turns back
CR_IN_SSE = "\u240d"


def _format(ev: logstream.Event, settings: Settings) -> bytes:
    if isinstance(ev, logstream.LogChunk):
        return _sse("log", ev.text.replace("\r", CR_IN_SSE), ev.end)
    if isinstance(ev, logstream.Samples):
        return _sse("metrics", json.dumps({"from": ev.first, "samples": ev.samples}))
    if isinstance(ev, logstream.StatusChanged):
        return _sse("run", json.dumps({"status": ev.status}))
    reason = public_text(ev.failure_reason, settings) if ev.failure_reason else None
    payload = {"status": ev.status, "exit_code": ev.exit_code, "failure_reason": reason}
    return _sse("status", json.dumps(payload, ensure_ascii=False))


async def _events(follower: logstream.Follower, settings: Settings) -> AsyncGenerator[bytes, None]:
    """Poll the follower (file reads and the status query off the event loop) every
    ``STREAM_POLL_S`` until the run ends or the client goes (the task is cancelled)."""
    try:
        yield b"retry: 1000\n\n"
        quiet = 0.0
        while True:
            try:
                events = await run_in_threadpool(follower.poll)
            except FastflowError as e:
                yield _sse("log-error", json.dumps({"detail": public_text(str(e), settings)}))
                return
            if events:
                yield b"".join(_format(ev, settings) for ev in events)
                quiet = 0.0
            if follower.done:
                return
            if follower.more:
                continue
            await asyncio.sleep(STREAM_POLL_S)
            quiet += STREAM_POLL_S
            if quiet >= HEARTBEAT_S:
                yield b": keep-alive\n\n"
                quiet = 0.0
    finally:
        follower.close()


@router.get(
    "/runs/{run_id}/logs/stream",
    response_class=StreamingResponse,
    response_model=LogStreamStatusOut,
    responses=STREAM_RESPONSES,
)
async def stream_logs(
    run_id: RunIdDep,
    ctx: CtxDep,
    offset: Annotated[int, Query(ge=0, description="Byte offset to start from.")] = 0,
    metrics: bool = True,
    last_event_id: Annotated[str | None, Header(description="Resume after this offset.")] = None,
) -> StreamingResponse:
    """The run's new log bytes as server-sent events while it runs, from ``offset`` (or
    from ``Last-Event-ID``, the ``id`` of the last ``log`` event received: nothing is
    lost or repeated); ``metrics`` events with new CPU/RAM samples (all of them first);
    ``run`` events when an active run changes status; a ``status`` event when the run
    has ended, then the stream closes (a browser's ``EventSource`` must be closed on it,
    or it reconnects). Line breaks (``\\r`` included) separate ``data:`` lines."""
    start = offset
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not text.isdigit():
            raise InvalidInput(f"Last-Event-ID {text[:40]!r} is not a byte offset")
        start = int(text)
    # an unknown id is a 404 here too, not a stream of ``log-error`` events that an
    # ``EventSource`` reconnects to every second (an outside audit)
    found = await run_in_threadpool(readback.locate, ctx, run_id)
    if found.run is None and found.entry is None:
        raise RunNotFound(f"run {run_id} not found")
    follower = logstream.Follower(ctx, run_id, start, metrics=metrics)
    return StreamingResponse(
        _events(follower, ctx.settings),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/runs/{run_id}/metrics", response_model=MetricSampleListOut)
def get_metrics(run_id: RunIdDep, ctx: CtxDep) -> JSONResponse:
    """The run's CPU/RAM samples."""
    return JSONResponse(runviews.metrics(ctx, run_id))


@router.post("/runs/{run_id}/cancel", response_model=CancelOut)
def cancel_run(_: AdminDep, run_id: RunIdDep, launcher: LauncherDep) -> dict[str, object]:
    """Cancel a run: a QUEUED one at once; a running one on whichever process executes it
    (its process tree is stopped within seconds). 409 when it already finished.
    ``outcome``: ``cancelled`` (it never started) or ``requested`` (it is being stopped;
    it may still end otherwise if it finishes first — its status tells)."""
    outcome = launcher.cancel(run_id)
    if outcome == "finished":
        raise RunAlreadyFinished(f"run {run_id} has already finished")
    return {"cancelled": True, "outcome": outcome}


@router.get("/archive", response_model=ArchiveEntryListOut)
def list_archive(
    ctx: CtxDep,
    _: PrincipalDep,
    pipeline_name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JSONResponse:
    """Archive ledger entries, newest first."""
    return JSONResponse(runviews.list_archive(ctx, pipeline_name, limit, offset))
