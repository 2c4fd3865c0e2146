"""Database: migrations on SQLite and PostgreSQL, UTC timestamps, the run index."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from fastflow.config import load_settings
from fastflow.db.engine import Database
from fastflow.db.models import PipelineRun
from tests.conftest import RUN_FIELDS
from tests.harness.migrations import upgrade_to

TABLES = {"pipeline_runs", "archived_runs", "backup_failures", "cleanup_passes"}


def _check_schema(db: Database) -> None:
    insp = inspect(db.engine)
    assert set(insp.get_table_names()) >= TABLES
    cols = {c["name"] for c in insp.get_columns("pipeline_runs")}
    assert cols >= RUN_FIELDS
    indexes = {tuple(i["column_names"]) for i in insp.get_indexes("pipeline_runs")}
    assert ("pipeline_name", "started_at") in indexes
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _roundtrip_utc(db: Database) -> None:
    berlin = timezone(timedelta(hours=1))
    rid = uuid.uuid4()
    with db.session() as s:
        s.add(
            PipelineRun(
                id=rid,
                pipeline_name="p",
                status="SUCCESS",
                triggered_by="cli",
                started_at=datetime(2026, 1, 1, 13, 0, tzinfo=berlin),
            )
        )
    with db.session() as s:
        run = s.get(PipelineRun, rid)
        assert run is not None
        assert run.started_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        assert run.started_at.tzinfo is not None


def test_sqlite_migrates_creates_folder_and_is_idempotent(tmp_path: Path) -> None:
    db = Database(load_settings(database_url=f"sqlite:///{tmp_path}/new/dir/ff.db"))
    db.migrate()
    db.migrate()
    assert (tmp_path / "new" / "dir" / "ff.db").exists()
    _check_schema(db)
    _roundtrip_utc(db)
    db.dispose()


def test_postgres_migrates_and_keeps_utc(pg_url: str) -> None:
    db = Database(load_settings(database_url=pg_url))
    db.migrate()
    db.migrate()
    _check_schema(db)
    _roundtrip_utc(db)
    db.dispose()


def test_postgres_concurrent_startups_migrate_once(pg_url: str) -> None:
    import threading

    errors: list[BaseException] = []

    def start() -> None:
        try:
            db = Database(load_settings(database_url=pg_url))
            db.migrate()
            db.dispose()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_sqlite_concurrent_first_startups_migrate_once(tmp_path: Path) -> None:
    """Four processes opening a new SQLite database at once all start (before, the
    driver's per-statement commits let them race: "table ... already exists")."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/ff.db"
    code = (
        "from fastflow.config import load_settings\n"
        "from fastflow.db.engine import Database\n"
        "import alembic.command, sys\n"
        f"db = Database(load_settings(_env_file=None, database_url={url!r}))\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"  # the start signal: all four migrate at the same moment
        "db.migrate()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [(p.wait(timeout=120), p.communicate()[0]) for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0, 0], results
    db = Database(load_settings(database_url=url))
    _check_schema(db)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    db.dispose()


def test_unwritable_sqlite_folder_is_a_config_error(tmp_path: Path) -> None:
    from fastflow.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError):
        Database(load_settings(database_url=f"sqlite:///{blocker}/sub/ff.db"))


def test_head_revision_constant_matches_migration_scripts() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from fastflow.db.engine import MIGRATIONS_DIR, head_revision

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(cfg).get_current_head() == head_revision()


KILL_AT = """
import os, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine
from fastflow.config import load_settings
from fastflow.db.engine import Database

seen = []

@event.listens_for(Engine, "before_cursor_execute")
def _die(conn, cursor, statement, *args):
    seen.append(statement)
    if sum(%(marker)r in s for s in seen) == %(nth)d:
        os._exit(9)  # as if killed: no rollback, no clean-up

Database(load_settings(_env_file=None, database_url=sys.argv[1])).migrate()
"""


def _migrate_killed(url: str, cwd: Path, marker: str, nth: int) -> None:
    import subprocess
    import sys

    code = KILL_AT % {"marker": marker, "nth": nth}
    res = subprocess.run(
        [sys.executable, "-c", code, url], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 9, res.stderr


def test_a_sqlite_upgrade_killed_half_way_leaves_the_old_schema(tmp_path: Path) -> None:
    """Found in review: SQLite's Python driver commits each ``ALTER TABLE`` on its own,
    so an upgrade killed between two of them (or stopped by a full disk) left a column
    added under the old revision, and every later start failed with "duplicate column
    name". The whole upgrade is one SQLite transaction now."""
    from fastflow.db.engine import current_revision, head_revision

    url = f"sqlite:///{tmp_path}/ff.db"
    db = Database(load_settings(_env_file=None, database_url=url))
    upgrade_to(db, "0011")  # the revision before the executors' three columns
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO pipeline_runs (id, pipeline_name, status, triggered_by, started_at)"
                " VALUES ('0' || hex(randomblob(15)) || '0', 'kept', 'SUCCESS', 'cli',"
                " '2026-12-01 10:00:00.000000')"
            )
        )
    db.dispose()
    # killed as it adds the second of 0012's columns: the first one was added already
    _migrate_killed(url, tmp_path, "ALTER TABLE pipeline_runs ADD COLUMN", 2)
    db = Database(load_settings(_env_file=None, database_url=url))
    assert current_revision(db.engine) == "0011"
    columns = {c["name"] for c in inspect(db.engine).get_columns("pipeline_runs")}
    assert "executor" not in columns
    db.migrate()  # the next start completes it
    assert current_revision(db.engine) == head_revision()
    _check_schema(db)
    with db.engine.connect() as conn:
        names = conn.execute(text("SELECT pipeline_name FROM pipeline_runs")).scalars().all()
    assert names == ["kept"]
    db.dispose()


def test_a_first_sqlite_migration_killed_half_way_starts_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ff.db"
    _migrate_killed(url, tmp_path, "CREATE TABLE", 3)
    db = Database(load_settings(_env_file=None, database_url=url))
    assert inspect(db.engine).get_table_names() == []
    db.migrate()
    _check_schema(db)
    db.dispose()


def test_a_database_a_newer_fastflow_upgraded_is_refused_in_one_line(tmp_path: Path) -> None:
    """An outside audit: started on a database whose schema revision it does not know
    (a rollback after an upgrade), every command died with ~90 lines of Alembic
    traceback. It is a configuration error now (exit 2), one line, nothing migrated."""
    import os
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/ff.db"
    db = Database(load_settings(database_url=url))
    db.migrate()
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    db.dispose()
    env = {**os.environ, "DATABASE_URL": url, "DATA_DIR": str(tmp_path / "data")}
    res = subprocess.run(
        [sys.executable, "-m", "fastflow", "runs"], env=env, capture_output=True, text=True
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "schema revision '0999'" in res.stderr and "a newer fastflow upgraded it" in res.stderr
    check = Database(load_settings(database_url=url))
    with check.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0999"
    check.dispose()
