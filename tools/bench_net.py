"""`make bench`, the network part: ring operations and packets through the NIC models.

* ring pop + push/s: QEMU's side of a split ring (``vbook.models.vring.Device``: ``pop``
  then ``push``) over chains a Linux-side ``Driver`` published, next to a bare loop that does
  the same reads and writes with ``struct.unpack_from`` / ``pack_into`` on the same bytes;
* packets/s through virtio-net and the e1000, driven by their guest drivers
  (``vbook.net_run.run_ping``, the loopback host end) on unicorn and /dev/kvm — next to the
  same board's exits/s with no NIC work (``out_loop``), so the cost of the device model shows;
* exits per packet for each NIC (counted, the same on every backend).
"""

from __future__ import annotations

import statistics
import struct
import time

ROUNDS = 5


def _ring(num: int):
    """Fresh guest memory and a ring of ``num`` entries at 0x10000 in it."""
    from vbook.memory import GuestMemory
    from vbook.models.vring import Layout

    return GuestMemory(1 << 20, record=False), Layout(num, 0x10000)


def ring_pop_push(num: int = 256, chains: int = 4096) -> float:
    """pops + pushes per second through the model (one pop and one push per chain)."""
    from vbook.models.vring import Device, Driver

    mem, lay = _ring(num)
    drv, dev = Driver(mem, lay), Device(mem, lay)
    done, spent = 0, 0.0
    while done < chains:
        for _ in range(num):                 # the driver's side is not timed
            drv.add(out=[(0x80000, 64)])
        t = time.perf_counter()
        while (c := dev.pop()) is not None:
            dev.push(c, 0)
            done += 1
        spent += time.perf_counter() - t
        while drv.get_used() is not None:
            pass
    return 2 * done / spent


def ring_bare(num: int = 256, chains: int = 4096) -> float:
    """The same reads and writes with struct only: avail idx and ring entry, the 16-byte
    descriptor, then used elem and used idx — no checks, no trace, no chain object."""
    from vbook.models.vring import Driver

    mem, lay = _ring(num)
    drv = Driver(mem, lay)
    buf = mem.buf
    u16, desc, elem = struct.Struct("<H"), struct.Struct("<QIHH"), struct.Struct("<II")
    last_avail = used_idx = done = 0
    spent = 0.0
    while done < chains:
        for _ in range(num):                 # the driver's side is not timed
            drv.add(out=[(0x80000, 64)])
        t = time.perf_counter()
        (avail_idx,) = u16.unpack_from(buf, lay.avail + 2)
        while last_avail != avail_idx:
            (head,) = u16.unpack_from(buf, lay.avail + 4 + 2 * (last_avail % num))
            addr, length, flags, nxt = desc.unpack_from(buf, lay.desc + 16 * head)
            elem.pack_into(buf, lay.used + 4 + 8 * (used_idx % num), head, 0)
            last_avail = (last_avail + 1) & 0xFFFF
            used_idx = (used_idx + 1) & 0xFFFF
            u16.pack_into(buf, lay.used + 2, used_idx)
            done += 1
        spent += time.perf_counter() - t
        while drv.get_used() is not None:
            pass
    return 2 * done / spent


def _median(fn, rounds: int = ROUNDS) -> float:
    return statistics.median(fn() for _ in range(rounds))


def ring_figures() -> None:
    names = (("vring Device pop + push (model)", ring_pop_push),
             ("bare struct.unpack_from loop", ring_bare))
    rates: dict[str, list[float]] = {n: [] for n, _ in names}
    for _ in range(ROUNDS):  # interleaved rounds, medians: the machine is noisy
        for n, fn in names:
            rates[n].append(fn())
    med = {n: statistics.median(v) for n, v in rates.items()}
    for n, _ in names:
        print(f"    {n:34s} {med[n]:13,.0f} ops/s")
    print(f"    model / bare loop {med[names[0][0]] / med[names[1][0]]:22.2f}  "
          "(no budget number in DESIGN.md: 'next to' the bare loop)")


def board_exit_rate(backend: str, n: int = 200) -> float:
    """Exits/s of the same run-loop model on a guest that only makes OUT exits (no NIC work):
    the baseline the packet figures sit next to."""
    from bench import out_loop

    from vbook.models import run_loop

    def once() -> float:
        t = time.perf_counter()
        r = run_loop.run(out_loop(n), backend)
        return len(r.exits) / (time.perf_counter() - t)
    return _median(once, 3)


def packet_figures() -> None:
    from vbook.backends import available
    from vbook.net_run import run_ping

    for backend in ("unicorn", "kvm"):
        why = available()[backend]
        if why:
            print(f"    {backend}: skipped ({why})")
            continue
        print(f"    {backend:7s} baseline: {board_exit_rate(backend):,.0f} exits/s through the "
              "same run loop, OUT exits only")
        for nic in ("virtio-net", "e1000"):
            times, runs = [], []
            for _ in range(3):
                t = time.perf_counter()
                r = run_ping(nic, backend, "loopback")
                times.append(time.perf_counter() - t)
                runs.append(r)
            c = runs[-1].counts
            dt = statistics.median(times)
            total_exits = len(runs[-1].result.exits)
            print(f"    {backend:7s} {nic:10s} {c.packets / dt:9,.0f} packets/s  "
                  f"({c.packets} packets, {total_exits} exits in {dt * 1000:.0f} ms: "
                  f"{total_exits / dt:,.0f} exits/s; {c.per_packet('vm_exits'):.2f} exits/packet)")


def main() -> None:
    print("  virtqueue (256 entries, one-descriptor chains):")
    ring_figures()
    print("  packets through the NIC models, driven by the guest drivers (loopback host end; "
          "a run = bring-up + 4 frames out, 4 in):")
    packet_figures()


if __name__ == "__main__":
    print("vbook bench: network only")
    main()
