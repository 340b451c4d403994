"""The virtio transport's constants under the name DESIGN.md gives them (``vbook.models.virtio``).

They live in :mod:`vbook.models.virtio_consts` (linux/virtio_ids.h, virtio_config.h,
virtio_pci.h, with their sources and a C oracle); this module re-exports the ones the
name table promises: ``PCI_VENDOR_ID``, ``DeviceStatus`` (the status bits) and
``LegacyReg`` (the legacy BAR0 offsets).
"""

from vbook.models.virtio_consts import PCI_VENDOR_ID, DeviceStatus, LegacyReg

__all__ = ["DeviceStatus", "LegacyReg", "PCI_VENDOR_ID"]
