"""Chapter 07's exercises (vbook.exercises.nested): seeded, checked and answered by the models.

Each problem is also solved from its printed question alone — RefCount by the
row/column rule of the 2-D walk, WhereDoesItGo by L0's decision order written
out here — so the question names everything needed and the models agree.
"""

from __future__ import annotations

import re
from functools import cache

from vbook.exercises import nested as nx
from vbook.models import ept
from vbook.models.nested import ept02_fault, refs_count, walk_2d

SEEDS = range(200)
HEX = r"0x[0-9a-f]+"
SIZE = {"4 KiB": 1, "2 MiB": 2, "1 GiB": 3}      # the level a leaf of that size sits at


@cache
def refs_ex(seed: int) -> nx.RefCount:
    return nx.RefCount(seed=seed)


@cache
def where_ex(seed: int) -> nx.WhereDoesItGo:
    return nx.WhereDoesItGo(seed=seed)


def whole_number_in(message: str, n: int) -> bool:
    text = re.sub(r"\d+ [KMG]iB", "", message)
    return re.search(rf"(?<![\w.:]){n}(?![\w.:])", text) is not None


# --- RefCount ------------------------------------------------------------------------------------

def count_from_question(q: str) -> tuple[int, int]:
    """n guest entries, each after an EPT walk of the table pages' length, then the final EPT walk."""
    n = int(re.search(r"with (\d)-level paging", q)[1])
    m = int(re.search(r"runs on (\d)-level EPT", q)[1])
    guest = re.search(r"with a (\d [KMG]iB) page", q)[1]
    same = re.search(r"EPT maps all of it with (\d [KMG]iB) pages", q)
    if same:
        tables = data = same[1]
    else:
        tables, data = re.search(r"page-table pages with (\d [KMG]iB) pages and the data page with "
                                 r"(\d [KMG]iB) pages", q).groups()
    rows = n - SIZE[guest] + 1                 # guest entries read: the walk ends at its leaf
    mt, md = m - SIZE[tables] + 1, m - SIZE[data] + 1
    return rows * (mt + 1) + md, rows * mt + md


def test_ref_count_solved_from_the_printed_question():
    for seed in SEEDS:
        ex = refs_ex(seed)
        assert ex.answer().value == count_from_question(ex.question), seed
        w = ex.walk
        assert w.ok and w.grid().count() == len(w.refs), seed
        if ex.guest_page == ex.ept_table_page == ex.ept_data_page == 1 << 12:
            assert ex.answer().value[0] == refs_count(ex.levels, ex.ept_levels), seed


def test_ref_count_answer_is_the_walks_and_checks_right():
    for seed in SEEDS:
        ex = refs_ex(seed)
        if seed < 25:                                   # same seed, same problem
            assert nx.RefCount(seed=seed).question == ex.question, seed
        again = walk_2d(ex.host, ex.eptp, ex.cr3, ex.gva, ex.access, levels=ex.levels)
        total, ept_refs = ex.answer().value
        assert (total, ept_refs) == (len(again.refs), again.count("ept")), seed
        assert ex.check((total, ept_refs)).ok and ex.check([total, ept_refs]).ok is False
        part1 = ex.check(total)
        assert part1.ok and "Part 2" in part1.message, seed
        full = refs_count(ex.levels, ex.ept_levels)
        for bad in {(total + 1, ept_refs), (total - 1, ept_refs), (total, ept_refs + 1),
                    (total, ept_refs - 1), (full, full - ex.levels)} - {(total, ept_refs)}:
            fb = ex.check(bad)
            assert not fb.ok, (seed, bad)
            assert not whole_number_in(fb.message, total), (seed, fb.message)
            if bad[0] == total:
                assert not whole_number_in(fb.message, ept_refs), (seed, fb.message)
        if total + 1 != full:
            assert "data access" in ex.check(total + 1).message
        if total != full:
            assert "4 KiB pages everywhere" in ex.check(full).message
        assert not ex.check("24").ok and "answer with" in ex.check("24").message


def test_ref_count_problems_vary():
    exs = [refs_ex(s) for s in SEEDS]
    assert len({e.question for e in exs}) == len(exs)
    assert {(e.guest_page, e.ept_table_page) for e in exs} == {(g, t) for g in (1 << 12, 1 << 21, 1 << 30)
                                                              for t in (1 << 12, 1 << 21, 1 << 30)}
    assert {(e.levels, e.ept_levels) for e in exs} == {(4, 4), (4, 5), (5, 4), (5, 5)}
    assert any(e.ept_table_page != e.ept_data_page for e in exs)
    assert {e.answer().value[0] for e in exs} >= {24, 35, 15}
    assert any(e.gva >> 63 for e in exs) and any(not e.gva >> 63 for e in exs)   # both canonical halves


def test_ref_count_answer_shows_the_walk_and_the_grid():
    sol = refs_ex(7).answer()
    assert "2-D walk of GVA" in sol.steps and "guest" in sol.steps and "gpa" in sol.steps
    assert f"= {sol.value[0]}" in sol.steps and repr(sol).endswith(f"answer: {sol.value!r}")


# --- WhereDoesItGo ---------------------------------------------------------------------------------

ACC = {"reads data": 1, "writes data": 2, "fetches an instruction": 4}


def decide_from_question(q: str) -> tuple[str, str | None]:
    """L0's order (Linux 6.1 ept_page_fault): walk EPT12 (not present / rights → violation,
    malformed → misconfiguration, both reflected); no memslot → emulate; then EPT01."""
    slots = [(int(a, 16), int(b, 16)) for a, b in
             re.findall(rf"\[({HEX}), ({HEX})\) at HPA", q.split("EPT01")[0])]
    m = re.search(rf"L1 GPA \[0x0, ({HEX})\)(?: and the pages? ([0-9a-fx, ]+))?\.", q)
    lo, pages = int(m[1], 16), {int(p, 16) for p in (m[2] or "").split(", ") if p}
    rows = {int(g, 16): int(e, 16) for g, e in re.findall(rf"L2 GPA ({HEX}): PTE ({HEX})", q)}
    does, l2 = re.search(rf"L2 (reads data|writes data|fetches an instruction) at L2 GPA ({HEX})", q).groups()
    e = rows.get(int(l2, 16) & ~0xFFF, 0)
    assert not e & ~((1 << 46) - 1)                       # no reserved high bits are generated
    if e & 7 == 0:
        return "reflect", "violation"
    if e & 7 in (2, 6) or (e >> 3) & 7 in (2, 3, 7):
        return "reflect", "misconfig"
    if not e & ACC[does]:
        return "reflect", "violation"
    l1 = e & ~0xFFF
    if not any(a <= l1 < b for a, b in slots):
        return "emulate", None
    return ("fixed" if l1 < lo or l1 in pages else "ept01_miss"), None


def test_where_does_it_go_solved_from_the_printed_question():
    for seed in SEEDS:
        ex = where_ex(seed)
        out, kind = decide_from_question(ex.question)
        assert ex.answer().value == out, (seed, ex.decision)
        if kind is not None:
            assert ex.decision.exit_reason == (ept.EXIT_REASON_EPT_MISCONFIG if kind == "misconfig"
                                               else ept.EXIT_REASON_EPT_VIOLATION), seed


def test_where_does_it_go_answer_is_the_models_and_checks_right():
    for seed in SEEDS:
        ex = where_ex(seed)
        if seed < 25:                                   # same seed, same problem
            assert nx.WhereDoesItGo(seed=seed).question == ex.question, seed
        d = ept02_fault(ex.host, ex.ept01, ex.ept12.eptp, ex.l2_gpa, ex.access)
        want = ex.answer().value
        assert want == d.outcome == ex.decision.outcome, seed
        fb = ex.check(want)
        assert fb.ok and d.reason in fb.message, seed
        assert ex.check(want.upper()).ok and ex.check(want.replace("_", " ")).ok
        for other in set(nx.OUTCOMES) - {want}:
            bad = ex.check(other)
            assert not bad.ok, (seed, other)
            assert want not in bad.message.lower(), (seed, bad.message)
        if want == "reflect":
            kind = "misconfig" if d.exit_reason == ept.EXIT_REASON_EPT_MISCONFIG else "violation"
            wrong = "violation" if kind == "misconfig" else "misconfig"
            assert ex.check(("reflect", kind)).ok and ex.check(("reflect", d.exit_reason)).ok
            bad = ex.check(("reflect", wrong))
            assert not bad.ok and kind not in bad.message and "reflect" not in bad.message
            assert f"{d.qualification:#x}" in fb.message if d.qualification is not None else True
        assert not ex.check("ignore").ok and "answer with one of" in ex.check(3).message


def test_where_does_it_go_problems_vary():
    exs = [where_ex(s) for s in SEEDS]
    assert len({e.question for e in exs}) == len(exs)
    kinds = [(e.decision.outcome, e.decision.exit_reason) for e in exs]
    for k in [("fixed", None), ("ept01_miss", None), ("emulate", None),
              ("reflect", ept.EXIT_REASON_EPT_VIOLATION), ("reflect", ept.EXIT_REASON_EPT_MISCONFIG)]:
        assert kinds.count(k) >= 10, (k, kinds.count(k))
    reasons = " ".join(e.decision.reason for e in exs if e.decision.reflected)
    for why in ("not present", "not allowed", "without read", "memory type"):
        assert why in reasons, why
    assert {e.access for e in exs} == {"r", "w", "x"}
    assert any(len(e.slots) == 2 and e.decision.l1_gpa and e.decision.l1_gpa >= 1 << 32
               and e.decision.outcome in ("fixed", "ept01_miss") for e in exs)   # the second memslot


def test_where_does_it_go_answer_text():
    exs = [where_ex(s) for s in SEEDS]
    fixed = next(e for e in exs if e.decision.outcome == "fixed").answer()
    assert "ept_fetch" in fixed.steps and "EPT12 walk of L2 GPA" in fixed.steps
    refl = next(e for e in exs if e.decision.reflected).answer()
    assert "nested_vmx_vmexit" in refl.steps and "guest_physical_address" in refl.steps
    emu = next(e for e in exs if e.decision.outcome == "emulate").answer()
    assert "handle_abnormal_pfn" in emu.steps and repr(emu).endswith("answer: 'emulate'")
