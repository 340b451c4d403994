"""QemuLoopView: one exit at a time, from the guest through KVM into QEMU and back.

It renders the trace :func:`vbook.models.run_loop.run` records — the shape
the run-loop widgets know (qemu ``ioctl KVM_RUN``, kvm ``entry``/``exit``,
guest ``run``) plus QEMU's own steps: ``kvm_cpu_exec``'s switch, the handler
(``kvm_handle_io``, ``kvm_handle_halt`` …), ``address_space_rw``, the device
callback, and the value ``ret`` got. Three panes, one step:

* ``qemu`` (``qemu_pane.js``) — the acting thread's QEMU call stack and
  whether it holds the big QEMU lock; every exit so far with the QEMU
  function that handled it; the serial console growing byte by byte (and
  QEMU's exit status once ``isa-debug-exit`` set it);
* ``timeline`` — guest / KVM / user-space lanes, one box per exit;
* ``kvm_run`` — the ``struct kvm_run`` fields each exit filled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import traitlets

from vbook.widgets.player import CSS, esm_with
from vbook.widgets.run_loop import _RunPlayer

HERE = Path(__file__).parent
PANE_JS = HERE / "qemu_pane.js"
PANE_CSS = HERE / "qemu_pane.css"


class QemuLoopView(_RunPlayer):
    """Step through a modelled QEMU run: QEMU's stack and handlers, the console, the lanes, kvm_run.

    ``QemuLoopView(result_or_trace, step=0, speed=4.0)`` where the result is a
    :class:`~vbook.models.run_loop.LoopResult`. The browser does the stepping.
    """

    _esm = esm_with(PANE_JS)
    _css = CSS.read_text(encoding="utf-8") + "\n" + PANE_CSS.read_text(encoding="utf-8")
    panes = traitlets.Unicode("qemu timeline kvm_run").tag(sync=True)

    def __init__(self, trace: Any, *, step: int = 0, speed: float = 4.0, **kw: Any):
        super().__init__(trace, step=step, speed=speed, **kw)


def show_loop(result: Any, *, step: int = 0, speed: float = 4.0) -> QemuLoopView:
    """The usual way to show a modelled run: ``show_loop(run_loop.run(guest))``."""
    return QemuLoopView(result, step=step, speed=speed)


__all__ = ["QemuLoopView", "show_loop"]
