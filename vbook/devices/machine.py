"""The board the run-loop model runs a guest on: two address spaces and three devices.

Like ``qemu-system-x86_64 -machine pc -device isa-debug-exit -device
pc-testdev`` with its first serial port, cut down to what this book's guests
use: QEMU's two root regions (system/physmem.c ``memory_map_init``) —
"io", 64 KiB of ports whose own ops are ``unassigned_io_ops``, and
"system", a container of all 2**64 bytes — with

* the 16550 UART "serial" at 0x3f8 (hw/char/serial-isa.c, COM1),
* ``isa-debug-exit`` at 0x501 (hw/misc/debugexit.c defaults),
* ``pc-testdev``'s ports at 0xe0 and 0xe8 and its MMIO window at 0xff000000
  (hw/misc/pc-testdev.c).

Everything else is unassigned: an ``IN`` from another port answers all ones,
a load from another address with no RAM answers 0. QEMU's real pc board has
many more devices and, between the roots and the devices, more containers
(the ISA and PCI address spaces; compare ``info mtree`` in the QEMU monitor).
Guest RAM is a KVM memory slot, not a region here: KVM never exits for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vbook.devices import debug_exit, pc_testdev, serial16550
from vbook.devices.debug_exit import ISADebugExitState
from vbook.devices.pc_testdev import PCTestdev
from vbook.devices.serial16550 import SerialState
from vbook.models.qemu_memory import (
    UINT64_MAX,
    AddressSpace,
    RunContext,
    memory_region_add_subregion,
    memory_region_init,
    memory_region_init_io,
    mtree,
    unassigned_io_ops,
)
from vbook.models.runstate import Runstate
from vbook.trace import TraceRecorder

#: COM1, where hw/char/serial-isa.c puts the first ISA serial port
SERIAL_BASE = serial16550.COM_PORTS[0]


@dataclass(eq=False)
class Machine:
    """A freshly reset board: address spaces, devices, and the main loop's requests.

    ``Machine()`` builds it (devices at their reset values); ``ctx`` is shared
    by both address spaces and says which thread accesses them, whether it
    holds the big QEMU lock, and where events are recorded.
    """

    ctx: RunContext = field(default_factory=RunContext)
    runstate: Runstate = field(default_factory=Runstate)
    serial: SerialState = field(default_factory=SerialState)
    debug_exit: ISADebugExitState = field(default_factory=ISADebugExitState)
    testdev: PCTestdev = field(default_factory=PCTestdev)

    def __post_init__(self) -> None:
        self.debug_exit.runstate = self.runstate
        system_io = memory_region_init_io("io", 65536, unassigned_io_ops)
        system_memory = memory_region_init("system", UINT64_MAX)
        self.address_space_io = AddressSpace("I/O", system_io, self.ctx)
        self.address_space_memory = AddressSpace("memory", system_memory, self.ctx)

        s = self.serial
        memory_region_add_subregion(system_io, SERIAL_BASE, memory_region_init_io(
            "serial", 8, serial16550.serial_io_ops, s, owner=s.type_name))
        d = self.debug_exit
        memory_region_add_subregion(system_io, d.iobase, memory_region_init_io(
            "isa-debug-exit", d.iosize, debug_exit.debug_exit_ops, d, owner=d.type_name))
        t = self.testdev
        memory_region_add_subregion(system_io, pc_testdev.IOPORT, memory_region_init_io(
            "pc-testdev-ioport", 4, pc_testdev.test_ioport_ops, t, owner=t.type_name))
        memory_region_add_subregion(system_io, pc_testdev.IOPORT_BYTE, memory_region_init_io(
            "pc-testdev-ioport-byte", 4, pc_testdev.test_ioport_byte_ops, t, owner=t.type_name))
        memory_region_add_subregion(system_memory, pc_testdev.IOMEM, memory_region_init_io(
            "pc-testdev-iomem", pc_testdev.IOMEM_LEN, pc_testdev.test_iomem_ops, t,
            owner=t.type_name))

    @classmethod
    def with_trace(cls, trace: TraceRecorder | None, thread: str = "CPU 0/KVM") -> Machine:
        """A machine whose accesses are recorded into ``trace``."""
        return cls(ctx=RunContext(trace=trace, thread=thread))

    def info_mtree(self) -> str:
        """Both address spaces as a tree, like ``info mtree`` in the QEMU monitor."""
        return mtree(self.address_space_io) + "\n\n" + mtree(self.address_space_memory)

    def __repr__(self) -> str:
        return (f"Machine(serial at {SERIAL_BASE:#x}, isa-debug-exit at {self.debug_exit.iobase:#x}, "
                f"pc-testdev at {pc_testdev.IOPORT:#x}/{pc_testdev.IOMEM:#x})")


__all__ = ["SERIAL_BASE", "Machine"]
