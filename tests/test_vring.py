"""The split virtqueue: layout, Linux's driver side, QEMU's device side, the event index.

Unit tests pin the bytes each side writes and every ``virtio_error`` a malformed
ring provokes; hypothesis checks that driver + device round trips keep buffers
in order across the 16-bit wrap and that EVENT_IDX suppresses exactly the kicks
and interrupts Linux and QEMU suppress.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbook.errors import BadRing, VirtioError, VringBroken, VringError, VringFull, VringUsageError
from vbook.memory import GuestMemory
from vbook.models.vring import (
    VIRTQUEUE_MAX_SIZE,
    AvailFlag,
    Chain,
    DescFlag,
    Device,
    Driver,
    Layout,
    UsedFlag,
    read_desc,
    vring_size,
    write_desc,
)
from vbook.trace import Trace, TraceRecorder, _thaw

NEXT, WRITE, INDIRECT = DescFlag.NEXT, DescFlag.WRITE, DescFlag.INDIRECT
MEM = 0x40000
BUF = 0x20000  # data buffers live from here on


def pair(num=8, mem_size=MEM, event_idx=False, indirect=False, trace=None, start_idx=0, **kw):
    mem = GuestMemory(mem_size, record=False)
    lay = Layout(num)
    drv = Driver(mem, lay, event_idx=event_idx, indirect=indirect, trace=trace, start_idx=start_idx, **kw)
    dev = Device(mem, lay, event_idx=event_idx, trace=trace, start_idx=start_idx)
    return mem, lay, drv, dev


# --- layout ------------------------------------------------------------------------------

@pytest.mark.parametrize("num,avail,used,size", [
    (8, 0x80, 0x1000, 4166), (16, 0x100, 0x1000, 4230), (32, 0x200, 0x1000, 4358),
    (64, 0x400, 0x1000, 4614), (128, 0x800, 0x1000, 5126), (256, 0x1000, 0x2000, 10246),
    (512, 0x2000, 0x3000, 16390), (1024, 0x4000, 0x5000, 28678)])
def test_layout_matches_facts_table(num, avail, used, size):
    lay = Layout(num)
    assert (lay.desc, lay.avail, lay.used, lay.size) == (0, avail, used, size)
    assert vring_size(num) == size
    assert lay.used_event == avail + 4 + 2 * num
    assert lay.avail_event == used + 4 + 8 * num
    assert lay.end == size


def test_layout_at_base_and_alignment():
    lay = Layout(256, base=0x10000)
    assert (lay.desc, lay.avail, lay.used, lay.size) == (0x10000, 0x11000, 0x12000, vring_size(256))
    small = Layout(4, base=0, align=16)   # modern-style tight packing
    assert small.used == 0x50 and small.size == vring_size(4, 16)


@pytest.mark.parametrize("num", [0, 3, 6, 100, 32769, 65536, -8])
def test_layout_rejects_bad_num(num):
    with pytest.raises(VringUsageError, match=f"Bad virtqueue length {num}"):
        Layout(num)


def test_layout_rejects_bad_align_and_base():
    with pytest.raises(VringUsageError, match="align 3000"):
        Layout(8, align=3000)
    with pytest.raises(VringUsageError, match="16-byte aligned"):
        Layout(8, base=0x1008)
    Layout(32768)   # the spec's maximum is fine


def test_layout_repr_is_stable():
    assert repr(Layout(8)) == "Layout(num=8, desc=0x0, avail=0x80, used=0x1000, size=0x1046)"


# --- driver: the bytes of virtqueue_add_split ------------------------------------------------

def test_add_writes_chain_avail_entry_and_idx():
    mem, lay, drv, _ = pair()
    head = drv.add(out=[(BUF, 10), (BUF + 0x100, 20)], in_=[(BUF + 0x200, 30)])
    assert head == 0
    d = [read_desc(mem, lay.desc, i) for i in range(3)]
    assert (d[0].addr, d[0].len, d[0].flags, d[0].next) == (BUF, 10, NEXT, 1)
    assert (d[1].addr, d[1].len, d[1].flags, d[1].next) == (BUF + 0x100, 20, NEXT, 2)
    # the last one loses NEXT but keeps the free-list link in `next` (Linux does not clear it)
    assert (d[2].addr, d[2].len, d[2].flags, d[2].next) == (BUF + 0x200, 30, WRITE, 3)
    assert mem.read_u16(lay.avail + 4) == 0             # avail->ring[0] = head
    assert mem.read_u16(lay.avail + 2) == 1             # avail->idx published
    assert (drv.free_head, drv.num_free, drv.avail_idx_shadow, drv.num_added) == (3, 5, 1, 1)
    assert drv.add(in_=[(BUF, 1)]) == 3
    assert mem.read_u16(lay.avail + 6) == 3


def test_round_trip_and_free_list_is_lifo():
    mem, lay, drv, dev = pair()
    h0 = drv.add(out=[(BUF, 16)], in_=[(BUF + 0x1000, 64)])
    h1 = drv.add(out=[(BUF + 0x2000, 8)])
    assert drv.kick()
    c0, c1 = dev.pop(), dev.pop()
    assert dev.pop() is None
    assert (c0.head, c0.out, c0.in_) == (h0, [(BUF, 16)], [(BUF + 0x1000, 64)])
    assert (c1.head, c1.out, c1.in_) == (h1, [(BUF + 0x2000, 8)], [])
    assert (dev.last_avail_idx, dev.inuse) == (2, 2)
    dev.push(c1, 0)
    dev.push(c0, 64)
    assert mem.read_u32(lay.used + 4) == h1 and mem.read_u32(lay.used + 12) == h0
    assert mem.read_u32(lay.used + 16) == 64 and mem.read_u16(lay.used + 2) == 2
    assert drv.get_used() == (h1, 0)
    assert drv.get_used() == (h0, 64)
    assert drv.get_used() is None
    # detach_buf_split puts each chain at the front of the free list
    assert (drv.free_head, drv.num_free) == (h0, 8)
    assert drv.desc_next[h0 + 1] == h1 and drv.desc_next[h1] == 3
    assert mem.read_u16(lay.used_event) == 2           # used_event = last_used_idx


def test_get_buf_returns_data_token():
    _, _, drv, dev = pair()
    drv.add(out=[(BUF, 4)], data="skb#1")
    dev.push(dev.pop(), 0)
    assert drv.get_buf() == ("skb#1", 0)


def test_vring_full_and_forced_notify():
    tr = TraceRecorder()
    notified = []
    _, _, drv, _ = pair(num=4, trace=tr, notify=lambda: notified.append(1))
    drv.add(out=[(BUF, 1), (BUF, 1), (BUF, 1)])
    with pytest.raises(VringFull, match="Can't add buf len 2 - avail = 1"):
        drv.add(out=[(BUF, 1)], in_=[(BUF, 1)])
    assert notified == [1]                      # "we force a notify here if there are outgoing parts"
    with pytest.raises(VringFull):
        drv.add(in_=[(BUF, 1), (BUF, 1)])
    assert notified == [1]
    assert drv.num_free == 1 and drv.add(in_=[(BUF, 1)]) == 3


@pytest.mark.parametrize("out,in_", [([], []), ([(BUF, -1)], []), ([(-4, 1)], []), ([(BUF,)], []),
                                     ([(BUF, 1 << 32)], []), ([(1 << 64, 1)], []), (None, [])])
def test_add_rejects_bad_buffers(out, in_):
    _, _, drv, _ = pair()
    with pytest.raises(VringUsageError):
        drv.add(out=out if out is not None else 7, in_=in_)
    assert drv.num_free == 8


def test_num_added_wrap_forces_kick():
    """virtqueue_add_split kicks by itself when num_added reaches 2**16 - 1."""
    notified = []
    _, _, drv, _ = pair(notify=lambda: notified.append(1))
    drv.num_added = 0xFFFE
    drv.add(out=[(BUF, 1)])
    assert notified == [1] and drv.num_added == 0


# --- kicks and interrupts without EVENT_IDX -------------------------------------------------------

def test_no_notify_flag_suppresses_kick():
    mem, lay, drv, dev = pair()
    drv.add(out=[(BUF, 1)])
    dev.set_notification(False)
    assert mem.read_u16(lay.used) == UsedFlag.NO_NOTIFY and not dev.notification
    assert not drv.kick_prepare()
    dev.set_notification(True)
    assert mem.read_u16(lay.used) == 0
    drv.add(out=[(BUF, 1)])
    assert drv.kick_prepare() and drv.num_added == 0


def test_no_interrupt_flag_suppresses_interrupt():
    mem, lay, drv, dev = pair()
    drv.add(out=[(BUF, 1)])
    dev.push(dev.pop(), 0)
    assert dev.should_notify()
    drv.disable_cb()
    assert mem.read_u16(lay.avail) == AvailFlag.NO_INTERRUPT
    assert not dev.should_notify() and not dev.notify()
    assert drv.enable_cb() is False            # a used buffer is already pending
    assert mem.read_u16(lay.avail) == 0 and dev.should_notify()
    assert drv.get_used() is not None
    assert drv.enable_cb() is True


# --- EVENT_IDX ------------------------------------------------------------------------------

def test_event_idx_kick_follows_avail_event():
    mem, lay, drv, dev = pair(event_idx=True)
    drv.add(out=[(BUF, 1)])
    assert drv.kick_prepare()                   # avail_event 0 in [0, 1)
    dev.pop()
    assert mem.read_u16(lay.avail_event) == 1   # vring_set_avail_event(vq, last_avail_idx)
    drv.add(out=[(BUF, 1)])
    drv.add(out=[(BUF, 1)])
    assert drv.kick_prepare()                   # 1 in [1, 3)
    drv.add(out=[(BUF, 1)])
    assert not drv.kick_prepare()               # 1 not in [3, 4): the device has not caught up
    assert mem.read_u16(lay.used) == 0          # the flag is not used with EVENT_IDX


def test_event_idx_set_notification_writes_only_when_enabling():
    mem, lay, drv, dev = pair(event_idx=True)
    for _ in range(3):
        drv.add(out=[(BUF, 1)])
    dev.set_notification(False)                 # nothing written: vring_set_avail_event returns early
    assert mem.read_u16(lay.avail_event) == 0
    dev.pop()
    assert mem.read_u16(lay.avail_event) == 0   # pops do not move it either while disabled
    dev.set_notification(True)                  # avail_event = avail->idx
    assert mem.read_u16(lay.avail_event) == 3 and dev.shadow_avail_idx == 3
    assert mem.read_u16(lay.used) == 0


def test_event_idx_interrupts_follow_used_event():
    mem, lay, drv, dev = pair(event_idx=True)
    for _ in range(4):
        drv.add(out=[(BUF, 1)])
    chains = [dev.pop() for _ in range(4)]
    dev.push(chains[0], 0)
    assert dev.should_notify()                  # first time: signalled_used_valid was false
    dev.push(chains[1], 0)
    assert not dev.should_notify()              # used_event 0 is not in [1, 2)
    assert drv.get_used() and drv.get_used()
    assert mem.read_u16(lay.used_event) == 2
    dev.push(chains[2], 0)
    assert dev.should_notify()                  # 2 in [2, 3)
    drv.disable_cb()                            # with EVENT_IDX: used_event = 0 ("a hack")
    assert mem.read_u16(lay.used_event) == 0 and mem.read_u16(lay.avail) == 0
    dev.push(chains[3], 0)
    assert not dev.should_notify()
    assert drv.get_used() and mem.read_u16(lay.used_event) == 0   # NO_INTERRUPT shadow: not updated
    drv.enable_cb_prepare()
    assert mem.read_u16(lay.used_event) == drv.last_used_idx == 3


def test_enable_cb_delayed_sets_used_event_three_quarters_ahead():
    mem, lay, drv, dev = pair(event_idx=True)
    for _ in range(8):
        drv.add(out=[(BUF, 1)])
    drv.disable_cb()
    assert drv.enable_cb_delayed()
    assert mem.read_u16(lay.used_event) == 6    # last_used_idx 0 + (8 - 0) * 3 // 4


def test_interrupt_sets_event_triggered_and_disable_cb_skips():
    mem, lay, drv, dev = pair(event_idx=True)
    assert not drv.interrupt()                  # IRQ_NONE: no work
    drv.add(out=[(BUF, 1)])
    dev.push(dev.pop(), 0)
    assert drv.interrupt() and drv.event_triggered
    drv.disable_cb()                            # skipped: the device will not interrupt again anyway
    assert not drv.avail_flags_shadow
    drv.enable_cb_prepare()
    assert not drv.event_triggered


def test_flush_invalidates_signalled_used_after_wrap_of_window():
    """virtqueue_split_flush: (int16)(new - signalled_used) < (u16)(new - old) -> invalid."""
    _, _, drv, dev = pair(event_idx=True)
    drv.add(out=[(BUF, 1)])
    c = dev.pop()
    dev.should_notify()
    assert dev.signalled_used_valid
    dev.signalled_used = 5                      # as if we had signalled "ahead" of used_idx
    dev.push(c, 0)                              # new = 1: (int16)(1 - 5) = -4 < 1
    assert not dev.signalled_used_valid


# --- indirect descriptors -------------------------------------------------------------------

def test_indirect_table_round_trip():
    mem, lay, drv, dev = pair(indirect=True, indirect_pool=(0x10000, 0x1000))
    head = drv.add(out=[(BUF, 12)], in_=[(BUF + 0x100, 100), (BUF + 0x200, 200)])
    top = read_desc(mem, lay.desc, head)
    assert (top.addr, top.len, top.flags) == (0x10000, 48, INDIRECT)
    assert drv.num_free == 7 and drv.free_head == 1
    table = [read_desc(mem, 0x10000, i) for i in range(3)]
    assert [(d.flags, d.next) for d in table] == [(NEXT, 1), (NEXT | WRITE, 2), (WRITE, 3)]
    chain = dev.pop()
    assert chain.indirect == 0x10000
    assert chain.out == [(BUF, 12)] and chain.in_ == [(BUF + 0x100, 100), (BUF + 0x200, 200)]
    assert [i for i, _ in chain.descs] == [head, 0, 1, 2]
    dev.push(chain, 300)
    assert drv.get_used() == (head, 300)
    assert drv.pool.in_use == 0 and drv.num_free == 8


def test_indirect_only_for_multi_buffer_and_falls_back_when_pool_full():
    mem, lay, drv, dev = pair(indirect=True, indirect_pool=(0x10000, 32))
    h = drv.add(out=[(BUF, 1)])                               # total_sg == 1: direct
    assert read_desc(mem, lay.desc, h).flags == 0
    h = drv.add(out=[(BUF, 1), (BUF, 2)])                     # fits the 32-byte pool
    assert read_desc(mem, lay.desc, h).flags == INDIRECT
    h = drv.add(out=[(BUF, 1), (BUF, 2)])                     # pool full: direct chain
    assert read_desc(mem, lay.desc, h).flags == NEXT and drv.num_free == 8 - 4
    got = [dev.pop() for _ in range(3)]
    assert [c.indirect is not None for c in got] == [False, True, False]
    for c in got:
        dev.push(c, 0)
    while drv.get_used():
        pass
    assert drv.num_free == 8 and drv.pool.in_use == 0


def test_default_indirect_pool_follows_the_ring():
    _, lay, drv, _ = pair(indirect=True)
    assert drv.pool.base == 0x2000 and drv.pool.size == 64 * 8


# --- the device's virtio_error cases -------------------------------------------------------------

def raw_ring(num=8, mem_size=0x8000, descs=(), heads=(0,), avail_idx=None, tables=()):
    """Write a ring by hand (what a malicious guest does); return (mem, layout, device)."""
    mem = GuestMemory(mem_size, record=False)
    lay = Layout(num)
    for i, (addr, length, flags, nxt) in enumerate(descs):
        write_desc(mem, lay.desc, i, addr, length, flags, nxt)
    for base, entries in tables:
        for i, (addr, length, flags, nxt) in enumerate(entries):
            write_desc(mem, base, i, addr, length, flags, nxt)
    for slot, h in enumerate(heads):
        mem.write_u16(lay.avail + 4 + 2 * (slot % num), h)
    mem.write_u16(lay.avail + 2, len(heads) if avail_idx is None else avail_idx)
    return mem, lay, Device(mem, lay, trace=TraceRecorder())


B = 0x6000   # a good buffer address in the 0x8000-byte memories below

ERROR_CASES = {
    "avail index too far": (dict(avail_idx=9), "Guest moved used index from 0 to 9", "virtqueue_num_heads"),
    "head out of range": (dict(heads=(8,)), "Guest says index 8 is available", "virtqueue_get_head"),
    "next out of range": (dict(descs=[(B, 4, NEXT, 8)]), "Desc next is 8", "virtqueue_split_read_next_desc"),
    "loop": (dict(descs=[(B, 4, NEXT, 1), (B, 4, NEXT, 0)]), "Looped descriptor", "virtqueue_split_pop"),
    "self loop": (dict(descs=[(B, 4, NEXT, 0)]), "Looped descriptor", "virtqueue_split_pop"),
    "readable after writable": (dict(descs=[(B, 4, NEXT | WRITE, 1), (B, 4, 0, 0)]),
                                "Incorrect order for descriptors", "virtqueue_split_pop"),
    "zero length": (dict(descs=[(B, 0, 0, 0)]), "virtio: zero sized buffers are not allowed",
                    "virtqueue_map_desc"),
    "buffer outside memory": (dict(descs=[(0x7FF0, 0x20, WRITE, 0)]),
                              "virtio: bogus descriptor or out of resources", "virtqueue_map_desc"),
    "buffer address wraps": (dict(descs=[((1 << 64) - 8, 16, 0, 0)]),
                             "virtio: bogus descriptor or out of resources", "virtqueue_map_desc"),
    "indirect len 0": (dict(descs=[(0x5000, 0, INDIRECT, 0)]),
                       "Invalid size for indirect buffer table", "virtqueue_split_pop"),
    "indirect len not 16k": (dict(descs=[(0x5000, 24, INDIRECT, 0)]),
                             "Invalid size for indirect buffer table", "virtqueue_split_pop"),
    "indirect outside memory": (dict(descs=[(0x7FF0, 32, INDIRECT, 0)]),
                                "Cannot map indirect buffer", "virtqueue_split_pop"),
    "nested indirect": (dict(descs=[(0x5000, 32, INDIRECT, 0)],
                             tables=[(0x5000, [(B, 4, NEXT, 1), (0x5100, 16, INDIRECT, 0)])]),
                        "Nested indirect descriptor", "virtqueue_split_pop"),
    "indirect next out of range": (dict(descs=[(0x5000, 32, INDIRECT, 0)],
                                        tables=[(0x5000, [(B, 4, NEXT, 2)])]),
                                   "Desc next is 2", "virtqueue_split_read_next_desc"),
    "indirect loop": (dict(descs=[(0x5000, 32, INDIRECT, 0)],
                           tables=[(0x5000, [(B, 4, NEXT, 1), (B, 4, NEXT, 0)])]),
                      "Looped descriptor", "virtqueue_split_pop"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_malformed_ring_is_virtio_error_and_breaks_device(case):
    kw, message, function = ERROR_CASES[case]
    mem, lay, dev = raw_ring(**kw)
    with pytest.raises(VirtioError) as info:
        dev.pop()
    err = info.value
    assert isinstance(err, VringError)
    assert err.message == message and err.function == function
    assert str(err).startswith(message) and f"[QEMU {function}]" in str(err)
    assert dev.broken
    events = [e for e in dev.trace.events if e.kind == "virtio_error"]
    assert len(events) == 1 and events[0]["message"] == message and events[0].actor == "qemu"
    # a broken device pops nothing more (virtqueue_pop: virtio_device_disabled -> NULL)
    mem.write_u16(lay.avail + 2, 1)
    write_desc(mem, lay.desc, 0, B, 4, 0, 0)
    mem.write_u16(lay.avail + 4, 0)
    assert dev.pop() is None and dev.trace.events[-1].kind == "pop_refused"
    dev.reset()                                   # virtio_reset clears vdev->broken
    assert not dev.broken and dev.pop().out == [(B, 4)]


def test_virtqueue_size_exceeded():
    """A guest that republishes heads can make the device hold more than num elements."""
    mem, lay, dev = raw_ring(num=2, descs=[(B, 4, 0, 0)], heads=(0, 0), avail_idx=2)
    assert dev.pop().head == 0 and dev.pop().head == 0
    mem.write_u16(lay.avail + 2, 3)             # head 0 once more, while both are still in use
    with pytest.raises(VirtioError, match="^Virtqueue size exceeded"):
        dev.pop()


def test_too_many_buffers_in_one_chain():
    n = VIRTQUEUE_MAX_SIZE + 1
    table = [(B, 1, NEXT, i + 1) for i in range(n - 1)] + [(B, 1, 0, 0)]
    _, _, dev = raw_ring(mem_size=0x10000, descs=[(0x8000, 16 * n, INDIRECT, 0)], tables=[(0x8000, table)])
    with pytest.raises(VirtioError, match="^virtio: too many write descriptors in indirect table"):
        dev.pop()


def test_indirect_chain_of_max_size_is_fine():
    n = VIRTQUEUE_MAX_SIZE
    table = [(B, 1, NEXT, i + 1) for i in range(n - 1)] + [(B + 8, 2, WRITE, 0)]
    _, _, dev = raw_ring(mem_size=0x10000, descs=[(0x8000, 16 * n, INDIRECT, 0)], tables=[(0x8000, table)])
    chain = dev.pop()
    assert len(chain.out) == n - 1 and chain.in_ == [(B + 8, 2)] and chain.indirect == 0x8000


@pytest.mark.parametrize("mem_size,message", [(0x40, "Cannot map desc"), (0x1010, "Cannot map used"),
                                              (0x1046, None)])
def test_rings_must_be_guest_memory(mem_size, message):
    mem = GuestMemory(mem_size)
    if message is None:
        Device(mem, Layout(8))
        return
    with pytest.raises(VirtioError, match=f"^{message}"):
        Device(mem, Layout(8))


def test_broken_device_writes_no_used_entries():
    mem, lay, drv, dev = pair()
    drv.add(out=[(BUF, 1)])
    chain = dev.pop()
    mem.write_u16(lay.avail + 2, 100)           # the guest goes mad
    with pytest.raises(VirtioError):
        dev.pop()
    dev.push(chain, 1)                          # virtqueue_fill: disabled -> nothing written
    assert mem.read_u16(lay.used + 2) == 0 and dev.inuse == 0


def test_push_checks_its_arguments():
    _, _, drv, dev = pair()
    drv.add(out=[(BUF, 1)])
    with pytest.raises(VringUsageError, match="not in use"):
        dev.push(0, 0)
    chain = dev.pop()
    with pytest.raises(VringUsageError, match="u32"):
        dev.push(chain, 1 << 32)
    dev.push(chain, 1)
    with pytest.raises(VringUsageError, match="not in use"):
        dev.push(chain, 1)


def test_fill_and_flush_batch():
    mem, lay, drv, dev = pair()
    for _ in range(3):
        drv.add(out=[(BUF, 1)])
    chains = [dev.pop() for _ in range(3)]
    for k, c in enumerate(chains):
        dev.fill(c, 10 + k, k)
    assert mem.read_u16(lay.used + 2) == 0      # not yet published
    dev.flush(3)
    assert [drv.get_used() for _ in range(3)] == [(0, 10), (1, 11), (2, 12)]


# --- the driver's BAD_RING cases --------------------------------------------------------

@pytest.mark.parametrize("bad_id,message", [(300, "id 300 out of range"), (5, "id 5 is not a head!")])
def test_bad_used_id_breaks_driver(bad_id, message):
    mem, lay, drv, dev = pair()
    drv.add(out=[(BUF, 1)])
    mem.write_u32(lay.used + 4, bad_id)         # the device writes a bogus used element
    mem.write_u16(lay.used + 2, 1)
    with pytest.raises(BadRing, match=message):
        drv.get_used()
    assert drv.broken and drv.get_used() is None
    with pytest.raises(VringBroken, match="-EIO"):
        drv.add(out=[(BUF, 1)])


# --- traces --------------------------------------------------------------------------------------

def test_every_operation_is_traced_with_indices_and_descriptors():
    tr = TraceRecorder()
    _, _, drv, dev = pair(event_idx=True, indirect=True, trace=tr)
    drv.add(out=[(BUF, 16)], in_=[(BUF + 0x100, 64)])
    drv.kick()
    chain = dev.pop()
    dev.push(chain, 64)
    dev.notify()
    drv.get_used()
    drv.disable_cb()
    drv.enable_cb()
    dev.set_notification(False)
    kinds = [(e.actor, e.kind) for e in tr.events]
    assert kinds == [("guest", "init"), ("guest", "add"), ("guest", "kick_prepare"), ("guest", "notify"),
                     ("qemu", "pop"), ("qemu", "fill"), ("qemu", "flush"), ("qemu", "should_notify"),
                     ("qemu", "irq"), ("guest", "get_used"), ("guest", "disable_cb"),
                     ("guest", "enable_cb"), ("qemu", "set_notification")]
    add, pop = tr.events[1], tr.events[4]
    assert add["head"] == 0 and add["avail_idx"] == 1 and add["indirect"] is not None
    assert [d["i"] for d in add["descs"]] == [0, 0, 1] and add["descs"][0]["flags"] == INDIRECT
    assert pop["head"] == 0 and pop["last_avail_idx"] == 1 and pop["avail_event"] == 1
    assert pop["out"] == ((BUF, 16),) and pop["in"] == ((BUF + 0x100, 64),)
    assert [(d["table"], d["i"]) for d in pop["descs"]] == [("ring", 0), ("indirect", 0), ("indirect", 1)]
    assert [d["table"] for d in add["descs"]] == ["ring", "indirect", "indirect"]
    assert chain.to_dict()["descs"] == [dict(d) for d in _thaw(pop["descs"])]
    trace = tr.freeze()
    assert Trace.from_json(trace.to_json()) == trace
    json.loads(trace.to_json())


def test_device_actor_can_be_device():
    tr = TraceRecorder()
    mem = GuestMemory(MEM)
    lay = Layout(8)
    drv, dev = Driver(mem, lay), Device(mem, lay, trace=tr, actor="device")
    drv.add(out=[(BUF, 1)])
    dev.pop()
    assert tr.events[0].actor == "device"


def test_chain_helpers_and_repr():
    mem, _, drv, dev = pair()
    mem.write(BUF, b"hello, ")
    mem.write(BUF + 0x100, b"world")
    drv.add(out=[(BUF, 7), (BUF + 0x100, 5)], in_=[(BUF + 0x200, 3), (BUF + 0x300, 8)])
    chain = dev.pop()
    assert chain.read_out(mem) == b"hello, world" and (chain.out_len, chain.in_len) == (12, 11)
    assert chain.write_in(mem, b"0123456") == 7
    assert mem.read(BUF + 0x200, 3) == b"012" and mem.read(BUF + 0x300, 4) == b"3456"
    assert repr(chain) == ("Chain(head=0, out=[(0x20000, 7), (0x20100, 5)], "
                           "in_=[(0x20200, 3), (0x20300, 8)])")
    assert repr(dev) == "Device(num=8, last_avail_idx=1, used_idx=0, inuse=1)"
    assert isinstance(chain, Chain)


# --- 16-bit wrap ----------------------------------------------------------------------------

def test_start_near_0xffff_wraps_every_index():
    mem, lay, drv, dev = pair(num=8, start_idx=0xFFFA, event_idx=True)
    seen = []
    for k in range(20):
        head = drv.add(out=[(BUF + k, 1)], in_=[(BUF + 0x1000, 2)])
        assert drv.kick_prepare()
        chain = dev.pop()
        assert chain.head == head and chain.out == [(BUF + k, 1)]
        dev.push(chain, 2)
        assert dev.should_notify()
        assert drv.get_used() == (head, 2)
        seen.append(mem.read_u16(lay.avail + 2))
    assert seen[:8] == [0xFFFB, 0xFFFC, 0xFFFD, 0xFFFE, 0xFFFF, 0, 1, 2]
    assert drv.avail_idx_shadow == drv.last_used_idx == dev.last_avail_idx == dev.used_idx == 14
    assert mem.read_u16(lay.used + 2) == 14


def test_num_256_through_more_than_65536_buffers():
    """66048 buffers through a 256-entry ring, a full ring at a time: avail->idx and
    used->idx wrap past 2**16; every head comes back, the free list stays whole."""
    mem, lay, drv, dev = pair(num=256, event_idx=True)
    total, batch = 65536 + 512, 256
    for _ in range(total // batch):
        heads = [drv.add(in_=[(BUF + 4 * k, 4)]) for k in range(batch)]
        assert drv.num_free == 0
        assert drv.kick_prepare()                      # the device had caught up
        popped = []
        while (chain := dev.pop()) is not None:
            popped.append(chain.head)
            dev.push(chain, 4)
        assert popped == heads
        assert dev.should_notify()                     # the driver had reaped everything
        used = []
        while (got := drv.get_used()) is not None:
            used.append(got[0])
        assert used == heads and drv.num_free == 256
    free, i = set(), drv.free_head
    for _ in range(256):
        free.add(i)
        i = drv.desc_next[i]
    assert free == set(range(256))
    assert drv.avail_idx_shadow == dev.used_idx == total & 0xFFFF == mem.read_u16(lay.used + 2) == 512
    assert dev.last_avail_idx == drv.last_used_idx == 512


# --- hypothesis: round trips keep buffers, in order, across the wrap --------------------------------

bufs = st.lists(st.tuples(st.integers(BUF, MEM - 0x100), st.integers(1, 0x100)), min_size=0, max_size=3)
requests = st.tuples(bufs, bufs).filter(lambda r: r[0] or r[1])


@settings(max_examples=80, deadline=None)
@given(num=st.sampled_from([1, 2, 4, 8, 16]), event_idx=st.booleans(), indirect=st.booleans(),
       start=st.one_of(st.just(0), st.integers(0xFF00, 0xFFFF), st.integers(0, 0xFFFF)),
       script=st.lists(st.tuples(st.sampled_from("apgu"), requests, st.integers(0, 7)), max_size=60))
def test_round_trips_preserve_buffers_in_order(num, event_idx, indirect, start, script):
    mem, lay, drv, dev = pair(num=num, event_idx=event_idx, indirect=indirect, start_idx=start)
    added, popped, pushed = [], [], []           # FIFO of (head, out, in)
    for op, (out, in_), pick in script:
        if op == "a":
            try:
                head = drv.add(out=out, in_=in_)
            except VringFull:
                assert drv.num_free < len(out) + len(in_)
                continue
            added.append((head, out, in_))
        elif op == "p":
            chain = dev.pop()
            if chain is None:
                assert not added
                continue
            head, o, i = added.pop(0)
            assert (chain.head, chain.out, chain.in_) == (head, o, i)
            popped.append(chain)
        elif op == "g" and popped:               # the device completes in any order
            chain = popped.pop(pick % len(popped))
            written = min(chain.in_len, pick * 10)
            dev.push(chain, written)
            pushed.append((chain.head, written))
        elif op == "u":
            got = drv.get_used()
            assert got == (pushed.pop(0) if pushed else None)
    # drain everything: the free list is whole again
    while (chain := dev.pop()) is not None:
        head, o, i = added.pop(0)
        assert (chain.head, chain.out, chain.in_) == (head, o, i)
        popped.append(chain)
    assert not added
    for chain in popped:
        dev.push(chain, 0)
        pushed.append((chain.head, 0))
    while (got := drv.get_used()) is not None:
        assert got == pushed.pop(0)
    assert not pushed and drv.num_free == num and dev.inuse == 0
    free, i = set(), drv.free_head
    for _ in range(num):
        free.add(i)
        i = drv.desc_next[i]
    assert free == set(range(num))
    n_added = drv.avail_idx_shadow - start
    assert dev.last_avail_idx == dev.used_idx == drv.last_used_idx == drv.avail_idx_shadow
    assert mem.read_u16(lay.avail + 2) == (start + n_added) & 0xFFFF
    if indirect:
        assert drv.pool.in_use == 0


# --- hypothesis: EVENT_IDX suppresses exactly what Linux and QEMU suppress --------------------------

@settings(max_examples=100, deadline=None)
@given(start=st.integers(0, 0xFFFF), batches=st.lists(
    st.tuples(st.integers(1, 4), st.booleans(), st.booleans()), min_size=1, max_size=40))
def test_event_idx_kick_and_interrupt_counts(start, batches):
    """Each batch: the driver adds 1-4 buffers and kicks if it must; then maybe the device
    serves the ring (pops and pushes everything, then says whether to interrupt), and maybe
    the driver reaps the used ring. With EVENT_IDX a kick happens exactly when the device
    has served everything it was told about; an interrupt exactly when the driver has
    reaped everything it was interrupted for (or at the first one)."""
    _, _, drv, dev = pair(num=256, event_idx=True, start_idx=start)
    kicks = irqs = expected_kicks = expected_irqs = 0
    device_caught_up, driver_caught_up, first_irq = True, True, True
    for n, serve, reap in batches:
        for _ in range(n):
            drv.add(out=[(BUF, 1)])
        expected_kicks += device_caught_up
        kicks += drv.kick_prepare()
        device_caught_up = False
        if serve:
            while (chain := dev.pop()) is not None:
                dev.push(chain, 0)
            device_caught_up = True
            expected_irqs += first_irq or driver_caught_up
            irqs += dev.should_notify()
            first_irq = driver_caught_up = False
        if reap:
            while drv.get_used() is not None:
                pass
            driver_caught_up = True
    assert (kicks, irqs) == (expected_kicks, expected_irqs)


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.tuples(st.integers(1, 4), st.booleans()), min_size=1, max_size=30))
def test_flags_suppress_kicks_while_device_polls(batches):
    """Without EVENT_IDX: a device that turned notifications off (VRING_USED_F_NO_NOTIFY)
    while it polls gets no kicks; with them on, every kick_prepare says kick."""
    _, _, drv, dev = pair(num=256)
    kicks = expected = 0
    for n, polling in batches:
        dev.set_notification(not polling)
        for _ in range(n):
            drv.add(out=[(BUF, 1)])
        kicks += drv.kick_prepare()
        expected += not polling
        while (chain := dev.pop()) is not None:
            dev.push(chain, 0)
        while drv.get_used():
            pass
    assert kicks == expected
