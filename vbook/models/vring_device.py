"""The device side of a split virtqueue, as QEMU 9.2.4 has it (hw/virtio/virtio.c).

:class:`Device` is QEMU's ``VirtQueue`` for one split ring: ``last_avail_idx``
(next head to pop), ``shadow_avail_idx`` (the last ``avail->idx`` read),
``used_idx``, ``signalled_used`` / ``signalled_used_valid``, ``notification``,
``inuse``, and the device's ``broken`` flag. Its methods are QEMU's functions:

* :meth:`Device.pop` — ``virtqueue_pop`` → ``virtqueue_split_pop``: take the next
  head from the avail ring, follow its chain (through an indirect table if it
  has one), return a :class:`Chain` of device-readable (``out``) and
  device-writable (``in_``) buffers;
* :meth:`Device.push` — ``virtqueue_push`` = ``virtqueue_fill`` (write a used
  element) + ``virtqueue_flush`` (publish ``used->idx``);
* :meth:`Device.should_notify` — ``virtio_should_notify`` → ``virtio_split_should_notify``
  (``VRING_AVAIL_F_NO_INTERRUPT``, or ``vring_need_event(used_event, new, old)``);
* :meth:`Device.set_notification` — ``virtio_queue_set_notification``
  (``VRING_USED_F_NO_NOTIFY``, or ``avail_event``).

The ring is guest memory: the guest may write anything there. Every index,
length and address is checked before it is used; a bad one is QEMU's
``virtio_error()``: the device is marked broken (``vdev->broken``) and
:class:`vbook.errors.VirtioError` is raised with QEMU's message. A broken
device then does what QEMU's does: ``virtqueue_pop`` returns NULL (here
``None``), ``virtqueue_fill`` writes nothing, until :meth:`Device.reset`
(``virtio_reset``). A chain is followed at most ``max`` descriptors
(``Looped descriptor``) and maps at most ``VIRTQUEUE_MAX_SIZE`` (1024) buffers,
so no ring can make :meth:`pop` spin.

One check is stricter than QEMU 9.2.4's ``virtqueue_split_pop``: :meth:`pop`
first runs ``virtqueue_num_heads``' test (an ``avail->idx`` more than ``num``
ahead of ``last_avail_idx`` is "Guest moved used index from %u to %u" — QEMU's
words, although it is the *avail* index), which QEMU applies in
``virtqueue_get_avail_bytes`` / ``virtqueue_drop_all`` and vhost in
``vhost_get_vq_desc``; QEMU's pop itself would only stop at "Virtqueue size
exceeded". A second is Linux vhost's: an indirect descriptor inside an indirect
table is rejected ("Nested indirect descriptor", drivers/vhost/vhost.c
``get_indirect``), where QEMU 9.2.4 would treat it as a plain buffer.

Not modelled: the packed ring, VIRTIO_F_IN_ORDER, VIRTIO_F_NOTIFY_ON_EMPTY,
memory barriers (the model is single-threaded), region caches and IOMMUs, and
the split of one descriptor into several iovecs at a memory-region boundary
(guest memory here is one flat region).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

from vbook.errors import VirtioError, VringUsageError
from vbook.memory import GuestMemory
from vbook.models.vring_layout import (
    SIZEOF_VRING_DESC,
    U16,
    U32,
    AvailFlag,
    Desc,
    DescFlag,
    Layout,
    UsedFlag,
    need_event,
    pack_used_elem,
    read_desc,
)
from vbook.trace import TraceRecorder

#: ``VIRTQUEUE_MAX_SIZE`` — include/hw/virtio/virtio.h (QEMU 9.2.4): most buffers in one element
VIRTQUEUE_MAX_SIZE = 1024

_NEXT, _WRITE, _INDIRECT = int(DescFlag.NEXT), int(DescFlag.WRITE), int(DescFlag.INDIRECT)
_U16 = struct.Struct("<H")


@dataclass
class Chain:
    """One popped element (QEMU's ``VirtQueueElement``): ``head`` is its index in the
    descriptor table (``elem->index``), ``out`` the device-readable buffers and
    ``in_`` the device-writable ones, each a list of ``(gpa, len)``.

    ``indirect`` is the GPA of the indirect table the chain went through (or None);
    ``descs`` lists ``(i, Desc)`` for every descriptor read, in order (``i`` indexes
    the indirect table once inside it).
    """

    head: int
    out: list[tuple[int, int]] = field(default_factory=list)
    in_: list[tuple[int, int]] = field(default_factory=list)
    indirect: int | None = None
    descs: list[tuple[int, Desc]] = field(default_factory=list)

    @property
    def out_len(self) -> int:
        return sum(n for _, n in self.out)

    @property
    def in_len(self) -> int:
        return sum(n for _, n in self.in_)

    def read_out(self, mem: GuestMemory) -> bytes:
        """The bytes of the readable buffers, concatenated (QEMU ``iov_to_buf``)."""
        return b"".join(mem.read(a, n) for a, n in self.out)

    def write_in(self, mem: GuestMemory, data: bytes) -> int:
        """Copy ``data`` into the writable buffers in order (``iov_from_buf``); the bytes written."""
        done = 0
        for a, n in self.in_:
            if done >= len(data):
                break
            piece = data[done:done + n]
            mem.write(a, piece)
            done += len(piece)
        return done

    def to_dict(self) -> dict:
        return {"head": self.head, "out": [list(b) for b in self.out],
                "in": [list(b) for b in self.in_], "indirect": self.indirect,
                "descs": [dict(d.to_dict(), i=i, table="ring" if k == 0 or self.indirect is None
                               else "indirect") for k, (i, d) in enumerate(self.descs)]}

    def __repr__(self) -> str:
        def bufs(bs: list[tuple[int, int]]) -> str:
            return "[" + ", ".join(f"({a:#x}, {n})" for a, n in bs) + "]"
        ind = f", indirect={self.indirect:#x}" if self.indirect is not None else ""
        return f"Chain(head={self.head}, out={bufs(self.out)}, in_={bufs(self.in_)}{ind})"


class Device:
    """QEMU's view of one split virtqueue in guest memory ``mem`` at ``layout``.

    ``event_idx`` is whether VIRTIO_RING_F_EVENT_IDX was negotiated. ``start_idx``
    starts every index there instead of 0 (a ring restored by migration, whose
    ``used->idx`` the driver side set to the same value). Events go to ``trace``
    with actor ``actor`` ("qemu", or "device" for a device that is not QEMU's).
    """

    def __init__(self, mem: GuestMemory, layout: Layout, event_idx: bool = False, *,
                 trace: TraceRecorder | None = None, start_idx: int = 0, actor: str = "qemu"):
        self.mem, self.layout, self.event_idx = mem, layout, bool(event_idx)
        self.trace, self.actor = trace, actor
        self.num = layout.num
        if not 0 <= start_idx <= U16:
            raise VringUsageError(f"start_idx {start_idx!r} is no 16-bit index")
        self._start = start_idx
        self.broken = False
        self.reset()
        # virtio_init_region_cache: the three areas must be guest memory
        for name, message in (("desc", "Cannot map desc"), ("used", "Cannot map used"),
                              ("avail", "Cannot map avail")):
            gpa, size = layout.areas()[name]
            if gpa + size > mem.size:
                self._error(message, "virtio_init_region_cache",
                            f"the {name} area [{gpa:#x}, {gpa + size:#x}) is outside guest memory "
                            f"[0, {mem.size:#x})")

    def reset(self) -> None:
        """``virtio_reset`` → ``__virtio_queue_reset``: indices back to the start, not broken."""
        self.last_avail_idx = self.shadow_avail_idx = self.used_idx = self._start
        self.signalled_used = self._start
        self.signalled_used_valid = False
        self.notification = True
        self.inuse = 0
        self.broken = False
        self._inflight: Counter[int] = Counter()

    # --- virtio_error -------------------------------------------------------------
    def _error(self, message: str, function: str, detail: str = "") -> None:
        """``virtio_error()``: report, mark the device broken, stop here."""
        self.broken = True
        err = VirtioError(message, function, detail)
        if self.trace is not None:
            self.trace.emit(self.actor, "virtio_error", message, message=message,
                            function=function, detail=detail,
                            last_avail_idx=self.last_avail_idx, avail_idx=self.shadow_avail_idx)
        raise err

    # --- reading the avail ring ------------------------------------------------------
    def _avail_idx(self) -> int:
        """``vring_avail_idx``: read ``avail->idx`` into ``shadow_avail_idx``."""
        self.shadow_avail_idx = self.mem.read_u16(self.layout.avail + 2)
        return self.shadow_avail_idx

    def empty(self) -> bool:
        """``virtio_queue_empty``: no new head in the avail ring (True when broken)."""
        if self.broken:
            return True
        if self.shadow_avail_idx != self.last_avail_idx:
            return False
        return self._avail_idx() == self.last_avail_idx

    def _set_avail_event(self, val: int) -> None:
        """``vring_set_avail_event``: written only while notifications are enabled."""
        if not self.notification:
            return
        self.mem.write(self.layout.avail_event, _U16.pack(val))

    # --- virtqueue_pop --------------------------------------------------------------
    def pop(self) -> Chain | None:
        """``virtqueue_pop`` → ``virtqueue_split_pop``: the next element, or None when the
        avail ring holds nothing new (or the device is broken). A malformed ring raises
        :class:`~vbook.errors.VirtioError` and breaks the device."""
        if self.broken:  # virtqueue_pop: virtio_device_disabled() -> NULL
            if self.trace is not None:
                self.trace.emit(self.actor, "pop_refused", "device is broken: virtqueue_pop returns NULL",
                                last_avail_idx=self.last_avail_idx)
            return None
        if self.empty():
            return None
        mem, lay, num = self.mem, self.layout, self.num
        # virtqueue_num_heads: the guest may not publish more than num heads
        if (self.shadow_avail_idx - self.last_avail_idx) & U16 > num:
            self._error(f"Guest moved used index from {self.last_avail_idx} to {self.shadow_avail_idx}",
                        "virtqueue_num_heads",
                        f"avail->idx is {(self.shadow_avail_idx - self.last_avail_idx) & U16} entries "
                        f"ahead of last_avail_idx; the ring has num = {num}")
        if self.inuse >= num:
            self._error("Virtqueue size exceeded", "virtqueue_split_pop",
                        f"{self.inuse} elements popped and not pushed back; num = {num}")
        # virtqueue_get_head
        slot = self.last_avail_idx % num
        head = mem.read_u16(lay.avail + 4 + 2 * slot)
        self.last_avail_idx = (self.last_avail_idx + 1) & U16
        if head >= num:
            self._error(f"Guest says index {head} is available", "virtqueue_get_head",
                        f"avail->ring[{slot}] = {head}, but the descriptor table has {num} entries")
        if self.event_idx:
            self._set_avail_event(self.last_avail_idx)

        table, max_ = lay.desc, num
        desc = read_desc(mem, table, head)
        descs = [(head, desc)]
        indirect = None
        if desc.flags & _INDIRECT:
            if not desc.len or desc.len % SIZEOF_VRING_DESC:
                self._error("Invalid size for indirect buffer table", "virtqueue_split_pop",
                            f"descriptor {head} has INDIRECT with len {desc.len}, "
                            f"not a non-zero multiple of {SIZEOF_VRING_DESC}")
            if desc.addr + desc.len > mem.size:
                self._error("Cannot map indirect buffer", "virtqueue_split_pop",
                            f"indirect table [{desc.addr:#x}, {desc.addr + desc.len:#x}) of descriptor "
                            f"{head} is outside guest memory [0, {mem.size:#x})")
            table, max_, indirect = desc.addr, desc.len // SIZEOF_VRING_DESC, desc.addr
            i = 0
            desc = read_desc(mem, table, 0)
            descs.append((0, desc))
        else:
            i = head

        out: list[tuple[int, int]] = []
        in_: list[tuple[int, int]] = []
        entries, memsize = 0, mem.size
        while True:
            flags, addr, length = desc.flags, desc.addr, desc.len
            if indirect is not None and flags & _INDIRECT:
                self._error("Nested indirect descriptor", "virtqueue_split_pop",
                            f"entry {i} of the indirect table at {indirect:#x} is itself INDIRECT "
                            "(Linux vhost get_indirect's check; QEMU 9.2.4 has none)")
            if flags & _WRITE:
                if length and addr + length <= memsize and len(in_) + len(out) < VIRTQUEUE_MAX_SIZE:
                    in_.append((addr, length))
                else:
                    self._map_desc(in_, VIRTQUEUE_MAX_SIZE - len(out), i, addr, length)
            else:
                if in_:
                    self._error("Incorrect order for descriptors", "virtqueue_split_pop",
                                f"descriptor {i} is device-readable but follows a device-writable one")
                if length and addr + length <= memsize and len(out) < VIRTQUEUE_MAX_SIZE:
                    out.append((addr, length))
                else:
                    self._map_desc(out, VIRTQUEUE_MAX_SIZE, i, addr, length)
            entries += 1
            if entries > max_:
                self._error("Looped descriptor", "virtqueue_split_pop",
                            f"the chain from head {head} is longer than the {max_} descriptors of its table")
            # virtqueue_split_read_next_desc
            if not flags & _NEXT:
                break
            if desc.next >= max_:
                self._error(f"Desc next is {desc.next}", "virtqueue_split_read_next_desc",
                            f"descriptor {i} points past the table of {max_}")
            i = desc.next
            desc = read_desc(mem, table, i)
            descs.append((i, desc))

        self.inuse += 1
        self._inflight[head] += 1
        chain = Chain(head, out, in_, indirect, descs)
        if self.trace is not None:
            self.trace.emit(self.actor, "pop", f"pop head {head}", **chain.to_dict(), slot=slot,
                            last_avail_idx=self.last_avail_idx, avail_idx=self.shadow_avail_idx,
                            inuse=self.inuse, avail_event=self.last_avail_idx
                            if self.event_idx and self.notification else None)
        return chain

    def _map_desc(self, sg: list[tuple[int, int]], max_num_sg: int, i: int, addr: int, length: int) -> None:
        """``virtqueue_map_desc``: one buffer into ``sg``, or virtio_error (:meth:`pop` inlines
        the good case)."""
        if not length:
            self._error("virtio: zero sized buffers are not allowed", "virtqueue_map_desc",
                        f"descriptor {i} has len 0")
        if len(sg) == max_num_sg:
            self._error("virtio: too many write descriptors in indirect table", "virtqueue_map_desc",
                        f"more than VIRTQUEUE_MAX_SIZE = {VIRTQUEUE_MAX_SIZE} buffers in one chain")
        if addr + length > self.mem.size:
            self._error("virtio: bogus descriptor or out of resources", "virtqueue_map_desc",
                        f"descriptor {i}: buffer [{addr:#x}, {addr + length:#x}) is outside guest "
                        f"memory [0, {self.mem.size:#x})")
        sg.append((addr, length))

    # --- virtqueue_push = virtqueue_fill + virtqueue_flush --------------------------
    def fill(self, head: int | Chain, written: int, idx: int = 0) -> None:
        """``virtqueue_fill`` → ``virtqueue_split_fill``: write used element
        ``used->ring[(used_idx + idx) % num] = {head, written}`` (not yet published)."""
        head = self._check_head(head, written)
        if self.broken:  # virtio_device_disabled: nothing is written
            return
        slot = (self.used_idx + idx) % self.num
        self.mem.write(self.layout.used + 4 + 8 * slot, pack_used_elem(head, written))
        if self.trace is not None:
            self.trace.emit(self.actor, "fill", f"used->ring[{slot}] = {{id {head}, len {written}}}",
                            head=head, len=written, slot=slot, used_idx=self.used_idx)

    def flush(self, count: int = 1) -> None:
        """``virtqueue_flush`` → ``virtqueue_split_flush``: publish ``count`` filled elements."""
        if not 0 < count <= self.inuse:
            raise VringUsageError(f"flush of {count} element(s) with {self.inuse} in use")
        self.inuse -= count
        if self.broken:
            return
        old = self.used_idx
        new = self.used_idx = (old + count) & U16
        self.mem.write(self.layout.used + 2, _U16.pack(new))
        # (int16_t)(new - signalled_used) < (uint16_t)(new - old)
        d = (new - self.signalled_used) & U16
        if (d - 0x10000 if d & 0x8000 else d) < (new - old) & U16:
            self.signalled_used_valid = False
        if self.trace is not None:
            self.trace.emit(self.actor, "flush", f"used->idx {old} -> {new}", old=old, new=new,
                            count=count, inuse=self.inuse)

    def push(self, head: int | Chain, written: int = 0) -> None:
        """``virtqueue_push``: return element ``head`` with ``written`` bytes written into it."""
        self.fill(head, written, 0)
        self.flush(1)

    def _check_head(self, head: int | Chain, written: int) -> int:
        if isinstance(head, Chain):
            head = head.head
        if not isinstance(written, int) or not 0 <= written <= U32:
            raise VringUsageError(f"written length {written!r} is no u32")
        if not self._inflight.get(head):
            raise VringUsageError(f"head {head!r} is not in use: it was never popped, or already pushed")
        self._inflight[head] -= 1
        return head

    # --- notifications ------------------------------------------------------------------
    def should_notify(self) -> bool:
        """``virtio_should_notify`` → ``virtio_split_should_notify``: interrupt the guest?"""
        if not self.event_idx:
            flags = self.mem.read_u16(self.layout.avail)
            result = not flags & AvailFlag.NO_INTERRUPT
            why = f"avail->flags {flags:#x}"
        else:
            v = self.signalled_used_valid
            self.signalled_used_valid = True
            old, new = self.signalled_used, self.used_idx
            self.signalled_used = new
            used_event = self.mem.read_u16(self.layout.used_event)
            result = not v or need_event(used_event, new, old)
            why = f"vring_need_event(used_event {used_event}, new {new}, old {old})"
        if self.trace is not None:
            self.trace.emit(self.actor, "should_notify", f"{why} -> {'notify' if result else 'suppress'}",
                            notify=result, used_idx=self.used_idx, event_idx=self.event_idx)
        return result

    def notify(self) -> bool:
        """``virtio_notify``: raise the queue interrupt if :meth:`should_notify` says so."""
        if not self.should_notify():
            return False
        if self.trace is not None:
            self.trace.emit(self.actor, "irq", "virtio_irq: interrupt the guest", used_idx=self.used_idx)
        return True

    def set_notification(self, enabled: bool) -> None:
        """``virtio_queue_set_notification``: ask for kicks (``enabled``) or not. Without
        EVENT_IDX this sets/clears ``VRING_USED_F_NO_NOTIFY``; with it, it writes
        ``avail_event = avail->idx`` — and only when enabling (``vring_set_avail_event``
        writes nothing while notifications are off, so ``avail_event`` stays behind)."""
        self.notification = bool(enabled)
        if self.event_idx:
            self._set_avail_event(self._avail_idx())
        else:
            flags = self.mem.read_u16(self.layout.used)
            flags = flags & ~UsedFlag.NO_NOTIFY if enabled else flags | UsedFlag.NO_NOTIFY
            self.mem.write_u16(self.layout.used, int(flags))
        if self.trace is not None:
            self.trace.emit(self.actor, "set_notification", f"notifications {'on' if enabled else 'off'}",
                            enabled=bool(enabled), event_idx=self.event_idx,
                            avail_idx=self.shadow_avail_idx)

    def __repr__(self) -> str:
        state = ", broken" if self.broken else ""
        return (f"Device(num={self.num}, last_avail_idx={self.last_avail_idx}, used_idx={self.used_idx}, "
                f"inuse={self.inuse}{state})")
