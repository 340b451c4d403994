"""``show_source``: chapters show library code instead of copying it."""

from __future__ import annotations

import html
import inspect
from typing import Any


class Source:
    """Source of a function or class; renders highlighted in Jupyter.

    The plain-text repr names the object only, so a stored notebook output
    does not change every time the library does (nbval compares text/plain).
    """

    def __init__(self, obj: Any):
        self.name = f"{obj.__module__}.{obj.__qualname__}"
        self.code = inspect.getsource(obj)
        self.file = inspect.getsourcefile(obj) or ""
        self.line = inspect.getsourcelines(obj)[1]

    def __repr__(self) -> str:
        return f"source of {self.name}"

    def __str__(self) -> str:
        return self.code

    def _repr_html_(self) -> str:
        try:
            from pygments import highlight
            from pygments.formatters import HtmlFormatter
            from pygments.lexers import PythonLexer

            body = highlight(self.code, PythonLexer(), HtmlFormatter(noclasses=True))
        except ImportError:  # pragma: no cover - pygments comes with jupyterlab
            body = f"<pre>{html.escape(self.code)}</pre>"
        return f"<div><b><code>{html.escape(self.name)}</code></b>{body}</div>"


def show_source(obj: Any) -> Source:
    """The source of ``obj`` (a function, method or class) for display."""
    return Source(obj)
