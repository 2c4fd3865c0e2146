"""Database tables. Timestamps are stored as naive UTC and read back as aware UTC."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC; returns aware UTC. Naive inputs are taken as UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RunStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"


ACTIVE_STATUSES = (RunStatus.QUEUED.value, RunStatus.PENDING.value, RunStatus.RUNNING.value)
FINAL_STATUSES = ("SUCCESS", "FAILED", "TIMEOUT", "CANCELLED")
# the failure reason of a QUEUED run cancelled before any server took it: it has no log
CANCELLED_BEFORE_START = "cancelled before it started"


class Trigger(enum.StrEnum):
    MANUAL = "manual"  # ``fastflow run``
    CLI = "cli"  # ``fastflow run`` before issue 11's list (old rows only)
    API = "api"
    SCHEDULE = "schedule"
    WEBHOOK = "webhook"
    UPSTREAM = "upstream"
    RETRY = "retry"


class Base(DeclarativeBase):
    pass


LOCAL_LOG_WHERE = "log_file IS NOT NULL"  # the partial index of the local log bytes
FOLLOW_UP_DUE_WHERE = "follow_up_due"  # the partial index of runs not yet followed up


class PipelineRun(Base):
    """One execution of a pipeline. ``log_file``/``metrics_file`` are relative to LOGS_DIR."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (
        Index("ix_pipeline_runs_pipeline_started", "pipeline_name", "started_at"),
        Index("ix_pipeline_runs_started", "started_at"),
        Index("ix_pipeline_runs_status", "status"),
        Index(
            "ux_pipeline_runs_schedule_tick",
            "pipeline_name",
            "schedule_key",
            "scheduled_for",
            unique=True,
        ),
        Index("ix_pipeline_runs_queue", "status", "queued_at"),
        # the dashboards (``runs.stats``): runs per day and status, counted in the index;
        # a pipeline's recent runs with their status and duration, read from the index
        Index("ix_pipeline_runs_status_started", "status", "started_at"),
        Index(
            "ix_pipeline_runs_pipeline_stats",
            "pipeline_name",
            "started_at",
            "status",
            "finished_at",
        ),
        # the local log bytes: sums over ranges of this index, not over the table (its
        # PostgreSQL WHERE: ``add_postgresql_options``)
        Index(
            "ix_pipeline_runs_local_log_size",
            "finished_at",
            "log_size",
            sqlite_where=text(LOCAL_LOG_WHERE),
        ),
        # the finished runs whose retry or triggers are not queued yet: few, read by the
        # sweep of every server (PostgreSQL WHERE: ``add_postgresql_options``)
        Index(
            "ix_pipeline_runs_follow_up_due",
            "runner_host",
            sqlite_where=text(FOLLOW_UP_DUE_WHERE),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    pipeline_name: Mapped[str] = mapped_column(String(255), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=RunStatus.PENDING)
    triggered_by: Mapped[str] = mapped_column(String(16), nullable=False, default=Trigger.MANUAL)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    log_file: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics_file: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Size of the finished log in bytes (kept current by truncation), so that the planner
    # can find oversized logs in SQL instead of calling stat() on every run.
    log_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Who executes the run, so that a later process can tell a dead runner from a live one.
    runner_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    runner_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    runner_started: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The pipeline's own process (leader of its process group) and its start time, so that
    # a restart can end a tree left behind by a killed runner without ever killing a
    # recycled pid.
    pipeline_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pipeline_started: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Orchestration: attempts of one run share ``retry_of`` (the first attempt's id);
    # a run started by another one names it in ``upstream_run_id``; a scheduled run names
    # its schedule and tick (unique: one run per tick, whatever the number of servers).
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    retry_of: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    upstream_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    run_config_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    schedule_key: Mapped[str | None] = mapped_column(String(100), nullable=True)
    env_overrides: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON object
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # why a finished run did not succeed, in words ("exit code 3", "memory limit
    # exceeded (512 MiB)", ...); None for SUCCESS and for runs still going
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # a pinned run is never deleted or truncated (issue 16): who, when, why
    pinned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    pinned_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pin_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # where it ran (issue 15): "local" or "docker"; a container's image and id (so that a
    # restarted server re-attaches to the container of a RUNNING run)
    executor: Mapped[str | None] = mapped_column(String(16), nullable=True)
    image: Mapped[str | None] = mapped_column(Text, nullable=True)
    container_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # set with the final status of a run whose retry or triggers are still to be queued,
    # cleared in the transaction that queues them (``orchestration.followup``): a process
    # that dies in between leaves it set, and the sweep of a live one follows the run up
    follow_up_due: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=text("false")
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "pipeline_name": self.pipeline_name,
            "status": self.status,
            "triggered_by": self.triggered_by,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "exit_code": self.exit_code,
            "log_file": self.log_file,
            "metrics_file": self.metrics_file,
            "log_size": self.log_size,
            "executor": self.executor or "local",
            "image": self.image,
            "attempt": self.attempt or 1,
            "retry_of": str(self.retry_of) if self.retry_of else None,
            "upstream_run_id": str(self.upstream_run_id) if self.upstream_run_id else None,
            "scheduled_for": _iso(self.scheduled_for),
            "queued_at": _iso(self.queued_at),
            "run_config_id": self.run_config_id,
            "failure_reason": self.failure_reason,
            "pinned_at": _iso(self.pinned_at),
            "pinned_by": self.pinned_by,
            "pin_reason": self.pin_reason,
        }


TRUNCATION_REASON = "truncate_log"  # ledger reason of a full log archived before truncation


class ScheduleTick(Base):
    """One schedule tick, claimed once across all servers (primary key), with what came
    of it: ``queued`` (``run_id``) or ``skipped`` (the pipeline was at its limit)."""

    __tablename__ = "schedule_ticks"

    pipeline_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    schedule_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class Webhook(Base):
    """A webhook key of a pipeline (stored as SHA-256 only)."""

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_pipeline", "pipeline_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pipeline_name: Mapped[str] = mapped_column(String(255), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    run_config_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    source: Mapped[str] = mapped_column(String(16), nullable=False)  # cli | file
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ArchivedRun(Base):
    """Ledger: one row per run whose files were uploaded and verified in S3.

    Written after verification and before any local delete, so it always names an
    object that exists with the recorded size and SHA-256.
    """

    __tablename__ = "archived_runs"
    __table_args__ = (
        Index("ix_archived_runs_pipeline_started", "pipeline_name", "started_at"),
        Index("ix_archived_runs_manifest", "manifest_key"),
    )

    run_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    pipeline_name: Mapped[str] = mapped_column(String(255), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    triggered_by: Mapped[str] = mapped_column(String(16), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bucket: Mapped[str] = mapped_column(String(255), nullable=False)
    log_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    log_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    log_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metrics_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    metrics_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(String(32), nullable=False)
    # With S3_COMPRESSION the objects hold compressed bytes: log_size/log_sha256 describe
    # the stored object, the original_* columns the local file it came from.
    encoding: Mapped[str | None] = mapped_column(String(16), nullable=True)
    log_original_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    log_original_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metrics_original_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    metrics_original_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    archived_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    local_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Archive before truncate: the log object is the *full* log; the local copy was then
    # truncated (at ``log_truncated_at``) to the bytes described by ``local_log_*``.
    log_truncated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    local_log_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    local_log_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # integrity (issue 16): the manifest that lists this entry's objects; the last HEAD
    # check and the last deep re-hash of its objects
    manifest_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deep_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # the pin of a run whose row retention deleted (issue 16): who, when, why — its
    # archived objects carry a legal hold while it is pinned (when configured)
    pinned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    pinned_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pin_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    def original(self, which: str) -> tuple[int | None, str | None]:
        """(size, SHA-256) of the local file that ``which`` ("log"/"metrics") came from."""
        size, sha = getattr(self, f"{which}_size"), getattr(self, f"{which}_sha256")
        if self.encoding:
            return getattr(self, f"{which}_original_size"), getattr(
                self, f"{which}_original_sha256"
            )
        return size, sha

    def local_identity(self, which: str) -> tuple[int | None, str | None]:
        """(size, SHA-256) the local file must still have to be deleted: the archived
        bytes, or for a log truncated after archiving, the truncated copy."""
        if which == "log" and self.log_truncated_at is not None:
            return self.local_log_size, self.local_log_sha256
        return self.original(which)

    @property
    def full_log_archived(self) -> bool:
        """True when the local log is a truncated copy of the archived full log."""
        return self.reason == TRUNCATION_REASON or self.log_truncated_at is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": str(self.run_id),
            "pipeline_name": self.pipeline_name,
            "status": self.status,
            "triggered_by": self.triggered_by,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "exit_code": self.exit_code,
            "bucket": self.bucket,
            "log_key": self.log_key,
            "log_size": self.log_size,
            "log_sha256": self.log_sha256,
            "metrics_key": self.metrics_key,
            "metrics_size": self.metrics_size,
            "metrics_sha256": self.metrics_sha256,
            "reason": self.reason,
            "encoding": self.encoding,
            "log_original_size": self.log_original_size,
            "log_original_sha256": self.log_original_sha256,
            "archived_at": _iso(self.archived_at),
            "local_deleted_at": _iso(self.local_deleted_at),
            "log_truncated_at": _iso(self.log_truncated_at),
        }


class BackupFailure(Base):
    """One failed archive attempt of one run in one pass (bounded to the newest 1,000)."""

    __tablename__ = "backup_failures"
    __table_args__ = (
        Index("ix_backup_failures_created", "created_at"),
        Index("ix_backup_failures_run", "run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    pipeline_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error_message: Mapped[str] = mapped_column(Text, nullable=False)
    pass_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": str(self.run_id) if self.run_id else None,
            "pipeline_name": self.pipeline_name,
            "error_message": self.error_message,
            "created_at": _iso(self.created_at),
            "resolved_at": _iso(self.resolved_at),
        }


class CleanupPass(Base):
    """One cleanup pass: when, why, what it did."""

    __tablename__ = "cleanup_passes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trigger: Mapped[str] = mapped_column(String(16), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    archived_runs: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    deleted_runs: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    backup_failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    bytes_archived: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class DiskSample(Base):
    """The local log disk and the archive after one cleanup pass (``runs.stats``): the
    history the overview's disk chart draws. Bounded to the newest rows."""

    __tablename__ = "disk_samples"
    __table_args__ = (Index("ix_disk_samples_taken", "taken_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    pass_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    local_log_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    free_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    archived_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class User(Base):
    """A person who logs in to the web UI (password stored as an argon2 hash)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), nullable=False, unique=True)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    # set: the user can neither log in nor use the API tokens created for them
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ApiToken(Base):
    """A bearer token for scripts; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # NULL: the token never expires
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # the user the token belongs to (``token create --user``); NULL: a service token
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class WebSession(Base):
    """A logged-in browser session; the cookie holds the token, the table its SHA-256."""

    __tablename__ = "web_sessions"
    __table_args__ = (
        Index("ix_web_sessions_user_id", "user_id"),
        Index("ix_web_sessions_expires_at", "expires_at"),
    )

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, nullable=False)
    csrf_token: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class SettingOverride(Base):
    """A setting changed in the UI/API; overrides the environment. Secrets are encrypted."""

    __tablename__ = "setting_overrides"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text, nullable=True)
    encrypted: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class ArchiveManifest(Base):
    """One manifest object in the bucket: the objects a pass archived, chained to the
    previous manifest by its SHA-256 (issue 16)."""

    __tablename__ = "archive_manifests"
    __table_args__ = (Index("ix_archive_manifests_created", "created_at"),)

    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    pass_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    previous_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    count: Mapped[int] = mapped_column(Integer, nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class ArchiveVerification(Base):
    """One run of ``archive verify`` (scheduled, CLI or API) and what it found."""

    __tablename__ = "archive_verifications"
    __table_args__ = (Index("ix_archive_verifications_started", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trigger: Mapped[str] = mapped_column(String(16), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    objects_checked: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    objects_deep_checked: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    objects_damaged: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    manifests_checked: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    problems: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list, bounded
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class PipelineSecret(Base):
    """A secret that pipelines may list in ``secrets``; the value is Fernet-encrypted
    with fastflow's key and never leaves the process except into a run's environment."""

    __tablename__ = "pipeline_secrets"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class AppState(Base):
    """Small persisted facts, e.g. the result of the last S3 connection test (JSON)."""

    __tablename__ = "app_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class SystemIncident(Base):
    """An incident of fastflow itself (issue 16): ``kind`` "integrity" (archive damage)
    or "disk" (disk pressure), ``key`` what it is about. One row per (kind, key): open
    while ``closed_at`` is NULL; a new incident of the same kind and key reopens the row
    (``notify.system`` owns it)."""

    __tablename__ = "system_incidents"
    __table_args__ = (Index("ix_system_incidents_closed", "closed_at"),)

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    title: Mapped[str] = mapped_column(Text, nullable=False)
    detail: Mapped[str] = mapped_column(Text, nullable=False)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_announced_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    announcements: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


def add_postgresql_options() -> None:
    """Give the tables their PostgreSQL-only options (the partial index's WHERE).

    Not in the ``Index(...)`` itself: a ``postgresql_*`` argument imports SQLAlchemy's
    PostgreSQL dialect when this module is imported — tens of milliseconds at every
    start-up, on SQLite too (issue 14). ``db.engine.make_engine`` calls this for a
    PostgreSQL database, and the Alembic environment before it compares metadata;
    calling it again changes nothing. The DDL itself is the migrations' (0009).
    """
    for index in Base.metadata.tables[PipelineRun.__tablename__].indexes:
        if index.name == "ix_pipeline_runs_local_log_size":
            index.dialect_options["postgresql"]["where"] = text(LOCAL_LOG_WHERE)
        elif index.name == "ix_pipeline_runs_follow_up_due":
            index.dialect_options["postgresql"]["where"] = text(FOLLOW_UP_DUE_WHERE)
