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
    first, again = vm.access(0x13000), vm.access(0x13000)
    # MMIO caching: the first access installs an MMIO SPTE (pf_emulate, pf_mmio_spte_created),
    # the second is an EPT misconfiguration that goes straight to handle_mmio_page_fault
    assert (first.outcome, first.exits_to, first.functions[-1]) == ("emulate", "L0 -> QEMU", "mark_mmio_spte")
    assert (again.outcome, again.fault, again.functions[-1]) == ("emulate", None, "handle_mmio_page_fault")
    assert vm.ept02.reflected == 3 and vm.ept02.pf_emulate == 1 and vm.ept02.pf_fixed == 2
    assert vm.ept02.pf_mmio_spte_created == 1
    assert repr(vm.accesses[0]) == "L2Access('r' L2 GPA 0x11008: ept01_miss, HPA 0x400008, exit to L0)"
    assert "reflected=3" in repr(vm)


def test_without_mmio_caching_every_access_takes_the_fault_path(vm):
    vm.ept02.mmio_caching = False
    for _ in range(2):
        a = vm.access(0x13000)
        assert a.outcome == "emulate" and a.functions[-1] == "handle_abnormal_pfn"
    assert vm.ept02.pf_emulate == 2 and vm.ept02.pf_mmio_spte_created == 0


def test_oracle_mmio_of_l1_with_and_without_caching():
    from _sources import LINUX_6_1, LINUX_6_1_REV, function_body, git_show
    mmu = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/mmu.c")
    abnormal = function_body(mmu, "static int handle_abnormal_pfn(")
    assert "if (unlikely(!enable_mmio_caching) ||" in abnormal and "return RET_PF_CONTINUE;" in abnormal
    set_spte = function_body(mmu, "static int mmu_set_spte(")
    assert ("if (unlikely(is_noslot_pfn(pfn))) {\n\t\tvcpu->stat.pf_mmio_spte_created++;\n"
            "\t\tmark_mmio_spte(vcpu, sptep, gfn, pte_access);\n\t\treturn RET_PF_EMULATE;") in set_spte
    h = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/mmu_internal.h")
    do = function_body(h, "static inline int kvm_mmu_do_page_fault(")
    assert "vcpu->stat.pf_emulate++;" in do and "vcpu->stat.pf_taken++;" in do
    tmpl = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/paging_tmpl.h")
    assert "ret = mmu_set_spte(vcpu, fault->slot, it.sptep, gw->pte_access," in tmpl


def test_bad_build():
    with pytest.raises(NestedError):
        NestedVm.build(l1_ram=8 << 20)
