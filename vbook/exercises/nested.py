"""Exercises of chapter 07: count the references of a 2-D walk; say where an L2 EPT miss goes.

Every answer is computed by the models — :func:`vbook.models.nested.walk_2d` over
real guest and EPT tables, and :func:`vbook.models.nested.ept02_fault` over real
EPT12 and EPT01 tables — never stored.
"""

from __future__ import annotations

from vbook.exercises.base import Exercise, Feedback, Solution
from vbook.memory import GuestMemory
from vbook.models import ept, paging
from vbook.models.bits import SIZE_1G, SIZE_2M, SIZE_4K, size_name
from vbook.models.ept import EptTables, Memslot, MemType, Tdp, tdp_page_fault
from vbook.models.nested import Ept02Fault, L1Memory, Walk2d, ept02_fault, refs_count, walk_2d
from vbook.models.paging import PageTables, PteFlags

_LEAF_LEVEL = {SIZE_4K: 1, SIZE_2M: 2, SIZE_1G: 3}
_ACC_NAME = {"r": "data read", "w": "data write", "x": "instruction fetch"}
_DOES = {"r": "reads data", "w": "writes data", "x": "fetches an instruction"}


def _ram(host: GuestMemory, gpa: int, hpa: int, size: int) -> L1Memory:
    """``size`` bytes of guest-physical memory from GPA ``gpa``, stored at HPA ``hpa`` of
    ``host``, through one memslot: how a guest kernel (or L1) writes its own tables."""
    return L1Memory(host, [Memslot.of(gpa, size, hpa)])


# --- the 2-D walk: count the references ---------------------------------------------------------

_RC_HOST = 0x200000           # host memory: the guest's table pages and the EPT tables
_RC_GUEST_TABLES = 0x100000   # HPA of the guest's page-table pages
_RC_EPT_TABLES = 0x180000     # HPA of the EPT tables


class RefCount(Exercise):
    """n-level guest paging on m-level EPT, with given page sizes on both sides: how many
    memory references does a full 2-D walk make, and how many of them are EPT's?"""

    title = "Count the references of a 2-D walk"

    def build(self) -> str:
        r = self.rng
        self.levels = r.choice((4, 4, 4, 5))
        self.ept_levels = r.choice((4, 4, 4, 5))
        sizes = (SIZE_4K,) * 3 + (SIZE_2M,) * 2 + (SIZE_1G,)
        self.guest_page = r.choice(sizes)
        self.ept_table_page = r.choice(sizes)
        self.ept_data_page = self.ept_table_page if r.random() < 0.6 else r.choice(sizes)
        self.access = r.choice("rwx")
        host = self.host = GuestMemory(_RC_HOST, record=False)
        # the guest's page tables: in 1 GiB frame `tframe`, stored at HPA _RC_GUEST_TABLES
        tframe = r.randrange(0, 8) * SIZE_1G
        tgpa = tframe + (0 if self.ept_table_page == SIZE_1G else r.randrange(0, 512) * SIZE_2M) + 0x100000
        pt = PageTables(_ram(host, tgpa, _RC_GUEST_TABLES, 0x40000), tgpa, self.levels,
                        alloc_limit=tgpa + 0x40000)
        # the data page: in another 1 GiB frame
        dframe = r.choice([f for f in range(8, 64)]) * SIZE_1G
        dgpa = dframe + r.randrange(0, SIZE_1G // self.guest_page) * self.guest_page
        half = 1 << (12 + 9 * self.levels - 1)
        gva = r.randrange(1, half // self.guest_page) * self.guest_page
        if r.random() < 0.3:                      # a kernel address: the upper canonical half
            gva |= (1 << 64) - half
        pt.map(gva, dgpa, size=self.guest_page, flags=PteFlags.RW | PteFlags.US)
        self.gva = gva + r.randrange(self.guest_page)
        self.cr3 = pt.cr3
        # EPT: the guest's table pages with ept_table_page pages, the data page with ept_data_page
        t = EptTables(host, _RC_EPT_TABLES, levels=self.ept_levels, alloc_limit=_RC_HOST)
        ps = self.ept_table_page
        for frame in sorted({g & ~(ps - 1) for g in pt.tables}):
            t.map(frame, frame - tgpa + _RC_GUEST_TABLES, ps, page_size=ps)
        final = dgpa + (self.gva & (self.guest_page - 1))
        ps = self.ept_data_page
        t.map(final & ~(ps - 1), r.randrange(1, 64) * max(ps, SIZE_2M) * 8, ps, page_size=ps)
        self.eptp = t.eptp
        self.walk = walk_2d(host, self.eptp, self.cr3, self.gva, self.access, levels=self.levels)
        assert self.walk.ok, self.walk
        names = ", ".join(paging.LEVEL_NAMES[lv] for lv in range(self.levels, 0, -1))
        same = self.ept_table_page == self.ept_data_page
        ept_pages = (f"all of it with {size_name(self.ept_table_page)} pages" if same else
                     f"the guest's page-table pages with {size_name(self.ept_table_page)} pages and "
                     f"the data page with {size_name(self.ept_data_page)} pages")
        return (f"A guest with {self.levels}-level paging ({names}) runs on {self.ept_levels}-level "
                f"EPT. It {_DOES[self.access]} at GVA {self.gva:#x}, which its page tables map with "
                f"a {size_name(self.guest_page)} page. EPT maps {ept_pages}; every entry is present "
                "and allows the access.\n"
                "Nothing is cached (no TLB entry, no paging-structure or EPT cache): the CPU does "
                "the full 2-D walk.\n"
                "How many memory references does the walk make (the data access itself is not "
                "one)? Part 2: how many of them read EPT entries? Answer the total, or "
                "(total, ept).")

    def _value(self) -> tuple[int, int]:
        return len(self.walk.refs), self.walk.count("ept")

    def check(self, answer: object) -> Feedback:
        total, ept_refs = self._value()
        if isinstance(answer, tuple) and len(answer) == 2:
            t, e = answer
        else:
            t, e = answer, None
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (t, e) if v is not None):
            return Feedback(False, "answer with the number of references, or (total, ept)")
        assert isinstance(t, int)
        if t != total:
            full = refs_count(self.levels, self.ept_levels)
            if t == full:
                return Feedback(False, "that is the count with 4 KiB pages everywhere: where does a "
                                       "large page end a walk early — in the guest's walk, in the EPT "
                                       "walks, or both?")
            if t == total + 1:
                return Feedback(False, "one too many: the data access itself is not a walk reference")
            return Feedback(False, "not yet: count the guest entries the walk reads; each of their "
                                   "addresses, and the final GPA, needs its own EPT walk — how long "
                                   "is each?")
        if e is None:
            return Feedback(True, f"right: {total} references. Part 2: how many of them read EPT "
                                  "entries? Answer (total, ept)")
        if e == ept_refs:
            return Feedback(True, f"right: {total} references, {ept_refs} of them EPT entries and "
                                  f"{total - ept_refs} guest entries")
        return Feedback(False, "the total is right; now split it: every guest entry read is one "
                               "guest reference, every other reference reads an EPT entry")

    def answer(self) -> Solution:
        w: Walk2d = self.walk
        guest = [r for r in w.refs if r.kind == "guest"]
        lines = [w.table(), "", "the grid (reference numbers; rows: guest levels, then the final GPA):",
                 w.grid().table(), ""]
        rows = [sum(1 for r in w.refs if r.kind == "ept" and r.level == g.level) for g in guest]
        final = sum(1 for r in w.refs if r.kind == "ept" and r.level == 0)
        lines.append(f"{len(guest)} guest entries ({', '.join(g.name for g in guest)}: the "
                     f"{guest[-1].name} entry maps the {size_name(w.page_size)} page), each after an "
                     f"EPT walk of {'/'.join(map(str, sorted(set(rows))))} references "
                     f"({size_name(self.ept_table_page)} EPT pages), then {final} EPT references for "
                     f"the final GPA ({size_name(self.ept_data_page)} EPT page): "
                     f"{len(guest)} x ({rows[0]} + 1) + {final} = {len(w.refs)}")
        return Solution(self._value(), "\n".join(lines))


# --- nested EPT: where does an L2 EPT violation go? -------------------------------------------

_WD_HOST = 0x600000            # host memory: EPT01's tables, L1's RAM
_WD_EPT01 = 0x80000            # HPA of EPT01's tables, up to _WD_L1_HPA
_WD_L1_HPA = 0x100000          # HPA of L1 GPA 0 (L1's RAM is up to 4 MiB)
_WD_HIGH = (0x100000000, 0x100000, 0x500000)   # an optional second memslot: L1 GPA, size, HPA
#: L1 GPAs outside every memslot: devices QEMU emulates for L1
_WD_MMIO = {0xFEBF0000: "a virtio-mmio device of L1", 0xFEB80000: "a PCI BAR of L1",
            0xFED00000: "L1's HPET"}
OUTCOMES = ("fixed", "ept01_miss", "reflect", "emulate")


def _outcome(answer: object) -> tuple[str | None, str | None]:
    """(outcome, "violation"/"misconfig"/None) from "reflect" or ("reflect", …); None if unreadable."""
    sub = None
    if isinstance(answer, tuple) and len(answer) == 2:
        answer, s = answer
        if isinstance(s, int) and not isinstance(s, bool):
            sub = {ept.EXIT_REASON_EPT_VIOLATION: "violation",
                   ept.EXIT_REASON_EPT_MISCONFIG: "misconfig"}.get(s, "?")
        elif isinstance(s, str):
            s = s.strip().lower().removeprefix("ept_").removeprefix("ept ")
            sub = s if s in ("violation", "misconfig") else "?"
        else:
            sub = "?"
    if not isinstance(answer, str):
        return None, None
    out = answer.strip().lower().replace(" ", "_").replace("-", "_")
    return (out if out in OUTCOMES else None), sub


class WhereDoesItGo(Exercise):
    """An L2 access misses EPT02: given EPT12 and EPT01, what does L0 do?"""

    title = "Where does an L2 EPT violation go?"

    def build(self) -> str:
        r = self.rng
        host = self.host = GuestMemory(_WD_HOST, record=False)
        ram = r.choice((2, 3, 4)) << 20
        slots = [Memslot.of(0, ram, _WD_L1_HPA)]
        if r.random() < 0.4:
            slots.append(Memslot.of(*_WD_HIGH))
        self.slots = tuple(slots)
        self.ept01 = Tdp(EptTables(host, _WD_EPT01, alloc_limit=_WD_L1_HPA), list(self.slots))
        lo = r.choice((0x40000, 0x80000, 0x100000))
        self.ept01.tables.map(0, _WD_L1_HPA, lo)           # what L1 has touched so far ...
        touched = sorted({r.randrange(lo >> 12, ram >> 12) << 12 for _ in range(r.randint(1, 3))})
        if len(slots) > 1 and r.random() < 0.5:
            touched.append(_WD_HIGH[0] + (r.randrange(0, _WD_HIGH[1] >> 12) << 12))
        # EPT12, written by L1 in its own memory (L0 reads it through the memslots)
        t12 = r.randrange(0x10, (lo >> 12) - 0x10) << 12      # inside what EPT01 maps
        self.ept12 = EptTables(_ram(host, 0, _WD_L1_HPA, ram), t12, alloc_limit=t12 + 0x10000)
        l2_base = r.randrange(0x10, 0x4000) << 12
        self.rows: list[tuple[int, int]] = []              # (L2 GPA page, EPT12 PTE)
        hole = r.randrange(6) if r.random() < 0.5 else None
        for i in range(6):
            if i == hole:
                continue
            kind = r.choices(("mapped", "slot", "mmio", "high"), (4, 3, 1.5, 1.5 if len(slots) > 1 else 0))[0]
            if kind == "mapped":
                l1 = r.choice([r.randrange(0, lo >> 12) << 12, *touched])
            elif kind == "slot":
                l1 = r.randrange(lo >> 12, ram >> 12) << 12
            elif kind == "mmio":
                l1 = r.choice(sorted(_WD_MMIO)) + (r.randrange(0, 4) << 12)
            else:
                l1 = _WD_HIGH[0] + (r.randrange(0, _WD_HIGH[1] >> 12) << 12)
            rwx, memtype = r.choice((7, 7, 7, 3, 5, 1, 4)), r.choice((MemType.WB,) * 5 + (MemType.UC,))
            if r.random() < 0.07:
                rwx = r.choice((0b010, 0b110))
            elif r.random() < 0.05:
                memtype = r.choice((2, 3, 7))
            self.ept12.map(l2_base + i * SIZE_4K, l1, SIZE_4K, rwx=rwx, memtype=memtype)
            self.rows.append((l2_base + i * SIZE_4K, self.ept12.get_entry(l2_base + i * SIZE_4K, 1)))
        for page in touched:                                # L1 touched them: KVM's fault path
            tdp_page_fault(self.ept01, page)
        self.touched, self.lo = touched, lo
        # the access
        i = r.randrange(6)
        self.l2_gpa = l2_base + i * SIZE_4K + r.randrange(SIZE_4K)
        entry = next((e for g, e in self.rows if g == l2_base + i * SIZE_4K), 0)
        allowed = [a for a, b in (("r", 1), ("w", 2), ("x", 4)) if entry & b]
        self.access = r.choice(allowed) if allowed and r.random() < 0.6 else r.choice("rwx")
        self.decision: Ept02Fault = ept02_fault(host, self.ept01, self.ept12.eptp, self.l2_gpa, self.access)
        return self._text()

    def _text(self) -> str:
        slots = "; ".join(f"[{s.base_gfn << 12:#x}, {(s.base_gfn + s.npages) << 12:#x}) at HPA "
                          f"{s.host_pfn << 12:#x}" for s in self.slots)
        pages = ", ".join(f"{p:#x}" for p in self.touched)
        touched = f" and the page{'s' if len(self.touched) > 1 else ''} {pages}" if self.touched else ""
        rows = []
        for g, e in self.rows:
            l1 = e & ~0xFFF & ((1 << ept.DEFAULT_MAXPHYADDR) - 1)
            rows.append(f"  L2 GPA {g:#x}: PTE {e:#018x}  (L1 GPA {l1:#x}, bits 2:0 = {e & 7:03b}b, "
                        f"memory type {(e >> 3) & 7})")
        mmio = ", ".join(f"{a:#x} is {n}" for a, n in _WD_MMIO.items())
        return ("L0 (KVM) runs L1, a guest hypervisor, which runs L2 with EPT: L0 gives the CPU EPT02 "
                "(L2 GPA -> HPA), built from EPT12 (L1's, L2 GPA -> L1 GPA) and L1's memory.\n"
                f"L1's memslots (L1 GPA -> HPA): {slots}; every other L1 GPA is MMIO QEMU emulates "
                f"for L1 ({mmio}).\n"
                f"EPT01 (L0's EPT for L1) maps so far only what L1 has touched: L1 GPA "
                f"[0x0, {self.lo:#x}){touched}.\n"
                f"EPT12 (EPTP {self.ept12.eptp:#x} in vmcs12; tables in L1 memory, every upper-level "
                "entry present with RWX) has these 4 KiB leaves; no other L2 page is mapped:\n"
                + "\n".join(rows) + "\n"
                "(An EPT entry with W but not R, or with memory type 2, 3 or 7, is a misconfiguration.)\n"
                f"EPT02 is empty. L2 {_DOES[self.access]} at L2 GPA {self.l2_gpa:#x}: an EPT "
                "violation exits to L0.\n"
                "What does L0 do? \"fixed\" (it builds the EPT02 entry from EPT12 and EPT01), "
                "\"ept01_miss\" (it builds it, taking the host page from L1's memslot because EPT01 "
                "does not map that L1 page yet), \"reflect\" (it makes L1 see an EPT violation or "
                "misconfiguration), or \"emulate\" (it emulates the access as MMIO of L1). "
                "For \"reflect\" you may say which: (\"reflect\", \"violation\") or "
                "(\"reflect\", \"misconfig\").")

    def check(self, answer: object) -> Feedback:
        d = self.decision
        out, sub = _outcome(answer)
        if out is None:
            return Feedback(False, 'answer with one of "fixed", "ept01_miss", "reflect", "emulate"')
        want = d.outcome
        if out == want:
            if want == "reflect":
                kind = "misconfig" if d.exit_reason == ept.EXIT_REASON_EPT_MISCONFIG else "violation"
                if sub not in (None, kind):
                    return Feedback(False, "to L1, yes; but are EPT12's entries malformed, or do they "
                                           "just not allow this access?")
                q = f", qualification {d.qualification:#x}" if d.qualification is not None else ""
                return Feedback(True, f"right: L1 gets EPT_{kind.upper()} (exit {d.exit_reason}{q}) "
                                      f"for L2 GPA {d.l2_gpa:#x} — {d.reason}")
            return Feedback(True, f"right: {want} — {d.reason}")
        if want == "reflect":
            return Feedback(False, "L0 can only build an EPT02 entry for what EPT12 allows: look at "
                                   "EPT12's entry for that L2 page — is there one, what are its bits "
                                   "2:0 and its memory type?")
        if out == "reflect":
            return Feedback(False, "EPT12 translates this access and allows it: L1 has nothing to do")
        if want == "emulate":
            return Feedback(False, "EPT12 is fine; but is the L1 GPA it gives RAM of L1? Look at the "
                                   "memslots")
        if out == "emulate":
            return Feedback(False, "the L1 GPA EPT12 gives is in a memslot: it is RAM of L1")
        if want == "ept01_miss":
            return Feedback(False, "EPT12 and the memslot are fine; but does EPT01 map that L1 page yet?")
        return Feedback(False, "look again at the L1 pages EPT01 maps")

    def answer(self) -> Solution:
        d = self.decision
        w = d.ept12_walk
        lines = [f"EPT12 walk of L2 GPA {self.l2_gpa:#x} ({_ACC_NAME[self.access]}), in L1 memory:"]
        lines += [f"  {s.name:<5} at L1 GPA {s.entry_addr:#x} = {s.entry:#018x}" for s in w.steps]
        if w.fault is not None:
            lines.append(f"  -> {w.fault.reason}")
        else:
            lines.append(f"  -> L1 GPA {w.address:#x}")
        lines.append("L0: " + " -> ".join(d.functions))
        lines.append(d.reason)
        if d.reflected:
            q = f", qualification {d.qualification:#x}" if d.qualification is not None else ""
            lines.append(f"nested_vmx_vmexit: L1 sees exit reason {d.exit_reason}{q}, "
                         f"vmcs12->guest_physical_address = {d.guest_physical_address:#x}")
        elif d.hpa is not None:
            lines.append(f"ept_fetch: EPT02 maps L2 page {self.l2_gpa & ~0xFFF:#x} -> HPA "
                         f"{d.hpa & ~0xFFF:#x} with EPT12's rights; L2 re-executes, L1 sees nothing")
        else:
            lines.append("L0 emulates the instruction (KVM_EXIT_MMIO to L1's QEMU unless KVM itself "
                         "claims the address); L1 sees nothing")
        return Solution(d.outcome, "\n".join(lines))


__all__ = ["OUTCOMES", "RefCount", "WhereDoesItGo"]
