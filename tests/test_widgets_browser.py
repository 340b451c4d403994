"""The players in a real browser: a static page, no kernel, no network.

Optional: needs playwright-python and a system Chromium (Debian: apt-get install
chromium). Never downloads a browser. Step timings are printed (run with -s),
not asserted: the budget (< 50 ms a step) is checked by `make bench`.
"""

from __future__ import annotations

import json
import re

import pytest
from _browser import ARGS, BACK, CHROMIUM, FWD, NEEDS_BROWSER, PLAY, sync_playwright
from test_widgets import hand_trace

from vbook.trace import Trace
from vbook.widgets import (
    KvmRunView,
    RunLoopTimeline,
    RunView,
    TracePlayer,
    inline_widgets,
    static_html,
)
from vbook.widgets.player import WIDGET_STATE, WIDGET_VIEW, _page

pytestmark = NEEDS_BROWSER



@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def open_page(browser, tmp_path):
    """Open HTML from a file with every http(s) request refused; yields (page, problems)."""
    pages = []

    def _open(html: str, name: str = "page.html"):
        path = tmp_path / name
        path.write_text(html, encoding="utf-8")
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(f"error: {e}"))
        page.route(re.compile(r"^https?://"),
                   lambda r: (problems.append(f"fetch: {r.request.url}"), r.abort()))
        page.goto(path.as_uri())
        page.wait_for_selector(".vbook-player .vp-caption-text")
        pages.append(page)
        return page, problems

    yield _open
    for p in pages:
        p.close()


def caption(page) -> str:
    return page.inner_text(".vp-caption-text")


def test_static_page_renders_steps_and_plays_offline(open_page):
    page, problems = open_page(static_html(hand_trace()))
    assert caption(page) == "ioctl(vcpu_fd, KVM_RUN) (run 1)"
    page.click(FWD)
    assert caption(page) == "VM entry at rip 0x1000"
    page.click(FWD)
    assert caption(page) == "the guest runs from rip 0x1000, exits at rip 0x1005"
    page.click(FWD)
    assert caption(page) == "KVM_EXIT_IO out port 0x3f8 size 1 data 48 ('H')"
    assert page.get_attribute(".vbook-player", "data-step") == "3"
    table = page.inner_text(".vp-kr-table")
    assert "io.port" in table and "0x3f8" in table and "34 (0x22)" in table
    assert "2 (KVM_EXIT_IO)" in table
    page.click(FWD)
    assert caption(page).startswith("device: IO out port=0x3f8")
    page.click(BACK)
    assert caption(page).startswith("KVM_EXIT_IO out")
    # the whole run plays to the end by itself
    page.select_option(".vp-speed", "32")
    page.click(PLAY)
    page.wait_for_function("document.querySelector('.vbook-player').dataset.step === '24'",
                           timeout=10_000)
    assert caption(page) == "QEMU stops the vCPU loop: hlt"
    assert page.locator(".vp-ev.cur").count() == 1
    assert problems == []


def test_changed_fields_are_highlighted(open_page):
    page, problems = open_page(static_html(hand_trace(), KvmRunView))
    changed = lambda: page.locator(".vp-kr-table tr.changed td.fld").all_inner_texts()  # noqa: E731
    assert page.inner_text(".vp-counter").endswith("exit 1/5")
    assert "exit_reason" in changed()  # the first exit fills everything
    page.click(FWD)  # 'H' → 'i': only the data
    assert page.inner_text(".vp-counter").endswith("exit 2/5")
    assert changed() == ["data area"]
    page.click(FWD)  # OUT 0x3f8 → IN 0x60
    assert set(changed()) == {"io.direction", "io.port", "data area"}
    assert "41 'A' (filled in by user space)" in page.inner_text(".vp-kr-table")
    page.click(FWD)  # IO → MMIO
    table = page.inner_text(".vp-kr-table")
    assert "mmio.phys_addr" in table and "0xd0000000" in table and "48 (0x30)" in table
    assert problems == []


def test_several_players_share_a_page(open_page):
    t = hand_trace()
    body = static_html(t, RunLoopTimeline, full_page=False) + \
        static_html(t, KvmRunView, full_page=False, step=3)
    page, problems = open_page(_page(body, "two"))
    page.wait_for_function("document.querySelectorAll('.vbook-player').length === 2")
    caps = page.locator(".vp-caption-text").all_inner_texts()
    assert caps[0].startswith("ioctl") and caps[1].startswith("KVM_EXIT_IO out")
    page.locator(FWD).first.click()
    caps2 = page.locator(".vp-caption-text").all_inner_texts()
    assert caps2[0].startswith("VM entry") and caps2[1] == caps[1]
    assert problems == []


def test_a_trace_without_guest_events_still_crosses_the_lanes(open_page):
    page, problems = open_page(static_html(hand_trace(guest_events=False), RunLoopTimeline))
    assert page.locator(".vp-run").count() == 5  # the guest's run drawn in for every KVM_RUN
    page.click(FWD)
    assert caption(page) == "KVM_EXIT_IO out port 0x3f8 size 1 data 48 ('H')"
    assert problems == []


def test_the_base_player_lists_any_trace_and_survives_an_empty_one(open_page):
    body = static_html(hand_trace(), TracePlayer, full_page=False) + \
        static_html(Trace(), TracePlayer, full_page=False)
    page, problems = open_page(_page(body, "base"))
    page.wait_for_function("document.querySelectorAll('.vbook-player').length === 2")
    assert page.locator(".vp-events").first.locator("li").count() == 25
    page.locator(FWD).first.click()
    assert page.locator(".vp-events li.cur").first.get_attribute("data-i") == "1"
    assert page.locator(".vp-caption-text").nth(1).inner_text() == "empty trace"
    page.locator(PLAY).nth(1).click()  # nothing to play: no error
    assert problems == []


def test_inlined_notebook_export_works_offline(open_page):
    nbformat = pytest.importorskip("nbformat")
    from nbconvert import HTMLExporter

    w = RunView(hand_trace())
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("show_run(result)")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "text/plain": repr(w), WIDGET_VIEW: {"model_id": w.model_id}})]
    nb.cells = [cell]
    nb.metadata["widgets"] = {WIDGET_STATE: {"state": {w.model_id: {"state": {
        **w.get_state(), "_esm": str(w._esm), "_css": str(w._css)}}}}}
    body, _ = HTMLExporter().from_notebook_node(inline_widgets(nb))
    page, problems = open_page(body)
    page.click(".vp-ev[data-i='3']")  # a click on an event box goes there
    assert caption(page).startswith("KVM_EXIT_IO out port 0x3f8")
    # nbconvert's page itself asks CDNs for require.js / the widget manager: refused, and
    # the vbook player does not need them
    assert not [p for p in problems if p.startswith("error")]


def test_step_render_time(open_page):
    """One step of the timeline + kvm_run view, JS and layout, over a 100-exit run."""
    t = hand_trace(bytes(range(32, 127)) + b"\n")
    page, problems = open_page(static_html(t))
    res = page.evaluate("""async () => {
      const root = document.querySelector('.vbook-player');
      const fwd = root.querySelector(".vp-btn[title^='step forward']");
      const times = [];
      for (let k = 0; k < 200; k++) {
        const t0 = performance.now();
        fwd.click();
        root.getBoundingClientRect(); document.body.offsetHeight;  // style + layout
        times.push(performance.now() - t0);
        await new Promise((r) => requestAnimationFrame(() => r()));
      }
      times.sort((a, b) => a - b);
      return {median: times[100], p95: times[190], max: times[199], n: times.length};
    }""")
    print("\nstep render ms over", len(t), "events:", json.dumps(res))
    assert res["n"] == 200 and problems == []
