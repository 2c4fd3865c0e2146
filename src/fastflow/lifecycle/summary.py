"""What one cleanup pass did: the summary the CLI prints, the API returns and the
notifications read (field names are part of the outside interface)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fastflow.lifecycle.policy import Action


@dataclass
class Failure:
    run_id: str | None
    pipeline_name: str | None
    started_at: str | None
    error: str


@dataclass(frozen=True)
class PlanEntry:
    """One planned action of a dry run: ``action`` is ``archive_and_delete_run``,
    ``truncate_log`` or ``archive_and_drop_files``; ``reason`` says why (rules joined by
    "; "); ``bytes`` is the run's recorded log size (None when unknown). A run that
    retention would remove but that is kept has ``action`` ``keep`` and one ``reason``:
    ``pinned``, ``last_success`` or ``keep_failed``."""

    run_id: str
    pipeline_name: str
    action: str
    reason: str
    bytes: int | None

    @classmethod
    def of(cls, action: Action) -> PlanEntry:
        return cls(
            run_id=str(action.run.id),
            pipeline_name=action.run.pipeline_name,
            action=action.kind.value,
            reason="; ".join(action.reasons),
            bytes=action.run.log_size,
        )


@dataclass
class PassSummary:
    """What one pass did. Counts are independent of each other. Timestamps are ISO 8601
    strings; ``finished_at`` is None until the pass ends (and for a dry run)."""

    trigger: str
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
    # full logs archived (verified) before their local copy was truncated
    archived_before_truncation: int = 0
    # runs archived again: the local file grew after archiving, or the object vanished
    rearchived_runs: int = 0
    stale_temp_files_removed: int = 0
    stale_uploads_aborted: int = 0  # multipart uploads a killed pass left, aborted
    # runs retention would have removed (or truncated) that a pin or a keep rule kept: a
    # dry run's ``keep`` entries; in a pass, the runs found pinned when their turn came
    kept_runs: int = 0
    config_error: str | None = None
    # why the pass stopped early (lost its lock); the counts say what it did until then
    error: str | None = None
    failures: list[Failure] = field(default_factory=list)
    plan: list[PlanEntry] = field(default_factory=list)  # dry run only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[PassSummary], None]
