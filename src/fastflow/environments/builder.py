"""Build one virtualenv with uv into a given directory, streaming uv's output.

Guarantees: uv never downloads an interpreter (``UV_PYTHON_DOWNLOADS=never``); its
environment is minimal — ``PATH``, ``HOME``, ``LANG``, ``TMPDIR``, the proxy and CA
variables, and every ``UV_*`` variable of fastflow's environment (index configuration),
never fastflow's settings or secrets; every line of its output reaches ``log`` as it is
printed, with credentials in URLs masked; a failure raises ``EnvBuildError`` with one
line holding uv's key message; the result is readable and executable by every user
(directories 0755, files world-readable, no set-id bits). The caller owns the
directory's lifecycle.

With ``user`` (another OS user: ``RUN_AS_USER``) uv and every build backend it starts
run as that user, its primary group and no supplementary groups, so a pipeline's
dependencies never execute as fastflow's user. ``seal`` then hands what the build made
back to fastflow's user before anyone uses it: the run's user cannot change the
environment afterwards.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from fastflow.environments.interpreters import Interpreter
from fastflow.environments.reaper import PARENT_ENV
from fastflow.environments.sources import PYPROJECT, REQUIREMENTS, REQUIREMENTS_LOCK, Dependencies
from fastflow.errors import BuildStopped, EnvBuildError

Log = Callable[[str], None]

# variables besides UV_* that a build may need (to reach an index through a proxy)
PASSED = (
    "PATH",
    "HOME",
    "LANG",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)
# UV_* variables that would change which interpreter or environment uv builds into, or
# contradict the flags below: fastflow decides these
NOT_PASSED = frozenset(
    {
        "UV_PYTHON",
        "UV_PYTHON_DOWNLOADS",
        "UV_SYSTEM_PYTHON",
        "UV_BREAK_SYSTEM_PACKAGES",
        "UV_PROJECT_ENVIRONMENT",
        "UV_PROJECT",
        "UV_WORKING_DIRECTORY",
        "UV_MANAGED_PYTHON",
        "UV_LOCKED",
        "UV_FROZEN",
        "UV_NO_SYNC",
        "UV_NO_DEV",
        "UV_DEV",
    }
)
REAPER = Path(__file__).with_name("reaper.py")
_STOP_POLL_S = 0.2  # how often a build looks at its stop event and its deadline
_URL_AUTH_RE = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_TAIL_LINES = 200
_MAX_MESSAGE = 600


def uv_binary() -> Path:
    """The uv executable of the ``uv`` package fastflow depends on."""
    try:
        import uv

        return Path(uv.find_uv_bin())
    except (ImportError, FileNotFoundError) as e:
        raise EnvBuildError(f"uv is not installed ({e}); install fastflow's dependencies") from e


def uv_environ(source: Mapping[str, str], cache_dir: Path) -> dict[str, str]:
    """The environment of a uv build made from ``source`` (fastflow's own environment):
    see the module docstring. ``cache_dir`` is uv's cache unless ``UV_CACHE_DIR`` is set."""
    env = {name: source[name] for name in PASSED if source.get(name)}
    env.setdefault("PATH", os.defpath)
    env.update(
        (name, value)
        for name, value in source.items()
        if name.startswith("UV_") and name not in NOT_PASSED
    )
    env.setdefault("UV_CACHE_DIR", str(cache_dir))
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def mask_credentials(line: str) -> str:
    """``https://user:token@host`` -> ``https://***@host``."""
    return _URL_AUTH_RE.sub(r"\1***@", line)


def commands(uv: Path, target: Path, interp: Interpreter, deps: Dependencies) -> list[list[str]]:
    """The uv invocations that build ``target`` (run in the pipeline's folder)."""
    flags = ["--no-progress", "--color", "never"]
    venv_python = str(target / "bin" / "python")
    cmds = [
        [str(uv), "venv", *flags, "--no-project", "--python", str(interp.path), str(target)],
    ]
    pip = [str(uv), "pip"]
    if deps.kind == "requirements":
        cmds.append([*pip, "install", *flags, "--python", venv_python, "-r", REQUIREMENTS])
    elif deps.kind == "requirements-lock":
        cmds.append([*pip, "sync", *flags, "--python", venv_python, REQUIREMENTS_LOCK])
    elif deps.kind == "pyproject":
        cmds.append([*pip, "install", *flags, "--python", venv_python, "-r", PYPROJECT])
    elif deps.kind == "pyproject-lock":
        cmds.append(
            [
                str(uv),
                "sync",
                *flags,
                "--frozen",
                "--no-install-project",
                "--no-dev",
                "--python",
                str(interp.path),
            ]
        )
    return cmds


def summarize(lines: list[str]) -> str:
    """uv's key message from the end of its output: the last ``error:`` line with its
    ``cause:`` lines (or the ``×`` / ``╰─▶`` tree), joined into one line."""
    start = None
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith(("error:", "×")):
            start = i
    if start is None:
        tail = [line.strip() for line in lines if line.strip()]
        return tail[-1] if tail else "uv printed nothing"
    parts = [lines[start].strip().removeprefix("error:").removeprefix("×").strip()]
    for line in lines[start + 1 :]:
        text = line.strip().lstrip("│├╰─▶ ").strip()
        if not text or text.startswith("hint:"):
            break
        parts.append(text.removeprefix("cause:").strip())
    message = ": ".join(p.rstrip(":") for p in parts if p)
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


def _run(
    cmd: list[str],
    cwd: Path,
    env: dict[str, str],
    log: Log,
    timeout: float | None = None,
    user: tuple[int, int] | None = None,
    stop: threading.Event | None = None,
) -> tuple[int | None, list[str]]:
    """Run ``cmd`` (as ``user``, (uid, gid), when given, else as this process) under the
    reaper, calling ``log`` per output line as it comes: (exit status, last lines). The
    status is None when ``timeout`` passed first; ``BuildStopped`` when ``stop`` was set
    first. Either way the reaper kills the command and everything it started, as it
    does when this process dies."""
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    expired, stopped, done = threading.Event(), threading.Event(), threading.Event()
    uid, gid = user if user is not None else (os.geteuid(), os.getegid())
    cmd = [sys.executable, "-I", str(REAPER), str(uid), str(gid), *cmd]
    env = {**env, PARENT_ENV: str(os.getpid())}  # (the reaper takes it out)
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        umask=0o022,
        start_new_session=True,
    ) as proc:

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                proc.terminate()  # the reaper kills everything of the build, then exits

        def watch() -> None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not done.wait(_STOP_POLL_S):
                if stop is not None and stop.is_set():
                    stopped.set()
                elif deadline is not None and time.monotonic() >= deadline:
                    expired.set()
                else:
                    continue
                kill()
                return

        watcher = threading.Thread(target=watch, name="env-build-watch", daemon=True)
        watcher.start()
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = mask_credentials(raw.decode("utf-8", "replace").rstrip("\r\n"))
                tail.append(line)
                log(line)
        except BaseException:
            kill()
            raise
        finally:
            done.set()
            watcher.join()
    if stopped.is_set():
        raise BuildStopped("the environment build was stopped")
    return (None if expired.is_set() else proc.returncode), list(tail)


MAX_DEPTH = 64  # folders below an environment; uv's deepest are about 12
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default", "security.capability")


def seal(
    path: Path, builder_uid: int | None = None, reserved: frozenset[str] = frozenset()
) -> None:
    """Make the tree at ``path`` usable by every user and changeable by fastflow's alone:
    directories 0755, regular files 0644 (0755 where any execute bit was set), no set-id
    or sticky bit, no write bit for others; symbolic links are never followed.

    With ``builder_uid`` (the build ran as that user, and no process of it is left) the
    tree is taken over strictly, each directory before it is listed, through descriptors
    opened without following links: every entry must be the build user's — a directory,
    a regular file with no other name (a hard link could be someone else's file), or a
    symbolic link — and is given to fastflow's user, its ACLs removed; no folder deeper
    than ``MAX_DEPTH``; no entry at the top named in ``reserved`` (the files fastflow
    writes there). Anything else raises ``EnvBuildError`` and the caller discards the
    tree."""
    top = os.open(path, _DIR_FLAGS)
    try:
        if builder_uid is None:
            _open_up(top)
        else:
            _take_dir(top, builder_uid, (os.geteuid(), os.getegid()), reserved, "", 0)
    finally:
        os.close(top)


def _file_mode(st_mode: int) -> int:
    return 0o755 if st_mode & 0o111 else 0o644


def _open_up(fd: int) -> None:
    """Modes only, for a tree fastflow built as itself."""
    os.fchmod(fd, 0o755)
    for name in os.listdir(fd):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                _open_up(child)
            finally:
                os.close(child)
        elif stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != _file_mode(st.st_mode):
            os.chmod(name, _file_mode(st.st_mode), dir_fd=fd)


def _refuse(where: str, what: str) -> EnvBuildError:
    # the name as a quoted literal: it may hold newlines or bytes that are not UTF-8
    shown = repr(where or ".")
    return EnvBuildError(f"the build left {what} at {shown}; the environment is discarded")


def _drop_acls(fd: int) -> None:
    for name in _ACL_XATTRS:
        with contextlib.suppress(OSError):  # (absent, or no xattr support)
            os.removexattr(fd, name)


def _take_dir(
    fd: int, uid: int, me: tuple[int, int], reserved: frozenset[str], where: str, depth: int
) -> None:
    st = os.fstat(fd)
    if st.st_uid != uid:
        raise _refuse(where, f"a folder of uid {st.st_uid}")
    # fastflow's from here on: no entry of it can be added, renamed or swapped any more
    os.fchown(fd, *me)
    os.fchmod(fd, 0o755)
    _drop_acls(fd)
    for name in os.listdir(fd):
        here = f"{where}/{name}" if where else name
        if depth == 0 and name in reserved:
            raise _refuse(here, "a file of fastflow's own name")
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if st.st_uid != uid:
            raise _refuse(here, f"an entry of uid {st.st_uid}")
        if stat.S_ISDIR(st.st_mode):
            if depth + 1 > MAX_DEPTH:
                raise _refuse(here, f"folders deeper than {MAX_DEPTH}")
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                _take_dir(child, uid, me, reserved, here, depth + 1)
            finally:
                os.close(child)
        elif stat.S_ISLNK(st.st_mode):
            os.chown(name, *me, dir_fd=fd, follow_symlinks=False)
        elif stat.S_ISREG(st.st_mode):
            _take_file(fd, name, uid, me, here)
        else:
            raise _refuse(here, "a special file (FIFO, socket or device)")


def _take_file(dir_fd: int, name: str, uid: int, me: tuple[int, int], where: str) -> None:
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
            raise _refuse(where, "an entry that changed while it was taken over")
        if st.st_nlink != 1:
            raise _refuse(where, "a file with another name (a hard link)")
        os.fchown(fd, *me)
        os.fchmod(fd, _file_mode(st.st_mode))
        _drop_acls(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything below it, links not followed, however deep (Python's
    ``rmtree`` recurses once per level); what cannot be removed stays."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        pass
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)


def build(
    target: Path,
    interp: Interpreter,
    deps: Dependencies,
    folder: Path,
    env: dict[str, str],
    log: Log,
    timeout: float | None = None,
    user: tuple[int, int] | None = None,
    reserved: frozenset[str] = frozenset(),
    stop: threading.Event | None = None,
) -> None:
    """Build the environment into ``target`` (which must not exist yet, or be an empty
    directory ``user`` owns), within ``timeout`` seconds in all (``EnvBuildError`` past
    it: uv and whatever it started are killed; ``BuildStopped`` as soon as ``stop`` is
    set); as ``user`` (uid, gid) when given, then ``seal``ed — also when the build
    fails, so that nothing of it stays the user's."""
    uv = uv_binary()
    deadline = None if timeout is None else time.monotonic() + timeout
    if user is None:
        for cmd in commands(uv, target, interp, deps):
            _step(cmd, target, folder, env, log, timeout, deadline, user, stop)
        seal(target)
        return
    try:
        for cmd in commands(uv, target, interp, deps):
            _step(cmd, target, folder, env, log, timeout, deadline, user, stop)
    except BaseException:
        with contextlib.suppress(OSError, EnvBuildError, RecursionError):
            seal(target, user[0])  # a failed build's files stop being the user's too
        raise
    try:
        seal(target, user[0], reserved)
    except OSError as e:
        raise EnvBuildError(
            f"cannot take over the environment built as uid {user[0]}: {e} (fastflow needs "
            "to run as root, or hold CAP_CHOWN besides CAP_SETUID and CAP_SETGID)"
        ) from None


def _step(
    cmd: list[str],
    target: Path,
    folder: Path,
    env: dict[str, str],
    log: Log,
    timeout: float | None,
    deadline: float | None,
    user: tuple[int, int] | None,
    stop: threading.Event | None = None,
) -> None:
    if stop is not None and stop.is_set():
        raise BuildStopped("the environment build was stopped")
    step_env = dict(env)
    if cmd[1] == "sync":
        step_env["UV_PROJECT_ENVIRONMENT"] = str(target)
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        status, tail = _run(cmd, folder, step_env, log, left, user, stop)
    except OSError as e:
        raise EnvBuildError(f"cannot run uv: {e}") from e
    if status is None:
        raise EnvBuildError(
            f"the environment build took longer than {timeout:g} s "
            "(ENV_BUILD_TIMEOUT_SECONDS) and was stopped; a very large build needs a "
            "longer limit, a hung one may wait for uv's cache lock held by another process"
        )
    if status != 0:
        step = " ".join(c for c in cmd[1:3] if not c.startswith("-"))
        raise EnvBuildError(f"{summarize(tail)} (uv {step}, exit status {status})")
