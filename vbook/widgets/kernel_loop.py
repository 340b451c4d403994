"""KernelLoopView: one guest through both loops at once — user space, the kernel, the guest.

It renders the trace :func:`vbook.models.kvm_kernel.kvm_run` records. The
``kernel`` pane (``kernel_pane.js``) draws three lanes:

* **user space** — QEMU's vCPU thread: ``ioctl(KVM_RUN)``, and the handler of
  each exit that came back (``kvm_handle_io``, ``address_space_rw`` …);
* **kernel** — every function of the path at its call depth, from
  ``kvm_vcpu_ioctl`` down through ``vcpu_run``, ``vcpu_enter_guest``,
  ``vmx_handle_exit`` to the exit handler and its helpers, and back up: the
  names step down and up as the walk goes;
* **guest** — the guest running until its next VM exit.

Every VM exit gets a band from the exit to where it was resolved: green and
below the user-space lane when the handler returned 1 (KVM re-entered the
guest; user space never knew), orange up to the top when it returned 0
(``KVM_RUN`` returned). A side panel shows the kernel call stack at the
current step.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import traitlets

from vbook.widgets.player import CSS, as_trace, esm_with
from vbook.widgets.run_loop import _RunPlayer

HERE = Path(__file__).parent
PANE_JS = HERE / "kernel_pane.js"
PANE_CSS = HERE / "kernel_pane.css"


class KernelLoopView(_RunPlayer):
    """Step through a :class:`~vbook.models.kvm_kernel.KernelRun`: user space, kernel, guest.

    ``KernelLoopView(run_or_trace, step=0, speed=4.0)``; the browser does the
    stepping (play, step, scrub, click a node).
    """

    _esm = esm_with(PANE_JS)
    _css = CSS.read_text(encoding="utf-8") + "\n" + PANE_CSS.read_text(encoding="utf-8")
    panes = traitlets.Unicode("kernel").tag(sync=True)

    def __init__(self, run: Any, *, step: int = 0, speed: float = 4.0, **kw: Any):
        super().__init__(as_trace(run), step=step, speed=speed, **kw)

    def vm_exits(self) -> dict[str, int]:
        """VM exits of the trace by where they ended (kernel, user, blocked)."""
        out = {"kernel": 0, "user": 0, "blocked": 0}
        for e in self.trace.get("events", []):
            if e.get("actor") == "kvm" and e.get("kind") == "vmexit":
                where = e.get("data", {}).get("where", "kernel")
                out[where] = out.get(where, 0) + 1
        return out

    def __repr__(self) -> str:
        events = self.trace.get("events", [])
        title = self.trace.get("meta", {}).get("title")
        head = f"trace={title!r}, " if title else ""
        c = self.vm_exits()
        n = sum(c.values())
        return (f"KernelLoopView({head}{len(events)} events, {n} VM exit{'s' * (n != 1)}: "
                f"{c['kernel']} in the kernel, {c['user']} to user space"
                + (f", {c['blocked']} asleep" if c["blocked"] else "") + ")")


#: colours of the three destinations (the player's guest / user / kernel colours)
COLOURS = {"kernel": "#2da44e", "user": "#d4700b", "blocked": "#8250df"}
LABELS = {"kernel": "handled in the kernel (returns 1)", "user": "to user space (returns 0)",
          "blocked": "vCPU asleep in the kernel (HLT)"}


def exit_chart(runs: Mapping[str, Mapping[str, Any]], example: Any) -> Any:
    """A matplotlib figure: where VM exits go, and what one round trip costs in steps.

    ``runs`` maps a guest name to {configuration label: KernelRun}; the left
    panel stacks each run's VM exits by destination. ``example`` is one
    :class:`~vbook.models.kvm_kernel.KernelRun`; the right panel shows, per
    VM exit, the kernel functions entered between the exit and the next VM
    entry, and how often ``KVM_RUN`` returned to user space meanwhile. Counts
    from the model, not times. Returns the Figure (closed for pyplot, so it
    is drawn once when a notebook displays it).
    """
    import matplotlib.pyplot as plt

    rows = [(guest, label, run) for guest, by_cfg in runs.items()
            for label, run in by_cfg.items()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.32 * len(rows) + 1.6),
                                      gridspec_kw={"width_ratios": [3, 2]})
    names = [f"{guest}  ({label})" for guest, label, _ in rows]
    y = list(range(len(rows)))[::-1]
    start = [0] * len(rows)
    for where in ("kernel", "user", "blocked"):
        n = [run.counts()[where] for _, _, run in rows]
        left.barh(y, n, left=start, color=COLOURS[where], label=LABELS[where], height=0.7)
        start = [a + b for a, b in zip(start, n, strict=True)]
    left.set_yticks(y, names, fontsize=8.5)
    left.set_xlabel("VM exits")
    left.set_title("Where VM exits go", fontsize=10)
    left.legend(fontsize=7.5, loc="lower right")
    trips = example.round_trips()
    xs = range(len(trips))
    right.bar(xs, [t.kernel_calls for t in trips], color=[COLOURS[t.where] for t in trips])
    for x, t in zip(xs, trips, strict=True):
        if t.kvm_run_returns:
            right.annotate(f"{t.kvm_run_returns}× to user", (x, t.kernel_calls), ha="center",
                           va="bottom", fontsize=7.5)
    right.set_xticks(list(xs), [t.name.replace("_INSTRUCTION", "") for t in trips], rotation=30,
                     ha="right", fontsize=8)
    right.set_ylabel("kernel functions, VM exit → next VM entry", fontsize=9)
    right.set_title(f"One round trip each ({example.trace.meta.get('title', '')})", fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def show_kernel_loop(run: Any, *, step: int = 0, speed: float = 4.0) -> KernelLoopView:
    """The usual way to show a walk in a chapter: ``show_kernel_loop(kvm_run(vm_exits))``."""
    return KernelLoopView(run, step=step, speed=speed)
