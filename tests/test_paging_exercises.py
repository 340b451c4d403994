"""Chapter 05's exercises: seeded, checked and answered by the models."""

from __future__ import annotations

import pytest

from vbook.exercises import paging as px
from vbook.models import paging


@pytest.mark.parametrize("seed", range(25))
def test_page_walk_answer_is_the_models_and_checks_right(seed):
    ex = px.PageWalk(seed=seed)
    assert px.PageWalk(seed=seed).question == ex.question  # same seed, same problem
    sol = ex.answer()
    w = paging.walk(ex.mem, ex.cr3, ex.gva, ex.access, ex.user)
    assert sol.value == (("#PF", int(w.fault.error_code)) if w.fault else w.address)
    assert ex.check(sol.value).ok
    wrong = ("#PF", 0x1F) if w.fault is None else w.fault.error_code ^ 0  # a GPA when it faults
    assert not ex.check(wrong).ok
    assert not ex.check("0x1000").ok and "answer with" in ex.check("0x1000").message


def test_page_walk_hints_point_at_the_mistake():
    faults = [px.PageWalk(seed=s) for s in range(40)]
    ex = next(e for e in faults if e.walk.fault is not None)
    code = int(ex.walk.fault.error_code)
    assert "present or not" in ex.check(("#PF", code ^ 1)).message
    ok = next(e for e in faults if e.walk.fault is None)
    frame = ok.walk.address & ~(ok.walk.page_size - 1)
    if ok.walk.address != frame:
        assert "offset" in ok.check(frame).message


@pytest.mark.parametrize("seed", range(25))
def test_shadow_faults_are_what_the_shadow_model_counts(seed):
    ex = px.ShadowFaults(seed=seed)
    want = ex.answer().value
    assert ex.answer().value == want  # runs on a copy: answering twice gives the same count
    assert ex.check(want).ok and not ex.check(want + 1).ok and not ex.check(want - 1).ok
    pages = {g for g, _ in ex.accesses}
    assert len(pages) <= want <= len(ex.accesses)  # one per page first touched, or more


def test_a_read_then_a_write_faults_twice():
    """KVM maps a clean page read-only for a read: the later write faults again."""
    ex = next(e for e in (px.ShadowFaults(seed=s) for s in range(60))
              if any(a == "r" and (g, "w") in e.accesses[i + 1:]
                     and all(g2 != g for g2, _ in e.accesses[:i])
                     for i, (g, a) in enumerate(e.accesses)))
    assert ex.answer().value > len({g for g, _ in ex.accesses})
