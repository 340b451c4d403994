"""Conformance: every guest gives the same exits on unicorn and on real /dev/kvm.

DESIGN.md: "The same program runs on the unicorn backend and, when /dev/kvm
exists, on real KVM; both must give the same exit trace." Each guest of
``vbook.guests.ALL`` is its own test id. Where a backend cannot be used the
test skips with that backend's reason; where this host does not complete a
hypercall (PVM: KVM_RUN never returns from VMCALL) the test is an xfail that
carries the exact message, so it is visible, not dropped.
"""

from __future__ import annotations

import pytest

from vbook.backends import available
from vbook.errors import HypercallNotCompleted
from vbook.guests import ALL
from vbook.runner import run_guest


def _usable() -> None:
    why = available()
    for backend in ("kvm", "unicorn"):
        if why[backend] is not None:
            pytest.skip(f"{backend} backend: {why[backend]}")


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
