"""WalkView without a browser: what Python hands the pane, and what a request does.

The pane only renders ``meta["walk"]``; everything in it is checked here against
the models. A flip must give exactly the walk a fresh model walk gives on the
caller's memory with that one entry changed — and the caller's memory must not
change at all. Browser checks are in test_walk_widget_browser.py.
"""

from __future__ import annotations

import json
import random

import pytest
from _panes import assert_player_plus_pane, render_type_in_node

from vbook.errors import VbookError
from vbook.memory import GuestMemory
from vbook.models import ept as ept_model
from vbook.models import paging
from vbook.models.ept import EptMisconfig, EptTables, EptViolation
from vbook.models.paging import SIZE_1G, SIZE_2M, PageTables, PfErr, PteFlags
from vbook.trace import Trace, TraceRecorder
from vbook.widgets import inline_widgets, static_html
from vbook.widgets.player import WIDGET_STATE, WIDGET_VIEW
from vbook.widgets.walk import (
    PANE_CSS,
    PANE_JS,
    Edit,
    WalkRequestError,
    WalkView,
    show_ept_walk,
    show_walk,
)

RW_US = PteFlags.RW | PteFlags.US


# --- set-up -------------------------------------------------------------------------


def x86_mem() -> tuple[GuestMemory, PageTables]:
    """Tables with a 4 KiB user page, a read-only no-exec user page, a 2 MiB and a 1 GiB page."""
    mem = GuestMemory(0x100000)  # record=True: the view must not even read it through the API
    pt = PageTables(mem, 0x10000)
    pt.map(0x400000, 0x3000, flags=RW_US)
    pt.map(0x401000, 0x4000, flags=PteFlags.US | PteFlags.NX)
    pt.map(0x600000, 0x200000, size=SIZE_2M, flags=PteFlags.RW)
    pt.map(0x80000000, 0xC0000000, size=SIZE_1G, flags=RW_US)
    mem.clear_log()
    return mem, pt


def ept_mem() -> tuple[GuestMemory, EptTables]:
    host = GuestMemory(4 << 20)
    ept = EptTables(host, 0x100000)
    ept.map(0x200000, 0x300000, 0x2000, rwx=0b111)
    ept.map(0x202000, 0x302000, 0x1000, rwx=0b001)
    ept.map(0x400000, 0x200000, 0x200000, rwx=0b101, page_size=SIZE_2M)
    host.clear_log()
    return host, ept


def patched(mem: GuestMemory, patch: dict[int, int]) -> GuestMemory:
    m = GuestMemory(mem.size, record=False)
    m.write(0, bytes(mem.buf))
    for a, v in patch.items():
        m.write_u64(a, v)
    return m


def fresh_x86(mem, patch, cr3, gva, access="r", user=False, **opts):
    rec = TraceRecorder()
    w = paging.walk(patched(mem, patch), cr3, gva, access, user, trace=rec, **opts)
    return w, rec.freeze()


def fresh_ept(mem, patch, eptp, gpa, access="r", **opts):
    rec = TraceRecorder()
    w = ept_model.walk(patched(mem, patch), eptp, gpa, access, trace=rec, **opts)
    return w, rec.freeze()


def state(w: WalkView) -> dict:
    return w.trace["meta"]["walk"]


X86_CASES = [  # (gva, access, user, options)
    (0x400123, "w", True, {}),
    (0x400123, "x", False, {"cr4_smep": True}),
    (0x401010, "r", True, {}),
    (0x6ABCDE, "w", False, {}),
    (0x80001234, "r", True, {"set_ad": True}),
    (0x5000, "r", False, {}),  # not mapped: #PF at the PD
]


# --- what the pane gets ----------------------------------------------------------


def test_esm_is_the_player_plus_the_walk_pane_and_loads(tmp_path):
    assert_player_plus_pane(WalkView, PANE_JS, PANE_CSS, "walk")
    assert WalkView.panes.default_value == "walk"
    assert render_type_in_node(str(WalkView._esm), tmp_path) == "function"
    src = PANE_JS.read_text(encoding="utf-8")
    assert "model.send" in src and "msg:custom" in src


def test_the_trace_is_the_models_trace_plus_the_walk_state():
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x400123, "w", user=True)
    w, t = fresh_x86(mem, {}, pt.cr3, 0x400123, "w", True)
    assert v.result == w == v.original
    assert v.get_trace().events == t.events
    assert [e.kind for e in t.events] == ["pte_read"] * 4 + ["translate"]
    s = state(v)
    assert v.trace["meta"]["title"] == "x86-64 page walk of GVA 0x400123 (write, user)"
    assert s["mmu"] == "x86" and s["address"] == "0x400123" and s["access"] == "w" and s["user"]
    assert [r["level"] for r in s["rows"]] == [4, 3, 2, 1]
    for r, step in zip(s["rows"], w.steps, strict=True):
        assert r["entry"] == f"{step.entry:#018x}" and r["entry_addr"] == f"{step.entry_addr:#x}"
        assert r["index"] == step.index and not r["patched"]
    assert [f["name"] for f in s["split"]] == ["sign", "PML4E index", "PDPTE index", "PDE index",
                                               "PTE index", "offset"]
    assert [f["text"] for f in s["split"]] == ["0x0", "0", "0", "2", "0", "0x123"]
    # one frame per event: the rows in order, then the outcome
    assert len(s["frames"]) == len(t.events)
    assert [f["row"] for f in s["frames"]] == [0, 1, 2, 3, 3]
    assert [f["outcome"] for f in s["frames"]] == [False] * 4 + [True]
    assert [f["split"] for f in s["frames"]] == [[1], [2], [3], [4], [5]]
    assert s["frames"][3]["caption"]["text"] == "PTE[0] at 0x13000 = 0x0000000000003007 (P RW US)"
    o = s["outcome"]
    assert o["ok"] and o["head"] == "GVA 0x400123 → GPA 0x3123 (4 KiB page)"
    assert s["frames"][-1]["caption"]["text"] == o["head"]
    assert not s["edits"] and not s["modified"]
    json.dumps(v.trace)  # plain JSON, and a valid trace
    assert Trace.from_json(json.dumps(v.trace)) == v.get_trace()


@pytest.mark.parametrize("gva", [0x400123, 0x6ABCDE, 0x80001234, 0x5000])
def test_every_entry_is_64_bits_of_boxes_whose_text_is_the_entry(gva):
    mem, pt = x86_mem()
    for mpa in (52, 40):
        v = show_walk(mem, pt.cr3, gva, maxphyaddr=mpa)
        for r in state(v)["rows"]:
            entry = int(r["entry"], 16)
            seen = []
            for b in r["boxes"]:
                hi, lo = (int(x) for x in b["bits"].split(":")) if ":" in b["bits"] else (
                    int(b["bits"]),) * 2
                seen += range(hi, lo - 1, -1)
                value = entry >> lo & ((1 << (hi - lo + 1)) - 1)
                if b["kind"] == "addr":
                    assert int(b["text"], 16) == entry & paging.genmask(hi, lo)
                elif b["kind"] == "mt":
                    assert int(b["text"].split()[0]) == value
                else:
                    assert int(b["text"], 0) == value and b["set"] == bool(value)
            assert seen == list(range(63, -1, -1)), r["name"]  # bit 63 first, each bit once
            keys = [b["key"] for b in r["boxes"]]
            assert len(keys) == len(set(keys))


def test_the_box_layout_follows_the_kind_of_entry():
    mem, pt = x86_mem()
    keys = lambda v, k: [b["key"] for b in state(v)["rows"][k]["boxes"]]  # noqa: E731
    small = show_walk(mem, pt.cr3, 0x400123)
    assert keys(small, 0) == ["NX", "ign52", "addr", "ign9", "PS", "ign6", "A", "PCD", "PWT",
                              "US", "RW", "P"]
    assert keys(small, 3) == ["NX", "PK", "ign52", "addr", "ign9", "G", "PAT", "D", "A", "PCD",
                              "PWT", "US", "RW", "P"]
    big = show_walk(mem, pt.cr3, 0x6ABCDE)
    pde = state(big)["rows"][2]["boxes"]
    assert [b["bits"] for b in pde if b["key"] in ("addr", "rsvd_lo", "PAT")] == ["51:21", "20:13", "12"]
    huge = show_walk(mem, pt.cr3, 0x80001234, maxphyaddr=40)
    pdpte = {b["key"]: b for b in state(huge)["rows"][1]["boxes"]}
    assert pdpte["addr"]["bits"] == "39:30" and pdpte["rsvd_hi"]["bits"] == "51:40"
    assert pdpte["rsvd_lo"]["bits"] == "29:13"
    # editable: P RW US NX everywhere, PS above level 1 (bit 7 of a PTE is PAT)
    for k, r in enumerate(state(small)["rows"]):
        flips = sorted(b["key"] for b in r["boxes"] if b["edit"] == "flip")
        assert flips == (["NX", "P", "PS", "RW", "US"] if k < 3 else ["NX", "P", "RW", "US"])
        assert [b["key"] for b in r["boxes"] if b["edit"] == "set"] == ["addr"]


def test_ept_rows_have_rwx_memtype_ipat_and_suppress_ve():
    host, ept = ept_mem()
    v = show_ept_walk(host, ept.eptp, 0x201234, "w")
    w, t = fresh_ept(host, {}, ept.eptp, 0x201234, "w")
    assert v.result == w and v.get_trace().events == t.events
    s = state(v)
    assert s["mmu"] == "ept" and s["user"] is None and s["root"]["name"] == "EPTP"
    assert [r["name"] for r in s["rows"]] == ["PML4E", "PDPTE", "PDE", "PTE"]
    leaf = [b["key"] for b in s["rows"][3]["boxes"]]
    assert leaf == ["SVE", "ign52", "rsvd_hi", "addr", "ign11", "UX", "D", "A", "ign7", "IPAT",
                    "MT", "X", "W", "R"]
    top = [b["key"] for b in s["rows"][0]["boxes"]]
    assert top == ["ign52", "rsvd_hi", "addr", "ign11", "UX", "ign9", "A", "PS", "rsvd_mid", "X",
                   "W", "R"]
    mt = next(b for b in s["rows"][3]["boxes"] if b["key"] == "MT")
    assert mt["text"] == "6 WB" and mt["edit"] == "choose" and mt["bits"] == "5:3"
    assert s["outcome"]["head"] == "GPA 0x201234 → HPA 0x301234 (4 KiB page)"
    assert ["memory type", "6 (WB)", "IPAT=0: combined with the guest's PAT"] in s["outcome"]["lines"]
    assert [f["split"] for f in s["frames"]] == [[0], [1], [2], [3], [4]]


@pytest.mark.parametrize("gva,access,user,opts", X86_CASES)
def test_the_ok_and_bad_marks_name_what_decided(gva, access, user, opts):
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, gva, access, user, **opts)
    w = v.result
    last = state(v)["frames"][-1]["marks"]
    bad = [m for m in last if m[2] == "bad"]
    if w.fault is None:
        assert not bad and all(m[2] in ("ok", "info") for m in last)
    else:
        assert bad, "a fault must mark the bit(s) that caused it"
        # flipping any one bit marked bad changes the outcome
        k, key, _ = bad[0]
        v.flip(w.steps[k].level, key)
        assert v.result.fault != w.fault


def test_marks_of_each_kind_of_x86_fault():
    mem, pt = x86_mem()
    marks = lambda v: [m for m in state(v)["frames"][-1]["marks"] if m[2] == "bad"]  # noqa: E731
    assert marks(show_walk(mem, pt.cr3, 0x401000, "w", user=True)) == [[3, "RW", "bad"]]
    assert marks(show_walk(mem, pt.cr3, 0x401000, "x", user=True)) == [[3, "NX", "bad"]]
    assert marks(show_walk(mem, pt.cr3, 0x600000, "r", user=True)) == [[2, "US", "bad"]]
    assert marks(show_walk(mem, pt.cr3, 0x5000)) == [[2, "P", "bad"]]
    smap = marks(show_walk(mem, pt.cr3, 0x400000, cr4_smap=True))
    assert smap == [[k, "US", "bad"] for k in range(4)]
    nx_off = show_walk(mem, pt.cr3, 0x401000, user=True, efer_nxe=False)
    assert nx_off.result.fault.error_code & PfErr.RSVD and marks(nx_off) == [[3, "NX", "bad"]]
    # SMEP lets a supervisor fetch from a supervisor page: the U/S=0 entry is what allows it
    smep = show_walk(mem, pt.cr3, 0x600000, "x", cr4_smep=True)
    assert smep.result.ok
    assert [m for m in state(smep)["frames"][-1]["marks"] if m[1] == "US"] == [[2, "US", "ok"]]
    assert state(show_walk(mem, pt.cr3, 0x600000, "x"))["outcome"]["note"] == (
        "XD=0 at every level: fetches allowed")
    assert state(show_walk(mem, pt.cr3, 0x600000, "r"))["outcome"]["note"] == (
        "P=1 at every level is all this supervisor read needs")
    # a not-present mark appears when its row is read, not before
    v = show_walk(mem, pt.cr3, 0x5000)
    assert [m for f in state(v)["frames"][:2] for m in f["marks"] if m[2] == "bad"] == []
    assert [2, "P", "bad"] in state(v)["frames"][2]["marks"]


def test_page_fault_outcome_decodes_the_error_code_and_cr2():
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x401010, "w", user=True)
    o = state(v)["outcome"]
    assert o["kind"] == "page_fault" and not o["ok"]
    assert o["head"] == "#PF, error code 0x7 (P|W|U), CR2 = 0x401010"
    assert [(b["name"], b["set"]) for b in o["bits"]] == [
        ("P", True), ("W/R", True), ("U/S", True), ("RSVD", False), ("I/D", False), ("PK", False)]
    assert ["CR2", "0x401010", "the faulting linear address"] in o["lines"]
    assert o["note"] == v.result.fault.reason


def test_ept_violation_and_misconfig_outcomes():
    host, ept = ept_mem()
    v = show_ept_walk(host, ept.eptp, 0x202000, "w")
    f = v.result.fault
    assert isinstance(f, EptViolation)
    o = state(v)["outcome"]
    assert o["kind"] == "ept_violation"
    assert o["head"] == f"VM exit: EPT violation (exit 48), qualification {f.qualification:#x}"
    on = {b["name"] for b in o["bits"] if b["set"]}
    assert on == {"write", "R", "GVA valid", "translated"}
    assert [m for m in state(v)["frames"][-1]["marks"] if m[2] == "bad"] == [[3, "W", "bad"]]
    v.set_field(1, "MT", 7)
    assert isinstance(v.result.fault, EptMisconfig)
    o = state(v)["outcome"]
    assert o["kind"] == "ept_misconfig" and o["bits"] == []
    assert ["qualification", "none", "an EPT misconfiguration has no exit qualification"] in o["lines"]
    assert [m for m in state(v)["frames"][-1]["marks"] if m[2] == "bad"] == [[3, "MT", "bad"]]
    miss = show_ept_walk(host, ept.eptp, 0x600000, "r")
    assert [m for m in state(miss)["frames"][-1]["marks"] if m[2] == "bad"] == [
        [2, "R", "bad"], [2, "W", "bad"], [2, "X", "bad"]]


def test_large_pages_light_the_offset_fields():
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x6ABCDE)
    s = state(v)
    assert s["outcome"]["head"] == "GVA 0x6abcde → GPA 0x2abcde (2 MiB page)"
    assert s["frames"][-1]["split"] == [4, 5]  # PTE index + 11:0 = the 21-bit offset
    assert [2, "PS", "info"] in s["frames"][-1]["marks"]
    host, ept = ept_mem()
    e = show_ept_walk(host, ept.eptp, 0x412345, "x")
    assert state(e)["outcome"]["head"] == "GPA 0x412345 → HPA 0x212345 (2 MiB page)"
    assert state(e)["frames"][-1]["split"] == [3, 4]


def test_big_entries_travel_exactly():
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x401010, user=True)
    leaf = v.result.steps[-1].entry
    assert leaf > 2**53 and str(leaf) in v.bigints.values()
    assert state(v)["rows"][-1]["entry"] == f"{leaf:#018x}"


# --- requests: flip, set, walk again, reset -----------------------------------------


@pytest.mark.parametrize("gva,access,user,opts", X86_CASES)
def test_every_flip_is_a_fresh_model_walk_on_the_changed_memory(gva, access, user, opts):
    mem, pt = x86_mem()
    before = bytes(mem.buf)
    v = show_walk(mem, pt.cr3, gva, access, user, **opts)
    for k, row in enumerate(state(v)["rows"]):
        for b in row["boxes"]:
            if b["edit"] != "flip":
                continue
            step = v.original.steps[k]
            new = step.entry ^ int(PteFlags[b["key"]])
            try:
                w, t = fresh_x86(mem, {step.entry_addr: new}, pt.cr3, gva, access, user, **opts)
            except paging.TableOutsideMemory as model_error:
                # e.g. PS cleared in a large leaf: its frame read as a table beyond memory
                with pytest.raises(WalkRequestError) as e:
                    v.flip(step.level, b["key"])
                assert str(model_error) in str(e.value) and v.result == v.original
                continue
            v.flip(step.level, b["key"])
            assert v.result == w, (step.level, b["key"])
            assert v.get_trace().events == t.events
            assert v.step == len(t.events) - 1  # shown at the outcome
            assert [e.entry_addr for e in v.edits] == [step.entry_addr]
            assert v.edits[0].old == step.entry and v.edits[0].new == new
            assert state(v)["modified"] and state(v)["edits"] == [v.edits[0].what]
            v.reset()
            assert v.result == v.original and not v.edits
    assert bytes(mem.buf) == before and mem.accesses == []


def test_flips_accumulate_flip_back_and_reset_restores_the_first_walk():
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x400123, "w", user=True)
    first = dict(v.trace)
    v.flip(1, "RW")
    assert v.result.fault is not None and repr(v).endswith("1 edited entry)")
    assert v.edits[0].what == "PTE at 0x13000: R/W 1 → 0"
    assert state(v)["rows"][3]["patched"]
    v.flip(4, "US")
    assert int(v.result.fault.error_code) == 0x7 and len(v.edits) == 2
    v.flip(1, "RW")  # back as the caller's memory has it: no longer an edit
    assert [e.level for e in v.edits] == [4]
    v.flip(4, "us")  # case does not matter
    assert v.result == v.original and not v.edits and not state(v)["modified"]
    v.flip(2, "P")
    v.reset()
    assert v.trace == {**first, "events": first["events"]} and v.step == len(v.trace["events"]) - 1
    assert v.result == v.original


def test_set_the_address_field_and_walk_again():
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x400123, "w", user=True)
    pte = v.result.steps[-1]
    v.set_field(1, "addr", "0x7000")
    w, _ = fresh_x86(mem, {pte.entry_addr: (pte.entry & ~0xFFFFFFFFFF000) | 0x7000}, pt.cr3,
                     0x400123, "w", True)
    assert v.result == w and v.result.address == 0x7123
    assert v.edits[0].what == "PTE at 0x13000: address 0x3000 → 0x7000"
    # a PDE's pointer moved to another table: the walk follows it
    pde = v.result.steps[2]
    v.set_field(2, "addr", 0x20000)  # zeroed memory: the PTE there is not present
    assert v.result.fault.level == 1 and v.result.steps[-1].entry_addr == 0x20000
    assert len(v.edits) == 2
    # again for another address and access, the edits kept
    v.rewalk(address="0x401010", access="r", user=True)
    assert state(v)["address"] == "0x401010" and len(v.edits) == 2 and v.result.fault.level == 1
    v.reset()
    assert v.result == v.original and state(v)["address"] == "0x400123"
    del pde


def test_ept_flips_and_memory_types_match_fresh_walks():
    host, ept = ept_mem()
    before = bytes(host.buf)
    v = show_ept_walk(host, ept.eptp, 0x201234, "w", update_ad=True)
    for k, row in enumerate(state(v)["rows"]):
        step = v.original.steps[k]
        for b in row["boxes"]:
            if b["edit"] == "flip":
                v.flip(step.level, b["key"])
                mask = {"R": 1, "W": 2, "X": 4, "PS": 128}[b["key"]]
                w, t = fresh_ept(host, {step.entry_addr: step.entry ^ mask}, ept.eptp, 0x201234,
                                 "w", update_ad=True)
                assert v.result == w and v.get_trace().events == t.events, (step.level, b["key"])
                v.reset()
    pte = v.original.steps[-1]
    for mt in range(8):
        v.set_field(1, "MT", mt)
        w, _ = fresh_ept(host, {pte.entry_addr: pte.entry & ~0x38 | mt << 3}, ept.eptp, 0x201234,
                         "w", update_ad=True)
        assert v.result == w
        assert isinstance(w.fault, EptMisconfig) == (mt in (2, 3, 7))
    v.reset()
    assert v.result == v.original
    assert bytes(host.buf) == before and host.accesses == []


def test_random_sequences_of_requests_match_the_model():
    """Flips and field edits in any order: always the fresh walk of the net changes."""
    rnd = random.Random(5)
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x400123, "w", user=True)
    patch: dict[int, int] = {}
    for _ in range(60):
        s = rnd.choice(v.result.steps)
        bit = rnd.choice(["P", "RW", "US", "NX"] + (["PS"] if s.level > 1 else []))
        try:
            v.flip(s.level, bit)
        except WalkRequestError:
            assert v.error  # e.g. a PS flip whose table lies outside memory
            continue
        patch[s.entry_addr] = s.entry ^ int(PteFlags[bit])
        patch = {a: x for a, x in patch.items() if x != int.from_bytes(bytes(mem.buf)[a:a + 8], "little")}
        w, _ = fresh_x86(mem, patch, pt.cr3, 0x400123, "w", True)
        assert v.result == w
        assert {e.entry_addr: e.new for e in v.edits} == patch
        assert v.error == ""


def test_caller_memory_is_never_touched_even_with_set_ad():
    mem, pt = x86_mem()
    before = bytes(mem.buf)
    v = show_walk(mem, pt.cr3, 0x400123, "w", user=True, set_ad=True)
    assert [e.kind for e in v.get_trace().events].count("pte_write") == 4
    assert v.memory().read_u64(v.result.steps[-1].entry_addr) == v.result.steps[-1].entry
    v.flip(1, "NX")
    v.rewalk(access="x")
    assert bytes(mem.buf) == before and mem.accesses == []
    # memory() is the caller's plus the edits, as a fresh copy
    m = v.memory()
    assert m is not v.memory() and m.read_u64(0x13000) == int.from_bytes(
        before[0x13000:0x13008], "little") ^ int(PteFlags.NX)


# --- errors ------------------------------------------------------------------------


def test_bad_requests_are_typed_errors_shown_in_the_widget():
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x5000)  # reads PML4, PDPT, PD (not present)
    trace = v.trace
    cases = [
        (lambda: v.flip(1, "P"), "level 1 is not on this walk: it read PML4E (4), PDPTE (3), PDE (2)"),
        (lambda: v.flip(2, "A"), "bit 'A' of an x86 entry is not editable here; the bits a reader "
                                 "may flip are P, RW, US, PS, NX"),
        (lambda: v.flip("2", "P"), "level must be an int, got '2'"),
        (lambda: v.set_field(2, "G", 1), "field 'G' cannot be set"),
        (lambda: v.set_field(2, "addr", "0x1001"), "must be 4 KiB-aligned"),
        (lambda: v.set_field(2, "addr", "banana"), "is not a number"),
        (lambda: v.rewalk(access="q"), "access must be 'r', 'w' or 'x'"),
    ]
    for call, text in cases:
        with pytest.raises(WalkRequestError) as e:
            call()
        assert text in str(e.value) and v.error == str(e.value)
        assert isinstance(e.value, VbookError)
        assert v.trace == trace  # nothing changed
    with pytest.raises(WalkRequestError, match="PAT, not a page size"):
        show_walk(mem, pt.cr3, 0x400000).flip(1, "PS")
    v.flip(2, "P")  # a request that works clears the error
    assert v.error == ""


def test_a_change_the_walk_cannot_survive_keeps_the_models_error():
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x400123, "w", user=True)
    with pytest.raises(WalkRequestError) as e:
        v.set_field(2, "addr", 0x200000)  # a PT beyond the 1 MiB of memory
    assert isinstance(e.value.cause, paging.TableOutsideMemory)
    assert str(e.value).startswith("the walk cannot be done after PDE at 0x12010: address")
    with pytest.raises(WalkRequestError) as e:
        v.rewalk(address=0x0000_8000_0000_0000)
    assert isinstance(e.value.cause, paging.NonCanonicalAddress)
    assert v.result == v.original and not v.edits
    host, ept = ept_mem()
    ev = show_ept_walk(host, ept.eptp, 0x201234)
    for call, text in [(lambda: ev.set_field(4, "MT", 6), "only a leaf has a memory type"),
                       (lambda: ev.set_field(1, "MT", 9), "3 bits (0..7)"),
                       (lambda: ev.flip(1, "P"), "the bits a reader may flip are R, W, X, PS"),
                       (lambda: ev.flip(1, "MT"), "set_field(level, 'MT', value)"),
                       (lambda: ev.rewalk(user=True), "no user mode"),
                       (lambda: ev.rewalk(address=1 << 50), "outside the 48-bit space")]:
        with pytest.raises(WalkRequestError, match=text.replace("(", r"\(").replace(")", r"\)")):
            call()


def test_handle_request_never_raises():
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x400123)
    for bad in [None, [], {"kind": "explode"}, {"kind": "flip"}, {"kind": "flip", "level": 1},
                {"kind": "set", "level": 4, "field": "addr", "value": None},
                {"kind": "walk", "address": "0x1", "user": "yes"}]:
        msg = v.handle_request(bad)
        assert msg and v.error == msg
    assert v.handle_request({"kind": "flip", "level": 1, "bit": "US"}) == "" and v.error == ""
    assert v.handle_request({"kind": "reset"}) == "" and v.result == v.original


def test_bad_construction_is_refused_clearly():
    mem, pt = x86_mem()
    with pytest.raises(WalkRequestError, match="takes no option cr4_pke"):
        show_walk(mem, pt.cr3, 0x1000, cr4_pke=True)
    with pytest.raises(WalkRequestError, match="GuestMemory"):
        show_walk(bytearray(16), 0, 0)
    with pytest.raises(WalkRequestError, match="no user/supervisor"):
        WalkView(mem, 0x10000, 0x1000, user=True, ept=True)
    with pytest.raises(paging.NonCanonicalAddress):
        show_walk(mem, pt.cr3, 1 << 47)


# --- the messages a kernel exchanges with the browser -------------------------------


def test_the_browser_round_trip_through_ipywidgets_custom_messages():
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x400123, "w", user=True)
    sent = []
    v.send = lambda content, buffers=None: sent.append(content)
    msg = lambda **kw: v._handle_custom_msg({"vbook": "walk", **kw}, [])  # noqa: E731
    assert not v.live
    msg(kind="hello", id=0)
    assert v.live and sent == [{"vbook": "walk", "kind": "hello", "id": 0}]
    msg(kind="flip", level=1, bit="RW", id=1)
    assert sent[-1] == {"vbook": "walk", "kind": "done", "id": 1} and v.result.fault is not None
    msg(kind="flip", level=7, bit="RW", id=2)
    assert sent[-1]["kind"] == "error" and sent[-1]["id"] == 2
    assert sent[-1]["message"].startswith("level 7 is not on this walk") and v.error
    msg(kind="reset", id=3)
    assert sent[-1] == {"vbook": "walk", "kind": "done", "id": 3} and v.error == ""
    assert v.result == v.original
    # messages that are not the pane's (anywidget's own, another library's) are left alone
    n = len(sent)
    v._handle_custom_msg({"kind": "flip", "level": 1, "bit": "RW"}, [])
    v._handle_custom_msg("ping", [])
    assert len(sent) == n and v.result == v.original and v.error == ""


# --- text and pages -------------------------------------------------------------------


def test_repr_is_stable():
    mem, pt = x86_mem()
    assert repr(show_walk(mem, pt.cr3, 0x400123, "w", user=True)) == (
        "WalkView(x86-64 4-level walk of 0x400123 (w, user): 4 entries -> gpa 0x3123)")
    assert repr(show_walk(mem, pt.cr3, 0x6ABCDE)) == (
        "WalkView(x86-64 4-level walk of 0x6abcde (r, supervisor): 3 entries -> gpa 0x2abcde (2 MiB))")
    v = show_walk(mem, pt.cr3, 0x401000, "w", user=True)
    assert repr(v) == ("WalkView(x86-64 4-level walk of 0x401000 (w, user): 4 entries -> "
                       "#PF error_code 0x7 (P|W|U))")
    v.flip(1, "RW")
    v.flip(2, "NX")
    assert repr(v).endswith("-> gpa 0x4000, 2 edited entries)")
    host, ept = ept_mem()
    assert repr(show_ept_walk(host, ept.eptp, 0x201234, "w")) == (
        "WalkView(EPT 4-level walk of gpa 0x201234 (w): 4 entries -> hpa 0x301234)")
    assert repr(show_ept_walk(host, ept.eptp, 0x202000, "w")) == (
        "WalkView(EPT 4-level walk of gpa 0x202000 (w): 4 entries -> EPT violation, "
        "qualification 0x18a)")
    e = show_ept_walk(host, ept.eptp, 0x201234)
    e.flip(1, "R")
    assert repr(e) == ("WalkView(EPT 4-level walk of gpa 0x201234 (r): 4 entries -> EPT misconfig "
                       "at PTE, 1 edited entry)")
    assert "object at" not in repr(e)


def test_static_html_carries_the_pane_and_the_state():
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x400123, "w", user=True)
    page = static_html(v)
    assert "PANES.walk" in page and "vp-w-bits" in page and '"walk":' in page
    assert "Flipping bits needs a running kernel" in page
    assert set(v.static_state()) == {"trace", "step", "speed", "panes", "bigints", "error"}
    assert page == v.to_html(full_page=True)


def test_inline_widgets_turns_a_walk_view_into_a_static_snippet():
    nbformat = pytest.importorskip("nbformat")
    mem, pt = x86_mem()
    v = show_walk(mem, pt.cr3, 0x400123, "w", user=True)
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("show_walk(mem, pt.cr3, 0x400123, 'w', user=True)")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "text/plain": repr(v), WIDGET_VIEW: {"model_id": v.model_id}})]
    nb.cells = [cell]
    nb.metadata["widgets"] = {WIDGET_STATE: {"state": {v.model_id: {"state": {
        **v.get_state(), "_esm": str(v._esm), "_css": str(v._css)}}}}}
    out = inline_widgets(nb).cells[0].outputs[0]["data"]
    assert "PANES.walk" in out["text/html"] and out["text/plain"] == repr(v)
    assert '"error":""' in out["text/html"]


def test_edit_reprs():
    e = Edit(1, 0x13000, "PTE at 0x13000: R/W 1 → 0", 7, 5)
    assert repr(e) == "Edit('PTE at 0x13000: R/W 1 → 0')" and str(e) == e.what
