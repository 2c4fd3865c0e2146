"""``runs.logsearch``: the same hits as a naive line-by-line search whatever the chunk and
block boundaries; context lines; the regex time limit; the line window; and flat memory
on a large local log (measured in a subprocess)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import regex

from fastflow.runs import logsearch
from fastflow.runs.logsearch import Hit, Matcher, PatternError, RegexTimeout

WORDS = ["alpha", "Beta", "GAMMA", "needle", "NeedLe", "straße", "ünïcode", "x", "", "a b"]


def _random_log(rng: random.Random, lines: int) -> bytes:
    out = []
    for i in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(0, 6))]
        out.append(f"[2026-01-01 00:00:00.{i % 1000:03d}] " + " ".join(words))
    text = "\n".join(out)
    if rng.random() < 0.7:
        text += "\n"
    data = text.encode()
    if rng.random() < 0.3:  # invalid UTF-8 somewhere
        cut = rng.randint(0, len(data))
        data = data[:cut] + b"\xff\xfe" + data[cut:]
    return data


def _chunks(data: bytes, rng: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, 97)
        out.append(data[pos : pos + step])
        pos += step
    return out


def _naive(data: bytes, matcher: Matcher, pattern: str, context: int, fold: bool) -> list[Hit]:
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    rx = (
        regex.compile(pattern, regex.MULTILINE | (regex.IGNORECASE if fold else 0))
        if matcher.is_regex
        else None
    )
    hits = []
    for i, line in enumerate(lines):
        if rx is not None:
            found = rx.search(line) is not None
        elif fold:
            found = pattern.lower() in line.lower()
        else:
            found = pattern in line
        if found:
            before = lines[max(0, i - context) : i] if context else []
            after = lines[i + 1 : i + 1 + context] if context else []
            # entries are lines here (no line is cut into pieces): entry j is line j + 1
            first = i - len(before)
            hits.append(
                Hit(
                    i + 1,
                    line,
                    before,
                    after,
                    entry=i,
                    before_at=[(first + j, first + j + 1) for j in range(len(before))],
                    after_at=[(i + 1 + j, i + 2 + j) for j in range(len(after))],
                )
            )
    return hits


@pytest.mark.parametrize(
    ("pattern", "is_regex", "case_sensitive"),
    [
        ("needle", False, False),
        ("NEEDLE", False, True),
        ("straße", False, False),
        ("ÜNÏCODE", False, False),
        ("a b", False, False),
        (r"need\w+ (beta|x)$", True, False),
        (r"^\[2026[^]]*\] $", True, False),
        (r"x*", True, False),
        (r"Beta\s+GAMMA", True, True),
        # patterns that could see past the line's ends: still each line alone (an outside
        # audit found ``\A`` matching at each block's start and lookbehinds reading the
        # line before)
        (r"\A\[", True, False),
        (r"(?<!\n)\[2026", True, False),
        (r"(?<=\] )needle", True, False),
        (r"(?<=x\n)\[", True, False),
        (r"(?<=a)\n?\[", True, False),
        (r"GAMMA\Z", True, True),
        (r"(?-m)^\[", True, False),
        (r"(?i-m:\] x$)", True, False),
    ],
)
def test_the_same_hits_as_a_naive_search_whatever_the_boundaries(
    pattern: str, is_regex: bool, case_sensitive: bool
) -> None:
    rng = random.Random(f"{pattern}{is_regex}{case_sensitive}")
    for _ in range(25):
        data = _random_log(rng, rng.randint(0, 60))
        matcher = Matcher(pattern, is_regex=is_regex, case_sensitive=case_sensitive)
        context = rng.choice([0, 0, 1, 2, 5])
        expected = _naive(data, matcher, pattern, context, not case_sensitive)
        for block in (rng.randint(8, 200), logsearch.BLOCK):
            got = list(
                logsearch.search(_chunks(data, rng), matcher, context=context, block_size=block)
            )
            assert got == expected, (data, context, block)


def test_plain_text_is_case_insensitive_unless_asked() -> None:
    data = b"one NEEDLE\ntwo needle\nthree\n"
    assert [h.line for h in logsearch.search([data], Matcher("needle"))] == [1, 2]
    assert [h.line for h in logsearch.search([data], Matcher("needle", case_sensitive=True))] == [2]


def test_hits_carry_context_across_blocks_and_stop_at_max_hits() -> None:
    data = b"".join(f"line {i}\n".encode() for i in range(1, 101))
    hits = list(
        logsearch.search([data], Matcher(r"line \d*0$", is_regex=True), context=2, block_size=16)
    )
    assert [h.line for h in hits] == list(range(10, 101, 10))
    assert hits[0].to_dict() == {
        "line": 10,
        "text": "line 10",
        "context_before": ["line 8", "line 9"],
        "context_after": ["line 11", "line 12"],
    }
    assert hits[-1].context_after == []  # the end of the log
    few = list(logsearch.search([data], Matcher("line"), max_hits=3))
    assert [h.line for h in few] == [1, 2, 3]


def test_a_match_never_spans_two_lines() -> None:
    data = b"ends with a\nb starts the next\n"
    assert list(logsearch.search([data], Matcher(r"a\sb", is_regex=True))) == []
    assert list(logsearch.search([data], Matcher(r"a[^x]*b", is_regex=True))) == []


def test_a_line_longer_than_max_line_is_searched_in_pieces() -> None:
    data = b"short\n" + b"y" * 300 + b"NEEDLE" + b"z" * 300 + b"\nlast needle\n"
    hits = list(
        logsearch.search(
            logsearch.blocks([data], size=128, max_line=256), Matcher("needle"), block_size=128
        )
    )
    assert [h.line for h in hits] == [2, 3]


def test_invalid_patterns_are_refused_with_one_line() -> None:
    for pattern, is_regex, words in [
        ("", False, "empty"),
        ("x" * (logsearch.MAX_PATTERN + 1), False, "at most"),
        ("a\nb", False, "line break"),
        ("(unclosed", True, "invalid regular expression"),
        # an outside audit: inline flags that clash raised a bare ValueError (HTTP 500)
        ("(?V1)a", True, "invalid regular expression"),
        ("(?au)a", True, "invalid regular expression"),
        # an outside audit: a recursive pattern took ~0.5 GB per search
        ("a(?R)?b", True, "recursive patterns are not supported"),
        ("(x)(?1)", True, "recursive patterns are not supported"),
        ("(?P<n>a)(?P>n)", True, "recursive patterns are not supported"),
        ("\\\\(?R)?x", True, "recursive patterns are not supported"),  # an escaped \ first
        # outside audit: compiled, these took the server's memory (the kernel killed it)
        ("(?:a|b){99999999}", True, "too large"),
        ("(?P<x>a)(?P=x){99999999}", True, "too large"),
        ("((a){101}){100}", True, "too large"),
    ]:
        with pytest.raises(PatternError, match=words) as info:
            Matcher(pattern, is_regex=is_regex)
        assert "\n" not in str(info.value)
    with pytest.raises(logsearch.SearchError, match="context"):
        list(logsearch.search([b"x\n"], Matcher("x"), context=logsearch.MAX_CONTEXT + 1))


def test_a_pathological_regex_is_stopped_by_the_time_limit() -> None:
    data = b"fine line\n" * 1000 + b"a" * 40 + b"!\n" + b"after\n"
    matcher = Matcher(r"(a|aa)+$", is_regex=True, time_limit=0.3)
    t0 = time.monotonic()
    with pytest.raises(RegexTimeout, match=r"longer than 0\.3 s on line 1001") as info:
        list(logsearch.search([data], matcher))
    assert time.monotonic() - t0 < 5
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("prefix", ["", "(?<=^)"])  # matched in blocks / on each line alone
def test_a_pathological_regex_is_stopped_either_way(prefix: str) -> None:
    # each slow line well above ``SLOW_LINE_S`` (10 ms) and below the 0.5 s line limit on
    # any machine (23 a's took 7 ms on a fast one: they never counted, and a CI run failed)
    slow = b"fine line\n" * 100 + (b"a" * 26 + b"b\n") * 400 + b"after\n"
    matcher = Matcher(prefix + r"(a|aa)+$", is_regex=True, time_limit=0.5, slow_budget=1.0)
    t0 = time.monotonic()
    with pytest.raises(RegexTimeout, match=r"more than 1 s in all"):
        list(logsearch.search([slow], matcher))
    assert time.monotonic() - t0 < 5
    one = b"fine line\n" * 1000 + b"a" * 40 + b"!\n" + b"after\n"
    matcher = Matcher(prefix + r"(a|aa)+$", is_regex=True, time_limit=0.3)
    with pytest.raises(RegexTimeout, match=r"longer than 0\.3 s on line 1001"):
        list(logsearch.search([one], matcher))


def test_a_regex_slow_on_many_lines_is_stopped_by_the_budget() -> None:
    """Found by an outside audit: lines each just under the per-line limit had a request
    run for minutes (on after its client left). Slow matching has a budget in all."""
    data = b"fine line\n" * 100 + (b"a" * 26 + b"b\n") * 400 + b"after\n"  # ~30 ms a line
    matcher = Matcher(r"(a|aa)+$", is_regex=True, time_limit=0.5, slow_budget=1.0)
    t0 = time.monotonic()
    with pytest.raises(RegexTimeout, match=r"more than 1 s in all") as info:
        list(logsearch.search([data], matcher))
    assert time.monotonic() - t0 < 5
    assert "\n" not in str(info.value)
    # a pattern that is fast on the same lines uses nothing of the budget
    fast = Matcher(r"a+b$", is_regex=True, time_limit=0.5, slow_budget=1.0)
    assert len(list(logsearch.search([data], fast))) == 400


def test_line_window_keeps_at_most_max_line_bytes_of_each_line() -> None:
    """Found by an outside audit: a window holding one 50 MB line held all of it."""
    rng = random.Random(11)
    for _ in range(40):
        lines = [
            ("é" * rng.randint(0, 30) + "x" * rng.randint(0, 30)).encode() + b"\n"
            for _ in range(rng.randint(1, 30))
        ]
        data = b"".join(lines)
        first, count, limit = rng.randint(1, 32), rng.randint(1, 10), rng.randint(1, 40)
        got = logsearch.line_window(_chunks(data, rng), first, count, max_line=limit)
        want = b""
        for line in lines[first - 1 : first - 1 + count]:
            text = line[:-1]
            cut = text[:limit].decode("utf-8", "ignore").encode()  # at a character boundary
            want += cut + b"\n"
        assert got == want, (data, first, count, limit)
    huge = b"short\n" + b"y" * (3 * logsearch.MAX_LINE) + b"\nlast\n"
    window = logsearch.line_window([huge], 2, 2)
    assert window == b"y" * logsearch.MAX_LINE + b"\nlast\n"


def test_line_window_returns_exact_bytes_whatever_the_boundaries() -> None:
    rng = random.Random(7)
    for _ in range(40):
        data = _random_log(rng, rng.randint(0, 80))
        lines = data.splitlines(keepends=True)
        first, count = rng.randint(1, 90), rng.randint(1, 20)
        got = logsearch.line_window(_chunks(data, rng), first, count)
        assert got == b"".join(lines[first - 1 : first - 1 + count]), (data, first, count)


# --- memory on a large local log, in a subprocess -----------------------------------------

_RSS_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from fastflow.runs import files, logsearch

    path = Path(sys.argv[1])
    matcher = logsearch.Matcher(sys.argv[2], is_regex=sys.argv[3] == "1")
    list(logsearch.search(files.iter_file(Path(sys.argv[4])), matcher))  # warm-up: 8 MiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hits = [h.to_dict() for h in logsearch.search(files.iter_file(path), matcher, context=3)]
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"hits": hits, "growth_kib": after - before}))
    """
)


def _write_log(path: Path, mib: int) -> None:
    line = b"[2026-01-01 00:00:00.000] an ordinary line of a long pipeline log, nothing else\n"
    block = line * (1024 * 1024 // len(line))
    with path.open("wb") as f:
        for i in range(mib):
            f.write(block)
            if i == mib - 2:
                f.write(b"[2026-01-01 00:00:01.000] the NEEDLE is here\n")


@pytest.mark.slow
def test_memory_stays_flat_on_a_large_local_log(tmp_path: Path) -> None:
    """A 1 GiB log searched in a subprocess: peak RSS grows by a few MiB over an 8 MiB
    warm-up search, with plain text and with a regular expression."""
    big, small = tmp_path / "big.log", tmp_path / "small.log"
    _write_log(big, 1024)
    _write_log(small, 8)
    for pattern, is_regex in (("needle", "0"), (r"need\w+ is", "1")):
        res = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(big), pattern, is_regex, str(small)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        out = json.loads(res.stdout)
        assert [h["text"] for h in out["hits"]] == ["[2026-01-01 00:00:01.000] the NEEDLE is here"]
        assert len(out["hits"][0]["context_before"]) == 3
        assert out["growth_kib"] < 24 * 1024, out["growth_kib"]


def test_the_unrolled_size_of_a_pattern_counts_nested_repeats_and_nothing_else() -> None:
    from fastflow.runs.pattern_size import MAX_UNROLLED, unrolled_size

    uuid_like = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    assert unrolled_size(uuid_like) == 8 + 1 + 4 + 1 + 4 + 1 + 4 + 1 + 12
    assert unrolled_size("((a){100}){100}") == 10_000
    assert unrolled_size("(?:ab|c){5}") == 5 * 4  # ``?:`` counted, alternatives added
    assert unrolled_size(r"x{,50}y{51,}z{2,3}") == 50 + 51 + 3
    # not repeats: an escaped brace, a brace in a class, ``\p{..}``, an empty ``{}``
    assert unrolled_size(r"a\{99999}") == 8
    assert unrolled_size(r"[]{]{5}") == 5
    assert unrolled_size(r"\p{L}{3}") == 3
    assert unrolled_size("a{}") == 3
    # a usual pattern stays far below the limit; the search compiles it
    assert unrolled_size(uuid_like * 15) < MAX_UNROLLED
    Matcher(uuid_like * 15, is_regex=True)


def test_context_lines_are_clipped_so_a_long_line_is_not_multiplied() -> None:
    """An outside audit: around a 20 MiB line, every hit carried up to 100 context lines
    of 1 MiB each (420 MB of answer for a 21 MB log; the server's memory grew by 490 MB
    for one request). Context lines are at most MAX_CONTEXT_LINE characters now; the
    matching line itself is still given whole (up to MAX_LINE)."""
    long_line = b"zzz " + b"y" * (5 * logsearch.MAX_LINE)
    data = b"before\n" + long_line + b"\nzzz after\n" + b"plain\n" * 3
    hits = list(logsearch.search([data], Matcher("zzz"), context=100))
    assert [h.line for h in hits] == [2, 3]  # the long line's first piece, then line 3
    size = sum(len(h.text) + sum(map(len, h.context_before + h.context_after)) for h in hits)
    assert size < 2 * logsearch.MAX_LINE + 2 * 200 * (logsearch.MAX_CONTEXT_LINE + 40)
    assert all(len(c) < logsearch.MAX_CONTEXT_LINE + 40 for c in hits[0].context_after)
    last = hits[-1]
    assert last.text == "zzz after" and last.context_after == ["plain"] * 3
    # the long line in pieces of MAX_LINE, each clipped as context; its last 4 bytes
    assert last.context_before[0] == "before" and last.context_before[-1] == "yyyy"
    assert len(last.context_before) == 7 and len(hits[0].text) == logsearch.MAX_LINE
    assert last.context_before[1].startswith("zzz yyy")
    for clipped in last.context_before[1:-1]:
        assert len(clipped) < logsearch.MAX_CONTEXT_LINE + 40 and "y" * 100 in clipped
        assert clipped.endswith(" bytes]") or clipped.endswith(" characters]")
    # the same, however the stream is cut
    cut = [data[i : i + 65_536] for i in range(0, len(data), 65_536)]
    assert list(logsearch.search(cut, Matcher("zzz"), context=100)) == hits


@pytest.mark.parametrize("extra", [b"", b"zz", b"\n"])
def test_a_line_of_exactly_max_line_bytes(extra: bytes) -> None:
    """A line of exactly MAX_LINE bytes held at once used to end the search with an
    IndexError (the cut looked one byte past the end)."""
    data = b"y" * (logsearch.MAX_LINE - 3) + "é".encode() + b"a" + extra
    pieces = list(logsearch.blocks([data]))
    assert b"".join(pieces) == data
    assert all(len(p) <= logsearch.MAX_LINE for p in pieces)
    for piece in pieces:
        piece.decode("utf-8")  # never cut inside a character
    hits = list(logsearch.search([data[:100], data[100:]], Matcher("yyy")))
    assert [h.line for h in hits] == [1]


def test_pieces_of_a_long_line_keep_its_number_in_context_and_in_the_cli() -> None:
    """An outside audit: ``fastflow logs --grep after -C 3 -n`` on a log with a 50 MiB line
    numbered a 1 MiB piece of line 2 as line 1 and dropped another (the printer counted
    context entries back from the match). Each context entry carries its entry and line
    number now: the pieces of line 2 are ``2-`` lines, all of them printed."""
    from fastflow.cli.runs import GrepPrinter

    mib = logsearch.MAX_LINE
    data = b"first\n" + b"A" * (3 * mib + mib // 2) + b"NEEDLE\nafter\n"
    matcher = Matcher("after", is_regex=False, case_sensitive=False)
    (hit,) = list(logsearch.search(_chunks(data, random.Random(7)), matcher, context=3))
    assert (hit.line, hit.entry) == (3, 5)
    assert hit.before_at == [(2, 2), (3, 2), (4, 2)]  # the last three pieces of line 2
    printer = GrepPrinter(numbers=True, context=3)
    out = printer.lines(hit) + printer.finish()
    numbers = [line.split("-", 1)[0].split(":", 1)[0] for line in out.splitlines()]
    assert numbers == ["2", "2", "2", "3"], out[:300]
    assert out.splitlines()[-1] == "3:after"
    # a match in a piece: its context after holds the next pieces, with the same number
    needle = Matcher("NEEDLE", is_regex=False, case_sensitive=False)
    (piece,) = list(logsearch.search(_chunks(data, random.Random(8)), needle, context=2))
    assert (piece.line, piece.entry) == (2, 4)
    assert piece.before_at == [(2, 2), (3, 2)] and piece.after_at == [(5, 3)]
