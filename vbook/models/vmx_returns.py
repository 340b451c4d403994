"""How each of KVM's VMX exit handlers can end: its return paths, as data (Linux 6.1).

``__vmx_handle_exit`` calls one handler per basic exit reason
(:mod:`vbook.models.vmx`); the handler answers 1 (re-enter the guest), 0 (user
space must act, with a ``KVM_EXIT_*`` in ``kvm_run``) or < 0 (an error). Which
answer it gives depends on a condition, often inside a callee. This module
holds, for every handler of the default table and the callees it hands its
answer to, each way it can end (:data:`RETURNS`: a :class:`Return` or a
:class:`Passes` to a callee, with the condition and the source line it rests
on, checked against the v6.1-rc7 tree by tests/test_vmx.py), follows them
(:func:`exit_paths`), and sums them up: which ``KVM_EXIT_*`` each can give
in normal use (:func:`user_exits`), only with a non-default setting
(:func:`config_exits`), and where each exit reason can therefore go
(:data:`USER_SPACE`, :func:`user_space_table`).

A path is kind NORMAL (default settings), DEBUG (only while user space
debugs the guest), ERROR (a failure) or CONFIG (only with a module parameter
or build option other than the default, named in the condition: see
:data:`vbook.models.vmx.MODULE_DEFAULTS`). Pure, stdlib only.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from vbook.models.vmx import (
    DEFAULT_EXIT_HANDLERS,
    KVM_VMX_EXIT_HANDLERS,
    NESTED_VMX_EXIT_HANDLERS,
    OTHER_HANDLERS,
    VmxError,
    VmxExitReason,
)

_R = VmxExitReason

# --- what each handler returns ------------------------------------------------------------

NORMAL, DEBUG, ERROR, CONFIG = "normal", "debug", "error", "config"
_KINDS = (NORMAL, DEBUG, ERROR, CONFIG)


@dataclass(frozen=True)
class Return:
    """One way a function ends: ``ret`` 1 (re-enter the guest), 0 (to user space) or -1 (< 0).

    ``exit`` is the ``KVM_EXIT_*`` that ``kvm_run->exit_reason`` then holds
    ("" for 1 and < 0); ``when`` the condition, in words; ``kind`` NORMAL (a
    VM set up that way, or a guest that does that), DEBUG (only while user
    space debugs the guest, ``KVM_SET_GUEST_DEBUG``) or ERROR (something
    failed); a path through a :class:`Passes` with ``config`` becomes CONFIG.
    ``source`` is text of the function's body in Linux 6.1 that this
    return rests on. ``chain`` names the functions it calls, in order, down
    to the one that fills ``kvm_run``; ``setter`` the one that does it when
    it is reached through the emulator's callbacks (``emulate_ops``) or the
    caller, not by a direct call. ``only`` limits the return to these
    handlers (empty: any handler that gets here).
    """

    ret: int
    exit: str
    when: str
    source: str
    kind: str = NORMAL
    chain: tuple[str, ...] = ()
    setter: str = ""
    only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.ret not in (1, 0, -1) or self.kind not in (NORMAL, DEBUG, ERROR) \
                or bool(self.exit) != (self.ret == 0):
            raise VmxError(f"a Return is 1, 0 with a KVM_EXIT_* or -1, of a known kind: {self!r}")


@dataclass(frozen=True)
class Passes:
    """``return callee(...)``: the function hands back whatever ``callee`` returns (when ``when``).

    ``cannot`` names exits of the callee this call never ends in: the
    emulator fills ``KVM_EXIT_IO`` only for an IN/OUT/INS/OUTS and
    ``KVM_EXIT_X86_RDMSR``/``WRMSR`` only for an RDMSR/WRMSR, so a call that
    emulates an instruction that faulted on memory cannot end in them.
    ``config`` names the non-default host setting without which the call is
    never made (``"kvm_intel.ept=0"``): every path through it is kind CONFIG.
    """

    callee: str
    when: str
    source: str
    cannot: tuple[str, ...] = ()
    config: str = ""


@dataclass(frozen=True)
class ExitPath:
    """One way an exit handler ends, followed down its callees: see :func:`exit_paths`."""

    ret: int
    exit: str
    when: str
    kind: str
    via: tuple[str, ...]  # the handler, then each function called, down to the one that returns
    config: str = ""  # the non-default host settings the path needs (kind CONFIG), ", "-joined

    def __str__(self) -> str:
        ret = "< 0" if self.ret < 0 else str(self.ret)
        when = f"[{self.config}] {self.when}" if self.config else self.when
        head = f"returns {ret:<3} {self.exit or '':<24} {self.kind:<6} "
        lines = textwrap.wrap(when, 104 - len(head)) or [""]
        return (head + f"\n{'':{len(head)}}".join(lines) + f"\n{'':12}{' → '.join(self.via)}")


_S = "kvm_skip_emulated_instruction"
_SKIP = "return kvm_skip_emulated_instruction(vcpu);"
_EMU = "kvm_emulate_instruction"
_NO_PIO_MSR = ("KVM_EXIT_IO", "KVM_EXIT_X86_RDMSR", "KVM_EXIT_X86_WRMSR")
_FAIL = ("handle_emulation_failure", "prepare_emulation_ctxt_failure_exit",
         "prepare_emulation_failure_exit")

#: How every function of ``kvm_vmx_exit_handlers[]`` (and the functions they
#: hand their answer to) ends, read in Linux 6.1: name → its :class:`Return`\ s
#: and :class:`Passes`. :func:`exit_paths` follows them; a test checks each
#: ``source``, ``chain`` and ``exit`` against the kernel source. Reasons are
#: shallow where the kernel is deep: the instruction emulator
#: (``x86_emulate_instruction``) is one entry, with the callbacks that fill
#: ``kvm_run`` named as ``setter``.
RETURNS: Mapping[str, tuple[Return | Passes, ...]] = MappingProxyType({
    # -- functions many handlers end in -------------------------------------------------
    _S: (
        Return(1, "", "RIP moves past the instruction", "return r;"),
        Return(0, "KVM_EXIT_DEBUG", "the guest ran with RFLAGS.TF while user space single-steps "
               "it (KVM_GUESTDBG_SINGLESTEP)", "r = kvm_vcpu_do_singlestep(vcpu);", DEBUG,
               ("kvm_vcpu_do_singlestep",)),
        Return(0, "KVM_EXIT_INTERNAL_ERROR", "KVM itself runs under a hypervisor "
               "(X86_FEATURE_HYPERVISOR): on EPT_MISCONFIG it decodes the instruction to skip "
               "it (EMULTYPE_SKIP), and the decode failed", "if (unlikely(!r))", ERROR,
               ("vmx_skip_emulated_instruction", "skip_emulated_instruction", _EMU,
                "x86_emulate_instruction", *_FAIL), only=("handle_ept_misconfig",)),
    ),
    "kvm_complete_insn_gp": (
        Return(1, "", "a bad value or operand: #GP into the guest", "kvm_inject_gp(vcpu, 0);"),
        Passes(_S, "", _SKIP),
    ),
    "kvm_emulate_as_nop": (Passes(_S, "", _SKIP),),
    _EMU: (Passes("x86_emulate_instruction", "",
                  "return x86_emulate_instruction(vcpu, 0, emulation_type, NULL, 0);"),),
    "x86_emulate_instruction": (
        Return(1, "", "emulated; or an exception injected into the guest; or the instruction "
               "is retried", "r = 1;"),
        Return(0, "KVM_EXIT_MMIO", "the instruction reads or writes a guest-physical address "
               "no memory slot and no in-kernel device covers", "} else if (vcpu->mmio_needed) {",
               setter="emulator_read_write"),
        Return(0, "KVM_EXIT_IO", "the instruction is an IN, OUT, INS or OUTS no in-kernel "
               "device takes", "} else if (vcpu->arch.pio.count) {",
               setter="emulator_pio_in_out"),
        Return(0, "KVM_EXIT_X86_RDMSR", "the instruction is an RDMSR user space asked to see "
               "(KVM_CAP_X86_USER_SPACE_MSR, MSR filters)",
               "} else if (vcpu->arch.complete_userspace_io) {",
               setter="emulator_get_msr_with_filter"),
        Return(0, "KVM_EXIT_X86_WRMSR", "the instruction is a WRMSR user space asked to see",
               "} else if (vcpu->arch.complete_userspace_io) {",
               setter="emulator_set_msr_with_filter"),
        Return(0, "KVM_EXIT_INTERNAL_ERROR", "KVM cannot emulate the instruction and the guest "
               "is at CPL 0, or the VM set KVM_CAP_EXIT_ON_EMULATION_FAILURE (at CPL > 0 the "
               "guest gets #UD instead)", "return handle_emulation_failure(vcpu, emulation_type);",
               ERROR, _FAIL),
        Return(0, "KVM_EXIT_DEBUG", "RIP hits a breakpoint user space set "
               "(KVM_GUESTDBG_USE_HW_BP)",
               "if (kvm_vcpu_check_code_breakpoint(vcpu, emulation_type, &r))", DEBUG,
               ("kvm_vcpu_check_code_breakpoint",)),
        Return(0, "KVM_EXIT_DEBUG", "user space single-steps the guest",
               "r = kvm_vcpu_do_singlestep(vcpu);", DEBUG, ("kvm_vcpu_do_singlestep",)),
    ),
    "kvm_mmu_page_fault": (
        Return(1, "", "KVM maps the page (or it is mapped already, or the fault is retried)",
               "return 1;"),
        Return(-1, "", "-EFAULT: the memory slot's host memory is gone (kvm_handle_bad_page); "
               "-EIO: a KVM bug", "if (r < 0)", ERROR),
        Passes("x86_emulate_instruction", "RET_PF_EMULATE: no memory slot at the address (MMIO), "
               "or a write KVM must emulate",
               "return x86_emulate_instruction(vcpu, cr2_or_gpa, emulation_type, insn,",
               _NO_PIO_MSR),
    ),
    "kvm_fast_pio": (
        Return(0, "KVM_EXIT_IO", "an OUT to a port no device on KVM_PIO_BUS takes (in-kernel "
               "PIC, PIT, an ioeventfd)", "ret = kvm_fast_pio_out(vcpu, size, port);",
               chain=("kvm_fast_pio_out", "emulator_pio_out", "emulator_pio_in_out")),
        Return(0, "KVM_EXIT_IO", "an IN from a port no device on KVM_PIO_BUS takes",
               "ret = kvm_fast_pio_in(vcpu, size, port);",
               chain=("kvm_fast_pio_in", "emulator_pio_in", "emulator_pio_in_out")),
        Passes(_S, "an in-kernel device took the access",
               "return ret && kvm_skip_emulated_instruction(vcpu);"),
    ),
    "kvm_emulate_halt_noskip": (
        Return(1, "", "the local APIC is in the kernel: mp_state = HALTED, the vCPU sleeps in "
               "vcpu_block", "return __kvm_emulate_halt(vcpu, KVM_MP_STATE_HALTED, KVM_EXIT_HLT);",
               chain=("__kvm_emulate_halt",)),
        Return(0, "KVM_EXIT_HLT", "no local APIC in the kernel: user space waits for the "
               "interrupt", "return __kvm_emulate_halt(vcpu, KVM_MP_STATE_HALTED, KVM_EXIT_HLT);",
               chain=("__kvm_emulate_halt",)),
    ),
    "handle_ud": (
        Return(1, "", "the instruction cannot be emulated here (an SGX enclave): #UD",
               "return 1;"),
        Passes(_EMU, "KVM emulates it if the emulator marks it EmulateOnUD (MOVBE, VMCALL, "
               "VMMCALL, SYSCALL, SYSENTER, RDPID ...; any other gets its #UD back, "
               "EMULTYPE_TRAP_UD)", "return kvm_emulate_instruction(vcpu, emul_type);",
               _NO_PIO_MSR),
        Passes(_EMU, "the guest put KVM's prefix (ud2; .ascii \"kvm\") before the instruction: "
               "KVM emulates whatever follows (a test-only parameter)",
               "emul_type = EMULTYPE_TRAP_UD_FORCED;", config="kvm.force_emulation_prefix=1"),
    ),
    "kvm_handle_page_fault": (
        Return(1, "", "an async page fault: the vCPU waited for the host page", "int r = 1;"),
        Passes("kvm_mmu_page_fault", "",
               "r = kvm_mmu_page_fault(vcpu, fault_address, error_code, insn,"),
    ),
    "handle_rmode_exception": (
        Passes(_EMU, "#GP or #SS with error code 0: the instruction is emulated",
               "if (kvm_emulate_instruction(vcpu, 0)) {"),
        Passes("kvm_emulate_halt_noskip", "the emulated instruction was HLT",
               "return kvm_emulate_halt_noskip(vcpu);"),
        Return(1, "", "any other exception: reflected into the guest",
               "kvm_queue_exception(vcpu, vec);"),
    ),
    "kvm_task_switch": (
        Return(1, "", "the emulator switched tasks", "return 1;"),
        Return(0, "KVM_EXIT_INTERNAL_ERROR", "emulator_task_switch failed "
               "(KVM_INTERNAL_ERROR_EMULATION)",
               "vcpu->run->exit_reason = KVM_EXIT_INTERNAL_ERROR;", ERROR),
    ),
    "kvm_xen_hypercall": (
        Return(1, "", "KVM answers it (xen_version, EVTCHNOP_send, sched_op, vcpu_op, "
               "set_timer_op)", "return kvm_xen_hypercall_set_result(vcpu, r);"),
        Return(0, "KVM_EXIT_XEN", "any other Xen hypercall, or one from CPL > 0",
               "vcpu->run->exit_reason = KVM_EXIT_XEN;"),
        Passes("kvm_hv_hypercall", "bit 31 of EAX set, Hyper-V hypercalls enabled too",
               "return kvm_hv_hypercall(vcpu);"),
    ),
    "kvm_hv_hypercall": (
        Return(1, "", "KVM answers it, or #UD (CPL > 0, real mode)",
               "return kvm_hv_hypercall_complete(vcpu, ret);"),
        Return(0, "KVM_EXIT_HYPERV", "HVCALL_POST_MESSAGE, or HVCALL_SIGNAL_EVENT to a port KVM "
               "does not know, with the SynIC on; or a synthetic-debugger hypercall",
               "vcpu->run->exit_reason = KVM_EXIT_HYPERV;"),
    ),
    "kvm_emulate_monitor_mwait": (
        Passes("kvm_handle_invalid_op", "the guest's CPUID has no MWAIT (and the quirk is "
               "off): #UD", "return kvm_handle_invalid_op(vcpu);"),
        Passes("kvm_emulate_as_nop", "otherwise: a NOP", "return kvm_emulate_as_nop(vcpu);"),
    ),
    "kvm_handle_invpcid": (
        Return(1, "", "a bad PCID or type: #GP", "return 1;"),
        Passes("kvm_handle_memory_failure", "the operand cannot be read",
               "return kvm_handle_memory_failure(vcpu, r, &e);"),
        Passes(_S, "the flush is done", _SKIP),
    ),
    "kvm_handle_memory_failure": (
        Return(1, "", "a guest page fault: injected", "return 1;"),
        Return(0, "KVM_EXIT_INTERNAL_ERROR", "the operand is MMIO (X86EMUL_IO_NEEDED): "
               "KVM_INTERNAL_ERROR_EMULATION", "kvm_prepare_emulation_failure_exit(vcpu);",
               ERROR, ("kvm_prepare_emulation_failure_exit",
                       "__kvm_prepare_emulation_failure_exit", "prepare_emulation_failure_exit")),
    ),
    "handle_invalid_guest_state": (
        Return(1, "", "the guest state became valid (or an event or signal is pending)",
               "return 1;"),
        Passes("handle_interrupt_window", "an interrupt window opened",
               "return handle_interrupt_window(&vmx->vcpu);"),
        Passes(_EMU, "each instruction is emulated", "if (!kvm_emulate_instruction(vcpu, 0))"),
        Return(0, "KVM_EXIT_INTERNAL_ERROR", "an exception is pending that VMX cannot deliver "
               "from this state", "kvm_prepare_emulation_failure_exit(vcpu);", ERROR,
               ("kvm_prepare_emulation_failure_exit", "__kvm_prepare_emulation_failure_exit",
                "prepare_emulation_failure_exit")),
        Passes("kvm_emulate_halt_noskip", "the emulated instruction was HLT",
               "return kvm_emulate_halt_noskip(vcpu);"),
    ),
    # -- __vmx_handle_exit and vmx_handle_exit, around every handler ----------------------
    "vmx_handle_exit": (
        Passes("__vmx_handle_exit", "", "int ret = __vmx_handle_exit(vcpu, exit_fastpath);"),
        Return(0, "KVM_EXIT_X86_BUS_LOCK", "the CPU also detected a bus lock "
               "(exit_reason.bus_lock_detected) and the handler returned 1",
               "vcpu->run->exit_reason = KVM_EXIT_X86_BUS_LOCK;"),
    ),
    "__vmx_handle_exit": (
        Return(-1, "", "-EIO: KVM_BUG_ON a pending nested VM entry", "return -EIO;", ERROR),
        Return(1, "", "in L2: the exit goes to L1 (nested_vmx_reflect_vmexit)",
               "if (nested_vmx_reflect_vmexit(vcpu))"),
        Passes("handle_invalid_guest_state", "a guest state VMX cannot run (real mode without "
               "unrestricted guest): KVM emulates", "return handle_invalid_guest_state(vcpu);",
               config="kvm_intel.unrestricted_guest=0"),
        Return(0, "KVM_EXIT_FAIL_ENTRY", "the VM entry failed",
               "vcpu->run->exit_reason = KVM_EXIT_FAIL_ENTRY;", ERROR),
        Return(0, "KVM_EXIT_INTERNAL_ERROR", "the exit came while the CPU delivered an event, "
               "for a reason that cannot cope with that (KVM_INTERNAL_ERROR_DELIVERY_EV)",
               "vcpu->run->internal.suberror = KVM_INTERNAL_ERROR_DELIVERY_EV;", ERROR),
        Return(1, "", "a fastpath finished the exit already",
               "if (exit_fastpath != EXIT_FASTPATH_NONE)"),
        Return(0, "KVM_EXIT_INTERNAL_ERROR", "no handler for the reason "
               "(KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON)", "unexpected_vmexit:", ERROR),
    ),
    # -- the handlers of kvm_vmx_exit_handlers[] ----------------------------------------
    "handle_exception_nmi": (
        Return(1, "", "#MC or NMI (handled in handle_exception_nmi_irqoff); #NM; #GP with an "
               "error code; #PF re-injected (EPT on); #DB or #AC re-injected; a split lock the "
               "host allows", "return 1;"),
        Passes("handle_ud", "#UD", "return handle_ud(vcpu);"),
        Passes(_EMU, "#GP with error code 0, intercepted for the VMware backdoor: IN, OUT, INS, "
               "OUTS, RDPMC", "return kvm_emulate_instruction(vcpu, EMULTYPE_VMWARE_GP);",
               ("KVM_EXIT_X86_RDMSR", "KVM_EXIT_X86_WRMSR"),
               config="kvm.enable_vmware_backdoor=1"),
        Return(0, "KVM_EXIT_INTERNAL_ERROR", "the exception came while the CPU delivered another "
               "event (KVM_INTERNAL_ERROR_SIMUL_EX)",
               "vcpu->run->internal.suberror = KVM_INTERNAL_ERROR_SIMUL_EX;", ERROR),
        Passes("kvm_handle_page_fault", "#PF with shadow paging (with EPT only an async #PF "
               "from a hypervisor KVM itself runs under comes here, and returns 1)",
               "return kvm_handle_page_fault(vcpu, error_code, cr2, NULL, 0);",
               config="kvm_intel.ept=0"),
        Passes("handle_rmode_exception", "an exception of a real-mode guest run in vm86 mode "
               "(no unrestricted guest: the parameter, or a CPU without it)",
               "return handle_rmode_exception(vcpu, ex_no, error_code);",
               config="kvm_intel.unrestricted_guest=0"),
        Return(0, "KVM_EXIT_DEBUG", "#DB while user space single-steps or sets hardware "
               "breakpoints, #BP with KVM_GUESTDBG_USE_SW_BP",
               "kvm_run->exit_reason = KVM_EXIT_DEBUG;", DEBUG),
        Return(0, "KVM_EXIT_EXCEPTION", "any other intercepted exception, e.g. #AC from a split "
               "lock the host forbids (split_lock_detect=fatal)",
               "kvm_run->exit_reason = KVM_EXIT_EXCEPTION;", ERROR),
    ),
    "handle_external_interrupt": (
        Return(1, "", "the host interrupt was serviced in handle_external_interrupt_irqoff",
               "return 1;"),),
    "handle_triple_fault": (
        Return(0, "KVM_EXIT_SHUTDOWN", "always", "vcpu->run->exit_reason = KVM_EXIT_SHUTDOWN;"),),
    "handle_nmi_window": (
        Return(1, "", "the NMI window is open: KVM_REQ_EVENT injects the NMI", "return 1;"),
        Return(-1, "", "-EIO: KVM_BUG_ON(!enable_vnmi)", "return -EIO;", ERROR),
    ),
    "handle_io": (
        Passes(_EMU, "INS or OUTS", "return kvm_emulate_instruction(vcpu, 0);",
               ("KVM_EXIT_X86_RDMSR", "KVM_EXIT_X86_WRMSR")),
        Passes("kvm_fast_pio", "IN or OUT", "return kvm_fast_pio(vcpu, size, port, in);"),
    ),
    "handle_cr": (
        Passes("kvm_complete_insn_gp", "MOV to CR0, CR3, CR4 or CR8",
               "return kvm_complete_insn_gp(vcpu, err);"),
        Return(0, "KVM_EXIT_SET_TPR", "a MOV to CR8 that lowers the TPR, with the local APIC in "
               "user space (no KVM_CREATE_IRQCHIP)",
               "vcpu->run->exit_reason = KVM_EXIT_SET_TPR;"),
        Return(-1, "", "-EIO on CLTS: KVM_BUG (the guest owns CR0.TS, CLTS never exits)",
               "return -EIO;", ERROR),
        Passes(_S, "MOV from CR3 or CR8, LMSW", _SKIP),
        Return(0, "KVM_EXIT_UNKNOWN", "a control-register access KVM has no case for "
               "(vcpu_unimpl: \"unhandled control register\")", "vcpu->run->exit_reason = 0;",
               ERROR),
    ),
    "handle_dr": (
        Return(1, "", "DR4/DR5 with CR4.DE: #UD", "if (!kvm_require_dr(vcpu, dr))"),
        Return(1, "", "CPL > 0: #GP, before any debugger check (goto out: kvm_complete_insn_gp "
               "with err = 1)", "if (vmx_get_cpl(vcpu) > 0)", chain=("kvm_complete_insn_gp",)),
        Return(1, "", "DR7.GD with no debugger: #DB into the guest; nobody debugs the guest: "
               "stop intercepting MOV DR and run the instruction again", "return 1;"),
        Return(0, "KVM_EXIT_DEBUG", "CPL 0, DR7.GD is set and user space debugs with hardware "
               "breakpoints (KVM_GUESTDBG_USE_HW_BP)",
               "vcpu->run->exit_reason = KVM_EXIT_DEBUG;", DEBUG),
        Passes("kvm_complete_insn_gp", "CPL 0 and user space debugs the guest: KVM does the "
               "MOV (a bad value: #GP)", "return kvm_complete_insn_gp(vcpu, err);"),
    ),
    "kvm_emulate_cpuid": (
        Return(1, "", "CPUID faulting on and CPL > 0: #GP", "return 1;"),
        Passes(_S, "EAX..EDX from the CPUID table of KVM_SET_CPUID2", _SKIP),
    ),
    "kvm_emulate_rdmsr": (
        Return(0, "KVM_EXIT_X86_RDMSR", "KVM refused the MSR (unknown, invalid or filtered) and "
               "user space asked to see such reads (KVM_CAP_X86_USER_SPACE_MSR)",
               "if (kvm_msr_user_space(vcpu, ecx, KVM_EXIT_X86_RDMSR, 0,",
               chain=("kvm_msr_user_space",)),
        Passes("kvm_complete_insn_gp", "otherwise: EDX:EAX, or #GP for an MSR KVM refused",
               "return static_call(kvm_x86_complete_emulated_msr)(vcpu, r);"),
    ),
    "kvm_emulate_wrmsr": (
        Return(0, "KVM_EXIT_X86_WRMSR", "KVM refused the MSR and user space asked to see such "
               "writes (KVM_CAP_X86_USER_SPACE_MSR)",
               "if (kvm_msr_user_space(vcpu, ecx, KVM_EXIT_X86_WRMSR, data,",
               chain=("kvm_msr_user_space",)),
        Return(-1, "", "setting the MSR failed with an errno",
               "/* Signal all other negative errors to userspace */", ERROR),
        Passes("kvm_complete_insn_gp", "otherwise: written, or #GP",
               "return static_call(kvm_x86_complete_emulated_msr)(vcpu, r);"),
    ),
    "handle_interrupt_window": (
        Return(1, "", "the guest takes interrupts again: KVM_REQ_EVENT injects the pending one "
               "(KVM_EXIT_IRQ_WINDOW_OPEN, if user space asked, comes later from vcpu_run)",
               "return 1;"),),
    "kvm_emulate_halt": (
        Passes(_S, "", "int ret = kvm_skip_emulated_instruction(vcpu);"),
        Passes("kvm_emulate_halt_noskip", "", "return kvm_emulate_halt_noskip(vcpu) && ret;"),
    ),
    "kvm_emulate_invd": (Passes("kvm_emulate_as_nop", "INVD is a NOP",
                                "return kvm_emulate_as_nop(vcpu);"),),
    "handle_invlpg": (Passes(_S, "after kvm_mmu_invlpg", _SKIP),),
    "kvm_emulate_rdpmc": (
        Return(1, "", "a bad counter: #GP", "return 1;"),
        Passes(_S, "EDX:EAX = the counter", _SKIP),
    ),
    "kvm_emulate_hypercall": (
        Passes("kvm_xen_hypercall", "the VM enabled Xen hypercalls (KVM_XEN_HVM_CONFIG)",
               "return kvm_xen_hypercall(vcpu);"),
        Passes("kvm_hv_hypercall", "the guest enabled Hyper-V hypercalls "
               "(HV_X64_MSR_HYPERCALL; Hyper-V CPUID from the VMM)",
               "return kvm_hv_hypercall(vcpu);"),
        Return(0, "KVM_EXIT_HYPERCALL", "KVM_HC_MAP_GPA_RANGE, and user space enabled it "
               "(KVM_CAP_EXIT_HYPERCALL)",
               "vcpu->arch.complete_userspace_io = complete_hypercall_exit;"),
        Passes(_S, "every other hypercall: the result in RAX", _SKIP),
    ),
    "handle_vmx_instruction": (
        Return(1, "", "#UD into the guest (only with kvm_intel.nested=0: by default "
               "nested_vmx_hardware_setup puts nested.c's handlers in these slots)",
               "kvm_queue_exception(vcpu, UD_VECTOR);"),),
    "handle_tpr_below_threshold": (
        Return(1, "", "kvm_apic_update_ppr: a pending interrupt may now be delivered",
               "return 1;"),),
    "handle_apic_access": (
        Passes(_S, "a MOV that writes EOI (fasteoi): no emulation", _SKIP),
        Passes(_EMU, "any other access to the APIC-access page (mapped only with the local APIC "
               "in the kernel, in xAPIC mode): emulated, and vcpu_mmio_read/write give it to "
               "the in-kernel LAPIC; it reaches KVM_MMIO_BUS, and user space, only if the "
               "guest moved its APIC base away from 0xfee00000 (apic_mmio_in_range)",
               "return kvm_emulate_instruction(vcpu, 0);", _NO_PIO_MSR),
    ),
    "handle_apic_write": (Return(1, "", "trap-like: kvm_apic_write_nodecode", "return 1;"),),
    "handle_apic_eoi_induced": (
        Return(1, "", "trap-like: kvm_apic_set_eoi_accelerated", "return 1;"),),
    "kvm_emulate_wbinvd": (Passes(_S, "", _SKIP),),
    "kvm_emulate_xsetbv": (
        Return(1, "", "CPL > 0 or a bad XCR value: #GP", "return 1;"),
        Passes(_S, "XCR set", _SKIP),
    ),
    "handle_task_switch": (Passes("kvm_task_switch", "",
                                  "return kvm_task_switch(vcpu, tss_selector,"),),
    "handle_machine_check": (Return(1, "", "handled in vmx_vcpu_run", "return 1;"),),
    "handle_desc": (
        Passes(_EMU, "SGDT, SIDT, SLDT, STR, LGDT ... intercepted to emulate UMIP for the guest "
               "(the host CPU has none)", "return kvm_emulate_instruction(vcpu, 0);",
               _NO_PIO_MSR),),
    "handle_ept_violation": (
        Passes(_EMU, "the GPA is beyond the guest's MAXPHYADDR",
               "return kvm_emulate_instruction(vcpu, 0);", _NO_PIO_MSR,
               config="kvm_intel.allow_smaller_maxphyaddr=1"),
        Passes("kvm_mmu_page_fault", "", "return kvm_mmu_page_fault(vcpu, gpa, error_code, "
               "NULL, 0);"),
    ),
    "handle_ept_misconfig": (
        Return(1, "", "an access from an SGX enclave: #UD", "return 1;"),
        Passes(_S, "an ioeventfd on KVM_FAST_MMIO_BUS takes the address", _SKIP),
        Passes("kvm_mmu_page_fault", "otherwise: an MMIO SPTE (PFERR_RSVD_MASK)",
               "return kvm_mmu_page_fault(vcpu, gpa, PFERR_RSVD_MASK, NULL, 0);"),
    ),
    "handle_pause": (Passes(_S, "after kvm_vcpu_on_spin: yield to another vCPU", _SKIP),),
    "kvm_emulate_mwait": (Passes("kvm_emulate_monitor_mwait", "",
                                 'return kvm_emulate_monitor_mwait(vcpu, "MWAIT");'),),
    "handle_monitor_trap": (Return(1, "", "nothing to do", "return 1;"),),
    "kvm_emulate_monitor": (Passes("kvm_emulate_monitor_mwait", "",
                                   'return kvm_emulate_monitor_mwait(vcpu, "MONITOR");'),),
    "kvm_handle_invalid_op": (
        Return(1, "", "#UD into the guest", "kvm_queue_exception(vcpu, UD_VECTOR);"),),
    "handle_pml_full": (
        Return(1, "", "the PML buffer was flushed already in __vmx_handle_exit", "return 1;"),),
    "handle_invpcid": (
        Return(1, "", "no INVPCID in the guest's CPUID: #UD; a bad operand address: a fault "
               "injected", "return 1;"),
        Passes("kvm_handle_invpcid", "", "return kvm_handle_invpcid(vcpu, type, gva);"),
    ),
    "handle_preemption_timer": (
        Return(1, "", "the VMX preemption timer fired: the in-kernel LAPIC timer's deadline "
               "(kvm_lapic_expired_hv_timer), or an exit KVM forced (req_immediate_exit)",
               "return 1;"),),
    "handle_encls": (Return(1, "", "vmx.c's stub, built without CONFIG_X86_SGX_KVM (its "
                                   "Kconfig default): SGX is not virtualized, #UD", "return 1;"),),
    "handle_bus_lock_vmexit": (
        Return(0, "KVM_EXIT_X86_BUS_LOCK", "always: the handler returns 1 with "
               "bus_lock_detected set, vmx_handle_exit turns that into 0 (the CPU makes this "
               "exit only if user space enabled KVM_BUS_LOCK_DETECTION_EXIT)",
               "to_vmx(vcpu)->exit_reason.bus_lock_detected = true;", setter="vmx_handle_exit"),),
    "handle_notify": (
        Return(0, "KVM_EXIT_NOTIFY", "user space asked for notify exits "
               "(KVM_X86_NOTIFY_VMEXIT_USER), or the VM context is corrupt",
               "vcpu->run->exit_reason = KVM_EXIT_NOTIFY;"),
        Return(1, "", "otherwise", "return 1;"),
    ),
    # -- nested VMX: the handlers nested_vmx_hardware_setup installs (vmx/nested.c) --------
    # VMX in the guest's CPUID, a guest that runs its own hypervisor: normal use.
    "nested_vmx_succeed": (Passes(_S, "VMsucceed: the arithmetic flags cleared", _SKIP),),
    "nested_vmx_failInvalid": (Passes(_S, "VMfailInvalid: CF set", _SKIP),),
    "nested_vmx_failValid": (
        Passes(_S, "VMfailValid: ZF set, the error number in the current VMCS", _SKIP),),
    "nested_vmx_fail": (
        Passes("nested_vmx_failInvalid", "no current VMCS",
               "return nested_vmx_failInvalid(vcpu);"),
        Passes("nested_vmx_failValid", "", "return nested_vmx_failValid(vcpu, vm_instruction_error);"),
    ),
    "nested_vmx_get_vmptr": (
        Return(1, "", "a bad operand address: a fault injected (1 through *ret)", "*ret = 1;"),
        Passes("kvm_handle_memory_failure", "the VMCS pointer cannot be read from guest memory "
               "(handed back through *ret)", "*ret = kvm_handle_memory_failure(vcpu, r, &e);"),
    ),
    "nested_vmx_run": (
        Return(1, "", "VMX off or CPL > 0 (#UD, #GP), a bad enlightened VMCS; or L2 is entered "
               "at the next VM entry, or the entry became a VM exit to L1", "return 1;"),
        Passes("nested_vmx_failInvalid", "no current VMCS, or a shadow VMCS",
               "return nested_vmx_failInvalid(vcpu);"),
        Passes("nested_vmx_fail", "a check of vmcs12 failed (launch state, controls, host "
               "state)", "return nested_vmx_fail(vcpu, VMXERR_ENTRY_INVALID_CONTROL_FIELD);"),
        Passes("kvm_emulate_halt_noskip", "vmcs12 enters L2 in the HLT activity state with "
               "nothing to wake it", "return kvm_emulate_halt_noskip(vcpu);"),
        Return(0, "KVM_EXIT_INTERNAL_ERROR", "a page vmcs12 points to (the APIC-access page) has "
               "no memory behind it (KVM_INTERNAL_ERROR_EMULATION)",
               "if (status == NVMX_VMENTRY_KVM_INTERNAL_ERROR)", ERROR,
               ("nested_vmx_enter_non_root_mode", "nested_get_vmcs12_pages")),
    ),
    "handle_vmclear": (
        Return(1, "", "VMX off or CPL > 0: #UD or #GP", "return 1;"),
        Passes("nested_vmx_get_vmptr", "", "if (nested_vmx_get_vmptr(vcpu, &vmptr, &r))"),
        Passes("nested_vmx_fail", "a bad VMCS address, or the VMXON region",
               "return nested_vmx_fail(vcpu, VMXERR_VMCLEAR_INVALID_ADDRESS);"),
        Passes("nested_vmx_succeed", "the VMCS is cleared", "return nested_vmx_succeed(vcpu);"),
    ),
    "handle_vmlaunch": (Passes("nested_vmx_run", "", "return nested_vmx_run(vcpu, true);"),),
    "handle_vmresume": (Passes("nested_vmx_run", "", "return nested_vmx_run(vcpu, false);"),),
    "handle_vmptrld": (
        Return(1, "", "VMX off or CPL > 0 (#UD, #GP); an enlightened VMCS is in use",
               "return 1;"),
        Passes("nested_vmx_get_vmptr", "", "if (nested_vmx_get_vmptr(vcpu, &vmptr, &r))"),
        Passes("nested_vmx_fail", "a bad VMCS address, the VMXON region, or a VMCS of another "
               "revision", "return nested_vmx_fail(vcpu, VMXERR_VMPTRLD_INVALID_ADDRESS);"),
        Passes("nested_vmx_succeed", "the VMCS is current", "return nested_vmx_succeed(vcpu);"),
    ),
    "handle_vmptrst": (
        Return(1, "", "VMX off or CPL > 0 (#UD, #GP), an enlightened VMCS, or a bad operand "
               "address", "return 1;"),
        Passes("kvm_handle_memory_failure", "the operand cannot be written",
               "return kvm_handle_memory_failure(vcpu, r, &e);"),
        Passes("nested_vmx_succeed", "", "return nested_vmx_succeed(vcpu);"),
    ),
    "handle_vmread": (
        Return(1, "", "VMX off or CPL > 0 (#UD, #GP), or a bad operand address", "return 1;"),
        Passes("nested_vmx_failInvalid", "no current VMCS",
               "return nested_vmx_failInvalid(vcpu);"),
        Passes("nested_vmx_fail", "no such VMCS field",
               "return nested_vmx_fail(vcpu, VMXERR_UNSUPPORTED_VMCS_COMPONENT);"),
        Passes("kvm_handle_memory_failure", "the memory operand cannot be written",
               "return kvm_handle_memory_failure(vcpu, r, &e);"),
        Passes("nested_vmx_succeed", "", "return nested_vmx_succeed(vcpu);"),
    ),
    "handle_vmwrite": (
        Return(1, "", "VMX off or CPL > 0 (#UD, #GP), or a bad operand address", "return 1;"),
        Passes("nested_vmx_failInvalid", "no current VMCS",
               "return nested_vmx_failInvalid(vcpu);"),
        Passes("kvm_handle_memory_failure", "the memory operand cannot be read",
               "return kvm_handle_memory_failure(vcpu, r, &e);"),
        Passes("nested_vmx_fail", "no such field, or a read-only one",
               "return nested_vmx_fail(vcpu, VMXERR_UNSUPPORTED_VMCS_COMPONENT);"),
        Passes("nested_vmx_succeed", "", "return nested_vmx_succeed(vcpu);"),
    ),
    "handle_vmxoff": (
        Return(1, "", "VMX off or CPL > 0: #UD or #GP", "return 1;"),
        Passes("nested_vmx_succeed", "VMX operation left (free_nested)",
               "return nested_vmx_succeed(vcpu);"),
    ),
    "handle_vmxon": (
        Return(1, "", "CR0/CR4 not valid for VMX (#UD); CPL > 0, or IA32_FEATURE_CONTROL does "
               "not allow VMX (#GP)", "return 1;"),
        Passes("nested_vmx_fail", "VMX is on already",
               "return nested_vmx_fail(vcpu, VMXERR_VMXON_IN_VMX_ROOT_OPERATION);"),
        Passes("nested_vmx_get_vmptr", "", "if (nested_vmx_get_vmptr(vcpu, &vmptr, &ret))"),
        Passes("nested_vmx_failInvalid", "a bad VMXON region address or revision",
               "return nested_vmx_failInvalid(vcpu);"),
        Return(-1, "", "-ENOMEM: enter_vmx_operation cannot allocate the nested state",
               "ret = enter_vmx_operation(vcpu);", ERROR, ("enter_vmx_operation",)),
        Passes("nested_vmx_succeed", "", "return nested_vmx_succeed(vcpu);"),
    ),
    "handle_invept": (
        Return(1, "", "the guest's VMX has no EPT or INVEPT (#UD); VMX off or CPL > 0; a bad "
               "operand address", "return 1;"),
        Passes("nested_vmx_fail", "an unsupported type, or a bad EPTP",
               "return nested_vmx_fail(vcpu, VMXERR_INVALID_OPERAND_TO_INVEPT_INVVPID);"),
        Passes("kvm_handle_memory_failure", "the operand cannot be read",
               "return kvm_handle_memory_failure(vcpu, r, &e);"),
        Passes("nested_vmx_succeed", "the EPT roots are freed", "return nested_vmx_succeed(vcpu);"),
    ),
    "handle_invvpid": (
        Return(1, "", "the guest's VMX has no VPID or INVVPID (#UD); VMX off or CPL > 0; a bad "
               "operand address", "return 1;"),
        Passes("nested_vmx_fail", "an unsupported type, or a bad VPID or address",
               "return nested_vmx_fail(vcpu,"),
        Passes("kvm_handle_memory_failure", "the operand cannot be read",
               "return kvm_handle_memory_failure(vcpu, r, &e);"),
        Passes(_S, "a type KVM does not know (WARN)", _SKIP),
        Passes("nested_vmx_succeed", "the VPID's mappings are flushed",
               "return nested_vmx_succeed(vcpu);"),
    ),
    "handle_vmfunc": (
        Return(1, "", "not in L2 (#UD); a function L1 did not enable, or a failed EPTP switch: "
               "reflected to L1 as a VM exit", "return 1;"),
        Passes(_S, "EPTP switching done", _SKIP),
    ),
})

#: Where each function of :data:`RETURNS` (and of their chains) is, in Linux 6.1.
SOURCE_FILES: Mapping[str, str] = MappingProxyType({
    **{f: "arch/x86/kvm/vmx/vmx.c" for f in (
        "vmx_handle_exit", "__vmx_handle_exit", "handle_invalid_guest_state",
        "handle_rmode_exception", "vmx_skip_emulated_instruction", "skip_emulated_instruction",
        *(f for f in KVM_VMX_EXIT_HANDLERS.values() if f.startswith("handle_")))},
    **{f: "arch/x86/kvm/x86.c" for f in (
        _S, "kvm_vcpu_do_singlestep", "kvm_complete_insn_gp", "kvm_emulate_as_nop", _EMU,
        "x86_emulate_instruction", *_FAIL, "emulator_read_write", "emulator_pio_in_out",
        "emulator_get_msr_with_filter", "emulator_set_msr_with_filter",
        "kvm_vcpu_check_code_breakpoint", "kvm_fast_pio", "kvm_fast_pio_out", "kvm_fast_pio_in",
        "emulator_pio_out", "emulator_pio_in", "kvm_emulate_halt_noskip", "__kvm_emulate_halt",
        "handle_ud", "kvm_task_switch", "kvm_emulate_monitor_mwait", "kvm_handle_invpcid",
        "kvm_handle_memory_failure", "kvm_prepare_emulation_failure_exit",
        "__kvm_prepare_emulation_failure_exit", "kvm_msr_user_space",
        *(f for f in KVM_VMX_EXIT_HANDLERS.values() if f.startswith("kvm_")))},
    **{f: "arch/x86/kvm/vmx/nested.c" for f in (
        *NESTED_VMX_EXIT_HANDLERS.values(), "nested_vmx_succeed", "nested_vmx_failInvalid",
        "nested_vmx_failValid", "nested_vmx_fail", "nested_vmx_get_vmptr", "nested_vmx_run",
        "nested_vmx_enter_non_root_mode", "nested_get_vmcs12_pages", "enter_vmx_operation")},
    "kvm_emulate_cpuid": "arch/x86/kvm/cpuid.c",
    "kvm_mmu_page_fault": "arch/x86/kvm/mmu/mmu.c",
    "kvm_handle_page_fault": "arch/x86/kvm/mmu/mmu.c",
    "kvm_xen_hypercall": "arch/x86/kvm/xen.c",
    "kvm_hv_hypercall": "arch/x86/kvm/hyperv.c",
})


def exit_paths(fn: str, _root: str = "") -> tuple[ExitPath, ...]:
    """Every way ``fn`` (an exit handler, or a function of :data:`RETURNS`) can end.

    Each :class:`Passes` is followed into its callee, so the paths of
    ``handle_io`` include the ``KVM_EXIT_IO`` that ``emulator_pio_in_out``
    fills, with the conditions joined and ``via`` naming every function on
    the way. A path marked ``only`` for other handlers is left out; a path
    through a :class:`Passes` with ``config`` is kind CONFIG and names it.
    """
    if fn not in RETURNS:
        raise VmxError(f"{fn!r}: no return paths recorded (see vbook.models.vmx.RETURNS)")
    root = _root or fn
    out: list[ExitPath] = []
    for r in RETURNS[fn]:
        if isinstance(r, Passes):
            for p in exit_paths(r.callee, root):
                if p.exit in r.cannot:
                    continue
                when = f"{r.when}: {p.when}" if r.when else p.when
                config = ", ".join(c for c in (r.config, p.config) if c)
                out.append(ExitPath(p.ret, p.exit, when, CONFIG if config else p.kind,
                                    (fn, *p.via), config))
        elif not r.only or root in r.only:
            via = (fn, *r.chain) + ((r.setter,) if r.setter else ())
            out.append(ExitPath(r.ret, r.exit, r.when, r.kind, via))
    return tuple(dict.fromkeys(out))


def _name(p: ExitPath) -> str:
    return p.exit.removeprefix("KVM_EXIT_") if p.ret == 0 else "errno"


def user_exits(fn: str) -> dict[str, tuple[str, ...]]:
    """The ``KVM_EXIT_*`` names (without the prefix) ``fn`` can end in, by kind; "errno" for < 0.

    CONFIG holds only what no default-setting path gives as well.
    """
    out: dict[str, list[str]] = {k: [] for k in _KINDS}
    for p in exit_paths(fn):
        if p.ret <= 0 and _name(p) not in out[p.kind]:
            out[p.kind].append(_name(p))
    default = {n for k in (NORMAL, DEBUG, ERROR) for n in out[k]}
    out[CONFIG] = [n for n in out[CONFIG] if n not in default]
    return {k: tuple(sorted(v)) for k, v in out.items()}


def config_exits(fn: str) -> dict[str, tuple[str, ...]]:
    """Setting → the ``KVM_EXIT_*`` (and "errno") ``fn`` gives only under it, as in
    :func:`user_exits`; settings that add nothing are left out."""
    default = {n for k, names in user_exits(fn).items() if k != CONFIG for n in names}
    out: dict[str, set[str]] = {}
    for p in exit_paths(fn):
        if p.kind == CONFIG and p.ret <= 0 and _name(p) not in default:
            out.setdefault(p.config, set()).add(_name(p))
    return {c: tuple(sorted(v)) for c, v in sorted(out.items())}


KERNEL, USER, DEPENDS, DEBUG_OR_ERROR = "kernel", "user", "depends", "debug/error"


def _where(handler: str) -> tuple[str, str]:
    paths = [p for p in exit_paths(handler) if p.kind != CONFIG]
    exits = user_exits(handler)
    if all(p.ret == 1 for p in paths):
        return KERNEL, ""
    text = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in exits.items() if names)
    if all(p.ret <= 0 for p in paths):
        return USER, text
    return (DEPENDS if exits[NORMAL] else DEBUG_OR_ERROR), text


#: Where each handled exit goes in Linux 6.1 with default settings, derived from
#: :data:`RETURNS` for the handlers of :data:`DEFAULT_EXIT_HANDLERS`:
#: ``(where, exits)``. ``where`` is "kernel" (every path returns 1), "user"
#: (every path returns 0 or an error), "depends" (some path returns 0 in
#: normal use, on the VM's configuration or what the guest does) or
#: "debug/error" (only while user space debugs the guest, or when something
#: fails); paths that need a non-default setting (kind CONFIG) do not count.
#: ``exits`` lists the ``KVM_EXIT_*`` by kind. :func:`exit_paths` has the
#: conditions. Reasons with no handler are not keys: they end as
#: KVM_EXIT_INTERNAL_ERROR (see :func:`vbook.models.kvm_kernel.vmx_handle_exit`).
USER_SPACE: Mapping[VmxExitReason, tuple[str, str]] = MappingProxyType({
    r: _where(h) for r, h in DEFAULT_EXIT_HANDLERS.items()})


def user_space_table(width: int = 100) -> str:
    """Which handlers can send an exit to user space, and with which ``KVM_EXIT_*``.

    Counted from :data:`USER_SPACE` (so from :data:`RETURNS`), for the handlers
    default settings install: one line per reason whose handler can return 0
    in normal use, then the reasons that reach user space only under a
    debugger or on a failure, then those that never do; last, what a
    non-default setting adds (:func:`config_exits`, :data:`OTHER_HANDLERS`).
    """
    rows = [(r, h) for r, h in sorted(DEFAULT_EXIT_HANDLERS.items())
            if USER_SPACE[r][0] in (USER, DEPENDS)]
    lines = [f"{len(rows)} of {len(DEFAULT_EXIT_HANDLERS)} entries can end in user space in "
             "normal use (default settings, kvm_intel.nested=1):",
             f"{'':3} {'exit reason':<15} {'handler':<23} {'KVM_EXIT_*':<25}"
             "and under a debugger / on a failure"]
    for reason, handler in rows:
        ex = user_exits(handler)
        lines.append(f"{int(reason):3d} {reason.name:<15} {handler:<23} "
                     f"{', '.join(ex[NORMAL]):<25}{', '.join(ex[DEBUG] + ex[ERROR])}".rstrip())
    for where, what in ((DEBUG_OR_ERROR, "reach user space only under a debugger or on a "
                                         "failure"), (KERNEL, "never do: every path returns 1")):
        names = [r.name for r in sorted(USER_SPACE) if USER_SPACE[r][0] == where]
        lines += textwrap.wrap(f"{len(names)} {what}: {', '.join(names)}", width,
                               subsequent_indent="    ")
    lines.append("Only with a setting other than the default:")
    for reason, handler in sorted(DEFAULT_EXIT_HANDLERS.items()):
        for k, (setting, names) in enumerate(config_exits(handler).items()):
            head = f"{int(reason):3d} {reason.name:<15} " if k == 0 else " " * 20
            lines.append(f"{head}{setting}: {', '.join(names)}")
    groups: dict[tuple[str, str, str], list[str]] = {}
    for reason, other in sorted(OTHER_HANDLERS.items()):
        groups.setdefault(other, []).append(reason.name)
    for (setting, handler, gives), names in groups.items():
        lines += textwrap.wrap(f"{setting}: {', '.join(names)} → {handler}; to user space: "
                               f"{gives}", width, initial_indent="    ",
                               subsequent_indent="        ")
    return "\n".join(lines)


__all__ = [
    "CONFIG",
    "DEBUG",
    "DEBUG_OR_ERROR",
    "DEPENDS",
    "ERROR",
    "KERNEL",
    "NORMAL",
    "RETURNS",
    "SOURCE_FILES",
    "USER",
    "USER_SPACE",
    "ExitPath",
    "Passes",
    "Return",
    "config_exits",
    "exit_paths",
    "user_exits",
    "user_space_table",
]
