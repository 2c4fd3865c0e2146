"""``archive.s3.make_client``: what it says when S3 is not configured."""

from __future__ import annotations

from typing import Any

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


def test_server_errors_read_plainly() -> None:
    """Outside fault matrix: a 500 without a body read ``S3 server error 500 (500)``, and
    an object cut short read as botocore's own sentence."""
    from botocore.exceptions import ClientError, IncompleteReadError

    from fastflow.archive.s3 import describe_error

    settings = load_settings(_env_file=None, s3_endpoint_url="http://127.0.0.1:9000")
    response: Any = {
        "Error": {"Code": "500", "Message": ""},
        "ResponseMetadata": {"HTTPStatusCode": 500},
    }
    bare = ClientError(response, "HeadObject")
    assert str(describe_error(bare, settings)) == "S3 server error 500 from http://127.0.0.1:9000"
    response = {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}
    named = ClientError(response, "PutObject")
    assert "S3 server error 503 (SlowDown) from" in str(describe_error(named, settings))
    cut = describe_error(IncompleteReadError(actual_bytes=25, expected_bytes=50), settings)
    assert str(cut) == "http://127.0.0.1:9000 ended the object early: 25 of 50 bytes arrived"
    assert cut.connection_level
