"""The database's part of every start-up (issue 14): one query when it is at its
head, and no PostgreSQL dialect loaded on SQLite."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, event

from fastflow.config import load_settings
from fastflow.db.engine import Database, current_revision, head_revision


@contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(*args: object) -> None:
        seen.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_database_at_its_head_costs_one_query(tmp_path: Path) -> None:
    db = Database(load_settings(database_url=f"sqlite:///{tmp_path}/ff.db"))
    assert current_revision(db.engine) is None  # a new database: no table yet
    db.migrate()
    with _statements(db.engine) as seen:
        db.migrate()
        assert current_revision(db.engine) == head_revision()
    assert seen == ["SELECT version_num FROM alembic_version"] * 2
    db.dispose()


def test_postgres_at_its_head_costs_one_query(pg_url: str) -> None:
    db = Database(load_settings(database_url=pg_url))
    db.migrate()
    with _statements(db.engine) as seen:
        db.migrate()
    assert seen == ["SELECT version_num FROM alembic_version"]
    db.dispose()


def test_models_do_not_load_the_postgresql_dialect() -> None:
    code = (
        "import sys, fastflow.db.models, fastflow.notify.models\n"
        "assert 'sqlalchemy.dialects.postgresql' not in sys.modules, 'loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_postgresql_options_are_added_when_postgresql_is_used() -> None:
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.schema import CreateIndex

    from fastflow.db.models import PipelineRun, add_postgresql_options

    add_postgresql_options()
    add_postgresql_options()  # again: nothing changes
    table = PipelineRun.metadata.tables["pipeline_runs"]
    (index,) = [i for i in table.indexes if i.name == "ix_pipeline_runs_local_log_size"]
    for dialect in (postgresql.dialect(), sqlite.dialect()):  # type: ignore[no-untyped-call]
        ddl = str(CreateIndex(index).compile(dialect=dialect))
        assert ddl.endswith("(finished_at, log_size) WHERE log_file IS NOT NULL"), ddl


def test_a_postgresql_engine_adds_them(tmp_path: Path) -> None:
    code = (
        "from fastflow.config import load_settings\n"
        "from fastflow.db.engine import make_engine\n"
        "from fastflow.db.models import PipelineRun\n"
        "make_engine(load_settings(database_url='postgresql://u:p@127.0.0.1:1/x'))\n"
        "(i,) = [i for i in PipelineRun.__table__.indexes\n"
        "        if i.name == 'ix_pipeline_runs_local_log_size']\n"
        "assert str(i.dialect_options['postgresql']['where']) == 'log_file IS NOT NULL'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=tmp_path)
