"""The archive interface: ``ArchiveStore`` (what the cleanup pass, the readers and the
audit need from any archive) and the values it returns. One implementation today,
``s3.S3Store``; the contract tests run against a real S3 server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    """An object the server confirmed. ``size``/``sha256`` describe the stored bytes; the
    ``original_*`` fields the local file (they differ only with compression)."""

    key: str
    size: int
    sha256: str
    original_size: int
    original_sha256: str
    encoding: str | None = None


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    metadata: dict[str, str]
    server_sha256: str | None = None  # hex; computed by the server (single-part uploads)
    etag: str | None = None  # without quotes, lower case
    keyed: bool = False  # SSE-KMS or SSE-C: the ETag is not an MD5 of the bytes


class ArchiveStore(Protocol):
    """What the cleanup pass and the readers need from an archive (one implementation:
    ``S3Store``; the contract tests run against a real S3 server)."""

    @property
    def bucket(self) -> str: ...

    @property
    def codec(self) -> str: ...

    def key_for(self, pipeline_name: str, run_id: str, filename: str) -> str: ...

    def put_verified(
        self, key: str, path: Path, metadata: dict[str, str], *, name: str | None = None
    ) -> StoredObject: ...

    def verify(self, key: str, size: int, sha256: str) -> bool:
        """Raise unless the object has this size and SHA-256; True when a check the
        server computed itself (an MD5 ETag) was compared as well."""
        ...

    def verify_copy_of(self, key: str, path: Path, size: int, sha256: str) -> None:
        """``verify`` of an uncompressed object that must hold exactly the bytes of the
        local file ``path``, with whatever the server computed of them (its MD5 ETag)
        compared too; raise unless it does."""
        ...

    def verify_content(
        self, key: str, encoding: str | None, original_size: int, original_sha256: str
    ) -> None:
        """Read the object back (decompressed) and raise unless it gives exactly the
        original bytes."""
        ...

    def ping(self) -> None: ...

    def begin_pass(self) -> None:
        """Forget what was learned about the server's answers before this pass: its
        first upload is confirmed by a HEAD again."""
        ...

    def abort_stale_uploads(self, started_before: datetime) -> int | None: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def open(self, key: str, start: int = 0) -> Iterator[bytes]: ...

    def open_original(
        self, key: str, encoding: str | None, size: int | None = None
    ) -> Iterator[bytes]: ...


def sha256_of(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file, streaming."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
