"""Log in and out with a username and password (browser sessions).

Login: refused with 403 when a browser sends it from another origin, 429 with
``Retry-After`` when throttled, 401 for wrong credentials (see
``fastflow.session_cookie.password_login``). Logout always ends the session of the cookie
it is sent with, CSRF token or not: ending a session is never dangerous.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from fastflow import accounts
from fastflow.accounts import AuthError, Principal
from fastflow.api.deps import CtxDep, PrincipalDep, optional_principal
from fastflow.api.schemas import LoginOut, LogoutOut, MeOut
from fastflow.session_cookie import (
    SESSION_COOKIE,
    clear_session_cookie,
    password_login,
    set_session_cookie,
)

router = APIRouter(prefix="/api/auth", tags=["auth"])


class Credentials(BaseModel):
    username: str
    password: str


@router.post(
    "/login",
    response_model=LoginOut,
    responses={403: {"description": "sent from another site"}, 429: {"description": "throttled"}},
)
async def login(body: Credentials, ctx: CtxDep, request: Request, response: Response) -> Any:
    """Start a session; the cookie is HttpOnly and SameSite=Lax."""
    try:
        token, principal = await password_login(
            request, ctx.db, ctx.settings.fastflow_base_url, body.username, body.password
        )
    except accounts.TooManyLogins as e:
        return JSONResponse(
            {"detail": str(e)}, status_code=429, headers={"Retry-After": str(e.retry_after)}
        )
    set_session_cookie(response, token, request)
    return {
        "username": principal.name,
        "role": principal.role.value,
        "csrf_token": principal.csrf_token,
    }


@router.post("/logout", response_model=LogoutOut)
def logout(
    request: Request,
    response: Response,
    ctx: CtxDep,
    principal: Annotated[Principal | None, Depends(optional_principal)],
) -> dict[str, bool]:
    """End the cookie's session (no CSRF token needed) and clear the cookie."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if principal is None and not cookie:
        raise AuthError("authentication required: log in or send 'Authorization: Bearer <token>'")
    if cookie:
        accounts.logout(ctx.db, cookie)
    clear_session_cookie(response)
    return {"ok": True}


@router.get("/me", response_model=MeOut)
def me(principal: PrincipalDep) -> dict[str, Any]:
    return {
        "name": principal.name,
        "role": principal.role.value,
        "kind": principal.kind,
        "csrf_token": principal.csrf_token,
    }
