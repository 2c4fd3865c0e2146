"""``fastflow secret set|list|rm``: the secrets pipelines may list in ``secrets``.

Guarantees: a value is read from stdin (hidden input on a terminal), never from the
command line, and is never printed; ``list`` shows names, ``updated_at`` and the
pipelines that list each name. A bad name or value exits 2, an unknown name for ``rm``
exits 1 (``fastflow.exit_codes``).
"""

from __future__ import annotations

import json
import sys

import click

from fastflow import exit_codes
from fastflow.cli import _context, _fail

_HOW = "printf '%s' \"$VALUE\" | fastflow secret set NAME"


@click.group("secret")
def secret_group() -> None:
    """Secrets for pipelines: stored encrypted, given as environment variables to the
    runs of the pipelines that list them in pipeline.json "secrets"."""


def _read_value(name: str) -> str:
    """The value from stdin without one trailing newline; prompted (hidden, twice) on a
    terminal."""
    from fastflow.errors import InvalidSecret
    from fastflow.runs.secret_store import MAX_VALUE_BYTES

    if sys.stdin.isatty():
        value: str = click.prompt(
            f"Value of {name}", hide_input=True, confirmation_prompt=True, err=True
        )
        return value
    raw = sys.stdin.buffer.read(MAX_VALUE_BYTES + 3)  # bounded: the limit, "\r\n", one more
    if len(raw) > MAX_VALUE_BYTES + 2:
        raise InvalidSecret(f"the secret value is longer than {MAX_VALUE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSecret("the value on stdin is not UTF-8 text") from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def _users(pipelines: tuple[str, ...]) -> str:
    return ", ".join(pipelines) if pipelines else "no pipeline lists it yet"


@secret_group.command(
    "set", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
@click.argument("name")
@click.pass_context
def secret_set(ctx: click.Context, name: str) -> None:
    """Set secret NAME (upper-case letters, digits, _) to the value read from stdin,
    without one trailing newline; on a terminal it is prompted with hidden input.
    An existing value is replaced."""
    from fastflow.errors import InvalidSecret
    from fastflow.runs import secret_store

    if ctx.args:  # never echoed: it may be the value itself
        _fail(
            "secret set takes only NAME: the value is read from stdin, never from the "
            f"command line (visible to other users and kept in shell history); {_HOW}",
            exit_codes.CONFIG,
        )
    secret_store.check_name(name)
    app = _context(ctx.find_root())
    value = _read_value(name)
    if value == "":
        raise InvalidSecret(f"the value of {name} is empty; give it on stdin: {_HOW}")
    info = secret_store.set_secret(app.db, app.settings, name, value)
    users, _ = secret_store.usage(app.settings.pipelines_dir)
    when = info.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    click.echo(f"secret {name} set at {when} (used by: {_users(users.get(name, ()))})", err=True)
    warning = secret_store.unmasked_warning(name, value)
    if warning:
        click.echo(f"fastflow: warning: {warning}", err=True)


@secret_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of the stored secrets.")
@click.pass_context
def secret_list(ctx: click.Context, as_json: bool) -> None:
    """List secrets (never their values): name, when it was set, the pipelines that list
    it. Names pipelines list that are not set are marked NOT SET (with --json: warned
    about on stderr); runs of those pipelines fail until the secret is set."""
    from fastflow.runs import secret_store

    app = _context(ctx.find_root())
    view = secret_store.overview(app.db, app.settings.pipelines_dir)
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in view.secrets]))
        for name, users in view.missing.items():
            click.echo(
                f"fastflow: warning: secret {name} is not set; pipeline(s) listing it: "
                f"{', '.join(users)} (set with: fastflow secret set {name})",
                err=True,
            )
    else:
        rows = [
            (s.name, s.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC"), ", ".join(s.pipelines) or "-")
            for s in view.secrets
        ]
        rows += [(name, "NOT SET", ", ".join(who)) for name, who in view.missing.items()]
        rows.sort()
        if not rows:
            click.echo("no secrets (set one with 'fastflow secret set NAME')", err=True)
        width = max((len(r[0]) for r in rows), default=0)
        for name, when, used_by in rows:
            click.echo(f"{name:{width}}  {when:23}  {used_by}")
        if view.missing:
            names = ", ".join(view.missing)
            click.echo(
                f"fastflow: warning: not set but listed by pipelines: {names} "
                "(their runs fail until it is set: fastflow secret set NAME)",
                err=True,
            )
    if view.skipped:
        click.echo(
            "fastflow: note: pipelines with an invalid pipeline.json are left out: "
            f"{', '.join(view.skipped)} (see 'fastflow pipelines check')",
            err=True,
        )


@secret_group.command("rm")
@click.argument("name")
@click.pass_context
def secret_rm(ctx: click.Context, name: str) -> None:
    """Delete secret NAME; exit 1 when there is no such secret."""
    from fastflow.runs import secret_store

    app = _context(ctx.find_root())
    if not secret_store.delete_secret(app.db, name):
        _fail(f"no secret named {name!r} (see 'fastflow secret list')")
    users, _ = secret_store.usage(app.settings.pipelines_dir)
    still = users.get(name, ())
    click.echo(f"secret {name} deleted", err=True)
    if still:
        click.echo(
            f"fastflow: warning: pipeline(s) {', '.join(still)} list {name}; their runs fail "
            "until it is set again",
            err=True,
        )


COMMANDS: tuple[click.Command, ...] = (secret_group,)
