"""Log in and out with a username and password (browser sessions)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from fastflow import accounts
from fastflow.api.deps import SESSION_COOKIE, CtxDep, PrincipalDep

router = APIRouter(prefix="/api/auth", tags=["auth"])


class Credentials(BaseModel):
    username: str
    password: str


def set_session_cookie(response: Response, token: str, request: Request) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        path="/",
        secure=request.url.scheme == "https",
        max_age=int(accounts.SESSION_LIFETIME.total_seconds()),
    )


@router.post("/login")
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


@router.post("/logout")
def logout(request: Request, response: Response, ctx: CtxDep, _: PrincipalDep) -> dict[str, bool]:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        accounts.logout(ctx.db, cookie)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return {"ok": True}


@router.get("/me")
def me(principal: PrincipalDep) -> dict[str, Any]:
    return {
        "name": principal.name,
        "role": principal.role.value,
        "kind": principal.kind,
        "csrf_token": principal.csrf_token,
    }
