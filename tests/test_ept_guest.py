"""EptGuest: the setup of a 2-D walk the chapter and its exercises share."""

from __future__ import annotations

import pytest
from test_nested import Machine

from vbook.errors import MemoryAccessError
from vbook.models import paging
from vbook.models.ept_guest import G1, K4, M2, EptGuest
from vbook.models.nested import NestedError, refs_count


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("ept_page", [K4, M2, G1])
@pytest.mark.parametrize("guest_page", [K4, M2, G1])
def test_same_walk_as_the_independent_fixture(levels, ept_page, guest_page):
    g = EptGuest(levels, levels, ept_page)
    kw = {"gbase": G1, "hbase": 0} if ept_page == G1 else {}
    m = Machine(levels, levels, ept_page, **kw)
    gva = 0x80000000 if guest_page == G1 else 0x400000
    gpa = g.gbase + (0x5000 if guest_page == K4 else 0)
    g.map(gva, gpa, guest_page)
    m.pt.map(gva, gpa, size=guest_page)
    a, b = g.walk(gva + 0x123, "w"), m.walk(gva + 0x123, "w")
    assert a.ok and (a.address, a.gpa, a.refs) == (b.address, b.gpa, b.refs)
    assert a.address == g.hpa(gpa + 0x123)
    assert g.guest_walk(gva + 0x123).address == gpa + 0x123


def test_24_and_the_guest_view():
    g = EptGuest().map(0x400000, 0x5000)
    w = g.walk(0x400123)
    assert len(w.refs) == 24 == refs_count(4, 4) and w.address == 0x205123
    # the guest's tables are in its RAM at HPA = GPA + 2 MiB, not at HPA = GPA
    assert g.host.read_u64(g.cr3) == 0 and g.host.read_u64(g.hpa(g.cr3)) != 0
    assert "4-level guest paging on 4-level EPT" in repr(g)


def test_l1memory_write_crosses_pages_and_refuses_outside():
    g = EptGuest()
    g.phys.write(0x1ff8, bytes(range(16)))
    assert g.host.read(g.hpa(0x1ff8), 16) == bytes(range(16))
    with pytest.raises(MemoryAccessError):
        g.phys.write(g.ram - 8, bytes(16))


def test_bad_setups():
    with pytest.raises(NestedError, match="4 KiB, 2 MiB or 1 GiB"):
        EptGuest(ept_page=0x3000)
    with pytest.raises(NestedError, match="1 GiB-aligned"):
        EptGuest(ept_page=G1, gbase=M2)
    with pytest.raises(NestedError, match="overlaps"):
        EptGuest(hbase=0x600000)
    with pytest.raises(NestedError, match="outside"):
        EptGuest().hpa(4 << 20)
    with pytest.raises(paging.PagingError):
        EptGuest().map(0x400001, 0x5000)


def test_walk_costs_follow_the_formula_and_chart():
    from vbook.models.ept_guest import walk_costs
    from vbook.widgets.walk_charts import refs_chart
    leaf = {K4: 1, M2: 2, G1: 3}
    costs = walk_costs()
    assert len(costs) == 18
    for c in costs:
        n, m = c.levels - leaf[c.guest_page] + 1, c.ept_levels - leaf[c.ept_page] + 1
        assert (c.native, c.guest, c.refs) == (n, n, refs_count(n, m))
    assert max(c.refs for c in costs) == 35 and min(c.refs for c in costs) == 8
    fig = refs_chart(costs)
    bars = [p for ax in fig.axes for p in ax.patches]
    assert len(fig.axes) == 2 and len(bars) == 2 * 3 * 4
    assert sorted(int(b.get_height()) for b in bars[:12])[-1] == 24
