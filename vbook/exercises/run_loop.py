"""Exercises of chapter 02 (QEMU's run loop): which exits, which QEMU handler, what comes back.

* :class:`PredictHandlers` — a generated 32-bit guest that polls the UART,
  writes it, touches pc-testdev's MMIO window and places nobody claims, and
  ends with HLT, ``isa-debug-exit`` or a triple fault: list every exit and
  the QEMU function it reaches. The check runs the guest through
  :func:`vbook.models.run_loop.run` on unicorn.
* :class:`SerialRead` — a few port writes to the 16550, then a read: which
  byte does the guest get? The check asks :mod:`vbook.devices.serial16550`.
* :class:`DebugExitStatus` — the exit status QEMU ends with after a write
  to ``isa-debug-exit`` (and what a shell shows).

Answers are computed by the models, never stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from random import Random

from vbook.devices import debug_exit, serial16550
from vbook.devices.pc_testdev import IOMEM
from vbook.devices.serial16550 import Lcr, Reg, SerialState
from vbook.exercises.base import Exercise, Feedback, Solution
from vbook.guests.base import Guest
from vbook.guests.ports import COM1

# --- a generated guest ------------------------------------------------------------------

#: enter 32-bit protected mode: flat 4 GiB code (0x08) and data (0x10) segments, an empty
#: IDT (any exception becomes a triple fault), ESP = 0x1000. Assembled with GNU as from
#: PROLOGUE_LISTING; tests/test_run_loop_exercises.py re-assembles it.
PROLOGUE = bytes.fromhex(
    "fa0f011638100f011e3e100f20c06683c8010f22c0ea44100800660f1f44"
    "00000000000000000000ffff0000009acf00ffff00000092cf0017002010"
    "000000000000000066b810008ed88ec08ed0bc00100000"
)
PROLOGUE_LISTING = """\
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, 0x1000
_start:
        cli
        lgdt  [gdtr - _start + LOAD_ADDR]
        lidt  [idt_empty - _start + LOAD_ADDR]
        mov   eax, cr0
        or    eax, 1
        mov   cr0, eax
        jmp   0x08:(protected - _start + LOAD_ADDR)
        .p2align 3
gdt:
        .quad 0
        .quad 0x00cf9a000000ffff
        .quad 0x00cf92000000ffff
gdtr:
        .word gdtr - gdt - 1
        .long gdt - _start + LOAD_ADDR
idt_empty:
        .word 0
        .long 0
        .code32
protected:
        mov   ax, 0x10
        mov   ds, ax
        mov   es, ax
        mov   ss, ax
        mov   esp, 0x1000
"""

#: a port and an address nothing on the board answers (COM2: this board has one UART)
NO_PORT = 0x2F8
NOTHING = 0xFE000000
TESTDEV_PORT = 0xE0
TESTDEV_BYTE_PORT = 0xE8
LSR_PORT = COM1 + Reg.LSR
SCR_PORT = COM1 + Reg.SCR


def _le32(v: int) -> bytes:
    return v.to_bytes(4, "little")


def _mov_dx(port: int) -> bytes:
    return b"\x66\xba" + port.to_bytes(2, "little")


Op = tuple[bytes, str]


def _lsr(rng: Random) -> Op:
    return _mov_dx(LSR_PORT) + b"\xec", f"mov dx, {LSR_PORT:#x}\nin al, dx            ; UART LSR"


def _thr(rng: Random) -> Op:
    c = rng.choice(b"ABCDEFGHJKLMNPQRSTUVWXYZ")
    return (bytes([0xB0, c]) + _mov_dx(COM1) + b"\xee",
            f"mov al, {c:#04x}        ; {chr(c)!r}\nmov dx, {COM1:#x}\nout dx, al           ; UART THR")


def _scr(rng: Random) -> Op:
    v = rng.randrange(1, 0x100)
    return (bytes([0xB0, v]) + _mov_dx(SCR_PORT) + b"\xee",
            f"mov al, {v:#04x}\nmov dx, {SCR_PORT:#x}\nout dx, al           ; UART scratch register")


def _iomem_w(rng: Random) -> Op:
    off, v = rng.randrange(0, 0x40, 4), rng.randrange(1, 2**32)
    a = IOMEM + off
    return b"\xc7\x05" + _le32(a) + _le32(v), f"mov dword ptr [{a:#x}], {v:#x}"


def _iomem_r(rng: Random) -> Op:
    a = IOMEM + rng.randrange(0, 0x40, 4)
    return b"\xa1" + _le32(a), f"mov eax, dword ptr [{a:#x}]"


def _iomem_inc(rng: Random) -> Op:
    a = IOMEM + rng.randrange(0, 0x40, 4)
    return b"\xff\x05" + _le32(a), f"inc dword ptr [{a:#x}]"


def _nothing_r(rng: Random) -> Op:
    return b"\x8b\x1d" + _le32(NOTHING), f"mov ebx, dword ptr [{NOTHING:#x}]"


def _no_port(rng: Random) -> Op:
    return _mov_dx(NO_PORT) + b"\xec", f"mov dx, {NO_PORT:#x}\nin al, dx"


def _testdev(rng: Random) -> Op:
    v = rng.randrange(1, 2**32)
    return (b"\xb8" + _le32(v) + bytes([0xE7, TESTDEV_PORT]),
            f"mov eax, {v:#x}\nout {TESTDEV_PORT:#x}, eax")


def _testdev_byte(rng: Random) -> Op:
    return _mov_dx(TESTDEV_BYTE_PORT) + b"\x66\xef", f"mov dx, {TESTDEV_BYTE_PORT:#x}\nout dx, ax"


def _ram(rng: Random) -> Op:
    a = rng.randrange(0x2000, 0x8000, 4)
    return b"\xa3" + _le32(a), f"mov dword ptr [{a:#x}], eax   ; RAM"


#: the instructions a generated guest is made of: name -> generator of (bytes, listing)
OPS: dict[str, Callable[[Random], Op]] = {
    "lsr": _lsr, "thr": _thr, "scr": _scr, "iomem_w": _iomem_w, "iomem_r": _iomem_r,
    "iomem_inc": _iomem_inc, "nothing_r": _nothing_r, "no_port": _no_port,
    "testdev": _testdev, "testdev_byte": _testdev_byte, "ram": _ram,
}


def _end_hlt(rng: Random) -> Op:
    return b"\xf4", "hlt"


def _end_debug_exit(rng: Random) -> Op:
    v = rng.randrange(0, 0x80)
    tail, text = _ops(rng, 1)
    return (_mov_dx(debug_exit.IOBASE) + bytes([0xB0, v, 0xEE]) + tail + b"\xf4",
            f"mov dx, {debug_exit.IOBASE:#x}\nmov al, {v:#x}\nout dx, al           ; isa-debug-exit\n"
            f"{text}\nhlt")


def _end_ud2(rng: Random) -> Op:
    return b"\x0f\x0b", "ud2                  ; #UD, and the IDT is empty"


#: how a generated guest ends
ENDINGS: dict[str, Callable[[Random], Op]] = {
    "hlt": _end_hlt, "debug_exit": _end_debug_exit, "ud2": _end_ud2,
}


def _ops(rng: Random, n: int) -> Op:
    parts = [OPS[rng.choice(sorted(OPS))](rng) for _ in range(n)]
    return b"".join(p[0] for p in parts), "\n".join(p[1] for p in parts)


#: the QEMU functions an exit of these guests can end in
HANDLERS = ("serial_ioport_read", "serial_ioport_write", "test_iomem_read", "test_iomem_write",
            "test_ioport_write", "unassigned_io_read", "unassigned_mem_read", "debug_exit_write",
            "kvm_handle_halt", "qemu_system_reset_request")


def _parse(item: object) -> tuple[str, str | None]:
    """'IO serial_ioport_read', ('IO', 'serial_ioport_read'), 'KVM_EXIT_HLT' -> (reason, handler)."""
    if isinstance(item, (tuple, list)) and 1 <= len(item) <= 2:
        parts = [str(x) for x in item]
    else:
        parts = re.split(r"[\s,:→>-]+", str(item).strip())
        parts = [p for p in parts if p]
    if not parts:
        return "", None
    reason = parts[0].upper().removeprefix("KVM_EXIT_")
    return reason, (parts[-1] if len(parts) > 1 else None)


class PredictHandlers(Exercise):
    """Predict every exit of a generated guest and the QEMU function that handles it."""

    title = "Predict the exits and their QEMU handlers"

    def build(self) -> str:
        body, text = _ops(self.rng, self.rng.randint(3, 6))
        self.ending = self.rng.choice(sorted(ENDINGS))
        end, end_text = ENDINGS[self.ending](self.rng)
        self.guest = Guest(f"predict-qemu-{self.seed}", 32, PROLOGUE + body + end,
                           PROLOGUE_LISTING + "\n".join(f"        {line}" for line in
                                                        (text + "\n" + end_text).splitlines()),
                           description="generated by PredictHandlers")
        self.body = text + "\n" + end_text
        return ("After a prologue that enters 32-bit protected mode (flat segments, an empty "
                "IDT), this guest runs on the board of chapter 02 (16550 UART at 0x3f8, "
                "isa-debug-exit at 0x501, pc-testdev at 0xe0/0xe8 and 0xff000000 — its ports 0xe4 "
                "and 0x2000 are left out; nothing else):"
                "\n\n" + self.body + "\n\nList every exit QEMU's kvm_cpu_exec sees, in order, "
                "with the QEMU function it ends in, e.g. ['IO serial_ioport_read', "
                "'MMIO test_iomem_write', 'HLT kvm_handle_halt'].\nHandlers: "
                + ", ".join(HANDLERS) + ".")

    def _result(self):
        from vbook.models.run_loop import run

        return run(self.guest, "unicorn")

    def check(self, answer: object) -> Feedback:
        if not isinstance(answer, Sequence) or isinstance(answer, (str, bytes)):
            return Feedback(False, "answer with a list, e.g. ['IO serial_ioport_read', 'HLT "
                                   "kvm_handle_halt']")
        got = [_parse(a) for a in answer]
        r = self._result()
        want = [(h.exit.reason.name if h.exit is not None else str(h.exit_reason), h.handler)
                for h in r.handled]
        for i, ((g_reason, g_handler), (w_reason, w_handler)) in enumerate(
                zip(got, want, strict=False)):
            n = i + 1
            if g_reason != w_reason:
                return Feedback(False, f"exit {n} is not {g_reason or '(empty)'}: which "
                                       "instruction touches a port, or an address with no RAM?")
            if g_handler is not None and g_handler != w_handler:
                h = r.handled[i]
                path = " → ".join(h.path[1:-1])
                return Feedback(False, f"exit {n} is {w_reason}, right, and kvm_cpu_exec takes it "
                                       f"through {path}; but it does not end in {g_handler}. "
                                       "Which region (or which case) is it?")
        if len(got) != len(want):
            more = "more" if len(got) < len(want) else "fewer"
            why = ""
            if len(got) > len(want) and r.end.value != "hlt":
                why = f" — look at how the run ends ({r.end.value})"
            return Feedback(False, f"the first {min(len(got), len(want))} are right; there are "
                                   f"{more} exits than that{why}")
        named = ", ".join(f"{n}. {h}" for n, h in enumerate(r.handlers, 1))
        if any(g_handler is None for _, g_handler in got):
            return Feedback(False, f"all {len(want)} exit reasons are right; now name the handler "
                                   "of each (add it after the reason)")
        return Feedback(True, f"right: {len(want)} exits, ended by {r.end.value} — {named}")

    def answer(self) -> Solution:
        r = self._result()
        value = [f"{h.exit.reason.name if h.exit else h.exit_reason} {h.handler}"
                 for h in r.handled]
        steps = "\n".join(f"{n}. {h}" for n, h in enumerate(r.handled, 1))
        return Solution(value, f"{steps}\nend: {r.end.value} — {r.detail}")


# --- the UART's registers ---------------------------------------------------------------

_WRITES = (
    (Reg.LCR, lambda rng: Lcr.DLAB, "LCR: DLAB = 1"),
    (Reg.LCR, lambda rng: Lcr.WLEN8, "LCR: 8N1, DLAB = 0"),
    (Reg.DLL, lambda rng: rng.choice((1, 2, 3, 6, 12)), "DLL or THR (offset 0)"),
    (Reg.DLM, lambda rng: rng.choice((0, 1)), "DLM or IER (offset 1)"),
    (Reg.SCR, lambda rng: rng.randrange(0x100), "SCR"),
    (Reg.MCR, lambda rng: rng.choice((0x03, 0x0B)), "MCR"),
)
_READS = (Reg.RX, Reg.IER, Reg.LCR, Reg.MCR, Reg.LSR, Reg.SCR)


class SerialRead(Exercise):
    """A few OUTs to the 16550, then an IN: what byte does the guest read?"""

    title = "What does the UART answer?"

    def build(self) -> str:
        self.writes = []
        for _ in range(self.rng.randint(3, 5)):
            reg, value, _ = self.rng.choice(_WRITES)
            self.writes.append((COM1 + reg, int(value(self.rng))))
        self.read = COM1 + self.rng.choice(_READS)
        lines = [f"OUT {port:#x} <- {v:#04x}" for port, v in self.writes]
        return ("QEMU's 16550 starts from serial_reset (LCR 0, LSR THRE|TEMT = 0x60, MCR OUT2 = "
                "0x08, divisor 12, IER 0, SCR 0). The guest writes one byte to each port, in "
                "order, then reads one:\n  " + "\n  ".join(lines)
                + f"\n  IN  {self.read:#x} -> AL\nWhich byte does AL get? (LCR.DLAB = 0x80 turns "
                "offsets 0 and 1 into DLL/DLM)")

    def _run(self) -> tuple[int, list[str]]:
        s = SerialState()
        steps = []
        for port, v in self.writes:
            serial16550.serial_ioport_write(s, port - COM1, v, 1)
            steps.append(s.take_note()["label"])
        value = serial16550.serial_ioport_read(s, self.read - COM1, 1)
        steps.append(s.take_note()["label"])
        return value, steps

    def check(self, answer: object) -> Feedback:
        if not isinstance(answer, int):
            return Feedback(False, "answer with an integer, e.g. 0x60")
        value, _ = self._run()
        if answer == value:
            return Feedback(True, f"right: {value:#04x}")
        dlab = any(p == COM1 + Reg.LCR and v & Lcr.DLAB for p, v in self.writes)
        hint = " Is DLAB set when the guest reads?" if dlab and self.read - COM1 in (0, 1) else ""
        return Feedback(False, f"not {answer:#04x}: follow each write through "
                               f"serial_ioport_write.{hint}")

    def answer(self) -> Solution:
        value, steps = self._run()
        return Solution(value, "\n".join(steps))


# --- isa-debug-exit -----------------------------------------------------------------------

class DebugExitStatus(Exercise):
    """The exit status QEMU ends with after the guest writes to isa-debug-exit."""

    title = "How does QEMU exit?"

    def build(self) -> str:
        self.size = self.rng.choice((1, 2))
        self.value = self.rng.randrange(0, 256 ** self.size)
        reg = "al" if self.size == 1 else "ax"
        return (f"A guest runs under qemu-system-x86_64 -device isa-debug-exit (iobase "
                f"{debug_exit.IOBASE:#x}) and executes\n  mov dx, {debug_exit.IOBASE:#x}\n"
                f"  mov {reg}, {self.value:#x}\n  out dx, {reg}\nWith which status does QEMU's "
                "process exit, and what does a shell print for $? Answer (status, shell).")

    def _status(self) -> tuple[int, int, str]:
        dev = debug_exit.ISADebugExitState()
        debug_exit.debug_exit_write(dev, 0, self.value, self.size)
        code = dev.runstate.shutdown_exit_code
        return code, code & 0xFF, dev.take_note()["label"]

    def check(self, answer: object) -> Feedback:
        if not (isinstance(answer, (tuple, list)) and len(answer) == 2
                and all(isinstance(a, int) for a in answer)):
            return Feedback(False, "answer with two integers: (QEMU's exit status, what $? shows)")
        code, shell, _ = self._status()
        if tuple(answer) == (code, shell):
            return Feedback(True, f"right: QEMU exits with {code}; the shell sees {shell}")
        if answer[0] != code:
            return Feedback(False, "not the status: read debug_exit_write in hw/misc/debugexit.c")
        return Feedback(False, "the status is right; a process's exit status reaches the shell "
                               "as 8 bits")

    def answer(self) -> Solution:
        code, shell, label = self._status()
        return Solution((code, shell), f"{label}\n({self.value:#x} << 1) | 1 = {code}; "
                                       f"{code} & 0xff = {shell}")


__all__ = ["DebugExitStatus", "PredictHandlers", "SerialRead"]
