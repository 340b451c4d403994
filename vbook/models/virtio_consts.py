"""The numbers of virtio-pci and virtio-net, in one place, each with the header it comes from.

Linux's include/uapi/linux/virtio_ids.h, virtio_config.h, virtio_pci.h and
virtio_net.h (uapi 6.1.187, the installed headers; tests/test_virtio_pci.py
compiles a C program against them and compares every value), plus the few
numbers that are QEMU's own (include/hw/virtio/virtio.h, hw/net/virtio-net.c,
include/hw/pci/pci.h of QEMU 9.2.4), said so where they stand. The ring's own
constants (descriptor flags, ``VIRTIO_RING_F_*``, the transport feature bits)
are :mod:`vbook.models.vring_layout`'s and are re-exported here.

Feature *bits* are ``IntEnum`` s of bit numbers (``NetFeature.MRG_RXBUF`` is 15,
the mask is ``1 << 15``), as the headers define them; status and ISR bits are
``IntFlag`` s of masks.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from vbook.models.vring_layout import (
    VIRTIO_PCI_VRING_ALIGN,
    RingFeature,
    TransportFeature,
)

# --- identity (virtio_ids.h, QEMU include/hw/pci/pci.h) ------------------------------------

#: QEMU include/hw/pci/pci.h ``PCI_VENDOR_ID_REDHAT_QUMRANET``; spec v1.2 §4.1.2
PCI_VENDOR_ID = 0x1AF4
#: QEMU include/hw/pci/pci.h ``PCI_SUBVENDOR_ID_REDHAT_QUMRANET``
PCI_SUBVENDOR_ID = 0x1AF4
#: QEMU include/hw/pci/pci.h ``PCI_DEVICE_ID_VIRTIO_10_BASE``: a modern-only device is 0x1040 + id
PCI_DEVICE_ID_VIRTIO_10_BASE = 0x1040


class VirtioId(IntEnum):
    """``VIRTIO_ID_*`` — include/uapi/linux/virtio_ids.h (uapi 6.1): the device types.

    A legacy or transitional virtio-pci device puts its type in PCI_SUBSYSTEM_ID.
    """

    NET = 1
    BLOCK = 2
    CONSOLE = 3
    RNG = 4
    BALLOON = 5
    IOMEM = 6
    RPMSG = 7
    SCSI = 8
    P9 = 9                  # VIRTIO_ID_9P (a name may not start with a digit)
    MAC80211_WLAN = 10
    RPROC_SERIAL = 11
    CAIF = 12
    MEMORY_BALLOON = 13
    GPU = 16
    CLOCK = 17
    INPUT = 18
    VSOCK = 19
    CRYPTO = 20
    SIGNAL_DIST = 21
    PSTORE = 22
    IOMMU = 23
    MEM = 24
    SOUND = 25
    FS = 26
    PMEM = 27
    RPMB = 28
    MAC80211_HWSIM = 29
    VIDEO_ENCODER = 30
    VIDEO_DECODER = 31
    SCMI = 32
    NITRO_SEC_MOD = 33
    I2C_ADAPTER = 34
    WATCHDOG = 35
    CAN = 36
    DMABUF = 37
    PARAM_SERV = 38
    AUDIO_POLICY = 39
    BT = 40
    GPIO = 41


class TransId(IntEnum):
    """``VIRTIO_TRANS_ID_*`` — include/uapi/linux/virtio_ids.h (uapi 6.1): the PCI device IDs
    of transitional devices (range 0x1000-0x103f, spec v1.2 §4.1.2 "PCI Device Discovery")."""

    NET = 0x1000
    BLOCK = 0x1001
    BALLOON = 0x1002
    CONSOLE = 0x1003
    SCSI = 0x1004
    RNG = 0x1005
    P9 = 0x1009             # VIRTIO_TRANS_ID_9P


#: the device-ID window Linux's legacy driver claims (drivers/virtio/virtio_pci_legacy_dev.c
#: ``vp_legacy_probe``: "We only own devices >= 0x1000 and <= 0x103f")
LEGACY_DEVICE_IDS = range(0x1000, 0x1040)

# --- status, ISR, features (virtio_config.h, virtio_pci.h) ---------------------------------


class DeviceStatus(IntFlag):
    """``VIRTIO_CONFIG_S_*`` — include/uapi/linux/virtio_config.h (uapi 6.1); spec v1.2 §2.1."""

    ACKNOWLEDGE = 1         # the guest found the device
    DRIVER = 2              # the guest has a driver for it
    DRIVER_OK = 4           # the driver is set up: the device is live
    FEATURES_OK = 8         # (virtio 1.x) the feature negotiation is done
    NEEDS_RESET = 0x40      # the device hit an error and must be reset (virtio 1.x)
    FAILED = 0x80           # the guest gave up on the device


class Isr(IntFlag):
    """The ISR status byte (BAR0 + 19): bit 0 a queue interrupt, bit 1
    ``VIRTIO_PCI_ISR_CONFIG`` (include/uapi/linux/virtio_pci.h) a configuration change."""

    QUEUE = 0x1
    CONFIG = 0x2


class LegacyReg(IntEnum):
    """``VIRTIO_PCI_*`` offsets of the legacy I/O BAR — include/uapi/linux/virtio_pci.h (uapi 6.1);
    spec v1.2 "Legacy Interfaces: A Note on PCI Device Layout" (§4.1.4)."""

    HOST_FEATURES = 0       # 32 bits, R: the device's features 0-31
    GUEST_FEATURES = 4      # 32 bits, R/W: the driver's features 0-31
    QUEUE_PFN = 8           # 32 bits, R/W: the ring's GPA >> 12 for QUEUE_SEL (0: reset)
    QUEUE_NUM = 12          # 16 bits, R: the size of queue QUEUE_SEL
    QUEUE_SEL = 14          # 16 bits, R/W
    QUEUE_NOTIFY = 16       # 16 bits, W: a queue index = a kick
    STATUS = 18             # 8 bits, R/W: DeviceStatus
    ISR = 19                # 8 bits, R: read-to-clear
    MSI_CONFIG_VECTOR = 20  # VIRTIO_MSI_CONFIG_VECTOR, 16 bits, only with MSI-X enabled
    MSI_QUEUE_VECTOR = 22   # VIRTIO_MSI_QUEUE_VECTOR, 16 bits, only with MSI-X enabled


def VIRTIO_PCI_CONFIG_OFF(msix_enabled: bool) -> int:  # noqa: N802 (the header's macro)
    """include/uapi/linux/virtio_pci.h: where the device config starts in the legacy BAR."""
    return 24 if msix_enabled else 20


#: include/uapi/linux/virtio_pci.h
VIRTIO_PCI_ABI_VERSION = 0
VIRTIO_PCI_QUEUE_ADDR_SHIFT = 12
VIRTIO_PCI_ISR_CONFIG = 0x2
VIRTIO_MSI_NO_VECTOR = 0xFFFF

#: QEMU include/hw/virtio/virtio.h: the bit a legacy driver sets when it does not negotiate
#: ("UNUSED(30)"); the device then assumes ``bad_features`` (QEMU's own, not in uapi)
VIRTIO_F_BAD_FEATURE = 30
#: QEMU include/hw/virtio/virtio.h: queues a device may have, and "no MSI-X vector"
VIRTIO_QUEUE_MAX = 1024
VIRTIO_NO_VECTOR = 0xFFFF
#: include/uapi/linux/virtio_config.h: the transport feature bits span [28, 41)
VIRTIO_TRANSPORT_F_START = 28
VIRTIO_TRANSPORT_F_END = 41


class PciCapType(IntEnum):
    """``VIRTIO_PCI_CAP_*_CFG`` — include/uapi/linux/virtio_pci.h (uapi 6.1): ``cfg_type`` of a
    virtio 1.x vendor capability (spec v1.2 §4.1.4 "Virtio Structure PCI Capabilities")."""

    COMMON_CFG = 1
    NOTIFY_CFG = 2
    ISR_CFG = 3
    DEVICE_CFG = 4
    PCI_CFG = 5
    SHARED_MEMORY_CFG = 8


class PciCap(IntEnum):
    """``VIRTIO_PCI_CAP_*`` byte offsets in ``struct virtio_pci_cap`` (16 bytes) —
    include/uapi/linux/virtio_pci.h; ``NOTIFY_CAP_MULT`` is ``notify_off_multiplier``
    of ``struct virtio_pci_notify_cap`` (20 bytes)."""

    VNDR = 0
    NEXT = 1
    LEN = 2
    CFG_TYPE = 3
    BAR = 4
    OFFSET = 8
    LENGTH = 12
    NOTIFY_CAP_MULT = 16


class CommonCfg(IntEnum):
    """``VIRTIO_PCI_COMMON_*`` offsets in ``struct virtio_pci_common_cfg`` (56 bytes in uapi
    6.1; 60 with the 1.2 ``queue_notify_data`` / ``queue_reset``) — include/uapi/linux/virtio_pci.h."""

    DFSELECT = 0
    DF = 4
    GFSELECT = 8
    GF = 12
    MSIX = 16
    NUMQ = 18
    STATUS = 20
    CFGGENERATION = 21
    Q_SELECT = 22
    Q_SIZE = 24
    Q_MSIX = 26
    Q_ENABLE = 28
    Q_NOFF = 30
    Q_DESCLO = 32
    Q_DESCHI = 36
    Q_AVAILLO = 40
    Q_AVAILHI = 44
    Q_USEDLO = 48
    Q_USEDHI = 52
    Q_NDATA = 56
    Q_RESET = 58


#: include/uapi/linux/pci_regs.h ``PCI_CAP_ID_VNDR`` / ``PCI_CAP_ID_MSIX``
PCI_CAP_ID_VNDR = 0x09
PCI_CAP_ID_MSIX = 0x11
SIZEOF_VIRTIO_PCI_CAP = 16
SIZEOF_VIRTIO_PCI_NOTIFY_CAP = 20
SIZEOF_VIRTIO_PCI_CFG_CAP = 20
SIZEOF_VIRTIO_PCI_COMMON_CFG = 56

# --- virtio-net (virtio_net.h) -------------------------------------------------------------


class NetFeature(IntEnum):
    """``VIRTIO_NET_F_*`` bit numbers — include/uapi/linux/virtio_net.h (uapi 6.1); spec v1.2 §5.1.3.

    ``GUEST_USO4``/``GUEST_USO6``/``HOST_USO`` (54-56) are not in uapi 6.1: they come
    from QEMU 9.2.4's include/standard-headers/linux/virtio_net.h (Linux 6.2 added them).
    """

    CSUM = 0                # the device checksums a partial csum on TX
    GUEST_CSUM = 1          # the driver takes partial csums on RX
    CTRL_GUEST_OFFLOADS = 2
    MTU = 3
    MAC = 5
    GSO = 6                 # legacy "any GSO type"
    GUEST_TSO4 = 7
    GUEST_TSO6 = 8
    GUEST_ECN = 9
    GUEST_UFO = 10
    HOST_TSO4 = 11
    HOST_TSO6 = 12
    HOST_ECN = 13
    HOST_UFO = 14
    MRG_RXBUF = 15          # a received frame may span several buffers (12-byte header)
    STATUS = 16             # config.status is there
    CTRL_VQ = 17
    CTRL_RX = 18
    CTRL_VLAN = 19
    CTRL_RX_EXTRA = 20
    GUEST_ANNOUNCE = 21
    MQ = 22
    CTRL_MAC_ADDR = 23
    NOTF_COAL = 53
    GUEST_USO4 = 54         # QEMU standard-headers only (not uapi 6.1)
    GUEST_USO6 = 55         # QEMU standard-headers only
    HOST_USO = 56           # QEMU standard-headers only
    HASH_REPORT = 57
    RSS = 60
    RSC_EXT = 61
    STANDBY = 62
    SPEED_DUPLEX = 63


#: the bits the uapi 6.1 header does not have (the oracle skips them)
NET_FEATURES_NOT_IN_UAPI_6_1 = frozenset({NetFeature.GUEST_USO4, NetFeature.GUEST_USO6,
                                          NetFeature.HOST_USO})


class NetStatus(IntFlag):
    """``VIRTIO_NET_S_*`` — include/uapi/linux/virtio_net.h: ``virtio_net_config.status``."""

    LINK_UP = 1
    ANNOUNCE = 2


class NetConfig(IntEnum):
    """Byte offsets in ``struct virtio_net_config`` (24 bytes) — include/uapi/linux/virtio_net.h."""

    MAC = 0                 # u8[6]
    STATUS = 6              # le16 (with VIRTIO_NET_F_STATUS)
    MAX_VIRTQUEUE_PAIRS = 8  # le16 (with VIRTIO_NET_F_MQ)
    MTU = 10                # le16 (with VIRTIO_NET_F_MTU)
    SPEED = 12              # le32 (with VIRTIO_NET_F_SPEED_DUPLEX)
    DUPLEX = 16             # u8
    RSS_MAX_KEY_SIZE = 17   # u8
    RSS_MAX_INDIRECTION_TABLE_LENGTH = 18  # le16
    SUPPORTED_HASH_TYPES = 20  # le32


SIZEOF_VIRTIO_NET_CONFIG = 24


class NetHdrFlag(IntFlag):
    """``VIRTIO_NET_HDR_F_*`` — include/uapi/linux/virtio_net.h."""

    NEEDS_CSUM = 1
    DATA_VALID = 2
    RSC_INFO = 4


class NetHdrGso(IntEnum):
    """``VIRTIO_NET_HDR_GSO_*`` — include/uapi/linux/virtio_net.h (ECN is or-ed in)."""

    NONE = 0
    TCPV4 = 1
    UDP = 3
    TCPV6 = 4
    ECN = 0x80


#: sizeof(struct virtio_net_hdr), (…_mrg_rxbuf = …_v1), (…_v1_hash) — include/uapi/linux/virtio_net.h
HDR_SIZE = 10
HDR_SIZE_MRG = 12
HDR_SIZE_V1_HASH = 20


class NetCtrlClass(IntEnum):
    """``VIRTIO_NET_CTRL_*`` command classes — include/uapi/linux/virtio_net.h."""

    RX = 0
    MAC = 1
    VLAN = 2
    ANNOUNCE = 3
    MQ = 4
    GUEST_OFFLOADS = 5
    NOTF_COAL = 6


class NetCtrlRx(IntEnum):
    """``VIRTIO_NET_CTRL_RX_*`` commands (class RX) — include/uapi/linux/virtio_net.h."""

    PROMISC = 0
    ALLMULTI = 1
    ALLUNI = 2
    NOMULTI = 3
    NOUNI = 4
    NOBCAST = 5


class NetCtrlMac(IntEnum):
    """``VIRTIO_NET_CTRL_MAC_*`` — include/uapi/linux/virtio_net.h."""

    TABLE_SET = 0
    ADDR_SET = 1


class NetCtrlVlan(IntEnum):
    """``VIRTIO_NET_CTRL_VLAN_*`` — include/uapi/linux/virtio_net.h."""

    ADD = 0
    DEL = 1


class NetCtrlMq(IntEnum):
    """``VIRTIO_NET_CTRL_MQ_*`` commands — include/uapi/linux/virtio_net.h."""

    VQ_PAIRS_SET = 0
    RSS_CONFIG = 1
    HASH_CONFIG = 2


#: include/uapi/linux/virtio_net.h
VIRTIO_NET_OK = 0
VIRTIO_NET_ERR = 1
VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0
VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET = 0
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000
SIZEOF_VIRTIO_NET_CTRL_HDR = 2

#: hw/net/virtio-net.c / include/hw/virtio/virtio-net.h (QEMU 9.2.4)
VIRTIO_NET_RX_QUEUE_DEFAULT_SIZE = 256
VIRTIO_NET_TX_QUEUE_DEFAULT_SIZE = 256
VIRTIO_NET_CTRL_QUEUE_SIZE = 64      # virtio_add_queue(vdev, 64, virtio_net_handle_ctrl)
TX_BURST = 256
TX_TIMER_INTERVAL = 150000           # ns, the tx=timer flavour (not modelled)
MAC_TABLE_ENTRIES = 64
MAX_VLAN = 1 << 12

__all__ = [
    "HDR_SIZE", "HDR_SIZE_MRG", "HDR_SIZE_V1_HASH", "LEGACY_DEVICE_IDS", "MAC_TABLE_ENTRIES",
    "MAX_VLAN", "NET_FEATURES_NOT_IN_UAPI_6_1", "PCI_CAP_ID_MSIX", "PCI_CAP_ID_VNDR",
    "PCI_DEVICE_ID_VIRTIO_10_BASE", "PCI_SUBVENDOR_ID", "PCI_VENDOR_ID",
    "SIZEOF_VIRTIO_NET_CONFIG", "SIZEOF_VIRTIO_NET_CTRL_HDR", "SIZEOF_VIRTIO_PCI_CAP",
    "SIZEOF_VIRTIO_PCI_CFG_CAP", "SIZEOF_VIRTIO_PCI_COMMON_CFG", "SIZEOF_VIRTIO_PCI_NOTIFY_CAP",
    "TX_BURST", "TX_TIMER_INTERVAL", "VIRTIO_F_BAD_FEATURE", "VIRTIO_MSI_NO_VECTOR",
    "VIRTIO_NET_CTRL_ANNOUNCE_ACK", "VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET",
    "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX", "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN",
    "VIRTIO_NET_CTRL_QUEUE_SIZE", "VIRTIO_NET_ERR", "VIRTIO_NET_OK",
    "VIRTIO_NET_RX_QUEUE_DEFAULT_SIZE", "VIRTIO_NET_TX_QUEUE_DEFAULT_SIZE", "VIRTIO_NO_VECTOR",
    "VIRTIO_PCI_ABI_VERSION", "VIRTIO_PCI_CONFIG_OFF", "VIRTIO_PCI_ISR_CONFIG",
    "VIRTIO_PCI_QUEUE_ADDR_SHIFT", "VIRTIO_PCI_VRING_ALIGN", "VIRTIO_QUEUE_MAX",
    "VIRTIO_TRANSPORT_F_END", "VIRTIO_TRANSPORT_F_START", "CommonCfg", "DeviceStatus", "Isr",
    "LegacyReg", "NetConfig", "NetCtrlClass", "NetCtrlMac", "NetCtrlMq", "NetCtrlRx",
    "NetCtrlVlan", "NetFeature", "NetHdrFlag", "NetHdrGso", "NetStatus", "PciCap", "PciCapType",
    "RingFeature", "TransId", "TransportFeature", "VirtioId",
]
