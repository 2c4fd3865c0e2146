"""``archive.s3.make_client``: what it says when S3 is not configured."""

from __future__ import annotations

import pytest

from fastflow.archive.s3 import make_client
from fastflow.config import load_settings
from fastflow.errors import ArchiveNotConfigured


@pytest.mark.parametrize("enabled", [True, False])
def test_missing_s3_settings_say_whether_backup_is_enabled(enabled: bool) -> None:
    """Found by an outside contract check: reading an archived log back with backup
    disabled said "S3 backup is enabled but not configured"."""
    settings = load_settings(_env_file=None, s3_backup_enabled=enabled)
    with pytest.raises(ArchiveNotConfigured) as err:
        make_client(settings)
    message = str(err.value)
    assert "S3_ENDPOINT_URL" in message and "S3_BUCKET" in message
    if enabled:
        assert message.startswith("S3 backup is enabled but not configured: missing ")
    else:
        assert message.startswith("S3 is not configured (S3_BACKUP_ENABLED=false): missing ")
