"""The driver side of a split virtqueue, as Linux 6.1 has it (drivers/virtio/virtio_ring.c).

:class:`Driver` is Linux's ``struct vring_virtqueue`` for a split ring: the
free list of descriptors (``free_head``, ``num_free``, ``desc_extra[i].next``),
``avail_idx_shadow`` / ``avail_flags_shadow`` (what the driver last wrote to
avail->idx / avail->flags), ``num_added`` (heads added since the last kick),
``last_used_idx`` (next used entry to read), ``event`` / ``indirect`` (the
negotiated VIRTIO_RING_F_EVENT_IDX / VIRTIO_RING_F_INDIRECT_DESC) and
``broken``. Its methods are the kernel's:

* :meth:`Driver.add` — ``virtqueue_add_split``: chain descriptors from the free
  list (device-readable ``out`` first, then device-writable ``in_``), or one
  descriptor pointing at an indirect table, put the head in ``avail->ring`` and
  publish ``avail->idx``;
* :meth:`Driver.kick_prepare` / :meth:`Driver.kick` — ``virtqueue_kick_prepare_split``:
  notify unless ``VRING_USED_F_NO_NOTIFY`` (or, with EVENT_IDX, unless
  ``vring_need_event(avail_event, new, old)`` says the device does not want it);
* :meth:`Driver.get_used` — ``virtqueue_get_buf_ctx_split`` + ``detach_buf_split``:
  the next used element ``(head, len)``, its descriptors back on the free list;
* :meth:`Driver.disable_cb` / :meth:`Driver.enable_cb` / :meth:`Driver.enable_cb_delayed`
  — ``VRING_AVAIL_F_NO_INTERRUPT`` or ``used_event``.

Indirect tables live in guest memory the driver is given (``indirect_pool``),
allocated first-fit the way ``alloc_indirect_split`` uses ``kmalloc_array``;
when the pool is full the driver falls back to direct descriptors, as Linux
does when kmalloc fails.

The used ring is written by the device, so it is checked: an id out of range or
not a head is Linux's ``BAD_RING`` — :class:`vbook.errors.BadRing`, and the queue
is broken (later :meth:`get_used` returns None, :meth:`add` raises
:class:`vbook.errors.VringBroken`, as Linux returns ``-EIO``). Not modelled:
the DMA API, ``ctx`` / premapped buffers, packed rings, ``virtqueue_resize``,
memory barriers.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterable
from typing import Any

from vbook.errors import BadRing, VringBroken, VringFull, VringUsageError
from vbook.memory import GuestMemory
from vbook.models.vring_layout import (
    SIZEOF_VRING_DESC,
    U16,
    U32,
    U64,
    AvailFlag,
    DescFlag,
    Layout,
    UsedFlag,
    need_event,
    unpack_used_elem,
    write_desc,
)
from vbook.trace import TraceRecorder

_NEXT, _WRITE, _INDIRECT = int(DescFlag.NEXT), int(DescFlag.WRITE), int(DescFlag.INDIRECT)
_NO_INTERRUPT = int(AvailFlag.NO_INTERRUPT)
_U16 = struct.Struct("<H")


def _buffers(bufs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[(gpa, len), ...]`` checked: a u64 address and a u32 length each."""
    out = []
    try:
        for gpa, length in bufs:
            if not (isinstance(gpa, int) and 0 <= gpa <= U64 and isinstance(length, int)
                    and 0 <= length <= U32):
                raise VringUsageError(f"buffer ({gpa!r}, {length!r}) is no (u64 gpa, u32 len)")
            out.append((gpa, length))
    except (TypeError, ValueError) as e:
        if isinstance(e, VringUsageError):
            raise
        raise VringUsageError(f"buffers must be (gpa, len) pairs: {e}") from None
    return out


class IndirectPool:
    """A first-fit allocator over ``[base, base + size)`` of guest memory: where the
    driver puts indirect descriptor tables (Linux takes them from ``kmalloc``).
    Blocks are 16-byte aligned (``VRING_DESC_ALIGN_SIZE``); freed blocks coalesce."""

    def __init__(self, base: int, size: int):
        if base < 0 or base % SIZEOF_VRING_DESC or size < SIZEOF_VRING_DESC:
            raise VringUsageError(f"indirect pool [{base:#x}, +{size:#x}) must be 16-byte aligned "
                                  "and hold at least one descriptor")
        self.base, self.size = base, size - size % SIZEOF_VRING_DESC
        self._free: list[list[int]] = [[base, self.size]]  # sorted [start, length]
        self._used: dict[int, int] = {}

    def alloc(self, nbytes: int) -> int | None:
        n = -(-nbytes // SIZEOF_VRING_DESC) * SIZEOF_VRING_DESC
        for k, (start, length) in enumerate(self._free):
            if length >= n:
                if length == n:
                    del self._free[k]
                else:
                    self._free[k] = [start + n, length - n]
                self._used[start] = n
                return start
        return None

    def free(self, gpa: int) -> None:
        n = self._used.pop(gpa)
        k = bisect.bisect_left(self._free, [gpa, 0])
        self._free.insert(k, [gpa, n])
        if k + 1 < len(self._free) and gpa + n == self._free[k + 1][0]:   # merge right
            self._free[k][1] += self._free.pop(k + 1)[1]
        if k and self._free[k - 1][0] + self._free[k - 1][1] == gpa:       # merge left
            self._free[k - 1][1] += self._free.pop(k)[1]

    @property
    def in_use(self) -> int:
        return sum(self._used.values())

    def __repr__(self) -> str:
        return f"IndirectPool({self.base:#x}, {self.size:#x}, in_use={self.in_use:#x})"


class Driver:
    """Linux's view of one split virtqueue in guest memory ``mem`` at ``layout``.

    ``event_idx`` / ``indirect``: the negotiated ring features. ``indirect_pool`` is
    ``(gpa, size)`` of memory for indirect tables (default: ``64 * num`` bytes at the
    first page after the ring). ``notify`` is called on a kick (the transport's
    ``vq->notify``, e.g. a write to VIRTIO_PCI_QUEUE_NOTIFY); ``start_idx`` starts
    avail->idx, used->idx and the driver's indices there (a ring as a migrated
    guest has it; give the :class:`~vbook.models.vring_device.Device` the same).
    The driver zeroes the ring, as Linux's ``vring_alloc_queue`` hands it out.
    """

    def __init__(self, mem: GuestMemory, layout: Layout, event_idx: bool = False,
                 indirect: bool = False, *, indirect_pool: tuple[int, int] | None = None,
                 notify: Callable[[], Any] | None = None, trace: TraceRecorder | None = None,
                 start_idx: int = 0):
        self.mem, self.layout, self.num = mem, layout, layout.num
        self.event, self.indirect = bool(event_idx), bool(indirect)
        self.notify_fn, self.trace = notify, trace
        if layout.end > mem.size:
            raise VringUsageError(f"{layout!r} does not fit in guest memory of {mem.size:#x} bytes")
        if not 0 <= start_idx <= U16:
            raise VringUsageError(f"start_idx {start_idx!r} is no 16-bit index")
        self.pool: IndirectPool | None = None
        if self.indirect:
            if indirect_pool is None:
                base = (layout.end + 4095) & ~4095
                indirect_pool = (base, min(64 * self.num, mem.size - base))
            base, size = indirect_pool
            if base + size > mem.size:
                raise VringUsageError(f"indirect pool [{base:#x}, {base + size:#x}) is outside guest "
                                      f"memory [0, {mem.size:#x})")
            self.pool = IndirectPool(base, size)
        # virtqueue_init + vring_alloc_desc_extra + virtqueue_vring_init_split
        num = self.num
        self.num_free = num
        self.free_head = 0
        self.desc_next = [i + 1 for i in range(num - 1)] + [0]    # desc_extra[i].next
        self.desc_flags = [0] * num                                # desc_extra[i].flags
        self.desc_len = [0] * num                                  # desc_extra[i].len
        self.desc_data: list[Any] = [None] * num                   # desc_state[i].data
        self.indir_desc: list[int | None] = [None] * num           # desc_state[i].indir_desc
        self.avail_idx_shadow = self.last_used_idx = start_idx
        self.avail_flags_shadow = 0
        self.num_added = 0
        self.event_triggered = False
        self.broken = False
        mem.write(layout.base, bytes(layout.size))
        if start_idx:
            mem.write_u16(layout.avail + 2, start_idx)
            mem.write_u16(layout.used + 2, start_idx)
            mem.write_u16(layout.used_event, start_idx)
            mem.write_u16(layout.avail_event, start_idx)
        self._emit("init", f"vring of {num} at {layout.base:#x}", layout=layout.to_dict(),
                   event_idx=self.event, indirect=self.indirect, start_idx=start_idx)

    def _emit(self, kind: str, label: str, **data: Any) -> None:
        if self.trace is not None:
            self.trace.emit("guest", kind, label, **data)

    def _bad_ring(self, message: str) -> None:
        """``BAD_RING``: dev_err and ``vq->broken = true``."""
        self.broken = True
        self._emit("bad_ring", message, message=message, last_used_idx=self.last_used_idx)
        raise BadRing(f"{message} (Linux BAD_RING in virtqueue_get_buf_ctx_split; the queue is now broken)")

    # --- virtqueue_add_split ------------------------------------------------------------
    def add(self, out: Iterable[tuple[int, int]] = (), in_: Iterable[tuple[int, int]] = (),
            data: Any = None) -> int:
        """``virtqueue_add_split``: expose ``out`` (device-readable) then ``in_``
        (device-writable) buffers, each ``(gpa, len)``, as one chain; the head index.
        ``data`` is the token :meth:`get_buf` gives back (default: ``(out, in_)``)."""
        out, in_ = _buffers(out), _buffers(in_)
        if self.broken:
            raise VringBroken("virtqueue is broken: virtqueue_add_split returns -EIO")
        total_sg = len(out) + len(in_)
        if total_sg == 0:
            raise VringUsageError("virtqueue_add_split with no buffers (BUG_ON(total_sg == 0))")
        mem, lay = self.mem, self.layout
        head = self.free_head
        table = None
        if self.indirect and total_sg > 1 and self.num_free:       # virtqueue_use_indirect
            table = self.pool.alloc(total_sg * SIZEOF_VRING_DESC)  # alloc_indirect_split
        descs_used = 1 if table is not None else total_sg
        if self.num_free < descs_used:
            if table is not None:
                self.pool.free(table)
            self._emit("add_full", f"Can't add buf len {descs_used} - avail = {self.num_free}",
                       descs_used=descs_used, num_free=self.num_free)
            if out:  # "for historical reasons, we force a notify here if there are outgoing parts"
                self._notify()
            raise VringFull(f"Can't add buf len {descs_used} - avail = {self.num_free} (-ENOSPC)")

        tracing = self.trace is not None
        touched: list[dict[str, int]] = []
        last = total_sg - 1
        if table is None:
            i = head
            for k, (a, n) in enumerate(out + in_):                  # virtqueue_add_desc_split
                flags = _NEXT if k < len(out) else _NEXT | _WRITE
                if k == last:
                    flags &= ~_NEXT                                # "Last one doesn't continue."
                nxt = self.desc_next[i]
                write_desc(mem, lay.desc, i, a, n, flags, nxt)
                self.desc_flags[i], self.desc_len[i] = flags, n
                if tracing:
                    touched.append({"table": "ring", "i": i, "addr": a, "len": n, "flags": flags,
                                    "next": nxt})
                i = nxt
            self.free_head = i
        else:
            for k, (a, n) in enumerate(out + in_):                  # into the indirect table
                flags = _NEXT if k < len(out) else _NEXT | _WRITE
                if k == last:
                    flags &= ~_NEXT
                write_desc(mem, table, k, a, n, flags, k + 1)
                if tracing:
                    touched.append({"table": "indirect", "i": k, "addr": a, "len": n, "flags": flags,
                                    "next": k + 1})
            nxt, tlen = self.desc_next[head], total_sg * SIZEOF_VRING_DESC
            write_desc(mem, lay.desc, head, table, tlen, _INDIRECT, nxt)
            self.desc_flags[head], self.desc_len[head] = _INDIRECT, tlen
            if tracing:
                touched.insert(0, {"table": "ring", "i": head, "addr": table, "len": tlen,
                                   "flags": _INDIRECT, "next": nxt})
            self.free_head = nxt
        self.num_free -= descs_used
        self.desc_data[head] = data if data is not None else (out, in_)
        self.indir_desc[head] = table

        # "Put entry in available array", then expose it by publishing avail->idx
        slot = self.avail_idx_shadow & (self.num - 1)
        mem.write(lay.avail + 4 + 2 * slot, _U16.pack(head))
        self.avail_idx_shadow = (self.avail_idx_shadow + 1) & U16
        mem.write(lay.avail + 2, _U16.pack(self.avail_idx_shadow))
        self.num_added += 1
        if tracing:
            self.trace.emit("guest", "add", f"add head {head} ({len(out)} out, {len(in_)} in"
                            f"{', indirect' if table is not None else ''})", head=head, slot=slot,
                            avail_idx=self.avail_idx_shadow, num_free=self.num_free,
                            free_head=self.free_head, indirect=table, descs=touched)
        if self.num_added == U16:  # "This is very unlikely, but theoretically possible. Kick just in case."
            self.kick()
        return head

    # --- kicks ------------------------------------------------------------------------------
    def kick_prepare(self) -> bool:
        """``virtqueue_kick_prepare_split``: must the device be notified of what was added?"""
        new = self.avail_idx_shadow
        old = (new - self.num_added) & U16
        self.num_added = 0
        if self.event:
            avail_event = self.mem.read_u16(self.layout.avail_event)
            needs = need_event(avail_event, new, old)
            why = f"vring_need_event(avail_event {avail_event}, new {new}, old {old})"
        else:
            flags = self.mem.read_u16(self.layout.used)
            needs = not flags & UsedFlag.NO_NOTIFY
            why = f"used->flags {flags:#x}"
        self._emit("kick_prepare", f"{why} -> {'kick' if needs else 'no kick'}", old=old, new=new,
                   needs_kick=needs, event_idx=self.event)
        return needs

    def _notify(self) -> bool:
        """``virtqueue_notify``: prod the other side (unless broken)."""
        if self.broken:
            return False
        self._emit("notify", "notify the device", avail_idx=self.avail_idx_shadow)
        if self.notify_fn is not None and self.notify_fn() is False:
            self.broken = True
            return False
        return True

    def kick(self) -> bool:
        """``virtqueue_kick``: :meth:`kick_prepare`, then notify if needed. Returns whether
        the device was notified (Linux returns false only on a failed notify)."""
        return self._notify() if self.kick_prepare() else False

    # --- virtqueue_get_buf_ctx_split ------------------------------------------------------
    def more_used(self) -> bool:
        """``more_used_split``: has the device published a used entry we have not read?"""
        return self.last_used_idx != self.mem.read_u16(self.layout.used + 2)

    def get_used(self) -> tuple[int, int] | None:
        """The next used element as ``(head, len)``, its chain freed; None when there is none."""
        got = self._get_buf()
        return None if got is None else got[:2]

    def get_buf(self) -> tuple[Any, int] | None:
        """``virtqueue_get_buf``: ``(data, len)`` of the next used element, or None."""
        got = self._get_buf()
        return None if got is None else (got[2], got[1])

    def _get_buf(self) -> tuple[int, int, Any] | None:
        if self.broken or not self.more_used():
            return None
        lay = self.layout
        last_used = self.last_used_idx & (self.num - 1)
        i, length = unpack_used_elem(self.mem.read(lay.used + 4 + 8 * last_used, 8))
        if i >= self.num:
            self._bad_ring(f"id {i} out of range")
        if self.desc_data[i] is None:
            self._bad_ring(f"id {i} is not a head!")
        data = self.desc_data[i]
        freed = self._detach_buf(i)
        self.last_used_idx = (self.last_used_idx + 1) & U16
        if not self.avail_flags_shadow & _NO_INTERRUPT:
            self.mem.write(lay.used_event, _U16.pack(self.last_used_idx))
        self._emit("get_used", f"used head {i}, len {length}", head=i, len=length, slot=last_used,
                   last_used_idx=self.last_used_idx, num_free=self.num_free, freed=freed)
        return i, length, data

    def _detach_buf(self, head: int) -> list[int]:
        """``detach_buf_split``: put the chain at ``head`` back on the free list."""
        self.desc_data[head] = None
        i, freed = head, [head]
        flags_at = self.layout.desc + 12
        # Linux follows the NEXT flags in the (shared) table; bounded so a device that
        # scribbled on the table cannot make it spin
        while self.mem.read_u16(flags_at + SIZEOF_VRING_DESC * i) & _NEXT and len(freed) < self.num:
            i = self.desc_next[i]
            freed.append(i)
            self.num_free += 1
        self.desc_next[i] = self.free_head
        self.free_head = head
        self.num_free += 1
        table = self.indir_desc[head]
        if table is not None:
            self.pool.free(table)
            self.indir_desc[head] = None
        return freed

    # --- callbacks (interrupt suppression) -----------------------------------------------------
    def disable_cb(self) -> None:
        """``virtqueue_disable_cb_split``: ask for no interrupts (NO_INTERRUPT, or used_event = 0)."""
        if self.event_triggered:  # "device triggered an event already ... no need to disable"
            return
        if not self.avail_flags_shadow & _NO_INTERRUPT:
            self.avail_flags_shadow |= _NO_INTERRUPT
            if self.event:
                self.mem.write_u16(self.layout.used_event, 0)  # "TODO: this is a hack."
            else:
                self.mem.write_u16(self.layout.avail, self.avail_flags_shadow)
        self._emit("disable_cb", "interrupts off", avail_flags=self.avail_flags_shadow)

    def enable_cb_prepare(self) -> int:
        """``virtqueue_enable_cb_prepare_split``: interrupts back on; the ``last_used_idx`` to poll."""
        self.event_triggered = False
        if self.avail_flags_shadow & _NO_INTERRUPT:
            self.avail_flags_shadow &= ~_NO_INTERRUPT
            if not self.event:
                self.mem.write_u16(self.layout.avail, self.avail_flags_shadow)
        self.mem.write_u16(self.layout.used_event, self.last_used_idx)
        self._emit("enable_cb", f"interrupts on, used_event = {self.last_used_idx}",
                   used_event=self.last_used_idx, avail_flags=self.avail_flags_shadow)
        return self.last_used_idx

    def poll(self, last_used_idx: int) -> bool:
        """``virtqueue_poll_split``: has used->idx moved past ``last_used_idx``?"""
        return last_used_idx & U16 != self.mem.read_u16(self.layout.used + 2)

    def enable_cb(self) -> bool:
        """``virtqueue_enable_cb``: interrupts on; False if used buffers are already pending
        (the caller must process them, a race with the device)."""
        return not self.poll(self.enable_cb_prepare())

    def enable_cb_delayed(self) -> bool:
        """``virtqueue_enable_cb_delayed_split``: interrupts on, but only after 3/4 of the
        outstanding buffers are used (used_event = last_used_idx + bufs); False if that
        many are used already."""
        self.event_triggered = False
        if self.avail_flags_shadow & _NO_INTERRUPT:
            self.avail_flags_shadow &= ~_NO_INTERRUPT
            if not self.event:
                self.mem.write_u16(self.layout.avail, self.avail_flags_shadow)
        bufs = ((self.avail_idx_shadow - self.last_used_idx) & U16) * 3 // 4
        self.mem.write_u16(self.layout.used_event, (self.last_used_idx + bufs) & U16)
        used_idx = self.mem.read_u16(self.layout.used + 2)
        ok = not (used_idx - self.last_used_idx) & U16 > bufs
        self._emit("enable_cb", f"interrupts on after {bufs} more", delayed=True,
                   used_event=(self.last_used_idx + bufs) & U16, ok=ok)
        return ok

    def interrupt(self) -> bool:
        """``vring_interrupt``: the device's interrupt arrived; True if there was work
        (IRQ_HANDLED). With EVENT_IDX it sets ``event_triggered``."""
        if not self.more_used():
            return False
        if self.broken:
            return True
        if self.event:
            self.event_triggered = True
        self._emit("interrupt", "vring_interrupt", last_used_idx=self.last_used_idx)
        return True

    def __repr__(self) -> str:
        state = ", broken" if self.broken else ""
        return (f"Driver(num={self.num}, free_head={self.free_head}, num_free={self.num_free}, "
                f"avail_idx_shadow={self.avail_idx_shadow}, last_used_idx={self.last_used_idx}{state})")
