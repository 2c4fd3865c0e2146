"""Compression ratio and speed per codec on log text, and archived-log tail read latency.

A ``BENCH_READ_MB`` (64; 16 with ``BENCH_QUICK=1``) log of realistic lines is compressed
with each codec (baseline: ``none``, a plain copy) and archived to a real S3 server
(moto); then the last 200 KB is read back through ``logreader.open_log`` — from local
disk (baseline) and from the archive for each codec.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.harness.s3server import MotoS3Server  # noqa: E402

from fastflow.archive import compression  # noqa: E402
from fastflow.archive.s3 import S3Store  # noqa: E402
from fastflow.config import load_settings  # noqa: E402
from fastflow.context import Context, bootstrap  # noqa: E402
from fastflow.db.models import ArchivedRun, PipelineRun  # noqa: E402
from fastflow.runs.readback import open_log  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
SIZE_MB = int(os.environ.get("BENCH_READ_MB", "16" if QUICK else "64"))
TAIL = 200 * 1024
REPEAT = 5


def _write_log(path: Path, size: int) -> None:
    with path.open("wb") as f:
        i = 0
        while f.tell() < size:
            block = b"".join(
                b"[2026-01-01 02:%02d:%02d.%03d] INFO etl.load: batch %d wrote %d rows to "
                b"warehouse.orders (%d ms)\n"
                % (j % 60, j % 60, j % 1000, j, j * 37 % 5000, j % 900)
                for j in range(i, i + 10000)
            )
            f.write(block)
            i += 10000


def _tail_ms(ctx: Context, run_id: uuid.UUID, run: PipelineRun | None) -> float:
    times = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        data = b"".join(open_log(ctx, run_id, run, TAIL).chunks)
        times.append((time.perf_counter() - t0) * 1000)
        assert len(data) == TAIL
    return statistics.median(times)


def main() -> dict[str, Any]:
    out: dict[str, Any] = {"size_mb": SIZE_MB, "codecs": {}}
    with tempfile.TemporaryDirectory() as tmp, MotoS3Server() as server:
        root = Path(tmp)
        log = root / "run.log"
        _write_log(log, SIZE_MB * 1024 * 1024)
        size = log.stat().st_size
        t0 = time.perf_counter()
        shutil.copyfile(log, root / "copy")
        copy_s = time.perf_counter() - t0
        out["copy_mb_s"] = size / 1048576 / copy_s
        base = dict(
            database_url=f"sqlite:///{root / 'ff.db'}",
            logs_dir=str(root / "logs"),
            data_dir=str(root / "data"),
            s3_backup_enabled=True,
            s3_endpoint_url=server.url,
            s3_bucket="bench-read",
            s3_access_key=server.access_key,
            s3_secret_access_key=server.secret_key,
        )
        ctx = bootstrap(load_settings(**base))
        import boto3

        boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name=server.region,
        ).create_bucket(Bucket="bench-read")
        # local tail (baseline)
        rid = uuid.uuid4()
        local = ctx.settings.logs_root / "bench" / str(rid) / "run.log"
        local.parent.mkdir(parents=True)
        shutil.copyfile(log, local)
        row = PipelineRun(
            id=rid,
            pipeline_name="bench",
            status="SUCCESS",
            triggered_by="cli",
            started_at=datetime.now(UTC),
            log_file=f"bench/{rid}/run.log",
        )
        out["local_tail_ms"] = _tail_ms(ctx, rid, row)
        for codec in ("none", "gzip", "zstd"):
            settings = load_settings(**base, s3_compression=codec)
            cctx = Context(settings=settings, db=ctx.db)
            store = S3Store(settings)
            if codec != "none":
                t0 = time.perf_counter()
                packed = compression.compress_file(log, root / f"c.{codec}", codec)
                comp_s = time.perf_counter() - t0
                stored = packed.stored_size
            else:
                comp_s, stored = copy_s, size
            arid = uuid.uuid4()
            key = store.key_for("bench", str(arid), "run.log")
            t0 = time.perf_counter()
            obj = store.put_verified(key, log, {"run_id": str(arid)})
            upload_s = time.perf_counter() - t0
            with ctx.db.session() as s:
                s.add(
                    ArchivedRun(
                        run_id=arid,
                        pipeline_name="bench",
                        status="SUCCESS",
                        triggered_by="cli",
                        started_at=datetime.now(UTC),
                        bucket="bench-read",
                        log_key=obj.key,
                        log_size=obj.size,
                        log_sha256=obj.sha256,
                        encoding=obj.encoding,
                        log_original_size=obj.original_size,
                        log_original_sha256=obj.original_sha256,
                        reason="bench",
                    )
                )
            out["codecs"][codec] = {
                "ratio": size / stored,
                "compress_mb_s": size / 1048576 / comp_s,
                "archive_s": upload_s,
                "tail_ms": _tail_ms(cctx, arid, None),
            }
        ctx.db.dispose()
    lines = [
        f"archived-log reads, {SIZE_MB} MiB log: local tail(200 KB) {out['local_tail_ms']:.1f} ms"
    ]
    for codec, v in out["codecs"].items():
        lines.append(
            f"{codec}: ratio {v['ratio']:.1f}x, compress {v['compress_mb_s']:.0f} MiB/s, "
            f"archive (compress+upload+verify) {v['archive_s']:.2f} s, "
            f"tail from archive {v['tail_ms']:.1f} ms"
        )
    print("; ".join(lines))
    return out


if __name__ == "__main__":
    main()
