"""Server-rendered web UI pages (Jinja2 via ``render``, a little plain JavaScript, no
external assets).

Every page but the login form needs a logged-in session (``PageUserDep``): without one the
browser is redirected to ``/login?next=<path>``. State-changing form posts carry the
session's CSRF token. Interactive parts call the JSON API with the X-CSRF-Token header.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from fastflow import accounts, notify
from fastflow.accounts import AuthError, Principal
from fastflow.archive import probe as s3probe
from fastflow.context import Context
from fastflow.db import settings_store
from fastflow.db.models import RunStatus, utcnow
from fastflow.errors import FastflowError, Forbidden
from fastflow.lifecycle import records as failures
from fastflow.runs import pipelines, secret_store
from fastflow.runs import store as runs_store
from fastflow.runs import views as runviews
from fastflow.session_cookie import (
    SESSION_COOKIE,
    clear_session_cookie,
    password_login,
    set_session_cookie,
)
from fastflow.web import orchestrated
from fastflow.web.render import render, render_login, render_not_found

STATIC_DIR = Path(__file__).parent / "static"
PAGE_SIZE = 50

router = APIRouter(include_in_schema=False)


# --- the logged-in user -------------------------------------------------------------


class LoginRequired(Exception):
    """A page was asked for without a logged-in session; ``install`` registers the handler
    that answers it with a redirect to the login page."""


def _ctx(request: Request) -> Context:
    ctx = request.app.state.ctx
    assert isinstance(ctx, Context)
    return ctx


def session_user(request: Request) -> Principal | None:
    """The user of the request's session cookie, if it names a live session."""
    cookie = request.cookies.get(SESSION_COOKIE)
    return accounts.session_principal(_ctx(request).db, cookie) if cookie else None


def page_user(request: Request) -> Principal:
    """Dependency: the logged-in user, else ``LoginRequired``."""
    principal = session_user(request)
    if principal is None:
        raise LoginRequired
    return principal


PageUserDep = Annotated[Principal, Depends(page_user)]


@dataclass(frozen=True)
class Listing:
    """The logged-in user of a paged list and the (1-based) page asked for."""

    user: Principal
    page: int


MAX_PAGE = 1_000_000  # beyond it the offset would overflow the database's integer


def listing(request: Request, page: Annotated[int, Query(le=MAX_PAGE)] = 1) -> Listing:
    """Dependency of the paged pages. ``page`` is declared here rather than on the view so
    that an invalid one is answered 422 before the login check: FastAPI calls a view's
    dependencies before it validates the view's own query parameters."""
    return Listing(page_user(request), max(1, page))


ListingDep = Annotated[Listing, Depends(listing)]


def login_redirect(request: Request, exc: Exception) -> Response:
    """Handler of ``LoginRequired``: 303 to ``/login?next=<path and query, quoted>``."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


def _safe_next(target: str | None) -> str:
    """A same-site path to go to after login; anything else (absolute, ``//host``) is
    replaced by ``/``, the overview."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


# --- login and logout ---------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None) -> Response:
    no_users = accounts.count_users(_ctx(request).db) == 0
    return render_login(request, _safe_next(next), error=None, no_users=no_users)


@router.post("/login", response_class=HTMLResponse)
async def login_submit(
    request: Request,
    username: str = Form(""),
    password: str = Form(""),
    next: str = Form("/"),
) -> Response:
    """The login form: 303 to ``next`` with a session cookie; else the form again with the
    reason (401 wrong credentials, 403 sent from another site, 429 throttled with
    ``Retry-After``)."""
    ctx = _ctx(request)
    target = _safe_next(next)
    try:
        token, _ = await password_login(
            request, ctx.db, ctx.settings.fastflow_base_url, username, password
        )
    except accounts.TooManyLogins as e:
        page = render_login(request, target, error=str(e), no_users=False, status_code=429)
        page.headers["Retry-After"] = str(e.retry_after)
        return page
    except Forbidden as e:
        return render_login(request, target, error=str(e), no_users=False, status_code=403)
    except AuthError as e:
        return render_login(request, target, error=str(e), no_users=False, status_code=401)
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, token, request)
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form("")) -> Response:
    """Always ends the server session and clears the cookie: logging out is not a
    dangerous action, and a session left valid after "log out" would be (the CSRF token
    is accepted but not required)."""
    del csrf_token
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        accounts.logout(_ctx(request).db, cookie)
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response)
    return response


# --- pages --------------------------------------------------------------------------


OVERVIEW_DAYS = 14


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request, user: PageUserDep) -> Response:
    """The start page: tiles and charts that ``static/overview.js`` fills from
    ``GET /api/stats/overview``."""
    return render(request, "overview.html", user, days=OVERVIEW_DAYS)


def _day(raw: str) -> tuple[date | None, str | None]:
    """The UTC day of the ``day`` filter (``YYYY-MM-DD``; empty: none), or the error."""
    if not raw.strip():
        return None, None
    try:
        day = date.fromisoformat(raw.strip())
    except ValueError:
        return None, f"{raw!r} is not a day: use YYYY-MM-DD (UTC)"
    if day >= date.max:
        return None, f"{raw!r} is out of range: give a day before 9999-12-31"
    return day, None


@router.get("/runs", response_class=HTMLResponse)
def runs_page(
    request: Request,
    paged: ListingDep,
    pipeline: str | None = None,
    status: str | None = None,
    include_archived: bool = True,
    day: str = "",
) -> Response:
    """Runs, newest first; runs whose rows retention deleted stay listed (from the
    archive ledger, marked archived) unless ``include_archived=false``; ``day``
    (``YYYY-MM-DD``) keeps the runs that started that UTC day."""
    ctx = _ctx(request)
    the_day, day_error = _day(day)
    rows = runviews.list_views(
        ctx,
        include_archived=include_archived,
        pipeline=pipeline or None,
        status=status or None,
        day=the_day,
        limit=PAGE_SIZE + 1,
        offset=(paged.page - 1) * PAGE_SIZE,
    )
    found = pipelines.discover(ctx.settings.pipelines_dir)
    names = sorted({p.name for p in found})
    return render(
        request,
        "runs.html",
        paged.user,
        runs=orchestrated.with_attempts_total(found, rows[:PAGE_SIZE]),
        has_next=len(rows) > PAGE_SIZE,
        page=paged.page,
        pipeline=pipeline or "",
        status=status or "",
        pipeline_names=names,
        statuses=[s.value for s in RunStatus],
        include_archived=include_archived,
        day=the_day.isoformat() if the_day else "",
        day_error=day_error,
    )


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str, user: PageUserDep) -> Response:
    """One run, by its full id or a unique short one (the 8 characters shown in lists)."""
    ctx = _ctx(request)
    try:
        run = runviews.get_view(ctx, runs_store.resolve_run_id(ctx.db, run_id))
    except (ValueError, FastflowError) as e:
        message = str(e) if isinstance(e, FastflowError) else f"{run_id!r} is not a run id"
        return render_not_found(request, user, message)
    return render(request, "run.html", user, run=run, **orchestrated.related(ctx, run))


@router.get("/pipelines", response_class=HTMLResponse)
def pipelines_page(request: Request, user: PageUserDep) -> Response:
    items = orchestrated.pipeline_items(_ctx(request), utcnow())
    return render(request, "pipelines.html", user, items=items)


@router.get("/pipelines/{name}", response_class=HTMLResponse)
def pipeline_page(request: Request, name: str, user: PageUserDep) -> Response:
    """One pipeline: description, schedules with their next runs, its last runs as
    bars (``static/pipeline.js``), success rate and durations, the retention in effect
    and what the next cleanup pass would do to its runs (a dry run), "Run now" and
    "Run with parameters"."""
    detail = orchestrated.pipeline_page(_ctx(request), name, utcnow())
    if detail is None:
        return render_not_found(request, user, f"pipeline {name!r} not found")
    return render(request, "pipeline.html", user, **detail)


@router.get("/archive", response_class=HTMLResponse)
def archive_page(request: Request, paged: ListingDep, pipeline: str | None = None) -> Response:
    entries = runviews.list_archive(
        _ctx(request), pipeline or None, PAGE_SIZE + 1, (paged.page - 1) * PAGE_SIZE
    )
    return render(
        request,
        "archive.html",
        paged.user,
        entries=entries[:PAGE_SIZE],
        has_next=len(entries) > PAGE_SIZE,
        page=paged.page,
        pipeline=pipeline or "",
    )


@router.get("/settings", response_class=HTMLResponse)
def settings_page(request: Request, user: PageUserDep) -> Response:
    ctx = _ctx(request)
    overrides = settings_store.load_overrides(ctx.db, ctx.base)
    view = settings_store.public_view(ctx.settings, set(overrides))
    last = failures.last_backup_at(ctx)
    notes = notify.last_results(ctx)
    return render(
        request,
        "settings.html",
        user,
        s=view,
        last_backup_at=last.isoformat() if last else None,
        last_s3_test=s3probe.last(ctx.db),
        passes=failures.recent_passes(ctx, 10),
        failures=[f for f in failures.recent_failures(ctx, 100) if not f["resolved_at"]],
        notifications=notes,
    )


@router.get("/secrets", response_class=HTMLResponse)
def secrets_page(request: Request, user: PageUserDep) -> Response:
    """Names of the pipelines' secrets, when each was set and the pipelines that list it;
    a write-only form (values are never sent to the browser). Admins only: viewers get
    a 403 page."""
    if not user.is_admin:
        refused = render(request, "secrets.html", user, forbidden=True, view=None)
        refused.status_code = 403
        return refused
    ctx = _ctx(request)
    view = secret_store.overview(ctx.db, ctx.settings.pipelines_dir)
    return render(request, "secrets.html", user, forbidden=False, view=view)


# --- wiring -------------------------------------------------------------------------


def install(app: FastAPI) -> None:
    """Add the static files, the pages and the login redirect to ``app``."""
    from fastflow.web import search_page  # it imports this module's dependencies

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.include_router(router)
    app.include_router(search_page.router)
    app.add_exception_handler(LoginRequired, login_redirect)
