"""EPT (vbook.models.ept): EPTP, entries, the walk, violation vs misconfiguration, KVM's lazy fill.

Exact qualification bits per the SDM table "Exit Qualification for EPT Violations";
constants and KVM functions pinned against Linux 6.1 (arch/x86/include/asm/vmx.h,
arch/x86/kvm/vmx/vmx.c, arch/x86/kvm/mmu/*) when the source mirror is present.
"""

from __future__ import annotations

import re

import pytest
from _sources import LINUX_6_1, LINUX_6_1_REV, function_body, git_show
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vbook.errors import PagingError
from vbook.memory import GuestMemory
from vbook.models import ept
from vbook.models.ept import (
    EptCap,
    EptError,
    EptMisconfig,
    Eptp,
    EptTables,
    EptViolation,
    EptWalkError,
    Memslot,
    MemType,
    RetPf,
    Tdp,
    VmxEpt,
    VmxEptp,
    construct_eptp,
    guest_touches,
    make_mmio_spte,
    tdp_page_fault,
    walk,
)
from vbook.trace import TraceRecorder

MiB, GiB = 1 << 20, 1 << 30
ROOT = 0x100000


def fresh(size: int = 4 * MiB, **kw) -> tuple[GuestMemory, EptTables]:
    mem = GuestMemory(size)
    return mem, EptTables(mem, ROOT, **kw)


def qual(acc: str, rwx: int, gva_valid: bool = True, translated: bool = True) -> int:
    """The qualification spelled out bit by bit (independently of vmx.py)."""
    return ({"r": 1, "w": 2, "x": 4}[acc] | rwx << 3 | (1 << 7 if gva_valid else 0)
            | (1 << 8 if gva_valid and translated else 0))


# --- EPTP ------------------------------------------------------------------------------

def test_eptp_encode_decode_example():
    # facts.md §5.1: 4-level, WB, A/D on, root 0x1234000 -> 0x123405e
    e = Eptp(0x1234000, MemType.WB, 4, ad=True)
    assert e.encode() == 0x123405E == int(e)
    assert Eptp.decode(0x123405E) == e
    assert repr(e) == "Eptp(0x123405e: pml4=0x1234000, WB, 4-level, ad=True)"
    assert Eptp.decode(0x5000 | 0x20).levels == 5
    assert Eptp.decode(0x5000 | 0x18).memtype == MemType.UC


@pytest.mark.parametrize("value", [0x5000 | 0x18 | 1, 0x5000 | 0x10 | 6, 0x5000 | 0x28 | 6,
                                   0x5000 | 0x18 | 6 | 0x80, 0x5000 | 0x18 | 6 | 1 << 50, -1, 1 << 64])
def test_eptp_decode_rejects_what_vm_entry_rejects(value):
    with pytest.raises(EptError):
        Eptp.decode(value)


@given(st.integers(0, (1 << 46) // 4096 - 1), st.sampled_from([0, 6]), st.sampled_from([4, 5]),
       st.booleans())
def test_eptp_round_trip(pfn, mt, levels, ad):
    e = Eptp(pfn << 12, mt, levels, ad)
    assert Eptp.decode(e.encode()) == e
    assert e.encode() & 7 == mt and (e.encode() >> 3) & 7 == levels - 1 and bool(e.encode() & 64) == ad


def test_construct_eptp():
    assert construct_eptp(0x1234000) == 0x123405E
    assert construct_eptp(0x1234000, 5) == 0x1234000 | 0x20 | 0x40 | 6
    assert construct_eptp(0x1234000, enable_ept_ad_bits=False) == 0x123401E
    # L2 with A/D only if L1 enabled it in its EPTP
    assert construct_eptp(0x1000, is_guest_mode=True) == 0x101E
    assert construct_eptp(0x1000, is_guest_mode=True, nested_ept_ad_enabled=True) == 0x105E


# --- source oracles -------------------------------------------------------------------

def _defines(src: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, val in re.findall(r"^#define\s+(\w+)\s+(.+?)\s*$", src, re.M):
        expr = re.sub(r"(?<=[0-9a-fA-F])ull\b", "", val)
        if re.fullmatch(r"[0-9a-fA-Fx()<< ]+", expr):
            out[name] = eval(expr)  # noqa: S307 - digits, parens and << only
    return out


@pytest.fixture(scope="module")
def vmx_h() -> str:
    return git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/include/asm/vmx.h")


def test_oracle_eptp_and_entry_constants(vmx_h):
    d = _defines(vmx_h)
    for c in VmxEptp:
        assert d[f"VMX_EPTP_{c.name}"] == c.value, c
    for c in VmxEpt:
        if c.name in ("LARGE_PAGE", "USER_EXECUTE"):
            assert f"VMX_EPT_{c.name}" not in d  # not Linux names (see the docstring)
            continue
        assert d[f"VMX_EPT_{c.name}"] == c.value, c
    for c in EptCap:
        assert d[f"VMX_{c.name}"] == c.value, c
    assert d["VMX_EPT_MT_EPTE_SHIFT"] == ept.VMX_EPT_MT_EPTE_SHIFT
    for name in ("EPT_VIOLATION_ACC_READ_BIT", "EPT_VIOLATION_ACC_WRITE_BIT", "EPT_VIOLATION_ACC_INSTR_BIT",
                 "EPT_VIOLATION_RWX_SHIFT", "EPT_VIOLATION_GVA_IS_VALID_BIT",
                 "EPT_VIOLATION_GVA_TRANSLATED_BIT"):
        assert d[name] == {"EPT_VIOLATION_ACC_READ_BIT": 0, "EPT_VIOLATION_ACC_WRITE_BIT": 1,
                           "EPT_VIOLATION_ACC_INSTR_BIT": 2, "EPT_VIOLATION_RWX_SHIFT": 3,
                           "EPT_VIOLATION_GVA_IS_VALID_BIT": 7, "EPT_VIOLATION_GVA_TRANSLATED_BIT": 8}[name]
    flat = " ".join(vmx_h.split())
    assert ("#define VMX_EPT_RWX_MASK (VMX_EPT_READABLE_MASK | \\ VMX_EPT_WRITABLE_MASK | \\ "
            "VMX_EPT_EXECUTABLE_MASK)") in flat
    assert "#define VMX_EPT_MT_MASK (7ull << VMX_EPT_MT_EPTE_SHIFT)" in flat
    assert ("#define VMX_EPT_MISCONFIG_WX_VALUE (VMX_EPT_WRITABLE_MASK | \\ VMX_EPT_EXECUTABLE_MASK)"
            in flat)
    assert ept.VMX_EPT_MISCONFIG_WX_VALUE == VmxEpt.WRITABLE_MASK | VmxEpt.EXECUTABLE_MASK == 0b110
    assert ept.VMX_EPT_MT_MASK == 0x38 and ept.VMX_EPT_RWX_MASK == 7


def test_oracle_exit_reasons():
    src = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/include/uapi/asm/vmx.h")
    d = _defines(src)
    assert d["EXIT_REASON_EPT_VIOLATION"] == ept.EXIT_REASON_EPT_VIOLATION == EptViolation.exit_reason
    assert d["EXIT_REASON_EPT_MISCONFIG"] == ept.EXIT_REASON_EPT_MISCONFIG == EptMisconfig.exit_reason


def test_oracle_construct_eptp_and_handlers():
    src = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/vmx.c")
    body = " ".join(function_body(src, "u64 construct_eptp(").split())
    for line in ("u64 eptp = VMX_EPTP_MT_WB;",
                 "eptp |= (root_level == 5) ? VMX_EPTP_PWL_5 : VMX_EPTP_PWL_4;",
                 "if (enable_ept_ad_bits && (!is_guest_mode(vcpu) || nested_ept_ad_enabled(vcpu))) "
                 "eptp |= VMX_EPTP_AD_ENABLE_BIT;",
                 "eptp |= root_hpa;"):
        assert line in body
    viol = " ".join(function_body(src, "static int handle_ept_violation(").split())
    assert "error_code |= (exit_qualification & EPT_VIOLATION_RWX_MASK) ? PFERR_PRESENT_MASK : 0;" in viol
    assert "return kvm_mmu_page_fault(vcpu, gpa, error_code, NULL, 0);" in viol
    mis = " ".join(function_body(src, "static int handle_ept_misconfig(").split())
    assert "return kvm_mmu_page_fault(vcpu, gpa, PFERR_RSVD_MASK, NULL, 0);" in mis
    mt = " ".join(function_body(src, "static u8 vmx_get_mt_mask(").split())
    assert ("if (!kvm_arch_has_noncoherent_dma(vcpu->kvm)) return (MTRR_TYPE_WRBACK << "
            "VMX_EPT_MT_EPTE_SHIFT) | VMX_EPT_IPAT_BIT;") in mt


def test_oracle_mmio_spte():
    spte_c = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/spte.c")
    masks = " ".join(function_body(spte_c, "void kvm_mmu_set_ept_masks(").split())
    assert "kvm_mmu_set_mmio_spte_mask(VMX_EPT_MISCONFIG_WX_VALUE, VMX_EPT_RWX_MASK, 0);" in masks
    assert "shadow_present_mask = has_exec_only ? 0ull : VMX_EPT_READABLE_MASK;" in masks
    make = " ".join(function_body(spte_c, "u64 make_mmio_spte(").split())
    assert "spte |= shadow_mmio_value | access;" in make
    assert "spte |= gpa | shadow_nonpresent_or_rsvd_mask;" in make
    nonleaf = " ".join(function_body(spte_c, "u64 make_nonleaf_spte(").split())
    assert "u64 spte = SPTE_MMU_PRESENT_MASK;" in nonleaf
    assert "spte |= shadow_accessed_mask;" in nonleaf
    spte_h = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/spte.h")
    d = _defines(spte_h)
    assert (d["MMIO_SPTE_GEN_LOW_START"], d["MMIO_SPTE_GEN_LOW_END"]) == (3, 10)
    assert (d["MMIO_SPTE_GEN_HIGH_START"], d["MMIO_SPTE_GEN_HIGH_END"]) == (52, 62)
    assert "#define SPTE_MMU_PRESENT_MASK\t\tBIT_ULL(11)" in spte_h
    assert ept.SPTE_MMU_PRESENT_MASK == 1 << 11


def test_oracle_tdp_fault_path():
    tdp_c = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/tdp_mmu.c")
    tgt = " ".join(function_body(tdp_c, "static int tdp_mmu_map_handle_target_level(").split())
    assert "if (unlikely(!fault->slot)) new_spte = make_mmio_spte(vcpu, iter->gfn, ACC_ALL);" in tgt
    assert "vcpu->stat.pf_mmio_spte_created++;" in tgt and "ret = RET_PF_EMULATE;" in tgt
    assert "int ret = RET_PF_FIXED;" in tgt and "ret = RET_PF_SPURIOUS;" in tgt
    internal = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/mmu_internal.h")
    names = re.findall(r"^\s+RET_PF_(\w+)(?: = 0)?,", internal, re.M)
    assert names[:6] == [r.name for r in RetPf]
    flat = " ".join(internal.split())
    assert "if (r == RET_PF_FIXED) vcpu->stat.pf_fixed++;" in flat
    assert "else if (r == RET_PF_EMULATE) vcpu->stat.pf_emulate++;" in flat


# --- the walk: success --------------------------------------------------------------------

def test_walk_4k_steps_and_address():
    mem, t = fresh()
    t.map(0x200000, 0x300000, 0x2000, rwx=7)
    w = walk(mem, t.eptp, 0x201ABC, "w")
    assert w.fault is None and w.address == 0x301ABC and w.page_size == 4096 and w.rwx == 7
    assert [s.level for s in w.steps] == [4, 3, 2, 1]
    assert w.steps[0].entry_addr == ROOT
    assert w.steps[-1].entry == 0x301000 | 7 | 6 << 3
    assert w.memtype == 6 and not w.ipat
    assert repr(w) == "Walk(gpa=0x201abc, 'w', 4 steps -> 0x301abc (4 KiB))"
    text = w.table()
    assert "PML4E" in text and "PTE" in text and "-> HPA 0x301abc (4 KiB page, rights rwx, memtype 6)" in text


@pytest.mark.parametrize("page_size,level", [(2 * MiB, 2), (GiB, 3)])
def test_walk_large_pages(page_size, level):
    mem, t = fresh()
    t.map(4 * GiB, 2 * GiB, page_size, page_size=page_size)
    off = page_size - 8
    w = walk(mem, t.eptp, 4 * GiB + off, "r")
    assert w.fault is None and w.address == 2 * GiB + off and w.page_size == page_size
    assert [s.level for s in w.steps] == list(range(4, level - 1, -1))
    assert w.steps[-1].entry & VmxEpt.LARGE_PAGE


def test_walk_five_level():
    mem, t = fresh(levels=5)
    t.map(1 << 50, 0x2000, 4096)
    assert (t.eptp >> 3) & 7 == 4
    w = walk(mem, t.eptp, (1 << 50) | 0x10, "x")
    assert w.address == 0x2010 and [s.level for s in w.steps] == [5, 4, 3, 2, 1]
    with pytest.raises(EptError):
        walk(mem, construct_eptp(ROOT, 4), 1 << 50)  # beyond the 48-bit space of a 4-level EPT


def test_walk_reads_only_the_entries_it_reports():
    mem, t = fresh()
    t.map(0x0, 0x300000, 4096)
    mem.clear_log()
    w = walk(mem, t.eptp, 0x123, "r")
    log = mem.clear_log()
    assert [(a.kind, a.addr, a.size) for a in log] == [("r", s.entry_addr, 8) for s in w.steps]


def test_walk_trace_records_every_step_and_the_exit():
    mem, t = fresh()
    t.map(0x0, 0x300000, 4096)
    tr = TraceRecorder()
    walk(mem, t.eptp, 0x5000, "w", trace=tr)
    kinds = [(e.actor, e.kind) for e in tr.events]
    assert kinds == [("guest", "ept_step")] * 4 + [("kvm", "vmexit")]
    assert tr.events[-1]["exit_reason"] == 48 and tr.events[-1]["handler"] == "handle_ept_violation"
    assert tr.events[-1]["qualification"] == qual("w", 0)
    tr.freeze().to_json()


def test_update_ad_sets_accessed_and_dirty():
    mem, t = fresh()
    t.map(0x0, 0x300000, 4096)
    w = walk(mem, t.eptp, 0x10, "w", update_ad=True)
    assert w.fault is None
    assert all(mem.read_u64(s.entry_addr) & VmxEpt.ACCESS_BIT for s in w.steps)
    assert mem.read_u64(w.steps[-1].entry_addr) & VmxEpt.DIRTY_BIT
    mem2, t2 = fresh(ad=False)
    t2.map(0x0, 0x300000, 4096)
    mem2.clear_log()
    walk(mem2, t2.eptp, 0x10, "w", update_ad=True)
    assert all(a.kind == "r" for a in mem2.accesses)  # A/D off in the EPTP: nothing written


# --- violations, with exact qualifications ----------------------------------------------

@pytest.mark.parametrize("access", ["r", "w", "x"])
@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_not_present_is_violation_with_rwx_zero(access, level):
    mem, t = fresh()
    t.map(0x40000000, 0x300000, 4096)
    gpa = 0x40000000
    if level < 4:
        t.set_entry(gpa, level, 0)  # clear the entry at that level
    else:
        gpa = 1 << 40  # another PML4 slot: the PML4E is empty
    w = walk(mem, t.eptp, gpa, access)
    f = w.fault
    assert isinstance(f, EptViolation) and f.level == level and f.entry == 0
    assert f.qualification == qual(access, 0) and f.rwx == 0 and w.address is None
    assert len(w.steps) == 5 - level
    assert f.handler == "handle_ept_violation" and f.exit_reason == 48


@pytest.mark.parametrize("rwx", [1, 3, 4, 5, 7])
@pytest.mark.parametrize("access", ["r", "w", "x"])
def test_rights_at_the_leaf(rwx, access):
    mem, t = fresh()
    t.map(0x0, 0x300000, 4096, rwx=rwx)
    w = walk(mem, t.eptp, 0x42, access)
    allowed = rwx & {"r": 1, "w": 2, "x": 4}[access]
    if allowed:
        assert w.fault is None and w.address == 0x300042
    else:
        assert isinstance(w.fault, EptViolation) and w.fault.level == 1
        assert w.fault.qualification == qual(access, rwx)


def test_rights_are_anded_over_the_walk():
    mem, t = fresh()
    t.map(0x0, 0x300000, 4096, rwx=7)
    t.set_entry(0x0, 3, (t.get_entry(0x0, 3) & ~7) | 0b101)  # PDPTE: read+exec only
    w = walk(mem, t.eptp, 0x0, "w")
    assert isinstance(w.fault, EptViolation) and w.fault.qualification == qual("w", 0b101)
    assert w.fault.level == 1 and len(w.steps) == 4  # the walk still went down to the PTE
    assert walk(mem, t.eptp, 0x0, "r").fault is None
    t.set_entry(0x0, 4, (t.get_entry(0x0, 4) & ~7) | 0b001)  # PML4E read only
    assert walk(mem, t.eptp, 0x0, "x").fault.qualification == qual("x", 0b001)


def test_qualification_bits_7_8_12():
    mem, t = fresh()
    assert walk(mem, t.eptp, 0x0, "r", gva_valid=False).fault.qualification == 0b1
    assert walk(mem, t.eptp, 0x0, "r", translated=False).fault.qualification == 0x81
    assert walk(mem, t.eptp, 0x0, "w").fault.qualification == 0x182
    assert walk(mem, t.eptp, 0x0, "x", nmi_unblocking=True).fault.qualification == 0x1184


# --- misconfigurations ------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [0b010, 0b110])
@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_write_without_read_is_misconfig_at_any_level(bits, level):
    mem, t = fresh()
    t.map(0x0, 0x300000, 4096)
    t.set_entry(0x0, level, (t.get_entry(0x0, level) & ~7) | bits)
    for access in "rwx":
        f = walk(mem, t.eptp, 0x0, access).fault
        assert isinstance(f, EptMisconfig) and f.level == level and "without read" in f.reason
        assert f.entry_addr == t.entry_addr(0x0, level) and f.handler == "handle_ept_misconfig"


def test_execute_only_depends_on_the_cpu():
    mem, t = fresh()
    t.map(0x0, 0x300000, 4096, rwx=0b100)
    assert walk(mem, t.eptp, 0x0, "x").fault is None
    assert walk(mem, t.eptp, 0x0, "r").fault.qualification == qual("r", 0b100)
    f = walk(mem, t.eptp, 0x0, "x", execute_only=False).fault
    assert isinstance(f, EptMisconfig) and "execute-only" in f.reason


@pytest.mark.parametrize("mt", [2, 3, 7])
def test_reserved_memtype_in_leaf(mt):
    mem, t = fresh()
    t.map(0x0, 0x300000, 4096, memtype=mt)
    f = walk(mem, t.eptp, 0x0).fault
    assert isinstance(f, EptMisconfig) and f.level == 1 and f"memory type {mt}" in f.reason
    mem, t = fresh()
    t.map(0x0, 0x0, 2 * MiB, memtype=mt, page_size=2 * MiB)
    assert walk(mem, t.eptp, 0x0).fault.level == 2


@pytest.mark.parametrize("mt", [0, 1, 4, 5, 6])
def test_valid_memtypes(mt):
    mem, t = fresh()
    t.map(0x0, 0x300000, 4096, memtype=mt)
    assert walk(mem, t.eptp, 0x0).memtype == mt


def test_reserved_bits():
    mem, t = fresh()
    t.map(0x0, 0x300000, 4096)
    pte = t.get_entry(0x0, 1)
    t.set_entry(0x0, 1, pte | 1 << 46)  # above MAXPHYADDR 46
    f = walk(mem, t.eptp, 0x0).fault
    assert isinstance(f, EptMisconfig) and "MAXPHYADDR" in f.reason and f.level == 1
    assert walk(mem, t.eptp, 0x0, maxphyaddr=52).address == 1 << 46 | 0x300000  # 52: an address bit
    t.set_entry(0x0, 1, pte | 1 << 63 | 1 << 52 | 1 << 11 | 1 << 7)  # ignored bits in a PTE
    assert walk(mem, t.eptp, 0x0).fault is None
    # bit 7 in a PML4E
    pml4e = t.get_entry(0x0, 4)
    t.set_entry(0x0, 4, pml4e | VmxEpt.LARGE_PAGE)
    f = walk(mem, t.eptp, 0x0).fault
    assert isinstance(f, EptMisconfig) and f.level == 4 and "bit 7" in f.reason
    t.set_entry(0x0, 4, pml4e | 0x30)  # bits 7:3 reserved in a non-leaf
    w = walk(mem, t.eptp, 0x0)
    assert "bits 7:3" in w.fault.reason
    assert w.table().splitlines()[-1].startswith("-> EPT_MISCONFIG (exit 49) at PML4E: bits 7:3")


@pytest.mark.parametrize("page_size,level,bad", [(2 * MiB, 2, 0x1000), (2 * MiB, 2, 0x100000),
                                                  (GiB, 3, 0x200000), (GiB, 3, 0x1000)])
def test_reserved_address_bits_of_a_large_page(page_size, level, bad):
    mem, t = fresh()
    t.map(0x0, page_size, page_size, page_size=page_size)
    t.set_entry(0x0, level, t.get_entry(0x0, level) | bad)
    f = walk(mem, t.eptp, 0x0).fault
    assert isinstance(f, EptMisconfig) and f.level == level and "below the" in f.reason


def test_misconfig_below_a_rights_violation_wins():
    # the PML4E forbids writes, but the PTE is misconfigured: misconfig (the CPU walks on)
    mem, t = fresh()
    t.map(0x0, 0x300000, 4096, memtype=2)
    t.set_entry(0x0, 4, (t.get_entry(0x0, 4) & ~7) | 1)
    assert isinstance(walk(mem, t.eptp, 0x0, "w").fault, EptMisconfig)


def test_not_present_ignores_other_bits():
    mem, t = fresh()
    t.map(0x0, 0x300000, 4096)
    t.set_entry(0x0, 1, 0x7FF0_0000_0000_0F78)  # bits 2:0 = 0: not present, rest ignored
    assert isinstance(walk(mem, t.eptp, 0x0).fault, EptViolation)


# --- bad input ----------------------------------------------------------------------------------

def test_entry_pointing_outside_memory():
    mem, t = fresh(size=2 * MiB)
    t.map(0x0, 0x0, 4096)
    t.set_entry(0x0, 3, 0x4000_0000 | 7)  # PDPTE -> a PD at 1 GiB, outside 2 MiB
    with pytest.raises(EptWalkError) as ei:
        walk(mem, t.eptp, 0x0)
    assert ei.value.level == 2 and ei.value.entry_addr == 0x4000_0000
    assert "PDE" in str(ei.value) and "0x40000000" in str(ei.value)
    assert isinstance(ei.value, PagingError)
    with pytest.raises(EptWalkError) as ei:
        walk(mem, construct_eptp(0x10_0000_0000), 0x0)
    assert ei.value.level == 4


def test_builder_errors():
    mem = GuestMemory(0x3000)
    t = EptTables(mem, 0x1000)
    with pytest.raises(EptError, match="no room"):
        t.map(0x0, 0x0, 4096)  # needs 3 more tables, only 2 pages left
    _, t = fresh()
    for args in [(0x1, 0x0, 4096), (0x0, 0x0, 0), (0x0, 0x0, 4096 * 3 // 2)]:
        with pytest.raises(EptError):
            t.map(*args)
    with pytest.raises(EptError):
        t.map(0x0, 0x0, 4096, page_size=8192)
    t.map(0x0, 0x0, 2 * MiB, page_size=2 * MiB)
    with pytest.raises(EptError, match="2 MiB"):
        t.map(0x1000, 0x0, 4096)
    with pytest.raises(EptError):
        walk(GuestMemory(4096), 0x5E, 0x0, "q")


def test_reprs_are_stable():
    mem, t = fresh()
    assert repr(t) == "EptTables(root=0x100000, 4-level, 1 tables)"
    w = walk(mem, t.eptp, 0x1000, "w")
    assert repr(w) == ("Walk(gpa=0x1000, 'w', 1 steps -> EptViolation(gpa=0x1000, qualification=0x182, "
                       "PML4E: PML4E not present))")
    assert "0x" in repr(w.steps[0]) and " at 0x" not in repr(w.steps[0])
    assert repr(Memslot.of(0x0, 0x10000, 0x200000)) == "Memslot(gpa=0x0, size=0x10000, hpa=0x200000)"


# --- property tests ---------------------------------------------------------------------------------

MEM = 8 * MiB
mapping = st.tuples(st.integers(0, (1 << 36) // 4096 - 1), st.integers(0, MEM // 4096 - 1),
                    st.sampled_from([1, 3, 5, 7, 4]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mapping, min_size=1, max_size=12), st.data())
def test_property_mapped_gpas_translate(maps, data):
    mem = GuestMemory(MEM)
    t = EptTables(mem, 4 * MiB, alloc_limit=MEM)
    final = {}
    for gfn, hfn, rwx in maps:
        t.map(gfn << 12, hfn << 12, 4096, rwx=rwx)
        final[gfn] = (hfn, rwx)
    gfn, (hfn, rwx) = data.draw(st.sampled_from(sorted(final.items())))
    off = data.draw(st.integers(0, 4095))
    access = data.draw(st.sampled_from("rwx"))
    mem.clear_log()
    w = walk(mem, t.eptp, gfn << 12 | off, access)
    assert len(mem.accesses) == len(w.steps) == 4
    if rwx & {"r": 1, "w": 2, "x": 4}[access]:
        assert w.address == hfn << 12 | off
    else:
        assert w.fault.qualification == qual(access, rwx)


# an entry: anything, or a plausible one (a page of the 16-page memory, or just past it, + low bits)
entry_words = st.one_of(st.integers(0, 2**64 - 1),
                        st.builds(lambda p, rwx, extra, hi: p << 12 | rwx | extra | hi << 52,
                                  st.integers(0, 20), st.sampled_from([7, 7, 7, 5, 3, 1, 4, 6, 2, 0]),
                                  st.sampled_from([0, 0, 0, 0, 0x100, 0x30, 0x80, 0xB0, 0x118, 0x300, 0x10]),
                                  st.integers(0, 0xFFF)))


@settings(max_examples=300, deadline=None)
@given(st.lists(entry_words, min_size=64, max_size=64), st.lists(st.integers(0, 3), min_size=5, max_size=5),
       st.integers(0, 4095), st.sampled_from("rwx"), st.sampled_from([4, 5]), st.integers(0, 15),
       st.booleans())
def test_property_random_tables_bounded(words, idx, off, access, levels, root_page, exec_only):
    """Random EPT tables (entries 0..3 of each of 16 pages filled at random): the walk
    reads at most `levels` entries, all inside memory, never writes, and ends in a
    translation, a fault whose qualification matches the access, or a typed error."""
    mem = GuestMemory(16 * 4096)
    for i, wd in enumerate(words):
        mem.write_u64((i // 4) * 4096 + (i % 4) * 8, wd)
    gpa = off | sum(ix << (12 + 9 * n) for n, ix in enumerate(idx[:levels]))
    eptp = Eptp(root_page << 12, MemType.WB, levels).encode()
    mem.clear_log()
    try:
        w = walk(mem, eptp, gpa, access, execute_only=exec_only)
    except EptWalkError as e:
        assert 1 <= e.level <= levels and not 0 <= e.entry_addr <= mem.size - 8
        assert len(mem.accesses) < levels
        return
    assert all(0 <= a.addr and a.addr + a.size <= mem.size and a.kind == "r" for a in mem.accesses)
    assert 1 <= len(w.steps) == len(mem.accesses) <= levels
    if isinstance(w.fault, EptViolation):
        assert w.fault.qualification & 7 == {"r": 1, "w": 2, "x": 4}[access]
        assert w.fault.rwx & {"r": 1, "w": 2, "x": 4}[access] == 0
    elif w.fault is None:
        assert w.rwx & {"r": 1, "w": 2, "x": 4}[access]
        assert w.address % 4096 == gpa % 4096
    else:
        assert isinstance(w.fault, EptMisconfig) and w.fault.entry & 7 != 0


# --- KVM's lazy population -------------------------------------------------------------------------

SLOTS = [Memslot.of(0x0, 64 * 4096, 0x200000)]


def test_one_violation_per_page_first_touched():
    gpas = [0x0, 0x8, 0xFF8, 0x1000, 0x0, 0x2000, 0x1FFF, (0x3000, "w"), (0x3008, "x")]
    r = guest_touches(gpas, SLOTS, mem=GuestMemory(4 * MiB), alloc_base=ROOT)
    assert r.exits == ["EPT_VIOLATION", None, None, "EPT_VIOLATION", None, "EPT_VIOLATION", None,
                       "EPT_VIOLATION", None]
    assert r.pf_fixed == 4  # pages 0, 1, 2, 3
    assert r.pf_emulate == 0 and r.pf_mmio_spte_created == 0
    assert all(t.ret == "FIXED" for t in r.touches if t.exit)


def test_mmio_violation_once_then_misconfig_every_time():
    gpas = [0xFEE00000, 0xFEE00000, 0xFEE00030, 0x1000, 0xFEE00000]
    r = guest_touches(gpas, SLOTS, mem=GuestMemory(4 * MiB), alloc_base=ROOT)
    assert r.exits == ["EPT_VIOLATION", "EPT_MISCONFIG", "EPT_MISCONFIG", "EPT_VIOLATION", "EPT_MISCONFIG"]
    assert [t.emulated for t in r.touches] == [True, True, True, False, True]
    # only the violation went through kvm_mmu_do_page_fault (pf_emulate 1); the three
    # misconfigurations took handle_mmio_page_fault's "goto emulate" past it
    assert r.pf_fixed == 1 and r.pf_mmio_spte_created == 1 and r.pf_emulate == 1
    no_cache = guest_touches(gpas[:3], SLOTS, mem=GuestMemory(4 * MiB), alloc_base=ROOT,
                             mmio_caching=False)
    assert no_cache.exits == ["EPT_VIOLATION"] * 3 and no_cache.pf_mmio_spte_created == 0


def test_tdp_installs_kvm_sptes():
    mem = GuestMemory(4 * MiB)
    tdp = Tdp(EptTables(mem, ROOT), SLOTS)
    assert tdp_page_fault(tdp, 0x5123) == RetPf.FIXED
    w = walk(mem, tdp.tables.eptp, 0x5123, "w")
    assert w.address == 0x205123 and w.memtype == MemType.WB and w.ipat
    assert w.steps[-1].entry == 0x205000 | 7 | 6 << 3 | 1 << 6 | 1 << 8 | 1 << 11
    assert w.steps[0].entry == 0x101000 | 7 | 1 << 8 | 1 << 11  # make_nonleaf_spte
    assert tdp_page_fault(tdp, 0x5000) == RetPf.SPURIOUS and tdp.pf_fixed == 1
    assert tdp_page_fault(tdp, 0xFEE00000) == RetPf.EMULATE
    f = walk(mem, tdp.tables.eptp, 0xFEE00000, "r").fault
    assert isinstance(f, EptMisconfig) and f.entry == 0xFEE00000 | 0b110 and f.level == 1
    assert repr(tdp) == "Tdp(1 memslots, pf_fixed=1, pf_emulate=1, pf_mmio_spte_created=1)"


def test_make_mmio_spte_generation_bits():
    assert make_mmio_spte(0xFEE00) == 0xFEE00006
    assert make_mmio_spte(0x1, gen=0xFF) == 0x1000 | 0xFF << 3 | 6
    assert make_mmio_spte(0x1, gen=0x100) == 0x1000 | 1 << 52 | 6
    assert make_mmio_spte(0x1, gen=(1 << 19) - 1) & ~0x1006 == (0xFF << 3) | ((1 << 11) - 1) << 52


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 128 * 4096 - 1), min_size=1, max_size=40))
def test_property_exits_per_first_touch(gpas):
    """RAM [0, 64 pages), MMIO above: violations == first-touched pages (RAM and MMIO),
    misconfigs == later MMIO touches, pf_fixed == distinct RAM pages."""
    r = guest_touches(gpas, SLOTS, mem=GuestMemory(4 * MiB), alloc_base=ROOT)
    seen: set[int] = set()
    want = []
    for g in gpas:
        page = g >> 12
        if page not in seen:
            want.append("EPT_VIOLATION")
        else:
            want.append("EPT_MISCONFIG" if page >= 64 else None)
        seen.add(page)
    assert r.exits == want
    assert r.pf_fixed == len({g >> 12 for g in gpas if g < 64 * 4096})
    assert r.pf_mmio_spte_created == len({g >> 12 for g in gpas if g >= 64 * 4096})


def test_oracle_a_misconfiguration_skips_the_counted_fault_path():
    """kvm_mmu_page_fault: PFERR_RSVD → handle_mmio_page_fault → goto emulate, before
    kvm_mmu_do_page_fault (which counts pf_taken / pf_emulate)."""
    from _sources import LINUX_6_1, LINUX_6_1_REV, function_body, git_show

    mmu = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/mmu.c")
    body = function_body(mmu, "int noinline kvm_mmu_page_fault(")
    rsvd = body.index("if (unlikely(error_code & PFERR_RSVD_MASK)) {")
    assert body.index("goto emulate;", rsvd) < body.index("r = kvm_mmu_do_page_fault(", rsvd)
    internal = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/mmu_internal.h")
    do_pf = internal[internal.index("static inline int kvm_mmu_do_page_fault("):]
    do_pf = do_pf[:do_pf.index("\n}\n")]
    assert "vcpu->stat.pf_taken++;" in do_pf and "vcpu->stat.pf_emulate++;" in do_pf


def test_self_referencing_ept_terminates():
    """An EPT PML4E that points at the PML4 itself: the walk is bounded by the levels, never a loop."""
    host = GuestMemory(0x200000, record=False)
    t = EptTables(host, 0x100000)
    root = t.root
    host.write_u64(root, root | 0b111)           # PML4E[0] -> the PML4 page, RWX
    w = walk(host, t.eptp, 0x123, "r")
    assert len(w.steps) == 4 and all(s.entry_addr == root for s in w.steps)
    # the "leaf" is the PML4 entry read as a PTE: memory type 0 (UC), so GPA 0 maps to the PML4 page
    assert w.ok and w.address == root | 0x123


def test_tdp_maps_2m_pages_where_the_memslot_allows():
    from vbook.models.ept import Tdp, guest_touch, max_mapping_level
    m2 = 1 << 21
    slot = Memslot.of(0, 5 * m2 + 0x1000, 4 * m2)            # 5 whole 2 MiB frames and one page
    tdp = Tdp(EptTables(GuestMemory(0x100000, record=False), 0x1000), [slot], hugepages=True)
    assert guest_touch(tdp, 0x123456, "w").ret == "FIXED"
    w = walk(tdp.tables.mem, tdp.tables.eptp, 0x1FFFF8, "r")     # the same 2 MiB frame: no fault
    assert w.ok and w.page_size == m2 and w.address == 4 * m2 + 0x1FFFF8
    assert guest_touch(tdp, 0x1FFFF8, "r").exit is None and tdp.pf_fixed == 1
    assert guest_touch(tdp, 5 * m2 + 8, "r").ret == "FIXED"       # the partial frame: 4 KiB
    assert walk(tdp.tables.mem, tdp.tables.eptp, 5 * m2).page_size == 0x1000
    assert max_mapping_level(slot, 0x10, False) == 1                # no huge pages behind it
    assert max_mapping_level(Memslot.of(0, 4 * m2, m2 + 0x1000), 0x10, True) == 1   # misaligned
    assert max_mapping_level(None, 0x10, True) == 1


def test_oracle_max_mapping_level_and_lpage_info():
    from _sources import LINUX_6_1, LINUX_6_1_REV, git_show
    mmu = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/mmu.c")
    assert "int kvm_mmu_max_mapping_level(struct kvm *kvm," in mmu
    x86 = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/x86.c")
    body = x86[x86.index("static int kvm_alloc_memslot_metadata("):]
    body = body[:body.index("\n}\n")]
    # a partial frame at either end, and a slot whose gfn and hva are not equally aligned,
    # disallow large pages (lpage_info[...].disallow_lpage = 1)
    assert "if (slot->base_gfn & (KVM_PAGES_PER_HPAGE(level) - 1))" in body
    assert "if ((slot->base_gfn + npages) & (KVM_PAGES_PER_HPAGE(level) - 1))" in body
    assert "if ((slot->base_gfn ^ ugfn) & (KVM_PAGES_PER_HPAGE(level) - 1))" in body
