"""Per-pipeline virtual environments built with uv, cached in ``DATA_DIR/envs/<key>``:
keyed by interpreter version and dependency files (``keys``, PURE; ``sources``), built
once under a file lock (``provision``, ``builder``, ``locks``), recorded (``registry``),
collected when unused (``collector``); interpreters are found, never downloaded
(``interpreters``). May import ``config``, ``errors``, ``security`` and ``db`` only: the
run executor in ``runs`` imports it, so it takes plain values (name, folder, version).
"""

from fastflow.environments.provision import PreparedEnv, in_use, prepare

__all__ = ["PreparedEnv", "in_use", "prepare"]
