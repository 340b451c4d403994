"""PacketFlowView: how one frame travels — guest, KVM, QEMU's vCPU thread, its main loop, the host.

It renders the trace :func:`vbook.models.run_loop.run` records when a guest
drives an emulated NIC (the e1000, virtio-net), or any trace of the same shape
(a board driven from Python, a host answering through
:class:`~vbook.backends.loopback_net.LoopbackNet`). Five lanes, one mark per
event at its time step:

* **guest** — ``guest run``: the guest's instructions on the CPU;
* **KVM** — ``kvm entry`` / ``exit``: the host kernel switching to and from it;
* **QEMU vCPU thread** — ``qemu`` and ``device`` events whose ``thread`` is
  the vCPU's (``CPU 0/KVM``): the exit handler, the NIC's register callbacks;
* **QEMU main loop** — the same actors on thread ``main``: bottom halves
  (virtio-net's TX bh), ``tap_send`` and what the NIC does with a frame it
  is given;
* **host** — ``host`` (and ``vhost``) events: the tap fd written
  (``tap_receive_iov``) or read (``tap_send``), the host kernel behind it.

Python works everything out here, in :func:`packet_flow`, and ships it in the
trace's ``meta["packet_flow"]``: the lane of each event, each frame's journey
(guest doorbell → tap write for a frame the guest sends; tap read → the guest
seeing it for one it gets), a decoded description of every frame an event
carries (:func:`vbook.models.net_frames.describe`) and the counters as they
change. The browser (``packet_flow_pane.js``) only indexes it, so a static
page animates the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import traitlets

from vbook.errors import TraceError, VbookError
from vbook.models.kvm_api import ExitReason
from vbook.net_trace import copied_bytes, tap_bytes
from vbook.trace import Event, Trace, TraceRecorder
from vbook.widgets.player import CSS, as_trace, esm_with
from vbook.widgets.run_loop import _RunPlayer

HERE = Path(__file__).parent
PANE_JS = HERE / "packet_flow_pane.js"
PANE_CSS = HERE / "packet_flow_pane.css"

#: the lanes, top to bottom: id, title, subtitle
LANES: tuple[tuple[str, str, str], ...] = (
    ("guest", "guest", "its code on the CPU"),
    ("kvm", "KVM", "host kernel"),
    ("vcpu", "QEMU vCPU thread", ""),          # subtitle: the thread's name, from the trace
    ("main", "QEMU main loop", "main thread"),
    ("host", "host", "tap, host kernel"),
)
LANE_IDS: tuple[str, ...] = tuple(lane[0] for lane in LANES)

#: the counters, in the order the pane shows them: key, label
COUNTERS: tuple[tuple[str, str], ...] = (
    ("vm_exits", "VM exits"),
    ("user_exits", "exits to user space"),
    ("pio_exits", "KVM_EXIT_IO"),
    ("mmio_exits", "KVM_EXIT_MMIO"),
    ("tx_frames", "frames to the host"),
    ("rx_frames", "frames to the guest"),
    ("bytes_moved", "bytes copied, in all"),
    ("bytes_copied", "… by QEMU, guest memory ↔ its buffers"),
    ("tap_bytes", "… through the tap (the host kernel)"),
)

_VM_EXIT_KINDS = ("exit", "vmexit")
_MAX_HDR = 20  # the longest virtio-net header (v1 with hash report)
_DD, _EOP = 0x01, 0x02  # e1000 RX descriptor status bits (E1000_RXD_STAT_DD, _EOP)
_FATES = {"dropped": " (dropped)", "queued": " (still in QEMU's queue)"}


def lane_of(ev: Event | Mapping[str, Any]) -> str:
    """The lane of one event: guest, kvm, vcpu (QEMU's vCPU thread), main (its main loop), host.

    ``qemu`` and ``device`` events go by their ``thread``: ``"main"`` is the
    main loop, any other (``"CPU 0/KVM"``) or none the vCPU thread.
    """
    actor, data = _actor_data(ev)
    if actor == "guest":
        return "guest"
    if actor == "kvm":
        return "kvm"
    if actor in ("host", "vhost"):
        return "host"
    return "main" if data.get("thread") == "main" else "vcpu"


def _actor_data(ev: Event | Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    if isinstance(ev, Event):
        return ev.actor, ev.data
    return ev["actor"], ev.get("data", {})


def _trace_of(obj: Any) -> Trace:
    if isinstance(obj, TraceRecorder):
        return obj.freeze()
    if isinstance(obj, Mapping) and "events" in obj:
        return Trace.from_json(json.dumps(obj))
    return as_trace(obj)


# --- frames ---------------------------------------------------------------------------------------

def describe_frame(frame: bytes) -> str:
    """:func:`vbook.models.net_frames.describe`, or a plain length when the bytes are no frame."""
    from vbook.models import net_frames as nf

    try:
        return nf.describe(frame)
    except Exception:  # a frame cut short, a vnet header with no frame behind it …
        return f"{len(frame)} bytes, not an Ethernet frame this book decodes"


def _frame(ev: Event) -> bytes | None:
    f = ev.data.get("frame")
    if not isinstance(f, str):
        return None
    try:
        return bytes.fromhex(f)
    except ValueError:
        return None


def _is_host(ev: Event, fn: str) -> bool:
    return ev.actor == "host" and ev.data.get("fn") == fn


def _is_exit(ev: Event) -> bool:
    return ev.actor == "kvm" and ev.kind in _VM_EXIT_KINDS


# --- journeys -------------------------------------------------------------------------------------

def _doorbell_start(events: Sequence[Event], before: int) -> tuple[int, int | None]:
    """Where the guest's part of a journey starts: the guest run before the most recent VM exit
    before ``before`` (and that exit), or — in a trace with no exits, a board driven from
    Python — the event after the last completed register access before it."""
    for k in range(before - 1, -1, -1):
        if _is_exit(events[k]):
            start = k - 1 if k > 0 and events[k - 1].actor == "guest" else k
            return start, k
    for k in range(before - 1, -1, -1):
        e = events[k]
        if e.actor == "device" and e.kind == "io":
            return k + 1, None
    return 0, None


def _main_block_start(events: Sequence[Event], t: int, lanes: Sequence[str]) -> int:
    """The first event of the run of main-loop (and host) events that ends at ``t``."""
    k = t
    while k > 0 and _on_main(events[k - 1], lanes[k - 1]):
        k -= 1
    return k


def _on_main(ev: Event, lane: str) -> bool:
    return lane == "main" or (lane == "host" and ev.data.get("thread") == "main")


def _tx_journeys(events: Sequence[Event], lanes: Sequence[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    last_end: dict[Any, int] = {}
    for t, ev in enumerate(events):
        if not _is_host(ev, "tap_receive_iov"):
            continue
        handoff = None
        chain_from = None
        if ev.data.get("thread") == "main" or lanes[t] == "main":
            p = _main_block_start(events, t, lanes)
            bh = events[p].data.get("bh") if p < t else None
            if bh is not None:
                q = next((k for k in range(p - 1, -1, -1)
                          if events[k].data.get("bh") == bh and lanes[k] != "main"), None)
                if q is not None:
                    handoff, chain_from = q, p
        if handoff is not None:
            start, door = _doorbell_start(events, handoff + 1)
            key: Any = ("bh", chain_from)
            first = [*range(start, handoff + 1)]
            chain_start = max(chain_from, last_end.get(key, -1) + 1)
        else:
            start, door = _doorbell_start(events, t)
            key = ("sync", door if door is not None else start)
            # the guest's doorbell and QEMU's way to the NIC model: up to its first event
            k = start
            while k < t and events[k].actor != "device":
                k += 1
            first = [*range(start, k + 1)]
            chain_start = max(k + 1, last_end.get(key, -1) + 1)
        idx = sorted({*first, *range(chain_start, t + 1)})
        last_end[key] = t
        out.append({"dir": "tx", "start": idx[0], "end": t, "events": idx, "doorbell": door,
                    "handoff": handoff, "tap": t, "delivered": t, "fate": "sent",
                    "dropped": False, "why": ""})
    return out


def _is_delivery(ev: Event) -> bool:
    """The event after which a frame QEMU got from the tap is the guest's to see."""
    d = ev.data
    if ev.actor == "device":
        if ev.kind == "flush" and str(d.get("vq_name", "")).startswith("rx"):
            return True  # virtqueue_flush on a receive queue: used->idx moved
        st = d.get("status")
        if d.get("fn") == "e1000_receive_iov" and isinstance(st, int) and "buffer_addr" in d:
            return st & (_DD | _EOP) == _DD | _EOP  # e1000: the last descriptor is done
    return False


def _rx_block(events: Sequence[Event], lanes: Sequence[str], s: int) -> int:
    """The last event of what QEMU's main loop does with the frame ``tap_send`` read at ``s``."""
    lane = lanes[s] if lanes[s] != "host" else (
        "main" if events[s].data.get("thread") == "main" else "vcpu")
    k = s
    while k + 1 < len(events):
        nxt = events[k + 1]
        if nxt.actor in ("host", "vhost", "guest", "kvm") or lanes[k + 1] != lane:
            break
        k += 1
    return k


def _rx_journeys(events: Sequence[Event], lanes: Sequence[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    claimed: set[int] = set()  # deliveries of queued frames, each given to one journey
    for s, ev in enumerate(events):
        if not _is_host(ev, "tap_send"):
            continue
        end = _rx_block(events, lanes, s)
        idx = [*range(s, end + 1)]
        # queued (the NIC could not take it yet): delivered later, when the queue is flushed
        queued = next((k for k in idx if events[k].data.get("fn") == "qemu_net_queue_append"
                       and not events[k].data.get("dropped")), None)
        if queued is not None:
            later = next((k for k in range(end + 1, len(events))
                          if events[k].data.get("fn") == "qemu_deliver_packet_iov"
                          and events[k].data.get("frame") == events[queued].data.get("frame")
                          and events[k].data.get("frame") is not None and k not in claimed), None)
            if later is not None:
                claimed.add(later)
                flush = [k for k in range(end + 1, later)
                         if events[k].data.get("fn") == "qemu_flush_queued_packets"]
                idx += flush[-1:]  # what let it go: the NIC can receive again
                end2 = later
                while end2 + 1 < len(events) and lanes[end2 + 1] == lanes[later] \
                        and events[end2 + 1].actor not in ("host", "vhost", "guest", "kvm"):
                    end2 += 1
                idx += [*range(later, end2 + 1)]
        delivered = next((k for k in reversed(idx) if _is_delivery(events[k])), None)
        if delivered is None:
            dma = [k for k in idx if events[k].actor == "qemu" and events[k].kind == "dma"
                   and events[k].data.get("fn") == "pci_dma_write"]
            delivered = dma[-1] if dma else None
        why = ""
        fate = "delivered"
        if delivered is None:
            still_queued = queued is not None and idx[-1] <= end
            fate = "queued" if still_queued else "dropped"
            why = events[idx[-1]].label
        else:
            # the way back into the guest: KVM_RUN, VM entry, the guest runs and can see it
            run = next((k for k in range(delivered + 1, len(events))
                        if events[k].actor == "guest"), None)
            if run is not None:
                ioctl = [k for k in range(delivered + 1, run)
                         if events[k].actor == "qemu" and events[k].kind == "ioctl"]
                idx += [k for k in range(max(idx[-1], delivered) + 1, run + 1)
                        if events[k].actor in ("guest", "kvm") or k == (ioctl or [-1])[-1]]
        idx = sorted(set(idx))
        out.append({"dir": "rx", "start": s, "end": idx[-1], "events": idx, "doorbell": None,
                    "handoff": None, "tap": s, "delivered": delivered, "fate": fate,
                    "dropped": fate == "dropped", "why": why})
    return out


def _vnet_hdr(ev: Event) -> int:
    """Bytes of vnet header the event names apart from its frame (``vnet_hdr``: a host end
    opened with ``IFF_VNET_HDR``), else 0."""
    h = ev.data.get("vnet_hdr")
    return len(h) // 2 if isinstance(h, str) else 0


def _frames(events: Sequence[Event], journeys: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What each frame-carrying event carries, decoded, with any vnet header in front named.

    Sets each journey's ``frame``: the frame the host end sees, without the virtio-net header
    a tap opened with ``IFF_VNET_HDR`` puts in front — whether the event names that header
    apart (``vnet_hdr``) or its ``frame`` holds it, as QEMU's own buffer does (then the NIC's
    header-less copy of the same frame, elsewhere in the journey, tells where it ends).
    """
    cache: dict[bytes, str] = {}

    def desc(b: bytes) -> str:
        if b not in cache:
            cache[b] = describe_frame(b)
        return cache[b]

    def inside(f: bytes, inner: bytes | None) -> int:
        """How many bytes of header ``f`` has in front of ``inner``."""
        if inner and 0 < len(f) - len(inner) <= _MAX_HDR and f.endswith(inner):
            return len(f) - len(inner)
        return 0

    owner: dict[int, bytes] = {}
    for j in journeys:
        tap = events[j["tap"]]
        host = _frame(tap) or b""
        best, hdr = host, _vnet_hdr(tap)
        if not hdr:
            for k in j["events"]:
                f = _frame(events[k])
                if f and inside(host, f):
                    best, hdr = f, inside(host, f)
        j["frame"] = {"text": desc(best) if best else "", "len": len(best),
                      "hex": best[:64].hex(), "hdr": hdr}
        for k in j["events"]:
            owner.setdefault(k, best)
    out: dict[str, dict[str, Any]] = {}
    for i, ev in enumerate(events):
        f = _frame(ev)
        if f is None:
            continue
        hdr = _vnet_hdr(ev)
        inner = f
        if not hdr:
            hdr = inside(f, owner.get(i))
            inner = f[hdr:]
        out[str(i)] = {"text": desc(inner), "len": hdr + len(inner), "hdr": hdr,
                       "hex": inner[:64].hex()}
    return out


def _counters(events: Sequence[Event], journeys: list[dict[str, Any]]) -> dict[str, list[list[int]]]:
    """Each counter as ``[[event index, value], …]`` at the events where it changes (a value
    holds from its event on, that event included)."""
    delivered = {j["delivered"] for j in journeys if j["dir"] == "rx" and not j["dropped"]}
    cur = dict.fromkeys((k for k, _ in COUNTERS), 0)
    out: dict[str, list[list[int]]] = {k: [] for k, _ in COUNTERS}
    for i, ev in enumerate(events):
        before = dict(cur)
        d = ev.data
        if _is_exit(ev):
            cur["vm_exits"] += 1
            # a run-loop trace records a VM exit only when KVM_RUN returned with it; a
            # kernel-loop trace says where each one ended
            if ev.kind == "exit" or d.get("where") == "user":
                cur["user_exits"] += 1
                reason = d.get("exit_reason")
                if reason == ExitReason.IO:
                    cur["pio_exits"] += 1
                elif reason == ExitReason.MMIO:
                    cur["mmio_exits"] += 1
        if _is_host(ev, "tap_receive_iov"):
            cur["tx_frames"] += 1
        cur["tap_bytes"] += tap_bytes(ev)
        cur["bytes_copied"] += copied_bytes(ev)
        if i in delivered:
            cur["rx_frames"] += 1
        cur["bytes_moved"] = cur["tap_bytes"] + cur["bytes_copied"]
        for k, v in cur.items():
            if v != before[k]:
                out[k].append([i, v])
    return out


def packet_flow(obj: Any) -> dict[str, Any]:
    """Everything the ``flow`` pane shows, worked out from a trace (or a result with ``.trace``,
    or a recorder). Plain JSON:

    * ``lanes`` — ``[{id, title, sub}]`` and ``lane`` — each event's lane id (:func:`lane_of`);
    * ``journeys`` — one per frame, in the order they start: ``id`` (``tx-1``, ``rx-1`` …),
      ``dir``, ``events`` (the indices that belong to it), ``start``, ``end``, ``doorbell``
      (the VM exit of the guest's doorbell write, TX; None in a board driven from Python),
      ``handoff`` (TX: the ``qemu_bh_schedule`` that passed it to the main loop, or None),
      ``tap`` (the tap write or read), ``fate`` ("sent"; RX: "delivered", "queued" — still in
      QEMU's queue for the NIC — or "dropped", ``why`` the last thing that happened),
      ``delivered`` (RX: the event after which the guest's ring has it, or None), ``frame``
      (``text`` decoded, ``len``, ``hex`` of the first 64 bytes, ``hdr``: bytes of vnet header
      the host end has in front), ``title``. A TX journey runs from the guest's run that
      ended in the doorbell exit to ``tap_receive_iov``; an RX one from ``tap_send`` to the NIC
      model's hand-over (virtio-net's ``virtqueue_flush`` on the RX queue, the e1000's last
      descriptor with DD|EOP), then KVM_RUN, VM entry and the guest running again;
    * ``frames`` — ``{event index: {text, len, hdr, hex}}`` for every event with a ``frame``:
      ``hdr`` bytes of vnet header in front, ``len`` header and frame, ``text`` and ``hex``
      (the first 64 bytes) of the frame behind the header;
    * ``counters`` — ``{key: [[event index, value], …]}`` where each changes (:data:`COUNTERS`);
    * ``exits`` — indices of the VM exits (the "step by exit" stops).
    """
    t = _trace_of(obj)
    events = t.events
    lanes = [lane_of(e) for e in events]
    journeys = sorted(_tx_journeys(events, lanes) + _rx_journeys(events, lanes),
                      key=lambda j: (j["start"], j["tap"]))
    n = {"tx": 0, "rx": 0}
    for j in journeys:
        n[j["dir"]] += 1
        j["n"] = n[j["dir"]]
        j["id"] = f"{j['dir']}-{j['n']}"
    frames = _frames(events, journeys)
    for j in journeys:
        arrow = "guest → host" if j["dir"] == "tx" else "host → guest"
        fate = _FATES.get(j["fate"], "")
        j["title"] = f"{j['dir'].upper()} {j['n']}, {arrow}: {j['frame']['text']}{fate}"
    vcpu = next((e.data.get("thread") for e in events if e.actor in ("qemu", "device")
                 and isinstance(e.data.get("thread"), str) and e.data.get("thread") != "main"),
                "CPU 0/KVM")
    return {
        "lanes": [{"id": i, "title": title, "sub": sub or f"thread {vcpu}"}
                  for i, title, sub in LANES],
        "lane": lanes,
        "journeys": journeys,
        "frames": frames,
        "counters": _counters(events, journeys),
        "counter_names": [list(c) for c in COUNTERS],
        "exits": [i for i, e in enumerate(events) if _is_exit(e)],
    }


# --- the widget -----------------------------------------------------------------------------------

class PacketFlowView(_RunPlayer):
    """Step through a run that moves frames: five lanes, each frame's journey, the counters.

    ``PacketFlowView(result_or_trace, step=None, speed=4.0, by="event", journey=None,
    only=False)``: ``result_or_trace`` is a :class:`~vbook.models.run_loop.LoopResult`,
    a Trace or a recorder. ``by`` is what the pane's ◀ ▶ step through first, ``"event"``
    or ``"exit"``; ``journey`` (an id such as ``"tx-1"``, or an index into
    :attr:`journeys`) selects one frame's journey instead, and ``only=True`` shows just
    its events. ``step`` defaults to the journey's first event, else 0. The player's own
    controls step event by event.
    """

    _esm = esm_with(PANE_JS)
    _css = CSS.read_text(encoding="utf-8") + "\n" + PANE_CSS.read_text(encoding="utf-8")
    panes = traitlets.Unicode("flow").tag(sync=True)

    def __init__(self, trace: Any, *, step: int | None = None, speed: float = 4.0,
                 by: str = "event", journey: str | int | None = None, only: bool = False,
                 **kw: Any):
        if by not in ("event", "exit"):
            raise VbookError(f"by must be 'event' or 'exit', got {by!r}")
        t = self._with_view(trace)
        view = t.to_dict()["meta"]["packet_flow"]
        jid = None
        if journey is not None:
            ids = [j["id"] for j in view["journeys"]]
            if isinstance(journey, int) and not isinstance(journey, bool):
                if not 0 <= journey < len(ids):
                    raise VbookError(f"journey {journey} is outside this trace's "
                                     f"{len(ids)} journeys")
                jid = ids[journey]
            elif journey in ids:
                jid = journey
            else:
                raise VbookError(f"no journey {journey!r} in this trace; it has {ids}")
        if only and jid is None:
            raise VbookError("only=True shows one journey's events: say which (journey=…)")
        start = {"by": by, "journey": jid, "only": bool(only)}
        t = Trace(t.events, {**dict(t.meta), "packet_flow": {**view, "start": start}})
        if step is None:
            step = next(j["start"] for j in view["journeys"] if j["id"] == jid) if jid else 0
        super().__init__(t, step=step, speed=speed, **kw)

    @staticmethod
    def _with_view(obj: Any) -> Trace:
        t = _trace_of(obj)
        meta = {k: v for k, v in dict(t.meta).items() if k != "packet_flow"}
        t = Trace(t.events, meta)
        return Trace(t.events, {**meta, "packet_flow": packet_flow(t)})

    def set_trace(self, trace: Any) -> None:
        """Show another run (a result, Trace or recorder), from its first event."""
        self.step = 0
        t = self._with_view(trace)
        view = t.to_dict()["meta"]["packet_flow"]
        view["start"] = {"by": "event", "journey": None, "only": False}
        self.trace = Trace(t.events, {**dict(t.meta), "packet_flow": view}).to_dict()

    @property
    def view(self) -> dict[str, Any]:
        """What the ``flow`` pane draws (see :func:`packet_flow`)."""
        return dict(self.trace.get("meta", {}).get("packet_flow", {}))

    @property
    def journeys(self) -> list[dict[str, Any]]:
        """Each frame's journey (see :func:`packet_flow`)."""
        return list(self.view.get("journeys", []))

    def lanes(self) -> list[str]:
        """The lane id of each event."""
        return list(self.view.get("lane", []))

    def counters_at(self, step: int) -> dict[str, int]:
        """The counters as the pane shows them at event ``step`` (that event included)."""
        n = len(self.trace.get("events", []))
        if not 0 <= step < max(1, n):
            raise TraceError(f"step {step} is outside this trace's events [0, {n})")
        out = {}
        for key, changes in self.view.get("counters", {}).items():
            v = 0
            for i, val in changes:
                if i > step:
                    break
                v = val
            out[key] = v
        return out

    def __repr__(self) -> str:
        events = self.trace.get("events", [])
        title = self.trace.get("meta", {}).get("title")
        head = f"trace={title!r}, " if title else ""
        js = self.journeys
        tx = sum(1 for j in js if j["dir"] == "tx")
        rx = sum(1 for j in js if j["dir"] == "rx" and j["fate"] == "delivered")
        exits = len(self.view.get("exits", []))
        return (f"PacketFlowView({head}{len(events)} events, {exits} exit{'s' * (exits != 1)}, "
                f"{tx} frame{'s' * (tx != 1)} to the host, {rx} to the guest)")


def show_packet_flow(result: Any, *, step: int | None = None, speed: float = 4.0,
                     by: str = "event", journey: str | int | None = None,
                     only: bool = False) -> PacketFlowView:
    """The usual way to show a run that moves frames: ``show_packet_flow(run_loop.run(guest,
    machine=m))``; ``journey="tx-1", only=True`` follows the first frame the guest sent."""
    return PacketFlowView(result, step=step, speed=speed, by=by, journey=journey, only=only)


__all__ = ["COUNTERS", "LANES", "LANE_IDS", "PacketFlowView", "describe_frame", "lane_of",
           "packet_flow", "show_packet_flow"]
