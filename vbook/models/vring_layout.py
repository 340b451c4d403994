"""The split virtqueue's bytes: constants, the legacy layout, descriptors, the event index.

A split virtqueue (VIRTIO v1.2 §2.7 "Split Virtqueues") is three areas of guest
memory, laid out one after the other by Linux's legacy ``vring_init`` /
``vring_size`` (include/uapi/linux/virtio_ring.h, uapi 6.1.187)::

    desc   num x struct vring_desc    {u64 addr; u32 len; u16 flags; u16 next;}  16 B each
    avail  u16 flags; u16 idx; u16 ring[num]; u16 used_event;
           ... padding up to the next ``align`` boundary ...
    used   u16 flags; u16 idx; struct vring_used_elem {u32 id; u32 len;} ring[num];
           u16 avail_event;

``vring_size(num, align) = ALIGN(16*num + 2*(3+num), align) + 2*3 + 8*num``.
The driver (the guest) writes the descriptor table and the avail ring; the
device (QEMU) writes the used ring. ``avail->idx`` and ``used->idx`` are
free-running 16-bit counters: slot ``idx % num`` is the next entry, and they
wrap at 2**16, not at ``num``. All fields are little-endian (VIRTIO 1.0; a
legacy device on x86 is little-endian too).

This module holds what both sides share: the constants (checked against the
header by tests/test_vring_oracle.py), :class:`Layout`, :func:`vring_size`,
:func:`need_event` and the descriptor codec. :mod:`vbook.models.vring_driver`
is the Linux side, :mod:`vbook.models.vring_device` the QEMU side.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import NamedTuple

from vbook.errors import VringUsageError
from vbook.memory import GuestMemory

# --- constants, with their source ----------------------------------------------


class DescFlag(IntFlag):
    """``VRING_DESC_F_*`` — include/uapi/linux/virtio_ring.h (uapi 6.1.187)."""

    NEXT = 1       #: the chain continues in ``next``
    WRITE = 2      #: the buffer is device-writable (otherwise device-readable)
    INDIRECT = 4   #: the buffer is a table of descriptors


class AvailFlag(IntFlag):
    """``VRING_AVAIL_F_*`` (avail->flags, driver → device) — linux/virtio_ring.h (uapi 6.1.187)."""

    NO_INTERRUPT = 1  #: "don't interrupt me" (ignored by a device with EVENT_IDX)


class UsedFlag(IntFlag):
    """``VRING_USED_F_*`` (used->flags, device → driver) — linux/virtio_ring.h (uapi 6.1.187)."""

    NO_NOTIFY = 1  #: "don't kick me" (ignored by a driver with EVENT_IDX)


class RingFeature(IntEnum):
    """``VIRTIO_RING_F_*`` feature *bit numbers* — linux/virtio_ring.h (uapi 6.1.187);
    VIRTIO v1.2 §6 "Reserved Feature Bits"."""

    INDIRECT_DESC = 28  #: descriptors may point at a table of descriptors
    EVENT_IDX = 29      #: used_event / avail_event replace the two flags


class TransportFeature(IntEnum):
    """The other transport feature bit numbers that touch a ring: ``VIRTIO_F_*`` —
    include/uapi/linux/virtio_config.h (uapi 6.1.187); VIRTIO v1.2 §6."""

    NOTIFY_ON_EMPTY = 24
    ANY_LAYOUT = 27
    VERSION_1 = 32
    ACCESS_PLATFORM = 33
    RING_PACKED = 34
    IN_ORDER = 35
    ORDER_PLATFORM = 36
    SR_IOV = 37
    RING_RESET = 40


class RingAlign(IntEnum):
    """``VRING_*_ALIGN_SIZE`` — minimum alignments of the three areas (VIRTIO 1.0
    rings may be placed separately) — linux/virtio_ring.h (uapi 6.1.187)."""

    AVAIL = 2
    USED = 4
    DESC = 16


#: the Linux names, for readers who grep for them
VRING_DESC_F_NEXT = DescFlag.NEXT
VRING_DESC_F_WRITE = DescFlag.WRITE
VRING_DESC_F_INDIRECT = DescFlag.INDIRECT
VRING_AVAIL_F_NO_INTERRUPT = AvailFlag.NO_INTERRUPT
VRING_USED_F_NO_NOTIFY = UsedFlag.NO_NOTIFY
VIRTIO_RING_F_INDIRECT_DESC = RingFeature.INDIRECT_DESC
VIRTIO_RING_F_EVENT_IDX = RingFeature.EVENT_IDX
VRING_AVAIL_ALIGN_SIZE = RingAlign.AVAIL
VRING_USED_ALIGN_SIZE = RingAlign.USED
VRING_DESC_ALIGN_SIZE = RingAlign.DESC
#: ``VIRTIO_PCI_VRING_ALIGN`` — include/uapi/linux/virtio_pci.h: a legacy PCI ring's ``align``
VIRTIO_PCI_VRING_ALIGN = 4096
#: the largest queue size (VIRTIO v1.2 §2.7 "Split Virtqueues": "The maximum Queue Size value is 32768")
VRING_MAX_NUM = 32768

#: struct sizes and field offsets (linux/virtio_ring.h; ``ring[]`` is a flexible array)
SIZEOF_VRING_DESC = 16
SIZEOF_VRING_AVAIL = 4
SIZEOF_VRING_USED_ELEM = 8
SIZEOF_VRING_USED = 4
VRING_DESC_OFFSETS = {"addr": 0, "len": 8, "flags": 12, "next": 14}
VRING_AVAIL_OFFSETS = {"flags": 0, "idx": 2, "ring": 4}
VRING_USED_ELEM_OFFSETS = {"id": 0, "len": 4}
VRING_USED_OFFSETS = {"flags": 0, "idx": 2, "ring": 4}

U16, U32, U64 = 0xFFFF, 0xFFFF_FFFF, (1 << 64) - 1
_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")


# --- the two inline functions of the header -----------------------------------


def vring_size(num: int, align: int = VIRTIO_PCI_VRING_ALIGN) -> int:
    """Bytes of a legacy split ring of ``num`` entries: Linux's ``vring_size()``
    (linux/virtio_ring.h), including ``used_event`` and ``avail_event``."""
    return (((SIZEOF_VRING_DESC * num + 2 * (3 + num) + align - 1) & ~(align - 1))
            + 2 * 3 + SIZEOF_VRING_USED_ELEM * num)


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """Linux's ``vring_need_event()`` (linux/virtio_ring.h): having moved an index from
    ``old_idx`` to ``new_idx``, must the other side be told, given the ``event_idx``
    it published? True iff ``event_idx`` is in ``[old_idx, new_idx)`` mod 2**16::

        return (__u16)(new_idx - event_idx - 1) < (__u16)(new_idx - old);
    """
    return (new_idx - event_idx - 1) & U16 < (new_idx - old_idx) & U16


# --- the layout ----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where a legacy split ring of ``num`` entries at guest-physical ``base`` lies:
    Linux's ``vring_init(vr, num, base, align)``. All addresses are GPAs.

    ``num`` must be a power of two (Linux ``vring_alloc_queue_split``: "Bad
    virtqueue length") and at most 32768; ``align`` a power of two (legacy PCI
    uses 4096, ``VIRTIO_PCI_VRING_ALIGN``); ``base`` 16-byte aligned. ``size``
    equals :func:`vring_size` whenever ``base`` is a multiple of ``align``.
    """

    num: int
    base: int = 0
    align: int = VIRTIO_PCI_VRING_ALIGN
    #: GPA of the descriptor table (= ``base``)
    desc: int = field(init=False, compare=False)
    #: GPA of ``struct vring_avail`` (flags, idx, ring[num], used_event)
    avail: int = field(init=False, compare=False)
    #: GPA of ``used_event``: ``avail->ring[num]`` (``vring_used_event(vr)``)
    used_event: int = field(init=False, compare=False)
    #: GPA of ``struct vring_used``: the first ``align`` boundary after ``used_event``
    used: int = field(init=False, compare=False)
    #: GPA of ``avail_event``: the u16 after ``used->ring[num]`` (``vring_avail_event(vr)``)
    avail_event: int = field(init=False, compare=False)
    #: first GPA after the ring
    end: int = field(init=False, compare=False)
    #: bytes from ``desc`` to the end of ``avail_event``
    size: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        num, base, align = self.num, self.base, self.align
        if not isinstance(num, int) or num <= 0 or num & (num - 1) or num > VRING_MAX_NUM:
            raise VringUsageError(f"Bad virtqueue length {num}: the queue size must be a power "
                                  f"of 2 between 1 and {VRING_MAX_NUM}")
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise VringUsageError(f"vring align {align} is not a power of 2")
        if not isinstance(base, int) or base < 0 or base % VRING_DESC_ALIGN_SIZE:
            raise VringUsageError(f"vring base {base!r} is not a 16-byte aligned guest-physical "
                                  "address (VRING_DESC_ALIGN_SIZE)")
        # vring_init(vr, num, base, align)
        avail = base + SIZEOF_VRING_DESC * num
        used_event = avail + 4 + 2 * num
        used = (used_event + 2 + align - 1) & ~(align - 1)
        avail_event = used + 4 + SIZEOF_VRING_USED_ELEM * num
        for name, value in (("desc", base), ("avail", avail), ("used_event", used_event),
                            ("used", used), ("avail_event", avail_event), ("end", avail_event + 2),
                            ("size", avail_event + 2 - base)):
            object.__setattr__(self, name, value)

    # the fields, by the names of the header
    def desc_addr(self, i: int) -> int:
        return self.base + SIZEOF_VRING_DESC * i

    @property
    def avail_flags(self) -> int:
        return self.avail

    @property
    def avail_idx(self) -> int:
        return self.avail + 2

    def avail_ring(self, slot: int) -> int:
        return self.avail + 4 + 2 * slot

    @property
    def used_flags(self) -> int:
        return self.used

    @property
    def used_idx(self) -> int:
        return self.used + 2

    def used_ring(self, slot: int) -> int:
        return self.used + 4 + SIZEOF_VRING_USED_ELEM * slot

    def areas(self) -> dict[str, tuple[int, int]]:
        """``name -> (gpa, bytes)`` of the three areas, as QEMU maps them
        (``virtio_queue_get_{desc,avail,used}_size``, event fields included)."""
        return {"desc": (self.desc, SIZEOF_VRING_DESC * self.num),
                "avail": (self.avail, 6 + 2 * self.num),
                "used": (self.used, 6 + SIZEOF_VRING_USED_ELEM * self.num)}

    def to_dict(self) -> dict[str, int]:
        return {"num": self.num, "base": self.base, "align": self.align, "desc": self.desc,
                "avail": self.avail, "used": self.used, "used_event": self.used_event,
                "avail_event": self.avail_event, "size": self.size}

    def __repr__(self) -> str:
        return (f"Layout(num={self.num}, desc={self.desc:#x}, avail={self.avail:#x}, "
                f"used={self.used:#x}, size={self.size:#x})")


# --- descriptors -----------------------------------------------------------------


class Desc(NamedTuple):
    """One ``struct vring_desc`` as read from guest memory (a tuple: cheap to make)."""

    addr: int
    len: int
    flags: int
    next: int

    @classmethod
    def unpack(cls, raw: bytes) -> Desc:
        return cls._make(_DESC.unpack(raw))

    def pack(self) -> bytes:
        return _DESC.pack(*self)

    def to_dict(self) -> dict[str, int]:
        return {"addr": self.addr, "len": self.len, "flags": self.flags, "next": self.next}

    def __repr__(self) -> str:
        names = "|".join(f.name for f in DescFlag if self.flags & f) or "0"
        extra = self.flags & ~0x7
        if extra:
            names += f"|{extra:#x}"
        return f"Desc(addr={self.addr:#x}, len={self.len}, flags={names}, next={self.next})"


_make_desc = Desc._make


def read_desc(mem: GuestMemory, table: int, i: int) -> Desc:
    """Descriptor ``i`` of the table at GPA ``table`` (QEMU ``vring_split_desc_read``)."""
    return _make_desc(_DESC.unpack(mem.read(table + SIZEOF_VRING_DESC * i, SIZEOF_VRING_DESC)))


def write_desc(mem: GuestMemory, table: int, i: int, addr: int, length: int, flags: int, next_: int) -> None:
    """Write descriptor ``i`` of the table at ``table`` in one 16-byte store."""
    mem.write(table + SIZEOF_VRING_DESC * i, _DESC.pack(addr, length, flags, next_))


def pack_used_elem(id_: int, length: int) -> bytes:
    return _USED_ELEM.pack(id_, length)


def unpack_used_elem(raw: bytes) -> tuple[int, int]:
    return _USED_ELEM.unpack(raw)
