"""Tables of the notifier: the open/closed incidents and every delivery to a channel.

Imported by ``fastflow.notify`` (and by the migration environment) so that the tables are
part of ``fastflow.models.Base.metadata``; ``fastflow.models`` never imports this module.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fastflow.db.models import Base, UTCDateTime, utcnow


class NotificationIncident(Base):
    """One run of consecutive failing cleanup passes (at most one such row is open), or of
    consecutive failing runs of one pipeline (at most one open row per pipeline).

    Backups: ``known_keys`` holds every failing run id (``"pass"`` for a failure of the
    whole pass) seen while the incident lasts, ``failing_keys`` those of the latest pass
    (JSON arrays). Runs: ``known_keys`` is exactly ``["run:<pipeline>"]`` and
    ``failing_keys`` a JSON object ``{"failures", "status", "runs"}`` (``notify.records``).
    """

    __tablename__ = "notification_incidents"
    __table_args__ = (Index("ix_notification_incidents_closed", "closed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_announced_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_pass_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    known_keys: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    failing_keys: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    announcements: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class NotificationDelivery(Base):
    """One notification sent (or tried) on one channel; bounded to the newest rows.

    ``ok`` is NULL while the delivery is in progress. ``error`` never holds a secret.
    """

    __tablename__ = "notification_deliveries"
    __table_args__ = (Index("ix_notification_deliveries_channel", "channel", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    subject: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    incident_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pass_id: Mapped[int | None] = mapped_column(Integer, nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "channel": self.channel,
            "subject": self.subject,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "ok": self.ok,
            "error": self.error,
            "attempts": self.attempts,
            "incident_id": self.incident_id,
            "pass_id": self.pass_id,
        }
