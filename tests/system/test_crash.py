"""Guarantee 2: SIGKILL `fastflow cleanup` at many instants; no log is ever lost."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fastflow.config import load_settings
from fastflow.context import bootstrap
from tests.conftest import wait_until
from tests.harness.faultproxy import method_is
from tests.harness.fixtures import S3Env
from tests.seeding import keys, ledger, run_row, seed_run

RUNS = 36
KILLS = 10


def _object_sha(client: object, bucket: str, key: str) -> str | None:
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
    except Exception:
        return None
    return hashlib.sha256(body).hexdigest()


@pytest.mark.slow
def test_sigkill_at_random_instants_never_loses_a_log(
    ff_env: dict[str, str], s3: S3Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        **os.environ,
        **ff_env,
        **s3.env(),
        "LOG_RETENTION_RUNS": "1",
        "S3_MAX_CONCURRENCY": "4",
        "S3_READ_TIMEOUT": "5",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ctx = bootstrap(load_settings())
    from datetime import UTC, datetime, timedelta

    start = datetime.now(UTC) - timedelta(days=RUNS + 1)
    seeded = [
        seed_run(
            ctx,
            "crashy" if i % 2 else "Ärger",
            start + timedelta(days=i),
            log=f"run {i}\n".encode() * (50 + i * 37),
        )
        for i in range(RUNS)
    ]
    newest = {
        max((s for s in seeded if s.pipeline == p), key=lambda s: seeded.index(s)).id
        for p in ("crashy", "Ärger")
    }
    client = s3.client()
    rng = random.Random(20261126)
    s3.proxy.delay(0.03, match=method_is("PUT", "HEAD"))  # stretch the pass so kills land inside

    killed_mid_pass = 0
    for attempt in range(KILLS):
        s3.proxy.clear_requests()
        target = rng.randint(1, 60)
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastflow", "cleanup", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        wait_until(
            lambda proc=proc, target=target: (  # type: ignore[misc]
                len(s3.proxy.requests) >= target or proc.poll() is not None
            ),
            60,
            f"{target} S3 requests (attempt {attempt})",
        )
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_mid_pass += 1
        proc.communicate()
        # the invariant: every log is still local, or archived with the right SHA-256
        for run in seeded:
            if run.log.exists():
                assert run.log.read_bytes() == run.log_bytes
                continue
            key = f"pipeline-logs/{run.pipeline}/{run.id}/run.log"
            assert _object_sha(client, s3.bucket, key) == run.sha, (attempt, run.id)
        assert not [p for p in Path(ff_env["LOGS_DIR"]).rglob(".truncate-*")]

    assert killed_mid_pass >= KILLS // 2  # the kills really landed inside passes
    s3.proxy.clear()
    final = subprocess.run(
        [sys.executable, "-m", "fastflow", "cleanup", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert final.returncode == 0, final.stderr
    summary = json.loads(final.stdout)
    assert summary["backup_failures"] == 0
    entries = ledger(ctx)
    assert len(entries) == RUNS - 2
    for run in seeded:
        if run.id in newest:
            assert run.log.exists() and run_row(ctx, run.id) is not None
            continue
        assert not run.log.exists() and run_row(ctx, run.id) is None
        entry = entries[run.id]
        assert entry.local_deleted_at is not None and entry.log_sha256 == run.sha
        key = f"pipeline-logs/{run.pipeline}/{run.id}/run.log"
        assert _object_sha(client, s3.bucket, key) == run.sha
    # nothing archived twice: exactly one log and one metrics object per archived run
    assert len(keys(client, s3.bucket)) == 2 * (RUNS - 2)
    # however the passes were killed, the manifests list every entry, chained intact
    checked = subprocess.run(
        [sys.executable, "-m", "fastflow", "archive", "verify", "--manifests"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
