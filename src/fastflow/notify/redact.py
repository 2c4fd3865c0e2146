"""Keep secrets out of every text the notifier logs, records or sends.

Secrets: every field in ``config.SECRET_FIELDS`` (SMTP password, S3 keys, ...) and the
token parts of the Teams webhook URL
(its path after the first segment and its query string, e.g. the ``sig`` of a Teams
Workflows URL).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from pydantic import SecretStr

from fastflow.config import SECRET_FIELDS, Settings

MASK = "***"
_MIN_SECRET_LEN = 4  # shorter values would mangle ordinary words and are not credentials
_MIN_TOKEN_LEN = 6


def mask_url(url: str) -> str:
    """``scheme://host[:port]/first-segment/***``: enough to recognise, never the token."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}" + (f":{port}" if port else "")
    segments = [s for s in parts.path.split("/") if s]
    if segments:
        shown += "/" + segments[0]
    if len(segments) > 1 or parts.query or parts.fragment:
        shown += "/" + MASK
    return shown


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that must not be shown: the URL itself and its token parts."""
    out = [url]
    try:
        parts = urlsplit(url)
    except ValueError:
        return out
    segments = [s for s in parts.path.split("/") if s]
    out.extend(s for s in segments[1:] if len(s) >= _MIN_TOKEN_LEN)
    out.extend(v for _, v in parse_qsl(parts.query) if len(v) >= _MIN_TOKEN_LEN)
    if parts.query and len(parts.query) >= _MIN_TOKEN_LEN:
        out.append(parts.query)
    return out


def redact(text: str, settings: Settings) -> str:
    """``text`` with every secret of ``settings`` replaced by ``***``."""
    if settings.teams_webhook_url is not None:
        url = settings.teams_webhook_url.get_secret_value()
        text = text.replace(url, mask_url(url))
        for part in sorted(url_secrets(url)[1:], key=len, reverse=True):
            text = text.replace(part, MASK)
    for name in sorted(SECRET_FIELDS):
        secret = getattr(settings, name, None)
        value = secret.get_secret_value() if isinstance(secret, SecretStr) else None
        if value and len(value) >= _MIN_SECRET_LEN:
            text = text.replace(value, MASK)
    return text
