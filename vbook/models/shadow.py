"""Shadow paging: KVM's MMU with ``tdp_enabled == false`` (Linux 6.1, arch/x86/kvm/mmu/).

Without EPT/NPT the CPU's CR3 points at tables KVM builds, the *shadow page
tables*, which map GVA -> host PA directly. KVM fills them lazily from the
guest's own tables (GVA -> GPA) and the memslot (GPA -> HPA):

* a guest access the shadow tables do not allow is a #PF VM exit:
  ``kvm_mmu_page_fault`` -> ``kvm_mmu_do_page_fault`` (``pf_taken``) ->
  ``FNAME(page_fault)`` (mmu/paging_tmpl.h) walks the guest tables in software
  (``FNAME(walk_addr)``, here :func:`vbook.models.paging.walk` with ``set_ad``); a
  guest fault is re-injected (``kvm_inject_emulated_page_fault``, ``pf_guest``);
  otherwise ``FNAME(fetch)`` finds or creates one ``struct kvm_mmu_page`` per
  guest table on the path (``kvm_mmu_get_child_sp`` -> ``kvm_mmu_find_shadow_page``
  / ``kvm_mmu_alloc_shadow_page``, ``mmu_cache_miss``) and ``mmu_set_spte``
  installs the leaf (``pf_fixed``, ``pages_4k``);
* every guest frame that holds a shadowed table is write-protected
  (``account_shadowed``): upper levels permanently, through the page-track
  machinery; last-level tables by making their sptes read-only
  (``kvm_mmu_slot_gfn_write_protect``). A write to a tracked frame is emulated
  (``page_fault_handle_page_track`` -> ``RET_PF_EMULATE``, ``pf_emulate``) and the
  page-track notifier ``kvm_mmu_pte_write`` (``mmu_pte_write``) zaps the shadow
  entry written (``mmu_pde_zapped`` for a non-leaf one);
* ``detect_write_flooding``: each emulated write to a non-leaf shadow page bumps
  its ``write_flooding_count``; at 3 the page is zapped (``mmu_flooded``,
  ``mmu_shadow_zapped``) and its frame is no longer tracked. A fault or shadow
  walk *through* the page resets the count (``clear_sp_write_flooding_count`` in
  ``FNAME(fetch)``, ``shadow_page_table_clear_flood``, ``kvm_mmu_find_shadow_page``),
  so a guest that writes the page directory it runs on is never flooded;
* a write fault on a last-level table's frame is not emulated:
  ``make_spte`` -> ``mmu_try_to_unsync_pages`` -> ``kvm_unsync_page`` marks the
  shadow page unsync (``mmu_unsync``) and maps the frame writable, so later PTE
  writes do not trap. The page is re-synchronised at the guest's TLB-flush
  points: INVLPG (``FNAME(invlpg)``: that one spte) and a CR3 load
  (``kvm_mmu_new_pgd`` / ``kvm_mmu_load`` -> ``kvm_mmu_sync_roots`` ->
  ``mmu_sync_children`` -> ``kvm_sync_page`` -> ``FNAME(sync_page)``).

Other rules modelled as 6.1 has them: ``FNAME(protect_clean_gpte)`` (a read
fault on a clean gpte maps the page read-only, so the first write faults again
to set D); ``FNAME(pte_prefetch)`` (after a fault in a last-level shadow page the
other gptes of its aligned group of ``PTE_PREFETCH_NUM`` = 8 are mapped, in
order, until the first one that is not present or not accessed); the shadow
page role's ``access`` (the rights of the upper levels, so the same guest table
reached with different rights gets two shadow pages); a guest 2 MiB / 1 GiB page
is shadowed by a *direct* shadow page of 4 KiB sptes (the host backs memory with
4 KiB pages); ``mmu_pte_write_fetch_gpte`` and ``detect_write_misaligned``.

Calibration (tests/test_shadow.py, against the counters measured on the PVM host in
reference/machine.md): a CPL-3 guest on fresh identity-mapped 4 KiB tables that
fetches from its code page and then writes N fresh data pages takes N+1 faults,
all ``pf_fixed``, and ``pages_4k`` N+1 (the +1 is the code page; prefetch maps no
neighbour because their gptes still have A = 0), and none on a second pass.
Rewriting the PTE of a page whose last-level table is not shadowed yet, then
touching the page: the first write maps the table's frame writable, the touch
shadows the table and write-protects it (K = 1: ``pf_fixed`` 3, no unsync); the
second write unsyncs it (``mmu_unsync`` 1) and nothing later traps. Writing the
page directory the writer runs on: every write is emulated and zaps one PDE
(``pf_emulate`` = ``mmu_pte_write`` = ``mmu_pde_zapped`` = K), its flood count
being reset by each fault on the path; a directory off the writer's path is
flooded on the third write (``mmu_flooded`` 1, ``mmu_shadow_zapped`` 1) and its
frame, no longer tracked, is mapped writable by one more ``pf_fixed`` fault.

Left out (the real rules are larger): 32-bit / PAE / 5-level guests and
quadrants; CR0.WP = 0 (the supervisor-write trick of ``FNAME(page_fault)``);
reserved-bit gptes in ``FNAME(sync_page)`` / prefetch (only P and A are checked
there); MMIO (a GPA outside memory is reported as an ``mmio`` outcome and no MMIO
spte is cached); ``is_self_change_mapping`` and the emulator's retry/unprotect
paths (``retry_instruction`` never applies to ``mov``, which carries
``PageTable``); the ``unsync_children`` bitmaps (the model finds unsync pages by
walking the tree); the three ``prev_roots`` (every root stays in the hash and is
found again); page reclaim (``mmu_recycled``), TLB flushes, A/D bits in sptes,
host huge pages (``pages_2m``), ``mmu_invalidate_seq`` races, several vCPUs.

Constants: ``ACC_*`` arch/x86/kvm/mmu/spte.h, ``PTE_PREFETCH_NUM`` mmu.c,
``PG_LEVEL_4K`` arch/x86/include/asm/pgtable_types.h (Linux 6.1, 7c210bc38).
Pure, stdlib only, deterministic, never prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from vbook.errors import PagingError
from vbook.memory import GuestMemory
from vbook.models.paging import PAGE_SIZE, PteFlags, Walk, walk
from vbook.trace import TraceRecorder

__all__ = [
    "ACC_EXEC_MASK", "ACC_WRITE_MASK", "ACC_USER_MASK", "ACC_ALL", "PG_LEVEL_4K", "PTE_PREFETCH_NUM",
    "WRITE_FLOOD_THRESHOLD", "Role", "Spte", "KvmMmuPage", "VcpuStat", "VmStat", "Outcome",
    "ShadowMmu", "ShadowError",
]

ACC_EXEC_MASK = 1
ACC_WRITE_MASK = 2      # == PT_WRITABLE_MASK
ACC_USER_MASK = 4       # == PT_USER_MASK
ACC_ALL = ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK
PG_LEVEL_4K = 1
PTE_PREFETCH_NUM = 8
#: ``detect_write_flooding``: ``atomic_read(&sp->write_flooding_count) >= 3``.
WRITE_FLOOD_THRESHOLD = 3
_ADDR_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)
_LEVELS = 4


class ShadowError(PagingError):
    """Bad input to the shadow MMU model (an argument, not a guest fault)."""


@dataclass(frozen=True)
class Role:
    """``union kvm_mmu_page_role``, the parts modelled: level, access, direct."""

    level: int
    access: int = ACC_ALL
    direct: bool = False


@dataclass(frozen=True)
class Spte:
    """A present last-level spte: the GVA's frame (gfn), the host address and the rights."""

    gfn: int
    hpa: int
    access: int          # ACC_* actually granted: W removed when write-protected or clean

    @property
    def writable(self) -> bool:
        return bool(self.access & ACC_WRITE_MASK)

    def to_dict(self) -> dict[str, Any]:
        return {"gfn": self.gfn, "hpa": self.hpa, "access": self.access}


@dataclass(eq=False)
class KvmMmuPage:
    """``struct kvm_mmu_page`` (mmu_internal.h): one shadow table of 512 sptes.

    ``gfn`` is the guest table it shadows (for a direct page: the first gfn of
    the guest large page). ``spt`` maps index -> :class:`Spte` (leaf) or the child
    :class:`KvmMmuPage` (non-leaf); a missing index is a non-present spte.
    ``parent_ptes`` are the (parent, index) entries that point here.
    """

    gfn: int
    role: Role
    spt: dict[int, Any] = field(default_factory=dict)
    unsync: bool = False
    write_flooding_count: int = 0
    root_count: int = 0
    parent_ptes: list[tuple[KvmMmuPage, int]] = field(default_factory=list)

    @property
    def has_gptes(self) -> bool:
        """``sp_has_gptes``: an indirect page shadows a guest table."""
        return not self.role.direct

    def __repr__(self) -> str:
        flags = "".join([" direct" if self.role.direct else "", " unsync" if self.unsync else "",
                         f" root={self.root_count}" if self.root_count else ""])
        return (f"KvmMmuPage(gfn={self.gfn:#x}, level={self.role.level}, access={self.role.access}, "
                f"sptes={len(self.spt)}, write_flooding_count={self.write_flooding_count}{flags})")


@dataclass
class VcpuStat:
    """The ``struct kvm_vcpu_stat`` counters this model moves (x86.c ``kvm_vcpu_stats_desc``)."""

    pf_taken: int = 0
    pf_fixed: int = 0
    pf_emulate: int = 0
    pf_spurious: int = 0
    pf_guest: int = 0
    invlpg: int = 0


@dataclass
class VmStat:
    """The ``struct kvm_vm_stat`` counters this model moves (x86.c ``kvm_vm_stats_desc``)."""

    mmu_shadow_zapped: int = 0
    mmu_pte_write: int = 0
    mmu_pde_zapped: int = 0
    mmu_flooded: int = 0
    mmu_unsync: int = 0
    mmu_cache_miss: int = 0
    pages_4k: int = 0


def _stats(obj: Any) -> dict[str, int]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


@dataclass(frozen=True)
class Outcome:
    """What one guest access did: ``exits`` #PF VM exits and the last ``RET_PF_*`` result.

    ``ret`` is None (no exit: the shadow tables allowed it), "fixed", "spurious",
    "emulate" (KVM's emulator did the access), "guest_fault" (the #PF was
    reflected into the guest) or "mmio" (GPA outside memory).
    """

    gva: int
    access: str
    exits: int
    ret: str | None
    gpa: int | None

    def __repr__(self) -> str:
        gpa = "None" if self.gpa is None else f"{self.gpa:#x}"
        return f"Outcome(gva={self.gva:#x}, {self.access}, exits={self.exits}, ret={self.ret}, gpa={gpa})"


def _gpte_access(entry: int) -> int:
    """``FNAME(gpte_access)``: W from R/W, U from U/S, X unless NX."""
    acc = ACC_EXEC_MASK if not entry & PteFlags.NX else 0
    if entry & PteFlags.RW:
        acc |= ACC_WRITE_MASK
    if entry & PteFlags.US:
        acc |= ACC_USER_MASK
    return acc


def _protect_clean_gpte(access: int, gpte: int) -> int:
    """``FNAME(protect_clean_gpte)``: no write access through a clean (D = 0) gpte."""
    return access if gpte & PteFlags.D else access & ~ACC_WRITE_MASK


def _index(gva: int, level: int) -> int:
    return (gva >> (12 + 9 * (level - 1))) & 0x1FF


def _need(access: str, user: bool) -> int:
    need = {"r": 0, "w": ACC_WRITE_MASK, "x": ACC_EXEC_MASK}[access]
    return need | (ACC_USER_MASK if user else 0)


class ShadowMmu:
    """One vCPU's shadow MMU over guest tables in ``mem`` (4-level, long mode).

    ``host_base`` is the memslot's host address: gfn g is backed by
    ``host_base + g * 4096`` (one memslot covering all of ``mem``). The
    constructor does what the first KVM_RUN does: ``kvm_mmu_load`` for ``cr3``.
    """

    def __init__(self, mem: GuestMemory, cr3: int, *, host_base: int = 0x7F00_0000_0000,
                 trace: TraceRecorder | None = None):
        if not isinstance(host_base, int) or host_base < 0 or host_base % PAGE_SIZE:
            raise ShadowError(f"host_base must be a page-aligned address, got {host_base!r}")
        self.mem, self.host_base = mem, host_base
        self.trace = trace if trace is not None else TraceRecorder(title="shadow paging")
        self.stat, self.vm_stat = VcpuStat(), VmStat()
        #: ``kvm->arch.mmu_page_hash``: (gfn, role) -> shadow page.
        self.mmu_page_hash: dict[tuple[int, Role], KvmMmuPage] = {}
        #: ``KVM_PAGE_TRACK_WRITE`` counts per gfn (upper-level guest tables).
        self.page_track: dict[int, int] = {}
        self.cr3 = 0
        self.root: KvmMmuPage | None = None
        self.load_cr3(cr3, _first=True)

    def __repr__(self) -> str:
        return (f"ShadowMmu(cr3={self.cr3:#x}, shadow_pages={len(self.mmu_page_hash)}, "
                f"pf_fixed={self.stat.pf_fixed}, pf_emulate={self.stat.pf_emulate}, "
                f"mmu_unsync={self.vm_stat.mmu_unsync})")

    # --- reading the state ------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Every counter, vCPU and VM, under the kernel's names."""
        return {**_stats(self.stat), **_stats(self.vm_stat)}

    @property
    def write_protected(self) -> set[int]:
        """Gfns holding a shadowed guest table (tracked, or shadowed by a sync leaf page)."""
        return {sp.gfn for sp in self.mmu_page_hash.values() if sp.has_gptes and not sp.unsync}

    def shadow_walk(self, gva: int) -> list[tuple[KvmMmuPage, int]]:
        """``for_each_shadow_entry``: the (shadow page, index) visited for ``gva``, root first."""
        path: list[tuple[KvmMmuPage, int]] = []
        sp = self.root
        while sp is not None:
            i = _index(gva, sp.role.level)
            path.append((sp, i))
            nxt = sp.spt.get(i)
            sp = nxt if isinstance(nxt, KvmMmuPage) else None
        return path

    def lookup(self, gva: int) -> Spte | None:
        """The present leaf spte the hardware would use for ``gva``, or None."""
        sp, i = self.shadow_walk(gva)[-1]
        e = sp.spt.get(i)
        return e if isinstance(e, Spte) else None

    def leaf_sptes(self) -> list[tuple[int, KvmMmuPage, Spte]]:
        """(gva, shadow page, spte) for every leaf reachable from the current root."""
        out: list[tuple[int, KvmMmuPage, Spte]] = []

        def rec(sp: KvmMmuPage, base: int) -> None:
            for i, e in sorted(sp.spt.items()):
                gva = base | (i << (12 + 9 * (sp.role.level - 1)))
                if isinstance(e, KvmMmuPage):
                    rec(e, gva)
                else:
                    out.append((gva, sp, e))
        if self.root is not None:
            rec(self.root, 0)
        return out

    # --- events -------------------------------------------------------------------

    def access(self, gva: int, access: str = "r", user: bool = False) -> Outcome:
        """One guest access (no data moves): retried after each exit, as the CPU does."""
        return self._access(gva, access, user, None)

    def write(self, gva: int, value: int, size: int = 8, user: bool = False) -> Outcome:
        """A guest ``mov`` of ``size`` bytes to ``gva``: data lands in ``mem``.

        Without an exit (or after a fixed fault) the CPU writes through the
        spte. An emulated write goes through ``emulator_write_phys``: the bytes
        are written, then the page-track notifier :meth:`kvm_mmu_pte_write` runs.
        """
        if size not in (1, 2, 4, 8) or not 0 <= value < 1 << (8 * size):
            raise ShadowError(f"write of {value!r} in {size!r} byte(s): size must be 1/2/4/8 and fit")
        if (gva & (PAGE_SIZE - 1)) + size > PAGE_SIZE:
            raise ShadowError(f"write at {gva:#x} of {size} bytes crosses a page (not modelled)")
        return self._access(gva, "w", user, (value, size))

    def _access(self, gva: int, access: str, user: bool, data: tuple[int, int] | None) -> Outcome:
        if access not in ("r", "w", "x"):
            raise ShadowError(f"access must be 'r', 'w' or 'x', got {access!r}")
        exits, ret = 0, None
        for _ in range(4):           # a fault is fixed in one exit; leave room for a retry
            if self.root is None:    # the root was zapped: KVM_REQ_MMU_FREE_OBSOLETE_ROOTS
                self.kvm_mmu_load()
            spte = self.lookup(gva)
            if spte is not None and not _need(access, user) & ~spte.access:
                gpa = spte.gfn * PAGE_SIZE | (gva & (PAGE_SIZE - 1))
                if data is not None:
                    self.mem.write(gpa, data[0].to_bytes(data[1], "little"))
                self.trace.emit("guest", "access", f"{access} {gva:#x} -> gpa {gpa:#x} (no exit)",
                                gva=gva, access=access, user=user, gpa=gpa)
                return Outcome(gva, access, exits, ret, gpa)
            exits += 1
            error_code = (1 if spte is not None else 0) | (2 if access == "w" else 0) | (4 if user else 0)
            ret, gpa = self.kvm_mmu_page_fault(gva, access, user, error_code, data)
            if ret in ("emulate", "guest_fault", "mmio"):
                return Outcome(gva, access, exits, ret, gpa)
        raise ShadowError(f"access {access} {gva:#x} still faults after {exits} exits (model bug)")

    def kvm_mmu_page_fault(self, gva: int, access: str, user: bool, error_code: int,
                           data: tuple[int, int] | None = None) -> tuple[str, int | None]:
        """``kvm_mmu_page_fault`` -> ``kvm_mmu_do_page_fault`` -> ``FNAME(page_fault)``.

        Returns (ret, gpa). Counts ``pf_taken`` and then ``pf_fixed`` /
        ``pf_emulate`` / ``pf_spurious`` by the result, as ``kvm_mmu_do_page_fault`` does.
        """
        self.stat.pf_taken += 1
        self.trace.emit("kvm", "vmexit", f"#PF exit at {gva:#x} error_code {error_code:#x}",
                        gva=gva, error_code=error_code, access=access, user=user)
        ret, gpa = self._fname_page_fault(gva, access, user, error_code, data)
        if ret == "fixed":
            self.stat.pf_fixed += 1
        elif ret in ("emulate", "mmio"):
            self.stat.pf_emulate += 1
        elif ret == "spurious":
            self.stat.pf_spurious += 1
        self.trace.emit("kvm", "pf_result", f"RET_PF_{ret.upper()}", gva=gva, ret=ret,
                        **self.stats())
        return ret, gpa

    def _fname_page_fault(self, gva: int, access: str, user: bool, error_code: int,
                          data: tuple[int, int] | None) -> tuple[str, int | None]:
        w: Walk = walk(self.mem, self.cr3, gva, access, user, set_ad=True)   # FNAME(walk_addr)
        if w.fault is not None:
            self.stat.pf_guest += 1                       # kvm_inject_page_fault
            self.trace.emit("kvm", "inject_pf", f"guest #PF {int(w.fault.error_code):#x} at {gva:#x}",
                            gva=gva, error_code=int(w.fault.error_code), reason=w.fault.reason)
            return "guest_fault", None
        gpa = w.address
        assert gpa is not None
        gfn = gpa >> 12
        if gpa >= self.mem.size:                          # no memslot: MMIO (not modelled further)
            self.trace.emit("kvm", "mmio", f"gpa {gpa:#x} has no memslot", gva=gva, gpa=gpa)
            return "mmio", gpa
        write = access == "w"
        if error_code & 1 and write and self.page_track.get(gfn):   # page_fault_handle_page_track
            self.shadow_page_table_clear_flood(gva)
            self._emulate_write(gpa, data)
            return "emulate", gpa
        return self._fname_fetch(gva, w, write, user, data), gpa

    def _fname_fetch(self, gva: int, w: Walk, write: bool, user: bool,
                     data: tuple[int, int] | None) -> str:
        """``FNAME(fetch)``: link a shadow page per guest table, then ``mmu_set_spte``."""
        assert self.root is not None and w.address is not None
        steps = w.steps
        # pt_access[k]: rights of the entries above the table at level steps[k].level.
        pt_access, acc = [], ACC_ALL
        for s in steps:
            pt_access.append(acc)
            acc &= _gpte_access(s.entry)
        leaf = steps[-1]
        pte_access = acc if write else _protect_clean_gpte(acc, leaf.entry)
        sp = self.root
        for k in range(1, len(steps)):                    # tables below the root, down to gw->level
            self._clear_flood(sp)
            i = _index(gva, sp.role.level)
            child = sp.spt.get(i)
            if not isinstance(child, KvmMmuPage):        # kvm_mmu_get_child_sp
                table_gfn = (steps[k - 1].entry & _ADDR_MASK) >> 12
                child = self.kvm_mmu_get_shadow_page(table_gfn, Role(steps[k].level, pt_access[k]))
                self._link_shadow_page(sp, i, child)
            sp = child
        while sp.role.level > PG_LEVEL_4K:                # a guest large page: direct pages below
            self._clear_flood(sp)
            i = _index(gva, sp.role.level)
            child = sp.spt.get(i)
            if isinstance(child, KvmMmuPage) and child.role.access != pte_access:
                self.mmu_page_zap_pte(sp, i)              # validate_direct_spte
                child = None
            if not isinstance(child, KvmMmuPage):
                base_gfn = (w.address >> 12) & ~((1 << (9 * (sp.role.level - 1))) - 1)
                child = self.kvm_mmu_get_shadow_page(base_gfn, Role(sp.role.level - 1, pte_access, True))
                self._link_shadow_page(sp, i, child)
            sp = child
        self._clear_flood(sp)
        i = _index(gva, PG_LEVEL_4K)
        gfn = w.address >> 12
        ret = self.mmu_set_spte(sp, i, pte_access, gfn, write_fault=write, prefetch=False)
        if ret != "spurious":
            self._pte_prefetch(sp, i)
        if ret == "emulate":                              # back in kvm_mmu_page_fault: emulate
            self._emulate_write(w.address, data)
        return ret

    def _emulate_write(self, gpa: int, data: tuple[int, int] | None) -> None:
        """``emulator_write_phys``: write the bytes, then ``kvm_page_track_write``."""
        value, size = data if data is not None else (None, 8)
        if value is not None:
            self.mem.write(gpa, value.to_bytes(size, "little"))
        self.trace.emit("kvm", "emulate", f"emulated write of {size} bytes at gpa {gpa:#x}",
                        gpa=gpa, size=size)
        self.kvm_mmu_pte_write(gpa, size)

    # --- shadow pages ---------------------------------------------------------------

    def kvm_mmu_get_shadow_page(self, gfn: int, role: Role) -> KvmMmuPage:
        """``__kvm_mmu_get_shadow_page``: find (syncing an unsync one) or allocate + account."""
        for (g, r), sp in list(self.mmu_page_hash.items()):       # kvm_mmu_find_shadow_page
            if g != gfn:
                continue
            if r != role:
                if role.level > PG_LEVEL_4K and sp.unsync:
                    self.kvm_mmu_prepare_zap_page(sp)
                continue
            if not sp.role.direct:
                if sp.unsync:
                    self.fname_sync_page(sp)           # kvm_sync_page; stays unsync
                self._clear_flood(sp)
            return sp
        self.vm_stat.mmu_cache_miss += 1
        sp = KvmMmuPage(gfn, role)
        self.mmu_page_hash[(gfn, role)] = sp
        self.trace.emit("kvm", "new_shadow_page", f"shadow page for gfn {gfn:#x} level {role.level}",
                        gfn=gfn, level=role.level, access=role.access, direct=role.direct)
        if sp.has_gptes:
            self.account_shadowed(sp)
        return sp

    def account_shadowed(self, sp: KvmMmuPage) -> None:
        """``account_shadowed``: track upper-level frames; write-protect the frame either way."""
        if sp.role.level > PG_LEVEL_4K:
            self.page_track[sp.gfn] = self.page_track.get(sp.gfn, 0) + 1
        self.kvm_mmu_slot_gfn_write_protect(sp.gfn)

    def kvm_mmu_slot_gfn_write_protect(self, gfn: int) -> bool:
        """Clear W in every spte mapping ``gfn`` (the rmap walk of ``rmap_write_protect``)."""
        hit = False
        for sp in list(self.mmu_page_hash.values()):
            for i, e in sp.spt.items():
                if isinstance(e, Spte) and e.gfn == gfn and e.writable:
                    sp.spt[i] = Spte(e.gfn, e.hpa, e.access & ~ACC_WRITE_MASK)
                    hit = True
        if hit:
            self.trace.emit("kvm", "write_protect", f"gfn {gfn:#x} mapped read-only", gfn=gfn)
        return hit

    def _link_shadow_page(self, parent: KvmMmuPage, i: int, child: KvmMmuPage) -> None:
        parent.spt[i] = child
        child.parent_ptes.append((parent, i))

    def _clear_flood(self, sp: KvmMmuPage) -> None:
        sp.write_flooding_count = 0                       # __clear_sp_write_flooding_count

    def shadow_page_table_clear_flood(self, gva: int) -> None:
        """``shadow_page_table_clear_flood``: reset the count of every page on ``gva``'s path."""
        for sp, _ in self.shadow_walk(gva):
            self._clear_flood(sp)

    def _gpte_addr(self, sp: KvmMmuPage, i: int) -> int:
        return sp.gfn * PAGE_SIZE + 8 * i

    # --- sptes ------------------------------------------------------------------------

    def mmu_set_spte(self, sp: KvmMmuPage, i: int, pte_access: int, gfn: int, *, write_fault: bool,
                     prefetch: bool, can_unsync: bool = True) -> str:
        """``mmu_set_spte`` + ``make_spte``: returns "fixed", "spurious" or "emulate"."""
        old = sp.spt.get(i)
        assert not isinstance(old, KvmMmuPage), "a 4 KiB shadow level holds only leaves"
        access, wrprot = pte_access, False
        if access & ACC_WRITE_MASK and not (isinstance(old, Spte) and old.writable):
            if self.mmu_try_to_unsync_pages(gfn, can_unsync, prefetch):
                wrprot, access = True, access & ~ACC_WRITE_MASK
        new = Spte(gfn, self.host_base + gfn * PAGE_SIZE, access)
        ret = "spurious" if new == old else "fixed"
        if isinstance(old, Spte) and old.gfn != gfn:
            self._drop_spte(sp, i)
            old = None
        sp.spt[i] = new
        if old is None:
            self.vm_stat.pages_4k += 1                    # rmap_add -> kvm_update_page_stats
        if wrprot and write_fault:
            ret = "emulate"
        self.trace.emit("kvm", "set_spte", f"spte[{i}] of gfn {sp.gfn:#x} -> gfn {gfn:#x} "
                        f"{'W' if new.writable else 'RO'}", sp_gfn=sp.gfn, index=i, gfn=gfn,
                        access=access, prefetch=prefetch)
        return ret

    def mmu_try_to_unsync_pages(self, gfn: int, can_unsync: bool, prefetch: bool) -> bool:
        """``mmu_try_to_unsync_pages``: True (-EPERM/-EEXIST) if the spte must stay read-only."""
        if self.page_track.get(gfn):
            return True
        for sp in [s for s in self.mmu_page_hash.values() if s.gfn == gfn and s.has_gptes]:
            if not can_unsync:
                return True
            if sp.unsync:
                continue
            if prefetch:
                return True
            self.kvm_unsync_page(sp)
        return False

    def kvm_unsync_page(self, sp: KvmMmuPage) -> None:
        """``kvm_unsync_page``: the leaf table's frame becomes writable; ``mmu_unsync``++."""
        assert sp.role.level == PG_LEVEL_4K
        self.vm_stat.mmu_unsync += 1
        sp.unsync = True
        self.trace.emit("kvm", "unsync", f"shadow page of gfn {sp.gfn:#x} unsync", gfn=sp.gfn)

    def _drop_spte(self, sp: KvmMmuPage, i: int) -> None:
        e = sp.spt.pop(i, None)
        if isinstance(e, Spte):
            self.vm_stat.pages_4k -= 1

    def mmu_page_zap_pte(self, sp: KvmMmuPage, i: int) -> None:
        """``mmu_page_zap_pte``: drop a leaf, or unlink a child page (which stays in the hash)."""
        e = sp.spt.get(i)
        if isinstance(e, KvmMmuPage):
            del sp.spt[i]
            e.parent_ptes.remove((sp, i))
        elif e is not None:
            self._drop_spte(sp, i)

    def _pte_prefetch(self, sp: KvmMmuPage, fault_i: int) -> None:
        """``FNAME(pte_prefetch)`` (indirect 4 KiB pages only here; direct ones are skipped)."""
        if sp.role.direct:
            return                                        # __direct_pte_prefetch: not modelled
        start = fault_i & ~(PTE_PREFETCH_NUM - 1)
        for i in range(start, start + PTE_PREFETCH_NUM):
            if i == fault_i or i in sp.spt:
                continue
            if not self._prefetch_gpte(sp, i, self.mem.read_u64(self._gpte_addr(sp, i))):
                break

    def _prefetch_gpte(self, sp: KvmMmuPage, i: int, gpte: int) -> bool:
        """``FNAME(prefetch_gpte)``: map a present, accessed gpte without a fault."""
        if not gpte & PteFlags.P or not gpte & PteFlags.A:      # FNAME(prefetch_invalid_gpte)
            self._drop_spte(sp, i)
            return False
        gfn = (gpte & _ADDR_MASK) >> 12
        if gfn * PAGE_SIZE >= self.mem.size:
            return False
        access = _protect_clean_gpte(sp.role.access & _gpte_access(gpte), gpte)
        self.mmu_set_spte(sp, i, access, gfn, write_fault=False, prefetch=True)
        return True

    # --- writes to guest page tables ------------------------------------------------

    def kvm_mmu_pte_write(self, gpa: int, nbytes: int) -> None:
        """``kvm_mmu_pte_write``, the page-track write notifier, after an emulated write."""
        if not any(sp.has_gptes for sp in self.mmu_page_hash.values()):
            return                                        # no indirect_shadow_pages
        gentry = 0
        if nbytes == 4:                                   # mmu_pte_write_fetch_gpte (is_pae)
            gpa, nbytes = gpa & ~7, 8
        if nbytes == 8:
            gentry = self.mem.read_u64(gpa)
        self.vm_stat.mmu_pte_write += 1
        gfn = gpa >> 12
        for sp in [s for s in self.mmu_page_hash.values() if s.gfn == gfn and s.has_gptes]:
            if self.mmu_page_hash.get((sp.gfn, sp.role)) is not sp:
                continue                                  # zapped by an earlier iteration
            if self._detect_write_misaligned(gpa, nbytes) or self._detect_write_flooding(sp):
                self.kvm_mmu_prepare_zap_page(sp)
                self.vm_stat.mmu_flooded += 1
                self.trace.emit("kvm", "flooded", f"shadow page of gfn {gfn:#x} zapped (flooded)", gfn=gfn)
                continue
            i = (gpa & (PAGE_SIZE - 1)) // 8               # get_written_sptes
            self.mmu_page_zap_pte(sp, i)
            if gentry and sp.role.level != PG_LEVEL_4K:
                self.vm_stat.mmu_pde_zapped += 1
            self.trace.emit("kvm", "pte_write", f"zapped spte[{i}] of gfn {gfn:#x} level {sp.role.level}",
                            gfn=gfn, index=i, level=sp.role.level, gentry=gentry)

    @staticmethod
    def _detect_write_misaligned(gpa: int, nbytes: int) -> bool:
        offset = gpa & (PAGE_SIZE - 1)
        if not offset & 7 and nbytes == 1:
            return False
        return bool((offset ^ (offset + nbytes - 1)) & ~7) or nbytes < 4

    def _detect_write_flooding(self, sp: KvmMmuPage) -> bool:
        if sp.role.level == PG_LEVEL_4K:                  # it can become unsync instead
            return False
        sp.write_flooding_count += 1
        return sp.write_flooding_count >= WRITE_FLOOD_THRESHOLD

    def kvm_mmu_prepare_zap_page(self, sp: KvmMmuPage) -> None:
        """``__kvm_mmu_prepare_zap_page``: unsync children, children, parents, then the page."""
        if (sp.gfn, sp.role) not in self.mmu_page_hash:
            return
        self.vm_stat.mmu_shadow_zapped += 1
        if sp.role.level > PG_LEVEL_4K:                   # mmu_zap_unsync_children
            for child in self._unsync_below(sp):
                self.kvm_mmu_prepare_zap_page(child)
        for i in list(sp.spt):                            # kvm_mmu_page_unlink_children
            self.mmu_page_zap_pte(sp, i)
        for parent, i in list(sp.parent_ptes):            # kvm_mmu_unlink_parents
            self.mmu_page_zap_pte(parent, i)
        if sp.has_gptes and sp.role.level > PG_LEVEL_4K:  # unaccount_shadowed
            self.page_track[sp.gfn] -= 1
            if not self.page_track[sp.gfn]:
                del self.page_track[sp.gfn]
        if sp.unsync:                                     # kvm_unlink_unsync_page
            sp.unsync = False
            self.vm_stat.mmu_unsync -= 1
        del self.mmu_page_hash[(sp.gfn, sp.role)]
        if sp is self.root:                               # role.invalid; reloaded before next entry
            self.root = None
        self.trace.emit("kvm", "zap_page", f"zapped shadow page of gfn {sp.gfn:#x} level {sp.role.level}",
                        gfn=sp.gfn, level=sp.role.level)

    def _unsync_below(self, sp: KvmMmuPage) -> list[KvmMmuPage]:
        out: list[KvmMmuPage] = []
        for e in sp.spt.values():
            if isinstance(e, KvmMmuPage):
                if e.unsync:
                    out.append(e)
                elif e.role.level > PG_LEVEL_4K:
                    out.extend(self._unsync_below(e))
        return list(dict.fromkeys(out))

    # --- synchronisation: INVLPG, CR3 ----------------------------------------------

    def fname_sync_page(self, sp: KvmMmuPage) -> None:
        """``FNAME(sync_page)``: re-read each gpte behind a present spte; drop or refresh it."""
        for i in sorted(sp.spt):
            gpte = self.mem.read_u64(self._gpte_addr(sp, i))
            if not gpte & PteFlags.P or not gpte & PteFlags.A:
                self._drop_spte(sp, i)
                continue
            gfn = (gpte & _ADDR_MASK) >> 12
            old = sp.spt[i]
            if gfn != old.gfn:                            # a new frame: drop, the next fault maps it
                self._drop_spte(sp, i)
                continue
            access = _protect_clean_gpte(sp.role.access & _gpte_access(gpte), gpte)
            if access & ACC_WRITE_MASK and not old.writable and \
                    self.mmu_try_to_unsync_pages(gfn, can_unsync=False, prefetch=False):
                access &= ~ACC_WRITE_MASK                 # make_spte(..., can_unsync = false)
            sp.spt[i] = Spte(gfn, old.hpa, access)
        self.trace.emit("kvm", "sync_page", f"synced shadow page of gfn {sp.gfn:#x}", gfn=sp.gfn)

    def mmu_sync_children(self, parent: KvmMmuPage) -> None:
        """``mmu_sync_children``: write-protect, mark sync and sync every unsync page below."""
        for sp in self._unsync_below(parent):
            sp.unsync = False                             # kvm_unlink_unsync_page
            self.vm_stat.mmu_unsync -= 1
            self.kvm_mmu_slot_gfn_write_protect(sp.gfn)   # kvm_vcpu_write_protect_gfn
            self.fname_sync_page(sp)

    def kvm_mmu_sync_roots(self) -> None:
        """``kvm_mmu_sync_roots`` (KVM_REQ_MMU_SYNC)."""
        if self.root is not None:
            self.mmu_sync_children(self.root)

    def kvm_mmu_load(self) -> None:
        """``kvm_mmu_load`` -> ``mmu_alloc_shadow_roots`` -> ``mmu_alloc_root``, then sync roots."""
        self.root = self.kvm_mmu_get_shadow_page(self.cr3 >> 12, Role(_LEVELS))
        self.root.root_count += 1
        self.kvm_mmu_sync_roots()

    def load_cr3(self, cr3: int, *, _first: bool = False) -> None:
        """MOV to CR3: ``kvm_set_cr3`` -> ``kvm_mmu_new_pgd`` and the flush's ``KVM_REQ_MMU_SYNC``."""
        if not isinstance(cr3, int) or not 0 <= cr3 < 1 << 52 or cr3 % PAGE_SIZE:
            raise ShadowError(f"CR3 {cr3!r} must be a page-aligned physical address (PCID not modelled)")
        if cr3 + PAGE_SIZE > self.mem.size:
            raise ShadowError(f"CR3 {cr3:#x}: the top-level table is outside memory [0, {self.mem.size:#x})")
        if not _first:
            self.trace.emit("kvm", "load_cr3", f"CR3 <- {cr3:#x}", cr3=cr3)
        if self.root is not None:
            self.root.root_count -= 1                     # kvm_mmu_free_roots / fast_pgd_switch
        self.cr3 = cr3
        self.kvm_mmu_load()

    def invlpg(self, gva: int) -> None:
        """INVLPG: ``kvm_mmu_invlpg`` -> ``FNAME(invlpg)``: re-read the gpte behind an unsync leaf."""
        self.stat.invlpg += 1
        self.trace.emit("kvm", "invlpg", f"INVLPG {gva:#x}", gva=gva)
        if self.root is None:
            return
        sp, i = self.shadow_walk(gva)[-1]
        if not isinstance(sp.spt.get(i), Spte) or not sp.unsync:
            return
        self.mmu_page_zap_pte(sp, i)
        self._prefetch_gpte(sp, i, self.mem.read_u64(self._gpte_addr(sp, i)))
