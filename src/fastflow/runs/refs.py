"""``RunRef``: the facts about a finished run that planning, archiving and the ledger
need, as a small immutable value (rows are read with SQL Core straight into it).

A named tuple, not a dataclass: the planner builds one per candidate row, and a tuple
is built several times faster than a frozen dataclass (no per-field ``__setattr__``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import NamedTuple


class RunRef(NamedTuple):
    """The facts about a run that planning and archiving need."""

    id: uuid.UUID
    pipeline_name: str
    status: str
    triggered_by: str
    started_at: datetime
    finished_at: datetime | None
    exit_code: int | None
    log_file: str | None
    metrics_file: str | None
    log_size: int | None

    @property
    def key(self) -> tuple[datetime, uuid.UUID]:
        return (self.started_at, self.id)
