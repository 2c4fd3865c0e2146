"""Dependency aliases: the context, the caller, and the admin check."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from fastflow import accounts, security
from fastflow.accounts import Principal
from fastflow.context import Context
from fastflow.db import cache as readcache
from fastflow.errors import AuthError, Forbidden
from fastflow.orchestration.dispatcher import Dispatcher
from fastflow.session_cookie import SESSION_COOKIE

CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# The dependencies are ``async``: a plain ``def`` dependency costs a worker-thread round
# trip per request; these only touch the database on a read-cache miss, in a worker thread.


async def get_ctx(request: Request) -> Context:
    ctx = request.app.state.ctx
    assert isinstance(ctx, Context)
    return ctx


CtxDep = Annotated[Context, Depends(get_ctx)]


def _credential(request: Request) -> tuple[str, str] | None:
    """``("token", value)`` from a Bearer header, ``("session", value)`` from the session
    cookie, or None; ``AuthError`` for a malformed Authorization header."""
    auth = request.headers.get("authorization", "")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("use 'Authorization: Bearer <token>'")
        return "token", token.strip()
    cookie = request.cookies.get(SESSION_COOKIE)
    return ("session", cookie) if cookie else None


def _key(kind: str, value: str) -> tuple[str, str]:
    return kind, security.token_hash(value)


def _lookup(ctx: Context, kind: str, value: str) -> Principal | None:
    """The principal of a credential, through the one-second read cache."""
    find = accounts.token_principal if kind == "token" else accounts.session_principal
    found: Principal | None = readcache.cached(_key(kind, value), lambda: find(ctx.db, value))
    return found


def _checked(kind: str, principal: Principal | None) -> Principal | None:
    if principal is None and kind == "token":
        raise AuthError("invalid or revoked API token")
    return principal


def principal_from(request: Request, ctx: Context) -> Principal | None:
    """The caller from a Bearer token or a session cookie, or None (for plain ``def``
    routes; the dependency below is the same without a thread round trip)."""
    cred = _credential(request)
    if cred is None:
        return None
    return _checked(cred[0], _lookup(ctx, *cred))


async def optional_principal(request: Request, ctx: CtxDep) -> Principal | None:
    """The caller from a Bearer token or a session cookie, or None."""
    cred = _credential(request)
    if cred is None:
        return None
    principal: Any = readcache.peek(_key(*cred))
    if principal is readcache.MISS:
        principal = await run_in_threadpool(_lookup, ctx, *cred)
    return _checked(cred[0], principal)


async def require_principal(
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


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Forbidden("this action needs the admin role")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]


def get_launcher(request: Request) -> Dispatcher:
    launcher = request.app.state.launcher
    assert isinstance(launcher, Dispatcher)
    return launcher


LauncherDep = Annotated[Dispatcher, Depends(get_launcher)]
