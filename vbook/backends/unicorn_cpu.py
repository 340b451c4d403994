"""A vCPU on the unicorn emulator that exits like KVM: the book's portable backend.

unicorn (QEMU's TCG as a library) runs the guest's real machine code. This
module wraps it so that, seen from user space, it behaves like ``KVM_RUN``
on ``/dev/kvm``: :meth:`UnicornVcpu.run` runs the guest until something a
VMM must handle and returns the same :class:`~vbook.backends.base.Exit`
objects :class:`~vbook.backends.kvm.KvmVcpu` returns. How each exit is made:

**Port I/O** — ``UC_HOOK_INSN`` hooks on IN and OUT stop the emulator in the
hook (``emu_stop``), which ends emulation right after that instruction —
because every run has an instruction count: unicorn then checks for a stop
request after each instruction. (Measured: without a count the rest of the
translation block still runs, e.g. the OUT after an IN.)
OUT: ``Exit(IO, IoExit(OUT, size, port, 1, data))`` with RIP still *on* the
OUT, as Linux 6.1 on VMX leaves it (``handle_io`` → ``kvm_fast_pio`` →
``kvm_fast_pio_out`` saves ``vcpu->arch.pio.linear_rip`` and sets
``complete_userspace_io = complete_fast_pio_out``); the next
:meth:`~UnicornVcpu.run` skips the OUT first — only if RIP is still where it
was (``kvm_is_linear_rip``): if user space moved RIP, nothing is skipped and
the guest runs from the new RIP. Exception: an OUT to port 0x7e leaves RIP
past it at the exit (``KVM_X86_QUIRK_OUT_7E_INC_RIP``, on by default:
``complete_fast_pio_out_port_0x7e``). IN: the exit reaches the caller *before*
the value exists, as on KVM: RAX and RIP are put back as they were (RIP on
the IN), the caller answers with :meth:`~UnicornVcpu.complete`, and the next
:meth:`~UnicornVcpu.run` writes the bytes into AL/AX/EAX (a 4-byte IN clears
RAX[63:32], like KVM's ``complete_fast_pio_in``) and moves RIP past the IN.
If user space moved RIP meanwhile, the IN is dropped, as KVM does. ``OUTS``
(and ``REP OUTS``) goes through KVM's instruction emulator
(``x86_emulate_instruction``, whose writeback moves RIP before the exit), so
RIP is past a plain ``OUTS`` at the exit; a ``REP OUTS`` keeps RIP on it after
every element, the last one too (``x86_emulate_insn`` skips the RIP
writeback while the repetition is not known to be over; the next run finds
RCX = 0 and moves past it) — unicorn does the same. One exit per element
with count 1, as KVM's instruction emulator did on the PVM host vbook was
measured on (VMX hardware may batch a ``REP OUTS`` into one exit with
count > 1). ``INS`` raises
:class:`~vbook.errors.GuestFault` ("not supported"): unicorn stores the
element before the VMM could answer.

**Where RIP is at an OUT exit: ``pio_rip``** — ``pio_rip="vmx"`` (the
default) is the behaviour above, Linux 6.1 on VMX (SVM's ``io_interception``
takes the same ``kvm_fast_pio`` path). ``pio_rip="pvm"`` copies a PVM host
(``kvm_pvm``, KVM without VMX/SVM, the machine vbook was measured on): it
emulates *every* ring-0 guest instruction in KVM's instruction emulator, an
OUT included, and ``x86_emulate_instruction``'s writeback moves RIP past the
OUT before the exit to user space (an OUT leaves ``pio.count`` set but not
``pio.in``, so ``writeback`` stays true); nothing is left to complete. So
with ``"pvm"`` every OUT exit has RIP past the OUT (a ``REP OUTS`` still
keeps it on the instruction, as above). Use it to compare
registers with that host's ``/dev/kvm`` (``vbook.host.detect().kind ==
"PVM"``). Everything else — IN, MMIO, the exits, ``kernel_exits`` (always
the VMX exits) — is the same in both modes: an emulated IN keeps RIP on it
(``writeback = false``, ``complete_emulated_pio``), as VMX does. How
``"vmx"`` is done: unicorn stops past the OUT and keeps that RIP;
:meth:`~UnicornVcpu.get_regs` reports the OUT's RIP, and the next run starts
past the OUT unless user space wrote the registers (``set_regs``, or took
:attr:`~UnicornVcpu.engine`), in which case RIP is compared as
``complete_fast_pio_out`` does — so an OUT loop pays no register access for it.

**MMIO** — RAM is one unicorn mapping of ``mem_size`` bytes at 0; every other
guest-physical address is left unmapped. ``UC_HOOK_MEM_{READ,WRITE}_UNMAPPED``
fire before such an access with the guest-physical address and size (and the
value, for a store); the hook stops emulation with RIP still on the
instruction. A load becomes ``Exit(MMIO, MmioExit(gpa, len, False))`` at once
(RIP on the instruction, as on KVM: ``x86_emulate_instruction`` clears
``writeback`` for an MMIO read and finishes the instruction in
``complete_emulated_mmio``). To finish an instruction, a temporary page is
mapped over each address it touched, holding the bytes
:meth:`~UnicornVcpu.complete` supplied, exactly one instruction is executed
(``emu_start(count=1)``) while a write hook records stores into those pages,
and the pages are unmapped again. Every recorded store is one
``Exit(MMIO, MmioExit(gpa, len, True, data))`` reported *after* the
instruction completed (RIP past it), as KVM's emulator does (for a store
``writeback`` stays true: RIP moves before the exit); so a read-modify-write
gives a read exit and then a write exit, and an 8-byte access is one exit of
length 8.

**HLT** — unicorn cannot hook HLT; ``emu_start`` returns with RIP just past
it. A ``UC_HOOK_BLOCK`` hook remembers the last translation block; it was a
HLT if that block ended exactly at RIP with the byte 0xF4 (HLT always ends a
block), so a budget that runs out after some other instruction ending in
0xF4 is never mistaken for one.

**VMCALL / VMMCALL** — both raise "invalid instruction" in unicorn; the
``UC_HOOK_INSN_INVALID`` hook hands them to
:func:`vbook.models.hypercall.kvm_emulate_hypercall` (CPL and long mode taken
from the vCPU). Handled "in the kernel": RAX = result (32 bits outside 64-bit
mode), RIP += 3, the guest runs on, no exit. ``KVM_HC_MAP_GPA_RANGE`` with
``hypercall_exit_enabled`` set: ``Exit(HYPERCALL, hypercall=...)`` with RIP
on the VMCALL; :meth:`~UnicornVcpu.complete` takes the 8-byte ``ret``.

**Exceptions and triple faults** — unicorn delivers no exceptions through
the guest's IDT; ``UC_HOOK_INTR`` (and the invalid-instruction hook, for #UD)
sees the vector. vbook models only whether delivery is *possible*: vector
*v*'s gate must lie within IDTR.limit (4 bytes per vector in real mode, 8 in
protected mode, 16 in long mode) and, outside real mode, be present. If *v*
cannot be delivered the CPU raises #GP (13); if that cannot be delivered
either, #DF (8); if #DF cannot be delivered the CPU shuts down — a triple
fault, ``Exit(SHUTDOWN, detail="triple fault")``. If some vector on that
chain *can* be delivered, :class:`~vbook.errors.GuestFault` is raised with
that vector and RIP: the guest has a handler, but this backend does not
follow it there (KVM would).

**Fetch from an address with no RAM** — ``Exit(INTERNAL_ERROR)`` with detail
"suberror 1 (EMULATION) …", the exit KVM gives when it cannot fetch the
instruction to emulate (measured: a far jump past RAM).

**Budget** — every :meth:`~UnicornVcpu.run` may execute at most ``budget``
instructions (``emu_start(count=budget)``, each iteration of a ``REP``
string instruction counting as one); a guest that runs that long without an
exit raises :class:`~vbook.errors.BudgetExhausted` naming RIP and
the budget (KVM's equivalent is a time limit). The vCPU stays usable.

**A unicorn quirk repaired** — when unicorn 2.1.4 stops a run in the
middle of a translation block (an IN/OUT hook, the instruction count) while
the guest has paging on, it takes an internal page fault at linear address
-2 that the guest never sees, except that QEMU's ``env->old_exception`` is
left at #PF or #DF. QEMU's double-fault logic then turns the guest's *next*
exception (a VMCALL's #UD, a #PF) into a "triple fault", which unicorn
reports as a silent HLT at the faulting instruction. After every run this
backend puts ``old_exception`` back to -1 (its value when no exception is
being delivered); the field's offset in unicorn's saved CPU context is found
once per process by a probe (:func:`_old_exception_offset`). CR2 is left
holding that -2.

**VM exits, also the ones KVM keeps** — ``kernel_exits`` lists, in order,
every VM exit a VMX CPU running this guest under KVM (Linux 6.1, EPT on)
would take for the instructions below, as :class:`KernelExit` records with
the VMX basic exit reason, qualification, guest-physical address, the
6.1 handler and what it read — also the exits KVM handles without returning
to user space. :func:`vbook.models.kvm_kernel.kvm_run` walks them.

* ``CPUID`` — a ``UC_HOOK_INSN`` hook answers from
  :data:`vbook.models.kvm_kernel.CPUID_TABLE` (``kvm_cpuid`` semantics), a
  fixed table: real KVM answers from the table the VMM set with
  ``KVM_SET_CPUID2`` (vbook's KVM backend: the host's supported CPUID), so
  the *values* differ between hosts, the exit does not. EAX..EDX are written
  zero-extended, RIP moves past it; no exit to user space.
* ``IO_INSTRUCTION`` for every IN/OUT (qualification as
  :class:`vbook.models.vmx.IoQualification`), ``HLT``, ``VMCALL``.
* MMIO: one ``EPT_VIOLATION`` for the first access to a page with no memory
  slot (KVM then installs an MMIO SPTE), ``EPT_MISCONFIG`` for every later
  one — one VM exit per *instruction*, with all its accesses in
  ``before["accesses"]`` (an instruction that reads and writes gives one VM
  exit and two exits to user space).
* ``EXCEPTION_NMI`` for #UD (KVM always intercepts it; ``handle_ud``
  re-injects it, or rewrites a VMMCALL into VMCALL), then ``TRIPLE_FAULT``
  when the guest cannot deliver an exception.
* ``MSR_READ`` / ``MSR_WRITE`` for every RDMSR / WRMSR of an MSR KVM
  intercepts (all but :data:`vbook.models.vmx.MSR_PASSTHROUGH_READ` /
  ``_WRITE``), with ECX (and EDX:EAX). unicorn 2.1.4 refuses instruction
  hooks on them (UC_ERR_HOOK, measured), so at load time every ``0F 32`` /
  ``0F 30`` in the guest's code gets a ``UC_HOOK_CODE`` hook on exactly that
  address — it fires only if an instruction starts there, and costs nothing
  elsewhere (measured: the OUT-loop rate is unchanged). Code the guest writes
  at run time is not covered. The value is whatever unicorn's MSR holds;
  unicorn then executes the instruction itself.
* Not reported: CR_ACCESS (which MOV-to-CR exits depends on the CR0/CR4
  guest/host masks), the EPT violations that map guest RAM pages on first
  touch, and everything asynchronous (host interrupts, the preemption timer).

**Modes** — the guest starts like a reset CPU in real mode (CS = DS = ES =
SS = 0, IP = ``load_addr``, IDTR/GDTR limit 0xffff as KVM sets them) and may
switch itself to protected or long mode. unicorn is opened in its 64-bit
mode, so that RIP and R8–R15 can be read and written whatever the guest
does, and loaded with the register state of a unicorn CPU reset into real
mode (a saved context of a 16-bit engine): the guest's own CR0/CR4/EFER
writes and far jumps then move it between modes as on hardware.

**Starting in 64-bit mode, at CPL 0 or 3** — what a VMM does with
``KVM_SET_SREGS`` (KVM selftests' ``vm_create``;
:func:`vbook.backends.long_mode.start_in_long_mode` on either backend),
:meth:`UnicornVcpu.enter_long_mode` does with what unicorn 2.1.4 allows
(measured): in ``UC_MODE_64`` a ``reg_write`` of CS, SS, DS or ES changes
only the selector, never the descriptor cache nor the CPL (QEMU's CPL is in
``hflags``, set from SS.DPL when SS is loaded), and CR/EFER writes are taken
as given with no privilege check. So the vCPU is reset to the state of a fresh
``UC_MODE_64`` engine (64-bit code, CPL 0, paging off) and the CPU loads the
segments itself: a six-instruction trampoline on a scratch page outside RAM
(``mov ds/es/fs/gs``, then ``iretq`` to ``cs:rip``, ``ss:rsp``) — every
descriptor checked as hardware checks it, the GDT read at its physical address
(paging is still off, so no accessed bit is set in guest RAM) — then TR, IDTR
(empty), CR4, EFER, CR3 and CR0 are written. CPL 3 is then real: HLT or MOV CR
raise #GP, a supervisor page raises #PF with U in the error code
(tests/test_long_mode.py, tests/test_paging_unicorn.py). One difference from
hardware and KVM stays: unicorn never checks I/O permission (its
``gen_check_io`` returns at once, "Unicorn: allow all I/O instructions";
measured: a CPL-3 ``OUT`` to a port the TSS bitmap denies, IOPL 0, still
reaches the OUT hook), so the TSS's I/O bitmap is never read — on KVM the
bitmap is read for a CPL-3 OUT, which sets the accessed bit of its PTE.

**Guest RAM** — one anonymous ``mmap`` of ``mem_size`` bytes that unicorn runs
the guest on in place (``uc.mem_map_ptr``, as KVM runs it on the VMM's mmap);
:attr:`UnicornVcpu.memory` is a :class:`~vbook.memory.GuestMemory` over it, so
a model and the guest share the bytes. The engine keeps the mapping alive
(``uc.vbook_ram``) as long as it exists, also past :meth:`UnicornVcpu.close`
if a reader holds :attr:`UnicornVcpu.engine`. unicorn translates guest code
once and reuses the translation; a store by the guest into a page it runs code
from invalidates it, a store from outside does not — neither into the buffer
nor with ``uc.mem_write`` (measured: the old instructions ran again). So the
block hook notes the RAM pages code runs from, writes through ``memory`` and
:meth:`UnicornVcpu.write_memory` note the pages they write, and a ``run()``
after a write into a code page first drops all translations
(``uc.ctl_flush_tb``; ``ctl_remove_cache`` takes virtual addresses). Stores
through ``memory.buf`` are not noted.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from vbook.backends.base import Exit, HypercallExit, IoExit, MmioExit, Regs, VCpu, VcpuStats
from vbook.errors import (
    BackendUnavailable,
    BudgetExhausted,
    GuestError,
    GuestFault,
    MemoryAccessError,
    VbookError,
)
from vbook.guests.base import Guest
from vbook.memory import GuestMemory
from vbook.models.kvm_api import ExitReason, IoDirection
from vbook.models.vmx import (
    MSR_PASSTHROUGH_READ,
    MSR_PASSTHROUGH_WRITE,
    VmxExitReason,
    ept_violation_qualification,
    io_qualification,
)

PAGE = 0x1000
DEFAULT_BUDGET = 1_000_000

#: where RIP is at an OUT exit (see "Where RIP is at an OUT exit" in the module doc):
#: "vmx" — on the OUT, skipped by the next run (Linux 6.1 on VMX, the default);
#: "pvm" — past the OUT (a PVM host, which emulates the OUT before the exit)
PIO_RIP_MODES = ("vmx", "pvm")
#: KVM_X86_QUIRK_OUT_7E_INC_RIP (on by default): an OUT to this port has RIP past it at the exit
OUT_7E_PORT = 0x7E

VMCALL = b"\x0f\x01\xc1"  # Intel
VMMCALL = b"\x0f\x01\xd9"  # AMD
HYPERCALL_LEN = 3

#: exception names by vector (SDM Vol. 3A, "Exception and Interrupt Vectors")
VECTOR_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
                8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
                17: "#AC", 18: "#MC", 19: "#XM"}
GP, DF, UD = 13, 8, 6

_MSR_EFER = 0xC0000080
_EFER_LMA = 1 << 10
_CR0_PE, _CR0_WP, _CR0_PG = 1 << 0, 1 << 16, 1 << 31
_CR4_PSE, _CR4_PAE = 1 << 4, 1 << 5
_UNTIL = 2**64 - 1  # an emu_start end address no guest reaches
_MASK64 = 2**64 - 1
_ADDR = 0x000F_FFFF_FFFF_F000  # physical-address bits of a 64-bit paging entry
_STRING_IO = frozenset((0x6C, 0x6D))  # INS
_STRING_OUT = frozenset((0x6E, 0x6F))  # OUTS
_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF2, 0xF3))

_R_IO, _R_MMIO = ExitReason.IO, ExitReason.MMIO
_IN, _OUT = IoDirection.IN, IoDirection.OUT


def _unicorn() -> Any:
    """The unicorn module, or BackendUnavailable saying why it cannot be used."""
    try:
        import unicorn
    except ImportError as e:
        raise BackendUnavailable("unicorn", (
            f"the unicorn package cannot be imported ({e}); "
            "pip install 'unicorn>=2.1.4,<2.2'")) from None
    version = getattr(unicorn, "__version__", "0")
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    if (major, minor) < (2, 1):
        raise BackendUnavailable("unicorn", (
            f"unicorn {version} is too old: vbook needs 2.1 (pip install 'unicorn>=2.1.4,<2.2')"))
    return unicorn


def _reg64_reader(uc: Any) -> Callable[[int], int]:
    """A fast read of one 64-bit register (RIP, RAX, ...): ``uc_reg_read`` through ctypes.

    ``Uc.reg_read`` of the Python binding costs ~1.4 us (it looks up the
    register's class every time); the C call with a reused buffer ~0.35 us,
    and the hot path of an exit reads RIP twice. Falls back to ``reg_read``
    if the binding's internals (``uclib``, ``_uch``) are not where 2.1 keeps them.
    """
    try:
        from unicorn.unicorn_py3.unicorn import uclib
        c_read, handle = uclib.uc_reg_read, uc._uch
    except (ImportError, AttributeError):  # pragma: no cover - another binding layout
        return uc.reg_read
    buf = ctypes.c_uint64()
    ref = ctypes.byref(buf)

    def read(reg_id: int) -> int:
        if c_read(handle, reg_id, ref):  # pragma: no cover - only 64-bit ids are passed
            return uc.reg_read(reg_id)
        return buf.value

    return read


def _reg64_writer(uc: Any) -> Callable[[int, int], None]:
    """The write twin of :func:`_reg64_reader` (``uc_reg_write`` through ctypes)."""
    try:
        from unicorn.unicorn_py3.unicorn import uclib
        c_write, handle = uclib.uc_reg_write, uc._uch
    except (ImportError, AttributeError):  # pragma: no cover - another binding layout
        return uc.reg_write
    buf = ctypes.c_uint64()
    ref = ctypes.byref(buf)

    def write(reg_id: int, value: int) -> None:
        buf.value = value & _MASK64
        if c_write(handle, reg_id, ref):  # pragma: no cover - only 64-bit ids are passed
            uc.reg_write(reg_id, value)

    return write


_PROBE_CODE = {
    0: bytes.fromhex("31c9f7f1f4"),  # xor ecx, ecx; div ecx -> #DE
    13: bytes.fromhex("66b808008ed8f4"),  # mov ax, 8; mov ds, ax (GDT limit 0) -> #GP
}
_old_exception_cache: list[int | None] = []


def _old_exception_offset(uc_mod: Any) -> int | None:
    """Where ``CPUX86State.old_exception`` sits in unicorn's saved CPU context (None: unknown).

    Found by running two contributory exceptions (#DE, #GP) on a scratch
    engine: the one 4-byte field that goes from -1 to 0, and from -1 to 13.
    """
    if _old_exception_cache:
        return _old_exception_cache[0]
    candidates: set[int] | None = None
    try:
        for vector, code in _PROBE_CODE.items():
            uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_64)
            uc.mem_map(0, PAGE)
            uc.mem_write(0, code)
            uc.hook_add(uc_mod.UC_HOOK_INTR, lambda u, intno, _: u.emu_stop())
            before = bytes(uc.context_save())
            uc.emu_start(0, len(code), 0, 10)
            after = bytes(uc.context_save())
            found = {off for off in range(0, len(before) - 3, 4)
                     if int.from_bytes(before[off:off + 4], "little", signed=True) == -1
                     and int.from_bytes(after[off:off + 4], "little", signed=True) == vector}
            candidates = found if candidates is None else candidates & found
    except Exception:  # pragma: no cover - a unicorn that cannot run the probe
        candidates = None
    offset = min(candidates) if candidates and len(candidates) == 1 else None
    _old_exception_cache.append(offset)
    return offset


def _old_exception_repair(uc: Any, uc_mod: Any) -> Callable[[], None]:
    """A function that sets the engine's ``old_exception`` back to -1 (see the module doc)."""
    offset = _old_exception_offset(uc_mod)
    try:
        from unicorn.unicorn_py3.unicorn import uclib
        save, restore, handle = uclib.uc_context_save, uclib.uc_context_restore, uc._uch
    except (ImportError, AttributeError):  # pragma: no cover - another binding layout
        offset = None
    if offset is None:  # pragma: no cover - nothing known to repair
        return lambda: None
    context = uc.context_save()  # reused: saving into it allocates nothing
    field = ctypes.c_int32.from_address(ctypes.cast(context.context, ctypes.c_void_p).value
                                        + offset)

    def repair() -> None:
        save(handle, context.context)
        if field.value != -1:
            field.value = -1
            restore(handle, context.context)

    repair.context = context  # type: ignore[attr-defined]  # keep the buffer alive
    return repair


# --- the #PF error code ----------------------------------------------------------------

#: (PD entry for 2..4 MiB, store?, the error code a #PF on [0x200000] must give): not
#: present read 0, not present write 2 (W), reserved bit 9 (RSVD | P), read-only write 3
_PF_PROBES = ((0, False, 0), (0, True, 2), (0x200000 | 0x83 | 1 << 13, False, 9),
              (0x200000 | 0x81, True, 3))
_error_code_cache: list[int | None] = []


def _error_code_offset(uc_mod: Any) -> int | None:
    """Where ``CPUX86State.error_code`` sits in unicorn's saved CPU context (None: unknown).

    Found as :func:`_old_exception_offset` is: four page faults whose error
    codes differ, on a scratch engine in 64-bit mode; the one 4-byte field
    that holds each of them afterwards.
    """
    if _error_code_cache:
        return _error_code_cache[0]
    from unicorn import x86_const as x

    candidates: set[int] | None = None
    try:
        for pd1, store, code in _PF_PROBES:
            uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_64)
            uc.mem_map(0, 0x400000)
            # PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000: [0] 2 MiB at 0 (the code), [1] the probe
            uc.mem_write(0x1000, (0x2003).to_bytes(8, "little"))
            uc.mem_write(0x2000, (0x3003).to_bytes(8, "little"))
            uc.mem_write(0x3000, (0x83).to_bytes(8, "little") + pd1.to_bytes(8, "little"))
            insn = bytes.fromhex("890425" if store else "8b0425") + (0x200000).to_bytes(4, "little")
            uc.mem_write(0x10000, insn)
            uc.reg_write(x.UC_X86_REG_CR3, 0x1000)
            uc.reg_write(x.UC_X86_REG_CR4, _CR4_PAE)
            uc.msr_write(_MSR_EFER, 0x500)
            uc.reg_write(x.UC_X86_REG_CR0, _CR0_PE | _CR0_PG | _CR0_WP)
            seen: list[bytes] = []  # the context in the hook: after it, unicorn's stop at -2
            uc.hook_add(uc_mod.UC_HOOK_INTR, _save_context, seen)  # overwrites error_code
            uc.emu_start(0x10000, _UNTIL, 0, 1)
            after = seen[0]
            found = {off for off in range(0, len(after) - 3, 4)
                     if int.from_bytes(after[off:off + 4], "little") == code}
            candidates = found if candidates is None else candidates & found
    except Exception:  # pragma: no cover - a unicorn that cannot run the probe
        candidates = None
    offset = min(candidates) if candidates and len(candidates) == 1 else None
    _error_code_cache.append(offset)
    return offset


def _save_context(uc: Any, intno: int, out: list[bytes]) -> None:
    out.append(bytes(uc.context_save()))
    uc.emu_stop()


def exception_error_code(uc: Any) -> int | None:
    """The error code of the last exception the engine ``uc`` raised (None: not known here).

    unicorn hands a hook only the vector (``UC_HOOK_INTR``); the error code a
    CPU pushes — for #PF the P/W/U/RSVD/I bits — stays in QEMU's
    ``env->error_code``, read here from a saved context (its place found by
    :func:`_error_code_offset`). Read it *in* the ``UC_HOOK_INTR`` hook: once
    ``emu_start`` has returned, unicorn's internal stop (the fault at -2 of the
    module doc) has overwritten it, as it overwrites CR2.
    """
    import unicorn

    offset = _error_code_offset(unicorn)
    if offset is None:  # pragma: no cover - a unicorn whose context the probe cannot read
        return None
    context = uc.context_save()
    return ctypes.c_int32.from_address(ctypes.cast(context.context, ctypes.c_void_p).value
                                       + offset).value


# --- starting in 64-bit mode -----------------------------------------------------------

_long_mode_context_cache: list[Any] = []


def _long_mode_context(uc_mod: Any) -> Any:
    """The saved CPU state of a fresh ``UC_MODE_64`` engine: 64-bit code (CS.L, EFER.LMA),
    CPL 0, paging off (unicorn's reset for that mode)."""
    if not _long_mode_context_cache:
        fresh = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_64)
        _long_mode_context_cache.append(fresh.context_save())
    return _long_mode_context_cache[0]


#: what a VMM's KVM_SET_SREGS sets and unicorn cannot: the CPU itself loads the
#: segment registers from the guest's GDT, then IRETQ loads CS and SS (and so the CPL)
#: ``mov eax, <ds>; mov ds, eax; mov es, eax; mov fs, eax; mov gs, eax; iretq``
_TRAMPOLINE = (b"\xb8{ds}" b"\x8e\xd8" b"\x8e\xc0" b"\x8e\xe0" b"\x8e\xe8" b"\x48\xcf")
_TRAMPOLINE_INSNS = 6


def enter_long_mode(uc: Any, *, gdt: int, gdt_limit: int, cs: int, ds: int,
                    tr: tuple[int, int, int, int], cr0: int, cr3: int, cr4: int, efer: int,
                    rip: int, rsp: int, rflags: int = 0x2) -> None:
    """Put the unicorn engine ``uc`` (in 64-bit mode, CPL 0) at ``rip`` in 64-bit mode at
    CPL ``cs & 3``, on the GDT at ``gdt`` and the page tables at ``cr3``.

    What ``KVM_SET_SREGS`` does for a VMM, done with what unicorn 2.1.4 offers
    (measured): in ``UC_MODE_64`` a ``reg_write`` of CS, SS, DS or ES sets only
    the *selector* — not the descriptor cache, not the CPL (QEMU keeps the CPL
    in ``hflags``, set from SS.DPL when SS is loaded) — so the VMM lets the CPU
    load them: a 6-instruction trampoline, on a scratch page mapped just past
    the highest mapped address, loads DS/ES/FS/GS with ``ds`` and returns with ``iretq``
    to ``cs:rip`` with ``ds:rsp`` — the CPU checks every descriptor as
    hardware would, and SS.DPL becomes the CPL. It runs with paging still off
    (unicorn's 64-bit reset state), so the GDT is read at its physical address
    and guest RAM is not touched (no accessed bit set anywhere); the scratch
    page is unmapped again. Then TR = ``tr`` (selector, base, limit, flags —
    QEMU's cache flags: P = bit 15, type at bit 8), LDTR null, IDTR base 0
    limit 0, CR4, EFER, CR3 and CR0 (PG last) are written, and RIP, RSP,
    RFLAGS. Raises :class:`~vbook.errors.GuestError` if the CPU refused (a
    descriptor that does not fit the selector). Other registers are left as
    they are.
    """
    import unicorn as uc_mod
    from unicorn import x86_const as x

    if cs & 3 != ds & 3:
        raise GuestError(f"CS {cs:#x} and SS {ds:#x} must have the same RPL (the CPL)")
    top = max(end for _, end, _ in uc.mem_regions())
    scratch = (top + PAGE) & ~(PAGE - 1)
    code = _TRAMPOLINE.replace(b"{ds}", ds.to_bytes(4, "little"))
    frame = b"".join(v.to_bytes(8, "little") for v in (rip, cs, rflags, rsp, ds))
    faults: list[tuple[int, int]] = []

    def fault(u: Any, intno: int, _: Any) -> None:
        faults.append((intno, u.reg_read(x.UC_X86_REG_RIP)))
        u.emu_stop()

    uc.mem_map(scratch, PAGE, uc_mod.UC_PROT_ALL)
    hook = uc.hook_add(uc_mod.UC_HOOK_INTR, fault)
    try:
        uc.mem_write(scratch, frame)
        uc.mem_write(scratch + 0x100, code)
        uc.reg_write(x.UC_X86_REG_GDTR, (0, gdt, gdt_limit, 0))
        uc.reg_write(x.UC_X86_REG_RSP, scratch)
        error = None
        try:
            uc.emu_start(scratch + 0x100, _UNTIL, 0, _TRAMPOLINE_INSNS)
        except uc_mod.UcError as e:
            error = e
        uc.ctl_remove_cache(scratch, scratch + PAGE)  # paging is off: virtual = physical
    finally:
        uc.hook_del(hook)
        uc.mem_unmap(scratch, PAGE)
    if faults or error is not None or uc.reg_read(x.UC_X86_REG_RIP) != rip \
            or uc.reg_read(x.UC_X86_REG_CS) != cs:
        why = (f"{_vname(faults[0][0])} at trampoline offset {faults[0][1] - scratch - 0x100:#x}"
               if faults else str(error) if error is not None else "it stopped elsewhere")
        raise GuestError(f"unicorn refused to load CS {cs:#x} / SS and DS {ds:#x} from the GDT "
                         f"at {gdt:#x} (limit {gdt_limit:#x}): {why}")
    uc.reg_write(x.UC_X86_REG_TR, tr)
    uc.reg_write(x.UC_X86_REG_LDTR, (0, 0, 0, 0))
    uc.reg_write(x.UC_X86_REG_IDTR, (0, 0, 0, 0))
    uc.reg_write(x.UC_X86_REG_CR4, cr4)
    uc.msr_write(_MSR_EFER, efer)
    uc.reg_write(x.UC_X86_REG_CR3, cr3)
    uc.reg_write(x.UC_X86_REG_CR0, cr0)
    uc.reg_write(x.UC_X86_REG_RIP, rip)
    uc.reg_write(x.UC_X86_REG_RSP, rsp)
    uc.reg_write(x.UC_X86_REG_RFLAGS, rflags)


@dataclass
class _Access:
    """One guest-physical access of the instruction being finished."""

    gpa: int
    size: int
    is_write: bool
    data: bytes | None = None  # a store's bytes, or a load's answer once complete() gave it


@dataclass(frozen=True)
class KernelExit:
    """One VM exit, as KVM's exit handling sees it (see "VM exits" in the module doc).

    ``reason`` is the VMX basic exit reason's name without ``EXIT_REASON_``
    (e.g. "CPUID"), ``exit_reason`` its number
    (:class:`vbook.models.vmx.VmxExitReason`), ``rip`` the guest RIP of the
    instruction, ``handler`` the Linux 6.1 ``kvm_vmx_exit_handlers`` entry,
    ``qualification`` the VMCS exit qualification (I/O: port, size,
    direction), ``gpa`` the guest-physical address of an EPT exit,
    ``before`` / ``after`` what the handler read and wrote (registers, the
    OUT data, the MMIO accesses), and ``user_exit`` whether this VM exit
    also came back from :meth:`UnicornVcpu.run` — KVM with no in-kernel
    devices returns it to user space.
    """

    reason: str
    rip: int
    handler: str
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    exit_reason: int = -1
    qualification: int = 0
    gpa: int | None = None
    user_exit: bool = False

    def __post_init__(self) -> None:
        if self.exit_reason < 0:
            object.__setattr__(self, "exit_reason", int(VmxExitReason[self.reason]))

    def to_dict(self) -> dict:
        return {"reason": self.reason, "exit_reason": self.exit_reason, "rip": self.rip,
                "handler": self.handler, "qualification": self.qualification,
                "gpa": self.gpa, "user_exit": self.user_exit,
                "before": dict(self.before), "after": dict(self.after)}

    def __str__(self) -> str:
        where = "→ user space" if self.user_exit else "(kernel)"
        return f"{self.reason} at rip {self.rip:#x}: {self.handler} {where}"


class _UnicornRam(GuestMemory):
    """``UnicornVcpu.memory``: the engine's RAM, and a note of where a model wrote it.

    unicorn (QEMU's TCG) translates guest code once and reuses the translation.
    A store *by the guest* into a page with translated code invalidates it
    (QEMU's dirty-code tracking), a store by the host into the buffer does not
    (measured, unicorn 2.1.4: the old instructions ran again). So every
    :meth:`write` (``write_u*`` go through it) notes the pages it wrote in
    ``written`` (a set shared with the vCPU), and the next ``run()`` drops the
    translations made from them. On KVM nothing is needed: the CPU fetches from RAM.
    """

    written: set[int]  # page numbers

    def write(self, addr: int, data: bytes) -> None:
        GuestMemory.write(self, addr, data)
        n = len(data)
        if n:
            first, last = addr >> 12, (addr + n - 1) >> 12
            if first == last:
                self.written.add(first)
            else:
                self.written.update(range(first, last + 1))


class UnicornVcpu(VCpu):
    """One vCPU on unicorn with ``guest`` loaded, driven like KVM_RUN (see the module doc).

    ``budget`` caps the instructions of one :meth:`run`;
    ``hypercall_exit_enabled`` is the mask a VMM would pass to
    ``KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)`` (bit 12: ``KVM_HC_MAP_GPA_RANGE``);
    ``kernel_exits``, if given, is the list the VM exits are appended to (so a
    caller that only gets the run's result, e.g. ``run_guest(...,
    kernel_exits=log)``, still sees them); ``pio_rip`` is where RIP is at an
    OUT exit, one of :data:`PIO_RIP_MODES`: ``"vmx"`` (default, Linux 6.1 on
    VMX: on the OUT until the next run) or ``"pvm"`` (past it, as the PVM host
    vbook was measured on) — see the module doc.
    """

    backend = "unicorn"

    def __init__(self, guest: Guest, budget: int = DEFAULT_BUDGET,
                 hypercall_exit_enabled: int = 0, kernel_exits: list | None = None,
                 pio_rip: str = "vmx"):
        if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
            raise VbookError(f"budget must be a positive number of instructions, got {budget!r}")
        if not isinstance(hypercall_exit_enabled, int) or hypercall_exit_enabled < 0:
            raise VbookError("hypercall_exit_enabled must be a non-negative bit mask, "
                             f"got {hypercall_exit_enabled!r}")
        if kernel_exits is not None and not isinstance(kernel_exits, list):
            raise VbookError(f"kernel_exits must be a list to append to, got {kernel_exits!r}")
        if pio_rip not in PIO_RIP_MODES:
            raise VbookError(f"pio_rip must be one of {', '.join(map(repr, PIO_RIP_MODES))} "
                             f"(where RIP is at an OUT exit), got {pio_rip!r}")
        _check_guest(guest)
        uc_mod = _unicorn()
        from unicorn import x86_const as x

        self.guest = guest
        self.budget = budget
        self.hypercall_exit_enabled = hypercall_exit_enabled
        self._pio_rip = pio_rip  # read-only (pio_rip): the OUT cache depends on it
        self.mem_size = guest.mem_size
        self._x = x
        self._UcError = uc_mod.UcError
        self._counts: dict[str, int] = {}
        self._runs = 0
        self._exit_cache: dict[tuple, Exit] = {}
        self._event: tuple | None = None  # what a hook saw during the last emu_start
        self._last_block = (0, 0)  # (linear address, size) of the last translation block
        self._pending: tuple | None = None  # an exit waiting for complete()
        self._answer: bytes | None = None  # what complete() gave for it
        self._insn: list[_Access] | None = None  # MMIO accesses of an unfinished instruction
        self._queued: list[Exit] = []  # more exits of an instruction that already finished
        # an OUT exit left RIP on the OUT (pio_rip "vmx"): (RIP of the OUT, RIP past it),
        # skipped by the next run() if RIP is still there (complete_fast_pio_out).
        # _out_lazy: unicorn itself still holds the RIP past the OUT (get_regs shows
        # the OUT's); the first register write or engine access puts it on the OUT.
        self._out_done: tuple[int, int] | None = None
        self._out_lazy = False
        self._string_io: dict[int, bool] = {}  # RIP of an IN -> is it an INS?
        self._string_out: dict[int, bool] = {}  # RIP of an OUT -> is it an OUTS?
        self.hypercalls = 0  # handled "in the kernel" (KVM: vcpu->stat.hypercalls)
        #: every VM exit, in order (see :class:`KernelExit` and the module doc),
        #: also the ones KVM handles without returning to user space; cleared by
        #: nobody — read and slice it
        self.kernel_exits: list[KernelExit] = kernel_exits if kernel_exits is not None else []
        self._vmexit_cache: dict[tuple, KernelExit] = {}
        self._out_cache: dict[tuple, list] = {}  # see _hook_out, _out_miss
        self._mmio_gfns: set[int] = set()  # pages KVM holds an MMIO SPTE for (EPT_MISCONFIG)
        self._mmio_record = -1  # index in kernel_exits of the unfinished MMIO instruction
        self._dead = ""

        # unicorn's 64-bit mode (RIP, R8-R15 readable in every mode) holding the
        # register state of a CPU reset into real mode (see the module docstring)
        real = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_16)
        reset_context = real.context_save()
        uc = self._uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_64)
        uc.context_restore(reset_context)
        del real
        # guest RAM: an anonymous mmap of this process that unicorn uses in place
        # (mem_map_ptr), as KVM uses the VMM's mmap; the engine keeps it alive
        ram = mmap.mmap(-1, guest.mem_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                        prot=mmap.PROT_READ | mmap.PROT_WRITE)
        view = ctypes.c_char.from_buffer(ram)
        uc.mem_map_ptr(0, guest.mem_size, uc_mod.UC_PROT_ALL, ctypes.addressof(view))
        del view  # no export left behind: only the engine's pointer
        uc.vbook_ram = ram  # the mapping lives as long as the engine that points into it
        self._ram: mmap.mmap | None = ram
        self._written: set[int] = set()  # pages written through ``memory`` since the last run
        self._code_blocks: set[int] = set()  # linear addresses of the blocks seen (_note_code)
        self._code_phys: set[int] = set()  # the RAM pages their code is in
        self._memory: _UnicornRam | None = _UnicornRam.over(
            ram, record=False, owner=f"UnicornVcpu({guest.name!r})")
        self._memory.written = self._written
        uc.mem_write(guest.load_addr, guest.code)
        uc.reg_write(x.UC_X86_REG_IDTR, (0, 0, 0xFFFF, 0))  # as KVM's vCPU reset
        uc.reg_write(x.UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
        uc.reg_write(x.UC_X86_REG_RSP, guest.stack_top)
        uc.reg_write(x.UC_X86_REG_RFLAGS, 0x2)
        uc.reg_write(x.UC_X86_REG_RIP, guest.load_addr)

        uc.hook_add(uc_mod.UC_HOOK_INSN, self._hook_out, None, 1, 0, x.UC_X86_INS_OUT)
        uc.hook_add(uc_mod.UC_HOOK_INSN, self._hook_in, None, 1, 0, x.UC_X86_INS_IN)
        uc.hook_add(uc_mod.UC_HOOK_INSN, self._hook_cpuid, None, 1, 0, x.UC_X86_INS_CPUID)
        code = guest.code
        for off in range(len(code) - 1):  # RDMSR 0F 32 / WRMSR 0F 30 (see the module doc)
            if code[off] == 0x0F and code[off + 1] in (0x30, 0x32):
                addr = guest.load_addr + off
                uc.hook_add(uc_mod.UC_HOOK_CODE, self._hook_msr, None, addr, addr)
        uc.hook_add(uc_mod.UC_HOOK_MEM_READ_UNMAPPED | uc_mod.UC_HOOK_MEM_WRITE_UNMAPPED,
                    self._hook_unmapped)
        uc.hook_add(uc_mod.UC_HOOK_MEM_FETCH_UNMAPPED, self._hook_fetch_unmapped)
        uc.hook_add(uc_mod.UC_HOOK_INSN_INVALID, self._hook_invalid)
        uc.hook_add(uc_mod.UC_HOOK_INTR, self._hook_intr)
        uc.hook_add(uc_mod.UC_HOOK_BLOCK, self._hook_block)
        self._uc_mod = uc_mod
        self._rd, self._wr = _reg64_reader(uc), _reg64_writer(uc)
        self._repair = _old_exception_repair(uc, uc_mod)
        self._RIP, self._RAX = x.UC_X86_REG_RIP, x.UC_X86_REG_RAX
        self._CPUID_REGS = (x.UC_X86_REG_RAX, x.UC_X86_REG_RBX, x.UC_X86_REG_RCX,
                            x.UC_X86_REG_RDX)

    # --- the VCpu interface ------------------------------------------------------------

    @classmethod
    def check_available(cls) -> None:
        """Raise :class:`~vbook.errors.BackendUnavailable` if unicorn cannot be used here."""
        _unicorn()

    @classmethod
    def from_guest(cls, guest: Guest, budget: int = DEFAULT_BUDGET,
                   hypercall_exit_enabled: int = 0, kernel_exits: list | None = None,
                   pio_rip: str = "vmx", **kw: Any) -> UnicornVcpu:
        """A vCPU with ``guest`` loaded, in real mode at ``guest.load_addr``.

        Options as for :class:`UnicornVcpu` (``pio_rip="pvm"`` to have RIP past
        an OUT at its exit, as on a PVM host). ``timeout`` and ``dev`` (options
        of the KVM backend) are accepted and ignored, so
        ``open_vcpu(guest, "auto", timeout=...)`` works on both.
        """
        unknown = set(kw) - {"timeout", "dev"}
        if unknown:
            raise VbookError(f"unicorn backend: unknown option(s) {', '.join(sorted(unknown))}; "
                             "it takes budget=, hypercall_exit_enabled=, kernel_exits= and "
                             "pio_rip=")
        return cls(guest, budget=budget, hypercall_exit_enabled=hypercall_exit_enabled,
                   kernel_exits=kernel_exits, pio_rip=pio_rip)

    def run(self) -> Exit:
        """Run the guest until its next exit to user space (KVM_RUN) and return the exit."""
        if self._uc is None:
            raise VbookError("this UnicornVcpu is closed")
        if self._dead:
            raise VbookError(f"the vCPU {self._dead}; make a new one to run the guest again")
        if self._written:  # a model wrote guest RAM: no stale translated code may run
            self._drop_translations()
        pending = self._pending
        if pending is not None:
            if pending[0] != "HYPERCALL" and self._answer is None:
                raise VbookError(
                    f"the {pending[0]} of the last exit is waiting for data: call "
                    f"complete(<{pending[1]} bytes>) before run()")
            self._resume(pending, self._answer)
        self._runs += 1
        if self._queued:
            return self._count(self._queued.pop(0))
        if self._insn is not None:
            exit = self._finish_insn()
            if exit is not None:
                return self._count(exit)
        done = self._out_done
        if done is not None:  # complete_fast_pio_out: skip the OUT if RIP is still on it
            start = done[1] if self._out_lazy else self._skip_out(*done)
            self._out_done, self._out_lazy = None, False
            return self._count(self._run_guest(start))
        return self._count(self._run_guest())

    def complete(self, data: bytes) -> None:
        """Answer the pending IN or MMIO read (``len(data)`` bytes), or a HYPERCALL (8 bytes).

        Nothing happens to the guest until the next :meth:`run`, which
        finishes the instruction, as KVM's ``complete_userspace_io`` does.
        """
        if self._uc is None:
            raise VbookError("this UnicornVcpu is closed")
        data = bytes(data)
        pending = self._pending
        if pending is None or self._answer is not None:
            raise VbookError("complete(): no IN, MMIO read or HYPERCALL is waiting for data")
        if len(data) != pending[1]:
            raise VbookError(
                f"complete(): the pending {pending[0]} needs {pending[1]} bytes, got {len(data)}")
        self._answer = data

    def get_regs(self) -> Regs:
        """RAX..R15, RIP and RFLAGS (``struct kvm_regs``)."""
        self._check_open()
        regs = Regs(*self._uc.reg_read_batch(self._reg_ids()))
        if self._out_lazy and self._out_done is not None:
            regs.rip = self._out_done[0]  # on the OUT (pio_rip "vmx"), see _out_done
        return regs

    def set_regs(self, regs: Regs) -> None:
        self._check_open()
        values = [getattr(regs, f) & _MASK64 for f in Regs.FIELDS]
        self._uc.reg_write_batch(list(zip(self._reg_ids(), values, strict=True)))
        self._out_lazy = False  # unicorn holds the RIP user space gave

    def read_memory(self, gpa: int, n: int) -> bytes:
        """``n`` bytes of guest RAM at ``gpa`` (the memory slot; MMIO has no bytes to read)."""
        self._check_open()
        if gpa < 0 or n < 0 or gpa + n > self.mem_size:
            raise MemoryAccessError(gpa, n, self.mem_size)
        return self._ram[gpa:gpa + n]

    def write_memory(self, gpa: int, data: bytes) -> None:
        """Write ``data`` into guest RAM at ``gpa``."""
        self._check_open()
        n = len(data)
        if gpa < 0 or gpa + n > self.mem_size:
            raise MemoryAccessError(gpa, n, self.mem_size)
        self._ram[gpa:gpa + n] = data
        if n:  # like a write through ``memory``: no stale translated code may run after it
            self._written.update(range(gpa >> 12, ((gpa + n - 1) >> 12) + 1))

    @property
    def memory(self) -> GuestMemory:
        """Guest RAM itself as a :class:`~vbook.memory.GuestMemory` (no copy): the buffer
        unicorn runs the guest on (``uc.mem_map_ptr``). What a model writes there the
        guest sees, what the guest wrote is there to read. Writes through it (not
        through ``.buf``, nor through a view made over it) also drop unicorn's
        translations of code in the pages written before the next :meth:`run` (see
        "Guest RAM" in the module doc). Access logging
        is off (``vcpu.memory.record = True`` turns it on). :meth:`close` releases it: a
        later access raises :class:`~vbook.memory.MemoryReleased`.
        """
        self._check_open()
        assert self._memory is not None
        return self._memory

    def _drop_translations(self) -> None:
        """Pages were written from outside the guest: if code ran from one, drop unicorn's
        translations (all of them, ``uc.ctl_flush_tb``) so that the guest runs the new bytes.

        Measured on unicorn 2.1.4: neither a store into the mapped buffer nor
        ``uc.mem_write`` invalidates translated code (the old instructions ran
        again), and ``uc.ctl_remove_cache`` takes a *virtual* address, translated
        through the guest's page tables (with fault side effects). So the block
        hook notes the RAM pages code ran from (``_code_phys``, translated when a
        block is first seen), and a write into one of them flushes everything —
        a write into data pages costs nothing. Not covered: a block already seen
        whose virtual address the guest has since mapped to another page.
        """
        written = self._written
        hit = not written.isdisjoint(self._code_phys)
        written.clear()
        if hit:
            self._uc.ctl_flush_tb()
            self._code_blocks.clear()  # retranslated blocks may end elsewhere: note them again

    def close(self) -> None:
        """Drop the emulator (and with it the guest's RAM). Safe to call twice."""
        if self._memory is not None:
            self._memory.release()  # views made of it raise MemoryReleased from now on
            self._memory = None
        # the RAM mmap is not closed here: the engine (``engine`` may have handed it
        # out) points into it, and keeps it (uc.vbook_ram) until the engine is gone
        self._ram = None
        self._uc = None  # the Uc (and its RAM) goes with the last reference
        self._rd = self._wr = self._repair = _closed  # these hold the Uc too
        self._pending = self._answer = self._insn = self._out_done = None
        self._out_lazy = False
        self._queued = []

    @property
    def pio_rip(self) -> str:
        """Where RIP is at an OUT exit: "vmx" (on the OUT, the default) or "pvm" (past it)."""
        return self._pio_rip

    @property
    def closed(self) -> bool:
        return self._uc is None

    @property
    def stats(self) -> VcpuStats:
        """run() calls and exits by reason (unicorn does not count instructions cheaply)."""
        return VcpuStats(runs=self._runs, exits=dict(self._counts))

    @property
    def engine(self) -> Any:
        """The ``unicorn.Uc`` underneath, for readers who want to look (not needed to run)."""
        self._check_open()
        self._show_out_rip()
        return self._uc

    def enter_long_mode(self, *, gdt: int, gdt_limit: int, cs: int, ds: int,
                        tr: tuple[int, int, int, int], cr0: int, cr3: int, cr4: int,
                        efer: int, rip: int, rsp: int, rflags: int = 0x2) -> None:
        """Reset the vCPU straight into 64-bit mode at CPL ``cs & 3`` (what a VMM's
        ``KVM_SET_SREGS`` + ``KVM_SET_REGS`` do); nothing runs until :meth:`run`.

        The CPU state of a fresh ``UC_MODE_64`` engine is loaded (64-bit code,
        CPL 0, paging off), then :func:`enter_long_mode` loads the segments from
        the GDT at ``gdt`` and sets TR, IDTR (empty), CR4, EFER, CR3, CR0, RIP,
        RSP and RFLAGS; the other general registers are 0. Guest RAM must
        already hold the GDT and the page tables.
        :func:`vbook.backends.long_mode.start_in_long_mode` calls this.
        """
        self._check_open()
        uc = self._uc
        uc.context_restore(_long_mode_context(self._uc_mod))
        self._event = None
        try:
            enter_long_mode(uc, gdt=gdt, gdt_limit=gdt_limit, cs=cs, ds=ds, tr=tr, cr0=cr0,
                            cr3=cr3, cr4=cr4, efer=efer, rip=rip, rsp=rsp, rflags=rflags)
        finally:
            self._repair()
            self._event, self._last_block = None, (0, 0)
        # a new CPU state (and, usually, new code): nothing of the old one is pending or cached
        uc.ctl_flush_tb()
        self._code_blocks.clear()
        self._code_phys.clear()
        self._written.clear()
        self._pending = self._answer = self._insn = self._out_done = None
        self._out_lazy, self._queued, self._dead = False, [], ""
        for cache in (self._exit_cache, self._out_cache, self._string_io, self._string_out,
                      self._vmexit_cache):
            cache.clear()
        self.set_regs(Regs(rip=rip, rsp=rsp, rflags=rflags))

    def cpu_mode(self) -> int:
        """The mode the guest runs in now: 16 (real), 32 (protected) or 64 (long, CS.L = 1)."""
        self._check_open()
        base, lm, bits = self._cs_info()
        return 64 if lm else bits

    def __repr__(self) -> str:
        state = "closed" if self._uc is None else f"{self._runs} runs"
        return f"UnicornVcpu({self.guest.name!r}, budget={self.budget:,}, {state})"

    # --- running --------------------------------------------------------------------------

    def _run_guest(self, start: int | None = None) -> Exit:
        """Run from ``start`` (default: RIP) until a hook or the end of the budget stops it."""
        uc = self._uc
        self._event = None
        try:
            uc.emu_start(self._rd(self._RIP) if start is None else start, _UNTIL, 0,
                         self.budget)
        except self._UcError as e:
            self._repair()
            return self._after_error(e)
        self._repair()
        ev = self._event
        if ev is None:
            return self._hlt_or_budget()
        kind = ev[0]
        if kind == "out":  # the hot path: the hook found ("out", Exit, KernelExit, on) cached
            self.kernel_exits.append(ev[2])
            if ev[3] is not None:  # VMX: RIP stays on the OUT until the next run skips it
                done = ev[4]
                if done is None:  # the first time: RIP past the OUT is where unicorn stopped
                    done = ev[4] = (ev[3], self._rd(self._RIP))
                self._out_done, self._out_lazy = done, True  # get_regs shows done[0]
            return ev[1]
        if kind == "in":
            _, port, size, in_rip, rax = ev
            next_rip = self._rd(self._RIP)
            self._wr(self._RAX, rax)  # the IN has not happened yet (KVM: RIP on it)
            self._wr(self._RIP, in_rip)
            self._pending, self._answer = ("IN", size, port, in_rip, next_rip), None
            vkey = (in_rip, port, size, None)
            record = self._vmexit_cache.get(vkey)
            if record is None:
                record = self._io_record(in_rip, port, size, True, b"", vkey)
            self.kernel_exits.append(record)
            key = ("in", port, size)
            exit = self._exit_cache.get(key)
            if exit is None:
                exit = self._cache(key, Exit(_R_IO, io=IoExit(_IN, size, port, 1)))
            return exit
        if kind == "intr":
            return self._exception(ev[1], ev[2])
        if kind == "string_io":
            raise GuestFault(
                f"string input (INS) at RIP {ev[2]:#x} is not supported by the unicorn backend "
                "(the element is stored before the VMM could answer)", rip=ev[2])
        raise VbookError(f"unicorn backend: unexpected event {ev!r}")  # pragma: no cover

    def _after_error(self, err: Exception) -> Exit:
        """emu_start failed: a hook refused an access or an instruction; decide the exit."""
        uc, x = self._uc, self._x
        ev, self._event = self._event, None
        rip = uc.reg_read(x.UC_X86_REG_RIP)
        if ev is None:
            raise GuestFault(f"unicorn stopped the guest at RIP {rip:#x}: {err}", rip=rip)
        kind = ev[0]
        if kind == "mmio":
            _, gpa, size, is_write, data = ev
            self._insn = [_Access(gpa, size, is_write, data)]
            self._mmio_vm_exit(rip, gpa, size, is_write, data)
            if is_write:  # KVM reports a store once the instruction is done
                exit = self._finish_insn()
                if exit is None:  # pragma: no cover - the store is always seen again
                    return self._run_guest()
                return exit
            return self._mmio_read_exit(gpa, size)
        if kind == "fetch":
            self._dead = "stopped on an emulation failure"
            self.kernel_exits.append(KernelExit(
                "EPT_VIOLATION", rip, "handle_ept_violation", before={"fetch": True},
                after={"kvm_run": "KVM_EXIT_INTERNAL_ERROR, suberror 1 (EMULATION)"},
                qualification=ept_violation_qualification("x"), gpa=ev[1], user_exit=True))
            return Exit(ExitReason.INTERNAL_ERROR, detail=(
                f"suberror 1 (EMULATION), instruction fetch from {ev[1]:#x}: "
                "no memory slot there"))
        if kind == "intr":
            return self._exception(ev[1], ev[2])
        if kind == "hypercall":
            _, hc, longmode = ev
            self._pending, self._answer = ("HYPERCALL", 8, longmode), None
            return Exit(ExitReason.HYPERCALL, hypercall=hc)
        raise GuestFault(f"unicorn stopped the guest at RIP {rip:#x}: {err}", rip=rip)

    def _hlt_or_budget(self) -> Exit:
        """emu_start returned without a hook stopping it: HLT, or the budget ran out."""
        uc, x = self._uc, self._x
        rip = uc.reg_read(x.UC_X86_REG_RIP)
        cs_base, _, _ = self._cs_info()
        block, size = self._last_block
        end = block + size
        if size and end == cs_base + rip and self._read_linear(end - 1, 1) == b"\xf4":
            self.kernel_exits.append(KernelExit("HLT", rip - 1, "kvm_emulate_halt",
                                                after={"rip": rip}, user_exit=True))
            return Exit(ExitReason.HLT)
        here = self._read_linear(cs_base + rip, 4)
        where = here.hex(" ") if here else "not in RAM"
        raise BudgetExhausted(
            f"guest {self.guest.name!r} ran {self.budget:,} instructions without an exit "
            f"(a runaway guest?); stopped at RIP {rip:#x} (bytes there: {where}). "
            "Raise budget= if it is just long.")

    def _resume(self, pending: tuple, answer: bytes | None) -> None:
        """Finish what the last exit left open (KVM: ``complete_userspace_io``)."""
        uc, x = self._uc, self._x
        self._pending = self._answer = None
        kind = pending[0]
        if kind == "IN":
            _, size, _, in_rip, next_rip = pending
            if self._rd(self._RIP) != in_rip:
                return  # user space moved RIP: KVM drops the IN (kvm_is_linear_rip)
            assert answer is not None
            value = int.from_bytes(answer, "little")
            if size < 4:
                mask = (1 << 8 * size) - 1
                value |= self._rd(self._RAX) & ~mask & _MASK64
            self._wr(self._RAX, value)
            self._wr(self._RIP, next_rip)
        elif kind == "MMIO read":
            assert self._insn is not None and answer is not None
            self._insn[-1].data = answer
        elif kind == "HYPERCALL":
            from vbook.models.hypercall import complete_hypercall_exit

            ret = int.from_bytes(answer, "little") if answer is not None else 0
            uc.reg_write(x.UC_X86_REG_RAX, complete_hypercall_exit(ret, pending[2]))
            uc.reg_write(x.UC_X86_REG_RIP, uc.reg_read(x.UC_X86_REG_RIP) + HYPERCALL_LEN)

    def _show_out_rip(self) -> None:
        """Put unicorn's own RIP on the OUT the last exit stopped at (see ``_out_done``)."""
        if self._out_lazy:
            self._out_lazy = False
            if self._out_done is not None:
                self._wr(self._RIP, self._out_done[0])

    def _skip_out(self, out_rip: int, next_rip: int) -> int:
        """Where the guest goes on after an OUT exit left RIP on it (``complete_fast_pio_out``).

        KVM skips the OUT (``kvm_skip_emulated_instruction``) only if the
        linear RIP is still the one it saved (``kvm_is_linear_rip``); if user
        space moved RIP, the guest runs from there and the OUT is not skipped.
        User space cannot change CS on this backend, so comparing RIP is
        comparing the linear RIP (but for a RIP with bits 63:32 set outside
        64-bit mode, which a VMX CPU would refuse to enter anyway).
        """
        rip = self._rd(self._RIP)
        return next_rip if rip == out_rip else rip

    def _mmio_read_exit(self, gpa: int, size: int) -> Exit:
        self._pending, self._answer = ("MMIO read", size), None
        key = ("mmio_r", gpa, size)
        exit = self._exit_cache.get(key)
        if exit is None:
            exit = self._cache(key, Exit(_R_MMIO, mmio=MmioExit(gpa, size, False)))
        return exit

    def _finish_insn(self) -> Exit | None:
        """Execute the instruction whose MMIO accesses are in ``self._insn``, exactly once.

        Temporary pages stand in for the device: a load finds the bytes
        complete() gave, a store lands there and is recorded. Returns the
        first exit the instruction produced (a new load, or its first store)
        or None if it finished without one.
        """
        uc, x, ucm = self._uc, self._x, self._uc_mod
        accesses = self._insn
        assert accesses is not None
        rip = uc.reg_read(x.UC_X86_REG_RIP)
        for _ in range(8):  # one more MMIO address per round; an instruction touches few
            pages = sorted({p for a in accesses
                            for p in range(a.gpa & ~(PAGE - 1), a.gpa + a.size, PAGE)})
            if pages[0] < self.mem_size:
                self._insn = None
                raise GuestFault(
                    f"an access at RIP {rip:#x} touches both RAM and MMIO "
                    f"(guest-physical {accesses[-1].gpa:#x}, {accesses[-1].size} bytes): "
                    "not supported by the unicorn backend", rip=rip)
            stores: list[tuple[int, int, int]] = []
            for p in pages:
                uc.mem_map(p, PAGE, ucm.UC_PROT_READ | ucm.UC_PROT_WRITE)
            hook = None
            try:
                for a in accesses:
                    if not a.is_write and a.data is not None:
                        uc.mem_write(a.gpa, a.data)
                hook = uc.hook_add(ucm.UC_HOOK_MEM_WRITE, _record_store, stores, pages[0],
                                   pages[-1] + PAGE - 1)
                self._event = None
                error = None
                try:
                    uc.emu_start(rip, _UNTIL, 0, 1)
                except self._UcError as e:
                    error = e
                self._repair()
            finally:
                if hook is not None:
                    uc.hook_del(hook)
                for p in pages:
                    uc.mem_unmap(p, PAGE)
            ev, self._event = self._event, None
            if error is not None:
                if ev is not None and ev[0] == "mmio":
                    _, gpa, size, is_write, data = ev
                    accesses.append(_Access(gpa, size, is_write, data))
                    if is_write:
                        continue  # map it too and run the instruction again
                    return self._mmio_read_exit(gpa, size)
                self._insn = None
                self._event = ev
                return self._after_error(error)
            self._insn = None
            if ev is not None:  # the instruction raised an exception after its MMIO access
                if ev[0] == "intr":
                    return self._exception(ev[1], ev[2])
                raise VbookError(f"unicorn backend: unexpected {ev!r} in an MMIO instruction")
            exits = [Exit(_R_MMIO, mmio=MmioExit(
                addr, size, True, (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")))
                for addr, size, value in stores]
            self._mmio_finished(accesses, exits)
            if not exits:
                return None
            self._queued.extend(exits[1:])
            return exits[0]
        raise GuestFault(f"the instruction at RIP {rip:#x} touches too many MMIO addresses "
                         "for the unicorn backend", rip=rip)

    # --- exceptions, triple fault ------------------------------------------------------

    def _exception(self, vector: int, rip: int) -> Exit:
        """Model delivery of ``vector``: SHUTDOWN if nothing on #v -> #GP -> #DF can be delivered."""
        if vector == UD:  # KVM intercepts #UD (vmx_update_exception_bitmap) and re-injects it
            self.kernel_exits.append(KernelExit(
                "EXCEPTION_NMI", rip, "handle_exception_nmi", before={"vector": UD},
                after={"handle_ud": "cannot emulate it: #UD re-injected"}))
        chain = [DF] if vector == DF else [GP, DF] if vector == GP else [vector, GP, DF]
        tried = []
        for v in chain:
            why = self._undeliverable(v)
            if why is None:
                first = _vname(vector)
                via = f" (while delivering {' -> '.join(tried)})" if tried else ""
                raise GuestFault(
                    f"guest raised {first} at RIP {rip:#x}; its IDT can deliver {_vname(v)}"
                    f"{via}, but the unicorn backend does not run guest exception handlers "
                    "(KVM would)", vector=v, rip=rip)
            tried.append(f"{_vname(v)}: {why}")
        self._dead = "shut down (triple fault)"
        self.kernel_exits.append(KernelExit("TRIPLE_FAULT", rip, "handle_triple_fault",
                                            user_exit=True))
        return Exit(ExitReason.SHUTDOWN, detail="triple fault")

    def _undeliverable(self, vector: int) -> str | None:
        """Why the guest's IDT cannot deliver ``vector`` (None if it can)."""
        uc, x = self._uc, self._x
        _, base, limit, _ = uc.reg_read(x.UC_X86_REG_IDTR)
        cr0 = uc.reg_read(x.UC_X86_REG_CR0)
        if not cr0 & _CR0_PE:
            if vector * 4 + 3 > limit:
                return f"IVT entry {vector * 4:#x}..{vector * 4 + 3:#x} beyond IDTR.limit {limit:#x}"
            return None
        size = 16 if uc.msr_read(_MSR_EFER) & _EFER_LMA else 8
        if vector * size + size - 1 > limit:
            return f"IDT gate at {vector * size:#x} beyond IDTR.limit {limit:#x}"
        gate = self._read_linear(base + vector * size, 8)
        if gate is None:
            return f"IDT gate at linear {base + vector * size:#x} is not in RAM"
        if not gate[5] & 0x80:
            return "IDT gate not present"
        return None

    # --- hooks (called by unicorn during emu_start) --------------------------------------

    def _hook_out(self, uc: Any, port: int, size: int, value: int, _: Any) -> None:
        # OUTS too: one exit per element (count 1), the iteration already done.
        # The hot path of an OUT loop: the event is a cached ["out", Exit, KernelExit,
        # RIP of the OUT if the exit leaves RIP on it else None, (that RIP, RIP past
        # the OUT) once known].
        # A run stops after its first OUT, and a translation block runs straight
        # from its start, so (block, port, size, value) names the OUT instruction:
        # its RIP (still on the OUT here) is read only when the key is new.
        key = (self._last_block, port, size, value)
        hit = self._out_cache.get(key)
        if hit is None:
            hit = self._out_miss(key, port, size, value, self._rd(self._RIP))
        self._event = hit
        uc.emu_stop()

    def _hook_msr(self, uc: Any, address: int, size: int, _: Any) -> None:
        """An instruction starts at a 0F 32 / 0F 30 found at load time: record the MSR exit."""
        if size != 2:
            return
        op = bytes(uc.mem_read(address, 2))
        if op not in (b"\x0f\x32", b"\x0f\x30"):
            return  # the guest rewrote its code
        x = self._x
        rip = self._rd(self._RIP)
        ecx = self._rd(x.UC_X86_REG_RCX) & 0xFFFFFFFF
        if op == b"\x0f\x32":
            if ecx in MSR_PASSTHROUGH_READ:
                return
            try:
                value = uc.msr_read(ecx)
                after = {"eax": value & 0xFFFFFFFF, "edx": value >> 32 & 0xFFFFFFFF}
            except self._UcError:
                after = {}
            self.kernel_exits.append(KernelExit("MSR_READ", rip, "kvm_emulate_rdmsr",
                                                before={"ecx": ecx}, after=after))
        elif ecx not in MSR_PASSTHROUGH_WRITE:
            eax, edx = (self._rd(r) & 0xFFFFFFFF for r in (self._RAX, x.UC_X86_REG_RDX))
            self.kernel_exits.append(KernelExit("MSR_WRITE", rip, "kvm_emulate_wrmsr",
                                                before={"ecx": ecx, "eax": eax, "edx": edx}))

    def _hook_cpuid(self, uc: Any, _: Any) -> int:
        """CPUID: answer like KVM's ``kvm_emulate_cpuid`` from the model table; no exit to user."""
        from vbook.models.kvm_kernel import kvm_cpuid

        rd, wr = self._rd, self._wr
        key = (rd(self._RIP), rd(self._RAX) & 0xFFFFFFFF, rd(self._CPUID_REGS[2]) & 0xFFFFFFFF)
        record = self._vmexit_cache.get(key)
        if record is None:  # the table is fixed: the same leaf at the same RIP, the same answer
            rip, eax, ecx = key
            answer = kvm_cpuid(eax, ecx)
            record = KernelExit("CPUID", rip, "kvm_emulate_cpuid", before={"eax": eax, "ecx": ecx},
                                after=dict(zip(("eax", "ebx", "ecx", "edx"), answer, strict=True)))
            if len(self._vmexit_cache) >= 4096:
                self._vmexit_cache.clear()
            self._vmexit_cache[key] = record
        for reg, value in zip(self._CPUID_REGS, record.after.values(), strict=True):
            wr(reg, value)  # kvm_rax_write & co: the 32-bit value, zero-extended
        self.kernel_exits.append(record)
        return 1  # handled: unicorn skips its own CPUID and moves RIP past it

    def _hook_in(self, uc: Any, port: int, size: int, _: Any) -> int:
        rip = self._rd(self._RIP)
        rax = self._rd(self._RAX)
        string_io = self._string_io.get(rip)
        if string_io is None:
            string_io = self._is_string_io(rip)
        self._event = ("string_io", "INS", rip) if string_io else ("in", port, size, rip, rax)
        uc.emu_stop()
        return rax & ((1 << 8 * size) - 1)  # a placeholder; run() restores RAX anyway

    def _is_string_io(self, rip: int) -> bool:
        """Is the IN at ``rip`` an INS (decoded once per RIP, then cached)?"""
        return self._is_string(rip, self._string_io, _STRING_IO)

    def _is_string_out(self, rip: int) -> bool:
        """Is the OUT at ``rip`` an OUTS (decoded once per RIP, then cached)?"""
        return self._is_string(rip, self._string_out, _STRING_OUT)

    def _is_string(self, rip: int, cache: dict[int, bool], opcodes: frozenset[int]) -> bool:
        """Does the instruction at ``rip``, past its prefixes (and REX in 64-bit code),
        have one of ``opcodes``?"""
        known = cache.get(rip)
        if known is None:
            cs_base, lm, _ = self._cs_info()
            code = self._read_linear(cs_base + rip, 15) or b""
            i = 0
            while i < len(code) and (code[i] in _PREFIXES or (lm and 0x40 <= code[i] <= 0x4F)):
                i += 1
            known = cache[rip] = i < len(code) and code[i] in opcodes
        return known

    def _hook_unmapped(self, uc: Any, access: int, addr: int, size: int, value: int,
                       _: Any) -> bool:
        is_write = access == self._uc_mod.UC_MEM_WRITE_UNMAPPED
        data = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little") if is_write else None
        self._event = ("mmio", addr, size, is_write, data)
        return False

    def _hook_fetch_unmapped(self, uc: Any, access: int, addr: int, size: int, value: int,
                             _: Any) -> bool:
        self._event = ("fetch", addr)
        return False

    def _hook_intr(self, uc: Any, intno: int, _: Any) -> None:
        self._event = ("intr", intno, uc.reg_read(self._x.UC_X86_REG_RIP))
        uc.emu_stop()

    def _hook_block(self, uc: Any, address: int, size: int, _: Any) -> None:
        self._last_block = (address, size)
        if address not in self._code_blocks:  # one set lookup per block: the OUT loop's rate
            self._note_code(address, size)   # is unchanged (measured)

    def _note_code(self, address: int, size: int) -> None:
        """A block not seen before runs: note the RAM page(s) its code is in (translated
        now) — the pages a write from outside must drop translations of."""
        self._code_blocks.add(address)
        for linear in {address & ~(PAGE - 1), (address + size - 1) & ~(PAGE - 1)}:
            gpa = self._translate(linear)
            if gpa is not None:
                self._code_phys.add(gpa >> 12)

    def _hook_invalid(self, uc: Any, _: Any) -> bool:
        """#UD in unicorn: VMCALL/VMMCALL become hypercalls; anything else is vector 6."""
        x = self._x
        rip = uc.reg_read(x.UC_X86_REG_RIP)
        cs_base, longmode, _ = self._cs_info()
        insn = self._read_linear(cs_base + rip, 3)
        if insn not in (VMCALL, VMMCALL):
            self._event = ("intr", UD, rip)
            return False
        if insn == VMMCALL:  # on VMX: #UD, and handle_ud rewrites it into VMCALL
            self.kernel_exits.append(KernelExit(
                "EXCEPTION_NMI", rip, "handle_exception_nmi", before={"vector": UD,
                                                                      "insn": "vmmcall"},
                after={"handle_ud": "emulator_fix_hypercall: VMMCALL becomes VMCALL"}))
        from vbook.models.hypercall import kvm_emulate_hypercall, map_gpa_range_exit

        nr, a0, a1, a2, a3 = uc.reg_read_batch((x.UC_X86_REG_RAX, x.UC_X86_REG_RBX,
                                               x.UC_X86_REG_RCX, x.UC_X86_REG_RDX,
                                               x.UC_X86_REG_RSI))
        cr0 = uc.reg_read(x.UC_X86_REG_CR0)
        cpl = uc.reg_read(x.UC_X86_REG_CS) & 3 if cr0 & _CR0_PE else 0
        result = kvm_emulate_hypercall(nr, (a0, a1, a2, a3), cpl=cpl, longmode=longmode,
                                       hypercall_exit_enabled=self.hypercall_exit_enabled)
        before = {"rax": nr, "rbx": a0, "rcx": a1, "rdx": a2, "rsi": a3, "cpl": cpl,
                  "longmode": longmode}
        if result.exit_to_user:
            hc = HypercallExit(**map_gpa_range_exit((a0, a1, a2), longmode))
            self._event = ("hypercall", hc, longmode)
            self.kernel_exits.append(KernelExit(
                "VMCALL", rip, "kvm_emulate_hypercall", before=before,
                after={"result": result.handler}, user_exit=True))
            return False
        assert result.ret is not None
        uc.reg_write(x.UC_X86_REG_RAX, result.ret)
        uc.reg_write(x.UC_X86_REG_RIP, rip + HYPERCALL_LEN)
        self.hypercalls += 1
        self.kernel_exits.append(KernelExit(
            "VMCALL", rip, "kvm_emulate_hypercall", before=before,
            after={"rax": result.ret, "rip": rip + HYPERCALL_LEN, "result": result.handler}))
        return True

    # --- VM exit records (kernel_exits) --------------------------------------------------

    def _out_miss(self, key: tuple, port: int, size: int, value: int,
                  rip: int) -> list:
        """The ["out", Exit, KernelExit, RIP or None, None] event of a new OUT, now cached
        under ``key``.

        Item 3 is the OUT's RIP if the exit leaves RIP on it (``pio_rip`` "vmx",
        a plain OUT not to port 0x7e: ``kvm_fast_pio_out``), None if RIP is past
        it (OUTS, port 0x7e, ``pio_rip`` "pvm"); item 4 becomes (RIP of the OUT,
        RIP past it) after the first such exit (see ``_run_guest``).
        """
        data = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        exit = Exit(_R_IO, io=IoExit(_OUT, size, port, 1, data))
        record = self._io_record(rip, port, size, False, data, (rip, port, size, value))
        on_out = (self._pio_rip == "vmx" and port != OUT_7E_PORT
                  and not self._is_string_out(rip))
        if len(self._out_cache) >= 4096:
            self._out_cache.clear()
        hit = self._out_cache[key] = ["out", exit, record, rip if on_out else None, None]
        return hit

    def _io_record(self, rip: int, port: int, size: int, in_: bool, data: bytes,
                   key: tuple) -> KernelExit:
        """The IO_INSTRUCTION record of an IN/OUT at ``rip`` (cached: exits repeat)."""
        string = self._is_string_io(rip) if in_ else self._is_string_out(rip)
        before = {"port": port, "size": size, "direction": "in" if in_ else "out",
                  "data": data.hex()}
        if string:
            before["count"] = 1  # one element per exit on this backend (see module doc)
        record = KernelExit("IO_INSTRUCTION", rip, "handle_io", before=before,
                            qualification=io_qualification(size, in_, port, string),
                            user_exit=True)
        if len(self._vmexit_cache) >= 4096:
            self._vmexit_cache.clear()
        self._vmexit_cache[key] = record
        return record

    def _mmio_vm_exit(self, rip: int, gpa: int, size: int, is_write: bool,
                      data: bytes | None) -> None:
        """The VM exit of an instruction's first MMIO access: EPT violation on a page KVM
        has not seen, EPT misconfig once it holds an MMIO SPTE there."""
        gfn = gpa >> 12
        access = {"gpa": gpa, "len": size, "is_write": is_write,
                  "data": data.hex() if is_write and data else ""}
        if gfn in self._mmio_gfns:
            reason, handler, qual = "EPT_MISCONFIG", "handle_ept_misconfig", 0
        else:
            self._mmio_gfns.add(gfn)
            reason, handler = "EPT_VIOLATION", "handle_ept_violation"
            qual = ept_violation_qualification("w" if is_write else "r")
        self._mmio_record = len(self.kernel_exits)
        self.kernel_exits.append(KernelExit(reason, rip, handler, before={"accesses": [access]},
                                            qualification=qual, gpa=gpa, user_exit=True))

    def _mmio_finished(self, accesses: list[_Access], stores: list[Exit]) -> None:
        """The instruction is done: its record gets every access, reads then stores."""
        k, self._mmio_record = self._mmio_record, -1
        if not 0 <= k < len(self.kernel_exits):
            return
        record = self.kernel_exits[k]
        done = [{"gpa": a.gpa, "len": a.size, "is_write": False,
                 "data": a.data.hex() if a.data else ""} for a in accesses if not a.is_write]
        done += [{"gpa": e.mmio.phys_addr, "len": e.mmio.len, "is_write": True,
                  "data": e.mmio.data.hex()} for e in stores if e.mmio is not None]
        self.kernel_exits[k] = replace(record, before={"accesses": done})

    # --- guest state helpers -------------------------------------------------------------

    def _cs_info(self) -> tuple[int, bool, int]:
        """(CS base, 64-bit code?, default operand bits 16/32) from CR0, EFER and the GDT."""
        uc, x = self._uc, self._x
        cs = uc.reg_read(x.UC_X86_REG_CS)
        if not uc.reg_read(x.UC_X86_REG_CR0) & _CR0_PE:
            return cs << 4, False, 16
        _, gdt_base, _, _ = uc.reg_read(x.UC_X86_REG_GDTR)
        desc = self._read_linear(gdt_base + (cs & ~7), 8) if not cs & 4 else None
        if desc is None:  # an LDT selector or a GDT outside RAM: assume a flat segment
            return 0, False, 32
        d = int.from_bytes(desc, "little")
        long_bit, db_bit = bool(d >> 53 & 1), bool(d >> 54 & 1)
        if long_bit and uc.msr_read(_MSR_EFER) & _EFER_LMA:
            return 0, True, 64
        base = (d >> 16 & 0xFFFFFF) | (d >> 56 & 0xFF) << 24
        return base, False, 32 if db_bit else 16

    def _read_linear(self, linear: int, n: int) -> bytes | None:
        """``n`` bytes at a linear address through the guest's paging; None if not all in RAM."""
        out = b""
        while n > 0:
            gpa = self._translate(linear)
            chunk = min(n, PAGE - (linear & (PAGE - 1)))
            if gpa is None or gpa + chunk > self.mem_size:
                return None
            out += self._ram[gpa:gpa + chunk]
            linear, n = linear + chunk, n - chunk
        return out

    def _translate(self, linear: int) -> int | None:
        """The guest-physical address of ``linear`` (None if not mapped): the guest's MMU."""
        uc, x = self._uc, self._x
        if not uc.reg_read(x.UC_X86_REG_CR0) & _CR0_PG:
            return linear
        cr3 = uc.reg_read(x.UC_X86_REG_CR3)
        cr4 = uc.reg_read(x.UC_X86_REG_CR4)
        if uc.msr_read(_MSR_EFER) & _EFER_LMA:  # 4-level: PML4, PDPT, PD, PT
            table, width, levels = cr3 & _ADDR, 8, ((39, False), (30, True), (21, True), (12, False))
        elif cr4 & _CR4_PAE:  # PAE: PDPT (4 entries), PD, PT
            table, width, levels = cr3 & 0xFFFFFFE0, 8, ((30, False), (21, True), (12, False))
        else:  # 32-bit: PD, PT
            table, width, levels = cr3 & 0xFFFFF000, 4, ((22, bool(cr4 & _CR4_PSE)), (12, False))
        bits = 9 if width == 8 else 10
        for shift, may_be_large in levels:
            index = linear >> shift & ((1 << bits) - 1)
            if shift == 30 and not uc.msr_read(_MSR_EFER) & _EFER_LMA:
                index = linear >> 30 & 3
            addr = table + index * width
            if addr + width > self.mem_size:
                return None
            entry = int.from_bytes(self._ram[addr:addr + width], "little")
            if not entry & 1:
                return None
            if shift == 12 or (may_be_large and entry & 0x80):
                if width == 4 and shift == 22:  # a 4 MiB page (PSE)
                    return (entry & 0xFFC00000) | (linear & 0x3FFFFF)
                frame = entry & _ADDR & ~((1 << shift) - 1)
                return frame | (linear & ((1 << shift) - 1))
            table = entry & (_ADDR if width == 8 else 0xFFFFF000)
        return None  # pragma: no cover - the last level always returns

    def _reg_ids(self) -> list[int]:
        x = self._x
        return [getattr(x, f"UC_X86_REG_{f.upper()}") for f in Regs.FIELDS]

    def _check_open(self) -> None:
        if self._uc is None:
            raise VbookError("this UnicornVcpu is closed")

    def _cache(self, key: tuple, exit: Exit) -> Exit:
        if len(self._exit_cache) >= 4096:
            self._exit_cache.clear()
        self._exit_cache[key] = exit
        return exit

    def _count(self, exit: Exit) -> Exit:
        name = exit.reason.name
        self._counts[name] = self._counts.get(name, 0) + 1
        return exit


def _closed(*args: Any) -> Any:
    raise VbookError("this UnicornVcpu is closed")


def _record_store(uc: Any, access: int, addr: int, size: int, value: int,
                  stores: list[tuple[int, int, int]]) -> None:
    stores.append((addr, size, value))


def _vname(vector: int) -> str:
    return f"{VECTOR_NAMES.get(vector, 'vector')} ({vector})" if vector in VECTOR_NAMES \
        else f"vector {vector}"


def _check_guest(guest: Guest) -> None:
    if guest.mem_size <= 0 or guest.mem_size % PAGE:
        raise GuestError(f"guest {guest.name!r}: mem_size {guest.mem_size:#x} is not a positive "
                         f"multiple of the {PAGE}-byte page")
    if not 0 <= guest.load_addr <= guest.mem_size - len(guest.code):
        raise GuestError(f"guest {guest.name!r}: {len(guest.code)} bytes at {guest.load_addr:#x} "
                         f"do not fit in {guest.mem_size:#x} bytes of RAM")
