"""Tell a pipeline's stdout and stderr apart in the one pipe they share.

The bootstrap (given ``OUTPUT_MARK_ENV``) frames each stderr write as ``FRAME_LEAD +
mark + STDERR_ON``, the bytes, ``FRAME_LEAD + mark + STDERR_OFF``. ``StreamSplit`` turns
the pipe's bytes back into ``(stream, bytes)`` pieces in order (0 stdout, 1 stderr).

Guarantees: every byte that is not part of a frame comes out once, in order, however the
pipe is cut into reads; a possible start of a frame at the end of a read (at most
``len(lead)`` bytes) is held until the next read decides it; bytes written to the pipe
by anything else (a child process, C code writing to fd 2) belong to the stream that is
open at that moment. The mark is 64 bits per run (``mark_for``: derived from the run's
id, so that a re-attached container run finds it again), so output never contains it
by chance.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

from fastflow.runs.bootstrap import FRAME_LEAD, STDERR_OFF, STDERR_ON

STDOUT, STDERR = 0, 1


def new_mark() -> str:
    """A fresh random mark (ASCII, for the environment)."""
    return secrets.token_hex(8)


def mark_for(run_id: uuid.UUID) -> str:
    """The mark of run ``run_id`` (ASCII, for the environment)."""
    return hashlib.sha256(b"fastflow output mark " + run_id.bytes).hexdigest()[:16]


def without_frames(data: bytes, mark: str) -> bytes:
    """``data`` with every whole frame boundary of ``mark`` taken out (a line as the log
    shows it, for comparing)."""
    lead = FRAME_LEAD + mark.encode("ascii")
    return data.replace(lead + STDERR_ON, b"").replace(lead + STDERR_OFF, b"")


class StreamSplit:
    """``feed`` the pipe's bytes in order; ``close`` at EOF."""

    def __init__(self, mark: str) -> None:
        self._lead = FRAME_LEAD + mark.encode("ascii")
        self._on, self._off = STDERR_ON[0], STDERR_OFF[0]
        self._stream = STDOUT
        self._carry = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The pieces of ``data`` (after what was held) that are certain now."""
        buf = self._carry + data if self._carry else data
        lead = self._lead
        frame = len(lead) + 1
        out: list[tuple[int, bytes]] = []
        pos = search = 0
        while True:
            i = buf.find(lead, search)
            if i < 0 or i + frame > len(buf):
                break
            kind = buf[i + frame - 1]
            if kind not in (self._on, self._off):
                search = i + 1  # not a frame: ordinary bytes
                continue
            if i > pos:
                out.append((self._stream, buf[pos:i]))
            self._stream = STDERR if kind == self._on else STDOUT
            pos = search = i + frame
        keep = self._held_from(buf, max(pos, len(buf) - frame + 1))
        if keep > pos:
            out.append((self._stream, buf[pos:keep]))
        self._carry = buf[keep:]
        return out

    def close(self) -> list[tuple[int, bytes]]:
        """What was held at EOF: ordinary bytes of the open stream."""
        rest, self._carry = self._carry, b""
        return [(self._stream, rest)] if rest else []

    def _held_from(self, buf: bytes, start: int) -> int:
        """Where a possible frame start at the end of ``buf`` begins (``len(buf)`` when
        there is none)."""
        first = self._lead[:1]
        j = buf.find(first, start)
        while j >= 0:
            if (self._lead + bytes([self._on])).startswith(buf[j:]) or (
                self._lead + bytes([self._off])
            ).startswith(buf[j:]):
                return j
            j = buf.find(first, j + 1)
        return len(buf)
