"""WalkView in a real browser: the static page, and the live round trip with a fake kernel.

Optional, like tests/test_widgets_browser.py: needs playwright-python and a
system Chromium (never downloaded). The live path is the real pane and the real
Python handler: a host page like static_host.js whose ``model.send`` queues the
message, and :func:`pump` hands each one to the widget through ipywidgets'
custom-message entry point, then copies the changed state (and the replies)
back into the page — what a kernel and the widget manager do.
"""

from __future__ import annotations

import json

import pytest
from _browser import FWD, NEEDS_BROWSER, page_opener

from vbook.memory import GuestMemory
from vbook.models.ept import EptTables
from vbook.models.paging import PageTables, PteFlags
from vbook.widgets import notebook_html
from vbook.widgets.player import STATIC_HOST, WIDGET_STATE, WIDGET_VIEW
from vbook.widgets.walk import WalkView, show_ept_walk, show_walk

pytestmark = NEEDS_BROWSER

READY = ".vbook-player .vp-walk"
HOST = STATIC_HOST.read_text(encoding="utf-8")
#: static_host.js with a kernel behind it: send() queues, emit() delivers a custom message
LIVE_HOST = HOST.replace(
    "send: function () {},",
    "send: function (m) { (window.__vbookSent = window.__vbookSent || []).push(m); },\n"
    "    emit: function (evt, a) {\n"
    "      (listeners[evt] || []).slice().forEach(function (cb) { cb(a); });\n"
    "    },",
).replace("var model = {", "var model = window.__vbookModel = {")


def tables() -> tuple[GuestMemory, PageTables]:
    mem = GuestMemory(0x100000, record=False)
    pt = PageTables(mem, 0x10000)
    pt.map(0x400000, 0x3000, flags=PteFlags.RW | PteFlags.US)
    return mem, pt


def live_html(w: WalkView) -> str:
    page = w.to_html(full_page=True)
    assert LIVE_HOST != HOST and page.count(HOST) == 1
    return page.replace(HOST, LIVE_HOST)


def pump(page, w: WalkView, last: dict) -> int:
    """Deliver what the page sent to the widget, and the widget's answers to the page."""
    msgs = page.evaluate("() => { const m = window.__vbookSent || []; window.__vbookSent = []; "
                         "return m; }")
    for m in msgs:
        replies: list = []
        w.send = lambda content, buffers=None, _r=replies: _r.append(content)
        w._handle_custom_msg(m, [])
        now = json.loads(json.dumps(w.static_state()))
        changed = {k: v for k, v in now.items() if last.get(k) != v}
        last.update(now)
        page.evaluate("""([changed, replies]) => {
            const m = window.__vbookModel;
            for (const [k, v] of Object.entries(changed)) m.set(k, v);
            for (const r of replies) m.emit('msg:custom', r);
        }""", [changed, replies])
    return len(msgs)


@pytest.fixture
def opener(tmp_path):
    with page_opener(tmp_path, READY, name="walk.html") as opened:
        yield opened


def rows_cur(page) -> list[str]:
    return page.eval_on_selector_all(".vp-w-row.cur", "els => els.map(e => e.dataset.level)")


def test_static_page_steps_entry_by_entry_to_the_translation(opener):
    open_page, problems = opener
    mem, pt = tables()
    w = show_walk(mem, pt.cr3, 0x400123, "w", user=True)
    page = open_page(w.to_html(full_page=True))
    assert page.locator(".vp-w-row").count() == 4
    assert page.inner_text(".vp-title") == "x86-64 page walk of GVA 0x400123 (write, user)"
    frames = w.trace["meta"]["walk"]["frames"]
    seen = []
    for i in range(len(frames)):
        if i:
            page.click(FWD)
        assert page.get_attribute(".vbook-player", "data-step") == str(i)
        assert page.inner_text(".vp-caption-text") == frames[i]["caption"]["text"]
        cur_split = page.eval_on_selector_all(
            ".vp-w-sf.cur", "els => els.map(e => e.querySelector('.n').textContent)")
        seen.append((rows_cur(page), cur_split, page.locator(".vp-w-row.future").count()))
    assert seen == [
        (["4"], ["PML4E index"], 3), (["3"], ["PDPTE index"], 2), (["2"], ["PDE index"], 1),
        (["1"], ["PTE index"], 0), ([], ["offset"], 0)]
    assert "cur" in page.get_attribute(".vp-w-out", "class")
    assert page.inner_text(".vp-w-outhead") == "GVA 0x400123 → GPA 0x3123 (4 KiB page)"
    # the bits that allowed the user write are marked ok: U/S and R/W at every level
    ok = page.eval_on_selector_all(".vp-w-f.m-ok", "els => els.map(e => e.dataset.key)")
    assert sorted(set(ok)) == ["P", "RW", "US"] and len(ok) == 12
    assert problems == []


def test_static_bit_boxes_are_shown_but_not_clickable(opener):
    open_page, problems = opener
    mem, pt = tables()
    w = show_walk(mem, pt.cr3, 0x400123, "w", user=True, step=4)
    page = open_page(w.to_html(full_page=True))
    assert page.locator(".vp-w-f[data-edit]").count() > 0  # drawn …
    assert page.locator(".vp-w-f.can-edit").count() == 0  # … but not offered
    assert page.locator(".vp-w-f[role=button]").count() == 0
    assert "live" not in page.get_attribute(".vp-walk", "class")
    assert page.inner_text(".vp-w-status").startswith("Flipping bits needs a running kernel")
    assert page.is_disabled(".vp-w-walk") and page.is_disabled(".vp-w-reset")
    assert page.is_disabled(".vp-w-form input.vp-w-in")
    head = page.inner_text(".vp-w-outhead")
    page.click(".vp-w-row[data-level='1'] .vp-w-f[data-key='RW']")
    page.click(".vp-w-row[data-level='1'] .vp-w-f[data-key='addr']")
    assert page.inner_text(".vp-w-outhead") == head
    assert page.locator(".vp-w-f input").count() == 0  # no editor opened
    assert problems == []


def test_a_model_that_sends_but_never_hears_back_stays_static(opener):
    """JupyterLab with stored state and no kernel: the hello goes nowhere, nothing unlocks."""
    open_page, problems = opener
    mem, pt = tables()
    page = open_page(live_html(show_walk(mem, pt.cr3, 0x400123)))
    page.wait_for_function("(window.__vbookSent || []).length === 1")
    assert page.evaluate("window.__vbookSent") == [{"vbook": "walk", "kind": "hello", "id": 0}]
    # a custom message that is not the pane's (no "vbook" tag) does not unlock it either
    page.evaluate("() => window.__vbookModel.emit('msg:custom', {kind: 'hello', id: 0})")
    page.wait_for_timeout(200)
    assert page.locator(".vp-w-f.can-edit").count() == 0
    page.click(".vp-w-row[data-level='1'] .vp-w-f[data-key='P']")
    assert page.evaluate("window.__vbookSent.length") == 1  # the click asked nothing
    assert problems == []


def test_live_flip_reset_and_address_field_through_python(opener):
    open_page, problems = opener
    mem, pt = tables()
    before = bytes(mem.buf)
    w = show_walk(mem, pt.cr3, 0x400123, "w", user=True)
    last = json.loads(json.dumps(w.static_state()))
    page = open_page(live_html(w))
    page.wait_for_function("(window.__vbookSent || []).length === 1")
    assert pump(page, w, last) == 1 and w.live
    page.wait_for_selector(".vp-walk.live")
    flips = page.locator(".vp-w-row[data-level='1'] .vp-w-f.can-edit")
    assert sorted(flips.evaluate_all("els => els.map(e => e.dataset.key)")) == [
        "NX", "P", "RW", "US", "addr"]
    # flip R/W of the PTE: Python walks again, the page shows the #PF
    page.click(".vp-w-row[data-level='1'] .vp-w-f[data-key='RW']")
    assert page.inner_text(".vp-w-status") == "asking Python…"
    assert pump(page, w, last) == 1
    page.wait_for_selector(".vp-w-out[data-kind='page_fault']")
    assert page.inner_text(".vp-w-outhead") == "#PF, error code 0x7 (P|W|U), CR2 = 0x400123"
    assert page.get_attribute(".vbook-player", "data-step") == "4"
    assert page.inner_text(".vp-w-edits") == "PTE at 0x13000: R/W 1 → 0"
    assert page.get_attribute(".vp-w-row[data-level='1'] .vp-w-f[data-key='RW']", "class").count("m-bad")
    assert not page.is_disabled(".vp-w-reset")
    # a bad address-field value: the typed error, shown, nothing else changes
    page.click(".vp-w-row[data-level='2'] .vp-w-f[data-key='addr']")
    page.fill(".vp-w-row[data-level='2'] .vp-w-f input", "0x13001")
    page.press(".vp-w-row[data-level='2'] .vp-w-f input", "Enter")
    pump(page, w, last)
    page.wait_for_selector(".vp-w-status.err")
    assert "must be 4 KiB-aligned" in page.inner_text(".vp-w-status")
    assert page.inner_text(".vp-w-outhead").startswith("#PF")
    # another access kind, typed in the form: a read is allowed
    page.select_option(".vp-w-acc", "r")
    page.click(".vp-w-walk")
    pump(page, w, last)
    page.wait_for_selector(".vp-w-out[data-kind='translate']")
    assert page.inner_text(".vp-title") == "x86-64 page walk of GVA 0x400123 (read, user)"
    assert page.locator(".vp-w-status.err").count() == 0
    # the keyboard works too: Enter on a focused box flips it (U/S of the PML4E)
    page.focus(".vp-w-row[data-level='4'] .vp-w-f[data-key='US']")
    page.keyboard.press("Enter")
    pump(page, w, last)
    page.wait_for_function("document.querySelector('.vp-w-edits').children.length === 2")
    assert page.inner_text(".vp-w-outhead").startswith("#PF, error code 0x5 (P|U)")
    # reset: the first walk again
    page.click(".vp-w-reset")
    pump(page, w, last)
    page.wait_for_function("document.querySelector('.vp-title').textContent.includes('write')")
    assert page.inner_text(".vp-w-outhead") == "GVA 0x400123 → GPA 0x3123 (4 KiB page)"
    assert page.inner_text(".vp-w-edits") == "" and page.is_disabled(".vp-w-reset")
    assert w.result == w.original and bytes(mem.buf) == before
    assert problems == []


def test_live_ept_memory_type_select(opener):
    open_page, problems = opener
    host = GuestMemory(4 << 20, record=False)
    ept = EptTables(host, 0x100000)
    ept.map(0x200000, 0x300000, 0x2000, rwx=0b111)
    w = show_ept_walk(host, ept.eptp, 0x201234, "w")
    last = json.loads(json.dumps(w.static_state()))
    page = open_page(live_html(w))
    page.wait_for_function("(window.__vbookSent || []).length === 1")
    pump(page, w, last)
    page.wait_for_selector(".vp-walk.live")
    page.click(".vp-w-row[data-level='1'] .vp-w-f[data-key='MT']")
    page.select_option(".vp-w-row[data-level='1'] .vp-w-f select", "3")
    pump(page, w, last)
    page.wait_for_selector(".vp-w-out[data-kind='ept_misconfig']")
    assert page.inner_text(".vp-w-outhead") == "VM exit: EPT misconfiguration (exit 49) at the PTE"
    assert "m-bad" in page.get_attribute(".vp-w-row[data-level='1'] .vp-w-f[data-key='MT']", "class")
    page.click(".vp-w-row[data-level='1'] .vp-w-f[data-key='MT']")
    page.select_option(".vp-w-row[data-level='1'] .vp-w-f select", "6")
    pump(page, w, last)
    page.wait_for_selector(".vp-w-out[data-kind='translate']")
    page.click(".vp-w-row[data-level='1'] .vp-w-f[data-key='W']")
    pump(page, w, last)
    page.wait_for_selector(".vp-w-out[data-kind='ept_violation']")
    rows = page.locator(".vp-w-obits tr.on td.name").all_inner_texts()
    assert rows == ["write", "R", "X", "GVA valid", "translated"]
    assert problems == []


def test_notebook_html_export_plays_the_walk_offline(opener):
    nbformat = pytest.importorskip("nbformat")
    open_page, problems = opener
    mem, pt = tables()
    w = show_walk(mem, pt.cr3, 0x400123, "w", user=True)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("show_walk(mem, pt.cr3, 0x400123, 'w', user=True)")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "text/plain": repr(w), WIDGET_VIEW: {"model_id": w.model_id}})]
    nb.cells = [cell]
    nb.metadata["widgets"] = {WIDGET_STATE: {"state": {w.model_id: {"state": {
        **w.get_state(), "_esm": str(w._esm), "_css": str(w._css)}}}}}
    page = open_page(notebook_html(nb))
    for _ in range(4):
        page.click(FWD)
    assert page.inner_text(".vp-w-outhead") == "GVA 0x400123 → GPA 0x3123 (4 KiB page)"
    assert page.locator(".vp-w-f.can-edit").count() == 0
    assert not [p for p in problems if p.startswith("error")]


def test_step_render_time(opener):
    """One step of the walk pane (JS, style and layout); printed, and far under 50 ms."""
    open_page, problems = opener
    mem, pt = tables()
    page = open_page(show_walk(mem, pt.cr3, 0x400123, "w", user=True).to_html(full_page=True))
    res = page.evaluate("""async () => {
      const root = document.querySelector('.vbook-player');
      const fwd = root.querySelector(".vp-btn[title^='step forward']");
      const back = root.querySelector(".vp-btn[title^='step back']");
      const times = [];
      for (let k = 0; k < 100; k++) {
        const t0 = performance.now();
        (k % 10 < 5 ? fwd : back).click();
        root.getBoundingClientRect(); document.body.offsetHeight;
        times.push(performance.now() - t0);
        await new Promise((r) => requestAnimationFrame(() => r()));
      }
      times.sort((a, b) => a - b);
      return {median: times[50], p95: times[95], max: times[99]};
    }""")
    print("\nwalk pane step ms:", json.dumps(res))
    assert res["p95"] < 50 and problems == []


def test_a_kernel_that_goes_away_turns_the_view_static(opener):
    """After a kernel restart the comm is closed and send() throws: the view must stop
    offering its bits and say that flipping needs a running kernel (found in a live JupyterLab)."""
    open_page, problems = opener
    mem, pt = tables()
    w = show_walk(mem, pt.cr3, 0x400123, "w", user=True)
    last = json.loads(json.dumps(w.static_state()))
    page = open_page(live_html(w))
    page.wait_for_function("(window.__vbookSent || []).length === 1")
    assert pump(page, w, last) == 1
    page.wait_for_selector(".vp-walk.live")
    page.evaluate("() => { window.__vbookModel.send = () => { throw new Error('Cannot send'); }; }")
    page.click(".vp-w-row[data-level='1'] .vp-w-f[data-key='RW']")
    page.wait_for_function("!document.querySelector('.vp-walk').classList.contains('live')")
    assert page.locator(".vp-w-f.can-edit").count() == 0
    assert "flipping bits needs a running kernel" in page.inner_text(".vp-w-status")
    assert problems == []
