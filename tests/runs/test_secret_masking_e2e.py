"""Issue 12 acceptance: a secret printed in pieces, on stdout and stderr and inside a
1 MB line, is only ``***`` in the local log and in the object archived to S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import MakePipeline, run_cli, wait_until
from tests.harness.fixtures import S3Env

TOKEN = "tok-9f8e7d6c5b4a-SECRET"

PIPELINE = """
import os, sys
token = os.environ["API_TOKEN"]
print("whole:", token)
for i, ch in enumerate(token):  # one write per character, flushed: split across reads
    sys.stdout.write(ch)
    sys.stdout.flush()
print()
half = len(token) // 2
sys.stderr.write("stderr: " + token[:half])
sys.stderr.flush()
sys.stderr.write(token[half:] + "\\n")
sys.stdout.write("x" * 1_000_000 + token + "y" * 1000 + "\\n")
print("done")
"""


def test_a_secret_never_reaches_the_log_or_the_archive(
    ff_env: dict[str, str], make_pipeline: MakePipeline, s3: S3Env
) -> None:
    make_pipeline("leaky", PIPELINE, config='{"secrets": ["API_TOKEN"]}')
    env = {**s3.env(), "LOG_RETENTION_RUNS": "1"}
    res = run_cli("secret", "set", "API_TOKEN", input=TOKEN + "\n", env=env)
    assert res.returncode == 0, res.stderr
    first = run_cli("run", "leaky", env=env)
    assert first.returncode == 0, first.stderr
    assert TOKEN not in first.stdout + first.stderr
    run_id = first.stdout.strip().splitlines()[-1]
    log_file = next(Path(ff_env["LOGS_DIR"]).glob(f"leaky/{run_id}/run.log"))
    local = log_file.read_bytes()
    assert TOKEN.encode() not in local
    assert local.count(b"***") == 4
    assert b"whole: ***" in local and b"stderr: ***" in local
    assert b"x" * 1000 + b"***" + b"y" * 1000 in local
    assert run_cli("run", "leaky", env=env).returncode == 0  # the first is now beyond retention
    cleaned = run_cli("cleanup", "--json", env=env)
    assert cleaned.returncode == 0, cleaned.stderr
    assert json.loads(cleaned.stdout)["archived_runs"] == 1
    obj = s3.client().get_object(Bucket=s3.bucket, Key=f"pipeline-logs/leaky/{run_id}/run.log")
    archived = obj["Body"].read()
    assert archived == local
    assert TOKEN.encode() not in archived
    shown = run_cli("logs", run_id, env=env)
    assert shown.returncode == 0 and TOKEN not in shown.stdout and "***" in shown.stdout


SPLIT_BY_THE_OTHER_STREAM = """
import logging, os, sys
token = os.environ["API_TOKEN"]
print("out:", token[:6], end="")
print("a warning between", file=sys.stderr)
print(token[6:])
sys.stderr.write("err: " + token[:4])
print("a stdout line between")
sys.stderr.write(token[4:] + "\\n")
logging.basicConfig(format="%(levelname)s %(message)s")
sys.stdout.write("progress " + token[:10])
logging.warning("logged between")
sys.stdout.write(token[10:] + " done\\n")
print("end")
"""
# its log, without the stamps: each secret is ***, where it was written, in order
SPLIT_LOG_LINES = [
    "out: ***a warning between",
    "",
    "err: ***a stdout line between",
    "",
    "progress ***WARNING logged between",
    " done",
    "end",
]


def test_a_secret_split_by_a_write_to_the_other_stream_is_masked(
    ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    """The outside audit's case (2026-12-04): a secret written to stdout in two pieces
    with stderr written between them (and the reverse) reached the log in two unmasked
    pieces. Each stream is now also masked on its own; the log keeps the order."""
    make_pipeline("split", SPLIT_BY_THE_OTHER_STREAM, config='{"secrets": ["API_TOKEN"]}')
    assert run_cli("secret", "set", "API_TOKEN", input=TOKEN + "\n").returncode == 0
    res = run_cli("run", "split")
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.strip().splitlines()[-1]
    log = next(Path(ff_env["LOGS_DIR"]).glob(f"split/{run_id}/run.log")).read_text()
    for piece in (TOKEN, TOKEN[:6], TOKEN[6:], TOKEN[4:], TOKEN[:10], TOKEN[10:]):
        assert piece not in log
    lines = [line[26:] for line in log.splitlines() if not line[26:].startswith("[env]")]
    assert lines == SPLIT_LOG_LINES
    assert "\x00" not in log  # the stream frames never reach the log


def test_another_runs_secret_read_from_its_environment_is_masked(
    ff_env: dict[str, str], make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    """Runs of one OS user can read each other's ``/proc/<pid>/environ``: a pipeline that
    lists no secret prints another running pipeline's. Every stored secret is masked in
    every run's log (an outside audit found it in clear; each run masked its own only)."""
    ready, done = tmp_path / "ready", tmp_path / "done"
    make_pipeline(
        "holder",
        "import os, time\n"
        f"open({str(ready)!r}, 'w').write(str(os.getpid()))\n"
        f"while not os.path.exists({str(done)!r}): time.sleep(0.05)\n",
        config='{"secrets": ["API_TOKEN"]}',
    )
    make_pipeline(
        "snoop",
        "import glob\n"
        "for path in glob.glob('/proc/[0-9]*/environ'):\n"
        "    try:\n"
        "        env = open(path, 'rb').read().split(b'\\0')\n"
        "    except OSError:\n"
        "        continue\n"
        "    for item in env:\n"
        "        if item.startswith(b'API_TOKEN='):\n"
        "            print('found', item.decode())\n",
    )
    assert run_cli("secret", "set", "API_TOKEN", input=TOKEN + "\n").returncode == 0
    holder = subprocess.Popen(
        [sys.executable, "-m", "fastflow", "run", "holder"],
        env={**os.environ, **ff_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(ready.exists, 60, "the holder to run")
        res = run_cli("run", "snoop")
    finally:
        done.touch()
        holder.communicate(timeout=60)
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.strip().splitlines()[-1]
    log = next(Path(ff_env["LOGS_DIR"]).glob(f"snoop/{run_id}/run.log")).read_text()
    assert "found API_TOKEN=***" in log  # it did read it: the masking is what kept it out
    assert TOKEN not in log


def test_a_multi_line_secret_printed_with_crlf_line_ends_is_masked(
    ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    """An outside audit: a multi-line secret (a PEM key, say) written with CRLF line ends
    reached the log in clear; with LF it was masked."""
    value = "line1-MULTI-secret\nline2-MULTI-secret"
    make_pipeline(
        "crlf",
        "import os, sys\n"
        "v = os.environ['PEM'].replace('\\r\\n', '\\n')\n"
        "sys.stdout.buffer.write(b'lf: ' + v.encode() + b'\\n')\n"
        "sys.stdout.buffer.write(b'crlf: ' + v.replace('\\n', '\\r\\n').encode() + b'\\r\\n')\n",
        config='{"secrets": ["PEM"]}',
    )
    # stored with LF, and with CRLF (a browser's text box): both forms masked either way
    for stored in (value, value.replace("\n", "\r\n")):
        assert run_cli("secret", "set", "PEM", input=stored + "\n").returncode == 0
        res = run_cli("run", "crlf")
        assert res.returncode == 0, res.stderr
        run_id = res.stdout.strip().splitlines()[-1]
        log = next(Path(ff_env["LOGS_DIR"]).glob(f"crlf/{run_id}/run.log")).read_bytes()
        assert b"MULTI-secret" not in log, log
        assert log.count(b"***") == 2
