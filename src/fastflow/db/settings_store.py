"""Settings changed at runtime (UI/API), stored in the database over the environment.

Guarantees:

- a change is validated exactly like the environment before it is stored; a stored
  override that no longer validates (an older version accepted it) is skipped and
  logged, never a reason for the server not to start;
- only what a request names is stored; ``null`` removes the override of any field, so
  that the environment's value (or the default) applies again;
- secrets are stored encrypted and never returned — the public view only says
  ``<name>_configured: true/false``; every field's ``sources`` entry says whether its
  value comes from the ``environment``, the ``ui`` or the ``default``;
- SMTP credentials stay with their server: a change of ``smtp_host`` or ``smtp_port``
  that does not give ``smtp_password`` again drops the password in effect (the
  environment's password applies again only together with the environment's host and
  port).
"""

from __future__ import annotations

import json
import logging
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select

from fastflow import security
from fastflow.config import NOT_UTF8, SECRET_FIELDS, Settings, has_surrogate, load_settings
from fastflow.db.engine import Database
from fastflow.db.models import SettingOverride, utcnow
from fastflow.errors import ConfigError, InvalidInput

log = logging.getLogger("fastflow.settings")

OVERRIDABLE = (
    "log_retention_runs",
    "log_retention_days",
    "log_max_size_mb",
    "cleanup_schedule",
    "s3_backup_enabled",
    "s3_endpoint_url",
    "s3_bucket",
    "s3_access_key",
    "s3_secret_access_key",
    "s3_region",
    "s3_prefix",
    "s3_use_path_style",
    "email_enabled",
    "smtp_host",
    "smtp_port",
    "smtp_user",
    "smtp_password",
    "smtp_from",
    "smtp_security",
    "email_recipients",
    "teams_enabled",
    "teams_webhook_url",
)
S3_FIELDS = tuple(k for k in OVERRIDABLE if k.startswith("s3_"))
PUBLIC = (
    *(k for k in OVERRIDABLE if k not in SECRET_FIELDS),
    "smtp_allow_plaintext_auth",
    "fastflow_base_url",
)
ENVIRONMENT, UI, DEFAULT = "environment", "ui", "default"
PASSWORD_CLEARED = (
    "SMTP_HOST or SMTP_PORT changed: the SMTP password was cleared, enter it again for "
    "the new server"
)
PASSWORD_FROM_ENVIRONMENT = (
    "SMTP_HOST and SMTP_PORT are the environment's again: so is the SMTP password (SMTP_PASSWORD)"
)


class _Cleared:
    """Stored as an explicit ``null`` override: the field is unset whatever the environment
    says (a password dropped because its host changed)."""


CLEARED = _Cleared()


@dataclass(frozen=True)
class Updated:
    """The new effective settings and what the user should know about the change."""

    settings: Settings
    notices: list[str] = field(default_factory=list)


def load_overrides(db: Database, settings: Settings) -> dict[str, Any]:
    """The stored overrides, decrypted (an explicitly cleared field maps to None)."""
    with db.session() as s:
        rows = list(s.scalars(select(SettingOverride)))
    out: dict[str, Any] = {}
    for row in rows:
        if row.key not in OVERRIDABLE or row.value is None:
            continue
        raw = security.decrypt(settings, row.value) if row.encrypted else row.value
        out[row.key] = json.loads(raw)
    return out


def effective(base: Settings, overrides: dict[str, Any], *, strict: bool = False) -> Settings:
    """``base`` with ``overrides`` applied and validated.

    ``strict`` raises ``ConfigError`` for any invalid value; otherwise an override that no
    longer validates is skipped with a warning (the environment's value applies). The
    result's ``model_fields_set`` holds the fields set by the environment or an override
    (what ``public_view`` reports as their source)."""
    applied = dict(overrides)
    while True:
        data = base.model_dump()
        data.update(applied)
        try:
            new = Settings(**data)
            break
        except ValidationError as e:
            bad = {str(err["loc"][0]) for err in e.errors() if err.get("loc")} & set(applied)
            if strict or not bad:
                load_settings(**data)  # raises the one-line ConfigError
                raise  # pragma: no cover - load_settings raised above
            for key in sorted(bad):
                log.warning("ignoring the stored setting %s: it is no longer valid", key.upper())
                applied.pop(key)
    object.__setattr__(new, "__pydantic_fields_set__", set(base.model_fields_set) | set(applied))
    return new


def _normalise(changes: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw_key, value in changes.items():
        key = str(raw_key).lower()
        if key not in allowed:
            if value is None and key in PUBLIC:
                continue  # shown but set only in the environment: no override to remove
            raise InvalidInput(f"{raw_key!r} cannot be changed here")
        if key in SECRET_FIELDS and value == "":
            continue  # an empty password field means "keep the stored secret"
        if isinstance(value, bool) and not _takes_bool(key):
            # pydantic would read ``true`` as 1: a retention of one run per pipeline
            raise InvalidInput(f"{key.upper()} must be a number or text, not {str(value).lower()}")
        if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise InvalidInput(f"{key.upper()} must not contain control characters")
        if isinstance(value, str) and has_surrogate(value):
            # stored, it would fail only when used (an SMTP login, a signed request)
            raise InvalidInput(f"{key.upper()} {NOT_UTF8}")
        if isinstance(value, str) and key not in SECRET_FIELDS:
            value = value.strip()
            if value == "":
                value = None
        out[key] = value
    return out


def _takes_bool(key: str) -> bool:
    """Whether setting ``key`` is a yes/no value (``true``/``false`` in JSON)."""
    annotation = Settings.model_fields[key].annotation
    return annotation is bool or bool in typing.get_args(annotation)


def _endpoint(base: Settings, current: dict[str, Any], changes: dict[str, Any]) -> tuple[str, str]:
    """The SMTP server (host, port) in effect with ``changes`` over ``current`` over the
    environment (``base``), normalised for comparison (values not yet validated: any
    JSON value; null: the environment's)."""

    def pick(key: str, env: object) -> object:
        for layer in (changes, current):
            if key in layer:
                return layer[key] if layer[key] is not None else env
        return env

    def norm(v: object) -> str:
        return (v if isinstance(v, str) else repr(v) if v is not None else "").strip(" .").lower()

    return norm(pick("smtp_host", base.smtp_host)), norm(pick("smtp_port", base.smtp_port))


def _plan(
    base: Settings, current: dict[str, Any], changes: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(overrides after the change, the rows to write, notices). In the rows, None
    deletes an override and ``CLEARED`` stores an explicit null."""
    rows = dict(changes)
    notices: list[str] = []
    moved = "smtp_host" in changes or "smtp_port" in changes
    if moved and "smtp_password" not in changes:
        old = _endpoint(base, current, {})
        new = _endpoint(base, current, changes)
        if old != new:
            before = current.get("smtp_password", base.smtp_password)
            if new == _endpoint(base, {}, {}):
                rows["smtp_password"] = None  # the environment's password, with its server
                if base.smtp_password is not None and "smtp_password" in current:
                    notices.append(PASSWORD_FROM_ENVIRONMENT)
            elif before is not None or base.smtp_password is not None:
                rows["smtp_password"] = CLEARED
            if before is not None and rows.get("smtp_password") is CLEARED:
                notices.append(PASSWORD_CLEARED)
    elif "smtp_password" in changes and changes["smtp_password"] is None:
        server = _endpoint(base, current, changes)
        if server != _endpoint(base, {}, {}) and base.smtp_password:
            raise InvalidInput(
                "SMTP_PASSWORD from the environment belongs to SMTP_HOST and SMTP_PORT from "
                f"the environment: reset them too, or enter the password for {server[0]}:"
                f"{server[1]}"
            )
    merged = dict(current)
    for key, value in rows.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = None if value is CLEARED else value
    return merged, rows, notices


def _validated(base: Settings, merged: dict[str, Any]) -> Settings:
    try:
        return effective(base, merged, strict=True)
    except ConfigError as e:
        raise InvalidInput(str(e).removeprefix("invalid configuration: ")) from None


def preview(
    db: Database, base: Settings, changes: dict[str, Any], allowed: tuple[str, ...] = OVERRIDABLE
) -> Settings:
    """The settings as they would be with ``changes`` saved (validated like ``update``,
    same meaning of null and of an empty secret); nothing is stored."""
    merged, _, _ = _plan(base, load_overrides(db, base), _normalise(changes, allowed))
    return _validated(base, merged)


def update(db: Database, base: Settings, changes: dict[str, Any]) -> Updated:
    """Validate and store ``changes`` (None removes an override); only the fields named
    in ``changes`` (and a password dropped with its host) are written."""
    merged, rows, notices = _plan(base, load_overrides(db, base), _normalise(changes, OVERRIDABLE))
    new = _validated(base, merged)
    with db.session() as s:
        for key, value in rows.items():
            row = s.get(SettingOverride, key)
            if value is None:
                if row is not None:
                    s.delete(row)
                continue
            text = json.dumps(None if value is CLEARED else value)
            secret = key in SECRET_FIELDS
            stored = security.encrypt(base, text) if secret else text
            if row is None:
                s.add(
                    SettingOverride(
                        key=key, value=stored, encrypted=int(secret), updated_at=utcnow()
                    )
                )
            else:
                row.value, row.encrypted, row.updated_at = stored, int(secret), utcnow()
    return Updated(new, notices)


def sources(settings: Settings, overridden: set[str]) -> dict[str, str]:
    """Where each overridable field's value comes from: ``ui`` (stored here),
    ``environment`` (a variable or ``.env``) or ``default``."""
    given = settings.model_fields_set
    return {
        key: UI if key in overridden else (ENVIRONMENT if key in given else DEFAULT)
        for key in OVERRIDABLE
    }


def public_view(settings: Settings, overridden: set[str]) -> dict[str, Any]:
    """Effective values without secrets, and where each comes from."""
    out: dict[str, Any] = {key: getattr(settings, key) for key in PUBLIC}
    for key in sorted(SECRET_FIELDS - {"fastflow_secret_key"}):
        out[f"{key}_configured"] = getattr(settings, key) is not None
    out["s3_configured"] = not settings.s3_missing()
    out["s3_missing"] = settings.s3_missing()
    out["overridden"] = sorted(overridden)
    out["sources"] = sources(settings, overridden)
    return out
