"""The e1000-vs-virtio-net chart: what one packet costs each NIC in VM exits and copies.

It draws counts a run already made — one row per NIC configuration, with the
attributes of ``vbook.net_run.PacketCounts``: ``nic``, ``packets`` (frames
guest → host plus host → guest), ``vm_exits``, ``user_exits`` (exits that reached
QEMU), ``mmio_exits``, ``pio_exits``, ``bytes_copied`` and ``per_packet(field)``.
It computes nothing but those ratios' layout. :func:`exits_table_html` gives the
same numbers as a small table for a static page, :func:`exits_table_text` as
plain text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["COLUMNS", "exits_per_packet_chart", "exits_table_html", "exits_table_text"]

#: the per-packet quantities, in the order they are drawn: field, label
EXIT_FIELDS: tuple[tuple[str, str], ...] = (
    ("vm_exits", "VM exits"),
    ("user_exits", "exits to user space (QEMU)"),
    ("mmio_exits", "KVM_EXIT_MMIO"),
    ("pio_exits", "KVM_EXIT_IO"),
)
BYTES_FIELD = ("bytes_copied", "bytes copied by QEMU")
#: the table's columns: field, heading (``packets`` is a total, the rest per packet)
COLUMNS: tuple[tuple[str, str], ...] = (("packets", "packets"), *EXIT_FIELDS, BYTES_FIELD)

_COLOURS = ("#8250df", "#d4700b", "#1f77b4", "#2ca02c")
_BYTES_COLOUR = "#6e7781"


@dataclass(frozen=True)
class _Row:
    """A stand-in for ``vbook.net_run.PacketCounts`` (same attribute names), for the tests."""

    nic: str
    packets: int
    vm_exits: int
    user_exits: int
    mmio_exits: int
    pio_exits: int
    bytes_copied: int

    def per_packet(self, field: str) -> float:
        return getattr(self, field) / self.packets if self.packets else 0.0


def _fmt(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def exits_per_packet_chart(rows: Sequence[Any], ax: Any = None) -> Any:
    """Grouped bars, one group per NIC configuration: VM exits, exits to user space, MMIO
    and PIO exits per packet (left axis), and bytes QEMU copied per packet (a hatched bar
    on a second y axis, right). Each bar is labelled with its value.

    ``rows``: objects with ``nic``, ``packets`` and ``per_packet(field)`` for
    ``vm_exits``, ``user_exits``, ``mmio_exits``, ``pio_exits``, ``bytes_copied``
    (``vbook.net_run.PacketCounts``). With ``ax`` the chart is drawn there and the Axes
    is returned; without, a new Figure is returned (closed for pyplot, so a notebook
    draws it once).
    """
    import matplotlib.pyplot as plt

    rows = list(rows)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6.5, 2.4 * len(rows) + 2), 4.4))
        own = True
    else:
        fig, own = ax.figure, False
    nbars = len(EXIT_FIELDS) + 1
    width = 0.8 / nbars
    xs = list(range(len(rows)))
    for k, (field, label) in enumerate(EXIT_FIELDS):
        vals = [r.per_packet(field) for r in rows]
        bars = ax.bar([x + (k - (nbars - 1) / 2) * width for x in xs], vals, width,
                      label=label, color=_COLOURS[k % len(_COLOURS)], gid=f"exits:{field}")
        ax.bar_label(bars, labels=[_fmt(v) for v in vals], fontsize=7.5, padding=1)
    ax.set_ylabel("per packet")
    ax.set_xticks(xs, [f"{r.nic}\n({r.packets} packet{'s' * (r.packets != 1)})" for r in rows],
                  fontsize=8.5)
    ax.margins(y=0.15)
    right = ax.twinx()
    field, label = BYTES_FIELD
    vals = [r.per_packet(field) for r in rows]
    bars = right.bar([x + (nbars - 1) / 2 * width for x in xs], vals, width, label=label,
                     color="white", edgecolor=_BYTES_COLOUR, hatch="///", gid=f"bytes:{field}")
    right.bar_label(bars, labels=[_fmt(v) for v in vals], fontsize=7.5, padding=1,
                    color=_BYTES_COLOUR)
    right.set_ylabel("bytes copied per packet", color=_BYTES_COLOUR)
    right.tick_params(axis="y", colors=_BYTES_COLOUR)
    right.margins(y=0.15)
    right.set_ylim(bottom=0)
    ax.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncol=3, frameon=False)
    ax.set_title("Per packet (frames guest → host + host → guest): VM exits, exits to QEMU,\n"
                 "bytes QEMU copies — counted in the modelled runs", fontsize=9.5)
    if not own:
        return ax
    fig.tight_layout()
    plt.close(fig)
    return fig


def _cells(rows: Sequence[Any]) -> list[list[str]]:
    out = []
    for r in rows:
        line = [str(r.nic), str(r.packets)]
        line += [_fmt(r.per_packet(f)) for f, _ in (*EXIT_FIELDS, BYTES_FIELD)]
        out.append(line)
    return out


def exits_table_html(rows: Sequence[Any]) -> str:
    """The chart's numbers as a small HTML table (no scripts, no styles from outside)."""
    heads = ["NIC", "packets", *(f"{label} / packet" for _, label in (*EXIT_FIELDS, BYTES_FIELD))]
    th = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    right = ' style="text-align:right"'
    body = "".join(
        "<tr>" + "".join(f"<td{'' if k == 0 else right}>{html.escape(c)}</td>"
                         for k, c in enumerate(line)) + "</tr>"
        for line in _cells(rows))
    return (f'<table class="vbook-exits-table"><thead><tr>{th}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def exits_table_text(rows: Sequence[Any]) -> str:
    """The same table as Markdown-style text (pipes and a rule), e.g. for a doctest."""
    heads = ["NIC", "packets", *(f"{label} / packet" for _, label in (*EXIT_FIELDS, BYTES_FIELD))]
    lines = [heads, *_cells(rows)]
    w = [max(len(line[k]) for line in lines) for k in range(len(heads))]
    fmt = [(lambda c, n: c.ljust(n)) if k == 0 else (lambda c, n: c.rjust(n))
           for k in range(len(heads))]
    out = ["| " + " | ".join(fmt[k](c, w[k]) for k, c in enumerate(line)) + " |" for line in lines]
    rule = "|" + "|".join("-" * (n + 2) if k == 0 else "-" * (n + 1) + ":"
                          for k, n in enumerate(w)) + "|"
    return "\n".join([out[0], rule, *out[1:]])
