"""QemuLoopView in a real browser: a static page, no kernel, no network.

Optional, like tests/test_widgets_browser.py: needs playwright-python and a
system Chromium, and the unicorn backend for the run it shows.
"""

from __future__ import annotations

import pytest
from _browser import NEEDS_BROWSER, page_opener

from vbook.backends import available
from vbook.guests import ALL
from vbook.models import run_loop
from vbook.widgets.qemu_loop import QemuLoopView

pytestmark = NEEDS_BROWSER


@pytest.fixture
def page(tmp_path):
    why = available()["unicorn"]
    if why:
        pytest.skip(f"unicorn backend: {why}")
    r = run_loop.run(ALL["debug_exit"], "unicorn")
    with page_opener(tmp_path, ".vbook-player .vp-q-stack", name="loop.html",
                     viewport=(1200, 900)) as (open_page, problems):
        yield open_page(QemuLoopView(r).to_html(full_page=True)), r, problems


def go(pg, i):
    pg.evaluate(f"""() => {{ const s = document.querySelector('.vp-slider');
        s.value = '{i}'; s.dispatchEvent(new Event('input')); }}""")


def test_stack_bql_exits_and_status_follow_the_step(page):
    pg, r, problems = page
    events = r.trace.events
    dev = next(i for i, e in enumerate(events) if e.actor == "device")
    go(pg, dev)
    assert pg.inner_text(".vp-q-stack li.top") == "test_iomem_write"
    assert pg.inner_text(".vp-q-bql") == "holds the BQL"
    assert pg.locator(".vp-q-exits tbody tr").count() == 4
    assert pg.inner_text(".vp-q-exits tr.cur td.fn") == "test_iomem_write"
    assert pg.inner_text(".vp-caption-text").startswith("device: test_iomem_write")
    handle = next(i for i, e in enumerate(events) if e.data.get("fn") == "kvm_handle_io")
    go(pg, handle)
    assert pg.inner_text(".vp-q-bql") == "BQL not held"
    assert pg.inner_text(".vp-q-status") == ""
    go(pg, len(events) - 1)
    assert pg.inner_text(".vp-q-status") == "isa-debug-exit: QEMU will exit with status 85"
    assert pg.inner_text(".vp-caption-text") == "QEMU stops the vCPU loop: guest-shutdown"
    assert problems == []


def test_clicking_an_exit_seeks_to_it(page):
    pg, r, problems = page
    pg.locator(".vp-q-exits tbody tr").nth(2).click()
    step = int(pg.get_attribute(".vbook-player", "data-step"))
    assert r.trace.events[step].kind == "exit" and r.trace.events[step]["phys_addr"] == 0xFE000000
    assert problems == []
