"""Run parameters: environment variables given for one run (API, CLI ``--env``).

Guarantee: a run is queued only with parameters its process can be started with — each
name a portable variable name (letters, digits, ``_``, not starting with a digit; at most
``MAX_NAME`` characters) outside fastflow's own ``FASTFLOW_`` variables, each value
without a NUL character or a lone surrogate and at most ``MAX_VALUE`` characters.
Errors name the variable, never its value (a parameter may be a password).
"""

from __future__ import annotations

import re

from fastflow.errors import InvalidInput

MAX_NAME = 128
MAX_VALUE = 65536
RESERVED_PREFIX = "FASTFLOW_"
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


NAME_RULE = f"letters, digits and _, not starting with a digit, at most {MAX_NAME} characters"


def is_name(name: str) -> bool:
    """``name`` has the form of a variable name (``NAME_RULE``)."""
    return len(name) <= MAX_NAME and _NAME_RE.fullmatch(name) is not None


def problem(name: str, value: str) -> str | None:
    """What makes ``name=value`` unusable as a process's environment variable (the
    variable named, never its value), or None."""
    shown = repr(name[:MAX_NAME]) + ("…" if len(name) > MAX_NAME else "")
    if not is_name(name):
        return f"{shown} is not a variable name: {NAME_RULE}"
    if name.upper().startswith(RESERVED_PREFIX):
        return f"{shown}: {RESERVED_PREFIX}* variables are set by fastflow"
    if "\x00" in value:
        return f"{shown}: its value contains a NUL character"
    if len(value) > MAX_VALUE:
        return f"{shown}: its value is longer than {MAX_VALUE:,} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{shown}: its value is not valid Unicode text (a lone surrogate)"
    return None


def check(env: dict[str, str]) -> dict[str, str]:
    """``env`` unchanged when every parameter is acceptable; ``InvalidInput`` otherwise."""
    for name, value in env.items():
        found = problem(name, value)
        if found is not None:
            raise InvalidInput(f"run parameter {found}")
    return env
