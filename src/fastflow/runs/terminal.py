"""Show untrusted log bytes on a terminal without letting them drive it.

A pipeline's output may contain escape sequences that set the window title, write the
clipboard (OSC 52), move the cursor or hide text. ``neutralise`` keeps printable text,
newlines and tabs, and shows every other control character as a visible ``^X`` /
``\\xNN`` — for terminals only: redirected output keeps the exact bytes.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator

# C0 controls except tab and newline, DEL, and C1 controls — matched on decoded text
# (C1's bytes 0x80-0x9f are also UTF-8 continuation bytes)
_C0 = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_C1 = re.compile("[\u0080-\u009f]")


def _caret(m: re.Match[str]) -> str:
    code = ord(m.group(0))
    return "^?" if code == 0x7F else "^" + chr(code + 0x40)


def _hex(m: re.Match[str]) -> str:
    return f"\\x{ord(m.group(0)):02x}"


def _clean(text: str) -> bytes:
    return _C1.sub(_hex, _C0.sub(_caret, text)).encode("utf-8")


def neutralise_stream(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks with every terminal control (ESC included) made visible and inert;
    characters split across chunks stay whole; memory is bounded by one chunk."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in chunks:
        text = decoder.decode(chunk)
        if text:
            yield _clean(text)
    tail = decoder.decode(b"", final=True)
    if tail:
        yield _clean(tail)


def neutralise(data: bytes) -> bytes:
    """``neutralise_stream`` for one piece."""
    return b"".join(neutralise_stream([data]))
