"""Guest-physical memory: a byte array the models read and write.

Little-endian, byte-addressed, bounds-checked. Every access is appended to
``accesses`` (unless ``record=False``) so a widget can show which bytes a model
touched, in order — the way a reader would watch a bus analyser.

**One memory, not copies.** ``GuestMemory(size)`` owns a fresh ``bytearray``.
``GuestMemory.over(buffer)`` *is* an existing writable buffer, copied nowhere:
a vCPU's RAM (``vcpu.memory`` of both backends is such a view: the KVM
backend's ``mmap`` registered with ``KVM_SET_USER_MEMORY_REGION``, the unicorn
backend's buffer mapped with ``uc.mem_map_ptr``), so what a model writes —
page tables, a virtqueue — the guest sees, and what the guest writes a model
reads, with no copy in between (QEMU's ``address_space_map`` gives a device
the same: a pointer into guest RAM).

A view can outlive what it looks at: a vCPU unmaps its RAM when it is closed.
So the owner releases its views first (:meth:`~GuestMemory.release`); every access
through a released view (and through views made over it) raises
:class:`MemoryReleased`, never reads freed memory. Raw exports a caller took
itself (``memoryview(mem.buf)``, ``numpy.frombuffer(mem.buf)``) keep the bytes
*alive* instead: the owner then leaves the mapping to be freed with the last of
them (Python's ``mmap.close`` refuses while exports exist), so they read the
RAM as the guest left it — stale, but never unmapped.
"""

from __future__ import annotations

import struct
import weakref
from dataclasses import dataclass
from typing import Any

from vbook.errors import MemoryAccessError, VbookError


@dataclass(frozen=True)
class Access:
    """One recorded access: ``kind`` is "r" or "w"."""

    kind: str
    addr: int
    size: int

    def __repr__(self) -> str:
        return f"Access({self.kind!r}, {self.addr:#x}, {self.size})"


class MemoryReleased(VbookError):
    """An access through a :class:`GuestMemory` whose memory is gone (e.g. its vCPU was closed)."""

    def __init__(self, addr: int, size: int, owner: str):
        self.addr, self.size, self.owner = addr, size, owner
        super().__init__(
            f"guest-physical access of {size} byte(s) at {addr:#x}: this memory was released "
            f"({owner or 'its owner'} was closed); open a new one")


class BufferNotUsable(VbookError, TypeError):
    """:meth:`GuestMemory.over` was given something that is no writable, contiguous byte buffer."""


_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
_U8, _U16, _U32, _U64 = (struct.Struct(_FMT[n]) for n in (1, 2, 4, 8))


class GuestMemory:
    """``size`` bytes of guest-physical memory starting at GPA 0.

    ``GuestMemory(size)`` is fresh zeroed memory; :meth:`over` wraps memory
    that already exists (a vCPU's RAM) without copying it.
    """

    def __init__(self, size: int, *, record: bool = True):
        if size <= 0:
            raise ValueError(f"memory size must be positive, got {size}")
        self._setup(bytearray(size), size, record, "", None)

    def _setup(self, buf: Any, size: int, record: bool, owner: str,
               parent: GuestMemory | None) -> None:
        self.size = size
        self._buf = buf
        self._limit = size  # what the bounds checks compare with; -1 once released
        self.record = record
        self.accesses: list[Access] = []
        self.owner = owner
        self.parent = parent
        self._views: weakref.WeakSet[GuestMemory] = weakref.WeakSet()

    @classmethod
    def over(cls, buffer: Any, *, record: bool = True, owner: str = "") -> GuestMemory:
        """A GuestMemory that *is* ``buffer`` (no copy): GPA 0 is its first byte.

        ``buffer`` is any writable, C-contiguous object with the buffer protocol
        (``bytearray``, ``mmap.mmap``, a ``memoryview`` of one, a ctypes array),
        or another :class:`GuestMemory` — then the new view is released with it
        (:attr:`parent`). ``owner`` names what the memory belongs to in the
        :class:`MemoryReleased` message. Reads, writes, bounds checks and the
        access log are those of ``GuestMemory(size)``; the view holds a buffer
        export until :meth:`release`.
        """
        parent = None
        if isinstance(buffer, GuestMemory):
            parent, owner = buffer, owner or buffer.owner
            buffer = buffer.buf
        try:
            view = memoryview(buffer)
        except TypeError:
            raise BufferNotUsable(f"GuestMemory.over needs a writable buffer (bytearray, mmap, "
                                  f"memoryview, ...), got {type(buffer).__name__}") from None
        if view.readonly:
            view.release()
            raise BufferNotUsable(f"GuestMemory.over: the {type(buffer).__name__} is read-only; "
                                  "guest memory must be writable")
        if not view.c_contiguous:
            view.release()
            raise BufferNotUsable("GuestMemory.over: the buffer is not C-contiguous")
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.nbytes == 0:
            view.release()
            raise BufferNotUsable("GuestMemory.over: the buffer is empty")
        mem = cls.__new__(cls)
        mem._setup(view, view.nbytes, record, owner, parent)
        if parent is not None:
            parent._views.add(mem)
        return mem

    @property
    def buf(self) -> Any:
        """The bytes themselves: a ``bytearray`` for ``GuestMemory(size)``, a ``memoryview``
        of the buffer for :meth:`over` (writes go straight to the guest)."""
        if self._limit < 0:
            raise MemoryReleased(0, self.size, self.owner)
        return self._buf

    @property
    def released(self) -> bool:
        """True once :meth:`release` cut this view off its memory."""
        return self._limit < 0

    def release(self) -> None:
        """Cut this view (and every view made over it) off its buffer; safe to call twice.

        Later accesses raise :class:`MemoryReleased`. The buffer export this
        view held is given back, so its owner may unmap it — unless a caller
        still holds an export taken from :attr:`buf` (then the owner must leave
        the unmapping to the garbage collector: see the module docstring).
        """
        for view in list(self._views):
            view.release()
        if self._limit < 0:
            return
        self._limit = -1
        buf, self._buf = self._buf, b""
        if isinstance(buf, memoryview):
            try:
                buf.release()
            except BufferError:  # someone exported from it: it dies with their export
                pass

    def __repr__(self) -> str:
        return f"GuestMemory(size={self.size:#x}{', released' if self._limit < 0 else ''})"

    def __len__(self) -> int:
        return self.size

    def _error(self, addr: int, n: int) -> VbookError:
        if self._limit < 0:
            return MemoryReleased(addr, n, self.owner)
        return MemoryAccessError(addr, n, self.size)

    def _check(self, addr: int, n: int) -> None:
        if addr < 0 or n < 0 or addr + n > self._limit:
            raise self._error(addr, n)

    def read(self, addr: int, n: int) -> bytes:
        if addr < 0 or n < 0 or addr + n > self._limit:
            raise self._error(addr, n)
        if self.record:
            self.accesses.append(Access("r", addr, n))
        return bytes(self._buf[addr : addr + n])

    def write(self, addr: int, data: bytes) -> None:
        n = len(data)
        if addr < 0 or addr + n > self._limit:
            raise self._error(addr, n)
        if self.record:
            self.accesses.append(Access("w", addr, n))
        self._buf[addr : addr + n] = data

    def _read_uint(self, addr: int, n: int) -> int:
        return struct.unpack(_FMT[n], self.read(addr, n))[0]

    def _write_uint(self, addr: int, n: int, value: int) -> None:
        if not 0 <= value < 1 << (8 * n):
            raise ValueError(f"{value:#x} does not fit in {n} byte(s)")
        self.write(addr, struct.pack(_FMT[n], value))

    # the reads the page walkers make: one check, one unpack_from, no intermediate bytes
    def read_u8(self, addr: int) -> int:
        if addr < 0 or addr + 1 > self._limit:
            raise self._error(addr, 1)
        if self.record:
            self.accesses.append(Access("r", addr, 1))
        return _U8.unpack_from(self._buf, addr)[0]

    def read_u16(self, addr: int) -> int:
        if addr < 0 or addr + 2 > self._limit:
            raise self._error(addr, 2)
        if self.record:
            self.accesses.append(Access("r", addr, 2))
        return _U16.unpack_from(self._buf, addr)[0]

    def read_u32(self, addr: int) -> int:
        if addr < 0 or addr + 4 > self._limit:
            raise self._error(addr, 4)
        if self.record:
            self.accesses.append(Access("r", addr, 4))
        return _U32.unpack_from(self._buf, addr)[0]

    def read_u64(self, addr: int) -> int:
        if addr < 0 or addr + 8 > self._limit:
            raise self._error(addr, 8)
        if self.record:
            self.accesses.append(Access("r", addr, 8))
        return _U64.unpack_from(self._buf, addr)[0]

    # writes go through write(), so a subclass sees every one (the unicorn backend's view)
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
