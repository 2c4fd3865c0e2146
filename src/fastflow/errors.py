"""Domain errors. Each carries a user-facing message and, where useful, a hint.

Services raise these; the CLI and the API map them to exit codes and HTTP statuses in
one place each. Error text never contains secrets.
"""

from __future__ import annotations

from collections.abc import Sequence


class FastflowError(Exception):
    """Base class: ``str(err)`` is a one-line message a user can act on."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class AuthError(FastflowError):
    """Missing or invalid credentials (HTTP 401)."""


class Forbidden(FastflowError):
    """Valid credentials without the needed role (HTTP 403)."""


class InvalidInput(FastflowError):
    """A value supplied by the user is not acceptable (HTTP 422)."""


class ConfigError(FastflowError):
    """A configuration value is invalid or missing."""


class InvalidPipelineName(FastflowError):
    """A pipeline name breaks the naming rules (see ``pipelines.validate_name``)."""


class PipelineNotFound(FastflowError):
    """No pipeline folder with a ``main.py`` exists for the name."""


class InvalidPipelineConfig(FastflowError):
    """A ``pipeline.json`` cannot be read or holds invalid values."""


class RunNotFound(FastflowError):
    """No run (and no archive ledger entry) with that id exists."""


class RunAlreadyFinished(FastflowError):
    """A cancel (or similar) for a run that has already ended (HTTP 409)."""


class LogNotAvailable(FastflowError):
    """A run exists but its log is neither local nor archived."""


class LogNotStarted(LogNotAvailable):
    """A run has no log because it never started (still queued, or cancelled so)."""


class UnsafePath(FastflowError):
    """A path would resolve outside ``LOGS_DIR``."""


class LogsDirUnavailable(FastflowError):
    """``LOGS_DIR`` is missing or not this installation's folder (``runs.logsdir``):
    nothing is written there (HTTP 503)."""


class ArchiveError(FastflowError):
    """Uploading, verifying or reading an archived object failed."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        connection_level: bool = False,
        timed_out: bool = False,
    ) -> None:
        super().__init__(message, hint=hint)
        self.connection_level = connection_level or timed_out
        self.timed_out = timed_out


class ObjectMissing(ArchiveError):
    """An archived object the ledger names does not exist (any more)."""


class ObjectChanged(ArchiveError):
    """An archived object holds other bytes than the ones archived (its server's MD5
    ETag says so, whatever its metadata says)."""


class ArchiveDamaged(ArchiveError):
    """An archived object read back does not decompress, or is not as long as the ledger
    says: it was damaged or replaced after it was verified (never served as complete)."""


class ArchiveNotConfigured(ConfigError):
    """S3 backup is enabled but some required settings are missing."""


class RetryTakenOver(FastflowError):
    """The next attempt ``fastflow run`` was about to start was queued for a server by
    another process already (it took this one for dead): it is not started twice."""


class PassAlreadyRunning(FastflowError):
    """Another cleanup pass holds the lock."""

    def __init__(self, message: str, *, started_at: str | None = None) -> None:
        super().__init__(message)
        self.started_at = started_at


class PassLockLost(FastflowError):
    """The pass no longer holds its lock (its database connection ended); it must stop
    before the next destructive step."""


class FileChanged(ArchiveError):
    """A local file differs from the bytes that were archived and verified; it is kept."""


class InvalidSecret(InvalidInput):
    """A secret name or value is not acceptable (HTTP 422, exit status 2). The message
    names the problem, never the value."""


class MissingSecrets(FastflowError):
    """Secrets a pipeline lists in ``secrets`` are not in the store; ``names`` are all of
    them, in the order asked for."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(
            "secret(s) not found: " + ", ".join(names),
            hint="set with: fastflow secret set NAME",
        )
        self.names = list(names)


class SecretUnreadable(ConfigError):
    """Stored secrets cannot be decrypted (``FASTFLOW_SECRET_KEY`` or
    ``DATA_DIR/secret.key`` changed since they were set); ``names`` says which. The
    message never contains a ciphertext."""

    def __init__(self, names: Sequence[str]) -> None:
        which = f"secret {names[0]}" if len(names) == 1 else "secrets " + ", ".join(names)
        super().__init__(
            f"{which} cannot be decrypted: FASTFLOW_SECRET_KEY or DATA_DIR/secret.key "
            "changed since it was set",
            hint="set it again with: fastflow secret set NAME",
        )
        self.names = list(names)


class EnvBuildError(FastflowError):
    """A pipeline's virtual environment could not be built (uv failed: resolver, index,
    interpreter); the message is one line with uv's key message, the full output went to
    the build log. No half-built environment is ever reused after it."""


class BuildStopped(EnvBuildError):
    """An environment build was stopped because its run was cancelled; uv and whatever
    it started are killed and nothing of the build is kept."""
