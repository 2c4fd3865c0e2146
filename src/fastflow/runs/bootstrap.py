"""The Python code a pipeline runs under (``python -c BOOTSTRAP ...``), locally and in a
container.

stdout and stderr share one locked BufferedWriter on fd 1; the text layers write through
to it. So the log keeps the exact order in which the pipeline wrote, a line written with
one write() is never split or mixed (TextIOWrapper's own pending buffer is not
thread-safe on Python 3.11, hence write-through), and output is block-buffered for
speed. A daemon thread flushes every 0.2 s so output shows up live; it is stopped before
the interpreter's final flush (a daemon thread inside flush() then — a full pipe — would
make that flush a fatal error). The two text layers are also ``sys.__stdout__`` and
``sys.__stderr__``, as in plain Python: a pipeline that replaces ``sys.stdout`` (say,
``io.TextIOWrapper(sys.stdout.buffer, ...)``) does not get the shared writer closed when
the layer it replaced is collected. The last argument is the script to run as
``__main__``.

With ``FASTFLOW_OUTPUT_MARK`` in its environment (taken out before the script runs),
each write to stderr goes into the shared writer framed as ``STDERR_ON + mark +
bytes + STDERR_OFF + mark`` in one call of the C writer (no Python code runs under its
lock; nothing to interleave), so the reader can tell the streams apart
(``output_streams``) and mask each on its own too.
"""

from __future__ import annotations

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

OUTPUT_MARK_ENV = "FASTFLOW_OUTPUT_MARK"
FRAME_LEAD = b"\x00\x1bff"  # + mark + a kind byte
STDERR_ON, STDERR_OFF = b"E", b"O"

# stderr becomes stdout (fd 2 -> fd 1): where only one stream is read (a container)
MERGE_STDERR = "os.dup2(1, 2)\n"

_BUFFERED_OUTPUT = (
    "_buf = io.BufferedWriter(io.FileIO(1, 'w', closefd=False), 65536)\n"
    f"_mark = os.environ.pop({OUTPUT_MARK_ENV!r}, '').encode('ascii', 'replace')\n"
    f"_on = {FRAME_LEAD!r} + _mark + {STDERR_ON!r}\n"
    f"_off = {FRAME_LEAD!r} + _mark + {STDERR_OFF!r}\n"
    "class _FramedStderr(io.BufferedIOBase):\n"
    "    def writable(self):\n"
    "        return True\n"
    "    def write(self, b):\n"
    "        _buf.write(b''.join((_on, b, _off)))\n"
    "        return len(b)\n"
    "    def flush(self):\n"
    "        _buf.flush()\n"
    "    def fileno(self):\n"
    "        return _buf.fileno()\n"
    "    def close(self):\n"
    "        if not _buf.closed:\n"
    "            _buf.flush()\n"
    "def _text(buffer, old):\n"
    "    return io.TextIOWrapper(buffer, encoding='utf-8', errors=old.errors,\n"
    "                            write_through=True)\n"
    "sys.stdout = _text(_buf, sys.stdout)\n"
    "sys.stderr = _text(_FramedStderr() if _mark else _buf, sys.stderr)\n"
    "sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr\n"
    "_quit = threading.Event()\n"
    "def _flush_now_and_then():\n"
    "    while not _quit.wait(0.2):\n"
    "        try:\n"
    "            _buf.flush()\n"
    "        except Exception:\n"
    "            pass\n"
    "_flusher = threading.Thread(target=_flush_now_and_then, name='fastflow-flush', daemon=True)\n"
    "_flusher.start()\n"
    "def _stop_flushing():\n"
    "    _quit.set()\n"
    "    _flusher.join()\n"
    "import atexit\n"
    "atexit.register(_stop_flushing)\n"
    "sys.argv = sys.argv[1:]\n"
    "sys.path[0] = os.path.dirname(sys.argv[0])\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def bootstrap(*prelude: str) -> str:
    """The bootstrap with ``prelude`` snippets (``DIE_WITH_PARENT``, ``MERGE_STDERR``)
    run first."""
    return "import io, os, runpy, sys, threading\n" + "".join(prelude) + _BUFFERED_OUTPUT
