"""``cpuid_loop``: VM exits that stay in the kernel — a few CPUIDs, then one OUT, then HLT.

Real mode. ``CPUID`` always causes a VM exit on VMX (EXIT_REASON_CPUID), but
KVM answers it itself (``kvm_emulate_cpuid``, from the table the VMM set with
``KVM_SET_CPUID2``) and re-enters the guest: user space never sees it. The
guest asks for leaf ``KVM_CPUID_SIGNATURE`` (0x40000000, "KVMKVMKVM") three
times, then writes the number of CPUIDs it made (not anything CPUID
answered, which differs between hosts) to the pc-testdev port, and halts.

VM exits: CPUID, CPUID, CPUID, IO_INSTRUCTION, HLT. Exits to user space:
IO out 0xe0/4 (03 00 00 00), HLT.

:func:`timing_guest` builds the same program with other counts — rounds of
*n* CPUIDs and one OUT — to time the two kinds of exit on a real host.
What :func:`measure` then times depends on the host: on VMX or SVM a CPUID
is a VM exit KVM handles itself; on PVM (no VMX/SVM, every ring-0 guest
instruction runs in KVM's instruction emulator) no CPUID leaves the guest,
so its figure is the cost of emulating one pass of the CPUID loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from vbook.errors import GuestError
from vbook.guests.base import Guest
from vbook.guests.ports import LOAD_ADDR, MEM_SIZE, STACK_TOP, TESTDEV_PORT

#: KVM's own CPUID leaf: EAX = 0x40000001, EBX:ECX:EDX = "KVMKVMKVM\0\0\0"
#: (arch/x86/kvm/cpuid.c, case KVM_CPUID_SIGNATURE, Linux 6.1)
KVM_CPUID_SIGNATURE = 0x40000000
#: CPUIDs of the shipped guest
N_CPUID = 3


def listing(cpuids: int = N_CPUID, rounds: int = 1) -> str:
    """The program: ``rounds`` times {``cpuids`` CPUIDs, one OUT of that count}, then HLT."""
    return f"""\
# cpuid_loop - real mode: CPUIDs (KVM answers them in the kernel), an OUT, then halt.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ TESTDEV_PORT, {TESTDEV_PORT:#x}
        .equ KVM_CPUID_SIGNATURE, {KVM_CPUID_SIGNATURE:#x}   # KVM's leaf: "KVMKVMKVM"
        .equ CPUIDS, {cpuids}                   # CPUIDs per round
        .equ ROUNDS, {rounds}                   # rounds, one OUT each
_start:
        mov   edi, ROUNDS
round:
        mov   esi, CPUIDS
        test  esi, esi
        jz    show                      # no CPUID this time
again:
        mov   eax, KVM_CPUID_SIGNATURE  # leaf in EAX, subleaf in ECX
        xor   ecx, ecx
        cpuid                           # VM exit; kvm_emulate_cpuid answers, the guest goes on
        dec   esi
        jnz   again
show:
        mov   eax, CPUIDS               # a value that does not depend on what CPUID said
        out   TESTDEV_PORT, eax         # the exit user space sees
        dec   edi
        jnz   round
        hlt
"""


LISTING = listing()

# CODE is generated from LISTING by `python -m vbook.guests.build`; tests/test_guests.py checks it.
CODE = bytes.fromhex(
    "66bf0100000066be030000006685f674"
    "0f66b8000000406631c90fa2664e75f1"
    "66b80300000066e7e0664f75d9f4"
)

#: where the immediates sit in CODE: ``mov edi, ROUNDS``, ``mov esi, CPUIDS``, ``mov eax, CPUIDS``
_ROUNDS_AT, _CPUIDS_AT, _SHOWN_AT = 2, 8, 34


def timing_guest(cpuids: int, rounds: int) -> Guest:
    """``rounds`` × (``cpuids`` CPUID exits + 1 OUT exit), then HLT — for timing on real KVM.

    The bytes are CODE with the three immediates replaced (checked against
    the assembled :func:`listing` by the tests). Each count is 0..2**32-1,
    ``rounds`` at least 1.
    """
    for name, v, low in (("cpuids", cpuids, 0), ("rounds", rounds, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v < 2**32:
            raise GuestError(f"timing_guest: {name} must be an integer in [{low}, 2**32), "
                             f"got {v!r}")
    code = bytearray(CODE)
    code[_ROUNDS_AT:_ROUNDS_AT + 4] = rounds.to_bytes(4, "little")
    code[_CPUIDS_AT:_CPUIDS_AT + 4] = cpuids.to_bytes(4, "little")
    code[_SHOWN_AT:_SHOWN_AT + 4] = cpuids.to_bytes(4, "little")
    return Guest(
        name=f"cpuid_loop_{cpuids}x{rounds}",
        mode=16,
        code=bytes(code),
        listing=listing(cpuids, rounds),
        description=f"{rounds} round(s) of {cpuids} CPUID exit(s) and one OUT exit, then HLT",
        load_addr=LOAD_ADDR,
        mem_size=MEM_SIZE,
        stack_top=STACK_TOP,
    )


#: instructions of one pass of the CPUID loop: mov eax / xor ecx / cpuid / dec esi / jnz
LOOP_PASS = 5


@dataclass(frozen=True)
class Timing:
    """What one OUT and one CPUID cost on a backend, measured with :func:`measure` (seconds).

    ``host`` is the kind of KVM host (:func:`vbook.host.detect`: "VMX", "SVM",
    "PVM", "other") for the KVM backend, "" otherwise; it decides what
    ``kernel_exit`` is: a CPUID VM exit KVM handles itself (VMX, SVM), or on
    PVM one pass of the CPUID loop run in KVM's instruction emulator, with no
    VM exit at all.
    """

    backend: str
    user_exit: float  #: an OUT: KVM_RUN returns to user space and is called again
    kernel_exit: float  #: a CPUID (and the loop around it) that stays in the kernel
    user_exits: int
    kernel_exits: int
    host: str = ""

    def __str__(self) -> str:
        where = f"{self.backend}, a {self.host} host" if self.host else self.backend
        user = (f"exit to user space and back {self.user_exit * 1e6:.2f} µs "
                f"({1 / self.user_exit:,.0f}/s, {self.user_exits:,} OUTs)")
        us = f"{self.kernel_exit * 1e6:.2f} µs"
        if self.host == "PVM":
            kernel = (f"one CPUID loop pass in KVM's emulator ({LOOP_PASS} instructions, no "
                      f"VM exit) {us} ({self.kernel_exits:,} passes)")
        elif self.host in ("VMX", "SVM"):
            kernel = f"CPUID exit handled in the kernel {us} ({self.kernel_exits:,} CPUIDs)"
        else:
            kernel = f"per CPUID {us} ({self.kernel_exits:,} CPUIDs)"
        ratio = (f"ratio {self.user_exit / self.kernel_exit:.1f}" if self.kernel_exit
                 else "ratio -")
        return f"on {where}:\n  {user};\n  {kernel};\n  {ratio}"


def measure(backend: str = "kvm", outs: int = 20_000, cpuids: int = 50,
            rounds: int = 1_000) -> Timing:
    """Time both kinds of exit on ``backend`` with the VMM loop in Python (times, not a test).

    ``outs`` OUT exits alone give the round trip to user space; ``rounds`` ×
    (``cpuids`` CPUIDs + 1 OUT) minus ``rounds`` round trips, divided by the
    CPUIDs, gives one CPUID that stays in the kernel: a VM exit KVM handles on
    VMX or SVM, one emulated pass of the loop on PVM (see :class:`Timing`).
    """
    import time

    from vbook.backends import open_vcpu
    from vbook.host import detect

    def seconds(guest: Guest) -> float:
        with open_vcpu(guest, backend, timeout=30.0) as vcpu:
            t = time.perf_counter()
            while vcpu.run().reason.name != "HLT":
                pass
            return time.perf_counter() - t

    per_user = seconds(timing_guest(0, outs)) / outs
    mixed = seconds(timing_guest(cpuids, rounds))
    per_kernel = max(mixed - rounds * per_user, 0.0) / (cpuids * rounds)
    host = detect().kind if backend == "kvm" else ""
    return Timing(backend, per_user, per_kernel, outs + rounds, cpuids * rounds, host)


GUEST = Guest(
    name="cpuid_loop",
    mode=16,
    code=CODE,
    listing=LISTING,
    description="three CPUIDs (answered in the kernel), one OUT of the count, then HLT",
    load_addr=LOAD_ADDR,
    mem_size=MEM_SIZE,
    stack_top=STACK_TOP,
)
