"""``fastflow runs pin RUN_ID --reason TEXT`` and ``fastflow runs unpin RUN_ID``: a pinned
run is never deleted or truncated (subcommands of the ``runs`` group in ``cli.runs``).

Exit status 0 when done; 1 when the run is unknown or a legal hold could not be placed or
lifted (the pin itself stands; the error says why); 2 for an empty reason. A run whose
row retention removed is pinned on its archive ledger entry.
"""

from __future__ import annotations

import getpass
import sys

import click

from fastflow import exit_codes
from fastflow.cli import _context, _fail


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _reason(value: str) -> str:
    from fastflow.errors import InvalidInput
    from fastflow.runs.pins import clean_reason

    try:
        return clean_reason(value)
    except InvalidInput as e:
        raise click.BadParameter(str(e), param_hint="--reason") from None


def _report(state: object) -> None:
    from fastflow.runs.pins import PinState, describe

    assert isinstance(state, PinState)
    click.echo(describe(state), err=True)
    if state.legal_hold.error is not None:
        action = "placed" if state.legal_hold.on else "lifted"
        _fail(f"legal hold not {action}: {state.legal_hold.error}")
    sys.exit(exit_codes.OK)


@click.command("pin")
@click.argument("run_id")
@click.option("--reason", required=True, help="Why the run must be kept (recorded).")
@click.pass_context
def pin_cmd(ctx: click.Context, run_id: str, reason: str) -> None:
    """Pin RUN_ID (a full id or a unique prefix): it is never deleted or truncated, and
    with S3_OBJECT_LOCK_LEGAL_HOLD=true its archived objects get a legal hold."""
    from fastflow.runs import pins, store

    text = _reason(reason)
    app = _context(ctx.find_root())
    rid = store.resolve_run_id(app.db, run_id)
    _report(pins.pin(app.db, app.settings, rid, text, _who()))


@click.command("unpin")
@click.argument("run_id")
@click.pass_context
def unpin_cmd(ctx: click.Context, run_id: str) -> None:
    """Unpin RUN_ID: retention applies to it again (legal holds are lifted)."""
    from fastflow.runs import pins, store

    app = _context(ctx.find_root())
    rid = store.resolve_run_id(app.db, run_id)
    _report(pins.unpin(app.db, app.settings, rid))


COMMANDS: tuple[click.Command, ...] = (pin_cmd, unpin_cmd)
