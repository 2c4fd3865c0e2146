"""Prove that the S3 settings work: write, read back and delete a small probe object."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass

from fastflow.archive import s3 as archive
from fastflow.config import Settings
from fastflow.db.engine import Database
from fastflow.db.models import AppState, utcnow
from fastflow.errors import ArchiveNotConfigured

PROBE_CONNECT_TIMEOUT = 3.0
PROBE_READ_TIMEOUT = 5.0
STATE_KEY = "s3_test"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    error: str | None
    tested_at: str


def probe(settings: Settings) -> ProbeResult:
    """One attempt each, short timeouts; the error says the cause in plain words. Never
    raises: whatever goes wrong is the result's error."""
    now = utcnow().isoformat()
    try:
        client = archive.make_client(
            settings,
            connect_timeout=PROBE_CONNECT_TIMEOUT,
            read_timeout=PROBE_READ_TIMEOUT,
            attempts=1,
        )
    except ArchiveNotConfigured as e:
        return ProbeResult(False, str(e), now)
    except Exception as e:  # e.g. a value boto3 refuses: a one-line reason, not a 500
        return ProbeResult(False, f"cannot create the S3 client: {type(e).__name__}", now)
    key = "/".join(filter(None, [settings.s3_prefix, ".fastflow-probe", f"{uuid.uuid4()}.txt"]))
    body = f"fastflow connection test {now}\n".encode()
    try:
        client.put_object(Bucket=settings.s3_bucket, Key=key, Body=body)
        back = client.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
        client.delete_object(Bucket=settings.s3_bucket, Key=key)
    except Exception as e:  # every boto3 error becomes a plain-words message
        return ProbeResult(False, str(archive.describe_error(e, settings)), now)
    if back != body:
        return ProbeResult(False, "the probe object read back differs from what was written", now)
    return ProbeResult(True, None, now)


def remember(db: Database, result: ProbeResult) -> None:
    with db.session() as s:
        row = s.get(AppState, STATE_KEY)
        value = json.dumps(asdict(result))
        if row is None:
            s.add(AppState(key=STATE_KEY, value=value, updated_at=utcnow()))
        else:
            row.value, row.updated_at = value, utcnow()


def last(db: Database) -> dict[str, object] | None:
    with db.session() as s:
        row = s.get(AppState, STATE_KEY)
        return json.loads(row.value) if row else None
