"""How a pipeline's output reaches its log (``runs.child_output``): both streams as whole
lines in the order they were completed, so that a line of one stream never lands inside
a line of the other — and a secret printed in pieces is masked even when the other
stream was written between the pieces (outside audit, 2026-12-04: it reached the log in
two unmasked pieces)."""

from __future__ import annotations

import re

from fastflow.context import Context
from fastflow.db.models import RunStatus
from fastflow.runs import secret_store
from fastflow.runs.runner import run_pipeline
from tests.conftest import MakePipeline
from tests.runs.test_runner import _payloads

TOKEN = "tok-5e4d3c2b1a-SPLIT"

# Each piece of the secret is flushed on its own and the other stream is written (and
# flushed) in between: before, the pipe carried "out: tok-5e4d" + "a warning ...\n" +
# "3c2b1a-SPLIT end\n", and no value was whole for the masker to find.
SPLIT = """
import os, sys
token = os.environ["API_TOKEN"]
half = len(token) // 2
sys.stdout.write("out: " + token[:half]); sys.stdout.flush()
sys.stderr.write("a warning between the pieces\\n"); sys.stderr.flush()
sys.stdout.write(token[half:] + " end\\n")
sys.stderr.write("err: " + token[:half]); sys.stderr.flush()
print("a line on stdout between the pieces", flush=True)
sys.stderr.write(token[half:] + "\\n")
sys.stdout.write("chars: ")
for i, ch in enumerate(token):
    sys.stdout.write(ch); sys.stdout.flush()
    print(f"chatter {i}", file=sys.stderr, flush=True)
print()
print("done")
"""


def test_a_secret_split_by_the_other_stream_is_masked(
    app: Context, make_pipeline: MakePipeline
) -> None:
    secret_store.set_secret(app.db, app.settings, "API_TOKEN", TOKEN)
    make_pipeline("split", SPLIT, config='{"secrets": ["API_TOKEN"]}')

    result = run_pipeline(app.db, app.settings, "split", "cli")

    assert result.status is RunStatus.SUCCESS
    raw = result.log_path.read_bytes()
    half = len(TOKEN) // 2
    assert TOKEN[:half].encode() not in raw and TOKEN[half:].encode() not in raw
    chatter = [f"chatter {i}" for i in range(len(TOKEN))]
    assert _payloads(result.log_path) == [  # (each line where it was completed)
        "a warning between the pieces",
        "out: *** end",
        "a line on stdout between the pieces",
        "err: ***",
        *chatter,
        "chars: ***",
        "done",
    ]


def test_a_line_that_never_ends_still_reaches_the_log(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """An unfinished line is held back only briefly: a run killed while it waits after
    ``halfway`` (no newline) still shows it."""
    make_pipeline(
        "stuck",
        "import sys, time\nsys.stdout.write('halfway')\ntime.sleep(60)\n",
        config='{"timeout": 2}',
    )

    result = run_pipeline(app.db, app.settings, "stuck", "cli")

    assert result.status is RunStatus.TIMEOUT
    lines = _payloads(result.log_path)
    assert lines[0] == "halfway" and "timeout after 2 s" in lines[-1]


def test_a_forked_child_writes_its_lines_once_and_not_the_parents(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """A child forked (multiprocessing) while the parent holds an unfinished line does
    not write that line too; the child's own lines are written, once."""
    make_pipeline(
        "forks",
        """
        import multiprocessing, sys
        def child():
            print("from the child")
            print("warned by the child", file=sys.stderr)
        if __name__ == "__main__":
            sys.stdout.write("parent started,")
            p = multiprocessing.get_context("fork").Process(target=child)
            p.start(); p.join()
            print(" parent done")
        """,
    )

    result = run_pipeline(app.db, app.settings, "forks", "cli")

    assert result.status is RunStatus.SUCCESS
    assert _payloads(result.log_path) == [
        "from the child",
        "warned by the child",
        "parent started, parent done",
    ]


def test_a_pipeline_sees_ordinary_standard_streams(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """What pipelines ask of ``sys.stdout``/``sys.stderr`` still works: ``fileno``,
    ``isatty``, ``buffer`` writes, ``encoding``, ``faulthandler`` and a subprocess
    given ``sys.stdout``."""
    make_pipeline(
        "streams",
        """
        import faulthandler, subprocess, sys
        faulthandler.enable()
        print(sys.stdout.fileno(), sys.stderr.fileno(), sys.stdout.isatty(),
              sys.stdout.encoding)
        sys.stdout.buffer.write(b"bytes ")
        sys.stdout.buffer.write(b"written\\n")
        sys.stdout.flush()
        subprocess.run([sys.executable, "-c", "print('from a subprocess')"],
                       stdout=sys.stdout, check=True)
        print("last")
        """,
    )

    result = run_pipeline(app.db, app.settings, "streams", "cli")

    assert result.status is RunStatus.SUCCESS, result.log_path.read_text()
    assert _payloads(result.log_path) == [
        "1 2 False utf-8",
        "bytes written",
        "from a subprocess",
        "last",
    ]


def test_a_signal_handler_that_logs_while_the_pipeline_prints_does_not_crash_it(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """A handler that writes to standard error (a SIGTERM handler logging "stopping")
    used to hit the shared buffer in the middle of a write: CPython refused the reentry
    with ``RuntimeError: reentrant call``, raised into the pipeline. Standard error's
    layer now steps aside; every line still arrives."""
    make_pipeline(
        "alarmed",
        """
        import signal, sys
        n = [0]
        def on_alarm(*_):
            n[0] += 1
            print(f"signal {n[0]}", file=sys.stderr)
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
        for i in range(200000):
            print(f"main {i}")
        signal.setitimer(signal.ITIMER_REAL, 0)
        print("signals", n[0])
        """,
    )

    result = run_pipeline(app.db, app.settings, "alarmed", "cli")

    assert result.status is RunStatus.SUCCESS, result.log_path.read_text()[-3000:]
    lines = _payloads(result.log_path)
    assert [x for x in lines if x.startswith("main")] == [f"main {i}" for i in range(200000)]
    signals = int(lines[-1].split()[1])
    assert signals > 0
    # every handler's line arrives; a handler that ran inside another one's print (the
    # next alarm, at a bytecode boundary of this layer's Python) may finish first, as
    # nested writes to one stream do (CI saw "signal 343" before "signal 342")
    told = re.findall(r"signal (\d+)", "\n".join(x for x in lines if x.startswith("signal ")))
    assert sorted(map(int, told)) == list(range(1, signals + 1))


def test_forked_workers_write_whole_lines(app: Context, make_pipeline: MakePipeline) -> None:
    """Found while trying to break the layer: forked workers wrote each piece of a
    ``print`` to stderr at once ("worker err 3" and its newline apart), so two workers'
    lines ran into each other. A forked child now holds and batches like its parent."""
    make_pipeline(
        "pool",
        """
        import multiprocessing, sys
        def work(i):
            print(f"worker {i}")
            print(f"worker err {i}", file=sys.stderr)
            return i
        if __name__ == "__main__":
            for _ in range(5):
                with multiprocessing.get_context("fork").Pool(2) as pool:
                    pool.map(work, range(8))
        """,
    )

    result = run_pipeline(app.db, app.settings, "pool", "cli")

    assert result.status is RunStatus.SUCCESS
    lines = _payloads(result.log_path)
    expected = sorted([f"worker {i}" for i in range(8)] + [f"worker err {i}" for i in range(8)])
    assert sorted(lines) == sorted(expected * 5)
