"""The Python code a pipeline runs under (``python -c BOOTSTRAP ...``), locally and in a
container: ``child_output`` (how its output is written: both streams through one pipe
as whole lines, in order, a line never inside another), then the prelude snippets, then
the script (the last argument) as ``__main__``."""

from __future__ import annotations

from pathlib import Path

# die with the supervisor: a killed `fastflow run` never leaves the pipeline running
# unsupervised (prctl(PR_SET_PDEATHSIG, SIGKILL); then close the race with its death);
# the supervisor's pid is the first argument
DIE_WITH_PARENT = (
    "if sys.platform.startswith('linux'):\n"
    "    import ctypes\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(137)\n"
    "del sys.argv[1]\n"
)

# stderr becomes stdout (fd 2 -> fd 1): where only one stream is read (a container)
MERGE_STDERR = "os.dup2(1, 2)\n"

_CHILD_OUTPUT = (Path(__file__).with_name("child_output.py")).read_text(encoding="utf-8")
_RUN_MAIN = (
    "install()\n"
    "sys.argv = sys.argv[1:]\n"
    "sys.path[0] = os.path.dirname(sys.argv[0])\n"
    "import runpy\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def bootstrap(*prelude: str) -> str:
    """The bootstrap with ``prelude`` snippets (``DIE_WITH_PARENT``, ``MERGE_STDERR``)
    run first."""
    return _CHILD_OUTPUT + "".join(prelude) + _RUN_MAIN
