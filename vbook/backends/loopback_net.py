"""The host end of the guest's link when there is no tap: a Python peer that answers like Linux.

On mybinder.org (no ``/dev/net/tun``, no root) the book still needs someone
to answer the guest's first frames. :class:`LoopbackNet` has the API of
:class:`~vbook.backends.tap.Tap` (``send``, ``recv``, ``recv_answer``, ``fd``,
``mac``, ``addresses``, ``kind``) and a small model of the host stack,
:class:`HostStack`, whose methods carry the names of the kernel functions they
stand for and do what this machine's kernel was measured to do
(tests/test_loopback_net.py compares both answer for answer):

* ``ndisc_recv_ns`` (net/ipv6/ndisc.c): an NS for one of our addresses, hop
  limit 255, checksum right → an NA from that address, flags S (+O and a target
  link-layer option when the NS was multicast: 86 bytes, else 78); a DAD probe
  from ``::`` → an NA to ff02::1 with O only; a multicast NS without a source
  link-layer option → nothing. The asker goes into the neighbour table.
* ``icmpv6_echo_reply`` (net/ipv6/icmp.c): echo to our address or to ff02::1 →
  reply from our address, hop limit 64, the request's traffic class.
* ``arp_process`` (net/ipv4/arp.c): a request for our IPv4 address → reply
  (42 bytes, not padded); the asker is learned *first*, so replies waiting for
  it go out before the ARP reply (as measured).
* ``icmp_echo`` (net/ipv4/icmp.c): echo to our address → reply, TTL 64, the
  request's TOS, DF clear; echo to a broadcast address is ignored
  (``icmp_echo_ignore_broadcasts``).
* Neighbour resolution (``neigh_resolve_output``): a reply to an address not
  in the table is held, and an NS (IPv6) or ARP request (IPv4) for it goes out
  first; the guest's NA / ARP reply releases it.
* Bad checksums are dropped and counted (``Icmp6InCsumErrors``,
  ``IcmpInCsumErrors``) — except when a vnet header says
  ``VIRTIO_NET_HDR_F_NEEDS_CSUM``: then the stack trusts the frame
  (``CHECKSUM_PARTIAL``), as the kernel does; ``DATA_VALID`` is not trusted.

Not modelled: the kernel's own chatter (MLDv2 reports, router solicitations:
no timers run here), the flow label Linux hashes into echo replies, the IPv4
identification it picks (:func:`~vbook.models.net_frames.content` leaves both
out), neighbour timers (STALE → PROBE), anything but ICMP, ICMPv6 and ARP.
"""

from __future__ import annotations

import collections
import ipaddress
import os
import select
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from vbook.backends.tap import NetEndpoint, Tap, TapError, _check_args
from vbook.errors import BackendUnavailable, VbookError
from vbook.models import net_frames as nf

NET_KINDS = ("tap", "loopback")


@dataclass
class HostStack:
    """The host's IPv6/IPv4 stack on one link-local interface, as far as the first frames go.

    ``receive(frame, partial=False)`` is ``netif_receive_skb``: it returns the frames
    the host sends back, in order; ``log`` keeps one line per frame saying what was
    done with it, ``snmp`` the counters /proc/net/snmp{,6} would show.
    """

    mac: bytes
    ip6: tuple[ipaddress.IPv6Address, ...]
    ip4: tuple[ipaddress.IPv4Interface, ...]
    neigh6: dict[ipaddress.IPv6Address, bytes] = field(default_factory=dict)  #: nd_tbl
    neigh4: dict[ipaddress.IPv4Address, bytes] = field(default_factory=dict)  #: arp_tbl
    pending6: dict[ipaddress.IPv6Address, list[bytes]] = field(default_factory=dict)
    pending4: dict[ipaddress.IPv4Address, list[bytes]] = field(default_factory=dict)
    snmp: collections.Counter = field(default_factory=collections.Counter)
    log: list[str] = field(default_factory=list)
    ip_id: int = 1  #: next IPv4 identification (Linux picks per destination; not compared)

    # --- which frames are for us (eth_type_trans, ip6_mc_input) --------------------------------

    def joined6(self) -> set[ipaddress.IPv6Address]:
        """The IPv6 groups the interface is in: all-nodes and each address' solicited-node."""
        return {nf.ip6(nf.ALL_NODES), *(nf.solicited_node(a) for a in self.ip6)}

    def _for_us(self, f: nf.Frame) -> bool:
        """``eth_type_trans``: our MAC (PACKET_HOST), or any group address (PACKET_MULTICAST,
        PACKET_BROADCAST: the IP layer then decides). Another unicast MAC is PACKET_OTHERHOST."""
        return f.eth.dst == self.mac or bool(f.eth.dst[0] & 1)

    def _drop(self, f: nf.Frame | None, why: str) -> list[bytes]:
        self.log.append(f"dropped {nf.describe(f) if f else 'frame'}: {why}")
        return []

    def receive(self, frame: bytes, partial: bool = False) -> list[bytes]:
        """What the host sends in answer to ``frame`` (``partial``: a vnet header with
        NEEDS_CSUM came with it, so the L4 checksum is trusted, not checked)."""
        try:
            f = nf.parse(frame)
        except nf.FrameError as e:
            return self._drop(None, f"malformed ({e})")
        if not self._for_us(f):
            return self._drop(f, f"Ethernet destination {nf.mac_str(f.eth.dst)} is not ours "
                                 "(PACKET_OTHERHOST)")
        if isinstance(f.net, nf.Arp):
            return self.arp_process(f)
        if isinstance(f.net, nf.Ipv6):
            return self.ipv6_rcv(f, partial)
        if isinstance(f.net, nf.Ipv4):
            return self.ip_rcv(f, partial)
        return self._drop(f, "no handler for this ethertype")

    # --- IPv6 ----------------------------------------------------------------------------

    def ipv6_rcv(self, f: nf.Frame, partial: bool) -> list[bytes]:
        net = f.net
        assert isinstance(net, nf.Ipv6)
        if net.dst.is_multicast and net.dst not in self.joined6():
            return self._drop(f, f"not a member of {net.dst}")
        if not net.dst.is_multicast and net.dst not in self.ip6:
            return self._drop(f, f"{net.dst} is not ours (forwarding is off)")
        if f.l4 is None:
            return self._drop(f, f"next header {net.upper} not modelled")
        self.snmp["Icmp6InMsgs"] += 1
        if not partial and not f.l4.csum_ok:
            self.snmp["Icmp6InCsumErrors"] += 1
            self.snmp["Icmp6InErrors"] += 1
            return self._drop(f, "bad ICMPv6 checksum (Icmp6InCsumErrors)")
        t = f.l4.type
        if t == nf.Icmp6Type.NEIGHBOUR_SOLICITATION:
            self.snmp["Icmp6InNeighborSolicits"] += 1
            return self.ndisc_recv_ns(f)
        if t == nf.Icmp6Type.NEIGHBOUR_ADVERTISEMENT:
            self.snmp["Icmp6InNeighborAdvertisements"] += 1
            return self.ndisc_recv_na(f)
        if t == nf.Icmp6Type.ECHO_REQUEST:
            self.snmp["Icmp6InEchos"] += 1
            return self.icmpv6_echo_reply(f)
        return self._drop(f, f"ICMPv6 type {t} not modelled")

    def ndisc_recv_ns(self, f: nf.Frame) -> list[bytes]:
        net, msg = f.net, f.l4
        assert isinstance(net, nf.Ipv6) and msg is not None and msg.target is not None
        if net.hop_limit != nf.ND_HOP_LIMIT or msg.code != 0 or msg.target.is_multicast:
            return self._drop(f, "invalid NS (hop limit must be 255, code 0, target unicast)")
        lladdr = msg.option(nf.NdOpt.SOURCE_LL_ADDR)
        dad = net.src.is_unspecified
        if dad and (lladdr is not None or not net.dst.is_multicast):
            return self._drop(f, "a DAD NS must go to the solicited-node group without an SLLA")
        if msg.target not in self.ip6:
            return self._drop(f, f"NS for {msg.target}: not ours")
        if dad:  # someone wants our address: defend it (RFC 4862 §5.4.3)
            na = self._na(msg.target, nf.ip6(nf.ALL_NODES), nf.NaFlag.OVERRIDE, tll=True)
            self.log.append(f"DAD probe for our {msg.target}: defend it")
            return self._output6(na, nf.ip6(nf.ALL_NODES))
        inc = net.dst.is_multicast
        if inc and lladdr is None:
            return self._drop(f, "multicast NS without a source link-layer option: no neighbour "
                                 "entry, no answer")
        out = self._learn6(net.src, lladdr) if lladdr is not None else []
        flags = nf.NaFlag.SOLICITED | (nf.NaFlag.OVERRIDE if inc else 0)
        na = self._na(msg.target, net.src, flags, tll=inc)
        self.log.append(f"NS for our {msg.target} from {net.src}: NA")
        return out + self._output6(na, net.src)

    def ndisc_recv_na(self, f: nf.Frame) -> list[bytes]:
        net, msg = f.net, f.l4
        assert isinstance(net, nf.Ipv6) and msg is not None and msg.target is not None
        if net.hop_limit != nf.ND_HOP_LIMIT:
            return self._drop(f, "NA with hop limit != 255")
        if msg.target not in self.pending6 and msg.target not in self.neigh6:
            return self._drop(f, f"unsolicited NA for {msg.target}: no entry to update")
        lladdr = msg.option(nf.NdOpt.TARGET_LL_ADDR) or f.eth.src
        self.log.append(f"NA: {msg.target} is at {nf.mac_str(lladdr)}")
        return self._learn6(msg.target, lladdr)

    def icmpv6_echo_reply(self, f: nf.Frame) -> list[bytes]:
        net, msg = f.net, f.l4
        assert isinstance(net, nf.Ipv6) and msg is not None
        src = net.dst if not net.dst.is_multicast else self.ip6[0]
        body = struct.pack("!HH", msg.ident, msg.seq) + msg.payload
        icmp = nf.icmpv6(src, net.src, nf.Icmp6Type.ECHO_REPLY, 0, body)
        pkt = nf.ipv6(src, net.src, nf.IpProto.ICMPV6, icmp, traffic_class=net.traffic_class)
        self.snmp["Icmp6OutEchoReplies"] += 1
        self.snmp["Icmp6OutMsgs"] += 1
        self.log.append(f"echo request {msg.ident}/{msg.seq} from {net.src}: reply")
        return self._output6(pkt, net.src)

    def _na(self, target: Any, dst: Any, flags: int, tll: bool) -> bytes:
        opts = struct.pack("!BB", nf.NdOpt.TARGET_LL_ADDR, 1) + self.mac if tll else b""
        body = struct.pack("!B3x", int(flags)) + nf.ip6(target).packed + opts
        icmp = nf.icmpv6(target, dst, nf.Icmp6Type.NEIGHBOUR_ADVERTISEMENT, 0, body)
        self.snmp["Icmp6OutNeighborAdvertisements"] += 1
        self.snmp["Icmp6OutMsgs"] += 1
        return nf.ipv6(target, dst, nf.IpProto.ICMPV6, icmp, hop_limit=nf.ND_HOP_LIMIT)

    def _learn6(self, addr: ipaddress.IPv6Address, mac: bytes) -> list[bytes]:
        self.neigh6[addr] = mac
        return [nf.ethernet(mac, self.mac, nf.EtherType.IPV6, pkt)
                for pkt in self.pending6.pop(addr, [])]

    def _output6(self, pkt: bytes, dst: ipaddress.IPv6Address) -> list[bytes]:
        """``ip6_finish_output2`` → ``neigh_output``: a MAC from the table, or solicit one."""
        if dst.is_multicast:
            return [nf.ethernet(nf.multicast_mac(dst), self.mac, nf.EtherType.IPV6, pkt)]
        mac = self.neigh6.get(dst)
        if mac is not None:
            return [nf.ethernet(mac, self.mac, nf.EtherType.IPV6, pkt)]
        first = dst not in self.pending6
        self.pending6.setdefault(dst, []).append(pkt)
        if not first:
            return []
        self.snmp["Icmp6OutNeighborSolicits"] += 1
        self.snmp["Icmp6OutMsgs"] += 1
        self.log.append(f"{dst} not in the neighbour table: NS for it, reply held")
        return [nf.neighbour_solicitation(self.mac, self.ip6[0], dst)]

    # --- IPv4 ----------------------------------------------------------------------------

    def _ours4(self, addr: ipaddress.IPv4Address) -> bool:
        return any(i.ip == addr for i in self.ip4)

    def arp_process(self, f: nf.Frame) -> list[bytes]:
        a = f.net
        assert isinstance(a, nf.Arp)
        if a.htype != nf.ARPHRD_ETHER or a.ptype != nf.EtherType.IP:
            return self._drop(f, "ARP for another hardware/protocol type")
        known = a.spa in self.neigh4 or a.spa in self.pending4
        if a.oper == nf.ArpOp.REQUEST and self._ours4(a.tpa):
            out = self._learn4(a.spa, a.sha)  # neigh_update first: held replies leave now
            self.log.append(f"ARP who-has our {a.tpa} from {a.spa}: reply")
            return out + [nf.arp_reply(self.mac, a.tpa, a.sha, a.spa)]
        if known:  # a reply to our request, or news about a neighbour we have
            self.log.append(f"ARP: {a.spa} is at {nf.mac_str(a.sha)}")
            return self._learn4(a.spa, a.sha)
        return self._drop(f, "ARP neither for us nor about a neighbour we know (arp_accept=0)")

    def ip_rcv(self, f: nf.Frame, partial: bool) -> list[bytes]:
        net = f.net
        assert isinstance(net, nf.Ipv4)
        if not net.csum_ok:
            return self._drop(f, "bad IPv4 header checksum (IpInHdrErrors)")
        # local delivery: our addresses, and (RTCF_BROADCAST / RTCF_MULTICAST) the broadcast
        # addresses and 224.0.0.1, which every IPv4 interface joins
        broadcast = net.dst in self._broadcasts4()
        if not self._ours4(net.dst) and not broadcast:
            return self._drop(f, f"{net.dst} is not ours (forwarding is off)")
        if f.l4 is None:
            return self._drop(f, f"protocol {net.protocol} not modelled")
        self.snmp["IcmpInMsgs"] += 1
        if not partial and not f.l4.csum_ok:
            self.snmp["IcmpInCsumErrors"] += 1
            self.snmp["IcmpInErrors"] += 1
            return self._drop(f, "bad ICMP checksum (IcmpInCsumErrors)")
        if f.l4.type == nf.IcmpType.ECHO:
            self.snmp["IcmpInEchos"] += 1
            if broadcast:
                self.snmp["IcmpInErrors"] += 1
                return self._drop(f, "echo to a broadcast/multicast address "
                                     "(icmp_echo_ignore_broadcasts=1)")
            return self.icmp_echo(f)
        return self._drop(f, f"ICMP type {f.l4.type} not modelled")

    def _broadcasts4(self) -> set[ipaddress.IPv4Address]:
        return {ipaddress.IPv4Address("255.255.255.255"), ipaddress.IPv4Address("224.0.0.1"),
                *(i.network.broadcast_address for i in self.ip4)}

    def icmp_echo(self, f: nf.Frame) -> list[bytes]:
        net, msg = f.net, f.l4
        assert isinstance(net, nf.Ipv4) and msg is not None
        body = struct.pack("!HH", msg.ident, msg.seq) + msg.payload
        pkt = nf.ipv4(net.dst, net.src, nf.IpProto.ICMP, nf.icmp4(nf.IcmpType.ECHOREPLY, 0, body),
                      ident=self.ip_id, df=False, tos=net.tos)
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        self.snmp["IcmpOutEchoReps"] += 1
        self.snmp["IcmpOutMsgs"] += 1
        self.log.append(f"echo request {msg.ident}/{msg.seq} from {net.src}: reply")
        return self._output4(pkt, net.src, net.dst)

    def _learn4(self, addr: ipaddress.IPv4Address, mac: bytes) -> list[bytes]:
        self.neigh4[addr] = mac
        return [nf.ethernet(mac, self.mac, nf.EtherType.IP, pkt) for pkt in self.pending4.pop(addr, [])]

    def _output4(self, pkt: bytes, dst: ipaddress.IPv4Address,
                 src: ipaddress.IPv4Address) -> list[bytes]:
        mac = self.neigh4.get(dst)
        if mac is not None:
            return [nf.ethernet(mac, self.mac, nf.EtherType.IP, pkt)]
        first = dst not in self.pending4
        self.pending4.setdefault(dst, []).append(pkt)
        if not first:
            return []
        self.log.append(f"{dst} not in the ARP table: ARP request for it, reply held")
        return [nf.arp(nf.ArpOp.REQUEST, self.mac, src, bytes(nf.ETH_ALEN), dst)]


class LoopbackNet(NetEndpoint):
    """The Python peer: :class:`HostStack` behind the API of :class:`~vbook.backends.tap.Tap`.

    What :meth:`send` gives the stack is answered at once; the answers wait in a
    socket whose other end is :attr:`fd` (readable while a frame waits, like a tap's
    fd). :meth:`recv` returns None at once when none waits: no timers run here, so
    nothing would come later. ``why_not_tap`` says why this is not a tap (set by
    :func:`open_net`). It takes :meth:`Tap.open <vbook.backends.tap.Tap.open>`'s
    arguments (``timeout``, ``dev`` and ``offload`` are accepted and unused), so the
    same call makes either.
    """

    kind = "loopback"

    def __init__(self, vnet_hdr: bool = False, hdr_size: int = nf.HDR_SIZE, name: str = "loopback",
                 mac: str = nf.HOST_MAC, ipv6: str | None = nf.HOST_IP6, ipv6_prefix: int = 64,
                 ipv4: str | None = nf.HOST_IP4, ipv4_prefix: int = 16, offload: int = 0,
                 timeout: float = 0.0, dev: str | None = None, why_not_tap: str | None = None):
        super().__init__()
        _check_args(vnet_hdr, hdr_size, name, mac, ipv6, ipv6_prefix, ipv4, ipv4_prefix)
        self.name, self.vnet_hdr, self.hdr_size = name, vnet_hdr, hdr_size
        self.mac = nf.mac_str(nf.mac_bytes(mac))
        self.addresses = tuple(a for a in (ipv6 and f"{nf.ip6(ipv6)}/{ipv6_prefix}",
                                           ipv4 and f"{nf.ip4(ipv4)}/{ipv4_prefix}") if a)
        self.stack = HostStack(
            nf.mac_bytes(mac), (nf.ip6(ipv6),) if ipv6 else (),
            (ipaddress.IPv4Interface(f"{ipv4}/{ipv4_prefix}"),) if ipv4 else ())
        self.why_not_tap = why_not_tap
        self._rx, self._host = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._rx.setblocking(False)
        self._host.setblocking(False)
        self.sent = self.received = self.tx_dropped = 0

    @property
    def fd(self) -> int:
        """Readable while an answer waits (the reading end of a socketpair); -1 once closed."""
        return self._rx.fileno()

    def send(self, frame: bytes, hdr: nf.VirtioNetHdr | None = None) -> int:
        """Give one frame to the host stack; its answers are queued for :meth:`recv`."""
        return self.write_raw(self._pack(frame, hdr))

    def write_raw(self, data: bytes) -> int:
        """What a write on a tap fd takes: the frame, after a ``hdr_size``-byte vnet header
        with ``vnet_hdr``. The host stack's answers are queued for :meth:`read_raw`."""
        if self._rx.fileno() < 0:
            raise TapError("send", detail="this loopback is closed")
        if len(data) < (self.hdr_size if self.vnet_hdr else 0):
            raise TapError("send", detail=f"{len(data)} bytes is shorter than the vnet header")
        got, frame = self._unpack(data)
        partial = bool(got and got.flags & nf.VirtioNetHdrFlag.NEEDS_CSUM)
        self.sent += 1
        for answer in self.stack.receive(frame, partial=partial):
            out = nf.VirtioNetHdr(num_buffers=0 if self.hdr_size == nf.HDR_SIZE_MRG else None)
            try:
                self._host.send(self._pack(answer, out if self.vnet_hdr else None))
            except BlockingIOError:  # the reader is not reading: drop, as tun does (tx_dropped)
                self.tx_dropped += 1
        return len(data)

    def recv_hdr(self, timeout: float = 1.0) -> tuple[nf.VirtioNetHdr | None, bytes] | None:
        """(vnet header or None, frame) of the next answer, or None when none waits."""
        data = self.read_raw(timeout)
        return None if data is None else self._unpack(data)

    def read_raw(self, timeout: float = 0.0) -> bytes | None:
        """The next answer as a tap fd would give it (vnet header first with ``vnet_hdr``),
        or None when none waits (the answers are queued at once: it never waits)."""
        if self._rx.fileno() < 0:
            raise TapError("recv", detail="this loopback is closed")
        ready, _, _ = select.select([self._rx], [], [], 0)
        if not ready:
            return None
        self.received += 1
        return self._rx.recv(65536 + self.hdr_size)

    def set_vnet_hdr_len(self, length: int) -> None:
        """``TUNSETVNETHDRSZ``: headers are ``length`` bytes from now on (10 or 12)."""
        if not self.vnet_hdr:
            raise TapError("TUNSETVNETHDRSZ", detail="this loopback was opened without "
                                                     "vnet_hdr=True")
        if length < nf.HDR_SIZE:
            raise TapError(f"TUNSETVNETHDRSZ({length})", 22, "shorter than struct virtio_net_hdr")
        self.hdr_size = length

    def drain(self, quiet: float = 0.0) -> list[bytes]:
        out = []
        while (f := self.recv(quiet)) is not None:
            out.append(f)
        return out

    def snmp(self) -> dict[str, int]:
        """The counters of the model, named as in /proc/net/snmp6 and /proc/net/snmp."""
        return dict(self.stack.snmp)

    @property
    def closed(self) -> bool:
        return self._rx.fileno() < 0

    def close(self) -> None:
        self._rx.close()
        self._host.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.sent} sent, {self.received} received"
        hdr = f", vnet_hdr {self.hdr_size}" if self.vnet_hdr else ""
        return f"LoopbackNet({self.mac}, {' '.join(self.addresses)}{hdr}, {state})"


def open_net(prefer: str = "tap", **kw: Any) -> Tap | LoopbackNet:
    """The host end of the guest's link: a real :class:`~vbook.backends.tap.Tap` if
    ``prefer="tap"`` and one can be made here, else a :class:`LoopbackNet` whose
    ``why_not_tap`` says why not. ``$VBOOK_NET`` (``tap`` or ``loopback``) overrides
    ``prefer`` (``VBOOK_NET=loopback`` shows a chapter as Binder runs it). ``kw`` go to
    :meth:`Tap.open <vbook.backends.tap.Tap.open>` / :class:`LoopbackNet` alike."""
    forced = os.environ.get("VBOOK_NET", "")
    choice = forced or prefer
    if choice not in NET_KINDS:
        where = f"VBOOK_NET={forced!r}" if forced else f"prefer={prefer!r}"
        raise VbookError(f"{where} is not one of {', '.join(NET_KINDS)}")
    if choice == "loopback":
        why = "VBOOK_NET=loopback" if forced else "prefer='loopback' was asked for"
        return LoopbackNet(**kw, why_not_tap=why)
    try:
        return Tap.open(**kw)
    except BackendUnavailable as e:
        return LoopbackNet(**kw, why_not_tap=e.reason)


def net_available() -> dict[str, str | None]:
    """Net back end → None if usable here, else why not (loopback always is)."""
    try:
        Tap.check_available()
        tap = None
    except BackendUnavailable as e:
        tap = e.reason
    return {"tap": tap, "loopback": None}
