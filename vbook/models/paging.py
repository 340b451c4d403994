"""x86-64 guest paging: page tables in GuestMemory, and the walk a CPU does (GVA -> GPA).

A guest with CR0.PG = 1, CR4.PAE = 1 and EFER.LME = 1 translates every linear
address through a tree of 4 KiB tables of 512 eight-byte entries. CR3 holds the
physical address of the top table; 9 bits of the address index each level and
the low 12 (21, 30) bits are the offset into a 4 KiB (2 MiB, 1 GiB) page::

    level  SDM name  Linux 6.1 (4-level / 5-level)   address bits
      5    PML5      -     / pgd  (PGDIR_SHIFT 48)   56:48   only with CR4.LA57
      4    PML4      pgd   / p4d  (P4D_SHIFT 39)     47:39
      3    PDPT      pud   (PUD_SHIFT 30)            38:30   PS=1 here: 1 GiB page
      2    PD        pmd   (PMD_SHIFT 21)            29:21   PS=1 here: 2 MiB page
      1    PT        pte   (PAGE_SHIFT 12)           20:12

:func:`walk` follows Intel SDM Vol. 3A §4.5 "4-Level Paging and 5-Level
Paging" (the entry formats), §4.6 "Access Rights" and §4.7 "Page-Fault
Exceptions" (the error code). :class:`PageTables` writes real tables into a
:class:`~vbook.memory.GuestMemory` from a bump allocator, the way a guest
kernel (or a VMM building a boot-time identity map) would.

What the walk checks, in the CPU's order:

1. the linear address is canonical (else #GP, raised as :class:`NonCanonicalAddress`
   — no page walk happens);
2. per level, top down: P = 0 stops with a not-present #PF (error code P = 0);
   a reserved bit in a present entry stops with #PF P|RSVD. Reserved here:
   bits 51:MAXPHYADDR of every entry, PS (bit 7) of a PML5E/PML4E, bit 63 (XD)
   when EFER.NXE = 0, bits 29:13 of a 1 GiB PDPTE and 20:13 of a 2 MiB PDE
   (bit 12 of a large leaf is PAT, bit 7 of a 4 KiB PTE is PAT);
3. after a full translation, the access rights of §4.6 over *all* levels
   (R/W and U/S are ANDed, XD is ORed): a user access needs U/S = 1 everywhere,
   a user write also R/W = 1 everywhere; a supervisor write needs R/W = 1
   everywhere only when CR0.WP = 1; a fetch faults on XD = 1 (with NXE);
   SMEP forbids supervisor fetches from user-mode addresses; SMAP forbids
   supervisor data accesses to user-mode addresses (modelled with
   RFLAGS.AC = 0, so SMAP always applies when CR4.SMAP = 1). A fault here has P = 1.

Error-code bits (§4.7, figure "Page-Fault Error Code"): W/R and U/S describe the
*access* (not the entry), on every kind of #PF; I/D is 1 only if the access was
an instruction fetch and either CR4.SMEP = 1 or (CR4.PAE = 1 and EFER.NXE = 1)
(the §4.7 wording of SDM editions with SMEP; in long mode PAE is 1, so: fetch
and (NXE or SMEP)). RSVD implies P ("reserved bits are not checked in a
paging-structure entry whose P flag is 0"). PK is never set: protection keys
(CR4.PKE/PKS) are not modelled, nor are implicit supervisor accesses,
RFLAGS.AC, PCID, CR4.PGE/TLBs, or the SGX bit.

Accessed/dirty flags (``set_ad=True``): after a *successful* translation A is
set in every entry used and, for a write, D in the leaf — written back to memory
(visible in ``mem.accesses`` and the trace). ``Walk.steps`` keep the entries as
read. This is what KVM's software walker does (arch/x86/kvm/mmu/paging_tmpl.h
``FNAME(walk_addr_generic)``: a not-present, reserved or permission fault goes to
``error`` before ``FNAME(update_accessed_dirty_bits)``); nothing is written on a
fault. Hardware may differ there and the model does not follow it: the SDM's
Interrupt-14 notes say the page-directory entry's A is set on a protection fault
(the PTE's is model specific), and unicorn 2.1.4 (QEMU's walker) was measured
setting A in every upper-level entry it read, for protection and not-present
faults alike, but never in the leaf.

A table the walk cannot read (outside the memory) is a malformed guest, not a
#PF here: :class:`TableOutsideMemory` names the level and the entry address.
(Real hardware reads whatever answers at that physical address; QEMU/unicorn
reads unbacked memory as all ones, which is a reserved-bit #PF.) A walk reads at
most ``levels`` entries, so self-referencing tables (legal on x86, e.g. a
recursive PML4 slot) terminate.

Cross-checked against unicorn's MMU (tests/test_paging_unicorn.py): translations,
#PF vs none and CR2 at CPL 0, with CR0.WP, CR4.SMEP, EFER.NXE and reserved bits
(unicorn has MAXPHYADDR 40); user mode and SMAP could not be cross-checked there.

Constants: arch/x86/include/asm/pgtable_types.h ``_PAGE_BIT_*``,
arch/x86/include/asm/trap_pf.h ``X86_PF_*``, arch/x86/include/asm/kvm_host.h
``PFERR_*_BIT`` (Linux 6.1). Pure, stdlib only, deterministic, never prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag
from typing import Any

from vbook.errors import PagingError
from vbook.memory import GuestMemory
from vbook.models.bits import genmask, size_name
from vbook.trace import TraceRecorder

__all__ = [
    "PteFlags", "PfErr", "Step", "PageFault", "Walk", "walk", "PageTables",
    "NonCanonicalAddress", "TableOutsideMemory", "MapError", "MisalignedMap", "OverlappingMap",
    "OutOfTableMemory", "LEVEL_NAMES", "PAGE_SIZE", "SIZE_2M", "SIZE_1G", "is_canonical",
]


class PteFlags(IntFlag):
    """Page-table entry bits — ``_PAGE_BIT_*`` of arch/x86/include/asm/pgtable_types.h (Linux 6.1).

    P ``_PAGE_BIT_PRESENT`` 0, RW ``_PAGE_BIT_RW`` 1, US ``_PAGE_BIT_USER`` 2,
    PWT ``_PAGE_BIT_PWT`` 3, PCD ``_PAGE_BIT_PCD`` 4, A ``_PAGE_BIT_ACCESSED`` 5,
    D ``_PAGE_BIT_DIRTY`` 6, PS ``_PAGE_BIT_PSE`` 7 (in a 4 KiB PTE the same bit is
    ``_PAGE_BIT_PAT``), G ``_PAGE_BIT_GLOBAL`` 8, NX ``_PAGE_BIT_NX`` 63 (SDM: XD).
    Bits 51:12 hold the address; bit 12 of a 2 MiB / 1 GiB leaf is ``_PAGE_BIT_PAT_LARGE``.
    """

    P = 1 << 0
    RW = 1 << 1
    US = 1 << 2
    PWT = 1 << 3
    PCD = 1 << 4
    A = 1 << 5
    D = 1 << 6
    PS = 1 << 7
    G = 1 << 8
    NX = 1 << 63


class PfErr(IntFlag):
    """#PF error code bits — Intel SDM Vol. 3A §4.7 figure "Page-Fault Error Code".

    Linux 6.1 arch/x86/include/asm/trap_pf.h ``X86_PF_*`` / KVM
    arch/x86/include/asm/kvm_host.h ``PFERR_*_BIT``:
    P ``X86_PF_PROT`` / ``PFERR_PRESENT_BIT`` 0 (0 = page not present),
    W ``X86_PF_WRITE`` / ``PFERR_WRITE_BIT`` 1, U ``X86_PF_USER`` / ``PFERR_USER_BIT`` 2,
    RSVD ``X86_PF_RSVD`` / ``PFERR_RSVD_BIT`` 3, I ``X86_PF_INSTR`` / ``PFERR_FETCH_BIT`` 4,
    PK ``X86_PF_PK`` / ``PFERR_PK_BIT`` 5, SGX ``X86_PF_SGX`` / ``PFERR_SGX_BIT`` 15.
    """

    P = 1 << 0
    W = 1 << 1
    U = 1 << 2
    RSVD = 1 << 3
    I = 1 << 4  # noqa: E741
    PK = 1 << 5
    SGX = 1 << 15


PAGE_SIZE = 1 << 12
SIZE_2M = 1 << 21
SIZE_1G = 1 << 30
#: level -> the SDM-style name used in steps and tables.
LEVEL_NAMES = {5: "pml5", 4: "pml4", 3: "pdpt", 2: "pd", 1: "pt"}
_LEAF_LEVEL = {PAGE_SIZE: 1, SIZE_2M: 2, SIZE_1G: 3}
_ACCESS_NAMES = {"r": "read", "w": "write", "x": "fetch"}
_FLAG_ORDER = (PteFlags.P, PteFlags.RW, PteFlags.US, PteFlags.PWT, PteFlags.PCD, PteFlags.A,
               PteFlags.D, PteFlags.PS, PteFlags.G, PteFlags.NX)


def _flag_names(value: int, flag_type: type[IntFlag]) -> str:
    names = [f.name for f in flag_type if value & f]
    return "|".join(names) if names else "0"


def entry_flags(entry: int) -> str:
    """The flag bits of an entry as text, e.g. ``"P RW US A"`` (``"-"`` for none)."""
    names = [f.name for f in _FLAG_ORDER if entry & f]
    return " ".join(names) if names else "-"


def _shift(level: int) -> int:
    return 12 + 9 * (level - 1)


# --- typed errors --------------------------------------------------------------


class NonCanonicalAddress(PagingError):
    """A linear address that is not canonical: the CPU raises #GP, and no walk happens."""

    def __init__(self, gva: int, levels: int):
        self.gva, self.levels = gva, levels
        top = 47 if levels == 4 else 56
        super().__init__(
            f"linear address {gva:#x} is not canonical for {levels}-level paging (bits 63:{top + 1} "
            f"must all equal bit {top}): that is #GP, not #PF")


class TableOutsideMemory(PagingError):
    """A paging-structure entry the walk must read lies outside guest memory."""

    def __init__(self, level: int, entry_addr: int, limit: int, parent: Step | None):
        self.level, self.entry_addr, self.limit, self.parent = level, entry_addr, limit, parent
        by = (f"the {LEVEL_NAMES[parent.level]} entry at {parent.entry_addr:#x} = {parent.entry:#x}"
              if parent is not None else "CR3")
        super().__init__(
            f"{LEVEL_NAMES[level]} entry at {entry_addr:#x} (level {level}) is outside memory "
            f"[0, {limit:#x}); the table was pointed to by {by}")


class MapError(PagingError):
    """PageTables.map was asked for something it cannot build."""


class MisalignedMap(MapError):
    """gva or gpa is not aligned to the page size asked for."""


class OverlappingMap(MapError):
    """The new mapping overlaps one already in the tables."""


class OutOfTableMemory(MapError):
    """The bump allocator for page tables ran past its limit."""


# --- results -------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One entry the walk read: its level (5/4..1), index, address and value as read."""

    level: int
    index: int
    entry_addr: int
    entry: int

    @property
    def name(self) -> str:
        return LEVEL_NAMES[self.level]

    @property
    def present(self) -> bool:
        return bool(self.entry & PteFlags.P)

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "name": self.name, "index": self.index,
                "entry_addr": self.entry_addr, "entry": self.entry}

    def __repr__(self) -> str:
        return (f"Step({self.name}, index={self.index:#x}, entry_addr={self.entry_addr:#x}, "
                f"entry={self.entry:#x})")


@dataclass(frozen=True)
class PageFault:
    """A #PF: the error code pushed, CR2 (the faulting linear address), where and why."""

    error_code: PfErr
    cr2: int
    level: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"error_code": int(self.error_code), "cr2": self.cr2, "level": self.level,
                "reason": self.reason}

    def __repr__(self) -> str:
        return (f"PageFault(error_code={int(self.error_code):#x} "
                f"[{_flag_names(self.error_code, PfErr)}], cr2={self.cr2:#x}, "
                f"level={self.level}, reason={self.reason!r})")


@dataclass(frozen=True)
class Walk:
    """The result of :func:`walk`: the GPA (or None and a ``fault``), every step, the page size."""

    gva: int
    access: str
    user: bool
    levels: int
    steps: tuple[Step, ...]
    address: int | None
    page_size: int | None
    fault: PageFault | None

    @property
    def ok(self) -> bool:
        return self.fault is None

    def to_dict(self) -> dict[str, Any]:
        return {"gva": self.gva, "access": self.access, "user": self.user, "levels": self.levels,
                "steps": [s.to_dict() for s in self.steps], "address": self.address,
                "page_size": self.page_size,
                "fault": None if self.fault is None else self.fault.to_dict()}

    def __repr__(self) -> str:
        mode = "user" if self.user else "supervisor"
        head = f"Walk(gva={self.gva:#x}, {_ACCESS_NAMES[self.access]}, {mode}"
        if self.fault is not None:
            return f"{head}, steps={len(self.steps)}, fault={self.fault!r})"
        return f"{head}, steps={len(self.steps)}, address={self.address:#x}, page_size={self.page_size:#x})"

    def table(self) -> str:
        """A fixed-width text rendering of the walk, one line per entry read."""
        mode = "user" if self.user else "supervisor"
        lines = [f"{self.levels}-level walk of {self.gva:#018x} ({_ACCESS_NAMES[self.access]}, {mode})",
                 f"{'level':<6}{'table':<6}{'index':>6}  {'entry_addr':<18}  {'entry':<18}  flags"]
        for s in self.steps:
            lines.append(f"{s.level:<6}{s.name:<6}{s.index:>6}  {s.entry_addr:#018x}  {s.entry:#018x}  "
                         f"{entry_flags(s.entry)}")
        if self.fault is not None:
            f = self.fault
            lines.append(f"-> #PF error_code={int(f.error_code):#x} ({_flag_names(f.error_code, PfErr)}) "
                         f"cr2={f.cr2:#x} at {LEVEL_NAMES[f.level]}: {f.reason}")
        else:
            lines.append(f"-> gpa {self.address:#x} ({size_name(self.page_size)} page)")
        return "\n".join(lines)


# --- the walk ------------------------------------------------------------------


def is_canonical(gva: int, levels: int = 4) -> bool:
    """Bits 63:48 copy bit 47 (4-level), or 63:57 copy bit 56 (5-level, CR4.LA57)."""
    width = 48 if levels == 4 else 57
    top = gva >> (width - 1)
    return top == 0 or top == (1 << (65 - width)) - 1


def _check_args(levels: int, maxphyaddr: int) -> None:
    if levels not in (4, 5):
        raise PagingError(f"levels must be 4 or 5 (CR4.LA57), got {levels!r}")
    if not isinstance(maxphyaddr, int) or not 32 <= maxphyaddr <= 52:
        raise PagingError(f"maxphyaddr must be an int in [32, 52], got {maxphyaddr!r}")


def walk(mem: GuestMemory, cr3: int, gva: int, access: str = "r", user: bool = False, *,
         levels: int = 4, cr0_wp: bool = True, cr4_smep: bool = False, cr4_smap: bool = False,
         efer_nxe: bool = True, maxphyaddr: int = 52, set_ad: bool = False,
         trace: TraceRecorder | None = None) -> Walk:
    """Translate ``gva`` through the tables at ``cr3`` as the CPU would for one access.

    ``access`` is "r" (data read), "w" (data write) or "x" (instruction fetch);
    ``user`` is CPL 3. Returns a :class:`Walk`; a #PF is ``Walk.fault``, not an
    exception. Raises :class:`NonCanonicalAddress` (#GP), :class:`TableOutsideMemory`
    for an unreadable table, :class:`PagingError` for bad arguments.
    """
    _check_args(levels, maxphyaddr)
    if access not in _ACCESS_NAMES:
        raise PagingError(f"access must be 'r', 'w' or 'x' (fetch), got {access!r}")
    if not isinstance(gva, int) or not 0 <= gva < 1 << 64:
        raise PagingError(f"a linear address is a 64-bit unsigned int, got {gva!r}")
    if not isinstance(cr3, int) or not 0 <= cr3 < 1 << maxphyaddr:
        raise PagingError(f"CR3 {cr3!r} is not a physical address below 2**{maxphyaddr} (MOV to CR3 "
                          "would #GP)")
    if not is_canonical(gva, levels):
        raise NonCanonicalAddress(gva, levels)
    write, fetch = access == "w", access == "x"
    user = bool(user)
    # The error code describes the access (SDM §4.7); I/D only when NXE or SMEP (PAE is 1).
    err = PfErr(0)
    if write:
        err |= PfErr.W
    if user:
        err |= PfErr.U
    if fetch and (efer_nxe or cr4_smep):
        err |= PfErr.I
    addr_mask = genmask(maxphyaddr - 1, 12)
    rsvd_all = genmask(51, maxphyaddr) | (0 if efer_nxe else int(PteFlags.NX))

    steps: list[Step] = []

    def finish(address: int | None, page_size: int | None, fault: PageFault | None) -> Walk:
        w = Walk(gva, access, user, levels, tuple(steps), address, page_size, fault)
        if trace is not None:
            if fault is None:
                trace.emit("guest", "translate", f"{gva:#x} -> gpa {address:#x}", gva=gva,
                           gpa=address, page_size=page_size, access=access, user=user)
            else:
                trace.emit("guest", "page_fault",
                           f"#PF {int(fault.error_code):#x} at {gva:#x}: {fault.reason}",
                           gva=gva, error_code=int(fault.error_code), cr2=fault.cr2, level=fault.level,
                           reason=fault.reason, access=access, user=user)
        return w

    table = cr3 & addr_mask
    rw_all = us_all = True
    nx_any = False
    parent: Step | None = None
    for level in range(levels, 0, -1):
        index = (gva >> _shift(level)) & 0x1FF
        entry_addr = table + 8 * index
        if entry_addr + 8 > mem.size:
            raise TableOutsideMemory(level, entry_addr, mem.size, parent)
        entry = mem.read_u64(entry_addr)
        step = Step(level, index, entry_addr, entry)
        steps.append(step)
        if trace is not None:
            trace.emit("guest", "pte_read", f"{step.name}[{index}] @ {entry_addr:#x} = {entry:#x}",
                       **step.to_dict())
        if not entry & PteFlags.P:
            return finish(None, None, PageFault(err, gva, level, f"{step.name} entry not present"))
        large = bool(entry & PteFlags.PS)
        leaf = level == 1 or (large and level in (2, 3))
        rsvd = rsvd_all
        if level >= 4:
            rsvd |= int(PteFlags.PS)
        elif leaf and level == 3:
            rsvd |= genmask(29, 13)
        elif leaf and level == 2:
            rsvd |= genmask(20, 13)
        if entry & rsvd:
            return finish(None, None, PageFault(err | PfErr.P | PfErr.RSVD, gva, level,
                                                f"reserved bit(s) {entry & rsvd:#x} set in the "
                                                f"{step.name} entry"))
        rw_all &= bool(entry & PteFlags.RW)
        us_all &= bool(entry & PteFlags.US)
        nx_any |= bool(entry & PteFlags.NX)
        if leaf:
            break
        table = entry & addr_mask
        parent = step

    page_size = 1 << _shift(level)
    address = (entry & addr_mask & ~(page_size - 1)) | (gva & (page_size - 1))

    # §4.6 access rights, over all levels.
    reason = None
    if user:
        if not us_all:
            reason = "user access to a supervisor-mode address (U/S=0 at some level)"
        elif write and not rw_all:
            reason = "user write to a read-only address (R/W=0 at some level)"
        elif fetch and efer_nxe and nx_any:
            reason = "fetch from an execute-disable address (XD=1 at some level)"
    else:
        if us_all and fetch and cr4_smep:
            reason = "SMEP: supervisor fetch from a user-mode address"
        elif us_all and not fetch and cr4_smap:
            reason = "SMAP: supervisor data access to a user-mode address (RFLAGS.AC=0)"
        elif write and cr0_wp and not rw_all:
            reason = "supervisor write to a read-only address with CR0.WP=1"
        elif fetch and efer_nxe and nx_any:
            reason = "fetch from an execute-disable address (XD=1 at some level)"
    if reason is not None:
        return finish(None, None, PageFault(err | PfErr.P, gva, level, reason))

    if set_ad:
        for i, s in enumerate(steps):
            new = s.entry | PteFlags.A
            if i == len(steps) - 1 and write:
                new |= PteFlags.D
            if new != s.entry:
                mem.write_u64(s.entry_addr, new)
                if trace is not None:
                    trace.emit("guest", "pte_write", f"set {entry_flags(new & ~s.entry)} in {s.name} "
                               f"@ {s.entry_addr:#x}", entry_addr=s.entry_addr, old=s.entry, new=new)
    return finish(address, page_size, None)


# --- the builder ---------------------------------------------------------------


#: Flags a caller may give to :meth:`PageTables.map` (PS is set by the size).
_MAP_FLAGS = (PteFlags.RW | PteFlags.US | PteFlags.PWT | PteFlags.PCD | PteFlags.A | PteFlags.D
              | PteFlags.G | PteFlags.NX | PteFlags.P)
#: What intermediate entries get by default: Linux's ``_PAGE_TABLE`` without A/D, so the leaf decides.
TABLE_FLAGS = PteFlags.P | PteFlags.RW | PteFlags.US


class PageTables:
    """Page tables built in ``mem``: a root at ``cr3`` and tables from a bump allocator.

    Tables are taken 4 KiB at a time from ``[alloc_base, alloc_limit)`` (default
    the end of memory) and zeroed. :meth:`map` adds one 4 KiB, 2 MiB or 1 GiB
    mapping; it refuses misaligned or overlapping maps with a typed error.
    """

    def __init__(self, mem: GuestMemory, alloc_base: int, levels: int = 4, *,
                 alloc_limit: int | None = None, maxphyaddr: int = 52):
        _check_args(levels, maxphyaddr)
        limit = mem.size if alloc_limit is None else alloc_limit
        if alloc_base < 0 or alloc_base % PAGE_SIZE:
            raise MisalignedMap(f"alloc_base {alloc_base:#x} is not 4 KiB aligned")
        if not alloc_base < limit <= mem.size:
            raise MapError(f"table area [{alloc_base:#x}, {limit:#x}) is empty or outside memory "
                           f"[0, {mem.size:#x})")
        self.mem, self.levels, self.maxphyaddr = mem, levels, maxphyaddr
        self.alloc_base, self.alloc_limit, self.next_free = alloc_base, limit, alloc_base
        self.tables: list[int] = []
        self.cr3 = self._alloc()

    def __repr__(self) -> str:
        return (f"PageTables(cr3={self.cr3:#x}, levels={self.levels}, tables={len(self.tables)}, "
                f"next_free={self.next_free:#x})")

    def _alloc(self) -> int:
        addr = self.next_free
        if addr + PAGE_SIZE > self.alloc_limit:
            raise OutOfTableMemory(f"no room for another page table: next free {addr:#x}, "
                                   f"limit {self.alloc_limit:#x}")
        self.mem.write(addr, bytes(PAGE_SIZE))
        self.next_free += PAGE_SIZE
        self.tables.append(addr)
        return addr

    def map(self, gva: int, gpa: int, size: int = PAGE_SIZE, flags: int = PteFlags.RW, *,
            table_flags: int = TABLE_FLAGS) -> int:
        """Map ``[gva, gva+size)`` to ``[gpa, gpa+size)``; returns the leaf entry's address.

        ``flags`` go into the leaf (P is always added, PS for 2 MiB / 1 GiB);
        new intermediate entries get ``table_flags`` (default P|RW|US, so the
        leaf alone decides the rights). Existing intermediate entries are reused.
        """
        if size not in _LEAF_LEVEL:
            raise MapError(f"page size must be 4 KiB, 2 MiB or 1 GiB, got {size:#x}")
        if flags & ~_MAP_FLAGS or table_flags & ~_MAP_FLAGS:
            raise MapError(f"flags {flags:#x} / table_flags {table_flags:#x} may hold only "
                           f"{entry_flags(_MAP_FLAGS)} (PS comes from the size)")
        if not 0 <= gva < 1 << 64 or not is_canonical(gva, self.levels):
            raise NonCanonicalAddress(gva, self.levels)
        if gva % size or gpa % size:
            raise MisalignedMap(f"gva {gva:#x} / gpa {gpa:#x} not aligned to the page size {size:#x}")
        if not 0 <= gpa or gpa + size > 1 << self.maxphyaddr:
            raise MapError(f"gpa {gpa:#x} + {size:#x} is beyond MAXPHYADDR {self.maxphyaddr}")
        leaf_level = _LEAF_LEVEL[size]
        table = self.cr3
        for level in range(self.levels, leaf_level, -1):
            entry_addr = table + 8 * ((gva >> _shift(level)) & 0x1FF)
            entry = self.mem.read_u64(entry_addr)
            if not entry & PteFlags.P:
                new = self._alloc()
                self.mem.write_u64(entry_addr, new | int(table_flags) | PteFlags.P)
                table = new
            elif entry & PteFlags.PS and level in (2, 3):
                raise OverlappingMap(f"gva {gva:#x}: already inside a {size_name(1 << _shift(level))} "
                                     f"page ({LEVEL_NAMES[level]} entry at {entry_addr:#x} = {entry:#x})")
            else:
                table = entry & genmask(self.maxphyaddr - 1, 12)
        entry_addr = table + 8 * ((gva >> _shift(leaf_level)) & 0x1FF)
        old = self.mem.read_u64(entry_addr)
        if old & PteFlags.P:
            what = "a table" if leaf_level > 1 and not old & PteFlags.PS else "a mapping"
            raise OverlappingMap(f"gva {gva:#x}: the {LEVEL_NAMES[leaf_level]} entry at {entry_addr:#x} "
                                 f"already holds {what} ({old:#x})")
        leaf = gpa | int(flags) | PteFlags.P | (PteFlags.PS if leaf_level > 1 else 0)
        self.mem.write_u64(entry_addr, int(leaf))
        return entry_addr

    def walk(self, gva: int, access: str = "r", user: bool = False, **kw: Any) -> Walk:
        """:func:`walk` through these tables (same levels and MAXPHYADDR)."""
        kw.setdefault("levels", self.levels)
        kw.setdefault("maxphyaddr", self.maxphyaddr)
        return walk(self.mem, self.cr3, gva, access, user, **kw)
