"""The run page in a real headless Chromium against a real `fastflow serve`: the CPU/RAM
chart fills while the run is live, draws a single sample as a point and has axes with
units; the log tail starts at a line; "Load earlier" shows only when there is more.

Also the shared ``browse`` helper of the browser tests in this folder that need a
Playwright instance of their own (one per thread: the session browser of
tests/web/test_ui.py may hold the main thread's)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import MakePipeline, run_cli
from tests.harness.serve import fastflow_serve
from tests.web.test_ui import CHROMIUM, CHROMIUM_ARGS, PASSWORD, SCREENSHOTS, Server

Body = Callable[[Any, Server], None]

# one line is 26 bytes of timestamp + 143 + newline = 170 bytes; 204,800 (the viewer's
# window) is not a multiple of 170, so the window starts in the middle of a line (and of
# a two-byte "ü": the tail must not begin with a broken character either)
BIG_LOG = "for i in range(3000):\n    print(f'line {i:05d} ' + 'ü' * 44 + 'x' * 44)\n"
LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] line \d{5} ü{44}x{44}$")


def browse(server: Server, body: Body, start: str = "/runs") -> None:
    """Run ``body(page, server)`` with a page of a fresh headless Chromium logged in as
    ``admin`` (at ``start``), in a thread of its own; its exception is raised here."""
    if not Path(CHROMIUM).exists():
        message = "Debian chromium is missing (make test installs it: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    failed: list[BaseException] = []
    thread = threading.Thread(target=_browse, args=(server, body, start, failed), daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def _browse(server: Server, body: Body, start: str, failed: list[BaseException]) -> None:
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 860})
                page = context.new_page()
                page.set_default_timeout(20_000)
                page.goto(server.url + start)
                page.fill("input[name=username]", "admin")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url(re.compile(".*" + re.escape(start) + "$"))
                body(page, server)
            finally:
                browser.close()
    except BaseException as e:  # raised again in the test's thread
        failed.append(e)


def shot(page: Any, name: str) -> None:
    """A screenshot into ``FASTFLOW_SCREENSHOTS`` when that is set."""
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def admin_token(env: dict[str, str]) -> str:
    res = run_cli("token", "create", "--name", "ui-test", "--role", "admin", env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def api(server: Server, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": "Bearer " + server.env["UI_TEST_TOKEN"]}
    return httpx.request(method, server.url + path, headers=headers, timeout=60, **kwargs)


def _run_id(res: Any) -> str:
    assert res.returncode == 0, res.stderr
    return str(res.stdout.strip().splitlines()[-1])


@pytest.fixture
def server(ff_env: dict[str, str], make_pipeline: MakePipeline, tmp_path: Path) -> Iterator[Server]:
    gate = tmp_path / "gate"
    make_pipeline(
        "busy",  # burns CPU and holds 20 MB until the test opens the gate (60 s at most)
        "import pathlib, time\nblob = bytearray(20 * 1024 * 1024)\nend = time.time() + 60\n"
        f"while not pathlib.Path({str(gate)!r}).exists() and time.time() < end:\n"
        "    sum(range(20000))\nprint('released')\n",
    )
    make_pipeline("quick", "print('done')\n")
    make_pipeline(  # a progress bar's CRs, live until the gate opens
        "bar",
        "import pathlib, time\nprint('10%\\r50%\\rbar done', flush=True)\nend = time.time() + 60\n"
        f"while not pathlib.Path({str(gate)!r}).exists() and time.time() < end:\n"
        "    time.sleep(0.05)\nprint('after the bar')\n",
    )
    make_pipeline("big", BIG_LOG)
    env = {**os.environ, **ff_env, "UI_TEST_GATE": str(gate)}
    res = run_cli("user", "create", "admin", "--role", "admin", env=env, input=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    env["UI_TEST_TOKEN"] = admin_token(env)
    try:
        with fastflow_serve(env) as url:
            yield Server(url, env)
    finally:
        gate.write_text("go")  # never leave a busy run behind


def test_the_chart_fills_while_the_run_is_running(server: Server) -> None:
    browse(server, _chart_fills_while_the_run_is_running)


def _chart_fills_while_the_run_is_running(page: Any, server: Server) -> None:
    res = api(server, "POST", "/api/pipelines/busy/run")
    assert res.status_code == 202, res.text
    run_id = res.json()["run_id"]
    page.goto(f"{server.url}/runs/{run_id}")
    expect(page.locator("#run-status .st-running")).to_be_visible(timeout=60_000)
    chart = page.locator("#metrics-chart")
    # samples come every 2 s: wait for two, live, without reloading the page
    expect(chart).to_have_attribute("data-samples", re.compile(r"^([2-9]|\d{2,})$"), timeout=30_000)
    assert api(server, "GET", f"/api/runs/{run_id}").json()["status"] == "RUNNING"
    expect(page.locator("#run-status .st-running")).to_be_visible()  # the same page, live
    assert chart.locator("polyline.series.cpu").count() == 1
    assert chart.locator("polyline.series.ram").count() == 1
    assert chart.locator("circle.point.ram").count() >= 2
    for title in ("time (s)", "CPU %", "RAM MiB"):
        expect(chart.locator("text.axis-title", has_text=title)).to_have_count(1)
    expect(chart.locator("text.tick.time")).not_to_have_count(0)
    expect(chart.locator("text.tick.cpu", has_text=re.compile(r"^100$"))).to_have_count(1)
    expect(page.locator("#metrics-info")).to_contain_text("MiB")
    shot(page, "run-chart-live")
    Path(server.env["UI_TEST_GATE"]).write_text("go")
    expect(page.locator("#run-status .st-success")).to_be_visible(timeout=60_000)
    expect(chart).to_have_attribute("data-samples", re.compile(r"^([3-9]|\d{2,})$"))


def test_a_single_sample_is_drawn_as_a_point(server: Server) -> None:
    run_id = _run_id(run_cli("run", "quick", env=server.env))
    samples = api(server, "GET", f"/api/runs/{run_id}/metrics").json()
    assert len(samples) == 1  # a run shorter than the sampling interval: the exit sample

    def body(page: Any, server: Server) -> None:
        page.goto(f"{server.url}/runs/{run_id}")
        chart = page.locator("#metrics-chart")
        expect(chart).to_have_attribute("data-samples", "1")
        expect(chart.locator("circle.point.cpu")).to_have_count(1)
        expect(chart.locator("circle.point.ram")).to_have_count(1)
        expect(chart.locator("text.axis-title")).to_have_count(3)
        expect(page.locator("#metrics-info")).to_contain_text("1 sample ·")
        shot(page, "run-chart-one-sample")

    browse(server, body)


def test_the_log_tail_starts_at_a_line_and_load_earlier_reads_the_rest(server: Server) -> None:
    big = _run_id(run_cli("run", "big", env=server.env))
    small = _run_id(run_cli("run", "quick", env=server.env))
    full = api(server, "GET", f"/api/runs/{big}/logs").content
    window = 200 * 1024
    assert len(full) > 2 * window
    assert full[len(full) - window - 1] != ord("\n")  # the window starts mid-line
    lines = full.decode().splitlines()

    def body(page: Any, server: Server) -> None:
        page.goto(f"{server.url}/runs/{small}")
        expect(page.locator("#log-view")).to_contain_text("done")
        expect(page.locator("#log-earlier")).to_be_hidden()  # nothing earlier to load

        page.goto(f"{server.url}/runs/{big}")
        view = page.locator("#log-view")
        expect(view).to_contain_text(lines[-1])
        shown = view.text_content().splitlines()
        assert LINE.match(shown[0]), shown[0][:80]
        assert shown == lines[-len(shown) :]  # whole lines, the newest last
        earlier = page.locator("#log-earlier")
        expect(earlier).to_be_visible()
        info = page.locator("#log-info")
        expect(info).to_contain_text("showing the last")
        before = info.text_content()
        earlier.click()
        expect(info).not_to_have_text(before)
        more = view.text_content().splitlines()
        assert len(more) > len(shown) and LINE.match(more[0]) and more == lines[-len(more) :]
        while earlier.is_visible():
            before = view.text_content()
            earlier.click()
            expect(view).not_to_have_text(before)
        expect(page.locator("#log-info")).to_contain_text("complete")
        assert view.text_content() == full.decode()

    browse(server, body)


def test_a_progress_bars_carriage_returns_stay_in_their_line_live(server: Server) -> None:
    """An outside audit: live, each CR of a line became a line break (SSE ends a data
    field at a CR), so the page showed more lines than the log has."""
    browse(server, _carriage_returns_stay_in_their_line_live)


def _carriage_returns_stay_in_their_line_live(page: Any, server: Server) -> None:
    res = api(server, "POST", "/api/pipelines/bar/run")
    assert res.status_code == 202, res.text
    run_id = res.json()["run_id"]
    page.goto(f"{server.url}/runs/{run_id}")
    view = page.locator("#log-view")
    expect(view).to_contain_text("bar done", timeout=60_000)
    assert api(server, "GET", f"/api/runs/{run_id}").json()["status"] == "RUNNING"  # live
    live = view.text_content() or ""
    assert "10%\r50%\rbar done" in live and "10%\n" not in live
    full = api(server, "GET", f"/api/runs/{run_id}/logs").text
    assert live == full  # the same lines as the log, so the same line numbers
    Path(server.env["UI_TEST_GATE"]).write_text("go")
    expect(page.locator("#run-status .st-success")).to_be_visible(timeout=60_000)
