"""What a network run's trace says about bytes: the one rule :func:`vbook.net_run.counts`
and :mod:`vbook.widgets.packet_flow` both count by.

* **copied**: frame bytes QEMU copies between guest memory and its own buffers in an
  event — the e1000's ``pci_dma_read`` / ``pci_dma_write`` of a packet buffer (not of a
  descriptor), virtio-net's copy of a received frame and its header into the guest's
  buffers (``virtio_net_receive_rcu``). virtio-net's TX copies nothing: the iovecs it
  gives the tap point into guest memory.
* **tap bytes**: what crossed the tap fd (``tap_receive_iov`` writes, ``tap_send``
  reads), which the host kernel copies.
"""

from __future__ import annotations

from typing import Any

#: the host events that move bytes across the tap fd
TAP_FNS = ("tap_receive_iov", "tap_send")


def copied_bytes(ev: Any) -> int:
    """Frame bytes QEMU copied in ``ev`` (a :class:`vbook.trace.Event`), 0 for most events."""
    d = ev.data
    fn = d.get("fn")
    if ev.actor == "qemu" and fn in ("pci_dma_read", "pci_dma_write") \
            and "buffer" in str(d.get("what", "")):
        return int(d.get("len", 0))
    if ev.actor == "device" and fn == "virtio_net_receive_rcu":
        return sum(int(n) for n in d.get("lens", ())) or int(d.get("len", 0))
    return 0


def tap_bytes(ev: Any) -> int:
    """Bytes ``ev`` moved across the tap fd (vnet header included), 0 for other events."""
    d = ev.data
    if ev.actor == "host" and d.get("fn") in TAP_FNS and isinstance(d.get("len"), int):
        return int(d["len"])
    return 0


__all__ = ["TAP_FNS", "copied_bytes", "tap_bytes"]
