"""Run a NIC driver guest against the host and count what each packet cost.

:func:`run_ping` puts one NIC on the chapter-02 board — QEMU's e1000 or
virtio-net-pci — behind a host end (a real tap in a namespace of its own where
the machine allows one, else the Python peer :class:`~vbook.backends.loopback_net.LoopbackNet`;
:func:`vbook.backends.open_net` decides and says why), runs the matching driver
guest (:mod:`vbook.guests.e1000_ping`, :mod:`vbook.guests.virtio_net_ping`) on
unicorn or /dev/kvm, and returns the run with its :class:`PacketCounts`.

The counts are read off the run's trace, never typed:

* the **data phase** starts at the exit that put the first frame on the tap
  (the doorbell: TDT or QUEUE_NOTIFY) and ends with the guest's HLT; the exits
  before it are the bring-up (``setup_exits``);
* **exits** are the KVM_RUN returns of the data phase, without the ones the
  guest makes only to show a value (port 0xE0, pc-testdev) and without the HLT;
  on this board every one of them reaches QEMU (``KVM_EXIT_IO`` / ``KVM_EXIT_MMIO``:
  no in-kernel device, no ioeventfd), so ``user_exits == vm_exits``. On a real
  host KVM also exits for things QEMU never sees (external interrupts, EPT
  violations …); those are not counted here;
* **doorbells**: the exits from which a frame went out (an e1000 TDT write, a
  virtio QUEUE_NOTIFY write); **interrupts**: the interrupts the NIC asked for
  (virtio's ``virtio_irq``, the e1000's ``set_ics``) — whether the line was already
  up or not;
* **bytes copied**: frame bytes QEMU copies between guest memory and its own
  buffers (the e1000's ``pci_dma_read`` / ``pci_dma_write`` of packet buffers;
  virtio-net's RX copy into the guest's buffers — its TX sends iovecs that point
  into guest memory, so it copies nothing); **tap bytes**: what crosses the tap
  fd, which the host kernel copies (``tap_receive_iov`` writes, ``tap_send`` reads).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vbook.backends.loopback_net import open_net
from vbook.devices.machine import Machine
from vbook.errors import VbookError
from vbook.guests import e1000_ping, net_ping, virtio_net_ping
from vbook.guests.base import Guest
from vbook.guests.ports import TESTDEV_PORT
from vbook.models import run_loop
from vbook.net_trace import TAP_FNS, copied_bytes, tap_bytes
from vbook.trace import Trace, TraceRecorder

#: the NICs :func:`run_ping` knows: name -> (guest, QEMU -device model, uses vnet headers)
NICS: dict[str, tuple[Guest, str, bool]] = {
    "e1000": (e1000_ping.GUEST, "e1000", False),
    "virtio-net": (virtio_net_ping.GUEST, "virtio-net-pci", True),
}

COUNT_FIELDS = ("vm_exits", "user_exits", "mmio_exits", "pio_exits", "doorbells", "interrupts",
                "bytes_copied", "tap_bytes")


@dataclass(frozen=True)
class PacketCounts:
    """What one run's data phase cost (see the module docstring for each field)."""

    nic: str
    backend: str
    net: str
    packets: int
    vm_exits: int
    user_exits: int
    mmio_exits: int
    pio_exits: int
    doorbells: int
    interrupts: int
    bytes_copied: int
    tap_bytes: int
    setup_exits: int

    def per_packet(self, name: str) -> float:
        """``name`` (one of :data:`COUNT_FIELDS`) divided by the packets moved."""
        if name not in COUNT_FIELDS:
            raise VbookError(f"no count {name!r}; the counts are {', '.join(COUNT_FIELDS)}")
        return getattr(self, name) / self.packets if self.packets else 0.0

    def row(self) -> dict[str, Any]:
        """The per-packet figures as one table row."""
        out: dict[str, Any] = {"nic": self.nic, "packets": self.packets}
        out.update({f: round(self.per_packet(f), 2) for f in COUNT_FIELDS})
        out["setup_exits"] = self.setup_exits
        return out


@dataclass
class NetRun:
    """A driver guest's run: the loop's result, the counts, what the guest showed."""

    nic: str
    result: run_loop.LoopResult
    counts: PacketCounts
    #: the values the guest showed at port 0xE0, in order
    shown: list[int]
    #: "tap" or "loopback", and why not a tap when it is the loopback
    net: str
    why_not_tap: str | None = None
    #: the frames the guest sent and the ones it was given, in order
    sent: list[bytes] = field(default_factory=list)
    delivered: list[bytes] = field(default_factory=list)

    @property
    def trace(self) -> Trace:
        return self.result.trace

    @property
    def answered(self) -> bool:
        """Every frame got its answer (the guest never showed TIMEOUT) and it ended in HLT."""
        return self.result.end == run_loop.End.HLT and net_ping.TIMEOUT not in self.shown

    def __repr__(self) -> str:
        c = self.counts
        return (f"NetRun({self.nic} on {self.result.backend}, {self.net}: {len(self.sent)} frames "
                f"out, {len(self.delivered)} in, {c.vm_exits} exits in the data phase)")


def _is_show(x: Any) -> bool:
    """An exit the guest makes only to show a value (``out`` to the pc-testdev latch)."""
    return x.io is not None and x.io.port == TESTDEV_PORT


def counts(result: run_loop.LoopResult, nic: str, net: str = "?") -> PacketCounts:
    """The :class:`PacketCounts` of a finished driver run, from its trace and its exits."""
    # each event with the exit being handled while it was recorded (-1: before the first)
    at: list[tuple[int, Any]] = []
    n_exit = -1
    for ev in result.trace.events:
        if ev.actor == "kvm" and ev.kind == "exit":
            n_exit += 1
        else:
            at.append((n_exit, ev))
    start = next((i for i, ev in at if ev.data.get("fn") == "tap_receive_iov"), None)
    if start is None:
        raise VbookError(f"{result.guest} sent no frame: there is no data phase to count "
                         f"(the run ended: {result.end.value}, {result.detail})")
    packets = interrupts = copied = tap = 0
    doorbell_exits: set[int] = set()           # the exits from which a frame went out
    for i, ev in at:
        if i < start:                          # the bring-up
            continue
        fn = ev.data.get("fn")
        if fn in TAP_FNS:
            packets += 1
            if fn == "tap_receive_iov":
                doorbell_exits.add(i)
        elif fn in ("virtio_irq", "set_ics"):
            interrupts += 1
        tap += tap_bytes(ev)
        copied += copied_bytes(ev)
    exits = list(result.exits)
    data = [x for x in exits[start:] if not _is_show(x) and x.reason.name != "HLT"]
    setup = [x for x in exits[:start] if not _is_show(x)]
    return PacketCounts(nic=nic, backend=result.backend, net=net, packets=packets,
                        vm_exits=len(data), user_exits=len(data),
                        mmio_exits=sum(1 for x in data if x.mmio is not None),
                        pio_exits=sum(1 for x in data if x.io is not None),
                        doorbells=len(doorbell_exits), interrupts=interrupts,
                        bytes_copied=copied, tap_bytes=tap, setup_exits=len(setup))


def shown(result: run_loop.LoopResult) -> list[int]:
    """The values the guest wrote to the pc-testdev latch (port 0xE0), in order."""
    return [int.from_bytes(x.io.data, "little") for x in result.exits if _is_show(x)]


def _frames(trace: Trace, fn: str) -> list[bytes]:
    """The frames of the ``fn`` events (``tap_receive_iov``, ``tap_send``; without a vnet header:
    the event keeps that apart, as ``vnet_hdr``)."""
    return [bytes.fromhex(ev.data["frame"]) for ev in trace.events
            if ev.data.get("fn") == fn and "frame" in ev.data]


def run_ping(nic: str = "virtio-net", backend: str = "auto", net: str = "tap",
             event_idx: bool = True, endpoint: Any = None, trace: TraceRecorder | None = None,
             machine: Machine | None = None) -> NetRun:
    """Run ``nic``'s driver guest against the host and count the data phase.

    ``nic``: "e1000" or "virtio-net"; ``backend``: "unicorn", "kvm" or "auto";
    ``net``: "tap" (a real tap when the machine allows one, else the loopback, and
    :attr:`NetRun.why_not_tap` says why) or "loopback"; ``event_idx=False`` is
    ``-device virtio-net-pci,event_idx=off`` (the device does not offer
    VIRTIO_RING_F_EVENT_IDX, so the driver does without). ``endpoint`` is a host end
    already open (the caller closes it); otherwise one is opened and closed here.
    ``trace`` records the run (e.g. a :class:`vbook.widgets.ring.RingRecorder`),
    ``machine`` a board to put the NIC on (a fresh one by default).
    """
    if nic not in NICS:
        raise VbookError(f"no NIC {nic!r}; known: {', '.join(NICS)}")
    guest, model, vnet_hdr = NICS[nic]
    if not event_idx and nic != "virtio-net":
        raise VbookError("event_idx is a virtio feature; the e1000 has no such thing")
    own = endpoint is None
    if own:
        endpoint = open_net(prefer=net, vnet_hdr=vnet_hdr)
    try:
        m = machine if machine is not None else Machine()
        props = None if event_idx or nic != "virtio-net" else {"event_idx": False}
        m.add_nic(endpoint, model=model, props=props)
        result = run_loop.run(guest, backend, machine=m, trace=trace)
    finally:
        if own:
            endpoint.close()
    kind = str(getattr(endpoint, "kind", "?"))
    label = nic if nic == "e1000" else f"virtio-net{' + EVENT_IDX' if event_idx else ''}"
    return NetRun(nic=label, result=result, counts=counts(result, label, kind),
                  shown=shown(result), net=kind, why_not_tap=getattr(endpoint, "why_not_tap", None),
                  sent=_frames(result.trace, "tap_receive_iov"),
                  delivered=_frames(result.trace, "tap_send"))


def journey(trace: Trace, first: str, last: str, keep: Iterable[str],
            back_to: str | None = None) -> list[tuple[str, str, str]]:
    """One frame's way through QEMU, as (function, thread, label) per step: the events from
    the first ``first`` event (or, with ``back_to``, from the last ``back_to`` before it) up
    to the next ``last``, keeping the functions in ``keep`` and one line per run of the same
    function. Raises :class:`~vbook.errors.VbookError` when ``first`` or ``last`` is not there."""
    evs = trace.events
    fns = [ev.data.get("fn") for ev in evs]
    keep = set(keep)
    if first not in fns:
        raise VbookError(f"no {first} event in the trace")
    i = fns.index(first)
    if back_to is not None:
        before = [k for k in range(i) if fns[k] == back_to]
        if not before:
            raise VbookError(f"no {back_to} event before the first {first}")
        i = before[-1]
    if last not in fns[i:]:
        raise VbookError(f"no {last} event after the first {first}")
    j = fns.index(last, i)
    out: list[tuple[str, str, str]] = []
    for ev in evs[i:j + 1]:
        f = ev.data.get("fn")
        if f in keep and not (out and out[-1][0] == f):
            out.append((f, str(ev.data.get("thread", "")), ev.label))
    return out


def compare(backend: str = "auto", net: str = "loopback") -> list[NetRun]:
    """The three configurations of the comparison: e1000, virtio-net without and with
    EVENT_IDX — each run once, the same frames, the same host end kind."""
    return [run_ping("e1000", backend, net),
            run_ping("virtio-net", backend, net, event_idx=False),
            run_ping("virtio-net", backend, net, event_idx=True)]


def table(runs: Iterable[NetRun]) -> list[dict[str, Any]]:
    """One row of per-packet figures per run (:meth:`PacketCounts.row`)."""
    return [r.counts.row() for r in runs]


__all__ = ["COUNT_FIELDS", "NICS", "NetRun", "PacketCounts", "compare", "counts", "journey", "run_ping",
           "shown", "table"]
