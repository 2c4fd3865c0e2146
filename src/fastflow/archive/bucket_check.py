"""``fastflow archive check-bucket``: is the bucket fit to keep an audit trail?

Five checks, each ``ok``, ``warning``, ``error`` or ``unknown`` with one line saying why:
versioning, Object Lock, default retention, default encryption, and lifecycle rules that
would expire or transition objects under ``S3_PREFIX`` (before ``S3_OBJECT_LOCK_DAYS``, when
set). Provider-neutral: an API the server does not implement (MinIO, Ceph, Garage, ... each
lack some) is ``unknown (not supported by this server)``, never an error; so is one the
credentials may not read. Read-only: only ``Get*`` requests. An unreachable server raises
``ArchiveError`` (one line).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from fastflow.archive import s3 as archive
from fastflow.config import Settings
from fastflow.db.models import utcnow

Status = str  # "ok" | "warning" | "error" | "unknown"
UNSUPPORTED = {"NotImplemented", "501", "MethodNotAllowed", "405", "XNotImplemented"}
DENIED = {"AccessDenied", "403", "Forbidden"}
# storage classes whose objects cannot be read without a restore first
ARCHIVAL_CLASSES = {"GLACIER", "DEEP_ARCHIVE"}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str


@dataclass
class BucketReport:
    bucket: str
    prefix: str
    checked_at: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != "error" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "checked_at": self.checked_at,
            "checks": [asdict(c) for c in self.checks],
        }


class _Unavailable(Exception):
    """The server does not implement the API, or the credentials may not call it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _code(e: ClientError) -> str:
    err = e.response.get("Error", {})
    return str(err.get("Code", "") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def _call(
    settings: Settings, fn: Callable[..., Any], absent: set[str], **kwargs: Any
) -> dict[str, Any] | None:
    """The API's answer; None when the bucket has no such configuration (``absent``)."""
    try:
        answer: dict[str, Any] = fn(**kwargs)
        return answer
    except ClientError as e:
        code = _code(e)
        if code in absent:
            return None
        if code in UNSUPPORTED:
            raise _Unavailable("unknown (not supported by this server)") from None
        if code in DENIED:
            raise _Unavailable(f"unknown (the credentials may not read it: {code})") from None
        raise archive.describe_error(e, settings) from e
    except Exception as e:
        raise archive.describe_error(e, settings) from e


def check_bucket(settings: Settings) -> BucketReport:
    """Run every check against the configured bucket."""
    store = archive.open_store(settings)
    report = BucketReport(store.bucket, store.prefix, utcnow().isoformat())
    client, bucket = store.client, store.bucket
    locked = settings.s3_object_lock_mode is not None and settings.s3_object_lock_days
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("versioning", lambda: _versioning(settings, client, bucket, bool(locked))),
    ]
    lock: dict[str, Any] | None = None

    lock_unknown: str | None = None

    def object_lock() -> Check:
        nonlocal lock, lock_unknown
        lock_unknown = "unknown (the Object Lock configuration could not be read)"
        lock = _call(
            settings,
            client.get_object_lock_configuration,
            {"ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"},
            Bucket=bucket,
        )
        lock_unknown = None
        return _object_lock(settings, lock)

    def retention() -> Check:
        if lock_unknown is not None:
            raise _Unavailable(lock_unknown)
        return _retention(settings, lock)

    checks += [
        ("object lock", object_lock),
        ("default retention", retention),
        ("encryption", lambda: _encryption(settings, client, bucket)),
        ("lifecycle", lambda: _lifecycle(settings, client, bucket, store.prefix)),
    ]
    for name, run in checks:
        try:
            report.checks.append(run())
        except _Unavailable as e:
            report.checks.append(Check(name, "unknown", e.message))
    return report


def _versioning(settings: Settings, client: Any, bucket: str, locked: bool) -> Check:
    answer = _call(settings, client.get_bucket_versioning, set(), Bucket=bucket) or {}
    status = answer.get("Status")
    if status == "Enabled":
        return Check(
            "versioning", "ok", "enabled: an overwritten or deleted object can be restored"
        )
    level = "error" if locked else "warning"
    state = "suspended" if status == "Suspended" else "off"
    why = (
        "Object Lock (S3_OBJECT_LOCK_MODE) needs it"
        if locked
        else "an overwritten or deleted object is lost for good"
    )
    return Check("versioning", level, f"{state}: {why}")


def _object_lock(settings: Settings, answer: dict[str, Any] | None) -> Check:
    config = (answer or {}).get("ObjectLockConfiguration") or {}
    enabled = config.get("ObjectLockEnabled") == "Enabled"
    wanted = [
        name
        for name, on in (
            ("S3_OBJECT_LOCK_MODE", settings.s3_object_lock_mode is not None),
            ("S3_OBJECT_LOCK_LEGAL_HOLD", settings.s3_object_lock_legal_hold),
        )
        if on
    ]
    if enabled:
        return Check(
            "object lock", "ok", "enabled: objects under retention or legal hold cannot be deleted"
        )
    if wanted:
        return Check(
            "object lock",
            "error",
            f"not enabled on the bucket, but {' and '.join(wanted)} need it: create the "
            "bucket with Object Lock",
        )
    return Check(
        "object lock",
        "warning",
        "not enabled: anyone with write access can delete or overwrite archived logs (no WORM)",
    )


def _retention(settings: Settings, answer: dict[str, Any] | None) -> Check:
    config = (answer or {}).get("ObjectLockConfiguration") or {}
    if config.get("ObjectLockEnabled") != "Enabled":
        return Check("default retention", "warning", "none: the bucket has no Object Lock")
    default = (config.get("Rule") or {}).get("DefaultRetention") or {}
    mode = settings.s3_object_lock_mode
    days = settings.s3_object_lock_days
    if default:
        span = (
            f"{default['Days']} days" if "Days" in default else f"{default.get('Years', '?')} years"
        )
        own = f"; fastflow writes {mode} for {days} days" if mode and days else ""
        return Check("default retention", "ok", f"{default.get('Mode', '?')} for {span}{own}")
    if mode and days:
        return Check(
            "default retention",
            "ok",
            f"none on the bucket; fastflow writes every object with {mode} for {days} days",
        )
    return Check(
        "default retention",
        "warning",
        "none: objects are written without retention (set S3_OBJECT_LOCK_MODE and "
        "S3_OBJECT_LOCK_DAYS, or a default retention on the bucket)",
    )


def _encryption(settings: Settings, client: Any, bucket: str) -> Check:
    answer = _call(
        settings,
        client.get_bucket_encryption,
        {"ServerSideEncryptionConfigurationNotFoundError", "NoSuchEncryptionConfiguration"},
        Bucket=bucket,
    )
    rules = ((answer or {}).get("ServerSideEncryptionConfiguration") or {}).get("Rules") or []
    algorithms = sorted(
        {
            str((r.get("ApplyServerSideEncryptionByDefault") or {}).get("SSEAlgorithm"))
            for r in rules
            if r.get("ApplyServerSideEncryptionByDefault")
        }
    )
    if algorithms:
        return Check("encryption", "ok", "default encryption: " + ", ".join(algorithms))
    if settings.s3_sse:
        return Check(
            "encryption", "ok", f"no default on the bucket; fastflow requests {settings.s3_sse}"
        )
    return Check(
        "encryption",
        "warning",
        "no default encryption: set one on the bucket, or S3_SSE for fastflow's objects",
    )


def _applies(rule: dict[str, Any], prefix: str) -> bool:
    """Whether a lifecycle rule may touch objects under ``prefix``."""
    flt = rule.get("Filter") or {}
    rule_prefix = rule.get("Prefix")
    if rule_prefix is None:
        rule_prefix = flt.get("Prefix", (flt.get("And") or {}).get("Prefix", ""))
    ours = f"{prefix}/" if prefix else ""
    return ours.startswith(rule_prefix or "") or (rule_prefix or "").startswith(ours)


def _lifecycle(settings: Settings, client: Any, bucket: str, prefix: str) -> Check:
    answer = _call(
        settings,
        client.get_bucket_lifecycle_configuration,
        {"NoSuchLifecycleConfiguration"},
        Bucket=bucket,
    )
    rules = [
        r
        for r in (answer or {}).get("Rules", [])
        if r.get("Status") == "Enabled" and _applies(r, prefix)
    ]
    if not rules:
        return Check("lifecycle", "ok", f"no rule expires or moves objects under '{prefix}/'")
    keep = settings.s3_object_lock_days
    level, findings = "ok", []
    for r in rules:
        name = r.get("ID") or "(unnamed rule)"
        expiry = r.get("Expiration") or {}
        days = expiry.get("Days")
        if days is not None or expiry.get("Date"):
            when = f"after {days} days" if days is not None else f"on {expiry['Date']}"
            early = keep is not None and days is not None and days < keep
            bad = early or keep is None
            level = _worse(level, "error" if early else "warning" if bad else "ok")
            findings.append(
                f"rule {name} deletes objects {when}"
                + (f", before S3_OBJECT_LOCK_DAYS ({keep})" if early else "")
            )
        old = (r.get("NoncurrentVersionExpiration") or {}).get("NoncurrentDays")
        if old is not None:
            findings.append(f"rule {name} removes replaced versions after {old} days")
            level = _worse(level, "warning")
        for t in r.get("Transitions", []) or []:
            klass = str(t.get("StorageClass"))
            if klass in ARCHIVAL_CLASSES:
                level = _worse(level, "warning")
                findings.append(
                    f"rule {name} moves objects to {klass} after {t.get('Days', '?')} days "
                    "(unreadable without a restore: reads and verification fail)"
                )
    if not findings:
        return Check("lifecycle", "ok", "no rule expires objects under the prefix")
    return Check("lifecycle", level, "; ".join(findings))


_ORDER = {"ok": 0, "unknown": 1, "warning": 2, "error": 3}


def _worse(a: Status, b: Status) -> Status:
    return a if _ORDER[a] >= _ORDER[b] else b
