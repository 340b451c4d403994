"""``hello``: the smallest guest that talks — a greeting on the serial port.

Real mode. The guest points DS:SI at its message and writes it to COM1 one
byte at a time. A port access is something the CPU cannot finish inside the
guest, so every ``OUT`` is one VM exit that reaches user space as
``KVM_EXIT_IO`` (direction OUT, size 1, port 0x3f8, the byte in the data
page); the VMM prints the byte and runs the vCPU again. ``HLT`` ends it with
``KVM_EXIT_HLT`` (no in-kernel interrupt controller, so nothing could wake it).

Exits: 12 x IO out 0x3f8 (``"Hello, KVM!\\n"``), then HLT.
"""

from __future__ import annotations

from vbook.guests.base import Guest
from vbook.guests.ports import COM1, LOAD_ADDR, MEM_SIZE, STACK_TOP

MESSAGE = "Hello, KVM!\n"

LISTING = f"""\
# hello - real mode: write a greeting to the serial port, one OUT per byte, then halt.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}         # loaded here; starts at CS:IP = 0:LOAD_ADDR
        .equ COM1, {COM1:#x}              # serial port data register (vbook.bus.COM1)
_start:
        mov   dx, COM1
        mov   si, OFFSET msg - _start + LOAD_ADDR   # DS:SI -> message (DS = 0)
next:
        lodsb                           # AL = [DS:SI], SI += 1
        test  al, al
        jz    done                      # the NUL ends the message
        out   dx, al                    # KVM_EXIT_IO: the VMM prints AL
        jmp   next
done:
        hlt                             # KVM_EXIT_HLT
msg:
        .asciz "{MESSAGE.encode("unicode_escape").decode()}"
"""

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "baf803be0f10ac84c07403eeebf8f448"
    "656c6c6f2c204b564d210a00"
)

GUEST = Guest(
    name="hello",
    mode=16,
    code=CODE,
    listing=LISTING,
    description="prints 'Hello, KVM!' on COM1, one OUT per byte",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
)
