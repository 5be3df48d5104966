"""The project's modules import one way, down its layers, and never in a circle.

The layers, bottom first. A module may import its own layer and the layers below it, never one
above; and no import chain, in a layer or across, comes back to where it started.

0. The vocabulary: `workflows/ids.py` (task queues, workflow and update ids), `durations.py` and
   `messages.py` (the types the API, the workflows and the activities exchange). Pure data and
   pure functions that import nothing of the project, so that every layer above may name them.
   They stay in workflows/, whose processes they describe, and are placed here by name.
1. Settings and plumbing: config.py, logs.py, codec.py, temporal_credentials.py. They know the
   vocabulary and nothing else: a setting never reaches into the code it configures.
2. activities/: the outside world (the warehouse, the marketplace).
3. workflows/: the order's and a SKU's durable processes, which import the activities to name
   them (through `imports_passed_through`).
4. The client side: api/, worker.py, temporal_client.py, change_relay.py: what starts, signals,
   updates and runs the workflows.
5. Tools: devtools/ (what people run), bench/, tests/.

Every import counts: at the top of a module, inside a function, under `if TYPE_CHECKING:` (a
type named from a layer above is a dependency on it all the same, and mypy follows it). Importing
`workflows.ids` runs `workflows/__init__.py` too; packages' `__init__.py` import nothing of the
project (checked below), so the edge is counted to `workflows.ids` alone. Static only (`ast`):
nothing is imported, no Temporal.
"""

from __future__ import annotations

import ast
import os
from functools import cache
from pathlib import Path

from tests.source_trees import parse

ROOT = Path(__file__).resolve().parent.parent
# Not the project's own Python: hidden folders (the venv, caches) and what builds leave behind.
SKIPPED_DIRS = {"build", "dist", "__pycache__"}

VOCABULARY = {"workflows.ids", "workflows.durations", "workflows.messages"}
# Bottom first: (layer, the modules it holds: exact names, or `name.` for a package's modules).
LAYERS: list[tuple[str, set[str]]] = [
    ("vocabulary", VOCABULARY),
    ("settings and plumbing", {"config", "logs", "codec", "temporal_credentials"}),
    ("activities", {"activities", "activities."}),
    ("workflows", {"workflows", "workflows."}),
    (
        "client",
        {"api", "api.", "worker", "temporal_client", "change_relay"},
    ),
    ("tools", {"devtools", "devtools.", "bench", "bench.", "tests", "tests."}),
]


@cache
def project_modules() -> dict[str, Path]:
    """Every project module's dotted name and file."""
    modules = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS]
        for name in files:
            if name.endswith(".py"):
                path = Path(folder, name)
                parts = list(path.relative_to(ROOT).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                modules[".".join(parts)] = path
    return modules


def layer_of(module: str) -> int:
    """The index of the module's layer in LAYERS (the first that names it)."""
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".") and module.startswith(member)):
                return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")


def imported_names(module: str, path: Path) -> set[str]:
    """The dotted names a module imports, relative imports resolved; `from a import b` gives
    `a.b` (a module, or a name in `a`)."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@cache
def import_graph() -> dict[str, set[str]]:
    """Each project module and the project modules it imports."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(module, path):
            parts = name.split(".")
            # The longest prefix that is a project module: `a.b.c` may be module a.b's name c.
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in modules:
                    if candidate != module:
                        targets.add(candidate)
                    break
        graph[module] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
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
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, set(component)) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A path inside a strongly connected component from its first module back to it."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for target in sorted(graph[node] & component):
            if target == start:
                return [*paths[node], start]
            if target not in paths:
                paths[target] = [*paths[node], target]
                frontier.append(target)
    raise AssertionError(f"no cycle in {sorted(component)}")


def test_every_module_has_a_layer() -> None:
    for module in project_modules():
        layer_of(module)


def test_packages_import_nothing_of_the_project() -> None:
    packages = {m: p for m, p in project_modules().items() if p.name == "__init__.py"}
    importing = {m: sorted(import_graph()[m]) for m in packages if import_graph()[m]}
    assert not importing, f"packages' __init__.py importing project modules: {importing}"


def test_no_import_circle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_from_a_layer_above() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "imports from a layer above:\n" + "\n".join(upward)
