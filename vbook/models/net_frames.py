"""The frames on the wire between a guest's NIC and the host: build them, parse them, name them.

Everything a guest says first on a link, and what the host's network stack
answers, with nothing routed anywhere (link-local addresses only):

========================  ===================================  ==========================
guest sends               the host stack answers               RFC, kernel function
========================  ===================================  ==========================
IPv6 neighbour            neighbour advertisement (NA)         RFC 4861 §7.2;
solicitation (NS)                                              net/ipv6/ndisc.c ndisc_recv_ns
ICMPv6 echo request       ICMPv6 echo reply                    RFC 4443 §4; icmpv6_echo_reply
ARP request (who-has)     ARP reply (is-at)                    RFC 826; net/ipv4/arp.c arp_process
ICMP echo request         ICMP echo reply                      RFC 792; net/ipv4/icmp.c icmp_echo
========================  ===================================  ==========================

A frame is Ethernet II (``dst src ethertype payload``, no FCS: a tap hands
over neither preamble nor CRC), and the 16-bit one's-complement *internet
checksum* (RFC 1071) guards the IPv4 header, ICMP, and ICMPv6 — the last one
over a *pseudo-header* of source, destination, length and next header
(RFC 8200 §8.1), so a frame with a wrong address fails its checksum.

:func:`parse` names each layer (:class:`Frame`), :func:`describe` says in one
line what a frame is (``"ICMPv6 echo reply fe80::1 → fe80::2 id 7 seq 1 (56
bytes)"``), :func:`verify` lists what is wrong with its checksums, and
:func:`kernel_chatter` says whether a frame is one the host kernel sends on its
own (MLDv2 reports, duplicate-address-detection probes, router
solicitations) rather than an answer.

Last, :class:`VirtioNetHdr`: the ``struct virtio_net_hdr`` (10 bytes; 12 with
``VIRTIO_NET_F_MRG_RXBUF`` or VERSION_1) a virtio-net guest puts before every
frame and a tap opened with ``IFF_VNET_HDR`` reads and writes. With
``VIRTIO_NET_HDR_F_NEEDS_CSUM`` the guest leaves the checksum to the other
side: :func:`partial_csum` makes such a frame the way Linux's driver does and
:func:`fill_csum` is what the other side then does (``skb_checksum_help``).

Constants are ``IntEnum`` with their source; tests/test_net_frames.py proves
them against the installed headers (linux/if_ether.h, linux/if_arp.h,
linux/in.h, linux/in6.h, linux/icmp.h, linux/icmpv6.h, netinet/icmp6.h,
linux/virtio_net.h; uapi 6.1).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any

from vbook.errors import VbookError
from vbook.models.virtio_consts import HDR_SIZE, HDR_SIZE_MRG

# --- constants, with their source ---------------------------------------------------------


class EtherType(IntEnum):
    """``ETH_P_*`` — include/uapi/linux/if_ether.h (uapi 6.1)."""

    IP = 0x0800    #: IPv4
    ARP = 0x0806   #: Address Resolution Protocol
    IPV6 = 0x86DD  #: IPv6


ETH_ALEN = 6    #: octets in one Ethernet address (linux/if_ether.h)
ETH_HLEN = 14   #: octets in the Ethernet II header (linux/if_ether.h)
ETH_ZLEN = 60   #: minimum frame without FCS; a tap does not pad (machine.md: ARP 42 → 42)


class IpProto(IntEnum):
    """``IPPROTO_*`` — include/uapi/linux/in.h and in6.h (uapi 6.1); also IPv6 next headers."""

    HOPOPTS = 0     #: IPv6 hop-by-hop options (MLD's router alert lives here)
    ICMP = 1
    IGMP = 2
    TCP = 6
    UDP = 17
    ROUTING = 43    #: IPv6 routing header
    FRAGMENT = 44   #: IPv6 fragment header
    ICMPV6 = 58
    NONE = 59       #: IPv6 "no next header"
    DSTOPTS = 60    #: IPv6 destination options


#: IPv6 extension headers :func:`parse` steps over to reach the upper layer (RFC 8200 §4)
IPV6_EXT_HEADERS = (IpProto.HOPOPTS, IpProto.ROUTING, IpProto.DSTOPTS)

ARPHRD_ETHER = 1  #: ARP hardware type Ethernet — linux/if_arp.h


class ArpOp(IntEnum):
    """``ARPOP_*`` — include/uapi/linux/if_arp.h (uapi 6.1); RFC 826."""

    REQUEST = 1
    REPLY = 2


class IcmpType(IntEnum):
    """ICMP (IPv4) message types ``ICMP_*`` — include/uapi/linux/icmp.h (uapi 6.1); RFC 792."""

    ECHOREPLY = 0
    DEST_UNREACH = 3
    ECHO = 8
    TIME_EXCEEDED = 11


class Icmp6Type(IntEnum):
    """ICMPv6 message types. ``ICMPV6_*`` of include/uapi/linux/icmpv6.h (uapi 6.1, RFC 4443,
    RFC 3810 for MLDv2); the neighbour-discovery types 133–137 (RFC 4861 §4) are
    ``ND_*`` of glibc's netinet/icmp6.h — Linux keeps them out of uapi
    (``NDISC_*`` in include/net/ndisc.h)."""

    DEST_UNREACH = 1
    PKT_TOOBIG = 2
    TIME_EXCEED = 3
    PARAMPROB = 4
    ECHO_REQUEST = 128
    ECHO_REPLY = 129
    MGM_QUERY = 130          #: MLD query
    MGM_REPORT = 131         #: MLDv1 report
    MGM_REDUCTION = 132      #: MLDv1 done
    ROUTER_SOLICITATION = 133
    ROUTER_ADVERTISEMENT = 134
    NEIGHBOUR_SOLICITATION = 135
    NEIGHBOUR_ADVERTISEMENT = 136
    REDIRECT = 137
    MLD2_REPORT = 143


class NdOpt(IntEnum):
    """Neighbour-discovery option types — RFC 4861 §4.6; glibc netinet/icmp6.h ``ND_OPT_*``
    (``ND_OPT_SOURCE_LINKADDR`` …), Linux include/net/ndisc.h ``ND_OPT_*``."""

    SOURCE_LL_ADDR = 1  #: the sender's MAC (in NS, RS)
    TARGET_LL_ADDR = 2  #: the target's MAC (in NA)
    PREFIX_INFO = 3
    REDIRECT_HDR = 4
    MTU = 5


class NaFlag(IntFlag):
    """The R, S, O bits of a neighbour advertisement: the first byte of its 32-bit flags
    word (RFC 4861 §4.4). glibc's ``ND_NA_FLAG_*`` on a little-endian host have these values."""

    ROUTER = 0x80     #: the sender is a router
    SOLICITED = 0x40  #: an answer to an NS
    OVERRIDE = 0x20   #: replace a cached MAC


class Mld2Record(IntEnum):
    """MLDv2 multicast address record types — RFC 3810 §5.2.12 (Linux include/net/mld.h
    ``MLD2_*``)."""

    MODE_IS_INCLUDE = 1
    MODE_IS_EXCLUDE = 2
    CHANGE_TO_INCLUDE = 3
    CHANGE_TO_EXCLUDE = 4
    ALLOW_NEW_SOURCES = 5
    BLOCK_OLD_SOURCES = 6


#: hop limit of every neighbour-discovery message; a receiver drops others (RFC 4861 §7.1.1)
ND_HOP_LIMIT = 255
#: Linux's default IPv6 hop limit and IPv4 TTL (net.ipv6.conf.*.hop_limit, net.ipv4.ip_default_ttl)
DEFAULT_HOP_LIMIT = 64
IP_DF = 0x4000  #: IPv4 "don't fragment" bit in the flags/fragment-offset word (RFC 791)

# --- the book's link: one guest, one host, link-local only ---------------------------------

#: QEMU's MAC for the first NIC (net/net.c ``qemu_macaddr_default_if_unset``: 52:54:00:12:34:56)
GUEST_MAC = "52:54:00:12:34:56"
#: the host side of the tap: locally administered (bit 1 of the first octet), unicast
HOST_MAC = "02:76:62:00:00:01"
HOST_IP6 = "fe80::1"
GUEST_IP6 = "fe80::2"
#: IPv4 link-local (RFC 3927, 169.254.0.0/16; the first and last /24 are reserved)
HOST_IP4 = "169.254.86.1"
GUEST_IP4 = "169.254.86.2"
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
#: the MLDv2-capable routers group every MLDv2 report goes to (RFC 3810 §5.2.14)
ALL_MLDV2_ROUTERS = "ff02::16"
ALL_ROUTERS = "ff02::2"
ALL_NODES = "ff02::1"


class FrameError(VbookError, ValueError):
    """A frame or an address is malformed: too short, a length that lies, a bad MAC …"""


# --- addresses --------------------------------------------------------------------------------

def mac_bytes(mac: bytes | str) -> bytes:
    """``"52:54:00:12:34:56"`` (or 6 bytes) → 6 bytes."""
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != ETH_ALEN:
            raise FrameError(f"a MAC address is {ETH_ALEN} bytes, got {len(mac)}")
        return bytes(mac)
    parts = str(mac).replace("-", ":").split(":")
    try:
        out = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise FrameError(f"not a MAC address: {mac!r}") from None
    if len(out) != ETH_ALEN or any(len(p) not in (1, 2) for p in parts):
        raise FrameError(f"not a MAC address: {mac!r} (want six hex octets, 52:54:00:12:34:56)")
    return out


def mac_str(mac: bytes) -> str:
    """6 bytes → ``"52:54:00:12:34:56"``."""
    return ":".join(f"{b:02x}" for b in mac)


def ip6(addr: Any) -> ipaddress.IPv6Address:
    try:
        return addr if isinstance(addr, ipaddress.IPv6Address) else ipaddress.IPv6Address(addr)
    except ValueError as e:
        raise FrameError(f"not an IPv6 address: {addr!r} ({e})") from None


def ip4(addr: Any) -> ipaddress.IPv4Address:
    try:
        return addr if isinstance(addr, ipaddress.IPv4Address) else ipaddress.IPv4Address(addr)
    except ValueError as e:
        raise FrameError(f"not an IPv4 address: {addr!r} ({e})") from None


def solicited_node(addr: Any) -> ipaddress.IPv6Address:
    """The solicited-node multicast group of ``addr``: ``ff02::1:ff`` + its low 24 bits
    (RFC 4291 §2.7.1). An NS for an address goes there."""
    low = ip6(addr).packed[13:]
    return ipaddress.IPv6Address(bytes.fromhex("ff0200000000000000000001ff") + low)


def multicast_mac(addr: Any) -> bytes:
    """The Ethernet address of an IPv6 multicast group: ``33:33`` + its low 32 bits (RFC 2464 §7)."""
    a = ip6(addr)
    if not a.is_multicast:
        raise FrameError(f"{a} is not a multicast address")
    return b"\x33\x33" + a.packed[12:]


# --- the internet checksum (RFC 1071) ---------------------------------------------------------


def ones_sum(data: bytes, start: int = 0) -> int:
    """The 16-bit one's-complement sum of ``data`` (big-endian words, odd byte padded
    with zero) added to ``start``, folded to 16 bits: Linux's ``csum_partial`` + ``csum_fold``
    without the final complement."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data: bytes, start: int = 0) -> int:
    """The internet checksum: the complement of :func:`ones_sum`. A message that holds its
    own correct checksum sums to 0xFFFF, i.e. ``checksum(message) == 0``."""
    return ~ones_sum(data, start) & 0xFFFF


def pseudo_header6(src: Any, dst: Any, length: int, next_header: int = IpProto.ICMPV6) -> bytes:
    """The IPv6 pseudo-header of an upper-layer checksum (RFC 8200 §8.1): src, dst,
    upper-layer length (u32), three zero bytes, next header."""
    return ip6(src).packed + ip6(dst).packed + struct.pack("!I3xB", length, next_header)


def pseudo_header4(src: Any, dst: Any, length: int, protocol: int) -> bytes:
    """The IPv4 pseudo-header of UDP and TCP (RFC 768): src, dst, zero, protocol, length.
    (ICMP has none: its checksum covers only the ICMP message.)"""
    return ip4(src).packed + ip4(dst).packed + struct.pack("!xBH", protocol, length)


# --- building -------------------------------------------------------------------------------------


def ethernet(dst: Any, src: Any, ethertype: int, payload: bytes) -> bytes:
    """An Ethernet II frame (no padding to ETH_ZLEN, no FCS — what a tap carries)."""
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype) + bytes(payload)


def ipv6(src: Any, dst: Any, next_header: int, payload: bytes, hop_limit: int = DEFAULT_HOP_LIMIT,
         traffic_class: int = 0, flow_label: int = 0) -> bytes:
    """An IPv6 header (RFC 8200 §3) + ``payload``."""
    if not 0 <= flow_label < 1 << 20 or not 0 <= traffic_class < 256 or not 0 <= hop_limit < 256:
        raise FrameError(f"IPv6 header field out of range (traffic class {traffic_class}, "
                         f"flow label {flow_label}, hop limit {hop_limit})")
    if len(payload) > 0xFFFF:
        raise FrameError(f"IPv6 payload of {len(payload)} bytes needs a jumbogram")
    word = 6 << 28 | traffic_class << 20 | flow_label
    return (struct.pack("!IHBB", word, len(payload), next_header, hop_limit)
            + ip6(src).packed + ip6(dst).packed + bytes(payload))


def icmpv6(src: Any, dst: Any, type: int, code: int, body: bytes) -> bytes:
    """An ICMPv6 message (RFC 4443 §2.1) with its checksum over the pseudo-header."""
    msg = struct.pack("!BBH", type, code, 0) + bytes(body)
    csum = checksum(msg, ones_sum(pseudo_header6(src, dst, len(msg))))
    return msg[:2] + struct.pack("!H", csum) + msg[4:]


def ipv4(src: Any, dst: Any, protocol: int, payload: bytes, ttl: int = DEFAULT_HOP_LIMIT,
         ident: int = 0, df: bool = True, tos: int = 0) -> bytes:
    """An IPv4 header without options (RFC 791, IHL 5) + ``payload``, header checksum filled."""
    total = 20 + len(payload)
    if total > 0xFFFF:
        raise FrameError(f"IPv4 datagram of {total} bytes exceeds 65535")
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, total, ident & 0xFFFF, IP_DF if df else 0, ttl,
                      protocol, 0, ip4(src).packed, ip4(dst).packed)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + bytes(payload)


def icmp4(type: int, code: int, body: bytes) -> bytes:
    """An ICMP (IPv4) message (RFC 792) with its checksum (over the message only)."""
    msg = struct.pack("!BBH", type, code, 0) + bytes(body)
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def _nd_option(kind: int, mac: Any) -> bytes:
    return struct.pack("!BB", kind, 1) + mac_bytes(mac)  # length in units of 8 bytes


def neighbour_solicitation(src_mac: Any = GUEST_MAC, src: Any = GUEST_IP6, target: Any = HOST_IP6,
                           dst: Any = None, dst_mac: Any = None, sll: bool = True) -> bytes:
    """An NS frame asking who has ``target`` (RFC 4861 §4.3): by default to the target's
    solicited-node group (its 33:33:ff:… MAC), with a source link-layer option, hop limit 255.
    ``src="::"`` makes a DAD probe (then no source link-layer option, RFC 4861 §4.3)."""
    dst = solicited_node(target) if dst is None else ip6(dst)
    if dst_mac is None:
        dst_mac = multicast_mac(dst) if dst.is_multicast else None
    if dst_mac is None:
        raise FrameError(f"an NS to the unicast {dst} needs dst_mac (the MAC being checked)")
    opts = _nd_option(NdOpt.SOURCE_LL_ADDR, src_mac) if sll and not ip6(src).is_unspecified else b""
    body = struct.pack("!I", 0) + ip6(target).packed + opts
    msg = icmpv6(src, dst, Icmp6Type.NEIGHBOUR_SOLICITATION, 0, body)
    return ethernet(dst_mac, src_mac, EtherType.IPV6,
                    ipv6(src, dst, IpProto.ICMPV6, msg, hop_limit=ND_HOP_LIMIT))


def neighbour_advertisement(src_mac: Any, src: Any, dst_mac: Any, dst: Any, target: Any = None,
                            flags: int = NaFlag.SOLICITED | NaFlag.OVERRIDE, tll: bool = True) -> bytes:
    """An NA frame: ``target`` (default ``src``) is at ``src_mac`` (RFC 4861 §4.4)."""
    target = src if target is None else target
    opts = _nd_option(NdOpt.TARGET_LL_ADDR, src_mac) if tll else b""
    body = struct.pack("!B3x", int(flags)) + ip6(target).packed + opts
    msg = icmpv6(src, dst, Icmp6Type.NEIGHBOUR_ADVERTISEMENT, 0, body)
    return ethernet(dst_mac, src_mac, EtherType.IPV6,
                    ipv6(src, dst, IpProto.ICMPV6, msg, hop_limit=ND_HOP_LIMIT))


def echo_request6(src_mac: Any = GUEST_MAC, dst_mac: Any = HOST_MAC, src: Any = GUEST_IP6,
                  dst: Any = HOST_IP6, ident: int = 7, seq: int = 1, payload: bytes | None = None,
                  hop_limit: int = DEFAULT_HOP_LIMIT, type: int = Icmp6Type.ECHO_REQUEST) -> bytes:
    """An ICMPv6 echo request frame (RFC 4443 §4.1); ``payload`` defaults to :func:`ping_payload`."""
    data = ping_payload() if payload is None else bytes(payload)
    msg = icmpv6(src, dst, type, 0, struct.pack("!HH", ident & 0xFFFF, seq & 0xFFFF) + data)
    return ethernet(dst_mac, src_mac, EtherType.IPV6,
                    ipv6(src, dst, IpProto.ICMPV6, msg, hop_limit=hop_limit))


def echo_reply6(src_mac: Any, dst_mac: Any, src: Any, dst: Any, ident: int, seq: int,
                payload: bytes, hop_limit: int = DEFAULT_HOP_LIMIT) -> bytes:
    """An ICMPv6 echo reply frame (RFC 4443 §4.2)."""
    return echo_request6(src_mac, dst_mac, src, dst, ident, seq, payload, hop_limit,
                         type=Icmp6Type.ECHO_REPLY)


def arp(oper: int, sha: Any, spa: Any, tha: Any, tpa: Any, dst_mac: Any = None) -> bytes:
    """An ARP frame for Ethernet/IPv4 (RFC 826), 42 bytes. A request goes to the broadcast
    MAC with a zero target MAC, a reply to the asker."""
    if dst_mac is None:
        dst_mac = BROADCAST_MAC if oper == ArpOp.REQUEST else tha
    body = struct.pack("!HHBBH6s4s6s4s", ARPHRD_ETHER, EtherType.IP, ETH_ALEN, 4, oper,
                       mac_bytes(sha), ip4(spa).packed, mac_bytes(tha), ip4(tpa).packed)
    return ethernet(dst_mac, sha, EtherType.ARP, body)


def arp_request(src_mac: Any = GUEST_MAC, src: Any = GUEST_IP4, target: Any = HOST_IP4) -> bytes:
    """"Who has ``target``? Tell ``src``" — broadcast, target MAC zero."""
    return arp(ArpOp.REQUEST, src_mac, src, bytes(ETH_ALEN), target)


def arp_reply(src_mac: Any, src: Any, dst_mac: Any, dst: Any) -> bytes:
    """"``src`` is at ``src_mac``" — sent to the asker."""
    return arp(ArpOp.REPLY, src_mac, src, dst_mac, dst)


def echo_request4(src_mac: Any = GUEST_MAC, dst_mac: Any = HOST_MAC, src: Any = GUEST_IP4,
                  dst: Any = HOST_IP4, ident: int = 7, seq: int = 1, payload: bytes | None = None,
                  ttl: int = DEFAULT_HOP_LIMIT, ip_id: int = 0, df: bool = True,
                  type: int = IcmpType.ECHO) -> bytes:
    """An ICMP echo request frame (RFC 792); ``payload`` defaults to :func:`ping_payload`."""
    data = ping_payload() if payload is None else bytes(payload)
    msg = icmp4(type, 0, struct.pack("!HH", ident & 0xFFFF, seq & 0xFFFF) + data)
    return ethernet(dst_mac, src_mac, EtherType.IP,
                    ipv4(src, dst, IpProto.ICMP, msg, ttl=ttl, ident=ip_id, df=df))


def echo_reply4(src_mac: Any, dst_mac: Any, src: Any, dst: Any, ident: int, seq: int,
                payload: bytes, ttl: int = DEFAULT_HOP_LIMIT, ip_id: int = 0, df: bool = False) -> bytes:
    """An ICMP echo reply frame."""
    return echo_request4(src_mac, dst_mac, src, dst, ident, seq, payload, ttl, ip_id, df,
                         type=IcmpType.ECHOREPLY)


def ping_payload(n: int = 56) -> bytes:
    """``n`` bytes of a deterministic echo payload (iputils ping sends 56: a timestamp, then
    0x10, 0x11, …; here bytes 0, 1, 2, … so outputs stay the same from run to run)."""
    return bytes(i & 0xFF for i in range(n))


# --- parsing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ethernet:
    dst: bytes
    src: bytes
    ethertype: int


@dataclass(frozen=True)
class Arp:
    """An Ethernet/IPv4 ARP packet: ``oper``, sender (sha, spa), target (tha, tpa)."""

    htype: int
    ptype: int
    oper: int
    sha: bytes
    spa: ipaddress.IPv4Address
    tha: bytes
    tpa: ipaddress.IPv4Address


@dataclass(frozen=True)
class Ipv4:
    tos: int
    total_length: int
    ident: int
    flags_frag: int
    ttl: int
    protocol: int
    checksum: int
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    header_length: int = 20
    csum_ok: bool = True


@dataclass(frozen=True)
class Ipv6:
    traffic_class: int
    flow_label: int
    payload_length: int
    next_header: int            #: of the fixed header
    hop_limit: int
    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    ext_headers: tuple[int, ...] = ()  #: extension headers stepped over (HOPOPTS for MLD)
    upper: int = 0              #: the upper-layer protocol after them
    upper_offset: int = 0       #: where it starts, in bytes after the fixed header
    router_alert: bool = False  #: a hop-by-hop router alert option (RFC 2711) was present


@dataclass(frozen=True)
class Icmp:
    """An ICMP or ICMPv6 message. Fields that a type does not have stay None."""

    family: str                 #: "ICMP" or "ICMPv6"
    type: int
    code: int
    checksum: int
    csum_ok: bool
    want_csum: int              #: the checksum the message should carry
    ident: int | None = None    #: echo
    seq: int | None = None      #: echo
    payload: bytes = b""        #: echo data
    target: ipaddress.IPv6Address | None = None  #: NS, NA
    na_flags: int | None = None                  #: NA: R|S|O
    options: tuple[tuple[int, bytes], ...] = ()  #: ND options (type, data)
    records: tuple[tuple[int, ipaddress.IPv6Address, int], ...] = ()  #: MLDv2 (type, group, nsrcs)

    def option(self, kind: int) -> bytes | None:
        """The data of the first ND option of ``kind`` (e.g. the MAC of a source
        link-layer option), or None."""
        return next((data for k, data in self.options if k == kind), None)


@dataclass(frozen=True)
class Frame:
    """A parsed frame: :attr:`eth`, then :attr:`net` (an :class:`Arp`, :class:`Ipv4` or
    :class:`Ipv6`, None for other ethertypes) and :attr:`l4` (an :class:`Icmp`, or None)."""

    raw: bytes = field(repr=False)
    eth: Ethernet
    net: Arp | Ipv4 | Ipv6 | None = None
    l4: Icmp | None = None
    problems: tuple[str, ...] = ()  #: bad checksums, lengths that do not add up

    @property
    def kind(self) -> str:
        """What the frame is, in words: "ICMPv6 echo reply", "ARP request", "MLDv2 report" …"""
        return _kind(self)

    def describe(self) -> str:
        return describe(self)

    def content(self) -> dict[str, Any]:
        return content(self)


_ICMP6_NAMES = {
    Icmp6Type.ECHO_REQUEST: "echo request", Icmp6Type.ECHO_REPLY: "echo reply",
    Icmp6Type.NEIGHBOUR_SOLICITATION: "neighbour solicitation",
    Icmp6Type.NEIGHBOUR_ADVERTISEMENT: "neighbour advertisement",
    Icmp6Type.ROUTER_SOLICITATION: "router solicitation",
    Icmp6Type.ROUTER_ADVERTISEMENT: "router advertisement",
    Icmp6Type.MLD2_REPORT: "MLDv2 report", Icmp6Type.MGM_QUERY: "MLD query",
    Icmp6Type.MGM_REPORT: "MLDv1 report", Icmp6Type.MGM_REDUCTION: "MLDv1 done",
    Icmp6Type.DEST_UNREACH: "destination unreachable", Icmp6Type.PKT_TOOBIG: "packet too big",
    Icmp6Type.TIME_EXCEED: "time exceeded", Icmp6Type.PARAMPROB: "parameter problem",
    Icmp6Type.REDIRECT: "redirect",
}
_ICMP_NAMES = {IcmpType.ECHO: "echo request", IcmpType.ECHOREPLY: "echo reply",
               IcmpType.DEST_UNREACH: "destination unreachable",
               IcmpType.TIME_EXCEEDED: "time exceeded"}


def parse(frame: bytes) -> Frame:
    """Parse an Ethernet II frame as far as this module knows its layers.

    Raises :class:`FrameError` when a header is cut short or a length field points
    past the end; a wrong *checksum* is not an error but listed in
    :attr:`Frame.problems` (a receiver drops such a frame and counts it).
    """
    raw = bytes(frame)
    if len(raw) < ETH_HLEN:
        raise FrameError(f"an Ethernet frame has at least {ETH_HLEN} bytes, got {len(raw)}")
    eth = Ethernet(raw[0:6], raw[6:12], struct.unpack_from("!H", raw, 12)[0])
    body = raw[ETH_HLEN:]
    if eth.ethertype == EtherType.ARP:
        return Frame(raw, eth, _parse_arp(body))
    if eth.ethertype == EtherType.IPV6:
        return _parse_ipv6(raw, eth, body)
    if eth.ethertype == EtherType.IP:
        return _parse_ipv4(raw, eth, body)
    return Frame(raw, eth)


def _parse_arp(body: bytes) -> Arp:
    if len(body) < 28:
        raise FrameError(f"an Ethernet/IPv4 ARP packet has 28 bytes, got {len(body)}")
    htype, ptype, hlen, plen, oper, sha, spa, tha, tpa = struct.unpack_from("!HHBBH6s4s6s4s", body)
    if (hlen, plen) != (ETH_ALEN, 4):
        raise FrameError(f"ARP with hardware length {hlen} / protocol length {plen}: only "
                         "Ethernet/IPv4 (6/4) is parsed")
    return Arp(htype, ptype, oper, sha, ipaddress.IPv4Address(spa), tha, ipaddress.IPv4Address(tpa))


def _parse_ipv6(raw: bytes, eth: Ethernet, body: bytes) -> Frame:
    if len(body) < 40:
        raise FrameError(f"an IPv6 header has 40 bytes, got {len(body)}")
    word, plen, nh, hlim = struct.unpack_from("!IHBB", body)
    if word >> 28 != 6:
        raise FrameError(f"IPv6 ethertype but IP version {word >> 28}")
    src, dst = ipaddress.IPv6Address(body[8:24]), ipaddress.IPv6Address(body[24:40])
    if 40 + plen > len(body):
        raise FrameError(f"IPv6 payload length {plen} runs past the frame ({len(body) - 40} bytes)")
    payload = body[40:40 + plen]
    problems = [] if 40 + plen == len(body) else [f"{len(body) - 40 - plen} bytes after the IPv6 payload"]
    upper, off, exts, alert = nh, 0, [], False
    while upper in IPV6_EXT_HEADERS:
        if off + 8 > len(payload):
            raise FrameError(f"IPv6 extension header {upper} cut short")
        nxt, hlen = payload[off], (payload[off + 1] + 1) * 8
        if off + hlen > len(payload):
            raise FrameError(f"IPv6 extension header {upper} of {hlen} bytes runs past the payload")
        if upper == IpProto.HOPOPTS:
            alert = _has_router_alert(payload[off + 2:off + hlen])
        exts.append(upper)
        upper, off = nxt, off + hlen
    net = Ipv6((word >> 20) & 0xFF, word & 0xFFFFF, plen, nh, hlim, src, dst, tuple(exts), upper, off,
               alert)
    l4 = None
    if upper == IpProto.ICMPV6:
        l4 = _parse_icmpv6(src, dst, payload[off:])
        if not l4.csum_ok:
            problems.append(f"bad ICMPv6 checksum {l4.checksum:#06x} (want {l4.want_csum:#06x})")
    return Frame(raw, eth, net, l4, tuple(problems))


def _has_router_alert(opts: bytes) -> bool:
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:  # Pad1
            i += 1
            continue
        if i + 1 >= len(opts):
            break
        if kind == 5:  # router alert, RFC 2711
            return True
        i += 2 + opts[i + 1]
    return False


def _parse_icmpv6(src: Any, dst: Any, msg: bytes) -> Icmp:
    if len(msg) < 4:
        raise FrameError(f"an ICMPv6 message has at least 4 bytes, got {len(msg)}")
    type, code, csum = struct.unpack_from("!BBH", msg)
    zeroed = msg[:2] + b"\0\0" + msg[4:]
    want = checksum(zeroed, ones_sum(pseudo_header6(src, dst, len(msg))))
    ok = checksum(msg, ones_sum(pseudo_header6(src, dst, len(msg)))) == 0
    kw: dict[str, Any] = {}
    if type in (Icmp6Type.ECHO_REQUEST, Icmp6Type.ECHO_REPLY):
        if len(msg) < 8:
            raise FrameError(f"an ICMPv6 echo has at least 8 bytes, got {len(msg)}")
        kw.update(ident=struct.unpack_from("!H", msg, 4)[0], seq=struct.unpack_from("!H", msg, 6)[0],
                  payload=msg[8:])
    elif type in (Icmp6Type.NEIGHBOUR_SOLICITATION, Icmp6Type.NEIGHBOUR_ADVERTISEMENT):
        if len(msg) < 24:
            raise FrameError(f"an NS/NA has at least 24 bytes, got {len(msg)}")
        kw.update(target=ipaddress.IPv6Address(msg[8:24]), options=_nd_options(msg[24:]))
        if type == Icmp6Type.NEIGHBOUR_ADVERTISEMENT:
            kw["na_flags"] = msg[4] & 0xE0
    elif type == Icmp6Type.ROUTER_SOLICITATION:
        kw["options"] = _nd_options(msg[8:])
    elif type == Icmp6Type.MLD2_REPORT:
        kw["records"] = _mld2_records(msg)
    return Icmp("ICMPv6", type, code, csum, ok, want, **kw)


def _nd_options(data: bytes) -> tuple[tuple[int, bytes], ...]:
    out, i = [], 0
    while i + 2 <= len(data):
        kind, units = data[i], data[i + 1]
        if units == 0:
            raise FrameError("an ND option of length 0 (RFC 4861 §4.6: the packet is dropped)")
        end = i + 8 * units
        if end > len(data):
            raise FrameError(f"ND option {kind} of {8 * units} bytes runs past the message")
        out.append((kind, data[i + 2:end] if kind not in (1, 2) else data[i + 2:i + 8]))
        i = end
    return tuple(out)


def _mld2_records(msg: bytes) -> tuple[tuple[int, ipaddress.IPv6Address, int], ...]:
    if len(msg) < 8:
        raise FrameError("an MLDv2 report has at least 8 bytes")
    (n,) = struct.unpack_from("!H", msg, 6)
    out, i = [], 8
    for _ in range(n):
        if i + 20 > len(msg):
            raise FrameError(f"MLDv2 report: {n} records announced, the message ends after {len(out)}")
        rtype, aux, nsrcs = struct.unpack_from("!BBH", msg, i)
        out.append((rtype, ipaddress.IPv6Address(msg[i + 4:i + 20]), nsrcs))
        i += 20 + 16 * nsrcs + 4 * aux
    return tuple(out)


def _parse_ipv4(raw: bytes, eth: Ethernet, body: bytes) -> Frame:
    if len(body) < 20:
        raise FrameError(f"an IPv4 header has at least 20 bytes, got {len(body)}")
    vihl, tos, total, ident, ff, ttl, proto, csum, src, dst = struct.unpack_from(
        "!BBHHHBBH4s4s", body)
    if vihl >> 4 != 4:
        raise FrameError(f"IPv4 ethertype but IP version {vihl >> 4}")
    ihl = (vihl & 0xF) * 4
    if ihl < 20 or ihl > len(body) or total < ihl or total > len(body):
        raise FrameError(f"IPv4 header length {ihl} / total length {total} do not fit the "
                         f"{len(body)} bytes after the Ethernet header")
    problems = []
    hdr_ok = checksum(body[:ihl]) == 0
    if not hdr_ok:
        want = checksum(body[:10] + b"\0\0" + body[12:ihl])
        problems.append(f"bad IPv4 header checksum {csum:#06x} (want {want:#06x})")
    if total < len(body):
        problems.append(f"{len(body) - total} bytes after the IPv4 datagram")
    net = Ipv4(tos, total, ident, ff, ttl, proto, csum, ipaddress.IPv4Address(src),
               ipaddress.IPv4Address(dst), ihl, hdr_ok)
    l4 = None
    if proto == IpProto.ICMP and not ff & 0x3FFF:  # not a fragment
        msg = body[ihl:total]
        if len(msg) < 4:
            raise FrameError(f"an ICMP message has at least 4 bytes, got {len(msg)}")
        type, code, c = struct.unpack_from("!BBH", msg)
        want = checksum(msg[:2] + b"\0\0" + msg[4:])
        kw: dict[str, Any] = {}
        if type in (IcmpType.ECHO, IcmpType.ECHOREPLY):
            if len(msg) < 8:
                raise FrameError(f"an ICMP echo has at least 8 bytes, got {len(msg)}")
            i, s = struct.unpack_from("!HH", msg, 4)
            kw.update(ident=i, seq=s, payload=msg[8:])
        l4 = Icmp("ICMP", type, code, c, checksum(msg) == 0, want, **kw)
        if not l4.csum_ok:
            problems.append(f"bad ICMP checksum {c:#06x} (want {want:#06x})")
    return Frame(raw, eth, net, l4, tuple(problems))


# --- naming -------------------------------------------------------------------------------------


def _kind(f: Frame) -> str:
    if isinstance(f.net, Arp):
        return {ArpOp.REQUEST: "ARP request", ArpOp.REPLY: "ARP reply"}.get(f.net.oper,
                                                                         f"ARP op {f.net.oper}")
    if f.l4 is not None:
        names = _ICMP6_NAMES if f.l4.family == "ICMPv6" else _ICMP_NAMES
        name = names.get(f.l4.type, f"type {f.l4.type} code {f.l4.code}")
        return name if name.startswith("MLD") else f"{f.l4.family} {name}"
    if isinstance(f.net, Ipv6):
        return f"IPv6 next header {f.net.upper}"
    if isinstance(f.net, Ipv4):
        return f"IPv4 protocol {f.net.protocol}"
    return f"ethertype {f.eth.ethertype:#06x}"


def describe(frame: bytes | Frame) -> str:
    """One line saying what a frame is::

        ICMPv6 neighbour solicitation fe80::2 → ff02::1:ff00:1 who-has fe80::1 (from 52:54:00:12:34:56)
        ICMPv6 echo reply fe80::1 → fe80::2 id 7 seq 1 (56 bytes)
        ARP reply 169.254.86.1 is-at 02:76:62:00:00:01 → 169.254.86.2

    and, after ``!``, what is wrong with it (bad checksums …).
    """
    f = frame if isinstance(frame, Frame) else parse(frame)
    kind, net, l4 = f.kind, f.net, f.l4
    if isinstance(net, Arp):
        if net.oper == ArpOp.REQUEST:
            text = f"{kind} who-has {net.tpa} tell {net.spa} ({mac_str(net.sha)})"
        else:
            text = f"{kind} {net.spa} is-at {mac_str(net.sha)} → {net.tpa} ({mac_str(net.tha)})"
    elif net is None:
        text = f"{kind} {mac_str(f.eth.src)} → {mac_str(f.eth.dst)} ({len(f.raw)} bytes)"
    else:
        text = f"{kind} {net.src} → {net.dst}"
        if l4 is not None and l4.ident is not None:
            text += f" id {l4.ident} seq {l4.seq} ({len(l4.payload)} bytes)"
        elif l4 is not None and l4.type == Icmp6Type.NEIGHBOUR_SOLICITATION:
            sll = l4.option(NdOpt.SOURCE_LL_ADDR)
            text += f" who-has {l4.target}" + (f" (from {mac_str(sll)})" if sll else "")
        elif l4 is not None and l4.type == Icmp6Type.NEIGHBOUR_ADVERTISEMENT:
            tll = l4.option(NdOpt.TARGET_LL_ADDR)
            flags = ",".join(n for n, b in (("R", 0x80), ("S", 0x40), ("O", 0x20))
                             if (l4.na_flags or 0) & b)
            text += f" {l4.target}" + (f" is-at {mac_str(tll)}" if tll else "") + f" [{flags or '-'}]"
        elif l4 is not None and l4.type == Icmp6Type.MLD2_REPORT:
            groups = ", ".join(f"{_mld_name(t)} {g}" for t, g, _ in l4.records)
            text += f" ({len(l4.records)} record{'s' if len(l4.records) != 1 else ''}: {groups})"
    if f.problems:
        text += " ! " + "; ".join(f.problems)
    return text


def _mld_name(t: int) -> str:
    try:
        return Mld2Record(t).name.lower().replace("_", "-")
    except ValueError:
        return f"type-{t}"


def content(frame: bytes | Frame) -> dict[str, Any]:
    """What a frame *says*, as a dict of plain values: kind, MACs, addresses, hop limit or
    TTL, echo id/seq/payload, ND target/flags/options, ARP fields. Left out: checksums,
    the IPv4 identification and the IPv6 flow label, which a stack may pick as it likes
    (random ids, hashed flow labels). Two stacks that answer alike give equal contents."""
    f = frame if isinstance(frame, Frame) else parse(frame)
    out: dict[str, Any] = {"kind": f.kind, "eth_dst": mac_str(f.eth.dst), "eth_src": mac_str(f.eth.src),
                           "length": len(f.raw)}
    net, l4 = f.net, f.l4
    if isinstance(net, Arp):
        out.update(sha=mac_str(net.sha), spa=str(net.spa), tha=mac_str(net.tha), tpa=str(net.tpa))
    elif isinstance(net, Ipv6):
        out.update(src=str(net.src), dst=str(net.dst), hop_limit=net.hop_limit,
                   traffic_class=net.traffic_class)
    elif isinstance(net, Ipv4):
        out.update(src=str(net.src), dst=str(net.dst), ttl=net.ttl, tos=net.tos,
                   df=bool(net.flags_frag & IP_DF))
    if l4 is not None:
        out["code"] = l4.code
        if l4.ident is not None:
            out.update(ident=l4.ident, seq=l4.seq, payload=l4.payload.hex())
        if l4.target is not None:
            out["target"] = str(l4.target)
        if l4.na_flags is not None:
            out["na_flags"] = l4.na_flags
        if l4.options:
            out["options"] = [(k, d.hex()) for k, d in l4.options]
    out["problems"] = list(f.problems)
    return out


def verify(frame: bytes | Frame) -> list[str]:
    """What is wrong with a frame's checksums and lengths; ``[]`` when it would be accepted."""
    return list((frame if isinstance(frame, Frame) else parse(frame)).problems)


def kernel_chatter(frame: bytes | Frame) -> str | None:
    """Why ``frame`` is one the host kernel sends on its own and not an answer, or None.

    A fresh interface makes Linux talk: MLDv2 reports (RFC 3810) for the
    solicited-node groups it joins (``mld_ifc_work`` in net/ipv6/mcast.c), a
    duplicate-address-detection NS from ``::`` per new address
    (``addrconf_dad_work``, unless accept_dad=0), router solicitations
    (``addrconf_rs_timer``), IGMP reports. A test waiting for an answer skips these
    (see :meth:`vbook.backends.tap.Tap.recv_answer`), keeping what it skipped.
    """
    f = frame if isinstance(frame, Frame) else parse(frame)
    if isinstance(f.net, Ipv4) and f.net.protocol == IpProto.IGMP:
        return "IGMP report"
    if f.l4 is None or f.l4.family != "ICMPv6":
        return None
    t = f.l4.type
    if t in (Icmp6Type.MLD2_REPORT, Icmp6Type.MGM_REPORT, Icmp6Type.MGM_REDUCTION):
        return _ICMP6_NAMES[Icmp6Type(t)]
    if t == Icmp6Type.ROUTER_SOLICITATION:
        return "router solicitation"
    if t == Icmp6Type.NEIGHBOUR_SOLICITATION and isinstance(f.net, Ipv6) and f.net.src.is_unspecified:
        return "DAD neighbour solicitation from ::"
    return None


# --- struct virtio_net_hdr ------------------------------------------------------------------------


class VirtioNetHdrFlag(IntFlag):
    """``VIRTIO_NET_HDR_F_*`` — include/uapi/linux/virtio_net.h (uapi 6.1); VIRTIO v1.2 §5.1.6."""

    NEEDS_CSUM = 1  #: the checksum from csum_start on is still to do; store it at +csum_offset
    DATA_VALID = 2  #: (device → driver) the checksum was checked
    RSC_INFO = 4    #: csum_start/offset carry receive-segment-coalescing counts


class VirtioNetGso(IntEnum):
    """``VIRTIO_NET_HDR_GSO_*`` segmentation types — linux/virtio_net.h (uapi 6.1)."""

    NONE = 0
    TCPV4 = 1
    UDP = 3
    TCPV6 = 4


VIRTIO_NET_HDR_GSO_ECN = 0x80  #: or-ed into gso_type: the TCP stream uses ECN
# HDR_SIZE = sizeof(struct virtio_net_hdr) = 10, HDR_SIZE_MRG = sizeof(struct
# virtio_net_hdr_mrg_rxbuf) = 12 (= sizeof(struct virtio_net_hdr_v1)): linux/virtio_net.h,
# kept in vbook.models.virtio_consts (imported at the top)
_HDR = struct.Struct("<BBHHHH")  # little-endian: VIRTIO 1.x, and a legacy device on x86
_HDR_MRG = struct.Struct("<BBHHHHH")


@dataclass(frozen=True)
class VirtioNetHdr:
    """``struct virtio_net_hdr`` (10 bytes), or ``virtio_net_hdr_mrg_rxbuf`` (12) when
    ``num_buffers`` is set. Fields are u8 flags, u8 gso_type, then u16 hdr_len,
    gso_size, csum_start, csum_offset (, num_buffers), little-endian."""

    flags: int = 0
    gso_type: int = VirtioNetGso.NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int | None = None

    @property
    def size(self) -> int:
        return HDR_SIZE if self.num_buffers is None else HDR_SIZE_MRG

    def pack(self, size: int | None = None) -> bytes:
        """The header's bytes; ``size`` 12 writes num_buffers (0 if unset), 10 drops it."""
        size = self.size if size is None else size
        vals = (self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start,
                self.csum_offset)
        try:
            if size == HDR_SIZE:
                return _HDR.pack(*vals)
            if size == HDR_SIZE_MRG:
                return _HDR_MRG.pack(*vals, self.num_buffers or 0)
        except struct.error as e:
            raise FrameError(f"virtio_net_hdr field out of range: {self} ({e})") from None
        raise FrameError(f"a virtio_net_hdr is {HDR_SIZE} or {HDR_SIZE_MRG} bytes, not {size}")

    @classmethod
    def unpack(cls, data: bytes, size: int = HDR_SIZE) -> VirtioNetHdr:
        """The header at the start of ``data`` (``size`` 10 or 12)."""
        if size not in (HDR_SIZE, HDR_SIZE_MRG):
            raise FrameError(f"a virtio_net_hdr is {HDR_SIZE} or {HDR_SIZE_MRG} bytes, not {size}")
        if len(data) < size:
            raise FrameError(f"a {size}-byte virtio_net_hdr, but only {len(data)} bytes")
        if size == HDR_SIZE:
            return cls(*_HDR.unpack_from(data))
        return cls(*_HDR_MRG.unpack_from(data))

    def describe(self) -> str:
        names = "|".join(n.name or "" for n in VirtioNetHdrFlag if self.flags & n)
        parts = [f"flags {names or 0}"]
        if self.flags & VirtioNetHdrFlag.NEEDS_CSUM:
            parts.append(f"csum_start {self.csum_start} csum_offset {self.csum_offset}")
        if self.gso_type:
            parts.append(f"gso_type {self.gso_type} gso_size {self.gso_size} hdr_len {self.hdr_len}")
        if self.num_buffers is not None:
            parts.append(f"num_buffers {self.num_buffers}")
        return "virtio_net_hdr " + ", ".join(parts)


def l4_offset(frame: bytes | Frame) -> int:
    """Where the ICMP/ICMPv6 message of ``frame`` starts (the ``csum_start`` of its checksum)."""
    f = frame if isinstance(frame, Frame) else parse(frame)
    if isinstance(f.net, Ipv4) and f.l4 is not None:
        return ETH_HLEN + f.net.header_length
    if isinstance(f.net, Ipv6) and f.l4 is not None:
        return ETH_HLEN + 40 + f.net.upper_offset
    raise FrameError(f"no ICMP or ICMPv6 message in: {describe(f)}")


def partial_csum(frame: bytes) -> tuple[VirtioNetHdr, bytes]:
    """``frame`` as a guest with checksum offload sends it: a header with
    ``NEEDS_CSUM`` (csum_start = the ICMP message, csum_offset 2) and, in the checksum
    field, only the pseudo-header's sum (ICMPv6) or zero (ICMP, which has none) — what
    Linux leaves there for ``CHECKSUM_PARTIAL`` (``~csum_ipv6_magic(…, 0)``)."""
    f = parse(frame)
    start, seed = l4_offset(f), 0
    if isinstance(f.net, Ipv6):
        end = ETH_HLEN + 40 + f.net.payload_length
        seed = ones_sum(pseudo_header6(f.net.src, f.net.dst, end - start))
    raw = bytearray(f.raw)
    raw[start + 2:start + 4] = struct.pack("!H", seed)
    return VirtioNetHdr(flags=VirtioNetHdrFlag.NEEDS_CSUM, csum_start=start, csum_offset=2), bytes(raw)


def fill_csum(frame: bytes, hdr: VirtioNetHdr) -> bytes:
    """What the other end of a ``NEEDS_CSUM`` frame does (Linux ``skb_checksum_help``,
    net/core/dev.c): sum from ``csum_start`` to the end, fold, complement, store at
    ``csum_start + csum_offset`` (0 becomes 0xFFFF, ``CSUM_MANGLED_0``). Without the flag
    the frame is returned as it is."""
    if not hdr.flags & VirtioNetHdrFlag.NEEDS_CSUM:
        return bytes(frame)
    start, where = hdr.csum_start, hdr.csum_start + hdr.csum_offset
    if where + 2 > len(frame):
        raise FrameError(f"csum_start {start} + csum_offset {hdr.csum_offset} is past the "
                         f"{len(frame)}-byte frame")
    csum = checksum(bytes(frame[start:])) or 0xFFFF
    raw = bytearray(frame)
    raw[where:where + 2] = struct.pack("!H", csum)
    return bytes(raw)
