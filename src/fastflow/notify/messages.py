"""The words of a notification: e-mail subject, plain text and HTML, and the Teams card.

Pure functions of a ``Notice``. Every list is bounded (``MAX_LISTED_RUNS`` in e-mails,
``MAX_CARD_RUNS`` on the card, which Teams limits to about 28 KB) and every error text is
cut to a bounded length, so that a pass with thousands of failures still makes one
reasonable message.
"""

from __future__ import annotations

import dataclasses
import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastflow.notify.incidents import Kind

MAX_LISTED_RUNS = 50
MAX_CARD_RUNS = 10
MAX_ERROR_CHARS = 500
MAX_CARD_ERROR_CHARS = 300
SUBJECT_PREFIX = "[fastflow]"


@dataclass(frozen=True)
class Message:
    """A notification in its final words, as the channels send it."""

    kind: Kind
    at: datetime
    subject: str
    text: str
    html: str
    card: dict[str, Any]


# controls a reader does not see but that change what is shown: C0 (but tab and line
# ends), DEL, C1, and the bidirectional embeddings, overrides and isolates (U+202E shows
# "exe.txt" as "txt.exe")
_HIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return _HIDDEN.sub("", value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def cleaned(message: Message) -> Message:
    """``message`` without hidden controls anywhere (its subject, texts and card): a
    pipeline's log line, a failure reason or a server's error text cannot make a message
    read otherwise than it says."""
    return dataclasses.replace(
        message,
        subject=_plain(message.subject),
        text=_plain(message.text),
        html=_plain(message.html),
        card=_plain(message.card),
    )


@dataclass(frozen=True)
class FailedRun:
    run_id: str
    pipeline_name: str
    started_at: str | None  # ISO 8601
    error: str
    new: bool = False


@dataclass(frozen=True)
class Notice:
    """Everything a message says; built by ``dispatch`` from a pass and its incident.

    ``runs`` may be shorter than ``total_runs`` (the pass lists at most 200 failures).
    """

    kind: Kind
    at: datetime
    base_url: str
    runs: tuple[FailedRun, ...] = ()
    total_runs: int = 0
    pass_errors: tuple[str, ...] = ()
    new_runs: int = 0
    since: datetime | None = None
    skipped_runs: int = 0
    archived_runs: int = 0
    incident_runs: int = 0
    recovered_runs: int = 0

    def run_url(self, run_id: str) -> str:
        return f"{self.base_url}/runs/{run_id}"

    @property
    def settings_url(self) -> str:
        return f"{self.base_url}/settings"


def when(value: datetime | str | None) -> str:
    """``2026-06-01 02:00 UTC`` (strings are parsed as ISO 8601; unparsable ones shown)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        value = parsed
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


# --- headline and subject ----------------------------------------------------------------


def headline(n: Notice) -> str:
    """One line: the subject without the prefix, and the card's title."""
    if n.kind == Kind.TEST:
        return "Test notification"
    if n.kind == Kind.RECOVERY:
        return f"S3 log backup works again: {_runs(n.archived_runs)} archived"
    what = _runs(n.total_runs) if n.total_runs else _cut(n.pass_errors[0], 80)
    if n.kind == Kind.REMINDER:
        return f"S3 log backup still failing since {when(n.since)}: {what}"
    if n.kind == Kind.GROWN:
        return f"S3 log backup failed: {what} ({n.new_runs} new)"
    return f"S3 log backup failed: {what}"


def subject(n: Notice) -> str:
    return f"{SUBJECT_PREFIX} {headline(n)}"


def _intro(n: Notice) -> list[str]:
    """The opening paragraphs, plain text (the HTML part escapes the same sentences)."""
    at = when(n.at)
    if n.kind == Kind.TEST:
        return [
            f"This is a test message from fastflow ({n.base_url}), sent at {at}.",
            "If you can read it, notifications on this channel work.",
        ]
    if n.kind == Kind.RECOVERY:
        recovered = [
            f"Backups succeed again; {_runs(n.archived_runs)} archived in the cleanup pass at {at}."
        ]
        if n.since is not None:
            recovered.append(
                f"Backups had been failing since {when(n.since)}; of the {_runs(n.incident_runs)} "
                f"that failed meanwhile, {n.recovered_runs} are archived now."
            )
        return recovered
    text: list[str] = []
    if n.kind == Kind.REMINDER:
        text.append(f"Still failing since {when(n.since)}.")
    elif n.kind == Kind.GROWN:
        text.append(
            f"More runs fail: {n.new_runs} new since the last message "
            f"(failing since {when(n.since)})."
        )
    if n.total_runs:
        them = "this run: its logs stay" if n.total_runs == 1 else "these runs: their logs stay"
        text.append(
            f"fastflow could not archive the logs of {_runs(n.total_runs)} to S3 in the "
            f"cleanup pass at {at}. Nothing was deleted for {them} on local disk, and the "
            "next cleanup pass tries again."
        )
    for error in n.pass_errors:
        text.append(f"The cleanup pass at {at} could not archive anything: {_cut(error, 300)}")
    if n.skipped_runs:
        text.append(
            f"{_runs(n.skipped_runs)} more waiting for an archive were skipped in this pass "
            "and stay on local disk."
        )
    return text


def _listed(n: Notice, limit: int) -> tuple[list[FailedRun], int]:
    ordered = sorted(n.runs, key=lambda r: (not r.new, r.pipeline_name, r.started_at or ""))
    shown = ordered[:limit]
    return shown, max(0, n.total_runs - len(shown))


# --- e-mail ---------------------------------------------------------------------------------


def email_text(n: Notice) -> str:
    lines: list[str] = []
    for paragraph in _intro(n):
        lines += [paragraph, ""]
    if n.kind not in (Kind.TEST, Kind.RECOVERY) and n.runs:
        shown, more = _listed(n, MAX_LISTED_RUNS)
        for i, run in enumerate(shown, 1):
            mark = " [new]" if run.new and n.kind == Kind.GROWN else ""
            lines.append(
                f"{i}. {run.pipeline_name} / run {run.run_id}{mark} "
                f"(started {when(run.started_at)})"
            )
            lines.append(f"   error: {_cut(run.error, MAX_ERROR_CHARS)}")
            lines.append(f"   {n.run_url(run.run_id)}")
        if more:
            lines.append(f"and {more} more")
        lines.append("")
    lines.append(f"Settings and all backup failures: {n.settings_url}")
    lines += ["", "-- ", "fastflow"]
    return "\n".join(lines) + "\n"


def email_html(n: Notice) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><body style="font-family: sans-serif; font-size: 14px; color: #1f2328">',
        f'<h2 style="font-size: 18px">{e(headline(n))}</h2>',
    ]
    parts += [f"<p>{e(p)}</p>" for p in _intro(n)]
    if n.kind not in (Kind.TEST, Kind.RECOVERY) and n.runs:
        shown, more = _listed(n, MAX_LISTED_RUNS)
        parts.append(
            '<table cellpadding="6" style="border-collapse: collapse; border: 1px solid #d0d7de">'
            '<tr style="background: #f6f8fa; text-align: left">'
            "<th>Pipeline</th><th>Run</th><th>Started</th><th>Error</th></tr>"
        )
        for run in shown:
            new = " <b>(new)</b>" if run.new and n.kind == Kind.GROWN else ""
            parts.append(
                '<tr style="border-top: 1px solid #d0d7de; vertical-align: top">'
                f"<td>{e(run.pipeline_name)}</td>"
                f'<td><a href="{e(n.run_url(run.run_id))}">{e(run.run_id)}</a>{new}</td>'
                f"<td>{e(when(run.started_at))}</td>"
                f"<td>{e(_cut(run.error, MAX_ERROR_CHARS))}</td></tr>"
            )
        parts.append("</table>")
        if more:
            parts.append(f"<p>and {more} more</p>")
    parts.append(
        f'<p><a href="{e(n.settings_url)}">Settings and all backup failures</a></p></body></html>'
    )
    return "\n".join(parts) + "\n"


# --- Teams ----------------------------------------------------------------------------------


def _card_heading(n: Notice) -> dict[str, Any]:
    return {
        "type": "TextBlock",
        "text": headline(n),
        "weight": "Bolder",
        "size": "Medium",
        "style": "heading",
        "color": "Good" if n.kind in (Kind.RECOVERY, Kind.TEST) else "Attention",
        "wrap": True,
    }


def _card_run(n: Notice, run: FailedRun) -> dict[str, Any]:
    """One failed run: its facts and a button that opens it."""
    facts = [
        {"title": "Pipeline", "value": run.pipeline_name},
        {
            "title": "Run",
            "value": run.run_id + (" (new)" if run.new and n.kind == Kind.GROWN else ""),
        },
        {"title": "Started", "value": when(run.started_at)},
        {"title": "Error", "value": _cut(run.error, MAX_CARD_ERROR_CHARS)},
    ]
    open_run = {"type": "Action.OpenUrl", "title": "Open run", "url": n.run_url(run.run_id)}
    return {
        "type": "Container",
        "separator": True,
        "items": [
            {"type": "FactSet", "facts": facts},
            {"type": "ActionSet", "actions": [open_run]},
        ],
    }


def _card_recovery(n: Notice) -> dict[str, Any]:
    assert n.since is not None
    return {
        "type": "FactSet",
        "facts": [
            {"title": "Failing since", "value": when(n.since)},
            {"title": "Runs that failed", "value": str(n.incident_runs)},
            {"title": "Archived now", "value": str(n.recovered_runs)},
            {"title": "Archived in this pass", "value": str(n.archived_runs)},
        ],
    }


def _card_body(n: Notice) -> list[dict[str, Any]]:
    body = [_card_heading(n)]
    body += [{"type": "TextBlock", "text": p, "wrap": True} for p in _intro(n)]
    if n.kind not in (Kind.TEST, Kind.RECOVERY):
        shown, more = _listed(n, MAX_CARD_RUNS)
        body += [_card_run(n, run) for run in shown]
        if more:
            body.append({"type": "TextBlock", "text": f"and {more} more", "wrap": True})
    elif n.kind == Kind.RECOVERY and n.since is not None:
        body.append(_card_recovery(n))
    return body


def teams_card(n: Notice) -> dict[str, Any]:
    """A Teams message with one Adaptive Card (renders in Teams Workflows webhooks)."""
    return adaptive_card_message(_card_body(n), "Open settings", n.settings_url)


def adaptive_card_message(body: list[dict[str, Any]], title: str, url: str) -> dict[str, Any]:
    """The Teams message around one Adaptive Card with ``body`` and one link button."""
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": body,
        "actions": [{"type": "Action.OpenUrl", "title": title, "url": url}],
    }
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def render(n: Notice) -> Message:
    """Every channel's words for ``n``."""
    return Message(n.kind, n.at, subject(n), email_text(n), email_html(n), teams_card(n))
