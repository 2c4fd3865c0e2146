"""Archive storage: a small interface and its S3 implementation.

Guarantees of ``S3Store.put_verified``: the returned ``StoredObject`` describes an object
that the server confirmed with exactly the size and SHA-256 of the bytes read from the
local file for the upload — proven by the server's own check of the SHA-256, by its MD5
ETag, or by hashing the bytes as they were sent — either by a HEAD of the object or,
once a HEAD in this pass has shown that the server's PutObject answers describe the
objects it stores, by the PutObject answer itself; anything else raises
``ArchiveError``. Uploads stream (bounded memory whatever the file size). Error text never
contains credentials.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import logging
import os
import re
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import S3Transfer, TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from s3transfer.utils import ChunksizeAdjuster

from fastflow.archive import compression
from fastflow.archive.store import HASH_CHUNK as HASH_CHUNK
from fastflow.archive.store import ArchiveStore as ArchiveStore
from fastflow.archive.store import ObjectInfo as ObjectInfo
from fastflow.archive.store import StoredObject as StoredObject
from fastflow.archive.store import sha256_of as sha256_of
from fastflow.config import Settings
from fastflow.errors import (
    ArchiveDamaged,
    ArchiveError,
    ArchiveNotConfigured,
    FileChanged,
    ObjectChanged,
    ObjectMissing,
)
from fastflow.runs.files import FileIdentity
from fastflow.security import redact

log = logging.getLogger(__name__)

TOTAL_MAX_ATTEMPTS = 3
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
PART_CONCURRENCY = 4
READ_CHUNK = 64 * 1024
# a download broken off in the middle is taken up where it stopped this often (``open``)
READ_RESUMES = 3
MIN_POOL_CONNECTIONS = 64
# files up to this size are read once, hashed in memory and sent with one PutObject that
# carries the SHA-256 for the server to check (no TransferManager, no second hash pass)
SMALL_FILE = 4 * 1024 * 1024
META_SHA256 = "sha256"
PING_CONNECT_TIMEOUT = 5.0  # a server that does not answer a HEAD of the bucket in
PING_READ_TIMEOUT = 10.0  # this time is treated as down for the whole pass


# --- metadata encoding ------------------------------------------------------------------


def encode_meta(value: str) -> str:
    """S3 metadata is US-ASCII: non-ASCII values become RFC 2047 ``=?UTF-8?B?...?=``."""
    if value.isascii() and value.isprintable() and not value.startswith("=?"):
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode("utf-8")).decode("ascii") + "?="


_RFC2047 = re.compile(r"^=\?UTF-8\?B\?([A-Za-z0-9+/=]*)\?=$", re.IGNORECASE)


def decode_meta(value: str) -> str:
    """Inverse of ``encode_meta``."""
    m = _RFC2047.match(value)
    if not m:
        return value
    try:
        return base64.b64decode(m.group(1)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return value


# --- errors in plain words --------------------------------------------------------------

_CONNECTION_ERRORS = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
)


def _root_cause(exc: BaseException) -> BaseException:
    seen: set[int] = set()
    current: BaseException = exc
    while id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ClientError | BotoCoreError):
            return current
        nxt = current.__cause__ or current.__context__
        if nxt is None:
            break
        current = nxt
    return exc


def describe_error(exc: BaseException, settings: Settings) -> ArchiveError:
    """Turn any exception from boto3 into an ``ArchiveError`` a user can act on."""
    cause = _root_cause(exc)
    endpoint = settings.s3_endpoint_url or "the S3 endpoint"
    bucket = settings.s3_bucket or "?"
    connection = timed_out = False
    if isinstance(cause, EndpointConnectionError):
        detail = str(cause.kwargs.get("error", ""))
        if "refused" in detail.lower():
            msg = f"connection refused at {endpoint}: is the S3 server running?"
        elif "resolve" in detail.lower() or "name or service" in detail.lower():
            msg = f"cannot resolve the host of {endpoint}: check S3_ENDPOINT_URL"
        else:
            msg = f"cannot connect to {endpoint}: server unreachable"
        connection = True
    elif isinstance(cause, ConnectionClosedError):
        msg = f"connection to {endpoint} dropped during the request"
        connection = True
    elif isinstance(cause, ConnectTimeoutError):
        msg = f"connection to {endpoint} timed out"
        timed_out = True
    elif isinstance(cause, ReadTimeoutError):
        msg = f"no answer from {endpoint} (read timeout)"
        timed_out = True
    elif isinstance(cause, ClientError):
        err = cause.response.get("Error", {})
        code = str(err.get("Code", "?"))
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket",) or (code == "404" and "bucket" in str(err).lower()):
            msg = f"bucket '{bucket}' does not exist"
        elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            msg = (
                f"access denied ({code}): check S3_ACCESS_KEY, S3_SECRET_ACCESS_KEY and the "
                f"permissions on bucket '{bucket}'"
            )
        elif isinstance(status, int) and status >= 500:
            named = f" ({code})" if code not in (str(status), "?") else ""  # (no body: none)
            msg = f"S3 server error {status}{named} from {endpoint}"
            connection = status in (502, 503, 504)
        else:
            msg = f"S3 request failed: {code} (HTTP {status}): {err.get('Message', '')}".strip()
    elif isinstance(cause, IncompleteReadError):
        msg = (
            f"{endpoint} ended the object early: {cause.kwargs.get('actual_bytes')} of "
            f"{cause.kwargs.get('expected_bytes')} bytes arrived"
        )
        connection = True
    elif isinstance(cause, ResponseStreamingError):
        msg = f"connection to {endpoint} broke while an object was read"
        connection = True
    elif isinstance(cause, BotoCoreError):
        msg = f"S3 client error: {cause}"
        connection = "connect" in str(cause).lower()
    elif isinstance(cause, OSError):
        msg = f"cannot read local file: {cause.strerror or cause}"
    else:
        msg = f"{type(cause).__name__}: {cause}"
    return ArchiveError(redact(msg, settings), connection_level=connection, timed_out=timed_out)


# --- S3 ---------------------------------------------------------------------------------


_session: Any = None  # boto3 sessions are not thread-safe: clients are made under the lock
_session_lock = threading.Lock()


def _checksummed(settings: Settings) -> bool:
    """Whether every write sends a SHA-256 for the server to check (``S3Store``)."""
    locked = bool(settings.s3_object_lock_mode and settings.s3_object_lock_days)
    return settings.s3_checksum == "sha256" or locked


def make_client(
    settings: Settings,
    *,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
    attempts: int = TOTAL_MAX_ATTEMPTS,
) -> Any:
    """A boto3 S3 client from settings; raises ``ArchiveNotConfigured`` if incomplete."""
    missing = settings.s3_missing()
    if missing:
        what = (
            "S3 backup is enabled but not configured"
            if settings.s3_backup_enabled
            else "S3 is not configured (S3_BACKUP_ENABLED=false)"
        )
        raise ArchiveNotConfigured(f"{what}: missing " + ", ".join(missing))
    assert settings.s3_access_key is not None and settings.s3_secret_access_key is not None
    cfg = Config(
        region_name=settings.s3_region,
        signature_version="s3v4",
        connect_timeout=connect_timeout or settings.s3_connect_timeout,
        read_timeout=read_timeout or settings.s3_read_timeout,
        retries={"mode": "standard", "total_max_attempts": attempts},
        s3={
            "addressing_style": "path" if settings.s3_use_path_style else "virtual",
            # every write carries a signed x-amz-checksum-sha256 header that the server
            # checks against the body: hashing the body again for the signature (what
            # botocore does over plain http) would hash every byte once more for nothing
            **({"payload_signing_enabled": False} if _checksummed(settings) else {}),
        },
        # one client serves the pass's uploads and the API's reads (up to 40 worker
        # threads): a smaller pool would open and close a connection per request
        max_pool_connections=max(
            MIN_POOL_CONNECTIONS, settings.s3_max_concurrency * PART_CONCURRENCY
        ),
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    verify: bool | str = settings.s3_verify_tls
    if settings.s3_ca_bundle is not None:
        verify = str(settings.s3_ca_bundle)
    with _session_lock:  # one session: its loaded service model is shared by every client
        global _session
        if _session is None:
            _session = boto3.session.Session()
        client = _session.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            verify=verify,
            aws_access_key_id=settings.s3_access_key.get_secret_value(),
            aws_secret_access_key=settings.s3_secret_access_key.get_secret_value(),
            config=cfg,
        )
    client.meta.events.register_last("before-call.s3", _no_continue_for_small_bodies)
    return client


def _no_continue_for_small_bodies(params: dict[str, Any], **_: Any) -> None:
    """Drop ``Expect: 100-continue`` from a request whose body is already in memory and
    small, up to ``SMALL_FILE`` (botocore adds it to every PUT with a body): waiting for
    the server's interim answer costs a round trip per small object (9 % of the runs/s
    of a pass of 20 KB logs on s3rver), and sending a few KiB that a refusing server
    discards costs nothing. Bodies streamed from a file keep it. (``Expect`` is not a
    signed header: dropping it leaves the signature valid.)"""
    body = params.get("body")
    headers = params.get("headers", {})
    if headers.get("Expect") != "100-continue" or not isinstance(body, io.BytesIO):
        return
    with body.getbuffer() as view:  # (released at once: the BytesIO stays usable)
        small = view.nbytes - body.tell() <= SMALL_FILE
    if small:
        del headers["Expect"]


class S3Store:
    """``ArchiveStore`` on any S3-compatible server (MinIO, AWS S3, ...)."""

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.settings = settings
        self.client = client or make_client(settings)
        assert settings.s3_bucket is not None
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.codec = settings.s3_compression
        self._ping_client: Any = None
        self._shared_uploader: S3Transfer | None = None
        self._uploader_lock = threading.Lock()
        self._extra: dict[str, str] = {}
        if settings.s3_sse:
            self._extra["ServerSideEncryption"] = settings.s3_sse
        if settings.s3_sse_kms_key_id:
            self._extra["SSEKMSKeyId"] = settings.s3_sse_kms_key_id
        if settings.s3_storage_class:
            self._extra["StorageClass"] = settings.s3_storage_class
        # WORM (S3_OBJECT_LOCK_MODE + S3_OBJECT_LOCK_DAYS): every object is written with a
        # retention date; S3 then demands a checksum of the body, so one is always sent
        self.lock_days: int | None = None
        if settings.s3_object_lock_mode and settings.s3_object_lock_days:
            self.lock_days = settings.s3_object_lock_days
            self._extra["ObjectLockMode"] = settings.s3_object_lock_mode
        # whether the server's ETags were, at the last verification, the MD5 of the bytes
        # stored (None: not seen yet): then that check proves what the server received
        # and a mid-size file need not be hashed a second time as it is sent
        self._md5_etags: bool | None = None
        # whether the server refuses a body that does not match the SHA-256 sent with it
        # (None: not probed yet; ``server_checks_sha256``)
        self._server_checks: bool | None = None
        self._probe_lock = threading.Lock()
        # whether a HEAD in this pass (since ``begin_pass``) found an object exactly as
        # its PutObject answer described it, metadata included: from then on an answer
        # that proves the bytes confirms an upload without a HEAD (``_confirm``)
        self._answers_trusted = False
        self._checksum = _checksummed(settings)
        if self._checksum:
            # the server checks the bytes it receives against this and stores the result
            self._extra["ChecksumAlgorithm"] = "SHA256"
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNKSIZE,
            # shared by the pass's workers: PART_CONCURRENCY parts in flight per worker
            max_concurrency=PART_CONCURRENCY * settings.s3_max_concurrency,
            use_threads=True,
        )

    def _uploader(self) -> S3Transfer:
        """One transfer manager (and its threads) per store, shared by every upload —
        ``client.upload_file`` would build and tear down one per file."""
        with self._uploader_lock:
            if self._shared_uploader is None:
                # (boto3's TransferConfig subclasses the one the stubs name)
                self._shared_uploader = S3Transfer(self.client, self._transfer)  # type: ignore[arg-type]
            return self._shared_uploader

    def _write_args(self) -> dict[str, Any]:
        """Arguments of every write: encryption, storage class, checksum and, with
        Object Lock configured, the retention date (from now)."""
        args: dict[str, Any] = dict(self._extra)
        if self.lock_days is not None:
            args["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(days=self.lock_days)
        return args

    def uncompressed(self) -> S3Store:
        """This store writing objects as they are (manifests are never compressed)."""
        if self.codec == "none":
            return self
        clone = copy.copy(self)
        clone.codec = "none"
        return clone

    def list_keys(self, prefix: str) -> Iterator[tuple[str, int, datetime]]:
        """``(key, size, last_modified)`` of every object under ``prefix``, in key order
        (paginated: one page of at most 1,000 keys in memory)."""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield str(obj["Key"]), int(obj["Size"]), obj["LastModified"]
        except ArchiveError:
            raise
        except Exception as e:
            raise describe_error(e, self.settings) from e

    def key_for(self, pipeline_name: str, run_id: str, filename: str) -> str:
        parts = [self.prefix] if self.prefix else []
        return "/".join([*parts, pipeline_name, run_id, filename]) + compression.SUFFIX[self.codec]

    def put_verified(
        self, key: str, path: Path, metadata: dict[str, str], *, name: str | None = None
    ) -> StoredObject:
        """Upload ``path`` to ``key`` streaming (compressed when configured), then confirm
        size and SHA-256 of the stored bytes (a HEAD, or a PutObject answer that proves
        them: ``_confirm``). ``name``: the file's name in error
        messages (``path`` may be a ``/proc/self/fd`` path: ``runs.files.held``)."""
        name = name or path.name
        if self.codec == "none":
            size, digest = self._upload(key, path, metadata, {}, name)
            return StoredObject(key, size, digest, size, digest)
        tmp_dir = self.settings.data_dir.expanduser().resolve() / "tmp"
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="archive-", suffix=".part", dir=tmp_dir)
            os.close(fd)
        except OSError as e:
            raise ArchiveError(f"cannot create a temporary file in {tmp_dir}: {e}") from e
        tmp = Path(name)
        try:
            try:
                packed = compression.compress_file(path, tmp, self.codec)
            except OSError as e:
                raise ArchiveError(f"cannot compress {name}: {e.strerror or e}") from e
            extra = {
                "encoding": self.codec,
                "original_sha256": packed.original_sha256,
                "original_size": str(packed.original_size),
            }
            size, digest = self._upload(key, tmp, metadata, extra, name)
        finally:
            tmp.unlink(missing_ok=True)
        if (size, digest) != (packed.stored_size, packed.stored_sha256):
            raise ArchiveError(f"compressed copy of {name} changed while it was uploaded")
        return StoredObject(
            key, size, digest, packed.original_size, packed.original_sha256, self.codec
        )

    def _upload(
        self,
        key: str,
        path: Path,
        metadata: dict[str, str],
        extra: dict[str, str],
        name: str,
        *,
        hash_sent: bool = False,
    ) -> tuple[int, str]:
        """Upload, then confirm (``_confirm``: a HEAD, or the PutObject's own answer once
        this pass trusts them). A file of up to ``SMALL_FILE`` bytes is read
        once and the bytes that were hashed are the bytes sent (``_put_small``). A
        larger one is hashed once, before the upload; up to ``MULTIPART_THRESHOLD`` it
        is one PutObject streamed from the open file carrying that SHA-256. A server
        that checks it (``server_checks_sha256``: AWS, MinIO) refuses bytes that do not
        match, which proves what it stored, and the file is hashed only that once. For
        servers that do not, what was sent must still be proven to be what was hashed:
        by the server's ETag, the MD5 of what it stored, compared with the MD5 taken
        with the SHA-256 — or, where the server's ETags are not MD5s (or
        ``S3_VERIFY_ETAG`` is off, or ``hash_sent``), by hashing the bytes again as they
        are sent. An upload that expected an MD5 ETag and did not get one is made again
        that way. Beyond ``MULTIPART_THRESHOLD`` it goes by file name: s3transfer
        streams every part from disk (a file object would make it buffer parts in
        memory) and the server checks each part against the SHA-256 botocore sends with
        it. A change of the file's identity (inode, size, modification or change time)
        between the hash and the end of the upload is a failure."""
        meta = {k: encode_meta(v) for k, v in metadata.items()}
        meta.update(extra)
        by_etag = by_server = False
        answer: dict[str, Any] | None = None  # the PutObject's (not a multipart upload's)
        try:
            small = self._read_small(path)
            if small is not None:
                size, digest, etag, answer = self._put_small(key, small, meta)
                self._confirm(key, size, digest, etag, answer)
                return size, digest
            before = os.stat(path)
            if before.st_size > MULTIPART_THRESHOLD:
                size, digest, etag = _digests_in_parts(path, self._transfer.multipart_chunksize)
            elif self.server_checks_sha256():
                by_server = True
                size, digest = sha256_of(path)
                etag = None
            elif not hash_sent and self._md5_etags and self.settings.s3_verify_etag:
                by_etag = True
                size, digest, etag = _sha256_and_md5(path)
            else:
                size, digest = sha256_of(path)
            if size <= MULTIPART_THRESHOLD:
                # one PutObject streaming from the open file with the SHA-256 just
                # computed, for the server to check (s3transfer would add its
                # Python-level readers and have botocore hash the bytes once more)
                with path.open("rb") as f:
                    body = _HashingReader(f, size, name, hashing=not (by_etag or by_server))
                    answer = self._put(key, body, bytes.fromhex(digest), meta, name)
                if not (by_etag or by_server):
                    sent = body.sent()
                    if sent is None or sent[:2] != (size, digest):
                        raise ArchiveError(
                            f"local file {name} changed while it was uploaded "
                            "(the bytes sent are not the bytes hashed); not deleting it"
                        )
                    etag = sent[2]
            else:
                meta[META_SHA256] = digest
                self._uploader().upload_file(
                    str(path),
                    self.bucket,
                    key,
                    extra_args={
                        "Metadata": meta,
                        "ContentType": _content_type(key),
                        **self._write_args(),
                    },
                )
            after = os.stat(path)
        except ArchiveError:
            raise
        except Exception as e:  # every boto3/botocore/OS error is a failed archive
            raise describe_error(e, self.settings) from e
        if FileIdentity.of_stat(after) != FileIdentity.of_stat(before) or after.st_size != size:
            raise ArchiveError(
                f"local file {name} changed while it was uploaded "
                f"({size} bytes before, {after.st_size} after); not deleting it"
            )
        if not self._confirm(key, size, digest, etag, answer) and by_etag:
            # no MD5 ETag after all (the bucket's encryption changed, say): nothing proves
            # the bytes sent were the bytes hashed, so send them again, hashing them
            return self._upload(key, path, metadata, extra, name, hash_sent=True)
        return size, digest

    @staticmethod
    def _read_small(path: Path) -> bytes | None:
        """The whole file when it has at most ``SMALL_FILE`` bytes, else None. Reads what
        ``fstat`` reports plus one byte (a buffer of ``SMALL_FILE`` for a 20 KB log cost
        seven times the read), then the rest of a file that grew meanwhile."""
        with path.open("rb") as f:  # (buffered: ``read(n)`` reads on until n or EOF)
            size = os.fstat(f.fileno()).st_size
            if size > SMALL_FILE:
                return None
            data = f.read(size + 1)
            if len(data) > size:  # it grew: read on, to the limit
                data += f.read(SMALL_FILE + 1 - len(data))
        return data if len(data) <= SMALL_FILE else None

    def _put_small(
        self, key: str, data: bytes, meta: dict[str, str]
    ) -> tuple[int, str, str | None, dict[str, Any]]:
        """One PutObject of ``data``: size, SHA-256, the MD5 its ETag must be (None when
        the server is known to check the SHA-256) and the server's answer."""
        raw = hashlib.sha256(data).digest()
        answer = self._put(key, data, raw, meta)
        if self._server_checks:
            return len(data), raw.hex(), None, answer
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return len(data), raw.hex(), md5, answer

    def _confirm(
        self, key: str, size: int, sha256: str, etag: str | None, answer: dict[str, Any] | None
    ) -> bool:
        """Confirm an upload (``verify``'s result: True when an MD5 ETag was compared).
        Without a HEAD when the PutObject ``answer`` proves the bytes (``_answer_proves``)
        and a HEAD earlier in this pass found an object exactly as its answer described
        it — size, stored SHA-256 metadata and ETag: the server's answers are then what
        it stores. An answer that proves nothing (no ETag, an ETag that is not the MD5
        of the bytes sent, SSE-KMS) and every multipart upload get a HEAD, as does the
        first upload of each pass — and every upload with ``S3_HEAD_EVERY_UPLOAD``. That
        HEAD costs as much client CPU as the upload itself for a small file (42 % of the
        GIL time of a pass of 20 KB logs)."""
        proves = answer is not None and self._answer_proves(answer, sha256, etag)
        if proves and self._answers_trusted and not self.settings.s3_head_every_upload:
            return True
        md5, info = self._verify_head(key, size, sha256, etag)
        if proves and answer is not None and info.etag == _etag(answer):
            if not self._answers_trusted:
                log.debug("the S3 server stores what its PutObject answers describe")
            self._answers_trusted = True
        return md5 or proves

    def _answer_proves(self, answer: dict[str, Any], sha256: str, md5: str | None) -> bool:
        """Whether a PutObject answer alone proves that the server holds the bytes that
        were hashed: the SHA-256 echoed by a server known to refuse a body that does not
        match it (``server_checks_sha256``), or an ETag that is the MD5 of the bytes
        sent (``md5``; with ``S3_VERIFY_ETAG``, and not for SSE-KMS or SSE-C objects,
        whose ETags are not MD5s). An answer without an ETag (a gateway that acknowledges
        what it did not store) proves nothing, and neither does one whose ETag is an MD5
        of other bytes, whatever checksum it echoes."""
        etag = _etag(answer)
        if etag is None:
            return False
        plain = not _keyed(answer) and bool(_PLAIN_MD5.fullmatch(etag))
        if md5 is not None and plain and etag != md5:
            return False
        if self._server_checks:
            sent = base64.b64encode(bytes.fromhex(sha256)).decode("ascii")
            if answer.get("ChecksumSHA256") == sent:
                return True
        return md5 is not None and self.settings.s3_verify_etag and plain and etag == md5

    def server_checks_sha256(self) -> bool:
        """Whether the server refuses a body that does not match the SHA-256 sent with it
        (AWS S3 and MinIO do; moto and s3rver do not), found out once per store: the
        first part of a multipart upload is sent with a wrong SHA-256, then the upload is
        aborted — nothing is ever stored. False with checksums off (``S3_CHECKSUM=none``)
        or when the probe does not show a refusal plainly; a probe that did not reach
        the server is made again at the next upload."""
        if not self._checksum:
            return False
        with self._probe_lock:
            if self._server_checks is None:
                self._server_checks = self._probe_checksums()
            return bool(self._server_checks)

    def _probe_checksums(self) -> bool | None:
        key = "/".join(
            filter(None, [self.prefix, ".fastflow-probe", f"checksum-{uuid.uuid4().hex}"])
        )
        try:
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, **self._write_args()
            )["UploadId"]
        except Exception as e:
            log.info("cannot probe whether the S3 server checks SHA-256s: %s", self._why(e))
            return False if isinstance(e, ClientError) else None  # (unreachable: again later)
        refused: bool | None
        try:
            self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=1,
                Body=b"fastflow: does the server check the SHA-256 of a body?\n",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode(),
            )
            refused = False
        except ClientError as e:
            refused = _error_code(e) in _CHECKSUM_MISMATCH
            if not refused:
                log.info("cannot probe whether the S3 server checks SHA-256s: %s", self._why(e))
        except Exception as e:
            refused = None
            log.info("cannot probe whether the S3 server checks SHA-256s: %s", self._why(e))
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as e:  # a pass aborts stale uploads after a day
            log.warning(
                "cannot abort the probe upload s3://%s/%s: %s", self.bucket, key, self._why(e)
            )
        if refused is not None:
            log.info(
                "the S3 server %s the SHA-256 sent with a body",
                "checks" if refused else "is not known to check",
            )
        return refused

    def _why(self, e: BaseException) -> str:
        return str(describe_error(e, self.settings))

    def _put(
        self,
        key: str,
        body: bytes | BinaryIO | _HashingReader,
        sha256: bytes,
        meta: dict[str, str],
        name: str | None = None,
    ) -> dict[str, Any]:
        """One PutObject of ``body`` (bytes, or a file streamed from its current position)
        whose SHA-256 is ``sha256``; the server's answer. A server that checks the SHA-256
        and finds other bytes is an ``ArchiveError`` that says so."""
        args = self._write_args()  # with ChecksumAlgorithm=SHA256 when checksums are on
        if self._checksum:
            # the digest we computed, sent for the server to check against the body it
            # receives (botocore then does not hash the body a second time)
            args["ChecksumSHA256"] = base64.b64encode(sha256).decode("ascii")
        try:
            answer: dict[str, Any] = self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                Metadata={**meta, META_SHA256: sha256.hex()},
                ContentType=_content_type(key),
                **args,
            )
        except ClientError as e:
            if self._checksum and _error_code(e) in _CHECKSUM_MISMATCH:
                raise ArchiveError(
                    f"the S3 server refused {name or key}: the bytes it received do not "
                    "match the SHA-256 hashed before the upload (the file changed, or the "
                    "bytes on the way); not deleting it"
                ) from e
            raise describe_error(e, self.settings) from e
        except Exception as e:  # every boto3/botocore error is a failed archive
            shrank = _body_error(e)
            if shrank is not None:  # the body's own: the file shrank while it was sent
                raise shrank from e
            raise describe_error(e, self.settings) from e
        return answer

    def verify(self, key: str, size: int, sha256: str, etag: str | None = None) -> bool:
        """HEAD ``key``; raise unless its size and stored SHA-256 match — and, with
        ``etag`` (the MD5 ETag of the bytes sent: ``md5`` or ``md5-of-part-md5s-N``), unless
        the server's ETag is that one where it is an MD5 the server computed of what it
        stored (``S3_VERIFY_ETAG``; not for SSE-KMS or SSE-C objects). True when the ETag
        was compared (and matched)."""
        return self._verify_head(key, size, sha256, etag)[0]

    def verify_copy_of(self, key: str, path: Path, size: int, sha256: str) -> None:
        """``verify`` of an uncompressed object that must hold exactly the bytes of the
        local file ``path`` (hashed before: ``size``, ``sha256``; a path that opens the
        held file, ``HeldFile.path``). The SHA-256 in the object's metadata is what
        fastflow wrote: an object replaced by other bytes of the same size with that
        metadata copied would pass on it alone. So where the server's ETag is an MD5 it
        computed (``S3_VERIFY_ETAG``, no SSE-KMS/SSE-C), it is compared with the MD5 of
        ``path`` — or of its parts, cut as an upload of this store cuts them (an object
        cut into another number of parts is read back and hashed: ``verify_content``).
        Reads ``path`` once more; ``ObjectChanged`` when the object holds other bytes,
        else ``ArchiveError``."""
        info = self._verify_head(key, size, sha256, None)[1]
        etag = info.etag
        if not self.settings.s3_verify_etag or info.keyed or etag is None:
            return
        if not _MD5_ETAG.fullmatch(etag):
            return
        parts = etag.partition("-")[2]
        try:
            if parts:
                chunk = self._transfer.multipart_chunksize
                local_size, digest, local = _digests_in_parts(path, chunk)
                if local.partition("-")[2] != parts:
                    # cut into another number of parts (another tool, another part
                    # size): its ETag cannot be computed here; its bytes are read back
                    self.verify_content(key, None, size, sha256)
                    return
            else:
                local_size, digest, local = _sha256_and_md5(path)
        except OSError as e:
            raise ArchiveError(f"cannot read local file {path.name}: {e}") from e
        if (local_size, digest) != (size, sha256):
            raise ArchiveError(f"local file {path.name} changed while it was checked; kept")
        if local != etag:
            raise ObjectChanged(
                f"the server's ETag of s3://{self.bucket}/{key} is {etag}, not {local}, the "
                "MD5 of the local copy: the object holds other bytes than the ones archived"
            )

    def verify_content(
        self, key: str, encoding: str | None, original_size: int, original_sha256: str
    ) -> None:
        """Read the object back (decompressed) and hash it: ``ObjectChanged`` unless it
        gives exactly the original bytes the ledger recorded (``ArchiveError`` when it
        cannot be read; a damaged object, one that does not decompress or is not as long
        as recorded, is ``ObjectChanged`` too). What a HEAD cannot show of an object
        whose ETag is not the MD5 of the local bytes (compressed, or cut into parts
        otherwise)."""
        sha = hashlib.sha256()
        try:
            for chunk in self.open_original(key, encoding, original_size):
                sha.update(chunk)
        except ArchiveDamaged as e:
            raise ObjectChanged(
                f"s3://{self.bucket}/{key} does not give the archived bytes: {e}"
            ) from e
        if sha.hexdigest() != original_sha256:
            raise ObjectChanged(
                f"s3://{self.bucket}/{key} holds other bytes than the ones archived (read "
                f"back, its SHA-256 is {sha.hexdigest()}, not {original_sha256})"
            )

    def _verify_head(
        self, key: str, size: int, sha256: str, etag: str | None
    ) -> tuple[bool, ObjectInfo]:
        """``verify``, with the object's HEAD."""
        info = self.head(key)
        if info is None:
            raise ObjectMissing(f"verification failed: s3://{self.bucket}/{key} does not exist")
        if info.size != size:
            raise ArchiveError(
                f"verification failed: s3://{self.bucket}/{key} has {info.size} bytes, "
                f"expected {size}"
            )
        stored = info.metadata.get(META_SHA256)
        if stored != sha256:
            raise ArchiveError(
                f"verification failed: checksum mismatch for s3://{self.bucket}/{key} "
                f"(stored {stored or 'none'}, expected {sha256})"
            )
        if info.server_sha256 is not None and info.server_sha256 != sha256:
            raise ArchiveError(
                f"verification failed: the server's SHA-256 of s3://{self.bucket}/{key} is "
                f"{info.server_sha256}, expected {sha256}"
            )
        if etag is None or not self.settings.s3_verify_etag:
            return False, info
        md5 = not info.keyed and info.etag is not None and bool(_MD5_ETAG.fullmatch(info.etag))
        self._md5_etags = md5
        if md5 and info.etag != etag:
            # a server that does not check the SHA-256 it is sent stores it as given;
            # its ETag is the one value it computes of the bytes it stored
            raise ArchiveError(
                f"verification failed: the server's ETag of s3://{self.bucket}/{key} is "
                f"{info.etag}, not {etag}, the MD5 of the bytes sent: it stored other bytes "
                "on the way; the local file is kept (do not turn S3_VERIFY_ETAG off for "
                "this: that is only for a gateway whose ETags are not MD5s of the bytes, "
                "and on a server that does not check the SHA-256 it is sent it would let "
                "such an upload count as verified)"
            )
        return md5, info

    def begin_pass(self) -> None:
        """A pass begins: until a HEAD in it has shown again that the server stores what
        its PutObject answers describe, every upload is confirmed by a HEAD
        (``_confirm``). Every pass calls this before its first upload (``PassRun``)."""
        self._answers_trusted = False

    def ping(self) -> None:
        """HEAD the bucket with short timeouts and no retry; raise ``ArchiveError`` (with
        ``connection_level`` when the server is unreachable or silent)."""
        if self._ping_client is None:  # short timeouts, no retry; made once per store
            self._ping_client = make_client(
                self.settings,
                connect_timeout=min(PING_CONNECT_TIMEOUT, self.settings.s3_connect_timeout),
                read_timeout=min(PING_READ_TIMEOUT, self.settings.s3_read_timeout),
                attempts=1,
            )
        try:
            self._ping_client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            raise describe_error(e, self.settings) from e

    def head(self, key: str) -> ObjectInfo | None:
        try:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
            if self.settings.s3_checksum == "sha256":
                kwargs["ChecksumMode"] = "ENABLED"
            resp = self.client.head_object(**kwargs)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise describe_error(e, self.settings) from e
        except Exception as e:
            raise describe_error(e, self.settings) from e
        meta = {k.lower(): decode_meta(v) for k, v in resp.get("Metadata", {}).items()}
        return ObjectInfo(
            key=key,
            size=int(resp["ContentLength"]),
            metadata=meta,
            server_sha256=_full_object_sha256(resp),
            etag=_etag(resp),
            keyed=_keyed(resp),
        )

    def open_original(
        self, key: str, encoding: str | None, size: int | None = None
    ) -> Iterator[bytes]:
        """The bytes of the local file the object came from (decompressed, streaming);
        with ``size`` (the original size the ledger recorded), checked to be exactly that
        long. ``ArchiveDamaged`` when they are not what was archived (see
        ``compression.decompress``)."""
        name = f"s3://{self.bucket}/{key}"
        chunks = compression.decompress(self.open(key), encoding, name)
        return chunks if size is None else compression.exactly(chunks, size, name)

    def open(self, key: str, start: int = 0) -> Iterator[bytes]:
        """Stream an object from byte ``start`` in bounded chunks. A download that breaks
        off in the middle (connection reset, body cut short, read timeout) is taken up
        where it stopped — a ranged GET of the rest, bound by ``If-Match`` to the same
        object — up to ``READ_RESUMES`` times; the bytes yielded are then exactly the
        object's, never repeated or skipped."""
        resp = self._get(key, start)
        return self._stream(key, start, resp)

    def _get(self, key: str, start: int, etag: str | None = None) -> dict[str, Any]:
        try:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
            if start > 0:
                kwargs["Range"] = f"bytes={start}-"
            if etag is not None:
                kwargs["IfMatch"] = etag
            return dict(self.client.get_object(**kwargs))
        except ClientError as e:
            code = _error_code(e)
            if start > 0 and code == "InvalidRange":
                # only asked for below the recorded size: the object is shorter than that
                raise compression.damaged(
                    f"s3://{self.bucket}/{key}", f"it has fewer than {start + 1:,} bytes"
                ) from None
            if code == "NoSuchKey":
                # every reader knows the object from the ledger, a manifest or a listing
                raise compression.damaged(
                    f"s3://{self.bucket}/{key}", "it no longer exists in the bucket"
                ) from None
            if etag is not None and code in ("PreconditionFailed", "412"):
                raise ArchiveError(
                    f"s3://{self.bucket}/{key} was replaced while it was read"
                ) from None
            raise describe_error(e, self.settings) from e
        except Exception as e:
            raise describe_error(e, self.settings) from e

    def _stream(self, key: str, at: int, resp: dict[str, Any]) -> Iterator[bytes]:
        etag = resp.get("ETag")
        end = at + int(resp.get("ContentLength") or 0)
        body = resp["Body"]
        resumes = 0
        try:
            while True:
                try:
                    for chunk in body.iter_chunks(chunk_size=READ_CHUNK):
                        at += len(chunk)
                        yield chunk
                    return
                except _BROKEN_DOWNLOAD as e:
                    if resumes >= READ_RESUMES or at >= end or not isinstance(etag, str):
                        raise describe_error(e, self.settings) from e
                    resumes += 1
                    log.warning(
                        "reading s3://%s/%s broke off after %d of %d bytes (%s); resuming",
                        self.bucket,
                        key,
                        at,
                        end,
                        describe_error(e, self.settings),
                    )
                    body.close()
                    body = self._get(key, at, etag)["Body"]
        except ArchiveError:
            raise
        except Exception as e:
            raise describe_error(e, self.settings) from e
        finally:
            body.close()

    def abort_stale_uploads(self, started_before: datetime) -> int | None:
        """Abort every multipart upload under the prefix started before
        ``started_before`` — what a killed pass left: its parts are invisible, kept and
        billed until aborted — and return how many; None when the server does not list
        multipart uploads at all (``NotImplemented``: s3rver, some gateways);
        ``ArchiveError`` when it refuses (the caller only notes it)."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        aborted = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < started_before:
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted += 1
        except ClientError as e:
            if aborted == 0 and _error_code(e) in _NOT_IMPLEMENTED:
                return None
            raise describe_error(e, self.settings) from e
        except Exception as e:
            raise describe_error(e, self.settings) from e
        return aborted

    def set_legal_hold(self, key: str, on: bool) -> None:
        """Place (``on``) or lift the Object Lock legal hold on the current version of
        ``key`` (pinned runs, issue 16). A bucket without Object Lock, a missing object or
        any other error raises ``ArchiveError`` in plain words."""
        try:
            self.client.put_object_legal_hold(
                Bucket=self.bucket, Key=key, LegalHold={"Status": "ON" if on else "OFF"}
            )
        except ClientError as e:
            err = e.response.get("Error", {})
            code, text = str(err.get("Code", "")), str(err.get("Message", ""))
            if code == "InvalidRequest" and "lock" in text.lower():
                raise ArchiveError(
                    f"bucket '{self.bucket}' has no Object Lock configuration: legal holds "
                    "need a bucket created with Object Lock enabled"
                ) from None
            if code in ("404", "NoSuchKey", "NotFound"):
                raise ArchiveError(
                    f"cannot set a legal hold: s3://{self.bucket}/{key} does not exist"
                ) from None
            raise describe_error(e, self.settings) from e
        except Exception as e:
            raise describe_error(e, self.settings) from e


def _body_error(exc: BaseException) -> FileChanged | None:
    """The ``FileChanged`` a request body raised, however botocore wrapped it (as
    ``HTTPClientError(error=...)``, after its retries)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FileChanged):
            return current
        inner = getattr(current, "kwargs", {}).get("error")
        current = inner if isinstance(inner, BaseException) else current.__cause__
    return None


class _HashingReader:
    """The first ``size`` bytes of a file as a request body, hashed as they are read:
    ``sent()`` is the size and SHA-256 of what was read in one pass from the start.

    The body ends at ``size`` whatever the file does meanwhile (a request never carries
    more bytes than its Content-Length, which botocore takes from ``len``). Seeking back
    to the start (botocore rewinds the body for a retry, or after hashing it for the
    signature) starts the count again; a read that does not continue the counted bytes
    leaves them unequal to the file's, so that a mismatch is reported, never missed."""

    def __init__(self, f: BinaryIO, size: int, name: str, *, hashing: bool = True) -> None:
        self._f = f
        self._hashing = hashing  # False: bounded and checked for shrinking, not hashed
        self._size = size
        self._name = name  # (in messages: ``f`` may be a ``/proc/self/fd`` path)
        self._hash = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._counted = 0
        self._broken = False

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        at = self._f.tell()
        left = max(0, self._size - at)
        want = left if n is None or n < 0 else min(n, left)
        data = self._f.read(want)
        if len(data) < want:
            # the file ends before the size hashed (truncated meanwhile): stop the request
            # now — the server would wait for the announced bytes until its read timeout,
            # and the failure would look like the server's
            raise FileChanged(
                f"{self._name} shrank while it was uploaded "
                f"({self._size} bytes hashed, it ended at {at + len(data)}); kept"
            )
        if at != self._counted:
            self._broken = True
        elif data:
            if self._hashing:
                self._hash.update(data)
                self._md5.update(data)
            self._counted += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            offset, whence = self._size + offset, os.SEEK_SET
        pos = self._f.seek(offset, whence)
        if pos == 0:
            self._hash, self._counted, self._broken = hashlib.sha256(), 0, False
            self._md5 = hashlib.md5(usedforsecurity=False)
        return pos

    def tell(self) -> int:
        return self._f.tell()

    def sent(self) -> tuple[int, str, str] | None:
        """(size, hex SHA-256, hex MD5) of the bytes read from the start; None if the
        reads did not follow one another or the body was not hashed."""
        if self._broken or not self._hashing:
            return None
        return self._counted, self._hash.hexdigest(), self._md5.hexdigest()


# what a download that breaks off in the middle of the body raises (``S3Store.open``)
_BROKEN_DOWNLOAD = (
    ResponseStreamingError,
    IncompleteReadError,
    ReadTimeoutError,
    ConnectionClosedError,
)
# what a server that checks the SHA-256 sent with a body answers when it does not match
_CHECKSUM_MISMATCH = frozenset({"BadDigest", "XAmzContentChecksumMismatch"})
_MD5_ETAG = re.compile(r"[0-9a-f]{32}(?:-[1-9][0-9]*)?")
_PLAIN_MD5 = re.compile(r"[0-9a-f]{32}")  # a single-part object's MD5 ETag
# a server that does not implement an operation at all (not one that refuses it)
_NOT_IMPLEMENTED = frozenset({"NotImplemented", "501", "XNotImplemented"})


def _etag(resp: dict[str, Any]) -> str | None:
    """A response's ETag without quotes, in lower case."""
    etag = resp.get("ETag")
    return etag.strip('"').lower() if isinstance(etag, str) else None


def _keyed(resp: dict[str, Any]) -> bool:
    """Whether a response is of an SSE-KMS or SSE-C object (its ETag is not an MD5)."""
    sse = str(resp.get("ServerSideEncryption", ""))
    return sse.startswith("aws:kms") or bool(resp.get("SSECustomerAlgorithm"))


def _error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _sha256_and_md5(path: Path) -> tuple[int, str, str]:
    """Size, hex SHA-256 and hex MD5 of a file, in one read."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest(), md5.hexdigest()


def _digests_in_parts(path: Path, chunksize: int) -> tuple[int, str, str]:
    """Size, hex SHA-256 and the multipart ETag (MD5 of the parts' MD5s, ``-N``) of a
    file uploaded in parts of ``chunksize`` as s3transfer cuts them, in one read."""
    whole = hashlib.sha256()
    part_size = ChunksizeAdjuster().adjust_chunksize(chunksize, os.stat(path).st_size)
    part_md5s: list[bytes] = []
    size = 0
    with path.open("rb") as f:
        while True:
            part = hashlib.md5(usedforsecurity=False)
            left = part_size
            while left and (chunk := f.read(min(HASH_CHUNK, left))):
                whole.update(chunk)
                part.update(chunk)
                left -= len(chunk)
                size += len(chunk)
            if left == part_size:
                break
            part_md5s.append(part.digest())
            if left:
                break
    composite = hashlib.md5(b"".join(part_md5s), usedforsecurity=False).hexdigest()
    return size, whole.hexdigest(), f"{composite}-{len(part_md5s)}"


def _full_object_sha256(resp: dict[str, Any]) -> str | None:
    """Hex SHA-256 of the whole object from a HEAD, or None when the server gave none or
    only a checksum of part checksums (multipart uploads: ETag ``…-N`` or type COMPOSITE;
    not every server labels these, so both signs are checked)."""
    value = resp.get("ChecksumSHA256")
    kind = resp.get("ChecksumType")
    multipart = "-" in str(resp.get("ETag", ""))
    if not isinstance(value, str) or "-" in value or kind == "COMPOSITE":
        return None
    if kind != "FULL_OBJECT" and multipart:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 32 else None


def _content_type(key: str) -> str:
    if key.endswith((".gz", ".zst")):
        return "application/zstd" if key.endswith(".zst") else "application/gzip"
    return "application/x-ndjson" if key.endswith(".jsonl") else "text/plain; charset=utf-8"


_STORE_FIELDS = (
    "s3_endpoint_url",
    "s3_bucket",
    "s3_access_key",
    "s3_secret_access_key",
    "s3_region",
    "s3_prefix",
    "s3_use_path_style",
    "s3_max_concurrency",
    "s3_connect_timeout",
    "s3_read_timeout",
    "s3_compression",
    "s3_checksum",
    "s3_verify_etag",
    "s3_head_every_upload",
    "s3_sse",
    "s3_sse_kms_key_id",
    "s3_storage_class",
    "s3_ca_bundle",
    "s3_verify_tls",
    "s3_object_lock_mode",
    "s3_object_lock_days",
)
_STORES_KEPT = 4
_stores: OrderedDict[str, S3Store] = OrderedDict()
_stores_lock = threading.Lock()


def _store_key(settings: Settings) -> str:
    """A digest of every setting the store depends on (secrets included, not kept)."""
    h = hashlib.sha256()
    for name in _STORE_FIELDS:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        h.update(f"{name}={value!r}\n".encode())
    return h.hexdigest()


def open_store(settings: Settings) -> S3Store:
    """The configured store; ``ArchiveNotConfigured`` names the missing variables.

    One store (boto3 client, connection pool) per effective S3 settings is shared by
    every caller in the process — building a client costs tens of milliseconds of CPU;
    a change of any S3 setting gives a new store. boto3 clients are thread-safe."""
    key = _store_key(settings)
    with _stores_lock:
        store = _stores.get(key)
        if store is not None:
            _stores.move_to_end(key)
            return store
    store = S3Store(settings)  # outside the lock: may raise ArchiveNotConfigured
    with _stores_lock:
        store = _stores.setdefault(key, store)
        _stores.move_to_end(key)
        while len(_stores) > _STORES_KEPT:
            _stores.popitem(last=False)
    return store
