"""vbook.models.paging: the builder, the walk, every fault path with its exact error code."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from vbook.errors import MemoryAccessError, PagingError, VbookError
from vbook.memory import GuestMemory
from vbook.models.paging import (
    LEVEL_NAMES,
    PAGE_SIZE,
    SIZE_1G,
    SIZE_2M,
    MapError,
    MisalignedMap,
    NonCanonicalAddress,
    OutOfTableMemory,
    OverlappingMap,
    PageTables,
    PfErr,
    PteFlags,
    TableOutsideMemory,
    is_canonical,
    walk,
)
from vbook.trace import TraceRecorder

P, RW, US, A, D, PS, NX = (PteFlags.P, PteFlags.RW, PteFlags.US, PteFlags.A, PteFlags.D,
                           PteFlags.PS, PteFlags.NX)
E_P, E_W, E_U, E_RSVD, E_I = PfErr.P, PfErr.W, PfErr.U, PfErr.RSVD, PfErr.I

GVA = 0x0000_7F12_3456_7000       # pml4 254, pdpt 72, pd 418, pt 359
GPA = 0x0004_5000


def tables(size=PAGE_SIZE, flags=RW | US, levels=4, table_flags=P | RW | US, gva=GVA, gpa=GPA,
           mem_size=1 << 20):
    mem = GuestMemory(mem_size)
    pt = PageTables(mem, 0x10000, levels=levels)
    pt.map(gva, gpa, size, flags, table_flags=table_flags)
    mem.clear_log()
    return mem, pt


def code(w):
    assert w.fault is not None, w
    return w.fault.error_code


# --- constants ---------------------------------------------------------------------------------


def test_pte_bits_are_linux_pgtable_types():
    assert [int(f) for f in (P, RW, US, PteFlags.PWT, PteFlags.PCD, A, D, PS, PteFlags.G)] == \
        [1 << b for b in range(9)]
    assert NX == 1 << 63


def test_pf_error_code_bits_are_x86_pf():
    assert (int(E_P), int(E_W), int(E_U), int(E_RSVD), int(E_I), int(PfErr.PK), int(PfErr.SGX)) == \
        (1, 2, 4, 8, 16, 32, 1 << 15)


# --- translation -------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("size", [PAGE_SIZE, SIZE_2M, SIZE_1G])
def test_mapped_page_translates_with_offset(levels, size):
    gva, gpa = 0x0000_7F00_0000_0000, 0x1_4000_0000
    mem, pt = tables(size, levels=levels, gva=gva, gpa=gpa)
    off = size - 8
    w = walk(mem, pt.cr3, gva + off, levels=levels)
    assert w.fault is None and w.ok
    assert w.address == gpa + off
    assert w.page_size == size
    leaf_level = {PAGE_SIZE: 1, SIZE_2M: 2, SIZE_1G: 3}[size]
    assert [s.level for s in w.steps] == list(range(levels, leaf_level - 1, -1))
    assert [s.name for s in w.steps] == [LEVEL_NAMES[lv] for lv in range(levels, leaf_level - 1, -1)]
    assert bool(w.steps[-1].entry & PS) == (size > PAGE_SIZE)
    # exactly one 8-byte read per step, at the recorded entry addresses
    assert [(a.kind, a.addr, a.size) for a in mem.accesses] == [("r", s.entry_addr, 8) for s in w.steps]


def test_builder_output_is_what_walk_reads():
    mem = GuestMemory(1 << 20)
    pt = PageTables(mem, 0x20000)
    leaf_addr = pt.map(GVA, GPA, flags=RW)
    w = walk(mem, pt.cr3, GVA + 0x123, access="w")
    assert w.address == GPA + 0x123
    # the chain: CR3 -> each entry's address field -> next table, exactly as allocated
    assert w.steps[0].entry_addr == pt.cr3 + 8 * 254
    for prev, nxt in zip(w.steps, w.steps[1:], strict=False):
        assert nxt.entry_addr & ~0xFFF == prev.entry & 0x000F_FFFF_FFFF_F000
        assert prev.entry & 0xFFF == P | RW | US
    assert w.steps[-1].entry_addr == leaf_addr
    assert w.steps[-1].entry == GPA | P | RW
    assert [s.index for s in w.steps] == [254, 72, 418, 359]
    assert pt.tables == [0x20000, 0x21000, 0x22000, 0x23000]
    assert mem.read_u64(leaf_addr) == GPA | P | RW


def test_builder_shares_tables_and_walks_through_pagetables_walk():
    mem = GuestMemory(1 << 20)
    pt = PageTables(mem, 0x10000)
    pt.map(0x1000, 0x5000)
    pt.map(0x2000, 0x6000)
    pt.map(0x20_0000, 0x40_0000, SIZE_2M)
    assert len(pt.tables) == 4             # pml4, pdpt, pd, one pt
    assert pt.walk(0x1008).address == 0x5008
    assert pt.walk(0x2ff0).address == 0x6ff0
    assert pt.walk(0x2F_FFFF).address == 0x4F_FFFF
    assert code(pt.walk(0x3000)) == 0      # not present in the shared pt


def test_upper_half_and_5_level_canonical():
    mem, pt = tables(gva=0xFFFF_8000_0000_0000)
    assert walk(mem, pt.cr3, 0xFFFF_8000_0000_0010).address == GPA + 0x10
    assert walk(mem, pt.cr3, 0xFFFF_8000_0000_0010).steps[0].index == 256
    gva5 = 0x00FF_0000_0000_0000      # canonical only with LA57
    assert not is_canonical(gva5, 4) and is_canonical(gva5, 5)
    mem, pt = tables(levels=5, gva=gva5)
    w = walk(mem, pt.cr3, gva5 + 4, levels=5)
    assert w.address == GPA + 4 and w.steps[0].name == "pml5" and w.steps[0].index == 0xFF
    with pytest.raises(NonCanonicalAddress, match="not canonical for 4-level"):
        walk(mem, pt.cr3, gva5)


@pytest.mark.parametrize("gva", [0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_FFFF, 0x1234_0000_0000_0000])
def test_non_canonical_is_gp_not_pf(gva):
    mem, pt = tables()
    with pytest.raises(NonCanonicalAddress, match="#GP") as e:
        walk(mem, pt.cr3, gva)
    assert isinstance(e.value, PagingError) and e.value.gva == gva
    assert mem.accesses == []          # no walk happened


# --- not present -------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [4, 3, 2, 1])
@pytest.mark.parametrize("access,user,expected", [
    ("r", False, 0), ("w", False, E_W), ("r", True, E_U), ("w", True, E_W | E_U),
    ("x", False, E_I), ("x", True, E_U | E_I),
])
def test_not_present_at_each_level(level, access, user, expected):
    mem, pt = tables()
    w0 = walk(mem, pt.cr3, GVA)
    victim = w0.steps[4 - level]
    mem.write_u64(victim.entry_addr, victim.entry & ~P)
    w = walk(mem, pt.cr3, GVA + 0x10, access, user)
    assert w.address is None and w.page_size is None
    assert code(w) == expected
    assert w.fault.level == level and w.fault.cr2 == GVA + 0x10
    assert len(w.steps) == 5 - level
    assert "not present" in w.fault.reason


def test_fetch_sets_i_only_with_nxe_or_smep():
    mem = GuestMemory(1 << 16)
    pt = PageTables(mem, 0)
    assert code(walk(mem, pt.cr3, GVA, "x", efer_nxe=False)) == 0
    assert code(walk(mem, pt.cr3, GVA, "x", efer_nxe=False, cr4_smep=True)) == E_I
    assert code(walk(mem, pt.cr3, GVA, "x", efer_nxe=True)) == E_I
    assert code(walk(mem, pt.cr3, GVA, "x", True, efer_nxe=False)) == E_U


# --- reserved bits -----------------------------------------------------------------------------


def _set(mem, w, level, bits):
    s = next(s for s in w.steps if s.level == level)
    mem.write_u64(s.entry_addr, s.entry | bits)


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_bits_above_maxphyaddr_are_reserved(level):
    mem, pt = tables()
    w0 = walk(mem, pt.cr3, GVA, maxphyaddr=46)
    _set(mem, w0, level, 1 << 46)
    w = walk(mem, pt.cr3, GVA, "w", True, maxphyaddr=46)
    assert code(w) == E_P | E_RSVD | E_W | E_U
    assert w.fault.level == level and "reserved" in w.fault.reason
    # bit 46 is an address bit when MAXPHYADDR = 52: no reserved-bit fault, just a walk elsewhere
    w52 = walk(mem, pt.cr3, GVA, maxphyaddr=52) if level == 1 else None
    if w52 is not None:
        assert w52.address == (1 << 46) | GPA


def test_ps_in_pml4e_and_pml5e_is_reserved():
    mem, pt = tables()
    _set(mem, walk(mem, pt.cr3, GVA), 4, PS)
    w = walk(mem, pt.cr3, GVA)
    assert code(w) == E_P | E_RSVD and w.fault.level == 4 and len(w.steps) == 1
    mem, pt = tables(levels=5)
    _set(mem, walk(mem, pt.cr3, GVA, levels=5), 5, PS)
    assert code(walk(mem, pt.cr3, GVA, "x", levels=5)) == E_P | E_RSVD | E_I


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_nx_is_reserved_without_nxe(level):
    mem, pt = tables()
    _set(mem, walk(mem, pt.cr3, GVA), level, NX)
    w = walk(mem, pt.cr3, GVA, "r", efer_nxe=False)
    assert code(w) == E_P | E_RSVD and w.fault.level == level
    assert walk(mem, pt.cr3, GVA, "r", efer_nxe=True).ok      # with NXE it only forbids fetches


@pytest.mark.parametrize("bit", range(13, 21))
def test_2m_pde_bits_20_13_reserved(bit):
    mem, pt = tables(SIZE_2M, gva=GVA & ~(SIZE_2M - 1), gpa=0x40_0000)
    _set(mem, walk(mem, pt.cr3, GVA), 2, 1 << bit)
    w = walk(mem, pt.cr3, GVA)
    assert code(w) == E_P | E_RSVD and w.fault.level == 2


@pytest.mark.parametrize("bit", range(13, 30))
def test_1g_pdpte_bits_29_13_reserved(bit):
    mem, pt = tables(SIZE_1G, gva=GVA & ~(SIZE_1G - 1), gpa=SIZE_1G)
    _set(mem, walk(mem, pt.cr3, GVA), 3, 1 << bit)
    w = walk(mem, pt.cr3, GVA, "w")
    assert code(w) == E_P | E_RSVD | E_W and w.fault.level == 3


def test_pat_bits_are_not_reserved():
    mem, pt = tables(SIZE_2M, gva=GVA & ~(SIZE_2M - 1), gpa=0x40_0000)
    _set(mem, walk(mem, pt.cr3, GVA), 2, 1 << 12)          # PAT of a large leaf
    w = walk(mem, pt.cr3, GVA + 0x10)
    assert w.ok and w.address == 0x40_0000 + (GVA & (SIZE_2M - 1)) + 0x10   # and not an address bit
    mem, pt = tables()
    _set(mem, walk(mem, pt.cr3, GVA), 1, 1 << 7)           # PAT of a 4 KiB PTE
    assert walk(mem, pt.cr3, GVA).address == GPA
    _set(mem, walk(mem, pt.cr3, GVA), 1, 0x7FF0_0000_0000_0E00)  # ignored + protection-key bits
    assert walk(mem, pt.cr3, GVA).address == GPA


def test_reserved_is_checked_only_in_present_entries():
    mem, pt = tables()
    s = walk(mem, pt.cr3, GVA).steps[2]
    mem.write_u64(s.entry_addr, (s.entry | PS | (1 << 51) | NX | 0x1E000) & ~P)
    assert code(walk(mem, pt.cr3, GVA, maxphyaddr=40, efer_nxe=False)) == 0


# --- access rights -----------------------------------------------------------------------------


@pytest.mark.parametrize("flags,access,user,expected", [
    (RW | US, "r", True, None),
    (RW | US, "w", True, None),
    (RW, "r", True, E_P | E_U),            # supervisor page, user read
    (RW, "w", True, E_P | E_W | E_U),
    (RW, "x", True, E_P | E_U | E_I),
    (US, "r", True, None),
    (US, "w", True, E_P | E_W | E_U),      # read-only page, user write
    (US, "w", False, E_P | E_W),           # CR0.WP = 1 by default
    (0, "w", False, E_P | E_W),
    (0, "r", False, None),
    (0, "x", False, None),
    (NX, "x", False, E_P | E_I),
    (NX | US, "x", True, E_P | E_U | E_I),
    (NX | RW | US, "w", True, None),
])
def test_leaf_rights(flags, access, user, expected):
    mem, pt = tables(flags=flags)
    w = walk(mem, pt.cr3, GVA + 8, access, user)
    if expected is None:
        assert w.ok and w.address == GPA + 8
    else:
        assert code(w) == expected and w.fault.level == 1 and w.fault.cr2 == GVA + 8
        assert len(w.steps) == 4 and w.address is None


@pytest.mark.parametrize("level", [4, 3, 2])
def test_rights_combine_over_every_level(level):
    # clear US / RW / set NX in one upper entry only: the leaf alone allows everything
    for bit, access, user, expected in [(US, "r", True, E_P | E_U), (RW, "w", True, E_P | E_W | E_U),
                                        (RW, "w", False, E_P | E_W)]:
        mem, pt = tables(flags=RW | US)
        s = next(s for s in walk(mem, pt.cr3, GVA).steps if s.level == level)
        mem.write_u64(s.entry_addr, s.entry & ~bit)
        assert code(walk(mem, pt.cr3, GVA, access, user)) == expected
    mem, pt = tables(flags=RW | US)
    _set(mem, walk(mem, pt.cr3, GVA), level, NX)
    assert code(walk(mem, pt.cr3, GVA, "x", True)) == E_P | E_U | E_I
    assert walk(mem, pt.cr3, GVA, "w", True).ok


def test_cr0_wp_zero_lets_supervisor_write_read_only():
    mem, pt = tables(flags=0)
    assert walk(mem, pt.cr3, GVA, "w", cr0_wp=False).ok
    mem, pt = tables(flags=US)
    assert walk(mem, pt.cr3, GVA, "w", cr0_wp=False).ok                 # user page, no SMAP
    assert code(walk(mem, pt.cr3, GVA, "w", True, cr0_wp=False)) == E_P | E_W | E_U   # user: always


def test_nx_without_nxe_is_no_protection_and_no_i():
    mem, pt = tables(flags=RW)
    assert walk(mem, pt.cr3, GVA, "x", efer_nxe=False).ok


def test_smep():
    mem, pt = tables(flags=RW | US)
    assert code(walk(mem, pt.cr3, GVA, "x", cr4_smep=True)) == E_P | E_I
    assert code(walk(mem, pt.cr3, GVA, "x", cr4_smep=True, efer_nxe=False)) == E_P | E_I
    assert walk(mem, pt.cr3, GVA, "x", cr4_smep=False).ok
    assert walk(mem, pt.cr3, GVA, "r", cr4_smep=True).ok                # data: not SMEP's business
    assert walk(mem, pt.cr3, GVA, "x", True, cr4_smep=True).ok          # user fetch
    # U/S=0 at one upper level: a supervisor-mode address, SMEP does not apply
    mem, pt = tables(flags=RW | US, table_flags=P | RW)
    assert walk(mem, pt.cr3, GVA, "x", cr4_smep=True).ok


def test_smap():
    mem, pt = tables(flags=RW | US)
    w = walk(mem, pt.cr3, GVA, "r", cr4_smap=True)
    assert code(w) == E_P and "SMAP" in w.fault.reason
    assert code(walk(mem, pt.cr3, GVA, "w", cr4_smap=True)) == E_P | E_W
    assert code(walk(mem, pt.cr3, GVA, "w", cr4_smap=True, cr0_wp=False)) == E_P | E_W
    assert walk(mem, pt.cr3, GVA, "x", cr4_smap=True).ok                # fetch: not SMAP's business
    assert walk(mem, pt.cr3, GVA, "r", True, cr4_smap=True).ok          # user access
    mem, pt = tables(flags=RW | US, table_flags=P | RW)                 # supervisor-mode address
    assert walk(mem, pt.cr3, GVA, "w", cr4_smap=True).ok


# --- accessed / dirty --------------------------------------------------------------------------


def test_set_ad_read_sets_a_everywhere_write_sets_d_on_leaf():
    mem, pt = tables(SIZE_2M, gva=GVA & ~(SIZE_2M - 1), gpa=SIZE_2M)
    w = walk(mem, pt.cr3, GVA, "r", set_ad=True)
    assert w.ok and [s.entry & A for s in w.steps] == [0, 0, 0]           # steps: as read
    assert [a.kind for a in mem.accesses] == ["r", "r", "r", "w", "w", "w"]
    assert [mem.read_u64(s.entry_addr) & (A | D) for s in w.steps] == [A, A, A]
    mem.clear_log()
    w = walk(mem, pt.cr3, GVA, "w", set_ad=True)
    assert [a.kind for a in mem.accesses].count("w") == 1                  # only D was new
    assert [mem.read_u64(s.entry_addr) & (A | D) for s in w.steps] == [A, A, A | D]
    mem.clear_log()
    walk(mem, pt.cr3, GVA, "w", set_ad=True)
    assert all(a.kind == "r" for a in mem.accesses)


def test_set_ad_writes_nothing_on_a_fault_or_by_default():
    mem, pt = tables(flags=US)
    before = bytes(mem.buf)
    assert not walk(mem, pt.cr3, GVA, "w", True, set_ad=True).ok
    assert walk(mem, pt.cr3, GVA, "r", True).ok
    assert bytes(mem.buf) == before


# --- bad tables --------------------------------------------------------------------------------


def test_cr3_outside_memory_is_a_typed_error():
    mem = GuestMemory(1 << 16)
    with pytest.raises(TableOutsideMemory, match=r"pml4 entry at 0x107f0 \(level 4\).*CR3") as e:
        walk(mem, 0x10000, GVA)
    assert e.value.level == 4 and e.value.entry_addr == 0x10000 + 8 * 254 and e.value.parent is None
    assert mem.accesses == []


@pytest.mark.parametrize("level", [4, 3, 2])
def test_entry_pointing_outside_memory_names_level_and_entry(level):
    mem, pt = tables(mem_size=0x20000)
    s = next(s for s in walk(mem, pt.cr3, GVA).steps if s.level == level)
    mem.write_u64(s.entry_addr, 0x7_0000_0000 | P | RW | US)
    mem.clear_log()
    with pytest.raises(TableOutsideMemory) as e:
        walk(mem, pt.cr3, GVA)
    err = e.value
    assert err.level == level - 1 and err.parent.entry_addr == s.entry_addr
    assert f"{LEVEL_NAMES[level]} entry at {s.entry_addr:#x}" in str(err)
    assert not isinstance(err, MemoryAccessError) and isinstance(err, VbookError)
    assert all(a.addr + a.size <= mem.size for a in mem.accesses)
    assert len(mem.accesses) == 5 - level


def test_entry_straddling_the_end_of_memory():
    mem = GuestMemory(0x10004)       # the last entry's 8 bytes would cross the end
    mem.write_u64(0, 0x10000 | P)
    with pytest.raises(TableOutsideMemory):
        walk(mem, 0, 0)


def test_self_referencing_tables_terminate():
    mem = GuestMemory(1 << 16)
    cr3 = 0x3000
    mem.write_u64(cr3, cr3 | P | RW)                   # pml4[0] -> the pml4 itself
    mem.clear_log()
    w = walk(mem, cr3, 0x0000_0000_0000_0ABC)
    assert len(mem.accesses) == 4 and len(w.steps) == 4
    assert {s.entry_addr for s in w.steps} == {cr3}
    assert w.address == cr3 + 0xABC                    # the pml4 is read as a 4 KiB page
    # the recursive slot as Windows / old Linux use it: pml4[511] -> pml4
    mem.write_u64(cr3 + 8 * 511, cr3 | P | RW)
    w = walk(mem, cr3, 0xFFFF_FFFF_FFFF_F000 + 8 * 511, "w")
    assert w.address == cr3 + 8 * 511 and len(w.steps) == 4


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,match", [
    ({"access": "rw"}, "access"), ({"levels": 3}, "levels"), ({"maxphyaddr": 60}, "maxphyaddr"),
    ({"gva": -1}, "64-bit"), ({"gva": 1 << 64}, "64-bit"), ({"cr3": 1 << 52}, "CR3"),
    ({"cr3": 1 << 40, "maxphyaddr": 40}, "CR3"),
])
def test_bad_walk_arguments(kw, match):
    mem = GuestMemory(1 << 16)
    args = {"cr3": 0, "gva": 0}
    args.update(kw)
    with pytest.raises(PagingError, match=match):
        walk(mem, args.pop("cr3"), args.pop("gva"), **args)


def test_builder_refuses_misaligned():
    mem = GuestMemory(1 << 20)
    pt = PageTables(mem, 0)
    for gva, gpa, size in [(0x1001, 0x2000, PAGE_SIZE), (0x1000, 0x2800, PAGE_SIZE),
                           (0x1000, 0x20_0000, SIZE_2M), (SIZE_2M, 0x1000, SIZE_2M),
                           (SIZE_2M, SIZE_1G, SIZE_1G)]:
        with pytest.raises(MisalignedMap, match="aligned"):
            pt.map(gva, gpa, size)
    with pytest.raises(MisalignedMap):
        PageTables(mem, 0x800)


@pytest.mark.parametrize("first,second", [
    ((0x1000, 0x5000, PAGE_SIZE), (0x1000, 0x6000, PAGE_SIZE)),
    ((0, 0, SIZE_2M), (0x1000, 0x6000, PAGE_SIZE)),
    ((0x1000, 0x5000, PAGE_SIZE), (0, 0, SIZE_2M)),
    ((0, 0, SIZE_1G), (SIZE_2M, 0, SIZE_2M)),
    ((SIZE_2M, 0, SIZE_2M), (0, 0, SIZE_1G)),
    ((0x3000, 0x5000, PAGE_SIZE), (0, SIZE_1G, SIZE_1G)),
])
def test_builder_refuses_overlap(first, second):
    mem = GuestMemory(1 << 20)
    pt = PageTables(mem, 0)
    pt.map(*first)
    before, n = bytes(mem.buf), len(pt.tables)
    with pytest.raises(OverlappingMap, match="already"):
        pt.map(*second)
    assert bytes(mem.buf) == before and len(pt.tables) == n     # nothing half-built
    assert pt.walk(first[0]).address == first[1]


def test_builder_other_errors():
    mem = GuestMemory(0x4000)
    pt = PageTables(mem, 0x1000)
    with pytest.raises(OutOfTableMemory, match="no room"):
        pt.map(GVA, GPA)
    mem = GuestMemory(1 << 20)
    pt = PageTables(mem, 0)
    with pytest.raises(MapError, match="page size"):
        pt.map(0, 0, 8192)
    with pytest.raises(MapError, match="flags"):
        pt.map(0, 0, flags=PS)
    with pytest.raises(MapError, match="flags"):
        pt.map(0, 0, flags=0x1000)
    with pytest.raises(NonCanonicalAddress):
        pt.map(0x0000_8000_0000_0000, 0)
    with pytest.raises(MapError, match="MAXPHYADDR"):
        PageTables(mem, 0, maxphyaddr=40).map(0, 1 << 40)
    with pytest.raises(MapError, match="outside memory"):
        PageTables(mem, 0, alloc_limit=2 << 20)
    with pytest.raises(PagingError, match="levels"):
        PageTables(mem, 0, levels=3)


# --- repr, table, trace ------------------------------------------------------------------------


def test_reprs_are_stable():
    mem, pt = tables(flags=RW)
    w = walk(mem, pt.cr3, GVA + 0x10)
    assert repr(w) == ("Walk(gva=0x7f1234567010, read, supervisor, steps=4, address=0x45010, "
                       "page_size=0x1000)")
    assert repr(w.steps[0]) == "Step(pml4, index=0xfe, entry_addr=0x107f0, entry=0x11007)"
    f = walk(mem, pt.cr3, GVA, "w", True)
    assert repr(f.fault) == ("PageFault(error_code=0x7 [P|W|U], cr2=0x7f1234567000, level=1, "
                             "reason='user access to a supervisor-mode address (U/S=0 at some level)')")
    assert repr(pt) == "PageTables(cr3=0x10000, levels=4, tables=4, next_free=0x14000)"
    for r in (repr(w), repr(f), repr(pt), w.table(), f.table()):
        assert not re.search(r"object at 0x|<.*>", r)


def test_table_rendering():
    mem, pt = tables(flags=RW)
    assert walk(mem, pt.cr3, GVA + 0x10).table() == "\n".join([
        "4-level walk of 0x00007f1234567010 (read, supervisor)",
        "level table  index  entry_addr          entry               flags",
        "4     pml4     254  0x00000000000107f0  0x0000000000011007  P RW US",
        "3     pdpt      72  0x0000000000011240  0x0000000000012007  P RW US",
        "2     pd       418  0x0000000000012d10  0x0000000000013007  P RW US",
        "1     pt       359  0x0000000000013b38  0x0000000000045003  P RW",
        "-> gpa 0x45010 (4 KiB page)",
    ])
    last = walk(mem, pt.cr3, 0x1000, "x").table().splitlines()[-1]
    assert last == "-> #PF error_code=0x10 (I) cr2=0x1000 at pml4: pml4 entry not present"


def test_trace_records_every_step():
    mem, pt = tables(flags=RW)
    tr = TraceRecorder(title="walk")
    w = walk(mem, pt.cr3, GVA, "w", set_ad=True, trace=tr)
    kinds = [e.kind for e in tr.events]
    assert kinds == ["pte_read"] * 4 + ["pte_write"] * 4 + ["translate"]
    assert all(e.actor == "guest" for e in tr.events)
    assert [e["entry_addr"] for e in tr.events[:4]] == [s.entry_addr for s in w.steps]
    assert tr.events[-1]["gpa"] == GPA
    tr = TraceRecorder()
    walk(mem, pt.cr3, GVA, "r", True, trace=tr)
    assert tr.events[-1].kind == "page_fault" and tr.events[-1]["error_code"] == E_P | E_U
    trace = tr.freeze()
    assert type(trace).from_json(trace.to_json()) == trace


# --- properties: random page tables --------------------------------------------------------------

MEM_PAGES = 8
IDX = (0, 1, 2, 511)


def _entry():
    """A random entry, biased towards present, permissive and in memory so that walks get deep."""
    pct = st.integers(0, 99)
    extra = st.sampled_from([0] * 40 + [1 << 45, 1 << 13, 1 << 51, 1 << 20, 1 << 29, 0x1F0E00])

    def build(f, p, rw, us, ps, nx, ad, x):
        frame = f % MEM_PAGES if f < 93 else MEM_PAGES + f % 4      # a few frames lie outside memory
        return ((frame << 12) | (P if p < 92 else 0) | (RW if rw < 80 else 0) | (US if us < 80 else 0)
                | (PS if ps >= 85 else 0) | (NX if nx >= 90 else 0) | (A | D if ad >= 70 else 0) | x)
    return st.builds(build, pct, pct, pct, pct, pct, pct, pct, extra)


random_tables = st.lists(_entry(), min_size=MEM_PAGES * len(IDX), max_size=MEM_PAGES * len(IDX))


def _gva(levels, idxs, off):
    v = off
    for lv, i in zip(range(levels, 0, -1), idxs, strict=False):
        v |= i << (12 + 9 * (lv - 1))
    width = 48 if levels == 4 else 57
    if v >> (width - 1):
        v |= ((1 << 64) - 1) & ~((1 << width) - 1)
    return v


def _allowed(entries, access, user, wp, smep, smap, nxe):
    """The SDM §4.6 rules, written as a decision on the ANDed / ORed bits (test oracle)."""
    us = all(e & US for e in entries)
    rw = all(e & RW for e in entries)
    xd = nxe and any(e & NX for e in entries)
    if access == "x":
        return (us if user else not (smep and us)) and not xd
    if user:
        return us and (rw or access == "r")
    if smap and us:
        return False
    return access == "r" or rw or not wp


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_tables, st.sampled_from([4, 5]), st.sampled_from([*range(MEM_PAGES), MEM_PAGES]),
       st.lists(st.sampled_from(IDX), min_size=5, max_size=5), st.integers(0, 0xFFF),
       st.sampled_from("rwx"), st.booleans(), st.booleans(), st.booleans(), st.booleans(),
       st.booleans(), st.sampled_from([40, 46, 52]), st.booleans())
def test_random_tables(entries, levels, cr3_page, idxs, off, access, user, wp, smep, smap, nxe, mpa,
                       set_ad):
    mem = GuestMemory(MEM_PAGES * PAGE_SIZE)
    for k, value in enumerate(entries):
        mem.write_u64(k // len(IDX) * PAGE_SIZE + 8 * IDX[k % len(IDX)], int(value))
    mem.clear_log()
    gva = _gva(levels, idxs, off)
    kw = dict(levels=levels, cr0_wp=wp, cr4_smep=smep, cr4_smap=smap, efer_nxe=nxe, maxphyaddr=mpa,
              set_ad=set_ad)
    try:
        w = walk(mem, cr3_page * PAGE_SIZE, gva, access, user, **kw)
    except TableOutsideMemory as e:
        w = None
        event("table outside memory")
        assert e.entry_addr + 8 > mem.size and 1 <= e.level <= levels
    reads = [a for a in mem.accesses if a.kind == "r"]
    assert all(0 <= a.addr and a.addr + a.size <= mem.size for a in mem.accesses)
    assert all(a.size == 8 for a in mem.accesses)
    assert len(reads) <= levels
    if w is None:
        return
    assert len(reads) == len(w.steps) and [a.addr for a in reads] == [s.entry_addr for s in w.steps]
    assert [s.level for s in w.steps] == list(range(levels, levels - len(w.steps), -1))
    assert all(a.addr in {s.entry_addr for s in w.steps} for a in mem.accesses if a.kind == "w")
    last = w.steps[-1]
    event("ok" if w.fault is None else f"fault P={w.fault.error_code & 1} RSVD={w.fault.error_code >> 3 & 1}")
    if w.fault is not None:
        ec = w.fault.error_code
        assert bool(ec & E_W) == (access == "w")
        assert bool(ec & E_U) == user
        assert bool(ec & E_I) == (access == "x" and (nxe or smep))
        assert bool(ec & E_P) == last.present
        assert not ec & E_RSVD or ec & E_P
        assert not ec & PfErr.PK
        assert w.fault.cr2 == gva and w.fault.level == last.level
        assert w.address is None and not any(a.kind == "w" for a in mem.accesses)
        if ec & E_P and not ec & E_RSVD:          # a protection fault: the full walk was done
            assert not _allowed([s.entry for s in w.steps], access, user, wp, smep, smap, nxe)
    else:
        assert last.present and (last.level == 1 or last.entry & PS)
        assert last.level <= 3
        assert _allowed([s.entry for s in w.steps], access, user, wp, smep, smap, nxe)
        size = w.page_size
        assert size == 1 << (12 + 9 * (last.level - 1))
        assert w.address % size == gva % size
        assert w.address - gva % size == last.entry & ((1 << mpa) - 1) & ~(size - 1)
        if set_ad:
            assert all(mem.read_u64(s.entry_addr) & A for s in w.steps)
            if access == "w":
                assert mem.read_u64(last.entry_addr) & D


FLAG_SETS = st.sampled_from([0, int(RW), int(US), int(RW | US), int(RW | US | NX), int(NX)])


@st.composite
def mappings(draw):
    levels = draw(st.sampled_from([4, 5]))
    out = []
    for _ in range(draw(st.integers(1, 12))):
        size = draw(st.sampled_from([PAGE_SIZE, SIZE_2M, SIZE_1G]))
        hi = draw(st.sampled_from([0, 0xFFFF_8000_0000_0000] if levels == 4
                                  else [0, 0xFF00_0000_0000_0000, 0x0000_8000_0000_0000]))
        gva = hi + draw(st.integers(0, 2)) * SIZE_1G + draw(st.integers(0, 2)) * SIZE_2M \
            + draw(st.integers(0, 3)) * PAGE_SIZE
        gva &= ~(size - 1)
        gpa = draw(st.integers(0, 1 << 20)) * size % (1 << 52)
        out.append((gva, gpa, size, draw(FLAG_SETS)))
    return levels, out


@settings(max_examples=200, deadline=None)
@given(mappings(), st.data())
def test_built_tables_translate_what_was_mapped(spec, data):
    levels, maps = spec
    mem = GuestMemory(64 * PAGE_SIZE)
    pt = PageTables(mem, 0, levels=levels)
    done = []
    for gva, gpa, size, flags in maps:
        overlaps = any(gva < g + s and g < gva + size for g, _, s, _ in done)
        if overlaps:
            with pytest.raises(OverlappingMap):
                pt.map(gva, gpa, size, flags)
        else:
            leaf = pt.map(gva, gpa, size, flags)
            done.append((gva, gpa, size, flags))
            assert pt.walk(gva).steps[-1].entry_addr == leaf
    for gva, gpa, size, flags in done:
        off = data.draw(st.integers(0, size - 1))
        mem.clear_log()
        w = pt.walk(gva + off)
        assert w.address == gpa + off and w.page_size == size
        assert all(a.addr + a.size <= mem.size for a in mem.accesses) and len(mem.accesses) <= levels
        assert pt.walk(gva + off, "r", True).ok == bool(flags & US)
        assert pt.walk(gva + off, "w").ok == bool(flags & RW)
        assert pt.walk(gva + off, "x").ok == (not flags & NX)
    probe = data.draw(st.integers(0, 4 * SIZE_1G - 1)) & ~0xFFF
    assume(not any(g <= probe < g + s for g, _, s, _ in done))
    w = pt.walk(probe, "w", True)
    assert w.fault is not None and w.fault.error_code == E_W | E_U
