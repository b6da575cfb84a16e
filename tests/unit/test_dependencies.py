"""Every third-party package the platform's code imports is declared in pyproject.toml (read from the code's own
imports by grimp; nothing is imported)."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("storage", "promptseg", "pipelines")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    declared = {_normalized(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]) for requirement in requirements}
    graph = grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)
    imported = {module.split(".")[0] for module in graph.modules} - set(PACKAGES) - set(sys.stdlib_module_names)
    distributions = importlib.metadata.packages_distributions()
    undeclared = {
        name: distributions.get(name)
        for name in imported - {"__future__"}
        if not {_normalized(d) for d in distributions.get(name, [name])} & declared
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_base_install_is_the_client_and_covers_what_the_client_imports() -> None:
    """`pip install promptseg-platform` brings the HTTP client's packages only (the platform is an extra), and they
    are every third-party package the client module imports, however deep."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_normalized(re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]) for r in project["dependencies"]}
    assert base == {"httpx", "pydantic", "numpy", "pillow"}
    graph = grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)
    reached = graph.find_upstream_modules("promptseg.serving.client") | {"promptseg.serving.client"}
    external = {m.split(".")[0] for m in reached} - set(PACKAGES) - set(sys.stdlib_module_names) - {"__future__"}
    distributions = importlib.metadata.packages_distributions()
    assert {_normalized(d) for name in external for d in distributions.get(name, [name])} <= base | {"pydantic-core"}
