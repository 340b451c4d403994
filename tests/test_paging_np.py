"""The vectorised walker (vbook.models.paging_np) equals the scalar one (paging.walk)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbook.memory import GuestMemory
from vbook.models import paging
from vbook.models.paging import SIZE_1G, SIZE_2M, NonCanonicalAddress, PageTables, PteFlags
from vbook.models.paging_np import gather_baseline, walk_many

MEM = 0x80000
TABLES = 0x40000

FLIPS = (PteFlags.P, PteFlags.RW, PteFlags.US, PteFlags.NX, PteFlags.PS)


def _scalar(mem, cr3, gva, **kw):
    w = paging.walk(mem, cr3, gva, **kw)
    if w.fault is None:
        return (w.address, w.page_size, False, 0, len(w.steps))
    return (0, 0, True, int(w.fault.error_code), len(w.steps))


@st.composite
def scenario(draw):
    mem = GuestMemory(MEM, record=False)
    pt = PageTables(mem, TABLES)
    gvas = []
    for _ in range(draw(st.integers(1, 12))):
        size = draw(st.sampled_from((4096, 4096, 4096, SIZE_2M, SIZE_1G)))
        gva = draw(st.integers(0, (1 << 47) // size - 1)) * size
        flags = PteFlags(0)
        for f in (PteFlags.RW, PteFlags.US, PteFlags.NX):
            if draw(st.booleans()):
                flags |= f
        try:
            pt.map(gva, draw(st.integers(0, 0xFF)) * size, size=size, flags=flags)
        except paging.MapError:
            continue
        gvas += [gva, gva + draw(st.integers(0, size - 1)), gva + size]
    # corrupt some entries: flip P, RW, US, NX or PS in table words that are in use
    words = np.frombuffer(mem.buf, dtype="<u8")
    used = np.nonzero(words[TABLES // 8:])[0]
    for _ in range(draw(st.integers(0, 4))):
        if len(used):
            i = TABLES // 8 + int(used[draw(st.integers(0, len(used) - 1))])
            mem.write_u64(8 * i, mem.read_u64(8 * i) ^ int(draw(st.sampled_from(FLIPS))))
    opts = dict(access=draw(st.sampled_from("rwx")), user=draw(st.booleans()),
                cr0_wp=draw(st.booleans()), cr4_smep=draw(st.booleans()),
                cr4_smap=draw(st.booleans()), efer_nxe=draw(st.booleans()))
    gvas = [g for g in gvas + [0x7FFF_FFFF_F000] if paging.is_canonical(g)]
    return mem, pt.cr3, gvas, opts


@settings(max_examples=150, deadline=None)
@given(scenario())
def test_walk_many_equals_walk(s):
    mem, cr3, gvas, opts = s
    try:
        many = walk_many(mem, cr3, gvas, **opts)
    except paging.TableOutsideMemory as e:  # then the scalar walk of some address raises too
        hits = []
        for gva in gvas:
            try:
                paging.walk(mem, cr3, gva, **opts)
            except paging.TableOutsideMemory as scalar:
                hits.append((scalar.level, scalar.entry_addr))
        assert (e.level, e.entry_addr) in hits
        return
    for i, gva in enumerate(gvas):
        try:
            want = _scalar(mem, cr3, gva, **opts)
        except paging.TableOutsideMemory:
            continue  # a flipped PS bit can point a "table" anywhere; walk_many raises too
        got = (int(many.address[i]), int(many.page_size[i]), bool(many.fault[i]),
               int(many.error_code[i]), int(many.refs[i]))
        assert got == want, f"gva {gva:#x}: walk_many {got}, walk {want}"


def test_five_levels_and_the_baseline():
    mem = GuestMemory(MEM, record=False)
    pt = PageTables(mem, TABLES, levels=5)
    pt.map(0x00F0_0000_0000_0000, 0x3000)
    r = walk_many(mem, pt.cr3, [0x00F0_0000_0000_0123, 0x00F0_0000_0000_1000], levels=5)
    assert list(r.address) == [0x3123, 0] and list(r.fault) == [False, True]
    assert list(r.refs) == [5, 5] and repr(r) == "WalkMany(2 addresses: 1 translated, 1 #PF)"
    pt4 = PageTables(GuestMemory(MEM, record=False), TABLES)
    pt4.map(0x1234_5000, 0x7000)
    assert int(gather_baseline(pt4.mem, pt4.cr3, [0x1234_5678])[0]) == 0x7678


def test_bad_input_is_typed():
    mem = GuestMemory(MEM, record=False)
    pt = PageTables(mem, TABLES)
    with pytest.raises(NonCanonicalAddress):
        walk_many(mem, pt.cr3, [0x0000_8000_0000_0000])
    with pytest.raises(paging.PagingError):
        walk_many(mem, pt.cr3, [0], access="q")
    mem.write_u64(pt.cr3, 0x10_0000_0000 | 1)  # PML4[0] points far outside memory
    with pytest.raises(paging.TableOutsideMemory):
        walk_many(mem, pt.cr3, [0x1000])


@st.composite
def uniform(draw):
    """Only mapped addresses, all pages one size: walk_many's unmasked path at every level."""
    mem = GuestMemory(MEM, record=False)
    pt = PageTables(mem, TABLES)
    size = draw(st.sampled_from((4096, SIZE_2M)))
    gvas = []
    for _ in range(draw(st.integers(1, 10))):
        gva = draw(st.integers(0, (1 << 47) // size - 1)) * size
        flags = PteFlags(0)
        for f in (PteFlags.RW, PteFlags.US, PteFlags.NX):
            if draw(st.booleans()):
                flags |= f
        try:
            pt.map(gva, draw(st.integers(0, 0xFF)) * size, size=size, flags=flags)
        except paging.MapError:
            continue
        gvas += [gva + draw(st.integers(0, size - 1)) for _ in range(3)]
    opts = dict(access=draw(st.sampled_from("rwx")), user=draw(st.booleans()),
                cr0_wp=draw(st.booleans()), cr4_smep=draw(st.booleans()),
                cr4_smap=draw(st.booleans()), efer_nxe=draw(st.booleans()))
    return mem, pt.cr3, gvas, opts


@settings(max_examples=100, deadline=None)
@given(uniform())
def test_walk_many_equals_walk_when_every_lane_walks(s):
    mem, cr3, gvas, opts = s
    many = walk_many(mem, cr3, gvas, **opts)
    for i, gva in enumerate(gvas):
        got = (int(many.address[i]), int(many.page_size[i]), bool(many.fault[i]),
               int(many.error_code[i]), int(many.refs[i]))
        assert got == _scalar(mem, cr3, gva, **opts), f"gva {gva:#x}"
