"""Log in and out with a username and password (browser sessions)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from fastflow import accounts
from fastflow.api.deps import CtxDep, PrincipalDep
from fastflow.api.schemas import LoginOut, LogoutOut, MeOut
from fastflow.session_cookie import SESSION_COOKIE, clear_session_cookie, set_session_cookie

router = APIRouter(prefix="/api/auth", tags=["auth"])


class Credentials(BaseModel):
    username: str
    password: str


@router.post("/login", response_model=LoginOut)
def login(body: Credentials, ctx: CtxDep, request: Request, response: Response) -> dict[str, Any]:
    """Start a session; the cookie is HttpOnly and SameSite=Lax."""
    token, session = accounts.login(ctx.db, body.username, body.password)
    set_session_cookie(response, token, request)
    principal = accounts.session_principal(ctx.db, token)
    assert principal is not None
    return {
        "username": principal.name,
        "role": principal.role.value,
        "csrf_token": session.csrf_token,
    }


@router.post("/logout", response_model=LogoutOut)
def logout(request: Request, response: Response, ctx: CtxDep, _: PrincipalDep) -> dict[str, bool]:
    cookie = request.cookies.get(SESSION_COOKIE)
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
