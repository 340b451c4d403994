"""The 2-D walk (guest paging x EPT) and nested EPT (EPT02 from EPT12 x EPT01)."""

from __future__ import annotations

import re

import pytest
from _sources import LINUX_6_1, LINUX_6_1_REV, function_body, git_show
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vbook.memory import GuestMemory
from vbook.models import ept, nested, paging
from vbook.models.nested import (
    PFERR_GUEST_FINAL_MASK,
    PFERR_GUEST_PAGE_MASK,
    Ept02,
    NestedError,
    ept02_fault,
    refs_count,
    walk_2d,
)
from vbook.models.vmx import ept_violation_qualification
from vbook.trace import TraceRecorder

K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30
RAM = 4 << 20                # guest RAM: 4 MiB of guest-physical memory
HOST = 7 << 20               # host memory: guest RAM + EPT tables
EPT_TABLES = 0x600000        # HPA of the EPT tables
GUEST_TABLES = 0x100000      # GPA of the guest page tables
GVA = 0x400123               # inside a 2 MiB slot, page 0 of it
QUAL_GVA_VALID, QUAL_TRANSLATED = 1 << 7, 1 << 8


class Phys:
    """Guest-physical memory [gbase, gbase + RAM) stored at HPA hbase: how the test
    (the guest kernel) builds and reads its own tables. Not the model's view."""

    def __init__(self, host: GuestMemory, gbase: int, hbase: int):
        self.host, self.gbase, self.hbase = host, gbase, hbase
        self.size = gbase + RAM

    def _h(self, gpa: int, n: int) -> int:
        if not (self.gbase <= gpa and gpa + n <= self.gbase + RAM):
            raise AssertionError(f"test fixture: GPA {gpa:#x} outside guest RAM")
        return gpa - self.gbase + self.hbase

    def read_u64(self, gpa: int) -> int:
        return self.host.read_u64(self._h(gpa, 8))

    def write_u64(self, gpa: int, v: int) -> None:
        self.host.write_u64(self._h(gpa, 8), v)

    def write(self, gpa: int, data: bytes) -> None:
        self.host.write(self._h(gpa, len(data)), data)


class Machine:
    """Guest RAM GPA [gbase, gbase+4 MiB) at HPA [hbase, ...) — NOT identity-mapped —
    EPT tables at HPA 0x600000, guest tables at GPA gbase + 0x100000."""

    def __init__(self, levels: int = 4, ept_levels: int = 4, ept_page: int = K4, *,
                 gbase: int = 0, hbase: int = M2, ad: bool = False):
        self.host = GuestMemory(HOST)
        self.gbase, self.hbase, self.levels = gbase, hbase, levels
        self.ept = ept.EptTables(self.host, EPT_TABLES, levels=ept_levels, ad=ad)
        if ept_page == G1:
            self.ept.map(gbase, hbase, G1, page_size=G1)
        else:
            self.ept.map(gbase, hbase, RAM, page_size=ept_page)
        self.phys = Phys(self.host, gbase, hbase)
        self.pt = paging.PageTables(self.phys, gbase + GUEST_TABLES, levels,
                                    alloc_limit=gbase + GUEST_TABLES + 0x40000)

    def hpa(self, gpa: int) -> int:
        return gpa - self.gbase + self.hbase

    def walk(self, gva: int = GVA, access: str = "r", **kw):
        return walk_2d(self.host, self.ept.eptp, self.pt.cr3, gva, access, levels=self.levels, **kw)


def _kinds(w) -> str:
    return "".join("E" if r.kind == "ept" else "G" for r in w.refs)


# --- the 24-reference walk ---------------------------------------------------------------


def test_formula():
    assert refs_count(4, 4) == 24
    assert refs_count(5, 5) == 35
    assert refs_count(4, 0) == 4          # native: no EPT
    assert refs_count(3, 4) == 19 and refs_count(4, 3) == 19
    with pytest.raises(NestedError):
        refs_count(-1, 4)


def test_24_references_one_by_one():
    m = Machine()
    m.pt.map(0x400000, 0x5000, flags=paging.PteFlags.RW)
    w = m.walk()
    assert w.ok and len(w.refs) == 24 == refs_count(4, 4)
    assert _kinds(w) == ("EEEE" "G") * 4 + "EEEE"
    assert w.gpa == 0x5123 and w.address == m.hpa(0x5123) == 0x205123
    assert w.page_size == K4 and w.ept_page_size == K4
    guest_walk = paging.walk(m.phys, m.pt.cr3, GVA)   # the guest's own view, GVA -> GPA
    for k, step in enumerate(guest_walk.steps):
        block = w.refs[5 * k:5 * k + 5]
        # four EPT references translating the GPA of this guest entry, PML4E .. PTE
        assert [r.ept_level for r in block[:4]] == [4, 3, 2, 1]
        assert {r.gpa for r in block} == {step.entry_addr}
        assert all(r.level == step.level for r in block)
        # EPT entries are read in host memory, from the EPTP root down
        assert block[0].hpa == m.ept.root
        assert [r.hpa for r in block[:4]] == [s.entry_addr for s in
                                              ept.walk(m.host, m.ept.eptp, step.entry_addr).steps]
        # then the guest entry, read at the translated HPA (GPA + 2 MiB), not at its GPA
        g = block[4]
        assert (g.kind, g.ept_level, g.hpa, g.entry) == ("guest", None, m.hpa(step.entry_addr), step.entry)
        assert g.hpa != g.gpa
    final = w.refs[20:]
    assert {r.gpa for r in final} == {0x5123} and all(r.level == 0 for r in final)
    assert [r.ept_level for r in final] == [4, 3, 2, 1]
    assert w.refs[-1].entry & ~0xFFF & ((1 << 46) - 1) == m.hpa(0x5000)


def test_guest_reads_go_through_ept_not_identity():
    m = Machine()
    m.pt.map(0x400000, 0x5000)
    # at HPA == GPA of CR3 there is nothing: an identity-reading walker would #PF
    assert m.host.read_u64(m.pt.cr3) == 0
    assert paging.walk(m.host, m.pt.cr3, GVA).fault is not None
    w = m.walk()
    assert w.ok and w.address == 0x205123
    assert all(r.hpa == r.gpa + M2 for r in w.refs if r.kind == "guest")
    # a different EPT offset moves every guest read, same guest tables
    m2 = Machine(gbase=G1, hbase=0, ept_page=G1)
    m2.pt.map(0x400000, G1 + 0x5000)
    w2 = m2.walk()
    assert w2.ok and w2.gpa == G1 + 0x5123 and w2.address == 0x5123
    assert all(r.hpa == r.gpa - G1 for r in w2.refs if r.kind == "guest")


def test_grid():
    m = Machine()
    m.pt.map(0x400000, 0x5000)
    g = m.walk().grid()
    assert g.rows == ("pml4", "pdpt", "pd", "pt", "gpa")
    assert g.cols == ("PML4E", "PDPTE", "PDE", "PTE", "guest")
    assert g.cells[0] == (1, 2, 3, 4, 5) and g.cells[3] == (16, 17, 18, 19, 20)
    assert g.cells[4] == (21, 22, 23, 24, None) and g.count() == 24
    assert "21" in g.table() and repr(g) == "Grid(5x5, 24 refs)"
    assert g.to_dict()["cells"][4][4] is None


def test_table_and_repr_are_stable():
    m = Machine()
    m.pt.map(0x400000, 0x5000)
    w = m.walk()
    t = w.table()
    assert t.splitlines()[0].endswith("24 references") and "-> GPA 0x5123 -> HPA 0x205123" in t
    assert repr(w) == "Walk2d(gva=0x400123, 'r', 4x4, 24 refs, address=0x205123)"
    assert "0x" in repr(w.refs[0]) and " at 0x" not in repr(w.refs[0])


def test_trace_records_every_reference():
    from vbook.trace import Trace
    m = Machine()
    m.pt.map(0x400000, 0x5000)
    tr = TraceRecorder()
    w = m.walk(trace=tr)
    refs = [e for e in tr.events if e.kind in ("ept_ref", "guest_ref")]
    assert [(e.data["ref_kind"], e.data["hpa"]) for e in refs] == [(r.kind, r.hpa) for r in w.refs]
    assert tr.events[-1].kind == "translate_2d" and tr.events[-1].data["hpa"] == w.address
    t = tr.freeze()
    assert Trace.from_json(t.to_json()) == t
    m.ept.set_entry(0x5000, 1, 0)
    tr2 = TraceRecorder()
    m.walk(trace=tr2)
    exit_ = tr2.events[-1]
    assert (exit_.actor, exit_.kind, exit_.data["fault_on"]) == ("kvm", "vmexit", "guest_final")
    assert exit_.data["error_code"] & PFERR_GUEST_FINAL_MASK


# --- large pages and 5 levels: count == formula -----------------------------------------

_LEAF = {K4: 1, M2: 2, G1: 3}


@pytest.mark.parametrize("levels,ept_levels", [(4, 4), (5, 5), (4, 5), (5, 4)])
@pytest.mark.parametrize("guest_page", [K4, M2, G1])
@pytest.mark.parametrize("ept_page", [K4, M2, G1])
def test_count_equals_formula(levels, ept_levels, guest_page, ept_page):
    gbase, hbase = (G1, 0) if ept_page == G1 else (0, M2)
    m = Machine(levels, ept_levels, ept_page, gbase=gbase, hbase=hbase)
    gva = 0x80000000 if guest_page == G1 else 0x400000   # 1 GiB-aligned for a 1 GiB guest page
    gpa = gbase + (0 if guest_page != K4 else 0x5000)
    m.pt.map(gva, gpa, size=guest_page)
    w = m.walk(gva + 0x123)
    n = levels - _LEAF[guest_page] + 1
    mm = ept_levels - _LEAF[ept_page] + 1
    assert w.ok, w
    assert len(w.refs) == refs_count(n, mm) == w.grid().count()
    assert w.count("guest") == n and w.count("ept") == (n + 1) * mm
    assert _kinds(w) == ("E" * mm + "G") * n + "E" * mm
    assert w.address == m.hpa(gpa + 0x123) and w.page_size == guest_page and w.ept_page_size == ept_page


def test_5_level_is_35():
    m = Machine(5, 5)
    m.pt.map(0x400000, 0x5000)
    w = m.walk()
    assert len(w.refs) == 35 and w.grid().rows[0] == "pml5" and w.grid().cols[0] == "PML5E"


def test_large_pages_shrink_the_walk():
    m = Machine(ept_page=M2)
    m.pt.map(0x400000, 0x200000, size=M2)
    w = m.walk()
    assert len(w.refs) == refs_count(3, 3) == 15
    g = w.grid()
    assert g.rows == ("pml4", "pdpt", "pd", "pt", "gpa")
    assert g.cells[3] == (None,) * 5                         # no PT row: the PDE was the leaf
    assert all(row[3] is None for row in g.cells)            # no EPT PTE column: 2 MiB EPT pages


def test_mixed_ept_page_sizes_per_walk():
    # tables in 4 KiB-mapped EPT, data in a 2 MiB EPT page: each EPT walk ends where its leaf is
    m = Machine()
    m.ept.set_entry(0x200000, 2, 0)                        # drop the 4 KiB tables of [2M, 4M) ...
    m.ept.set_entry(0x200000, 2, (m.hpa(0x200000)) | 7 | ept.MemType.WB << 3 | ept.VmxEpt.LARGE_PAGE)
    m.pt.map(0x400000, 0x200000)
    w = m.walk()
    assert w.ok and len(w.refs) == 4 * 5 + 3 and w.ept_page_size == M2


# --- faults at each position ----------------------------------------------------------------


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_guest_not_present_at_each_level(level):
    m = Machine()
    m.pt.map(0x400000, 0x5000)
    step = next(s for s in paging.walk(m.phys, m.pt.cr3, GVA).steps if s.level == level)
    m.phys.write_u64(step.entry_addr, 0)
    tr = TraceRecorder()
    w = m.walk(access="w", trace=tr)
    assert isinstance(w.fault, paging.PageFault) and w.fault.level == level
    assert w.fault.error_code == paging.PfErr.W and w.error_code == 2 and w.fault_on is None
    assert len(w.refs) == (4 - level + 1) * 5 and w.refs[-1].kind == "guest"   # no final EPT walk
    assert w.address is None and w.gpa is None
    assert not any(e.kind == "vmexit" for e in tr.events)            # a guest #PF is no VM exit


def test_guest_protection_fault_skips_the_final_ept_walk():
    m = Machine()
    m.pt.map(0x400000, 0x5000, flags=paging.PteFlags.RW)       # supervisor page
    w = m.walk(user=True)
    assert isinstance(w.fault, paging.PageFault) and w.fault.error_code == paging.PfErr.P | paging.PfErr.U
    assert len(w.refs) == 20


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_ept_violation_on_a_guest_table_page(level):
    m = Machine()
    m.pt.map(0x400000, 0x5000)
    step = next(s for s in paging.walk(m.phys, m.pt.cr3, GVA).steps if s.level == level)
    m.ept.set_entry(step.entry_addr, 1, 0)                    # L0 has not mapped that table page
    tr = TraceRecorder()
    w = m.walk(trace=tr)
    f = w.fault
    assert isinstance(f, ept.EptViolation) and w.fault_on == "guest_page" and w.fault_level == level
    assert f.gpa == step.entry_addr and f.level == 1
    # a paging-structure access: GVA valid (bit 7), bit 8 = 0; a data read; not present (5:3 = 0)
    assert f.qualification == ept_violation_qualification("r", 0, gva_valid=True, translated=False)
    assert f.qualification & QUAL_GVA_VALID and not f.qualification & QUAL_TRANSLATED
    assert w.error_code == PFERR_GUEST_PAGE_MASK | 4               # PFERR_USER_MASK = "read" in KVM
    assert not w.error_code & PFERR_GUEST_FINAL_MASK
    assert len(w.refs) == (4 - level) * 5 + 4 and w.refs[-1].kind == "ept"
    assert [e for e in tr.events if e.kind == "vmexit"][0].data["fault_on"] == "guest_page"


def test_ept_violation_at_an_upper_ept_level():
    m = Machine()
    m.pt.map(0x400000, 0x5000)
    m.ept.set_entry(GUEST_TABLES, 2, 0)           # the EPT PDE over the guest tables
    w = m.walk()
    assert isinstance(w.fault, ept.EptViolation) and w.fault.level == 2
    assert len(w.refs) == 3 and w.fault_level == 4


def test_ept_violation_on_the_final_page():
    m = Machine()
    m.pt.map(0x400000, 0x5000)
    m.ept.set_entry(0x5000, 1, 0)
    w = m.walk(access="x")
    f = w.fault
    assert isinstance(f, ept.EptViolation) and w.fault_on == "guest_final" and w.fault_level == 0
    assert f.gpa == 0x5123 and w.gpa == 0x5123 and w.address is None
    assert f.qualification == ept_violation_qualification("x", 0, True, True)
    assert f.qualification & QUAL_GVA_VALID and f.qualification & QUAL_TRANSLATED
    assert w.error_code == PFERR_GUEST_FINAL_MASK | 16               # PFERR_FETCH_MASK
    assert len(w.refs) == 24


def test_ept_write_to_read_only_final_page():
    m = Machine()
    m.pt.map(0x400000, 0x5000, flags=paging.PteFlags.RW)
    m.ept.set_entry(0x5000, 1, m.hpa(0x5000) | 1 | ept.MemType.WB << 3)     # R only
    w = m.walk(access="w")
    assert isinstance(w.fault, ept.EptViolation) and w.fault.rwx == 1
    assert w.error_code == PFERR_GUEST_FINAL_MASK | 1 | 2            # PRESENT | WRITE
    assert m.walk(access="r").ok


def test_ept_ad_makes_guest_table_reads_writes():
    # guest tables mapped read-only in EPT: fine without EPT A/D, a write violation with it
    for ad, ok in ((False, True), (True, False)):
        m = Machine(ad=ad)
        m.pt.map(0x400000, 0x5000)
        m.ept.set_entry(GUEST_TABLES, 1, m.hpa(GUEST_TABLES) | 1 | ept.MemType.WB << 3)
        w = m.walk()
        assert w.ok is ok
        if not ok:
            assert w.fault_on == "guest_page" and w.fault.rwx == 1
            # a read *and* a write, as KVM's walker asks: nested_access = WRITE | USER with A/D
            assert w.fault.qualification & 3 == 3 and not w.fault.qualification & QUAL_TRANSLATED
            assert w.error_code & 6 == 6                      # PFERR_USER | PFERR_WRITE


def test_oracle_ad_guest_table_accesses_are_reads_and_writes():
    tmpl = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/paging_tmpl.h")
    assert "nested_access = (have_ad ? PFERR_WRITE_MASK : 0) | PFERR_USER_MASK;" in tmpl


def test_ept_misconfig_on_the_final_page():
    m = Machine()
    m.pt.map(0x400000, 0x5000)
    m.ept.set_entry(0x5000, 1, m.hpa(0x5000) | ept.VMX_EPT_MISCONFIG_WX_VALUE)
    w = m.walk()
    assert isinstance(w.fault, ept.EptMisconfig) and w.fault_on == "guest_final"
    assert w.error_code == 8                                          # PFERR_RSVD_MASK
    assert "EPT_MISCONFIG" in w.table()


def test_guest_and_ept_ad_updates_are_optional():
    m = Machine(ad=True)
    m.pt.map(0x400000, 0x5000)
    before = bytes(m.host.read(0, HOST))
    assert m.walk(access="w").ok and bytes(m.host.read(0, HOST)) == before      # off by default
    w = m.walk(access="w", set_ad=True, ept_update_ad=True)
    assert w.ok and len(w.refs) == 24                                           # write-backs not refs
    leaf = paging.walk(m.phys, m.pt.cr3, GVA).steps[-1].entry
    assert leaf & paging.PteFlags.A and leaf & paging.PteFlags.D
    assert m.host.read_u64(w.refs[-1].hpa) & ept.VmxEpt.DIRTY_BIT


def test_bad_input():
    m = Machine()
    with pytest.raises(NestedError, match="ept_levels"):
        m.walk(ept_levels=5)
    with pytest.raises(NestedError, match="access"):
        m.walk(access="q")
    with pytest.raises(NestedError, match="unknown paging option"):
        m.walk(cr4_la57=True)
    # a guest table whose GPA EPT maps outside host memory
    m.pt.map(0x400000, 0x5000)
    m.ept.set_entry(GUEST_TABLES, 1, 0x7F000000 | 7 | ept.MemType.WB << 3)
    with pytest.raises(NestedError, match="outside host memory"):
        m.walk()


# --- property: walk_2d == ept.walk(paging.walk(gva)) ---------------------------------------

_slot = st.tuples(st.integers(0, 15),                           # 2 MiB slot of the GVA space
                  st.sampled_from([K4, M2]),
                  st.integers(0, 511),                           # 4 KiB page in the slot
                  st.integers(0, RAM // K4 - 1),                 # GPA page
                  st.sampled_from([3, 3, 3, 1, 2, 0]))           # RW, US bits


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_slot, max_size=8, unique_by=lambda s: s[0]), st.integers(0, 15), st.integers(0, 511),
       st.integers(0, 0xFFF), st.sampled_from("rwx"), st.sampled_from([False, False, True]),
       st.sampled_from([None, None, 0, M2, M2]), st.integers(0, 3))
def test_walk_2d_is_ept_of_paging(maps, slot, page, off, access, user, hole, pick):
    m = Machine()
    for s, size, pg, gpg, bits in maps:
        gva = s * M2 + (pg * K4 if size == K4 else 0)
        gpa = (gpg * K4) & ~(size - 1)
        m.pt.map(gva, gpa, size=size, flags=bits << 1)
    if hole is not None:                          # an EPT hole over [hole, hole + 2 MiB) of guest RAM
        m.ept.set_entry(hole, 2, 0)
    gva = slot * M2 + page * K4 + off
    if maps and pick:                             # mostly an address that is mapped
        s, size, pg, _, _ = maps[(slot + pick) % len(maps)]
        gva = s * M2 + (pg * K4 if size == K4 else page * K4) + off
    m.host.clear_log()
    w = walk_2d(m.host, m.ept.eptp, m.pt.cr3, gva, access, user=user)
    log = m.host.clear_log()
    # every reference is one 8-byte read of host memory, in order, inside the EPT tables or guest RAM
    assert [(a.kind, a.addr, a.size) for a in log] == [("r", r.hpa, 8) for r in w.refs]
    assert all(EPT_TABLES <= r.hpa < HOST if r.kind == "ept" else M2 <= r.hpa < M2 + RAM for r in w.refs)
    assert len(w.refs) <= refs_count(4, 4)
    gw = paging.walk(m.phys, m.pt.cr3, gva, access, user)      # the guest's view, if EPT were ideal
    event(f"fault_on={w.fault_on} {type(w.fault).__name__}")
    if w.fault_on == "guest_page":
        assert isinstance(w.fault, ept.EptViolation) and hole <= w.fault.gpa < hole + M2
        return
    if gw.fault is not None:
        assert w.fault == gw.fault and w.address is None
        return
    ew = ept.walk(m.host, m.ept.eptp, gw.address, access)
    assert w.gpa == gw.address and w.address == ew.address and w.fault == ew.fault
    if ew.fault is None:
        assert w.address == m.hpa(gw.address) and len(w.refs) == refs_count(len(gw.steps), 4)
    else:
        assert w.fault_on == "guest_final"


# --- nested EPT: EPT02 from EPT12 x EPT01 ------------------------------------------------

L1_SLOT = ept.Memslot.of(0, RAM, M2)         # L1 GPA [0, 4 MiB) at HPA [2 MiB, 6 MiB)
L1_TABLES = 0x80000                          # L1 GPA where L1 keeps EPT12
WB = ept.MemType.WB << 3


class Nested:
    def __init__(self):
        self.host = GuestMemory(8 << 20)
        # EPT01: L0 has mapped only L1 GPA [0, 1 MiB) so far
        self.ept01 = ept.Tdp(ept.EptTables(self.host, EPT_TABLES, alloc_limit=0x680000), [L1_SLOT])
        self.ept01.tables.map(0, M2, 1 << 20)
        # EPT12: written by L1 in its own memory
        self.ept12 = ept.EptTables(Phys(self.host, 0, M2), L1_TABLES, alloc_limit=0xC0000)
        self.ept12.map(0x10000, 0x20000, K4)                  # -> L1 page EPT01 maps
        self.ept12.map(0x11000, 0x200000, K4)                 # -> L1 page EPT01 does not map yet
        self.ept12.map(0x12000, 0x20000, K4, rwx=1)           # read-only for L2
        self.ept12.map(0x13000, 0x1000000, K4)                # beyond L1's memslots: MMIO of L1
        self.ept12.set_entry(0x15000, 1, 0x30000 | ept.VMX_EPT_MISCONFIG_WX_VALUE)
        self.ept02 = Ept02(ept.EptTables(self.host, 0x680000, alloc_limit=0x700000))

    def fault(self, l2_gpa, access="r", **kw):
        return ept02_fault(self.host, self.ept01, self.ept12.eptp, l2_gpa, access, ept02=self.ept02, **kw)


def test_ept12_root_is_an_l1_gpa():
    n = Nested()
    assert ept.Eptp.decode(n.ept12.eptp).pml4 == L1_TABLES
    assert n.host.read_u64(L1_TABLES) == 0 and n.host.read_u64(L1_TABLES + M2) != 0


def test_l0_fixes_ept02_when_ept12_and_ept01_map_it():
    n = Nested()
    assert ept.walk(n.host, n.ept02.eptp, 0x10123).fault is not None     # the EPT02 miss
    d = n.fault(0x10123, "w")
    assert d.outcome == "fixed" and not d.reflected and d.l1_gpa == 0x20123 and d.hpa == M2 + 0x20123
    assert d.functions[-2:] == ("kvm_faultin_pfn", "ept_fetch") and d.guest_physical_address is None
    assert n.ept02.pf_fixed == 1 and n.ept02.reflected == 0
    again = ept.walk(n.host, n.ept02.eptp, 0x10456, "w")                 # L2 re-executes: hardware hit
    assert again.ok and again.address == M2 + 0x20456
    assert n.ept02.trace.events[-1].data["outcome"] == "fixed"


def test_ept01_miss_is_handled_by_l0_alone():
    n = Nested()
    w01 = ept.walk(n.host, n.ept01.tables.eptp, 0x200000)
    assert isinstance(w01.fault, ept.EptViolation)
    d = n.fault(0x11008)
    assert d.outcome == "ept01_miss" and not d.reflected
    assert d.l1_gpa == 0x200008 and d.hpa == M2 + 0x200008                 # from the memslot
    assert n.ept02.pf_fixed == 1 and n.ept02.reflected == 0
    assert ept.walk(n.host, n.ept02.eptp, 0x11008).address == M2 + 0x200008
    assert ept.walk(n.host, n.ept01.tables.eptp, 0x200000).fault is not None  # EPT01 untouched


def test_not_mapped_in_ept12_is_reflected_to_l1():
    n = Nested()
    d = n.fault(0x14010, "w")
    assert d.outcome == "reflect" and d.reflected and d.exit_reason == ept.EXIT_REASON_EPT_VIOLATION
    assert d.qualification == ept_violation_qualification("w", 0, True, True)
    assert d.guest_physical_address == 0x14010                 # vmcs12->guest_physical_address
    assert d.functions[-3:] == ("kvm_inject_emulated_page_fault", "nested_ept_inject_page_fault",
                                "nested_vmx_vmexit")
    assert n.ept02.reflected == 1 and n.ept02.pf_fixed == 0
    assert ept.walk(n.host, n.ept02.eptp, 0x14010).fault is not None   # nothing installed


def test_ept12_permission_fault_keeps_rwx_and_bits_7_8():
    n = Nested()
    d = n.fault(0x12000, "w", translated=False)                 # a write by L2's page walker
    assert d.reflected and d.qualification == ept_violation_qualification("w", 1, True, False)
    assert d.qualification >> 3 & 7 == 1 and not d.qualification & QUAL_TRANSLATED
    assert n.fault(0x12000, "r").outcome == "fixed"
    assert ept.walk(n.host, n.ept02.eptp, 0x12000, "w").fault.rwx == 1  # EPT02 got EPT12's rights


def test_ept12_misconfig_is_reflected_as_misconfig():
    n = Nested()
    d = n.fault(0x15000)
    assert d.reflected and d.exit_reason == ept.EXIT_REASON_EPT_MISCONFIG and d.qualification is None


def test_l1_mmio_is_emulated_by_l0():
    n = Nested()
    d = n.fault(0x13000)
    assert d.outcome == "emulate" and d.l1_gpa == 0x1000000 and d.hpa is None
    assert n.ept02.pf_emulate == 1 and "handle_abnormal_pfn" in d.functions


def test_repr_and_decision_without_ept02():
    n = Nested()
    d = ept02_fault(n.host, n.ept01, n.ept12.eptp, 0x10000)
    assert d.outcome == "fixed" and ept.walk(n.host, n.ept02.eptp, 0x10000).fault is not None
    assert repr(d) == "Ept02Fault(fixed, l2_gpa=0x10000, 'r', l1_gpa=0x20000, hpa=0x220000)"
    assert repr(n.fault(0x14000)) == ("Ept02Fault(reflect, l2_gpa=0x14000, 'r', exit_reason=48, "
                                      "qualification=0x181)")


# --- the names, pinned to Linux 6.1 -----------------------------------------------------------


def test_kernel_names_linux_6_1():
    nested_c = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/nested.c")
    inject = function_body(nested_c, "static void nested_ept_inject_page_fault(")
    assert "EXIT_REASON_EPT_MISCONFIG" in inject and "EXIT_REASON_EPT_VIOLATION" in inject
    assert "PFERR_RSVD_MASK" in inject and "nested_vmx_vmexit(" in inject
    assert "vmcs12->guest_physical_address = fault->address;" in inject
    init = function_body(nested_c, "static void nested_ept_init_mmu_context(")
    assert "get_guest_pgd     = nested_ept_get_eptp;" in init
    assert "inject_page_fault = nested_ept_inject_page_fault;" in init
    nested_h = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/nested.h")
    assert "return get_vmcs12(vcpu)->ept_pointer;" in function_body(
        nested_h, "static inline unsigned long nested_ept_get_eptp(")

    tmpl = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/paging_tmpl.h")
    assert re.search(r"#elif PTTYPE == PTTYPE_EPT\n(.*\n){0,3}\s*#define FNAME\(name\) ept_##name", tmpl)
    pf = function_body(tmpl, "static int FNAME(page_fault)(")
    for name in ("FNAME(walk_addr)(", "kvm_inject_emulated_page_fault(", "kvm_faultin_pfn(",
                 "handle_abnormal_pfn(", "FNAME(fetch)("):
        assert name in pf, name
    walk = function_body(tmpl, "static int FNAME(walk_addr_generic)(")
    assert "(EPT_VIOLATION_GVA_IS_VALID |\n\t\t\t\t\t\t  EPT_VIOLATION_GVA_TRANSLATED)" in walk
    assert "<<\n\t\t\t\t\t\t EPT_VIOLATION_RWX_SHIFT" in walk

    mmu_c = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/mmu.c")
    assert "#define PTTYPE_EPT 18" in mmu_c
    assert "context->page_fault = ept_page_fault;" in function_body(mmu_c, "void kvm_init_shadow_ept_mmu(")

    host_h = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/include/asm/kvm_host.h")
    assert f"#define PFERR_GUEST_FINAL_BIT {nested.PFERR_GUEST_FINAL_BIT}\n" in host_h
    assert f"#define PFERR_GUEST_PAGE_BIT {nested.PFERR_GUEST_PAGE_BIT}\n" in host_h
    vmx_c = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/vmx.c")
    hev = function_body(vmx_c, "static int handle_ept_violation(")
    assert re.search(r"EPT_VIOLATION_GVA_TRANSLATED\) != 0 \?\s*PFERR_GUEST_FINAL_MASK : "
                     r"PFERR_GUEST_PAGE_MASK", hev)
