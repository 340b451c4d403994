"""The unicorn backend exits like KVM: exact exit sequences, completion, RIP, errors.

Expected RIPs follow Linux 6.1 on VMX (the default, ``pio_rip="vmx"``): RIP on
an IN, an OUT or an MMIO load when it exits, past an MMIO store, a HLT, an
OUTS or an OUT to port 0x7e. With ``pio_rip="pvm"`` they are the ones measured
on the PVM host's /dev/kvm for the same guests (KVM's instruction emulator:
the same, but past every OUT). Tests that also run a guest on /dev/kvm skip
without it.
"""

from __future__ import annotations

import sys

import pytest

from vbook.backends import available, open_vcpu
from vbook.backends.base import Exit, HypercallExit, IoExit, MmioExit, Regs
from vbook.errors import (
    BackendUnavailable,
    BudgetExhausted,
    GuestError,
    GuestFault,
    HypercallNotCompleted,
    MemoryAccessError,
    VbookError,
)
from vbook.guests import ALL, EXTRA, MISBEHAVING, build
from vbook.guests.base import Guest
from vbook.models.kvm_api import ExitReason, IoDirection
from vbook.runner import run_guest

pytest.importorskip("unicorn", reason="the unicorn package is not installed")

from vbook.backends.unicorn_cpu import UnicornVcpu  # noqa: E402

IN, OUT = IoDirection.IN, IoDirection.OUT


def out(port, data):
    return Exit(ExitReason.IO, io=IoExit(OUT, len(data), port, 1, data))


def in_(port, size):
    return Exit(ExitReason.IO, io=IoExit(IN, size, port, 1))


def mmio_w(addr, data):
    return Exit(ExitReason.MMIO, mmio=MmioExit(addr, len(data), True, data))


def mmio_r(addr, size):
    return Exit(ExitReason.MMIO, mmio=MmioExit(addr, size, False))


HLT = Exit(ExitReason.HLT)
SHUTDOWN = Exit(ExitReason.SHUTDOWN, detail="triple fault")


# --- small test-only guests (listing + bytes; test_test_guests_assemble checks them) --------

def _guest(name, code_hex, listing, mode=16):
    return Guest(name, mode, bytes.fromhex(code_hex), listing)


INT3_REAL = _guest("int3_real", "ccf4", """\
        .intel_syntax noprefix
        .code16
_start: int3                            # real mode, IVT limit 0xffff: deliverable
        hlt
""")

UD2_EMPTY_IVT = _guest("ud2_empty_ivt", "0f011e08100f0bf4000000000000", """\
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, 0x1000
_start: lidt  [idt - _start + LOAD_ADDR]   # IVT limit 0
        ud2                             # #UD -> #GP -> #DF: nothing deliverable
        hlt
idt:    .word 0
        .long 0
""")

INT32_GP = _guest("int32_gp", "0f011e0810cd20f4370000000000", """\
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, 0x1000
_start: lidt  [idt - _start + LOAD_ADDR]   # IVT covers vectors 0..13 only
        int   0x20                      # vector 32 beyond the limit -> #GP, which is deliverable
        hlt
idt:    .word 0x37
        .long 0
""")

F4_LOOP = _guest("f4_loop", "b0f490ebfb", """\
        .intel_syntax noprefix
        .code16
_start: mov   al, 0xf4                  # B0 F4: an instruction whose last byte is HLT's
        nop
        jmp   _start
""")

REP_OUTSB = _guest("rep_outsb", "be0010b90200baf803f36ef4", """\
        .intel_syntax noprefix
        .code16
_start: mov   si, 0x1000
        mov   cx, 2
        mov   dx, 0x3f8
        rep outsb                       # string I/O
        hlt
""")

OUTSB = _guest("outsb", "be0010baf8036ef4", """\
        .intel_syntax noprefix
        .code16
_start: mov   si, 0x1000
        mov   dx, 0x3f8
        outsb                           # string I/O, one element: RIP past it at the exit
        hlt
""")

OUT_TWICE = _guest("out_twice", "b041e6e0b042e6e0f4", """\
        .intel_syntax noprefix
        .code16
_start: mov   al, 'A'
        out   0xe0, al                  # 0x1002: KVM_EXIT_IO, RIP on it (VMX)
        mov   al, 'B'
        out   0xe0, al                  # 0x1006
        hlt                             # 0x1008
""")

PORT_7E = _guest("port_7e", "b001e67eba7e00eef4", """\
        .intel_syntax noprefix
        .code16
_start: mov   al, 1
        out   0x7e, al                  # 0x1002: KVM_X86_QUIRK_OUT_7E_INC_RIP, RIP past it
        mov   dx, 0x7e
        out   dx, al                    # 0x1007: the same through DX
        hlt                             # 0x1008
""")

INSB = _guest("insb", "bf0020ba60006cf4", """\
        .intel_syntax noprefix
        .code16
_start: mov   di, 0x2000
        mov   dx, 0x60
        insb                            # string input
        hlt
""")

PAGED_MMIO = _guest("paged_mmio", (
    "fa31c08ec066bf0020000066b9001000006631c0fc66f3ab66c70600200330000066c70600300340000066"
    "c70600408300000066c70608300350000066c7060050830000000f0116a8100f20e06683c8200f22e066b8"
    "002000000f22d866b9800000c00f32660d000100000f300f20c0660d010000800f22c0ea7e100800b82000"
    "0d40b35a88188a0888c866baf803eeb897100040ffe0f40000000000000000ffff0000009aaf000f009810"
    "0000"), """\
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, 0x1000
        .equ HIGH, 0x40000000           # a second mapping: VA HIGH + x -> GPA x
_start: cli
        xor   ax, ax
        mov   es, ax
        mov   edi, 0x2000
        mov   ecx, 0x4000 / 4
        xor   eax, eax
        cld
        rep stosd                       # clear 0x2000..0x5fff
        mov   dword ptr [0x2000], 0x3003    # PML4[0] -> PDPT
        mov   dword ptr [0x3000], 0x4003    # PDPT[0] -> PD: VA 0..1 GiB
        mov   dword ptr [0x4000], 0x83      # PD[0]: 2 MiB page at GPA 0
        mov   dword ptr [0x3008], 0x5003    # PDPT[1] -> PD2: VA 1..2 GiB
        mov   dword ptr [0x5000], 0x83      # PD2[0]: VA HIGH -> GPA 0
        lgdt  [gdtr - _start + LOAD_ADDR]
        mov   eax, cr4
        or    eax, 1 << 5
        mov   cr4, eax
        mov   eax, 0x2000
        mov   cr3, eax
        mov   ecx, 0xc0000080
        rdmsr
        or    eax, 1 << 8
        wrmsr
        mov   eax, cr0
        or    eax, 0x80000001
        mov   cr0, eax
        jmp   0x08:(lm - _start + LOAD_ADDR)
        .code64
lm:     mov   eax, HIGH + 0xd0020       # a virtual address of the device register
        mov   bl, 'Z'
        mov   byte ptr [rax], bl        # MMIO write at GPA 0xd0020
        mov   cl, byte ptr [rax]        # MMIO read at GPA 0xd0020
        mov   al, cl
        mov   dx, 0x3f8
        out   dx, al
        mov   eax, HIGH + (high - _start + LOAD_ADDR)
        jmp   rax                       # run on at the high alias
high:   hlt
        .p2align 3
gdt:    .quad 0
        .quad 0x00af9a000000ffff
gdtr:   .word gdtr - gdt - 1
        .long gdt - _start + LOAD_ADDR
""", mode=64)



def _long_mode_then(name, insns, code_hex):
    """The long_mode guest with ``insns`` put in after it printed "64\\n"."""
    listing = ALL["long_mode"].listing.replace(
        "        movabs rax,", f"{insns}        movabs rax,", 1)
    return _guest(name, code_hex, listing, mode=64)


_LM_HEAD = ("fa31c08ec066bf0020000066b9000c00006631c0fc66f3ab66c70600200330000066c706003003400000"
            "66c7060040830000000f0116")
_LM_MID = ("0f20e06683c8200f22e066b8002000000f22d866b9800000c00f32660d000100000f300f20c0660d0100"
           "00800f22c0ea6c10080066baf803b036eeb034eeb00aee")
_LM_TAIL = ("48b888776655443322114889042510000d004c8b0c2510000d004c89c866bae000ef48c1e820eff4")

#: #UD in 64-bit mode after OUT exits, IDT of zeros (no gate present): a triple fault
LM_UD2 = _long_mode_then("lm_ud2", "        ud2\n",
                         _LM_HEAD + "b810" + _LM_MID + "0f0b" + _LM_TAIL
                         + "0f1f4400000000000000000000ffff0000009aaf000f00a8100000")
#: #PF in 64-bit mode (GVA 1 GiB is not mapped): a triple fault the same way
LM_PF = _long_mode_then("lm_pf", "        mov   rax, qword ptr [0x40000000]\n",
                        _LM_HEAD + "c010" + _LM_MID + "488b042500000040" + _LM_TAIL
                        + "0f1f80000000000000000000000000ffff0000009aaf000f00b0100000")
#: a VMCALL in 64-bit mode: the result is 64 bits wide
LM_VMCALL = _long_mode_then(
    "lm_vmcall", "        mov   eax, 0xbad\n        vmcall\n        mov   dx, 0xe0\n"
                 "        out   dx, eax\n        shr   rax, 32\n        out   dx, eax\n",
    _LM_HEAD + "c810" + _LM_MID + "b8ad0b00000f01c166bae000ef48c1e820ef" + _LM_TAIL
    + "0f1f4400000000000000000000ffff0000009aaf000f00b8100000")

TEST_GUESTS = [INT3_REAL, UD2_EMPTY_IVT, INT32_GP, F4_LOOP, REP_OUTSB, OUTSB, OUT_TWICE, PORT_7E,
               INSB, PAGED_MMIO, LM_UD2, LM_PF, LM_VMCALL]


@pytest.mark.parametrize("g", TEST_GUESTS, ids=lambda g: g.name)
def test_test_guests_assemble(g):
    why = build.tools_missing()
    if why:
        pytest.skip(why)
    assert build.assemble(g.listing).hex() == g.code.hex()


def kvm_or_skip():
    why = available()["kvm"]
    if why is not None:
        pytest.skip(f"kvm backend: {why}")


def drive(vcpu, answers=()):
    """Run to HLT/SHUTDOWN, completing IN/MMIO reads with ``answers`` in order; (exit, rip) list."""
    answers = list(answers)
    seen = []
    while True:
        e = vcpu.run()
        seen.append((e, vcpu.get_regs().rip))
        if e.needs_data:
            vcpu.complete(answers.pop(0))
        if e.io is None and e.mmio is None:
            return seen


# --- every guest of ALL: the exact exits --------------------------------------------------

def test_hello():
    r = run_guest(ALL["hello"], "unicorn")
    assert r.exits == tuple(out(0x3F8, bytes([c])) for c in b"Hello, KVM!\n") + (HLT,)
    assert (r.console, r.end, r.backend) == ("Hello, KVM!\n", "hlt", "unicorn")


def test_in_out():
    r = run_guest(ALL["in_out"], "unicorn")
    assert r.exits == (
        in_(0x60, 1), out(0x3F8, b"o"), in_(0x60, 1), out(0x3F8, b"k"), in_(0x60, 1),
        out(0x3F8, b"\n"), in_(0xE0, 2), out(0xE0, b"\xef\xbe"), in_(0xE0, 4),
        out(0xE0, b"\x0d\xf0\xfe\xca"), HLT)
    assert r.console == "ok\n"


def test_mmio():
    r = run_guest(ALL["mmio"], "unicorn")
    assert r.exits == (
        mmio_w(0xD0000, bytes.fromhex("78563412")), mmio_r(0xD0000, 4),
        out(0xE0, bytes.fromhex("78563412")),
        mmio_w(0xD0008, b"A"), mmio_r(0xD0008, 1), mmio_w(0xD0008, b"B"), mmio_r(0xD0008, 1),
        out(0x3F8, b"B"), HLT)
    assert r.console == "B"


def test_hypercall():
    r = run_guest(ALL["hypercall"], "unicorn")
    # -KVM_ENOSYS as 32 bits (real mode), then KVM_HC_VAPIC_POLL_IRQ's 0
    assert r.exits == (out(0xE0, (2**32 - 1000).to_bytes(4, "little")), out(0xE0, bytes(4)), HLT)


def test_triple_fault():
    r = run_guest(ALL["triple_fault"], "unicorn")
    assert r.exits == (SHUTDOWN,) and r.end == "shutdown"
    assert r.exits[0].to_dict() == {"reason": "SHUTDOWN", "detail": "triple fault"}


def test_long_mode():
    r = run_guest(ALL["long_mode"], "unicorn")
    assert r.exits == (
        out(0x3F8, b"6"), out(0x3F8, b"4"), out(0x3F8, b"\n"),
        mmio_w(0xD0010, (0x1122334455667788).to_bytes(8, "little")),  # one exit, 8 bytes
        mmio_r(0xD0010, 8),
        out(0xE0, bytes.fromhex("88776655")), out(0xE0, bytes.fromhex("44332211")), HLT)
    assert r.console == "64\n"


def test_long_mode_really_is_in_64_bit_mode():
    with UnicornVcpu.from_guest(ALL["long_mode"]) as v:
        assert v.cpu_mode() == 16
        assert v.run() == out(0x3F8, b"6")
        assert v.cpu_mode() == 64
        assert v.engine.msr_read(0xC0000080) & 0x500 == 0x500  # EFER.LME | EFER.LMA
        seen = drive(v, [(0xAABBCCDD11223344).to_bytes(8, "little")])
        regs = v.get_regs()
        assert regs.r9 == 0xAABBCCDD11223344  # the 8-byte MMIO answer landed in R9
        assert [e for e, _ in seen][-3:] == [out(0xE0, bytes.fromhex("44332211")),
                                              out(0xE0, bytes.fromhex("ddccbbaa")), HLT]


# --- completion: IN ---------------------------------------------------------------------------

def test_in_completes_into_al_ax_eax_on_the_next_run():
    with UnicornVcpu.from_guest(ALL["in_out"]) as v:
        assert v.run() == in_(0x60, 1)
        regs = v.get_regs()
        assert (regs.rip, regs.rax) == (0x1009, 0x11223344)  # on the IN, nothing written yet
        v.complete(b"\x6f")
        assert v.get_regs().rax == 0x11223344  # complete() only stores the answer
        assert v.run() == out(0x3F8, b"o")
        regs = v.get_regs()
        assert (regs.rip, regs.rax) == (0x100E, 0x1122336F)  # only AL replaced; on the OUT
        for answer in (b"k", b"\n"):
            v.run()
            v.complete(answer)
            v.run()
        assert v.run() == in_(0xE0, 2)
        v.complete(b"\xef\xbe")
        assert v.run() == out(0xE0, b"\xef\xbe")
        assert v.get_regs().rax == 0x1122BEEF  # AX replaced, the upper half kept
        assert v.run() == in_(0xE0, 4)
        v.complete(b"\x0d\xf0\xfe\xca")
        assert v.run() == out(0xE0, b"\x0d\xf0\xfe\xca")
        assert v.get_regs().rax == 0xCAFEF00D
        assert v.run() == HLT


IN_OUT_ANSWERS = [b"o", b"k", b"\n", b"\xef\xbe", b"\x0d\xf0\xfe\xca"]
MMIO_ANSWERS = [bytes.fromhex("78563412"), b"A", b"B"]


def test_exit_rips_match_the_pvm_host_in_pvm_mode():
    # measured on the PVM host's /dev/kvm with the same guests (every OUT: RIP past it)
    with UnicornVcpu.from_guest(ALL["in_out"], pio_rip="pvm") as v:
        rips = [rip for _, rip in drive(v, IN_OUT_ANSWERS)]
    assert rips == [0x1009, 0x100F, 0x1009, 0x100F, 0x1009, 0x100F, 0x1014, 0x1016, 0x1016,
                    0x101A, 0x101B]
    with UnicornVcpu.from_guest(ALL["mmio"], pio_rip="pvm") as v:
        rips = [rip for _, rip in drive(v, MMIO_ANSWERS)]
    assert rips == [0x100F, 0x100F, 0x101D, 0x1023, 0x1023, 0x1028, 0x1028, 0x1033, 0x1034]


def test_exit_rips_follow_vmx_by_default():
    # the same, but every OUT exit has RIP on the OUT (kvm_fast_pio_out): in_out's
    # `out dx, al` at 0x100e, `out dx, ax` at 0x1015, `out dx, eax` (66 ef) at 0x1018
    with UnicornVcpu.from_guest(ALL["in_out"]) as v:
        rips = [rip for _, rip in drive(v, IN_OUT_ANSWERS)]
    assert rips == [0x1009, 0x100E, 0x1009, 0x100E, 0x1009, 0x100E, 0x1014, 0x1015, 0x1016,
                    0x1018, 0x101B]
    with UnicornVcpu.from_guest(ALL["mmio"]) as v:  # `out dx, eax` at 0x101b, `out dx, al` 0x1032
        rips = [rip for _, rip in drive(v, MMIO_ANSWERS)]
    assert rips == [0x100F, 0x100F, 0x101B, 0x1023, 0x1023, 0x1028, 0x1028, 0x1032, 0x1034]


# --- completion: OUT (where RIP is at the exit: pio_rip) ---------------------------------------

def test_out_exit_leaves_rip_on_the_out_and_the_next_run_skips_it():
    with UnicornVcpu.from_guest(OUT_TWICE) as v:
        assert v.pio_rip == "vmx"  # the default: Linux 6.1 on VMX
        assert v.run() == out(0xE0, b"A")
        assert v.get_regs().rip == 0x1002  # on the OUT (kvm_fast_pio_out)
        assert v.kernel_exits[-1].reason == "IO_INSTRUCTION" and v.kernel_exits[-1].rip == 0x1002
        assert v.run() == out(0xE0, b"B")  # complete_fast_pio_out skipped the first OUT
        assert v.get_regs().rip == 0x1006
        assert v.run() == HLT
        assert v.get_regs().rip == 0x1009
        assert [(k.reason, k.rip) for k in v.kernel_exits] == [
            ("IO_INSTRUCTION", 0x1002), ("IO_INSTRUCTION", 0x1006), ("HLT", 0x1008)]


def test_out_is_skipped_when_user_space_writes_the_same_rip_back():
    with UnicornVcpu.from_guest(OUT_TWICE) as v:
        v.run()
        regs = v.get_regs()
        regs.rbx = 0x1234
        v.set_regs(regs)  # RIP unchanged: still the OUT's
        assert v.get_regs() == regs
        assert v.run() == out(0xE0, b"B")
        assert v.get_regs().rbx == 0x1234


@pytest.mark.parametrize("rip, then", [
    (0x1000, [out(0xE0, b"A"), out(0xE0, b"B"), HLT]),  # back to the start: the OUT runs again
    (0x1004, [out(0xE0, b"B"), HLT]),  # a VMM that skipped the OUT itself: not skipped twice
    (0x1006, [out(0xE0, b"A"), HLT]),  # past `mov al, 'B'`: runs from there, nothing skipped
], ids=["start", "past-the-out", "further"])
def test_out_is_not_skipped_when_user_space_moves_rip(rip, then):
    with UnicornVcpu.from_guest(OUT_TWICE) as v:
        v.run()
        regs = v.get_regs()
        regs.rip = rip
        v.set_regs(regs)
        assert [e for e, _ in drive(v)] == then


def test_the_engine_sees_rip_on_the_out_and_may_move_it():
    from unicorn.x86_const import UC_X86_REG_RIP

    with UnicornVcpu.from_guest(OUT_TWICE) as v:
        v.run()
        assert v.engine.reg_read(UC_X86_REG_RIP) == 0x1002
        assert v.run() == out(0xE0, b"B")  # still skipped
        v.engine.reg_write(UC_X86_REG_RIP, 0x1000)
        assert v.get_regs().rip == 0x1000
        assert v.run() == out(0xE0, b"A")  # moved: not skipped


@pytest.mark.parametrize("pio_rip", ["vmx", "pvm"])
def test_out_to_port_0x7e_has_rip_past_it(pio_rip):
    # KVM_X86_QUIRK_OUT_7E_INC_RIP: kvm_fast_pio_out skips the OUT before the exit
    with UnicornVcpu.from_guest(PORT_7E, pio_rip=pio_rip) as v:
        assert drive(v) == [(out(0x7E, b"\x01"), 0x1004), (out(0x7E, b"\x01"), 0x1008),
                            (HLT, 0x1009)]
        assert [k.rip for k in v.kernel_exits] == [0x1002, 0x1007, 0x1008]
    with UnicornVcpu.from_guest(PORT_7E, pio_rip=pio_rip) as v:
        v.run()
        regs = v.get_regs()
        regs.rip = 0x1002  # complete_fast_pio_out_port_0x7e skips nothing: the OUT runs again
        v.set_regs(regs)
        assert [e for e, _ in drive(v)] == [out(0x7E, b"\x01")] * 2 + [HLT]


@pytest.mark.parametrize("pio_rip", ["vmx", "pvm"])
def test_outs_has_rip_past_it(pio_rip):
    # string I/O goes through x86_emulate_instruction, whose writeback moves RIP
    with UnicornVcpu.from_guest(OUTSB, pio_rip=pio_rip) as v:
        assert drive(v) == [(out(0x3F8, b"\xbe"), 0x1007), (HLT, 0x1008)]


def test_pvm_mode_has_rip_past_every_out():
    with UnicornVcpu.from_guest(OUT_TWICE, pio_rip="pvm") as v:
        assert v.pio_rip == "pvm"
        assert drive(v) == [(out(0xE0, b"A"), 0x1004), (out(0xE0, b"B"), 0x1008), (HLT, 0x1009)]
        assert [k.rip for k in v.kernel_exits] == [0x1002, 0x1006, 0x1008]  # the same VM exits
    with UnicornVcpu.from_guest(OUT_TWICE, pio_rip="pvm") as v:
        v.run()
        regs = v.get_regs()
        regs.rip = 0x1002  # nothing pending: the OUT runs again
        v.set_regs(regs)
        assert v.run() == out(0xE0, b"A")
    with open_vcpu(ALL["hello"], "unicorn", pio_rip="pvm") as v:  # chapter 01's third OUT
        for _ in range(3):
            v.run()
        assert v.get_regs().rip == 0x100C


def test_both_modes_give_the_same_exits_and_vm_exits():
    for g in (ALL["hello"], ALL["in_out"], ALL["mmio"], ALL["long_mode"], OUT_TWICE, PORT_7E,
              REP_OUTSB):
        logs = {m: [] for m in ("vmx", "pvm")}
        runs = {m: run_guest(g, "unicorn", pio_rip=m, kernel_exits=logs[m]) for m in logs}
        assert runs["vmx"].exits == runs["pvm"].exits, g.name
        assert logs["vmx"] == logs["pvm"], g.name


def test_in_is_dropped_when_user_space_moves_rip():
    with UnicornVcpu.from_guest(ALL["in_out"]) as v:
        v.run()
        regs = v.get_regs()
        regs.rip = 0x1011  # skip the echo loop: mov dx, TESTDEV_PORT
        v.set_regs(regs)
        v.complete(b"\x6f")
        assert v.run() == in_(0xE0, 2)  # KVM drops the IN (kvm_is_linear_rip)
        assert v.get_regs().rax == 0x11223344


def test_run_without_complete_is_an_error():
    with UnicornVcpu.from_guest(ALL["in_out"]) as v:
        v.run()
        with pytest.raises(VbookError, match=r"the IN of the last exit is waiting for data: "
                                             r"call complete\(<1 bytes>\) before run\(\)"):
            v.run()
        with pytest.raises(VbookError, match="the pending IN needs 1 bytes, got 2"):
            v.complete(b"ab")
        v.complete(b"x")
        with pytest.raises(VbookError, match="no IN, MMIO read or HYPERCALL is waiting"):
            v.complete(b"y")
        assert v.run() == out(0x3F8, b"x")
        with pytest.raises(VbookError, match="no IN, MMIO read or HYPERCALL is waiting"):
            v.complete(b"z")


# --- completion: MMIO -------------------------------------------------------------------------

def test_mmio_read_into_ebx_not_ax():
    with UnicornVcpu.from_guest(ALL["mmio"]) as v:
        assert v.run() == mmio_w(0xD0000, bytes.fromhex("78563412"))
        assert v.run() == mmio_r(0xD0000, 4)
        regs = v.get_regs()
        regs.rax = 0x5555
        v.set_regs(regs)
        v.complete(bytes.fromhex("efbeadde"))  # not what was written: the device decides
        assert v.run() == out(0xE0, bytes.fromhex("efbeadde"))
        regs = v.get_regs()
        assert regs.rbx == 0xDEADBEEF and regs.rax == 0xDEADBEEF  # mov eax, ebx before OUT


def test_read_modify_write_is_a_read_then_a_write_of_the_answer_plus_one():
    with UnicornVcpu.from_guest(ALL["mmio"]) as v:
        v.run()
        v.run()
        v.complete(bytes(4))
        v.run()
        assert v.run() == mmio_w(0xD0008, b"A")
        assert v.run() == mmio_r(0xD0008, 1)  # inc byte ptr es:[8]: the read first
        assert v.get_regs().rip == 0x1023     # still on the inc
        v.complete(b"\x7f")
        assert v.run() == mmio_w(0xD0008, b"\x80")  # then the write, computed from the answer
        assert v.get_regs().rip == 0x1028     # the inc is done
        assert v.run() == mmio_r(0xD0008, 1)
        v.complete(b"\x01")
        assert v.run() == out(0x3F8, b"\x01")
        assert v.get_regs().rcx & 0xFF == 0x01  # mov cl, es:[8]


def test_mmio_through_non_identity_paging_gives_the_guest_physical_address():
    r = run_guest(PAGED_MMIO, "unicorn")
    assert r.exits == (mmio_w(0xD0020, b"Z"), mmio_r(0xD0020, 1), out(0x3F8, b"Z"), HLT)


def test_mmio_leaves_no_page_mapped():
    with UnicornVcpu.from_guest(ALL["mmio"]) as v:
        drive(v, [bytes(4), b"A", b"B"])
        assert list(v.engine.mem_regions()) == [(0, 0xFFFF, 7)]  # only RAM


# --- hypercalls ----------------------------------------------------------------------------

@pytest.mark.parametrize("pio_rip, rip", [("vmx", 0x1024), ("pvm", 0x1026)])
def test_hypercall_results_in_rax(pio_rip, rip):
    with UnicornVcpu.from_guest(ALL["hypercall"], pio_rip=pio_rip) as v:
        assert v.run() == out(0xE0, bytes.fromhex("18fcffff"))
        regs = v.get_regs()
        assert regs.rax == 2**32 - 1000 and regs.rip == rip  # past VMCALL, on/past the OUT
        assert v.stats.exits == {"IO": 1} and v.hypercalls == 1  # no exit to user space


def test_map_gpa_range_without_the_exit_enabled_is_enosys():
    r = run_guest(EXTRA["map_gpa_range"], "unicorn")
    assert r.exits == (out(0xE0, (2**32 - 1000).to_bytes(4, "little")), HLT)


@pytest.mark.parametrize("ret, shown", [(0, bytes(4)), (2**64 - 22, (2**32 - 22).to_bytes(4, "little"))])
def test_map_gpa_range_exits_to_user_space_when_enabled(ret, shown):
    with UnicornVcpu.from_guest(EXTRA["map_gpa_range"], hypercall_exit_enabled=1 << 12) as v:
        e = v.run()
        assert e == Exit(ExitReason.HYPERCALL,
                         hypercall=HypercallExit(12, (0x8000, 2, 0, 0, 0, 0), 0))
        assert v.get_regs().rip == 0x101B  # on the VMCALL
        v.complete(ret.to_bytes(8, "little"))
        assert v.run() == out(0xE0, shown)  # ret truncated to 32 bits outside long mode
        assert v.run() == HLT


def test_map_gpa_range_unanswered_returns_zero():
    with UnicornVcpu.from_guest(EXTRA["map_gpa_range"], hypercall_exit_enabled=1 << 12) as v:
        assert v.run().reason == ExitReason.HYPERCALL
        assert v.run() == out(0xE0, bytes(4))


# --- exceptions ----------------------------------------------------------------------------

LM_PRINTS_64 = (out(0x3F8, b"6"), out(0x3F8, b"4"), out(0x3F8, b"\n"))


@pytest.mark.parametrize("g", [LM_UD2, LM_PF], ids=lambda g: g.name)
def test_long_mode_exception_after_io_exits_is_a_triple_fault(g):
    # the exception comes after three runs stopped in an OUT hook with paging on: the
    # case where unicorn's stale old_exception used to swallow it (see the module doc)
    assert run_guest(g, "unicorn").exits == LM_PRINTS_64 + (SHUTDOWN,)


def test_long_mode_hypercall_result_is_64_bits():
    r = run_guest(LM_VMCALL, "unicorn")
    assert r.exits[3:5] == (out(0xE0, bytes.fromhex("18fcffff")), out(0xE0, b"\xff" * 4))
    assert r.exits[-1] == HLT and len(r.exits) == 10


def test_old_exception_probe_finds_the_field():
    import unicorn

    from vbook.backends.unicorn_cpu import _old_exception_offset

    offset = _old_exception_offset(unicorn)
    assert offset is not None and offset % 4 == 0

def test_triple_fault_ends_the_vcpu():
    with UnicornVcpu.from_guest(ALL["triple_fault"]) as v:
        assert v.run() == SHUTDOWN
        with pytest.raises(VbookError, match=r"shut down \(triple fault\)"):
            v.run()


def test_real_mode_exception_with_empty_ivt_is_a_triple_fault():
    assert run_guest(UD2_EMPTY_IVT, "unicorn").exits == (SHUTDOWN,)


def test_deliverable_exception_is_a_guest_fault():
    with UnicornVcpu.from_guest(INT3_REAL) as v:
        with pytest.raises(GuestFault, match=r"guest raised #BP \(3\) at RIP 0x1001; its IDT can "
                                             r"deliver #BP \(3\)") as info:
            v.run()
    assert (info.value.vector, info.value.rip) == (3, 0x1001)


def test_undeliverable_vector_becomes_a_deliverable_gp():
    with UnicornVcpu.from_guest(INT32_GP) as v:
        with pytest.raises(GuestFault, match=r"vector 32 .* can deliver #GP \(13\) \(while "
                                             r"delivering vector 32: IVT entry 0x80..0x83 beyond "
                                             r"IDTR.limit 0x37\)") as info:
            v.run()
    assert info.value.vector == 13


def test_fetch_outside_ram_is_an_emulation_failure():
    r = run_guest(MISBEHAVING["unmapped_fetch"], "unicorn")
    assert r.end == "internal_error"
    assert r.exits == (Exit(ExitReason.INTERNAL_ERROR, detail=(
        "suberror 1 (EMULATION), instruction fetch from 0x10000: no memory slot there")),)


# --- budget and HLT ------------------------------------------------------------------------

def test_spin_raises_budget_exhausted():
    with UnicornVcpu.from_guest(MISBEHAVING["spin"], budget=10_000) as v:
        with pytest.raises(BudgetExhausted, match=r"guest 'spin' ran 10,000 instructions without "
                                                  r"an exit .* at RIP 0x1000 \(bytes there: eb fe"):
            v.run()
        with pytest.raises(BudgetExhausted):  # still usable, still spinning
            v.run()
    with pytest.raises(BudgetExhausted, match="1,000,000 instructions"):
        run_guest(MISBEHAVING["spin"], "unicorn")


@pytest.mark.parametrize("budget", [1, 4, 3001])
def test_budget_ending_after_an_f4_byte_is_not_a_hlt(budget):
    # the budget runs out right after `mov al, 0xf4`: the byte before RIP is 0xF4
    with UnicornVcpu.from_guest(F4_LOOP, budget=budget) as v:
        with pytest.raises(BudgetExhausted, match=r"at RIP 0x1002 "):
            v.run()
        assert v.read_memory(v.get_regs().rip - 1, 1) == b"\xf4"


def test_hlt_leaves_rip_past_it():
    with UnicornVcpu.from_guest(ALL["hello"]) as v:
        seen = drive(v)
        assert seen[-1] == (HLT, 0x100F) and v.read_memory(0x100E, 1) == b"\xf4"
        assert v.stats.runs == 13 and v.stats.exits == {"IO": 12, "HLT": 1}


# --- string I/O ----------------------------------------------------------------------------

@pytest.mark.parametrize("pio_rip", ["vmx", "pvm"])
def test_rep_outsb_is_one_exit_per_byte(pio_rip):
    # RIP stays on the REP OUTS after every element (x86_emulate_insn skips the RIP writeback)
    with UnicornVcpu.from_guest(REP_OUTSB, pio_rip=pio_rip) as v:
        seen = drive(v)
    assert seen == [(out(0x3F8, b"\xbe"), 0x1009), (out(0x3F8, b"\x00"), 0x1009), (HLT, 0x100C)]


def test_insb_is_refused():
    with UnicornVcpu.from_guest(INSB) as v:
        with pytest.raises(GuestFault, match=r"string input \(INS\) at RIP 0x1006 is not "
                                             r"supported"):
            v.run()


# --- the rest of the VCpu interface ------------------------------------------------------

def test_regs_round_trip_and_start_state():
    with UnicornVcpu.from_guest(ALL["hello"]) as v:
        regs = v.get_regs()
        assert regs == Regs(rsp=0x1000, rip=0x1000, rflags=0x2)
        new = Regs(*range(1, 17), rip=0x1003, rflags=0x202)
        v.set_regs(new)
        assert v.get_regs() == new


def test_memory_access():
    with UnicornVcpu.from_guest(ALL["hello"]) as v:
        assert v.read_memory(0x1000, len(ALL["hello"].code)) == ALL["hello"].code
        v.write_memory(0x2000, b"abc")
        assert v.read_memory(0x2000, 3) == b"abc"
        with pytest.raises(MemoryAccessError, match=r"at 0xfffe is outside memory \[0, 0x10000\)"):
            v.read_memory(0xFFFE, 4)
        with pytest.raises(MemoryAccessError):
            v.write_memory(0x10000, b"x")


def test_close_twice_and_use_after_close():
    v = UnicornVcpu.from_guest(ALL["hello"])
    assert repr(v) == "UnicornVcpu('hello', budget=1,000,000, 0 runs)"
    v.close()
    v.close()
    assert v.closed and repr(v) == "UnicornVcpu('hello', budget=1,000,000, closed)"
    for call in (v.run, v.get_regs, lambda: v.complete(b"x"), lambda: v.read_memory(0, 1)):
        with pytest.raises(VbookError, match="this UnicornVcpu is closed"):
            call()
    with open_vcpu(ALL["hello"], "unicorn") as w:
        assert w.run() == out(0x3F8, b"H")
    assert w.closed


def test_options():
    assert UnicornVcpu.from_guest(ALL["hello"], timeout=2.0).budget == 1_000_000  # KVM's option
    with pytest.raises(VbookError, match=r"unknown option\(s\) budgett"):
        UnicornVcpu.from_guest(ALL["hello"], budgett=5)
    for bad in ("VMX", "svm", None, 1):
        with pytest.raises(VbookError, match=r"pio_rip must be one of 'vmx', 'pvm'"):
            UnicornVcpu.from_guest(ALL["hello"], pio_rip=bad)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(VbookError, match="budget must be a positive number"):
            UnicornVcpu.from_guest(ALL["hello"], budget=bad)
    with pytest.raises(GuestError, match="mem_size 0x1800 is not a positive multiple"):
        UnicornVcpu.from_guest(Guest("odd", 16, b"\xf4", "hlt", mem_size=0x1800))
    with pytest.raises(GuestError, match="do not fit"):
        UnicornVcpu.from_guest(Guest("big", 16, b"\xf4" * 8, "", load_addr=0xFFFC))


def test_check_available(monkeypatch):
    UnicornVcpu.check_available()
    assert available()["unicorn"] is None
    monkeypatch.setitem(sys.modules, "unicorn", None)
    with pytest.raises(BackendUnavailable, match="unicorn backend unavailable: the unicorn "
                                                 "package cannot be imported"):
        UnicornVcpu.check_available()


# --- the test-only guests on real KVM too ----------------------------------------------------

@pytest.mark.parametrize("g", [PAGED_MMIO, REP_OUTSB, OUTSB, OUT_TWICE, PORT_7E, LM_UD2, LM_PF,
                               MISBEHAVING["unmapped_fetch"]], ids=lambda g: g.name)
def test_same_exits_on_kvm(g):
    kvm_or_skip()
    uni = run_guest(g, "unicorn")
    kvm = run_guest(g, "kvm")
    if g.name == "unmapped_fetch":  # the detail carries host data words on KVM
        assert [e.reason for e in kvm.exits] == [e.reason for e in uni.exits]
        assert "suberror 1 (EMULATION)" in kvm.exits[0].detail
    else:
        assert kvm.exits == uni.exits


def test_map_gpa_range_on_kvm_matches_or_host_never_returns():
    kvm_or_skip()
    try:
        kvm = run_guest(EXTRA["map_gpa_range"], "kvm")
    except HypercallNotCompleted as e:
        pytest.xfail(f"this host did not complete the hypercall: {e}")
    assert kvm.exits == run_guest(EXTRA["map_gpa_range"], "unicorn").exits
