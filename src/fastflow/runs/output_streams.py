"""Tell a pipeline's stdout and stderr apart in the one pipe they share.

The bootstrap (given ``OUTPUT_MARK_ENV``) frames each stderr write as ``FRAME_LEAD +
mark + STDERR_ON``, the bytes, ``FRAME_LEAD + mark + STDERR_OFF``. ``StreamSplit`` turns
the pipe's bytes back into ``(stream, bytes)`` pieces in order (0 stdout, 1 stderr).

Guarantees: every byte that is not part of a frame comes out once, in order, however the
pipe is cut into reads; a possible start of a frame at the end of a read (at most
``len(lead)`` bytes) is held until the next read decides it; bytes written to the pipe
by anything else (a child process, C code writing to fd 2) belong to the stream that is
open at that moment. The mark is 32 bits per run (``mark_for``: derived from the run's
id, so that a re-attached container run finds it again); with the lead's NUL and ESC a
frame boundary is 11 bytes that text never holds and binary output holds by chance once
in 2^88 positions. It is no security boundary: a pipeline can find its mark and forge
frames, which only changes how its own output is masked (it knows its secrets anyway).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

from fastflow.runs.bootstrap import FRAME_LEAD, STDERR_OFF, STDERR_ON

STDOUT, STDERR = 0, 1


def new_mark() -> str:
    """A fresh random mark (ASCII, for the environment)."""
    return secrets.token_hex(4)


def mark_for(run_id: uuid.UUID) -> str:
    """The mark of run ``run_id`` (ASCII, for the environment)."""
    return hashlib.sha256(b"fastflow output mark " + run_id.bytes).hexdigest()[:8]


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
        # stderr written twice in a row: its first frame's end and the next one's start
        # (taken out at C speed: a print() to stderr is four writes, four frames)
        self._rejoin = self._lead + STDERR_OFF + self._lead + STDERR_ON
        self._stream = STDOUT
        self._carry = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The pieces of ``data`` (after what was held) that are certain now; adjacent
        pieces are of different streams."""
        buf = self._carry + data if self._carry else data
        lead = self._lead
        keep = self._held_from(buf, max(0, len(buf) - len(lead)))
        self._carry = buf[keep:]
        body = buf[:keep] if keep < len(buf) else buf
        if lead not in body:
            return [(self._stream, body)] if body else []
        parts = body.replace(self._rejoin, b"").split(lead)
        out: list[tuple[int, bytes]] = []
        stream, acc = self._stream, [parts[0]]
        on, off = self._on, self._off
        for part in parts[1:]:
            kind = part[0] if part else -1
            if kind != on and kind != off:
                acc += (lead, part)  # not a frame: ordinary bytes
                continue
            new = STDERR if kind == on else STDOUT
            if new != stream:
                chunk = b"".join(acc)
                if chunk:
                    out.append((stream, chunk))
                stream, acc = new, []
            acc.append(part[1:])
        chunk = b"".join(acc)
        if chunk:
            out.append((stream, chunk))
        self._stream = stream
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
            if self._lead.startswith(buf[j:]):
                return j
            j = buf.find(first, j + 1)
        return len(buf)
