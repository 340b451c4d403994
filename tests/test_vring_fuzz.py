"""Fuzz the device side: random descriptor tables, indirect tables and avail rings.

The ring is guest memory, so :meth:`Device.pop` must survive anything: every pop
ends in ``None``, a valid :class:`Chain`, or a :class:`VringError` — never another
exception, never a hang (each pop runs under a SIGALRM deadline). Beyond "it did
not crash", every outcome is compared with :func:`reference_pop`, a second,
independently written reading of QEMU 9.2.4's ``virtqueue_split_pop`` that works
on a bytes snapshot of memory. A short driver-side fuzz does the same for a
random used ring (``BAD_RING`` or a real head, nothing else).
"""

from __future__ import annotations

import contextlib
import random
import signal
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbook.errors import BadRing, VirtioError, VringError
from vbook.memory import GuestMemory
from vbook.models.vring import VIRTQUEUE_MAX_SIZE, Device, Driver, Layout

MEM_SIZE = 0x3000
POP_DEADLINE = 2.0   # seconds; a pop takes microseconds


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging) if the body runs longer than ``seconds``."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"pop did not return within {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- the reference: QEMU's pop, read again, on bytes ------------------------------------------

class Fault(Exception):
    pass


def reference_pop(buf: bytes, lay: Layout, last_avail: int, inuse: int, shadow: int | None = None,
                  event_idx: bool = False):
    """None (empty), ``("chain", head, out, in_, indirect)`` or raises Fault(QEMU message).
    ``shadow`` is the device's cached avail->idx: memory is read only when it has caught up.
    With ``event_idx`` the device writes ``avail_event`` after taking the head and *before*
    it reads the descriptors (``virtqueue_split_pop``: ``vring_set_avail_event`` comes first),
    so a table the guest put over that field is read with the new value in it."""
    num, size = lay.num, len(buf)
    buf = bytearray(buf)

    def u16(a):
        return int.from_bytes(buf[a:a + 2], "little")

    def desc(table, i):
        return struct.unpack_from("<QIHH", buf, table + 16 * i)

    avail_idx = shadow if shadow is not None and shadow != last_avail else u16(lay.avail + 2)
    if avail_idx == last_avail:
        return None
    if (avail_idx - last_avail) % 65536 > num:
        raise Fault(f"Guest moved used index from {last_avail} to {avail_idx}")
    if inuse >= num:
        raise Fault("Virtqueue size exceeded")
    head = u16(lay.avail + 4 + 2 * (last_avail % num))
    if head >= num:
        raise Fault(f"Guest says index {head} is available")
    if event_idx:
        buf[lay.avail_event:lay.avail_event + 2] = ((last_avail + 1) & 0xFFFF).to_bytes(2, "little")
    table, limit, indirect = lay.desc, num, None
    addr, length, flags, nxt = desc(table, head)
    if flags & 4:
        if length == 0 or length % 16:
            raise Fault("Invalid size for indirect buffer table")
        if addr + length > size:
            raise Fault("Cannot map indirect buffer")
        table, limit, indirect = addr, length // 16, addr
        addr, length, flags, nxt = desc(table, 0)
    out, in_ = [], []
    for count in range(1, limit + 2):
        if indirect is not None and flags & 4:
            raise Fault("Nested indirect descriptor")
        writable = bool(flags & 2)
        if not writable and in_:
            raise Fault("Incorrect order for descriptors")
        if length == 0:
            raise Fault("virtio: zero sized buffers are not allowed")
        if len(out) + len(in_) == VIRTQUEUE_MAX_SIZE:
            raise Fault("virtio: too many write descriptors in indirect table")
        if addr + length > size:
            raise Fault("virtio: bogus descriptor or out of resources")
        (in_ if writable else out).append((addr, length))
        if count > limit:
            raise Fault("Looped descriptor")
        if not flags & 1:
            return ("chain", head, out, in_, indirect)
        if nxt >= limit:
            raise Fault(f"Desc next is {nxt}")
        addr, length, flags, nxt = desc(table, nxt)
    raise AssertionError("unreachable: the loop check fires first")


# --- random rings ------------------------------------------------------------------------------

def random_desc(rng: random.Random, num: int, lo: int, hi: int):
    r = rng.random
    addr = (rng.randrange(lo, hi - 64) if r() < 0.8 else
            rng.choice([hi - rng.randrange(1, 64), rng.randrange(1 << 64), 0]))
    length = (rng.randrange(1, 64) if r() < 0.75 else
              rng.choice([0, 16 * rng.randrange(1, 7), rng.randrange(1, 1 << 32), 16 * rng.randrange(4) + 8]))
    flags = (rng.choice([0, 1, 2, 3, 1, 3]) if r() < 0.8 else
             rng.choice([4, 5, 6, 7, rng.randrange(1 << 16)]))
    nxt = (rng.randrange(num) if r() < 0.85 else
           rng.choice([(num + rng.randrange(3)) & 0xFFFF, rng.randrange(1 << 16)]))
    return addr, length, flags, nxt


def build(rng: random.Random):
    """A ring full of guest-chosen junk, biased towards almost-valid."""
    num = rng.choice([1, 2, 4, 8, 16])
    lay = Layout(num, base=0, align=rng.choice([16, 64, 4096 if num <= 8 else 16]))
    mem = GuestMemory(MEM_SIZE, record=False)
    lo = lay.end
    for i in range(num):
        mem.write(lay.desc + 16 * i, struct.pack("<QIHH", *random_desc(rng, num, lo, MEM_SIZE)))
    for _ in range(rng.randrange(4)):                       # indirect tables somewhere after the ring
        n = rng.randrange(1, 8)
        base = rng.randrange(lo, MEM_SIZE - 16 * n) & ~15
        for i in range(n):
            mem.write(base + 16 * i, struct.pack("<QIHH", *random_desc(rng, n, lo, MEM_SIZE)))
        if rng.random() < 0.7:                              # point a descriptor at it
            mem.write(lay.desc + 16 * rng.randrange(num),
                      struct.pack("<QIHH", base, 16 * rng.randrange(1, n + 1), 4 | rng.choice([0, 1, 2]),
                                  rng.randrange(num)))
    start = rng.choice([0, rng.randrange(1 << 16), 0xFFFF - rng.randrange(4)])
    for slot in range(num):
        mem.write_u16(lay.avail + 4 + 2 * slot, rng.randrange(num) if rng.random() < 0.9 else
                      rng.choice([num, rng.randrange(1 << 16)]))
    ahead = (rng.randrange(num + 1) if rng.random() < 0.85 else
             rng.choice([num + 1, rng.randrange(1 << 16)]))
    mem.write_u16(lay.avail + 2, (start + ahead) & 0xFFFF)
    return mem, lay, start, rng.random() < 0.5, rng.random() < 0.7


def run_case(rng: random.Random) -> list[str]:
    """Pop until the ring is empty or broken, checking every outcome; the outcomes' names."""
    mem, lay, start, event_idx, push_back = build(rng)
    num = lay.num
    dev = Device(mem, lay, event_idx=event_idx, start_idx=start)
    outcomes = []
    for _ in range(lay.num + 3):
        snapshot = bytes(mem.buf)
        try:
            expected = reference_pop(snapshot, lay, dev.last_avail_idx, dev.inuse, dev.shadow_avail_idx,
                                     event_idx)
        except Fault as f:
            expected = ("error", str(f))
        t0 = time.perf_counter()
        try:
            with deadline(POP_DEADLINE):
                chain = dev.pop()
        except VringError as e:
            assert isinstance(e, VirtioError)
            assert expected == ("error", e.message), f"device raised {e}, reference says {expected}"
            assert dev.broken and dev.pop() is None          # QEMU: a broken device pops nothing
            outcomes.append(e.message.split(" ")[0])
            return outcomes
        assert time.perf_counter() - t0 < POP_DEADLINE
        if chain is None:
            assert expected is None, f"device found nothing, reference says {expected}"
            outcomes.append("empty")
            return outcomes
        assert expected == ("chain", chain.head, chain.out, chain.in_, chain.indirect), (
            f"device popped {chain!r}, reference says {expected}")
        # what any valid chain is, whatever the ring held
        assert 0 <= chain.head < lay.num
        assert chain.out or chain.in_
        assert len(chain.out) + len(chain.in_) <= VIRTQUEUE_MAX_SIZE
        for addr, n in chain.out + chain.in_:
            assert n > 0 and 0 <= addr and addr + n <= mem.size
        outcomes.append("chain")
        if push_back:
            dev.push(chain, rng.randrange(chain.in_len + 1))
        if rng.random() < 0.4:              # the guest publishes more (or garbage) meanwhile
            bump = rng.randrange(1, num + 1) if rng.random() < 0.9 else rng.randrange(1 << 16)
            mem.write_u16(lay.avail + 2, (mem.read_u16(lay.avail + 2) + bump) & 0xFFFF)
    return outcomes


def test_fuzz_device_pop_seeded():
    """2000 seeded random rings; the mix of outcomes shows the fuzzer reaches every check."""
    rng = random.Random(0x5EED)
    seen: dict[str, int] = {}
    t0 = time.perf_counter()
    for _ in range(2000):
        for name in run_case(rng):
            seen[name] = seen.get(name, 0) + 1
    assert time.perf_counter() - t0 < 60
    for name in ("chain", "empty", "Guest", "Desc", "Looped", "Incorrect", "virtio:", "Invalid",
                 "Cannot", "Nested", "Virtqueue"):
        assert seen.get(name, 0) > 0, f"the fuzzer never produced {name!r}: {seen}"


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**64 - 1))
def test_fuzz_device_pop_hypothesis(seed):
    run_case(random.Random(seed))


def test_an_indirect_table_over_avail_event_is_read_after_the_write():
    """The case a CI run's hypothesis found (seed 1918397112): an indirect table rounded down
    onto ``avail_event``; QEMU writes the field first, then reads the table through it."""
    run_case(random.Random(1_918_397_112))


@settings(max_examples=150, deadline=None)
@given(num=st.sampled_from([2, 4, 8]), adds=st.integers(0, 8),
       used=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=8),
       used_idx=st.integers(0, 0xFFFF), sparse_ids=st.booleans())
def test_fuzz_driver_get_used(num, adds, used, used_idx, sparse_ids):
    """A device that writes junk into the used ring: the driver returns a head it gave
    out, or None, or raises BadRing (and is broken) — nothing else, never a hang."""
    mem = GuestMemory(0x4000, record=False)
    lay = Layout(num)
    drv = Driver(mem, lay)
    outstanding = set()
    for k in range(min(adds, num)):
        outstanding.add(drv.add(out=[(0x3000 + k, 1)]))
    for slot, (id_, length) in enumerate(used[:num]):
        if not sparse_ids:
            id_ %= num
        mem.write(lay.used + 4 + 8 * slot, struct.pack("<II", id_, length))
    mem.write_u16(lay.used + 2, used_idx)
    with deadline(POP_DEADLINE):
        for _ in range(num + 2):
            try:
                got = drv.get_used()
            except BadRing:
                assert drv.broken and drv.get_used() is None
                return
            if got is None:
                return
            assert got[0] in outstanding
            outstanding.discard(got[0])
            assert 0 <= drv.num_free <= num


@pytest.mark.parametrize("num", [1, 8])
def test_reference_agrees_on_a_good_ring(num):
    """The reference is not vacuous: on a ring built by the driver it finds the same chains."""
    mem = GuestMemory(MEM_SIZE)
    lay = Layout(num)
    drv, dev = Driver(mem, lay), Device(mem, lay)
    for k in range(num):
        drv.add(out=[(0x2000 + k, 1)], in_=[] if num == 1 else [])
    got = reference_pop(bytes(mem.buf), lay, 0, 0)
    assert got == ("chain", 0, [(0x2000, 1)], [], None)
    assert dev.pop().out == [(0x2000, 1)]
