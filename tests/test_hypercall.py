"""kvm_emulate_hypercall (arch/x86/kvm/x86.c, Linux 6.1): exact RAX for every branch."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vbook.models import hypercall as hc
from vbook.models.hypercall import (
    HANDLED,
    QEMU_DEFAULT_PV_FEATURES,
    HypercallArgError,
    HypercallResult,
    PvFeature,
    emulate,
    kvm_emulate_hypercall,
)
from vbook.models.kvm_api import Hypercall
from vbook.trace import TraceRecorder

U64 = 2**64
U32 = 2**32
ENOSYS64, ENOSYS32 = U64 - 1000, U32 - 1000
EPERM64, EPERM32 = U64 - 1, U32 - 1
EINVAL64 = U64 - 22
EOPNOTSUPP64 = U64 - 95
EFAULT64 = U64 - 14
MAP_GPA_ON = 1 << 12

regs64 = st.integers(0, U64 - 1)
unhandled = st.integers(0, U64 - 1).filter(lambda n: n not in {int(h) for h in HANDLED})


# --- the ABI as data ----------------------------------------------------------------

def test_abi_registers_and_instructions():
    assert hc.REGISTERS == ("rax", "rbx", "rcx", "rdx", "rsi")
    assert hc.RET_REGISTER == "rax"
    assert hc.ABI == {"nr": "rax", "a0": "rbx", "a1": "rcx", "a2": "rdx", "a3": "rsi",
                      "ret": "rax"}
    assert hc.VMCALL == bytes([0x0F, 0x01, 0xC1])
    assert hc.VMMCALL == bytes([0x0F, 0x01, 0xD9])
    assert hc.EXIT_REASON_VMCALL == 18
    assert hc.INSN_LEN == len(hc.VMCALL) == len(hc.VMMCALL) == 3
    assert hc.KVM_EXIT_HYPERCALL_VALID_MASK == 0x1000


def test_handled_set_is_x86_kvm_6_1():
    assert HANDLED == {Hypercall.VAPIC_POLL_IRQ, Hypercall.KICK_CPU, Hypercall.CLOCK_PAIRING,
                       Hypercall.SEND_IPI, Hypercall.SCHED_YIELD, Hypercall.MAP_GPA_RANGE}


def test_from_regs_reads_the_abi_registers():
    class R:
        rax, rbx, rcx, rdx, rsi, rdi = 5, 1, 2, 3, 4, 99
    assert hc.from_regs(R()) == (5, (1, 2, 3, 4))


# --- each branch, exact values ------------------------------------------------------

def test_vapic_poll_irq_returns_zero():
    r = kvm_emulate_hypercall(Hypercall.VAPIC_POLL_IRQ)
    assert r == HypercallResult(0, False, "KVM_HC_VAPIC_POLL_IRQ (no-op, ret 0)")
    assert emulate(1) == 0


@pytest.mark.parametrize("nr", [2, 3, 4, 6, 7, 8, 13, 0, 1000, U64 - 1])
def test_unhandled_numbers_are_enosys(nr):
    r = kvm_emulate_hypercall(nr)
    assert r == HypercallResult(ENOSYS64, False, "-KVM_ENOSYS (unknown nr)")
    assert emulate(nr) == 2**64 - 1000


def test_kick_cpu_default_qemu_vm_is_served():
    """QEMU leaves kvm-pv-enforce-cpuid off: guest_pv_has() is true for every feature."""
    r = kvm_emulate_hypercall(Hypercall.KICK_CPU, (0, 1))
    assert r == HypercallResult(0, False, "kvm_pv_kick_cpu_op")


def test_default_qemu_cpuid_lacks_the_gating_features():
    for f in (PvFeature.PV_UNHALT, PvFeature.PV_SEND_IPI, PvFeature.PV_SCHED_YIELD):
        assert f not in QEMU_DEFAULT_PV_FEATURES
    assert PvFeature.CLOCKSOURCE2 in QEMU_DEFAULT_PV_FEATURES
    assert PvFeature.ASYNC_PF_INT not in QEMU_DEFAULT_PV_FEATURES


def test_default_pv_features_are_qemu_9_2_4_kvm_default_props():
    """QEMU_DEFAULT_PV_FEATURES = the FEAT_KVM bits whose names kvm_default_props turns on."""
    import re

    from _sources import QEMU_9, git_show

    props = git_show(QEMU_9, "HEAD", "target/i386/kvm/kvm-cpu.c")
    table = props[props.index("static PropValue kvm_default_props[] = {"):]
    on = set(re.findall(r'\{ "([a-z0-9-]+)", "on" \}', table[:table.index("};")]))
    cpu = git_show(QEMU_9, "HEAD", "target/i386/cpu.c")
    word = cpu[cpu.index("[FEAT_KVM] = {"):]
    names = word[word.index(".feat_names = {") + 15:word.index("},")]
    bits = [None if t.strip() == "NULL" else t.strip().strip('"')
            for t in names.replace("\n", " ").split(",") if t.strip()]
    assert len(bits) == 32
    from_qemu = {PvFeature(b) for b, name in enumerate(bits) if name in on}
    assert from_qemu == QEMU_DEFAULT_PV_FEATURES


@pytest.mark.parametrize("nr,feature,handler", [
    (Hypercall.KICK_CPU, PvFeature.PV_UNHALT, "kvm_pv_kick_cpu_op"),
    (Hypercall.SEND_IPI, PvFeature.PV_SEND_IPI, "kvm_pv_send_ipi"),
    (Hypercall.SCHED_YIELD, PvFeature.PV_SCHED_YIELD, "kvm_sched_yield"),
])
def test_pv_feature_gating_when_enforced(nr, feature, handler):
    # enforced and the feature absent (what -cpu qemu64,kvm-pv-enforce-cpuid=on gives)
    off = kvm_emulate_hypercall(nr, features=QEMU_DEFAULT_PV_FEATURES)
    assert off == HypercallResult(ENOSYS64, False,
                                  f"-KVM_ENOSYS (guest lacks KVM_FEATURE_{feature.name})")
    # enforced and present: as a set, and as the CPUID 0x40000001 EAX bitmask
    on = kvm_emulate_hypercall(nr, features=QEMU_DEFAULT_PV_FEATURES | {feature})
    assert on.ret == 0 and on.handler == handler
    assert kvm_emulate_hypercall(nr, features=1 << feature).ret == 0
    assert kvm_emulate_hypercall(nr, features=0).ret == ENOSYS64


def test_sched_yield_returns_zero():
    assert kvm_emulate_hypercall(Hypercall.SCHED_YIELD, (3,)) == HypercallResult(
        0, False, "kvm_sched_yield")


# SEND_IPI: a0/a1 = bitmap low/high, a2 = min APIC ID, a3 = ICR
def test_send_ipi_counts_accepting_lapics():
    ids = (0, 1, 2, 3)
    # bits 0,1,3 of the low bitmap from min 0 -> APIC IDs 0,1,3: 3 IPIs
    assert kvm_emulate_hypercall(10, (0b1011, 0, 0, 0xF0), apic_ids=ids).ret == 3
    # bit 5 -> APIC ID 5 is not in the VM: not counted
    assert kvm_emulate_hypercall(10, (1 << 5 | 1, 0, 0, 0xF0), apic_ids=ids).ret == 1
    # min = 2: bit 0 -> APIC 2, bit 1 -> APIC 3
    assert kvm_emulate_hypercall(10, (0b11, 0, 2, 0xF0), apic_ids=ids).ret == 2
    # high bitmap starts at min + 64 in 64-bit mode, + 32 in 32-bit mode
    assert kvm_emulate_hypercall(10, (0, 1, 0, 0xF0), apic_ids=(0, 64)).ret == 1
    assert kvm_emulate_hypercall(10, (0, 1, 0, 0xF0), apic_ids=(0, 32)).ret == 0
    assert kvm_emulate_hypercall(10, (0, 1, 0, 0xF0), apic_ids=(0, 32), longmode=False).ret == 1
    # default VM: one vCPU with APIC ID 0
    assert kvm_emulate_hypercall(10, (1, 0, 0, 0xF0)).ret == 1


def test_send_ipi_delivery_modes():
    one = (0,)
    ret = lambda icr: kvm_emulate_hypercall(10, (1, 0, 0, icr), apic_ids=one).ret  # noqa: E731
    assert ret(0x000F0) == 1                     # fixed, edge
    assert ret(0x080F0) == 0                     # fixed, level-triggered, deasserted
    assert ret(0x0C0F0) == 1                     # fixed, level-triggered, asserted
    assert ret(0x00400) == 1                     # NMI
    assert ret(0x00500 | 0x8000) == 0            # INIT level de-assert
    assert ret(0x00700) == 0                     # ExtINT: never accepted this way


def test_send_ipi_errors():
    # logical destination mode or a shorthand in the ICR -> -KVM_EINVAL
    r = kvm_emulate_hypercall(10, (1, 0, 0, 0x800 | 0xF0))
    assert r.ret == EINVAL64 and r.handler.startswith("kvm_pv_send_ipi: -KVM_EINVAL")
    assert kvm_emulate_hypercall(10, (1, 0, 0, 0xC0000 | 0xF0)).ret == EINVAL64
    # no in-kernel APIC -> -EOPNOTSUPP (95)
    r = kvm_emulate_hypercall(10, (1, 0, 0, 0xF0), apic_ids=None)
    assert r.ret == EOPNOTSUPP64 and "no in-kernel APIC map" in r.handler


def test_clock_pairing_paths():
    ok = kvm_emulate_hypercall(Hypercall.CLOCK_PAIRING, (0x2000, 0))
    assert ok == HypercallResult(0, False, "kvm_pv_clock_pairing")
    bad_type = kvm_emulate_hypercall(Hypercall.CLOCK_PAIRING, (0x2000, 1))
    assert bad_type.ret == EOPNOTSUPP64
    assert "KVM_CLOCK_PAIRING_WALLCLOCK" in bad_type.handler
    no_tsc = kvm_emulate_hypercall(Hypercall.CLOCK_PAIRING, (0x2000, 0), tsc_clocksource=False)
    assert no_tsc.ret == EOPNOTSUPP64 and "not TSC-based" in no_tsc.handler
    fault = kvm_emulate_hypercall(Hypercall.CLOCK_PAIRING, (0xFFC0 + 1, 0), ram_size=0x10000)
    assert fault.ret == EFAULT64 and "-KVM_EFAULT" in fault.handler
    fits = kvm_emulate_hypercall(Hypercall.CLOCK_PAIRING, (0xFFC0, 0), ram_size=0x10000)
    assert fits.ret == 0


def test_map_gpa_range_needs_the_exit_enabled():
    r = kvm_emulate_hypercall(Hypercall.MAP_GPA_RANGE, (0x1000, 1, 0))
    assert r == HypercallResult(ENOSYS64, False,
                                "-KVM_ENOSYS (KVM_HC_MAP_GPA_RANGE exit not enabled)")
    # another bit of the mask does not enable it
    assert kvm_emulate_hypercall(12, (0x1000, 1, 0), hypercall_exit_enabled=1 << 11).ret == ENOSYS64


def test_map_gpa_range_exits_to_user_space():
    r = kvm_emulate_hypercall(12, (0x1000, 4, 0x10), hypercall_exit_enabled=MAP_GPA_ON)
    assert r.ret is None and r.exit_to_user
    assert r.handler == "KVM_EXIT_HYPERCALL (KVM_HC_MAP_GPA_RANGE to user space)"
    assert hc.map_gpa_range_exit((0x1000, 4, 0x10)) == {
        "nr": 12, "args": (0x1000, 4, 0x10, 0, 0, 0), "longmode": 1}
    assert hc.map_gpa_range_exit((U64 - 4096, 1, 0), longmode=False)["args"][0] == U32 - 4096


@pytest.mark.parametrize("gpa,npages,why", [
    (0x1001, 1, "gpa not page aligned"),
    (0x1000, 0, "npages is 0"),
    (0x1000, U64 - 1, "gfn + npages overflows"),          # gfn 1 + (2**64-1) wraps to 0
    (0x5000, U64 - 5, "gfn + npages overflows"),          # wraps to exactly 0
])
def test_map_gpa_range_einval(gpa, npages, why):
    r = kvm_emulate_hypercall(12, (gpa, npages, 0), hypercall_exit_enabled=MAP_GPA_ON)
    assert r == HypercallResult(EINVAL64, False, f"-KVM_EINVAL ({why})")


def test_map_gpa_range_largest_range_that_fits():
    gfn = 1
    npages = U64 - 1 - gfn  # gfn + npages = 2**64 - 1: no wrap
    r = kvm_emulate_hypercall(12, (gfn << 12, npages, 0), hypercall_exit_enabled=MAP_GPA_ON)
    assert r.exit_to_user
    # the top page of the 64-bit space: gfn 2**52 - 1, + 1 page does not wrap a u64
    r = kvm_emulate_hypercall(12, (U64 - 4096, 1, 0), hypercall_exit_enabled=MAP_GPA_ON)
    assert r.exit_to_user and r.ret is None


def test_complete_hypercall_exit_truncates_outside_64_bit_mode():
    assert hc.complete_hypercall_exit(0) == 0
    assert hc.complete_hypercall_exit(-22) == EINVAL64
    assert hc.complete_hypercall_exit(-22, longmode=False) == U32 - 22


# --- CPL check, 32-bit truncation ---------------------------------------------------

@pytest.mark.parametrize("cpl", [1, 2, 3])
def test_cpl_nonzero_is_eperm(cpl):
    assert kvm_emulate_hypercall(1, cpl=cpl) == HypercallResult(EPERM64, False,
                                                                f"-KVM_EPERM (CPL {cpl})")
    assert kvm_emulate_hypercall(1, cpl=cpl, longmode=False).ret == EPERM32
    assert emulate(1, cpl=cpl) == U64 - 1


@given(nr=regs64, cpl=st.integers(1, 3), longmode=st.booleans(),
       exits=st.sampled_from([0, MAP_GPA_ON]))
def test_property_cpl_nonzero_is_eperm_regardless_of_nr(nr, cpl, longmode, exits):
    r = kvm_emulate_hypercall(nr, (0x1000, 1, 0, 0), cpl=cpl, longmode=longmode,
                              hypercall_exit_enabled=exits)
    assert r.ret == (EPERM64 if longmode else EPERM32)
    assert not r.exit_to_user


@given(nr=unhandled, args=st.lists(regs64, max_size=4))
def test_property_unhandled_nr_is_enosys(nr, args):
    assert emulate(nr, args) == ENOSYS64
    r = kvm_emulate_hypercall(nr, args)
    assert r.handler == "-KVM_ENOSYS (unknown nr)"


@given(high=st.integers(1, U32 - 1), nr=st.sampled_from([int(h) for h in Hypercall]))
def test_property_32_bit_mode_ignores_the_upper_halves(high, nr):
    """Outside 64-bit mode only the low 32 bits of nr and args count (x86.c &= 0xFFFFFFFF)."""
    args = (0x1000, 1, 0, 0xF0)
    wide = tuple((high << 32) | a for a in args)
    kw = dict(longmode=False, hypercall_exit_enabled=MAP_GPA_ON)
    narrow_r = kvm_emulate_hypercall(nr, args, **kw)
    wide_r = kvm_emulate_hypercall((high << 32) | nr, wide, **kw)
    assert wide_r == narrow_r
    if wide_r.ret is not None:
        assert wide_r.ret < U32


def test_32_bit_truncation_examples():
    # nr 2**32 + 1 is VAPIC_POLL_IRQ to a 32-bit guest, unknown to a 64-bit one
    assert kvm_emulate_hypercall(U32 + 1, longmode=False).ret == 0
    assert kvm_emulate_hypercall(U32 + 1).ret == ENOSYS64
    assert kvm_emulate_hypercall(99, longmode=False).ret == ENOSYS32
    # a gpa whose only misalignment is above bit 31 is aligned for a 32-bit guest
    r = kvm_emulate_hypercall(12, ((1 << 40) | 0x1000, 1, 0), longmode=False,
                              hypercall_exit_enabled=MAP_GPA_ON)
    assert r.exit_to_user


def test_as_signed():
    assert hc.as_signed(ENOSYS64) == -1000
    assert hc.as_signed(ENOSYS32, longmode=False) == -1000
    assert hc.as_signed(3) == 3


# --- bad input, trace ---------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: kvm_emulate_hypercall(-1),
    lambda: kvm_emulate_hypercall(U64),
    lambda: kvm_emulate_hypercall(1, (1, 2, 3, 4, 5)),
    lambda: kvm_emulate_hypercall(1, cpl=4),
    lambda: kvm_emulate_hypercall(1, ("x",)),
    lambda: kvm_emulate_hypercall(5, features=[99]),
    lambda: emulate(1.5),
])
def test_bad_input_is_a_typed_error(call):
    with pytest.raises(HypercallArgError):
        call()


def test_trace_records_guest_kvm_guest():
    rec = TraceRecorder()
    kvm_emulate_hypercall(99, trace=rec)
    t = rec.freeze()
    assert [(e.actor, e.kind) for e in t] == [
        ("guest", "vmcall"), ("kvm", "vmexit"), ("kvm", "hypercall"), ("guest", "resume")]
    assert t[1]["exit_reason"] == 18
    assert t[3]["rax"] == ENOSYS64


def test_trace_of_an_exit_to_user_space():
    rec = TraceRecorder()
    kvm_emulate_hypercall(12, (0x1000, 1, 0), hypercall_exit_enabled=MAP_GPA_ON, trace=rec)
    t = rec.freeze()
    assert [(e.actor, e.kind) for e in t][-1] == ("kvm", "exit")
    assert t[-1]["args"] == (0x1000, 1, 0, 0, 0, 0)


def test_result_repr_is_stable():
    assert repr(kvm_emulate_hypercall(99)) == (
        "HypercallResult(ret=0xfffffffffffffc18, exit_to_user=False, "
        "handler='-KVM_ENOSYS (unknown nr)')")
