"""Chapter-03 exercises: seeded guests and configurations, answers from the kernel model.

The generated guests run on the unicorn backend; their user-visible exits
are also compared with /dev/kvm (a conformance test per seed) where it runs.
The machine code of every generated operation is checked against GNU as.
"""

from __future__ import annotations

import pytest

from vbook.backends import available
from vbook.exercises import kernel_loop as kl
from vbook.exercises.base import Feedback
from vbook.guests import build
from vbook.models.kvm_kernel import KvmConfig, kvm_run
from vbook.runner import run_guest


def unicorn_or_skip():
    if available()["unicorn"]:
        pytest.skip(f"unicorn backend: {available()['unicorn']}")


@pytest.mark.parametrize("name", sorted(kl.OPS))
def test_op_bytes_are_their_assembly(name):
    why = build.tools_missing()
    if why:
        pytest.skip(why)
    code, text = kl.OPS[name]
    lines = [line.split("#")[0] for line in text.splitlines()]  # drop the comments
    assert build.assemble(".intel_syntax noprefix\n.code16\n" + "\n".join(lines)) == code
    prologue = ".intel_syntax noprefix\n.code16\n" + kl.PROLOGUE[1]
    assert build.assemble(prologue) == kl.PROLOGUE[0]


def test_same_seed_same_problem_and_seeds_vary():
    unicorn_or_skip()
    assert repr(kl.WhereDoExitsGo(4)) == repr(kl.WhereDoExitsGo(4))
    assert len({kl.WhereDoExitsGo(s).guest.code for s in range(10)}) == 10
    assert len({kl.WhereDoExitsGo(s).config for s in range(20)}) >= 4
    ex = kl.WhereDoExitsGo(2)
    assert ex.question.startswith(f"The VM: {ex.config.describe()}.")
    assert "cpuid" in ex.listing


@pytest.mark.parametrize("seed", range(10))
def test_where_do_exits_go(seed):
    unicorn_or_skip()
    ex = kl.WhereDoExitsGo(seed)
    want = ex.answer().value
    assert want == [u.reason.name for u in ex.run.user_exits]
    assert ex.check(want).ok and ex.check([f"KVM_EXIT_{w}" for w in want]).ok
    if ex.config.irqchip:
        assert "HLT" not in want and ex.run.end == "blocked"
        late = ex.check(want + ["HLT"])
        assert not late.ok and "halted vCPU" in late.message
    else:
        assert want[-1] == "HLT"
    if want:
        short = ex.check(want[:-1])
        assert not short.ok and "more exits" in short.message
        wrong = ex.check(["SHUTDOWN"] + want[1:])
        assert isinstance(wrong, Feedback) and not wrong.ok and "return 1" in wrong.message
    assert not ex.check("IO").ok
    # the guest really does what the question says: at least one exit stays in the kernel
    assert ex.run.counts()["kernel"] >= 1


@pytest.mark.parametrize("seed", range(10))
def test_handler_and_return(seed):
    unicorn_or_skip()
    ex = kl.HandlerAndReturn(seed)
    want = ex.answer().value
    assert want == [(s.handler, s.ret) for s in ex.run.steps]
    assert ex.check(want).ok and ex.check([list(p) for p in want]).ok
    first_handler = ex.check([("handle_nothing", 1)] + want[1:])
    assert not first_handler.ok and f"EXIT_REASON_{ex.run.steps[0].name}" in first_handler.message
    flipped = ex.check([(want[0][0], 1 - want[0][1])] + want[1:])
    assert not flipped.ok and "return value is not" in flipped.message
    assert not ex.check(want[:-1]).ok
    assert not ex.check(["handle_io"]).ok and not ex.check("x").ok


def test_the_configuration_changes_the_answer():
    unicorn_or_skip()
    ex = next(kl.WhereDoExitsGo(s) for s in range(40)
              if kl.WhereDoExitsGo(s).config.ioeventfds)
    port = ex.config.ioeventfds[0].addr
    vm_exits: list = []  # the same VM exits, walked without the ioeventfd
    run_guest(ex.guest, "unicorn", kernel_exits=vm_exits)
    without = kvm_run(vm_exits, KvmConfig(irqchip=ex.config.irqchip))
    outs = [u for u in without.user_exits if u.reason.name == "IO" and u.fields["port"] == port
            and u.fields["direction"] == "out"]
    assert outs and len(without.user_exits) == len(ex.run.user_exits) + len(outs)


@pytest.mark.skipif(available()["kvm"] is not None, reason=f"real KVM: {available()['kvm']}")
@pytest.mark.parametrize("seed", range(8))
def test_generated_guests_exit_the_same_on_kvm(seed):
    unicorn_or_skip()
    g = kl.WhereDoExitsGo(seed).guest
    u, k = run_guest(g, "unicorn"), run_guest(g, "kvm")
    assert [e.to_dict() for e in u.exits] == [e.to_dict() for e in k.exits]
