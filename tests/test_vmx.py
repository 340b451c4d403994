"""vbook.models.vmx: VMX exit reasons, the Linux 6.1 handler table, exit qualifications.

Two kinds of oracle: a C program compiled against the installed uapi header
<asm/vmx.h> (every ``EXIT_REASON_*``; skipped with the reason when gcc or the
header is missing), and the kernel sources the tables were read from (Linux
6.1-rc7 at krr-io/linux-6.1.0 7c210bc38; Linux 3.15.5 at
pradeep0605/CS736_Eager_paging_linux-3.15.5) from local git mirrors, skipped
when absent. Point VBOOK_LINUX_6_1_GIT / VBOOK_LINUX_3_15_GIT elsewhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from _oracle import need_c, printf_lines, program, run_c
from _sources import LINUX_3_15, LINUX_3_15_REV, LINUX_6_1, LINUX_6_1_REV, git_show
from hypothesis import given
from hypothesis import strategies as st

from vbook.models import vmx
from vbook.models.vmx import (
    KVM_VMX_EXIT_HANDLERS,
    KVM_VMX_EXIT_HANDLERS_3_15,
    IoQualification,
    VmxError,
    VmxExitReason,
)

VMX_H = "/usr/include/x86_64-linux-gnu/asm/vmx.h"

# --- the C oracle ------------------------------------------------------------------------------


EXPECTED = {f"EXIT_REASON_{r.name}": int(r) for r in VmxExitReason}
EXPECTED["VMX_EXIT_REASONS_FAILED_VMENTRY"] = vmx.VMX_EXIT_REASONS_FAILED_VMENTRY
EXPECTED["VMX_EXIT_REASONS_SGX_ENCLAVE_MODE"] = vmx.VMX_EXIT_REASONS_SGX_ENCLAVE_MODE


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict[str, int | None]:
    need_c(VMX_H)
    body = printf_lines({name: name for name in EXPECTED}, guard_macros=True)
    return run_c(tmp_path_factory.mktemp("vmx_oracle"), program(["asm/vmx.h"], body))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_constant_matches_the_header(oracle, name):
    assert oracle[name] is not None, f"{name} is not defined in {VMX_H}"
    assert oracle[name] == EXPECTED[name], f"{name}: header {oracle[name]}, vbook {EXPECTED[name]}"


def test_enum_holds_every_exit_reason_of_the_header():
    if not os.path.exists(VMX_H):
        pytest.skip(f"uapi header {VMX_H} missing (install linux-libc-dev)")
    text = Path(VMX_H).read_text()
    defined = {m[0]: int(m[1]) for m in re.findall(r"#define\s+EXIT_REASON_(\w+)\s+(\d+)", text)}
    assert defined == {r.name: int(r) for r in VmxExitReason}


# --- the tables ---------------------------------------------------------------------------------

def test_numbers_the_book_uses():
    R = VmxExitReason
    assert (R.EXCEPTION_NMI, R.TRIPLE_FAULT, R.CPUID, R.HLT, R.VMCALL, R.IO_INSTRUCTION,
            R.MSR_READ, R.MSR_WRITE, R.EPT_VIOLATION, R.EPT_MISCONFIG, R.NOTIFY) == (
        0, 2, 10, 12, 18, 30, 31, 32, 48, 49, 75)
    assert 5 not in set(VmxExitReason) and 42 not in set(VmxExitReason)


def test_handler_table_of_6_1():
    t = KVM_VMX_EXIT_HANDLERS
    R = VmxExitReason
    assert len(t) == 52
    assert (t[R.CPUID], t[R.HLT], t[R.IO_INSTRUCTION], t[R.VMCALL], t[R.EPT_VIOLATION],
            t[R.EPT_MISCONFIG], t[R.TRIPLE_FAULT], t[R.EXCEPTION_NMI]) == (
        "kvm_emulate_cpuid", "kvm_emulate_halt", "handle_io", "kvm_emulate_hypercall",
        "handle_ept_violation", "handle_ept_misconfig", "handle_triple_fault",
        "handle_exception_nmi")
    no_entry = {r.name for r in R if r not in t}
    assert no_entry == {"INIT_SIGNAL", "SIPI_SIGNAL", "RDTSC", "INVALID_STATE", "MSR_LOAD_FAIL",
                        "RDTSCP", "XSAVES", "XRSTORS", "UMWAIT", "TPAUSE"}
    assert vmx.KVM_VMX_MAX_EXIT_HANDLERS == 76
    assert set(vmx.USER_SPACE) == set(t)
    assert all(where in (vmx.KERNEL, vmx.USER, vmx.DEPENDS) for where, _ in vmx.USER_SPACE.values())
    assert vmx.USER_SPACE[R.TRIPLE_FAULT][0] == vmx.USER
    assert vmx.USER_SPACE[R.CPUID][0] == vmx.KERNEL
    assert vmx.USER_SPACE[R.HLT][0] == vmx.USER_SPACE[R.IO_INSTRUCTION][0] == vmx.DEPENDS
    assert set(vmx.RETPOLINE_DIRECT) <= set(t) and set(vmx.FASTPATH) <= set(t)


def test_handler_for_and_names():
    assert vmx.handler_for(10) == "kvm_emulate_cpuid"
    assert vmx.handler_for(3) is None and vmx.handler_for(99) is None and vmx.handler_for(5) is None
    assert vmx.reason_name(48) == "EPT_VIOLATION" and vmx.reason_name(99) == "unknown (99)"
    assert vmx.describe_reason(10) == "10 (EXIT_REASON_CPUID)"
    assert vmx.describe_reason(6) == "6 (no EXIT_REASON_* has this number)"


def test_full_exit_reason_bits():
    assert vmx.basic_exit_reason(0x80000021) == 33 and vmx.failed_vmentry(0x80000021)
    assert vmx.basic_exit_reason(0x0800_0030) == 48 and not vmx.failed_vmentry(48)
    for bad in (-1, 2**32, 1.5, True, "10"):
        with pytest.raises(VmxError, match="32-bit unsigned"):
            vmx.basic_exit_reason(bad)


def test_3_15_table():
    t = KVM_VMX_EXIT_HANDLERS_3_15
    assert len(t) == 39
    assert t[10] == ("CPUID", "handle_cpuid") and t[12] == ("HLT", "handle_halt")
    assert t[7] == ("PENDING_INTERRUPT", "handle_interrupt_window")
    assert t[18] == ("VMCALL", "handle_vmcall") and t[0] == ("EXCEPTION_NMI", "handle_exception")
    # every 3.15 reason still exists with the same number (7 was renamed)
    for n, (name, _) in t.items():
        assert VmxExitReason(n).name == ("INTERRUPT_WINDOW" if n == 7 else name)
    assert set(t) < {int(r) for r in KVM_VMX_EXIT_HANDLERS}
    assert not {46, 47, 62, 74, 75} & set(t)  # descriptor tables, PML, bus lock, notify


# --- I/O exit qualification -----------------------------------------------------------------------

def test_io_qualification_examples():
    assert vmx.io_qualification(1, False, 0x3F8) == 0x03F80000
    assert vmx.io_qualification(4, True, 0xE0) == 0x00E0000B
    assert vmx.io_qualification(2, False, 0xE0, string=True) == 0x00E00011
    q = IoQualification.decode(0x0060_0008)
    assert (q.size, q.in_, q.port, q.string) == (1, True, 0x60, False)
    assert str(q) == "IN port 0x60 size 1"
    assert str(IoQualification(4, False, 0x80, True)) == "OUTS port 0x80 size 4"


@given(st.sampled_from([1, 2, 4]), st.booleans(), st.integers(0, 0xFFFF), st.booleans())
def test_io_qualification_round_trips_like_handle_io(size, in_, port, string):
    q = vmx.io_qualification(size, in_, port, string)
    # what handle_io computes from it (vmx.c, Linux 6.1)
    assert ((q & 7) + 1, (q & 8) != 0, (q & 16) != 0, q >> 16) == (size, in_, string, port)
    assert IoQualification.decode(q) == IoQualification(size, in_, port, string)


@pytest.mark.parametrize("bad, match", [
    (dict(size=3, in_=False, port=1), "1, 2 or 4 bytes"),
    (dict(size=1, in_=False, port=0x10000), "16 bits"),
    (dict(size=1, in_=False, port=-1), "16 bits"),
])
def test_io_qualification_refuses_what_no_instruction_makes(bad, match):
    with pytest.raises(VmxError, match=match):
        IoQualification(**bad)


def test_decode_refuses_an_undefined_size():
    with pytest.raises(VmxError, match="bits 2:0 = 2 is no access size"):
        IoQualification.decode(0x00E00002)


def test_ept_violation_qualification():
    assert vmx.ept_violation_qualification("r") == 0x181
    assert vmx.ept_violation_qualification("w") == 0x182
    assert vmx.ept_violation_qualification("x", rwx=5, translated=False) == 0x80 | 4 | 5 << 3
    with pytest.raises(VmxError):
        vmx.ept_violation_qualification("rw")


# --- the kernel sources -------------------------------------------------------------------------


def handler_array(src: str) -> dict[str, str]:
    start = src.index("kvm_vmx_exit_handlers[])(struct kvm_vcpu *vcpu) = {")
    body = src[start:src.index("};", start)]
    return dict(re.findall(r"\[EXIT_REASON_(\w+)\]\s*=\s*(\w+),", body))


def test_6_1_source_handler_table():
    src = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/vmx.c")
    assert handler_array(src) == {r.name: h for r, h in KVM_VMX_EXIT_HANDLERS.items()}


def test_6_1_source_dispatch():
    src = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/vmx.c")
    body = src[src.index("static int __vmx_handle_exit("):src.index("static int vmx_handle_exit(")]
    retpoline = body[body.index("#ifdef CONFIG_RETPOLINE"):body.index("#endif", body.index(
        "#ifdef CONFIG_RETPOLINE"))]
    direct = re.findall(r"exit_reason\.basic == EXIT_REASON_(\w+)\)\s*return (\w+)\(vcpu\)",
                        retpoline)
    assert [r for r, _ in direct] == [r.name for r in vmx.RETPOLINE_DIRECT]
    assert all(KVM_VMX_EXIT_HANDLERS[VmxExitReason[r]] == h for r, h in direct)
    unexpected = body[body.index("unexpected_vmexit:"):]
    for piece in ("KVM_EXIT_INTERNAL_ERROR", "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON",
                  "internal.ndata = 2", "internal.data[0] = exit_reason.full",
                  "internal.data[1] = vcpu->arch.last_vmentry_cpu", "return 0;"):
        assert piece in unexpected, piece
    assert "exit_reason.basic >= kvm_vmx_max_exit_handlers" in body
    assert "KVM_EXIT_FAIL_ENTRY" in body and "exit_reason.failed_vmentry" in body
    fast = src[src.index("static fastpath_t vmx_exit_handlers_fastpath"):]
    fast = fast[:fast.index("\n}\n")]
    assert dict(re.findall(r"case EXIT_REASON_(\w+):\s*return (\w+)\(vcpu\);", fast)) == {
        r.name: f for r, f in vmx.FASTPATH.items()}


def test_6_1_source_handle_io_decodes_the_bits_the_model_encodes():
    src = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/vmx.c")
    body = src[src.index("static int handle_io(struct kvm_vcpu *vcpu)"):]
    body = body[:body.index("\n}\n")]
    for piece in ("string = (exit_qualification & 16) != 0;", "port = exit_qualification >> 16;",
                  "size = (exit_qualification & 7) + 1;", "in = (exit_qualification & 8) != 0;",
                  "return kvm_fast_pio(vcpu, size, port, in);",
                  "return kvm_emulate_instruction(vcpu, 0);"):
        assert piece in body, piece


def test_6_1_source_uapi_header_is_the_installed_one():
    if not os.path.exists(VMX_H):
        pytest.skip(f"uapi header {VMX_H} missing (install linux-libc-dev)")
    tree = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/include/uapi/asm/vmx.h")
    ours = Path(VMX_H).read_text()
    strip = lambda t: re.sub(r"_UAPIVMX_H|VMX_H", "GUARD", t)  # noqa: E731 (include guard)
    assert strip(tree) == strip(ours)


def test_3_15_source_handler_table_and_unknown_reason():
    src = git_show(LINUX_3_15, LINUX_3_15_REV, "arch/x86/kvm/vmx.c")
    assert handler_array(src) == {name: h for name, h in KVM_VMX_EXIT_HANDLERS_3_15.values()}
    body = src[src.index("static int vmx_handle_exit(struct kvm_vcpu *vcpu)"):]
    body = body[:body.index("\n}\n")]
    assert "vcpu->run->exit_reason = KVM_EXIT_UNKNOWN;" in body
    assert "vcpu->run->hw.hardware_exit_reason = exit_reason;" in body


def test_differences_with_3_15_are_in_the_sources():
    x86_6 = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/x86.c")
    x86_3 = git_show(LINUX_3_15, LINUX_3_15_REV, "arch/x86/kvm/x86.c")
    vmx_3 = git_show(LINUX_3_15, LINUX_3_15_REV, "arch/x86/kvm/vmx.c")
    assert "kvm_x86_ops->run(vcpu);" in x86_3 and "r = kvm_x86_ops->handle_exit(vcpu);" in x86_3
    assert "exit_fastpath = static_call(kvm_x86_vcpu_run)(vcpu);" in x86_6
    assert "r = static_call(kvm_x86_handle_exit)(vcpu, exit_fastpath);" in x86_6
    assert "static int __vcpu_run(struct kvm_vcpu *vcpu)" in x86_3
    assert "static int vcpu_run(struct kvm_vcpu *vcpu)" in x86_6
    assert "xfer_to_guest_mode_handle_work(vcpu)" in x86_6
    assert "kvm_vcpu_halt(vcpu);" in x86_6 and "fastpath" not in x86_3 + vmx_3
    io3 = vmx_3[vmx_3.index("static int handle_io(struct kvm_vcpu *vcpu)"):]
    io3 = io3[:io3.index("\n}\n")]
    assert "if (string || in)" in io3 and "skip_emulated_instruction(vcpu);" in io3
    assert "return kvm_fast_pio_out(vcpu, size, port);" in io3
    assert "complete_fast_pio_out" in x86_6 and "complete_fast_pio_in" in x86_6
