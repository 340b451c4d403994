"""HypercallView: what one VMCALL does — registers before and after, and the path it takes.

It renders the trace :func:`vbook.hypercall_run.run_hypercalls` records.
For the current hypercall the ``hypercall`` pane (``hypercall_pane.js``)
shows

* the registers of the ABI — RAX (nr), RBX, RCX, RDX, RSI (a0..a3) at the
  VMCALL, and RAX after it, decoded (``-1000`` = ``-KVM_ENOSYS``);
* the path: guest ``VMCALL`` → VM exit (``EXIT_REASON_VMCALL`` = 18 on VMX,
  ``SVM_EXIT_VMMCALL`` = 0x81 on SVM) → ``kvm_emulate_hypercall`` → the CPL
  check or the ``KVM_HC_*`` case → ``kvm_skip_emulated_instruction`` → the
  guest; and the detour a ``KVM_HC_MAP_GPA_RANGE`` takes when the VMM asked
  for it: ``KVM_EXIT_HYPERCALL`` → user space writes ``hypercall.ret`` →
  ``complete_hypercall_exit`` on the next ``KVM_RUN``;
* every hypercall of the run in a table (click one to go there).

Below it the run-loop timeline shows the same events on the guest / KVM /
user-space lanes: most hypercalls never reach the user-space lane. The
constants the browser shows (registers, exit reasons, ``KVM_HC_*`` and
``KVM_E*`` names) come from :mod:`vbook.models.hypercall` through the
trace's ``meta["hypercall_abi"]`` (:func:`hypercall_layout`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import traitlets

from vbook.models import hypercall as hc
from vbook.models.kvm_api import ExitReason, Hypercall, HypercallError
from vbook.trace import Trace
from vbook.widgets.player import CSS, as_trace, esm_with
from vbook.widgets.run_loop import _RunPlayer

HERE = Path(__file__).parent
PANE_JS = HERE / "hypercall_pane.js"
PANE_CSS = HERE / "hypercall_pane.css"


def hypercall_layout() -> dict[str, Any]:
    """The ABI constants the hypercall pane names, all from :mod:`vbook.models.hypercall`."""
    return {
        "registers": [[reg, role] for role, reg in hc.ABI.items() if role != "ret"],
        "ret_register": hc.RET_REGISTER,
        "exit_reason_vmcall": hc.EXIT_REASON_VMCALL,
        "svm_exit_vmmcall": hc.SVM_EXIT_VMMCALL,
        "exit_hypercall": int(ExitReason.HYPERCALL),
        "insn_len": hc.INSN_LEN,
        "vmcall": hc.VMCALL.hex(" "),
        "vmmcall": hc.VMMCALL.hex(" "),
        "hypercalls": {str(int(h)): f"KVM_HC_{h.name}" for h in Hypercall},
        "errors": {str(int(e)): f"KVM_{e.name}" for e in HypercallError},
    }


class HypercallView(_RunPlayer):
    """Step through a run's hypercalls: registers, the path through KVM, the run loop.

    ``HypercallView(run_or_trace, step=None, speed=2.0)``: ``run_or_trace``
    is a :class:`~vbook.hypercall_run.HypercallRun` or its trace; ``step``
    defaults to the first VMCALL. The browser does the stepping.
    """

    _esm = esm_with(PANE_JS)
    _css = CSS.read_text(encoding="utf-8") + "\n" + PANE_CSS.read_text(encoding="utf-8")
    panes = traitlets.Unicode("hypercall timeline").tag(sync=True)

    def __init__(self, trace: Any, *, step: int | None = None, speed: float = 2.0, **kw: Any):
        t = as_trace(trace)
        t = Trace(t.events, {**dict(t.meta), "hypercall_abi": hypercall_layout()})
        if step is None:
            step = next((i for i, e in enumerate(t) if e.actor == "guest" and e.kind == "vmcall"), 0)
        super().__init__(t, step=step, speed=speed, **kw)

    @property
    def hypercalls(self) -> int:
        """How many hypercalls the trace holds."""
        return sum(1 for e in self.trace.get("events", [])
                   if e.get("actor") == "guest" and e.get("kind") == "vmcall")

    def __repr__(self) -> str:
        events = self.trace.get("events", [])
        exits = sum(1 for e in events if e.get("actor") == "kvm" and e.get("kind") == "exit")
        title = self.trace.get("meta", {}).get("title")
        head = f"trace={title!r}, " if title else ""
        return (f"HypercallView({head}{len(events)} events, {exits} exit{'s' * (exits != 1)}, "
                f"{self.hypercalls} hypercall{'s' * (self.hypercalls != 1)})")


def show_hypercalls(run: Any, *, step: int | None = None, speed: float = 2.0) -> HypercallView:
    """The usual way to show a run in a chapter: ``show_hypercalls(run_hypercalls(guest))``."""
    return HypercallView(run, step=step, speed=speed)
