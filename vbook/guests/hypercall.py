"""``hypercall``: the guest calls the hypervisor with ``VMCALL``.

Real mode. The hypercall ABI: the number in RAX, arguments in RBX, RCX, RDX,
RSI; ``VMCALL`` (``0F 01 C1``) exits to KVM, whose ``kvm_emulate_hypercall``
(:mod:`vbook.models.hypercall`) writes the result to RAX and skips the
instruction. Most hypercalls never reach user space: the VMM sees only what
the guest does with the result, here an ``OUT`` of EAX to the pc-testdev
port. Outside 64-bit mode KVM truncates everything to 32 bits, so an unknown
number gives EAX = 0xfffffc18 (-KVM_ENOSYS, -1000) and
``KVM_HC_VAPIC_POLL_IRQ`` gives 0.

Exits: IO out 0xe0/4 (18 fc ff ff), IO out 0xe0/4 (00 00 00 00), HLT.
(Some hosts never finish a VMCALL: on a PVM host KVM_RUN does not return.)
"""

from __future__ import annotations

from vbook.guests.base import Guest
from vbook.guests.ports import LOAD_ADDR, MEM_SIZE, STACK_TOP, TESTDEV_PORT
from vbook.models.kvm_api import Hypercall

#: a hypercall number no KVM knows: -KVM_ENOSYS
HC_UNKNOWN = 0xBAD

LISTING = f"""\
# hypercall - real mode: two VMCALLs, each result shown with OUT, then halt.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ TESTDEV_PORT, {TESTDEV_PORT:#x}
        .equ HC_UNKNOWN, {HC_UNKNOWN:#x}            # no such hypercall
        .equ KVM_HC_VAPIC_POLL_IRQ, {int(Hypercall.VAPIC_POLL_IRQ)}       # linux/kvm_para.h
_start:
        mov   eax, HC_UNKNOWN           # nr in RAX
        mov   ebx, 1                    # a0..a3 in RBX, RCX, RDX, RSI
        mov   ecx, 2
        mov   edx, 3
        mov   esi, 4
        vmcall                          # KVM: RAX = -KVM_ENOSYS, RIP += 3, back to the guest
        mov   dx, TESTDEV_PORT
        out   dx, eax                   # 0xfffffc18 (32 bits outside long mode)
        mov   eax, KVM_HC_VAPIC_POLL_IRQ
        vmcall                          # KVM: RAX = 0
        out   dx, eax
        hlt
"""

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "66b8ad0b000066bb0100000066b90200"
    "000066ba0300000066be040000000f01"
    "c1bae00066ef66b8010000000f01c166"
    "eff4"
)

GUEST = Guest(
    name="hypercall",
    mode=16,
    code=CODE,
    listing=LISTING,
    description="VMCALL an unknown nr (-1000) and KVM_HC_VAPIC_POLL_IRQ (0), OUT each result",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
)
