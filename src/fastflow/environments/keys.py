"""The key of an environment (PURE): what it is built from, hashed.

Guarantees: equal inputs give equal keys in every process and on every machine; any
change of the interpreter version, of the kind of install or of one byte of a
dependency file (or of its name) gives another key. ``FORMAT`` changes when the way
environments are built changes, so that old ones are rebuilt rather than reused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

FORMAT = 1
KEY_LENGTH = 16  # hex digits of the SHA-256 in the directory name (64 bits)
KEY_RE = re.compile(rf"^[0-9a-f]{{{KEY_LENGTH}}}$")


def digest(
    python_version: str,
    kind: str,
    files: Sequence[tuple[str, bytes]],
    local: Sequence[tuple[str, str]] = (),
) -> str:
    """The full SHA-256 (hex) of the environment's inputs; ``local``: the state of the
    local-path dependencies (``sources.local_state``), part of the key when there are
    any (so keys without them stay what they were)."""
    identity: dict[str, object] = {
        "format": FORMAT,
        "python": python_version,
        "kind": kind,
        "files": [[name, hashlib.sha256(data).hexdigest()] for name, data in files],
    }
    if local:
        identity["local"] = [list(pair) for pair in local]
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def key_of(full_digest: str) -> str:
    """The short key: the directory name under ``DATA_DIR/envs``."""
    return full_digest[:KEY_LENGTH]
