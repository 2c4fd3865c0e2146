"""The cost of a successful run's end on the notification path (``notify.after_run`` for a
SUCCESS with no incident open), with the recovery re-send check (twentieth session:
one more query, in the incident transaction, for the pipeline's incident closed last)
against the same call for a pipeline with ``"notify": {"on_recovery": false}``, which
skips that query and does everything else alike.

Both channels are enabled (nothing is sent: a healthy pipeline's success announces
nothing). ``BENCH_REPEAT`` (5) interleaved rounds of ``BENCH_CALLS`` (500) calls each,
order alternating; median [min-max] per call and the per-round ratio. Not a goal of
issue 14: a figure for a path every run takes.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from goals import ratios, spread  # noqa: E402

REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
CALLS = int(os.environ.get("BENCH_CALLS", "500"))


def main() -> dict[str, Any]:
    from fastflow import notify
    from fastflow.config import load_settings
    from fastflow.context import bootstrap
    from fastflow.db.models import RunStatus
    from fastflow.runs import store

    with tempfile.TemporaryDirectory(prefix="ff-bench-notify-") as tmp:
        root = Path(tmp)
        for name, config in (("etl", None), ("quiet", '{"notify": {"on_recovery": false}}')):
            (root / "pipelines" / name).mkdir(parents=True)
            (root / "pipelines" / name / "main.py").write_text("print('ok')\n")
            if config:
                (root / "pipelines" / name / "pipeline.json").write_text(config)
        ctx = bootstrap(
            load_settings(
                _env_file=None,
                database_url=f"sqlite:///{root / 'ff.db'}",
                data_dir=root,
                logs_dir=root / "logs",
                pipelines_dir=root / "pipelines",
                email_enabled=True,
                smtp_host="127.0.0.1",
                smtp_port=9,
                smtp_from="fastflow@example.org",
                email_recipients="ops@example.org",
                teams_enabled=True,
                teams_webhook_url="http://127.0.0.1:9/webhook/bench",
            )
        )
        runs = {}
        for label, name in (("with", "etl"), ("without", "quiet")):
            run = store.create(ctx.db, name, "manual", pid=os.getpid())
            store.finish(ctx.db, run.id, RunStatus.SUCCESS, 0, 0, None)
            runs[label] = run.id
        times: dict[str, list[float]] = {"with": [], "without": []}
        for rnd in range(REPEAT):
            for name in ("with", "without") if rnd % 2 == 0 else ("without", "with"):
                t0 = time.perf_counter()
                for _ in range(CALLS):
                    assert notify.after_run(ctx, runs[name], "SUCCESS", True).kind is None
                times[name].append((time.perf_counter() - t0) / CALLS * 1000)
        ctx.db.dispose()
    per = ratios(times["with"], times["without"])
    print(
        f"notify.after_run of a SUCCESS, {REPEAT} interleaved rounds of {CALLS} (load "
        f"{os.getloadavg()[0]:.1f}): with the recovery re-send check "
        f"{spread(times['with'], '.3f')} ms, without (on_recovery false) "
        f"{spread(times['without'], '.3f')} ms; ratio {spread(per, '.3f')}"
    )
    return {"times_ms": times, "ratio": per, "goals": []}


if __name__ == "__main__":
    main()
