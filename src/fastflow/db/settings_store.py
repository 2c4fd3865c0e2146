"""Settings changed at runtime (UI/API), stored in the database over the environment.

Guarantees: a change is validated exactly like the environment before it is stored;
secrets are stored encrypted and never returned — the public view only says
``<name>_configured: true/false``.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from fastflow import security
from fastflow.config import SECRET_FIELDS, Settings, load_settings
from fastflow.db.engine import Database
from fastflow.db.models import SettingOverride, utcnow
from fastflow.errors import ConfigError, InvalidInput

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
PUBLIC = (*(k for k in OVERRIDABLE if k not in SECRET_FIELDS), "fastflow_base_url")


def load_overrides(db: Database, settings: Settings) -> dict[str, Any]:
    """The stored overrides, decrypted."""
    with db.session() as s:
        rows = list(s.scalars(select(SettingOverride)))
    out: dict[str, Any] = {}
    for row in rows:
        if row.key not in OVERRIDABLE or row.value is None:
            continue
        raw = security.decrypt(settings, row.value) if row.encrypted else row.value
        out[row.key] = json.loads(raw)
    return out


def effective(base: Settings, overrides: dict[str, Any]) -> Settings:
    """``base`` with ``overrides`` applied and validated."""
    data = base.model_dump()
    data.update(overrides)
    return load_settings(**data)


def _normalise(changes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw_key, value in changes.items():
        key = str(raw_key).lower()
        if key not in OVERRIDABLE:
            raise InvalidInput(f"{raw_key!r} cannot be changed here")
        if key in SECRET_FIELDS and value == "":
            continue  # an empty password field means "keep the stored secret"
        if isinstance(value, str) and key not in SECRET_FIELDS:
            value = value.strip()
            if value == "":
                value = None
        out[key] = value
    return out


def update(db: Database, base: Settings, changes: dict[str, Any]) -> Settings:
    """Validate and store ``changes`` (None removes an override); return the new settings."""
    changes = _normalise(changes)
    current = load_overrides(db, base)
    try:
        new = effective(base, {**current, **changes})
    except ConfigError as e:
        raise InvalidInput(str(e).removeprefix("invalid configuration: ")) from None
    with db.session() as s:
        for key, value in changes.items():
            row = s.get(SettingOverride, key)
            if value is None:
                if row is not None:
                    s.delete(row)
                continue
            text = json.dumps(value)
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
    return new


def public_view(settings: Settings, overridden: set[str]) -> dict[str, Any]:
    """Effective values without secrets."""
    out: dict[str, Any] = {key: getattr(settings, key) for key in PUBLIC}
    for key in sorted(SECRET_FIELDS - {"fastflow_secret_key"}):
        out[f"{key}_configured"] = getattr(settings, key) is not None
    out["s3_configured"] = not settings.s3_missing()
    out["s3_missing"] = settings.s3_missing()
    out["overridden"] = sorted(overridden)
    return out
