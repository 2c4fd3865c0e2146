"""What a run may see: only its own environment variables, its scratch folder, and — as
``RUN_AS_USER`` — none of fastflow's files; hard memory limits; failure reasons."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import MakePipeline, run_cli
from tests.environments.wheels import write_source_package

RUN_USER = "ffrun"
# every secret fastflow itself is configured with in these tests
OWN_SECRETS = {
    "S3_SECRET_ACCESS_KEY": "s3-secret-Zq8VfXy2",
    "S3_ACCESS_KEY": "s3-access-Lk3Mn9",
    "SMTP_PASSWORD": "smtp-pass-Hw7Rt5",
    "TEAMS_WEBHOOK_URL": "https://example.invalid/webhook/teams-token-Pp4Qq6",
    "FASTFLOW_SECRET_KEY": "Vt0nK8xg0mA4Jz1qX2cQn1b0b6mRr9uW8kT3yH5pL2s=",
}


def _json_runs(env: dict[str, str] | None = None) -> list[dict[str, object]]:
    res = run_cli("runs", "--json", env=env)
    assert res.returncode == 0, res.stderr
    runs: list[dict[str, object]] = json.loads(res.stdout)
    return runs


def _log_of(run: dict[str, object], logs_dir: str) -> str:
    return (Path(logs_dir) / str(run["log_file"])).read_text(encoding="utf-8")


def test_a_run_sees_only_its_own_variables_and_works_in_a_private_folder(
    ff_env: dict[str, str], make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pipeline(
        "env probe",
        """
        import json, os
        print("ENV=" + json.dumps(dict(os.environ)))
        print("CWD=" + os.getcwd())
        open("scratch.txt", "w").write("x")
        """,
        config='{"env": {"FROM_PIPELINE": "p"}}',
    )
    for name, value in OWN_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SOME_HOST_VARIABLE", "host-only")
    monkeypatch.setenv("WANTED_BY_RUNS", "passed")
    res = run_cli("run", "env probe", "--env", "FROM_RUN=r", env={"PASS_ENV": "WANTED_BY_RUNS"})
    assert res.returncode == 0, res.stderr
    run = _json_runs()[0]
    log = _log_of(run, ff_env["LOGS_DIR"])
    env = json.loads(log.split("ENV=", 1)[1].splitlines()[0])
    cwd = log.split("CWD=", 1)[1].splitlines()[0]
    assert env["FROM_PIPELINE"] == "p" and env["FROM_RUN"] == "r"
    assert env["WANTED_BY_RUNS"] == "passed"
    assert env["FASTFLOW_RUN_ID"] == run["id"] and env["FASTFLOW_PIPELINE"] == "env probe"
    assert env["FASTFLOW_WORKDIR"] == cwd and env["TMPDIR"] == cwd
    assert "SOME_HOST_VARIABLE" not in env
    for name in ("DATABASE_URL", "DATA_DIR", "LOGS_DIR", "PIPELINES_DIR", *OWN_SECRETS):
        assert name not in env, name
    for value in OWN_SECRETS.values():
        assert value not in log
    assert not Path(cwd).exists()  # the scratch folder is gone after the run
    assert not (Path(ff_env["PIPELINES_DIR"]) / "env probe" / "scratch.txt").exists()


def test_a_failed_run_says_why(ff_env: dict[str, str], make_pipeline: MakePipeline) -> None:
    make_pipeline("exits three", "import sys\nsys.exit(3)\n")
    make_pipeline("too slow", "import time\ntime.sleep(60)\n", config='{"timeout": 1}')
    make_pipeline("no cpu here", "print('x')\n", config='{"limits": {"cpu": 1.5}}')
    assert run_cli("run", "exits three").returncode == 1
    assert run_cli("run", "too slow").returncode == 1
    res = run_cli("run", "no cpu here")
    assert res.returncode == 1
    assert "limits.cpu (1.5 CPUs) cannot be enforced" in res.stderr
    reasons = {r["pipeline_name"]: r["failure_reason"] for r in _json_runs()}
    assert reasons["exits three"] == "exit code 3"
    assert reasons["too slow"] == "timeout after 1 s"
    assert "cannot be enforced by the local executor" in str(reasons["no cpu here"])


def test_a_run_past_its_memory_limit_is_stopped_within_three_seconds(
    ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    make_pipeline(
        "hungry",
        """
        import os, time
        page = os.sysconf("SC_PAGE_SIZE")
        blocks = []
        for _ in range(100):  # 5 MiB more every 50 ms, saying how much is resident
            blocks.append(b"x" * (5 * 1024 * 1024))
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page / 1048576
            print(f"rss={rss:.1f} t={time.time()}", flush=True)
            time.sleep(0.05)
        time.sleep(60)
        """,
        config='{"limits": {"memory_mb": 100}}',
    )
    res = run_cli("run", "hungry", timeout=60)
    assert res.returncode == 1, res.stderr
    run = _json_runs()[0]
    assert run["status"] == "FAILED"
    assert run["failure_reason"] == "memory limit exceeded (100 MiB)"
    log = _log_of(run, ff_env["LOGS_DIR"])
    samples = [
        (float(m.group(1)), float(m.group(2)))
        for m in re.finditer(r"rss=([0-9.]+) t=([0-9.]+)", log)
    ]
    below = [t for rss, t in samples if rss < 100]
    assert below, log[:500]
    # the limit was crossed after the last report below it (and within 50 ms of it)
    finished = datetime.fromisoformat(str(run["finished_at"])).timestamp()
    assert finished - below[-1] <= 3.0 + 0.05
    assert max(rss for rss, _ in samples) < 200  # stopped long before the end
    assert "memory limit exceeded (100 MiB): process tree killed" in log


# --- RUN_AS_USER ------------------------------------------------------------------------


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
def shared_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """fastflow's folders under a root that other users may traverse (pytest's own
    temporary root is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="fastflow-isolation-"))
    root.chmod(0o755)
    env = {
        "DATABASE_URL": f"sqlite:///{root / 'data' / 'fastflow.db'}",
        "DATA_DIR": str(root / "data"),
        "LOGS_DIR": str(root / "logs"),
        "PIPELINES_DIR": str(root / "pipelines"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (root / "pipelines").mkdir(mode=0o755)
    (root / "pipelines").chmod(0o755)
    monkeypatch.chdir(root)
    yield env
    shutil.rmtree(root, ignore_errors=True)


def _pipeline(root: dict[str, str], name: str, code: str, config: str | None = None) -> Path:
    folder = Path(root["PIPELINES_DIR"]) / name
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    (folder / "main.py").write_text(code, encoding="utf-8")
    (folder / "main.py").chmod(0o644)
    if config is not None:
        (folder / "pipeline.json").write_text(config, encoding="utf-8")
    return folder


PROBE = """
import os, sys
targets = {
    "key": os.path.join(%(data)r, "secret.key"),
    "db": os.path.join(%(data)r, "fastflow.db"),
    "data_listing": %(data)r,
    "runner_environ": "/proc/%%d/environ" %% os.getppid(),
    "other_pipeline_secret": %(other)r,
}
for label, path in targets.items():
    try:
        if os.path.isdir(path):
            found = os.listdir(path)
        else:
            with open(path, "rb") as f:
                found = f.read()
        print(label, "READ", len(found))
    except OSError as e:
        print(label, "DENIED", type(e).__name__)
try:
    open(os.path.join(os.environ["FASTFLOW_PIPELINE_DIR"], "planted.py"), "w")
    print("pipeline_folder WRITTEN")
except OSError as e:
    print("pipeline_folder DENIED", type(e).__name__)
print("uid", os.getuid(), "gid", os.getgid(), "groups", os.getgroups())
print("keys", sorted(os.environ))
"""


def test_a_run_as_another_user_cannot_read_fastflows_secrets(
    run_user: pwd.struct_passwd, shared_root: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _pipeline(shared_root, "other", "print('other')\n")
    (other / ".env").write_text("OTHER_PIPELINE_PASSWORD=op-secret-Ff3Gg4\n")
    (other / ".env").chmod(0o600)
    code = PROBE % {"data": shared_root["DATA_DIR"], "other": str(other / ".env")}
    folder = _pipeline(shared_root, "probe", code, config='{"secrets": ["PROBE_TOKEN"]}')
    for name, value in OWN_SECRETS.items():
        if name != "FASTFLOW_SECRET_KEY":  # the key file is what the run must not read
            monkeypatch.setenv(name, value)
    stored = run_cli("secret", "set", "PROBE_TOKEN", input="probe-token-Jj5Kk6\n")
    assert stored.returncode == 0, stored.stderr
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("S3_BUCKET", "bkt")
    res = run_cli("run", "probe", env={"RUN_AS_USER": RUN_USER}, timeout=120)
    assert res.returncode == 0, res.stderr
    data = Path(shared_root["DATA_DIR"])
    assert (data.stat().st_mode & 0o777) == 0o711
    assert ((data / "secret.key").stat().st_mode & 0o777) == 0o600
    assert ((data / "fastflow.db").stat().st_mode & 0o777) == 0o600
    run = _json_runs()[0]
    raw = (Path(shared_root["LOGS_DIR"]) / str(run["log_file"])).read_bytes()
    log = raw.decode("utf-8")
    for label in ("key", "db", "data_listing", "runner_environ", "other_pipeline_secret"):
        assert f"{label} DENIED" in log, log
    assert "pipeline_folder DENIED" in log
    assert not (folder / "planted.py").exists()
    assert f"uid {run_user.pw_uid} gid {run_user.pw_gid} groups []" in log
    stored_key = (data / "secret.key").read_bytes().strip()
    for value in [*OWN_SECRETS.values(), "op-secret-Ff3Gg4", "probe-token-Jj5Kk6"]:
        assert value.encode() not in raw
    assert "PROBE_TOKEN" in log.split("keys", 1)[1]  # given to the run, masked in the log
    assert stored_key not in raw


@pytest.mark.parametrize("trick", ["include the key file", "a secret in a bad line"])
def test_an_environment_build_prints_neither_the_store_key_nor_a_secret(
    run_user: pwd.struct_passwd, shared_root: dict[str, str], trick: str
) -> None:
    """Found by an outside audit: a requirements file naming the secret store's key file
    (``-r DATA_DIR/secret.key``) had uv quote the key in the ``[env]`` lines and in the
    run's ``failure_reason``, and a secret in a bad requirement line reached
    ``failure_reason`` unmasked. Both are masked now. (The build itself still runs as
    fastflow's user: docs/isolation.md.)"""
    stored = run_cli("secret", "set", "PROBE_TOKEN", input="probe-token-Jj5Kk6\n")
    assert stored.returncode == 0, stored.stderr
    data = Path(shared_root["DATA_DIR"])
    key = (data / "secret.key").read_text().strip()
    folder = _pipeline(shared_root, "builder", "print('never')\n", '{"secrets": ["PROBE_TOKEN"]}')
    line = (
        f"-r {data / 'secret.key'}" if trick == "include the key file" else "bad probe-token-Jj5Kk6"
    )
    (folder / "requirements.txt").write_text(f"--no-index\n{line}\n")
    res = run_cli("run", "builder", env={"RUN_AS_USER": RUN_USER}, timeout=180)
    assert res.returncode != 0
    (run,) = _json_runs()
    raw = (Path(shared_root["LOGS_DIR"]) / str(run["log_file"])).read_text("utf-8", "replace")
    shown = [res.stdout, res.stderr, raw, json.dumps(run)]
    assert "environment build failed" in str(run["failure_reason"])
    for text in shown:
        assert key not in text and "probe-token-Jj5Kk6" not in text
    # a command started without RUN_AS_USER leaves DATA_DIR traversable for the runs
    # (before, it made DATA_DIR 0700 and the server's next run failed: Permission denied)
    assert (data.stat().st_mode & 0o777) == 0o711
    assert run_cli("runs").returncode == 0
    assert (data.stat().st_mode & 0o777) == 0o711


def test_run_as_an_unknown_user_is_refused_at_start(
    ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    make_pipeline("any")
    res = run_cli("run", "any", env={"RUN_AS_USER": "no-such-user-xyz"})
    assert res.returncode == 2
    assert "RUN_AS_USER=no-such-user-xyz: no such user" in res.stderr
    assert _json_runs() == []  # no run was created


def test_run_as_needs_the_right_to_switch_users(
    run_user: pwd.struct_passwd, shared_root: dict[str, str]
) -> None:
    """fastflow itself started as an unprivileged user cannot run pipelines as another."""
    data = Path(shared_root["DATA_DIR"])
    data.mkdir()
    for path in (data, Path(shared_root["LOGS_DIR"])):
        path.mkdir(exist_ok=True)
        os.chown(path, run_user.pw_uid, run_user.pw_gid)
    _pipeline(shared_root, "any", "print('x')\n")
    # fastflow's own interpreter may live where that user cannot go (pyenv under /root):
    # start the same code with the system's interpreter of the same version
    system_python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    assert os.path.exists(system_python), f"{system_python} is needed for this test"
    site_dir = sysconfig.get_paths()["purelib"]
    code = (
        f"import site, sys; site.addsitedir({site_dir!r}); "
        "sys.argv = ['fastflow', 'run', 'any']; from fastflow.cli import main; main()"
    )
    proc = subprocess.run(
        [system_python, "-c", code],
        env={**os.environ, "RUN_AS_USER": "root", "HOME": "/"},
        user=run_user.pw_uid,
        group=run_user.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "must run as root or hold CAP_SETUID and CAP_SETGID" in proc.stderr


SETPRIV_WITHOUT_SETUID = [
    "setpriv",
    "--bounding-set=-setuid,-setgid",
    "--inh-caps=-setuid,-setgid",
    "--",
]


def test_root_without_the_capabilities_is_refused_at_start(
    run_user: pwd.struct_passwd, ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    """Outside audit: root in a container started with ``--cap-drop SETUID`` passed the
    check (root was taken for enough), and every run then failed with EPERM."""
    make_pipeline("any")
    proc = subprocess.run(
        [*SETPRIV_WITHOUT_SETUID, sys.executable, "-m", "fastflow", "run", "any"],
        env={**os.environ, "RUN_AS_USER": run_user.pw_name},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "must run as root or hold CAP_SETUID and CAP_SETGID" in proc.stderr
    assert _json_runs() == []  # no run was created


def test_a_pipeline_writable_below_its_folder_is_noticed(tmp_path: Path) -> None:
    """Found by an outside audit: only the folder's own mode was looked at, so a
    world-writable ``main.py`` or subfolder went without the warning."""
    from fastflow.runs.isolation import RunAs, folder_writable_by

    user = RunAs("nobody-here", 65530, 65530, "/")
    folder = tmp_path / "p"
    (folder / "sub").mkdir(parents=True)
    (folder / "main.py").write_text("print('x')\n")
    (folder / "sub" / "helper.py").write_text("x = 1\n")
    for path in (folder, folder / "sub", folder / "main.py", folder / "sub" / "helper.py"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert not folder_writable_by(folder, user)
    for path in (folder / "main.py", folder / "sub", folder / "sub" / "helper.py", folder):
        path.chmod(path.stat().st_mode | 0o002)
        assert folder_writable_by(folder, user), path
        path.chmod(path.stat().st_mode & ~0o002)
    assert not folder_writable_by(folder, user)


def test_a_folder_above_the_pipeline_writable_by_the_runs_user_is_noticed(
    tmp_path: Path,
) -> None:
    """Second audit round: uv reads ``uv.toml`` and workspace files from the folders above
    the pipeline, so a run that can write one changes what other builds install."""
    from fastflow.runs.isolation import RunAs, writable_above

    user = RunAs("nobody-here", 65530, 65530, "/")
    assert writable_above(Path("/usr/lib"), user) is None  # root's all the way up
    above = tmp_path / "above"
    (above / "pipelines" / "p").mkdir(parents=True)
    for path in (above, above / "pipelines"):
        path.chmod(0o755)
    os.chown(above, user.uid, user.gid)  # the user's own: it may write there
    assert writable_above(above / "pipelines" / "p", user) == above
    above.chmod(0o555)
    (above / "pipelines").chmod(0o777)
    assert writable_above(above / "pipelines" / "p", user) == above / "pipelines"


def test_a_run_as_another_user_imports_its_environments_packages(
    run_user: pwd.struct_passwd,
    shared_root: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment is built as the run's user, from a uv cache of that build only
    (a shared one would let a run hold its locks), and stays usable by that user. The
    wheels must be readable by it: uv runs as that user."""
    from tests.environments.wheels import write_demo_wheels

    wheels = write_demo_wheels(Path(shared_root["DATA_DIR"]).parent / "wheels")
    wheels.chmod(0o755)
    for wheel in wheels.iterdir():
        wheel.chmod(0o644)
    for name in ("UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))
    monkeypatch.setenv("UV_OFFLINE", "1")
    folder = _pipeline(
        shared_root, "deps", "import ffdemo, os\nprint('ffdemo', ffdemo.VERSION, os.getuid())\n"
    )
    (folder / "requirements.txt").write_text("ffdemo==2.0\n")
    (folder / "requirements.txt").chmod(0o644)
    res = run_cli("run", "deps", env={"RUN_AS_USER": RUN_USER}, timeout=180)
    (run,) = _json_runs()
    assert res.returncode == 0, _log_of(run, shared_root["LOGS_DIR"])
    log = _log_of(run, shared_root["LOGS_DIR"])
    assert f"ffdemo 2.0 {run_user.pw_uid}" in log
    # the test's root is below /tmp, which every user may write into
    assert f"warning: /tmp, a folder above the pipeline, is writable by {RUN_USER}" in log
    envs = Path(shared_root["DATA_DIR"]) / "envs"
    assert not [p for p in envs.iterdir() if "cache" in p.name]


# ``build_wheel``'s probe (``tests.environments.wheels.write_source_package``): what the
# build's user could do, and a process that detaches to outlive the build
PROBE_PRELUDE = """
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # (uv waits for the end of the backend's output)
                os.dup2(null, fd)
            with open(%(pidfile)r, "w") as f:
                f.write(str(os.getpid()))
            os.write(w, b"x")
            import time
            time.sleep(600)
        os._exit(0)
    os.wait()
    os.read(r, 1)
    try:
        with open(%(key)r, "rb") as f:
            f.read()
        key = "READ"
    except OSError:
        key = "DENIED"
    try:
        open(os.path.join(%(data)r, "planted-by-build"), "w").close()
        planted = "WRITTEN"
    except OSError:
        planted = "DENIED"
    try:  # uv reads its user configuration from there: another pipeline's run must not
        os.makedirs(os.path.join(os.environ["HOME"], ".config", "uv"))
        planted += "+HOME-WRITTEN"
    except OSError:
        pass
    INIT = "BUILT_BY = %%d\\nKEY = %%r\\nPLANTED = %%r\\n" %% (os.getuid(), key, planted)
"""


@pytest.mark.parametrize("built_by", ["the run", "fastflow env build"])
def test_an_environment_build_runs_as_the_runs_user_and_is_handed_back_to_fastflow(
    run_user: pwd.struct_passwd,
    shared_root: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    built_by: str,
) -> None:
    """Found by an outside audit: the build backends of a pipeline's source dependencies
    ran as fastflow's user (root), where they could read the secret store's key. With
    ``RUN_AS_USER`` they run as the run's user now, and the environment they made is
    fastflow's afterwards (the run's user cannot change it for later runs)."""
    stored = run_cli("secret", "set", "PROBE_TOKEN", input="probe-token-Jj5Kk6\n")
    assert stored.returncode == 0, stored.stderr
    data = Path(shared_root["DATA_DIR"])
    for name in ("UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("UV_OFFLINE", "1")
    folder = _pipeline(
        shared_root,
        "srcdep",
        "import ffprobe, os\n"
        "print('probe', ffprobe.BUILT_BY, ffprobe.KEY, ffprobe.PLANTED, os.getuid())\n",
    )
    drop = Path(shared_root["DATA_DIR"]).parent / "drop"
    drop.mkdir(mode=0o777)
    drop.chmod(0o777)
    pidfile = drop / "detached.pid"
    prelude = PROBE_PRELUDE % {
        "key": str(data / "secret.key"),
        "data": str(data),
        "pidfile": str(pidfile),
    }
    write_source_package(folder / "probe_src", "ffprobe", prelude)
    (folder / "requirements.txt").write_text("./probe_src\n")
    (folder / "requirements.txt").chmod(0o644)
    if built_by == "fastflow env build":
        built = run_cli("env", "build", "srcdep", env={"RUN_AS_USER": RUN_USER}, timeout=240)
        assert built.returncode == 0, built.stderr
        assert "building environment" in built.stderr
    res = run_cli("run", "srcdep", env={"RUN_AS_USER": RUN_USER}, timeout=240)
    (run,) = _json_runs()
    log = _log_of(run, shared_root["LOGS_DIR"])
    assert res.returncode == 0, log
    uid = run_user.pw_uid
    assert f"probe {uid} DENIED DENIED {uid}" in log
    assert not (data / "planted-by-build").exists()
    # nothing the build started outlives it (it could change the environment meanwhile)
    detached = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(detached, 0)
    envs = data / "envs"
    (env_dir,) = [p for p in envs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    owners = {p.lstat().st_uid for p in [env_dir, *env_dir.rglob("*")]}
    assert owners == {os.geteuid()}, owners
    assert env_dir.stat().st_mode & 0o777 == 0o755
    # the build's own uv cache is gone; fastflow's shared cache was never used
    assert not [p for p in envs.iterdir() if p.name.startswith(".build-cache")]
    assert not (envs / ".uv-cache").exists()
    # and the next run reuses it, as that user
    again = run_cli("run", "srcdep", env={"RUN_AS_USER": RUN_USER}, timeout=120)
    assert again.returncode == 0, again.stderr


def test_a_dependency_file_the_runs_user_cannot_read_is_named_in_the_reason(
    run_user: pwd.struct_passwd, shared_root: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UV_OFFLINE", "1")
    folder = _pipeline(shared_root, "private", "print('never')\n")
    (folder / "requirements.txt").write_text("ffdemo==2.0\n")
    (folder / "requirements.txt").chmod(0o600)  # root's alone: the build's user cannot read it
    res = run_cli("run", "private", env={"RUN_AS_USER": RUN_USER}, timeout=120)
    assert res.returncode == 1
    (run,) = _json_runs()
    reason = str(run["failure_reason"])
    assert "requirements.txt" in reason and "Permission denied" in reason
    assert f"runs as RUN_AS_USER (uid {run_user.pw_uid})" in reason


@pytest.mark.parametrize("how", ["include", "link", "folder"])
def test_a_dependency_file_only_fastflow_may_read_never_reaches_the_key(
    run_user: pwd.struct_passwd,
    shared_root: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """Outside audit: fastflow read ``-r`` includes as its own user (root), so including a
    root-only file put its bytes into the key the log shows (a hash a short secret can be
    guessed from). With ``RUN_AS_USER`` such a file is refused with that user's access,
    whether named by an include, linked as ``requirements.txt``, or readable itself but
    inside a folder that user cannot enter; no environment is built."""
    monkeypatch.setenv("UV_OFFLINE", "1")
    secret_dir = Path(shared_root["DATA_DIR"]).parent / "root-only"
    secret_dir.mkdir(mode=0o700 if how == "folder" else 0o755)
    secret = secret_dir / "token.txt"
    secret.write_text("hunter2\n")
    secret.chmod(0o644 if how == "folder" else 0o600)
    folder = _pipeline(shared_root, "probe", "print('never')\n")
    requirements = folder / "requirements.txt"
    if how == "link":
        requirements.symlink_to(secret)
    else:
        requirements.write_text(f"-r {secret}\n")
        requirements.chmod(0o644)
    res = run_cli("run", "probe", env={"RUN_AS_USER": RUN_USER}, timeout=120)
    assert res.returncode == 1
    (run,) = _json_runs()
    reason = str(run["failure_reason"])
    assert "Permission denied" in reason and f"RUN_AS_USER (uid {run_user.pw_uid})" in reason
    log = _log_of(run, shared_root["LOGS_DIR"])
    assert "building environment" not in log and "reusing environment" not in log
    envs = Path(shared_root["DATA_DIR"]) / "envs"
    assert not envs.exists() or not [p for p in envs.iterdir() if not p.name.startswith(".")]
    # the same file, readable by that user, is read (the refusal is about access alone)
    secret_dir.chmod(0o755)
    secret.chmod(0o644)
    listed = run_cli("env", "build", "probe", env={"RUN_AS_USER": RUN_USER}, timeout=120)
    assert "building environment" in listed.stderr, listed.stderr
    assert "Permission denied" not in listed.stderr, listed.stderr
