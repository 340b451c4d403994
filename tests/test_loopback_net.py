"""vbook.backends.loopback_net: the Python peer that answers like the host stack.

It runs everywhere (Binder too): NS → NA, echo → reply, ARP → reply, ICMP echo →
reply, each answer checked by the parser (checksums included). Then, where a
real tap can be made (root + /dev/net/tun), the fidelity test: the same frames
go to the real kernel and to the loopback, and their answers must say the same
(:func:`vbook.models.net_frames.content`: kinds, MACs, addresses, hop limits,
ids, payloads, flags, options), counters included.
"""

from __future__ import annotations

import select
import struct

import pytest

from vbook.backends.loopback_net import HostStack, LoopbackNet, net_available, open_net
from vbook.backends.tap import NetEndpoint, Tap, TapError
from vbook.errors import BackendUnavailable, VbookError
from vbook.models import net_frames as nf
from vbook.models.net_frames import VirtioNetHdr, VirtioNetHdrFlag


@pytest.fixture
def lb():
    with LoopbackNet() as net:
        yield net


def _answers(net: NetEndpoint, frame: bytes, quiet: float = 0.0, hdr=None) -> list[bytes]:
    net.send(frame, hdr)
    out = []
    while (f := net.recv_answer(quiet)) is not None:
        out.append(f)
    return out


def test_it_says_what_it_is(lb):
    assert lb.kind == "loopback" and Tap.kind == "tap"
    assert lb.mac == "02:76:62:00:00:01" and lb.addresses == ("fe80::1/64", "169.254.86.1/16")
    assert repr(lb) == "LoopbackNet(02:76:62:00:00:01, fe80::1/64 169.254.86.1/16, 0 sent, 0 received)"
    assert lb.why_not_tap is None


def test_ns_is_answered_with_an_na(lb):
    (na,) = _answers(lb, nf.neighbour_solicitation())
    assert nf.describe(na) == ("ICMPv6 neighbour advertisement fe80::1 → fe80::2 fe80::1 is-at "
                               "02:76:62:00:00:01 [S,O]")
    f = nf.parse(na)
    assert nf.verify(f) == [] and len(na) == 86
    assert nf.mac_str(f.eth.dst) == nf.GUEST_MAC and f.net.hop_limit == 255
    # a unicast NS (the guest checking a cached MAC): S only, no target link-layer option, 78 bytes
    (na,) = _answers(lb, nf.neighbour_solicitation(dst=nf.HOST_IP6, dst_mac=nf.HOST_MAC))
    assert nf.describe(na) == "ICMPv6 neighbour advertisement fe80::1 → fe80::2 fe80::1 [S]"
    assert len(na) == 78 and nf.verify(na) == []


def test_echo6_is_answered_after_the_neighbour_is_known(lb):
    _answers(lb, nf.neighbour_solicitation())
    (rep,) = _answers(lb, nf.echo_request6(ident=7, seq=1))
    f = nf.parse(rep)
    assert nf.describe(f) == "ICMPv6 echo reply fe80::1 → fe80::2 id 7 seq 1 (56 bytes)"
    assert nf.verify(f) == [] and f.l4.payload == nf.ping_payload() and len(rep) == 118
    assert lb.snmp()["Icmp6OutEchoReplies"] == 1


def test_arp_and_icmp4_echo(lb):
    (rep,) = _answers(lb, nf.arp_request())
    assert nf.describe(rep) == ("ARP reply 169.254.86.1 is-at 02:76:62:00:00:01 → 169.254.86.2 "
                                "(52:54:00:12:34:56)")
    assert len(rep) == 42
    (echo,) = _answers(lb, nf.echo_request4(ident=3, seq=9, payload=b"vbook"))
    f = nf.parse(echo)
    assert nf.describe(f) == "ICMP echo reply 169.254.86.1 → 169.254.86.2 id 3 seq 9 (5 bytes)"
    assert nf.verify(f) == [] and f.net.ttl == 64 and not f.net.flags_frag & nf.IP_DF


def test_an_unknown_neighbour_is_solicited_first_and_the_reply_held(lb):
    # as the kernel does: echo from a guest it has no MAC for → NS for it; the NA releases the reply
    (ns,) = _answers(lb, nf.echo_request6(seq=1))
    assert nf.describe(ns) == ("ICMPv6 neighbour solicitation fe80::1 → ff02::1:ff00:2 who-has fe80::2 "
                               "(from 02:76:62:00:00:01)")
    assert _answers(lb, nf.echo_request6(seq=2)) == []  # held too, one NS is enough
    na = nf.neighbour_advertisement(nf.GUEST_MAC, nf.GUEST_IP6, nf.HOST_MAC, nf.HOST_IP6,
                                    flags=nf.NaFlag.SOLICITED)
    replies = _answers(lb, na)
    assert [nf.parse(r).l4.seq for r in replies] == [1, 2]
    # IPv4: ARP request for the guest; the guest's own ARP request releases the reply first
    (arp,) = _answers(lb, nf.echo_request4(seq=1))
    assert nf.describe(arp) == "ARP request who-has 169.254.86.2 tell 169.254.86.1 (02:76:62:00:00:01)"
    out = _answers(lb, nf.arp_request())
    assert [nf.parse(f).kind for f in out] == ["ICMP echo reply", "ARP reply"]


def test_dad_probe_is_defended_and_a_multicast_ns_without_sll_is_ignored(lb):
    (na,) = _answers(lb, nf.neighbour_solicitation(src="::"))
    assert nf.describe(na) == ("ICMPv6 neighbour advertisement fe80::1 → ff02::1 fe80::1 is-at "
                               "02:76:62:00:00:01 [O]")
    assert nf.mac_str(nf.parse(na).eth.dst) == "33:33:00:00:00:01"
    assert _answers(lb, nf.neighbour_solicitation(sll=False)) == []
    assert "no answer" in lb.stack.log[-1]


@pytest.mark.parametrize("frame, why", [
    (nf.echo_request6(dst="fe80::9"), "not ours"),
    (nf.echo_request6(dst_mac="52:54:00:00:00:09"), "PACKET_OTHERHOST"),
    (nf.neighbour_solicitation(target="fe80::9"), "not a member of ff02::1:ff00:9"),
    (nf.arp_request("52:54:00:00:00:07", "169.254.86.7", "169.254.86.9"), "arp_accept=0"),
    (nf.echo_request4(dst="169.254.255.255", dst_mac=nf.BROADCAST_MAC), "icmp_echo_ignore_broadcasts"),
    (nf.echo_request6(src_mac=nf.GUEST_MAC, dst=nf.solicited_node("fe80::9"),
                      dst_mac=nf.multicast_mac(nf.solicited_node("fe80::9"))), "not a member"),
    (b"\x01\x02", "malformed"),
], ids=["other-ip6", "other-mac", "ns-other-target", "arp-stranger", "broadcast-echo4",
        "other-group", "malformed"])
def test_what_the_host_drops_it_drops_and_says_why(lb, frame, why):
    _answers(lb, nf.neighbour_solicitation())
    _answers(lb, nf.arp_request())
    assert _answers(lb, frame) == []
    assert lb.stack.log[-1].startswith("dropped") and why in lb.stack.log[-1]


def test_bad_checksums_are_dropped_and_counted(lb):
    _answers(lb, nf.neighbour_solicitation())
    _answers(lb, nf.arp_request())
    bad6 = bytearray(nf.echo_request6())
    bad6[-1] ^= 0xFF
    bad4 = bytearray(nf.echo_request4())
    bad4[-1] ^= 0xFF
    assert _answers(lb, bytes(bad6)) == [] and _answers(lb, bytes(bad4)) == []
    s = lb.snmp()
    assert (s["Icmp6InCsumErrors"], s["IcmpInCsumErrors"]) == (1, 1)
    assert s.get("Icmp6OutEchoReplies", 0) == 0 and s.get("IcmpOutEchoReps", 0) == 0


@pytest.mark.parametrize("size", [10, 12])
def test_a_vnet_header_with_needs_csum_is_trusted_data_valid_is_not(size):
    with LoopbackNet(vnet_hdr=True, hdr_size=size) as lb:
        lb.send(nf.neighbour_solicitation())
        hdr, na = lb.recv_hdr()
        assert hdr == VirtioNetHdr(num_buffers=0 if size == 12 else None)  # zeros, as the kernel's
        assert nf.parse(na).kind == "ICMPv6 neighbour advertisement"
        hdr, part = nf.partial_csum(nf.echo_request6())
        (rep,) = _answers(lb, part, hdr=hdr)
        assert nf.verify(rep) == []
        assert _answers(lb, part) == []  # the same frame without the flag: a bad checksum
        assert _answers(lb, part, hdr=VirtioNetHdr(flags=VirtioNetHdrFlag.DATA_VALID)) == []
        assert lb.snmp()["Icmp6InCsumErrors"] == 2


def test_fd_is_readable_while_an_answer_waits(lb):
    assert select.select([lb.fd], [], [], 0)[0] == []
    lb.send(nf.neighbour_solicitation())
    assert select.select([lb.fd], [], [], 0)[0] == [lb.fd]
    assert lb.recv() is not None and lb.recv(timeout=5.0) is None  # nothing else will come


def test_closed_and_misused():
    lb = LoopbackNet()
    with pytest.raises(TapError, match="without vnet_hdr"):
        lb.send(nf.echo_request6(), VirtioNetHdr())
    lb.close()
    assert lb.closed and lb.fd == -1
    with pytest.raises(TapError, match="closed"):
        lb.send(nf.echo_request6())
    with pytest.raises(VbookError, match="link-local"):
        LoopbackNet(ipv4="10.0.0.1")
    with pytest.raises(VbookError, match="link-local"):
        LoopbackNet(ipv6="2001:db8::1")


def test_host_stack_is_a_plain_model():
    stack = HostStack(nf.mac_bytes(nf.HOST_MAC), (nf.ip6("fe80::1"),), ())
    (na,) = stack.receive(nf.neighbour_solicitation())
    assert nf.parse(na).l4.target == nf.ip6("fe80::1") and stack.neigh6 == {
        nf.ip6(nf.GUEST_IP6): nf.mac_bytes(nf.GUEST_MAC)}
    assert stack.receive(nf.arp_request()) == []  # no IPv4 address: not ours


# --- open_net ------------------------------------------------------------------------------------


def test_open_net_falls_back_with_the_reason(monkeypatch):
    monkeypatch.setenv("VBOOK_TUN_DEV", "/nonexistent/tun")
    monkeypatch.delenv("VBOOK_NET", raising=False)
    with open_net() as net:
        assert net.kind == "loopback"
        assert "/nonexistent/tun does not exist" in net.why_not_tap
        (na,) = _answers(net, nf.neighbour_solicitation())
        assert nf.verify(na) == []
    assert net_available()["loopback"] is None
    assert "does not exist" in net_available()["tap"]


def test_open_net_honours_vbook_net(monkeypatch):
    monkeypatch.setenv("VBOOK_NET", "loopback")
    with open_net(prefer="tap") as net:
        assert net.kind == "loopback" and net.why_not_tap == "VBOOK_NET=loopback"
    monkeypatch.setenv("VBOOK_NET", "wire")
    with pytest.raises(VbookError, match="VBOOK_NET='wire' is not one of tap, loopback"):
        open_net()
    monkeypatch.delenv("VBOOK_NET")
    with open_net(prefer="loopback", vnet_hdr=True) as net:
        assert net.vnet_hdr and net.why_not_tap == "prefer='loopback' was asked for"


# --- fidelity: the loopback against the real kernel ----------------------------------------------------


def _tos_echo(seq: int, tos: int) -> bytes:
    icmp = nf.icmp4(nf.IcmpType.ECHO, 0, struct.pack("!HH", 7, seq) + nf.ping_payload())
    return nf.ethernet(nf.HOST_MAC, nf.GUEST_MAC, nf.EtherType.IP,
                       nf.ipv4(nf.GUEST_IP4, nf.HOST_IP4, nf.IpProto.ICMP, icmp, tos=tos))


def _tc_echo(seq: int, tclass: int) -> bytes:
    raw = bytearray(nf.echo_request6(seq=seq))
    raw[14:18] = struct.pack("!I", 6 << 28 | tclass << 20)
    return bytes(raw)


def _bad(frame: bytes) -> bytes:
    raw = bytearray(frame)
    raw[-1] ^= 0x5A
    return bytes(raw)


#: (what, frame) in order; each answer list must match between kernel and loopback
SCENARIO = [
    ("echo before the neighbour is known: NS", nf.echo_request6(seq=1)),
    ("multicast NS: NA [S,O]", nf.neighbour_solicitation()),
    ("NA from the guest: nothing more held", nf.neighbour_advertisement(
        nf.GUEST_MAC, nf.GUEST_IP6, nf.HOST_MAC, nf.HOST_IP6, flags=nf.NaFlag.SOLICITED)),
    ("echo", nf.echo_request6(seq=2)),
    ("echo with a traffic class", _tc_echo(3, 0x28)),
    ("odd-sized echo", nf.echo_request6(seq=4, payload=b"abc")),
    ("echo to all-nodes", nf.echo_request6(dst=nf.ALL_NODES, dst_mac=nf.multicast_mac(nf.ALL_NODES),
                                           seq=5)),
    ("unicast NS: NA [S]", nf.neighbour_solicitation(dst=nf.HOST_IP6, dst_mac=nf.HOST_MAC)),
    ("unicast NS without SLLA from a stranger: NS for it", nf.neighbour_solicitation(
        src="fe80::7", src_mac="52:54:00:00:00:07", dst=nf.HOST_IP6, dst_mac=nf.HOST_MAC, sll=False)),
    ("the stranger's NA releases the held NA", nf.neighbour_advertisement(
        "52:54:00:00:00:07", "fe80::7", nf.HOST_MAC, nf.HOST_IP6, flags=nf.NaFlag.SOLICITED)),
    ("DAD probe: defended", nf.neighbour_solicitation(src="::")),
    ("multicast NS without SLLA: ignored", nf.neighbour_solicitation(src="fe80::3", sll=False)),
    ("NS for another address", nf.neighbour_solicitation(target="fe80::9")),
    ("echo with a bad checksum", _bad(nf.echo_request6(seq=6))),
    ("echo to another address", nf.echo_request6(dst="fe80::9", seq=7)),
    ("echo to another MAC", nf.echo_request6(dst_mac="52:54:00:00:00:09", seq=8)),
    ("echo to a group we are not in", nf.echo_request6(
        dst=nf.solicited_node("fe80::9"), dst_mac=nf.multicast_mac(nf.solicited_node("fe80::9")), seq=9)),
    ("ICMP echo before ARP: ARP request", nf.echo_request4(seq=1)),
    ("ARP request: held reply, then ARP reply", nf.arp_request()),
    ("ICMP echo", nf.echo_request4(seq=2)),
    ("ICMP echo with TOS, DF clear", _tos_echo(3, 0x28)),
    ("empty ICMP echo", nf.echo_request4(seq=4, payload=b"")),
    ("ICMP echo to the broadcast address", nf.echo_request4(dst="169.254.255.255",
                                                             dst_mac=nf.BROADCAST_MAC, seq=5)),
    ("ICMP echo with a bad checksum", _bad(nf.echo_request4(seq=6))),
    ("ARP for another address", nf.arp_request(target="169.254.86.9")),
]
#: counters whose per-frame change must agree (the kernel's Out* also count its own chatter)
COUNTERS = ["Icmp6InMsgs", "Icmp6InErrors", "Icmp6InCsumErrors", "Icmp6InEchos",
            "Icmp6InNeighborSolicits", "Icmp6InNeighborAdvertisements", "Icmp6OutEchoReplies",
            "Icmp6OutNeighborAdvertisements", "IcmpInMsgs", "IcmpInErrors", "IcmpInCsumErrors",
            "IcmpInEchos", "IcmpOutEchoReps"]


def _open_tap_or_skip() -> Tap:
    try:
        return Tap.open()
    except BackendUnavailable as e:
        pytest.skip(f"no real tap to compare with: {e.reason}")


def test_loopback_answers_as_the_real_kernel_does():
    with _open_tap_or_skip() as tap, LoopbackNet() as lb:
        for what, frame in SCENARIO:
            t0, l0 = tap.snmp(), lb.snmp()
            kernel = _answers(tap, frame, quiet=0.1)
            model = _answers(lb, frame)
            t1, l1 = tap.snmp(), lb.snmp()
            assert [nf.describe(f) for f in model] == [nf.describe(f) for f in kernel], what
            assert [nf.content(f) for f in model] == [nf.content(f) for f in kernel], what
            for f in kernel:
                assert nf.verify(f) == [], (what, nf.describe(f))
            delta_k = {c: t1.get(c, 0) - t0.get(c, 0) for c in COUNTERS}
            delta_m = {c: l1.get(c, 0) - l0.get(c, 0) for c in COUNTERS}
            assert delta_m == delta_k, what


def test_loopback_answers_vnet_header_frames_as_the_real_kernel_does():
    try:
        tap = Tap.open(vnet_hdr=True, hdr_size=12)
    except BackendUnavailable as e:
        pytest.skip(f"no real tap to compare with: {e.reason}")
    with tap, LoopbackNet(vnet_hdr=True, hdr_size=12) as lb:
        for net in (tap, lb):
            _answers(net, nf.neighbour_solicitation(), quiet=0.1)
            _answers(net, nf.arp_request(), quiet=0.1)
        for full in (nf.echo_request6(seq=11), nf.echo_request4(seq=12)):
            hdr, part = nf.partial_csum(full)
            for h in (hdr, VirtioNetHdr(), VirtioNetHdr(flags=VirtioNetHdrFlag.DATA_VALID)):
                kernel = _answers(tap, part, quiet=0.1, hdr=h)
                model = _answers(lb, part, hdr=h)
                assert [nf.content(f) for f in model] == [nf.content(f) for f in kernel], h
                assert len(kernel) == (1 if h.flags & VirtioNetHdrFlag.NEEDS_CSUM else 0), h
