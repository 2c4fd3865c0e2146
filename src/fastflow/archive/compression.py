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


def decompress(chunks: Iterator[bytes], codec: str | None) -> Iterator[bytes]:
    """Decompress a stream of chunks (identity for ``none``/None)."""
    if not codec or codec == "none":
        yield from chunks
        return
    if codec == "gzip":
        d = zlib.decompressobj(wbits=31)
        for chunk in chunks:
            out = d.decompress(chunk)
            if out:
                yield out
        tail = d.flush()
        if tail:
            yield tail
        return
    if codec == "zstd":
        dz = zstandard.ZstdDecompressor().decompressobj()
        for chunk in chunks:
            out = dz.decompress(chunk)
            if out:
                yield out
        return
    raise ValueError(f"unknown compression {codec!r}")


def skip(chunks: Iterator[bytes], n: int) -> Iterator[bytes]:
    """The stream without its first ``n`` bytes (streaming: nothing is held back)."""
    for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:] if n else chunk
        n = 0
