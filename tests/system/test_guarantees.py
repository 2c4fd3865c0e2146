"""Guarantee violations found by the fault matrix (issue 9), reproduced through the real
S3 server and the fault proxy: each test failed before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fastflow.archive import ledger
from fastflow.archive import s3 as archive
from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import ArchivedRun, BackupFailure
from fastflow.lifecycle.cleanup import run_pass
from fastflow.lifecycle.lock import PG_LOCK_KEY
from tests.conftest import wait_until
from tests.harness.fixtures import S3Env
from tests.seeding import (
    NOW,
    failures,
    keys,
    object_bytes,
    pending_entry,
    run_row,
    seed_run,
    seed_series,
)
from tests.seeding import (
    ledger as ledger_rows,
)


@contextmanager
def _swapped_for_link(run_dir: Path, outside: Path) -> Iterator[None]:
    """What someone who can write in LOGS_DIR does around the block: the run folder
    moved aside and a link to ``outside`` put in its place; both undone afterwards."""
    moved = run_dir.with_name(run_dir.name + ".moved")
    run_dir.rename(moved)
    run_dir.symlink_to(outside, target_is_directory=True)
    try:
        yield
    finally:
        run_dir.unlink()
        moved.rename(run_dir)


def _key(run_id: object, pipeline: str, name: str = "run.log") -> str:
    return f"pipeline-logs/{pipeline}/{run_id}/{name}"


def _object_head(path: str) -> bool:
    """Matches a HEAD of an object (not of the bucket, which the pass probes first)."""
    return path.rstrip("/").count("/") >= 2


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fastflow", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- B1: bytes appended after verification ------------------------------------------------


@pytest.mark.parametrize("slow", ["HEAD", "PUT answer"])
def test_line_appended_during_a_slow_head_is_never_deleted(
    ctx: Context, env: dict[str, str], s3: S3Env, slow: str
) -> None:
    """The issue's reproduction: HEAD delayed 3 s, a line appended once the object is on
    the server. Before the fix: exit 0, log deleted, the line in no archive. The same
    with the PutObject's answer delayed (the log is then confirmed by that answer, the
    pass's metrics file having had the HEAD): the object is stored, the client not yet
    told."""
    old, new = seed_series(ctx, "p", 2)
    if slow == "HEAD":  # every upload HEAD-verified: no PutObject answer proves anything
        env = {**env, "S3_VERIFY_ETAG": "false"}
        s3.proxy.delay(3, match=lambda m, p: m == "HEAD" and _object_head(p))
    else:
        s3.proxy.delay_answer(3, match=lambda m, p: m == "PUT" and p.endswith("/run.log"))
    proc = _cli(env, "cleanup", "--json")
    client = s3.client()
    wait_until(lambda: _key(old.id, "p") in keys(client, s3.bucket), 30, "the upload")
    with old.log.open("ab") as f:
        f.write(b"appended after the upload\n")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    summary = json.loads(out)
    assert summary["deleted_runs"] == 0 and summary["backup_failures"] == 1
    error = summary["failures"][0]["error"]
    assert "run.log changed" in error and "kept" in error
    assert old.log.read_bytes() == old.log_bytes + b"appended after the upload\n"
    assert run_row(ctx, old.id) is not None
    # the next pass archives the grown file again (nothing the old object held is lost)
    s3.proxy.clear()
    again = run_pass(ctx, "test", now=NOW)
    assert again.archived_runs + again.rearchived_runs == 1
    assert again.deleted_runs == 1 and again.backup_failures == 0
    assert not old.log.exists() and run_row(ctx, old.id) is None
    stored = object_bytes(client, s3.bucket, _key(old.id, "p"))
    assert stored == old.log_bytes + b"appended after the upload\n"
    entry = ledger_rows(ctx)[old.id]
    assert entry.log_size == len(stored) and entry.local_deleted_at is not None
    assert failures(ctx) == []
    assert new.log.exists()


def test_a_put_acknowledged_but_not_stored_deletes_nothing(ctx: Context, s3: S3Env) -> None:
    """A gateway answers every PutObject 200 without passing it on (nothing is stored):
    the verification finds no object, so no file and no row is deleted; once PUTs reach
    the server again, the next pass archives and deletes as usual."""
    old, newest = seed_series(ctx, "p", 2)
    s3.proxy.fail(200, match=lambda m, p: m == "PUT" and _object_head(p), body="")

    summary = run_pass(ctx, "test", now=NOW)

    assert summary.deleted_runs == 0 and summary.backup_failures == 1
    (failure,) = failures(ctx)
    assert "does not exist" in failure.error_message
    assert old.log.read_bytes() == old.log_bytes and run_row(ctx, old.id) is not None
    assert keys(s3.client(), s3.bucket) == set()
    s3.proxy.clear()
    summary = run_pass(ctx, "test", now=NOW)
    assert summary.deleted_runs == 1 and summary.backup_failures == 0
    assert object_bytes(s3.client(), s3.bucket, _key(old.id, "p")) == old.log_bytes
    assert failures(ctx) == [] and newest.log.exists()


def test_bodies_changed_on_the_way_in_a_parallel_pass_delete_only_what_arrived_whole(
    ctx: Context, s3: S3Env
) -> None:
    """30 due runs archived by 8 workers, most confirmed by their PutObject answers; a
    link flips one byte in every upload of every third run. Each run whose files are
    gone has objects byte-identical to them; each other run keeps its files and row;
    the next pass over a healthy link archives the rest."""
    *due, newest = seed_series(ctx, "p", 31, days_apart=0.1)
    damaged = {str(run.id) for run in due[::3]}
    s3.proxy.corrupt_body(match=lambda m, p: m == "PUT" and p.split("/")[-2] in damaged)
    s3.proxy.clear_requests()

    summary = run_pass(ctx, "test", now=NOW)

    puts = len(s3.proxy.seen("PUT", "/pipeline-logs/p/"))
    heads = len(s3.proxy.seen("HEAD", "/pipeline-logs/p/"))
    # a damaged run's first upload gets a HEAD (its answer proves nothing) and stops it;
    # of the others, only those in flight before the first HEAD had answered
    assert heads < puts - len(damaged), (heads, puts)
    assert summary.deleted_runs == len(due) - len(damaged)
    assert summary.backup_failures == len(damaged)
    client = s3.client()
    for run in due:
        if str(run.id) in damaged:
            assert run.log.read_bytes() == run.log_bytes and run_row(ctx, run.id) is not None
            assert run.metrics.read_bytes() == run.metrics_bytes
        else:
            assert not run.log.exists() and run_row(ctx, run.id) is None
            assert object_bytes(client, s3.bucket, _key(run.id, "p")) == run.log_bytes
            metrics = object_bytes(
                client, s3.bucket, _key(run.id, "p").replace("run.log", "metrics.jsonl")
            )
            assert metrics == run.metrics_bytes
    s3.proxy.clear()
    again = run_pass(ctx, "test", now=NOW)
    assert again.deleted_runs == len(damaged) and again.backup_failures == 0
    for run in due:
        assert object_bytes(client, s3.bucket, _key(run.id, "p")) == run.log_bytes
    assert newest.log.exists()


def test_delete_refuses_a_file_that_changed_after_verification(tmp_path: Path) -> None:
    """The last check before unlinking: same inode, size and mtime as when hashed."""
    from fastflow.errors import FileChanged
    from fastflow.lifecycle import deletion as reaper

    run_dir = tmp_path / "p" / "r"
    run_dir.mkdir(parents=True)
    log, metrics = run_dir / "run.log", run_dir / "metrics.jsonl"
    log.write_bytes(b"verified\n")
    metrics.write_bytes(b"{}\n")
    expect = {"log": reaper.FileIdentity.of(log), "metrics": reaper.FileIdentity.of(metrics)}
    with log.open("ab") as f:
        f.write(b"late line\n")
    with pytest.raises(FileChanged, match="changed after it was archived"):
        reaper.delete_files(tmp_path, "p/r/run.log", "p/r/metrics.jsonl", expect)
    assert log.read_bytes() == b"verified\nlate line\n" and metrics.exists()  # nothing deleted
    expect["log"] = reaper.FileIdentity.of(log)
    removed = reaper.delete_files(tmp_path, "p/r/run.log", "p/r/metrics.jsonl", expect)
    assert removed.log and removed.metrics and not run_dir.exists()


def test_a_same_size_rewrite_with_the_old_mtime_put_back_is_refused(tmp_path: Path) -> None:
    """``cp -p``/``rsync -t --inplace`` rewrite bytes and restore the modification time;
    the change time still moves, so the file is kept (found by an outside audit)."""
    from fastflow.errors import FileChanged
    from fastflow.lifecycle import deletion as reaper

    run_dir = tmp_path / "p" / "r"
    run_dir.mkdir(parents=True)
    log = run_dir / "run.log"
    log.write_bytes(b"verified\n")
    expect = {"log": reaper.FileIdentity.of(log)}
    st = os.stat(log)
    log.write_bytes(b"REWRITE\n\n")  # same size
    while os.stat(log).st_ctime_ns == st.st_ctime_ns:  # within the clock's coarse tick
        log.write_bytes(b"REWRITE\n\n")
    os.utime(log, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(log).st_size, os.stat(log).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(FileChanged, match="changed after it was archived"):
        reaper.delete_files(tmp_path, "p/r/run.log", None, expect)
    assert log.read_bytes() == b"REWRITE\n\n"


def test_a_folder_swapped_for_a_link_during_deletion_deletes_nothing_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who can write in LOGS_DIR moves a run folder away and puts a link to a
    folder outside in its place, just after the files were checked and before they are
    unlinked (found by an outside audit, which did it during passes): the same-named
    files outside stay; what is deleted is the verified files, in the moved folder."""
    from fastflow.lifecycle import deletion as reaper
    from fastflow.runs import files as logfiles

    root = tmp_path / "logs"
    run_dir = root / "p" / "r"
    run_dir.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    for folder in (run_dir, outside):
        (folder / "run.log").write_bytes(b"log\n")
        (folder / "metrics.jsonl").write_bytes(b"{}\n")
    expect = {
        "log": reaper.FileIdentity.of(run_dir / "run.log"),
        "metrics": reaper.FileIdentity.of(run_dir / "metrics.jsonl"),
    }
    moved = root / "p" / "moved"
    real_identity = logfiles.RunFolder.identity
    swapped: list[bool] = []

    def identity_then_swap(self: logfiles.RunFolder, name: str) -> object:
        found = real_identity(self, name)
        if not swapped:  # the adversary acts right after the first check
            run_dir.rename(moved)
            run_dir.symlink_to(outside, target_is_directory=True)
            swapped.append(True)
        return found

    monkeypatch.setattr(logfiles.RunFolder, "identity", identity_then_swap)
    removed = reaper.delete_files(root, "p/r/run.log", "p/r/metrics.jsonl", expect)

    assert swapped and removed.log and removed.metrics
    assert (outside / "run.log").read_bytes() == b"log\n"
    assert (outside / "metrics.jsonl").read_bytes() == b"{}\n"
    assert os.listdir(moved) == []  # the verified files went (the link's name stays)
    assert run_dir.is_symlink()


def test_a_folder_swapped_for_a_link_during_the_upload_archives_the_runs_own_bytes(
    ctx: Context, s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who can write in LOGS_DIR swaps a due run's folder for a link to a folder
    outside while its files are uploaded, and swaps it back before the upload ends (an
    audit's residual race). Read by path, the outside files' bytes were archived as the
    run's, the checks by path saw the original files again, and the run's own log was
    deleted: lost, and a file from outside LOGS_DIR in the archive. Read through the
    held folder, the archive holds the run's own bytes, and nothing outside is read or
    touched."""
    old, newest = seed_series(ctx, "p", 2)
    run_dir = old.log.parent
    outside = tmp_path / "outside"
    outside.mkdir()
    # the same sizes as the run's files: nothing but the bytes tells them apart
    foreign_log = b"X" * (len(old.log_bytes) - 1) + b"\n"
    (outside / "run.log").write_bytes(foreign_log)
    (outside / "metrics.jsonl").write_bytes(b"Y" * (len(old.metrics_bytes) - 1) + b"\n")
    real_put = archive.S3Store.put_verified
    swaps: list[str] = []

    def put_while_swapped(self: archive.S3Store, key: str, path: Path, *a: Any, **k: Any) -> Any:
        if str(old.id) not in key:
            return real_put(self, key, path, *a, **k)
        swaps.append(key)
        with _swapped_for_link(run_dir, outside):
            return real_put(self, key, path, *a, **k)

    monkeypatch.setattr(archive.S3Store, "put_verified", put_while_swapped)
    summary = run_pass(ctx, "test", now=NOW)

    client = s3.client()
    assert object_bytes(client, s3.bucket, _key(old.id, "p")) == old.log_bytes
    assert object_bytes(client, s3.bucket, _key(old.id, "p", "metrics.jsonl")) == (
        old.metrics_bytes
    )
    assert ledger_rows(ctx)[old.id].log_sha256 == old.sha
    assert len(swaps) == 2 and summary.deleted_runs == 1 and summary.backup_failures == 0
    assert (outside / "run.log").read_bytes() == foreign_log
    assert run_row(ctx, old.id) is None and newest.log.read_bytes() == newest.log_bytes


def test_a_folder_moved_away_while_the_files_are_listed_loses_nothing(
    ctx: Context, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline's folder is moved away while the pass lists a due run's files and
    moved back right after (found by a review): the pass saw no file, archived nothing,
    and then deleted the files it had not archived. With S3 on, a file that was not
    archived is never deleted: the run is kept, and the next pass archives it."""
    from fastflow.lifecycle.executor import PassRun

    old, _ = seed_series(ctx, "p", 2)
    pipe_dir = old.log.parent.parent
    away = pipe_dir.with_name("p.away")
    real = PassRun.local_files
    moves: list[bool] = []

    def listed_while_moved(self: PassRun, log_file: Any, metrics_file: Any) -> Any:
        if moves or log_file is None or str(old.id) not in log_file:
            return real(self, log_file, metrics_file)
        pipe_dir.rename(away)
        try:
            return real(self, log_file, metrics_file)
        finally:
            away.rename(pipe_dir)
            moves.append(True)

    monkeypatch.setattr(PassRun, "local_files", listed_while_moved)
    summary = run_pass(ctx, "test", now=NOW)

    assert moves and summary.backup_failures == 1
    assert "was not found when the run's files were archived" in failures(ctx)[0].error_message
    assert old.log.read_bytes() == old.log_bytes and run_row(ctx, old.id) is not None
    monkeypatch.setattr(PassRun, "local_files", real)
    run_pass(ctx, "test", now=NOW)
    assert object_bytes(s3.client(), s3.bucket, _key(old.id, "p")) == old.log_bytes
    assert run_row(ctx, old.id) is None and not old.log.exists()


def test_a_rewritten_log_is_not_archived_over_its_copy_through_a_swapped_folder(
    ctx: Context, s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose archive was verified but whose local delete did not happen (a pending
    ledger entry), and whose local log was then rewritten, not grown: it is kept and its
    archived copy left alone. Found by a review: the check whether the log only grew
    read by path, so a folder swapped for a link during that check (to a file that is
    the archived bytes plus more) had the rewritten log uploaded over the archived copy
    and then deleted — the original bytes gone everywhere. The check now reads the held
    file, and the upload must be the very version that was checked."""
    from fastflow.errors import FileChanged
    from fastflow.lifecycle import deletion as reaper
    from fastflow.lifecycle import resume

    old, _ = seed_series(ctx, "p", 2)
    run_dir = old.log.parent
    real_delete = reaper.delete_files

    def failing_delete(root: Path, log_file: Any, *a: Any, **k: Any) -> Any:
        if log_file and str(old.id) in log_file:
            raise FileChanged("the local delete fails once")
        return real_delete(root, log_file, *a, **k)

    monkeypatch.setattr(reaper, "delete_files", failing_delete)
    run_pass(ctx, "test", now=NOW)
    monkeypatch.setattr(reaper, "delete_files", real_delete)
    client = s3.client()
    assert object_bytes(client, s3.bucket, _key(old.id, "p")) == old.log_bytes
    assert ledger_rows(ctx)[old.id].local_deleted_at is None
    rewritten = b"REWRITTEN " * (len(old.log_bytes) // 5) + b"\n"
    old.log.write_bytes(rewritten)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "run.log").write_bytes(old.log_bytes + b"more\n")
    real_grew = resume.grew_from  # type: ignore[attr-defined]
    swaps: list[bool] = []

    def grew_while_swapped(*args: Any) -> bool:
        swaps.append(True)
        with _swapped_for_link(run_dir, outside):
            return bool(real_grew(*args))

    monkeypatch.setattr(resume, "grew_from", grew_while_swapped)
    summary = run_pass(ctx, "test", now=NOW)

    assert object_bytes(client, s3.bucket, _key(old.id, "p")) == old.log_bytes
    assert swaps and old.log.read_bytes() == rewritten and summary.rearchived_runs == 0
    # refused: the check meets the link instead of reading through it
    (failure,) = failures(ctx)
    assert "symbolic link" in failure.error_message and failure.run_id == old.id
    assert not run_dir.is_symlink() and (outside / "run.log").exists()


@pytest.mark.parametrize("with_expect", [True, False])
def test_a_log_that_is_a_link_to_another_runs_log_is_refused(
    tmp_path: Path, with_expect: bool
) -> None:
    """A run's ``run.log`` replaced by a link to another run's log: deleting the first
    run must not delete (or unlink through) the other's (with and without S3)."""
    from fastflow.errors import UnsafePath
    from fastflow.lifecycle import deletion as reaper

    root = tmp_path / "logs"
    (root / "p" / "a").mkdir(parents=True)
    (root / "p" / "b").mkdir(parents=True)
    other = root / "p" / "b" / "run.log"
    other.write_bytes(b"run b\n")
    own = root / "p" / "a" / "run.log"
    own.write_bytes(b"run a\n")
    expect = {"log": reaper.FileIdentity.of(own)} if with_expect else None
    own.unlink()
    own.symlink_to(other)

    with pytest.raises(UnsafePath, match="symbolic link"):
        reaper.delete_files(root, "p/a/run.log", None, expect)
    assert other.read_bytes() == b"run b\n" and own.is_symlink()


def test_a_missing_logs_dir_is_nothing_to_delete(tmp_path: Path) -> None:
    """LOGS_DIR is created by the first run: a pass before it exists, or after it was
    removed, deletes the rows of runs whose files are already gone (found by a
    review: a missing LOGS_DIR had made every deletion fail)."""
    from fastflow.lifecycle import deletion as reaper

    removed = reaper.delete_files(tmp_path / "never-created", "p/r/run.log", "p/r/metrics.jsonl")
    assert not removed.log and not removed.metrics


def test_a_missing_logs_dir_deletes_no_run(ctx: Context, s3: S3Env) -> None:
    """LOGS_DIR gone while runs record logs in it (an unmounted volume; found by an
    outside audit): every due run's files looked already gone, and the pass deleted the
    rows without archiving anything — the logs came back with the volume, orphaned. The
    pass now acts on nothing and says why; once LOGS_DIR is back it goes on as usual."""
    old, newest = seed_series(ctx, "p", 2)
    root = ctx.settings.logs_root
    away = root.with_name("logs.unmounted")
    root.rename(away)

    summary = run_pass(ctx, "test", now=NOW)

    assert summary.deleted_runs == 0 and summary.backup_failures == 1
    (failure,) = failures(ctx)
    assert "LOGS_DIR" in failure.error_message and "does not exist" in failure.error_message
    assert run_row(ctx, old.id) is not None and keys(s3.client(), s3.bucket) == set()
    away.rename(root)
    summary = run_pass(ctx, "test", now=NOW)
    assert summary.deleted_runs == 1 and summary.backup_failures == 0
    assert object_bytes(s3.client(), s3.bucket, _key(old.id, "p")) == old.log_bytes
    assert failures(ctx) == [] and newest.log.exists()


def test_a_new_installation_without_logs_dir_is_not_a_failure(ctx: Context) -> None:
    """No run has written a log yet — not even a queued one, which already names its log
    (found by a review: such a run made every pass fail)."""
    from fastflow.orchestration import queue

    assert not ctx.settings.logs_root.exists()
    assert run_pass(ctx, "test", now=NOW).backup_failures == 0
    queued = queue.enqueue(ctx.db, "p", "manual")
    row = run_row(ctx, queued)
    assert row is not None and row.log_file is not None
    summary = run_pass(ctx, "test", now=NOW)
    assert summary.backup_failures == 0 and failures(ctx) == []
    assert run_row(ctx, queued) is not None


@pytest.mark.timeout(120)
def test_a_fifo_in_a_logs_place_is_refused_without_hanging_the_pass(
    ctx: Context, s3: S3Env
) -> None:
    """A FIFO where a due run's log should be: reading it would block until a writer
    came, and the pass would hang holding its lock (found by an outside audit). It is
    refused, the run kept with the reason, and the other runs go on."""
    old, other, newest = seed_series(ctx, "p", 3)
    old.log.unlink()
    os.mkfifo(old.log)

    summary = run_pass(ctx, "test", now=NOW)

    assert summary.deleted_runs == 1 and summary.backup_failures == 1
    assert "not a regular file" in failures(ctx)[0].error_message
    assert run_row(ctx, old.id) is not None and old.log.exists()
    assert run_row(ctx, other.id) is None and run_row(ctx, newest.id) is not None


def test_concurrent_appender_loses_no_byte(ctx: Context, s3: S3Env) -> None:
    """A writer appends to every old log every 10 ms while passes run with slow HEADs and
    slow PutObject answers: every appended line ends up local or in a verified archive."""
    seeded = seed_series(ctx, "busy", 7)
    old = seeded[:-1]
    stop = threading.Event()
    written: dict[Path, list[bytes]] = {r.log: [] for r in old}

    def append() -> None:
        n = 0
        while not stop.is_set():
            for path, lines in written.items():
                line = f"appended {n}\n".encode()
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # never re-creates it
                except FileNotFoundError:
                    continue
                try:
                    os.write(fd, line)
                    lines.append(line)
                finally:
                    os.close(fd)
            n += 1
            stop.wait(0.01)

    s3.proxy.delay(0.5, match=lambda m, p: m == "HEAD" and _object_head(p))
    s3.proxy.delay_answer(0.5, match=lambda m, p: m == "PUT" and _object_head(p))
    writer = threading.Thread(target=append)
    writer.start()
    try:
        first = run_pass(ctx, "test", now=NOW)
    finally:
        stop.set()
        writer.join()
    s3.proxy.clear()
    run_pass(ctx, "test", now=NOW)  # archives what grew meanwhile
    client = s3.client()
    assert first.backup_failures >= 1  # the appends were noticed
    for run in old:
        if run.log.exists():
            text = run.log.read_bytes()
        else:
            text = object_bytes(client, s3.bucket, _key(run.id, "busy"))
        for line in written[run.log]:
            assert line in text, f"{line!r} of run {run.id} is neither local nor archived"


# --- B2: a lost PostgreSQL lock -------------------------------------------------------------


def _terminate_lock_holder(admin_url: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND granted",
            (PG_LOCK_KEY,),
        ).fetchone()
        assert row is not None, "no pass holds the lock"
        # the signal is asynchronous: wait (up to 10 s) until the backend has exited and
        # its advisory lock is released, so that the next pass can take it
        done = conn.execute("SELECT pg_terminate_backend(%s, 10000)", (row[0],)).fetchone()
        assert done is not None and done[0], "the lock holder did not exit"

        def released() -> bool:
            held = conn.execute(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
                "AND granted AND pid = %s",
                (PG_LOCK_KEY, row[0]),
            ).fetchone()
            return held is None

        wait_until(released, 10, "the terminated backend to release the pass lock")
        return int(row[0])


@pytest.mark.slow
def test_pass_that_loses_its_postgres_lock_stops_cleanly(
    env: dict[str, str], s3: S3Env, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**env, "DATABASE_URL": pg_url, "S3_MAX_CONCURRENCY": "2"}
    monkeypatch.setenv("DATABASE_URL", pg_url)
    ctx = bootstrap(load_settings())
    runs = seed_series(ctx, "locked", 30)
    s3.proxy.delay(0.3, match=lambda m, p: m == "PUT")
    first = _cli(env, "cleanup", "--json")

    def uploading() -> bool:  # mid-pass: uploads under way (ledger rows come per chunk)
        return sum(r.method == "PUT" for r in s3.proxy.requests) >= 4

    wait_until(uploading, 60, "the first uploads")
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    _terminate_lock_holder(admin)
    second = run_pass(ctx, "test")  # takes the lock the first one lost
    out, err = first.communicate(timeout=120)
    assert first.returncode == 1, err
    summary = json.loads(out)
    assert "lost its lock" in summary["error"]
    assert "duplicate key" not in err and "Traceback" not in err
    s3.proxy.clear()
    third = run_pass(ctx, "test")
    assert second.error is None and third.error is None
    with ctx.db.session() as s:
        run_failures = [f for f in s.query(BackupFailure) if f.run_id is not None]
    assert run_failures == [], [f.error_message for f in run_failures]
    for run in runs[:-1]:
        assert not run.log.exists() and run_row(ctx, run.id) is None
    assert runs[-1].log.exists()
    assert len(ledger_rows(ctx)) == len(runs) - 1
    ctx.db.dispose()


def test_ledger_writes_are_idempotent(ctx: Context, s3: S3Env) -> None:
    (run,) = seed_series(ctx, "p", 1)
    ref = _ref(ctx, run.id)
    ledger.record(ctx.db, ref, s3.bucket, {"log_key": "a", "log_size": 1}, "x")
    ledger.record(ctx.db, ref, s3.bucket, {"metrics_key": "m"}, "y")
    entry = ledger_rows(ctx)[run.id]
    assert (entry.log_key, entry.metrics_key, entry.reason) == ("a", "m", "y")


def _ref(ctx: Context, run_id: Any) -> Any:
    from fastflow.lifecycle.policy import RunRef

    row = run_row(ctx, run_id)
    assert row is not None
    return RunRef(
        row.id,
        row.pipeline_name,
        row.status,
        row.triggered_by,
        row.started_at,
        row.finished_at,
        row.exit_code,
        row.log_file,
        row.metrics_file,
        row.log_size,
    )


# --- B3: one undeletable file ------------------------------------------------------------


def _chattr(flag: str, path: Path) -> None:
    res = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"chattr {flag} failed (needs root with CAP_LINUX_IMMUTABLE): {res.stderr}")
        pytest.skip(f"chattr {flag} not permitted here: {res.stderr.strip()}")


def test_immutable_file_does_not_block_later_passes(ctx: Context, s3: S3Env) -> None:
    stuck, *_ = seed_series(ctx, "p", 2)
    _chattr("+i", stuck.log)
    try:
        run_pass(ctx, "test", now=NOW)  # archived; the delete fails; pending in the ledger
        later = [seed_run(ctx, "p", NOW - timedelta(hours=h)) for h in (3, 2, 1)]
        summary = run_pass(ctx, "test", now=NOW)  # the resume phase meets it again
        assert summary.backup_failures == 1 and summary.error is None
        assert "Operation not permitted" in summary.failures[0].error
        # (an outside audit: the message named no file)
        rel = stuck.log.relative_to(ctx.settings.logs_root)
        assert f"local file error on {rel}: " in summary.failures[0].error
        assert summary.deleted_runs == 3  # every other due run was processed
        assert stuck.log.exists() and run_row(ctx, stuck.id) is not None
        assert later[-1].log.exists()
    finally:
        _chattr("-i", stuck.log)
    final = run_pass(ctx, "test", now=NOW)
    assert final.deleted_runs == 1 and final.backup_failures == 0
    assert failures(ctx) == []


# --- smaller items ------------------------------------------------------------------------


def test_silent_server_gives_up_in_seconds_not_minutes(ctx: Context, s3: S3Env) -> None:
    """The server accepts connections and never answers. The read timeout is 20 s; the
    pass must not wait it out (before: two rounds of timeouts, minutes)."""
    runs = seed_series(ctx, "p", 12)
    s3.proxy.delay(300)
    try:
        started = time.monotonic()
        summary = run_pass(ctx, "test", now=NOW)
        took = time.monotonic() - started
    finally:
        s3.proxy.clear()
    assert took < ctx.settings.s3_read_timeout, f"the pass took {took:.1f} s"
    assert summary.backup_failures == 1 and summary.skipped_runs == 10
    assert "did not answer" in summary.failures[0].error
    assert all(r.log.exists() and run_row(ctx, r.id) is not None for r in runs)
    assert not any(r.method == "PUT" for r in s3.proxy.requests)


def _pending_entry(ctx: Context, s3: S3Env, run: Any, pipeline: str) -> str:
    """Archive the run's log and record it as archived but not yet deleted locally."""
    return pending_entry(ctx, s3.bucket, run, pipeline)


def test_vanished_object_is_archived_again_from_the_local_copy(ctx: Context, s3: S3Env) -> None:
    old = seed_run(ctx, "p", NOW - timedelta(days=3), metrics=False)
    seed_run(ctx, "p", NOW - timedelta(days=1), metrics=False)
    key = _pending_entry(ctx, s3, old, "p")
    s3.client().delete_object(Bucket=s3.bucket, Key=key)  # gone from the bucket
    summary = run_pass(ctx, "test", now=NOW)
    assert summary.rearchived_runs == 1 and summary.backup_failures == 0
    assert summary.deleted_runs == 1 and not old.log.exists()
    assert object_bytes(s3.client(), s3.bucket, key) == old.log_bytes


def test_failures_are_resolved_when_their_run_is_no_longer_due(
    ctx: Context, env: dict[str, str], s3: S3Env
) -> None:
    old, _ = seed_series(ctx, "p", 2)
    s3.proxy.fail(500, match=lambda m, p: m == "PUT")
    assert run_pass(ctx, "test", now=NOW).backup_failures == 1
    s3.proxy.clear()
    assert len(failures(ctx)) == 1
    relaxed = bootstrap(load_settings(log_retention_runs=5))
    summary = run_pass(relaxed, "test", now=NOW)  # the run is kept now: nothing is due
    assert summary.planned_runs == 0 and summary.backup_failures == 0
    assert failures(ctx) == []
    assert old.log.exists()
    relaxed.db.dispose()


def test_stale_temp_files_of_a_killed_truncation_are_removed(ctx: Context) -> None:
    journal = ctx.settings.data_dir.resolve() / "truncate.journal"
    run = seed_run(ctx, "p", NOW - timedelta(hours=1))
    tmp = run.log.parent / ".truncate-abc123.tmp"
    tmp.write_bytes(b"half a copy")
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(str(tmp))
    compress_tmp = ctx.settings.data_dir.resolve() / "tmp" / "archive-x.part"
    compress_tmp.parent.mkdir(parents=True, exist_ok=True)
    compress_tmp.write_bytes(b"x")
    summary = run_pass(ctx, "test", now=NOW)
    assert summary.stale_temp_files_removed == 2
    assert not tmp.exists() and not journal.exists() and not compress_tmp.exists()
    assert run.log.read_bytes() == run.log_bytes


def test_temp_file_in_a_deleted_run_folder_goes_with_it(ctx: Context, s3: S3Env) -> None:
    old, _ = seed_series(ctx, "p", 2)
    (old.log.parent / ".truncate-zz.tmp").write_bytes(b"left over")
    summary = run_pass(ctx, "test", now=NOW)
    assert summary.deleted_runs == 1 and not old.log.parent.exists()


# --- archive before truncate ---------------------------------------------------------------


def test_oversized_log_is_archived_byte_identical_before_truncation(
    ctx: Context, env: dict[str, str], s3: S3Env
) -> None:
    big_log = b"".join(f"line {i} of the noisy pipeline\n".encode() for i in range(400_000))
    assert len(big_log) > 10 * 1024 * 1024
    big = seed_run(ctx, "noisy", NOW - timedelta(hours=1), log=big_log)
    tight = bootstrap(load_settings(log_max_size_mb=1, log_retention_runs=None))
    summary = run_pass(tight, "test", now=NOW)
    assert summary.archived_before_truncation == 1 and summary.truncated_logs == 1
    assert big.log.stat().st_size <= 1024 * 1024
    assert object_bytes(s3.client(), s3.bucket, _key(big.id, "noisy")) == big_log
    full = subprocess.run(
        [sys.executable, "-m", "fastflow", "logs", str(big.id), "--full"],
        env={**os.environ, **env, "LOG_RETENTION_RUNS": ""},
        capture_output=True,
        check=False,
    )
    assert full.returncode == 0, full.stderr
    assert full.stdout == big_log
    local = subprocess.run(
        [sys.executable, "-m", "fastflow", "logs", str(big.id)],
        env={**os.environ, **env, "LOG_RETENTION_RUNS": ""},
        capture_output=True,
        check=False,
    )
    assert local.stdout == big.log.read_bytes() and local.stdout.startswith(b"[... ")
    tight.db.dispose()


def test_truncation_waits_for_a_working_archive(ctx: Context, s3: S3Env) -> None:
    big = seed_run(ctx, "noisy", NOW - timedelta(hours=1), log=b"y" * 2_000_000 + b"\n")
    tight = bootstrap(load_settings(log_max_size_mb=1))
    s3.proxy.fail(500)
    first = run_pass(tight, "test", now=NOW)
    assert first.truncated_logs == 0 and first.backup_failures == 1
    assert big.log.stat().st_size == 2_000_001  # nothing cut without a copy
    s3.proxy.clear()
    second = run_pass(tight, "test", now=NOW)
    assert second.truncated_logs == 1 and second.archived_before_truncation == 1
    assert failures(ctx) == []
    tight.db.dispose()


def test_retention_keeps_the_full_archived_log_of_a_truncated_run(ctx: Context, s3: S3Env) -> None:
    big_log = b"z" * 3_000_000 + b"\n"
    big = seed_run(ctx, "noisy", NOW - timedelta(days=2), log=big_log)
    tight = bootstrap(load_settings(log_max_size_mb=1, log_retention_runs=None))
    run_pass(tight, "test", now=NOW)
    truncated = big.log.read_bytes()
    assert len(truncated) <= 1024 * 1024
    seed_run(ctx, "noisy", NOW - timedelta(days=1))
    summary = run_pass(ctx, "test", now=NOW)  # LOG_RETENTION_RUNS=1 removes the big run
    assert summary.deleted_runs == 1 and summary.backup_failures == 0
    assert not big.log.exists() and run_row(ctx, big.id) is None
    client = s3.client()
    assert object_bytes(client, s3.bucket, _key(big.id, "noisy")) == big_log  # not replaced
    assert object_bytes(client, s3.bucket, _key(big.id, "noisy", "metrics.jsonl")) == (
        big.metrics_bytes
    )
    entry = ledger_rows(ctx)[big.id]
    assert entry.metrics_key is not None and entry.local_deleted_at is not None
    tight.db.dispose()


# --- a killed runner ----------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_killed_runner_takes_its_pipeline_tree_with_it(
    ff_env: dict[str, str], make_pipeline: Any, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    make_pipeline(
        "tree",
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('working', flush=True)\n"
        "time.sleep(300)\n",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastflow", "run", "tree"],
        env={**os.environ, **ff_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: pids.exists() and " " in pids.read_text(), 60, "the pipeline tree")
    leader, grandchild = (int(x) for x in pids.read_text().split())
    try:
        assert _alive(grandchild)
        proc.kill()
        proc.wait()
        wait_until(lambda: not _alive(leader), 10, "the pipeline to die with its runner")
        # what the pipeline started dies too, at once (its run's tree watch; it ran on,
        # unsupervised, until the next fastflow command before)
        wait_until(lambda: not _alive(grandchild), 10, "the rest of the tree to be killed")
        left = list(Path(tempfile.gettempdir()).glob("fastflow-run-*"))
        assert any(p.is_dir() for p in left)  # the dead run could not remove its scratch
        ctx = bootstrap(load_settings())  # recovers the orphaned run
        from fastflow.runs import store as runs

        (row,) = runs.list_runs(ctx.db, pipeline="tree")
        assert row.status == "FAILED"
        # ... the recovery does (they were left in the temporary folder for good)
        assert list(Path(tempfile.gettempdir()).glob(f"fastflow-run-{str(row.id)[:8]}*")) == []
        ctx.db.dispose()
    finally:
        for pid in (leader, grandchild):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def test_recycled_pid_is_never_killed() -> None:
    from fastflow.runs.store import kill_orphaned_group

    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        # same pid, but recorded with an older start time: it is another process
        assert kill_orphaned_group(sleeper.pid, time.time() - 3600) == 0
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_folder_swapped_for_a_link_during_truncation_keeps_the_log(
    ctx: Context, s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder swapped for a link while its oversized log is truncated: the refusal
    was taken for an I/O failure of the truncation, and its fallback dropped the whole
    local log (found by an outside audit; archived first, so nothing was lost, but the
    docs promise the fallback only for I/O errors). The log is now kept as it is, the
    refusal recorded, and the next pass truncates it."""
    from fastflow.lifecycle import oversized

    full = b"a line of the noisy pipeline\n" * 80_000  # > 1 MiB
    big = seed_run(ctx, "noisy", NOW - timedelta(hours=1), log=full)
    run_dir = big.log.parent
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "run.log").write_bytes(full)
    real_truncate = oversized.truncate_log  # type: ignore[attr-defined]
    swaps: list[bool] = []

    def truncate_while_swapped(*args: Any, **kw: Any) -> Any:
        if swaps:
            return real_truncate(*args, **kw)
        swaps.append(True)
        with _swapped_for_link(run_dir, outside):
            return real_truncate(*args, **kw)

    monkeypatch.setattr(oversized, "truncate_log", truncate_while_swapped)
    tight = bootstrap(load_settings(log_max_size_mb=1, log_retention_runs=None))
    first = run_pass(tight, "test", now=NOW)

    assert swaps and first.truncated_logs == 0 and first.dropped_files_runs == 0
    assert first.backup_failures == 1 and "symbolic link" in failures(ctx)[0].error_message
    assert big.log.read_bytes() == full and (outside / "run.log").read_bytes() == full
    row = run_row(ctx, big.id)
    assert row is not None and row.log_file is not None
    second = run_pass(tight, "test", now=NOW)
    assert second.truncated_logs == 1 and big.log.stat().st_size <= 1024 * 1024
    assert object_bytes(s3.client(), s3.bucket, _key(big.id, "noisy")) == full
    tight.db.dispose()


def _killed_truncation(ctx: Context, s3: S3Env) -> tuple[bytes, Any, str]:
    """A run with a log over 1 MiB whose full log is archived and whose ledger entry
    says "truncated", while the local log is still the full one: the state a kill
    leaves between the ledger and the rename. (full log, the run, its object key)"""
    full = b"a line of the noisy pipeline\n" * 80_000  # > 1 MiB
    big = seed_run(ctx, "noisy", NOW - timedelta(days=2), log=full)
    key = _key(big.id, "noisy")
    store = archive.open_store(ctx.settings)
    stored = store.put_verified(key, big.log, {"run_id": str(big.id)})
    with ctx.db.session() as s:
        s.add(
            ArchivedRun(
                run_id=big.id,
                pipeline_name="noisy",
                status="SUCCESS",
                triggered_by="schedule",
                started_at=big_started(ctx, big.id),
                bucket=s3.bucket,
                log_key=key,
                log_size=stored.size,
                log_sha256=stored.sha256,
                reason="truncate_log",
                log_truncated_at=NOW,
                local_log_size=123,
                local_log_sha256="0" * 64,  # the temp copy that was never renamed
            )
        )
    return full, big, key


def test_crash_between_ledger_and_rename_of_a_truncation_loses_nothing(
    ctx: Context, s3: S3Env
) -> None:
    """The state a kill leaves after the ledger learnt the truncated copy but before the
    rename: the local log is still the full one. The next pass truncates without a new
    upload, and retention later deletes it against the full archived copy."""
    full, big, key = _killed_truncation(ctx, s3)
    tight = bootstrap(load_settings(log_max_size_mb=1, log_retention_runs=None))
    first = run_pass(tight, "test", now=NOW)
    assert first.truncated_logs == 1 and first.backup_failures == 0
    assert first.archived_before_truncation == 0 and first.rearchived_runs == 0
    assert big.log.stat().st_size <= 1024 * 1024
    seed_run(ctx, "noisy", NOW - timedelta(days=1))
    second = run_pass(ctx, "test", now=NOW)  # LOG_RETENTION_RUNS=1 removes the big run
    assert second.deleted_runs == 1 and second.backup_failures == 0
    assert object_bytes(s3.client(), s3.bucket, key) == full
    tight.db.dispose()


def test_a_line_appended_as_the_truncation_tells_the_ledger_is_kept_and_archived_next(
    ctx: Context, s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line appended in the last instant of a truncation (after the ledger learnt the
    truncated copy, before the rename): the truncation is abandoned and the line kept.
    The ledger then said "truncated" while the log was the full one, grown — and every
    later pass failed on it ("changed after it was truncated; kept"), until retention,
    which failed on it too. The grown full log is now archived again (nothing of the
    archived copy is lost: it is a prefix) and truncated; retention deletes it later."""
    full = b"a line of the noisy pipeline\n" * 80_000  # > 1 MiB
    big = seed_run(ctx, "noisy", NOW - timedelta(days=2), log=full)
    late = b"a line written in the truncation's last instant\n"
    real_mark = ledger.mark_truncated
    appended: list[bool] = []

    def mark_then_append(*args: Any) -> None:
        real_mark(*args)
        if not appended:
            with big.log.open("ab") as f:
                f.write(late)
            appended.append(True)

    monkeypatch.setattr(ledger, "mark_truncated", mark_then_append)
    tight = bootstrap(load_settings(log_max_size_mb=1, log_retention_runs=None))
    first = run_pass(tight, "test", now=NOW)
    assert appended and first.truncated_logs == 0 and first.backup_failures == 1
    assert big.log.read_bytes() == full + late  # kept whole

    monkeypatch.setattr(ledger, "mark_truncated", real_mark)
    second = run_pass(tight, "test", now=NOW)
    assert second.backup_failures == 0 and second.truncated_logs == 1
    assert second.rearchived_runs == 1 and big.log.stat().st_size <= 1024 * 1024
    key = _key(big.id, "noisy")
    assert object_bytes(s3.client(), s3.bucket, key) == full + late
    seed_run(ctx, "noisy", NOW - timedelta(days=1))
    third = run_pass(ctx, "test", now=NOW)  # LOG_RETENTION_RUNS=1 removes the big run
    assert third.deleted_runs == 1 and third.backup_failures == 0
    assert object_bytes(s3.client(), s3.bucket, key) == full + late
    tight.db.dispose()


def test_retention_archives_again_a_full_log_that_grew_after_a_failed_truncation(
    ctx: Context, s3: S3Env
) -> None:
    """The ledger says "truncated", the local log is the full one plus a line (a crash
    between the ledger and the rename, then an append), and retention reaches the run:
    the grown log is archived again and deleted (it used to be kept, failing every
    pass)."""
    full, big, key = _killed_truncation(ctx, s3)
    with big.log.open("ab") as f:
        f.write(b"one more line\n")
    seed_run(ctx, "noisy", NOW - timedelta(days=1))
    summary = run_pass(ctx, "test", now=NOW)  # LOG_RETENTION_RUNS=1, no size limit
    assert summary.backup_failures == 0 and summary.deleted_runs == 1
    assert not big.log.exists() and run_row(ctx, big.id) is None
    assert object_bytes(s3.client(), s3.bucket, key) == full + b"one more line\n"


def big_started(ctx: Context, run_id: Any) -> Any:
    row = run_row(ctx, run_id)
    assert row is not None
    return row.started_at
