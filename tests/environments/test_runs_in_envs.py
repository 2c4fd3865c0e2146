"""Issue 12 acceptance through ``fastflow run``: two pipelines with conflicting pins each
see their own version; a second run reuses its environment (the log says so, far faster);
a changed ``requirements.txt`` rebuilds; a failed build fails the run with a reason."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import MakePipeline, run_cli

CODE = "import ffdemo\nprint('ffdemo', ffdemo.VERSION)\n"


def _run(name: str) -> tuple[str, str]:
    res = run_cli("run", name, timeout=300)
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.strip().splitlines()[-1]
    runs = json.loads(run_cli("runs", "--json").stdout)
    (run,) = [r for r in runs if r["id"] == run_id]
    return run_id, str(run["log_file"])


def _log(ff_env: dict[str, str], rel: str) -> str:
    return (Path(ff_env["LOGS_DIR"]) / rel).read_text(encoding="utf-8")


def test_conflicting_pins_reuse_and_rebuild(
    ff_env: dict[str, str], make_pipeline: MakePipeline, offline: Path
) -> None:
    old = make_pipeline("old pandas", CODE)
    new = make_pipeline("new pandas", CODE)
    (old / "requirements.txt").write_text("ffdemo==1.0\n")
    (new / "requirements.txt").write_text("ffdemo==2.0\n")
    first_old = _log(ff_env, _run("old pandas")[1])
    first_new = _log(ff_env, _run("new pandas")[1])
    assert "ffdemo 1.0" in first_old and "ffdemo 2.0" in first_new
    data_dir = str(Path(ff_env["DATA_DIR"]).resolve())
    for log in (first_old, first_new):
        assert "[env] building environment" in log
        # the build's lines name DATA_DIR by its setting: viewers read run logs (audit)
        env_lines = [line for line in log.splitlines() if "[env] " in line]
        assert not any(data_dir in line for line in env_lines), env_lines
        assert any("DATA_DIR/envs/" in line for line in env_lines), env_lines  # (uv's line)
        env_end = log.index("environment ready")
        assert env_end < log.index("ffdemo ")  # the build comes before the first line
    again = _log(ff_env, _run("old pandas")[1])
    assert "[env] reusing environment" in again and "building" not in again
    assert "ffdemo 1.0" in again
    (old / "requirements.txt").write_text("ffdemo==2.0  # upgraded\n")  # (same pins as
    # "new pandas" would share its environment: the key is the files' content)
    changed = _log(ff_env, _run("old pandas")[1])
    assert "[env] building environment" in changed and "ffdemo 2.0" in changed
    listed = json.loads(run_cli("env", "list", "--json").stdout)
    assert len(listed) == 3
    assert {p for e in listed for p in e["pipelines"]} == {"old pandas", "new pandas"}


def test_a_failed_build_fails_the_run_with_the_resolvers_message(
    ff_env: dict[str, str], make_pipeline: MakePipeline, offline: Path
) -> None:
    folder = make_pipeline("broken deps", CODE)
    (folder / "requirements.txt").write_text("ffdemo==9.9\n")
    res = run_cli("run", "broken deps", timeout=300)
    assert res.returncode == 1
    (run,) = json.loads(run_cli("runs", "--json").stdout)
    assert run["status"] == "FAILED"
    assert str(run["failure_reason"]).startswith("environment build failed:")
    assert "ffdemo" in str(run["failure_reason"])
    log = _log(ff_env, str(run["log_file"]))
    assert "[env] " in log and "9.9" in log


def test_a_missing_secret_fails_the_run_before_it_starts(
    ff_env: dict[str, str], make_pipeline: MakePipeline
) -> None:
    make_pipeline("needs token", "print('pipeline ran')\n", config='{"secrets": ["API_TOKEN"]}')
    res = run_cli("run", "needs token")
    assert res.returncode == 1
    (run,) = json.loads(run_cli("runs", "--json").stdout)
    assert run["failure_reason"].startswith("secret(s) not found: API_TOKEN")
    assert "pipeline ran" not in _log(ff_env, str(run["log_file"]))
