"""``debug_exit``: a device register in MMIO space, an address nobody claims, and a guest that ends QEMU.

The guest enters 32-bit protected mode with flat 4 GiB segments (real mode
cannot reach 0xff000000), then:

1. stores 42 into ``pc-testdev``'s MMIO window at 0xff000000 — a
   ``KVM_EXIT_MMIO`` write that QEMU routes through ``address_space_memory``
   to ``test_iomem_write`` (hw/misc/pc-testdev.c keeps it in a buffer);
2. loads it back — an MMIO read answered by ``test_iomem_read``;
3. adds the 4 bytes at 0xfe000000, where no region is: QEMU answers 0
   (``unassigned_mem_read``, ``MEMTX_DECODE_ERROR``, which ``kvm_cpu_exec``
   ignores);
4. writes the sum's low byte to ``isa-debug-exit`` (port 0x501), which
   asks QEMU to shut down and exit with status (42 << 1) | 1 = 85.

In QEMU that ends it: the main loop stops the vCPU before it gets further
(:mod:`vbook.models.run_loop`). A VMM loop without that device just goes on
and sees the ``HLT`` after it.

Exits: MMIO write 0xff000000/4 (2a 00 00 00), MMIO read 0xff000000/4, MMIO
read 0xfe000000/4, IO out 0x501/1 (2a), HLT.
"""

from __future__ import annotations

from vbook.devices.debug_exit import IOBASE
from vbook.devices.pc_testdev import IOMEM
from vbook.guests.base import Guest
from vbook.guests.ports import LOAD_ADDR, MEM_SIZE, STACK_TOP

#: the value stored in the MMIO register and finally written to isa-debug-exit
VALUE = 42
#: a guest-physical address no region of the machine covers (and no RAM)
NOTHING = 0xFE000000

LISTING = f"""\
# debug_exit - 32-bit protected mode: an MMIO register, unassigned space, then isa-debug-exit.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ CR0_PE, 1 << 0               # protected mode
        .equ CODE32, 0x08                 # GDT selector: flat 4 GiB code, 32-bit
        .equ DATA32, 0x10                 # GDT selector: flat 4 GiB data
        .equ IOMEM, {IOMEM:#x}            # pc-testdev-iomem (hw/misc/pc-testdev.c)
        .equ NOTHING, {NOTHING:#x}          # no region, no RAM
        .equ DEBUG_EXIT, {IOBASE:#x}            # isa-debug-exit iobase (hw/misc/debugexit.c)
        .equ VALUE, {VALUE}
_start:
        cli
        lgdt  [gdtr - _start + LOAD_ADDR]
        mov   eax, cr0
        or    eax, CR0_PE
        mov   cr0, eax
        jmp   CODE32:(protected - _start + LOAD_ADDR)
        .code32
protected:
        mov   ax, DATA32
        mov   ds, ax                    # flat segments: 0xff000000 is reachable
        mov   es, ax
        mov   ss, ax
        mov   dword ptr [IOMEM], VALUE  # KVM_EXIT_MMIO write: test_iomem_write
        mov   eax, dword ptr [IOMEM]    # KVM_EXIT_MMIO read: test_iomem_read -> 42
        add   eax, dword ptr [NOTHING]  # KVM_EXIT_MMIO read: unassigned_mem_read -> 0
        mov   dx, DEBUG_EXIT
        out   dx, al                    # KVM_EXIT_IO: debug_exit_write -> QEMU exits with 85
        hlt                             # reached only where nothing stops the vCPU
        .p2align 3
gdt:
        .quad 0                         # the null descriptor
        .quad 0x00cf9a000000ffff        # 0x08: flat 4 GiB code, 32-bit, DPL 0
        .quad 0x00cf92000000ffff        # 0x10: flat 4 GiB data, writable, DPL 0
gdtr:
        .word gdtr - gdt - 1            # limit
        .long gdt - _start + LOAD_ADDR  # base
"""

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "fa0f011658100f20c06683c8010f22c0"
    "ea1510080066b810008ed88ec08ed0c7"
    "05000000ff2a000000a1000000ff0305"
    "000000fe66ba0105eef4660f1f440000"
    "0000000000000000ffff0000009acf00"
    "ffff00000092cf00170040100000"
)

GUEST = Guest(
    name="debug_exit",
    mode=32,
    code=CODE,
    listing=LISTING,
    description="pc-testdev's MMIO register, an unassigned address, then isa-debug-exit (status 85)",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
)
