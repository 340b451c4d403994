"""A second machine on the bridge: a thread that answers on another port of a Linux bridge.

:class:`~vbook.backends.tap.Bridge` makes taps that are ports of one bridge in a namespace
of the book's own — the usual layout (``-netdev bridge,br=br0``, or a tap the management
stack enslaves) where the host is a switch between VMs. :class:`BridgePeer` puts a station
on one port: a thread that reads the port's fd, gives each frame to
:class:`~vbook.backends.loopback_net.HostStack` (the same Python model of Linux's answers
the loopback uses) and writes the answers back. A guest on another port then talks to it
*through the kernel's bridge*: the multicast NS flooded (``br_flood``), the unicast frames
forwarded to the port each MAC was learned on (``br_fdb_update``, ``br_forward``).

The peer answers from a thread, so its answers come in their own time: a run against it is
not deterministic the way a loopback run is (the guest polls until they come).
"""

from __future__ import annotations

import ipaddress
import os
import select
import threading
from typing import Any

from vbook.backends.loopback_net import HostStack
from vbook.backends.tap import Tap
from vbook.errors import VbookError
from vbook.models import net_frames as nf


class BridgePeer:
    """Answer on ``port`` (a bridge port's :class:`Tap`, without vnet headers) as a host with
    ``mac`` and ``ip6`` would. Use as a context manager; :attr:`log` is the stack's log,
    :attr:`seen` every frame the port delivered."""

    def __init__(self, port: Tap, mac: str = nf.HOST_MAC, ip6: str = nf.HOST_IP6):
        if port.vnet_hdr:
            raise VbookError("BridgePeer takes a port opened without vnet headers")
        self.port = port
        self.stack = HostStack(nf.mac_bytes(mac), (nf.ip6(ip6),), ())
        self.mac, self.ip6 = nf.mac_str(nf.mac_bytes(mac)), ipaddress.IPv6Address(ip6)
        self.seen: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="vbook-bridge-peer", daemon=True)
        self.error: BaseException | None = None

    @property
    def log(self) -> list[str]:
        return self.stack.log

    def _serve(self) -> None:
        fd = self.port.fd
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.05)
                if not ready:
                    continue
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                self.seen.append(frame)
                for answer in self.stack.receive(frame):
                    os.write(fd, answer)
        except OSError as e:  # the port went away under us
            self.error = e

    def start(self) -> BridgePeer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def __enter__(self) -> BridgePeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"BridgePeer({self.port.name}: {self.mac} {self.ip6}, {len(self.seen)} frames seen)"


def bridge_with_peer(**kw: Any) -> tuple[Any, Tap, BridgePeer]:
    """A bridge of two ports: (bridge, the guest's port, a :class:`BridgePeer` on the other,
    not started). ``kw`` go to :meth:`Bridge.open <vbook.backends.tap.Bridge.open>`."""
    from vbook.backends.tap import Bridge

    br = Bridge.open(dict(), dict(), **kw)
    guest_port, peer_port = br.ports
    return br, guest_port, BridgePeer(peer_port)


__all__ = ["BridgePeer", "bridge_with_peer"]
