"""The "Search" page: find text across the logs of many runs. The form's values are the
page's query (a search can be bookmarked and shared); ``search.js`` streams the results
from ``/api/search`` and groups them by run, each line linking to the run page at that
line (``/runs/{id}?q=TEXT#L{line}``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from fastflow.db.models import RunStatus
from fastflow.runs import crosssearch, pipelines
from fastflow.web.pages import PageUserDep, _ctx
from fastflow.web.render import render

router = APIRouter(include_in_schema=False)


@router.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request,
    user: PageUserDep,
    q: str = "",
    pipeline: str = "",
    since: str = "",
    until: str = "",
    status: str = "",
    regex: bool = False,
    case_sensitive: bool = False,
    limit: Annotated[int, Query(ge=1, le=crosssearch.MAX_LIMIT)] = crosssearch.DEFAULT_LIMIT,
) -> Response:
    """The search form (filled from the query) and, with ``q``, its results."""
    names = sorted({p.name for p in pipelines.discover(_ctx(request).settings.pipelines_dir)})
    if pipeline and pipeline not in names:
        names.append(pipeline)  # a pipeline whose folder is gone still has logs
    return render(
        request,
        "search.html",
        user,
        q=q,
        pipeline=pipeline,
        since=since,
        until=until,
        status=status.upper(),
        regex=regex,
        case_sensitive=case_sensitive,
        limit=limit,
        pipeline_names=names,
        statuses=[s.value for s in RunStatus],
    )
