"""Notifications about backup failures and recovery: e-mail and Microsoft Teams.

Data flow: a committed ``PassSummary`` -> ``incidents.decide`` (pure: what to announce)
-> ``records`` (incident state, delivery record) -> ``messages`` (words) -> ``email`` /
``teams`` (best-effort transports) — wired by ``dispatch``. Entry points:

- ``after_pass(ctx, summary)`` after every cleanup pass (returns at once; never raises);
- ``send_test(ctx, email=..., teams=...)`` for ``fastflow notify test`` and the UI;
- ``last_results(ctx)`` for ``GET /api/settings`` and the settings page.
"""

from fastflow.notify import models as models  # registers the tables on Base.metadata
from fastflow.notify.dispatch import (
    CLI_WAIT_S,
    ChannelResult,
    Delivery,
    after_pass,
    last_results,
    send_test,
)
from fastflow.notify.incidents import Kind
from fastflow.notify.retry import DeliveryOptions

__all__ = [
    "CLI_WAIT_S",
    "ChannelResult",
    "Delivery",
    "DeliveryOptions",
    "Kind",
    "after_pass",
    "last_results",
    "send_test",
]
