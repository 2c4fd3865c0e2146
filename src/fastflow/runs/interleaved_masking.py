"""Mask secrets in a pipeline's two output streams, written to one log in the order
they arrived (the pure part: no clock, no I/O).

Guarantees:
- text leaves in arrival order; what is held back is only a possible start of a secret
  (of the merged text, or of one stream's own text) and everything that arrived after
  it;
- a secret is masked when it is contiguous in the merged text, and also when it is
  contiguous in one stream's text with the other stream's text written between its
  pieces (``print(secret[:4], end="")``, a warning on stderr, ``print(secret[4:])``);
  where occurrences overlap, the one that starts first wins;
- memory stays bounded: once more than ``HOLD_ACROSS`` characters wait behind one
  stream's possible secret start, or the caller calls ``release`` (it does after
  ``capture.HOLD_S`` seconds), that start is given up and written as it is;
- with one stream only, it is exactly ``Masker``'s streaming replacement.
"""

from __future__ import annotations

from fastflow.runs.masking import MASK, Masker

HOLD_ACROSS = 8192  # characters of output kept behind one stream's possible secret start


class _Seg:
    """Pending text of one stream (adjacent segments are of different streams)."""

    __slots__ = ("stream", "text")

    def __init__(self, stream: int, text: str) -> None:
        self.stream, self.text = stream, text


class InterleavedMasker:
    """``push(stream, text)`` in arrival order; what it returns is final."""

    def __init__(self, masker: Masker, hold_across: int = HOLD_ACROSS) -> None:
        self._m = masker
        self._hold_across = hold_across
        self._segs: list[_Seg] = []

    @property
    def waiting(self) -> bool:
        """Text of both streams is held (behind one stream's possible secret start)."""
        return len(self._segs) > 1

    def push_all(self, pieces: list[tuple[int, str]]) -> str:
        """``push`` of each piece in order (one read's pieces). A read that holds no
        value and no possible start of one passes at once; any other is pushed piece
        by piece (settling a read at once can let an occurrence in one stream's text win
        over an overlapping one in the merged text and leave that one whole: audit)."""
        if not self._segs and len(pieces) > 1 and self._clear(pieces):
            return "".join([t for _, t in pieces])
        return "".join([self.push(stream, text) for stream, text in pieces])

    def push(self, stream: int, text: str) -> str:
        """The masked text that is certain now."""
        if not text:
            return ""
        segs = self._segs
        if segs and segs[-1].stream == stream:
            segs[-1].text += text
        else:
            segs.append(_Seg(stream, text))
        if len(segs) == 1:  # one stream: the plain streaming masker
            out, carry = self._m.settle(segs[0].text)
            if carry:
                segs[0].text = carry
            else:
                segs.clear()
            return out
        return self._settle(per_stream=True)

    def _clear(self, pieces: list[tuple[int, str]]) -> bool:
        """Nothing to mask or hold in ``pieces`` (the usual read with both streams):
        no value and no possible start of one in the merged text or in either stream's
        own text. A few C-speed scans instead of the segment bookkeeping."""
        m = self._m
        texts = ["".join([t for _, t in pieces])]
        texts += ["".join([t for s, t in pieces if s == stream]) for stream in (0, 1)]
        return all(m.pattern_for(t) is None and not m.held_suffix(t) for t in texts)

    def release(self) -> str:
        """Give up each stream's own held start (what only the merged text could still
        complete stays held); the text that is certain then."""
        return self._settle(per_stream=False) if self.waiting else ""

    def flush(self) -> str:
        """Everything held, masked (end of both streams)."""
        if not self._segs:
            return ""
        self._mask()
        rest = "".join(g.text for g in self._segs)
        self._segs = []
        return self._m.mask(rest)

    def _settle(self, per_stream: bool) -> str:
        self._mask()
        merged = "".join(g.text for g in self._segs)
        cut = len(merged) - self._m.held_suffix(merged)
        if per_stream:
            own = min((self._own_hold(s) for s in (0, 1)), default=len(merged))
            if own < cut and len(merged) - own <= self._hold_across:
                cut = own
        return self._take(cut)

    def _own_hold(self, stream: int) -> int:
        """Merged position where ``stream``'s own possible secret start begins (or the
        end when there is none)."""
        own = "".join(g.text for g in self._segs if g.stream == stream)
        held = self._m.held_suffix(own)
        total = sum(len(g.text) for g in self._segs)
        if not held:
            return total
        end = total
        for g in reversed(self._segs):  # walk back through the stream's pieces
            n = len(g.text)
            if g.stream == stream:
                if held <= n:
                    return end - held
                held -= n
            end -= n
        return 0

    def _take(self, cut: int) -> str:
        """The first ``cut`` merged characters, removed from the pending segments."""
        out: list[str] = []
        left = cut
        while self._segs and left > 0:
            text = self._segs[0].text
            if len(text) <= left:
                out.append(text)
                left -= len(text)
                self._segs.pop(0)
            else:
                out.append(text[:left])
                self._segs[0].text = text[left:]
                left = 0
        return "".join(out)

    def _mask(self) -> None:
        """Replace every complete occurrence in the pending text, in the merged text or
        in one stream's own text; the first to start wins."""
        segs = self._segs
        texts = [g.text for g in segs]
        starts: list[int] = []
        pos = 0
        for t in texts:
            starts.append(pos)
            pos += len(t)
        found: list[list[tuple[int, int]]] = []  # each: merged ranges, in order
        merged = "".join(texts)
        pattern = self._m.pattern_for(merged)
        if pattern is not None:
            found.extend([(m.start(), m.end())] for m in pattern.finditer(merged))
        for stream in (0, 1):
            idx = [i for i, g in enumerate(segs) if g.stream == stream]
            if len(idx) < 2:
                continue  # one piece: the merged text holds it whole
            own = "".join(texts[i] for i in idx)
            pattern = self._m.pattern_for(own)
            if pattern is None:
                continue
            offsets: list[int] = []
            o = 0
            for i in idx:
                offsets.append(o)
                o += len(texts[i])
            for m in pattern.finditer(own):
                ranges = []
                for k, i in enumerate(idx):
                    a, b = max(m.start(), offsets[k]), min(m.end(), offsets[k] + len(texts[i]))
                    if a < b:
                        ranges.append((starts[i] + a - offsets[k], starts[i] + b - offsets[k]))
                found.append(ranges)
        if not found:
            return
        taken: list[tuple[int, int]] = []
        edits: list[tuple[int, int, str]] = []
        for ranges in sorted(found, key=lambda r: (r[0][0], -(r[-1][1] - r[0][0]))):
            if any(a < tb and ta < b for a, b in ranges for ta, tb in taken):
                continue
            taken.extend(ranges)
            for n, (a, b) in enumerate(ranges):
                edits.append((a, b, MASK if n == 0 else ""))
        self._apply(texts, starts, edits)

    def _apply(
        self, texts: list[str], starts: list[int], edits: list[tuple[int, int, str]]
    ) -> None:
        """Rewrite the segments with ``edits`` (merged ranges, possibly across
        segments: the replacement goes to the first piece)."""
        new = list(texts)
        for a, b, repl in sorted(edits, reverse=True):  # from the end: offsets stay valid
            for i in range(len(texts) - 1, -1, -1):
                s0, s1 = starts[i], starts[i] + len(texts[i])
                lo, hi = max(a, s0), min(b, s1)
                if lo >= hi:
                    continue
                piece = repl if lo == a else ""
                new[i] = new[i][: lo - s0] + piece + new[i][hi - s0 :]
        segs: list[_Seg] = []
        for old, text in zip(self._segs, new, strict=True):
            if not text:
                continue
            if segs and segs[-1].stream == old.stream:
                segs[-1].text += text
            else:
                segs.append(_Seg(old.stream, text))
        self._segs = segs
