"""QEMU's memory API in miniature: how an exit's address finds a device.

When ``kvm_cpu_exec`` gets ``KVM_EXIT_IO`` it calls
``address_space_rw(&address_space_io, port, …)``; for ``KVM_EXIT_MMIO``,
``address_space_rw(&address_space_memory, phys_addr, …)``. Neither knows any
device: an *address space* is a tree of *memory regions*, each a range with a
``MemoryRegionOps`` table of ``read``/``write`` callbacks, and the address
alone picks the region whose callback runs. This module is that machinery,
with QEMU 9.2.4's names and rules:

* :class:`MemoryRegion` — ``memory_region_init`` (a container: no callbacks of
  its own) or ``memory_region_init_io`` (callbacks ``ops`` with ``opaque``,
  the device's state); ``memory_region_add_subregion`` places one inside
  another at an offset. include/exec/memory.h, system/memory.c.
* :class:`MemoryRegionOps` — ``read(opaque, addr, size)`` and
  ``write(opaque, addr, val, size)``, with ``valid`` (what the guest may do)
  and ``impl`` (what the callbacks can take) access-size constraints.
* :func:`address_space_rw` — system/physmem.c: translate the address to a
  region (``flatview_translate``), cut the access to a size the region takes
  (``memory_access_size``), and dispatch it (``memory_region_dispatch_read``
  / ``_write``), which checks ``valid`` (``memory_region_access_valid``) and
  splits it into ``impl``-sized calls (``access_with_adjusted_size``).
* Nothing there: the I/O space's root region ``io`` has ops of its own,
  ``unassigned_io_ops`` (system/ioport.c), so a port no device claims reads
  as all ones (``unassigned_io_read`` returns ``-1ULL``) and drops writes; a
  hole in the memory space is ``io_mem_unassigned`` with
  ``unassigned_mem_ops`` (system/memory.c), which refuses the access
  (``valid.accepts`` is false): a read gives 0 (``unassigned_mem_read``) and
  the result is ``MEMTX_DECODE_ERROR``, which ``kvm_cpu_exec`` ignores.

Simplifications, all visible in the code: devices and host are little-endian
(x86), so QEMU's endianness swaps are the identity and are left out; there is
no RAM region (KVM handles guest RAM itself and never exits for it); regions
may not overlap (QEMU resolves overlaps by priority, with
``memory_region_add_subregion_overlap``); the flat view is not cached, the
tree is walked on every access; and the big QEMU lock is only *recorded*
(``prepare_mmio_access`` takes it around each device callback).

Every access is recorded when the address space's :class:`RunContext` has a
trace: one ``qemu`` event for ``address_space_rw``, then one event per
callback — actor ``device`` for a device's region, with what the device
noted about it (:class:`DeviceState`), actor ``qemu`` for QEMU's own
(``unassigned_io_read``, or ``unassigned_mem_read`` for a refused access).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Any

from vbook.errors import VbookError
from vbook.trace import TraceRecorder

UINT64_MAX = 2**64 - 1


class MemTxResult(IntFlag):
    """``MEMTX_*`` — include/exec/memattrs.h (QEMU 9.2.4). 0 is success."""

    OK = 0
    ERROR = 1 << 0          # device returned an error
    DECODE_ERROR = 1 << 1   # nothing at that address
    ACCESS_ERROR = 1 << 2   # access denied


@dataclass(frozen=True)
class AccessConstraints:
    """``MemoryRegionOps.valid`` or ``.impl``: sizes in bytes; 0 means "not given".

    ``valid``: what a guest access may be (otherwise it is refused);
    ``impl``: what the callbacks handle (larger accesses are split).
    ``accepts`` (``valid`` only) may refuse an access outright.
    """

    min_access_size: int = 0
    max_access_size: int = 0
    unaligned: bool = False
    accepts: Callable[[Any, int, int, bool], bool] | None = None


@dataclass(frozen=True)
class MemoryRegionOps:
    """``struct MemoryRegionOps``: a region's callbacks, as QEMU writes them::

        static const MemoryRegionOps serial_io_ops = {
            .read = serial_ioport_read, .write = serial_ioport_write,
            .valid = { .unaligned = 1 },
            .impl = { .min_access_size = 1, .max_access_size = 1 }, … };

    ``read(opaque, addr, size) -> value`` and ``write(opaque, addr, val, size)``;
    ``addr`` is the offset inside the region, ``opaque`` the device state.
    """

    read: Callable[[Any, int, int], int] | None = None
    write: Callable[[Any, int, int, int], None] | None = None
    valid: AccessConstraints = AccessConstraints()
    impl: AccessConstraints = AccessConstraints()
    #: the QEMU source file the C table lives in (for the trace)
    file: str = ""

    def __repr__(self) -> str:
        r = self.read.__name__ if self.read else None
        w = self.write.__name__ if self.write else None
        return f"MemoryRegionOps(read={r}, write={w})"


# --- the ops of "nothing here" (system/ioport.c, system/memory.c) -------------------

def unassigned_io_read(opaque: Any, addr: int, size: int) -> int:
    """system/ioport.c: a port no device claims reads as all ones (``return -1ULL``)."""
    return UINT64_MAX


def unassigned_io_write(opaque: Any, addr: int, val: int, size: int) -> None:
    """system/ioport.c: a write to a port no device claims is dropped."""


#: system/ioport.c — the ops of the I/O address space's root region "io"
unassigned_io_ops = MemoryRegionOps(read=unassigned_io_read, write=unassigned_io_write,
                                    file="system/ioport.c")


def unassigned_mem_read(opaque: Any, addr: int, size: int) -> int:
    """system/memory.c: what a refused or unassigned memory read returns: 0."""
    return 0


def unassigned_mem_write(opaque: Any, addr: int, val: int, size: int) -> None:
    """system/memory.c: a refused or unassigned memory write is dropped."""


def unassigned_mem_accepts(opaque: Any, addr: int, size: int, is_write: bool) -> bool:
    """system/memory.c: ``unassigned_mem_ops.valid.accepts`` refuses everything."""
    return False


#: system/memory.c — every region starts with these (``memory_region_initfn``): a
#: container, or the hole of an address space (``io_mem_unassigned``)
unassigned_mem_ops = MemoryRegionOps(valid=AccessConstraints(accepts=unassigned_mem_accepts),
                                     file="system/memory.c")


# --- regions ------------------------------------------------------------------------

@dataclass(eq=False)
class MemoryRegion:
    """``struct MemoryRegion``: a range of ``size`` bytes, placed at ``addr`` in its container.

    A *container* (``memory_region_init``) only holds subregions; an I/O region
    (``memory_region_init_io``) has ``ops`` and ``opaque`` and handles the
    addresses no subregion of it covers. ``owner`` is the QOM type of the
    device the region belongs to (None: QEMU's own).
    """

    name: str
    size: int
    ops: MemoryRegionOps = unassigned_mem_ops
    opaque: Any = None
    owner: str | None = None
    is_container: bool = False
    addr: int = 0
    container: MemoryRegion | None = field(default=None, repr=False)
    subregions: list[MemoryRegion] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        kind = "container" if self.is_container else "i/o"
        return f"MemoryRegion({self.name!r}, {kind}, size={self.size:#x})"

    @property
    def end(self) -> int:
        """First address after the region, in its container's coordinates."""
        return self.addr + self.size


def _region_size(size: int) -> int:
    """``memory_region_do_init``: a size of UINT64_MAX means all 2**64 bytes
    (``if (size == UINT64_MAX) mr->size = int128_2_64();``)."""
    return 2**64 if size == UINT64_MAX else size


def memory_region_init(name: str, size: int) -> MemoryRegion:
    """A container region (system/memory.c ``memory_region_init``): it has no callbacks."""
    return MemoryRegion(name, _region_size(size), unassigned_mem_ops, is_container=True)


def memory_region_init_io(name: str, size: int, ops: MemoryRegionOps, opaque: Any = None,
                          owner: str | None = None) -> MemoryRegion:
    """An I/O region whose accesses call ``ops`` with ``opaque`` (``memory_region_init_io``)."""
    if size <= 0:
        raise VbookError(f"memory region {name!r} must have a positive size, got {size}")
    return MemoryRegion(name, _region_size(size), ops, opaque, owner)


def memory_region_add_subregion(mr: MemoryRegion, offset: int, subregion: MemoryRegion) -> None:
    """Place ``subregion`` at ``offset`` inside ``mr`` (system/memory.c).

    The model refuses overlaps and regions that stick out of their container,
    naming both regions, instead of resolving them by priority.
    """
    if subregion.container is not None:
        raise VbookError(f"region {subregion.name!r} is already inside "
                         f"{subregion.container.name!r}")
    if offset < 0 or offset + subregion.size > mr.size:
        raise VbookError(f"region {subregion.name!r} at {offset:#x} (+{subregion.size:#x}) does "
                         f"not fit in {mr.name!r} (size {mr.size:#x})")
    for other in mr.subregions:
        if offset < other.end and other.addr < offset + subregion.size:
            raise VbookError(f"region {subregion.name!r} at {offset:#x} overlaps {other.name!r} "
                             f"at {other.addr:#x}-{other.end - 1:#x} in {mr.name!r}")
    subregion.addr, subregion.container = offset, mr
    mr.subregions.append(subregion)
    mr.subregions.sort(key=lambda r: r.addr)


#: system/physmem.c: the region behind every address no region of an address space covers
io_mem_unassigned = MemoryRegion("unassigned", _region_size(UINT64_MAX), unassigned_mem_ops)


class DeviceState:
    """What every device model shares (QEMU: ``DeviceState``): its QOM type and a note.

    A device's callbacks may call :meth:`note` to say what an access meant
    (``reg="LSR"``, ``tx="48"``, ``label=…``); the memory layer puts the note
    into the ``device`` event it records for that callback, so the trace
    reads like the device's own log while the device never touches the trace.
    """

    type_name = "device"

    def note(self, **kw: Any) -> None:
        """Describe the access being handled (merged into its trace event)."""
        self.__dict__.setdefault("_note", {}).update(kw)

    def take_note(self) -> dict[str, Any]:
        """The note of the last callback, cleared."""
        return self.__dict__.pop("_note", {})


@dataclass(eq=False)
class RunContext:
    """Who is accessing: the trace, the thread, its QEMU call stack, and the big lock.

    QEMU keeps these in thread-locals (``current_cpu``, ``bql_locked()``); the
    model passes one object to both address spaces, and the run loop keeps
    ``stack`` and flips ``bql`` where QEMU calls ``bql_lock()`` / ``bql_unlock()``.
    """

    trace: TraceRecorder | None = None
    thread: str = "CPU 0/KVM"
    bql: bool = False
    stack: list[str] = field(default_factory=list)

    def emit(self, actor: str, kind: str, label: str, *, thread: str | None = None,
             bql: bool | None = None, **data: Any) -> None:
        """Record an event, tagged with the thread, the BQL, and (for ``fn=``) the stack."""
        if self.trace is None:
            return
        fn = data.get("fn")
        if fn is not None and "stack" not in data:
            top = self.stack[-1:] == [fn]
            data["stack"] = list(self.stack) if top else [*self.stack, fn]
        self.trace.emit(actor, kind, label, thread=self.thread if thread is None else thread,
                        bql=self.bql if bql is None else bql, **data)


@dataclass(eq=False)
class AddressSpace:
    """``struct AddressSpace``: a name and a root region (system/memory.c ``address_space_init``).

    QEMU's two: ``address_space_io`` ("I/O", root "io", 64 KiB of ports) and
    ``address_space_memory`` ("memory", root "system", all 2**64 bytes).
    """

    name: str
    root: MemoryRegion
    ctx: RunContext = field(default_factory=RunContext, repr=False)

    def __repr__(self) -> str:
        return f"AddressSpace({self.name!r}, root={self.root.name!r})"


def flatview_translate(as_: AddressSpace, addr: int, length: int) -> tuple[MemoryRegion, int, int]:
    """The region that handles ``addr``, the offset in it, and how many bytes it covers.

    QEMU renders the tree into a flat list of ranges once per change; the model
    walks the tree each time, with the same answer: the innermost region that
    contains ``addr``; a container's gaps are ``io_mem_unassigned``; an I/O
    region's gaps are its own (this is how the "io" root catches every
    unclaimed port). The length is cut where the region or the gap ends.
    """
    mr, off, limit = as_.root, addr, length
    if not 0 <= addr < as_.root.size:
        return io_mem_unassigned, addr, length
    while True:
        inner = None
        for sub in mr.subregions:
            if sub.addr <= off < sub.end:
                inner = sub
                break
            if sub.addr > off:  # subregions are sorted: the gap ends where this one starts
                limit = min(limit, sub.addr - off)
                break
        if inner is None:
            limit = min(limit, mr.size - off)
            if mr.is_container:
                return io_mem_unassigned, addr, limit
            return mr, off, limit
        limit = min(limit, inner.end - off)
        mr, off = inner, off - inner.addr


def memory_access_size(mr: MemoryRegion, length: int, addr: int) -> int:
    """system/physmem.c: the largest access <= ``length`` the region takes in one go.

    At most ``valid.max_access_size`` (4 when not given), no larger than the
    alignment of ``addr`` unless ``impl.unaligned``, rounded down to a power of 2.
    """
    access_size_max = mr.ops.valid.max_access_size or 4
    if not mr.ops.impl.unaligned:
        align_size_max = addr & -addr
        if align_size_max != 0 and align_size_max < access_size_max:
            access_size_max = align_size_max
    length = min(length, access_size_max)
    return 1 << (length.bit_length() - 1)  # pow2floor


def memory_region_access_valid(mr: MemoryRegion, addr: int, size: int, is_write: bool) -> str:
    """system/memory.c: "" if the access is valid for ``mr``, else why not (QEMU logs it)."""
    valid = mr.ops.valid
    if valid.accepts is not None and not valid.accepts(mr.opaque, addr, size, is_write):
        return "rejected"
    if not valid.unaligned and addr & (size - 1):
        return "unaligned"
    if not valid.max_access_size:  # zero: all sizes are valid
        return ""
    if size > valid.max_access_size or size < valid.min_access_size:
        return f"invalid size (min:{valid.min_access_size} max:{valid.max_access_size})"
    return ""


def _callback(as_: AddressSpace, mr: MemoryRegion, addr: int, value: int, size: int,
              is_write: bool) -> int:
    """One call of the region's ``read`` or ``write``, recorded (device or QEMU's own ops)."""
    fn = mr.ops.write if is_write else mr.ops.read
    if fn is None:
        return 0
    if is_write:
        fn(mr.opaque, addr, value, size)
    else:
        value = int(fn(mr.opaque, addr, size)) & ((1 << (size * 8)) - 1)
    note = mr.opaque.take_note() if isinstance(mr.opaque, DeviceState) else {}
    actor = "device" if mr.owner else "qemu"
    as_.ctx.emit(actor, "io", note.pop("label", fn.__name__), fn=fn.__name__, file=mr.ops.file,
                 region=mr.name, offset=addr, size=size, is_write=is_write, value=value, **note)
    return value


def access_with_adjusted_size(as_: AddressSpace, mr: MemoryRegion, addr: int, value: int,
                              size: int, is_write: bool) -> int:
    """system/memory.c: call the region's callback in ``impl``-sized pieces (little-endian).

    A 2-byte access to a region whose ``impl.max_access_size`` is 1 is two
    calls, at ``addr`` and ``addr + 1``. Returns the value read (0 for a write).
    """
    access_size_min = mr.ops.impl.min_access_size or 1
    access_size_max = mr.ops.impl.max_access_size or 4
    access_size = max(min(size, access_size_max), access_size_min)
    access_mask = (1 << (access_size * 8)) - 1
    out = 0
    for i in range(0, size, access_size):
        shift = i * 8
        piece = _callback(as_, mr, addr + i, (value >> shift) & access_mask, access_size,
                          is_write)
        out |= (piece & access_mask) << shift
    return 0 if is_write else out & ((1 << (size * 8)) - 1)


def memory_region_dispatch_read(as_: AddressSpace, mr: MemoryRegion, addr: int,
                                size: int) -> tuple[int, MemTxResult]:
    """system/memory.c: (value, result) of a ``size``-byte read at offset ``addr`` of ``mr``."""
    why = memory_region_access_valid(mr, addr, size, False)
    if why:
        as_.ctx.emit("qemu", "io", "unassigned_mem_read", fn="unassigned_mem_read",
                     file="system/memory.c", region=mr.name, offset=addr, size=size,
                     is_write=False, value=0, result="MEMTX_DECODE_ERROR", why=why)
        return unassigned_mem_read(mr, addr, size), MemTxResult.DECODE_ERROR
    return access_with_adjusted_size(as_, mr, addr, 0, size, False), MemTxResult.OK


def memory_region_dispatch_write(as_: AddressSpace, mr: MemoryRegion, addr: int, value: int,
                                 size: int) -> MemTxResult:
    """system/memory.c: a ``size``-byte write of ``value`` at offset ``addr`` of ``mr``."""
    why = memory_region_access_valid(mr, addr, size, True)
    if why:
        as_.ctx.emit("qemu", "io", "unassigned_mem_write", fn="unassigned_mem_write",
                     file="system/memory.c", region=mr.name, offset=addr, size=size,
                     is_write=True, value=value, result="MEMTX_DECODE_ERROR", why=why)
        unassigned_mem_write(mr, addr, value, size)
        return MemTxResult.DECODE_ERROR
    access_with_adjusted_size(as_, mr, addr, value, size, True)
    return MemTxResult.OK


def prepare_mmio_access(ctx: RunContext) -> bool:
    """system/physmem.c: take the BQL for a device callback unless held; True if taken."""
    if ctx.bql:
        return False
    ctx.bql = True
    return True


def address_space_rw(as_: AddressSpace, addr: int, buf: bytearray, is_write: bool) -> MemTxResult:
    """system/physmem.c: read ``len(buf)`` bytes at ``addr`` into ``buf``, or write them.

    The access is cut into pieces the regions take (``flatview_translate``,
    ``memory_access_size``); each piece is dispatched with the BQL held
    (``prepare_mmio_access``), and a read stores each piece little-endian into
    ``buf``. Returns the OR of the pieces' results.
    """
    length = len(buf)
    first, off, _ = flatview_translate(as_, addr, length)
    data: dict[str, Any] = {"as": as_.name, "addr": addr, "len": length, "is_write": is_write,
                            "region": first.name, "offset": off}
    if is_write:
        data["data"] = bytes(buf).hex()
    what = f"write {bytes(buf).hex(' ')}" if is_write else "read"
    label = (f"address_space_rw(&address_space_{'io' if as_.name == 'I/O' else as_.name}, "
             f"{addr:#x}, len {length}, {what}) → region {first.name!r} + {off:#x}")
    as_.ctx.emit("qemu", "call", label, fn="address_space_rw", file="system/physmem.c", **data)
    result = MemTxResult.OK
    pos = 0
    while pos < length:
        mr, mr_addr, l = flatview_translate(as_, addr + pos, length - pos)
        release_lock = prepare_mmio_access(as_.ctx)
        l = memory_access_size(mr, l, mr_addr)
        if is_write:
            val = int.from_bytes(buf[pos:pos + l], "little")
            result |= memory_region_dispatch_write(as_, mr, mr_addr, val, l)
        else:
            val, r = memory_region_dispatch_read(as_, mr, mr_addr, l)
            buf[pos:pos + l] = val.to_bytes(l, "little")
            result |= r
        if release_lock:
            as_.ctx.bql = False
        pos += l
    return result


def mtree(as_: AddressSpace) -> str:
    """The address space as QEMU's monitor command ``info mtree`` lays it out (one line a region)."""
    lines = [f"address-space: {as_.name}"]

    def walk(mr: MemoryRegion, base: int, depth: int) -> None:
        kind = "container" if mr.is_container else "i/o"
        last = base + mr.size - 1
        owner = f"  [{mr.owner}]" if mr.owner else ""
        lines.append(f"{'  ' * depth}{base:016x}-{last:016x} (prio 0, {kind}): {mr.name}{owner}")
        for sub in mr.subregions:
            walk(sub, base + sub.addr, depth + 1)

    walk(as_.root, 0, 1)
    return "\n".join(lines)


__all__ = [
    "AccessConstraints", "AddressSpace", "DeviceState", "MemTxResult", "MemoryRegion",
    "MemoryRegionOps", "RunContext", "access_with_adjusted_size", "address_space_rw",
    "flatview_translate", "io_mem_unassigned", "memory_access_size", "memory_region_access_valid",
    "memory_region_add_subregion", "memory_region_dispatch_read", "memory_region_dispatch_write",
    "memory_region_init", "memory_region_init_io", "mtree", "prepare_mmio_access",
    "unassigned_io_ops", "unassigned_io_read", "unassigned_io_write", "unassigned_mem_ops",
    "unassigned_mem_read", "unassigned_mem_write",
]
