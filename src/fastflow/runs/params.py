"""Run parameters: environment variables given for one run (API, CLI ``--env``).

Guarantee: a run is queued only with parameters its process can be started with — each
name a portable variable name (letters, digits, ``_``, not starting with a digit; at most
``MAX_NAME`` characters) outside fastflow's own ``FASTFLOW_`` variables, each value
without a NUL character and at most ``MAX_VALUE`` characters. Errors name the variable,
never its value (a parameter may be a password).
"""

from __future__ import annotations

import re

from fastflow.errors import InvalidInput

MAX_NAME = 128
MAX_VALUE = 65536
RESERVED_PREFIX = "FASTFLOW_"
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check(env: dict[str, str]) -> dict[str, str]:
    """``env`` unchanged when every parameter is acceptable; ``InvalidInput`` otherwise."""
    for name, value in env.items():
        shown = repr(name[:MAX_NAME]) + ("…" if len(name) > MAX_NAME else "")
        if len(name) > MAX_NAME or not _NAME_RE.fullmatch(name):
            raise InvalidInput(
                f"run parameter {shown} is not a variable name: letters, digits and _, not "
                f"starting with a digit, at most {MAX_NAME} characters"
            )
        if name.upper().startswith(RESERVED_PREFIX):
            raise InvalidInput(
                f"run parameter {shown}: {RESERVED_PREFIX}* variables are set by fastflow"
            )
        if "\x00" in value:
            raise InvalidInput(f"run parameter {shown}: its value contains a NUL character")
        if len(value) > MAX_VALUE:
            raise InvalidInput(
                f"run parameter {shown}: its value is longer than {MAX_VALUE:,} characters"
            )
    return env
