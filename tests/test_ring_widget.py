"""RingView: the split virtqueue as guest memory and QEMU's VirtQueue hold it, event by event.

The scenes: the real guest of tests/test_virtio_net.py (sets up the TX queue,
sends one frame) on unicorn and /dev/kvm, and :class:`test_virtio_pci.Board`
(Linux's legacy driver in Python) for RX, chains of several descriptors,
indirect tables, a window over many buffers and 16-bit indices that wrap.
What the view says at each event is compared with the ring's bytes read at
that very event with ``struct`` (not through vbook.models.vring_snapshot). The
browser tests need playwright-python and a system Chromium, and skip without them.
"""

from __future__ import annotations

import json
import re
import struct

import pytest
from _browser import FWD, NEEDS_BROWSER, page_opener
from _panes import assert_player_plus_pane, render_type_in_node
from test_virtio_net import BASE, EVENT_IDX, GUEST, LOAD_ADDR, post_rx, received, send
from test_virtio_pci import Board, frame

from vbook.backends import available
from vbook.devices.machine import Machine
from vbook.devices.net_client import MemoryBackend
from vbook.devices.virtio_net import add_virtio_net
from vbook.memory import GuestMemory
from vbook.models import run_loop
from vbook.models.vring import Device, Driver, Layout
from vbook.models.vring_snapshot import follow_chain, read_bytes, ring_state
from vbook.trace import TraceRecorder
from vbook.widgets import RingRecorder, RingView, show_ring, static_html
from vbook.widgets.ring import DESC_ROWS, PANE_CSS, PANE_JS, ring_view

INDIRECT_F = 1 << 28


# --- the snapshot helper ----------------------------------------------------------------------

def test_ring_state_is_the_bytes_of_the_three_areas():
    mem = GuestMemory(0x20000)
    lay = Layout(8, 0x1000)
    drv, dev = Driver(mem, lay), Device(mem, lay)
    head = drv.add(out=[(0x8000, 64), (0x8100, 20)], in_=[(0x9000, 1500)])
    chain = dev.pop()
    dev.push(chain, 1234)
    mem.clear_log()
    st = ring_state(mem, lay)
    assert mem.accesses == []                        # read through the buffer: no access logged
    assert st["num"] == 8 and len(st["desc"]) == 8
    assert st["desc"][head] == [0x8000, 64, 1, 1]   # NEXT, next 1
    assert st["desc"][1] == [0x8100, 20, 1, 2] and st["desc"][2] == [0x9000, 1500, 2, 3]
    assert follow_chain(st["desc"], head) == [0, 1, 2]
    assert st["avail"]["idx"] == 1 and st["avail"]["ring"][0] == head
    assert st["used"]["idx"] == 1 and st["used"]["ring"][0] == [head, 1234]
    assert st["avail"]["used_event"] == struct.unpack("<H", mem.read(lay.used_event, 2))[0]
    assert st["used"]["avail_event"] == struct.unpack("<H", mem.read(lay.avail_event, 2))[0]


def test_follow_chain_stops_at_a_loop_and_out_of_the_table():
    desc = [[0, 0, 1, 1], [0, 0, 1, 0], [0, 0, 1, 99]]
    assert follow_chain(desc, 0) == [0, 1]
    assert follow_chain(desc, 2) == [2]
    assert follow_chain(desc, 7) == []


def test_read_bytes_past_the_end_of_memory_reads_zeros():
    mem = GuestMemory(0x1000, record=False)
    mem.write(0xFFE, b"\x12\x34")
    assert read_bytes(mem, 0xFFE, 4) == b"\x12\x34\x00\x00"
    assert read_bytes(mem, 0x5000, 3) == bytes(3)
    assert read_bytes(b"abc", 1, 4) == b"bc\x00\x00"


# --- the real guest ---------------------------------------------------------------------------

def _guest(backend: str):
    why = available()[backend]
    if why:
        pytest.skip(f"{backend} backend: {why}")
    m = Machine()
    be = MemoryBackend()
    add_virtio_net(m, be)
    rec = RingRecorder(m)
    return run_loop.run(GUEST, backend, machine=m, trace=rec), be, rec


def _index(events, fn: str, start: int = 0) -> int:
    return next(i for i, e in enumerate(events) if i >= start and e.data.get("fn") == fn)


@pytest.mark.parametrize("backend", ["unicorn", "kvm"])
def test_the_real_guest_tx_ring_event_by_event(backend):
    r, be, rec = _guest(backend)
    assert r.end == run_loop.End.HLT and len(be.sent) == 1
    w = show_ring(r)
    assert repr(w) == f"RingView(trace='virtio_net_tx on {backend} (QEMU 9.2.4 model)', 1 queue, " \
                      f"{len(r.trace)} steps)"
    view = w.view
    (q,) = view["queues"]
    assert (q["name"], q["index"], q["title"]) == ("tx", 1, "tx (queue 1)")
    ev = r.trace.events
    pfn = _index(ev, "virtio_init_region_cache")
    assert q["born"] == pfn and q["layouts"][0]["desc"] == "0x4000"
    assert (q["layouts"][0]["avail"], q["layouts"][0]["used"]) == ("0x5000", "0x6000")
    assert w.state_at(pfn - 1)["tx"]["snap"] is None
    # QUEUE_PFN: the guest wrote desc[0] before, published nothing yet: a free descriptor
    at = w.state_at(pfn)["tx"]["snap"]
    hdr = LOAD_ADDR + GUEST.code.index(bytes(10) + b"\xff" * 6)
    assert at["descs"] == [{"i": 0, "addr": f"{hdr:#x}", "len": 68, "flags": "0", "next": "0 (no NEXT)",
                            "owner": "driver", "head": None, "is_head": False}]
    assert at["avail"]["idx"] == 0 and at["owners"] == {"device": 0, "avail": 0, "used": 0, "driver": 256}
    # the guest publishes avail->idx = 1 between two exits: seen after the guest ran
    pub = next(v for v in q["versions"] if "avail.idx" in v[2])
    assert ev[pub[0]].actor == "guest" and pfn < pub[0] < _index(ev, "virtio_queue_notify")
    st = w.state_at(pub[0])["tx"]["snap"]
    assert st["avail"]["idx"] == 1 and st["avail"]["slots"][0] == {"k": 0, "slot": 0, "head": 0,
                                                                      "state": "pending"}
    assert st["descs"][0]["owner"] == "avail" and st["pending"] == 1
    # the pop: head 0, its chain highlighted, the device owns it now
    pop = _index(ev, "virtqueue_pop")
    s = w.state_at(pop)["tx"]
    assert s["hot"]["chain"] == [0] and s["hot"]["avail"] == [0] and s["hot"]["heads"] == [0]
    assert s["snap"]["dev"]["last_avail_idx"] == ev[pop]["last_avail_idx"] == 1
    assert s["snap"]["descs"][0]["owner"] == "device" and "dev.last_avail_idx" in s["changed"]
    # what the device read is what the view shows
    d0 = ev[pop]["descs"][0]
    assert (s["snap"]["descs"][0]["addr"], s["snap"]["descs"][0]["len"]) == (f"{d0['addr']:#x}", d0["len"])
    # fill: written, not published; flush: used->idx 1, used->ring[0] = {0, 0}
    fill = _index(ev, "virtqueue_fill", pop)
    s = w.state_at(fill)["tx"]
    assert s["snap"]["used"]["slots"][0]["state"] == "filled" and s["snap"]["used"]["idx"] == 0
    assert s["snap"]["descs"][0]["owner"] == "device" and s["hot"]["used"] == [0]
    flush = _index(ev, "virtqueue_flush", pop)
    s = w.state_at(flush)["tx"]
    assert s["snap"]["used"]["idx"] == ev[flush]["new"] == 1
    assert s["snap"]["used"]["slots"][0] == {"k": 0, "slot": 0, "id": 0, "len": 0, "state": "published"}
    assert s["snap"]["descs"][0]["owner"] == "used" and s["hot"]["used"] == [0]
    assert {"used.idx", "dev.used_idx"} <= set(s["changed"])
    # after the run (RAM given back) the last state stays
    assert w.state_at(len(ev) - 1)["tx"]["snap"]["used"]["idx"] == 1


def test_the_recorder_changes_nothing_in_the_trace():
    r, _, _ = _guest("unicorn")
    m = Machine()
    add_virtio_net(m, MemoryBackend())
    plain = run_loop.run(GUEST, "unicorn", machine=m)
    assert [e.to_dict() for e in r.trace.events] == [e.to_dict() for e in plain.trace.events]
    assert "ring_view" in r.trace.meta and "ring_view" not in plain.trace.meta


def test_unicorn_and_kvm_give_the_same_view():
    ru, _, _ = _guest("unicorn")
    rk, _, _ = _guest("kvm")
    assert ring_view(ru)[1] == ring_view(rk)[1]


# --- a board with Linux's driver in Python ------------------------------------------------------

class Truth(RingRecorder):
    """A RingRecorder that also keeps, after every event, each queue's bytes read with struct."""

    def __init__(self, b: Board):
        super().__init__(b.m)
        self.b = b
        self.truth: list[dict[int, dict]] = []

    def emit(self, actor, kind, label="", **data):
        ev = super().emit(actor, kind, label, **data)
        now = {}
        for q, d in self.b.drv.items():
            lay, raw = d.layout, bytes(self.b.ram.buf)
            now[q] = {
                "desc": [struct.unpack_from("<QIHH", raw, lay.desc + 16 * i) for i in range(lay.num)],
                "avail_idx": struct.unpack_from("<H", raw, lay.avail + 2)[0],
                "avail_ring": struct.unpack_from(f"<{lay.num}H", raw, lay.avail + 4),
                "used_idx": struct.unpack_from("<H", raw, lay.used + 2)[0],
                "used_ring": [struct.unpack_from("<II", raw, lay.used + 4 + 8 * i) for i in range(lay.num)],
                "used_event": struct.unpack_from("<H", raw, lay.used_event)[0],
                "avail_event": struct.unpack_from("<H", raw, lay.avail_event)[0],
            }
        self.truth.append(now)
        return ev


def recorded_board(features: int = BASE, start: int | None = None, **probe) -> tuple[Board, Truth]:
    b = Board()
    b.probe(features=features, **probe)
    if start is not None:              # a ring restored at ``start`` (as after a migration)
        for qi, d in list(b.drv.items()):
            b.drv[qi] = Driver(b.ram, d.layout, event_idx=d.event, notify=d.notify_fn, start_idx=start)
            ring = b.n.vq[qi].ring
            ring._start = start
            ring.reset()
    rec = Truth(b)
    b.m.ctx.trace = rec
    return b, rec


def check_against_memory(rec: Truth) -> int:
    """Every event: what the view shows is what the ring's bytes were right then."""
    w = RingView(rec)
    names = {q["index"]: q["name"] for q in w.view["queues"]}
    checked = 0
    for i, truth in enumerate(rec.truth):
        state = w.state_at(i)
        for qi, t in truth.items():
            if qi not in names:
                continue
            snap = state[names[qi]]["snap"]
            assert snap is not None
            assert snap["avail"]["idx"] == t["avail_idx"] and snap["used"]["idx"] == t["used_idx"]
            assert snap["avail"]["used_event"] == t["used_event"]
            assert snap["used"]["avail_event"] == t["avail_event"]
            for s in snap["avail"]["slots"]:
                if "slot" in s:
                    assert s["head"] == t["avail_ring"][s["slot"]] and s["slot"] == s["k"] % 256
            for s in snap["used"]["slots"]:
                if "slot" in s:
                    assert (s["id"], s["len"]) == t["used_ring"][s["slot"]]
            for r in snap["descs"]:
                if "i" in r:
                    a, n, _, _ = t["desc"][r["i"]]
                    assert (r["addr"], r["len"]) == (f"{a:#x}", n)
            checked += 1
    return checked


def test_rx_buffers_go_avail_device_used_and_match_memory():
    b, rec = recorded_board(BASE | EVENT_IDX)
    heads = post_rx(b, 3, 2048)
    b.backend.put(frame(60))
    assert b.m.main_loop_poll() == 1
    got = received(b)
    assert [(h, n) for h, n, _ in got] == [(0, 70)]
    assert check_against_memory(rec) > 20
    w = RingView(rec)
    assert repr(w) == f"RingView(trace='virtqueues', 2 queues, {len(rec.events)} steps)"
    ev = rec.events
    kick = _index(ev, "virtio_queue_notify")
    s = w.state_at(kick)["rx"]["snap"]
    assert [r["owner"] for r in s["descs"]] == ["avail"] * 3 and s["pending"] == 3
    assert [r["i"] for r in s["descs"]] == heads
    pop = _index(ev, "virtqueue_pop")
    s = w.state_at(pop)["rx"]
    assert s["hot"]["chain"] == [0]
    assert [r["owner"] for r in s["snap"]["descs"]] == ["device", "avail", "avail"]
    assert s["snap"]["used"]["avail_event"] == rec.truth[pop][0]["avail_event"]
    flush = _index(ev, "virtqueue_flush", pop)
    s = w.state_at(flush)["rx"]
    assert s["snap"]["used"]["slots"][0] == {"k": 0, "slot": 0, "id": 0, "len": 70, "state": "published"}
    assert [r["owner"] for r in s["snap"]["descs"]] == ["used", "avail", "avail"]
    assert s["hot"]["text"] == "publishes used->idx 0 → 1: head 0 back to the driver"
    note = _index(ev, "virtio_should_notify", flush)
    s = w.state_at(note)["rx"]
    assert s["hot"]["fields"] == ["avail.used_event", "dev.signalled_used"]
    assert s["snap"]["event_note"][0].startswith("used_event 0: the driver wants an interrupt")
    # the other queue's card is not touched by RX events
    assert w.state_at(pop)["tx"]["hot"] is None


def test_a_chain_of_two_descriptors_is_followed_through_next():
    b, rec = recorded_board()
    send(b, frame(60), split=True)
    send(b, frame(61), at=0x48000)
    assert check_against_memory(rec) > 10
    w = RingView(rec)
    pops = [i for i, e in enumerate(rec.events) if e.data.get("fn") == "virtqueue_pop"]
    s = w.state_at(pops[0])["tx"]
    assert s["hot"]["chain"] == [0, 1] and s["hot"]["text"].endswith("chain 0 → 1")
    rows = {r["i"]: r for r in s["snap"]["descs"]}
    assert rows[0]["flags"] == "NEXT" and rows[0]["next"] == "→ 1" and rows[0]["is_head"]
    assert rows[1]["head"] == 0 and rows[1]["owner"] == "device" and not rows[1]["is_head"]
    s = w.state_at(pops[1])["tx"]
    assert s["hot"]["chain"] == [2] and s["hot"]["avail"] == [1]
    assert {r["i"]: r["owner"] for r in s["snap"]["descs"]} == {0: "used", 1: "used", 2: "device"}


def test_an_indirect_table_is_shown_under_its_descriptor():
    b, rec = recorded_board(BASE | INDIRECT_F, indirect=True)
    send(b, frame(80), split=True)
    w = RingView(rec)
    pop = _index(rec.events, "virtqueue_pop")
    s = w.state_at(pop)["tx"]
    assert s["hot"]["chain"] == [0] and s["hot"]["ind"] == [0, 1]
    (row,) = s["snap"]["descs"]
    assert row["flags"] == "INDIRECT" and row["len"] == 32
    table = rec.truth[pop][1]["desc"][0][0]
    assert row["addr"] == f"{table:#x}"
    assert [(e["i"], e["len"], e["flags"]) for e in row["ind"]] == [(0, 10, "NEXT"), (1, 80, "0")]
    assert row["ind"][0]["next"] == "→ 1" and row["ind_more"] == 0


def test_a_256_entry_ring_with_many_buffers_shows_a_window():
    b, rec = recorded_board()
    post_rx(b, 40, 0x800)
    b.backend.put(frame(60))
    b.m.main_loop_poll()
    w = RingView(rec)
    s = w.state_at(len(rec.events) - 1)["rx"]["snap"]
    rows = [r for r in s["descs"] if "i" in r]
    assert len(rows) == DESC_ROWS and rows[0]["owner"] == "used" and rows[0]["i"] == 0
    assert s["owners"] == {"device": 0, "avail": 39, "used": 1, "driver": 216}
    assert s["desc_note"] == (f"{DESC_ROWS} of 256 descriptors shown · {40 - DESC_ROWS} more in a ring "
                              "entry not shown · 216 free (the driver's) not shown")
    # the avail ring: around last_avail_idx 1 and around avail->idx 40, a gap between
    ks = [x.get("k") for x in s["avail"]["slots"]]
    gap = next(x["gap"] for x in s["avail"]["slots"] if "gap" in x)
    assert ks == [0, 1, 2, 3, None, 36, 37, 38, 39, 40] and gap == 32      # 4 … 35 left out
    assert s["avail"]["slots"][-1]["state"] == "next" and s["avail"]["slots"][1]["state"] == "pending"
    assert check_against_memory(rec) > 10


def test_16_bit_indices_wrap_and_the_slots_follow():
    b, rec = recorded_board(start=65534)
    for k in range(4):
        send(b, frame(60 + k), at=0x40000 + 0x800 * k)
    assert len(b.backend.sent) == 4
    assert check_against_memory(rec) > 20
    w = RingView(rec)
    flushes = [i for i, e in enumerate(rec.events) if e.data.get("fn") == "virtqueue_flush"]
    assert [rec.events[i]["new"] for i in flushes] == [65535, 0, 1, 2]
    s = w.state_at(flushes[1])["tx"]
    assert s["hot"]["used"] == [65535] and s["snap"]["used"]["idx"] == 0
    last = w.state_at(flushes[-1])["tx"]["snap"]
    assert [(x["k"], x["slot"], x["state"]) for x in last["used"]["slots"]] == [
        (65534, 254, "published"), (65535, 255, "published"), (0, 0, "published"),
        (1, 1, "published"), (2, 2, "next")]
    assert [x["id"] for x in last["used"]["slots"][:4]] == [0, 1, 2, 3]
    assert [(x["k"], x["slot"]) for x in last["avail"]["slots"]] == [
        (65534, 254), (65535, 255), (0, 0), (1, 1), (2, 2)]
    assert last["dev"]["last_avail_idx"] == last["avail"]["idx"] == 2


def test_snapshots_are_kept_only_when_something_changed():
    b, rec = recorded_board(BASE | EVENT_IDX)
    post_rx(b, 2, 2048)
    for _ in range(2):
        b.backend.put(frame(60))
        b.m.main_loop_poll()
    received(b)
    view = RingView(rec).view
    for q in view["queues"]:
        vs = q["versions"]
        assert len(q["snaps"]) <= len(vs) < len(rec.events)
        assert all(a[0] < b_[0] for a, b_ in zip(vs, vs[1:], strict=False))
        assert all(a[1:] != b_[1:] for a, b_ in zip(vs, vs[1:], strict=False))
        assert len({json.dumps(s, sort_keys=True) for s in q["snaps"]}) == len(q["snaps"])


def test_a_plain_trace_and_a_recorder_bound_to_nothing():
    b = Board()
    b.probe(features=BASE)
    send(b, frame())
    w = RingView(b.rec.freeze())
    assert not w.view["recorded"] and w.view["queues"] == []
    assert repr(w) == f"RingView(0 queues, {len(b.rec.events)} steps, not recorded with a RingRecorder)"
    rec = RingRecorder()
    rec.emit("device", "pop", "x", vq=0)
    assert RingView(rec).view["queues"] == [] and RingView(rec).view["bound"] is False
    assert RingView(RingRecorder(b.m).bind(b.dev)).view["bound"] is True
    assert RingView(TraceRecorder()).view["recorded"] is False


def test_a_machine_a_proxy_or_the_virtio_device_as_target_give_the_same_view():
    views = []
    for target in (lambda b: b.m, lambda b: b.dev, lambda b: b.n):
        b = Board()
        b.probe(features=BASE)
        rec = RingRecorder(target(b))
        b.m.ctx.trace = rec
        send(b, frame())
        views.append(ring_view(rec)[1])
    assert views[0] == views[1] == views[2]
    assert [q["title"] for q in views[0]["queues"]] == ["rx (queue 0)", "tx (queue 1)"]


def test_the_widgets_own_trace_shows_again_and_round_trips():
    b, rec = recorded_board()
    send(b, frame())
    w = RingView(rec)
    again = RingView(w.get_trace())
    assert again.view == w.view and repr(again) == repr(w)
    assert json.loads(json.dumps(w.view)) == w.view


# --- ESM, static page -----------------------------------------------------------------------------

def test_esm_is_the_player_plus_the_pane_and_css_both():
    assert_player_plus_pane(RingView, PANE_JS, PANE_CSS, "ring")


def test_esm_with_the_pane_loads_as_a_module(tmp_path):
    assert render_type_in_node(str(RingView._esm), tmp_path) == "function"


def test_static_html_carries_the_view():
    b, rec = recorded_board()
    send(b, frame())
    page = static_html(RingView(rec))
    assert "PANES.ring" in page and "vp-rg-card" in page and '"ring_view"' in page
    assert RingView(rec).panes == "ring events"


# --- in a browser ----------------------------------------------------------------------------

def seek(page, step: int) -> None:
    """Jump to event ``step`` with a click on it in the event list (the player's own seek)."""
    page.click(f".vp-events li[data-i='{step}']")
    assert page.get_attribute(".vbook-player", "data-step") == str(step)


@pytest.fixture
def page_of(tmp_path):
    with page_opener(tmp_path, ".vbook-player .vp-rg-card", name="ring.html",
                     viewport=(1300, 1000)) as opened:
        yield opened


@NEEDS_BROWSER[0]
@NEEDS_BROWSER[1]
def test_stepping_the_real_guest_in_a_static_page(page_of):
    open_page, problems = page_of
    r, _, _ = _guest("unicorn")
    ev = r.trace.events
    page = open_page(static_html(show_ring(r)))
    card = ".vp-rg-card[data-vq='1']"
    assert "no ring" in page.inner_text(card)
    pfn = _index(ev, "virtio_init_region_cache")
    seek(page, pfn)
    assert "desc 0x4000 · avail 0x5000 · used 0x6000" in page.inner_text(f"{card} .vp-rg-title")
    assert page.inner_text(".vp-caption-text").startswith("virtio_init_region_cache tx")
    pop = _index(ev, "virtqueue_pop")
    seek(page, pop - 1)
    before = page.inner_text(card)
    page.click(FWD)
    after = page.inner_text(card)
    assert after != before
    row = page.locator(f"{card} .vp-rg-desc tr[data-desc='0']")
    assert "hot" in row.get_attribute("class").split() and "owner-device" in row.get_attribute("class")
    assert "device · head" in row.inner_text()
    assert "pops head 0 from avail->ring[0]" in page.inner_text(f"{card} .vp-rg-now")
    assert "changed" in page.locator(f"{card} [data-k='dev.last_avail_idx']").get_attribute("class")
    assert page.inner_text(".vp-caption-text").startswith("virtqueue_pop tx: pop head 0")
    assert "virtqueue_split_pop" in page.inner_text(".vp-caption-note")
    flush = _index(ev, "virtqueue_flush", pop)
    seek(page, flush)
    used = page.locator(f"{card} .vp-rg-used tr[data-idx='0']")
    assert "published" in used.inner_text() and "hot" in used.get_attribute("class").split()
    assert re.search(r"idx\s*1", page.inner_text(f"{card} .vp-rg-used .vp-rg-fields"))
    assert "owner-used" in page.locator(f"{card} .vp-rg-desc tr[data-desc='0']").get_attribute("class")
    page.click(".vp-btn[title^='first']")
    assert "no ring" in page.inner_text(card)
    assert problems == []


@NEEDS_BROWSER[0]
@NEEDS_BROWSER[1]
def test_two_queues_two_cards(page_of):
    open_page, problems = page_of
    b, rec = recorded_board(BASE | EVENT_IDX)
    post_rx(b, 3, 2048)
    send(b, frame(60), split=True)
    b.backend.put(frame(60))
    b.m.main_loop_poll()
    page = open_page(static_html(RingView(rec)))
    assert page.locator(".vp-rg-card").count() == 2
    pops = [i for i, e in enumerate(rec.events) if e.data.get("fn") == "virtqueue_pop"]
    seek(page, pops[0])                                    # TX: the chain 0 → 1
    tx = ".vp-rg-card[data-vq='1']"
    assert "hot" in page.get_attribute(tx, "class").split()
    assert "hot" not in page.get_attribute(".vp-rg-card[data-vq='0']", "class").split()
    assert page.locator(f"{tx} .vp-rg-desc tr.hot").count() == 2
    seek(page, pops[1])                                    # RX: head 0 of three
    rx = ".vp-rg-card[data-vq='0']"
    owners = page.eval_on_selector_all(f"{rx} .vp-rg-desc tr[data-desc]",
                                       "els => els.map(e => e.className.split(' ')[0])")
    assert owners == ["owner-device", "owner-avail", "owner-avail"]
    assert "EVENT_IDX" in page.inner_text(rx) and "avail_event" in page.inner_text(rx)
    assert problems == []
