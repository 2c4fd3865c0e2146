"""fastflow: a self-hosted pipeline orchestrator whose run logs are never lost."""

__version__ = "0.1.0"
