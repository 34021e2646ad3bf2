"""The package's shape: imports read with `ast` (function-level ones included) must follow the README's
dependency picture (two stacks on a common base, meeting in a chain of their own) and form no cycle."""
import ast
from pathlib import Path

import pytest

from conftest import REPO

PICTURE_MARK = "<!-- dependency picture: checked by tests/test_architecture.py -->"
STACKS = ("base", "physics", "infrastructure", "meeting")


def read_picture(readme: Path) -> dict[str, list[list[str]]]:
    """The README's dependency picture: per stack, its tiers in order, each a list of modules
    (names relative to spikeep; "spikeep" is the package itself)."""
    text = readme.read_text()
    assert PICTURE_MARK in text, f"{readme} has no dependency picture ({PICTURE_MARK})"
    block = text.split(PICTURE_MARK, 1)[1].split("```", 2)[1]
    stacks = {}
    for line in block.strip().splitlines():
        name, _, rest = line.partition(":")
        tiers = [["spikeep" if m == "spikeep" else f"spikeep.{m}" for m in tier.split()] for tier in rest.split(">")]
        stacks[name.strip()] = tiers
    assert tuple(stacks) == STACKS, f"the picture's stacks are {tuple(stacks)}, expected {STACKS}"
    return stacks


def layers_from(stacks: dict[str, list[list[str]]]) -> tuple[list[list[str]], dict[str, tuple[str, int]]]:
    """(one flat list of layers for the cycle and upward checks, module -> (stack, tier))."""
    where = {m: (name, i) for name, tiers in stacks.items() for i, tier in enumerate(tiers) for m in tier}
    return [tier for name in STACKS for tier in stacks[name]], where


def allowed(src: tuple[str, int], dst: tuple[str, int]) -> bool:
    (s_stack, s_tier), (d_stack, d_tier) = src, dst
    if d_stack == "base":
        return s_stack != "base" or d_tier <= s_tier
    if s_stack == "meeting":
        return d_stack != "meeting" or d_tier <= s_tier
    return s_stack == d_stack and d_tier <= s_tier


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


def place(mod: str, where: dict[str, tuple[str, int]]) -> tuple[str, int]:
    # a package whose modules the picture names one by one (the root package, training) names its own
    # __init__ only: a module missing from the picture must not fall back to it
    listed = {name for name in where if any(other.startswith(name + ".") for other in where)}
    best = max((name for name in where if mod == name or (name not in listed and mod.startswith(name + "."))),
               key=len, default=None)
    if best is None:
        raise AssertionError(f"{mod} is in no tier: add it to the dependency picture in README.md")
    return where[best]


def problems(pkg_dir: Path, stacks: dict[str, list[list[str]]]) -> list[str]:
    mods = modules(pkg_dir)
    known = set(mods)
    _, where = layers_from(stacks)
    # a package's __init__ may name its own children (re-exports): not an edge between tiers
    graph = {m: {t for t in imports(m, p, known) if not t.startswith(m + ".")} for m, p in mods.items()}
    out = []
    for m, targets in sorted(graph.items()):
        for t in sorted(targets):
            if not allowed(place(m, where), place(t, where)):
                out.append(f"import against the picture: {m} ({'/'.join(map(str, place(m, where)))}) imports {t} "
                           f"({'/'.join(map(str, place(t, where)))})")
    cycle = find_cycle(graph)
    if cycle:
        out.append("import cycle: " + " -> ".join(cycle))
    return out


def test_spikeep_imports_follow_the_readme_picture_and_form_no_cycle():
    assert problems(REPO / "spikeep", read_picture(REPO / "README.md")) == []


def test_the_picture_names_every_module_and_only_real_ones():
    stacks = read_picture(REPO / "README.md")
    _, where = layers_from(stacks)
    mods = modules(REPO / "spikeep")
    for name in where:  # every name in the picture is a module or subpackage of spikeep
        assert name in mods, f"the README's dependency picture names {name}, which does not exist"
    for m in mods:
        place(m, where)  # and every module has a place


MAX_ROOT_ENTRIES = 12


def root_entries(pkg_dir: Path) -> list[str]:
    """What a reader sees at the package root: files and folders (caches left out)."""
    return sorted(p.name for p in pkg_dir.iterdir() if p.name != "__pycache__")


def test_the_package_root_shows_the_stacks_in_at_most_twelve_entries():
    """The root holds the stacks' folders and the entry points; anything else lives inside a package."""
    entries = root_entries(REPO / "spikeep")
    assert len(entries) <= MAX_ROOT_ENTRIES, f"{len(entries)} entries at the root of spikeep/: {entries}"


def test_the_root_check_counts_files_and_folders(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "__pycache__").mkdir(parents=True)
    for i in range(MAX_ROOT_ENTRIES - 1):
        (pkg / f"m{i}.py").write_text("")
    (pkg / "sub").mkdir()
    assert len(root_entries(pkg)) == MAX_ROOT_ENTRIES  # the cache is not counted
    (pkg / "shipped.toml").write_text("")  # data files count
    assert len(root_entries(pkg)) == MAX_ROOT_ENTRIES + 1


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
    (pkg / "side.py").write_text("from .low import a\n")  # infrastructure importing physics
    stacks = {"base": [["toy"]], "physics": [["toy.low"], ["toy.high"]], "infrastructure": [["toy.side"]],
              "meeting": [["toy.mid"]]}
    found = problems(pkg, stacks)
    assert any(p.startswith("import against the picture: toy.low.a (physics/0) imports toy.high") for p in found), found
    assert any(p.startswith("import against the picture: toy.side (infrastructure/0) imports toy.low.a") for p in found)
    assert any(p.startswith("import cycle:") and "toy.mid" in p and "toy.high" in p for p in found), found
    with pytest.raises(AssertionError, match="in no tier"):
        problems(pkg, {**stacks, "base": [["toy.other"]]})  # the package itself is in none
    with pytest.raises(AssertionError, match="toy.low.a is in no tier"):  # low names its modules one by one
        problems(pkg, {**stacks, "physics": [["toy.low", "toy.low.b"], ["toy.high"]]})


def test_the_picture_is_read_from_the_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{PICTURE_MARK}\n```\nbase: spikeep config\nphysics: core > learning\n"
                      "infrastructure: data\nmeeting: trainer > cli\n```\n")
    stacks = read_picture(readme)
    assert stacks["physics"] == [["spikeep.core"], ["spikeep.learning"]] and stacks["base"][0][0] == "spikeep"


def test_no_function_over_sixty_lines():
    """Functions a reader can hold in view: none in spikeep/ runs over 60 lines (docstring included)."""
    long = []
    for mod, path in modules(REPO / "spikeep").items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{mod}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []
