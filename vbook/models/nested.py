"""The two-dimensional walk (guest paging x EPT) and nested EPT (EPT02 from EPT12 x EPT01).

**The 2-D walk.** With EPT on, CR3 and every address inside a guest page-table
entry are guest-physical. On a TLB miss the CPU therefore translates each
guest table pointer through the EPT before it can read the guest entry, level
by level, and finally translates the guest's resulting GPA::

    CR3 (GPA) --EPT walk (m refs)--> HPA --read--> guest PML4E   (1 ref)
    PML4E.addr --EPT walk----------> HPA --read--> guest PDPTE
    ...
    PTE.addr | offset = final GPA --EPT walk (m refs)--> HPA of the data

n guest levels on m EPT levels cost (n + 1)(m + 1) − 1 = nm + n + m memory
references (Bhargava, Serebrin, Spadini, Manne, ASPLOS 2008): 24 for 4 x 4,
35 for 5 x 5 (:func:`refs_count`). A 2 MiB guest page ends the guest walk one
level early (one row fewer); a 2 MiB EPT page ends an EPT walk one level early
(one reference fewer in every EPT walk it serves). :func:`walk_2d` does it
reference by reference, reusing :func:`vbook.models.paging.walk` (the guest's
checks and #PF error code) and :func:`vbook.models.ept.walk` (EPT checks and the
violation qualification): the guest walk reads its memory through a view that
sends every guest-physical read through the EPT first.

A fault is one of three things (``Walk2d.fault``):

* a guest #PF (:class:`~vbook.models.paging.PageFault`): the guest handles it,
  no VM exit (with EPT, KVM does not intercept #PF);
* an :class:`~vbook.models.ept.EptViolation` / :class:`~vbook.models.ept.EptMisconfig`
  while translating a guest paging-structure access (``fault_on="guest_page"``:
  qualification bit 7 "GVA valid" = 1, bit 8 = 0) or the final GPA
  (``fault_on="guest_final"``: bits 7 and 8 = 1) — SDM Vol. 3C "Exit Qualification
  for EPT Violations". KVM's ``handle_ept_violation`` (arch/x86/kvm/vmx/vmx.c,
  Linux 6.1) turns bit 8 into ``PFERR_GUEST_FINAL_MASK`` (``PFERR_GUEST_FINAL_BIT``
  32) or else ``PFERR_GUEST_PAGE_MASK`` (``PFERR_GUEST_PAGE_BIT`` 33),
  arch/x86/include/asm/kvm_host.h: :attr:`Walk2d.error_code`.

With the EPTP's A/D enable bit set, the CPU's accesses to guest paging structures
are treated as *writes* by the EPT (SDM "EPT-Induced VM Exits"); the model does
that. Setting A/D flags (guest ``set_ad``, EPT ``ept_update_ad``) is off by
default; the write-backs are traced, not counted as references.

**Nested EPT.** When L1 (a hypervisor in a KVM guest) runs L2 with EPT, L1 writes
EPT12 (L2 GPA → L1 GPA, tables in L1 memory, ``vmcs12->ept_pointer``, read by
``nested_ept_get_eptp`` in arch/x86/kvm/vmx/nested.h). The hardware cannot walk EPT12 x EPT01, so L0 loads a
shadow EPT02 (L2 GPA → HPA) that it fills on demand. An EPT violation while L2
runs always goes to L0 (``nested_vmx_l0_wants_exit``); :func:`ept02_fault` is
what L0 then decides, as ``kvm_mmu_page_fault`` → ``ept_page_fault`` (=
``FNAME(page_fault)`` of arch/x86/kvm/mmu/paging_tmpl.h built with ``PTTYPE_EPT``)
does in Linux 6.1:

* ``FNAME(walk_addr)`` (``ept_walk_addr``) walks EPT12 in L1 memory. It fails →
  ``kvm_inject_emulated_page_fault`` → ``mmu->inject_page_fault`` =
  ``nested_ept_inject_page_fault`` (arch/x86/kvm/vmx/nested.c) → ``nested_vmx_vmexit``
  with EXIT_REASON_EPT_VIOLATION (EPT_MISCONFIG when the walk found reserved bits)
  **reflected to L1**; ``vmcs12->guest_physical_address`` = the L2 GPA; the
  qualification is bits 2:0 from the access, 5:3 from the EPT12 entries' RWX,
  7:8 from the real exit qualification (the error path of ``FNAME(walk_addr_generic)``).
* it succeeds with L1 GPA g → L0 resolves g through its own memslots
  (``kvm_faultin_pfn``), i.e. EPT01's view, and ``FNAME(fetch)`` (``ept_fetch``)
  installs the EPT02 leaf L2 GPA → HPA; L2 re-executes, L1 never sees an exit.
  When EPT01 does not map g yet (L1 never touched it) L0 still handles it
  alone: the pfn comes from the memslot, and EPT01 is not touched (that is the
  TDP MMU of L1, not the shadow MMU); a GPA outside every memslot is MMIO of
  L1 → ``RET_PF_EMULATE``.

Not modelled: TLBs and paging-structure caches (every walk is a full miss), the
write-protection of L1's EPT12 pages, PML, large EPT02 pages, EPT02 roots per
EPTP12 (``nested_ept_invalidate_addr``), 32-bit/PAE guest paging; for EPT12 with
A/D enabled, KVM setting A/D in L1's entries (``FNAME(update_accessed_dirty_bits)``)
and mapping a clean entry read-only in EPT02 (``FNAME(protect_clean_gpte)``);
``FNAME(pte_prefetch)`` filling neighbouring EPT02 entries after a fault. Pure,
deterministic, stdlib only; records a Trace; never prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from vbook.errors import MemoryAccessError, PagingError
from vbook.memory import GuestMemory
from vbook.models import ept, paging
from vbook.models.ept import (
    DEFAULT_MAXPHYADDR,
    EXIT_REASON_EPT_MISCONFIG,
    EXIT_REASON_EPT_VIOLATION,
    EptMisconfig,
    Eptp,
    EptTables,
    EptViolation,
    Memslot,
    MemType,
    Tdp,
    VmxEpt,
)
from vbook.models.nested_3_15 import (
    PFERR_GUEST_FINAL_BIT,
    PFERR_GUEST_FINAL_MASK,
    PFERR_GUEST_PAGE_BIT,
    PFERR_GUEST_PAGE_MASK,
    PFERR_RSVD_MASK,
    ept_violation_error_code,
)
from vbook.models.paging import PageFault
from vbook.trace import TraceRecorder

__all__ = [
    "PFERR_GUEST_FINAL_BIT", "PFERR_GUEST_PAGE_BIT", "PFERR_GUEST_FINAL_MASK", "PFERR_GUEST_PAGE_MASK",
    "NestedError", "Ref", "Grid", "Walk2d", "walk_2d", "refs_count",
    "L1Memory", "Ept02", "Ept02Fault", "ept02_fault",
]

_EPT_ACC = {"r": 1, "w": 2, "x": 4}


class NestedError(PagingError):
    """Input the 2-D / nested model cannot accept, or a table outside memory."""


def refs_count(n: int, m: int) -> int:
    """Memory references of a full 2-D walk: n guest levels on m EPT levels,
    (n + 1)(m + 1) − 1 — each of the n guest table pointers and the final GPA
    needs an m-reference EPT walk, plus the n guest entries themselves."""
    if n < 0 or m < 0:
        raise NestedError(f"levels must be >= 0, got n={n}, m={m}")
    return (n + 1) * (m + 1) - 1


# --- results ----------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """One memory reference of the 2-D walk.

    ``kind`` "ept" (an EPT entry read while translating ``gpa``) or "guest" (the
    guest page-table entry at ``gpa`` read at ``hpa``); ``level`` the guest level
    the reference serves (0 = the translation of the final GPA); ``ept_level`` the
    EPT entry's level (None for a guest read); ``hpa`` where the entry was read.
    """

    kind: str
    level: int
    ept_level: int | None
    gpa: int
    hpa: int
    entry: int

    @property
    def name(self) -> str:
        if self.kind == "guest":
            return paging.LEVEL_NAMES[self.level]
        return ept.LEVEL_NAMES[self.ept_level or 0]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "level": self.level, "ept_level": self.ept_level, "gpa": self.gpa,
                "hpa": self.hpa, "entry": self.entry}

    def __repr__(self) -> str:
        return (f"Ref({self.kind} {self.name}, level={self.level}, gpa={self.gpa:#x}, "
                f"hpa={self.hpa:#x}, entry={self.entry:#x})")


@dataclass(frozen=True)
class Grid:
    """The (guest level x EPT level) matrix of reference numbers (1-based, in the
    order they happened; None where no reference was made).

    Rows: the guest levels top down, then "gpa" (the final translation); columns:
    the EPT levels top down, then "guest" (the guest entry read after that row's
    EPT walk). The bottom-right cell is always None: the data access itself is
    not a walk reference — hence the "− 1" of (n + 1)(m + 1) − 1.
    """

    rows: tuple[str, ...]
    cols: tuple[str, ...]
    cells: tuple[tuple[int | None, ...], ...]

    def count(self) -> int:
        return sum(c is not None for row in self.cells for c in row)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "cols": list(self.cols), "cells": [list(r) for r in self.cells]}

    def table(self) -> str:
        lines = [f"{'':<6}" + "".join(f"{c:>7}" for c in self.cols)]
        for name, row in zip(self.rows, self.cells, strict=True):
            lines.append(f"{name:<6}" + "".join(f"{'.' if c is None else c:>7}" for c in row))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Grid({len(self.rows)}x{len(self.cols)}, {self.count()} refs)"


@dataclass(frozen=True)
class Walk2d:
    """The result of :func:`walk_2d`.

    ``address`` the HPA (None on a fault), ``gpa`` the guest-physical result,
    ``refs`` every memory reference in order, ``page_size`` the guest page size and
    ``ept_page_size`` the final EPT page's; ``fault`` None, a guest
    :class:`~vbook.models.paging.PageFault`, or an EPT violation/misconfiguration
    with ``fault_on`` "guest_page" (translating a guest paging-structure access)
    or "guest_final" (translating the final GPA) and ``fault_level`` the guest
    level whose table was being reached (0 = final)."""

    gva: int
    access: str
    levels: int
    ept_levels: int
    refs: tuple[Ref, ...]
    address: int | None
    gpa: int | None
    page_size: int | None
    ept_page_size: int | None
    fault: PageFault | EptViolation | EptMisconfig | None
    fault_on: str | None = None
    fault_level: int | None = None
    guest_walk: paging.Walk | None = None

    @property
    def ok(self) -> bool:
        return self.fault is None

    @property
    def error_code(self) -> int | None:
        """For an EPT violation, the page-fault error code KVM's ``handle_ept_violation``
        builds from the qualification (read → PFERR_USER_MASK, write, fetch, present
        if any of bits 5:3, then PFERR_GUEST_FINAL_MASK if bit 8 else
        PFERR_GUEST_PAGE_MASK); for a misconfiguration ``PFERR_RSVD_MASK``
        (``handle_ept_misconfig``); for a guest #PF its error code."""
        f = self.fault
        if f is None:
            return None
        if isinstance(f, PageFault):
            return int(f.error_code)
        if isinstance(f, EptMisconfig):
            return PFERR_RSVD_MASK
        return ept_violation_error_code(f.qualification)

    def count(self, kind: str | None = None) -> int:
        return sum(1 for r in self.refs if kind is None or r.kind == kind)

    def grid(self) -> Grid:
        """The animated grid of the chapter: see :class:`Grid`."""
        rows = tuple(paging.LEVEL_NAMES[lv] for lv in range(self.levels, 0, -1)) + ("gpa",)
        cols = tuple(ept.LEVEL_NAMES[lv] for lv in range(self.ept_levels, 0, -1)) + ("guest",)
        cells = [[None] * len(cols) for _ in rows]
        for i, r in enumerate(self.refs, 1):
            row = len(rows) - 1 if r.level == 0 else self.levels - r.level
            col = len(cols) - 1 if r.kind == "guest" else self.ept_levels - (r.ept_level or 0)
            cells[row][col] = i
        return Grid(rows, cols, tuple(tuple(c) for c in cells))

    def table(self) -> str:
        """One line per reference, then the outcome."""
        lines = [f"2-D walk of GVA {self.gva:#x} ({self.access}): {self.levels}-level guest paging on "
                 f"{self.ept_levels}-level EPT, {len(self.refs)} references",
                 f"{'#':>3}  {'kind':<5} {'entry':<6} {'for GPA':>14}  {'at HPA':>14}  {'value':>18}"]
        for i, r in enumerate(self.refs, 1):
            lines.append(f"{i:>3}  {r.kind:<5} {r.name:<6} {r.gpa:>#14x}  {r.hpa:>#14x}  {r.entry:>#18x}")
        f = self.fault
        if f is None:
            lines.append(f"-> GPA {self.gpa:#x} -> HPA {self.address:#x}")
        elif isinstance(f, PageFault):
            lines.append(f"-> guest #PF error_code={int(f.error_code):#x}: {f.reason} (no VM exit)")
        else:
            what = "EPT_VIOLATION (exit 48)" if isinstance(f, EptViolation) else "EPT_MISCONFIG (exit 49)"
            lines.append(f"-> {what} on the {self.fault_on.replace('_', ' ') if self.fault_on else ''} "
                         f"access, GPA {f.gpa:#x}: {f.reason}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        if self.fault is None:
            out = f"address={self.address:#x}"
        else:
            out = f"fault={self.fault!r}" + (f", fault_on={self.fault_on}" if self.fault_on else "")
        return (f"Walk2d(gva={self.gva:#x}, {self.access!r}, {self.levels}x{self.ept_levels}, "
                f"{len(self.refs)} refs, {out})")


# --- the 2-D walk -----------------------------------------------------------------------


class _EptStop(Exception):
    """An EPT fault while the guest walk reads a table: ends the guest walk."""

    def __init__(self, walk: ept.Walk):
        self.walk = walk


class _GuestPhysView:
    """Guest-physical memory as the CPU's page walker sees it under EPT: every
    8-byte read of a guest paging-structure entry is an EPT walk and then a read
    at the HPA, recorded as references."""

    def __init__(self, walker: _Walker2d, size: int):
        self.w, self.size = walker, size
        self.level = walker.levels + 1

    def read_u64(self, gpa: int) -> int:
        self.level -= 1          # paging.walk reads exactly one entry per level, top down
        hpa = self.w.translate(gpa, self.level)
        try:
            entry = self.w.host_mem.read_u64(hpa)
        except MemoryAccessError:
            raise NestedError(f"guest {paging.LEVEL_NAMES[self.level]} entry at GPA {gpa:#x} maps to "
                              f"HPA {hpa:#x}, outside host memory [0, {self.w.host_mem.size:#x})") from None
        self.w.add(Ref("guest", self.level, None, gpa, hpa, entry))
        self.w.hpa_of[gpa] = hpa
        return entry

    def write_u64(self, gpa: int, value: int) -> None:
        # A/D write-back to the entry just read (a locked RMW of the same HPA: no new walk)
        hpa = self.w.hpa_of[gpa]
        self.w.host_mem.write_u64(hpa, value)
        if self.w.trace is not None:
            self.w.trace.emit("guest", "pte_write", f"guest A/D at GPA {gpa:#x} (HPA {hpa:#x})",
                              gpa=gpa, hpa=hpa, new=value)


class _Walker2d:
    def __init__(self, host_mem: GuestMemory, eptp: Eptp, levels: int, *, maxphyaddr: int,
                 execute_only: bool, ept_update_ad: bool, trace: TraceRecorder | None):
        self.host_mem, self.eptp, self.levels = host_mem, eptp, levels
        self.maxphyaddr, self.execute_only, self.ept_update_ad = maxphyaddr, execute_only, ept_update_ad
        self.trace = trace
        self.refs: list[Ref] = []
        self.hpa_of: dict[int, int] = {}

    def add(self, ref: Ref) -> None:
        self.refs.append(ref)
        if self.trace is not None:
            self.trace.emit("guest", f"{ref.kind}_ref", f"#{len(self.refs)} {ref.kind} {ref.name} "
                            f"@ HPA {ref.hpa:#x} = {ref.entry:#x}", n=len(self.refs), ref_kind=ref.kind,
                            level=ref.level, ept_level=ref.ept_level, gpa=ref.gpa, hpa=ref.hpa,
                            entry=ref.entry)

    def ept_walk(self, gpa: int, level: int, access: str) -> ept.Walk:
        final = level == 0
        w = ept.walk(self.host_mem, self.eptp, gpa, access, maxphyaddr=self.maxphyaddr,
                     execute_only=self.execute_only, gva_valid=True, translated=final,
                     update_ad=self.ept_update_ad)
        for s in w.steps:
            self.add(Ref("ept", level, s.level, gpa, s.entry_addr, s.entry))
        return w

    def translate(self, gpa: int, level: int) -> int:
        # The CPU's reads of guest paging structures are writes to the EPT when EPTP A/D is
        # on, and a violation then reports both a read and a write (qualification bits 0
        # and 1) -- as KVM's own walker asks for both, Linux 6.1 paging_tmpl.h
        # FNAME(walk_addr_generic): nested_access = (have_ad ? PFERR_WRITE_MASK : 0) | PFERR_USER_MASK
        w = self.ept_walk(gpa, level, "w" if self.eptp.ad else "r")
        if isinstance(w.fault, EptViolation) and self.eptp.ad:
            w = replace(w, fault=replace(w.fault, qualification=w.fault.qualification | _EPT_ACC["r"]))
        if w.fault is not None:
            raise _EptStop(w)
        assert w.address is not None
        return w.address


def walk_2d(host_mem: GuestMemory, eptp: Eptp | int, cr3: int, gva: int, access: str = "r", *,
            user: bool = False, levels: int = 4, ept_levels: int | None = None,
            trace: TraceRecorder | None = None, maxphyaddr: int = DEFAULT_MAXPHYADDR,
            execute_only: bool = True, set_ad: bool = False, ept_update_ad: bool = False,
            **paging_options: Any) -> Walk2d:
    """Translate ``gva`` as a CPU with EPT does on a full TLB miss: guest paging
    rooted at the GPA ``cr3`` (``levels`` 4 or 5), every guest table address and
    the final GPA translated through the EPT at ``eptp`` in ``host_mem``.

    ``ept_levels`` defaults to the EPTP's walk length (a different value raises
    :class:`NestedError`). ``paging_options`` go to :func:`vbook.models.paging.walk`
    (``cr0_wp``, ``cr4_smep``, ``cr4_smap``, ``efer_nxe``). ``maxphyaddr`` applies to
    both walks. A fault is in ``.fault`` (see :class:`Walk2d`); bad input and tables
    outside memory raise :class:`~vbook.errors.PagingError` subclasses.
    """
    if access not in _EPT_ACC:
        raise NestedError(f"access must be 'r', 'w' or 'x', got {access!r}")
    ep = eptp if isinstance(eptp, Eptp) else Eptp.decode(eptp, maxphyaddr=maxphyaddr)
    if ept_levels is not None and ept_levels != ep.levels:
        raise NestedError(f"ept_levels={ept_levels} but the EPTP {ep.encode():#x} says {ep.levels} levels")
    unknown = set(paging_options) - {"cr0_wp", "cr4_smep", "cr4_smap", "efer_nxe"}
    if unknown:
        raise NestedError(f"unknown paging option(s) {sorted(unknown)}")
    w2 = _Walker2d(host_mem, ep, levels, maxphyaddr=maxphyaddr, execute_only=execute_only,
                   ept_update_ad=ept_update_ad, trace=trace)
    gpa_space = 1 << min(maxphyaddr, 12 + 9 * ep.levels)
    view = _GuestPhysView(w2, gpa_space)
    if trace is not None:
        trace.emit("guest", "walk_2d", f"2-D walk of {gva:#x}", gva=gva, cr3=cr3, eptp=ep.encode(),
                   levels=levels, ept_levels=ep.levels, access=access)

    def done(gw: paging.Walk | None, address: int | None, gpa: int | None, ept_size: int | None,
             fault: Any, fault_on: str | None = None, fault_level: int | None = None) -> Walk2d:
        res = Walk2d(gva, access, levels, ep.levels, tuple(w2.refs), address, gpa,
                     None if gw is None else gw.page_size, ept_size, fault, fault_on, fault_level, gw)
        if trace is not None:
            if fault is None:
                trace.emit("guest", "translate_2d", f"GVA {gva:#x} -> GPA {gpa:#x} -> HPA {address:#x}",
                           gva=gva, gpa=gpa, hpa=address, refs=len(w2.refs))
            elif isinstance(fault, PageFault):
                trace.emit("guest", "page_fault", f"guest #PF {int(fault.error_code):#x} at {gva:#x}",
                           gva=gva, error_code=int(fault.error_code), level=fault.level)
            else:
                exit_reason = fault.exit_reason
                trace.emit("kvm", "vmexit", "EXIT_REASON_EPT_VIOLATION" if exit_reason == 48
                           else "EXIT_REASON_EPT_MISCONFIG", exit_reason=exit_reason, gpa=fault.gpa,
                           gva=gva, fault_on=fault_on, error_code=res.error_code,
                           qualification=getattr(fault, "qualification", None))
        return res

    try:
        gw = paging.walk(view, cr3, gva, access, user, levels=levels, maxphyaddr=maxphyaddr,  # type: ignore[arg-type]
                         set_ad=set_ad, **paging_options)
    except _EptStop as stop:
        return done(None, None, None, None, stop.walk.fault, "guest_page", view.level)
    except paging.TableOutsideMemory as e:
        raise NestedError(f"guest {paging.LEVEL_NAMES[e.level]} entry at GPA {e.entry_addr:#x} is beyond "
                          f"the guest-physical space [0, {gpa_space:#x})") from None
    if gw.fault is not None:
        return done(gw, None, None, None, gw.fault)
    assert gw.address is not None
    fw = w2.ept_walk(gw.address, 0, access)
    if fw.fault is not None:
        return done(gw, None, gw.address, None, fw.fault, "guest_final", 0)
    return done(gw, fw.address, gw.address, fw.page_size, None)


# --- nested EPT: EPT12 x EPT01 -> EPT02 -------------------------------------------------


class L1Memory:
    """L1's guest-physical memory as L0 reads it: through L1's memslots (L1 GPA →
    HPA in the host memory), as ``kvm_vcpu_read_guest_page`` / ``gfn_to_hva`` do.
    ``read_u64`` of a GPA in no memslot raises MemoryAccessError."""

    def __init__(self, host_mem: GuestMemory, memslots: list[Memslot] | tuple[Memslot, ...]):
        self.host_mem, self.memslots = host_mem, tuple(memslots)
        self.size = max((s.base_gfn + s.npages) << ept.PAGE_SHIFT for s in self.memslots) if memslots else 0

    def hpa(self, l1_gpa: int) -> int | None:
        gfn = l1_gpa >> ept.PAGE_SHIFT
        for s in self.memslots:
            if gfn in s:
                return ((s.host_pfn + gfn - s.base_gfn) << ept.PAGE_SHIFT) | (l1_gpa & (ept.PAGE_SIZE - 1))
        return None

    def read_u64(self, l1_gpa: int) -> int:
        hpa = self.hpa(l1_gpa)
        if hpa is None:
            raise MemoryAccessError(l1_gpa, 8, self.size)
        return self.host_mem.read_u64(hpa)

    def write_u64(self, l1_gpa: int, value: int) -> None:
        hpa = self.hpa(l1_gpa)
        if hpa is None:
            raise MemoryAccessError(l1_gpa, 8, self.size)
        self.host_mem.write_u64(hpa, value)

    def write(self, l1_gpa: int, data: bytes) -> None:
        """``data`` at ``l1_gpa``, page by page through the memslots (a page table, a guest's code)."""
        data, done = bytes(data), 0
        while done < len(data):
            gpa = l1_gpa + done
            hpa = self.hpa(gpa)
            if hpa is None:
                raise MemoryAccessError(l1_gpa, len(data), self.size)
            n = min(len(data) - done, ept.PAGE_SIZE - (gpa & (ept.PAGE_SIZE - 1)))
            self.host_mem.write(hpa, data[done:done + n])
            done += n


@dataclass
class Ept02:
    """L0's shadow EPT for L2 (loaded into the hardware while L2 runs) and what the
    nested fault path counted: ``pf_fixed`` EPT02 leaves installed, ``reflected``
    exits sent to L1, ``pf_emulate`` MMIO of L1 emulated by L0."""

    tables: EptTables
    pf_fixed: int = 0
    reflected: int = 0
    pf_emulate: int = 0
    pf_mmio_spte_created: int = 0
    #: ``kvm.mmio_caching`` (``enable_mmio_caching``, on by default): MMIO of L1 gets an MMIO
    #: SPTE in EPT02, so later accesses are EPT misconfigurations (mmu/spte.c, Linux 6.1)
    mmio_caching: bool = True
    trace: TraceRecorder = field(default_factory=TraceRecorder)

    @property
    def eptp(self) -> int:
        return self.tables.eptp

    def __repr__(self) -> str:
        return (f"Ept02(root={self.tables.root:#x}, pf_fixed={self.pf_fixed}, reflected={self.reflected}, "
                f"pf_emulate={self.pf_emulate}, pf_mmio_spte_created={self.pf_mmio_spte_created})")


@dataclass(frozen=True)
class Ept02Fault:
    """What L0 decided for an L2 access that missed in EPT02.

    ``outcome``: "fixed" (EPT12 and EPT01 both map it: EPT02 leaf installed),
    "ept01_miss" (EPT12 maps it to an L1 page EPT01 does not map yet: L0 resolves
    the L1 page from its memslot and installs EPT02 itself), "reflect" (EPT12
    does not allow it: an EPT violation / misconfiguration is reflected to L1 with
    ``exit_reason`` and ``qualification``; ``guest_physical_address`` is what
    vmcs12 gets), "emulate" (the L1 GPA is in no memslot: MMIO of L1).
    ``functions`` the Linux 6.1 path in call order; ``ept12_walk`` the EPT12 walk."""

    outcome: str
    l2_gpa: int
    access: str
    l1_gpa: int | None
    hpa: int | None
    exit_reason: int | None
    qualification: int | None
    reason: str
    functions: tuple[str, ...]
    ept12_walk: ept.Walk

    @property
    def reflected(self) -> bool:
        return self.outcome == "reflect"

    @property
    def guest_physical_address(self) -> int | None:
        """``vmcs12->guest_physical_address`` set by ``nested_ept_inject_page_fault``."""
        return self.l2_gpa if self.reflected else None

    def __repr__(self) -> str:
        tail = (f"exit_reason={self.exit_reason}, qualification={self.qualification:#x}"
                if self.reflected and self.qualification is not None
                else f"exit_reason={self.exit_reason}" if self.reflected
                else f"l1_gpa={self.l1_gpa:#x}" + (f", hpa={self.hpa:#x}" if self.hpa is not None else ""))
        return f"Ept02Fault({self.outcome}, l2_gpa={self.l2_gpa:#x}, {self.access!r}, {tail})"


_PATH_HEAD = ("handle_ept_violation", "kvm_mmu_page_fault", "kvm_mmu_do_page_fault", "ept_page_fault",
              "ept_walk_addr")


def ept02_fault(l1_mem_host: GuestMemory, ept01: Tdp, ept12: Eptp | int, l2_gpa: int, access: str = "r", *,
                ept02: Ept02 | None = None, gva_valid: bool = True, translated: bool = True,
                maxphyaddr: int = DEFAULT_MAXPHYADDR) -> Ept02Fault:
    """L0's handling of an EPT violation on EPT02 while L2 runs (Linux 6.1
    ``ept_page_fault``, see the module docstring).

    ``l1_mem_host`` is host memory; ``ept01`` L0's TDP MMU for L1 (its
    :class:`~vbook.models.ept.EptTables` and memslots); ``ept12`` the EPTP L1 put in
    vmcs12 (its root and tables are L1 GPAs); ``gva_valid`` / ``translated`` are bits
    7 and 8 of the hardware's qualification, which a reflected exit keeps. With
    ``ept02`` the leaf is installed there (``pf_fixed`` counted) and reflections counted.
    """
    if access not in _EPT_ACC:
        raise NestedError(f"access must be 'r', 'w' or 'x', got {access!r}")
    l1 = L1Memory(l1_mem_host, list(ept01.memslots))
    try:
        w12 = ept.walk(l1, ept12, l2_gpa, access, maxphyaddr=maxphyaddr,  # type: ignore[arg-type]
                       gva_valid=gva_valid, translated=translated)
    except ept.EptWalkError as e:
        raise NestedError(f"EPT12 {ept.LEVEL_NAMES[e.level]} of L2 GPA {l2_gpa:#x} is at L1 GPA "
                          f"{e.entry_addr:#x}, outside L1's memslots") from None
    tr = ept02.trace if ept02 is not None else None

    def decide(d: Ept02Fault) -> Ept02Fault:
        if tr is not None:
            tr.emit("kvm", "nested_ept_fault", f"L2 GPA {l2_gpa:#x}: {d.outcome}", outcome=d.outcome,
                    l2_gpa=l2_gpa, l1_gpa=d.l1_gpa, hpa=d.hpa, exit_reason=d.exit_reason,
                    qualification=d.qualification, functions=list(d.functions))
        return d

    f = w12.fault
    if f is not None:
        # FNAME(walk_addr_generic) error path: qualification = access bits 2:0 | EPT12 RWX << 3 |
        # bits 7:8 of the real exit qualification; nested_ept_inject_page_fault reflects it.
        misconfig = isinstance(f, EptMisconfig)
        if ept02 is not None:
            ept02.reflected += 1
        return decide(Ept02Fault(
            "reflect", l2_gpa, access, None, None,
            EXIT_REASON_EPT_MISCONFIG if misconfig else EXIT_REASON_EPT_VIOLATION,
            None if misconfig else f.qualification, f"EPT12: {f.reason}",
            (*_PATH_HEAD, "kvm_inject_emulated_page_fault", "nested_ept_inject_page_fault",
             "nested_vmx_vmexit"), w12))
    assert w12.address is not None
    l1_gpa = w12.address
    slot_hpa = l1.hpa(l1_gpa)
    if slot_hpa is None:
        # handle_abnormal_pfn: with MMIO caching (the default) RET_PF_CONTINUE, and ept_fetch ->
        # mmu_set_spte -> mark_mmio_spte installs an MMIO SPTE for the L1 gfn (pf_mmio_spte_created)
        # and returns RET_PF_EMULATE; without it RET_PF_EMULATE at once. kvm_mmu_do_page_fault
        # counts pf_emulate either way.
        caching = ept02.mmio_caching if ept02 is not None else True
        if ept02 is not None:
            ept02.pf_emulate += 1
            if caching:
                ept02.tables.set_entry(l2_gpa & ~(ept.PAGE_SIZE - 1), 1,
                                       ept.make_mmio_spte(l1_gpa >> ept.PAGE_SHIFT))
                ept02.pf_mmio_spte_created += 1
        tail = ("ept_fetch", "mmu_set_spte", "mark_mmio_spte") if caching else ()
        how = ("an MMIO SPTE in EPT02 (the next access is an EPT misconfiguration)" if caching
               else "nothing installed (kvm.mmio_caching=0)")
        return decide(Ept02Fault("emulate", l2_gpa, access, l1_gpa, None, None, None,
                                 f"L1 GPA {l1_gpa:#x} is in no memslot: MMIO of L1, RET_PF_EMULATE; {how}",
                                 (*_PATH_HEAD, "kvm_faultin_pfn", "handle_abnormal_pfn", *tail), w12))
    t01 = ept01.tables
    w01 = ept.walk(t01.mem, t01.eptp, l1_gpa, access, maxphyaddr=t01.maxphyaddr)
    # The EPT02 leaf gets EPT12's rights (walker.pte_access); the pfn comes from the memslot
    # (kvm_faultin_pfn), which is what EPT01 maps when it maps the page at all.
    rights = w12.rwx
    if w01.fault is None:
        outcome, hpa = "fixed", w01.address
        reason = f"EPT12 maps it to L1 GPA {l1_gpa:#x}, EPT01 to HPA {hpa:#x}"
    else:
        outcome, hpa = "ept01_miss", slot_hpa
        what = ("does not map yet" if not isinstance(w01.fault, EptViolation) or w01.fault.rwx == 0
                else "maps without the rights for this access")
        reason = (f"EPT12 maps it to L1 GPA {l1_gpa:#x}, which EPT01 {what} ({w01.fault.reason}); "
                  f"L0 takes HPA {hpa:#x} from the memslot")
    assert hpa is not None
    if ept02 is not None:
        page = l2_gpa & ~(ept.PAGE_SIZE - 1)
        leaf = ((hpa & ~(ept.PAGE_SIZE - 1)) | rights | MemType.WB << ept.VMX_EPT_MT_EPTE_SHIFT
                | ept.SPTE_MMU_PRESENT_MASK | (VmxEpt.ACCESS_BIT if ept02.tables.ad else 0))
        ept02.tables.set_entry(page, 1, int(leaf))
        ept02.pf_fixed += 1
    return decide(Ept02Fault(outcome, l2_gpa, access, l1_gpa, hpa, None, None, reason,
                             (*_PATH_HEAD, "kvm_faultin_pfn", "ept_fetch"), w12))
