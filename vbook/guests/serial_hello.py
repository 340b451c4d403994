"""``serial_hello``: a guest that prints the way real software does — through the 16550 UART.

Real mode. First the UART is programmed as Linux's early serial console
does: LCR.DLAB = 1 turns ports 0x3f8/0x3f9 into the baud divisor latch
(DLL/DLM), divisor 1 gives 115200 baud (the UART's base clock / 16), then
LCR = 8N1 with DLAB = 0 gives the ports back to THR and IER. Then for each
byte: read LSR (0x3fd) until THRE says the transmit holding register is
empty, and write the byte to THR (0x3f8). Every one of those port accesses
is a ``KVM_EXIT_IO``; QEMU's ``serial_ioport_read`` / ``serial_ioport_write``
answer them (:mod:`vbook.devices.serial16550`). QEMU's UART transmits at
once, so every LSR read already has THRE set: one poll per byte.

Exits: OUT 0x3fb (DLAB), OUT 0x3f8 (DLL = 1), OUT 0x3f9 (DLM = 0), OUT 0x3fb
(8N1), then per byte of ``"Hello, 16550!\\n"`` IN 0x3fd and OUT 0x3f8, then
HLT: 33 exits.
"""

from __future__ import annotations

from vbook.devices.serial16550 import Lcr, Lsr, Reg
from vbook.guests.base import Guest
from vbook.guests.ports import COM1, LOAD_ADDR, MEM_SIZE, STACK_TOP

MESSAGE = "Hello, 16550!\n"
#: divisor latch value: 115200 / DIVISOR baud
DIVISOR = 1

LISTING = f"""\
# serial_hello - real mode: program the 16550 UART, then print polling LSR.THRE before each byte.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ COM1, {COM1:#x}              # the UART's base port (vbook.bus.COM1)
        .equ UART_TX, {Reg.TX:d}                # THR: transmit holding register (write)
        .equ UART_DLL, {Reg.DLL:d}               # divisor latch low (while LCR.DLAB = 1)
        .equ UART_DLM, {Reg.DLM:d}               # divisor latch high (while LCR.DLAB = 1)
        .equ UART_LCR, {Reg.LCR:d}               # line control
        .equ UART_LSR, {Reg.LSR:d}               # line status (read)
        .equ UART_LCR_DLAB, {Lcr.DLAB:#x}         # divisor latch access bit
        .equ UART_LCR_WLEN8, {Lcr.WLEN8:#x}        # 8 data bits, no parity, 1 stop bit
        .equ UART_LSR_THRE, {Lsr.THRE:#x}         # transmit holding register empty
        .equ DIVISOR, {DIVISOR}                 # 115200 / DIVISOR baud
_start:
        mov   dx, COM1 + UART_LCR
        mov   al, UART_LCR_DLAB
        out   dx, al                    # DLAB = 1: ports 0 and 1 are the divisor latch
        mov   dx, COM1 + UART_DLL
        mov   al, DIVISOR & 0xff
        out   dx, al
        mov   dx, COM1 + UART_DLM
        mov   al, DIVISOR >> 8
        out   dx, al
        mov   dx, COM1 + UART_LCR
        mov   al, UART_LCR_WLEN8
        out   dx, al                    # 8N1, DLAB = 0: port 0 is THR again
        mov   si, OFFSET msg - _start + LOAD_ADDR   # DS:SI -> message (DS = 0)
next:
        lodsb
        test  al, al
        jz    done                      # the NUL ends the message
        mov   bl, al
        mov   dx, COM1 + UART_LSR
wait:
        in    al, dx                    # KVM_EXIT_IO in: serial_ioport_read(LSR)
        test  al, UART_LSR_THRE
        jz    wait                      # not empty yet: poll again
        mov   al, bl
        mov   dx, COM1 + UART_TX
        out   dx, al                    # KVM_EXIT_IO out: serial_ioport_write(THR)
        jmp   next
done:
        hlt                             # KVM_EXIT_HLT
msg:
        .asciz "{MESSAGE.encode("unicode_escape").decode()}"
"""

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "bafb03b080eebaf803b001eebaf903b0"
    "00eebafb03b003eebe3310ac84c07412"
    "88c3bafd03eca82074fb88d8baf803ee"
    "ebe9f448656c6c6f2c20313635353021"
    "0a00"
)

GUEST = Guest(
    name="serial_hello",
    mode=16,
    code=CODE,
    listing=LISTING,
    description="programs the 16550 UART, then prints polling LSR.THRE before each THR write",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
)
