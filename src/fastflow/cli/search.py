"""``fastflow search``: find text across the logs of many runs."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

import click

from fastflow import exit_codes
from fastflow.cli import _context, _fail

REDRAW_EVERY_S = 0.1


class SearchProgress:
    """``searching: 150/2,000 runs (120 archived), 35.2 MiB, 12 matches`` redrawn in place
    on a terminal; cleared before a result line is printed."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last = 0.0
        self._drawn = False

    def update(self, p: Any, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < REDRAW_EVERY_S:
            return
        self._last = now
        total = f"/{p.total:,}" if p.total is not None else ""
        self._out.write(
            f"\r\x1b[Ksearching: {p.runs:,}{total} runs ({p.archived:,} archived), "
            f"{p.bytes / 1_048_576:.1f} MiB, {p.hits:,} matches"
        )
        self._out.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            self._out.write("\r\x1b[K")
            self._out.flush()
            self._drawn = False


@click.command("search")
@click.argument("text")
@click.option("--pipeline", default=None, help="Only runs of this pipeline.")
@click.option("--since", default=None, metavar="DATE", help="Runs started at or after DATE.")
@click.option(
    "--until", default=None, metavar="DATE", help="Runs started before DATE (a day: included)."
)
@click.option("--status", default=None, help="Only runs with this status.")
@click.option("--regex", is_flag=True, help="TEXT is a regular expression.")
@click.option("--case-sensitive", is_flag=True, help="Match case (default: ignore it).")
@click.option(
    "--limit",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Stop after this many matching lines.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per matching line.")
@click.pass_context
def search_cmd(
    ctx: click.Context,
    text: str,
    pipeline: str | None,
    since: str | None,
    until: str | None,
    status: str | None,
    regex: bool,
    case_sensitive: bool,
    limit: int,
    as_json: bool,
) -> None:
    """Search the logs of many runs, local and archived (read back several at a time),
    newest runs first, and print ``PIPELINE/RUN:LINE:TEXT`` per matching line (--json:
    ``{"run_id", "pipeline_name", "started_at", "line", "text"}``). DATE is YYYY-MM-DD
    or YYYY-MM-DDTHH:MM (UTC unless it has an offset). A progress line and the counts go
    to stderr; exit 0 when something matched, 1 when nothing did, 2 for a bad pattern."""
    from fastflow.db.models import RunStatus
    from fastflow.errors import InvalidInput
    from fastflow.runs import crosssearch, logsearch

    if status is not None and status.upper() not in RunStatus.__members__:
        known = ", ".join(RunStatus.__members__)
        raise click.BadParameter(f"{status!r} is not a run status ({known})", param_hint="--status")
    try:
        filters = crosssearch.Filters(
            pipeline=pipeline,
            since=crosssearch.parse_when(since) if since else None,
            until=crosssearch.parse_when(until, end_of_day=True) if until else None,
            status=status.upper() if status else None,
        )
        matcher = logsearch.Matcher(text, is_regex=regex, case_sensitive=case_sensitive)
    except InvalidInput as e:  # a bad date or pattern: usage
        _fail(str(e), exit_codes.CONFIG)
    app = _context(ctx)
    bar = SearchProgress(sys.stderr) if sys.stderr.isatty() else None
    tty = sys.stdout.isatty()
    t0 = time.monotonic()
    progress = crosssearch.Progress()
    matched_runs: set[str] = set()
    try:
        for item in crosssearch.search_runs(
            app, matcher, filters, limit=limit, count=bar is not None
        ):
            if isinstance(item, crosssearch.Progress):
                progress = item
                if bar is not None:
                    bar.update(item)
                continue
            if bar is not None:
                bar.clear()
            if isinstance(item, crosssearch.RunSkipped):
                click.echo(f"warning: run {item.run.run_id} not searched: {item.error}", err=True)
                continue
            matched_runs.add(str(item.run.run_id))
            click.echo(_line(item, as_json, tty))
    except logsearch.SearchError as e:
        if bar is not None:
            bar.clear()
        _fail(str(e), exit_codes.CONFIG)
    if bar is not None:
        bar.clear()
    took = time.monotonic() - t0
    click.echo(
        f"{progress.hits:,} matching lines in {len(matched_runs):,} runs; "
        f"{progress.runs:,} runs searched ({progress.archived:,} read from the archive, "
        f"{progress.bytes / 1_048_576:.1f} MiB) in {took:.1f} s",
        err=True,
    )
    if progress.limited:
        click.echo(f"stopped at --limit {limit}: narrow the search or raise --limit", err=True)
    sys.exit(exit_codes.OK if progress.hits else exit_codes.FAILED)


def _line(hit: Any, as_json: bool, tty: bool) -> str:
    if as_json:
        return json.dumps(hit.to_dict(), ensure_ascii=False)
    text = hit.text
    if tty:  # escape sequences from a log are shown, not run
        from fastflow.runs.terminal import neutralise

        text = neutralise(text.encode("utf-8")).decode("utf-8")
    return f"{hit.run.pipeline_name}/{str(hit.run.run_id)[:8]}:{hit.line}:{text}"


COMMANDS: list[click.Command] = [search_cmd]
