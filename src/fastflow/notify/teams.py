"""Microsoft Teams: POST an Adaptive Card message to ``TEAMS_WEBHOOK_URL``.

Best-effort: ``post`` never raises. It retries on 429 and 5xx (honouring ``Retry-After``,
capped) and on network errors, up to ``options.attempts`` tries within the time budget;
at the budget's end the connection is shut, however slowly the server answers. An
answer's body is not read, except the first 4 KiB of an error answer for the debug log.
The URL must be https, except http on a loopback address (local testing), and never a
link-local or cloud metadata address. The webhook URL carries its credential in the path
and query, so it is only ever shown masked (``https://host/first-segment/***``) — in
errors, records and log lines, including httpx's own request log line. An error records
only a status and an error class (``HTTP 500``, ``timed out``, ``connection refused``),
never the remote server's answer: the delivery record is readable by viewers. The host's
name lookup is bounded by the budget too (unless a proxy is set: it looks the name up).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import urllib.request
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from fastflow.config import Settings, is_loopback_host, metadata_host_refusal
from fastflow.notify import retry
from fastflow.notify.retry import Budget, DeliveryOptions, Outcome
from fastflow.security import mask_url, redact

log = logging.getLogger("fastflow.notify.teams")

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_BODY_CHARS = 200
_MAX_BODY_BYTES = 4096  # of an error answer, read for the debug log; a 2xx body is not read


class _MaskWebhookUrls(logging.Filter):
    """Mask webhook URLs in httpx's ``HTTP Request: POST <url> ...`` INFO line."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._urls: set[str] = set()

    def add(self, url: str) -> None:
        with self._lock:
            self._urls.add(url)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, httpx.URL) and str(a) in self._urls for a in record.args
        ):
            record.args = tuple(
                mask_url(str(a)) if isinstance(a, httpx.URL) else a for a in record.args
            )
        return True


_httpx_filter = _MaskWebhookUrls()
logging.getLogger("httpx").addFilter(_httpx_filter)


def check_url(url: str) -> str | None:
    """None when ``url`` may be used; otherwise why not (the URL masked)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "TEAMS_WEBHOOK_URL is not a valid URL"
    if not host:
        return f"TEAMS_WEBHOOK_URL has no host: {mask_url(url)}"
    refusal = metadata_host_refusal(host)
    if refusal is not None:
        return f"TEAMS_WEBHOOK_URL {refusal}: {mask_url(url)}"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback(host):
        return None
    return (
        f"TEAMS_WEBHOOK_URL must use https (http only on a loopback address such as "
        f"127.0.0.1): {mask_url(url)}"
    )


is_loopback = is_loopback_host  # True for ``localhost``, 127.0.0.0/8 and ::1


def retry_after(value: str | None, now: datetime, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            date = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if date.tzinfo is None:
            date = date.replace(tzinfo=UTC)
        seconds = (date - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), cap)


def post(settings: Settings, card: dict[str, Any], options: DeliveryOptions) -> Outcome:
    """POST ``card``; success is any 2xx answer."""
    if settings.teams_webhook_url is None:
        return Outcome(False, "Teams is enabled but not configured: missing TEAMS_WEBHOOK_URL", 0)
    url = settings.teams_webhook_url.get_secret_value()
    refused = check_url(url)
    if refused is not None:
        return Outcome(False, redact(refused, settings), 0)
    _httpx_filter.add(url)
    where = f"Teams webhook {mask_url(url)}"
    body = json.dumps(card, ensure_ascii=False).encode("utf-8")
    budget = Budget(options)
    error = "not attempted"
    wait: float | None = None
    attempt = 0
    # no connection kept between attempts: each attempt's deadline watches the socket
    # it connects (a reused one would escape it)
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(follow_redirects=False, limits=limits) as client:
        while attempt < options.attempts:
            if attempt:
                pause = wait if wait is not None else options.pause_before(attempt + 1)
                if not budget.pause(pause):
                    error += "; gave up: delivery time budget spent"
                    break
            attempt += 1
            wait = None
            with retry.Deadline(budget) as deadline:
                lookup = _lookup_failure(url, deadline)
                if lookup is not None:
                    error = lookup
                    log.info("Teams attempt %d failed: %s", attempt, error)
                    if lookup == retry.BUDGET_SPENT:
                        break
                    continue
                try:
                    with client.stream(
                        "POST",
                        url,
                        content=body,
                        headers={"Content-Type": "application/json; charset=utf-8"},
                        timeout=httpx.Timeout(budget.timeout()),
                        extensions={"trace": _tracer(deadline)},
                    ) as response:
                        status = response.status_code
                        headers = response.headers
                        excerpt = _excerpt(response) if not 200 <= status < 300 else ""
                except httpx.HTTPError as e:
                    if deadline.spent():
                        error = retry.BUDGET_SPENT
                    elif isinstance(e, httpx.TimeoutException):
                        error = "timed out"
                    else:
                        error = _network_error(e)
                    log.info("Teams attempt %d failed: %s", attempt, redact(error, settings))
                    if deadline.spent():
                        break
                    continue
            if 200 <= status < 300:
                return Outcome(True, None, attempt)
            error = f"HTTP {status}"
            log.debug("Teams answered %s: %r", error, redact(excerpt, settings))
            if status not in _RETRY_STATUSES:
                return Outcome(False, redact(f"{where}: {error}", settings), attempt)
            wait = retry_after(
                headers.get("Retry-After"), datetime.now(UTC), options.max_retry_after_s
            )
            log.info("Teams attempt %d failed: %s", attempt, redact(error, settings))
    tries = "1 attempt" if attempt == 1 else f"{attempt} attempts"
    return Outcome(False, redact(f"{where}: {error} ({tries})", settings), attempt)


def _lookup_failure(url: str, deadline: retry.Deadline) -> str | None:
    """Why the webhook's host cannot be looked up within ``deadline`` (None: it can, or
    a proxy is set, which looks it up itself). httpx resolves without a bound of its
    own, and the resolver's timeouts, per name server, can outlast a delivery's budget:
    the name is resolved first in a thread given up at the deadline (httpx's own lookup
    that follows is then answered at once by any cache in between)."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return None  # (check_url refused such a URL before)
    if _through_proxy(parts.scheme, host):  # the proxy looks the name up
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        retry.addresses(host, port, deadline)
    except TimeoutError:
        return retry.BUDGET_SPENT
    except (OSError, ValueError):
        return "cannot resolve the host name"
    return None


def _through_proxy(scheme: str, host: str) -> bool:
    """Whether httpx sends a request to ``host`` through a proxy: one set for the URL's
    scheme (``HTTPS_PROXY``) or for all (``ALL_PROXY``), the host not in ``NO_PROXY``."""
    proxies = urllib.request.getproxies()
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(host)


def _tracer(deadline: retry.Deadline) -> Any:
    """httpcore's ``trace`` hook: the connection's socket is watched by ``deadline`` as
    soon as it is connected (a proxy's too)."""

    def trace(name: str, info: dict[str, Any]) -> None:
        if name.endswith(".connect_tcp.complete"):  # (``socks.…`` through a SOCKS proxy)
            sock = info["return_value"].get_extra_info("socket")
            if sock is not None:
                deadline.watch(sock)

    return trace


def _network_error(e: httpx.HTTPError) -> str:
    """The class of a network failure, in a few fixed words (no remote text)."""
    cause = e.__cause__ or e.__context__
    text = (str(cause or e) or "").lower()
    if "refused" in text:
        return "connection refused"
    if isinstance(cause, ssl.SSLError) or "ssl" in text or "certificate" in text:
        return "TLS error"
    if isinstance(cause, socket.gaierror) or "name or service" in text or "resolution" in text:
        return "cannot resolve the host name"
    if "reset" in text:
        return "connection reset"
    if isinstance(e, httpx.RemoteProtocolError):
        return "invalid HTTP answer"
    if isinstance(e, httpx.ConnectError):
        return "cannot connect"
    return f"network error ({type(e).__name__})"


def _excerpt(response: httpx.Response) -> str:
    """The start of an error answer, for the debug log only: at most
    ``_MAX_BODY_BYTES`` are read (an answer may be endless), the rest is dropped with
    the connection."""
    got = b""
    try:
        for chunk in response.iter_raw():
            got += chunk
            if len(got) >= _MAX_BODY_BYTES:
                break
    except httpx.HTTPError:
        pass
    text = got[:_MAX_BODY_BYTES].decode("utf-8", "replace")
    return " ".join(text.split())[:_MAX_BODY_CHARS]
