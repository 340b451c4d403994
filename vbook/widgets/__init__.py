"""Widgets that render a finished :class:`~vbook.trace.Trace`; they never compute a model.

Each widget gets the whole trace in one synced traitlet and steps through it
in the browser (``trace_player.js``), so it also animates in a static HTML
export with no kernel. :func:`static_html` writes a self-contained page
(ESM, CSS and trace inlined) for sites that cannot load the Jupyter widget
manager.

>>> from vbook.runner import run_guest                       # doctest: +SKIP
>>> from vbook.guests import ALL                             # doctest: +SKIP
>>> show_run(run_guest(ALL["hello"], "unicorn"))             # doctest: +SKIP
"""

from __future__ import annotations

from vbook.widgets.hypercall import HypercallView, show_hypercalls
from vbook.widgets.kernel_loop import KernelLoopView, show_kernel_loop
from vbook.widgets.packet_flow import PacketFlowView, packet_flow, show_packet_flow
from vbook.widgets.player import (
    StepError,
    TracePlayer,
    as_trace,
    inline_widgets,
    notebook_html,
    static_html,
)
from vbook.widgets.qemu_loop import QemuLoopView, show_loop
from vbook.widgets.ring import RingRecorder, RingView, show_ring
from vbook.widgets.run_loop import (
    KvmRunView,
    RunLoopTimeline,
    RunView,
    kvm_run_layout,
    show_run,
)
from vbook.widgets.shadow import ShadowRecorder, ShadowSyncView, show_shadow
from vbook.widgets.walk import WalkRequestError, WalkView, show_ept_walk, show_walk
from vbook.widgets.walk2d import Walk2dGrid, show_walk_2d

__all__ = [
    "HypercallView",
    "KernelLoopView",
    "KvmRunView",
    "PacketFlowView",
    "QemuLoopView",
    "RingRecorder",
    "RingView",
    "RunLoopTimeline",
    "RunView",
    "ShadowRecorder",
    "ShadowSyncView",
    "StepError",
    "TracePlayer",
    "Walk2dGrid",
    "WalkRequestError",
    "WalkView",
    "as_trace",
    "inline_widgets",
    "kvm_run_layout",
    "notebook_html",
    "packet_flow",
    "show_ept_walk",
    "show_hypercalls",
    "show_kernel_loop",
    "show_loop",
    "show_packet_flow",
    "show_ring",
    "show_run",
    "show_shadow",
    "show_walk",
    "show_walk_2d",
    "static_html",
]
