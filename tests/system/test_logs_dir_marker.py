"""LOGS_DIR's marker (``runs.logsdir``): an empty folder where the logs' volume should be
mounted must not look like logs that were deleted.

Before the marker, a pass over such a folder deleted the row of every due run as "files
already gone", without archiving anything; the logs came back with the volume, orphaned,
and nothing ever archived or removed them. A run started meanwhile wrote its log into
the empty folder, hidden once the volume was mounted again."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import AppState, RunStatus
from fastflow.lifecycle.cleanup import run_pass
from fastflow.runs import logsdir
from fastflow.runs.runner import run_pipeline
from tests.conftest import MakePipeline
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, failures, keys, object_bytes, run_row, seed_run, seed_series

T = TypeVar("T")


def _stored(ctx: Context) -> str | None:
    with ctx.db.session() as s:
        row = s.get(AppState, logsdir.STATE_KEY)
        return row.value if row else None


def _drop_id(ctx: Context) -> None:
    """An installation from before the marker: no id stored, no marker."""
    with ctx.db.session() as s:
        row = s.get(AppState, logsdir.STATE_KEY)
        if row is not None:
            s.delete(row)
    (ctx.settings.logs_root / logsdir.MARKER_NAME).unlink(missing_ok=True)


def _marker(root: Path) -> str:
    return (root / logsdir.MARKER_NAME).read_text().splitlines()[0]


def _unmount(root: Path) -> Path:
    """The volume goes; an empty folder stays where it was mounted."""
    away = root.with_name("logs.volume")
    root.rename(away)
    root.mkdir()
    return away


def _mount(root: Path, away: Path) -> None:
    root.rmdir()
    away.rename(root)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastflow", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_empty_folder_in_place_of_the_volume_deletes_no_run(ctx: Context, s3: S3Env) -> None:
    """Fails on the code before: the pass deleted the due run's row (its files looked
    already gone) and archived nothing."""
    root = ctx.settings.logs_root
    old, newest = seed_series(ctx, "p", 2)
    assert run_pass(ctx, "test", now=NOW).deleted_runs == 1  # marks LOGS_DIR, then works
    marker_id = _marker(root)
    assert _stored(ctx) == marker_id and len(marker_id) == 32
    older, q_newest = seed_series(ctx, "q", 2)
    away = _unmount(root)

    summary = run_pass(ctx, "test", now=NOW)

    assert summary.deleted_runs == 0 and summary.backup_failures == 1
    (failure,) = failures(ctx)
    assert logsdir.MARKER_NAME in failure.error_message
    assert "mounted" in failure.error_message and "--adopt-logs-dir" in failure.error_message
    assert run_row(ctx, older.id) is not None and run_row(ctx, newest.id) is not None
    assert os.listdir(root) == []  # nothing written into the empty folder
    archived = keys(s3.client(), s3.bucket)
    _mount(root, away)
    summary = run_pass(ctx, "test", now=NOW)
    assert summary.deleted_runs == 1 and summary.backup_failures == 0
    assert failures(ctx) == [] and run_row(ctx, older.id) is None
    assert len(keys(s3.client(), s3.bucket)) > len(archived)
    key = f"pipeline-logs/q/{older.id}/run.log"
    assert object_bytes(s3.client(), s3.bucket, key) == older.log_bytes
    assert q_newest.log.exists() and not old.log.exists()


def test_a_folder_with_another_installations_marker_is_refused(ctx: Context) -> None:
    root = ctx.settings.logs_root
    seed_series(ctx, "p", 3)
    assert run_pass(ctx, "test", now=NOW).deleted_runs == 2
    seed_series(ctx, "p", 2)
    (root / logsdir.MARKER_NAME).write_text("0123456789abcdef0123456789abcdef\n")

    summary = run_pass(ctx, "test", now=NOW)

    assert summary.deleted_runs == 0 and summary.backup_failures == 1
    assert "another installation" in failures(ctx)[0].error_message


@pytest.mark.parametrize("garbage", ["link", "folder", "text"])
def test_garbage_in_the_markers_place_is_refused(
    ctx: Context, tmp_path: Path, garbage: str
) -> None:
    root = ctx.settings.logs_root
    seed_series(ctx, "p", 2)
    marker = root / logsdir.MARKER_NAME
    if garbage == "link":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.write_text("0123456789abcdef0123456789abcdef\n")
        marker.symlink_to(elsewhere)
    elif garbage == "folder":
        marker.mkdir()
    else:
        marker.write_bytes(b"\xff\x00 not an id\n")

    summary = run_pass(ctx, "test", now=NOW)

    assert summary.deleted_runs == 0 and summary.backup_failures == 1
    assert "is not a marker" in failures(ctx)[0].error_message
    assert _stored(ctx) is None


def test_a_folder_never_marked_is_adopted_as_it_is(ctx: Context) -> None:
    """No id stored yet (an installation from before the marker): the folder is taken as
    it is, even empty — rows seeded without files (as a test harness or a migration
    does) are indistinguishable from a volume not mounted at that first use, which is
    the documented limit."""
    root = ctx.settings.logs_root
    old, _ = seed_series(ctx, "p", 2)
    away = _unmount(root)

    assert run_pass(ctx, "test", now=NOW).deleted_runs == 1
    assert _stored(ctx) == _marker(root) and run_row(ctx, old.id) is None
    assert (away / "p" / str(old.id) / "run.log").exists()


def test_logs_dir_set_to_another_folder_needs_adopting_a_moved_one_does_not(
    ctx: Context, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Found by an outside audit of a version that took a changed path for the operator's
    choice: a typo in LOGS_DIR, or a link to a volume that went away, had every due run's
    row deleted. A folder without this installation's marker is refused whatever its
    path; a folder moved with its marker goes on."""
    root = ctx.settings.logs_root
    seed_series(ctx, "p", 2)
    seed_series(ctx, "q", 1)
    assert run_pass(ctx, "test", now=NOW).deleted_runs == 1
    seed_series(ctx, "q", 2)
    elsewhere = tmp_path / "typo ü"
    elsewhere.mkdir()
    monkeypatch.setenv("LOGS_DIR", str(elsewhere))
    typo = bootstrap(load_settings())
    try:
        summary = run_pass(typo, "test", now=NOW)
        assert summary.deleted_runs == 0 and summary.backup_failures == 1
        assert f"has no {logsdir.MARKER_NAME}" in failures(ctx)[0].error_message
        assert os.listdir(elsewhere) == []
    finally:
        typo.db.dispose()
    moved = tmp_path / "moved"
    root.rename(moved)
    monkeypatch.setenv("LOGS_DIR", str(moved))
    after_move = bootstrap(load_settings())
    try:
        summary = run_pass(after_move, "test", now=NOW)
        assert summary.backup_failures == 0 and summary.deleted_runs == 2
        assert failures(ctx) == []
    finally:
        after_move.db.dispose()


def test_a_missing_logs_dir_never_marked_refuses_a_pass_but_a_run_makes_it(
    ctx: Context, make_pipeline: MakePipeline
) -> None:
    """Runs seeded into the database (logs recorded, no files, no LOGS_DIR — as a test
    harness does, and our own UI tests) must not stop the first run: it makes LOGS_DIR
    and marks it, as before the marker. A pass alone refuses the missing folder."""
    make_pipeline("hello")
    root = ctx.settings.logs_root
    old, _ = seed_series(ctx, "p", 2)
    _drop_id(ctx)
    away = root.rename(root.with_name("logs.volume"))

    assert run_pass(ctx, "test", now=NOW).deleted_runs == 0
    assert "does not exist" in failures(ctx)[0].error_message and not root.exists()
    result = run_pipeline(ctx.db, ctx.settings, "hello", "cli")

    assert result.status == RunStatus.SUCCESS and _stored(ctx) == _marker(root)
    assert (away / "p" / str(old.id) / "run.log").exists()


def test_recovering_a_dead_run_writes_no_note_into_an_empty_folder(
    ctx: Context, make_pipeline: MakePipeline
) -> None:
    """Found by an outside audit: every command's start-up retires runs whose process died
    and appends a note to their logs — through folders it made in the empty folder where
    the volume should be (hidden once mounted, and the row's log size wrong). Nothing is
    written there now; the run is still retired."""
    from fastflow.runs import store as runs

    make_pipeline("hello")
    root = ctx.settings.logs_root
    assert run_pipeline(ctx.db, ctx.settings, "hello", "cli").status == RunStatus.SUCCESS
    dead = runs.create(ctx.db, "hello", "cli", pid=0)
    runs.mark_running(ctx.db, dead.id, pid=2**22 + 12345)  # no such process
    away = _unmount(root)

    assert runs.recover_orphans(ctx.db, root) == 1

    assert os.listdir(root) == []
    row = run_row(ctx, dead.id)
    assert row is not None and row.status == "FAILED"
    _mount(root, away)


def test_adopters_at_once_agree_on_one_id(ctx: Context) -> None:
    """Found by an outside audit: two `--adopt-logs-dir` at once on a database without an
    id each wrote their own marker and stored their own id, the last writer winning on
    each side — then every check refused. They now end with one id, in the marker and
    in the database."""
    root = ctx.settings.logs_root
    root.mkdir()
    with ThreadPoolExecutor(3) as pool:
        for _ in range(10):
            _drop_id(ctx)
            start = threading.Barrier(3)
            adopters = [pool.submit(_at, start, logsdir.adopt, ctx, root) for _ in range(2)]
            checker = pool.submit(_at, start, logsdir.problem, ctx, root)
            ids = {f.result() for f in adopters}
            checker.result()  # (it may refuse once, while the adopters settle the id)
            # (one after the other, each adopt writes a new id: the last one stands)
            assert _marker(root) == _stored(ctx) and _stored(ctx) in ids
            assert logsdir.problem(ctx.db, root) is None


def test_an_adopter_that_read_the_id_just_before_another_swapped_it_writes_again(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by CI (the test above failed once): adopter A lost the first
    store to a check that marked the folder (id C); A read C and, before A wrote C into
    the marker, adopter B swapped C for its own id and wrote it. A then overwrote B's
    marker with C — the database said B, the marker C, and every check refused. This
    replays that order exactly: A now writes again until marker and database agree."""
    root = ctx.settings.logs_root
    root.mkdir()
    _drop_id(ctx)
    real_store, real_write = logsdir._store_id, logsdir._write_marker
    checker_id = "c" * 32
    b_ids: list[str] = []

    def store_after_the_check(db: Any, marker_id: str) -> str:
        if not b_ids and marker_id != checker_id:  # A, first: the check stores first
            real_store(db, checker_id)
        return real_store(db, marker_id)

    def write_after_b(root_: str, marker_id: str, *, replace: bool) -> str:
        if marker_id == checker_id and not b_ids:  # A about to write C: B runs whole
            b_ids.append("running")
            b_ids[0] = logsdir.adopt(ctx.db, root)
        return real_write(root_, marker_id, replace=replace)

    monkeypatch.setattr(logsdir, "_store_id", store_after_the_check)
    monkeypatch.setattr(logsdir, "_write_marker", write_after_b)

    a_id = logsdir.adopt(ctx.db, root)

    assert b_ids[0] not in ("running", checker_id)
    assert a_id == b_ids[0] == _stored(ctx) == _marker(root)
    assert logsdir.problem(ctx.db, root) is None


def _at(start: threading.Barrier, fn: Callable[..., T], ctx: Context, root: Path) -> T:
    start.wait()
    return fn(ctx.db, root)


def test_stale_temporary_files_of_killed_writers_are_removed(ctx: Context) -> None:
    root = ctx.settings.logs_root
    root.mkdir()
    stale = root / f"{logsdir.MARKER_NAME}.4242.deadbeef.tmp"
    fresh = root / f"{logsdir.MARKER_NAME}.4343.feedbeef.tmp"
    stale.write_text("half")
    fresh.write_text("being written")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    logsdir.adopt(ctx.db, root)
    assert not stale.exists() and fresh.exists()


def test_logs_dir_that_is_a_file_is_named_so(ctx: Context) -> None:
    root = ctx.settings.logs_root
    root.write_text("not a folder")
    reason = logsdir.problem(ctx.db, root, create=True)
    assert reason is not None and "is not a folder" in reason
    assert root.read_text() == "not a folder"


def test_a_marker_left_by_a_crash_before_the_database_row_is_adopted(ctx: Context) -> None:
    root = ctx.settings.logs_root
    seed_series(ctx, "p", 2)
    (root / logsdir.MARKER_NAME).write_text("00112233445566778899aabbccddeeff\n")
    assert run_pass(ctx, "test", now=NOW).deleted_runs == 1
    assert _stored(ctx) == "00112233445566778899aabbccddeeff"


def test_a_marker_written_meanwhile_by_another_process_wins(ctx: Context) -> None:
    root = ctx.settings.logs_root
    root.mkdir()
    (root / logsdir.MARKER_NAME).write_text("ffeeddccbbaa99887766554433221100\n")
    # this process had found no marker; its own link loses to the one already there
    won = logsdir._write_marker(str(root), "0" * 32, replace=False)
    assert won == "ffeeddccbbaa99887766554433221100"
    assert sorted(os.listdir(root)) == [logsdir.MARKER_NAME]  # its temporary file removed


def test_a_run_is_not_started_in_an_empty_folder_in_place_of_the_volume(
    ctx: Context, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    """Fails on the code before: the pipeline ran and its log went into the empty
    folder, hidden once the volume is mounted again."""
    ran = tmp_path / "ran"
    make_pipeline("hello", f"open({str(ran)!r}, 'w').write('ran')\n")
    first = run_pipeline(ctx.db, ctx.settings, "hello", "cli")  # a new installation
    root = ctx.settings.logs_root
    assert first.status == RunStatus.SUCCESS and _stored(ctx) == _marker(root)
    ran.unlink()
    away = _unmount(root)

    result = run_pipeline(ctx.db, ctx.settings, "hello", "cli")

    assert result.status == RunStatus.FAILED and not ran.exists()
    assert result.failure_reason is not None and logsdir.MARKER_NAME in result.failure_reason
    row = run_row(ctx, result.run_id)
    assert row is not None and row.status == "FAILED" and row.log_size is None
    assert row.failure_reason == result.failure_reason
    assert os.listdir(root) == []
    _mount(root, away)
    again = run_pipeline(ctx.db, ctx.settings, "hello", "cli")
    assert again.status == RunStatus.SUCCESS and ran.exists()


def test_a_webhook_payload_is_refused_while_the_volume_is_away(
    ctx: Context, make_pipeline: MakePipeline, env: dict[str, str]
) -> None:
    """The payload would be written where the run cannot read it once the volume is
    back: 503 with the reason, nothing queued, nothing written."""
    from fastflow.db.models import PipelineRun
    from fastflow.orchestration import webhooks
    from fastflow.server import create_app

    make_pipeline("etl")
    created = _cli(env, "webhook", "create", "etl")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    root = ctx.settings.logs_root
    root.mkdir()
    logsdir.adopt(ctx.db, root)
    away = _unmount(root)
    app = create_app(ctx, schedule=False)
    client = TestClient(app)

    res = client.post("/api/hooks/etl", headers={"X-Fastflow-Key": key}, json={"a": 1})

    assert res.status_code == 503 and logsdir.MARKER_NAME in res.json()["detail"]
    with ctx.db.session() as s:
        assert s.query(PipelineRun).count() == 0
    assert os.listdir(root) == []
    _mount(root, away)
    res = client.post("/api/hooks/etl", headers={"X-Fastflow-Key": key}, json={"a": 1})
    assert res.status_code == 202
    rel = webhooks.payload_rel("etl", res.json()["run_id"])
    assert json.loads((root / rel).read_text()) == {"a": 1}
    app.state.launcher.stop()


def test_cli_dry_run_reports_and_adopt_logs_dir_marks_the_folder(
    ctx: Context, env: dict[str, str]
) -> None:
    """When the logs are gone for good, the operator adopts the folder: the pass then
    removes the runs whose files are gone."""
    root = ctx.settings.logs_root
    root.mkdir()
    logsdir.adopt(ctx.db, root)
    old, _, newest = seed_series(ctx, "p", 3)
    for entry in root.iterdir():  # the logs are lost, the marker with them
        if entry.is_dir():
            for f in entry.rglob("*"):
                if f.is_file():
                    f.unlink()
    (root / logsdir.MARKER_NAME).unlink()

    dry = _cli(env, "cleanup", "--dry-run", "--json")
    assert dry.returncode == 1
    report = json.loads(dry.stdout)
    assert report["planned_runs"] == 0 and report["backup_failures"] == 1
    assert logsdir.MARKER_NAME in report["failures"][0]["error"]
    refused = _cli(env, "cleanup")
    assert refused.returncode == 1 and logsdir.MARKER_NAME in refused.stderr
    assert run_row(ctx, old.id) is not None

    adopted = _cli(env, "cleanup", "--adopt-logs-dir", "--json")

    assert adopted.returncode == 0, adopted.stderr
    assert f"marked {root}" in adopted.stderr
    assert json.loads(adopted.stdout)["deleted_runs"] == 2
    assert run_row(ctx, old.id) is None and run_row(ctx, newest.id) is not None
    assert _marker(root) == _stored(ctx)
    both = _cli(env, "cleanup", "--adopt-logs-dir", "--dry-run")
    assert both.returncode == 2 and "--dry-run" in both.stderr


def test_a_folder_marked_before_an_adopt_no_longer_passes(
    ctx: Context, make_pipeline: MakePipeline
) -> None:
    """Found by an outside audit: a first run marked LOGS_DIR before the volume was
    mounted on it; the operator adopted the volume, and the adopt reused the id — so
    when the volume later failed to mount, the folder under the mount point passed, and
    the pass deleted the volume's runs. Every adopt now writes a new id."""
    make_pipeline("hello")
    root = ctx.settings.logs_root
    assert run_pipeline(ctx.db, ctx.settings, "hello", "cli").status == RunStatus.SUCCESS
    under = root.with_name("logs.under")
    root.rename(under)  # the volume is mounted over the first folder
    root.mkdir()
    assert run_pipeline(ctx.db, ctx.settings, "hello", "cli").status == RunStatus.FAILED
    first = _marker(under)
    assert logsdir.adopt(ctx.db, root) != first
    old, _ = seed_series(ctx, "p", 2)
    root.rename(root.with_name("logs.volume"))  # the volume fails to mount
    under.rename(root)

    summary = run_pass(ctx, "test", now=NOW)

    assert summary.deleted_runs == 0 and "another installation" in failures(ctx)[0].error_message
    assert run_row(ctx, old.id) is not None
    assert run_pipeline(ctx.db, ctx.settings, "hello", "cli").status == RunStatus.FAILED


def test_a_volume_unmounted_mid_pass_loses_no_row(
    ctx: Context, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an outside audit: the pass checked the marker only at its start; runs
    listed after the volume went away looked gone, and their rows were deleted (their
    files orphaned on the volume). Before each chunk's rows are deleted, the marker is
    checked again — after every run of the chunk was listed."""
    from fastflow.lifecycle.executor import PassRun

    root = ctx.settings.logs_root
    seeded = seed_series(ctx, "p", 200, days_apart=0.01)
    assert logsdir.problem(ctx.db, root) is None  # marked
    real = PassRun.local_files
    listed = [0]
    gate = threading.Lock()
    away = root.with_name("logs.volume")

    def listing(self: PassRun, *a: Any) -> Any:
        with gate:
            listed[0] += 1
            if listed[0] == 100:  # a lazy unmount in the middle of the pass
                root.rename(away)
                root.mkdir()
        return real(self, *a)

    monkeypatch.setattr(PassRun, "local_files", listing)
    summary = run_pass(ctx, "test", now=NOW)
    monkeypatch.undo()

    archived = keys(s3.client(), s3.bucket)
    lost = [
        r.id
        for r in seeded
        if run_row(ctx, r.id) is None and f"pipeline-logs/p/{r.id}/run.log" not in archived
    ]
    assert lost == [] and summary.deleted_runs < 199
    assert any(logsdir.MARKER_NAME in f.error_message for f in failures(ctx))
    root.rmdir()
    away.rename(root)
    assert run_pass(ctx, "test", now=NOW).backup_failures == 0
    archived = keys(s3.client(), s3.bucket)
    assert all(
        run_row(ctx, r.id) is not None or f"pipeline-logs/p/{r.id}/run.log" in archived
        for r in seeded
    )
    assert run_row(ctx, seeded[-1].id) is not None and run_row(ctx, seeded[0].id) is None


def test_a_volume_unmounted_while_a_run_starts_gets_nothing_written(
    ctx: Context, make_pipeline: MakePipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an outside audit: between the marker check and the run's folder being
    made, the volume could go; the run then wrote its log into the empty folder (and a
    missing LOGS_DIR was made again). The run's folder is now made and its files opened
    through the LOGS_DIR descriptor whose marker is confirmed."""

    ran = tmp_path / "ran"
    make_pipeline("hello", f"open({str(ran)!r}, 'w').write('ran')\n")
    root = ctx.settings.logs_root
    assert run_pipeline(ctx.db, ctx.settings, "hello", "cli").status == RunStatus.SUCCESS
    ran.unlink()
    real = logsdir.problem

    def check_then_unmount(*a: Any, **kw: Any) -> str | None:
        found = real(*a, **kw)
        if not root.with_name("logs.volume").exists():
            _unmount(root)
        return found

    monkeypatch.setattr(logsdir, "problem", check_then_unmount)
    result = run_pipeline(ctx.db, ctx.settings, "hello", "cli")

    assert result.status == RunStatus.FAILED and "changed while the run started" in (
        result.failure_reason or ""
    )
    assert os.listdir(root) == [] and not ran.exists()


def _unmount_on_call(n: int, root: Path, away: Path, real: Callable[..., T]) -> Callable[..., T]:
    """``real``, with the volume unmounted (``root`` moved to ``away``, an empty folder
    left) just before its ``n``-th call."""
    calls = [0]
    gate = threading.Lock()

    def wrapped(*a: Any, **kw: Any) -> T:
        with gate:
            calls[0] += 1
            if calls[0] == n:
                root.rename(away)
                root.mkdir()
        return real(*a, **kw)

    return wrapped


def _orphans(ctx: Context, away: Path) -> list[str]:
    """Run folders on the moved volume whose run has no row."""
    found = []
    for pipeline in away.iterdir():
        if pipeline.is_dir():
            for run in pipeline.iterdir():
                if run_row(ctx, uuid.UUID(run.name)) is None:
                    found.append(f"{pipeline.name}/{run.name}")
    return found


def test_a_volume_unmounted_in_the_middle_of_a_chunks_deletions_orphans_nothing(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a third outside audit: the marker was checked once per chunk, and each
    delete then found LOGS_DIR again by path — a volume unmounted during a chunk's
    deletions made the rest of the chunk look gone: rows deleted, files orphaned on the
    volume. A chunk's deletions now go through the LOGS_DIR descriptor whose marker was
    confirmed: they happen on the volume, wherever its path now leads."""
    from fastflow.lifecycle import deletion

    root = ctx.settings.logs_root
    seed_series(ctx, "p", 60, days_apart=0.01)
    assert logsdir.problem(ctx.db, root) is None
    away = root.with_name("logs.volume")
    monkeypatch.setattr(
        deletion, "delete_files", _unmount_on_call(10, root, away, deletion.delete_files)
    )

    run_pass(ctx, "test", now=NOW)

    assert _orphans(ctx, away) == [] and os.listdir(root) == []


def test_a_volume_unmounted_while_pending_entries_are_resumed_loses_no_run(
    ctx: Context, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a third outside audit: the resume phase (ledger entries a killed pass left
    pending) never checked the marker again; entries resumed after the volume went away
    found no local files and had their rows deleted — with their objects gone from the
    bucket, nothing of those runs was left but orphans on the volume."""
    from fastflow.lifecycle import batch
    from fastflow.lifecycle.executor import PassRun

    root = ctx.settings.logs_root
    seeded = seed_series(ctx, "p", 12, days_apart=0.01)

    def killed(*a: Any) -> None:
        raise RuntimeError("killed after the ledger commit")

    monkeypatch.setattr(batch, "_remove", killed)
    assert run_pass(ctx, "test", now=NOW).error is not None
    monkeypatch.undo()
    client = s3.client()
    for key in keys(client, s3.bucket):
        client.delete_object(Bucket=s3.bucket, Key=key)  # to be archived again from local
    away = root.with_name("logs.volume")
    monkeypatch.setattr(
        PassRun, "local_files", _unmount_on_call(3, root, away, PassRun.local_files)
    )

    summary = run_pass(ctx, "test", now=NOW)

    archived = keys(client, s3.bucket)
    lost = [
        r.id
        for r in seeded
        if run_row(ctx, r.id) is None and f"pipeline-logs/p/{r.id}/run.log" not in archived
    ]
    assert lost == [] and _orphans(ctx, away) == []
    assert any(logsdir.MARKER_NAME in f.error for f in summary.failures), summary.failures


def test_a_volume_unmounted_during_truncations_makes_the_pass_incomplete(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a third outside audit: truncations skip a log that is gone, so a volume
    unmounted during them went unreported and the pass counted as complete."""
    from fastflow.lifecycle import oversized, truncate

    monkeypatch.setenv("LOG_MAX_SIZE_MB", "1")
    monkeypatch.setenv("LOG_RETENTION_RUNS", "0")
    big = bootstrap(load_settings())
    try:
        root = big.settings.logs_root
        for i in range(4):
            seed_run(big, "p", NOW - timedelta(hours=i + 1), log=(b"x" * 1023 + b"\n") * 2048)
        assert logsdir.problem(big.db, root) is None
        away = root.with_name("logs.volume")
        monkeypatch.setattr(
            oversized, "truncate_log", _unmount_on_call(2, root, away, truncate.truncate_log)
        )

        summary = run_pass(big, "test", now=NOW)

        assert any(logsdir.MARKER_NAME in f.error for f in summary.failures), summary.failures
        assert summary.truncated_logs <= 1
    finally:
        big.db.dispose()


def test_a_runs_log_size_is_measured_through_its_open_file(
    ctx: Context, make_pipeline: MakePipeline
) -> None:
    """Found by a third outside audit: a run that ended while the volume was away had its
    log size measured by path — NULL — although its log was written whole through the
    held descriptor."""
    root = ctx.settings.logs_root
    away = root.with_name("logs.volume")
    make_pipeline(
        "hello",
        f"import os\nprint('x' * 100)\nos.rename({str(root)!r}, {str(away)!r})\n"
        f"os.mkdir({str(root)!r})\n",
    )

    result = run_pipeline(ctx.db, ctx.settings, "hello", "cli")

    row = run_row(ctx, result.run_id)
    log = away / "hello" / str(result.run_id) / "run.log"
    assert row is not None and row.log_size == log.stat().st_size > 100


def test_a_pipeline_folder_removed_while_the_run_makes_it_is_made_again(
    ctx: Context, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: a pass removing a pipeline's emptied folder just as a run of it
    made its own folder failed the run ("LOGS_DIR went away") and leaked descriptors;
    before the held folder, the run made the folder again. It does again now."""
    make_pipeline("hello")
    assert run_pipeline(ctx.db, ctx.settings, "hello", "cli").status == RunStatus.SUCCESS
    real_mkdir = os.mkdir
    raced: list[str] = []

    def mkdir_then_removed(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)
        if path == "hello2" and not raced:  # the pass removes it at that very instant
            raced.append(path)
            os.rmdir(path, dir_fd=dir_fd)

    make_pipeline("hello2")
    fds = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "mkdir", mkdir_then_removed)
    result = run_pipeline(ctx.db, ctx.settings, "hello2", "cli")
    monkeypatch.undo()

    assert raced and result.status == RunStatus.SUCCESS, result.failure_reason
    assert len(os.listdir("/proc/self/fd")) <= fds + 1


@pytest.mark.parametrize("refused", ["link", "folder sync"])
def test_marking_works_without_hard_links_or_folder_sync(
    ctx: Context, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch, refused: str
) -> None:
    """Found by a review: filesystems without hard links (SMB, some FUSE mounts) refused
    the marker's first write, and some refuse to sync a folder — every run then failed.
    The marker is then created in place (exclusive create, written, synced)."""
    import stat as stat_module

    make_pipeline("hello")
    if refused == "link":

        def no_link(*a: Any, **kw: Any) -> None:
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    else:
        real_fsync = os.fsync

        def no_folder_sync(fd: int) -> None:
            if stat_module.S_ISDIR(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "Invalid argument")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", no_folder_sync)

    result = run_pipeline(ctx.db, ctx.settings, "hello", "cli")

    root = ctx.settings.logs_root
    assert result.status == RunStatus.SUCCESS, result.failure_reason
    assert _marker(root) == _stored(ctx)
    assert [n for n in os.listdir(root) if n.endswith(".tmp")] == []
