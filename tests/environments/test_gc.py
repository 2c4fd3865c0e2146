"""Collecting environments: unused ones after a while, half-built leftovers at once,
never one in use; the cleanup pass collects after ``ENV_RETENTION_DAYS``."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fastflow.config import Settings, load_settings
from fastflow.context import bootstrap
from fastflow.environments import PreparedEnv, collector, in_use, locks, prepare, registry
from tests.environments.conftest import Lines


def _env(settings: Settings, name: str, requirements: str | None) -> PreparedEnv:
    folder = settings.pipelines_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.py").write_text("print('ok')\n")
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
    return prepare(settings, name, folder, None, Lines())


def _age(env: PreparedEnv, days: float) -> None:
    """Pretend ``env`` was last used ``days`` ago."""
    record = registry.read(env.path)
    assert record is not None
    when = datetime.now(UTC) - timedelta(days=days)
    record.last_used_at = when.isoformat(timespec="seconds")
    registry.write(env.path, record)


def test_gc_skips_an_environment_in_use(settings: Settings) -> None:
    env = _env(settings, "p", "ffdemo==1.0\n")
    with in_use(env):
        held = collector.collect(settings, timedelta(0))
        assert held.removed == [] and held.skipped == [(env.key, "in use")]
        assert env.python.exists()
    done = collector.collect(settings, timedelta(0))
    assert [r.key for r in done.removed] == [env.key] and not env.path.exists()
    assert done.removed[0].pipelines == ["p"] and done.freed_bytes > 0


def test_gc_skips_an_environment_being_built(settings: Settings) -> None:
    env = _env(settings, "p", None)
    with locks.exclusive(registry.build_lock(env.path.parent, env.key)):
        assert collector.collect(settings, timedelta(0)).skipped == [
            (env.key, "being built or prepared")
        ]
    assert env.path.exists()


def test_gc_removes_leftovers_at_once_and_old_environments_after_their_age(
    settings: Settings,
) -> None:
    old = _env(settings, "old", "ffdemo==1.0\n")
    new = _env(settings, "new", "ffdemo==2.0\n")
    leftover = registry.ensure_root(settings) / ("0" * 16)
    (leftover / "lib").mkdir(parents=True)  # a crash mid-build: no record
    (leftover / "lib" / "x.py").write_text("x = 1\n")
    stale_lock = registry.build_lock(leftover.parent, "1" * 16)
    stale_lock.touch()
    _age(old, 10)
    result = collector.collect(settings, timedelta(days=7))
    removed = {r.key: r.reason for r in result.removed}
    assert removed[leftover.name] == "half-built leftover"
    assert removed[old.key].startswith("unused since ")
    assert set(removed) == {leftover.name, old.key} and result.kept == 1
    assert new.path.exists() and not old.path.exists() and not leftover.exists()
    assert not stale_lock.exists()
    assert registry.listing(registry.root(settings)) == ([registry.read(new.path)], [])


def test_prepare_makes_an_old_environment_recent_again(settings: Settings) -> None:
    env = _env(settings, "p", None)
    _age(env, 100)
    again = _env(settings, "p", None)
    assert again.reused
    assert collector.collect(settings, timedelta(days=1)).removed == []


def test_cleanup_pass_collects_environments_unused_for_env_retention_days(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastflow.lifecycle.cleanup import run_pass

    monkeypatch.setenv("ENV_RETENTION_DAYS", "5")
    ctx = bootstrap(load_settings())
    try:
        old = _env(ctx.settings, "old", "ffdemo==1.0\n")
        recent = _env(ctx.settings, "recent", "ffdemo==2.0\n")
        _age(old, 6)
        _age(recent, 4)
        run_pass(ctx, "manual", dry_run=True)
        assert old.path.exists()  # a dry run changes nothing
        summary = run_pass(ctx, "manual")
        assert summary.error is None
        assert not old.path.exists() and recent.path.exists()
    finally:
        ctx.db.dispose()


def test_an_error_in_env_gc_never_fails_the_pass(
    ff_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from fastflow.lifecycle.cleanup import run_pass

    ctx = bootstrap(load_settings())
    try:
        Path(ff_env["DATA_DIR"], "envs").write_text("not a directory")
        with caplog.at_level(logging.WARNING, logger="fastflow.lifecycle.cleanup"):
            summary = run_pass(ctx, "manual")
        assert summary.error is None and summary.finished_at
        assert "collecting unused environments failed" in caplog.text
    finally:
        ctx.db.dispose()
