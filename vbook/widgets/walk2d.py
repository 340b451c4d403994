"""Walk2dGrid: the two-dimensional page walk (guest paging x EPT) as a grid that fills in.

It renders the trace :func:`vbook.models.nested.walk_2d` records when given a
``trace=`` recorder — ``walk_2d``, then one ``ept_ref`` / ``guest_ref`` per
memory reference, then ``translate_2d``, a guest ``page_fault`` or a kvm
``vmexit`` — or a finished :class:`~vbook.models.nested.Walk2d`, whose
references are written out as the same events (:func:`trace_of_walk`).

The ``walk2d`` pane (``walk2d_pane.js``) draws one grid per walk, the layout of
:meth:`Walk2d.grid <vbook.models.nested.Walk2d.grid>`:

* rows — the guest's steps top down: the guest PML4E (in the table at gCR3),
  PDPTE, PDE, PTE, then the final data GPA;
* columns — the EPT levels top down (EPT PML4E … EPT PTE), then the guest-table
  read itself ("guest entry"); in the data row that last cell is the data
  access, which is not a walk reference — hence (n + 1)(m + 1) − 1;
* every reference is a cell that lights up in order as the player steps,
  showing the GPA being translated, the entry read and the HPA where it was
  read; cells a large page made unnecessary are greyed, cells after a fault
  are marked "not reached";
* a counter "reference k of 24" and the outcome: the HPA, a guest #PF with its
  error code, or the EPT violation / misconfiguration and where it hit.

Everything the pane shows is computed here from the trace (:func:`walk2d_layout`)
and travels in ``trace.meta["walk2d"]``: hex strings, rows and columns, each
reference's cell. The browser only indexes it.
"""

from __future__ import annotations

from typing import Any

import traitlets

from vbook.errors import TraceError
from vbook.models import ept, paging
from vbook.models.nested import PFERR_GUEST_FINAL_MASK, Walk2d
from vbook.models.paging import PageFault
from vbook.trace import Trace, TraceRecorder
from vbook.widgets.player import CSS, HERE, TracePlayer, as_trace, esm_with

PANE_JS = HERE / "walk2d_pane.js"
PANE_CSS = HERE / "walk2d_pane.css"

#: what a page of each leaf level maps, for the notes
_SIZE = {1: "4 KiB", 2: "2 MiB", 3: "1 GiB"}
_EXIT_NAME = {ept.EXIT_REASON_EPT_VIOLATION: "EPT violation", ept.EXIT_REASON_EPT_MISCONFIG: "EPT misconfig"}


def _hex(v: Any) -> str | None:
    return None if v is None else f"{int(v):#x}"


def trace_of_walk(w: Walk2d, *, title: str | None = None) -> Trace:
    """A finished :class:`~vbook.models.nested.Walk2d` as the events ``walk_2d`` records.

    The same kinds and data as ``walk_2d(..., trace=rec)``: ``walk_2d``, one
    ``<kind>_ref`` per reference, then the outcome. A ``Walk2d`` does not keep
    the EPTP, so ``eptp`` is None; ``cr3`` is the guest table the first
    guest-level reference reads (CR3 without its flag bits). A/D write-backs
    are not in a ``Walk2d`` and so not in this trace.
    """
    rec = TraceRecorder(title=title or f"2-D walk of {w.gva:#x}")
    first = next((r for r in w.refs if r.level == w.levels), None)
    cr3 = first.gpa & ~0xFFF if first is not None else None
    rec.emit("guest", "walk_2d", f"2-D walk of {w.gva:#x}", gva=w.gva, cr3=cr3, eptp=None,
             levels=w.levels, ept_levels=w.ept_levels, access=w.access)
    for n, r in enumerate(w.refs, 1):
        rec.emit("guest", f"{r.kind}_ref", f"#{n} {r.kind} {r.name} @ HPA {r.hpa:#x} = {r.entry:#x}",
                 n=n, ref_kind=r.kind, level=r.level, ept_level=r.ept_level, gpa=r.gpa, hpa=r.hpa,
                 entry=r.entry)
    f = w.fault
    if f is None:
        rec.emit("guest", "translate_2d", f"GVA {w.gva:#x} -> GPA {w.gpa:#x} -> HPA {w.address:#x}",
                 gva=w.gva, gpa=w.gpa, hpa=w.address, refs=len(w.refs))
    elif isinstance(f, PageFault):
        rec.emit("guest", "page_fault", f"guest #PF {int(f.error_code):#x} at {w.gva:#x}",
                 gva=w.gva, error_code=int(f.error_code), level=f.level)
    else:
        rec.emit("kvm", "vmexit", "EXIT_REASON_EPT_VIOLATION" if f.exit_reason == 48
                 else "EXIT_REASON_EPT_MISCONFIG", exit_reason=f.exit_reason, gpa=f.gpa, gva=w.gva,
                 fault_on=w.fault_on, error_code=w.error_code,
                 qualification=getattr(f, "qualification", None))
    return rec.freeze()


def _outcome(ev: dict[str, Any], i: int, last: dict[str, Any] | None) -> dict[str, Any]:
    """What ended a walk, as text the pane shows, and the cell where it happened."""
    d = ev.get("data", {})
    at = {"row": last["row"], "col": last["col"]} if last is not None else {"row": None, "col": None}
    if ev["kind"] == "translate_2d":
        return {"i": i, "kind": "ok", "gpa": _hex(d.get("gpa")), "hpa": _hex(d.get("hpa")),
                "row": None, "col": None,
                "text": f"GVA {_hex(d.get('gva'))} -> GPA {_hex(d.get('gpa'))} -> HPA {_hex(d.get('hpa'))}"}
    if ev["kind"] == "page_fault":
        code = d.get("error_code")
        lv = d.get("level")
        where = f" at the guest {paging.LEVEL_NAMES[lv].upper()}E" if lv in paging.LEVEL_NAMES else ""
        if last is not None:
            where += f" (reference {last['n']})"
        return {"i": i, "kind": "guest_pf", "error_code": _hex(code), **at,
                "text": f"guest #PF, error code {_hex(code)}{where}: the guest's own fault, "
                        "no VM exit (with EPT, KVM does not intercept #PF)"}
    reason = d.get("exit_reason")
    name = _EXIT_NAME.get(reason, f"VM exit {reason}")
    on = d.get("fault_on")
    what = ("translating the final GPA" if on == "guest_final"
            else "translating a guest paging-structure access" if on == "guest_page" else "")
    code = d.get("error_code")
    kvm = ""
    if code is not None:
        final = bool(int(code) & PFERR_GUEST_FINAL_MASK)
        kvm = (f"; KVM's error code {_hex(code)} "
               f"({'PFERR_GUEST_FINAL_MASK' if final else 'PFERR_GUEST_PAGE_MASK'})")
    q = d.get("qualification")
    qual = f", qualification {_hex(q)}" if q is not None else ""
    cell = ""
    if last is not None:
        row = "the data GPA" if last["level"] == 0 else \
            f"the guest {paging.LEVEL_NAMES[last['level']].upper()}E"
        cell = f", at reference {last['n']}: the {last['name']} in the row of {row}"
    return {"i": i, "kind": "ept_violation" if reason == ept.EXIT_REASON_EPT_VIOLATION else "ept_misconfig",
            "exit_reason": reason, "gpa": _hex(d.get("gpa")), "error_code": _hex(code), **at,
            "text": f"{name} (exit reason {reason}) at GPA {_hex(d.get('gpa'))}{cell}"
                    f"{', ' + what if what else ''}{qual}{kvm}"}


def _one_walk(events: list[dict[str, Any]], start: int, end: int) -> dict[str, Any]:
    d = events[start].get("data", {})
    n, m = d.get("levels"), d.get("ept_levels")
    if not isinstance(n, int) or not isinstance(m, int) or n not in (4, 5) or m not in (4, 5):
        raise TraceError(f"event {start}: a walk_2d event needs levels and ept_levels of 4 or 5, got "
                         f"levels={n!r}, ept_levels={m!r}")
    rows = [{"name": paging.LEVEL_NAMES[lv], "label": f"guest {paging.LEVEL_NAMES[lv].upper()}E",
             "level": lv, "gpa": None, "note": ""} for lv in range(n, 0, -1)]
    rows.append({"name": "gpa", "label": "data GPA", "level": 0, "gpa": None, "note": ""})
    cols = [{"name": ept.LEVEL_NAMES[lv], "label": f"EPT {ept.LEVEL_NAMES[lv]}", "level": lv}
            for lv in range(m, 0, -1)]
    cols.append({"name": "guest", "label": "guest entry", "level": None})
    grid: list[list[int | None]] = [[None] * len(cols) for _ in rows]
    cells: list[dict[str, Any]] = []
    outcome = None
    for i in range(start + 1, end + 1):
        ev = events[i]
        e = ev.get("data", {})
        if ev.get("kind") in ("ept_ref", "guest_ref"):
            level, elev = e.get("level"), e.get("ept_level")
            guest = e.get("ref_kind") == "guest"
            row = len(rows) - 1 if level == 0 else n - level       # as Walk2d.grid()
            col = len(cols) - 1 if guest else m - (elev or 0)
            if not (0 <= row < len(rows) and 0 <= col < len(cols)) or grid[row][col] is not None:
                raise TraceError(f"event {i}: reference at guest level {level!r}, EPT level {elev!r} "
                                 f"does not fit a {n}x{m} walk")
            k = len(cells) + 1
            grid[row][col] = k
            name = paging.LEVEL_NAMES[level].upper() + "E" if guest else ept.LEVEL_NAMES[elev]
            cells.append({"i": i, "n": k, "row": row, "col": col, "kind": "guest" if guest else "ept",
                          "name": ("guest " if guest else "EPT ") + name, "level": level,
                          "ept_level": elev, "gpa": _hex(e.get("gpa")), "hpa": _hex(e.get("hpa")),
                          "entry": _hex(e.get("entry"))})
            if rows[row]["gpa"] is None:
                rows[row]["gpa"] = _hex(e.get("gpa"))
        elif outcome is None and (ev.get("kind") in ("translate_2d", "page_fault") or
                                  (ev.get("actor") == "kvm" and ev.get("kind") == "vmexit")):
            outcome = _outcome(ev, i, cells[-1] if cells else None)
    # notes: where a large page ended a walk early
    for r, row in enumerate(rows):
        used = [c for c in cells if c["row"] == r]
        ept_used = [c for c in used if c["kind"] == "ept"]
        notes = []
        if ept_used and outcome is not None and (outcome["kind"] == "ok" or r < (outcome["row"] or 0)):
            leaf = ept_used[-1]["ept_level"]
            if leaf in (2, 3):
                notes.append(f"EPT {_SIZE[leaf]} page")
        g = [c for c in used if c["kind"] == "guest"]
        if g and row["level"] in (2, 3) and outcome is not None and outcome["kind"] == "ok" and \
                not any(c["level"] == row["level"] - 1 for c in cells):
            notes.append(f"guest {_SIZE[row['level']]} page: the walk ends here")
        row["note"] = "; ".join(notes)
    # empty cells: skipped (a large page) or not reached (the walk stopped)
    stop = None
    if outcome is not None and outcome["kind"] != "ok" and outcome["row"] is not None:
        stop = (outcome["row"], outcome["col"])
    empty = []
    for r in range(len(rows)):
        for c in range(len(cols)):
            if grid[r][c] is not None:
                continue
            if r == len(rows) - 1 and c == len(cols) - 1:
                why, cls = "the data access itself: not a walk reference", "data"
            elif (outcome is None and cells and (r, c) > (cells[-1]["row"], cells[-1]["col"])) or \
                    (stop is not None and (r, c) > stop):
                why, cls = "not reached: the walk stopped", "unreached"
            elif all(x is None for x in grid[r]):
                why = f"no guest {rows[r]['label'][6:]}: a guest large page ended the walk above"
                cls = "skipped"
            else:
                why, cls = f"no {cols[c]['label']} read: the EPT leaf was a large page", "skipped"
            empty.append({"row": r, "col": c, "cls": cls, "why": why})
    n_guest = sum(c["kind"] == "guest" for c in cells)
    return {
        "start": start, "end": end, "gva": _hex(d.get("gva")), "access": d.get("access", "r"),
        "cr3": _hex(d.get("cr3")), "eptp": _hex(d.get("eptp")), "levels": n, "ept_levels": m,
        "rows": rows, "cols": cols, "cells": cells, "grid": grid, "empty": empty,
        "total": len(cells), "guest": n_guest, "ept": len(cells) - n_guest,
        "full": (n + 1) * (m + 1) - 1, "outcome": outcome,
    }


def walk2d_layout(trace: Trace) -> list[dict[str, Any]]:
    """Every 2-D walk in ``trace``: its rows, columns and cells, ready to draw.

    A walk runs from a ``walk_2d`` event to the event before the next one (or
    the end). ``grid`` is the same matrix as :meth:`Walk2d.grid` (1-based
    reference numbers, None where no reference was made); ``cells`` lists the
    references in order with the event that made each; ``empty`` says why a
    cell is empty; ``outcome`` is how the walk ended (None if the trace stops
    inside it). Values are hex strings: a 64-bit entry stays exact in the browser.
    """
    events = trace.to_dict()["events"]
    starts = [i for i, e in enumerate(events) if e["kind"] == "walk_2d"]
    return [_one_walk(events, s, (starts[k + 1] - 1) if k + 1 < len(starts) else len(events) - 1)
            for k, s in enumerate(starts)]


def _walk_trace(obj: Any) -> Trace:
    if isinstance(obj, Walk2d):
        return trace_of_walk(obj)
    if isinstance(obj, TraceRecorder):
        return obj.freeze()
    return as_trace(obj)


def _summary(w: dict[str, Any]) -> str:
    o = w["outcome"]
    head = f"2-D walk of {w['gva']}: {w['total']} refs ({w['guest']} guest + {w['ept']} EPT)"
    if o is None:
        return head + ", unfinished"
    if o["kind"] == "ok":
        return f"{head} -> hpa {o['hpa']}"
    if o["kind"] == "guest_pf":
        return f"{head} -> guest #PF error_code {o['error_code']}"
    return f"{head} -> {_EXIT_NAME[o['exit_reason']]} at gpa {o['gpa']}"


class Walk2dGrid(TracePlayer):
    """Step through 2-D walks: one grid cell per memory reference, lit in order.

    ``Walk2dGrid(walk_or_trace, step=0, speed=4.0)``: a
    :class:`~vbook.models.nested.Walk2d`, or the trace of ``walk_2d(...,
    trace=rec)`` (a Trace, the recorder, or anything with a ``.trace``) — one
    walk or several. The layout is in ``trace["meta"]["walk2d"]``
    (:func:`walk2d_layout`); ``walks`` is the same list.
    """

    _esm = esm_with(PANE_JS)
    _css = CSS.read_text(encoding="utf-8") + "\n" + PANE_CSS.read_text(encoding="utf-8")
    panes = traitlets.Unicode("walk2d").tag(sync=True)

    def __init__(self, walk: Any, *, step: int = 0, speed: float = 4.0, **kw: Any):
        super().__init__(self._with_layout(_walk_trace(walk)), step=step, speed=speed, **kw)

    @staticmethod
    def _with_layout(t: Trace) -> Trace:
        meta = {k: v for k, v in dict(t.meta).items() if k != "walk2d"}
        return Trace(t.events, {**meta, "walk2d": walk2d_layout(Trace(t.events, meta))})

    def set_trace(self, trace: Any) -> None:
        """Show another walk or trace, from its first event."""
        self.step = 0
        self.trace = self._with_layout(_walk_trace(trace)).to_dict()

    @property
    def walks(self) -> list[dict[str, Any]]:
        """The layout of every walk in the trace (see :func:`walk2d_layout`)."""
        return list(self.trace.get("meta", {}).get("walk2d", []))

    def __repr__(self) -> str:
        walks = self.walks
        if not walks:
            return f"Walk2dGrid(no 2-D walk, {len(self.trace.get('events', []))} events)"
        if len(walks) == 1:
            return f"Walk2dGrid({_summary(walks[0])})"
        return f"Walk2dGrid({len(walks)} 2-D walks: " + "; ".join(_summary(w) for w in walks) + ")"


def show_walk_2d(walk: Any, *, step: int = 0, speed: float = 4.0) -> Walk2dGrid:
    """The usual way to show a 2-D walk: ``show_walk_2d(walk_2d(mem, eptp, cr3, gva))``,
    or ``show_walk_2d(rec)`` after ``walk_2d(..., trace=rec)``."""
    return Walk2dGrid(walk, step=step, speed=speed)


__all__ = ["Walk2dGrid", "show_walk_2d", "trace_of_walk", "walk2d_layout"]
