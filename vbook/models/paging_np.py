"""Many page walks at once: :func:`walk_many`, the scalar walk vectorised with numpy.

The chapters plot references per translation and what a TLB miss costs for
thousands of addresses; :func:`vbook.models.paging.walk` walks one address and
records every step, this module walks a whole array of addresses with one
numpy gather per level. It reads the same tables and decides the same way —
not present, reserved bits, large pages (PS in a PDPTE or PDE), R/W, U/S and
XD over all levels, CR0.WP, SMEP, SMAP — and gives the same address, page
size, #PF error code and number of entries read (a property test holds it to
:func:`walk`).

Left to the scalar walk: A/D updates and traces. Non-canonical addresses and
tables outside memory raise, as the scalar walk does (for the whole batch).
Pure; numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vbook.memory import GuestMemory
from vbook.models.paging import NonCanonicalAddress, PagingError, PfErr, PteFlags, TableOutsideMemory

_P, _RW, _US, _PS = (np.uint64(int(f)) for f in (PteFlags.P, PteFlags.RW, PteFlags.US, PteFlags.PS))
_NX = np.uint64(int(PteFlags.NX))
_ZERO = np.uint64(0)


@dataclass(frozen=True)
class WalkMany:
    """The result for every address: arrays of the same length as the input.

    ``address`` is the GPA (0 where ``fault``), ``page_size`` 4096, 2 MiB or
    1 GiB (0 where ``fault``), ``error_code`` the #PF error code (0 where no
    fault), ``refs`` the number of table entries each walk read.
    """

    address: np.ndarray
    page_size: np.ndarray
    fault: np.ndarray
    error_code: np.ndarray
    refs: np.ndarray

    def __len__(self) -> int:
        return len(self.address)

    def __repr__(self) -> str:
        return (f"WalkMany({len(self)} addresses: {int((~self.fault).sum())} translated, "
                f"{int(self.fault.sum())} #PF)")


def walk_many(mem: GuestMemory, cr3: int, gvas, access: str = "r", user: bool = False, *,
              levels: int = 4, cr0_wp: bool = True, cr4_smep: bool = False,
              cr4_smap: bool = False, efer_nxe: bool = True, maxphyaddr: int = 52) -> WalkMany:
    """:func:`vbook.models.paging.walk` for every address in ``gvas`` (see the module docstring)."""
    if access not in ("r", "w", "x"):
        raise PagingError(f"access must be 'r', 'w' or 'x' (fetch), got {access!r}")
    if levels not in (4, 5):
        raise PagingError(f"levels must be 4 or 5, got {levels!r}")
    gva = np.asarray(gvas, dtype=np.uint64).ravel()
    top = 57 if levels == 5 else 48
    bad = ((gva + np.uint64(1 << (top - 1))) >> np.uint64(top)) != 0  # bits 63:top-1 not all equal
    if bad.any():
        raise NonCanonicalAddress(int(gva[bad][0]), levels)
    n = len(gva)
    words = np.frombuffer(memoryview(mem.buf)[: mem.size - mem.size % 8], dtype="<u8")
    addr_mask = np.uint64(((1 << maxphyaddr) - 1) & ~0xFFF)
    rsvd_all = np.uint64((((1 << 52) - 1) & ~((1 << maxphyaddr) - 1)) | (0 if efer_nxe else 1 << 63))
    write, fetch = access == "w", access == "x"
    err0 = (PfErr.W if write else 0) | (PfErr.U if user else 0) | (
        PfErr.I if fetch and (efer_nxe or cr4_smep) else 0)

    gva_i = gva.view(np.int64)  # indices in int64: no casts per level (>> then & 0x1FF is exact)
    table = np.full(n, (cr3 & int(addr_mask)) >> 3, dtype=np.int64)  # the table, in 8-byte words
    active = np.ones(n, dtype=bool)          # still walking
    notpresent = np.zeros(n, dtype=bool)
    rsvdfault = np.zeros(n, dtype=bool)
    refs = np.zeros(n, dtype=np.int64)
    all_bits = np.full(n, ~_ZERO, dtype=np.uint64)  # AND of the entries walked (R/W, U/S)
    any_bits = np.zeros(n, dtype=np.uint64)         # OR of the entries walked (XD)
    leaf_entry = np.zeros(n, dtype=np.uint64)
    leaf_shift = np.zeros(n, dtype=np.uint64)
    last = len(words) - 1
    no_leaf = np.zeros(n, dtype=bool)
    for level in range(levels, 0, -1):
        shift = np.uint64(12 + 9 * (level - 1))
        word = table + ((gva_i >> int(shift)) & 0x1FF)
        # inactive lanes re-read inside a table already read, so the plain max is exact enough
        # to skip the masked one in the usual case
        if word.max(initial=0) > last and np.max(word, where=active, initial=0) > last:
            bad_at = int(word[active & (word > last)][0]) * 8
            raise TableOutsideMemory(level, bad_at, mem.size, None)
        entry = np.take(words, word, mode="clip")  # stale lanes: harmless reads
        refs += active
        walking = active & ((entry & _P) != 0)
        rsvd = rsvd_all | (_PS if level >= 4 else _ZERO)
        if level in (2, 3):
            leaf = walking & ((entry & _PS) != 0)
            large_rsvd = np.uint64(((1 << (12 + 9 * (level - 1))) - 1) & ~0x1FFF)  # 20:13 or 29:13
            hit = walking & ((entry & np.where(leaf, rsvd | large_rsvd, rsvd)) != 0)
        else:
            leaf = walking if level == 1 else no_leaf
            hit = walking & ((entry & rsvd) != 0)
        if hit.any():
            rsvdfault |= hit
            walking = walking & ~hit
            leaf = leaf & ~hit
        if walking.all() and (level == 1 or not leaf.any()):
            # the usual case, every lane walking and none at its leaf above level 1: no masks
            np.bitwise_and(all_bits, entry, out=all_bits)
            np.bitwise_or(any_bits, entry, out=any_bits)
            if level == 1:
                leaf_entry, leaf_shift[:] = entry, shift
                active = no_leaf
            else:
                table = ((entry & addr_mask) >> np.uint64(3)).view(np.int64)
            continue
        notpresent |= active ^ walking
        np.bitwise_and(all_bits, entry, out=all_bits, where=walking)
        np.bitwise_or(any_bits, entry, out=any_bits, where=walking)
        np.copyto(leaf_entry, entry, where=leaf)
        np.copyto(leaf_shift, shift, where=leaf)
        active = walking & ~leaf
        np.copyto(table, (entry & addr_mask) >> np.uint64(3), where=active, casting="unsafe")
    rw_all = (all_bits & _RW) != 0
    us_all = (all_bits & _US) != 0
    nx_any = (any_bits & _NX) != 0

    if user:
        prot = ~us_all | (write & ~rw_all) | (fetch & efer_nxe & nx_any)
    else:
        prot = (us_all & fetch & cr4_smep) | (us_all & (not fetch) & cr4_smap) \
            | (write & cr0_wp & ~rw_all) | (fetch & efer_nxe & nx_any)
    prot &= ~notpresent & ~rsvdfault
    fault = notpresent | rsvdfault | prot
    size = np.where(fault, _ZERO, np.uint64(1) << leaf_shift)
    offset_mask = size - np.uint64(1)
    address = np.where(fault, _ZERO, (leaf_entry & addr_mask & ~offset_mask) | (gva & offset_mask))
    error = np.where(prot | rsvdfault, np.uint64(int(err0 | PfErr.P)), np.uint64(int(err0)))
    error |= np.where(rsvdfault, np.uint64(int(PfErr.RSVD)), _ZERO)
    return WalkMany(address, size, fault, np.where(fault, error, _ZERO), refs)


def gather_baseline(mem: GuestMemory, cr3: int, gvas) -> np.ndarray:
    """The bare minimum of a 4-level walk: four numpy gathers, no checks (for ``make bench``)."""
    gva = np.asarray(gvas, dtype=np.uint64)
    words = np.frombuffer(memoryview(mem.buf)[: mem.size - mem.size % 8], dtype="<u8")
    mask = np.uint64(((1 << 52) - 1) & ~0xFFF)
    table = np.full(len(gva), np.uint64(cr3) & mask, dtype=np.uint64)
    for shift in (39, 30, 21, 12):
        idx = (gva >> np.uint64(shift)) & np.uint64(0x1FF)
        entry = words[((table + idx * np.uint64(8)) >> np.uint64(3)).astype(np.intp)]
        table = entry & mask
    return table | (gva & np.uint64(0xFFF))


__all__ = ["WalkMany", "gather_baseline", "walk_many"]
