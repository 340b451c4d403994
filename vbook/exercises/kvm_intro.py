"""Exercises of chapter 01 (the /dev/kvm API): ioctl numbers, kvm_run, exits.

Each answer is computed — by the ioctl encoding rules, the C layout rules, or
by running the guest — never stored.
"""

from __future__ import annotations

from collections.abc import Sequence

from vbook.exercises.base import Exercise, Feedback, Solution
from vbook.models import ctypes_layout as cl
from vbook.models.kvm_api import KVMIO, Ioctl, decode_ioctl

_DIR = {0: "_IO", 1: "_IOW", 2: "_IOR", 3: "_IOWR"}
_STRUCT = {
    "SET_USER_MEMORY_REGION": "struct kvm_userspace_memory_region",
    "GET_REGS": "struct kvm_regs", "SET_REGS": "struct kvm_regs",
    "GET_SREGS": "struct kvm_sregs", "SET_SREGS": "struct kvm_sregs",
    "TRANSLATE": "struct kvm_translation", "ENABLE_CAP": "struct kvm_enable_cap",
}


class IoctlNumber(Exercise):
    """Encode an ioctl request number from its _IOW/_IOR definition."""

    title = "Encode a KVM ioctl number"

    def build(self) -> str:
        self.name = self.rng.choice(sorted(_STRUCT))
        self.value = int(Ioctl[self.name])
        d, _, nr, size = decode_ioctl(self.value)
        return (f"linux/kvm.h defines\n  #define KVM_{self.name} {_DIR[d]}(KVMIO, {nr:#04x}, "
                f"{_STRUCT[self.name]})\nwith KVMIO = {KVMIO:#x} and sizeof({_STRUCT[self.name]})"
                f" = {size}.\nWhat number does user space pass to ioctl()? "
                "(bits 31:30 direction, 29:16 size, 15:8 type, 7:0 nr; _IOW = 1, _IOR = 2)")

    def check(self, answer: object) -> Feedback:
        if not isinstance(answer, int):
            return Feedback(False, "answer with an integer, e.g. 0x4020AE46")
        if answer == self.value:
            return Feedback(True, f"right: KVM_{self.name} = {self.value:#x}")
        want, got = decode_ioctl(self.value), decode_ioctl(answer)
        parts = ("direction (bits 31:30)", "type (bits 15:8)", "nr (bits 7:0)", "size (bits 29:16)")
        wrong = [p for p, w, g in zip(parts, want, got, strict=True) if w != g]
        return Feedback(False, "not yet: check the " + ", ".join(wrong))

    def answer(self) -> Solution:
        d, t, nr, size = decode_ioctl(self.value)
        steps = (f"direction {d} << 30 = {d << 30:#x}\nsize {size} << 16 = {size << 16:#x}\n"
                 f"type {t:#x} << 8 = {t << 8:#x}\nnr {nr:#x}\nsum = {self.value:#x}")
        return Solution(self.value, steps)


class KvmRunOffset(Exercise):
    """Find a field's offset in the mmapped struct kvm_run by the C layout rules."""

    title = "Where in kvm_run?"

    def build(self) -> str:
        member = self.rng.choice(["io", "mmio", "hypercall", "ex"])
        field = self.rng.choice([f for f in cl.KVM_RUN_UNION[member] if f.name != "pad"])
        self.path = f"{member}.{field.name}"
        self.value = cl.kvm_run_offset(self.path)
        return (f"After KVM_RUN, user space reads run->{self.path}. The exit union starts at "
                f"offset {cl.KVM_RUN_UNION_OFFSET} of struct kvm_run, and its member is\n"
                f"{cl.declaration(member)}\nAt which byte offset of the mapping is "
                f"{self.path}? (x86-64: every field is aligned to its own size)")

    def check(self, answer: object) -> Feedback:
        if answer == self.value:
            return Feedback(True, f"right: offsetof(struct kvm_run, {self.path}) = {self.value}")
        if isinstance(answer, int) and answer == self.value - cl.KVM_RUN_UNION_OFFSET:
            return Feedback(False, "that is the offset inside the union; add where the union starts")
        return Feedback(False, "not yet: add up the sizes before it, rounding each field up to "
                               "its alignment")

    def answer(self) -> Solution:
        member, _, _ = self.path.partition(".")
        lay = cl.layout(cl.KVM_RUN_UNION[member], cl.KVM_RUN_UNION_OFFSET)
        steps = "\n".join(f"{member}.{n} at {o}" for n, o in lay.items())
        return Solution(self.value, steps)


# --- predict the exits of a generated guest ---------------------------------
POST_PORT = 0x80   #: the POST diagnostic port: writes go nowhere, but they exit
KBD_PORT = 0x60    #: the i8042 data port, read with IN
MMIO_SEG = 0xD000  #: DS for the MMIO accesses: GPA 0xd0000 + offset, outside RAM

_OPS = {
    # name: (machine code, listing, exits it causes)
    "out_post": (bytes([0xB0, 0x41, 0xE6, POST_PORT]), f"mov al, 0x41\nout {POST_PORT:#x}, al",
                 "IO"),
    "in_kbd": (bytes([0xE4, KBD_PORT]), f"in al, {KBD_PORT:#x}", "IO"),
    "mmio_write": (bytes([0xA2, 0x10, 0x00]), "mov [0x10], al        ; ds = 0xd000", "MMIO"),
    "mmio_read": (bytes([0xA0, 0x20, 0x00]), "mov al, [0x20]        ; ds = 0xd000", "MMIO"),
    "inc": (bytes([0xFE, 0xC0]), "inc al", ""),
    "ram_write": (bytes([0x26, 0xA2, 0x00, 0x20]), "mov es:[0x2000], al   ; es = 0, RAM", ""),
}
_PROLOGUE = (bytes([0xB8, 0x00, 0xD0, 0x8E, 0xD8]), "mov ax, 0xd000\nmov ds, ax")


class PredictExits(Exercise):
    """Predict which instructions of a small real-mode guest exit to user space."""

    title = "Predict the exits"

    def build(self) -> str:
        from vbook.guests.base import Guest

        ops = [self.rng.choice(sorted(_OPS)) for _ in range(self.rng.randint(4, 7))]
        code = _PROLOGUE[0] + b"".join(_OPS[o][0] for o in ops) + b"\xF4"
        listing = "\n".join([_PROLOGUE[1], *(_OPS[o][1] for o in ops), "hlt"])
        self.guest = Guest(f"predict-{self.seed}", 16, code, listing,
                           description="generated by PredictExits",
                           inputs={KBD_PORT: (0x1C,) * 8})
        return ("This guest runs in real mode with RAM at GPA 0-0xffff and nothing else "
                "mapped:\n\n" + listing + "\n\nList the exit_reason of every KVM_RUN return, in "
                "order, e.g. ['IO', 'MMIO', 'HLT'].")

    def _run(self):
        from vbook.runner import run_guest

        return run_guest(self.guest, "unicorn")

    def check(self, answer: object) -> Feedback:
        if not isinstance(answer, Sequence) or isinstance(answer, str):
            return Feedback(False, "answer with a list of names, e.g. ['IO', 'HLT']")
        got = [str(a).upper().removeprefix("KVM_EXIT_") for a in answer]
        want = [e.reason.name for e in self._run().exits]
        if got == want:
            return Feedback(True, f"right: {len(want)} exits")
        for i, (g, w) in enumerate(zip(got, want, strict=False)):
            if g != w:
                return Feedback(False, f"exit {i + 1} is not {g}: look at which instruction "
                                       "touches a port or an address without memory")
        more = "more" if len(got) < len(want) else "fewer"
        return Feedback(False, f"the first {min(len(got), len(want))} are right; there are "
                               f"{more} exits than that")

    def answer(self) -> Solution:
        exits = self._run().exits
        return Solution([e.reason.name for e in exits], "\n".join(str(e) for e in exits))
