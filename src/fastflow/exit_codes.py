"""Exit codes of the ``fastflow`` command and of the child cleanup pass, defined once.

0 success; 1 a failed run, failed backups or another error (also secrets a pipeline
needs that are not set); 2 invalid configuration or usage (also a bad secret name or
value); 3 another cleanup pass is running. ``for_error`` maps an exception to its code
and one-line message.
"""

from __future__ import annotations

from fastflow.errors import ConfigError, FastflowError, InvalidSecret

OK = 0
FAILED = 1
CONFIG = 2
BUSY = 3


def for_error(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and one-line message for an error a user can act on; ``None`` for
    anything else (a bug: let its traceback show)."""
    if isinstance(exc, ConfigError):
        return CONFIG, str(exc)
    if isinstance(exc, InvalidSecret):  # a bad secret name or value: usage
        return CONFIG, str(exc)
    if isinstance(exc, FastflowError):
        return FAILED, str(exc)
    from sqlalchemy.exc import SQLAlchemyError  # only on this error path: start-up time

    if isinstance(exc, SQLAlchemyError):
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        if any(sign in detail.lower() for sign in _FULL_DISK):
            hint = "is the database's file system full? `df -h` on its folder (DATA_DIR)"
        else:
            hint = "check DATABASE_URL"
        return FAILED, f"database error: {detail} ({hint})"
    return None


# what SQLite (and PostgreSQL) say when the disk under the database is full
_FULL_DISK = ("disk i/o error", "database or disk is full", "no space left on device")
