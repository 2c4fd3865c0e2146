"""The words of a run notification: subject, plain text and HTML e-mail, and the Teams card.

Pure functions of a ``RunNotice``. Bounded: at most ``MAX_LOG_LINES`` lines of the log,
each cut to ``MAX_LOG_LINE_CHARS`` and cleaned of terminal escape sequences, so that a
card stays far below the ~28 KB that Teams accepts.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastflow.notify.incidents import Kind
from fastflow.notify.messages import SUBJECT_PREFIX, Message, adaptive_card_message, when

MAX_LOG_LINES = 20
MAX_LOG_LINE_CHARS = 400
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")  # terminal colours, cursor moves
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class RunNotice:
    """Everything a run message says; built by ``notify.runs`` from a run and its incident.

    ``since`` and ``failures`` describe the incident (opened at, failed runs so far);
    ``log_lines`` are already free of secrets, ``log_note`` says why there are none.
    """

    kind: Kind
    at: datetime
    base_url: str
    pipeline: str
    run_id: str
    status: str
    exit_code: int | None = None
    attempt: int = 1
    started_at: datetime | None = None
    finished_at: datetime | None = None
    since: datetime | None = None
    failures: int = 1
    log_lines: tuple[str, ...] = ()
    log_note: str | None = None

    @property
    def run_url(self) -> str:
        return f"{self.base_url}/runs/{self.run_id}"

    @property
    def recovered(self) -> bool:
        return self.kind == Kind.RUN_RECOVERY


def tail_lines(text: str, *, partial_first: bool) -> tuple[str, ...]:
    """The last ``MAX_LOG_LINES`` non-empty lines of ``text`` (a log's tail), cleaned and cut;
    ``partial_first``: the tail starts in the middle of a line, which is dropped — unless
    it is the only one (a last line longer than the tail): then its end is shown, after
    an ``…``."""
    lines = text.splitlines()
    only_part = partial_first and len(lines) == 1
    if partial_first and not only_part:
        lines = lines[1:]
    cleaned = [_CONTROL.sub("", _ANSI.sub("", line)).rstrip() for line in lines]
    kept = [line for line in cleaned if line][-MAX_LOG_LINES:]
    if only_part and kept:
        return ("…" + kept[0][-(MAX_LOG_LINE_CHARS - 1) :],)
    return tuple(
        line if len(line) <= MAX_LOG_LINE_CHARS else line[: MAX_LOG_LINE_CHARS - 1] + "…"
        for line in kept
    )


def duration(start: datetime | None, end: datetime | None) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min`` (``-`` when unknown)."""
    if start is None or end is None:
        return "-"
    total = max(0, round((end - start).total_seconds()))
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def _failed(n: int) -> str:
    return f"{n} failed run" if n == 1 else f"{n} failed runs"


# --- headline and paragraphs -------------------------------------------------------------


def headline(n: RunNotice) -> str:
    """One line: the subject without the prefix, and the card's title."""
    if n.recovered:
        return f"pipeline {n.pipeline} recovered"
    if n.kind == Kind.RUN_REMINDER:
        return f"pipeline {n.pipeline} still failing since {when(n.since)} ({_failed(n.failures)})"
    verb = "timed out" if n.status == "TIMEOUT" else "failed"
    return f"pipeline {n.pipeline} {verb} (run {n.run_id[:8]})"


def subject(n: RunNotice) -> str:
    return f"{SUBJECT_PREFIX} {headline(n)}"


def title(n: RunNotice) -> str:
    """The headline as a title (the card's, the HTML part's): ``Pipeline etl failed …``."""
    line = headline(n)
    return line[:1].upper() + line[1:]


def _intro(n: RunNotice) -> list[str]:
    ended = when(n.finished_at or n.at)
    if n.recovered:
        return [
            f"Pipeline {n.pipeline} succeeds again: run {n.run_id} succeeded at {ended}.",
            f"It had been failing since {when(n.since)} ({_failed(n.failures)}).",
        ]
    if n.kind == Kind.RUN_REMINDER:
        return [
            f"Pipeline {n.pipeline} is still failing: {_failed(n.failures)} since {when(n.since)}.",
            f"The latest, run {n.run_id}, ended {n.status} at {ended}.",
        ]
    return [
        f"Run {n.run_id} of pipeline {n.pipeline} ended {n.status} at {ended}.",
        "Further failures of this pipeline are not announced one by one: a reminder follows "
        "while it keeps failing, and one message when it succeeds again.",
    ]


def facts(n: RunNotice) -> list[tuple[str, str]]:
    """The run (and, after the first message, the incident) as title/value pairs."""
    out = [
        ("Pipeline", n.pipeline),
        ("Run", n.run_id),
        ("Status", n.status),
        ("Exit code", "-" if n.exit_code is None else str(n.exit_code)),
        ("Attempts", str(n.attempt)),
        ("Duration", duration(n.started_at, n.finished_at)),
        ("Started", when(n.started_at)),
    ]
    if n.kind != Kind.RUN_FAILURE:
        out += [("Failing since", when(n.since)), ("Failed runs", str(n.failures))]
    return out


def _log_title(n: RunNotice) -> str:
    if not n.log_lines:
        return f"Log: {n.log_note or 'the log is empty'}"
    return f"Last {len(n.log_lines)} lines of the log:"


# --- e-mail ---------------------------------------------------------------------------------


def email_text(n: RunNotice) -> str:
    lines: list[str] = []
    for paragraph in _intro(n):
        lines += [paragraph, ""]
    width = max(len(title) for title, _ in facts(n)) + 1
    lines += [f"{title + ':':<{width}} {value}" for title, value in facts(n)]
    lines.append("")
    if not n.recovered:
        lines.append(_log_title(n))
        lines += [f"    {line}" for line in n.log_lines]
        lines.append("")
    lines.append(f"Open the run: {n.run_url}")
    lines += ["", "-- ", "fastflow"]
    return "\n".join(lines) + "\n"


def email_html(n: RunNotice) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><body style="font-family: sans-serif; font-size: 14px; color: #1f2328">',
        f'<h2 style="font-size: 18px">{e(title(n))}</h2>',
    ]
    parts += [f"<p>{e(p)}</p>" for p in _intro(n)]
    parts.append('<table cellpadding="4" style="border-collapse: collapse">')
    parts += [
        f'<tr><th style="text-align: left">{e(title)}</th><td>{e(value)}</td></tr>'
        for title, value in facts(n)
    ]
    parts.append("</table>")
    if not n.recovered:
        parts.append(f"<p>{e(_log_title(n))}</p>")
        if n.log_lines:
            parts.append(
                '<pre style="background: #f6f8fa; padding: 8px; white-space: pre-wrap">'
                + e("\n".join(n.log_lines))
                + "</pre>"
            )
    parts.append(f'<p><a href="{e(n.run_url)}">Open the run</a></p></body></html>')
    return "\n".join(parts) + "\n"


# --- Teams ----------------------------------------------------------------------------------


def _card_log(n: RunNotice) -> list[dict[str, Any]]:
    """The log's last lines, one monospace ``RichTextBlock`` each (no Markdown in runs)."""
    title = {"type": "TextBlock", "text": _log_title(n), "weight": "Bolder", "wrap": True}
    if not n.log_lines:
        return [title]
    rows = [
        {
            "type": "RichTextBlock",
            "spacing": "None",
            "inlines": [
                {"type": "TextRun", "text": line, "fontType": "Monospace", "size": "Small"}
            ],
        }
        for line in n.log_lines
    ]
    return [title, {"type": "Container", "style": "emphasis", "items": rows}]


def teams_card(n: RunNotice) -> dict[str, Any]:
    """A Teams message with one Adaptive Card (renders in Teams Workflows webhooks)."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": title(n),
            "weight": "Bolder",
            "size": "Medium",
            "style": "heading",
            "color": "Good" if n.recovered else "Attention",
            "wrap": True,
        }
    ]
    body += [{"type": "TextBlock", "text": p, "wrap": True} for p in _intro(n)]
    body.append(
        {"type": "FactSet", "facts": [{"title": t, "value": v} for t, v in facts(n)]},
    )
    if not n.recovered:
        body += _card_log(n)
    return adaptive_card_message(body, "Open run", n.run_url)


def render(n: RunNotice) -> Message:
    """Every channel's words for ``n``."""
    return Message(n.kind, n.at, subject(n), email_text(n), email_html(n), teams_card(n))
