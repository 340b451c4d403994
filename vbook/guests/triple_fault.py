"""``triple_fault``: an exception that cannot be delivered — the machine shuts down.

The guest enters 32-bit protected mode (a flat code segment, no paging) with
an interrupt descriptor table of limit 0, and executes ``ud2``. The #UD
(vector 6) has no IDT entry within the limit, so the CPU raises #GP instead;
#GP's entry is beyond the limit too, which makes a double fault (#DF, vector
8); its entry is also out of reach, and a fault while delivering #DF is a
*triple fault*: the CPU shuts down. KVM reports it as ``KVM_EXIT_SHUTDOWN``
(QEMU then resets the machine).

Why protected mode: in real mode the same empty table should triple-fault as
well (an IVT entry beyond IDTR.limit is a #GP), and hardware does so, but
where KVM *emulates* real mode (e.g. a PVM host, or VMX without unrestricted
guest) ``__emulate_int_real`` in arch/x86/kvm/emulate.c reads the IVT entry
without checking the limit, so the exception is delivered to whatever
address is there. Protected mode is delivered by the CPU everywhere.

Exits: SHUTDOWN.
"""

from __future__ import annotations

from vbook.guests.base import Guest
from vbook.guests.ports import LOAD_ADDR, MEM_SIZE, STACK_TOP

LISTING = f"""\
# triple_fault - enter 32-bit protected mode with an empty IDT, then raise an exception.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ CR0_PE, 1 << 0               # protected mode
        .equ CODE32, 0x08                 # GDT selector of the 32-bit code segment
_start:
        cli
        lgdt  [gdtr - _start + LOAD_ADDR]
        lidt  [idt_empty - _start + LOAD_ADDR]    # IDTR.limit = 0: no vector can be delivered
        mov   eax, cr0
        or    eax, CR0_PE
        mov   cr0, eax
        jmp   CODE32:(protected - _start + LOAD_ADDR)
        .code32
protected:
        ud2                             # #UD -> #GP -> #DF -> triple fault: KVM_EXIT_SHUTDOWN
        hlt                             # never reached
        .p2align 3
gdt:
        .quad 0                         # the null descriptor
        .quad 0x00cf9a000000ffff        # 0x08: flat 4 GiB code, 32-bit, DPL 0
gdtr:
        .word gdtr - gdt - 1            # limit
        .long gdt - _start + LOAD_ADDR  # base
idt_empty:
        .word 0                         # limit 0
        .long 0                         # base
"""

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "fa0f011630100f011e36100f20c06683"
    "c8010f22c0ea1a1008000f0bf40f1f00"
    "0000000000000000ffff0000009acf00"
    "0f0020100000000000000000"
)

GUEST = Guest(
    name="triple_fault",
    mode=32,
    code=CODE,
    listing=LISTING,
    description="ud2 in protected mode with an empty IDT: #UD -> #GP -> #DF -> SHUTDOWN",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
)
