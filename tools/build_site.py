"""`make site`: the book as static HTML pages that work offline (no kernel, no CDN).

Each executed chapter (with the widget state `make chapters` stores) becomes
site/NN_name.html via vbook.widgets.notebook_html, whose players are
self-contained; site/index.html lists the chapters.
"""

from __future__ import annotations

import html
import sys
from pathlib import Path

import nbformat

from vbook.widgets.player import notebook_html


def title_of(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return "untitled"


def build(chapters: list[Path], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    pages, items = [], []
    for path in sorted(chapters):
        nb = nbformat.read(path, as_version=4)
        page = out / (path.stem + ".html")
        page.write_text(notebook_html(nb), encoding="utf-8")
        pages.append(page)
        items.append(f'<li><a href="{page.name}">{html.escape(title_of(nb))}</a></li>')
    index = out / "index.html"
    index.write_text(
        "<!doctype html><meta charset='utf-8'><title>vbook</title>"
        "<h1>vbook — KVM and QEMU internals, running</h1>"
        f"<ol>{''.join(items)}</ol>\n", encoding="utf-8")
    return [index, *pages]


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "site"
    for p in build(list((root / "chapters").glob("*.ipynb")), dest):
        print(f"wrote {p}")
