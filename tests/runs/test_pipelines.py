"""Pipeline names, discovery and pipeline.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastflow.archive import manifests
from fastflow.errors import InvalidPipelineConfig, InvalidPipelineName, PipelineNotFound
from fastflow.runs import pipelines
from tests.conftest import MakePipeline

VALID = ["etl", "daily-report", "load_orders.v2", "Übersicht 2024", "日本語", "a" * 100, "x.y"]
INVALID = [
    "",
    "a/b",
    "a\\b",
    "..",
    ".hidden",
    "../etc",
    "tab\tname",
    "new\nline",
    "nul\x00",
    "a" * 101,
    " leading",
    "trailing ",
    "semi;colon",
    "star*",
    "\u115f",  # Hangul fillers: letters that show as nothing (outside audit)
    "a\u3164b",
    "\uffa0\uffa0",
    "_manifests",  # the archive's manifest folder (an outside audit)
]


def test_the_manifest_folder_is_a_reserved_name() -> None:
    assert manifests.DIRECTORY in pipelines.RESERVED_NAMES


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name: str) -> None:
    assert pipelines.validate_name(name) == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_are_rejected_clearly(name: str) -> None:
    with pytest.raises(InvalidPipelineName) as err:
        pipelines.validate_name(name)
    assert "pipeline name" in str(err.value)
    assert "\n" not in str(err.value)


def test_discover_lists_valid_pipelines_sorted(
    make_pipeline: MakePipeline, ff_env: dict[str, str]
) -> None:
    make_pipeline("zeta")
    make_pipeline("Äpfel zählen", config='{"description": "counts apples"}')
    make_pipeline("alpha")
    (Path(ff_env["PIPELINES_DIR"]) / "not_a_pipeline").mkdir()
    (Path(ff_env["PIPELINES_DIR"]) / ".hidden").mkdir()
    (Path(ff_env["PIPELINES_DIR"]) / ".hidden" / "main.py").write_text("print(1)")
    found = pipelines.discover(Path(ff_env["PIPELINES_DIR"]))
    assert [p.name for p in found] == ["alpha", "zeta", "Äpfel zählen"]
    assert found[2].description == "counts apples"


def test_discover_missing_dir_is_empty(tmp_path: Path) -> None:
    assert pipelines.discover(tmp_path / "nope") == []


def test_load_reads_pipeline_json(make_pipeline: MakePipeline, ff_env: dict[str, str]) -> None:
    make_pipeline(
        "cfg",
        config='{"timeout": 5, "env": {"A": 1, "B": "x"}, "description": "d", '
        '"retention": {"runs": 3, "days": 0, "max_size_mb": 2}}',
    )
    p = pipelines.load(Path(ff_env["PIPELINES_DIR"]), "cfg")
    assert p.timeout == 5.0
    assert p.env == {"A": "1", "B": "x"}
    assert p.retention == pipelines.Retention(runs=3, days=0, max_size_mb=2)


@pytest.mark.parametrize(
    "config",
    [
        "{not json",
        "[1, 2]",
        '{"timeout": -1}',
        '{"timeout": "soon"}',
        '{"env": ["A"]}',
        '{"retention": {"runs": -2}}',
        '{"retention": {"max_size_mb": 0}}',
        '{"retention": 5}',
        # an outside audit: these passed `pipelines check`, then `fastflow run` died
        # with a traceback, or every schedule listing failed
        '{"env": {"A=B": "x"}}',
        '{"env": {"A": "x\\u0000y"}}',
        '{"env": {"A": "\\ud800"}}',
        '{"env": {"A": null}}',
        '{"env": {"A": {"b": 1}}}',
        '{"default_env": {"FASTFLOW_RUN_ID": "x"}}',
        '{"schedules": [{"cron": "* * * * *", "start": "0001-01-01T00:00:00Z"}]}',
        '{"schedules": [{"cron": "* * * * *", "start": "0001-01-01T00:00:01+14:00"}]}',
        '{"schedules": [{"cron": "* * * * *", "end": "9999-12-31T23:59:59-12:00"}]}',
    ],
)
def test_bad_pipeline_json_is_a_clear_error(
    make_pipeline: MakePipeline, ff_env: dict[str, str], config: str
) -> None:
    make_pipeline("bad", config=config)
    with pytest.raises(InvalidPipelineConfig) as err:
        pipelines.load(Path(ff_env["PIPELINES_DIR"]), "bad")
    assert "pipeline.json" in str(err.value)


def test_env_values_are_text_numbers_or_booleans(
    make_pipeline: MakePipeline, ff_env: dict[str, str]
) -> None:
    make_pipeline("typed", config='{"env": {"A": "x", "N": 1, "F": 1.5, "B": true}}')
    loaded = pipelines.load(Path(ff_env["PIPELINES_DIR"]), "typed")
    assert loaded.config.env == {"A": "x", "N": "1", "F": "1.5", "B": "true"}


def test_missing_pipeline(ff_env: dict[str, str]) -> None:
    with pytest.raises(PipelineNotFound):
        pipelines.load(Path(ff_env["PIPELINES_DIR"]), "ghost")


def test_load_refuses_traversal_names(ff_env: dict[str, str]) -> None:
    with pytest.raises(InvalidPipelineName):
        pipelines.load(Path(ff_env["PIPELINES_DIR"]), "../outside")


def test_a_name_typed_decomposed_loads_its_composed_folder(
    ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    """An outside audit: ``u`` + U+0308 (how macOS keyboards send ``ü``) was refused as
    holding a bare combining mark, although the folder ``ünï code`` exists. It is taken
    in its composed form; a combining mark alone is still refused, and messages show the
    name readably (not ``'\\xfc…'``) with unprintable characters escaped."""
    make_pipeline("ünï code", "print('hi')\n")
    root = Path(ff_env["PIPELINES_DIR"])
    loaded = pipelines.load(root, "u\u0308ni\u0308 code")
    assert loaded.name == "ünï code" and loaded.path == root / "ünï code"
    with pytest.raises(InvalidPipelineName, match="contains '\u0308'"):
        pipelines.load(root, "\u0308x")
    with pytest.raises(InvalidPipelineName) as err:
        pipelines.validate_name("é" * 101 + "\u202e")
    assert "'ééé" in str(err.value) and "\u202e" not in str(err.value)
