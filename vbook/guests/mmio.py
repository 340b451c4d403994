"""``mmio``: loads and stores to a device register — memory-mapped I/O.

Real mode, ES = 0xD000, so ``ES:0`` is guest-physical :data:`MMIO_BASE`, an
address with no memory slot. The CPU cannot complete such an access, KVM
decodes the instruction and returns to user space with ``KVM_EXIT_MMIO``
(address, length, direction, and for a store the bytes). For a load the VMM
answers with the bytes and the *next* ``KVM_RUN`` finishes the instruction.
An instruction that reads *and* writes (``inc byte ptr es:[...]``) costs two
exits: a read, then after the answer the write.

The device here is :class:`vbook.bus.SimpleBus`'s bank of latches: a read
returns what was last written to that address. The guest writes a 4-byte
value, reads it back into EBX and shows it on the pc-testdev port; writes
``'A'`` to a byte register, increments it in place and shows the result
(``'B'``) on COM1.

Exits: MMIO write 0xd0000/4 (78 56 34 12), MMIO read 0xd0000/4,
IO out 0xe0/4 (78 56 34 12), MMIO write 0xd0008/1 (41), MMIO read 0xd0008/1,
MMIO write 0xd0008/1 (42), MMIO read 0xd0008/1, IO out 0x3f8 'B', HLT.
"""

from __future__ import annotations

from vbook.guests.base import Guest
from vbook.guests.ports import COM1, LOAD_ADDR, MEM_SIZE, MMIO_BASE, STACK_TOP, TESTDEV_PORT

#: register offsets in the device's block at MMIO_BASE
REG_DATA = 0x0  # a 4-byte register
REG_CHAR = 0x8  # a 1-byte register

LISTING = f"""\
# mmio - real mode: store to and load from a device register at an address with no RAM.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ COM1, {COM1:#x}
        .equ TESTDEV_PORT, {TESTDEV_PORT:#x}
        .equ MMIO_BASE, {MMIO_BASE:#x}         # the device's registers: no memory slot here
        .equ REG_DATA, {REG_DATA:#x}               # 4-byte register
        .equ REG_CHAR, {REG_CHAR:#x}               # 1-byte register
_start:
        mov   ax, MMIO_BASE >> 4
        mov   es, ax                    # ES:0 = guest-physical MMIO_BASE
        mov   dword ptr es:[REG_DATA], 0x12345678   # KVM_EXIT_MMIO write, len 4
        mov   ebx, dword ptr es:[REG_DATA]          # KVM_EXIT_MMIO read, len 4 -> EBX
        mov   eax, ebx
        mov   dx, TESTDEV_PORT
        out   dx, eax                   # show what the device answered
        mov   byte ptr es:[REG_CHAR], 'A'           # MMIO write, len 1
        inc   byte ptr es:[REG_CHAR]                # read-modify-write: MMIO read, then write
        mov   cl, byte ptr es:[REG_CHAR]            # MMIO read, len 1 -> CL
        mov   al, cl
        mov   dx, COM1
        out   dx, al                    # 'B'
        hlt
"""

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "b800d08ec02666c70600007856341226"
    "668b1e00006689d8bae00066ef26c606"
    "08004126fe060800268a0e080088c8ba"
    "f803eef4"
)

GUEST = Guest(
    name="mmio",
    mode=16,
    code=CODE,
    listing=LISTING,
    description="stores to and loads from device registers at 0xd0000 (MMIO), echoes them",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
)
