"""vbook.models.net_frames: the frames a guest sends and the host answers.

Unit tests on known frames (sizes as measured on the tap, machine.md), frames the
real kernel sent (captured from Linux 6.18 on a vbook tap), hypothesis
round trips (build → parse gives the fields back, checksums verify, a flipped
bit is caught), and the C oracle: every constant and the virtio_net_hdr layout
against the installed uapi headers (skipped with the reason without gcc/headers).
"""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest
from _oracle import need_c, printf_lines, program, run_c
from hypothesis import given, settings
from hypothesis import strategies as st

from vbook.models import net_frames as nf
from vbook.models.net_frames import (
    ArpOp,
    EtherType,
    FrameError,
    Icmp6Type,
    IcmpType,
    IpProto,
    NaFlag,
    NdOpt,
    VirtioNetGso,
    VirtioNetHdr,
    VirtioNetHdrFlag,
)

# --- frames the kernel sent on a vbook tap (Linux 6.18, fe80::1 on vbtap0) ------------------------

KERNEL_MLD2_REPORT = bytes.fromhex(
    "33330000001602766200000186dd6000000000240001fe800000000000000000000000000001ff02000000000000"
    "0000000000000016""3a000502000001008f0071070000000104000000ff0200000000000000000001ff000001")
KERNEL_RS = bytes.fromhex(
    "33330000000202766200000186dd6000000000103afffe800000000000000000000000000001ff02000000000000"
    "0000000000000002850017b6000000000101027662000001")


def test_the_guest_frames_have_the_sizes_measured_on_the_tap():
    # machine.md: NS 86 bytes, ICMPv6 echo 118, ARP 42 (not padded), ICMP echo 98
    assert len(nf.neighbour_solicitation()) == 86
    assert len(nf.echo_request6()) == 118
    assert len(nf.arp_request()) == 42
    assert len(nf.echo_request4()) == 98
    na = nf.neighbour_advertisement(nf.HOST_MAC, nf.HOST_IP6, nf.GUEST_MAC, nf.GUEST_IP6)
    assert len(na) == 86
    assert len(nf.neighbour_advertisement(nf.HOST_MAC, nf.HOST_IP6, nf.GUEST_MAC, nf.GUEST_IP6,
                                          tll=False)) == 78


def test_describe_names_each_frame():
    assert nf.describe(nf.neighbour_solicitation()) == (
        "ICMPv6 neighbour solicitation fe80::2 → ff02::1:ff00:1 who-has fe80::1 "
        "(from 52:54:00:12:34:56)")
    assert nf.describe(nf.echo_request6()) == "ICMPv6 echo request fe80::2 → fe80::1 id 7 seq 1 (56 bytes)"
    assert nf.describe(nf.arp_request()) == (
        "ARP request who-has 169.254.86.1 tell 169.254.86.2 (52:54:00:12:34:56)")
    assert nf.describe(nf.echo_request4(ident=9, seq=3, payload=b"hi")) == (
        "ICMP echo request 169.254.86.2 → 169.254.86.1 id 9 seq 3 (2 bytes)")
    na = nf.neighbour_advertisement(nf.HOST_MAC, nf.HOST_IP6, nf.GUEST_MAC, nf.GUEST_IP6)
    assert nf.describe(na) == ("ICMPv6 neighbour advertisement fe80::1 → fe80::2 fe80::1 is-at "
                               "02:76:62:00:00:01 [S,O]")
    rep = nf.arp_reply(nf.HOST_MAC, nf.HOST_IP4, nf.GUEST_MAC, nf.GUEST_IP4)
    assert nf.describe(rep) == ("ARP reply 169.254.86.1 is-at 02:76:62:00:00:01 → 169.254.86.2 "
                                "(52:54:00:12:34:56)")


def test_ns_goes_to_the_solicited_node_group_with_hop_limit_255():
    f = nf.parse(nf.neighbour_solicitation())
    assert nf.mac_str(f.eth.dst) == "33:33:ff:00:00:01"
    assert str(f.net.dst) == "ff02::1:ff00:1" and f.net.hop_limit == 255
    assert f.l4.option(NdOpt.SOURCE_LL_ADDR) == nf.mac_bytes(nf.GUEST_MAC)
    assert str(nf.solicited_node("fe80::1234:5678:9abc")) == "ff02::1:ff78:9abc"
    assert nf.multicast_mac("ff02::1") == bytes.fromhex("333300000001")
    dad = nf.parse(nf.neighbour_solicitation(src="::"))
    assert dad.l4.options == ()  # RFC 4861 §4.3: no SLLA from the unspecified address
    with pytest.raises(FrameError, match="dst_mac"):
        nf.neighbour_solicitation(dst="fe80::1")
    with pytest.raises(FrameError, match="not a multicast"):
        nf.multicast_mac("fe80::1")


def test_frames_the_kernel_sent_parse_and_verify():
    mld = nf.parse(KERNEL_MLD2_REPORT)
    assert mld.net.ext_headers == (IpProto.HOPOPTS,) and mld.net.router_alert
    assert mld.net.hop_limit == 1 and mld.l4.type == Icmp6Type.MLD2_REPORT
    assert mld.l4.records == ((nf.Mld2Record.CHANGE_TO_EXCLUDE, ipaddress.IPv6Address("ff02::1:ff00:1"), 0),)
    assert nf.verify(mld) == []
    assert nf.describe(mld) == ("MLDv2 report fe80::1 → ff02::16 (1 record: change-to-exclude "
                                "ff02::1:ff00:1)")
    assert nf.kernel_chatter(mld) == "MLDv2 report"
    rs = nf.parse(KERNEL_RS)
    assert nf.describe(rs) == "ICMPv6 router solicitation fe80::1 → ff02::2" and nf.verify(rs) == []
    assert rs.l4.option(NdOpt.SOURCE_LL_ADDR) == nf.mac_bytes(nf.HOST_MAC)
    assert nf.kernel_chatter(rs) == "router solicitation"
    assert nf.kernel_chatter(nf.neighbour_solicitation(src="::")) == "DAD neighbour solicitation from ::"
    for answer in (nf.neighbour_solicitation(), nf.echo_request6(), nf.arp_request(), nf.echo_request4()):
        assert nf.kernel_chatter(answer) is None


def test_checksum_is_rfc1071():
    # RFC 1071 §3 example: the words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement)
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert nf.ones_sum(data) == 0xDDF2
    assert nf.checksum(data) == 0x220D
    assert nf.checksum(data + struct.pack("!H", 0x220D)) == 0
    assert nf.ones_sum(b"\x01") == 0x0100  # an odd byte is padded with zero


def test_a_bad_checksum_is_a_problem_not_an_error():
    raw = bytearray(nf.echo_request6())
    raw[-1] ^= 0x01
    f = nf.parse(bytes(raw))
    assert not f.l4.csum_ok
    assert nf.verify(f) == [f"bad ICMPv6 checksum {f.l4.checksum:#06x} (want {f.l4.want_csum:#06x})"]
    assert nf.describe(f).endswith(f"! bad ICMPv6 checksum {f.l4.checksum:#06x} (want "
                                   f"{f.l4.want_csum:#06x})")
    raw4 = bytearray(nf.echo_request4())
    raw4[24] ^= 0x01  # the IPv4 header checksum
    assert nf.verify(bytes(raw4))[0].startswith("bad IPv4 header checksum")
    # a wrong address breaks the ICMPv6 checksum (the pseudo-header)
    moved = bytearray(nf.echo_request6())
    moved[14 + 24 + 15] = 9  # destination fe80::9
    assert nf.verify(bytes(moved))[0].startswith("bad ICMPv6 checksum")


@pytest.mark.parametrize("frame, match", [
    (b"\x00" * 13, "at least 14 bytes"),
    (nf.echo_request6()[:50], "IPv6 header has 40 bytes"),
    (nf.echo_request6()[:-1], "payload length 64 runs past"),
    (nf.echo_request4()[:30], "IPv4 header has at least 20"),
    (nf.arp_request()[:40], "ARP packet has 28 bytes"),
])
def test_a_cut_frame_is_a_frame_error(frame, match):
    with pytest.raises(FrameError, match=match):
        nf.parse(frame)


@pytest.mark.parametrize("mac", ["52:54:00:12:34", "52:54:00:12:34:5g", "525400123456", "1:2:3:4:5:678"])
def test_a_bad_mac_is_named(mac):
    with pytest.raises(FrameError, match="MAC"):
        nf.mac_bytes(mac)


def test_content_leaves_out_what_a_stack_may_choose():
    a = nf.echo_reply4(nf.HOST_MAC, nf.GUEST_MAC, nf.HOST_IP4, nf.GUEST_IP4, 7, 1, b"x", ip_id=1)
    b = nf.echo_reply4(nf.HOST_MAC, nf.GUEST_MAC, nf.HOST_IP4, nf.GUEST_IP4, 7, 1, b"x", ip_id=0x708E)
    assert a != b and nf.content(a) == nf.content(b)
    flow = bytearray(nf.echo_request6())
    flow[15:18] = b"\x09\xa0\xba"  # a flow label (not in the checksum)
    assert nf.verify(bytes(flow)) == [] and nf.content(bytes(flow)) == nf.content(nf.echo_request6())
    assert nf.content(nf.echo_request6(seq=2)) != nf.content(nf.echo_request6(seq=1))


# --- virtio_net_hdr ---------------------------------------------------------------------------------


def test_virtio_net_hdr_layout():
    h = VirtioNetHdr(flags=VirtioNetHdrFlag.NEEDS_CSUM, gso_type=VirtioNetGso.TCPV6, hdr_len=0x0102,
                     gso_size=0x0304, csum_start=0x0506, csum_offset=0x0708)
    assert h.pack() == bytes.fromhex("0104" "0201" "0403" "0605" "0807")
    assert h.pack(12) == h.pack() + b"\0\0" and len(h.pack(12)) == nf.HDR_SIZE_MRG
    assert VirtioNetHdr.unpack(h.pack()) == h
    m = VirtioNetHdr(num_buffers=3)
    assert m.size == 12 and VirtioNetHdr.unpack(m.pack(), 12) == m
    assert m.pack(10) == bytes(10)
    assert h.describe() == "virtio_net_hdr flags NEEDS_CSUM, csum_start 1286 csum_offset 1800, " \
                           "gso_type 4 gso_size 772 hdr_len 258"
    with pytest.raises(FrameError, match="10 or 12 bytes, not 8"):
        VirtioNetHdr().pack(8)
    with pytest.raises(FrameError, match="only 5 bytes"):
        VirtioNetHdr.unpack(b"12345")
    with pytest.raises(FrameError, match="out of range"):
        VirtioNetHdr(csum_start=70000).pack()


def test_partial_csum_is_what_the_kernel_expects():
    # machine.md: NEEDS_CSUM with csum_start 54 (IPv6) / 34 (IPv4), csum_offset 2
    hdr6, part6 = nf.partial_csum(nf.echo_request6())
    assert (hdr6.flags, hdr6.csum_start, hdr6.csum_offset) == (VirtioNetHdrFlag.NEEDS_CSUM, 54, 2)
    f = nf.parse(part6)
    pseudo = nf.ones_sum(nf.pseudo_header6(nf.GUEST_IP6, nf.HOST_IP6, 64))
    assert f.l4.checksum == pseudo and not f.l4.csum_ok  # ~csum_ipv6_magic(…, 0)
    assert nf.fill_csum(part6, hdr6) == nf.echo_request6()
    hdr4, part4 = nf.partial_csum(nf.echo_request4())
    assert (hdr4.csum_start, hdr4.csum_offset) == (34, 2) and nf.parse(part4).l4.checksum == 0
    assert nf.fill_csum(part4, hdr4) == nf.echo_request4()
    assert nf.fill_csum(part4, VirtioNetHdr()) == part4  # no flag, nothing done
    with pytest.raises(FrameError, match="past the"):
        nf.fill_csum(part4, VirtioNetHdr(flags=1, csum_start=97, csum_offset=2))
    with pytest.raises(FrameError, match="no ICMP"):
        nf.partial_csum(nf.arp_request())


# --- hypothesis ---------------------------------------------------------------------------------------

unicast_macs = st.binary(min_size=6, max_size=6).map(lambda b: bytes([b[0] & 0xFE]) + b[1:])
link_local6 = st.integers(1, 2**64 - 1).map(lambda i: ipaddress.IPv6Address((0xFE80 << 112) | i))
link_local4 = st.tuples(st.integers(1, 254), st.integers(1, 254)).map(
    lambda t: ipaddress.IPv4Address(f"169.254.{t[0]}.{t[1]}"))
u16 = st.integers(0, 0xFFFF)
payloads = st.binary(max_size=200)


@settings(max_examples=150, deadline=None)
@given(unicast_macs, unicast_macs, link_local6, link_local6, u16, u16, payloads, st.integers(1, 255))
def test_echo6_round_trip(smac, dmac, src, dst, ident, seq, payload, hop):
    frame = nf.echo_request6(smac, dmac, src, dst, ident, seq, payload, hop)
    f = nf.parse(frame)
    assert (f.eth.src, f.eth.dst, f.eth.ethertype) == (smac, dmac, EtherType.IPV6)
    assert (f.net.src, f.net.dst, f.net.hop_limit, f.net.payload_length) == (src, dst, hop, 8 + len(payload))
    assert (f.l4.type, f.l4.ident, f.l4.seq, f.l4.payload) == (Icmp6Type.ECHO_REQUEST, ident, seq, payload)
    assert nf.verify(f) == [] and f.l4.checksum == f.l4.want_csum
    msg = frame[54:]
    assert nf.checksum(msg, nf.ones_sum(nf.pseudo_header6(src, dst, len(msg)))) == 0


@settings(max_examples=150, deadline=None)
@given(unicast_macs, unicast_macs, link_local4, link_local4, u16, u16, payloads, u16, st.booleans())
def test_echo4_round_trip(smac, dmac, src, dst, ident, seq, payload, ip_id, df):
    f = nf.parse(nf.echo_request4(smac, dmac, src, dst, ident, seq, payload, ip_id=ip_id, df=df))
    assert (f.net.src, f.net.dst, f.net.ident, bool(f.net.flags_frag & nf.IP_DF)) == (src, dst, ip_id, df)
    assert (f.l4.type, f.l4.ident, f.l4.seq, f.l4.payload) == (IcmpType.ECHO, ident, seq, payload)
    assert nf.verify(f) == [] and f.net.total_length == 28 + len(payload)


@settings(max_examples=100, deadline=None)
@given(unicast_macs, unicast_macs, link_local4, link_local4, st.sampled_from(list(ArpOp)))
def test_arp_round_trip(sha, tha, spa, tpa, op):
    f = nf.parse(nf.arp(op, sha, spa, tha, tpa))
    assert (f.net.oper, f.net.sha, f.net.spa, f.net.tha, f.net.tpa) == (op, sha, spa, tha, tpa)
    assert f.eth.dst == (b"\xff" * 6 if op == ArpOp.REQUEST else tha) and len(f.raw) == 42


@settings(max_examples=100, deadline=None)
@given(unicast_macs, unicast_macs, link_local6, link_local6, st.integers(0, 7), st.booleans())
def test_ns_na_round_trip(smac, dmac, a, b, flags, tll):
    ns = nf.parse(nf.neighbour_solicitation(smac, a, b))
    assert (ns.l4.type, ns.l4.target) == (Icmp6Type.NEIGHBOUR_SOLICITATION, b)
    assert ns.net.dst == nf.solicited_node(b)
    assert ns.l4.option(NdOpt.SOURCE_LL_ADDR) == smac and nf.verify(ns) == []
    na = nf.parse(nf.neighbour_advertisement(smac, b, dmac, a, flags=flags << 5, tll=tll))
    assert (na.l4.type, na.l4.target, na.l4.na_flags) == (Icmp6Type.NEIGHBOUR_ADVERTISEMENT, b, flags << 5)
    assert na.l4.option(NdOpt.TARGET_LL_ADDR) == (smac if tll else None) and nf.verify(na) == []
    assert NaFlag(na.l4.na_flags) == NaFlag(flags << 5)


@settings(max_examples=200, deadline=None)
@given(link_local6, u16, u16, payloads, st.data())
def test_any_flipped_bit_in_what_the_icmpv6_checksum_covers_is_caught(src, ident, seq, payload, data):
    frame = bytearray(nf.echo_request6(src=src, ident=ident, seq=seq, payload=payload))
    # the pseudo-header's addresses (IPv6 header bytes 8..40) and the whole ICMPv6 message
    pos = data.draw(st.sampled_from([*range(14 + 8, 14 + 40), *range(54, len(frame))]))
    frame[pos] ^= 1 << data.draw(st.integers(0, 7))
    try:
        problems = nf.verify(bytes(frame))
    except FrameError:
        return  # e.g. the type became an NS too short to be one
    assert any("checksum" in p for p in problems)


@settings(max_examples=200, deadline=None)
@given(st.booleans(), link_local6, link_local4, u16, payloads)
def test_partial_then_fill_gives_a_frame_that_verifies(v6, a6, a4, seq, payload):
    full = (nf.echo_request6(src=a6, seq=seq, payload=payload) if v6
            else nf.echo_request4(src=a4, seq=seq, payload=payload))
    hdr, part = nf.partial_csum(full)
    filled = nf.fill_csum(part, hdr)
    assert nf.verify(filled) == []
    where = hdr.csum_start + hdr.csum_offset
    # equal to the frame built with its checksum, but for 0x0000 vs 0xFFFF (CSUM_MANGLED_0)
    assert filled[:where] == full[:where] and filled[where + 2:] == full[where + 2:]
    got, want = (struct.unpack_from("!H", b, where)[0] for b in (filled, full))
    assert got == want or {got, want} == {0, 0xFFFF}


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), u16, u16, u16, u16, st.one_of(st.none(), u16))
def test_virtio_net_hdr_round_trip(flags, gso, hdr_len, gso_size, start, offset, nbuf):
    h = VirtioNetHdr(flags, gso, hdr_len, gso_size, start, offset, nbuf)
    raw = h.pack()
    assert len(raw) == (10 if nbuf is None else 12)
    assert VirtioNetHdr.unpack(raw, len(raw)) == h


# --- the C oracle -------------------------------------------------------------------------------------

INCLUDE = "/usr/include"
LINUX_HEADERS = ["linux/if_ether.h", "linux/if_arp.h", "linux/in.h", "linux/in6.h", "linux/ip.h",
                 "linux/ipv6.h", "linux/icmp.h", "linux/icmpv6.h", "linux/virtio_net.h", "stddef.h"]

#: C macro -> the Python value (linux uapi program)
LINUX_MACROS = {
    **{f"ETH_P_{e.name}": e for e in EtherType},
    "ETH_ALEN": nf.ETH_ALEN, "ETH_HLEN": nf.ETH_HLEN, "ETH_ZLEN": nf.ETH_ZLEN,
    "ARPHRD_ETHER": nf.ARPHRD_ETHER,
    **{f"ARPOP_{o.name}": o for o in ArpOp},
    **{f"IPPROTO_{p.name}": p for p in IpProto},
    **{f"ICMP_{t.name}": t for t in IcmpType},
    **{f"ICMPV6_{t.name}": t for t in Icmp6Type if t < 133 or t > 137},
    **{f"VIRTIO_NET_HDR_F_{f.name}": f for f in VirtioNetHdrFlag},
    **{f"VIRTIO_NET_HDR_GSO_{g.name}": g for g in VirtioNetGso},
    "VIRTIO_NET_HDR_GSO_ECN": nf.VIRTIO_NET_HDR_GSO_ECN,
}
LINUX_EXPRS = {
    "sizeof virtio_net_hdr": ("sizeof(struct virtio_net_hdr)", nf.HDR_SIZE),
    "sizeof virtio_net_hdr_mrg_rxbuf": ("sizeof(struct virtio_net_hdr_mrg_rxbuf)", nf.HDR_SIZE_MRG),
    "sizeof virtio_net_hdr_v1": ("sizeof(struct virtio_net_hdr_v1)", nf.HDR_SIZE_MRG),
    **{f"offsetof virtio_net_hdr.{name}": (f"offsetof(struct virtio_net_hdr, {name})", off)
       for name, off in (("flags", 0), ("gso_type", 1), ("hdr_len", 2), ("gso_size", 4),
                         ("csum_start", 6), ("csum_offset", 8))},
    "offsetof virtio_net_hdr_mrg_rxbuf.num_buffers":
        ("offsetof(struct virtio_net_hdr_mrg_rxbuf, num_buffers)", 10),
    "sizeof ethhdr": ("sizeof(struct ethhdr)", nf.ETH_HLEN),
    "sizeof arphdr": ("sizeof(struct arphdr)", 8),
    "sizeof iphdr": ("sizeof(struct iphdr)", 20),
    "sizeof ipv6hdr": ("sizeof(struct ipv6hdr)", 40),
    "sizeof icmphdr": ("sizeof(struct icmphdr)", 8),
    "sizeof icmp6hdr": ("sizeof(struct icmp6hdr)", 8),
}
#: glibc netinet/icmp6.h: neighbour discovery (Linux keeps these out of uapi)
GLIBC_MACROS = {
    "ND_ROUTER_SOLICIT": Icmp6Type.ROUTER_SOLICITATION, "ND_ROUTER_ADVERT": Icmp6Type.ROUTER_ADVERTISEMENT,
    "ND_NEIGHBOR_SOLICIT": Icmp6Type.NEIGHBOUR_SOLICITATION,
    "ND_NEIGHBOR_ADVERT": Icmp6Type.NEIGHBOUR_ADVERTISEMENT, "ND_REDIRECT": Icmp6Type.REDIRECT,
    "MLD_LISTENER_QUERY": Icmp6Type.MGM_QUERY, "MLD_LISTENER_REPORT": Icmp6Type.MGM_REPORT,
    "MLD_LISTENER_REDUCTION": Icmp6Type.MGM_REDUCTION,
    "ND_OPT_SOURCE_LINKADDR": NdOpt.SOURCE_LL_ADDR, "ND_OPT_TARGET_LINKADDR": NdOpt.TARGET_LL_ADDR,
    "ND_OPT_PREFIX_INFORMATION": NdOpt.PREFIX_INFO, "ND_OPT_REDIRECTED_HEADER": NdOpt.REDIRECT_HDR,
    "ND_OPT_MTU": NdOpt.MTU,
    # the NA flags word in network order, read on this little-endian host
    "ND_NA_FLAG_ROUTER": NaFlag.ROUTER, "ND_NA_FLAG_SOLICITED": NaFlag.SOLICITED,
    "ND_NA_FLAG_OVERRIDE": NaFlag.OVERRIDE,
}

_HDR_BYTES = """
  struct virtio_net_hdr_mrg_rxbuf m;
  unsigned char *p = (unsigned char *)&m;
  m.hdr.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM; m.hdr.gso_type = VIRTIO_NET_HDR_GSO_TCPV6;
  m.hdr.hdr_len = 0x0102; m.hdr.gso_size = 0x0304; m.hdr.csum_start = 0x0506;
  m.hdr.csum_offset = 0x0708; m.num_buffers = 0x090a;
  for (unsigned i = 0; i < sizeof m; i++) printf("hdr_byte_%u %u\\n", i, p[i]);
"""


@pytest.fixture(scope="module")
def linux_values(tmp_path_factory):
    need_c(*(os.path.join(INCLUDE, h) for h in LINUX_HEADERS if h != "stddef.h"))
    body = printf_lines({k: k for k in LINUX_MACROS}, guard_macros=True)
    body += printf_lines({k: expr for k, (expr, _) in LINUX_EXPRS.items()})
    body += _HDR_BYTES.strip("\n").splitlines()
    return run_c(tmp_path_factory.mktemp("net_oracle"), program(LINUX_HEADERS, body))


@pytest.fixture(scope="module")
def glibc_values(tmp_path_factory):
    need_c(os.path.join(INCLUDE, "netinet", "icmp6.h"))
    body = printf_lines({k: k for k in GLIBC_MACROS}, guard_macros=True)
    return run_c(tmp_path_factory.mktemp("icmp6_oracle"), program(["netinet/icmp6.h"], body))


@pytest.mark.parametrize("macro", sorted(LINUX_MACROS))
def test_oracle_uapi_constant(linux_values, macro):
    assert linux_values[macro] is not None, f"{macro} is not in the installed headers"
    assert linux_values[macro] == LINUX_MACROS[macro]


@pytest.mark.parametrize("key", sorted(LINUX_EXPRS))
def test_oracle_struct_layout(linux_values, key):
    assert linux_values[key] == LINUX_EXPRS[key][1]


def test_oracle_virtio_net_hdr_bytes(linux_values):
    c_bytes = bytes(linux_values[f"hdr_byte_{i}"] for i in range(12))
    h = VirtioNetHdr(VirtioNetHdrFlag.NEEDS_CSUM, VirtioNetGso.TCPV6, 0x0102, 0x0304, 0x0506, 0x0708,
                     num_buffers=0x090A)
    assert h.pack() == c_bytes  # __virtio16 is little-endian here (x86, VIRTIO 1.x)
    assert VirtioNetHdr.unpack(c_bytes, 12) == h


@pytest.mark.parametrize("macro", sorted(GLIBC_MACROS))
def test_oracle_glibc_icmp6(glibc_values, macro):
    if macro.startswith("ND_NA_FLAG") and struct.pack("=H", 1) != b"\x01\x00":
        pytest.skip("ND_NA_FLAG_* values are byte-order dependent; checked on little-endian hosts")
    assert glibc_values[macro] == GLIBC_MACROS[macro]
