"""The guest programs: shipped bytes = assembled listings, and the code does what it says.

Re-assembling needs GNU as + objcopy (skipped with the reason when absent);
the disassembly checks use iced-x86 (skipped when it is not installed).
"""

from __future__ import annotations

import pytest

from vbook.errors import GuestError
from vbook.guests import ALL, EXTRA, MISBEHAVING, NET, build, get
from vbook.guests.base import Guest
from vbook.guests.ports import COM1, KBD_DATA, LOAD_ADDR, MEM_SIZE, MMIO_BASE, TESTDEV_PORT

EVERY = {**ALL, **EXTRA, **NET, **MISBEHAVING}


def needs_as():
    why = build.tools_missing()
    if why:
        pytest.skip(f"cannot re-assemble the listings: {why}")


# --- the tables --------------------------------------------------------------------------

def test_all_has_the_guests_the_book_needs():
    assert set(ALL) == {"hello", "in_out", "mmio", "hypercall", "triple_fault", "long_mode",
                        "serial_hello", "debug_exit", "cpuid_loop"}
    assert set(EXTRA) == {"map_gpa_range", "hypercalls"}
    assert set(NET) == {"e1000_ping", "virtio_net_ping"}
    assert set(MISBEHAVING) == {"spin", "unmapped_fetch"}
    assert not set(ALL) & set(MISBEHAVING)


@pytest.mark.parametrize("name", sorted(EVERY))
def test_guest_shape(name):
    g = EVERY[name]
    assert isinstance(g, Guest) and g.name == name
    assert g.mode in (16, 32, 64)
    assert g.code and isinstance(g.code, bytes)
    assert ".intel_syntax noprefix" in g.listing and ".code16" in g.listing  # starts in real mode
    assert (g.load_addr, g.mem_size, g.stack_top) == (LOAD_ADDR, MEM_SIZE, 0x1000)
    assert g.load_addr + len(g.code) <= g.mem_size
    assert g.description and "\n" not in g.description
    assert repr(g) == f"Guest({name!r}, mode={g.mode}, {len(g.code)} bytes at 0x1000)"


def test_modes():
    assert {n: g.mode for n, g in ALL.items()} == {
        "hello": 16, "in_out": 16, "mmio": 16, "hypercall": 16, "triple_fault": 32,
        "long_mode": 64, "serial_hello": 16, "debug_exit": 32, "cpuid_loop": 16}


def test_in_out_inputs_are_deterministic():
    assert ALL["in_out"].inputs == {KBD_DATA: (0x6F, 0x6B, 0x0A), TESTDEV_PORT: (0xBEEF, 0xCAFEF00D)}


def test_named_ports_reach_the_listings():
    # the listing takes its numbers from vbook.guests.ports / vbook.bus
    assert f".equ COM1, {COM1:#x}" in ALL["hello"].listing
    assert f".equ KBD_DATA, {KBD_DATA:#x}" in ALL["in_out"].listing
    assert f".equ MMIO_BASE, {MMIO_BASE:#x}" in ALL["mmio"].listing
    assert (COM1, KBD_DATA, TESTDEV_PORT, MMIO_BASE) == (0x3F8, 0x60, 0xE0, 0xD0000)


def test_get():
    assert get("spin") is MISBEHAVING["spin"]
    with pytest.raises(GuestError, match="no guest named 'nope'; known guests: .*hello"):
        get("nope")


# --- shipped bytes == assembled listing ------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EVERY))
def test_listing_assembles_to_the_shipped_bytes(name):
    needs_as()
    g = EVERY[name]
    assert build.assemble(g.listing).hex() == g.code.hex()


def test_build_check_finds_nothing_stale(capsys):
    needs_as()
    assert build.main(["--check"]) == 0
    assert capsys.readouterr().out == ""


def test_build_knows_every_guest_module():
    assert {__import__(f"vbook.guests.{m}", fromlist=["GUEST"]).GUEST.name
            for m in build.MODULES} == set(EVERY)


def test_assemble_refuses_a_listing_that_needs_a_linker():
    needs_as()
    src = ".intel_syntax noprefix\n.code16\n_start: mov si, OFFSET msg\nmsg: .byte 1\n"
    with pytest.raises(GuestError, match="needs a linker.*label - _start \\+ LOAD_ADDR"):
        build.assemble(src)


def test_assemble_refuses_data_outside_text():
    needs_as()
    with pytest.raises(GuestError, match="4 bytes in .data"):
        build.assemble(".intel_syntax noprefix\n.code16\nhlt\n.data\n.long 1\n")


def test_assemble_reports_the_assemblers_error():
    needs_as()
    with pytest.raises(GuestError, match="(?s)as failed:.*listing:3: Error: no such "
                                         "instruction: `no_such_insn ax'"):
        build.assemble(".intel_syntax noprefix\n.code16\nno_such_insn ax\n")


def test_code_block_round_trip():
    code = bytes(range(40))
    block = build.code_block(code)
    assert block.splitlines()[0] == "CODE = bytes.fromhex("
    assert block.splitlines()[1] == '    "000102030405060708090a0b0c0d0e0f"'
    assert eval(block.split("=", 1)[1]) == code  # noqa: S307 - our own literal
    assert build._CODE_BLOCK.fullmatch(block)


def test_tools_missing_names_the_tool(monkeypatch):
    monkeypatch.setattr(build.shutil, "which", lambda t: None if t == "objcopy" else "/bin/as")
    assert build.tools_missing() == ("objcopy not found on PATH (GNU binutils: "
                                     "apt install binutils)")
    with pytest.raises(GuestError, match="cannot assemble: objcopy not found"):
        build.assemble("hlt\n")


# --- what the machine code is (iced-x86) ----------------------------------------------------

def disassemble(g: Guest):
    """Instructions from load_addr to the first HLT (or jmp-to-self), following the one
    far jump into the guest's 32/64-bit code; as (bitness, Instruction)."""
    iced = pytest.importorskip("iced_x86")
    out, bitness, ip = [], 16, g.load_addr
    while True:
        dec = iced.Decoder(bitness, g.code[ip - g.load_addr:], ip=ip)
        switched = False
        for ins in dec:
            assert ins.code != iced.Code.INVALID, f"{g.name}: invalid instruction at {ins.ip:#x}"
            out.append((bitness, ins))
            if ins.mnemonic == iced.Mnemonic.HLT:
                return out
            if ins.flow_control == iced.FlowControl.UNCONDITIONAL_BRANCH and \
                    ins.near_branch_target == ins.ip:
                return out  # jmp $
            if ins.code == iced.Code.JMP_PTR1616:
                if g.mode == 16:  # a real-mode far jump: the guest stays 16-bit
                    return out
                bitness, ip, switched = g.mode, ins.far_branch16, True  # flat code segment
                break
        if not switched:
            return out


def text(g: Guest) -> list[str]:
    iced = pytest.importorskip("iced_x86")
    fmt = iced.Formatter(iced.FormatterSyntax.INTEL)
    return [fmt.format(ins) for _, ins in disassemble(g)]


def test_hello_code():
    assert text(ALL["hello"]) == [
        "mov dx,3F8h", "mov si,100Fh", "lodsb [si]", "test al,al", "je short 100Eh", "out dx,al",
        "jmp short 1006h", "hlt"]
    assert ALL["hello"].code.endswith(b"Hello, KVM!\n\x00")


def test_in_out_code_uses_each_width():
    t = text(ALL["in_out"])
    assert [i for i in t if i.startswith(("in ", "out "))] == [
        "in al,60h", "out dx,al", "in ax,dx", "out dx,ax", "in eax,dx", "out dx,eax"]


def test_mmio_code_reaches_the_device_through_es():
    t = text(ALL["mmio"])
    assert t[:2] == ["mov ax,0D000h", "mov es,ax"]
    assert "mov ebx,es:[0]" in t and "inc byte ptr es:[8]" in t and "mov cl,es:[8]" in t


def test_hypercall_code_has_two_vmcalls():
    t = text(ALL["hypercall"])
    assert t.count("vmcall") == 2
    assert t[0] == "mov eax,0BADh" and "mov eax,1" in t


def test_triple_fault_reaches_ud2_in_32_bit_code():
    code = disassemble(ALL["triple_fault"])
    tail = [(bits, ins.ip) for bits, ins in code[-2:]]
    assert [b for b, _ in tail] == [32, 32]
    iced = pytest.importorskip("iced_x86")
    assert code[-2][1].mnemonic == iced.Mnemonic.UD2


def test_long_mode_far_jump_lands_on_64_bit_code_with_absolute_mmio_operands():
    iced = pytest.importorskip("iced_x86")
    code = disassemble(ALL["long_mode"])
    far = [ins for bits, ins in code if ins.code == iced.Code.JMP_PTR1616]
    assert len(far) == 1 and far[0].far_branch_selector == 0x08
    sixty_four = [ins for bits, ins in code if bits == 64]
    assert sixty_four[0].ip == far[0].far_branch16
    mmio = [ins for ins in sixty_four if ins.op_count == 2 and iced.OpKind.MEMORY in
            (ins.op0_kind, ins.op1_kind)]
    assert len(mmio) == 2
    for ins in mmio:  # machine.md's pitfall: not RIP-relative
        assert not ins.is_ip_rel_memory_operand
        assert ins.memory_base == iced.Register.NONE
        assert ins.memory_displacement == MMIO_BASE + 0x10
        assert ins.memory_size == iced.MemorySize.UINT64


def test_spin_is_jmp_to_itself():
    assert MISBEHAVING["spin"].code == b"\xeb\xfe"


def test_unmapped_fetch_jumps_past_ram():
    (_, ins), = disassemble(MISBEHAVING["unmapped_fetch"])
    assert (ins.far_branch_selector, ins.far_branch16) == (MEM_SIZE >> 4, 0)  # GPA MEM_SIZE
