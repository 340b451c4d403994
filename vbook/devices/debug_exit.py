"""QEMU's ``isa-debug-exit``: a port that ends QEMU with an exit status the guest chose.

QEMU 9.2.4 hw/misc/debugexit.c. A region of ``iosize`` ports (default 2) at
``iobase`` (default 0x501). Reading gives 0; a write of value *v* (1 to 4
bytes) calls ``qemu_system_shutdown_request_with_code(SHUTDOWN_CAUSE_GUEST_SHUTDOWN,
(v << 1) | 1)``: QEMU shuts the VM down and its process exits with that
status — always odd, so a test harness can tell it from QEMU's own exit 0
(the header comment of hw/misc/pc-testdev.c shows the KVM unit tests run
with ``-device isa-debug-exit,iobase=0xf4,iosize=0x4``). A shell sees the
status modulo 256.

The write does not stop the vCPU: ``kvm_handle_io`` returns, ``kvm_cpu_exec``
loops, and it is the *main loop* that sees the request and stops every vCPU
(see :mod:`vbook.models.run_loop`). QEMU 2.0's version called ``exit()``
right inside the write callback instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vbook.models.qemu_memory import AccessConstraints, DeviceState, MemoryRegionOps
from vbook.models.runstate import Runstate, ShutdownCause

#: hw/misc/debugexit.c ``debug_exit_properties``: "iobase" and "iosize" defaults
IOBASE = 0x501
IOSIZE = 0x02


def exit_code(val: int) -> int:
    """The exit status QEMU ends with after the guest writes ``val``: ``(val << 1) | 1``."""
    return (val << 1) | 1


@dataclass(eq=False)
class ISADebugExitState(DeviceState):
    """``ISADebugExitState`` (hw/misc/debugexit.c): where it sits, and whom it asks to shut down."""

    type_name = "isa-debug-exit"

    iobase: int = IOBASE
    iosize: int = IOSIZE
    runstate: Runstate = field(default_factory=Runstate, repr=False)

    def __repr__(self) -> str:
        return f"ISADebugExitState(iobase={self.iobase:#x}, iosize={self.iosize})"


def debug_exit_read(s: ISADebugExitState, addr: int, size: int) -> int:
    """hw/misc/debugexit.c: reads give 0."""
    s.note(label="debug_exit_read = 0")
    return 0


def debug_exit_write(s: ISADebugExitState, addr: int, val: int, width: int) -> None:
    """hw/misc/debugexit.c: request a guest shutdown; QEMU will exit with ``(val << 1) | 1``."""
    code = exit_code(val)
    s.runstate.qemu_system_shutdown_request_with_code(ShutdownCause.GUEST_SHUTDOWN, code)
    s.note(label=f"debug_exit_write {val:#x}: qemu_system_shutdown_request_with_code("
                 f"SHUTDOWN_CAUSE_GUEST_SHUTDOWN, {code})", exit_code=code)


#: hw/misc/debugexit.c ``debug_exit_ops``: 1- to 4-byte accesses are valid
debug_exit_ops = MemoryRegionOps(
    read=debug_exit_read, write=debug_exit_write,
    valid=AccessConstraints(min_access_size=1, max_access_size=4),
    file="hw/misc/debugexit.c",
)

__all__ = ["IOBASE", "IOSIZE", "ISADebugExitState", "debug_exit_ops", "debug_exit_read",
           "debug_exit_write", "exit_code"]
