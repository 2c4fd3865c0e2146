"""Pipeline folders that ``serve`` skips because their name or ``pipeline.json`` is
invalid: their schedules, webhooks and triggers do not run until they are fixed. Before,
that happened without a word.

Guarantees: a skipped folder is logged (a warning) the first time it is seen with a
problem and whenever the problem changes; one that is still skipped at the next scan
(``DISCOVER_TTL_S`` later: an editor's half-written file is not an incident) opens the
system incident ``("pipeline", folder name)`` — bell, e-mail, Teams, once per incident;
the incident is resolved once the folder loads again or is gone, also when an earlier
process opened it (the open incidents are read once, at the first scan; later scans
query nothing). Nothing here raises.
"""

from __future__ import annotations

import logging

from fastflow.context import Context
from fastflow.notify import system

KIND = "pipeline"

log = logging.getLogger(__name__)


class SkippedFolders:
    """Follows what each scan of ``PIPELINES_DIR`` skipped (``update``, per scan)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._seen: dict[str, str] = {}  # the previous scan's problems
        self._raised: dict[str, str] = {}  # what this process announced
        self._inherited: set[str] | None = None  # open before this process looked

    def update(self, skipped: dict[str, str]) -> None:
        for name, why in skipped.items():
            if self._seen.get(name) != why:
                log.warning(
                    "pipeline folder %r is skipped (its schedules, webhooks and triggers do "
                    "not run until it is fixed; `fastflow pipelines check` lists every "
                    "problem): %s",
                    name,
                    why,
                )
            elif self._raised.get(name) != why:
                system.raise_incident(
                    self._ctx,
                    KIND,
                    name,
                    f"Pipeline folder {name!r} is skipped: its schedules do not run",
                    f"{why}\n\nIts schedules, webhooks and triggers do not run until it is "
                    "fixed; `fastflow pipelines check` lists every problem.",
                )
                self._raised[name] = why
        self._seen = dict(skipped)
        if self._inherited is None:  # once: the scans that follow need no query
            self._inherited = {i["key"] for i in system.open_incidents(self._ctx, KIND)}
        for name in sorted((self._inherited | set(self._raised)) - set(skipped)):
            log.info("pipeline folder %r is no longer skipped", name)
            system.resolve_incident(
                self._ctx, KIND, name, f"Pipeline folder {name!r} loads again (or is gone)."
            )
            self._raised.pop(name, None)
            self._inherited.discard(name)
