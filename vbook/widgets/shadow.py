"""ShadowSyncView: shadow paging as it happens — the guest's tables and KVM's shadow pages.

It renders the trace :class:`vbook.models.shadow.ShadowMmu` records (``vmexit``,
``pf_result``, ``new_shadow_page``, ``set_spte``, ``write_protect``, ``unsync``,
``emulate``, ``pte_write``, ``flooded``, ``zap_page``, ``sync_page``,
``load_cr3``, ``invlpg``, ``access`` …). The ``shadow`` pane
(``shadow_pane.js``) shows at each step

* the kernel function of the current event and the counters that moved;
* every counter of :meth:`ShadowMmu.stats` (``pf_fixed``, ``pf_emulate``,
  ``mmu_pte_write``, ``mmu_unsync``, ``mmu_flooded``, ``mmu_shadow_zapped``,
  ``mmu_pde_zapped``, ``pages_4k`` …), the ones that just moved highlighted;
* one card per guest frame that holds a shadowed table: the guest's entries
  (left) next to the shadow page(s) KVM built for that table (right), each
  shadow page with its state — synced and write-protected, unsync (frame
  writable), zapped, flooded — and its sptes appearing as ``set_spte`` events
  happen; a card per *direct* shadow page (a guest large page).

The trace alone does not say what the shadow pages hold after each event
(``FNAME(sync_page)`` and the prefetch drop sptes silently, and the counters
are only in ``pf_result``). So the state is noted from the model itself while
it runs: record with a :class:`ShadowRecorder`,

>>> mmu = ShadowMmu(mem, cr3, trace=ShadowRecorder())      # doctest: +SKIP
>>> mmu.access(0x20000, "w", user=True)                    # doctest: +SKIP
>>> show_shadow(mmu)                                       # doctest: +SKIP

A ShadowMmu with a plain recorder (or a plain Trace) still shows, with the
counters of its ``pf_result`` events only. The view data travels in
``trace.meta["shadow_view"]`` (:func:`shadow_view`); the browser only indexes it.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import traitlets

from vbook.models import paging
from vbook.models.shadow import (
    ACC_EXEC_MASK,
    ACC_USER_MASK,
    ACC_WRITE_MASK,
    PG_LEVEL_4K,
    KvmMmuPage,
    ShadowMmu,
    Spte,
)
from vbook.trace import Trace, TraceRecorder
from vbook.widgets.player import CSS, HERE, RecordedViewPlayer, as_trace, esm_with

PANE_JS = HERE / "shadow_pane.js"
PANE_CSS = HERE / "shadow_pane.css"

PAGE = 4096
_TOP = 4                                   # the shadow MMU's root level (4-level guests only)
_TABLE = {4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}

#: the counters in the order the pane shows them: what a fault does, then the VM's MMU
COUNTERS = ("pf_taken", "pf_fixed", "pf_emulate", "pf_spurious", "pf_guest", "invlpg",
            "mmu_cache_miss", "pages_4k", "mmu_unsync", "mmu_pte_write", "mmu_pde_zapped",
            "mmu_flooded", "mmu_shadow_zapped")

#: event kind -> (kernel function, what it does) — Linux 6.1 names, as vbook.models.shadow has them
KERNEL: dict[str, tuple[str, str]] = {
    "vmexit": ("kvm_mmu_page_fault",
               "A #PF VM exit: the shadow tables do not allow this access. kvm_mmu_page_fault → "
               "kvm_mmu_do_page_fault (pf_taken) → FNAME(page_fault), which walks the guest's own "
               "tables in software (FNAME(walk_addr), setting A/D as the CPU would)."),
    "pf_result": ("kvm_mmu_do_page_fault",
                  "FNAME(page_fault) returned: RET_PF_FIXED counts pf_fixed, RET_PF_EMULATE pf_emulate, "
                  "RET_PF_SPURIOUS pf_spurious. Then KVM re-enters the guest, which retries the access."),
    "inject_pf": ("kvm_inject_emulated_page_fault",
                  "The guest's own tables do not allow the access: the #PF is the guest's, and KVM "
                  "re-injects it (pf_guest)."),
    "new_shadow_page": ("kvm_mmu_get_shadow_page",
                        "FNAME(fetch) found no shadow page for this guest table and role "
                        "(kvm_mmu_find_shadow_page misses: mmu_cache_miss), so kvm_mmu_alloc_shadow_page "
                        "makes one and account_shadowed write-protects the guest frame."),
    "write_protect": ("kvm_mmu_slot_gfn_write_protect",
                      "Every spte that maps the guest table's frame loses W: the guest's next store to its "
                      "own table faults, so KVM sees it."),
    "set_spte": ("mmu_set_spte",
                 "make_spte installs a leaf spte, GVA → host page (pages_4k for a new one). "
                 "FNAME(pte_prefetch) maps present, accessed neighbours the same way."),
    "unsync": ("kvm_unsync_page",
               "A write fault on the frame of a last-level table: mmu_try_to_unsync_pages marks its shadow "
               "page unsync (mmu_unsync) and maps the frame writable; later PTE stores do not trap."),
    "emulate": ("emulator_write_phys",
                "The store hit a write-tracked table (page_fault_handle_page_track → RET_PF_EMULATE): "
                "KVM's emulator writes the bytes, then the page-track notifier runs."),
    "pte_write": ("kvm_mmu_pte_write",
                  "The page-track notifier zaps the shadow entry the guest wrote (mmu_pte_write; "
                  "mmu_pde_zapped for a non-leaf entry); the next fault re-reads the guest entry."),
    "flooded": ("detect_write_flooding",
                "The third emulated write to this table without a fault through it: KVM zaps the shadow "
                "page and stops tracking the frame (mmu_flooded)."),
    "zap_page": ("kvm_mmu_prepare_zap_page",
                 "The shadow page is unlinked from its parents and its children and freed "
                 "(mmu_shadow_zapped)."),
    "sync_page": ("FNAME(sync_page)",
                  "Re-read each guest PTE behind a present spte of the page: drop the spte, or refresh its "
                  "rights."),
    "load_cr3": ("kvm_set_cr3 → kvm_mmu_new_pgd",
                 "MOV to CR3 is a TLB flush: kvm_mmu_load → kvm_mmu_sync_roots → mmu_sync_children "
                 "write-protects and syncs every unsync page below the root."),
    "invlpg": ("kvm_mmu_invlpg → FNAME(invlpg)",
               "INVLPG: KVM re-reads the one guest PTE behind the spte, if its page is unsync (invlpg)."),
    "access": ("(no VM exit)",
               "The shadow tables allow the access: the CPU does it at full speed and KVM sees nothing."),
    "mmio": ("kvm_mmu_page_fault",
             "The GPA is in no memslot: MMIO, for the emulator (pf_emulate)."),
}


def _rights(access: int) -> str:
    return " ".join(["W" if access & ACC_WRITE_MASK else "RO", "U" if access & ACC_USER_MASK else "S",
                     "X" if access & ACC_EXEC_MASK else "NX"])


class ShadowRecorder(TraceRecorder):
    """A :class:`~vbook.trace.TraceRecorder` that also notes what a :class:`ShadowMmu` holds after
    each event it emits: the counters, every shadow page, and the guest frames that hold tables.

    Pass it as ``ShadowMmu(mem, cr3, trace=ShadowRecorder())``. It finds the MMU
    that emits into it (the first event comes from the constructor) or takes one
    from :meth:`bind`. The events are exactly those of a plain recorder;
    :func:`shadow_view` turns the notes into what :class:`ShadowSyncView` draws.
    Guest memory is read through its buffer, so ``mem.accesses`` is not touched.
    """

    def __init__(self, mmu: ShadowMmu | None = None, **meta: Any):
        meta.setdefault("title", "shadow paging")
        super().__init__(**meta)
        self.mmu = mmu
        #: ``mmu.stats()`` after each event (None while no MMU was known)
        self.counters: list[dict[str, int] | None] = []
        self.pages: list[KvmMmuPage] = []             # every shadow page seen, in order (kept alive)
        self._key: dict[int, int] = {}
        self.page_versions: list[list[tuple[int, dict[str, Any]]]] = []
        self.frame_versions: dict[int, list[tuple[int, bytes]]] = {}
        self.frame_maps: dict[int, list[tuple[int, str | None]]] = {}
        self._flooded: set[int] = set()

    def bind(self, mmu: ShadowMmu) -> ShadowRecorder:
        """Note the state of ``mmu`` from now on (needed only if it does not emit first)."""
        self.mmu = mmu
        return self

    def emit(self, actor: str, kind: str, label: str = "", **data: Any):  # type: ignore[override]
        ev = super().emit(actor, kind, label, **data)
        if self.mmu is None:
            # ShadowMmu methods emit as self.trace.emit(...): the caller's self is the MMU
            caller = sys._getframe(1).f_locals.get("self")
            if isinstance(caller, ShadowMmu) and caller.trace is self:
                self.mmu = caller
        self._note(len(self.events) - 1, kind, data)
        return ev

    # --- the notes ------------------------------------------------------------------

    def _key_of(self, sp: KvmMmuPage) -> int:
        k = self._key.get(id(sp))
        if k is None:
            k = self._key[id(sp)] = len(self.pages)
            self.pages.append(sp)
            self.page_versions.append([])
        return k

    def _record(self, sp: KvmMmuPage, k: int, alive: bool) -> dict[str, Any]:
        mmu = self.mmu
        assert mmu is not None
        sptes: dict[int, tuple] = {}
        if alive:
            for i, e in sp.spt.items():
                sptes[i] = ("sp", self._key_of(e)) if isinstance(e, KvmMmuPage) else ("leaf", e.gfn, e.access)
        # the root is the top-level page of CR3 (kvm_mmu_load asks for it; mmu.root is set only
        # after new_shadow_page is emitted); a top-level page is never linked below another
        top = sp.role.level == _TOP and not sp.role.direct
        return {"alive": alive, "unsync": sp.unsync, "flood": sp.write_flooding_count,
                "root": alive and top and sp.gfn == mmu.cr3 >> 12, "top": top,
                "linked": bool(sp.parent_ptes) or top, "flooded": k in self._flooded, "sptes": sptes}

    def _frame(self, gfn: int) -> bytes | None:
        mem = self.mmu.mem if self.mmu is not None else None
        if mem is None or (gfn + 1) * PAGE > mem.size:
            return None
        buf = getattr(mem, "buf", None)
        if buf is not None:
            return bytes(buf[gfn * PAGE:(gfn + 1) * PAGE])
        record = getattr(mem, "record", None)
        try:
            if record is not None:
                mem.record = False
            return mem.read(gfn * PAGE, PAGE)
        finally:
            if record is not None:
                mem.record = record

    def _note(self, i: int, kind: str, data: dict[str, Any]) -> None:
        mmu = self.mmu
        if mmu is None:
            self.counters.append(None)
            return
        self.counters.append(mmu.stats())
        alive = {id(sp) for sp in mmu.mmu_page_hash.values()}
        for sp in mmu.mmu_page_hash.values():
            self._key_of(sp)
        if kind == "flooded":
            # the page detect_write_flooding zapped: the one of this gfn that died last
            dead = [k for k, sp in enumerate(self.pages)
                    if sp.gfn == data.get("gfn") and id(sp) not in alive and sp.has_gptes
                    and k not in self._flooded and self.page_versions[k]]
            if dead:
                self._flooded.add(max(dead, key=lambda k: self.page_versions[k][-1][0]))
        for k, sp in enumerate(self.pages):
            versions = self.page_versions[k]
            last = versions[-1][1] if versions else None
            is_alive = id(sp) in alive
            if last is not None and not last["alive"] and not is_alive and k not in self._flooded:
                continue                                # stays dead
            rec = self._record(sp, k, is_alive)
            if rec != last:
                versions.append((i, rec))
        # the guest frames that hold shadowed tables, and how the guest itself maps them
        frames = {sp.gfn for sp in self.pages if sp.has_gptes}
        maps: dict[int, str | None] = dict.fromkeys(frames)
        for sp in mmu.mmu_page_hash.values():
            for e in sp.spt.values():
                if isinstance(e, Spte) and e.gfn in maps:
                    maps[e.gfn] = "W" if e.writable or maps[e.gfn] == "W" else "RO"
        for gfn in frames:
            raw = self._frame(gfn)
            fv = self.frame_versions.setdefault(gfn, [])
            if raw is not None and (not fv or fv[-1][1] != raw):
                fv.append((i, raw))
            mv = self.frame_maps.setdefault(gfn, [])
            if not mv or mv[-1][1] != maps[gfn]:
                mv.append((i, maps[gfn]))


# --- what the pane draws ----------------------------------------------------------------


def _u64(raw: bytes, index: int) -> int:
    return struct.unpack_from("<Q", raw, 8 * index)[0]


def _dedupe(versions: list[list[Any]]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for v in versions:
        if not out or out[-1][1:] != v[1:]:
            out.append(v)
    return out


def _page_state(sp: KvmMmuPage, rec: dict[str, Any]) -> tuple[str, str]:
    """The state of one shadow page as the pane labels it: (text, css class)."""
    if not rec["alive"]:
        if rec["flooded"]:
            return ("zapped by write flooding: the frame is no longer tracked", "zapped flooded")
        return "zapped", "zapped"
    tags = []
    if rec["root"]:
        tags.append("root (CR3)")
    elif rec.get("top"):
        tags.append("the root of another CR3")
    if not rec["linked"]:
        tags.append("unlinked (still in the hash)")
    if rec["flood"]:
        tags.append(f"write_flooding_count {rec['flood']}")
    tail = (" · " + " · ".join(tags)) if tags else ""
    if sp.role.direct:
        return f"direct: a guest large page as 4 KiB sptes{tail}", "direct"
    if rec["unsync"]:
        return f"unsync · frame writable: PTE stores do not trap{tail}", "unsync"
    if sp.role.level > PG_LEVEL_4K:
        return f"synced · write-protected (page-track: stores are emulated){tail}", "sync"
    return f"synced · write-protected (frame read-only){tail}", "sync"


def _spte_text(rec_spte: tuple | None, pages: list[KvmMmuPage], host_base: int) -> list[Any]:
    if rec_spte is None:
        return [None, None]
    if rec_spte[0] == "sp":
        child = pages[rec_spte[1]]
        what = "direct" if child.role.direct else _TABLE.get(child.role.level, f"L{child.role.level}")
        return [f"→ SP#{rec_spte[1] + 1}", f"{what} @ gfn {child.gfn:#x}"]
    _, gfn, access = rec_spte
    return [f"gfn {gfn:#x} {_rights(access)}", f"HPA {host_base + gfn * PAGE:#x}"]


def _recorded_view(rec: ShadowRecorder) -> dict[str, Any]:
    n = len(rec.events)
    host_base = rec.mmu.host_base if rec.mmu is not None else 0
    counters = list(rec.counters)
    # events before any MMU was known take the first counters noted (a bound recorder)
    first = next((c for c in counters if c is not None), None)
    counters = [c if c is not None else first for c in counters]
    names = [k for k in COUNTERS if first is None or k in first] + \
        [k for k in (first or {}) if k not in COUNTERS]
    values: dict[str, list[list[int]]] = {}
    moved: dict[str, list[list[Any]]] = {}
    for name in names:
        vs: list[list[int]] = []
        for i, c in enumerate(counters):
            v = (c or {}).get(name, 0)
            if not vs or vs[-1][1] != v:
                if vs:
                    moved.setdefault(str(i), []).append([name, v - vs[-1][1]])
                vs.append([i, v])
        values[name] = vs
    born = {k: vs[0][0] for k, vs in enumerate(rec.page_versions) if vs}
    cards: list[dict[str, Any]] = []
    frames: dict[int, list[int]] = {}
    for k, sp in enumerate(rec.pages):
        if k not in born:
            continue
        if sp.has_gptes:
            frames.setdefault(sp.gfn, []).append(k)
        else:
            cards.append({"kind": "direct", "gfn": sp.gfn, "keys": [k]})
    for gfn, keys in frames.items():
        cards.append({"kind": "table", "gfn": gfn, "keys": keys})
    out_cards = []
    for card in cards:
        keys = card["keys"]
        gfn = card["gfn"]
        sps = [rec.pages[k] for k in keys]
        rows: set[int] = set()
        for k in keys:
            for _, r in rec.page_versions[k]:
                rows.update(r["sptes"])
        fv = rec.frame_versions.get(gfn, []) if card["kind"] == "table" else []
        for (_, a), (_, b) in zip(fv, fv[1:], strict=False):
            rows.update(j for j in range(PAGE // 8) if a[8 * j:8 * j + 8] != b[8 * j:8 * j + 8])
        order = sorted(rows)
        sp_cols = []
        for k, sp in zip(keys, sps, strict=True):
            versions = rec.page_versions[k]
            state = _dedupe([[i, *_page_state(sp, r)] for i, r in versions])
            cells = []
            for j in order:
                cells.append(_dedupe([[i, *_spte_text(r["sptes"].get(j), rec.pages, host_base)]
                                      for i, r in versions]))
            level = _TABLE.get(sp.role.level, f"L{sp.role.level}")
            sp_cols.append({"key": k, "name": f"SP#{k + 1}", "born": versions[0][0],
                            "role": f"level {sp.role.level} ({level}) · access {_rights(sp.role.access)}"
                                    + (" · direct" if sp.role.direct else ""),
                            "state": state, "cells": cells})
        gptes = []
        for j in order:
            gptes.append(_dedupe([[i, f"{_u64(raw, j):#x}", paging.entry_flags(_u64(raw, j))]
                                  for i, raw in fv]))
        level = sps[0].role.level
        if card["kind"] == "table":
            title = f"guest {_TABLE.get(level, f'L{level}')} at GPA {gfn * PAGE:#x} (gfn {gfn:#x})"
            maps = [[i, "the guest's own mapping of this frame: "
                     + ({"W": "writable", "RO": "read-only"}.get(m) or "none")]
                    for i, m in rec.frame_maps.get(gfn, [])]
        else:
            size = {1: "2 MiB", 2: "1 GiB"}.get(level, "large")
            title = f"direct shadow page: the guest's {size} page at GPA {gfn * PAGE:#x}"
            maps = []
        out_cards.append({"kind": card["kind"], "gfn": f"{gfn:#x}", "title": title, "level": level,
                          "born": min(c["born"] for c in sp_cols), "rows": order, "gptes": gptes,
                          "sps": sp_cols, "frame": maps})
    out_cards.sort(key=lambda c: (c["born"], c["sps"][0]["key"]))
    return {"recorded": True, "events": n, "counters": names, "values": values, "moved": moved,
            "cards": out_cards}


def _plain_view(t: Trace) -> dict[str, Any]:
    """Counters only: those the ``pf_result`` events carry."""
    names = list(COUNTERS)
    values: dict[str, list[list[int]]] = {k: [[0, 0]] for k in names}
    moved: dict[str, list[list[Any]]] = {}
    for i, ev in enumerate(t.events):
        if ev.kind != "pf_result":
            continue
        for k in names:
            v = ev.data.get(k)
            if isinstance(v, int) and v != values[k][-1][1]:
                moved.setdefault(str(i), []).append([k, v - values[k][-1][1]])
                values[k].append([i, v])
    return {"recorded": False, "events": len(t), "counters": names, "values": values, "moved": moved,
            "cards": []}


def shadow_view(obj: Any) -> tuple[Trace, dict[str, Any]]:
    """The trace and what the ``shadow`` pane draws, from a ShadowMmu, a recorder or a Trace.

    With a :class:`ShadowRecorder` (directly or as ``mmu.trace``): the counters
    after every event, and per card (guest frame or direct page) the guest
    entries and sptes as versions ``[event index, text …]`` that change only
    when the model changed them. Otherwise the counters of the ``pf_result``
    events. ``kinds`` names the kernel function of each event kind.
    """
    if isinstance(obj, ShadowMmu):
        obj = obj.trace
    if isinstance(obj, ShadowRecorder):
        t, view = obj.freeze(), _recorded_view(obj)
    elif isinstance(obj, TraceRecorder):
        t = obj.freeze()
        view = _plain_view(t)
    else:
        t = as_trace(obj)
        old = t.meta.get("shadow_view")
        if old is not None:                            # a ShadowSyncView's own trace, shown again
            meta = {k: v for k, v in dict(t.meta).items() if k != "shadow_view"}
            return Trace(t.events, meta), t.to_dict()["meta"]["shadow_view"]
        view = _plain_view(t)
    kinds = {e.kind for e in t.events}
    view["kinds"] = {k: {"fn": fn, "note": note} for k, (fn, note) in KERNEL.items() if k in kinds}
    return t, view


class ShadowSyncView(RecordedViewPlayer):
    """Step through a shadow-MMU run: guest tables next to their shadow pages, and the counters.

    ``ShadowSyncView(mmu_or_trace, step=0, speed=4.0)``: a
    :class:`~vbook.models.shadow.ShadowMmu` (best recorded with
    ``trace=ShadowRecorder()``), the recorder, or a Trace. The view data is in
    ``trace["meta"]["shadow_view"]`` (:func:`shadow_view`).
    """

    _esm = esm_with(PANE_JS)
    _css = CSS.read_text(encoding="utf-8") + "\n" + PANE_CSS.read_text(encoding="utf-8")
    panes = traitlets.Unicode("shadow events").tag(sync=True)
    view_key = "shadow_view"

    @classmethod
    def _view_of(cls, obj: Any) -> tuple[Trace, dict[str, Any]]:
        return shadow_view(obj)

    def state_at(self, step: int) -> dict[str, Any]:
        """The view at event ``step`` as plain data: ``counters`` and, per card title, each
        shadow page's state and sptes (``{index: text}``) and the guest entries — what the
        browser shows there, for tests and for reading in a notebook."""
        view = self.view

        def at(versions: list[list[Any]]) -> list[Any] | None:
            last = None
            for v in versions:
                if v[0] > step:
                    break
                last = v
            return last

        counters = {k: (at(vs) or [0, 0])[1] for k, vs in view.get("values", {}).items()}
        cards = {}
        for c in view.get("cards", []):
            if c["born"] > step:
                continue
            sps = {}
            for sp in c["sps"]:
                st = at(sp["state"])
                if st is None:
                    continue
                sptes = {}
                for j, cell in zip(c["rows"], sp["cells"], strict=True):
                    v = at(cell)
                    if v is not None and v[1] is not None:
                        sptes[j] = v[1]
                sps[sp["name"]] = {"state": st[1], "cls": st[2], "sptes": sptes}
            gptes = {}
            for j, cell in zip(c["rows"], c["gptes"], strict=True):
                v = at(cell)
                if v is not None:
                    gptes[j] = v[1]
            cards[c["title"]] = {"sps": sps, "gptes": gptes}
        return {"counters": counters, "cards": cards}

    def __repr__(self) -> str:
        events = self.trace.get("events", [])
        exits = sum(1 for e in events if e.get("actor") == "kvm" and e.get("kind") == "vmexit")
        pages = sum(1 for e in events if e.get("kind") == "new_shadow_page")
        title = self.trace.get("meta", {}).get("title")
        head = f"trace={title!r}, " if title else ""
        tail = "" if self.view.get("recorded") else ", counters only"
        return (f"ShadowSyncView({head}{len(events)} events, {exits} #PF exit{'s' * (exits != 1)}, "
                f"{pages} shadow page{'s' * (pages != 1)}{tail})")


def show_shadow(mmu: Any, *, step: int = 0, speed: float = 4.0) -> ShadowSyncView:
    """The usual way to show a shadow-MMU run: ``show_shadow(mmu)`` after
    ``mmu = ShadowMmu(mem, cr3, trace=ShadowRecorder())`` and its accesses."""
    return ShadowSyncView(mmu, step=step, speed=speed)


__all__ = ["COUNTERS", "KERNEL", "ShadowRecorder", "ShadowSyncView", "shadow_view", "show_shadow"]
