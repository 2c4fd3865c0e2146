"""``/api/search``: find text across the logs of many runs, local and archived; and the
NDJSON streaming shared with ``/api/runs/{id}/logs?grep=``.

A search streams one JSON object per line. An error found before the first result (a bad
pattern, a regular expression cut off by its time limit on the first lines) is an
ordinary error response (422); one found later ends the stream with a last line
``{"error": "..."}``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from fastflow.api.deps import CtxDep, PrincipalDep
from fastflow.api.schemas import SearchHitOut
from fastflow.config import Settings
from fastflow.db.models import RunStatus
from fastflow.errors import FastflowError, InvalidInput
from fastflow.runs import crosssearch, logsearch
from fastflow.security import public_text

router = APIRouter(prefix="/api", tags=["search"])

NDJSON = "application/x-ndjson"
PREFETCH_S = 0.5  # how long a search may run before its response starts

T = TypeVar("T")


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n"


def ndjson(
    items: Iterator[T], to_line: Callable[[T], dict[str, Any] | None], settings: Settings
) -> Iterator[bytes]:
    """The NDJSON body of ``items`` (``to_line`` None: nothing to write for that item).
    The first items are pulled now, until a line is ready or ``PREFETCH_S`` passed, so
    that an early error raises here (an error response) instead of inside the stream."""
    head: list[bytes] = []
    deadline = time.monotonic() + PREFETCH_S
    for item in items:
        line = to_line(item)
        if line is not None:
            head.append(_dump(line))
            break
        if time.monotonic() > deadline:
            break
    return _rest(head, items, to_line, settings)


def _rest(
    head: list[bytes],
    items: Iterator[T],
    to_line: Callable[[T], dict[str, Any] | None],
    settings: Settings,
) -> Iterator[bytes]:
    # lines are sent in batches: one ASGI message (and one thread hop for this sync
    # iterator) per line made the API ~20x slower than the CLI on 300,000 matches. A
    # batch goes out at ``BATCH_BYTES``, and whenever ``to_line`` gives None (the end of
    # a block searched, a run done): a slow search still shows its hits as it goes.
    batch: list[bytes] = list(head)
    size = sum(map(len, batch))
    try:
        for item in items:
            line = to_line(item)
            if line is not None:
                data = _dump(line)
                batch.append(data)
                size += len(data)
                if size < BATCH_BYTES:
                    continue
            if batch:
                yield b"".join(batch)
                batch, size = [], 0
        if batch:
            yield b"".join(batch)
            batch = []
    except FastflowError as e:
        batch.append(_dump({"error": public_text(str(e), settings)}))
        yield b"".join(batch)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


NDJSON_HEADERS = {"Cache-Control": "no-store"}
BATCH_BYTES = 64 * 1024  # NDJSON lines sent in one piece at most (about)

SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "NDJSON: one ``SearchHitOut`` per line, newest runs first; a run "
        'that could not be read gives ``{"run_id", "pipeline_name", "started_at", '
        '"error"}``; an error after the first line ends the stream with ``{"error"}``.',
        "content": {NDJSON: {"schema": {"$ref": "#/components/schemas/SearchHitOut"}}},
    }
}


def _hit_line(
    item: crosssearch.SearchHit | crosssearch.RunSkipped | crosssearch.Progress,
) -> dict[str, Any] | None:
    if isinstance(item, crosssearch.Progress):
        return None
    return item.to_dict()


@router.get("/search", response_model=SearchHitOut, responses=SEARCH_RESPONSES)
def search_logs(
    ctx: CtxDep,
    _: PrincipalDep,
    q: Annotated[str, Query(description="Text (or with regex=true a regular expression).")],
    pipeline_name: str | None = None,
    since: Annotated[str | None, Query(description="YYYY-MM-DD[THH:MM[:SS]], UTC.")] = None,
    until: Annotated[str | None, Query(description="Exclusive; a bare date: that day.")] = None,
    status: str | None = None,
    regex: bool = False,
    case_sensitive: bool = False,
    limit: Annotated[int, Query(ge=1, le=crosssearch.MAX_LIMIT)] = crosssearch.DEFAULT_LIMIT,
) -> StreamingResponse:
    """Search the logs of the selected runs (local, or read back from the archive,
    several at a time) and stream the matching lines as NDJSON ``{"run_id",
    "pipeline_name", "started_at", "line", "text"}``, newest runs first, at most
    ``limit``. Plain text is case-insensitive unless ``case_sensitive=true``; a regular
    expression has a size cap and a time limit per line."""
    if status is not None and status.upper() not in RunStatus.__members__:
        known = ", ".join(RunStatus.__members__)
        raise InvalidInput(f"{status!r} is not a run status ({known})")
    filters = crosssearch.Filters(
        pipeline=pipeline_name or None,
        since=crosssearch.parse_when(since) if since else None,
        until=crosssearch.parse_when(until, end_of_day=True) if until else None,
        status=status.upper() if status else None,
    )
    matcher = logsearch.Matcher(q, is_regex=regex, case_sensitive=case_sensitive)
    items = crosssearch.search_runs(ctx, matcher, filters, limit=limit)
    return StreamingResponse(
        ndjson(items, _hit_line, ctx.settings), media_type=NDJSON, headers=NDJSON_HEADERS
    )
