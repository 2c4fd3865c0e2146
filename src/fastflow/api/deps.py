"""Dependency aliases: the context, the caller, and the admin check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fastflow import accounts, security
from fastflow.accounts import Principal
from fastflow.context import Context
from fastflow.db import cache as readcache
from fastflow.errors import AuthError, Forbidden
from fastflow.orchestration.dispatcher import Dispatcher
from fastflow.session_cookie import SESSION_COOKIE

CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_ctx(request: Request) -> Context:
    ctx = request.app.state.ctx
    assert isinstance(ctx, Context)
    return ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


def optional_principal(request: Request, ctx: CtxDep) -> Principal | None:
    """The caller from a Bearer token or a session cookie, or None."""
    auth = request.headers.get("authorization", "")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("use 'Authorization: Bearer <token>'")
        token = token.strip()
        principal: Principal | None = readcache.cached(
            ("token", security.token_hash(token)),
            lambda: accounts.token_principal(ctx.db, token),
        )
        if principal is None:
            raise AuthError("invalid or revoked API token")
        return principal
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        found: Principal | None = readcache.cached(
            ("session", security.token_hash(cookie)),
            lambda: accounts.session_principal(ctx.db, cookie),
        )
        return found
    return None


def require_principal(
    request: Request, principal: Annotated[Principal | None, Depends(optional_principal)]
) -> Principal:
    if principal is None:
        raise AuthError("authentication required: log in or send 'Authorization: Bearer <token>'")
    if principal.kind == "session" and request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not principal.csrf_token or not security.same(sent, principal.csrf_token):
            raise Forbidden("missing or wrong CSRF token (send the X-CSRF-Token header)")
    return principal


PrincipalDep = Annotated[Principal, Depends(require_principal)]


def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this action needs the admin role")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


def get_launcher(request: Request) -> Dispatcher:
    launcher = request.app.state.launcher
    assert isinstance(launcher, Dispatcher)
    return launcher


LauncherDep = Annotated[Dispatcher, Depends(get_launcher)]
