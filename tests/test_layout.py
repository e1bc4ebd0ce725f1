"""The package layout rules of DESIGN.md §3, checked over every import (function-level included)."""

from __future__ import annotations

import ast
from pathlib import Path

import repackctl

ROOT = Path(repackctl.__file__).parent
STAGES = {"pack", "dit", "refine"}
# pack's network modules are pure networks (like models/): other stages may build them directly
NETWORKS = {f"repackctl.pack.{m}" for m in ("decoder", "projection", "discriminator", "losses", "autoencoder", "features")}  # fmt: skip
PURE = {"models": {"errors", "models", "kernels"}, "kernels": {"errors", "kernels"}, "transport": {"errors", "transport", "kernels"}}  # fmt: skip
NOT_FROM = {
    "cache": {
        "encoders",
        "models",
        "pack",
        "dit",
        "refine",
        "sample",
        "evaluate",
        "train",
        "extract",
    },
    "metrics": {
        "train",
        "pack",
        "dit",
        "refine",
        "sample",
        "evaluate",
        "extract",
        "convert",
        "demo",
    },
    "train": {"pack", "dit", "refine", "sample", "evaluate", "extract", "convert", "demo"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> list[tuple[str, str, int]]:
    """(importing module, imported repackctl module or module.name, line) for every import."""
    out = []
    for path in ROOT.rglob("*.py"):
        mod = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("repackctl"):
                    out.append((mod, node.module, node.lineno))
            elif isinstance(node, ast.Import):
                out += [(mod, a.name, node.lineno) for a in node.names if a.name.startswith("repackctl")]  # fmt: skip
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "repackctl"


def test_nothing_in_the_library_imports_the_cli():
    bad = [(a, b, n) for a, b, n in _imports() if _package(b) == "cli" and _package(a) not in {"cli", "__main__"}]  # fmt: skip
    assert not bad, bad


def test_no_cycles_between_packages():
    graph: dict[str, set[str]] = {}
    for a, b, _ in _imports():
        pa, pb = _package(a), _package(b)
        if pa != pb and "repackctl" not in (pa, pb):
            graph.setdefault(pa, set()).add(pb)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(f"{a} ↔ {b}" for a in graph for b in graph[a] if reaches(b, a, {b}))
    assert not cycles, cycles


def test_pure_packages_and_forbidden_edges():
    bad = []
    for a, b, line in _imports():
        pa, pb = _package(a), _package(b)
        if pa in PURE and pb not in PURE[pa] and pb != "repackctl":
            bad.append(f"{a}:{line} imports {b} ({pa} is pure)")
        if pb in NOT_FROM.get(pa, ()):
            bad.append(f"{a}:{line} imports {b}")
    assert not bad, bad


def test_stages_use_each_other_only_through_load():
    bad = []
    for a, b, line in _imports():
        pa, pb = _package(a), _package(b)
        if pa in STAGES and pb in STAGES and pa != pb:
            if not b.startswith(f"repackctl.{pb}.load") and b not in NETWORKS:
                bad.append(f"{a}:{line} imports {b}")
        if (
            a in NETWORKS
            and pb not in {"errors", "models", "kernels", "files"}
            and b not in NETWORKS
        ):
            bad.append(f"{a}:{line} imports {b} (network modules are pure)")
    assert not bad, bad


def test_no_library_function_over_80_lines():
    long = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{_module_name(path)}.{node.name}: {n}")
    assert not long, long
