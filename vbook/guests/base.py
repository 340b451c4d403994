"""A guest program: real x86 machine code plus the assembly it came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: Every guest starts like a CPU after reset would, in real mode, with
#: CS = DS = ES = SS = 0, IP = ``load_addr`` and SP = ``stack_top``.
ENTRY_MODE = 16


@dataclass(frozen=True)
class Guest:
    """A tiny guest.

    ``code`` is loaded at guest-physical ``load_addr`` in a RAM slot of
    ``mem_size`` bytes starting at GPA 0; execution begins there in real mode.
    ``mode`` is the CPU mode the program does its work in (16 real, 32
    protected, 64 long); a guest with ``mode`` 32 or 64 switches itself.
    ``listing`` is the assembly source (GNU as, Intel syntax) the bytes come
    from. ``inputs`` are the values the device model answers to IN, per port,
    in order, so a run is deterministic.
    """

    name: str
    mode: int
    code: bytes
    listing: str
    description: str = ""
    load_addr: int = 0x1000
    mem_size: int = 0x10000
    stack_top: int = 0x1000
    inputs: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Guest({self.name!r}, mode={self.mode}, {len(self.code)} bytes at {self.load_addr:#x})"
