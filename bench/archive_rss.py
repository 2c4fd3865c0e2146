"""Peak memory while archiving one big log: ``S3Store.put_verified`` of a 100 MiB and a
1 GiB log-like file against a real S3 server (moto, subprocess on 127.0.0.1).

Each upload runs in a fresh child process; its peak RSS is the child's own ``VmHWM``
(``/proc/self/status``), read just before it exits. ``os.wait4``'s ``ru_maxrss`` is kept as
a cross-check only: Linux carries the peak RSS of the image that called ``exec`` into the
child's ``ru_maxrss``, so it reads at least the parent's peak (here: the parent that just
wrote the big file) whatever the child used. The moto server is another process and is not
counted. A baseline child does the same imports and a 1-byte ``put_verified``. The delta
over the baseline is the memory that the upload itself costs. Streaming bounds it by the
parts in flight, not by the size: a log may use every part slot of the store's transfer
manager (4 per ``S3_MAX_CONCURRENCY`` worker, 32 by default), so the delta grows until a
log has that many parts (~512 MiB by default) and is flat beyond (measured: 100 MiB
+15 MiB, 1 GiB +48 MiB, 2 GiB +51 MiB; with ``S3_MAX_CONCURRENCY=1`` +12 MiB for both
100 MiB and 1 GiB). moto keeps objects in its own process (and spills big
ones to temporary files): that is the server, not fastflow.

Sizes: ``BENCH_SIZES_MB`` (default "100,1024"; "20" with ``BENCH_QUICK=1``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

QUICK = os.environ.get("BENCH_QUICK") == "1"
SIZES_MB = [
    int(s) for s in os.environ.get("BENCH_SIZES_MB", "20" if QUICK else "100,1024").split(",")
]
BUCKET = "bench-rss"
MiB = 1024 * 1024
# the local file, plus moto's copies (uploaded parts and the completed object spill to
# temporary files), plus some room for everything else
DISK_FACTOR = 3
DISK_MARGIN = 512 * MiB
CHILD_FLAG = "--child"


# --- child: one upload, reports its own timings on stdout --------------------------------


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (VmHWM: peak RSS of this process image)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _child(path: str, key: str) -> None:
    """Run in a fresh interpreter: the same imports for the baseline and every size."""
    from fastflow.archive.s3 import S3Store
    from fastflow.config import load_settings

    settings = load_settings(_env_file=None)  # S3_* come from the environment
    store = S3Store(settings)
    after_setup_kib = _status_kib("VmHWM")
    meta = {"pipeline_name": "bench", "run_id": key.rsplit("/", 2)[-2], "status": "SUCCESS"}
    t0 = time.perf_counter()
    stored = store.put_verified(key, Path(path), meta)
    elapsed = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "size": stored.size,
                "elapsed_s": elapsed,
                "setup_hwm_kib": after_setup_kib,
                "peak_rss_kib": _status_kib("VmHWM"),
            }
        )
    )


# --- parent -------------------------------------------------------------------------------


def _write_log(path: Path, size: int) -> int:
    """Write exactly ``size`` bytes of varied, log-like lines; return the size."""
    levels = ("INFO", "INFO", "INFO", "DEBUG", "INFO", "WARNING", "INFO", "ERROR")
    sources = ("orders", "customers", "invoices", "stock", "shipments")
    written = 0
    i = 0
    with path.open("wb") as f:
        while written < size:
            lines = []
            for _ in range(20_000):
                sec = i // 50
                stamp = (
                    f"2025-03-{1 + sec // 86400 % 28:02d} {sec // 3600 % 24:02d}:"
                    f"{sec // 60 % 60:02d}:{sec % 60:02d}.{i * 20 % 1000:03d}"
                )
                lines.append(
                    f"[{stamp}] [{levels[i % 8]}] batch {i // 1000}: loaded {i % 977} rows "
                    f"from {sources[i % 5]} (offset {i * 131}, {i % 89 / 10:.1f} ms)\n"
                )
                i += 1
            chunk = "".join(lines).encode()
            if written + len(chunk) >= size:  # cut the last line short, keep a newline
                chunk = chunk[: size - written - 1] + b"\n"
            f.write(chunk)
            written += len(chunk)
    return written


def _run_child(path: Path, key: str, env: dict[str, str]) -> dict[str, Any]:
    """Start a child and wait for it with ``os.wait4``; its report (peaks in KiB)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, str(path), key],
            stdout=out,
            env=env,
            cwd=str(REPO_ROOT),
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"upload child failed with exit status {proc.returncode}")
        out.seek(0)
        report: dict[str, Any] = json.loads(out.read().decode().strip().splitlines()[-1])
    report["wait4_maxrss_kib"] = usage.ru_maxrss  # Linux: KiB; includes the parent's peak
    return report


def _mib(kib: float) -> float:
    return kib / 1024


def main() -> dict[str, Any]:
    from tests.harness.s3server import MotoS3Server

    results: dict[str, Any] = {"sizes": {}}
    with tempfile.TemporaryDirectory(prefix="ff-bench-rss-") as tmp, MotoS3Server() as server:
        import boto3

        root = Path(tmp)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]),
            "S3_BACKUP_ENABLED": "true",
            "S3_ENDPOINT_URL": server.url,
            "S3_BUCKET": BUCKET,
            "S3_ACCESS_KEY": server.access_key,
            "S3_SECRET_ACCESS_KEY": server.secret_key,
            "S3_REGION": server.region,
        }
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name=server.region,
        )
        client.create_bucket(Bucket=BUCKET)

        tiny = root / "tiny.log"
        tiny.write_bytes(b"x")
        base = _run_child(tiny, "bench/baseline/run.log", env)
        client.delete_object(Bucket=BUCKET, Key="bench/baseline/run.log")
        base_kib = base["peak_rss_kib"]
        results["baseline_peak_rss_mib"] = _mib(base_kib)
        results["baseline_setup_mib"] = _mib(base["setup_hwm_kib"])
        print(
            f"archive peak RSS: baseline child (imports + 1-byte upload) {_mib(base_kib):.0f} MiB"
            f" (after imports {_mib(base['setup_hwm_kib']):.0f} MiB; wait4 ru_maxrss "
            f"{_mib(base['wait4_maxrss_kib']):.0f} MiB, includes the parent's peak)"
        )

        for size_mb in SIZES_MB:
            size = size_mb * MiB
            free = shutil.disk_usage(root).free
            need = DISK_FACTOR * size + DISK_MARGIN
            if free < need:
                msg = (
                    f"skipped: needs ~{need / MiB:,.0f} MiB free disk in {root.parent} "
                    f"(file + moto's copies), only {free / MiB:,.0f} MiB free"
                )
                print(f"archive peak RSS, {size_mb} MiB: {msg}")
                results["sizes"][str(size_mb)] = {"skipped": msg}
                continue
            path = root / f"big-{size_mb}.log"
            t0 = time.perf_counter()
            actual = _write_log(path, size)
            write_s = time.perf_counter() - t0
            key = f"bench/size-{size_mb}/run.log"
            try:
                rep = _run_child(path, key, env)
            finally:
                client.delete_object(Bucket=BUCKET, Key=key)
                path.unlink()
            peak = _mib(rep["peak_rss_kib"])
            delta = peak - _mib(base_kib)
            rate = actual / MiB / rep["elapsed_s"]
            print(
                f"archive peak RSS, {size_mb:,} MiB log ({actual:,} bytes, written in "
                f"{write_s:.1f} s): peak {peak:.0f} MiB, delta over baseline {delta:+.0f} MiB "
                f"(upload + verify {rep['elapsed_s']:.1f} s, {rate:.0f} MiB/s; wait4 ru_maxrss "
                f"{_mib(rep['wait4_maxrss_kib']):.0f} MiB)"
            )
            results["sizes"][str(size_mb)] = {
                "bytes": actual,
                "peak_rss_mib": peak,
                "delta_mib": delta,
                "upload_s": rep["elapsed_s"],
                "wait4_maxrss_mib": _mib(rep["wait4_maxrss_kib"]),
                "mib_per_s": rate,
            }
    measured = [v["delta_mib"] for v in results["sizes"].values() if "delta_mib" in v]
    if len(measured) >= 2:
        spread = max(measured) - min(measured)
        results["delta_spread_mib"] = spread
        print(
            f"archive peak RSS: deltas {', '.join(f'{d:.0f}' for d in measured)} MiB; "
            f"spread {spread:.0f} MiB across sizes (the delta grows with the parts in "
            "flight, up to 4 per S3_MAX_CONCURRENCY worker, then stays flat)"
        )
    return results


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == CHILD_FLAG:
        _child(sys.argv[2], sys.argv[3])
    else:
        main()
