"""virtio-net's data path as QEMU 9.2.4 runs it (hw/net/virtio-net.c), driven like Linux drives it.

The guest side is :class:`test_virtio_pci.Board` — Linux's legacy virtio-pci
driver in Python, with :class:`vbook.models.vring.Driver` rings on the board's
RAM — and every kick and ISR read is real port I/O on the board. Frames go to
and come from a :class:`~vbook.devices.net_client.MemoryBackend` (or the
Python host stack, :class:`~vbook.backends.loopback_net.LoopbackNet`). The last
tests run a tiny real guest (GNU as listing + its bytes) on unicorn and, when
present, /dev/kvm: it finds virtio-net through 0xCF8/0xCFC, maps BAR0, sets up
the transmit queue as Linux's legacy driver does and sends one frame — which
must reach the backend byte for byte.
"""

from __future__ import annotations

import json
import re
import struct

import pytest
from _sources import QEMU_9, function_body, git_show
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_virtio_pci import BUFS, MAC, Board, frame

from vbook.backends import available
from vbook.backends.loopback_net import LoopbackNet
from vbook.devices import net_client as net
from vbook.devices.machine import Machine
from vbook.devices.net_client import MemoryBackend
from vbook.devices.virtio import run_bottom_halves
from vbook.devices.virtio_net import VIRTIO_NET_PROPERTIES, VirtIONetPCI, add_virtio_net
from vbook.errors import VbookError
from vbook.guests.base import Guest
from vbook.guests.build import assemble, tools_missing
from vbook.models import net_frames as nf
from vbook.models import run_loop
from vbook.models import virtio_consts as vc
from vbook.models.virtio_consts import LegacyReg as R
from vbook.models.virtio_consts import NetFeature as NF
from vbook.models.vring import AvailFlag

EVENT_IDX = 1 << 29
MRG = 1 << NF.MRG_RXBUF
BASE = 1 << NF.MAC | 1 << NF.STATUS
CTRL = 1 << NF.CTRL_VQ | 1 << NF.CTRL_RX | 1 << NF.CTRL_VLAN


class VnetBackend(MemoryBackend):
    """A backend that takes and gives frames with a vnet header in front, as a tap fd opened
    with ``IFF_VNET_HDR`` does (``hdr_size`` is its ``TUNSETVNETHDRSZ``)."""

    vnet_hdr = True
    hdr_size = vc.HDR_SIZE


def send(b: Board, payload: bytes, hdr: bytes | None = None, split: bool = False,
         at: int = BUFS, kick: bool = True) -> int:
    """``start_xmit`` → ``xmit_skb``: header + frame in one buffer (ANY_LAYOUT, ``can_push``)
    or in two; then ``virtqueue_kick``."""
    hdr = bytes(b.hdr_len) if hdr is None else hdr
    tx = b.drv[1]
    if split:
        b.ram.write(at, hdr)
        b.ram.write(at + 0x100, payload)
        head = tx.add(out=[(at, len(hdr)), (at + 0x100, len(payload))])
    else:
        b.ram.write(at, hdr + payload)
        head = tx.add(out=[(at, len(hdr) + len(payload))])
    if kick:
        tx.kick()
    return head


RXBUF, STRIDE = 0x80000, 0x800


def post_rx(b: Board, count: int, size: int, at: int = RXBUF) -> list[int]:
    """``try_fill_recv``: ``count`` device-writable buffers of ``size`` bytes, then a kick
    (buffer ``i`` at ``at + i * STRIDE``; a fresh ring hands out heads 0, 1, …)."""
    assert size <= STRIDE
    rx = b.drv[0]
    heads = [rx.add(in_=[(at + i * STRIDE, size)]) for i in range(count)]
    rx.kick()
    return heads


def received(b: Board, at: int = RXBUF) -> list[tuple[int, int, bytes]]:
    """``virtnet_receive``: every used RX buffer as (head, len, bytes written)."""
    out = []
    while (got := b.drv[0].get_used()) is not None:
        head, length = got
        out.append((head, length, b.ram.read(at + head * STRIDE, length)))
    return out


# --- transmit -------------------------------------------------------------------------------------

@pytest.mark.parametrize("features, hdr_len", [(BASE, 10), (BASE | MRG, 12)])
@pytest.mark.parametrize("split", [False, True])
def test_tx_frames_reach_the_backend_with_the_header_stripped(features, hdr_len, split):
    b = Board()
    b.probe(features=features)
    assert b.n.guest_hdr_len == hdr_len and b.n.host_hdr_len == 0
    frames = [frame(60), frame(1514), frame(14)]
    for i, f in enumerate(frames):
        send(b, f, hdr=bytes([1, 0]) + bytes(hdr_len - 2), split=split, at=BUFS + 0x1000 * i)
    assert b.backend.sent == frames
    ev = b.events("virtio_net_flush_tx")
    assert [bytes.fromhex(e["frame"]) for e in ev] == frames
    assert all(e["hdr"] == (bytes([1, 0]) + bytes(hdr_len - 2)).hex() for e in ev)
    used = [b.drv[1].get_used() for _ in frames]
    assert [n for _, n in used] == [0, 0, 0] and b.drv[1].get_used() is None


def test_tx_through_indirect_descriptors():
    b = Board()
    b.probe(features=BASE | 1 << 28, indirect=True)
    f = frame(200)
    send(b, f, split=True)
    pop = b.events("virtqueue_pop")[-1]
    assert pop["indirect"] is not None and b.backend.sent == [f]


@pytest.mark.parametrize("features, hdr_len", [(BASE, 10), (BASE | MRG, 12)])
def test_tx_with_a_vnet_header_backend_passes_the_header_on(features, hdr_len):
    be = VnetBackend()
    b = Board(backend=be)
    assert b.n.has_vnet_hdr
    host = b.inp(R.HOST_FEATURES, 4)
    for bit in (NF.CSUM, NF.GUEST_CSUM, NF.HOST_TSO4, NF.GUEST_TSO6, NF.HOST_ECN):
        assert host >> bit & 1
    assert not host >> NF.HOST_UFO & 1          # the backend does not say it can UFO
    b.probe(features=features | 1 << NF.CSUM)
    assert b.n.host_hdr_len == b.n.guest_hdr_len == hdr_len == be.hdr_size   # TUNSETVNETHDRSZ
    hdr = nf.VirtioNetHdr(flags=1, csum_start=34, csum_offset=6).pack(hdr_len)
    send(b, frame(98), hdr=hdr)
    assert be.sent == [hdr + frame(98)]


@pytest.mark.parametrize("features, hdr_len", [(BASE, 10), (BASE | MRG, 12)])
def test_a_host_end_with_vnet_headers_carries_virtio_nets_own_header(features, hdr_len):
    """net/tap.c: ``tap_set_vnet_hdr_len`` → TUNSETVNETHDRSZ and ``using_vnet_hdr``; then
    header and frame go to the fd as one buffer, and come back so."""
    lo = LoopbackNet(vnet_hdr=True)
    b = Board(backend=lo)
    b.probe(features=features)
    peer = b.n.nic.peer
    assert peer.using_vnet_hdr and lo.hdr_size == b.n.host_hdr_len == hdr_len
    post_rx(b, 2, 2048)
    send(b, nf.neighbour_solicitation())
    assert lo.sent == 1 and b.m.main_loop_poll() == 1
    (head, length, data), = received(b)
    hdr = nf.VirtioNetHdr.unpack(data, hdr_len)
    assert (hdr.flags, hdr.gso_type) == (0, 0)
    assert hdr.num_buffers == (1 if hdr_len == 12 else None)   # virtio-net wrote num_buffers
    assert nf.describe(data[hdr_len:]).startswith("ICMPv6 neighbour advertisement")


def test_a_vnet_backend_behind_the_e1000_gets_and_loses_a_zeroed_header():
    """net/tap.c ``host_vnet_hdr_len && !using_vnet_hdr``: the e1000 knows no vnet header,
    so the tap's is zero on the way out and cut off on the way in."""
    lo = LoopbackNet(vnet_hdr=True)
    m = Machine(nics=[lo])
    assert not m.netdevs[0].using_vnet_hdr
    net.tap_receive_iov(m.netdevs[0], nf.neighbour_solicitation())
    raw = lo.read_raw()
    assert raw[:vc.HDR_SIZE] == bytes(vc.HDR_SIZE) and raw[vc.HDR_SIZE:][12:14] == b"\x86\xdd"


def test_tx_burst_reschedules_the_bottom_half():
    b = Board(props={"x-txburst": 4}, deferred=True)
    b.probe(features=BASE)
    for i in range(10):
        send(b, frame(60 + i), at=BUFS + 0x800 * i, kick=(i == 0))
    assert b.kicks[1] == 1 and b.backend.sent == []      # the bh waits for the main loop
    assert run_bottom_halves(b.n) == 3                    # 4 + 4 + 2 frames
    assert b.backend.sent == [frame(60 + i) for i in range(10)]
    bh = b.events("virtio_net_tx_bh")
    assert [e["rescheduled"] for e in bh] == [True, True, False]


# --- notification suppression ------------------------------------------------------------------

def test_event_idx_one_kick_and_one_interrupt_for_a_batch():
    b = Board()
    b.probe(features=BASE | EVENT_IDX)
    assert b.drv[1].event and b.n.vq[1].ring.event_idx
    for i in range(8):                                    # xmit_more: kick only the last
        send(b, frame(), at=BUFS + 0x100 * i, kick=(i == 7))
    assert b.kicks[1] == 1 and len(b.backend.sent) == 8
    notes = [e["notify"] for e in b.events("virtio_should_notify") if e["vq"] == 1]
    assert notes == [True] + [False] * 7                  # used_event 0: only the first
    assert len(b.events("virtio_irq")) == 1
    # avail_event was written when notifications came back on: the next add kicks again
    assert b.ram.read_u16(b.drv[1].layout.avail_event) == 8
    send(b, frame())
    assert b.kicks[1] == 2


def test_deferred_bh_no_kicks_while_notifications_are_off():
    for features, flag in ((BASE, "NO_NOTIFY"), (BASE | EVENT_IDX, "avail_event")):
        b = Board(deferred=True)
        b.probe(features=features)
        for i in range(5):
            send(b, frame(), at=BUFS + 0x100 * i)
        assert b.kicks[1] == 1, flag                      # kick_prepare said no 4 times
        run_bottom_halves(b.n)
        assert len(b.backend.sent) == 5


def test_no_interrupt_flag_suppresses_the_tx_interrupt():
    b = Board()
    b.probe(features=BASE)
    b.drv[1].disable_cb()                                 # VRING_AVAIL_F_NO_INTERRUPT
    assert b.ram.read_u16(b.drv[1].layout.avail) & AvailFlag.NO_INTERRUPT
    send(b, frame())
    assert b.n.isr == 0 and b.line() == 0 and len(b.backend.sent) == 1
    assert b.drv[1].enable_cb() is False                  # a used buffer is already there
    send(b, frame())
    assert b.n.isr == 1 and b.line() == 1


# --- receive ---------------------------------------------------------------------------------

@pytest.mark.parametrize("features, hdr", [
    (BASE, bytes(10)),
    (BASE | MRG, bytes(10) + b"\x01\x00"),                # num_buffers = 1
])
def test_rx_frame_lands_with_the_right_header(features, hdr):
    b = Board()
    b.probe(features=features)
    post_rx(b, 4, 1526)
    f = frame(1514)
    b.backend.put(f, frame(42))
    assert b.m.main_loop_poll() == 2
    got = received(b)
    assert [(h, n) for h, n, _ in got] == [(0, len(hdr) + 1514), (1, len(hdr) + 42)]
    assert got[0][2] == hdr + f and got[1][2] == hdr + frame(42)   # not padded: do_not_pad
    assert b.line() == 1 and b.isr() == 1


def test_rx_mergeable_spreads_a_frame_over_buffers():
    b = Board()
    b.probe(features=BASE | MRG)
    post_rx(b, 8, 512)
    f = frame(1514)
    b.backend.put(f)
    b.m.main_loop_poll()
    got = received(b)
    assert [n for _, n, _ in got] == [512, 512, 502]       # 12 + 1514 = 1526
    data = b"".join(d for _, _, d in got)
    assert struct.unpack_from("<H", data, 10)[0] == 3      # num_buffers, written last
    assert data[12:] == f
    ev = b.events("virtio_net_receive_rcu")[-1]
    assert ev["num_buffers"] == 3 and list(ev["heads"]) == [0, 1, 2]
    flush = [e for e in b.events("virtqueue_flush") if e["vq"] == 0][-1]
    assert flush["count"] == 3                              # one virtqueue_flush for all three


def test_rx_without_mergeable_buffers_drops_a_frame_that_does_not_fit():
    b = Board()
    b.probe(features=BASE)
    post_rx(b, 1, 100)
    b.backend.put(frame(200), frame(80))
    b.m.main_loop_poll()
    got = received(b)
    assert [(h, n) for h, n, _ in got] == [(0, 90)]        # the 200-byte frame was dropped
    assert got[0][2] == bytes(10) + frame(80)
    assert any(e.data.get("dropped") == "too big" for e in b.events("virtio_net_receive_rcu"))


def test_rx_before_driver_ok_waits_then_is_lost_at_driver_ok():
    """QEMU's ``virtio_set_status`` calls ``virtio_net_set_status`` *before* it stores the new
    status, so the flush it does at DRIVER_OK finds ``virtio_net_can_receive`` still false:
    the frame the net layer held is dropped (-1), and the tap is read again."""
    b = Board()
    b.probe(features=BASE, driver_ok=False)
    b.backend.put(frame(60), frame(61))
    b.m.main_loop_poll()                                   # can_receive false: queued
    assert b.n.nic.incoming_queue.nq_count == 1
    assert not b.n.netdev.read_poll                        # tap_read_poll(s, false)
    b.out(R.STATUS, 7, 1)
    assert b.n.nic.incoming_queue.nq_count == 0 and b.n.netdev.read_poll
    assert any("cannot receive" in e.label for e in b.events("virtio_net_receive_rcu"))
    post_rx(b, 2, 1526)
    b.m.main_loop_poll()
    assert [d for _, _, d in received(b)] == [bytes(10) + frame(61)]


def test_rx_without_buffers_waits_for_the_rx_kick():
    b = Board()
    b.probe(features=BASE)
    b.backend.put(frame(60))
    b.m.main_loop_poll()                                   # no buffers: receive returns 0
    assert b.n.nic.incoming_queue.nq_count == 1 and b.n.nic.receive_disabled
    assert b.events("virtio_net_has_buffers")[-1]["ok"] is False
    assert b.n.vq[0].notification                          # RX kicks wanted now
    post_rx(b, 2, 1526)                                    # the kick: virtio_net_handle_rx
    assert b.n.nic.incoming_queue.nq_count == 0
    assert received(b)[0][2] == bytes(10) + frame(60)
    assert "virtio_net_handle_rx" in b.fns()
    assert not b.n.vq[0].notification                      # has_buffers turned them off again


def test_rx_filter_through_the_control_queue():
    b = Board()
    b.probe(features=BASE | CTRL, queues=(0, 1, 2))
    ctrl = b.drv[2]

    def command(cls: int, cmd: int, data: bytes) -> int:
        b.ram.write(0x70000, bytes([cls, cmd]) + data)
        ctrl.add(out=[(0x70000, 2 + len(data))], in_=[(0x70800, 1)])
        ctrl.kick()
        assert ctrl.get_used() is not None
        return b.ram.read_u8(0x70800)

    other = bytes.fromhex("020000000099")
    assert command(vc.NetCtrlClass.RX, vc.NetCtrlRx.PROMISC, b"\x00") == vc.VIRTIO_NET_OK
    table = struct.pack("<I", 0) + struct.pack("<I", 1) + bytes.fromhex("333300000001")
    assert command(vc.NetCtrlClass.MAC, vc.NetCtrlMac.TABLE_SET, table) == vc.VIRTIO_NET_OK
    assert command(vc.NetCtrlClass.VLAN, vc.NetCtrlVlan.ADD, struct.pack("<H", 5)) == 0
    assert command(9, 0, b"") == vc.VIRTIO_NET_ERR
    assert command(vc.NetCtrlClass.MQ, vc.NetCtrlMq.VQ_PAIRS_SET, b"\x01\x00") == 1
    post_rx(b, 8, 1526)
    vlan = MAC + other + b"\x81\x00" + struct.pack(">H", 5) + b"\x88\xb5" + bytes(40)
    vlan7 = MAC + other + b"\x81\x00" + struct.pack(">H", 7) + b"\x88\xb5" + bytes(40)
    to_other = frame(60, dst=other, src=other)
    cases = [frame(60, dst=MAC, src=other), to_other, frame(60, dst=b"\xff" * 6, src=other),
             frame(60, dst=bytes.fromhex("333300000001"), src=other),
             frame(60, dst=bytes.fromhex("333300000002"), src=other), vlan, vlan7]
    b.backend.put(*cases)
    b.m.main_loop_poll()
    got = [d[10:] for _, _, d in received(b)]
    # every VLAN passes: QEMU's reset leaves the table all ones (virtio_net_reset clears it,
    # then virtio_set_features_nocheck(vdev, 0) fills it, CTRL_VLAN not being set yet)
    assert got == [cases[0], cases[2], cases[3], vlan, vlan7]
    assert command(vc.NetCtrlClass.VLAN, vc.NetCtrlVlan.DEL, struct.pack("<H", 7)) == 0
    b.backend.put(vlan, vlan7)
    b.m.main_loop_poll()
    assert [d[10:] for _, _, d in received(b)] == [vlan]
    assert command(vc.NetCtrlClass.RX, vc.NetCtrlRx.NOBCAST, b"\x01") == 0
    b.backend.put(cases[2])
    b.m.main_loop_poll()
    assert received(b) == []


def test_ctrl_element_without_headers_breaks_the_device():
    b = Board()
    b.probe(features=BASE | CTRL, queues=(0, 1, 2))
    b.drv[2].add(out=[(0x70000, 1)], in_=[(0x70800, 1)])   # 1 byte: no class + cmd
    b.drv[2].kick()
    assert [e["message"] for e in b.events("virtio_error")] == ["virtio-net ctrl missing headers"]
    assert b.n.broken


# --- the link ------------------------------------------------------------------------------------

def test_link_down_drops_tx_frames_and_refuses_rx():
    b = Board()
    b.probe(features=BASE)
    post_rx(b, 2, 1526)
    net.qemu_set_link(b.n.nic, False)
    send(b, frame())
    assert b.backend.sent == [] and b.drv[1].get_used() == (0, 0)   # given back unsent
    assert "virtio_net_drop_tx_queue_data" in b.fns()
    b.backend.put(frame())
    b.m.main_loop_poll()
    assert received(b) == []                                        # qemu_deliver: link down


# --- bad TX elements ------------------------------------------------------------------------------

@pytest.mark.parametrize("case, message", [
    ("header only", "virtio-net nothing to send"),
    ("short", "virtio-net header is invalid"),
    ("write only", "virtio-net header not in first element"),
    ("loop", "Looped descriptor"),
])
def test_bad_tx_elements_break_the_device(case, message):
    b = Board()
    b.probe(features=BASE)
    tx = b.drv[1]
    if case == "header only":
        b.ram.write(BUFS, bytes(10))
        tx.add(out=[(BUFS, 10)])
    elif case == "short":
        tx.add(out=[(BUFS, 6)])
    elif case == "write only":
        tx.add(in_=[(BUFS, 64)])
    else:
        head = tx.add(out=[(BUFS, 64), (BUFS + 64, 64)])
        nxt = b.ram.read_u16(tx.layout.desc + 16 * head + 14)
        b.ram.write_u16(tx.layout.desc + 16 * nxt + 12, 1)          # NEXT …
        b.ram.write_u16(tx.layout.desc + 16 * nxt + 14, head)       # … back to the head
    tx.kick()
    assert [e["message"] for e in b.events("virtio_error")] == [message]
    assert b.n.broken and b.backend.sent == [] and b.status() == 7
    send(b, frame(), at=BUFS + 0x1000)
    assert b.backend.sent == []


def test_rx_element_without_writable_buffers_breaks_the_device():
    b = Board()
    b.probe(features=BASE | MRG)
    b.drv[0].add(out=[(0x80000, 64)])              # no room at all: the frame would just wait …
    b.drv[0].add(in_=[(0x81000, 1526)])            # … with room further on, the pop finds it
    b.drv[0].kick()
    b.backend.put(frame())
    b.m.main_loop_poll()
    messages = [e["message"] for e in b.events("virtio_error")]
    assert messages == ["virtio-net receive queue contains no in buffers"]
    assert b.n.broken and b.drv[0].get_used() is None


# --- with the Python host stack ---------------------------------------------------------------------

def test_arp_through_the_loopback_host():
    host = LoopbackNet()
    b = Board(backend=host)
    b.probe(features=BASE | MRG | EVENT_IDX)
    post_rx(b, 4, 1526)
    req = nf.arp_request(src_mac=MAC)
    send(b, req)
    assert host.sent == 1
    b.m.main_loop_poll()
    (_, length, data), = received(b)
    reply = nf.parse(data[12:])
    assert data[10:12] == b"\x01\x00" and reply.kind == "ARP reply"
    assert reply.net.tha == MAC
    host.close()


# --- properties and sources ------------------------------------------------------------------------

def test_properties_by_qemus_names():
    b = Board(props={"event_idx": False, "mrg_rxbuf": False, "ctrl_vq": False})
    host = b.inp(R.HOST_FEATURES, 4)
    assert not host & (EVENT_IDX | MRG | 1 << NF.CTRL_VQ)
    with pytest.raises(VbookError, match="Property 'virtio-net-pci.nope' not found"):
        VirtIONetPCI(props={"nope": 1})
    with pytest.raises(VbookError, match="mq=on is not modelled"):
        VirtIONetPCI(props={"mq": True})
    with pytest.raises(VbookError, match="Invalid rx_queue_size"):
        Board(props={"rx_queue_size": 100})
    b = Board(props={"rx_queue_size": 1024})
    b.out(R.QUEUE_SEL, 0, 2)
    assert b.inp(R.QUEUE_NUM, 2) == 1024


def test_net_properties_and_constants_match_qemu_source():
    src = git_show(QEMU_9, "HEAD", "hw/net/virtio-net.c")
    props = dict(re.findall(r'DEFINE_PROP_BIT64\("(\w+)", VirtIONet, host_features,\s*'
                            r'VIRTIO_NET_F_\w+, (true|false)\)', src))
    assert {k: v == "true" for k, v in props.items()} == \
        {k: on for k, (_, on) in VIRTIO_NET_PROPERTIES.items()}
    for name, (bit, _) in VIRTIO_NET_PROPERTIES.items():
        m = re.search(rf'DEFINE_PROP_BIT64\("{name}", VirtIONet, host_features,\s*'
                      r'VIRTIO_NET_F_(\w+),', src)
        assert m and NF[m.group(1)] == bit, name
    realize = function_body(src, "static void virtio_net_device_realize(")
    assert "virtio_add_queue(vdev, 64, virtio_net_handle_ctrl)" in realize
    assert "n->nic->ncs[i].do_not_pad = true;" in realize
    flush = function_body(src, "static int32_t virtio_net_flush_tx(VirtIONetQueue *q)\n{")
    for message in ("virtio-net header not in first element", "virtio-net header is invalid",
                    "virtio-net nothing to send"):
        assert message in flush
    h = git_show(QEMU_9, "HEAD", "include/hw/virtio/virtio-net.h")
    assert re.search(r"#define TX_BURST (\d+)", h).group(1) == str(vc.TX_BURST)
    assert re.search(r"#define MAC_TABLE_ENTRIES\s+(\d+)", h).group(1) == str(vc.MAC_TABLE_ENTRIES)
    for name in ("VIRTIO_NET_RX_QUEUE_DEFAULT_SIZE", "VIRTIO_NET_TX_QUEUE_DEFAULT_SIZE"):
        assert re.search(rf"#define {name} (\d+)", src).group(1) == str(getattr(vc, name))


# --- property: random frames and buffer layouts round-trip ----------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(14, 1514), min_size=1, max_size=6),
       mrg=st.booleans(), event=st.booleans(), split=st.booleans(),
       bufsize=st.sampled_from([64, 100, 256, 1000, 1600]), data=st.data())
def test_random_frames_round_trip(sizes, mrg, event, split, bufsize, data):
    b = Board()
    b.probe(features=BASE | (MRG if mrg else 0) | (EVENT_IDX if event else 0))
    frames = [bytes(data.draw(st.binary(min_size=n, max_size=n))) for n in sizes]
    for i, f in enumerate(frames):
        send(b, f, split=split, at=BUFS + 0x800 * i)
    assert b.backend.sent == frames
    hl = 12 if mrg else 10
    if not mrg:
        bufsize = 1600                                     # big enough for one element
    hl_ = 12 if mrg else 10
    post_rx(b, sum(-(-(n + hl_) // bufsize) for n in sizes), bufsize)
    b.backend.put(*frames)
    b.m.main_loop_poll()
    got = received(b)
    out, i = [], 0
    while i < len(got):                                    # virtnet_receive_mergeable
        first = got[i][2]
        count = struct.unpack_from("<H", first, 10)[0] if mrg else 1
        chunk = b"".join(d for _, _, d in got[i:i + count])
        out.append(chunk[hl:])
        i += count
    assert out == frames
    assert not b.n.broken


# --- a real guest ---------------------------------------------------------------------------------

LOAD_ADDR = 0x1000
IOBASE = 0xC000
RING = 0x4000
PAYLOAD = b"vbook: a virtio-net frame from a real guest\n"
GUEST_FRAME = b"\xff" * 6 + MAC + b"\x88\xb5" + PAYLOAD

LISTING = f"""\
# virtio_net_tx - real mode: find virtio-net on PCI, map its legacy BAR0, set up the
# transmit queue as Linux's virtio_pci_legacy.c does, send one frame, read ISR.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ CONFIG_ADDRESS, 0xcf8          # PCI config mechanism #1 (i440FX host bridge)
        .equ CONFIG_DATA, 0xcfc
        .equ TESTDEV_PORT, 0xe0             # pc-testdev's latch: where the guest shows values
        .equ VIRTIO_NET_ID, 0x10001af4      # config dword 0: device 0x1000 << 16 | vendor 0x1af4
        .equ IOBASE, {IOBASE:#x}                # where this guest puts the 32 legacy ports
        .equ HOST_FEATURES, IOBASE + 0      # VIRTIO_PCI_* (linux/virtio_pci.h)
        .equ GUEST_FEATURES, IOBASE + 4
        .equ QUEUE_PFN, IOBASE + 8
        .equ QUEUE_NUM, IOBASE + 12
        .equ QUEUE_SEL, IOBASE + 14
        .equ QUEUE_NOTIFY, IOBASE + 16
        .equ STATUS, IOBASE + 18
        .equ ISR, IOBASE + 19
        .equ F_MAC, 1 << 5                  # VIRTIO_NET_F_MAC: the only feature this guest takes
        .equ RING, {RING:#x}                   # the TX ring: 256 descriptors, then avail, used
        .equ AVAIL, RING + 16 * 256         # vring_init: avail after the descriptor table
        .equ USED, RING + 0x2000            # ... and used at the next 4 KiB boundary
_start:
        xor   ax, ax
        mov   ds, ax
        mov   ebx, 0x80000000               # enable | bus 0 | device 0 | function 0 | reg 0
probe:
        mov   eax, ebx
        mov   dx, CONFIG_ADDRESS
        out   dx, eax
        mov   dx, CONFIG_DATA
        in    eax, dx                       # vendor and device ID (all ones: nobody there)
        cmp   eax, VIRTIO_NET_ID
        je    found
        add   ebx, 1 << 11                  # next device number
        cmp   ebx, 0x80000000 + (32 << 11)
        jb    probe
        hlt                                 # no virtio-net on bus 0
found:
        mov   eax, ebx
        or    al, 0x10                      # PCI_BASE_ADDRESS_0
        mov   dx, CONFIG_ADDRESS
        out   dx, eax
        mov   dx, CONFIG_DATA
        mov   eax, 0xffffffff
        out   dx, eax                       # BAR sizing: write all ones ...
        in    eax, dx                       # ... read back the size mask
        mov   dx, TESTDEV_PORT
        out   dx, eax                       # show it: 0xffffffe1 (32 I/O ports)
        mov   dx, CONFIG_DATA
        mov   eax, IOBASE
        out   dx, eax                       # BAR0 = IOBASE
        mov   eax, ebx
        or    al, 0x04                      # PCI_COMMAND
        mov   dx, CONFIG_ADDRESS
        out   dx, eax
        mov   dx, CONFIG_DATA
        mov   ax, 0x0005                    # IO | MASTER
        out   dx, ax
        mov   dx, STATUS
        xor   al, al
        out   dx, al                        # reset
        mov   al, 1
        out   dx, al                        # ACKNOWLEDGE
        mov   al, 3
        out   dx, al                        # DRIVER
        mov   dx, HOST_FEATURES
        in    eax, dx
        mov   dx, TESTDEV_PORT
        out   dx, eax                       # show what the device offers
        mov   dx, GUEST_FEATURES
        mov   eax, F_MAC
        out   dx, eax                       # no MRG_RXBUF: the header is 10 bytes
        mov   dx, QUEUE_SEL
        mov   ax, 1                         # queue 1: transmitq
        out   dx, ax
        mov   dx, QUEUE_NUM
        in    ax, dx
        mov   dx, TESTDEV_PORT
        out   dx, ax                        # show its size: 256
        mov   dword ptr [RING], hdr - _start + LOAD_ADDR       # desc[0].addr (low)
        mov   dword ptr [RING + 4], 0                          # desc[0].addr (high)
        mov   dword ptr [RING + 8], frame_end - hdr            # desc[0].len: header + frame
        mov   dword ptr [RING + 12], 0                         # flags 0 (device-readable), next 0
        mov   dx, QUEUE_PFN
        mov   eax, RING >> 12
        out   dx, eax                       # activate the queue: PFN of the ring
        mov   word ptr [AVAIL + 4], 0       # avail->ring[0] = head 0
        mov   word ptr [AVAIL + 2], 1       # avail->idx = 1: published
        mov   dx, STATUS
        mov   al, 7
        out   dx, al                        # DRIVER_OK
        mov   dx, QUEUE_NOTIFY
        mov   ax, 1
        out   dx, ax                        # the kick: virtio_queue_notify(vdev, 1)
wait:
        mov   ax, word ptr [USED + 2]
        cmp   ax, 1
        jne   wait                          # poll used->idx (no interrupt controller here)
        mov   dx, ISR
        in    al, dx                        # read-to-clear: 1, and INTx goes down
        movzx eax, al
        mov   dx, TESTDEV_PORT
        out   dx, eax
        mov   eax, dword ptr [USED + 4]     # used->ring[0].id
        out   dx, eax
        hlt
        .balign 16
hdr:
        .byte 0, 0, 0, 0, 0, 0, 0, 0, 0, 0          # struct virtio_net_hdr: nothing to offload
frame:
        .byte 0xff, 0xff, 0xff, 0xff, 0xff, 0xff    # destination: broadcast
        .byte 0x52, 0x54, 0x00, 0x12, 0x34, 0x56    # source: QEMU's default MAC
        .byte 0x88, 0xb5                            # EtherType: local experimental
        .ascii {json.dumps(PAYLOAD.decode())}
frame_end:
"""


# CODE is what GNU as makes of LISTING (test_the_guest_code_is_its_listing checks it)
CODE = bytes.fromhex(
    "31c08ed866bb000000806689d8baf80c"
    "66efbafc0c66ed663df41a0010741166"
    "81c3000800006681fb0000018072dbf4"
    "6689d80c10baf80c66efbafc0c66b8ff"
    "ffffff66ef66edbae00066efbafc0c66"
    "b800c0000066ef6689d80c04baf80c66"
    "efbafc0cb80500efba12c030c0eeb001"
    "eeb003eeba00c066edbae00066efba04"
    "c066b82000000066efba0ec0b80100ef"
    "ba0cc0edbae000ef66c7060040001100"
    "0066c70604400000000066c706084044"
    "00000066c7060c4000000000ba08c066"
    "b80400000066efc70604500000c70602"
    "500100ba12c0b007eeba10c0b80100ef"
    "a1026083f80175f8ba13c0ec660fb6c0"
    "bae00066ef66a1046066eff48db40000"
    "00000000000000000000ffffffffffff"
    "52540012345688b576626f6f6b3a2061"
    "2076697274696f2d6e6574206672616d"
    "652066726f6d2061207265616c206775"
    "6573740a"
)

GUEST = Guest(name="virtio_net_tx", mode=16, code=CODE, listing=LISTING,
              description="finds virtio-net on PCI, maps its legacy BAR0, sets up the TX queue, "
                          "sends one frame, reads ISR",
              load_addr=LOAD_ADDR, mem_size=0x10000, stack_top=0x1000)


def test_the_guest_code_is_its_listing():
    why = tools_missing()
    if why:
        pytest.skip(why)
    assert assemble(LISTING) == CODE


def _run(backend: str):
    why = available()[backend]
    if why:
        pytest.skip(f"{backend} backend: {why}")
    be = MemoryBackend()
    m = Machine()
    add_virtio_net(m, be)
    return run_loop.run(GUEST, backend, machine=m), be, m


@pytest.mark.parametrize("backend", ["unicorn", "kvm"])
def test_a_real_guest_sends_a_frame_through_virtio_net(backend):
    r, be, m = _run(backend)
    assert r.end == run_loop.End.HLT, r.detail
    assert be.sent == [GUEST_FRAME]                          # byte for byte, header stripped
    shown = [x.io.data for x in r.exits if x.io is not None and x.io.port == 0xE0]
    assert shown == [(0xFFFFFFE1).to_bytes(4, "little"), (0x79BF8064).to_bytes(4, "little"),
                     (256).to_bytes(2, "little"), (1).to_bytes(4, "little"), bytes(4)]
    assert m.ram is None                                     # the vCPU's RAM was only lent
    assert m.pirq == [0, 0, 0, 0]                            # raised by TX, lowered by ISR
    irq = [ev for ev in r.trace.events if ev.data.get("fn") == "piix_set_pci_irq"]
    assert [ev["level"] for ev in irq] == [1, 0]
    assert irq[0]["thread"] == "main"                        # virtio_notify from the TX bh
    fns = [ev.data.get("fn") for ev in r.trace.events]
    i = fns.index("virtio_net_handle_tx_bh")
    assert i < fns.index("aio_bh_poll", i) < fns.index("virtqueue_pop", i) \
        < fns.index("qemu_sendv_packet_async", i) < fns.index("tap_receive_iov", i) \
        < fns.index("virtqueue_flush", i) < fns.index("virtio_irq", i)
    assert r.handlers.count("virtio_pci_config_write") == 8   # STATUS ×4, features, SEL, PFN, NOTIFY
    assert r.handlers.count("virtio_pci_config_read") == 3    # HOST_FEATURES, QUEUE_NUM, ISR


def test_the_guest_gives_the_same_exits_on_unicorn_and_kvm():
    ru, bu, _ = _run("unicorn")
    rk, bk, _ = _run("kvm")
    assert [str(x) for x in ru.exits] == [str(x) for x in rk.exits]
    assert bu.sent == bk.sent == [GUEST_FRAME]
    assert ru.handlers == rk.handlers
