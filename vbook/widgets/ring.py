"""RingView: a split virtqueue as it sits in guest memory, while the guest and QEMU use it.

One card per queue (rx, tx …) of every virtio device on the board, stepping
through the recorded trace. The ``ring`` pane (``ring_pane.js``) shows, after
each event, what guest memory and QEMU's ``VirtQueue`` hold:

* the **descriptor table** — ``addr``, ``len``, ``flags`` (NEXT / WRITE /
  INDIRECT), ``next`` — for a window of at most :data:`DESC_ROWS` entries: the
  chains that are in a ring entry now (and an indirect table's first entries),
  the rest counted ("… n more in use, m free");
* who **owns** each chain: the *driver* (free), *avail* (published in the
  avail ring, not yet popped), *device* (popped by QEMU, in flight), *used*
  (returned in the used ring);
* the **avail ring** (driver → device): ``flags``, ``idx``, the entries around
  ``last_avail_idx`` and ``avail->idx``, and ``used_event``;
* the **used ring** (device → driver): ``flags``, ``idx``, the latest
  ``{id, len}`` elements, and ``avail_event``;
* QEMU's indices: ``last_avail_idx``, ``shadow_avail_idx``, ``used_idx``,
  ``signalled_used`` (+ valid), ``inuse``, notifications on/off, EVENT_IDX;
* the **chain of the current event** highlighted (the head being popped,
  filled or flushed, following ``next``), the slots and fields it touched, and
  what changed since the previous state.

The bytes are only in guest memory while a run lends the vCPU's RAM to the
board, so the state is noted while it happens: record with a
:class:`RingRecorder`, which after every event reads each queue that has a
ring (:func:`vbook.models.vring_snapshot.ring_state`) and keeps a new snapshot
only when something changed::

    m = Machine(); add_virtio_net(m, MemoryBackend())
    r = run_loop.run(guest, "unicorn", machine=m, trace=RingRecorder(m))
    show_ring(r)

Everything the pane draws is computed here and travels in
``trace.meta["ring_view"]`` (:func:`ring_view`); the browser only indexes it.
"""

from __future__ import annotations

import json
from typing import Any

import traitlets

from vbook.errors import VbookError
from vbook.models.vring_snapshot import (
    INDIRECT,
    NEXT,
    WRITE,
    follow_chain,
    parse_areas,
    read_indirect,
    ring_areas,
)
from vbook.trace import Trace, TraceRecorder
from vbook.widgets.player import CSS, HERE, RecordedViewPlayer, as_trace, esm_with

PANE_JS = HERE / "ring_pane.js"
PANE_CSS = HERE / "ring_pane.css"

U16 = 0xFFFF
#: at most this many descriptor rows per queue (a 256-entry table stays readable)
DESC_ROWS = 16
#: entries of an indirect table shown under its descriptor
IND_ROWS = 8

#: QEMU function (the event's ``fn``) -> what it does to the ring, for the captions
FNS: dict[str, str] = {
    "virtio_init_region_cache":
        "The guest wrote QUEUE_PFN: QEMU lays the ring out as legacy vring_init does (the "
        "descriptor table, the avail ring right after it, the used ring at the next 4 KiB "
        "boundary) and maps the three areas. From here the ring is shown.",
    "virtio_queue_notify":
        "The guest kicked the queue (a write to QUEUE_NOTIFY after publishing avail->idx): "
        "QEMU runs the queue's handle_output, which pops what the driver made available.",
    "virtqueue_pop":
        "virtqueue_pop → virtqueue_split_pop: read avail->idx into shadow_avail_idx, take the head "
        "at avail->ring[last_avail_idx % num], last_avail_idx++, and follow the chain through "
        "next while NEXT is set. The chain is the device's now (in flight) until it is pushed "
        "back. With EVENT_IDX it also writes avail_event = last_avail_idx.",
    "virtqueue_fill":
        "virtqueue_fill → virtqueue_split_fill: write the used element {id = head, len = bytes "
        "written into the buffers} at used->ring[(used_idx + idx) % num]. The driver cannot see "
        "it yet: used->idx has not moved.",
    "virtqueue_flush":
        "virtqueue_flush → virtqueue_split_flush: publish the filled elements, used->idx += count "
        "(free-running, it wraps at 65536, not at num). The chains are the driver's again as "
        "soon as it reads used->idx.",
    "virtio_should_notify":
        "virtio_should_notify → virtio_split_should_notify: interrupt the guest? Without EVENT_IDX "
        "unless avail->flags has VRING_AVAIL_F_NO_INTERRUPT; with EVENT_IDX only if "
        "vring_need_event(used_event, used_idx, signalled_used) — and signalled_used = used_idx.",
    "virtio_queue_set_notification":
        "virtio_queue_set_notification: does the device want kicks? Without EVENT_IDX it sets or "
        "clears VRING_USED_F_NO_NOTIFY in used->flags; with EVENT_IDX it writes avail_event = "
        "avail->idx, and only when enabling (while off, avail_event stays behind).",
    "virtio_irq":
        "virtio_irq: ISR bit 0 is set and the transport raises the interrupt; the driver's handler "
        "reads used->idx and takes the used elements.",
}


# --- where the queues are -----------------------------------------------------------------------

def _vdevs(target: Any) -> list[tuple[str, str, Any]]:
    """(PCI address, device name, VirtIODevice) of every virtio device ``target`` holds:
    a Machine (its PCI bus), a virtio-pci proxy (``.vdev``) or a VirtIODevice (``.vq``)."""
    if target is None:
        return []
    if isinstance(getattr(target, "vq", None), list):
        proxy = getattr(target, "proxy", None)
        return [(str(getattr(proxy, "addr", "")), str(getattr(proxy, "name", target.name)), target)]
    vdev = getattr(target, "vdev", None)
    if vdev is not None and isinstance(getattr(vdev, "vq", None), list):
        return [(str(getattr(target, "addr", "")), str(getattr(target, "name", "virtio")), vdev)]
    bus = getattr(target, "pci_bus", None)
    out = []
    for dev in getattr(bus, "devices", ()) or ():
        v = getattr(dev, "vdev", None) if dev is not None else None
        if v is not None and isinstance(getattr(v, "vq", None), list):
            out.append((str(dev.addr), str(dev.name), v))
    return out


def _ram(vdev: Any) -> Any:
    """The guest RAM the device reaches now (None outside a run that lends it)."""
    try:
        ram = vdev.dma_ram()
        if ram is not None and getattr(ram, "released", False):
            return None
        return ram
    except VbookError:
        return None


def _dev_state(ring: Any) -> dict[str, Any]:
    """QEMU's indices of one queue (those the ring model has)."""
    inflight = getattr(ring, "_inflight", None) or {}
    return {
        "last_avail_idx": int(getattr(ring, "last_avail_idx", 0)),
        "shadow_avail_idx": int(getattr(ring, "shadow_avail_idx", 0)),
        "used_idx": int(getattr(ring, "used_idx", 0)),
        "signalled_used": int(getattr(ring, "signalled_used", 0)),
        "signalled_used_valid": bool(getattr(ring, "signalled_used_valid", False)),
        "inuse": int(getattr(ring, "inuse", 0)),
        "inflight": sorted(h for h, n in inflight.items() if n > 0),
        # filled by virtqueue_fill, not yet published by virtqueue_flush
        "filled": max(0, int(getattr(ring, "inuse", 0)) - sum(n for n in inflight.values() if n > 0)),
        "event_idx": bool(getattr(ring, "event_idx", False)),
        "notification": bool(getattr(ring, "notification", True)),
        "broken": bool(getattr(ring, "broken", False)),
        "start": int(getattr(ring, "_start", 0)),
    }


# --- text of one state --------------------------------------------------------------------------

def _desc_flags(flags: int) -> str:
    names = [n for bit, n in ((NEXT, "NEXT"), (WRITE, "WRITE"), (INDIRECT, "INDIRECT")) if flags & bit]
    if flags & ~7:
        names.append(f"{flags & ~7:#x}")
    return "|".join(names) if names else "0"


def _flag_text(flags: int, name: str) -> str:
    out = [name] if flags & 1 else []
    if flags & ~1:
        out.append(f"{flags & ~1:#x}")
    return f"{flags:#x}" + (f" ({'|'.join(out)})" if out else "")


def _next_text(flags: int, nxt: int) -> str:
    return f"→ {nxt}" if flags & NEXT else f"{nxt} (no NEXT)"


def _back_window(points: list[tuple[int, int]], span: int, limit: int) -> list[int]:
    """Offsets back from the newest index (0 = the newest) to show: ``points`` are
    (offset, radius) neighbourhoods, clipped to ``[0, limit]``; sorted oldest first."""
    keep: set[int] = set()
    for b, r in points:
        for x in range(b - r, b + r + 1):
            if 0 <= x <= limit:
                keep.add(x)
    keep = {x for x in keep if x <= span}
    return sorted(keep, reverse=True)


def _with_gaps(backs: list[int], newest: int, make: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    prev = None
    for b in backs:
        if prev is not None and prev - b > 1:
            out.append({"gap": prev - b - 1})
        out.append(make((newest - b) & U16, b))
        prev = b
    return out


#: the rule each kind of ring follows, shown under the notes of its state
EVENT_HELP = {
    "event_idx":
        "With VIRTIO_RING_F_EVENT_IDX each side publishes the index it wants to hear about: "
        "used_event (after avail->ring[], written by the driver) and avail_event (after "
        "used->ring[], written by the device). QEMU's virtio_should_notify interrupts only if "
        "vring_need_event(used_event, used_idx, signalled_used); the driver's virtqueue_kick_prepare "
        "kicks only if vring_need_event(avail_event, new, old). The two flags are ignored.",
    "flags":
        "Without EVENT_IDX two flags decide: VRING_AVAIL_F_NO_INTERRUPT (driver → device: do not "
        "interrupt me) and VRING_USED_F_NO_NOTIFY (device → driver: do not kick me). used_event "
        "and avail_event are not used.",
}


class _Queue:
    """What the recorder noted about one queue."""

    def __init__(self, key: str, pci: str, dev: str, index: int, name: str):
        self.key, self.pci, self.dev, self.index, self.name = key, pci, dev, index, name
        self.snaps: list[dict[str, Any]] = []
        self._ids: dict[str, int] = {}
        #: [event index, snapshot id (-1: no ring), keys that changed]
        self.versions: list[list[Any]] = []
        self.hot: dict[str, dict[str, Any]] = {}
        self.layouts: list[dict[str, Any]] = []
        #: every distinct descriptor row, ring slot, index set … once; snapshots hold their ids
        self.parts: list[Any] = []
        self._part_ids: dict[str, int] = {}
        self.raw: Any = None
        self.chains: dict[int, list[int]] = {}
        self.state: dict[str, Any] | None = None
        self.dev_state: dict[str, Any] | None = None
        self.published = self.returned = 0        # entries ever seen in each ring (capped at num)

    def intern(self, part: Any) -> int:
        k = json.dumps(part, sort_keys=True)
        pid = self._part_ids.get(k)
        if pid is None:
            pid = self._part_ids[k] = len(self.parts)
            self.parts.append(part)
        return pid

    def pack(self, snap: dict[str, Any]) -> dict[str, Any]:
        """``snap`` with its rows, slots, indices and owner counts as ids into :attr:`parts`."""
        p = dict(snap)
        p["descs"] = [self.intern(r) for r in snap["descs"]]
        for area in ("avail", "used"):
            p[area] = {**snap[area], "slots": [self.intern(x) for x in snap[area]["slots"]]}
        for k in ("dev", "owners", "desc_note"):
            p[k] = self.intern(snap[k])
        p["event_note"] = [self.intern(t) for t in snap["event_note"]]
        return p

    def add(self, i: int, snap: dict[str, Any] | None, changed: list[str]) -> None:
        if snap is None:
            sid = -1
        else:
            snap = self.pack(snap)
            k = json.dumps(snap, sort_keys=True)
            sid = self._ids.get(k)
            if sid is None:
                sid = self._ids[k] = len(self.snaps)
                self.snaps.append(snap)
        if self.versions and self.versions[-1][0] == i:
            self.versions[-1] = [i, sid, sorted(set(self.versions[-1][2]) | set(changed))]
        elif not self.versions or self.versions[-1][1] != sid or changed:
            self.versions.append([i, sid, changed])


def _owners(st: dict[str, Any], dev: dict[str, Any], returned: int,
            chains: dict[int, list[int]]) -> dict[str, Any]:
    """Who holds each chain: {"owner": {desc: (who, head)}, "pending": [...], "used": [(k, id)]}.
    ``chains`` caches head -> chain for this descriptor table."""
    num, desc, av, us = st["num"], st["desc"], st["avail"], st["used"]
    lai, ai = dev["last_avail_idx"], av["idx"]
    pending_n = (ai - lai) & U16
    pending = [av["ring"][(lai + k) % num] for k in range(pending_n)] if pending_n <= num else []
    used = [((us["idx"] - 1 - b) & U16, us["ring"][(us["idx"] - 1 - b) % num][0])
            for b in range(min(returned, num))]
    filled = [us["ring"][(us["idx"] + j) % num][0] for j in range(min(dev["filled"], num))]
    owner: dict[int, tuple[str, int]] = {}

    def chain(h: int) -> list[int]:
        if h not in chains:
            chains[h] = follow_chain(desc, h) if 0 <= h < num else []
        return chains[h]

    for who, heads in (("device", dev["inflight"] + filled), ("avail", pending),
                       ("used", [h for _, h in used])):
        for h in heads:
            for d in chain(h):
                owner.setdefault(d, (who, h))
    return {"owner": owner, "pending": pending, "pending_n": pending_n, "used": used, "filled": filled,
            "chain": chain}


def _render(q: _Queue, st: dict[str, Any], dev: dict[str, Any], mem: Any) -> dict[str, Any]:
    """What the pane draws for one state of one queue."""
    num, desc, av, us = st["num"], st["desc"], st["avail"], st["used"]
    own = _owners(st, dev, q.returned, q.chains)
    owner, chain = own["owner"], own["chain"]
    lai, ai = dev["last_avail_idx"], av["idx"]
    pending_n = own["pending_n"]

    # descriptor rows: in flight, the latest used, what the device pops next, the rest
    order: list[int] = []
    for h in dev["inflight"] + own["filled"]:
        order += chain(h)
    for _, h in own["used"][:4]:
        order += chain(h)
    for h in own["pending"]:
        order += chain(h)
    for _, h in own["used"][4:]:
        order += chain(h)
    live = list(dict.fromkeys(order))
    shown = live[:DESC_ROWS]
    room = max(0, min(4, DESC_ROWS - len(shown)))
    for i in range(num):
        if room <= 0:
            break
        if i not in owner and any(desc[i]):         # written by the driver, in no ring entry
            shown.append(i)
            room -= 1
    rows: list[dict[str, Any]] = []
    prev = None
    for i in sorted(shown):
        if prev is not None and i - prev > 1:
            rows.append({"gap": i - prev - 1})
        addr, length, flags, nxt = desc[i]
        who, head = owner.get(i, ("driver", None))
        row: dict[str, Any] = {"i": i, "addr": f"{addr:#x}", "len": length, "flags": _desc_flags(flags),
                               "next": _next_text(flags, nxt), "owner": who, "head": head,
                               "is_head": head == i}
        if flags & INDIRECT:
            ents = read_indirect(mem, addr, length, IND_ROWS) if mem is not None else []
            row["ind"] = [{"i": k, "addr": f"{a:#x}", "len": n, "flags": _desc_flags(f),
                           "next": _next_text(f, x)} for k, (a, n, f, x) in enumerate(ents)]
            row["ind_more"] = max(0, length // 16 - len(ents))
        rows.append(row)
        prev = i
    counts = {"device": 0, "avail": 0, "used": 0, "driver": 0}
    for who, _ in owner.values():
        counts[who] += 1
    counts["driver"] = num - len(owner)
    hidden_live = len(live) - len([i for i in shown if i in owner])
    hidden_free = counts["driver"] - len([i for i in shown if i not in owner])
    parts = [f"{len(shown)} of {num} descriptors shown"]
    if hidden_live:
        parts.append(f"{hidden_live} more in a ring entry not shown")
    if hidden_free:
        parts.append(f"{hidden_free} free (the driver's) not shown")
    desc_note = " · ".join(parts)

    # the avail ring around last_avail_idx and avail->idx
    pub = min(q.published, num)
    pts = [(0, 0), (2, 2)]
    if pending_n <= num:
        pts.append((pending_n, 2))
        if pending_n <= 8:
            pts += [(b, 0) for b in range(pending_n + 1)]

    def avail_slot(k: int, b: int) -> dict[str, Any]:
        state = "next" if b == 0 else "pending" if b <= pending_n else "popped"
        return {"k": k, "slot": k % num, "head": av["ring"][k % num], "state": state}

    avail_slots = _with_gaps(_back_window(pts, pub, num), ai, avail_slot)

    # the used ring: what is filled but not published, the latest elements, signalled_used
    # and used_event; offsets count back from the next element QEMU fills
    ui = us["idx"]
    nf = min(dev["filled"], num)
    top = (ui + nf) & U16
    ret = min(q.returned, num - nf)
    upts = [(0, 0), (nf + 2, 2)] + [(b, 0) for b in range(min(nf, 8) + 1)]
    upts.append((nf + ((ui - dev["signalled_used"]) & U16), 1))
    if dev["event_idx"]:
        upts.append((nf + ((ui - av["used_event"]) & U16), 1))

    def used_slot(k: int, b: int) -> dict[str, Any]:
        i_, n_ = us["ring"][k % num]
        state = "next" if b == 0 else "filled" if b <= nf else "published"
        return {"k": k, "slot": k % num, "id": i_, "len": n_, "state": state}

    used_slots = _with_gaps(_back_window(upts, nf + ret, num), top, used_slot)

    if dev["event_idx"]:
        event_note = [f"used_event {av['used_event']}: the driver wants an interrupt once used->idx "
                      "moves past it",
                      f"avail_event {us['avail_event']}: the device wants a kick once avail->idx moves "
                      "past it"]
    else:
        no_int, no_notify = av["flags"] & 1, us["flags"] & 1
        event_note = [f"avail->flags NO_INTERRUPT {'set' if no_int else 'clear'}: the driver "
                      f"{'does not want' if no_int else 'wants'} interrupts",
                      f"used->flags NO_NOTIFY {'set' if no_notify else 'clear'}: the device "
                      f"{'does not want' if no_notify else 'wants'} kicks"]
    warn = []
    if pending_n > num:
        warn.append(f"avail->idx {ai} is {pending_n} entries ahead of last_avail_idx {lai}: more than "
                    f"num = {num} (QEMU: \"Guest moved used index\")")
    if dev["broken"]:
        warn.append("the device is broken (virtio_error): it pops and fills nothing until a reset")
    if us["idx"] != dev["used_idx"]:
        warn.append(f"used->idx in memory is {us['idx']}, QEMU's used_idx {dev['used_idx']}")
    return {
        "avail": {"flags": _flag_text(av["flags"], "NO_INTERRUPT"), "idx": ai,
                  "used_event": av["used_event"], "slots": avail_slots},
        "used": {"flags": _flag_text(us["flags"], "NO_NOTIFY"), "idx": ui,
                 "avail_event": us["avail_event"], "slots": used_slots},
        "dev": {k: dev[k] for k in ("last_avail_idx", "shadow_avail_idx", "used_idx", "signalled_used",
                                    "signalled_used_valid", "inuse", "notification", "event_idx",
                                    "broken")},
        "pending": pending_n if pending_n <= num else None,
        "descs": rows, "desc_note": desc_note, "owners": counts,
        "event_note": event_note, "warn": warn,
    }


def _diff(old: tuple[bytes, bytes, bytes] | None, new: tuple[bytes, bytes, bytes], num: int,
          od: dict[str, Any] | None, nd: dict[str, Any]) -> set[str]:
    """Keys of what changed between two states (``desc.3``, ``avail.slot.0``, ``used.idx``,
    ``dev.used_idx`` …), from the raw areas of :func:`ring_areas` and the indices."""
    if old is None or od is None:
        return set()
    out: set[str] = set()

    def entries(a: bytes, b: bytes, start: int, size: int, key: str) -> None:
        if a[start:start + size * num] == b[start:start + size * num]:
            return
        for k in range(num):
            o = start + size * k
            if a[o:o + size] != b[o:o + size]:
                out.add(f"{key}.{k}")

    entries(old[0], new[0], 0, 16, "desc")
    for area, (a, b), size, last in (("avail", (old[1], new[1]), 2, "used_event"),
                                     ("used", (old[2], new[2]), 8, "avail_event")):
        if a == b:
            continue
        for f, o in (("flags", 0), ("idx", 2), (last, 4 + size * num)):
            if a[o:o + 2] != b[o:o + 2]:
                out.add(f"{area}.{f}")
        entries(a, b, 4, size, f"{area}.slot")
    for f in ("last_avail_idx", "shadow_avail_idx", "used_idx", "signalled_used", "signalled_used_valid",
              "inuse", "notification", "event_idx", "broken"):
        if od[f] != nd[f]:
            out.add(f"dev.{f}")
    return out


def _shown_keys(snap: dict[str, Any]) -> set[str]:
    keys = {f"desc.{r['i']}" for r in snap["descs"] if "i" in r}
    keys |= {f"avail.slot.{s['slot']}" for s in snap["avail"]["slots"] if "slot" in s}
    keys |= {f"used.slot.{s['slot']}" for s in snap["used"]["slots"] if "slot" in s}
    return keys


# --- the recorder -------------------------------------------------------------------------------

class RingRecorder(TraceRecorder):
    """A :class:`~vbook.trace.TraceRecorder` that also notes every virtqueue's ring after each
    event: the three areas read from guest memory and QEMU's indices.

    ``RingRecorder(target)``: a :class:`~vbook.devices.machine.Machine` (every virtio
    device on its PCI bus, found again at each event, so devices added later count),
    a virtio-pci proxy such as :class:`~vbook.devices.virtio_net.VirtIONetPCI`, or a
    ``VirtIODevice``. Pass it as ``run_loop.run(guest, backend, machine=m,
    trace=RingRecorder(m))``, or set ``machine.ctx.trace = RingRecorder(machine)``.
    A queue is read only while it has a ring and the device reaches guest RAM (during
    a run); a new snapshot is kept only when the bytes or the indices changed.
    :meth:`freeze` puts the view into ``meta["ring_view"]`` (see :func:`ring_view`).
    Memory is read through its buffer: an access log is not touched.
    """

    def __init__(self, target: Any = None, **meta: Any):
        super().__init__(**meta)
        self.target = target
        self.queues: dict[str, _Queue] = {}

    def bind(self, target: Any) -> RingRecorder:
        """Note the queues of ``target`` from now on."""
        self.target = target
        return self

    def emit(self, actor: str, kind: str, label: str = "", **data: Any):  # type: ignore[override]
        ev = super().emit(actor, kind, label, **data)
        self._note(len(self.events) - 1, actor, kind, ev.data)
        return ev

    def freeze(self) -> Trace:
        """The trace, with the view in ``meta["ring_view"]`` (titled "virtqueues" unless
        the meta has a title: ``run_loop.run`` gives one)."""
        return Trace(tuple(self.events), {"title": "virtqueues", **self.meta, "ring_view": self.view()})

    def view(self) -> dict[str, Any]:
        """What the ``ring`` pane draws (see :func:`ring_view`)."""
        queues = []
        for q in self.queues.values():
            queues.append({"key": q.key, "pci": q.pci, "dev": q.dev, "index": q.index, "name": q.name,
                           "title": f"{q.name or 'vq'} (queue {q.index})", "layouts": q.layouts,
                           "born": q.versions[0][0] if q.versions else 0, "snaps": list(q.snaps),
                           "parts": list(q.parts), "versions": list(q.versions), "hot": dict(q.hot)})
        queues.sort(key=lambda x: (x["pci"], x["index"]))
        multi = len({x["pci"] for x in queues}) > 1
        for x in queues:
            if multi:
                x["title"] = f"{x['dev']} {x['pci']} · {x['title']}"
        kinds = {fn: FNS[fn] for fn in sorted({str(e.data.get("fn")) for e in self.events} & FNS.keys())}
        return {"recorded": True, "bound": self.target is not None, "events": len(self.events),
                "queues": queues, "kinds": kinds, "desc_rows": DESC_ROWS, "help": EVENT_HELP}

    # --- the notes ----------------------------------------------------------------------------
    def _note(self, i: int, actor: str, kind: str, data: Any) -> None:
        for pci, devname, vdev in _vdevs(self.target):
            ram = None
            for vq in vdev.vq:
                if not vq.num:
                    break                     # virtio_add_queue fills the queues from 0
                ring = vq.ring
                key = f"{pci}/{vq.queue_index}"
                q = self.queues.get(key)
                if ring is None:
                    if q is not None and q.versions and q.versions[-1][1] != -1:
                        q.add(i, None, [])
                        q.raw = q.state = q.dev_state = None
                    continue
                if ram is None:
                    ram = _ram(vdev)
                    if ram is None:
                        break
                if q is None:
                    q = self.queues[key] = _Queue(key, pci, devname, vq.queue_index, vq.name)
                self._snapshot(q, i, ring, ram)
        if actor == "device" and "vq" in data:
            key = f"{data.get('pci', '')}/{data['vq']}"
            q = self.queues.get(key)
            if q is None and not data.get("pci"):
                q = next((x for x in self.queues.values() if x.index == data["vq"]), None)
            if q is not None and q.state is not None:
                hot = self._hot(q, kind, data)
                if hot:
                    q.hot[str(i)] = hot

    def _snapshot(self, q: _Queue, i: int, ring: Any, ram: Any) -> None:
        lay = ring.layout
        try:
            areas = ring_areas(ram, lay)
        except VbookError:                    # memory released under us: keep what we had
            return
        dev = _dev_state(ring)
        raw = (lay.base, lay.num, areas, tuple((k, tuple(v) if isinstance(v, list) else v)
                                               for k, v in dev.items()))
        if raw == q.raw:
            return
        if q.raw is None or q.raw[2][0] != areas[0]:
            q.chains = {}                     # the descriptor table changed: chains again
        st = parse_areas(lay.num, *areas)
        old, od = q.state, q.dev_state
        old_areas = q.raw[2] if q.raw is not None else None
        if old is None or old["num"] != st["num"] or q.layouts[-1]["base"] != lay.base:
            q.layouts.append({"at": i, "num": lay.num, "base": lay.base, "desc": f"{lay.desc:#x}",
                              "avail": f"{lay.avail:#x}", "used": f"{lay.used:#x}",
                              "used_event": f"{lay.used_event:#x}", "avail_event": f"{lay.avail_event:#x}",
                              "size": lay.size, "align": lay.align})
            q.published = min(lay.num, (st["avail"]["idx"] - dev["start"]) & U16)
            q.returned = min(lay.num, (st["used"]["idx"] - dev["start"]) & U16)
            old = od = old_areas = None
        else:
            q.published = min(lay.num, q.published + ((st["avail"]["idx"] - old["avail"]["idx"]) & U16))
            q.returned = min(lay.num, q.returned + ((st["used"]["idx"] - old["used"]["idx"]) & U16))
        snap = _render(q, st, dev, ram)
        changed = _diff(old_areas, areas, lay.num, od, dev)
        changed = sorted(k for k in changed if not k.startswith(("desc.", "avail.slot.", "used.slot."))
                         or k in _shown_keys(snap))
        q.raw, q.state, q.dev_state = raw, st, dev
        q.add(i, snap, changed)

    def _hot(self, q: _Queue, kind: str, data: Any) -> dict[str, Any]:
        """What the event ``kind`` touched in queue ``q``: the chain, the slots, the fields."""
        st, dev = q.state, q.dev_state
        assert st is not None and dev is not None
        num, desc = st["num"], st["desc"]
        fn = data.get("fn", "")
        chain: list[int] = []
        ind: list[int] = []
        avail: list[int] = []
        used: list[int] = []
        fields: list[str] = []
        heads: list[int] = []
        text = ""
        if kind == "pop":
            descs = data.get("descs") or ()
            chain = [d["i"] for d in descs if d.get("table") == "ring"]
            ind = [d["i"] for d in descs if d.get("table") == "indirect"]
            heads = [data.get("head", 0)]
            avail = [(data.get("last_avail_idx", 0) - 1) & U16]
            fields = ["dev.last_avail_idx", "dev.shadow_avail_idx", "avail.idx", "dev.inuse"]
            if data.get("avail_event") is not None:
                fields.append("used.avail_event")
            text = (f"pops head {heads[0]} from avail->ring[{avail[0] % num}]: chain "
                    + " → ".join(map(str, chain)) + (f" (indirect table, {len(ind)} entries)" if ind else ""))
        elif kind == "fill":
            heads = [data.get("head", 0)]
            used_idx = data.get("used_idx", dev["used_idx"])
            slot = data.get("slot", used_idx % num)
            used = [(used_idx + (slot - used_idx) % num) & U16]
            fields = []
            text = (f"fills used->ring[{slot}] = {{id {heads[0]}, len {data.get('len', 0)}}} "
                    "(not published yet)")
        elif kind == "flush":
            old, new = data.get("old", 0), data.get("new", 0)
            n = (new - old) & U16
            used = [(old + k) & U16 for k in range(min(n, num))]
            heads = [st["used"]["ring"][k % num][0] for k in used]
            fields = ["used.idx", "dev.used_idx"]
            text = f"publishes used->idx {old} → {new}: head{'s' * (len(heads) != 1)} " \
                   + ", ".join(map(str, heads)) + " back to the driver"
        elif kind == "should_notify":
            fields = (["avail.used_event", "dev.signalled_used"] if dev["event_idx"] else ["avail.flags"])
            text = f"asks whether to interrupt: {'notify' if data.get('notify') else 'suppress'}"
        elif kind == "set_notification":
            fields = ["used.avail_event"] if dev["event_idx"] else ["used.flags"]
            fields.append("dev.notification")
            text = f"notifications {'on' if data.get('enabled') else 'off'}"
        elif kind == "irq":
            fields = ["used.idx"]
            text = "interrupts the guest"
        elif fn == "virtio_queue_notify":
            fields = ["avail.idx"]
            text = (f"the guest's kick: avail->idx {st['avail']['idx']}, "
                    f"last_avail_idx {dev['last_avail_idx']}")
        elif fn == "virtio_init_region_cache":
            text = "the ring is mapped"
        else:
            hs = data.get("heads")
            if isinstance(hs, (list, tuple)):
                heads = [h for h in hs if isinstance(h, int)]
            elif isinstance(data.get("head"), int):
                heads = [data["head"]]
            if heads:
                text = f"head{'s' * (len(heads) != 1)} " + ", ".join(map(str, heads))
        if not chain:
            for h in heads:
                if 0 <= h < num:
                    chain += follow_chain(desc, h)
        if not (chain or avail or used or fields or text):
            return {}
        hot = {"text": text, "heads": heads, "chain": sorted(set(chain)), "ind": ind, "avail": avail,
               "used": used, "fields": fields}
        return {k: v for k, v in hot.items() if v}


# --- the view -----------------------------------------------------------------------------------

def _plain_view(t: Trace) -> dict[str, Any]:
    return {"recorded": False, "bound": False, "events": len(t), "queues": [], "kinds": {},
            "desc_rows": DESC_ROWS, "help": EVENT_HELP}


def ring_view(obj: Any) -> tuple[Trace, dict[str, Any]]:
    """The trace and what the ``ring`` pane draws, from a :class:`RingRecorder`, a Trace or
    a result with a ``.trace`` (such as ``run_loop.run``'s ``LoopResult``).

    The view: ``queues``, one per queue that had a ring, each with ``snaps`` (the
    distinct states: ``avail``, ``used``, ``dev``, ``descs``, ``owners`` … as display
    values), ``versions`` (``[event index, snapshot id or -1, changed keys]``, a new one
    only when something changed), ``hot`` (event index → the chain, slots and fields
    that event touched) and ``layouts``; ``kinds`` (QEMU function → caption note). A
    trace not recorded with a RingRecorder gives ``recorded: False`` and no queues.
    """
    if isinstance(obj, RingRecorder):          # (the view straight from the notes: no round trip)
        return Trace(tuple(obj.events), {"title": "virtqueues", **obj.meta}), obj.view()
    if isinstance(obj, TraceRecorder):
        t = obj.freeze()
    else:
        t = as_trace(obj)
    view = t.meta.get("ring_view")
    meta = {k: v for k, v in dict(t.meta).items() if k != "ring_view"}
    if view is None:
        return Trace(t.events, meta), _plain_view(t)
    return Trace(t.events, meta), Trace((), {"v": view}).to_dict()["meta"]["v"]


def unpack(queue: dict[str, Any], snap: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of ``queue`` (one of the view's) with its parts put back in."""
    parts = queue["parts"]
    out = dict(snap)
    out["descs"] = [parts[k] for k in snap["descs"]]
    for area in ("avail", "used"):
        out[area] = {**snap[area], "slots": [parts[k] for k in snap[area]["slots"]]}
    for k in ("dev", "owners", "desc_note"):
        out[k] = parts[snap[k]]
    out["event_note"] = [parts[k] for k in snap["event_note"]]
    return out


def _at(versions: list[list[Any]], step: int) -> list[Any] | None:
    last = None
    for v in versions:
        if v[0] > step:
            break
        last = v
    return last


class RingView(RecordedViewPlayer):
    """Step through a run's virtqueues: descriptor table, avail and used rings, QEMU's indices.

    ``RingView(obj, step=0, speed=4.0)``: a :class:`RingRecorder`, or a Trace / result
    recorded with one (``run_loop.run(..., trace=RingRecorder(m))``). One card per
    queue; the view data is in ``trace["meta"]["ring_view"]`` (:func:`ring_view`).
    """

    _esm = esm_with(PANE_JS)
    _css = CSS.read_text(encoding="utf-8") + "\n" + PANE_CSS.read_text(encoding="utf-8")
    panes = traitlets.Unicode("ring events").tag(sync=True)
    view_key = "ring_view"

    @classmethod
    def _view_of(cls, obj: Any) -> tuple[Trace, dict[str, Any]]:
        return ring_view(obj)

    def state_at(self, step: int) -> dict[str, Any]:
        """Per queue name, what the pane shows at event ``step``: the snapshot (``avail``,
        ``used``, ``dev``, ``descs`` …, or None before the ring exists), ``changed`` (the
        keys that changed exactly at this event) and ``hot`` (what this event touched)."""
        out = {}
        for q in self.view.get("queues", []):
            v = _at(q["versions"], step)
            snap = unpack(q, q["snaps"][v[1]]) if v is not None and v[1] >= 0 else None
            out[q["name"] or q["key"]] = {
                "snap": snap, "changed": list(v[2]) if v is not None and v[0] == step else [],
                "hot": q["hot"].get(str(step)), "title": q["title"]}
        return out

    def __repr__(self) -> str:
        n = len(self.trace.get("events", []))
        view = self.view
        nq = len(view.get("queues", []))
        title = self.trace.get("meta", {}).get("title")
        head = f"trace={title!r}, " if title else ""
        tail = "" if view.get("recorded") else ", not recorded with a RingRecorder"
        return (f"RingView({head}{nq} queue{'s' * (nq != 1)}, {n} step{'s' * (n != 1)}{tail})")


def show_ring(obj: Any, *, step: int = 0, speed: float = 4.0) -> RingView:
    """The usual way to show the rings of a run: ``show_ring(run_loop.run(guest, backend,
    machine=m, trace=RingRecorder(m)))``, or ``show_ring(recorder)``."""
    return RingView(obj, step=step, speed=speed)


__all__ = ["DESC_ROWS", "EVENT_HELP", "FNS", "RingRecorder", "RingView", "ring_view", "show_ring",
           "unpack"]
