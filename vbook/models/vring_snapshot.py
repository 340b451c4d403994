"""A split virtqueue as it sits in guest memory, read back as plain data.

:func:`ring_state` reads the three areas of a legacy split ring (see
:mod:`vbook.models.vring_layout`) with :mod:`struct` and returns them as lists
and ints — what a widget shows, or a test compares::

    {"num": 256,
     "desc":  [[addr, len, flags, next], ...],                 # num entries
     "avail": {"flags": f, "idx": i, "ring": [head, ...], "used_event": e},
     "used":  {"flags": f, "idx": i, "ring": [[id, len], ...], "avail_event": e}}

Memory is anything with a ``buf`` (a :class:`vbook.memory.GuestMemory`: read
through its buffer, so its access log is not touched), a bytes-like object, or
anything with ``read(addr, n)``. Bytes beyond the end of memory read as 0 —
what QEMU's region cache gives for a ring area outside RAM (unassigned memory).
Nothing here writes, prints or keeps state.
"""

from __future__ import annotations

import struct
from typing import Any

_U16 = struct.Struct("<H")
_DESC = struct.Struct("<QIHH")
_ELEM = struct.Struct("<II")

#: VRING_DESC_F_NEXT / _WRITE / _INDIRECT (linux/virtio_ring.h)
NEXT, WRITE, INDIRECT = 1, 2, 4


def read_bytes(mem: Any, addr: int, n: int) -> bytes:
    """``n`` bytes of ``mem`` at ``addr``; what lies past its end reads as zeros."""
    if n <= 0:
        return b""
    if isinstance(mem, (bytes, bytearray, memoryview)):
        buf: Any = mem
    else:
        buf = getattr(mem, "buf", None)
    if buf is not None:
        size = len(buf)
        if addr >= size or addr < 0:
            return bytes(n)
        raw = bytes(buf[addr:min(size, addr + n)])
    else:
        size = int(getattr(mem, "size", addr + n))
        if addr >= size or addr < 0:
            return bytes(n)
        raw = bytes(mem.read(addr, min(n, size - addr)))
    return raw + bytes(n - len(raw))


def ring_areas(mem: Any, layout: Any) -> tuple[bytes, bytes, bytes]:
    """The raw bytes of the descriptor table, the avail area and the used area
    (each with its event field) — cheap to compare between two moments."""
    num = layout.num
    return (read_bytes(mem, layout.desc, 16 * num),
            read_bytes(mem, layout.avail, 6 + 2 * num),
            read_bytes(mem, layout.used, 6 + 8 * num))


def parse_areas(num: int, desc: bytes, avail: bytes, used: bytes) -> dict[str, Any]:
    """:func:`ring_state` from the bytes :func:`ring_areas` read."""
    return {
        "num": num,
        "desc": [list(d) for d in _DESC.iter_unpack(desc)],
        "avail": {"flags": _U16.unpack_from(avail, 0)[0], "idx": _U16.unpack_from(avail, 2)[0],
                  "ring": [h for (h,) in _U16.iter_unpack(avail[4:4 + 2 * num])],
                  "used_event": _U16.unpack_from(avail, 4 + 2 * num)[0]},
        "used": {"flags": _U16.unpack_from(used, 0)[0], "idx": _U16.unpack_from(used, 2)[0],
                 "ring": [list(e) for e in _ELEM.iter_unpack(used[4:4 + 8 * num])],
                 "avail_event": _U16.unpack_from(used, 4 + 8 * num)[0]},
    }


def ring_state(mem: Any, layout: Any) -> dict[str, Any]:
    """The split ring at ``layout`` (a :class:`~vbook.models.vring_layout.Layout`, or
    anything with ``num desc avail used``) in ``mem``, as plain data (module docstring)."""
    return parse_areas(layout.num, *ring_areas(mem, layout))


def read_indirect(mem: Any, addr: int, length: int, limit: int = 8) -> list[list[int]]:
    """The first ``limit`` entries ``[addr, len, flags, next]`` of the indirect table at
    ``addr`` of ``length`` bytes (``length // 16`` entries)."""
    n = max(0, min(length // 16, limit))
    return [list(d) for d in _DESC.iter_unpack(read_bytes(mem, addr, 16 * n))]


def follow_chain(desc: list[list[int]], head: int) -> list[int]:
    """The descriptor indices of the chain from ``head``: follow ``next`` while NEXT is set
    (as ``virtqueue_split_read_next_desc`` does); stops at an index out of the table or a
    loop, so a malformed ring gives a short list, never a hang."""
    num = len(desc)
    out: list[int] = []
    seen: set[int] = set()
    i = head
    while 0 <= i < num and i not in seen:
        out.append(i)
        seen.add(i)
        _, _, flags, nxt = desc[i]
        if not flags & NEXT:
            break
        i = nxt
    return out


__all__ = ["INDIRECT", "NEXT", "WRITE", "follow_chain", "parse_areas", "read_bytes",
           "read_indirect", "ring_areas", "ring_state"]
