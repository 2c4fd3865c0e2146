"""Guarantee 4 for archiving: memory does not grow with the size of the log uploaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.fixtures import S3Env

_CHILD = """
import sys
from pathlib import Path
from fastflow.archive.s3 import S3Store
from fastflow.config import load_settings

url, bucket, key, secret, path = sys.argv[1:6]
store = S3Store(load_settings(s3_backup_enabled=True, s3_endpoint_url=url, s3_bucket=bucket,
                              s3_access_key=key, s3_secret_access_key=secret))
store.put_verified("mem/" + Path(path).name, Path(path), {"run_id": "x"})
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]))
"""


def _peak_kib(s3: S3Env, path: Path) -> int:
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            s3.direct_url,
            s3.bucket,
            s3.access_key,
            s3.secret_key,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip())


@pytest.mark.slow
@pytest.mark.parametrize(
    "blocks",
    [
        pytest.param(96, id="100MiB-multipart"),  # above the multipart threshold
        pytest.param(46, id="48MiB-one-put"),  # one PutObject streamed from the file
    ],
)
def test_archiving_a_large_log_uses_constant_memory(s3: S3Env, tmp_path: Path, blocks: int) -> None:
    small = tmp_path / "small.log"
    small.write_bytes(b"one line\n")
    big = tmp_path / "big.log"
    block = b"[2026-01-01 00:00:00.000] a line of a long-running pipeline's log\n" * 16384
    with big.open("wb") as f:
        for _ in range(blocks):  # ~1 MiB each
            f.write(block)
    baseline = _peak_kib(s3, small)
    peak = _peak_kib(s3, big)
    # buffering the upload would cost 48-200 MiB here; streaming from disk costs a few MiB
    assert (peak - baseline) / 1024 < 40, (baseline, peak)
    head = s3.client().head_object(Bucket=s3.bucket, Key="mem/big.log")
    assert head["ContentLength"] == big.stat().st_size
