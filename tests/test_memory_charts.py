"""The chapter 05/06 charts draw what the models computed."""

from __future__ import annotations

from vbook.memory import GuestMemory
from vbook.models.ept import Memslot, guest_touches
from vbook.shadow_run import predict_writes
from vbook.widgets.memory_charts import ept_fill_chart, shadow_writes_chart


def test_shadow_writes_chart_plots_pf_taken_per_write():
    runs = {s: predict_writes(s, 6) for s in ("leaf_pte", "own_pd")}
    fig = shadow_writes_chart(runs)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2
    for line, r in zip(lines, runs.values(), strict=True):
        ys = [round(y) for y in line.get_ydata()]
        assert ys == [run["pf_taken"] for run in r.runs[1:]]


def test_ept_fill_chart_counts_violations():
    work = [(0x1000 * i, "r") for i in range(10)] + [(0x1000, "w")]
    ram = [Memslot.of(0, 4 << 20, 8 << 20)]
    small = guest_touches(work, ram, mem=GuestMemory(1 << 20, record=False), alloc_base=0x1000)
    huge = guest_touches(work, ram, mem=GuestMemory(1 << 20, record=False), alloc_base=0x1000,
                         hugepages=True)
    assert (small.pf_fixed, huge.pf_fixed) == (10, 1)
    fig = ept_fill_chart({"4K": small.touches, "2M": huge.touches})
    a, b = fig.axes[0].get_lines()
    assert a.get_ydata()[-1] == 10 and b.get_ydata()[-1] == 1
