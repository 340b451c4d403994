"""Exercises of chapter 06: walk an EPT by hand; count the EPT violations KVM fixes.

Every answer is computed by the models — :func:`vbook.models.ept.walk` for the
walk, :class:`vbook.models.ept.Tdp` and :func:`vbook.models.ept.guest_touch` for
KVM's lazy population — never stored.
"""

from __future__ import annotations

from functools import cached_property

from vbook.exercises.base import Exercise, Feedback, Solution
from vbook.memory import GuestMemory
from vbook.models import ept
from vbook.models.bits import SIZE_1G, SIZE_2M, SIZE_4K, size_name
from vbook.models.ept import (
    EptMisconfig,
    EptTables,
    EptViolation,
    Memslot,
    MemType,
    Tdp,
    Touch,
    VmxEpt,
)
from vbook.models.vmx import (
    EPT_VIOLATION_ACC_INSTR,
    EPT_VIOLATION_ACC_READ,
    EPT_VIOLATION_ACC_WRITE,
    EPT_VIOLATION_GVA_IS_VALID,
    EPT_VIOLATION_GVA_TRANSLATED,
)

#: the MAXPHYADDR the exercises state (the model's default, a typical Intel server)
MAXPHYADDR = ept.DEFAULT_MAXPHYADDR
_HOST = 0x200000                       # host memory that holds an exercise's EPT tables
_LEAF_LEVEL = {SIZE_4K: 1, SIZE_2M: 2, SIZE_1G: 3}
_DOES = {"r": "reads data", "w": "writes data", "x": "fetches an instruction"}
_ACC_BIT = {"r": EPT_VIOLATION_ACC_READ, "w": EPT_VIOLATION_ACC_WRITE, "x": EPT_VIOLATION_ACC_INSTR}
_ACC_NAME = {"r": "data read", "w": "data write", "x": "instruction fetch"}


def _rwx(bits: int) -> str:
    return "".join(c if bits & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))


class _Answer(tuple):
    """A tuple answer that prints its numbers in hex: ``('violation', 0x1aa)``.
    Equal to the plain tuple a reader types."""

    def __repr__(self) -> str:
        return "(" + ", ".join(f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else repr(v)
                               for v in self) + ")"


def _kind(answer: object) -> str | None:
    """"misconfig" / "violation" from a string or the first item of a tuple, else None."""
    head = answer[0] if isinstance(answer, tuple) and answer else answer
    if not isinstance(head, str):
        return None
    head = head.strip().lower().removeprefix("ept_").removeprefix("ept ")
    return head if head in ("misconfig", "violation") else None


# --- walk the EPT ----------------------------------------------------------------------------

class EptWalk(Exercise):
    """Given the EPT entries a walk reads, give the HPA, the violation's exit
    qualification, or "misconfig"."""

    title = "Walk the EPT"

    #: what can happen to the mapping before the walk (weights)
    TWISTS = {"none": 3, "restrict": 1.5, "next": 1, "clear": 1.5, "w_no_r": 1, "memtype": 1,
              "reserved": 1.5, "ignored": 1}

    def build(self) -> str:
        r = self.rng
        self.mem = GuestMemory(_HOST, record=False)
        #: the access is the guest's own page walker reading a guest paging-structure entry
        self.table_access = r.random() < 0.2
        ad = False if self.table_access else r.random() < 0.6
        t = EptTables(self.mem, r.randrange(0x10, 0x100) * SIZE_4K, ad=ad)
        size = r.choice((SIZE_4K,) * 5 + (SIZE_2M,) * 3 + (SIZE_1G,) * 2)
        leaf = _LEAF_LEVEL[size]
        base = r.randrange(1, (1 << 42) // size) * size
        hpa = r.randrange(1, (1 << 40) // size) * size
        t.map(base, hpa, size, rwx=r.choice((7, 7, 7, 3, 5, 1, 4)),
              memtype=r.choice((MemType.WB,) * 4 + (MemType.UC, MemType.WC, MemType.WT, MemType.WP)),
              page_size=size, ipat=r.random() < 0.3)
        self.access = "r" if self.table_access else r.choice("rrwwx")
        off = r.randrange(size)
        gpa = base + (off & ~7 if self.table_access else off)
        self.twist = r.choices(list(self.TWISTS), weights=list(self.TWISTS.values()))[0]
        self._apply_twist(t, base, size, leaf)
        if self.twist == "next":  # the page after the mapping, which nothing maps
            gpa += size
        self.gpa, self.eptp = gpa, t.eptp
        self.walk = ept.walk(self.mem, self.eptp, gpa, self.access, maxphyaddr=MAXPHYADDR,
                             translated=not self.table_access)
        rows = []
        for s in self.walk.steps:
            idx = (gpa >> (12 + 9 * (s.level - 1))) & 511
            rows.append(f"  {s.name:<5} [{idx:3d}] at HPA {s.entry_addr:#x} = {s.entry:#018x}")
        if self.table_access:
            what = (f"The guest's page walker reads one of the guest's own paging-structure entries, "
                    f"at GPA {gpa:#x}.")
        else:
            what = f"The guest {_DOES[self.access]} at a linear address that translates to GPA {gpa:#x}."
        return (f"EPTP = {self.eptp:#x}; MAXPHYADDR = {MAXPHYADDR}; the CPU supports execute-only "
                "EPT entries.\n"
                f"{what}\n"
                "The EPT entries the CPU reads, in order:\n" + "\n".join(rows) + "\n"
                "EPT entry bits: 2:0 R/W/X (000b = not present); 5:3 a leaf's memory type "
                "(0 UC, 1 WC, 4 WT, 5 WP, 6 WB; 2, 3, 7 reserved); 6 ignore PAT; 7 large page "
                "(in a PDPTE: 1 GiB, in a PDE: 2 MiB); 8 accessed; 9 dirty; 11 and 62:52 ignored; "
                f"{MAXPHYADDR - 1}:12 the address.\n"
                "A present entry is misconfigured if it has W without R (bits 2:0 = 010b or 110b), "
                "bits 7:3 in a non-leaf entry or bit 7 in a PML4E, any of bits "
                f"51:{MAXPHYADDR}, address bits below its large page's size (20:12 of a 2 MiB "
                "leaf, 29:12 of a 1 GiB leaf), or a reserved memory type in a leaf.\n"
                "Give the HPA (an int), (\"violation\", exit_qualification) or \"misconfig\".\n"
                "Exit qualification: bit 0/1/2 = the access was a data read/data write/instruction "
                "fetch; bits 3/4/5 = bits 0/1/2 (R/W/X) ANDed over the entries the walk used "
                "(all 0 when it stopped at a not-present one); bit 7 = the guest linear-address "
                "field is valid (always, here); bit 8 = the access was to a linear address's "
                "final translation (0: to a guest paging-structure entry). With EPTP bit 6 "
                "(A/D) = 0 a guest paging-structure access is a data read.")

    def _apply_twist(self, t: EptTables, base: int, size: int, leaf: int) -> None:
        r, tw = self.rng, self.twist

        def patch(level: int, fn) -> None:
            t.set_entry(base, level, fn(t.get_entry(base, level)))

        above = list(range(leaf + 1, 5))          # the non-leaf entries on the path
        if tw == "restrict" and above:            # an upper entry allows less than the leaf
            patch(r.choice(above), lambda e: e & ~7 | r.choice((1, 3, 5, 4)))
        elif tw == "clear":                       # not present; the other bits do not matter
            patch(r.randrange(leaf, 5), lambda e: r.choice((0, e & ~7)))
        elif tw == "w_no_r":
            patch(r.randrange(leaf, 5), lambda e: e & ~7 | r.choice((0b010, 0b110)))
        elif tw == "memtype":
            patch(leaf, lambda e: e & ~ept.VMX_EPT_MT_MASK | r.choice((2, 3, 7)) << ept.VMX_EPT_MT_EPTE_SHIFT)
        elif tw == "reserved":
            kinds = ["high"] + (["nonleaf"] if above else []) + (["low"] if leaf > 1 else [])
            kind = r.choice(kinds)
            if kind == "high":
                patch(r.randrange(leaf, 5), lambda e: e | 1 << r.randrange(MAXPHYADDR, 52))
            elif kind == "nonleaf":
                level = r.choice(above)
                bits = (0x30, 0x40, 0x18, 0x8) + ((int(VmxEpt.LARGE_PAGE),) if level == 4 else ())
                patch(level, lambda e: e | r.choice(bits))
            else:
                patch(leaf, lambda e: e | 1 << r.randrange(12, size.bit_length() - 1))
        elif tw == "ignored":                     # bits the CPU ignores: must not change the answer
            patch(leaf, lambda e: e | r.choice((1 << 11, 1 << r.randrange(52, 63), int(VmxEpt.DIRTY_BIT))))

    def _value(self) -> object:
        f = self.walk.fault
        if isinstance(f, EptMisconfig):
            return "misconfig"
        if isinstance(f, EptViolation):
            return _Answer(("violation", f.qualification))
        return self.walk.address

    def check(self, answer: object) -> Feedback:
        f, w = self.walk.fault, self.walk
        kind = _kind(answer)
        if kind == "misconfig":
            if isinstance(f, EptMisconfig):
                return Feedback(True, f"right: EPT misconfiguration (exit 49) at the "
                                      f"{ept.LEVEL_NAMES[f.level]}: {f.reason}")
            if f is None:
                return Feedback(False, "not yet: every entry on the path is well formed")
            return Feedback(False, "no entry on the path is malformed: the walk stops for another reason")
        if kind == "violation":
            if not (isinstance(answer, tuple) and len(answer) == 2):
                return Feedback(False, 'give the violation as ("violation", exit_qualification)')
            q = answer[1]
            if isinstance(q, bool) or not isinstance(q, int):
                return Feedback(False, "give the exit qualification as an int")
            if f is None:
                return Feedback(False, "not yet: every entry on the path allows this access")
            if isinstance(f, EptMisconfig):
                return Feedback(False, f"not yet: is the {ept.LEVEL_NAMES[f.level]} a well-formed entry?")
            if q == f.qualification:
                return Feedback(True, f"right: EPT violation (exit 48), qualification "
                                      f"{f.qualification:#x} — {f.reason}")
            diff = q ^ f.qualification
            if diff & 0b111:
                return Feedback(False, "an EPT violation, yes; bits 2:0 describe the access: "
                                       "a data read, a data write or an instruction fetch?")
            if diff & 0b111000:
                return Feedback(False, "an EPT violation, yes; bits 5:3 are what the entries allowed: "
                                       "bits 2:0 of every entry the walk used, ANDed (all 0 when "
                                       "one of them was not present)")
            if diff & (EPT_VIOLATION_GVA_IS_VALID | EPT_VIOLATION_GVA_TRANSLATED):
                return Feedback(False, "an EPT violation, yes; bits 7 and 8: was this access to the "
                                       "final translation of a linear address, or to a guest "
                                       "paging-structure entry?")
            return Feedback(False, "an EPT violation, yes; only bits 0-5, 7 and 8 are set here")
        if isinstance(answer, bool) or not isinstance(answer, int):
            return Feedback(False, 'answer with the HPA (an int), ("violation", exit_qualification) '
                                   'or "misconfig"')
        if f is not None:
            return Feedback(False, f"not yet: look again at the {ept.LEVEL_NAMES[f.level]}")
        assert w.address is not None and w.page_size is not None
        if answer == w.address:
            return Feedback(True, f"right: HPA {w.address:#x} ({size_name(w.page_size)} page, "
                                  f"rights {_rwx(w.rwx)})")
        if answer == w.steps[-1].entry or answer >> MAXPHYADDR:
            return Feedback(False, "that has more than the address bits of the leaf: which bits of "
                                   "an EPT entry are the address, and which are flags or ignored?")
        frame = ~(w.page_size - 1)
        if answer & frame == w.address & frame:
            return Feedback(False, "the frame is right: check the offset bits (how big is the page?)")
        return Feedback(False, "not yet: which entry is the leaf, and which of its bits are the frame?")

    def answer(self) -> Solution:
        w, f = self.walk, self.walk.fault
        lines = [w.table()]
        if f is None:
            lines.append(f"rights ANDed over the walk: {_rwx(w.rwx)}, which allow a "
                         f"{_ACC_NAME[self.access]}; HPA = the leaf's address bits above "
                         f"{size_name(w.page_size)} | GPA offset {self.gpa & (w.page_size - 1):#x}")
        elif isinstance(f, EptViolation):
            q = f.qualification
            parts = [f"{_ACC_BIT[self.access]:#x} ({_ACC_NAME[self.access]})",
                     f"{f.rwx:03b}b << 3 (rights {_rwx(f.rwx)})"]
            if q & EPT_VIOLATION_GVA_IS_VALID:
                parts.append(f"{EPT_VIOLATION_GVA_IS_VALID:#x} (linear address valid)")
            if q & EPT_VIOLATION_GVA_TRANSLATED:
                parts.append(f"{EPT_VIOLATION_GVA_TRANSLATED:#x} (final translation)")
            lines.append("qualification = " + " | ".join(parts) + f" = {q:#x}")
        return Solution(self._value(), "\n".join(lines))


# --- KVM fills the EPT lazily ----------------------------------------------------------------

_TDP_MEM, _TDP_TABLES = 0x40000, 0x1000     # memory for the exercise's EPT tables (KVM's, in the host)
#: MMIO register blocks a minimal VM could have (outside RAM, no memslot)
_MMIO = {0xFEBF0000: "a virtio-mmio device", 0xFED00000: "the HPET", 0xFEB00000: "a PCI BAR"}


class LazyEpt(Exercise):
    """A minimal VM touches GPAs; how many EPT violations does KVM fix (pf_fixed)?"""

    title = "Count the EPT violations KVM fixes"

    def build(self) -> str:
        r = self.rng
        self.ram = r.choice((2, 3, 4, 5, 6)) << 20
        self.slots = (Memslot.of(0, self.ram, r.randrange(2, 64) * SIZE_2M),)
        self.hugepages = r.random() < 0.5
        self.mmio = r.choice(sorted(_MMIO)) if r.random() < 0.5 else None
        code = r.randrange(1, 0xA0) << 12          # below the legacy VGA hole
        pc = code + (0x1000 - r.randrange(4, 24) if r.random() < 0.4 else r.randrange(0, 0x800))
        sp = r.choice((self.ram, r.randrange(0x10, 0x100) << 12,
                       (r.randrange(0x10, self.ram >> 12) << 12) + r.choice((0x8, 0x10))))
        var = r.randrange(0x1000, self.ram) & ~7
        buf = r.randrange(0, (self.ram - 0x10000) >> 12) << 12
        ops = ["push", "push", "pop", "var", "var", "buf", "buf", "none"]
        ops += ["mmio"] * 2 if self.mmio else []
        acc: list[tuple[int, str, str]] = []
        pushed = stride = 0
        for _ in range(r.randint(5, 8)):
            acc.append((pc, "x", "code"))
            op = r.choice(ops)
            if op == "pop" and pushed:
                acc.append((sp, "r", "stack: pop"))
                sp, pushed = sp + 8, pushed - 1
            elif op in ("push", "pop"):
                sp, pushed = sp - 8, pushed + 1
                acc.append((sp, "w", "stack: push"))
            elif op == "var":
                acc.append((var, r.choice("rw"), "a global variable"))
            elif op == "buf":
                acc.append((buf + stride * 0x1000 + r.randrange(0, 0x1000, 8), "w", "buffer: memset"))
                stride += r.choice((1, 1, 2))
            elif op == "mmio" and self.mmio is not None:
                acc.append((self.mmio + r.choice((0, 4, 8, 0x10)), r.choice("rw"),
                            f"MMIO: {_MMIO[self.mmio]}"))
            pc += r.randint(2, 7)
        self.accesses = acc
        slot = self.slots[0]
        lines = "\n".join(f"  {i + 1:2d}. {_ACC_NAME[a]:<17} {g:#010x}  ({what})"
                          for i, (g, a, what) in enumerate(acc))
        if self.hugepages:
            huge = ("The memslot is backed by 2 MiB huge pages (hugetlbfs), dirty logging is off and "
                    "kvm.nx_huge_pages is off, so KVM maps a 2 MiB page wherever the memslot covers "
                    "the whole 2 MiB-aligned frame.")
        else:
            huge = r.choice(("The memslot is backed by ordinary 4 KiB host pages, so KVM maps 4 KiB "
                             "pages only.",
                             "Dirty logging is on for the memslot (a migration is running), so KVM "
                             "maps 4 KiB pages only."))
        mmio = (f"Nothing else is RAM: {self.mmio:#x} is {_MMIO[self.mmio]}, emulated by the VMM."
                if self.mmio else "There is no other memslot.")
        return (f"A minimal VM has one memslot: GPA [0, {self.ram:#x}) at HPA "
                f"{slot.host_pfn << 12:#x}. {mmio}\n{huge}\n"
                "KVM uses EPT and its TDP MMU; the EPT is empty when the vCPU starts, and "
                "MMIO caching is on. The guest does, in order:\n"
                f"{lines}\n"
                "How many EPT violations does kvm_tdp_page_fault fix (pf_fixed)? Answer an int, "
                "or the list of access numbers that cause one, e.g. [1, 4].")

    def _touch(self, tdp: Tdp, gpa: int, access: str) -> tuple[Touch, int | None]:
        """One access (the model's ``guest_touch``) and the EPT page size it installed, if any."""
        t = ept.guest_touch(tdp, gpa, access)
        if t.ret != "FIXED":
            return t, None
        return t, ept.walk(tdp.tables.mem, tdp.tables.eptp, gpa, access).page_size

    @cached_property
    def _run(self) -> tuple[Tdp, list[tuple[Touch, int | None]]]:
        """The accesses on a fresh VM whose EPT starts empty (computed once, on demand)."""
        tdp = Tdp(EptTables(GuestMemory(_TDP_MEM, record=False), _TDP_TABLES), list(self.slots),
                  hugepages=self.hugepages)
        return tdp, [self._touch(tdp, g, a) for g, a, _ in self.accesses]

    def _fixes(self) -> tuple[int, list[int]]:
        tdp, out = self._run
        return tdp.pf_fixed, [i + 1 for i, (t, _) in enumerate(out) if t.ret == "FIXED"]

    def check(self, answer: object) -> Feedback:
        want, fixes = self._fixes()
        if isinstance(answer, (list, tuple, set)) and all(
                isinstance(i, int) and not isinstance(i, bool) for i in answer):
            got = sorted(set(answer))
            if any(not 1 <= i <= len(self.accesses) for i in got):
                return Feedback(False, f"number the accesses 1 to {len(self.accesses)}")
            if got == fixes:
                return Feedback(True, f"right: accesses {', '.join(map(str, fixes))} fault; "
                                      f"pf_fixed = {want}")
            wrong = next(i for i in range(1, len(self.accesses) + 1) if (i in got) != (i in fixes))
            return Feedback(False, f"not yet: look again at access {wrong}")
        if isinstance(answer, bool) or not isinstance(answer, int):
            return Feedback(False, "answer with a number of EPT violations, or a list of access numbers")
        if answer == want:
            return Feedback(True, f"right: pf_fixed = {want}")
        ram = [(g, a) for g, a, _ in self.accesses if self.slots[0].base_gfn <= g >> 12 < self.ram >> 12]
        pages_4k = len({g >> 12 for g, _ in ram})
        frames_2m = len({g >> 21 for g, _ in ram})
        mmio_pages = len({g >> 12 for g, _, _ in self.accesses} - {g >> 12 for g, _ in ram})
        if answer == len(self.accesses):
            return Feedback(False, "a page KVM has mapped stays mapped: a later touch of it does not exit")
        if self.hugepages and answer == pages_4k:
            return Feedback(False, "one per 4 KiB page would be right without huge pages: how much "
                                   "does one fix map here?")
        if mmio_pages and answer in (pages_4k + mmio_pages, frames_2m + mmio_pages):
            return Feedback(False, "an MMIO address is in no memslot: KVM emulates that access "
                                   "(RET_PF_EMULATE), which pf_fixed does not count")
        if self.hugepages and answer == frames_2m:
            return Feedback(False, "not every 2 MiB frame can be one mapping: does the memslot cover "
                                   "each frame whole?")
        if not self.hugepages and answer == frames_2m:
            return Feedback(False, "KVM cannot map 2 MiB pages here: read what backs the memslot")
        return Feedback(False, "not yet: KVM fixes one violation on the first touch of each mapping it "
                               "installs; which accesses are RAM, and how much does each mapping cover?")

    def answer(self) -> Solution:
        tdp, out = self._run
        steps = []
        for i, ((g, a, what), (t, size)) in enumerate(zip(self.accesses, out, strict=True)):
            if t.exit is None:
                how = "no exit (already mapped)"
            elif t.exit == "EPT_MISCONFIG":
                how = "EPT misconfiguration -> handle_mmio_page_fault, emulated (not a fix)"
            elif t.ret == "FIXED":
                frame = g & ~((size or SIZE_4K) - 1)
                how = (f"EPT violation -> RET_PF_FIXED: KVM maps {size_name(size)} at GPA "
                       f"{frame:#x} -> HPA {self._hpa(frame):#x}")
            else:
                how = f"EPT violation -> RET_PF_{t.ret}: MMIO, KVM installs an MMIO SPTE and emulates"
            steps.append(f"{i + 1:2d}. {_ACC_NAME[a]:<17} {g:#010x} ({what}): {how}")
        steps.append(f"pf_fixed = {tdp.pf_fixed}, pf_emulate = {tdp.pf_emulate}, "
                     f"pf_mmio_spte_created = {tdp.pf_mmio_spte_created}")
        return Solution(tdp.pf_fixed, "\n".join(steps))

    def _hpa(self, gpa: int) -> int:
        s = self.slots[0]
        return ((s.host_pfn - s.base_gfn) << 12) + gpa


__all__ = ["MAXPHYADDR", "EptWalk", "LazyEpt"]
