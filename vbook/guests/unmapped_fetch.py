"""``unmapped_fetch``: the guest jumps to an address with no RAM and tries to run there.

Real mode. A far jump to segment ``MEM_SIZE >> 4`` puts CS:IP on the first
guest-physical byte past RAM. There is no memory slot there, so there are no
instructions to fetch: KVM cannot emulate an instruction it cannot read.
Not in ``vbook.guests.ALL``; see ``vbook.guests.MISBEHAVING``.
"""

from __future__ import annotations

from vbook.guests.base import Guest
from vbook.guests.ports import LOAD_ADDR, MEM_SIZE, STACK_TOP

LISTING = f"""\
# unmapped_fetch - real mode: jump past the end of RAM.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ MEM_SIZE, {MEM_SIZE:#x}            # RAM is guest-physical 0 .. MEM_SIZE
_start:
        jmp   (MEM_SIZE >> 4):0         # CS:IP = first byte past RAM
"""

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "ea00000010"
)

GUEST = Guest(
    name="unmapped_fetch",
    mode=16,
    code=CODE,
    listing=LISTING,
    description="far-jumps past the end of RAM: an instruction fetch with no memory there",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
)
