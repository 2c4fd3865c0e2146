"""``fastflow webhook create|list|revoke``: keys with which other systems queue runs of a
pipeline (``POST /api/hooks/PIPELINE`` with the ``X-Fastflow-Key`` header)."""

from __future__ import annotations

import json
from urllib.parse import quote

import click

from fastflow.cli import _context, _fail


@click.group("webhook")
def webhook_group() -> None:
    """Webhook keys: let other systems queue runs of a pipeline."""


@webhook_group.command("create")
@click.argument("pipeline")
@click.pass_context
def webhook_create(ctx: click.Context, pipeline: str) -> None:
    """Create a key for PIPELINE; it is printed once, as the only line on stdout."""
    from fastflow.orchestration import webhooks

    app = _context(ctx.find_root())
    key = webhooks.create_key(app.db, app.settings.pipelines_dir, pipeline)
    click.echo(key)
    url = f"{app.settings.fastflow_base_url.rstrip('/')}/api/hooks/{quote(pipeline, safe='')}"
    click.echo(f"use it as: curl -X POST -H 'X-Fastflow-Key: <key>' -d '{{}}' '{url}'", err=True)


@webhook_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@click.option("--all", "include_revoked", is_flag=True, help="Also revoked keys.")
@click.pass_context
def webhook_list(ctx: click.Context, as_json: bool, include_revoked: bool) -> None:
    """List webhook keys (never the keys themselves): pipeline, prefix, created, source
    (cli: 'fastflow webhook create'; file: webhook_key in pipeline.json)."""
    from fastflow.orchestration import webhooks

    app = _context(ctx.find_root())
    keys = webhooks.list_keys(app.db, app.settings.pipelines_dir, include_revoked=include_revoked)
    if as_json:
        click.echo(json.dumps([k.to_dict() for k in keys]))
        return
    if not keys:
        click.echo("no webhook keys (create one with 'fastflow webhook create PIPELINE')", err=True)
        return
    for k in keys:
        prefix = f"{k.prefix}…" if k.prefix else "-"
        created = k.created.strftime("%Y-%m-%d %H:%M:%S") if k.created else "-"
        extra = f"  run config {k.run_config_id}" if k.run_config_id else ""
        state = "  revoked" if k.revoked else ""
        line = f"{k.pipeline[:30]:30}  {prefix:17}  {created:19}  {k.source:4}{extra}{state}"
        click.echo(line.rstrip())


@webhook_group.command("revoke")
@click.argument("pipeline")
@click.pass_context
def webhook_revoke(ctx: click.Context, pipeline: str) -> None:
    """Revoke every key of PIPELINE made with 'fastflow webhook create' (keys in
    pipeline.json are removed by editing that file). Exit 1 when there is none."""
    from fastflow.orchestration import webhooks

    app = _context(ctx.find_root())
    n = webhooks.revoke_keys(app.db, app.settings.pipelines_dir, pipeline)
    if n == 0:
        _fail(f"pipeline {pipeline!r} has no active key made with 'fastflow webhook create'")
    click.echo(f"revoked {n} webhook key(s) of {pipeline!r}", err=True)


COMMANDS: tuple[click.Command, ...] = (webhook_group,)
