"""vbook: an interactive textbook on KVM and QEMU internals that runs.

Models (``vbook.models``) are pure and record traces; backends
(``vbook.backends``) run real guest code on unicorn or /dev/kvm; widgets
(``vbook.widgets``) render traces. Heavy modules are imported lazily so that
``import vbook`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "show_source":
        from vbook.show import show_source

        return show_source
    raise AttributeError(f"module 'vbook' has no attribute {name!r}")
