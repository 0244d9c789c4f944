"""The shape of the code, as claims that fail on the first import that breaks it.

ftl installs as one namespace (`ftl.launcher`, `ftl.tune`, `ftl.cluster`) and its modules import one way, from
the recipe up to the command line (docs/architecture.md draws the layers):

    base -> recipe -> track -> data | model -> tasks -> train -> distributed -> run -> apps -> tune -> cluster -> cli

Every import counts, also one inside a function: an import that only moves into a function still ties the two
modules together. An import inside a function is kept only where it delays loading a heavy library (torch,
transformers, ray, ...) that the importing module does not load already, so `ftl --help` and `ftl check` stay
fast; anything else belongs at the top of the module.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"launcher": "ftl.launcher", "tune": "ftl.tune", "cluster": "ftl.cluster"}

# Bottom to top; a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "ftl.launcher",  # the package itself: its version
            "ftl.launcher.errors",
            "ftl.launcher.console",
            "ftl.launcher.secrets",
            "ftl.launcher.locations",
            "ftl.launcher.files",
            "ftl.launcher.markdown",
            "ftl.launcher.token_labels",
        ),
    ),
    ("recipe", ("ftl.launcher.recipe",)),
    ("track", ("ftl.launcher.track",)),
    ("data | model", ("ftl.launcher.data", "ftl.launcher.model")),
    ("tasks", ("ftl.launcher.tasks",)),
    ("train", ("ftl.launcher.train",)),
    ("distributed", ("ftl.launcher.distributed",)),
    ("run", ("ftl.launcher.run",)),
    (
        "apps",
        (
            "ftl.launcher.use",
            "ftl.launcher.bench",
            "ftl.launcher.plan",
            "ftl.launcher.plan_report",
            "ftl.launcher.check",
            "ftl.launcher.export",
            "ftl.launcher.flops",
        ),
    ),
    ("tune", ("ftl.tune",)),
    ("cluster", ("ftl.cluster",)),
    (
        "cli",
        ("ftl.launcher.cli", "ftl.launcher.cli_types", "ftl.launcher.use.commands", "ftl.cluster.commands"),
    ),
]
# Packages of one layer that must not know each other.
INDEPENDENT = [("ftl.launcher.data", "ftl.launcher.model")]
# Libraries whose import costs noticeable time or memory: only these justify an import inside a function.
HEAVY = {
    "accelerate",
    "bitsandbytes",
    "datasets",
    "deepspeed",
    "matplotlib",
    "mlflow",
    "optuna",
    "pandas",
    "peft",
    "pyarrow",
    "ray",
    "rouge_score",
    "seqeval",
    "sklearn",
    "tensorboard",
    "torch",
    "transformers",
    "trl",
    "wandb",
}


@dataclass
class Module:
    name: str
    path: Path
    top: set[str] = field(default_factory=set)  # ftl modules imported at module level
    inner: dict[str, int] = field(default_factory=dict)  # ftl modules imported inside functions -> line
    heavy: set[str] = field(default_factory=set)  # heavy libraries imported at module level


@cache
def modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            name = ".".join([package, *parts])
            found[name] = Module(name, path)
    for module in found.values():
        _read_imports(module, found)
    return found


def _read_imports(module: Module, known: dict[str, Module]) -> None:
    tree = ast.parse(module.path.read_text(encoding="utf-8"))

    def owner(name: str) -> str | None:  # the ftl module a dotted name lives in
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                # `from package import module` imports that module; `from module import name`, the module
                names = [
                    f"{child.module}.{alias.name}"
                    if f"{child.module}.{alias.name}" in known
                    else child.module
                    for alias in child.names
                ]
            for name in names:
                root = name.split(".")[0]
                if root == "ftl":
                    target = owner(name)
                    if target is None or target == module.name:
                        continue
                    if nested:
                        module.inner.setdefault(target, child.lineno)
                    else:
                        module.top.add(target)
                elif root in HEAVY and not nested:
                    module.heavy.add(root)
            visit(child, nested)

    visit(tree, False)
    for target in module.top:  # imported at the top anyway
        module.inner.pop(target, None)


def layer_of(name: str) -> int:
    best, depth = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = index, len(prefix)
    return best


@cache
def loads_at_import(name: str) -> frozenset[str]:
    """Heavy libraries that importing this module loads (through its own top-level imports)."""
    seen, todo, heavy = {name}, [name], set()
    while todo:
        module = modules()[todo.pop()]
        heavy |= module.heavy
        for target in module.top:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return frozenset(heavy)


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module in modules().values():
        graph[module.name] |= module.top | set(module.inner)
    return graph


def short(name: str) -> str:
    return name.removeprefix("ftl.")


# ---- one namespace ----------------------------------------------------------------------------


def test_every_package_folder_is_installed_under_the_ftl_namespace():
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert settings["package-dir"] == {f"ftl.{folder}": folder for folder in FOLDERS}
    folders = {
        ".".join([FOLDERS[init.relative_to(REPO).parts[0]], *init.relative_to(REPO).parent.parts[1:]])
        for folder in FOLDERS
        for init in (REPO / folder).rglob("__init__.py")
    }
    assert set(settings["packages"]) == folders, "a package folder is missing from pyproject's packages"


def test_no_module_imports_a_bare_top_level_name():
    bare = [
        f"{module.path.relative_to(REPO)}:{node.lineno}"
        for module in modules().values()
        for node in ast.walk(ast.parse(module.path.read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and any(
            name.split(".")[0] in FOLDERS
            for name in (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            )
        )
        and not (isinstance(node, ast.ImportFrom) and node.level)
    ]
    assert bare == [], "import ftl.launcher/ftl.tune/ftl.cluster, not the folder names"


def test_the_installed_package_imports_from_outside_the_repository(tmp_path):
    import subprocess

    code = "import ftl.launcher.cli, ftl.tune.search, ftl.cluster.submit; print(ftl.launcher.cli.__name__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ftl.launcher.cli"


# ---- one direction ----------------------------------------------------------------------------


def test_every_module_has_a_layer():
    assert [name for name in modules() if layer_of(name) < 0] == []


def test_imports_form_no_cycle():
    graph = edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(short(c) for c in component))

    for name in modules():
        if name not in index:
            connect(name)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_layers_import_only_their_own_layer_or_lower_ones():
    upward = [
        f"{short(source)} ({LAYERS[layer_of(source)][0]}) imports {short(target)} ({LAYERS[layer_of(target)][0]})"
        for source, targets in edges().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(source)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize(("one", "other"), INDEPENDENT)
def test_sibling_packages_do_not_know_each_other(one, other):
    def within(name: str, package: str) -> bool:
        return name == package or name.startswith(package + ".")

    crossing = [
        f"{short(source)} imports {short(target)}"
        for source, targets in edges().items()
        for target in targets
        if (within(source, one) and within(target, other)) or (within(source, other) and within(target, one))
    ]
    assert not crossing, "\n".join(crossing)


def test_imports_inside_functions_only_delay_heavy_libraries():
    needless = [
        f"{module.path.relative_to(REPO)}:{line}: {short(target)} loads nothing heavy that "
        f"{short(module.name)} does not load already; import it at the top"
        for module in modules().values()
        for target, line in sorted(module.inner.items())
        if not loads_at_import(target) - loads_at_import(module.name)
    ]
    assert not needless, "\n".join(needless)


def test_the_command_line_starts_without_the_training_libraries():
    import subprocess

    code = f"import sys, ftl.launcher.cli; print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
