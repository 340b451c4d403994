"""virtio-pci's legacy interface and the virtio core as QEMU 9.2.4 has them.

Everything a guest does goes through real port I/O on the board
(``address_space_rw(machine.address_space_io, …)``, what ``kvm_handle_io`` does
for an IN/OUT exit): config space through 0xCF8/0xCFC, then the legacy
registers in BAR0. :class:`Board` is Linux's legacy driver
(drivers/virtio/virtio_pci_legacy.c) in Python, with a
:class:`vbook.models.vring.Driver` per queue on the same guest memory.
tests/test_virtio_net.py uses it for the data path.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import pytest
from _oracle import need_c, printf_lines, program, run_c
from _sources import LINUX_6_1, LINUX_6_1_REV, QEMU_9, function_body, git_show

from vbook.devices import net_client as net
from vbook.devices.machine import Machine
from vbook.devices.net_client import MemoryBackend
from vbook.devices.pci import PCI_SLOT, Command, Config, Status, config_address
from vbook.devices.virtio import virtio_set_features
from vbook.devices.virtio_net import VirtIONet, VirtIONetPCI, add_virtio_net
from vbook.devices.virtio_pci import (
    MODERN_BAR_SIZE,
    MODERN_CAPS,
    MSIX_BAR_SIZE,
    pow2ceil,
)
from vbook.memory import GuestMemory
from vbook.models import virtio_consts as vc
from vbook.models.qemu_memory import address_space_rw
from vbook.models.virtio_consts import DeviceStatus as S
from vbook.models.virtio_consts import LegacyReg as R
from vbook.models.virtio_consts import NetFeature as NF
from vbook.models.vring import Driver, Layout
from vbook.trace import Trace, TraceRecorder

IOBASE = 0xC000                   # where SeaBIOS puts the first I/O BAR on -M pc
RINGS = {0: 0x10000, 1: 0x20000, 2: 0x30000}
BUFS = 0x40000
RAM = 0x100000
MAC = bytes.fromhex("525400123456")
#: QEMU 9.2.4's offer for a backend without vnet headers, bits 0-31 (module docstring of
#: vbook.devices.virtio_net): CTRL_GUEST_OFFLOADS, MAC, GSO, MRG_RXBUF, STATUS, CTRL_VQ/RX/VLAN/
#: RX_EXTRA, GUEST_ANNOUNCE, CTRL_MAC_ADDR, NOTIFY_ON_EMPTY, ANY_LAYOUT, INDIRECT_DESC,
#: EVENT_IDX, UNUSED(30)
HOST_FEATURES_NO_VNET_HDR = 0x79BF8064


class Board:
    """A board with one virtio-net-pci and 1 MiB of RAM; BAR0 at 0xC000, IO and bus master on.

    The methods are Linux's legacy driver: :meth:`probe` is ``virtio_dev_probe`` +
    ``vp_find_vqs`` (reset, ACKNOWLEDGE, DRIVER, features, ``setup_vq`` per queue,
    DRIVER_OK). ``features`` are the bits the driver wants (``None``: all offered).
    """

    def __init__(self, backend: Any = None, props: dict | None = None, deferred: bool = False,
                 ram: int = RAM, command: int = Command.IO | Command.MASTER,
                 device: VirtIONetPCI | None = None):
        self.rec = TraceRecorder()
        self.m = Machine(ram=GuestMemory(ram, record=False))
        self.m.ctx.trace = self.rec
        self.backend = backend if backend is not None else MemoryBackend()
        if device is None:
            self.dev = add_virtio_net(self.m, self.backend, props=props, tx_bh_deferred=deferred)
        else:
            nd = net.net_init_backend(self.backend, "net0", self.m.ctx)
            device.netdev = device.net.netdev = nd
            self.dev = device
            self.m.add_pci_device(device)
            self.m.netdevs.append(nd)
        self.slot = PCI_SLOT(self.dev.devfn)
        self.cfg(Config.BASE_ADDRESS_0, IOBASE)
        self.cfg(Config.COMMAND, command, 2)
        self.drv: dict[int, Driver] = {}
        self.kicks: dict[int, int] = {0: 0, 1: 0, 2: 0}

    @property
    def n(self) -> VirtIONet:
        return self.dev.net

    @property
    def ram(self) -> GuestMemory:
        assert self.m.ram is not None
        return self.m.ram

    # config space and ports ---------------------------------------------------------------
    def _addr(self, reg: int) -> None:
        address_space_rw(self.m.address_space_io, 0xCF8, bytearray(
            config_address(0, self.slot, 0, reg).to_bytes(4, "little")), True)

    def cfg(self, reg: int, value: int, size: int = 4) -> None:
        self._addr(reg)
        address_space_rw(self.m.address_space_io, 0xCFC + (reg & 3),
                         bytearray(value.to_bytes(size, "little")), True)

    def cfg_read(self, reg: int, size: int = 4) -> int:
        self._addr(reg)
        buf = bytearray(size)
        address_space_rw(self.m.address_space_io, 0xCFC + (reg & 3), buf, False)
        return int.from_bytes(buf, "little")

    def out(self, off: int, value: int, size: int) -> None:
        address_space_rw(self.m.address_space_io, IOBASE + off,
                         bytearray(value.to_bytes(size, "little")), True)

    def inp(self, off: int, size: int) -> int:
        buf = bytearray(size)
        address_space_rw(self.m.address_space_io, IOBASE + off, buf, False)
        return int.from_bytes(buf, "little")

    def status(self) -> int:
        return self.inp(R.STATUS, 1)

    def isr(self) -> int:
        return self.inp(R.ISR, 1)

    # Linux's legacy driver ----------------------------------------------------------------
    def reset(self) -> None:
        """``vp_reset``: status 0, then read it back (flush)."""
        self.out(R.STATUS, 0, 1)
        assert self.status() == 0

    def setup_vq(self, index: int, base: int | None = None, indirect: bool = False) -> Driver:
        """``setup_vq``: select, read the size, check it is not active, ring, PFN."""
        base = RINGS[index] if base is None else base
        self.out(R.QUEUE_SEL, index, 2)
        num = self.inp(R.QUEUE_NUM, 2)
        assert num and self.inp(R.QUEUE_PFN, 4) == 0
        event = bool(self.n.guest_features >> 29 & 1)

        def notify(i: int = index) -> None:
            self.kicks[i] += 1
            self.out(R.QUEUE_NOTIFY, i, 2)   # vp_notify: iowrite16(vq->index, vq->priv)

        pool = (base + 0x4000, 0x4000) if indirect else None
        d = Driver(self.ram, Layout(num, base), event_idx=event, indirect=indirect,
                   indirect_pool=pool, notify=notify)
        self.out(R.QUEUE_PFN, base >> vc.VIRTIO_PCI_QUEUE_ADDR_SHIFT, 4)
        self.drv[index] = d
        return d

    def probe(self, features: int | None = None, queues: tuple[int, ...] = (0, 1),
              driver_ok: bool = True, indirect: bool = False) -> int:
        self.reset()
        self.out(R.STATUS, S.ACKNOWLEDGE, 1)
        self.out(R.STATUS, S.ACKNOWLEDGE | S.DRIVER, 1)
        host = self.inp(R.HOST_FEATURES, 4)
        guest = host if features is None else host & features
        self.out(R.GUEST_FEATURES, guest, 4)     # vp_finalize_features
        for q in queues:
            self.setup_vq(q, indirect=indirect)
        if driver_ok:
            self.out(R.STATUS, S.ACKNOWLEDGE | S.DRIVER | S.DRIVER_OK, 1)
        return guest

    @property
    def hdr_len(self) -> int:
        return vc.HDR_SIZE_MRG if self.n.guest_features >> NF.MRG_RXBUF & 1 else vc.HDR_SIZE

    # what happened ------------------------------------------------------------------------
    def fns(self, actor: str | None = None) -> list[str]:
        return [ev["fn"] for ev in self.rec.events if "fn" in ev.data
                and (actor is None or ev.actor == actor)]

    def events(self, fn: str) -> list:
        return [ev for ev in self.rec.events if ev.data.get("fn") == fn]

    def line(self) -> int:
        """The level of the device's INTx pin (``irq_state``)."""
        return self.dev.irq_state & 1


def frame(n: int = 60, dst: bytes = b"\xff" * 6, src: bytes = MAC) -> bytes:
    body = bytes((7 * i + 3) & 0xFF for i in range(max(n - 14, 0)))
    return (dst + src + b"\x88\xb5" + body)[:n]


# --- identity and BAR0 ----------------------------------------------------------------------

def test_identity_in_config_space_as_linux_probes_it():
    b = Board()
    assert b.cfg_read(Config.VENDOR_ID, 2) == 0x1AF4
    assert b.cfg_read(Config.DEVICE_ID, 2) == 0x1000 == vc.TransId.NET
    assert b.cfg_read(Config.DEVICE_ID, 2) in vc.LEGACY_DEVICE_IDS
    assert b.cfg_read(Config.REVISION_ID, 1) == vc.VIRTIO_PCI_ABI_VERSION == 0
    assert b.cfg_read(Config.CLASS_PROG, 1) == 0 and b.cfg_read(Config.CLASS_DEVICE, 2) == 0x0200
    assert b.cfg_read(Config.SUBSYSTEM_VENDOR_ID, 2) == 0x1AF4
    assert b.cfg_read(Config.SUBSYSTEM_ID, 2) == vc.VirtioId.NET == 1
    assert b.cfg_read(Config.INTERRUPT_PIN, 1) == 1
    assert b.cfg_read(Config.HEADER_TYPE, 1) == 0
    assert not b.cfg_read(Config.STATUS, 2) & Status.CAP_LIST        # no capabilities modelled
    assert "Ethernet controller: PCI device 1af4:1000" in b.m.info_pci()
    assert "PCI subsystem 1af4:0001" in b.m.info_pci()


def test_bar0_is_32_io_ports_and_maps_at_the_programmed_port():
    b = Board()
    b.cfg(Config.COMMAND, 0, 2)
    b.cfg(Config.BASE_ADDRESS_0, 0xFFFFFFFF)
    assert b.cfg_read(Config.BASE_ADDRESS_0) == 0xFFFFFFE1          # ~(32 - 1) | SPACE_IO
    for reg in (Config.BASE_ADDRESS_1, Config.BASE_ADDRESS_2, Config.BASE_ADDRESS_4):
        b.cfg(reg, 0xFFFFFFFF)
        assert b.cfg_read(reg) == 0                                  # only BAR0
    b.cfg(Config.BASE_ADDRESS_0, IOBASE)
    b.cfg(Config.COMMAND, Command.IO, 2)
    assert "000000000000c000-000000000000c01f (prio 0, i/o): virtio-pci  [virtio-net-pci]" \
        in b.m.info_mtree()
    assert b.dev.bar is not None and b.dev.bar.size == 32 == pow2ceil(20 + b.n.config_len)


@pytest.mark.parametrize("props, config_len, bar", [
    ({}, 8, 32),                           # MAC + status
    ({"status": False}, 6, 32),            # MAC only: 26 → 32
    ({"host_mtu": 1400}, 12, 32),          # + MTU
    ({"speed": 1000}, 17, 64),             # + speed/duplex: 37 → 64
])
def test_bar0_size_is_pow2ceil_of_registers_plus_config(props, config_len, bar):
    b = Board(props=props)
    assert b.n.config_len == config_len
    assert b.dev.bar is not None and b.dev.bar.size == bar


# --- the legacy registers --------------------------------------------------------------------

def test_host_features_window_shows_bits_0_to_31_of_qemus_offer():
    b = Board()
    vdev = b.n
    assert b.inp(R.HOST_FEATURES, 4) == vdev.host_features & 0xFFFFFFFF == HOST_FEATURES_NO_VNET_HDR
    assert vdev.host_features >> vc.TransportFeature.RING_RESET & 1       # bit 40, unseen
    assert not vdev.host_features >> vc.TransportFeature.VERSION_1 & 1    # disable-modern=on
    for bit in (NF.CSUM, NF.GUEST_CSUM, NF.HOST_TSO4, NF.GUEST_TSO4, NF.MQ):
        assert not vdev.host_features >> bit & 1                          # no vnet header
    # a 1-byte read of offset 0 is the low byte (the memory layer cuts the 32-bit answer)
    assert b.inp(R.HOST_FEATURES, 1) == HOST_FEATURES_NO_VNET_HDR & 0xFF


def test_guest_features_keep_only_what_is_offered_and_bad_feature_gives_bad_features():
    b = Board()
    b.out(R.GUEST_FEATURES, 0xFFFFFFFF & ~(1 << vc.VIRTIO_F_BAD_FEATURE), 4)
    assert b.inp(R.GUEST_FEATURES, 4) == HOST_FEATURES_NO_VNET_HDR & ~(1 << 30)
    assert b.n.guest_hdr_len == 12                                   # MRG_RXBUF acked
    b.out(R.GUEST_FEATURES, 1 << vc.VIRTIO_F_BAD_FEATURE, 4)        # "does not negotiate"
    # virtio_net_bad_features: MAC|CSUM|HOST_TSO4|HOST_TSO6|HOST_ECN, cut to what is offered
    assert b.inp(R.GUEST_FEATURES, 4) == 1 << NF.MAC
    assert b.n.guest_hdr_len == 10
    set_ev = b.events("virtio_set_features")[-1]
    assert "UNUSED(30)" not in set_ev.label                          # the bad set, as written


def test_queue_sel_num_pfn_registers():
    b = Board()
    sizes = []
    for q in (0, 1, 2, 3, 1023):
        b.out(R.QUEUE_SEL, q, 2)
        assert b.inp(R.QUEUE_SEL, 2) == q
        sizes.append(b.inp(R.QUEUE_NUM, 2))
        assert b.inp(R.QUEUE_PFN, 4) == 0
    assert sizes == [256, 256, 64, 0, 0]                             # rx, tx, ctrl
    b.out(R.QUEUE_SEL, 1024, 2)                                      # >= VIRTIO_QUEUE_MAX
    assert b.inp(R.QUEUE_SEL, 2) == 1023
    b.out(R.QUEUE_SEL, 3, 2)
    b.out(R.QUEUE_PFN, 0x50, 4)                                      # a queue that does not exist
    assert b.inp(R.QUEUE_PFN, 4) == 0
    b.out(R.QUEUE_SEL, 1, 2)
    b.out(R.QUEUE_PFN, 0x20, 4)
    assert b.inp(R.QUEUE_PFN, 4) == 0x20
    vq = b.n.vq[1]
    assert (vq.desc, vq.avail, vq.used) == (0x20000, 0x21000, 0x22000)   # 256: used at +0x2000
    assert Layout(256, 0x20000).used == vq.used


def test_qemu_legacy_ring_layout_is_linux_vring_init():
    """``virtio_queue_update_rings`` aligns ``avail->ring[num]``, Linux ``used_event`` after
    it: the same used ring for every power-of-two size."""
    for k in range(11):
        num = 1 << k
        desc = 0x10000
        avail = desc + 16 * num
        used = (avail + 4 + 2 * num + 4095) & ~4095
        lay = Layout(num, desc)
        assert (lay.avail, lay.used) == (avail, used)


def test_status_handshake_legacy_has_no_features_ok():
    b = Board(command=Command.IO)             # bus master off, as after pci_enable_device
    b.reset()
    seen = []
    b.out(R.STATUS, S.ACKNOWLEDGE, 1)
    seen.append(b.status())
    b.out(R.STATUS, S.ACKNOWLEDGE | S.DRIVER, 1)
    seen.append(b.status())
    # QEMU: exactly ACKNOWLEDGE|DRIVER turns bus mastering on for pre-2.6.34 Linux
    assert b.cfg_read(Config.COMMAND, 2) & Command.MASTER
    b.out(R.GUEST_FEATURES, b.inp(R.HOST_FEATURES, 4), 4)
    b.setup_vq(0)
    b.setup_vq(1)
    b.out(R.STATUS, S.ACKNOWLEDGE | S.DRIVER | S.DRIVER_OK, 1)
    seen.append(b.status())
    assert seen == [1, 3, 7]
    assert b.n.started and not b.n.status & S.FEATURES_OK
    labels = [e.label for e in b.events("virtio_set_status")]
    assert any("0x03 → 0x07" in lab for lab in labels)


def test_status_zero_and_pfn_zero_reset_the_device():
    for how in ("status", "pfn"):
        b = Board()
        b.probe()
        b.out(R.QUEUE_SEL, 1, 2)
        assert b.n.guest_features and b.n.vq[0].desc and b.n.queue_sel == 1
        if how == "status":
            b.out(R.STATUS, 0, 1)
        else:
            b.out(R.QUEUE_PFN, 0, 4)          # "pa == 0": virtio_pci_reset, not just the queue
        assert b.status() == 0 and b.inp(R.GUEST_FEATURES, 4) == 0
        assert b.inp(R.QUEUE_SEL, 2) == 0
        for q in (0, 1):
            b.out(R.QUEUE_SEL, q, 2)
            assert b.inp(R.QUEUE_PFN, 4) == 0 and b.inp(R.QUEUE_NUM, 2) == 256
        assert "virtio_reset" in b.fns()


def test_garbage_writes_and_reads_get_qemus_answers():
    b = Board()
    b.out(R.STATUS, 0xFF, 1)                          # stored as written
    assert b.status() == 0xFF
    b.out(R.STATUS, 0x1FF, 2)                         # val & 0xFF
    assert b.status() == 0xFF
    b.out(R.STATUS, 0, 1)
    b.out(1, 0x78, 1)                                 # inside HOST_FEATURES: "unexpected address"
    b.out(R.QUEUE_NUM, 7, 2)                          # read-only in legacy
    b.out(R.ISR, 3, 1)
    assert b.inp(1, 1) == 0xFF and b.inp(R.QUEUE_NUM + 1, 1) == 0xFF
    b.out(R.QUEUE_SEL, 0, 2)
    assert b.inp(R.QUEUE_NUM, 2) == 256 and b.isr() == 0
    b.out(R.QUEUE_NOTIFY, 5, 2)                       # no queue 5
    b.out(R.QUEUE_NOTIFY, 1, 2)                       # no ring yet
    b.out(R.QUEUE_NOTIFY, 0xFFFF, 2)
    assert any("unexpected address 0x1" in e.label for e in b.rec.events)
    assert any("no ring" in e.label for e in b.events("virtio_queue_notify"))
    # past the device config: all ones (virtio_config_readl returns (uint32_t)-1)
    assert b.inp(20 + 8, 4) == 0xFFFFFFFF and b.inp(20 + 8, 2) == 0xFFFF
    assert b.inp(20 + 7, 2) == 0xFF00   # unaligned: split in bytes, config[7] = 0, [8] past the end
    b.out(20 + 8, 0xAB, 1)                            # dropped
    assert not b.n.broken


def test_a_32_bit_access_across_status_and_isr_is_split_like_qemu():
    b = Board()
    b.probe()
    b.n.isr = 1
    # 4 bytes at 18: unaligned for this region (impl.unaligned off) → 2 + 2; ISR is not read
    v = b.inp(R.STATUS, 4)
    assert v & 0xFFFF == 7 and v >> 16 == int.from_bytes(MAC[:2], "little")
    assert b.n.isr == 1


def test_device_config_mac_status_and_legacy_mac_write():
    b = Board()
    assert bytes(b.inp(20 + i, 1) for i in range(6)) == MAC
    assert b.inp(20 + vc.NetConfig.STATUS, 2) == vc.NetStatus.LINK_UP
    assert b.inp(20, 4) == int.from_bytes(MAC[:4], "little")
    new = bytes.fromhex("020000abcdef")
    b.out(R.GUEST_FEATURES, 1 << NF.MAC, 4)          # a driver without CTRL_MAC_ADDR
    for i, byte in enumerate(new):                    # vp_set: iowrite8 each byte
        b.out(20 + i, byte, 1)
    assert b.n.mac == new
    assert bytes(b.inp(20 + i, 1) for i in range(6)) == new
    b.out(R.STATUS, 0, 1)                             # reset: the MAC from -device mac=
    assert b.n.mac == MAC


# --- interrupts ---------------------------------------------------------------------------------

def test_isr_read_to_clear_lowers_intx():
    b = Board()
    b.probe(features=1 << NF.MAC)
    tx = b.drv[1]
    b.ram.write(BUFS, bytes(10) + frame())
    tx.add(out=[(BUFS, 70)])
    tx.kick()
    assert b.backend.sent == [frame()]
    pin = (0 + b.slot - 1) & 3                        # pc_pci_slot_get_pirq for INTA
    assert b.n.isr == 1 and b.line() == 1 and b.m.pirq[pin] == 1
    assert b.cfg_read(Config.STATUS, 2) & Status.INTERRUPT
    assert b.isr() == 1                               # the read returns it …
    assert b.line() == 0 and b.m.pirq[pin] == 0       # … and lowers the line
    assert not b.cfg_read(Config.STATUS, 2) & Status.INTERRUPT
    assert b.isr() == 0
    assert tx.get_used() == (0, 0)                    # TX elements come back with length 0


def test_intx_disable_masks_the_line_but_not_isr():
    b = Board()
    b.probe(features=1 << NF.MAC)
    b.cfg(Config.COMMAND, Command.IO | Command.MASTER | Command.INTX_DISABLE, 2)
    tx = b.drv[1]
    b.ram.write(BUFS, bytes(10) + frame())
    tx.add(out=[(BUFS, 70)])
    tx.kick()
    assert b.n.isr == 1 and b.line() == 1 and b.m.pirq == [0, 0, 0, 0]


def test_link_change_is_a_config_interrupt_after_driver_ok_only():
    b = Board()
    assert b.n.nic is not None
    net.qemu_set_link(b.n.nic, False)                 # before DRIVER_OK: status changes, no irq
    assert b.inp(20 + vc.NetConfig.STATUS, 2) == 0 and b.n.isr == 0
    net.qemu_set_link(b.n.nic, True)
    b.probe()
    net.qemu_set_link(b.n.nic, False)
    assert b.inp(20 + vc.NetConfig.STATUS, 2) == 0
    assert b.line() == 1 and b.isr() == vc.Isr.QUEUE | vc.Isr.CONFIG
    assert b.line() == 0
    net.qemu_set_link(b.n.nic, True)
    assert b.inp(20 + vc.NetConfig.STATUS, 2) == 1 and b.isr() == 3


def test_bus_master_clear_disables_the_device_and_drops_driver_ok():
    b = Board()
    b.probe(features=1 << NF.MAC)
    b.cfg(Config.COMMAND, Command.IO, 2)              # virtio_write_config: MASTER clear
    assert b.n.disabled and b.status() == S.ACKNOWLEDGE | S.DRIVER
    tx = b.drv[1]
    b.ram.write(BUFS, bytes(10) + frame())
    tx.add(out=[(BUFS, 70)])
    tx.kick()
    assert b.backend.sent == [] and b.n.isr == 0
    b.cfg(Config.COMMAND, Command.IO | Command.MASTER, 2)
    b.out(R.STATUS, 7, 1)
    b.out(R.QUEUE_NOTIFY, 1, 2)
    assert b.backend.sent == [frame()]


# --- bad rings and bad PFNs ------------------------------------------------------------------------

def test_pfn_wholly_outside_ram_is_no_error_the_queue_reads_zeros():
    b = Board(ram=0x40000)
    b.reset()
    b.out(R.STATUS, 3, 1)
    b.out(R.GUEST_FEATURES, 1 << NF.MAC, 4)
    b.out(R.QUEUE_SEL, 1, 2)
    b.out(R.QUEUE_PFN, 0xFFFF0, 4)                    # 0xFFFF0000: no RAM there
    assert b.inp(R.QUEUE_PFN, 4) == 0xFFFF0 and not b.n.broken
    b.out(R.STATUS, 7, 1)
    b.out(R.QUEUE_NOTIFY, 1, 2)                       # avail->idx reads 0: nothing to send
    assert b.backend.sent == [] and not b.n.broken and b.status() == 7
    ev = b.events("virtio_init_region_cache")[-1]
    assert list(ev["outside"]) == ["desc", "used", "avail"]


@pytest.mark.parametrize("ram, pfn, what", [
    (0x3F800, 0x3F, "desc"),     # desc [0x3F000, 0x40000) runs past RAM's end at 0x3F800
    (0x40800, 0x3E, "used"),     # used [0x40000, 0x40804) past 0x40800; desc, avail in RAM
    (0x3F100, 0x3E, "avail"),    # avail [0x3F000, 0x3F204) past 0x3F100; used wholly outside
])
def test_a_ring_area_running_past_the_end_of_ram_cannot_be_mapped(ram, pfn, what):
    b = Board(ram=ram)
    b.probe(features=1 << NF.MAC, queues=(), driver_ok=False)
    b.out(R.QUEUE_SEL, 1, 2)
    b.out(R.QUEUE_PFN, pfn, 4)
    err = b.events("virtio_error")
    assert [e["message"] for e in err] == [f"Cannot map {what}"]
    assert b.n.broken and b.n.vq[1].ring is None
    assert b.status() == 3                             # legacy: no NEEDS_RESET
    b.out(R.STATUS, 7, 1)
    b.out(R.QUEUE_NOTIFY, 1, 2)
    assert b.backend.sent == []
    b.out(R.STATUS, 0, 1)
    assert not b.n.broken


def test_malformed_ring_breaks_the_device_until_reset():
    b = Board()
    b.probe(features=1 << NF.MAC)
    tx = b.drv[1]
    lay = tx.layout
    b.ram.write(BUFS, bytes(10) + frame())
    tx.add(out=[(BUFS, 70)])
    b.ram.write_u16(lay.avail + 4, 300)               # avail->ring[0] = 300 > num
    tx.kick()
    err = b.events("virtio_error")
    assert [e["message"] for e in err] == ["Guest says index 300 is available"]
    assert b.n.broken and b.backend.sent == []
    assert b.status() == 7                             # legacy: no NEEDS_RESET
    b.ram.write_u16(lay.avail + 4, 0)                 # fixing the ring does not help …
    b.out(R.QUEUE_NOTIFY, 1, 2)
    assert b.backend.sent == [] and "ignored" in b.events("virtio_queue_notify")[-1].label
    pops = len(b.events("virtqueue_pop"))
    b.m.main_loop_poll()
    assert len(b.events("virtqueue_pop")) == pops
    b.probe(features=1 << NF.MAC)                      # … a reset does
    b.ram.write(BUFS, bytes(10) + frame())
    b.drv[1].add(out=[(BUFS, 70)])
    b.drv[1].kick()
    assert b.backend.sent == [frame()] and not b.n.broken


def test_virtio_error_with_version_1_sets_needs_reset_and_a_config_interrupt():
    dev = VirtIONetPCI(macaddr=MAC, disable_modern=False)   # the transitional device's offer
    b = Board(device=dev)
    assert b.n.host_features >> vc.TransportFeature.VERSION_1 & 1
    b.probe(features=1 << NF.MAC)
    # what the modern interface would do (a legacy driver cannot reach bit 32):
    virtio_set_features(b.n, b.n.guest_features | 1 << vc.TransportFeature.VERSION_1)
    tx = b.drv[1]
    b.ram.write(BUFS, bytes(12) + frame())
    head = tx.add(out=[(BUFS, 72)])
    b.ram.write(tx.layout.desc + 16 * head + 12, struct.pack("<HH", 1, 300))  # NEXT → 300 >= num
    tx.kick()
    assert [e["message"] for e in b.events("virtio_error")] == ["Desc next is 300"]
    assert b.status() == 7 | S.NEEDS_RESET
    assert b.isr() == 3


def test_trace_names_qemus_functions_and_round_trips():
    b = Board()
    b.probe()
    tx = b.drv[1]
    b.ram.write(BUFS, bytes(12) + frame())
    tx.add(out=[(BUFS, 72)])
    tx.kick()
    fns = b.fns("device")
    for fn in ("virtio_pci_config_write", "virtio_pci_config_read", "virtio_set_status",
               "virtio_set_features", "virtio_init_region_cache", "virtio_queue_notify",
               "virtio_net_handle_tx_bh", "virtio_net_tx_bh", "virtio_net_flush_tx",
               "virtqueue_pop", "virtqueue_fill", "virtqueue_flush", "virtio_should_notify",
               "virtio_queue_set_notification", "virtio_irq"):
        assert fn in fns, fn
    pop = b.events("virtqueue_pop")[-1]
    assert pop["vq"] == 1 and pop["vq_name"] == "tx" and pop["head"] == 0
    assert pop["last_avail_idx"] == 1 and pop.actor == "device"
    bh = b.events("virtio_net_tx_bh")[0]
    assert bh.data["thread"] == "main" and bh.data["bql"] is True
    kick = b.events("virtio_pci_config_write")[-1]
    assert kick["reg"] == "QUEUE_NOTIFY"
    t = b.rec.freeze()
    assert Trace.from_json(t.to_json()) == t


def test_a_ring_is_remade_when_the_boards_ram_is_another_view_of_it():
    b = Board()
    b.probe(features=1 << NF.MAC)
    tx = b.drv[1]
    for _ in range(3):
        b.ram.write(BUFS, bytes(10) + frame())
        tx.add(out=[(BUFS, 70)])
        tx.kick()
        tx.get_used()
    old = b.n.vq[1].ring
    b.m.ram = GuestMemory.over(b.ram)                  # what run() does: the vCPU's own RAM
    b.ram.write(BUFS, bytes(10) + frame(61))
    tx.add(out=[(BUFS, 71)])
    tx.kick()
    assert b.n.vq[1].ring is not old and b.n.vq[1].last_avail_idx == 4
    assert b.backend.sent[-1] == frame(61)


# --- the modern interface, as data ----------------------------------------------------------------

def test_modern_capabilities_as_qemu_lays_them_out():
    pos = [(c.name, c.pos) for c in MODERN_CAPS]
    assert pos == [("common", 0x40), ("isr", 0x50), ("device", 0x60), ("notify", 0x70),
                   ("pci-cfg", 0x84), ("msix", 0x98)]
    notify = MODERN_CAPS[3]
    assert (notify.cfg_type, notify.bar, notify.offset, notify.length,
            notify.notify_off_multiplier) == (vc.PciCapType.NOTIFY_CFG, 4, 0x3000, 0x1000, 4)
    assert MODERN_BAR_SIZE == 0x4000 and MSIX_BAR_SIZE == 0x1000
    assert all(c.pos % 4 == 0 and c.pos + c.size <= 256 for c in MODERN_CAPS)


# --- sources and headers ----------------------------------------------------------------------------

def test_register_switch_matches_qemu_source():
    src = git_show(QEMU_9, "HEAD", "hw/virtio/virtio-pci.c")
    w = function_body(src, "static void virtio_ioport_write(")
    cases = re.findall(r"case (VIRTIO_\w+):", w)
    assert cases == ["VIRTIO_PCI_GUEST_FEATURES", "VIRTIO_PCI_QUEUE_PFN", "VIRTIO_PCI_QUEUE_SEL",
                     "VIRTIO_PCI_QUEUE_NOTIFY", "VIRTIO_PCI_STATUS", "VIRTIO_MSI_CONFIG_VECTOR",
                     "VIRTIO_MSI_QUEUE_VECTOR"]
    assert "virtio_pci_reset(DEVICE(proxy));" in w.split("case VIRTIO_PCI_QUEUE_SEL")[0]
    r = function_body(src, "static uint32_t virtio_ioport_read(")
    assert "qatomic_xchg(&vdev->isr, 0)" in r and "pci_irq_deassert" in r
    plugged = function_body(src, "static void virtio_pci_device_plugged(")
    assert "size = pow2ceil(size);" in plugged and "VIRTIO_PCI_REGION_SIZE" in plugged
    v = git_show(QEMU_9, "HEAD", "hw/virtio/virtio.c")
    err = function_body(v, "void G_GNUC_PRINTF(2, 3) virtio_error(")
    assert "VIRTIO_F_VERSION_1" in err and "VIRTIO_CONFIG_S_NEEDS_RESET" in err
    assert "vdev->broken = true;" in err
    h = git_show(QEMU_9, "HEAD", "include/hw/virtio/virtio.h")
    common = dict(re.findall(r'DEFINE_PROP_BIT64\("(\w+)", _state, _field, *\\\s*\w+, (true|false)\)',
                             h))
    from vbook.devices.virtio import VIRTIO_COMMON_PROPERTIES
    assert {k: v == "true" for k, v in common.items()} == \
        {k: on for k, (_, on) in VIRTIO_COMMON_PROPERTIES.items()}
    assert re.search(r"#define VIRTIO_F_BAD_FEATURE (\d+)", h).group(1) == "30"
    assert re.search(r"#define VIRTIO_QUEUE_MAX (\d+)", h).group(1) == "1024"


def test_linux_legacy_driver_expectations():
    src = git_show(LINUX_6_1, LINUX_6_1_REV, "drivers/virtio/virtio_pci_legacy_dev.c")
    assert "pci_dev->device < 0x1000 || pci_dev->device > 0x103f" in src
    assert "pci_dev->revision != VIRTIO_PCI_ABI_VERSION" in src
    setup = git_show(LINUX_6_1, LINUX_6_1_REV, "drivers/virtio/virtio_pci_legacy.c")
    assert "VIRTIO_PCI_VRING_ALIGN" in setup and "VIRTIO_PCI_QUEUE_ADDR_SHIFT" in setup


HEADERS = ["/usr/include/linux/virtio_pci.h", "/usr/include/linux/virtio_config.h",
           "/usr/include/linux/virtio_net.h", "/usr/include/linux/virtio_ids.h",
           "/usr/include/linux/virtio_ring.h"]


def _oracle_exprs() -> dict[str, str]:
    e: dict[str, str] = {}
    for r in vc.LegacyReg:
        e[f"reg.{r.name}"] = {"MSI_CONFIG_VECTOR": "VIRTIO_MSI_CONFIG_VECTOR",
                              "MSI_QUEUE_VECTOR": "VIRTIO_MSI_QUEUE_VECTOR"}.get(
            r.name, f"VIRTIO_PCI_{r.name}")
    for s in vc.DeviceStatus:
        e[f"status.{s.name}"] = f"VIRTIO_CONFIG_S_{s.name}"
    for c in vc.PciCapType:
        e[f"cap.{c.name}"] = f"VIRTIO_PCI_CAP_{c.name}"
    for c in vc.PciCap:
        e[f"capoff.{c.name}"] = ("VIRTIO_PCI_NOTIFY_CAP_MULT" if c.name == "NOTIFY_CAP_MULT"
                                 else f"VIRTIO_PCI_CAP_{c.name}")
    for c in vc.CommonCfg:
        if c.name not in ("Q_NDATA", "Q_RESET"):
            e[f"common.{c.name}"] = f"VIRTIO_PCI_COMMON_{c.name}"
    for i in vc.VirtioId:
        e[f"id.{i.name}"] = f"VIRTIO_ID_{'9P' if i.name == 'P9' else i.name}"
    for i in vc.TransId:
        e[f"trans.{i.name}"] = f"VIRTIO_TRANS_ID_{'9P' if i.name == 'P9' else i.name}"
    for f in vc.NetFeature:
        if f not in vc.NET_FEATURES_NOT_IN_UAPI_6_1:
            e[f"net.{f.name}"] = f"VIRTIO_NET_F_{f.name}"
    for f in vc.TransportFeature:
        e[f"tf.{f.name}"] = f"VIRTIO_F_{f.name}"
    for f in vc.RingFeature:
        e[f"rf.{f.name}"] = f"VIRTIO_RING_F_{f.name}"
    for s in vc.NetStatus:
        e[f"ns.{s.name}"] = f"VIRTIO_NET_S_{s.name}"
    for f in vc.NetHdrFlag:
        e[f"hf.{f.name}"] = f"VIRTIO_NET_HDR_F_{f.name}"
    for g in vc.NetHdrGso:
        e[f"gso.{g.name}"] = f"VIRTIO_NET_HDR_GSO_{g.name}"
    for c in vc.NetCtrlClass:
        e[f"ctrl.{c.name}"] = f"VIRTIO_NET_CTRL_{c.name}"
    for c in vc.NetCtrlRx:
        e[f"rx.{c.name}"] = f"VIRTIO_NET_CTRL_RX_{c.name}"
    for c in vc.NetCtrlMac:
        e[f"mac.{c.name}"] = f"VIRTIO_NET_CTRL_MAC_{c.name}"
    for c in vc.NetCtrlVlan:
        e[f"vlan.{c.name}"] = f"VIRTIO_NET_CTRL_VLAN_{c.name}"
    for c in vc.NetCtrlMq:
        e[f"mq.{c.name}"] = f"VIRTIO_NET_CTRL_MQ_{c.name}"
    for c in vc.NetConfig:
        e[f"cfg.{c.name}"] = f"offsetof(struct virtio_net_config, {c.name.lower()})"
    e.update({
        "VIRTIO_PCI_ABI_VERSION": "VIRTIO_PCI_ABI_VERSION",
        "VIRTIO_PCI_QUEUE_ADDR_SHIFT": "VIRTIO_PCI_QUEUE_ADDR_SHIFT",
        "VIRTIO_PCI_VRING_ALIGN": "VIRTIO_PCI_VRING_ALIGN",
        "VIRTIO_PCI_ISR_CONFIG": "VIRTIO_PCI_ISR_CONFIG",
        "VIRTIO_MSI_NO_VECTOR": "VIRTIO_MSI_NO_VECTOR",
        "VIRTIO_TRANSPORT_F_START": "VIRTIO_TRANSPORT_F_START",
        "VIRTIO_TRANSPORT_F_END": "VIRTIO_TRANSPORT_F_END",
        "VIRTIO_NET_OK": "VIRTIO_NET_OK", "VIRTIO_NET_ERR": "VIRTIO_NET_ERR",
        "VIRTIO_NET_CTRL_ANNOUNCE_ACK": "VIRTIO_NET_CTRL_ANNOUNCE_ACK",
        "VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET": "VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET",
        "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN": "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN",
        "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX": "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX",
        "cfg0": "VIRTIO_PCI_CONFIG_OFF(0)", "cfg1": "VIRTIO_PCI_CONFIG_OFF(1)",
        "HDR_SIZE": "sizeof(struct virtio_net_hdr)",
        "HDR_SIZE_MRG": "sizeof(struct virtio_net_hdr_mrg_rxbuf)",
        "HDR_SIZE_V1_HASH": "sizeof(struct virtio_net_hdr_v1_hash)",
        "SIZEOF_VIRTIO_NET_CONFIG": "sizeof(struct virtio_net_config)",
        "SIZEOF_VIRTIO_NET_CTRL_HDR": "sizeof(struct virtio_net_ctrl_hdr)",
        "SIZEOF_VIRTIO_PCI_CAP": "sizeof(struct virtio_pci_cap)",
        "SIZEOF_VIRTIO_PCI_NOTIFY_CAP": "sizeof(struct virtio_pci_notify_cap)",
        "SIZEOF_VIRTIO_PCI_CFG_CAP": "sizeof(struct virtio_pci_cfg_cap)",
        "SIZEOF_VIRTIO_PCI_COMMON_CFG": "sizeof(struct virtio_pci_common_cfg)",
    })
    return e


def _expected(key: str) -> int:
    kind, _, name = key.partition(".")
    enums = {"reg": vc.LegacyReg, "status": vc.DeviceStatus, "cap": vc.PciCapType,
             "capoff": vc.PciCap, "common": vc.CommonCfg, "id": vc.VirtioId, "trans": vc.TransId,
             "net": vc.NetFeature, "tf": vc.TransportFeature, "rf": vc.RingFeature,
             "ns": vc.NetStatus, "hf": vc.NetHdrFlag, "gso": vc.NetHdrGso, "ctrl": vc.NetCtrlClass,
             "rx": vc.NetCtrlRx, "mac": vc.NetCtrlMac, "vlan": vc.NetCtrlVlan, "mq": vc.NetCtrlMq,
             "cfg": vc.NetConfig}
    if name and kind in enums:
        return int(enums[kind][name])
    if key == "cfg0":
        return vc.VIRTIO_PCI_CONFIG_OFF(False)
    if key == "cfg1":
        return vc.VIRTIO_PCI_CONFIG_OFF(True)
    return int(getattr(vc, key))


def test_constants_against_the_uapi_headers(tmp_path):
    need_c(*HEADERS)
    exprs = _oracle_exprs()
    src = program(["stddef.h", *(h.removeprefix("/usr/include/") for h in HEADERS)],
                  printf_lines(exprs))
    got = run_c(tmp_path, src)
    wrong = {k: (got[k], _expected(k)) for k in exprs if got[k] != _expected(k)}
    assert not wrong
    assert len(got) == len(exprs) > 190
