"""Webhooks: other systems queue a run of a pipeline with a key instead of a login.

``POST /api/hooks/{pipeline}`` (key in the ``X-Fastflow-Key`` header) and Fast-Flow's
``POST /api/webhooks/{pipeline}/{key}`` (key in the path) behave the same. They are the
only ``/api`` routes besides health and login without a Bearer token or session: the
key is the credential. A wrong key, no key and an unknown pipeline get the same 401.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from fastflow import strict_json
from fastflow.api.deps import CtxDep, LauncherDep
from fastflow.errors import AuthError, InvalidInput
from fastflow.orchestration import webhooks

router = APIRouter(tags=["webhooks"])
log = logging.getLogger("fastflow.api")

KEY_HEADER = "X-Fastflow-Key"
UNAUTHORIZED = "missing or wrong webhook key"
_limiter_lock = threading.Lock()


class WebhookQueuedOut(BaseModel):
    """The run a webhook call queued."""

    run_id: str
    status: str  # always QUEUED


class WebhookErrorOut(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": WebhookErrorOut, "description": "missing or wrong key, or unknown pipeline"},
    409: {
        "model": WebhookErrorOut,
        "description": "the pipeline, or the schedule whose key was used, is disabled",
    },
    400: {"model": WebhookErrorOut, "description": "the caller left before its body ended"},
    413: {"model": WebhookErrorOut, "description": "the body is larger than 1 MiB"},
    422: {"model": WebhookErrorOut, "description": "the body is not JSON"},
    429: {"model": WebhookErrorOut, "description": "rate limit; see the Retry-After header"},
}


class _TooLarge(Exception):
    pass


def _limiter(app: FastAPI) -> webhooks.RateLimiter:
    """The app's limiter (one per app, so per server process)."""
    with _limiter_lock:
        limiter = getattr(app.state, "webhook_limiter", None)
        if not isinstance(limiter, webhooks.RateLimiter):
            limiter = app.state.webhook_limiter = webhooks.RateLimiter()
        return limiter


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused (``_TooLarge``) as soon as it passes ``limit`` bytes while it is
    read; a declared Content-Length above the limit is refused before reading."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise _TooLarge
    return bytes(data)


def _payload(body: bytes) -> bytes | None:
    """The body if it is JSON in UTF-8 without a byte order mark (what a pipeline's
    ``json.load(open(path))`` reads), None when it is empty; ``InvalidInput`` otherwise
    (UTF-16/32 and a BOM included: ``json.loads`` of bytes would accept them, and the
    pipeline then failed on its payload, an outside audit found)."""
    if not body.strip():
        return None
    try:
        if body.startswith(b"\xef\xbb\xbf"):
            raise ValueError("a byte order mark")
        strict_json.loads(body.decode("utf-8"))
    except ValueError:  # also invalid UTF-8, NaN and absurd nesting
        raise InvalidInput("the request body must be JSON in UTF-8 (or empty)") from None
    return body


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _trigger(
    request: Request, ctx: CtxDep, launcher: LauncherDep, pipeline: str, key: str | None
) -> Response:
    settings = ctx.settings
    match = await run_in_threadpool(webhooks.verify, ctx.db, settings.pipelines_dir, pipeline, key)
    # right and wrong keys are counted apart: a caller without the key cannot use up
    # the pipeline's allowance, and guessing is limited just as much
    bucket = ("accepted" if match is not None else "refused", pipeline)
    wait = _limiter(request.app).hit(bucket, settings.webhook_rate_per_minute)
    if wait is not None:
        return _error(
            429,
            f"too many webhook calls for this pipeline (at most "
            f"{settings.webhook_rate_per_minute} a minute)",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )
    if match is None:
        raise AuthError(UNAUTHORIZED)
    if not match.pipeline.config.enabled:
        return _error(409, f"pipeline {match.pipeline.name!r} is disabled in its pipeline.json")
    disabled = webhooks.disabled_schedule(match)
    if disabled is not None:
        return _error(
            409,
            f"schedule {disabled!r} of pipeline {match.pipeline.name!r} (the key's run "
            "configuration) is disabled in its pipeline.json",
        )
    try:
        body = await _body(request, webhooks.MAX_PAYLOAD_BYTES)
    except _TooLarge:
        return _error(413, f"the body is larger than {webhooks.MAX_PAYLOAD_BYTES} bytes")
    except ClientDisconnect:  # no run is queued from half a body; nobody reads the answer
        log.info("webhook call for %r: the caller left before its body ended", pipeline)
        return _error(400, "the connection closed before the body was complete")
    payload = _payload(body)
    run_id = await run_in_threadpool(webhooks.queue_run, ctx.db, settings.logs_root, match, payload)
    launcher.ensure_running()
    launcher.wake()  # after the row (and its payload.json) is committed
    return JSONResponse({"run_id": str(run_id), "status": "QUEUED"}, status_code=202)


@router.post(
    "/api/hooks/{pipeline}",
    status_code=202,
    response_model=WebhookQueuedOut,
    responses=ERRORS,
)
async def hook(
    pipeline: str,
    request: Request,
    ctx: CtxDep,
    launcher: LauncherDep,
    key: Annotated[str | None, Header(alias=KEY_HEADER)] = None,
) -> Response:
    """Queue a run of ``pipeline``; the key in the ``X-Fastflow-Key`` header. An
    optional JSON body (at most 1 MiB) reaches the run as the file named by
    ``FASTFLOW_PAYLOAD``."""
    return await _trigger(request, ctx, launcher, pipeline, key)


@router.post(
    "/api/webhooks/{pipeline}/{key}",
    status_code=202,
    response_model=WebhookQueuedOut,
    responses=ERRORS,
)
async def fast_flow_hook(
    pipeline: str, key: str, request: Request, ctx: CtxDep, launcher: LauncherDep
) -> Response:
    """Fast-Flow's form: the key in the path (it may end up in proxy and access logs;
    prefer ``/api/hooks/{pipeline}`` with the header)."""
    return await _trigger(request, ctx, launcher, pipeline, key)
