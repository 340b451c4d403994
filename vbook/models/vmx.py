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
against the kernel source by a test — these live in
:mod:`vbook.models.vmx_returns` and are found here too), which reasons can
therefore reach user space (:data:`USER_SPACE`, derived from them), the 3.15 table for comparison
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


#: the return paths of the handlers live in vbook/models/vmx_returns.py (their own
#: idea, and most of the data); the names it exports are still found here (PEP 562)
def __getattr__(name: str):
    from vbook.models import vmx_returns  # not at the top: it imports this module

    if name in vmx_returns.__all__:
        return getattr(vmx_returns, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BASIC_EXIT_REASON_MASK", "CHANGED_SINCE_3_15", "DEFAULT_EXIT_HANDLERS", "DIFFERENCES_3_15",
    "FASTPATH", "IoQualification", "KVM_VMX_EXIT_HANDLERS", "KVM_VMX_EXIT_HANDLERS_3_15",
    "KVM_VMX_MAX_EXIT_HANDLERS", "MODULE_DEFAULTS", "MSR_PASSTHROUGH_READ",
    "MSR_PASSTHROUGH_WRITE", "NESTED_VMX_EXIT_HANDLERS", "OTHER_HANDLERS", "RETPOLINE_DIRECT",
    "RETURN_RULE", "VMCS_FIELDS", "VMX_EXIT_REASONS_FAILED_VMENTRY",
    "VMX_EXIT_REASONS_SGX_ENCLAVE_MODE", "VmxError", "VmxExitReason", "basic_exit_reason",
    "compare_3_15", "describe_reason", "ept_violation_qualification", "failed_vmentry",
    "handler_for", "io_qualification", "reason_name",
]
