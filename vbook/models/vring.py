"""The virtio split virtqueue in guest memory: layout, driver side, device side, event index.

One idea per file, re-exported here so a reader needs one import::

    from vbook.memory import GuestMemory
    from vbook.models.vring import Layout, Driver, Device

    mem = GuestMemory(0x10000)
    lay = Layout(256, base=0x0)                 # Linux vring_init(vr, 256, 0, 4096)
    drv, dev = Driver(mem, lay), Device(mem, lay)
    head = drv.add(out=[(0x8000, 64)], in_=[(0x9000, 1500)])   # virtqueue_add_split
    drv.kick()                                  # virtqueue_kick_prepare_split + notify
    chain = dev.pop()                           # QEMU virtqueue_pop
    dev.push(chain, 1500)                       # virtqueue_fill + virtqueue_flush
    dev.notify()                                # virtio_should_notify -> irq
    drv.get_used()                              # virtqueue_get_buf_ctx_split -> (head, 1500)

* :mod:`vbook.models.vring_layout` — the structures of include/uapi/linux/virtio_ring.h
  (uapi 6.1.187): constants, :class:`Layout` (legacy ``vring_init``),
  :func:`vring_size`, :func:`need_event` (``vring_need_event``), :class:`Desc`;
* :mod:`vbook.models.vring_driver` — :class:`Driver`, Linux 6.1 drivers/virtio/virtio_ring.c;
* :mod:`vbook.models.vring_device` — :class:`Device` and :class:`Chain`, QEMU 9.2.4
  hw/virtio/virtio.c; a malformed ring raises :class:`vbook.errors.VirtioError`
  (a :class:`vbook.errors.VringError`) with QEMU's ``virtio_error`` message.

Both sides record :class:`vbook.trace.Event` s into an optional
:class:`vbook.trace.TraceRecorder` (actor "guest" for the driver, "qemu" for
the device), with the indices and the descriptors touched.
"""

from __future__ import annotations

from vbook.errors import BadRing, VirtioError, VringBroken, VringError, VringFull, VringUsageError
from vbook.models.vring_device import VIRTQUEUE_MAX_SIZE, Chain, Device
from vbook.models.vring_driver import Driver, IndirectPool
from vbook.models.vring_layout import (
    SIZEOF_VRING_AVAIL,
    SIZEOF_VRING_DESC,
    SIZEOF_VRING_USED,
    SIZEOF_VRING_USED_ELEM,
    VIRTIO_PCI_VRING_ALIGN,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    VRING_AVAIL_ALIGN_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_AVAIL_OFFSETS,
    VRING_DESC_ALIGN_SIZE,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_DESC_OFFSETS,
    VRING_MAX_NUM,
    VRING_USED_ALIGN_SIZE,
    VRING_USED_ELEM_OFFSETS,
    VRING_USED_F_NO_NOTIFY,
    VRING_USED_OFFSETS,
    AvailFlag,
    Desc,
    DescFlag,
    Layout,
    RingAlign,
    RingFeature,
    TransportFeature,
    UsedFlag,
    need_event,
    read_desc,
    vring_size,
    write_desc,
)

__all__ = [
    "AvailFlag", "BadRing", "Chain", "Desc", "DescFlag", "Device", "Driver", "IndirectPool", "Layout",
    "RingAlign", "RingFeature", "TransportFeature", "UsedFlag", "VirtioError", "VringBroken",
    "VringError", "VringFull", "VringUsageError", "need_event", "read_desc", "vring_size", "write_desc",
    "SIZEOF_VRING_AVAIL", "SIZEOF_VRING_DESC", "SIZEOF_VRING_USED", "SIZEOF_VRING_USED_ELEM",
    "VIRTIO_PCI_VRING_ALIGN", "VIRTIO_RING_F_EVENT_IDX", "VIRTIO_RING_F_INDIRECT_DESC",
    "VIRTQUEUE_MAX_SIZE", "VRING_AVAIL_ALIGN_SIZE", "VRING_AVAIL_F_NO_INTERRUPT", "VRING_AVAIL_OFFSETS",
    "VRING_DESC_ALIGN_SIZE", "VRING_DESC_F_INDIRECT", "VRING_DESC_F_NEXT", "VRING_DESC_F_WRITE",
    "VRING_DESC_OFFSETS", "VRING_MAX_NUM", "VRING_USED_ALIGN_SIZE", "VRING_USED_ELEM_OFFSETS",
    "VRING_USED_F_NO_NOTIFY", "VRING_USED_OFFSETS",
]
