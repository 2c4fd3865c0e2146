"""``/api/secrets``: names of the pipelines' secrets; values are write-only (admin).

Guarantees: no response contains a value — not the listing, not ``PUT``'s answer, not an
error. The body of ``PUT`` is checked here rather than by a pydantic model, because
FastAPI's validation errors echo the input they refuse.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse

from fastflow.api.deps import AdminDep, CtxDep
from fastflow.api.schemas import (
    SecretDeletedOut,
    SecretListOut,
    SecretSetOut,
    SecretValueIn,
)
from fastflow.errors import InvalidSecret
from fastflow.runs import secret_store

router = APIRouter(prefix="/api/secrets", tags=["secrets"])

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": SecretValueIn.model_json_schema()}},
    }
}


def _value(body: Any) -> str:
    """The value of a ``{"value": "..."}`` body; ``InvalidSecret`` (422) naming what is
    wrong, never repeating what was sent."""
    if not isinstance(body, dict) or "value" not in body:
        raise InvalidSecret('the body must be a JSON object {"value": "..."}')
    extra = sorted(str(k) for k in body if k != "value")
    if extra:
        raise InvalidSecret(f'the body may only hold "value" (not {len(extra)} other key(s))')
    return secret_store.check_value(body["value"])


@router.get("", response_model=SecretListOut)
def list_secrets(ctx: CtxDep, _: AdminDep) -> list[dict[str, Any]]:
    """Every stored secret: name, ``updated_at`` and the pipelines whose
    ``pipeline.json`` lists it (never a value)."""
    return [s.to_dict() for s in secret_store.overview(ctx.db, ctx.settings.pipelines_dir).secrets]


@router.put(
    "/{name}",
    response_model=SecretSetOut,
    response_model_exclude_none=True,
    openapi_extra=_BODY_DOC,
)
def put_secret(
    name: str, ctx: CtxDep, _: AdminDep, body: Annotated[Any, Body()] = None
) -> dict[str, Any]:
    """Set secret ``name`` (``[A-Z_][A-Z0-9_]*``) to ``{"value": "..."}``, replacing
    an existing value; answers the secret without its value. 422 for a bad name or value."""
    secret_store.check_name(name)
    value = _value(body)
    info = secret_store.set_secret(ctx.db, ctx.settings, name, value)
    users, _skipped = secret_store.usage(ctx.settings.pipelines_dir)
    out = secret_store.SecretListing(name, info.updated_at, users.get(name, ())).to_dict()
    warning = secret_store.unmasked_warning(name, value)
    if warning:
        out["warnings"] = [warning]
    return out


@router.delete("/{name}", response_model=SecretDeletedOut)
def delete_secret(name: str, ctx: CtxDep, _: AdminDep) -> JSONResponse | dict[str, Any]:
    """Delete secret ``name``; 404 when there is none. ``pipelines`` are those that
    still list it (their runs fail until it is set again)."""
    if not secret_store.delete_secret(ctx.db, name):
        return JSONResponse({"detail": f"no secret named {name!r}"}, status_code=404)
    users, _skipped = secret_store.usage(ctx.settings.pipelines_dir)
    return {"name": name, "deleted": True, "pipelines": list(users.get(name, ()))}
