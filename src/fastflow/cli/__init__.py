"""The ``fastflow`` command: one entry point over every package (it may import them
all; nothing imports it).

Exit codes: 0 success; 1 a failed run, failed backups or another error; 2 invalid
configuration or usage; 3 another cleanup pass is running.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click
from sqlalchemy.exc import SQLAlchemyError

from fastflow import __version__
from fastflow.config import Settings, load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import RunStatus, Trigger
from fastflow.errors import ConfigError, FastflowError, PassAlreadyRunning, RunNotFound
from fastflow.runs import pipelines
from fastflow.runs import store as runs

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_BUSY = 3


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"fastflow: {message}", err=True)
    sys.exit(code)


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


def _context(ctx: click.Context) -> Context:
    return bootstrap(_settings(ctx))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastflow")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """fastflow: run Python pipelines; keep their logs bounded, archived and verified."""
    ctx.obj = load_settings()


@cli.command("run")
@click.argument("pipeline")
@click.pass_context
def run_cmd(ctx: click.Context, pipeline: str) -> None:
    """Run PIPELINE now in the foreground; print the run id as the last line."""
    from fastflow.runs.runner import run_pipeline

    app = _context(ctx)
    echo = None
    if sys.stdout.isatty():

        def echo(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

    result = run_pipeline(app.db, app.settings, pipeline, Trigger.CLI.value, echo=echo)
    code = "-" if result.exit_code is None else str(result.exit_code)
    click.echo(
        f"run {result.run_id} of {result.pipeline_name!r}: {result.status.value} "
        f"(exit code {code}); log: {result.log_path}",
        err=True,
    )
    click.echo(str(result.run_id))
    sys.exit(0 if result.status == RunStatus.SUCCESS else EXIT_FAILED)


@cli.command("runs")
@click.option("--pipeline", "pipeline", default=None, help="Only runs of this pipeline.")
@click.option("--status", default=None, help="Only runs with this status.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def runs_cmd(
    ctx: click.Context, pipeline: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """List runs, newest first."""
    app = _context(ctx)
    rows = runs.list_runs(app.db, pipeline=pipeline, status=status, limit=limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], ensure_ascii=False))
        return
    if not rows:
        click.echo("no runs", err=True)
        return
    click.echo(f"{'RUN ID':36}  {'PIPELINE':24}  {'STATUS':9}  {'TRIGGER':8}  STARTED (UTC)")
    for r in rows:
        started = r.started_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{r.id!s:36}  {r.pipeline_name[:24]:24}  {r.status:9}  {r.triggered_by:8}  {started}"
        )


@cli.command("logs")
@click.argument("run_id")
@click.option(
    "--full",
    is_flag=True,
    help="A log truncated locally: print the full copy from the archive.",
)
@click.pass_context
def logs_cmd(ctx: click.Context, run_id: str, full: bool) -> None:
    """Print the log of RUN_ID (from local disk, or from the archive)."""
    from fastflow.runs.readback import open_log

    app = _context(ctx)
    rid = runs.parse_run_id(run_id)
    source = open_log(app, rid, runs.get(app.db, rid), full=full)
    if source.origin == "archive":
        click.echo(f"(read back from the archive: {source.location})", err=True)
    out = sys.stdout.buffer
    for chunk in source.chunks:
        out.write(chunk)
    out.flush()


@cli.command("cleanup")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--trigger", default="cli", hidden=True)
@click.option("--no-notify", is_flag=True, hidden=True, help="The caller notifies.")
@click.pass_context
def cleanup_cmd(
    ctx: click.Context, dry_run: bool, as_json: bool, trigger: str, no_notify: bool
) -> None:
    """Run one cleanup pass now: retention, verified archive, truncation."""
    from fastflow.cli.progress import ProgressLine
    from fastflow.lifecycle.cleanup import run_pass

    app = _context(ctx)
    bar = ProgressLine(sys.stderr) if sys.stderr.isatty() and not dry_run else None
    try:
        summary = run_pass(
            app,
            trigger,
            dry_run=dry_run,
            progress=bar.update if bar else None,
            plan_sink=click.echo if dry_run and not as_json else None,
        )
    except PassAlreadyRunning as e:
        _fail(f"{e}; try again when it has finished", EXIT_BUSY)
    finally:
        if bar:
            bar.close()
    if not dry_run and not no_notify:
        from fastflow import notify

        # delivery runs in the background; wait a bounded time so it can finish
        notify.after_pass(app, summary).wait(notify.CLI_WAIT_S)
    if as_json:
        data = summary.to_dict()
        if not dry_run:
            data.pop("plan")
        click.echo(json.dumps(data, ensure_ascii=False))
    elif dry_run:
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
    if summary.config_error:
        _fail(summary.config_error, EXIT_CONFIG)
    if summary.backup_failures and not dry_run:
        sys.exit(EXIT_FAILED)


def _summary_line(summary: Any) -> str:
    return (
        f"cleanup: {summary.archived_runs} archived ({summary.bytes_archived} bytes), "
        f"{summary.deleted_runs} runs deleted, {summary.truncated_logs} logs truncated, "
        f"{summary.backup_failures} failures, {summary.skipped_runs} skipped "
        f"in {summary.duration_s:.1f} s"
    )


@cli.command("pipelines")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def pipelines_cmd(ctx: click.Context, as_json: bool) -> None:
    """List the pipelines found in PIPELINES_DIR."""
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


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.pass_context
def serve_cmd(ctx: click.Context, host: str, port: int) -> None:
    """Serve the API and web UI, and run scheduled cleanup passes."""
    import logging

    import uvicorn

    from fastflow import accounts
    from fastflow.server import FIRST_ADMIN_HINT, create_app

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    context = _context(ctx)
    if accounts.count_users(context.db) == 0:
        click.echo(f"fastflow: {FIRST_ADMIN_HINT}", err=True)
    uvicorn.run(create_app(context), host=host, port=port, log_level="info")


@cli.group("archive")
def archive_group() -> None:
    """Inspect, read back and audit the S3 archive."""


@archive_group.command("verify")
@click.option("--pipeline", default=None, help="Only runs of this pipeline.")
@click.option("--since", type=click.DateTime(), default=None, help="Archived on or after (UTC).")
@click.option("--deep", is_flag=True, help="Download and re-hash every object.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def archive_verify(
    ctx: click.Context, pipeline: str | None, since: Any, deep: bool, as_json: bool
) -> None:
    """Check every archived object against the ledger; exit 1 if any is not intact."""
    from datetime import UTC

    from fastflow.archive.audit import verify

    app = _context(ctx)
    tty = sys.stderr.isatty() and not as_json

    def show(r: Any) -> None:
        click.echo(
            f"\r\x1b[Kverified {r.checked_runs} runs: {r.intact} intact, "
            f"{r.missing} missing, {r.changed} changed, {r.errors} errors",
            err=True,
            nl=False,
        )

    report = verify(
        app,
        pipeline=pipeline,
        deep=deep,
        since=since.replace(tzinfo=UTC) if since else None,
        progress=show if tty else None,
    )
    if tty:
        click.echo("", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        for p in report.problems:
            click.echo(f"{p.state.upper():8} {p.pipeline_name} {p.run_id} {p.key}: {p.detail}")
        click.echo(
            f"{report.checked_runs} runs checked: {report.intact} objects intact, "
            f"{report.missing} missing, {report.changed} changed, {report.errors} errors",
            err=True,
        )
    sys.exit(0 if report.ok else EXIT_FAILED)


@archive_group.command("get")
@click.argument("run_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write to this file instead of stdout.",
)
@click.pass_context
def archive_get(ctx: click.Context, run_id: str, output: str | None) -> None:
    """Download the archived log of RUN_ID."""
    from fastflow.archive import s3 as archive
    from fastflow.runs.readback import ledger_entry

    app = _context(ctx)
    rid = runs.parse_run_id(run_id)
    entry = ledger_entry(app, rid)
    if entry is None or entry.log_key is None:
        _fail(f"run {rid} is not in the archive ledger")
    store = archive.open_store(app.settings)
    if output:
        tmp = output + ".part"
        with open(tmp, "wb") as f:
            for chunk in store.open_original(entry.log_key, entry.encoding):
                f.write(chunk)
        import os

        os.replace(tmp, output)
        click.echo(f"wrote s3://{entry.bucket}/{entry.log_key} to {output}", err=True)
    else:
        for chunk in store.open_original(entry.log_key, entry.encoding):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()


@archive_group.command("ls")
@click.option("--pipeline", default=None)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def archive_ls(ctx: click.Context, pipeline: str | None, limit: int, as_json: bool) -> None:
    """List archive ledger entries, newest first."""
    from fastflow.runs import views as runviews

    app = _context(ctx)
    entries = runviews.list_archive(app, pipeline, limit, 0)
    if as_json:
        click.echo(json.dumps(entries, ensure_ascii=False))
        return
    for e in entries:
        click.echo(
            f"{e['archived_at'][:19]}  {e['pipeline_name'][:24]:24}  {e['run_id']}  "
            f"s3://{e['bucket']}/{e['log_key']}  {e['log_size']} B  {e['log_sha256']}"
        )


@cli.group("notify")
def notify_group() -> None:
    """E-mail and Microsoft Teams notifications."""


@notify_group.command("test")
@click.option("--email", is_flag=True, help="Only e-mail.")
@click.option("--teams", is_flag=True, help="Only Teams.")
@click.pass_context
def notify_test(ctx: click.Context, email: bool, teams: bool) -> None:
    """Send a test message through the real delivery path; exit 1 if one fails."""
    from fastflow import notify

    app = _context(ctx)
    if not email and not teams:
        email = teams = True
    results = notify.send_test(app, email=email, teams=teams)
    for r in results:
        click.echo(f"{r.channel}: {'ok' if r.ok else 'FAILED: ' + (r.error or '')}")
    sys.exit(0 if results and all(r.ok for r in results) else EXIT_FAILED)


@cli.group("token")
def token_group() -> None:
    """API tokens for scripts (Authorization: Bearer <token>)."""


@token_group.command("create")
@click.option("--name", required=True, help="What the token is for.")
@click.option("--role", type=click.Choice(["admin", "viewer"]), required=True)
@click.pass_context
def token_create(ctx: click.Context, name: str, role: str) -> None:
    """Create a token; it is printed once, as the only line on stdout."""
    from fastflow import accounts

    app = _context(ctx.find_root())
    click.echo(accounts.create_token(app.db, name, role))


@token_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def token_list(ctx: click.Context, as_json: bool) -> None:
    """List tokens (never their values)."""
    from fastflow import accounts

    app = _context(ctx.find_root())
    rows: list[dict[str, Any]] = [
        {
            "id": t.id,
            "name": t.name,
            "role": t.role,
            "prefix": t.prefix,
            "created_at": t.created_at.isoformat(),
            "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
            "revoked": t.revoked_at is not None,
        }
        for t in accounts.list_tokens(app.db)
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        state = "revoked" if r["revoked"] else "active"
        click.echo(f"{r['id']:>4}  {r['name'][:30]:30}  {r['role']:7}  {r['prefix']}…  {state}")


@token_group.command("revoke")
@click.argument("token_id_or_name")
@click.pass_context
def token_revoke(ctx: click.Context, token_id_or_name: str) -> None:
    """Revoke a token by its id or name."""
    from fastflow import accounts

    app = _context(ctx.find_root())
    n = accounts.revoke_token(app.db, token_id_or_name)
    if n == 0:
        _fail(f"no active token {token_id_or_name!r}")
    click.echo(f"revoked {n} token(s)", err=True)


@cli.group("user")
def user_group() -> None:
    """Users who log in to the web UI."""


@user_group.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "viewer"]), required=True)
@click.pass_context
def user_create(ctx: click.Context, username: str, role: str) -> None:
    """Create a user; the password is prompted, or read from stdin when it is not a TTY."""
    from fastflow import accounts

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    app = _context(ctx.find_root())
    accounts.create_user(app.db, username, password, role)
    click.echo(f"user {username!r} created with role {role}", err=True)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: map domain errors to one stderr line and an exit code."""
    try:
        return cli.main(args=argv, prog_name="fastflow", standalone_mode=True)
    except ConfigError as e:
        _fail(str(e), EXIT_CONFIG)
    except RunNotFound as e:
        _fail(str(e), EXIT_FAILED)
    except FastflowError as e:
        _fail(str(e), EXIT_FAILED)
    except SQLAlchemyError as e:
        detail = str(getattr(e, "orig", None) or e).splitlines()[0]
        _fail(f"database error: {detail} (check DATABASE_URL)", EXIT_FAILED)
