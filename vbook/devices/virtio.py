"""The virtio device core as QEMU 9.2.4 has it (hw/virtio/virtio.c): status, features, queues, ISR.

A virtio device in QEMU is two objects on a little bus: the *transport*
(virtio-pci's ``VirtIOPCIProxy``, :mod:`vbook.devices.virtio_pci`) that the
guest's register accesses reach, and the *device* (``VirtIODevice``, here
:class:`VirtIODevice`; virtio-net is :class:`vbook.devices.virtio_net.VirtIONet`)
that owns the state every transport shares, with QEMU's field names:

* ``status`` — the driver's progress (``VIRTIO_CONFIG_S_*``), set by
  :func:`virtio_set_status`; writing 0 resets (:func:`virtio_reset`);
* ``host_features`` / ``guest_features`` — 64-bit; :func:`virtio_set_features`
  keeps what the guest asked for *and* the device offers (a legacy transport
  only shows and takes bits 0-31);
* ``vq[0 … 1023]`` — :class:`VirtQueue` s, ``num`` > 0 for the ones the device
  added (:func:`virtio_add_queue`); each has the ring's guest-physical
  addresses (``desc``, ``avail``, ``used``) and, once they are set
  (:func:`virtio_queue_set_addr` → :func:`virtio_init_region_cache`), a
  :class:`vbook.models.vring.Device` over guest RAM that keeps QEMU's indices
  (``last_avail_idx``, ``used_idx``, ``signalled_used`` …) and does
  ``virtqueue_pop`` / ``_fill`` / ``_flush``;
* ``isr`` — bit 0 "a queue has used buffers", bit 1 "the config changed".

Notifications, both ways:

* guest → device: the transport calls :func:`virtio_queue_notify` → the queue's
  ``handle_output`` (virtio-net's ``virtio_net_handle_tx_bh`` …), unless the
  queue has no ring yet or the device is broken;
* device → guest: :func:`virtio_notify` → ``virtio_should_notify`` (no interrupt
  if the driver set ``VRING_AVAIL_F_NO_INTERRUPT``, or with EVENT_IDX unless
  ``vring_need_event(used_event, new, old)``; always on an empty queue with
  NOTIFY_ON_EMPTY) → ``virtio_irq``: ``isr |= 1`` and the transport's
  ``notify`` (virtio-pci without MSI-X: ``pci_set_irq(isr & 1)``).
  :func:`virtio_notify_config` sets ``isr |= 3`` (only after DRIVER_OK).

**A guest that misbehaves gets what QEMU gives it, never a model error.** A
malformed ring is ``virtio_error``: the device is *broken* (``vdev->broken``:
every ``virtqueue_pop`` returns nothing, fills and flushes write nothing,
notifications stop) until a reset; with VIRTIO_F_VERSION_1 negotiated
``virtio_error`` also sets ``VIRTIO_CONFIG_S_NEEDS_RESET`` and raises a config
interrupt — a legacy driver cannot negotiate VERSION_1 (bit 32), so on the
legacy interface the status byte does *not* change: the driver only sees that
nothing moves any more. A ring address that is not guest RAM: an area that
runs from RAM past its end is QEMU's ``virtio_init_region_cache`` failing
("Cannot map desc" / "used" / "avail", ``virtio_error``); an area wholly
outside RAM is *not* an error in QEMU — its region cache points at unassigned
memory, which reads as 0 and drops writes, so ``avail->idx`` reads 0 and the
queue just stays empty. The model does both (outside RAM it reads zeros and
drops writes the same way). Status values are stored as written (QEMU checks
nothing but FEATURES_OK, and only for VERSION_1).

**Bottom halves** (util/async.c): a :class:`QEMUBH` is scheduled
(:func:`qemu_bh_schedule`) and later run by the main loop (:func:`aio_bh_poll`,
recorded in thread ``main`` with the BQL held). Where the model runs it is the
device's choice (virtio-net: at once after the exit, or when asked; see there).

Every step is a trace event of the device (actor ``device``, through the
transport's ``emit``) named after QEMU's function (``fn``) with the queue
(``vq``, ``vq_name``) and its indices; the ring's own steps (``pop``,
``fill``, ``flush``, ``should_notify``, ``set_notification``) are the ring
model's events, renamed to ``virtqueue_pop`` & co.

Not modelled: the packed ring, VIRTIO_F_IN_ORDER, IOMMUs and ``dma_as`` other
than guest RAM (a ring or buffer on another device's MMIO region is treated
as outside RAM), memory barriers and RCU (single-threaded), ioeventfd/irqfd
host notifiers (every kick is handled where the guest's access lands), vhost,
migration, ``virtio_queue_set_num`` from a modern transport, the
``device_endian`` of legacy big-endian guests (x86 is little-endian).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vbook.devices.pci import in_function
from vbook.errors import VirtioError
from vbook.memory import GuestMemory
from vbook.models.qemu_memory import RunContext
from vbook.models.virtio_consts import (
    VIRTIO_F_BAD_FEATURE,
    VIRTIO_NO_VECTOR,
    VIRTIO_PCI_VRING_ALIGN,
    VIRTIO_QUEUE_MAX,
    DeviceStatus,
    RingFeature,
    TransportFeature,
)
from vbook.models.vring_device import VIRTQUEUE_MAX_SIZE, Chain, Device
from vbook.models.vring_layout import SIZEOF_VRING_DESC, DescFlag, Layout, read_desc

FILE = "hw/virtio/virtio.c"
ASYNC_FILE = "util/async.c"
U16 = 0xFFFF
_NEXT, _WRITE, _INDIRECT = int(DescFlag.NEXT), int(DescFlag.WRITE), int(DescFlag.INDIRECT)

#: DEFINE_VIRTIO_COMMON_FEATURES (include/hw/virtio/virtio.h, QEMU 9.2.4): the transport
#: feature properties every virtio device has, name → (bit, default)
VIRTIO_COMMON_PROPERTIES: dict[str, tuple[int, bool]] = {
    "indirect_desc": (RingFeature.INDIRECT_DESC, True),
    "event_idx": (RingFeature.EVENT_IDX, True),
    "notify_on_empty": (TransportFeature.NOTIFY_ON_EMPTY, True),
    "any_layout": (TransportFeature.ANY_LAYOUT, True),
    "iommu_platform": (TransportFeature.ACCESS_PLATFORM, False),
    "packed": (TransportFeature.RING_PACKED, False),
    "queue_reset": (TransportFeature.RING_RESET, True),
    "in_order": (TransportFeature.IN_ORDER, False),
}


def virtio_has_feature(features: int, fbit: int) -> bool:
    """include/hw/virtio/virtio.h"""
    return bool(features >> fbit & 1)


def _names(features: int) -> str:
    """``features`` as bit numbers, for labels."""
    return ",".join(str(b) for b in range(64) if features >> b & 1) or "none"


# --- bottom halves (util/async.c) -----------------------------------------------------------

@dataclass(eq=False)
class QEMUBH:
    """``QEMUBH``: a callback the main loop runs once after :func:`qemu_bh_schedule`."""

    name: str
    cb: Callable[[Any], None] = field(repr=False)
    opaque: Any = field(default=None, repr=False)
    scheduled: bool = False


def qemu_bh_schedule(bh: QEMUBH, ctx: RunContext | None = None) -> None:
    """util/async.c: mark ``bh`` to run in the next ``aio_bh_poll`` (and wake the main loop)."""
    if ctx is not None and not bh.scheduled:
        ctx.emit("qemu", "bh", f"qemu_bh_schedule({bh.name}): aio_notify wakes the main loop",
                 fn="qemu_bh_schedule", file=ASYNC_FILE, bh=bh.name)
    bh.scheduled = True


def qemu_bh_cancel(bh: QEMUBH) -> None:
    """util/async.c"""
    bh.scheduled = False


@contextmanager
def main_loop(ctx: RunContext, fn: str) -> Iterator[None]:
    """Record what runs inside as the main loop thread's, BQL held (``main_loop_wait`` → ``fn``)."""
    saved = ctx.thread, ctx.bql, list(ctx.stack)
    ctx.thread, ctx.bql, ctx.stack[:] = "main", True, ["main_loop_wait", fn]
    try:
        yield
    finally:
        ctx.thread, ctx.bql = saved[0], saved[1]
        ctx.stack[:] = saved[2]


def aio_bh_poll(bhs: list[QEMUBH], ctx: RunContext) -> int:
    """util/async.c: run every scheduled bottom half once, in the main loop; how many ran."""
    ran = 0
    for bh in bhs:
        if not bh.scheduled:
            continue
        bh.scheduled = False
        ran += 1
        with main_loop(ctx, "aio_bh_poll"):
            ctx.emit("qemu", "bh", f"aio_bh_poll → {bh.name}", fn="aio_bh_poll", file=ASYNC_FILE,
                     bh=bh.name)
            ctx.stack.append(bh.name)
            bh.cb(bh.opaque)
    return ran


#: most rounds of :func:`run_bottom_halves`: a bh reschedules itself only while the
#: guest's ring holds more, and the guest does not run meanwhile
BH_ROUNDS = 4 * 1024


def run_bottom_halves(vdev: Any, rounds: int = BH_ROUNDS) -> int:
    """The main loop's turn for ``vdev``'s bottom halves: ``aio_bh_poll`` until none is
    scheduled (a bh that rescheduled itself runs in the next round, as in the next
    ``main_loop_wait``). Returns how many ran."""
    total = 0
    for _ in range(rounds):
        ran = aio_bh_poll(vdev.bhs, vdev.ctx)
        if not ran:
            break
        total += ran
    return total


# --- iovecs over guest memory (util/iov.c) --------------------------------------------------

Sg = list[tuple[int, int]]


def iov_size(sg: Sg) -> int:
    return sum(n for _, n in sg)


def iov_to_buf(mem: Any, sg: Sg, offset: int = 0, nbytes: int = -1) -> bytes:
    """util/iov.c: up to ``nbytes`` bytes of the buffers ``sg`` from ``offset`` (-1: all)."""
    out = bytearray()
    want = iov_size(sg) if nbytes < 0 else nbytes
    for a, n in sg:
        if len(out) >= want:
            break
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, want - len(out))
        out += mem.read(a + offset, take)
        offset = 0
    return bytes(out)


def iov_from_buf(mem: Any, sg: Sg, offset: int, data: bytes) -> int:
    """util/iov.c: copy ``data`` into the buffers ``sg`` from ``offset``; the bytes copied."""
    done = 0
    for a, n in sg:
        if done >= len(data):
            break
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, len(data) - done)
        mem.write(a + offset, bytes(data[done:done + take]))
        done += take
        offset = 0
    return done


def iov_copy(sg: Sg, offset: int, nbytes: int) -> Sg:
    """util/iov.c: the part ``[offset, offset + nbytes)`` of ``sg`` as buffers of its own."""
    out: Sg = []
    for a, n in sg:
        if not (offset or nbytes):
            break
        if offset >= n:
            offset -= n
            continue
        take = min(nbytes, n - offset)
        out.append((a + offset, take))
        nbytes -= take
        offset = 0
    return out


# --- the queues -------------------------------------------------------------------------------

class _RingMemory:
    """Guest memory as a ring's region caches reach it when part of the ring is not RAM:
    RAM below ``ram.size``, unassigned memory above it (reads 0, writes dropped:
    ``unassigned_mem_read`` / ``_write``). ``size`` is RAM's, so buffers outside RAM are
    still "bogus descriptor" (``virtqueue_map_desc``: ``dma_memory_map`` maps RAM only)."""

    def __init__(self, ram: GuestMemory | None):
        self.ram = ram
        self.ram_size = ram.size if ram is not None else 0
        self.size = self.ram_size

    def read(self, addr: int, n: int) -> bytes:
        if addr >= self.ram_size or self.ram is None:
            return bytes(n)
        return self.ram.read(addr, n)

    def write(self, addr: int, data: bytes) -> None:
        if addr < self.ram_size and self.ram is not None:
            self.ram.write(addr, data)

    def read_u16(self, addr: int) -> int:
        return int(struct.unpack("<H", self.read(addr, 2))[0])

    def read_u32(self, addr: int) -> int:
        return int(struct.unpack("<I", self.read(addr, 4))[0])

    def read_u64(self, addr: int) -> int:
        return int(struct.unpack("<Q", self.read(addr, 8))[0])

    def write_u16(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<H", value))

    def __repr__(self) -> str:
        return f"_RingMemory(RAM [0, {self.ram_size:#x}), unassigned above)"


class _RingEvents:
    """Where the ring model's events go: the device's trace, named after QEMU's functions."""

    FN = {"pop": "virtqueue_pop", "pop_refused": "virtqueue_pop", "fill": "virtqueue_fill",
          "flush": "virtqueue_flush", "should_notify": "virtio_should_notify",
          "set_notification": "virtio_queue_set_notification", "irq": "virtio_irq"}

    def __init__(self, vq: VirtQueue):
        self.vq = vq

    def emit(self, actor: str, kind: str, label: str = "", **data: Any) -> None:
        if kind == "virtio_error":  # virtio_error() records its own event, with the status
            return
        vq = self.vq
        fn = self.FN.get(kind, kind)
        vq.vdev.emit(kind, f"{fn} {vq.name}: {label}", fn, FILE, vq=vq.queue_index,
                     vq_name=vq.name, **data)


@dataclass(eq=False)
class VirtQueue:
    """``VirtQueue`` (hw/virtio/virtio.c): ``vring.num`` / ``num_default`` / ``align`` and the
    ring's addresses ``desc`` / ``avail`` / ``used``; ``ring`` is the ring model over guest
    memory once the addresses are set (QEMU's region caches, plus the indices it keeps in
    the VirtQueue: :attr:`last_avail_idx` & co read through to it)."""

    vdev: VirtIODevice = field(repr=False)
    queue_index: int
    num: int = 0
    num_default: int = 0
    align: int = 0
    desc: int = 0
    avail: int = 0
    used: int = 0
    notification: bool = True
    vector: int = VIRTIO_NO_VECTOR
    handle_output: Callable[[VirtIODevice, VirtQueue], None] | None = field(default=None,
                                                                            repr=False)
    #: the queue's name in events ("rx", "tx", "ctrl" for virtio-net)
    name: str = ""
    ring: Device | None = field(default=None, repr=False)
    #: the guest RAM ``ring`` was made over (a new one re-makes it: the memory listener)
    ram: Any = field(default=None, repr=False)

    def _get(self, attr: str) -> int:
        return int(getattr(self.ring, attr)) if self.ring is not None else 0

    @property
    def last_avail_idx(self) -> int:
        return self._get("last_avail_idx")

    @property
    def shadow_avail_idx(self) -> int:
        return self._get("shadow_avail_idx")

    @property
    def used_idx(self) -> int:
        return self._get("used_idx")

    @property
    def inuse(self) -> int:
        return self._get("inuse")

    @property
    def signalled_used(self) -> int:
        return self._get("signalled_used")

    def layout(self) -> Layout | None:
        return self.ring.layout if self.ring is not None else None

    def __repr__(self) -> str:
        where = f"desc {self.desc:#x}" if self.desc else "no ring"
        return (f"VirtQueue({self.queue_index} {self.name}, num {self.num}, {where}, "
                f"last_avail_idx {self.last_avail_idx}, used_idx {self.used_idx}, "
                f"inuse {self.inuse})")


def _indices(ring: Device) -> dict[str, Any]:
    return {"last_avail_idx": ring.last_avail_idx, "shadow_avail_idx": ring.shadow_avail_idx,
            "used_idx": ring.used_idx, "signalled_used": ring.signalled_used,
            "signalled_used_valid": ring.signalled_used_valid}


# --- the device -----------------------------------------------------------------------------

def _new_queues(vdev: VirtIODevice) -> list[VirtQueue]:
    return [VirtQueue(vdev, i) for i in range(VIRTIO_QUEUE_MAX)]


@dataclass(eq=False)
class VirtIODevice:
    """``VirtIODevice`` (include/hw/virtio/virtio.h) with QEMU's field names; the class
    attributes and overridable methods are its ``VirtioDeviceClass``.

    ``proxy`` is the transport it is plugged into (the virtio bus's parent): it gives
    the events a place (``emit``), the interrupt (``bus_notify``) and guest RAM
    (``dma_ram``). ``host_features`` starts with the common transport properties
    (``DEFINE_VIRTIO_COMMON_FEATURES``); a device class adds its own in ``get_features``.
    """

    #: ``vdev->name`` (``virtio_id_to_name``) and ``device_id``
    name: ClassVar[str] = "virtio"
    device_id: ClassVar[int] = 0

    host_features: int = field(default_factory=lambda: sum(
        1 << bit for bit, on in VIRTIO_COMMON_PROPERTIES.values() if on))
    guest_features: int = 0
    backend_features: int = 0
    status: int = 0
    isr: int = 0
    queue_sel: int = 0
    config_vector: int = VIRTIO_NO_VECTOR
    config_len: int = 0
    config: bytearray = field(default_factory=bytearray, repr=False)
    generation: int = 0
    broken: bool = False
    disabled: bool = False
    started: bool = False
    start_on_kick: bool = False
    use_started: bool = True
    use_disabled_flag: bool = True
    vm_running: bool = True
    vq: list[VirtQueue] = field(default_factory=list, repr=False)
    proxy: Any = field(default=None, repr=False)
    #: the device's bottom halves (virtio-net: one TX bh per queue pair)
    bhs: list[QEMUBH] = field(default_factory=list, repr=False)
    #: False: the main loop runs a scheduled bh as soon as the exit that scheduled it is
    #: handled (:func:`run_bottom_halves` after every transport access); True: only when
    #: :func:`run_bottom_halves` is called
    bh_deferred: bool = False

    # --- where things go (the virtio bus) -----------------------------------------------------
    @property
    def ctx(self) -> RunContext:
        return self.proxy.ctx if self.proxy is not None else _SILENT

    def emit(self, kind: str, label: str, fn: str, file: str = FILE, **data: Any) -> None:
        """A ``device`` event of this virtio device (through its transport)."""
        if self.proxy is None or self.ctx.trace is None:
            return
        self.proxy.emit("device", kind, label, fn, file, **data)

    def dma_ram(self) -> GuestMemory | None:
        """``vdev->dma_as`` = ``address_space_memory``: the guest RAM rings and buffers are in."""
        return self.proxy.dma_ram() if self.proxy is not None else None

    # --- VirtioDeviceClass hooks -------------------------------------------------------------
    def get_config(self, config: bytearray) -> None:
        """``vdc->get_config``: fill ``config`` (``config_len`` bytes)."""

    def set_config(self, config: bytearray) -> None:
        """``vdc->set_config``: the guest wrote ``config``."""

    def get_features(self, features: int) -> int:
        """``vdc->get_features``: the features the device offers, from the common ones."""
        return features

    def set_features(self, val: int) -> None:
        """``vdc->set_features``: the features the guest acked (already masked)."""

    def bad_features(self) -> int:
        """``vdc->bad_features``: what a driver that sets VIRTIO_F_BAD_FEATURE gets."""
        return 0

    def set_status(self, status: int) -> None:
        """``vdc->set_status``"""

    def device_reset(self) -> None:
        """``vdc->reset``"""

    def has_feature(self, fbit: int) -> bool:
        """``virtio_vdev_has_feature``: did the guest ack ``fbit``?"""
        return bool(self.guest_features >> fbit & 1)

    def host_has_feature(self, fbit: int) -> bool:
        """``virtio_host_has_feature``"""
        return bool(self.host_features >> fbit & 1)

    def __repr__(self) -> str:
        st = _status_names(self.status)
        return (f"{type(self).__name__}(status {self.status:#04x} {st}, guest_features "
                f"{self.guest_features:#x}, isr {self.isr:#x}{', broken' if self.broken else ''})")


_SILENT = RunContext()


def virtio_init(vdev: VirtIODevice, config_size: int) -> None:
    """hw/virtio/virtio.c: status 0, ISR 0, 1024 empty queues, ``config_size`` bytes of config."""
    vdev.start_on_kick = vdev.started = False
    vdev.status = vdev.isr = vdev.queue_sel = 0
    vdev.config_vector = VIRTIO_NO_VECTOR
    vdev.vq = _new_queues(vdev)
    vdev.broken = False
    vdev.config_len = config_size
    vdev.config = bytearray(config_size)


def virtio_add_queue(vdev: VirtIODevice, queue_size: int,
                     handle_output: Callable[[VirtIODevice, VirtQueue], None],
                     name: str = "") -> VirtQueue:
    """hw/virtio/virtio.c: the first unused queue gets ``queue_size`` entries, legacy
    alignment and ``handle_output``."""
    for vq in vdev.vq:
        if vq.num == 0:
            break
    else:
        raise VirtioError("virtio_add_queue: all VIRTIO_QUEUE_MAX queues in use", "virtio_add_queue")
    if queue_size > VIRTQUEUE_MAX_SIZE:
        raise VirtioError(f"virtio_add_queue: size {queue_size} > VIRTQUEUE_MAX_SIZE",
                          "virtio_add_queue")
    vq.num = vq.num_default = queue_size
    vq.align = VIRTIO_PCI_VRING_ALIGN
    vq.handle_output = handle_output
    vq.name = name or str(vq.queue_index)
    return vq


def virtio_get_queue(vdev: VirtIODevice, n: int) -> VirtQueue:
    return vdev.vq[n]


def virtio_queue_get_num(vdev: VirtIODevice, n: int) -> int:
    return vdev.vq[n].num


def virtio_queue_get_addr(vdev: VirtIODevice, n: int) -> int:
    return vdev.vq[n].desc


def virtio_queue_set_num(vdev: VirtIODevice, n: int, num: int) -> None:
    """hw/virtio/virtio.c: "Don't allow guest to flip queue between existent and nonexistent
    states, or to set it to an invalid size." (only a modern transport calls it)."""
    if bool(num) != bool(vdev.vq[n].num) or num > VIRTQUEUE_MAX_SIZE or num < 0:
        return
    vdev.vq[n].num = num


def virtio_queue_set_addr(vdev: VirtIODevice, n: int, addr: int) -> None:
    """hw/virtio/virtio.c: the descriptor table is at ``addr``; a queue with no size is ignored."""
    vq = vdev.vq[n]
    if not vq.num:
        vdev.emit("vring", f"virtio_queue_set_addr(vq {n}, {addr:#x}): queue {n} does not exist "
                  "(vring.num 0), ignored", "virtio_queue_set_addr", vq=n, addr=addr, num=0)
        return
    vq.desc = addr
    virtio_queue_update_rings(vdev, n)


def virtio_queue_update_rings(vdev: VirtIODevice, n: int) -> None:
    """hw/virtio/virtio.c: the legacy layout — avail after the ``num`` descriptors, used at
    the next ``align`` (4096) boundary after avail->ring[num] — then the region caches."""
    vq = vdev.vq[n]
    if not vq.num or not vq.desc or not vq.align:
        return
    vq.avail = vq.desc + vq.num * SIZEOF_VRING_DESC
    vq.used = (vq.avail + 4 + 2 * vq.num + vq.align - 1) & ~(vq.align - 1)
    virtio_init_region_cache(vdev, n)


def virtio_init_region_cache(vdev: VirtIODevice, n: int) -> None:
    """hw/virtio/virtio.c: map the three areas (``address_space_cache_init``).

    One that runs from guest RAM past its end cannot be mapped in one piece:
    "Cannot map desc" / "used" / "avail" (checked in that order), ``virtio_error``.
    One wholly outside RAM maps unassigned memory (zeros, writes dropped) — no error.
    """
    vq = vdev.vq[n]
    old = vq.ring
    ram = vdev.dma_ram()
    vq.ram = ram
    if not vq.desc:
        vq.ring = None
        return
    ram_size = ram.size if ram is not None else 0
    ev = 2 if vdev.has_feature(RingFeature.EVENT_IDX) else 0
    sizes = {"desc": (vq.desc, SIZEOF_VRING_DESC * vq.num),
             "used": (vq.used, 4 + 8 * vq.num + ev),
             "avail": (vq.avail, 4 + 2 * vq.num + ev)}
    outside = []
    for what, (gpa, size) in sizes.items():
        if gpa < ram_size < gpa + size:
            vq.ring = None
            virtio_error(vdev, f"Cannot map {what}", "virtio_init_region_cache",
                         f"the {what} area [{gpa:#x}, {gpa + size:#x}) of queue {n} runs past the "
                         f"end of guest RAM at {ram_size:#x}")
            return
        if gpa >= ram_size:
            outside.append(what)
    layout = Layout(vq.num, vq.desc, vq.align)
    assert (layout.avail, layout.used) == (vq.avail, vq.used)
    fits = ram is not None and layout.end <= ram_size
    mem: Any = ram if fits else _RingMemory(ram)
    if not fits:
        mem.size = max(ram_size, layout.end)  # the ring model maps all of the ring …
    ring = Device(mem, layout, vdev.has_feature(RingFeature.EVENT_IDX), trace=_RingEvents(vq),
                  actor="device")
    if not fits:
        mem.size = ram_size                   # … but buffers must be RAM
    if old is not None:  # the indices live in the VirtQueue, not in the caches
        for attr in ("last_avail_idx", "shadow_avail_idx", "used_idx", "signalled_used",
                     "signalled_used_valid", "inuse", "_inflight"):
            setattr(ring, attr, getattr(old, attr))  # (_inflight: elements popped, not pushed)
    ring.notification = vq.notification
    ring.broken = vdev.broken or vdev.disabled
    vq.ring = ring
    note = (f"; {', '.join(outside)} outside guest RAM [0, {ram_size:#x}): unassigned memory, "
            "reads 0 and drops writes (QEMU maps it without complaint)") if outside else ""
    vdev.emit("vring", f"virtio_init_region_cache {vq.name}: desc {vq.desc:#x}, avail "
              f"{vq.avail:#x}, used {vq.used:#x} (num {vq.num}){note}", "virtio_init_region_cache",
              vq=n, vq_name=vq.name, num=vq.num, desc=vq.desc, avail=vq.avail, used=vq.used,
              outside=outside, layout=layout.to_dict())


def _ring(vq: VirtQueue) -> Device | None:
    """The queue's ring model; re-made when guest RAM is another object now
    (``virtio_memory_listener_commit``: a run lends the vCPU's RAM to the board)."""
    if vq.desc and vq.ram is not vq.vdev.dma_ram():
        virtio_init_region_cache(vq.vdev, vq.queue_index)
    return vq.ring


def _sync_disabled(vdev: VirtIODevice) -> None:
    """``virtio_device_disabled`` = ``disabled || broken``: the ring model's ``broken`` is that."""
    off = vdev.broken or vdev.disabled
    for vq in vdev.vq:
        if vq.ring is not None:
            vq.ring.broken = off
        if not vq.num:
            break


def virtio_device_disabled(vdev: VirtIODevice) -> bool:
    return vdev.disabled or vdev.broken


def virtio_set_disabled(vdev: VirtIODevice, disable: bool) -> None:
    """include/hw/virtio/virtio.h (virtio-pci calls it when COMMAND.MASTER changes)."""
    if vdev.use_disabled_flag:
        vdev.disabled = bool(disable)
        _sync_disabled(vdev)


def virtio_error(vdev: VirtIODevice, message: str, function: str = "", detail: str = "") -> None:
    """hw/virtio/virtio.c: report; with VERSION_1 set NEEDS_RESET and notify the config
    change; the device is broken until it is reset."""
    v1 = vdev.has_feature(TransportFeature.VERSION_1)
    vdev.emit("virtio_error", f"virtio_error: {message}{f' ({detail})' if detail else ''} — "
              + ("status |= NEEDS_RESET, virtio_notify_config; " if v1 else
                 "legacy (no VERSION_1): the status byte stays; ") + "vdev->broken = true",
              "virtio_error", message=message, function=function, detail=detail,
              needs_reset=v1, status=vdev.status)
    if v1:
        vdev.status |= DeviceStatus.NEEDS_RESET
        virtio_notify_config(vdev)
    vdev.broken = True
    _sync_disabled(vdev)


# --- status, features, reset -------------------------------------------------------------------

def virtio_device_started(vdev: VirtIODevice, status: int) -> bool:
    """include/hw/virtio/virtio.h"""
    if vdev.use_started:
        return vdev.started
    return bool(status & DeviceStatus.DRIVER_OK)


def virtio_set_started(vdev: VirtIODevice, started: bool) -> None:
    if started:
        vdev.start_on_kick = False
    if vdev.use_started:
        vdev.started = bool(started)


def virtio_set_status(vdev: VirtIODevice, val: int) -> int:
    """hw/virtio/virtio.c: the device class sees the new status, then it is stored (any value)."""
    val &= 0xFF
    old = vdev.status
    # with VERSION_1, setting FEATURES_OK runs virtio_validate_features, which can only
    # refuse IOMMU_PLATFORM negotiated badly: never offered here
    if (old & DeviceStatus.DRIVER_OK) != (val & DeviceStatus.DRIVER_OK):
        virtio_set_started(vdev, bool(val & DeviceStatus.DRIVER_OK))
    vdev.emit("virtio", f"virtio_set_status {old:#04x} → {val:#04x} ({_status_names(val)})",
              "virtio_set_status", old=old, status=val)
    with _in(vdev, "virtio_set_status"):
        vdev.set_status(val)
    vdev.status = val
    return 0


def _status_names(val: int) -> str:
    return "|".join(s.name or "" for s in DeviceStatus if val & s) or "reset"


def virtio_set_features_nocheck(vdev: VirtIODevice, val: int) -> int:
    """hw/virtio/virtio.c: keep what the device offers; -1 if the guest asked for more."""
    bad = bool(val & ~vdev.host_features)
    val &= vdev.host_features
    with _in(vdev, "virtio_set_features"):
        vdev.set_features(val)
    vdev.guest_features = val
    for vq in vdev.vq:      # the ring model's event_idx is the negotiated feature
        if not vq.num:
            break
        if vq.ring is not None:
            vq.ring.event_idx = vdev.has_feature(RingFeature.EVENT_IDX)
    return -1 if bad else 0


def virtio_set_features(vdev: VirtIODevice, val: int) -> int:
    """hw/virtio/virtio.c: refused after FEATURES_OK; otherwise ``virtio_set_features_nocheck``."""
    if vdev.status & DeviceStatus.FEATURES_OK:
        vdev.emit("virtio", f"virtio_set_features({val:#x}): refused after FEATURES_OK (-EINVAL)",
                  "virtio_set_features", val=val, ret=-22)
        return -22
    asked = val
    ret = virtio_set_features_nocheck(vdev, val)
    if vdev.has_feature(RingFeature.EVENT_IDX):  # "changes the size of the caches"
        for vq in vdev.vq:
            if not vq.num:
                break
            if vq.desc:
                virtio_init_region_cache(vdev, vq.queue_index)
    if ret == 0 and not virtio_device_started(vdev, vdev.status) and \
            not vdev.has_feature(TransportFeature.VERSION_1):
        vdev.start_on_kick = True
    bad = asked & ~vdev.host_features
    vdev.emit("virtio", f"virtio_set_features: guest asked {asked:#x}, acked {vdev.guest_features:#x}"
              + (f" (not offered, dropped: bits {_names(bad)})" if bad else "")
              + (" — the guest set UNUSED(30)" if asked >> VIRTIO_F_BAD_FEATURE & 1 else ""),
              "virtio_set_features", asked=asked, guest_features=vdev.guest_features,
              host_features=vdev.host_features, ret=ret)
    return ret


def __virtio_queue_reset(vdev: VirtIODevice, i: int) -> None:  # noqa: N807 (QEMU's name)
    """hw/virtio/virtio.c: addresses 0, indices 0, notifications on, default size."""
    vq = vdev.vq[i]
    vq.desc = vq.avail = vq.used = 0
    vq.vector = VIRTIO_NO_VECTOR
    vq.notification = True
    vq.num = vq.num_default
    vq.ring = None
    vq.ram = None


def virtio_reset(vdev: VirtIODevice) -> None:
    """hw/virtio/virtio.c: status 0, the device's own reset, features 0, ISR 0, every queue."""
    with _in(vdev, "virtio_reset"):
        virtio_set_status(vdev, 0)
        vdev.device_reset()
        vdev.start_on_kick = vdev.started = vdev.broken = False
        virtio_set_features_nocheck(vdev, 0)
        vdev.queue_sel = 0
        vdev.status = 0
        vdev.disabled = False
        vdev.isr = 0
        vdev.config_vector = VIRTIO_NO_VECTOR
        virtio_notify_vector(vdev, vdev.config_vector)
        for i, vq in enumerate(vdev.vq):
            if vq.num_default == 0 and vq.num == 0:
                break
            __virtio_queue_reset(vdev, i)
    vdev.emit("virtio", "virtio_reset: status, features, ISR and every queue back to 0",
              "virtio_reset")


def _in(vdev: VirtIODevice, fn: str) -> AbstractContextManager[None]:
    """``fn`` on the recorded QEMU call stack while it runs (:func:`vbook.devices.pci.in_function`)."""
    return in_function(vdev.ctx, fn)


# --- config space (hw/virtio/virtio-config-io.c) ----------------------------------------------

def virtio_config_read(vdev: VirtIODevice, addr: int, size: int) -> int:
    """``virtio_config_readb/w/l``: ``get_config``, then ``size`` bytes; past ``config_len``
    all ones (``(uint32_t)-1``)."""
    if addr + size > vdev.config_len:
        return 0xFFFFFFFF
    vdev.get_config(vdev.config)
    return int.from_bytes(vdev.config[addr:addr + size], "little")


def virtio_config_write(vdev: VirtIODevice, addr: int, data: int, size: int) -> None:
    """``virtio_config_writeb/w/l``: store into the last ``get_config`` copy, ``set_config``."""
    if addr + size > vdev.config_len:
        return
    vdev.config[addr:addr + size] = (data & ((1 << 8 * size) - 1)).to_bytes(size, "little")
    vdev.set_config(vdev.config)


# --- the ring operations (virtqueue_*) ------------------------------------------------------

def virtio_queue_ready(vq: VirtQueue) -> bool:
    return vq.avail != 0


def virtio_queue_empty(vq: VirtQueue) -> bool:
    """``virtio_queue_split_empty``: nothing new (also when disabled/broken or without a ring)."""
    ring = _ring(vq)
    if virtio_device_disabled(vq.vdev) or not vq.avail or ring is None:
        return True
    return ring.empty()


def virtqueue_pop(vq: VirtQueue) -> Chain | None:
    """``virtqueue_pop`` → ``virtqueue_split_pop``: the next element, or None (empty, no
    ring, disabled, broken — or the ring was malformed, which is ``virtio_error``)."""
    ring = _ring(vq)
    if ring is None or not vq.avail:
        return None
    try:
        return ring.pop()
    except VirtioError as e:
        virtio_error(vq.vdev, e.message, e.function, e.detail)
        return None


def virtqueue_fill(vq: VirtQueue, elem: Chain, length: int, idx: int = 0) -> None:
    """``virtqueue_fill``: used entry ``used_idx + idx`` = {head, length} (not yet published)."""
    ring = _ring(vq)
    assert ring is not None, "virtqueue_fill on a queue without a ring"
    ring.fill(elem, length, idx)


def virtqueue_flush(vq: VirtQueue, count: int) -> None:
    """``virtqueue_flush``: publish ``count`` filled entries (``used->idx += count``)."""
    ring = _ring(vq)
    assert ring is not None, "virtqueue_flush on a queue without a ring"
    ring.flush(count)


def virtqueue_push(vq: VirtQueue, elem: Chain, length: int) -> None:
    """``virtqueue_push`` = ``virtqueue_fill(…, 0)`` + ``virtqueue_flush(…, 1)``."""
    virtqueue_fill(vq, elem, length, 0)
    virtqueue_flush(vq, 1)


def virtqueue_detach_element(vq: VirtQueue, elem: Chain, length: int = 0) -> None:
    """``virtqueue_detach_element``: forget a popped element without a used entry
    (``inuse -= 1``). The ring model does exactly that in ``fill`` + ``flush`` while the
    device is disabled, so it is asked to, for this one element."""
    ring = _ring(vq)
    assert ring is not None
    was = ring.broken
    ring.broken = True
    try:
        ring.fill(elem, length, 0)
        ring.flush(1)
    finally:
        ring.broken = was
    vq.vdev.emit("detach", f"virtqueue_detach_element {vq.name}: head {elem.head} given back "
                 "without a used entry", "virtqueue_detach_element", vq=vq.queue_index,
                 vq_name=vq.name, head=elem.head, inuse=ring.inuse)


def virtqueue_unpop(vq: VirtQueue, elem: Chain, length: int = 0) -> None:
    """``virtqueue_unpop``: as if the element had not been popped (``last_avail_idx -= 1``)."""
    ring = _ring(vq)
    assert ring is not None
    ring.last_avail_idx = (ring.last_avail_idx - 1) & U16
    virtqueue_detach_element(vq, elem, length)


def virtqueue_drop_all(vq: VirtQueue) -> int:
    """``virtqueue_drop_all``: give every available element back unused (length 0).

    QEMU takes the heads without walking their chains; the model pops them (so a
    malformed chain in a dropped queue breaks the device here, not in QEMU)."""
    dropped = 0
    if virtio_device_disabled(vq.vdev) or _ring(vq) is None:
        return 0
    elems = []
    while not virtio_queue_empty(vq) and vq.inuse < vq.num:
        elem = virtqueue_pop(vq)
        if elem is None:
            break
        elems.append(elem)
    for j, elem in enumerate(elems):
        virtqueue_fill(vq, elem, 0, j)
        dropped += 1
    if dropped:
        virtqueue_flush(vq, dropped)
    return dropped


def virtio_queue_set_notification(vq: VirtQueue, enable: bool) -> None:
    """``virtio_queue_set_notification``: ask the driver for kicks or not
    (``VRING_USED_F_NO_NOTIFY``, or with EVENT_IDX ``avail_event``)."""
    vq.notification = bool(enable)
    ring = _ring(vq)
    if ring is None:
        return
    ring.set_notification(bool(enable))


def virtqueue_num_heads(vq: VirtQueue, idx: int) -> int:
    """hw/virtio/virtio.c: heads the guest published after ``idx`` (-1 after virtio_error)."""
    ring = vq.ring
    assert ring is not None
    idx &= U16
    if ring.shadow_avail_idx != idx:
        avail_idx = ring.shadow_avail_idx
    else:
        avail_idx = ring.shadow_avail_idx = ring.mem.read_u16(ring.layout.avail + 2)
    num_heads = (avail_idx - idx) & U16
    if num_heads > vq.num:
        virtio_error(vq.vdev, f"Guest moved used index from {idx} to {ring.shadow_avail_idx}",
                     "virtqueue_num_heads",
                     f"avail->idx is {num_heads} entries ahead; the ring has num = {vq.num}")
        return -1
    return num_heads


def virtqueue_get_avail_bytes(vq: VirtQueue, max_in_bytes: int,
                              max_out_bytes: int) -> tuple[int, int, int]:
    """``virtqueue_get_avail_bytes`` → ``virtqueue_split_get_avail_bytes``: walk the
    available chains (without popping) until ``max_in_bytes`` writable and
    ``max_out_bytes`` readable bytes are found. Returns ``(opaque, in_bytes, out_bytes)``;
    ``opaque`` is the ``shadow_avail_idx`` seen (for
    :func:`virtio_queue_enable_notification_and_check`), -1 on an error."""
    ring = _ring(vq)
    if ring is None or not vq.desc:
        return -1, 0, 0
    mem, lay, vdev = ring.mem, ring.layout, vq.vdev
    idx = ring.last_avail_idx
    total_bufs = in_total = out_total = 0

    def err(message: str, detail: str = "") -> tuple[int, int, int]:
        virtio_error(vdev, message, "virtqueue_split_get_avail_bytes", detail)
        return -1, 0, 0

    while True:
        rc = virtqueue_num_heads(vq, idx)
        if rc < 0:
            return -1, 0, 0
        if rc == 0:
            break
        head = mem.read_u16(lay.avail + 4 + 2 * (idx % vq.num))
        idx = (idx + 1) & U16
        if head >= vq.num:
            return err(f"Guest says index {head} is available")
        table, max_, num_bufs = lay.desc, vq.num, total_bufs
        desc = read_desc(mem, table, head)
        indirect = False
        if desc.flags & _INDIRECT:
            if not desc.len or desc.len % SIZEOF_VRING_DESC:
                return err("Invalid size for indirect buffer table")
            if num_bufs >= max_:
                return err("Looped descriptor")
            if desc.addr + desc.len > mem.size:
                return err("Cannot map indirect buffer")
            table, max_, num_bufs, indirect = desc.addr, desc.len // SIZEOF_VRING_DESC, 0, True
            desc = read_desc(mem, table, 0)
        while True:
            num_bufs += 1
            if num_bufs > max_:
                return err("Looped descriptor")
            if desc.flags & _WRITE:
                in_total += desc.len
            else:
                out_total += desc.len
            if in_total >= max_in_bytes and out_total >= max_out_bytes:
                return ring.shadow_avail_idx, in_total, out_total
            if not desc.flags & _NEXT:
                break
            if desc.next >= max_:
                return err(f"Desc next is {desc.next}")
            desc = read_desc(mem, table, desc.next)
        total_bufs = total_bufs + 1 if indirect else num_bufs
    return ring.shadow_avail_idx, in_total, out_total


def virtio_queue_enable_notification_and_check(vq: VirtQueue, opaque: int) -> bool:
    """hw/virtio/virtio.c: notifications on; did the guest publish more since ``opaque``?"""
    virtio_queue_set_notification(vq, True)
    if opaque < 0 or virtio_device_disabled(vq.vdev) or not vq.avail:
        return False
    ring = _ring(vq)
    assert ring is not None
    ring.shadow_avail_idx = ring.mem.read_u16(ring.layout.avail + 2)
    return (opaque & U16) != ring.shadow_avail_idx


# --- notifications ------------------------------------------------------------------------------

def virtio_queue_notify(vdev: VirtIODevice, n: int) -> None:
    """hw/virtio/virtio.c: the guest kicked queue ``n``: run its ``handle_output`` (not
    without a ring, not when broken)."""
    vq = vdev.vq[n]
    if not vq.desc or vdev.broken:
        why = "the device is broken" if vdev.broken else "the queue has no ring (vring.desc 0)"
        vdev.emit("notify", f"virtio_queue_notify({vq.name}): {why}, ignored",
                  "virtio_queue_notify", vq=n, vq_name=vq.name, ignored=True)
        return
    name = getattr(vq.handle_output, "__name__", "handle_output")
    vdev.emit("notify", f"virtio_queue_notify({vq.name}) → {name}", "virtio_queue_notify", vq=n,
              vq_name=vq.name, handle_output=name, avail_idx=_avail_idx_peek(vq),
              last_avail_idx=vq.last_avail_idx)
    if vq.handle_output is not None:
        with _in(vdev, "virtio_queue_notify"), _in(vdev, name):
            vq.handle_output(vdev, vq)
        if vdev.start_on_kick:
            virtio_set_started(vdev, True)


def _avail_idx_peek(vq: VirtQueue) -> int | None:
    ring = _ring(vq)
    if ring is None:
        return None
    return int(ring.mem.read_u16(ring.layout.avail + 2))


def virtio_set_isr(vdev: VirtIODevice, value: int) -> None:
    """hw/virtio/virtio.c: ``isr |= value``."""
    vdev.isr |= value


def virtio_notify_vector(vdev: VirtIODevice, vector: int) -> None:
    """hw/virtio/virtio.c: the transport's ``notify`` — not while disabled or broken."""
    if virtio_device_disabled(vdev) or vdev.proxy is None:
        return
    vdev.proxy.bus_notify(vector)


def virtio_should_notify(vdev: VirtIODevice, vq: VirtQueue) -> bool:
    """``virtio_should_notify`` → ``virtio_split_should_notify``: NOTIFY_ON_EMPTY (when
    acked, an idle empty queue always interrupts), else the ring's answer (NO_INTERRUPT
    or ``vring_need_event(used_event, new, old)``)."""
    if vdev.has_feature(TransportFeature.NOTIFY_ON_EMPTY) and not vq.inuse and \
            virtio_queue_empty(vq):
        vdev.emit("should_notify", f"virtio_should_notify {vq.name}: NOTIFY_ON_EMPTY and the "
                  "queue is empty -> notify", "virtio_should_notify", vq=vq.queue_index,
                  vq_name=vq.name, notify=True, used_idx=vq.used_idx)
        return True
    ring = _ring(vq)
    if ring is None:
        return True  # vring_avail_flags() without caches reads 0: no NO_INTERRUPT
    return ring.should_notify()


def virtio_notify(vdev: VirtIODevice, vq: VirtQueue) -> bool:
    """hw/virtio/virtio.c: interrupt the guest for ``vq`` if it wants one; True if it did."""
    if not virtio_should_notify(vdev, vq):
        return False
    with _in(vdev, "virtio_notify"):
        virtio_irq(vq)
    return True


def virtio_irq(vq: VirtQueue) -> None:
    """hw/virtio/virtio.c: ISR bit 0, then the queue's vector (INTx without MSI-X)."""
    vdev = vq.vdev
    virtio_set_isr(vdev, 0x1)
    vdev.emit("irq", f"virtio_irq {vq.name}: isr |= 1 → {vdev.isr:#x}, notify vector "
              f"{vq.vector:#x}", "virtio_irq", vq=vq.queue_index, vq_name=vq.name, isr=vdev.isr,
              used_idx=vq.used_idx)
    virtio_notify_vector(vdev, vq.vector)


def virtio_notify_config(vdev: VirtIODevice) -> None:
    """hw/virtio/virtio.c: the config changed: ``isr |= 3`` and the config vector (only after
    DRIVER_OK)."""
    if not vdev.status & DeviceStatus.DRIVER_OK:
        vdev.emit("irq", "virtio_notify_config: not DRIVER_OK yet, no interrupt",
                  "virtio_notify_config", isr=vdev.isr, sent=False)
        return
    virtio_set_isr(vdev, 0x3)
    vdev.generation = (vdev.generation + 1) & 0xFF
    vdev.emit("irq", f"virtio_notify_config: isr |= 3 → {vdev.isr:#x}", "virtio_notify_config",
              isr=vdev.isr, sent=True, generation=vdev.generation)
    virtio_notify_vector(vdev, vdev.config_vector)


__all__ = [
    "FILE", "VIRTIO_COMMON_PROPERTIES", "BH_ROUNDS", "QEMUBH", "VirtIODevice", "VirtQueue", "aio_bh_poll",
    "iov_copy", "iov_from_buf", "iov_size", "iov_to_buf", "main_loop", "qemu_bh_cancel",
    "qemu_bh_schedule", "run_bottom_halves", "virtio_add_queue", "virtio_config_read", "virtio_config_write",
    "virtio_device_disabled", "virtio_device_started", "virtio_error", "virtio_get_queue",
    "virtio_has_feature", "virtio_init", "virtio_init_region_cache", "virtio_irq",
    "virtio_notify", "virtio_notify_config", "virtio_notify_vector", "virtio_queue_empty",
    "virtio_queue_enable_notification_and_check", "virtio_queue_get_addr",
    "virtio_queue_get_num", "virtio_queue_notify", "virtio_queue_ready",
    "virtio_queue_set_addr", "virtio_queue_set_notification", "virtio_queue_set_num",
    "virtio_queue_update_rings", "virtio_reset", "virtio_set_disabled", "virtio_set_features",
    "virtio_set_features_nocheck", "virtio_set_isr", "virtio_set_started", "virtio_set_status",
    "virtio_should_notify", "virtqueue_detach_element", "virtqueue_drop_all", "virtqueue_fill",
    "virtqueue_flush", "virtqueue_get_avail_bytes", "virtqueue_num_heads", "virtqueue_pop",
    "virtqueue_push", "virtqueue_unpop",
]
