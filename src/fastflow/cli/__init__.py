"""The ``fastflow`` command: one entry point over every package (it may import them
all; nothing imports it). This module holds the click group, ``main`` (domain errors to
one stderr line and an exit code, see ``fastflow.exit_codes``) and the shared helpers;
the commands live in ``runs``, ``cleanup``, ``archive`` and ``admin``. Imports of the
domain packages stay inside the commands so that ``fastflow --help`` starts fast.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from fastflow import __version__, exit_codes

if TYPE_CHECKING:
    from fastflow.config import Settings
    from fastflow.context import Context


def _fail(message: str, code: int = exit_codes.FAILED) -> NoReturn:
    click.echo(f"fastflow: {message}", err=True)
    sys.exit(code)


def _settings(ctx: click.Context) -> Settings:
    """The settings; a command asks for them when its imports are done, before it opens
    the database: its start-up ends here (see ``_end_start_up``)."""
    from fastflow.config import Settings

    settings = ctx.obj
    assert isinstance(settings, Settings)
    _end_start_up(freeze=True)
    return settings


# the contexts this process opened for a short-lived command: ``main`` lets their queued
# notifications go out before the process ends (``_drain_notifications``)
_opened: list[Context] = []


def _context(ctx: click.Context) -> Context:
    from fastflow.context import bootstrap

    settings = _settings(ctx)
    if ctx.find_root().invoked_subcommand in READ_ONLY:
        settings = _nothing_recorded(settings)
    app = bootstrap(settings)
    if ctx.find_root().invoked_subcommand not in LONG_RUNNING:
        _opened.append(app)
    if app.interrupted:  # runs of a process that died: what their end would have done
        from fastflow.orchestration.followup import after_interrupted

        after_interrupted(app, app.interrupted)
    return app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastflow")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """fastflow: run Python pipelines; keep their logs bounded, archived and verified."""
    from fastflow.config import load_settings

    ctx.obj = load_settings()
    if ctx.invoked_subcommand in LONG_RUNNING:
        _end_start_up(freeze=False)


LONG_RUNNING = frozenset({"serve"})  # its start-up time does not matter: nothing frozen
# commands that only read what was recorded: they never create a database
READ_ONLY = frozenset({"runs", "logs", "search", "cancel"})


def _nothing_recorded(settings: Settings) -> Settings:
    """``settings`` as they are, unless ``DATABASE_URL`` names a SQLite file that does
    not exist: then a read-only command answers as for an empty database (a private,
    temporary one, removed at exit) and says so on stderr — it creates neither that
    file nor its folders (a mistyped ``DATABASE_URL`` made ``fastflow runs`` create an
    empty database, folders included, and print "no runs": an outside audit)."""
    import atexit
    import shutil
    import tempfile

    from fastflow.db.engine import sqlite_file
    from fastflow.runs.isolation import check_data_dir

    try:
        path = sqlite_file(settings.database_url)
        if path is None or path.exists():
            return settings
        check_data_dir(settings)  # a DATA_DIR that cannot be one is still refused (exit 2)
    except OSError:
        return settings  # (a folder that cannot be searched: opening it says so)
    print(
        f"fastflow: no database at {path}: nothing has been recorded there (check "
        "DATABASE_URL, DATA_DIR and the folder you are in); nothing was created",
        file=sys.stderr,
        flush=True,
    )
    empty = tempfile.mkdtemp(prefix="fastflow-empty-")
    atexit.register(shutil.rmtree, empty, True)
    (Path(empty) / "empty.db").touch()  # (an empty file is a new SQLite database)
    return settings.model_copy(
        update={"database_url": f"sqlite:///{empty}/empty.db", "data_dir": Path(empty)}
    )


def _end_start_up(*, freeze: bool) -> None:
    """The command's start-up is over: garbage collection, off while ``main`` imports the
    modules (they make many objects to scan and little garbage), is on again.

    With ``freeze``, what exists now (modules, classes, functions, settings: never garbage
    while the command runs) is first moved out of the collector's view, so that its
    collections during the command and the last ones at exit skip it: a tenth of a second
    of every start-up (issue 14). Called before the database is opened: the engine, its
    connections and all the command creates are collected (and closed) at exit as
    before. Only in a process that ``main`` started: frozen objects are never collected,
    which a test process that invokes commands must not get."""
    if gc.isenabled():
        return  # not started by ``main`` (a test's CliRunner): the collector is as it was
    if freeze:
        gc.freeze()
    gc.enable()


def main(argv: list[str] | None = None) -> Any:
    """Entry point: map domain errors to one stderr line and an exit code."""
    if argv is None:  # this process is the command: see ``_end_start_up``
        gc.disable()
    try:
        return cli.main(args=argv, prog_name="fastflow", standalone_mode=True)
    except Exception as e:
        known = exit_codes.for_error(e)
        if known is None:
            raise
        from fastflow.security import redact_current

        _fail(redact_current(known[1]), known[0])
    finally:
        _drain_notifications()
        gc.enable()


def _drain_notifications() -> None:
    """Give the notifications this command queued (a disk incident raised at a run's
    start, a pass's message) ``CLI_WAIT_S`` in all to go out: they are sent by daemon
    threads, which end with the process. Nothing is imported when none was queued."""
    opened, _opened[:] = list(_opened), []
    if not opened or "fastflow.notify.delivery" not in sys.modules:
        return
    import time

    from fastflow.notify.delivery import cli_wait_left, drain

    deadline = time.monotonic() + cli_wait_left()
    for app in opened:
        drain(app.db, max(0.0, deadline - time.monotonic()))


# The commands import the helpers above, so they are registered last.
from fastflow.cli.admin import COMMANDS as _ADMIN  # noqa: E402
from fastflow.cli.archive import COMMANDS as _ARCHIVE  # noqa: E402
from fastflow.cli.cleanup import COMMANDS as _CLEANUP  # noqa: E402
from fastflow.cli.doctor import COMMANDS as _DOCTOR  # noqa: E402
from fastflow.cli.envs import COMMANDS as _ENVS  # noqa: E402
from fastflow.cli.runs import COMMANDS as _RUNS  # noqa: E402
from fastflow.cli.search import COMMANDS as _SEARCH  # noqa: E402
from fastflow.cli.secrets import COMMANDS as _SECRETS  # noqa: E402
from fastflow.cli.webhooks import COMMANDS as _WEBHOOKS  # noqa: E402

for _command in (
    *_RUNS,
    *_CLEANUP,
    *_ADMIN,
    *_ARCHIVE,
    *_WEBHOOKS,
    *_SECRETS,
    *_ENVS,
    *_SEARCH,
    *_DOCTOR,
):
    cli.add_command(_command)
