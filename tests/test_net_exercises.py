"""Chapters 08 and 09's exercises (vbook.exercises.net): seeded, checked and answered by the models.

Each problem is solved a second time from its printed question alone — TxRing by
QEMU's ``start_xmit`` loop written out here over the printed descriptors,
KickOrNot by Linux's ``virtqueue_kick_prepare_split`` and InterruptOrNot by
QEMU's ``virtio_split_should_notify``, both with ``vring_need_event``'s formula —
so the question names everything needed and the models agree.
"""

from __future__ import annotations

import re
from functools import cache

from vbook.devices.e1000 import TxdCmd
from vbook.exercises import net as nx

SEEDS = range(200)
HEX = r"0x[0-9a-f]+"
U16 = 0xFFFF


@cache
def tx_ex(seed: int) -> nx.TxRing:
    return nx.TxRing(seed=seed)


@cache
def kick_ex(seed: int) -> nx.KickOrNot:
    return nx.KickOrNot(seed=seed)


@cache
def irq_ex(seed: int) -> nx.InterruptOrNot:
    return nx.InterruptOrNot(seed=seed)


def gives_away(message: str, value: object) -> bool:
    """Whether a hint spells the value out: a whole number of it, or a bool's word."""
    if isinstance(value, bool):
        return re.search(r"\b(true|false)\b", message.lower()) is not None
    nums = value if isinstance(value, tuple) else (value,)
    return any(re.search(rf"(?<![\w.]){n}(?![\w.])", message) for n in nums)


def need_event(event: int, new: int, old: int) -> bool:
    """include/uapi/linux/virtio_ring.h: (__u16)(new_idx - event_idx - 1) < (__u16)(new_idx - old)."""
    return (new - event - 1) & U16 < (new - old) & U16


# --- TxRing ----------------------------------------------------------------------------------------

ROW = re.compile(rf"^\s+\[\s*(\d+)\] buffer_addr ({HEX}), lower ({HEX})", re.M)


def solve_tx(q: str) -> tuple[int, int]:
    """hw/net/e1000.c start_xmit over the printed ring: nothing without TCTL.EN; while
    TDH != TDT read the descriptor at TDH, a frame at each EOP, TDH + 1 wrapping at
    TDLEN / 16, stop when TDH is back where it started."""
    tctl = int(re.search(rf"TCTL = ({HEX})", q)[1], 16)
    n = int(re.search(rf"TDLEN = ({HEX}) bytes", q)[1], 16) // 16
    tdh = int(re.search(r"^TDH = (\d+), TDT = \d+\.$", q, re.M)[1])
    tdt = int(re.search(r"writes TDT = (\d+)\.", q)[1])
    assert "one descriptor with EOP | IFCS | RS" in q          # the previous lap: all EOP
    ring = [int(TxdCmd.EOP | TxdCmd.IFCS | TxdCmd.RS) | 60] * n
    for slot, _, lower in ROW.findall(q):
        ring[int(slot)] = int(lower, 16)
    if not tctl & 2:
        return 0, tdh
    frames, start = 0, tdh
    while tdh != tdt:
        frames += bool(ring[tdh] & TxdCmd.EOP)
        tdh = tdh + 1 if tdh + 1 < n else 0
        if tdh == start:
            break
    return frames, tdh


def expected_frames(ex: nx.TxRing) -> list[bytes]:
    """The bytes the printed descriptors carry, frame by frame (the carried ones first)."""
    out, cur = [], b""
    for _, _, lower, data in ex.descs:
        cur += data
        if lower & TxdCmd.EOP:
            out.append(cur)
            cur = b""
    return out


def test_tx_ring_solved_from_the_printed_question():
    for seed in SEEDS:
        ex = tx_ex(seed)
        assert ex.answer().value == solve_tx(ex.question), seed
        if ex.variant == "normal":                 # the frames are the descriptors' bytes
            assert ex.sent == expected_frames(ex), seed


def test_tx_ring_a_case_by_hand():
    """Seed 17: 8 descriptors, TDH = TDT = 6; descriptors 4 and 5 (no EOP) were taken by
    the last TDT write; the driver fills 6 (EOP) and 7 (EOP) and writes TDT = 0. start_xmit
    reads 6 — EOP: the 66 + 244 + 10 bytes of 4, 5, 6 go out as one frame — then 7 (a
    second frame); TDH wraps 8 -> 0 = TDT and the loop ends: (2, 0)."""
    ex = tx_ex(17)
    q = ex.question
    assert "TDLEN = 0x80 bytes" in q and "TDH = 6, TDT = 6." in q and "writes TDT = 0." in q
    assert [int(s) for s, _, _ in ROW.findall(q)] == [4, 5, 6, 7]
    assert ex.answer().value == (2, 0)
    assert [len(f) for f in ex.sent] == [66 + 244 + 10, 1155]
    assert ex.check((2, 0)).ok and not ex.check((3, 0)).ok and not ex.check((2, 8)).ok


def test_tx_ring_answer_is_the_devices_and_checks_right():
    for seed in SEEDS:
        ex = tx_ex(seed)
        if seed < 25:                                   # same seed, same problem
            assert nx.TxRing(seed=seed).question == ex.question, seed
        frames, tdh = value = ex.answer().value
        assert value == (len(ex.board.backend.sent), ex.board.m.e1000[0]["TDH"]), seed
        good = ex.check(value)
        assert good.ok and good.message.startswith("right"), seed
        assert ex.check(list(value)).ok is False
        part1 = ex.check(frames)
        assert part1.ok and "Part 2" in part1.message, seed
        for bad in {(frames + 1, tdh), (frames - 1, tdh), (frames, (tdh + 1) % ex.n),
                    (frames, tdh + ex.n), (ex.k, tdh), (frames, ex.new_tdt)} - {value}:
            fb = ex.check(bad)
            assert not fb.ok, (seed, bad)
            assert not gives_away(fb.message, value), (seed, bad, fb.message)
        for junk in ("2", None, True, (frames, "0"), (frames,), (frames, tdh, 0), 2.0):
            fb = ex.check(junk)
            assert not fb.ok and fb.message.startswith("answer with"), (seed, junk)


def test_tx_ring_hints_point_at_the_mistake():
    exs = [tx_ex(s) for s in SEEDS]
    off = next(e for e in exs if e.variant == "en_off")
    assert "TCTL" in off.check((off.k, off.tdh)).message
    assert "EN clear" in off.check((0, off.new_tdt)).message
    full = next(e for e in exs if e.variant == "full")
    assert "full ring from an empty one" in full.check((full.n, full.tdh)).message
    lap = next(e for e in exs if e.variant == "bogus")
    eops = sum(1 for d in lap.descs[lap.carry:] if d[2] & TxdCmd.EOP)
    assert "inside the ring" in lap.check((eops, lap.tdh)).message
    assert "never meets this TDT" in lap.check((len(lap.sent), lap.new_tdt)).message
    tail = next(e for e in exs if e.variant == "normal" and e.partial_tail)
    assert "have no EOP" in tail.check((len(tail.sent) + 1, tail.tdh_after)).message
    carry = next(e for e in exs if e.variant == "normal" and e.carry)
    assert "cut short" in carry.check((len(carry.sent) - 1, carry.tdh_after)).message
    many = next(e for e in exs if e.variant == "normal" and len(e._processed()) != len(e.sent)
                and len(e._processed()) != len(e.sent) + 1)
    assert "not descriptors" in many.check((len(many._processed()), 0)).message
    wrap = next(e for e in exs if e.variant == "normal" and e.new_tdt < e.tdh)
    assert "wraps to zero" in wrap.check((len(wrap.sent), wrap.tdh + wrap.k)).message
    mid = next(e for e in exs if e.variant == "normal" and e.partial_tail and e.k > 2)
    last_eop = [d[0] for d in mid.descs[mid.carry:] if d[2] & TxdCmd.EOP][-1]
    assert "EOP or not" in mid.check((len(mid.sent), (last_eop + 1) % mid.n)).message


def test_tx_ring_problems_vary():
    exs = [tx_ex(s) for s in SEEDS]
    assert len({e.question for e in exs}) == len(exs)
    assert {e.variant for e in exs} == set(nx.TxRing.VARIANTS)
    assert {e.n for e in exs} == {8, 16, 24, 32, 48, 64}
    assert len({e.answer().value for e in exs}) >= 60
    assert len({e.answer().value[0] for e in exs}) >= 10
    normal = [e for e in exs if e.variant == "normal"]
    assert sum(e.new_tdt < e.tdh for e in normal) >= 20            # the range wraps
    assert any(e.new_tdt == 0 for e in normal)
    assert sum(e.partial_tail for e in normal) >= 20 and sum(bool(e.carry) for e in normal) >= 20
    assert any(e.variant == "en_off" and e.old_tdt != e.tdh for e in exs)
    assert any(e.variant == "bogus" and e.new_tdt == e.n for e in exs)
    assert any(e.variant == "bogus" and e.new_tdt > e.n for e in exs)
    assert max(len(e.descs) for e in exs) >= 12
    parts = {sum(1 for d in e.descs if not d[2] & TxdCmd.EOP) for e in exs}
    assert max(parts) >= 4                                          # frames of 2 and 3 descriptors


def test_tx_ring_answer_text():
    sol = tx_ex(12).answer()                          # the bogus TDT: one lap
    assert "outside the 8-descriptor ring: start_xmit stops" in sol.steps
    assert "wait in tx.data" in sol.steps and repr(sol).endswith("answer: (5, 7)")
    off = next(tx_ex(s) for s in SEEDS if tx_ex(s).variant == "en_off").answer()
    assert "TCTL.EN is clear" in off.steps
    full = next(tx_ex(s) for s in SEEDS if tx_ex(s).variant == "full").answer()
    assert "E1000_DESC_UNUSED" in full.steps
    ex = tx_ex(1)
    assert repr(ex).startswith("Walk the e1000 TX ring (seed 1)\n") and "TDBA" in ex._repr_html_()


# --- KickOrNot -------------------------------------------------------------------------------------

def solve_kick(q: str) -> bool:
    """Linux 6.1 virtqueue_kick_prepare_split, from the printed numbers."""
    event = "EVENT_IDX negotiated" in q
    old = int(re.search(r"avail->idx was (\d+)\.", q)[1])
    k = int(re.search(r"has added (\d+) buffers?", q)[1])
    new = int(re.search(r"avail->idx = (\d+) now", q)[1])
    assert new == (old + k) & U16
    flags = int(re.search(rf"used->flags = ({HEX})", q)[1], 16)
    ev = int(re.search(r"\) = (\d+)\.\n", q)[1])
    return need_event(ev, new, old) if event else not flags & 1


def test_kick_solved_from_the_printed_question():
    for seed in SEEDS:
        ex = kick_ex(seed)
        assert ex.answer().value is solve_kick(ex.question), seed


def test_kick_answer_is_the_drivers_and_checks_right():
    for seed in SEEDS:
        ex = kick_ex(seed)
        if seed < 25:
            assert nx.KickOrNot(seed=seed).question == ex.question, seed
        want = ex.answer().value
        assert isinstance(want, bool)
        assert ex.mem.read_u16(ex.layout.avail_idx) == ex.new and ex.drv.num_added == 0
        good = ex.check(want)
        assert good.ok and good.message.startswith("right"), seed
        assert ex.check("kick" if want else "No Kick").ok
        bad = ex.check(not want)
        assert not bad.ok and not gives_away(bad.message, want), (seed, bad.message)
        assert not ex.check("no kick" if want else "kick").ok
        for junk in (1, 0, "yes", None, (want,), "True"):
            fb = ex.check(junk)
            assert not fb.ok and fb.message.startswith("answer True"), (seed, junk)


def test_kick_hints_point_at_the_mistake():
    exs = [kick_ex(s) for s in SEEDS]
    flags = next(e for e in exs if e.event and e.used_flags and e.kick)
    assert "used->flags at all" in flags.check(False).message
    wrap = next(e for e in exs if e.event and e.kick and e.new < e.old and e.avail_event < e.new)
    assert "16-bit and wrap" in wrap.check(False).message
    plain = next(e for e in exs if e.event and not e.kick and e.where == "at_new")
    assert "vring_need_event" in plain.check(True).message
    off = next(e for e in exs if not e.event and not e.used_flags)
    assert "avail_event read at all" in off.check(False).message
    nn = next(e for e in exs if not e.event and e.used_flags)
    assert "VRING_USED_F_NO_NOTIFY" in nn.check(True).message


def test_kick_problems_vary():
    exs = [kick_ex(s) for s in SEEDS]
    assert len({e.question for e in exs}) >= len(exs) - 2
    for event in (True, False):
        for kick in (True, False):
            assert sum(e.event is event and e.kick is kick for e in exs) >= 20, (event, kick)
    assert {e.where for e in exs} == {"inside", "at_new", "ahead", "behind", "flags"}
    assert sum(e.new < e.old for e in exs) >= 20                     # avail->idx wrapped past 65535
    assert any(e.event and e.kick and e.avail_event < e.new < e.old for e in exs)
    assert {e.num for e in exs} == {8, 16, 32, 64, 128, 256} and {e.k for e in exs} >= set(range(1, 9))


def test_kick_answer_shows_the_formula():
    ex = next(kick_ex(s) for s in SEEDS if kick_ex(s).event and kick_ex(s).new < kick_ex(s).old)
    steps = ex.answer().steps
    ev, new, old = ex.avail_event, ex.new, ex.old
    assert "(u16)(new - event - 1) < (u16)(new - old)" in steps
    assert f"(u16)({new} - {ev} - 1) < (u16)({new} - {old})" in steps
    assert f"= {(new - ev - 1) & U16} < {(new - old) & U16}" in steps
    off = next(kick_ex(s) for s in SEEDS if not kick_ex(s).event).answer()
    assert "VRING_USED_F_NO_NOTIFY" in off.steps and "not read" in off.steps


# --- InterruptOrNot --------------------------------------------------------------------------------

def field(q: str, name: str) -> int:
    return int(re.search(rf"\b{re.escape(name)}(?: \([^)]*\))? = ({HEX}|\d+)", q)[1], 0)


def solve_irq(q: str) -> bool:
    """QEMU 9.2.4 virtio_split_should_notify, from the printed state."""
    parts = re.search(r"entries; (.*)\.\n", q)[1].split("; ")
    feats = {f for p in parts if p.startswith("negotiated: ") for f in p[12:].split(", ")}
    noe, event = "VIRTIO_F_NOTIFY_ON_EMPTY" in feats, "VIRTIO_RING_F_EVENT_IDX" in feats
    if noe and field(q, "inuse") == 0 and field(q, "last_avail_idx") == field(q, "avail->idx"):
        return True
    if not event:
        return not field(q, "avail->flags") & 1
    v = "signalled_used_valid = true" in q
    return not v or need_event(field(q, "used_event"), field(q, "used_idx"), field(q, "signalled_used"))


def test_interrupt_solved_from_the_printed_question():
    for seed in SEEDS:
        ex = irq_ex(seed)
        assert ex.answer().value is solve_irq(ex.question), seed


def test_interrupt_answer_is_the_devices_and_checks_right():
    for seed in SEEDS:
        ex = irq_ex(seed)
        if seed < 25:
            assert nx.InterruptOrNot(seed=seed).question == ex.question, seed
        want = ex.answer().value
        assert isinstance(want, bool) and ex.answer().value is want      # answer() does not re-decide
        if ex.event and not ex.by_empty:                # should_notify moved signalled_used
            assert ex.dev.signalled_used == ex.state["used_idx"] and ex.dev.signalled_used_valid
        good = ex.check(want)
        assert good.ok and good.message.startswith("right"), seed
        assert ex.check("interrupt" if want else "no interrupt").ok
        bad = ex.check(not want)
        assert not bad.ok and not gives_away(bad.message, want), (seed, bad.message)
        for junk in (1, "maybe", None, [want]):
            fb = ex.check(junk)
            assert not fb.ok and fb.message.startswith("answer True"), (seed, junk)


def test_interrupt_hints_point_at_the_mistake():
    exs = [irq_ex(s) for s in SEEDS]
    empty = next(e for e in exs if e.by_empty)
    assert "NOTIFY_ON_EMPTY" in empty.check(False).message
    busy = next(e for e in exs if e.noe and e.event and not e.notify and e.state["signalled_used_valid"])
    assert "idle, empty queue" in busy.check(True).message
    first = next(e for e in exs if e.event and not e.by_empty and not e.state["signalled_used_valid"])
    assert "signalled_used_valid" in first.check(False).message
    flags = next(e for e in exs if e.event and e.notify and not e.by_empty and e.state["avail_flags"]
                 and e.state["signalled_used_valid"])
    assert "avail->flags at all" in flags.check(False).message
    off = next(e for e in exs if not e.event and not e.by_empty and not e.state["avail_flags"])
    assert "used_event at all" in off.check(False).message
    plain = next(e for e in exs if e.event and not e.notify and e.where == "at_new")
    assert "vring_need_event" in plain.check(True).message


def test_interrupt_problems_vary():
    exs = [irq_ex(s) for s in SEEDS]
    assert len({e.question for e in exs}) == len(exs)
    for event in (True, False):
        for notify in (True, False):
            assert sum(e.event is event and e.notify is notify for e in exs) >= 15, (event, notify)
    assert sum(e.by_empty for e in exs) >= 10
    assert sum(e.noe and not e.by_empty for e in exs) >= 10           # NOTIFY_ON_EMPTY, queue not idle
    ev = [e for e in exs if e.event and not e.by_empty]
    assert sum(not e.state["signalled_used_valid"] for e in ev) >= 10
    assert {e.where for e in ev} == {"inside", "at_new", "behind", "ahead", "zero"}
    assert any(e.state["used_idx"] < e.state["signalled_used"] for e in ev)   # used_idx wrapped
    assert any(e.where == "zero" and e.notify for e in ev)          # 0 inside [old, new) after a wrap
    assert any(e.state["inuse"] for e in exs) and any(
        e.state["avail_idx"] != e.state["last_avail_idx"] for e in exs)


def test_interrupt_answer_text():
    ex = next(irq_ex(s) for s in SEEDS if irq_ex(s).event and not irq_ex(s).by_empty)
    s = ex.state
    steps = ex.answer().steps
    assert steps.startswith("virtio_split_should_notify:")
    assert f"(u16)({s['used_idx']} - {s['used_event']} - 1) < (u16)({s['used_idx']} - " \
           f"{s['signalled_used']})" in steps
    empty = next(irq_ex(s) for s in SEEDS if irq_ex(s).by_empty).answer()
    assert "true: return true" in empty.steps and repr(empty).endswith("answer: True")
