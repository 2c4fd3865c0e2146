"""A pipeline's stdout and stderr in one pipe: the bootstrap's frames are taken out
whatever the read boundaries, and a secret split across writes of one stream with the
other stream written between is masked (the outside audit's case)."""

from __future__ import annotations

import io
import random
from collections import Counter
from time import monotonic

import pytest

from fastflow.runs.bootstrap import FRAME_LEAD, STDERR_OFF, STDERR_ON
from fastflow.runs.capture import HOLD_S, LogCapture
from fastflow.runs.interleaved_masking import InterleavedMasker
from fastflow.runs.masking import Masker
from fastflow.runs.output_streams import STDERR, STDOUT, StreamSplit

SECRETS = ["API-TOKEN-123456", "s3cr3t", "abcdefgh", "ünïcødé-pw"]
MARK = "0123abcd"


def _framed(pieces: list[tuple[int, bytes]], mark: str = MARK) -> bytes:
    """What the bootstrap writes into the pipe for these writes."""
    lead = FRAME_LEAD + mark.encode()
    return b"".join(
        lead + STDERR_ON + data + lead + STDERR_OFF if stream == STDERR else data
        for stream, data in pieces
    )


def _content(log: str) -> str:
    """The log's text without the 26-character timestamps."""
    return "".join(line[26:] + "\n" for line in log.split("\n")[:-1])


def _cut(data: bytes, rnd: random.Random, most: int = 9) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rnd.randint(1, most)
        out.append(data[i : i + n])
        i += n
    return out


@pytest.mark.parametrize("seed", range(30))
def test_frames_come_out_whatever_the_reads(seed: int) -> None:
    rnd = random.Random(seed)
    words = [b"x", b"\n", b"\x00", b"\x00\x1b", FRAME_LEAD, FRAME_LEAD + b"01", b"\xc3\xa9"]
    pieces = [
        (rnd.choice((STDOUT, STDERR)), rnd.choice(words) * rnd.randint(1, 3)) for _ in range(60)
    ]
    split = StreamSplit(MARK)
    got: list[tuple[int, bytes]] = []
    for chunk in _cut(_framed(pieces), rnd, most=30):
        got.extend(split.feed(chunk))
    got.extend(split.close())
    for stream in (STDOUT, STDERR):
        want = b"".join(d for s, d in pieces if s == stream)
        assert b"".join(d for s, d in got if s == stream) == want


def test_bytes_that_only_look_like_a_frame_are_output() -> None:
    split = StreamSplit(MARK)
    lead = FRAME_LEAD + MARK.encode()
    assert split.feed(b"a" + lead + b"Zb") == [(STDOUT, b"a" + lead + b"Zb")]
    assert split.feed(b"end" + lead[:5]) == [(STDOUT, b"end")]  # may start a frame
    assert split.close() == [(STDOUT, lead[:5])]  # it did not: nothing lost


def test_the_audits_case_a_secret_split_by_a_stderr_write_is_masked() -> None:
    secret = "API-TOKEN-123456"
    m = InterleavedMasker(Masker(SECRETS))
    out = m.push(STDOUT, "token=" + secret[:5])
    out += m.push(STDERR, "a warning\n")
    out += m.push(STDOUT, secret[5:] + "\n")
    out += m.flush()
    assert out == "token=***a warning\n\n"


def test_a_secret_across_the_two_streams_is_still_masked_as_written() -> None:
    m = InterleavedMasker(Masker(["abcdefgh"]))
    out = m.push(STDOUT, "x abcd") + m.push(STDERR, "efgh y\n") + m.flush()
    assert out == "x *** y\n"


def test_output_is_held_only_behind_a_possible_secret_start() -> None:
    m = InterleavedMasker(Masker(["password-value"]))
    assert m.push(STDOUT, "plain\n") == "plain\n"
    assert m.push(STDERR, "err line\n") == "err line\n"
    assert m.push(STDOUT, "key=pass") == "key="  # "pass" may start the secret
    assert m.push(STDERR, "warn\n") == ""  # kept behind it: the order stays
    assert m.waiting
    assert m.push(STDOUT, "port\n") == "passwarn\nport\n"  # not the secret after all
    assert not m.waiting


def test_release_gives_up_a_stream_start_and_keeps_the_order() -> None:
    m = InterleavedMasker(Masker(["password-value"]))
    assert m.push(STDOUT, "pass") + m.push(STDERR, "warn\n") == ""
    assert m.release() == "passwarn\n"
    assert m.push(STDOUT, "word-value\n") == "word-value\n"  # the documented limit


def test_much_output_behind_a_stream_start_is_let_go() -> None:
    m = InterleavedMasker(Masker(["password-value"]), hold_across=100)
    assert m.push(STDOUT, "pass") == ""
    assert m.push(STDERR, "e\n" * 40) == ""
    assert m.push(STDERR, "e\n" * 20) == "pass" + "e\n" * 60  # memory stays bounded


@pytest.mark.parametrize("seed", range(40))
def test_whole_secrets_in_either_stream_never_reach_the_log(seed: int) -> None:
    """Each stream prints lines holding a secret, cut into writes anywhere; the other
    stream's writes come between them at random; the pipe is read in random pieces. The
    log holds every other character once and each secret as one ``***``."""
    rnd = random.Random(seed)
    writes: dict[int, list[tuple[int, bytes]]] = {STDOUT: [], STDERR: []}
    kept = Counter[str]()
    for n in range(30):
        stream = rnd.choice((STDOUT, STDERR))
        secret = rnd.choice(SECRETS)
        line = f"{'out' if stream == STDOUT else 'err'}{n} {secret} end\n"
        kept.update(line.replace(secret, ""))
        writes[stream].extend((stream, piece) for piece in _cut(line.encode(), rnd, most=12))
    order: list[tuple[int, bytes]] = []
    while writes[STDOUT] or writes[STDERR]:
        stream = rnd.choice([s for s in (STDOUT, STDERR) if writes[s]])
        order.append(writes[stream].pop(0))
    out = io.StringIO()
    capture = LogCapture(out, clock=lambda: 0.0, masker=Masker(SECRETS))
    mark = capture.split_streams()
    for chunk in _cut(_framed(order, mark), rnd, most=40):
        capture.feed(chunk)
    capture.close()
    text = _content(out.getvalue())
    for secret in SECRETS:
        assert secret not in text
    assert text.count("***") == 30
    assert Counter(text.replace("***", "")) == kept


def test_tick_writes_what_waited_too_long() -> None:
    out = io.StringIO()
    capture = LogCapture(out, clock=lambda: 0.0, masker=Masker(["password-value"]))
    mark = capture.split_streams()
    capture.feed(b"pass" + _framed([(STDERR, b"warn\n")], mark))
    assert out.getvalue() == ""
    capture.tick(now=monotonic() + HOLD_S / 2)
    assert out.getvalue() == ""
    capture.tick(now=monotonic() + HOLD_S)
    assert _content(out.getvalue()) == "passwarn\n"


def test_consecutive_stderr_writes_come_out_as_one_piece() -> None:
    """A print() to stderr is four writes, each framed: the seams between frames are
    taken out at once, so a read of stderr lines is one piece, not thousands (outside
    audit: 1M stderr lines took 29 s instead of 2.6 s)."""
    writes = [(STDERR, w) for i in range(1000) for w in (b"row", b" ", str(i).encode(), b"\n")]
    split = StreamSplit(MARK)
    pieces = split.feed(b"head\n" + _framed(writes) + b"tail\n") + split.close()
    want = b"".join(w for _, w in writes)
    assert pieces == [(STDOUT, b"head\n"), (STDERR, want), (STDOUT, b"tail\n")]


def test_a_read_of_both_streams_without_secrets_passes_as_written() -> None:
    m = InterleavedMasker(Masker(SECRETS))
    pieces = [(i % 2, f"line {i}\n") for i in range(500)]
    assert m.push_all(pieces) == "".join(t for _, t in pieces)
    assert not m.waiting


def test_overlapping_secrets_in_one_read_of_both_streams_never_leak() -> None:
    """Outside audit: settling a whole read at once let an occurrence in one stream's
    own text win over an overlapping one in the merged text and leave that one whole in
    the log; a read is now masked piece by piece unless it holds nothing to mask."""
    values = ["AAAAAAA", "ABBBBBA"]
    writes = [(STDERR, b"AAAA"), (STDERR, b"BBBBB"), (STDOUT, b"A"), (STDOUT, b"BA\n")]
    writes += [(STDOUT, b"AAAA"), (STDERR, b"AAAA"), (STDOUT, b"x\n"), (STDERR, b"AA")]
    logs = []
    for one_read in (True, False):
        out = io.StringIO()
        capture = LogCapture(out, clock=lambda: 0.0, masker=Masker(values))
        mark = capture.split_streams()
        for chunk in [_framed(writes, mark)] if one_read else [_framed([w], mark) for w in writes]:
            capture.feed(chunk)
        capture.close()
        logs.append(_content(out.getvalue()))
        assert not any(v in logs[-1] for v in values), logs[-1]
    assert logs[0] == logs[1]  # the read boundaries do not change the result
