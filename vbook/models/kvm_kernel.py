"""The kernel side of ``KVM_RUN``: from the ioctl down to an exit handler and back (Linux 6.1, VMX).

User space calls ``ioctl(vcpu_fd, KVM_RUN)``; inside the kernel that call
runs a loop of its own, and most VM exits never leave it::

    kvm_vcpu_ioctl (KVM_RUN)                         virt/kvm/kvm_main.c
      kvm_arch_vcpu_ioctl_run                        arch/x86/kvm/x86.c
        complete_userspace_io (finish the last exit, if one is pending)
        vcpu_run: for (;;)
          vcpu_enter_guest                           (or vcpu_block, if halted)
            vmx_vcpu_run → __vmx_vcpu_run: VMLAUNCH/VMRESUME … VM exit
            vmx_handle_exit_irqoff
            vmx_handle_exit → __vmx_handle_exit → kvm_vmx_exit_handlers[basic reason]
          returns 1: loop, enter the guest again    (the exit stayed in the kernel)
          returns 0: leave the loop; KVM_RUN returns 0 with kvm_run->exit_reason

This module walks that path for a sequence of VM exits — the exits a
guest's instructions cause, as the unicorn backend records them
(:attr:`vbook.backends.unicorn_cpu.UnicornVcpu.kernel_exits`) or written by
hand with :class:`VmExit` — and decides for each what Linux 6.1 does: which
handler runs (:data:`vbook.models.vmx.KVM_VMX_EXIT_HANDLERS`), what it calls,
whether it returns 1 or 0, and which ``KVM_EXIT_*`` user space then sees.
Every step is an event of a :class:`~vbook.trace.Trace` (actor ``kvm``, the
kernel function's name as label, its call depth), between user space's
``KVM_RUN`` calls (actor ``qemu``) and the guest's runs (actor ``guest``).

The configuration switches that move exits between kernel and user space are
a :class:`KvmConfig`:

* ``irqchip`` — ``KVM_CREATE_IRQCHIP``: the local APIC is in the kernel, so
  ``HLT`` makes the vCPU sleep in ``vcpu_block`` → ``kvm_vcpu_halt`` →
  ``kvm_vcpu_block`` instead of returning ``KVM_EXIT_HLT``; the LAPIC's
  register page (0xfee00000, 4 KiB: ``vcpu_mmio_write``/``vcpu_mmio_read`` ask
  it before ``KVM_MMIO_BUS``, lapic.c), the PIC (ports 0x20–0x21, 0xa0–0xa1,
  0x4d0–0x4d1 on ``KVM_PIO_BUS``, i8259.c) and the IOAPIC (0xfec00000, 0x100
  bytes on ``KVM_MMIO_BUS``, ioapic.c) answer in the kernel; a ``MOV`` to CR8
  that lowers the TPR returns ``KVM_EXIT_SET_TPR`` only without it. The LAPIC
  is modelled as after reset: enabled, xAPIC mode, at its default base (a
  guest that moves it, or switches to x2APIC, is not);
* ``pit`` — ``KVM_CREATE_PIT2``: the i8254 PIT answers ports 0x40–0x43 on
  ``KVM_PIO_BUS`` in the kernel (i8254.c ``kvm_create_pit``; the speaker port
  0x61 only with ``KVM_PIT_SPEAKER_DUMMY``, which QEMU does not pass);
* ``ioeventfds`` — ``KVM_IOEVENTFD``: a write to that port or address signals
  an eventfd in the kernel (``ioeventfd_write``, virt/kvm/eventfd.c) and
  never reaches user space; an MMIO ioeventfd of length 0 also sits on
  ``KVM_FAST_MMIO_BUS``, which ``handle_ept_misconfig`` checks before any
  instruction emulation;
* ``hypercall_exit_enabled`` — ``KVM_CAP_EXIT_HYPERCALL``: ``KVM_HC_MAP_GPA_RANGE``
  goes to user space (:mod:`vbook.models.hypercall`);
* ``disabled_quirks`` — ``KVM_CAP_DISABLE_QUIRKS``: every quirk is on until user
  space disables it; the one modelled is ``KVM_X86_QUIRK_OUT_7E_INC_RIP`` (an OUT to
  port 0x7e that goes to user space has RIP past it already).

Not modelled: what makes exits asynchronous (host interrupts, the
preemption timer, signals, requests from other vCPUs), nested VMX, user-space
MSR exits, the split irqchip, guest debugging (``KVM_SET_GUEST_DEBUG``), the
APIC-access page (on VMX hardware with "virtualize APIC accesses" an access to
the LAPIC page is an APIC_ACCESS exit; here it is the EPT exit of a host
without it, answered by the same ``apic_mmio_*``) and
the failure paths of the handlers — :func:`vbook.models.vmx.exit_paths` lists
them all; here a handler whose only ways to user space are those
(``vmx.USER_SPACE`` "debug/error") returns 1. An exit reason with no handler
in the table ends, as in ``__vmx_handle_exit``, with ``KVM_EXIT_INTERNAL_ERROR`` /
``KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON`` (its number and name kept); a
handled reason whose handler this model does not simulate raises
:class:`KernelModelError` naming it.

Read in the v6.1-rc7 tree (krr-io/linux-6.1.0, commit 7c210bc38):
virt/kvm/kvm_main.c, virt/kvm/eventfd.c, arch/x86/kvm/x86.c, cpuid.c,
mmu/mmu.c, i8259.c, i8254.c, ioapic.c, lapic.c, vmx/vmx.c, vmx/nested.c. Pure and deterministic;
nothing is printed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import Any

from vbook.errors import VbookError
from vbook.models import vmx
from vbook.models.hypercall import PvFeature, kvm_emulate_hypercall
from vbook.models.kvm_api import ExitReason
from vbook.models.vmx import VmxExitReason as R
from vbook.trace import Trace, TraceRecorder


class KernelModelError(VbookError):
    """Input the kernel model cannot walk (a malformed VM exit, a handler it does not simulate)."""


class KvmInternalError(IntEnum):
    """``KVM_INTERNAL_ERROR_*`` — include/uapi/linux/kvm.h (Linux 6.1): ``kvm_run.internal.suberror``."""

    EMULATION = 1
    SIMUL_EX = 2
    DELIVERY_EV = 3
    UNEXPECTED_EXIT_REASON = 4


#: Where each function of the path lives (Linux 6.1).
FILES: Mapping[str, str] = MappingProxyType({
    **{f: "virt/kvm/kvm_main.c" for f in (
        "kvm_vcpu_ioctl", "kvm_io_bus_write", "kvm_io_bus_read", "kvm_vcpu_halt",
        "kvm_vcpu_block")},
    **{f: "arch/x86/kvm/x86.c" for f in (
        "kvm_arch_vcpu_ioctl_run", "vcpu_run", "vcpu_enter_guest", "vcpu_block",
        "kvm_fast_pio", "kvm_fast_pio_out", "kvm_fast_pio_in", "emulator_pio_out",
        "emulator_pio_in", "emulator_pio_in_out",
        "complete_fast_pio_out", "complete_fast_pio_out_port_0x7e", "complete_fast_pio_in",
        "complete_emulated_mmio",
        "complete_emulated_pio", "complete_hypercall_exit", "kvm_skip_emulated_instruction",
        "kvm_emulate_halt", "__kvm_emulate_halt", "kvm_emulate_instruction",
        "x86_emulate_instruction", "emulator_read_write", "vcpu_mmio_write", "vcpu_mmio_read",
        "kvm_emulate_hypercall", "kvm_emulate_rdmsr", "kvm_emulate_wrmsr",
        "kvm_get_msr_with_filter", "kvm_set_msr_with_filter", "handle_fastpath_set_msr_irqoff",
        "handle_ud", "kvm_queue_exception", "emulator_fix_hypercall", "kvm_complete_insn_gp",
        "kvm_set_cr3", "kvm_set_cr8", "kvm_lmsw")},
    **{f: "arch/x86/kvm/x86.c" for f in vmx.KVM_VMX_EXIT_HANDLERS.values()
       if f.startswith("kvm_")},
    **{f: "arch/x86/kvm/vmx/vmx.c" for f in (
        "vmx_vcpu_run", "vmx_exit_handlers_fastpath", "vmx_handle_exit_irqoff",
        "vmx_handle_exit", "__vmx_handle_exit", "handle_set_cr0", "handle_set_cr4",
        *(f for f in vmx.KVM_VMX_EXIT_HANDLERS.values() if f.startswith("handle_")))},
    **{f: "arch/x86/kvm/vmx/nested.c" for f in vmx.NESTED_VMX_EXIT_HANDLERS.values()},
    "__vmx_vcpu_run": "arch/x86/kvm/vmx/vmenter.S",
    "kvm_emulate_cpuid": "arch/x86/kvm/cpuid.c",
    "kvm_cpuid": "arch/x86/kvm/cpuid.c",
    "kvm_emulate_hypercall": "arch/x86/kvm/x86.c",
    "kvm_mmu_page_fault": "arch/x86/kvm/mmu/mmu.c",
    "kvm_mmu_do_page_fault": "arch/x86/kvm/mmu/mmu_internal.h",
    "handle_mmio_page_fault": "arch/x86/kvm/mmu/mmu.c",
    "ioeventfd_write": "virt/kvm/eventfd.c",
    **{f"picdev_{d}_{rw}": "arch/x86/kvm/i8259.c"
       for d in ("master", "slave", "elcr") for rw in ("read", "write")},
    "pit_ioport_write": "arch/x86/kvm/i8254.c",
    "pit_ioport_read": "arch/x86/kvm/i8254.c",
    "ioapic_mmio_write": "arch/x86/kvm/ioapic.c",
    "ioapic_mmio_read": "arch/x86/kvm/ioapic.c",
    "apic_mmio_write": "arch/x86/kvm/lapic.c",
    "apic_mmio_read": "arch/x86/kvm/lapic.c",
})

#: user space's side of each user exit: what QEMU 9.2.4's ``kvm_cpu_exec`` calls
#: (accel/kvm/kvm-all.c; HLT via target/i386/kvm/kvm.c ``kvm_arch_handle_exit``)
QEMU_HANDLERS: Mapping[ExitReason, str] = MappingProxyType({
    ExitReason.IO: "kvm_handle_io",
    ExitReason.MMIO: "address_space_rw",
    ExitReason.SHUTDOWN: "qemu_system_reset_request",
    ExitReason.INTERNAL_ERROR: "kvm_handle_internal_error",
    ExitReason.HLT: "kvm_arch_handle_exit → kvm_handle_halt",
    ExitReason.HYPERCALL: "kvm_arch_handle_exit",
    ExitReason.FAIL_ENTRY: "kvm_arch_handle_exit",
})

#: exits after which user space stops running the vCPU (the guest is done)
FINAL = {ExitReason.HLT: "hlt", ExitReason.SHUTDOWN: "shutdown",
         ExitReason.INTERNAL_ERROR: "internal_error", ExitReason.FAIL_ENTRY: "fail_entry",
         ExitReason.UNKNOWN: "unknown"}

#: the KVM_PIO_BUS devices of KVM_CREATE_IRQCHIP (i8259.c ``kvm_pic_init``):
#: (first port, ports, name, the ``picdev_*`` functions that answer)
PIC_PORTS: tuple[tuple[int, int, str, str], ...] = (
    (0x20, 2, "i8259 PIC (master)", "picdev_master"),
    (0xA0, 2, "i8259 PIC (slave)", "picdev_slave"),
    (0x4D0, 2, "i8259 ELCR", "picdev_elcr"))
#: the KVM_PIO_BUS device of KVM_CREATE_PIT2 (i8254.c ``kvm_create_pit``:
#: KVM_PIT_BASE_ADDRESS 0x40, KVM_PIT_MEM_LENGTH 4), same shape as PIC_PORTS
PIT_PORTS: tuple[tuple[int, int, str, str], ...] = ((0x40, 4, "i8254 PIT", "pit_ioport"),)
IOAPIC_BASE, IOAPIC_LEN = 0xFEC00000, 0x100
#: the in-kernel LAPIC's register page: APIC_DEFAULT_PHYS_BASE (asm/apicdef.h), where
#: kvm_lapic_reset puts it, and LAPIC_MMIO_LENGTH (lapic.c ``apic_mmio_in_range``)
APIC_DEFAULT_PHYS_BASE, LAPIC_MMIO_LENGTH = 0xFEE00000, 1 << 12
#: ``KVM_X86_QUIRK_OUT_7E_INC_RIP`` — arch/x86/include/uapi/asm/kvm.h (Linux 6.1)
KVM_X86_QUIRK_OUT_7E_INC_RIP = 1 << 3

_U32 = 2**32 - 1


# --- the configuration -------------------------------------------------------------------

@dataclass(frozen=True)
class Ioeventfd:
    """One ``KVM_IOEVENTFD``: a write to ``addr`` (a port if ``pio``) signals an eventfd.

    ``len`` 0 matches any access size, otherwise only that size; ``datamatch``
    (``KVM_IOEVENTFD_FLAG_DATAMATCH``) only that value — virt/kvm/eventfd.c
    ``ioeventfd_in_range``. Reads are never taken (an ioeventfd has no read).
    """

    addr: int
    len: int = 0
    pio: bool = False
    datamatch: int | None = None

    def __post_init__(self) -> None:
        if self.len not in (0, 1, 2, 4, 8):
            raise KernelModelError(f"KVM_IOEVENTFD len must be 0, 1, 2, 4 or 8 (eventfd.c "
                                   f"kvm_assign_ioeventfd: -EINVAL), got {self.len!r}")
        if not self.len and self.datamatch is not None:
            raise KernelModelError("KVM_IOEVENTFD: len 0 cannot have a datamatch "
                                   "(kvm_assign_ioeventfd: -EINVAL)")
        limit = 0xFFFF if self.pio else 2**64 - 1
        if isinstance(self.addr, bool) or not isinstance(self.addr, int) \
                or not 0 <= self.addr <= limit:
            what = "port (0..0xffff)" if self.pio else "guest-physical address"
            raise KernelModelError(f"ioeventfd addr must be a {what}, got {self.addr!r}")

    def matches(self, addr: int, size: int, value: int | None) -> bool:
        """``ioeventfd_in_range``: exact address, size (unless 0) and datamatch (if set)."""
        if addr != self.addr:
            return False
        if not self.len:
            return True
        if size != self.len:
            return False
        return self.datamatch is None or value == self.datamatch

    def __str__(self) -> str:
        where = f"port {self.addr:#x}" if self.pio else f"address {self.addr:#x}"
        size = f", len {self.len}" if self.len else ""
        match = f", datamatch {self.datamatch:#x}" if self.datamatch is not None else ""
        return f"ioeventfd on {where}{size}{match}"


@dataclass(frozen=True)
class KvmConfig:
    """What user space set up before ``KVM_RUN``: the switches that decide where exits go.

    ``ioeventfds`` takes :class:`Ioeventfd` objects or plain port numbers
    (a PIO ioeventfd of any size). ``hypercall_exit_enabled`` is the
    ``KVM_CAP_EXIT_HYPERCALL`` mask (bit 12: ``KVM_HC_MAP_GPA_RANGE``);
    ``pit`` is ``KVM_CREATE_PIT2``; ``disabled_quirks`` the mask of
    ``KVM_CAP_DISABLE_QUIRKS`` (``kvm->arch.disabled_quirks``). The default is a
    bare VM as vbook's backends make it: nothing in the kernel, every port and
    MMIO access and HLT goes to user space.
    """

    irqchip: bool = False
    ioeventfds: tuple[Ioeventfd, ...] = ()
    hypercall_exit_enabled: int = 0
    pit: bool = False
    disabled_quirks: int = 0

    def __post_init__(self) -> None:
        evs = []
        for ev in self.ioeventfds:
            if isinstance(ev, Ioeventfd):
                evs.append(ev)
            elif isinstance(ev, int) and not isinstance(ev, bool):
                evs.append(Ioeventfd(ev, pio=True))
            else:
                raise KernelModelError(f"ioeventfds: expected an Ioeventfd or a port number, "
                                       f"got {ev!r}")
        object.__setattr__(self, "ioeventfds", tuple(evs))
        for name in ("hypercall_exit_enabled", "disabled_quirks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise KernelModelError(f"{name} must be a non-negative mask, got {v!r}")

    def has_quirk(self, quirk: int) -> bool:
        """x86.h ``kvm_check_has_quirk``: a quirk is on unless user space disabled it."""
        return not self.disabled_quirks & quirk

    @classmethod
    def qemu(cls, ioeventfds: Iterable[Ioeventfd | int] = ()) -> KvmConfig:
        """Like QEMU 9.2.4 with ``kernel-irqchip=on``: in-kernel irqchip and PIT, these ioeventfds.

        QEMU creates the PIT in the kernel whenever ``kvm_pit_in_kernel()``
        (kernel irqchip, not split) and the machine's ``pit`` is on or auto:
        hw/i386/pc.c ``pc_basic_device_init`` → ``kvm_pit_init`` →
        hw/i386/kvm/i8254.c ``kvm_pit_realizefn`` → ``KVM_CREATE_PIT2`` (flags 0).
        """
        return cls(irqchip=True, ioeventfds=tuple(ioeventfds), pit=True)

    def pio_device(self, port: int, size: int, is_write: bool, value: int | None) -> str | None:
        """The in-kernel device on ``KVM_PIO_BUS`` that takes this access, or None."""
        if is_write:
            for ev in self.ioeventfds:
                if ev.pio and ev.matches(port, size, value):
                    return str(ev)
        devices = (PIC_PORTS if self.irqchip else ()) + (PIT_PORTS if self.pit else ())
        for base, length, name, _ in devices:
            if base <= port and port + size <= base + length:
                return name
        return None

    def mmio_device(self, gpa: int, size: int, is_write: bool, value: int | None) -> str | None:
        """The in-kernel device that takes this access, or None: the local APIC first
        (``vcpu_mmio_write``/``read`` try ``vcpu->arch.apic->dev`` when
        ``lapic_in_kernel``), then ``KVM_MMIO_BUS``."""
        if self.irqchip and APIC_DEFAULT_PHYS_BASE <= gpa < APIC_DEFAULT_PHYS_BASE + \
                LAPIC_MMIO_LENGTH:
            return "local APIC"
        if is_write:
            for ev in self.ioeventfds:
                if not ev.pio and ev.matches(gpa, size, value):
                    return str(ev)
        if self.irqchip and IOAPIC_BASE <= gpa and gpa + size <= IOAPIC_BASE + IOAPIC_LEN:
            return "IOAPIC"
        return None

    def fast_mmio(self, gpa: int) -> Ioeventfd | None:
        """An MMIO ioeventfd of length 0 at ``gpa`` (also on ``KVM_FAST_MMIO_BUS``)."""
        for ev in self.ioeventfds:
            if not ev.pio and ev.len == 0 and ev.addr == gpa:
                return ev
        return None

    def describe(self) -> str:
        parts = ["in-kernel irqchip" if self.irqchip else "no in-kernel irqchip"]
        if self.pit:
            parts.append("in-kernel PIT")
        parts += [str(ev) for ev in self.ioeventfds]
        if self.hypercall_exit_enabled:
            parts.append(f"KVM_CAP_EXIT_HYPERCALL {self.hypercall_exit_enabled:#x}")
        if self.disabled_quirks:
            parts.append(f"KVM_CAP_DISABLE_QUIRKS {self.disabled_quirks:#x}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"irqchip": self.irqchip,
                "ioeventfds": [{"addr": e.addr, "len": e.len, "pio": e.pio,
                                "datamatch": e.datamatch} for e in self.ioeventfds],
                "hypercall_exit_enabled": self.hypercall_exit_enabled, "pit": self.pit,
                "disabled_quirks": self.disabled_quirks}


# --- CPUID: the table KVM answers from ---------------------------------------------------

#: ``KVM_SIGNATURE`` "KVMKVMKVM\\0\\0\\0" (arch/x86/include/uapi/asm/kvm_para.h) as CPUID
#: 0x40000000 returns it in EBX, ECX, EDX (cpuid.c, case ``KVM_CPUID_SIGNATURE``)
KVM_CPUID_SIGNATURE = 0x40000000
KVM_CPUID_FEATURES = 0x40000001
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"


@dataclass(frozen=True)
class CpuidEntry:
    """One ``struct kvm_cpuid_entry2``; ``index`` None: the subleaf (ECX) does not matter."""

    function: int
    index: int | None
    eax: int
    ebx: int
    ecx: int
    edx: int


def _le32(b: bytes) -> tuple[int, ...]:
    return tuple(int.from_bytes(b[i:i + 4], "little") for i in range(0, len(b), 4))


# CPUID.1:EDX bits (SDM; QEMU 9.2.4 target/i386/cpu.h CPUID_*): QEMU's PPRO_FEATURES
_PPRO_EDX = sum(1 << b for b in (0, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 15, 16, 23, 24, 25, 26))
_HYPERVISOR_ECX = 1 << 31  # CPUID.1:ECX.HYPERVISOR: "running under a hypervisor"
_EXT_EDX = (1 << 11) | (1 << 20) | (1 << 29)  # CPUID.80000001:EDX SYSCALL, NX, LM

#: CPUID.40000001:EAX as KVM_GET_SUPPORTED_CPUID reports it (cpuid.c, Linux 6.1,
#: case ``KVM_CPUID_FEATURES``, with ``sched_info_on()`` so STEAL_TIME is set)
KVM_SUPPORTED_PV_FEATURES: int = sum(1 << int(f) for f in (
    PvFeature.CLOCKSOURCE, PvFeature.NOP_IO_DELAY, PvFeature.CLOCKSOURCE2, PvFeature.ASYNC_PF,
    PvFeature.PV_EOI, PvFeature.CLOCKSOURCE_STABLE_BIT, PvFeature.PV_UNHALT,
    PvFeature.PV_TLB_FLUSH, PvFeature.ASYNC_PF_VMEXIT, PvFeature.PV_SEND_IPI,
    PvFeature.POLL_CONTROL, PvFeature.PV_SCHED_YIELD, PvFeature.ASYNC_PF_INT,
    PvFeature.STEAL_TIME))

#: The CPUID table of vbook's model vCPU — what ``KVM_SET_CPUID2`` would have set.
#: Real KVM answers from whatever table the VMM gave it (vbook's KVM backend
#: passes the host's ``KVM_GET_SUPPORTED_CPUID``), so real values differ by host;
#: this one is fixed so that runs are deterministic. It is not any real CPU:
#: vendor "GenuineIntel" (this chapter models VMX), max basic leaf 1, family 6;
#: leaf 1 EDX = QEMU's ``PPRO_FEATURES``, ECX = only the hypervisor bit; KVM's
#: own leaves 0x40000000 (signature) and 0x40000001 (PV features, above) as KVM
#: reports them; 0x80000001 EDX = SYSCALL, NX, LM (so a guest may enter long mode).
CPUID_TABLE: tuple[CpuidEntry, ...] = (
    CpuidEntry(0x0, None, 0x1, *_le32(b"GenuntelineI")),
    CpuidEntry(0x1, None, 0x00000600, 0, _HYPERVISOR_ECX, _PPRO_EDX),
    CpuidEntry(KVM_CPUID_SIGNATURE, None, KVM_CPUID_FEATURES, *_le32(KVM_SIGNATURE)),
    CpuidEntry(KVM_CPUID_FEATURES, None, KVM_SUPPORTED_PV_FEATURES, 0, 0, 0),
    CpuidEntry(0x80000000, None, 0x80000001, 0, 0, 0),
    CpuidEntry(0x80000001, None, 0, 0, 0, _EXT_EDX),
)


def _find(table: Sequence[CpuidEntry], function: int, index: int) -> CpuidEntry | None:
    """``kvm_find_cpuid_entry_index``: same function, and same index if it is significant."""
    for e in table:
        if e.function == function and (e.index is None or e.index == index):
            return e
    return None


def kvm_cpuid(eax: int, ecx: int = 0, table: Sequence[CpuidEntry] = CPUID_TABLE
              ) -> tuple[int, int, int, int]:
    """arch/x86/kvm/cpuid.c ``kvm_cpuid`` (Linux 6.1): EAX, EBX, ECX, EDX for leaf ``eax``.

    An entry in the table answers exactly. Otherwise, for an Intel guest
    (``get_out_of_range_cpuid_entry``): a leaf above the maximum of its class
    (basic, 0x4000xxxx, 0x8000xxxx, 0xc000xxxx) gets the *maximum basic leaf's*
    entry, with the original subleaf; a leaf inside its class range but not in
    the table gets zeros. (The 0xb/0x1f x2APIC special case and the TSX_CTRL
    masking of leaf 7 are not modelled: the table has neither leaf.)
    """
    function, index = eax & _U32, ecx & _U32
    entry = _find(table, function, index)
    if entry is None:
        basic = _find(table, 0, 0)
        amd = basic is not None and (basic.ebx, basic.edx, basic.ecx) in (
            _le32(b"AuthenticAMD"), _le32(b"HygonGenuine"))
        if basic is not None and not amd:
            if 0x40000000 <= function <= 0x4FFFFFFF:
                cls = _find(table, function & 0xFFFFFF00, 0)
            elif function >= 0xC0000000:
                cls = _find(table, 0xC0000000, 0)
            else:
                cls = _find(table, function & 0x80000000, 0)
            if not (cls is not None and function <= cls.eax):
                entry = _find(table, basic.eax, index)
    if entry is None:
        return (0, 0, 0, 0)
    return (entry.eax, entry.ebx, entry.ecx, entry.edx)


# --- the input: VM exits -----------------------------------------------------------------

@dataclass(frozen=True)
class VmExit:
    """One VM exit as the kernel sees it: what VMX reported, plus what the handler reads.

    ``exit_reason`` is the full VM_EXIT_REASON (basic reason in bits 15:0, bit 31
    a failed VM entry); ``qualification`` the EXIT_QUALIFICATION (for I/O:
    :class:`vbook.models.vmx.IoQualification`); ``gpa`` the GUEST_PHYSICAL_ADDRESS
    of an EPT exit. ``before`` holds what the handler reads from the guest:
    ``data`` (hex) of an OUT, ``count`` of string I/O, ``accesses`` of an
    MMIO instruction (each a mapping gpa/len/is_write/data), ``eax``/``ecx`` of
    CPUID, ``rax``…``rsi``, ``cpl``, ``longmode`` of VMCALL, ``ecx`` (and
    ``eax``/``edx``) of RDMSR/WRMSR, ``vector`` of an exception, ``value``
    and ``cr8`` (the TPR before) of a MOV to a control register.

    :class:`vbook.backends.unicorn_cpu.KernelExit` has the same attributes, so
    the unicorn backend's records can be walked directly.
    """

    exit_reason: int
    rip: int = 0
    qualification: int = 0
    gpa: int | None = None
    before: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "before", MappingProxyType(dict(self.before)))

    @classmethod
    def io(cls, port: int, size: int = 1, *, in_: bool = False, data: bytes = b"",
           rip: int = 0) -> VmExit:
        """An IN or OUT (``data``: the bytes an OUT writes, ``size`` of them)."""
        q = vmx.io_qualification(size, in_, port)
        if not in_ and len(data) != size:
            raise KernelModelError(f"an OUT of size {size} writes {size} bytes, got {data!r}")
        return cls(R.IO_INSTRUCTION, rip, q, None, {"data": bytes(data).hex()} if not in_ else {})

    @classmethod
    def cpuid(cls, eax: int, ecx: int = 0, rip: int = 0) -> VmExit:
        return cls(R.CPUID, rip, 0, None, {"eax": eax, "ecx": ecx})

    @classmethod
    def mov_to_cr(cls, cr: int, value: int, *, cr8: int = 0, rip: int = 0) -> VmExit:
        """``MOV CRn, RAX`` (``cr8``: the TPR before, what ``handle_cr`` compares with)."""
        if cr not in range(16):
            raise KernelModelError(f"a control register is 0..15, got {cr!r}")
        return cls(R.CR_ACCESS, rip, cr, None, {"value": value, "cr8": cr8})

    @classmethod
    def hlt(cls, rip: int = 0) -> VmExit:
        return cls(R.HLT, rip)

    @classmethod
    def mmio(cls, gpa: int, size: int, *, is_write: bool, data: bytes = b"", first: bool = False,
             rip: int = 0) -> VmExit:
        """An access to an address with no memory slot (``first``: KVM has no MMIO SPTE yet,
        so the CPU reports an EPT violation; afterwards an EPT misconfiguration)."""
        access = {"gpa": gpa, "len": size, "is_write": is_write,
                  "data": bytes(data).hex() if is_write else ""}
        if first:
            q = vmx.ept_violation_qualification("w" if is_write else "r")
            return cls(R.EPT_VIOLATION, rip, q, gpa, {"accesses": [access]})
        return cls(R.EPT_MISCONFIG, rip, 0, gpa, {"accesses": [access]})


def as_vm_exit(x: Any) -> VmExit:
    """A :class:`VmExit` from anything with ``exit_reason``, ``rip``, ``qualification``,
    ``gpa``, ``before`` (a unicorn ``KernelExit``), or a mapping with those keys."""
    if isinstance(x, VmExit):
        return x
    get = x.get if isinstance(x, Mapping) else (lambda k, d=None: getattr(x, k, d))
    reason = get("exit_reason")
    if isinstance(reason, bool) or not isinstance(reason, int) or not 0 <= reason <= _U32:
        raise KernelModelError(f"a VM exit needs exit_reason, a 32-bit number; got {reason!r} "
                               f"in {x!r}")
    return VmExit(reason, get("rip", 0) or 0, get("qualification", 0) or 0, get("gpa"),
                  get("before", {}) or {})


# --- the output: what user space sees, and what the kernel did ----------------------------

@dataclass(frozen=True)
class UserExit:
    """One return of ``KVM_RUN`` to user space: ``kvm_run.exit_reason`` and its union fields.

    :meth:`to_dict` and ``str()`` have the shape of
    :class:`vbook.backends.base.Exit`, so the model's answer can be compared
    with what a backend really returned.
    """

    reason: ExitReason
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason.name, **self.fields}

    def __str__(self) -> str:
        f = self.fields
        if self.reason == ExitReason.IO:
            s = f"IO {f['direction']} port={f['port']:#x} size={f['size']} count={f['count']}"
            return s + (f" data={f['data']}" if f["data"] else "")
        if self.reason == ExitReason.MMIO:
            rw = "write" if f["is_write"] else "read"
            s = f"MMIO {rw} addr={f['phys_addr']:#x} len={f['len']}"
            return s + (f" data={f['data']}" if f["data"] else "")
        if self.reason == ExitReason.HYPERCALL:
            return f"HYPERCALL nr={f['nr']} args={list(f['args'])}"
        return self.reason.name + (f" ({f['detail']})" if f.get("detail") else "")


@dataclass(frozen=True)
class ExitStep:
    """How the kernel handled one VM exit.

    ``handler`` is the entry of ``kvm_vmx_exit_handlers`` (None: no entry),
    ``calls`` the functions it went through, ``ret`` what the handler returned
    (1 re-enter, 0 to user space), ``where`` "kernel", "user" or "blocked" (a
    HLT that put the vCPU to sleep in the kernel), ``user_exits`` the
    ``KVM_RUN`` returns it led to (an MMIO instruction can need several).
    """

    index: int
    exit_reason: int
    name: str
    rip: int
    handler: str | None
    calls: tuple[str, ...]
    ret: int
    where: str
    user_exits: tuple[UserExit, ...] = ()
    note: str = ""

    def __str__(self) -> str:
        dest = ", ".join(f"KVM_EXIT_{u.reason.name}" for u in self.user_exits) or {
            "kernel": "stays in the kernel", "blocked": "vCPU sleeps in the kernel"}.get(
            self.where, self.where)
        return (f"{self.index + 1:>3}  {self.rip:<#8x} {self.name:<16} "
                f"{self.handler or '(no handler)':<26} returns {self.ret}  → {dest}")


@dataclass(frozen=True)
class RoundTrip:
    """What one VM exit cost in steps, from the exit to the next VM entry.

    ``kernel_calls`` kernel functions entered, ``kvm_run_returns`` times
    ``KVM_RUN`` returned to user space (each one a return to user mode and a
    new ``ioctl`` into the kernel), ``user_steps`` exits user space handled.
    Counts, not times: what the time is, is measured on a real host.
    """

    index: int
    name: str
    where: str
    kernel_calls: int
    kvm_run_returns: int
    user_steps: int


@dataclass(frozen=True)
class KernelRun:
    """The whole walk: each VM exit's :class:`ExitStep`, the user exits in order, the trace.

    ``end`` is how it ended: "hlt", "shutdown", "internal_error", "fail_entry",
    "unknown" (user space stops), "blocked" (the vCPU sleeps in the kernel;
    user space never hears of it), or "running" (the VM exits ran out first).
    ``unreached`` counts VM exits after the end that never happened.
    """

    steps: tuple[ExitStep, ...]
    user_exits: tuple[UserExit, ...]
    end: str
    config: KvmConfig
    trace: Trace
    unreached: int = 0

    def counts(self) -> dict[str, int]:
        """VM exits by where they ended: kernel, user, blocked."""
        out = {"kernel": 0, "user": 0, "blocked": 0}
        for s in self.steps:
            out[s.where] += 1
        return out

    def by_reason(self) -> dict[str, dict[str, int]]:
        """VM exits per basic reason name, split by where they ended."""
        out: dict[str, dict[str, int]] = {}
        for s in self.steps:
            d = out.setdefault(s.name, {"kernel": 0, "user": 0, "blocked": 0})
            d[s.where] += 1
        return out

    def round_trips(self) -> tuple[RoundTrip, ...]:
        """For each VM exit, what happened between it and the next VM entry (from the trace)."""
        events = self.trace.events
        starts = [i for i, e in enumerate(events) if e.actor == "kvm" and e.kind == "vmexit"]
        out = []
        for k, i in enumerate(starts):
            j = next((n for n in range(i + 1, len(events))
                      if events[n].actor == "kvm" and events[n].kind == "entry"), len(events))
            seg = events[i:j]
            out.append(RoundTrip(k, str(seg[0]["name"]), str(seg[0]["where"]),
                                 sum(1 for e in seg if e.actor == "kvm" and e.kind == "call"),
                                 sum(1 for e in seg if e.actor == "kvm" and e.kind == "exit"),
                                 sum(1 for e in seg if e.actor == "qemu" and e.kind == "handle")))
        return tuple(out)

    def table(self) -> str:
        """One line per VM exit: rip, reason, handler, return value, where it went."""
        head = f"  #  {'rip':<9}{'VM exit':<17}{'handler':<27}{'':<10}  destination"
        lines = [head] + [str(s) for s in self.steps]
        lines.append(f"ended: {self.end}" + (f" ({self.unreached} VM exits never reached)"
                                              if self.unreached else ""))
        return "\n".join(lines)

    def __repr__(self) -> str:
        c = self.counts()
        where = f"{c['kernel']} handled in the kernel, {c['user']} to user space"
        if c["blocked"]:
            where += f", {c['blocked']} asleep in the kernel"
        return (f"KernelRun({len(self.steps)} VM exits: {where}; "
                f"{len(self.user_exits)} KVM_RUN returns; ended: {self.end})")


# --- the walk ------------------------------------------------------------------------------

@dataclass
class _Pending:
    """``vcpu->arch.complete_userspace_io``: what the next KVM_RUN finishes first."""

    fn: str
    more: list[UserExit]
    note: str


@dataclass
class _Outcome:
    calls: list[tuple[int, str, str]]  # (depth below the handler, function, note)
    ret: int
    user: list[UserExit] = field(default_factory=list)
    pending: _Pending | None = None
    halted: bool = False
    note: str = ""


def _io_exit(direction: str, size: int, port: int, count: int, data: str) -> UserExit:
    return UserExit(ExitReason.IO, {"direction": direction, "size": size, "port": port,
                                    "count": count, "data": data})


def _mmio_exit(a: Mapping[str, Any]) -> UserExit:
    return UserExit(ExitReason.MMIO, {"phys_addr": a["gpa"], "len": a["len"],
                                      "is_write": bool(a["is_write"]),
                                      "data": a.get("data", "") if a["is_write"] else ""})


def _value(hexdata: str) -> int | None:
    return int.from_bytes(bytes.fromhex(hexdata), "little") if hexdata else None


def _handle_io(ex: VmExit, cfg: KvmConfig) -> _Outcome:
    try:
        q = vmx.IoQualification.decode(ex.qualification)
    except vmx.VmxError as e:
        raise KernelModelError(f"IO_INSTRUCTION at RIP {ex.rip:#x}: {e}") from None
    data = str(ex.before.get("data", ""))
    count = int(ex.before.get("count", 1))
    direction = "in" if q.in_ else "out"
    if not q.in_ and len(data) != 2 * q.size * count:
        raise KernelModelError(f"OUT of {q.size} byte(s) x {count} at RIP {ex.rip:#x} needs "
                               f"{q.size * count} data bytes, got {data!r}")
    bus = "kvm_io_bus_read" if q.in_ else "kvm_io_bus_write"
    dev = cfg.pio_device(q.port, q.size, not q.in_, _value(data[:2 * q.size]))
    if q.string:
        calls = [(1, "kvm_emulate_instruction", "string I/O goes through the full emulator"),
                 (2, "emulator_pio_in_out", f"{q} x {count}"),
                 (3, bus, "KVM_PIO_BUS: " + (f"taken by {dev}" if dev else "no device here"))]
        if dev:
            return _Outcome(calls + [(1, "kvm_skip_emulated_instruction", "")], 1,
                            note=f"{dev} took it")
        return _Outcome(calls, 0, [_io_exit(direction, q.size, q.port, count, data)],
                        _Pending("complete_emulated_pio", [], "finish the string instruction"))
    fast = "kvm_fast_pio_in" if q.in_ else "kvm_fast_pio_out"
    emulator = "emulator_pio_in" if q.in_ else "emulator_pio_out"
    calls = [(1, "kvm_fast_pio", str(q)), (2, fast, ""), (3, emulator, ""),
             (4, "emulator_pio_in_out", ""),
             (5, bus, "KVM_PIO_BUS: " + (f"taken by {dev}" if dev else "no device here"))]
    if dev:
        if dev.startswith("ioeventfd"):
            calls.append((6, "ioeventfd_write", "eventfd_signal: wake whoever waits on it"))
        else:
            fn = next(f for _, _, name, f in PIC_PORTS + PIT_PORTS if name == dev)
            calls.append((6, f"{fn}_{'read' if q.in_ else 'write'}", dev))
        calls.append((1, "kvm_skip_emulated_instruction", "RIP past the instruction"))
        return _Outcome(calls, 1, note=f"{dev} took it in the kernel")
    if not q.in_ and q.port == 0x7E and cfg.has_quirk(KVM_X86_QUIRK_OUT_7E_INC_RIP):
        calls.append((3, "kvm_skip_emulated_instruction", "port 0x7e, "
                         "KVM_X86_QUIRK_OUT_7E_INC_RIP: RIP past the OUT before the exit"))
        return _Outcome(calls, 0, [_io_exit(direction, q.size, q.port, count, data)],
                        _Pending("complete_fast_pio_out_port_0x7e", [],
                                 "pio.count = 0; RIP is past the OUT already"))
    completion = "complete_fast_pio_in" if q.in_ else "complete_fast_pio_out"
    what = ("put user space's answer in RAX, skip the IN" if q.in_
            else "skip the OUT (RIP += length)")
    return _Outcome(calls, 0, [_io_exit(direction, q.size, q.port, count, data)],
                    _Pending(completion, [], what))


def _handle_mmio(ex: VmExit, cfg: KvmConfig, first: bool) -> _Outcome:
    accesses = list(ex.before.get("accesses", ()))
    calls: list[tuple[int, str, str]] = []
    if not first:
        gpa = ex.gpa if ex.gpa is not None else (accesses[0]["gpa"] if accesses else None)
        fast = cfg.fast_mmio(gpa) if gpa is not None else None
        calls.append((1, "kvm_io_bus_write", f"KVM_FAST_MMIO_BUS at {gpa:#x}: " + (
            f"taken by {fast}" if fast else "nothing") if gpa is not None else ""))
        if fast:
            calls += [(2, "ioeventfd_write", "eventfd_signal, without emulating the instruction"),
                      (1, "kvm_skip_emulated_instruction", "")]
            return _Outcome(calls, 1, note=f"fast MMIO: {fast}")
        calls += [(1, "kvm_mmu_page_fault", "error code PFERR_RSVD_MASK: an MMIO SPTE"),
                  (2, "handle_mmio_page_fault", "RET_PF_EMULATE")]
    else:
        if ex.before.get("fetch"):
            calls += [(1, "kvm_mmu_page_fault", ""),
                      (2, "kvm_mmu_do_page_fault", "no memory slot: RET_PF_EMULATE"),
                      (2, "x86_emulate_instruction", "cannot fetch the instruction: "
                                                     "handle_emulation_failure (CPL 0)")]
            u = UserExit(ExitReason.INTERNAL_ERROR, {
                "detail": f"suberror {int(KvmInternalError.EMULATION)} (EMULATION)"})
            return _Outcome(calls, 0, [u], note="instruction fetch from an address with no "
                                                "memory slot")
        if not accesses:
            calls += [(1, "kvm_mmu_page_fault", ""),
                      (2, "kvm_mmu_do_page_fault", "guest RAM: KVM maps the page (EPT entry)")]
            return _Outcome(calls, 1, note="a RAM page mapped on first touch")
        calls += [(1, "kvm_mmu_page_fault", ""),
                  (2, "kvm_mmu_do_page_fault", "no memory slot: KVM installs an MMIO SPTE "
                                               "(next time: EPT misconfig), RET_PF_EMULATE")]
    if not accesses:
        raise KernelModelError(f"{vmx.reason_name(ex.exit_reason & 0xFFFF)} at RIP {ex.rip:#x}: "
                               "an MMIO exit needs before['accesses']")
    calls.append((2, "x86_emulate_instruction", "decode and run the instruction in KVM"))
    user: list[UserExit] = []
    taken: list[str] = []
    for a in accesses:
        is_write = bool(a["is_write"])
        dev = cfg.mmio_device(a["gpa"], a["len"], is_write, _value(a.get("data", "")))
        if dev:
            taken.append(dev)
            rw = "write" if is_write else "read"
            where = "lapic_in_kernel: the LAPIC" if dev == "local APIC" else "KVM_MMIO_BUS"
            calls.append((3, f"vcpu_mmio_{rw}", f"{a['gpa']:#x}: {where}, taken by {dev}"))
            if dev.startswith("ioeventfd"):
                calls.append((4, "ioeventfd_write", "eventfd_signal"))
            elif dev == "local APIC":
                calls.append((4, f"apic_mmio_{rw}",
                              f"register {a['gpa'] - APIC_DEFAULT_PHYS_BASE:#x}"))
            else:
                calls.append((4, f"ioapic_mmio_{rw}", dev))
        else:
            if not user:
                calls += [(3, "vcpu_mmio_write" if is_write else "vcpu_mmio_read",
                           f"{a['gpa']:#x}: no device on KVM_MMIO_BUS"),
                          (3, "emulator_read_write", "fill kvm_run->mmio, exit to user space")]
            user.append(_mmio_exit(a))
    if not user:
        return _Outcome(calls, 1, note="in-kernel devices took every access: " + ", ".join(taken))
    return _Outcome(calls, 0, user, _Pending(
        "complete_emulated_mmio", [], "copy the answer into the emulator, finish the instruction"))


def _handle_hypercall(ex: VmExit, cfg: KvmConfig) -> _Outcome:
    b = ex.before
    nr = int(b.get("rax", 0))
    args = tuple(int(b.get(r, 0)) for r in ("rbx", "rcx", "rdx", "rsi"))
    longmode = bool(b.get("longmode", False))
    res = kvm_emulate_hypercall(nr, args, cpl=int(b.get("cpl", 0)), longmode=longmode,
                                hypercall_exit_enabled=cfg.hypercall_exit_enabled)
    if res.exit_to_user:
        from vbook.models.hypercall import map_gpa_range_exit

        f = map_gpa_range_exit(args[:3], longmode)
        u = UserExit(ExitReason.HYPERCALL, {"nr": f["nr"], "args": list(f["args"]),
                                            "longmode": f["longmode"]})
        return _Outcome([], 0, [u], _Pending("complete_hypercall_exit", [],
                                              "RAX = kvm_run->hypercall.ret, skip the VMCALL"),
                        note=res.handler)
    assert res.ret is not None
    return _Outcome([(1, "kvm_skip_emulated_instruction", f"RAX = {res.ret:#x}")], 1,
                    note=res.handler)


def _dispatch(ex: VmExit, cfg: KvmConfig, handler: str) -> _Outcome:
    basic = ex.exit_reason & vmx.BASIC_EXIT_REASON_MASK
    reason = R(basic)
    if reason == R.IO_INSTRUCTION:
        return _handle_io(ex, cfg)
    if reason in (R.EPT_VIOLATION, R.EPT_MISCONFIG):
        return _handle_mmio(ex, cfg, first=reason == R.EPT_VIOLATION)
    if reason == R.CPUID:
        eax, ecx = int(ex.before.get("eax", 0)), int(ex.before.get("ecx", 0))
        a, b, c, d = kvm_cpuid(eax, ecx)
        return _Outcome([(1, "kvm_cpuid", f"leaf {eax:#x}.{ecx}: EAX={a:#x} EBX={b:#x} "
                                          f"ECX={c:#x} EDX={d:#x}"),
                         (1, "kvm_skip_emulated_instruction", "RIP += 2")], 1,
                        note=f"CPUID leaf {eax:#x} answered from the KVM_SET_CPUID2 table")
    if reason == R.CR_ACCESS:
        return _handle_cr(ex, cfg)
    if reason == R.HLT:
        calls = [(1, "kvm_skip_emulated_instruction", "RIP past the HLT"),
                 (1, "__kvm_emulate_halt", "")]
        if cfg.irqchip:
            return _Outcome(calls, 1, halted=True,
                            note="LAPIC in the kernel: mp_state = KVM_MP_STATE_HALTED")
        return _Outcome(calls, 0, [UserExit(ExitReason.HLT)],
                        note="no in-kernel LAPIC: user space must wait for the interrupt")
    if reason == R.VMCALL:
        return _handle_hypercall(ex, cfg)
    if reason == R.TRIPLE_FAULT:
        return _Outcome([], 0, [UserExit(ExitReason.SHUTDOWN, {"detail": "triple fault"})],
                        note="the guest cannot deliver an exception: shut down")
    if reason == R.MSR_READ:
        ecx = int(ex.before.get("ecx", 0))
        return _Outcome([(1, "kvm_get_msr_with_filter", f"MSR {ecx:#x}")], 1,
                        note=f"RDMSR {ecx:#x}: EDX:EAX from KVM's MSR emulation")
    if reason == R.MSR_WRITE:
        ecx = int(ex.before.get("ecx", 0))
        return _Outcome([(1, "kvm_set_msr_with_filter", f"MSR {ecx:#x}")], 1,
                        note=f"WRMSR {ecx:#x}")
    if reason == R.EXCEPTION_NMI:
        vector = ex.before.get("vector")
        if vector != 6:
            raise KernelModelError(
                f"EXCEPTION_NMI with vector {vector!r} at RIP {ex.rip:#x}: the model simulates "
                "only #UD (6), which KVM always intercepts")
        if ex.before.get("insn") == "vmmcall":
            return _Outcome([(1, "handle_ud", ""), (2, "kvm_emulate_instruction", ""),
                             (3, "emulator_fix_hypercall", "VMMCALL on Intel: rewrite it to "
                                                           "VMCALL, the guest runs it again")],
                            1, note="#UD from VMMCALL: patched to VMCALL")
        return _Outcome([(1, "handle_ud", ""),
                         (2, "kvm_emulate_instruction", "EMULTYPE_TRAP_UD: cannot decode it"),
                         (3, "kvm_queue_exception", "#UD goes back to the guest at the next "
                                                    "VM entry")],
                        1, note="#UD re-injected")
    rule = vmx.USER_SPACE.get(reason, (None, ""))[0]
    if rule == vmx.KERNEL:
        return _Outcome([], 1, note="handled in the kernel (not modelled step by step)")
    if rule == vmx.DEBUG_OR_ERROR:
        return _Outcome([], 1, note="handled in the kernel (not modelled step by step; it "
                                    "reaches user space only under a debugger or on a failure)")
    raise KernelModelError(
        f"exit reason {vmx.describe_reason(basic)} → {handler}: the model does not simulate "
        "this handler (its result depends on VM state it does not track)")


_CR_SETTERS = {0: "handle_set_cr0", 3: "kvm_set_cr3", 4: "handle_set_cr4", 8: "kvm_set_cr8"}


def _handle_cr(ex: VmExit, cfg: KvmConfig) -> _Outcome:
    """vmx.c ``handle_cr``: qualification bits 3:0 = the CR, bits 5:4 = the access
    (0 MOV to, 1 MOV from, 2 CLTS, 3 LMSW)."""
    q = ex.qualification
    cr, access = q & 15, (q >> 4) & 3
    if access == 0 and cr in _CR_SETTERS:
        val = int(ex.before.get("value", 0))
        err = cr == 8 and val & ~0xF  # kvm_set_cr8: CR8_RESERVED_BITS
        calls = [(1, _CR_SETTERS[cr], f"CR{cr} = {val:#x}"),
                 (1, "kvm_complete_insn_gp", "reserved bits: #GP" if err else "")]
        if not err:
            calls.append((2, "kvm_skip_emulated_instruction", "RIP past the MOV"))
        if cr == 8 and not cfg.irqchip and (val & 0xFF) < int(ex.before.get("cr8", 0)):
            prev = int(ex.before.get("cr8", 0))
            return _Outcome(calls, 0, [UserExit(ExitReason.SET_TPR, {
                "detail": f"TPR {prev:#x} -> {val & 0xFF:#x}"})],
                note="TPR lowered, local APIC in user space: it may now deliver an interrupt")
        return _Outcome(calls, 1, note=f"MOV to CR{cr}")
    if access == 1 and cr in (3, 8):
        return _Outcome([(1, "kvm_skip_emulated_instruction", "")], 1, note=f"MOV from CR{cr}")
    if access == 3:
        return _Outcome([(1, "kvm_lmsw", ""), (1, "kvm_skip_emulated_instruction", "")], 1,
                        note="LMSW")
    if access == 2:
        raise KernelModelError(f"CLTS at RIP {ex.rip:#x}: Linux 6.1 lets the guest own CR0.TS, "
                               "so CLTS never exits (handle_cr: KVM_BUG, -EIO)")
    u = UserExit(ExitReason.UNKNOWN, {"detail": f"unhandled control register: op {access} "
                                                f"cr {cr}"})
    return _Outcome([], 0, [u], note="vcpu_unimpl: exit_reason = 0 (KVM_EXIT_UNKNOWN)")


def vmx_handle_exit(ex: VmExit, cfg: KvmConfig) -> tuple[str | None, _Outcome]:
    """``__vmx_handle_exit`` for one exit: (handler or None, what it did).

    A failed VM entry (bit 31) gives ``KVM_EXIT_FAIL_ENTRY``; a basic reason at
    or above ``kvm_vmx_max_exit_handlers`` or without a table entry gives
    ``KVM_EXIT_INTERNAL_ERROR`` with suberror
    ``KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON``, ``ndata`` 2,
    ``data = [exit_reason.full, last_vmentry_cpu]`` (vCPU 0 ran on CPU 0 here).
    """
    full = ex.exit_reason
    if vmx.failed_vmentry(full):
        u = UserExit(ExitReason.FAIL_ENTRY, {
            "detail": f"hardware_entry_failure_reason {full:#x} on cpu 0"})
        return None, _Outcome([], 0, [u], note="VM entry failed")
    basic = vmx.basic_exit_reason(full)
    handler = vmx.handler_for(basic) if basic < vmx.KVM_VMX_MAX_EXIT_HANDLERS else None
    if handler is None:
        data = [full, 0]
        words = " ".join(f"{d:#x}" for d in data)
        u = UserExit(ExitReason.INTERNAL_ERROR, {
            "detail": f"suberror {int(KvmInternalError.UNEXPECTED_EXIT_REASON)} "
                      f"(UNEXPECTED_EXIT_REASON), data [{words}]"})
        why = ("beyond kvm_vmx_max_exit_handlers" if basic >= vmx.KVM_VMX_MAX_EXIT_HANDLERS
               else "no entry in kvm_vmx_exit_handlers")
        return None, _Outcome([], 0, [u], note=f"unexpected exit reason "
                                                f"{vmx.describe_reason(basic)}: {why}")
    return handler, _dispatch(ex, cfg, handler)


def kvm_run(vm_exits: Iterable[Any], config: KvmConfig | None = None, *,
            title: str = "") -> KernelRun:
    """Walk ``KVM_RUN`` in the kernel (Linux 6.1, VMX) for these VM exits, in order.

    ``vm_exits`` are :class:`VmExit` objects, the unicorn backend's
    ``kernel_exits``, or mappings with the same keys. User space is assumed to
    answer every exit and call ``KVM_RUN`` again until the guest halts, shuts
    down or fails. Returns a :class:`KernelRun` whose trace holds each step.
    """
    cfg = config if config is not None else KvmConfig()
    if not isinstance(cfg, KvmConfig):
        raise KernelModelError(f"config must be a KvmConfig, got {cfg!r}")
    exits = [as_vm_exit(x) for x in vm_exits]
    rec = TraceRecorder(title=title or "KVM_RUN in the kernel", config=cfg.describe(),
                        model="vbook.models.kvm_kernel (Linux 6.1, VMX)")

    def call(fn: str, depth: int, note: str = "", **data: Any) -> None:
        rec.emit("kvm", "call", fn, fn=fn, file=FILES.get(fn, ""), depth=depth, note=note,
                 **data)

    def ret(fn: str, depth: int, r: int, meaning: str) -> None:
        rec.emit("kvm", "return", f"{fn} returns {r}", fn=fn, depth=depth, ret=r,
                 meaning=meaning)

    steps: list[ExitStep] = []
    users: list[UserExit] = []
    pending: _Pending | None = None
    launched = False
    end = ""
    i = 0
    n_run = 0
    while not end:
        rec.emit("qemu", "ioctl", "KVM_RUN", n=n_run, fn="kvm_cpu_exec")
        n_run += 1
        call("kvm_vcpu_ioctl", 0, "case KVM_RUN")
        call("kvm_arch_vcpu_ioctl_run", 1, "vcpu_load, guest FPU, then the pending completion")
        user: UserExit | None = None
        if pending is not None:
            call(pending.fn, 2, pending.note, completion=True)
            if pending.more:
                user = pending.more.pop(0)
                ret(pending.fn, 2, 0, "the instruction needs user space again")
            else:
                ret(pending.fn, 2, 1, "the instruction is finished")
                pending = None
        if user is None:
            call("vcpu_run", 2, "for (;;): enter the guest until a handler returns <= 0")
            while user is None and not end:
                if i >= len(exits):
                    end = "running"
                    rec.emit("kvm", "note", "no more VM exits: the guest is still running",
                             depth=2)
                    break
                ex = exits[i]
                call("vcpu_enter_guest", 3, "requests, event injection, IRQs off")
                call("vmx_vcpu_run", 4, "static_call(kvm_x86_vcpu_run)")
                insn = "VMRESUME" if launched else "VMLAUNCH"
                launched = True
                rec.emit("kvm", "entry", insn, fn="__vmx_vcpu_run", insn=insn, depth=5,
                         file=FILES["__vmx_vcpu_run"])
                handler, out = vmx_handle_exit(ex, cfg)
                basic = ex.exit_reason & vmx.BASIC_EXIT_REASON_MASK
                name = vmx.reason_name(basic)
                where = ("blocked" if out.halted else "kernel" if out.ret > 0 else "user")
                rec.emit("guest", "run", f"runs to {name} at rip {ex.rip:#x}",
                         exit_rip=ex.rip, name=name)
                qual = _qual_text(ex)
                rec.emit("kvm", "vmexit", f"EXIT_REASON_{name}" if basic in _NAMED else name,
                         exit_reason=ex.exit_reason, basic=basic, name=name, rip=ex.rip,
                         qualification=ex.qualification, gpa=ex.gpa, handler=handler,
                         where=where, ret=out.ret, qual=qual, depth=5, index=i)
                if basic == R.MSR_WRITE and handler:
                    call("vmx_exit_handlers_fastpath", 4,
                         "handle_fastpath_set_msr_irqoff: not an x2APIC ICR or TSC deadline "
                         "write → EXIT_FASTPATH_NONE")
                call("vmx_handle_exit_irqoff", 4, "static_call(kvm_x86_handle_exit_irqoff)")
                call("vmx_handle_exit", 4, "static_call(kvm_x86_handle_exit)")
                call("__vmx_handle_exit", 5, f"kvm_vmx_exit_handlers[{basic}]" if handler
                     else f"unexpected_vmexit: {vmx.describe_reason(basic)}")
                if handler:
                    call(handler, 6, out.note)
                    for rel, fn, note in out.calls:
                        call(fn, 6 + rel, note)
                    ret(handler, 6, out.ret, vmx.RETURN_RULE[1 if out.ret > 0 else 0])
                else:
                    ret("__vmx_handle_exit", 5, 0, out.note)
                steps.append(ExitStep(i, ex.exit_reason, name, ex.rip, handler,
                                      tuple(fn for _, fn, _ in out.calls), out.ret, where,
                                      tuple(out.user), out.note))
                i += 1
                if out.ret > 0:
                    ret("vcpu_enter_guest", 3, out.ret, "vcpu_run loops")
                    if out.halted:
                        call("vcpu_block", 3, "kvm_vcpu_running() is false: mp_state HALTED")
                        call("kvm_vcpu_halt", 4, "halt polling, then sleep")
                        call("kvm_vcpu_block", 5, "schedule() until an interrupt or signal "
                                                  "wakes the vCPU")
                        end = "blocked"
                    continue
                user = out.user[0]
                pending = out.pending
                if pending is not None:
                    pending.more = list(out.user[1:])
                ret("vcpu_enter_guest", 3, 0, "leave the loop")
            if user is not None:
                ret("vcpu_run", 2, 0, "")
        if user is not None:
            ret("kvm_arch_vcpu_ioctl_run", 1, 0, "")
            users.append(user)
            d = user.to_dict()
            d.pop("reason")
            rec.emit("kvm", "exit", f"KVM_EXIT_{user.reason.name}", exit_reason=int(user.reason),
                     depth=0, **d)
            fn = QEMU_HANDLERS.get(user.reason, "kvm_arch_handle_exit")
            rec.emit("qemu", "handle", fn, fn=fn, exit=str(user))
            if user.reason in FINAL:
                end = FINAL[user.reason]
        elif end == "blocked":
            rec.emit("qemu", "wait", "the vCPU thread is still inside KVM_RUN",
                     fn="kvm_cpu_exec")
    rec.emit("qemu", "stop", end)
    return KernelRun(tuple(steps), tuple(users), end, cfg, rec.freeze(), len(exits) - i)


_NAMED = frozenset(int(r) for r in R)


def _qual_text(ex: VmExit) -> str:
    basic = ex.exit_reason & vmx.BASIC_EXIT_REASON_MASK
    if basic == R.IO_INSTRUCTION:
        try:
            return str(vmx.IoQualification.decode(ex.qualification))
        except vmx.VmxError:
            return f"qualification {ex.qualification:#x}"
    if basic in (R.EPT_VIOLATION, R.EPT_MISCONFIG) and ex.gpa is not None:
        return f"GPA {ex.gpa:#x}"
    if basic == R.CPUID:
        return f"EAX={int(ex.before.get('eax', 0)):#x}"
    if basic == R.VMCALL:
        return f"nr={int(ex.before.get('rax', 0))}"
    if basic in (R.MSR_READ, R.MSR_WRITE):
        return f"MSR {int(ex.before.get('ecx', 0)):#x}"
    return ""


def destinations(run: KernelRun) -> list[tuple[str, str, int]]:
    """(VM exit name, handler or "—", ret) per step: the answer a reader predicts."""
    return [(s.name, s.handler or "—", s.ret) for s in run.steps]


__all__ = [
    "APIC_DEFAULT_PHYS_BASE", "CPUID_TABLE", "FILES", "FINAL", "KVM_CPUID_FEATURES",
    "KVM_X86_QUIRK_OUT_7E_INC_RIP", "LAPIC_MMIO_LENGTH", "PIC_PORTS", "PIT_PORTS",
    "KVM_CPUID_SIGNATURE",
    "KVM_SIGNATURE", "KVM_SUPPORTED_PV_FEATURES", "QEMU_HANDLERS", "CpuidEntry", "ExitStep",
    "Ioeventfd", "RoundTrip", "KernelModelError", "KernelRun", "KvmConfig", "KvmInternalError",
    "UserExit", "VmExit", "as_vm_exit", "destinations", "kvm_cpuid", "kvm_run",
    "vmx_handle_exit",
]
