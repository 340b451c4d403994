"""``touch_pages``: a 64-bit ring-3 guest that stores one byte into each of N fresh 4 KiB pages.

The guest of chapter 05's shadow-paging measurement (reference/machine.md,
"Shadow paging shows at CPL3"). It does not switch modes itself: the VMM starts
it in 64-bit mode at CPL 3 with :func:`vbook.backends.long_mode.start_in_long_mode`
on page tables :func:`build` makes with :class:`vbook.models.paging.PageTables`:
the low 2 MiB identity-mapped with 4 KiB pages, ``RW | US``, A = D = 0.

One pass: fetch from the code page (``CODE_GPA``), store ``cl`` to the first
byte of each of the N pages at ``DATA``, ``DATA + 4 KiB``, ..., then
``OUT TESTDEV_PORT, eax`` with eax = N — the exit that gives the VMM control
back (at CPL 3 a ``HLT`` would raise #GP with no IDT: a triple fault, SHUTDOWN).
Then it jumps back to ``_start``: the next ``KVM_RUN`` re-enters the same loop,
a second pass over the same pages in the same VM.

Guest memory of the image (GPA = GVA):

* 0x1000 GDT, 0x2000 TSS + I/O bitmap (written by ``start_in_long_mode``);
* 0x8000 the page tables (PML4, PDPT, PD, PT);
* 0x10000 the code; 0x11000 the (unused) stack page, RSP = 0x12000;
* 0x20000 the first data page.

The GDT/TSS, the tables, the code and the data lie in different 32 KiB-aligned
groups of 8 gptes, so ``FNAME(pte_prefetch)`` after one fault never reaches a
page of another role.

Exits: IO out 0xe0/4 (N as 4 bytes), once per pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from vbook.errors import GuestError
from vbook.guests.base import Guest
from vbook.guests.ports import TESTDEV_PORT
from vbook.memory import GuestMemory
from vbook.models.paging import PAGE_SIZE, PageTables, PteFlags

MEM_SIZE = 0x200000              # 2 MiB, all identity-mapped
TABLES = 0x8000                  # PageTables' allocator: [TABLES, CODE_GPA)
CODE_GPA = 0x10000
STACK_TOP = 0x12000
DATA = 0x20000
#: the most pages the 2 MiB above DATA hold
MAX_PAGES = (MEM_SIZE - DATA) // PAGE_SIZE
#: pages of the shipped CODE
N_PAGES = 4


def listing(pages: int = N_PAGES, data: int = DATA) -> str:
    """The program for ``pages`` data pages from ``data``."""
    return f"""\
# touch_pages - 64-bit, CPL 3: one store per 4 KiB page, then an OUT, then again.
        .intel_syntax noprefix
        .code64
        .equ DATA, {data:#x}                  # the first data page (GVA = GPA)
        .equ PAGES, {pages}                     # how many pages to touch
        .equ TESTDEV_PORT, {TESTDEV_PORT:#x}
_start:
        mov   edi, DATA                 # rdi: the page to touch (zero-extended)
        mov   ecx, PAGES
        test  ecx, ecx
        jz    done
touch:
        mov   byte ptr [rdi], cl        # one store into this page: PAGES, PAGES-1, ..., 1
        add   rdi, 0x1000               # the next 4 KiB page
        dec   ecx
        jnz   touch
done:
        mov   eax, PAGES
        out   TESTDEV_PORT, eax         # allowed at CPL 3 by the TSS I/O bitmap; exit to the VMM
        jmp   _start                    # the next KVM_RUN: a second pass
"""


LISTING = listing()

# CODE is LISTING assembled with GNU as + objcopy (tests/test_shadow_kvm.py re-assembles and compares).
CODE = bytes.fromhex(
    "bf00000200b90400000085c9740d880f"
    "4881c700100000ffc975f3b804000000"
    "e7e0ebdc"
)

#: where the immediates sit in CODE: ``mov edi, DATA``, ``mov ecx, PAGES``, ``mov eax, PAGES``
_DATA_AT, _PAGES_AT, _SHOWN_AT = 1, 6, 0x1C


def code(pages: int, data: int = DATA) -> bytes:
    """CODE with ``pages`` and ``data`` patched in (the bytes of :func:`listing` of them)."""
    code = bytearray(CODE)
    code[_DATA_AT:_DATA_AT + 4] = data.to_bytes(4, "little")
    code[_PAGES_AT:_PAGES_AT + 4] = pages.to_bytes(4, "little")
    code[_SHOWN_AT:_SHOWN_AT + 4] = pages.to_bytes(4, "little")
    return bytes(code)


@dataclass(frozen=True)
class TouchPages:
    """A built guest: its memory image, where to start it, and what one pass touches."""

    mem: GuestMemory
    cr3: int
    rip: int
    rsp: int
    touched: tuple[int, ...]    #: the GVAs stored to, in order (one per page)
    code: bytes
    listing: str

    def __iter__(self):  # noqa: ANN204
        return iter((self.mem, self.cr3, self.rip, self.rsp, self.touched))

    @property
    def fetched(self) -> int:
        """The code page's GVA: the first access of a pass (an instruction fetch)."""
        return self.rip & ~(PAGE_SIZE - 1)

    def accesses(self) -> list[tuple[int, str]]:
        """One pass as (GVA, "x" | "w") in program order, one per page: fetch, then the stores."""
        return [(self.fetched, "x")] + [(gva, "w") for gva in self.touched]

    def guest(self) -> Guest:
        """A :class:`~vbook.guests.base.Guest` to open the VM with (its RAM size, its code)."""
        return Guest(name=f"touch_pages_{len(self.touched)}", mode=64, code=self.code,
                     listing=self.listing, description=__doc__.splitlines()[0],
                     load_addr=CODE_GPA, mem_size=MEM_SIZE, stack_top=STACK_TOP)


def build(n: int, data: int = DATA) -> TouchPages:
    """The guest for ``n`` pages (0..MAX_PAGES): tables, code and data in a fresh image.

    The result unpacks as ``mem, cr3, rip, rsp, touched = build(n)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n:
        raise GuestError(f"touch_pages: n must be a non-negative integer, got {n!r}")
    if data % PAGE_SIZE or data < STACK_TOP or data + n * PAGE_SIZE > MEM_SIZE:
        raise GuestError(f"touch_pages: {n} pages from {data:#x} do not fit in "
                         f"[{STACK_TOP:#x}, {MEM_SIZE:#x}) page-aligned")
    mem = GuestMemory(MEM_SIZE, record=False)
    pt = PageTables(mem, TABLES, alloc_limit=CODE_GPA)
    for gpa in range(0, MEM_SIZE, PAGE_SIZE):
        pt.map(gpa, gpa, flags=PteFlags.RW | PteFlags.US)
    prog = code(n, data)
    mem.write(CODE_GPA, prog)
    touched = tuple(data + i * PAGE_SIZE for i in range(n))
    return TouchPages(mem, pt.cr3, CODE_GPA, STACK_TOP, touched, prog, listing(n, data))
