"""``fastflow cleanup``: one cleanup pass now, in the foreground. (The server runs its
passes through ``fastflow.lifecycle.child`` instead.)"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from fastflow import exit_codes
from fastflow.cli import _context, _fail

if TYPE_CHECKING:
    from fastflow.context import Context
    from fastflow.lifecycle.summary import PassSummary


@click.command("cleanup")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--adopt-logs-dir",
    is_flag=True,
    help="Mark LOGS_DIR as the folder of this installation's logs first (when its old "
    "logs are gone for good: runs whose files are not in it then count as gone).",
)
@click.pass_context
def cleanup_cmd(ctx: click.Context, dry_run: bool, as_json: bool, adopt_logs_dir: bool) -> None:
    """Run one cleanup pass now: retention, verified archive, truncation."""
    from fastflow.cli.progress import ProgressLine
    from fastflow.errors import ConfigError, PassAlreadyRunning
    from fastflow.lifecycle.cleanup import busy_with_start, record_crashed_pass, run_pass

    try:
        app = _context(ctx)
    except Exception as e:
        if not dry_run:
            _tell_without_database(ctx, e)
        raise
    if adopt_logs_dir:
        if dry_run:
            _fail("--adopt-logs-dir changes LOGS_DIR: not with --dry-run", exit_codes.CONFIG)
        from fastflow.runs import logsdir

        try:
            marker_id = logsdir.adopt(app.db, app.settings.logs_root)
        except OSError as e:
            _fail(f"cannot mark LOGS_DIR ({app.settings.logs_root}): {e.strerror or e}")
        click.echo(
            f"marked {app.settings.logs_root} as LOGS_DIR ({logsdir.MARKER_NAME}: {marker_id})",
            err=True,
        )
    bar = ProgressLine(sys.stderr) if sys.stderr.isatty() and not dry_run else None
    try:
        summary = run_pass(
            app,
            "cli",
            dry_run=dry_run,
            progress=bar.update if bar else None,
            plan_sink=click.echo if dry_run and not as_json else None,
        )
    except PassAlreadyRunning as busy:
        said = busy_with_start(app, busy)
        if as_json:  # a script reading stdout learns why there is no summary
            click.echo(
                json.dumps({"error": str(said), "busy": True, "started_at": said.started_at})
            )
        _fail(f"{said}; try again when it has finished", exit_codes.BUSY)
    except ConfigError:
        raise  # one line from ``main``, exit 2
    except Exception as e:
        if dry_run:
            raise  # a crashed plan is one ``FastflowError`` line from ``main``, exit 1
        # the pass failed before it had a row (taking its lock): record it here
        summary = record_crashed_pass(app, "cli", _crash_line(app, e))
    finally:
        if bar:
            bar.close()
    if not dry_run:
        from fastflow import notify

        # delivery runs in the background; wait a bounded time so it can finish
        notify.cli_wait(notify.after_pass(app, summary))
    if summary.error and not dry_run:
        # the pass stopped early (crashed or lost its lock): one line, recorded and notified
        if as_json:
            _report(summary, dry_run, as_json)
        _fail(f"{summary.error} ({_counts(summary)} before it stopped)")
    _report(summary, dry_run, as_json)
    if summary.config_error:
        _fail(summary.config_error, exit_codes.CONFIG)
    if summary.backup_failures:  # (a dry run: LOGS_DIR is not this installation's)
        sys.exit(exit_codes.FAILED)


def _report(summary: PassSummary, dry_run: bool, as_json: bool) -> None:
    """The summary: one JSON object on stdout, or lines on stderr."""
    if as_json:
        data = summary.to_dict()
        if not dry_run:
            data.pop("plan")
        click.echo(json.dumps(data, ensure_ascii=False))
        return
    if dry_run:
        click.echo(
            f"dry run: {summary.planned_runs} runs to archive and delete, "
            f"{summary.planned_truncations} logs to truncate; nothing changed",
            err=True,
        )
    else:
        click.echo(_summary_line(summary), err=True)
    for failure in summary.failures[:20]:
        who = f"{failure.pipeline_name} run {failure.run_id}" if failure.run_id else "pass"
        click.echo(f"  failed: {who}: {failure.error}", err=True)


def _tell_without_database(ctx: click.Context, e: Exception) -> None:
    """The database cannot be opened (its disk full, the server away): the pass cannot
    run, be recorded or keep its incident, so the operators are told directly."""
    from sqlalchemy.exc import SQLAlchemyError

    from fastflow import notify
    from fastflow.config import Settings
    from fastflow.security import redact

    known = exit_codes.for_error(e)
    settings = ctx.obj
    if not isinstance(e, SQLAlchemyError) or known is None or not isinstance(settings, Settings):
        return
    notify.without_database(settings, redact(f"the cleanup pass failed: {known[1]}", settings))


def _crash_line(app: Context, e: Exception) -> str:
    """One line for a pass that failed before it started: the known message of a
    database error, or the exception's type and first line."""
    from fastflow.lifecycle.cleanup import crash_message
    from fastflow.security import redact

    known = exit_codes.for_error(e)
    if known is None:
        return crash_message(e, app)
    return redact(f"the cleanup pass failed: {known[1]}", app.settings)


def _counts(summary: PassSummary) -> str:
    return (
        f"{summary.archived_runs} archived, {summary.deleted_runs} runs deleted, "
        f"{summary.truncated_logs} logs truncated"
    )


def _summary_line(summary: PassSummary) -> str:
    first = summary.archived_before_truncation
    return (
        f"cleanup: {summary.archived_runs} archived ({summary.bytes_archived} bytes), "
        f"{summary.deleted_runs} runs deleted, {summary.truncated_logs} logs truncated"
        f"{f' ({first} archived whole first)' if first else ''}, "
        f"{summary.backup_failures} failures, {summary.skipped_runs} skipped "
        f"in {summary.duration_s:.1f} s"
    )


COMMANDS: tuple[click.Command, ...] = (cleanup_cmd,)
