"""ShadowSyncView: what Python hands the browser must be the shadow MMU's own state, event by event.

The scenarios are those of tests/test_shadow.py (touch N pages; rewrite a leaf PTE
K times → unsync; write the page directory the writer runs on → emulated PTE
writes; write an unused one → flooded). After every operation the view's state at
the last event is compared with the live model. The browser tests need
playwright-python and a system Chromium, and skip without them.
"""

from __future__ import annotations

import json

import pytest
from _browser import NEEDS_BROWSER, page_opener, seek
from _panes import assert_player_plus_pane, render_type_in_node
from test_shadow import CODE, DATA, FAR, FAR_GPA, OTHER, Guest, _rewrite_leaf_pte

from vbook.errors import TraceError
from vbook.memory import GuestMemory
from vbook.models.paging import PAGE_SIZE, SIZE_2M, PageTables, PteFlags
from vbook.models.shadow import ACC_EXEC_MASK, ACC_USER_MASK, ACC_WRITE_MASK, KvmMmuPage, ShadowMmu
from vbook.trace import Trace
from vbook.widgets import static_html
from vbook.widgets.shadow import (
    COUNTERS,
    KERNEL,
    PANE_CSS,
    PANE_JS,
    ShadowRecorder,
    ShadowSyncView,
    shadow_view,
    show_shadow,
)

P, RW, US = PteFlags.P, PteFlags.RW, PteFlags.US


def recorded_guest(**kw) -> Guest:
    """test_shadow's guest, its MMU recorded by a ShadowRecorder (same tables, same memory)."""
    g = Guest(**kw)
    g.mmu = ShadowMmu(g.mem, g.pt.cr3, trace=ShadowRecorder())
    return g


def rights(acc: int) -> str:
    return " ".join(["W" if acc & ACC_WRITE_MASK else "RO", "U" if acc & ACC_USER_MASK else "S",
                     "X" if acc & ACC_EXEC_MASK else "NX"])


def model_state(g: Guest) -> dict:
    """The live model, in the shape ShadowSyncView.state_at gives."""
    rec: ShadowRecorder = g.mmu.trace
    name = {id(sp): f"SP#{k + 1}" for k, sp in enumerate(rec.pages)}
    sps = {}
    for sp in g.mmu.mmu_page_hash.values():
        sptes = {i: f"→ {name[id(e)]}" if isinstance(e, KvmMmuPage) else f"gfn {e.gfn:#x} {rights(e.access)}"
                 for i, e in sp.spt.items()}
        cls = "direct" if sp.role.direct else "unsync" if sp.unsync else "sync"
        sps[name[id(sp)]] = (sp.gfn, cls, sptes)
    return {"counters": g.mmu.stats(), "sps": sps}


def view_sps(state: dict) -> dict:
    """Every shadow page shown alive at a step: name -> (gfn, cls, sptes), like model_state."""
    out = {}
    for title, card in state["cards"].items():
        gfn = int(title.split("gfn ")[1].rstrip(")"), 16) if "(gfn " in title else \
            int(title.split("GPA ")[1], 16) >> 12
        for sp_name, sp in card["sps"].items():
            if not sp["cls"].startswith("zapped"):
                out[sp_name] = (gfn, sp["cls"], sp["sptes"])
    return out


class Checked:
    """Run operations on a recorded guest; after each, note the model's state at the last event."""

    def __init__(self, g: Guest):
        self.g = g
        self.marks: list[tuple[int, dict, dict[int, int]]] = []
        self.mark()

    def mark(self) -> None:
        g = self.g
        rec: ShadowRecorder = g.mmu.trace
        frames = {sp.gfn for sp in rec.pages if sp.has_gptes}
        gptes = {gfn: [g.mem.read_u64(gfn * PAGE_SIZE + 8 * j) for j in range(512)] for gfn in frames}
        self.marks.append((len(rec.events) - 1, model_state(g), gptes))

    def __call__(self, fn, *a, **kw):
        out = fn(*a, **kw)
        self.mark()
        return out

    def verify(self) -> ShadowSyncView:
        w = ShadowSyncView(self.g.mmu)
        for step, model, gptes in self.marks:
            st = w.state_at(step)
            assert st["counters"] == model["counters"], step
            assert view_sps(st) == model["sps"], step
            for title, card in st["cards"].items():
                if title.startswith("guest "):
                    gfn = int(title.split("(gfn ")[1].rstrip(")"), 16)
                    for j, v in card["gptes"].items():
                        assert int(v, 16) == gptes[gfn][j], (step, title, j)
        return w


# --- the scenarios, checked against the live model after every operation ------------------

def test_touch_n_pages():
    g = recorded_guest()
    run = Checked(g)
    run(g.mmu.access, CODE, "x", user=True)
    for i in range(4):
        run(g.mmu.write, DATA + i * PAGE_SIZE, 0xAB, size=1, user=True)
    for i in range(4):                                      # the second pass: no exit
        run(g.mmu.write, DATA + i * PAGE_SIZE, 0xCD, size=1, user=True)
    w = run.verify()
    end = w.state_at(len(g.mmu.trace.events) - 1)
    assert end["counters"]["pf_fixed"] == 5 and end["counters"]["pages_4k"] == 5
    titles = list(end["cards"])
    assert titles == ["guest PML4 at GPA 0x1000 (gfn 0x1)", "guest PDPT at GPA 0x2000 (gfn 0x2)",
                      "guest PD at GPA 0x3000 (gfn 0x3)", "guest PT at GPA 0x4000 (gfn 0x4)"]
    pt = end["cards"][titles[3]]["sps"]["SP#4"]
    assert pt["cls"] == "sync" and "write-protected" in pt["state"]
    assert pt["sptes"] == {16: "gfn 0x10 RO U X", 32: "gfn 0x20 W U X", 33: "gfn 0x21 W U X",
                           34: "gfn 0x22 W U X", 35: "gfn 0x23 W U X"}
    assert "root (CR3)" in end["cards"][titles[0]]["sps"]["SP#1"]["state"]
    # the A/D bits KVM's walk set in the guest PTEs are shown, next to each spte
    ad = PteFlags.A | PteFlags.D
    assert int(end["cards"][titles[3]]["gptes"][32], 16) & ad == ad
    # the shadow pages appear when new_shadow_page happens; the first PT spte with its set_spte
    events = g.mmu.trace.events
    view = w.view
    born = [c["born"] for c in view["cards"]]
    assert [events[i].kind for i in born] == ["new_shadow_page"] * 4
    first_spte = next(i for i, e in enumerate(events) if e.kind == "set_spte")
    assert 16 not in w.state_at(first_spte - 1)["cards"][titles[3]]["sps"]["SP#4"]["sptes"]
    assert w.state_at(first_spte)["cards"][titles[3]]["sps"]["SP#4"]["sptes"][16] == "gfn 0x10 RO U X"
    assert repr(w) == (f"ShadowSyncView(trace='shadow paging', {len(events)} events, 5 #PF exits, "
                       "4 shadow pages)")


def test_rewrite_a_leaf_pte_unsyncs_then_cr3_and_invlpg_resync():
    g = recorded_guest()
    run = Checked(g)
    run(g.mmu.access, CODE, "x", user=True)
    value = FAR_GPA | P | RW | US
    for _ in range(3):
        run(g.mmu.write, g.far_pte, value, user=True)
        run(g.mmu.write, FAR, 0x55, size=1, user=True)
    run(g.mmu.write, g.far_pte, (FAR_GPA + PAGE_SIZE) | P | RW | US | PteFlags.A | PteFlags.D, user=True)
    run(g.mmu.invlpg, FAR)
    run(g.mmu.load_cr3, g.pt.cr3)
    w = run.verify()
    events = g.mmu.trace.events
    pt_gfn = g.far_pte >> 12
    title = f"guest PT at GPA {pt_gfn * PAGE_SIZE:#x} (gfn {pt_gfn:#x})"
    unsync = next(i for i, e in enumerate(events) if e.kind == "unsync")
    before, at = w.state_at(unsync - 1)["cards"][title], w.state_at(unsync)["cards"][title]
    (sp,) = at["sps"]
    assert before["sps"][sp]["cls"] == "sync" and at["sps"][sp]["cls"] == "unsync"
    assert "frame writable" in at["sps"][sp]["state"]
    assert w.view["moved"][str(unsync)] == [["mmu_unsync", 1]]
    # the guest's own mapping of the frame: read-only while synced, writable once unsync
    card = next(c for c in w.view["cards"] if c["title"] == title)
    maps = [m for m in card["frame"] if m[0] <= unsync + 3]
    assert maps[-1][1].endswith("writable")
    assert any(m[1].endswith("read-only") for m in card["frame"])
    # the CR3 load syncs it: synced, write-protected again
    end = w.state_at(len(events) - 1)["cards"][title]["sps"][sp]
    assert end["cls"] == "sync" and g.mmu.stats()["mmu_unsync"] == 0
    # INVLPG re-read the new gpte: FNAME(invlpg)'s prefetch moved the spte of FAR to the next frame
    inv = next(i for i, e in enumerate(events) if e.kind == "invlpg")
    assert events[inv + 1].kind == "set_spte" and events[inv + 1]["prefetch"]
    assert w.state_at(inv)["cards"][title]["sps"][sp]["sptes"][0] == f"gfn {FAR_GPA >> 12:#x} W U X"
    assert w.state_at(inv + 1)["cards"][title]["sps"][sp]["sptes"][0] == f"gfn {(FAR_GPA >> 12) + 1:#x} W U X"


def test_writing_own_page_directory_is_emulated_every_time():
    g = recorded_guest()
    run = Checked(g)
    run(g.mmu.access, CODE, "x", user=True)
    for _ in range(3):
        run(g.mmu.write, g.pd_low + 8 * 2, 0x8000 | P | RW | US, user=True)
    w = run.verify()
    events = g.mmu.trace.events
    pte_writes = [i for i, e in enumerate(events) if e.kind == "pte_write"]
    assert len(pte_writes) == 3
    for i in pte_writes:
        assert sorted(w.view["moved"][str(i)]) == [["mmu_pde_zapped", 1], ["mmu_pte_write", 1]]
    emulates = [i for i, e in enumerate(events) if e.kind == "emulate"]
    title = f"guest PD at GPA {g.pd_low:#x} (gfn {g.pd_low >> 12:#x})"
    card = next(c for c in w.view["cards"] if c["title"] == title)
    row = card["rows"].index(2)
    # the guest's store lands with the emulate event; the directory is never flooded
    assert card["gptes"][row][1][0] == emulates[0] and card["gptes"][row][1][1] == hex(0x8000 | P | RW | US)
    assert all(s[2] == "sync" for s in card["sps"][0]["state"])
    assert any("write_flooding_count" not in s[1] for s in card["sps"][0]["state"])
    assert g.mmu.stats()["mmu_flooded"] == 0


def test_writing_an_unused_page_directory_floods_it():
    g = recorded_guest()
    run = Checked(g)
    run(g.mmu.access, CODE, "x", user=True)
    run(g.mmu.access, OTHER, "r", user=True)
    for _ in range(5):
        run(g.mmu.write, g.pd_other + 8 * 5, 0x9000 | P | RW | US, user=True)
    w = run.verify()
    events = g.mmu.trace.events
    title = f"guest PD at GPA {g.pd_other:#x} (gfn {g.pd_other >> 12:#x})"
    zap = next(i for i, e in enumerate(events) if e.kind == "zap_page")
    flood = next(i for i, e in enumerate(events) if e.kind == "flooded")
    assert flood == zap + 1
    (sp,) = w.state_at(zap)["cards"][title]["sps"]
    states = [w.state_at(i)["cards"][title]["sps"][sp] for i in (zap - 1, zap, flood)]
    assert [s["cls"] for s in states] == ["sync", "zapped", "zapped flooded"]
    assert "write_flooding_count 2" in states[0]["state"]
    # kvm_mmu_pte_write counts the write before it finds the page flooded and zaps it
    assert w.view["moved"][str(zap)] == [["mmu_pte_write", 1], ["mmu_shadow_zapped", 1]]
    assert w.view["moved"][str(flood)] == [["mmu_flooded", 1]]
    assert states[1]["sptes"] == {}
    # the guest's later stores still show in its table: the frame is not tracked any more
    last = w.state_at(len(events) - 1)["cards"][title]
    assert last["gptes"][5] == hex(0x9000 | P | RW | US)
    assert g.mmu.stats()["mmu_flooded"] == 1


def test_a_guest_large_page_gets_a_direct_card():
    mem = GuestMemory(0x400000, record=False)
    pt = PageTables(mem, 0x1000, alloc_limit=0x10000)
    pt.map(0, 0, SIZE_2M, flags=RW | US)
    mmu = ShadowMmu(mem, pt.cr3, trace=ShadowRecorder(title="2 MiB"))
    mmu.write(0x123456, 7, size=1, user=True)
    mmu.access(0x124000, "r", user=True)
    w = show_shadow(mmu)
    direct = [c for c in w.view["cards"] if c["kind"] == "direct"]
    assert len(direct) == 1 and direct[0]["title"] == "direct shadow page: the guest's 2 MiB page at GPA 0x0"
    st = w.state_at(len(mmu.trace.events) - 1)["cards"][direct[0]["title"]]
    (sp,) = st["sps"].values()
    # the 2 MiB gpte is dirty after the write, so the read maps the second page writable too
    assert sp["cls"] == "direct" and sp["sptes"] == {0x123: "gfn 0x123 W U X", 0x124: "gfn 0x124 W U X"}
    assert mmu.lookup(0x124000).writable
    assert st["gptes"] == {}                                # no guest table behind a direct page


def test_a_zapped_pde_unlinks_the_child_which_stays_in_the_hash():
    g = recorded_guest()
    run = Checked(g)
    run(g.mmu.access, CODE, "x", user=True)
    run(g.mmu.access, FAR, "r", user=True)
    pde = g.pt.walk(FAR).steps[2].entry_addr
    run(g.mmu.write, pde, g.mem.read_u64(pde), user=True)
    w = run.verify()
    pt_gfn = g.far_pte >> 12
    title = f"guest PT at GPA {pt_gfn << 12:#x} (gfn {pt_gfn:#x})"
    st = w.state_at(len(g.mmu.trace.events) - 1)["cards"][title]
    (sp,) = st["sps"].values()
    assert "unlinked (still in the hash)" in sp["state"] and sp["sptes"]
    run(g.mmu.access, FAR, "r", user=True)                 # relinked: RET_PF_SPURIOUS
    run.verify()


# --- the recorder ---------------------------------------------------------------------------

def _scenario(mmu: ShadowMmu, g: Guest) -> None:
    mmu.access(CODE, "x", user=True)
    mmu.write(DATA, 1, size=1, user=True)
    _rewrite_leaf_pte(g, 2)
    mmu.access(OTHER, "r", user=True)
    for _ in range(4):
        mmu.write(g.pd_other + 40, 0x9000 | P | RW | US, user=True)
    mmu.load_cr3(g.pt.cr3)


def test_the_recorder_records_the_same_events_and_finds_its_mmu():
    plain, rec = Guest(), recorded_guest()
    _scenario(plain.mmu, plain)
    _scenario(rec.mmu, rec)
    assert rec.mmu.trace.freeze() == plain.mmu.trace.freeze()
    assert rec.mmu.trace.mmu is rec.mmu
    assert len(rec.mmu.trace.counters) == len(rec.mmu.trace.events)
    # the counters after every pf_result are the ones the model put into that event
    w = ShadowSyncView(rec.mmu)
    for i, e in enumerate(rec.mmu.trace.events):
        if e.kind == "pf_result":
            assert w.state_at(i)["counters"] == {k: e[k] for k in COUNTERS}
    assert w.state_at(len(rec.mmu.trace.events) - 1)["counters"] == rec.mmu.stats()
    assert set(w.view["counters"]) == set(rec.mmu.stats())
    assert w.view["counters"][:2] == ["pf_taken", "pf_fixed"]
    assert set(w.view["kinds"]) == {e.kind for e in rec.mmu.trace.events}
    assert all(w.view["kinds"][k]["fn"] == KERNEL[k][0] for k in w.view["kinds"])


def test_the_recorder_does_not_touch_the_memory_log():
    def run(trace):
        mem = GuestMemory(0x100000)                          # record=True
        pt = PageTables(mem, 0x1000, alloc_limit=0x10000)
        for gpa in range(0, 0x40000, PAGE_SIZE):
            pt.map(gpa, gpa, flags=RW | US)
        mem.clear_log()
        mmu = ShadowMmu(mem, pt.cr3, trace=trace)
        mmu.access(0x10000, "x", user=True)
        mmu.write(0x5000, 0, user=True)
        mmu.write(0x20000, 3, size=1, user=True)
        return mem.accesses
    assert run(ShadowRecorder()) == run(None)


def test_bind_and_a_recorder_that_never_met_its_mmu():
    g = Guest()
    rec = ShadowRecorder(title="late")
    rec.emit("guest", "note", "before the MMU")               # no ShadowMmu calls this
    rec.bind(g.mmu)
    g.mmu.trace = rec
    g.mmu.access(CODE, "x", user=True)
    w = ShadowSyncView(rec)
    assert w.state_at(0)["counters"] == w.state_at(1)["counters"]
    assert w.state_at(len(rec.events) - 1)["counters"] == g.mmu.stats()


def test_a_plain_mmu_or_trace_shows_the_counters_only():
    g = Guest()
    _scenario(g.mmu, g)
    w = ShadowSyncView(g.mmu)
    assert not w.view["recorded"] and w.view["cards"] == []
    assert repr(w).endswith(", counters only)")
    events = g.mmu.trace.events
    for i, e in enumerate(events):
        if e.kind == "pf_result":
            assert w.state_at(i)["counters"] == {k: e[k] for k in COUNTERS}
    assert repr(ShadowSyncView(g.mmu.trace.freeze())) == repr(w)
    assert ShadowSyncView(g.mmu.trace).view == w.view


def test_the_widgets_own_trace_shows_again_and_round_trips():
    g = recorded_guest()
    _scenario(g.mmu, g)
    w = ShadowSyncView(g.mmu)
    again = ShadowSyncView(w.get_trace())
    assert again.view == w.view and repr(again) == repr(w)
    assert Trace.from_json(json.dumps(w.trace)) == w.get_trace()
    assert w.get_trace().events == g.mmu.trace.freeze().events
    w.set_trace(Guest().mmu)
    assert w.step == 0 and not w.view["recorded"]
    with pytest.raises(TraceError, match="Trace"):
        ShadowSyncView(42)


def test_64_bit_guest_entries_stay_exact():
    g = recorded_guest()
    g.mmu.access(CODE, "x", user=True)
    nx = DATA | P | RW | US | PteFlags.NX
    pte = g.pt.walk(DATA).steps[-1].entry_addr
    g.mmu.write(pte, nx, user=True)                          # a PTE store: the PT unsyncs first
    g.mmu.write(pte, nx, user=True)
    w = ShadowSyncView(g.mmu)
    card = next(c for c in w.view["cards"] if c["title"].startswith("guest PT"))
    row = card["rows"].index((DATA >> 12) & 511)
    assert int(card["gptes"][row][-1][1], 16) == g.mem.read_u64(pte) and "NX" in card["gptes"][row][-1][2]


# --- ESM, static page --------------------------------------------------------------------------

def test_esm_is_the_player_plus_the_pane_and_css_both():
    assert_player_plus_pane(ShadowSyncView, PANE_JS, PANE_CSS, "shadow")


def test_esm_with_the_pane_loads_as_a_module(tmp_path):
    assert render_type_in_node(str(ShadowSyncView._esm), tmp_path) == "function"


def test_static_html_carries_the_view():
    g = recorded_guest()
    _scenario(g.mmu, g)
    page = static_html(ShadowSyncView(g.mmu))
    assert "PANES.shadow" in page and "vp-sh-card" in page and '"shadow_view"' in page
    t, view = shadow_view(g.mmu)
    assert view["recorded"] and len(t) == view["events"]
    assert ShadowSyncView(g.mmu).panes == "shadow events"


# --- in a browser ----------------------------------------------------------------------------

@pytest.fixture
def page_of(tmp_path):
    with page_opener(tmp_path, ".vbook-player .vp-sh-counters", name="shadow.html",
                     viewport=(1200, 900)) as opened:
        yield opened


def _chip(page, name: str):
    return page.locator(".vp-sh-chip", has=page.locator(f".name:text-is('{name}')"))


@NEEDS_BROWSER[0]
@NEEDS_BROWSER[1]
def test_stepping_shows_sptes_states_and_counters(page_of):
    open_page, problems = page_of
    g = recorded_guest()
    _scenario(g.mmu, g)
    events = g.mmu.trace.events
    page = open_page(static_html(ShadowSyncView(g.mmu)))
    assert page.locator(".vp-sh-card:visible").count() == 1        # the root, from kvm_mmu_load
    assert "root (CR3)" in page.inner_text(".vp-sh-card[data-gfn='0x1'] .vp-sh-state")
    assert page.inner_text(".vp-sh-fn .fn") == "kvm_mmu_get_shadow_page"
    # the first leaf: the spte appears in the PT card, highlighted; pages_4k moves
    first = next(i for i, e in enumerate(events) if e.kind == "set_spte")
    seek(page, first - 1)
    pt = ".vp-sh-card[data-gfn='0x4']"
    assert "gfn 0x10" not in page.inner_text(pt)
    page.click(".vp-btn[title^='step forward']")
    assert page.locator(f"{pt} td.spte.changed").inner_text().startswith("gfn 0x10 RO U X")
    assert "moved" in _chip(page, "pages_4k").get_attribute("class")
    assert page.inner_text(".vp-sh-fn .fn") == "mmu_set_spte"
    assert page.inner_text(".vp-caption-text").startswith("mmu_set_spte: spte[16] of gfn 0x4")
    page.click(".vp-btn[title^='step forward']")                   # pf_result: pf_fixed moves
    assert "moved" in _chip(page, "pf_fixed").get_attribute("class")
    assert "moved" not in _chip(page, "pages_4k").get_attribute("class")
    assert page.inner_text(".vp-sh-moved") == "pf_fixed +1"
    # the far PT unsyncs
    unsync = next(i for i, e in enumerate(events) if e.kind == "unsync")
    far = f".vp-sh-card[data-gfn='{g.far_pte >> 12:#x}']"
    seek(page, unsync)
    state = page.locator(f"{far} .vp-sh-state")
    assert "unsync" in state.get_attribute("class") and "changed" in state.get_attribute("class")
    assert _chip(page, "mmu_unsync").inner_text().endswith("1")
    # the unused PD is flooded
    zap = next(i for i, e in enumerate(events) if e.kind == "zap_page")
    other = f".vp-sh-card[data-gfn='{g.pd_other >> 12:#x}']"
    seek(page, zap + 1)
    assert "flooded" in page.locator(f"{other} .vp-sh-state").get_attribute("class")
    assert "write flooding" in page.inner_text(f"{other} .vp-sh-state")
    assert page.inner_text(".vp-sh-fn .fn") == "detect_write_flooding"
    # the CR3 load at the end syncs the far PT again
    seek(page, len(events) - 1)
    assert "sync" in page.locator(f"{far} .vp-sh-state").get_attribute("class").split()
    assert _chip(page, "mmu_unsync").inner_text().endswith("0")
    # back to the start: one card again
    page.click(".vp-btn[title^='first']")
    assert page.locator(".vp-sh-card:visible").count() == 1
    assert problems == []


@NEEDS_BROWSER[0]
@NEEDS_BROWSER[1]
def test_a_plain_trace_renders_counters_and_says_why(page_of):
    open_page, problems = page_of
    g = Guest()
    _scenario(g.mmu, g)
    page = open_page(static_html(ShadowSyncView(g.mmu)))
    assert "ShadowRecorder" in page.inner_text(".vp-sh-note")
    i = next(i for i, e in enumerate(g.mmu.trace.events) if e.kind == "pf_result")
    seek(page, i)
    assert _chip(page, "pf_fixed").inner_text().endswith("1")
    assert problems == []


@NEEDS_BROWSER[0]
@NEEDS_BROWSER[1]
def test_step_render_time(page_of):
    """64 fresh pages (≈ 330 events, a PT card of 65 rows); timings printed (-s)."""
    open_page, problems = page_of
    g = recorded_guest()
    g.mmu.access(CODE, "x", user=True)
    for i in range(64):
        g.mmu.write(DATA + i * PAGE_SIZE, 1, size=1, user=True)
    page = open_page(static_html(ShadowSyncView(g.mmu)))
    res = page.evaluate("""async () => {
      const root = document.querySelector('.vbook-player');
      const fwd = root.querySelector(".vp-btn[title^='step forward']");
      const times = [];
      for (let k = 0; k < 200; k++) {
        const t0 = performance.now();
        fwd.click();
        root.getBoundingClientRect(); document.body.offsetHeight;
        times.push(performance.now() - t0);
        await new Promise((r) => requestAnimationFrame(() => r()));
      }
      times.sort((a, b) => a - b);
      return {median: times[100], p95: times[190], max: times[199], n: times.length};
    }""")
    print("\nshadow step render ms over", len(g.mmu.trace.events), "events:", json.dumps(res))
    assert res["n"] == 200 and problems == []
    assert res["median"] < 50


@NEEDS_BROWSER[0]
@NEEDS_BROWSER[1]
def test_an_inlined_notebook_export_steps_offline(page_of):
    from test_walk2d_widget import _inlined_notebook

    open_page, problems = page_of
    g = recorded_guest()
    _scenario(g.mmu, g)
    page = open_page(_inlined_notebook(ShadowSyncView(g.mmu, step=5)))
    assert page.inner_text(".vp-sh-fn .fn") == "mmu_set_spte"
    page.click(".vp-btn[title^='step forward']")
    assert page.inner_text(".vp-sh-fn .fn") == "kvm_mmu_do_page_fault"
    assert not [p for p in problems if p.startswith("error")]
