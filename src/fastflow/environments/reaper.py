"""Run a command as another user and leave nothing of it behind:
``python -I reaper.py UID GID COMMAND...`` (standard library only: started by path).

Guarantees (Linux): the command runs as UID, GID and no supplementary groups (as this
process, unchanged, when UID and GID are its own), in a process group of its own; this
process is its child subreaper, so every process the command starts — also one that
detaches with ``setsid`` or a double fork — stays a descendant of it. When the command
ends, every process still left is killed with SIGKILL and reaped before this process
exits, with the command's exit status (128 + N when a signal N ended it). SIGTERM (or
the death of the parent, through ``PR_SET_PDEATHSIG``) kills the command and everything
it started the same way, then exits with 143.

Every environment build runs under it: once it returns, no process of the build is
alive to change the environment (while fastflow takes over one built as
``RUN_AS_USER``), and a fastflow killed with SIGKILL leaves no uv building on.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_ENV = "FASTFLOW_REAPER_PARENT"  # the pid of the process that started the reaper
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _descendants() -> list[int]:
    """Every process below this one (adopted orphans included), from one reading of
    ``/proc``."""
    me = os.getpid()
    below: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            below.setdefault(int(fields[1]), []).append(int(name))
    found: list[int] = []
    todo = list(below.get(me, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(below.get(pid, []))
    return found


def _kill_all() -> None:
    """SIGKILL the whole tree below this process at once, round after round, until
    nothing is left (what forked between the reading and the kill is in the next
    round); then reap."""
    while True:
        left = _descendants()
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while True:  # reap what has died; the rest are adopted and killed next round
            try:
                done, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if done == 0:
                break
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def main(argv: list[str]) -> int:
    uid, gid, cmd = int(argv[1]), int(argv[2]), argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("fastflow: cannot become a child subreaper", file=sys.stderr)
        return 126
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    stopped = False
    pid = 0

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopped
        stopped = True
        if pid > 0:  # the command's group: its wait below then returns
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    # the parent died before PDEATHSIG was set: compared with the pid it gave (a parent
    # that is itself process 1, as fastflow in a container without an init, is alive)
    expected = os.environ.pop(PARENT_ENV, None)
    gone = os.getppid() != int(expected) if expected else os.getppid() == 1
    if gone:
        return 143
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            if (uid, gid) != (os.geteuid(), os.getegid()):  # else: a build as fastflow
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            os.execv(cmd[0], cmd)
        except OSError as e:
            os.write(2, f"fastflow: cannot start {cmd[0]}: {e.strerror}\n".encode())
        finally:
            os._exit(127)
    try:
        os.setpgid(pid, pid)  # (also here: no race with a SIGTERM right after the fork)
    except OSError:
        pass
    if stopped:
        stop(signal.SIGTERM, None)
    status = 0
    while True:
        done, wait_status = os.wait()
        if done == pid:
            status = os.waitstatus_to_exitcode(wait_status)
            pid = 0  # reaped: its number may be another process's from now on
            break
    _kill_all()
    if stopped:
        return 143
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
