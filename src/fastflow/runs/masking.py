"""Replace secret values by ``***`` in a stream of text, across chunk boundaries.

Guarantees: every occurrence of a value of at least ``MIN_LENGTH`` characters is replaced,
however the stream is cut into chunks; the longest value wins where values overlap; at
most the longest proper prefix of a value that ends a chunk is held back (so output that
cannot be the start of a secret is never delayed, and memory stays bounded by the longest
value). Only the exact text is caught: an encoded form (base64, hex, URL quoting) is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MIN_LENGTH = 4
MASK = "***"
MAX_SUBSET_PATTERNS = 64  # compiled patterns of subsets of the values kept per stream


class Masker:
    """Streaming replacement of ``values``; ``push`` text in order, ``flush`` at the end."""

    def __init__(self, values: Iterable[str]) -> None:
        kept = {v for v in values if len(v) >= MIN_LENGTH}
        ordered = sorted(kept, key=len, reverse=True)  # longest first wins at one position
        self._values = ordered
        self._pattern = re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None
        firsts = sorted({v[0] for v in ordered})
        # where a value may start (never matches without values)
        self._first_re = re.compile(
            "[" + "".join(map(re.escape, firsts)) + "]" if firsts else "(?!)"
        )
        self._longest = len(ordered[0]) if ordered else 0
        self._carry = ""
        self._subsets: dict[tuple[str, ...], re.Pattern[str]] = {}

    @property
    def active(self) -> bool:
        return self._pattern is not None

    def push(self, text: str) -> str:
        """The masked text that is certain now; a possible secret's start is held back."""
        if self._pattern is None:
            return text
        out, self._carry = self.settle(self._carry + text)
        return out

    def settle(self, buf: str) -> tuple[str, str]:
        """``buf`` split into its masked part that is certain now and the rest, a
        possible start of a secret (unmasked, to be given again with what follows)."""
        hold = self.held_suffix(buf)
        cut = len(buf) - hold
        pattern = self.pattern_for(buf)
        if pattern is None:  # the usual case: no value occurs in this text
            return buf[:cut], buf[cut:]
        out: list[str] = []
        pos = 0
        for m in pattern.finditer(buf):
            if m.start() >= cut:
                break
            out.append(buf[pos : m.start()])
            out.append(MASK)
            pos = m.end()
            cut = max(cut, pos)
        out.append(buf[pos:cut])
        return "".join(out), buf[cut:]

    def flush(self) -> str:
        """Everything still held back, masked (end of the stream)."""
        rest, self._carry = self._carry, ""
        if self._pattern is None or not rest:
            return rest
        return self._pattern.sub(MASK, rest)

    def mask(self, text: str) -> str:
        """``text`` masked on its own (not part of the stream)."""
        return self._pattern.sub(MASK, text) if self._pattern is not None else text

    def pattern_for(self, buf: str) -> re.Pattern[str] | None:
        """A pattern of the values that occur in ``buf`` (longest first, as in the full
        pattern: the same matches), or None when none does. One substring search per
        value is several times faster than the regex's attempt at every character."""
        present = tuple(v for v in self._values if v in buf)
        if not present:
            return None
        if len(present) == len(self._values):
            return self._pattern
        pattern = self._subsets.get(present)
        if pattern is None:
            if len(self._subsets) >= MAX_SUBSET_PATTERNS:
                self._subsets.clear()
            pattern = re.compile("|".join(re.escape(v) for v in present))
            self._subsets[present] = pattern
        return pattern

    def held_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a value.
        Only positions holding a value's first character are tried (found by one regex
        scan of the last ``longest - 1`` characters, not a loop over each of them)."""
        n = len(buf)
        if self._longest < 2 or not n:
            return 0
        start = max(0, n - (self._longest - 1))
        for m in self._first_re.finditer(buf, start):
            tail = buf[m.start() :]
            k = len(tail)
            if any(len(v) > k and v.startswith(tail) for v in self._values):
                return k
        return 0
