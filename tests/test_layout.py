"""The package's layout: imports inside ``shmooze/`` point one way, from the public API down to
the operating-system layer, and never round in a cycle.

Every import counts, also one inside a function (a lazy import still ties two modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "shmooze"

#: The layers, lowest first. A module may import only from its own layer or one below. A layer is
#: named by module paths (a subpackage stands for every module in it).
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["errors", "protocol", "polling", "events", "caller", "restart", "moduletype", "registry", "settings",
                    "commands", "modules", "lib.packet"]),
    ("operating system", ["system"]),
    ("service key", ["servicekey"]),
    ("HTTP", ["http"]),
    ("coordination", ["cluster"]),
    ("services and clients", ["service", "client", "access"]),
    ("hosting modules", ["hosting"]),
    ("queue and pool", ["queue", "pool"]),
    ("deployment", ["deploy"]),
    ("gateway", ["gateway"]),
    ("serving", ["serve"]),
    ("command line", ["cli", "__main__"]),
    ("test kit", ["testing"]),
    # The original framework's service API (shmooze.lib.service) runs on the services, the client and
    # the access checks; lib.packet, which modules import, stays in the foundation.
    ("original API", ["lib"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The modules of ``shmooze`` that the file at ``path`` imports (names relative to the package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("shmooze."):
                relative = name.removeprefix("shmooze.")
                # `from shmooze.system import procutil` imports the submodule; `from shmooze.errors
                # import X` the module
                if relative in known:
                    found.add(relative)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    # a package's __init__ is imported on the way to any submodule: count only the submodules
    return {name: imports_of(path, known) - {name} - {n for n in known if n != name and name.startswith(n + ".")}
            for name, path in files.items() if name}


def layer_of(module: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return index
    raise AssertionError(f"shmooze.{module} is in no layer: add it to LAYERS in {__file__}")


def test_every_module_has_a_layer() -> None:
    for module in graph():
        layer_of(module)


def test_imports_point_down_the_layers() -> None:
    upward = [f"shmooze.{module} ({LAYERS[layer_of(module)][0]}) imports shmooze.{target} ({LAYERS[layer_of(target)][0]})"
              for module, targets in sorted(graph().items()) for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_readme_layout_names_every_module() -> None:
    section = (PACKAGE.parent / "docs" / "layout.md").read_text()
    missing = [name for name in graph() if "." in name and f"`{name.rsplit('.', 1)[1]}`" not in section]
    missing += [f"{name}/" for name in {n.split(".")[0] for n in graph() if "." in n} if f"`shmooze/{name}/`" not in section]
    assert not missing, f"docs/layout.md does not name: {missing}"
