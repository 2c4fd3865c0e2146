"""``fastflow run``, ``runs``, ``logs`` and ``pipelines``: run pipelines and read their
runs and logs."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterable
from typing import Any

import click

from fastflow import exit_codes
from fastflow.cli import _context, _fail, _settings
from fastflow.cli.pins import COMMANDS as PIN_COMMANDS


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--env`` items as a dict. An error shows a name only when it has the form of one;
    otherwise it names the item by its position: the text of a malformed item may be the
    value itself (``--env SECRET``, ``--env 'postgresql://u:pw@h/db?x=y'``)."""
    from fastflow.errors import InvalidInput
    from fastflow.runs import params

    env: dict[str, str] = {}
    for number, pair in enumerate(pairs, 1):
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(
                f"item {number} has no '=': write KEY=VALUE (the item is not shown, it "
                "may be a secret)",
                param_hint="--env",
            )
        if not key:
            raise click.BadParameter(
                f"item {number} has no name before '=': write KEY=VALUE",
                param_hint="--env",
            )
        if not params.is_name(key):  # a value with '=' in it, its KEY= forgotten
            raise click.BadParameter(
                f"item {number}: the part before the first '=' is not a variable name "
                f"({params.NAME_RULE}); the item is not shown, it may be a secret",
                param_hint="--env",
            )
        if value and not value.strip("="):  # ``dGVzdA==``: base64 with its padding
            raise click.BadParameter(
                f"item {number}: its value is only '=' signs — a base64 value without "
                "its KEY=? Write KEY=VALUE; the item is not shown, it may be a secret",
                param_hint="--env",
            )
        env[key] = value
    try:
        return params.check(env)
    except InvalidInput as e:
        raise click.BadParameter(str(e), param_hint="--env") from None


@click.command("run")
@click.argument("pipeline")
@click.option("--env", "env_pairs", multiple=True, metavar="K=V", help="Run parameter.")
@click.pass_context
def run_cmd(ctx: click.Context, pipeline: str, env_pairs: tuple[str, ...]) -> None:
    """Run PIPELINE now in the foreground (with its retries); print each attempt's run id,
    the last attempt's as the last line."""
    from fastflow.db.models import RunStatus, Trigger
    from fastflow.orchestration.foreground import run_in_foreground, stop_on_signals
    from fastflow.runs import isolation

    env = _parse_env(env_pairs)
    app = _context(ctx)
    isolation.run_as(app.settings)  # RUN_AS_USER unusable: exit 2 before any run
    echo = None
    if sys.stdout.isatty():
        from fastflow.runs.terminal import neutralise

        def echo(text: str) -> None:
            sys.stdout.write(neutralise(text.encode("utf-8")).decode("utf-8"))
            sys.stdout.flush()

    def report(result: Any, delay: float | None) -> None:
        code = "-" if result.exit_code is None else str(result.exit_code)
        click.echo(
            f"run {result.run_id} of {result.pipeline_name!r}: {result.status.value} "
            f"(exit code {code}"
            + (
                f"; {result.failure_reason}"
                if result.failure_reason and result.failure_reason != f"exit code {code}"
                else ""
            )
            + (f"); log: {result.log_path}" if result.log_path.exists() else "); no log written"),
            err=True,
        )
        if delay is not None:
            click.echo(f"retrying in {delay:g} s", err=True)
        click.echo(str(result.run_id))

    stop = threading.Event()
    with stop_on_signals(stop):  # Ctrl-C, SIGTERM: the run ends CANCELLED, not interrupted
        last = run_in_foreground(
            app,
            pipeline,
            Trigger.MANUAL.value,  # by hand (issue 11's list has no "cli")
            env=env or None,
            echo=echo,
            on_attempt=report,
            stop=stop,
        )
    sys.exit(exit_codes.OK if last.status == RunStatus.SUCCESS else exit_codes.FAILED)


@click.command("cancel")
@click.argument("run_id")
@click.pass_context
def cancel_cmd(ctx: click.Context, run_id: str) -> None:
    """Cancel RUN_ID (a full id or a unique prefix, e.g. the 8 characters the UI shows):
    a queued run at once; a running one on whichever server runs it."""
    from fastflow.orchestration import queue
    from fastflow.runs import store

    app = _context(ctx)
    rid = store.resolve_run_id(app.db, run_id)
    outcome = queue.cancel(app.db, rid)
    messages = {
        "cancelled": "cancelled (it had not started)",
        "requested": "cancellation requested; the server running it stops it within seconds",
        "finished": "it has already finished; nothing to cancel",
    }
    click.echo(f"run {rid}: {messages[outcome]}", err=True)
    sys.exit(exit_codes.FAILED if outcome == "finished" else exit_codes.OK)


@click.command("schedules")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def schedules_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every schedule with its next run (UTC) and the pipeline's last run. A pipeline
    folder that is skipped (invalid name or pipeline.json) is named on stderr, and the
    exit status is then 1: its schedules are missing from the list and do not run."""
    from fastflow.db.models import utcnow
    from fastflow.orchestration.ticker import schedule_rows
    from fastflow.runs import pipelines

    app = _context(ctx)
    found, skipped = pipelines.scan(app.settings.pipelines_dir)
    rows = schedule_rows(app, utcnow(), found)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
    else:
        for r in rows:
            last = r["last_run"]["status"] if r["last_run"] else "-"
            click.echo(f"{r['pipeline_name']}\t{r['schedule']}\t{r['next_run_at'] or '-'}\t{last}")
    for name, why in skipped.items():
        click.echo(
            f"warning: pipeline folder {name!r} is skipped, its schedules do not run: {why}",
            err=True,
        )
    if skipped:
        sys.exit(exit_codes.FAILED)


@click.group("runs", invoke_without_command=True)
@click.option("--pipeline", "pipeline", default=None, help="Only runs of this pipeline.")
@click.option("--status", default=None, help="Only runs with this status.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--include-archived",
    is_flag=True,
    help="Also list runs whose rows retention deleted (from the archive ledger).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def runs_cmd(
    ctx: click.Context,
    pipeline: str | None,
    status: str | None,
    limit: int,
    include_archived: bool,
    as_json: bool,
) -> None:
    """List runs, newest first. With --include-archived, runs deleted by retention are
    listed too (marked "archived"; JSON: the API's run objects, ``row_deleted`` true).
    Subcommands: pin, unpin."""
    from datetime import datetime

    if ctx.invoked_subcommand is not None:
        return

    from fastflow.db.models import RunStatus
    from fastflow.runs import store
    from fastflow.runs import views as runviews

    if status is not None and status.upper() not in RunStatus.__members__:
        known = ", ".join(RunStatus.__members__)
        raise click.BadParameter(f"{status!r} is not a run status ({known})", param_hint="--status")
    app = _context(ctx)
    items: list[dict[str, Any]]
    if include_archived:
        items = runviews.list_views(
            app, include_archived=True, public=False, pipeline=pipeline, status=status, limit=limit
        )
    else:
        items = [
            r.to_dict()
            for r in store.list_runs(app.db, pipeline=pipeline, status=status, limit=limit)
        ]
    if as_json:
        click.echo(json.dumps(items, ensure_ascii=False))
        return
    if not items:
        click.echo("no runs", err=True)
        return
    click.echo(f"{'RUN ID':36}  {'PIPELINE':24}  {'STATUS':9}  {'TRIGGER':8}  STARTED (UTC)")
    for r in items:
        started = datetime.fromisoformat(r["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
        mark = "  archived" if r.get("row_deleted") else ""
        click.echo(
            f"{r['id']:36}  {r['pipeline_name'][:24]:24}  {r['status']:9}  "
            f"{r['triggered_by']:8}  {started}{mark}"
        )


for _pin_command in PIN_COMMANDS:
    runs_cmd.add_command(_pin_command)


@click.command("logs")
@click.argument("run_id")
@click.option(
    "--full",
    is_flag=True,
    help="A log truncated locally: print the full copy from the archive.",
)
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Keep printing new lines until the run ends (exit 0 when it succeeded, else 1).",
)
@click.option("--grep", "grep", metavar="TEXT", help="Print only the lines containing TEXT.")
@click.option("--regex", is_flag=True, help="--grep TEXT is a regular expression.")
@click.option("--case-sensitive", is_flag=True, help="--grep matches case (default: ignore).")
@click.option(
    "-C",
    "--context",
    default=0,
    show_default=True,
    type=click.IntRange(0, 100),
    help="Lines of context around each match.",
)
@click.option("-n", "--line-number", is_flag=True, help="Prefix lines with their number.")
@click.pass_context
def logs_cmd(
    ctx: click.Context,
    run_id: str,
    full: bool,
    follow: bool,
    grep: str | None,
    regex: bool,
    case_sensitive: bool,
    context: int,
    line_number: bool,
) -> None:
    """Print the log of RUN_ID (a full id or a unique prefix, e.g. the 8 characters the
    UI shows), from local disk or from the archive. --follow prints new lines as they
    come until the run ends. --grep prints the matching lines the way grep does (exit 0
    when some matched, 1 when none, 2 for a bad pattern); counts go to stderr."""
    from fastflow.runs import store
    from fastflow.runs.readback import open_log

    if follow and (full or grep is not None):
        raise click.UsageError("--follow cannot be combined with --full or --grep")
    if grep is None and (regex or case_sensitive or context or line_number):
        raise click.UsageError("--regex, --case-sensitive, -C and -n go with --grep")
    app = _context(ctx)
    rid = store.resolve_run_id(app.db, run_id)
    if follow:
        _follow(app, rid)
        return
    if grep is not None:
        _grep(app, rid, grep, regex, case_sensitive, context, line_number, full)
        return
    source = open_log(app, rid, store.get(app.db, rid), full=full)
    if source.origin == "archive":
        click.echo(f"(read back from the archive: {source.location})", err=True)
    _write(source.chunks)


def _write(chunks: Iterable[bytes]) -> None:
    """Raw bytes to stdout; on a terminal with escape sequences shown, not run."""
    out = sys.stdout.buffer
    if sys.stdout.isatty():
        from fastflow.runs.terminal import neutralise_stream

        chunks = neutralise_stream(chunks)
    for chunk in chunks:
        out.write(chunk)
        out.flush()


FOLLOW_POLL_S = 0.2


def _follow(app: Any, rid: Any) -> None:
    """Print the log from its start and every new line until the run ends; the exit
    status is the run's (0 SUCCESS, 1 otherwise)."""
    import time

    from fastflow.runs import logstream

    follower = logstream.Follower(app, rid, 0, metrics=False)
    ended: logstream.Ended | None = None
    try:
        while ended is None:
            events = follower.poll()
            _write(ev.data for ev in events if isinstance(ev, logstream.LogChunk))
            for ev in events:
                if isinstance(ev, logstream.StatusChanged):
                    click.echo(f"(run {rid}: {ev.status})", err=True)
                elif isinstance(ev, logstream.Ended):
                    ended = ev
            if ended is None and not follower.more:
                time.sleep(FOLLOW_POLL_S)
    finally:
        follower.close()
    code = "-" if ended.exit_code is None else str(ended.exit_code)
    reason = f"; {ended.failure_reason}" if ended.failure_reason else ""
    click.echo(f"(run {rid}: {ended.status}, exit code {code}{reason})", err=True)
    sys.exit(exit_codes.OK if ended.status == "SUCCESS" else exit_codes.FAILED)


def _grep(
    app: Any,
    rid: Any,
    pattern: str,
    regex: bool,
    case_sensitive: bool,
    context: int,
    numbers: bool,
    full: bool,
) -> None:
    from fastflow.runs import logsearch, store
    from fastflow.runs.readback import open_log

    try:
        matcher = logsearch.Matcher(pattern, is_regex=regex, case_sensitive=case_sensitive)
    except logsearch.PatternError as e:
        _fail(str(e), exit_codes.CONFIG)
    source = open_log(app, rid, store.get(app.db, rid), full=full, chunk=1024 * 1024)
    if source.origin == "archive":
        click.echo(f"(searching the archived copy: {source.location})", err=True)
    printer = GrepPrinter(numbers, context)
    try:
        for hit in logsearch.search(source.chunks, matcher, context=context):
            _write([printer.lines(hit).encode("utf-8")])
    except logsearch.SearchError as e:
        _fail(str(e), exit_codes.CONFIG)
    _write([printer.finish().encode("utf-8")])
    how = "regular expression" if regex else "text"
    case = "case-sensitive" if case_sensitive else "case-insensitive"
    click.echo(f"{printer.matches} matching lines ({how}, {case})", err=True)
    if not printer.matches:
        if not regex and any(c in pattern for c in "*+?[]()|^$\\"):
            click.echo("hint: add --regex to match a regular expression", err=True)
        sys.exit(exit_codes.FAILED)


class GrepPrinter:
    """Matches and their context the way grep prints them: ``N:`` before a matching
    line and ``N-`` before a context line with ``-n``; ``--`` between groups that are not
    adjacent; a line printed once even when two contexts overlap. Pieces of a line
    longer than ``logsearch.MAX_LINE`` are lines of their own with that line's number
    (told apart by their entry: ``Hit.entry``, ``Hit.before_at``, ``Hit.after_at``)."""

    def __init__(self, numbers: bool, context: int) -> None:
        self.numbers = numbers
        self.context = context
        self.matches = 0
        self._last = -1  # entry printed last
        self._after: list[tuple[tuple[int, int], str]] = []

    def _emit(self, out: list[str], at: tuple[int, int], text: str, sep: str) -> None:
        entry, line = at
        if entry <= self._last:
            return
        if self.context and self._last >= 0 and entry > self._last + 1:
            out.append("--\n")
        out.append((f"{line}{sep}" if self.numbers else "") + text + "\n")
        self._last = entry

    def lines(self, hit: Any) -> str:
        out: list[str] = []
        for at, text in self._after:
            if at[0] < hit.entry:
                self._emit(out, at, text, "-")
        for at, text in zip(hit.before_at, hit.context_before, strict=True):
            self._emit(out, at, text, "-")
        self._emit(out, (hit.entry, hit.line), hit.text, ":")
        self.matches += 1
        self._after = list(zip(hit.after_at, hit.context_after, strict=True))
        return "".join(out)

    def finish(self) -> str:
        out: list[str] = []
        for at, text in self._after:
            self._emit(out, at, text, "-")
        self._after = []
        return "".join(out)


@click.group("pipelines", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def pipelines_cmd(ctx: click.Context, as_json: bool) -> None:
    """List the pipelines found in PIPELINES_DIR (or check them: pipelines check)."""
    from fastflow.runs import pipelines

    if ctx.invoked_subcommand is not None:
        return
    settings = _settings(ctx)
    found = pipelines.discover(settings.pipelines_dir)
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in found], ensure_ascii=False))
        return
    if not found:
        click.echo(f"no pipelines in {settings.pipelines_dir}", err=True)
        return
    for p in found:
        click.echo(f"{p.name}\t{p.description}")


@pipelines_cmd.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.pass_context
def pipelines_check_cmd(ctx: click.Context, as_json: bool) -> None:
    """Validate every pipeline folder; exit 1 on any error (warnings do not fail)."""
    from dataclasses import asdict

    from fastflow.runs import pipelines

    settings = _settings(ctx.find_root())
    found, problems = pipelines.check_all(settings.pipelines_dir)
    errors = [p for p in problems if p.level == "error"]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": not errors,
                    "pipelines": [p.name for p in found],
                    "problems": [asdict(p) for p in problems],
                },
                ensure_ascii=False,
            )
        )
    else:
        for p in problems:
            click.echo(f"{p.level}: {p.pipeline}: {p.message}", err=True)
        click.echo(
            f"{_count(len(found), 'pipeline')} valid, {_count(len(errors), 'error')}", err=True
        )
    if errors:
        sys.exit(exit_codes.FAILED)


COMMANDS: tuple[click.Command, ...] = (
    run_cmd,
    runs_cmd,
    logs_cmd,
    pipelines_cmd,
    cancel_cmd,
    schedules_cmd,
)
