"""Conformance: every guest gives the same exits on unicorn and on real /dev/kvm.

DESIGN.md: "The same program runs on the unicorn backend and, when /dev/kvm
exists, on real KVM; both must give the same exit trace." Each guest of
``vbook.guests.ALL`` is its own test id. Where a backend cannot be used the
test skips with that backend's reason; where this host does not complete a
hypercall (PVM: KVM_RUN never returns from VMCALL) the test is an xfail that
carries the exact message, so it is visible, not dropped.

RIP at an exit depends on the kind of host: after an OUT, Linux 6.1 on VMX
(and SVM) leaves RIP on the OUT until the next KVM_RUN, a PVM host has it
past the OUT (its instruction emulator finished it). The tests that compare
RIP run unicorn in the matching mode (``pio_rip``, see
:mod:`vbook.backends.unicorn_cpu`), chosen by :func:`vbook.host.detect`.
"""

from __future__ import annotations

import pytest

from vbook.backends import available, open_vcpu
from vbook.errors import HypercallNotCompleted
from vbook.guests import ALL
from vbook.host import detect
from vbook.models.kvm_api import IoDirection
from vbook.runner import run_guest

#: the unicorn ``pio_rip`` whose OUT-exit RIP each kind of host gives
PIO_RIP_OF_HOST = {"VMX": "vmx", "SVM": "vmx", "PVM": "pvm"}


def _usable() -> None:
    why = available()
    for backend in ("kvm", "unicorn"):
        if why[backend] is not None:
            pytest.skip(f"{backend} backend: {why[backend]}")


def _host_pio_rip() -> str:
    """``pio_rip`` for this host (skips on a host of unknown kind)."""
    host = detect()
    if host.kind not in PIO_RIP_OF_HOST:
        pytest.skip(f"host kind {host.kind!r} ({host.evidence}): no unicorn mode is known to "
                    "give its RIP at an OUT exit")
    return PIO_RIP_OF_HOST[host.kind]


def _rips(result) -> list[tuple[int, int]]:
    """(RIP at VM entry, RIP at the exit) of every KVM_RUN, from the run's trace."""
    return [(ev["rip"], ev["exit_rip"]) for ev in result.trace
            if ev.actor == "guest" and ev.kind == "run"]


@pytest.mark.parametrize("name", sorted(ALL))
def test_unicorn_and_kvm_give_the_same_exits(name):
    _usable()
    guest = ALL[name]
    uni = run_guest(guest, "unicorn")
    try:
        kvm = run_guest(guest, "kvm")
    except HypercallNotCompleted as e:
        pytest.xfail(f"this host did not complete the hypercall: {e}")
    assert [e.to_dict() for e in kvm.exits] == [e.to_dict() for e in uni.exits]
    assert kvm.console == uni.console
    assert kvm.end == uni.end


@pytest.mark.parametrize("name", sorted(ALL))
def test_rip_at_every_exit_matches_in_the_hosts_mode(name):
    _usable()
    mode = _host_pio_rip()
    guest = ALL[name]
    uni = run_guest(guest, "unicorn", pio_rip=mode)
    try:
        kvm = run_guest(guest, "kvm")
    except HypercallNotCompleted as e:
        pytest.xfail(f"this host did not complete the hypercall: {e}")
    assert [hex(a) + "->" + hex(b) for a, b in _rips(kvm)] == \
        [hex(a) + "->" + hex(b) for a, b in _rips(uni)], f"pio_rip={mode!r}"


def test_rip_at_the_third_out_exit_of_hello_matches_the_host():
    # chapter 01 prints this RIP: on the OUT (0x100b) on VMX, past it (0x100c) on PVM
    _usable()
    mode = _host_pio_rip()
    rips = {}
    for backend, kw in (("kvm", {}), ("unicorn", {"pio_rip": mode})):
        with open_vcpu(ALL["hello"], backend, **kw) as vcpu:
            for _ in range(3):
                exit = vcpu.run()
                assert exit.io is not None and exit.io.direction == IoDirection.OUT
            rips[backend] = vcpu.get_regs().rip
    assert rips == dict.fromkeys(rips, {"vmx": 0x100B, "pvm": 0x100C}[mode])


@pytest.mark.parametrize("cpl", [3, 0])
def test_a_guest_started_in_long_mode_gives_the_same_exits(cpl):
    """``touch_pages``, put in 64-bit mode by the VMM (``start_in_long_mode``: KVM_SET_SREGS on
    KVM, the CPU's own IRETQ on unicorn): the same exits, RIPs and guest RAM after two passes
    (but the accessed bit of the TSS page's PTE at CPL 3: unicorn reads no I/O bitmap —
    tests/test_long_mode.py predicts both)."""
    from vbook.backends.long_mode import TSS_ADDR, start_in_long_mode
    from vbook.guests import touch_pages
    from vbook.models import paging

    _usable()
    mode = _host_pio_rip()
    seen = {}
    for backend, kw in (("kvm", {"timeout": 5.0}), ("unicorn", {"pio_rip": mode})):
        g = touch_pages.build(4)
        with open_vcpu(g.guest(), backend, **kw) as vcpu:
            start_in_long_mode(vcpu, g.mem, g.cr3, g.rip, g.rsp, cpl=cpl)
            exits = []
            for _ in range(2):
                exits.append(vcpu.run().to_dict())
                exits[-1]["rip"] = vcpu.get_regs().rip
            seen[backend] = exits, bytearray(vcpu.memory.buf)
    assert seen["kvm"][0] == seen["unicorn"][0]
    assert seen["kvm"][0][0]["reason"] == "IO" and seen["kvm"][0][0]["data"] == "04000000"
    kvm_ram, uni_ram = seen["kvm"][1], seen["unicorn"][1]
    if cpl == 3:
        pte = paging.walk(g.mem, g.cr3, TSS_ADDR).steps[-1].entry_addr
        kvm_ram[pte] &= ~int(paging.PteFlags.A)
    assert kvm_ram == uni_ram


# --- the NIC drivers (vbook.guests.NET): their NIC on the board, the loopback host end ---------

@pytest.mark.parametrize("nic", ["e1000", "virtio-net"])
def test_the_nic_drivers_give_the_same_exits(nic):
    """e1000_ping and virtio_net_ping with the Python host end, which answers at once and
    the same way every time: the same exits, handlers and per-packet counts on both."""
    _usable()
    from vbook.net_run import run_ping

    uni = run_ping(nic, "unicorn", "loopback")
    kvm = run_ping(nic, "kvm", "loopback")
    assert uni.answered and kvm.answered
    assert [e.to_dict() for e in kvm.result.exits] == [e.to_dict() for e in uni.result.exits]
    assert kvm.result.handlers == uni.result.handlers
    assert kvm.counts.row() == uni.counts.row()
