"""Shared set-up of the widget tests that drive Debian's chromium (never `playwright install`)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and Path(p).exists()), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

#: marks for a test (or `pytestmark`) that needs the browser: skip with the reason
NEEDS_BROWSER = [
    pytest.mark.skipif(sync_playwright is None, reason="playwright-python is not installed"),
    pytest.mark.skipif(CHROMIUM is None, reason="no system chromium (apt-get install chromium)"),
]

FWD = ".vp-btn[title^='step forward']"
BACK = ".vp-btn[title^='step back']"
PLAY = ".vp-btn[title^='play']"


@contextmanager
def page_opener(tmp_path: Path, ready: str, *, name: str = "page.html",
                viewport: tuple[int, int] = (1100, 900)) -> Iterator[tuple[Callable, list[str]]]:
    """Yield ``(open_page(html) -> page, problems)``: pages load offline; page errors and
    any attempt to fetch http(s) are collected in ``problems`` (and the fetch refused)."""
    if sync_playwright is None or CHROMIUM is None:
        pytest.skip("needs playwright-python and a system chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        problems: list[str] = []

        def open_page(html: str):
            path = tmp_path / name
            path.write_text(html, encoding="utf-8")
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.on("pageerror", lambda e: problems.append(f"error: {e}"))
            page.route(re.compile(r"^https?://"),
                       lambda r: (problems.append(f"fetch: {r.request.url}"), r.abort()))
            page.goto(path.as_uri())
            page.wait_for_selector(ready)
            return page

        try:
            yield open_page, problems
        finally:
            browser.close()


def seek(page, step: int, limit: int = 300) -> None:
    """Click 'step forward' until the player shows event ``step``."""
    for _ in range(limit):
        if page.get_attribute(".vbook-player", "data-step") == str(step):
            return
        page.click(FWD)
    raise AssertionError(f"never reached step {step}")
