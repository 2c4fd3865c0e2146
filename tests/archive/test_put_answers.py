"""An upload confirmed by the PutObject's answer instead of a HEAD, against the real S3
server behind the fault proxy: only once a HEAD in the same pass has found an object
exactly as its answer described it, and only when the answer proves the bytes (an ETag
that is the MD5 of the bytes sent). Anything else still gets its HEAD."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fastflow.archive import s3 as s3mod
from fastflow.errors import ArchiveError, ObjectMissing
from tests.archive.test_upload_paths import _fresh as _store
from tests.archive.test_upload_paths import _object
from tests.harness.fixtures import S3Env


def _log(tmp_path: Path, name: str, data: bytes | None = None) -> Path:
    path = tmp_path / name
    path.write_bytes(data if data is not None else f"the log of {name}\n".encode() * 500)
    return path


def _heads(s3: S3Env) -> int:
    """HEADs of objects the proxy has answered since the last ``clear_requests``."""
    return len(s3.proxy.seen("HEAD", f"/{s3.bucket}/"))


def test_a_pass_heads_its_first_upload_and_trusts_the_answers_after_it(
    s3: S3Env, tmp_path: Path
) -> None:
    store = _store(s3, tmp_path)
    store.begin_pass()
    s3.proxy.clear_requests()
    for i in range(4):
        store.put_verified(f"answers/{i}/run.log", _log(tmp_path, f"{i}.log"), {"run_id": f"{i}"})
    assert _heads(s3) == 1
    for i in range(4):
        assert _object(s3, f"answers/{i}/run.log") == _log(tmp_path, f"{i}.log").read_bytes()

    store.begin_pass()  # the next pass: its first upload is confirmed by a HEAD again
    s3.proxy.clear_requests()
    store.put_verified("answers/4/run.log", _log(tmp_path, "4.log"), {})
    store.put_verified("answers/5/run.log", _log(tmp_path, "5.log"), {})
    assert _heads(s3) == 1


def test_a_body_changed_on_the_way_after_the_answers_are_trusted_is_refused(
    s3: S3Env, tmp_path: Path
) -> None:
    """The server's ETag in its answer is the MD5 of what it received, not of what was
    sent: the upload gets a HEAD, and the HEAD's ETag shows the damage."""
    store = _store(s3, tmp_path)
    store.put_verified("trusted/first.log", _log(tmp_path, "first.log"), {})
    s3.proxy.corrupt_body(times=1, match=lambda method, _: method == "PUT")
    s3.proxy.clear_requests()
    with pytest.raises(ArchiveError, match=r"ETag .* not [0-9a-f]{32}, the MD5 of the bytes sent"):
        store.put_verified("trusted/damaged.log", _log(tmp_path, "damaged.log"), {})
    assert _heads(s3) == 1


def test_a_put_acknowledged_without_an_etag_after_the_answers_are_trusted_gets_a_head(
    s3: S3Env, tmp_path: Path
) -> None:
    """A gateway answers 200 without passing the PutObject on: its answer proves nothing,
    and the HEAD finds no object."""
    store = _store(s3, tmp_path)
    store.put_verified("trusted/first.log", _log(tmp_path, "first.log"), {})
    s3.proxy.fail(200, times=1, match=lambda method, _: method == "PUT", body="")
    with pytest.raises(ObjectMissing, match="does not exist"):
        store.put_verified("trusted/lost.log", _log(tmp_path, "lost.log"), {})


def test_an_answer_whose_etag_is_not_an_md5_gets_a_head(s3: S3Env, tmp_path: Path) -> None:
    store = _store(s3, tmp_path)
    store.put_verified("trusted/first.log", _log(tmp_path, "first.log"), {})
    s3.proxy.opaque_etag(match=lambda method, _: method == "PUT")
    s3.proxy.clear_requests()
    path = _log(tmp_path, "second.log")
    stored = store.put_verified("trusted/second.log", path, {})
    assert _heads(s3) == 1
    assert stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_server_that_does_not_keep_the_metadata_never_has_its_answers_trusted(
    s3: S3Env, tmp_path: Path
) -> None:
    """Its answers' ETags are right, but every HEAD shows the SHA-256 metadata missing:
    no upload is confirmed, however many are made."""
    s3.proxy.hide_metadata(match=lambda method, _: method == "HEAD")
    store = _store(s3, tmp_path)
    s3.proxy.clear_requests()
    for i in range(3):
        with pytest.raises(ArchiveError, match=r"checksum mismatch .* \(stored none"):
            store.put_verified(f"bare/{i}.log", _log(tmp_path, f"{i}.log"), {})
    assert _heads(s3) == 3


def test_without_the_etag_check_every_upload_gets_a_head(s3: S3Env, tmp_path: Path) -> None:
    """``S3_VERIFY_ETAG=false``: an ETag proves nothing, so each upload is HEAD-verified."""
    store = _store(s3, tmp_path, s3_verify_etag=False)
    s3.proxy.clear_requests()
    for i in range(3):
        store.put_verified(f"unproven/{i}.log", _log(tmp_path, f"{i}.log"), {})
    assert _heads(s3) == 3


def test_a_mid_size_file_after_the_answers_are_trusted_needs_no_head(
    s3: S3Env, tmp_path: Path
) -> None:
    """Streamed from the open file: the MD5 taken before the upload is what the answer's
    ETag must be."""
    store = _store(s3, tmp_path)
    store.put_verified("mid/first.log", _log(tmp_path, "first.log"), {})
    data = hashlib.sha256(b"seed").digest() * ((s3mod.SMALL_FILE + 4096) // 32)
    path = _log(tmp_path, "mid.log", data)
    s3.proxy.clear_requests()
    stored = store.put_verified("mid/run.log", path, {})
    assert _heads(s3) == 0
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert _object(s3, "mid/run.log") == data


def test_on_a_checking_server_an_answer_without_an_etag_gets_a_head(
    s3: S3Env, tmp_path: Path
) -> None:
    """The echoed SHA-256 of a server that checks it is not enough when the answer has no
    ETag: a gateway may pass the checksum header back without storing anything."""
    s3.proxy.check_sha256()
    store = _store(s3, tmp_path)
    assert store.server_checks_sha256()
    store.put_verified("checked/first.log", _log(tmp_path, "first.log"), {})
    s3.proxy.clear_requests()
    store.put_verified("checked/second.log", _log(tmp_path, "second.log"), {})
    assert _heads(s3) == 0  # confirmed by the checksum it echoed
    s3.proxy.fail(200, times=1, match=lambda method, _: method == "PUT", body="")
    with pytest.raises(ObjectMissing, match="does not exist"):
        store.put_verified("checked/lost.log", _log(tmp_path, "lost.log"), {})


MD5 = hashlib.md5(b"x", usedforsecurity=False).hexdigest()
SHA = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(
    ("answer", "md5", "checks", "proves"),
    [
        ({"ETag": f'"{MD5}"'}, MD5, False, True),
        ({"ETag": f'"{MD5.upper()}"'}, MD5, False, True),
        ({}, MD5, False, False),
        ({"ETag": f'W/"{MD5}"'}, MD5, False, False),
        ({"ETag": f'"{MD5}-2"'}, MD5, False, False),
        ({"ETag": f'"{MD5}"', "ServerSideEncryption": "aws:kms"}, MD5, False, False),
        ({"ETag": f'"{MD5}"', "SSECustomerAlgorithm": "AES256"}, MD5, False, False),
        ({"ETag": f'"{MD5}"', "ServerSideEncryption": "AES256"}, MD5, False, True),
        ({"ETag": '"' + "0" * 32 + '"'}, MD5, False, False),
        ({"ETag": f'"{MD5}"'}, None, False, False),
        # a server that checks the SHA-256: its echo proves, with an ETag of any form...
        ({"ETag": '"opaque-kms-etag"', "ChecksumSHA256": "ECHO"}, None, True, True),
        # ...but not without an ETag, not a different echo, not an MD5 of other bytes
        ({"ChecksumSHA256": "ECHO"}, None, True, False),
        ({"ETag": '"opaque"', "ChecksumSHA256": "b3RoZXI="}, None, True, False),
        ({"ETag": '"' + "0" * 32 + '"', "ChecksumSHA256": "ECHO"}, MD5, True, False),
    ],
)
def test_which_answers_prove_the_bytes(
    s3: S3Env, tmp_path: Path, answer: dict[str, str], md5: str | None, checks: bool, proves: bool
) -> None:
    import base64

    store = _store(s3, tmp_path)
    store._server_checks = checks
    echo = base64.b64encode(bytes.fromhex(SHA)).decode()
    answer = {k: echo if v == "ECHO" else v for k, v in answer.items()}
    assert store._answer_proves(answer, SHA, md5) is proves


def test_a_mid_size_body_changed_on_the_way_after_the_answers_are_trusted_is_refused(
    s3: S3Env, tmp_path: Path
) -> None:
    """Once the server's ETags are known to be MD5s, a mid-size file is hashed before the
    upload only (SHA-256 and MD5 in one read): the answer's ETag is then the one proof of
    what arrived, and a flipped byte on the way makes it the MD5 of other bytes."""
    store = _store(s3, tmp_path)
    store.put_verified("mid/first.log", _log(tmp_path, "first.log"), {})
    data = hashlib.sha256(b"seed").digest() * ((s3mod.SMALL_FILE + 4096) // 32)
    path = _log(tmp_path, "mid.log", data)
    store.put_verified("mid/one.log", path, {})  # hashed once, confirmed by its answer
    s3.proxy.corrupt_body(times=1, match=lambda method, _: method == "PUT")
    with pytest.raises(ArchiveError, match=r"ETag .* the MD5 of the bytes sent"):
        store.put_verified("mid/two.log", path, {})


def test_a_compressed_upload_is_confirmed_by_its_answer_with_the_compressed_bytes(
    s3: S3Env, tmp_path: Path
) -> None:
    from fastflow.archive import compression

    store = _store(s3, tmp_path, s3_compression="gzip")
    data = b"a compressible line of a log\n" * 2000
    store.put_verified("gz/first.log", _log(tmp_path, "first.log", data), {})
    s3.proxy.clear_requests()
    stored = store.put_verified("gz/second.log", _log(tmp_path, "second.log", data), {})
    assert _heads(s3) == 0
    assert (stored.original_size, stored.encoding) == (len(data), "gzip")
    raw = _object(s3, "gz/second.log")
    assert hashlib.sha256(raw).hexdigest() == stored.sha256
    assert b"".join(compression.decompress(iter([raw]), "gzip", "gz/second.log")) == data


def test_a_put_whose_answer_is_lost_is_sent_again_and_confirmed_by_the_second_answer(
    s3: S3Env, tmp_path: Path
) -> None:
    """The object is stored but the connection breaks before its answer: botocore sends
    the PutObject again, and that answer confirms it. With every answer lost nothing is
    confirmed: the upload fails."""
    store = _store(s3, tmp_path)
    store.put_verified("lost/first.log", _log(tmp_path, "first.log"), {})
    s3.proxy.drop_answer(times=1, match=lambda method, _: method == "PUT")
    s3.proxy.clear_requests()
    path = _log(tmp_path, "second.log")
    store.put_verified("lost/second.log", path, {})
    assert [r.status for r in s3.proxy.seen("PUT")] == [0, 200]
    assert _heads(s3) == 0
    assert _object(s3, "lost/second.log") == path.read_bytes()

    s3.proxy.drop_answer(match=lambda method, _: method == "PUT")
    with pytest.raises(ArchiveError):
        store.put_verified("lost/third.log", _log(tmp_path, "third.log"), {})


def test_with_a_head_for_every_upload_an_acknowledged_but_lost_put_is_caught(
    s3: S3Env, tmp_path: Path
) -> None:
    """An outside audit: a gateway that answers a PUT with the right MD5 ETag and does
    not store it passes once the answers are trusted (documented). With
    ``S3_HEAD_EVERY_UPLOAD`` every upload gets its HEAD, and that one finds nothing."""
    store = _store(s3, tmp_path, s3_head_every_upload=True)
    s3.proxy.clear_requests()
    for i in range(3):
        store.put_verified(f"each/{i}.log", _log(tmp_path, f"{i}.log"), {})
    assert _heads(s3) == 3
    s3.proxy.swallow(times=1, match=lambda method, _: method == "PUT")
    with pytest.raises(ObjectMissing, match="does not exist"):
        store.put_verified("each/lost.log", _log(tmp_path, "lost.log"), {})
    # without the setting, the same answer is trusted (the documented window)
    trusting = _store(s3, tmp_path)
    trusting.put_verified("each/first.log", _log(tmp_path, "first.log"), {})
    s3.proxy.swallow(times=1, match=lambda method, _: method == "PUT")
    trusting.put_verified("each/lost-too.log", _log(tmp_path, "lost-too.log"), {})
    assert s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="each/lost")["KeyCount"] == 0
