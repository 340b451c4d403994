"""``spin``: a runaway guest — ``jmp $`` forever, never an exit.

Nothing in it ever leaves the guest, so ``KVM_RUN`` would not come back on
its own. The backends turn this into an error instead of a hang: unicorn
stops after its instruction budget (:class:`~vbook.errors.BudgetExhausted`),
KVM after its time limit (:class:`~vbook.errors.RunTimeout`). Not in
``vbook.guests.ALL``; see ``vbook.guests.MISBEHAVING``.
"""

from __future__ import annotations

from vbook.guests.base import Guest
from vbook.guests.ports import LOAD_ADDR, MEM_SIZE, STACK_TOP

LISTING = f"""\
# spin - real mode: jump to itself forever.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
_start:
        jmp   _start                    # EB FE: no exit, ever
"""

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "ebfe"
)

GUEST = Guest(
    name="spin",
    mode=16,
    code=CODE,
    listing=LISTING,
    description="jmp $ forever: a runaway guest that never exits",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
)
