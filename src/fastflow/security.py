"""Password hashing, token hashing and encryption of stored secrets.

Guarantees: passwords are stored as argon2 hashes; API tokens and session ids only as
SHA-256 (they are 256-bit random, so a fast hash is enough); secrets saved in the database
are encrypted (Fernet) with ``FASTFLOW_SECRET_KEY`` or, when unset, a key generated once
into ``DATA_DIR/secret.key`` (mode 0600).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken

from fastflow.config import Settings
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
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
        return Fernet(path.read_bytes().strip())
    except FileExistsError:
        return Fernet(path.read_bytes().strip())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot use the secret key file {path}: {e}") from e


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
