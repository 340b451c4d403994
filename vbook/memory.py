"""Guest-physical memory: a byte array the models read and write.

Little-endian, byte-addressed, bounds-checked. Every access is appended to
``accesses`` (unless ``record=False``) so a widget can show which bytes a model
touched, in order — the way a reader would watch a bus analyser.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vbook.errors import MemoryAccessError


@dataclass(frozen=True)
class Access:
    """One recorded access: ``kind`` is "r" or "w"."""

    kind: str
    addr: int
    size: int

    def __repr__(self) -> str:
        return f"Access({self.kind!r}, {self.addr:#x}, {self.size})"


_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


class GuestMemory:
    """``size`` bytes of guest-physical memory starting at GPA 0."""

    def __init__(self, size: int, *, record: bool = True):
        if size <= 0:
            raise ValueError(f"memory size must be positive, got {size}")
        self.size = size
        self.buf = bytearray(size)
        self.record = record
        self.accesses: list[Access] = []

    def __repr__(self) -> str:
        return f"GuestMemory(size={self.size:#x})"

    def __len__(self) -> int:
        return self.size

    def _check(self, addr: int, n: int) -> None:
        if addr < 0 or n < 0 or addr + n > self.size:
            raise MemoryAccessError(addr, n, self.size)

    def read(self, addr: int, n: int) -> bytes:
        self._check(addr, n)
        if self.record:
            self.accesses.append(Access("r", addr, n))
        return bytes(self.buf[addr : addr + n])

    def write(self, addr: int, data: bytes) -> None:
        n = len(data)
        self._check(addr, n)
        if self.record:
            self.accesses.append(Access("w", addr, n))
        self.buf[addr : addr + n] = data

    def _read_uint(self, addr: int, n: int) -> int:
        return struct.unpack(_FMT[n], self.read(addr, n))[0]

    def _write_uint(self, addr: int, n: int, value: int) -> None:
        if not 0 <= value < 1 << (8 * n):
            raise ValueError(f"{value:#x} does not fit in {n} byte(s)")
        self.write(addr, struct.pack(_FMT[n], value))

    def read_u8(self, addr: int) -> int:
        return self._read_uint(addr, 1)

    def read_u16(self, addr: int) -> int:
        return self._read_uint(addr, 2)

    def read_u32(self, addr: int) -> int:
        return self._read_uint(addr, 4)

    def read_u64(self, addr: int) -> int:
        return self._read_uint(addr, 8)

    def write_u8(self, addr: int, value: int) -> None:
        self._write_uint(addr, 1, value)

    def write_u16(self, addr: int, value: int) -> None:
        self._write_uint(addr, 2, value)

    def write_u32(self, addr: int, value: int) -> None:
        self._write_uint(addr, 4, value)

    def write_u64(self, addr: int, value: int) -> None:
        self._write_uint(addr, 8, value)

    def clear_log(self) -> list[Access]:
        """Return the recorded accesses and start a new log."""
        log, self.accesses = self.accesses, []
        return log
