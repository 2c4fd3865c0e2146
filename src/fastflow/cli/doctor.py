"""``fastflow doctor``: is every outside part fastflow depends on reachable (issue 15)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
