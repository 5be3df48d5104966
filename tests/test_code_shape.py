"""The code stays readable in one sitting: no class over 400 lines, and the workflows carry no
`workflow.patched()` but those added after the last release (docs/upgrades.md), each listed here
with the release it came after."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.source_trees import parse

ROOT = Path(__file__).resolve().parent.parent
MAX_CLASS_LINES = 400
# Patch ids asked by the workflows since the last release: {patch id: "since <version>"}.
PATCHES_SINCE_RELEASE: dict[str, str] = {}


def project_files() -> list[Path]:
    skipped = {".venv", ".git", "node_modules", "build", "dist"}
    return [
        path
        for path in sorted(ROOT.rglob("*.py"))
        if not skipped.intersection(path.relative_to(ROOT).parts)
    ]


def test_no_class_is_over_400_lines() -> None:
    long = []
    for path in project_files():
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    long.append(f"{path.relative_to(ROOT)}: {node.name} ({lines} lines)")
    assert long == [], long


def test_the_workflows_ask_only_the_patches_added_since_the_release() -> None:
    asked = {}
    for path in sorted((ROOT / "workflows").glob("*.py")):
        for node in ast.walk(parse(path)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("patched", "deprecate_patch")
            ):
                patch = node.args[0] if node.args else None
                name = (
                    ast.literal_eval(patch) if isinstance(patch, ast.Constant) else ast.dump(node)
                )
                asked[name] = f"{path.name}:{node.lineno}"
    unlisted = {name: where for name, where in asked.items() if name not in PATCHES_SINCE_RELEASE}
    assert unlisted == {}, f"patches not listed in PATCHES_SINCE_RELEASE: {unlisted}"
