"""Exercises of chapters 08 and 09: the e1000's TX ring; virtio's kicks and interrupts.

Every answer is computed by the models, never stored: :class:`TxRing` runs
QEMU's e1000 (:mod:`vbook.devices.e1000`) on a board with real descriptors in
its RAM and counts what reaches the backend; :class:`KickOrNot` asks Linux's
``virtqueue_kick_prepare_split`` (:class:`vbook.models.vring.Driver`) on a ring
in guest memory; :class:`InterruptOrNot` asks QEMU's ``virtio_should_notify``
(:class:`vbook.models.vring.Device`, plus the NOTIFY_ON_EMPTY test that
:func:`vbook.devices.virtio.virtio_should_notify` puts in front of it).
"""

from __future__ import annotations

import struct

from vbook.devices.e1000 import DESC_SIZE, MacReg, Tctl, TxdCmd, TxdStat
from vbook.devices.machine import Machine
from vbook.devices.net_client import MemoryBackend
from vbook.devices.pci import Command, Config, config_address
from vbook.exercises.base import Exercise, Feedback, Solution
from vbook.memory import GuestMemory
from vbook.models.qemu_memory import address_space_rw
from vbook.models.vring import AvailFlag, Device, Driver, Layout, UsedFlag, need_event
from vbook.trace import TraceRecorder

_U16 = 0xFFFF


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _yes_no(answer: object, yes: str) -> bool | None:
    """True/False, or the words ``yes`` / "no " + ``yes`` (any case); None if unreadable."""
    if isinstance(answer, bool):
        return answer
    if isinstance(answer, str):
        a = " ".join(answer.strip().lower().replace("_", " ").split())
        if a == yes:
            return True
        if a in (f"no {yes}", f"don't {yes}", f"do not {yes}"):
            return False
    return None


# --- chapter 08: the e1000 TX ring ------------------------------------------------------------

_BAR0 = 0xFEBC0000        # where SeaBIOS puts the first e1000's registers on -M pc
_TDBA = 0x3000            # the TX ring
_STALE = 0x4000           # the previous lap's buffers, 64 bytes each
_BUFS = 0x8000            # this lap's buffers, 2 KiB each (an skb's data)
_RAM = 0x10000
_MAC = bytes.fromhex("525400123456")
_STALE_LEN = 60
_MID = int(TxdCmd.IFCS)                                   # Linux e1000_tx_queue: not the last
_LAST = int(TxdCmd.EOP | TxdCmd.IFCS | TxdCmd.RS)         # ... the last: adapter->txd_cmd
_CMD_NAMES = (("EOP", TxdCmd.EOP), ("IFCS", TxdCmd.IFCS), ("RS", TxdCmd.RS))


def _cmd(lower: int) -> str:
    return " | ".join(n for n, b in _CMD_NAMES if lower & b)


class _Board:
    """tests/test_e1000.py's ``Nic``: one e1000 on PCI, BAR0 mapped, bus mastering on,
    a :class:`MemoryBackend` behind it; register writes go through ``address_space_rw``."""

    def __init__(self) -> None:
        self.rec = TraceRecorder()
        self.backend = MemoryBackend()
        self.m = Machine(nics=[self.backend], ram=GuestMemory(_RAM, record=False))
        self.m.ctx.trace = self.rec
        self.cfg(Config.BASE_ADDRESS_0, _BAR0)
        self.cfg(Config.COMMAND, Command.MEMORY | Command.MASTER, 2)

    @property
    def ram(self) -> GuestMemory:
        return self.m.ram

    def cfg(self, reg: int, value: int, size: int = 4) -> None:
        address_space_rw(self.m.address_space_io, 0xCF8,
                         bytearray(config_address(0, 1, 0, reg).to_bytes(4, "little")), True)
        address_space_rw(self.m.address_space_io, 0xCFC + (reg & 3),
                         bytearray(value.to_bytes(size, "little")), True)

    def w(self, reg: MacReg, value: int) -> None:
        address_space_rw(self.m.address_space_memory, _BAR0 + reg.offset,
                         bytearray(value.to_bytes(4, "little")), True)

    def r(self, reg: MacReg) -> int:
        buf = bytearray(4)
        address_space_rw(self.m.address_space_memory, _BAR0 + reg.offset, buf, False)
        return int.from_bytes(buf, "little")

    def txd(self, i: int, buf: int, lower: int, upper: int = 0) -> None:
        self.ram.write(_TDBA + DESC_SIZE * i, struct.pack("<QII", buf, lower, upper))


def _frame(r, length: int, n: int) -> bytes:
    dst = r.choice((b"\xff" * 6, bytes.fromhex("525400abcdef"), bytes.fromhex("01005e000001")))
    etype = r.choice((0x0800, 0x86DD, 0x88B5)).to_bytes(2, "big")
    body = bytes((n * 37 + i) & 0xFF for i in range(length - 14))
    return dst + _MAC + etype + body


def _split(r, length: int, parts: int) -> list[int]:
    """``length`` bytes in ``parts`` buffers, the first with at least the Ethernet header."""
    if parts == 1:
        return [length]
    cuts = sorted(r.sample(range(14, length), parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, length], strict=True)]


class TxRing(Exercise):
    """The driver writes TDT: how many frames reach the backend, and where is TDH then?"""

    title = "Walk the e1000 TX ring"

    #: what is special about the ring (weights): nothing; TCTL.EN clear; TDT past the
    #: ring (a driver that forgot to wrap it); the driver filled every descriptor
    VARIANTS = {"normal": 14, "en_off": 2, "bogus": 3, "full": 2}

    def build(self) -> str:
        r = self.rng
        n = self.n = r.choice((8, 8, 16, 16, 24, 32, 48, 64))
        variant = r.choices(list(self.VARIANTS), weights=list(self.VARIANTS.values()))[0]
        if variant == "full" and n > 16:
            variant = "normal"
        self.variant = variant
        carry = r.choice((1, 2)) if variant in ("normal", "bogus") and r.random() < 0.3 else 0
        if variant == "full":
            k = n
            h = r.randrange(n)
            tdt = h
        elif variant == "bogus":
            k = r.randint(2, min(12, n - carry))
            if r.random() < 0.6:                       # TDT = count: "wrapped" to the ring's size
                h = n - k
                tdt = n
            else:                                      # TDT never wrapped at all
                h = r.randint(n - k + 1, n - 1)
                tdt = h + k
        else:
            k = r.randint(2, min(12, n - 1 - carry))
            h = r.randint(n - k, n - 1) if r.random() < 0.45 else r.randrange(0, n - k)
            tdt = (h + k) % n
        self.tdh, self.new_tdt, self.carry, self.k = h, tdt, carry, k
        self.tctl = int(Tctl.PSP) if variant == "en_off" else int(Tctl.EN | Tctl.PSP)
        first = (h - carry) % n
        # the descriptors from `first` on, frame by frame: [(slot, buffer, lower, bytes)]
        partial = r.random() < 0.3                     # the driver wrote TDT in mid-frame
        descs: list[tuple[int, int, int, bytes]] = []
        left, nframe, pos = carry + k, 0, first
        while left:
            parts = r.choice((1, 1, 1, 2, 2, 3))
            if not descs and carry:                    # the cut frame goes on inside the range
                parts = max(parts, carry + 1)
            parts = min(parts, left)
            cut = parts == left and partial and not (carry and not descs)
            length = r.randint(max(60, 15 * parts), 1514)
            data = _frame(r, length, nframe)
            off = 0
            for j, size in enumerate(_split(r, length, parts)):
                eop = j == parts - 1 and not cut
                shift = r.choice((0, 0x40, 0x100, 0x2c2)) if size <= 0x800 - 0x2c2 else 0
                buf = _BUFS + 0x800 * len(descs) + shift
                descs.append((pos, buf, (_LAST if eop else _MID) | size, data[off:off + size]))
                off += size
                pos = (pos + 1) % n
            left -= parts
            nframe += 1
        self.partial_tail = not descs[-1][2] & TxdCmd.EOP
        self.descs = descs
        self.old_tdt = h
        if variant == "en_off" and r.random() < 0.5:   # some were given while TX was off
            self.old_tdt = (h + r.randint(1, k - 1)) % n
        self._run()
        return self._text()

    def _run(self) -> None:
        """Give the board this history, then the TDT write; record what the device did."""
        b = self.board = _Board()
        n = self.n
        b.w(MacReg.TDBAL, _TDBA)
        b.w(MacReg.TDBAH, 0)
        b.w(MacReg.TDLEN, n * DESC_SIZE)
        b.w(MacReg.TDH, 0)
        b.w(MacReg.TDT, 0)
        b.w(MacReg.TCTL, self.tctl)
        for i in range(n):                             # the previous lap: done, DD written back
            buf = _STALE + 64 * i
            b.ram.write(buf, b"\xff" * 6 + _MAC + b"\x88\xb5" + bytes([i]) * (_STALE_LEN - 14))
            b.txd(i, buf, _LAST | _STALE_LEN, int(TxdStat.DD))
        first = self.descs[0][0]
        b.w(MacReg.TDH, first)
        b.w(MacReg.TDT, first)                         # TDH == TDT: nothing to do
        for slot, buf, lower, data in self.descs[:self.carry]:   # the frame the last TDT write cut
            b.ram.write(buf, data)
            b.txd(slot, buf, lower)
        if self.carry:
            b.w(MacReg.TDT, self.tdh)
        rest = self.descs[self.carry:]
        if self.old_tdt != self.tdh:                   # given while TCTL.EN was clear
            m = (self.old_tdt - self.tdh) % self.n
            for slot, buf, lower, data in rest[:m]:
                b.ram.write(buf, data)
                b.txd(slot, buf, lower)
            b.w(MacReg.TDT, self.old_tdt)
            rest = rest[m:]
        assert b.backend.sent == [] and b.r(MacReg.TDH) == self.tdh, "the history sent something"
        assert b.r(MacReg.TDT) == self.old_tdt
        for slot, buf, lower, data in rest:
            b.ram.write(buf, data)
            b.txd(slot, buf, lower)
        b.rec.events.clear()
        b.w(MacReg.TDT, self.new_tdt)                  # set_tctl -> start_xmit
        self.sent = list(b.backend.sent)
        self.tdh_after = b.r(MacReg.TDH)
        self.events = [ev for ev in b.rec.events if ev.actor == "device" and ev.kind == "tx"]

    def _text(self) -> str:
        n, h = self.n, self.tdh
        tctl = " | ".join(nm for nm, bit in (("EN", Tctl.EN), ("PSP", Tctl.PSP)) if self.tctl & bit)
        tctl += "; EN clear" if not self.tctl & Tctl.EN else ""

        def row(slot: int, buf: int, lower: int) -> str:
            return (f"  [{slot:2d}] buffer_addr {buf:#x}, lower {lower:#010x} "
                    f"({_cmd(lower)}, length {lower & 0xFFFF})")

        lines = [f"QEMU's e1000 (hw/net/e1000.c): the TX ring is at TDBA {_TDBA:#x}, TDLEN = "
                 f"{n * DESC_SIZE:#x} bytes of 16-byte legacy descriptors; TCTL = {self.tctl:#x} "
                 f"({tctl}); bus mastering is on.",
                 f"TDH = {h}, TDT = {self.old_tdt}."]
        if self.carry:
            cut = self.descs[:self.carry]
            which = " and ".join(str(d[0]) for d in cut)
            lines.append(f"The previous TDT write (TDT = {h}) made the device process descriptor"
                         f"{'s' if self.carry > 1 else ''} {which}:")
            lines += [row(*d[:3]) for d in cut]
        lines.append(f"Every descriptor not listed here still holds a frame of the ring's "
                     f"previous lap: one descriptor with {_cmd(_LAST)}, length {_STALE_LEN}, DD set.")
        rest = self.descs[self.carry:]
        if self.old_tdt != h:
            m = (self.old_tdt - h) % n
            lines.append(f"Descriptors {rest[0][0]} to {rest[m - 1][0]} were given by that TDT write:")
            lines += [row(*d[:3]) for d in rest[:m]]
            rest = rest[m:]
            lines.append("Then the driver fills:")
        else:
            lines.append("The driver fills:")
        lines += [row(*d[:3]) for d in rest]
        lines.append(f"and writes TDT = {self.new_tdt}.")
        lines.append("How many frames reach the backend (qemu_send_packet), and what is TDH after "
                     "the write? Answer (frames, tdh).")
        return "\n".join(lines)

    def _value(self) -> tuple[int, int]:
        return len(self.sent), self.tdh_after

    def _processed(self) -> list[int]:
        """The descriptor indices start_xmit read, in order."""
        return [ev.data["index"] for ev in self.events
                if ev.data.get("fn") == "start_xmit" and "index" in ev.data]

    def check(self, answer: object) -> Feedback:
        frames, tdh = self._value()
        if isinstance(answer, tuple) and len(answer) == 2:
            f, t = answer
        else:
            f, t = answer, None
        if not _is_int(f) or (t is not None and not _is_int(t)):
            return Feedback(False, "answer with the number of frames, or (frames, tdh): two ints")
        assert isinstance(f, int)
        if f != frames:
            return Feedback(False, self._frames_hint(f))
        if t is None:
            return Feedback(True, f"right: {frames} frame{'s' if frames != 1 else ''}. Part 2: what is "
                                  "TDH after the write? Answer (frames, tdh)")
        if t == tdh:
            return Feedback(True, f"right: {frames} frame{'s' if frames != 1 else ''} reach the "
                                  f"backend and TDH = {tdh}")
        return Feedback(False, "the frames are right; " + self._tdh_hint(t))

    def _frames_hint(self, f: int) -> str:
        frames = len(self.sent)
        v = self.variant
        listed_eops = sum(1 for d in self.descs[self.carry:] if d[2] & TxdCmd.EOP)
        if v == "en_off":
            return "look at TCTL before you count anything: does start_xmit send with EN clear?"
        if v == "full" and f:
            return ("after the write TDT equals TDH: what does start_xmit's loop do then — and how "
                    "would the device tell a full ring from an empty one?")
        if v == "bogus" and f == listed_eops:
            return ("is the new TDT inside the ring? TDH wraps to zero at TDLEN / the descriptor "
                    "size; where does start_xmit stop if TDH never equals TDT?")
        if f < 0:
            return "a count of frames is not negative"
        if self.partial_tail and f == frames + 1:
            return ("the last descriptors before TDT have no EOP: does the device send a frame "
                    "before it reaches the frame's EOP descriptor?")
        if self.carry and f == frames - 1:
            return ("the frame the previous TDT write cut short is still one frame: the device kept "
                    "its first bytes in tx.data and sends it at its EOP")
        if f == len(self._processed()):
            return "count frames, not descriptors: a frame ends at the descriptor with EOP"
        return ("not yet: walk start_xmit from TDH to the new TDT, one descriptor at a time; a frame "
                "goes to qemu_send_packet at each descriptor with EOP")

    def _tdh_hint(self, t: int) -> str:
        n, v = self.n, self.variant
        if v == "en_off":
            return "TDH is not: with TCTL.EN clear, does start_xmit move it?"
        if v == "full":
            return "TDH is not: does start_xmit move TDH when it finds TDH == TDT?"
        if v == "bogus" and t == self.new_tdt:
            return ("TDH is not: TDH only takes values inside the ring, so it never meets this TDT; "
                    "start_xmit stops when TDH comes back to where it started")
        if t >= n:
            return "TDH is not: it wraps to zero when it reaches TDLEN / the descriptor size"
        eops = [d[0] for d in self.descs[self.carry:] if d[2] & TxdCmd.EOP]
        if eops and t == (eops[-1] + 1) % n:
            return "TDH is not: start_xmit advances TDH over every descriptor up to TDT, EOP or not"
        return "TDH is not: follow start_xmit's loop to its end"

    def answer(self) -> Solution:
        n, lines = self.n, []
        sent_at = []
        for ev in self.events:
            fn = ev.data.get("fn")
            if fn == "start_xmit" and "index" in ev.data:
                d = ev.data["desc"]
                lines.append(f"  TDH {ev.data['index']:2d}: {_cmd(d['lower']) or 'no flags'}, "
                             f"length {d['length']}")
            elif fn == "e1000_send_packet":
                sent_at.append(ev.data["len"])
                lines[-1] += f" -> EOP: frame {len(sent_at)} ({ev.data['len']} bytes) to qemu_send_packet"
            elif ev.data.get("wraparound"):
                lines.append(f"  TDH is back at {ev.data['tdh']}, where it started, and TDT = "
                             f"{ev.data['tdt']} is outside the {n}-descriptor ring: start_xmit stops")
        head = [f"set_tctl (the TDT write handler) stores TDT = {self.new_tdt} and calls start_xmit."]
        if not self.tctl & Tctl.EN:
            head.append(f"TCTL.EN is clear: start_xmit returns at once; nothing is sent, TDH stays "
                        f"{self.tdh_after}.")
        elif not lines:
            head.append(f"TDH = {self.tdh} already equals TDT: the loop runs zero times. The "
                        f"{self.k} descriptors the driver filled wait for a TDT that differs from "
                        "TDH — which is why drivers keep one descriptor unused (Linux e1000's "
                        "E1000_DESC_UNUSED).")
        else:
            head.append(f"while (TDH != TDT), from TDH = {self.tdh} (the ring has {n} descriptors, "
                        "TDH wraps to 0 after the last):")
        if self.carry:
            head.insert(0, f"tx.data already holds the {sum(d[2] & 0xFFFF for d in self.descs[:self.carry])}"
                           f" bytes of descriptor{'s' if self.carry > 1 else ''} "
                           f"{', '.join(str(d[0]) for d in self.descs[:self.carry])} (no EOP yet).")
        tail = []
        left = self.board.m.e1000[0].tx.size
        if left and lines:
            tail.append(f"the last descriptors read had no EOP: their {left} bytes wait in tx.data "
                        "for the rest of the frame")
        frames, tdh = self._value()
        tail.append(f"{frames} frame{'s' if frames != 1 else ''} sent; TDH = {tdh}")
        return Solution(self._value(), "\n".join(head + lines + tail))


# --- chapter 09, the driver: kick or not? -------------------------------------------------------

_RING_BASE = 0x0
_TX_BUFS = 0x40000


class KickOrNot(Exercise):
    """The driver added buffers: does ``virtqueue_kick_prepare`` say to notify the device?"""

    title = "Kick or not?"

    def build(self) -> str:
        r = self.rng
        self.num = num = r.choice((8, 16, 32, 64, 128, 256))
        self.event = r.random() < 0.65
        self.k = k = r.randint(1, min(num, 8))
        if r.random() < 0.35:                          # near the 16-bit wrap
            old = r.randrange(0x10000 - 9, 0x10000)
        else:
            old = r.choice((r.randrange(0, 64), r.randrange(64, 0x10000)))
        self.old, self.new = old, (old + k) & _U16
        self.mem = GuestMemory(_TX_BUFS + 0x800 * 8, record=False)
        self.layout = lay = Layout(num, base=_RING_BASE)
        self.drv = drv = Driver(self.mem, lay, event_idx=self.event, start_idx=old)
        for i in range(k):                             # virtqueue_add_outbuf: header + frame
            drv.add(out=[(_TX_BUFS + 0x800 * i, 12 + r.randint(60, 1514))])
        # what the device last wrote
        if self.event:
            self.where = r.choices(("inside", "at_new", "ahead", "behind"), (9, 4, 2, 5))[0]
            if self.where == "inside":
                ev = old + r.randrange(k)
            elif self.where == "at_new":
                ev = old + k
            elif self.where == "ahead":
                ev = old + k + r.randint(1, num)
            else:
                ev = old - r.randint(1, 2 * num)
            self.avail_event = ev & _U16
            self.used_flags = int(UsedFlag.NO_NOTIFY) if r.random() < 0.3 else 0
        else:
            self.where = "flags"
            self.used_flags = r.choice((0, int(UsedFlag.NO_NOTIFY)))
            self.avail_event = r.choice((old, (old + r.randrange(k + 1)) & _U16, r.randrange(0x10000)))
        self.mem.write_u16(lay.avail_event, self.avail_event)
        self.mem.write_u16(lay.used_flags, self.used_flags)
        assert self.mem.read_u16(lay.avail_idx) == self.new and drv.num_added == k
        self.kick = drv.kick_prepare()                 # Linux virtqueue_kick_prepare_split
        return self._text()

    def _text(self) -> str:
        num, lay = self.num, self.layout
        feat = ("VIRTIO_RING_F_EVENT_IDX negotiated" if self.event
                else "VIRTIO_RING_F_EVENT_IDX not negotiated")
        flags = f"{self.used_flags:#x}" + (" (VRING_USED_F_NO_NOTIFY)" if self.used_flags else "")
        return (f"virtio-net's TX queue: a split ring of {num} entries at GPA {lay.base:#x}; {feat}.\n"
                f"At the driver's last virtqueue_kick_prepare, avail->idx was {self.old}. Since then "
                f"start_xmit has added {self.k} buffer{'s' if self.k > 1 else ''} "
                f"(virtqueue_add_outbuf): avail->idx = {self.new} now.\n"
                f"The device's side of the ring: used->flags = {flags}; avail_event (the u16 after "
                f"used->ring[{num - 1}], at GPA {lay.avail_event:#x}) = {self.avail_event}.\n"
                "Does virtqueue_kick_prepare (virtqueue_kick_prepare_split) say kick? "
                "Answer True (kick: virtqueue_notify) or False.")

    def check(self, answer: object) -> Feedback:
        a = _yes_no(answer, "kick")
        if a is None:
            return Feedback(False, 'answer True (kick) or False (no kick); "kick" / "no kick" too')
        if a == self.kick:
            why = self._why()
            return Feedback(True, f"right: {why}")
        if self.event:
            if self.used_flags and self.kick and not a:
                return Feedback(False, "with EVENT_IDX negotiated, does virtqueue_kick_prepare_split "
                                       "read used->flags at all?")
            if (self.old <= self.avail_event < self.old + self.k) != self.kick:
                return Feedback(False, "the indices are 16-bit and wrap: compare them as "
                                       "vring_need_event does, in u16 arithmetic")
            return Feedback(False, "with EVENT_IDX the device asks for a kick when avail->idx passes "
                                   "avail_event: did the driver's move from old to new pass it? "
                                   "(vring_need_event)")
        if a is False and not self.used_flags:
            return Feedback(False, "without EVENT_IDX, is avail_event read at all? Look only at "
                                   "used->flags")
        return Feedback(False, "without EVENT_IDX the driver looks only at used->flags: what does "
                               "VRING_USED_F_NO_NOTIFY there mean?")

    def _why(self) -> str:
        if self.event:
            return (f"vring_need_event({self.avail_event}, {self.new}, {self.old}) is "
                    f"{'true' if self.kick else 'false'}: {'kick' if self.kick else 'no kick'}")
        return (f"used->flags = {self.used_flags:#x}: "
                f"{'NO_NOTIFY set, no kick' if self.used_flags else 'no NO_NOTIFY, kick'}")

    def answer(self) -> Solution:
        ev, new, old = self.avail_event, self.new, self.old
        lines = [f"virtqueue_kick_prepare_split: old = avail_idx_shadow - num_added = {new} - {self.k}"
                 f" = {old} (mod 2^16), new = {new}."]
        if self.event:
            a, b = (new - ev - 1) & _U16, (new - old) & _U16
            lines.append("vq->event: needs_kick = vring_need_event(avail_event, new, old)")
            lines.append("  = (u16)(new - event - 1) < (u16)(new - old)")
            lines.append(f"  = (u16)({new} - {ev} - 1) < (u16)({new} - {old})")
            lines.append(f"  = {a} < {b}: {'true' if a < b else 'false'}")
            lines.append("(true iff avail_event is in [old, new) mod 2^16: the device asked to be "
                         "told when the driver publishes entry avail_event)")
            if self.used_flags:
                lines.append("used->flags (NO_NOTIFY) is not read when EVENT_IDX is negotiated.")
            assert (a < b) == need_event(ev, new, old) == self.kick
        else:
            lines.append(f"no EVENT_IDX: needs_kick = !(used->flags & VRING_USED_F_NO_NOTIFY) = "
                         f"!({self.used_flags:#x} & 0x1) = {'true' if self.kick else 'false'}")
            lines.append("(avail_event is not read without EVENT_IDX)")
        lines.append("kick: virtqueue_notify writes the queue index to the notify register"
                     if self.kick else "no kick: the device will see the new buffers without one")
        return Solution(self.kick, "\n".join(lines))


# --- chapter 09, the device: interrupt or not? ----------------------------------------------------

_RX_BUFS = 0x40000


def _should_notify(dev: Device, notify_on_empty: bool) -> tuple[bool, bool]:
    """QEMU 9.2.4 ``virtio_split_should_notify``: (interrupt?, by NOTIFY_ON_EMPTY?). The
    first test is :func:`vbook.devices.virtio.virtio_should_notify`'s; the ring's is
    :meth:`Device.should_notify` (which moves ``signalled_used``)."""
    if notify_on_empty and not dev.inuse and dev.empty():
        return True, True
    return dev.should_notify(), False


class InterruptOrNot(Exercise):
    """QEMU flushed used entries: does ``virtio_should_notify`` interrupt the guest?"""

    title = "Interrupt or not?"

    def build(self) -> str:
        r = self.rng
        self.num = num = r.choice((8, 16, 32, 64, 128, 256))
        self.event = r.random() < 0.65
        self.noe = r.random() < 0.3
        s0 = r.randrange(0x10000 - 12, 0x10000) if r.random() < 0.35 else r.randrange(0x10000)
        self.mem = mem = GuestMemory(_RX_BUFS + 0x800 * 16, record=False)
        self.layout = lay = Layout(num, base=0)
        drv = Driver(mem, lay, event_idx=self.event, start_idx=s0)
        dev = self.dev = Device(mem, lay, event_idx=self.event, start_idx=s0)

        def give(n: int) -> None:                      # virtio-net's RX buffers (device-writable)
            for i in range(n):
                drv.add(in_=[(_RX_BUFS + 0x800 * (i % 16), 1526)])

        def take(n: int, used: int) -> None:           # virtio_net_receive: pop, fill, flush
            chains = [dev.pop() for _ in range(n)]
            for i, c in enumerate(chains[:used]):
                dev.fill(c, r.randint(60, 1526), i)
            if used:
                dev.flush(used)

        # earlier: frames delivered and (unless just reset) an interrupt decision made
        self.first = r.random() < 0.15
        a = 0 if self.first else r.randint(1, min(num, 6))   # first: nothing flushed before
        extra = r.choice((0, 0, 1, 2, 3)) if num > 8 else r.choice((0, 1))
        give(a + extra)
        if a:
            take(a, a)
            _should_notify(dev, self.noe)
            while drv.get_used() is not None:           # the guest's NAPI poll took them
                pass
        # now: more buffers; the device pops some, fills some and flushes them
        shape = r.choice(("empty", "empty", "pending", "inuse")) if self.noe else \
            r.choice(("empty", "pending", "inuse"))
        b = r.randint(1 if shape == "empty" or extra else 2, min(8, num - extra))
        total = extra + b
        popped = r.randint(1, total - 1) if shape == "pending" else total
        used = r.randint(1, total - 1) if shape == "inuse" else popped
        give(b)
        take(popped, used)
        old, new = dev.signalled_used, dev.used_idx
        # the driver's side: used_event / NO_INTERRUPT
        if self.event:
            self.where = r.choices(("inside", "at_new", "behind", "ahead", "zero"), (8, 4, 4, 1, 2))[0]
            span = (new - old) & _U16
            if self.where == "inside":
                ue = old + r.randrange(span) if span else old
            elif self.where == "at_new":
                ue = new
            elif self.where == "behind":
                ue = old - r.randint(1, num)
            elif self.where == "ahead":
                ue = new + r.randint(1, num)
            else:                                       # virtqueue_disable_cb with EVENT_IDX
                ue = 0
            mem.write_u16(lay.used_event, ue & _U16)
            if r.random() < 0.25:                       # avail->flags holds NO_INTERRUPT anyway
                mem.write_u16(lay.avail_flags, int(AvailFlag.NO_INTERRUPT))
        else:
            self.where = "flags"
            if r.random() < 0.5:
                drv.disable_cb()                        # avail->flags = VRING_AVAIL_F_NO_INTERRUPT
        self.state = {
            "avail_flags": mem.read_u16(lay.avail_flags), "avail_idx": mem.read_u16(lay.avail_idx),
            "used_event": mem.read_u16(lay.used_event), "used_idx_mem": mem.read_u16(lay.used_idx),
            "last_avail_idx": dev.last_avail_idx, "inuse": dev.inuse, "used_idx": dev.used_idx,
            "signalled_used": dev.signalled_used, "signalled_used_valid": dev.signalled_used_valid,
        }
        self.notify, self.by_empty = _should_notify(dev, self.noe)
        return self._text()

    def _text(self) -> str:
        s, num = self.state, self.num
        feats = [("VIRTIO_RING_F_EVENT_IDX", self.event), ("VIRTIO_F_NOTIFY_ON_EMPTY", self.noe)]
        on = [f for f, v in feats if v]
        off = [f for f, v in feats if not v]
        neg = (f"negotiated: {', '.join(on)}" if on else "") + ("; " if on and off else "") + \
              (f"not negotiated: {', '.join(off)}" if off else "")
        af = f"{s['avail_flags']:#x}" + (" (VRING_AVAIL_F_NO_INTERRUPT)" if s["avail_flags"] else "")
        return (f"QEMU (hw/virtio/virtio.c), virtio-net's RX queue: a split ring of {num} entries; "
                f"{neg}.\n"
                f"Guest memory: avail->flags = {af}, avail->idx = {s['avail_idx']}, used_event "
                f"(avail->ring[{num}]) = {s['used_event']}, used->idx = {s['used_idx_mem']}.\n"
                f"QEMU's VirtQueue: last_avail_idx = {s['last_avail_idx']}, inuse = {s['inuse']}, "
                f"used_idx = {s['used_idx']}, signalled_used = {s['signalled_used']}, "
                f"signalled_used_valid = {'true' if s['signalled_used_valid'] else 'false'}.\n"
                "virtio_net_receive has just published used entries (virtqueue_flush) and calls "
                "virtio_notify. Does virtio_should_notify (virtio_split_should_notify) say "
                "interrupt? Answer True (interrupt the guest) or False.")

    def check(self, answer: object) -> Feedback:
        a = _yes_no(answer, "interrupt")
        if a is None:
            return Feedback(False, 'answer True (interrupt) or False (no interrupt); "interrupt" / '
                                   '"no interrupt" too')
        s = self.state
        if a == self.notify:
            return Feedback(True, f"right: {self._why()}")
        if self.by_empty:
            return Feedback(False, "look at the features first: with NOTIFY_ON_EMPTY, when does QEMU "
                                   "interrupt whatever the ring says?")
        if self.noe and a and (s["inuse"] or s["avail_idx"] != s["last_avail_idx"]):
            why = ("is nothing in use" if s["inuse"] else "is the avail ring empty "
                   "(last_avail_idx against avail->idx)")
            if self.event and not s["signalled_used_valid"]:
                why = ""
            if why:
                return Feedback(False, f"NOTIFY_ON_EMPTY fires only on an idle, empty queue: {why}?")
        if not self.event:
            if not a and not s["avail_flags"]:
                return Feedback(False, "without EVENT_IDX, does QEMU read used_event at all? Look at "
                                       "avail->flags")
            return Feedback(False, "without EVENT_IDX, QEMU looks only at avail->flags: what does "
                                   "VRING_AVAIL_F_NO_INTERRUPT mean?")
        if not s["signalled_used_valid"]:
            return Feedback(False, "look at signalled_used_valid: what does QEMU do when it has no "
                                   "valid signalled_used to compare with?")
        if s["avail_flags"] and not a:
            return Feedback(False, "with EVENT_IDX negotiated, does virtio_split_should_notify read "
                                   "avail->flags at all?")
        if self.where == "zero":
            return Feedback(False, "used_event = 0 is Linux's virtqueue_disable_cb \"hack\", not a "
                                   "flag: QEMU compares it like any other used_event, in u16 arithmetic")
        return Feedback(False, "with EVENT_IDX QEMU interrupts when used_idx moves past used_event "
                               "since the last interrupt: old = signalled_used, new = used_idx "
                               "(vring_need_event, in u16 arithmetic)")

    def _why(self) -> str:
        s = self.state
        if self.by_empty:
            return "NOTIFY_ON_EMPTY, nothing in use and the avail ring empty: interrupt"
        if not self.event:
            return (f"avail->flags = {s['avail_flags']:#x}: "
                    f"{'NO_INTERRUPT set, no interrupt' if s['avail_flags'] else 'interrupt'}")
        if not s["signalled_used_valid"]:
            return "signalled_used_valid is false: interrupt"
        return (f"vring_need_event({s['used_event']}, {s['used_idx']}, {s['signalled_used']}) is "
                f"{'true: interrupt' if self.notify else 'false: no interrupt'}")

    def answer(self) -> Solution:
        s = self.state
        lines = ["virtio_split_should_notify:"]
        if self.noe:
            empty = s["avail_idx"] == s["last_avail_idx"]
            lines.append(f"  NOTIFY_ON_EMPTY: !inuse ({s['inuse']}) && virtio_queue_empty "
                         f"(last_avail_idx {s['last_avail_idx']} == avail->idx {s['avail_idx']}: "
                         f"{'yes' if empty else 'no'}) -> "
                         f"{'true: return true' if self.by_empty else 'false, go on'}")
        else:
            lines.append("  NOTIFY_ON_EMPTY not negotiated: skip its test")
        if self.by_empty:
            pass
        elif not self.event:
            lines.append(f"  no EVENT_IDX: return !(avail->flags & VRING_AVAIL_F_NO_INTERRUPT) = "
                         f"!({s['avail_flags']:#x} & 0x1) = {'true' if self.notify else 'false'}")
            lines.append("  (used_event is not read)")
        else:
            old, new, ue = s["signalled_used"], s["used_idx"], s["used_event"]
            v = s["signalled_used_valid"]
            lines.append(f"  v = signalled_used_valid = {'true' if v else 'false'}; signalled_used_valid"
                         f" = true; old = signalled_used = {old}; new = signalled_used = used_idx = {new}")
            a, b = (new - ue - 1) & _U16, (new - old) & _U16
            lines.append(f"  return !v || vring_need_event(used_event {ue}, new {new}, old {old})")
            lines.append(f"  vring_need_event = (u16)({new} - {ue} - 1) < (u16)({new} - {old}) = "
                         f"{a} < {b}: {'true' if a < b else 'false'}")
            if not v:
                lines.append("  !v is true: interrupt whatever used_event says")
            if s["avail_flags"]:
                lines.append("  (avail->flags is not read with EVENT_IDX)")
            assert (not v or a < b) == self.notify
        lines.append("virtio_notify -> virtio_irq: the guest gets the queue's interrupt" if self.notify
                     else "no interrupt: the guest finds the entries when it next polls")
        return Solution(self.notify, "\n".join(lines))


__all__ = ["InterruptOrNot", "KickOrNot", "TxRing"]
