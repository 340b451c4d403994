"""Run a guest to its end on a backend: the minimal user-space exit loop.

This is the loop every VMM has (QEMU's ``kvm_cpu_exec``, kvmtool,
Firecracker): ``KVM_RUN``, look at ``exit_reason``, let a device answer,
repeat. :mod:`vbook.models.run_loop` models QEMU's loop in detail; this one
only drives a guest and records what crossed the boundary, so the same guest
can be compared on unicorn and on real KVM.
"""

from __future__ import annotations

from dataclasses import dataclass

from vbook.backends import open_vcpu, pick
from vbook.backends.base import Exit
from vbook.bus import Bus, SimpleBus
from vbook.errors import BudgetExhausted
from vbook.guests.base import Guest
from vbook.models.kvm_api import ExitReason, IoDirection
from vbook.trace import Trace, TraceRecorder

#: exits after which a run stops: the guest is done (no interrupts to wake a HLT)
FINAL = {ExitReason.HLT: "hlt", ExitReason.SHUTDOWN: "shutdown"}


@dataclass(frozen=True)
class RunResult:
    """What a run did: the exits in order, how it ended, and its trace."""

    guest: str
    backend: str
    exits: tuple[Exit, ...]
    end: str
    console: str
    trace: Trace

    def to_dict(self) -> dict:
        return {"guest": self.guest, "backend": self.backend, "end": self.end,
                "console": self.console, "exits": [e.to_dict() for e in self.exits]}

    def __repr__(self) -> str:
        return (f"RunResult({self.guest!r} on {self.backend}: {len(self.exits)} exits, "
                f"ended by {self.end})")


def _le(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little")


def handle(exit: Exit, bus: Bus) -> bytes | None:
    """Let the device model act on one exit; return the bytes an IN/MMIO read gets."""
    if exit.io is not None:
        io = exit.io
        if io.direction == IoDirection.OUT:
            for i in range(io.count):
                chunk = io.data[i * io.size:(i + 1) * io.size]
                bus.pio_out(io.port, io.size, int.from_bytes(chunk, "little"))
            return None
        return b"".join(_le(bus.pio_in(io.port, io.size), io.size) for _ in range(io.count))
    if exit.mmio is not None:
        m = exit.mmio
        if m.is_write:
            bus.mmio_write(m.phys_addr, m.len, int.from_bytes(m.data, "little"))
            return None
        return _le(bus.mmio_read(m.phys_addr, m.len), m.len)
    return None


def run_guest(guest: Guest, backend: str = "unicorn", bus: Bus | None = None,
              max_exits: int = 10_000, **vcpu_kw) -> RunResult:
    """Run ``guest`` until HLT or SHUTDOWN (or another exit a VMM must stop on).

    A guest that keeps exiting past ``max_exits`` raises
    :class:`~vbook.errors.BudgetExhausted`; one that runs without exiting is
    stopped by the backend's own budget (instructions on unicorn, time on KVM).
    """
    backend = pick(backend)
    bus = bus if bus is not None else SimpleBus(guest.inputs)
    rec = TraceRecorder(title=f"{guest.name} on {backend}", guest=guest.name, backend=backend)
    exits: list[Exit] = []
    end = ""
    with open_vcpu(guest, backend, **vcpu_kw) as vcpu:
        while not end:
            if len(exits) >= max_exits:
                raise BudgetExhausted(
                    f"guest {guest.name!r} made {max_exits} exits without halting")
            entry_rip = vcpu.get_regs().rip
            rec.emit("qemu", "ioctl", "KVM_RUN", n=len(exits))
            rec.emit("kvm", "entry", "VM entry", rip=entry_rip)
            exit = vcpu.run()
            exits.append(exit)
            exit_rip = vcpu.get_regs().rip
            rec.emit("guest", "run", "guest runs", rip=entry_rip, exit_rip=exit_rip)
            rec.emit("kvm", "exit", f"KVM_EXIT_{exit.reason.name}", exit_reason=exit.exit_reason,
                     **_union(exit))
            reply = handle(exit, bus)
            if reply is not None:
                vcpu.complete(reply)
            if exit.io is not None or exit.mmio is not None:
                rec.emit("device", "io", str(exit), reply=reply.hex() if reply else None)
            else:
                # HLT, SHUTDOWN, or an exit this loop has no device for: stop
                end = FINAL.get(exit.reason, exit.reason.name.lower())
        rec.emit("qemu", "stop", end)
    console = getattr(bus, "console", "")
    return RunResult(guest.name, backend, tuple(exits), end, console, rec.freeze())


def _union(exit: Exit) -> dict:
    d = exit.to_dict()
    d.pop("reason")
    return d
