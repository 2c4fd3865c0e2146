"""``exit_codes.for_error``: one line a user can act on for each database error."""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import OperationalError

from fastflow import exit_codes


def _db_error(message: str) -> OperationalError:
    return OperationalError("INSERT INTO pipeline_runs ...", {}, sqlite3.OperationalError(message))


def test_a_full_disk_under_the_database_is_named_as_such() -> None:
    """An outside audit: a full DATA_DIR gave "disk I/O error (check DATABASE_URL)",
    pointing at the URL instead of the disk."""
    for message in ("disk I/O error", "database or disk is full"):
        code, line = exit_codes.for_error(_db_error(message)) or (None, "")
        assert code == exit_codes.FAILED
        assert line.startswith(f"database error: {message}") and "file system full" in line
        assert "DATABASE_URL" not in line


def test_other_database_errors_point_at_database_url() -> None:
    code, line = exit_codes.for_error(_db_error("unable to open database file")) or (None, "")
    assert code == exit_codes.FAILED and line.endswith("(check DATABASE_URL)")
