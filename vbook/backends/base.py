"""What every vCPU backend returns and offers: the shape of KVM_RUN.

``Exit`` mirrors ``struct kvm_run`` after ``KVM_RUN`` returns: an
``exit_reason`` and the union member it selects (``io``, ``mmio``,
``hypercall``). Both backends — unicorn and the real ``/dev/kvm`` — return
these same objects, so their exit sequences can be compared with ``==``.

Completion works as on KVM: after an ``IO`` exit with direction IN, or an
``MMIO`` read, the caller supplies the bytes with :meth:`VCpu.complete`
(KVM: write them into the kvm_run data area) and the *next* :meth:`VCpu.run`
finishes the instruction (KVM: ``complete_userspace_io``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from vbook.errors import VbookError
from vbook.guests.base import Guest
from vbook.memory import GuestMemory
from vbook.models.kvm_api import ExitReason, IoDirection


@dataclass(frozen=True)
class IoExit:
    """``kvm_run.io``: a port access the kernel could not handle itself.

    ``data`` holds the ``size * count`` bytes an OUT wrote; it is empty for IN
    (the data is what user space answers with).
    """

    direction: IoDirection
    size: int
    port: int
    count: int = 1
    data: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.direction.name.lower(), "size": self.size, "port": self.port,
                "count": self.count, "data": self.data.hex()}


@dataclass(frozen=True)
class MmioExit:
    """``kvm_run.mmio``: an access to a guest-physical address with no memory slot."""

    phys_addr: int
    len: int
    is_write: bool
    data: bytes = b""  # bytes written; empty for a read

    def to_dict(self) -> dict[str, Any]:
        return {"phys_addr": self.phys_addr, "len": self.len, "is_write": self.is_write,
                "data": self.data.hex()}


@dataclass(frozen=True)
class HypercallExit:
    """``kvm_run.hypercall``: a hypercall KVM hands to user space (KVM_HC_MAP_GPA_RANGE)."""

    nr: int
    args: tuple[int, ...] = (0, 0, 0, 0, 0, 0)
    longmode: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"nr": self.nr, "args": list(self.args), "longmode": self.longmode}


@dataclass(frozen=True)
class Exit:
    """One return of KVM_RUN: ``reason`` plus the member of the exit union it selects.

    ``detail`` carries a one-line explanation for exits without a union member
    (SHUTDOWN: "triple fault"; INTERNAL_ERROR: the suberror).
    """

    reason: ExitReason
    io: IoExit | None = None
    mmio: MmioExit | None = None
    hypercall: HypercallExit | None = None
    detail: str = ""

    @property
    def exit_reason(self) -> int:
        """The raw ``kvm_run.exit_reason`` number."""
        return int(self.reason)

    @property
    def needs_data(self) -> bool:
        """True when user space must answer with :meth:`VCpu.complete` (IN or MMIO read)."""
        if self.io is not None:
            return self.io.direction == IoDirection.IN
        return self.mmio is not None and not self.mmio.is_write

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"reason": self.reason.name}
        for member in ("io", "mmio", "hypercall"):
            m = getattr(self, member)
            if m is not None:
                d.update(m.to_dict())
        if self.detail:
            d["detail"] = self.detail
        return d

    def __str__(self) -> str:
        if self.io is not None:
            io = self.io
            s = f"IO {io.direction.name.lower()} port={io.port:#x} size={io.size} count={io.count}"
            return s + (f" data={io.data.hex()}" if io.data else "")
        if self.mmio is not None:
            m = self.mmio
            rw = "write" if m.is_write else "read"
            s = f"MMIO {rw} addr={m.phys_addr:#x} len={m.len}"
            return s + (f" data={m.data.hex()}" if m.data else "")
        if self.hypercall is not None:
            return f"HYPERCALL nr={self.hypercall.nr} args={list(self.hypercall.args)}"
        return self.reason.name + (f" ({self.detail})" if self.detail else "")


@dataclass
class Regs:
    """``struct kvm_regs`` (x86-64): general registers, RIP and RFLAGS."""

    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = 0x2

    FIELDS: ClassVar[tuple[str, ...]] = (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
    )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class VcpuStats:
    """Counters a backend keeps (like KVM's per-vCPU stats)."""

    runs: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    instructions: int | None = None  # unicorn counts; KVM cannot


class VCpu(ABC):
    """One virtual CPU with a guest loaded, driven like KVM_RUN."""

    backend: ClassVar[str]

    @classmethod
    @abstractmethod
    def check_available(cls) -> None:
        """Raise :class:`~vbook.errors.BackendUnavailable` (with the reason) if unusable here."""

    @classmethod
    @abstractmethod
    def from_guest(cls, guest: Guest, **kw: Any) -> VCpu:
        """A vCPU with ``guest`` loaded, in real mode at ``guest.load_addr``."""

    @abstractmethod
    def run(self) -> Exit:
        """Run the guest until the next exit to user space and return it."""

    @abstractmethod
    def complete(self, data: bytes) -> None:
        """Answer the pending IN / MMIO read with ``data`` before the next ``run``."""

    @abstractmethod
    def get_regs(self) -> Regs: ...

    @abstractmethod
    def set_regs(self, regs: Regs) -> None: ...

    @abstractmethod
    def read_memory(self, gpa: int, n: int) -> bytes:
        """Read guest RAM (a memory slot), not MMIO."""

    @property
    def memory(self) -> GuestMemory:
        """Guest RAM itself as a :class:`~vbook.memory.GuestMemory` (no copy): what a model
        writes there the guest sees, what the guest wrote a model reads. Both backends give
        it (KVM: the mmap of memory slot 0; unicorn: the buffer it runs on); :meth:`close`
        releases it, and a later access raises :class:`~vbook.memory.MemoryReleased`."""
        raise VbookError(f"{type(self).__name__} gives no view of its guest RAM")

    @abstractmethod
    def close(self) -> None:
        """Release everything (fds, mmaps, emulator). Safe to call twice."""

    def __enter__(self) -> VCpu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
