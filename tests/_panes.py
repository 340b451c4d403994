"""Checks every widget that adds a pane to the trace player shares."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vbook.widgets.player import CSS, ESM

EXPORT = "export default { render };"


def render_type_in_node(esm_source: str, tmp_path: Path) -> str:
    """Load ``esm_source`` as an ES module in node; what ``typeof default.render`` is."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the module was not loaded")
    f = tmp_path / "widget.mjs"
    f.write_text(esm_source, encoding="utf-8")
    code = f"import({json.dumps(f.as_uri())}).then(m => console.log(typeof m.default.render))"
    out = subprocess.run([node, "--input-type=module", "-e", code], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def assert_player_plus_pane(widget_cls: type, pane_js: Path, pane_css: Path, pane: str) -> None:
    """The widget's ESM is the player's with ``PANES.<pane>`` spliced in (one export, no
    imports, no URLs), and its CSS holds the player's and the pane's."""
    esm = str(widget_cls._esm)
    assert esm.count("export default") == 1
    assert re.search(rf"^PANES\.{pane} = (function\b|\w+;)", esm, re.M), f"PANES.{pane} is not set"
    assert esm.startswith(ESM.read_text(encoding="utf-8").rstrip()[: -len(EXPORT)])
    src = pane_js.read_text(encoding="utf-8")
    assert not re.search(r"^\s*import\s", src, re.M) and not re.search(r"https?://", src)
    css = str(widget_cls._css)
    assert CSS.read_text(encoding="utf-8") in css and pane_css.read_text(encoding="utf-8") in css
