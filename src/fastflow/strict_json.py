"""JSON as RFC 8259 writes it: no ``NaN``/``Infinity``, no absurd nesting, and (for
configuration) no key given twice.

Python's ``json`` accepts ``NaN`` and ``Infinity``, keeps the last of duplicate keys
silently, and raises ``RecursionError`` for deeply nested input; each of these turned a
bad file or request into a surprise (an outside audit). ``loads`` raises ``ValueError``
with a message fit for the user instead.
"""

from __future__ import annotations

import json
from typing import Any


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


class DuplicateKey(ValueError):
    """An object gives a key twice (``unique_keys``)."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(f"the key {key!r} is given twice")
        out[key] = value
    return out


def loads(text: str | bytes, *, unique_keys: bool = False) -> Any:
    """Parse ``text``; ``ValueError`` for anything that is not strict JSON (with
    ``unique_keys``, also an object with a key given twice)."""
    try:
        return json.loads(
            text,
            parse_constant=_no_constant,
            object_pairs_hook=_unique if unique_keys else None,
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None
