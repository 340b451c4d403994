"""QEMU's network layer in miniature: a NIC and its backend as two paired NetClientStates.

QEMU 9.2.4 net/net.c, net/queue.c, include/net/net.h, net/eth.c. Every
network endpoint in QEMU is a ``NetClientState`` with a ``NetClientInfo``
(its ``receive`` and ``can_receive`` callbacks) and a ``peer``: the NIC
front end (``qemu_new_nic``: an e1000, a virtio-net) is paired with one
backend (``qemu_new_net_client``: a tap, a socket, user networking), and a
frame one side sends is *received* by the other:

* guest → host: the device calls ``qemu_send_packet(nc, buf)`` →
  ``qemu_send_packet_async`` → ``qemu_net_queue_send`` on the peer's incoming
  queue → ``qemu_deliver_packet_iov`` → the peer's ``receive`` (for a tap,
  ``tap_receive_iov`` → ``writev`` on the tap fd: here :meth:`NetBackend.send`);
* host → guest: the backend's fd handler (``tap_send`` in the main loop:
  here :func:`net_backend_poll`) reads a frame (:meth:`NetBackend.recv`),
  pads a short one to 60 bytes (``eth_pad_short_frame``, when the peer wants
  padding: ``net_peer_needs_padding``) and calls ``qemu_send_packet_async``
  towards the NIC, whose ``receive`` is the device's (``e1000_receive``).

A NIC that cannot take a frame now (``can_receive`` false: receive disabled,
no free buffers) gets it *queued*, not dropped (``qemu_net_queue_append``,
at most ``nq_maxlen`` = 10000 without a callback); the device calls
``qemu_flush_queued_packets`` when it can receive again (e1000: a write to
RDT). A ``receive`` that returns 0 means "not now": the packet is queued and
``receive_disabled`` is set until the next flush.

Everything is recorded in the context's trace with QEMU's function names
(actor ``qemu`` for the net layer, ``host`` for the backend's side of the
wire), each event carrying the frame as hex (``frame``), its length, the
sender and the receiver.

Left out: filters (``-object filter-*``), hubs (``-net`` VLANs), multiqueue,
the vnet header (``QEMU_NET_PACKET_FLAG_RAW``), ``receive_iov`` scatter lists
(frames are one ``bytes``), link-state changes from the monitor (``set_link``
is :func:`qemu_set_link` here), and the VM run state in
``qemu_can_send_packet`` (the VM counts as running).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from vbook.models.qemu_memory import RunContext

FILE = "net/net.c"
QUEUE_FILE = "net/queue.c"
TAP_FILE = "net/tap.c"

#: include/net/eth.h: minimum frame length without FCS; what ``eth_pad_short_frame`` pads to
ETH_ZLEN = 60
ETH_ALEN = 6
ETH_HLEN = 14
ETH_FCS_LEN = 4
ETH_MTU = 1500
#: net/queue.c ``qemu_new_net_queue``
NQ_MAXLEN = 10000
#: net/tap.c ``tap_send``: at most this many frames per call, so the main loop is not hogged
TAP_SEND_BUDGET = 50
#: net/net.c ``qemu_macaddr_default_if_unset``: 52:54:00:12:34:xx, xx from 0x56 up
MAC_BASE = bytes.fromhex("525400123400")
MAC_FIRST = 0x56


@runtime_checkable
class NetBackend(Protocol):
    """The host end of the link, as :class:`vbook.backends.tap.Tap` and
    :class:`vbook.backends.loopback_net.LoopbackNet` offer it (and :class:`MemoryBackend`).

    ``send(frame)`` puts a frame the guest transmitted on the host side (for a
    tap: ``write`` on its fd); ``recv(timeout)`` returns the next frame for the
    guest, or None if none came within ``timeout`` seconds.
    """

    def send(self, frame: bytes) -> Any: ...

    def recv(self, timeout: float = ...) -> bytes | None: ...


@dataclass(eq=False)
class MemoryBackend:
    """A backend that is a pair of lists: frames the guest sent, frames waiting for it.

    ``sent`` records every frame in the order QEMU handed it over (a tap would
    have written it to the host kernel); :meth:`put` queues a frame for the
    guest that :meth:`recv` gives out (what a tap would have read).
    """

    kind = "memory"

    sent: list[bytes] = field(default_factory=list)
    to_guest: deque[bytes] = field(default_factory=deque)

    def send(self, frame: bytes) -> int:
        self.sent.append(bytes(frame))
        return len(frame)

    def recv(self, timeout: float = 0.0) -> bytes | None:
        return self.to_guest.popleft() if self.to_guest else None

    def put(self, *frames: bytes) -> None:
        """Queue frames for the guest (they go in on the next :func:`net_backend_poll`)."""
        self.to_guest.extend(bytes(f) for f in frames)

    def __repr__(self) -> str:
        return f"MemoryBackend({len(self.sent)} sent, {len(self.to_guest)} waiting for the guest)"


@dataclass(frozen=True)
class NetClientInfo:
    """``NetClientInfo`` (include/net/net.h): the client's type and callbacks.

    ``receive(nc, buf) -> int``: bytes taken, 0 for "not now" (queue it),
    negative for "dropped"; ``can_receive(nc) -> bool``.
    """

    type: str                         # NET_CLIENT_DRIVER_NIC → "nic", "tap", "memory" …
    receive: Callable[[NetClientState, bytes], int]
    can_receive: Callable[[NetClientState], bool] | None = None
    link_status_changed: Callable[[NetClientState], None] | None = None
    #: the C name of ``receive``, for the trace (``e1000_receive_iov``, ``tap_receive_iov`` …)
    receive_name: str = "receive"


@dataclass(eq=False)
class NetPacket:
    """``struct NetPacket`` (net/queue.c): a queued frame and who sent it."""

    sender: NetClientState | None
    data: bytes
    sent_cb: Callable[[NetClientState, int], None] | None = None


@dataclass(eq=False)
class NetQueue:
    """``struct NetQueue`` (net/queue.c): frames waiting for one client (its incoming queue)."""

    opaque: NetClientState
    nq_maxlen: int = NQ_MAXLEN
    packets: deque[NetPacket] = field(default_factory=deque)
    delivering: bool = False

    @property
    def nq_count(self) -> int:
        return len(self.packets)


@dataclass(eq=False)
class NetClientState:
    """``struct NetClientState``: one end of a link; ``opaque`` is the NIC's device state."""

    info: NetClientInfo
    model: str
    name: str
    ctx: RunContext = field(default_factory=RunContext, repr=False)
    peer: NetClientState | None = field(default=None, repr=False)
    link_down: bool = False
    receive_disabled: bool = False
    do_not_pad: bool = False
    opaque: Any = field(default=None, repr=False)
    #: the backend object behind a host-side client (``tap``, ``memory``)
    backend: Any = field(default=None, repr=False)
    #: a backend's fd is polled (net/tap.c ``tap_read_poll``): off while the NIC holds a
    #: queued frame of ours, on again when it went in (``tap_send_completed``)
    read_poll: bool = True
    #: net/tap.c ``TAPState.using_vnet_hdr``: the NIC reads and writes the backend's vnet
    #: header itself (set by ``tap_set_vnet_hdr_len``); until then a backend opened with
    #: vnet headers gets a zeroed one put in front of each frame and has it cut off its own
    using_vnet_hdr: bool = False
    incoming_queue: NetQueue = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.incoming_queue = NetQueue(self)

    def __repr__(self) -> str:
        peer = self.peer.name if self.peer is not None else None
        return f"NetClientState({self.name!r}, {self.info.type}, peer={peer!r})"

    def emit(self, actor: str, kind: str, label: str, fn: str, file: str = FILE,
             **data: Any) -> None:
        self.ctx.emit(actor, kind, label, fn=fn, file=file, client=self.name, **data)


def frame_data(buf: bytes, hdr_len: int = 0) -> dict[str, Any]:
    """``len`` (bytes through the fd) and ``frame`` (hex); with a vnet header in front,
    ``frame`` is what follows it and ``vnet_hdr`` the header."""
    if hdr_len:
        return {"len": len(buf), "frame": bytes(buf[hdr_len:]).hex(),
                "vnet_hdr": bytes(buf[:hdr_len]).hex()}
    return {"len": len(buf), "frame": bytes(buf).hex()}


def _vnet_hdr_len(nc: NetClientState | None) -> int:
    """The vnet header in front of each frame on the fd, once the NIC uses it (else 0)."""
    if nc is not None and nc.using_vnet_hdr and getattr(nc.backend, "vnet_hdr", False):
        return int(getattr(nc.backend, "hdr_size", 0))
    return 0


def link_hdr_len(a: NetClientState | None, b: NetClientState | None) -> int:
    """The vnet header a buffer between ``a`` and ``b`` carries: the tap end's, if it uses one."""
    return max(_vnet_hdr_len(a), _vnet_hdr_len(b))


def _what(buf: bytes, hl: int) -> str:
    return _head(buf[hl:]) + (f" after a {hl}-byte vnet header" if hl else "")


def _head(buf: bytes) -> str:
    """A short description of a frame: destination, source, EtherType."""
    if len(buf) < ETH_HLEN:
        return f"{len(buf)} bytes"
    dst, src = buf[0:6].hex(":"), buf[6:12].hex(":")
    return f"{len(buf)} bytes {src} → {dst} type {int.from_bytes(buf[12:14], 'big'):#06x}"


def qemu_net_client_setup(nc: NetClientState, peer: NetClientState | None) -> None:
    """net/net.c: pair ``nc`` with ``peer`` (each one's ``peer`` is the other)."""
    if peer is not None:
        assert peer.peer is None, f"{peer.name} is already paired"
        nc.peer, peer.peer = peer, nc


def qemu_new_net_client(info: NetClientInfo, peer: NetClientState | None, model: str, name: str,
                        ctx: RunContext | None = None, backend: Any = None) -> NetClientState:
    """net/net.c: a backend client (``-netdev tap,id=…``)."""
    nc = NetClientState(info, model, name, ctx or RunContext(), backend=backend)
    qemu_net_client_setup(nc, peer)
    return nc


def qemu_new_nic(info: NetClientInfo, peer: NetClientState | None, model: str, name: str,
                 opaque: Any, ctx: RunContext | None = None) -> NetClientState:
    """net/net.c: the NIC's client (one queue), paired with its ``-netdev`` (``peer``).

    Returns what QEMU's ``qemu_get_queue(nic)`` would; ``opaque`` is the device
    (``qemu_get_nic_opaque``).
    """
    nc = NetClientState(info, model, name, ctx or RunContext(), opaque=opaque)
    qemu_net_client_setup(nc, peer)
    return nc


def qemu_get_nic_opaque(nc: NetClientState) -> Any:
    return nc.opaque


def qemu_macaddr_default_if_unset(macaddr: bytes, used: set[int]) -> bytes:
    """net/net.c: a NIC without ``mac=`` gets 52:54:00:12:34:56, the next one …:57, and so on.

    QEMU keeps the table of used last bytes in a static array; here the
    caller (the machine) owns it, so every machine starts again at :56.
    """
    if macaddr and any(macaddr):
        if macaddr[:5] == MAC_BASE[:5]:
            used.add(macaddr[5])
        return bytes(macaddr)
    for last in range(MAC_FIRST, 0xFF):
        if last not in used:
            used.add(last)
            return MAC_BASE[:5] + bytes([last])
    return MAC_BASE[:5] + b"\xff"


def eth_pad_short_frame(buf: bytes) -> bytes:
    """net/eth.c: a frame shorter than ``ETH_ZLEN`` (60) padded with zeros to 60 bytes."""
    if len(buf) >= ETH_ZLEN:
        return bytes(buf)
    return bytes(buf) + bytes(ETH_ZLEN - len(buf))


def net_peer_needs_padding(nc: NetClientState) -> bool:
    """include/net/net.h: pad for a peer unless it said ``do_not_pad`` (virtio-net does)."""
    return nc.peer is not None and not nc.peer.do_not_pad


def qemu_can_receive_packet(nc: NetClientState) -> bool:
    """net/net.c: not while ``receive_disabled``, nor when ``can_receive`` says no."""
    if nc.receive_disabled:
        return False
    if nc.info.can_receive is not None and not nc.info.can_receive(nc):
        return False
    return True


def qemu_can_send_packet(sender: NetClientState) -> bool:
    """net/net.c: a sender may send if it has no peer or the peer can receive (VM running)."""
    if sender.peer is None:
        return True
    return qemu_can_receive_packet(sender.peer)


def qemu_deliver_packet_iov(sender: NetClientState | None, buf: bytes,
                            nc: NetClientState) -> int:
    """net/net.c: hand ``buf`` to ``nc``'s ``receive``; a 0 return disables receiving."""
    if nc.link_down:
        nc.emit("qemu", "net", f"qemu_deliver_packet_iov: {nc.name} link is down, frame dropped",
                "qemu_deliver_packet_iov", **frame_data(buf))
        return len(buf)
    if nc.receive_disabled:
        return 0
    nc.ctx.stack.append("qemu_deliver_packet_iov")
    hl = link_hdr_len(sender, nc)
    try:
        nc.emit("qemu", "net", f"qemu_deliver_packet_iov → {nc.info.receive_name}({nc.name}, "
                f"{_what(buf, hl)})", "qemu_deliver_packet_iov", receiver=nc.name,
                sender=sender.name if sender else None, **frame_data(buf, hl))
        ret = nc.info.receive(nc, buf)
    finally:
        nc.ctx.stack.pop()
    if ret == 0:
        nc.receive_disabled = True
    return ret


def qemu_net_queue_append(queue: NetQueue, sender: NetClientState | None, buf: bytes,
                          sent_cb: Callable[[NetClientState, int], None] | None) -> None:
    """net/queue.c: keep the frame for later; a full queue drops it unless there is a callback."""
    nc = queue.opaque
    if queue.nq_count >= queue.nq_maxlen and sent_cb is None:
        nc.emit("qemu", "net", f"qemu_net_queue_append: {nc.name}'s queue is full "
                f"({queue.nq_maxlen}): frame dropped", "qemu_net_queue_append", QUEUE_FILE,
                queued=queue.nq_count, dropped=True, **frame_data(buf))
        return
    queue.packets.append(NetPacket(sender, bytes(buf), sent_cb))
    nc.emit("qemu", "net", f"qemu_net_queue_append: {nc.name} cannot receive now; frame queued "
            f"({queue.nq_count} waiting)", "qemu_net_queue_append", QUEUE_FILE,
            queued=queue.nq_count, dropped=False, **frame_data(buf))


def qemu_net_queue_deliver(queue: NetQueue, sender: NetClientState | None, buf: bytes) -> int:
    """net/queue.c"""
    queue.delivering = True
    try:
        return qemu_deliver_packet_iov(sender, buf, queue.opaque)
    finally:
        queue.delivering = False


def qemu_net_queue_send(queue: NetQueue, sender: NetClientState, buf: bytes,
                        sent_cb: Callable[[NetClientState, int], None] | None) -> int:
    """net/queue.c: deliver now if the receiver can take it, else queue; 0 means queued."""
    if queue.delivering or not qemu_can_send_packet(sender):
        qemu_net_queue_append(queue, sender, buf, sent_cb)
        return 0
    ret = qemu_net_queue_deliver(queue, sender, buf)
    if ret == 0:
        qemu_net_queue_append(queue, sender, buf, sent_cb)
        return 0
    qemu_net_queue_flush(queue)
    return ret


def qemu_net_queue_flush(queue: NetQueue) -> bool:
    """net/queue.c: deliver queued frames in order until one is refused (0); True if emptied."""
    if queue.delivering:
        return False
    while queue.packets:
        packet = queue.packets.popleft()
        ret = qemu_net_queue_deliver(queue, packet.sender, packet.data)
        if ret == 0:
            queue.packets.appendleft(packet)
            return False
        if packet.sent_cb is not None and packet.sender is not None:
            packet.sent_cb(packet.sender, ret)
    return True


def qemu_flush_queued_packets(nc: NetClientState) -> None:
    """net/net.c: ``nc`` can receive again: deliver what was queued for it."""
    nc.receive_disabled = False
    if nc.incoming_queue.packets:
        nc.emit("qemu", "net", f"qemu_flush_queued_packets({nc.name}): "
                f"{nc.incoming_queue.nq_count} queued", "qemu_flush_queued_packets",
                queued=nc.incoming_queue.nq_count)
    nc.ctx.stack.append("qemu_flush_queued_packets")
    try:
        qemu_net_queue_flush(nc.incoming_queue)
    finally:
        nc.ctx.stack.pop()


def qemu_send_packet_async(sender: NetClientState, buf: bytes,
                           sent_cb: Callable[[NetClientState, int], None] | None = None) -> int:
    """net/net.c: send ``buf`` to ``sender``'s peer; its length, or 0 if it was queued."""
    if sender.link_down or sender.peer is None:
        sender.emit("qemu", "net", f"qemu_send_packet_async({sender.name}): "
                    f"{'link down' if sender.link_down else 'no peer'}, frame dropped",
                    "qemu_send_packet_async", **frame_data(buf))
        return len(buf)
    sender.ctx.stack.append("qemu_send_packet_async")
    try:
        return qemu_net_queue_send(sender.peer.incoming_queue, sender, bytes(buf), sent_cb)
    finally:
        sender.ctx.stack.pop()


def qemu_send_packet(nc: NetClientState, buf: bytes) -> int:
    """net/net.c: ``qemu_send_packet_async`` without a completion callback."""
    peer = nc.peer.name if nc.peer is not None else None
    hl = link_hdr_len(nc, nc.peer)
    nc.emit("qemu", "net", f"qemu_send_packet({nc.name} → {peer}, {_what(buf, hl)})",
            "qemu_send_packet", sender=nc.name, receiver=peer, **frame_data(buf, hl))
    nc.ctx.stack.append("qemu_send_packet")
    try:
        return qemu_send_packet_async(nc, buf, None)
    finally:
        nc.ctx.stack.pop()


def qemu_receive_packet(nc: NetClientState, buf: bytes) -> int:
    """net/net.c: loop ``buf`` back into ``nc`` itself (the e1000's PHY loopback)."""
    if not qemu_can_receive_packet(nc):
        return 0
    if nc.incoming_queue.delivering:
        return 0
    return qemu_net_queue_deliver(nc.incoming_queue, None, bytes(buf))


def qemu_set_link(nc: NetClientState, up: bool) -> None:
    """net/net.c ``qmp_set_link``: set ``link_down`` on both ends and tell the NIC."""
    for c in (nc, nc.peer):
        if c is None:
            continue
        c.link_down = not up
        if c.info.link_status_changed is not None:
            c.info.link_status_changed(c)


# --- a backend as a NetClientState (net/tap.c) ----------------------------------------------------

def tap_receive_iov(nc: NetClientState, buf: bytes) -> int:
    """net/tap.c ``tap_receive_iov`` → ``tap_write_packet``: a frame from the NIC goes out on the
    host side (``writev`` on the tap fd).

    A host end with a wire format of its own (``write_raw``: :class:`~vbook.backends.tap.Tap`,
    :class:`~vbook.backends.loopback_net.LoopbackNet`) gets ``buf`` as is once the NIC uses the
    vnet header (``using_vnet_hdr``: ``buf`` starts with it); before that its ``send`` puts a
    zeroed header in front when it has vnet headers — QEMU's ``host_vnet_hdr_len &&
    !using_vnet_hdr`` case. Any other backend gets ``buf`` through ``send``.
    """
    hl = _vnet_hdr_len(nc)
    nc.emit("host", "net", f"tap_receive_iov: {type(nc.backend).__name__}.send({_what(buf, hl)})",
            "tap_receive_iov", TAP_FILE, **frame_data(buf, hl))
    write_raw = getattr(nc.backend, "write_raw", None)
    if nc.using_vnet_hdr and write_raw is not None:
        write_raw(bytes(buf))
    else:
        nc.backend.send(bytes(buf))
    return len(buf)


def tap_set_vnet_hdr_len(nc: NetClientState, length: int) -> None:
    """net/tap.c: ``TUNSETVNETHDRSZ(length)`` on the backend, and ``using_vnet_hdr = true``."""
    set_len = getattr(nc.backend, "set_vnet_hdr_len", None)
    if set_len is not None:
        set_len(length)
    elif hasattr(nc.backend, "hdr_size"):
        nc.backend.hdr_size = length
    nc.using_vnet_hdr = True


def _backend_read(nc: NetClientState, timeout: float) -> bytes | None:
    """``tap_read_packet``, and with ``host_vnet_hdr_len && !using_vnet_hdr`` the header cut
    off (a host end's ``recv`` does that); raw reads once the NIC uses the header."""
    read_raw = getattr(nc.backend, "read_raw", None)
    if nc.using_vnet_hdr and read_raw is not None:
        return read_raw(timeout)
    return nc.backend.recv(timeout)


def _tap_info(kind: str) -> NetClientInfo:
    return NetClientInfo(type=kind, receive=tap_receive_iov, receive_name="tap_receive_iov")


def net_init_backend(backend: NetBackend, name: str, ctx: RunContext | None = None) -> NetClientState:
    """``-netdev tap,id=name`` with ``backend`` standing in for the tap fd."""
    kind = getattr(backend, "kind", "tap")
    return qemu_new_net_client(_tap_info(str(kind)), None, str(kind), name, ctx, backend=backend)


def net_backend_poll(nc: NetClientState, timeout: float = 0.0,
                     budget: int = TAP_SEND_BUDGET) -> int:
    """net/tap.c ``tap_send``: read frames from the backend and send them to the NIC.

    What the main loop does when the tap fd is readable: up to ``budget``
    frames, each padded to 60 bytes if the NIC wants it, sent with
    ``qemu_send_packet_async``; it stops early when the NIC queued a frame
    (``tap_read_poll(s, false)``: QEMU stops reading the fd until
    ``tap_send_completed``). ``timeout`` is how long the first ``recv`` may
    wait. Returns how many frames were read.
    """
    if not nc.read_poll:
        return 0
    ctx = nc.ctx
    saved = ctx.thread, ctx.bql, list(ctx.stack)
    ctx.thread, ctx.bql, ctx.stack[:] = "main", True, ["main_loop_wait", "tap_send"]
    packets = 0
    try:
        while packets < budget:
            frame = _backend_read(nc, timeout if packets == 0 else 0.0)
            if frame is None:
                break
            frame = bytes(frame)
            hl = _vnet_hdr_len(nc)
            nc.emit("host", "net", f"tap_send: {type(nc.backend).__name__}.recv() gave "
                    f"{_what(frame, hl)}",
                    "tap_send", TAP_FILE, **frame_data(frame, hl))
            if net_peer_needs_padding(nc) and len(frame) < ETH_ZLEN:
                padded = eth_pad_short_frame(frame)
                nc.emit("qemu", "net", f"eth_pad_short_frame: {len(frame)} → {ETH_ZLEN} bytes",
                        "eth_pad_short_frame", "net/eth.c", **frame_data(padded))
                frame = padded
            packets += 1
            size = qemu_send_packet_async(nc, frame, _tap_send_completed)
            if size == 0:
                nc.read_poll = False  # tap_read_poll(s, false)
                break
    finally:
        ctx.thread, ctx.bql = saved[0], saved[1]
        ctx.stack[:] = saved[2]
    return packets


def _tap_send_completed(nc: NetClientState, length: int) -> None:
    """net/tap.c ``tap_send_completed``: the queued frame went in; the fd is polled again."""
    nc.read_poll = True


__all__ = [
    "ETH_ALEN", "ETH_FCS_LEN", "ETH_HLEN", "ETH_MTU", "ETH_ZLEN", "MAC_BASE", "NQ_MAXLEN",
    "MemoryBackend", "NetBackend", "NetClientInfo", "NetClientState", "NetPacket", "NetQueue",
    "eth_pad_short_frame", "net_backend_poll", "net_init_backend", "net_peer_needs_padding",
    "qemu_can_receive_packet", "qemu_can_send_packet", "qemu_deliver_packet_iov",
    "qemu_flush_queued_packets", "qemu_get_nic_opaque", "qemu_macaddr_default_if_unset",
    "qemu_net_queue_flush", "qemu_net_queue_send", "qemu_new_net_client", "qemu_new_nic",
    "qemu_receive_packet", "qemu_send_packet", "qemu_send_packet_async", "qemu_set_link",
    "frame_data", "link_hdr_len", "tap_receive_iov", "tap_set_vnet_hdr_len",
]
