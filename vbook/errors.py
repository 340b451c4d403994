"""Typed errors of vbook. Every error the book raises is a :class:`VbookError`.

A reader who gets one of these should learn *what* was wrong (which address,
which index, which device) from the message alone.
"""

from __future__ import annotations


class VbookError(Exception):
    """Base class of every error vbook raises on purpose."""


class MemoryAccessError(VbookError):
    """A guest-physical access fell outside the memory it was made to."""

    def __init__(self, addr: int, size: int, limit: int):
        self.addr, self.size, self.limit = addr, size, limit
        super().__init__(
            f"guest-physical access of {size} byte(s) at {addr:#x} is outside "
            f"memory [0, {limit:#x})"
        )


class GuestError(VbookError):
    """A guest program is malformed or cannot be loaded."""


class BackendUnavailable(VbookError):
    """A backend (unicorn, /dev/kvm, tap …) cannot be used on this machine.

    ``reason`` says why in one sentence a reader can act on.
    """

    def __init__(self, backend: str, reason: str):
        self.backend, self.reason = backend, reason
        super().__init__(f"{backend} backend unavailable: {reason}")


class BudgetExhausted(VbookError):
    """A guest ran past its instruction or exit budget (a runaway guest)."""


class RunTimeout(VbookError):
    """KVM_RUN did not return within its time limit."""

    def __init__(self, message: str, rip: int | None = None):
        self.rip = rip
        super().__init__(message)


class HypercallNotCompleted(RunTimeout):
    """The host never finished a VMCALL/VMMCALL: KVM_RUN did not come back and
    RIP stayed on the hypercall instruction (measured on PVM hosts)."""


class GuestFault(VbookError):
    """The guest raised an exception the backend cannot deliver (no IDT)."""

    def __init__(self, message: str, vector: int | None = None, rip: int | None = None):
        self.vector, self.rip = vector, rip
        super().__init__(message)


class KvmError(VbookError):
    """An ioctl on /dev/kvm failed; ``errno`` and the ioctl name are kept."""

    def __init__(self, ioctl: str, errno: int, message: str = ""):
        self.ioctl, self.errno = ioctl, errno
        super().__init__(f"{ioctl} failed: errno {errno}{': ' + message if message else ''}")


class TraceError(VbookError):
    """A trace (or its JSON) is malformed."""


class VringError(VbookError):
    """A virtqueue in guest memory is malformed (loop, index or address out of range)."""


class VirtioError(VringError):
    """The device side found the guest's ring malformed: QEMU's ``virtio_error()``
    (hw/virtio/virtio.c, QEMU 9.2.4), after which the device is *broken*.

    ``message`` is QEMU's own text (with its ``%u`` filled in), ``function`` the
    QEMU function that calls ``virtio_error``, ``detail`` what the model adds.
    """

    def __init__(self, message: str, function: str, detail: str = ""):
        self.message, self.function, self.detail = message, function, detail
        super().__init__(f"{message}{f' ({detail})' if detail else ''} [QEMU {function}]")


class BadRing(VringError):
    """The driver side found the device's used ring malformed: Linux ``BAD_RING()``
    (drivers/virtio/virtio_ring.c, Linux 6.1), after which the queue is *broken*."""


class VringFull(VringError):
    """``virtqueue_add`` found too few free descriptors (Linux returns ``-ENOSPC``)."""


class VringBroken(VringError):
    """An operation on a virtqueue already marked broken (Linux returns ``-EIO``)."""


class VringUsageError(VringError, ValueError):
    """The caller asked a ring model for something it cannot be: a queue size that is
    no power of two, a head that was never popped, a length that is no u32 …"""


class PagingError(VbookError):
    """A page table is malformed in a way the walker cannot follow."""


class UnknownExitReason(KvmError):
    """KVM_RUN returned an ``exit_reason`` that is no ``KVM_EXIT_*`` vbook knows
    (a kernel newer than the uapi headers the book is pinned to)."""

    def __init__(self, exit_reason: int, message: str = ""):
        self.ioctl, self.errno, self.exit_reason = "KVM_RUN", 0, exit_reason
        VbookError.__init__(self, message or (
            f"KVM_RUN returned exit_reason {exit_reason}, which is no KVM_EXIT_* of the uapi "
            "headers vbook knows (a newer kernel?)"))
