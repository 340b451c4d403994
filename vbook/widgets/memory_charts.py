"""Charts for chapters 05 and 06: what a guest's memory operations cost in VM exits.

Each renders what a model already computed — :func:`vbook.shadow_run.predict_writes`
(chapter 05's write scenarios, :class:`~vbook.models.shadow.ShadowMmu`) and
:func:`vbook.models.ept.guest_touches` (chapter 06's lazy EPT) — and computes
nothing of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import accumulate
from typing import Any

__all__ = ["ept_fill_chart", "shadow_writes_chart"]

_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def shadow_writes_chart(runs: Mapping[str, Any]) -> Any:
    """#PF exits per write, one line per scenario: ``runs`` maps a label to a
    :class:`~vbook.shadow_run.WriteRuns` (run 0, the setup, is left out). Emulated
    writes (``pf_emulate``) are drawn as filled markers. Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    for k, (label, r) in enumerate(runs.items()):
        xs = list(range(1, len(r.runs)))
        taken = [run["pf_taken"] for run in r.runs[1:]]
        emulated = [run["pf_emulate"] for run in r.runs[1:]]
        c = _COLOURS[k % len(_COLOURS)]
        ax.plot(xs, [t + 0.04 * k for t in taken], "-", color=c, label=label, lw=1.5)
        ax.scatter([x for x, e in zip(xs, emulated, strict=True) if e],
                   [t + 0.04 * k for t, e in zip(taken, emulated, strict=True) if e],
                   color=c, s=22, zorder=3)
        ax.scatter([x for x, e in zip(xs, emulated, strict=True) if not e],
                   [t + 0.04 * k for t, e in zip(taken, emulated, strict=True) if not e],
                   facecolors="white", edgecolors=c, s=22, zorder=3)
    ax.set_xlabel("write number (one KVM_RUN each)")
    ax.set_ylabel("#PF VM exits (pf_taken)")
    ax.set_title("A guest writing its own page tables under shadow paging "
                 "(filled: the write was emulated)", fontsize=10)
    ax.set_yticks([0, 1, 2])
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def ept_fill_chart(series: Mapping[str, Sequence[Any]]) -> Any:
    """Cumulative EPT violations over a run of guest accesses: ``series`` maps a label
    to the :class:`~vbook.models.ept.Touch` list of one run. Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    for k, (label, touches) in enumerate(series.items()):
        total = list(accumulate(t.exit == "EPT_VIOLATION" for t in touches))
        ax.step(range(1, len(total) + 1), total, where="post", color=_COLOURS[k % len(_COLOURS)],
                label=f"{label}: {total[-1] if total else 0} violations")
    ax.set_xlabel("guest memory access")
    ax.set_ylabel("EPT violations so far")
    ax.set_title("KVM fills the EPT on demand", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
