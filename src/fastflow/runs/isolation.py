"""What a run may see: its OS user, its environment variables, its working folder, and
the file modes that keep fastflow's own state away from it.

Guarantees:
- a run's environment holds only a minimal base (``PATH``, ``HOME``, ``LANG``, ``TZ``,
  ...), the variables ``PASS_ENV`` names, the pipeline's and the run's ``env``, its listed
  secrets and the ``FASTFLOW_*`` run variables — never fastflow's own settings or secrets;
- with ``RUN_AS_USER`` the run executes as that user, its primary group and no
  supplementary groups; fastflow refuses to start (``ConfigError``, exit 2) when the user
  does not exist or fastflow cannot switch users;
- ``DATA_DIR`` is ``0700`` (``0711`` with ``RUN_AS_USER``: other users may pass through
  to the environments but list nothing), the secret key and the SQLite files ``0600``;
- each run works in a private scratch folder (``0700``, owned by the run's user) that is
  removed after the run.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastflow.config import Settings
from fastflow.errors import ConfigError

log = logging.getLogger(__name__)

# variables of fastflow's own environment that every run gets (when set)
BASE_VARS = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "SSL_CERT_FILE", "SSL_CERT_DIR")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_CAP_SETGID, _CAP_SETUID = 6, 7


@dataclass(frozen=True)
class RunAs:
    """The OS user runs execute as."""

    name: str
    uid: int
    gid: int
    home: str


def _effective_caps() -> int | None:
    """This process's effective capabilities; None where the kernel does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


def can_switch_users() -> bool:
    """CAP_SETUID and CAP_SETGID in the effective set — root holds them, except root in
    a container started without them (``--cap-drop SETUID``), which is refused at start
    rather than failing each run. Root where the capabilities cannot be read."""
    caps = _effective_caps()
    if caps is None:
        return os.geteuid() == 0
    return bool(caps & (1 << _CAP_SETUID)) and bool(caps & (1 << _CAP_SETGID))


def user_entry(settings: Settings) -> pwd.struct_passwd | None:
    """The account ``RUN_AS_USER`` names (a name or a numeric uid); None when unset.
    ``ConfigError`` when this machine has no such user (``fastflow doctor`` asks this
    too: it does not switch users itself, so it does not need the right to)."""
    name = settings.run_as_user
    if name is None:
        return None
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError, OverflowError):
        raise ConfigError(f"RUN_AS_USER={name}: no such user on this machine") from None


def run_as(settings: Settings) -> RunAs | None:
    """The user of ``RUN_AS_USER``, checked; None when unset."""
    name = settings.run_as_user
    entry = user_entry(settings)
    if name is None or entry is None:
        return None
    if not can_switch_users():
        raise ConfigError(
            f"RUN_AS_USER={name}: fastflow must run as root or hold CAP_SETUID and "
            "CAP_SETGID to start runs as another user"
        )
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/")


def run_env(
    settings: Settings,
    user: RunAs | None,
    *,
    bin_dir: Path | None,
    layers: list[dict[str, str]],
    run_vars: dict[str, str],
) -> dict[str, str]:
    """The complete environment of a run: base, ``PASS_ENV``, then ``layers`` in order
    (pipeline env, run env, secrets), then ``run_vars`` (``FASTFLOW_*``)."""
    path = os.environ.get("PATH") or DEFAULT_PATH
    env = {"PATH": f"{bin_dir}{os.pathsep}{path}" if bin_dir is not None else path}
    env["LANG"] = os.environ.get("LANG") or "C.UTF-8"
    for name in BASE_VARS:
        if name in os.environ and name != "LANG":
            env[name] = os.environ[name]
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    else:
        env["HOME"] = os.environ.get("HOME") or "/"
        for name in ("USER", "LOGNAME"):
            if name in os.environ:
                env[name] = os.environ[name]
    if bin_dir is not None:
        env["VIRTUAL_ENV"] = str(bin_dir.parent)
    for name in settings.pass_env:
        if name in os.environ:
            env[name] = os.environ[name]
    for layer in layers:
        env.update(layer)
    env.update(run_vars)
    return env


def make_workdir(run_id: uuid.UUID, user: RunAs | None) -> Path:
    """A new private scratch folder for one run (owned by the run's user)."""
    path = Path(tempfile.mkdtemp(prefix=_workdir_prefix(run_id)))
    if user is not None:
        os.chown(path, user.uid, user.gid)
    path.chmod(0o700)
    return path


def _workdir_prefix(run_id: uuid.UUID) -> str:
    return f"fastflow-run-{run_id}-"  # the whole id: only this run's folders match it


def remove_leftover_workdirs(run_id: uuid.UUID) -> int:
    """Remove the scratch folders an interrupted run left in this machine's temporary
    folder (its fastflow process died before it could); how many. Never raises."""
    removed = 0
    try:
        found = list(Path(tempfile.gettempdir()).glob(_workdir_prefix(run_id) + "*"))
    except OSError:
        return 0
    for path in found:
        try:
            if path.is_symlink() or not path.is_dir():
                continue
            remove_workdir(path)
            removed += not path.exists()
        except OSError:
            continue
    return removed


def remove_workdir(path: Path) -> None:
    """Remove a run's scratch folder, whatever the run left in it."""

    def _writable_then_retry(func: object, p: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
            func(p)  # type: ignore[operator]
        except OSError:
            pass

    shutil.rmtree(path, onerror=_writable_then_retry)


def ensure_data_dir(settings: Settings) -> Path:
    """``DATA_DIR`` as a folder (created if missing), resolved; ``ConfigError`` (exit 2)
    if it is a file, below a file or cannot be created — checked before the database is
    opened, so that a refused start creates nothing."""
    data = settings.data_dir.expanduser().resolve()
    try:
        data.mkdir(parents=True, exist_ok=True)
        if not data.is_dir():
            raise NotADirectoryError(20, "Not a directory")
    except OSError as e:  # a file, a path below a file, an unwritable place: exit 2
        raise _not_a_folder(settings, e.strerror or type(e).__name__) from None
    return data


def _not_a_folder(settings: Settings, why: str) -> ConfigError:
    return ConfigError(
        f"invalid configuration: DATA_DIR={settings.data_dir}: cannot be used as a folder ({why})"
    )


def check_data_dir(settings: Settings) -> None:
    """``ensure_data_dir``'s refusal (``ConfigError``, exit 2) of a ``DATA_DIR`` that is
    a file or below one, without creating anything."""
    data = settings.data_dir.expanduser().absolute()
    for place in (data, *data.parents):
        if place.exists() or place.is_symlink():
            if not place.is_dir():
                raise _not_a_folder(settings, "Not a directory")
            return


def secure_data_dir(settings: Settings) -> None:
    """Create ``DATA_DIR`` with fastflow-only modes (0711 with ``RUN_AS_USER``, so that
    runs reach their environments — and kept 0711 once set, whichever process comes
    next —, else 0700); tighten the key and SQLite files."""
    data = ensure_data_dir(settings)
    mode = 0o711 if settings.run_as_user else 0o700
    if mode == 0o700 and stat.S_IMODE(data.stat().st_mode) == 0o711:
        # a server with RUN_AS_USER set it so that its runs reach their environments; a
        # command started without the setting must not take that away (its runs then
        # failed with "Permission denied" until the server restarted)
        mode = 0o711
    targets = [(data, mode), (data / "secret.key", 0o600)]
    sqlite = _sqlite_file(settings.database_url)
    if sqlite is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            targets.append((Path(str(sqlite) + suffix), 0o600))
    for path, want in targets:
        try:
            if path.exists() and stat.S_IMODE(path.stat().st_mode) != want:
                path.chmod(want)
        except OSError as e:
            log.warning("could not set mode %o on %s: %s", want, path, e)


def _sqlite_file(url: str) -> Path | None:
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix + ":memory:":
        return None
    return Path(url[len(prefix) :].split("?", 1)[0]).expanduser().resolve()


WRITABLE_CHECK_LIMIT = 2000  # entries of a pipeline folder looked at per run start


def folder_writable_by(folder: Path, user: RunAs) -> bool:
    """Whether ``user`` could change the pipeline in ``folder`` by mode bits: write into
    the folder or any folder below it, or write one of its files (``main.py`` first; at
    most ``WRITABLE_CHECK_LIMIT`` entries are looked at, links not followed)."""
    if _writable_by(folder, user) or _writable_by(folder / "main.py", user):
        return True
    seen = 0
    for base, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            seen += 1
            if seen > WRITABLE_CHECK_LIMIT:
                return False
            path = Path(base) / name
            if not path.is_symlink() and _writable_by(path, user):
                return True
    return False


def writable_above(folder: Path, user: RunAs) -> Path | None:
    """The nearest folder above ``folder`` that ``user`` could write into by its mode bits
    (a sticky ``/tmp`` too: a new file there is enough), or None. uv reads ``uv.toml``
    and workspace files from the folders above the one it builds in."""
    for parent in folder.resolve().parents:
        if _writable_by(parent, user):
            return parent
    return None


def _writable_by(path: Path, user: RunAs) -> bool:
    """Whether ``user`` could write ``path`` by its mode bits."""
    try:
        st = path.stat()
    except OSError:
        return False
    mode = st.st_mode
    if st.st_uid == user.uid:
        return bool(mode & stat.S_IWUSR)
    if st.st_gid == user.gid:
        return bool(mode & stat.S_IWGRP)
    return bool(mode & stat.S_IWOTH)
