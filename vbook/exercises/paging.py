"""Exercises of chapter 05: walk the guest's tables by hand; count shadow-paging faults.

Every answer is computed by the models — :func:`vbook.models.paging.walk` and
:class:`vbook.models.shadow.ShadowMmu` — never stored.
"""

from __future__ import annotations

from vbook.exercises.base import Exercise, Feedback, Solution
from vbook.memory import GuestMemory
from vbook.models import paging
from vbook.models.paging import SIZE_2M, PageTables, PfErr, PteFlags, entry_flags
from vbook.models.shadow import ShadowMmu

_MEM, _TABLES = 0x100000, 0x80000
_ACCESS = {"r": "a data read", "w": "a data write", "x": "an instruction fetch"}


class PageWalk(Exercise):
    """Given the entries on a walk's path and an access, give the GPA or the #PF error code."""

    title = "Walk the guest's page tables"

    def build(self) -> str:
        r = self.rng
        self.mem = GuestMemory(_MEM, record=False)
        pt = PageTables(self.mem, _TABLES)
        large = r.random() < 0.3
        size = SIZE_2M if large else 0x1000
        base = r.randrange(1, 1 << 20) * size & ((1 << 47) - 1)
        flags = PteFlags.RW if r.random() < 0.6 else PteFlags(0)
        if r.random() < 0.6:
            flags |= PteFlags.US
        if r.random() < 0.3:
            flags |= PteFlags.NX
        pt.map(base, r.randrange(1, 0x20) * size, size=size, flags=flags)
        self.cr3 = pt.cr3
        self.gva = base + r.randrange(size) if r.random() < 0.75 else base + size + r.randrange(size)
        self.access = r.choice("rrwwx")
        self.user = r.random() < 0.5
        self.walk = paging.walk(self.mem, self.cr3, self.gva, self.access, self.user)
        rows = [f"  {s.name:5s}[{s.index:3d}] at {s.entry_addr:#x} = {s.entry:#018x}  "
                f"({entry_flags(s.entry) or 'not present'})" for s in self.walk.steps]
        who = "user mode (CPL 3)" if self.user else "supervisor mode (CPL 0)"
        return (f"CR3 = {self.cr3:#x}; 4-level paging, CR0.WP = 1, EFER.NXE = 1, no SMEP/SMAP.\n"
                f"The guest does {_ACCESS[self.access]} in {who} at GVA {self.gva:#x}.\n"
                "The entries the CPU reads on the way:\n" + "\n".join(rows) + "\n"
                "Give the GPA (an int), or ('#PF', error_code) if the access faults "
                "(error code bits: P=1, W=2, U=4, RSVD=8, I=16).")

    def check(self, answer: object) -> Feedback:
        f = self.walk.fault
        if isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "#PF":
            if f is None:
                return Feedback(False, "not yet: every entry on the path allows this access")
            code = answer[1]
            if code == int(f.error_code):
                return Feedback(True, f"right: #PF, error code {int(f.error_code):#x} — {f.reason}")
            if isinstance(code, int) and (code ^ int(f.error_code)) & PfErr.P:
                return Feedback(False, "a #PF, yes; but was the failing entry present or not (P)?")
            return Feedback(False, "a #PF, yes; the error code describes the *access*: "
                                   "write? user? fetch?")
        if isinstance(answer, bool) or not isinstance(answer, int):
            return Feedback(False, "answer with the GPA (an int) or ('#PF', error_code)")
        if f is not None:
            return Feedback(False, f"not yet: look again at the {paging.LEVEL_NAMES[f.level]} entry")
        if answer == self.walk.address:
            return Feedback(True, f"right: GPA {self.walk.address:#x} "
                                  f"({self.walk.page_size // 1024} KiB page)")
        frame = ~(self.walk.page_size - 1)
        if answer & frame == self.walk.address & frame:
            return Feedback(False, "the frame is right: check the offset bits (how big is the page?)")
        if answer & ~0xFFF == (self.walk.steps[-1].entry & 0x000F_FFFF_FFFF_F000):
            return Feedback(False, "that is the leaf's frame field: how many low GVA bits are the "
                                   "offset in a page this size?")
        return Feedback(False, "not yet: which entry is the leaf, and which of its bits are the frame?")

    def answer(self) -> Solution:
        f = self.walk.fault
        value: object = ("#PF", int(f.error_code)) if f is not None else self.walk.address
        return Solution(value, self.walk.table())


class ShadowFaults(Exercise):
    """A CPL3 guest touches pages; how many #PF exits does KVM fix with shadow paging?"""

    title = "Count the shadow-paging faults"

    def build(self) -> str:
        r = self.rng
        self.mem = GuestMemory(_MEM, record=False)
        pt = PageTables(self.mem, _TABLES)
        pages = [0x10000 + 0x1000 * i for i in range(r.randrange(2, 5))]
        for p in pages:  # identity-mapped, user, writable; A = D = 0 as a fresh kernel leaves them
            pt.map(p, p, flags=PteFlags.RW | PteFlags.US)
        self.cr3 = pt.cr3
        self.accesses = [(r.choice(pages), r.choice("rrw")) for _ in range(r.randrange(4, 8))]
        lines = "\n".join(f"  {i + 1}. {'read ' if a == 'r' else 'write'} {g:#x}"
                          for i, (g, a) in enumerate(self.accesses))
        return ("KVM runs this guest on shadow paging (no EPT). Its tables map the pages below "
                "(4 KiB, user, writable, A = D = 0) and KVM has just loaded CR3, so the shadow "
                "tables are empty. At CPL 3 the guest does, in order (ignore its code page):\n"
                f"{lines}\nHow many #PF VM exits does KVM fix (pf_fixed)? Mind that KVM maps a "
                "page for a read read-only while its guest PTE is clean (D = 0).")

    def _run(self) -> tuple[ShadowMmu, list]:
        mem = GuestMemory(_MEM, record=False)  # a fresh copy: KVM's walks set A/D in the tables
        mem.buf[:] = self.mem.buf
        mmu = ShadowMmu(mem, self.cr3)
        return mmu, [mmu.access(g, a, user=True) for g, a in self.accesses]

    def check(self, answer: object) -> Feedback:
        mmu, outcomes = self._run()
        want = mmu.stats()["pf_fixed"]
        if isinstance(answer, bool) or not isinstance(answer, int):
            return Feedback(False, "answer with a number of faults")
        if answer == want:
            return Feedback(True, f"right: pf_fixed = {want}")
        first_touches = len({g for g, _ in self.accesses})
        if answer == first_touches:
            return Feedback(False, "one per page, yes — but what happens to a page first read, "
                                   "then written?")
        return Feedback(False, "not yet: a fault fixes one page for what the guest PTE allows "
                               "*and* what the access needed")

    def answer(self) -> Solution:
        mmu, outcomes = self._run()
        steps = "\n".join(f"{i + 1}. {'read ' if a == 'r' else 'write'} {g:#x}: "
                          + ("no exit" if o.exits == 0 else f"#PF exit, {o.ret}")
                          for i, ((g, a), o) in enumerate(zip(self.accesses, outcomes, strict=True)))
        return Solution(mmu.stats()["pf_fixed"], steps)


__all__ = ["PageWalk", "ShadowFaults"]
