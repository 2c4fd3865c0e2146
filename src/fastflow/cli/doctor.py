"""``fastflow doctor``: is every outside part fastflow depends on reachable (issue 15)."""

from __future__ import annotations

import json
import sys

import click

from fastflow import exit_codes
from fastflow.cli import _settings


@click.command("doctor")
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 60),
    default=5.0,
    show_default=True,
    help="Seconds each network step may take; a check ends at the latest 1 s later.",
)
@click.option("--json", "as_json", is_flag=True, help='Print [{"check", "status", "detail"}, ...].')
@click.pass_context
def doctor(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """Check the database, S3, SMTP, Teams and the Docker daemon: one line each, ok,
    error or skipped (not configured or not used). Read-only: no mail, no Teams message,
    no object written. Exit 1 if any check failed; exit 2 for invalid configuration
    (also a ``RUN_AS_USER`` this machine does not know, which ``serve`` and ``run`` refuse)."""
    from fastflow.doctor import run_checks
    from fastflow.runs import isolation

    settings = _settings(ctx)
    isolation.user_entry(settings)  # RUN_AS_USER that serve and run refuse: exit 2, as they do
    checks = run_checks(settings, timeout=timeout)
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in checks], ensure_ascii=False))
    else:
        for c in checks:
            click.echo(f"{c.check:<10} {c.status:<7} {c.detail}")
    failed = any(c.status == "error" for c in checks)
    sys.exit(exit_codes.FAILED if failed else exit_codes.OK)


COMMANDS: list[click.Command] = [doctor]
