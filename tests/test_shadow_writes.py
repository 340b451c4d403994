"""The guest writing its own page tables: shadow_writes, the model's counts, and the real KVM's.

machine.md ("Shadow paging shows at CPL3") measured three behaviours of KVM's shadow MMU when a
CPL-3 guest writes the tables it runs on: rewriting a leaf PTE and touching the page (K = 1:
pf_fixed 3; K >= 2: the table goes unsync, later writes do not trap), writing its own page
directory (pf_emulate = mmu_pte_write = mmu_pde_zapped = K), and writing a page directory it
does not use (flooded after 3 trapped writes: mmu_flooded 1, mmu_shadow_zapped 1, then no trap).
Here the model reproduces those figures alone, and on /dev/kvm the kernel's counters of every
KVM_RUN (one per write) equal the model's, counter by counter, with what the guest read after
each write. Skips with the reason where /dev/kvm or its stats cannot be used, or the host does
not shadow (under EPT/NPT the guest's writes make no #PF exit).
"""

from __future__ import annotations

import pytest

from vbook import shadow_run
from vbook.backends.long_mode import TSS_ADDR
from vbook.errors import BackendUnavailable, GuestError, VbookError
from vbook.guests import shadow_writes as sw
from vbook.memory import GuestMemory
from vbook.models.paging import PteFlags
from vbook.shadow_run import COUNTERS, WriteRuns, WritesSideBySide, predict_writes

KS = (1, 2, 3, 5)
U = PteFlags.P | PteFlags.RW | PteFlags.US


def _moved(d: dict[str, int]) -> dict[str, int]:
    return {c: v for c, v in d.items() if v}


# --- the guest ------------------------------------------------------------------------


def test_code_is_the_assembled_listing():
    from vbook.guests.build import assemble, tools_missing

    why = tools_missing()
    if why:
        pytest.skip(why)
    assert assemble(sw.LISTING) == sw.CODE
    for scenario in sw.SCENARIOS:
        for k in (0, 1, 5, 127, 128, sw.MAX_K):          # 128: an imm8 would no longer do
            g = sw.build(scenario, k)
            assert assemble(g.listing) == g.code, (scenario, k)
    odd = sw.listing(0x7FFF_F000, 0x7FFF_FFF8, (1 << 64) - 1, 0, 0x1234, 0x7FFF_FFFF)
    assert assemble(odd) == sw.code(0x7FFF_F000, 0x7FFF_FFF8, (1 << 64) - 1, 0, 0x1234, 0x7FFF_FFFF)


def test_build_lays_out_the_tables_the_docstring_names():
    g = sw.build("leaf_pte", 2)
    assert isinstance(g.mem, GuestMemory) and g.mem.size == sw.MEM_SIZE
    assert g.tables == {"pml4": 0x8000, "pdpt": 0x9000, "pd_low": 0xA000, "pt_low": 0xB000,
                        "pt_far": 0xC000, "pd_other": 0xD000, "pt_other": 0xE000,
                        "empty_pt": sw.EMPTY_PT}
    assert (g.cr3, g.rip, g.rsp) == (0x8000, sw.CODE_GPA, 0x12000)
    assert g.mem.read(g.rip, len(g.code)) == g.code
    assert g.mem.read(sw.EMPTY_PT, 4096) == bytes(4096)
    pt = g.tables
    assert g.mem.read_u64(pt["pd_low"] + 8) == pt["pt_far"] | U              # PD_LOW[1] -> PT_FAR
    assert g.mem.read_u64(pt["pt_far"]) == sw.FRAME_A | U                    # FAR -> FRAME_A, fresh
    assert g.mem.read_u64(pt["pdpt"] + 8) == pt["pd_other"] | U              # PDPT[1] -> PD_OTHER
    for frame in (sw.FRAME_A, sw.FRAME_B, sw.OTHER_FRAME):
        assert g.mem.read_u64(frame) == frame
    assert g.mem.read_u64(pt["pd_low"] + 8 * sw.OWN_PD_SLOT) == 0            # the slots written
    assert g.mem.read_u64(pt["pd_other"] + 8 * sw.OTHER_PD_SLOT) == 0        # are unused


@pytest.mark.parametrize("scenario, probe, entry, values, look", [
    ("leaf_pte", sw.CODE_GPA, 0xC000, (sw.FRAME_B | U, sw.FRAME_A | U), sw.FAR),
    ("own_pd", sw.CODE_GPA, 0xA000 + 8 * sw.OWN_PD_SLOT, (sw.EMPTY_PT | U,) * 2, 0xA018),
    ("other_pd", sw.OTHER, 0xD000 + 8 * sw.OTHER_PD_SLOT, (sw.EMPTY_PT | U,) * 2, 0xD028),
])
def test_runs_are_the_accesses_of_the_program(scenario, probe, entry, values, look):
    g = sw.build(scenario, 3)
    assert (g.probe, g.entry, g.values, g.look) == (probe, entry, values, look)
    fetch = sw.Access(sw.CODE_GPA, "x")
    assert g.runs() == (
        (fetch, sw.Access(probe, "r")),
        (fetch, sw.Access(entry, "w", values[0]), sw.Access(look, "r")),
        (fetch, sw.Access(entry, "w", values[1]), sw.Access(look, "r")),
        (fetch, sw.Access(entry, "w", values[0]), sw.Access(look, "r")),
    )
    assert g.listing == sw.listing(probe, entry, values[0], values[1], look, 3)
    assert sw.build(scenario, 0).runs() == g.runs()[:1]


@pytest.mark.parametrize("bad", [-1, -5, True, 2.0, "3", sw.MAX_K + 1])
def test_bad_k_is_a_guest_error(bad):
    with pytest.raises(GuestError, match="k must be"):
        sw.build("own_pd", bad)
    with pytest.raises(GuestError, match="k must be"):
        predict_writes("own_pd", bad)
    with pytest.raises(GuestError, match="k must be"):
        shadow_run.measure_writes("own_pd", bad)         # refused before any KVM is opened


def test_unknown_scenario_is_a_guest_error():
    for call in (sw.build, predict_writes, shadow_run.measure_writes, shadow_run.writes_side_by_side):
        with pytest.raises(GuestError, match="unknown scenario 'pml4'.*leaf_pte, own_pd, other_pd"):
            call("pml4", 1)
    with pytest.raises(GuestError, match="does not fit"):
        sw.code(1 << 31, 0, 0, 0, 0, 1)                  # a disp32 is sign-extended
    assert issubclass(GuestError, VbookError)


# --- the model alone: machine.md's figures --------------------------------------------


def test_leaf_pte_k1_pf_fixed_3_no_unsync():
    p = predict_writes("leaf_pte", 1)
    # the code page; the write to PT_FAR's frame (not shadowed yet: mapped writable); the read
    # of FAR, which shadows PT_FAR and write-protects its frame
    assert p.total["pf_fixed"] == p.total["pf_taken"] == 3 and p.total["mmu_unsync"] == 0
    assert _moved(p.runs[1]) == {"pf_taken": 2, "pf_fixed": 2, "mmu_cache_miss": 1, "pages_4k": 2}
    assert p.seen[1] == sw.FRAME_B                       # the fault re-walked: the new frame


@pytest.mark.parametrize("k", [2, 3, 5, 12])
def test_leaf_pte_k_ge_2_unsyncs_and_later_writes_do_not_trap(k):
    p = predict_writes("leaf_pte", k)
    assert _moved(p.runs[2]) == {"pf_taken": 1, "pf_fixed": 1, "mmu_unsync": 1}   # 0 -> 1
    assert all(not _moved(r) for r in p.runs[3:])        # no exit at all after the second write
    assert p.total["mmu_unsync"] == 1 and p.total["pf_fixed"] == 4 and p.total["pf_emulate"] == 0
    # unsync: the spte still maps FRAME_B although every even write points the PTE at FRAME_A
    assert p.seen[1:] == (sw.FRAME_B,) * k


@pytest.mark.parametrize("k", [1, 2, 3, 5, 20])
def test_own_pd_every_write_is_emulated_and_zaps_a_pde(k):
    t = predict_writes("own_pd", k).total
    assert t["pf_emulate"] == t["mmu_pte_write"] == t["mmu_pde_zapped"] == k
    assert t["mmu_flooded"] == t["mmu_shadow_zapped"] == 0   # each fault on the path resets the count
    assert t["pf_fixed"] == 1                            # the code page only


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 10])
def test_other_pd_floods_on_the_third_write_then_stops_trapping(k):
    p = predict_writes("other_pd", k)
    for j in range(1, min(k, 2) + 1):
        assert _moved(p.runs[j]) == {"pf_taken": 1, "pf_emulate": 1, "mmu_pte_write": 1,
                                     "mmu_pde_zapped": 1, **({"pages_4k": 1} if j == 1 else {})}
    t = p.total
    assert (t["mmu_flooded"], t["mmu_shadow_zapped"]) == ((1, 1) if k >= 3 else (0, 0))
    assert t["pf_emulate"] == t["mmu_pte_write"] == min(k, 3)
    if k >= 3:   # the third write zaps PD_OTHER's shadow page instead of one PDE, and untracks it
        assert _moved(p.runs[3]) == {"pf_taken": 1, "pf_emulate": 1, "mmu_pte_write": 1,
                                     "mmu_flooded": 1, "mmu_shadow_zapped": 1}
    if k >= 4:   # the 4th: one last #PF maps the untracked frame writable
        assert _moved(p.runs[4]) == {"pf_taken": 1, "pf_fixed": 1}
    assert all(not _moved(r) for r in p.runs[5:])
    assert p.seen[1:] == (sw.EMPTY_PT | U,) * k


@pytest.mark.parametrize("scenario", list(sw.SCENARIOS))
def test_run_j_does_not_depend_on_k(scenario):
    five = predict_writes(scenario, 5)
    for k in (0, 1, 3):
        p = predict_writes(scenario, k)
        assert (p.runs, p.seen) == (five.runs[:k + 1], five.seen[:k + 1])
    assert predict_writes(scenario, 5) == five           # deterministic
    assert all(list(r) == list(COUNTERS) for r in five.runs)


def test_reprs_are_stable():
    assert repr(predict_writes("other_pd", 4)) == (
        "WriteRuns('other_pd', k=4, model: 5 runs, pf_taken=6, pf_fixed=3, pf_emulate=3, "
        "mmu_shadow_zapped=1, mmu_pte_write=3, mmu_pde_zapped=2, mmu_flooded=1, mmu_cache_miss=6, "
        "pages_4k=3)")
    assert repr(sw.build("own_pd", 2)) == (
        "ShadowWrites('own_pd', k=2: write 0xf007 / 0xf007 to 0xa018, read 0xa018; probe 0x10000)")


# --- on /dev/kvm ----------------------------------------------------------------------


def _shadowing_kvm():
    try:
        shadow_run.require_kvm()
    except BackendUnavailable as e:
        pytest.skip(f"kvm backend: {e.reason}")
    from vbook.host import why_not_shadow_paging

    why = why_not_shadow_paging()
    if why:
        pytest.skip(f"{why}: the guest's writes make no #PF exit there")
    from vbook.backends.kvm import KvmVcpu

    return KvmVcpu


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("scenario", list(sw.SCENARIOS))
def test_kernel_counts_every_run_as_the_model(scenario, k):
    KvmVcpu = _shadowing_kvm()
    from vbook.backends.long_mode import start_in_long_mode

    g = sw.build(scenario, k)
    vcpu = KvmVcpu.from_guest(g.guest(), timeout=5.0)
    try:
        start_in_long_mode(vcpu, g.mem, g.cr3, g.rip, g.rsp, cpl=3)
        runs, seen = shadow_run.kvm_write_runs(vcpu, g)   # ends with the guest's OUT of DONE
        sregs = vcpu.get_sregs()
        assert sregs.long_mode and sregs.cs.dpl == 3 and sregs.ss.dpl == 3
        tables_after = vcpu.read_memory(sw.TABLES, sw.CODE_GPA - sw.TABLES)
    finally:
        vcpu.close()
    model_g = sw.build(scenario, k)
    m = shadow_run.replay_writes(model_g)
    for j, (kr, mr) in enumerate(zip(runs, m.runs, strict=True)):
        assert kr == mr, f"{scenario} K={k} run {j}: kernel {_moved(kr)}, model {_moved(mr)}"
    assert tuple(seen) == m.seen, f"{scenario} K={k}: the guest read {seen}, the model says {m.seen}"
    # every page-table entry as the guest and KVM left it (the values written, the A/D bits KVM's
    # walker set) is the model's too, but one: the emulation of each OUT reads the TSS's I/O
    # bitmap through the guest's tables (emulate.c emulator_io_port_access_allowed -> read_std ->
    # FNAME(walk_addr_generic) -> FNAME(update_accessed_dirty_bits)), which sets A in the TSS
    # page's gpte; the model does not emulate OUT (harmless: no fault lands in that gpte group)
    tss_gpte = g.tables["pt_low"] + 8 * (TSS_ADDR >> 12)
    expected = bytearray(model_g.mem.read(sw.TABLES, sw.CODE_GPA - sw.TABLES))
    at = tss_gpte - sw.TABLES
    expected[at:at + 8] = (model_g.mem.read_u64(tss_gpte) | PteFlags.A).to_bytes(8, "little")
    assert tables_after == bytes(expected)


def test_side_by_side_tables_on_a_shadowing_host():
    _shadowing_kvm()
    for scenario in sw.SCENARIOS:
        s = shadow_run.writes_side_by_side(scenario, 5)
        assert s.kernel is not None, s.why
        assert s.equal is True, s.table()
        assert repr(s) == f"WritesSideBySide({scenario!r}, K = 5: model vs kvm ({s.host}), equal: True)"
        table = s.table().splitlines()
        assert table[0] == f"{scenario}, K = 5: {sw.SCENARIOS[scenario]}"
        assert table[-1].endswith("equal to the model: True")
    s = shadow_run.writes_side_by_side("leaf_pte", 3)
    row = next(r for r in s.table().splitlines() if r.startswith("mmu_unsync"))
    assert row.split()[1:] == ["0/0", "0/0", "1/1", "0/0", "1/1"]


# --- without /dev/kvm -----------------------------------------------------------------


def test_unavailable_kvm_gives_the_reason(monkeypatch):
    monkeypatch.setenv("VBOOK_KVM_DEV", "/nonexistent/kvm")
    with pytest.raises(BackendUnavailable, match="/nonexistent/kvm"):
        shadow_run.measure_writes("own_pd", 1)
    s = shadow_run.writes_side_by_side("other_pd", 4)
    assert isinstance(s, WritesSideBySide) and s.kernel is None and s.equal is None
    assert "/nonexistent/kvm" in s.why
    assert isinstance(s.model, WriteRuns) and s.model == predict_writes("other_pd", 4)
    table = s.table()
    assert table.splitlines()[-1] == f"kernel: unavailable: {s.why}"
    assert "3/—" in table and "Traceback" not in table
    assert repr(s) == f"WritesSideBySide('other_pd', K = 4: model only; kernel unavailable: {s.why})"
