"""The secret store: values that pipelines list by name in ``pipeline.json`` ``secrets``
and get as environment variables. Owns the ``PipelineSecret`` record.

Guarantees: a value is stored only Fernet-encrypted with fastflow's key
(``security.encrypt``: ``FASTFLOW_SECRET_KEY`` or ``DATA_DIR/secret.key``); only
``values_for`` (the run executor's call) ever returns a value — every other function
returns names, ``updated_at`` and the pipelines that list a name. Names match
``[A-Z_][A-Z0-9_]*``; values are non-empty text without NUL of at most
``MAX_VALUE_BYTES`` UTF-8 bytes (they become environment variables). No message of an
error raised here contains a value or a ciphertext.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from cryptography.fernet import InvalidToken
from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError

from fastflow import security
from fastflow.config import Settings
from fastflow.db.engine import Database
from fastflow.db.models import PipelineSecret, utcnow
from fastflow.errors import FastflowError, InvalidSecret, MissingSecrets, SecretUnreadable
from fastflow.runs import pipelines
from fastflow.runs.pipeline_config import SECRET_NAME_RE

MAX_NAME_LENGTH = 255  # the column's size
MAX_VALUE_BYTES = 64 * 1024  # well below Linux's 128 KiB limit of one environment string


@dataclass(frozen=True)
class SecretInfo:
    """A stored secret without its value."""

    name: str
    updated_at: datetime


@dataclass(frozen=True)
class SecretListing:
    """A stored secret without its value, and the pipelines whose ``secrets`` list it."""

    name: str
    updated_at: datetime
    pipelines: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The object of ``fastflow secret list --json`` and ``GET /api/secrets``."""
        return {
            "name": self.name,
            "updated_at": self.updated_at.isoformat(),
            "pipelines": list(self.pipelines),
        }


@dataclass(frozen=True)
class Overview:
    """Every stored secret with its pipelines; the names pipelines list that are not
    stored (``missing``: name -> those pipelines, whose runs would fail); the pipeline
    folders left out because their name or ``pipeline.json`` is invalid (``skipped``)."""

    secrets: list[SecretListing]
    missing: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()


def _shown(name: str) -> str:
    return ascii(name) if len(name) <= 60 else ascii(name[:57]) + "..."


def check_name(name: str) -> str:
    """``name`` unchanged if it is a valid secret name, else ``InvalidSecret``."""
    if not SECRET_NAME_RE.fullmatch(name):
        raise InvalidSecret(
            f"secret name {_shown(name)} is invalid: use upper-case letters, digits and _, "
            "not starting with a digit ([A-Z_][A-Z0-9_]*)"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidSecret(
            f"secret name {_shown(name)} is longer than {MAX_NAME_LENGTH} characters"
        )
    return name


def check_value(value: object) -> str:
    """``value`` unchanged if it can be stored and given to a run, else ``InvalidSecret``
    (whose message never contains the value)."""
    if not isinstance(value, str):
        raise InvalidSecret("the secret value must be a string")
    if value == "":
        raise InvalidSecret("the secret value must not be empty")
    if "\x00" in value:
        raise InvalidSecret("the secret value must not contain a NUL character")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidSecret("the secret value must be valid Unicode text") from None
    if size > MAX_VALUE_BYTES:
        raise InvalidSecret(f"the secret value is longer than {MAX_VALUE_BYTES} bytes")
    return value


def unmasked_warning(name: str, value: str) -> str | None:
    """Why ``value`` will show in run logs (too short for the masker), or None."""
    from fastflow.runs.masking import MIN_LENGTH

    if len(value) >= MIN_LENGTH:
        return None
    return (
        f"the value of {name} is shorter than {MIN_LENGTH} characters: it is not masked in "
        "run logs (masking that short a text would hide ordinary output)"
    )


def set_secret(db: Database, settings: Settings, name: str, value: str) -> SecretInfo:
    """Store ``value`` encrypted under ``name``, replacing an existing value and its
    ``updated_at``. Safe when processes set the same name at once: one value wins whole."""
    check_name(name)
    ciphertext = security.encrypt(settings, check_value(value))
    for _ in range(3):
        now = utcnow()
        try:
            with db.session() as s:
                # the write comes first: SQLite then takes its write lock at once
                result = s.execute(
                    update(PipelineSecret)
                    .where(PipelineSecret.name == name)
                    .values(ciphertext=ciphertext, updated_at=now)
                )
                if cast(CursorResult[Any], result).rowcount == 0:
                    s.add(PipelineSecret(name=name, ciphertext=ciphertext, updated_at=now))
            return SecretInfo(name, now)
        except IntegrityError:  # inserted concurrently: the next round updates it
            continue
    # not the statement's error: its parameters hold the ciphertext
    raise FastflowError(f"secret {name} could not be stored: it changed concurrently; retry")


def delete_secret(db: Database, name: str) -> bool:
    """Delete ``name``; False when no such secret is stored."""
    with db.session() as s:
        row = s.get(PipelineSecret, name)
        if row is None:
            return False
        s.delete(row)
    return True


def list_secrets(db: Database) -> list[SecretInfo]:
    """Every stored secret, by name (never a value)."""
    with db.session() as s:
        rows = s.execute(
            select(PipelineSecret.name, PipelineSecret.updated_at).order_by(PipelineSecret.name)
        ).all()
    return [SecretInfo(name, updated_at) for name, updated_at in rows]


def get_info(db: Database, name: str) -> SecretInfo | None:
    """The stored secret ``name`` without its value, or None."""
    with db.session() as s:
        row = s.execute(
            select(PipelineSecret.name, PipelineSecret.updated_at).where(
                PipelineSecret.name == name
            )
        ).first()
    return SecretInfo(row[0], row[1]) if row else None


def usage(pipelines_dir: Path) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """Which pipelines list each secret name in ``secrets`` (name -> pipelines, sorted),
    and the pipeline folders left out because their name or ``pipeline.json`` is
    invalid (``fastflow pipelines check`` says why)."""
    found, problems = pipelines.check_all(pipelines_dir)
    valid = {p.name for p in found}
    users: dict[str, list[str]] = {}
    for p in found:
        for secret in dict.fromkeys(p.config.secrets):
            users.setdefault(secret, []).append(p.name)
    skipped = tuple(sorted({pr.pipeline for pr in problems if pr.pipeline not in valid}))
    return {k: tuple(sorted(v)) for k, v in sorted(users.items())}, skipped


def overview(db: Database, pipelines_dir: Path) -> Overview:
    """Stored secrets with the pipelines that list them, and the listed names that are
    not stored (never a value)."""
    users, skipped = usage(pipelines_dir)
    stored = list_secrets(db)
    names = {s.name for s in stored}
    return Overview(
        secrets=[SecretListing(s.name, s.updated_at, users.get(s.name, ())) for s in stored],
        missing={k: v for k, v in users.items() if k not in names},
        skipped=skipped,
    )


def every_value(db: Database, settings: Settings) -> list[str]:
    """The decrypted value of every stored secret (those the current key cannot decrypt
    are left out): what every run's log is masked for, not only the run's own secrets —
    runs of one ``RUN_AS_USER`` can read each other's ``/proc/<pid>/environ``."""
    with db.session() as s:
        rows = list(s.scalars(select(PipelineSecret.ciphertext)))
    if not rows:
        return []
    cipher = security.fernet(settings)
    out: list[str] = []
    for ciphertext in rows:
        try:
            out.append(cipher.decrypt(ciphertext.encode("ascii")).decode("utf-8"))
        except (InvalidToken, ValueError):
            continue
    return out


def masked_for(db: Database, settings: Settings, values: dict[str, str]) -> list[str]:
    """What a run's log is masked for: its own secrets, every other stored secret (runs
    that share one OS user can read each other's environment: a pipeline printing
    ``/proc/*/environ`` must not put another run's secret in its log) and fastflow's own
    (a build tool may be made to print a file the run's user cannot read, such as
    ``-r DATA_DIR/secret.key`` in requirements.txt). A multi-line value is masked with LF
    and with CRLF line ends, whichever it was stored with."""
    found = [*values.values(), *every_value(db, settings), *security.own_secrets(settings)]
    # a multi-line value printed with CRLF line ends (a Windows-style writer, a file read
    # in binary) is the same secret (an outside audit found it in clear)
    lf = [v.replace("\r\n", "\n") for v in found if "\n" in v]  # (CRLF from a text box)
    crlf = [v.replace("\n", "\r\n") for v in lf]
    return list(dict.fromkeys([*found, *lf, *crlf]))


def values_for(db: Database, settings: Settings, names: Sequence[str]) -> dict[str, str]:
    """The decrypted values of ``names`` (in that order, each once). Raises
    ``MissingSecrets`` naming every name that is not stored, then ``SecretUnreadable``
    naming every secret that cannot be decrypted with the current key."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    with db.session() as s:
        query = select(PipelineSecret.name, PipelineSecret.ciphertext).where(
            PipelineSecret.name.in_(wanted)
        )
        rows = {name: ciphertext for name, ciphertext in s.execute(query)}
    missing = [n for n in wanted if n not in rows]
    if missing:
        raise MissingSecrets(missing)
    cipher = security.fernet(settings)
    out: dict[str, str] = {}
    unreadable: list[str] = []
    for name in wanted:
        try:
            out[name] = cipher.decrypt(rows[name].encode("ascii")).decode("utf-8")
        except (InvalidToken, ValueError):  # another key; a damaged or non-ASCII column
            unreadable.append(name)
    if unreadable:
        raise SecretUnreadable(unreadable)
    return out
