"""`make bench`: speed figures of the book, printed (never asserted in tests).

- exits/s on one tight OUT-loop guest (``out_loop``), measured in this one run,
  the loops interleaved, each figure the median of 3: a bare C ``KVM_RUN`` loop
  (compiled here with gcc against <linux/kvm.h>), the minimal Python loop
  (``fcntl.ioctl`` + one ``memoryview`` read of exit_reason), ``KvmVcpu.run()``
  and the unicorn backend; then their ratios
- `import vbook` time
- each chapter's execution time (nbclient), and the whole book
Budgets (DESIGN.md): KvmVcpu.run() >= 0.8x the minimal Python loop, unicorn no
slower than the kvm backend; chapter < 10 s, book < 60 s, import < 0.3 s.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vbook.backends import available, open_vcpu  # noqa: E402
from vbook.errors import VbookError  # noqa: E402
from vbook.guests.base import Guest  # noqa: E402
from vbook.models.kvm_api import ExitReason, Ioctl  # noqa: E402

N = 100_000  # OUT exits per measurement (then one HLT)
ROUNDS = 3  # each figure is the median of this many, the loops interleaved


def out_loop(n: int) -> Guest:
    """mov ecx, n / l: out 0x80, al / dec ecx / jnz l / hlt — n OUT exits, then HLT."""
    code = bytes([0x66, 0xB9]) + n.to_bytes(4, "little") + bytes(
        [0xE6, 0x80, 0x66, 0x49, 0x75, 0xFA, 0xF4])
    listing = f"mov ecx, {n}\nl: out 0x80, al\ndec ecx\njnz l\nhlt"
    return Guest("out_loop", 16, code, listing, "bench: a tight OUT loop")


# --- the loops: each returns exits/s for n OUT exits + HLT -----------------------------

def backend_rate(backend: str, n: int = N) -> float:
    """KvmVcpu.run() / UnicornVcpu.run(), called as a VMM would, in a lean loop."""
    hlt = ExitReason.HLT
    with open_vcpu(out_loop(n), backend) as vcpu:
        run = vcpu.run
        count = 1
        t = time.perf_counter()
        while run().reason is not hlt:
            count += 1
        dt = time.perf_counter() - t
    if count != n + 1:
        raise SystemExit(f"{backend}: expected {n + 1} exits, got {count}")
    return count / dt


def minimal_rate(n: int = N, with_arg: bool = True) -> float:
    """``fcntl.ioctl(vcpu_fd, KVM_RUN, 0)`` and one memoryview read of exit_reason.

    KvmVcpu only sets the VM up (its fds); its run() is never called, so no
    kick timer interrupts this loop. ``with_arg=False`` leaves out the third
    argument, as KvmVcpu.run() does (CPython 3.11 first tries an int there as
    a buffer, twice).
    """
    import fcntl

    from vbook.backends.kvm import KICK_SIGNAL, KvmVcpu

    io, kvm_run = int(ExitReason.IO), int(Ioctl.RUN)
    ioctl = fcntl.ioctl
    vcpu = KvmVcpu.from_guest(out_loop(n))
    try:
        fd = vcpu._vcpu
        exit_reason = memoryview(vcpu._run).cast("I")  # exit_reason: u32 at offset 8
        try:
            count = 0
            t = time.perf_counter()
            while True:
                try:
                    if with_arg:
                        ioctl(fd, kvm_run, 0)
                    else:
                        ioctl(fd, kvm_run)
                except InterruptedError:  # not expected: no kicker runs here
                    signal.sigtimedwait((KICK_SIGNAL,), 0)
                    continue
                count += 1
                if exit_reason[2] != io:
                    break
            dt = time.perf_counter() - t
        finally:
            exit_reason.release()  # else closing the mmap fails
    finally:
        vcpu.close()
    if count != n + 1:
        raise SystemExit(f"minimal loop: expected {n + 1} exits, got {count}")
    return count / dt


C_LOOP = r"""
/* A bare KVM_RUN loop: the guest of tools/bench.py out_loop, real mode, no
 * CPUID or signal mask (nothing the loop needs); prints "<exits> <seconds>". */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what) { perror(what); return 1; }

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: dev code load_addr mem_size stack_top\n"); return 2; }
    unsigned long load = strtoul(argv[3], 0, 0), size = strtoul(argv[4], 0, 0);
    unsigned long stack = strtoul(argv[5], 0, 0);
    FILE *f = fopen(argv[2], "rb");
    if (!f) return fail("code");
    int kvm = open(argv[1], O_RDWR | O_CLOEXEC);
    if (kvm < 0) return fail(argv[1]);
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) return fail("KVM_GET_API_VERSION");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) return fail("KVM_CREATE_VM");
    unsigned char *mem = mmap(0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return fail("mmap");
    size_t len = fread(mem + load, 1, size - load, f);
    fclose(f);
    struct kvm_userspace_memory_region region = {0, 0, 0, size, (unsigned long)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0 || !len)
        return fail("KVM_SET_USER_MEMORY_REGION");
    if (ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_SET_TSS_ADDR) > 0)
        ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL);
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) return fail("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(0, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) return fail("mmap kvm_run");
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) return fail("KVM_GET_SREGS");
    struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss};
    for (int i = 0; i < 6; i++) segs[i]->base = segs[i]->selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) return fail("KVM_SET_SREGS");
    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = load; regs.rsp = stack; regs.rflags = 2;
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) return fail("KVM_SET_REGS");
    struct timespec t0, t1;
    unsigned long exits = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR) continue;
            return fail("KVM_RUN");
        }
        exits++;
        if (run->exit_reason != KVM_EXIT_IO) break;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (run->exit_reason != KVM_EXIT_HLT) {
        fprintf(stderr, "exit_reason %u after %lu exits\n", run->exit_reason, exits);
        return 1;
    }
    printf("%lu %.9f\n", exits, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
"""


def build_c_loop(workdir: str) -> tuple[Callable[[], float] | None, str]:
    """(a function giving the C loop's exits/s, "") or (None, why it cannot run here)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "no gcc on PATH"
    src, exe = os.path.join(workdir, "kvm_loop.c"), os.path.join(workdir, "kvm_loop")
    with open(src, "w") as f:
        f.write(C_LOOP)
    built = subprocess.run([gcc, "-O2", "-o", exe, src], capture_output=True, text=True)
    if built.returncode:
        first = (built.stderr.strip().splitlines() or ["?"])[0]
        return None, f"gcc could not build it against <linux/kvm.h>: {first}"
    guest = out_loop(N)
    code = os.path.join(workdir, "out_loop.bin")
    with open(code, "wb") as f:
        f.write(guest.code)
    from vbook.backends.kvm import kvm_dev

    cmd = [exe, kvm_dev(), code, hex(guest.load_addr), hex(guest.mem_size), hex(guest.stack_top)]

    def rate() -> float:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise VbookError(f"the C loop failed: {done.stderr.strip()}")
        exits, seconds = done.stdout.split()
        if int(exits) != N + 1:
            raise VbookError(f"the C loop saw {exits} exits, expected {N + 1}")
        return int(exits) / float(seconds)

    return rate, ""


def exit_figures() -> None:
    """The exit-loop section: every loop interleaved, ROUNDS rounds, medians and ratios."""
    why_not = available()
    kvm_why = why_not["kvm"]
    loops: dict[str, Callable[[], float] | None] = {}
    reasons: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="vbook-bench-") as tmp:
        names = ("C KVM_RUN loop", "minimal Python loop", "  same, ioctl without the 0",
                 "KvmVcpu.run()", "unicorn backend")
        if kvm_why:
            for name in names[:4]:
                loops[name], reasons[name] = None, kvm_why
        else:
            loops[names[0]], why = build_c_loop(tmp)
            if why:
                reasons[names[0]] = why
            loops[names[1]] = minimal_rate
            loops[names[2]] = lambda: minimal_rate(with_arg=False)
            loops[names[3]] = lambda: backend_rate("kvm")
        if why_not["unicorn"]:
            loops[names[4]], reasons[names[4]] = None, why_not["unicorn"] or ""
        else:
            loops[names[4]] = lambda: backend_rate("unicorn")

        samples: dict[str, list[float]] = {name: [] for name in names}
        for r in range(ROUNDS):
            for name in names[r:] + names[:r]:  # each round in another order
                fn = loops[name]
                if fn is None or name in reasons:
                    continue
                try:
                    samples[name].append(fn())
                except VbookError as e:
                    reasons[name] = f"failed: {e}"
    rates = {name: statistics.median(s) for name, s in samples.items()
             if s and name not in reasons}
    print(f"  exits/s on out_loop ({N:,} OUT exits + HLT; median of {ROUNDS} rounds, the loops "
          "interleaved):")
    for name in names:
        if name in rates:
            print(f"    {name:30s} {rates[name]:>9,.0f}")
        else:
            print(f"    {name:30s} unavailable ({reasons.get(name, '?')})")

    def ratio(label: str, a: str, b: str, budget: str = "") -> None:
        value = f"{rates[a] / rates[b]:.2f}" if a in rates and b in rates else "n/a"
        print(f"    {label:44s} {value}{budget}")

    print("  ratios:")
    ratio("KvmVcpu.run() / minimal Python loop", names[3], names[1], "  (budget >= 0.8)")
    ratio("KvmVcpu.run() / minimal loop without the 0", names[3], names[2])
    ratio("minimal Python loop / C loop", names[1], names[0])
    ratio("minimal loop without the 0 / C loop", names[2], names[0])
    ratio("unicorn / KvmVcpu.run()", names[4], names[3], "  (budget >= 1: no slower)")


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


def walk_figures(n: int = 200_000) -> None:
    """Page walks/s: the scalar walk, walk_many, and a bare 4-gather numpy loop, same addresses."""
    import random

    from vbook.memory import GuestMemory
    from vbook.models import paging
    from vbook.models.paging_np import gather_baseline, walk_many

    mem = GuestMemory(0x1000000, record=False)  # data pages below 4 MiB, ~1500 tables above
    pt = paging.PageTables(mem, 0x400000)
    rng = random.Random(1)
    pages = [rng.randrange(1 << 35) << 12 for _ in range(512)]
    for i, gva in enumerate(pages):
        pt.map(gva, (i % 1024) << 12)
    gvas = [pages[rng.randrange(len(pages))] | rng.randrange(4096) for _ in range(n)]
    loops = (
        ("scalar paging.walk", lambda: [paging.walk(mem, pt.cr3, g) for g in gvas[:20_000]], 20_000),
        ("paging_np.walk_many", lambda: walk_many(mem, pt.cr3, gvas), n),
        ("bare numpy 4-gather baseline", lambda: gather_baseline(mem, pt.cr3, gvas), n))
    times: dict[str, list[float]] = {name: [] for name, _, _ in loops}
    for _ in range(5):  # interleaved rounds, medians: the machine is noisy
        for name, fn, _ in loops:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    rates = {}
    for name, _, count in loops:
        rates[name] = count / statistics.median(times[name])
        print(f"    {name:30s} {rates[name]:13,.0f} walks/s")
    ratio = rates["paging_np.walk_many"] / rates["bare numpy 4-gather baseline"]
    print(f"    walk_many / 4-gather baseline {ratio:8.2f}  (budget >= 0.5)")


def main() -> None:
    print("vbook bench (figures, not pass/fail; budgets in DESIGN.md)")
    exit_figures()
    print("  page walks (4-level, 4 KiB pages, random addresses over 512 mapped pages):")
    walk_figures()
    import bench_net

    bench_net.main()
    print(f"  import vbook: {import_time() * 1000:.0f} ms (budget 300 ms)")
    total = 0.0
    for name, dt in chapter_times():
        total += dt
        print(f"  chapter {name}: {dt:.1f} s (budget 10 s)")
    print(f"  whole book: {total:.1f} s (budget 60 s)")


if __name__ == "__main__":
    if "--exits" in sys.argv[1:]:  # only the exit-loop section
        print("vbook bench: exit loops only")
        exit_figures()
    elif "--net" in sys.argv[1:]:  # only the network section
        import bench_net

        print("vbook bench: network only")
        bench_net.main()
    elif "--walks" in sys.argv[1:]:  # only the page-walk section
        print("vbook bench: page walks only")
        walk_figures()
    else:
        main()
