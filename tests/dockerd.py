"""A real Docker daemon for the tests, and an offline base image.

``daemon()`` returns the process-wide :class:`Daemon` (``.host`` for ``DOCKER_HOST``,
``.image`` the base image tag); the session fixture ``docker_daemon`` does the same for
tests (``from tests.dockerd import docker_daemon  # noqa: F401``). When dockerd is
missing or does not start, tests fail in CI (``CI=true``) and skip with the reason
elsewhere; ``start()`` raises :class:`DaemonUnavailable` instead (for ``bench/``).

The daemon is Debian's ``dockerd`` with ``--storage-driver=vfs --iptables=false
--bridge=none`` and a private data root, exec root and socket under
``FASTFLOW_TEST_DOCKER_DIR`` (default ``~/.cache/fastflow-tests/docker``). The data root
is kept between test runs, so the base image is built once. Several processes may use
the daemon at once: each holds a shared lock on ``users.lock`` while it lives; starting
and stopping happen under ``daemon.lock``; the last user stops it (at interpreter exit,
or when the session fixture ends). A daemon left by a killed run is stopped and
restarted; its stale pid file and socket never block the next start.

The base image is built offline (no registry is reachable here): a root filesystem made
of the host's Python 3.11 (``sys.base_prefix``; the standard library without tests,
IDLE and tkinter; pip unpacked from ``ensurepip``'s bundled wheel, ``ensurepip`` kept),
the shared libraries ``ldd`` lists (and ``libgcc_s``, which glibc loads itself), ``/bin/sh``
(dash) and ``/usr/bin/env``, imported
with ``docker import`` and tagged ``fastflow-test/python:3.11-<content hash>``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import docker

FORMAT = 7  # bump when the image recipe changes
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
REPOSITORY = "fastflow-test/python"
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "__phello__"})
_SKIP_TOP = frozenset(
    {"idlelib", "tkinter", "turtledemo", "site-packages", "lib2to3", "pydoc_data"}
)
_SKIP_MODULES = ("_test", "_ctypes_test", "_tkinter", "xxlimited", "_xxtestfuzz", "xxsubtype")
_EXTRA_BINARIES = ("/usr/bin/env",)
_DLOPENED = ("libgcc_s.so.1",)  # glibc loads it for pthread_exit (Python's daemon threads)
IMAGE_CHANGES = [
    "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
]


class DaemonUnavailable(RuntimeError):
    """dockerd is not installed, not permitted (not root) or did not start."""


@dataclass(frozen=True)
class Daemon:
    """A running test daemon: ``host`` is a ``DOCKER_HOST`` value, ``image`` the tag of
    the offline base image (Python 3.11 with pip)."""

    host: str
    image: str
    root: Path

    def client(self, timeout: int = 60) -> docker.DockerClient:
        """A Docker SDK client for this daemon."""
        import docker

        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def env(self) -> dict[str, str]:
        """The variables that point fastflow at this daemon and image."""
        return {"DOCKER_HOST": self.host, "DOCKER_DEFAULT_IMAGE": self.image}


def cache_dir() -> Path:
    configured = os.environ.get("FASTFLOW_TEST_DOCKER_DIR")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "fastflow-tests" / "docker"


# --- locks -------------------------------------------------------------------------------


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)


# --- the daemon process ------------------------------------------------------------------


def _ping(sock: Path) -> bool:
    """Whether a daemon answers ``/_ping`` on the unix socket ``sock``."""
    import socket

    if not sock.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = s.recv(256)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0] + b" "


def _pid_of(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"dockerd" in cmdline else None  # a recycled pid is not ours


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _stop_pid(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # ours: reap it
        pause.wait(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class _Paths:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.exec = root / "exec"
        self.sock = root / "docker.sock"
        self.pidfile = root / "docker.pid"
        self.log = root / "dockerd.log"
        self.daemon_lock = root / "daemon.lock"
        self.users_lock = root / "users.lock"
        self.image_lock = root / "image.lock"


def _start_dockerd(p: _Paths) -> None:
    """Start dockerd (after clearing what a killed one left) and wait for ``/_ping``."""
    dockerd = shutil.which("dockerd") or next(
        (c for c in ("/usr/sbin/dockerd", "/usr/bin/dockerd") if os.access(c, os.X_OK)), None
    )
    if dockerd is None:
        raise DaemonUnavailable("dockerd is not installed (make docker installs docker.io)")
    if os.geteuid() != 0:
        raise DaemonUnavailable("dockerd needs root (the tests run it with its own data root)")
    stale = _pid_of(p.pidfile)
    if stale is not None:
        _stop_pid(stale, STOP_TIMEOUT_S)
    for leftover in (p.pidfile, p.sock):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    p.data.mkdir(parents=True, exist_ok=True)
    p.exec.mkdir(parents=True, exist_ok=True)
    cmd = [
        dockerd,
        "--storage-driver=vfs",
        "--iptables=false",
        "--ip-masq=false",
        "--bridge=none",
        "--log-level=warn",
        f"--data-root={p.data}",
        f"--exec-root={p.exec}",
        f"--pidfile={p.pidfile}",
        "-H",
        f"unix://{p.sock}",
    ]
    with p.log.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives a pytest that is killed: the next run stops it
            env={"PATH": os.environ.get("PATH", os.defpath)},
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    pause = threading.Event()
    while not _ping(p.sock):
        if proc.poll() is not None:
            raise DaemonUnavailable(
                f"dockerd exited with status {proc.returncode}: {_log_tail(p.log)}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise DaemonUnavailable(f"dockerd did not answer in {START_TIMEOUT_S:g} s")
        pause.wait(0.05)


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- the offline base image --------------------------------------------------------------


def _ldd(paths: list[Path]) -> set[Path]:
    """The shared libraries (resolved) that ``paths`` need, the loader included."""
    found: set[Path] = set()
    for chunk in range(0, len(paths), 64):
        out = subprocess.run(
            ["ldd", *map(str, paths[chunk : chunk + 64])],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for line in out.splitlines():
            parts = line.split()
            for token in parts:
                if token.startswith("/") and "(" not in token:
                    found.add(Path(token))
    return {lib for lib in found if lib.exists() and lib.suffix != ":"}


def _stdlib_files(stdlib: Path) -> Iterator[Path]:
    """The standard library's sources, data files and extension modules (no caches,
    tests, IDLE or tkinter)."""
    for dirpath, dirnames, filenames in os.walk(stdlib):
        here = Path(dirpath)
        rel = here.relative_to(stdlib)
        dirnames[:] = [
            d
            for d in dirnames
            if d not in _SKIP_DIRS
            and d != "__pycache__"
            and not (rel == Path(".") and (d in _SKIP_TOP or d.startswith("config-")))
        ]
        for name in filenames:
            if name.endswith(".pyc"):
                continue
            if here.name == "lib-dynload" and name.startswith(_SKIP_MODULES):
                continue
            yield here / name


def _add_module(zf: zipfile.ZipFile, arcname: str, source: bytes, shown: str) -> None:
    """``arcname`` (a ``.py``) and its compiled ``.pyc`` (hash-based, never re-checked)."""
    import importlib.util
    import marshal

    zf.writestr(arcname, source)
    try:
        code = compile(source, shown, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return  # a template or a file for another Python: kept as data
    header = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little")  # hash-based, unchecked
    header += importlib.util.source_hash(source)
    zf.writestr(arcname[:-3] + ".pyc", header + marshal.dumps(code))


class _Recipe:
    """What goes into the image, and its content hash.

    Few files make a fast container start on vfs (it copies the image per container):
    the pure-Python standard library and pip go into one ``python311.zip`` (on Python's
    default ``sys.path``), with compiled ``.pyc`` next to every ``.py``; extension modules
    and shared libraries stay files.
    """

    def __init__(self) -> None:
        prefix = Path(sys.base_prefix)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        self.version = version
        self.prefix = prefix
        self.python = prefix / "bin" / f"python{version}"
        self.stdlib = Path(sysconfig.get_paths(vars={"base": str(prefix)})["stdlib"])
        libdir = Path(sysconfig.get_config_var("LIBDIR") or prefix / "lib")
        self.libpython = [
            p
            for p in libdir.glob(f"libpython{version}*.so.*")
            if p.is_file() and not p.is_symlink()
        ]
        self.files = list(_stdlib_files(self.stdlib))
        self.dash = Path(shutil.which("dash") or "/bin/dash")
        binaries = [self.python, self.dash, *map(Path, _EXTRA_BINARIES)]
        binaries += [f for f in self.files if f.suffix == ".so"]
        self.libs = _ldd([b for b in binaries if b.exists()]) - set(self.libpython)
        libc_dir = next((lib.parent for lib in self.libs if lib.name.startswith("libc.so")), None)
        if libc_dir is not None:
            self.libs |= {libc_dir / n for n in _DLOPENED if (libc_dir / n).exists()}
        self.pip_wheel = next(iter(sorted((self.stdlib / "ensurepip" / "_bundled").glob("pip-*"))))

    def tag(self) -> str:
        h = hashlib.sha256(f"{FORMAT}:{sys.version}:{self.prefix}".encode())
        for path in sorted({self.python, self.dash, self.pip_wheel, *self.libs, *self.files}):
            st = path.stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return f"{REPOSITORY}:{self.version}-{h.hexdigest()[:12]}"

    def stage(self, root: Path) -> None:
        """Lay the root filesystem out under ``root`` (``ld.so.cache`` included)."""
        local = root / "usr" / "local"
        for d in ("bin", "dev", "etc", "proc", "sys", "root", "usr/bin", "usr/local/bin"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir()
        (root / "tmp").chmod(0o1777)
        stdlib_target = local / "lib" / f"python{self.version}"
        (stdlib_target / "site-packages").mkdir(parents=True)
        shutil.copy2(self.python, local / "bin" / f"python{self.version}")
        for alias in ("python3", "python"):
            (local / "bin" / alias).symlink_to(f"python{self.version}")
        shutil.copy2(self.dash, root / "bin" / "sh")
        for extra in _EXTRA_BINARIES:
            if Path(extra).exists():
                shutil.copy2(extra, root / extra.lstrip("/"))
        for lib in self.libpython:
            shutil.copy2(lib, local / "lib" / lib.name)
            _strip(local / "lib" / lib.name)
        for lib in self.libs:
            target = root / str(lib).lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, target)
        shown_root = f"/usr/local/lib/python{self.version}"
        zip_name = f"python{self.version.replace('.', '')}.zip"
        with zipfile.ZipFile(local / "lib" / zip_name, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in self.files:
                rel = f.relative_to(self.stdlib).as_posix()
                if f.suffix == ".so":
                    target = stdlib_target / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, target)
                    _strip(target)
                elif f.suffix == ".py":
                    _add_module(zf, rel, f.read_bytes(), f"{shown_root}/{rel}")
                else:
                    zf.write(f, rel)
            with zipfile.ZipFile(self.pip_wheel) as wheel:
                for info in wheel.infolist():
                    if info.is_dir() or ".dist-info/" in info.filename:
                        continue  # without metadata: pip would take the zip for an egg
                    data = wheel.read(info)
                    if info.filename.endswith(".py"):
                        _add_module(zf, info.filename, data, f"{shown_root}/{info.filename}")
                    else:
                        zf.writestr(info.filename, data)
        shutil.copy2(self.stdlib / "os.py", stdlib_target / "os.py")  # the prefix landmark
        lib_dirs = sorted({str(lib.parent) for lib in self.libs} | {"/usr/local/lib"})
        (root / "etc" / "ld.so.conf").write_text("\n".join(lib_dirs) + "\n")
        (root / "etc" / "passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
        )
        (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
        subprocess.run(["ldconfig", "-r", str(root)], check=True, capture_output=True)


def _strip(path: Path) -> None:
    """Drop debug symbols (a smaller image is a faster container start on vfs)."""
    strip = shutil.which("strip")
    if strip is not None:
        subprocess.run([strip, "--strip-debug", str(path)], check=False, capture_output=True)


def _image_exists(p: _Paths, tag: str) -> bool:
    import docker

    client = docker.DockerClient(base_url=f"unix://{p.sock}", timeout=120)
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()


def _build_image(p: _Paths) -> str:
    """The base image's tag; built and imported once (under ``image.lock``)."""
    import docker

    recipe = _Recipe()
    tag = recipe.tag()
    if _image_exists(p, tag):
        return tag
    with _flock(p.image_lock, fcntl.LOCK_EX):
        if _image_exists(p, tag):
            return tag
        staging = p.root / f"rootfs-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        tarball = p.root / f"rootfs-{os.getpid()}.tar"
        try:
            recipe.stage(staging)
            with tarfile.open(tarball, "w") as tar:
                for entry in sorted(staging.iterdir()):
                    tar.add(entry, arcname=entry.name)
            client = docker.APIClient(base_url=f"unix://{p.sock}", timeout=600)
            try:
                repository, _, version = tag.partition(":")
                client.import_image_from_file(
                    str(tarball), repository=repository, tag=version, changes=IMAGE_CHANGES
                )
                for old in client.images(name=repository):  # earlier recipes' images
                    for old_tag in old.get("RepoTags") or []:
                        if old_tag != tag:
                            with contextlib.suppress(docker.errors.APIError):
                                client.remove_image(old_tag)
            finally:
                client.close()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                tarball.unlink()
    return tag


# --- process-wide state ------------------------------------------------------------------


class _State:
    lock = threading.Lock()
    daemon: Daemon | None = None
    error: str | None = None
    users_fd: int | None = None


def start() -> Daemon:
    """The running test daemon (started if needed, once per process) with its image;
    raises ``DaemonUnavailable``."""
    with _State.lock:
        if _State.daemon is not None:
            return _State.daemon
        if _State.error is not None:
            raise DaemonUnavailable(_State.error)
        try:
            _State.daemon = _start_locked(_Paths(cache_dir()))
        except DaemonUnavailable as e:
            _State.error = str(e)
            raise
        except Exception as e:  # a broken image build etc.: say what, once
            _State.error = f"{type(e).__name__}: {e}"
            raise DaemonUnavailable(_State.error) from e
        atexit.register(release)
        return _State.daemon


def _start_locked(p: _Paths) -> Daemon:
    p.root.mkdir(parents=True, exist_ok=True)
    with _flock(p.daemon_lock, fcntl.LOCK_EX):
        fd = os.open(p.users_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _State.users_fd = fd
        try:
            if not (_pid_of(p.pidfile) is not None and _ping(p.sock)):
                _start_dockerd(p)
        except BaseException:
            _drop_user()
            raise
    try:
        tag = _build_image(p)
    except BaseException:
        release()
        raise
    return Daemon(host=f"unix://{p.sock}", image=tag, root=p.root)


def _drop_user() -> None:
    if _State.users_fd is not None:
        os.close(_State.users_fd)
        _State.users_fd = None


def release() -> None:
    """This process no longer uses the daemon; the last user stops it."""
    with _State.lock:
        if _State.users_fd is None:
            return
        p = _Paths(cache_dir())
        with _flock(p.daemon_lock, fcntl.LOCK_EX):
            fd = _State.users_fd
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                last = True
            except BlockingIOError:
                last = False
            if last:
                pid = _pid_of(p.pidfile)
                if pid is not None:
                    _stop_pid(pid, STOP_TIMEOUT_S)
            _drop_user()
        _State.daemon = None


def daemon() -> Daemon:
    """The test daemon; ``pytest.fail`` in CI, ``pytest.skip`` elsewhere when it cannot
    start."""
    try:
        return start()
    except DaemonUnavailable as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Docker test daemon is required in CI: {e}")
        pytest.skip(f"no Docker daemon for the tests: {e}")


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[Daemon]:
    """The test daemon for a whole session (stopped at the end when no other process
    uses it)."""
    yield daemon()
    release()
