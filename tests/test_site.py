"""The static site: every chapter as an offline page whose players are inlined."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import nbformat  # noqa: E402
from build_site import build  # noqa: E402

from vbook.widgets.player import WIDGET_VIEW  # noqa: E402


def test_every_chapter_becomes_an_offline_page(tmp_path):
    chapters = sorted((ROOT / "chapters").glob("*.ipynb"))
    assert chapters
    index, *pages = build(chapters, tmp_path)
    assert [p.stem for p in pages] == [c.stem for c in chapters]
    listing = index.read_text()
    for p in pages:
        assert f'href="{p.name}"' in listing
        text = p.read_text()
        # every player the chapter shows is inlined (trace, module and a tiny host) …
        nb = nbformat.read(ROOT / "chapters" / f"{p.stem}.ipynb", as_version=4)
        views = sum(WIDGET_VIEW in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
        assert views > 0 and text.count('class="vbook-state"') == views, p.name
        # … so no widget manager is loaded from the network
        assert "html-manager" not in text and "embed-amd" not in text, p.name
