"""``fastflow search``: find text across the logs of many runs."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
