"""The C structs the /dev/kvm ioctls carry, packed with :mod:`struct`.

Layouts are x86-64, ``include/uapi/linux/kvm.h`` and ``asm/kvm.h`` (uapi 6.1;
sizes and offsets in /work/shared/reference/facts.md §1.4–1.5, pinned by
``tests/test_kvm_api_oracle.py`` where they are constants of
:mod:`vbook.models.kvm_api`). Field names are the kernel's.
"""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass, field

from vbook.backends.base import Regs

# --- struct kvm_regs (144 bytes): 18 __u64 in Regs.FIELDS order ------------------
REGS = struct.Struct("<18Q")


def unpack_regs(buf: bytes) -> Regs:
    return Regs(*REGS.unpack(buf))


def pack_regs(regs: Regs) -> bytes:
    return REGS.pack(*(getattr(regs, name) & (2**64 - 1) for name in Regs.FIELDS))


# --- struct kvm_segment (24 bytes) --------------------------------------------------
SEGMENT = struct.Struct("<QIH10B")  # base, limit, selector, type … unusable, padding


@dataclass
class Segment:
    """``struct kvm_segment``: a segment register with its hidden descriptor cache."""

    base: int = 0
    limit: int = 0xFFFF
    selector: int = 0
    type: int = 0
    present: int = 1
    dpl: int = 0
    db: int = 0
    s: int = 1
    l: int = 0
    g: int = 0
    avl: int = 0
    unusable: int = 0

    @classmethod
    def unpack_from(cls, buf: bytes, offset: int = 0) -> Segment:
        return cls(*SEGMENT.unpack_from(buf, offset)[:-1])  # drop padding

    def pack_into(self, buf: bytearray, offset: int) -> None:
        SEGMENT.pack_into(buf, offset, *astuple(self), 0)


# --- struct kvm_dtable (16 bytes) ---------------------------------------------------
DTABLE = struct.Struct("<QH6x")


@dataclass
class Dtable:
    """``struct kvm_dtable``: GDTR / IDTR."""

    base: int = 0
    limit: int = 0xFFFF


# --- struct kvm_sregs (312 bytes) ---------------------------------------------------
SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")  # offsets 0, 24, … 168
CONTROL = struct.Struct("<7Q4Q")  # cr0 cr2 cr3 cr4 cr8 efer apic_base, interrupt_bitmap[4]
SIZEOF_SREGS = 312

CR0_PE = 1 << 0
CR0_PG = 1 << 31
EFER_LMA = 1 << 10


@dataclass
class Sregs:
    """``struct kvm_sregs``: segment registers, descriptor tables, control registers."""

    cs: Segment = field(default_factory=Segment)
    ds: Segment = field(default_factory=Segment)
    es: Segment = field(default_factory=Segment)
    fs: Segment = field(default_factory=Segment)
    gs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=Segment)
    ldt: Segment = field(default_factory=Segment)
    gdt: Dtable = field(default_factory=Dtable)
    idt: Dtable = field(default_factory=Dtable)
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    apic_base: int = 0
    interrupt_bitmap: tuple[int, int, int, int] = (0, 0, 0, 0)

    @classmethod
    def unpack(cls, buf: bytes) -> Sregs:
        segs = {n: Segment.unpack_from(buf, 24 * i) for i, n in enumerate(SEGMENT_NAMES)}
        gdt = Dtable(*DTABLE.unpack_from(buf, 192))
        idt = Dtable(*DTABLE.unpack_from(buf, 208))
        c = CONTROL.unpack_from(buf, 224)
        return cls(**segs, gdt=gdt, idt=idt, cr0=c[0], cr2=c[1], cr3=c[2], cr4=c[3],
                   cr8=c[4], efer=c[5], apic_base=c[6], interrupt_bitmap=tuple(c[7:]))

    def pack(self) -> bytes:
        buf = bytearray(SIZEOF_SREGS)
        for i, n in enumerate(SEGMENT_NAMES):
            getattr(self, n).pack_into(buf, 24 * i)
        DTABLE.pack_into(buf, 192, self.gdt.base, self.gdt.limit)
        DTABLE.pack_into(buf, 208, self.idt.base, self.idt.limit)
        CONTROL.pack_into(buf, 224, self.cr0, self.cr2, self.cr3, self.cr4, self.cr8,
                          self.efer, self.apic_base, *self.interrupt_bitmap)
        return bytes(buf)

    @property
    def long_mode(self) -> bool:
        """EFER.LMA: the CPU is in IA-32e mode (CS.L then says 64-bit or compatibility)."""
        return bool(self.efer & EFER_LMA)

    @property
    def paging(self) -> bool:
        return bool(self.cr0 & CR0_PG)

    def linear(self, rip: int) -> int:
        """The linear address of CS:RIP (CS.base is ignored in 64-bit mode)."""
        if self.long_mode and self.cs.l:
            return rip
        return (self.cs.base + rip) & 0xFFFFFFFF


# --- struct kvm_userspace_memory_region (32 bytes) ----------------------------------
MEMORY_REGION = struct.Struct("<IIQQQ")  # slot, flags, guest_phys_addr, memory_size, userspace_addr

# --- struct kvm_translation (24 bytes) ----------------------------------------------
TRANSLATION = struct.Struct("<QQBBB5x")  # linear_address, physical_address, valid, writeable, usermode

# --- struct kvm_cpuid2 header (8 bytes) + nent × struct kvm_cpuid_entry2 (40 bytes) --
CPUID2_HEADER = struct.Struct("<II")  # nent, padding
SIZEOF_CPUID_ENTRY2 = 40

# --- struct kvm_enable_cap (104 bytes) ------------------------------------------------
ENABLE_CAP = struct.Struct("<II4Q64x")  # cap, flags, args[4], pad[64]

# --- struct kvm_signal_mask: __u32 len, then len bytes of sigset_t -----------------
SIGNAL_MASK = struct.Struct("<IQ")  # len = 8 (the kernel's sigset_t on x86-64), the set

# --- kvm_run exit-union members (offsets from the start of kvm_run) ----------------
RUN_EXIT_REASON = struct.Struct("<I")  # offset 8
RUN_IO = struct.Struct("<BBHIQ")  # 32: direction, size, port, count, data_offset
RUN_MMIO = struct.Struct("<Q8sIB")  # 32: phys_addr, data[8], len, is_write
RUN_HYPERCALL = struct.Struct("<Q6QQI")  # 32: nr, args[6], ret, longmode
RUN_INTERNAL = struct.Struct("<II16Q")  # 32: suberror, ndata, data[16]
RUN_FAIL_ENTRY = struct.Struct("<QI")  # 32: hardware_entry_failure_reason, cpu
RUN_HW = struct.Struct("<Q")  # 32: hardware_exit_reason
RUN_EX = struct.Struct("<II")  # 32: exception, error_code
RUN_SYSTEM_EVENT = struct.Struct("<II")  # 32: type, ndata
RUN_MSR = struct.Struct("<B7xIIQ")  # 32: error, pad, reason, index, data
RUN_UNION = 32
RUN_MMIO_DATA = 40
