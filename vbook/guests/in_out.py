"""``in_out``: the guest reads ports and echoes what it got — both directions of port I/O.

Real mode. An ``IN`` exits to user space *before* the value exists: KVM
returns from ``KVM_RUN`` with ``KVM_EXIT_IO`` (direction IN); the VMM writes
its answer into the data page, and the *next* ``KVM_RUN`` finishes the
instruction (``complete_userspace_io``), putting the answer in AL, AX or EAX
and leaving the rest of RAX alone. The guest reads three bytes from the
keyboard data port and echoes each to COM1, then one 2-byte and one 4-byte
value from the pc-testdev port and echoes them back there.

``inputs`` makes the device deterministic: the keyboard answers ``o``, ``k``,
newline; the test port ``0xBEEF`` then ``0xCAFEF00D``.

Exits: IN 0x60/1, OUT 0x3f8 'o', IN 0x60/1, OUT 'k', IN 0x60/1, OUT '\\n',
IN 0xe0/2, OUT 0xe0/2 (ef be), IN 0xe0/4, OUT 0xe0/4 (0d f0 fe ca), HLT.
"""

from __future__ import annotations

from vbook.guests.base import Guest
from vbook.guests.ports import COM1, KBD_DATA, LOAD_ADDR, MEM_SIZE, STACK_TOP, TESTDEV_PORT

#: the value RAX holds before the first IN: its upper bytes must survive a 1-byte IN
RAX_BEFORE = 0x11223344

INPUTS = {KBD_DATA: (ord("o"), ord("k"), ord("\n")), TESTDEV_PORT: (0xBEEF, 0xCAFEF00D)}

LISTING = f"""\
# in_out - real mode: read ports, echo each value, then halt.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ COM1, {COM1:#x}              # serial port data register
        .equ KBD_DATA, {KBD_DATA:#x}            # i8042 keyboard data port
        .equ TESTDEV_PORT, {TESTDEV_PORT:#x}        # QEMU pc-testdev port
_start:
        mov   eax, {RAX_BEFORE:#x}       # IN writes only AL / AX / EAX: the rest stays
        mov   cx, 3
again:
        in    al, KBD_DATA              # KVM_EXIT_IO in, size 1; the next KVM_RUN fills AL
        mov   dx, COM1
        out   dx, al                    # echo the byte on the serial port
        loop  again                     # CX -= 1, three times
        mov   dx, TESTDEV_PORT
        in    ax, dx                    # size 2: AX = answer
        out   dx, ax                    # echo it
        in    eax, dx                   # size 4: EAX = answer
        out   dx, eax                   # echo it
        hlt
"""

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "66b844332211b90300e460baf803eee2"
    "f8bae000edef66ed66eff4"
)

GUEST = Guest(
    name="in_out",
    mode=16,
    code=CODE,
    listing=LISTING,
    description="reads ports 0x60 and 0xe0 with IN (1, 2, 4 bytes) and echoes each with OUT",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
    inputs=INPUTS,
)
