"""``environments/reaper.py``: nothing a command started outlives it — also processes
that detach (new session) and long chains of them (an outside audit's chain of 4,000
processes kept the first version busy for over a minute, past the build's time limit)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fastflow.environments.builder import REAPER

PYTHON = "/usr/bin/python3"  # one the other user may run (fastflow's may be below /root)

CHAIN = """
import os, sys, time
r, w = os.pipe()
if os.fork():
    os.close(w)
    os.read(r, 1)  # the chain is complete:
    os._exit(0)  # the command itself ends; what it started goes on
os.setsid()
for _ in range(int(sys.argv[1])):
    if os.fork():
        time.sleep(600)  # each process waits below its parent: a chain
        os._exit(0)
os.write(w, b"x")
time.sleep(600)
"""


def _alive_with(token: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token.encode() in cmdline and state != "Z":
            found.append(int(name))
    return found


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the reaper's tests need root (the command runs as another user)")


def test_a_detached_chain_of_processes_is_killed_when_the_command_ends() -> None:
    token = f"chain-{uuid.uuid4().hex}"
    code = CHAIN + f"# {token}\n"
    res = subprocess.run(
        [sys.executable, "-I", str(REAPER), "65534", "65534", PYTHON, "-c", code, "400"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert _alive_with(token) == []


def test_sigterm_kills_the_command_and_everything_it_started() -> None:
    token = f"term-{uuid.uuid4().hex}"
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\ntime.sleep(600)\n# " + token
    proc = subprocess.Popen(
        [sys.executable, "-I", str(REAPER), "65534", "65534", PYTHON, "-c", code],
        stdout=subprocess.PIPE,
    )
    while len(_alive_with(token)) < 2:  # the command and its detached child are up
        assert proc.poll() is None
    proc.terminate()
    assert proc.wait(timeout=60) == 143
    assert _alive_with(token) == []


PID1_PARENT = """
import os, subprocess, sys
reaper, env = sys.argv[1], {**os.environ, "FASTFLOW_REAPER_PARENT": str(os.getpid())}
cmd = [sys.executable, "-I", reaper, str(os.geteuid()), str(os.getegid()), "/bin/sh", "-c",
       'echo ran; echo "${FASTFLOW_REAPER_PARENT:-unset}"']
r = subprocess.run(cmd, env=env, capture_output=True, text=True)
print(os.getpid(), r.returncode, *r.stdout.split())
"""


def test_a_build_started_by_process_1_runs() -> None:
    """Found by a review: the reaper took a parent pid of 1 for "my parent died", so
    with fastflow as process 1 (a container without an init) every build exited 143.
    It now compares with the pid its parent gave, and takes that variable out."""
    out = subprocess.run(
        ["unshare", "-pf", "--mount-proc", sys.executable, "-c", PID1_PARENT, str(REAPER)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "0", "ran", "unset"]
