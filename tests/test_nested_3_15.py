"""Nested EPT in 3.15 against 6.1 (vbook.models.nested_3_15), read against both trees."""

from __future__ import annotations

import re

import pytest
from _sources import LINUX_3_15, LINUX_3_15_REV, LINUX_6_1, LINUX_6_1_REV, function_body, git_show
from hypothesis import given
from hypothesis import strategies as st

from vbook.errors import PagingError
from vbook.models import nested_3_15 as n315
from vbook.models.nested_3_15 import (
    DIFFERENCES,
    PFERR_FETCH_MASK,
    PFERR_GUEST_FINAL_MASK,
    PFERR_GUEST_PAGE_MASK,
    PFERR_PRESENT_MASK,
    PFERR_USER_MASK,
    PFERR_WRITE_MASK,
    UnknownExit,
    ept_violation_error_code,
    reflected_qualification,
)

READ, WRITE, FETCH, GVA_VALID, TRANSLATED = 1, 2, 4, 1 << 7, 1 << 8


def _c_error_code_3_15(q: int) -> int:
    # the three statements of 3.15's handle_ept_violation, transcribed
    e = q & (1 << 1)
    e |= (q & (1 << 2)) << 2
    e |= (q >> 3) & 0x1
    return e


def test_examples():
    # a read of a not-present page, final translation
    q = READ | GVA_VALID | TRANSLATED
    assert ept_violation_error_code(q) == PFERR_USER_MASK | PFERR_GUEST_FINAL_MASK
    assert ept_violation_error_code(q, "3.15") == 0
    # a write to a read-only page (rwx = r--), on a guest page-table access
    q = WRITE | 1 << 3 | GVA_VALID
    assert ept_violation_error_code(q) == PFERR_WRITE_MASK | PFERR_PRESENT_MASK | PFERR_GUEST_PAGE_MASK
    assert ept_violation_error_code(q, "3.15") == PFERR_WRITE_MASK | PFERR_PRESENT_MASK
    # a read of an execute-only page: present in 6.1, not in 3.15
    q = READ | 4 << 3 | GVA_VALID | TRANSLATED
    assert ept_violation_error_code(q) & PFERR_PRESENT_MASK
    assert not ept_violation_error_code(q, "3.15") & PFERR_PRESENT_MASK
    assert ept_violation_error_code(FETCH | GVA_VALID | TRANSLATED, "3.15") == PFERR_FETCH_MASK


@given(st.integers(0, (1 << 13) - 1))
def test_3_15_matches_the_c_statements(q):
    if (q >> 7) & 3 == 2:
        with pytest.raises(UnknownExit, match="KVM_EXIT_UNKNOWN"):
            ept_violation_error_code(q, "3.15")
    else:
        assert ept_violation_error_code(q, "3.15") == _c_error_code_3_15(q)


@given(st.integers(0, (1 << 13) - 1))
def test_6_1_bits(q):
    e = ept_violation_error_code(q)
    assert bool(e & PFERR_USER_MASK) == bool(q & READ)
    assert bool(e & PFERR_WRITE_MASK) == bool(q & WRITE)
    assert bool(e & PFERR_FETCH_MASK) == bool(q & FETCH)
    assert bool(e & PFERR_PRESENT_MASK) == bool(q & 0x38)
    assert bool(e & PFERR_GUEST_FINAL_MASK) == bool(q & TRANSLATED)
    assert bool(e & PFERR_GUEST_PAGE_MASK) == (not q & TRANSLATED)


def test_reflected_qualification():
    fresh = READ | GVA_VALID | TRANSLATED          # L0's own exit was this same read
    for k in n315.KERNELS:
        assert reflected_qualification(fresh, "r", 0b100, k) == fresh | 0b100 << 3
    stale = WRITE | GVA_VALID | TRANSLATED | 1 << 12  # left over from an earlier write exit
    assert reflected_qualification(stale, "r", 0, "6.1") == READ | GVA_VALID | TRANSLATED
    assert reflected_qualification(stale, "r", 0, "3.15") == WRITE | GVA_VALID | TRANSLATED
    with pytest.raises(PagingError):
        reflected_qualification(0, "q", 0)
    with pytest.raises(PagingError):
        reflected_qualification(0, "r", 8)
    with pytest.raises(PagingError):
        ept_violation_error_code(0, "4.19")


def test_nested_walk_uses_the_6_1_code():
    from vbook.models import nested
    assert nested.PFERR_GUEST_FINAL_MASK is PFERR_GUEST_FINAL_MASK


# --- the source oracle --------------------------------------------------------------------


def _body(tree, rev, path, sig):
    return function_body(git_show(tree, rev, path), sig)


def test_oracle_handle_ept_violation_3_15():
    b = _body(LINUX_3_15, LINUX_3_15_REV, "arch/x86/kvm/vmx.c", "static int handle_ept_violation(")
    assert "gla_validity != 0x3 && gla_validity != 0x1 && gla_validity != 0" in b
    assert "KVM_EXIT_UNKNOWN" in b
    assert "error_code = exit_qualification & (1U << 1);" in b
    assert "error_code |= (exit_qualification & (1U << 2)) << 2;" in b
    assert "error_code |= (exit_qualification >> 3) & 0x1;" in b
    assert "PFERR_USER_MASK" not in b and "GUEST_FINAL" not in b


def test_oracle_handle_ept_violation_6_1():
    b = _body(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/vmx.c", "static int handle_ept_violation(")
    flat = re.sub(r"\s+", " ", b)
    for want in ("(exit_qualification & EPT_VIOLATION_ACC_READ) ? PFERR_USER_MASK : 0",
                 "(exit_qualification & EPT_VIOLATION_ACC_WRITE) ? PFERR_WRITE_MASK : 0",
                 "(exit_qualification & EPT_VIOLATION_ACC_INSTR) ? PFERR_FETCH_MASK : 0",
                 "(exit_qualification & EPT_VIOLATION_RWX_MASK) ? PFERR_PRESENT_MASK : 0",
                 "(exit_qualification & EPT_VIOLATION_GVA_TRANSLATED) != 0 ? PFERR_GUEST_FINAL_MASK "
                 ": PFERR_GUEST_PAGE_MASK"):
        assert want in flat, want
    h = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/include/asm/kvm_host.h")
    assert "#define PFERR_GUEST_FINAL_BIT 32" in h and "#define PFERR_GUEST_PAGE_BIT 33" in h
    assert "GUEST_FINAL" not in git_show(LINUX_3_15, LINUX_3_15_REV, "arch/x86/kvm/mmu.h")


def test_oracle_reflected_qualification():
    old = git_show(LINUX_3_15, LINUX_3_15_REV, "arch/x86/kvm/paging_tmpl.h")
    assert "vcpu->arch.exit_qualification &= 0x187;" in old
    assert "vcpu->arch.exit_qualification |= ((pt_access & pte) & 0x7) << 3;" in old
    new = re.sub(r"\s+", " ", git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/paging_tmpl.h"))
    for want in ("vcpu->arch.exit_qualification &= (EPT_VIOLATION_GVA_IS_VALID | "
                 "EPT_VIOLATION_GVA_TRANSLATED);",
                 "if (write_fault) vcpu->arch.exit_qualification |= EPT_VIOLATION_ACC_WRITE;",
                 "if (user_fault) vcpu->arch.exit_qualification |= EPT_VIOLATION_ACC_READ;",
                 "if (fetch_fault) vcpu->arch.exit_qualification |= EPT_VIOLATION_ACC_INSTR;",
                 "(pte_access & VMX_EPT_RWX_MASK) << EPT_VIOLATION_RWX_SHIFT",
                 "out of date if it is serving an EPT misconfiguration."):
        assert want in new, want


def test_oracle_inject_and_mmu_context():
    old = _body(LINUX_3_15, LINUX_3_15_REV, "arch/x86/kvm/vmx.c",
                "static void nested_ept_inject_page_fault(")
    assert "PML_FULL" not in old and "nested_ept_invalidate_addr" not in old
    assert "EXIT_REASON_EPT_MISCONFIG" in old
    new = _body(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/nested.c",
                "static void nested_ept_inject_page_fault(")
    assert "EXIT_REASON_PML_FULL" in new and "nested_ept_invalidate_addr" in new
    old = _body(LINUX_3_15, LINUX_3_15_REV, "arch/x86/kvm/vmx.c",
                "static void nested_ept_init_mmu_context(")
    assert "kvm_init_shadow_ept_mmu(vcpu, &vcpu->arch.mmu," in old
    new = _body(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/nested.c",
                "static void nested_ept_init_mmu_context(")
    assert "vcpu->arch.mmu = &vcpu->arch.guest_mmu;" in new and "nested_ept_new_eptp(vcpu);" in new
    mmu = re.sub(r"\s+", " ", git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/mmu/mmu.c"))
    assert ("void kvm_init_shadow_ept_mmu(struct kvm_vcpu *vcpu, bool execonly, int huge_page_level, "
            "bool accessed_dirty, gpa_t new_eptp)") in mmu
    mmu = re.sub(r"\s+", " ", git_show(LINUX_3_15, LINUX_3_15_REV, "arch/x86/kvm/mmu.c"))
    assert ("void kvm_init_shadow_ept_mmu(struct kvm_vcpu *vcpu, struct kvm_mmu *context, "
            "bool execonly)") in mmu


def test_differences_cite_functions_that_exist():
    trees = {"3.15": (LINUX_3_15, LINUX_3_15_REV), "6.1": (LINUX_6_1, LINUX_6_1_REV)}
    for d in DIFFERENCES:
        for k, where in (("3.15", d.where_3_15), ("6.1", d.where_6_1)):
            for part in where.split(", "):
                path, *fn = part.split(" ")
                src = git_show(*trees[k], path)
                for f in fn:
                    assert f in src, (k, path, f)


def test_oracle_execute_only_for_l1():
    old = git_show(LINUX_3_15, LINUX_3_15_REV, "arch/x86/kvm/vmx.c")
    caps = old[old.index("nested_vmx_ept_caps = VMX_EPT_PAGE_WALK_4_BIT"):]
    assert "EXECUTE_ONLY" not in caps[:caps.index(";")]
    mmu = git_show(LINUX_3_15, LINUX_3_15_REV, "arch/x86/kvm/mmu.c")
    assert "(rwx_bits == 0x4 && !execonly))\n\t\t\tcontext->bad_mt_xwr |= (1ull << pte);" in mmu
    new = git_show(LINUX_6_1, LINUX_6_1_REV, "arch/x86/kvm/vmx/nested.c")
    caps = new[new.index("msrs->ept_caps =\n"):]
    assert "VMX_EPT_EXECUTE_ONLY_BIT;" in caps[:caps.index(";") + 1]
    assert "bool execonly = vmx->nested.msrs.ept_caps & VMX_EPT_EXECUTE_ONLY_BIT;" in function_body(
        new, "static void nested_ept_new_eptp(")
