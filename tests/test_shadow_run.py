"""vbook.shadow_run: chapter 05's model-vs-kernel table for the touch_pages guest."""

from __future__ import annotations

import pytest

from vbook.errors import BackendUnavailable
from vbook.guests import touch_pages
from vbook.shadow_run import COUNTERS, SideBySide, measure, predict, side_by_side


@pytest.mark.parametrize("n", [0, 1, 4, 16])
def test_predict_one_fault_per_page_plus_the_code_page_then_none(n):
    p = predict(n)
    first, second = p.first, p.second
    assert list(first) == list(second) == list(COUNTERS)
    # N data pages + the code page, each fixed by one #PF exit and one 4 KiB spte
    assert first["pf_taken"] == first["pf_fixed"] == first["pages_4k"] == n + 1
    # one shadow page per guest table on the path: PML4 (the root, at the first KVM_RUN), PDPT, PD, PT
    assert first["mmu_cache_miss"] == 4
    others = set(COUNTERS) - {"pf_taken", "pf_fixed", "pages_4k", "mmu_cache_miss"}
    assert all(first[c] == 0 for c in others), first
    assert all(v == 0 for v in second.values()), second       # the second pass takes no fault
    assert predict(n) == p                                    # deterministic


def test_predict_is_repr_stable():
    assert repr(predict(4)) == ("Passes(n=4, model: first pass pf_taken=5, pf_fixed=5, "
                                "mmu_cache_miss=4, pages_4k=5; second pass nothing)")


def _shadowing_kvm() -> str | None:
    from vbook.backends import available
    from vbook.host import why_not_shadow_paging

    why = available()["kvm"]
    return f"kvm backend: {why}" if why else why_not_shadow_paging()


def test_side_by_side_equal_columns_on_a_shadowing_host():
    why = _shadowing_kvm()
    if why:
        pytest.skip(why)
    s = side_by_side((1, 4, 16))
    assert s.kernel is not None, s.why
    assert s.equal is True, s.table()
    for m, k in zip(s.model, s.kernel, strict=True):
        assert (k.first, k.second) == (m.first, m.second)
        assert k.first["pf_fixed"] == m.n + 1 and k.second["pf_fixed"] == 0
    assert repr(s).endswith("equal: True)")
    assert "equal to the model: True" in s.table()


def test_unavailable_kvm_gives_the_reason(monkeypatch):
    monkeypatch.setenv("VBOOK_KVM_DEV", "/nonexistent/kvm")
    with pytest.raises(BackendUnavailable, match="/nonexistent/kvm"):
        measure(1)
    s = side_by_side((1, 4))
    assert isinstance(s, SideBySide) and s.kernel is None and s.equal is None
    assert "/nonexistent/kvm" in s.why
    table = s.table()
    assert table.splitlines()[-1] == f"kernel: unavailable: {s.why}"
    assert "—" in table and "Traceback" not in table
    assert repr(s).startswith("SideBySide(N = 1, 4: model only; kernel unavailable: ")
    # the model column is there all the same
    assert s.model == (predict(1), predict(4))


def test_guest_is_the_one_the_chapter_describes():
    g = touch_pages.build(4)
    assert g.accesses() == [(touch_pages.CODE_GPA, "x")] + [
        (touch_pages.DATA + i * 4096, "w") for i in range(4)]
