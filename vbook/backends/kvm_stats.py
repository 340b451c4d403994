"""KVM's own counters: the binary statistics of a VM or a vCPU (``KVM_GET_STATS_FD``).

Since Linux 5.14 every VM fd and vCPU fd answers ``KVM_GET_STATS_FD`` with a
read-only fd whose contents are self-describing (Documentation/virt/kvm/api.rst
4.134, ``virt/kvm/binary_stats.c``)::

    offset 0            struct kvm_stats_header  flags, name_size, num_desc,
                                                 id_offset, desc_offset, data_offset
    id_offset           the id string, name_size bytes ("kvm-<pid>", "kvm-<pid>/vcpu-0")
    desc_offset         num_desc x (struct kvm_stats_desc + name[name_size])
    data_offset         the values: u64[size] at data_offset + desc.offset

Only the data block changes while the VM lives, so :class:`StatsFd` reads the
header, id and descriptors once and :meth:`StatsFd.read` is one ``pread`` of
the data block. ``desc.flags`` packs three fields: the type (cumulative,
instant, peak, linear or log histogram), the unit and the base of
``exponent`` (a value times ``base ** exponent`` is in ``unit``:
``halt_wait_ns`` is seconds, POW10, exponent -9). Descriptors need not be in
offset order (this host lists ``max_mmu_rmap_size`` at 112 before
``max_mmu_page_hash_collisions`` at 104).

Only the standard library (``os``, ``fcntl``, ``struct``) talks to the kernel::

    with vcpu_stats(vcpu) as st:
        before = st.read()
        vcpu.run()
        moved = delta(before, st.read(), changed_only=True)   # {'halt_exits': 1, ...}
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from vbook.errors import BackendUnavailable, KvmError, VbookError
from vbook.models.kvm_api import Cap, Ioctl

#: ``KVM_CAP_BINARY_STATS_FD`` and ``KVM_GET_STATS_FD = _IO(KVMIO, 0xce)``: kept with the
#: other constants in :mod:`vbook.models.kvm_api` (pinned there by the C oracle)
KVM_CAP_BINARY_STATS_FD = int(Cap.BINARY_STATS_FD)
KVM_GET_STATS_FD = int(Ioctl.GET_STATS_FD)

#: ``KVM_STATS_{TYPE,UNIT,BASE}_{SHIFT,MASK}`` — include/uapi/linux/kvm.h (Linux 6.1.187)
KVM_STATS_TYPE_SHIFT, KVM_STATS_TYPE_MASK = 0, 0xF << 0
KVM_STATS_UNIT_SHIFT, KVM_STATS_UNIT_MASK = 4, 0xF << 4
KVM_STATS_BASE_SHIFT, KVM_STATS_BASE_MASK = 8, 0xF << 8


class StatsType(IntEnum):
    """``KVM_STATS_TYPE_*`` (the value in ``desc.flags``) — include/uapi/linux/kvm.h (Linux 6.1.187)."""

    CUMULATIVE = 0x0 << KVM_STATS_TYPE_SHIFT  # only goes up (exits, pf_fixed)
    INSTANT = 0x1 << KVM_STATS_TYPE_SHIFT  # a current value (pages_4k, mmu_unsync)
    PEAK = 0x2 << KVM_STATS_TYPE_SHIFT  # the largest value seen (max_mmu_rmap_size)
    LINEAR_HIST = 0x3 << KVM_STATS_TYPE_SHIFT  # size buckets of bucket_size each
    LOG_HIST = 0x4 << KVM_STATS_TYPE_SHIFT  # bucket i counts values in [2**(i-1), 2**i)


class StatsUnit(IntEnum):
    """``KVM_STATS_UNIT_*`` (the value in ``desc.flags``) — include/uapi/linux/kvm.h (Linux 6.1.187)."""

    NONE = 0x0 << KVM_STATS_UNIT_SHIFT
    BYTES = 0x1 << KVM_STATS_UNIT_SHIFT
    SECONDS = 0x2 << KVM_STATS_UNIT_SHIFT
    CYCLES = 0x3 << KVM_STATS_UNIT_SHIFT
    BOOLEAN = 0x4 << KVM_STATS_UNIT_SHIFT


class StatsBase(IntEnum):
    """``KVM_STATS_BASE_*`` (the value in ``desc.flags``) — include/uapi/linux/kvm.h (Linux 6.1.187)."""

    POW10 = 0x0 << KVM_STATS_BASE_SHIFT
    POW2 = 0x1 << KVM_STATS_BASE_SHIFT


#: ``struct kvm_stats_header``: flags, name_size, num_desc, id_offset, desc_offset, data_offset
HEADER = struct.Struct("<6I")
#: ``struct kvm_stats_desc`` without its ``name[name_size]``: flags, exponent (s16), size,
#: offset, bucket_size
DESC = struct.Struct("<IhHII")
#: each value is a u64 (size of them per descriptor)
_U64 = 8
#: refuse a header that asks for more than this (a corrupt fd, not a kernel)
_MAX_DESC, _MAX_NAME, _MAX_DATA = 4096, 4096, 1 << 24

_HISTOGRAMS = (StatsType.LINEAR_HIST, StatsType.LOG_HIST)


class StatsFormatError(VbookError):
    """A stats fd's header or descriptors do not describe a well-formed layout."""


def _enum(cls: type[IntEnum], value: int) -> Any:
    """The member, or the plain int for a value newer than the uapi 6.1 headers."""
    try:
        return cls(value)
    except ValueError:
        return value


@dataclass(frozen=True)
class StatsHeader:
    """``struct kvm_stats_header``, Linux field names."""

    flags: int
    name_size: int
    num_desc: int
    id_offset: int
    desc_offset: int
    data_offset: int

    @property
    def desc_stride(self) -> int:
        """Bytes per descriptor: ``sizeof(struct kvm_stats_desc) + name_size``."""
        return DESC.size + self.name_size


@dataclass(frozen=True)
class StatsDesc:
    """One ``struct kvm_stats_desc``, its ``flags`` split into type, unit and base."""

    name: str
    type: StatsType | int
    unit: StatsUnit | int
    base: StatsBase | int
    exponent: int
    size: int  # number of u64 values
    offset: int  # bytes from the header's data_offset
    bucket_size: int  # linear histograms only
    flags: int

    @property
    def is_histogram(self) -> bool:
        return self.type in _HISTOGRAMS

    @property
    def scale(self) -> float:
        """What one count is in :attr:`unit`: ``base ** exponent`` (1e-9 for ``halt_wait_ns``)."""
        return float((2 if self.base == StatsBase.POW2 else 10) ** self.exponent)

    def __repr__(self) -> str:
        def name(v: Any) -> str:
            return v.name if isinstance(v, IntEnum) else str(v)

        extra = f", bucket_size={self.bucket_size}" if self.bucket_size else ""
        return (f"StatsDesc({self.name!r}, {name(self.type)}, {name(self.unit)}, "
                f"{name(self.base)}**{self.exponent}, size={self.size}, offset={self.offset}{extra})")


def parse_header(buf: bytes) -> StatsHeader:
    """The header at the start of ``buf``, checked so that every later slice is in bounds."""
    if len(buf) < HEADER.size:
        raise StatsFormatError(f"stats header: {len(buf)} bytes, need {HEADER.size}")
    h = StatsHeader(*HEADER.unpack_from(buf))
    if not 0 < h.name_size <= _MAX_NAME:
        raise StatsFormatError(f"stats header: name_size {h.name_size} not in 1..{_MAX_NAME}")
    if h.num_desc > _MAX_DESC:
        raise StatsFormatError(f"stats header: num_desc {h.num_desc} is over {_MAX_DESC}")
    for what, off in (("id_offset", h.id_offset), ("desc_offset", h.desc_offset),
                      ("data_offset", h.data_offset)):
        if off < HEADER.size:
            raise StatsFormatError(f"stats header: {what} {off} points into the header")
    return h


def _name(raw: bytes, what: str) -> str:
    nul = raw.find(b"\0")
    if nul < 0:
        raise StatsFormatError(f"{what}: no NUL in its {len(raw)} bytes")
    return raw[:nul].decode("ascii", "replace")


def parse_descriptors(buf: bytes, h: StatsHeader) -> tuple[StatsDesc, ...]:
    """The ``num_desc`` descriptors of ``buf`` (the fd's bytes from offset 0), in fd order."""
    end = h.desc_offset + h.num_desc * h.desc_stride
    if len(buf) < end:
        raise StatsFormatError(f"stats descriptors end at {end}, only {len(buf)} bytes read")
    descs, seen = [], set()
    for i in range(h.num_desc):
        at = h.desc_offset + i * h.desc_stride
        flags, exponent, size, offset, bucket_size = DESC.unpack_from(buf, at)
        name = _name(buf[at + DESC.size:at + h.desc_stride], f"stats descriptor {i}")
        if name in seen:
            raise StatsFormatError(f"stats descriptor {i}: name {name!r} appears twice")
        seen.add(name)
        if size == 0 or offset % _U64 or offset + size * _U64 > _MAX_DATA:
            raise StatsFormatError(f"stats descriptor {name!r}: size {size}, offset {offset} "
                                   f"(need size >= 1, offset a multiple of 8)")
        descs.append(StatsDesc(
            name=name,
            type=_enum(StatsType, flags & KVM_STATS_TYPE_MASK),
            unit=_enum(StatsUnit, flags & KVM_STATS_UNIT_MASK),
            base=_enum(StatsBase, flags & KVM_STATS_BASE_MASK),
            exponent=exponent, size=size, offset=offset, bucket_size=bucket_size, flags=flags))
    return tuple(descs)


def data_size(descs: tuple[StatsDesc, ...]) -> int:
    """Bytes of the data block: the end of the furthest value."""
    return max((d.offset + d.size * _U64 for d in descs), default=0)


def decode(descs: tuple[StatsDesc, ...], data: bytes) -> dict[str, int | list[int]]:
    """name -> value from a data block: an int, or a list for a histogram (or any size > 1),
    in descriptor order."""
    if len(data) < data_size(descs):
        raise StatsFormatError(f"stats data: {len(data)} bytes, the descriptors need "
                               f"{data_size(descs)}")
    words = struct.unpack_from(f"<{len(data) // _U64}Q", data)
    out: dict[str, int | list[int]] = {}
    for d in descs:
        i = d.offset // _U64
        out[d.name] = list(words[i:i + d.size]) if d.size > 1 or d.is_histogram else words[i]
    return out


def delta(before: dict[str, Any], after: dict[str, Any], changed_only: bool = False
          ) -> dict[str, Any]:
    """``after - before`` per name (per bucket for histograms); names in both, in ``after``'s
    order. For instant and peak stats it is the change of the value, not a count.
    ``changed_only`` keeps the names that moved."""
    out: dict[str, Any] = {}
    for name, a in after.items():
        if name not in before:
            continue
        b = before[name]
        if isinstance(a, list) != isinstance(b, list) or (isinstance(a, list) and len(a) != len(b)):
            raise VbookError(f"delta: {name!r} is {b!r} before and {a!r} after (not the same shape)")
        d = [x - y for x, y in zip(a, b, strict=True)] if isinstance(a, list) else a - b
        if not changed_only or (any(d) if isinstance(d, list) else d):
            out[name] = d
    return out


def _pread(fd: int, n: int, offset: int) -> bytes:
    try:
        buf = os.pread(fd, n, offset)
    except OSError as e:
        raise KvmError("pread(stats fd)", e.errno or 0, e.strerror or "") from None
    if len(buf) != n:
        raise StatsFormatError(f"stats fd: read {len(buf)} of {n} bytes at offset {offset}")
    return buf


class StatsFd:
    """The stats fd of one VM or vCPU: its layout read once, its values by :meth:`read`.

    ``StatsFd(fd)`` takes ownership of ``fd`` (any fd that can ``pread``: a stats fd from
    ``KVM_GET_STATS_FD``, or a file holding the same bytes) and closes it in :meth:`close`.
    """

    def __init__(self, fd: int):
        self._fd = fd
        try:
            self.header = parse_header(_pread(fd, HEADER.size, 0))
            h = self.header
            end = max(h.id_offset + h.name_size, h.desc_offset + h.num_desc * h.desc_stride)
            head = _pread(fd, end, 0)
            #: "kvm-<pid>" for a VM, "kvm-<pid>/vcpu-<n>" for a vCPU
            self.id = _name(head[h.id_offset:h.id_offset + h.name_size], "stats id")
            self.descriptors = parse_descriptors(head, h)
            self._by_name = {d.name: d for d in self.descriptors}
            self._size = data_size(self.descriptors)
        except BaseException:
            self.close()
            raise

    @property
    def kind(self) -> str:
        """``"vm"``, or ``"vcpu-<n>"`` (from the id; the pid in it is left out)."""
        _, sep, rest = self.id.partition("/")
        return rest if sep else "vm"

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.descriptors]

    def __getitem__(self, name: str) -> StatsDesc:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.descriptors)

    def read(self) -> dict[str, int | list[int]]:
        """Every value now: one ``pread`` of the data block, decoded (see :func:`decode`)."""
        if self._fd < 0:
            raise VbookError("this StatsFd is closed")
        return decode(self.descriptors, _pread(self._fd, self._size, self.header.data_offset))

    def close(self) -> None:
        """Close the stats fd. Safe to call twice."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> StatsFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __repr__(self) -> str:
        state = ", closed" if self.closed else ""
        return f"StatsFd({self.kind!r}, {len(self.descriptors)} stats{state})"


def open_stats(fd: int) -> StatsFd:
    """``KVM_GET_STATS_FD`` on a VM fd or a vCPU fd; ``fd`` stays the caller's."""
    try:
        stats_fd = fcntl.ioctl(fd, KVM_GET_STATS_FD)
    except OSError as e:
        raise KvmError("KVM_GET_STATS_FD", e.errno or 0, e.strerror or "") from None
    return StatsFd(stats_fd)


_NO_CAP = ("KVM_CAP_BINARY_STATS_FD is 0 on {dev}: this kernel has no binary stats "
           "(Linux 5.14 added them); read /sys/kernel/debug/kvm instead")


def check_available(dev: str | None = None) -> None:
    """Raise :class:`~vbook.errors.BackendUnavailable` saying why KVM's stats cannot be read
    here (no usable /dev/kvm, or ``KVM_CAP_BINARY_STATS_FD`` is 0)."""
    from vbook.backends.kvm import KvmVcpu, kvm_dev

    dev = dev or kvm_dev()
    KvmVcpu.check_available(dev)
    fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    try:
        cap = fcntl.ioctl(fd, Ioctl.CHECK_EXTENSION, KVM_CAP_BINARY_STATS_FD)
    except OSError as e:
        raise BackendUnavailable("kvm", f"KVM_CHECK_EXTENSION failed on {dev}: {e.strerror}"
                                 ) from None
    finally:
        os.close(fd)
    if cap <= 0:
        raise BackendUnavailable("kvm", _NO_CAP.format(dev=dev))


def _fd_of(vcpu: Any, attr: str) -> int:
    fd = getattr(vcpu, attr, -1)
    if not isinstance(fd, int) or fd < 0:
        raise VbookError(f"{vcpu!r} is closed (or not a KvmVcpu): no fd to read stats from")
    vm = getattr(vcpu, "vm_fd", -1)
    try:
        cap = fcntl.ioctl(vm, Ioctl.CHECK_EXTENSION, KVM_CAP_BINARY_STATS_FD)
    except OSError:
        cap = 0
    if cap <= 0:
        raise BackendUnavailable("kvm", _NO_CAP.format(dev="this VM"))
    return fd


def vm_stats(vcpu: Any) -> StatsFd:
    """The stats of the VM a :class:`~vbook.backends.kvm.KvmVcpu` runs in (16 here)."""
    return open_stats(_fd_of(vcpu, "vm_fd"))


def vcpu_stats(vcpu: Any) -> StatsFd:
    """The stats of a :class:`~vbook.backends.kvm.KvmVcpu` itself (47 here)."""
    return open_stats(_fd_of(vcpu, "vcpu_fd"))


__all__ = [
    "DESC", "HEADER", "KVM_CAP_BINARY_STATS_FD", "KVM_GET_STATS_FD", "StatsBase", "StatsDesc",
    "StatsFd", "StatsFormatError", "StatsHeader", "StatsType", "StatsUnit", "check_available",
    "data_size", "decode", "delta", "open_stats", "parse_descriptors", "parse_header",
    "vcpu_stats", "vm_stats",
]
