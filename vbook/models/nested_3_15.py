"""Nested EPT in Linux 3.15 against 6.1: where the fault path changed, as functions.

Chapter 07 models Linux 6.1; the column the book grows from read 3.15. The 2-D
walk is the CPU's and did not change. What KVM does with its result did, in
the places a reader of the old code trips over:

1. ``handle_ept_violation`` (3.15 arch/x86/kvm/vmx.c, 6.1 arch/x86/kvm/vmx/vmx.c)
   turns the exit qualification into a page-fault error code for
   ``kvm_mmu_page_fault``. 3.15: write = bit 1, fetch = bit 2 (shifted to
   ``PFERR_FETCH_MASK``), present = bit 3 only (the entry was *readable*); and a
   qualification with bit 8 set but bit 7 clear ("translated" without a valid
   GVA, which the SDM never produces) is refused as ``KVM_EXIT_UNKNOWN``. 6.1: a
   read sets ``PFERR_USER_MASK``, present = any of bits 5:3 (``EPT_VIOLATION_RWX_MASK``:
   an execute-only entry is present too), and bit 8 picks ``PFERR_GUEST_FINAL_MASK``
   or ``PFERR_GUEST_PAGE_MASK`` — :func:`ept_violation_error_code`.
2. The qualification L0 reflects to L1 when L1's EPT12 does not allow an L2
   access (``FNAME(walk_addr_generic)``'s error path with ``PTTYPE_EPT``,
   paging_tmpl.h, then ``nested_ept_inject_page_fault``). 3.15 keeps bits 2:0
   (the access) from the hardware's qualification of L0's own exit
   (``exit_qualification &= 0x187``); 6.1 rebuilds them from the access the walker
   checked, because that qualification "might be out of date if it is serving an
   EPT misconfiguration" (6.1's comment there). Bits 5:3 are EPT12's rights and
   bits 7:8 the hardware's in both — :func:`reflected_qualification`.
3. The MMU contexts. 3.15 has one ``vcpu->arch.mmu`` that
   ``nested_ept_init_mmu_context`` re-initialises as the shadow-EPT MMU
   (``kvm_init_shadow_ept_mmu(vcpu, &vcpu->arch.mmu, execonly)``: no A/D for
   EPT12, no EPTP); 6.1 points ``vcpu->arch.mmu`` at a separate ``guest_mmu``
   (L1's ``root_mmu`` keeps its roots while L2 runs), and ``nested_ept_new_eptp``
   calls ``kvm_init_shadow_ept_mmu`` with ``huge_page_level``, ``accessed_dirty``
   and the EPTP.
4. Execute-only EPT for L1. 3.15 does not offer it (``nested_vmx_ept_caps`` has
   no ``VMX_EPT_EXECUTE_ONLY_BIT``), so ``execonly`` is 0 and an execute-only
   EPT12 entry is a reserved combination (``reset_rsvds_bits_mask_ept``'s
   ``bad_mt_xwr``): reflected to L1 as an EPT misconfiguration. 6.1 offers it
   when the CPU has it (``nested_vmx_setup_ctls_msrs``). That is also why 3.15's
   present-from-bit-3-only error code (1.) did no harm: no EPT entry KVM used
   could be execute-only.

:data:`DIFFERENCES` lists these with the functions they rest on.

The source oracle is tests/test_nested_3_15.py (both trees). Pure; never prints.
"""

from __future__ import annotations

from dataclasses import dataclass

from vbook.errors import PagingError

__all__ = ["KERNELS", "Difference", "DIFFERENCES", "UnknownExit", "ept_violation_error_code",
           "reflected_qualification"]

KERNELS = ("6.1", "3.15")

#: PFERR_*_MASK: 6.1 arch/x86/include/asm/kvm_host.h, 3.15 arch/x86/kvm/mmu.h (bits 0-4, the same)
PFERR_PRESENT_MASK, PFERR_WRITE_MASK, PFERR_USER_MASK, PFERR_RSVD_MASK, PFERR_FETCH_MASK = 1, 2, 4, 8, 16
#: 6.1 only (kvm_host.h): the EPT violation hit the final GPA of a linear address
#: (qualification bit 8 = 1) ...
PFERR_GUEST_FINAL_BIT = 32
#: ... or a guest paging-structure access (bit 8 = 0)
PFERR_GUEST_PAGE_BIT = 33
PFERR_GUEST_FINAL_MASK = 1 << PFERR_GUEST_FINAL_BIT
PFERR_GUEST_PAGE_MASK = 1 << PFERR_GUEST_PAGE_BIT

#: qualification bits (SDM "Exit Qualification for EPT Violations"; 6.1 EPT_VIOLATION_*)
_ACC_READ, _ACC_WRITE, _ACC_INSTR, _RWX_MASK = 1, 2, 4, 7 << 3
_GVA_IS_VALID, _GVA_TRANSLATED = 1 << 7, 1 << 8
_ACCESS = {"r": _ACC_READ, "w": _ACC_WRITE, "x": _ACC_INSTR}


class UnknownExit(PagingError):
    """3.15's ``handle_ept_violation`` refused the qualification: KVM_EXIT_UNKNOWN to user space."""


def _kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise PagingError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


def ept_violation_error_code(qualification: int, kernel: str = "6.1") -> int:
    """The error code ``handle_ept_violation`` passes to ``kvm_mmu_page_fault``.

    Raises :class:`UnknownExit` for 3.15's ``gla_validity == 2`` case.
    """
    q = qualification
    if _kernel(kernel) == "3.15":
        if (q >> 7) & 3 == 2:
            raise UnknownExit(f"qualification {q:#x}: bit 8 without bit 7; 3.15 prints "
                              "'EPT: Handling EPT violation failed!' and exits with KVM_EXIT_UNKNOWN")
        return (q & _ACC_WRITE) | (q & _ACC_INSTR) << 2 | (q >> 3) & PFERR_PRESENT_MASK
    code = (PFERR_USER_MASK if q & _ACC_READ else 0) | (PFERR_WRITE_MASK if q & _ACC_WRITE else 0)
    code |= (PFERR_FETCH_MASK if q & _ACC_INSTR else 0) | (PFERR_PRESENT_MASK if q & _RWX_MASK else 0)
    return code | (PFERR_GUEST_FINAL_MASK if q & _GVA_TRANSLATED else PFERR_GUEST_PAGE_MASK)


def reflected_qualification(hw_qualification: int, access: str, ept12_rwx: int,
                            kernel: str = "6.1") -> int:
    """The qualification of the EPT violation L0 reflects to L1 (EPT12 did not allow ``access``).

    ``hw_qualification`` is ``vcpu->arch.exit_qualification``: the qualification of
    the last EPT violation L0 took (stale when L0 is not serving one);
    ``ept12_rwx`` the rights EPT12's entries allowed, ANDed over its walk.
    """
    if access not in _ACCESS:
        raise PagingError(f"access must be 'r', 'w' or 'x', got {access!r}")
    if not 0 <= ept12_rwx <= 7:
        raise PagingError(f"ept12_rwx is 3 bits (0..7), got {ept12_rwx!r}")
    if _kernel(kernel) == "3.15":
        return hw_qualification & 0x187 | ept12_rwx << 3
    return hw_qualification & (_GVA_IS_VALID | _GVA_TRANSLATED) | _ACCESS[access] | ept12_rwx << 3


@dataclass(frozen=True)
class Difference:
    """One change in the nested-EPT path, with the function each version does it in."""

    topic: str
    linux_3_15: str
    linux_6_1: str
    where_3_15: str
    where_6_1: str


DIFFERENCES: tuple[Difference, ...] = (
    Difference("EPT violation → error code",
               "write = bit 1, fetch = bit 2, present = bit 3 (readable) only; no user bit; "
               "bit 8 without bit 7 → KVM_EXIT_UNKNOWN",
               "read → PFERR_USER, present = any of bits 5:3, bit 8 → PFERR_GUEST_FINAL else "
               "PFERR_GUEST_PAGE",
               "arch/x86/kvm/vmx.c handle_ept_violation", "arch/x86/kvm/vmx/vmx.c handle_ept_violation"),
    Difference("qualification reflected to L1",
               "bits 2:0 and 7:8 copied from L0's own exit (& 0x187), bits 5:3 from EPT12",
               "bits 2:0 rebuilt from the access checked, 7:8 from L0's exit, 5:3 from EPT12",
               "arch/x86/kvm/paging_tmpl.h FNAME(walk_addr_generic)",
               "arch/x86/kvm/mmu/paging_tmpl.h FNAME(walk_addr_generic)"),
    Difference("the reflected exit",
               "EPT_VIOLATION or EPT_MISCONFIG (PFERR_RSVD), nothing else",
               "also PML_FULL for L1's page-modification log; the fault address is synced in "
               "every cached EPT02 of the same EP4TA (nested_ept_invalidate_addr)",
               "arch/x86/kvm/vmx.c nested_ept_inject_page_fault",
               "arch/x86/kvm/vmx/nested.c nested_ept_inject_page_fault"),
    Difference("execute-only EPT for L1",
               "not offered (nested_vmx_ept_caps lacks VMX_EPT_EXECUTE_ONLY_BIT): an X-only EPT12 "
               "entry is reserved (bad_mt_xwr) and reflected as EPT_MISCONFIG",
               "offered when the CPU has it (VMX_EPT_EXECUTE_ONLY_BIT in ept_caps): an X-only EPT12 "
               "entry is valid and its EPT02 copy is X-only too",
               "arch/x86/kvm/vmx.c nested_vmx_setup_ctls_msrs, arch/x86/kvm/mmu.c reset_rsvds_bits_mask_ept",
               "arch/x86/kvm/vmx/nested.c nested_vmx_setup_ctls_msrs, arch/x86/kvm/vmx/nested.c "
               "nested_ept_new_eptp"),
    Difference("the shadow-EPT MMU",
               "vcpu->arch.mmu itself re-initialised: kvm_init_shadow_ept_mmu(vcpu, context, execonly)",
               "vcpu->arch.mmu = &vcpu->arch.guest_mmu (L1's root_mmu kept); "
               "kvm_init_shadow_ept_mmu(vcpu, execonly, huge_page_level, accessed_dirty, new_eptp)",
               "arch/x86/kvm/vmx.c nested_ept_init_mmu_context, arch/x86/kvm/mmu.c",
               "arch/x86/kvm/vmx/nested.c nested_ept_init_mmu_context, arch/x86/kvm/vmx/nested.c "
               "nested_ept_new_eptp, arch/x86/kvm/mmu/mmu.c"),
)
