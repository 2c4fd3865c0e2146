"""``runs.files``: paths resolve inside LOGS_DIR or not at all; empty run folders go,
nothing outside LOGS_DIR does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastflow.errors import UnsafePath
from fastflow.runs import files


def test_removes_the_empty_chain_up_to_but_not_including_the_root(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    run = root / "etl" / "run-1"
    run.mkdir(parents=True)

    with files.RunFolder(root, "etl/run-1") as folder:
        folder.remove_if_empty()

    assert root.is_dir()
    assert not (root / "etl").exists()


def test_stops_at_the_first_folder_that_is_not_empty(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    run = root / "etl" / "run-1"
    run.mkdir(parents=True)
    (root / "etl" / "run-2").mkdir()

    with files.RunFolder(root, "etl/run-1") as folder:
        folder.remove_if_empty()

    assert not run.exists()
    assert (root / "etl" / "run-2").is_dir()


def test_a_symlinked_folder_pointing_outside_the_root_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    outside = tmp_path / "elsewhere" / "empty"
    outside.mkdir(parents=True)
    (root / "etl").symlink_to(outside.parent, target_is_directory=True)

    with pytest.raises(UnsafePath, match="symbolic link"):
        files.RunFolder(root, "etl/empty")

    assert outside.is_dir()  # resolves outside LOGS_DIR: never removed
    assert (root / "etl").is_symlink()


def test_a_root_given_through_a_symlink_is_still_the_stop(tmp_path: Path) -> None:
    real = tmp_path / "real-logs"
    (real / "etl" / "run-1").mkdir(parents=True)
    link = tmp_path / "logs"
    link.symlink_to(real, target_is_directory=True)

    with files.RunFolder(link, "etl/run-1") as folder:
        folder.remove_if_empty()

    assert real.is_dir()
    assert not (real / "etl").exists()


def test_real_path_is_os_realpath_for_every_kind_of_path(tmp_path: Path) -> None:
    """The kernel's resolution (``/proc/self/fd``) and ``os.path.realpath`` agree: files,
    folders, symlinked files and folders, chains of links, ``..`` after a link, missing
    paths, dangling links, names with spaces and Unicode, and a name that ends in
    `` (deleted)`` like the kernel's mark of a removed file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "logs dir ü"
    (root / "etl" / "run-1").mkdir(parents=True)
    (root / "etl" / "run-1" / "run.log").write_text("x")
    (root / "weird (deleted)").write_text("x")
    (root / "to-outside").symlink_to(outside)
    (root / "chain-1").symlink_to(root / "chain-2")
    (root / "chain-2").symlink_to(root / "etl")
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    (root / "file-link").symlink_to(root / "etl" / "run-1" / "run.log")
    cases = [
        root,
        root / "etl" / "run-1" / "run.log",
        root / "weird (deleted)",
        root / "to-outside",
        root / "to-outside" / "missing.log",
        root / "chain-1" / "run-1" / "run.log",
        root / "chain-1" / ".." / "etl",
        root / "to-outside" / ".." / "logs dir ü",
        root / "dangling",
        root / "file-link",
        root / "missing" / "run.log",
        root / "missing" / "deeper" / ".." / "run.log",
        root / "dangling" / "run.log",
        root / "etl" / "run-1" / "run.log" / "not-a-folder",
        Path("relative") / ".." / "x",
        Path("relative-missing.log"),
        Path("/"),
        Path("/nonexistent-top-level"),
    ]
    for case in cases:
        assert files.real_path(case) == os.path.realpath(case), case


def test_resolve_refuses_every_way_out_and_accepts_every_way_in(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.log").write_text("s")
    root = tmp_path / "logs"
    (root / "etl" / "run-1").mkdir(parents=True)
    (root / "etl" / "run-1" / "run.log").write_text("x")
    (root / "etl" / "run-1" / "out.log").symlink_to(outside / "secret.log")
    (root / "out").symlink_to(outside)
    (outside / "dir").mkdir()
    (outside / "dir" / "run.log").write_text("s")
    (root / "xd").symlink_to(Path("..") / "outside" / "dir")
    (root / "loop").symlink_to(root / "loop")
    (root / "etl" / "run-2").mkdir()
    (root / "etl" / "run-2" / "run.log").symlink_to(root / "etl" / "run-1" / "run.log")
    (root / "alias").symlink_to(root / "etl")
    (tmp_path / "logs-sibling").mkdir()  # a sibling whose name starts like the root
    linked_root = tmp_path / "linked"
    linked_root.symlink_to(root)
    for bad in (
        "../outside/secret.log",
        "etl/run-1/out.log",
        "out/secret.log",
        "../logs-sibling/x",
        "/etc/passwd",
        "",
        "a\x00b",
        "etl/../../outside",
        "nope/../xd/run.log",  # ``..`` after a missing folder, then a link out
        "loop/../xd/run.log",  # ``..`` after a symlink loop
        "xd/run.log",
        "etl/run-1/../run-1/run.log",  # no ``..`` at all, even one that stays inside
        "etl/run-2/run.log",  # a link to another run's log, inside LOGS_DIR
        "alias/run-1/run.log",  # a linked folder inside LOGS_DIR
    ):
        with pytest.raises(UnsafePath):
            files.resolve(root, bad)
    good = files.resolve(linked_root, "etl/run-1/run.log")
    assert good == (root / "etl" / "run-1" / "run.log").resolve()
    assert files.resolve(root, "etl/./run-1/run.log") == good
    assert files.resolve(root, "etl/run-1/..x") == root.resolve() / "etl/run-1/..x"
    assert files.resolve(root, "etl/run-2/not-yet.log") == root.resolve() / "etl/run-2/not-yet.log"


def _outside_twin(tmp_path: Path) -> tuple[Path, Path, Path]:
    """LOGS_DIR with run folder ``p/r`` holding ``run.log``, and a folder outside it
    holding a file of the same name: (root, run folder, the outside file)."""
    root = tmp_path / "logs"
    run = root / "p" / "r"
    run.mkdir(parents=True)
    (run / "run.log").write_bytes(b"inside\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "run.log").write_bytes(b"not fastflow's\n")
    return root, run, outside / "run.log"


def test_a_run_folder_swapped_for_a_link_after_opening_deletes_nothing_outside(
    tmp_path: Path,
) -> None:
    """The folder is renamed away and a link to outside takes its name between the
    check and the unlink: the unlink goes to the folder that was opened (moved, still
    fastflow's), never through the link."""
    root, run, foreign = _outside_twin(tmp_path)
    with files.RunFolder(root, "p/r") as folder:
        before = folder.identity("run.log")
        moved = root / "p" / "moved-away"
        run.rename(moved)
        run.symlink_to(foreign.parent, target_is_directory=True)
        assert folder.identity("run.log") == before  # still the opened folder's file
        assert folder.unlink("run.log")
        folder.remove_if_empty()
    assert foreign.read_bytes() == b"not fastflow's\n"
    assert not (moved / "run.log").exists()
    assert run.is_symlink() and root.is_dir()


def test_a_run_folder_refuses_links_and_files_on_its_way(tmp_path: Path) -> None:
    root, run, foreign = _outside_twin(tmp_path)
    (root / "q").symlink_to(foreign.parent, target_is_directory=True)
    (root / "f").write_text("a file where a folder should be")
    for rel in ("q", "q/r", "f/r"):
        with pytest.raises(UnsafePath, match="below LOGS_DIR"):
            files.RunFolder(root, rel)
    for rel in ("../outside", "/etc", "p/../../outside"):
        with pytest.raises(UnsafePath):
            files.RunFolder(root, rel)
    assert foreign.exists() and (run / "run.log").exists()


def test_a_missing_run_folder_is_nothing_to_do(tmp_path: Path) -> None:
    root, run, _ = _outside_twin(tmp_path)
    with files.RunFolder(root, "p/gone") as folder:
        assert folder.missing
        assert folder.identity("run.log") is None
        assert not folder.unlink("run.log")
        assert folder.remove_temp_files() == 0
        folder.remove_if_empty()
    assert (run / "run.log").exists()


def test_a_run_folder_removes_its_temp_files_and_empty_chain_only(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    run = root / "p" / "r"
    run.mkdir(parents=True)
    (run / f"{files.TEMP_PREFIX}x{files.TEMP_SUFFIX}").write_text("tmp")
    (run / "keep.txt").write_text("not ours")
    with files.RunFolder(root, "p/r") as folder:
        assert folder.remove_temp_files() == 1
        folder.remove_if_empty()  # not empty: stays
    assert sorted(os.listdir(run)) == ["keep.txt"]
    (run / "keep.txt").unlink()
    with files.RunFolder(root, "p/r") as folder:
        folder.remove_if_empty()
    assert root.is_dir() and os.listdir(root) == []


def test_resolve_refuses_what_is_not_a_regular_file_or_a_folder(tmp_path: Path) -> None:
    """A FIFO would block whoever reads it (the pass, an API worker)."""
    root = tmp_path / "logs"
    (root / "p" / "r").mkdir(parents=True)
    os.mkfifo(root / "p" / "r" / "run.log")
    with pytest.raises(UnsafePath, match="not a regular file"):
        files.resolve(root, "p/r/run.log")
    assert files.resolve(root, "p/r") == (root / "p" / "r").resolve()  # a folder is fine
    assert files.resolve(root, "p/r/metrics.jsonl").name == "metrics.jsonl"  # not there yet


def _run_with_outside(tmp_path: Path) -> tuple[Path, Path, Path]:
    """``_outside_twin``, with the outside folder instead of its file."""
    root, run_dir, outside_file = _outside_twin(tmp_path)
    return root, run_dir, outside_file.parent


def _swap(run_dir: Path, outside: Path) -> None:
    run_dir.rename(run_dir.with_name("moved"))
    run_dir.symlink_to(outside, target_is_directory=True)


def test_open_below_reads_the_file_it_opened_whatever_happens_to_its_folder(
    tmp_path: Path,
) -> None:
    root, run_dir, outside = _run_with_outside(tmp_path)
    f = files.open_below(root, "p/r/run.log")
    assert f is not None
    _swap(run_dir, outside)
    with f:
        assert f.read() == b"inside\n"
    # opened after the swap: the link is refused, the file outside never read
    with pytest.raises(UnsafePath, match="symbolic link"):
        files.open_below(root, "p/r/run.log")


def test_open_below_refuses_links_and_special_files_and_misses_quietly(tmp_path: Path) -> None:
    root, run_dir, outside = _run_with_outside(tmp_path)
    assert files.open_below(root, "p/r/metrics.jsonl") is None
    assert files.open_below(root, "p/gone/run.log") is None
    assert files.open_below(tmp_path / "no-logs-dir", "p/r/run.log") is None
    (run_dir / "link.log").symlink_to(outside / "run.log")
    with pytest.raises(UnsafePath, match="symbolic link"):
        files.open_below(root, "p/r/link.log")
    os.mkfifo(run_dir / "fifo.log")  # opened without waiting for a writer, then refused
    with pytest.raises(UnsafePath, match="not a regular file"):
        files.open_below(root, "p/r/fifo.log")
    (run_dir / "dir.log").mkdir()
    with pytest.raises(UnsafePath, match="not a regular file"):
        files.open_below(root, "p/r/dir.log")
    with pytest.raises(UnsafePath, match=r"'\.\.'"):
        files.open_below(root, "p/../r/run.log")
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(20):  # refusals leak no descriptor
        with pytest.raises(UnsafePath):
            files.open_below(root, "p/r/fifo.log")
    assert len(os.listdir("/proc/self/fd")) == fds


def test_a_held_file_is_read_again_by_path_as_the_same_file(tmp_path: Path) -> None:
    """``HeldFile.path`` (what the uploader opens by name) reopens the very file that
    was opened, not what the path names after a swap; ``named`` says what its name in
    the opened folder stands for now."""
    root, run_dir, outside = _run_with_outside(tmp_path)
    with files.held(root, "p/r/run.log") as held:
        before = held.identity()
        _swap(run_dir, outside)
        assert held.path.read_bytes() == b"inside\n"
        assert files.FileIdentity.of(held.path) == before
        assert held.named() == before  # the folder that was opened: moved, still there
        (run_dir.with_name("moved") / "run.log").unlink()
        assert held.named() is None
        assert held.path.read_bytes() == b"inside\n"  # held open: still readable
    with pytest.raises(FileNotFoundError), files.held(root, "p/other/run.log"):
        pass
    with pytest.raises(UnsafePath, match="symbolic link"), files.held(root, "p/r/run.log"):
        pass


def test_size_below_measures_only_files_below_logs_dir(tmp_path: Path) -> None:
    """What a run's ``log_size`` is recorded from: a link (in the file's place or on its
    way) is not followed, a missing file has no size."""
    root, run_dir, outside = _run_with_outside(tmp_path)
    assert files.size_below(root, "p/r/run.log") == len(b"inside\n")
    assert files.size_below(root, "p/r/metrics.jsonl") is None
    assert files.size_below(tmp_path / "no-logs-dir", "p/r/run.log") is None
    (run_dir / "link.log").symlink_to(outside / "run.log")
    assert files.size_below(root, "p/r/link.log") is None
    _swap(run_dir, outside)
    assert files.size_below(root, "p/r/run.log") is None
