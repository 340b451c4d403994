"""`make bench`: speed figures of the book, printed (never asserted in tests).

- exits/s of the unicorn backend and of real KVM on the same guest, one run each
- `import vbook` time
- each chapter's execution time (nbclient), and the whole book
Budgets (DESIGN.md): chapter < 10 s, book < 60 s, import < 0.3 s.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vbook.backends import available, open_vcpu  # noqa: E402
from vbook.errors import VbookError  # noqa: E402
from vbook.guests.base import Guest  # noqa: E402
from vbook.models.kvm_api import ExitReason  # noqa: E402

N = 100_000


def out_loop(n: int) -> Guest:
    """mov ecx, n / l: out 0x80, al / dec ecx / jnz l / hlt — n OUT exits, then HLT."""
    code = bytes([0x66, 0xB9]) + n.to_bytes(4, "little") + bytes(
        [0xE6, 0x80, 0x66, 0x49, 0x75, 0xFA, 0xF4])
    listing = f"mov ecx, {n}\nl: out 0x80, al\ndec ecx\njnz l\nhlt"
    return Guest("out_loop", 16, code, listing, "bench: a tight OUT loop")


def exits_per_second(backend: str, n: int = N) -> float:
    with open_vcpu(out_loop(n), backend) as vcpu:
        t = time.perf_counter()
        count = 0
        while True:
            count += 1
            if vcpu.run().reason == ExitReason.HLT:
                break
        dt = time.perf_counter() - t
    if count != n + 1:
        raise SystemExit(f"{backend}: expected {n + 1} exits, got {count}")
    return count / dt


def import_time() -> float:
    code = "import time; t = time.perf_counter(); import vbook; print(time.perf_counter() - t)"
    return min(float(subprocess.check_output([sys.executable, "-c", code])) for _ in range(5))


def chapter_times() -> list[tuple[str, float]]:
    import nbformat
    from nbclient import NotebookClient

    out = []
    for path in sorted(glob.glob("chapters/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        t = time.perf_counter()
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": "chapters"}}).execute()
        out.append((os.path.basename(path), time.perf_counter() - t))
    return out


def main() -> None:
    print("vbook bench (figures, not pass/fail; budgets in DESIGN.md)")
    rates = {}
    for backend, why in available().items():
        if why:
            print(f"  {backend:8s} exits/s: unavailable ({why})")
            continue
        try:
            rates[backend] = exits_per_second(backend)
            print(f"  {backend:8s} exits/s: {rates[backend]:,.0f}  ({N:,} OUT exits + HLT)")
        except VbookError as e:
            print(f"  {backend:8s} exits/s: failed ({e})")
    if len(rates) == 2:
        print(f"  unicorn / kvm ratio: {rates['unicorn'] / rates['kvm']:.2f}")
    print(f"  import vbook: {import_time() * 1000:.0f} ms (budget 300 ms)")
    total = 0.0
    for name, dt in chapter_times():
        total += dt
        print(f"  chapter {name}: {dt:.1f} s (budget 10 s)")
    print(f"  whole book: {total:.1f} s (budget 60 s)")


if __name__ == "__main__":
    main()
