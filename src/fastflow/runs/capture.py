"""Turn a process's combined output into a timestamped log, line by line.

Guarantees:
- every line is written once, whole, prefixed with its UTC arrival time
  ``[YYYY-MM-DD HH:MM:SS.mmm] ``;
- invalid UTF-8 becomes U+FFFD; a multi-byte character split across reads is kept whole;
- memory is bounded: a line longer than ``LONG_LINE`` characters is written as it
  arrives instead of being held until its newline;
- no per-line system calls: lines read together are formatted in one string and the
  caller owns flushing and fsync;
- with a ``Masker``, every secret value is replaced by ``***`` before anything is
  written or echoed, whatever the read boundaries (see ``masking``), in notes too.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from typing import TextIO

from fastflow.runs.masking import Masker

LONG_LINE = 64 * 1024


class LogCapture:
    """Feed raw bytes; formatted text goes to ``out`` (and to ``echo`` when given)."""

    def __init__(
        self,
        out: TextIO,
        echo: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        masker: Masker | None = None,
    ) -> None:
        self._out = out
        self._masker = masker if masker is not None and masker.active else None
        self._echo = echo
        self._clock = clock
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []
        self._pending_len = 0
        self._pending_stamp = ""
        self._line_open = False  # a long line is partly written, its prefix included
        self._last_ms = -1
        self._last_stamp = ""

    def _stamp(self) -> str:
        ms = int(self._clock() * 1000)
        if ms != self._last_ms:
            self._last_ms = ms
            base = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000))
            self._last_stamp = f"[{base}.{ms % 1000:03d}] "
        return self._last_stamp

    def _write(self, text: str) -> None:
        self._out.write(text)
        if self._echo is not None:
            self._echo(text)

    def feed(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if self._masker is not None and text:
            text = self._masker.push(text)
        self._feed_text(text)

    def _feed_text(self, text: str) -> None:
        if not text:
            return
        stamp = self._stamp()
        if self._line_open:
            nl = text.find("\n")
            if nl < 0:
                self._write(text)
                return
            self._write(text[: nl + 1])
            self._line_open = False
            text = text[nl + 1 :]
        if "\n" in text:
            head, _, text = text.rpartition("\n")
            lines = head.split("\n")
            first = (self._pending_stamp or stamp) + "".join(self._pending) + lines[0]
            self._pending, self._pending_len, self._pending_stamp = [], 0, ""
            if len(lines) > 1:
                self._write(first + "\n" + stamp + ("\n" + stamp).join(lines[1:]) + "\n")
            else:
                self._write(first + "\n")
        if text:
            if not self._pending:
                self._pending_stamp = stamp
            self._pending.append(text)
            self._pending_len += len(text)
            if self._pending_len > LONG_LINE:
                self._write(self._pending_stamp + "".join(self._pending))
                self._pending, self._pending_len, self._pending_stamp = [], 0, ""
                self._line_open = True

    def close(self) -> None:
        """End of output: complete the last line if it had no newline."""
        tail = self._decoder.decode(b"", final=True)
        if self._masker is not None:
            tail = self._masker.push(tail) + self._masker.flush()
        self._feed_text(tail)
        if self._line_open:
            self._write("\n")
            self._line_open = False
        elif self._pending:
            self._write(self._pending_stamp + "".join(self._pending) + "\n")
            self._pending, self._pending_len, self._pending_stamp = [], 0, ""

    def masked(self, text: str) -> str:
        """``text`` with this capture's secrets masked (for a reason stored or printed
        outside the log)."""
        return self._masker.mask(text) if self._masker is not None else text

    def write_note(self, text: str) -> None:
        """Write a fastflow note as its own line (never inside an open line)."""
        self.write_line(f"[fastflow] {text}")

    def write_line(self, text: str) -> None:
        """Write one whole line of fastflow's own (a note, an ``[env]`` line), masked;
        the pipeline's unfinished line and any held-back text stay pending."""
        if self._masker is not None:
            text = self._masker.mask(text)
        if self._line_open:
            self._write("\n")
            self._line_open = False
        self._write(f"{self._stamp()}{text}\n")
