"""The package's shape: imports read with `ast` (function-level ones included) must follow the layers
below, lowest first, and form no cycle. A module may import its own layer and the layers beneath it."""
import ast
from pathlib import Path

import pytest

from conftest import REPO

# The layering, written once. Each entry is a module or a subpackage (all modules below it).
LAYERS = [
    ["spikeep", "spikeep.config", "spikeep.files"],  # plain data and atomic file writes
    ["spikeep.core"],  # rate neurons, interactions, network, relaxation
    ["spikeep.learning"],  # estimators, EP on rates, BPTT, GDU, plasticity
    ["spikeep.spiking", "spikeep.hardware"],  # Norse neurons, propagation, simulator, rule; chips
    ["spikeep.data", "spikeep.runs", "spikeep.traces", "spikeep.distributed"],  # run machinery
    ["spikeep.learners", "spikeep.monitor"],  # one learner per method; finite checks, metrics
    ["spikeep.build", "spikeep.checkpoint"],  # config -> objects; training state
    ["spikeep.evaluation", "spikeep.nir_export"],
    ["spikeep.trainer"],
    ["spikeep.cli"],
]


def modules(pkg_dir: Path) -> dict[str, Path]:
    out = {}
    for p in pkg_dir.rglob("*.py"):
        parts = list(p.relative_to(pkg_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(mod: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that `mod` imports (the nearest known module of each imported name)."""
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [f"{target}.{a.name}" for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            while c and c not in known:
                c = c.rpartition(".")[0]
            if c and c != mod:
                found.add(c)
    return found


def layer_of(mod: str, layers: list[list[str]]) -> int:
    best, level = "", None
    for i, names in enumerate(layers):
        for name in names:
            if (mod == name or mod.startswith(name + ".")) and len(name) > len(best):
                best, level = name, i
    if level is None:
        raise AssertionError(f"{mod} is in no layer: add it to LAYERS in tests/test_architecture.py")
    return level


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules, or [] (depth-first search)."""
    state, stack = {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                c = visit(w)
                if c:
                    return c
        state[v] = 2
        stack.pop()
        return []

    for v in sorted(graph):
        if v not in state:
            c = visit(v)
            if c:
                return c
    return []


def problems(pkg_dir: Path, layers: list[list[str]]) -> list[str]:
    mods = modules(pkg_dir)
    known = set(mods)
    # a package's __init__ may name its own children (re-exports): not an edge between layers
    graph = {m: {t for t in imports(m, p, known) if not t.startswith(m + ".")} for m, p in mods.items()}
    out = []
    for m, targets in sorted(graph.items()):
        for t in sorted(targets):
            if layer_of(t, layers) > layer_of(m, layers):
                out.append(f"upward import: {m} (layer {layer_of(m, layers)}) imports {t} (layer {layer_of(t, layers)})")
    cycle = find_cycle(graph)
    if cycle:
        out.append("import cycle: " + " -> ".join(cycle))
    return out


def test_spikeep_imports_point_down_and_form_no_cycle():
    assert problems(REPO / "spikeep", LAYERS) == []


def test_config_is_plain_data():
    """The config package imports nothing of spikeep outside itself."""
    mods = modules(REPO / "spikeep")
    config = [m for m in mods if m == "spikeep.config" or m.startswith("spikeep.config.")]
    assert len(config) >= 2
    for m in config:
        outside = {t for t in imports(m, mods[m], set(mods)) if not t.startswith("spikeep.config")}
        assert outside == set(), (m, outside)


def test_the_check_finds_upward_imports_and_cycles(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from ..high import g\n")  # a function-level upward import
    (pkg / "high.py").write_text("from . import mid\n")
    (pkg / "mid.py").write_text("import toy.high\n")  # mid <-> high: a cycle within one layer
    found = problems(pkg, [["toy", "toy.low"], ["toy.mid", "toy.high"]])
    assert any(p.startswith("upward import: toy.low.a (layer 0) imports toy.high") for p in found), found
    assert any(p.startswith("import cycle:") and "toy.mid" in p and "toy.high" in p for p in found), found
    with pytest.raises(AssertionError, match="in no layer"):
        problems(pkg, [["toy.low"], ["toy.mid", "toy.high"]])  # the package itself is in none
