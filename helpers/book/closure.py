"""Which ``helpers`` modules a chapter runs: its imports followed transitively through the package.

The runner hashes these files to decide whether an executed chapter is current, and the checkpoint
keys include the same hash (:func:`code_hash`), so a change to the code that trains retrains instead
of reusing old weights.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import nbformat

from helpers.cache import REPO_ROOT

PACKAGE = REPO_ROOT / "helpers"


def _module_file(dotted: str) -> Path | None:
    """The file of module ``helpers.a.b`` (``a/b.py`` or ``a/b/__init__.py``), or None if it is not
    one."""
    parts = dotted.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if parts and candidate.is_file():
            return candidate
    return PACKAGE / "__init__.py" if not parts else None


def _imports(code: str) -> set[str]:
    """Dotted names of the ``helpers`` modules that ``code`` imports, including ``from pkg import
    module``."""
    # IPython magics and shell escapes are not Python: blank them out, keep line numbers.
    code = "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in code.splitlines()
    )
    names: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "helpers")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.split(".")[0] == "helpers"
        ):
            names.add(node.module)
            # kept only if it is a module
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def helper_modules(code: str) -> list[Path]:
    """The files of every ``helpers`` module that ``code`` imports, followed transitively through
    the package (and the ``__init__.py`` of each package on the way), sorted."""
    found: set[Path] = set()
    todo = [code]
    while todo:
        for dotted in _imports(todo.pop()):
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):  # the package __init__ files run on import too
                path = _module_file(".".join(parts[:i]))
                if path is not None and path not in found:
                    found.add(path)
                    todo.append(path.read_text())
    return sorted(found)


def notebook_code(src: Path) -> str:
    """The code cells of notebook ``src``, joined."""
    nb = nbformat.read(src, as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def code_hash(src: Path) -> str:
    """SHA-256 over the paths and contents of the helpers modules that notebook ``src`` imports."""
    h = hashlib.sha256()
    for path in helper_modules(notebook_code(src)):
        h.update(path.relative_to(REPO_ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()
