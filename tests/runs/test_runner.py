"""The runner against real pipelines in tmp_path."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from fastflow.config import load_settings
from fastflow.context import Context, bootstrap
from fastflow.db.models import PipelineRun, RunStatus
from fastflow.runs import store as runs
from fastflow.runs.runner import run_pipeline
from tests.conftest import MakePipeline, wait_until

LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] (.*)$", re.DOTALL)


def _payloads(path: Path) -> list[str]:
    """The pipeline's lines, without their timestamps and without fastflow's ``[env]``
    lines about its environment (which all come first)."""
    out = []
    for line in path.read_bytes().decode("utf-8").split("\n")[:-1]:
        m = LINE.match(line)
        assert m, f"line without prefix: {line[:80]!r}"
        out.append(m.group(1))
    env_lines = [x for x in out if x.startswith("[env] ")]
    assert out[: len(env_lines)] == env_lines  # before the pipeline's first line
    return out[len(env_lines) :]


def test_success_writes_log_metrics_and_row(app: Context, make_pipeline: MakePipeline) -> None:
    make_pipeline(
        "hello",
        """
        import os, sys
        print("run", os.environ["FASTFLOW_RUN_ID"], os.environ["FASTFLOW_PIPELINE"])
        print("cwd", os.getcwd() == os.environ["FASTFLOW_WORKDIR"])
        print("dir", os.environ["FASTFLOW_PIPELINE_DIR"])
        print("env", os.environ["GREETING"])
        print("to stderr", file=sys.stderr)
        """,
        config='{"env": {"GREETING": "hi"}}',
    )
    result = run_pipeline(app.db, app.settings, "hello", "cli")
    assert result.status == RunStatus.SUCCESS and result.exit_code == 0
    lines = _payloads(result.log_path)
    assert lines == [
        f"run {result.run_id} hello",
        "cwd True",
        f"dir {app.settings.pipelines_dir.resolve() / 'hello'}",
        "env hi",
        "to stderr",
    ]
    assert result.log_path == app.settings.logs_root / "hello" / str(result.run_id) / "run.log"
    samples = [json.loads(x) for x in result.metrics_path.read_text().splitlines()]
    assert len(samples) >= 1  # a short run still gets its exit sample
    for s in samples:
        assert set(s) >= {"timestamp", "cpu_percent", "ram_mb"}
        assert s["timestamp"].endswith("+00:00")
    row = runs.get(app.db, result.run_id)
    assert row is not None
    assert row.status == "SUCCESS" and row.exit_code == 0 and row.triggered_by == "cli"
    assert row.finished_at is not None and row.finished_at >= row.started_at
    assert row.log_file == f"hello/{result.run_id}/run.log"
    assert row.metrics_file == f"hello/{result.run_id}/metrics.jsonl"


def test_failed_exit_code_recorded(app: Context, make_pipeline: MakePipeline) -> None:
    make_pipeline("boom", "import sys\nprint('x')\nsys.exit(7)\n")
    result = run_pipeline(app.db, app.settings, "boom", "cli")
    assert result.status == RunStatus.FAILED and result.exit_code == 7
    row = runs.get(app.db, result.run_id)
    assert row is not None and row.status == "FAILED" and row.exit_code == 7


def test_exception_traceback_is_in_log(app: Context, make_pipeline: MakePipeline) -> None:
    make_pipeline("exc", "raise ValueError('broken input')\n")
    result = run_pipeline(app.db, app.settings, "exc", "cli")
    assert result.status == RunStatus.FAILED and result.exit_code == 1
    assert any("ValueError: broken input" in x for x in _payloads(result.log_path))


def test_stdout_and_stderr_keep_order(app: Context, make_pipeline: MakePipeline) -> None:
    make_pipeline(
        "mix",
        """
        import sys
        for i in range(3000):
            print(f"line {i}", file=sys.stderr if i % 3 == 0 else sys.stdout)
        """,
    )
    result = run_pipeline(app.db, app.settings, "mix", "cli")
    assert _payloads(result.log_path) == [f"line {i}" for i in range(3000)]


@pytest.mark.parametrize(
    "end",
    ["os._exit(3)", "import ctypes; ctypes.string_at(0)", "os.kill(os.getpid(), 9)"],
)
def test_a_stderr_line_is_in_the_log_however_abruptly_the_pipeline_ends(
    app: Context, make_pipeline: MakePipeline, end: str
) -> None:
    """An outside audit: stderr was buffered with stdout and flushed every 0.2 s, so the
    last lines — the error a pipeline prints before ``os._exit`` or a crash — were lost.
    A line written to stderr now reaches the log at once, with the stdout written
    before it (their order is kept), as plain Python's line-buffered stderr does."""
    make_pipeline(
        "abrupt",
        f"import os, sys\nprint('working')\nsys.stderr.write('fatal: giving up\\n')\n{end}\n",
    )
    result = run_pipeline(app.db, app.settings, "abrupt", "cli")
    assert result.status == RunStatus.FAILED
    assert _payloads(result.log_path)[:2] == ["working", "fatal: giving up"]


def test_a_log_its_pipeline_deletes_is_restored_with_a_note(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """An outside audit: a pipeline that deleted its own run.log (and metrics) ended
    SUCCESS without a word, its log gone. fastflow holds both open: it writes them back."""
    folder = app.settings.logs_root / "vandal"
    make_pipeline(
        "vandal",
        "import glob, shutil\n"
        "print('before the deletion', flush=True)\n"
        f"for d in glob.glob({str(folder)!r} + '/*'):\n"
        "    shutil.rmtree(d)\n"
        "print('after the deletion')\n",
    )
    result = run_pipeline(app.db, app.settings, "vandal", "cli")
    assert result.status == RunStatus.SUCCESS
    assert result.log_path.is_file() and result.metrics_path.is_file()
    payloads = _payloads(result.log_path)
    assert payloads[:2] == ["before the deletion", "after the deletion"]
    assert "the run's log file was deleted while the run ran" in result.log_path.read_text()
    row = runs.get(app.db, result.run_id)
    assert row is not None and row.log_size == result.log_path.stat().st_size


def test_a_log_its_pipeline_replaces_by_a_link_is_restored_and_the_target_untouched(
    app: Context, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    """An outside audit: a pipeline that replaced its run.log and metrics.jsonl by
    symbolic links (to a file outside LOGS_DIR) lost its whole log — the restore refused
    the link and left it there. The links are replaced now, never followed: the target
    keeps its bytes, the run's folder holds its log again."""
    target = tmp_path / "elsewhere.txt"
    target.write_text("not fastflow's\n")
    folder = app.settings.logs_root / "linker"
    make_pipeline(
        "linker",
        "import os\n"
        "print('before the link', flush=True)\n"
        f"d = os.path.join({str(folder)!r}, os.environ['FASTFLOW_RUN_ID'])\n"
        "for name in ('run.log', 'metrics.jsonl'):\n"
        "    os.unlink(os.path.join(d, name))\n"
        f"    os.symlink({str(target)!r}, os.path.join(d, name))\n"
        "print('after the link')\n",
    )
    result = run_pipeline(app.db, app.settings, "linker", "cli")
    assert result.status == RunStatus.SUCCESS
    assert target.read_text() == "not fastflow's\n"
    for path in (result.log_path, result.metrics_path):
        assert not path.is_symlink() and path.is_file()
    assert _payloads(result.log_path)[:2] == ["before the link", "after the link"]
    assert "the run's log file was deleted while the run ran" in result.log_path.read_text()
    assert result.log_path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert not [p for p in result.log_path.parent.iterdir() if p.name.startswith(".")]
    row = runs.get(app.db, result.run_id)
    assert row is not None and row.log_size == result.log_path.stat().st_size


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_pipeline_that_rewraps_stdout_keeps_both_streams(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """Found by an outside audit: ``sys.stdout = io.TextIOWrapper(sys.stdout.buffer, ...)``
    (a common way to change the encoding) let the replaced layer be collected, which
    closed the writer both streams share: every later line was lost and the run FAILED
    ("lost sys.stderr"). Plain Python keeps its layers in ``sys.__stdout__``; so does
    fastflow's bootstrap now."""
    make_pipeline(
        "rewrap",
        """
        import gc, io, sys
        sys.stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", line_buffering=True)
        gc.collect()
        print("after rewrap")
        print("stderr after rewrap", file=sys.stderr)
        """,
    )
    result = run_pipeline(app.db, app.settings, "rewrap", "cli")
    assert result.status == RunStatus.SUCCESS, result.log_path.read_text()
    assert _payloads(result.log_path) == ["after rewrap", "stderr after rewrap"]


def test_concurrent_writers_never_merge_lines(app: Context, make_pipeline: MakePipeline) -> None:
    # A line written with one write() call is never split or mixed, whichever thread and
    # stream it comes from. (print() makes two writes, text and newline; threads printing
    # at the same moment can interleave inside Python itself, as on a terminal.)
    make_pipeline(
        "threads",
        """
        import sys, threading
        def spam(stream, ch):
            for i in range(3000):
                stream.write(ch * 300 + str(i) + "\\n")
        ts = [threading.Thread(target=spam, args=(s, c))
              for s, c in ((sys.stdout, "a"), (sys.stderr, "b"), (sys.stdout, "c"))]
        for t in ts: t.start()
        for t in ts: t.join()
        """,
    )
    result = run_pipeline(app.db, app.settings, "threads", "cli")
    lines = _payloads(result.log_path)
    assert len(lines) == 9000
    for line in lines:
        assert re.fullmatch(r"(a{300}|b{300}|c{300})\d+", line), line[:60]
    for ch in "abc":
        got = [int(x[300:]) for x in lines if x[0] == ch]
        assert got == list(range(3000))  # each thread's lines in its own order


def test_invalid_utf8_and_binary_garbage(app: Context, make_pipeline: MakePipeline) -> None:
    make_pipeline(
        "garbage",
        r"""
        import sys
        sys.stdout.buffer.write(b"ok \xff\xfe\x00 bin\n")
        sys.stdout.buffer.write(bytes(range(256)).replace(b"\n", b"") + b"\n")
        sys.stdout.buffer.write("gr\u00fc\u00dfe \u20ac\n".encode())
        """,
    )
    result = run_pipeline(app.db, app.settings, "garbage", "cli")
    assert result.status == RunStatus.SUCCESS
    raw = result.log_path.read_bytes()
    raw.decode("utf-8")  # the whole log is valid UTF-8
    lines = _payloads(result.log_path)
    assert lines[0] == "ok \ufffd\ufffd\x00 bin"
    assert lines[2] == "grüße €"
    assert len(lines) == 3


def test_ten_megabyte_line_is_kept_whole(app: Context, make_pipeline: MakePipeline) -> None:
    make_pipeline(
        "longline",
        """
        import sys
        for _ in range(160):
            sys.stdout.write("x" * 65536)
        sys.stdout.write("\\nafter\\n")
        sys.stdout.write("tail without newline")
        """,
    )
    result = run_pipeline(app.db, app.settings, "longline", "cli")
    lines = _payloads(result.log_path)
    assert len(lines) == 3
    assert lines[0] == "x" * (160 * 65536)
    assert lines[1:] == ["after", "tail without newline"]


def _max_rss_kb(args: list[str], env: dict[str, str]) -> int:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    return usage.ru_maxrss


def test_long_line_memory_is_bounded(ff_env: dict[str, str], make_pipeline: MakePipeline) -> None:
    make_pipeline("short", "print('hi')\n")
    make_pipeline(
        "huge",
        """
        import sys
        for _ in range(1280):  # 80 MiB in one line, written in 64 KiB pieces
            sys.stdout.write("y" * 65536)
        sys.stdout.write("\\n")
        """,
    )
    env = {**os.environ, **ff_env}
    cmd = [sys.executable, "-m", "fastflow", "run"]
    baseline = _max_rss_kb([*cmd, "short"], env)
    huge = _max_rss_kb([*cmd, "huge"], env)
    # holding the line would cost well over 80 MiB; streaming costs a few MiB at most
    assert huge - baseline < 30 * 1024, (baseline, huge)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_timeout_kills_the_whole_tree(
    app: Context, make_pipeline: MakePipeline, tmp_path: Path
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    make_pipeline(
        "sleepy",
        f"""
        import subprocess, time
        child = subprocess.Popen(["sleep", "300"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(300)
        """,
        config='{"timeout": 1.5}',
    )
    result = run_pipeline(app.db, app.settings, "sleepy", "cli")
    assert result.status == RunStatus.TIMEOUT
    row = runs.get(app.db, result.run_id)
    assert row is not None and row.status == "TIMEOUT" and row.finished_at is not None
    assert _gone(int(pidfile.read_text()))
    assert any("timeout after 1.5 s" in x for x in _payloads(result.log_path))


@pytest.mark.parametrize("holds_pipe", [False, True])
def test_processes_left_in_the_group_end_with_the_run(
    app: Context, make_pipeline: MakePipeline, tmp_path: Path, holds_pipe: bool
) -> None:
    """A pipeline that exits leaving a child in its process group (output closed, or
    still holding the pipe): the child is killed when the run ends — it would keep the
    run's secrets in its environment and escape the memory limit — and the log says
    so; before (an outside audit), a child that had closed its output lived on. A
    child that left the group (``setsid``) is the documented exception."""
    pidfile, detached = tmp_path / "child.pid", tmp_path / "detached.pid"
    out = "None" if holds_pipe else "subprocess.DEVNULL"
    make_pipeline(
        "leaves",
        f"""
        import subprocess
        child = subprocess.Popen(["sleep", "300"], stdout={out}, stderr={out})
        away = subprocess.Popen(["sleep", "300"], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        open({str(pidfile)!r}, "w").write(str(child.pid))
        open({str(detached)!r}, "w").write(str(away.pid))
        print("done", flush=True)
        """,
    )
    result = run_pipeline(app.db, app.settings, "leaves", "cli")
    assert result.status == RunStatus.SUCCESS
    assert _gone(int(pidfile.read_text()))
    away = int(detached.read_text())
    try:
        assert not _gone(away)  # out of the group: not the run's to end
    finally:
        os.kill(away, signal.SIGKILL)
    notes = [x for x in _payloads(result.log_path) if "left running" in x]
    said = "[fastflow] ended 1 process(es) the pipeline left running in its process group"
    assert notes == [said]


def test_periodic_metrics_samples(app: Context, make_pipeline: MakePipeline) -> None:
    make_pipeline(
        "busy",
        """
        import time
        start, cpu0 = time.monotonic(), time.process_time()
        end = start + 4.5
        data = bytearray(30 * 1024 * 1024)
        while time.monotonic() < end:
            pass
        share = 100 * (time.process_time() - cpu0) / (time.monotonic() - start)
        print(f"own cpu share {share:.1f}")
        """,
    )
    result = run_pipeline(app.db, app.settings, "busy", "cli")
    samples = [json.loads(x) for x in result.metrics_path.read_text().splitlines()]
    assert len(samples) >= 3  # two periodic samples plus the exit sample
    assert max(s["ram_mb"] for s in samples) > 30
    # the CPU the pipeline got depends on the machine's load; what fastflow reports must
    # agree with what the pipeline measured itself (start-up makes fastflow's wall longer)
    own = float(result.log_path.read_text().split("own cpu share ")[1].split()[0])
    assert all(s["cpu_percent"] > 0 for s in samples[1:])
    assert 0.6 * own <= samples[-1]["cpu_percent"] <= own + 10


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_startup_fails_runs_of_dead_processes(ff_env: dict[str, str], app: Context) -> None:
    dead_id, live_id, foreign_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    log_rel = f"p/{dead_id}/run.log"
    log = app.settings.logs_root / log_rel
    log.parent.mkdir(parents=True)
    log.write_text("[2026-01-01 00:00:00.000] partial output")
    with app.db.session() as s:
        s.add(
            PipelineRun(
                id=dead_id,
                pipeline_name="p",
                status="RUNNING",
                triggered_by="cli",
                log_file=log_rel,
                runner_host=socket.gethostname(),
                runner_pid=_dead_pid(),
            )
        )
        me = psutil.Process()
        s.add(
            PipelineRun(
                id=live_id,
                pipeline_name="p",
                status="RUNNING",
                triggered_by="cli",
                runner_host=socket.gethostname(),
                runner_pid=me.pid,
                runner_started=me.create_time(),
            )
        )
        s.add(
            PipelineRun(
                id=foreign_id,
                pipeline_name="p",
                status="RUNNING",
                triggered_by="cli",
                runner_host="other-host",
                runner_pid=1,
            )
        )
    ctx = bootstrap(load_settings())
    dead = runs.get(ctx.db, dead_id)
    assert dead is not None and dead.status == "FAILED" and dead.finished_at is not None
    text = log.read_text()
    assert text.startswith("[2026-01-01 00:00:00.000] partial output\n")
    assert "run interrupted" in text
    live, foreign = runs.get(ctx.db, live_id), runs.get(ctx.db, foreign_id)
    assert live is not None and live.status == "RUNNING"
    assert foreign is not None and foreign.status == "RUNNING"


def test_killed_cli_run_is_recovered(ff_env: dict[str, str], make_pipeline: MakePipeline) -> None:
    make_pipeline("long", "import time\nprint('working', flush=True)\ntime.sleep(300)\n")
    env = {**os.environ, **ff_env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastflow", "run", "long"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    logs = Path(ff_env["LOGS_DIR"]) / "long"
    # wait until the run has written its first line, then kill runner and pipeline
    wait_until(lambda: any(p.read_text() for p in logs.glob("*/run.log")), 60, "run start")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ctx = bootstrap(load_settings())
    (row,) = runs.list_runs(ctx.db, pipeline="long")
    assert row.status == "FAILED"
    assert "run interrupted" in (logs / str(row.id) / "run.log").read_text()


def test_pipelines_do_not_see_fastflow_secrets(
    app: Context, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "do-not-leak-into-pipelines")
    monkeypatch.setenv("SMTP_PASSWORD", "smtp-do-not-leak")
    monkeypatch.setenv("UNRELATED_VARIABLE", "visible")
    monkeypatch.setenv("NAMED_IN_PASS_ENV", "passed")
    app.settings = app.settings.model_copy(update={"pass_env": ["NAMED_IN_PASS_ENV"]})
    make_pipeline(
        "envdump",
        "import os\nfor k in sorted(os.environ): print(k, os.environ[k])\n",
        config='{"env": {"OWN": "mine"}}',
    )
    result = run_pipeline(app.db, app.settings, "envdump", "cli")
    text = result.log_path.read_text()
    assert "do-not-leak" not in text and "DATABASE_URL" not in text
    assert "UNRELATED_VARIABLE" not in text  # nothing of fastflow's environment...
    assert "NAMED_IN_PASS_ENV passed" in text  # ...but what PASS_ENV names
    assert "OWN mine" in text


def test_a_link_put_where_the_runs_folder_goes_gets_nothing_written_through_it(
    app: Context, make_pipeline: MakePipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who can write in LOGS_DIR puts a link to a folder outside where the run's
    folder is about to be made, just after its path was checked: the log and metrics
    were created through the link, outside LOGS_DIR. Folders and files are now made
    through descriptors that follow no link: the run fails before it starts, saying
    why, and nothing is written outside."""
    from fastflow.runs import files as logfiles

    make_pipeline("hello", "print('output that must stay in LOGS_DIR')\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    link = app.settings.logs_root / "hello"
    real_resolve = logfiles.resolve

    def resolve_then_link(root: Path, rel: str) -> Path:
        found = real_resolve(root, rel)
        if rel.startswith("hello/") and rel.endswith("metrics.jsonl") and not link.is_symlink():
            app.settings.logs_root.mkdir(parents=True, exist_ok=True)
            link.symlink_to(outside, target_is_directory=True)
        return found

    monkeypatch.setattr(logfiles, "resolve", resolve_then_link)
    result = run_pipeline(app.db, app.settings, "hello", "cli")

    assert list(outside.iterdir()) == []
    assert result.status == RunStatus.FAILED and result.failure_reason is not None
    assert "symbolic link" in result.failure_reason
    row = runs.get(app.db, result.run_id)
    assert (
        row is not None and row.status == "FAILED" and "symbolic link" in (row.failure_reason or "")
    )


def test_run_files_are_written_through_descriptors(tmp_path: Path) -> None:
    """``open_for_writing`` makes missing folders below LOGS_DIR (never LOGS_DIR itself: a
    missing one may be a volume not mounted), truncates or appends, refuses links and
    special files on the way (a FIFO without waiting), and leaks no descriptor."""
    from fastflow.errors import UnsafePath
    from fastflow.runs import files as logfiles

    root = tmp_path / "logs"
    with pytest.raises(FileNotFoundError):
        logfiles.open_for_writing(root, "p/r/run.log", append=False)
    assert not root.exists()
    root.mkdir()
    fd = logfiles.open_for_writing(root, "p/r/run.log", append=False)
    with open(fd, "wb") as f:
        f.write(b"first\n")
    fd = logfiles.open_for_writing(root, "p/r/run.log", append=True)
    with open(fd, "wb") as f:
        f.write(b"second\n")
    assert (root / "p" / "r" / "run.log").read_bytes() == b"first\nsecond\n"
    os.close(logfiles.open_for_writing(root, "p/r/run.log", append=False))
    assert (root / "p" / "r" / "run.log").read_bytes() == b""
    with pytest.raises(FileExistsError):
        logfiles.open_for_writing(root, "p/r/run.log", append=False, exclusive=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "q").symlink_to(outside, target_is_directory=True)
    (root / "p" / "r" / "link.log").symlink_to(outside / "x.log")
    os.mkfifo(root / "p" / "r" / "fifo.log")
    fds = len(os.listdir("/proc/self/fd"))
    for rel, why in (
        ("q/r/run.log", "symbolic link"),
        ("p/r/link.log", "symbolic link"),
        ("p/r/fifo.log", "not a regular file"),
        ("p/../q/run.log", "'..'"),
    ):
        for _ in range(5):
            with pytest.raises((UnsafePath, OSError)) as info:
                logfiles.open_for_writing(root, rel, append=True)
            assert why in str(info.value) or rel == "p/r/fifo.log", (rel, info.value)
    assert list(outside.iterdir()) == []
    assert len(os.listdir("/proc/self/fd")) == fds


def test_a_payload_replaced_by_a_link_is_not_copied_for_the_runs_user(tmp_path: Path) -> None:
    """With ``RUN_AS_USER`` the webhook payload is copied for the run's user. A link put
    in the payload's place (to a file only fastflow's user may read) had that file
    copied and handed to the run, and its content then read back through the run's log
    (found by an outside audit). The copy is now read through a walk from LOGS_DIR that
    follows no link: a link is not copied."""
    from fastflow.runs import isolation
    from fastflow.runs import runner as runner_mod

    root = tmp_path / "logs"
    run_dir = root / "hooked" / "r1"
    run_dir.mkdir(parents=True)
    payload = run_dir / "payload.json"
    payload.write_bytes(b'{"caller": "bytes"}')
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"TOP SECRET, readable by fastflow's user only")
    user = isolation.RunAs("me", os.getuid(), os.getgid(), str(tmp_path))
    extra = {"FASTFLOW_PAYLOAD": str(payload)}

    work = tmp_path / "work-1"
    work.mkdir()
    copied = runner_mod._payload_for_user(extra, work, user, root)
    assert copied is not None and copied["FASTFLOW_PAYLOAD"] == str(work / "payload.json")
    assert (work / "payload.json").read_bytes() == b'{"caller": "bytes"}'

    payload.unlink()
    payload.symlink_to(secret)
    work = tmp_path / "work-2"
    work.mkdir()
    assert runner_mod._payload_for_user(extra, work, user, root) == extra
    assert list(work.iterdir()) == []
    outside = tmp_path / "elsewhere.json"  # not below LOGS_DIR at all
    outside.write_bytes(b"{}")
    assert runner_mod._payload_for_user({"FASTFLOW_PAYLOAD": str(outside)}, work, user, root) == {
        "FASTFLOW_PAYLOAD": str(outside)
    }
    assert list(work.iterdir()) == []


def test_a_link_appearing_where_the_log_is_opened_fails_the_run_with_its_reason(
    app: Context, make_pipeline: MakePipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link put in the log's place after the run's folder was made (found by an
    outside audit: the run stayed RUNNING, later marked "interrupted"): the run ends
    FAILED, saying why, and nothing is written through the link."""
    from fastflow.runs import files as logfiles

    make_pipeline("hello", "print('output that must stay in LOGS_DIR')\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    real_open = logfiles.open_for_writing_in
    root = app.settings.logs_root

    def link_then_open(folder: logfiles.RunFolder, rel: str, **kw: Any) -> int:
        if rel.endswith("/run.log"):
            (root / rel).symlink_to(outside / "run.log")
        return real_open(folder, rel, **kw)

    monkeypatch.setattr(logfiles, "open_for_writing_in", link_then_open)
    result = run_pipeline(app.db, app.settings, "hello", "cli")

    assert result.status == RunStatus.FAILED and "symbolic link" in (result.failure_reason or "")
    row = runs.get(app.db, result.run_id)
    assert (
        row is not None and row.status == "FAILED" and "symbolic link" in (row.failure_reason or "")
    )
    assert list(outside.iterdir()) == []


def test_stderr_frames_survive_signals_threads_and_a_rewrapped_stderr(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """stderr goes into the shared writer framed (so each stream can be masked on its
    own): a signal handler printing to stderr while the main thread prints to stdout and
    another thread to stderr must neither hang the run nor lose, split or duplicate a
    write; a pipeline that rewraps sys.stderr keeps writing; no frame reaches the log."""
    make_pipeline(
        "busy",
        """
        import gc, io, signal, sys, threading
        def handler(sig, frame):
            try:
                sys.stderr.write("signal\\n")
            except RuntimeError:  # CPython: a handler inside a buffered write (as plain Python)
                pass
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
        def err():
            for i in range(3000):
                sys.stderr.write(f"thread {i}\\n")
        t = threading.Thread(target=err)
        t.start()
        for i in range(30000):
            sys.stdout.write(f"main {i}\\n")
        t.join()
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stderr = io.TextIOWrapper(sys.stderr.buffer, encoding="utf-8", line_buffering=True)
        gc.collect()
        print("rewrapped é", file=sys.stderr)
        print("end")
        """,
    )
    result = run_pipeline(app.db, app.settings, "busy", "cli")
    assert result.status == RunStatus.SUCCESS, result.log_path.read_text()[-2000:]
    lines = _payloads(result.log_path)
    assert [x for x in lines if x.startswith("main ")] == [f"main {i}" for i in range(30000)]
    assert [x for x in lines if x.startswith("thread ")] == [f"thread {i}" for i in range(3000)]
    assert set(lines) - {"signal"} == {
        *(f"main {i}" for i in range(30000)),
        *(f"thread {i}" for i in range(3000)),
        "rewrapped é",
        "end",
    }
    assert lines[-2:] == ["rewrapped é", "end"]


def test_daemon_threads_printing_while_the_pipeline_exits(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """Daemon threads still printing (print, and logging through a handler made before)
    when the main thread ends: the bootstrap's shared writer made CPython abort the run
    at exit (``Fatal Python error: _enter_buffered_busy``, 9 runs in 10), where plain
    Python exits 0. From the end of the script on, the threads write straight to the
    pipe, past any lock a stopped thread could keep."""
    make_pipeline(
        "chatty",
        """
        import logging, sys, threading
        logging.basicConfig(format="%(message)s")
        log = logging.getLogger("bg")
        def logs():
            while True:
                log.warning("daemon log")
        def prints():
            while True:
                print("daemon out")
        threading.Thread(target=logs, daemon=True).start()
        threading.Thread(target=prints, daemon=True).start()
        for i in range(2000):
            sys.stdout.write(f"main {i}\\n")
        """,
    )
    for _ in range(3):
        result = run_pipeline(app.db, app.settings, "chatty", "cli")
        assert result.status == RunStatus.SUCCESS, result.log_path.read_text()[-2000:]
        text = "\n".join(_payloads(result.log_path)) + "\n"
        # print() writes the text and the newline apart: a daemon's line can start
        # inside another one, as on a terminal; each main write is whole
        assert [int(i) for i in re.findall(r"main (\d+)\n", text)] == list(range(2000))
        assert "daemon log" in text and "daemon out" in text


def test_forked_children_print_while_a_thread_prints(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """A fork while another thread was inside the shared writer left the child with its
    lock held for ever: the child's first print hung (outside audit: 4–20 children of 20
    with the bootstrap, none in plain Python). The child now gets a writer of its own."""
    make_pipeline(
        "forks",
        """
        import os, sys, threading, time
        stop = False
        def spam():
            i = 0
            while not stop:
                print("bg out", i)
                sys.stderr.write(f"bg err {i}\\n")
                i += 1
        t = threading.Thread(target=spam)
        t.start()
        pids = []
        for k in range(20):
            pid = os.fork()
            if pid == 0:
                print(f"child {k} out")
                sys.stderr.write(f"child {k} err\\n")
                sys.stdout.flush()
                os._exit(0)
            pids.append(pid)
        hung = 0
        for pid in pids:
            deadline = time.monotonic() + 5
            while not os.waitpid(pid, os.WNOHANG)[0]:
                if time.monotonic() > deadline:
                    hung += 1
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.01)
        stop = True
        t.join()
        print("hung children:", hung)
        """,
    )
    result = run_pipeline(app.db, app.settings, "forks", "cli")
    assert result.status == RunStatus.SUCCESS, result.log_path.read_text()[-2000:]
    text = result.log_path.read_text()
    assert "hung children: 0\n" in text
    for k in range(20):
        assert f"child {k} out\n" in text and f"child {k} err\n" in text


@pytest.mark.parametrize(
    ("script", "status", "expected"),
    [
        ('print("all done")\nsys.stdout.close()', RunStatus.SUCCESS, ["all done"]),
        (  # a temporary wrapper over sys.stdout.buffer, collected: it closes the buffer
            "w = io.TextIOWrapper(sys.stdout.buffer, newline='')\n"
            "w.write('a,1\\n')\nw.flush()\ndel w\ngc.collect()",
            RunStatus.SUCCESS,
            ["a,1"],
        ),
        (
            'sys.stdout.close()\nraise RuntimeError("boom after stdout closed")',
            RunStatus.FAILED,
            ["RuntimeError: boom after stdout closed"],
        ),
    ],
)
def test_a_pipeline_that_closes_stdout_still_ends_as_it_should(
    app: Context, make_pipeline: MakePipeline, script: str, status: RunStatus, expected: list[str]
) -> None:
    """Outside audit: with stdout closed, the interpreter's final flush of stderr hit the
    closed shared writer — exit code 120 and no traceback. stderr now goes straight to
    the pipe once that writer is closed, as it stays usable in plain Python."""
    make_pipeline("closer", "import gc, io, sys\n" + script)
    result = run_pipeline(app.db, app.settings, "closer", "cli")
    assert result.status == status, result.log_path.read_text()
    lines = _payloads(result.log_path)
    for line in expected:
        assert line in lines
    assert not any("exit code 120" in line or "Exception ignored" in line for line in lines)


def test_stderrs_buffer_answers_like_a_real_one(app: Context, make_pipeline: MakePipeline) -> None:
    make_pipeline(
        "attrs",
        """
        import array, sys
        n = sys.stderr.buffer.write(memoryview(array.array("i", [1, 2, 3])))
        print(n, sys.stderr.name, sys.stderr.buffer.raw.fileno(), sys.stderr.fileno())
        """,
    )
    result = run_pipeline(app.db, app.settings, "attrs", "cli")
    assert result.status == RunStatus.SUCCESS, result.log_path.read_text()
    assert _payloads(result.log_path)[-1].endswith("12 <stderr> 1 1")


def test_fork_workers_logging_through_a_handler_made_before_the_fork(
    app: Context, make_pipeline: MakePipeline
) -> None:
    """Outside audit: a logging handler (or a user's wrapper) made before the fork keeps
    the parent's stdout layer; a worker forked while a thread logged hung on its lock.
    The child's handlers and wrappers over the shared writer are pointed at its own."""
    make_pipeline(
        "mpfork",
        """
        import io, logging, multiprocessing as mp, sys, threading
        sys.stdout = io.TextIOWrapper(sys.stdout.buffer, line_buffering=True)
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
        log = logging.getLogger("x")
        stop = False
        def spam():
            i = 0
            while not stop:
                log.info("bg log %d", i)
                i += 1
        def work(k):
            log.info("worker %d log", k)
            print(f"worker {k} print")
        if __name__ == "__main__":
            mp.set_start_method("fork")
            t = threading.Thread(target=spam)
            t.start()
            ps = [mp.Process(target=work, args=(k,)) for k in range(30)]
            for p in ps:
                p.start()
            for p in ps:
                p.join(10)
            codes = [p.exitcode for p in ps]
            for p in ps:
                if p.exitcode is None:
                    p.kill()
            stop = True
            t.join()
            print("hung:", codes.count(None))
        """,
    )
    result = run_pipeline(app.db, app.settings, "mpfork", "cli")
    assert result.status == RunStatus.SUCCESS, result.log_path.read_text()[-2000:]
    text = result.log_path.read_text()
    assert "hung: 0\n" in text
    for k in range(30):
        assert f"worker {k} log\n" in text and f"worker {k} print\n" in text
