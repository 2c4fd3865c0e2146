"""``runs.files.remove_empty_dirs``: empty run folders go, nothing outside LOGS_DIR does."""

from __future__ import annotations

from pathlib import Path

from fastflow.runs import files


def test_removes_the_empty_chain_up_to_but_not_including_the_root(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    run = root / "etl" / "run-1"
    run.mkdir(parents=True)

    files.remove_empty_dirs(run, root)

    assert root.is_dir()
    assert not (root / "etl").exists()


def test_stops_at_the_first_folder_that_is_not_empty(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    run = root / "etl" / "run-1"
    run.mkdir(parents=True)
    (root / "etl" / "run-2").mkdir()

    files.remove_empty_dirs(run, root)

    assert not run.exists()
    assert (root / "etl" / "run-2").is_dir()


def test_a_symlinked_folder_pointing_outside_the_root_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    outside = tmp_path / "elsewhere" / "empty"
    outside.mkdir(parents=True)
    (root / "etl").symlink_to(outside.parent, target_is_directory=True)

    files.remove_empty_dirs(root / "etl" / "empty", root)

    assert outside.is_dir()  # resolves outside LOGS_DIR: never removed
    assert (root / "etl").is_symlink()


def test_a_root_given_through_a_symlink_is_still_the_stop(tmp_path: Path) -> None:
    real = tmp_path / "real-logs"
    (real / "etl" / "run-1").mkdir(parents=True)
    link = tmp_path / "logs"
    link.symlink_to(real, target_is_directory=True)

    files.remove_empty_dirs(link / "etl" / "run-1", link)

    assert real.is_dir()
    assert not (real / "etl").exists()
