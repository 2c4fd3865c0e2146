"""``fastflow serve``, ``user``, ``token`` and ``notify test``: run the server and
administer its users, API tokens and notifications."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from typing import Any

import click

from fastflow import exit_codes
from fastflow.cli import _context, _fail


@click.command("serve")
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
    from fastflow.runs import isolation

    context = _context(ctx)
    isolation.run_as(context.settings)  # RUN_AS_USER unusable: exit 2 now, not per run
    if "fastflow_base_url" not in context.base.model_fields_set:
        # unset: links in notifications point at this server, not at a default port
        context.base = context.base.model_copy(
            update={"fastflow_base_url": _served_url(host, port)}
        )
        context.reload_settings()
    if accounts.count_users(context.db) == 0:
        click.echo(f"fastflow: {FIRST_ADMIN_HINT}", err=True)
    uvicorn.run(create_app(context), host=host, port=port, log_level="info")


def _served_url(host: str, port: int) -> str:
    import socket

    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn() or "localhost"
    elif ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{port}"


@click.group("notify")
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
    ok = bool(results) and all(r.ok for r in results)
    sys.exit(exit_codes.OK if ok else exit_codes.FAILED)


@click.group("token")
def token_group() -> None:
    """API tokens for scripts (Authorization: Bearer <token>)."""


def _duration(_: click.Context, __: click.Parameter, value: str | None) -> timedelta | None:
    from fastflow import accounts

    if value is None:
        return None
    try:
        return accounts.parse_duration(value)
    except accounts.InvalidInput as e:
        raise click.BadParameter(e.message) from None


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@token_group.command("create")
@click.option("--name", required=True, help="What the token is for.")
@click.option("--role", type=click.Choice(["admin", "viewer"]), required=True)
@click.option(
    "--expires-in",
    callback=_duration,
    metavar="DURATION",
    help="Stop working after this long: 30m, 12h, 90d (default: never).",
)
@click.option(
    "--user",
    "username",
    metavar="NAME",
    help="The user it belongs to: it stops working while they are disabled, and is revoked "
    "when they are deleted; never more than their role.",
)
@click.pass_context
def token_create(
    ctx: click.Context, name: str, role: str, expires_in: timedelta | None, username: str | None
) -> None:
    """Create a token; it is printed once, as the only line on stdout."""
    from fastflow import accounts

    app = _context(ctx.find_root())
    click.echo(accounts.create_token(app.db, name, role, expires_in=expires_in, username=username))


@token_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def token_list(ctx: click.Context, as_json: bool) -> None:
    """List tokens (never their values); expired ones are listed for a week."""
    from fastflow import accounts

    app = _context(ctx.find_root())
    rows: list[dict[str, Any]] = [
        {
            "id": t.id,
            "name": t.name,
            "role": t.role,
            "prefix": t.prefix,
            "created_at": t.created_at.isoformat(),
            "last_used_at": _when(t.last_used_at),
            "expires_at": _when(t.expires_at),
            "user": t.user,
            "revoked": t.revoked_at is not None,
            "state": t.state(),
        }
        for t in accounts.list_tokens(app.db)
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        expires = (
            f"expires {r['expires_at'][:16].replace('T', ' ')} UTC"
            if r["expires_at"]
            else "no expiry"
        )
        click.echo(
            f"{r['id']:>4}  {r['name'][:30]:30}  {r['role']:7}  {r['prefix']}…  "
            f"{r['state']:8}  {expires}"
        )


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


@click.group("user")
def user_group() -> None:
    """Users who log in to the web UI."""


def _read_password() -> str:
    """Prompted twice on a terminal; else the first line of stdin."""
    if sys.stdin.isatty():
        password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        return password
    return sys.stdin.readline().rstrip("\r\n")


@user_group.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "viewer"]), required=True)
@click.pass_context
def user_create(ctx: click.Context, username: str, role: str) -> None:
    """Create a user; the password is prompted, or read from stdin when it is not a TTY."""
    from fastflow import accounts

    password = _read_password()
    app = _context(ctx.find_root())
    accounts.create_user(app.db, username, password, role)
    click.echo(f"user {username!r} created with role {role}", err=True)


@user_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def user_list(ctx: click.Context, as_json: bool) -> None:
    """List users: name, role, created, disabled, last login (never password hashes)."""
    from fastflow import accounts

    app = _context(ctx.find_root())
    rows: list[dict[str, Any]] = [
        {
            "name": u.name,
            "role": u.role,
            "created_at": u.created_at.isoformat(),
            "disabled": u.disabled_at is not None,
            "disabled_at": _when(u.disabled_at),
            "last_login_at": _when(u.last_login_at),
        }
        for u in accounts.list_users(app.db)
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no users (create one: fastflow user create NAME --role admin)", err=True)
    for r in rows:
        state = "disabled" if r["disabled"] else "enabled"
        last = (r["last_login_at"] or "never")[:19]
        click.echo(
            f"{r['name'][:30]:30}  {r['role']:7}  {state:8}  "
            f"created {r['created_at'][:19]}  last login {last}"
        )


@user_group.command("passwd")
@click.argument("username")
@click.pass_context
def user_passwd(ctx: click.Context, username: str) -> None:
    """Set a new password (prompted twice, or read from stdin when it is not a TTY); the
    user's sessions end."""
    from fastflow import accounts

    app = _context(ctx.find_root())
    accounts.require_user(app.db, username)
    accounts.set_password(app.db, username, _read_password())
    click.echo(f"password of {username!r} changed; their sessions ended", err=True)


@user_group.command("disable")
@click.argument("username")
@click.pass_context
def user_disable(ctx: click.Context, username: str) -> None:
    """Disable a user: their sessions end now; they cannot log in or use their tokens."""
    from fastflow import accounts

    app = _context(ctx.find_root())
    changed = accounts.disable_user(app.db, username)
    click.echo(
        f"user {username!r} disabled; their sessions ended"
        if changed
        else f"user {username!r} was disabled already",
        err=True,
    )


@user_group.command("enable")
@click.argument("username")
@click.pass_context
def user_enable(ctx: click.Context, username: str) -> None:
    """Enable a disabled user again."""
    from fastflow import accounts

    app = _context(ctx.find_root())
    changed = accounts.enable_user(app.db, username)
    click.echo(
        f"user {username!r} enabled" if changed else f"user {username!r} was enabled already",
        err=True,
    )


@user_group.command("delete")
@click.argument("username")
@click.pass_context
def user_delete(ctx: click.Context, username: str) -> None:
    """Delete a user: their sessions end and their tokens are revoked."""
    from fastflow import accounts

    app = _context(ctx.find_root())
    revoked = accounts.delete_user(app.db, username)
    click.echo(f"user {username!r} deleted; {revoked} token(s) revoked", err=True)


COMMANDS: tuple[click.Command, ...] = (serve_cmd, notify_group, token_group, user_group)
