"""The Archive page in a real headless Chromium against a real `fastflow serve` and a real
S3 server: the pipeline filter is a dropdown of every pipeline (found now or named in the
archive), it keeps listing them all while filtering, and the size column never wraps."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import expect

from fastflow.config import load_settings
from fastflow.context import bootstrap
from fastflow.db.models import utcnow
from tests.conftest import MakePipeline, run_cli
from tests.harness.fixtures import S3Env
from tests.harness.serve import fastflow_serve
from tests.seeding import seed_run
from tests.web.test_ui import PASSWORD, Server
from tests.web.test_ui_run_chart import admin_token, api, browse, shot

GONE = "quarterly-reports-of-the-finance-department"  # archived; its folder is gone


@pytest.fixture
def server(ff_env: dict[str, str], s3: S3Env, make_pipeline: MakePipeline) -> Iterator[Server]:
    make_pipeline("ingest")
    make_pipeline("fresh")  # found, never run: nothing archived
    ctx = bootstrap(load_settings())
    try:
        for pipeline, n in (("ingest", 2), (GONE, 1)):
            for i in range(n):
                seed_run(ctx, pipeline, utcnow() - timedelta(days=10, minutes=i))
    finally:
        ctx.db.dispose()
    env = {
        **os.environ,
        **ff_env,
        **s3.env(),
        "LOG_RETENTION_DAYS": "1",
        "LOG_RETENTION_KEEP_LAST_SUCCESS": "false",  # all three are due
    }
    res = run_cli("user", "create", "admin", "--role", "admin", env=env, input=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    env["UI_TEST_TOKEN"] = admin_token(env)
    with fastflow_serve(env) as url:
        server = Server(url, env)
        summary = api(server, "POST", "/api/settings/cleanup/force")
        summary.raise_for_status()
        assert summary.json()["archived_runs"] == 3
        yield server


def test_the_pipeline_filter_is_a_dropdown_and_sizes_do_not_wrap(server: Server) -> None:
    browse(server, _pipeline_filter_and_sizes, start="/archive")


def _pipeline_filter_and_sizes(page: Any, server: Server) -> None:
    page.set_viewport_size({"width": 1000, "height": 800})
    rows = page.locator("#archive-table tbody tr")
    expect(rows).to_have_count(3)
    select = page.locator("select#archive-pipeline[name=pipeline]")
    expect(select).to_have_attribute("data-loaded", "3")  # the names from the API
    expect(select.locator("option")).to_have_text(["all", "fresh", "ingest", GONE])
    expect(select).to_have_value("")

    select.select_option("ingest")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r".*/archive\?pipeline=ingest$"))
    expect(rows).to_have_count(2)
    expect(select).to_have_attribute("data-loaded", "3")  # the other names stay listed
    expect(select.locator("option")).to_have_text(["all", "fresh", "ingest", GONE])
    expect(select).to_have_value("ingest")

    select.select_option(GONE)
    page.click("form.filters button[type=submit]")
    expect(rows).to_have_count(1)
    size = rows.first.locator("td.size")
    expect(size).to_have_css("white-space", "nowrap")
    expect(size).to_have_text(re.compile(r"^\d+(\.\d)? (B|KB|MB)$"))
    box = size.locator("span").bounding_box()
    assert box is not None and box["height"] < 30, box  # one line (14 px font), not two
    shot(page, "archive")
