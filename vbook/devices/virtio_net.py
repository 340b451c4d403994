"""virtio-net as QEMU 9.2.4 emulates it (hw/net/virtio-net.c), behind the legacy virtio-pci BAR.

:class:`VirtIONet` is QEMU's ``VirtIONet`` (a :class:`~vbook.devices.virtio.VirtIODevice`);
:class:`VirtIONetPCI` the ``virtio-net-pci`` function that carries it
(:mod:`vbook.devices.virtio_pci`); :func:`add_virtio_net` plugs one into a
:class:`~vbook.devices.machine.Machine` in front of a backend, like
``-netdev tap,id=n0 -device virtio-net-pci,netdev=n0,disable-modern=on,vectors=0``.

**Queues** (``virtio_net_add_queue``, then the control queue): 0 = receiveq
(``rx_queue_size`` 256, ``virtio_net_handle_rx``), 1 = transmitq (``tx_queue_size``
256, ``virtio_net_handle_tx_bh``), 2 = controlq (64, ``virtio_net_handle_ctrl``).

**Config** (``virtio_net_get_config``, 8 bytes: ``config_size`` covers the
fields of the offered features, MAC and STATUS): the MAC from the NIC's
``mac=`` (QEMU's default 52:54:00:12:34:56 and up), then ``status``
(``VIRTIO_NET_S_LINK_UP`` while the backend's link is up). A legacy driver that
did not ack CTRL_MAC_ADDR may write the MAC there (``virtio_net_set_config``).

**Features offered** (``virtio_net_properties`` defaults, then
``virtio_net_get_features``) — the same bits as QEMU for the same backend:

* always: MAC, GSO (legacy; Linux does not know it), MRG_RXBUF, STATUS,
  CTRL_VQ, CTRL_RX, CTRL_VLAN, CTRL_RX_EXTRA, GUEST_ANNOUNCE, CTRL_MAC_ADDR,
  CTRL_GUEST_OFFLOADS, and the transport's INDIRECT_DESC, EVENT_IDX,
  NOTIFY_ON_EMPTY, ANY_LAYOUT, UNUSED(30) and RING_RESET (bit 40, unseen by a
  legacy driver); not VERSION_1 (the model is ``disable-modern=on``);
* only when the backend takes vnet headers (``has_vnet_hdr``: a tap opened with
  ``IFF_VNET_HDR``, QEMU's default): CSUM, GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN,
  HOST_TSO4/6, HOST_ECN — without one QEMU cannot hand a partial checksum or a
  GSO frame to anybody, so it clears them; UFO/USO only if the backend also says
  it can (``ufo``/``uso`` attributes, off by default);
* off as in QEMU's defaults: MQ, RSS, HASH_REPORT, RSC_EXT (and not modelled:
  asking for them is a :class:`~vbook.errors.VbookError`), MTU, SPEED_DUPLEX,
  STANDBY.

``props`` takes QEMU's ``-device`` property names for these — the feature bits
above and the common ones (``event_idx``, ``indirect_desc``, ``notify_on_empty``,
``any_layout``, ``queue_reset``), ``x-txburst``, ``rx_queue_size`` /
``tx_queue_size``, ``host_mtu``, ``speed`` — e.g. ``{"event_idx": False,
"mrg_rxbuf": False, "x-txburst": 16}``; another name is QEMU's "Property
'virtio-net-pci.<name>' not found".

**Header** (``virtio_net_set_features`` → ``virtio_net_set_mrg_rx_bufs``):
``guest_hdr_len`` is 12 (``virtio_net_hdr_mrg_rxbuf``) with MRG_RXBUF, else 10;
``host_hdr_len`` is 0 without vnet headers (QEMU strips the guest's header on TX
and writes a zero one on RX, ``receive_header``) and equal to ``guest_hdr_len``
with them (the header goes to and comes from the backend as is).

**Transmit** (``tx=bh``, QEMU's default): the kick is ``virtio_net_handle_tx_bh``
— notifications off, ``tx_waiting``, the bottom half scheduled; ``virtio_net_tx_bh``
→ ``virtio_net_flush_tx``: pop, strip the header, ``qemu_sendv_packet_async`` to the
backend, ``virtqueue_push(elem, 0)`` + ``virtio_notify``, at most ``tx_burst``
(256) frames; a full burst reschedules the bh, a short one turns notifications
back on and flushes once more (frames the guest added meanwhile). **Where the
bh runs**: in QEMU the main loop thread runs it once the vCPU thread has handled
the exit and dropped the BQL, racing with the guest; the model runs it at once,
right after the QUEUE_NOTIFY write is handled (as if the main loop always won
that race — the trace shows it in thread ``main``), so a run is deterministic
and a frame the guest kicked is on the wire before the guest's next
instruction. With ``tx_bh_deferred=True`` it waits until
:func:`~vbook.devices.virtio.run_bottom_halves` is called (to show the guest
adding frames while notifications are off).

**Receive** (``virtio_net_receive``, the NIC's ``NetClientInfo.receive``, called
when the main loop reads the backend: :meth:`Machine.main_loop_poll`): refused
(the net layer queues the frame) until DRIVER_OK with an RX ring
(``virtio_net_can_receive``; the one frame queued then is *dropped* at DRIVER_OK,
because ``virtio_set_status`` runs ``virtio_net_set_status``'s flush before it
stores the new status — QEMU's order) and while there is no room
(``virtio_net_has_buffers``, which turns RX notifications on to hear of new
buffers — the driver's kick then runs ``virtio_net_handle_rx`` →
``qemu_flush_queued_packets``); then ``receive_filter`` (promiscuous unless the
driver said otherwise through the control queue; MAC table, VLANs), then pop
buffers and write header + frame across them (several with MRG_RXBUF, whose
``num_buffers`` is written last; without it a frame that does not fit one
element is dropped and the element put back), ``virtqueue_fill`` each,
``virtqueue_flush``, ``virtio_notify``.

**Control queue** (``virtio_net_handle_ctrl``): RX modes, MAC table and address,
VLAN filter, ANNOUNCE_ACK, GUEST_OFFLOADS (with vnet headers); MQ answers
``VIRTIO_NET_ERR`` (not offered).

Bad input gets QEMU's answers: a TX element without readable buffers ("virtio-net
header not in first element"), shorter than the header ("virtio-net header is
invalid") or with nothing after it ("virtio-net nothing to send"), an RX element
without writable buffers, a ctrl element without headers — each is
``virtio_error``: the device is broken until reset.

Trace: actor ``device``, ``fn`` the QEMU function; kinds ``tx`` / ``rx`` / ``ctrl``
for the device's steps (with ``vq``, ``head``, ``len``, ``frame`` hex, ``hdr`` hex,
``last_avail_idx``, ``used_idx``), the ring's ``pop`` / ``fill`` / ``flush`` /
``should_notify`` / ``set_notification``, ``irq`` (``virtio_irq``,
``pci_set_irq``), ``bh``; the net layer's ``net`` events and the backend's.

Left out: ``tx=timer`` (``virtio_net_handle_tx_timer``, no virtual clock), vhost
(``vhost_started`` is false: :mod:`vbook.models` has vhost on its own),
multiqueue/RSS/hash reports/RSC, the announce timer (GUEST_ANNOUNCE is offered
but the device never announces: there is no migration), failover, the
``work_around_broken_dhclient`` checksum fix-up (only with vnet headers, for a
DHCP server's UDP frames), ``rxfilter_notify`` QMP events, and
``needs_vnet_hdr_swap`` (big-endian guests).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from vbook.devices import net_client as net
from vbook.devices.net_client import NetClientInfo, NetClientState
from vbook.devices.pci import PCI_CLASS_NETWORK_ETHERNET
from vbook.devices.virtio import (
    QEMUBH,
    VIRTIO_COMMON_PROPERTIES,
    VirtIODevice,
    VirtQueue,
    iov_copy,
    iov_from_buf,
    iov_size,
    iov_to_buf,
    qemu_bh_cancel,
    qemu_bh_schedule,
    virtio_add_queue,
    virtio_error,
    virtio_init,
    virtio_notify,
    virtio_notify_config,
    virtio_queue_empty,
    virtio_queue_enable_notification_and_check,
    virtio_queue_ready,
    virtio_queue_set_notification,
    virtqueue_detach_element,
    virtqueue_drop_all,
    virtqueue_fill,
    virtqueue_flush,
    virtqueue_get_avail_bytes,
    virtqueue_pop,
    virtqueue_push,
    virtqueue_unpop,
)
from vbook.devices.virtio_pci import VirtIOPCIProxy
from vbook.errors import VbookError
from vbook.models.virtio_consts import (
    HDR_SIZE,
    HDR_SIZE_MRG,
    HDR_SIZE_V1_HASH,
    MAC_TABLE_ENTRIES,
    MAX_VLAN,
    SIZEOF_VIRTIO_NET_CONFIG,
    SIZEOF_VIRTIO_NET_CTRL_HDR,
    TX_BURST,
    VIRTIO_NET_CTRL_ANNOUNCE_ACK,
    VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
    VIRTIO_NET_CTRL_QUEUE_SIZE,
    VIRTIO_NET_ERR,
    VIRTIO_NET_OK,
    VIRTIO_NET_RX_QUEUE_DEFAULT_SIZE,
    VIRTIO_NET_TX_QUEUE_DEFAULT_SIZE,
    DeviceStatus,
    NetConfig,
    NetCtrlClass,
    NetCtrlMac,
    NetCtrlRx,
    NetCtrlVlan,
    NetFeature,
    NetStatus,
    TransId,
    TransportFeature,
    VirtioId,
)
from vbook.models.vring_device import VIRTQUEUE_MAX_SIZE, Chain

FILE = "hw/net/virtio-net.c"
F = NetFeature

#: hw/net/virtio-net.c ``virtio_net_properties`` (QEMU 9.2.4): feature property → (bit, default)
VIRTIO_NET_PROPERTIES: dict[str, tuple[int, bool]] = {
    "csum": (F.CSUM, True), "guest_csum": (F.GUEST_CSUM, True), "gso": (F.GSO, True),
    "guest_tso4": (F.GUEST_TSO4, True), "guest_tso6": (F.GUEST_TSO6, True),
    "guest_ecn": (F.GUEST_ECN, True), "guest_ufo": (F.GUEST_UFO, True),
    "guest_announce": (F.GUEST_ANNOUNCE, True), "host_tso4": (F.HOST_TSO4, True),
    "host_tso6": (F.HOST_TSO6, True), "host_ecn": (F.HOST_ECN, True),
    "host_ufo": (F.HOST_UFO, True), "mrg_rxbuf": (F.MRG_RXBUF, True),
    "status": (F.STATUS, True), "ctrl_vq": (F.CTRL_VQ, True), "ctrl_rx": (F.CTRL_RX, True),
    "ctrl_vlan": (F.CTRL_VLAN, True), "ctrl_rx_extra": (F.CTRL_RX_EXTRA, True),
    "ctrl_mac_addr": (F.CTRL_MAC_ADDR, True),
    "ctrl_guest_offloads": (F.CTRL_GUEST_OFFLOADS, True), "mq": (F.MQ, False),
    "rss": (F.RSS, False), "hash": (F.HASH_REPORT, False), "guest_rsc_ext": (F.RSC_EXT, False),
    "guest_uso4": (F.GUEST_USO4, True), "guest_uso6": (F.GUEST_USO6, True),
    "host_uso": (F.HOST_USO, True),
}
#: properties the model has no code behind: turning them on is refused
NOT_MODELLED = {"mq", "rss", "hash", "guest_rsc_ext"}
#: ``feature_sizes`` / ``cfg_size_params``: the config ends after the last field a feature needs
CONFIG_FEATURE_ENDS = ((F.MAC, 6), (F.STATUS, 8), (F.MQ, 10), (F.MTU, 12),
                       (F.SPEED_DUPLEX, 17), (F.RSS, 24), (F.HASH_REPORT, 24))
#: include/hw/virtio/virtio-net.h, hw/net/virtio-net.c, include/standard-headers/linux/ethtool.h
VIRTIO_NET_RSS_MAX_KEY_SIZE = 40
VIRTIO_NET_RSS_MAX_TABLE_LEN = 128
VIRTIO_NET_RSS_SUPPORTED_HASHES = 0x1FF
SPEED_UNKNOWN = -1
DUPLEX_UNKNOWN = 0xFF
EINVAL, EBUSY = 22, 16
#: the guest-offload bits (``virtio_net_guest_offloads_by_features``)
GUEST_OFFLOADS_MASK = sum(1 << b for b in (F.GUEST_CSUM, F.GUEST_TSO4, F.GUEST_TSO6, F.GUEST_ECN,
                                           F.GUEST_UFO, F.GUEST_USO4, F.GUEST_USO6))
_BCAST = b"\xff" * 6


def _bits(features: int) -> str:
    names = []
    for b in range(64):
        if features >> b & 1:
            try:
                names.append(NetFeature(b).name)
            except ValueError:
                try:
                    names.append(TransportFeature(b).name)
                except ValueError:
                    names.append({28: "INDIRECT_DESC", 29: "EVENT_IDX", 30: "BAD_FEATURE"}.get(
                        b, str(b)))
    return "|".join(names) or "none"


@dataclass(eq=False)
class MacTable:
    """``n->mac_table`` (include/hw/virtio/virtio-net.h): unicast entries, then multicast."""

    in_use: int = 0
    first_multi: int = 0
    uni_overflow: int = 0
    multi_overflow: int = 0
    macs: list[bytes] = field(default_factory=list)


@dataclass(eq=False)
class VirtIONetQueue:
    """``VirtIONetQueue``: one queue pair, its TX bottom half and the frame in flight."""

    n: VirtIONet = field(repr=False)
    rx_vq: VirtQueue = field(repr=False)
    tx_vq: VirtQueue = field(repr=False)
    tx_bh: QEMUBH = field(repr=False)
    tx_waiting: int = 0
    async_tx_elem: Chain | None = None


@dataclass(eq=False, repr=False)
class VirtIONet(VirtIODevice):
    """``VirtIONet`` (include/hw/virtio/virtio-net.h) with QEMU's field names.

    Two QEMU fields share a name with ``VirtIODevice``'s and are renamed here:
    ``n->status`` (the link, :class:`NetStatus`) is :attr:`net_status`, and
    ``n->host_features`` (the feature properties) is :attr:`host_features_conf`;
    ``host_features`` is ``vdev->host_features``, what the guest is offered.
    """

    name = "virtio-net"
    device_id = VirtioId.NET

    #: ``nic_conf``: the MAC (empty: QEMU's default), the backend client (``netdev=``)
    macaddr: bytes = b""
    netdev: NetClientState | None = field(default=None, repr=False)
    nic_name: str = "virtio-net-pci.0"
    host_features_conf: int = field(default_factory=lambda: sum(
        1 << bit for bit, on in VIRTIO_NET_PROPERTIES.values() if on))
    #: ``net_conf``
    rx_queue_size: int = VIRTIO_NET_RX_QUEUE_DEFAULT_SIZE
    tx_queue_size: int = VIRTIO_NET_TX_QUEUE_DEFAULT_SIZE
    txburst: int = TX_BURST
    mtu: int = 0
    speed: int = SPEED_UNKNOWN
    duplex: int = DUPLEX_UNKNOWN
    mac: bytes = b""
    net_status: int = 0
    config_size: int = 0
    max_queue_pairs: int = 1
    curr_queue_pairs: int = 1
    multiqueue: bool = False
    has_vnet_hdr: bool = False
    has_ufo: bool = False
    host_hdr_len: int = 0
    guest_hdr_len: int = HDR_SIZE
    mergeable_rx_bufs: bool = False
    tx_burst: int = TX_BURST
    promisc: int = 1
    allmulti: int = 0
    alluni: int = 0
    nomulti: int = 0
    nouni: int = 0
    nobcast: int = 0
    mac_table: MacTable = field(default_factory=MacTable, repr=False)
    vlans: bytearray = field(default_factory=lambda: bytearray(MAX_VLAN >> 3), repr=False)
    curr_guest_offloads: int = 0
    vqs: list[VirtIONetQueue] = field(default_factory=list, repr=False)
    ctrl_vq: VirtQueue | None = field(default=None, repr=False)
    nic: NetClientState | None = field(default=None, repr=False)
    vhost_started: bool = False
    rsc4_enabled: bool = False
    rsc6_enabled: bool = False

    def __repr__(self) -> str:
        q = self.vqs[0] if self.vqs else None
        rings = ""
        if q is not None:
            rings = (f", rx last_avail/used {q.rx_vq.last_avail_idx}/{q.rx_vq.used_idx}, "
                     f"tx {q.tx_vq.last_avail_idx}/{q.tx_vq.used_idx}")
        return (f"VirtIONet(mac {self.mac.hex(':') or 'unset'}, status {self.status:#04x}, "
                f"guest_features {self.guest_features:#x}, hdr {self.guest_hdr_len}{rings}"
                f"{', broken' if self.broken else ''})")

    def ev(self, kind: str, label: str, fn: str, **data: Any) -> None:
        """A ``device`` event of virtio-net (hw/net/virtio-net.c)."""
        self.emit(kind, label, fn, FILE, **data)

    # --- realize (virtio_net_device_realize) -----------------------------------------------------
    def realize(self) -> None:
        """``virtio_net_device_realize``: config size, queues, the NIC and its peer's header."""
        if self.mtu:
            self.host_features_conf |= 1 << F.MTU
        if self.speed >= 0 or self.duplex != DUPLEX_UNKNOWN:
            self.host_features_conf |= 1 << F.SPEED_DUPLEX
        virtio_net_set_config_size(self, self.host_features_conf)
        virtio_init(self, self.config_size)
        for what, size, top in (("rx_queue_size", self.rx_queue_size, VIRTQUEUE_MAX_SIZE),
                                ("tx_queue_size", self.tx_queue_size,
                                 VIRTIO_NET_TX_QUEUE_DEFAULT_SIZE)):
            low = VIRTIO_NET_RX_QUEUE_DEFAULT_SIZE if what == "rx_queue_size" else \
                VIRTIO_NET_TX_QUEUE_DEFAULT_SIZE
            if size < low or size > top or size & (size - 1):
                raise VbookError(f"Invalid {what} (= {size}), must be a power of 2 between "
                                 f"{low} and {top}.")
        self.curr_queue_pairs = 1
        self.vqs = [virtio_net_add_queue(self, 0)]
        self.ctrl_vq = virtio_add_queue(self, VIRTIO_NET_CTRL_QUEUE_SIZE, virtio_net_handle_ctrl,
                                        "ctrl")
        if not self.macaddr or not any(self.macaddr):
            self.macaddr = net.qemu_macaddr_default_if_unset(self.macaddr, set())
        self.mac = bytes(self.macaddr)
        self.net_status = NetStatus.LINK_UP
        self.nic = net.qemu_new_nic(net_virtio_info, self.netdev, "virtio-net-pci",
                                    self.nic_name, self, self.ctx)
        self.nic.do_not_pad = True
        peer_test_vnet_hdr(self)
        self.host_hdr_len = HDR_SIZE if self.has_vnet_hdr else 0
        self.vqs[0].tx_waiting = 0
        self.tx_burst = self.txburst
        virtio_net_set_mrg_rx_bufs(self, False, False, False)
        self.promisc = 1

    # --- VirtioDeviceClass ----------------------------------------------------------------------
    def get_config(self, config: bytearray) -> None:
        virtio_net_get_config(self, config)

    def set_config(self, config: bytearray) -> None:
        virtio_net_set_config(self, config)

    def get_features(self, features: int) -> int:
        return virtio_net_get_features(self, features)

    def set_features(self, val: int) -> None:
        virtio_net_set_features(self, val)

    def bad_features(self) -> int:
        return virtio_net_bad_features(self)

    def set_status(self, status: int) -> None:
        virtio_net_set_status(self, status)

    def device_reset(self) -> None:
        virtio_net_reset(self)


# --- the peer's vnet header (net/net.c qemu_has_vnet_hdr & co, on our backends) ------------------

def _backend(n: VirtIONet) -> Any:
    peer = n.nic.peer if n.nic is not None else None
    return peer.backend if peer is not None else None


def peer_test_vnet_hdr(n: VirtIONet) -> None:
    """hw/net/virtio-net.c: does the backend take frames with a vnet header in front
    (``qemu_has_vnet_hdr``: a tap opened with ``IFF_VNET_HDR``)? Here: its ``vnet_hdr``."""
    b = _backend(n)
    if b is None:
        return
    n.has_vnet_hdr = bool(getattr(b, "vnet_hdr", False))


def peer_has_ufo(n: VirtIONet) -> bool:
    if not n.has_vnet_hdr:
        return False
    n.has_ufo = bool(getattr(_backend(n), "ufo", False))
    return n.has_ufo


def peer_has_uso(n: VirtIONet) -> bool:
    return n.has_vnet_hdr and bool(getattr(_backend(n), "uso", False))


def qemu_set_vnet_hdr_len(n: VirtIONet, length: int) -> None:
    """net/net.c → net/tap.c ``tap_set_vnet_hdr_len``: ``TUNSETVNETHDRSZ(length)`` on the
    backend and ``using_vnet_hdr``: from now on the tap carries virtio-net's own header."""
    peer = n.nic.peer if n.nic is not None else None
    if peer is not None:
        net.tap_set_vnet_hdr_len(peer, length)
    n.ev("net", f"qemu_set_vnet_hdr_len: the backend's vnet header is {length} bytes "
         "(TUNSETVNETHDRSZ)", "virtio_net_set_mrg_rx_bufs", hdr_len=length)


# --- config and features -----------------------------------------------------------------------

def virtio_net_set_config_size(n: VirtIONet, host_features: int) -> None:
    """hw/net/virtio-net.c: ``virtio_get_config_size`` with MAC always counted."""
    host_features |= 1 << F.MAC
    size = 6
    for bit, end in CONFIG_FEATURE_ENDS:
        if host_features >> bit & 1:
            size = max(size, end)
    n.config_size = size


def virtio_net_get_config(n: VirtIONet, config: bytearray) -> None:
    """hw/net/virtio-net.c: ``struct virtio_net_config`` cut to ``config_size``."""
    netcfg = bytearray(SIZEOF_VIRTIO_NET_CONFIG)
    struct.pack_into("<H", netcfg, NetConfig.STATUS, n.net_status)
    struct.pack_into("<H", netcfg, NetConfig.MAX_VIRTQUEUE_PAIRS, n.max_queue_pairs)
    struct.pack_into("<H", netcfg, NetConfig.MTU, n.mtu)
    netcfg[NetConfig.MAC:NetConfig.MAC + 6] = n.mac
    struct.pack_into("<I", netcfg, NetConfig.SPEED, n.speed & 0xFFFFFFFF)
    netcfg[NetConfig.DUPLEX] = n.duplex
    netcfg[NetConfig.RSS_MAX_KEY_SIZE] = VIRTIO_NET_RSS_MAX_KEY_SIZE
    struct.pack_into("<H", netcfg, NetConfig.RSS_MAX_INDIRECTION_TABLE_LENGTH,
                     VIRTIO_NET_RSS_MAX_TABLE_LEN if n.host_has_feature(F.RSS) else 1)
    struct.pack_into("<I", netcfg, NetConfig.SUPPORTED_HASH_TYPES, VIRTIO_NET_RSS_SUPPORTED_HASHES)
    config[:n.config_size] = netcfg[:n.config_size]


def virtio_net_set_config(n: VirtIONet, config: bytearray) -> None:
    """hw/net/virtio-net.c: a legacy driver without CTRL_MAC_ADDR sets the MAC here."""
    mac = bytes(config[0:6])
    if not n.has_feature(F.CTRL_MAC_ADDR) and not n.has_feature(TransportFeature.VERSION_1) \
            and mac != n.mac:
        n.ev("net", f"virtio_net_set_config: MAC {n.mac.hex(':')} → {mac.hex(':')}",
             "virtio_net_set_config", mac=mac.hex(":"))
        n.mac = mac


def virtio_net_get_features(n: VirtIONet, features: int) -> int:
    """hw/net/virtio-net.c: the properties, MAC, minus what the backend cannot carry."""
    features |= n.host_features_conf
    features |= 1 << F.MAC
    if not n.has_vnet_hdr:
        for b in (F.CSUM, F.HOST_TSO4, F.HOST_TSO6, F.HOST_ECN, F.GUEST_CSUM, F.GUEST_TSO4,
                  F.GUEST_TSO6, F.GUEST_ECN, F.HOST_USO, F.GUEST_USO4, F.GUEST_USO6,
                  F.HASH_REPORT):
            features &= ~(1 << b)
    if not n.has_vnet_hdr or not peer_has_ufo(n):
        features &= ~(1 << F.GUEST_UFO | 1 << F.HOST_UFO)
    if not peer_has_uso(n):
        features &= ~(1 << F.HOST_USO | 1 << F.GUEST_USO4 | 1 << F.GUEST_USO6)
    return features  # no vhost: get_vhost_net(nc->peer) is NULL


def virtio_net_bad_features(n: VirtIONet) -> int:
    """hw/net/virtio-net.c: "Linux kernel 2.6.25. It understood MAC (as everyone must), but
    also these": CSUM, HOST_TSO4/6, HOST_ECN."""
    return sum(1 << b for b in (F.MAC, F.CSUM, F.HOST_TSO4, F.HOST_TSO6, F.HOST_ECN))


def virtio_net_set_mrg_rx_bufs(n: VirtIONet, mergeable_rx_bufs: bool, version_1: bool,
                               hash_report: bool) -> None:
    """hw/net/virtio-net.c: the header the guest uses (10, 12 or 20 bytes); a vnet-header
    backend is told the same length and passes it through (``host_hdr_len``)."""
    n.mergeable_rx_bufs = bool(mergeable_rx_bufs)
    if version_1:
        n.guest_hdr_len = HDR_SIZE_V1_HASH if hash_report else HDR_SIZE_MRG
    else:
        n.guest_hdr_len = HDR_SIZE_MRG if n.mergeable_rx_bufs else HDR_SIZE
    if n.has_vnet_hdr:  # qemu_has_vnet_hdr_len: a tap takes any length >= 10
        qemu_set_vnet_hdr_len(n, n.guest_hdr_len)
        n.host_hdr_len = n.guest_hdr_len


def virtio_net_set_features(n: VirtIONet, features: int) -> None:
    """hw/net/virtio-net.c: header length from MRG_RXBUF; offloads; the VLAN filter opens
    completely unless CTRL_VLAN was acked."""
    features &= ~(1 << F.MTU)        # mtu_bypass_backend and no backend_features (no vhost)
    n.multiqueue = bool(features >> F.RSS & 1 or features >> F.MQ & 1)
    virtio_net_set_mrg_rx_bufs(n, bool(features >> F.MRG_RXBUF & 1),
                               bool(features >> TransportFeature.VERSION_1 & 1),
                               bool(features >> F.HASH_REPORT & 1))
    n.rsc4_enabled = bool(features >> F.RSC_EXT & 1 and features >> F.GUEST_TSO4 & 1)
    n.rsc6_enabled = bool(features >> F.RSC_EXT & 1 and features >> F.GUEST_TSO6 & 1)
    if n.has_vnet_hdr:
        n.curr_guest_offloads = features & GUEST_OFFLOADS_MASK
        virtio_net_apply_guest_offloads(n)
    if not features >> F.CTRL_VLAN & 1:
        n.vlans[:] = b"\xff" * (MAX_VLAN >> 3)
    n.ev("net", f"virtio_net_set_features {features:#x} ({_bits(features)}): guest_hdr_len "
         f"{n.guest_hdr_len}, host_hdr_len {n.host_hdr_len}, mergeable_rx_bufs "
         f"{int(n.mergeable_rx_bufs)}", "virtio_net_set_features", features=features,
         guest_hdr_len=n.guest_hdr_len, host_hdr_len=n.host_hdr_len,
         mergeable_rx_bufs=n.mergeable_rx_bufs)


def virtio_net_apply_guest_offloads(n: VirtIONet) -> None:
    """hw/net/virtio-net.c → ``qemu_set_offload`` (net/tap.c: ``TUNSETOFFLOAD``): recorded."""
    n.ev("net", f"virtio_net_apply_guest_offloads: qemu_set_offload({n.curr_guest_offloads:#x}) "
         "on the backend (TUNSETOFFLOAD)", "virtio_net_apply_guest_offloads",
         offloads=n.curr_guest_offloads)


# --- status, link, reset -------------------------------------------------------------------------

def virtio_net_started(n: VirtIONet, status: int) -> bool:
    return bool(status & DeviceStatus.DRIVER_OK and n.net_status & NetStatus.LINK_UP
                and n.vm_running)


def virtio_net_set_status(n: VirtIONet, status: int) -> None:
    """hw/net/virtio-net.c: a started queue takes the frames waiting for it; a TX bh waiting
    is rescheduled, or cancelled (and the queue dropped if the link went down)."""
    for i in range(n.max_queue_pairs):
        q = n.vqs[i]
        assert n.nic is not None
        queue_status = 0 if (not n.multiqueue and i != 0) or i >= n.curr_queue_pairs else status
        queue_started = virtio_net_started(n, queue_status) and not n.vhost_started
        if queue_started:
            net.qemu_flush_queued_packets(n.nic)
        if not q.tx_waiting:
            continue
        if queue_started:
            qemu_bh_schedule(q.tx_bh, n.ctx)
        else:
            qemu_bh_cancel(q.tx_bh)
            if not n.net_status & NetStatus.LINK_UP and queue_status & DeviceStatus.DRIVER_OK \
                    and n.vm_running:
                q.tx_waiting = 0
                virtio_queue_set_notification(q.tx_vq, True)
                virtio_net_drop_tx_queue_data(n, q.tx_vq)


def virtio_net_drop_tx_queue_data(n: VirtIONet, vq: VirtQueue) -> None:
    """hw/net/virtio-net.c: the link is down: every frame the guest queued is given back unsent."""
    dropped = virtqueue_drop_all(vq)
    n.ev("tx", f"virtio_net_drop_tx_queue_data: link down, {dropped} frame(s) dropped",
         "virtio_net_drop_tx_queue_data", vq=vq.queue_index, dropped=dropped)
    if dropped:
        virtio_notify(n, vq)


def virtio_net_set_link_status(nc: NetClientState) -> None:
    """hw/net/virtio-net.c (``link_status_changed``): LINK_UP follows the backend; a change
    is a config interrupt."""
    n: VirtIONet = nc.opaque
    old = n.net_status
    if nc.link_down:
        n.net_status &= ~NetStatus.LINK_UP
    else:
        n.net_status |= NetStatus.LINK_UP
    n.ev("net", f"virtio_net_set_link_status: link {'down' if nc.link_down else 'up'}, status "
         f"{old:#x} → {n.net_status:#x}", "virtio_net_set_link_status", status=n.net_status)
    if n.net_status != old:
        virtio_notify_config(n)
    virtio_net_set_status(n, n.status)


def virtio_net_reset(n: VirtIONet) -> None:
    """hw/net/virtio-net.c: RX modes back to promiscuous, filters cleared, the MAC from conf."""
    n.promisc = 1
    n.allmulti = n.alluni = n.nomulti = n.nouni = n.nobcast = 0
    n.curr_queue_pairs = 1
    n.net_status &= ~NetStatus.ANNOUNCE
    n.mac_table = MacTable()
    n.mac = bytes(n.macaddr)
    n.vlans[:] = bytes(MAX_VLAN >> 3)
    for q in n.vqs:  # flush_or_purge_queued_packets: nothing is queued towards the tap here
        q.async_tx_elem = None


# --- the queues -----------------------------------------------------------------------------------

def virtio_net_add_queue(n: VirtIONet, index: int) -> VirtIONetQueue:
    """hw/net/virtio-net.c: the RX queue, the TX queue (``tx=bh``) and its bottom half."""
    rx = virtio_add_queue(n, n.rx_queue_size, virtio_net_handle_rx, "rx")
    tx = virtio_add_queue(n, n.tx_queue_size, virtio_net_handle_tx_bh, "tx")
    q = VirtIONetQueue(n, rx, tx, QEMUBH("virtio_net_tx_bh", virtio_net_tx_bh))
    q.tx_bh.opaque = q
    n.bhs.append(q.tx_bh)
    return q


def _q(n: VirtIONet, vq: VirtQueue) -> VirtIONetQueue:
    return n.vqs[vq.queue_index // 2]


def virtio_net_handle_rx(vdev: VirtIODevice, vq: VirtQueue) -> None:
    """hw/net/virtio-net.c: the driver added RX buffers: deliver what the net layer queued."""
    n: VirtIONet = vdev  # type: ignore[assignment]
    assert n.nic is not None
    waiting = n.nic.incoming_queue.nq_count
    n.ev("rx", f"virtio_net_handle_rx: qemu_flush_queued_packets ({waiting} frame(s) waiting)",
         "virtio_net_handle_rx", vq=vq.queue_index, queued=waiting)
    net.qemu_flush_queued_packets(n.nic)


def virtio_net_handle_tx_bh(vdev: VirtIODevice, vq: VirtQueue) -> None:
    """hw/net/virtio-net.c: a TX kick: no more kicks for now, the bottom half will send."""
    n: VirtIONet = vdev  # type: ignore[assignment]
    q = _q(n, vq)
    if n.vhost_started:
        return
    if not n.net_status & NetStatus.LINK_UP:
        virtio_net_drop_tx_queue_data(n, vq)
        return
    if q.tx_waiting:
        n.ev("tx", "virtio_net_handle_tx_bh: tx_waiting already, the bh is scheduled",
             "virtio_net_handle_tx_bh", vq=vq.queue_index, tx_waiting=1)
        return
    q.tx_waiting = 1
    if not n.vm_running:
        return
    n.ev("tx", "virtio_net_handle_tx_bh: tx_waiting = 1, virtio_queue_set_notification(vq, 0), "
         "schedule virtio_net_tx_bh", "virtio_net_handle_tx_bh", vq=vq.queue_index, tx_waiting=1)
    virtio_queue_set_notification(vq, False)
    qemu_bh_schedule(q.tx_bh, n.ctx)


def virtio_net_tx_bh(q: VirtIONetQueue) -> None:
    """hw/net/virtio-net.c: flush; a full burst reschedules, else notifications on and flush
    once more."""
    n = q.n
    q.tx_waiting = 0
    if not n.status & DeviceStatus.DRIVER_OK:
        n.ev("tx", "virtio_net_tx_bh: not DRIVER_OK, nothing sent", "virtio_net_tx_bh",
             vq=q.tx_vq.queue_index)
        return
    ret = virtio_net_flush_tx(q)
    if ret in (-EBUSY, -EINVAL):
        n.ev("tx", f"virtio_net_tx_bh: flush returned {'-EBUSY' if ret == -EBUSY else '-EINVAL'}",
             "virtio_net_tx_bh", vq=q.tx_vq.queue_index, ret=ret)
        return
    if ret >= n.tx_burst:
        n.ev("tx", f"virtio_net_tx_bh: a full burst ({ret}): reschedule", "virtio_net_tx_bh",
             vq=q.tx_vq.queue_index, ret=ret, rescheduled=True)
        qemu_bh_schedule(q.tx_bh, n.ctx)
        q.tx_waiting = 1
        return
    virtio_queue_set_notification(q.tx_vq, True)
    ret2 = virtio_net_flush_tx(q)
    if ret2 == -EINVAL:
        return
    if ret2 > 0:
        virtio_queue_set_notification(q.tx_vq, False)
        qemu_bh_schedule(q.tx_bh, n.ctx)
        q.tx_waiting = 1
    n.ev("tx", f"virtio_net_tx_bh: sent {ret}, notifications on, then {max(ret2, 0)} more"
         + (": reschedule" if ret2 > 0 else ""), "virtio_net_tx_bh", vq=q.tx_vq.queue_index,
         ret=ret, again=ret2, rescheduled=ret2 > 0)


def virtio_net_flush_tx(q: VirtIONetQueue) -> int:
    """hw/net/virtio-net.c: send what the guest queued, at most ``tx_burst`` frames; the count,
    or -EBUSY (the backend keeps a frame) / -EINVAL (``virtio_error``)."""
    n = q.n
    vq = q.tx_vq
    assert n.nic is not None
    if not n.status & DeviceStatus.DRIVER_OK:
        return 0
    if q.async_tx_elem is not None:
        virtio_queue_set_notification(vq, False)
        return 0
    num_packets = 0
    while True:
        elem = virtqueue_pop(vq)
        if elem is None:
            break
        ring = vq.ring
        assert ring is not None
        mem = ring.mem
        if not elem.out:
            virtio_error(n, "virtio-net header not in first element", "virtio_net_flush_tx",
                         f"TX element {elem.head} has no device-readable buffer")
            virtqueue_detach_element(vq, elem, 0)
            return -EINVAL
        data = iov_to_buf(mem, elem.out)
        hdr = data[:n.guest_hdr_len]
        if n.host_hdr_len != n.guest_hdr_len:
            if len(data) < n.guest_hdr_len:
                virtio_error(n, "virtio-net header is invalid", "virtio_net_flush_tx",
                             f"TX element {elem.head}: {len(data)} bytes, the header is "
                             f"{n.guest_hdr_len}")
                virtqueue_detach_element(vq, elem, 0)
                return -EINVAL
            packet = data[:n.host_hdr_len] + data[n.guest_hdr_len:]
            if not packet:
                virtio_error(n, "virtio-net nothing to send", "virtio_net_flush_tx",
                             f"TX element {elem.head} is the {n.guest_hdr_len}-byte header only")
                virtqueue_detach_element(vq, elem, 0)
                return -EINVAL
        else:
            packet = data
        frame = packet[n.host_hdr_len:]
        n.ev("tx", f"virtio_net_flush_tx: head {elem.head}, {len(data)} bytes in {len(elem.out)} "
             f"buffer(s): {n.guest_hdr_len}-byte header "
             + ("passed on (vnet_hdr backend)" if n.host_hdr_len else "stripped")
             + f", {len(frame)}-byte frame → qemu_sendv_packet_async", "virtio_net_flush_tx",
             vq=vq.queue_index, head=elem.head, len=len(data), hdr=hdr.hex(), frame=frame.hex(),
             sent=len(packet), last_avail_idx=vq.last_avail_idx, used_idx=vq.used_idx)
        ret = qemu_sendv_packet_async(n, packet)
        if ret == 0:
            virtio_queue_set_notification(vq, False)
            q.async_tx_elem = elem
            return -EBUSY
        virtqueue_push(vq, elem, 0)
        virtio_notify(n, vq)
        num_packets += 1
        if num_packets >= n.tx_burst:
            break
    return num_packets


def qemu_sendv_packet_async(n: VirtIONet, packet: bytes) -> int:
    """net/net.c: to the backend (``qemu_get_subqueue(n->nic, 0)``'s peer); 0 if it was queued
    (then ``virtio_net_tx_complete`` runs when it goes)."""
    nc = n.nic
    assert nc is not None
    peer = nc.peer.name if nc.peer is not None else None
    hl = net.link_hdr_len(nc, nc.peer)
    nc.emit("qemu", "net", f"qemu_sendv_packet_async({nc.name} → {peer}, {len(packet)} bytes"
            + (f": a {hl}-byte vnet header and the frame)" if hl else ")"),
            "qemu_sendv_packet_async", sender=nc.name, receiver=peer, **net.frame_data(packet, hl))
    with _fn(n, "qemu_sendv_packet_async"):
        return net.qemu_send_packet_async(nc, packet, virtio_net_tx_complete)


def virtio_net_tx_complete(nc: NetClientState, length: int) -> None:
    """hw/net/virtio-net.c: the frame the backend kept went out: push it, flush the rest."""
    n: VirtIONet = nc.opaque
    q = n.vqs[0]
    if q.async_tx_elem is None:
        return
    virtqueue_push(q.tx_vq, q.async_tx_elem, 0)
    virtio_notify(n, q.tx_vq)
    q.async_tx_elem = None
    virtio_queue_set_notification(q.tx_vq, True)
    ret = virtio_net_flush_tx(q)
    if ret >= n.tx_burst:
        virtio_queue_set_notification(q.tx_vq, False)
        qemu_bh_schedule(q.tx_bh, n.ctx)
        q.tx_waiting = 1


class _fn:
    """Push a QEMU function on the recorded call stack (``in_function``)."""

    def __init__(self, n: VirtIONet, fn: str):
        self.ctx, self.fn = n.ctx, fn

    def __enter__(self) -> None:
        self.ctx.stack.append(self.fn)

    def __exit__(self, *exc: Any) -> None:
        self.ctx.stack.pop()


# --- receive ----------------------------------------------------------------------------------------

def virtio_net_can_receive(nc: NetClientState) -> bool:
    """hw/net/virtio-net.c: the VM runs, the RX queue has a ring, DRIVER_OK."""
    n: VirtIONet = nc.opaque
    if not n.vm_running or 0 >= n.curr_queue_pairs:
        return False
    q = n.vqs[0]
    return virtio_queue_ready(q.rx_vq) and bool(n.status & DeviceStatus.DRIVER_OK)


def virtio_net_has_buffers(q: VirtIONetQueue, bufsize: int) -> bool:
    """hw/net/virtio-net.c: are ``bufsize`` writable bytes available? If not, RX notifications
    go on (so the driver kicks when it adds buffers) and the answer is no."""
    n = q.n
    vq = q.rx_vq
    while virtio_queue_empty(vq) or n.mergeable_rx_bufs:
        opaque, in_bytes, _ = virtqueue_get_avail_bytes(vq, bufsize, 0)
        if bufsize <= in_bytes:
            break
        if virtio_queue_enable_notification_and_check(vq, opaque):
            continue
        n.ev("rx", f"virtio_net_has_buffers: {in_bytes} bytes of buffers for {bufsize}: no "
             "(notifications on, the frame waits)", "virtio_net_has_buffers", vq=vq.queue_index,
             need=bufsize, have=in_bytes, ok=False)
        return False
    virtio_queue_set_notification(vq, False)
    return True


def receive_filter(n: VirtIONet, buf: bytes) -> bool:
    """hw/net/virtio-net.c: promiscuous takes all; else VLAN, broadcast, multicast, unicast."""
    if n.promisc:
        return True
    ptr = buf[n.host_hdr_len:].ljust(16, b"\0")
    if ptr[12:14] == b"\x81\x00":
        vid = int.from_bytes(ptr[14:16], "big") & 0xFFF
        if not n.vlans[vid >> 3] >> (vid & 7) & 1:   # vlans[vid >> 5] bit (vid & 0x1f), bytewise
            return False
    table = n.mac_table
    if ptr[0] & 1:
        if ptr[:6] == _BCAST:
            return not n.nobcast
        if n.nomulti:
            return False
        if n.allmulti or table.multi_overflow:
            return True
        return any(ptr[:6] == m for m in table.macs[table.first_multi:table.in_use])
    if n.nouni:
        return False
    if n.alluni or table.uni_overflow:
        return True
    if ptr[:6] == n.mac:
        return True
    return any(ptr[:6] == m for m in table.macs[:table.first_multi])


def receive_header(n: VirtIONet, mem: Any, sg: list[tuple[int, int]], buf: bytes) -> bytes:
    """hw/net/virtio-net.c: the header the guest gets — the backend's (vnet header) or a zero
    ``virtio_net_hdr`` (flags 0, GSO_NONE); 10 bytes either way (num_buffers comes later)."""
    hdr = bytes(buf[:HDR_SIZE]) if n.has_vnet_hdr else bytes(HDR_SIZE)
    iov_from_buf(mem, sg, 0, hdr)
    return hdr


def virtio_net_receive(nc: NetClientState, buf: bytes) -> int:
    """hw/net/virtio-net.c: ``NetClientInfo.receive`` → ``virtio_net_do_receive`` →
    ``virtio_net_receive_rcu`` (no RSC)."""
    n: VirtIONet = nc.opaque
    with _fn(n, "virtio_net_receive"), _fn(n, "virtio_net_receive_rcu"):
        return virtio_net_receive_rcu(n, bytes(buf))


def virtio_net_receive_rcu(n: VirtIONet, buf: bytes) -> int:
    """hw/net/virtio-net.c: the frame into the guest's RX buffers. Returns its size (taken
    or filtered or dropped for good), 0 (no room: the net layer queues it), -1 (cannot)."""
    size = len(buf)
    vdev = n
    if not virtio_net_can_receive(n.nic):  # type: ignore[arg-type]
        n.ev("rx", "virtio_net_receive: cannot receive (no RX ring or not DRIVER_OK)",
             "virtio_net_receive_rcu", len=size, ret=-1)
        return -1
    q = n.vqs[0]
    vq = q.rx_vq
    need = size + n.guest_hdr_len - n.host_hdr_len
    if not virtio_net_has_buffers(q, need):
        return 0
    if not receive_filter(n, buf):
        n.ev("rx", f"virtio_net_receive: receive_filter drops it (to {buf[n.host_hdr_len:][:6].hex(':')})",
             "receive_filter", len=size, dropped="filter", frame=buf.hex())
        return size
    ring = vq.ring
    assert ring is not None
    mem = ring.mem
    elems: list[Chain] = []
    lens: list[int] = []
    mhdr_sg: list[tuple[int, int]] = []
    offset = 0
    hdr = b""

    def err(ret: int) -> int:
        for j, e in enumerate(elems):
            virtqueue_detach_element(vq, e, lens[j])
        return ret

    while offset < size:
        total = 0
        if len(elems) == VIRTQUEUE_MAX_SIZE:
            virtio_error(vdev, "virtio-net unexpected long buffer chain", "virtio_net_receive_rcu")
            return err(size)
        elem = virtqueue_pop(vq)
        if elem is None:
            if elems:
                virtio_error(vdev, f"virtio-net unexpected empty queue: i {len(elems)} mergeable "
                             f"{int(n.mergeable_rx_bufs)} offset {offset}, size {size}, guest hdr "
                             f"len {n.guest_hdr_len}, host hdr len {n.host_hdr_len} guest "
                             f"features {n.guest_features:#x}", "virtio_net_receive_rcu")
            return err(-1)
        if not elem.in_:
            virtio_error(vdev, "virtio-net receive queue contains no in buffers",
                         "virtio_net_receive_rcu", f"RX element {elem.head} has no writable buffer")
            virtqueue_detach_element(vq, elem, 0)
            return err(-1)
        sg = elem.in_
        if not elems:
            if n.mergeable_rx_bufs:
                mhdr_sg = iov_copy(sg, HDR_SIZE, 2)   # offsetof(num_buffers), sizeof(num_buffers)
            hdr = receive_header(n, mem, sg, buf)
            offset = n.host_hdr_len
            total += n.guest_hdr_len
            guest_offset = n.guest_hdr_len
        else:
            guest_offset = 0
        length = iov_from_buf(mem, sg, guest_offset, buf[offset:])
        total += length
        offset += length
        if not n.mergeable_rx_bufs and offset < size:
            n.ev("rx", f"virtio_net_receive: {size - n.host_hdr_len}-byte frame does not fit "
                 f"element {elem.head} ({iov_size(sg)} bytes) and buffers cannot be merged: "
                 "virtqueue_unpop, frame dropped", "virtio_net_receive_rcu", vq=vq.queue_index,
                 head=elem.head, len=size, room=iov_size(sg), dropped="too big")
            virtqueue_unpop(vq, elem, total)
            return err(size)
        elems.append(elem)
        lens.append(total)
    num_buffers = len(elems)
    if mhdr_sg:
        iov_from_buf(mem, mhdr_sg, 0, struct.pack("<H", num_buffers))
    frame = buf[n.host_hdr_len:]
    n.ev("rx", f"virtio_net_receive: {len(frame)}-byte frame into {num_buffers} buffer(s) "
         f"(heads {', '.join(str(e.head) for e in elems)}), {n.guest_hdr_len}-byte header"
         + (f", num_buffers {num_buffers}" if mhdr_sg else ""), "virtio_net_receive_rcu",
         vq=vq.queue_index, heads=[e.head for e in elems], lens=lens, len=len(frame),
         hdr=(hdr + (struct.pack("<H", num_buffers) if n.guest_hdr_len == HDR_SIZE_MRG
                     else b"")).hex(), frame=frame.hex(), num_buffers=num_buffers,
         last_avail_idx=vq.last_avail_idx, used_idx=vq.used_idx)
    for j, elem in enumerate(elems):
        virtqueue_fill(vq, elem, lens[j], j)
    virtqueue_flush(vq, num_buffers)
    virtio_notify(vdev, vq)
    return size


#: hw/net/virtio-net.c ``net_virtio_info``
net_virtio_info = NetClientInfo(type="nic", receive=virtio_net_receive,
                                can_receive=virtio_net_can_receive,
                                link_status_changed=virtio_net_set_link_status,
                                receive_name="virtio_net_receive")


# --- the control queue -----------------------------------------------------------------------------

def virtio_net_handle_ctrl(vdev: VirtIODevice, vq: VirtQueue) -> None:
    """hw/net/virtio-net.c: answer every command the driver queued (one status byte each)."""
    n: VirtIONet = vdev  # type: ignore[assignment]
    while True:
        elem = virtqueue_pop(vq)
        if elem is None:
            break
        written = virtio_net_handle_ctrl_iov(n, vq, elem)
        if written > 0:
            virtqueue_push(vq, elem, written)
            virtio_notify(n, vq)
        else:
            virtqueue_detach_element(vq, elem, 0)
            break


def virtio_net_handle_ctrl_iov(n: VirtIONet, vq: VirtQueue, elem: Chain) -> int:
    """hw/net/virtio-net.c: ``{u8 class; u8 cmd}`` + data in, a ``virtio_net_ctrl_ack`` out."""
    assert vq.ring is not None
    mem = vq.ring.mem
    if iov_size(elem.in_) < 1 or iov_size(elem.out) < SIZEOF_VIRTIO_NET_CTRL_HDR:
        virtio_error(n, "virtio-net ctrl missing headers", "virtio_net_handle_ctrl_iov")
        return 0
    out = iov_to_buf(mem, elem.out)
    cls, cmd, data = out[0], out[1], out[2:]
    handlers = {NetCtrlClass.RX: virtio_net_handle_rx_mode, NetCtrlClass.MAC: virtio_net_handle_mac,
                NetCtrlClass.VLAN: virtio_net_handle_vlan_table,
                NetCtrlClass.ANNOUNCE: virtio_net_handle_announce,
                NetCtrlClass.MQ: virtio_net_handle_mq,
                NetCtrlClass.GUEST_OFFLOADS: virtio_net_handle_offloads}
    handler = handlers.get(cls)
    status = handler(n, cmd, data) if handler is not None else VIRTIO_NET_ERR
    iov_from_buf(mem, elem.in_, 0, bytes([status]))
    name = handler.__name__ if handler is not None else "unknown class"
    n.ev("ctrl", f"virtio_net_handle_ctrl: class {cls} cmd {cmd} ({name}, {len(data)} bytes) → "
         f"{'VIRTIO_NET_OK' if status == VIRTIO_NET_OK else 'VIRTIO_NET_ERR'}",
         "virtio_net_handle_ctrl_iov", vq=vq.queue_index, head=elem.head, cls=cls, cmd=cmd,
         data=data.hex(), status=status)
    return 1


def virtio_net_handle_rx_mode(n: VirtIONet, cmd: int, data: bytes) -> int:
    if len(data) < 1:
        return VIRTIO_NET_ERR
    on = data[0]
    attr = {NetCtrlRx.PROMISC: "promisc", NetCtrlRx.ALLMULTI: "allmulti",
            NetCtrlRx.ALLUNI: "alluni", NetCtrlRx.NOMULTI: "nomulti", NetCtrlRx.NOUNI: "nouni",
            NetCtrlRx.NOBCAST: "nobcast"}.get(cmd)
    if attr is None:
        return VIRTIO_NET_ERR
    setattr(n, attr, on)
    return VIRTIO_NET_OK


def virtio_net_handle_offloads(n: VirtIONet, cmd: int, data: bytes) -> int:
    if not n.has_feature(F.CTRL_GUEST_OFFLOADS) or len(data) < 8:
        return VIRTIO_NET_ERR
    if cmd != VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET or not n.has_vnet_hdr:
        return VIRTIO_NET_ERR
    offloads = int.from_bytes(data[:8], "little")
    n.rsc4_enabled = bool(offloads >> F.RSC_EXT & 1 and offloads >> F.GUEST_TSO4 & 1)
    n.rsc6_enabled = bool(offloads >> F.RSC_EXT & 1 and offloads >> F.GUEST_TSO6 & 1)
    offloads &= ~(1 << F.RSC_EXT)
    if offloads & ~(n.guest_features & GUEST_OFFLOADS_MASK):
        return VIRTIO_NET_ERR
    n.curr_guest_offloads = offloads
    virtio_net_apply_guest_offloads(n)
    return VIRTIO_NET_OK


def virtio_net_handle_mac(n: VirtIONet, cmd: int, data: bytes) -> int:
    if cmd == NetCtrlMac.ADDR_SET:
        if len(data) != 6:
            return VIRTIO_NET_ERR
        n.mac = bytes(data)
        return VIRTIO_NET_OK
    if cmd != NetCtrlMac.TABLE_SET:
        return VIRTIO_NET_ERR
    macs: list[bytes] = []
    uni_overflow = multi_overflow = 0
    if len(data) < 4:
        return VIRTIO_NET_ERR
    entries = int.from_bytes(data[:4], "little")
    data = data[4:]
    if entries * 6 > len(data):
        return VIRTIO_NET_ERR
    if entries <= MAC_TABLE_ENTRIES:
        macs += [data[6 * i:6 * i + 6] for i in range(entries)]
    else:
        uni_overflow = 1
    data = data[entries * 6:]
    first_multi = len(macs)
    if len(data) < 4:
        return VIRTIO_NET_ERR
    entries = int.from_bytes(data[:4], "little")
    data = data[4:]
    if entries * 6 != len(data):
        return VIRTIO_NET_ERR
    if entries <= MAC_TABLE_ENTRIES - len(macs):
        macs += [data[6 * i:6 * i + 6] for i in range(entries)]
    else:
        multi_overflow = 1
    n.mac_table = MacTable(len(macs), first_multi, uni_overflow, multi_overflow, macs)
    return VIRTIO_NET_OK


def virtio_net_handle_vlan_table(n: VirtIONet, cmd: int, data: bytes) -> int:
    if len(data) < 2:
        return VIRTIO_NET_ERR
    vid = int.from_bytes(data[:2], "little")
    if vid >= MAX_VLAN:
        return VIRTIO_NET_ERR
    if cmd == NetCtrlVlan.ADD:
        n.vlans[vid >> 3] |= 1 << (vid & 7)
    elif cmd == NetCtrlVlan.DEL:
        n.vlans[vid >> 3] &= ~(1 << (vid & 7)) & 0xFF
    else:
        return VIRTIO_NET_ERR
    return VIRTIO_NET_OK


def virtio_net_handle_announce(n: VirtIONet, cmd: int, data: bytes) -> int:
    if cmd == VIRTIO_NET_CTRL_ANNOUNCE_ACK and n.net_status & NetStatus.ANNOUNCE:
        n.net_status &= ~NetStatus.ANNOUNCE
        return VIRTIO_NET_OK
    return VIRTIO_NET_ERR


def virtio_net_handle_mq(n: VirtIONet, cmd: int, data: bytes) -> int:
    """Without MQ/RSS acked (never offered here) every MQ command is ``VIRTIO_NET_ERR``."""
    return VIRTIO_NET_ERR


# --- virtio-net-pci -----------------------------------------------------------------------------------

@dataclass(eq=False, repr=False)
class VirtIONetPCI(VirtIOPCIProxy):
    """``virtio-net-pci`` (hw/virtio/virtio-net-pci.c): 1af4:1000 rev 0, class 0200, with a
    :class:`VirtIONet` behind it (``vdev``).

    ``netdev`` is the backend's client, ``macaddr`` the MAC (empty: QEMU's default);
    ``props`` QEMU ``-device`` properties by name; ``tx_bh_deferred`` keeps the TX bh
    for :func:`~vbook.devices.virtio.run_bottom_halves` instead of running it at once.
    """

    type_name = "virtio-net-pci"
    desc = "Ethernet controller"
    device_id = TransId.NET
    class_id = PCI_CLASS_NETWORK_ETHERNET

    netdev: NetClientState | None = field(default=None, repr=False)
    macaddr: bytes = b""
    nic_name: str = "virtio-net-pci.0"
    props: dict[str, Any] = field(default_factory=dict, repr=False)
    tx_bh_deferred: bool = False

    def __post_init__(self) -> None:
        if self.vdev is None:
            self.vdev = VirtIONet(macaddr=bytes(self.macaddr), netdev=self.netdev,
                                  nic_name=self.nic_name, bh_deferred=self.tx_bh_deferred)
        set_properties(self.vdev, self.props)  # type: ignore[arg-type]

    @property
    def net(self) -> VirtIONet:
        assert isinstance(self.vdev, VirtIONet)
        return self.vdev

    def vdev_realize(self) -> None:
        """``virtio_net_pci_realize`` → ``virtio_net_device_realize``."""
        self.net.realize()


def set_properties(n: VirtIONet, props: dict[str, Any]) -> None:
    """``-device virtio-net-pci,<name>=<value>``: QEMU's property names."""
    for name, value in props.items():
        if name in VIRTIO_COMMON_PROPERTIES:
            bit = VIRTIO_COMMON_PROPERTIES[name][0]
            n.host_features = n.host_features | 1 << bit if value else n.host_features & ~(1 << bit)
            if value and name in ("iommu_platform", "packed", "in_order"):
                raise VbookError(f"virtio-net-pci: {name}=on is not modelled")
        elif name in VIRTIO_NET_PROPERTIES:
            bit = VIRTIO_NET_PROPERTIES[name][0]
            if value and name in NOT_MODELLED:
                raise VbookError(f"virtio-net-pci: {name}=on is not modelled (no multiqueue, "
                                 "RSS, hash reports or RSC here)")
            n.host_features_conf = (n.host_features_conf | 1 << bit if value
                                    else n.host_features_conf & ~(1 << bit))
        elif name == "x-txburst":
            n.txburst = int(value)
        elif name in ("rx_queue_size", "tx_queue_size", "host_mtu", "speed"):
            setattr(n, {"host_mtu": "mtu"}.get(name, name), int(value))
        else:
            raise VbookError(f"Property 'virtio-net-pci.{name}' not found")


def add_virtio_net(machine: Any, backend: Any, mac: bytes | str | None = None, devfn: int = -1,
                   props: dict[str, Any] | None = None, tx_bh_deferred: bool = False) -> VirtIONetPCI:
    """``-netdev tap,id=netN -device virtio-net-pci,netdev=netN[,mac=…]`` on ``machine`` with
    ``backend`` as the tap (``send``/``recv``, like :class:`~vbook.devices.net_client.MemoryBackend`):
    the backend's client, the device on the next free slot; the main loop polls the backend."""
    n = len(machine.netdevs)
    nd = net.net_init_backend(backend, f"net{n}", machine.ctx)
    macaddr = bytes.fromhex(mac.replace(":", "")) if isinstance(mac, str) else (mac or b"")
    if macaddr and len(macaddr) != 6:
        raise VbookError(f"a MAC address has 6 bytes, got {macaddr.hex(':')!r}")
    macaddr = net.qemu_macaddr_default_if_unset(macaddr, getattr(machine, "_macs_used", set()))
    count = sum(1 for d in (machine.pci_bus.devices if machine.pci_bus else ())
                if isinstance(d, VirtIONetPCI))
    dev = VirtIONetPCI(netdev=nd, macaddr=macaddr, nic_name=f"virtio-net-pci.{count}",
                       props=dict(props or {}), tx_bh_deferred=tx_bh_deferred)
    machine.add_pci_device(dev, devfn)
    machine.netdevs.append(nd)
    if backend not in machine.nics:
        machine.nics = (*machine.nics, backend)
    return dev


__all__ = [
    "CONFIG_FEATURE_ENDS", "NOT_MODELLED", "VIRTIO_NET_PROPERTIES", "MacTable", "VirtIONet",
    "VirtIONetPCI", "VirtIONetQueue", "add_virtio_net", "net_virtio_info",
    "qemu_sendv_packet_async", "receive_filter", "receive_header", "set_properties",
    "virtio_net_add_queue", "virtio_net_bad_features", "virtio_net_can_receive",
    "virtio_net_drop_tx_queue_data", "virtio_net_flush_tx", "virtio_net_get_config",
    "virtio_net_get_features", "virtio_net_handle_ctrl", "virtio_net_handle_ctrl_iov",
    "virtio_net_handle_rx", "virtio_net_handle_tx_bh", "virtio_net_has_buffers",
    "virtio_net_receive", "virtio_net_receive_rcu", "virtio_net_reset", "virtio_net_set_config",
    "virtio_net_set_features", "virtio_net_set_link_status", "virtio_net_set_mrg_rx_bufs",
    "virtio_net_set_status", "virtio_net_tx_bh", "virtio_net_tx_complete",
]
