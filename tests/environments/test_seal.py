"""``builder.seal``: an environment built as the run's user becomes fastflow's, readable
by every user, and nothing outside it is touched (links are never followed)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fastflow.environments.builder import seal

BUILDER = 54321  # the build's user (any uid works for root)
STRANGER = 54322


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("seal's tests need root (they give files to other users)")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _built(tmp_path: Path) -> tuple[Path, Path]:
    """A tree as a build by ``BUILDER`` could leave it, and a private file outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_text("s")
    secret.chmod(0o600)
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "lib" / "pkg").mkdir(parents=True)
    (env / "bin" / "tool").write_text("#!/bin/sh\n")
    (env / "bin" / "tool").chmod(0o4700)  # set-uid: must not survive as root's
    (env / "lib" / "pkg" / "mod.py").write_text("x = 1\n")
    (env / "lib" / "pkg" / "mod.py").chmod(0o600)
    (env / "lib" / "to-secret").symlink_to(secret)
    (env / "lib" / "to-outside").symlink_to(outside, target_is_directory=True)
    (env / "lib" / "stranger").write_text("not the build's")
    (env / "lib" / "stranger").chmod(0o600)
    for path in [env, *env.rglob("*")]:
        os.lchown(path, BUILDER, BUILDER)
        if not path.is_symlink() and path.is_dir():
            path.chmod(0o700)
    os.chown(env / "lib" / "stranger", STRANGER, STRANGER)
    return env, secret


def test_a_tree_built_by_another_user_becomes_fastflows(tmp_path: Path) -> None:
    env, _ = _built(tmp_path)
    seal(env, BUILDER)
    me = os.geteuid()
    for path in [env, *env.rglob("*")]:
        if path.name != "stranger":
            assert path.lstat().st_uid == me, path
    assert _mode(env) == _mode(env / "bin") == _mode(env / "lib" / "pkg") == 0o755
    assert _mode(env / "bin" / "tool") == 0o755  # executable for all, set-uid gone
    assert _mode(env / "lib" / "pkg" / "mod.py") == 0o644
    # another owner's file in the tree is left as it is
    stranger = (env / "lib" / "stranger").lstat()
    assert (stranger.st_uid, stat.S_IMODE(stranger.st_mode)) == (STRANGER, 0o600)


def test_links_out_of_the_tree_open_nothing_up(tmp_path: Path) -> None:
    """What the links point at is the build user's too: followed, it would become
    fastflow's and readable by all."""
    env, secret = _built(tmp_path)
    outside = tmp_path / "outside"
    outside.chmod(0o700)
    os.chown(outside, BUILDER, BUILDER)
    os.chown(secret, BUILDER, BUILDER)
    seal(env, BUILDER)
    for path in (outside, secret):
        assert path.stat().st_uid == BUILDER
    assert _mode(outside) == 0o700
    assert _mode(secret) == 0o600


def test_without_a_builder_only_the_modes_change(tmp_path: Path) -> None:
    env = tmp_path / "env"
    (env / "sub").mkdir(parents=True)
    (env / "sub" / "f").write_text("f")
    (env / "sub" / "f").chmod(0o2700)
    (env / "sub").chmod(0o700)
    os.chown(env / "sub" / "f", STRANGER, STRANGER)
    seal(env)
    assert _mode(env / "sub") == 0o755
    assert _mode(env / "sub" / "f") == 0o755  # root may open up anything it built
    assert (env / "sub" / "f").stat().st_uid == STRANGER
