"""Server-rendered web UI (Jinja2 + a little plain JavaScript, no external assets).

Every page needs a logged-in session; state-changing form posts carry the session's CSRF
token. Interactive parts call the JSON API with the X-CSRF-Token header.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from fastflow import accounts, notify, security
from fastflow.accounts import AuthError, Principal
from fastflow.archive import probe as s3probe
from fastflow.context import Context
from fastflow.db import settings_store
from fastflow.db.models import RunStatus
from fastflow.errors import FastflowError
from fastflow.lifecycle import records as failures
from fastflow.runs import pipelines
from fastflow.runs import store as runs
from fastflow.runs import views as runviews
from fastflow.session_cookie import SESSION_COOKIE, clear_session_cookie, set_session_cookie

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
PAGE_SIZE = 50


def _ctx(request: Request) -> Context:
    ctx = request.app.state.ctx
    assert isinstance(ctx, Context)
    return ctx


def _principal(request: Request) -> Principal | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    return accounts.session_principal(_ctx(request).db, cookie) if cookie else None


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


def _render(request: Request, name: str, principal: Principal, **data: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, {"user": principal, "active": name.split(".")[0], **data}
    )


def _safe_next(target: str | None) -> str:
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/runs"
    return target


def install(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str | None = None) -> Response:
        ctx = _ctx(request)
        return templates.TemplateResponse(
            request,
            "login.html",
            {
                "next": _safe_next(next),
                "error": None,
                "no_users": accounts.count_users(ctx.db) == 0,
            },
        )

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_submit(
        request: Request,
        username: str = Form(""),
        password: str = Form(""),
        next: str = Form("/runs"),
    ) -> Response:
        ctx = _ctx(request)
        try:
            token, _ = accounts.login(ctx.db, username, password)
        except AuthError as e:
            return templates.TemplateResponse(
                request,
                "login.html",
                {"next": _safe_next(next), "error": str(e), "no_users": False},
                status_code=401,
            )
        response = RedirectResponse(_safe_next(next), status_code=303)
        set_session_cookie(response, token, request)
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf_token: str = Form("")) -> Response:
        principal = _principal(request)
        cookie = request.cookies.get(SESSION_COOKIE)
        if (
            principal
            and cookie
            and principal.csrf_token
            and security.same(csrf_token, principal.csrf_token)
        ):
            accounts.logout(_ctx(request).db, cookie)
        response = RedirectResponse("/login", status_code=303)
        clear_session_cookie(response)
        return response

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/runs", status_code=303)

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs_page(
        request: Request, pipeline: str | None = None, status: str | None = None, page: int = 1
    ) -> Response:
        principal = _principal(request)
        if principal is None:
            return _login_redirect(request)
        ctx = _ctx(request)
        page = max(1, page)
        rows = runviews.list_views(
            ctx,
            pipeline=pipeline or None,
            status=status or None,
            limit=PAGE_SIZE + 1,
            offset=(page - 1) * PAGE_SIZE,
        )
        names = sorted({p.name for p in pipelines.discover(ctx.settings.pipelines_dir)})
        return _render(
            request,
            "runs.html",
            principal,
            runs=rows[:PAGE_SIZE],
            has_next=len(rows) > PAGE_SIZE,
            page=page,
            pipeline=pipeline or "",
            status=status or "",
            pipeline_names=names,
            statuses=[s.value for s in RunStatus],
        )

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def run_page(request: Request, run_id: str) -> Response:
        principal = _principal(request)
        if principal is None:
            return _login_redirect(request)
        ctx = _ctx(request)
        try:
            run = runviews.get_view(ctx, uuid.UUID(run_id))
        except (ValueError, FastflowError) as e:
            message = str(e) if isinstance(e, FastflowError) else f"{run_id!r} is not a run id"
            return templates.TemplateResponse(
                request,
                "error.html",
                {"user": principal, "active": "runs", "message": message},
                status_code=404,
            )
        return _render(request, "run.html", principal, run=run)

    @app.get("/pipelines", response_class=HTMLResponse, include_in_schema=False)
    def pipelines_page(request: Request) -> Response:
        principal = _principal(request)
        if principal is None:
            return _login_redirect(request)
        ctx = _ctx(request)
        items = []
        for p in pipelines.discover(ctx.settings.pipelines_dir):
            last = runs.list_runs(ctx.db, pipeline=p.name, limit=1)
            items.append({"pipeline": p, "last": last[0] if last else None})
        return _render(request, "pipelines.html", principal, items=items)

    @app.get("/archive", response_class=HTMLResponse, include_in_schema=False)
    def archive_page(request: Request, pipeline: str | None = None, page: int = 1) -> Response:
        principal = _principal(request)
        if principal is None:
            return _login_redirect(request)
        ctx = _ctx(request)
        page = max(1, page)
        entries = runviews.list_archive(
            ctx, pipeline or None, PAGE_SIZE + 1, (page - 1) * PAGE_SIZE
        )
        return _render(
            request,
            "archive.html",
            principal,
            entries=entries[:PAGE_SIZE],
            has_next=len(entries) > PAGE_SIZE,
            page=page,
            pipeline=pipeline or "",
        )

    @app.get("/settings", response_class=HTMLResponse, include_in_schema=False)
    def settings_page(request: Request) -> Response:
        principal = _principal(request)
        if principal is None:
            return _login_redirect(request)
        ctx = _ctx(request)
        overrides = settings_store.load_overrides(ctx.db, ctx.base)
        view = settings_store.public_view(ctx.settings, set(overrides))
        last = failures.last_backup_at(ctx)
        notes = notify.last_results(ctx)
        return _render(
            request,
            "settings.html",
            principal,
            s=view,
            last_backup_at=last.isoformat() if last else None,
            last_s3_test=s3probe.last(ctx.db),
            passes=failures.recent_passes(ctx, 10),
            failures=[f for f in failures.recent_failures(ctx, 100) if not f["resolved_at"]],
            notifications=notes,
        )
