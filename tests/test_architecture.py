"""The layering of docs/architecture.md, checked on every import of the package:
the entry points ``cli`` and ``server`` on top, then ``api``/``web`` (which never import
each other), then ``lifecycle``/``notify``/``orchestration``, then ``runs``/``archive``/
``db`` (with the shared ``context``, ``accounts``, ``session_cookie``), then ``config``/
``errors``/``security``. Nothing imports from a higher layer."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fastflow"
LAYERS: dict[str, int] = {
    "config": 0,
    "errors": 0,
    "security": 0,
    "exit_codes": 0,
    "strict_json": 0,
    "db": 1,
    "runs": 1,
    "environments": 1,
    "executors": 1,
    "archive": 1,
    "context": 1,
    "accounts": 1,
    "session_cookie": 1,
    "lifecycle": 2,
    "notify": 2,
    "orchestration": 2,
    "doctor": 2,
    "api": 3,
    "web": 3,
    "server": 4,
    "cli": 4,
    "__main__": 4,
}
APART = {"api", "web"}  # joined only by the composition root, ``server``


def _unit(module: str) -> str:
    """'fastflow.runs.store' -> 'runs'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "fastflow":
                found += [(node.lineno, f"fastflow.{a.name}") for a in node.names]
            elif node.module.startswith("fastflow."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("fastflow.")]
    return found


def violations() -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        own = _unit(".".join(rel.parts))
        if own == "__init__" or "migrations" in rel.parts:
            continue
        assert own in LAYERS, f"{path}: module {own!r} has no layer in this test"
        for line, target in _imports(path):
            other = _unit(target)
            if other in ("__init__", "__version__", own):
                continue
            assert other in LAYERS, f"{path}:{line}: import of {target} has no layer"
            if LAYERS[other] > LAYERS[own] or (own in APART and other in APART):
                out.append(f"{path.relative_to(SRC)}:{line} ({own}) imports {target} ({other})")
    return out


def test_no_import_goes_up_a_layer() -> None:
    assert violations() == []


def test_every_package_says_what_it_owns() -> None:
    for init in SRC.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) >= 3, f"{init} needs a docstring (3-6 lines)"
