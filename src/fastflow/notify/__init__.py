"""Notifications about backup failures and failed pipeline runs: e-mail and Microsoft Teams.

Data flow: a committed ``PassSummary`` or a finished run -> ``incidents`` (pure: what to
announce) -> ``records`` (incident state, delivery record) -> ``messages`` /
``run_messages`` (words) -> ``email`` / ``teams`` (best-effort transports) — wired by
``dispatch`` (passes) and ``runs`` (runs) over ``delivery`` (one background worker).
Entry points:

- ``after_pass(ctx, summary)`` after every cleanup pass (returns at once; never raises);
  a pass the database could not record is announced directly, at most once a reminder
  interval per process; ``without_database(settings, error)`` when the database cannot
  even be opened (``fastflow cleanup``);
- ``after_run(ctx, run_id, status, final)`` after every run (returns at once; never raises);
- ``open_run_incidents(ctx)`` for the UI's bell: pipelines whose failures are unresolved;
- ``send_test(ctx, email=..., teams=...)`` for ``fastflow notify test`` and the UI;
- ``last_results(ctx)`` for ``GET /api/settings`` and the settings page;
- ``raise_incident`` / ``resolve_incident`` / ``open_incidents`` (``system``): incidents of
  fastflow itself (archive integrity, disk pressure), announced like the others.
"""

from fastflow.notify import models as models  # registers the tables on Base.metadata
from fastflow.notify.delivery import CLI_WAIT_S, ChannelResult, Delivery, cli_wait
from fastflow.notify.dispatch import (
    after_pass,
    last_results,
    send_test,
    without_database,
)
from fastflow.notify.incidents import Kind
from fastflow.notify.retry import DeliveryOptions
from fastflow.notify.runs import after_run, open_run_incidents
from fastflow.notify.system import open_incidents, raise_incident, resolve_incident

__all__ = [
    "CLI_WAIT_S",
    "ChannelResult",
    "Delivery",
    "DeliveryOptions",
    "Kind",
    "after_pass",
    "after_run",
    "cli_wait",
    "last_results",
    "open_incidents",
    "open_run_incidents",
    "raise_incident",
    "resolve_incident",
    "send_test",
    "without_database",
]
