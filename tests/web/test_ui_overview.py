"""The overview dashboard and the pipeline pages in a real headless Chromium (Playwright)
against a real `fastflow serve`: the start page after login, tiles equal to
``GET /api/stats/overview``, a click on a bar opens the Runs list of that day and
status, the pipeline page's figures and run bars, empty charts, the light and dark
schemes. With ``FASTFLOW_SCREENSHOTS=<dir>`` the pages are saved as overview-light.png,
overview-dark.png, pipeline-light.png and pipeline-dark.png (docs/img holds them)."""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from playwright.sync_api import expect

from fastflow.config import load_settings
from fastflow.context import bootstrap
from fastflow.db.models import DiskSample, PipelineRun, utcnow
from tests.conftest import FASTFLOW_VARS, MakePipeline, run_cli
from tests.harness.serve import fastflow_serve
from tests.web.test_ui import CHROMIUM, CHROMIUM_ARGS, PASSWORD, SCREENSHOTS, Server

FINAL = ("SUCCESS", "FAILED", "TIMEOUT", "CANCELLED")
MiB = 1024 * 1024
NEVER_SOON = (
    '"schedules": [{"cron": "0 9 1 1 *"}, {"cron": "30 6 1 7 *", "timezone": "Europe/Berlin"}]'
)
FLAKY = (
    "import pathlib, sys\nm = pathlib.Path({marker!r})\n"
    "if not m.exists():\n    m.write_text('x')\n    print('first try fails')\n    sys.exit(3)\n"
    "print('second try works')\n"
)


def _seed_history(env: dict[str, str]) -> None:
    """Runs of the last 13 days in every final status (logs of recorded size), runs too old
    for the retention, and the disk after ten past passes."""
    settings = load_settings(
        database_url=env["DATABASE_URL"],
        data_dir=env["DATA_DIR"],
        logs_dir=env["LOGS_DIR"],
        pipelines_dir=env["PIPELINES_DIR"],
    )
    ctx = bootstrap(settings)
    midnight = datetime.combine(utcnow().date(), datetime.min.time(), tzinfo=UTC)
    with ctx.db.session() as s:
        for back in range(1, 14):
            day = midnight - timedelta(days=back)
            mix = (
                ["SUCCESS"] * (6 + back % 5)
                + ["FAILED"] * (back % 3)
                + ["TIMEOUT"] * (back % 4 == 1)
                + ["CANCELLED"] * (back % 6 == 2)
            )
            for i, status in enumerate(mix):
                name = "nightly-etl" if i % 2 else "report"
                started = day + timedelta(hours=1 + i, minutes=7 * back)
                rid = uuid.uuid4()
                s.add(
                    PipelineRun(
                        id=rid,
                        pipeline_name=name,
                        status=status,
                        triggered_by="schedule",
                        started_at=started,
                        finished_at=started + timedelta(seconds=30 + 17 * i + 11 * back),
                        exit_code=0 if status == "SUCCESS" else 1,
                        log_file=f"{name}/{rid}/run.log",
                        log_size=(3 + i) * MiB + back * 77_000,
                        attempt=1,
                    )
                )
        for k in range(10):
            s.add(
                DiskSample(
                    taken_at=midnight - timedelta(days=10 - k, hours=-2),
                    pass_id=None,
                    local_log_bytes=(560 + 38 * k - (90 if k == 6 else 0)) * MiB,
                    free_bytes=20_000 * MiB,
                    archived_bytes=(60 + 38 * k) * MiB,
                )
            )
    ctx.db.dispose()


def _seed_old(env: dict[str, str], days: int, n: int) -> None:
    """``n`` finished runs of nightly-etl ``days`` days old (due for retention)."""
    settings = load_settings(database_url=env["DATABASE_URL"], data_dir=env["DATA_DIR"])
    ctx = bootstrap(settings)
    with ctx.db.session() as s:
        for i in range(n):
            started = utcnow() - timedelta(days=days, minutes=i)
            rid = uuid.uuid4()
            s.add(
                PipelineRun(
                    id=rid,
                    pipeline_name="nightly-etl",
                    status="SUCCESS" if i else "FAILED",
                    triggered_by="schedule",
                    started_at=started,
                    finished_at=started + timedelta(seconds=40),
                    exit_code=0,
                    log_file=f"nightly-etl/{rid}/run.log",
                    log_size=2 * MiB,
                    attempt=1,
                )
            )
    ctx.db.dispose()


def _pipeline(root: Path, name: str, code: str, config: str) -> None:
    folder = root / "pipelines" / name
    folder.mkdir(parents=True)
    (folder / "main.py").write_text(code)
    (folder / "pipeline.json").write_text(config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module (the tests only read): pipelines with schedules far
    away, 13 days of history, real runs (one retried), a real cleanup pass, a backlog."""
    root = tmp_path_factory.mktemp("overview")
    umask = os.umask(0o022)
    os.umask(umask)
    with pytest.MonkeyPatch.context() as mp:
        for name in FASTFLOW_VARS:
            mp.delenv(name, raising=False)
        ff_env = {
            "DATABASE_URL": f"sqlite:///{root / 'data' / 'fastflow.db'}",
            "DATA_DIR": str(root / "data"),
            "LOGS_DIR": str(root / "logs"),
            "PIPELINES_DIR": str(root / "pipelines"),
            "LOG_RETENTION_DAYS": "30",
        }
        for key, value in ff_env.items():
            mp.setenv(key, value)
        mp.chdir(root)
        _pipeline(
            root,
            "nightly-etl",
            "print('extract')\nprint('load')\n",
            '{"description": "loads the warehouse", ' + NEVER_SOON + "}",
        )
        _pipeline(root, "report", "print('report')\n", '{"schedules": [{"cron": "15 4 2 1 *"}]}')
        _pipeline(
            root,
            "flaky",
            FLAKY.format(marker=str(root / "failed-once")),
            '{"description": "fails once, then works",'
            ' "retries": {"max": 2, "delay_seconds": 0}, "retention": {"runs": 5}}',
        )
        env = {**os.environ, **ff_env}
        try:
            _seed_history(env)
            _seed_old(env, 45, 4)
        finally:
            os.umask(umask)  # bootstrap applied FASTFLOW_UMASK to this process
        for _ in range(3):
            assert run_cli("run", "flaky", env=env).returncode == 0
        assert run_cli("run", "nightly-etl", env=env).returncode == 0
        res = run_cli("cleanup", "--json", env=env)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["deleted_runs"] == 4  # the old ones
        try:
            _seed_old(env, 40, 3)  # the backlog of the next pass
        finally:
            os.umask(umask)
        res = run_cli("user", "create", "admin", "--role", "admin", env=env, input=PASSWORD + "\n")
        assert res.returncode == 0, res.stderr
        res = run_cli("token", "create", "--name", "ui-test", "--role", "viewer", env=env)
        assert res.returncode == 0, res.stderr
        env["UI_TEST_TOKEN"] = res.stdout.strip()
        with fastflow_serve(env) as url:
            yield Server(url, env)


Body = Callable[[Any], None]


def _browse(
    server: Server, body: Body, *, scheme: Literal["light", "dark"] = "light", start: str = "/"
) -> None:
    """``body(page)`` with a page logged in through the login form (reached from
    ``start``), in a Chromium of its own thread (Playwright's sync API allows one instance
    per thread; tests/web/test_ui.py's session browser may hold this one)."""
    if not Path(CHROMIUM).exists():
        message = "Debian chromium is missing (make test installs it: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    failed: list[BaseException] = []

    def run() -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    context = browser.new_context(
                        viewport={"width": 1280, "height": 900}, color_scheme=scheme
                    )
                    page = context.new_page()
                    page.set_default_timeout(20_000)
                    errors: list[str] = []  # script errors and CSP violations
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.on(
                        "console",
                        lambda m: errors.append(m.text) if m.type == "error" else None,
                    )
                    page.goto(server.url + start)
                    page.fill("input[name=username]", "admin")
                    page.fill("input[name=password]", PASSWORD)
                    page.click("button[type=submit]")
                    body(page)
                    assert [e for e in errors if "404" not in e] == []
                finally:
                    browser.close()
        except BaseException as e:  # raised again in the test's thread
            failed.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def _api(server: Server, path: str) -> Any:
    res = httpx.get(
        server.url + path,
        headers={"Authorization": "Bearer " + server.env["UI_TEST_TOKEN"]},
        timeout=10,
    )
    res.raise_for_status()
    return res.json()


def _shot(page: Any, name: str) -> None:
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _value(page: Any, selector: str) -> str:
    value = page.locator(selector).get_attribute("data-value")
    assert value is not None, selector
    return str(value)


def _loaded(page: Any) -> None:
    expect(page.locator("#overview")).to_have_attribute("data-loaded", re.compile(r"\d+"))


# --- the overview -----------------------------------------------------------------------


def test_overview_is_the_start_page_and_shows_the_apis_numbers(server: Server) -> None:
    def body(page: Any) -> None:
        page.wait_for_url(re.compile(r".*/$"))  # the start page after login
        _loaded(page)
        api = _api(server, "/api/stats/overview?days=14")
        assert float(_value(page, "#success-rate")) == api["success_rate_7d"]
        assert api["success_rate_7d"] is not None and 0 < api["success_rate_7d"] < 1
        for status, n in api["runs_24h"].items():
            item = page.locator(f'#runs-24h li[data-status="{status}"] .count')
            if n or status in FINAL:
                assert item.get_attribute("data-value") == str(n), status
        incidents = api["open_incidents"]
        assert _value(page, "#inc-run") == str(incidents["run_failures"])
        assert _value(page, "#inc-backup") == str(incidents["backup_failures"])
        assert _value(page, "#inc-integrity") == str(incidents["integrity"])
        disk = api["disk"]
        assert _value(page, "#disk-logs") == str(disk["logs_bytes"])
        assert _value(page, "#disk-free") == str(disk["free_bytes"])
        assert _value(page, "#disk-backlog-runs") == str(disk["backlog_runs"]) == "3"
        assert _value(page, "#disk-backlog-bytes") == str(disk["backlog_bytes"]) == str(6 * MiB)
        names = page.locator("#next-runs li").evaluate_all(
            "items => items.map(li => li.dataset.pipeline)"
        )
        assert names == [n["pipeline_name"] for n in api["next_runs"]][:5]
        assert set(names) == {"nightly-etl", "report"}
        assert page.locator("#last-pass").get_attribute("data-pass-id") == str(
            api["last_pass"]["pass_id"]
        )
        bars = page.locator("#runs-chart g.bar")
        assert bars.count() == 14
        for i, day in enumerate(api["runs_by_day"]):
            bar = bars.nth(i)
            assert bar.get_attribute("data-key") == day["day"]
            assert bar.get_attribute("data-total") == str(sum(day[s] for s in FINAL))
        # 10 seeded samples, the real pass's own sample, and "now"
        assert len(api["disk_history"]) == 11
        assert page.locator("#disk-chart circle.point.local").count() == 12
        assert page.locator("nav a.on").text_content() == "Overview"
        _shot(page, "overview-light")

    _browse(server, body)


def test_a_click_on_a_bar_lists_the_runs_of_that_day_and_status(server: Server) -> None:
    api = _api(server, "/api/stats/overview?days=14")
    day = next(d for d in reversed(api["runs_by_day"]) if d["FAILED"] >= 2)

    def body(page: Any) -> None:
        _loaded(page)
        segment = page.locator(
            f'#runs-chart g.bar[data-key="{day["day"]}"] a[data-series="FAILED"]'
        )
        assert segment.locator("title").text_content().startswith(f"{day['day']} (UTC): ")
        segment.click()
        page.wait_for_url(re.compile(rf".*/runs\?status=FAILED&day={day['day']}$"))
        rows = page.locator("#runs-table tbody tr[data-run-id]")
        expect(rows).to_have_count(day["FAILED"])
        for i in range(rows.count()):
            assert rows.nth(i).locator(".status").text_content() == "FAILED"
            assert rows.nth(i).locator("time").get_attribute("datetime").startswith(day["day"])
        assert page.locator("#runs-day").input_value() == day["day"]
        assert page.locator("select[name=status]").input_value() == "FAILED"

    _browse(server, body)


# --- a pipeline's page ------------------------------------------------------------------


def test_pipeline_page_shows_its_runs_figures_schedules_and_the_next_pass(
    server: Server,
) -> None:
    stats = _api(server, "/api/pipelines/flaky/stats?days=30")
    assert stats["runs"] == len(stats["recent"]) == 4  # 3 runs, the first one retried
    assert [(r["status"], r["attempt"]) for r in stats["recent"]][-2:] == [
        ("SUCCESS", 2),
        ("FAILED", 1),
    ]
    plan = json.loads(run_cli("cleanup", "--dry-run", "--json", env=server.env).stdout)
    due = [
        e
        for e in plan["plan"]
        if e["pipeline_name"] == "nightly-etl" and e["action"] == "archive_and_delete_run"
    ]

    def body(page: Any) -> None:
        page.wait_for_url(re.compile(r".*/pipelines$"))
        page.locator('tr[data-pipeline="flaky"] a.pipeline-link').click()
        page.wait_for_url(re.compile(r".*/pipelines/flaky$"))
        tiles = page.locator("#pipeline-stats")
        expect(tiles).to_have_attribute("data-loaded", re.compile(r"\d+"))
        assert _value(page, "#stat-runs") == str(stats["runs"])
        assert float(_value(page, "#stat-success")) == stats["success_rate"]
        assert float(_value(page, "#stat-p50")) == stats["duration_p50_s"]
        assert float(_value(page, "#stat-p95")) == stats["duration_p95_s"]
        bars = page.locator("#runs-bars a.bar-link")
        assert bars.count() == 4
        oldest_first = list(reversed(stats["recent"]))
        for i, run in enumerate(oldest_first):
            mark = bars.nth(i).locator("rect")
            assert mark.get_attribute("class").split()[1] == f"s-{run['status'].lower()}"
            assert bars.nth(i).get_attribute("href") == f"/runs/{run['run_id']}"
            tip = mark.locator("title").text_content()
            assert tip.startswith(run["status"])
            assert (f"attempt {run['attempt']}" in tip) == (run["attempt"] > 1)
        assert "fails once, then works" in page.locator("h1").text_content()
        assert "the newest 5" in page.locator("#pipeline-retention").text_content()
        assert page.locator("#pipeline-retention").text_content().count("pipeline.json") == 1
        assert page.locator("button.run-now").count() == 1
        assert page.locator("button.run-params").count() == 1
        assert page.locator("nav a.on").text_content() == "Pipelines"
        bars.last.click()
        page.wait_for_url(re.compile(rf".*/runs/{oldest_first[-1]['run_id']}$"))

        page.goto(server.url + "/pipelines/nightly-etl")
        expect(page.locator("#pipeline-stats")).to_have_attribute("data-loaded", re.compile(r"\d+"))
        schedules = page.locator("#pipeline-schedules tr.schedule")
        assert schedules.count() == 2
        assert schedules.first.locator(".schedule-text").text_content() == "cron 0 9 1 1 *"
        when = schedules.first.locator(".next-run time").get_attribute("datetime")
        assert when is not None and when[5:16] == "01-01T09:00"
        preview = page.locator("#next-pass")
        assert preview.get_attribute("data-deletions") == str(len(due)) == "3"
        assert page.locator("#next-pass-table tbody tr").count() == len(due)
        listed = set(
            page.locator("#next-pass-table tbody tr").evaluate_all(
                "rows => rows.map(r => r.dataset.runId)"
            )
        )
        assert listed == {e["run_id"] for e in due}
        _shot(page, "pipeline-light")

    _browse(server, body, start="/pipelines")


def test_unknown_pipeline_page_is_404(server: Server) -> None:
    def body(page: Any) -> None:
        res = page.goto(server.url + "/pipelines/nope")
        assert res is not None and res.status == 404
        assert "pipeline 'nope' not found" in page.text_content("main")

    _browse(server, body)


# --- dark and empty ---------------------------------------------------------------------


def test_dark_scheme_follows_the_browser(server: Server) -> None:
    def body(page: Any) -> None:
        _loaded(page)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(17, 21, 29)"
        fill = page.locator("#runs-chart rect.s-success").first.evaluate(
            "el => getComputedStyle(el).fill"
        )
        assert fill == "rgb(64, 192, 87)"
        _shot(page, "overview-dark")
        page.goto(server.url + "/pipelines/nightly-etl")
        expect(page.locator("#pipeline-stats")).to_have_attribute("data-loaded", re.compile(r"\d+"))
        _shot(page, "pipeline-dark")

    _browse(server, body, scheme="dark")

    def light(page: Any) -> None:
        _loaded(page)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(246, 247, 251)"

    _browse(server, light)


def test_empty_charts_say_no_runs_yet(ff_env: dict[str, str], make_pipeline: MakePipeline) -> None:
    make_pipeline("fresh", "print('never run')\n")
    env = {**os.environ, **ff_env}
    res = run_cli("user", "create", "admin", "--role", "admin", env=env, input=PASSWORD + "\n")
    assert res.returncode == 0, res.stderr
    with fastflow_serve(env) as url:
        server = Server(url, env)

        def body(page: Any) -> None:
            _loaded(page)
            expect(page.locator("#runs-chart text.empty")).to_have_text("no runs yet")
            assert page.locator("#runs-chart g.bar").count() == 14  # the days are there
            assert page.locator("#runs-chart text.tick").count() > 14  # axes and labels
            assert page.locator("#success-rate").text_content() == "–"
            assert page.locator("#success-detail").text_content() == "no runs yet"
            assert page.locator("#last-pass").text_content().strip() == "no cleanup pass yet"
            page.goto(url + "/pipelines/fresh")
            expect(page.locator("#runs-bars text.empty")).to_have_text("no runs yet")
            assert page.locator("#runs-bars text.axis-title").first.text_content() == (
                "duration (s)"
            )

        _browse(server, body)
