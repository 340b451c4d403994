"""Chapter 06's exercises (vbook.exercises.ept): seeded, checked and answered by the models.

Besides "the answer checks", each problem is solved a second time from its printed
question alone, by a small decoder written here from the SDM's rules — so the
question names everything needed, and the model and the decoder agree.
"""

from __future__ import annotations

import re
from functools import cache

from vbook.exercises import ept as ex_ept
from vbook.models import ept
from vbook.models.ept import EptMisconfig, EptViolation

SEEDS = range(200)
HEX = r"0x[0-9a-f]+"


@cache
def walk_ex(seed: int) -> ex_ept.EptWalk:
    return ex_ept.EptWalk(seed=seed)


@cache
def lazy_ex(seed: int) -> ex_ept.LazyEpt:
    return ex_ept.LazyEpt(seed=seed)


def gives_away(message: str, value: object) -> bool:
    """Whether a hint spells the value out (hex or decimal, as a whole number)."""
    text = re.sub(r"\d+ [kmg]ib", "", message.lower())
    nums = [value] if isinstance(value, int) else [v for v in value if isinstance(v, int)] \
        if isinstance(value, tuple) else []
    if isinstance(value, str) and value.lower() in text:
        return True
    return any(f"{n:#x}" in text or re.search(rf"(?<![\w.]){n}(?![\w.])", text) for n in nums)


# --- an independent EPT decoder (SDM "The Extended Page Table Mechanism", "EPT Misconfigurations",
#     "Exit Qualification for EPT Violations"), reading only the question text ----------------------

ENTRY = re.compile(rf"^\s+(PML4E|PDPTE|PDE|PTE)\s*\[\s*(\d+)\] at HPA ({HEX}) = ({HEX})$", re.M)
ACC = {"reads data": ("r", 1), "writes data": ("w", 2), "fetches an instruction": ("x", 4)}


def solve(question: str) -> tuple[object, int]:
    """(the answer, the number of entries the walk used) from the printed problem."""
    eptp = int(re.search(rf"EPTP = ({HEX})", question)[1], 16)
    maxpa = int(re.search(r"MAXPHYADDR = (\d+)", question)[1])
    gpa = int(re.search(rf"GPA ({HEX})", question)[1], 16)
    assert eptp & 7 == 6 and eptp >> 3 & 7 == 3 and not eptp & 0xF80   # WB, 4-level, no reserved bits
    if "page walker reads" in question:
        acc, final = (2 if eptp & 0x40 else 1), False
    else:
        acc, final = next(v[1] for k, v in ACC.items() if f"guest {k} at" in question), True
    tail = 0x80 | (0x100 if final else 0)
    addr = ((1 << maxpa) - 1) & ~0xFFF
    table, rights = eptp & addr, 7
    entries = ENTRY.findall(question)
    for i, (name, idx, at, val) in enumerate(entries):
        level = 4 - i
        assert name == ("PML4E", "PDPTE", "PDE", "PTE")[i]
        assert int(idx) == gpa >> (12 + 9 * (level - 1)) & 511
        assert int(at, 16) == table + 8 * int(idx)
        e = int(val, 16)
        if e & 7 == 0:
            return ("violation", acc | tail), i + 1
        misconfig = e & 7 in (2, 6) or e & (((1 << 52) - 1) & ~((1 << maxpa) - 1))
        leaf = level == 1 or (level in (2, 3) and e & 0x80)
        size = 1 << (12 + 9 * (level - 1))
        if leaf:
            misconfig = misconfig or e & addr & (size - 1) or e >> 3 & 7 in (2, 3, 7)
        else:
            misconfig = misconfig or e & 0xF8
        if misconfig:
            return "misconfig", i + 1
        rights &= e & 7
        if not leaf:
            table = e & addr
            continue
        if not rights & acc:
            return ("violation", acc | rights << 3 | tail), i + 1
        return (e & addr & ~(size - 1)) | (gpa & (size - 1)), i + 1
    raise AssertionError("the printed entries end before the walk does")


def test_ept_walk_solved_from_the_printed_question():
    for seed in SEEDS:
        ex = walk_ex(seed)
        want, used = solve(ex.question)
        assert ex.answer().value == want, seed
        assert used == len(ENTRY.findall(ex.question)), seed   # the walk stops at the last entry shown


def test_ept_walk_answer_is_the_models_and_checks_right():
    for seed in SEEDS:
        check_ept_walk(seed)


def check_ept_walk(seed: int) -> None:
    ex = walk_ex(seed)
    if seed < 25:                                           # same seed, same problem
        assert ex_ept.EptWalk(seed=seed).question == ex.question
    w = ept.walk(ex.mem, ex.eptp, ex.gpa, ex.access, translated=not ex.table_access)
    value = ex.answer().value
    if isinstance(w.fault, EptViolation):
        assert value == ("violation", w.fault.qualification)
        q = w.fault.qualification
        wrongs = [("violation", q ^ 1), ("violation", q ^ 8), ("violation", q ^ 0x100), "misconfig", 0x1000]
    elif isinstance(w.fault, EptMisconfig):
        assert value == "misconfig"
        wrongs = [("violation", 0x181), ("violation", 0x81), 0x1000]
    else:
        assert value == w.address
        wrongs = [value ^ 1, value ^ w.page_size, ("violation", 0x181), "misconfig"]
    good = ex.check(value)
    assert good.ok and good and good.message.startswith("right")
    assert ex.check(("EPT_VIOLATION", value[1]) if isinstance(value, tuple) else value).ok
    for bad in wrongs:
        fb = ex.check(bad)
        assert not fb.ok, bad
        assert not gives_away(fb.message, value), (bad, fb.message)
    for junk in ("0x1000", None, True, ("violation", "0x181"), ("violation",)):
        assert not ex.check(junk).ok


def test_ept_walk_hints_point_at_the_mistake():
    exs = [walk_ex(s) for s in SEEDS]
    viol = next(e for e in exs if isinstance(e.walk.fault, EptViolation) and e.walk.fault.rwx)
    q = viol.walk.fault.qualification
    assert "bits 2:0 describe the access" in viol.check(("violation", q ^ 3)).message
    assert "bits 5:3" in viol.check(("violation", q ^ 0x10)).message
    assert "bits 7 and 8" in viol.check(("violation", q ^ 0x100)).message
    assert "only bits" in viol.check(("violation", q | 0x1000)).message
    assert "allows this access" in next(e for e in exs if e.walk.ok).check(("violation", 0x181)).message
    ok = next(e for e in exs if e.walk.ok and e.walk.page_size > 4096 and e.walk.address % 4096)
    assert "offset" in ok.check(ok.walk.address & ~0xFFF).message
    leaf = ok.walk.steps[-1].entry
    assert "address bits" in ok.check(leaf).message
    mis = next(e for e in exs if isinstance(e.walk.fault, EptMisconfig))
    assert "well-formed" in mis.check(("violation", 0x181)).message
    assert ept.LEVEL_NAMES[mis.walk.fault.level] in mis.check(0x1000).message


def test_ept_walk_problems_vary():
    exs = [walk_ex(s) for s in SEEDS]
    assert len({e.question for e in exs}) == len(exs)
    faults = [e.walk.fault for e in exs]
    assert sum(f is None for f in faults) >= 20
    not_present = [f for f in faults if isinstance(f, EptViolation) and f.rwx == 0]
    rights = [f for f in faults if isinstance(f, EptViolation) and f.rwx]
    assert len(not_present) >= 10 and len(rights) >= 10
    assert {f.level for f in not_present} == {1, 2, 3, 4}
    reasons = " ".join(f.reason for f in faults if isinstance(f, EptMisconfig))
    for why in ("without read", "memory type", "MAXPHYADDR", "bits 7:3", "below the"):
        assert why in reasons, why
    assert {e.walk.page_size for e in exs if e.walk.ok} == {1 << 12, 1 << 21, 1 << 30}
    quals = {f.qualification & 0x187 for f in faults if isinstance(f, EptViolation)}
    assert {0x181, 0x182, 0x184, 0x81} <= quals              # read/write/fetch; a paging-structure read
    assert any(e.access == "x" and e.walk.ok and e.walk.rwx == 4 for e in exs)   # execute-only


def test_ept_walk_repr_and_answer_text():
    ex = walk_ex(7)
    assert repr(ex).startswith("Walk the EPT (seed 7)\n") and "0x" in ex._repr_html_()
    sol = ex.answer()
    assert sol.steps.startswith("EPT walk of GPA") and "answer:" in repr(sol)
    v = next(walk_ex(s) for s in SEEDS if isinstance(walk_ex(s).walk.fault, EptViolation)).answer()
    assert "qualification =" in v.steps and repr(v).endswith(f"('violation', {v.value[1]:#x})")


# --- LazyEpt -------------------------------------------------------------------------------------

LINE = re.compile(rf"^\s+(\d+)\. (instruction fetch|data read|data write)\s+({HEX})", re.M)


def predict(question: str) -> list[int]:
    """The accesses that fault and get fixed, from the question: RAM is the one memslot;
    with huge pages a 2 MiB frame the memslot covers whole is one mapping, else 4 KiB."""
    ram = int(re.search(rf"memslot: GPA \[0, ({HEX})\)", question)[1], 16)
    huge = "2 MiB huge pages" in question
    seen, fixes = set(), []
    for n, _, g in LINE.findall(question):
        gpa = int(g, 16)
        if gpa >= ram:
            continue                                   # MMIO: emulated, never "fixed"
        key = ("2M", gpa >> 21) if huge and ((gpa >> 21) + 1) << 21 <= ram else ("4K", gpa >> 12)
        if key not in seen:
            seen.add(key)
            fixes.append(int(n))
    return fixes


def test_lazy_ept_counts_what_the_tdp_model_fixes():
    for seed in SEEDS:
        check_lazy_ept(seed)


def check_lazy_ept(seed: int) -> None:
    ex = lazy_ex(seed)
    if seed < 25:                                           # same seed, same problem
        assert ex_ept.LazyEpt(seed=seed).question == ex.question
    want = ex.answer().value
    assert ex.answer().value == want                   # runs on a fresh EPT every time
    fixes = predict(ex.question)
    assert len(LINE.findall(ex.question)) == len(ex.accesses)
    assert want == len(fixes)
    assert ex.check(want).ok and ex.check(fixes).ok and ex.check(tuple(fixes)).ok
    others = [i for i in range(1, len(ex.accesses) + 1) if i not in fixes]
    for bad in (want + 1, want - 1, len(ex.accesses), fixes[:-1], [*fixes, *others[:1]]):
        if bad == want or bad == fixes:
            continue
        fb = ex.check(bad)
        assert not fb.ok, bad
        if isinstance(bad, int):
            assert not gives_away(fb.message, want), fb.message
        else:   # a list: the hint names one access to look at again, never the list
            assert re.fullmatch(r"not yet: look again at access \d+", fb.message), fb.message
    assert not ex.check("3").ok and "answer with" in ex.check("3").message
    assert "number the accesses" in ex.check([*fixes, len(ex.accesses) + 1]).message


def test_lazy_ept_huge_pages_fault_once_per_2m_frame():
    exs = [lazy_ex(s) for s in SEEDS]
    huge = [e for e in exs if e.hugepages]
    assert 60 <= len(huge) <= 140
    pages = lambda e: len({g >> 12 for g, _, _ in e.accesses if g < e.ram})   # noqa: E731
    assert any(e.answer().value < pages(e) for e in huge)             # huge pages save exits
    assert all(e.answer().value == pages(e) for e in exs if not e.hugepages)
    tail = next(e for e in huge if any(g < e.ram and g >= e.ram & ~((1 << 21) - 1) and e.ram % (1 << 21)
                                       for g, _, _ in e.accesses))
    assert "4 KiB at GPA" in tail.answer().steps and "2 MiB at GPA" in tail.answer().steps
    h = next(e for e in huge if e.answer().value != pages(e))
    assert "without huge pages" in h.check(pages(h)).message
    mm = next(e for e in exs if e.mmio and any(g >= e.ram for g, _, _ in e.accesses)
              and not e.hugepages)
    assert "MMIO" in mm.check(mm.answer().value + len({g >> 12 for g, _, _ in mm.accesses
                                                       if g >= mm.ram})).message
    assert "EPT misconfiguration" in next(
        e.answer().steps for e in exs if e.mmio and sum(g >= e.ram for g, _, _ in e.accesses) > 1
        and len({g >> 12 for g, _, _ in e.accesses if g >= e.ram}) == 1)


def test_lazy_ept_problems_vary():
    exs = [lazy_ex(s) for s in SEEDS]
    assert len({e.question for e in exs}) == len(exs)
    assert len({e.answer().value for e in exs}) >= 5
    assert any(e.mmio for e in exs) and any(not e.mmio for e in exs)
    kinds = {what.split(":")[0] for e in exs for _, _, what in e.accesses}
    assert {"code", "stack", "buffer", "a global variable", "MMIO"} <= kinds
    # repeated addresses and different addresses in one page both occur
    assert any(len({g for g, _, _ in e.accesses}) < len(e.accesses) for e in exs)
    assert any(len({g >> 12 for g, _, _ in e.accesses}) < len({g for g, _, _ in e.accesses}) for e in exs)
