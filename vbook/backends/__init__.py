"""Where the models meet real things: vCPU backends (unicorn, /dev/kvm), tap, disk.

``open_vcpu(guest, backend)`` gives a :class:`~vbook.backends.base.VCpu` with
the guest loaded. ``backend="auto"`` takes real KVM when it can be used and
unicorn otherwise; ``available()`` says which can be used here and why not.
"""

from __future__ import annotations

import os
from typing import Any

from vbook.backends.base import Exit, HypercallExit, IoExit, MmioExit, Regs, VCpu
from vbook.errors import BackendUnavailable
from vbook.guests.base import Guest

BACKENDS = ("unicorn", "kvm")
#: network back ends (not vCPU back ends: they are not in BACKENDS or available())
NET_BACKENDS = ("tap", "loopback")

__all__ = ["BACKENDS", "NET_BACKENDS", "Exit", "HypercallExit", "IoExit", "MmioExit", "Regs", "VCpu",
           "available", "net_available", "open_net", "open_vcpu", "pick"]


def _cls(name: str) -> Any:
    if name == "unicorn":
        from vbook.backends.unicorn_cpu import UnicornVcpu
        return UnicornVcpu
    if name == "kvm":
        from vbook.backends.kvm import KvmVcpu
        return KvmVcpu
    raise BackendUnavailable(name, f"no such backend; choose one of {', '.join(BACKENDS)}")


def available() -> dict[str, str | None]:
    """Backend name → None if usable here, else the reason it is not."""
    out: dict[str, str | None] = {}
    for name in BACKENDS:
        try:
            _cls(name).check_available()
            out[name] = None
        except BackendUnavailable as e:
            out[name] = e.reason
        except ImportError as e:
            out[name] = f"cannot import: {e}"
    return out


def pick(backend: str = "auto") -> str:
    """Resolve "auto": ``$VBOOK_BACKEND`` if set, else "kvm" when /dev/kvm is usable,
    else "unicorn". (``VBOOK_BACKEND=unicorn`` shows a chapter as Binder runs it.)"""
    if backend != "auto":
        return backend
    forced = os.environ.get("VBOOK_BACKEND", "")
    if forced:
        if forced not in BACKENDS:
            raise BackendUnavailable(forced, f"VBOOK_BACKEND={forced!r} is not one of "
                                             f"{', '.join(BACKENDS)}")
        return forced
    return "kvm" if available()["kvm"] is None else "unicorn"


def open_vcpu(guest: Guest, backend: str = "unicorn", **kw: Any) -> VCpu:
    """A vCPU of ``backend`` ("unicorn", "kvm" or "auto") with ``guest`` loaded."""
    return _cls(pick(backend)).from_guest(guest, **kw)


def net_available() -> dict[str, str | None]:
    """Net back end ("tap", "loopback") → None if usable here, else why not."""
    from vbook.backends.loopback_net import net_available as _net_available

    return _net_available()


def open_net(prefer: str = "tap", **kw: Any) -> Any:
    """A real tap when one can be made here, else the loopback peer (``.why_not_tap``)."""
    from vbook.backends.loopback_net import open_net as _open_net

    return _open_net(prefer, **kw)
