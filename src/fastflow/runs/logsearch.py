"""Find lines in a log that arrives as a stream of byte chunks (local file, archived object,
decompressed archive: all the same to this module, which does no I/O of its own).

Guarantees:
- the results depend only on the bytes, never on where the chunks are cut;
- memory is bounded: blocks of ``BLOCK`` bytes of whole lines, one line of at most
  ``MAX_LINE`` bytes (a longer line is searched in pieces of that size, each with the
  line's number; a match across a cut is not found), and the context lines asked for,
  each at most ``MAX_CONTEXT_LINE`` characters (a hit's size does not grow with the
  lines around it);
- line numbers count newlines, from 1; ``text`` is a line without its newline, invalid
  UTF-8 shown as U+FFFD;
- plain text is matched as a substring, case-insensitive unless asked otherwise; a
  regular expression (the ``regex`` module's syntax, ``^``/``$`` at line ends, never
  across lines) is at most ``MAX_PATTERN`` characters and gets ``LINE_TIME_LIMIT_S`` per
  line, and ``SLOW_BUDGET_S`` in all for the blocks and lines it matches slowly (a block
  that takes longer than the line limit is matched line by line): past either the search
  stops with ``RegexTimeout`` — matching is interrupted, a pathological pattern never
  hangs a worker, however many lines it is slow on;
- ``line_window`` keeps at most ``MAX_LINE`` bytes of each line.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import AnyStr

import regex

from fastflow.errors import InvalidInput
from fastflow.runs.pattern_size import MAX_UNROLLED, unrolled_size

BLOCK = 1024 * 1024
MAX_LINE = 1024 * 1024
MAX_PATTERN = 1000
MAX_CONTEXT = 100
MAX_CONTEXT_LINE = 4096  # characters of one context line (the matching line: MAX_LINE)
LINE_TIME_LIMIT_S = 1.0
SLOW_BUDGET_S = 10.0
SLOW_LINE_S = 0.01  # a line matched on its own this slowly counts against the budget
# what in a regular expression can look past the start or end of its line: ``\A``,
# ``\Z``, ``\G``, a lookbehind, a reverse search, ``^``/``$`` turned to the block's ends
_SEES_CONTEXT = regex.compile(r"\\[AZzG]|\(\?<[=!]|\(\?[a-zA-Z]*r|\(\?[a-zA-Z]*-[a-zA-Z]*m")
# a recursive call of the pattern or of a group: ``(?R)``, ``(?0)``, ``(?1)``, ``(?&n)``,
# ``(?P>n)`` — its memory grows with the input (an outside audit: ~0.5 GB a search)
# (looked for once every escaped character is taken out: ``\\(?R)`` recurses)
_RECURSES = regex.compile(r"\(\?(?:R|[+-]?\d+|&\w+|P>\w+)\)")
_ESCAPED = regex.compile(r"\\.", regex.DOTALL)


class SearchError(InvalidInput):
    """A search that cannot be done as asked (HTTP 422)."""


class PatternError(SearchError):
    """The search text or regular expression is not acceptable."""


class RegexTimeout(SearchError):
    """A regular expression took longer than the time limit on one line."""


class _LineTimeout(Exception):
    """Internal: the line at ``offset`` of the block hit the time limit (``total``: the
    slow-matching budget was used up there)."""

    def __init__(self, offset: int, *, total: bool = False) -> None:
        super().__init__(offset)
        self.offset = offset
        self.total = total


Place = tuple[int, int]  # (entry number: lines and pieces counted from 0, line number)


@dataclass
class Hit:
    """One matching line, with up to ``context`` lines around it. ``entry`` and the
    ``*_at`` lists place each of them in the log's entries (its lines, and each piece of
    a line longer than ``MAX_LINE`` counted on its own) with its line number: pieces of
    one line share the number, so a printer tells them apart by the entry."""

    line: int
    text: str
    context_before: list[str] = field(default_factory=list)
    context_after: list[str] = field(default_factory=list)
    entry: int = 0
    before_at: list[Place] = field(default_factory=list)
    after_at: list[Place] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "line": self.line,
            "text": self.text,
            "context_before": self.context_before,
            "context_after": self.context_after,
        }


def _text(part: AnyStr) -> str:
    return part.decode("utf-8", "replace") if isinstance(part, bytes) else part


def _context(part: AnyStr) -> str:
    """A context line, at most ``MAX_CONTEXT_LINE`` characters (a longer one ends with a
    note of its length): context must not multiply a long line into every hit."""
    if len(part) > MAX_CONTEXT_LINE:
        text = _text(part[:MAX_CONTEXT_LINE])
        return f"{text}… [{len(part):,} {'bytes' if isinstance(part, bytes) else 'characters'}]"
    return _text(part)


class Matcher:
    """Which lines of a block match. Plain text on bytes (ASCII case folding) when it
    can, otherwise on the decoded text with the ``regex`` module."""

    def __init__(
        self,
        pattern: str,
        *,
        is_regex: bool = False,
        case_sensitive: bool = False,
        time_limit: float = LINE_TIME_LIMIT_S,
        slow_budget: float = SLOW_BUDGET_S,
    ) -> None:
        if not pattern:
            raise PatternError("the search text is empty")
        if len(pattern) > MAX_PATTERN:
            raise PatternError(
                f"the search text is {len(pattern)} characters long; at most {MAX_PATTERN}"
            )
        if not is_regex and ("\n" in pattern or "\r" in pattern):
            raise PatternError("the search text cannot contain a line break")
        self.pattern = pattern
        self.is_regex = is_regex
        self.time_limit = time_limit
        self.slow_budget = slow_budget
        self._slow_left = slow_budget  # seconds left for slow matching, this search
        self._needle = b""
        self._folded: regex.Pattern[bytes] | None = None
        self._rx: regex.Pattern[str] | None = None
        if not is_regex and (case_sensitive or pattern.isascii()):
            self._needle = pattern.encode("utf-8")
            if not case_sensitive:  # ASCII case folding, searched on the bytes
                self._folded = regex.compile(regex.escape(self._needle), regex.IGNORECASE)
            return
        if is_regex and _RECURSES.search(_ESCAPED.sub("", pattern)):
            raise PatternError(
                f"regular expression {pattern!r} calls itself or a group recursively "
                "((?R), (?1), (?&name), (?P>name)): recursive patterns are not supported"
            )
        if is_regex and unrolled_size(pattern) > MAX_UNROLLED:
            raise PatternError(
                f"regular expression {pattern!r} is too large: its counted repeats ({{n}}) "
                f"would unroll to more than {MAX_UNROLLED} items; use smaller counts"
            )
        source = pattern if is_regex else regex.escape(pattern)
        flags = regex.MULTILINE | regex.V0 | (0 if case_sensitive else regex.IGNORECASE)
        try:
            self._rx = regex.compile(source, flags)
        except (regex.error, ValueError, OverflowError, RecursionError) as e:  # (flags)
            raise PatternError(f"invalid regular expression {pattern!r}: {e}") from None
        except MemoryError:
            raise PatternError(f"regular expression {pattern!r} is too large") from None
        # a pattern that can see past its line's start or end (a lookbehind, ``\A``,
        # ``\Z``) would match differently inside a block than on its line alone (an
        # outside audit: ``\A\[`` matched the first line of every 1 MiB block): such
        # patterns are matched on each line as a string of its own
        self._alone = is_regex and _SEES_CONTEXT.search(pattern) is not None

    @property
    def on_bytes(self) -> bool:
        """True when blocks are matched as bytes (no decoding)."""
        return self._rx is None

    def lines(self, block: AnyStr) -> Iterator[tuple[int, int]]:
        """``(start, end)`` of every matching line of ``block`` (``end`` at its newline or
        the block's end), in order, each once; ``_LineTimeout`` names the offset of a line
        that hit the time limit."""
        if isinstance(block, bytes):
            yield from self._plain(block)
        else:
            yield from self._regex(block)

    def _plain(self, block: bytes) -> Iterator[tuple[int, int]]:
        needle, folded, n, pos = self._needle, self._folded, len(block), 0
        while True:
            if folded is None:
                i = block.find(needle, pos)
            else:
                m = folded.search(block, pos)
                i = -1 if m is None else m.start()
            if i < 0:
                return
            start = block.rfind(b"\n", 0, i) + 1
            end = block.find(b"\n", i)
            end = n if end < 0 else end
            yield start, end
            pos = end + 1

    def _regex(self, text: str) -> Iterator[tuple[int, int]]:
        assert self._rx is not None
        if self._alone:
            yield from self._each_line_alone(text)
            return
        n, pos = len(text), 0
        while pos < n:
            try:
                m = self._rx.search(text, pos, timeout=self.time_limit, concurrent=True)
            except TimeoutError:  # a slow block: line by line, each with the time limit
                self._spend(self.time_limit, pos)
                yield from self._each_line(text, pos)
                return
            if m is None:
                return
            start = text.rfind("\n", 0, m.start()) + 1
            if start >= n:  # an empty match after the block's last newline: no line
                return
            end = text.find("\n", m.start())
            end = n if end < 0 else end
            if m.end() <= end or self._line_matches(text, start, end):
                yield start, end
            pos = end + 1

    def _each_line(self, text: str, pos: int) -> Iterator[tuple[int, int]]:
        n = len(text)
        clock = time.monotonic
        while pos < n:
            end = text.find("\n", pos)
            end = n if end < 0 else end
            began = clock()
            matched = self._line_matches(text, pos, end)
            self._spend(clock() - began, pos)
            if matched:
                yield pos, end
            pos = end + 1

    def _each_line_alone(self, text: str) -> Iterator[tuple[int, int]]:
        """Each line matched as the whole subject: nothing before or after it is seen."""
        assert self._rx is not None
        search, limit, clock = self._rx.search, self.time_limit, time.monotonic
        n, pos = len(text), 0
        while pos < n:
            end = text.find("\n", pos)
            end = n if end < 0 else end
            began = clock()
            try:
                found = search(text[pos:end], timeout=limit, concurrent=True)
            except TimeoutError:
                raise _LineTimeout(pos) from None
            took = clock() - began
            if took > SLOW_LINE_S:
                self._spend(took, pos)
            if found is not None:
                yield pos, end
            pos = end + 1

    def _spend(self, seconds: float, offset: int) -> None:
        """Count slow matching against the search's budget (``_LineTimeout`` past it)."""
        self._slow_left -= seconds
        if self._slow_left < 0:
            raise _LineTimeout(offset, total=True)

    def _line_matches(self, text: str, start: int, end: int) -> bool:
        assert self._rx is not None
        try:
            found = self._rx.search(text, start, end, timeout=self.time_limit, concurrent=True)
        except TimeoutError:
            raise _LineTimeout(start) from None
        return found is not None and found.end() <= end


def blocks(chunks: Iterable[bytes], size: int = BLOCK, max_line: int = MAX_LINE) -> Iterator[bytes]:
    """The stream re-cut into blocks of whole lines of about ``size`` bytes (the last one
    may lack its newline). A line longer than ``max_line`` is cut at a character boundary.
    The source iterator is closed when this one is (an S3 body is released early)."""
    pending: list[bytes] = []
    held = 0
    try:
        for chunk in chunks:
            pending.append(chunk)
            held += len(chunk)
            if held < size:
                continue
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pos = 0
            while len(data) - pos >= size:
                # whole lines, at most ``size`` bytes; a longer first line alone, and a
                # line longer than ``max_line`` in pieces of that size
                cut = data.rfind(b"\n", pos, pos + size) + 1
                if cut == 0:
                    end = data.find(b"\n", pos + size, pos + max_line)
                    if end >= 0:
                        cut = end + 1
                    elif len(data) - pos < max_line:
                        break  # the rest of the line is still to come
                    else:
                        cut = pos + _char_boundary(data[pos : pos + max_line + 1], max_line)
                yield data[pos:cut]
                pos = cut
            data = data[pos:] if pos else data
            pending, held = ([data] if data else []), len(data)
        if held:
            yield b"".join(pending)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _char_boundary(buf: bytes, at: int) -> int:
    """``at`` moved back to the start of a UTF-8 character (at most 3 bytes); ``at`` itself
    when ``buf`` ends there."""
    cut = at
    while cut > at - 3 and cut < len(buf) and 0x80 <= buf[cut] <= 0xBF:
        cut -= 1
    return cut


def _lines_before(block: AnyStr, start: int, count: int, nl: AnyStr) -> tuple[list[str], bool]:
    """Up to ``count`` lines before offset ``start`` (a line start), nearest last; and
    whether the block's start was reached (more may come from the previous block)."""
    out: list[str] = []
    end = start - 1
    while len(out) < count and end >= 0:
        begin = block.rfind(nl, 0, end) + 1
        out.append(_context(block[begin:end]))
        end = begin - 1
    out.reverse()
    return out, end < 0


def _lines_after(block: AnyStr, pos: int, count: int, nl: AnyStr) -> list[str]:
    """Up to ``count`` lines from offset ``pos`` (a line start) within the block."""
    out: list[str] = []
    n = len(block)
    while len(out) < count and pos < n:
        end = block.find(nl, pos)
        end = n if end < 0 else end
        out.append(_context(block[pos:end]))
        pos = end + 1
    return out


class _Grep:
    """The state between blocks: line count, lines kept for context, hits waiting for
    their following lines."""

    def __init__(self, matcher: Matcher, context: int) -> None:
        self.matcher = matcher
        self.context = context
        self.line = 1  # number of the next block's first line
        self.entry = 0  # entry number of the next block's first line (or piece)
        self.history: deque[tuple[Place, str]] = deque(maxlen=context or 1)
        self.pending: deque[Hit] = deque()

    def block(self, raw: bytes) -> list[Hit]:
        if self.matcher.on_bytes:
            return self._block(raw, b"\n")
        # blocks end at a newline or a character boundary: each decodes on its own
        return self._block(raw.decode("utf-8", "replace"), "\n")

    def _block(self, block: AnyStr, nl: AnyStr) -> list[Hit]:
        ready: list[Hit] = []
        c = self.context
        if self.pending:
            head = _lines_after(block, 0, c, nl)
            at = [(self.entry + j, self.line + j) for j in range(len(head))]
            for hit in self.pending:
                take = c - len(hit.context_after)
                hit.context_after.extend(head[:take])
                hit.after_at.extend(at[:take])
            while self.pending and len(self.pending[0].context_after) >= c:
                ready.append(self.pending.popleft())
        counted, line = 0, self.line
        try:
            for start, end in self.matcher.lines(block):
                line += block.count(nl, counted, start)
                counted = start
                # in a block, each line but its last ends with a newline: the k-th
                # entry of the block is line ``self.line + k``
                entry = self.entry + line - self.line
                hit = Hit(line, _text(block[start:end]), entry=entry)
                if c:
                    hit.context_before, reached = _lines_before(block, start, c, nl)
                    n = len(hit.context_before)
                    hit.before_at = [(entry - n + j, line - n + j) for j in range(n)]
                    if reached and n < c:
                        older = list(self.history)[-(c - n) :]
                        hit.context_before[:0] = [text for _, text in older]
                        hit.before_at[:0] = [at for at, _ in older]
                    hit.context_after = _lines_after(block, end + 1, c, nl)
                    k = len(hit.context_after)
                    hit.after_at = [(entry + 1 + j, line + 1 + j) for j in range(k)]
                if self.pending or len(hit.context_after) < c:
                    self.pending.append(hit)
                else:
                    ready.append(hit)
        except _LineTimeout as e:
            where = line + block.count(nl, counted, e.offset)
            if e.total:
                raise RegexTimeout(
                    f"the regular expression {self.matcher.pattern!r} matched slowly for "
                    f"more than {self.matcher.slow_budget:g} s in all (stopped at line "
                    f"{where}); simplify it (nested repeats such as (a+)+ or (a|aa)+ "
                    "backtrack exponentially)"
                ) from None
            raise RegexTimeout(
                f"the regular expression {self.matcher.pattern!r} took longer than "
                f"{self.matcher.time_limit:g} s on line {where}; simplify it (nested "
                "repeats such as (a+)+ or (a|aa)+ backtrack exponentially)"
            ) from None
        newlines = block.count(nl)
        entries = newlines + (0 if not block or block[-1:] == nl else 1)
        if c:
            tail = _tail_lines(block, c, nl)
            last = (self.entry + entries - 1, self.line + entries - 1)
            n = len(tail)
            self.history.extend(
                ((last[0] - n + 1 + j, last[1] - n + 1 + j), text) for j, text in enumerate(tail)
            )
        self.line += newlines
        self.entry += entries
        return ready

    def finish(self) -> list[Hit]:
        rest = list(self.pending)
        self.pending.clear()
        return rest


def _tail_lines(block: AnyStr, count: int, nl: AnyStr) -> list[str]:
    """The last ``count`` lines of a block (a block ending in a newline has no empty
    line after it)."""
    n = len(block)
    if not n:
        return []
    return _lines_before(block, n if block[n - 1 : n] == nl else n + 1, count, nl)[0]


def search_steps(
    chunks: Iterable[bytes], matcher: Matcher, *, context: int = 0, block_size: int = BLOCK
) -> Generator[Hit | int, None, None]:
    """The hits in order, and after each block the number of bytes it had (so that a
    caller can show progress, or give up, between blocks)."""
    if not 0 <= context <= MAX_CONTEXT:
        raise SearchError(f"context must be between 0 and {MAX_CONTEXT} lines, not {context}")
    state = _Grep(matcher, context)
    for raw in blocks(chunks, block_size):
        yield from state.block(raw)
        yield len(raw)
    yield from state.finish()


def search(
    chunks: Iterable[bytes],
    matcher: Matcher,
    *,
    context: int = 0,
    max_hits: int | None = None,
    block_size: int = BLOCK,
) -> Iterator[Hit]:
    """The matching lines of the stream, in order (at most ``max_hits``)."""
    found = 0
    steps = search_steps(chunks, matcher, context=context, block_size=block_size)
    try:
        for step in steps:
            if isinstance(step, Hit):
                yield step
                found += 1
                if max_hits is not None and found >= max_hits:
                    return
    finally:
        steps.close()


def line_window(chunks: Iterable[bytes], first: int, count: int, max_line: int = MAX_LINE) -> bytes:
    """The bytes of lines ``first`` .. ``first + count - 1`` (1-based, newlines kept;
    empty past the end of the log), each cut to its first ``max_line`` bytes (at a
    character boundary). Streaming: whole blocks before ``first`` are only counted, and
    only the lines returned are kept — memory is bounded by ``count * max_line``."""
    if first < 1 or count < 1:
        raise SearchError("lines are numbered from 1 and at least one must be asked for")
    out = bytearray()
    line = 1  # number of the line at the current position
    seen = 0  # bytes of the current line so far (at most ``max_line`` of them kept)
    for block in blocks(chunks):
        newlines = block.count(b"\n")
        if line + newlines < first:
            line += newlines
            continue
        pos, n = 0, len(block)
        while pos < n:
            nl = block.find(b"\n", pos)
            stop = n if nl < 0 else nl
            if line >= first:
                room = max_line - seen
                if stop - pos <= room:
                    out += block[pos:stop]
                elif room > 0:
                    out += block[pos : pos + _char_boundary(block[pos:stop], room)]
                seen += stop - pos
            if nl < 0:
                break
            if line >= first:
                out += b"\n"
            seen = 0
            line += 1
            if line >= first + count:
                return bytes(out)
            pos = nl + 1
    return bytes(out)
