"""How large a regular expression becomes once compiled, before it is compiled.

The ``regex`` module unrolls counted repeats when it compiles: ``(?:a|b){3000000}`` takes
over a gigabyte before any line is matched, and a viewer's search must not take the
server's memory. ``unrolled_size`` estimates the number of pattern items after
unrolling — each literal, escape, class or group body counted once, multiplied by the
counts of the repeats around it (``{m}``, ``{m,n}``, ``{m,}``, ``{,n}``), alternatives
added up — from the text alone. It never under-counts a repeat it recognises; what it
does not recognise (a ``{`` that is not a repeat) counts as one item, as ``regex`` reads it.
"""

from __future__ import annotations

import re

MAX_UNROLLED = 10_000  # pattern items a search pattern may unroll to (~6 MB compiled)

_REPEAT = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")
_NAMED_ESCAPE = frozenset("pPNgkxuU")  # ``\p{L}``, ``\N{NAME}``, ``\g<name>``, ``\x{41}``


def unrolled_size(pattern: str, limit: int = MAX_UNROLLED) -> int:
    """The estimated item count of ``pattern`` once its repeats are unrolled; counting
    stops as soon as it passes ``limit`` (the value returned is then above ``limit``)."""
    frames = [[0, 0]]  # per open group: [items so far, items of the last atom]
    i, n = 0, len(pattern)

    def atom(size: int) -> None:
        frames[-1][0] += size
        frames[-1][1] = size

    while i < n:
        c = pattern[i]
        if c == "\\":
            i = _escape_end(pattern, i)
            atom(1)
        elif c == "[":
            i = _class_end(pattern, i)
            atom(1)
        elif c == "(":
            frames.append([0, 0])
            i += 1
        elif c == ")":
            if len(frames) > 1:
                atom(max(frames.pop()[0], 1))
            i += 1
        elif c == "{" and (m := _REPEAT.match(pattern, i)) and (m.group(1) or m.group(3)):
            low = int(m.group(1) or 0)
            high = int(m.group(3)) if m.group(3) else low
            count = max(low, high, 1)
            top = frames[-1]
            top[0] += top[1] * (count - 1)
            top[1] *= count
            i = m.end()
        elif c in "*+?|^$":
            i += 1  # no unrolling; the alternatives of ``|`` are added up
        else:
            atom(1)
            i += 1
        if frames[-1][0] > limit:
            return frames[-1][0]
    return sum(frame[0] for frame in frames)


def _escape_end(pattern: str, i: int) -> int:
    """The index after the escape starting at ``pattern[i]`` (a backslash)."""
    j = i + 2
    if j < len(pattern) and pattern[i + 1] in _NAMED_ESCAPE and pattern[j] in "{<":
        close = pattern.find("}" if pattern[j] == "{" else ">", j)
        return len(pattern) if close < 0 else close + 1
    return j


def _class_end(pattern: str, i: int) -> int:
    """The index after the character class starting at ``pattern[i]`` (``[``)."""
    j, n = i + 1, len(pattern)
    if pattern[j : j + 1] == "^":
        j += 1
    if pattern[j : j + 1] == "]":
        j += 1  # a ``]`` first is a literal
    while j < n and pattern[j] != "]":
        if pattern[j] == "\\":
            j += 2
        elif pattern.startswith("[:", j):
            close = pattern.find(":]", j + 2)
            j = n if close < 0 else close + 2
        else:
            j += 1
    return j + 1
