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


def show_kernel_loop(run: Any, *, step: int = 0, speed: float = 4.0) -> KernelLoopView:
    """The usual way to show a walk in a chapter: ``show_kernel_loop(kvm_run(vm_exits))``."""
    return KernelLoopView(run, step=step, speed=speed)
