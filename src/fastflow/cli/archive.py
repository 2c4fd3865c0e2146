"""``fastflow archive verify|verifications|rebuild-index|check-bucket|get|ls``: audit,
rebuild the index of, check, read back and list the S3 archive."""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Iterator
from typing import Any

import click

from fastflow import exit_codes
from fastflow.cli import _context, _fail


@click.group("archive")
def archive_group() -> None:
    """Inspect, read back and audit the S3 archive."""


@archive_group.command("verify")
@click.option("--pipeline", default=None, help="Only runs of this pipeline.")
@click.option("--since", type=click.DateTime(), default=None, help="Archived on or after (UTC).")
@click.option("--deep", is_flag=True, help="Download and re-hash every object.")
@click.option(
    "--manifests",
    is_flag=True,
    help="Check the hash chain of the manifests and that ledger and manifests agree.",
)
@click.option(
    "--record",
    is_flag=True,
    help="Run the scheduled verification now (HEAD every object, re-hash "
    "ARCHIVE_VERIFY_DEEP_SAMPLE objects, check the manifests), record it and open or "
    "resolve the integrity incident.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def archive_verify(
    ctx: click.Context,
    pipeline: str | None,
    since: Any,
    deep: bool,
    manifests: bool,
    record: bool,
    as_json: bool,
) -> None:
    """Check every archived object against the ledger; exit 1 if any is not intact."""
    from datetime import UTC

    from fastflow.archive.audit import verify

    app = _context(ctx)
    tty = sys.stderr.isatty() and not as_json
    if manifests and record:
        _fail("--manifests and --record cannot be combined", exit_codes.CONFIG)
    if manifests:
        _verify_manifests(app, tty, as_json)
    if record:
        _verify_and_record(app, as_json)

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
    sys.exit(exit_codes.OK if report.ok else exit_codes.FAILED)


def _verify_manifests(app: Any, tty: bool, as_json: bool) -> None:
    from fastflow.archive.audit import ManifestReport, verify_manifests

    def show(r: ManifestReport) -> None:
        click.echo(
            f"\r\x1b[Kchecked {r.manifests_checked} manifests, {r.objects_listed} objects: "
            f"{r.problem_count} problems",
            err=True,
            nl=False,
        )

    report = verify_manifests(app, progress=show if tty else None)
    if tty:
        click.echo("", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        for p in report.problems:
            where = " ".join(x for x in (p.manifest, p.run_id, p.key) if x)
            click.echo(f"{p.state.upper():16} {where}: {p.detail}")
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(
            f"{report.manifests_checked} manifests checked, {report.objects_listed} objects "
            f"listed: {report.problem_count} problems"
            + (f" ({report.unlisted} entries not in any manifest yet)" if report.unlisted else ""),
            err=True,
        )
    sys.exit(exit_codes.OK if report.ok else exit_codes.FAILED)


def _verify_and_record(app: Any, as_json: bool) -> None:
    from fastflow.lifecycle.verify_schedule import verify_and_notify
    from fastflow.notify import cli_wait

    if not app.settings.s3_backup_enabled:
        _fail("S3 backup is disabled (S3_BACKUP_ENABLED): there is no archive to verify")
    result, delivery = verify_and_notify(app, "cli")
    cli_wait(delivery)
    if result is None:
        _fail("the verification could not be recorded")
    if as_json:
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        for p in result.problems:
            where = p.get("key") or p.get("manifest") or ""
            click.echo(f"{str(p.get('state', '?')).upper():16} {where}: {p.get('detail', '')}")
        click.echo(_verification_line(result.to_dict()), err=True)
    sys.exit(exit_codes.OK if result.ok else exit_codes.FAILED)


def _verification_line(v: dict[str, Any]) -> str:
    state = "error" if v["ok"] is None else "ok" if v["ok"] else "DAMAGED"
    line = (
        f"verification {v['id']} ({v['trigger']}, {str(v['started_at'])[:19]}): {state}; "
        f"{v['objects_checked']} objects checked, {v['objects_deep_checked']} re-hashed, "
        f"{v['manifests_checked']} manifests, {v['objects_damaged']} damaged"
    )
    return line + (f"; {v['error']}" if v.get("error") else "")


@archive_group.command("verifications")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def archive_verifications(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List recorded archive verifications (scheduled and --record), newest first."""
    from fastflow.archive.audit import verifications

    rows = verifications(_context(ctx), limit)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    if not rows:
        click.echo("no archive verification recorded yet", err=True)
    for v in rows:
        click.echo(_verification_line(v))


@archive_group.command("rebuild-index")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--include-damaged",
    is_flag=True,
    help="Also index manifests whose bytes differ from the SHA-256 they were stored with "
    "(as they now read; without it their objects are left out and reported).",
)
@click.option(
    "--replace-conflicting",
    is_flag=True,
    help="Let a newer manifest record replace a ledger entry that it describes otherwise "
    "(a database restored from an older backup; without it such entries are kept and "
    "reported).",
)
@click.pass_context
def archive_rebuild_index(
    ctx: click.Context, as_json: bool, include_damaged: bool, replace_conflicting: bool
) -> None:
    """Rebuild the archive ledger from the manifests in the bucket (after a lost database);
    safe to repeat. It adds what the ledger lacks and changes nothing it holds (unless
    --replace-conflicting); a damaged manifest is not indexed (unless --include-damaged).
    Exit 1 when a manifest is damaged, an entry conflicts or the chain is broken."""
    from fastflow.archive.rebuild import RebuildReport, rebuild

    app = _context(ctx)
    tty = sys.stderr.isatty() and not as_json
    last = [0.0]

    def show(r: RebuildReport) -> None:
        import time

        now = time.monotonic()
        if now - last[0] < 0.1:
            return
        last[0] = now
        click.echo(
            f"\r\x1b[Krebuild-index: {r.manifests_done}/{r.manifests} manifests, "
            f"{r.objects} objects, {r.entries_created} entries created, "
            f"{r.entries_updated} updated",
            err=True,
            nl=False,
        )

    report = rebuild(
        app,
        progress=show if tty else None,
        include_damaged=include_damaged,
        replace_conflicting=replace_conflicting,
    )
    if tty:
        click.echo("\r\x1b[K", err=True, nl=False)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        for problem in report.problems:
            click.echo(f"problem: {problem}")
        click.echo(
            f"{report.manifests} manifests read ({report.manifests_recorded} newly recorded), "
            f"{report.objects} objects: {report.entries_created} entries created, "
            f"{report.entries_updated} updated, {report.entries_unchanged} unchanged, "
            f"{report.entries_conflicting} conflicting, {report.entries_skipped} left out",
            err=True,
        )
    sys.exit(exit_codes.OK if report.ok else exit_codes.FAILED)


@archive_group.command("check-bucket")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.pass_context
def archive_check_bucket(ctx: click.Context, as_json: bool) -> None:
    """Check the bucket's versioning, Object Lock, default retention, encryption and
    lifecycle rules; exit 1 when a check is an error."""
    from fastflow.archive.bucket_check import check_bucket

    report = check_bucket(_context(ctx).settings)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        click.echo(f"bucket {report.bucket}, prefix '{report.prefix}'")
        for c in report.checks:
            click.echo(f"{c.status.upper():8} {c.name:18} {c.message}")
    sys.exit(exit_codes.OK if report.ok else exit_codes.FAILED)


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
    """Download the archived log of RUN_ID (a full id or a unique prefix)."""
    from fastflow.archive import s3 as archive
    from fastflow.runs import store
    from fastflow.runs.readback import ledger_entry

    app = _context(ctx)
    rid = store.resolve_run_id(app.db, run_id)
    entry = ledger_entry(app, rid)
    if entry is None or entry.log_key is None:
        _fail(f"run {rid} is not in the archive ledger")
    objects = archive.open_store(app.settings)
    size = entry.original("log")[0]  # the full log's: checked while it is read
    if output:
        mode = 0o666 & ~app.settings.fastflow_umask
        _download_to(output, objects.open_original(entry.log_key, entry.encoding, size), mode)
        click.echo(f"wrote s3://{entry.bucket}/{entry.log_key} to {output}", err=True)
    else:
        for chunk in objects.open_original(entry.log_key, entry.encoding, size):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()


def _download_to(output: str, chunks: Iterator[bytes], mode: int) -> None:
    """Write ``chunks`` to a private temporary file next to ``output`` (created with
    O_EXCL by ``mkstemp``: a planted symlink is never followed), then rename it over
    ``output`` atomically; on any failure the temporary file is removed and one line is
    printed. The file gets ``mode`` (the umask's), or the mode of the file it replaces.
    An existing device or pipe is written into instead (``_stream_into``)."""
    import os
    import stat
    import tempfile
    from pathlib import Path

    target = Path(output)
    try:
        existing = os.lstat(target).st_mode
    except OSError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing) and not stat.S_ISDIR(existing):
        # a device, a pipe or a link (``-o /dev/null``, ``/dev/stdout``): written into or
        # through, never replaced — a rename over it replaced /dev/full, run as root (an
        # outside audit), and the /dev/stdout link itself (a review)
        _stream_into(output, chunks)
        return
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        _fail(f"cannot write {output}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
    except OSError as e:
        _fail(f"cannot write {output}: {e.strerror or e}")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                old = os.stat(target)
                if stat.S_ISREG(old.st_mode):
                    mode = stat.S_IMODE(old.st_mode)
            except OSError:
                pass
            os.fchmod(f.fileno(), mode)
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            _fail(f"cannot write {output}: {e.strerror or e}")
        raise


def _stream_into(output: str, chunks: Iterator[bytes]) -> None:
    """Write ``chunks`` into the existing device, pipe or link ``output`` as they come, as
    a shell's ``>`` does (a regular file at the end of a link is emptied first). Opened
    without blocking: a pipe that nobody reads is an error, not a wait for ever. Nothing
    atomic about it: a read that fails midway has written its start."""
    import fcntl
    import os
    import stat

    flags = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(output, flags)
    except OSError as e:
        if e.errno == errno.ENXIO:
            _fail(f"cannot write {output}: it is a pipe that no process reads from")
        _fail(f"cannot write {output}: {e.strerror or e}")
    try:
        with os.fdopen(fd, "wb") as f:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.ftruncate(fd, 0)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            for chunk in chunks:
                f.write(chunk)
    except OSError as e:
        _fail(f"cannot write {output}: {e.strerror or e}")


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


COMMANDS: tuple[click.Command, ...] = (archive_group,)
