"""Charts of what a TLB miss costs: memory references per translation, native and 2-D.

Renders :class:`vbook.models.ept_guest.WalkCost` rows (counted by real walks on
real tables); computes nothing of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vbook.models.bits import size_name

__all__ = ["refs_chart"]

#: native, then one shade per EPT page size
_COLOURS = ("#7f7f7f", "#1f77b4", "#6baed6", "#c6dbef")


def refs_chart(costs: Sequence[Any]) -> Any:
    """A matplotlib figure, one panel per number of levels: for each guest page size,
    the native walk's references and the 2-D walk's for each EPT page size.
    Returns the Figure (closed for pyplot, so a notebook draws it once)."""
    import matplotlib.pyplot as plt

    levels = sorted({c.levels for c in costs})
    guest_pages = sorted({c.guest_page for c in costs})
    ept_pages = sorted({c.ept_page for c in costs})
    fig, axes = plt.subplots(1, len(levels), figsize=(5.2 * len(levels), 3.4), sharey=True, squeeze=False)
    width = 0.8 / (len(ept_pages) + 1)
    for ax, lv in zip(axes[0], levels, strict=True):
        rows = {(c.guest_page, c.ept_page): c for c in costs if c.levels == lv}
        for k, label in enumerate(["native (no EPT)"] + [f"EPT {size_name(p)} pages" for p in ept_pages]):
            xs = [i + (k - len(ept_pages) / 2) * width for i in range(len(guest_pages))]
            if k == 0:
                ys = [rows[(gp, ept_pages[0])].native for gp in guest_pages]
            else:
                ys = [rows[(gp, ept_pages[k - 1])].refs for gp in guest_pages]
            bars = ax.bar(xs, ys, width, color=_COLOURS[k % len(_COLOURS)], label=label)
            ax.bar_label(bars, fontsize=7.5)
        ax.set_xticks(range(len(guest_pages)), [f"guest {size_name(p)}" for p in guest_pages])
        ax.set_title(f"{lv}-level guest paging on {lv}-level EPT", fontsize=10)
        ax.set_ylabel("memory references per TLB miss")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
