"""Intel EPT: the EPTP, EPT entries, the walk, violations and misconfigurations.

With EPT on, every guest-physical address (GPA) the guest uses is translated
by the CPU through a second set of page tables that KVM owns, rooted at the
VMCS field ``EPT_POINTER`` (encoding 0x201A). This module is that translation
as data, checked against the Intel SDM (Vol. 3C, "VMX Support for Address
Translation" → "The Extended Page Table Mechanism (EPT)" and "EPT-Induced VM
Exits"; cited by title, numbers move between editions) and Linux 6.1
(``arch/x86/include/asm/vmx.h``, ``arch/x86/kvm/vmx/vmx.c``,
``arch/x86/kvm/mmu/{spte.c,spte.h,tdp_mmu.c,mmu.c}``):

* :class:`Eptp` — the EPTP fields; :func:`construct_eptp` is KVM's function;
* :class:`EptTables` — a builder that writes EPT tables into host memory;
* :func:`walk` — the CPU's walk: it returns a :class:`Walk` whose ``.fault`` is
  ``None``, an :class:`EptViolation` (exit reason 48, KVM's
  ``handle_ept_violation`` → ``kvm_mmu_page_fault``) or an
  :class:`EptMisconfig` (exit reason 49, ``handle_ept_misconfig``, which KVM
  provokes on purpose for MMIO);
* :class:`Tdp` / :func:`tdp_page_fault` — KVM's lazy population
  (``kvm_tdp_page_fault`` → ``direct_page_fault`` → ``kvm_tdp_mmu_map``), and
  :func:`guest_touches`, the exits a list of guest accesses causes.

The memory handed to :func:`walk` is *host-physical* memory (a
:class:`vbook.memory.GuestMemory` used as the host's RAM). Pure, deterministic,
stdlib only; a walk reads at most one entry per level and never prints.

Not modelled: mode-based execute control (entry bit 10, qualification bit 6),
#VE and "suppress #VE" (entry bit 63), sub-page write permissions, the
"advanced VM-exit information" qualification bits 9–11, shadow-stack bits,
the EPT paging-write/verify-guest-paging bits of newer CPUs, the TLB and
paging-structure caches, and of KVM's huge-page choice (``kvm_mmu_hugepage_adjust``)
everything but the memslot's shape: :class:`Tdp` with ``hugepages=True`` maps
2 MiB pages where :func:`max_mapping_level` allows, never 1 GiB, and has no
dirty logging, NX-huge-page workaround or MTRR limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

from vbook.errors import MemoryAccessError, PagingError
from vbook.memory import GuestMemory
from vbook.models.bits import genmask, size_name
from vbook.models.vmx import ept_violation_qualification
from vbook.trace import TraceRecorder

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
ENTRY_SIZE = 8
ENTRIES_PER_TABLE = 512
#: exit reasons (arch/x86/include/uapi/asm/vmx.h, Linux 6.1)
EXIT_REASON_EPT_VIOLATION = 48
EXIT_REASON_EPT_MISCONFIG = 49
#: a typical MAXPHYADDR of an Intel server (CPUID 0x80000008 EAX[7:0]); pass the host's
DEFAULT_MAXPHYADDR = 46

LEVEL_NAMES = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
#: page size a leaf at each level maps (bit 7 in a PDPTE → 1 GiB, in a PDE → 2 MiB)
LEVEL_PAGE_SIZE = {1: 1 << 12, 2: 1 << 21, 3: 1 << 30}
_ACCESS_BIT = {"r": 1, "w": 2, "x": 4}
_ACCESS_NAME = {"r": "read", "w": "write", "x": "fetch"}


# --- constants, with their source ---------------------------------------------

class VmxEptp(IntEnum):
    """``VMX_EPTP_*`` — arch/x86/include/asm/vmx.h (Linux 6.1); SDM "Extended-Page-Table Pointer"."""

    MT_UC = 0x0
    MT_WB = 0x6
    MT_MASK = 0x7
    PWL_4 = 0x18
    PWL_5 = 0x20
    PWL_MASK = 0x38
    AD_ENABLE_BIT = 1 << 6


class VmxEpt(IntFlag):
    """Bits of an EPT entry: ``VMX_EPT_*`` — arch/x86/include/asm/vmx.h (Linux 6.1).

    ``LARGE_PAGE`` (bit 7) has no VMX_EPT_ name in Linux (KVM uses the generic
    ``PT_PAGE_SIZE_MASK``, mmu.h); ``USER_EXECUTE`` (bit 10, with mode-based
    execute control) is from the SDM only and is not modelled by :func:`walk`.
    """

    READABLE_MASK = 0x1
    WRITABLE_MASK = 0x2
    EXECUTABLE_MASK = 0x4
    IPAT_BIT = 1 << 6
    LARGE_PAGE = 1 << 7
    ACCESS_BIT = 1 << 8
    DIRTY_BIT = 1 << 9
    USER_EXECUTE = 1 << 10


#: ``VMX_EPT_RWX_MASK`` (vmx.h): READABLE | WRITABLE | EXECUTABLE
VMX_EPT_RWX_MASK = 0x7
#: ``VMX_EPT_MT_EPTE_SHIFT`` / ``VMX_EPT_MT_MASK`` (vmx.h): memory type of a leaf, bits 5:3
VMX_EPT_MT_EPTE_SHIFT = 3
VMX_EPT_MT_MASK = 7 << VMX_EPT_MT_EPTE_SHIFT
#: ``VMX_EPT_MISCONFIG_WX_VALUE`` (vmx.h) = WRITABLE | EXECUTABLE: the RWX value KVM
#: puts in MMIO SPTEs (``kvm_mmu_set_ept_masks`` → ``kvm_mmu_set_mmio_spte_mask(
#: VMX_EPT_MISCONFIG_WX_VALUE, VMX_EPT_RWX_MASK, 0)``, mmu/spte.c)
VMX_EPT_MISCONFIG_WX_VALUE = 0x6
#: ``SPTE_MMU_PRESENT_MASK`` (mmu/spte.h, BIT_ULL(11)): KVM's own "present" mark, an
#: ignored bit to the CPU
SPTE_MMU_PRESENT_MASK = 1 << 11


class EptCap(IntFlag):
    """Bits of MSR ``IA32_VMX_EPT_VPID_CAP`` that the walk cares about: ``VMX_<name>`` in
    arch/x86/include/asm/vmx.h (Linux 6.1). ``EPT_EXECUTE_ONLY_BIT`` is what
    :func:`walk`'s ``execute_only`` stands for."""

    EPT_EXECUTE_ONLY_BIT = 1 << 0
    EPT_PAGE_WALK_4_BIT = 1 << 6
    EPT_PAGE_WALK_5_BIT = 1 << 7
    EPTP_UC_BIT = 1 << 8
    EPTP_WB_BIT = 1 << 14
    EPT_2MB_PAGE_BIT = 1 << 16
    EPT_1GB_PAGE_BIT = 1 << 17
    EPT_INVEPT_BIT = 1 << 20
    EPT_AD_BIT = 1 << 21


class MemType(IntEnum):
    """EPT memory types (SDM "Memory Type Used for Accessing EPT Paging Structures" /
    "EPT and Memory Typing"); 2, 3 and 7 are reserved: a leaf with one is a misconfiguration."""

    UC = 0
    WC = 1
    WT = 4
    WP = 5
    WB = 6


RESERVED_MEMTYPES = frozenset({2, 3, 7})


def _rwx_str(rwx: int) -> str:
    return "".join(c if rwx & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))


# --- errors (bad input, not CPU events) ------------------------------------------

class EptError(PagingError):
    """EPT input the model cannot accept (a bad EPTP, GPA, mapping or size)."""


class EptWalkError(EptError):
    """The walk was sent outside host memory by an entry (or by the EPTP's root)."""

    def __init__(self, level: int, entry_addr: int, message: str):
        self.level, self.entry_addr = level, entry_addr
        super().__init__(message)


# --- EPTP ----------------------------------------------------------------------

@dataclass(frozen=True)
class Eptp:
    """The EPTP: memory type (bits 2:0), page-walk length − 1 (5:3), A/D enable (6),
    PML4/PML5 address (N−1:12). ``levels`` is the walk length itself (4 or 5)."""

    pml4: int
    memtype: int = MemType.WB
    levels: int = 4
    ad: bool = False

    def __post_init__(self) -> None:
        if self.memtype not in (MemType.UC, MemType.WB):
            raise EptError(f"EPTP memory type must be 0 (UC) or 6 (WB), got {self.memtype}")
        if self.levels not in (4, 5):
            raise EptError(f"EPTP page-walk length must be 4 or 5 levels, got {self.levels}")
        if self.pml4 % PAGE_SIZE or not 0 <= self.pml4 < 1 << 52:
            raise EptError(f"EPTP root {self.pml4:#x} is not a 4 KiB-aligned physical address")

    def encode(self) -> int:
        return self.pml4 | (self.levels - 1) << 3 | (VmxEptp.AD_ENABLE_BIT if self.ad else 0) | self.memtype

    def __int__(self) -> int:
        return self.encode()

    @classmethod
    def decode(cls, value: int, *, maxphyaddr: int = DEFAULT_MAXPHYADDR) -> Eptp:
        """The fields of an EPTP; a value VM entry would reject raises :class:`EptError`
        (reserved memory type or walk length, bits 11:7 or bits 63:MAXPHYADDR set)."""
        if not 0 <= value < 1 << 64:
            raise EptError(f"EPTP {value!r} is not a 64-bit value")
        if value & (genmask(11, 7) | genmask(63, maxphyaddr)):
            raise EptError(f"EPTP {value:#x} has reserved bits set "
                           f"({value & (genmask(11, 7) | genmask(63, maxphyaddr)):#x})")
        pwl = (value & VmxEptp.PWL_MASK) >> 3
        if pwl not in (3, 4):
            raise EptError(f"EPTP {value:#x}: page-walk length - 1 is {pwl}; only 3 and 4 are defined")
        return cls(pml4=value & genmask(maxphyaddr - 1, 12), memtype=value & VmxEptp.MT_MASK,
                   levels=pwl + 1, ad=bool(value & VmxEptp.AD_ENABLE_BIT))

    def __repr__(self) -> str:
        mt = MemType(self.memtype).name
        return f"Eptp({self.encode():#x}: pml4={self.pml4:#x}, {mt}, {self.levels}-level, ad={self.ad})"


def construct_eptp(root_hpa: int, root_level: int = 4, *, enable_ept_ad_bits: bool = True,
                   is_guest_mode: bool = False, nested_ept_ad_enabled: bool = False) -> int:
    """KVM's ``construct_eptp`` (arch/x86/kvm/vmx/vmx.c, Linux 6.1)::

        eptp = VMX_EPTP_MT_WB;
        eptp |= (root_level == 5) ? VMX_EPTP_PWL_5 : VMX_EPTP_PWL_4;
        if (enable_ept_ad_bits && (!is_guest_mode(vcpu) || nested_ept_ad_enabled(vcpu)))
            eptp |= VMX_EPTP_AD_ENABLE_BIT;
        eptp |= root_hpa;
    """
    eptp = VmxEptp.MT_WB | (VmxEptp.PWL_5 if root_level == 5 else VmxEptp.PWL_4)
    if enable_ept_ad_bits and (not is_guest_mode or nested_ept_ad_enabled):
        eptp |= VmxEptp.AD_ENABLE_BIT
    return int(eptp | root_hpa)


def _as_eptp(eptp: Eptp | int, maxphyaddr: int) -> Eptp:
    return eptp if isinstance(eptp, Eptp) else Eptp.decode(eptp, maxphyaddr=maxphyaddr)


# --- the walk's result -------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One EPT entry read: ``level`` 5..1 (PML5E … PTE), where it was, what it held."""

    level: int
    entry_addr: int
    entry: int

    @property
    def name(self) -> str:
        return LEVEL_NAMES[self.level]

    @property
    def rwx(self) -> int:
        return self.entry & VMX_EPT_RWX_MASK

    def __repr__(self) -> str:
        return f"Step({self.name} @ {self.entry_addr:#x} = {self.entry:#018x})"


@dataclass(frozen=True)
class EptViolation:
    """An EPT violation (VM exit 48). KVM: ``handle_ept_violation`` (vmx.c) turns
    ``qualification`` into a page-fault error code and calls ``kvm_mmu_page_fault``.
    The GPA is in VMCS ``GUEST_PHYSICAL_ADDRESS``; ``level`` is where the walk stopped
    (the not-present entry, or the leaf when the rights were too small)."""

    gpa: int
    qualification: int
    level: int
    entry_addr: int
    entry: int
    reason: str
    exit_reason = EXIT_REASON_EPT_VIOLATION
    handler = "handle_ept_violation"

    @property
    def rwx(self) -> int:
        """Qualification bits 5:3: what the walk's entries allowed (ANDed); 0 = not present."""
        return self.qualification >> 3 & 7

    def __repr__(self) -> str:
        return (f"EptViolation(gpa={self.gpa:#x}, qualification={self.qualification:#x}, "
                f"{LEVEL_NAMES[self.level]}: {self.reason})")


@dataclass(frozen=True)
class EptMisconfig:
    """An EPT misconfiguration (VM exit 49; no exit qualification). KVM:
    ``handle_ept_misconfig`` (vmx.c) → ``kvm_mmu_page_fault(gpa, PFERR_RSVD_MASK)`` →
    ``handle_mmio_page_fault``: KVM marks MMIO GPAs with W|X, no R SPTEs
    (``VMX_EPT_MISCONFIG_WX_VALUE``) so that MMIO exits here, fast."""

    gpa: int
    level: int
    entry_addr: int
    entry: int
    reason: str
    exit_reason = EXIT_REASON_EPT_MISCONFIG
    handler = "handle_ept_misconfig"

    def __repr__(self) -> str:
        return (f"EptMisconfig(gpa={self.gpa:#x}, {LEVEL_NAMES[self.level]} @ {self.entry_addr:#x} "
                f"= {self.entry:#x}: {self.reason})")


@dataclass(frozen=True)
class Walk:
    """The result of :func:`walk`: every entry read in ``steps``; ``address`` is the
    HPA (None on a fault); ``page_size`` the size the leaf maps; ``rwx`` the rights
    ANDed over the entries read; ``memtype`` / ``ipat`` of the leaf."""

    gpa: int
    access: str
    eptp: int
    steps: tuple[Step, ...]
    address: int | None
    page_size: int | None
    fault: EptViolation | EptMisconfig | None
    rwx: int
    memtype: int | None = None
    ipat: bool = False

    @property
    def ok(self) -> bool:
        return self.fault is None

    def table(self, space: str = "HPA") -> str:
        """A plain-text rendering: one line per entry, then the outcome. ``space`` names the
        address space the tables are in and the walk's result: "HPA" for KVM's own EPT,
        "L1 GPA" for an EPT12 that L1 wrote in its memory."""
        lines = [f"EPT walk of GPA {self.gpa:#x} ({_ACCESS_NAME[self.access]}), EPTP {self.eptp:#x}",
                 f"{'entry':<6} {'index':>5}  {'at ' + space:>14}  {'value':>18}  rwx"]
        for s in self.steps:
            idx = (self.gpa >> (PAGE_SHIFT + 9 * (s.level - 1))) & 511
            lines.append(f"{s.name:<6} {idx:>5}  {s.entry_addr:>#14x}  {s.entry:>#18x}  {_rwx_str(s.rwx)}")
        if self.fault is None:
            lines.append(f"-> {space} {self.address:#x} ({size_name(self.page_size)} page, rights "
                         f"{_rwx_str(self.rwx)}, memtype {self.memtype})")
        elif isinstance(self.fault, EptViolation):
            lines.append(f"-> EPT_VIOLATION (exit 48), qualification {self.fault.qualification:#x}: "
                         f"{self.fault.reason}")
        else:
            lines.append(f"-> EPT_MISCONFIG (exit 49) at {LEVEL_NAMES[self.fault.level]}: "
                         f"{self.fault.reason}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        if self.fault is None:
            out = f"-> {self.address:#x} ({size_name(self.page_size)})"
        else:
            out = f"-> {self.fault!r}"
        return f"Walk(gpa={self.gpa:#x}, {self.access!r}, {len(self.steps)} steps {out})"


# --- the walk ---------------------------------------------------------------------

def misconfig_reason(entry: int, level: int, *, leaf: bool, maxphyaddr: int = DEFAULT_MAXPHYADDR,
                     execute_only: bool = True) -> str | None:
    """Why a present EPT entry is a misconfiguration (SDM "EPT Misconfigurations"), or None.

    ``leaf`` says the entry is the last one of the walk (a PTE, or a PDE/PDPTE with
    bit 7). Checked: bits 2:0 = 010b or 110b (write without read); 100b
    (execute-only) without the CPU's ``IA32_VMX_EPT_VPID_CAP`` bit 0; reserved bits
    (address bits 51:MAXPHYADDR, bits 7:3 of a non-leaf, bit 7 of a PML4E/PML5E,
    the address bits below a large page's size); a leaf memory type 2, 3 or 7.
    """
    rwx = entry & VMX_EPT_RWX_MASK
    if rwx in (0b010, 0b110):
        return f"bits 2:0 = {rwx:03b}b: write{'/execute' if rwx & 4 else ''} without read"
    if rwx == 0b100 and not execute_only:
        return "bits 2:0 = 100b: execute-only, which this CPU does not support"
    high = entry & genmask(51, maxphyaddr)
    if high:
        return f"reserved bits above MAXPHYADDR={maxphyaddr} set ({high:#x})"
    if level >= 4 and entry & VmxEpt.LARGE_PAGE:
        return f"bit 7 (large page) is reserved in a {LEVEL_NAMES[level]}"
    if not leaf:
        if entry & genmask(7, 3):
            return f"bits 7:3 are reserved in a non-leaf {LEVEL_NAMES[level]} ({entry & genmask(7, 3):#x})"
        return None
    if level > 1:
        low = entry & genmask(LEVEL_PAGE_SIZE[level].bit_length() - 2, 12)
        if low:
            return (f"address bits below the {size_name(LEVEL_PAGE_SIZE[level])} page "
                    f"are reserved ({low:#x})")
    mt = (entry & VMX_EPT_MT_MASK) >> VMX_EPT_MT_EPTE_SHIFT
    if mt in RESERVED_MEMTYPES:
        return f"memory type {mt} is reserved"
    return None


def walk(mem: GuestMemory, eptp: Eptp | int, gpa: int, access: str = "r", *,
         trace: TraceRecorder | None = None, maxphyaddr: int = DEFAULT_MAXPHYADDR,
         execute_only: bool = True, gva_valid: bool = True, translated: bool = True,
         nmi_unblocking: bool = False, update_ad: bool = False) -> Walk:
    """Translate ``gpa`` through the EPT at ``eptp`` for a data read ("r"), write ("w")
    or instruction fetch ("x"), as the CPU does.

    One entry is read per level, from the PML4 (PML5) down. The walk stops at a
    not-present entry (bits 2:0 = 000b) → :class:`EptViolation` with qualification
    bits 5:3 = 0, or at a misconfigured present entry → :class:`EptMisconfig`
    (:func:`misconfig_reason`). If the walk reaches a leaf, the rights are ANDed over
    every entry read; an access they do not allow → :class:`EptViolation` whose bits
    5:3 are that AND. ``gva_valid`` / ``translated`` are qualification bits 7 and 8
    (a guest access to a linear address's final translation by default; with
    ``gva_valid=False`` bit 8 is left 0); ``nmi_unblocking`` is bit 12. With A/D
    enabled in the EPTP, the CPU's accesses to *guest* paging structures count as
    writes: pass ``access="w"`` for those. ``update_ad`` sets the accessed flags
    (and the leaf's dirty flag on a write) of a successful walk when the EPTP enables
    A/D; otherwise memory is only read. An entry or root outside ``mem`` raises
    :class:`EptWalkError` naming the level and entry address.
    """
    if access not in _ACCESS_BIT:
        raise EptError(f"access must be 'r', 'w' or 'x', got {access!r}")
    ep = _as_eptp(eptp, maxphyaddr)
    width = PAGE_SHIFT + 9 * ep.levels
    if not 0 <= gpa < 1 << width:
        raise EptError(f"GPA {gpa:#x} is outside the {width}-bit space of a {ep.levels}-level EPT")
    addr_mask = genmask(maxphyaddr - 1, 12)
    table = ep.pml4
    steps: list[Step] = []
    rwx_and = VMX_EPT_RWX_MASK

    def fault_violation(level: int, s: Step, rights: int, reason: str) -> EptViolation:
        q = ept_violation_qualification(access, rights, gva_valid, translated and gva_valid)
        return EptViolation(gpa, q | (1 << 12 if nmi_unblocking else 0), level, s.entry_addr,
                            s.entry, reason)

    fault: EptViolation | EptMisconfig | None = None
    leaf: Step | None = None
    for level in range(ep.levels, 0, -1):
        shift = PAGE_SHIFT + 9 * (level - 1)
        entry_addr = table + ((gpa >> shift) & 511) * ENTRY_SIZE
        try:
            entry = mem.read_u64(entry_addr)
        except MemoryAccessError:
            raise EptWalkError(level, entry_addr,
                               f"EPT {LEVEL_NAMES[level]} of GPA {gpa:#x} at HPA {entry_addr:#x} "
                               f"is outside host memory [0, {mem.size:#x})") from None
        s = Step(level, entry_addr, entry)
        steps.append(s)
        if trace is not None:
            trace.emit("guest", "ept_step", f"EPT {s.name} {entry:#x}", level=level,
                       entry_addr=entry_addr, entry=entry, gpa=gpa)
        if entry & VMX_EPT_RWX_MASK == 0:
            fault = fault_violation(level, s, 0, f"{s.name} not present")
            break
        is_leaf = level == 1 or (level in (2, 3) and bool(entry & VmxEpt.LARGE_PAGE))
        why = misconfig_reason(entry, level, leaf=is_leaf, maxphyaddr=maxphyaddr,
                               execute_only=execute_only)
        if why is not None:
            fault = EptMisconfig(gpa, level, entry_addr, entry, why)
            break
        rwx_and &= entry
        if is_leaf:
            leaf = s
            break
        table = entry & addr_mask

    address = page_size = memtype = None
    ipat = False
    if fault is None and leaf is not None:
        if not rwx_and & _ACCESS_BIT[access]:
            fault = fault_violation(leaf.level, leaf, rwx_and,
                                    f"{_ACCESS_NAME[access]} not allowed (rights {_rwx_str(rwx_and)})")
        else:
            page_size = LEVEL_PAGE_SIZE[leaf.level]
            address = (leaf.entry & addr_mask & ~(page_size - 1)) | (gpa & (page_size - 1))
            memtype = (leaf.entry & VMX_EPT_MT_MASK) >> VMX_EPT_MT_EPTE_SHIFT
            ipat = bool(leaf.entry & VmxEpt.IPAT_BIT)
            if update_ad and ep.ad:
                for s in steps:
                    new = s.entry | VmxEpt.ACCESS_BIT
                    if s is leaf and access == "w":
                        new |= VmxEpt.DIRTY_BIT
                    if new != s.entry:
                        mem.write_u64(s.entry_addr, int(new))
    if trace is not None:
        if fault is None:
            trace.emit("guest", "ept_translate", f"GPA {gpa:#x} -> HPA {address:#x}", gpa=gpa,
                       hpa=address, page_size=page_size)
        elif isinstance(fault, EptViolation):
            trace.emit("kvm", "vmexit", "EXIT_REASON_EPT_VIOLATION", exit_reason=EXIT_REASON_EPT_VIOLATION,
                       gpa=gpa, qualification=fault.qualification, level=fault.level,
                       handler=fault.handler)
        else:
            trace.emit("kvm", "vmexit", "EXIT_REASON_EPT_MISCONFIG", exit_reason=EXIT_REASON_EPT_MISCONFIG,
                       gpa=gpa, level=fault.level, entry=fault.entry, reason=fault.reason,
                       handler=fault.handler)
    rights = fault.rwx if isinstance(fault, EptViolation) else rwx_and if fault is None else 0
    return Walk(gpa, access, ep.encode(), tuple(steps), address, page_size, fault, rights, memtype, ipat)


# --- a builder -----------------------------------------------------------------------

class EptTables:
    """EPT tables written into host memory ``mem``, tables allocated one 4 KiB page
    at a time from ``alloc_base`` up to ``alloc_limit`` (default: end of memory).

    Non-leaf entries are written as KVM's ``make_nonleaf_spte`` (mmu/spte.c) writes
    them on EPT: next table | RWX | ``SPTE_MMU_PRESENT_MASK`` (bit 11, ignored by the
    CPU) | accessed (if A/D is on).
    """

    def __init__(self, mem: GuestMemory, alloc_base: int, *, levels: int = 4, ad: bool = True,
                 alloc_limit: int | None = None, maxphyaddr: int = DEFAULT_MAXPHYADDR):
        if alloc_base % PAGE_SIZE or alloc_base < 0:
            raise EptError(f"alloc_base {alloc_base:#x} is not 4 KiB-aligned")
        if levels not in (4, 5):
            raise EptError(f"an EPT has 4 or 5 levels, not {levels}")
        self.mem, self.levels, self.ad, self.maxphyaddr = mem, levels, ad, maxphyaddr
        self.alloc_limit = mem.size if alloc_limit is None else alloc_limit
        self.next_free = alloc_base
        self.tables: list[int] = []
        self.root = self._alloc()

    def __repr__(self) -> str:
        return f"EptTables(root={self.root:#x}, {self.levels}-level, {len(self.tables)} tables)"

    def _alloc(self) -> int:
        addr = self.next_free
        if addr + PAGE_SIZE > self.alloc_limit:
            raise EptError(f"no room for another EPT table: next page {addr:#x} passes the "
                           f"allocation limit {self.alloc_limit:#x}")
        self.mem.write(addr, bytes(PAGE_SIZE))
        self.next_free += PAGE_SIZE
        self.tables.append(addr)
        return addr

    @property
    def eptp(self) -> int:
        """The EPTP as KVM's ``construct_eptp`` builds it (WB, walk length, A/D, root)."""
        return construct_eptp(self.root, self.levels, enable_ept_ad_bits=self.ad)

    def entry_addr(self, gpa: int, level: int, *, create: bool = False) -> int:
        """The HPA of the entry at ``level`` (5..1) that translates ``gpa``."""
        if not 1 <= level <= self.levels:
            raise EptError(f"level must be 1..{self.levels}, got {level}")
        if not 0 <= gpa < 1 << (PAGE_SHIFT + 9 * self.levels):
            raise EptError(f"GPA {gpa:#x} is outside a {self.levels}-level EPT")
        table = self.root
        for lv in range(self.levels, level, -1):
            ea = table + ((gpa >> (PAGE_SHIFT + 9 * (lv - 1))) & 511) * ENTRY_SIZE
            e = self.mem.read_u64(ea)
            if e & VMX_EPT_RWX_MASK == 0:
                if not create:
                    raise EptError(f"GPA {gpa:#x}: no {LEVEL_NAMES[lv]} (not present at {ea:#x})")
                child = self._alloc()
                e = (child | VMX_EPT_RWX_MASK | SPTE_MMU_PRESENT_MASK
                     | (VmxEpt.ACCESS_BIT if self.ad else 0))
                self.mem.write_u64(ea, int(e))
            elif lv in (2, 3) and e & VmxEpt.LARGE_PAGE:
                raise EptError(f"GPA {gpa:#x} is mapped by a {size_name(LEVEL_PAGE_SIZE[lv])} "
                               f"{LEVEL_NAMES[lv]} at {ea:#x}; no lower table")
            table = e & genmask(self.maxphyaddr - 1, 12)
        return table + ((gpa >> (PAGE_SHIFT + 9 * (level - 1))) & 511) * ENTRY_SIZE

    def get_entry(self, gpa: int, level: int) -> int:
        return self.mem.read_u64(self.entry_addr(gpa, level))

    def set_entry(self, gpa: int, level: int, value: int) -> int:
        """Write a raw entry (creating the tables above it); returns its HPA."""
        ea = self.entry_addr(gpa, level, create=True)
        self.mem.write_u64(ea, value)
        return ea

    def map(self, gpa: int, hpa: int, size: int, rwx: int = 7, memtype: int = MemType.WB, *,
            page_size: int = PAGE_SIZE, ipat: bool = False) -> None:
        """Map [gpa, gpa+size) to [hpa, hpa+size) with ``page_size`` pages (4 KiB,
        2 MiB or 1 GiB) whose leaves carry ``rwx`` and ``memtype`` (any value is
        written as given, so misconfigured leaves can be built on purpose)."""
        level = {v: k for k, v in LEVEL_PAGE_SIZE.items()}.get(page_size)
        if level is None:
            raise EptError(f"page_size must be 4 KiB, 2 MiB or 1 GiB, got {page_size:#x}")
        if size <= 0 or size % page_size or gpa % page_size or hpa % page_size:
            raise EptError(f"map({gpa:#x}, {hpa:#x}, {size:#x}): GPA, HPA and size must be "
                           f"positive multiples of the {size_name(page_size)} page")
        if not 0 <= rwx <= 7 or not 0 <= memtype <= 7:
            raise EptError(f"rwx and memtype are 3-bit values, got {rwx}, {memtype}")
        for off in range(0, size, page_size):
            leaf = ((hpa + off) | rwx | memtype << VMX_EPT_MT_EPTE_SHIFT
                    | (VmxEpt.IPAT_BIT if ipat else 0) | (VmxEpt.LARGE_PAGE if level > 1 else 0))
            self.set_entry(gpa + off, level, int(leaf))


# --- KVM's lazy population (the TDP MMU) ---------------------------------------------

class RetPf(IntEnum):
    """``RET_PF_*`` — arch/x86/kvm/mmu/mmu_internal.h (Linux 6.1)."""

    CONTINUE = 0
    RETRY = 1
    EMULATE = 2
    INVALID = 3
    FIXED = 4
    SPURIOUS = 5


@dataclass(frozen=True)
class Memslot:
    """A KVM memslot: ``npages`` guest frames from ``base_gfn``, backed (in this
    model) by contiguous host frames from ``host_pfn`` (KVM finds each host pfn
    through the slot's ``userspace_addr`` and get_user_pages)."""

    base_gfn: int
    npages: int
    host_pfn: int

    @classmethod
    def of(cls, gpa: int, size: int, hpa: int) -> Memslot:
        if gpa % PAGE_SIZE or size % PAGE_SIZE or hpa % PAGE_SIZE or size <= 0:
            raise EptError(f"memslot ({gpa:#x}, {size:#x}, {hpa:#x}) must be 4 KiB-aligned")
        return cls(gpa >> PAGE_SHIFT, size >> PAGE_SHIFT, hpa >> PAGE_SHIFT)

    def __contains__(self, gfn: int) -> bool:
        return self.base_gfn <= gfn < self.base_gfn + self.npages

    def __repr__(self) -> str:
        return (f"Memslot(gpa={self.base_gfn << PAGE_SHIFT:#x}, size={self.npages << PAGE_SHIFT:#x}, "
                f"hpa={self.host_pfn << PAGE_SHIFT:#x})")


def make_mmio_spte(gfn: int, gen: int = 0) -> int:
    """KVM's ``make_mmio_spte`` (mmu/spte.c) on VMX, for MMIO generation ``gen`` and
    a host without L1TF (``shadow_nonpresent_or_rsvd_mask`` = 0)::

        spte = generation_mmio_spte_mask(gen) | shadow_mmio_value | (access & 0)
             | gpa | shadow_nonpresent_or_rsvd_mask

    with ``shadow_mmio_value = VMX_EPT_MISCONFIG_WX_VALUE`` (W|X, no R) and the
    access mask 0 (``kvm_mmu_set_ept_masks``). Generation bits 0–7 go to SPTE bits
    3–10, bits 8–18 to bits 52–62 (mmu/spte.h ``MMIO_SPTE_GEN_*``).
    """
    gen_bits = (gen << 3) & genmask(10, 3) | (gen << (52 - 8)) & genmask(62, 52)
    return gen_bits | VMX_EPT_MISCONFIG_WX_VALUE | gfn << PAGE_SHIFT


@dataclass
class Tdp:
    """KVM's two-dimensional-paging MMU for one VM: its EPT tables, memslots and the
    vCPU stats the page-fault path counts (``pf_fixed``, ``pf_emulate``,
    ``pf_mmio_spte_created``, ``pf_spurious``: ``kvm_vcpu_stat`` in x86.c)."""

    tables: EptTables
    memslots: Sequence[Memslot]
    mmio_caching: bool = True
    #: the memslot's host memory is backed by 2 MiB pages (hugetlbfs / THP), no dirty
    #: logging, ``nx_huge_pages`` off: KVM may map 2 MiB EPT pages (:func:`max_mapping_level`)
    hugepages: bool = False
    pf_fixed: int = 0
    pf_emulate: int = 0
    pf_spurious: int = 0
    pf_mmio_spte_created: int = 0
    trace: TraceRecorder = field(default_factory=TraceRecorder)

    def __repr__(self) -> str:
        return (f"Tdp({len(self.memslots)} memslots, pf_fixed={self.pf_fixed}, "
                f"pf_emulate={self.pf_emulate}, pf_mmio_spte_created={self.pf_mmio_spte_created})")

    def gfn_to_memslot(self, gfn: int) -> Memslot | None:
        """``kvm_vcpu_gfn_to_memslot``: the slot holding ``gfn``, or None (MMIO)."""
        return next((s for s in self.memslots if gfn in s), None)

    def page_fault(self, gpa: int) -> RetPf:
        return tdp_page_fault(self, gpa)


def max_mapping_level(slot: Memslot | None, gfn: int, hugepages: bool) -> int:
    """The EPT level KVM maps ``gfn`` at: 2 (a 2 MiB page) when the host backs the memslot
    with 2 MiB pages (``hugepages``), the whole 2 MiB-aligned frame of ``gfn`` lies in the
    memslot, and guest and host frames are equally aligned — ``kvm_mmu_max_mapping_level``
    (host_pfn_mapping_level, the slot's ``lpage_info`` disallow counts set by
    ``kvm_alloc_memslot_metadata`` for a misaligned or partial frame), Linux 6.1
    arch/x86/kvm/mmu/mmu.c; else 1. 1 GiB pages are not modelled."""
    if not hugepages or slot is None:
        return 1
    first = gfn & ~511
    if first < slot.base_gfn or first + 512 > slot.base_gfn + slot.npages:
        return 1
    return 2 if (slot.base_gfn - slot.host_pfn) % 512 == 0 else 1


def tdp_page_fault(tdp: Tdp, gpa: int) -> RetPf:
    """KVM's ``kvm_tdp_page_fault`` → ``direct_page_fault`` for an EPT violation at
    ``gpa`` (mmu.c, tdp_mmu.c, Linux 6.1), with 4 KiB pages, or 2 MiB ones where
    :func:`max_mapping_level` allows (``fault->goal_level``):

    * ``kvm_vcpu_gfn_to_memslot``; a memslot → ``kvm_faultin_pfn`` gives the host
      pfn, ``kvm_tdp_mmu_map`` allocates missing tables and
      ``tdp_mmu_map_handle_target_level`` installs ``make_spte``'s leaf (RWX, WB,
      IPAT — ``vmx_get_mt_mask`` without non-coherent DMA) → ``RET_PF_FIXED``,
      ``pf_fixed++``; the guest re-executes the access;
    * no memslot (MMIO) → ``handle_abnormal_pfn``; with MMIO caching the leaf becomes
      ``make_mmio_spte`` (``pf_mmio_spte_created++``) and the result is
      ``RET_PF_EMULATE`` (``pf_emulate++``): KVM emulates the instruction, and the
      next access to the page is an EPT misconfiguration. Without MMIO caching
      nothing is installed and every access is a violation + emulation;
    * the SPTE already as wanted → ``RET_PF_SPURIOUS``.
    """
    t = tdp.tables
    gfn = gpa >> PAGE_SHIFT
    slot = tdp.gfn_to_memslot(gfn)
    tdp.trace.emit("kvm", "call", "kvm_tdp_page_fault", fn="kvm_tdp_page_fault", gpa=gpa,
                   memslot=slot is not None)
    if slot is None and not tdp.mmio_caching:
        ret = RetPf.EMULATE
    else:
        level = max_mapping_level(slot, gfn, tdp.hugepages)
        ea = t.entry_addr(gpa, level, create=True)
        if slot is None:
            new = make_mmio_spte(gfn)
        else:
            frame = gfn & ~((1 << (9 * (level - 1))) - 1)
            hpa = (slot.host_pfn + frame - slot.base_gfn) << PAGE_SHIFT
            new = (hpa | VMX_EPT_RWX_MASK | MemType.WB << VMX_EPT_MT_EPTE_SHIFT | VmxEpt.IPAT_BIT
                   | SPTE_MMU_PRESENT_MASK | (VmxEpt.ACCESS_BIT if t.ad else 0)
                   | (VmxEpt.LARGE_PAGE if level > 1 else 0))
        old = t.mem.read_u64(ea)
        if new == old:
            ret = RetPf.SPURIOUS
        else:
            t.mem.write_u64(ea, int(new))
            if slot is None:
                tdp.pf_mmio_spte_created += 1
                ret = RetPf.EMULATE
            else:
                ret = RetPf.FIXED
    if ret == RetPf.FIXED:
        tdp.pf_fixed += 1
    elif ret == RetPf.EMULATE:
        tdp.pf_emulate += 1
    elif ret == RetPf.SPURIOUS:
        tdp.pf_spurious += 1
    tdp.trace.emit("kvm", "return", f"RET_PF_{ret.name}", fn="kvm_tdp_page_fault", ret=ret.name, gpa=gpa)
    return ret


@dataclass(frozen=True)
class Touch:
    """What one guest access did: the VM exit it caused (None, "EPT_VIOLATION" or
    "EPT_MISCONFIG"), what KVM's fault path returned, and whether it ended in
    instruction emulation (MMIO → ``KVM_EXIT_MMIO`` unless an in-kernel device claims it)."""

    gpa: int
    access: str
    exit: str | None
    ret: str | None = None
    emulated: bool = False

    def __repr__(self) -> str:
        if self.exit is None:
            return f"Touch({self.gpa:#x} {self.access}: no exit)"
        tail = ", emulated" if self.emulated else ""
        return f"Touch({self.gpa:#x} {self.access}: {self.exit} -> RET_PF_{self.ret}{tail})"


@dataclass(frozen=True)
class Touches:
    """The exits of :func:`guest_touches` and the vCPU stats they left."""

    touches: tuple[Touch, ...]
    pf_fixed: int
    pf_emulate: int
    pf_mmio_spte_created: int

    @property
    def exits(self) -> list[str | None]:
        return [t.exit for t in self.touches]

    def __repr__(self) -> str:
        n = sum(t.exit is not None for t in self.touches)
        return (f"Touches({len(self.touches)} accesses, {n} exits, pf_fixed={self.pf_fixed}, "
                f"pf_mmio_spte_created={self.pf_mmio_spte_created}, pf_emulate={self.pf_emulate})")


def guest_touch(tdp: Tdp, gpa: int, access: str = "r") -> Touch:
    """One guest access under KVM: walk the EPT; an EPT violation goes to
    :func:`tdp_page_fault` (``handle_ept_violation`` → ``kvm_mmu_page_fault``), and
    after ``RET_PF_FIXED`` the guest re-executes the access, which now translates.
    A misconfiguration goes to ``handle_ept_misconfig`` → ``kvm_mmu_page_fault(gpa,
    PFERR_RSVD_MASK)`` → ``handle_mmio_page_fault`` → ``RET_PF_EMULATE``, and
    ``goto emulate`` skips ``kvm_mmu_do_page_fault``, the only place that counts
    ``pf_taken`` and ``pf_emulate``: a misconfiguration moves neither (it shows
    in ``insn_emulation`` and ``mmio_exits``)."""
    t = tdp.tables
    w = walk(t.mem, t.eptp, gpa, access, maxphyaddr=t.maxphyaddr, trace=tdp.trace)
    if w.fault is None:
        return Touch(gpa, access, None)
    if isinstance(w.fault, EptMisconfig):
        tdp.trace.emit("kvm", "call", "handle_mmio_page_fault", fn="handle_mmio_page_fault", gpa=gpa)
        return Touch(gpa, access, "EPT_MISCONFIG", RetPf.EMULATE.name, True)
    ret = tdp_page_fault(tdp, gpa)
    if ret in (RetPf.FIXED, RetPf.SPURIOUS):
        again = walk(t.mem, t.eptp, gpa, access, maxphyaddr=t.maxphyaddr, trace=tdp.trace)
        if again.fault is not None:  # not reachable with ACC_ALL mappings; kept honest
            raise EptError(f"GPA {gpa:#x} still faults after KVM fixed it: {again.fault!r}")
    return Touch(gpa, access, "EPT_VIOLATION", ret.name, ret == RetPf.EMULATE)


def guest_touches(gpas: Iterable[int | tuple[int, str]], memslots: Sequence[Memslot], *,
                  mem: GuestMemory, alloc_base: int, mmio_caching: bool = True, levels: int = 4,
                  hugepages: bool = False, trace: TraceRecorder | None = None) -> Touches:
    """The exits a guest causes touching ``gpas`` (each a GPA, or (GPA, access)) in
    a fresh VM whose EPT starts empty: one EPT violation for the first touch of each
    RAM page (``pf_fixed`` counts them), none after; for an MMIO GPA (outside every
    memslot) a violation on the first touch of its page (KVM installs the MMIO SPTE)
    and an EPT misconfiguration on every later one. With ``hugepages`` one violation
    maps a whole 2 MiB frame where :func:`max_mapping_level` allows."""
    tdp = Tdp(EptTables(mem, alloc_base, levels=levels), list(memslots), mmio_caching,
              hugepages=hugepages, trace=trace if trace is not None else TraceRecorder())
    out = []
    for g in gpas:
        gpa, access = (g, "r") if isinstance(g, int) else g
        out.append(guest_touch(tdp, gpa, access))
    return Touches(tuple(out), tdp.pf_fixed, tdp.pf_emulate, tdp.pf_mmio_spte_created)


__all__ = [
    "max_mapping_level", "DEFAULT_MAXPHYADDR", "EXIT_REASON_EPT_MISCONFIG", "EXIT_REASON_EPT_VIOLATION",
    "LEVEL_NAMES",
    "RESERVED_MEMTYPES", "SPTE_MMU_PRESENT_MASK", "VMX_EPT_MISCONFIG_WX_VALUE", "VMX_EPT_MT_EPTE_SHIFT",
    "VMX_EPT_MT_MASK", "VMX_EPT_RWX_MASK", "EptCap", "EptError", "EptMisconfig", "EptTables",
    "EptViolation", "EptWalkError", "Eptp", "MemType", "Memslot", "RetPf", "Step", "Tdp", "Touch",
    "Touches", "VmxEpt", "VmxEptp", "Walk", "construct_eptp", "guest_touch", "guest_touches",
    "make_mmio_spte", "misconfig_reason", "tdp_page_fault", "walk",
]
