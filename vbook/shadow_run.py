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
the model's first pass counts from zero.

The three write scenarios (:mod:`vbook.guests.shadow_writes`: a CPL-3 guest
that writes one of its own page-table entries K times, one ``KVM_RUN`` per
write) have the same three parts: :func:`predict_writes` replays the built
guest's accesses (``ShadowWrites.runs()``, with the values written) on a
:class:`~vbook.models.shadow.ShadowMmu`; :func:`measure_writes` /
:func:`kvm_write_runs` take the ``KVM_GET_STATS_FD`` deltas of each ``KVM_RUN``
and the value each run's ``OUT`` carried (what the guest read after its write);
:func:`writes_side_by_side` gives a :class:`WritesSideBySide`. Nothing here prints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from vbook.errors import BackendUnavailable, VbookError
from vbook.guests import shadow_writes, touch_pages
from vbook.models.shadow import ShadowMmu, VcpuStat, VmStat

__all__ = ["COUNTERS", "SCENARIOS", "WRITE_KS", "Passes", "SideBySide", "WriteRuns",
           "WritesSideBySide", "kvm_passes", "kvm_write_runs", "measure", "measure_writes", "predict",
           "predict_writes", "replay_writes", "require_kvm", "side_by_side", "writes_side_by_side"]

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


@contextmanager
def _cpl3_vcpu(g: Any, timeout: float) -> Iterator[Any]:
    """A KvmVcpu with the built guest ``g`` (its ``guest()``, ``mem``, ``cr3``, ``rip``,
    ``rsp``) started in 64-bit mode at CPL 3; closed on the way out."""
    from vbook.backends.kvm import KvmVcpu
    from vbook.backends.long_mode import start_in_long_mode

    vcpu = KvmVcpu.from_guest(g.guest(), timeout=timeout)
    try:
        start_in_long_mode(vcpu, g.mem, g.cr3, g.rip, g.rsp, cpl=3)
        yield vcpu
    finally:
        vcpu.close()


def measure(n: int, timeout: float = 5.0) -> Passes:
    """The same two passes on /dev/kvm: ``KVM_GET_STATS_FD`` deltas around each ``KVM_RUN``."""
    require_kvm()
    with _cpl3_vcpu(touch_pages.build(n), timeout) as vcpu:
        first, second = kvm_passes(vcpu, n)
    return Passes(n, "kvm", first, second)


def _footer(unit: str, shown: list[str], measured: bool, why: str | None, host: str,
            equal: bool | None) -> list[str]:
    """The last lines of a side-by-side table: the counters 0 everywhere, and where the
    kernel column came from (or why it is empty)."""
    zero = [c for c in COUNTERS if c not in shown]
    out = [f"0 in every {unit}{', in both' if measured else ''}: {', '.join(zero)}"] if zero else []
    if not measured:
        return out + [f"kernel: unavailable: {why}"]
    return out + [f"kernel: KVM_GET_STATS_FD on /dev/kvm ({host}); equal to the model: {equal}"]


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
        lines += _footer("pass", shown, self.kernel is not None, self.why, self.host, self.equal)
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


# --- the write scenarios: a guest writing its own page-table entries -----------------------

#: the scenarios of :mod:`vbook.guests.shadow_writes`: name -> what the guest does
SCENARIOS: dict[str, str] = dict(shadow_writes.SCENARIOS)
#: the K of chapter 05's tables (each run j <= K is the same in every K)
WRITE_KS = (1, 2, 3, 5)


def _zero() -> dict[str, int]:
    return dict.fromkeys(COUNTERS, 0)


@dataclass(frozen=True)
class WriteRuns:
    """The counter deltas of each ``KVM_RUN`` of ``shadow_writes.build(scenario, k)``, from ``source``.

    ``runs[0]`` is run 0 (the first fetch and the read of PROBE); ``runs[j]`` is
    write j, j = 1 .. K. ``seen[j]`` is what run j's ``OUT`` carried: the low 32
    bits of what the guest read after the write (of PROBE in run 0).
    """

    scenario: str
    k: int
    source: str                    # "model" or "kvm"
    runs: tuple[dict[str, int], ...]
    seen: tuple[int, ...]

    @property
    def total(self) -> dict[str, int]:
        """The sums over every run: what one read of the counters around the whole guest gives."""
        return {c: sum(r[c] for r in self.runs) for c in COUNTERS}

    def __repr__(self) -> str:
        moved = ", ".join(f"{c}={v}" for c, v in self.total.items() if v) or "nothing"
        return f"WriteRuns({self.scenario!r}, k={self.k}, {self.source}: {len(self.runs)} runs, {moved})"


def replay_writes(g: shadow_writes.ShadowWrites) -> WriteRuns:
    """Run :class:`ShadowMmu` over the built guest's accesses, run by run (``g.mem`` changes as
    the guest's and KVM's writes land: the values written, the A/D bits KVM's walker sets);
    what the guest reads after each write is the first 4 bytes at the spte's frame."""
    mmu = ShadowMmu(g.mem, g.cr3)
    before, runs, seen = _zero(), [], []
    for j, run in enumerate(g.runs()):
        read = 0
        for a in run:
            if a.kind == "w":
                mmu.write(a.gva, a.value, a.size, user=True)
                continue
            o = mmu.access(a.gva, a.kind, user=True)
            if o.gpa is None:
                raise VbookError(f"shadow_writes {g.scenario} run {j}: the model says {a} faults "
                                 f"({o.ret}); the guest has no IDT for that")
            if a.kind == "r":
                read = g.mem.read_u32(o.gpa)
        after = mmu.stats()
        runs.append({c: after[c] - before[c] for c in COUNTERS})
        seen.append(read)
        before = after
    return WriteRuns(g.scenario, g.k, "model", tuple(runs), tuple(seen))


def predict_writes(scenario: str, k: int) -> WriteRuns:
    """What :class:`ShadowMmu` counts, run by run, for ``shadow_writes.build(scenario, k)``,
    and what the guest reads after each write: :func:`replay_writes` of a fresh build."""
    return replay_writes(shadow_writes.build(scenario, k))


def kvm_write_runs(vcpu: Any, g: shadow_writes.ShadowWrites) -> tuple[list[dict[str, int]], list[int]]:
    """Run ``g`` (already started on ``vcpu``) for its K + 1 ``KVM_RUN``s: the vCPU and VM
    counter deltas (``KVM_GET_STATS_FD``) of each, for :data:`COUNTERS`, and the 32-bit value
    each run's ``OUT`` carried. Every run must end in the guest's 4-byte ``OUT`` to the test
    port, and one more run in its ``OUT`` of ``DONE`` (so the guest did exactly K writes),
    else :class:`~vbook.errors.VbookError`."""
    from vbook.backends import kvm_stats

    def out(ex: Any, j: int) -> int:
        io = ex.io
        if io is None or io.port != shadow_writes.TESTDEV_PORT or io.direction.name != "OUT" \
                or len(io.data) != 4:
            raise VbookError(f"shadow_writes {g.scenario} on kvm, run {j}: expected a 4-byte OUT to "
                             f"{shadow_writes.TESTDEV_PORT:#x}, got {ex}")
        return int.from_bytes(io.data, "little")

    runs: list[dict[str, int]] = []
    seen: list[int] = []
    vm, vc = kvm_stats.vm_stats(vcpu), kvm_stats.vcpu_stats(vcpu)
    try:
        for j in range(g.k + 1):
            b_vm, b_vc = vm.read(), vc.read()
            ex = vcpu.run()
            a_vm, a_vc = vm.read(), vc.read()
            seen.append(out(ex, j))
            d = {**kvm_stats.delta(b_vc, a_vc), **kvm_stats.delta(b_vm, a_vm)}
            runs.append({c: int(d[c]) for c in COUNTERS})
    finally:
        vm.close()
        vc.close()
    last = out(vcpu.run(), g.k + 1)
    if last != shadow_writes.DONE:
        raise VbookError(f"shadow_writes {g.scenario} on kvm: after {g.k} writes the guest sent "
                         f"{last:#x}, not DONE {shadow_writes.DONE:#x}")
    return runs, seen


def measure_writes(scenario: str, k: int, timeout: float = 5.0) -> WriteRuns:
    """The same runs on /dev/kvm: ``KVM_GET_STATS_FD`` deltas around each ``KVM_RUN``."""
    g = shadow_writes.build(scenario, k)          # bad input fails before any KVM is asked
    require_kvm()
    with _cpl3_vcpu(g, timeout) as vcpu:
        runs, seen = kvm_write_runs(vcpu, g)
    return WriteRuns(scenario, k, "kvm", tuple(runs), tuple(seen))


@dataclass(frozen=True)
class WritesSideBySide:
    """Model and kernel, run by run, for one scenario and K; ``kernel`` None (with ``why``) if
    not measured."""

    scenario: str
    k: int
    model: WriteRuns
    kernel: WriteRuns | None
    why: str | None = None
    host: str = ""

    @property
    def equal(self) -> bool | None:
        """Every counter of every run, and what the guest read, the same? None if not measured."""
        if self.kernel is None:
            return None
        return (self.model.runs, self.model.seen) == (self.kernel.runs, self.kernel.seen)

    def _shown(self) -> list[str]:
        runs = list(self.model.runs) + list(self.kernel.runs if self.kernel else ())
        return [c for c in COUNTERS if any(r[c] for r in runs)]

    def table(self) -> str:
        g = shadow_writes.build(self.scenario, 0)
        what = " / ".join(f"{v:#x}" for v in dict.fromkeys(g.values))   # odd / even writes
        heads = [f"run {j}" for j in range(self.k + 1)] + ["total"]
        k = self.kernel
        rows: list[tuple[str, list[str]]] = []
        for c in self._shown():
            m = [self.model.runs[j][c] for j in range(self.k + 1)] + [self.model.total[c]]
            kv = ([k.runs[j][c] for j in range(self.k + 1)] + [k.total[c]]) if k else [None] * len(m)
            rows.append((c, [f"{a}/{'—' if b is None else b}" for a, b in zip(m, kv, strict=True)]))
        rows.append(("guest read, model", [f"{v:#x}" for v in self.model.seen] + [""]))
        rows.append(("guest read, kernel", ([f"{v:#x}" for v in k.seen] if k else
                                            ["—"] * (self.k + 1)) + [""]))
        w = max(len(s) for _, cells in rows for s in cells + heads) + 2
        lines = [f"{self.scenario}, K = {self.k}: {SCENARIOS[self.scenario]}",
                 f"run 0 reads {g.probe:#x}; run j writes {what} to {g.entry:#x}, then reads "
                 f"{g.look:#x}   (cells: model/kernel)",
                 f"{'counter':20s}" + "".join(f"{h:>{w}s}" for h in heads)]
        lines += [(f"{name:20s}" + "".join(f"{s:>{w}s}" for s in cells)).rstrip() for name, cells in rows]
        lines += _footer("run", self._shown(), k is not None, self.why, self.host, self.equal)
        return "\n".join(lines)

    def __repr__(self) -> str:
        head = f"WritesSideBySide({self.scenario!r}, K = {self.k}: "
        if self.kernel is None:
            return head + f"model only; kernel unavailable: {self.why})"
        return head + f"model vs kvm ({self.host}), equal: {self.equal})"

    def __str__(self) -> str:
        return self.table()


def writes_side_by_side(scenario: str, k: int = WRITE_KS[-1]) -> WritesSideBySide:
    """:func:`predict_writes` and, where it can be done, :func:`measure_writes`."""
    model = predict_writes(scenario, k)
    try:
        kernel = measure_writes(scenario, k)
    except BackendUnavailable as e:
        return WritesSideBySide(scenario, k, model, None, e.reason)
    except VbookError as e:
        return WritesSideBySide(scenario, k, model, None, f"{type(e).__name__}: {e}")
    from vbook.host import detect, mmu_mode

    kind = detect().kind
    return WritesSideBySide(scenario, k, model, kernel, None, f"{kind}, {mmu_mode(kind)}")
