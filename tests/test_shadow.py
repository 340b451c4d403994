"""vbook.models.shadow: KVM shadow paging, calibrated against the counters measured on the PVM host.

The guest of the calibration tests is what reference/machine.md describes: 64-bit, CPL 3,
identity-mapped 4 KiB page tables with U = 1 (made fresh: A = D = 0), code on one page,
data on others. Its tables live inside the identity-mapped 2 MiB, so the guest can write them.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vbook.errors import MemoryAccessError, PagingError
from vbook.memory import GuestMemory
from vbook.models.paging import PAGE_SIZE, SIZE_2M, PageTables, PteFlags, TableOutsideMemory, walk
from vbook.models.shadow import (
    ACC_EXEC_MASK,
    ACC_USER_MASK,
    ACC_WRITE_MASK,
    PG_LEVEL_4K,
    KvmMmuPage,
    ShadowError,
    ShadowMmu,
    Spte,
)

P, RW, US, A, D, PS, NX = (PteFlags.P, PteFlags.RW, PteFlags.US, PteFlags.A, PteFlags.D,
                           PteFlags.PS, PteFlags.NX)
CODE = 0x10000                 # the guest's code page, touched (fetched) first
DATA = 0x20000                 # its data pages
FAR = 0x200000                 # a page in the second 2 MiB: its own last-level table
FAR_GPA = 0x300000
OTHER = 0x4000_0000            # a page in the second 1 GiB: its own page directory
OTHER_GPA = 0x380000


class Guest:
    """Identity-mapped low 2 MiB (4 KiB pages, RW|US, A = D = 0) + FAR + OTHER, tables at 0x1000."""

    def __init__(self, mem_size: int = 0x400000, low_pages: int = 512):
        self.mem = GuestMemory(mem_size, record=False)
        self.pt = PageTables(self.mem, 0x1000, alloc_limit=0x10000)
        for gpa in range(0, low_pages * PAGE_SIZE, PAGE_SIZE):
            self.pt.map(gpa, gpa, flags=RW | US)
        self.far_pte = self.pt.map(FAR, FAR_GPA, flags=RW | US)
        self.pt.map(OTHER, OTHER_GPA, flags=RW | US)
        self.pd_low = self.pt.walk(CODE).steps[2].entry_addr & ~0xFFF     # the writer's own PD
        self.pd_other = self.pt.walk(OTHER).steps[2].entry_addr & ~0xFFF  # the PD of the 2nd GiB
        self.mmu = ShadowMmu(self.mem, self.pt.cr3)

    def delta(self, before: dict[str, int]) -> dict[str, int]:
        now = self.mmu.stats()
        return {k: now[k] - before[k] for k in now if now[k] != before[k]}


# --- calibration: the scenarios of machine.md "KVM's own counters" --------------------


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 64])
def test_n_fresh_pages_fault_n_plus_1_times(n):
    g = Guest()
    before = g.mmu.stats()
    g.mmu.access(CODE, "x", user=True)                   # the code page: the "+1"
    for i in range(n):
        g.mmu.write(DATA + i * PAGE_SIZE, 0xAB, size=1, user=True)
    d = g.delta(before)
    assert d["pf_fixed"] == d["pf_taken"] == n + 1
    assert d["pages_4k"] == n + 1
    assert "pf_emulate" not in d and "pf_guest" not in d
    # a second pass in the same VM takes no faults
    before = g.mmu.stats()
    g.mmu.access(CODE, "x", user=True)
    outs = [g.mmu.write(DATA + i * PAGE_SIZE, 0xCD, size=1, user=True) for i in range(n)]
    assert g.delta(before) == {}
    assert all(o.exits == 0 for o in outs)
    assert g.mem.read_u8(DATA + (n - 1) * PAGE_SIZE) == 0xCD


def test_read_of_a_clean_page_maps_it_read_only_then_the_write_faults_once():
    g = Guest()
    g.mmu.access(DATA, "r", user=True)
    assert not g.mmu.lookup(DATA).writable               # FNAME(protect_clean_gpte)
    o = g.mmu.write(DATA, 1, size=1, user=True)
    assert (o.exits, o.ret) == (1, "fixed") and g.mmu.lookup(DATA).writable
    assert g.mem.read_u64(g.pt.walk(DATA).steps[-1].entry_addr) & D   # KVM set D in the gpte


def _rewrite_leaf_pte(g, k):
    value = FAR_GPA | P | RW | US                        # the same mapping, rewritten as fresh
    for _ in range(k):
        g.mmu.write(g.far_pte, value, user=True)
        g.mmu.write(FAR, 0x55, size=1, user=True)


def test_rewrite_leaf_pte_k1_gives_pf_fixed_3_and_no_unsync():
    g = Guest()
    before = g.mmu.stats()
    g.mmu.access(CODE, "x", user=True)
    _rewrite_leaf_pte(g, 1)
    d = g.delta(before)
    # code page, the write to the (not yet shadowed) table, the touch that shadows it
    assert d["pf_fixed"] == 3 and "mmu_unsync" not in d
    pt2_gfn = g.far_pte >> 12
    assert pt2_gfn in g.mmu.write_protected and not g.mmu.lookup(g.far_pte).writable


@pytest.mark.parametrize("k", [2, 3, 10])
def test_rewrite_leaf_pte_k_ge_2_unsyncs_the_table_and_stops_trapping(k):
    g = Guest()
    g.mmu.access(CODE, "x", user=True)
    _rewrite_leaf_pte(g, 2)
    s = g.mmu.stats()
    assert s["mmu_unsync"] == 1 and s["pf_fixed"] == 4 and s["pf_emulate"] == 0
    before = g.mmu.stats()
    _rewrite_leaf_pte(g, k - 2)
    assert g.delta(before) == {}                         # later writes do not trap
    g.mmu.load_cr3(g.pt.cr3)                             # the next TLB flush syncs it
    assert g.mmu.stats()["mmu_unsync"] == 0
    assert g.mmu.write(g.far_pte, FAR_GPA | P | RW | US, user=True).ret == "fixed"   # unsync again
    assert g.mmu.stats()["mmu_unsync"] == 1


@pytest.mark.parametrize("k", [1, 2, 3, 5, 20])
def test_writing_own_page_directory_k_times(k):
    g = Guest()
    g.mmu.access(CODE, "x", user=True)
    before = g.mmu.stats()
    for _ in range(k):                                   # PDE 2 (4 MiB..6 MiB): not in use
        g.mmu.write(g.pd_low + 8 * 2, 0x8000 | P | RW | US, user=True)
    d = g.delta(before)
    assert d["pf_emulate"] == d["mmu_pte_write"] == d["mmu_pde_zapped"] == k
    assert "mmu_flooded" not in d and "mmu_shadow_zapped" not in d
    assert g.mem.read_u64(g.pd_low + 16) == 0x8000 | P | RW | US


def test_writing_a_page_directory_the_writer_does_not_use_floods_after_3():
    g = Guest()
    g.mmu.access(CODE, "x", user=True)
    g.mmu.access(OTHER, "r", user=True)                  # shadows the second PD
    assert (g.pd_other >> 12) in g.mmu.page_track
    before = g.mmu.stats()
    outs = [g.mmu.write(g.pd_other + 8 * 5, 0x9000 | P | RW | US, user=True) for _ in range(10)]
    assert [o.ret for o in outs[:4]] == ["emulate", "emulate", "emulate", "fixed"]
    assert all(o.exits == 0 for o in outs[4:])
    d = g.delta(before)
    assert d["mmu_flooded"] == 1 and d["mmu_shadow_zapped"] == 1
    assert d["pf_emulate"] == d["mmu_pte_write"] == 3
    assert d["mmu_pde_zapped"] == 2                      # the third write zapped the page instead
    assert d["pf_fixed"] == 1                            # the 4th write: frame no longer tracked
    assert (g.pd_other >> 12) not in g.mmu.page_track
    assert g.mem.read_u64(g.pd_other + 40) == 0x9000 | P | RW | US


# --- unit tests per event ---------------------------------------------------------


def test_construction_loads_a_root():
    g = Guest()
    assert g.mmu.root is not None and g.mmu.root.role.level == 4 and g.mmu.root.gfn == g.pt.cr3 >> 12
    assert g.mmu.stats()["mmu_cache_miss"] == 1
    assert g.pt.cr3 >> 12 in g.mmu.page_track
    assert repr(g.mmu).startswith("ShadowMmu(cr3=0x1000")


def test_first_fault_builds_one_shadow_page_per_guest_table():
    g = Guest()
    o = g.mmu.access(CODE, "x", user=True)
    assert (o.exits, o.ret, o.gpa) == (1, "fixed", CODE)
    path = g.mmu.shadow_walk(CODE)
    steps = g.pt.walk(CODE).steps
    assert [sp.role.level for sp, _ in path] == [4, 3, 2, 1]
    assert [sp.gfn for sp, _ in path] == [g.pt.cr3 >> 12] + [s.entry_addr >> 12 for s in steps[1:]]
    assert g.mmu.stats()["mmu_cache_miss"] == 4
    spte = g.mmu.lookup(CODE)
    assert spte == Spte(CODE >> 12, g.mmu.host_base + CODE, ACC_EXEC_MASK | ACC_USER_MASK)
    assert {sp.gfn for sp, _ in path} <= g.mmu.write_protected
    for s in steps:                                      # KVM's walk set A in every gpte
        assert g.mem.read_u64(s.entry_addr) & A


def test_guest_fault_is_reflected():
    g = Guest()
    o = g.mmu.access(0x600000, "r", user=True)           # no PDE there
    assert o.ret == "guest_fault" and o.exits == 1
    s = g.mmu.stats()
    assert s["pf_guest"] == s["pf_taken"] == 1 and s["pf_fixed"] == 0
    g.mem.write_u64(g.pt.walk(CODE).steps[-1].entry_addr, CODE | P | RW)   # supervisor-only page
    assert g.mmu.access(CODE, "r", user=True).ret == "guest_fault"
    assert g.mmu.access(CODE, "r", user=False).ret == "fixed"
    assert g.mmu.access(CODE, "r", user=True).ret == "guest_fault"   # spte has no U either


def test_prefetch_maps_accessed_neighbours_until_the_first_unaccessed():
    g = Guest(low_pages=0x40)
    for i in (1, 2, 4):                                  # gptes 0x21, 0x22, 0x24 accessed+dirty
        e = g.pt.walk(DATA + i * PAGE_SIZE).steps[-1].entry_addr
        g.mem.write_u64(e, g.mem.read_u64(e) | A | D)
    g.mmu.access(DATA, "r", user=True)
    mapped = [i for i in range(8) if g.mmu.lookup(DATA + i * PAGE_SIZE) is not None]
    assert mapped == [0, 1, 2]                           # stops at 0x23 (A = 0)
    assert g.mmu.stats()["pages_4k"] == 3 and g.mmu.lookup(DATA + PAGE_SIZE).writable


def test_invlpg_resyncs_one_spte_of_an_unsync_table():
    g = Guest()
    g.mmu.access(CODE, "x", user=True)
    _rewrite_leaf_pte(g, 2)                              # table of FAR unsync; FAR mapped
    g.mmu.write(g.far_pte, (FAR_GPA + PAGE_SIZE) | P | RW | US | A | D, user=True)   # no trap
    assert g.mmu.lookup(FAR).gfn == FAR_GPA >> 12        # stale, like a TLB
    g.mmu.invlpg(FAR)
    assert g.mmu.stats()["invlpg"] == 1
    assert g.mmu.lookup(FAR).gfn == (FAR_GPA >> 12) + 1  # FNAME(invlpg) prefetched the new gpte
    assert g.mmu.stats()["mmu_unsync"] == 1              # the page stays unsync
    g.mmu.invlpg(CODE)                                   # a sync table: nothing to do
    assert g.mmu.lookup(CODE) is not None


def test_cr3_load_syncs_and_drops_a_removed_mapping():
    g = Guest()
    g.mmu.access(CODE, "x", user=True)
    _rewrite_leaf_pte(g, 2)
    g.mmu.write(g.far_pte, 0, user=True)                 # the guest unmaps FAR: no trap
    assert g.mmu.lookup(FAR) is not None
    g.mmu.load_cr3(g.pt.cr3)
    assert g.mmu.lookup(FAR) is None and g.mmu.stats()["mmu_unsync"] == 0
    assert g.mmu.access(FAR, "r", user=True).ret == "guest_fault"
    assert not g.mmu.lookup(g.far_pte).writable          # write-protected again


def test_new_cr3_gets_its_own_root_and_the_old_is_found_again():
    g = Guest(low_pages=0x40)
    pt2 = PageTables(g.mem, 0x100000, alloc_limit=0x110000)
    pt2.map(CODE, CODE, flags=RW | US)
    for gpa in range(0x100000, 0x110000, PAGE_SIZE):
        pt2.map(gpa, gpa, flags=RW | US)
    g.mmu.access(CODE, "x", user=True)
    old_root = g.mmu.root
    g.mmu.load_cr3(pt2.cr3)
    assert g.mmu.root is not old_root and g.mmu.root.gfn == pt2.cr3 >> 12
    assert g.mmu.access(CODE, "x", user=True).ret == "fixed"
    g.mmu.load_cr3(g.pt.cr3)
    assert g.mmu.root is old_root and g.mmu.access(CODE, "x", user=True).exits == 0


def test_misaligned_write_zaps_the_page():
    g = Guest()
    g.mmu.access(CODE, "x", user=True)
    g.mmu.access(OTHER, "r", user=True)
    before = g.mmu.stats()
    g.mmu.write(g.pd_other + 4, 0x1234, size=2, user=True)   # 2 bytes: detect_write_misaligned
    d = g.delta(before)
    assert d["mmu_flooded"] == 1 and d["mmu_shadow_zapped"] == 1 and d["pf_emulate"] == 1


def test_zapping_a_pde_write_unlinks_and_the_next_access_refaults():
    g = Guest()
    g.mmu.access(CODE, "x", user=True)
    g.mmu.access(FAR, "r", user=True)
    pde = g.pt.walk(FAR).steps[2].entry_addr
    g.mmu.write(pde, g.mem.read_u64(pde), user=True)     # same value, still zapped
    assert g.mmu.lookup(FAR) is None
    # the PT's shadow page is found again (no cache miss) with its spte still in it: relinking it
    # maps FAR, and mmu_set_spte finds the spte unchanged -> RET_PF_SPURIOUS
    o = g.mmu.access(FAR, "r", user=True)
    assert (o.exits, o.ret) == (1, "spurious")
    s = g.mmu.stats()
    assert s["mmu_cache_miss"] == 5 and s["pf_spurious"] == 1 and s["mmu_pde_zapped"] == 1


def test_guest_large_page_is_shadowed_by_a_direct_page():
    mem = GuestMemory(0x400000, record=False)
    pt = PageTables(mem, 0x1000, alloc_limit=0x10000)
    pt.map(0, 0, SIZE_2M, flags=RW | US)
    mmu = ShadowMmu(mem, pt.cr3)
    assert mmu.write(0x123456, 7, size=1, user=True).ret == "fixed"
    sp, _ = mmu.shadow_walk(0x123456)[-1]
    assert sp.role.direct and sp.role.level == PG_LEVEL_4K and sp.gfn == 0
    assert mmu.lookup(0x123000).gfn == 0x123 and mem.read_u8(0x123456) == 7
    assert mmu.access(0x124000, "r", user=True).ret == "fixed"


def test_mmio_outcome_for_gpa_outside_memory():
    g = Guest(mem_size=0x380000)                         # OTHER_GPA is just past the end
    o = g.mmu.access(OTHER, "r", user=True)
    assert o.ret == "mmio" and o.gpa == OTHER_GPA and g.mmu.stats()["pf_emulate"] == 1
    assert g.mmu.lookup(OTHER) is None


def test_bad_arguments_are_typed_errors():
    g = Guest(low_pages=0x20)
    with pytest.raises(ShadowError, match="access must be"):
        g.mmu.access(CODE, "q")
    with pytest.raises(ShadowError, match="size must be"):
        g.mmu.write(CODE, 1 << 16, size=2)
    with pytest.raises(ShadowError, match="crosses a page"):
        g.mmu.write(CODE + 0xFFC, 0, size=8)
    with pytest.raises(ShadowError, match="page-aligned"):
        g.mmu.load_cr3(0x1234)
    with pytest.raises(ShadowError, match="outside memory"):
        g.mmu.load_cr3(0x10000000)
    assert issubclass(ShadowError, PagingError)


def test_trace_records_exits_and_results():
    g = Guest(low_pages=0x20)
    g.mmu.access(CODE, "x", user=True)
    g.mmu.access(CODE, "x", user=True)
    kinds = [e.kind for e in g.mmu.trace.events]
    assert kinds.count("vmexit") == 1 and kinds.count("pf_result") == 1 and kinds[-1] == "access"
    assert g.mmu.trace.freeze().filter(kind="pf_result")[0]["ret"] == "fixed"


# --- the property ----------------------------------------------------------------


PROP_MEM = 0x80000


def _prop_guest():
    mem = GuestMemory(PROP_MEM)
    pt = PageTables(mem, 0x1000, alloc_limit=0x9000)
    for gpa in range(0, 0x40000, PAGE_SIZE):
        pt.map(gpa, gpa, flags=RW | US)
    pt.map(FAR, 0x50000, flags=RW | US)
    pt.map(OTHER, 0x60000, flags=RW | US)
    pt.map(0x8000_0000, 0, SIZE_2M, flags=RW | US)      # a large page (partly outside memory)
    return mem, pt


GVAS = [CODE, DATA, DATA + PAGE_SIZE, 0x3F000, FAR, OTHER, 0x8000_0000, 0x8004_0000, 0x8010_0000,
        0x8000_1000, 0x8000_3000, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x8000]
_entry = st.tuples(st.sampled_from(range(0x1000, 0x9000, PAGE_SIZE)),
                   st.sampled_from([0, 1, 2, 3, 4, 5, 0x10, 0x11, 0x20, 0x21, 0x3F, 0x40, 0x100, 0x1FF]))
_value = st.one_of(
    st.just(0),
    st.tuples(st.integers(0, 0x88), st.sampled_from([P | RW | US, P | US, P | RW, P | RW | US | A | D,
                                                      P | RW | US | A, P | RW | US | NX, RW | US,
                                                      P | RW | US | PS])).map(lambda t: t[0] << 12 | t[1]),
    st.just(-1),                                         # -1: the entry's current value (a rewrite)
)
OPS = st.lists(st.one_of(
    st.tuples(st.just("access"), st.sampled_from(GVAS), st.sampled_from("rwx"), st.booleans()),
    st.tuples(st.just("pte"), _entry, _value, st.booleans()),
    st.tuples(st.just("invlpg"), st.sampled_from(GVAS)),
    st.tuples(st.just("cr3"),),
), max_size=40)


def _check_sptes(mmu: ShadowMmu, mem: GuestMemory, allow_unsync: bool) -> None:
    for gva, sp, spte in mmu.leaf_sptes():
        assert spte.hpa == mmu.host_base + spte.gfn * PAGE_SIZE
        if allow_unsync and sp.unsync:
            continue
        user = bool(spte.access & ACC_USER_MASK)
        w = walk(mem, mmu.cr3, gva, "r", user)
        assert w.ok and w.address >> 12 == spte.gfn, (hex(gva), sp, spte, w)
        if spte.access & ACC_WRITE_MASK:
            assert walk(mem, mmu.cr3, gva, "w", user).ok
            assert w.steps[-1].entry & D                # dirty tracking of the guest
        if spte.access & ACC_EXEC_MASK:
            assert walk(mem, mmu.cr3, gva, "x", user).ok
    # a writable spte never maps a frame whose shadow page expects it write-protected
    for _, _, spte in mmu.leaf_sptes():
        if spte.writable:
            assert not mmu.page_track.get(spte.gfn)
            for sp in mmu.mmu_page_hash.values():
                if sp.gfn == spte.gfn and sp.has_gptes:
                    assert sp.unsync and sp.role.level == PG_LEVEL_4K


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_shadow_sptes_agree_with_the_guest_tables(ops):
    mem, pt = _prop_guest()
    mmu = ShadowMmu(mem, pt.cr3)
    for op in ops:
        try:
            if op[0] == "access":
                mmu.access(op[1], op[2], op[3])
            elif op[0] == "pte":
                (table, index), value, via_guest = op[1], op[2], op[3]
                addr = table + 8 * index
                value = mem.read_u64(addr) if value == -1 else value
                if via_guest:
                    mmu.write(addr, value)               # a guest mov (identity-mapped table)
                else:
                    mmu.write(addr, value & 0xFFFFFFFF, size=4)
            elif op[0] == "invlpg":
                mmu.invlpg(op[1])
                sp, i = mmu.shadow_walk(op[1])[-1]
                e = sp.spt.get(i)
                if isinstance(e, Spte) and sp.unsync:   # the invlpg'd spte is in sync now
                    w = walk(mem, mmu.cr3, op[1], "r", bool(e.access & ACC_USER_MASK))
                    assert w.ok and w.address >> 12 == e.gfn
            else:
                mmu.load_cr3(pt.cr3)
        except TableOutsideMemory:
            pass                                         # the guest pointed a table outside memory
        _check_sptes(mmu, mem, allow_unsync=True)
        counts = mmu.stats()
        assert counts["mmu_unsync"] == sum(sp.unsync for sp in mmu.mmu_page_hash.values())
        assert counts["pages_4k"] == sum(isinstance(e, Spte) for sp in mmu.mmu_page_hash.values()
                                         for e in sp.spt.values())
        assert all(isinstance(sp, KvmMmuPage) for sp in mmu.mmu_page_hash.values())
    mmu.load_cr3(pt.cr3)                                 # the next sync fixes every unsync table
    _check_sptes(mmu, mem, allow_unsync=False)
    # every page reachable from the root is in sync; an unlinked unsync page stays counted in
    # mmu_unsync, as in the kernel (drop_parent_pte does not zap or sync it)
    assert not any(sp.unsync for _, sp, _ in mmu.leaf_sptes())
    assert all(0 <= a.addr and a.addr + a.size <= PROP_MEM for a in mem.accesses)


def test_model_never_reads_outside_memory_error_type():
    mem, pt = _prop_guest()
    mmu = ShadowMmu(mem, pt.cr3)
    pde = pt.walk(FAR).steps[2].entry_addr
    mmu.write(pde, 0x100000 | P | RW | US)              # PT beyond memory
    with pytest.raises(TableOutsideMemory):
        mmu.access(FAR, "r")
    assert not issubclass(TableOutsideMemory, MemoryAccessError)
