"""Secret masking in the log stream: every cut of the stream gives the same result as
masking the whole text at once, and nothing that could not start a secret is held."""

from __future__ import annotations

import io
import random

import pytest

from fastflow.runs.capture import LogCapture
from fastflow.runs.masking import Masker

SECRETS = ["API-TOKEN-123456", "s3cr3t", "abcd", "abcdefgh", "ünïcødé-pw"]
PIECES = [*SECRETS, "x", "\n", "ab", "abc", "API-", "s3c", "é", "zz\n", "ünï"]


def _content(log: str) -> str:
    """The log's text without the 26-character timestamps."""
    return "".join(line[26:] + "\n" for line in log.split("\n")[:-1])


@pytest.mark.parametrize("seed", range(40))
def test_any_cut_of_the_stream_masks_like_the_whole_text(seed: int) -> None:
    rnd = random.Random(seed)
    text = "".join(rnd.choice(PIECES) for _ in range(200))
    data = text.encode("utf-8")
    out = io.StringIO()
    capture = LogCapture(out, clock=lambda: 0.0, masker=Masker(SECRETS))
    i = 0
    while i < len(data):
        n = rnd.randint(1, 9)  # cuts inside secrets and inside multi-byte characters
        capture.feed(data[i : i + n])
        i += n
    capture.close()
    expected = Masker(SECRETS).mask(text)
    assert _content(out.getvalue()) == (expected if expected.endswith("\n") else expected + "\n")
    for secret in ("API-TOKEN-123456", "s3cr3t", "ünïcødé-pw"):
        assert secret not in out.getvalue()


def test_a_secret_in_a_huge_line_and_split_over_many_writes_is_masked() -> None:
    secret = "tok_" + "Z" * 60
    out = io.StringIO()
    capture = LogCapture(out, masker=Masker([secret]))
    capture.feed(b"a" * 1_000_000 + secret[:10].encode())
    for ch in secret[10:]:
        capture.feed(ch.encode())
    capture.feed(b"tail\n")
    capture.close()
    text = out.getvalue()
    assert secret not in text and secret[:30] not in text
    assert text.count("***") == 1 and text.rstrip("\n").endswith("***tail")


def test_only_a_possible_secret_start_is_held_back() -> None:
    masker = Masker(["password-value"])
    assert masker.push("plain line\n") == "plain line\n"  # nothing held: shows live
    assert masker.push("key=pass") == "key="  # "pass" may start the secret
    assert masker.push("port\n") == "passport\n"
    assert masker.push("x password-v") == "x "
    assert masker.push("alue!") == "***!"
    assert masker.flush() == ""


def test_short_values_are_not_masked_and_notes_are_masked() -> None:
    out = io.StringIO()
    capture = LogCapture(out, masker=Masker(["abc", "hunter22"]))
    capture.feed(b"abc is too short to mask\n")
    capture.write_line("[env] url=https://u:hunter22@example.invalid/simple")
    capture.write_note("hunter22")
    capture.close()
    text = out.getvalue()
    assert "abc is too short" in text
    assert "hunter22" not in text and text.count("***") == 2


def test_no_secrets_means_no_change() -> None:
    masker = Masker([])
    assert not masker.active
    assert masker.push("anything") == "anything" and masker.flush() == ""


@pytest.mark.parametrize("seed", range(20))
def test_many_values_and_long_reads_mask_like_the_whole_text(seed: int) -> None:
    """Reads of a few kilobytes hold only some of the values (each read is masked with
    the values it contains): still the same result as masking the whole text."""
    rnd = random.Random(1000 + seed)
    alphabet = "abcxyz-é\n"
    values = [
        "".join(rnd.choice(alphabet[:-1]) for _ in range(rnd.randint(4, 12))) for _ in range(30)
    ]
    pieces = [*values, *(v[: rnd.randint(1, len(v) - 1)] for v in values), *alphabet, "line\n"]
    text = "".join(rnd.choice(pieces) for _ in range(3000))
    masker = Masker(values)
    out: list[str] = []
    i = 0
    while i < len(text):
        n = rnd.choice((1, 7, 300, 4096))
        out.append(masker.push(text[i : i + n]))
        i += n
    out.append(masker.flush())
    assert "".join(out) == Masker(values).mask(text)
