"""The pure and unit parts: keys, dependency files, the build's environment, uv's error
message, interpreter versions."""

from __future__ import annotations

from pathlib import Path

from fastflow.environments import builder, keys, sources
from fastflow.environments.interpreters import matches


def test_key_changes_with_every_input_and_only_with_them() -> None:
    base = keys.digest("3.11.2", "requirements", [("requirements.txt", b"ffdemo==1.0\n")])
    assert base == keys.digest("3.11.2", "requirements", [("requirements.txt", b"ffdemo==1.0\n")])
    others = {
        keys.digest("3.11.7", "requirements", [("requirements.txt", b"ffdemo==1.0\n")]),
        keys.digest("3.11.2", "pyproject", [("requirements.txt", b"ffdemo==1.0\n")]),
        keys.digest("3.11.2", "requirements", [("requirements.txt", b"ffdemo==2.0\n")]),
        keys.digest("3.11.2", "requirements", [("base.txt", b"ffdemo==1.0\n")]),
        keys.digest("3.11.2", "none", []),
    }
    assert base not in others and len(others) == 5
    key = keys.key_of(base)
    assert keys.KEY_RE.match(key) and base.startswith(key)


def test_dependency_kinds(tmp_path: Path) -> None:
    assert sources.read(tmp_path).kind == "none"
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    assert sources.read(tmp_path).kind == "none"  # no [project]: nothing to install
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "p"\nversion = "0"\n')
    assert sources.read(tmp_path).kind == "pyproject"
    (tmp_path / "uv.lock").write_text("version = 1\n")
    deps = sources.read(tmp_path)
    assert deps.kind == "pyproject-lock" and deps.names == ["pyproject.toml", "uv.lock"]
    assert deps.label == "pyproject.toml + uv.lock"
    (tmp_path / "requirements.txt").write_text("ffdemo\n")
    assert sources.read(tmp_path).kind == "requirements"
    (tmp_path / "requirements.txt.lock").write_text("ffdemo==1.0\n")
    deps = sources.read(tmp_path)
    assert deps.kind == "requirements-lock" and deps.label == "requirements.txt.lock"
    assert deps.names == ["requirements.txt.lock", "requirements.txt"]


def test_included_requirements_are_part_of_the_key(tmp_path: Path) -> None:
    assert sources.includes("-r base.txt\n--constraint=c.txt # pins\nffdemo\n-e .\n") == [
        "base.txt",
        "c.txt",
    ]
    (tmp_path / "requirements.txt").write_text("-r base.txt\n-r base.txt\n")
    (tmp_path / "base.txt").write_text("ffdemo==1.0\n-r requirements.txt\n")  # a cycle
    first = sources.read(tmp_path)
    assert first.names == ["requirements.txt", "base.txt"]
    (tmp_path / "base.txt").write_text("ffdemo==2.0\n")
    assert sources.read(tmp_path) != first


def test_build_environment_is_minimal_and_keeps_uv_variables(tmp_path: Path) -> None:
    mine = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/ff",
        "LANG": "C.UTF-8",
        "HTTPS_PROXY": "http://proxy:3128",
        "UV_INDEX_URL": "https://pypi.internal/simple",
        "UV_EXTRA_INDEX_URL": "https://extra.internal/simple",
        "UV_FIND_LINKS": "/srv/wheels",
        "UV_OFFLINE": "1",
        "UV_NO_INDEX": "1",
        "UV_PYTHON_DOWNLOADS": "automatic",
        "UV_PYTHON": "3.8",
        "UV_PROJECT_ENVIRONMENT": "/elsewhere",
        "S3_SECRET_ACCESS_KEY": "s3-secret",
        "S3_ACCESS_KEY": "s3-key",
        "SMTP_PASSWORD": "smtp-secret",
        "DATABASE_URL": "postgresql://u:pw@db/ff",
        "FASTFLOW_SECRET_KEY": "ff-secret",
        "TEAMS_WEBHOOK_URL": "https://example.invalid/hook/token",
        "VIRTUAL_ENV": "/work/main/.venv",
        "PYTHONPATH": "/work/main/src",
    }
    env = builder.uv_environ(mine, tmp_path / "cache")
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/ff",
        "LANG": "C.UTF-8",
        "HTTPS_PROXY": "http://proxy:3128",
        "UV_INDEX_URL": "https://pypi.internal/simple",
        "UV_EXTRA_INDEX_URL": "https://extra.internal/simple",
        "UV_FIND_LINKS": "/srv/wheels",
        "UV_OFFLINE": "1",
        "UV_NO_INDEX": "1",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_CACHE_DIR": str(tmp_path / "cache"),
    }
    assert builder.uv_environ({"UV_CACHE_DIR": "/c"}, tmp_path)["UV_CACHE_DIR"] == "/c"


def test_resolver_message_becomes_one_line() -> None:
    plain = [
        "Using Python 3.11.2 environment at: /data/envs/x",
        "error: No solution found when resolving dependencies",
        "  cause: Because there is no version of ffdemo==9.9 and you require ffdemo==9.9, "
        "we can conclude that your requirements are unsatisfiable.",
        "",
        "hint: Packages were unavailable because the network was disabled.",
    ]
    assert builder.summarize(plain) == (
        "No solution found when resolving dependencies: Because there is no version of "
        "ffdemo==9.9 and you require ffdemo==9.9, we can conclude that your requirements "
        "are unsatisfiable."
    )
    tree = [
        "  × No solution found when resolving dependencies:",
        "  ╰─▶ Because there is no version of ffdemo==9.9 and you require ffdemo==9.9, we "
        "can conclude that your requirements are unsatisfiable.",
    ]
    assert builder.summarize(tree).startswith(
        "No solution found when resolving dependencies: Because there is no version"
    )
    assert builder.summarize(["something odd", ""]) == "something odd"
    assert builder.summarize([]) == "uv printed nothing"
    assert builder.summarize(["error: " + "x" * 5000]).endswith("…")


def test_credentials_in_urls_are_masked() -> None:
    line = "Resolving from https://alice:s3cr3t@pypi.internal/simple and http://tok@h/x"
    assert builder.mask_credentials(line) == (
        "Resolving from https://***@pypi.internal/simple and http://***@h/x"
    )


def test_version_matching() -> None:
    assert matches("3.11", "3.11.2") and matches("3.11.2", "3.11.2")
    assert not matches("3.11.2", "3.11.7") and not matches("3.1", "3.11.2")
    assert not matches("3.12", "3.11.2")
