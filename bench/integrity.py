"""Integrity at scale: ``fastflow archive verify --manifests`` over ``BENCH_INTEGRITY_ENTRIES``
ledger entries (default 100,000; 10,000 with ``BENCH_QUICK=1``) and ``fastflow archive
rebuild-index`` of the same archive into an empty database, against a real S3 server (moto,
subprocess on 127.0.0.1), SQLite.

The ledger and the manifests are seeded directly (no cleanup passes): one manifest per
1,000 entries (2,000 object lines: log + metrics), chained by SHA-256 and uploaded in bulk;
the objects themselves are not needed (neither command reads them). Each command runs the
real CLI in a fresh child process that reports its own peak RSS (``VmHWM``). Baseline, in
the same kind of child: download and SHA-256 every manifest with boto3 (the S3 reading
both commands must do at least); ratios are against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

QUICK = os.environ.get("BENCH_QUICK") == "1"
ENTRIES = int(os.environ.get("BENCH_INTEGRITY_ENTRIES", "10000" if QUICK else "100000"))
PER_MANIFEST = 1000
BUCKET = "bench-integrity"
PREFIX = "pipeline-logs"

# a child: run the CLI (or the baseline) in this interpreter, then print its peak RSS
_CHILD = """
import json, sys, time
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
args = sys.argv[1:]
t0 = time.perf_counter()
code = 0
if args[0] == "--baseline":
    import hashlib, boto3
    from botocore.config import Config
    endpoint, key, secret, bucket, prefix = args[1:6]
    c = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                     aws_secret_access_key=secret, region_name="us-east-1",
                     config=Config(s3={"addressing_style": "path"}))
    n = 0
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            h = hashlib.sha256()
            for chunk in c.get_object(Bucket=bucket, Key=obj["Key"])["Body"].iter_chunks(65536):
                h.update(chunk)
            n += 1
    print(json.dumps({"manifests": n}))
else:
    from fastflow.cli import main
    try:
        main(args)
    except SystemExit as e:
        code = e.code or 0
elapsed = time.perf_counter() - t0
sys.stdout.flush()
print("BENCH " + json.dumps({"code": code, "seconds": elapsed, "hwm_kib": hwm()}), file=sys.stderr)
"""


def _child(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    marks = [line for line in proc.stderr.splitlines() if line.startswith("BENCH ")]
    if not marks:
        raise RuntimeError(f"{args[0]} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(marks[-1][6:]), proc.stdout


def _seed(ctx: Any, client: Any) -> int:
    """``ENTRIES`` ledger entries and their chained manifests; returns the manifest count."""
    from sqlalchemy import insert

    from fastflow.archive import manifests
    from fastflow.db.models import ArchivedRun, ArchiveManifest

    base = datetime(2026, 1, 1, tzinfo=UTC)
    previous: str | None = None
    count = 0
    for start in range(0, ENTRIES, PER_MANIFEST):
        rows: list[dict[str, Any]] = []
        lines: list[bytes] = []
        at = base + timedelta(minutes=count)
        key = f"{PREFIX}/_manifests/{at:%Y/%m/%d}/{count + 1}.jsonl"
        for i in range(start, min(ENTRIES, start + PER_MANIFEST)):
            rid = uuid.UUID(int=i + 1)
            pipeline = f"pipeline-{i % 20:02d}"
            row: dict[str, Any] = {
                "run_id": rid,
                "pipeline_name": pipeline,
                "status": "SUCCESS",
                "triggered_by": "schedule",
                "started_at": at - timedelta(days=1),
                "finished_at": at - timedelta(days=1) + timedelta(seconds=5),
                "exit_code": 0,
                "bucket": BUCKET,
                "reason": "archive_and_delete_run",
                "archived_at": at,
                "local_deleted_at": at,
                "manifest_key": key,
            }
            for which, name, size in (
                ("log", "run.log", 4096 + i % 977),
                ("metrics", "metrics.jsonl", 700),
            ):
                sha = hashlib.sha256(f"{rid}/{name}".encode()).hexdigest()
                row |= {
                    f"{which}_key": f"{PREFIX}/{pipeline}/{rid}/{name}",
                    f"{which}_size": size,
                    f"{which}_sha256": sha,
                    f"{which}_original_size": size,
                    f"{which}_original_sha256": sha,
                }
            rows.append(row)
            entry = ArchivedRun(**row)
            lines += [manifests.dump(line) for line in manifests.lines_of(entry)]
        objects = len(lines)
        body = b"".join(lines) + manifests.dump(manifests.trailer(previous, objects))
        digest = hashlib.sha256(body).hexdigest()
        client.put_object(Bucket=BUCKET, Key=key, Body=body, Metadata={"sha256": digest})
        with ctx.db.session() as s:
            s.execute(insert(ArchivedRun), rows)
            s.add(
                ArchiveManifest(
                    key=key,
                    pass_id=count + 1,
                    sha256=digest,
                    previous_sha256=previous,
                    count=objects,
                    size=len(body),
                    created_at=at,
                )
            )
        previous = digest
        count += 1
    return count


def main() -> dict[str, Any]:
    import boto3
    from tests.harness.s3server import MotoS3Server

    from fastflow.config import load_settings
    from fastflow.context import bootstrap

    out: dict[str, Any] = {"entries": ENTRIES}
    with tempfile.TemporaryDirectory(prefix="ff-bench-integrity-") as tmp, MotoS3Server() as server:
        root = Path(tmp)
        db = root / "data" / "fastflow.db"
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{db}",
            "DATA_DIR": str(root / "data"),
            "LOGS_DIR": str(root / "logs"),
            "PIPELINES_DIR": str(root / "pipelines"),
            "S3_BACKUP_ENABLED": "true",
            "S3_ENDPOINT_URL": server.url,
            "S3_BUCKET": BUCKET,
            "S3_ACCESS_KEY": server.access_key,
            "S3_SECRET_ACCESS_KEY": server.secret_key,
            "PYTHONPATH": str(REPO_ROOT),
        }
        (root / "pipelines").mkdir()
        client = boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name=server.region,
        )
        client.create_bucket(Bucket=BUCKET)
        settings = {k.lower(): v for k, v in env.items() if k.isupper() and k.lower() in _FIELDS}
        ctx = bootstrap(load_settings(**settings))
        t0 = time.perf_counter()
        out["manifests"] = _seed(ctx, client)
        out["seed_s"] = time.perf_counter() - t0
        ctx.db.dispose()

        base, _ = _child(
            ["--baseline", server.url, server.access_key, server.secret_key, BUCKET, PREFIX],
            env,
        )
        out["baseline_s"] = base["seconds"]
        out["baseline_rss_mib"] = base["hwm_kib"] / 1024

        verify, stdout = _child(["archive", "verify", "--manifests", "--json"], env)
        report = json.loads(stdout)
        out["verify_s"] = verify["seconds"]
        out["verify_rss_mib"] = verify["hwm_kib"] / 1024
        out["verify_ok"] = bool(report["ok"]) and verify["code"] == 0
        out["verify_objects"] = report["objects_listed"]
        out["verify_entries_per_s"] = ENTRIES / verify["seconds"]
        out["verify_ratio"] = verify["seconds"] / base["seconds"]

        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        rebuilt, stdout = _child(["archive", "rebuild-index", "--json"], env)
        report = json.loads(stdout)
        out["rebuild_s"] = rebuilt["seconds"]
        out["rebuild_rss_mib"] = rebuilt["hwm_kib"] / 1024
        out["rebuild_ok"] = bool(report["ok"]) and report["entries_created"] == ENTRIES
        out["rebuild_entries_per_s"] = ENTRIES / rebuilt["seconds"]
        out["rebuild_ratio"] = rebuilt["seconds"] / base["seconds"]
    print(
        f"verify --manifests over {ENTRIES:,} entries: {out['verify_s']:.1f} s "
        f"({out['verify_entries_per_s']:,.0f} entries/s), "
        f"peak RSS {out['verify_rss_mib']:.0f} MiB, "
        f"{out['verify_ratio']:.1f}x the download+hash baseline ({out['baseline_s']:.1f} s); "
        f"rebuild-index {out['rebuild_s']:.1f} s ({out['rebuild_entries_per_s']:,.0f} entries/s), "
        f"peak RSS {out['rebuild_rss_mib']:.0f} MiB"
    )
    return out


_FIELDS = {
    "database_url",
    "data_dir",
    "logs_dir",
    "pipelines_dir",
    "s3_backup_enabled",
    "s3_endpoint_url",
    "s3_bucket",
    "s3_access_key",
    "s3_secret_access_key",
}


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
