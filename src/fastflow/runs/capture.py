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
  written or echoed, whatever the read boundaries (see ``masking``), in notes too;
- after ``split_streams`` (the bootstrap frames stderr, see ``output_streams``), the
  frames never reach the log and each stream is also masked on its own, so a secret
  printed to stdout in pieces with stderr written between them is masked too (see
  ``interleaved_masking``); text held behind one stream's possible secret start for
  ``HOLD_S`` seconds is given up and written (``tick``).
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from typing import TextIO

from fastflow.runs.interleaved_masking import InterleavedMasker
from fastflow.runs.masking import Masker
from fastflow.runs.output_streams import STDOUT, StreamSplit, new_mark

LONG_LINE = 64 * 1024
HOLD_S = 1.0  # longest wait for the rest of a secret split across the two streams


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
        self._streams = InterleavedMasker(self._masker) if self._masker is not None else None
        self._echo = echo
        self._clock = clock
        self._split: StreamSplit | None = None
        self._decoders = [self._new_decoder(), self._new_decoder()]
        self._waiting_since: float | None = None
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

    @staticmethod
    def _new_decoder() -> codecs.IncrementalDecoder:
        return codecs.getincrementaldecoder("utf-8")(errors="replace")

    def split_streams(self, mark: str | None = None) -> str:
        """Expect stderr framed by the bootstrap with ``mark`` (a new one when None)
        from now on; the mark to give it (in ``bootstrap.OUTPUT_MARK_ENV``)."""
        mark = mark or new_mark()
        self._split = StreamSplit(mark)
        return mark

    def feed(self, data: bytes) -> None:
        if self._split is None:
            self._feed_text(self._stream_text(STDOUT, data))
            return
        pieces = self._split.feed(data)
        if len(pieces) == 1:
            self._feed_text(self._stream_text(*pieces[0]))
            return
        # the read's pieces decoded, masked and formatted together (one settle, one write)
        texts = [(s, self._decoders[s].decode(piece)) for s, piece in pieces]
        if self._streams is None:
            self._feed_text("".join([t for _, t in texts]))
            return
        self._feed_text(self._streams.push_all(texts))
        self._note_waiting()

    def _stream_text(self, stream: int, data: bytes) -> str:
        """The text of ``data`` from ``stream`` that is certain now, masked."""
        text = self._decoders[stream].decode(data)
        if self._streams is not None and text:
            text = self._streams.push(stream, text)
            self._note_waiting()
        return text

    def _note_waiting(self) -> None:
        assert self._streams is not None
        if not self._streams.waiting:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = time.monotonic()

    def tick(self, now: float | None = None) -> None:
        """Give up a stream's possible secret start that kept the other stream's output
        back for ``HOLD_S`` seconds (called by the reader between reads)."""
        since = self._waiting_since
        if self._streams is None or since is None:
            return
        if (time.monotonic() if now is None else now) - since >= HOLD_S:
            self._feed_text(self._streams.release())
            self._note_waiting()

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
        if self._split is not None:
            for stream, piece in self._split.close():
                self._feed_text(self._stream_text(stream, piece))
        for stream, decoder in enumerate(self._decoders):
            tail = decoder.decode(b"", final=True)
            if self._streams is not None:
                tail = self._streams.push(stream, tail)
            self._feed_text(tail)
        if self._streams is not None:
            self._feed_text(self._streams.flush())
            self._waiting_since = None
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
