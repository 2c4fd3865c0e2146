"""``prepare``: the environment a run needs, built once and reused; ``in_use``: hold it.

Guarantees:
- an environment is reused only when complete (its record, written last, exists and
  names the same inputs) and its interpreter is still there; anything else in its
  directory is wiped and built again;
- processes preparing the same new environment build it once: the build happens under
  an exclusive ``flock`` on ``<key>.lock``; the others wait, then reuse it;
- a failed or interrupted build leaves no directory that could be reused;
- the dependency files are read once, and a build whose files changed meanwhile fails
  rather than record an environment that does not match its key;
- ``in_use`` holds a shared lock on ``<key>.use`` that ``gc`` never removes under.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from fastflow.config import Settings
from fastflow.environments import builder, interpreters, keys, locks, registry, sources
from fastflow.errors import BuildStopped, EnvBuildError

Log = Callable[[str], None]


@dataclass(frozen=True)
class PreparedEnv:
    """A complete environment: ``path`` is ``DATA_DIR/envs/<key>``, ``python`` its
    interpreter; ``reused`` is false when this call built it."""

    key: str
    path: Path
    python: Path
    reused: bool


def _uv_version() -> str:
    try:
        return metadata.version("uv")
    except metadata.PackageNotFoundError:
        return ""


def _usable(record: registry.EnvRecord | None, env_dir: Path, digest: str) -> str | None:
    """Why the environment in ``env_dir`` cannot be reused (``None``: it can)."""
    if record is None:
        return "half-built (no completion record)" if env_dir.exists() else None
    if record.digest != digest:
        return "its record names other inputs"
    if not (env_dir / "bin" / "python").exists():
        return "its interpreter link is broken"
    if not Path(record.interpreter).exists():
        return f"its base interpreter {record.interpreter} is gone"
    return None


def _reader(user: tuple[int, int] | None) -> sources.Reader | None:
    """Whose access the dependency files are read with: the build's user, when the build
    runs as another user than fastflow's (so that fastflow's own access never puts a
    file that user may not read into the key)."""
    if user is None or user[0] == os.geteuid():
        return None
    return sources.Reader(*user)


def _wipe(env_dir: Path) -> None:
    registry.remove_record(env_dir)
    builder.remove_tree(env_dir)
    if env_dir.exists():
        raise EnvBuildError(f"cannot remove the incomplete environment {env_dir}")


def prepare(
    settings: Settings,
    pipeline_name: str,
    folder: Path,
    python: str | None,
    log: Log,
    user: tuple[int, int] | None = None,
    stop: threading.Event | None = None,
) -> PreparedEnv:
    """The environment for a pipeline in ``folder`` with interpreter version ``python``
    (``None``: the interpreter fastflow runs on): reused when it exists, else built with
    uv, its output streamed to ``log`` line by line; with ``user`` (uid, gid) from an
    interpreter that user can execute. Raises ``ConfigError`` (interpreter not
    installed) or ``EnvBuildError`` (``BuildStopped`` once ``stop`` is set: while
    waiting for another process's build of the same environment too)."""
    interp = interpreters.find(python, user)
    reader = _reader(user)
    deps = sources.read(folder, reader)
    local = sources.local_state(folder, deps)
    digest = keys.digest(interp.version, deps.kind, deps.files, local)
    key = keys.key_of(digest)
    envs = registry.ensure_root(settings)
    env_dir = envs / key
    what = f"python {interp.version}, {deps.label}"

    def waiting() -> None:
        log(f"waiting for environment {key} (another process holds its lock)")

    with locks.exclusive(registry.build_lock(envs, key), on_wait=waiting, stop=stop):
        record = registry.read(env_dir)
        problem = _usable(record, env_dir, digest)
        if record is not None and problem is None:
            record.pipelines = sorted({*record.pipelines, pipeline_name})
            record.last_used_at = registry.now_iso()
            registry.write(env_dir, record)
            log(f"reusing environment {key} ({what})")
            return PreparedEnv(key, env_dir, env_dir / "bin" / "python", reused=True)
        if problem is not None:
            log(f"environment {key} is {problem}: building it again")
            _wipe(env_dir)
        log(f"building environment {key} ({what})")
        started = time.monotonic()
        record = registry.EnvRecord(
            key=key,
            digest=digest,
            python=interp.version,
            interpreter=str(interp.path),
            kind=deps.kind,
            files=deps.names,
            pipelines=[pipeline_name],
            uv=_uv_version(),
        )
        try:
            timeout = settings.env_build_timeout_seconds
            _build(env_dir, interp, deps, folder, log, timeout, user, fresh=bool(local), stop=stop)
            record.build_seconds = round(time.monotonic() - started, 3)
            registry.write(env_dir, record)  # the completion marker: last
        except BuildStopped:
            _wipe_quietly(env_dir)
            raise
        except EnvBuildError as e:
            _wipe_quietly(env_dir)
            raise EnvBuildError(
                f"cannot build the environment of pipeline {pipeline_name!r} ({what}): {e}"
            ) from None
        except BaseException:
            _wipe_quietly(env_dir)
            raise
        log(f"environment ready in {record.build_seconds:.1f} s")
        return PreparedEnv(key, env_dir, env_dir / "bin" / "python", reused=False)


def _build(
    env_dir: Path,
    interp: interpreters.Interpreter,
    deps: sources.Dependencies,
    folder: Path,
    log: Log,
    timeout: float | None = None,
    user: tuple[int, int] | None = None,
    *,
    fresh: bool = False,
    stop: threading.Event | None = None,
) -> None:
    """Build with uv (within ``timeout`` seconds), as ``user`` when that is another user
    than fastflow's; ``fresh``: without uv's shared cache (it would install the wheel it
    built from a local package before, unless that package's ``pyproject.toml`` changed).
    Fail if the dependency files changed meanwhile (the environment would not match its
    key)."""
    if user is not None and user[0] != os.geteuid():
        _build_as(env_dir, interp, deps, folder, log, timeout, user, fresh, stop)
    else:
        cache = env_dir.parent / ".uv-cache"
        uv_env = builder.uv_environ(os.environ, cache)
        if fresh:
            uv_env["UV_NO_CACHE"] = "1"
        elif uv_env["UV_CACHE_DIR"] == str(cache):
            _private_folder(cache)
        builder.build(env_dir, interp, deps, folder, uv_env, log, timeout, stop=stop)
    if sources.read(folder, _reader(user)) != deps:
        raise EnvBuildError(f"the dependency files of {folder} changed during the build; run again")


def _build_as(
    env_dir: Path,
    interp: interpreters.Interpreter,
    deps: sources.Dependencies,
    folder: Path,
    log: Log,
    timeout: float | None,
    user: tuple[int, int],
    fresh: bool = False,
    stop: threading.Event | None = None,
) -> None:
    """Build as the run's user (``RUN_AS_USER``): the build backends of the pipeline's
    dependencies never run as fastflow's user. The user gets an empty ``env_dir`` and
    a cache of its own for this build only (``.build-cache-<key>``, removed after it,
    unless ``UV_CACHE_DIR`` is set): a cache shared between builds would be writable by
    every run of that user, which could alter what later builds of other pipelines
    install, or hold its lock and stop them. ``builder.seal`` gives the result back to
    fastflow's user."""
    uid, gid = user
    cache = env_dir.parent / f".build-cache-{env_dir.name}"
    uv_env = builder.uv_environ(os.environ, cache)
    uv_env.pop("TMPDIR", None)  # fastflow's may be private to it; uv's default is /tmp
    # an empty home of fastflow's: the user's own ``~/.config/uv`` (which its runs can
    # write) must not configure the builds of other pipelines
    uv_env["HOME"] = str(_empty_home(env_dir.parent))
    # files of their own: a file linked to the cache has two names, which ``seal`` refuses
    uv_env["UV_LINK_MODE"] = "copy"
    own_cache = uv_env["UV_CACHE_DIR"] == str(cache)
    if fresh and not own_cache:
        uv_env["UV_NO_CACHE"] = "1"  # (see ``_build``)
    reserved = frozenset({registry.METADATA, registry.tmp_name()})
    try:
        for path in [env_dir, cache] if own_cache else [env_dir]:
            builder.remove_tree(path)
            path.mkdir(mode=0o700)
            os.chown(path, uid, gid)
        builder.build(env_dir, interp, deps, folder, uv_env, log, timeout, user, reserved, stop)
    except EnvBuildError as e:
        if "Permission denied" not in str(e):
            raise
        raise EnvBuildError(
            f"{e}; the build runs as RUN_AS_USER (uid {uid}): the dependency files, a "
            "local UV_FIND_LINKS folder and SSL_CERT_FILE must be readable by that user"
        ) from None
    finally:
        if own_cache:
            builder.remove_tree(cache)  # (no process of the build is left to refill it)


def _empty_home(envs: Path) -> Path:
    """``envs/.build-home``: an empty folder of fastflow's, readable by all (0555)."""
    home = envs / ".build-home"
    home.mkdir(mode=0o555, exist_ok=True)
    st = home.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or os.listdir(home):
        builder.remove_tree(home)
        home.mkdir(mode=0o555)
    home.chmod(0o555)
    return home


def _private_folder(path: Path) -> None:
    """``path`` made (if missing) and kept 0700: uv's cache is fastflow's alone. A run's
    user (``RUN_AS_USER``) that could open its lock files could hold one and stop every
    build; environments do not need it (uv links or copies files out of it, and
    ``builder.seal`` opens them up where they are used)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)


def _wipe_quietly(env_dir: Path) -> None:
    """After a failed build: no record means never reused, even if rmtree fails."""
    with contextlib.suppress(OSError):
        registry.remove_record(env_dir)
    builder.remove_tree(env_dir)


@contextlib.contextmanager
def in_use(env: PreparedEnv) -> Iterator[None]:
    """Hold ``env`` for a run: ``gc`` skips it until the block ends. Raises
    ``EnvBuildError`` when it was removed between ``prepare`` and this call (only an
    explicit ``env gc --older-than 0d`` can do that): prepare it again."""
    with locks.shared(registry.use_lock(env.path.parent, env.key)):
        if registry.read(env.path) is None:
            raise EnvBuildError(
                f"environment {env.key} was removed before the run started; prepare it again"
            )
        yield
