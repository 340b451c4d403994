"""VMX exit reasons and KVM's exit-handler table, as data (Linux 6.1, Intel VMX).

When a guest does something the CPU will not let it do alone, VMX leaves
guest mode and writes the *exit reason* into the VMCS field
``VM_EXIT_REASON``: bits 15:0 are the **basic exit reason**, bit 31 says the
VM entry itself failed. KVM reads it in ``vmx_vcpu_run``
(``vmx->exit_reason.full = vmcs_read32(VM_EXIT_REASON)``) and
``__vmx_handle_exit`` (arch/x86/kvm/vmx/vmx.c) dispatches on the basic reason
through one array of function pointers, ``kvm_vmx_exit_handlers[]``. Every
handler answers with the same convention:

* **1** — handled in the kernel: ``vcpu_run`` loops and re-enters the guest;
* **0** — user space must act: the handler filled ``vcpu->run->exit_reason``
  (a ``KVM_EXIT_*``) and ``KVM_RUN`` returns 0;
* **< 0** — an error: ``KVM_RUN`` fails with that errno.

This module holds that table as data (:data:`KVM_VMX_EXIT_HANDLERS` as
vmx.c writes it, :data:`DEFAULT_EXIT_HANDLERS` as ``hardware_setup`` leaves
it with the default ``kvm_intel.nested=1``), the basic reasons
(:class:`VmxExitReason`, pinned to the uapi header by a C oracle test),
every way each handler can end (:data:`RETURNS`, followed into its callees
by :func:`exit_paths`: return value, ``KVM_EXIT_*``, condition, each checked
against the kernel source by a test), which reasons can therefore reach user
space (:data:`USER_SPACE`, derived from them), the 3.15 table for comparison
(:data:`KVM_VMX_EXIT_HANDLERS_3_15`, :func:`compare_3_15`), and the I/O exit
qualification ``handle_io`` decodes (:class:`IoQualification`).

"Default" means a host with EPT and unrestricted guest, the kvm and
kvm_intel module parameters at their defaults (:data:`MODULE_DEFAULTS`) and
a kernel built without ``CONFIG_X86_SGX_KVM`` (its Kconfig default). A path
that needs anything else is kind CONFIG and names the setting.

Sources: arch/x86/include/uapi/asm/vmx.h, arch/x86/kvm/vmx/vmx.c, vmx/nested.c
(and, for the return paths, x86.c, cpuid.c, mmu/mmu.c, hyperv.c, xen.c) of the
v6.1-rc7 tree (krr-io/linux-6.1.0 commit 7c210bc38, unmodified), the same
uapi header as installed by linux-libc-dev 6.1.187; arch/x86/kvm/vmx.c of a
Linux 3.15.5 tree (pradeep0605/CS736_Eager_paging_linux-3.15.5, base commit
a9bdf583, whose KVM files the repository never changed). Pure, stdlib only.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType

from vbook.errors import VbookError


class VmxError(VbookError, ValueError):
    """A value that no VMX exit could carry (a qualification, a reason, a size)."""


class VmxExitReason(IntEnum):
    """``EXIT_REASON_*`` — VMX basic exit reasons.

    arch/x86/include/uapi/asm/vmx.h (Linux 6.1; identical in uapi 6.1.187),
    the numbers of Intel SDM Vol. 3 Appendix C "VMX Basic Exit Reasons".
    Names without the ``EXIT_REASON_`` prefix; numbers the header leaves out
    (5, 6, 11, 17, 35, 38, 42, 65, 66, 69–73) are not members.
    """

    EXCEPTION_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INIT_SIGNAL = 3
    SIPI_SIGNAL = 4
    INTERRUPT_WINDOW = 7
    NMI_WINDOW = 8
    TASK_SWITCH = 9
    CPUID = 10
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    VMCALL = 18
    VMCLEAR = 19
    VMLAUNCH = 20
    VMPTRLD = 21
    VMPTRST = 22
    VMREAD = 23
    VMRESUME = 24
    VMWRITE = 25
    VMOFF = 26
    VMON = 27
    CR_ACCESS = 28
    DR_ACCESS = 29
    IO_INSTRUCTION = 30
    MSR_READ = 31
    MSR_WRITE = 32
    INVALID_STATE = 33
    MSR_LOAD_FAIL = 34
    MWAIT_INSTRUCTION = 36
    MONITOR_TRAP_FLAG = 37
    MONITOR_INSTRUCTION = 39
    PAUSE_INSTRUCTION = 40
    MCE_DURING_VMENTRY = 41
    TPR_BELOW_THRESHOLD = 43
    APIC_ACCESS = 44
    EOI_INDUCED = 45
    GDTR_IDTR = 46
    LDTR_TR = 47
    EPT_VIOLATION = 48
    EPT_MISCONFIG = 49
    INVEPT = 50
    RDTSCP = 51
    PREEMPTION_TIMER = 52
    INVVPID = 53
    WBINVD = 54
    XSETBV = 55
    APIC_WRITE = 56
    RDRAND = 57
    INVPCID = 58
    VMFUNC = 59
    ENCLS = 60
    RDSEED = 61
    PML_FULL = 62
    XSAVES = 63
    XRSTORS = 64
    UMWAIT = 67
    TPAUSE = 68
    BUS_LOCK = 74
    NOTIFY = 75


#: bit 31 of VM_EXIT_REASON: the VM entry failed (uapi asm/vmx.h)
VMX_EXIT_REASONS_FAILED_VMENTRY = 0x80000000
#: bit 27 of VM_EXIT_REASON: the exit came from inside an SGX enclave (uapi asm/vmx.h)
VMX_EXIT_REASONS_SGX_ENCLAVE_MODE = 0x08000000
#: bits 15:0 of VM_EXIT_REASON: the basic exit reason (KVM: ``union vmx_exit_reason.basic``)
BASIC_EXIT_REASON_MASK = 0xFFFF

#: VMCS field encodings KVM reads at an exit — arch/x86/include/asm/vmx.h (Linux 6.1)
VMCS_FIELDS: Mapping[str, int] = MappingProxyType({
    "VM_EXIT_REASON": 0x4402,
    "VM_EXIT_INSTRUCTION_LEN": 0x440C,
    "EXIT_QUALIFICATION": 0x6400,
    "GUEST_LINEAR_ADDRESS": 0x640A,
    "GUEST_PHYSICAL_ADDRESS": 0x2400,
})


def basic_exit_reason(full: int) -> int:
    """Bits 15:0 of a full VM_EXIT_REASON value."""
    return _check_u32(full, "exit reason") & BASIC_EXIT_REASON_MASK


def failed_vmentry(full: int) -> bool:
    """Bit 31: the VM entry itself failed (KVM turns this into KVM_EXIT_FAIL_ENTRY)."""
    return bool(_check_u32(full, "exit reason") & VMX_EXIT_REASONS_FAILED_VMENTRY)


def reason_name(basic: int) -> str:
    """``"CPUID"`` for 10; ``"unknown (99)"`` for a number the header does not name."""
    try:
        return VmxExitReason(basic).name
    except ValueError:
        return f"unknown ({basic})"


def describe_reason(basic: int) -> str:
    """The number and its name, e.g. ``"10 (EXIT_REASON_CPUID)"``, never dropped."""
    try:
        return f"{basic} (EXIT_REASON_{VmxExitReason(basic).name})"
    except ValueError:
        return f"{basic} (no EXIT_REASON_* has this number)"


def _check_u32(v: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32:
        raise VmxError(f"{what} must be a 32-bit unsigned integer, got {v!r}")
    return v


# --- kvm_vmx_exit_handlers[] ------------------------------------------------------------

_R = VmxExitReason

#: ``kvm_vmx_exit_handlers[]`` of arch/x86/kvm/vmx/vmx.c (Linux 6.1): basic exit
#: reason → the function ``__vmx_handle_exit`` calls. A reason that is not a key
#: has no entry (NULL): KVM treats it as an unexpected exit. This is the array
#: as vmx.c writes it; with ``kvm_intel.nested=1``, the default,
#: ``hardware_setup`` replaces its twelve ``handle_vmx_instruction`` entries
#: (:data:`NESTED_VMX_EXIT_HANDLERS`, :data:`DEFAULT_EXIT_HANDLERS`).
KVM_VMX_EXIT_HANDLERS: Mapping[VmxExitReason, str] = MappingProxyType({
    _R.EXCEPTION_NMI: "handle_exception_nmi",
    _R.EXTERNAL_INTERRUPT: "handle_external_interrupt",
    _R.TRIPLE_FAULT: "handle_triple_fault",
    _R.NMI_WINDOW: "handle_nmi_window",
    _R.IO_INSTRUCTION: "handle_io",
    _R.CR_ACCESS: "handle_cr",
    _R.DR_ACCESS: "handle_dr",
    _R.CPUID: "kvm_emulate_cpuid",
    _R.MSR_READ: "kvm_emulate_rdmsr",
    _R.MSR_WRITE: "kvm_emulate_wrmsr",
    _R.INTERRUPT_WINDOW: "handle_interrupt_window",
    _R.HLT: "kvm_emulate_halt",
    _R.INVD: "kvm_emulate_invd",
    _R.INVLPG: "handle_invlpg",
    _R.RDPMC: "kvm_emulate_rdpmc",
    _R.VMCALL: "kvm_emulate_hypercall",
    _R.VMCLEAR: "handle_vmx_instruction",
    _R.VMLAUNCH: "handle_vmx_instruction",
    _R.VMPTRLD: "handle_vmx_instruction",
    _R.VMPTRST: "handle_vmx_instruction",
    _R.VMREAD: "handle_vmx_instruction",
    _R.VMRESUME: "handle_vmx_instruction",
    _R.VMWRITE: "handle_vmx_instruction",
    _R.VMOFF: "handle_vmx_instruction",
    _R.VMON: "handle_vmx_instruction",
    _R.TPR_BELOW_THRESHOLD: "handle_tpr_below_threshold",
    _R.APIC_ACCESS: "handle_apic_access",
    _R.APIC_WRITE: "handle_apic_write",
    _R.EOI_INDUCED: "handle_apic_eoi_induced",
    _R.WBINVD: "kvm_emulate_wbinvd",
    _R.XSETBV: "kvm_emulate_xsetbv",
    _R.TASK_SWITCH: "handle_task_switch",
    _R.MCE_DURING_VMENTRY: "handle_machine_check",
    _R.GDTR_IDTR: "handle_desc",
    _R.LDTR_TR: "handle_desc",
    _R.EPT_VIOLATION: "handle_ept_violation",
    _R.EPT_MISCONFIG: "handle_ept_misconfig",
    _R.PAUSE_INSTRUCTION: "handle_pause",
    _R.MWAIT_INSTRUCTION: "kvm_emulate_mwait",
    _R.MONITOR_TRAP_FLAG: "handle_monitor_trap",
    _R.MONITOR_INSTRUCTION: "kvm_emulate_monitor",
    _R.INVEPT: "handle_vmx_instruction",
    _R.INVVPID: "handle_vmx_instruction",
    _R.RDRAND: "kvm_handle_invalid_op",
    _R.RDSEED: "kvm_handle_invalid_op",
    _R.PML_FULL: "handle_pml_full",
    _R.INVPCID: "handle_invpcid",
    _R.VMFUNC: "handle_vmx_instruction",
    _R.PREEMPTION_TIMER: "handle_preemption_timer",
    _R.ENCLS: "handle_encls",
    _R.BUS_LOCK: "handle_bus_lock_vmexit",
    _R.NOTIFY: "handle_notify",
})

#: ``kvm_vmx_max_exit_handlers`` = ARRAY_SIZE(kvm_vmx_exit_handlers): the highest
#: designated index (EXIT_REASON_NOTIFY, 75) + 1. A basic reason at or above it
#: goes straight to ``unexpected_vmexit``.
KVM_VMX_MAX_EXIT_HANDLERS = max(KVM_VMX_EXIT_HANDLERS) + 1

#: ``nested_vmx_hardware_setup`` (arch/x86/kvm/vmx/nested.c), which
#: ``hardware_setup`` calls ``if (nested)``: the slots it fills with nested
#: VMX's own handlers (VMXON, VMCLEAR … for a guest that runs its own
#: hypervisor). With ``kvm_intel.nested=0`` they keep ``handle_vmx_instruction``.
NESTED_VMX_EXIT_HANDLERS: Mapping[VmxExitReason, str] = MappingProxyType({
    _R.VMCLEAR: "handle_vmclear",
    _R.VMLAUNCH: "handle_vmlaunch",
    _R.VMPTRLD: "handle_vmptrld",
    _R.VMPTRST: "handle_vmptrst",
    _R.VMREAD: "handle_vmread",
    _R.VMRESUME: "handle_vmresume",
    _R.VMWRITE: "handle_vmwrite",
    _R.VMOFF: "handle_vmxoff",
    _R.VMON: "handle_vmxon",
    _R.INVEPT: "handle_invept",
    _R.INVVPID: "handle_invvpid",
    _R.VMFUNC: "handle_vmfunc",
})

#: ``kvm_vmx_exit_handlers[]`` as ``hardware_setup`` leaves it with the default
#: module parameters: vmx.c's array with :data:`NESTED_VMX_EXIT_HANDLERS` in
#: their slots. These are the handlers that run; :data:`USER_SPACE` is counted
#: from them.
DEFAULT_EXIT_HANDLERS: Mapping[VmxExitReason, str] = MappingProxyType(
    {**KVM_VMX_EXIT_HANDLERS, **NESTED_VMX_EXIT_HANDLERS})

#: The module parameters the return paths depend on, at their defaults, and the
#: line of Linux 6.1 that defines each (a test reads it, and the module_param of
#: kvm in x86.c or of kvm_intel in vmx/vmx.c): name → (file, line).
MODULE_DEFAULTS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "kvm_intel.ept=1": ("arch/x86/kvm/vmx/vmx.c", "bool __read_mostly enable_ept = 1;"),
    "kvm_intel.unrestricted_guest=1": (
        "arch/x86/kvm/vmx/vmx.c", "bool __read_mostly enable_unrestricted_guest = 1;"),
    "kvm_intel.nested=1": ("arch/x86/kvm/vmx/vmx.c", "static bool __read_mostly nested = 1;"),
    "kvm.enable_vmware_backdoor=0": (
        "arch/x86/kvm/x86.c", "bool __read_mostly enable_vmware_backdoor = false;"),
    "kvm.force_emulation_prefix=0": (
        "arch/x86/kvm/x86.c", "static int __read_mostly force_emulation_prefix;"),
    "kvm_intel.allow_smaller_maxphyaddr=0": (  # module_param in vmx.c; 1 with ept=0
        "arch/x86/kvm/x86.c", "bool __read_mostly allow_smaller_maxphyaddr = 0;"),
})

#: Slots that hold another handler under a non-default host setting: reason →
#: (the setting, that handler, what it can give user space). Read in the source
#: (vmx.c ``handle_vmx_instruction``; vmx/sgx.c ``handle_encls``, built only with
#: ``CONFIG_X86_SGX_KVM``, whose Kconfig says "If unsure, say N"); a test checks
#: the exits named here.
OTHER_HANDLERS: Mapping[VmxExitReason, tuple[str, str, str]] = MappingProxyType({
    **{r: ("kvm_intel.nested=0", "handle_vmx_instruction", "nothing (#UD, every path returns 1)")
       for r in NESTED_VMX_EXIT_HANDLERS},
    _R.ENCLS: ("CONFIG_X86_SGX_KVM=y", "handle_encls of vmx/sgx.c",
               "UNKNOWN (an ENCLS leaf it does not expect), INTERNAL_ERROR (an ECREATE or "
               "EINIT operand with no memory behind it), errno (-ENOMEM, -EINVAL)"),
})

#: With CONFIG_RETPOLINE, ``__vmx_handle_exit`` calls these handlers directly
#: (an if-chain) instead of through the table, to save an indirect call on the
#: most frequent exits. Same handlers, same results.
RETPOLINE_DIRECT: tuple[VmxExitReason, ...] = (
    _R.MSR_WRITE, _R.PREEMPTION_TIMER, _R.INTERRUPT_WINDOW, _R.EXTERNAL_INTERRUPT,
    _R.HLT, _R.EPT_MISCONFIG,
)

#: ``vmx_exit_handlers_fastpath``: exits ``vmx_vcpu_run`` may finish with
#: interrupts still off, before ``__vmx_handle_exit`` (then it returns 1 at once).
#: ``handle_fastpath_set_msr_irqoff`` (x86.c) takes only the x2APIC ICR and
#: IA32_TSC_DEADLINE; every other WRMSR goes the normal way.
FASTPATH: Mapping[VmxExitReason, str] = MappingProxyType({
    _R.MSR_WRITE: "handle_fastpath_set_msr_irqoff",
    _R.PREEMPTION_TIMER: "handle_fastpath_preemption_timer",
})

#: What the ``int`` a handler returns means (x86.c ``vcpu_run``, vmx.c).
RETURN_RULE: Mapping[int, str] = MappingProxyType({
    1: "handled in the kernel: vcpu_run loops and re-enters the guest",
    0: "exit to user space: KVM_RUN returns 0 and kvm_run->exit_reason says why",
    -1: "an error (< 0): KVM_RUN fails with that errno",
})

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


#: ``kvm_vmx_exit_handlers[]`` of arch/x86/kvm/vmx.c in Linux 3.15.5: basic reason →
#: (its EXIT_REASON_* name then, handler). 3.15 had one vmx.c, handlers named
#: ``handle_cpuid``, ``handle_halt``, ``handle_vmcall`` …, reason 7 was called
#: PENDING_INTERRUPT, MWAIT/MONITOR gave #UD (``handle_invalid_op``), and there
#: were no entries for descriptor-table, PML, bus-lock or notify exits.
KVM_VMX_EXIT_HANDLERS_3_15: Mapping[int, tuple[str, str]] = MappingProxyType({
    0: ("EXCEPTION_NMI", "handle_exception"),
    1: ("EXTERNAL_INTERRUPT", "handle_external_interrupt"),
    2: ("TRIPLE_FAULT", "handle_triple_fault"),
    8: ("NMI_WINDOW", "handle_nmi_window"),
    30: ("IO_INSTRUCTION", "handle_io"),
    28: ("CR_ACCESS", "handle_cr"),
    29: ("DR_ACCESS", "handle_dr"),
    10: ("CPUID", "handle_cpuid"),
    31: ("MSR_READ", "handle_rdmsr"),
    32: ("MSR_WRITE", "handle_wrmsr"),
    7: ("PENDING_INTERRUPT", "handle_interrupt_window"),
    12: ("HLT", "handle_halt"),
    13: ("INVD", "handle_invd"),
    14: ("INVLPG", "handle_invlpg"),
    15: ("RDPMC", "handle_rdpmc"),
    18: ("VMCALL", "handle_vmcall"),
    19: ("VMCLEAR", "handle_vmclear"),
    20: ("VMLAUNCH", "handle_vmlaunch"),
    21: ("VMPTRLD", "handle_vmptrld"),
    22: ("VMPTRST", "handle_vmptrst"),
    23: ("VMREAD", "handle_vmread"),
    24: ("VMRESUME", "handle_vmresume"),
    25: ("VMWRITE", "handle_vmwrite"),
    26: ("VMOFF", "handle_vmoff"),
    27: ("VMON", "handle_vmon"),
    43: ("TPR_BELOW_THRESHOLD", "handle_tpr_below_threshold"),
    44: ("APIC_ACCESS", "handle_apic_access"),
    56: ("APIC_WRITE", "handle_apic_write"),
    45: ("EOI_INDUCED", "handle_apic_eoi_induced"),
    54: ("WBINVD", "handle_wbinvd"),
    55: ("XSETBV", "handle_xsetbv"),
    9: ("TASK_SWITCH", "handle_task_switch"),
    41: ("MCE_DURING_VMENTRY", "handle_machine_check"),
    48: ("EPT_VIOLATION", "handle_ept_violation"),
    49: ("EPT_MISCONFIG", "handle_ept_misconfig"),
    40: ("PAUSE_INSTRUCTION", "handle_pause"),
    36: ("MWAIT_INSTRUCTION", "handle_invalid_op"),
    39: ("MONITOR_INSTRUCTION", "handle_invalid_op"),
    50: ("INVEPT", "handle_invept"),
})

#: How the two kernels differ where this book looks (each row read in both trees).
DIFFERENCES_3_15: tuple[tuple[str, str, str], ...] = (
    ("calling the vendor code", "kvm_x86_ops->run(vcpu), kvm_x86_ops->handle_exit(vcpu)",
     "static_call(kvm_x86_vcpu_run)(vcpu), static_call(kvm_x86_handle_exit)(vcpu, fastpath)"),
    ("the run loop", "__vcpu_run: checks signal_pending() and need_resched() itself",
     "vcpu_run: xfer_to_guest_mode_handle_work() does it"),
    ("a halted vCPU", "__vcpu_run calls kvm_vcpu_block itself (no halt polling)",
     "vcpu_block → kvm_vcpu_halt (halt polling) → kvm_vcpu_block"),
    ("an exit with no handler", "KVM_EXIT_UNKNOWN, hw.hardware_exit_reason = the reason",
     "KVM_EXIT_INTERNAL_ERROR, suberror KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON"),
    ("IN / OUT (handle_io)", "only OUT took the fast path (kvm_fast_pio_out), with RIP "
     "advanced first, whoever took the access; IN went through the full instruction emulator",
     "kvm_fast_pio for both; an in-kernel device: RIP advanced at once (kvm_fast_pio); to user "
     "space: RIP advanced on the next KVM_RUN (complete_fast_pio_out/_in), except an OUT to port "
     "0x7e, advanced before the exit (KVM_X86_QUIRK_OUT_7E_INC_RIP, on unless user space "
     "disables it)"),
    ("exits finished with interrupts off", "none (no fastpath in x86.c or vmx.c)",
     "vmx_exit_handlers_fastpath (WRMSR of x2APIC ICR / TSC deadline, preemption timer)"),
)


#: MSR numbers (arch/x86/include/asm/msr-index.h, Linux 6.1) of the MSRs below
MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_EFER = 0xC0000080
MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE = 0xC0000100, 0xC0000101, 0xC0000102

#: MSRs a guest reads / writes *without* a VM exit: ``vmx_vcpu_create`` clears
#: their bits in the MSR bitmap (``vmx_disable_intercept_for_msr``, Linux 6.1,
#: x86-64; the C-state residency MSRs only with ``kvm_cstate_in_guest``, left
#: out here). Every other RDMSR / WRMSR exits with MSR_READ / MSR_WRITE.
MSR_PASSTHROUGH_READ: frozenset[int] = frozenset({
    MSR_IA32_TSC, MSR_FS_BASE, MSR_GS_BASE, MSR_KERNEL_GS_BASE,
    MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP})
MSR_PASSTHROUGH_WRITE: frozenset[int] = MSR_PASSTHROUGH_READ - {MSR_IA32_TSC}


def handler_for(basic: int) -> str | None:
    """The Linux 6.1 handler of a basic exit reason with default settings
    (:data:`DEFAULT_EXIT_HANDLERS`), or None (no table entry)."""
    try:
        return DEFAULT_EXIT_HANDLERS.get(VmxExitReason(basic))
    except ValueError:
        return None


#: 3.15 handlers whose 6.1 successor (with default settings) does something else,
#: not only under another name: reason → (then, now). Read in both trees.
CHANGED_SINCE_3_15: Mapping[int, tuple[str, str]] = MappingProxyType({
    r: ("#UD (handle_invalid_op)", "a NOP (kvm_emulate_as_nop), unless user space disabled "
        "KVM_X86_QUIRK_MWAIT_NEVER_UD_FAULTS and the guest's CPUID has no MWAIT: then #UD")
    for r in (36, 39)})


def compare_3_15() -> dict[str, tuple[tuple[int, str, str, str], ...]]:
    """The 3.15 table against the handlers 6.1 installs by default: "same", "renamed",
    "changed" (:data:`CHANGED_SINCE_3_15`), each ``(reason, 3.15 name, 3.15 handler, 6.1 handler)``."""
    out: dict[str, list[tuple[int, str, str, str]]] = {"same": [], "renamed": [], "changed": []}
    for n, (name, old) in sorted(KVM_VMX_EXIT_HANDLERS_3_15.items()):
        new = handler_for(n) or ""
        how = "changed" if n in CHANGED_SINCE_3_15 else "same" if new == old else "renamed"
        out[how].append((n, name, old, new))
    return {k: tuple(v) for k, v in out.items()}


# --- exit qualifications ------------------------------------------------------------------

_IO_SIZE_BITS = {1: 0, 2: 1, 4: 3}


@dataclass(frozen=True)
class IoQualification:
    """The exit qualification of an IO_INSTRUCTION exit, the bits ``handle_io`` decodes.

    bits 2:0 = size − 1 (0, 1 or 3 for 1, 2, 4 bytes), bit 3 = direction
    (1 = IN), bit 4 = string instruction (INS/OUTS), bits 31:16 = port
    (SDM Vol. 3C "Exit Qualification for I/O Instructions"; vmx.c
    ``handle_io``: ``size = (q & 7) + 1``, ``in = (q & 8) != 0``,
    ``string = (q & 16) != 0``, ``port = q >> 16``). The other bits (REP
    prefix, operand encoding) are not read by KVM and not modelled.
    """

    size: int
    in_: bool
    port: int
    string: bool = False

    def __post_init__(self) -> None:
        if self.size not in _IO_SIZE_BITS:
            raise VmxError(f"an I/O access is 1, 2 or 4 bytes, not {self.size!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) \
                or not 0 <= self.port <= 0xFFFF:
            raise VmxError(f"an I/O port is 16 bits (0..0xffff), got {self.port!r}")

    def encode(self) -> int:
        return (_IO_SIZE_BITS[self.size] | (8 if self.in_ else 0)
                | (16 if self.string else 0) | self.port << 16)

    @classmethod
    def decode(cls, qualification: int) -> IoQualification:
        """Read a qualification the way ``handle_io`` does; refuses what hardware never writes."""
        q = _check_u32(qualification, "an I/O exit qualification")
        size = (q & 7) + 1
        if size not in _IO_SIZE_BITS:
            raise VmxError(f"I/O exit qualification {q:#x}: bits 2:0 = {q & 7} is no access "
                           "size (0, 1 or 3 for 1, 2, 4 bytes)")
        return cls(size, bool(q & 8), q >> 16, bool(q & 16))

    def __str__(self) -> str:
        op = ("INS" if self.in_ else "OUTS") if self.string else ("IN" if self.in_ else "OUT")
        return f"{op} port {self.port:#x} size {self.size}"


def io_qualification(size: int, in_: bool, port: int, string: bool = False) -> int:
    """The exit qualification VMX writes for one IN/OUT (see :class:`IoQualification`)."""
    return IoQualification(size, in_, port, string).encode()


#: EPT-violation qualification bits (SDM "Exit Qualification for EPT Violations";
#: arch/x86/include/asm/vmx.h EPT_VIOLATION_*_BIT, Linux 6.1)
EPT_VIOLATION_ACC_READ = 1 << 0
EPT_VIOLATION_ACC_WRITE = 1 << 1
EPT_VIOLATION_ACC_INSTR = 1 << 2
EPT_VIOLATION_RWX_SHIFT = 3
EPT_VIOLATION_GVA_IS_VALID = 1 << 7
EPT_VIOLATION_GVA_TRANSLATED = 1 << 8


def ept_violation_qualification(access: str, rwx: int = 0, gva_valid: bool = True,
                                translated: bool = True) -> int:
    """The qualification of an EPT violation by a data read ("r"), write ("w") or fetch ("x").

    ``rwx`` is what the EPT entries allowed (bits 2:0 ANDed over the walk; 0 =
    not present, as for a page KVM has not mapped yet).
    """
    acc = {"r": EPT_VIOLATION_ACC_READ, "w": EPT_VIOLATION_ACC_WRITE,
           "x": EPT_VIOLATION_ACC_INSTR}.get(access)
    if acc is None:
        raise VmxError(f"access must be 'r', 'w' or 'x', got {access!r}")
    if not 0 <= rwx <= 7:
        raise VmxError(f"rwx is 3 bits (0..7), got {rwx!r}")
    return (acc | rwx << EPT_VIOLATION_RWX_SHIFT | (EPT_VIOLATION_GVA_IS_VALID if gva_valid else 0)
            | (EPT_VIOLATION_GVA_TRANSLATED if translated else 0))


__all__ = [
    "BASIC_EXIT_REASON_MASK", "CHANGED_SINCE_3_15", "CONFIG", "DEBUG", "DEBUG_OR_ERROR",
    "DEFAULT_EXIT_HANDLERS", "DEPENDS", "DIFFERENCES_3_15", "ERROR", "FASTPATH", "KERNEL",
    "KVM_VMX_EXIT_HANDLERS", "KVM_VMX_EXIT_HANDLERS_3_15", "KVM_VMX_MAX_EXIT_HANDLERS",
    "MODULE_DEFAULTS", "MSR_PASSTHROUGH_READ", "MSR_PASSTHROUGH_WRITE", "NESTED_VMX_EXIT_HANDLERS",
    "NORMAL", "OTHER_HANDLERS", "RETPOLINE_DIRECT", "RETURNS", "RETURN_RULE", "SOURCE_FILES",
    "USER", "USER_SPACE", "VMCS_FIELDS", "VMX_EXIT_REASONS_FAILED_VMENTRY",
    "VMX_EXIT_REASONS_SGX_ENCLAVE_MODE", "ExitPath", "IoQualification", "Passes", "Return",
    "VmxError", "VmxExitReason", "basic_exit_reason", "compare_3_15", "config_exits",
    "describe_reason", "ept_violation_qualification", "exit_paths", "failed_vmentry",
    "handler_for", "io_qualification", "reason_name", "user_exits", "user_space_table",
]
