"""The smallest device model that answers a guest: the user-space side of an exit.

``SimpleBus`` plays QEMU's address spaces for the foundation chapters:
IN from a port answers the next value queued for that port (all ones when none
is left, like a floating ISA bus); OUT to the serial port COM1 (0x3f8) appends
to ``console``; MMIO behaves as a bank of latches (a read returns the last
value written to that address, 0 before). Richer devices (16550, debug exit,
virtio) live in their own models.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol

COM1 = 0x3F8  #: base port of the first serial port (QEMU hw/char/serial-isa.c)


class Bus(Protocol):
    def pio_in(self, port: int, size: int) -> int: ...
    def pio_out(self, port: int, size: int, value: int) -> None: ...
    def mmio_read(self, addr: int, size: int) -> int: ...
    def mmio_write(self, addr: int, size: int, value: int) -> None: ...


class SimpleBus:
    """Deterministic ports and latches; see the module docstring."""

    def __init__(self, inputs: Mapping[int, Sequence[int]] | None = None):
        self.inputs = {port: deque(vals) for port, vals in (inputs or {}).items()}
        self.console = ""
        self.latches: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"SimpleBus(console={self.console!r})"

    def pio_in(self, port: int, size: int) -> int:
        q = self.inputs.get(port)
        if q:
            return q.popleft() & ((1 << (8 * size)) - 1)
        return (1 << (8 * size)) - 1

    def pio_out(self, port: int, size: int, value: int) -> None:
        if port == COM1:
            self.console += chr(value & 0xFF)

    def mmio_read(self, addr: int, size: int) -> int:
        return self.latches.get(addr, 0) & ((1 << (8 * size)) - 1)

    def mmio_write(self, addr: int, size: int, value: int) -> None:
        self.latches[addr] = value
