"""The layout rules of docs/ARCHITECTURE.md ("The map"), checked mechanically on the source.

Reads files only (AST import graph, line counts): no import of the package, no process. When a
rule fails, its message names the file, the rule and what to do; read "Where does X go" in
docs/ARCHITECTURE.md before moving code.
"""
from __future__ import annotations

import ast
import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ailo"
MAX_LINES = 400

# importer package → packages it must never import (the arrows of the map point inward only).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "ailo.storage": ("ailo.server", "ailo.cli", "ailo.web", "ailo.inference", "ailo.federation",
                     "ailo.ledger.service", "ailo.ledger.client", "ailo.testing"),
    "ailo.ledger": ("ailo.server", "ailo.cli", "ailo.web", "ailo.inference", "ailo.federation", "ailo.testing"),
    "ailo.federation": ("ailo.server", "ailo.cli", "ailo.web", "ailo.testing"),
    "ailo.federation.core": ("ailo.federation.coordinator", "ailo.federation.client", "ailo.storage"),
    "ailo.federation.client": ("ailo.federation.coordinator",),
    "ailo.inference": ("ailo.server", "ailo.cli", "ailo.web", "ailo.testing"),
    "ailo.server": ("ailo.cli", "ailo.testing"),
    "ailo.cli": ("ailo.testing",),
}
WHY = {
    "ailo.storage": "storage is the bottom layer: pass plain records in and out, let the service build objects",
    "ailo.ledger": "the ledger is a domain: a service calls it, never the other way round",
    "ailo.federation": "domain code raises domain errors and knows no HTTP; compose it in ailo/server/",
    "ailo.federation.core": "core/ is pure maths shared by both sides: move the shared piece into core/",
    "ailo.federation.client": "the client never runs coordinator code: move the shared piece into core/",
    "ailo.inference": "domain code raises domain errors and knows no HTTP; compose it in ailo/server/",
    "ailo.server": "ailo/server/ composes services; the CLI is the outermost layer and calls the server",
    "ailo.cli": "ailo/testing/ is tooling for tests and benches only",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _imports(module: str, path: Path) -> set[str]:
    """Every ailo module `module` imports, anywhere in the file (function bodies and
    TYPE_CHECKING blocks included: a lazy import is still a dependency)."""
    out: set[str] = set()
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != module and not _within(module, t):  # a package's own __init__ is no edge
                out.add(t)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _rel(module: str) -> str:
    return str(MODULES[module].relative_to(ROOT))


def test_no_import_cycle_inside_ailo():
    try:
        tuple(TopologicalSorter(GRAPH).static_order())
    except CycleError as exc:
        cycle = exc.args[1]
        raise AssertionError(
            "import cycle: " + " -> ".join(cycle) + "\nBreak it: move what both sides need into a third module "
            "they both import (a registry module, a core/ module, a dataclass of the facts one side reads); "
            "an import inside a function or under TYPE_CHECKING still counts.") from None


def test_imports_point_inward():
    bad = []
    for module, deps in sorted(GRAPH.items()):
        for prefix, forbidden in FORBIDDEN.items():
            if not _within(module, prefix):
                continue
            for dep in sorted(deps):
                if any(_within(dep, f) for f in forbidden):
                    bad.append(f"{_rel(module)} imports {dep}: {WHY[prefix]}")
    assert not bad, "imports against the layering (docs/ARCHITECTURE.md, The map):\n" + "\n".join(bad)


HTTP_FRAMEWORKS = ("fastapi", "starlette")  # routes and apps; ailo/inference/serving.py runs uvicorn
DOMAIN = ("ailo/inference", "ailo/federation", "ailo/ledger", "ailo/storage")


def test_domain_code_builds_no_http_routes():
    bad = []
    for p in sorted(PKG.rglob("*.py")):
        rel = str(p.relative_to(ROOT))
        if not rel.startswith(DOMAIN):
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{rel} imports {n}" for n in names if n.split(".")[0] in HTTP_FRAMEWORKS]
    assert not bad, ("domain code checks and raises DomainError; the routes that call it are built in "
                     "ailo/server/ (e.g. ailo/server/node_app.py mounts ailo/inference/links.py):\n" + "\n".join(bad))


def test_product_code_never_imports_testing_tools():
    bad = [f"{_rel(m)} imports {d}" for m, deps in GRAPH.items() if not _within(m, "ailo.testing")
           for d in deps if _within(d, "ailo.testing")]
    assert not bad, ("ailo/testing/ is for tests and benches; move what product code needs out of it:\n"
                     + "\n".join(bad))


def _sources() -> list[Path]:
    built = (PKG / "web" / "static", PKG / "web" / "node")  # bundles written by build.mjs (git-ignored)
    return sorted(p for p in PKG.rglob("*") if p.suffix in (".py", ".js", ".mjs") and not any(b in p.parents for b in built))


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, (f"files over {MAX_LINES} lines: {long}\nSplit by concept (one concept per module), "
                      "not by line number: see docs/ARCHITECTURE.md, Where does X go.")


FAMILY_REGISTRIES = {"ailo/inference/families/__init__.py", "ailo/web/src/families.js"}
FAMILY_TEST = re.compile(r"\bfamily\s*(?:[!=]==?)\s*['\"]|['\"]\s*(?:[!=]==?)\s*[\w.]*\bfamily\b")


def test_family_names_are_tested_only_in_the_registries():
    bad = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in _sources()
           if str(p.relative_to(ROOT)) not in FAMILY_REGISTRIES
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if FAMILY_TEST.search(line)]
    assert not bad, ("a model family tested by name outside the registry; add what differs as a field of "
                     "`Family` in ailo/inference/families/ (or `familyOf` in ailo/web/src/families.js) and "
                     "look it up there:\n" + "\n".join(bad))
