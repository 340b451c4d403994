"""The paging model against the kernel's own walker: KVM_TRANSLATE on /dev/kvm.

Tables built by :class:`vbook.models.paging.PageTables` are copied into a real
VM's RAM, the vCPU is put in 64-bit mode on them with ``KVM_SET_SREGS``
(CR0.PG|PE, CR4.PAE, EFER.LME|LMA, CR3), and ``KVM_TRANSLATE``
(``kvm_arch_vcpu_ioctl_translate`` → the vCPU's ``gva_to_gpa``) must give, for
every address, what :func:`vbook.models.paging.walk` gives: the same GPA, or
"not mapped" where the model faults. No guest instruction runs. Skips, with the
reason, where /dev/kvm cannot be used.
"""

from __future__ import annotations

import random

import pytest

from vbook.backends import available
from vbook.guests.base import Guest
from vbook.memory import GuestMemory
from vbook.models import paging
from vbook.models.paging import SIZE_2M, PageTables, PteFlags

MEM = 0x400000  # 4 MiB of guest RAM: tables at 1 MiB, data pages above
TABLES = 0x100000

CR0_PE, CR0_PG = 1 << 0, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10


def _kvm_vcpu_on(tables_mem: GuestMemory, cr3: int):
    """A KvmVcpu whose RAM holds ``tables_mem`` and whose MMU is in 4-level long mode on cr3."""
    why = available()["kvm"]
    if why:
        pytest.skip(f"kvm backend: {why}")
    from vbook.backends.kvm import KvmVcpu

    guest = Guest("paging-probe", 64, b"\xf4", "hlt", load_addr=0x1000, mem_size=MEM)
    vcpu = KvmVcpu.from_guest(guest)
    vcpu.write_memory(0, bytes(tables_mem.buf))
    sregs = vcpu.get_sregs()
    sregs.cr3, sregs.cr4 = cr3, sregs.cr4 | CR4_PAE
    sregs.cr0 |= CR0_PE | CR0_PG
    sregs.efer |= EFER_LME | EFER_LMA
    sregs.cs.l, sregs.cs.db, sregs.cs.type, sregs.cs.s = 1, 0, 11, 1
    vcpu.set_sregs(sregs)
    return vcpu


def _tables() -> tuple[GuestMemory, PageTables, list[int]]:
    mem = GuestMemory(MEM, record=False)
    pt = PageTables(mem, TABLES)
    rng = random.Random(8)
    probes = []
    # 4 KiB pages at scattered GVAs (across PML4/PDPT/PD boundaries), GPAs not identity
    for i in range(12):
        gva = (rng.randrange(1 << 47) & ~0xFFF) | (i << 12)
        gva &= (1 << 47) - 1
        gpa = 0x200000 + i * 0x1000
        pt.map(gva, gpa, flags=PteFlags.RW)
        probes += [gva, gva + 0x123, gva + 0x1000]  # the page, inside it, the next (unmapped)
    # one 2 MiB page, and an address inside it
    pt.map(0x40000000, 0x200000, size=SIZE_2M, flags=PteFlags.RW)
    probes += [0x40000000, 0x401F_F123, 0x40200000]
    # the upper half (negative, canonical) and an address that is mapped nowhere
    pt.map(0xFFFF_8000_0000_0000, 0x300000, flags=PteFlags.RW)
    probes += [0xFFFF_8000_0000_0000, 0xFFFF_8000_0000_0ABC, 0x7000_0000_0000]
    return mem, pt, probes


def test_walk_agrees_with_kvm_translate():
    mem, pt, probes = _tables()
    vcpu = _kvm_vcpu_on(mem, pt.cr3)
    try:
        seen = 0
        for gva in probes:
            model = paging.walk(mem, pt.cr3, gva)
            kernel = vcpu.translate(gva)
            if model.fault is None:
                assert kernel == model.address, f"GVA {gva:#x}: KVM {kernel}, model {model.address:#x}"
                seen += 1
            else:
                assert kernel is None, f"GVA {gva:#x}: KVM maps it to {kernel:#x}, model faults"
        assert seen >= 20  # both outcomes were exercised
    finally:
        vcpu.close()


def test_a_cleared_present_bit_unmaps_it_for_both():
    """Flip P in one leaf entry: the model faults (P=0) and KVM_TRANSLATE says not mapped."""
    mem, pt, probes = _tables()
    gva = probes[0]
    leaf = paging.walk(mem, pt.cr3, gva).steps[-1]
    mem.write_u64(leaf.entry_addr, leaf.entry & ~int(PteFlags.P))
    model = paging.walk(mem, pt.cr3, gva)
    assert model.fault is not None and not model.fault.error_code & paging.PfErr.P
    vcpu = _kvm_vcpu_on(mem, pt.cr3)
    try:
        assert vcpu.translate(gva) is None
    finally:
        vcpu.close()
