"""A one-line progress display for long passes on a terminal."""

from __future__ import annotations

import time
from typing import Any, TextIO

REDRAW_EVERY_S = 0.1


class ProgressLine:
    """Redraws ``planned/archived/deleted/failed, bytes`` in place on a TTY."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last = 0.0
        self._drawn = False

    def update(self, s: Any) -> None:
        now = time.monotonic()
        if now - self._last < REDRAW_EVERY_S:
            return
        self._last = now
        done = s.archived_runs + s.deleted_runs + s.backup_failures + s.skipped_runs
        self._out.write(
            f"\r\x1b[Kcleanup: planned {s.planned_runs + s.planned_truncations}, "
            f"archived {s.archived_runs} ({s.bytes_archived / 1_048_576:.1f} MiB), "
            f"deleted {s.deleted_runs}, truncated {s.truncated_logs}, "
            f"failed {s.backup_failures}, skipped {s.skipped_runs} [{done}]"
        )
        self._out.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._out.write("\r\x1b[K")
            self._out.flush()
