"""Chapter 05's measurement: the shadow-MMU model and the real KVM, counter by counter.

The guest is :mod:`vbook.guests.touch_pages` (64-bit, CPL 3, N fresh 4 KiB pages
on identity-mapped tables with A = D = 0). One pass fetches from the code page,
stores one byte into each data page and leaves with an ``OUT``; the next
``KVM_RUN`` is a second pass over the same pages.

* :func:`predict` runs :class:`vbook.models.shadow.ShadowMmu` over the built
  guest's accesses (``TouchPages.accesses``, in program order, CPL 3) — pure.
* :func:`measure` runs the same image on /dev/kvm and reads the vCPU and VM
  counters (``KVM_GET_STATS_FD``) around each ``KVM_RUN``; it raises
  :class:`~vbook.errors.BackendUnavailable` with the reason where that cannot be
  done. The same run as tests/test_shadow_kvm.py.
* :func:`side_by_side` puts both in one :class:`SideBySide` table.

The model's constructor is the first ``KVM_RUN``'s ``kvm_mmu_load`` (the root
shadow page: one ``mmu_cache_miss``), which the measured first pass includes, so
the model's first pass counts from zero. Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from vbook.errors import BackendUnavailable, VbookError
from vbook.guests import touch_pages
from vbook.models.shadow import ShadowMmu, VcpuStat, VmStat

__all__ = ["COUNTERS", "Passes", "SideBySide", "kvm_passes", "measure", "predict", "require_kvm",
           "side_by_side"]

#: every counter the model moves, under the kernel's names (vCPU, then VM), in
#: the order of ``ShadowMmu.stats()``
COUNTERS: tuple[str, ...] = tuple(f.name for cls in (VcpuStat, VmStat) for f in fields(cls))

NS = (1, 4, 16)


@dataclass(frozen=True)
class Passes:
    """The counter deltas of the two passes of ``touch_pages.build(n)``, from ``source``."""

    n: int
    source: str                    # "model" or "kvm"
    first: dict[str, int]
    second: dict[str, int]

    def __repr__(self) -> str:
        def nz(d: dict[str, int]) -> str:
            return ", ".join(f"{k}={v}" for k, v in d.items() if v) or "nothing"
        return (f"Passes(n={self.n}, {self.source}: first pass {nz(self.first)}; "
                f"second pass {nz(self.second)})")


def _model_pass(mmu: ShadowMmu, accesses: list[tuple[int, str]], before: dict[str, int]) -> dict[str, int]:
    for gva, kind in accesses:
        mmu.access(gva, kind, user=True)
    after = mmu.stats()
    return {k: after[k] - before[k] for k in COUNTERS}


def predict(n: int) -> Passes:
    """What :class:`ShadowMmu` counts for the two passes of ``touch_pages.build(n)``."""
    g = touch_pages.build(n)
    mmu = ShadowMmu(g.mem, g.cr3)
    first = _model_pass(mmu, g.accesses(), dict.fromkeys(COUNTERS, 0))
    second = _model_pass(mmu, g.accesses(), mmu.stats())
    return Passes(n, "model", first, second)


def require_kvm() -> Any:
    """The kvm_stats module, or BackendUnavailable saying why /dev/kvm or its stats cannot be used."""
    from vbook.backends import available

    why = available()["kvm"]
    if why:
        raise BackendUnavailable("kvm", why)
    from vbook.backends import kvm_stats

    kvm_stats.check_available()
    return kvm_stats


def kvm_passes(vcpu: Any, n: int, passes: int = 2) -> list[dict[str, int]]:
    """Run ``touch_pages.build(n)``, already started on ``vcpu``, for ``passes`` KVM_RUNs:
    the vCPU and VM counter deltas (``KVM_GET_STATS_FD``) of each, for :data:`COUNTERS`.
    Each run must end in the guest's ``OUT`` of N, else :class:`~vbook.errors.VbookError`.
    (``vm_stats`` raises BackendUnavailable where the kernel has no binary stats.)"""
    from vbook.backends import kvm_stats

    expected = (touch_pages.TESTDEV_PORT, "OUT", n.to_bytes(4, "little"))
    runs: list[dict[str, int]] = []
    vm, vc = kvm_stats.vm_stats(vcpu), kvm_stats.vcpu_stats(vcpu)
    try:
        for _ in range(passes):
            b_vm, b_vc = vm.read(), vc.read()
            ex = vcpu.run()
            a_vm, a_vc = vm.read(), vc.read()
            io = ex.io
            if io is None or (io.port, io.direction.name, io.data) != expected:
                raise VbookError(f"touch_pages({n}) on kvm: expected OUT {expected[0]:#x}, got {ex}")
            d = {**kvm_stats.delta(b_vc, a_vc), **kvm_stats.delta(b_vm, a_vm)}
            runs.append({k: int(d[k]) for k in COUNTERS})
    finally:
        vm.close()
        vc.close()
    return runs


def measure(n: int, timeout: float = 5.0) -> Passes:
    """The same two passes on /dev/kvm: ``KVM_GET_STATS_FD`` deltas around each ``KVM_RUN``."""
    require_kvm()
    from vbook.backends.kvm import KvmVcpu
    from vbook.backends.long_mode import start_in_long_mode

    g = touch_pages.build(n)
    vcpu = KvmVcpu.from_guest(g.guest(), timeout=timeout)
    try:
        start_in_long_mode(vcpu, g.mem, g.cr3, g.rip, g.rsp, cpl=3)
        first, second = kvm_passes(vcpu, n)
    finally:
        vcpu.close()
    return Passes(n, "kvm", first, second)


@dataclass(frozen=True)
class SideBySide:
    """Model and kernel counters for each N; ``kernel`` is None (with ``why``) where not measured."""

    ns: tuple[int, ...]
    model: tuple[Passes, ...]
    kernel: tuple[Passes, ...] | None
    why: str | None = None          # why the kernel column is empty
    host: str = ""                  # mmu_mode of the host measured on

    @property
    def equal(self) -> bool | None:
        """Do model and kernel agree on every counter, both passes, every N? None if not measured."""
        if self.kernel is None:
            return None
        pairs = zip(self.model, self.kernel, strict=True)
        return all((m.first, m.second) == (k.first, k.second) for m, k in pairs)

    def _shown(self) -> list[str]:
        """The counters non-zero somewhere (in either column); the rest are 0 everywhere."""
        runs = list(self.model) + list(self.kernel or ())
        return [c for c in COUNTERS if any(p.first[c] or p.second[c] for p in runs)]

    def table(self) -> str:
        shown = self._shown()
        lines = [f"{'N':>3s}  {'counter':16s} {'model (1st, 2nd)':>18s} {'kernel (1st, 2nd)':>18s}"]
        for i, n in enumerate(self.ns):
            m = self.model[i]
            k = self.kernel[i] if self.kernel is not None else None
            for c in shown:
                kv = "—" if k is None else f"{k.first[c]}, {k.second[c]}"
                lines.append(f"{n:>3d}  {c:16s} {f'{m.first[c]}, {m.second[c]}':>18s} {kv:>18s}")
        zero = [c for c in COUNTERS if c not in shown]
        if zero:
            lines.append(f"0 in every pass{'' if self.kernel is None else ', in both'}: {', '.join(zero)}")
        if self.kernel is None:
            lines.append(f"kernel: unavailable: {self.why}")
        else:
            lines.append(f"kernel: KVM_GET_STATS_FD on /dev/kvm ({self.host}); "
                         f"equal to the model: {self.equal}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        ns = ", ".join(map(str, self.ns))
        if self.kernel is None:
            return f"SideBySide(N = {ns}: model only; kernel unavailable: {self.why})"
        return f"SideBySide(N = {ns}: model vs kvm ({self.host}), equal: {self.equal})"

    def __str__(self) -> str:
        return self.table()


def side_by_side(ns: tuple[int, ...] = NS) -> SideBySide:
    """:func:`predict` and, where it can be done, :func:`measure` for each N."""
    ns = tuple(ns)
    model = tuple(predict(n) for n in ns)
    try:
        kernel = tuple(measure(n) for n in ns)
    except BackendUnavailable as e:
        return SideBySide(ns, model, None, e.reason)
    except VbookError as e:
        return SideBySide(ns, model, None, f"{type(e).__name__}: {e}")
    from vbook.host import detect, mmu_mode

    kind = detect().kind
    return SideBySide(ns, model, kernel, None, f"{kind}, {mmu_mode(kind)}")
