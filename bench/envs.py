"""Pipeline environments: what a cached environment adds to a run's start, and what a
build costs over plain uv, interleaved in one run (A/B/A/B, ``BENCH_REPEAT`` ≥ 3, median
[min–max], load average printed). Needs no package index: the requirements are
``BENCH_ENV_PACKAGES`` (default 30) tiny wheels written into a folder and served with
``UV_FIND_LINKS`` + ``UV_OFFLINE=1``.

1. Start-up: ``prepare()`` of a cached environment + starting its interpreter with
   ``-c pass`` — versus today's direct start, ``sys.executable -c pass``;
   ``BENCH_STARTS`` (default 20) starts per repeat. Ratio = env start ÷ direct start.
2. Build: ``prepare()`` of a new environment (fresh ``DATA_DIR``) — versus ``uv venv`` +
   ``uv pip install -r`` of the same requirements file into a fresh directory; both with
   the same warm uv cache. Ratio = fastflow ÷ plain uv.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.environments.wheels import write_wheel  # noqa: E402

from fastflow.config import load_settings  # noqa: E402
from fastflow.environments import interpreters, prepare  # noqa: E402
from fastflow.environments.builder import uv_binary  # noqa: E402

REPEAT = max(3, int(os.environ.get("BENCH_REPEAT", "3")))
STARTS = int(os.environ.get("BENCH_STARTS", "20"))
PACKAGES = int(os.environ.get("BENCH_ENV_PACKAGES", "30"))


def _stats(values: list[float], unit: str = "ms", scale: float = 1000) -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):.1f} [{min(v):.1f}–{max(v):.1f}] {unit}"


def _quiet(line: str) -> None:
    pass


def _setup(root: Path) -> Path:
    """Wheels, a requirements file and a pipeline folder; the environment variables."""
    wheels = root / "wheels"
    names = [f"ffbench{i:03d}" for i in range(PACKAGES)]
    for name in names:
        write_wheel(wheels, name, "1.0")
    folder = root / "pipelines" / "bench"
    folder.mkdir(parents=True)
    (folder / "main.py").write_text("pass\n")
    (folder / "requirements.txt").write_text("".join(f"{n}==1.0\n" for n in names))
    os.environ.update(
        UV_FIND_LINKS=str(wheels),
        UV_OFFLINE="1",
        UV_CACHE_DIR=str(root / "uv-cache"),  # one warm cache for both sides
        PIPELINES_DIR=str(root / "pipelines"),
        DATABASE_URL=f"sqlite:///{root / 'ff.db'}",
    )
    return folder


def _start(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, env={"PATH": os.environ.get("PATH", os.defpath)})


def startup(root: Path, folder: Path) -> dict[str, Any]:
    os.environ["DATA_DIR"] = str(root / "data-startup")
    settings = load_settings()
    prepare(settings, "bench", folder, None, _quiet)  # build once: the cache
    env_s: list[float] = []
    direct_s: list[float] = []
    prepare_s: list[float] = []
    for _ in range(REPEAT):  # A/B/A/B
        t0 = time.perf_counter()
        for _ in range(STARTS):
            t1 = time.perf_counter()
            env = prepare(settings, "bench", folder, None, _quiet)
            prepare_s.append(time.perf_counter() - t1)
            _start([str(env.python), "-c", "pass"])
        env_s.append((time.perf_counter() - t0) / STARTS)
        t0 = time.perf_counter()
        for _ in range(STARTS):
            _start([sys.executable, "-c", "pass"])
        direct_s.append((time.perf_counter() - t0) / STARTS)
    ratio = statistics.median(env_s) / statistics.median(direct_s)
    print(
        f"start-up, {STARTS} starts x {REPEAT}: cached env (prepare + python -c pass) "
        f"{_stats(env_s)}, of which prepare() {_stats(prepare_s)}; direct "
        f"sys.executable -c pass {_stats(direct_s)}; ratio {ratio:.2f}",
        flush=True,
    )
    return {
        "env_ms": [x * 1000 for x in env_s],
        "direct_ms": [x * 1000 for x in direct_s],
        "prepare_ms_median": statistics.median(prepare_s) * 1000,
        "ratio": ratio,
    }


def _plain_uv(target: Path, folder: Path) -> None:
    uv = str(uv_binary())
    python = str(interpreters.find(None).path)
    venv_python = str(target / "bin" / "python")
    for cmd in (
        [uv, "venv", "--python", python, str(target)],
        [uv, "pip", "install", "--python", venv_python, "-r", str(folder / "requirements.txt")],
    ):
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


def build(root: Path, folder: Path) -> dict[str, Any]:
    ff_s: list[float] = []
    uv_s: list[float] = []
    _plain_uv(root / "warm", folder)  # fill the cache
    for i in range(REPEAT):  # A/B/A/B
        os.environ["DATA_DIR"] = str(root / f"data-build-{i}")
        settings = load_settings()
        t0 = time.perf_counter()
        env = prepare(settings, "bench", folder, None, _quiet)
        ff_s.append(time.perf_counter() - t0)
        assert not env.reused
        t0 = time.perf_counter()
        _plain_uv(root / f"plain-{i}", folder)
        uv_s.append(time.perf_counter() - t0)
    ratio = statistics.median(ff_s) / statistics.median(uv_s)
    print(
        f"build, {PACKAGES} packages x {REPEAT}: fastflow prepare() {_stats(ff_s)}; "
        f"uv venv + uv pip install -r {_stats(uv_s)}; ratio {ratio:.2f}",
        flush=True,
    )
    return {
        "fastflow_ms": [x * 1000 for x in ff_s],
        "uv_ms": [x * 1000 for x in uv_s],
        "ratio": ratio,
    }


def main() -> dict[str, Any]:
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ff-bench-envs-") as tmp:
        root = Path(tmp)
        folder = _setup(root)
        result = {"startup": startup(root, folder), "build": build(root, folder)}
    print(f"load average after: {os.getloadavg()}", flush=True)
    return result


if __name__ == "__main__":
    main()
