"""Chapter 02's exercises: seeded, checked by the models, and the generated guests are real code.

The prologue and every generated instruction are re-assembled with GNU as
(skipped without it); generated guests give the same exits and handlers on
unicorn and /dev/kvm (skipped without it).
"""

from __future__ import annotations

from random import Random

import pytest

from vbook.backends import available
from vbook.exercises import run_loop as ex
from vbook.guests import build
from vbook.models import run_loop as rl

SEEDS = range(12)


def needs_as():
    why = build.tools_missing()
    if why:
        pytest.skip(f"cannot assemble: {why}")


# --- PredictHandlers ---------------------------------------------------------------------------

def test_same_seed_same_problem_different_seeds_differ():
    assert repr(ex.PredictHandlers(3)) == repr(ex.PredictHandlers(3))
    assert len({ex.PredictHandlers(s).guest.code for s in SEEDS}) == len(SEEDS)
    assert {ex.PredictHandlers(s).ending for s in SEEDS} == set(ex.ENDINGS)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_answer_checks_and_names_every_handler(seed):
    e = ex.PredictHandlers(seed)
    sol = e.answer()
    assert e.check(sol.value).ok
    handlers = [v.split()[1] for v in sol.value]
    assert set(handlers) <= set(ex.HANDLERS)
    fb = e.check(sol.value)
    for n, h in enumerate(handlers, 1):
        assert f"{n}. {h}" in fb.message
    assert e.check([tuple(v.split()) for v in sol.value]).ok  # pairs work too
    assert e.check([f"KVM_EXIT_{v}" for v in sol.value]).ok


def test_feedback_without_giving_the_answer_away():
    e = ex.PredictHandlers(1)
    want = e.answer().value
    assert want[0] == "MMIO test_iomem_read"
    fb = e.check(["IO serial_ioport_read"])
    assert not fb and fb.message.startswith("exit 1 is not IO")
    fb = e.check(["MMIO serial_ioport_read"])
    assert not fb and "through address_space_rw; but it does not end in serial_ioport_read" in fb.message
    fb = e.check([v.split()[0] for v in want])
    assert not fb and "now name the handler" in fb.message
    fb = e.check(want[:3])
    assert not fb and "the first 3 are right; there are more exits" in fb.message
    assert not e.check("IO HLT") and not e.check(42)


def test_a_debug_exit_ending_hides_what_comes_after():
    seed = next(s for s in SEEDS if ex.PredictHandlers(s).ending == "debug_exit")
    e = ex.PredictHandlers(seed)
    want = e.answer().value
    assert want[-1] == "IO debug_exit_write"
    fb = e.check(want + ["HLT kvm_handle_halt"])
    assert not fb and "look at how the run ends (guest-shutdown)" in fb.message


def test_a_ud2_ending_is_a_triple_fault():
    seed = next(s for s in SEEDS if ex.PredictHandlers(s).ending == "ud2")
    assert ex.PredictHandlers(seed).answer().value[-1] == "SHUTDOWN qemu_system_reset_request"


def test_prologue_reassembles():
    needs_as()
    assert build.assemble(ex.PROLOGUE_LISTING).hex() == ex.PROLOGUE.hex()


@pytest.mark.parametrize("name", sorted(ex.OPS) + sorted(ex.ENDINGS))
def test_every_generated_instruction_is_what_its_listing_says(name):
    needs_as()
    gen = ex.OPS.get(name) or ex.ENDINGS[name]
    for seed in range(3):
        code, text = gen(Random(seed))
        listing = ".intel_syntax noprefix\n.code32\n" + "\n".join(
            line.split(";")[0] for line in text.splitlines()) + "\n"
        assert build.assemble(listing).hex() == code.hex(), text


@pytest.mark.parametrize("seed", range(6))
def test_generated_guests_run_alike_on_kvm(seed):
    for backend, why in available().items():
        if why:
            pytest.skip(f"{backend} backend: {why}")
    g = ex.PredictHandlers(seed).guest
    uni, kvm = rl.run(g, "unicorn"), rl.run(g, "kvm")
    assert (kvm.handlers, kvm.end, kvm.exit_code) == (uni.handlers, uni.end, uni.exit_code)
    assert [h.exit for h in kvm.handled] == [h.exit for h in uni.handled]


# --- SerialRead, DebugExitStatus -----------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_serial_read(seed):
    e = ex.SerialRead(seed)
    v = e.answer().value
    assert 0 <= v <= 0xFF and e.check(v).ok
    assert not e.check((v + 1) & 0xFF) and not e.check("0x60")


def test_serial_read_with_dlab():
    e = next(ex.SerialRead(s) for s in range(100)
             if (ex.SerialRead(s).read - 0x3F8) in (0, 1)
             and any(p == 0x3FB and v == 0x80 for p, v in ex.SerialRead(s).writes[-2:]))
    sol = e.answer()
    assert "DLL" in sol.steps or "DLM" in sol.steps


@pytest.mark.parametrize("seed", SEEDS)
def test_debug_exit_status(seed):
    e = ex.DebugExitStatus(seed)
    code, shell = e.answer().value
    assert code == (e.value << 1) | 1 and shell == code & 0xFF
    assert e.check((code, shell)).ok
    assert "8 bits" in e.check((code, code)).message if code != shell else True
    assert not e.check((code + 2, shell)) and not e.check(code)
