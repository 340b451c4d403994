"""virtio-pci, the legacy interface, as QEMU 9.2.4 builds it (hw/virtio/virtio-pci.c).

:class:`VirtIOPCIProxy` is QEMU's ``VirtIOPCIProxy``: the PCI function a virtio
device sits behind. The guest finds it by its IDs and reaches the device
through one I/O BAR; :class:`vbook.devices.virtio_net.VirtIONetPCI` is the
``virtio-net-pci`` one.

**Identity** (``virtio_net_pci_class_init``, ``virtio_pci_device_plugged``):
vendor 1AF4, device 1000 (the transitional virtio-net ID, in the 0x1000-0x103f
window Linux's legacy driver claims), revision 0 (``VIRTIO_PCI_ABI_VERSION``:
Linux's ``vp_legacy_probe`` refuses any other), class 0x020000 (Ethernet),
subsystem vendor 1AF4 and subsystem ID = the virtio device type (1 for net:
what Linux reads as ``vdev->id.device``), INTERRUPT_PIN 1 (INTA).

**BAR0, the legacy registers** (``virtio_pci_config_ops``; 1-4 byte accesses,
little-endian; include/uapi/linux/virtio_pci.h names): its size is
``pow2ceil(VIRTIO_PCI_REGION_SIZE + config_len)`` = pow2ceil(20 + 8) = **32
ports** for virtio-net (20 bytes of registers without MSI-X, and virtio-net's 8
bytes of config: the MAC and ``status``; 24 + 8 with MSI-X present, 32 as well).

====  ===============  ==========================================================
off   register         access
====  ===============  ==========================================================
0     HOST_FEATURES    R: ``host_features`` bits 0-31 (VERSION_1 is bit 32: unseen)
4     GUEST_FEATURES   R/W: ``virtio_set_features`` (bit 30 set: ``bad_features``)
8     QUEUE_PFN        R/W: ``virtio_queue_set_addr(vdev, queue_sel, pfn << 12)``,
                       the ring laid out with ``VIRTIO_PCI_VRING_ALIGN`` 4096;
                       **writing 0 resets the whole device** (``virtio_pci_reset``)
12    QUEUE_NUM        R: ``vring.num`` of ``queue_sel`` (0: no such queue)
14    QUEUE_SEL        R/W: taken if < VIRTIO_QUEUE_MAX (1024)
16    QUEUE_NOTIFY     W: a queue index → ``virtio_queue_notify`` (if the queue exists)
18    STATUS           R/W: ``virtio_set_status``; 0 resets the device; exactly
                       ACKNOWLEDGE|DRIVER also sets COMMAND.MASTER (for Linux
                       before 2.6.34, which never did)
19    ISR              R: the ISR byte, **cleared by the read**, and INTx lowered
20-   device config    ``virtio_config_readb/w/l`` / ``_write*`` (MAC, status)
====  ===============  ==========================================================

A read of any other register offset gives all ones, a write there is dropped
("unexpected address", ``LOG_GUEST_ERROR``). A legacy driver (Linux's
virtio_pci_legacy.c) resets (STATUS 0, then reads it back), sets ACKNOWLEDGE,
DRIVER, reads HOST_FEATURES and writes GUEST_FEATURES (no FEATURES_OK: that is
virtio 1.x), then per queue selects it, reads QUEUE_NUM (0: none), checks
QUEUE_PFN is 0, allocates a ring of that size aligned to 4096 and writes its
PFN, and finally sets DRIVER_OK. It kicks a queue by writing its index to
QUEUE_NOTIFY and, on INTx, reads ISR.

**Interrupts**: ``virtio_pci_notify`` with MSI-X off is ``pci_set_irq(isr & 1)``;
the line stays up until the driver reads ISR.

**Bus mastering**: virtio's DMA goes to ``address_space_memory`` itself
(``vdev->dma_as``), not through the PCI bus-master window; instead a config
write that clears COMMAND.MASTER *disables* the device
(``virtio_set_disabled``: no pops, no interrupts) and drops DRIVER_OK, and one
that sets it enables it again (``virtio_write_config``).

**The modern (virtio 1.x) interface** is not modelled. What QEMU builds for
plain ``-device virtio-net-pci`` on ``-M pc`` (transitional: ``disable-legacy``
is off on a conventional PCI bus, ``disable-modern`` off) on top of the above:
``host_features`` gains VERSION_1 (bit 32, invisible to the legacy register);
BAR1 is a 4 KiB MSI-X table (4 vectors: 2 per queue pair + config + control
queue; the legacy device config then starts at 24, not 20, once the driver
enables MSI-X); BAR4 is a 16 KiB 64-bit prefetchable memory BAR holding four
4 KiB regions; and config space gets a capability list (:data:`MODERN_CAPS`,
``lspci`` shows the same offsets). Linux's ``virtio_pci_probe`` tries the modern
interface first and uses legacy only when it finds no such capabilities (or
with ``force_legacy``). What differs for the driver there: 64-bit features
through select/window registers and a FEATURES_OK step the device may refuse;
queue size writable (``virtio_queue_set_num``) and three separate 64-bit ring
addresses (no 4096 alignment), ``queue_enable``; a kick is a write to BAR4 +
0x3000 + ``queue_notify_off`` × 4; ISR in its own region; the header is always
12 bytes (``virtio_net_hdr_v1``); a ``virtio_error`` sets NEEDS_RESET and raises
a config interrupt. So this model is exactly ``-device
virtio-net-pci,disable-modern=on,vectors=0``: no capabilities, no MSI-X, BAR0 only.

Also left out: ioeventfd (QEMU's default ``ioeventfd=on`` lets KVM consume the
QUEUE_NOTIFY write in the kernel and wake QEMU's main loop; here every kick is a
``KVM_EXIT_IO`` handled in the vCPU thread, as with ``ioeventfd=off``), the
option ROM, PCI Express, migration.

Register accesses are ``device`` events of the memory layer whose note names
the register and what it did (``reg``, ``value``, ``queue_sel``, ``status``,
``isr``); what the virtio core and the device did are events of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vbook.devices.pci import (
    BaseAddress,
    Command,
    Config,
    PCIDevice,
    in_function,
    pci_default_write_config,
    pci_register_bar,
    pci_set_irq,
    pci_set_word,
    range_covers_byte,
)
from vbook.devices.virtio import (
    VirtIODevice,
    run_bottom_halves,
    virtio_config_read,
    virtio_config_write,
    virtio_queue_get_addr,
    virtio_queue_get_num,
    virtio_queue_notify,
    virtio_queue_set_addr,
    virtio_reset,
    virtio_set_disabled,
    virtio_set_features,
    virtio_set_status,
)
from vbook.models.qemu_memory import (
    AccessConstraints,
    MemoryRegion,
    MemoryRegionOps,
    memory_region_init_io,
)
from vbook.models.virtio_consts import (
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_VNDR,
    PCI_SUBVENDOR_ID,
    PCI_VENDOR_ID,
    SIZEOF_VIRTIO_PCI_CAP,
    SIZEOF_VIRTIO_PCI_CFG_CAP,
    SIZEOF_VIRTIO_PCI_NOTIFY_CAP,
    VIRTIO_F_BAD_FEATURE,
    VIRTIO_PCI_ABI_VERSION,
    VIRTIO_PCI_CONFIG_OFF,
    VIRTIO_PCI_QUEUE_ADDR_SHIFT,
    VIRTIO_QUEUE_MAX,
    DeviceStatus,
    LegacyReg,
    PciCapType,
    TransportFeature,
)

FILE = "hw/virtio/virtio-pci.c"
U32 = 0xFFFFFFFF


def pow2ceil(value: int) -> int:
    """include/qemu/host-utils.h: the smallest power of two >= ``value``."""
    return 1 << max(value - 1, 0).bit_length()


# --- the modern interface QEMU would add (data only) --------------------------------------

@dataclass(frozen=True)
class ModernCap:
    """One capability QEMU 9.2.4 puts in config space of a transitional virtio-pci device
    (``virtio_pci_device_plugged`` → ``virtio_pci_add_mem_cap`` / ``msix_init``).

    ``pos`` is its config-space offset (``pci_add_capability`` with offset 0 takes the
    first free bytes after 0x40, and links the newest first); for a vendor capability
    ``cfg_type``, ``bar``, ``offset``, ``length`` are ``struct virtio_pci_cap``'s.
    """

    pos: int
    cap_id: int
    size: int
    name: str
    cfg_type: int = 0
    bar: int = 0
    offset: int = 0
    length: int = 0
    notify_off_multiplier: int | None = None


def modern_capabilities(nvectors: int = 4, page_per_vq: bool = False) -> tuple[ModernCap, ...]:
    """The capabilities of ``-device virtio-net-pci`` on ``-M pc``, in the order QEMU adds them.

    Regions in BAR4 (``virtio_pci_realize``): common 0x0, ISR 0x1000, device 0x2000
    (each 0x1000), notify 0x3000 of ``mult × VIRTIO_QUEUE_MAX`` bytes (``mult`` =
    ``virtio_pci_queue_mem_mult``: 4, or 0x1000 with ``page-per-vq``); then the
    ``VIRTIO_PCI_CAP_PCI_CFG`` window and, with vectors, MSI-X (12 bytes).
    """
    mult = 0x1000 if page_per_vq else 4
    pos = 0x40
    caps = []
    for name, ctype, off, length, size in (
            ("common", PciCapType.COMMON_CFG, 0x0, 0x1000, SIZEOF_VIRTIO_PCI_CAP),
            ("isr", PciCapType.ISR_CFG, 0x1000, 0x1000, SIZEOF_VIRTIO_PCI_CAP),
            ("device", PciCapType.DEVICE_CFG, 0x2000, 0x1000, SIZEOF_VIRTIO_PCI_CAP),
            ("notify", PciCapType.NOTIFY_CFG, 0x3000, mult * VIRTIO_QUEUE_MAX,
             SIZEOF_VIRTIO_PCI_NOTIFY_CAP),
            ("pci-cfg", PciCapType.PCI_CFG, 0, 0, SIZEOF_VIRTIO_PCI_CFG_CAP)):
        caps.append(ModernCap(pos, PCI_CAP_ID_VNDR, size, name, int(ctype),
                              4 if ctype != PciCapType.PCI_CFG else 0, off, length,
                              mult if ctype == PciCapType.NOTIFY_CFG else None))
        pos += (size + 3) & ~3
    if nvectors:
        caps.append(ModernCap(pos, PCI_CAP_ID_MSIX, 12, "msix", bar=1))
    return tuple(caps)


#: what ``lspci -v`` lists for QEMU 9.2.4's ``-device virtio-net-pci``: MSI-X at 0x98, vendor
#: capabilities at 0x84 (pci-cfg), 0x70 (notify), 0x60 (device), 0x50 (ISR), 0x40 (common);
#: the list head (``PCI_CAPABILITY_LIST``) is the last one added
MODERN_CAPS = modern_capabilities()
#: BAR4's size: ``pow2ceil(notify.offset + notify.size)`` = pow2ceil(0x3000 + 4 * 1024)
MODERN_BAR_SIZE = pow2ceil(0x3000 + 4 * VIRTIO_QUEUE_MAX)
#: BAR1 (``msix_init_exclusive_bar``): 4 KiB, table at 0, PBA at 0x800
MSIX_BAR_SIZE = 4096


# --- the proxy --------------------------------------------------------------------------------

@dataclass(eq=False)
class VirtIOPCIProxy(PCIDevice):
    """``VirtIOPCIProxy``: a PCI function with a virtio device behind it (``vdev``).

    ``nvectors`` is 0 and the modern interface is off (module docstring); BAR0
    (``bar``) is the legacy register window.
    """

    type_name = "virtio-pci"
    vendor_id = PCI_VENDOR_ID
    revision = VIRTIO_PCI_ABI_VERSION

    vdev: VirtIODevice | None = field(default=None, repr=False)
    nvectors: int = 0
    disable_modern: bool = True
    legacy_io_bar_idx: int = 0
    bar: MemoryRegion | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        where = self.addr if self.devfn >= 0 else "not plugged"
        bar = self.io_regions[self.legacy_io_bar_idx]
        io = f"BAR0 I/O {bar.addr:#x}" if bar.mapped else "BAR0 not mapped"
        return f"{type(self).__name__}({where}, {io}, {self.vdev!r})"

    # --- what the virtio core asks of its bus (VirtioBusClass) --------------------------------
    def bus_notify(self, vector: int) -> None:
        """``virtio_pci_notify``: without MSI-X the INTx line follows ISR bit 0."""
        assert self.vdev is not None
        with in_function(self.ctx, "virtio_pci_notify"):
            pci_set_irq(self, self.vdev.isr & 1)

    def dma_ram(self) -> Any:
        """Guest RAM (``address_space_memory``'s RAM), or None on a board without it."""
        return self.bus.ram() if self.bus is not None else None

    # --- PCIDeviceClass ------------------------------------------------------------------------
    def vdev_realize(self) -> None:
        """The device class's ``realize`` (``virtio_net_pci_realize`` → the vdev's)."""

    def realize(self) -> None:
        """``virtio_pci_realize`` → the device's realize → ``virtio_bus_device_plugged``."""
        assert self.vdev is not None
        self.vdev.proxy = self
        self.vdev_realize()
        vdev = self.vdev
        # virtio_pci_pre_plugged
        if not self.disable_modern:
            vdev.host_features |= 1 << TransportFeature.VERSION_1
        vdev.host_features |= 1 << VIRTIO_F_BAD_FEATURE
        vdev.host_features = vdev.get_features(vdev.host_features)
        # virtio_pci_device_plugged (legacy, no modern capabilities, no MSI-X)
        pci_set_word(self.config, Config.SUBSYSTEM_ID, vdev.device_id)
        self.config[Config.INTERRUPT_PIN] = 1
        size = pow2ceil(VIRTIO_PCI_CONFIG_OFF(bool(self.nvectors)) + vdev.config_len)
        self.bar = memory_region_init_io("virtio-pci", size, virtio_pci_config_ops, self,
                                         owner=self.type_name)
        pci_register_bar(self, self.legacy_io_bar_idx, BaseAddress.SPACE_IO, self.bar)
        self.emit("device", "virtio", f"virtio_pci_device_plugged {self.type_name}: "
                  f"{self.vendor_id:04x}:{self.device_id:04x} rev {self.revision}, subsystem "
                  f"{PCI_SUBVENDOR_ID:04x}:{vdev.device_id:04x}, BAR0 I/O {size} bytes "
                  f"(20 + config {vdev.config_len}), host_features {vdev.host_features:#x}",
                  "virtio_pci_device_plugged", FILE, bar_size=size,
                  host_features=vdev.host_features, config_len=vdev.config_len)

    def config_write(self, address: int, val: int, length: int) -> None:
        """``virtio_write_config``: the default, then COMMAND.MASTER enables/disables the device."""
        pci_default_write_config(self, address, val, length)
        vdev = self.vdev
        if vdev is None or not range_covers_byte(address, length, Config.COMMAND):
            return
        if not self.config[Config.COMMAND] & Command.MASTER:
            was = vdev.disabled
            virtio_set_disabled(vdev, True)
            virtio_set_status(vdev, vdev.status & ~DeviceStatus.DRIVER_OK)
            if not was:
                self.emit("device", "virtio", "virtio_write_config: COMMAND.MASTER clear → "
                          "virtio_set_disabled(vdev, true), DRIVER_OK dropped",
                          "virtio_write_config", FILE, disabled=True)
        else:
            if vdev.disabled:
                self.emit("device", "virtio", "virtio_write_config: COMMAND.MASTER set → "
                          "virtio_set_disabled(vdev, false)", "virtio_write_config", FILE,
                          disabled=False)
            virtio_set_disabled(vdev, False)

    def reset(self) -> None:
        """``virtio_pci_bus_reset_hold`` → ``virtio_pci_reset``."""
        if self.vdev is not None and self.vdev.vq:
            virtio_pci_reset(self)


def virtio_pci_reset(proxy: VirtIOPCIProxy) -> None:
    """hw/virtio/virtio-pci.c: ``virtio_bus_reset`` → ``virtio_reset`` (MSI-X and the modern
    queue state are not modelled)."""
    assert proxy.vdev is not None
    with in_function(proxy.ctx, "virtio_pci_reset"):
        virtio_reset(proxy.vdev)


def _reg(addr: int) -> str:
    try:
        return LegacyReg(addr).name
    except ValueError:
        return f"{addr:#x}"


def virtio_ioport_write(proxy: VirtIOPCIProxy, addr: int, val: int) -> str:
    """hw/virtio/virtio-pci.c: a write to a legacy register; what it did (for the note)."""
    vdev = proxy.vdev
    assert vdev is not None
    val &= U32
    if addr == LegacyReg.GUEST_FEATURES:
        what = ""
        if val >> VIRTIO_F_BAD_FEATURE & 1:  # "Guest does not negotiate properly?"
            what = f" (UNUSED(30) set: bad_features {vdev.bad_features():#x})"
            val = vdev.bad_features()
        virtio_set_features(vdev, val)
        return f"virtio_set_features({val:#x}){what} → guest_features {vdev.guest_features:#x}"
    if addr == LegacyReg.QUEUE_PFN:
        pa = val << VIRTIO_PCI_QUEUE_ADDR_SHIFT
        if pa == 0:
            virtio_pci_reset(proxy)
            return "PFN 0: virtio_pci_reset (the whole device)"
        virtio_queue_set_addr(vdev, vdev.queue_sel, pa)
        vq = vdev.vq[vdev.queue_sel]
        if not vq.num:
            return f"virtio_queue_set_addr(queue {vdev.queue_sel}, {pa:#x}): no such queue, ignored"
        return (f"virtio_queue_set_addr(queue {vdev.queue_sel} {vq.name}, {pa:#x}): avail "
                f"{vq.avail:#x}, used {vq.used:#x}"
                + (" — broken" if vdev.broken else ""))
    if addr == LegacyReg.QUEUE_SEL:
        if val < VIRTIO_QUEUE_MAX:
            vdev.queue_sel = val
            return f"queue_sel = {val}"
        return f"queue_sel {val} >= VIRTIO_QUEUE_MAX: ignored"
    if addr == LegacyReg.QUEUE_NOTIFY:
        vq_idx = val & 0xFFFF
        if vq_idx < VIRTIO_QUEUE_MAX and virtio_queue_get_num(vdev, vq_idx):
            virtio_queue_notify(vdev, vq_idx)
            return f"virtio_queue_notify(vq {vq_idx} {vdev.vq[vq_idx].name})"
        return f"queue {vq_idx} does not exist: ignored"
    if addr == LegacyReg.STATUS:
        # !(val & DRIVER_OK): virtio_pci_stop_ioeventfd (ioeventfd is not modelled)
        virtio_set_status(vdev, val & 0xFF)
        what = f"virtio_set_status({val & 0xFF:#04x})"
        if vdev.status == 0:
            virtio_pci_reset(proxy)
            what += ", status 0: virtio_pci_reset"
        if val == DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER and \
                not proxy.config[Config.COMMAND] & Command.MASTER:
            # "Linux before 2.6.34 drives the device without enabling the PCI device bus
            # master bit. Enable it automatically for the guest."
            pci_default_write_config(proxy, Config.COMMAND,
                                     proxy.config[Config.COMMAND] | Command.MASTER, 1)
            what += ", ACKNOWLEDGE|DRIVER: COMMAND.MASTER set for the guest"
        return what
    return f"unexpected address {addr:#x} value {val:#x}: dropped (LOG_GUEST_ERROR)"


def virtio_ioport_read(proxy: VirtIOPCIProxy, addr: int) -> tuple[int, str]:
    """hw/virtio/virtio-pci.c: a read of a legacy register (all ones elsewhere)."""
    vdev = proxy.vdev
    assert vdev is not None
    if addr == LegacyReg.HOST_FEATURES:
        return vdev.host_features & U32, "bits 0-31 of host_features"
    if addr == LegacyReg.GUEST_FEATURES:
        return vdev.guest_features & U32, "guest_features"
    if addr == LegacyReg.QUEUE_PFN:
        return (virtio_queue_get_addr(vdev, vdev.queue_sel) >> VIRTIO_PCI_QUEUE_ADDR_SHIFT) & U32, \
            f"queue {vdev.queue_sel}"
    if addr == LegacyReg.QUEUE_NUM:
        return virtio_queue_get_num(vdev, vdev.queue_sel), f"queue {vdev.queue_sel}"
    if addr == LegacyReg.QUEUE_SEL:
        return vdev.queue_sel, ""
    if addr == LegacyReg.STATUS:
        return vdev.status, ""
    if addr == LegacyReg.ISR:
        ret, vdev.isr = vdev.isr, 0          # qatomic_xchg(&vdev->isr, 0)
        with in_function(proxy.ctx, "pci_irq_deassert"):
            pci_set_irq(proxy, 0)
        return ret, "read clears it; pci_irq_deassert"
    return U32, "no such register: all ones"


def virtio_pci_config_read(proxy: VirtIOPCIProxy, addr: int, size: int) -> int:
    """hw/virtio/virtio-pci.c: BAR0 read — a register below 20, device config above."""
    vdev = proxy.vdev
    if vdev is None:
        return 2**64 - 1
    config = VIRTIO_PCI_CONFIG_OFF(False)
    if addr < config:
        with in_function(proxy.ctx, "virtio_ioport_read"):
            val, what = virtio_ioport_read(proxy, addr)
        shown = val & ((1 << 8 * size) - 1)
        proxy.note(label=f"virtio_pci_config_read {_reg(addr)} = {shown:#x}"
                   + (f" ({what})" if what else ""), reg=_reg(addr), status=vdev.status,
                   isr=vdev.isr, queue_sel=vdev.queue_sel)
        return val
    with in_function(proxy.ctx, "virtio_config_read"):
        val = virtio_config_read(vdev, addr - config, size)
    proxy.note(label=f"virtio_pci_config_read config[{addr - config}] ({size}) = "
               f"{val & ((1 << 8 * size) - 1):#x}", reg=f"config+{addr - config}")
    return val


def virtio_pci_config_write(proxy: VirtIOPCIProxy, addr: int, val: int, size: int) -> None:
    """hw/virtio/virtio-pci.c: BAR0 write — a register below 20, device config above; then
    the main loop's turn for the bottom halves the write scheduled (the device's choice)."""
    vdev = proxy.vdev
    if vdev is None:
        return
    config = VIRTIO_PCI_CONFIG_OFF(False)
    if addr < config:
        with in_function(proxy.ctx, "virtio_ioport_write"):
            what = virtio_ioport_write(proxy, addr, val)
        proxy.note(label=f"virtio_pci_config_write {_reg(addr)} ← {val:#x}: {what}",
                   reg=_reg(addr), status=vdev.status, isr=vdev.isr, queue_sel=vdev.queue_sel)
    else:
        with in_function(proxy.ctx, "virtio_config_write"):
            virtio_config_write(vdev, addr - config, val, size)
        proxy.note(label=f"virtio_pci_config_write config[{addr - config}] ({size}) ← {val:#x}",
                   reg=f"config+{addr - config}")
    if not vdev.bh_deferred:
        run_bottom_halves(vdev)


#: hw/virtio/virtio-pci.c ``virtio_pci_config_ops``: callbacks take 1-4 bytes
virtio_pci_config_ops = MemoryRegionOps(read=virtio_pci_config_read,
                                        write=virtio_pci_config_write,
                                        impl=AccessConstraints(min_access_size=1,
                                                               max_access_size=4),
                                        file=FILE)

__all__ = [
    "MODERN_BAR_SIZE", "MODERN_CAPS", "MSIX_BAR_SIZE", "ModernCap", "VirtIOPCIProxy",
    "modern_capabilities", "pow2ceil", "virtio_ioport_read", "virtio_ioport_write",
    "virtio_pci_config_ops", "virtio_pci_config_read", "virtio_pci_config_write",
    "virtio_pci_reset",
]
