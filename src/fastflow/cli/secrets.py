"""``fastflow secret set|list|rm``: the secrets pipelines may list in ``secrets``."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
