"""A guest on EPT, ready for a 2-D walk: host memory, the EPT for the guest's RAM, the guest's tables.

The setup chapter 07, its exercises and plots share (the pattern of KVM
selftests' ``vm_create``: the library builds memory and tables, the caller
picks the mappings). One host memory holds everything:

* guest RAM, guest-physical ``[gbase, gbase + ram)``, lives at host-physical
  ``[hbase, hbase + ram)`` — deliberately *not* at HPA = GPA, so a walker that
  forgot the EPT would read the wrong memory;
* the EPT (L0's tables, HPA ``ept_tables``), written by
  :class:`vbook.models.ept.EptTables`, maps that RAM with ``ept_page`` pages
  (a 1 GiB EPT page needs ``gbase`` 1 GiB-aligned and covers more than the RAM,
  as a real one would);
* the guest's own page tables at guest-physical ``gbase + guest_tables``,
  written by :class:`vbook.models.paging.PageTables` through
  :class:`vbook.models.nested.L1Memory` — the guest's RAM as the guest kernel
  sees it (through the memslot), never through the model's walker.

``EptGuest(...).map(gva, gpa)`` maps a guest page; ``.walk(gva)`` is
:func:`vbook.models.nested.walk_2d` on it. Pure; never prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vbook.memory import GuestMemory
from vbook.models import ept, paging
from vbook.models.ept import EptTables, Memslot
from vbook.models.nested import L1Memory, NestedError, Walk2d, walk_2d
from vbook.models.paging import PageTables, PteFlags
from vbook.trace import TraceRecorder

__all__ = ["EptGuest", "WalkCost", "walk_costs", "K4", "M2", "G1"]

K4, M2, G1 = ept.PAGE_SIZE, 1 << 21, 1 << 30


class EptGuest:
    """Host memory with a guest's RAM, its EPT and its page tables (see the module docstring)."""

    def __init__(self, levels: int = 4, ept_levels: int = 4, ept_page: int = K4, *,
                 ram: int = 4 << 20, gbase: int | None = None, hbase: int | None = None,
                 ept_tables: int = 0x600000, guest_tables: int = 0x100000, table_room: int = 0x40000,
                 ad: bool = False):
        if ept_page not in (K4, M2, G1):
            raise NestedError(f"ept_page must be 4 KiB, 2 MiB or 1 GiB, got {ept_page:#x}")
        if gbase is None:
            gbase = G1 if ept_page == G1 else 0
        if hbase is None:
            hbase = 0 if ept_page == G1 else M2
        if ept_page == G1 and (gbase % G1 or hbase % G1):
            raise NestedError("a 1 GiB EPT page needs gbase and hbase 1 GiB-aligned")
        if guest_tables + table_room > ram:
            raise NestedError(f"the guest's tables [{guest_tables:#x}, +{table_room:#x}) are outside "
                              f"its RAM [0, {ram:#x})")
        if hbase < ept_tables + 0x40000 and ept_tables < hbase + ram:
            raise NestedError(f"guest RAM at HPA {hbase:#x} overlaps the EPT tables at {ept_tables:#x}")
        self.levels, self.gbase, self.hbase, self.ram = levels, gbase, hbase, ram
        self.host = GuestMemory(max(hbase + ram, ept_tables + 0x40000), record=False)
        self.ept = EptTables(self.host, ept_tables, levels=ept_levels, ad=ad,
                             alloc_limit=ept_tables + 0x40000)
        if ept_page == G1:
            self.ept.map(gbase, hbase, G1, page_size=G1)
        else:
            self.ept.map(gbase, hbase, ram, page_size=ept_page)
        self.memslot = Memslot.of(gbase, ram, hbase)
        #: guest-physical memory, as the guest kernel reads and writes it
        self.phys = L1Memory(self.host, [self.memslot])
        self.pt = PageTables(self.phys, gbase + guest_tables, levels,  # type: ignore[arg-type]
                             alloc_limit=gbase + guest_tables + table_room)

    @property
    def cr3(self) -> int:
        return self.pt.cr3

    @property
    def eptp(self) -> int:
        return self.ept.eptp

    def hpa(self, gpa: int) -> int:
        """Where guest-physical ``gpa`` (in the guest's RAM) is in host memory."""
        if not self.gbase <= gpa < self.gbase + self.ram:
            raise NestedError(f"GPA {gpa:#x} is outside the guest's RAM "
                              f"[{self.gbase:#x}, {self.gbase + self.ram:#x})")
        return gpa - self.gbase + self.hbase

    def map(self, gva: int, gpa: int, size: int = K4, flags: int = PteFlags.RW, **kw: Any) -> EptGuest:
        """Map ``size`` bytes at ``gva`` to ``gpa`` in the guest's tables (``PageTables.map``)."""
        self.pt.map(gva, gpa, size=size, flags=flags, **kw)
        return self

    def guest_walk(self, gva: int, access: str = "r", user: bool = False, **kw: Any) -> paging.Walk:
        """The guest's own view, GVA → GPA: what its kernel would compute (no EPT)."""
        return paging.walk(self.phys, self.cr3, gva, access, user, levels=self.levels, **kw)  # type: ignore[arg-type]

    def walk(self, gva: int, access: str = "r", user: bool = False, *,
             trace: TraceRecorder | None = None, **kw: Any) -> Walk2d:
        """The CPU's 2-D walk of ``gva``: :func:`~vbook.models.nested.walk_2d`."""
        return walk_2d(self.host, self.eptp, self.cr3, gva, access, user=user, levels=self.levels,
                       trace=trace, **kw)

    def __repr__(self) -> str:
        return (f"EptGuest({self.levels}-level guest paging on {self.ept.levels}-level EPT; guest RAM "
                f"GPA [{self.gbase:#x}, {self.gbase + self.ram:#x}) at HPA {self.hbase:#x}; "
                f"CR3 {self.cr3:#x}, EPTP {self.eptp:#x})")


@dataclass(frozen=True)
class WalkCost:
    """What one TLB miss costs for one configuration, counted on real tables by real walks.

    ``native`` is the guest walk alone (:func:`vbook.models.paging.walk` on the
    guest's tables, as without EPT); ``guest`` + ``ept`` = ``refs`` the 2-D walk's
    references (:func:`vbook.models.nested.walk_2d`)."""

    levels: int
    ept_levels: int
    guest_page: int
    ept_page: int
    native: int
    guest: int
    ept: int

    @property
    def refs(self) -> int:
        return self.guest + self.ept


def walk_costs(levels: tuple[int, ...] = (4, 5),
               page_sizes: tuple[int, ...] = (K4, M2, G1)) -> tuple[WalkCost, ...]:
    """One :class:`WalkCost` per (levels, guest page size, EPT page size): the guest and
    the EPT with the same number of levels, one page of each size mapped and walked."""
    out = []
    for lv in levels:
        for gp in page_sizes:
            for ep in page_sizes:
                g = EptGuest(lv, lv, ep)
                gva = G1 * 2 if gp == G1 else 0x400000      # aligned for its page size
                gpa = g.gbase + (0x5000 if gp == K4 else 0)
                g.map(gva, gpa, gp)
                w = g.walk(gva + 0x123)
                if not w.ok:
                    raise NestedError(f"walk_costs: {w!r} faulted")
                native = g.guest_walk(gva + 0x123)
                out.append(WalkCost(lv, lv, gp, ep, len(native.steps), w.count("guest"), w.count("ept")))
    return tuple(out)
