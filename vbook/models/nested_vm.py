"""L0, L1 and L2 with nested EPT: what happens to each L2 memory access, from the hardware's walk on.

The three tables of :mod:`vbook.models.nested`, wired together the way they are
while L2 runs:

* **EPT01** — L0's EPT for L1 (L1 GPA → HPA), filled on demand by L0's TDP MMU
  (:class:`vbook.models.ept.Tdp` over L1's memslots);
* **EPT12** — written by L1, in L1's own memory, for L2 (L2 GPA → L1 GPA); L1
  put its EPTP in vmcs12;
* **EPT02** — the shadow EPT L0 builds from both (L2 GPA → HPA) and loads into
  the hardware (vmcs02) while L2 runs.

:meth:`NestedVm.access` is one L2 access: the CPU walks EPT02 only
(:func:`vbook.models.ept.walk`); a hit costs nothing; an EPT misconfiguration (an MMIO SPTE L0 left
there) goes straight to L0's MMIO emulation; a miss is an EPT violation
that always exits to L0 (``nested_vmx_l0_wants_exit``), which then decides with
:func:`vbook.models.nested.ept02_fault` — fix EPT02 itself, or reflect the
violation to L1, or emulate. :meth:`NestedVm.build` sets up L1's RAM at HPA
2 MiB with L0 having mapped only its first MiB so far. Pure; never prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vbook.memory import GuestMemory
from vbook.models import ept
from vbook.models.ept import EptTables, Memslot, Tdp
from vbook.models.nested import Ept02, Ept02Fault, L1Memory, NestedError, ept02_fault

__all__ = ["L2Access", "NestedVm"]

_M2 = 1 << 21


@dataclass(frozen=True)
class L2Access:
    """One L2 access: ``outcome`` "hit" (EPT02 maps it: no exit) or the
    :class:`~vbook.models.nested.Ept02Fault` outcome ("fixed", "ept01_miss",
    "reflect", "emulate"); ``hpa`` where it landed (None if it did not)."""

    l2_gpa: int
    access: str
    outcome: str
    hpa: int | None
    exits_to: str            # "" (no exit), "L0", "L0 -> L1" or "L0 -> QEMU"
    fault: Ept02Fault | None
    functions: tuple[str, ...] = ()     # L0's path, Linux 6.1

    def __repr__(self) -> str:
        where = f"HPA {self.hpa:#x}" if self.hpa is not None else "no HPA"
        exits = f", exit to {self.exits_to}" if self.exits_to else ", no VM exit"
        return f"L2Access({self.access!r} L2 GPA {self.l2_gpa:#x}: {self.outcome}, {where}{exits})"


@dataclass
class NestedVm:
    """Host memory, L0's EPT01 for L1, L1's EPT12 for L2 (in L1 memory) and L0's EPT02."""

    host: GuestMemory
    ept01: Tdp
    ept12: EptTables
    ept02: Ept02
    l1_memory: L1Memory
    accesses: list[L2Access] = field(default_factory=list)

    @classmethod
    def build(cls, l1_ram: int = 4 << 20, l1_hpa: int = _M2, ept01_mapped: int = 1 << 20) -> NestedVm:
        """L1's RAM, L1 GPA [0, ``l1_ram``), at HPA ``l1_hpa``; L0 has mapped the first
        ``ept01_mapped`` bytes of it in EPT01 so far. EPT12 lives in L1 at L1 GPA
        0xC0000; EPT01 at HPA 0x600000, EPT02 at 0x680000 (host memory 8 MiB)."""
        if l1_hpa + l1_ram > 0x600000 or ept01_mapped > l1_ram:
            raise NestedError(f"L1's RAM [{l1_hpa:#x}, +{l1_ram:#x}) must end below the EPT tables "
                              "at 0x600000, and EPT01 can map only what L1 has")
        host = GuestMemory(8 << 20, record=False)
        slot = Memslot.of(0, l1_ram, l1_hpa)
        ept01 = Tdp(EptTables(host, 0x600000, alloc_limit=0x680000), [slot])
        if ept01_mapped:
            ept01.tables.map(0, l1_hpa, ept01_mapped)
        l1 = L1Memory(host, [slot])
        # EPT12 without A/D: the model leaves out what KVM does with EPT12's A/D bits
        ept12 = EptTables(l1, 0xC0000, alloc_limit=0x100000, ad=False)  # type: ignore[arg-type]
        ept02 = Ept02(EptTables(host, 0x680000, alloc_limit=0x700000))
        return cls(host, ept01, ept12, ept02, l1)

    def access(self, l2_gpa: int, access: str = "r") -> L2Access:
        """L2 reads ("r"), writes ("w") or fetches ("x") at ``l2_gpa``."""
        hw = ept.walk(self.host, self.ept02.eptp, l2_gpa, access)
        if hw.ok:
            a = L2Access(l2_gpa, access, "hit", hw.address, "", None)
        elif isinstance(hw.fault, ept.EptMisconfig):
            # the MMIO SPTE L0 left in EPT02: straight to emulation, no fault path, no pf_* count
            a = L2Access(l2_gpa, access, "emulate", None, "L0 -> QEMU", None,
                         ("handle_ept_misconfig", "kvm_mmu_page_fault", "handle_mmio_page_fault"))
        else:
            d = ept02_fault(self.host, self.ept01, self.ept12.eptp, l2_gpa, access, ept02=self.ept02)
            hpa = d.hpa if d.outcome in ("fixed", "ept01_miss") else None
            exits = {"reflect": "L0 -> L1", "emulate": "L0 -> QEMU"}.get(d.outcome, "L0")
            a = L2Access(l2_gpa, access, d.outcome, hpa, exits, d, d.functions)
        self.accesses.append(a)
        return a

    def __repr__(self) -> str:
        return f"NestedVm({len(self.accesses)} L2 accesses; {self.ept02!r})"
