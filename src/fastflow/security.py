"""Password hashing, token hashing, encryption of stored secrets, and the one redactor.

Guarantees: passwords are stored as argon2 hashes; API tokens and session ids only as
SHA-256 (they are 256-bit random, so a fast hash is enough); secrets saved in the database
are encrypted (Fernet) with ``FASTFLOW_SECRET_KEY`` or, when unset, a key generated once
into ``DATA_DIR/secret.key`` (mode 0600). ``redact`` is the one way secrets are kept out
of text fastflow shows or stores: API errors, CLI errors, notifications, pass records and
log records (every field in ``config.SECRET_FIELDS`` and the token parts of the Teams
webhook URL become ``***``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr

from fastflow.config import SECRET_FIELDS, Settings
from fastflow.errors import ConfigError

_hasher = PasswordHasher()
TOKEN_PREFIX = "ff_"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    """A new API token: ``ff_`` + 43 URL-safe characters (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _key_file(settings: Settings) -> Path:
    return settings.data_dir.expanduser().resolve() / "secret.key"


def fernet(settings: Settings) -> Fernet:
    """The cipher for stored secrets (creating the key file on first use)."""
    if settings.fastflow_secret_key is not None:
        raw = settings.fastflow_secret_key.get_secret_value().encode("utf-8")
        return Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest()))
    path = _key_file(settings)
    try:
        if not path.exists():
            _create_key_file(path)
        return Fernet(path.read_bytes().strip())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot use the secret key file {path}: {e}") from e


def own_secrets(settings: Settings) -> list[str]:
    """fastflow's own secrets as text — the secret store's key (``FASTFLOW_SECRET_KEY`` or
    the key file's content, when it exists) and every secret setting — for masking what a
    run's build or process prints: a pipeline may make a tool print a file it cannot
    read itself (an error quoting ``-r DATA_DIR/secret.key``)."""
    out: list[str] = []
    for name in sorted(SECRET_FIELDS):
        secret = getattr(settings, name, None)
        value = secret.get_secret_value() if isinstance(secret, SecretStr) else None
        if value and len(value) >= _MIN_SECRET_LEN:
            out.append(value)
    try:
        key = _key_file(settings).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        key = ""
    if len(key) >= _MIN_SECRET_LEN:
        out.append(key)
    out.extend(uv_credentials(os.environ))
    return out


def uv_credentials(environ: Mapping[str, str]) -> list[str]:
    """Credentials in uv's settings (passed to every environment build, and so to the
    build backends it runs): the values of ``UV_*`` variables named like a password or
    token, and the user-info password of ``UV_*`` index URLs."""
    out: list[str] = []
    for name, value in environ.items():
        if not name.startswith("UV_") or not value:
            continue
        if any(word in name for word in ("PASSWORD", "TOKEN", "SECRET")):
            if len(value) >= _MIN_SECRET_LEN:
                out.append(value)
            continue
        for part in value.split():
            if "://" in part and "@" in part:
                try:
                    password = urlsplit(part).password
                except ValueError:
                    continue
                if password and len(password) >= _MIN_SECRET_LEN:
                    out.append(password)
                    out.append(unquote(password))
    return out


def _create_key_file(path: Path) -> None:
    """Write a new key to a private temporary file and link it into place: a concurrent
    reader sees no file or a whole key, never an empty one; the first writer wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)


def encrypt(settings: Settings, value: str) -> str:
    return fernet(settings).encrypt(value.encode("utf-8")).decode("ascii")


def decrypt(settings: Settings, value: str) -> str:
    try:
        return fernet(settings).decrypt(value.encode("ascii")).decode("utf-8")
    except InvalidToken as e:
        raise ConfigError(
            "a stored secret cannot be decrypted: FASTFLOW_SECRET_KEY or DATA_DIR/secret.key "
            "changed since it was saved; enter the secret again in the settings"
        ) from e


# --- redaction ----------------------------------------------------------------------

MASK = "***"
_MIN_SECRET_LEN = 4  # shorter values would mangle ordinary words and are not credentials
_MIN_TOKEN_LEN = 6
_PCHAR = "!$&'()*+,;=:@-._~%"  # what a URL path keeps unencoded (RFC 3986), and "%"


def mask_url(url: str) -> str:
    """``scheme://host[:port]/first-segment/***``: enough to recognise, never the token.
    The first path segment is shown only when it reads as a fixed word of the service
    (``webhookb2``, ``workflows``) and more follows; otherwise it is masked too."""
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
    first = _shown_segment(segments)
    if first is not None:
        shown += "/" + first
    if len(segments) > (first is not None) or parts.query or parts.fragment:
        shown += "/" + MASK
    return shown


_WORD_SEGMENT = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,15}")


def _shown_segment(segments: list[str]) -> str | None:
    """The first path segment when ``mask_url`` may show it: not the last one, a short
    word with at most two digits — not a token."""
    if len(segments) < 2:
        return None
    first = segments[0]
    if not _WORD_SEGMENT.fullmatch(first) or sum(c.isdigit() for c in first) > 2:
        return None
    return first


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that must not be shown: the URL itself and its token parts
    (every path segment but a first one ``mask_url`` shows)."""
    out = [url]
    try:
        parts = urlsplit(url)
    except ValueError:
        return out
    segments = [s for s in parts.path.split("/") if s]
    hidden = segments[1:] if _shown_segment(segments) is not None else segments
    out.extend(s for s in hidden if len(s) >= _MIN_TOKEN_LEN)
    out.extend(v for _, v in parse_qsl(parts.query) if len(v) >= _MIN_TOKEN_LEN)
    if parts.query and len(parts.query) >= _MIN_TOKEN_LEN:
        out.append(parts.query)
    return out


# fastflow's own credentials by their form: an API token (``ff_`` + 43 characters of
# ``token_urlsafe(32)``) or a webhook key (``ffwh_`` + the same), wherever they appear —
# a webhook key in the path of ``/api/webhooks/{pipeline}/{key}`` reached the access log
# a token or key of fastflow's form (43 characters after the prefix) — and anything close
# to one: a few characters more or less (a mistyped or cut credential still gives the real
# one away). A percent-encoded one is found in the line's decoded form (``redact``), which
# tests for the endings ``f_ h_ F_ H_`` before it runs the regex.
# Its start: no token character before it — or one that ends a percent-encoded or
# backslash-escaped separator (``%20``, ``%2F``: kept encoded; ``\n`` in a repr).
_START = r"(?:(?<![A-Za-z0-9_-])|(?<=%[0-9A-Fa-f]{2})|(?<=\\[nrt]))"
_OWN_CREDENTIAL = re.compile(
    rf"{_START}(ff(?:wh)?_)[A-Za-z0-9_-]{{40,}}(?![A-Za-z0-9_-])", re.IGNORECASE
)
# the key segment of Fast-Flow's ``/api/webhooks/{pipeline}/{key}``, whatever its form (a
# ``webhook_key`` from pipeline.json is any text, percent-encoded or not)
_WEBHOOK_PATH_KEY = re.compile(r"(/api/webhooks/[^/\s?#\"]+/)[^/\s?#\"]+")


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_KEPT_ENCODED = frozenset('/?#"')  # (and space): they end a path segment or a log field


def _printable_decoded(text: str) -> str:
    """``text`` with each percent-encoded printable ASCII character decoded, up to three
    times over (a double-encoded path too); other escapes (controls, UTF-8 bytes, space
    and ``_KEPT_ENCODED``) stay as they are, so decoding never puts a line break into a
    log line nor splits a path segment."""

    def one(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        return char if 0x20 < ord(char) < 0x7F and char not in _KEPT_ENCODED else m.group(0)

    for _ in range(3):
        decoded = _PERCENT.sub(one, text)
        if decoded == text:
            break
        text = decoded
    return text


def redact(text: str, settings: Settings) -> str:
    """``text`` with every secret of ``settings``, and every API token or webhook key of
    fastflow's form, replaced by ``***`` (a token keeps its ``ff_``/``ffwh_``). A text
    whose percent-decoded form gives one away is shown decoded and masked: the server
    routes ``/api/%77ebhooks/p/ffwh%5F…`` as the plain path (an outside audit found such
    keys in the access log in clear)."""
    if "%" in text:
        decoded = _printable_decoded(text)
        if decoded != text and _redact(decoded, settings) != decoded:
            text = decoded
    return _redact(text, settings)


def _redact(text: str, settings: Settings) -> str:
    if "f_" in text or "h_" in text or "F_" in text or "H_" in text:
        text = _OWN_CREDENTIAL.sub(lambda m: m.group(1) + MASK, text)
    if "/api/webhooks/" in text:
        # (a key of fastflow's form is ``ffwh_***`` by now, and stays so)
        text = _WEBHOOK_PATH_KEY.sub(
            lambda m: m.group(0) if m.group(0).endswith(MASK) else m.group(1) + MASK, text
        )
    if settings.teams_webhook_url is not None:
        url = settings.teams_webhook_url.get_secret_value()
        text = text.replace(url, mask_url(url))
        parts = set(url_secrets(url)[1:])
        # as an HTTP client logs them too: percent-encoded (a space, a non-ASCII letter)
        parts |= {quote(p, safe=_PCHAR) for p in parts}
        for part in sorted(parts, key=len, reverse=True):
            text = text.replace(part, MASK)
    for name in sorted(SECRET_FIELDS):
        secret = getattr(settings, name, None)
        value = secret.get_secret_value() if isinstance(secret, SecretStr) else None
        if value and len(value) >= _MIN_SECRET_LEN:
            text = text.replace(value, MASK)
    return text


_FOLDER_SETTINGS = ("pipelines_dir", "logs_dir", "data_dir")


def without_paths(text: str, settings: Settings) -> str:
    """``text`` with the server's own folders named by their settings (``PIPELINES_DIR/x``
    for ``/srv/fastflow/pipelines/x``, as written and resolved): error text an API client
    or a web page shows never tells where the server keeps its files. A longer folder is
    replaced first (``DATA_DIR`` inside ``LOGS_DIR`` stays ``DATA_DIR``); only whole path
    components match (``/srv/logs2`` is not ``LOGS_DIR2``)."""
    return path_masker(settings)(text)


def path_masker(settings: Settings) -> Callable[[str], str]:
    """``without_paths`` for many texts: the folders are resolved once."""
    names: dict[str, str] = {}
    for field in _FOLDER_SETTINGS:
        folder = getattr(settings, field, None)
        if not isinstance(folder, Path):
            continue
        forms = {str(folder.expanduser())}
        try:
            forms.add(str(folder.expanduser().resolve()))
        except (OSError, RuntimeError):
            pass
        for form in forms:
            form = form.rstrip("/")
            if form.startswith("/") and len(form) > 1:
                names.setdefault(form, field.upper())
    if not names:
        return lambda text: text
    ordered = sorted(names, key=len, reverse=True)
    pattern = re.compile(
        "(?:" + "|".join(re.escape(form) for form in ordered) + ")"
        r"(?![^/\s'\"(),:;\]\[{}<>`])"
    )
    return lambda text: pattern.sub(lambda m: names[m.group(0)], text)


def public_text(text: str, settings: Settings) -> str:
    """What a client may read of an error: secrets masked (``redact``), the server's
    folders named by their settings (``without_paths``)."""
    return without_paths(redact(text, settings), settings)


_log_settings: list[Settings] = []


def redact_current(text: str) -> str:
    """``redact`` with the settings this process bootstrapped with (unchanged text before
    any bootstrap: then no secret was loaded either)."""
    return redact(text, _log_settings[-1]) if _log_settings else text


def install_log_redaction(settings: Settings) -> None:
    """Redact every log record created from now on in this process, whichever logger
    (fastflow's, uvicorn's, botocore's) creates it; the latest settings apply. A record
    keeps the shape of its arguments where masking each of them is enough (uvicorn's
    access formatter unpacks them: replacing them lost the line and logged a traceback,
    an outside audit found); otherwise it becomes its masked message."""
    if not _log_settings:
        previous = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a malformed record stays as logging would show it
                return record
            settings = _log_settings[-1]
            clean = redact(message, settings)
            if clean == message:
                return record
            if isinstance(record.args, tuple) and isinstance(record.msg, str):
                masked = tuple(
                    redact(a, settings) if isinstance(a, str) else a for a in record.args
                )
                try:
                    enough = record.msg % masked == clean
                except Exception:
                    enough = False
                if enough:
                    record.args = masked
                    return record
            record.msg, record.args = clean, None
            return record

        logging.setLogRecordFactory(factory)
    _log_settings[:] = [settings]
