"""NestedVm: an L2 access, from the hardware's EPT02 walk to L0's decision."""

from __future__ import annotations

import pytest

from vbook.models import ept
from vbook.models.nested import NestedError
from vbook.models.nested_vm import NestedVm

K4 = 0x1000


@pytest.fixture
def vm():
    v = NestedVm.build()
    v.ept12.map(0x10000, 0x20000, K4)                 # an L1 page EPT01 maps
    v.ept12.map(0x11000, 0x200000, K4)                # one it does not map yet
    v.ept12.map(0x12000, 0x20000, K4, rwx=0b001)      # read-only for L2
    v.ept12.map(0x13000, 0x1000000, K4)               # beyond L1's RAM: MMIO of L1
    return v


def test_miss_then_hit(vm):
    a = vm.access(0x10123, "w")
    assert (a.outcome, a.hpa, a.exits_to) == ("fixed", 0x220123, "L0")
    b = vm.access(0x10456, "r")
    assert (b.outcome, b.hpa, b.exits_to, b.fault) == ("hit", 0x220456, "", None)
    assert vm.ept02.pf_fixed == 1 and len(vm.accesses) == 2


def test_each_outcome(vm):
    assert vm.access(0x11008).outcome == "ept01_miss"
    assert vm.access(0x11010).outcome == "hit"                       # EPT02 now maps the page
    assert ept.walk(vm.host, vm.ept01.tables.eptp, 0x200000).fault is not None   # EPT01 untouched
    r = vm.access(0x12000, "w")
    assert (r.outcome, r.exits_to, r.hpa) == ("reflect", "L0 -> L1", None)
    assert vm.access(0x12000, "r").outcome == "fixed"                 # reads are allowed
    assert vm.access(0x12000, "w").outcome == "reflect"               # EPT02 got EPT12's rights
    assert vm.access(0x14000).outcome == "reflect"                    # not in EPT12
    assert vm.access(0x13000).outcome == "emulate" and vm.access(0x13000).outcome == "emulate"
    assert vm.ept02.reflected == 3 and vm.ept02.pf_emulate == 2 and vm.ept02.pf_fixed == 2
    assert repr(vm.accesses[0]) == "L2Access('r' L2 GPA 0x11008: ept01_miss, HPA 0x400008, exit to L0)"
    assert "reflected=3" in repr(vm)


def test_bad_build():
    with pytest.raises(NestedError):
        NestedVm.build(l1_ram=8 << 20)
