"""Escape sequences in a log are shown, not executed, when the output is a terminal;
redirected output keeps the exact bytes."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Callable

from fastflow.runs.terminal import neutralise, neutralise_stream
from tests.conftest import MakePipeline

Cli = Callable[..., subprocess.CompletedProcess[str]]
EVIL = "title\x1b]0;pwned\x07 clip\x1b]52;c;ZXZpbA==\x07 red\x1b[31m ok\tä\u0085end"


def test_neutralise_makes_controls_visible_and_keeps_text() -> None:
    out = neutralise(EVIL.encode()).decode()
    assert "\x1b" not in out and "\x07" not in out and "\u0085" not in out
    assert "^[]0;pwned^G" in out and "^[[31m" in out and "\\x85" in out
    assert "\tä" in out and out.endswith("end")


def test_split_characters_stay_whole() -> None:
    data = "größe €\n".encode()
    parts = [data[i : i + 1] for i in range(len(data))]
    assert b"".join(neutralise_stream(parts)).decode() == "größe €\n"


def test_logs_on_a_terminal_are_neutralised_and_raw_when_redirected(
    make_pipeline: MakePipeline, cli: Cli, ff_env: dict[str, str]
) -> None:
    make_pipeline("evil", f"print({EVIL!r})")
    run_id = cli("run", "evil").stdout.strip().splitlines()[-1]
    raw = cli("logs", run_id).stdout
    assert "\x1b]52;c;" in raw  # a file gets the exact bytes
    main, sub = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastflow", "logs", run_id],
        stdout=sub,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **ff_env},
    )
    os.close(sub)
    seen = b""
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the writer closed the terminal
            break
        if not data:
            break
        seen += data
    proc.wait(60)
    os.close(main)
    text = seen.decode("utf-8", errors="replace")
    assert "pwned" in text and "\x1b]" not in text and "^[]52;c;" in text
