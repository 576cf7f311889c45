"""The architecture, checked: rooms import only what they may, modules and functions stay
small, zarr stays in the store package, no private Ray API."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "w2w"
STAGE_PACKAGES = ("ingest", "train", "predict", "sieve", "export", "evaluate")
#: What each room may import from w2w (besides itself).
ALLOWED = {
    "core": {"core"},
    "model": {"core", "model"},
    **{stage: {"core", "model", stage} for stage in STAGE_PACKAGES},
}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _w2w_imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
    return found


def _room(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_rooms_import_only_core_model_and_themselves(path: Path) -> None:
    room = _room(path)
    if room not in ALLOWED:
        return  # the top level (pipeline, stages, jobs, cli) may import any room
    for module, line in _w2w_imports(path):
        parts = module.split(".")
        if parts[0] != "w2w" or len(parts) < 2:
            continue
        assert parts[1] in ALLOWED[room], f"{path.name}:{line} imports {module} ({room})"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_store_package_imports_zarr_and_nothing_uses_private_ray(path: Path) -> None:
    in_store = path.parent.name == "store"
    for module, line in _w2w_imports(path):
        if module.split(".")[0] == "zarr":
            assert in_store, f"{path.name}:{line} imports zarr outside w2w.core.store"
        if module.startswith("ray"):
            assert not any(part.startswith("_") for part in module.split(".")), (
                f"{path.name}:{line} imports Ray's private {module}"
            )
    assert not re.search(r"\bray\.[\w.]*\._\w", path.read_text()), f"{path}: private Ray API"


def _allowed_long() -> set[str]:
    """Long modules or functions that docs/design.md names, with the reason beside them."""
    design = (PACKAGE.parent / "docs" / "design.md").read_text()
    return set(re.findall(r"`(w2w/[\w/]+\.py(?::\w+)?)` is longer", design))


def test_no_module_or_function_is_too_long_without_a_reason() -> None:
    allowed = _allowed_long()
    problems = []
    for path in _modules():
        name = f"w2w/{path.relative_to(PACKAGE)}"
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES and name not in allowed:
            problems.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES and f"{name}:{node.name}" not in allowed:
                    problems.append(f"{name}:{node.name}: {length} lines")
    assert not problems, problems


def test_importing_w2w_and_configs_does_not_import_torch_or_ray() -> None:
    import subprocess
    import sys

    code = (
        "import sys, w2w, w2w.cli, w2w.train.config, w2w.predict.config; "
        "print(','.join(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"imported: {done.stdout}"
