"""A guest on one port of a Linux bridge, a Python station on the other (vbook.backends.bridge_peer).

Needs a tap (root or user namespaces, /dev/net/tun); skips with the reason otherwise.
The frames cross the kernel's bridge both ways: the NS is flooded to the peer's port,
the unicast answers come back through the port the bridge learned the guest on.
"""

from __future__ import annotations

import pytest

from vbook.backends import available, net_available
from vbook.backends.bridge_peer import BridgePeer, bridge_with_peer
from vbook.errors import VbookError
from vbook.guests import net_ping
from vbook.models import net_frames as nf
from vbook.net_run import run_ping


def _need_tap() -> None:
    why = net_available()["tap"]
    if why:
        pytest.skip(f"no tap here: {why}")


@pytest.mark.parametrize("nic", ["e1000", "virtio-net"])
def test_a_guest_pings_a_station_across_the_bridge(nic):
    _need_tap()
    backend = "unicorn" if available()["unicorn"] is None else "auto"
    br, port, peer = bridge_with_peer()
    with br, peer:
        r = run_ping(nic, backend, endpoint=port)
    assert peer.error is None
    assert r.answered and r.sent == list(net_ping.FRAMES)
    # everything the guest sent went through the bridge to the peer's port
    assert all(f in peer.seen for f in net_ping.FRAMES)
    answers = [f for f in r.delivered if nf.parse(f).eth.src == nf.mac_bytes(nf.HOST_MAC)]
    assert [nf.parse(f).l4.type for f in answers] == list(net_ping.EXPECT)
    # the bridge's own IGMP/MLD reports reach the station too, in their own time
    answered = [line for line in peer.log if not line.startswith("dropped")]
    assert answered[-4:] == ["NS for our fe80::1 from fe80::2: NA"] + [
        f"echo request {net_ping.IDENT}/{s} from fe80::2: reply" for s in (1, 2, 3)]


def test_a_port_with_vnet_headers_is_refused():
    class Port:
        vnet_hdr = True
    with pytest.raises(VbookError, match="without vnet headers"):
        BridgePeer(Port())  # type: ignore[arg-type]
