"""Small guest programs: real x86 machine code with their assembly listings.

Each guest is a :class:`~vbook.guests.base.Guest`: a few instructions of
machine code (``.code``), the GNU as source they were assembled from
(``.listing``), the mode it does its work in, and where it is loaded. Every
guest starts like a VMM would start it on KVM — real mode,
CS = DS = ES = SS = 0, IP = ``load_addr`` (0x1000), one RAM slot of
``mem_size`` bytes at guest-physical 0 — and the same bytes give the same
exits on the unicorn backend and on ``/dev/kvm``.

``ALL`` are the well-behaved guests the chapters run; each ends with HLT or a
SHUTDOWN. ``EXTRA`` need a VMM option or a particular host to show their point
(``map_gpa_range`` exits only with ``hypercall_exit_enabled``; ``hypercalls``
needs a host that completes VMCALL, and its ring-3 part a CPU that runs call
gates natively). ``MISBEHAVING`` never finish on their own and exist to show
how a backend refuses to hang.

The ports and addresses they use are named in :mod:`vbook.guests.ports`;
``NET`` are NIC drivers (:mod:`~vbook.guests.e1000_ping`,
:mod:`~vbook.guests.virtio_net_ping`): they need their NIC on the board
(``Machine().add_nic(endpoint, model=…)``; :func:`vbook.net_run.run_ping` sets it
all up) and stop at once without one.

``python -m vbook.guests.build`` re-assembles the listings.
"""

from __future__ import annotations

from vbook.guests import (
    cpuid_loop,
    debug_exit,
    e1000_ping,
    hello,
    hypercall,
    hypercalls,
    in_out,
    long_mode,
    map_gpa_range,
    mmio,
    serial_hello,
    spin,
    triple_fault,
    unmapped_fetch,
    virtio_net_ping,
)
from vbook.guests.base import Guest

#: the guests every backend runs to the end: name -> Guest
ALL: dict[str, Guest] = {g.name: g for g in (
    hello.GUEST,
    in_out.GUEST,
    mmio.GUEST,
    hypercall.GUEST,
    triple_fault.GUEST,
    long_mode.GUEST,
    serial_hello.GUEST,
    debug_exit.GUEST,
    cpuid_loop.GUEST,
)}

#: guests whose point needs a VMM option (see each module)
EXTRA: dict[str, Guest] = {g.name: g for g in (map_gpa_range.GUEST, hypercalls.GUEST)}

#: NIC drivers: they need their NIC on the board (see vbook.net_run)
NET: dict[str, Guest] = {g.name: g for g in (e1000_ping.GUEST, virtio_net_ping.GUEST)}

#: guests that never end by themselves: a backend must stop them with a clear error
MISBEHAVING: dict[str, Guest] = {g.name: g for g in (spin.GUEST, unmapped_fetch.GUEST)}


def get(name: str) -> Guest:
    """The guest called ``name`` from ALL, EXTRA or MISBEHAVING."""
    from vbook.errors import GuestError

    for table in (ALL, EXTRA, NET, MISBEHAVING):
        if name in table:
            return table[name]
    known = ", ".join(sorted({**ALL, **EXTRA, **NET, **MISBEHAVING}))
    raise GuestError(f"no guest named {name!r}; known guests: {known}")


__all__ = ["ALL", "EXTRA", "MISBEHAVING", "NET", "Guest", "get"]
