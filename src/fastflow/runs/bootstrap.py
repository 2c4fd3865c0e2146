"""The Python code a pipeline runs under (``python -c BOOTSTRAP ...``), locally and in a
container.

stdout and stderr share one locked BufferedWriter on fd 1; the text layers write through
to it. So the log keeps the exact order in which the pipeline wrote, a line written with
one write() is never split or mixed (TextIOWrapper's own pending buffer is not
thread-safe on Python 3.11, hence write-through), and stdout is block-buffered for
speed. stderr is line-buffered, as in plain Python: a write that holds a line end
flushes the shared writer (so with the stdout written before it, in order), and the
error a pipeline prints before ``os._exit`` or a crash is never lost. A daemon thread
flushes every 0.2 s so output shows up live; it is stopped before
the interpreter's final flush (a daemon thread inside flush() then — a full pipe — would
make that flush a fatal error). The two text layers are also ``sys.__stdout__`` and
``sys.__stderr__``, as in plain Python: a pipeline that replaces ``sys.stdout`` (say,
``io.TextIOWrapper(sys.stdout.buffer, ...)``) does not get the shared writer closed when
the layer it replaced is collected. The last argument is the script to run as
``__main__``.

With ``FASTFLOW_OUTPUT_MARK`` in its environment (taken out before the script runs),
each write to stderr goes into the shared writer framed as ``FRAME_LEAD + mark +
STDERR_ON``, the bytes, ``FRAME_LEAD + mark + STDERR_OFF`` in one call of the C writer
(no Python code runs under its lock; nothing to interleave), so the reader can tell the
streams apart (``output_streams``) and mask each on its own too.

When the script has ended (the last exit handler), everything buffered is written and
``sys.stdout`` and the stderr layer write straight to fd 1 from then on: daemon threads
that still print are stopped by the interpreter at any moment, and one stopped inside
the shared writer would keep its lock and make the interpreter's final flush a fatal
error (it did, 9 runs in 10, for a daemon thread printing in a loop). The replaced
stdout layers are kept alive: a ``print()`` in progress may still hold one.

A forked child gets a writer of its own (the parent's is flushed before the fork): one
inherited while another thread was inside it keeps a lock no thread of the child will
ever release (its first print hung). ``sys.stdout``, a wrapper the pipeline made over
its buffer and the streams of ``logging`` handlers are pointed at the child's writer;
the inherited objects are never freed in the child (their close would wait for that
lock). Another object kept over the old buffer can still hang a forked child. Once
stdout is closed (``sys.stdout.close()``, or a collected
``TextIOWrapper(sys.stdout.buffer)``), stderr goes straight to the pipe, so tracebacks
still reach the log.
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
FRAME_LEAD = b"\x00\x1b"  # + mark + a kind byte: 11 bytes
STDERR_ON, STDERR_OFF = b"E", b"O"

# stderr becomes stdout (fd 2 -> fd 1): where only one stream is read (a container)
MERGE_STDERR = "os.dup2(1, 2)\n"

_BUFFERED_OUTPUT = (
    """
_buf = io.BufferedWriter(io.FileIO(1, 'w', closefd=False), 65536)
_mark = os.environ.pop(MARK_ENV, '').encode('ascii', 'replace')
_on = LEAD + _mark + ON if _mark else b''
_off = LEAD + _mark + OFF if _mark else b''
_direct = []  # at exit: the replaced stdout layers, kept (a print() may still hold one)
def _write_fd(data):
    data = memoryview(data)
    while data:
        data = data[os.write(1, data):]
class _Stderr(io.BufferedIOBase):
    name = '<stderr>'
    raw = property(lambda self: _buf.raw)
    def writable(self):
        return True
    def write(self, b):
        data = b''.join((_on, b, _off))
        if _direct:
            _write_fd(data)
        else:
            try:
                _buf.write(data)
            except ValueError:
                if not _buf.closed:
                    raise
                _write_fd(data)
            else:
                if b'\\n' in data or b'\\r' in data:  # (b may be a memoryview)
                    try:
                        _buf.flush()
                    except ValueError:  # closed meanwhile: its close flushed it
                        pass
        return len(b) if b.__class__ is bytes else memoryview(b).nbytes
    def flush(self):
        if not _direct and not _buf.closed:
            _buf.flush()
    def fileno(self):
        return 1
    def close(self):
        self.flush()
def _flush_before_fork():
    try:
        _buf.flush()
    except Exception:
        pass
def _own_writer_after_fork():
    global _buf, _out
    try:
        import ctypes
        for _o in (_buf, _out):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(_o))
    except Exception:
        return
    old, old_buf = _out, _buf
    _buf = io.BufferedWriter(io.FileIO(1, 'w', closefd=False), 65536)
    _out = _text(_buf, old)
    swapped = {id(old): _out}
    def _swap(stream):
        if id(stream) in swapped:
            return swapped[id(stream)]
        if getattr(stream, 'buffer', None) is not old_buf:
            return stream
        try:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(stream))
            new = io.TextIOWrapper(_buf, encoding=stream.encoding, errors=stream.errors,
                                   line_buffering=stream.line_buffering,
                                   write_through=stream.write_through)
        except Exception:
            return stream
        swapped[id(stream)] = new
        return new
    sys.stdout, sys.__stdout__ = _swap(sys.stdout), _swap(sys.__stdout__)
    _logging = sys.modules.get('logging')
    for _ref in getattr(_logging, '_handlerList', ()):
        _h = _ref()
        try:
            _new = _swap(_h.stream)
            if _new is not _h.stream:
                _h.stream = _new
        except Exception:
            pass
if hasattr(os, "register_at_fork"):  # Python 3.7+ (an image may have an older one)
    os.register_at_fork(before=_flush_before_fork, after_in_child=_own_writer_after_fork)
class _LateStdout(io.TextIOBase):
    def __init__(self, errors):
        self._errors = errors
    @property
    def encoding(self):
        return 'utf-8'
    @property
    def errors(self):
        return self._errors
    def writable(self):
        return True
    def fileno(self):
        return 1
    def write(self, s):
        _write_fd(s.encode('utf-8', self._errors))
        return len(s)
def _text(buffer, old):
    return io.TextIOWrapper(buffer, encoding='utf-8', errors=old.errors, write_through=True)
_out = sys.stdout = _text(_buf, sys.stdout)
sys.stderr = _text(_Stderr(), sys.stderr)
sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
_quit = threading.Event()
def _flush_now_and_then():
    while not _quit.wait(0.2):
        try:
            _buf.flush()
        except Exception:
            pass
_flusher = threading.Thread(target=_flush_now_and_then, name='fastflow-flush', daemon=True)
_flusher.start()
def _at_exit():
    _quit.set()
    _flusher.join()
    for _s in (sys.stdout, sys.stderr):
        try:
            _s.flush()
        except Exception:
            pass
    try:
        _buf.flush()
        _direct.append(sys.stdout)
        _direct.append(sys.__stdout__)
        sys.stdout = sys.__stdout__ = _LateStdout(sys.__stdout__.errors)
        _buf.flush()
    except Exception:
        pass
import atexit
atexit.register(_at_exit)
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(sys.argv[0])
runpy.run_path(sys.argv[0], run_name='__main__')
""".replace("MARK_ENV", repr(OUTPUT_MARK_ENV))
    .replace("LEAD", repr(FRAME_LEAD))
    .replace("ON if", f"{STDERR_ON!r} if")
    .replace("OFF if", f"{STDERR_OFF!r} if")
)


def bootstrap(*prelude: str) -> str:
    """The bootstrap with ``prelude`` snippets (``DIE_WITH_PARENT``, ``MERGE_STDERR``)
    run first."""
    return "import io, os, runpy, sys, threading\n" + "".join(prelude) + _BUFFERED_OUTPUT
