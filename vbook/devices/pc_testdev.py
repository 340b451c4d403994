"""QEMU's ``pc-testdev``: the x86 test device of the KVM unit tests — ports and an MMIO window.

QEMU 9.2.4 hw/misc/pc-testdev.c. Of its regions the model has the three a
guest can use without an interrupt controller or RAM mapping:

* ``pc-testdev-ioport`` — 4 ports at 0xe0: a 32-bit latch; a write of *len*
  bytes at port 0xe0 + *k* replaces those bytes of ``ioport_data``, a read
  returns them (``test_ioport_write`` / ``test_ioport_read``).
* ``pc-testdev-ioport-byte`` — the same latch at 0xe8, but with
  ``impl.max_access_size = 1``: QEMU's memory core splits a 2- or 4-byte
  access into 1-byte calls (``access_with_adjusted_size``).
* ``pc-testdev-iomem`` — 64 KiB (``IOMEM_LEN``) at guest-physical
  0xff000000, backed by a buffer: a store there is a ``KVM_EXIT_MMIO``
  write the device keeps, a load gives the bytes back (``test_iomem_write``
  / ``test_iomem_read``). Its ops give no sizes, so QEMU takes 1-4 bytes
  per call: an 8-byte access arrives as two 4-byte calls.

Left out: ``pc-testdev-flush-page`` (0xe4, mprotects a page of guest RAM)
and ``pc-testdev-irq-line`` (0x2000, raises ISA IRQ lines) — this machine has
neither RAM in the model nor an interrupt controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vbook.models.qemu_memory import AccessConstraints, DeviceState, MemoryRegionOps

#: hw/misc/pc-testdev.c ``testdev_realizefn``: where the regions are placed
IOPORT = 0xE0
IOPORT_BYTE = 0xE8
IOMEM = 0xFF000000
#: hw/misc/pc-testdev.c: ``IOMEM_LEN``
IOMEM_LEN = 0x10000


@dataclass(eq=False)
class PCTestdev(DeviceState):
    """``struct PCTestdev`` (hw/misc/pc-testdev.c): the port latch and the MMIO buffer."""

    type_name = "pc-testdev"

    ioport_data: int = 0
    iomem_buf: bytearray = field(default_factory=lambda: bytearray(IOMEM_LEN), repr=False)

    def __repr__(self) -> str:
        used = sum(1 for b in self.iomem_buf if b)
        return f"PCTestdev(ioport_data={self.ioport_data:#010x}, iomem: {used} non-zero bytes)"


def test_ioport_write(dev: PCTestdev, addr: int, data: int, len: int) -> None:
    """hw/misc/pc-testdev.c: replace ``len`` bytes of the latch, starting at byte ``addr & 3``."""
    bits = len * 8
    start_bit = (addr & 3) * 8
    mask = ((0xFFFFFFFF >> (32 - bits)) << start_bit) & 0xFFFFFFFF
    dev.ioport_data &= ~mask & 0xFFFFFFFF
    dev.ioport_data |= (data << start_bit) & 0xFFFFFFFF
    dev.note(label=f"test_ioport_write {data:#x} (len {len}) → ioport_data "
                   f"{dev.ioport_data:#010x}")


def test_ioport_read(dev: PCTestdev, addr: int, len: int) -> int:
    """hw/misc/pc-testdev.c: ``len`` bytes of the latch, starting at byte ``addr & 3``."""
    bits = len * 8
    start_bit = (addr & 3) * 8
    mask = ((0xFFFFFFFF >> (32 - bits)) << start_bit) & 0xFFFFFFFF
    ret = (dev.ioport_data & mask) >> start_bit
    dev.note(label=f"test_ioport_read = {ret:#x} (len {len})")
    return ret


#: hw/misc/pc-testdev.c ``test_ioport_ops``: no size limits (1-4 bytes, QEMU's defaults)
test_ioport_ops = MemoryRegionOps(read=test_ioport_read, write=test_ioport_write,
                                  file="hw/misc/pc-testdev.c")
#: hw/misc/pc-testdev.c ``test_ioport_byte_ops``: valid 1-4 bytes, implemented 1 at a time
test_ioport_byte_ops = MemoryRegionOps(
    read=test_ioport_read, write=test_ioport_write,
    valid=AccessConstraints(min_access_size=1, max_access_size=4),
    impl=AccessConstraints(min_access_size=1, max_access_size=1),
    file="hw/misc/pc-testdev.c",
)


def test_iomem_read(dev: PCTestdev, addr: int, len: int) -> int:
    """hw/misc/pc-testdev.c: ``len`` bytes of the buffer at ``addr`` (``memcpy`` into a u64)."""
    ret = int.from_bytes(dev.iomem_buf[addr:addr + len], "little")
    dev.note(label=f"test_iomem_read [{addr:#x}] = {ret:#x} (len {len})")
    return ret


def test_iomem_write(dev: PCTestdev, addr: int, val: int, len: int) -> None:
    """hw/misc/pc-testdev.c: store ``len`` bytes of ``val`` in the buffer at ``addr``."""
    dev.iomem_buf[addr:addr + len] = val.to_bytes(len, "little")
    dev.note(label=f"test_iomem_write [{addr:#x}] ← {val:#x} (len {len})")


#: hw/misc/pc-testdev.c ``test_iomem_ops``: no size limits given
test_iomem_ops = MemoryRegionOps(read=test_iomem_read, write=test_iomem_write,
                                 file="hw/misc/pc-testdev.c")

__all__ = ["IOMEM", "IOMEM_LEN", "IOPORT", "IOPORT_BYTE", "PCTestdev", "test_iomem_ops",
           "test_iomem_read", "test_iomem_write", "test_ioport_byte_ops", "test_ioport_ops",
           "test_ioport_read", "test_ioport_write"]
