"""``fastflow env build|list|gc``: the pipelines' virtual environments."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
