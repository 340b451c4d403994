"""``map_gpa_range``: the one hypercall KVM can hand to user space.

Real mode. ``KVM_HC_MAP_GPA_RANGE`` (nr 12; a0 = gpa, a1 = number of pages,
a2 = attributes) asks the host to change how guest memory is mapped
(confidential guests use it to share pages). KVM serves it only if the VMM
enabled ``KVM_CAP_EXIT_HYPERCALL`` for it; then ``KVM_RUN`` returns with
``KVM_EXIT_HYPERCALL`` and the VMM's answer goes to RAX on the next run.
Otherwise the guest gets -KVM_ENOSYS like any unknown hypercall.

Exits: by default IO out 0xe0/4 (18 fc ff ff), HLT. With
``hypercall_exit_enabled=1 << 12``: HYPERCALL (nr 12, args 0x8000, 2, 0),
then after the VMM answers 0: IO out 0xe0/4 (00 00 00 00), HLT.
"""

from __future__ import annotations

from vbook.guests.base import Guest
from vbook.guests.ports import LOAD_ADDR, MEM_SIZE, STACK_TOP, TESTDEV_PORT
from vbook.models.kvm_api import Hypercall

GPA = 0x8000  # page-aligned start of the range
NPAGES = 2
ATTRS = 0

LISTING = f"""\
# map_gpa_range - real mode: KVM_HC_MAP_GPA_RANGE, show the result with OUT, then halt.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ TESTDEV_PORT, {TESTDEV_PORT:#x}
        .equ KVM_HC_MAP_GPA_RANGE, {int(Hypercall.MAP_GPA_RANGE)}       # linux/kvm_para.h
_start:
        mov   eax, KVM_HC_MAP_GPA_RANGE
        mov   ebx, {GPA:#x}               # a0: guest-physical address (page aligned)
        mov   ecx, {NPAGES}                    # a1: number of 4 KiB pages
        mov   edx, {ATTRS}                    # a2: attributes
        xor   esi, esi                  # a3: unused
        vmcall                          # KVM_EXIT_HYPERCALL if the VMM asked for it
        mov   dx, TESTDEV_PORT
        out   dx, eax                   # the answer (or -KVM_ENOSYS)
        hlt
"""

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "66b80c00000066bb0080000066b90200"
    "000066ba000000006631f60f01c1bae0"
    "0066eff4"
)

GUEST = Guest(
    name="map_gpa_range",
    mode=16,
    code=CODE,
    listing=LISTING,
    description="KVM_HC_MAP_GPA_RANGE: a hypercall that can exit to user space",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
)
