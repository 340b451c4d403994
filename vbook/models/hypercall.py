"""The x86 KVM hypercall: its ABI, and what ``kvm_emulate_hypercall`` does with it.

A guest asks the hypervisor for a service with ``VMCALL`` (Intel, bytes
``0F 01 C1``) or ``VMMCALL`` (AMD, ``0F 01 D9``). The CPU leaves the guest with
VMX basic exit reason 18 (``EXIT_REASON_VMCALL``; SVM: ``SVM_EXIT_VMMCALL``
0x81) and KVM's exit handler ``kvm_emulate_hypercall`` reads the request from
the guest's registers::

    nr = RAX, a0 = RBX, a1 = RCX, a2 = RDX, a3 = RSI        result -> RAX

This module is that function, step by step, as in ``arch/x86/kvm/x86.c``
(Linux 6.1), with the handlers it calls (``kvm_pv_send_ipi`` in
``arch/x86/kvm/lapic.c``, ``guest_pv_has`` in ``arch/x86/kvm/cpuid.h``):

1. (Xen or Hyper-V hypercalls enabled for the VM → their own handlers; not
   modelled: QEMU enables neither unless asked with ``-accel kvm,xen-version``
   or ``hv-*`` CPU flags.)
2. read nr, a0..a3; outside 64-bit mode (``!is_64_bit_hypercall``) truncate
   each to 32 bits;
3. guest CPL ≠ 0 → ``-KVM_EPERM`` without looking at nr;
4. ``switch (nr)``: ``VAPIC_POLL_IRQ`` → 0; ``KICK_CPU``, ``SEND_IPI``,
   ``SCHED_YIELD`` when ``guest_pv_has`` the matching PV feature;
   ``CLOCK_PAIRING``; ``MAP_GPA_RANGE`` only when user space enabled its exit
   (then it *leaves to user space* as ``KVM_EXIT_HYPERCALL``); anything else
   ``-KVM_ENOSYS``;
5. outside 64-bit mode truncate ret to 32 bits, write it to RAX, count the
   hypercall and skip the 3-byte instruction (the guest resumes after it).

The error numbers are ``KVM_E*`` of ``include/uapi/linux/kvm_para.h`` and the
guest sees them negated, as a 64-bit (or 32-bit) two's complement number:
an unknown nr leaves ``2**64 - 1000`` in RAX. The model is pure and
deterministic; what depends on the host at run time (the wall clock that
``KVM_HC_CLOCK_PAIRING`` returns, whether the host's clocksource is the TSC)
is a parameter, and nothing is printed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from vbook.errors import VbookError
from vbook.models.kvm_api import Hypercall, HypercallError

# --- the ABI, as data ---------------------------------------------------------

#: ``VMCALL`` (Intel VMX): arch/x86/kvm/vmx/vmx.c ``vmx_patch_hypercall`` (Linux 6.1)
VMCALL = b"\x0f\x01\xc1"
#: ``VMMCALL`` (AMD SVM): arch/x86/kvm/svm/svm.c ``svm_patch_hypercall`` (Linux 6.1)
VMMCALL = b"\x0f\x01\xd9"
#: Length KVM skips after a completed hypercall (``kvm_skip_emulated_instruction``).
INSN_LEN = 3

#: VMX basic exit reason of VMCALL — arch/x86/include/uapi/asm/vmx.h (Linux 6.1);
#: ``kvm_vmx_exit_handlers[EXIT_REASON_VMCALL] = kvm_emulate_hypercall``.
EXIT_REASON_VMCALL = 18
#: SVM exit code of VMMCALL — arch/x86/include/uapi/asm/svm.h (Linux 6.1).
SVM_EXIT_VMMCALL = 0x81

#: Registers in the order KVM reads them: nr, a0, a1, a2, a3
#: (x86.c ``kvm_emulate_hypercall``: ``kvm_rax_read`` … ``kvm_rsi_read``; the
#: guest-side helpers ``kvm_hypercall0..4`` in arch/x86/include/asm/kvm_para.h
#: use the asm constraints ``"a"(nr), "b"(p1), "c"(p2), "d"(p3), "S"(p4)``).
REGISTERS: tuple[str, ...] = ("rax", "rbx", "rcx", "rdx", "rsi")
#: The register the result is written to (``kvm_rax_write``).
RET_REGISTER = "rax"
#: The same, by role.
ABI: dict[str, str] = {"nr": "rax", "a0": "rbx", "a1": "rcx", "a2": "rdx", "a3": "rsi",
                       "ret": "rax"}

#: The hypercall numbers x86 KVM 6.1 has a ``case`` for; every other nr is -KVM_ENOSYS.
HANDLED: frozenset[Hypercall] = frozenset({
    Hypercall.VAPIC_POLL_IRQ, Hypercall.KICK_CPU, Hypercall.CLOCK_PAIRING,
    Hypercall.SEND_IPI, Hypercall.SCHED_YIELD, Hypercall.MAP_GPA_RANGE,
})

#: ``KVM_EXIT_HYPERCALL_VALID_MASK`` (x86.c, Linux 6.1): the hypercalls user space
#: may ask to receive with ``KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL, args[0])``;
#: ``KVM_CHECK_EXTENSION(KVM_CAP_EXIT_HYPERCALL)`` answers this mask.
KVM_EXIT_HYPERCALL_VALID_MASK = 1 << Hypercall.MAP_GPA_RANGE

#: ``KVM_CLOCK_PAIRING_WALLCLOCK`` — the only clock type (asm/kvm_para.h).
KVM_CLOCK_PAIRING_WALLCLOCK = 0
#: ``sizeof(struct kvm_clock_pairing)`` (sec, nsec, tsc, flags, pad[9]) — asm/kvm_para.h.
SIZEOF_KVM_CLOCK_PAIRING = 64

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1


class PvFeature(IntEnum):
    """``KVM_FEATURE_*``: bits of CPUID leaf ``KVM_CPUID_FEATURES`` (0x40000001) EAX.

    arch/x86/include/uapi/asm/kvm_para.h (Linux 6.1). A guest learns from them
    which paravirtual services it may use.
    """

    CLOCKSOURCE = 0
    NOP_IO_DELAY = 1
    MMU_OP = 2
    CLOCKSOURCE2 = 3
    ASYNC_PF = 4
    STEAL_TIME = 5
    PV_EOI = 6
    PV_UNHALT = 7
    PV_TLB_FLUSH = 9
    ASYNC_PF_VMEXIT = 10
    PV_SEND_IPI = 11
    POLL_CONTROL = 12
    PV_SCHED_YIELD = 13
    ASYNC_PF_INT = 14
    MSI_EXT_DEST_ID = 15
    HC_MAP_GPA_RANGE = 16
    MIGRATION_CONTROL = 17
    CLOCKSOURCE_STABLE_BIT = 24


#: What a default QEMU guest's CPUID 0x40000001 advertises: QEMU 9.2.4's
#: ``kvm_default_props`` (target/i386/kvm/kvm-cpu.c) turn on kvmclock (the
#: name of bits 0 and 3 in cpu.c's ``feat_names``), kvm-nopiodelay,
#: kvm-asyncpf, kvm-steal-time, kvm-pv-eoi and kvmclock-stable-bit for every
#: named CPU model (``-cpu qemu64`` is the default). kvm-asyncpf-int,
#: kvm-pv-unhalt, kvm-pv-ipi and kvm-pv-sched-yield are *not* among them
#: (``-cpu host`` adds what the host supports). A test reads both tables in the
#: 9.2.4 tree.
QEMU_DEFAULT_PV_FEATURES: frozenset[PvFeature] = frozenset({
    PvFeature.CLOCKSOURCE, PvFeature.NOP_IO_DELAY, PvFeature.CLOCKSOURCE2,
    PvFeature.ASYNC_PF, PvFeature.STEAL_TIME, PvFeature.PV_EOI,
    PvFeature.CLOCKSOURCE_STABLE_BIT,
})

#: The PV feature ``guest_pv_has`` checks before each gated hypercall.
GATED_BY: dict[Hypercall, PvFeature] = {
    Hypercall.KICK_CPU: PvFeature.PV_UNHALT,
    Hypercall.SEND_IPI: PvFeature.PV_SEND_IPI,
    Hypercall.SCHED_YIELD: PvFeature.PV_SCHED_YIELD,
}

# Local APIC ICR bits used by kvm_pv_send_ipi (arch/x86/include/asm/apicdef.h)
APIC_VECTOR_MASK = 0x000FF
APIC_MODE_MASK = 0x00700
APIC_DEST_MASK = 0x00800        # logical destination mode
APIC_INT_ASSERT = 0x04000
APIC_INT_LEVELTRIG = 0x08000
APIC_SHORT_MASK = 0xC0000       # destination shorthand
APIC_DM_FIXED, APIC_DM_LOWEST, APIC_DM_SMI, APIC_DM_REMRD = 0x000, 0x100, 0x200, 0x300
APIC_DM_NMI, APIC_DM_INIT, APIC_DM_STARTUP, APIC_DM_EXTINT = 0x400, 0x500, 0x600, 0x700

_EOPNOTSUPP = 95  # include/uapi/asm-generic/errno.h; kvm_pv_send_ipi returns -EOPNOTSUPP


class HypercallArgError(VbookError, ValueError):
    """An argument to the hypercall model is not something a vCPU could hold."""


@dataclass(frozen=True)
class HypercallResult:
    """What one VMCALL came to.

    ``ret`` is the value KVM leaves in RAX (an unsigned 64-bit number; its
    upper half is 0 outside 64-bit mode), or ``None`` when the hypercall went
    to user space as ``KVM_EXIT_HYPERCALL`` (RAX is written only when user
    space completes it, see :func:`complete_hypercall_exit`). ``exit_to_user``
    says which of the two happened. ``handler`` names the kernel function or
    branch that decided, e.g. ``"kvm_pv_kick_cpu_op"``,
    ``"-KVM_ENOSYS (unknown nr)"``, ``"-KVM_EPERM (CPL 3)"``.
    """

    ret: int | None
    exit_to_user: bool
    handler: str

    def __repr__(self) -> str:
        ret = "None" if self.ret is None else f"{self.ret:#x}"
        return (f"HypercallResult(ret={ret}, exit_to_user={self.exit_to_user}, "
                f"handler={self.handler!r})")


def _check_reg(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HypercallArgError(f"{name} must be an int register value, got {value!r}")
    if not 0 <= value <= _U64:
        raise HypercallArgError(
            f"{name}={value:#x} does not fit a 64-bit register (0 .. 2**64-1)")
    return value


def _feature_set(features: Iterable[PvFeature | int] | int) -> frozenset[int]:
    if isinstance(features, int) and not isinstance(features, bool):
        if not 0 <= features <= _U32:
            raise HypercallArgError(f"features bitmask {features:#x} is not a 32-bit CPUID EAX")
        return frozenset(b for b in range(32) if features >> b & 1)
    out = set()
    for f in features:
        try:
            out.add(int(PvFeature(f)))
        except ValueError:
            raise HypercallArgError(f"{f!r} is not a KVM_FEATURE_* bit") from None
    return frozenset(out)


def kvm_pv_send_ipi(ipi_bitmap_low: int, ipi_bitmap_high: int, min_: int, icr: int,
                    op_64_bit: bool, apic_ids: Iterable[int] | None) -> int:
    """arch/x86/kvm/lapic.c ``kvm_pv_send_ipi`` (Linux 6.1): IPI many vCPUs at once.

    ``ipi_bitmap_low`` bit i targets APIC ID ``min + i``, ``ipi_bitmap_high``
    bit i targets ``min + cluster_size + i`` (cluster 64 in 64-bit mode, else
    32). Returns how many LAPICs accepted the IPI, ``-KVM_EINVAL`` when the ICR
    asks for a logical destination or a shorthand, ``-EOPNOTSUPP`` when the VM
    has no in-kernel APIC map (``apic_ids`` None). Every LAPIC is assumed
    software-enabled; acceptance then follows ``__apic_accept_irq``.
    """
    if icr & (APIC_DEST_MASK | APIC_SHORT_MASK):
        return -HypercallError.EINVAL
    if apic_ids is None:
        return -_EOPNOTSUPP
    present = set(apic_ids)
    if not present:
        return -_EOPNOTSUPP
    mode = icr & APIC_MODE_MASK
    level = bool(icr & APIC_INT_ASSERT)
    trig_mode = bool(icr & APIC_INT_LEVELTRIG)
    if mode in (APIC_DM_FIXED, APIC_DM_LOWEST):
        accepted = 0 if (trig_mode and not level) else 1
    elif mode == APIC_DM_INIT:
        accepted = 1 if (not trig_mode or level) else 0
    elif mode == APIC_DM_EXTINT:
        accepted = 0
    else:  # SMI, REMRD, NMI, STARTUP
        accepted = 1
    max_apic_id = max(present)
    cluster_size = 64 if op_64_bit else 32
    min_ &= _U32

    def __pv_send_ipi(bitmap: int, base: int) -> int:
        if base > max_apic_id:
            return 0
        span = min(64, max_apic_id - base + 1)  # BITS_PER_LONG on an x86-64 host
        return sum(accepted for i in range(span) if bitmap >> i & 1 and base + i in present)

    count = __pv_send_ipi(ipi_bitmap_low, min_)
    min_ = (min_ + cluster_size) & _U32  # u32 min
    return count + __pv_send_ipi(ipi_bitmap_high, min_)


def kvm_pv_clock_pairing(paddr: int, clock_type: int, *, tsc_clocksource: bool = True,
                         ram_size: int | None = None) -> int:
    """arch/x86/kvm/x86.c ``kvm_pv_clock_pairing`` (Linux 6.1, 64-bit hosts only).

    Writes a ``struct kvm_clock_pairing`` (host wall clock + the guest TSC
    read at the same moment) to guest-physical ``paddr`` and returns 0. The
    error paths are modelled; the values written are the host's clock and are
    not: ``clock_type`` other than ``KVM_CLOCK_PAIRING_WALLCLOCK`` →
    ``-KVM_EOPNOTSUPP``; ``tsc_clocksource`` False (the host clocksource is not
    TSC-based, so ``kvm_get_walltime_and_clockread`` fails, or the vCPU's TSC
    is in ``tsc_always_catchup`` mode) → ``-KVM_EOPNOTSUPP``; when ``ram_size``
    is given and the 64-byte struct does not fit in ``[0, ram_size)`` (no
    memory slot: ``kvm_write_guest`` fails) → ``-KVM_EFAULT``.
    """
    if clock_type != KVM_CLOCK_PAIRING_WALLCLOCK:
        return -HypercallError.EOPNOTSUPP
    if not tsc_clocksource:
        return -HypercallError.EOPNOTSUPP
    if ram_size is not None and paddr + SIZEOF_KVM_CLOCK_PAIRING > ram_size:
        return -HypercallError.EFAULT
    return 0


def kvm_emulate_hypercall(
    nr: int,
    args: Sequence[int] = (0, 0, 0, 0),
    cpl: int = 0,
    longmode: bool = True,
    hypercall_exit_enabled: int = 0,
    features: Iterable[PvFeature | int] | int | None = None,
    *,
    apic_ids: Iterable[int] | None = (0,),
    tsc_clocksource: bool = True,
    ram_size: int | None = None,
    trace: Any = None,
) -> HypercallResult:
    """arch/x86/kvm/x86.c ``kvm_emulate_hypercall`` (Linux 6.1) for one VMCALL.

    ``nr`` and ``args`` (a0..a3; missing ones are 0) are the guest's RAX and
    RBX, RCX, RDX, RSI. ``cpl`` is the guest's privilege level, ``longmode``
    whether it runs in 64-bit mode (``is_64_bit_hypercall``: EFER.LMA and
    CS.L; 32-bit code, even in compatibility mode, is False).
    ``hypercall_exit_enabled`` is the mask user space set with
    ``KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)`` (``kvm->arch.hypercall_exit_enabled``;
    bit 12 = ``KVM_HC_MAP_GPA_RANGE``).

    ``features`` models ``guest_pv_has`` (arch/x86/kvm/cpuid.h): ``None`` —
    the default — is a VM whose VMM did not enable
    ``KVM_CAP_ENFORCE_PV_FEATURE_CPUID``; then ``guest_pv_has`` is always true
    and KICK_CPU / SEND_IPI / SCHED_YIELD are served whatever CPUID says. That
    is a default QEMU guest: QEMU leaves ``kvm-pv-enforce-cpuid`` off, and its
    CPUID advertises :data:`QEMU_DEFAULT_PV_FEATURES`, which lacks all three
    (so a Linux guest does not use them, but KVM would answer). A set of
    :class:`PvFeature` (or the CPUID 0x40000001 EAX bitmask) models an
    enforcing VMM; ``features=QEMU_DEFAULT_PV_FEATURES`` is
    ``-cpu qemu64,kvm-pv-enforce-cpuid=on``, where those three give
    ``-KVM_ENOSYS``.

    ``apic_ids`` are the APIC IDs of the VM's vCPUs for ``KVM_HC_SEND_IPI``
    (default: one vCPU, APIC ID 0, with the in-kernel LAPIC QEMU uses; ``None``:
    no in-kernel APIC). ``tsc_clocksource`` and ``ram_size`` feed
    :func:`kvm_pv_clock_pairing`. ``trace``, if given, is a
    :class:`~vbook.trace.TraceRecorder` that receives the steps (guest VMCALL,
    KVM exit and handler, guest resume or exit to user space).
    """
    nr = _check_reg("nr", nr)
    args = tuple(args)
    if len(args) > 4:
        raise HypercallArgError(
            f"x86 KVM hypercalls take at most 4 arguments (RBX, RCX, RDX, RSI), got {len(args)}")
    a0, a1, a2, a3 = (_check_reg(f"a{i}", v) for i, v in enumerate(args + (0,) * (4 - len(args))))
    if cpl not in (0, 1, 2, 3):
        raise HypercallArgError(f"cpl must be 0..3, got {cpl!r}")
    if not isinstance(hypercall_exit_enabled, int) or hypercall_exit_enabled < 0:
        raise HypercallArgError(
            f"hypercall_exit_enabled must be a non-negative mask, got {hypercall_exit_enabled!r}")
    has = None if features is None else _feature_set(features)
    op_64_bit = bool(longmode)

    if trace is not None:
        trace.emit("guest", "vmcall", f"VMCALL nr={nr}", nr=nr, args=[a0, a1, a2, a3],
                   cpl=cpl, longmode=op_64_bit)
        trace.emit("kvm", "vmexit", "EXIT_REASON_VMCALL", exit_reason=EXIT_REASON_VMCALL,
                   handler="kvm_emulate_hypercall")

    if not op_64_bit:  # 32-bit hypercall: only the low halves count
        nr, a0, a1, a2, a3 = (v & _U32 for v in (nr, a0, a1, a2, a3))

    def guest_pv_has(feature: PvFeature) -> bool:
        return has is None or int(feature) in has

    exit_args: tuple[int, ...] | None = None
    if cpl != 0:
        ret, handler = -HypercallError.EPERM, f"-KVM_EPERM (CPL {cpl})"
    elif nr == Hypercall.VAPIC_POLL_IRQ:
        ret, handler = 0, "KVM_HC_VAPIC_POLL_IRQ (no-op, ret 0)"
    elif nr in GATED_BY and not guest_pv_has(GATED_BY[Hypercall(nr)]):
        feat = GATED_BY[Hypercall(nr)]
        ret, handler = -HypercallError.ENOSYS, f"-KVM_ENOSYS (guest lacks KVM_FEATURE_{feat.name})"
    elif nr == Hypercall.KICK_CPU:
        # kvm_pv_kick_cpu_op(kvm, a1) wakes the vCPU with APIC ID a1 (APIC_DM_REMRD),
        # then kvm_sched_yield(vcpu, a1) yields to it; the guest sees 0 either way.
        ret, handler = 0, "kvm_pv_kick_cpu_op"
    elif nr == Hypercall.CLOCK_PAIRING:
        paddr, clock_type = a0, a1
        ret = kvm_pv_clock_pairing(paddr, clock_type, tsc_clocksource=tsc_clocksource,
                                   ram_size=ram_size)
        if ret == 0:
            handler = "kvm_pv_clock_pairing"
        elif clock_type != KVM_CLOCK_PAIRING_WALLCLOCK:
            handler = ("kvm_pv_clock_pairing: -KVM_EOPNOTSUPP "
                       "(clock_type != KVM_CLOCK_PAIRING_WALLCLOCK)")
        elif ret == -HypercallError.EOPNOTSUPP:
            handler = "kvm_pv_clock_pairing: -KVM_EOPNOTSUPP (host clock not TSC-based)"
        else:
            handler = "kvm_pv_clock_pairing: -KVM_EFAULT (paddr not in guest RAM)"
    elif nr == Hypercall.SEND_IPI:
        ret = kvm_pv_send_ipi(a0, a1, a2, a3, op_64_bit, apic_ids)
        if ret == -HypercallError.EINVAL:
            handler = "kvm_pv_send_ipi: -KVM_EINVAL (ICR asks for logical destination or shorthand)"
        elif ret == -_EOPNOTSUPP:
            handler = "kvm_pv_send_ipi: -EOPNOTSUPP (no in-kernel APIC map)"
        else:
            handler = "kvm_pv_send_ipi"
    elif nr == Hypercall.SCHED_YIELD:
        # kvm_sched_yield(vcpu, a0): yield to the vCPU with APIC ID a0 if it is preempted
        ret, handler = 0, "kvm_sched_yield"
    elif nr == Hypercall.MAP_GPA_RANGE:
        gpa, npages, attrs = a0, a1, a2
        gfn = gpa >> PAGE_SHIFT
        if not hypercall_exit_enabled & (1 << Hypercall.MAP_GPA_RANGE):
            ret = -HypercallError.ENOSYS
            handler = "-KVM_ENOSYS (KVM_HC_MAP_GPA_RANGE exit not enabled)"
        elif gpa % PAGE_SIZE:
            ret, handler = -HypercallError.EINVAL, "-KVM_EINVAL (gpa not page aligned)"
        elif npages == 0:
            ret, handler = -HypercallError.EINVAL, "-KVM_EINVAL (npages is 0)"
        elif (gfn + npages) & _U64 <= gfn:  # u64 wrap-around
            ret, handler = -HypercallError.EINVAL, "-KVM_EINVAL (gfn + npages overflows)"
        else:
            ret, handler = None, "KVM_EXIT_HYPERCALL (KVM_HC_MAP_GPA_RANGE to user space)"
            exit_args = (gpa, npages, attrs, 0, 0, 0)
    else:
        ret, handler = -HypercallError.ENOSYS, "-KVM_ENOSYS (unknown nr)"

    if ret is None:
        if trace is not None:
            trace.emit("kvm", "exit", "KVM_EXIT_HYPERCALL", nr=int(Hypercall.MAP_GPA_RANGE),
                       args=list(exit_args or ()), longmode=int(op_64_bit), handler=handler)
        return HypercallResult(None, True, handler)

    rax = ret & (_U64 if op_64_bit else _U32)
    if trace is not None:
        trace.emit("kvm", "hypercall", handler, nr=nr, ret=rax)
        trace.emit("guest", "resume", f"RAX={rax:#x}, RIP += {INSN_LEN}", rax=rax)
    return HypercallResult(rax, False, handler)


def map_gpa_range_exit(args: Sequence[int], longmode: bool = True) -> dict[str, Any]:
    """The ``kvm_run.hypercall`` fields KVM fills for a ``KVM_HC_MAP_GPA_RANGE`` exit.

    ``nr`` = 12, ``args[0..2]`` = gpa, npages, attrs (truncated to 32 bits
    outside 64-bit mode), ``longmode`` = ``op_64_bit``. KVM does not touch
    ``args[3..5]``; they are shown as 0 (a fresh ``kvm_run``).
    """
    mask = _U64 if longmode else _U32
    a = [_check_reg(f"a{i}", v) & mask for i, v in enumerate(tuple(args)[:3])]
    a += [0] * (6 - len(a))
    return {"nr": int(Hypercall.MAP_GPA_RANGE), "args": tuple(a), "longmode": int(bool(longmode))}


def complete_hypercall_exit(ret: int, longmode: bool = True) -> int:
    """x86.c ``complete_hypercall_exit`` (Linux 6.1): RAX after user space answered.

    On the next ``KVM_RUN`` KVM copies ``kvm_run.hypercall.ret`` to RAX
    (truncated to 32 bits outside 64-bit mode) and skips the VMCALL.
    Negative ``ret`` is taken as user space's ``-errno`` in two's complement.
    """
    return ret & (_U64 if longmode else _U32)


def emulate(nr: int, args: Sequence[int] = (), cpl: int = 0) -> int:
    """The 64-bit value KVM leaves in RAX for a hypercall from a 64-bit guest.

    A shortcut for :func:`kvm_emulate_hypercall` with its defaults (64-bit
    mode, no hypercall exits enabled, a default QEMU VM):
    ``emulate(Hypercall.VAPIC_POLL_IRQ) == 0``, an unknown nr gives
    ``2**64 - 1000`` (``-KVM_ENOSYS``), CPL 3 gives ``2**64 - 1``.
    """
    r = kvm_emulate_hypercall(nr, tuple(args), cpl)
    assert r.ret is not None  # only MAP_GPA_RANGE with its exit enabled goes to user space
    return r.ret


def from_regs(regs: Any) -> tuple[int, tuple[int, int, int, int]]:
    """``(nr, (a0, a1, a2, a3))`` from anything with ``rax``..``rsi`` attributes (e.g. ``Regs``)."""
    nr, *a = (getattr(regs, r) for r in REGISTERS)
    return nr, tuple(a)  # type: ignore[return-value]


def as_signed(ret: int, longmode: bool = True) -> int:
    """RAX read back as the signed number the guest's C code sees (e.g. -1000)."""
    bits = 64 if longmode else 32
    return ret - (1 << bits) if ret >> (bits - 1) & 1 else ret


# --- which arm of kvm_emulate_hypercall decides -------------------------------------

def switch_case(nr: int, cpl: int = 0, longmode: bool = True) -> str:
    """The branch of ``kvm_emulate_hypercall`` (x86.c, Linux 6.1) that a hypercall takes.

    ``"cpl != 0"`` when the CPL check refuses it (before ``nr`` is looked at),
    ``"case KVM_HC_<NAME>"`` for a number the ``switch`` has a case for, and
    ``"default"`` for every other number — after the 32-bit truncation of
    ``nr`` outside 64-bit mode, as the kernel does it. Whether the case then
    succeeds (PV feature, arguments, an enabled exit) is
    :func:`kvm_emulate_hypercall`'s ``handler``.
    """
    nr = _check_reg("nr", nr)
    if cpl not in (0, 1, 2, 3):
        raise HypercallArgError(f"cpl must be 0..3, got {cpl!r}")
    if not longmode:
        nr &= _U32
    if cpl != 0:
        return "cpl != 0"
    if nr in {int(h) for h in HANDLED}:
        return f"case KVM_HC_{Hypercall(nr).name}"
    return "default"


# --- Linux 3.15, for comparison ------------------------------------------------------
#
# Read from the Linux 3.15.5 tree (Makefile 3.15.5; GitHub
# pradeep0605/CS736_Eager_paging_linux-3.15.5, commit a9bdf583 "Base", whose
# arch/x86/kvm and include/uapi/linux/kvm_para.h no later commit touches):
# include/uapi/linux/kvm_para.h, arch/x86/kvm/x86.c kvm_emulate_hypercall,
# arch/x86/kvm/vmx.c handle_vmcall, arch/x86/kvm/svm.c vmmcall_interception.

#: The ``KVM_HC_*`` numbers include/uapi/linux/kvm_para.h defines in Linux 3.15 (1..5).
HYPERCALLS_3_15: frozenset[Hypercall] = frozenset({
    Hypercall.VAPIC_POLL_IRQ, Hypercall.MMU_OP, Hypercall.FEATURES,
    Hypercall.PPC_MAP_MAGIC_PAGE, Hypercall.KICK_CPU,
})
#: The numbers x86 ``kvm_emulate_hypercall`` has a ``case`` for in Linux 3.15.
HANDLED_3_15: frozenset[Hypercall] = frozenset({Hypercall.VAPIC_POLL_IRQ, Hypercall.KICK_CPU})
#: The ``KVM_E*`` return values kvm_para.h defines in Linux 3.15 (no EINVAL, no EOPNOTSUPP).
ERRORS_3_15: frozenset[HypercallError] = frozenset({
    HypercallError.ENOSYS, HypercallError.EFAULT, HypercallError.E2BIG, HypercallError.EPERM,
})


def emulate_3_15(nr: int, args: Sequence[int] = (), cpl: int = 0, efer_lma: bool = True) -> int:
    """RAX after a hypercall on x86 KVM in Linux 3.15 (``kvm_emulate_hypercall``, x86.c).

    Differences from :func:`kvm_emulate_hypercall` (Linux 6.1), all read from
    the 3.15 source: only ``VAPIC_POLL_IRQ`` and ``KICK_CPU`` have a case
    (``KICK_CPU`` is not gated by a PV feature and does not yield); the
    arguments are truncated when ``!is_long_mode(vcpu)`` — EFER.LMA clear, so
    32-bit code in compatibility mode under a 64-bit guest kernel is *not*
    truncated (6.1 asks ``is_64_bit_mode``); and ``ret`` is written to RAX
    whole, never cut to 32 bits, so a real-mode guest's unknown hypercall
    leaves ``2**64 - 1000`` in RAX (its EAX reads 0xfffffc18 either way).
    Skipping the instruction was the vendor handler's job
    (``handle_vmcall``: ``skip_emulated_instruction`` first), and no hypercall
    went to user space.
    """
    nr = _check_reg("nr", nr)
    args = tuple(args)
    if len(args) > 4:
        raise HypercallArgError(
            f"x86 KVM hypercalls take at most 4 arguments (RBX, RCX, RDX, RSI), got {len(args)}")
    for i, v in enumerate(args):
        _check_reg(f"a{i}", v)
    if cpl not in (0, 1, 2, 3):
        raise HypercallArgError(f"cpl must be 0..3, got {cpl!r}")
    if not efer_lma:
        nr &= _U32
    if cpl != 0:
        ret = -HypercallError.EPERM
    elif nr in (Hypercall.VAPIC_POLL_IRQ, Hypercall.KICK_CPU):
        ret = 0  # KICK_CPU: kvm_pv_kick_cpu_op(kvm, a0, a1), then 0
    else:
        ret = -HypercallError.ENOSYS
    return ret & _U64  # kvm_register_write(vcpu, VCPU_REGS_RAX, ret): all 64 bits
