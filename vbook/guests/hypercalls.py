"""``hypercalls``: a 64-bit guest kernel calls the hypervisor, and its user program tries to.

The guest switches itself to 64-bit mode (as ``long_mode`` does, with the
U/S bit set in its identity page tables so ring 3 may use the same 2 MiB
page) and loads a GDT that has what a small kernel needs to have a user
program: ring-0 and ring-3 code and data segments, a 64-bit TSS (whose RSP0
is the kernel stack) and a 64-bit *call gate* into the kernel.

1. **Ring 0** walks :data:`TABLE`: for each entry it loads nr into RAX and
   a0..a3 into RBX, RCX, RDX, RSI (the KVM hypercall ABI), executes
   ``VMCALL`` and stores RAX in the results array at :data:`RESULTS`.
2. It drops to **ring 3** with ``IRETQ``. The user program makes the first
   hypercall of the table again, ``VMCALL`` with RAX = 1: KVM looks at the
   CPL before anything else and answers ``-KVM_EPERM``.
3. The user program then does what user code does to get a service: it
   *calls its own kernel*, through the call gate (a 32-bit-era system-call
   mechanism; 64-bit Linux uses ``SYSCALL``). That is a privilege change
   inside the guest: no VM exit. Back in ring 0, the kernel makes the same
   hypercall on the user's behalf (0), stores it, and halts.

Every ``VMCALL`` is a VM exit that KVM handles in the kernel
(``kvm_emulate_hypercall``): the VMM sees none of them. Its only exit is the
final HLT — unless it enabled ``KVM_CAP_EXIT_HYPERCALL`` for
``KVM_HC_MAP_GPA_RANGE``: then the 7th hypercall comes to user space as
``KVM_EXIT_HYPERCALL`` and the VMM's answer is what the guest stores.

Exits: HLT (with ``hypercall_exit_enabled=1 << 12``: HYPERCALL nr 12, then
HLT). The results array (RAX after each of the 10 hypercalls of
:data:`CALLS`): :func:`read_results`.
"""

from __future__ import annotations

from typing import Any

from vbook.guests.base import Guest
from vbook.guests.ports import LOAD_ADDR, MEM_SIZE, STACK_TOP
from vbook.models.kvm_api import Hypercall

#: where the guest builds its page tables (in its own RAM)
PML4, PDPT, PD = 0x2000, 0x3000, 0x4000
#: the results array: RAX after each hypercall, 8 bytes each, in order
RESULTS = 0x5000
#: the user program's stack and the kernel stack (TSS.RSP0, used by the call gate)
USER_STACK_TOP, KERNEL_STACK_TOP = 0x6000, 0x7000
#: the page KVM_HC_MAP_GPA_RANGE names (a0) and its length in pages (a1)
MAP_GPA, MAP_NPAGES = 0x8000, 2
#: KVM_CLOCK_PAIRING_WALLCLOCK is 0; 1 is no clock KVM knows
BAD_CLOCK_TYPE = 1
#: a number whose low 32 bits are KVM_HC_VAPIC_POLL_IRQ: a 64-bit guest gets -KVM_ENOSYS
WIDE_NR = (1 << 32) | int(Hypercall.VAPIC_POLL_IRQ)

#: what ring 0 asks for, in order: (what, nr, (a0, a1, a2, a3))
TABLE: tuple[tuple[str, int, tuple[int, int, int, int]], ...] = (
    ("KVM_HC_VAPIC_POLL_IRQ", int(Hypercall.VAPIC_POLL_IRQ), (0, 0, 0, 0)),
    ("KVM_HC_MMU_OP", int(Hypercall.MMU_OP), (0, 0, 0, 0)),
    ("KVM_HC_KICK_CPU: flags 0, APIC ID 0", int(Hypercall.KICK_CPU), (0, 0, 0, 0)),
    ("KVM_HC_CLOCK_PAIRING: clock_type 1", int(Hypercall.CLOCK_PAIRING),
     (RESULTS + 0x100, BAD_CLOCK_TYPE, 0, 0)),
    ("KVM_HC_SCHED_YIELD: APIC ID 0", int(Hypercall.SCHED_YIELD), (0, 0, 0, 0)),
    ("nr 0x100000001 (upper half set)", WIDE_NR, (0, 0, 0, 0)),
    ("KVM_HC_MAP_GPA_RANGE: 2 pages at 0x8000", int(Hypercall.MAP_GPA_RANGE),
     (MAP_GPA, MAP_NPAGES, 0, 0)),
    ("unknown nr 0xbad", 0xBAD, (1, 2, 3, 4)),
)
#: the two hypercalls after the table: (what, nr, args, CPL)
AFTER: tuple[tuple[str, int, tuple[int, int, int, int], int], ...] = (
    ("KVM_HC_VAPIC_POLL_IRQ from ring 3", int(Hypercall.VAPIC_POLL_IRQ), (0, 0, 0, 0), 3),
    ("KVM_HC_VAPIC_POLL_IRQ via the call gate", int(Hypercall.VAPIC_POLL_IRQ), (0, 0, 0, 0), 0),
)
#: every hypercall the guest makes: (what, nr, args, CPL)
CALLS: tuple[tuple[str, int, tuple[int, int, int, int], int], ...] = (
    tuple((what, nr, args, 0) for what, nr, args in TABLE) + AFTER)


def read_results(vcpu: Any) -> list[int]:
    """RAX after each of the guest's hypercalls, as it stored them at :data:`RESULTS`.

    ``vcpu`` is any backend's vCPU (``read_memory``) after the guest ran;
    entries it did not reach hold 0.
    """
    raw = vcpu.read_memory(RESULTS, 8 * len(CALLS))
    return [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]


def _quads(values: tuple[int, ...]) -> str:
    return ", ".join(f"{v:#x}" for v in values)


_TABLE_LINES = "\n".join(
    f"        .quad {_quads((nr, *args))}"
    + " " * max(1, 40 - len(_quads((nr, *args)))) + f"# {what}"
    for what, nr, args in TABLE)

LISTING = f"""\
# hypercalls - 64-bit: a guest kernel makes hypercalls, its ring-3 program may not.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ PML4, {PML4:#x}                # identity page tables, in guest RAM
        .equ PDPT, {PDPT:#x}
        .equ PD, {PD:#x}
        .equ RESULTS, {RESULTS:#x}             # RAX after each hypercall, 8 bytes each
        .equ USER_STACK_TOP, {USER_STACK_TOP:#x}
        .equ KERNEL_STACK_TOP, {KERNEL_STACK_TOP:#x}      # TSS.RSP0: the call gate switches to it
        .equ NCALLS, {len(TABLE)}                    # entries of the table below
        .equ KVM_HC_VAPIC_POLL_IRQ, {int(Hypercall.VAPIC_POLL_IRQ)}       # linux/kvm_para.h
        .equ PTE_P, 1 << 0
        .equ PTE_RW, 1 << 1
        .equ PTE_US, 1 << 2               # user (ring 3) may use the page
        .equ PTE_PS, 1 << 7               # (in a PD entry) a 2 MiB page
        .equ CR0_PE, 1 << 0
        .equ CR0_PG, 1 << 31
        .equ CR4_PAE, 1 << 5
        .equ MSR_EFER, 0xc0000080
        .equ EFER_LME, 1 << 8
        .equ KCODE, 0x08                  # GDT selectors (see gdt: below)
        .equ KDATA, 0x10
        .equ UDATA, 0x18
        .equ UCODE, 0x20
        .equ TSS_SEL, 0x28
        .equ GATE, 0x38
        .equ RPL3, 3
_start:
        cli
        xor   ax, ax
        mov   es, ax
        mov   edi, PML4                 # clear the three tables
        mov   ecx, 3 * 4096 / 4
        xor   eax, eax
        cld
        rep stosd
        mov   dword ptr [PML4], PDPT | PTE_P | PTE_RW | PTE_US
        mov   dword ptr [PDPT], PD | PTE_P | PTE_RW | PTE_US
        mov   dword ptr [PD], 0 | PTE_P | PTE_RW | PTE_US | PTE_PS   # GVA 0..2 MiB -> GPA 0..2 MiB
        lgdt  [gdtr - _start + LOAD_ADDR]
        mov   eax, cr4
        or    eax, CR4_PAE
        mov   cr4, eax
        mov   eax, PML4
        mov   cr3, eax
        mov   ecx, MSR_EFER
        rdmsr
        or    eax, EFER_LME
        wrmsr
        mov   eax, cr0
        or    eax, CR0_PG | CR0_PE
        mov   cr0, eax
        jmp   KCODE:(kernel - _start + LOAD_ADDR)
        .code64
kernel:                                 # ring 0, 64-bit
        mov   ax, KDATA
        mov   ds, ax
        mov   es, ax
        mov   ss, ax
        mov   esp, KERNEL_STACK_TOP
        mov   ax, TSS_SEL
        ltr   ax
        mov   r12d, table - _start + LOAD_ADDR
        mov   r13d, RESULTS
        mov   r14d, NCALLS
next:
        mov   rax, [r12]                # nr in RAX
        mov   rbx, [r12 + 8]            # a0..a3 in RBX, RCX, RDX, RSI
        mov   rcx, [r12 + 16]
        mov   rdx, [r12 + 24]
        mov   rsi, [r12 + 32]
        vmcall                          # VM exit -> kvm_emulate_hypercall -> RAX
        mov   [r13], rax
        add   r12, 40
        add   r13, 8
        dec   r14d
        jnz   next
        push  UDATA | RPL3              # IRETQ to ring 3: SS, RSP, RFLAGS, CS, RIP
        push  USER_STACK_TOP
        push  0x2
        push  UCODE | RPL3
        push  user - _start + LOAD_ADDR
        iretq
user:                                   # ring 3
        mov   eax, KVM_HC_VAPIC_POLL_IRQ
        xor   ebx, ebx
        xor   ecx, ecx
        xor   edx, edx
        xor   esi, esi
        vmcall                          # CPL 3: -KVM_EPERM, whatever nr is
        mov   [r13], rax
        add   r13, 8
        call  fword ptr [gate_ptr - _start + LOAD_ADDR]   # a system call: into ring 0
syscall:                                # ring 0 again, on the TSS.RSP0 stack
        mov   eax, KVM_HC_VAPIC_POLL_IRQ
        vmcall                          # the kernel asks on the user's behalf: 0
        mov   [r13], rax
        hlt
        .p2align 3
table:                                  # nr, a0, a1, a2, a3
{_TABLE_LINES}
gate_ptr:
        .long 0                         # offset: ignored for a call gate
        .word GATE | RPL3
        .p2align 3
gdt:
        .quad 0                         # null
        .quad 0x00af9a000000ffff        # 0x08 KCODE: 64-bit code, DPL 0
        .quad 0x00cf92000000ffff        # 0x10 KDATA: data, DPL 0
        .quad 0x00cff2000000ffff        # 0x18 UDATA: data, DPL 3
        .quad 0x00affa000000ffff        # 0x20 UCODE: 64-bit code, DPL 3
        .word 0x67                      # 0x28 TSS: limit, base 15:0
        .word tss - _start + LOAD_ADDR
        .byte 0, 0x89, 0, 0             # base 23:16, present 64-bit TSS, base 31:24
        .quad 0                         # base 63:32, reserved
        .word syscall - _start + LOAD_ADDR   # 0x38 GATE: offset 15:0
        .word KCODE                     # target selector
        .byte 0, 0xec                   # present, DPL 3, 64-bit call gate
        .word 0                         # offset 31:16
        .quad 0                         # offset 63:32, reserved
gdtr:
        .word gdtr - gdt - 1
        .long gdt - _start + LOAD_ADDR
        .p2align 3
tss:                                    # 64-bit TSS: only RSP0 matters here
        .long 0
        .quad KERNEL_STACK_TOP          # RSP0
        .fill 0x68 - 12, 1, 0
"""

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "fa31c08ec066bf0020000066b9000c00"
    "006631c0fc66f3ab66c7060020073000"
    "0066c70600300740000066c706004087"
    "0000000f011690120f20e06683c8200f"
    "22e066b8002000000f22d866b9800000"
    "c00f32660d000100000f300f20c0660d"
    "010000800f22c0ea6c10080066b81000"
    "8ed88ec08ed0bc0070000066b828000f"
    "00d841bc0011000041bd0050000041be"
    "08000000498b0424498b5c2408498b4c"
    "2410498b542418498b7424200f01c149"
    "8945004983c4284983c50841ffce75d4"
    "6a1b68006000006a026a2368d2100000"
    "48cfb80100000031db31c931d231f60f"
    "01c1498945004983c508ff1c25401200"
    "00b8010000000f01c149894500f46690"
    "01000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000200000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "05000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000900000000000000"
    "00510000000000000100000000000000"
    "00000000000000000000000000000000"
    "0b000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000100000001000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "0c000000000000000080000000000000"
    "02000000000000000000000000000000"
    "0000000000000000ad0b000000000000"
    "01000000000000000200000000000000"
    "03000000000000000400000000000000"
    "000000003b0066900000000000000000"
    "ffff0000009aaf00ffff00000092cf00"
    "ffff000000f2cf00ffff000000faaf00"
    "67009812008900000000000000000000"
    "f110080000ec00000000000000000000"
    "47004812000066900000000000700000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
    "00000000000000000000000000000000"
)

GUEST = Guest(
    name="hypercalls",
    mode=64,
    code=CODE,
    listing=LISTING,
    description="a 64-bit guest kernel makes 9 hypercalls; its ring-3 program gets -KVM_EPERM",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
)
