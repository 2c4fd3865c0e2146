"""Response models of the JSON API: they name and document every ``/api`` response.

They describe the JSON exactly as the dict builders produce it (``runs.views``, the
``to_dict`` methods, ``settings_store.public_view``, ``PassSummary``): same keys in the
same order, same types. Timestamps are ISO 8601 strings, never re-serialised datetimes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, RootModel


class DockerHealthOut(BaseModel):
    status: Literal["ok", "error"]
    detail: str  # the daemon by scheme and host only; never a path or a secret


class HealthOut(BaseModel):
    """Liveness: ``status`` is always "ok" while the server answers. ``docker`` is present
    only when a pipeline uses the Docker executor: a monitor alerts on ``docker.status``."""

    status: str
    version: str
    docker: DockerHealthOut | None = None


# --- auth -------------------------------------------------------------------------------


class LoginOut(BaseModel):
    username: str
    role: str
    csrf_token: str


class LogoutOut(BaseModel):
    ok: bool


class MeOut(BaseModel):
    name: str
    role: str
    kind: str  # "session" or "token"
    csrf_token: str | None  # None for API tokens


# --- runs and the archive ledger --------------------------------------------------------


class RunRowOut(BaseModel):
    """A run row as stored (``PipelineRun.to_dict``)."""

    id: str
    pipeline_name: str
    status: str
    triggered_by: str
    started_at: str
    finished_at: str | None
    exit_code: int | None
    log_file: str | None
    metrics_file: str | None
    log_size: int | None
    executor: str | None = None  # "local" or "docker"; None: known from the ledger only
    image: str | None = None  # the container image of a docker run
    attempt: int = 1
    retry_of: str | None = None
    upstream_run_id: str | None = None
    scheduled_for: str | None = None
    queued_at: str | None = None
    run_config_id: str | None = None
    failure_reason: str | None = None
    # a pinned run is never deleted or truncated (issue 16): when, who, why
    pinned_at: str | None = None
    pinned_by: str | None = None
    pin_reason: str | None = None


class ArchiveInfoOut(BaseModel):
    """The archive ledger entry of a run, as embedded in a run object."""

    bucket: str
    log_key: str | None
    log_sha256: str | None
    log_size: int | None
    metrics_key: str | None
    archived_at: str
    local_deleted_at: str | None
    reason: str
    log_truncated_at: str | None
    full_log_archived: bool


class RunOut(RunRowOut):
    """A run with archive information; ``row_deleted`` when shown from the ledger only
    (then ``log_file`` and ``metrics_file`` are null)."""

    duration_s: float | None
    archived: bool
    archive: ArchiveInfoOut | None
    row_deleted: bool


class RunListOut(RootModel[list[RunOut]]):
    """Runs, newest first."""


class RunStartedOut(BaseModel):
    run_id: str
    pipeline_name: str
    status: str


class CancelOut(BaseModel):
    cancelled: bool
    outcome: Literal["cancelled", "requested"]  # never started, or being stopped


class MetricSampleOut(BaseModel):
    """One line of ``metrics.jsonl``, passed through as written by the sampler (other keys
    of the line are kept)."""

    model_config = ConfigDict(extra="allow")

    timestamp: str
    cpu_percent: float
    ram_mb: float
    exit: bool | None = None  # present (true) only on the exit sample


class MetricSampleListOut(RootModel[list[MetricSampleOut]]):
    """The run's CPU/RAM samples, oldest first."""


class ArchiveEntryOut(BaseModel):
    """An archive ledger entry (``ArchivedRun.to_dict``)."""

    run_id: str
    pipeline_name: str
    status: str
    triggered_by: str
    started_at: str
    finished_at: str | None
    exit_code: int | None
    bucket: str
    log_key: str | None
    log_size: int | None
    log_sha256: str | None
    metrics_key: str | None
    metrics_size: int | None
    metrics_sha256: str | None
    reason: str
    encoding: str | None
    log_original_size: int | None
    log_original_sha256: str | None
    archived_at: str
    local_deleted_at: str | None
    log_truncated_at: str | None


class ArchiveEntryListOut(RootModel[list[ArchiveEntryOut]]):
    """Archive ledger entries, newest first."""


# --- pipelines --------------------------------------------------------------------------


class RetentionOut(BaseModel):
    runs: int | None
    days: int | None
    max_size_mb: int | None
    keep_last_success: bool | None = None  # None: the global setting applies
    keep_failed: int | None = None


class ScheduleOut(BaseModel):
    """One schedule of a pipeline and its next tick."""

    schedule_key: str
    schedule: str
    enabled: bool
    next_run_at: str | None


class PipelineOut(BaseModel):
    name: str
    description: str
    timeout: float | None
    retention: RetentionOut
    last_run: RunRowOut | None
    schedules: list[ScheduleOut] = []
    max_instances: int = 1
    retries: int = 0
    triggers: dict[str, list[str]] = {}


class PipelineListOut(RootModel[list[PipelineOut]]):
    """Discovered pipelines, each with its last run."""


# --- settings ---------------------------------------------------------------------------


class S3TestOut(BaseModel):
    ok: bool
    error: str | None
    tested_at: str


class NotificationStatusOut(BaseModel):
    """The last delivery on one channel (all null when it never sent anything; ``ok``
    null while a delivery is in progress)."""

    ok: bool | None
    error: str | None
    at: str | None
    kind: str | None
    enabled: bool
    channel: str


class SettingsOut(BaseModel):
    """Effective settings; secrets only as ``<name>_configured``; ``sources`` says per
    field whether the value comes from the environment, the UI (an override) or the
    default."""

    log_retention_runs: int | None
    log_retention_days: int | None
    log_max_size_mb: int | None
    cleanup_schedule: str
    s3_backup_enabled: bool
    s3_endpoint_url: str | None
    s3_bucket: str | None
    s3_region: str
    s3_prefix: str
    s3_use_path_style: bool
    email_enabled: bool
    smtp_host: str | None
    smtp_port: int
    smtp_user: str | None
    smtp_from: str | None
    smtp_security: Literal["ssl", "starttls", "none"] | None
    email_recipients: list[str]
    teams_enabled: bool
    smtp_allow_plaintext_auth: bool  # SMTP_ALLOW_PLAINTEXT_AUTH (environment only)
    fastflow_base_url: str
    s3_access_key_configured: bool
    s3_secret_access_key_configured: bool
    smtp_password_configured: bool
    teams_webhook_url_configured: bool
    s3_configured: bool
    s3_missing: list[str]
    overridden: list[str]
    # per changeable field (secrets too): where its value comes from
    sources: dict[str, Literal["environment", "ui", "default"]]
    last_s3_test: S3TestOut | None
    last_backup_at: str | None
    unresolved_backup_failures: int
    notifications: dict[str, NotificationStatusOut]  # keyed by channel
    next_cleanup_at: str | None  # the scheduler's next pass (null: none runs in this server)
    notices: list[str]  # what a change implied (PUT), e.g. a password to enter again


class ChannelResultOut(BaseModel):
    channel: str
    ok: bool
    error: str | None
    at: str
    attempts: int


class ChannelResultListOut(RootModel[list[ChannelResultOut]]):
    """One result per chosen channel."""


# --- cleanup passes and backup failures -------------------------------------------------


class FailureOut(BaseModel):
    run_id: str | None
    pipeline_name: str | None
    started_at: str | None
    error: str


class PassCountsOut(BaseModel):
    """What a pass did, as stored with the pass (``PassSummary`` without ``plan`` and
    ``failures``). Passes recorded by older versions lack the newer keys; the API returns
    the stored keys only, so every key is optional here."""

    trigger: str = ""
    dry_run: bool = False
    pass_id: int | None = None
    started_at: str = ""
    finished_at: str | None = None
    duration_s: float = 0.0
    planned_runs: int = 0
    planned_truncations: int = 0
    archived_runs: int = 0
    deleted_runs: int = 0
    deleted_logs: int = 0
    deleted_metrics: int = 0
    truncated_logs: int = 0
    dropped_files_runs: int = 0
    backup_failures: int = 0
    skipped_runs: int = 0
    bytes_archived: int = 0
    archived_before_truncation: int = 0
    rearchived_runs: int = 0
    stale_temp_files_removed: int = 0
    stale_uploads_aborted: int = 0
    kept_runs: int = 0
    config_error: str | None = None
    error: str | None = None


class PassSummaryOut(PassCountsOut):
    """The summary of the pass just run (``PassSummary`` without ``plan``); every key
    is always present."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    failures: list[FailureOut]


class CleanupPassOut(BaseModel):
    id: int
    trigger: str
    started_at: str
    finished_at: str | None
    archived_runs: int
    deleted_runs: int
    backup_failures: int
    bytes_archived: int
    error: str | None
    summary: PassCountsOut  # {} while the pass runs or when it was interrupted


class CleanupPassListOut(RootModel[list[CleanupPassOut]]):
    """Passes, newest first."""


class BackupFailureOut(BaseModel):
    id: int
    run_id: str | None
    pipeline_name: str | None
    error_message: str
    created_at: str
    resolved_at: str | None


class BackupFailuresOut(BaseModel):
    failures: list[BackupFailureOut]  # unresolved first, then newest first
    last_backup_at: str | None


# --- pipeline secrets (names only: values are write-only) -------------------------------


class SecretValueIn(BaseModel):
    """The body of ``PUT /api/secrets/{name}``: the new value (non-empty text)."""

    model_config = ConfigDict(extra="forbid")

    value: str


class SecretOut(BaseModel):
    """A stored secret without its value (``SecretListing.to_dict``)."""

    name: str
    updated_at: str
    pipelines: list[str]  # the pipelines whose pipeline.json "secrets" list the name


class SecretSetOut(SecretOut):
    """The secret just set; ``warnings`` only when there is something to know about its
    value (too short to be masked in run logs)."""

    warnings: list[str] | None = None


class SecretListOut(RootModel[list[SecretOut]]):
    """Every stored secret, by name (never a value)."""


class SecretDeletedOut(BaseModel):
    name: str
    deleted: bool
    pipelines: list[str]  # pipelines that still list the name: their runs now fail


# --- statistics: the overview dashboard and the pipeline pages (``runs.stats``) ---------


class RunsByDayOut(BaseModel):
    """Runs started on one UTC day, per final status."""

    day: str  # YYYY-MM-DD
    SUCCESS: int
    FAILED: int
    TIMEOUT: int
    CANCELLED: int


class RunsByStatusOut(BaseModel):
    """Runs started in the last 24 hours, per status."""

    QUEUED: int
    PENDING: int
    RUNNING: int
    SUCCESS: int
    FAILED: int
    TIMEOUT: int
    CANCELLED: int


class OpenIncidentsOut(BaseModel):
    run_failures: int  # pipelines whose failure incident is open
    backup_failures: int  # unresolved backup failures
    integrity: int  # open integrity incidents (a missing or altered archived object)


class NextRunOut(BaseModel):
    pipeline_name: str
    next_run_at: str


class DiskOut(BaseModel):
    logs_bytes: int  # run logs on local disk (recorded sizes)
    free_bytes: int | None  # free space of the file system of LOGS_DIR
    backlog_runs: int  # finished runs retention wants gone: the next pass's work
    backlog_bytes: int


class DiskSampleOut(BaseModel):
    """The disk after one cleanup pass."""

    at: str
    pass_id: int | None
    local_log_bytes: int
    free_bytes: int | None
    archived_bytes: int


class OverviewOut(BaseModel):
    runs_by_day: list[RunsByDayOut]  # oldest first, every day of the range
    success_rate_7d: float | None
    open_incidents: OpenIncidentsOut
    next_runs: list[NextRunOut]  # soonest first
    disk: DiskOut
    last_pass: PassCountsOut | None
    runs_24h: RunsByStatusOut
    disk_history: list[DiskSampleOut]  # oldest first


class RecentRunOut(BaseModel):
    run_id: str
    status: str
    duration_s: float | None  # None while the run is active
    started_at: str
    attempt: int


class PipelineStatsOut(BaseModel):
    runs: int
    success_rate: float | None
    duration_p50_s: float | None
    duration_p95_s: float | None
    recent: list[RecentRunOut]  # the last 50 runs, newest first


# --- log search and streaming (issue 17) ----------------------------------------------


class LogGrepHitOut(BaseModel):
    """One line of ``GET /api/runs/{id}/logs?grep=``'s NDJSON: a matching line (1-based
    number, text without its newline) and up to ``context`` lines around it."""

    line: int
    text: str
    context_before: list[str]
    context_after: list[str]


class SearchHitOut(BaseModel):
    """One line of ``GET /api/search``'s NDJSON (newest runs first)."""

    run_id: str
    pipeline_name: str
    started_at: str
    line: int
    text: str


class LogStreamStatusOut(BaseModel):
    """The data of the ``status`` event that ends ``GET /api/runs/{id}/logs/stream``."""

    status: str
    exit_code: int | None
    failure_reason: str | None


# --- pins and disk pressure (issue 16) ----------------------------------------------------


class PinIn(BaseModel):
    """The body of ``POST /api/runs/{id}/pin``: why the run must be kept."""

    model_config = ConfigDict(extra="forbid")

    reason: str


class LegalHoldOut(BaseModel):
    """What a pin or unpin did to the legal holds of the run's archived objects."""

    enabled: bool  # S3_OBJECT_LOCK_LEGAL_HOLD with S3 backup enabled
    on: bool  # placed (pin) or lifted (unpin)
    objects: list[str]  # the keys whose hold changed
    error: str | None  # why a hold could not be changed (the pin itself stands)


class PinOut(BaseModel):
    run_id: str
    pinned: bool
    pinned_at: str | None
    pinned_by: str | None
    pin_reason: str | None
    changed: bool  # False: it already was pinned (reason replaced) / was not pinned
    legal_hold: LegalHoldOut


class DiskPressureOut(BaseModel):
    """The file system of LOGS_DIR and its forecast (``lifecycle.disk``)."""

    free_bytes: int
    total_bytes: int
    growth_bytes_per_day: float  # local log growth, from the runs of the last 7 days
    backlog_runs: int  # finished runs due for archive and deletion
    backlog_bytes: int
    days_until_full: float | None  # null: no growth, never at this rate
    warn_days: float  # DISK_WARN_DAYS (0: no warning)
    min_free_bytes: int  # below this, new runs are refused (FAILED before they start)
    warning: bool
    cause: str | None  # why the disk fills (e.g. S3 failing), when warning
    checked_at: str


# --- integrity (issue 16): system incidents, archive verifications, bucket check ----------


class SystemIncidentOut(BaseModel):
    """An open incident of fastflow itself (``notify.system.open_incidents``)."""

    kind: str  # "integrity" | "disk"
    key: str
    title: str
    detail: str
    since: str
    updated_at: str


class SystemIncidentsOut(BaseModel):
    incidents: list[SystemIncidentOut]  # newest first


class VerificationProblemOut(BaseModel):
    """One problem a verification found. ``kind``: object (HEAD), deep (re-hash),
    manifest; ``state``: missing, changed, error, or a manifest state of
    ``fastflow archive verify --manifests``."""

    kind: str
    state: str
    key: str | None
    run_id: str | None
    pipeline_name: str | None
    manifest: str | None
    detail: str


class VerificationOut(BaseModel):
    """A recorded archive verification (``archive.audit.verifications``)."""

    id: int
    trigger: str
    started_at: str
    finished_at: str | None
    objects_checked: int
    objects_deep_checked: int
    objects_damaged: int
    manifests_checked: int
    ok: bool | None  # None: it could not finish (``error``)
    problems: list[VerificationProblemOut]  # at most 100
    error: str | None


class VerificationListOut(BaseModel):
    verifications: list[VerificationOut]  # newest first


class BucketCheckItemOut(BaseModel):
    name: str
    status: Literal["ok", "warning", "error", "unknown"]
    message: str


class BucketCheckOut(BaseModel):
    ok: bool  # no check is an error
    bucket: str
    prefix: str
    checked_at: str
    checks: list[BucketCheckItemOut]
