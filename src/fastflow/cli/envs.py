"""``fastflow env build|list|gc``: the pipelines' virtual environments."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import TYPE_CHECKING

import click

from fastflow.cli import _context, _settings

if TYPE_CHECKING:
    from fastflow.config import Settings

_AGE_RE = re.compile(r"^\s*(\d{1,9})\s*([dhms])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def _age(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    """``30d``, ``12h``, ``90m``, ``45s`` or ``0d`` as a ``timedelta``."""
    if value is None:
        return None
    m = _AGE_RE.match(value)
    if m is None:
        raise click.BadParameter(f"must be a duration such as 30d, 12h or 90m (got {value!r})")
    try:
        return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    except OverflowError:
        raise click.BadParameter(f"is too long (got {value!r})") from None


def _env_settings(ctx: click.Context) -> Settings:
    """The settings, without opening the database (no command here needs it); error
    messages are redacted with them."""
    from fastflow.security import install_log_redaction

    settings = _settings(ctx.find_root())
    install_log_redaction(settings)
    return settings


def human(size: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@click.group("env")
def env_group() -> None:
    """Virtual environments of the pipelines (built with uv, cached in DATA_DIR/envs)."""


@env_group.command("build")
@click.argument("pipeline")
@click.pass_context
def env_build(ctx: click.Context, pipeline: str) -> None:
    """Build PIPELINE's environment now (or reuse it): uv's output on stderr, the
    environment's path on stdout. Exit 1 when the build fails. With RUN_AS_USER the
    build runs as that user, as it does before a run."""
    from fastflow.environments import prepare
    from fastflow.errors import EnvBuildError
    from fastflow.runs import isolation, pipelines, secret_store
    from fastflow.runs.masking import Masker
    from fastflow.security import install_log_redaction

    app = _context(ctx)
    settings = app.settings
    install_log_redaction(settings)
    p = pipelines.load(settings.pipelines_dir, pipeline)
    user = isolation.run_as(settings)
    isolation.secure_data_dir(settings)  # 0711 with RUN_AS_USER: the build's user passes
    # masked as a run's build lines are: every stored secret and fastflow's own (a build
    # backend may print uv's index password, or a file it was pointed at)
    masker = Masker(secret_store.masked_for(app.db, settings, {}))
    try:
        env = prepare(
            settings,
            p.name,
            p.path,
            p.config.python,
            lambda line: click.echo(f"[env] {masker.mask(line)}", err=True),
            user=(user.uid, user.gid) if user else None,
        )
    except EnvBuildError as e:  # its message quotes uv's last lines
        raise EnvBuildError(masker.mask(str(e))) from None
    click.echo(str(env.path))


@env_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@click.pass_context
def env_list(ctx: click.Context, as_json: bool) -> None:
    """List the environments: key, python, pipelines that used it, size, last use."""
    from fastflow.environments import registry

    envs = registry.root(_env_settings(ctx))
    records, incomplete = registry.listing(envs)
    sizes = [registry.size_of(envs / r.key) for r in records]
    if as_json:
        rows = [
            {
                "key": r.key,
                "pipelines": r.pipelines,
                "size_bytes": size,
                "last_used_at": r.last_used_at,
                "python": r.python,
                "created_at": r.created_at,
            }
            for r, size in zip(records, sizes, strict=True)
        ]
        click.echo(json.dumps(rows))
        return
    if not records:
        click.echo("no environments (built on a pipeline's first run, or 'fastflow env build')")
    else:
        click.echo(f"{'KEY':16}  {'PYTHON':8}  {'SIZE':>10}  {'LAST USED':25}  PIPELINES")
    for r, size in zip(records, sizes, strict=True):
        used_by = ", ".join(r.pipelines)
        click.echo(f"{r.key:16}  {r.python:8}  {human(size):>10}  {r.last_used_at:25}  {used_by}")
    if incomplete:
        click.echo(
            f"{len(incomplete)} incomplete environment(s) (being built, or left by a crash: "
            "'fastflow env gc' removes leftovers): " + ", ".join(incomplete),
            err=True,
        )


@env_group.command("gc")
@click.option(
    "--older-than",
    callback=_age,
    help="Remove environments not used for this long (30d, 12h, 90m, 0d); "
    "default ENV_RETENTION_DAYS days.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_context
def env_gc(ctx: click.Context, older_than: timedelta | None, as_json: bool) -> None:
    """Remove environments and derived Docker images not used for a while, and
    half-built leftovers; skip the ones in use or being built."""
    from fastflow.environments import collector
    from fastflow.executors import images

    settings = _env_settings(ctx)
    result = collector.collect(settings, older_than)
    built = images.collect(settings, older_than)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "images": built.to_dict()}))
        return
    for r in result.removed:
        used_by = f"; pipelines {', '.join(r.pipelines)}" if r.pipelines else ""
        click.echo(f"removed {r.key} ({r.reason}{used_by}; {human(r.size_bytes)})")
    for key, why in result.skipped:
        click.echo(f"skipped {key}: {why}")
    for image in built.removed:
        click.echo(
            f"removed image {image.tag} ({image.reason}; pipelines {', '.join(image.pipelines)})"
        )
    for tag, why in built.skipped:
        click.echo(f"skipped image {tag}: {why}")
    click.echo(
        f"removed {len(result.removed)} environment(s), freed {human(result.freed_bytes)} "
        f"({result.freed_bytes} bytes); {result.kept} kept"
        + (f", {len(result.skipped)} skipped (locked)" if result.skipped else "")
        + (
            f"; removed {len(built.removed)} image(s), {built.kept} kept"
            if built.removed or built.skipped or built.kept
            else ""
        )
    )


COMMANDS: tuple[click.Command, ...] = (env_group,)
