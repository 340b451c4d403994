"""Start a vCPU directly in 64-bit mode, at CPL 3 or 0, on page tables a model built.

Both backends: :class:`~vbook.backends.kvm.KvmVcpu` and
:class:`~vbook.backends.unicorn_cpu.UnicornVcpu`; the same guest then gives
the same exits on both (tests/test_long_mode.py, tests/test_conformance.py).

Why: chapter 05 shows shadow paging on the real ``/dev/kvm``. On the PVM host
this book is measured on (KVM without VMX/SVM), *every CPL-0 guest
instruction is emulated* by KVM's instruction emulator, and the emulator walks
the guest's page tables in software: no access ever goes through a shadow
page table, so ``pf_taken`` / ``pf_fixed`` never move. Ring-3 guest code runs
natively on the shadow tables, so page faults (and ``pages_4k``) only show at
CPL 3 (reference/machine.md, "KVM's own counters" and "Shadow paging shows at
CPL3"). A guest cannot easily get to ring 3 by itself without an IDT, an
``iretq`` frame and a TSS, so the VMM puts it there, as KVM selftests'
``vm_create`` / ``vcpu_setup`` do: ``KVM_SET_SREGS`` straight into IA-32e
mode with the segment caches already loaded. unicorn has no such call (a
``reg_write`` of CS/SS sets only the selector, not the CPL — measured), so
there the CPU loads the same GDT's descriptors itself with ``iretq`` from a
trampoline outside guest RAM (:meth:`~vbook.backends.unicorn_cpu.UnicornVcpu.enter_long_mode`):
the register state that results is the one below, on both.

Guest memory is written in place: the image is best built straight in the
vCPU's RAM (``vcpu.memory``, a :class:`~vbook.memory.GuestMemory` that *is*
that RAM); an image built elsewhere is copied in once. The GDT and TSS are
written into the vCPU's RAM directly.

What :func:`start_in_long_mode` sets (the recipe measured in machine.md):

* guest RAM = the image (tables + code + data, e.g. built with
  :class:`vbook.models.paging.PageTables` in a :class:`vbook.memory.GuestMemory`),
  plus a GDT at ``gdt`` and a 64-bit TSS at ``tss`` written over it;
* the GDT, laid out as Linux's: 0x10 kernel CS (L = 1), 0x18 kernel DS,
  0x2b user DS (DPL 3), 0x33 user CS (DPL 3, L = 1), 0x40 the 16-byte TSS
  descriptor (busy 64-bit TSS, type 11);
* the TSS (SDM vol. 3A §8.7, "Task Management in 64-bit Mode", Figure 8-11):
  104 bytes, RSP0 = ``rsp0``, I/O map base 0x68, then an all-zero 8192-byte I/O
  permission bitmap (every port allowed) and the 0xFF byte the SDM requires
  after it (§19.5.2); limit 0x68 + 8192. PVM clears RFLAGS.IOPL, so a CPL-3
  ``OUT`` is allowed only by this bitmap (unicorn 2.1.4 checks no I/O
  permission at all, measured: it allows every port, and never reads the bitmap);
* CS = 0x33 (type 11, DPL 3, L = 1), SS = DS = ES = FS = GS = 0x2b (type 3,
  DPL 3) for ``cpl=3``; 0x10 / 0x18 with DPL 0 for ``cpl=0``. CPL is SS.DPL
  (and CS.DPL) in the cache, which is what KVM reads;
* TR = 0x40 (base ``tss``, limit 0x2068, type 11 — on unicorn TR is written
  as QEMU's cache, flags 0x8B00), LDTR unusable, IDTR empty
  (limit 0: any exception — e.g. ``HLT`` at CPL 3, a #GP — ends in a triple
  fault, ``KVM_EXIT_SHUTDOWN``);
* CR0 = PE | MP | ET | NE | WP | PG, CR4 = PAE, EFER = LME | LMA, CR3 = ``cr3``
  (``cr0=``, ``cr4=``, ``efer=`` change them: e.g. ``EFER_NXE``, ``CR4_SMEP``);
* RIP, RSP, RFLAGS = 0x2 (IF = 0, IOPL = 0), the other registers 0.

``gdt`` and ``tss`` are guest-physical addresses and must be identity-mapped
by the tables at ``cr3`` (the CPU and KVM's emulator read them through linear
addresses: the emulator reads the I/O bitmap of an ``OUT``); this is checked
with :func:`vbook.models.paging.walk`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from vbook.backends.base import Regs
from vbook.backends.kvm_structs import Dtable, Segment
from vbook.errors import GuestError
from vbook.memory import GuestMemory
from vbook.models import paging

__all__ = [
    "CR0_LONG", "CR0_WP", "CR4_LONG", "CR4_PAE", "CR4_SMAP", "CR4_SMEP", "EFER_LONG", "EFER_NXE",
    "GDT_ADDR", "GDT_ENTRIES", "IOMAP_BASE", "IOPB_SIZE", "KERNEL_CS", "KERNEL_DS", "LongModeStart",
    "TSS_ADDR", "TSS_LIMIT", "TSS_SEL", "USER_CS", "USER_DS", "gdt_bytes", "start_in_long_mode",
    "tss_bytes",
]

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 1 << 1, 1 << 4, 1 << 5, 1 << 16, 1 << 31
CR0_LONG = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
CR4_PAE, CR4_SMEP, CR4_SMAP = 1 << 5, 1 << 20, 1 << 21
CR4_LONG = CR4_PAE
EFER_LME, EFER_LMA, EFER_NXE = 1 << 8, 1 << 10, 1 << 11
EFER_LONG = EFER_LME | EFER_LMA

#: selectors, as Linux's GDT_ENTRY_* (arch/x86/include/asm/segment.h, 64-bit)
KERNEL_CS, KERNEL_DS, USER_DS, USER_CS, TSS_SEL = 0x10, 0x18, 0x2B, 0x33, 0x40
GDT_ENTRIES = 10                     # 8 descriptors + the TSS's 16 bytes
#: default places: below the 32 KiB-aligned group of 8 pages a user's code would use
GDT_ADDR = 0x1000
TSS_ADDR = 0x2000
#: the 64-bit TSS: 104 bytes, then the I/O permission bitmap (one bit per port) and 0xFF
TSS64_SIZE = 0x68
IOMAP_BASE = TSS64_SIZE
IOPB_SIZE = 65536 // 8
TSS_LIMIT = IOMAP_BASE + IOPB_SIZE   # the last byte: the 0xFF after the bitmap

_TYPE_CODE, _TYPE_DATA, _TYPE_TSS_BUSY = 11, 3, 11   # accessed execute/read, accessed r/w
_QEMU_P = 1 << 15                    # P in QEMU's segment-cache flags (unicorn's TR value)


def _descriptor(access: int, flags: int, base: int = 0, limit: int = 0xFFFFF) -> bytes:
    """One 8-byte code/data descriptor (SDM vol. 3A §3.4.5, Figure 3-8)."""
    return struct.pack("<HHBBBB", limit & 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF, access,
                       ((limit >> 16) & 0xF) | (flags << 4), (base >> 24) & 0xFF)


def gdt_bytes(tss: int = TSS_ADDR) -> bytes:
    """The GDT :func:`start_in_long_mode` writes: ``GDT_ENTRIES`` * 8 bytes."""
    def seg(dpl: int, typ: int, l: int, db: int) -> bytes:  # noqa: E741 (the SDM's name)
        return _descriptor(0x80 | dpl << 5 | 0x10 | typ, 0x8 | l << 1 | db << 2)  # P S; G
    entries = [bytes(8)] * GDT_ENTRIES
    entries[KERNEL_CS >> 3] = seg(0, _TYPE_CODE, 1, 0)
    entries[KERNEL_DS >> 3] = seg(0, _TYPE_DATA, 0, 1)
    entries[USER_DS >> 3] = seg(3, _TYPE_DATA, 0, 1)
    entries[USER_CS >> 3] = seg(3, _TYPE_CODE, 1, 0)
    # 64-bit TSS descriptor (SDM vol. 3A §8.2.3, Figure 8-4): 16 bytes, S = 0, G = 0
    low = bytearray(_descriptor(0x80 | _TYPE_TSS_BUSY, 0, tss & 0xFFFFFFFF, TSS_LIMIT))
    entries[TSS_SEL >> 3] = bytes(low)
    entries[(TSS_SEL >> 3) + 1] = struct.pack("<II", tss >> 32, 0)
    return b"".join(entries)


def tss_bytes(rsp0: int = 0) -> bytes:
    """The 64-bit TSS with its I/O bitmap: ``TSS_LIMIT + 1`` bytes, every port allowed."""
    tss = bytearray(TSS_LIMIT + 1)
    struct.pack_into("<Q", tss, 4, rsp0)            # RSP0
    struct.pack_into("<H", tss, 0x66, IOMAP_BASE)   # I/O map base address
    tss[TSS_LIMIT] = 0xFF                           # "must be 0FFH" after the bitmap
    return bytes(tss)


@dataclass(frozen=True)
class LongModeStart:
    """What :func:`start_in_long_mode` did: where the GDT and TSS went, the CPL, the entry."""

    cr3: int
    rip: int
    rsp: int
    cpl: int
    gdt: int
    tss: int


def _check_identity(mem: GuestMemory, cr3: int, start: int, size: int, what: str) -> None:
    for page in range(start & ~0xFFF, start + size, paging.PAGE_SIZE):
        w = paging.walk(mem, cr3, page)
        if w.fault is not None or w.address != page:
            got = "not mapped" if w.fault is not None else f"mapped to {w.address:#x}"
            raise GuestError(f"the {what} page {page:#x} must be identity-mapped by the tables at "
                             f"cr3={cr3:#x}; it is {got}")


def _view_of(mem: GuestMemory, ram: GuestMemory | None) -> bool:
    """Is ``mem`` the vCPU's RAM ``ram`` itself (or a view made over it)?"""
    while mem is not None:
        if mem is ram:
            return True
        mem = mem.parent
    return False


def start_in_long_mode(vcpu: Any, mem_image: GuestMemory, cr3: int, rip: int, rsp: int, *,
                       cpl: int = 3, gdt: int = GDT_ADDR, tss: int = TSS_ADDR,
                       rsp0: int = 0, cr0: int = CR0_LONG, cr4: int = CR4_LONG,
                       efer: int = EFER_LONG) -> LongModeStart:
    """Put ``vcpu`` in 64-bit mode at ``cpl`` on the tables at ``cr3``; write its GDT and TSS.

    ``vcpu`` is a :class:`~vbook.backends.kvm.KvmVcpu` or a
    :class:`~vbook.backends.unicorn_cpu.UnicornVcpu` with at least
    ``mem_image.size`` bytes of RAM. ``mem_image`` holds the tables, code and
    data: best the vCPU's own RAM (``vcpu.memory``, or a view made over it),
    built in place — then nothing is copied; any other
    :class:`~vbook.memory.GuestMemory` is copied into the vCPU's RAM from GPA 0
    (its own guest is overwritten) and is not changed. The GDT and TSS are
    written straight into the vCPU's RAM at ``gdt`` / ``tss``, so that room
    must be free in the image and identity-mapped. ``cr0``, ``cr4``, ``efer``
    default to the recipe of the module docstring (e.g. ``efer=EFER_LONG |
    EFER_NXE`` for NX pages). Nothing runs: the next ``run()`` starts at ``rip``.
    """
    if cpl not in (0, 3):
        raise GuestError(f"cpl must be 0 or 3, got {cpl!r}")
    if mem_image.size > vcpu.mem_size:
        raise GuestError(f"the image ({mem_image.size:#x} bytes) does not fit in the vCPU's RAM "
                         f"({vcpu.mem_size:#x} bytes)")
    gdt_b, tss_b = gdt_bytes(tss), tss_bytes(rsp0)
    for what, at, n in (("GDT", gdt, len(gdt_b)), ("TSS", tss, len(tss_b))):
        if at < 0 or at + n > mem_image.size:
            raise GuestError(f"the {what} [{at:#x}, {at + n:#x}) is outside the image")
        _check_identity(mem_image, cr3, at, n, what)
    if gdt < tss + len(tss_b) and tss < gdt + len(gdt_b):
        raise GuestError(f"the GDT at {gdt:#x} and the TSS at {tss:#x} overlap")
    ram = vcpu.memory
    if not _view_of(mem_image, ram):
        vcpu.write_memory(0, mem_image.buf)   # an image built elsewhere: one copy
    ram.write(gdt, gdt_b)
    ram.write(tss, tss_b)

    cs_sel, ds_sel = (USER_CS, USER_DS) if cpl == 3 else (KERNEL_CS, KERNEL_DS)
    if hasattr(vcpu, "enter_long_mode"):   # unicorn: the CPU loads the segments (see there)
        vcpu.enter_long_mode(gdt=gdt, gdt_limit=len(gdt_b) - 1, cs=cs_sel, ds=ds_sel,
                             tr=(TSS_SEL, tss, TSS_LIMIT, _QEMU_P | _TYPE_TSS_BUSY << 8),
                             cr0=cr0, cr3=cr3, cr4=cr4, efer=efer, rip=rip, rsp=rsp, rflags=0x2)
        return LongModeStart(cr3=cr3, rip=rip, rsp=rsp, cpl=cpl, gdt=gdt, tss=tss)

    def flat(selector: int, typ: int, l: int, db: int) -> Segment:  # noqa: E741
        return Segment(base=0, limit=0xFFFFFFFF, selector=selector, type=typ, present=1, dpl=cpl,
                       db=db, s=1, l=l, g=1)

    sregs = vcpu.get_sregs()
    sregs.cs = flat(cs_sel, _TYPE_CODE, 1, 0)
    sregs.ss, sregs.ds, sregs.es, sregs.fs, sregs.gs = (flat(ds_sel, _TYPE_DATA, 0, 1)
                                                        for _ in range(5))
    sregs.tr = Segment(base=tss, limit=TSS_LIMIT, selector=TSS_SEL, type=_TYPE_TSS_BUSY, present=1,
                       dpl=0, db=0, s=0, l=0, g=0)
    sregs.ldt = Segment(base=0, limit=0, selector=0, type=0, present=0, s=0, unusable=1)
    sregs.gdt = Dtable(base=gdt, limit=len(gdt_b) - 1)
    sregs.idt = Dtable(base=0, limit=0)
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = cr0, cr3, cr4, efer
    vcpu.set_sregs(sregs)
    vcpu.set_regs(Regs(rip=rip, rsp=rsp, rflags=0x2))
    return LongModeStart(cr3=cr3, rip=rip, rsp=rsp, cpl=cpl, gdt=gdt, tss=tss)
