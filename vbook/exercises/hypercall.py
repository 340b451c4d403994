"""Exercises of chapter 04 (hypercalls): the register ABI, and what RAX holds afterwards.

Every answer is computed by :mod:`vbook.models.hypercall` (Linux 6.1
``kvm_emulate_hypercall``), never stored.
"""

from __future__ import annotations

from collections.abc import Mapping

from vbook.exercises.base import Exercise, Feedback, Solution
from vbook.models import hypercall as hc
from vbook.models.kvm_api import Hypercall

_U64, _U32 = (1 << 64) - 1, (1 << 32) - 1
_MAP_GPA_ON = hc.KVM_EXIT_HYPERCALL_VALID_MASK


def _name(nr: int) -> str:
    try:
        return f"KVM_HC_{Hypercall(nr).name} ({nr})"
    except ValueError:
        return f"{nr:#x} (no KVM_HC_* has this number)"


class PredictRax(Exercise):
    """Given nr, a0..a3, the CPL and the CPU mode, what does RAX hold after the VMCALL?"""

    title = "What does RAX hold after the VMCALL?"

    def build(self) -> str:
        r = self.rng
        kind = r.choice(["handled", "handled", "unknown", "wide", "map_gpa", "clock", "cpl"])
        self.longmode = r.random() < 0.6
        self.cpl = 3 if kind == "cpl" else 0
        self.exit_mask = 0
        args = [0, 0, 0, 0]
        if kind == "handled":
            nr = int(r.choice([Hypercall.VAPIC_POLL_IRQ, Hypercall.KICK_CPU,
                               Hypercall.SCHED_YIELD]))
        elif kind == "unknown":
            nr = r.choice([int(Hypercall.MMU_OP), int(Hypercall.FEATURES),
                           int(Hypercall.MIPS_EXIT_VM), r.randrange(13, 0x1000)])
            args = [r.randrange(0, 1 << 16) for _ in range(4)]
        elif kind == "wide":  # the upper half of RAX decides whether nr is known
            nr = r.randrange(1, 16) << 32 | int(r.choice([Hypercall.VAPIC_POLL_IRQ,
                                                         Hypercall.SCHED_YIELD]))
        elif kind == "map_gpa":
            nr = int(Hypercall.MAP_GPA_RANGE)
            self.exit_mask = r.choice([0, _MAP_GPA_ON])
            gpa = r.randrange(1, 256) << 12 | r.choice([0, 0, 0x800])
            args = [gpa, r.choice([1, 4, 0]), 0, 0]
        elif kind == "clock":
            nr = int(Hypercall.CLOCK_PAIRING)
            args = [0x2000, r.choice([0, 1]), 0, 0]
        else:
            nr = int(r.choice([Hypercall.VAPIC_POLL_IRQ, Hypercall.SCHED_YIELD]))
        self.nr, self.args = nr, tuple(args)
        self.result = hc.kvm_emulate_hypercall(nr, self.args, self.cpl, self.longmode,
                                               self.exit_mask)
        mode = ("64-bit mode (EFER.LMA = 1, CS.L = 1)" if self.longmode
                else "32-bit protected mode")
        regs = "\n".join(f"  {reg.upper()} = {v:#x}"
                         for reg, v in zip(hc.REGISTERS, (nr, *self.args), strict=True))
        vmm = ("The VMM enabled KVM_CAP_EXIT_HYPERCALL for KVM_HC_MAP_GPA_RANGE and answers "
               "every such exit with hypercall.ret = 0."
               if self.exit_mask else "The VMM enabled no hypercall exits (QEMU's default).")
        named = f"(nr = {_name(nr)})\n" if nr <= _U32 else ""
        return (f"A guest in {mode}, at CPL {self.cpl}, executes VMCALL with\n{regs}\n"
                f"{named}{vmm}\n"
                "KVM is Linux 6.1 with a default QEMU VM (PV features not enforced, one vCPU "
                "with APIC ID 0, the host clocksource is the TSC).\n"
                "What does RAX hold when the guest runs on? (an unsigned number, "
                "or a negative one such as -1000)")

    @property
    def value(self) -> int:
        if self.result.ret is not None:
            return self.result.ret
        return hc.complete_hypercall_exit(0, self.longmode)  # the VMM answered 0

    def check(self, answer: object) -> Feedback:
        if isinstance(answer, bool) or not isinstance(answer, int):
            return Feedback(False, "answer with an integer, e.g. 0 or -1000 or 0xfffffc18")
        mask = _U64 if self.longmode else _U32
        want = self.value
        if answer & mask == want and -(mask + 1) // 2 <= answer <= mask:
            signed = hc.as_signed(want, self.longmode)
            return Feedback(True, f"right: RAX = {want:#x} ({signed}) — {self.result.handler}")
        if self.cpl != 0:
            return Feedback(False, "not yet: what does KVM look at before the number?")
        if answer & _U64 == (hc.as_signed(want, self.longmode)) & _U64 and not self.longmode:
            return Feedback(False, "not yet: outside 64-bit mode KVM cuts the result to 32 bits")
        if self.longmode and answer == want & _U32:
            return Feedback(False, "not yet: in 64-bit mode the result is a 64-bit two's "
                                   "complement number")
        if self.nr >> 32:
            return Feedback(False, "not yet: which bits of RAX count as nr in this mode?")
        return Feedback(False, "not yet: which case of kvm_emulate_hypercall's switch does this "
                               "nr reach, and what does that case return?")

    def answer(self) -> Solution:
        mask = _U64 if self.longmode else _U32
        nr = self.nr & mask
        width = ("64-bit mode: all 64 bits count" if self.longmode
                 else "not 64-bit mode: nr and a0..a3 are cut to 32 bits")
        steps = [f"1. {width} -> nr = {nr:#x}",
                 f"2. CPL {self.cpl}: " + ("not 0 -> -KVM_EPERM, the number is not looked at"
                                           if self.cpl else "0, go on"),
                 f"3. {hc.switch_case(self.nr, self.cpl, self.longmode)}: {self.result.handler}"]
        if self.result.ret is None:
            steps.append("4. KVM_RUN returns to the VMM (KVM_EXIT_HYPERCALL); it answers 0, and "
                         "complete_hypercall_exit writes it to RAX")
        else:
            signed = hc.as_signed(self.result.ret, self.longmode)
            steps.append(f"4. RAX = {signed} as a {'64' if self.longmode else '32'}-bit number "
                         f"= {self.result.ret:#x}; RIP += {hc.INSN_LEN}")
        return Solution(self.value, "\n".join(steps))


class HypercallRegisters(Exercise):
    """Which register carries what: the guest side of the ABI (``kvm_hypercallN``)."""

    title = "Load the registers for a hypercall"

    def build(self) -> str:
        r = self.rng
        nr = int(r.choice([Hypercall.KICK_CPU, Hypercall.SEND_IPI, Hypercall.MAP_GPA_RANGE,
                           Hypercall.SCHED_YIELD, Hypercall.CLOCK_PAIRING]))
        n = {int(Hypercall.KICK_CPU): 2, int(Hypercall.SEND_IPI): 4,
             int(Hypercall.MAP_GPA_RANGE): 3, int(Hypercall.SCHED_YIELD): 1,
             int(Hypercall.CLOCK_PAIRING): 2}[nr]
        self.params = tuple(r.randrange(1, 1 << 12) for _ in range(n))
        self.nr = nr
        self.want = dict(zip(hc.REGISTERS, (nr, *self.params), strict=False))
        call = ", ".join([f"KVM_HC_{Hypercall(nr).name}", *(f"{p:#x}" for p in self.params)])
        return (f"A Linux guest calls\n  kvm_hypercall{n}({call});\n"
                "(arch/x86/include/asm/kvm_para.h). Which value is in which register when "
                "VMCALL executes? Answer with a dict, e.g. {'rax': 5, 'rbx': 0x10}.")

    def check(self, answer: object) -> Feedback:
        if not isinstance(answer, Mapping):
            return Feedback(False, "answer with a dict of register names to values, "
                                   "e.g. {'rax': 5, 'rbx': 0x10}")
        got = {str(k).lower(): v for k, v in answer.items()}
        wrong = [reg for reg in self.want if got.get(reg) != self.want[reg]]
        extra = sorted(set(got) - set(self.want))
        if not wrong and not extra:
            return Feedback(True, "right: " + ", ".join(f"{k.upper()}={v:#x}"
                                                        for k, v in self.want.items()))
        if wrong:
            return Feedback(False, f"not yet: look again at {', '.join(w.upper() for w in wrong)}"
                                   " (the number goes first)")
        return Feedback(False, f"{', '.join(e.upper() for e in extra)} carry nothing in this call")

    def answer(self) -> Solution:
        roles = {reg: role for role, reg in hc.ABI.items() if role != "ret"}
        steps = "\n".join(f"{reg.upper()} ({roles[reg]}) = {v:#x}" for reg, v in self.want.items())
        return Solution(dict(self.want), steps + f"\nthe result comes back in "
                                                 f"{hc.RET_REGISTER.upper()}")
