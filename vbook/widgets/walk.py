"""WalkView: one page walk, entry by entry — and, with a kernel, flip a bit and walk again.

It shows the walk :func:`vbook.models.paging.walk` (x86-64 guest paging, GVA →
GPA) or :func:`vbook.models.ept.walk` (EPT, GPA → HPA) recorded. The pane
``walk`` (``walk_pane.js``) draws, at each step of the player:

* the address split into its 9-bit index fields, the one that picks the
  current entry highlighted;
* per level, the entry's address (table + 8 × index) and its 64 bits as
  labelled boxes (x86: P RW US PWT PCD A D PS G … XD and the address field;
  EPT: R W X, memory type, IPAT, PS, A, D, the address field, suppress-#VE),
  the bits that decide the outcome marked;
* the outcome: the translation and its page size, or the #PF with its error
  code decoded and CR2, or the EPT violation with its exit qualification
  decoded, or the EPT misconfiguration.

Everything the pane shows is computed here, in Python, and travels in the
trace's ``meta["walk"]``; the browser only indexes it.

Where a kernel runs, a click on a bit box (x86: P, RW, US, PS, XD; EPT: R, W, X,
PS, and the memory type), a new value for an entry's address field, or a new
address / access kind is a *request* the browser sends to Python
(``model.send``). Python changes the entry in its own copy of the memory —
never the caller's — walks again with the same options and replaces the
trace; :meth:`WalkView.reset` (the reset button) goes back to the first walk.
A bad request (a level the walk did not read, a bit that is not editable, a
change after which the walk cannot be done) becomes a :class:`WalkRequestError`
shown in the widget (``error``), never a traceback.

The browser enables the bit boxes only after Python answered its ``hello`` in
*this* page: in a static page (``static_html``, ``notebook_html``, nbconvert
with stored widget state, or a notebook whose kernel is gone) nobody answers,
so the walk still animates and the boxes say that flipping bits needs a
running kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import traitlets

from vbook.errors import VbookError
from vbook.memory import GuestMemory
from vbook.models import ept as ept_model
from vbook.models import paging
from vbook.models.bits import genmask, size_name
from vbook.models.ept import (
    EptMisconfig,
    EptViolation,
    VmxEpt,
)
from vbook.models.paging import PfErr, PteFlags
from vbook.models.vmx import (
    EPT_VIOLATION_ACC_INSTR,
    EPT_VIOLATION_ACC_READ,
    EPT_VIOLATION_ACC_WRITE,
    EPT_VIOLATION_GVA_IS_VALID,
    EPT_VIOLATION_GVA_TRANSLATED,
)
from vbook.trace import Trace, TraceRecorder
from vbook.widgets.player import CSS, TracePlayer, esm_with

HERE = Path(__file__).parent
PANE_JS = HERE / "walk_pane.js"
PANE_CSS = HERE / "walk_pane.css"

#: keyword options each walker takes besides (mem, root, address, access[, user])
X86_OPTIONS = ("levels", "cr0_wp", "cr4_smep", "cr4_smap", "efer_nxe", "maxphyaddr", "set_ad")
EPT_OPTIONS = ("maxphyaddr", "execute_only", "gva_valid", "translated", "nmi_unblocking",
               "update_ad")
#: bits a reader may flip, per kind of walk (PS only where bit 7 is PS, not PAT)
X86_FLIPPABLE = ("P", "RW", "US", "PS", "NX")
EPT_FLIPPABLE = ("R", "W", "X", "PS")
_ACCESS = {"r": "read", "w": "write", "x": "fetch"}
_X86_BITS = {"P": PteFlags.P, "RW": PteFlags.RW, "US": PteFlags.US, "PS": PteFlags.PS,
             "NX": PteFlags.NX}
_EPT_BITS = {"R": VmxEpt.READABLE_MASK, "W": VmxEpt.WRITABLE_MASK, "X": VmxEpt.EXECUTABLE_MASK,
             "PS": VmxEpt.LARGE_PAGE}
#: Linux's name of each level (include/linux/pgtable.h): with 4 levels the p4d is folded
_X86_LINUX = {4: {4: "pgd", 3: "pud", 2: "pmd", 1: "pte"},
              5: {5: "pgd", 4: "p4d", 3: "pud", 2: "pmd", 1: "pte"}}
_X86_SDM = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
_X86_TABLE = {5: "PML5 table", 4: "PML4 table", 3: "PDPT", 2: "page directory", 1: "page table"}
_MT_NAMES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB"}
_SHIFT = {lv: 12 + 9 * (lv - 1) for lv in range(1, 6)}


class WalkRequestError(VbookError, ValueError):
    """A WalkView was asked for a change it cannot make: a level the walk did not
    read, a bit that is not editable there, a malformed value, or a change after
    which the walk itself cannot be done (the model's error is kept as ``cause``)."""

    def __init__(self, message: str, cause: VbookError | None = None):
        self.cause = cause
        super().__init__(message)


@dataclass(frozen=True)
class Edit:
    """An entry a reader changed: at ``entry_addr`` the caller's memory holds ``old``, the
    view walks ``new``; ``what`` names the fields that differ."""

    level: int
    entry_addr: int
    what: str
    old: int
    new: int

    def __str__(self) -> str:
        return self.what

    def __repr__(self) -> str:
        return f"Edit({self.what!r})"


class _UndoMemory(GuestMemory):
    """The view's own copy of the caller's memory: every write is undone after each walk."""

    undo: list[tuple[int, bytes]]

    def write(self, addr: int, data: bytes) -> None:
        old = bytes(self.buf[addr:addr + len(data)]) if addr >= 0 else b""
        super().write(addr, data)
        self.undo.append((addr, old))

    def rollback(self) -> None:
        while self.undo:
            addr, old = self.undo.pop()
            self.buf[addr:addr + len(old)] = old


def _hx(v: int | None) -> str:
    return "—" if v is None else f"{v:#x}"


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


# --- the boxes of one entry --------------------------------------------------------


def _box(key: str, name: str, hi: int, lo: int, entry: int, title: str, *, kind: str = "flag",
         edit: str = "", moot: bool = False, text: str | None = None) -> dict[str, Any]:
    value = (entry >> lo) & ((1 << (hi - lo + 1)) - 1)
    if text is None:
        text = str(value) if hi == lo else (f"{entry & genmask(hi, lo):#x}" if kind == "addr"
                                            else f"{value:#x}")
    bits = str(lo) if hi == lo else f"{hi}:{lo}"
    return {"key": key, "name": name, "bits": bits, "text": text, "set": bool(value),
            "title": f"{name} (bit{'s' if hi != lo else ''} {bits}) = {text}: {title}",
            "kind": kind, "edit": edit, "moot": moot}


def _x86_boxes(level: int, entry: int, maxphyaddr: int, efer_nxe: bool) -> list[dict[str, Any]]:
    """The fields of an x86-64 paging-structure entry, bit 63 first (SDM Vol. 3A §4.5 tables)."""
    present = bool(entry & PteFlags.P)
    ps = bool(entry & PteFlags.PS)
    leaf = level == 1 or (ps and level in (2, 3))
    moot = not present
    lo = _SHIFT[level] if leaf else 12
    ign = "ignored by the CPU (free for software)"
    out = [_box("NX", "XD", 63, 63, entry, "execute-disable (_PAGE_BIT_NX): 1 = no instruction "
                "fetch through this entry" + ("" if efer_nxe else "; reserved while EFER.NXE=0"),
                edit="flip", moot=moot)]
    if leaf:
        out.append(_box("PK", "PK", 62, 59, entry, "protection key (used only with CR4.PKE; "
                        "not modelled)", kind="ign", moot=moot))
        out.append(_box("ign52", "ign", 58, 52, entry, ign, kind="ign", moot=moot))
    else:
        out.append(_box("ign52", "ign", 62, 52, entry, ign, kind="ign", moot=moot))
    if maxphyaddr < 52:
        out.append(_box("rsvd_hi", "rsvd", 51, maxphyaddr, entry,
                        f"reserved: above MAXPHYADDR {maxphyaddr}, must be 0", kind="rsvd",
                        moot=moot))
    what = (f"physical address of the {size_name(1 << lo)} page frame" if leaf
            else f"physical address of the next table (the {_X86_TABLE[level - 1]})")
    out.append(_box("addr", "address", maxphyaddr - 1, lo, entry, what, kind="addr", edit="set",
                    moot=moot))
    if leaf and level > 1:
        out.append(_box("rsvd_lo", "rsvd", lo - 1, 13, entry,
                        f"reserved in a {size_name(1 << lo)} {_X86_SDM[level]}, must be 0",
                        kind="rsvd", moot=moot))
        out.append(_box("PAT", "PAT", 12, 12, entry, "page attribute table index bit of a large "
                        "page (_PAGE_BIT_PAT_LARGE)", moot=moot))
    if leaf:
        out.append(_box("ign9", "ign", 11, 9, entry, ign, kind="ign", moot=moot))
        out.append(_box("G", "G", 8, 8, entry, "global (_PAGE_BIT_GLOBAL): kept in the TLB across "
                        "CR3 loads (with CR4.PGE)", moot=moot))
    else:
        out.append(_box("ign9", "ign", 11, 8, entry, ign, kind="ign", moot=moot))
    if level == 1:
        out.append(_box("PAT", "PAT", 7, 7, entry, "in a 4 KiB PTE bit 7 is PAT "
                        "(_PAGE_BIT_PAT), not a page size", moot=moot))
    else:
        why = ("page size (_PAGE_BIT_PSE): 1 = this entry maps a "
               f"{size_name(1 << _SHIFT[level])} page, 0 = it points to a table"
               if level in (2, 3) else
               f"page size: reserved in a {_X86_SDM[level]} (must be 0)")
        out.append(_box("PS", "PS", 7, 7, entry, why, edit="flip", moot=moot))
    if leaf:
        out.append(_box("D", "D", 6, 6, entry, "dirty (_PAGE_BIT_DIRTY): set by the CPU on a "
                        "write", moot=moot))
    else:
        out.append(_box("ign6", "ign", 6, 6, entry, ign, kind="ign", moot=moot))
    out += [
        _box("A", "A", 5, 5, entry, "accessed (_PAGE_BIT_ACCESSED): set by the CPU when it uses "
             "the entry", moot=moot),
        _box("PCD", "PCD", 4, 4, entry, "page-level cache disable (_PAGE_BIT_PCD)", moot=moot),
        _box("PWT", "PWT", 3, 3, entry, "page-level write-through (_PAGE_BIT_PWT)", moot=moot),
        _box("US", "U/S", 2, 2, entry, "user/supervisor (_PAGE_BIT_USER): 1 = CPL 3 may use it "
             "(ANDed over the levels)", edit="flip", moot=moot),
        _box("RW", "R/W", 1, 1, entry, "read/write (_PAGE_BIT_RW): 1 = writes allowed (ANDed "
             "over the levels)", edit="flip", moot=moot),
        _box("P", "P", 0, 0, entry, "present (_PAGE_BIT_PRESENT): 0 = not present, #PF with "
             "error code P=0", edit="flip"),
    ]
    return out


def _ept_boxes(level: int, entry: int, maxphyaddr: int) -> list[dict[str, Any]]:
    """The fields of an EPT paging-structure entry, bit 63 first (SDM Vol. 3C, EPT formats)."""
    present = bool(entry & ept_model.VMX_EPT_RWX_MASK)
    ps = bool(entry & VmxEpt.LARGE_PAGE)
    leaf = level == 1 or (ps and level in (2, 3))
    moot = not present
    lo = _SHIFT[level] if leaf else 12
    ign = "ignored by the CPU"
    out = []
    if leaf:
        out.append(_box("SVE", "SVE", 63, 63, entry, "suppress #VE: 1 = an EPT violation here is "
                        "never converted to a #VE in the guest (not modelled)", moot=moot))
        out.append(_box("ign52", "ign", 62, 52, entry, ign, kind="ign", moot=moot))
    else:
        out.append(_box("ign52", "ign", 63, 52, entry, ign, kind="ign", moot=moot))
    if maxphyaddr < 52:
        out.append(_box("rsvd_hi", "rsvd", 51, maxphyaddr, entry,
                        f"reserved: above MAXPHYADDR {maxphyaddr}, must be 0 (else EPT "
                        "misconfiguration)", kind="rsvd", moot=moot))
    what = (f"host-physical address of the {size_name(1 << lo)} page" if leaf
            else f"host-physical address of the next EPT table ({ept_model.LEVEL_NAMES[level - 1]}s)")
    out.append(_box("addr", "address", maxphyaddr - 1, lo, entry, what, kind="addr", edit="set",
                    moot=moot))
    if leaf and level > 1:
        out.append(_box("rsvd_lo", "rsvd", lo - 1, 12, entry,
                        f"reserved in a {size_name(1 << lo)} {ept_model.LEVEL_NAMES[level]}, must "
                        "be 0 (else EPT misconfiguration)", kind="rsvd", moot=moot))
    out.append(_box("ign11", "ign", 11, 11, entry, "ignored by the CPU; KVM keeps "
                    "SPTE_MMU_PRESENT_MASK here", kind="ign", moot=moot))
    out.append(_box("UX", "UX", 10, 10, entry, "user-mode execute (mode-based execute control "
                    "only; not modelled)", moot=moot))
    if leaf:
        out.append(_box("D", "D", 9, 9, entry, "dirty (VMX_EPT_DIRTY_BIT, with EPTP A/D)",
                        moot=moot))
    else:
        out.append(_box("ign9", "ign", 9, 9, entry, ign, kind="ign", moot=moot))
    out.append(_box("A", "A", 8, 8, entry, "accessed (VMX_EPT_ACCESS_BIT, with EPTP A/D)",
                    moot=moot))
    if level == 1:
        out.append(_box("ign7", "ign", 7, 7, entry, "ignored in an EPT PTE", kind="ign",
                        moot=moot))
    else:
        why = (f"page size: 1 = this entry maps a {size_name(1 << _SHIFT[level])} page, 0 = it "
               "points to a table" if level in (2, 3) else
               f"reserved in a {ept_model.LEVEL_NAMES[level]} (must be 0)")
        out.append(_box("PS", "PS", 7, 7, entry, why, edit="flip", moot=moot))
    if leaf:
        mt = (entry & ept_model.VMX_EPT_MT_MASK) >> ept_model.VMX_EPT_MT_EPTE_SHIFT
        out.append(_box("IPAT", "IPAT", 6, 6, entry, "ignore PAT: 1 = the EPT memory type wins "
                        "over the guest's PAT (VMX_EPT_IPAT_BIT)", moot=moot))
        out.append(_box("MT", "memtype", 5, 3, entry, "EPT memory type (VMX_EPT_MT_MASK): 0 UC, "
                        "1 WC, 4 WT, 5 WP, 6 WB; 2, 3, 7 reserved (EPT misconfiguration)",
                        kind="mt", edit="choose", moot=moot,
                        text=f"{mt} {_MT_NAMES.get(mt, 'rsvd')}"))
    else:
        out.append(_box("rsvd_mid", "rsvd", 6, 3, entry, "reserved in a non-leaf entry (must be 0)",
                        kind="rsvd", moot=moot))
    out += [
        _box("X", "X", 2, 2, entry, "execute: instruction fetches allowed (ANDed over the levels)",
             edit="flip"),
        _box("W", "W", 1, 1, entry, "write allowed (ANDed over the levels); W without R is a "
             "misconfiguration", edit="flip"),
        _box("R", "R", 0, 0, entry, "read allowed (ANDed over the levels); bits 2:0 = 000 = not "
             "present", edit="flip"),
    ]
    return out


# --- which bits decide ---------------------------------------------------------------


def _x86_marks(w: paging.Walk, opts: dict[str, Any]) -> tuple[list[list], list[list], str]:
    """(marks per row as [row, key, cls] seen once the row is read, marks at the outcome, why).

    The same order of checks as :func:`vbook.models.paging.walk`; the classes are
    ``ok`` (this bit let the walk on / allowed the access), ``bad`` (this bit
    stopped it) and ``info`` (it chose the page size).
    """
    nxe, wp = opts.get("efer_nxe", True), opts.get("cr0_wp", True)
    smep, smap = opts.get("cr4_smep", False), opts.get("cr4_smap", False)
    mpa = opts.get("maxphyaddr", 52)
    local: list[list] = []
    steps = w.steps
    for k, s in enumerate(steps):
        e = s.entry
        if not e & PteFlags.P:
            local.append([k, "P", "bad"])
            break
        local.append([k, "P", "ok"])
        leaf = s.level == 1 or (bool(e & PteFlags.PS) and s.level in (2, 3))
        if e & genmask(51, mpa):
            local.append([k, "rsvd_hi", "bad"])
        if not nxe and e & PteFlags.NX:
            local.append([k, "NX", "bad"])
        if s.level >= 4 and e & PteFlags.PS:
            local.append([k, "PS", "bad"])
        if leaf and s.level > 1 and e & genmask(_SHIFT[s.level] - 1, 13):
            local.append([k, "rsvd_lo", "bad"])
        if s.level in (2, 3):
            local.append([k, "PS", "info"])
    final: list[list] = []
    f = w.fault
    if f is not None and (not f.error_code & PfErr.P or f.error_code & PfErr.RSVD):
        return local, final, f.reason
    write, fetch = w.access == "w", w.access == "x"
    us0 = [k for k, s in enumerate(steps) if not s.entry & PteFlags.US]
    rw0 = [k for k, s in enumerate(steps) if not s.entry & PteFlags.RW]
    nx1 = [k for k, s in enumerate(steps) if s.entry & PteFlags.NX]
    every = range(len(steps))
    if f is not None:
        if w.user:
            if us0:
                final += [[k, "US", "bad"] for k in us0]
            elif write and rw0:
                final += [[k, "RW", "bad"] for k in rw0]
            elif fetch and nxe and nx1:
                final += [[k, "NX", "bad"] for k in nx1]
        elif not us0 and fetch and smep:
            final += [[k, "US", "bad"] for k in every]
        elif not us0 and not fetch and smap:
            final += [[k, "US", "bad"] for k in every]
        elif write and wp and rw0:
            final += [[k, "RW", "bad"] for k in rw0]
        elif fetch and nxe and nx1:
            final += [[k, "NX", "bad"] for k in nx1]
        return local, final, f.reason
    parts = []
    if w.user:
        final += [[k, "US", "ok"] for k in every]
        parts.append("U/S=1 at every level: CPL 3 may use the page")
    elif smep and fetch:
        final += [[k, "US", "ok"] for k in us0]
        parts.append("U/S=0 at some level: a supervisor page, so SMEP allows the fetch")
    elif smap and not fetch:
        final += [[k, "US", "ok"] for k in us0]
        parts.append("U/S=0 at some level: a supervisor page, so SMAP allows the access")
    if write and (w.user or wp):
        final += [[k, "RW", "ok"] for k in every]
        parts.append("R/W=1 at every level: writes allowed")
    elif write:
        parts.append("a supervisor write with CR0.WP=0 ignores R/W")
    if fetch and nxe:
        final += [[k, "NX", "ok"] for k in every]
        parts.append("XD=0 at every level: fetches allowed")
    if not parts:
        parts.append(f"P=1 at every level is all this supervisor {_ACCESS[w.access]} needs")
    return local, final, "; ".join(parts)


def _ept_marks(w: ept_model.Walk, opts: dict[str, Any]) -> tuple[list[list], list[list], str]:
    """Like :func:`_x86_marks`, in the order of :func:`vbook.models.ept.misconfig_reason`."""
    mpa = opts.get("maxphyaddr", ept_model.DEFAULT_MAXPHYADDR)
    xo = opts.get("execute_only", True)
    local: list[list] = []
    for k, s in enumerate(w.steps):
        e, lv = s.entry, s.level
        rwx = e & ept_model.VMX_EPT_RWX_MASK
        if rwx == 0:
            local += [[k, "R", "bad"], [k, "W", "bad"], [k, "X", "bad"]]
            break
        leaf = lv == 1 or (lv in (2, 3) and bool(e & VmxEpt.LARGE_PAGE))
        why = ept_model.misconfig_reason(e, lv, leaf=leaf, maxphyaddr=mpa, execute_only=xo)
        if why is not None:
            if rwx in (0b010, 0b110):
                local += [[k, "R", "bad"], [k, "W", "bad"]]
            elif rwx == 0b100 and not xo:
                local += [[k, "R", "bad"], [k, "W", "bad"], [k, "X", "bad"]]
            elif e & genmask(51, mpa):
                local.append([k, "rsvd_hi", "bad"])
            elif lv >= 4 and e & VmxEpt.LARGE_PAGE:
                local.append([k, "PS", "bad"])
            elif not leaf:
                local.append([k, "rsvd_mid", "bad"])
            elif lv > 1 and e & genmask(_SHIFT[lv] - 1, 12):
                local.append([k, "rsvd_lo", "bad"])
            else:
                local.append([k, "MT", "bad"])
            break
        local += [[k, b, "ok"] for b, m in (("R", 1), ("W", 2), ("X", 4)) if rwx & m]
        if lv in (2, 3):
            local.append([k, "PS", "info"])
    final: list[list] = []
    f = w.fault
    bit = {"r": "R", "w": "W", "x": "X"}[w.access]
    mask = {"r": 1, "w": 2, "x": 4}[w.access]
    if isinstance(f, EptMisconfig):
        return local, final, f.reason
    if isinstance(f, EptViolation):
        if f.rwx == 0 and not f.entry & ept_model.VMX_EPT_RWX_MASK:
            return local, final, f.reason
        final += [[k, bit, "bad"] for k, s in enumerate(w.steps) if not s.entry & mask]
        return local, final, f.reason
    final += [[k, bit, "ok"] for k in range(len(w.steps))]
    final.append([len(w.steps) - 1, "MT", "info"])
    return local, final, (f"{bit}=1 at every level: the {_ACCESS[w.access]} is allowed "
                          f"(rights {_rwx(w.rwx)})")


def _rwx(r: int) -> str:
    return "".join(c if r & b else "-" for c, b in (("r", 1), ("w", 2), ("x", 4)))


# --- the view ----------------------------------------------------------------------


class WalkView(TracePlayer):
    """One page walk, entry by entry; with a kernel, a reader flips bits and Python walks again.

    ``WalkView(mem, root, address, access="r", user=False, *, ept=False, step=0,
    speed=1.5, title=None, **options)``: ``root`` is CR3 (x86) or the EPTP
    (``ept=True``); ``options`` are the walker's own keyword arguments
    (:data:`X86_OPTIONS` / :data:`EPT_OPTIONS`). The walk is made on a copy
    of ``mem``, so even ``set_ad`` / ``update_ad`` leave the caller's memory
    alone. ``.result`` is the :class:`~vbook.models.paging.Walk` (or EPT
    ``Walk``) shown now, ``.original`` the first one, ``.edits`` what a reader
    changed. Usually made by :func:`show_walk` / :func:`show_ept_walk`.
    """

    _esm = esm_with(PANE_JS)
    _css = CSS.read_text(encoding="utf-8") + "\n" + PANE_CSS.read_text(encoding="utf-8")
    panes = traitlets.Unicode("walk").tag(sync=True)
    #: the last request that could not be done, as a sentence ("" when the last one worked)
    error = traitlets.Unicode("").tag(sync=True)

    STATE: ClassVar[tuple[str, ...]] = TracePlayer.STATE + ("error",)

    def __init__(self, mem: GuestMemory, root: Any, address: int, access: str = "r",
                 user: bool = False, *, ept: bool = False, step: int = 0, speed: float = 1.5,
                 title: str | None = None, **options: Any):
        if not isinstance(mem, GuestMemory):
            raise WalkRequestError(f"a walk needs the vbook.memory.GuestMemory its tables are in, "
                                   f"got {type(mem).__name__}")
        allowed = EPT_OPTIONS if ept else X86_OPTIONS
        bad = sorted(set(options) - set(allowed))
        if bad:
            raise WalkRequestError(f"{'ept' if ept else 'paging'}.walk takes no option "
                                   f"{', '.join(bad)}; its options are {', '.join(allowed)}")
        if ept and user:
            raise WalkRequestError("an EPT walk has no user/supervisor mode (the guest's CPL "
                                   "does not reach EPT); leave user=False")
        self._ept = bool(ept)
        self._root = int(root)
        self._options = dict(options)
        # our own copy: the caller's memory is never touched, and each walk starts from it
        self._mem = _UndoMemory(mem.size, record=False)
        self._mem.buf[:] = mem.buf
        self._mem.undo = []
        self._start = (address, access, bool(user))
        self._address, self._access, self._user = address, access, bool(user)
        self._patch: dict[int, int] = {}  # entry_addr -> value written over the snapshot
        self._where: dict[int, tuple[int, str]] = {}  # entry_addr -> (level, name) when edited
        self._title = title
        #: True once a frontend in a live page said hello (never stored or synced)
        self.live = False
        result, trace = self._walk(address, access, bool(user), {})
        self.original = self.result = result
        super().__init__(trace, step=0, speed=speed)
        self.step = step
        self.on_msg(self._on_msg)

    # -- the walk itself --------------------------------------------------------------

    @property
    def kind(self) -> str:
        """``"x86"`` or ``"ept"``."""
        return "ept" if self._ept else "x86"

    @property
    def levels(self) -> int:
        if self._ept:
            return ept_model.Eptp.decode(self._root, maxphyaddr=self._mpa).levels
        return self._options.get("levels", 4)

    @property
    def _mpa(self) -> int:
        return self._options.get("maxphyaddr", ept_model.DEFAULT_MAXPHYADDR if self._ept else 52)

    @property
    def edits(self) -> tuple[Edit, ...]:
        """What a reader changed since the first walk (or the last :meth:`reset`), in order."""
        return self._edits_of(self._patch)

    def _edits_of(self, patch: dict[int, int]) -> tuple[Edit, ...]:
        out = []
        for addr, new in patch.items():
            old = self._orig(addr)
            level, name = self._where[addr]
            out.append(Edit(level, addr, self._describe(name, addr, old, new), old, new))
        return tuple(out)

    def _describe(self, name: str, addr: int, old: int, new: int) -> str:
        diff = old ^ new
        parts = []
        if self._ept:
            named = [("R", 1), ("W", 2), ("X", 4), ("IPAT", 1 << 6), ("PS", 1 << 7),
                     ("A", 1 << 8), ("D", 1 << 9), ("SVE", 1 << 63)]
            mt = ept_model.VMX_EPT_MT_MASK
            if diff & mt:
                a, b = (old & mt) >> 3, (new & mt) >> 3
                parts.append(f"memory type {a} ({_MT_NAMES.get(a, 'rsvd')}) → "
                             f"{b} ({_MT_NAMES.get(b, 'rsvd')})")
        else:
            named = [("P", 1), ("R/W", 2), ("U/S", 4), ("PWT", 8), ("PCD", 16), ("A", 32),
                     ("D", 64), ("PS", 128), ("G", 256), ("XD", 1 << 63)]
        for label, m in named:
            if diff & m:
                parts.append(f"{label} {int(bool(old & m))} → {int(bool(new & m))}")
        am = genmask(51, 12)
        if diff & am:
            parts.append(f"address {old & am:#x} → {new & am:#x}")
        if diff & ~(am | ept_model.VMX_EPT_MT_MASK * self._ept | sum(m for _, m in named)):
            parts.append(f"other bits {old:#x} → {new:#x}")
        return f"{name} at {addr:#x}: " + ", ".join(parts)

    def memory(self) -> GuestMemory:
        """A fresh copy of the memory as this view walks it now: the caller's, plus the edits."""
        return self._memory(self._patch)

    def _memory(self, patch: dict[int, int]) -> GuestMemory:
        mem = GuestMemory(self._mem.size, record=False)
        mem.buf[:] = self._mem.buf
        for addr, value in patch.items():
            mem.write_u64(addr, value)
        return mem

    def _orig(self, addr: int) -> int:
        """The u64 at ``addr`` as the caller's memory held it."""
        return int.from_bytes(self._mem.buf[addr:addr + 8], "little")

    def _walk(self, address: int, access: str, user: bool,
              patch: dict[int, int]) -> tuple[Any, Trace]:
        mem = self._mem
        rec = TraceRecorder(title=self._heading(address, access, user))
        try:
            for a, v in patch.items():
                mem.write_u64(a, v)
            if self._ept:
                w = ept_model.walk(mem, self._root, address, access, trace=rec, **self._options)
            else:
                w = paging.walk(mem, self._root, address, access, user, trace=rec, **self._options)
        finally:
            mem.rollback()  # the edits and the walk's own A/D writes: back to the caller's bytes
        t = rec.freeze()
        meta = {**dict(t.meta), "walk": self._state(w, t, patch)}
        return w, Trace(t.events, meta)

    def _heading(self, address: int, access: str, user: bool) -> str:
        if self._title:
            return self._title
        if self._ept:
            return f"EPT walk of GPA {address:#x} ({_ACCESS.get(access, access)})"
        mode = "user" if user else "supervisor"
        return f"x86-64 page walk of GVA {address:#x} ({_ACCESS.get(access, access)}, {mode})"

    # -- what the browser draws (all of it computed here) ------------------------------

    def _state(self, w: Any, t: Trace, patch: dict[int, int]) -> dict[str, Any]:
        x86 = not self._ept
        opts = self._options
        levels = w.levels if x86 else ept_model.Eptp.decode(w.eptp, maxphyaddr=self._mpa).levels
        address = w.gva if x86 else w.gpa
        aname = "GVA" if x86 else "GPA"
        names = _X86_SDM if x86 else ept_model.LEVEL_NAMES
        # the address, split into its index fields
        split = []
        if x86:
            top = 48 if levels == 4 else 57
            split.append({"name": "sign", "bits": f"63:{top}", "text": f"{address >> top:#x}",
                          "title": f"bits 63:{top} copy bit {top - 1} (canonical address)",
                          "level": 0})
        for lv in range(levels, 0, -1):
            sh = _SHIFT[lv]
            split.append({"name": f"{names[lv]} index", "bits": f"{sh + 8}:{sh}",
                          "text": str((address >> sh) & 511),
                          "title": f"{aname} bits {sh + 8}:{sh} pick one of the 512 entries of the "
                                   f"{_X86_TABLE[lv] if x86 else names[lv] + ' table'}",
                          "level": lv})
        split.append({"name": "offset", "bits": "11:0", "text": f"{address & 0xFFF:#x}",
                      "title": f"{aname} bits 11:0: the byte in a 4 KiB page", "level": -1})
        split_of = {f["level"]: j for j, f in enumerate(split)}

        # one row per entry read
        rows = []
        table = self._root & genmask(self._mpa - 1, 12)
        for k, s in enumerate(w.steps):
            idx = (address >> _SHIFT[s.level]) & 511
            e = s.entry
            if x86:
                boxes = _x86_boxes(s.level, e, self._mpa, opts.get("efer_nxe", True))
                present = bool(e & PteFlags.P)
                leaf = s.level == 1 or (bool(e & PteFlags.PS) and s.level in (2, 3))
                flags = paging.entry_flags(e)
                title = f"{_X86_SDM[s.level]} — level {s.level}, Linux {_X86_LINUX[levels][s.level]}"
            else:
                boxes = _ept_boxes(s.level, e, self._mpa)
                present = bool(e & ept_model.VMX_EPT_RWX_MASK)
                leaf = s.level == 1 or (s.level in (2, 3) and bool(e & VmxEpt.LARGE_PAGE))
                flags = _rwx(e & 7)
                title = f"EPT {s.name} — level {s.level}"
            from_ = ("CR3" if x86 else "EPTP") if k == 0 else f"the {names[w.steps[k - 1].level]}"
            if not present:
                summary = ("P=0: not present — the walk stops here" if x86
                           else "bits 2:0 = 000: not present — the walk stops here")
            elif leaf:
                summary = (f"{'PS=1: ' if s.level > 1 else ''}maps a {size_name(1 << _SHIFT[s.level])} "
                           f"page at {e & genmask(self._mpa - 1, _SHIFT[s.level]):#x}")
            else:
                summary = f"points to the next table at {e & genmask(self._mpa - 1, 12):#x}"
            rows.append({
                "level": s.level, "name": names[s.level], "title": title, "index": idx,
                "index_bits": f"{_SHIFT[s.level] + 8}:{_SHIFT[s.level]}",
                "entry_addr": _hx(s.entry_addr), "entry": f"{e:#018x}", "flags": flags,
                "where": f"{_hx(table)} + 8 × {idx} (table from {from_})",
                "summary": summary, "boxes": boxes, "patched": s.entry_addr in patch,
            })
            table = e & genmask(self._mpa - 1, 12)

        local, final, why = (_x86_marks if x86 else _ept_marks)(w, opts)
        outcome = self._outcome(w, why, split_of)
        # frames: one per event
        frames = []
        n = len(w.steps)
        read = -1
        row_of_addr = {s.entry_addr: k for k, s in enumerate(w.steps)}
        for ev in t.events:
            d = ev.data
            if ev.kind in ("pte_read", "ept_step"):
                read += 1
                row, end = read, False
                lv = w.steps[read].level
                hl = [split_of[lv]]
                r = rows[read]
                cap = {"text": f"{r['name']}[{r['index']}] at {r['entry_addr']} = {r['entry']}"
                               f" ({r['flags']})",
                       "note": f"Level {lv}: {aname} bits {r['index_bits']} = {r['index']} pick "
                               f"the entry at {r['where']}. "
                               f"{r['summary'][:1].upper()}{r['summary'][1:]}."}
            elif ev.kind == "pte_write":
                row, end = row_of_addr.get(d["entry_addr"], n - 1), False
                hl = []
                cap = {"text": ev.label,
                       "note": "set_ad: after a successful walk the accessed flag (and for a "
                               "write the leaf's dirty flag) is written back, as KVM's "
                               "FNAME(update_accessed_dirty_bits) does."}
            else:
                row, end = n - 1, True
                hl = outcome["split"]
                cap = {"text": outcome["head"], "note": outcome["note"]}
            frames.append({
                "row": row, "outcome": end, "split": hl, "caption": cap,
                "marks": [m for m in local if m[0] <= row] + (final if end else []),
            })
        edits = [e.what for e in self._edits_of(patch)]
        return {
            "mmu": self.kind, "levels": levels, "address_name": aname,
            "address": f"{address:#x}", "access": w.access,
            "user": bool(w.user) if x86 else None,
            "accesses": [[k, v] for k, v in _ACCESS.items()],
            "root": ({"name": "CR3", "value": _hx(self._root),
                      "note": f"the {_X86_TABLE[levels]} is at "
                              f"{_hx(self._root & genmask(self._mpa - 1, 12))}"}
                     if x86 else
                     {"name": "EPTP", "value": _hx(self._root), "note": repr(
                         ept_model.Eptp.decode(self._root, maxphyaddr=self._mpa))}),
            "options": self._options_text(),
            "split": split, "rows": rows, "frames": frames, "outcome": outcome,
            "edits": edits,
            "modified": bool(edits) or (address, w.access, bool(w.user) if x86 else False)
            != (self._start[0], self._start[1], self._start[2]),
            "mt_options": [[v, f"{v} {_MT_NAMES.get(v, 'reserved')}"] for v in range(8)],
            "static_note": "Flipping bits needs a running kernel: open this notebook in Jupyter "
                           "and run the cell. Here the recorded walk only plays.",
            "live_note": "Click a bit with a dashed border to flip it (Python flips it in a copy "
                         "of memory and walks again); click the address field to type a new one.",
        }

    def _options_text(self) -> str:
        o = self._options
        if self._ept:
            parts = [f"MAXPHYADDR {self._mpa}"]
            if not o.get("execute_only", True):
                parts.append("no execute-only")
            if o.get("update_ad"):
                parts.append("update_ad")
            return ", ".join(parts)
        parts = [f"CR0.WP={int(o.get('cr0_wp', True))}", f"CR4.SMEP={int(o.get('cr4_smep', False))}",
                 f"CR4.SMAP={int(o.get('cr4_smap', False))}", f"EFER.NXE={int(o.get('efer_nxe', True))}"]
        if self._mpa != 52:
            parts.append(f"MAXPHYADDR {self._mpa}")
        if o.get("set_ad"):
            parts.append("set_ad")
        return ", ".join(parts)

    def _outcome(self, w: Any, why: str, split_of: dict[int, int]) -> dict[str, Any]:
        x86 = not self._ept
        address = w.gva if x86 else w.gpa
        if w.fault is None:
            ps = w.page_size
            leaf_level = {1 << 12: 1, 1 << 21: 2, 1 << 30: 3}[ps]
            # the page offset: 11:0 and every index field below the leaf
            spl = sorted(j for lv, j in split_of.items() if lv == -1 or 0 < lv < leaf_level)
            frame = w.address & ~(ps - 1)
            off = address & (ps - 1)
            bits = f"{ps.bit_length() - 2}:0"
            target = "GPA" if x86 else "HPA"
            leaf_name = _X86_SDM[leaf_level] if x86 else ept_model.LEVEL_NAMES[leaf_level]
            lines = [[target, _hx(w.address), f"= page frame {frame:#x} + offset {off:#x}"],
                     ["page size", size_name(ps),
                      f"the leaf is the {leaf_name}; {'GVA' if x86 else 'GPA'} bits {bits} are "
                      "the offset"]]
            if not x86:
                mt = w.memtype
                lines.append(["memory type", f"{mt} ({_MT_NAMES.get(mt, '?')})",
                              f"IPAT={int(w.ipat)}: " + ("the guest's PAT is ignored" if w.ipat
                                                         else "combined with the guest's PAT")])
                lines.append(["rights", _rwx(w.rwx), "ANDed over the entries read"])
            head = (f"{'GVA' if x86 else 'GPA'} {address:#x} → {target} {w.address:#x} "
                    f"({size_name(ps)} page)")
            return {"ok": True, "kind": "translate", "head": head, "note": why, "lines": lines,
                    "bits": [], "split": spl}
        f = w.fault
        spl = [split_of[f.level]]
        if x86:
            ec = int(f.error_code)
            bits = [
                {"bit": 0, "name": "P", "set": bool(ec & PfErr.P),
                 "meaning": "protection violation: the page was present" if ec & PfErr.P
                 else "the page (an entry on the way) was not present"},
                {"bit": 1, "name": "W/R", "set": bool(ec & PfErr.W),
                 "meaning": "the access was a write" if ec & PfErr.W else "the access was a read"
                 + (" or fetch" if w.access == "x" else "")},
                {"bit": 2, "name": "U/S", "set": bool(ec & PfErr.U),
                 "meaning": "user mode (CPL 3)" if ec & PfErr.U else "supervisor mode"},
                {"bit": 3, "name": "RSVD", "set": bool(ec & PfErr.RSVD),
                 "meaning": "a reserved bit was set in an entry" if ec & PfErr.RSVD
                 else "no reserved bit set"},
                {"bit": 4, "name": "I/D", "set": bool(ec & PfErr.I),
                 "meaning": "an instruction fetch" if ec & PfErr.I
                 else "not an instruction fetch" + (" (I/D needs EFER.NXE or CR4.SMEP)"
                                                    if w.access == "x" else "")},
                {"bit": 5, "name": "PK", "set": bool(ec & PfErr.PK),
                 "meaning": "protection keys (not modelled)"},
            ]
            names = "|".join(b["name"].split("/")[0] for b in bits if b["set"]) or "0"
            lines = [["vector", "14 (#PF)", "the guest kernel's #PF handler gets the error code and CR2"],
                     ["error code", f"{ec:#x}", names],
                     ["CR2", _hx(f.cr2), "the faulting linear address"],
                     ["stopped at", f"{_X86_SDM[f.level]} (level {f.level})", f.reason]]
            head = f"#PF, error code {ec:#x} ({names}), CR2 = {f.cr2:#x}"
            return {"ok": False, "kind": "page_fault", "head": head, "note": f.reason,
                    "lines": lines, "bits": bits, "split": spl}
        if isinstance(f, EptViolation):
            q = f.qualification
            qb = [
                (0, "read", EPT_VIOLATION_ACC_READ, "the access was a data read"),
                (1, "write", EPT_VIOLATION_ACC_WRITE, "the access was a data write"),
                (2, "fetch", EPT_VIOLATION_ACC_INSTR, "the access was an instruction fetch"),
                (3, "R", 1 << 3, "the entries allowed reads (R ANDed over the walk)"),
                (4, "W", 1 << 4, "the entries allowed writes (W ANDed over the walk)"),
                (5, "X", 1 << 5, "the entries allowed fetches (X ANDed over the walk)"),
                (7, "GVA valid", EPT_VIOLATION_GVA_IS_VALID,
                 "the guest linear address field is valid"),
                (8, "translated", EPT_VIOLATION_GVA_TRANSLATED,
                 "the access was to the GVA's final translation (0: to a guest paging entry)"),
                (12, "NMI", 1 << 12, "NMI unblocking due to IRET"),
            ]
            bits = [{"bit": b, "name": name, "set": bool(q & m), "meaning": mean}
                    for b, name, m, mean in qb]
            lines = [["exit reason", f"{f.exit_reason} (EXIT_REASON_EPT_VIOLATION)",
                      f"KVM: {f.handler} → kvm_mmu_page_fault"],
                     ["qualification", f"{q:#x}", f"bits 5:3 = {_rwx(f.rwx)}: what the entries allowed"],
                     ["GPA", _hx(f.gpa), "VMCS GUEST_PHYSICAL_ADDRESS"],
                     ["stopped at", f"{ept_model.LEVEL_NAMES[f.level]} (level {f.level})", f.reason]]
            head = f"VM exit: EPT violation (exit {f.exit_reason}), qualification {q:#x}"
            return {"ok": False, "kind": "ept_violation", "head": head, "note": f.reason,
                    "lines": lines, "bits": bits, "split": spl}
        lines = [["exit reason", f"{f.exit_reason} (EXIT_REASON_EPT_MISCONFIG)",
                  f"KVM: {f.handler} → kvm_mmu_page_fault(gpa, PFERR_RSVD_MASK)"],
                 ["qualification", "none", "an EPT misconfiguration has no exit qualification"],
                 ["GPA", _hx(f.gpa), "VMCS GUEST_PHYSICAL_ADDRESS"],
                 ["entry", f"{ept_model.LEVEL_NAMES[f.level]} at {f.entry_addr:#x} = {f.entry:#x}",
                  f.reason]]
        head = f"VM exit: EPT misconfiguration (exit {f.exit_reason}) at the {ept_model.LEVEL_NAMES[f.level]}"
        return {"ok": False, "kind": "ept_misconfig", "head": head, "note": f.reason,
                "lines": lines, "bits": [], "split": spl}

    # -- requests: what a reader may change ---------------------------------------------

    def _name(self, level: int) -> str:
        return (ept_model.LEVEL_NAMES if self._ept else _X86_SDM)[level]

    def _step_at(self, level: Any) -> Any:
        if isinstance(level, bool) or not isinstance(level, int):
            raise WalkRequestError(f"level must be an int, got {level!r}")
        for s in self.result.steps:
            if s.level == level:
                return s
        names = ", ".join(f"{self._name(s.level)} ({s.level})" for s in self.result.steps)
        raise WalkRequestError(f"level {level} is not on this walk: it read {names}")

    def _apply(self, address: int, access: str, user: bool, patch: dict[int, int],
               change: str = "") -> None:
        # an entry set back to what the caller's memory holds is no edit any more
        patch = {a: v for a, v in patch.items()
                 if v != self._orig(a)}
        try:
            result, trace = self._walk(address, access, user, patch)
        except VbookError as e:
            change = f"after {change}" if change else "with that address / access"
            raise WalkRequestError(f"the walk cannot be done {change}: {e}", cause=e) from None
        self._address, self._access, self._user, self._patch = address, access, user, patch
        self.result = result
        with self.hold_sync():
            self.trace = trace.to_dict()
            self.step = len(trace.events) - 1  # straight to the outcome
            self.error = ""

    def _fail(self, e: WalkRequestError) -> None:
        self.error = str(e)
        raise e

    def flip(self, level: int, bit: str) -> None:
        """Flip one bit of the entry this walk read at ``level`` and walk again.

        ``bit``: x86 ``P``, ``RW``, ``US``, ``PS`` (levels 2–5), ``NX``; EPT ``R``, ``W``,
        ``X``, ``PS`` (levels 2–5). Raises :class:`WalkRequestError` (and shows it) for a
        level not on the walk, a bit not editable there, or a walk that cannot be done.
        """
        try:
            s = self._step_at(level)
            name = str(bit).upper().replace("/", "")
            name = {"XD": "NX"}.get(name, name) if not self._ept else name
            table = _EPT_BITS if self._ept else _X86_BITS
            if name not in table:
                shown = "P, RW, US, PS, NX" if not self._ept else "R, W, X, PS"
                kind = "EPT" if self._ept else "x86"
                extra = (" (the memory type is 3 bits: set_field(level, 'MT', value))"
                         if name in ("MT", "MEMTYPE") else
                         " (the address field is set with set_field(level, 'addr', value))"
                         if name in ("ADDR", "ADDRESS") else "")
                raise WalkRequestError(f"bit {bit!r} of an {kind} entry is not editable here; "
                                       f"the bits a reader may flip are {shown}{extra}")
            if name == "PS" and level == 1:
                raise WalkRequestError(
                    "bit 7 of a 4 KiB PTE is PAT, not a page size: there is no PS to flip at "
                    "level 1" if not self._ept else
                    "bit 7 of an EPT PTE is ignored, not a page size: there is no PS to flip at "
                    "level 1")
            mask = int(table[name])
            new = s.entry ^ mask
            label = {"NX": "XD", "RW": "R/W", "US": "U/S"}.get(name, name)
            was = int(bool(s.entry & mask))
            self._where.setdefault(s.entry_addr, (level, self._name(level)))
            self._apply(self._address, self._access, self._user,
                        {**self._patch, s.entry_addr: new},
                        f"{self._name(level)} at {s.entry_addr:#x}: {label} {was} → {1 - was}")
        except WalkRequestError as e:
            self._fail(e)

    def set_field(self, level: int, field: str, value: Any) -> None:
        """Give a field of the entry at ``level`` a new value and walk again.

        ``field`` is ``"addr"`` (the physical address the entry holds: the next
        table, or the page frame — aligned to what the entry maps) or, for an
        EPT leaf, ``"MT"`` (the memory type, 0–7). ``value`` is an int or a
        string such as ``"0x12000"``.
        """
        try:
            s = self._step_at(level)
            v = _parse_int(value, field)
            key = str(field).lower()
            if key in ("addr", "address"):
                row = self.trace["meta"]["walk"]["rows"][[x.level for x in self.result.steps].index(level)]
                box = next(b for b in row["boxes"] if b["key"] == "addr")
                hi, lo = (int(x) for x in box["bits"].split(":"))
                if v & ~genmask(hi, lo):
                    raise WalkRequestError(
                        f"the address field of this {self._name(level)} is bits {hi}:{lo}: {v:#x} must be "
                        f"{size_name(1 << lo) if lo > 12 else '4 KiB'}-aligned and below "
                        f"2**{hi + 1} (MAXPHYADDR)")
                new = (s.entry & ~genmask(hi, lo)) | v
                what = (f"{self._name(level)} at {s.entry_addr:#x}: address "
                        f"{s.entry & genmask(hi, lo):#x} → {v:#x}")
            elif key in ("mt", "memtype") and self._ept:
                leaf = level == 1 or (level in (2, 3) and bool(s.entry & VmxEpt.LARGE_PAGE))
                if not leaf:
                    raise WalkRequestError(f"the {self._name(level)} at level {level} points to a table: "
                                           "only a leaf has a memory type (bits 5:3 are "
                                           "reserved here)")
                if not 0 <= v <= 7:
                    raise WalkRequestError(f"an EPT memory type is 3 bits (0..7), got {v}")
                old = (s.entry & ept_model.VMX_EPT_MT_MASK) >> ept_model.VMX_EPT_MT_EPTE_SHIFT
                new = (s.entry & ~ept_model.VMX_EPT_MT_MASK) | v << ept_model.VMX_EPT_MT_EPTE_SHIFT
                what = (f"{self._name(level)} at {s.entry_addr:#x}: memory type {old} "
                        f"({_MT_NAMES.get(old, 'rsvd')}) → {v} ({_MT_NAMES.get(v, 'reserved')})")
            else:
                fields = "'addr' or 'MT' (an EPT leaf)" if self._ept else "'addr'"
                raise WalkRequestError(f"field {field!r} cannot be set; the fields are {fields} "
                                       "(single bits are flipped with flip(level, bit))")
            self._where.setdefault(s.entry_addr, (level, self._name(level)))
            self._apply(self._address, self._access, self._user,
                        {**self._patch, s.entry_addr: new}, what)
        except WalkRequestError as e:
            self._fail(e)

    def rewalk(self, address: Any = None, access: str | None = None,
               user: bool | None = None) -> None:
        """Walk again, the edits kept, for another address and/or access kind (and mode)."""
        try:
            a = self._address if address is None else _parse_int(address, "address")
            acc = self._access if access is None else access
            if acc not in _ACCESS:
                raise WalkRequestError(f"access must be 'r', 'w' or 'x' (fetch), got {acc!r}")
            u = self._user if user is None else user
            if not isinstance(u, bool):
                raise WalkRequestError(f"user must be True or False, got {u!r}")
            if self._ept and u:
                raise WalkRequestError("an EPT walk has no user mode")
            self._apply(a, acc, u, self._patch)
        except WalkRequestError as e:
            self._fail(e)

    def reset(self) -> None:
        """Back to the first walk: no edits, the first address and access."""
        address, access, user = self._start
        self._apply(address, access, user, {})

    def handle_request(self, content: Any) -> str:
        """Do one request from the browser; return "" or the error (also put in ``error``).

        ``{"kind": "flip", "level": 1, "bit": "RW"}``,
        ``{"kind": "set", "level": 1, "field": "addr" | "MT", "value": "0x5000"}``,
        ``{"kind": "walk", "address": "0x401000", "access": "w", "user": true}``,
        ``{"kind": "reset"}``. Never raises.
        """
        try:
            if not isinstance(content, dict):
                raise WalkRequestError(f"a request is a JSON object, got {type(content).__name__}")
            kind = content.get("kind")
            if kind == "flip":
                self.flip(content.get("level"), content.get("bit", ""))
            elif kind == "set":
                self.set_field(content.get("level"), content.get("field", ""), content.get("value"))
            elif kind == "walk":
                self.rewalk(content.get("address"), content.get("access"), content.get("user"))
            elif kind == "reset":
                self.reset()
            else:
                raise WalkRequestError(f"unknown request kind {kind!r}; the kinds are flip, set, "
                                       "walk, reset")
        except WalkRequestError as e:
            self.error = str(e)
            return str(e)
        except VbookError as e:  # pragma: no cover - every path above wraps its own
            self.error = f"{type(e).__name__}: {e}"
            return self.error
        return ""

    def _on_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        # only the pane's own messages (tagged); anything else on this comm is not ours
        if not isinstance(content, dict) or content.get("vbook") != "walk":
            return
        rid = content.get("id")
        if content.get("kind") == "hello":
            self.live = True
            self.send({"vbook": "walk", "kind": "hello", "id": rid})
            return
        request = {k: v for k, v in content.items() if k not in ("vbook", "id")}
        err = self.handle_request(request)
        self.send({"vbook": "walk", "kind": "error", "message": err, "id": rid} if err
                  else {"vbook": "walk", "kind": "done", "id": rid})

    # -- text -------------------------------------------------------------------------

    def __repr__(self) -> str:
        w = self.result
        n = _plural(len(w.steps), "entry")
        if self._ept:
            head = f"EPT {self.levels}-level walk of gpa {w.gpa:#x} ({w.access})"
            if w.fault is None:
                out = f"hpa {w.address:#x}" + (f" ({size_name(w.page_size)})" if w.page_size != 4096 else "")
            elif isinstance(w.fault, EptViolation):
                out = f"EPT violation, qualification {w.fault.qualification:#x}"
            else:
                out = f"EPT misconfig at {w.fault.level and ept_model.LEVEL_NAMES[w.fault.level]}"
        else:
            mode = "user" if w.user else "supervisor"
            head = f"x86-64 {w.levels}-level walk of {w.gva:#x} ({w.access}, {mode})"
            if w.fault is None:
                out = f"gpa {w.address:#x}" + (f" ({size_name(w.page_size)})" if w.page_size != 4096 else "")
            else:
                ec = int(w.fault.error_code)
                out = f"#PF error_code {ec:#x} ({'|'.join(f.name for f in PfErr if ec & f) or '0'})"
        edits = f", {_plural(len(self._patch), 'edited entry')}" if self._patch else ""
        return f"WalkView({head}: {n} -> {out}{edits})"


def _parse_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise WalkRequestError(f"{what} must be a number, got {value!r}")
    if isinstance(value, int):
        v = value
    elif isinstance(value, str):
        try:
            v = int(value.strip().replace("_", ""), 0)
        except ValueError:
            raise WalkRequestError(f"{what} {value!r} is not a number (write it like 0x401000)") from None
    else:
        raise WalkRequestError(f"{what} must be a number, got {value!r}")
    if not 0 <= v < 1 << 64:
        raise WalkRequestError(f"{what} {v:#x} is not a 64-bit unsigned value")
    return v


def show_walk(mem: GuestMemory, cr3: int, gva: int, access: str = "r", user: bool = False, *,
              step: int = 0, speed: float = 1.5, title: str | None = None,
              **options: Any) -> WalkView:
    """An x86-64 guest page walk, entry by entry: ``show_walk(mem, pt.cr3, 0x400123, "w", user=True)``.

    The arguments are :func:`vbook.models.paging.walk`'s (``levels``, ``cr0_wp``,
    ``cr4_smep``, ``cr4_smap``, ``efer_nxe``, ``maxphyaddr``, ``set_ad``).
    """
    return WalkView(mem, cr3, gva, access, user, step=step, speed=speed, title=title, **options)


def show_ept_walk(mem: GuestMemory, eptp: Any, gpa: int, access: str = "r", *, step: int = 0,
                  speed: float = 1.5, title: str | None = None, **options: Any) -> WalkView:
    """An EPT walk (GPA → HPA): ``show_ept_walk(host, ept.eptp, 0x201234, "w")``.

    The arguments are :func:`vbook.models.ept.walk`'s (``maxphyaddr``,
    ``execute_only``, ``gva_valid``, ``translated``, ``nmi_unblocking``, ``update_ad``).
    """
    return WalkView(mem, eptp, gpa, access, ept=True, step=step, speed=speed, title=title,
                    **options)


__all__ = ["EPT_OPTIONS", "Edit", "WalkRequestError", "WalkView", "X86_OPTIONS", "show_ept_walk",
           "show_walk"]
