"""``S3Store.put_verified`` by file size, against the real S3 server: small files are one
PutObject of the bytes read, files up to the multipart threshold one PutObject streamed
from the open file with the SHA-256 computed beforehand (and the bytes sent hashed
again); each is verified (by HEAD, or by the PutObject's answer:
``test_put_answers.py``)."""

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


def _store(s3: S3Env, tmp_path: Path, **settings: Any) -> s3mod.S3Store:
    """A store whose probe of the server's checksum checks is done (the operations and
    hashes counted in these tests are the uploads')."""
    env = {k.lower(): v for k, v in s3.env().items()}
    store = s3mod.S3Store(load_settings(**env, data_dir=tmp_path / "data", **settings))
    store.server_checks_sha256()
    return store


def _object(s3: S3Env, key: str) -> bytes:
    return bytes(s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read())


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


def _expect_headers(store: s3mod.S3Store) -> list[str | None]:
    """The ``Expect`` header of every PUT attempt the store's client sends from now on."""
    expects: list[str | None] = []

    def seen(request: Any, **_: Any) -> None:
        if request.method == "PUT":
            value = request.headers.get("Expect")
            expects.append(value.decode() if isinstance(value, bytes) else value)

    store.client.meta.events.register("before-send.s3", seen)
    return expects


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


def test_small_bodies_go_without_waiting_for_100_continue_and_streamed_ones_wait(
    s3: S3Env, tmp_path: Path
) -> None:
    """A small file's PutObject is sent whole at once (no ``Expect: 100-continue`` round
    trip); a file streamed from disk still asks the server first. Both are stored."""
    store = _store(s3, tmp_path)
    expects = _expect_headers(store)
    for size in (20_000, s3mod.SMALL_FILE + 1):
        path = tmp_path / f"{size}.log"
        data = os.urandom(size)
        path.write_bytes(data)
        store.put_verified(f"expect/{size}.log", path, {"run_id": "r1"})
        assert _object(s3, f"expect/{size}.log") == data
    assert expects == [None, "100-continue"]


def test_a_small_put_retried_after_a_server_error_still_goes_without_100_continue(
    s3: S3Env, tmp_path: Path
) -> None:
    """botocore sends a retry with the first attempt's headers: the dropped ``Expect``
    stays dropped, and the retry's body is whole (the object is stored)."""
    store = _store(s3, tmp_path)
    expects = _expect_headers(store)
    s3.proxy.fail(500, times=1, match=lambda method, _: method == "PUT")
    path = tmp_path / "run.log"
    data = os.urandom(20_000)
    path.write_bytes(data)
    store.put_verified("expect/retried.log", path, {"run_id": "r1"})
    assert expects == [None, None]
    assert [r.status for r in s3.proxy.requests if r.method == "PUT"][-2:] == [500, 200]
    assert _object(s3, "expect/retried.log") == data


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
    store = _store(s3, tmp_path, s3_checksum=checksum)
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


class _Counted:
    """A hash object that counts the bytes it is given."""

    def __init__(self, real: Any, name: str, seen: Counter[str]) -> None:
        self._real, self._name, self._seen = real, name, seen

    def update(self, data: bytes) -> None:
        self._seen[self._name] += len(data)
        self._real.update(data)

    def digest(self) -> bytes:
        return bytes(self._real.digest())

    def hexdigest(self) -> str:
        return str(self._real.hexdigest())


def hashed_bytes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Bytes hashed by the archive's upload code from now on, per algorithm."""
    from types import SimpleNamespace

    from fastflow.archive import store as store_mod

    seen: Counter[str] = Counter()

    def counting(name: str) -> Any:
        def make(data: bytes = b"", **kw: Any) -> _Counted:
            h = _Counted(getattr(hashlib, name)(**kw), name, seen)
            if data:
                h.update(data)
            return h

        return make

    fake = SimpleNamespace(sha256=counting("sha256"), md5=counting("md5"))
    monkeypatch.setattr(s3mod, "hashlib", fake)
    monkeypatch.setattr(store_mod, "hashlib", fake)
    return seen


def _learn_etags(store: s3mod.S3Store, tmp_path: Path) -> None:
    """One small upload: its verification shows what the server's ETags are."""
    small = tmp_path / "small.log"
    small.write_bytes(b"a small log\n")
    store.put_verified("learn/small.log", small, {})


def test_a_mid_size_file_is_hashed_once_where_the_servers_etag_proves_what_it_stored(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until a verification has shown the server's ETags to be MD5s of what it stored,
    a file above ``SMALL_FILE`` is hashed again as it is sent; from then on its SHA-256
    and MD5 are taken in one read before the upload and the ETag in the PutObject's
    answer proves the rest (without a HEAD: the first upload's showed that the server
    stores what its answers describe)."""
    store = _store(s3, tmp_path)
    path = tmp_path / "run.log"
    size = 3 * s3mod.SMALL_FILE // 2
    data = os.urandom(size)
    path.write_bytes(data)
    seen = hashed_bytes(monkeypatch)

    store.put_verified("once/first.log", path, {})  # nothing known of the ETags yet
    assert (seen["sha256"], seen["md5"]) == (2 * size, size)
    seen.clear()
    ops = _operations(store)
    stored = store.put_verified("once/second.log", path, {})
    assert (seen["sha256"], seen["md5"]) == (size, size)
    assert ops == Counter({"PutObject": 1, "PUT sent": 1})
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert _object(s3, "once/second.log") == data


def test_without_the_etag_check_a_mid_size_file_is_always_hashed_as_it_is_sent(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(s3, tmp_path, s3_verify_etag=False)
    _learn_etags(store, tmp_path)
    path = tmp_path / "run.log"
    size = s3mod.SMALL_FILE + 4096
    path.write_bytes(os.urandom(size))
    seen = hashed_bytes(monkeypatch)
    store.put_verified("off/run.log", path, {})
    assert seen["sha256"] == 2 * size


def test_with_md5_etags_a_file_rewritten_between_hash_and_send_is_refused(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file holds other bytes than were hashed (rewritten, same size, within the
    timestamp granularity) and moto keeps the SHA-256 it is sent: the ETag, the MD5 of
    what the server stored, is not the MD5 that was hashed."""
    store = _store(s3, tmp_path)
    _learn_etags(store, tmp_path)
    path = tmp_path / "run.log"
    size = s3mod.SMALL_FILE + 1024
    path.write_bytes(b"a" * size)
    then = b"b" * size  # what the file held when it was hashed
    hashed = (size, hashlib.sha256(then).hexdigest(), hashlib.md5(then).hexdigest())
    monkeypatch.setattr(s3mod, "_sha256_and_md5", lambda p: hashed)

    with pytest.raises(ArchiveError, match=r"ETag .* is [0-9a-f]{32}, not [0-9a-f]{32}"):
        store.put_verified("rewritten/run.log", path, {"run_id": "r1"})


def test_with_md5_etags_a_file_truncated_after_its_hash_fails_as_its_own_failure(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(s3, tmp_path)
    _learn_etags(store, tmp_path)
    path = tmp_path / "run.log"
    path.write_bytes(os.urandom(s3mod.SMALL_FILE + 4096))
    real = s3mod._sha256_and_md5

    def hash_then_truncate(p: Path) -> tuple[int, str, str]:
        result = real(p)
        os.truncate(p, 1 << 20)
        return result

    monkeypatch.setattr(s3mod, "_sha256_and_md5", hash_then_truncate)
    with pytest.raises(FileChanged, match=r"^run\.log shrank while it was uploaded"):
        store.put_verified("shrank/run.log", path, {"run_id": "r1"})


def test_an_etag_that_stops_being_an_md5_has_the_file_sent_again_hashed_as_sent(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's ETags were MD5s, then are not (the bucket's default encryption was
    switched to SSE-KMS, say): the upload that counted on the ETag proves nothing, so it
    is made once more, hashing what is sent; the next ones hash as they send at once."""
    store = _store(s3, tmp_path)
    _learn_etags(store, tmp_path)
    s3.proxy.opaque_etag()
    path = tmp_path / "run.log"
    size = s3mod.SMALL_FILE + 4096
    data = os.urandom(size)
    path.write_bytes(data)
    seen = hashed_bytes(monkeypatch)
    ops = _operations(store)

    stored = store.put_verified("opaque/first.log", path, {})
    assert (ops["PutObject"], ops["HeadObject"]) == (2, 2)
    assert seen["sha256"] == 3 * size  # the read before, then the read and the send again
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    ops.clear()
    seen.clear()
    store.put_verified("opaque/second.log", path, {})
    assert (ops["PutObject"], ops["HeadObject"]) == (1, 1)
    assert seen["sha256"] == 2 * size
    body = s3.client().get_object(Bucket=s3.bucket, Key="opaque/second.log")["Body"].read()
    assert body == data


def test_where_etags_are_not_md5s_a_rewritten_file_is_caught_by_hashing_what_is_sent(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ETag to prove the body (and moto keeps the SHA-256 it is sent): the upload
    made again with the bytes hashed as they are sent finds they are not those hashed."""
    store = _store(s3, tmp_path)
    _learn_etags(store, tmp_path)
    s3.proxy.opaque_etag()
    path = tmp_path / "run.log"
    size = s3mod.SMALL_FILE + 1024
    path.write_bytes(b"a" * size)
    then = b"b" * size
    sha = hashlib.sha256(then).hexdigest()
    monkeypatch.setattr(
        s3mod, "_sha256_and_md5", lambda p: (size, sha, hashlib.md5(then).hexdigest())
    )
    monkeypatch.setattr(s3mod, "sha256_of", lambda p: (size, sha))
    ops = _operations(store)

    with pytest.raises(ArchiveError, match="changed while it was uploaded"):
        store.put_verified("opaque/rewritten.log", path, {"run_id": "r1"})
    assert ops["PutObject"] == 2


def _fresh(s3: S3Env, tmp_path: Path, **settings: Any) -> s3mod.S3Store:
    """A store that knows nothing of the server yet."""
    env = {k.lower(): v for k, v in s3.env().items()}
    return s3mod.S3Store(load_settings(**env, data_dir=tmp_path / "data", **settings))


def test_a_server_that_checks_the_sha256_is_found_out_once_and_nothing_is_stored(
    s3: S3Env, tmp_path: Path
) -> None:
    """One part of a multipart upload with a wrong SHA-256, then the upload aborted: a
    server that checks refuses the part; nothing is left in the bucket either way."""
    s3.proxy.check_sha256()
    store = _fresh(s3, tmp_path)
    s3.proxy.clear_requests()
    assert store.server_checks_sha256() and store.server_checks_sha256()
    assert [(r.method, r.status) for r in s3.proxy.requests] == [
        ("POST", 200),
        ("PUT", 400),
        ("DELETE", 204),
    ]
    s3.proxy.clear()
    moto = _fresh(s3, tmp_path)
    assert not moto.server_checks_sha256()  # moto keeps whatever it is sent
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])]
    assert not [k for k in keys if ".fastflow-probe" in k]
    assert not client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads")


def test_a_probe_the_server_refuses_means_the_sha256_is_not_trusted_to_be_checked(
    s3: S3Env, tmp_path: Path
) -> None:
    s3.proxy.check_sha256()
    s3.proxy.fail(403, times=1, match=lambda method, _: method == "POST")
    store = _fresh(s3, tmp_path)
    assert not store.server_checks_sha256()
    path = tmp_path / "run.log"
    data = os.urandom(s3mod.SMALL_FILE + 1)
    path.write_bytes(data)
    assert (
        store.put_verified("unprobed/run.log", path, {}).sha256 == hashlib.sha256(data).hexdigest()
    )
    env = {k.lower(): v for k, v in s3.env().items()}
    off = s3mod.S3Store(load_settings(**env, data_dir=tmp_path / "d", s3_checksum="none"))
    s3.proxy.clear_requests()
    assert not off.server_checks_sha256() and s3.proxy.requests == []  # nothing to check


def test_a_probe_that_does_not_reach_the_server_is_made_again_later(
    s3: S3Env, tmp_path: Path
) -> None:
    s3.proxy.check_sha256()
    store = _fresh(s3, tmp_path)
    s3.proxy.stop()
    try:
        assert not store.server_checks_sha256()
    finally:
        s3.proxy.start()
    assert store.server_checks_sha256()


def test_on_a_server_that_checks_a_file_is_hashed_once_with_sha256_alone(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server refuses bytes that do not match the SHA-256 computed before the
    upload, so neither a second SHA-256 as they are sent nor an MD5 for the ETag is
    needed: each byte is hashed once."""
    s3.proxy.check_sha256()
    store = _store(s3, tmp_path)
    assert store.server_checks_sha256()
    path = tmp_path / "run.log"
    size = 3 * s3mod.SMALL_FILE // 2
    data = os.urandom(size)
    path.write_bytes(data)
    small = tmp_path / "small.log"
    small.write_bytes(b"x" * 20_000)
    seen = hashed_bytes(monkeypatch)
    ops = _operations(store)

    stored = store.put_verified("checked/run.log", path, {})
    store.put_verified("checked/small.log", small, {})

    assert (seen["sha256"], seen["md5"]) == (size + 20_000, 0)
    # the second is confirmed by the SHA-256 the checking server echoed in its answer
    assert ops == Counter({"PutObject": 2, "HeadObject": 1, "PUT sent": 2, "HEAD sent": 1})
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert _object(s3, "checked/run.log") == data


def test_on_a_server_that_checks_a_rewritten_file_or_a_changed_body_is_refused(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.proxy.check_sha256()
    store = _store(s3, tmp_path)
    path = tmp_path / "run.log"
    size = s3mod.SMALL_FILE + 1024
    path.write_bytes(b"a" * size)
    monkeypatch.setattr(
        s3mod, "sha256_of", lambda p: (size, hashlib.sha256(b"b" * size).hexdigest())
    )
    refused = r"^the S3 server refused run\.log: the bytes it received do not match the SHA-256"
    with pytest.raises(ArchiveError, match=refused):
        store.put_verified("checked/rewritten.log", path, {})
    monkeypatch.undo()

    s3.proxy.corrupt_body(times=1, match=lambda method, _: method == "PUT")
    with pytest.raises(ArchiveError, match=refused):
        store.put_verified("checked/on-the-way.log", path, {})
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])]
    assert not [k for k in keys if k.startswith("checked/")]
    assert store.put_verified("checked/after.log", path, {}).size == size
