"""The project's source files as `ast` trees, for the tests that read the code's shape."""

from __future__ import annotations

import ast
from pathlib import Path

ATTEMPTS = 5


def parse(path: Path) -> ast.Module:
    """`ast.parse` of the file, tried again when CPython 3.11 raises its spurious "AST
    constructor recursion depth mismatch" SystemError (python/cpython#106905): the count it checks
    is the interpreter's, not the thread's, and a pytest-xdist worker has other threads (earlier
    tests' workers, `asyncio.to_thread`) that may build code from source at the same moment. Seen
    once in `make test`, failing tests/test_layers.py."""
    source = path.read_text(encoding="utf-8")
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return ast.parse(source, str(path))
        except SystemError as err:
            if "recursion depth mismatch" not in str(err) or attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")
