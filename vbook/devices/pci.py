"""The PCI bus as QEMU emulates it: config mechanism #1, config space, BARs, INTx, DMA.

QEMU 9.2.4 hw/pci/pci_host.c (the 0xCF8/0xCFC ports), hw/pci/pci.c (config
space, ``pci_register_bar``, ``pci_update_mappings``, ``pci_set_irq``),
hw/pci-host/i440fx.c (the host bridge of ``-machine pc``), include/hw/pci/pci.h
and include/hw/pci/pci_device.h (the state), and include/sysemu/dma.h
(``pci_dma_read`` / ``pci_dma_write``). Register offsets and bits are Linux's
include/uapi/linux/pci_regs.h names (pinned by a C oracle in tests/test_pci.py).

**How a guest reaches config space** (``pci_host_conf_le_ops`` /
``pci_host_data_le_ops`` on ports 0xCF8 and 0xCFC of the I/O space). It
writes a 32-bit CONFIG_ADDRESS to 0xCF8 — bit 31 enable, bus in 23:16, device
in 15:11, function in 10:8, register in 7:2 — which ``pci_host_config_write``
stores only for a 4-byte write at offset 0 (``if (addr != 0 || len != 4)
return;``); then a 1-, 2- or 4-byte access to 0xCFC + *k* reaches register
``config_reg | k`` of that function (``pci_host_data_read`` → ``pci_data_read``
→ the device's ``config_read``, by default ``pci_default_read_config``). With
the enable bit clear the data port reads all ones; a bus/device/function with
nothing there reads all ones too (``pci_data_read``: ``return ~0x0``), which is
how a probe sees vendor 0xFFFF. A read of 0xCF8 gives ``config_reg`` back (QEMU
returns the whole register to any size and offset, cut to the access size).

**Config space** (:class:`PCIDevice`): 256 bytes, ``config``, with ``wmask``
(bits the guest may write), ``w1cmask`` (bits a written 1 clears) and
``cmask``; ``do_pci_register_device`` fills vendor/device/revision/class and
the subsystem IDs (QEMU's default subsystem is 1af4:1100 when a device class
names none), ``pci_init_wmask`` makes COMMAND's IO/MEMORY/MASTER/INTX_DISABLE/
SERR, CACHE_LINE_SIZE and INTERRUPT_LINE writable and everything else in the
header read-only. ``pci_default_write_config`` applies the masks byte by byte
and, when a BAR or the COMMAND register changed, calls ``pci_update_mappings``.

**BARs** (``pci_register_bar``): a device hands over a
:class:`~vbook.models.qemu_memory.MemoryRegion` of power-of-two size and a
type (I/O, or 32-/64-bit memory); the BAR register's ``wmask`` is
``~(size - 1)``, so writing all ones and reading back gives the size mask with
the type bits (BAR sizing). ``pci_update_mappings`` maps the region into the
bus's I/O or memory space at the BAR's address when the COMMAND bit for that
space is set, and unmaps it when the address or the bit changes —
``pci_bar_address`` refuses 0, a region that wraps, or (32-bit BARs) one that
ends at or past 4 GiB, exactly as QEMU does (that is why a BAR being sized
with decoding on is not mapped at 0xFFFE0000).

**INTx** (``pci_set_irq``): the device's INTERRUPT_PIN (1 = INTA) is its
line; ``pci_irq_handler`` keeps its level in ``irq_state``, mirrors it in
STATUS.INTERRUPT, honours COMMAND.INTX_DISABLE, and the bus maps the pin to a
PIRQ (``pc_pci_slot_get_pirq``: ``(pin + slot - 1) & 3``) and calls its
``set_irq`` with the OR of every device on that PIRQ (``irq_count``). On QEMU's
pc the PIIX3 routes the PIRQ to an ISA IRQ of the PIC/IOAPIC; this board has
neither, so :class:`~vbook.devices.machine.Machine` records the level (a driver
polls its device's interrupt cause register).

**DMA** (``pci_dma_read`` / ``pci_dma_write``): through the device's
bus-master address space, which QEMU enables only while COMMAND.MASTER is set
(``bus_master_enable_region``). Guest RAM is the vCPU's memory slot
(``bus.ram()``, a :class:`~vbook.memory.GuestMemory`); any other address goes
through the memory address space like QEMU's ``address_space_rw`` — a hole
reads as zeros and drops writes (``MEMTX_DECODE_ERROR``, which devices ignore),
and an access to the device's own MMIO is refused as QEMU's re-entrancy guard
does ("Blocked re-entrant IO on MemoryRegion"). A bad address from the guest
is therefore never an error of the model.

**The bus API for a device model** (an e1000 or virtio-net-pci):

* subclass :class:`PCIDevice` (a dataclass), set the class attributes
  ``vendor_id``, ``device_id``, ``revision``, ``class_id`` (and
  ``subsystem_vendor_id`` / ``subsystem_id``), ``type_name`` and ``desc``;
* in ``realize()`` (QEMU's ``PCIDeviceClass.realize``) set
  ``config[PCI_INTERRUPT_PIN]``, make MemoryRegions with
  :func:`~vbook.models.qemu_memory.memory_region_init_io` and call
  :func:`pci_register_bar`; override ``config_write`` (calling
  :func:`pci_default_write_config`) if config writes have side effects, and
  ``reset()`` for the device's own reset;
* plug it in with ``machine.add_pci_device(dev)`` (or :meth:`PCIBus.register`
  on a bare bus): that allocates a devfn, fills config space, realizes and
  resets it;
* at run time: :func:`pci_set_irq` ``(dev, level)``, :func:`pci_dma_read`
  ``(dev, addr, n) -> bytes``, :func:`pci_dma_write` ``(dev, addr, data)``,
  and :meth:`PCIDevice.emit` for trace events (``dev.ctx`` is the machine's
  :class:`~vbook.models.qemu_memory.RunContext`).

What the model leaves out: PCI-to-PCI bridges and other buses (bus 0 only),
PCI Express extended config space, capabilities (MSI/MSI-X), option ROMs
(BAR 6), hot-plug and power states, 64-bit BARs above the 64-bit PCI hole,
the i440FX's PAM/SMRAM registers (stored, not acted on), the PIIX3 and its
reset-control register at 0xCF9 (QEMU overlays it on the config-address port
for 1-byte accesses), and overlapping regions: the model's memory API refuses
overlaps, so a BAR programmed over another region or over guest RAM is left
unmapped, with a trace event saying so (QEMU would map it on top, priority 1).
QEMU's memory BARs live in a "pci" container under "system" at priority -1;
here they are placed directly in "system" (I/O BARs are in "io" in both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar

from vbook.errors import VbookError
from vbook.models.qemu_memory import (
    AddressSpace,
    DeviceState,
    MemoryRegion,
    MemoryRegionOps,
    MemTxResult,
    RunContext,
    address_space_rw,
    flatview_translate,
    io_mem_unassigned,
    memory_region_add_subregion,
)

if TYPE_CHECKING:
    from vbook.memory import GuestMemory

FILE = "hw/pci/pci.c"
HOST_FILE = "hw/pci/pci_host.c"
DMA_FILE = "include/sysemu/dma.h"


class Config(IntEnum):
    """Type-0 header register offsets: ``PCI_<name>`` — include/uapi/linux/pci_regs.h (Linux 6.1)."""

    VENDOR_ID = 0x00           # 16 bits
    DEVICE_ID = 0x02           # 16 bits
    COMMAND = 0x04             # 16 bits
    STATUS = 0x06              # 16 bits
    REVISION_ID = 0x08
    CLASS_PROG = 0x09
    CLASS_DEVICE = 0x0A        # 16 bits: base class << 8 | subclass
    CACHE_LINE_SIZE = 0x0C
    LATENCY_TIMER = 0x0D
    HEADER_TYPE = 0x0E
    BIST = 0x0F
    BASE_ADDRESS_0 = 0x10
    BASE_ADDRESS_1 = 0x14
    BASE_ADDRESS_2 = 0x18
    BASE_ADDRESS_3 = 0x1C
    BASE_ADDRESS_4 = 0x20
    BASE_ADDRESS_5 = 0x24
    CARDBUS_CIS = 0x28
    SUBSYSTEM_VENDOR_ID = 0x2C
    SUBSYSTEM_ID = 0x2E
    ROM_ADDRESS = 0x30
    CAPABILITY_LIST = 0x34
    ROM_ADDRESS1 = 0x38        # the ROM BAR of a type-1 (bridge) header
    INTERRUPT_LINE = 0x3C
    INTERRUPT_PIN = 0x3D
    MIN_GNT = 0x3E
    MAX_LAT = 0x3F


class Command(IntEnum):
    """``PCI_COMMAND_*`` — include/uapi/linux/pci_regs.h (Linux 6.1)."""

    IO = 0x1            # respond in I/O space
    MEMORY = 0x2        # respond in memory space
    MASTER = 0x4        # bus mastering (DMA)
    SPECIAL = 0x8
    INVALIDATE = 0x10
    VGA_PALETTE = 0x20
    PARITY = 0x40
    WAIT = 0x80
    SERR = 0x100
    FAST_BACK = 0x200
    INTX_DISABLE = 0x400


class Status(IntEnum):
    """``PCI_STATUS_*`` — include/uapi/linux/pci_regs.h (Linux 6.1)."""

    IMM_READY = 0x01
    INTERRUPT = 0x08           # an INTx is asserted
    CAP_LIST = 0x10
    M66MHZ = 0x20              # PCI_STATUS_66MHZ (a name may not start with a digit)
    UDF = 0x40
    FAST_BACK = 0x80
    PARITY = 0x100
    SIG_TARGET_ABORT = 0x800
    REC_TARGET_ABORT = 0x1000
    REC_MASTER_ABORT = 0x2000
    SIG_SYSTEM_ERROR = 0x4000
    DETECTED_PARITY = 0x8000


class BaseAddress(IntEnum):
    """BAR type bits: ``PCI_BASE_ADDRESS_*`` — include/uapi/linux/pci_regs.h (Linux 6.1).

    SPACE_MEMORY and MEM_TYPE_32 are 0: a 32-bit memory BAR has no type bits set.
    """

    SPACE_IO = 0x01
    SPACE_MEMORY = 0x00
    MEM_TYPE_32 = 0x00
    MEM_TYPE_1M = 0x02
    MEM_TYPE_64 = 0x04
    MEM_PREFETCH = 0x08


class HeaderType(IntEnum):
    """``PCI_HEADER_TYPE_*`` — include/uapi/linux/pci_regs.h (Linux 6.1)."""

    NORMAL = 0
    BRIDGE = 1
    CARDBUS = 2


#: pci_regs.h: ``PCI_BASE_ADDRESS_MEM_MASK`` / ``_IO_MASK``, cut to a 32-bit BAR
PCI_BASE_ADDRESS_MEM_MASK = 0xFFFFFFF0
PCI_BASE_ADDRESS_IO_MASK = 0xFFFFFFFC
#: pci_regs.h
PCI_ROM_ADDRESS_ENABLE = 0x01
PCI_CFG_SPACE_SIZE = 256
PCI_STD_HEADER_SIZEOF = 64
PCI_STD_NUM_BARS = 6
#: include/hw/pci/pci.h (QEMU 9.2.4): the multi-function bit of HEADER_TYPE
PCI_HEADER_TYPE_MULTI_FUNCTION = 0x80
#: include/hw/pci/pci.h: ``PCI_BAR_UNMAPPED`` is ``~(pcibus_t)0``
PCI_BAR_UNMAPPED = 2**64 - 1
PCI_ROM_SLOT = 6
PCI_NUM_REGIONS = 7
PCI_NUM_PINS = 4
PCI_DEVFN_MAX = 256
PCI_SLOT_MAX = 32
PCI_FUNC_MAX = 8
#: include/hw/pci/pci.h: QEMU's default subsystem (``pci_set_default_subsystem_id``)
PCI_SUBVENDOR_ID_REDHAT_QUMRANET = 0x1AF4
PCI_SUBDEVICE_ID_QEMU = 0x1100
#: include/hw/pci/pci_ids.h
PCI_VENDOR_ID_INTEL = 0x8086
PCI_DEVICE_ID_INTEL_82441 = 0x1237      # the i440FX host bridge (PMC)
PCI_CLASS_BRIDGE_HOST = 0x0600
PCI_CLASS_NETWORK_ETHERNET = 0x0200
#: the 32-bit CONFIG_ADDRESS enable bit
CONFIG_ADDRESS_ENABLE = 1 << 31
#: hw/pci-host/i440fx.c: where ``i440fx_pcihost_realize`` puts the two port regions
PCI_CONFIG_ADDRESS_PORT = 0xCF8
PCI_CONFIG_DATA_PORT = 0xCFC
UINT32_MAX = 0xFFFFFFFF
HWADDR_MAX = 2**64 - 1

#: hw/pci/pci.c ``pci_class_descriptions`` (the classes this board has)
CLASS_DESC = {PCI_CLASS_NETWORK_ETHERNET: "Ethernet controller",
              PCI_CLASS_BRIDGE_HOST: "Host bridge"}


def PCI_DEVFN(slot: int, func: int) -> int:  # noqa: N802 (QEMU's macro names)
    return ((slot & 0x1F) << 3) | (func & 0x07)


def PCI_SLOT(devfn: int) -> int:  # noqa: N802
    return (devfn >> 3) & 0x1F


def PCI_FUNC(devfn: int) -> int:  # noqa: N802
    return devfn & 0x07


def config_address(bus: int, slot: int, func: int, reg: int, enable: bool = True) -> int:
    """The CONFIG_ADDRESS value a guest writes to 0xCF8 for ``bus:slot.func`` register ``reg``."""
    return ((CONFIG_ADDRESS_ENABLE if enable else 0) | (bus & 0xFF) << 16 | (slot & 0x1F) << 11
            | (func & 7) << 8 | (reg & 0xFC))


def decode_config_address(addr: int) -> tuple[bool, int, int, int, int]:
    """(enable, bus, slot, func, register) of a CONFIG_ADDRESS value."""
    return bool(addr >> 31 & 1), addr >> 16 & 0xFF, addr >> 11 & 0x1F, addr >> 8 & 7, addr & 0xFF


def reg_name(offset: int) -> str:
    """The header register at ``offset`` (``VENDOR_ID``, ``BASE_ADDRESS_0+2`` …)."""
    best = None
    for c in Config:
        if c.value <= offset and (best is None or c.value > best.value):
            best = c
    if best is None or offset >= PCI_STD_HEADER_SIZEOF:
        return f"{offset:#04x}"
    return best.name if best.value == offset else f"{best.name}+{offset - best.value}"


# --- config-space byte helpers (include/hw/pci/pci.h pci_get_word …) ------------------------

def pci_get_word(config: bytearray, off: int) -> int:
    return config[off] | config[off + 1] << 8


def pci_set_word(config: bytearray, off: int, val: int) -> None:
    config[off:off + 2] = (val & 0xFFFF).to_bytes(2, "little")


def pci_get_long(config: bytearray, off: int) -> int:
    return int.from_bytes(config[off:off + 4], "little")


def pci_set_long(config: bytearray, off: int, val: int) -> None:
    config[off:off + 4] = (val & UINT32_MAX).to_bytes(4, "little")


def pci_get_quad(config: bytearray, off: int) -> int:
    return int.from_bytes(config[off:off + 8], "little")


def pci_set_quad(config: bytearray, off: int, val: int) -> None:
    config[off:off + 8] = (val & (2**64 - 1)).to_bytes(8, "little")


def ranges_overlap(first1: int, len1: int, first2: int, len2: int) -> bool:
    """include/qemu/range.h"""
    return not (first1 + len1 <= first2 or first2 + len2 <= first1)


def range_covers_byte(offset: int, length: int, byte: int) -> bool:
    """include/qemu/range.h"""
    return offset <= byte < offset + length


# --- the device --------------------------------------------------------------------------------

@dataclass(eq=False)
class PCIIORegion:
    """``PCIIORegion`` (include/hw/pci/pci_device.h): one registered BAR.

    ``addr`` is where QEMU considers it mapped (``PCI_BAR_UNMAPPED`` when not);
    ``mapped`` says whether the model could actually place ``memory`` in the
    address space there (see the module docstring on overlaps).
    """

    addr: int = PCI_BAR_UNMAPPED
    size: int = 0
    type: int = 0
    memory: MemoryRegion | None = None
    address_space: MemoryRegion | None = None
    mapped: bool = False

    def __repr__(self) -> str:
        where = "unmapped" if self.addr == PCI_BAR_UNMAPPED else f"at {self.addr:#x}"
        return f"PCIIORegion({self.memory.name if self.memory else None!r}, {where})"


def _cfg() -> bytearray:
    return bytearray(PCI_CFG_SPACE_SIZE)


@dataclass(eq=False)
class PCIDevice(DeviceState):
    """``struct PCIDevice``; the class attributes are its ``PCIDeviceClass``.

    A device model subclasses it (a dataclass), sets the class attributes and
    overrides :meth:`realize` (and, when needed, :meth:`config_write`,
    :meth:`config_read`, :meth:`reset`). ``bus`` and ``devfn`` are set when it
    is registered on a :class:`PCIBus`.
    """

    type_name: ClassVar[str] = "pci-device"
    #: ``DeviceClass.desc``
    desc: ClassVar[str] = ""
    vendor_id: ClassVar[int] = 0xFFFF
    device_id: ClassVar[int] = 0xFFFF
    revision: ClassVar[int] = 0
    class_id: ClassVar[int] = 0
    subsystem_vendor_id: ClassVar[int] = 0
    subsystem_id: ClassVar[int] = 0

    devfn: int = -1
    bus: PCIBus | None = field(default=None, repr=False)
    config: bytearray = field(default_factory=_cfg, repr=False)
    wmask: bytearray = field(default_factory=_cfg, repr=False)
    w1cmask: bytearray = field(default_factory=_cfg, repr=False)
    cmask: bytearray = field(default_factory=_cfg, repr=False)
    io_regions: list[PCIIORegion] = field(
        default_factory=lambda: [PCIIORegion() for _ in range(PCI_NUM_REGIONS)], repr=False)
    irq_state: int = 0

    @property
    def name(self) -> str:
        return self.type_name

    @property
    def ctx(self) -> RunContext:
        """Where this device's events go: its bus's context (a silent one before it is plugged)."""
        return self.bus.ctx if self.bus is not None else _SILENT

    @property
    def addr(self) -> str:
        """``bus:slot.func`` as lspci and QEMU's ``info pci`` number it."""
        return f"00:{PCI_SLOT(self.devfn):02x}.{PCI_FUNC(self.devfn)}"

    def emit(self, actor: str, kind: str, label: str, fn: str, file: str, **data: Any) -> None:
        """Record an event for this device (tagged with its name and address)."""
        self.ctx.emit(actor, kind, label, fn=fn, file=file, pci=self.addr, dev=self.name, **data)

    # PCIDeviceClass hooks -------------------------------------------------------------------
    def realize(self) -> None:
        """``PCIDeviceClass.realize``: register BARs, set the interrupt pin (nothing by default)."""

    def config_read(self, address: int, length: int) -> int:
        """``PCIDevice.config_read`` (default ``pci_default_read_config``)."""
        return pci_default_read_config(self, address, length)

    def config_write(self, address: int, val: int, length: int) -> None:
        """``PCIDevice.config_write`` (default ``pci_default_write_config``)."""
        pci_default_write_config(self, address, val, length)

    def reset(self) -> None:
        """The device's own reset (``ResettableClass`` hold phase); nothing by default."""


_SILENT = RunContext()


@contextmanager
def in_function(ctx: RunContext, fn: str) -> Iterator[None]:
    """Push ``fn`` on the recorded QEMU call stack while a model function runs
    (not twice in a row: a function that is already on top stays once)."""
    if ctx.stack[-1:] == [fn]:
        yield
        return
    ctx.stack.append(fn)
    try:
        yield
    finally:
        ctx.stack.pop()


def pci_bar(d: PCIDevice, reg: int) -> int:
    """hw/pci/pci.c: the config offset of BAR ``reg`` (the ROM slot depends on the header type)."""
    if reg != PCI_ROM_SLOT:
        return Config.BASE_ADDRESS_0 + reg * 4
    typ = d.config[Config.HEADER_TYPE] & ~PCI_HEADER_TYPE_MULTI_FUNCTION
    return Config.ROM_ADDRESS1 if typ == HeaderType.BRIDGE else Config.ROM_ADDRESS


def pci_intx(d: PCIDevice) -> int:
    """include/hw/pci/pci_device.h: the INTx pin, 0 = INTA (INTERRUPT_PIN - 1)."""
    return d.config[Config.INTERRUPT_PIN] - 1


def pci_register_bar(pci_dev: PCIDevice, region_num: int, type: int, memory: MemoryRegion) -> None:
    """hw/pci/pci.c: make ``memory`` BAR ``region_num`` of ``pci_dev``; ``type`` is its low bits.

    The BAR register starts as ``type``; its ``wmask`` is ``~(size - 1)``, so
    a guest that writes all ones reads back the size mask (BAR sizing).
    """
    size = memory.size
    if not 0 <= region_num < PCI_NUM_REGIONS:
        raise VbookError(f"{pci_dev.name}: BAR {region_num} does not exist (0-{PCI_NUM_REGIONS - 1})")
    if size & (size - 1) or size == 0:
        raise VbookError(f"{pci_dev.name}: BAR {region_num} size {size:#x} is not a power of 2")
    if pci_dev.bus is None:
        raise VbookError(f"{pci_dev.name}: pci_register_bar before the device is on a bus")
    r = pci_dev.io_regions[region_num]
    r.addr, r.size, r.type, r.memory, r.mapped = PCI_BAR_UNMAPPED, size, type, memory, False
    r.address_space = (pci_dev.bus.address_space_io if type & BaseAddress.SPACE_IO
                       else pci_dev.bus.address_space_mem)
    wmask = ~(size - 1)
    if region_num == PCI_ROM_SLOT:
        wmask |= PCI_ROM_ADDRESS_ENABLE
    addr = pci_bar(pci_dev, region_num)
    pci_set_long(pci_dev.config, addr, type)
    if not type & BaseAddress.SPACE_IO and type & BaseAddress.MEM_TYPE_64:
        pci_set_quad(pci_dev.wmask, addr, wmask)
        pci_set_quad(pci_dev.cmask, addr, 2**64 - 1)
    else:
        pci_set_long(pci_dev.wmask, addr, wmask & UINT32_MAX)
        pci_set_long(pci_dev.cmask, addr, UINT32_MAX)


def pci_config_get_bar_addr(d: PCIDevice, reg: int, type: int, size: int) -> int:
    """hw/pci/pci.c: the address in BAR ``reg`` (64-bit BARs span two registers)."""
    bar = pci_bar(d, reg)
    new_addr = (pci_get_quad(d.config, bar) if type & BaseAddress.MEM_TYPE_64
                else pci_get_long(d.config, bar))
    if reg != PCI_ROM_SLOT:
        new_addr &= ~(size - 1)
    return new_addr


def pci_bar_address(d: PCIDevice, reg: int, type: int, size: int) -> int:
    """hw/pci/pci.c: where BAR ``reg`` should be mapped now, or ``PCI_BAR_UNMAPPED``.

    I/O BARs need COMMAND.IO, memory BARs COMMAND.MEMORY; an address of 0 (the
    pc machine does not allow it), a range that wraps, and a 32-bit BAR that
    reaches 4 GiB all count as unmapped.
    """
    cmd = pci_get_word(d.config, Config.COMMAND)
    if type & BaseAddress.SPACE_IO:
        if not cmd & Command.IO:
            return PCI_BAR_UNMAPPED
        new_addr = pci_config_get_bar_addr(d, reg, type, size)
        last_addr = new_addr + size - 1
        if last_addr <= new_addr or last_addr >= UINT32_MAX or new_addr == 0:
            return PCI_BAR_UNMAPPED
        return new_addr
    if not cmd & Command.MEMORY:
        return PCI_BAR_UNMAPPED
    new_addr = pci_config_get_bar_addr(d, reg, type, size)
    if reg == PCI_ROM_SLOT and not new_addr & PCI_ROM_ADDRESS_ENABLE:
        return PCI_BAR_UNMAPPED
    new_addr &= ~(size - 1)
    last_addr = new_addr + size - 1
    if last_addr <= new_addr or last_addr == PCI_BAR_UNMAPPED or new_addr == 0:
        return PCI_BAR_UNMAPPED
    if not type & BaseAddress.MEM_TYPE_64 and last_addr >= UINT32_MAX:
        return PCI_BAR_UNMAPPED
    if last_addr >= HWADDR_MAX:
        return PCI_BAR_UNMAPPED
    return new_addr


def memory_region_del_subregion(mr: MemoryRegion, subregion: MemoryRegion) -> None:
    """system/memory.c: take ``subregion`` out of ``mr`` (the inverse of ``_add_subregion``)."""
    mr.subregions.remove(subregion)
    subregion.container = None
    subregion.addr = 0


def _space(r: PCIIORegion) -> str:
    return "io" if r.type & BaseAddress.SPACE_IO else "memory"


def pci_update_mappings(d: PCIDevice) -> None:
    """hw/pci/pci.c: (un)map every BAR whose address or decode enable changed."""
    for i, r in enumerate(d.io_regions):
        if not r.size:
            continue
        new_addr = pci_bar_address(d, i, r.type, r.size)
        if new_addr == r.addr:
            continue
        assert r.memory is not None and r.address_space is not None
        if r.addr != PCI_BAR_UNMAPPED:
            if r.mapped:
                memory_region_del_subregion(r.address_space, r.memory)
            r.mapped = False
            d.emit("qemu", "pci", f"pci_update_mappings_del {d.name} {d.addr} BAR{i}: "
                   f"{r.memory.name!r} off {_space(r)} {r.addr:#x}", "pci_update_mappings", FILE,
                   bar=i, addr=r.addr, size=r.size, space=_space(r), region=r.memory.name,
                   mapped=False)
        r.addr = new_addr
        if r.addr == PCI_BAR_UNMAPPED:
            continue
        why = _cannot_map(d, r)
        if not why:
            try:
                memory_region_add_subregion(r.address_space, r.addr, r.memory)
            except VbookError as e:
                why = str(e)
        r.mapped = not why
        label = (f"pci_update_mappings_add {d.name} {d.addr} BAR{i}: {r.memory.name!r} at "
                 f"{_space(r)} {r.addr:#x}-{r.addr + r.size - 1:#x}")
        if why:
            label += f" — not placed: {why}"
        d.emit("qemu", "pci", label, "pci_update_mappings", FILE, bar=i, addr=r.addr,
               size=r.size, space=_space(r), region=r.memory.name, mapped=r.mapped,
               **({"why": why} if why else {}))


def _cannot_map(d: PCIDevice, r: PCIIORegion) -> str:
    """Why the model cannot place a BAR where QEMU would ("" if it can)."""
    assert r.address_space is not None
    if r.addr + r.size > r.address_space.size:
        return (f"past the end of {r.address_space.name!r} (size {r.address_space.size:#x}): "
                "QEMU maps it there, where no access can reach it")
    if not r.type & BaseAddress.SPACE_IO and d.bus is not None:
        ram = d.bus.ram()
        if ram is not None and r.addr < ram.size:
            return (f"it overlaps guest RAM [0, {ram.size:#x}): QEMU would map it on top "
                    "(priority 1); here KVM's memory slot keeps answering there")
    for other in r.address_space.subregions:
        if r.addr < other.end and other.addr < r.addr + r.size:
            return (f"it overlaps {other.name!r} at {other.addr:#x}-{other.end - 1:#x}: QEMU "
                    "would map it on top (priority 1); the model's memory API has no overlaps")
    return ""


def pci_irq_disabled(d: PCIDevice) -> bool:
    return bool(pci_get_word(d.config, Config.COMMAND) & Command.INTX_DISABLE)


def pci_update_irq_disabled(d: PCIDevice, was_irq_disabled: bool) -> None:
    """hw/pci/pci.c: after COMMAND.INTX_DISABLE changed, withdraw or re-assert the pins."""
    disabled = pci_irq_disabled(d)
    if disabled == was_irq_disabled:
        return
    for i in range(PCI_NUM_PINS):
        state = (d.irq_state >> i) & 1
        pci_change_irq_level(d, i, -state if disabled else state)


def pci_default_read_config(d: PCIDevice, address: int, length: int) -> int:
    """hw/pci/pci.c: ``length`` bytes of config space, little-endian."""
    assert 0 <= address and address + length <= PCI_CFG_SPACE_SIZE
    return int.from_bytes(d.config[address:address + length], "little")


def pci_default_write_config(d: PCIDevice, addr: int, val_in: int, length: int) -> None:
    """hw/pci/pci.c: write through ``wmask`` / ``w1cmask``; remap BARs if they or COMMAND changed."""
    assert 0 <= addr and addr + length <= PCI_CFG_SPACE_SIZE
    was_irq_disabled = pci_irq_disabled(d)
    val = val_in
    for i in range(length):
        wmask, w1cmask = d.wmask[addr + i], d.w1cmask[addr + i]
        b = (d.config[addr + i] & ~wmask) | (val & wmask)
        b &= ~(val & w1cmask)
        d.config[addr + i] = b & 0xFF
        val >>= 8
    if (ranges_overlap(addr, length, Config.BASE_ADDRESS_0, 24)
            or ranges_overlap(addr, length, Config.ROM_ADDRESS, 4)
            or ranges_overlap(addr, length, Config.ROM_ADDRESS1, 4)
            or range_covers_byte(addr, length, Config.COMMAND)):
        pci_update_mappings(d)
    if ranges_overlap(addr, length, Config.COMMAND, 2):
        pci_update_irq_disabled(d, was_irq_disabled)
        # memory_region_set_enabled(&d->bus_master_enable_region, COMMAND & MASTER):
        # pci_dma_rw reads COMMAND.MASTER itself


# --- INTx ---------------------------------------------------------------------------------------

def pci_change_irq_level(pci_dev: PCIDevice, irq_num: int, change: int) -> None:
    """hw/pci/pci.c: map the pin to the bus's line and add ``change`` to its count."""
    bus = pci_dev.bus
    assert bus is not None
    pirq = bus.map_irq(pci_dev, irq_num)
    pci_bus_change_irq_level(bus, pirq, change)


def pci_bus_change_irq_level(bus: PCIBus, irq_num: int, change: int) -> None:
    """hw/pci/pci.c: the line is up while any device on it asserts it."""
    bus.irq_count[irq_num] += change
    bus.set_irq(irq_num, int(bus.irq_count[irq_num] != 0))


def pci_irq_handler(pci_dev: PCIDevice, irq_num: int, level: int) -> None:
    """hw/pci/pci.c: a pin's new level; STATUS.INTERRUPT follows; INTX_DISABLE masks the line."""
    assert 0 <= irq_num < PCI_NUM_PINS and level in (0, 1)
    change = level - ((pci_dev.irq_state >> irq_num) & 1)
    if not change:
        return
    pci_dev.irq_state = (pci_dev.irq_state & ~(1 << irq_num)) | (level << irq_num)
    status = pci_dev.config[Config.STATUS]
    pci_dev.config[Config.STATUS] = (status | Status.INTERRUPT if pci_dev.irq_state
                                     else status & ~int(Status.INTERRUPT))
    pin = "ABCD"[irq_num]
    if pci_irq_disabled(pci_dev):
        pci_dev.emit("qemu", "irq", f"pci_set_irq {pci_dev.name} {pci_dev.addr} INT{pin} = "
                     f"{level}: COMMAND.INTX_DISABLE is set, the line stays as it was",
                     "pci_irq_handler", FILE, pin=pin, level=level, masked=True)
        return
    pci_dev.emit("qemu", "irq", f"pci_set_irq {pci_dev.name} {pci_dev.addr} INT{pin} = {level}",
                 "pci_irq_handler", FILE, pin=pin, level=level, masked=False)
    pci_change_irq_level(pci_dev, irq_num, change)


def pci_set_irq(pci_dev: PCIDevice, level: int) -> None:
    """hw/pci/pci.c: drive the device's INTx pin (``INTERRUPT_PIN``) to ``level`` (0 or 1)."""
    intx = pci_intx(pci_dev)
    if not 0 <= intx < PCI_NUM_PINS:
        raise VbookError(f"{pci_dev.name}: pci_set_irq with INTERRUPT_PIN "
                         f"{pci_dev.config[Config.INTERRUPT_PIN]} (the device has no INTx pin)")
    with in_function(pci_dev.ctx, "pci_set_irq"):
        pci_irq_handler(pci_dev, intx, int(bool(level)))


def pci_device_deassert_intx(dev: PCIDevice) -> None:
    """hw/pci/pci.c: lower every pin (reset)."""
    for i in range(PCI_NUM_PINS):
        pci_irq_handler(dev, i, 0)


# --- DMA ----------------------------------------------------------------------------------------

def pci_dma_rw(dev: PCIDevice, addr: int, buf: bytearray, is_write: bool,
               notes: list[str] | None = None) -> MemTxResult:
    """include/sysemu/dma.h ``pci_dma_rw`` → ``dma_memory_rw(&dev->bus_master_as, …)``.

    RAM is read or written in place; anything else goes through the memory
    address space: a hole reads zeros and drops writes (``unassigned_mem_ops``:
    ``MEMTX_DECODE_ERROR``), the device's own BARs are refused (QEMU's
    ``MemReentrancyGuard``: ``MEMTX_ACCESS_ERROR``), another device's region is
    a real access (its callback runs and is recorded). With COMMAND.MASTER
    clear the bus-master region is disabled and nothing is reached. What was
    not RAM is described in ``notes`` (for the caller's event).
    """
    bus = dev.bus
    assert bus is not None
    length = len(buf)
    if not pci_get_word(dev.config, Config.COMMAND) & _MASTER:
        if not is_write:
            buf[:] = bytes(length)
        if notes is not None:
            notes.append("bus master disabled (COMMAND.MASTER is clear): nothing reached")
        return MemTxResult.DECODE_ERROR
    result = 0  # MemTxResult bits, as a plain int on this hot path
    ram = bus.ram()
    pos = 0
    while pos < length:
        a = (addr + pos) & HWADDR_MAX          # hwaddr arithmetic: wraps at 2**64
        if ram is not None and a < ram.size:
            n = min(length - pos, ram.size - a)
            if is_write:
                ram.write(a, bytes(buf[pos:pos + n]))
            else:
                buf[pos:pos + n] = ram.read(a, n)
            pos += n
            continue
        as_ = bus.dma_as
        mr, _, n = flatview_translate(as_, a, length - pos)
        n = max(n, 1)
        if mr is io_mem_unassigned:
            # unassigned_mem_ops refuse every piece: a read gives 0, a write is dropped
            if notes is not None:
                notes.append(f"{a:#x}+{n:#x}: no RAM or region there "
                             f"(unassigned_mem_{'write' if is_write else 'read'}, "
                             "MEMTX_DECODE_ERROR)")
            if not is_write:
                buf[pos:pos + n] = bytes(n)
            result |= _DECODE_ERROR
        elif mr.opaque is dev or any(r.memory is mr for r in dev.io_regions):
            # MemReentrancyGuard (system/memory.c access_with_adjusted_size)
            if notes is not None:
                notes.append(f"Blocked re-entrant IO on MemoryRegion: {mr.name} at addr: "
                             f"{a:#x} (MEMTX_ACCESS_ERROR)")
            if not is_write:
                buf[pos:pos + n] = bytes(n)
            result |= _ACCESS_ERROR
        else:
            piece = bytearray(buf[pos:pos + n]) if is_write else bytearray(n)
            result |= int(address_space_rw(as_, a, piece, is_write))
            if not is_write:
                buf[pos:pos + n] = piece
        pos += n
    return MemTxResult(result)


_MASTER = int(Command.MASTER)
_DECODE_ERROR = int(MemTxResult.DECODE_ERROR)
_ACCESS_ERROR = int(MemTxResult.ACCESS_ERROR)


@dataclass(frozen=True)
class DmaResult:
    """What :func:`pci_dma_fetch` read: the bytes, QEMU's ``MemTxResult``, and what was not RAM."""

    data: bytes
    result: MemTxResult
    notes: tuple[str, ...]


def pci_dma_fetch(dev: PCIDevice, addr: int, length: int) -> DmaResult:
    """``pci_dma_read`` that records no event of its own, for a caller that puts the access
    into its own event (a descriptor fetch: ``start_xmit``'s "descriptor" event has it)."""
    buf = bytearray(length)
    notes: list[str] = []
    with in_function(dev.ctx, "pci_dma_read"):
        result = pci_dma_rw(dev, addr, buf, False, notes)
    return DmaResult(bytes(buf), result, tuple(notes))


def pci_dma_read(dev: PCIDevice, addr: int, length: int, what: str = "") -> bytes:
    """``pci_dma_read``: ``length`` bytes at bus address ``addr`` (recorded as a ``dma`` event)."""
    buf = bytearray(length)
    notes: list[str] = []
    with in_function(dev.ctx, "pci_dma_read"):
        result = pci_dma_rw(dev, addr, buf, False, notes)
    _dma_event(dev, "pci_dma_read", addr, bytes(buf), result, what, notes)
    return bytes(buf)


def pci_dma_write(dev: PCIDevice, addr: int, data: bytes, what: str = "") -> MemTxResult:
    """``pci_dma_write``: store ``data`` at bus address ``addr`` (recorded as a ``dma`` event)."""
    notes: list[str] = []
    with in_function(dev.ctx, "pci_dma_write"):
        result = pci_dma_rw(dev, addr, bytearray(data), True, notes)
    _dma_event(dev, "pci_dma_write", addr, bytes(data), result, what, notes)
    return result


def _dma_event(dev: PCIDevice, fn: str, addr: int, data: bytes, result: MemTxResult,
               what: str, notes: list[str]) -> None:
    if dev.ctx.trace is None:
        return
    arrow = "→" if fn == "pci_dma_write" else "←"
    label = (f"{fn}({addr:#x}, {len(data)}){' ' + what if what else ''} {arrow} "
             f"{data[:16].hex(' ')}{' …' if len(data) > 16 else ''}")
    if notes:
        label += " — " + "; ".join(notes)
    dev.emit("qemu", "dma", label, fn, DMA_FILE, addr=addr, len=len(data), data=data.hex(),
             result=int(result), what=what, notes=list(notes))


# --- the bus ----------------------------------------------------------------------------------

def pc_pci_slot_get_pirq(pci_dev: PCIDevice, pci_intx: int) -> int:
    """hw/i386/pc_piix.c: PIRQ = (pin + slot - 1) & 3 (slot 1 INTA → PIRQA)."""
    return (pci_intx + PCI_SLOT(pci_dev.devfn) - 1) & 3


@dataclass(eq=False)
class PCIBus:
    """``struct PCIBus`` (include/hw/pci/pci_bus.h): bus 0, its 256 devfns, its spaces and lines.

    ``address_space_mem`` / ``address_space_io`` are the regions BARs are
    mapped into; ``dma_as`` the address space DMA outside RAM goes through;
    ``ram()`` the guest RAM (None: no RAM, every DMA reaches ``dma_as``);
    ``set_irq(pirq, level)`` the board's interrupt router, ``map_irq`` the pin
    swizzle (``pci_bus_irqs`` / ``pci_bus_map_irqs``).
    """

    address_space_mem: MemoryRegion
    address_space_io: MemoryRegion
    dma_as: AddressSpace
    ctx: RunContext = field(default_factory=RunContext, repr=False)
    ram: Callable[[], GuestMemory | None] = field(default=lambda: None, repr=False)
    set_irq: Callable[[int, int], None] = field(default=lambda irq, level: None, repr=False)
    map_irq: Callable[[PCIDevice, int], int] = field(default=pc_pci_slot_get_pirq, repr=False)
    nirq: int = PCI_NUM_PINS
    devices: list[PCIDevice | None] = field(default_factory=lambda: [None] * PCI_DEVFN_MAX,
                                            repr=False)
    irq_count: list[int] = field(default_factory=lambda: [0] * PCI_NUM_PINS)
    bus_num: int = 0
    devfn_min: int = 0

    def __repr__(self) -> str:
        devs = ", ".join(f"{d.addr} {d.name}" for d in self.devices if d is not None)
        return f"PCIBus(bus {self.bus_num}: {devs or 'empty'})"

    def register(self, pci_dev: PCIDevice, devfn: int = -1) -> PCIDevice:
        """``pci_realize_and_unref``: place the device (``do_pci_register_device``), realize, reset.

        ``devfn`` -1 takes the first free slot from ``devfn_min``, function 0,
        as QEMU does for a ``-device`` without ``addr=``.
        """
        do_pci_register_device(self, pci_dev, devfn)
        pci_dev.realize()
        pci_device_reset(pci_dev)
        return pci_dev

    def find(self, bus_num: int, devfn: int) -> PCIDevice | None:
        """hw/pci/pci.c ``pci_find_device`` (this model has one bus, number 0)."""
        if bus_num != self.bus_num:
            return None
        return self.devices[devfn & 0xFF]


def do_pci_register_device(bus: PCIBus, pci_dev: PCIDevice, devfn: int) -> None:
    """hw/pci/pci.c: claim ``devfn`` and fill the IDs, subsystem and masks of config space."""
    if devfn < 0:
        for devfn in range(bus.devfn_min, PCI_DEVFN_MAX, PCI_FUNC_MAX):
            if bus.devices[devfn] is None:
                break
        else:
            raise VbookError(f"PCI: no slot/function available for {pci_dev.name}, all in use")
    elif not 0 <= devfn < PCI_DEVFN_MAX:
        raise VbookError(f"PCI: devfn {devfn} out of range for {pci_dev.name}")
    elif bus.devices[devfn] is not None:
        other = bus.devices[devfn]
        assert other is not None
        raise VbookError(f"PCI: slot {PCI_SLOT(devfn)} function {PCI_FUNC(devfn)} not available "
                         f"for {pci_dev.name}, in use by {other.name}")
    if PCI_FUNC(devfn) and bus.devices[PCI_DEVFN(PCI_SLOT(devfn), 0)] is not None:
        f0 = bus.devices[PCI_DEVFN(PCI_SLOT(devfn), 0)]
        assert f0 is not None
        if not f0.config[Config.HEADER_TYPE] & PCI_HEADER_TYPE_MULTI_FUNCTION:
            raise VbookError(f"PCI: single function device can't be populated in function "
                             f"{PCI_SLOT(devfn):x}.{PCI_FUNC(devfn):x}")
    pci_dev.devfn, pci_dev.bus = devfn, bus
    c = pci_dev.config
    pci_set_word(c, Config.VENDOR_ID, pci_dev.vendor_id)
    pci_set_word(c, Config.DEVICE_ID, pci_dev.device_id)
    c[Config.REVISION_ID] = pci_dev.revision
    pci_set_word(c, Config.CLASS_DEVICE, pci_dev.class_id)   # pci_config_set_class
    if pci_dev.subsystem_vendor_id or pci_dev.subsystem_id:
        pci_set_word(c, Config.SUBSYSTEM_VENDOR_ID, pci_dev.subsystem_vendor_id)
        pci_set_word(c, Config.SUBSYSTEM_ID, pci_dev.subsystem_id)
    else:                                                     # pci_set_default_subsystem_id
        pci_set_word(c, Config.SUBSYSTEM_VENDOR_ID, PCI_SUBVENDOR_ID_REDHAT_QUMRANET)
        pci_set_word(c, Config.SUBSYSTEM_ID, PCI_SUBDEVICE_ID_QEMU)
    # pci_init_cmask
    pci_set_word(pci_dev.cmask, Config.VENDOR_ID, 0xFFFF)
    pci_set_word(pci_dev.cmask, Config.DEVICE_ID, 0xFFFF)
    pci_dev.cmask[Config.STATUS] = Status.CAP_LIST
    for off in (Config.REVISION_ID, Config.CLASS_PROG, Config.HEADER_TYPE,
                Config.CAPABILITY_LIST):
        pci_dev.cmask[off] = 0xFF
    pci_set_word(pci_dev.cmask, Config.CLASS_DEVICE, 0xFFFF)
    # pci_init_wmask
    w = pci_dev.wmask
    w[Config.CACHE_LINE_SIZE] = 0xFF
    w[Config.INTERRUPT_LINE] = 0xFF
    pci_set_word(w, Config.COMMAND, Command.IO | Command.MEMORY | Command.MASTER
                 | Command.INTX_DISABLE | Command.SERR)
    w[PCI_STD_HEADER_SIZEOF:] = b"\xff" * (PCI_CFG_SPACE_SIZE - PCI_STD_HEADER_SIZEOF)
    # pci_init_w1cmask
    pci_set_word(pci_dev.w1cmask, Config.STATUS, Status.PARITY | Status.SIG_TARGET_ABORT
                 | Status.REC_TARGET_ABORT | Status.REC_MASTER_ABORT | Status.SIG_SYSTEM_ERROR
                 | Status.DETECTED_PARITY)
    bus.devices[devfn] = pci_dev


def pci_reset_regions(dev: PCIDevice) -> None:
    """hw/pci/pci.c: every BAR register back to its type bits (address 0)."""
    for r_num, r in enumerate(dev.io_regions):
        if not r.size:
            continue
        if not r.type & BaseAddress.SPACE_IO and r.type & BaseAddress.MEM_TYPE_64:
            pci_set_quad(dev.config, pci_bar(dev, r_num), r.type)
        else:
            pci_set_long(dev.config, pci_bar(dev, r_num), r.type)


def pci_do_device_reset(dev: PCIDevice) -> None:
    """hw/pci/pci.c: lower INTx, clear writable COMMAND/STATUS bits, INTERRUPT_LINE, cache
    line size and the BARs, and unmap them."""
    pci_device_deassert_intx(dev)
    for off in (Config.COMMAND, Config.STATUS):
        mask = pci_get_word(dev.wmask, off) | pci_get_word(dev.w1cmask, off)
        pci_set_word(dev.config, off, pci_get_word(dev.config, off) & ~mask)
    mask = dev.wmask[Config.INTERRUPT_LINE] | dev.w1cmask[Config.INTERRUPT_LINE]
    dev.config[Config.INTERRUPT_LINE] &= ~mask & 0xFF
    dev.config[Config.CACHE_LINE_SIZE] = 0
    pci_reset_regions(dev)
    pci_update_mappings(dev)


def pci_device_reset(dev: PCIDevice) -> None:
    """hw/pci/pci.c: the device's own reset (``device_cold_reset``), then the PCI part."""
    dev.reset()
    pci_do_device_reset(dev)


# --- the host bridge: config mechanism #1 (hw/pci/pci_host.c) -------------------------------------

@dataclass(eq=False)
class PCIHostState(DeviceState):
    """``PCIHostState`` (include/hw/pci/pci_host.h) of the i440FX: ``config_reg`` and the bus."""

    type_name = "i440FX-pcihost"

    bus: PCIBus = field(repr=False)
    config_reg: int = 0

    def __repr__(self) -> str:
        en, b, s, f, reg = decode_config_address(self.config_reg)
        return (f"PCIHostState(config_reg={self.config_reg:#010x}: "
                f"{'enabled' if en else 'disabled'} {b:02x}:{s:02x}.{f} reg {reg:#04x})")


def _bdf(addr: int) -> str:
    return f"{addr >> 16 & 0xFF:02x}:{addr >> 11 & 0x1F:02x}.{addr >> 8 & 7}"


def pci_data_write(s: PCIBus, addr: int, val: int, length: int) -> str:
    """hw/pci/pci_host.c: config write at ``addr`` (bus/devfn/register); what it reached."""
    pci_dev = s.find(addr >> 16 & 0xFF, addr >> 8 & 0xFF)
    config_addr = addr & (PCI_CFG_SPACE_SIZE - 1)
    if pci_dev is None:
        return f"{_bdf(addr)} [{config_addr:#04x}]: empty, write dropped"
    return pci_host_config_write_common(pci_dev, config_addr, PCI_CFG_SPACE_SIZE, val, length)


def pci_data_read(s: PCIBus, addr: int, length: int) -> tuple[int, str]:
    """hw/pci/pci_host.c: (value, what it reached) of a config read; empty slots give ~0."""
    pci_dev = s.find(addr >> 16 & 0xFF, addr >> 8 & 0xFF)
    config_addr = addr & (PCI_CFG_SPACE_SIZE - 1)
    if pci_dev is None:
        return UINT32_MAX, f"{_bdf(addr)} [{config_addr:#04x}]: empty, reads ~0"
    return pci_host_config_read_common(pci_dev, config_addr, PCI_CFG_SPACE_SIZE, length)


def pci_host_config_write_common(pci_dev: PCIDevice, addr: int, limit: int, val: int,
                                 length: int) -> str:
    """hw/pci/pci_host.c: hand the write to the device's ``config_write``."""
    if limit <= addr:
        return f"{pci_dev.addr} [{addr:#04x}]: past the config space, dropped"
    n = min(length, limit - addr)
    with in_function(pci_dev.ctx, "pci_data_write"):
        pci_dev.config_write(addr, val & ((1 << (8 * n)) - 1), n)
    return f"{pci_dev.addr} {pci_dev.name} [{addr:#04x}] {reg_name(addr)} ← {val:#x}"


def pci_host_config_read_common(pci_dev: PCIDevice, addr: int, limit: int,
                                length: int) -> tuple[int, str]:
    """hw/pci/pci_host.c: the device's ``config_read``."""
    if limit <= addr:
        return UINT32_MAX, f"{pci_dev.addr} [{addr:#04x}]: past the config space"
    ret = pci_dev.config_read(addr, min(length, limit - addr))
    return ret, f"{pci_dev.addr} {pci_dev.name} [{addr:#04x}] {reg_name(addr)} = {ret:#x}"


def pci_host_config_write(s: PCIHostState, addr: int, val: int, length: int) -> None:
    """hw/pci/pci_host.c: CONFIG_ADDRESS takes only a 4-byte write at offset 0."""
    if addr != 0 or length != 4:
        s.note(label=f"pci_host_config_write {val:#x} (len {length}, offset {addr}): only a "
                     "4-byte write at 0xcf8 sets CONFIG_ADDRESS; ignored", reg="CONFIG_ADDRESS")
        return
    s.config_reg = val & UINT32_MAX
    en, b, sl, f, reg = decode_config_address(s.config_reg)
    s.note(label=f"pci_host_config_write CONFIG_ADDRESS ← {val:#010x} ("
                 f"{'enable' if en else 'disabled'}, {b:02x}:{sl:02x}.{f} reg {reg:#04x} "
                 f"{reg_name(reg)})", reg="CONFIG_ADDRESS", config_reg=s.config_reg)


def pci_host_config_read(s: PCIHostState, addr: int, length: int) -> int:
    """hw/pci/pci_host.c: CONFIG_ADDRESS reads back whole, whatever the offset."""
    s.note(label=f"pci_host_config_read CONFIG_ADDRESS = {s.config_reg:#010x}",
           reg="CONFIG_ADDRESS")
    return s.config_reg


def pci_host_data_write(s: PCIHostState, addr: int, val: int, length: int) -> None:
    """hw/pci/pci_host.c: CONFIG_DATA + ``addr``: a config write if CONFIG_ADDRESS is enabled."""
    if not s.config_reg & CONFIG_ADDRESS_ENABLE:
        s.note(label=f"pci_host_data_write {val:#x} (len {length}): CONFIG_ADDRESS not enabled, "
                     "dropped", reg="CONFIG_DATA")
        return
    what = pci_data_write(s.bus, s.config_reg | (addr & 3), val, length)
    s.note(label=f"pci_host_data_write → pci_data_write {what} (len {length})", reg="CONFIG_DATA")


def pci_host_data_read(s: PCIHostState, addr: int, length: int) -> int:
    """hw/pci/pci_host.c: CONFIG_DATA + ``addr``: all ones unless CONFIG_ADDRESS is enabled."""
    if not s.config_reg & CONFIG_ADDRESS_ENABLE:
        s.note(label=f"pci_host_data_read (len {length}): CONFIG_ADDRESS not enabled, reads ~0",
               reg="CONFIG_DATA")
        return UINT32_MAX
    ret, what = pci_data_read(s.bus, s.config_reg | (addr & 3), length)
    s.note(label=f"pci_host_data_read → pci_data_read {what} (len {length})", reg="CONFIG_DATA")
    return ret


#: hw/pci/pci_host.c ``pci_host_conf_le_ops`` / ``pci_host_data_le_ops``: no size limits
pci_host_conf_le_ops = MemoryRegionOps(read=pci_host_config_read, write=pci_host_config_write,
                                       file=HOST_FILE)
pci_host_data_le_ops = MemoryRegionOps(read=pci_host_data_read, write=pci_host_data_write,
                                       file=HOST_FILE)


# --- the i440FX PMC at 00:00.0 (hw/pci-host/i440fx.c) ------------------------------------------

#: hw/pci-host/i440fx.c
I440FX_PAM = 0x59
I440FX_PAM_SIZE = 7
I440FX_SMRAM = 0x72
I440FX_COREBOOT_RAM_SIZE = 0x57


@dataclass(eq=False)
class PCII440FXState(PCIDevice):
    """The i440FX's PCI function (``TYPE_I440FX_PCI_DEVICE``), 8086:1237 rev 2, class 0600.

    ``i440fx_realize`` sets SMRAM to 0x02; ``i440fx_pcihost_realize`` puts the
    RAM size in 8 MiB units at 0x57 (0 for this book's guests, all under 8 MiB).
    PAM and SMRAM writes are stored; the memory remapping they do in QEMU is
    not modelled.
    """

    type_name = "i440FX"
    desc = "Host bridge"
    vendor_id = PCI_VENDOR_ID_INTEL
    device_id = PCI_DEVICE_ID_INTEL_82441
    revision = 0x02
    class_id = PCI_CLASS_BRIDGE_HOST

    ram_size: int = 0

    def realize(self) -> None:
        self.config[I440FX_SMRAM] = 0x02
        self.config[I440FX_COREBOOT_RAM_SIZE] = min(self.ram_size // 8 // 1024 // 1024, 255)


# --- `info pci` (hw/pci/pci-hmp-cmds.c hmp_info_pci_device) -----------------------------------

def info_pci(bus: PCIBus) -> str:
    """The bus as QEMU's monitor command ``info pci`` prints it."""
    out: list[str] = []
    for d in bus.devices:
        if d is None:
            continue
        c = d.config
        out.append(f"  Bus {bus.bus_num:2d}, device {PCI_SLOT(d.devfn):3d}, "
                   f"function {PCI_FUNC(d.devfn)}:")
        cls = pci_get_word(c, Config.CLASS_DEVICE)
        desc = CLASS_DESC.get(cls, f"Class {cls:04x}")
        out.append(f"    {desc}: PCI device {pci_get_word(c, Config.VENDOR_ID):04x}:"
                   f"{pci_get_word(c, Config.DEVICE_ID):04x}")
        out.append(f"      PCI subsystem {pci_get_word(c, Config.SUBSYSTEM_VENDOR_ID):04x}:"
                   f"{pci_get_word(c, Config.SUBSYSTEM_ID):04x}")
        pin = c[Config.INTERRUPT_PIN]
        if pin:
            out.append(f"      IRQ {c[Config.INTERRUPT_LINE]}, pin {chr(ord('A') + pin - 1)}")
        for i, r in enumerate(d.io_regions):
            if not r.size:
                continue
            unmapped = r.addr == PCI_BAR_UNMAPPED
            if r.type & BaseAddress.SPACE_IO:
                where = "I/O (not mapped)" if unmapped else (
                    f"I/O at 0x{r.addr:04x} [0x{r.addr + r.size - 1:04x}]")
            else:
                kind = (f"{64 if r.type & BaseAddress.MEM_TYPE_64 else 32} bit"
                        f"{' prefetchable' if r.type & BaseAddress.MEM_PREFETCH else ''} memory")
                where = f"{kind} (not mapped)" if unmapped else (
                    f"{kind} at 0x{r.addr:08x} [0x{r.addr + r.size - 1:08x}]")
            out.append(f"      BAR{i}: {where}.")
        out.append('      id ""')
    return "\n".join(out)


__all__ = [
    "CLASS_DESC", "CONFIG_ADDRESS_ENABLE", "PCI_BAR_UNMAPPED", "PCI_CFG_SPACE_SIZE",
    "PCI_CLASS_BRIDGE_HOST", "PCI_CLASS_NETWORK_ETHERNET", "PCI_CONFIG_ADDRESS_PORT",
    "PCI_CONFIG_DATA_PORT", "PCI_DEVFN", "PCI_DEVICE_ID_INTEL_82441", "PCI_FUNC",
    "PCI_HEADER_TYPE_MULTI_FUNCTION", "PCI_NUM_PINS", "PCI_NUM_REGIONS", "PCI_ROM_SLOT",
    "PCI_SLOT", "PCI_SUBDEVICE_ID_QEMU", "PCI_SUBVENDOR_ID_REDHAT_QUMRANET",
    "PCI_VENDOR_ID_INTEL", "BaseAddress", "Command", "Config", "HeaderType", "PCIBus",
    "PCIDevice", "PCIHostState", "PCII440FXState", "PCIIORegion", "Status", "config_address",
    "decode_config_address", "do_pci_register_device", "in_function", "info_pci",
    "pc_pci_slot_get_pirq", "pci_bar", "pci_bar_address", "pci_data_read", "pci_data_write",
    "pci_default_read_config", "pci_default_write_config", "pci_device_reset", "pci_dma_read",
    "pci_dma_fetch", "pci_dma_rw", "pci_dma_write", "DmaResult", "pci_get_long", "pci_get_word",
    "pci_host_conf_le_ops",
    "pci_host_config_read", "pci_host_config_write", "pci_host_data_le_ops", "pci_host_data_read",
    "pci_host_data_write", "pci_intx", "pci_register_bar", "pci_set_irq", "pci_set_long",
    "pci_set_word", "pci_update_mappings", "reg_name",
]
