"""One S3 store per effective settings, shared by every caller of ``open_store``."""

from __future__ import annotations

import threading

from fastflow.archive.s3 import open_store
from fastflow.config import Settings, load_settings
from tests.harness.fixtures import S3Env


def _settings(s3: S3Env, **changes: object) -> Settings:
    values: dict[str, object] = {k.lower(): v for k, v in s3.env().items()}
    values.update(changes)
    return load_settings(**values)


def test_the_same_settings_share_one_store_and_a_change_builds_another(s3: S3Env) -> None:
    first = open_store(_settings(s3))
    assert open_store(_settings(s3)) is first
    other_key = open_store(_settings(s3, s3_secret_access_key="another-secret"))
    other_prefix = open_store(_settings(s3, s3_prefix="elsewhere"))
    assert other_key is not first and other_prefix is not first
    assert other_key.client is not first.client
    first.ping()  # the shared store works


def test_concurrent_first_use_yields_one_store(s3: S3Env) -> None:
    settings = _settings(s3, s3_prefix="concurrent")
    seen: list[object] = []
    barrier = threading.Barrier(8)

    def use() -> None:
        barrier.wait()
        seen.append(open_store(settings))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(x) for x in seen}) == 1
