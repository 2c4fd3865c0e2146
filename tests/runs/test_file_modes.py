"""File modes: ``FASTFLOW_UMASK`` (default 077) applies to every file fastflow creates —
database, ``LOGS_DIR`` and its run folders, logs, metrics, downloads — while the
pipeline environments stay readable by the user runs execute as."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastflow.config import load_settings
from fastflow.context import bootstrap
from fastflow.lifecycle.cleanup import run_pass
from fastflow.runs import pipelines, runner
from fastflow.runs import store as runs
from tests.conftest import MakePipeline, run_cli
from tests.harness.fixtures import S3Env
from tests.seeding import NOW, seed_series

RUN_USER = "fastflow-modes"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The shell's usual umask 022 for the test process and the commands it starts, so
    that only fastflow's own umask can make its files private."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _run_hello(make_pipeline: MakePipeline, env: dict[str, str] | None = None) -> dict[str, str]:
    make_pipeline("hello", "print('hello')\n")
    res = run_cli("run", "hello", env=env)
    assert res.returncode == 0, res.stderr
    listed = run_cli("runs", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    run: dict[str, str] = json.loads(listed.stdout)[0]
    return run


def test_fastflow_files_are_private_by_default(
    ff_env: dict[str, str], make_pipeline: MakePipeline, loose_umask: None
) -> None:
    run = _run_hello(make_pipeline)
    data, logs = Path(ff_env["DATA_DIR"]), Path(ff_env["LOGS_DIR"])
    log = logs / run["log_file"]
    metrics = logs / run["metrics_file"]
    assert mode(data) == 0o700
    assert mode(data / "fastflow.db") == 0o600
    assert mode(logs) == 0o700
    assert mode(logs / "hello") == 0o700
    assert mode(log.parent) == 0o700
    assert mode(log) == 0o600
    assert mode(metrics) == 0o600


def test_umask_022_makes_logs_readable_but_keeps_data_dir_private(
    ff_env: dict[str, str], make_pipeline: MakePipeline, loose_umask: None
) -> None:
    run = _run_hello(make_pipeline, env={"FASTFLOW_UMASK": "022"})
    data, logs = Path(ff_env["DATA_DIR"]), Path(ff_env["LOGS_DIR"])
    assert mode(logs) == 0o755 and mode(logs / "hello") == 0o755
    assert mode(logs / run["log_file"]) == 0o644
    assert mode(logs / run["metrics_file"]) == 0o644
    assert mode(data) == 0o700  # DATA_DIR holds the key and the database: always private
    assert mode(data / "fastflow.db") == 0o600


def test_pipeline_environments_stay_readable_by_every_user(
    ff_env: dict[str, str], make_pipeline: MakePipeline, loose_umask: None
) -> None:
    _run_hello(make_pipeline)
    envs = Path(ff_env["DATA_DIR"]) / "envs"
    assert mode(envs) == 0o711  # every user reaches its environment; none lists the others
    built = [p for p in envs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert built
    for env_dir in built:
        assert mode(env_dir) == 0o755
        python = env_dir / "bin" / "python"
        assert os.stat(python).st_mode & 0o005 == 0o005  # others may read and execute it


def test_archive_get_writes_with_fastflows_umask(
    s3: S3Env, ff_env: dict[str, str], tmp_path: Path, loose_umask: None
) -> None:
    settings = load_settings(**{k.lower(): v for k, v in s3.env().items()}, log_retention_runs=1)
    ctx = bootstrap(settings)
    os.umask(0o022)  # bootstrap set fastflow's umask in this process: back to the shell's
    old = seed_series(ctx, "p", 2)[0]
    assert run_pass(ctx, "test", now=NOW).archived_runs == 1
    ctx.db.dispose()
    private, shared = tmp_path / "private.log", tmp_path / "shared.log"
    res = run_cli("archive", "get", str(old.id), "-o", str(private), env=s3.env())
    assert res.returncode == 0, res.stderr
    env = {**s3.env(), "FASTFLOW_UMASK": "022"}
    res = run_cli("archive", "get", str(old.id), "-o", str(shared), env=env)
    assert res.returncode == 0, res.stderr
    assert private.read_bytes() == shared.read_bytes() == old.log_bytes
    assert mode(private) == 0o600
    assert mode(shared) == 0o644

    # an outside audit: ``-o /dev/full`` as root replaced the device with a file. An
    # existing device or pipe is written into, and stays what it was
    import stat
    import threading

    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # as /dev/null
    before = os.stat(null).st_mode
    res = run_cli("archive", "get", str(old.id), "-o", str(null), env=s3.env())
    assert res.returncode == 0, res.stderr
    assert os.stat(null).st_mode == before and stat.S_ISCHR(before)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    res = run_cli("archive", "get", str(old.id), "-o", str(fifo), env=s3.env())
    reader.join(30)
    assert res.returncode == 0, res.stderr
    assert got == [old.log_bytes] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    # nobody reads the pipe: an error, not a wait for ever
    res = run_cli("archive", "get", str(old.id), "-o", str(fifo), env=s3.env())
    assert res.returncode == 1 and "no process reads from" in res.stderr
    # a link (``-o /dev/stdout`` with stdout sent to a file): written through, kept a link
    real = tmp_path / "real.log"
    real.write_bytes(b"older and longer content " * 1000)
    link = tmp_path / "link.log"
    link.symlink_to(real)
    res = run_cli("archive", "get", str(old.id), "-o", str(link), env=s3.env())
    assert res.returncode == 0, res.stderr
    assert link.is_symlink() and real.read_bytes() == old.log_bytes


# --- RUN_AS_USER: the run reaches its webhook payload, not LOGS_DIR -------------------------


@pytest.fixture(scope="module")
def run_user() -> pwd.struct_passwd:
    """An unprivileged OS user for the runs (the suite runs as root)."""
    if os.geteuid() != 0:
        pytest.fail("RUN_AS_USER tests need root (they create an OS user)")
    try:
        return pwd.getpwnam(RUN_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_USER],
            check=True,
        )
        return pwd.getpwnam(RUN_USER)


@pytest.fixture
def shared_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """fastflow's folders under a root other users may traverse (pytest's is private)."""
    root = Path(tempfile.mkdtemp(prefix="fastflow-modes-"))
    root.chmod(0o755)
    for name in ("DATABASE_URL", "FASTFLOW_UMASK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{root / 'data' / 'fastflow.db'}")
    monkeypatch.setenv("DATA_DIR", str(root / "data"))
    monkeypatch.setenv("LOGS_DIR", str(root / "logs"))
    monkeypatch.setenv("PIPELINES_DIR", str(root / "pipelines"))
    monkeypatch.chdir(root)
    old = os.umask(0o022)
    try:
        yield root
    finally:
        os.umask(old)
        shutil.rmtree(root, ignore_errors=True)


def test_a_run_as_another_user_reads_its_webhook_payload(
    run_user: pwd.struct_passwd, shared_root: Path
) -> None:
    folder = shared_root / "pipelines" / "hooked"
    folder.mkdir(parents=True, mode=0o755)
    (shared_root / "pipelines").chmod(0o755)
    folder.chmod(0o755)
    code = (
        "import os, pathlib\n"
        "path = pathlib.Path(os.environ['FASTFLOW_PAYLOAD'])\n"
        "print('payload:', path.read_text())\n"
        "print('logs:', os.access(os.environ['LOGS_PROBE'], os.R_OK))\n"
    )
    (folder / "main.py").write_text(code, encoding="utf-8")
    (folder / "main.py").chmod(0o644)
    settings = load_settings(run_as_user=RUN_USER)
    ctx = bootstrap(settings)
    try:
        run = runs.create(ctx.db, "hooked", "webhook", pid=os.getpid())
        payload = settings.logs_root / "hooked" / str(run.id) / "payload.json"
        payload.parent.mkdir(parents=True)
        payload.write_text('{"order": 42}')
        assert mode(settings.logs_root) == 0o700  # fastflow's umask: private to it
        result = runner.execute(
            ctx.db,
            settings,
            pipelines.load(settings.pipelines_dir, "hooked"),
            run.id,
            extra_env={"FASTFLOW_PAYLOAD": str(payload), "LOGS_PROBE": str(payload)},
        )
        log = result.log_path.read_text(encoding="utf-8")
        assert result.status.value == "SUCCESS", log
        assert 'payload: {"order": 42}' in log
        assert "logs: False" in log  # the original stays out of the run's reach
        assert payload.read_text() == '{"order": 42}'
    finally:
        ctx.db.dispose()


def test_a_new_run_folder_is_private_even_inside_an_old_open_logs_dir(
    ff_env: dict[str, str], make_pipeline: MakePipeline, loose_umask: None
) -> None:
    logs = Path(ff_env["LOGS_DIR"])
    (logs / "hello").mkdir(parents=True, mode=0o755)  # left by an older version
    run = _run_hello(make_pipeline)
    run_dir = (logs / run["log_file"]).parent
    assert mode(logs / "hello") == 0o755  # an existing folder keeps its mode
    assert mode(run_dir) == 0o700 and mode(logs / run["log_file"]) == 0o600
