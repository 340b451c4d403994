"""Run a guest and record its hypercalls: what KVM did with each VMCALL, as a Trace.

A hypercall is a VM exit that user space normally never sees:
``kvm_emulate_hypercall`` answers it in the kernel and re-enters the guest.
:func:`vbook.runner.run_guest` therefore shows only its effect. This loop
records the hypercalls too, from the VM exits the unicorn backend lists
(``UnicornVcpu.kernel_exits``: a ``KernelExit("VMCALL", rip, …,
before={rax, rbx, rcx, rdx, rsi, …}, after={rax, rip, …})`` per hypercall
handled "in the kernel"; other VM exits are left to other chapters) and
from ``KVM_EXIT_HYPERCALL`` exits,
the one kind that reaches user space (``KVM_HC_MAP_GPA_RANGE``, when the VMM
enabled it). Real KVM tells user space nothing about the others, so on the
``kvm`` backend only the exits are recorded.

Each hypercall becomes these trace events (``hc`` = its index)::

    guest  vmcall    VMCALL with RAX, RBX, RCX, RDX, RSI, CPL, 64-bit or not
    kvm    vmexit    EXIT_REASON_VMCALL (18); SVM: SVM_EXIT_VMMCALL (0x81)
    kvm    hypercall the arm of kvm_emulate_hypercall's switch, and its result
    kvm    skip      kvm_skip_emulated_instruction: RAX written, RIP += 3
    guest  resume    the guest runs on after the VMCALL

and for one that goes to user space, instead of ``skip``: ``kvm exit
KVM_EXIT_HYPERCALL`` (the kvm_run fields), ``qemu hypercall`` (user space
writes ``kvm_run.hypercall.ret``), the next ``qemu ioctl KVM_RUN``, ``kvm
complete`` (``complete_hypercall_exit``: RAX = ret, RIP += 3) and ``guest
resume``. Around them are the run loop's own events, as
:func:`~vbook.runner.run_guest` records them, so the run-loop widgets show
the same trace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vbook.backends import open_vcpu, pick
from vbook.backends.base import Exit
from vbook.bus import Bus, SimpleBus
from vbook.errors import BudgetExhausted, VbookError
from vbook.guests.base import Guest
from vbook.models import hypercall as hc
from vbook.models.kvm_api import Hypercall
from vbook.runner import FINAL, handle
from vbook.trace import Trace, TraceRecorder

_U64 = (1 << 64) - 1
_EPERM = re.compile(r"-KVM_EPERM \(CPL (\d)\)")


def hypercall_name(nr: int) -> str:
    """``KVM_HC_<NAME>`` for a number linux/kvm_para.h defines, else the number in hex."""
    try:
        return f"KVM_HC_{Hypercall(nr).name}"
    except ValueError:
        return f"nr {nr:#x}"


@dataclass(frozen=True)
class HypercallRecord:
    """One hypercall the guest made, and what became of it.

    ``nr`` and ``args`` (a0..a3) are the guest's RAX and RBX, RCX, RDX, RSI
    at the VMCALL, ``rip`` its address, ``cpl`` and ``longmode`` the CPU
    state KVM looked at. ``case`` is the arm of the switch
    (:func:`vbook.models.hypercall.switch_case`), ``handler`` the model's
    account of what it did, ``rax`` what the guest found in RAX afterwards.
    ``exit_to_user`` is True for the ones KVM handed to user space.
    """

    n: int
    rip: int
    nr: int
    args: tuple[int, int, int, int]
    cpl: int
    longmode: bool
    case: str
    handler: str
    rax: int | None
    exit_to_user: bool = False

    @property
    def name(self) -> str:
        return hypercall_name(self.nr)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "rip": self.rip, "nr": self.nr, "args": list(self.args),
                "cpl": self.cpl, "longmode": self.longmode, "case": self.case,
                "handler": self.handler, "rax": self.rax, "exit_to_user": self.exit_to_user}

    def __str__(self) -> str:
        mode = "64-bit" if self.longmode else "32-bit"
        rax = "?" if self.rax is None else f"{self.rax:#x}"
        where = "user space" if self.exit_to_user else "kernel"
        return (f"#{self.n} {self.name:<24s} CPL {self.cpl} {mode}  RAX -> {rax:<18s} "
                f"({where}: {self.handler})")


@dataclass(frozen=True)
class HypercallRun:
    """A run of a guest with its hypercalls: exits to user space, hypercalls, trace."""

    guest: str
    backend: str
    exits: tuple[Exit, ...]
    hypercalls: tuple[HypercallRecord, ...]
    end: str
    trace: Trace

    @property
    def in_kernel(self) -> int:
        """How many hypercalls KVM answered without returning to user space."""
        return sum(1 for h in self.hypercalls if not h.exit_to_user)

    def table(self) -> str:
        """One line per hypercall (see :meth:`HypercallRecord.__str__`)."""
        return "\n".join(str(h) for h in self.hypercalls)

    def to_dict(self) -> dict[str, Any]:
        return {"guest": self.guest, "backend": self.backend, "end": self.end,
                "exits": [e.to_dict() for e in self.exits],
                "hypercalls": [h.to_dict() for h in self.hypercalls]}

    def __repr__(self) -> str:
        n = len(self.hypercalls)
        return (f"HypercallRun({self.guest!r} on {self.backend}: {_n(n, 'hypercall')} "
                f"({self.in_kernel} in the kernel, {n - self.in_kernel} to user space), "
                f"{_n(len(self.exits), 'exit')} to user space, ended by {self.end})")


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _mode_of(nr: int, args: tuple[int, ...], cpl: int, handler: str, rax: int,
             exit_mask: int, guest: Guest, before: dict) -> bool:
    """Was the hypercall made in 64-bit mode? From the record if it says, else inferred.

    ``KernelExit.before`` holds the registers only. The answer that fits is
    the mode in which the model gives the same handler and RAX; when both
    modes fit (e.g. a result of 0), the guest's own mode decides.
    """
    if "longmode" in before:
        return bool(before["longmode"])
    fits = [lm for lm in (True, False)
            if (r := hc.kvm_emulate_hypercall(nr, args, cpl, lm, exit_mask)).ret == rax
            and r.handler == handler]
    return fits[0] if len(fits) == 1 else guest.mode == 64


def _record(n: int, ke: Any, exit_mask: int, guest: Guest) -> HypercallRecord:
    """A HypercallRecord from the backend's ``KernelExit("VMCALL", …)``.

    The model's account of the branch is ``after["result"]`` (older records:
    the ``handler`` field itself); CPL and mode are ``before["cpl"]`` and
    ``before["longmode"]`` when the record has them, else inferred.
    """
    before, after = dict(ke.before), dict(ke.after)
    nr = before["rax"]
    args = (before["rbx"], before["rcx"], before["rdx"], before["rsi"])
    handler = after.get("result", ke.handler)
    m = _EPERM.fullmatch(handler)
    cpl = int(before.get("cpl", int(m.group(1)) if m else 0))
    longmode = _mode_of(nr, args, cpl, handler, after["rax"], exit_mask, guest, before)
    return HypercallRecord(n, ke.rip, nr, args, cpl, longmode, hc.switch_case(nr, cpl, longmode),
                           handler, after["rax"])


def _regs(h: HypercallRecord) -> dict[str, int]:
    return dict(zip(hc.REGISTERS, (h.nr, *h.args), strict=True))


def _emit_vmcall(rec: TraceRecorder, h: HypercallRecord) -> None:
    mode = "64-bit" if h.longmode else "32-bit"
    rec.emit("guest", "vmcall", f"VMCALL: {h.name} (CPL {h.cpl}, {mode})", hc=h.n, rip=h.rip,
             **_regs(h), cpl=h.cpl, longmode=h.longmode, name=h.name)
    rec.emit("kvm", "vmexit", "EXIT_REASON_VMCALL", hc=h.n, exit_reason=hc.EXIT_REASON_VMCALL,
             svm_exit_code=hc.SVM_EXIT_VMMCALL, handler="kvm_emulate_hypercall")
    data: dict[str, Any] = {"hc": h.n, "nr": h.nr, "case": h.case, "handler": h.handler}
    if not h.exit_to_user:
        data["ret"] = h.rax
    rec.emit("kvm", "hypercall", h.case, **data)


def _emit_in_kernel(rec: TraceRecorder, h: HypercallRecord) -> None:
    _emit_vmcall(rec, h)
    rip = h.rip + hc.INSN_LEN
    rec.emit("kvm", "skip", "kvm_skip_emulated_instruction", hc=h.n, rax=h.rax, rip=rip)
    rec.emit("guest", "resume", f"RAX = {h.rax:#x}", hc=h.n, rax=h.rax, rip=rip)


def run_hypercalls(guest: Guest, backend: str = "unicorn", *, hypercall_exit_enabled: int = 0,
                   reply: int = 0, bus: Bus | None = None, max_exits: int = 10_000,
                   **vcpu_kw: Any) -> HypercallRun:
    """Run ``guest`` to HLT or SHUTDOWN, recording every hypercall it makes.

    ``hypercall_exit_enabled`` is the mask a VMM passes to
    ``KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)`` (bit 12: ``KVM_HC_MAP_GPA_RANGE``);
    ``reply`` is what this VMM answers such an exit with
    (``kvm_run.hypercall.ret``: 0 = done, or a negative errno). Exits with a
    device (IO, MMIO) go to ``bus`` as in :func:`vbook.runner.run_guest`.
    On a host that never completes a VMCALL the KVM backend raises
    :class:`~vbook.errors.HypercallNotCompleted` — never a hang.
    """
    if isinstance(reply, bool) or not isinstance(reply, int) or not -(1 << 63) <= reply <= _U64:
        raise VbookError(f"reply must be a 64-bit integer (kvm_run.hypercall.ret), got {reply!r}")
    backend = pick(backend)
    bus = bus if bus is not None else SimpleBus(guest.inputs)
    rec = TraceRecorder(title=f"{guest.name} on {backend}: hypercalls", guest=guest.name,
                        backend=backend, hypercall_exit_enabled=hypercall_exit_enabled)
    exits: list[Exit] = []
    calls: list[HypercallRecord] = []
    end = ""
    seen = 0
    waiting: HypercallRecord | None = None  # a hypercall user space answered, not yet completed
    with open_vcpu(guest, backend, hypercall_exit_enabled=hypercall_exit_enabled,
                   **vcpu_kw) as vcpu:
        kernel_exits = getattr(vcpu, "kernel_exits", None)
        while not end:
            if len(exits) >= max_exits:
                raise BudgetExhausted(f"guest {guest.name!r} made {max_exits} exits without halting")
            rec.emit("qemu", "ioctl", "KVM_RUN", n=len(exits))
            entry_rip = vcpu.get_regs().rip
            if waiting is not None:  # complete_userspace_io, before the guest runs again
                rip = entry_rip = waiting.rip + hc.INSN_LEN
                rec.emit("kvm", "complete", "complete_hypercall_exit", hc=waiting.n,
                         rax=waiting.rax, rip=rip)
                rec.emit("guest", "resume", f"RAX = {waiting.rax:#x}", hc=waiting.n,
                         rax=waiting.rax, rip=rip)
                waiting = None
            rec.emit("kvm", "entry", "VM entry", rip=entry_rip)
            exit = vcpu.run()
            exits.append(exit)
            regs = vcpu.get_regs()
            for ke in (kernel_exits[seen:] if kernel_exits is not None else ()):
                # VMCALLs KVM finished in the kernel; one that went to user space
                # (user_exit) is recorded from its KVM_EXIT_HYPERCALL below
                if ke.reason == "VMCALL" and not getattr(ke, "user_exit", False):
                    h = _record(len(calls), ke, hypercall_exit_enabled, guest)
                    calls.append(h)
                    _emit_in_kernel(rec, h)
            seen = len(kernel_exits) if kernel_exits is not None else 0
            rec.emit("guest", "run", "guest runs", rip=entry_rip, exit_rip=regs.rip)
            if exit.hypercall is not None:
                x = exit.hypercall
                longmode = bool(x.longmode)
                args = (regs.rbx, regs.rcx, regs.rdx, regs.rsi)
                h = HypercallRecord(
                    len(calls), regs.rip, regs.rax, args, 0, longmode,
                    hc.switch_case(regs.rax, 0, longmode),
                    hc.kvm_emulate_hypercall(regs.rax, args, 0, longmode,
                                             hypercall_exit_enabled).handler,
                    hc.complete_hypercall_exit(reply, longmode), exit_to_user=True)
                calls.append(h)
                _emit_vmcall(rec, h)
            union = _union(exit)
            if exit.hypercall is not None:
                union["hc"] = calls[-1].n
            rec.emit("kvm", "exit", f"KVM_EXIT_{exit.reason.name}", exit_reason=exit.exit_reason,
                     **union)
            if exit.hypercall is not None:
                vcpu.complete((reply & _U64).to_bytes(8, "little"))
                rec.emit("qemu", "hypercall", f"{hypercall_name(exit.hypercall.nr)}: "
                         f"kvm_run.hypercall.ret = {reply}", hc=calls[-1].n, ret=reply & _U64)
                waiting = calls[-1]
                continue
            reply_bytes = handle(exit, bus)
            if reply_bytes is not None:
                vcpu.complete(reply_bytes)
            if exit.io is not None or exit.mmio is not None:
                rec.emit("device", "io", str(exit), reply=reply_bytes.hex() if reply_bytes else None)
            else:
                end = FINAL.get(exit.reason, exit.reason.name.lower())
        rec.emit("qemu", "stop", end)
    return HypercallRun(guest.name, backend, tuple(exits), tuple(calls), end, rec.freeze())


def _union(exit: Exit) -> dict[str, Any]:
    d = exit.to_dict()
    d.pop("reason")
    return d


__all__ = ["HypercallRecord", "HypercallRun", "hypercall_name", "run_hypercalls"]
