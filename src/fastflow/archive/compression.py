"""Optional compression of archived objects (``S3_COMPRESSION=none|gzip|zstd``).

Streaming both ways, bounded memory. gzip output is deterministic (mtime 0), so the same
log always gives the same object.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from fastflow.errors import ArchiveDamaged

CHUNK = 1024 * 1024
SUFFIX = {"none": "", "gzip": ".gz", "zstd": ".zst"}
ZSTD_LEVEL = 3
GZIP_LEVEL = 6


@dataclass(frozen=True)
class Compressed:
    original_size: int
    original_sha256: str
    stored_size: int
    stored_sha256: str


class _HashingSink:
    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def compress_file(src: Path, dst: Path, codec: str) -> Compressed:
    """Compress ``src`` into ``dst``; hashes of both sides are computed on the way."""
    orig = hashlib.sha256()
    orig_size = 0
    with src.open("rb") as fin, dst.open("wb") as raw:
        sink = _HashingSink(raw)
        if codec == "gzip":
            gz = gzip.GzipFile(
                fileobj=cast(BinaryIO, sink),
                mode="wb",
                compresslevel=GZIP_LEVEL,
                mtime=0,
                filename="",
            )
            while chunk := fin.read(CHUNK):
                orig.update(chunk)
                orig_size += len(chunk)
                gz.write(chunk)
            gz.close()
        elif codec == "zstd":
            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
            with cctx.stream_writer(cast(BinaryIO, sink), closefd=False) as zw:
                while chunk := fin.read(CHUNK):
                    orig.update(chunk)
                    orig_size += len(chunk)
                    zw.write(chunk)
        else:
            raise ValueError(f"unknown compression {codec!r}")
        sink.flush()
    return Compressed(orig_size, orig.hexdigest(), sink.size, sink.hash.hexdigest())


def decompress(
    chunks: Iterator[bytes], codec: str | None, name: str = "the archived object"
) -> Iterator[bytes]:
    """Decompress a stream of chunks (identity for ``none``/None). ``ArchiveDamaged``
    (naming ``name``) when the data is not valid for ``codec``, ends before its end, or
    goes on after it: a damaged object is never passed off as a complete log."""
    if not codec or codec == "none":
        yield from chunks
        return
    if codec == "gzip":
        d = zlib.decompressobj(wbits=31)
        try:
            for chunk in chunks:
                out = d.decompress(chunk)
                if out:
                    yield out
            tail = d.flush()
        except zlib.error as e:
            raise damaged(name, f"not valid gzip ({e})") from None
        if tail:
            yield tail
        _check_end(name, d.eof, d.unused_data)
        return
    if codec == "zstd":
        dz = zstandard.ZstdDecompressor().decompressobj()
        try:
            for chunk in chunks:
                out = dz.decompress(chunk)
                if out:
                    yield out
        except zstandard.ZstdError as e:
            raise damaged(name, f"not valid zstd ({e})") from None
        _check_end(name, dz.eof, dz.unused_data)
        return
    raise ValueError(f"unknown compression {codec!r}")


def _check_end(name: str, eof: bool, unused: bytes) -> None:
    if not eof:
        raise damaged(name, "it ends before its compressed stream does (truncated)")
    if unused:
        raise damaged(name, "it has data after its compressed stream")


def exactly(
    chunks: Iterator[bytes], size: int, name: str = "the archived object", before: int = 0
) -> Iterator[bytes]:
    """The stream, checked to hold exactly ``size`` bytes: ``ArchiveDamaged`` when it ends
    early or goes on (the bytes up to ``size`` are passed on first). ``before``: the bytes
    of the object before the stream (a range read), counted in the error's figures."""
    seen = 0
    total = before + size
    for chunk in chunks:
        if seen + len(chunk) > size:
            if size > seen:
                yield chunk[: size - seen]
            raise damaged(name, f"it is longer than the {total:,} bytes recorded")
        seen += len(chunk)
        yield chunk
    if seen != size:
        raise damaged(name, f"it ended after {before + seen:,} of the {total:,} bytes recorded")


def damaged(name: str, why: str) -> ArchiveDamaged:
    """The error for an archived object that is not what was archived."""
    return ArchiveDamaged(
        f"{name} cannot be read as archived: {why}",
        hint="it was damaged or replaced after it was verified; "
        "`fastflow archive verify --deep` checks every object",
    )


def skip(chunks: Iterator[bytes], n: int) -> Iterator[bytes]:
    """The stream without its first ``n`` bytes (streaming: nothing is held back)."""
    for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:] if n else chunk
        n = 0
