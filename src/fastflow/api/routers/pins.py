"""``/api/runs/{id}/pin``: pinned runs are never deleted or truncated (admin).

``POST`` with ``{"reason": "..."}`` pins the run (again: replaces the reason) and, with
``S3_OBJECT_LOCK_LEGAL_HOLD=true``, places legal holds on its archived objects; ``DELETE``
unpins it and lifts them. Who pinned is the caller: the user of a browser session, or
``token:<name>`` for an API token. A run whose row retention removed is pinned on its
archive ledger entry (its archived objects get the legal hold). 404 unknown run, 409
ambiguous prefix, 422 an empty or overlong reason. A legal hold that fails does not undo
the pin: it is reported in ``legal_hold.error``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from fastflow.accounts import Principal
from fastflow.api.deps import AdminDep, CtxDep
from fastflow.api.routers.runs import RunIdDep
from fastflow.api.schemas import PinIn, PinOut
from fastflow.runs import pins

router = APIRouter(prefix="/api", tags=["pins"])


def who(principal: Principal) -> str:
    """How a pin records its author: the user's name, or ``token:<name>``."""
    return principal.name


@router.post("/runs/{run_id}/pin", response_model=PinOut)
def pin_run(body: PinIn, run_id: RunIdDep, ctx: CtxDep, admin: AdminDep) -> dict[str, Any]:
    """Pin a run: it is never deleted or truncated until it is unpinned."""
    return pins.pin(ctx.db, ctx.settings, run_id, body.reason, who(admin)).to_dict()


@router.delete("/runs/{run_id}/pin", response_model=PinOut)
def unpin_run(run_id: RunIdDep, ctx: CtxDep, _: AdminDep) -> dict[str, Any]:
    """Unpin a run (nothing to do when it is not pinned): retention applies again."""
    return pins.unpin(ctx.db, ctx.settings, run_id).to_dict()
