"""Real shadow paging on /dev/kvm against the book's model (vbook.models.shadow).

The ``touch_pages`` guest (64-bit, CPL 3, started by
:func:`vbook.backends.long_mode.start_in_long_mode`) runs on the real KVM; the
vCPU and VM counters (``KVM_GET_STATS_FD``) around each pass must equal what
:class:`vbook.models.shadow.ShadowMmu` predicts for the same tables and the
same accesses, taken from the built guest: the fetch from the code page, then
one store per data page, in program order. A second pass (the guest jumps back
to its start; the next KVM_RUN re-enters) must take no fault, in both.

Skips, with the reason, where /dev/kvm cannot be used; the shadow-paging
comparisons need a host that shadows (PVM, or ept=0 / npt=0): under EPT/NPT the
guest's accesses make no #PF exit and the counters say nothing about the model.
"""

from __future__ import annotations

import struct

import pytest

from vbook import shadow_run
from vbook.backends.long_mode import (
    GDT_ENTRIES,
    IOMAP_BASE,
    TSS_ADDR,
    TSS_LIMIT,
    TSS_SEL,
    USER_CS,
    USER_DS,
    gdt_bytes,
    start_in_long_mode,
    tss_bytes,
)
from vbook.errors import BackendUnavailable, GuestError
from vbook.guests import touch_pages
from vbook.host import why_not_shadow_paging
from vbook.memory import GuestMemory
from vbook.models.paging import PageTables, PteFlags

NS = (1, 4, 16)


# --- no KVM needed --------------------------------------------------------------------


def test_code_is_the_assembled_listing():
    from vbook.guests.build import assemble, tools_missing

    why = tools_missing()
    if why:
        pytest.skip(why)
    assert assemble(touch_pages.LISTING) == touch_pages.CODE
    for n in (0, *NS, touch_pages.MAX_PAGES):
        assert assemble(touch_pages.listing(n)) == touch_pages.code(n), n
    assert assemble(touch_pages.listing(3, 0x40000)) == touch_pages.code(3, 0x40000)


def test_build_gives_image_entry_and_the_pages_touched():
    mem, cr3, rip, rsp, touched = touch_pages.build(4)
    assert isinstance(mem, GuestMemory) and mem.size == touch_pages.MEM_SIZE
    assert mem.read(rip, len(touch_pages.CODE)) == touch_pages.CODE
    assert touched == (0x20000, 0x21000, 0x22000, 0x23000)
    assert rsp == touch_pages.STACK_TOP and cr3 == touch_pages.TABLES
    with pytest.raises(GuestError):
        touch_pages.build(touch_pages.MAX_PAGES + 1)


def test_gdt_and_tss_layout():
    gdt = gdt_bytes(TSS_ADDR)
    assert len(gdt) == 8 * GDT_ENTRIES
    cs, = struct.unpack_from("<Q", gdt, USER_CS & ~7)
    ds, = struct.unpack_from("<Q", gdt, USER_DS & ~7)
    assert (cs >> 40) & 0xFF == 0xFB and (cs >> 53) & 1 == 1   # P, DPL 3, S, type 11; L = 1
    assert (ds >> 40) & 0xFF == 0xF3 and (ds >> 54) & 1 == 1   # P, DPL 3, S, type 3; D/B = 1
    tss_d, tss_hi = struct.unpack_from("<QQ", gdt, TSS_SEL)
    base = ((tss_d >> 16) & 0xFFFFFF) | ((tss_d >> 56) << 24) | (tss_hi & 0xFFFFFFFF) << 32
    limit = (tss_d & 0xFFFF) | ((tss_d >> 48) & 0xF) << 16
    assert (base, limit, (tss_d >> 40) & 0xFF) == (TSS_ADDR, TSS_LIMIT, 0x8B)
    tss = tss_bytes()
    assert len(tss) == TSS_LIMIT + 1 == 0x68 + 8192 + 1
    assert struct.unpack_from("<H", tss, 0x66)[0] == IOMAP_BASE == 0x68
    assert tss[IOMAP_BASE:TSS_LIMIT] == bytes(8192) and tss[TSS_LIMIT] == 0xFF


def test_start_refuses_a_tss_that_is_not_identity_mapped():
    class NoVcpu:
        mem_size = touch_pages.MEM_SIZE

    mem = GuestMemory(touch_pages.MEM_SIZE, record=False)
    pt = PageTables(mem, touch_pages.TABLES)
    pt.map(touch_pages.CODE_GPA, touch_pages.CODE_GPA, flags=PteFlags.RW | PteFlags.US)
    with pytest.raises(GuestError, match="identity-mapped"):
        start_in_long_mode(NoVcpu(), mem, pt.cr3, touch_pages.CODE_GPA, 0)   # GDT/TSS unmapped
    g = touch_pages.build(1)
    with pytest.raises(GuestError, match="cpl"):
        start_in_long_mode(NoVcpu(), g.mem, g.cr3, g.rip, g.rsp, cpl=1)


# --- on /dev/kvm ----------------------------------------------------------------------


def _kvm():
    try:
        shadow_run.require_kvm()
    except BackendUnavailable as e:  # the reason is the skip message
        pytest.skip(f"kvm backend: {e.reason}")
    from vbook.backends.kvm import KvmVcpu

    return KvmVcpu


@pytest.mark.parametrize("n", NS)
def test_touch_n_pages_counts_match_the_shadow_model(n):
    KvmVcpu = _kvm()
    g = touch_pages.build(n)
    vcpu = KvmVcpu.from_guest(g.guest(), timeout=5.0)
    try:
        start_in_long_mode(vcpu, g.mem, g.cr3, g.rip, g.rsp, cpl=3)
        measured = shadow_run.kvm_passes(vcpu, n)  # each pass must end in the guest's OUT of n
        # the guest really ran at CPL 3 in 64-bit mode and stored into every page
        sregs = vcpu.get_sregs()
        assert sregs.long_mode and sregs.cs.l == 1 and sregs.cs.dpl == 3 and sregs.ss.dpl == 3
        assert [vcpu.read_memory(gva, 1)[0] for gva in g.touched] == list(range(n, 0, -1))
    finally:
        vcpu.close()

    why = why_not_shadow_paging()
    if why:
        pytest.skip(f"{why}: the #PF counters are not shadow paging's (pf_fixed {measured[0]['pf_fixed']})")
    # every counter the model moves, under the kernel's names; the model's first pass counts
    # from zero (its constructor is the first KVM_RUN's kvm_mmu_load: see vbook.shadow_run)
    p = shadow_run.predict(n)
    predicted = [p.first, p.second]
    assert measured[0] == predicted[0], f"n={n} first pass: measured {measured[0]}, model {predicted[0]}"
    assert measured[1] == predicted[1], f"n={n} second pass: measured {measured[1]}, model {predicted[1]}"
    # what the model says, spelled out: one fault per page touched plus the code page, none again
    assert predicted[0]["pf_fixed"] == predicted[0]["pf_taken"] == len(g.accesses())
    assert predicted[1]["pf_fixed"] == predicted[1]["pf_taken"] == 0
