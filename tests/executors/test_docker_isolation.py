"""What a container run can see (issue 15): no network with ``network: none`` (neither
the host's loopback nor its other addresses), none of the host's ``DATA_DIR``,
``LOGS_DIR`` or fastflow's environment, the pipeline folder read-only, its own
workspace; its secrets are masked in the log exactly as for local runs."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import psutil
import pytest

from fastflow.context import Context
from fastflow.db.models import RunStatus
from fastflow.runs import runner, secret_store
from tests.conftest import MakePipeline
from tests.runs.test_secret_masking_e2e import SPLIT_BY_THE_OTHER_STREAM, SPLIT_LOG_LINES

PROBE_NETWORK = """
import json, os, socket
results = {}
for host in os.environ["PROBE_HOSTS"].split(","):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, int(os.environ["PROBE_PORT"])))
        results[host] = "connected"
    except OSError as e:
        results[host] = f"blocked: {e.strerror or e}"
    finally:
        s.close()
print(json.dumps(results))
"""


def host_addresses() -> list[str]:
    """127.0.0.1 and the host's non-loopback IPv4 addresses."""
    found = ["127.0.0.1"]
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                found.append(a.address)
    return found


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP socket listening on every address of the host."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 0))
    s.listen(8)
    s.setblocking(False)
    yield s
    s.close()


def test_network_none_cannot_reach_a_port_on_the_host(
    docker_ctx: Context, make_pipeline: MakePipeline, listener: socket.socket
) -> None:
    hosts = host_addresses()
    assert len(hosts) >= 2, "the host needs a non-loopback address for this test"
    port = listener.getsockname()[1]
    for host in hosts:  # the host itself can connect: the port is open
        with socket.create_connection((host, port), timeout=3):
            pass
        listener.accept()[0].close()
    make_pipeline(
        "prober",
        PROBE_NETWORK,
        config=json.dumps(
            {"network": "none", "env": {"PROBE_HOSTS": ",".join(hosts), "PROBE_PORT": str(port)}}
        ),
    )
    result = runner.run_pipeline(docker_ctx.db, docker_ctx.settings, "prober", "cli")
    assert result.status is RunStatus.SUCCESS, result.log_path.read_text()
    line = result.log_path.read_text().splitlines()[-1][26:]
    seen = json.loads(line)
    assert set(seen) == set(hosts)
    assert all(v.startswith("blocked") for v in seen.values()), seen
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing from the container ever arrived


PROBE_FILES = """
import json, os
out = {"cwd": os.getcwd(), "env": sorted(os.environ)}
for name in ("DATA_DIR", "LOGS_DIR", "DATABASE"):
    path = os.environ["PROBE_" + name]
    try:
        open(path, "rb").read(1) if os.path.isfile(path) else os.listdir(path)
        out[name] = "readable"
    except OSError as e:
        out[name] = e.strerror
try:
    open("/pipeline/written", "w")
    out["pipeline"] = "writable"
except OSError as e:
    out["pipeline"] = e.strerror
with open("scratch.txt", "w") as f:
    f.write("ok")
out["workspace"] = open(os.path.join(os.environ["FASTFLOW_WORKDIR"], "scratch.txt")).read()
out["pipeline_dir"] = os.environ["FASTFLOW_PIPELINE_DIR"]
out["sibling"] = __import__("helper").VALUE
print(json.dumps(out))
"""


def test_a_container_sees_neither_data_dir_nor_logs_dir_nor_fastflows_environment(
    docker_env: dict[str, str],
    docker_ctx: Context,
    make_pipeline: MakePipeline,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = docker_ctx.settings
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "s3-secret-value-123")
    data_dir = settings.data_dir.resolve()
    folder = make_pipeline(
        "snoop",
        PROBE_FILES,
        config=json.dumps(
            {
                "env": {
                    "PROBE_DATA_DIR": str(data_dir),
                    "PROBE_LOGS_DIR": str(settings.logs_root.resolve()),
                    "PROBE_DATABASE": str(data_dir / "fastflow.db"),
                }
            }
        ),
    )
    (folder / "helper.py").write_text("VALUE = 'imported from /pipeline'\n")
    result = runner.run_pipeline(docker_ctx.db, settings, "snoop", "cli")
    assert result.status is RunStatus.SUCCESS, result.log_path.read_text()
    seen = json.loads(result.log_path.read_text().splitlines()[-1][26:])
    assert seen["DATA_DIR"] == seen["LOGS_DIR"] == seen["DATABASE"] == "No such file or directory"
    assert seen["pipeline"] == "Read-only file system"
    assert seen["cwd"] == "/workspace" and seen["workspace"] == "ok"
    assert seen["pipeline_dir"] == "/pipeline"
    assert seen["sibling"] == "imported from /pipeline"
    for name in ("DATABASE_URL", "DATA_DIR", "LOGS_DIR", "S3_SECRET_ACCESS_KEY", "DOCKER_HOST"):
        assert name not in seen["env"]
    assert {"FASTFLOW_RUN_ID", "FASTFLOW_PIPELINE", "FASTFLOW_WORKDIR", "TMPDIR"} <= set(
        seen["env"]
    )
    assert "s3-secret-value-123" not in result.log_path.read_text()


TOKEN = "tok-9f8e7d6c5b4a-SECRET"
LEAKY = """
import os, sys
token = os.environ["API_TOKEN"]
print("whole:", token)
for ch in token:  # one write per character, flushed: split across Docker's entries
    sys.stdout.write(ch)
    sys.stdout.flush()
print()
half = len(token) // 2
sys.stderr.write("stderr: " + token[:half])
sys.stderr.flush()
sys.stderr.write(token[half:] + "\\n")
sys.stdout.write("x" * 100_000 + token + "y" * 1000 + "\\n")
print("done")
"""


def _shortened(log: bytes) -> str:
    """The log with each line cut to its first and last 120 bytes."""
    lines = [ln if len(ln) <= 250 else ln[:120] + b" ... " + ln[-120:] for ln in log.split(b"\n")]
    return b"\n".join(lines).decode("utf-8", "replace")


def test_secrets_are_given_to_the_container_and_masked_in_its_log(
    docker_ctx: Context, make_pipeline: MakePipeline
) -> None:
    secret_store.set_secret(docker_ctx.db, docker_ctx.settings, "API_TOKEN", TOKEN)
    make_pipeline("leaky", LEAKY, config='{"secrets": ["API_TOKEN"]}')
    result = runner.run_pipeline(docker_ctx.db, docker_ctx.settings, "leaky", "cli")
    assert result.status is RunStatus.SUCCESS, result.log_path.read_text()[:2000]
    local = result.log_path.read_bytes()
    assert TOKEN.encode() not in local
    # (a CI run once counted 3: the log, long lines shortened, tells what happened)
    assert local.count(b"***") == 4, _shortened(local)
    assert b"whole: ***" in local and b"stderr: ***" in local
    assert b"x" * 1000 + b"***" + b"y" * 1000 in local
    assert local.rstrip().endswith(b"done")


def test_a_secret_split_by_a_write_to_the_other_stream_is_masked_in_a_container(
    docker_ctx: Context, make_pipeline: MakePipeline
) -> None:
    """As for local runs: the container's bootstrap frames stderr, so each stream is
    masked on its own too (a secret in two stdout pieces with stderr between them)."""
    secret_store.set_secret(docker_ctx.db, docker_ctx.settings, "API_TOKEN", TOKEN)
    make_pipeline("split", SPLIT_BY_THE_OTHER_STREAM, config='{"secrets": ["API_TOKEN"]}')
    result = runner.run_pipeline(docker_ctx.db, docker_ctx.settings, "split", "cli")
    assert result.status is RunStatus.SUCCESS, result.log_path.read_text()[:2000]
    log = result.log_path.read_text()
    for piece in (TOKEN, TOKEN[:6], TOKEN[6:], TOKEN[4:], TOKEN[:10], TOKEN[10:]):
        assert piece not in log
    lines = [line[26:] for line in log.splitlines() if not line[26:].startswith("[")]
    assert lines == SPLIT_LOG_LINES
    assert "\x00" not in log
