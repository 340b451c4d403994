"""PacketFlowView and the e1000-vs-virtio chart: lanes, journeys, counters — and the page.

The traces are real: the e1000 and virtio-net guests of tests/test_e1000.py and
tests/test_virtio_net.py on unicorn (TX through the vCPU thread, and through
virtio-net's bottom half on the main loop), and boards driven from Python for
RX (a frame the e1000 writes into its ring, one it must queue until RCTL.EN,
virtio-net with a vnet-header tap answered by the Python host stack). Every
expected count is worked out here from the trace itself, not from the widget.
The browser tests open the static page in Debian's chromium (skipped without it).
"""

from __future__ import annotations

import json
import re

import matplotlib
import pytest
from _browser import FWD, NEEDS_BROWSER, page_opener
from test_e1000 import GUEST as E1000_GUEST
from test_e1000 import GUEST_BAR0, Nic
from test_e1000 import GUEST_FRAME as E1000_FRAME
from test_e1000 import frame as e1000_frame
from test_virtio_net import BASE, MRG, post_rx, received, send
from test_virtio_net import GUEST as VIRTIO_GUEST
from test_virtio_net import GUEST_FRAME as VIRTIO_FRAME
from test_virtio_pci import IOBASE, Board

from vbook.backends import available
from vbook.backends.loopback_net import LoopbackNet
from vbook.devices.e1000 import Icr, MacReg, Rctl, RxdStat
from vbook.devices.machine import Machine
from vbook.devices.net_client import MemoryBackend
from vbook.devices.virtio_net import add_virtio_net
from vbook.errors import TraceError, VbookError
from vbook.models import net_frames as nf
from vbook.models import run_loop
from vbook.models.kvm_api import ExitReason
from vbook.trace import Event, Trace
from vbook.widgets import PacketFlowView, packet_flow, show_packet_flow, static_html
from vbook.widgets.net_charts import (
    _Row,
    exits_per_packet_chart,
    exits_table_html,
    exits_table_text,
)
from vbook.widgets.packet_flow import LANE_IDS, describe_frame, lane_of

matplotlib.use("Agg")

TDT = 0x3818
QUEUE_NOTIFY = 16


class Echo(MemoryBackend):
    """A host that sends every frame straight back, source and destination swapped."""

    def send(self, frame: bytes) -> int:
        n = super().send(frame)
        self.put(frame[6:12] + frame[0:6] + frame[12:])
        return n


def _unicorn() -> None:
    why = available()["unicorn"]
    if why:
        pytest.skip(f"unicorn backend: {why}")


@pytest.fixture(scope="module")
def e1000_run():
    _unicorn()
    return run_loop.run(E1000_GUEST, "unicorn", machine=Machine(nics=[MemoryBackend()]))


@pytest.fixture(scope="module")
def virtio_run():
    _unicorn()
    m = Machine()
    add_virtio_net(m, MemoryBackend())
    return run_loop.run(VIRTIO_GUEST, "unicorn", machine=m)


@pytest.fixture(scope="module")
def e1000_rx():
    """An e1000 driven from Python: an RX ring, then two frames from the tap (one short)."""
    n = Nic()
    n.rx_ring(8)
    n.w(MacReg.IMS, Icr.RXT0)
    frames = [e1000_frame(b"a" * 100), e1000_frame(b"in")]
    assert n.deliver(*frames) == 2
    done = sum(1 for i in range(2) if n.rxd(i).status & RxdStat.DD)
    return n.rec.freeze(), frames, done


@pytest.fixture(scope="module")
def virtio_loopback():
    """virtio-net (mergeable RX buffers) on a vnet-header tap whose host answers an NS."""
    lo = LoopbackNet(vnet_hdr=True)
    b = Board(backend=lo)
    b.probe(features=BASE | MRG)
    post_rx(b, 2, 2048)
    send(b, nf.neighbour_solicitation())
    assert b.m.main_loop_poll() == 1
    got = received(b)
    return b.rec.freeze(), got, b.n.guest_hdr_len


# --- independent counts ----------------------------------------------------------------------------

def upto(trace: Trace, step: int, pred) -> int:
    return sum(1 for e in trace.events[: step + 1] if pred(e))


def expected(trace: Trace, step: int) -> dict[str, int]:
    """The counters at ``step``, counted straight from the events."""
    evs = trace.events[: step + 1]
    exits = [e for e in evs if e.actor == "kvm" and e.kind == "exit"]
    tap = sum(e["len"] for e in evs if e.actor == "host" and e.data.get("fn") in
              ("tap_receive_iov", "tap_send"))
    # packet buffers, not descriptors: what the DMA event says it moved
    dma = sum(e["len"] for e in evs if e.actor == "qemu" and e.kind == "dma"
              and e["what"] in ("TX buffer", "RX buffer"))
    rx = sum(sum(e["lens"]) for e in evs if e.data.get("fn") == "virtio_net_receive_rcu")
    return {
        "vm_exits": len(exits), "user_exits": len(exits),
        "pio_exits": sum(1 for e in exits if e["exit_reason"] == ExitReason.IO),
        "mmio_exits": sum(1 for e in exits if e["exit_reason"] == ExitReason.MMIO),
        "tx_frames": sum(1 for e in evs if e.actor == "host" and e["fn"] == "tap_receive_iov"),
        "tap_bytes": tap, "bytes_copied": dma + rx, "bytes_moved": tap + dma + rx,
    }


def index(trace: Trace, fn: str, start: int = 0) -> int:
    return next(i for i, e in enumerate(trace.events) if i >= start and e.data.get("fn") == fn)


# --- lanes -----------------------------------------------------------------------------------------

def test_lanes_of_a_real_e1000_run(e1000_run):
    t = e1000_run.trace
    v = packet_flow(e1000_run)
    lanes = v["lane"]
    assert len(lanes) == len(t) and set(lanes) <= set(LANE_IDS)
    assert [lane["id"] for lane in v["lanes"]] == list(LANE_IDS)
    assert v["lanes"][2]["sub"] == "thread CPU 0/KVM"
    for i, e in enumerate(t.events):
        if e.actor == "guest":
            assert lanes[i] == "guest"
        elif e.actor == "kvm":
            assert lanes[i] == "kvm"
        elif e.actor == "host":
            assert lanes[i] == "host"
    # the e1000 does everything on the vCPU thread, inside the MMIO exit of the TDT write
    for fn in ("start_xmit", "pci_dma_read", "e1000_send_packet", "qemu_send_packet",
               "kvm_handle_io", "e1000_mmio_write"):
        assert lanes[index(t, fn)] == "vcpu", fn
    assert lanes[index(t, "tap_receive_iov")] == "host"
    assert "main" not in lanes


def test_lanes_of_a_real_virtio_run_use_the_main_loop(virtio_run):
    t = virtio_run.trace
    lanes = packet_flow(t)["lane"]
    for fn in ("aio_bh_poll", "virtqueue_pop", "virtio_net_flush_tx", "qemu_sendv_packet_async",
               "virtqueue_flush", "virtio_irq"):
        i = index(t, fn)
        assert t[i]["thread"] == "main" and lanes[i] == "main", fn
    for fn in ("virtio_queue_notify", "qemu_bh_schedule", "virtio_pci_config_write"):
        assert lanes[index(t, fn)] == "vcpu", fn
    tap = index(t, "tap_receive_iov")
    assert lanes[tap] == "host" and t[tap]["thread"] == "main"
    # every qemu/device event is on the lane its thread says
    for i, e in enumerate(t.events):
        if e.actor in ("qemu", "device"):
            assert lanes[i] == ("main" if e.data.get("thread") == "main" else "vcpu")
    assert lane_of(t[tap].to_dict()) == "host"


# --- journeys --------------------------------------------------------------------------------------

def test_e1000_tx_journey_from_the_tdt_write_to_the_tap(e1000_run):
    t = e1000_run.trace
    (j,) = packet_flow(t)["journeys"]
    assert (j["id"], j["dir"], j["fate"]) == ("tx-1", "tx", "sent")
    door = t[j["doorbell"]]
    assert door.kind == "exit" and door["exit_reason"] == ExitReason.MMIO
    assert door["phys_addr"] == GUEST_BAR0 + TDT and door["is_write"]
    assert t[j["start"]].actor == "guest" and j["start"] == j["doorbell"] - 1
    assert j["end"] == j["tap"] == index(t, "tap_receive_iov")
    assert j["events"] == list(range(j["start"], j["end"] + 1))
    assert j["frame"] == {"text": nf.describe(E1000_FRAME), "len": len(E1000_FRAME),
                          "hex": E1000_FRAME.hex(), "hdr": 0}
    assert j["title"] == f"TX 1, guest → host: {nf.describe(E1000_FRAME)}"


def test_virtio_tx_journey_goes_through_the_bottom_half(virtio_run):
    t = virtio_run.trace
    v = packet_flow(t)
    (j,) = v["journeys"]
    door = t[j["doorbell"]]
    assert door["exit_reason"] == ExitReason.IO and door["port"] == IOBASE + QUEUE_NOTIFY
    assert t[j["handoff"]]["fn"] == "qemu_bh_schedule"
    assert t[j["handoff"]]["bh"] == "virtio_net_tx_bh"
    fns = [t[i].data.get("fn") for i in j["events"]]
    assert fns.index("qemu_bh_schedule") < fns.index("aio_bh_poll") < fns.index("tap_receive_iov")
    # the lanes in the order the frame meets them
    seen = list(dict.fromkeys(v["lane"][i] for i in j["events"]))
    assert seen == ["guest", "kvm", "vcpu", "main", "host"]
    assert j["frame"]["text"] == nf.describe(VIRTIO_FRAME)
    # the virtio header the guest put in front never reaches the tap
    assert t[j["tap"]]["frame"] == VIRTIO_FRAME.hex()


def test_two_frames_from_one_doorbell_share_it_not_their_chains():
    n = Nic()
    n.tx_ring()
    frames = [e1000_frame(b"one" * 20), e1000_frame(b"two" * 30)]
    for i, f in enumerate(frames):
        n.ram.write(0x4000 + 0x800 * i, f)
        n.txd(i, 0x4000 + 0x800 * i, len(f))
    n.w(MacReg.TDT, 2)                         # one register write sends both
    t = n.rec.freeze()
    a, b = packet_flow(t)["journeys"]
    assert n.backend.sent == frames
    assert [t[j["tap"]]["frame"] for j in (a, b)] == [f.hex() for f in frames]
    assert a["start"] == b["start"] and a["doorbell"] is None      # a board driven from Python
    head = [i for i in a["events"] if i <= index(t, "start_xmit", a["start"])]
    assert head and head == [i for i in b["events"] if i in head]
    assert max(a["events"]) == a["tap"] < min(i for i in b["events"] if i not in head)
    assert [j["frame"]["text"] for j in (a, b)] == [nf.describe(f) for f in frames]


def test_rx_journeys_end_where_the_e1000_writes_the_descriptor(e1000_rx):
    t, frames, done = e1000_rx
    v = packet_flow(t)
    rx = [j for j in v["journeys"] if j["dir"] == "rx"]
    assert len(rx) == len(frames) == done == 2
    for j, f in zip(rx, frames, strict=True):
        assert t[j["tap"]]["fn"] == "tap_send" and bytes.fromhex(t[j["tap"]]["frame"]) == f
        d = t[j["delivered"]]
        assert d["fn"] == "e1000_receive_iov"
        assert d["status"] & (RxdStat.DD | RxdStat.EOP) == RxdStat.DD | RxdStat.EOP
        assert j["fate"] == "delivered" and not j["dropped"]
        assert {v["lane"][i] for i in j["events"]} == {"host", "main"}
        assert j["frame"]["text"] == nf.describe(f)
    # the short frame is padded on its way in: its journey shows eth_pad_short_frame
    assert "eth_pad_short_frame" in [t[i].data.get("fn") for i in rx[1]["events"]]
    assert v["counters"]["rx_frames"] == [[rx[0]["delivered"], 1], [rx[1]["delivered"], 2]]


def test_a_queued_frame_is_followed_to_its_late_delivery():
    n = Nic()
    n.rx_ring(8, rctl=0)                     # receive off: e1000_can_receive says no
    n.deliver(e1000_frame(b"q" * 50))
    n.w(MacReg.RCTL, Rctl.EN | Rctl.BAM)     # set_rx_control → qemu_flush_queued_packets
    t = n.rec.freeze()
    (j,) = packet_flow(t)["journeys"]
    fns = [t[i].data.get("fn") for i in j["events"]]
    assert fns[:2] == ["tap_send", "qemu_net_queue_append"]
    assert "qemu_flush_queued_packets" in fns and j["fate"] == "delivered"
    lanes = packet_flow(t)["lane"]
    assert lanes[j["delivered"]] == "vcpu"   # delivered from the RCTL write, on the vCPU thread
    assert n.rxd(0).status & RxdStat.DD


def test_a_real_guest_that_never_enables_rx_leaves_the_answer_queued():
    _unicorn()
    m = Machine(nics=[Echo()])
    r = run_loop.run(E1000_GUEST, "unicorn", machine=m)
    view = PacketFlowView(r)
    tx, rx = view.journeys
    assert (tx["dir"], rx["dir"]) == ("tx", "rx") and rx["fate"] == "queued"
    assert rx["delivered"] is None and "cannot receive now" in rx["why"]
    assert rx["title"].endswith("(still in QEMU's queue)")
    # the host answered right after the tap write, in the main loop's turn after that exit
    assert tx["tap"] < rx["tap"] and view.lanes()[rx["tap"] + 1] == "main"
    assert view.counters_at(len(r.trace) - 1)["rx_frames"] == 0
    assert repr(view).endswith("1 frame to the host, 0 to the guest)")


def test_vnet_header_frames_are_decoded_behind_the_header(virtio_loopback):
    t, got, hdr_len = virtio_loopback
    v = packet_flow(t)
    tx, rx = v["journeys"]
    assert hdr_len == 12 and len(got) == 1
    assert tx["frame"]["hdr"] == rx["frame"]["hdr"] == 12
    assert tx["frame"]["text"] == nf.describe(nf.neighbour_solicitation())
    answer = got[0][2][hdr_len:]
    assert rx["frame"]["text"] == nf.describe(answer)
    assert rx["frame"]["text"].startswith("ICMPv6 neighbour advertisement")
    host = v["frames"][str(rx["tap"])]
    assert host["hdr"] == 12 and host["len"] == 12 + len(answer) and host["text"] == nf.describe(answer)
    # virtqueue_flush on the receive queue: the guest can see it
    d = t[rx["delivered"]]
    assert (d.kind, d["vq_name"]) == ("flush", "rx")
    assert v["counters"]["rx_frames"] == [[rx["delivered"], 1]]


def _header_inside(t: Trace) -> Trace:
    """The same trace with each vnet header inside its event's ``frame`` (no ``vnet_hdr``),
    as QEMU's own buffers hold it: the view must not depend on how the header is recorded."""
    events = []
    for e in t.events:
        d = e.to_dict()
        h = d["data"].pop("vnet_hdr", None)
        if h is not None:
            d["data"]["frame"] = h + d["data"]["frame"]
        events.append(Event.from_dict(d))
    return Trace(events, t.meta)


@pytest.mark.parametrize("shape", ["as recorded", "header inside the frame"])
def test_vnet_header_is_named_however_it_is_recorded(virtio_loopback, shape):
    t, got, hdr_len = virtio_loopback
    if shape != "as recorded":
        t = _header_inside(t)
        assert not any("vnet_hdr" in e.data for e in t.events)
    v = packet_flow(t)
    tx, rx = v["journeys"]
    ns, na = nf.neighbour_solicitation(), got[0][2][hdr_len:]
    for j, f in ((tx, ns), (rx, na)):
        assert j["frame"] == {"text": nf.describe(f), "len": len(f), "hex": f[:64].hex(), "hdr": 12}
        for i in j["events"]:                   # every event of the journey that carries it
            fr = v["frames"].get(str(i))
            if fr is not None:
                assert fr["text"] == nf.describe(f) and fr["hex"] == f[:64].hex(), i
                assert fr["len"] - fr["hdr"] == len(f)
    # QEMU's buffer between virtio-net and the tap holds the header; the NIC's own view not
    sendv = index(t, "qemu_sendv_packet_async")
    flush = index(t, "virtio_net_flush_tx")
    assert v["frames"][str(sendv)]["hdr"] == 12 and v["frames"][str(flush)]["hdr"] == 0


def test_describe_frame_never_raises():
    assert describe_frame(b"\x01\x02") == "2 bytes, not an Ethernet frame this book decodes"
    assert describe_frame(E1000_FRAME) == nf.describe(E1000_FRAME)


@pytest.mark.parametrize("nic, event_idx", [("e1000", True), ("virtio-net", False),
                                            ("virtio-net", True)])
def test_a_driver_guest_pinging_the_host_agrees_with_net_run(nic, event_idx):
    """The driver guests of chapter 08 (vbook.net_run): four frames out, four answers in."""
    _unicorn()
    net_run = pytest.importorskip("vbook.net_run")
    run = net_run.run_ping(nic, "unicorn", "loopback", event_idx=event_idx)
    assert run.answered, run
    t = run.trace
    view = PacketFlowView(run.result)
    tx = [j for j in view.journeys if j["dir"] == "tx"]
    rx = [j for j in view.journeys if j["dir"] == "rx"]
    assert [j["frame"]["text"] for j in tx] == [nf.describe(f) for f in run.sent]
    assert [j["frame"]["text"] for j in rx] == [nf.describe(f) for f in run.delivered]
    assert tx[0]["frame"]["text"].startswith("ICMPv6 neighbour solicitation")
    assert all(j["fate"] == "delivered" for j in rx)
    lanes = view.lanes()
    for j in tx:
        door = t[j["doorbell"]]
        assert door.kind == "exit" and t[j["start"]].actor == "guest"
        assert j["handoff"] is None if nic == "e1000" else t[j["handoff"]]["fn"] == "qemu_bh_schedule"
        assert ("main" in {lanes[i] for i in j["events"]}) == (nic != "e1000")
    for j in rx:     # from the tap read to the guest running again with the frame in its ring
        assert lanes[j["start"]] == "host" and t[j["end"]].actor == "guest"
        assert j["start"] < j["delivered"] < j["end"] and lanes[j["delivered"]] == "main"
    end = view.counters_at(len(t) - 1)
    c = run.counts
    assert end["tx_frames"] + end["rx_frames"] == c.packets == 8
    assert (end["bytes_copied"], end["tap_bytes"]) == (c.bytes_copied, c.tap_bytes)
    assert end == {**end, **expected(t, len(t) - 1)}


# --- counters --------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["e1000", "virtio"])
def test_counters_at_every_step_match_the_trace(which, e1000_run, virtio_run):
    r = e1000_run if which == "e1000" else virtio_run
    t = r.trace
    view = PacketFlowView(r)
    for step in range(len(t)):
        got = view.counters_at(step)
        want = expected(t, step)
        assert {k: got[k] for k in want} == want, step
        assert got["rx_frames"] == 0
    end = view.counters_at(len(t) - 1)
    assert end["vm_exits"] == len(r.exits) + sum(1 for h in r.handled if h.exit is None)
    assert end["tx_frames"] == 1
    if which == "e1000":   # pci_dma_read of the frame into QEMU's buffer, then the tap
        assert (end["bytes_copied"], end["tap_bytes"]) == (len(E1000_FRAME), len(E1000_FRAME))
        assert end["mmio_exits"] == upto(t, len(t) - 1, lambda e: e.kind == "exit"
                                         and e.label == "KVM_EXIT_MMIO") == 10
    else:                  # virtio-net: QEMU hands the guest's buffer to the tap, no DMA copy
        assert (end["bytes_copied"], end["tap_bytes"]) == (0, len(VIRTIO_FRAME))
        assert end["mmio_exits"] == 0


def test_counters_at_checks_its_step(e1000_run):
    view = PacketFlowView(e1000_run)
    with pytest.raises(TraceError):
        view.counters_at(len(e1000_run.trace))


# --- the widget ------------------------------------------------------------------------------------

def test_repr_defaults_and_arguments(e1000_run, virtio_run):
    v = show_packet_flow(e1000_run)
    assert repr(v) == ("PacketFlowView(trace='e1000_tx on unicorn (QEMU 9.2.4 model)', "
                       f"{len(e1000_run.trace)} events, 24 exits, 1 frame to the host, "
                       "0 to the guest)")
    assert v.panes == "flow" and v.step == 0 and v.view["start"] == {
        "by": "event", "journey": None, "only": False}
    j = PacketFlowView(virtio_run, journey="tx-1", only=True)
    assert j.step == j.journeys[0]["start"] and j.view["start"]["only"] is True
    assert PacketFlowView(virtio_run, journey=0, step=3).step == 3
    assert PacketFlowView(virtio_run, by="exit").view["start"]["by"] == "exit"
    for bad in ({"by": "frame"}, {"journey": "rx-1"}, {"journey": 5}, {"only": True}):
        with pytest.raises(VbookError):
            PacketFlowView(virtio_run, **bad)


def test_the_view_travels_in_the_trace_and_is_worked_out_again(e1000_run, virtio_run):
    v = PacketFlowView(e1000_run)
    t = v.get_trace()
    assert json.loads(t.to_json())["meta"]["packet_flow"]["exits"] == v.view["exits"]
    again = PacketFlowView(t)              # a trace that already has a view: computed afresh
    assert again.view == v.view and len(again.trace["events"]) == len(e1000_run.trace)
    v.set_trace(virtio_run)
    assert v.step == 0 and v.view["journeys"][0]["handoff"] is not None
    assert v.view == {**packet_flow(virtio_run), "start": v.view["start"]}


def test_static_html_is_self_contained(virtio_run):
    page = PacketFlowView(virtio_run).to_html(full_page=True)
    # the only http(s) string: the SVG namespace name (an identifier, never fetched)
    assert not re.search(r"https?://", page.replace("http://www.w3.org/2000/svg", ""))
    assert "PANES.flow = flowPane" in page and "packet_flow" in page
    snippet = static_html(PacketFlowView(virtio_run), full_page=False)
    assert snippet.startswith('<div class="vbook-static">')


# --- the page, in chromium ---------------------------------------------------------------------------

def _text(page, sel: str) -> str:
    return page.inner_text(sel).strip()


def _counters(page) -> dict[str, int]:
    return {k: int(v) for k, v in page.evaluate("""() => Object.fromEntries(
        [...document.querySelectorAll('.vp-pf-val')].map(td => [td.dataset.key, td.textContent]))""").items()}


def _step(page) -> int:
    return int(page.get_attribute(".vbook-player", "data-step"))


@pytest.fixture
def open_flow(tmp_path):
    with page_opener(tmp_path, ".vbook-player .vp-pf-counters", name="flow.html",
                     viewport=(1200, 900)) as (open_page, problems):
        yield open_page, problems


def needs_browser(f):
    for mark in NEEDS_BROWSER:
        f = mark(f)
    return f


@needs_browser
def test_page_steps_by_exit_and_counts_like_the_trace(open_flow, e1000_run):
    open_page, problems = open_flow
    t = e1000_run.trace
    page = open_page(PacketFlowView(e1000_run, by="exit").to_html(full_page=True))
    exits = [i for i, e in enumerate(t.events) if e.kind == "exit"]
    assert page.get_attribute(".vp-pflow", "data-mode") == "exit"
    assert page.locator(".vp-pf-mark").count() == len(t)
    # each lane's marks are the events Python put there
    lanes = packet_flow(t)["lane"]
    for lane in LANE_IDS:
        shown = page.evaluate(f"""() => [...document.querySelectorAll('.vp-pf-mark.lane-{lane}')]
            .map(g => Number(g.dataset.i))""")
        assert shown == [i for i, x in enumerate(lanes) if x == lane], lane
    for k in range(len(exits)):
        page.click(".vp-pf-next")
        assert _step(page) == exits[k]
        got = _counters(page)
        assert {key: got[key] for key in expected(t, exits[k])} == expected(t, exits[k])
        assert _text(page, ".vp-pf-pos") == f"VM exit {k + 1} of {len(exits)}"
    assert page.is_disabled(".vp-pf-next")
    page.click(".vp-pf-prev")
    assert _step(page) == exits[-2]
    # the player's own controls step one event
    page.click(FWD)
    assert _step(page) == exits[-2] + 1
    assert _counters(page) == {**_counters(page), **expected(t, exits[-2] + 1)}
    assert problems == []


@needs_browser
def test_page_click_a_mark_shows_the_function_file_and_frame(open_flow, e1000_run):
    open_page, problems = open_flow
    t = e1000_run.trace
    page = open_page(PacketFlowView(e1000_run).to_html(full_page=True))
    tap = index(t, "tap_receive_iov")
    page.click(f".vp-pf-mark[data-i='{tap}']")
    assert _step(page) == tap
    assert _text(page, ".vp-pf-fn") == "tap_receive_iov() — net/tap.c"
    assert _text(page, ".vp-pf-where") == "host · thread CPU 0/KVM"
    assert _text(page, ".vp-pf-frame-text") == nf.describe(E1000_FRAME)
    assert _text(page, ".vp-pf-hex").startswith("54 bytes: ff ff ff ff ff ff 52 54 00 12 34 56")
    assert _text(page, ".vp-pf-journey") == "TX 1: step 12 of 12 — written to the tap"
    assert _text(page, ".vp-caption-text") == t[tap].label
    note = _text(page, ".vp-caption-note")
    assert note.startswith("tap_receive_iov() in net/tap.c — host") and nf.describe(E1000_FRAME) in note
    got = _counters(page)
    assert got["tx_frames"] == 1 and got["bytes_moved"] == 2 * len(E1000_FRAME)
    page.click(f".vp-pf-mark[data-i='{tap - 1}']")    # qemu_deliver_packet_iov: frame, no tap yet
    assert _counters(page)["tx_frames"] == 0
    assert page.locator(".vp-pf-val[data-key='tx_frames']").evaluate(
        "td => td.parentElement.classList.contains('changed')") is False
    assert problems == []


@needs_browser
def test_page_follows_one_journey_alone(open_flow, virtio_loopback):
    open_page, problems = open_flow
    t, got, _ = virtio_loopback
    view = PacketFlowView(t)
    tx, rx = view.journeys
    page = open_page(view.to_html(full_page=True))
    page.select_option(".vp-pf-mode", "rx-1")
    assert _step(page) == rx["start"]
    assert page.locator(".vp-pf-mark").count() == len(t)     # all shown, the others dimmed
    assert page.locator(".vp-pf-mark:not(.dim)").count() == len(rx["events"])
    page.check(".vp-pf-only")
    assert page.locator(".vp-pf-mark").count() == len(rx["events"])
    assert page.get_attribute(".vp-pflow", "data-visible") == str(len(rx["events"]))
    seen = [_step(page)]
    while not page.is_disabled(".vp-pf-next"):
        page.click(".vp-pf-next")
        seen.append(_step(page))
    assert seen == rx["events"]
    assert _counters(page)["rx_frames"] == 1 == len(got)
    assert _text(page, ".vp-pf-pos") == f"RX 1: step {len(seen)} of {len(seen)}"
    # a journey bar jumps to that journey
    page.uncheck(".vp-pf-only")
    page.click(".vp-pf-jbar[data-j='tx-1']")
    assert _step(page) == tx["start"] and page.input_value(".vp-pf-mode") == "tx-1"
    page.click(FWD)                                            # the player steps by event
    assert _step(page) == tx["start"] + 1
    assert problems == []


# --- the e1000-vs-virtio chart -----------------------------------------------------------------------

ROWS = (_Row("e1000", 2, 31, 31, 20, 11, 412), _Row("virtio-net", 2, 9, 9, 0, 9, 116),
        _Row("virtio-net + EVENT_IDX", 4, 7, 7, 0, 7, 232))
FIELDS = ("vm_exits", "user_exits", "mmio_exits", "pio_exits")


def _heights(axes, gid: str) -> list[float]:
    return [p.get_height() for a in axes for p in a.patches if p.get_gid() == gid]


def test_chart_bars_are_the_numbers_per_packet():
    fig = exits_per_packet_chart(ROWS)
    for field in FIELDS:
        assert _heights(fig.axes, f"exits:{field}") == [getattr(r, field) / r.packets
                                                        for r in ROWS], field
    assert _heights(fig.axes, "bytes:bytes_copied") == [206.0, 58.0, 58.0]
    left, right = fig.axes
    assert right.get_ylabel() == "bytes copied per packet"        # a second y axis
    labels = [t.get_text() for a in fig.axes for t in a.texts]   # each bar's value, on it
    for v in ("15.5", "10", "5.50", "4.50", "206", "58", "1.75"):
        assert v in labels, v
    assert [t.get_text() for t in left.get_xticklabels()] == [
        "e1000\n(2 packets)", "virtio-net\n(2 packets)", "virtio-net + EVENT_IDX\n(4 packets)"]
    assert "Per packet" in left.get_title() and "VM exits" in left.get_title()
    legend = [t.get_text() for t in left.get_legend().get_texts()]
    assert legend == ["VM exits", "exits to user space (QEMU)", "KVM_EXIT_MMIO", "KVM_EXIT_IO",
                      "bytes copied by QEMU"]


def test_chart_draws_into_given_axes():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert exits_per_packet_chart(ROWS[:1], ax=ax) is ax
    assert _heights(fig.axes, "exits:vm_exits") == [15.5]
    plt.close(fig)


def test_tables_give_the_same_numbers():
    html = exits_table_html(ROWS)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", html)
    assert cells[:7] == ["e1000", "2", "15.5", "15.5", "10", "5.50", "206"]
    assert cells[7:14] == ["virtio-net", "2", "4.50", "4.50", "0", "4.50", "58"]
    assert html.count("<tr>") == 4 and "<script" not in html
    text = exits_table_text(ROWS).splitlines()
    assert len(text) == 5 and text[1].startswith("|---")
    assert [c.strip() for c in text[4].strip("|").split("|")] == [
        "virtio-net + EVENT_IDX", "4", "1.75", "1.75", "0", "1.75", "58"]


def test_chart_of_the_real_comparison():
    """The rows chapter 08 draws: vbook.net_run.compare() on unicorn, the Python host."""
    _unicorn()
    net_run = pytest.importorskip("vbook.net_run")
    rows = [r.counts for r in net_run.compare("unicorn", "loopback")]
    assert [r.nic for r in rows] == ["e1000", "virtio-net", "virtio-net + EVENT_IDX"]
    fig = exits_per_packet_chart(rows)
    for field in FIELDS:
        assert _heights(fig.axes, f"exits:{field}") == [r.per_packet(field) for r in rows]
    assert _heights(fig.axes, "bytes:bytes_copied") == [r.per_packet("bytes_copied") for r in rows]
    assert exits_table_html(rows).count("<tr>") == 1 + len(rows)
