"""The layering of docs/architecture.md, read from the code's own imports (grimp parses them; nothing is imported):
the import-linter contracts of pyproject.toml, the networks' short list of libraries, no import cycle between any
two modules (function-local imports included) and no module over 400 lines."""

from __future__ import annotations

import graphlib
import sys
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("storage", "promptseg", "pipelines")
NETS_MAY_IMPORT = {"torch", "numpy", "safetensors"}
MAX_MODULE_LINES = 400


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)


def test_every_import_linter_contract_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename="pyproject.toml", no_cache=True, no_logo=True) == 0


def test_the_networks_import_only_torch_numpy_and_safetensors(graph: grimp.ImportGraph) -> None:
    nets = {"promptseg.nets", *graph.find_descendants("promptseg.nets")}
    imported = {found for module in nets for found in graph.find_modules_directly_imported_by(module)}
    outside = {name.split(".")[0] for name in imported if not name.startswith("promptseg.nets")}
    assert outside - set(sys.stdlib_module_names) - {"__future__"} <= NETS_MAY_IMPORT


def test_no_module_imports_itself_through_others(graph: grimp.ImportGraph) -> None:
    ours = {m for m in graph.modules if m.split(".")[0] in PACKAGES}
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in ours} for m in ours}
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
