"""``S3Store.put_verified`` by file size, against the real S3 server: small files are one
PutObject of the bytes read, files up to the multipart threshold one PutObject streamed
from the open file with the SHA-256 computed beforehand (and the bytes sent hashed
again); each is HEAD-verified."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fastflow.archive import s3 as s3mod
from fastflow.config import load_settings
from fastflow.errors import ArchiveError, FileChanged
from tests.harness.fixtures import S3Env


def _store(s3: S3Env, tmp_path: Path) -> s3mod.S3Store:
    env = {k.lower(): v for k, v in s3.env().items()}
    return s3mod.S3Store(load_settings(**env, data_dir=tmp_path / "data"))


def _operations(store: s3mod.S3Store) -> Counter[str]:
    """Every S3 operation the store's client sends from now on, by name."""
    seen: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        seen[model.name] += 1

    def attempt(request: Any, **_: Any) -> None:
        seen[f"{request.method} sent"] += 1

    store.client.meta.events.register("before-call.s3", count)
    store.client.meta.events.register("before-send.s3", attempt)
    return seen


@pytest.mark.parametrize("size", [10, s3mod.SMALL_FILE + 1, 3 * s3mod.SMALL_FILE // 2])
def test_each_size_is_one_put_and_one_head_with_the_servers_checksum(
    s3: S3Env, tmp_path: Path, size: int
) -> None:
    store = _store(s3, tmp_path)
    path = tmp_path / "run.log"
    data = os.urandom(size)
    path.write_bytes(data)
    ops = _operations(store)

    stored = store.put_verified(f"sizes/{size}/run.log", path, {"run_id": "r1"})

    want = hashlib.sha256(data).hexdigest()
    assert (stored.size, stored.sha256) == (size, want)
    # no multipart, no second try
    assert ops == Counter({"PutObject": 1, "HeadObject": 1, "PUT sent": 1, "HEAD sent": 1})
    head = s3.client().head_object(
        Bucket=s3.bucket, Key=f"sizes/{size}/run.log", ChecksumMode="ENABLED"
    )
    assert head["ContentLength"] == size
    assert head["Metadata"]["sha256"] == want
    assert head.get("ChecksumSHA256") is not None  # the server checked and kept it
    body = s3.client().get_object(Bucket=s3.bucket, Key=f"sizes/{size}/run.log")["Body"].read()
    assert body == data


def test_a_streamed_file_that_no_longer_matches_its_hash_is_refused(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes streamed are not the bytes hashed (the file was rewritten in between,
    same size, within the file system's timestamp granularity): the upload fails and
    says so. AWS and MinIO refuse the body against the SHA-256 sent with it; moto and
    s3rver store it, so fastflow hashes what it sends and compares."""
    store = _store(s3, tmp_path)
    path = tmp_path / "run.log"
    size = s3mod.SMALL_FILE + 1024
    path.write_bytes(b"a" * size)
    hashed = hashlib.sha256(b"b" * size).hexdigest()  # what the file held when hashed
    monkeypatch.setattr(s3mod, "sha256_of", lambda p: (size, hashed))

    with pytest.raises(ArchiveError, match="changed while it was uploaded"):
        store.put_verified("refused/run.log", path, {"run_id": "r1"})


@pytest.mark.parametrize("checksum", ["sha256", "none"])
def test_a_streamed_upload_cut_off_midway_is_sent_again_whole(
    s3: S3Env, tmp_path: Path, checksum: str
) -> None:
    """The proxy drops the first PutObject after 1 MiB of its body: botocore rewinds the
    file and sends it again; what was counted of the first attempt is forgotten, so the
    second one verifies. With ``S3_CHECKSUM=none`` botocore also reads the body for the
    request signature before sending it."""
    env = {k.lower(): v for k, v in s3.env().items()}
    store = s3mod.S3Store(load_settings(**env, data_dir=tmp_path / "data", s3_checksum=checksum))
    path = tmp_path / "run.log"
    data = os.urandom(s3mod.SMALL_FILE * 2)
    path.write_bytes(data)
    s3.proxy.drop(times=1, match=lambda method, _: method == "PUT", after_bytes=1 << 20)
    ops = _operations(store)

    stored = store.put_verified(f"retried/{checksum}/run.log", path, {"run_id": "r1"})

    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert (ops["PutObject"], ops["PUT sent"]) == (1, 2)  # one call, retried by botocore
    body = s3.client().get_object(Bucket=s3.bucket, Key=f"retried/{checksum}/run.log")
    assert body["Body"].read() == data


def test_a_file_that_grows_during_its_upload_is_reported_and_the_next_uploads_verify(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines appended after the hash: the object holds exactly the bytes that were
    hashed, the upload is reported as changed (the file is kept for the next pass), and
    the next uploads on the same store verify."""
    store = _store(s3, tmp_path)
    path = tmp_path / "run.log"
    first = os.urandom(s3mod.SMALL_FILE + 4096)
    path.write_bytes(first)
    real = s3mod.sha256_of

    def hash_then_append(p: Path) -> tuple[int, str]:
        result = real(p)
        with p.open("ab") as f:
            f.write(b"a line written while the upload ran\n" * 1000)
        return result

    monkeypatch.setattr(s3mod, "sha256_of", hash_then_append)
    with pytest.raises(ArchiveError, match="changed while it was uploaded"):
        store.put_verified("grew/run.log", path, {"run_id": "r1"})
    monkeypatch.setattr(s3mod, "sha256_of", real)
    sent = s3.client().get_object(Bucket=s3.bucket, Key="grew/run.log")["Body"].read()
    assert sent == first

    other = tmp_path / "other.log"
    other.write_bytes(os.urandom(s3mod.SMALL_FILE + 1))
    for i in range(3):
        stored = store.put_verified(f"after/{i}.log", other, {"run_id": "r2"})
        assert stored.size == other.stat().st_size


def test_the_request_body_ends_at_the_size_that_was_hashed(tmp_path: Path) -> None:
    """Whatever is appended meanwhile, the body is the first ``size`` bytes: its length,
    its end, and what reads return (a keep-alive connection must never carry bytes past
    the Content-Length); a rewind starts the count again; a jump is reported."""
    path = tmp_path / "run.log"
    path.write_bytes(b"x" * 1000)
    with path.open("rb") as f:
        body = s3mod._HashingReader(f, 1000, "run.log")
        with path.open("ab") as grow:
            grow.write(b"y" * 500)
        assert len(body) == 1000
        assert body.seek(0, os.SEEK_END) == 1000 and body.read(10) == b""
        assert body.seek(0) == 0
        assert body.read(600) + body.read() + body.read() == b"x" * 1000
        assert body.sent() == (
            1000,
            hashlib.sha256(b"x" * 1000).hexdigest(),
            hashlib.md5(b"x" * 1000).hexdigest(),
        )
        body.seek(0)
        body.read(100)
        assert body.sent() == (
            100,
            hashlib.sha256(b"x" * 100).hexdigest(),
            hashlib.md5(b"x" * 100).hexdigest(),
        )
        body.seek(500)
        body.read(100)
        assert body.sent() is None  # bytes 100-500 were never read: no claim about them


def test_small_reads_return_the_whole_file_up_to_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Empty, at the limit, over it; and a file that grew after ``fstat`` looked at it
    (read on to the limit: the bytes returned are the whole file, or None)."""
    path = tmp_path / "run.log"
    for size in (0, 20_000, s3mod.SMALL_FILE):
        data = os.urandom(size)
        path.write_bytes(data)
        assert s3mod.S3Store._read_small(path) == data
    path.write_bytes(os.urandom(s3mod.SMALL_FILE + 1))
    assert s3mod.S3Store._read_small(path) is None

    real_fstat = os.fstat

    def stale(fd: int) -> os.stat_result:  # what fstat said before the file grew
        st = real_fstat(fd)
        return os.stat_result((*st[:6], 100, *st[7:]))

    monkeypatch.setattr(os, "fstat", stale)
    grown = os.urandom(50_000)
    path.write_bytes(grown)
    assert s3mod.S3Store._read_small(path) == grown
    path.write_bytes(os.urandom(s3mod.SMALL_FILE + 10))
    assert s3mod.S3Store._read_small(path) is None


@pytest.mark.parametrize("held", [False, True], ids=["by-path", "held"])
def test_a_file_truncated_during_its_upload_fails_at_once_as_its_own_failure(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: bool
) -> None:
    """A log cut short after it was hashed (``copytruncate``): each attempt stops at the
    end of the file instead of leaving the server waiting for the announced bytes (a
    read timeout, three times, blamed on the server and opening the pass's circuit);
    the failure is the file's own (``FileChanged``: kept), not a connection failure,
    and the next upload verifies. ``held``: as the pass uploads, through the held run
    folder (``/proc/self/fd/N``): the message still names the file (a review found the
    descriptor's number there)."""
    from fastflow.lifecycle.executor import upload_held

    store = _store(s3, tmp_path)
    logs_root = tmp_path / "logs"
    path = logs_root / "p" / "r" / "run.log"
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(s3mod.SMALL_FILE + 4096))
    real = s3mod.sha256_of

    def hash_then_truncate(p: Path) -> tuple[int, str]:
        result = real(p)
        os.truncate(p, 1 << 20)
        return result

    monkeypatch.setattr(s3mod, "sha256_of", hash_then_truncate)
    ops = _operations(store)
    with pytest.raises(FileChanged, match=r"^run\.log shrank while it was uploaded") as err:
        if held:
            upload_held(logs_root, store, "shrank/run.log", path, {"run_id": "r1"})
        else:
            store.put_verified("shrank/run.log", path, {"run_id": "r1"})
    assert not err.value.connection_level and not err.value.timed_out
    assert ops["PutObject"] == 1 and ops["PUT sent"] <= 3  # botocore's own attempts only
    monkeypatch.setattr(s3mod, "sha256_of", real)
    other = tmp_path / "other.log"
    other.write_bytes(os.urandom(s3mod.SMALL_FILE + 1))
    assert store.put_verified("after/other.log", other, {}).size == other.stat().st_size
