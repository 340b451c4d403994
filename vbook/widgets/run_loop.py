"""Views of a KVM run loop: who runs when, and what ``struct kvm_run`` says after each exit.

Both render the trace :func:`vbook.runner.run_guest` records (qemu ``ioctl
KVM_RUN``, kvm ``exit`` with ``exit_reason`` and the union fields, device
``io``, qemu ``stop``) — or any trace of the same shape:

* :class:`RunLoopTimeline` — three lanes, guest / KVM (kernel) / user space
  (QEMU and its device models), one box per exit; a marker follows each step
  across the lanes and a caption names the event and its data.
* :class:`KvmRunView` — the fields of ``struct kvm_run`` that each exit fills,
  with C names and ``offsetof`` offsets from :data:`vbook.models.kvm_api.KVM_RUN_OFFSETS`,
  the ones that changed since the previous exit highlighted.
* :class:`RunView` — both, driven by one step.
"""

from __future__ import annotations

from typing import Any, ClassVar

import traitlets

from vbook.models.ctypes_layout import C_TYPES
from vbook.models.ctypes_layout import KVM_RUN_UNION as C_UNION
from vbook.models.kvm_api import (
    KVM_PIO_PAGE_OFFSET,
    KVM_RUN_OFFSETS,
    SIZEOF_KVM_RUN,
    ExitReason,
    Hypercall,
    IoDirection,
)
from vbook.widgets.player import TracePlayer

PAGE_SIZE = 4096  # x86: kvm_run.io.data_offset = KVM_PIO_PAGE_OFFSET * PAGE_SIZE

#: The exit-union members a run trace carries: C field, C type, size in bytes,
#: and the key of the field in the trace's exit event (None: not recorded).
#: Declarations come from :mod:`vbook.models.ctypes_layout` (include/uapi/linux/kvm.h,
#: Linux 6.1); offsets are not repeated here — they come from KVM_RUN_OFFSETS.
_MEMBERS = {"IO": "io", "MMIO": "mmio", "HYPERCALL": "hypercall"}
_TRACED = {"io": {"direction", "size", "port", "count"},
           "mmio": {"phys_addr", "data", "len", "is_write"},
           "hypercall": {"nr", "args", "longmode"}}
KVM_RUN_UNION: dict[str, tuple[str, tuple[tuple[str, str, int, str | None], ...]]] = {
    reason: (member, tuple(
        (f.name, f.ctype + (f"[{f.count}]" if f.count > 1 else ""), C_TYPES[f.ctype] * f.count,
         f.name if f.name in _TRACED[member] else None)
        for f in C_UNION[member] if f.name != "pad"))
    for reason, member in _MEMBERS.items()
}

#: Fields before the union that every exit sets.
KVM_RUN_HEADER: tuple[tuple[str, str, int, str], ...] = (
    ("exit_reason", "__u32", 4, "exit_reason"),
)


def kvm_run_layout() -> dict[str, Any]:
    """What the browser needs to name and place kvm_run fields, all from vbook.models.kvm_api."""
    return {
        "offsets": dict(KVM_RUN_OFFSETS),
        "sizeof": SIZEOF_KVM_RUN,
        "exit_names": {str(int(r)): f"KVM_EXIT_{r.name}" for r in ExitReason},
        "io_directions": {d.name.lower(): int(d) for d in IoDirection},
        "hypercalls": {str(int(h)): f"KVM_HC_{h.name}" for h in Hypercall},
        "pio_data_offset": KVM_PIO_PAGE_OFFSET * PAGE_SIZE,
        "header": [list(f) for f in KVM_RUN_HEADER],
        # keyed by the exit_reason number, as the browser finds it in an exit event
        "union": {
            str(int(ExitReason[reason])): {
                "reason": f"KVM_EXIT_{reason}", "member": member,
                "fields": [list(f) for f in fields],
            }
            for reason, (member, fields) in KVM_RUN_UNION.items()
        },
    }


class _RunPlayer(TracePlayer):
    #: struct kvm_run layout, from vbook.models.kvm_api (see kvm_run_layout)
    kvm_run = traitlets.Dict().tag(sync=True)

    STATE: ClassVar[tuple[str, ...]] = TracePlayer.STATE + ("kvm_run",)

    def __init__(self, trace: Any, *, step: int = 0, speed: float = 2.0, **kw: Any):
        kw.setdefault("kvm_run", kvm_run_layout())
        super().__init__(trace, step=step, speed=speed, **kw)

    def __repr__(self) -> str:
        events = self.trace.get("events", [])
        exits = sum(1 for e in events if e.get("actor") == "kvm" and e.get("kind") == "exit")
        title = self.trace.get("meta", {}).get("title")
        head = f"trace={title!r}, " if title else ""
        return f"{type(self).__name__}({head}{len(events)} events, {exits} exits)"


class RunLoopTimeline(_RunPlayer):
    """The run loop as three lanes (guest, KVM, user space), one box per exit.

    ``RunLoopTimeline(trace_or_result, step=0, speed=2.0)``. Play, step or scrub
    in the browser; the caption explains the current event, e.g.
    ``KVM_EXIT_IO out port 0x3f8 size 1 data 48 ('H')``.
    """

    panes = traitlets.Unicode("timeline").tag(sync=True)


class KvmRunView(_RunPlayer):
    """``struct kvm_run`` after each exit: exit_reason and the union member it selects.

    ``KvmRunView(trace_or_result, step=0, speed=2.0)``. Steps go from exit to
    exit; fields whose value changed since the previous exit are highlighted.
    """

    panes = traitlets.Unicode("kvm_run").tag(sync=True)


class RunView(_RunPlayer):
    """Timeline and ``struct kvm_run`` together, driven by the same step."""

    panes = traitlets.Unicode("timeline kvm_run").tag(sync=True)


def show_run(result: Any, *, step: int = 0, speed: float = 2.0) -> RunView:
    """The usual way to show a run in a chapter: ``show_run(run_guest(guest))``."""
    return RunView(result, step=step, speed=speed)
