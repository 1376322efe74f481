"""Notebook display helpers: show the source of the method a chapter teaches, show tables."""

from __future__ import annotations

import inspect


def show_source(*objects) -> None:
    """Display the source code of functions/classes with syntax highlighting (plain text outside
    Jupyter)."""
    text = "\n\n".join(inspect.getsource(o).rstrip() for o in objects)
    try:
        from IPython import get_ipython
        from IPython.display import Code, display

        if get_ipython() is not None:
            display(Code(text, language="python"))
            return
    except ImportError:  # pragma: no cover
        pass
    print(text)
