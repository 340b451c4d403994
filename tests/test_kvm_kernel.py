"""vbook.models.kvm_kernel (the kernel side of KVM_RUN) and the VM exits the unicorn backend lists.

Exact decisions for every exit kind and configuration, the unexpected-exit
path, the CPUID lookup, the trace's shape, hypothesis invariants over random
exit sequences, and the strongest check: for every guest of the book, the
model walking the unicorn backend's VM exits decides exactly the exits the
backend (and, where it runs, /dev/kvm) returned. The function names the model
records are checked against the Linux 6.1 sources when the mirror is here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbook.backends import available
from vbook.backends.unicorn_cpu import KernelExit, UnicornVcpu
from vbook.errors import GuestError, VbookError
from vbook.guests import ALL, EXTRA, MISBEHAVING, build, cpuid_loop
from vbook.guests.base import Guest
from vbook.models import kvm_kernel as kk
from vbook.models import vmx
from vbook.models.kvm_api import ExitReason
from vbook.models.kvm_kernel import (
    CpuidEntry,
    Ioeventfd,
    KernelModelError,
    KvmConfig,
    VmExit,
    kvm_cpuid,
    kvm_run,
)
from vbook.models.vmx import VmxExitReason as R
from vbook.runner import run_guest
from vbook.trace import Trace

QEMU = KvmConfig.qemu()


def unicorn_or_skip():
    why = available()["unicorn"]
    if why:
        pytest.skip(f"unicorn backend: {why}")


def vm_exits_of(guest: Guest, **kw) -> tuple[list, object]:
    unicorn_or_skip()
    log: list = []
    result = run_guest(guest, "unicorn", kernel_exits=log, **kw)
    return log, result


def one(ex: VmExit, cfg: KvmConfig | None = None) -> kk.ExitStep:
    return kvm_run([ex], cfg).steps[0]


# --- configuration ---------------------------------------------------------------------------

def test_config_normalises_ports_and_describes_itself():
    cfg = KvmConfig(irqchip=True, ioeventfds=(0xE0, Ioeventfd(0xD0000, 4, datamatch=7)))
    assert cfg.ioeventfds[0] == Ioeventfd(0xE0, pio=True)
    assert cfg.describe() == ("in-kernel irqchip, ioeventfd on port 0xe0, ioeventfd on address "
                              "0xd0000, len 4, datamatch 0x7")
    assert KvmConfig().describe() == "no in-kernel irqchip"
    assert json.dumps(cfg.to_dict())


@pytest.mark.parametrize("kw, match", [
    (dict(ioeventfds=("0xe0",)), "Ioeventfd or a port number"),
    (dict(hypercall_exit_enabled=-1), "non-negative mask"),
    (dict(disabled_quirks=-1), "disabled_quirks must be a non-negative mask"),
])
def test_config_refuses_nonsense(kw, match):
    with pytest.raises(KernelModelError, match=match):
        KvmConfig(**kw)


@pytest.mark.parametrize("kw, match", [
    (dict(addr=0xE0, len=3, pio=True), "len must be 0, 1, 2, 4 or 8"),
    (dict(addr=0x10000, pio=True), "port"),
    (dict(addr=-1), "guest-physical address"),
    (dict(addr=0xD0000, datamatch=7), "len 0 cannot have a datamatch"),
])
def test_ioeventfd_refuses_nonsense(kw, match):
    with pytest.raises(KernelModelError, match=match):
        Ioeventfd(**kw)


def test_ioeventfd_in_range():
    any_size = Ioeventfd(0xE0, pio=True)
    assert any_size.matches(0xE0, 1, 5) and any_size.matches(0xE0, 4, None)
    assert not any_size.matches(0xE1, 1, 5)
    four = Ioeventfd(0xE0, 4, pio=True, datamatch=3)
    assert four.matches(0xE0, 4, 3) and not four.matches(0xE0, 4, 4) and not four.matches(0xE0, 2, 3)


def test_devices_of_the_irqchip():
    assert QEMU.pio_device(0x20, 1, True, 0x20) == "i8259 PIC (master)"
    assert QEMU.pio_device(0xA1, 1, False, None) == "i8259 PIC (slave)"
    assert QEMU.pio_device(0x4D0, 2, True, 0) == "i8259 ELCR"
    assert QEMU.pio_device(0x21, 2, True, 0) is None  # runs past the PIC's two ports
    assert KvmConfig().pio_device(0x20, 1, True, 0x20) is None
    assert QEMU.mmio_device(0xFEC00000, 4, True, 0) == "IOAPIC"
    assert QEMU.mmio_device(0xFEC00100, 4, True, 0) is None
    assert KvmConfig(ioeventfds=(0xE0,)).pio_device(0xE0, 1, False, None) is None  # no reads


def test_the_in_kernel_lapic_answers_its_page_before_kvm_mmio_bus():
    apic_eoi = VmExit.mmio(0xFEE000B0, 4, is_write=True, data=bytes(4))
    bare = one(apic_eoi)
    assert bare.ret == 0 and str(bare.user_exits[0]) == "MMIO write addr=0xfee000b0 len=4 data=00000000"
    s = one(apic_eoi, QEMU)
    assert (s.ret, s.where, s.user_exits) == (1, "kernel", ())
    assert s.calls[-2:] == ("vcpu_mmio_write", "apic_mmio_write")
    read = one(VmExit.mmio(0xFEE00030, 4, is_write=False), KvmConfig(irqchip=True))  # version
    assert read.ret == 1 and read.calls[-1] == "apic_mmio_read"
    assert QEMU.mmio_device(0xFEE00FFC, 4, False, None) == "local APIC"
    assert QEMU.mmio_device(0xFEE01000, 4, False, None) is None  # past the 4 KiB page
    # vcpu_mmio_write asks the LAPIC before KVM_MMIO_BUS: an ioeventfd there never fires
    cfg = KvmConfig(irqchip=True, ioeventfds=(Ioeventfd(0xFEE000B0, 4),))
    assert cfg.mmio_device(0xFEE000B0, 4, True, 0) == "local APIC"
    assert KvmConfig(ioeventfds=(Ioeventfd(0xFEE000B0, 4),)).mmio_device(
        0xFEE000B0, 4, True, 0).startswith("ioeventfd")


def test_6_1_source_the_lapic_page_is_tried_before_kvm_mmio_bus():
    from _sources import LINUX_6_1 as L61
    from _sources import LINUX_6_1_REV as L61_REV
    from _sources import function_body, git_show

    x86 = git_show(L61, L61_REV, "arch/x86/kvm/x86.c")
    for rw, dev in (("write", "kvm_iodevice_write(vcpu, &vcpu->arch.apic->dev, addr, n, v)"),
                    ("read", "kvm_iodevice_read(vcpu, &vcpu->arch.apic->dev,")):
        body = function_body(x86, f"static int vcpu_mmio_{rw}(struct kvm_vcpu *vcpu, gpa_t addr,")
        lapic = body.index("if (!(lapic_in_kernel(vcpu) &&")
        assert lapic < body.index(dev) < body.index(f"kvm_io_bus_{rw}(vcpu, KVM_MMIO_BUS, addr,")
    lapic_c = git_show(L61, L61_REV, "arch/x86/kvm/lapic.c")
    assert re.search(rf"#define LAPIC_MMIO_LENGTH\s+\(1 << {kk.LAPIC_MMIO_LENGTH.bit_length() - 1}\)",
                     lapic_c)
    in_range = function_body(lapic_c, "static int apic_mmio_in_range(struct kvm_lapic *apic, gpa_t addr)")
    assert "addr >= apic->base_address &&" in in_range
    assert "addr < apic->base_address + LAPIC_MMIO_LENGTH;" in in_range
    for rw in ("read", "write"):
        body = function_body(lapic_c, f"static int apic_mmio_{rw}(struct kvm_vcpu *vcpu, "
                                      "struct kvm_io_device *this,")
        assert "if (!apic_mmio_in_range(apic, address))\n\t\treturn -EOPNOTSUPP;" in body
    assert re.search(r"apic_mmio_ops = \{\n\t\.read\s+= apic_mmio_read,\n\t\.write\s+= "
                     r"apic_mmio_write,", lapic_c)
    reset = function_body(lapic_c, "void kvm_lapic_reset(struct kvm_vcpu *vcpu, bool init_event)")
    assert "msr_val = APIC_DEFAULT_PHYS_BASE | MSR_IA32_APICBASE_ENABLE;" in reset
    apicdef = git_show(L61, L61_REV, "arch/x86/include/asm/apicdef.h")
    assert re.search(rf"#define\s+APIC_DEFAULT_PHYS_BASE\s+{kk.APIC_DEFAULT_PHYS_BASE:#x}\b", apicdef)
    # with the LAPIC in the kernel, the APIC-access page exists only in xAPIC mode
    vmx_c = git_show(L61, L61_REV, "arch/x86/kvm/vmx/vmx.c")
    mode = function_body(vmx_c, "void vmx_set_virtual_apic_mode(struct kvm_vcpu *vcpu)")
    assert "if (!lapic_in_kernel(vcpu))\n\t\treturn;" in mode
    xapic = mode[mode.index("case LAPIC_MODE_XAPIC:"):mode.index("case LAPIC_MODE_X2APIC:")]
    assert "SECONDARY_EXEC_VIRTUALIZE_APIC_ACCESSES" in xapic


def test_out_to_port_0x7e_skips_rip_before_the_exit_unless_the_quirk_is_off():
    out = VmExit.io(0x7E, 1, data=b"\x01")
    s = one(out)
    assert (s.ret, s.calls[-1]) == (0, "kvm_skip_emulated_instruction")
    r = kvm_run([out, VmExit.hlt()])
    completions = [e.label for e in r.trace if e.kind == "call" and e.data.get("completion")]
    assert completions == ["complete_fast_pio_out_port_0x7e"]
    off = KvmConfig(disabled_quirks=kk.KVM_X86_QUIRK_OUT_7E_INC_RIP)
    assert off.describe() == "no in-kernel irqchip, KVM_CAP_DISABLE_QUIRKS 0x8"
    assert off.to_dict()["disabled_quirks"] == 8
    assert "kvm_skip_emulated_instruction" not in one(out, off).calls
    r = kvm_run([out, VmExit.hlt()], off)
    assert [e.label for e in r.trace if e.kind == "call" and e.data.get("completion")] == [
        "complete_fast_pio_out"]
    # another quirk disabled: 0x7e still skips; IN from 0x7e and OUT to 0x7f never do
    assert one(out, KvmConfig(disabled_quirks=1 << 2)).calls[-1] == "kvm_skip_emulated_instruction"
    for other in (VmExit.io(0x7E, 1, in_=True), VmExit.io(0x7F, 1, data=b"\x01")):
        assert "kvm_skip_emulated_instruction" not in one(other).calls
    assert [str(u) for u in r.user_exits] == ["IO out port=0x7e size=1 count=1 data=01", "HLT"]


def test_6_1_source_the_port_0x7e_quirk():
    from _sources import LINUX_6_1 as L61
    from _sources import LINUX_6_1_REV as L61_REV
    from _sources import function_body, git_show

    uapi = git_show(L61, L61_REV, "arch/x86/include/uapi/asm/kvm.h")
    bit = kk.KVM_X86_QUIRK_OUT_7E_INC_RIP.bit_length() - 1
    assert re.search(rf"#define KVM_X86_QUIRK_OUT_7E_INC_RIP\s+\(1 << {bit}\)", uapi)
    x86 = git_show(L61, L61_REV, "arch/x86/kvm/x86.c")
    done = function_body(x86, "static int complete_fast_pio_out_port_0x7e(struct kvm_vcpu *vcpu)")
    assert done.split("{", 1)[1].split() == ["vcpu->arch.pio.count", "=", "0;", "return", "1;"]
    out = function_body(x86, "static int kvm_fast_pio_out(")
    quirk = out[out.index("if (port == 0x7e &&"):out.index("} else {")]
    assert "kvm_check_has_quirk(vcpu->kvm, KVM_X86_QUIRK_OUT_7E_INC_RIP)" in quirk
    assert quirk.index("complete_fast_pio_out_port_0x7e") < quirk.index(
        "kvm_skip_emulated_instruction(vcpu);")
    assert "port == 0x7e" not in function_body(x86, "static int kvm_fast_pio_in(")
    assert "return !(kvm->arch.disabled_quirks & quirk);" in git_show(
        L61, L61_REV, "arch/x86/kvm/x86.h")


def test_qemu_config_has_the_in_kernel_pit():
    assert QEMU.pit and not KvmConfig(irqchip=True).pit
    assert QEMU.describe() == "in-kernel irqchip, in-kernel PIT"
    assert QEMU.to_dict()["pit"] is True
    for port in (0x40, 0x41, 0x42, 0x43):
        assert QEMU.pio_device(port, 1, True, 0x34) == "i8254 PIT"
        assert QEMU.pio_device(port, 1, False, None) == "i8254 PIT"
    assert QEMU.pio_device(0x44, 1, True, 0) is None
    assert QEMU.pio_device(0x43, 2, True, 0) is None  # runs past the PIT's four ports
    assert QEMU.pio_device(0x61, 1, False, None) is None  # no KVM_PIT_SPEAKER_DUMMY from QEMU
    assert KvmConfig(irqchip=True).pio_device(0x40, 1, True, 0) is None
    assert KvmConfig(pit=True).pio_device(0x42, 1, True, 0) == "i8254 PIT"


def test_pit_ports_stay_in_the_kernel_under_qemu():
    out = one(VmExit.io(0x43, 1, data=b"\x34"), QEMU)  # mode/command register
    assert (out.ret, out.where, out.user_exits) == (1, "kernel", ())
    assert out.calls[-2:] == ("pit_ioport_write", "kvm_skip_emulated_instruction")
    inp = one(VmExit.io(0x40, 1, in_=True), QEMU)  # counter 0
    assert inp.ret == 1 and "pit_ioport_read" in inp.calls
    bare = one(VmExit.io(0x40, 1, in_=True), KvmConfig(irqchip=True))
    assert bare.ret == 0 and str(bare.user_exits[0]) == "IO in port=0x40 size=1 count=1"


def test_cr8_write_that_lowers_the_tpr_goes_to_user_space_without_an_irqchip():
    lower = VmExit.mov_to_cr(8, 0x2, cr8=0x5, rip=0x1010)
    s = one(lower)
    assert (s.handler, s.ret, s.where) == ("handle_cr", 0, "user")
    assert [u.to_dict() for u in s.user_exits] == [{"reason": "SET_TPR",
                                                    "detail": "TPR 0x5 -> 0x2"}]
    assert s.calls == ("kvm_set_cr8", "kvm_complete_insn_gp", "kvm_skip_emulated_instruction")
    assert one(lower, QEMU).ret == 1  # the local APIC is in the kernel
    assert one(VmExit.mov_to_cr(8, 0x5, cr8=0x5)).ret == 1  # not lowered
    assert one(VmExit.mov_to_cr(8, 0x9, cr8=0x5)).ret == 1  # raised
    assert one(VmExit.mov_to_cr(0, 0x11)).ret == 1 and one(VmExit.mov_to_cr(4, 0)).ret == 1
    assert one(VmExit(R.CR_ACCESS, 0, 8 | 1 << 4)).calls == ("kvm_skip_emulated_instruction",)
    r = kvm_run([VmExit(R.CR_ACCESS, 0, 2)])  # MOV to CR2 never exits: handle_cr has no case
    assert (r.end, str(r.user_exits[0])) == ("unknown", "UNKNOWN (unhandled control register: "
                                                        "op 0 cr 2)")
    with pytest.raises(KernelModelError, match="CLTS"):
        kvm_run([VmExit(R.CR_ACCESS, 0, 2 << 4)])
    # the exits the model shows as stay-in-the-kernel are the ones vmx.USER_SPACE says are
    for reason, (where, _) in vmx.USER_SPACE.items():
        if where in (vmx.KERNEL, vmx.DEBUG_OR_ERROR):
            assert one(VmExit(reason)).ret == 1, reason


# --- CPUID ------------------------------------------------------------------------------------

def test_cpuid_table_answers():
    a, b, c, d = kvm_cpuid(0)
    assert a == 1 and (b.to_bytes(4, "little") + d.to_bytes(4, "little")
                       + c.to_bytes(4, "little")) == b"GenuineIntel"
    a, b, c, d = kvm_cpuid(kk.KVM_CPUID_SIGNATURE)
    assert a == kk.KVM_CPUID_FEATURES == 0x40000001
    assert b"".join(v.to_bytes(4, "little") for v in (b, c, d)) == kk.KVM_SIGNATURE
    assert kvm_cpuid(1)[2] >> 31 == 1  # the hypervisor bit
    assert kvm_cpuid(0x80000001)[3] >> 29 & 1  # long mode
    assert kvm_cpuid(kk.KVM_CPUID_FEATURES)[0] == kk.KVM_SUPPORTED_PV_FEATURES == 0x01007EFB


def test_cpuid_out_of_range_gets_the_max_basic_leaf_on_intel():
    leaf1 = kvm_cpuid(1)
    for leaf in (2, 7, 0x40000002, 0x80000008, 0xC0000000, 0xFFFFFFFF):
        assert kvm_cpuid(leaf) == leaf1
    # inside its class's range but absent: zeros
    table = (CpuidEntry(0, None, 3, *kk._le32(b"GenuntelineI")), CpuidEntry(3, None, 9, 9, 9, 9))
    assert kvm_cpuid(2, table=table) == (0, 0, 0, 0)
    assert kvm_cpuid(4, table=table) == (9, 9, 9, 9)
    amd = (CpuidEntry(0, None, 1, *kk._le32(b"AuthcAMDenti")), CpuidEntry(1, None, 5, 5, 5, 5))
    assert kvm_cpuid(7, table=amd) == (0, 0, 0, 0)
    # a significant index must match
    idx = table + (CpuidEntry(3, 1, 1, 1, 1, 1),)
    assert kvm_cpuid(3, 0, idx) == (9, 9, 9, 9)  # the first entry of leaf 3 takes any index
    assert kvm_cpuid(3, 1, (table[0], CpuidEntry(3, 1, 1, 1, 1, 1))) == (1, 1, 1, 1)


# --- one exit at a time ---------------------------------------------------------------------------

def test_cpuid_stays_in_the_kernel():
    s = one(VmExit.cpuid(0x40000000, rip=0x1010))
    assert (s.name, s.handler, s.ret, s.where, s.user_exits) == (
        "CPUID", "kvm_emulate_cpuid", 1, "kernel", ())
    assert s.calls == ("kvm_cpuid", "kvm_skip_emulated_instruction")


def test_out_goes_to_user_space_unless_a_device_takes_it():
    out = VmExit.io(0xE0, 1, data=b"A")
    s = one(out)
    assert (s.handler, s.ret, s.where) == ("handle_io", 0, "user")
    assert [u.to_dict() for u in s.user_exits] == [
        {"reason": "IO", "direction": "out", "size": 1, "port": 0xE0, "count": 1, "data": "41"}]
    assert s.calls == ("kvm_fast_pio", "kvm_fast_pio_out", "emulator_pio_out",
                       "emulator_pio_in_out", "kvm_io_bus_write")
    s = one(out, KvmConfig(ioeventfds=(0xE0,)))
    assert (s.ret, s.where, s.user_exits) == (1, "kernel", ())
    assert s.calls[-2:] == ("ioeventfd_write", "kvm_skip_emulated_instruction")
    assert one(out, KvmConfig(ioeventfds=(Ioeventfd(0xE0, 1, True, 0x42),))).ret == 0
    pic = one(VmExit.io(0x20, 1, data=b"\x20"), QEMU)
    assert pic.ret == 1 and "picdev_master_write" in pic.calls
    assert one(VmExit.io(0x20, 1, data=b"\x20")).ret == 0  # no irqchip: user space's PIC


def test_in_is_never_taken_by_an_ioeventfd():
    s = one(VmExit.io(0xE0, 2, in_=True), KvmConfig(ioeventfds=(0xE0,)))
    assert s.ret == 0 and str(s.user_exits[0]) == "IO in port=0xe0 size=2 count=1"
    assert one(VmExit.io(0xA0, 1, in_=True), QEMU).calls[-2] == "picdev_slave_read"


def test_hlt_blocks_with_an_in_kernel_irqchip():
    r = kvm_run([VmExit.hlt(0x1005)])
    assert (r.end, [str(u) for u in r.user_exits], r.steps[0].ret) == ("hlt", ["HLT"], 0)
    r = kvm_run([VmExit.hlt(0x1005)], QEMU)
    assert (r.end, r.user_exits, r.steps[0].ret, r.steps[0].where) == ("blocked", (), 1, "blocked")
    fns = [e.label for e in r.trace if e.kind == "call"]
    assert fns[-3:] == ["vcpu_block", "kvm_vcpu_halt", "kvm_vcpu_block"]
    assert r.trace[-2].kind == "wait" and r.trace[-1].label == "blocked"


def test_a_halted_vcpu_never_takes_the_exits_after_it():
    r = kvm_run([VmExit.hlt(), VmExit.cpuid(0), VmExit.hlt()], QEMU)
    assert (r.end, len(r.steps), r.unreached) == ("blocked", 1, 2)
    assert "(2 VM exits never reached)" in r.table()


def test_mmio_first_touch_is_an_ept_violation_then_misconfigs():
    first = one(VmExit.mmio(0xD0000, 4, is_write=True, data=b"\x78\x56\x34\x12", first=True))
    assert first.handler == "handle_ept_violation" and first.ret == 0
    assert first.calls[:3] == ("kvm_mmu_page_fault", "kvm_mmu_do_page_fault",
                               "x86_emulate_instruction")
    later = one(VmExit.mmio(0xD0000, 4, is_write=False))
    assert later.handler == "handle_ept_misconfig"
    assert later.calls[:3] == ("kvm_io_bus_write", "kvm_mmu_page_fault", "handle_mmio_page_fault")
    assert str(later.user_exits[0]) == "MMIO read addr=0xd0000 len=4"


def test_fast_mmio_skips_the_instruction_without_emulating_it():
    cfg = KvmConfig(ioeventfds=(Ioeventfd(0xD0000),))
    misconfig = one(VmExit.mmio(0xD0000, 4, is_write=False), cfg)  # even a read: it is skipped
    assert misconfig.ret == 1 and misconfig.calls == (
        "kvm_io_bus_write", "ioeventfd_write", "kvm_skip_emulated_instruction")
    violation = one(VmExit.mmio(0xD0000, 2, is_write=True, data=b"\1\0", first=True), cfg)
    assert violation.ret == 1 and "x86_emulate_instruction" in violation.calls
    assert one(VmExit.mmio(0xD0000, 2, is_write=False, first=True), cfg).ret == 0  # a read: user
    assert one(VmExit.mmio(0xFEC00010, 4, is_write=True, data=bytes(4)), QEMU).ret == 1


def test_one_instruction_two_user_exits():
    rmw = VmExit(R.EPT_MISCONFIG, 0x1023, 0, 0xD0008, {"accesses": [
        {"gpa": 0xD0008, "len": 1, "is_write": False, "data": "41"},
        {"gpa": 0xD0008, "len": 1, "is_write": True, "data": "42"}]})
    r = kvm_run([rmw, VmExit.hlt()])
    assert [str(u) for u in r.user_exits] == [
        "MMIO read addr=0xd0008 len=1", "MMIO write addr=0xd0008 len=1 data=42", "HLT"]
    assert len(r.steps[0].user_exits) == 2
    ioctls = [i for i, e in enumerate(r.trace) if e.kind == "ioctl"]
    # the second KVM_RUN finishes in complete_emulated_mmio and returns at once: no VM entry
    second = r.trace.events[ioctls[1]:ioctls[2]]
    assert [e.label for e in second if e.kind == "call"] == [
        "kvm_vcpu_ioctl", "kvm_arch_vcpu_ioctl_run", "complete_emulated_mmio"]
    assert not any(e.kind == "entry" for e in second)
    third = r.trace.events[ioctls[2]:]
    assert [e.label for e in third if e.kind == "return"][0] == "complete_emulated_mmio returns 1"


def test_hypercalls_through_the_hypercall_model():
    vmcall = VmExit(R.VMCALL, 0x101E, 0, None, {"rax": 0xBAD, "rbx": 1, "rcx": 2, "rdx": 3,
                                                "rsi": 4, "cpl": 0, "longmode": False})
    s = one(vmcall)
    assert (s.ret, s.note) == (1, "-KVM_ENOSYS (unknown nr)")
    gpa = VmExit(R.VMCALL, 0x1010, 0, None, {"rax": 12, "rbx": 0x1000, "rcx": 1, "rdx": 0,
                                             "rsi": 0, "longmode": True})
    assert one(gpa).ret == 1  # -KVM_ENOSYS: the exit is not enabled
    r = kvm_run([gpa, VmExit.hlt()], KvmConfig(hypercall_exit_enabled=1 << 12))
    assert [u.reason for u in r.user_exits] == [ExitReason.HYPERCALL, ExitReason.HLT]
    assert r.user_exits[0].to_dict() == {"reason": "HYPERCALL", "nr": 12,
                                         "args": [0x1000, 1, 0, 0, 0, 0], "longmode": 1}
    assert "complete_hypercall_exit" in [e.label for e in r.trace if e.kind == "call"]


def test_triple_fault_and_ud():
    r = kvm_run([VmExit(R.EXCEPTION_NMI, 0x101A, 0, None, {"vector": 6}),
                 VmExit(R.TRIPLE_FAULT, 0x101A)])
    assert [(s.handler, s.ret) for s in r.steps] == [("handle_exception_nmi", 1),
                                                     ("handle_triple_fault", 0)]
    assert r.steps[0].calls == ("handle_ud", "kvm_emulate_instruction", "kvm_queue_exception")
    assert (r.end, str(r.user_exits[0])) == ("shutdown", "SHUTDOWN (triple fault)")
    vmm = one(VmExit(R.EXCEPTION_NMI, 0x1000, 0, None, {"vector": 6, "insn": "vmmcall"}))
    assert vmm.calls[-1] == "emulator_fix_hypercall"


@pytest.mark.parametrize("reason, name, why", [
    (3, "INIT_SIGNAL", "no entry in kvm_vmx_exit_handlers"),
    (16, "RDTSC", "no entry in kvm_vmx_exit_handlers"),
    (6, "unknown (6)", "no entry in kvm_vmx_exit_handlers"),
    (76, "unknown (76)", "beyond kvm_vmx_max_exit_handlers"),
    (0xFFFF, "unknown (65535)", "beyond kvm_vmx_max_exit_handlers"),
])
def test_unknown_exit_reasons_are_internal_errors_with_number_and_name(reason, name, why):
    r = kvm_run([VmExit(reason, 0x1000), VmExit.hlt()])
    s = r.steps[0]
    assert (s.name, s.handler, s.ret, r.end, r.unreached) == (name, None, 0, "internal_error", 1)
    assert r.user_exits[0].to_dict() == {"reason": "INTERNAL_ERROR", "detail": (
        f"suberror 4 (UNEXPECTED_EXIT_REASON), data [{reason:#x} 0x0]")}
    assert why in s.note and str(reason) in s.note
    ev = next(e for e in r.trace if e.kind == "vmexit")
    assert ev["basic"] == reason and ev["name"] == name and ev["handler"] is None
    assert "unexpected_vmexit" in next(e for e in r.trace if e.label == "__vmx_handle_exit")["note"]


def test_failed_vm_entry():
    r = kvm_run([VmExit(0x80000021)])
    assert r.user_exits[0].to_dict() == {
        "reason": "FAIL_ENTRY", "detail": "hardware_entry_failure_reason 0x80000021 on cpu 0"}
    assert r.end == "fail_entry"


def test_generic_kernel_handlers_and_unsimulated_ones():
    assert one(VmExit(R.CR_ACCESS)).ret == 1 and one(VmExit(R.PAUSE_INSTRUCTION)).ret == 1
    with pytest.raises(KernelModelError, match=r"74 \(EXIT_REASON_BUS_LOCK\) → "
                                               r"handle_bus_lock_vmexit: the model does not"):
        kvm_run([VmExit(R.BUS_LOCK)])
    with pytest.raises(KernelModelError, match="vector 14"):
        kvm_run([VmExit(R.EXCEPTION_NMI, before={"vector": 14})])


def test_msr_exits():
    s = one(VmExit(R.MSR_READ, 0, 0, None, {"ecx": 0xC0000080}))
    assert (s.handler, s.ret, s.calls) == ("kvm_emulate_rdmsr", 1, ("kvm_get_msr_with_filter",))
    r = kvm_run([VmExit(R.MSR_WRITE, 0, 0, None, {"ecx": 0xC0000080, "eax": 0x100, "edx": 0})])
    assert "vmx_exit_handlers_fastpath" in [e.label for e in r.trace if e.kind == "call"]


@pytest.mark.parametrize("bad, match", [
    ({"exit_reason": "10"}, "exit_reason, a 32-bit number"),
    ({"exit_reason": -1}, "exit_reason, a 32-bit number"),
    ({"rip": 5}, "exit_reason, a 32-bit number"),
])
def test_malformed_vm_exits(bad, match):
    with pytest.raises(KernelModelError, match=match):
        kvm_run([bad])


def test_malformed_io_and_mmio():
    with pytest.raises(KernelModelError, match="needs 2 data bytes"):
        kvm_run([VmExit(R.IO_INSTRUCTION, 0, vmx.io_qualification(2, False, 0xE0), None,
                        {"data": "41"})])
    with pytest.raises(KernelModelError, match="bits 2:0 = 2 is no access size"):
        kvm_run([VmExit(R.IO_INSTRUCTION, 0, 0xE00002)])
    with pytest.raises(KernelModelError, match="needs before\\['accesses'\\]"):
        kvm_run([VmExit(R.EPT_MISCONFIG, 0, 0, 0xD0000)])
    with pytest.raises(KernelModelError, match="writes 1 bytes"):
        VmExit.io(0xE0, 1, data=b"")
    with pytest.raises(KernelModelError, match="must be a KvmConfig"):
        kvm_run([], {"irqchip": True})


def test_running_out_of_vm_exits():
    r = kvm_run([VmExit.cpuid(0)])
    assert r.end == "running" and r.user_exits == () and r.unreached == 0


# --- the trace ----------------------------------------------------------------------------------

def test_trace_of_cpuid_loop_reads_like_the_kernel():
    r = kvm_run([VmExit.cpuid(0x40000000, rip=0x101A)] * 3
                + [VmExit.io(0xE0, 4, data=bytes([3, 0, 0, 0]), rip=0x1026), VmExit.hlt(0x102D)],
                title="cpuid_loop")
    t = r.trace
    assert repr(r) == ("KernelRun(5 VM exits: 3 handled in the kernel, 2 to user space; "
                       "2 KVM_RUN returns; ended: hlt)")
    assert Trace.from_json(t.to_json()) == t
    assert t.meta["config"] == "no in-kernel irqchip"
    first = [(e.actor, e.kind, e.label) for e in t.events[:16]]
    assert first == [
        ("qemu", "ioctl", "KVM_RUN"), ("kvm", "call", "kvm_vcpu_ioctl"),
        ("kvm", "call", "kvm_arch_vcpu_ioctl_run"), ("kvm", "call", "vcpu_run"),
        ("kvm", "call", "vcpu_enter_guest"), ("kvm", "call", "vmx_vcpu_run"),
        ("kvm", "entry", "VMLAUNCH"), ("guest", "run", "runs to CPUID at rip 0x101a"),
        ("kvm", "vmexit", "EXIT_REASON_CPUID"), ("kvm", "call", "vmx_handle_exit_irqoff"),
        ("kvm", "call", "vmx_handle_exit"), ("kvm", "call", "__vmx_handle_exit"),
        ("kvm", "call", "kvm_emulate_cpuid"), ("kvm", "call", "kvm_cpuid"),
        ("kvm", "call", "kvm_skip_emulated_instruction"),
        ("kvm", "return", "kvm_emulate_cpuid returns 1")]
    assert [e.label for e in t if e.kind == "entry"] == ["VMLAUNCH"] + ["VMRESUME"] * 4
    assert [e.label for e in t if e.kind == "exit"] == ["KVM_EXIT_IO", "KVM_EXIT_HLT"]
    assert [e.label for e in t if e.actor == "qemu" and e.kind == "handle"] == [
        "kvm_handle_io", "kvm_arch_handle_exit → kvm_handle_halt"]
    # every kvm event has a depth the widget can draw; calls name their file
    for e in t:
        if e.actor == "kvm":
            assert 0 <= e["depth"] < 12, e
        if e.kind == "call":
            assert e["file"], e
    # an exit that stays in the kernel never reaches the user-space lane
    exits = [i for i, e in enumerate(t) if e.kind == "vmexit"]
    for i, j in zip(exits[:3], exits[1:4], strict=True):
        assert not any(e.actor == "qemu" for e in t.events[i:j])
    io = t.events[exits[3]]
    assert (io["where"], io["qual"], io["qualification"]) == ("user", "OUT port 0xe0 size 4",
                                                              0xE00003)
    exit_ev = next(e for e in t if e.kind == "exit")
    assert dict(exit_ev.data) == {"exit_reason": 2, "depth": 0, "direction": "out", "size": 4,
                                  "port": 0xE0, "count": 1, "data": "03000000"}


ACTIONS = st.one_of(
    st.builds(lambda leaf: VmExit.cpuid(leaf), st.integers(0, 2**32 - 1)),
    st.builds(lambda port, size, in_: VmExit.io(port, size, in_=in_, data=b"" if in_ else
                                                bytes(size)),
              st.sampled_from([0x20, 0x60, 0x80, 0xE0, 0x3F8]), st.sampled_from([1, 2, 4]),
              st.booleans()),
    st.builds(lambda w, first: VmExit.mmio(0xD0000, 4, is_write=w, data=bytes(4) if w else b"",
                                           first=first), st.booleans(), st.booleans()),
)
CONFIGS = st.builds(KvmConfig, st.booleans(),
                    st.lists(st.sampled_from([0x80, 0xE0]), max_size=2).map(tuple))


@settings(max_examples=60, deadline=None)
@given(st.lists(ACTIONS, max_size=8), CONFIGS)
def test_invariants_of_any_walk(actions, cfg):
    r = kvm_run(actions + [VmExit.hlt()], cfg)
    assert len(r.steps) == len(actions) + 1 and r.unreached == 0
    assert r.end == ("blocked" if cfg.irqchip else "hlt")
    assert list(r.user_exits) == [u for s in r.steps for u in s.user_exits]
    for s, ex in zip(r.steps, actions, strict=False):
        assert (s.ret == 1) == (s.user_exits == ())
        if ex.exit_reason == R.CPUID:
            assert s.where == "kernel"
        if ex.exit_reason == R.IO_INSTRUCTION:
            q = vmx.IoQualification.decode(ex.qualification)
            taken = (not q.in_ and any(e.addr == q.port for e in cfg.ioeventfds)) or (
                cfg.irqchip and q.port == 0x20 and q.size <= 2)
            assert s.ret == int(taken), (q, cfg)
    t = r.trace
    assert sum(1 for e in t if e.kind == "exit") == len(r.user_exits)
    assert sum(1 for e in t if e.kind == "vmexit") == len(r.steps)
    assert sum(1 for e in t if e.kind == "ioctl") == len(r.user_exits) + (r.end == "blocked")
    assert Trace.from_json(t.to_json()) == t


# --- the unicorn backend's VM exits ----------------------------------------------------------

@pytest.mark.parametrize("name", sorted({**ALL, **EXTRA}))
def test_model_decides_the_exits_the_backend_returned(name):
    guest = {**ALL, **EXTRA}[name]
    log, result = vm_exits_of(guest)
    walk = kvm_run(log)
    assert [u.to_dict() for u in walk.user_exits] == [e.to_dict() for e in result.exits]
    assert walk.end == result.end
    assert [k.user_exit for k in log] == [s.where == "user" for s in walk.steps]


def test_cpuid_loop_vm_exits():
    log, result = vm_exits_of(cpuid_loop.GUEST)
    assert [str(k) for k in log] == [
        "CPUID at rip 0x101a: kvm_emulate_cpuid (kernel)"] * 3 + [
        "IO_INSTRUCTION at rip 0x1026: handle_io → user space",
        "HLT at rip 0x102d: kvm_emulate_halt → user space"]
    assert log[0].before == {"eax": 0x40000000, "ecx": 0}
    assert log[0].after == dict(zip(("eax", "ebx", "ecx", "edx"), kvm_cpuid(0x40000000),
                                    strict=True))
    assert (log[3].exit_reason, log[3].qualification) == (30, vmx.io_qualification(4, False, 0xE0))
    assert [str(e) for e in result.exits] == ["IO out port=0xe0 size=4 count=1 data=03000000",
                                              "HLT"]
    q = kvm_run(log, KvmConfig.qemu([0xE0]))
    assert (q.counts(), q.user_exits, q.end) == ({"kernel": 4, "user": 0, "blocked": 1}, (),
                                                 "blocked")


CPUID_SHOW = Guest("cpuid_show", 16, bytes.fromhex(
    "66b8000000406631c90fa2"  # mov eax, 0x40000000; xor ecx, ecx; cpuid
    "6689d8e6e06689c8e6e06689d0e6e0"  # mov eax, ebx / out 0xe0, al ... (ebx, ecx, edx low bytes)
    "f4"), "mov eax, 0x40000000\nxor ecx, ecx\ncpuid\nmov eax, ebx\nout 0xe0, al\n"
           "mov eax, ecx\nout 0xe0, al\nmov eax, edx\nout 0xe0, al\nhlt")


def test_cpuid_answers_land_in_the_registers():
    _, result = vm_exits_of(CPUID_SHOW)
    assert [e.io.data for e in result.exits[:3]] == [b"K", b"V", b"M"]


def test_mmio_records_hold_every_access_of_the_instruction():
    log, _ = vm_exits_of(ALL["mmio"])
    assert [k.reason for k in log] == ["EPT_VIOLATION", "EPT_MISCONFIG", "IO_INSTRUCTION",
                                       "EPT_MISCONFIG", "EPT_MISCONFIG", "EPT_MISCONFIG",
                                       "IO_INSTRUCTION", "HLT"]
    assert log[0].qualification == 0x182 and log[0].gpa == 0xD0000
    assert log[4].before["accesses"] == [
        {"gpa": 0xD0008, "len": 1, "is_write": False, "data": "41"},
        {"gpa": 0xD0008, "len": 1, "is_write": True, "data": "42"}]


def test_triple_fault_and_exceptions_records():
    log, _ = vm_exits_of(ALL["triple_fault"])
    assert [(k.reason, k.handler, k.before) for k in log] == [
        ("EXCEPTION_NMI", "handle_exception_nmi", {"vector": 6}),
        ("TRIPLE_FAULT", "handle_triple_fault", {})]


def test_vmcall_and_vmmcall_records():
    log, _ = vm_exits_of(ALL["hypercall"])
    vmcalls = [k for k in log if k.reason == "VMCALL"]
    assert vmcalls[0].handler == "kvm_emulate_hypercall"
    assert vmcalls[0].before == {"rax": 0xBAD, "rbx": 1, "rcx": 2, "rdx": 3, "rsi": 4, "cpl": 0,
                                 "longmode": False}
    assert vmcalls[0].after == {"rax": 0xFFFFFC18, "rip": 0x1021,
                                "result": "-KVM_ENOSYS (unknown nr)"}
    vmm = Guest("vmmcall", 16, bytes.fromhex("66b8010000000f01d9e6e0f4"),
                "mov eax, 1\nvmmcall\nout 0xe0, al\nhlt")
    log, result = vm_exits_of(vmm)
    assert [k.reason for k in log] == ["EXCEPTION_NMI", "VMCALL", "IO_INSTRUCTION", "HLT"]
    assert log[0].before == {"vector": 6, "insn": "vmmcall"}
    assert kvm_run(log).steps[0].calls[-1] == "emulator_fix_hypercall"


def test_string_io_record():
    rep = Guest("rep_outsb", 16, bytes.fromhex("be0c10b90200baf803f36ef4") + b"hi",
                "mov si, 0x100c\nmov cx, 2\nmov dx, 0x3f8\nrep outsb\nhlt\n.ascii \"hi\"")
    log, result = vm_exits_of(rep)
    assert [k.qualification for k in log[:2]] == [vmx.io_qualification(1, False, 0x3F8, True)] * 2
    assert log[0].before == {"port": 0x3F8, "size": 1, "direction": "out", "data": "68",
                             "count": 1}
    walk = kvm_run(log)
    assert walk.steps[0].calls[0] == "kvm_emulate_instruction"
    assert [u.to_dict() for u in walk.user_exits] == [e.to_dict() for e in result.exits]


def test_unmapped_fetch_is_an_emulation_failure():
    unicorn_or_skip()
    with UnicornVcpu(MISBEHAVING["unmapped_fetch"]) as v:
        e = v.run()
    assert e.reason == ExitReason.INTERNAL_ERROR
    k = v.kernel_exits[0]
    assert (k.reason, k.before, k.gpa, k.qualification) == ("EPT_VIOLATION", {"fetch": True},
                                                            0x10000, 0x184)
    walk = kvm_run(v.kernel_exits)
    assert walk.user_exits[0].to_dict() == {"reason": "INTERNAL_ERROR",
                                            "detail": "suberror 1 (EMULATION)"}


def test_kernel_exits_option_and_record_shape():
    unicorn_or_skip()
    log: list = []
    with UnicornVcpu.from_guest(cpuid_loop.GUEST, kernel_exits=log) as v:
        assert v.kernel_exits is log
        v.run()
    assert len(log) == 4 and isinstance(log[0], KernelExit)
    assert json.dumps(log[0].to_dict())
    assert KernelExit("CPUID", 0, "kvm_emulate_cpuid").exit_reason == 10
    with pytest.raises(VbookError, match="kernel_exits must be a list"):
        UnicornVcpu(cpuid_loop.GUEST, kernel_exits=())


def test_out_records_name_the_right_instruction():
    # two OUTs of the same byte to the same port in one translation block
    g = Guest("two_outs", 16, bytes.fromhex("b041e6e0e6e090e6e0f4"),
              "mov al, 0x41\nout 0xe0, al\nout 0xe0, al\nnop\nout 0xe0, al\nhlt")
    log, _ = vm_exits_of(g)
    assert [k.rip for k in log] == [0x1002, 0x1004, 0x1007, 0x1009]


# --- cpuid_loop.timing_guest --------------------------------------------------------------------

@pytest.mark.parametrize("cpuids, rounds", [(3, 1), (0, 5), (100, 7), (2**32 - 1, 2**32 - 1)])
def test_timing_guest_bytes_are_its_listing(cpuids, rounds):
    why = build.tools_missing()
    if why:
        pytest.skip(why)
    g = cpuid_loop.timing_guest(cpuids, rounds)
    assert build.assemble(g.listing) == g.code


def test_timing_guest_exits():
    log, result = vm_exits_of(cpuid_loop.timing_guest(2, 3))
    assert [k.reason for k in log] == (["CPUID", "CPUID", "IO_INSTRUCTION"] * 3) + ["HLT"]
    assert len(result.exits) == 4
    log, result = vm_exits_of(cpuid_loop.timing_guest(0, 2))
    assert [k.reason for k in log] == ["IO_INSTRUCTION", "IO_INSTRUCTION", "HLT"]
    for bad in (dict(cpuids=-1, rounds=1), dict(cpuids=1, rounds=0), dict(cpuids=1.0, rounds=1)):
        with pytest.raises(GuestError, match="timing_guest"):
            cpuid_loop.timing_guest(**bad)


def test_cpuid_loop_on_kvm_gives_what_the_model_decides():
    for backend in ("kvm", "unicorn"):
        if available()[backend]:
            pytest.skip(f"{backend} backend: {available()[backend]}")
    log, _ = vm_exits_of(cpuid_loop.GUEST)
    real = run_guest(cpuid_loop.GUEST, "kvm")
    assert [e.to_dict() for e in real.exits] == [u.to_dict() for u in kvm_run(log).user_exits]


# --- function names against the Linux 6.1 source ---------------------------------------------

LINUX_6_1 = os.environ.get("VBOOK_LINUX_6_1_GIT", "/work/.mirror/krr-io+linux-6.1.0/repo")
LINUX_6_1_REV = "7c210bc387c3fd282b1579833bbf6b7411ef4f30"


def test_every_function_the_model_names_is_defined_in_its_file():
    if not Path(LINUX_6_1).exists():
        pytest.skip(f"no kernel tree at {LINUX_6_1} (set VBOOK_LINUX_6_1_GIT)")
    missing = []
    cache: dict[str, str] = {}
    for fn, path in kk.FILES.items():
        if path not in cache:
            p = subprocess.run(["git", "--git-dir", LINUX_6_1, "show", f"{LINUX_6_1_REV}:{path}"],
                               capture_output=True, text=True)
            if p.returncode:
                pytest.skip(f"{path} not readable: {p.stderr[:200]}")
            cache[path] = p.stdout
        src = cache[path]
        if path.endswith(".S"):
            ok = f"SYM_FUNC_START({fn})" in src
        else:
            # a definition: "int fn(" or, kernel style, "static int\nfn(" on its own line
            ok = re.search(rf"^(?:[a-z].*[ *])?{re.escape(fn)}\(", src, re.M) is not None
        if not ok:
            missing.append(f"{fn} in {path}")
    assert not missing, missing


def test_the_vmx_ops_the_model_names():
    if not Path(LINUX_6_1).exists():
        pytest.skip(f"no kernel tree at {LINUX_6_1} (set VBOOK_LINUX_6_1_GIT)")
    src = subprocess.run(["git", "--git-dir", LINUX_6_1, "show",
                          f"{LINUX_6_1_REV}:arch/x86/kvm/vmx/vmx.c"],
                         capture_output=True, text=True).stdout
    for op, fn in (("vcpu_run", "vmx_vcpu_run"), ("handle_exit", "vmx_handle_exit"),
                   ("handle_exit_irqoff", "vmx_handle_exit_irqoff")):
        assert re.search(rf"\.{op} = {fn},", src), op


def test_kvm_cpuid_leaves_as_cpuid_c_reports_them():
    if not Path(LINUX_6_1).exists():
        pytest.skip(f"no kernel tree at {LINUX_6_1} (set VBOOK_LINUX_6_1_GIT)")
    src = subprocess.run(["git", "--git-dir", LINUX_6_1, "show",
                          f"{LINUX_6_1_REV}:arch/x86/kvm/cpuid.c"],
                         capture_output=True, text=True).stdout
    start = src.index("case KVM_CPUID_FEATURES:")
    body = src[start:src.index("case 0x80000000:", start)]
    named = set(re.findall(r"KVM_FEATURE_(\w+)", body))
    from vbook.models.hypercall import PvFeature
    assert sum(1 << int(PvFeature[n]) for n in named) == kk.KVM_SUPPORTED_PV_FEATURES
    sig = src[src.index("case KVM_CPUID_SIGNATURE: {"):]
    sig = sig[:sig.index("break;")]
    assert "entry->eax = KVM_CPUID_FEATURES;" in sig
    # the signature KVM offers in KVM_GET_SUPPORTED_CPUID: EBX, ECX, EDX = KVM_SIGNATURE
    assert "const u32 *sigptr = (const u32 *)KVM_SIGNATURE;" in sig
    assert [re.search(rf"entry->{r} = sigptr\[(\d)\];", sig)[1] for r in ("ebx", "ecx", "edx")] \
        == ["0", "1", "2"]
    para = subprocess.run(["git", "--git-dir", LINUX_6_1, "show",
                           f"{LINUX_6_1_REV}:arch/x86/include/uapi/asm/kvm_para.h"],
                          capture_output=True, text=True).stdout
    m = re.search(r'#define KVM_SIGNATURE "(.*)"', para)
    assert m and m[1].encode().decode("unicode_escape").encode() == kk.KVM_SIGNATURE
    assert re.search(rf"#define KVM_CPUID_SIGNATURE\s+{kk.KVM_CPUID_SIGNATURE:#x}\b", para)
    # kvm_emulate_cpuid: EAX/ECX in, kvm_cpuid looks them up, EAX..EDX out, then the skip
    emu = src[src.index("int kvm_emulate_cpuid(struct kvm_vcpu *vcpu)"):]
    emu = emu[:emu.index("\n}\n")]
    steps = ["eax = kvm_rax_read(vcpu);", "ecx = kvm_rcx_read(vcpu);",
             "kvm_cpuid(vcpu, &eax, &ebx, &ecx, &edx, false);", "kvm_rax_write(vcpu, eax);",
             "kvm_rdx_write(vcpu, edx);", "return kvm_skip_emulated_instruction(vcpu);"]
    assert [emu.index(x) for x in steps] == sorted(emu.index(x) for x in steps)


def test_6_1_source_ioeventfd_matches_like_the_model():
    """virt/kvm/eventfd.c: ioeventfd_in_range's checks in Ioeventfd.matches' order; writes only
    (ioeventfd_ops has no .read); length 0 also on KVM_FAST_MMIO_BUS; the lengths allowed."""
    if not Path(LINUX_6_1).exists():
        pytest.skip(f"no kernel tree at {LINUX_6_1} (set VBOOK_LINUX_6_1_GIT)")
    from _sources import function_body
    src = subprocess.run(["git", "--git-dir", LINUX_6_1, "show",
                          f"{LINUX_6_1_REV}:virt/kvm/eventfd.c"], capture_output=True, text=True).stdout
    rng = src[src.index("ioeventfd_in_range(struct _ioeventfd *p, gpa_t addr, int len, const void *val)"):]
    rng = rng[:rng.index("\n}\n")]
    checks = ["if (addr != p->addr)", "if (!p->length)", "if (len != p->length)",
              "if (p->wildcard)", "return _val == p->datamatch;"]
    assert [rng.index(c) for c in checks] == sorted(rng.index(c) for c in checks)
    ops = src[src.index("static const struct kvm_io_device_ops ioeventfd_ops = {"):]
    ops = ops[:ops.index("};")]
    assert ".write      = ioeventfd_write," in ops and ".read" not in ops
    assert "p->wildcard = true;" in src and "KVM_IOEVENTFD_FLAG_DATAMATCH" in src
    assign = function_body(src, "kvm_assign_ioeventfd(struct kvm *kvm, struct kvm_ioeventfd *args)")
    assert re.search(r"case 0:\n\tcase 1:\n\tcase 2:\n\tcase 4:\n\tcase 8:\n\t\tbreak;\n"
                     r"\tdefault:\n\t\treturn -EINVAL;", assign)
    assert "if (!args->len && (args->flags & KVM_IOEVENTFD_FLAG_DATAMATCH))\n\t\treturn -EINVAL;" \
        in assign
    assert re.search(r"if \(!args->len && bus_idx == KVM_MMIO_BUS\) \{\n\t\tret = "
                     r"kvm_assign_ioeventfd_idx\(kvm, KVM_FAST_MMIO_BUS, args\);", assign)


def test_round_trips_count_the_steps_between_exit_and_entry():
    r = kvm_run([VmExit.cpuid(0x40000000, rip=0x101A)] * 3
                + [VmExit.io(0xE0, 4, data=bytes([3, 0, 0, 0]), rip=0x1026), VmExit.hlt(0x102D)])
    assert [(t.name, t.where, t.kernel_calls, t.kvm_run_returns, t.user_steps)
            for t in r.round_trips()] == [
        ("CPUID", "kernel", 8, 0, 0), ("CPUID", "kernel", 8, 0, 0), ("CPUID", "kernel", 8, 0, 0),
        ("IO_INSTRUCTION", "user", 15, 1, 1), ("HLT", "user", 6, 1, 1)]
    rmw = VmExit(R.EPT_MISCONFIG, 0, 0, 0xD0008, {"accesses": [
        {"gpa": 0xD0008, "len": 1, "is_write": False, "data": "41"},
        {"gpa": 0xD0008, "len": 1, "is_write": True, "data": "42"}]})
    assert kvm_run([rmw, VmExit.hlt()]).round_trips()[0].kvm_run_returns == 2


def test_measure_reports_both_kinds_of_exit():
    unicorn_or_skip()
    t = cpuid_loop.measure("unicorn", outs=50, cpuids=2, rounds=10)
    assert (t.backend, t.user_exits, t.kernel_exits) == ("unicorn", 60, 20)
    assert t.user_exit > 0 and t.kernel_exit >= 0 and t.host == ""
    assert str(t).startswith("on unicorn:\n  exit to user space and back ")
    assert "per CPUID" in str(t) and "kernel" not in str(t)


@pytest.mark.parametrize("host, says", [
    ("VMX", "CPUID exit handled in the kernel 5.00 µs (1,000 CPUIDs)"),
    ("SVM", "CPUID exit handled in the kernel 5.00 µs (1,000 CPUIDs)"),
    ("PVM", "one CPUID loop pass in KVM's emulator (5 instructions, no VM exit) 5.00 µs "
            "(1,000 passes)"),
    ("other", "per CPUID 5.00 µs (1,000 CPUIDs)"),
])
def test_timing_says_what_was_measured_on_which_host(host, says):
    t = cpuid_loop.Timing("kvm", 20e-6, 5e-6, 2_000, 1_000, host)
    assert str(t).splitlines() == [
        f"on kvm, a {host} host:", "  exit to user space and back 20.00 µs (50,000/s, 2,000 OUTs);",
        f"  {says};", "  ratio 4.0"]
    assert all(len(line) <= 110 for line in str(t).splitlines())
    assert str(cpuid_loop.Timing("kvm", 20e-6, 0.0, 2, 1, host)).endswith("ratio -")
    # the loop pass the PVM figure counts: mov eax / xor ecx / cpuid / dec esi / jnz
    body = cpuid_loop.LISTING[cpuid_loop.LISTING.index("again:"):cpuid_loop.LISTING.index("show:")]
    assert len([ln for ln in body.splitlines()[1:] if ln.strip()]) == cpuid_loop.LOOP_PASS


def test_msr_exits_of_long_mode_and_the_passthrough_msrs():
    log, _ = vm_exits_of(ALL["long_mode"])
    assert [(k.reason, k.rip, k.before) for k in log[:2]] == [
        ("MSR_READ", 0x1051, {"ecx": vmx.MSR_EFER}),
        ("MSR_WRITE", 0x1059, {"ecx": vmx.MSR_EFER, "eax": 0x100, "edx": 0})]
    assert log[0].after == {"eax": 0, "edx": 0}
    assert [s.ret for s in kvm_run(log).steps[:2]] == [1, 1]
    # FS_BASE goes straight to the CPU (no exit); EFER exits
    g = Guest("msrs", 16, bytes.fromhex("66b9000100c06631c06631d20f30" "66b9800000c00f32" "f4"),
              "mov ecx, 0xc0000100\nxor eax, eax\nxor edx, edx\nwrmsr\n"
              "mov ecx, 0xc0000080\nrdmsr\nhlt")
    log, _ = vm_exits_of(g)
    assert [(k.reason, k.before) for k in log] == [("MSR_READ", {"ecx": vmx.MSR_EFER}),
                                                    ("HLT", {})]


def test_msr_passthrough_is_what_vmx_vcpu_create_sets():
    if not Path(LINUX_6_1).exists():
        pytest.skip(f"no kernel tree at {LINUX_6_1} (set VBOOK_LINUX_6_1_GIT)")
    src = subprocess.run(["git", "--git-dir", LINUX_6_1, "show",
                          f"{LINUX_6_1_REV}:arch/x86/kvm/vmx/vmx.c"],
                         capture_output=True, text=True).stdout
    body = src[src.index("static int vmx_vcpu_create(struct kvm_vcpu *vcpu)"):]
    body = body[:body.index("if (kvm_cstate_in_guest(vcpu->kvm))")]
    found = re.findall(r"vmx_disable_intercept_for_msr\(vcpu, (MSR_\w+), MSR_TYPE_(RW|R)\);", body)
    numbers = {name: getattr(vmx, name) for name, _ in found}
    assert {numbers[n] for n, _ in found} == vmx.MSR_PASSTHROUGH_READ
    assert {numbers[n] for n, t in found if t == "RW"} == vmx.MSR_PASSTHROUGH_WRITE
    index = subprocess.run(["git", "--git-dir", LINUX_6_1, "show",
                            f"{LINUX_6_1_REV}:arch/x86/include/asm/msr-index.h"],
                           capture_output=True, text=True).stdout
    for name, value in {**numbers, "MSR_EFER": vmx.MSR_EFER}.items():
        m = re.search(rf"#define {name}\s+(0x[0-9a-fA-F]+)", index)
        assert m and int(m.group(1), 16) == value, name


def test_qemu_9_2_creates_the_pit_in_the_kernel():
    """KvmConfig.qemu()'s PIT: where QEMU 9.2.4 calls KVM_CREATE_PIT2, and what Linux 6.1 does."""
    from _sources import LINUX_6_1 as L61
    from _sources import LINUX_6_1_REV as L61_REV
    from _sources import QEMU_9, function_body, git_show

    i8254 = git_show(QEMU_9, "HEAD", "hw/i386/kvm/i8254.c")
    realize = function_body(i8254, "static void kvm_pit_realizefn(DeviceState *dev, Error **errp)")
    assert "ret = kvm_vm_ioctl(kvm_state, KVM_CREATE_PIT2, &config);" in realize
    assert re.search(r"struct kvm_pit_config config = \{\s*\.flags = 0,\s*\};", realize)
    pc = git_show(QEMU_9, "HEAD", "hw/i386/pc.c")
    assert re.search(r"if \(kvm_pit_in_kernel\(\)\) \{\s*pit = kvm_pit_init\(isa_bus, 0x40\);", pc)
    assert "(x86ms->pit == ON_OFF_AUTO_AUTO || x86ms->pit == ON_OFF_AUTO_ON)" in pc
    kvm_h = git_show(QEMU_9, "HEAD", "target/i386/kvm/kvm_i386.h")
    assert re.search(r"#define kvm_pit_in_kernel\(\) \\\s*\(kvm_irqchip_in_kernel\(\) && "
                     r"!kvm_irqchip_is_split\(\)\)", kvm_h)
    header = git_show(L61, L61_REV, "arch/x86/kvm/i8254.h")
    (base, length, _, fn), = kk.PIT_PORTS
    assert re.search(rf"#define KVM_PIT_BASE_ADDRESS\s+{base:#x}\b", header)
    assert re.search(rf"#define KVM_PIT_MEM_LENGTH\s+{length}\b", header)
    create = function_body(git_show(L61, L61_REV, "arch/x86/kvm/i8254.c"),
                           "struct kvm_pit *kvm_create_pit(struct kvm *kvm, u32 flags)")
    assert re.search(r"kvm_io_bus_register_dev\(kvm, KVM_PIO_BUS, KVM_PIT_BASE_ADDRESS,\s*"
                     r"KVM_PIT_MEM_LENGTH, &pit->dev\);", create)
    assert "if (flags & KVM_PIT_SPEAKER_DUMMY) {" in create  # 0x61 only with that flag
    ops = git_show(L61, L61_REV, "arch/x86/kvm/i8254.c")
    assert f".read     = {fn}_read," in ops and f".write    = {fn}_write," in ops


def test_6_1_source_in_kernel_devices_and_the_run_loop():
    """The PIC and IOAPIC ranges the model puts in the kernel, and vcpu_run's r <= 0 rule."""
    from _sources import LINUX_6_1 as L61
    from _sources import LINUX_6_1_REV as L61_REV
    from _sources import function_body, git_show

    pic = git_show(L61, L61_REV, "arch/x86/kvm/i8259.c")
    got = re.findall(r"kvm_io_bus_register_dev\(kvm, KVM_PIO_BUS, (0x[0-9a-f]+), (\d+),", pic)
    assert [(int(a, 16), int(n)) for a, n in got] == [(b, n) for b, n, _, _ in kk.PIC_PORTS]
    for _, _, _, fn in kk.PIC_PORTS:
        assert f"static int {fn}_read(" in pic and f"static int {fn}_write(" in pic
    ioapic_h = git_show(L61, L61_REV, "arch/x86/kvm/ioapic.h")
    assert re.search(rf"#define IOAPIC_DEFAULT_BASE_ADDRESS\s+{kk.IOAPIC_BASE:#x}\b", ioapic_h)
    assert re.search(rf"#define IOAPIC_MEM_LENGTH\s+{kk.IOAPIC_LEN:#x}\b", ioapic_h)
    x86 = git_show(L61, L61_REV, "arch/x86/kvm/x86.c")
    loop = function_body(x86, "static int vcpu_run(struct kvm_vcpu *vcpu)")
    assert "r = vcpu_enter_guest(vcpu);" in loop and "r = vcpu_block(vcpu);" in loop
    assert re.search(r"if \(r <= 0\)\s*break;", loop)


def test_6_1_source_vcpu_run_can_stop_after_a_handler_returned_1():
    """Chapter 03: "never" is about the handler. After it returns 1, vcpu_run still leaves for a
    signal (KVM_EXIT_INTR, -EINTR), an interrupt window user space asked for, or a request the
    next vcpu_enter_guest finds."""
    from _sources import LINUX_6_1 as L61
    from _sources import LINUX_6_1_REV as L61_REV
    from _sources import function_body, git_show

    x86 = git_show(L61, L61_REV, "arch/x86/kvm/x86.c")
    loop = function_body(x86, "static int vcpu_run(struct kvm_vcpu *vcpu)")
    assert re.search(r"if \(dm_request_for_irq_injection\(vcpu\) &&\n\s*"
                     r"kvm_vcpu_ready_for_interrupt_injection\(vcpu\)\) \{\n\s*r = 0;\n\s*"
                     r"vcpu->run->exit_reason = KVM_EXIT_IRQ_WINDOW_OPEN;", loop)
    assert "r = xfer_to_guest_mode_handle_work(vcpu);" in loop
    entry = git_show(L61, L61_REV, "kernel/entry/kvm.c")
    assert re.search(r"_TIF_SIGPENDING \| _TIF_NOTIFY_SIGNAL\)\) \{\n\s*"
                     r"kvm_handle_signal_exit\(vcpu\);\n\s*return -EINTR;", entry)
    host = git_show(L61, L61_REV, "include/linux/kvm_host.h")
    sig = host[host.index("static inline void kvm_handle_signal_exit(struct kvm_vcpu *vcpu)"):]
    assert "vcpu->run->exit_reason = KVM_EXIT_INTR;" in sig[:200]
    enter = function_body(x86, "static int vcpu_enter_guest(struct kvm_vcpu *vcpu)")
    enter = enter[:enter.index("if (kvm_check_request(KVM_REQ_EVENT, vcpu) || req_int_win")]
    for req, exit in (("KVM_REQ_TRIPLE_FAULT", "KVM_EXIT_SHUTDOWN"),
                      ("KVM_REQ_IOAPIC_EOI_EXIT", "KVM_EXIT_IOAPIC_EOI"),
                      ("KVM_REQ_HV_CRASH", "KVM_EXIT_SYSTEM_EVENT"),
                      ("KVM_REQ_HV_EXIT", "KVM_EXIT_HYPERV")):
        after = enter[enter.index(f"kvm_check_request({req}, vcpu)"):]
        assert after.index(f"vcpu->run->exit_reason = {exit};") < after.index("goto out;"), req
    assert "vcpu->run->exit_reason = KVM_EXIT_DIRTY_RING_FULL;" in enter
