"""Which ``helpers`` modules a chapter runs: its imports followed transitively through the package.

The runner hashes these files to decide whether an executed chapter is current (:func:`code_hash`).
The checkpoint keys include the hash of the same files less the display-only ones
(:func:`training_code_hash`), so a change to the code that trains retrains instead of reusing old
weights, while a change to a table or figure re-executes the chapter from its cached networks.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import nbformat

from helpers.cache import REPO_ROOT

PACKAGE = REPO_ROOT / "helpers"

# Modules that only show results (figures, tables, source listings, where records live). No module
# that trains imports them (tests/test_cache_keys.py checks it), so they cannot change a network.
DISPLAY_ONLY = frozenset(
    {
        "helpers/plots.py",
        "helpers/book/display.py",
        "helpers/book/layout.py",
        "helpers/book/scorecard.py",
        "helpers/book/tables.py",
    }
)


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


def is_display_only(path: Path) -> bool:
    return path.relative_to(REPO_ROOT).as_posix() in DISPLAY_ONLY


def code_hash(src: Path, *, training_only: bool = False) -> str:
    """SHA-256 over the paths and contents of the helpers modules that notebook ``src`` imports
    (``training_only``: less the display-only modules)."""
    h = hashlib.sha256()
    for path in helper_modules(notebook_code(src)):
        if training_only and is_display_only(path):
            continue
        h.update(path.relative_to(REPO_ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def training_code_hash(src: Path) -> str:
    """The hash that enters notebook ``src``'s checkpoint keys: its helpers modules less the
    display-only ones."""
    return code_hash(src, training_only=True)
