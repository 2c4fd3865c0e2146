"""Typed settings read from the environment and ``.env``.

``load_settings()`` is the only constructor used by entry points; it turns every
validation problem into one ``ConfigError`` line that names the variable and the value,
with secrets masked.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fastflow.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///./data/fastflow.db"  # with the default DATA_DIR
DEFAULT_DATA_DIR = Path("./data")
DEFAULT_LOGS_DIR = Path("./logs")
DEFAULT_PIPELINES_DIR = Path("./pipelines")
DEFAULT_CLEANUP_SCHEDULE = "0 2 * * *"
DEFAULT_VERIFY_SCHEDULE = "0 3 * * 0"
DEFAULT_S3_REGION = "us-east-1"
DEFAULT_S3_PREFIX = "pipeline-logs"
MAX_S3_PREFIX_BYTES = 512
DEFAULT_S3_MAX_CONCURRENCY = 8
DEFAULT_S3_CONNECT_TIMEOUT = 5.0
DEFAULT_S3_READ_TIMEOUT = 30.0
DEFAULT_SMTP_PORT = 587
DEFAULT_MAX_CONCURRENT_RUNS = 4
# Upper bounds: larger values overflow date arithmetic or mean nothing on a real disk
MAX_RETENTION_RUNS = 1_000_000_000
MAX_RETENTION_DAYS = 36_500  # 100 years
MAX_LOG_SIZE_MB = 1_048_576  # 1 TiB
DEFAULT_CANCEL_GRACE_S = 10.0
DEFAULT_BASE_URL = "http://localhost:8000"
DEFAULT_ENV_RETENTION_DAYS = 30
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

SECRET_FIELDS = frozenset(
    {
        "s3_access_key",
        "s3_secret_access_key",
        "smtp_password",
        "teams_webhook_url",
        "fastflow_secret_key",
    }
)
S3_REQUIRED = ("s3_endpoint_url", "s3_bucket", "s3_access_key", "s3_secret_access_key")

_KNOWN_VALID_CRON = frozenset({DEFAULT_CLEANUP_SCHEDULE, DEFAULT_VERIFY_SCHEDULE})
_CRON_PROBE = 1767225600.0  # 2026-01-01 UTC: where a schedule's next match is looked for

_EMAIL_RE = re.compile(r"^[^@\s,<>]+@[^@\s,<>]+\.[^@\s,<>]+$|^[^@\s,<>]+@localhost$")
MAX_EMAIL_LENGTH = 254  # an address in an SMTP path (RFC 5321: 256 with the brackets)
MAX_RECIPIENTS = 100
NOT_UTF8 = "must be valid UTF-8 text (it holds bytes or a lone surrogate that are not)"


def has_surrogate(text: str) -> bool:
    """Undecodable bytes in the environment (Python's ``surrogateescape``) or a lone
    ``\\ud800`` from JSON: text that fails only when it is sent (``NOT_UTF8`` says so)."""
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def cron_problem(expr: str) -> str | None:
    """Why ``expr`` is not a 5-field cron expression (None: it is one): the number of
    fields, or a field whose value is out of range or not understood."""
    from croniter import croniter

    fields = expr.split()
    if len(fields) != 5:
        return (
            f"must be a 5-field cron expression (minute hour day month weekday), not "
            f"{len(fields)} field{'s' if len(fields) != 1 else ''}"
        )
    if not croniter.is_valid(" ".join(fields)):
        return (
            "must be a cron expression with values in range (minute 0-59, hour 0-23, day "
            "1-31, month 1-12, weekday 0-7; a step */N with N >= 1)"
        )
    return None


def _check_url(value: str | None, schemes: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as e:
        raise ValueError("has an invalid port") from e
    return value


# Outbound URLs never point at link-local or cloud metadata endpoints (checked on the
# literal host, without resolving DNS); loopback and private addresses stay allowed.
_METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)
_METADATA_IPS = frozenset(
    ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254", "192.0.0.192")
)


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address, also in the legacy forms resolvers accept
    (``2852039166``, ``0xa9.0xfe.0xa9.0xfe``, ``169.254.43518``); None for a name."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if re.fullmatch(r"[0-9a-fA-FxX.]+", host) and re.search(r"[0-9]", host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def metadata_host_refusal(host: str) -> str | None:
    """Why ``host`` (of an outbound URL) is refused, or None: link-local addresses
    (169.254.0.0/16, fe80::/10) and cloud metadata endpoints, by address or by name."""
    name = host.strip().strip("[]").rstrip(".").lower()
    ip = _literal_ip(name)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip is not None and (ip.is_link_local or ip in _METADATA_IPS):
        return "must not point at a link-local or cloud metadata address"
    if ip is None and name in _METADATA_HOSTS:
        return "must not point at a cloud metadata host"
    return None


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (the literal host, no DNS)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_outbound_url(value: str | None) -> str | None:
    checked = _check_url(value, ("http", "https"))
    if checked is not None:
        refusal = metadata_host_refusal(urlsplit(checked).hostname or "")
        if refusal is not None:
            raise ValueError(refusal)
    return checked


_BIDI_AND_INVISIBLE = re.compile("[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
_S3_REGION_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_HOST_NAME = 253


def _check_host_name(value: str) -> str:
    """A host name or address: no control, bidi or invisible characters, no spaces,
    at most ``MAX_HOST_NAME`` characters."""
    if len(value) > MAX_HOST_NAME:
        raise ValueError(f"must be at most {MAX_HOST_NAME} characters long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c.isspace() for c in value):
        raise ValueError("must not contain control characters or spaces")
    if _BIDI_AND_INVISIBLE.search(value):
        raise ValueError("must not contain bidirectional or invisible control characters")
    return value


class Settings(BaseSettings):
    """Every setting of fastflow; field ``x_y`` is read from variable ``X_Y``."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=False,
    )

    # unset: SQLite in DATA_DIR (``sqlite:///<DATA_DIR>/fastflow.db``)
    database_url: str = ""
    data_dir: Path = DEFAULT_DATA_DIR
    logs_dir: Path = DEFAULT_LOGS_DIR
    pipelines_dir: Path = DEFAULT_PIPELINES_DIR

    log_retention_runs: int | None = Field(default=None, ge=0, le=MAX_RETENTION_RUNS)
    log_retention_days: int | None = Field(default=None, ge=0, le=MAX_RETENTION_DAYS)
    log_max_size_mb: int | None = Field(default=None, gt=0, le=MAX_LOG_SIZE_MB)
    cleanup_schedule: str = DEFAULT_CLEANUP_SCHEDULE

    # keep rules (issue 16): the newest SUCCESS run of each pipeline survives count and age
    # retention; the newest N failed runs are kept
    log_retention_keep_last_success: bool = True
    log_retention_keep_failed: int = Field(default=0, ge=0, le=MAX_RETENTION_RUNS)

    s3_backup_enabled: bool = False
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = DEFAULT_S3_REGION
    s3_prefix: str = DEFAULT_S3_PREFIX
    s3_use_path_style: bool = True
    s3_max_concurrency: int = Field(default=DEFAULT_S3_MAX_CONCURRENCY, ge=1, le=64)
    s3_connect_timeout: float = Field(default=DEFAULT_S3_CONNECT_TIMEOUT, gt=0, le=300)
    s3_read_timeout: float = Field(default=DEFAULT_S3_READ_TIMEOUT, gt=0, le=3600)
    s3_compression: Literal["none", "gzip", "zstd"] = "none"
    s3_checksum: Literal["sha256", "none"] = "sha256"
    s3_verify_etag: bool = True
    s3_head_every_upload: bool = False
    s3_sse: Literal["AES256", "aws:kms"] | None = None
    s3_sse_kms_key_id: str | None = None
    s3_storage_class: str | None = None
    s3_ca_bundle: Path | None = None
    s3_verify_tls: bool = True

    # integrity (issue 16): legal holds on pinned runs' objects, WORM retention of
    # archives and manifests, scheduled verification, disk-pressure warning
    s3_object_lock_legal_hold: bool = False
    s3_object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] | None = None
    s3_object_lock_days: int | None = Field(default=None, ge=1, le=MAX_RETENTION_DAYS)
    archive_verify_schedule: str = DEFAULT_VERIFY_SCHEDULE
    archive_verify_deep_sample: int = Field(default=100, ge=0, le=1_000_000)
    disk_warn_days: float = Field(default=3.0, ge=0, le=3650)

    email_enabled: bool = False
    smtp_host: str | None = None
    smtp_port: int = Field(default=DEFAULT_SMTP_PORT, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str | None = None
    smtp_security: Literal["ssl", "starttls", "none"] | None = None
    # credentials over an unencrypted connection only with SMTP_SECURITY=none and this
    smtp_allow_plaintext_auth: bool = False
    email_recipients: Annotated[list[str], NoDecode] = Field(default_factory=list)

    teams_enabled: bool = False
    teams_webhook_url: SecretStr | None = None

    max_concurrent_runs: int = Field(default=DEFAULT_MAX_CONCURRENT_RUNS, ge=1, le=1000)
    scheduler_timezone: str = "UTC"
    cancel_grace_seconds: float = Field(default=DEFAULT_CANCEL_GRACE_S, ge=0, le=3600)
    webhook_rate_per_minute: int = Field(default=60, ge=1, le=100_000)
    # reminders of a lasting incident (backups and runs): at most one per this many hours
    notify_reminder_hours: float = Field(default=23, gt=0, le=10000)

    # pipeline environments and isolation: unused envs are collected after this many
    # days; runs execute as RUN_AS_USER when set; a run sees fastflow's own variables
    # only when PASS_ENV names them
    env_retention_days: int = Field(default=DEFAULT_ENV_RETENTION_DAYS, ge=1, le=MAX_RETENTION_DAYS)
    # an environment build (uv) stopped after this long: a run never waits forever
    env_build_timeout_seconds: float = Field(default=3600, ge=1, le=86400)
    run_as_user: str | None = None
    pass_env: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # executors (issue 15): where runs execute; ``docker`` runs each in a container of
    # DOCKER_DEFAULT_IMAGE (a pipeline's "image" wins) on DOCKER_NETWORK; the Docker
    # daemon is found as Docker itself finds it (DOCKER_HOST, DOCKER_TLS_VERIFY,
    # DOCKER_CERT_PATH)
    executor: Literal["local", "docker"] = "local"
    docker_default_image: str = "python:3.11-slim"
    docker_network: str = "bridge"
    docker_keep_containers: bool = False

    fastflow_base_url: str = DEFAULT_BASE_URL
    # the umask of fastflow's own files (logs, metrics, database, key): 077 = private
    fastflow_umask: int = Field(default=0o077, ge=0, le=0o777)
    fastflow_secret_key: SecretStr | None = None
    metrics_public: bool = False
    docs_public: bool = False

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str) -> str:
        if v and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", v):
            raise ValueError("must start with sqlite:/// or postgresql://")
        if v.startswith("sqlite"):
            if not v.split("://", 1)[1].lstrip("/").split("?", 1)[0]:
                raise ValueError("names no database file (sqlite:///path/to/fastflow.db)")
            return v
        try:  # what the driver would otherwise fail on with a traceback
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as e:
            raise ValueError(f"is not a well-formed URL ({e})") from None
        return v

    @field_validator("log_retention_runs", "log_retention_days", mode="before")
    @classmethod
    def _zero_is_unlimited(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip() in ("0", "+0"):
            return None
        return None if v == 0 else v

    @field_validator("scheduler_timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as UTC or Europe/Berlin") from None
        return v

    @field_validator("cleanup_schedule", "archive_verify_schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        v = " ".join(v.split())
        if v in _KNOWN_VALID_CRON:
            return v  # the defaults (validated with every start): no croniter import
        from croniter import CroniterBadDateError, croniter

        problem = cron_problem(v)
        if problem is not None:
            raise ValueError(f"{problem}, such as '0 2 * * *'")
        try:  # valid syntax that matches no date (``0 0 30 2 *``) would stop the scheduler
            croniter(v, _CRON_PROBE).get_next(float)
        except CroniterBadDateError:
            raise ValueError(
                "matches no date, so it would never fire; give one that does, such as '0 2 * * *'"
            ) from None
        return v

    @field_validator("s3_endpoint_url")
    @classmethod
    def _s3_url(cls, v: str | None) -> str | None:
        checked = _check_outbound_url(v)
        if checked is not None and (urlsplit(checked).query or urlsplit(checked).fragment):
            raise ValueError("must not have a query string or a fragment (scheme://host[:port])")
        if checked is not None and "@" in urlsplit(checked).netloc:
            # the endpoint is shown to every viewer (settings page, /api/settings)
            raise ValueError(
                "must not contain a user name or password: S3 credentials go in "
                "S3_ACCESS_KEY and S3_SECRET_ACCESS_KEY"
            )
        return checked

    @field_validator("fastflow_base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        checked = _check_url(v, ("http", "https"))
        assert checked is not None
        return checked.rstrip("/")

    @field_validator("s3_access_key", "s3_secret_access_key", "smtp_password")
    @classmethod
    def _credential(cls, v: SecretStr | None) -> SecretStr | None:
        # a newline pasted with a key went into the Authorization header, and botocore's
        # "invalid header value" error then showed the header (an outside audit)
        if v is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in v.get_secret_value()):
            raise ValueError("must not contain control characters (a pasted line break?)")
        if v is not None and has_surrogate(v.get_secret_value()):
            raise ValueError(NOT_UTF8)
        return v

    @field_validator("smtp_user")
    @classmethod
    def _smtp_user(cls, v: str | None) -> str | None:
        if v is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in v):
            raise ValueError("must not contain control characters (a pasted line break?)")
        if v is not None and has_surrogate(v):
            raise ValueError(NOT_UTF8)
        return v

    @field_validator("teams_webhook_url")
    @classmethod
    def _teams_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            checked = _check_outbound_url(v.get_secret_value())
            parts = urlsplit(checked or "")
            if parts.scheme != "https" and not is_loopback_host(parts.hostname or ""):
                # the token travels in the URL: in clear only to this machine (issue 5)
                raise ValueError(
                    "must use https (http only on a loopback address such as 127.0.0.1)"
                )
        return v

    @field_validator("s3_region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _S3_REGION_RE.match(v):
            raise ValueError(
                "must be a region name such as us-east-1: lowercase letters, digits and "
                "hyphens, at most 63 characters"
            )
        return v

    @field_validator("s3_bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _S3_BUCKET_RE.match(v) or ".." in v:
            raise ValueError(
                "must be an S3 bucket name: 3 to 63 lowercase letters, digits, dots and "
                "hyphens, starting and ending with a letter or digit"
            )
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", v):
            raise ValueError("must be an S3 bucket name, not an IP address")
        if v.startswith(("xn--", "sthree-")) or v.endswith(("-s3alias", "--ol-s3")):
            raise ValueError("uses a prefix or suffix that S3 reserves")
        return v

    @field_validator("smtp_host")
    @classmethod
    def _smtp_host(cls, v: str | None) -> str | None:
        return v if v is None else _check_host_name(v)

    @field_validator("s3_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        if any(part in ("", ".", "..") for part in v.split("/")) and v:
            raise ValueError("must not contain empty, '.' or '..' segments")
        if any(part != part.strip() for part in v.split("/")):
            # " " or "logs /x" is a folder nobody finds by name in the bucket's listing
            raise ValueError("must not have a segment that starts or ends with a space")
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("must not contain control characters")
        if len(v.encode("utf-8")) > MAX_S3_PREFIX_BYTES:
            # an S3 key is at most 1,024 bytes: the pipeline, run id and file name follow
            raise ValueError(f"must be at most {MAX_S3_PREFIX_BYTES} bytes")
        return v

    @field_validator("smtp_from")
    @classmethod
    def _from(cls, v: str | None) -> str | None:
        if v is not None and not _EMAIL_RE.match(v.strip()):
            raise ValueError("must be an e-mail address")
        if v is not None and len(v.strip()) > MAX_EMAIL_LENGTH:
            raise ValueError(f"must be at most {MAX_EMAIL_LENGTH} characters")
        return v.strip() if v else v

    @field_validator("email_recipients", mode="before")
    @classmethod
    def _recipients(cls, v: Any) -> Any:
        if isinstance(v, str):
            items = [item.strip() for item in v.split(",")]
            items = [item for item in items if item]
        elif v is None or isinstance(v, list | tuple):
            items = list(v or [])
        else:
            raise ValueError("must be a comma-separated text or a list of e-mail addresses")
        if any(not isinstance(item, str) for item in items):
            raise ValueError("must be a list of e-mail addresses (text)")
        if len(items) > MAX_RECIPIENTS:
            raise ValueError(f"must be at most {MAX_RECIPIENTS} addresses")
        bad = [item for item in items if not _EMAIL_RE.match(item)]
        if bad:
            shown = bad[0] if len(bad[0]) <= 80 else bad[0][:77] + "..."
            raise ValueError(f"{shown!r} is not an e-mail address")
        long = [item for item in items if len(item) > MAX_EMAIL_LENGTH]
        if long:
            raise ValueError(f"{long[0][:40]!r}... is longer than {MAX_EMAIL_LENGTH} characters")
        return items

    @field_validator("fastflow_umask", mode="before")
    @classmethod
    def _umask(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not re.fullmatch(r"0?[0-7]{1,3}", v.strip()):
                raise ValueError("must be an octal umask such as 077 or 027")
            return int(v.strip(), 8)
        return v

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            folder = self.data_dir.expanduser().as_posix()
            if not folder.startswith(("/", "./", "../")):
                folder = "./" + folder  # sqlite:///./data/fastflow.db, as documented
            self.database_url = f"sqlite:///{folder}/fastflow.db"
        return self

    @field_validator("s3_object_lock_mode", mode="before")
    @classmethod
    def _lock_mode(cls, v: Any) -> Any:
        return v.strip().upper() or None if isinstance(v, str) else v

    @field_validator("pass_env", mode="before")
    @classmethod
    def _pass_env(cls, v: Any) -> Any:
        items = [i.strip() for i in v.split(",")] if isinstance(v, str) else list(v or [])
        items = [i for i in items if i]
        bad = [i for i in items if not _ENV_NAME_RE.match(i)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an environment variable name")
        return items

    @field_validator("run_as_user", mode="before")
    @classmethod
    def _run_as_user(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip() or None
            if v is not None and not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?", v):
                raise ValueError("must be a user name or numeric uid")
        return v

    # --- derived views -------------------------------------------------------------

    def s3_missing(self) -> list[str]:
        """Names of the variables that S3 backup still needs (empty when configured)."""
        return [name.upper() for name in S3_REQUIRED if getattr(self, name) is None]

    @property
    def logs_root(self) -> Path:
        """Absolute ``LOGS_DIR``."""
        return self.logs_dir.expanduser().resolve()


def mask_url_password(url: str) -> str:
    """``scheme://user:***@host/db``: a database URL without its password."""
    return re.sub(r"^([a-zA-Z0-9+.-]+://[^:/@]*):[^@]*@", r"\1:***@", url)


def _describe(loc: tuple[int | str, ...], value: Any) -> str:
    field = str(loc[0]) if loc else "?"
    shown = "***" if field in SECRET_FIELDS else value
    if field in ("database_url", "s3_endpoint_url") and isinstance(shown, str):
        shown = mask_url_password(shown)
        if field == "s3_endpoint_url" and ("?" in shown or "#" in shown):
            # (refused for having them: a query may carry a token, never shown)
            shown = re.split(r"[?#]", shown, maxsplit=1)[0] + "?***"
    if isinstance(shown, str):
        return f"{field.upper()}={_printable(shown)}"
    if isinstance(shown, int | float | bool):
        return f"{field.upper()}={shown!s}"
    return field.upper()


MAX_SHOWN_VALUE = 80


def _printable(value: str) -> str:
    """``value`` for a one-line message: control, bidi and invisible characters escaped
    (``\\n``, ``\\u202e``), cut to ``MAX_SHOWN_VALUE`` characters."""
    cut = value[:MAX_SHOWN_VALUE]
    out = "".join(
        c.encode("unicode_escape").decode("ascii")
        if ord(c) < 0x20 or ord(c) == 0x7F or _BIDI_AND_INVISIBLE.match(c)
        else c
        for c in cut
    )
    return out + ("…" if len(value) > MAX_SHOWN_VALUE else "")


def load_settings(**overrides: Any) -> Settings:
    """Build ``Settings`` from the environment; raise ``ConfigError`` with one line."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        err = e.errors()[0]
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        where = _describe(tuple(err.get("loc", ())), err.get("input"))
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise ConfigError(f"invalid configuration: {where}: {msg}{more}") from None
