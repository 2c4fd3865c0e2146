"""The log search and live log of the web UI in a real headless Chromium against a real
``fastflow serve``: lines and CPU/RAM samples arrive through server-sent events while the
run is RUNNING (no polling); the run page's search box (highlights, count, next/previous,
jump to line; a log larger than the page's window is searched by the server and shown
around each match); the Search page, grouped by run, linking into the log at the line."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import MakePipeline, run_cli
from tests.web.test_ui import PASSWORD, Server
from tests.web.test_ui_run_chart import admin_token, api, browse, shot

TICKER = """\
import time
end = time.time() + 12
i = 0
while time.time() < end:
    print(f"tick {i:04d}", flush=True)
    t = time.time() + 0.05
    while time.time() < t:
        sum(range(2000))  # some CPU for the chart
    i += 1
"""
# 3,000 lines of ~180 bytes: larger than the page's 200 KB window; needles at 100, 1500, 2990
BIG = """\
for i in range(1, 3001):
    if i in (100, 1500, 2990):
        print(f"line {i:04d} the NEEDLE at {i}")
    else:
        print(f"line {i:04d} " + "filler " * 22)
"""
SMALL = "for i in range(1, 11):\n    print(f'row {i}' + (' needle' if i in (2, 5, 9) else ''))\n"


def _line_of(server: Server, run_id: str, ending: str) -> int:
    """The number of the log line that ends with ``ending`` (the log starts with the
    ``[env]`` lines of the pipeline's environment)."""
    text = api(server, "GET", f"/api/runs/{run_id}/logs").text
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.endswith(ending))


def _needle(i: int) -> re.Pattern[str]:
    """The text of the log line with the needle of output line ``i`` (after its stamp)."""
    return re.compile(rf"^\[[^\]]+\] line {i:04d} the NEEDLE at {i}$")


def _run_id(res: Any) -> str:
    assert res.returncode == 0, res.stderr
    return str(res.stdout.strip().splitlines()[-1])


@pytest.fixture
def server(ff_env: dict[str, str], make_pipeline: MakePipeline, tmp_path: Path) -> Iterator[Server]:
    from tests.harness.serve import fastflow_serve

    make_pipeline("ticker", TICKER)
    make_pipeline("big", BIG)
    make_pipeline("small", SMALL)
    env = {**os.environ, **ff_env}
    res = run_cli("user", "create", "admin", "--role", "admin", env=env, input=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    env["UI_TEST_TOKEN"] = admin_token(env)
    env["BIG_RUN"] = _run_id(run_cli("run", "big", env=env))
    env["SMALL_RUN"] = _run_id(run_cli("run", "small", env=env))
    with fastflow_serve(env) as url:
        yield Server(url, env)


def test_live_lines_and_samples_arrive_while_the_run_is_running(server: Server) -> None:
    def body(page: Any, server: Server) -> None:
        res = api(server, "POST", "/api/pipelines/ticker/run")
        assert res.status_code == 202, res.text
        run_id = res.json()["run_id"]
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        loaded = page.goto(f"{server.url}/runs/{run_id}")
        # the status the page was rendered with: a QUEUED run has no log to fetch yet, so
        # its page takes every line from the stream; a RUNNING one fetches the tail once
        first = re.search(r'data-status="([A-Z]+)"', loaded.text())
        assert first and first[1] in ("QUEUED", "PENDING", "RUNNING"), first
        expect(page.locator("#run-status .st-running")).to_be_visible(timeout=60_000)
        view = page.locator("#log-view")
        expect(view).to_contain_text("tick 0005", timeout=30_000)
        expect(view).to_contain_text("tick 0080", timeout=30_000)  # later lines, same page
        chart = page.locator("#metrics-chart")
        expect(chart).to_have_attribute("data-samples", re.compile(r"^([2-9]|\d{2,})$"))
        assert api(server, "GET", f"/api/runs/{run_id}").json()["status"] == "RUNNING"
        expect(page.locator("#run-status .st-running")).to_be_visible()
        ticks = re.findall(r"tick (\d{4})", view.text_content())
        assert ticks == [f"{i:04d}" for i in range(len(ticks))]  # each once, in order
        shot(page, "run-live")
        page_requests = [u for u in requests if f"/api/runs/{run_id}" in u]
        assert sum("/logs/stream" in u for u in page_requests) == 1
        assert not any(u.endswith("/metrics") for u in page_requests)  # no polling
        assert sum("tail_bytes=" in u for u in page_requests) == (0 if first[1] == "QUEUED" else 1)
        expect(page.locator("#run-status .st-success")).to_be_visible(timeout=60_000)

    browse(server, body)


def test_search_box_on_a_log_shown_whole(server: Server) -> None:
    run = server.env["SMALL_RUN"]
    n2, n5, n9, n7 = (
        _line_of(server, run, f"row {i}{x}")
        for i, x in ((2, " needle"), (5, " needle"), (9, " needle"), (7, ""))
    )

    def body(page: Any, server: Server) -> None:
        page.goto(f"{server.url}/runs/{run}")
        view = page.locator("#log-view")
        expect(view).to_contain_text("row 10")
        page.fill("#log-search-q", "NEEDLE")
        count = page.locator("#log-search-count")
        expect(count).to_have_text(f"1 of 3 matches · line {n2}")
        expect(view.locator("mark")).to_have_count(3)
        expect(view.locator("mark.current")).to_have_count(1)
        page.click("#log-search-next")
        expect(count).to_have_text(f"2 of 3 matches · line {n5}")
        page.click("#log-search-prev")
        page.click("#log-search-prev")
        expect(count).to_have_text(f"3 of 3 matches · line {n9}")  # wraps around
        page.press("#log-search-q", "Enter")
        expect(count).to_have_text(f"1 of 3 matches · line {n2}")
        assert "row 1\n" in view.text_content()  # marks leave the text as it is
        page.fill("#log-goto", str(n7))
        page.click("#log-goto-go")
        expect(page.locator("#log-target")).to_contain_text("row 7")
        page.fill("#log-search-q", "nowhere to be found")
        expect(count).to_have_text("no match")
        expect(view.locator("mark")).to_have_count(0)
        shot(page, "run-search-small")

    browse(server, body)


def test_search_box_on_a_large_log_pages_around_each_match(server: Server) -> None:
    big = server.env["BIG_RUN"]
    k = _line_of(server, big, "line 0001 " + "filler " * 22) - 1  # lines before the output

    def n(line: int) -> str:
        return f"{line + k:,}"

    def body(page: Any, server: Server) -> None:
        page.goto(f"{server.url}/runs/{big}")
        view = page.locator("#log-view")
        expect(view).to_contain_text("line 3000")
        expect(page.locator("#log-info")).to_contain_text("showing the last")
        page.fill("#log-search-q", "needle")
        count = page.locator("#log-search-count")
        expect(count).to_have_text(f"1 of 3 matching lines · line {n(100)}")
        expect(page.locator("#log-target")).to_have_text(_needle(100))
        expect(page.locator("#log-target mark")).to_have_text("NEEDLE")
        expect(page.locator("#log-info")).to_contain_text(f"lines {n(0)}–{n(199)} of the log")
        assert "line 3000" not in view.text_content()  # a window, not the whole log
        page.click("#log-search-next")
        expect(count).to_have_text(f"2 of 3 matching lines · line {n(1500)}")
        expect(page.locator("#log-target")).to_have_text(_needle(1500))
        expect(page.locator("#log-info")).to_contain_text(f"lines {n(1400)}–{n(1599)} of the log")
        shot(page, "run-search-window")
        page.click("#log-back")
        expect(view).to_contain_text("line 3000")
        expect(page.locator("#log-back")).to_be_hidden()
        page.fill("#log-goto", str(2500 + k))
        page.press("#log-goto", "Enter")
        expect(page.locator("#log-target")).to_contain_text("line 2500 filler")
        # a link to a line opens the page there, with the search filled in
        page.goto(f"{server.url}/runs/{big[:8]}?q=needle#L{2990 + k}")
        expect(page.locator("#log-target")).to_have_text(_needle(2990))
        expect(page.locator("#log-search-q")).to_have_value("needle")
        expect(count).to_have_text(f"3 of 3 matching lines · line {n(2990)}")

    browse(server, body)


def test_search_page_groups_results_by_run_and_links_to_the_line(server: Server) -> None:
    big_run = server.env["BIG_RUN"]
    lines = [str(_line_of(server, big_run, f"the NEEDLE at {i}")) for i in (100, 1500, 2990)]

    def body(page: Any, server: Server) -> None:
        page.goto(f"{server.url}/search")
        page.fill("#search-q", "needle")
        page.click("#search-go")
        page.wait_for_url(re.compile(r".*/search\?q=needle.*"))
        status = page.locator("#search-status-line.done")
        expect(status).to_have_text("6 matches in 2 runs")
        groups = page.locator(".search-run")
        expect(groups).to_have_count(2)
        small = page.locator(f'.search-run[data-run-id="{server.env["SMALL_RUN"]}"]')
        big = page.locator(f'.search-run[data-run-id="{server.env["BIG_RUN"]}"]')
        expect(small.locator("li")).to_have_count(3)
        expect(big.locator("li .ln")).to_have_text(lines)
        expect(big.locator("li mark").first).to_have_text("NEEDLE")
        expect(groups.first).to_have_attribute("data-run-id", server.env["SMALL_RUN"])  # newest
        shot(page, "search-page")
        big.locator("li .ln", has_text=lines[1]).click()
        page.wait_for_url(re.compile(rf".*/runs/.*\?q=needle#L{lines[1]}$"))
        expect(page.locator("#log-target")).to_have_text(_needle(1500))
        page.goto(f"{server.url}/search?q=(a|aa&regex=true")
        expect(page.locator("#search-status-line.done")).to_contain_text(
            "Search failed: invalid regular expression"
        )

    browse(server, body, start="/search")


TURKISH = "print('city: İstanbul')\nfor i in range(1, 6):\n    print(f'step {i}: ERROR code {i}')\n"


def test_a_letter_whose_lower_case_is_longer_does_not_stop_the_search(
    server: Server, make_pipeline: MakePipeline
) -> None:
    """An outside audit: one "İ" (two characters in lower case) anywhere in the page's
    log made its search box answer "no match" for every text."""
    make_pipeline("turkish", TURKISH)
    run = _run_id(run_cli("run", "turkish", env=server.env))
    first = _line_of(server, run, "step 1: ERROR code 1")

    def body(page: Any, server: Server) -> None:
        page.goto(f"{server.url}/runs/{run}")
        view = page.locator("#log-view")
        expect(view).to_contain_text("İstanbul")
        page.fill("#log-search-q", "error")
        expect(page.locator("#log-search-count")).to_have_text(f"1 of 5 matches · line {first}")
        expect(view.locator("mark")).to_have_count(5)
        page.fill("#log-search-q", "STANBUL")
        expect(page.locator("#log-search-count")).to_have_text(f"1 of 1 matches · line {first - 1}")
        expect(view.locator("mark")).to_have_text(["stanbul"])
        # the Search page highlights in such a line too
        page.goto(f"{server.url}/search?q=stanbul")
        expect(page.locator("#search-status-line.done")).to_have_text("1 match in 1 run")
        expect(page.locator(".search-run li mark")).to_have_text(["stanbul"])

    browse(server, body)


def test_a_regex_result_links_to_its_line(server: Server) -> None:
    """An outside audit: a regular expression's result linked to the run page with the
    pattern in its plain-text search box, which found nothing and dropped the line."""
    big_run = server.env["BIG_RUN"]
    line = str(_line_of(server, big_run, "the NEEDLE at 1500"))

    def body(page: Any, server: Server) -> None:
        page.goto(f"{server.url}/search?q=NEEDL.%20at%201500&regex=true")
        expect(page.locator("#search-status-line.done")).to_have_text("1 match in 1 run")
        page.locator(".search-run li .ln", has_text=line).click()
        page.wait_for_url(re.compile(rf".*/runs/{big_run}#L{line}$"))
        expect(page.locator("#log-target")).to_have_text(_needle(1500))
        # a plain-text link whose search finds nothing there still opens at its line
        page.goto(f"{server.url}/runs/{big_run}?q=nowhere#L{line}")
        expect(page.locator("#log-target")).to_have_text(_needle(1500))

    browse(server, body, start="/search")
