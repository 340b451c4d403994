"""``shadow_writes``: a 64-bit ring-3 guest that writes one of its own page-table entries K times.

The guest of chapter 05's three write scenarios (reference/machine.md, "Shadow
paging shows at CPL3"): what KVM's shadow MMU does when the guest changes the
tables it shadows. Like :mod:`vbook.guests.touch_pages` it is started by the
VMM in 64-bit mode at CPL 3 (:func:`vbook.backends.long_mode.start_in_long_mode`)
on tables :func:`build` makes with :class:`vbook.models.paging.PageTables`; the
tables lie in identity-mapped memory, so the guest can write them with a plain
``mov``.

One program, five numbers (``.equ`` lines, patched into the shipped bytes)::

    run 0:  read PROBE                          then OUT: the VMM reads the counters
    run j:  write VALUE_ODD / VALUE_EVEN (j odd / even) to ENTRY, read LOOK,
            OUT the low 32 bits of what it read                    (j = 1 .. K)
    then:   OUT DONE, forever

so each ``KVM_RUN`` after the first is exactly one write to a page-table entry
(and one read that shows what the guest sees after it). The scenarios
(:data:`SCENARIOS`):

``leaf_pte``
    ENTRY is the PTE of ``FAR`` (0x200000, the first page of the second 2 MiB:
    its own last-level table, ``PT_FAR``, not shadowed yet); the writes point
    it at ``FRAME_B``, then back at ``FRAME_A`` (where it started), and so on,
    as fresh entries (A = D = 0); LOOK = FAR. PROBE is the code page itself
    (already mapped: no exit). Each frame holds its own address in its first
    qword, so what the guest reads says which frame its access reached.
``own_pd``
    ENTRY is PDE 3 (6 MiB .. 8 MiB, unused) of ``PD_LOW``, the page directory
    the guest runs on — and through which it reaches ``PD_LOW`` itself; the
    value is ``EMPTY_PT | P | RW | US`` (a table with no entries: harmless),
    every time; LOOK = ENTRY (read back). PROBE is the code page.
``other_pd``
    ENTRY is PDE 5 of ``PD_OTHER``, the page directory of the second GiB, which
    the writer does not walk to reach it; same value, LOOK = ENTRY. PROBE is
    ``OTHER`` (0x4000_0000): reading it once makes KVM shadow ``PD_OTHER``.

Guest memory (2 MiB, GPA = GVA below 2 MiB):

* 0x1000 GDT, 0x2000 TSS + I/O bitmap (written by ``start_in_long_mode``);
* 0x8000 PML4, 0x9000 PDPT, 0xA000 ``PD_LOW``, 0xB000 ``PT_LOW`` (the low
  2 MiB, 4 KiB pages, RW | US, A = D = 0), 0xC000 ``PT_FAR``, 0xD000
  ``PD_OTHER``, 0xE000 ``PT_OTHER``, 0xF000 ``EMPTY_PT`` (zero);
* 0x10000 the code; RSP = 0x12000 (never used);
* ``FAR`` -> 0x20000 ``FRAME_A`` (or 0x21000 ``FRAME_B``), ``OTHER`` -> 0x30000.

The GDT/TSS, the tables, the code and the frames lie in different 32 KiB
groups of 8 gptes, so ``FNAME(pte_prefetch)`` never reaches a page of another
role (KVM's emulator sets A in the TSS's gpte when it emulates the ``OUT``).

What KVM does with it (measured on the PVM host; :mod:`vbook.shadow_run` puts the
kernel's counters next to :class:`vbook.models.shadow.ShadowMmu`'s, run by run):
``leaf_pte`` write 1 and its read fault twice (``pf_fixed`` 3 with the code page),
write 2 unsyncs ``PT_FAR`` (``mmu_unsync`` 1) and nothing traps after it — the
guest keeps reading ``FRAME_B`` whatever the PTE says, since at CPL 3 it has no
INVLPG or CR3 load to make KVM resync; ``own_pd``: every write one ``pf_emulate``,
``mmu_pte_write`` and ``mmu_pde_zapped``; ``other_pd``: writes 1-3 emulated, the
third floods ``PD_OTHER``'s shadow page (``mmu_flooded``, ``mmu_shadow_zapped``),
write 4 takes one last ``pf_fixed`` (the frame is no longer tracked), then no exits.

Exits: IO out 0xe0/4, once per KVM_RUN: K + 1 of them, then ``DONE`` forever.
"""

from __future__ import annotations

from dataclasses import dataclass

from vbook.errors import GuestError
from vbook.guests.base import Guest
from vbook.guests.ports import TESTDEV_PORT
from vbook.memory import GuestMemory
from vbook.models.paging import PAGE_SIZE, PageTables, PteFlags

__all__ = [
    "Access", "CODE", "CODE_GPA", "DONE", "EMPTY_PT", "FAR", "FRAME_A", "FRAME_B", "LISTING",
    "MAX_K", "MEM_SIZE", "OTHER", "OTHER_FRAME", "OTHER_PD_SLOT", "OWN_PD_SLOT", "SCENARIOS", "TABLES",
    "ShadowWrites", "build", "code", "listing",
]

MEM_SIZE = 0x200000
TABLES = 0x8000                  # PageTables' allocator: [TABLES, CODE_GPA)
EMPTY_PT = 0xF000                # the last page of that area: a page table with no entries
CODE_GPA = 0x10000
STACK_TOP = 0x12000
FAR = 0x200000                   # the first page of the second 2 MiB: its own PT
FRAME_A, FRAME_B = 0x20000, 0x21000
OTHER = 0x4000_0000              # the first page of the second GiB: its own PD
OTHER_FRAME = 0x30000
OWN_PD_SLOT = 3                  # PD_LOW[3]: 6 MiB .. 8 MiB, not mapped
OTHER_PD_SLOT = 5                # PD_OTHER[5]: 1 GiB + 10 MiB .. + 12 MiB, not mapped
#: what the guest OUTs once its K writes are done
DONE = 0xFFFFFFFF
#: the loop counter is a 32-bit register compared with an imm32
MAX_K = 0x7FFFFFFF

_U = PteFlags.P | PteFlags.RW | PteFlags.US
#: the harmless PDE value of ``own_pd`` and ``other_pd``
EMPTY_PDE = EMPTY_PT | _U

SCENARIOS: dict[str, str] = {
    "leaf_pte": "rewrite the PTE of a page, alternately to two frames, and read the page",
    "own_pd": "write a PDE of the page directory the writer runs on, and read it back",
    "other_pd": "write a PDE of a page directory the writer does not use, and read it back",
}


def listing(probe: int = CODE_GPA, entry: int = 0xC000, value_odd: int = FRAME_B | _U,
            value_even: int = FRAME_A | _U, look: int = FAR, k: int = 3) -> str:
    """The program for one set of numbers (defaults: ``leaf_pte`` with K = 3)."""
    return f"""\
# shadow_writes - 64-bit, CPL 3: write a page-table entry K times, one KVM_RUN per write.
        .intel_syntax noprefix
        .code64
        .equ PROBE, {probe:#x}              # read once, first: KVM shadows the tables on its path
        .equ ENTRY, {entry:#x}              # the page-table entry written (GVA = GPA)
        .equ VALUE_ODD, {value_odd:#x}      # what writes 1, 3, 5, ... put there
        .equ VALUE_EVEN, {value_even:#x}     # what writes 2, 4, 6, ... put there
        .equ LOOK, {look:#x}               # read after each write: what the guest sees now
        .equ K, {k}                        # how many writes
        .equ DONE, {DONE:#x}
        .equ TESTDEV_PORT, {TESTDEV_PORT:#x}
_start:
        mov   rax, qword ptr [PROBE]
        out   TESTDEV_PORT, eax         # run 0 ends (the TSS I/O bitmap allows OUT at CPL 3)
        xor   ecx, ecx                  # ecx: writes done
        mov   edx, K
next:
        cmp   ecx, edx
        je    done
        inc   ecx
        movabs rax, VALUE_ODD
        test  cl, 1
        jnz   1f
        movabs rax, VALUE_EVEN
1:      mov   qword ptr [ENTRY], rax    # the write to a page-table entry
        mov   rax, qword ptr [LOOK]
        out   TESTDEV_PORT, eax         # run ecx ends: one KVM_RUN per write
        jmp   next
done:
        mov   eax, DONE
        out   TESTDEV_PORT, eax         # every KVM_RUN after the K-th write
        jmp   done
"""


LISTING = listing()

# CODE is LISTING assembled with GNU as + objcopy (tests/test_shadow_writes.py re-assembles and compares).
CODE = bytes.fromhex(
    "488b042500000100e7e031c9ba030000"
    "0039d1742fffc148b807100200000000"
    "00f6c101750a48b80700020000000000"
    "4889042500c00000488b042500002000"
    "e7e0ebcdb8ffffffffe7e0ebf7"
)

#: where the numbers sit in CODE: (offset, bytes) of each ``.equ`` operand
_AT = {"probe": (0x04, 4), "k": (0x0D, 4), "value_odd": (0x19, 8), "value_even": (0x28, 8),
       "entry": (0x34, 4), "look": (0x3C, 4)}


def code(probe: int, entry: int, value_odd: int, value_even: int, look: int, k: int) -> bytes:
    """CODE with the numbers patched in (the bytes of :func:`listing` of them)."""
    out = bytearray(CODE)
    for name, value in (("probe", probe), ("entry", entry), ("value_odd", value_odd),
                        ("value_even", value_even), ("look", look), ("k", k)):
        at, n = _AT[name]
        limit = 1 << (8 * n - (1 if n == 4 else 0))      # disp32 / imm32 are sign-extended
        if not 0 <= value < limit:
            raise GuestError(f"shadow_writes: {name} {value:#x} does not fit its {n}-byte operand")
        out[at:at + n] = value.to_bytes(n, "little")
    return bytes(out)


@dataclass(frozen=True)
class Access:
    """One guest memory access: ``kind`` "x" (fetch), "r" (8-byte read) or "w" (8-byte write of ``value``)."""

    gva: int
    kind: str
    value: int | None = None
    size: int = 8

    def __repr__(self) -> str:
        if self.kind == "w":
            return f"Access(w {self.gva:#x} <- {self.value:#x})"
        return f"Access({self.kind} {self.gva:#x})"


@dataclass(frozen=True)
class ShadowWrites:
    """A built guest: image, entry point, the numbers of its program and every access, per run."""

    scenario: str
    k: int
    mem: GuestMemory
    cr3: int
    rip: int
    rsp: int
    probe: int
    entry: int
    values: tuple[int, int]          #: (VALUE_ODD, VALUE_EVEN)
    look: int
    tables: dict[str, int]           #: name -> GPA of each page table (pml4, pdpt, pd_low, ...)
    code: bytes
    listing: str

    def __repr__(self) -> str:
        return (f"ShadowWrites({self.scenario!r}, k={self.k}: write {self.values[0]:#x} / "
                f"{self.values[1]:#x} to {self.entry:#x}, read {self.look:#x}; probe {self.probe:#x})")

    @property
    def description(self) -> str:
        return SCENARIOS[self.scenario]

    def value(self, j: int) -> int:
        """What write ``j`` (1-based) puts into ENTRY."""
        return self.values[0] if j % 2 else self.values[1]

    def runs(self) -> tuple[tuple[Access, ...], ...]:
        """The guest's accesses, in program order, one tuple per ``KVM_RUN``: run 0 (fetch,
        read PROBE), then for write j = 1 .. K (fetch, write ENTRY, read LOOK). Every run
        starts with a fetch from the code page (no exit once it is mapped)."""
        fetch = Access(self.rip & ~(PAGE_SIZE - 1), "x")
        first = (fetch, Access(self.probe, "r"))
        return (first,) + tuple((fetch, Access(self.entry, "w", self.value(j)), Access(self.look, "r"))
                                for j in range(1, self.k + 1))

    def guest(self) -> Guest:
        """A :class:`~vbook.guests.base.Guest` to open the VM with (its RAM size, its code)."""
        return Guest(name=f"shadow_writes_{self.scenario}_{self.k}", mode=64, code=self.code,
                     listing=self.listing, description=__doc__.splitlines()[0],
                     load_addr=CODE_GPA, mem_size=MEM_SIZE, stack_top=STACK_TOP)


def _tables(mem: GuestMemory) -> tuple[PageTables, dict[str, int]]:
    pt = PageTables(mem, TABLES, alloc_limit=CODE_GPA)
    for gpa in range(0, MEM_SIZE, PAGE_SIZE):
        pt.map(gpa, gpa, flags=PteFlags.RW | PteFlags.US)
    pt.map(FAR, FRAME_A, flags=PteFlags.RW | PteFlags.US)
    pt.map(OTHER, OTHER_FRAME, flags=PteFlags.RW | PteFlags.US)
    if pt.next_free > EMPTY_PT:
        raise GuestError(f"shadow_writes: the tables ran into EMPTY_PT {EMPTY_PT:#x}")
    low, far, other = pt.walk(CODE_GPA).steps, pt.walk(FAR).steps, pt.walk(OTHER).steps
    page = ~(PAGE_SIZE - 1)
    return pt, {"pml4": pt.cr3, "pdpt": low[1].entry_addr & page, "pd_low": low[2].entry_addr & page,
                "pt_low": low[3].entry_addr & page, "pt_far": far[3].entry_addr & page,
                "pd_other": other[2].entry_addr & page, "pt_other": other[3].entry_addr & page,
                "empty_pt": EMPTY_PT}


def build(scenario: str, k: int) -> ShadowWrites:
    """The guest of ``scenario`` (a key of :data:`SCENARIOS`) doing ``k`` writes (0 .. MAX_K)."""
    if scenario not in SCENARIOS:
        raise GuestError(f"shadow_writes: unknown scenario {scenario!r}; choose one of "
                         f"{', '.join(SCENARIOS)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_K:
        raise GuestError(f"shadow_writes: k must be an integer in [0, {MAX_K:#x}], got {k!r}")
    mem = GuestMemory(MEM_SIZE, record=False)
    pt, tables = _tables(mem)
    for frame in (FRAME_A, FRAME_B, OTHER_FRAME):
        mem.write_u64(frame, frame)                  # each frame holds its own address
    if scenario == "leaf_pte":
        probe, look = CODE_GPA, FAR
        entry = pt.walk(FAR).steps[3].entry_addr
        values = (FRAME_B | _U, FRAME_A | _U)
    elif scenario == "own_pd":
        probe = CODE_GPA
        entry = look = tables["pd_low"] + 8 * OWN_PD_SLOT
        values = (EMPTY_PDE, EMPTY_PDE)
    else:
        probe = OTHER
        entry = look = tables["pd_other"] + 8 * OTHER_PD_SLOT
        values = (EMPTY_PDE, EMPTY_PDE)
    args = dict(probe=probe, entry=entry, value_odd=values[0], value_even=values[1], look=look, k=k)
    prog = code(**args)
    mem.write(CODE_GPA, prog)
    return ShadowWrites(scenario, k, mem, pt.cr3, CODE_GPA, STACK_TOP, probe, entry, values, look,
                        tables, prog, listing(**args))
