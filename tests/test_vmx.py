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
    assert set(vmx.USER_SPACE) == set(t) == set(vmx.DEFAULT_EXIT_HANDLERS)
    d = vmx.DEFAULT_EXIT_HANDLERS  # what runs with kvm_intel.nested=1
    assert (d[R.VMON], d[R.VMOFF], d[R.VMREAD], d[R.CPUID]) == (
        "handle_vmxon", "handle_vmxoff", "handle_vmread", "kvm_emulate_cpuid")
    assert {r for r in t if d[r] != t[r]} == set(vmx.NESTED_VMX_EXIT_HANDLERS) == {
        r for r, h in t.items() if h == "handle_vmx_instruction"}
    assert vmx.handler_for(R.VMON) == "handle_vmxon"
    assert all(where in (vmx.KERNEL, vmx.USER, vmx.DEPENDS, vmx.DEBUG_OR_ERROR)
               for where, _ in vmx.USER_SPACE.values())
    assert vmx.USER_SPACE[R.TRIPLE_FAULT][0] == vmx.USER
    assert vmx.USER_SPACE[R.CPUID][0] == vmx.DEBUG_OR_ERROR  # KVM_EXIT_DEBUG when single-stepped
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
    # 3.15: the skip comes before kvm_fast_pio_out, whoever takes the OUT
    assert io3.index("skip_emulated_instruction(vcpu);") < io3.index("kvm_fast_pio_out(")
    # 6.1: an in-kernel device (ret != 0) is skipped at once; user space on the next KVM_RUN,
    # but OUT 0x7e with the quirk before the exit
    fast = x86_6[x86_6.index("int kvm_fast_pio(struct kvm_vcpu *vcpu,"):]
    assert "return ret && kvm_skip_emulated_instruction(vcpu);" in fast[:fast.index("\n}\n")]
    out6 = x86_6[x86_6.index("static int kvm_fast_pio_out("):]
    out6 = out6[:out6.index("\n}\n")]
    assert re.search(r"if \(port == 0x7e &&\n\s*kvm_check_has_quirk\(vcpu->kvm, "
                     r"KVM_X86_QUIRK_OUT_7E_INC_RIP\)\) \{\n\s*vcpu->arch.complete_userspace_io ="
                     r"\n\s*complete_fast_pio_out_port_0x7e;\n\s*kvm_skip_emulated_instruction", out6)
    assert "return !(kvm->arch.disabled_quirks & quirk);" in git_show(
        LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/x86.h")  # a quirk is on until disabled
    # the 3.15 run loop: signals and rescheduling checked in __vcpu_run; a halted vCPU goes
    # straight to kvm_vcpu_block (6.1: vcpu_block → kvm_vcpu_halt, and xfer_to_guest_mode work)
    run3 = x86_3[x86_3.index("static int __vcpu_run(struct kvm_vcpu *vcpu)"):]
    run3 = run3[:run3.index("\n}\n")]
    assert "if (signal_pending(current)) {" in run3 and "if (need_resched()) {" in run3
    assert re.search(r"else \{\n\s*srcu_read_unlock\(&kvm->srcu, vcpu->srcu_idx\);\n"
                     r"\s*kvm_vcpu_block\(vcpu\);", run3)
    assert "kvm_vcpu_halt" not in x86_3 and "halt_poll" not in x86_3
    run6 = x86_6[x86_6.index("static int vcpu_run(struct kvm_vcpu *vcpu)"):]
    run6 = run6[:run6.index("\n}\n")]
    assert "signal_pending" not in run6 and "r = xfer_to_guest_mode_handle_work(vcpu);" in run6
    block6 = x86_6[x86_6.index("static inline int vcpu_block(struct kvm_vcpu *vcpu)"):]
    assert "kvm_vcpu_halt(vcpu);" in block6[:block6.index("\n}\n")]


def test_compare_3_15_against_the_handlers_6_1_installs():
    c = vmx.compare_3_15()
    assert {k: len(v) for k, v in c.items()} == {"same": 25, "renamed": 12, "changed": 2}
    same = {name for _, name, _, _ in c["same"]}
    assert {"VMCLEAR", "VMLAUNCH", "VMPTRLD", "VMPTRST", "VMREAD", "VMRESUME", "VMWRITE",
            "INVEPT"} <= same  # nested.c fills these slots by default, under the 3.15 names
    renamed = {name: (old, new) for _, name, old, new in c["renamed"]}
    assert renamed["VMON"] == ("handle_vmon", "handle_vmxon")
    assert renamed["VMOFF"] == ("handle_vmoff", "handle_vmxoff")
    assert [(n, old, new) for n, _, old, new in c["changed"]] == [
        (36, "handle_invalid_op", "kvm_emulate_mwait"),
        (39, "handle_invalid_op", "kvm_emulate_monitor")]
    assert set(vmx.CHANGED_SINCE_3_15) == {36, 39}


def test_mwait_and_monitor_changed_behaviour_since_3_15():
    """3.15 gave #UD; 6.1 makes MWAIT/MONITOR a NOP unless the quirk is off and the guest's
    CPUID lacks MWAIT."""
    vmx_3 = git_show(LINUX_3_15, LINUX_3_15_REV, "arch/x86/kvm/vmx.c")
    bad = vmx_3[vmx_3.index("static int handle_invalid_op(struct kvm_vcpu *vcpu)"):]
    assert bad[:bad.index("\n}\n")].split("{", 1)[1].split() == [
        "kvm_queue_exception(vcpu,", "UD_VECTOR);", "return", "1;"]
    x86 = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/x86.c")
    mm = x86[x86.index("static int kvm_emulate_monitor_mwait(struct kvm_vcpu *vcpu,"):]
    mm = mm[:mm.index("\n}\n")]
    assert re.search(r"if \(!kvm_check_has_quirk\(vcpu->kvm, KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS\)"
                     r" &&\n\s*!guest_cpuid_has\(vcpu, X86_FEATURE_MWAIT\)\)\n\s*return "
                     r"kvm_handle_invalid_op\(vcpu\);", mm)
    assert mm.rstrip().endswith("return kvm_emulate_as_nop(vcpu);")
    for fn, insn in (("kvm_emulate_mwait", "MWAIT"), ("kvm_emulate_monitor", "MONITOR")):
        body = x86[x86.index(f"int {fn}(struct kvm_vcpu *vcpu)"):]
        assert f'return kvm_emulate_monitor_mwait(vcpu, "{insn}");' in body[:200]


def test_handle_dr_raises_gp_at_cpl_above_0_before_any_debugger_check():
    src = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/vmx.c")
    body = src[src.index("static int handle_dr(struct kvm_vcpu *vcpu)"):]
    body = body[:body.index("\n}\n")]
    cpl = body.index("if (vmx_get_cpl(vcpu) > 0)\n\t\tgoto out;")
    assert cpl < body.index("if (dr7 & DR7_GD) {") < body.index("if (vcpu->guest_debug == 0) {")
    assert "int err = 1;" in body and body.rstrip().endswith("return kvm_complete_insn_gp(vcpu, err);")
    (gp,) = [r for r in vmx.RETURNS["handle_dr"] if isinstance(r, vmx.Return)
             and r.source.startswith("if (vmx_get_cpl")]
    assert "before any debugger check" in gp.when
    passes = [r for r in vmx.RETURNS["handle_dr"] if isinstance(r, vmx.Passes)]
    assert len(passes) == 1 and "CPL > 0" not in passes[0].when


def test_6_1_source_encls_and_the_nested_0_stub():
    """ENCLS: vmx.c's #UD stub exists only without CONFIG_X86_SGX_KVM (Kconfig: "If unsure, say
    N"); sgx.c's handle_encls can end in the exits OTHER_HANDLERS names."""
    vmx_c = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/vmx.c")
    stub = vmx_c[vmx_c.index("#ifndef CONFIG_X86_SGX_KVM\nstatic int handle_encls("):]
    assert stub.index("#endif") < stub.index("static int handle_bus_lock_vmexit(")
    kconfig = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/Kconfig")
    entry = kconfig[kconfig.index("config X86_SGX_KVM"):]
    entry = entry[:entry.index("\nconfig ")]
    assert "default" not in entry and "If unsure, say N." in entry
    sgx = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/sgx.c")
    encls = sgx[sgx.index("int handle_encls(struct kvm_vcpu *vcpu)"):]
    encls = encls[:encls.index("\n}\n")]
    assert "vcpu->run->exit_reason = KVM_EXIT_UNKNOWN;" in encls
    assert "return handle_encls_ecreate(vcpu);" in encls and "return handle_encls_einit(vcpu);" in encls
    assert "__kvm_prepare_emulation_failure_exit(vcpu, data, ARRAY_SIZE(data));" in sgx
    assert "kvm_prepare_emulation_failure_exit(vcpu);\n\t\treturn 0;" in sgx
    ecreate = sgx[sgx.index("static int handle_encls_ecreate("):]
    assert "return -ENOMEM;" in ecreate[:ecreate.index("\n}\n")]
    assert "-EINVAL" in sgx and "if (ret < 0)\n\t\treturn ret;" in sgx
    setting, handler, gives = vmx.OTHER_HANDLERS[VmxExitReason.ENCLS]
    assert setting == "CONFIG_X86_SGX_KVM=y" and all(
        x in gives for x in ("UNKNOWN", "INTERNAL_ERROR", "-ENOMEM", "-EINVAL"))
    for r in vmx.NESTED_VMX_EXIT_HANDLERS:
        assert vmx.OTHER_HANDLERS[r][:2] == ("kvm_intel.nested=0", "handle_vmx_instruction")
    assert all(p.ret == 1 for p in vmx.exit_paths("handle_vmx_instruction"))
    assert all(p.ret == 1 for p in vmx.exit_paths("handle_encls"))


# --- every return path of every handler, against the 6.1 source -------------------------------

_FILES = sorted(set(vmx.SOURCE_FILES.values()))


@pytest.fixture(scope="module")
def linux_6_1() -> dict[str, str]:
    return {path: git_show(LINUX_6_1, LINUX_6_1_REV, path) for path in _FILES}


def body_of(src: dict[str, str], fn: str) -> str:
    """The definition of ``fn`` in its file (vmx.SOURCE_FILES), up to its closing brace."""
    assert fn in vmx.SOURCE_FILES, f"{fn} has no file in vmx.SOURCE_FILES"
    text = src[vmx.SOURCE_FILES[fn]]
    m = re.search(rf"^[a-z_].*\b{re.escape(fn)}\([^;{{]*\)\n{{", text, re.M)
    assert m, f"no definition of {fn} in {vmx.SOURCE_FILES[fn]}"
    return text[m.start():text.index("\n}\n", m.start()) + 2]


def vmx_ops(src: dict[str, str]) -> dict[str, str]:
    """``static_call(kvm_x86_<op>)`` → the VMX function: the ``vmx_x86_ops`` initialisers."""
    text = src["arch/x86/kvm/vmx/vmx.c"]
    ops = text[text.index("static struct kvm_x86_ops vmx_x86_ops __initdata = {"):]
    return dict(re.findall(r"\.(\w+) = (\w+),", ops[:ops.index("};")]))


def calls(src: dict[str, str], caller: str, callee: str) -> bool:
    body = body_of(src, caller)
    if re.search(rf"\b{re.escape(callee)}\(", body.split("\n", 1)[1]):
        return True
    return any(vmx_ops(src).get(op) == callee
               for op in re.findall(r"static_call\(kvm_x86_(\w+)\)", body))


def sets_exit(body: str, exit: str) -> bool:
    value = {"KVM_EXIT_UNKNOWN": 0}.get(exit)  # "exit_reason = 0": KVM_EXIT_UNKNOWN is 0
    return exit in body or (value is not None and f"exit_reason = {value};" in body)


ALL_RETURNS = [(fn, k) for fn, rs in vmx.RETURNS.items() for k in range(len(rs))]


def test_every_handler_and_callee_has_return_paths():
    assert set(KVM_VMX_EXIT_HANDLERS.values()) <= set(vmx.RETURNS)
    for fn, rs in vmx.RETURNS.items():
        assert rs, fn
        for r in rs:
            if isinstance(r, vmx.Passes):
                assert r.callee in vmx.RETURNS, (fn, r.callee)
                exits = {p.exit for p in vmx.exit_paths(r.callee)}
                assert set(r.cannot) <= exits, (fn, r)  # a restriction that restricts
            else:
                assert all(f in vmx.SOURCE_FILES for f in r.chain + (r.setter,) if f), (fn, r)
                assert all(h in vmx.RETURNS for h in r.only), r
        assert vmx.exit_paths(fn)  # and the walk ends (no cycle)
    from vbook.models.kvm_api import ExitReason
    for fn in vmx.RETURNS:
        for p in vmx.exit_paths(fn):
            assert (p.ret == 0) == bool(p.exit), p
            if p.exit:
                assert p.exit.removeprefix("KVM_EXIT_") in ExitReason.__members__, p


@pytest.mark.parametrize("fn, k", ALL_RETURNS, ids=[f"{fn}-{k}" for fn, k in ALL_RETURNS])
def test_6_1_source_return_path(linux_6_1, fn, k):
    """The claimed return is in the function's body, and its exit where it says."""
    r = vmx.RETURNS[fn][k]
    body = body_of(linux_6_1, fn)
    assert r.source in body, f"{fn}: {r.source!r} is not in its body"
    if isinstance(r, vmx.Passes):
        assert calls(linux_6_1, fn, r.callee), f"{fn} does not call {r.callee}"
        return
    chain = (fn, *r.chain)
    for caller, callee in zip(chain, chain[1:], strict=False):
        assert calls(linux_6_1, caller, callee), f"{caller} does not call {callee}"
    if r.setter:
        setter = body_of(linux_6_1, r.setter)
        assert sets_exit(setter, r.exit), f"{r.setter} does not set {r.exit}"
        # reached through emulate_ops / the caller: named outside its own definition too
        assert linux_6_1[vmx.SOURCE_FILES[r.setter]].count(f"{r.setter}") >= 2, r.setter
    elif r.exit:
        assert any(sets_exit(body_of(linux_6_1, f), r.exit) for f in chain), (
            f"no function of {chain} sets {r.exit}")
    if r.ret == 0 and not r.setter and not r.chain:
        assert "return 0;" in body, f"{fn}: no 'return 0;'"
    if r.ret < 0:
        assert re.search(r"return (-E[A-Z]+|r|ret);", body), f"{fn}: no negative return"
        if r.chain:  # the errno comes from the end of the chain
            assert re.search(r"return -E[A-Z]+;", body_of(linux_6_1, r.chain[-1])), r.chain


HANDLERS = sorted(set(KVM_VMX_EXIT_HANDLERS.values()) | set(vmx.DEFAULT_EXIT_HANDLERS.values()))


@pytest.mark.parametrize("handler", HANDLERS)
def test_6_1_source_handler_body_is_covered(linux_6_1, handler):
    """Nothing in a handler's own body ends it in a way the data leaves out."""
    body = body_of(linux_6_1, handler)
    own = [r for r in vmx.RETURNS[handler] if isinstance(r, vmx.Return)]
    passes = {r.callee for r in vmx.RETURNS[handler] if isinstance(r, vmx.Passes)}
    # every KVM_EXIT_* the body sets is claimed (KVM_EXIT_UNKNOWN is written as 0)
    set_here = set(re.findall(r"exit_reason\s*= (KVM_EXIT_\w+);", body))
    if "exit_reason = 0;" in body:
        set_here.add("KVM_EXIT_UNKNOWN")
    assert set_here == {r.exit for r in own if r.exit and not r.chain and not r.setter}
    # every callee whose result it returns is followed
    ops = vmx_ops(linux_6_1)
    returned = {ops[op] for op in re.findall(r"return static_call\(kvm_x86_(\w+)\)", body)}
    returned |= set(re.findall(r"return (\w+)\(", body)) - {"static_call"}
    returned |= set(re.findall(r"= (\w+)\(vcpu\);\n[^\n]*\n?\s*return \w+ && ret;", body))
    assert returned <= passes | {r.chain[0] for r in own if r.chain}, returned
    # a 0 or an errno of its own is claimed
    assert ("return 0;" in body) == any(r.ret == 0 and not r.setter for r in own)
    looks_negative = bool(re.search(r"return (-E[A-Z]+|r|ret);", body))
    # "return r;" after nested_vmx_get_vmptr(..., &r) hands back the 1 or 0 it stored
    out_param = any(isinstance(r, vmx.Passes) and re.search(r"&(r|ret)\)\)$", r.source)
                    for r in vmx.RETURNS[handler])
    claims_negative = any(r.ret < 0 for r in own)
    assert claims_negative == looks_negative or (looks_negative and out_param), handler


@pytest.mark.parametrize("handler", [h for h in HANDLERS if all(
    p.ret == 1 for p in vmx.exit_paths(h))])
def test_6_1_source_kernel_only_handlers_return_only_1(linux_6_1, handler):
    body = body_of(linux_6_1, handler)
    assert "KVM_EXIT_" not in body
    assert set(re.findall(r"return ([^;]*);", body)) == {"1"}, handler


def test_6_1_source_nested_replaces_the_vmx_instruction_entries():
    """handle_vmx_instruction (#UD) is the table's entry; nested=1 (the default) swaps in
    nested.c's handlers, exactly NESTED_VMX_EXIT_HANDLERS."""
    vmx_c = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/vmx.c")
    nested = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/nested.c")
    assert "static bool __read_mostly nested = 1;" in vmx_c
    assert re.search(r"if \(nested\) \{\n[^}]*r = nested_vmx_hardware_setup\(kvm_vmx_exit_handlers\);",
                     vmx_c)
    setup = nested[nested.index("__init int nested_vmx_hardware_setup("):]
    setup = setup[:setup.index("\n}\n")]
    swapped = dict(re.findall(r"exit_handlers\[EXIT_REASON_(\w+)\]\s*= (handle_\w+);", setup))
    assert swapped == {r.name: h for r, h in vmx.NESTED_VMX_EXIT_HANDLERS.items()}
    assert set(swapped) == {r.name for r, h in KVM_VMX_EXIT_HANDLERS.items()
                            if h == "handle_vmx_instruction"}
    for h in vmx.NESTED_VMX_EXIT_HANDLERS.values():
        assert f"static int {h}(struct kvm_vcpu *vcpu)\n{{" in nested, h


# --- what the paths add up to -----------------------------------------------------------------

def test_user_space_is_derived_from_the_paths():
    R = VmxExitReason
    u = vmx.USER_SPACE
    assert set(u) == set(vmx.DEFAULT_EXIT_HANDLERS)
    count = {w: sorted(r.name for r in u if u[r][0] == w)
             for w in (vmx.KERNEL, vmx.USER, vmx.DEPENDS, vmx.DEBUG_OR_ERROR)}
    assert {w: len(v) for w, v in count.items()} == {
        vmx.KERNEL: 12, vmx.USER: 2, vmx.DEPENDS: 15, vmx.DEBUG_OR_ERROR: 23}
    assert count[vmx.USER] == ["BUS_LOCK", "TRIPLE_FAULT"]
    assert count[vmx.DEBUG_OR_ERROR] == sorted([
        "NMI_WINDOW", "TASK_SWITCH", "CPUID", "INVD", "INVLPG", "RDPMC", "DR_ACCESS",
        "MWAIT_INSTRUCTION", "MONITOR_INSTRUCTION", "PAUSE_INSTRUCTION", "WBINVD", "XSETBV",
        "INVPCID", "VMCLEAR", "VMPTRLD", "VMPTRST", "VMREAD", "VMWRITE", "VMOFF", "VMON",
        "INVEPT", "INVVPID", "VMFUNC"])
    # nested VMLAUNCH/VMRESUME into an L2 that starts halted: KVM_EXIT_HLT without in-kernel LAPIC
    assert "VMLAUNCH" in count[vmx.DEPENDS] and "VMRESUME" in count[vmx.DEPENDS]
    assert "ENCLS" in count[vmx.KERNEL] and "VMCLEAR" not in count[vmx.KERNEL]
    assert "CR_ACCESS" in count[vmx.DEPENDS] and "DR_ACCESS" not in count[vmx.KERNEL]
    none = {vmx.CONFIG: ()}
    assert vmx.user_exits("handle_cr") == {
        vmx.NORMAL: ("SET_TPR",), vmx.DEBUG: ("DEBUG",), vmx.ERROR: ("UNKNOWN", "errno"), **none}
    assert vmx.user_exits("handle_dr") == {vmx.NORMAL: (), vmx.DEBUG: ("DEBUG",), vmx.ERROR: (),
                                           **none}
    assert vmx.user_exits("handle_task_switch")[vmx.ERROR] == ("INTERNAL_ERROR",)
    assert vmx.user_exits("handle_io")[vmx.NORMAL] == ("IO", "MMIO")
    assert vmx.user_exits("handle_desc")[vmx.NORMAL] == ("MMIO",)
    assert vmx.user_exits("kvm_emulate_hypercall")[vmx.NORMAL] == ("HYPERCALL", "HYPERV", "XEN")
    assert vmx.user_exits("handle_vmxon") == {
        vmx.NORMAL: (), vmx.DEBUG: ("DEBUG",), vmx.ERROR: ("INTERNAL_ERROR", "errno"), **none}
    assert u[R.CPUID] == (vmx.DEBUG_OR_ERROR, "debug: DEBUG")
    # the EMULTYPE_SKIP failure is only EPT_MISCONFIG's
    skip_fail = [p for p in vmx.exit_paths("handle_ept_misconfig")
                 if "skip_emulated_instruction" in p.via and p.exit == "KVM_EXIT_INTERNAL_ERROR"]
    assert len(skip_fail) == 1
    assert not any("skip_emulated_instruction" in p.via for p in vmx.exit_paths("handle_invlpg"))


def test_exception_nmi_reaches_user_space_by_default_only_through_movbe():
    """With default settings #UD (an EmulateOnUD instruction such as MOVBE) is the only way from
    EXCEPTION_NMI to a normal user exit; the rest needs a module parameter or vm86 real mode."""
    ex = vmx.user_exits("handle_exception_nmi")
    assert ex == {vmx.NORMAL: ("MMIO",), vmx.DEBUG: ("DEBUG",),
                  vmx.ERROR: ("EXCEPTION", "INTERNAL_ERROR"),
                  vmx.CONFIG: ("HLT", "IO", "X86_RDMSR", "X86_WRMSR", "errno")}
    assert vmx.config_exits("handle_exception_nmi") == {
        "kvm.enable_vmware_backdoor=1": ("IO",),
        "kvm.force_emulation_prefix=1": ("IO", "X86_RDMSR", "X86_WRMSR"),
        "kvm_intel.ept=0": ("errno",),
        "kvm_intel.unrestricted_guest=0": ("HLT", "IO", "X86_RDMSR", "X86_WRMSR")}
    (mmio,) = [p for p in vmx.exit_paths("handle_exception_nmi")
               if p.kind == vmx.NORMAL and p.exit == "KVM_EXIT_MMIO"]
    assert mmio.via[:2] == ("handle_exception_nmi", "handle_ud") and "MOVBE" in mmio.when
    assert "EmulateOnUD" in mmio.when and "cannot decode" not in mmio.when
    # every config a path names is a module parameter of MODULE_DEFAULTS, set the other way
    params = {k.split("=")[0] for k in vmx.MODULE_DEFAULTS}
    for fn in vmx.RETURNS:
        for p in vmx.exit_paths(fn):
            assert (p.kind == vmx.CONFIG) == bool(p.config), p
            for c in filter(None, p.config.split(", ")):
                name, value = c.split("=")
                assert name in params and f"{name}={value}" not in vmx.MODULE_DEFAULTS, c
    io = next(p for p in vmx.exit_paths("handle_exception_nmi") if p.exit == "KVM_EXIT_IO")
    assert str(io).split()[2:5] == ["KVM_EXIT_IO", "config", "[kvm.force_emulation_prefix=1]"]


def test_6_1_source_module_defaults_and_where_the_config_paths_are_taken():
    src = {f: git_show(LINUX_6_1, LINUX_6_1_REV, f) for f in (
        "arch/x86/kvm/x86.c", "arch/x86/kvm/vmx/vmx.c", "arch/x86/kvm/vmx/vmx.h",
        "arch/x86/kvm/emulate.c", "arch/x86/kvm/mmu/mmu.c")}
    for setting, (path, line) in vmx.MODULE_DEFAULTS.items():
        assert line in src[path], setting
        module, name = setting.split("=")[0].split(".")
        where = src["arch/x86/kvm/x86.c" if module == "kvm" else "arch/x86/kvm/vmx/vmx.c"]
        assert re.search(rf"module_param(_named)?\({name},", where), setting
    vmx_c, x86 = src["arch/x86/kvm/vmx/vmx.c"], src["arch/x86/kvm/x86.c"]
    nmi = vmx_c[vmx_c.index("static int handle_exception_nmi(struct kvm_vcpu *vcpu)"):]
    nmi = nmi[:nmi.index("\n}\n")]
    # #GP is intercepted only for the VMware backdoor; #PF reaches the MMU only without EPT;
    # handle_rmode_exception only in vm86 mode
    assert "WARN_ON_ONCE(!enable_vmware_backdoor);" in nmi
    assert re.search(r"if \(enable_ept && !vcpu->arch.apf.host_apf_flags\) \{[^}]*return 1;\n"
                     r"\t\t\} else\n\t\t\treturn kvm_handle_page_fault", nmi)
    assert "if (vmx->rmode.vm86_active && rmode_exception(vcpu, ex_no))" in nmi
    assert "return is_unrestricted_guest(vcpu) || __vmx_guest_state_valid(vcpu);" in \
        src["arch/x86/kvm/vmx/vmx.h"]
    assert "if (unlikely(allow_smaller_maxphyaddr && kvm_vcpu_is_illegal_gpa(vcpu, gpa)))" in vmx_c
    ud = x86[x86.index("int handle_ud(struct kvm_vcpu *vcpu)"):]
    ud = ud[:ud.index("\n}\n")]
    assert "int fep_flags = READ_ONCE(force_emulation_prefix);" in ud and "if (fep_flags &&" in ud
    # EMULTYPE_TRAP_UD emulates only EmulateOnUD instructions: MOVBE is one, IN/OUT/RDMSR/WRMSR
    # (the emulator's only ways to KVM_EXIT_IO / X86_RDMSR / X86_WRMSR) are not
    emu = src["arch/x86/kvm/emulate.c"]
    assert re.search(r"if \(unlikely\(emulation_type & EMULTYPE_TRAP_UD\) &&\n\s*"
                     r"likely\(!\(ctxt->d & EmulateOnUD\)\)\)\n\s*return EMULATION_FAILED;", emu)
    assert "GP(EmulateOnUD | ModRM, &three_byte_0f_38_f0)," in emu
    table_lines = [ln for ln in emu.splitlines() if re.search(r"\bem_(in|out|rdmsr|wrmsr)\b", ln)
                   and ("I2bvIP(" in ln or "II(" in ln)]
    assert len(table_lines) == 8 and not any("EmulateOnUD" in ln for ln in table_lines)


def test_set_tpr_path_names_its_condition():
    (tpr,) = [p for p in vmx.exit_paths("handle_cr") if p.exit == "KVM_EXIT_SET_TPR"]
    assert tpr.ret == 0 and tpr.kind == vmx.NORMAL and "CR8" in tpr.when and "APIC" in tpr.when
    assert str(tpr).startswith("returns 0   KVM_EXIT_SET_TPR")
    with pytest.raises(VmxError, match="no return paths"):
        vmx.exit_paths("handle_nothing")
    with pytest.raises(VmxError, match="a Return is"):
        vmx.Return(0, "", "no exit named", "return 0;")


def test_user_space_table_is_counted_from_the_paths():
    t = vmx.user_space_table().splitlines()
    assert t[0] == ("17 of 52 entries can end in user space in normal use (default settings, "
                    "kvm_intel.nested=1):")
    rows = {line.split()[1]: line for line in t[2:19]}
    assert set(rows) == {r.name for r, (w, _) in vmx.USER_SPACE.items()
                         if w in (vmx.USER, vmx.DEPENDS)}
    assert rows["CR_ACCESS"].split()[2:] == ["handle_cr", "SET_TPR", "DEBUG,", "UNKNOWN,", "errno"]
    assert rows["TRIPLE_FAULT"].split()[2:] == ["handle_triple_fault", "SHUTDOWN"]
    assert rows["EXCEPTION_NMI"].split()[2:] == ["handle_exception_nmi", "MMIO", "DEBUG,",
                                                 "EXCEPTION,", "INTERNAL_ERROR"]
    assert rows["VMLAUNCH"].split()[2:4] == ["handle_vmlaunch", "HLT"]
    rest = " ".join(t[19:])
    assert rest.startswith("23 reach user space only under a debugger or on a failure: NMI_WINDOW,")
    assert "DR_ACCESS" in rest and "12 never do: every path returns 1: EXTERNAL_INTERRUPT," in rest
    config = rest[rest.index("Only with a setting other than the default:"):]
    assert "0 EXCEPTION_NMI kvm.enable_vmware_backdoor=1: IO" in " ".join(config.split())
    assert "kvm_intel.unrestricted_guest=0: HLT, IO, X86_RDMSR, X86_WRMSR" in config
    assert "kvm_intel.nested=0: VMCLEAR, VMLAUNCH," in config and "handle_vmx_instruction" in config
    assert "CONFIG_X86_SGX_KVM=y: ENCLS → handle_encls of vmx/sgx.c" in config
    assert all(len(line) <= 110 and line == line.rstrip() for line in t)
