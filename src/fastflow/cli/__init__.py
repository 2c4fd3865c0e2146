"""The ``fastflow`` command: one entry point over every package (it may import them
all; nothing imports it). This module holds the click group, ``main`` (domain errors to
one stderr line and an exit code, see ``fastflow.exit_codes``) and the shared helpers;
the commands live in ``runs``, ``cleanup``, ``archive`` and ``admin``. Imports of the
domain packages stay inside the commands so that ``fastflow --help`` starts fast.
"""

from __future__ import annotations

import sys
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
    from fastflow.config import Settings

    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


def _context(ctx: click.Context) -> Context:
    from fastflow.context import bootstrap

    return bootstrap(_settings(ctx))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastflow")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """fastflow: run Python pipelines; keep their logs bounded, archived and verified."""
    from fastflow.config import load_settings

    ctx.obj = load_settings()


def main(argv: list[str] | None = None) -> Any:
    """Entry point: map domain errors to one stderr line and an exit code."""
    try:
        return cli.main(args=argv, prog_name="fastflow", standalone_mode=True)
    except Exception as e:
        known = exit_codes.for_error(e)
        if known is None:
            raise
        from fastflow.security import redact_current

        _fail(redact_current(known[1]), known[0])


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
