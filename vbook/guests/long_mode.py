"""``long_mode``: from real mode to 64-bit mode by hand, then port and MMIO exits there.

The guest does what a boot loader does before it can run 64-bit code:

1. builds identity page tables in its own RAM: PML4[0] -> PDPT[0] -> PD[0],
   one 2 MiB page covering guest-physical 0..2 MiB (RAM *and* MMIO_BASE);
2. loads a GDT with a 64-bit code segment (L = 1);
3. sets CR4.PAE, points CR3 at the PML4, sets EFER.LME (``wrmsr``
   0xC0000080) and then CR0.PG | CR0.PE: the CPU is now in IA-32e mode;
4. far-jumps to the 64-bit code segment.

In 64-bit mode it writes ``"64\\n"`` to COM1, stores 8 bytes to a device
register and loads them back into R9 — one ``KVM_EXIT_MMIO`` of length 8 each
way — and shows the value on the pc-testdev port in two 4-byte halves.

On KVM the VMM must give the vCPU a CPUID that has long mode
(``KVM_SET_CPUID2``); with the empty default CPUID the ``wrmsr`` of EFER.LME
raises #GP. On unicorn the same code runs as written (vbook opens unicorn in
its 64-bit mode and loads the real-mode register state of a reset CPU).

Exits: IO out 0x3f8 '6', '4', '\\n'; MMIO write 0xd0010/8 (88 77 66 55 44 33 22 11);
MMIO read 0xd0010/8; IO out 0xe0/4 (88 77 66 55); IO out 0xe0/4 (44 33 22 11); HLT.
"""

from __future__ import annotations

from vbook.guests.base import Guest
from vbook.guests.ports import COM1, LOAD_ADDR, MEM_SIZE, MMIO_BASE, STACK_TOP, TESTDEV_PORT

#: where the guest builds its page tables (in its own RAM)
PML4, PDPT, PD = 0x2000, 0x3000, 0x4000
#: the 8-byte device register it uses in 64-bit mode
REG_WIDE = 0x10
#: the value it stores there
WIDE_VALUE = 0x1122334455667788

LISTING = f"""\
# long_mode - real mode -> long mode (identity paging, 2 MiB page), then OUT and MMIO.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ COM1, {COM1:#x}
        .equ TESTDEV_PORT, {TESTDEV_PORT:#x}
        .equ MMIO_BASE, {MMIO_BASE:#x}
        .equ REG_WIDE, {REG_WIDE:#x}               # an 8-byte device register
        .equ PML4, {PML4:#x}                # page tables, in guest RAM
        .equ PDPT, {PDPT:#x}
        .equ PD, {PD:#x}
        .equ PTE_P, 1 << 0                # present
        .equ PTE_RW, 1 << 1               # writable
        .equ PTE_PS, 1 << 7               # (in a PD entry) a 2 MiB page
        .equ CR0_PE, 1 << 0               # protected mode
        .equ CR0_PG, 1 << 31              # paging
        .equ CR4_PAE, 1 << 5              # 64-bit page-table entries
        .equ MSR_EFER, 0xc0000080
        .equ EFER_LME, 1 << 8             # long mode enable
        .equ CODE64, 0x08                 # GDT selector of the 64-bit code segment
_start:
        cli
        xor   ax, ax
        mov   es, ax
        mov   edi, PML4                 # clear the three tables: ES:DI, ECX dwords
        mov   ecx, 3 * 4096 / 4
        xor   eax, eax
        cld
        rep stosd
        mov   dword ptr [PML4], PDPT | PTE_P | PTE_RW
        mov   dword ptr [PDPT], PD | PTE_P | PTE_RW
        mov   dword ptr [PD], 0 | PTE_P | PTE_RW | PTE_PS   # GVA 0..2 MiB -> GPA 0..2 MiB
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
        or    eax, CR0_PG | CR0_PE      # paging + protection at once: IA-32e mode
        mov   cr0, eax
        jmp   CODE64:(long_mode - _start + LOAD_ADDR)   # load CS.L = 1: 64-bit code
        .code64
long_mode:
        mov   dx, COM1
        mov   al, '6'
        out   dx, al
        mov   al, '4'
        out   dx, al
        mov   al, 0x0a                  # newline
        out   dx, al
        movabs rax, {WIDE_VALUE:#x}
        mov   qword ptr [MMIO_BASE + REG_WIDE], rax   # one MMIO write of 8 bytes
        mov   r9, qword ptr [MMIO_BASE + REG_WIDE]    # one MMIO read of 8 bytes -> R9
        mov   rax, r9
        mov   dx, TESTDEV_PORT
        out   dx, eax                   # low half
        shr   rax, 32
        out   dx, eax                   # high half
        hlt
        .p2align 3
gdt:
        .quad 0                         # the null descriptor
        .quad 0x00af9a000000ffff        # 0x08: code, present, DPL 0, L = 1 (64-bit)
gdtr:
        .word gdtr - gdt - 1            # limit
        .long gdt - _start + LOAD_ADDR  # base
"""

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "fa31c08ec066bf0020000066b9000c00"
    "006631c0fc66f3ab66c7060020033000"
    "0066c70600300340000066c706004083"
    "0000000f0116b8100f20e06683c8200f"
    "22e066b8002000000f22d866b9800000"
    "c00f32660d000100000f300f20c0660d"
    "010000800f22c0ea6c10080066baf803"
    "b036eeb034eeb00aee48b88877665544"
    "3322114889042510000d004c8b0c2510"
    "000d004c89c866bae000ef48c1e820ef"
    "f40f1f80000000000000000000000000"
    "ffff0000009aaf000f00a8100000"
)

GUEST = Guest(
    name="long_mode",
    mode=64,
    code=CODE,
    listing=LISTING,
    description="switches itself to 64-bit mode, then prints '64' and does 8-byte MMIO",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
)
