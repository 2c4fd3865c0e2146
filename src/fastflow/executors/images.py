"""Derived images: a pipeline's ``requirements.txt`` installed into its image, built once
per content and reused, collected with the environments (``fastflow env gc``).

The tag is ``fastflow/<pipeline>:<key>``: the pipeline name made a valid repository
name (``repository``), ``key`` the first 16 hex digits of a SHA-256 over the
pipeline's name, the base image's id, the kind of install and the dependency files
(names and bytes, included files too; see ``environments.sources``). The Dockerfile is
``FROM <image>``, the dependency files, ``python -m pip install -r`` with the index
settings of fastflow's environment as build args (``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``,
``PIP_TRUSTED_HOST``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``; the ``UV_*`` equivalents
when those are unset) and a final ``LABEL`` step. The build runs on ``DOCKER_NETWORK``.

Records: ``DATA_DIR/images/<key>.json`` (tag, base, pipelines, last use); locks
``<key>.lock`` (build, reuse, removal) and ``<key>.use`` (held shared while a run
starts from the image). Guarantees: concurrent runs build an image once; a build's
output reaches ``log`` line by line with URL credentials masked; ``collect`` removes an
image only while it holds both locks and Docker agrees that no container uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastflow.config import Settings
from fastflow.environments import locks, sources
from fastflow.environments.builder import mask_credentials
from fastflow.executors.base import ExecutorError
from fastflow.executors.docker import reason_of

if TYPE_CHECKING:
    import docker

Log = Callable[[str], None]
FORMAT = 1
KEY_LENGTH = 16
REPOSITORY_PREFIX = "fastflow/"
MAX_REPOSITORY = 120
_INSTALLABLE = {
    "requirements": sources.REQUIREMENTS,
    "requirements-lock": sources.REQUIREMENTS_LOCK,
}
# build arg <- fastflow's variables, first one set wins
INDEX_ARGS: dict[str, tuple[str, ...]] = {
    "PIP_INDEX_URL": ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_DEFAULT_INDEX"),
    "PIP_EXTRA_INDEX_URL": ("PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_INDEX"),
    "PIP_TRUSTED_HOST": ("PIP_TRUSTED_HOST", "UV_INSECURE_HOST"),
    "PIP_FIND_LINKS": ("PIP_FIND_LINKS", "UV_FIND_LINKS"),
    "PIP_NO_INDEX": ("PIP_NO_INDEX", "UV_NO_INDEX"),
}
_NOT_RUN_NAME = re.compile(r"[^a-z0-9]+")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the builder colours what RUN wrote on stderr


class ImageBuildError(ExecutorError):
    """A derived image could not be built (pip failed, the index is unreachable)."""


def repository(pipeline: str) -> str:
    """``fastflow/<name>``: lower-case ASCII letters and digits joined by ``-`` (accents
    dropped); a short hash of the name is appended when that lost anything, so two
    pipelines never share a repository."""
    ascii_name = unicodedata.normalize("NFKD", pipeline).encode("ascii", "ignore").decode()
    slug = _NOT_RUN_NAME.sub("-", ascii_name.lower()).strip("-")[: MAX_REPOSITORY - 20]
    if slug != pipeline:
        digest = hashlib.sha256(pipeline.encode()).hexdigest()[:8]
        slug = f"{slug}-{digest}" if slug else f"pipeline-{digest}"
    return REPOSITORY_PREFIX + slug


def build_args(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The index settings of ``environ`` as pip build args (only those that are set;
    ``UV_FIND_LINKS`` only when it is a URL: a local folder is not in the image)."""
    out: dict[str, str] = {}
    for arg, names in INDEX_ARGS.items():
        for name in names:
            value = environ.get(name)
            if not value:
                continue
            if arg == "PIP_FIND_LINKS" and "://" not in value:
                continue
            if arg == "PIP_NO_INDEX":
                value = "1" if value.strip().lower() in ("1", "true", "yes", "on") else ""
                if not value:
                    continue
            out[arg] = value
            break
    return out


def dockerfile(base: str, installed: str, key: str) -> str:
    """``FROM base``, the dependency files, pip (exec form: no shell needed in the
    image; ``-r`` includes resolve next to the file), a final ``LABEL``."""
    args = "".join(f"ARG {name}\n" for name in INDEX_ARGS)
    pip = ["python", "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check"]
    pip += ["-r", f"/tmp/fastflow-deps/{installed}"]
    return (
        f"FROM {base}\n"
        f"{args}"
        "ARG PIP_ROOT_USER_ACTION=ignore\n"
        "COPY fastflow-deps/ /tmp/fastflow-deps/\n"
        f"RUN {json.dumps(pip)}\n"
        # the last step is no RUN: the build args stay out of the image's own config
        f'LABEL fastflow.deps="{key}"\n'
    )


def _context(text: str, deps: sources.Dependencies) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entries = [("Dockerfile", text.encode())]
        entries += [(f"fastflow-deps/{n}", d) for n, d in deps.files if not n.startswith("/")]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@dataclass
class ImageRecord:
    key: str
    tag: str
    base: str
    pipelines: list[str] = field(default_factory=list)
    created_at: str = field(default_factory=lambda: _now_iso())
    last_used_at: str = field(default_factory=lambda: _now_iso())
    build_seconds: float = 0.0

    @property
    def last_used(self) -> datetime:
        when = datetime.fromisoformat(self.last_used_at)
        return when if when.tzinfo else when.replace(tzinfo=UTC)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def root(settings: Settings) -> Path:
    """``DATA_DIR/images``."""
    return settings.data_dir.expanduser().resolve() / "images"


def _read(path: Path) -> ImageRecord | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        record = ImageRecord(**{k: data[k] for k in ImageRecord.__dataclass_fields__})
        record.last_used  # noqa: B018 - a malformed time is a damaged record
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


def _write(path: Path, record: ImageRecord) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def records(settings: Settings) -> list[ImageRecord]:
    """Every derived image fastflow built (most recently used first)."""
    folder = root(settings)
    found = [r for p in sorted(folder.glob("*.json")) if (r := _read(p)) is not None]
    return sorted(found, key=lambda r: r.last_used, reverse=True)


@dataclass(frozen=True)
class Prepared:
    """The image a run starts from; ``key`` is None for the base image itself."""

    image: str
    key: str | None = None
    reused: bool = True


def _ensure_base(api: Any, base: str, log: Log) -> str:
    """The base image's id, pulled when the daemon does not have it."""
    import docker

    try:
        return str(api.inspect_image(base)["Id"])
    except docker.errors.ImageNotFound:
        pass
    except Exception as e:
        raise ExecutorError(f"cannot inspect image {base!r}: {reason_of(e)}") from None
    log(f"pulling image {base}")
    try:
        for event in api.pull(base, stream=True, decode=True):
            if isinstance(event, dict) and event.get("error"):
                raise ExecutorError(str(event["error"]))
        return str(api.inspect_image(base)["Id"])
    except Exception as e:
        reason = str(e) if isinstance(e, ExecutorError) else reason_of(e)
        raise ExecutorError(
            f"image {base!r} is not on the Docker daemon and could not be pulled: "
            f"{mask_credentials(reason)}"
        ) from None


def prepare(
    client: docker.DockerClient,
    settings: Settings,
    pipeline: str,
    folder: Path,
    base: str,
    log: Log,
) -> Prepared:
    """The image to run ``pipeline`` from: ``base`` (pulled if missing), or its derived
    image when the folder has a ``requirements.txt`` (built now if needed). Raises
    ``ExecutorError`` (base image missing, build failed) or ``EnvBuildError``."""
    api = client.api
    deps = sources.read(folder)
    base_id = _ensure_base(api, base, log)
    if deps.kind == "none":
        return Prepared(base)
    if deps.kind not in _INSTALLABLE:
        log(f"{deps.label}: not installed into containers; the image must provide the packages")
        return Prepared(base)
    installed = _INSTALLABLE[deps.kind]
    digest = hashlib.sha256(
        json.dumps(
            [
                FORMAT,
                pipeline,  # one record and one tag per pipeline (its repository)
                base_id,
                deps.kind,
                [[n, hashlib.sha256(d).hexdigest()] for n, d in deps.files],
            ]
        ).encode()
    ).hexdigest()
    key = digest[:KEY_LENGTH]
    tag = f"{repository(pipeline)}:{key}"
    folder_ = root(settings)
    folder_.mkdir(parents=True, exist_ok=True)
    record_path = folder_ / f"{key}.json"

    def waiting() -> None:
        log(f"waiting for image {tag} (another process is building it)")

    with locks.exclusive(folder_ / f"{key}.lock", on_wait=waiting):
        record = _read(record_path)
        if record is not None and _exists(api, tag):
            record.pipelines = sorted({*record.pipelines, pipeline})
            record.last_used_at = _now_iso()
            _write(record_path, record)
            log(f"reusing image {tag} ({deps.label})")
            return Prepared(tag, key, reused=True)
        log(f"building image {tag} (FROM {base}, {deps.label})")
        started = time.monotonic()
        _build(api, settings, tag, dockerfile(base, installed, key), deps, log)
        seconds = round(time.monotonic() - started, 3)
        _write(record_path, ImageRecord(key, tag, base, [pipeline], build_seconds=seconds))
        log(f"image ready in {seconds:.1f} s")
        return Prepared(tag, key, reused=False)


def _exists(api: Any, tag: str) -> bool:
    import docker

    try:
        api.inspect_image(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def _build(
    api: Any, settings: Settings, tag: str, text: str, deps: sources.Dependencies, log: Log
) -> None:
    tail: list[str] = []
    try:
        stream = api.build(
            fileobj=_context(text, deps),
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            buildargs=build_args(os.environ),
            network_mode=settings.docker_network,
            labels={"fastflow.deps": tag.rsplit(":", 1)[1]},
        )
        for event in stream:
            if not isinstance(event, dict):
                continue
            if event.get("error"):
                message = mask_credentials(str(event["error"]).strip())
                raise ImageBuildError(f"cannot build image {tag}: {_summary(message, tail)}")
            for line in str(event.get("stream") or "").splitlines():
                line = mask_credentials(_ANSI.sub("", line).rstrip())
                if line:
                    tail = [*tail, line][-20:]
                    log(line)
    except ExecutorError:
        raise
    except Exception as e:
        raise ImageBuildError(f"cannot build image {tag}: {reason_of(e)}") from None


def _summary(message: str, tail: list[str]) -> str:
    """The build error with pip's last ``ERROR:`` line when there is one."""
    errors = [line for line in tail if line.startswith("ERROR:")]
    return f"{errors[-1]} ({message})" if errors else message


@contextlib.contextmanager
def in_use(settings: Settings, prepared: Prepared) -> Iterator[None]:
    """Hold a derived image for a run: ``collect`` skips it until the block ends."""
    if prepared.key is None:
        yield
        return
    with locks.shared(root(settings) / f"{prepared.key}.use"):
        yield


@dataclass(frozen=True)
class RemovedImage:
    key: str
    tag: str
    pipelines: list[str]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "tag": self.tag,
            "pipelines": self.pipelines,
            "reason": self.reason,
        }


@dataclass
class CollectedImages:
    removed: list[RemovedImage] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (tag, why)
    kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": [r.to_dict() for r in self.removed],
            "skipped": [{"tag": t, "reason": why} for t, why in self.skipped],
            "kept": self.kept,
        }


def collect(
    settings: Settings,
    older_than: timedelta | None = None,
    now: datetime | None = None,
    client: docker.DockerClient | None = None,
) -> CollectedImages:
    """Remove the derived images last used before ``now - older_than`` (default
    ``ENV_RETENTION_DAYS``); skip those in use. Docker is contacted only when there is
    something to remove; an unreachable daemon skips them all."""
    from fastflow.executors.docker import connect

    older_than = (
        older_than if older_than is not None else timedelta(days=settings.env_retention_days)
    )
    now = now or datetime.now(UTC)
    cutoff = (now if now.tzinfo else now.replace(tzinfo=UTC)) - older_than
    out = CollectedImages()
    due = [r for r in records(settings) if r.last_used <= cutoff]
    out.kept = len(records(settings)) - len(due)
    if not due:
        return out
    try:
        client = client or connect()
    except ExecutorError as e:
        out.skipped += [(r.tag, str(e)) for r in due]
        return out
    folder = root(settings)
    for record in due:
        _collect_one(client, folder, record, cutoff, out)
    return out


def _collect_one(
    client: docker.DockerClient,
    folder: Path,
    record: ImageRecord,
    cutoff: datetime,
    out: CollectedImages,
) -> None:
    import docker

    with locks.try_exclusive(folder / f"{record.key}.lock") as free:
        if not free:
            out.skipped.append((record.tag, "being built or prepared"))
            return
        with locks.try_exclusive(folder / f"{record.key}.use") as unused:
            if not unused:
                out.skipped.append((record.tag, "in use"))
                return
            current = _read(folder / f"{record.key}.json")
            if current is None or current.last_used > cutoff:
                out.kept += 1
                return
            try:
                client.api.remove_image(record.tag)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as e:
                why = "in use by a container" if e.status_code == 409 else reason_of(e)
                out.skipped.append((record.tag, why))
                return
            (folder / f"{record.key}.json").unlink(missing_ok=True)
            for suffix in (".use", ".lock"):
                (folder / f"{record.key}{suffix}").unlink(missing_ok=True)
            since = f"unused since {current.last_used_at}"
            out.removed.append(RemovedImage(record.key, record.tag, current.pipelines, since))
