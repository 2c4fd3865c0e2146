"""``builder.seal``: an environment built as the run's user becomes fastflow's, readable
by every user and writable by nobody else; anything a build could use to make fastflow
touch what is not the build's (another owner's entry, a hard link, a FIFO, fastflow's
own file names, a tree too deep to walk) discards the build, and nothing outside the
tree changes (links are never followed). Several cases were found by an outside audit."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from fastflow.environments import registry
from fastflow.environments.builder import MAX_DEPTH, remove_tree, seal
from fastflow.errors import EnvBuildError

BUILDER = 54321  # the build's user (any uid works for root)
STRANGER = 54322
RESERVED = frozenset({registry.METADATA, registry.tmp_name()})


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("seal's tests need root (they give files to other users)")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _acl_for(uid: int) -> bytes:
    """A POSIX access ACL (the kernel's xattr form) granting ``uid`` read and write."""
    undefined = 0xFFFFFFFF
    entries = [(0x01, 6, undefined), (0x02, 6, uid), (0x04, 4, undefined), (0x10, 6, undefined)]
    entries.append((0x20, 4, undefined))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _give(tree: Path, uid: int) -> None:
    for path in [tree, *tree.rglob("*")]:
        os.lchown(path, uid, uid)


def _built(tmp_path: Path) -> tuple[Path, Path]:
    """A tree as an honest build by ``BUILDER`` could leave it, and a private file of
    the build's user outside it (what a followed link would open up)."""
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
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
    (env / ".lock").write_text("")
    (env / ".lock").chmod(0o666)  # uv leaves its lock world-writable
    (env / "lib" / "to-secret").symlink_to(secret)
    (env / "lib" / "to-outside").symlink_to(outside, target_is_directory=True)
    _give(env, BUILDER)
    _give(outside, BUILDER)
    for path in (env, env / "bin", env / "lib", env / "lib" / "pkg"):
        path.chmod(0o700)
    return env, secret


def test_a_tree_built_by_another_user_becomes_fastflows(tmp_path: Path) -> None:
    env, secret = _built(tmp_path)
    acl_file = env / "lib" / "pkg" / "mod.py"
    os.setxattr(acl_file, "system.posix_acl_access", _acl_for(BUILDER))
    seal(env, BUILDER, RESERVED)
    me = os.geteuid()
    assert {p.lstat().st_uid for p in [env, *env.rglob("*")]} == {me}
    assert _mode(env) == _mode(env / "bin") == _mode(env / "lib" / "pkg") == 0o755
    assert _mode(env / "bin" / "tool") == 0o755  # executable for all, set-uid gone
    assert _mode(acl_file) == 0o644
    assert _mode(env / ".lock") == 0o644  # nobody else may write
    assert "system.posix_acl_access" not in os.listxattr(acl_file)
    # the links were not followed: what they point at is still the build user's, private
    for path in (tmp_path / "outside", secret):
        assert path.stat().st_uid == BUILDER
    assert _mode(tmp_path / "outside") == 0o700
    assert _mode(secret) == 0o600


def _other_owner(env: Path, tmp_path: Path) -> Path:
    (env / "lib" / "stranger").write_text("not the build's")
    os.chown(env / "lib" / "stranger", STRANGER, STRANGER)
    return env / "lib" / "stranger"


def _roots_file(env: Path, tmp_path: Path) -> Path:
    (env / "lib" / "roots").write_text("fastflow's")
    os.chown(env / "lib" / "roots", 0, 0)
    return env / "lib" / "roots"


def _hard_link(env: Path, tmp_path: Path) -> Path:
    """A file of the build's user outside the tree, linked into it."""
    target = tmp_path / "users-own"
    target.write_text("private")
    target.chmod(0o600)
    os.chown(target, BUILDER, BUILDER)
    os.link(target, env / "lib" / "linked")
    return target


def _fifo(env: Path, tmp_path: Path) -> Path:
    os.mkfifo(env / "lib" / "pipe")
    os.chown(env / "lib" / "pipe", BUILDER, BUILDER)
    return env / "lib" / "pipe"


def _reserved_link(env: Path, tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_text("root's")
    victim.chmod(0o600)
    (env / registry.tmp_name()).symlink_to(victim)
    os.lchown(env / registry.tmp_name(), BUILDER, BUILDER)
    return victim


def _too_deep(env: Path, tmp_path: Path) -> Path:
    deep = env
    for _ in range(MAX_DEPTH + 1):
        deep = deep / "d"
    deep.mkdir(parents=True)
    _give(env / "d", BUILDER)
    return deep


@pytest.mark.parametrize(
    "plant",
    [_other_owner, _roots_file, _hard_link, _fifo, _reserved_link, _too_deep],
    ids=["another owner", "root's file", "hard link", "FIFO", "fastflow's name", "too deep"],
)
def test_what_a_build_must_not_leave_discards_it(tmp_path: Path, plant: object) -> None:
    env, _ = _built(tmp_path)
    planted = plant(env, tmp_path)  # type: ignore[operator]
    before = planted.lstat()
    with pytest.raises(EnvBuildError, match="the environment is discarded"):
        seal(env, BUILDER, RESERVED)
    after = planted.lstat()
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
    remove_tree(env)
    assert not env.exists()


def test_a_record_is_never_written_through_a_link(tmp_path: Path) -> None:
    """The audit's root write: a link under the record's temporary name had fastflow
    (root) write the record into, and chmod, any file it pointed at."""
    env = tmp_path / "env"
    env.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("root's own")
    victim.chmod(0o600)
    (env / registry.tmp_name()).symlink_to(victim)
    record = registry.EnvRecord(
        key="0" * 16, digest="d", python="3.11", interpreter="/usr/bin/python3", kind="none",
        files=[],
    )  # fmt: skip
    registry.write(env, record)
    assert victim.read_text() == "root's own" and _mode(victim) == 0o600
    assert registry.read(env) == record
    assert _mode(env / registry.METADATA) == 0o644
    os.mkfifo(env / registry.tmp_name())  # a FIFO under that name does not block it
    registry.write(env, record)
    assert registry.read(env) == record


def test_a_tree_too_deep_for_python_is_removed(tmp_path: Path) -> None:
    deep = tmp_path / "deep"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1200):  # (``os.makedirs`` itself recurses once per level)
        os.mkdir("d", dir_fd=fd)
        below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.close(fd)
    remove_tree(deep)
    assert not deep.exists()


def test_without_a_builder_only_the_modes_change(tmp_path: Path) -> None:
    env = tmp_path / "env"
    (env / "sub").mkdir(parents=True)
    (env / "sub" / "f").write_text("f")
    (env / "sub" / "f").chmod(0o2766)
    (env / "sub").chmod(0o700)
    os.chown(env / "sub" / "f", STRANGER, STRANGER)
    seal(env)
    assert _mode(env / "sub") == 0o755
    assert _mode(env / "sub" / "f") == 0o755  # set-gid and the others' write bit gone
    assert (env / "sub" / "f").stat().st_uid == STRANGER


def test_a_refused_name_is_quoted(tmp_path: Path) -> None:
    """Second audit round: a newline in a refused name planted lines in the run's log,
    and a name that is not UTF-8 stopped ``fastflow run`` when it wrote the reason."""
    env, _ = _built(tmp_path)
    name = os.fsdecode(b"evil\n[2099-01-01] run finished: SUCCESS \xff")
    os.mkfifo(env / "lib" / name)
    os.chown(env / "lib" / name, BUILDER, BUILDER)
    with pytest.raises(EnvBuildError) as err:
        seal(env, BUILDER, RESERVED)
    message = str(err.value)
    assert "\n" not in message and "evil\\n[2099" in message
    message.encode("utf-8")  # (no lone surrogate left in it)
