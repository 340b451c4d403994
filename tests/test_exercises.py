"""Chapter-01 exercises: seeded, checkable, answers computed (not stored)."""

import pytest

from vbook.backends import available
from vbook.exercises.base import Feedback
from vbook.exercises.kvm_intro import IoctlNumber, KvmRunOffset, PredictExits
from vbook.models.ctypes_layout import kvm_run_offset
from vbook.models.kvm_api import KVM_RUN_OFFSETS, Ioctl
from vbook.runner import run_guest


@pytest.mark.parametrize("seed", range(12))
def test_ioctl_number(seed):
    ex = IoctlNumber(seed)
    assert ex.value == int(Ioctl[ex.name])
    assert ex.check(ex.value).ok and ex.answer().value == ex.value
    wrong = ex.check(ex.value ^ 0x40000000 ^ 0x80000000)  # flip the direction bits
    assert not wrong.ok and "direction" in wrong.message and "nr" not in wrong.message
    assert not ex.check("0x1234").ok


def test_same_seed_same_problem_and_different_seeds_vary():
    assert repr(IoctlNumber(5)) == repr(IoctlNumber(5))
    assert len({IoctlNumber(s).name for s in range(20)}) > 3
    assert len({PredictExits(s).guest.code for s in range(10)}) == 10


@pytest.mark.parametrize("seed", range(12))
def test_kvm_run_offset(seed):
    ex = KvmRunOffset(seed)
    assert ex.value == kvm_run_offset(ex.path)
    if ex.path in KVM_RUN_OFFSETS:
        assert ex.value == KVM_RUN_OFFSETS[ex.path]
    assert ex.check(ex.value).ok
    inside = ex.check(ex.value - 32)
    assert not inside.ok and "union" in inside.message


@pytest.mark.parametrize("seed", range(8))
def test_predict_exits_checks_against_the_run(seed):
    ex = PredictExits(seed)
    want = ex.answer().value
    assert want[-1] == "HLT"
    assert ex.check(want).ok
    assert ex.check([f"KVM_EXIT_{w}" for w in want]).ok
    bad = ex.check(want[:-1])
    assert isinstance(bad, Feedback) and not bad.ok and "more exits" in bad.message
    assert not ex.check(["SHUTDOWN"] + want[1:]).ok


@pytest.mark.skipif(available()["kvm"] is not None, reason=f"real KVM: {available()['kvm']}")
@pytest.mark.parametrize("seed", range(16))
def test_generated_guests_exit_the_same_on_kvm(seed):
    """Every generated exercise guest is also a conformance test."""
    g = PredictExits(seed).guest
    u, k = run_guest(g, "unicorn"), run_guest(g, "kvm")
    assert [e.to_dict() for e in u.exits] == [e.to_dict() for e in k.exits]
