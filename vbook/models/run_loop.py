"""QEMU's side of the run loop: the vCPU thread, ``kvm_cpu_exec``, and where each exit goes.

QEMU 9.2.4 runs one host thread per vCPU, ``kvm_vcpu_thread_fn``
(accel/kvm/kvm-accel-ops.c), that loops: if the vCPU may run,
``kvm_cpu_exec`` (accel/kvm/kvm-all.c); then ``qemu_wait_io_event``, which
sleeps while the vCPU is halted or stopped. ``kvm_cpu_exec`` drops the big
QEMU lock (BQL) and loops ``ioctl(KVM_RUN)`` + ``switch (run->exit_reason)``
while the case sets ``ret = 0``:

========================  ======================================================  ==============
exit_reason               QEMU 9.2.4                                              ret
========================  ======================================================  ==============
KVM_EXIT_IO               ``kvm_handle_io`` → ``address_space_rw(&address_space_io)``  0
KVM_EXIT_MMIO             ``address_space_rw(&address_space_memory)``               0
KVM_EXIT_IRQ_WINDOW_OPEN  —                                                       EXCP_INTERRUPT
KVM_EXIT_SHUTDOWN         ``qemu_system_reset_request(SHUTDOWN_CAUSE_GUEST_RESET)``  EXCP_INTERRUPT
KVM_EXIT_UNKNOWN          prints the hardware exit reason                         -1
KVM_EXIT_INTERNAL_ERROR   ``kvm_handle_internal_error``                           -1 (or EXCP_INTERRUPT)
KVM_EXIT_SYSTEM_EVENT     shutdown / reset request, crash → panic                 EXCP_INTERRUPT / 0
anything else             ``kvm_arch_handle_exit`` (target/i386/kvm/kvm.c):
                          HLT → ``kvm_handle_halt``                               EXCP_HLT / 0
                          FAIL_ENTRY, EXCEPTION, unknown → an error               -1
========================  ======================================================  ==============

A negative ``ret`` stops the VM (``vm_stop(RUN_STATE_INTERNAL_ERROR)``);
``KVM_RUN`` failing with ``EINTR`` (a kick: the main loop wants the vCPU)
gives ``EXCP_INTERRUPT``. Devices answer through QEMU's memory API
(:mod:`vbook.models.qemu_memory`) on the board of :mod:`vbook.devices.machine`.

The model drives a real vCPU (unicorn or ``/dev/kvm``): every ``KVM_RUN`` is
a real :meth:`~vbook.backends.base.VCpu.run`, every exit a real exit, and an
IN or MMIO read is answered with :meth:`~vbook.backends.base.VCpu.complete`
before the next run, as QEMU's ``address_space_rw`` writes into the mapped
``kvm_run``. What the model decides, deterministically, that QEMU leaves to
thread scheduling: the main loop (``main_loop_should_exit``) sees a device's
shutdown request before the vCPU thread's next ``KVM_RUN``, so it kicks the
vCPU (``kvm_cpu_kick``: ``run->immediate_exit = 1``) and that ``KVM_RUN``
returns ``-EINTR`` without entering the guest — modelled, not issued to the
backend (Linux 6.1 ``kvm_arch_vcpu_ioctl_run`` first completes the pending
exit, then returns ``-EINTR`` for ``immediate_exit``). In QEMU the vCPU may
run on briefly before the kick arrives. A halted vCPU with nothing that could
interrupt it (this board has no interrupt controller) ends the run; so does
a guest that never exits (the backend's instruction or time budget) or one
that exits more than ``max_exits`` times. Each ends with a typed :class:`End`.

Every step is recorded in a :class:`~vbook.trace.Trace` in the shape
:mod:`vbook.widgets` renders (qemu ``ioctl KVM_RUN``, kvm ``entry``, guest
``run``, kvm ``exit`` with the ``kvm_run`` fields), plus what QEMU did: qemu
``call`` events named after QEMU's functions (with ``fn``, ``file``,
``stack``, ``thread`` and ``bql``), ``device`` events for device callbacks,
and a qemu ``ret`` event with the value ``ret`` got.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from vbook.backends import open_vcpu, pick
from vbook.backends.base import Exit, VCpu
from vbook.devices.machine import Machine
from vbook.errors import (
    BudgetExhausted,
    HypercallNotCompleted,
    KvmError,
    RunTimeout,
    UnknownExitReason,
    VbookError,
)
from vbook.guests.base import Guest
from vbook.models.kvm_api import ExitReason, Hypercall, IoDirection
from vbook.models.qemu_memory import address_space_rw
from vbook.models.runstate import RunState, ShutdownCause
from vbook.trace import Trace, TraceRecorder


class Excp(IntEnum):
    """``EXCP_*`` — include/exec/cpu-common.h (QEMU 9.2.4): why ``kvm_cpu_exec`` returned."""

    INTERRUPT = 0x10000  # async interruption
    HLT = 0x10001        # hlt instruction reached
    DEBUG = 0x10002      # cpu stopped after a breakpoint or singlestep
    HALTED = 0x10003     # cpu is halted (waiting for external event)
    YIELD = 0x10004      # cpu wants to yield timeslice to another
    ATOMIC = 0x10005     # stop-the-world and emulate atomic


class SystemEvent(IntEnum):
    """``KVM_SYSTEM_EVENT_*`` — include/uapi/linux/kvm.h (Linux 6.1)."""

    SHUTDOWN = 1
    RESET = 2
    CRASH = 3


class InternalError(IntEnum):
    """``KVM_INTERNAL_ERROR_*`` suberrors — include/uapi/linux/kvm.h (Linux 6.1)."""

    EMULATION = 1
    SIMUL_EX = 2
    DELIVERY_EV = 3
    UNEXPECTED_EXIT_REASON = 4


#: include/exec/cpu-all.h (QEMU 9.2.4): an interrupt request from the interrupt controller
CPU_INTERRUPT_HARD = 0x0002
#: target/i386/cpu.h: ``CPU_INTERRUPT_NMI`` = ``CPU_INTERRUPT_TGT_EXT_3`` (include/exec/cpu-all.h)
CPU_INTERRUPT_NMI = 0x0200
#: target/i386/cpu.h: EFLAGS.IF
IF_MASK = 0x200
#: QEMU 9.2.4 linux-headers/linux/kvm.h (newer than the uapi 6.1 headers ExitReason follows):
#: kvm_cpu_exec has a case for it (private/shared memory conversion, kvm_convert_memory)
KVM_EXIT_MEMORY_FAULT = 39

#: the cases of ``switch (run->exit_reason)`` in ``kvm_cpu_exec`` (accel/kvm/kvm-all.c,
#: QEMU 9.2.4); every other exit goes to ``kvm_arch_handle_exit``
KVM_CPU_EXEC_CASES = ("IO", "MMIO", "IRQ_WINDOW_OPEN", "SHUTDOWN", "UNKNOWN", "INTERNAL_ERROR",
                      "DIRTY_RING_FULL", "SYSTEM_EVENT", "MEMORY_FAULT")
#: the cases of ``kvm_arch_handle_exit`` (target/i386/kvm/kvm.c, QEMU 9.2.4) the model follows
X86_CASES = ("HLT", "SET_TPR", "TPR_ACCESS", "FAIL_ENTRY", "EXCEPTION", "IOAPIC_EOI",
             "X86_BUS_LOCK", "HYPERCALL")
#: its other cases, and the QEMU function each calls: the model names them and stops
#: (they need a guest debugger, Hyper-V or Xen emulation, MSR filters or notify exits,
#: none of which this book's VMs enable)
X86_NOT_MODELLED = {"DEBUG": "kvm_handle_debug", "HYPERV": "kvm_hv_handle_exit",
                    "NOTIFY": "kvm_arch_handle_exit", "X86_RDMSR": "kvm_handle_rdmsr",
                    "X86_WRMSR": "kvm_handle_wrmsr", "XEN": "kvm_xen_handle_exit"}

KVM_FILE = "accel/kvm/kvm-all.c"
ACCEL_OPS_FILE = "accel/kvm/kvm-accel-ops.c"
I386_FILE = "target/i386/kvm/kvm.c"
CPUS_FILE = "system/cpus.c"
RUNSTATE_FILE = "system/runstate.c"
THREAD_FN = "kvm_vcpu_thread_fn"


class End(StrEnum):
    """How a modelled run ended."""

    HLT = "hlt"                        # EXCP_HLT: halted, and nothing can interrupt it
    SHUTDOWN = "shutdown"              # KVM_EXIT_SHUTDOWN (triple fault): a reset request
    GUEST_SHUTDOWN = "guest-shutdown"  # a device asked QEMU to shut down (isa-debug-exit)
    INTERNAL_ERROR = "internal-error"  # ret < 0: vm_stop(RUN_STATE_INTERNAL_ERROR)
    BUDGET = "budget"                  # the guest ran or exited past its budget


def excp_name(ret: int) -> str:
    """``ret`` as QEMU's source spells it: ``EXCP_HLT``, ``0``, ``-1`` …"""
    try:
        return f"EXCP_{Excp(ret).name}"
    except ValueError:
        return str(ret)


def exit_name(exit_reason: int) -> str:
    """``KVM_EXIT_HLT`` for 5; a number no uapi 6.1 name has is shown as such."""
    try:
        return f"KVM_EXIT_{ExitReason(exit_reason).name}"
    except ValueError:
        if exit_reason == KVM_EXIT_MEMORY_FAULT:
            return "KVM_EXIT_MEMORY_FAULT"
        return f"exit_reason {exit_reason} (no KVM_EXIT_* in uapi 6.1)"


@dataclass
class CPUState:
    """The fields of QEMU's ``CPUState`` (include/hw/core/cpu.h) the loop touches.

    ``immediate_exit`` stands for ``cpu->kvm_run->immediate_exit``; ``vcpu``
    is the backend vCPU behind ``cpu->kvm_fd``.
    """

    vcpu: VCpu
    machine: Machine
    cpu_index: int = 0
    halted: int = 0
    stop: bool = False
    stopped: bool = False
    exit_request: int = 0
    interrupt_request: int = 0
    immediate_exit: int = 0
    runs: int = 0
    stack: list[str] = field(default_factory=list)
    #: the bytes QEMU wrote into kvm_run for the last IN / MMIO read
    vcpu_reply: bytes = b""
    #: the main loop has acted on the pending request (the model does it once)
    main_loop_acted: bool = False

    @property
    def thread_name(self) -> str:
        """``kvm_start_vcpu_thread``: the thread is named ``CPU <n>/KVM``."""
        return f"CPU {self.cpu_index}/KVM"


@dataclass(frozen=True)
class Handled:
    """One return of ``KVM_RUN`` and where QEMU took it.

    ``path`` is the chain of QEMU functions from ``kvm_cpu_exec`` to the
    last one that handled the exit (a device callback, ``kvm_handle_halt`` …);
    ``ret`` what the switch set ``ret`` to; ``exit`` is None for an
    ``exit_reason`` no uapi 6.1 name has.
    """

    exit_reason: int
    exit: Exit | None
    path: tuple[str, ...]
    ret: int

    @property
    def name(self) -> str:
        return exit_name(self.exit_reason)

    @property
    def handler(self) -> str:
        """The QEMU function the exit reached last, e.g. ``serial_ioport_write``."""
        return self.path[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"exit_reason": self.exit_reason, "name": self.name, "path": list(self.path),
                "ret": excp_name(self.ret), "exit": self.exit.to_dict() if self.exit else None}

    def __str__(self) -> str:
        what = str(self.exit) if self.exit is not None else self.name
        return f"{what:48s} → {' → '.join(self.path[1:])}  (ret = {excp_name(self.ret)})"


@dataclass(frozen=True)
class LoopResult:
    """What a modelled run did: exits and their handlers, how it ended, console, trace.

    ``exit_code``: QEMU's exit status after a guest shutdown request
    (``isa-debug-exit``), else None. ``messages``: what QEMU would have
    printed on stderr. ``machine`` is the board afterwards, for inspection.
    """

    guest: str
    backend: str
    handled: tuple[Handled, ...]
    end: End
    detail: str
    exit_code: int | None
    console: str
    messages: tuple[str, ...]
    trace: Trace
    machine: Machine = field(repr=False, compare=False)

    @property
    def exits(self) -> tuple[Exit, ...]:
        """The exits, as :func:`vbook.runner.run_guest` returns them (known reasons only)."""
        return tuple(h.exit for h in self.handled if h.exit is not None)

    @property
    def handlers(self) -> list[str]:
        """The QEMU function each exit reached last, in order."""
        return [h.handler for h in self.handled]

    def to_dict(self) -> dict[str, Any]:
        return {"guest": self.guest, "backend": self.backend, "end": self.end.value,
                "detail": self.detail, "exit_code": self.exit_code, "console": self.console,
                "messages": list(self.messages), "handled": [h.to_dict() for h in self.handled]}

    def __repr__(self) -> str:
        code = f", exit status {self.exit_code}" if self.exit_code is not None else ""
        return (f"LoopResult({self.guest!r} on {self.backend}: {len(self.handled)} exits, "
                f"ended by {self.end.value}{code})")


class _Runaway(Exception):
    """The backend stopped a guest that did not exit (instruction budget or time limit)."""


# --- trace helpers ----------------------------------------------------------------------

def _emit(cpu: CPUState, kind: str, label: str, fn: str, file: str, **data: Any) -> None:
    """A qemu event in function ``fn``, on top of the current stack (``fn`` is added if not there)."""
    stack = list(cpu.stack) if cpu.stack[-1:] == [fn] else [*cpu.stack, fn]
    if "ret" in data:
        data["ret"] = int(data["ret"])
    cpu.machine.ctx.emit("qemu", kind, label, fn=fn, file=file, stack=stack, **data)


def _main(cpu: CPUState, label: str, fn: str, file: str, **data: Any) -> None:
    """A qemu event of the main thread (it holds the BQL while it handles requests)."""
    cpu.machine.ctx.emit("qemu", "call", label, thread="main", bql=True, fn=fn, file=file,
                         stack=["qemu_main_loop", fn], **data)


def _trace(cpu: CPUState) -> TraceRecorder:
    rec = cpu.machine.ctx.trace
    assert rec is not None
    return rec


# --- the vCPU thread ----------------------------------------------------------------------

def kvm_vcpu_thread_fn(cpu: CPUState, max_exits: int, handled: list[Handled],
                       messages: list[str]) -> tuple[End, str]:
    """accel/kvm/kvm-accel-ops.c: the vCPU thread's loop, until the run ends.

    ``do { if (cpu_can_run(cpu)) { r = kvm_cpu_exec(cpu); … } qemu_wait_io_event(cpu);
    } while (!cpu->unplug || cpu_can_run(cpu));`` — here it ends when the
    vCPU waits for something that cannot come (see :func:`qemu_wait_io_event`).
    """
    ctx = cpu.machine.ctx
    ctx.bql = True  # the thread starts with bql_lock(); kvm_init_vcpu ran when the vCPU opened
    cpu.stack = [THREAD_FN]
    _emit(cpu, "call", f"{THREAD_FN}: thread {cpu.thread_name} starts, BQL held",
          THREAD_FN, ACCEL_OPS_FILE)
    while True:
        if cpu_can_run(cpu):
            r = kvm_cpu_exec(cpu, max_exits, handled, messages)
            cpu.stack = [THREAD_FN]
            _emit(cpu, "ret", f"kvm_cpu_exec returned {excp_name(r)}", THREAD_FN,
                  ACCEL_OPS_FILE, ret=r, ret_name=excp_name(r))
            if r == Excp.DEBUG:  # cpu_handle_guest_debug: never requested on this board
                messages.append("EXCP_DEBUG: guest debugging is not modelled")
                return End.INTERNAL_ERROR, "EXCP_DEBUG: guest debugging is not modelled"
        end = qemu_wait_io_event(cpu)
        if end is not None:
            return end


def cpu_can_run(cpu: CPUState) -> bool:
    """system/cpus.c: not while a stop is pending or the vCPU is stopped."""
    return not cpu.stop and not cpu.stopped


def cpu_has_work(cpu: CPUState) -> bool:
    """x86: an interrupt the vCPU could take (none can arrive on this board)."""
    return bool(cpu.interrupt_request & (CPU_INTERRUPT_HARD | CPU_INTERRUPT_NMI))


def qemu_wait_io_event(cpu: CPUState) -> tuple[End, str] | None:
    """system/cpus.c: let the main loop act, then sleep while stopped or idle.

    Returns how the run ends when the vCPU would sleep forever (stopped for a
    shutdown, reset or error; halted with no interrupt source), or None when
    the thread runs ``kvm_cpu_exec`` again.
    """
    rs = cpu.machine.runstate
    if rs.pending and not cpu.main_loop_acted:
        main_loop_should_exit(cpu)
    fn = "qemu_wait_io_event"
    cpu.stack = [THREAD_FN, fn]
    if cpu.stop:  # qemu_wait_io_event_common: a pending stop becomes "stopped"
        cpu.stop, cpu.stopped = False, True
        _emit(cpu, "call", f"{fn}: cpu->stop → cpu->stopped; the thread sleeps on halt_cond",
              fn, CPUS_FILE)
    if cpu.stopped:
        if rs.shutdown_requested:
            code = rs.shutdown_exit_code
            how = (End.GUEST_SHUTDOWN if rs.shutdown_requested == ShutdownCause.GUEST_SHUTDOWN
                   else End.SHUTDOWN)
            return how, (f"shutdown requested ({rs.shutdown_requested.qapi}); QEMU exits "
                         f"with status {code}")
        if rs.reset_requested:
            return End.SHUTDOWN, (f"reset requested ({rs.reset_requested.qapi}): QEMU would "
                                  "reset the machine and run the guest again from the start "
                                  "(with -no-reboot: shut down); the model stops here")
        return End.INTERNAL_ERROR, "the VM is stopped (RUN_STATE_INTERNAL_ERROR)"
    if cpu.halted and not cpu_has_work(cpu):
        # cpu_thread_is_idle: halted, no work, and KVM does not halt in the kernel
        # (no in-kernel irqchip): the thread waits on cpu->halt_cond for an interrupt
        _emit(cpu, "call", f"{fn}: halted, idle; waits for an interrupt — this board has "
              "no interrupt controller, so none can come", fn, CPUS_FILE)
        return End.HLT, "the vCPU halted and nothing can interrupt it"
    return None


def main_loop_should_exit(cpu: CPUState) -> None:
    """system/runstate.c, in the main thread: act on a shutdown, reset or stop request.

    A shutdown only makes ``main_loop_should_exit`` return true; the vCPUs are
    stopped after ``qemu_main_loop`` returns, by ``main`` (system/main.c) →
    ``qemu_cleanup`` → ``vm_shutdown`` → ``do_vm_stop`` → ``pause_all_vcpus``.
    The model folds that into one step of the main thread.

    Every path stops the vCPUs (``pause_all_vcpus`` → ``cpu_pause``:
    ``cpu->stop = true``, then ``qemu_cpu_kick`` → ``cpus_kick_thread``, which
    sends the vCPU thread ``SIG_IPI`` with ``pthread_kill``; that thread's
    handler ``kvm_ipi_signal`` → ``kvm_cpu_kick`` sets ``run->immediate_exit``,
    so a ``KVM_RUN`` the signal interrupted, or the next one, returns at once).
    """
    rs = cpu.machine.runstate
    cpu.main_loop_acted = True
    if rs.shutdown_requested:
        why = (f"shutdown_requested = SHUTDOWN_CAUSE_{rs.shutdown_requested.name}: "
               "qemu_system_shutdown, return true; qemu_main_loop returns and main calls "
               "qemu_cleanup → vm_shutdown → do_vm_stop → pause_all_vcpus")
    elif rs.reset_requested:
        why = (f"reset_requested = SHUTDOWN_CAUSE_{rs.reset_requested.name}: "
               "pause_all_vcpus, qemu_system_reset")
    else:
        why = f"vm_stop(RUN_STATE_{(rs.vmstop_requested or RunState.INTERNAL_ERROR).name})"
    if cpu.stop or cpu.stopped:
        _main(cpu, f"main_loop_should_exit: {why}", "main_loop_should_exit", RUNSTATE_FILE)
        return
    cpu.stop = True
    cpu.immediate_exit = 1
    _main(cpu, f"main_loop_should_exit: {why} → cpu_pause: cpu->stop = true; qemu_cpu_kick → "
               "cpus_kick_thread: pthread_kill(SIG_IPI); in the vCPU thread kvm_ipi_signal → "
               "kvm_cpu_kick: run->immediate_exit = 1", "main_loop_should_exit", RUNSTATE_FILE,
          immediate_exit=1)


# --- kvm_cpu_exec ---------------------------------------------------------------------------

def kvm_cpu_exec(cpu: CPUState, max_exits: int, handled: list[Handled],
                 messages: list[str]) -> int:
    """accel/kvm/kvm-all.c: ``KVM_RUN`` and the switch, while ``ret == 0``; returns ``ret``."""
    fn = "kvm_cpu_exec"
    ctx = cpu.machine.ctx
    cpu.stack = [THREAD_FN, fn]
    if kvm_arch_process_async_events(cpu):
        cpu.exit_request = 0
        _emit(cpu, "ret", "kvm_cpu_exec: the vCPU is halted: return EXCP_HLT", fn, KVM_FILE,
              ret=Excp.HLT, ret_name="EXCP_HLT")
        return Excp.HLT
    ctx.bql = False
    _emit(cpu, "call", "kvm_cpu_exec: bql_unlock(), then loop on KVM_RUN", fn, KVM_FILE)
    while True:
        if cpu.machine.runstate.pending and not cpu.main_loop_acted:
            main_loop_should_exit(cpu)  # the model lets the main loop win the race here
        if cpu.exit_request:
            cpu.immediate_exit = 1  # kvm_cpu_kick_self
        if len(handled) >= max_exits:
            raise _Runaway(f"the guest made {max_exits} exits without ending "
                           "(max_exits); a runaway loop?")
        run_ret, exit_reason, exit = kvm_vcpu_ioctl_run(cpu)
        if run_ret < 0:
            if run_ret in (-errno.EINTR, -errno.EAGAIN):
                cpu.immediate_exit = 0  # kvm_eat_signals
                ret = Excp.INTERRUPT
                _emit(cpu, "ret", "KVM_RUN returned -EINTR: kvm_eat_signals; ret = "
                      "EXCP_INTERRUPT, leave the loop", fn, KVM_FILE, ret=ret,
                      ret_name=excp_name(ret))
                break
            messages.append(f"error: kvm run failed {os.strerror(-run_ret)}")
            ret = -1
            _emit(cpu, "ret", f"KVM_RUN failed ({os.strerror(-run_ret)}): ret = -1", fn,
                  KVM_FILE, ret=ret, ret_name="-1")
            break
        start = len(_trace(cpu))
        ret, path = _switch(cpu, exit_reason, exit, messages)
        h = Handled(exit_reason, exit, (fn, *path), ret)
        handled.append(h)
        _mark_reply(cpu, start, exit)
        main_loop_turn(cpu)
        cpu.stack = [THREAD_FN, fn]
        again = "loop: KVM_RUN again" if ret == 0 else "leave the loop"
        _emit(cpu, "ret", f"ret = {excp_name(ret)}: {again}", fn, KVM_FILE, ret=ret,
              ret_name=excp_name(ret), exit_name=h.name, handler=h.handler, path=list(h.path))
        if ret != 0:
            break
    ctx.bql = True
    if ret < 0:  # cpu_dump_state; vm_stop(RUN_STATE_INTERNAL_ERROR) from the vCPU thread
        cpu.machine.runstate.qemu_system_vmstop_request(RunState.INTERNAL_ERROR)
        cpu.stop = True  # cpu_stop_current
        _emit(cpu, "call", "ret < 0: bql_lock(); vm_stop(RUN_STATE_INTERNAL_ERROR)", fn,
              KVM_FILE)
    else:
        _emit(cpu, "call", f"bql_lock(); return {excp_name(ret)}", fn, KVM_FILE)
    cpu.exit_request = 0
    return ret


def main_loop_turn(cpu: CPUState) -> None:
    """QEMU's main loop thread runs beside the vCPU thread; the model gives it a turn after
    every exit of a board with network backends (:meth:`Machine.main_loop_poll
    <vbook.devices.machine.Machine.main_loop_poll>`: bottom halves, then the backends' fds —
    ``tap_send``), so a frame the host answered is in the guest's ring before the guest
    runs again. A board without them has nothing for the main loop to do here."""
    if cpu.machine.netdevs:
        cpu.machine.main_loop_poll()


def kvm_arch_process_async_events(cpu: CPUState) -> int:
    """target/i386/kvm/kvm.c (no in-kernel irqchip): still halted unless an interrupt came."""
    if cpu.halted and cpu_has_work(cpu):
        cpu.halted = 0
    return cpu.halted


def kvm_vcpu_ioctl_run(cpu: CPUState) -> tuple[int, int, Exit | None]:
    """``kvm_vcpu_ioctl(cpu, KVM_RUN, 0)`` on the backend: (run_ret, exit_reason, exit)."""
    rec = _trace(cpu)
    cpu.stack = [THREAD_FN, "kvm_cpu_exec", "kvm_vcpu_ioctl"]
    n = cpu.runs
    cpu.runs += 1
    if cpu.immediate_exit:
        _emit(cpu, "ioctl", "KVM_RUN (immediate_exit = 1)", "kvm_vcpu_ioctl", KVM_FILE, n=n,
              immediate_exit=1)
        rec.emit("kvm", "return", "KVM_RUN returns -EINTR: immediate_exit is set (the "
                 "previous exit is completed first, the guest is not entered)",
                 run_ret=-errno.EINTR)
        return -errno.EINTR, 0, None
    _emit(cpu, "ioctl", "KVM_RUN", "kvm_vcpu_ioctl", KVM_FILE, n=n)
    vcpu = cpu.vcpu
    entry_rip = vcpu.get_regs().rip
    rec.emit("kvm", "entry", "VM entry", rip=entry_rip)
    try:
        exit = vcpu.run()
    except HypercallNotCompleted:
        raise
    except (BudgetExhausted, RunTimeout) as e:
        rec.emit("guest", "run", "guest runs", rip=entry_rip)
        raise _Runaway(str(e)) from None
    except UnknownExitReason as e:
        rec.emit("guest", "run", "guest runs", rip=entry_rip, exit_rip=vcpu.get_regs().rip)
        rec.emit("kvm", "exit", exit_name(e.exit_reason), exit_reason=e.exit_reason)
        return 0, e.exit_reason, None
    except KvmError as e:
        rec.emit("kvm", "return", f"KVM_RUN fails: errno {e.errno}", run_ret=-e.errno)
        return -e.errno, 0, None
    rec.emit("guest", "run", "guest runs", rip=entry_rip, exit_rip=vcpu.get_regs().rip)
    union = exit.to_dict()
    union.pop("reason")
    rec.emit("kvm", "exit", f"KVM_EXIT_{exit.reason.name}", exit_reason=exit.exit_reason,
             **union)
    return 0, exit.exit_reason, exit


def _mark_reply(cpu: CPUState, start: int, exit: Exit | None) -> None:
    """Put the bytes QEMU wrote into kvm_run on the exit's first device event (``reply``).

    The kvm_run view of :mod:`vbook.widgets` shows an IN's or MMIO read's data
    from there; a read nobody claims has no device event and shows none.
    """
    if exit is None or not exit.needs_data:
        return
    rec = _trace(cpu)
    reply = cpu.vcpu_reply
    for i in range(start, len(rec.events)):
        ev = rec.events[i]
        if ev.actor == "device":
            rec.events[i] = type(ev)(ev.actor, ev.kind, ev.label, {**ev.to_dict()["data"],
                                                                   "reply": reply.hex()})
            return


# --- the switch -----------------------------------------------------------------------------

def _switch(cpu: CPUState, exit_reason: int, exit: Exit | None,
            messages: list[str]) -> tuple[int, tuple[str, ...]]:
    """``switch (run->exit_reason)`` of ``kvm_cpu_exec``: (ret, the functions it went through)."""
    fn = "kvm_cpu_exec"
    name = exit_name(exit_reason)
    rs = cpu.machine.runstate
    cpu.vcpu_reply = b""
    if exit is not None and exit.io is not None:
        return 0, kvm_handle_io(cpu, exit)
    if exit is not None and exit.mmio is not None:
        return 0, kvm_handle_mmio(cpu, exit)
    if exit_reason == ExitReason.IRQ_WINDOW_OPEN:
        _emit(cpu, "call", f"case {name}: ret = EXCP_INTERRUPT", fn, KVM_FILE)
        return Excp.INTERRUPT, ()
    if exit_reason == ExitReason.SHUTDOWN:
        f = "qemu_system_reset_request"
        cpu.stack = [THREAD_FN, fn, f]
        rs.qemu_system_reset_request(ShutdownCause.GUEST_RESET)
        cpu.stop, cpu.exit_request = True, 1  # cpu_stop_current → cpu_exit
        _emit(cpu, "call", f"case {name}: {f}(SHUTDOWN_CAUSE_GUEST_RESET); cpu_stop_current",
              f, RUNSTATE_FILE)
        return Excp.INTERRUPT, (f,)
    if exit_reason == ExitReason.UNKNOWN:
        hw = _detail_int(exit, "hardware_exit_reason")
        msg = f"KVM: unknown exit, hardware reason {hw:x}"
        messages.append(msg)
        _emit(cpu, "call", f"case {name}: {msg}", fn, KVM_FILE)
        return -1, ()
    if exit_reason == ExitReason.INTERNAL_ERROR:
        return kvm_handle_internal_error(cpu, exit, messages)
    if exit_reason == ExitReason.DIRTY_RING_FULL:  # only with KVM_CAP_DIRTY_LOG_RING enabled
        f = "kvm_dirty_ring_reap"
        _emit(cpu, "call", f"case {name}: {f} (under the BQL); ret = 0", fn, KVM_FILE)
        return 0, (f,)
    if exit_reason == KVM_EXIT_MEMORY_FAULT:  # private memory (guest_memfd): not modelled
        msg = f"{name}: kvm_convert_memory is not modelled (no guest_memfd on this board)"
        messages.append(msg)
        _emit(cpu, "call", f"case {msg}; ret = -1", fn, KVM_FILE)
        return -1, ("kvm_convert_memory",)
    if exit_reason == ExitReason.SYSTEM_EVENT:
        typ = _detail_int(exit, "type")
        cpu.stack = [THREAD_FN, fn]
        if typ == SystemEvent.SHUTDOWN:
            rs.qemu_system_shutdown_request(ShutdownCause.GUEST_SHUTDOWN)
            _emit(cpu, "call", f"case {name} SHUTDOWN: qemu_system_shutdown_request", fn,
                  KVM_FILE)
            return Excp.INTERRUPT, ("qemu_system_shutdown_request",)
        if typ == SystemEvent.RESET:
            rs.qemu_system_reset_request(ShutdownCause.GUEST_RESET)
            _emit(cpu, "call", f"case {name} RESET: qemu_system_reset_request", fn, KVM_FILE)
            return Excp.INTERRUPT, ("qemu_system_reset_request",)
        if typ == SystemEvent.CRASH:
            messages.append("guest panicked (KVM_SYSTEM_EVENT_CRASH)")
            _emit(cpu, "call", f"case {name} CRASH: qemu_system_guest_panicked; ret = 0", fn,
                  KVM_FILE)
            return 0, ("qemu_system_guest_panicked",)
    ret, path = kvm_arch_handle_exit(cpu, exit_reason, exit, messages)
    return ret, ("kvm_arch_handle_exit", *path)


def _detail_int(exit: Exit | None, key: str) -> int:
    """A number the backend put in ``Exit.detail`` (``suberror 1 …``, ``type 2 …``), or 0."""
    m = re.search(rf"\b{key} (0x[0-9a-f]+|\d+)", exit.detail if exit is not None else "")
    return int(m.group(1), 0) if m else 0


def kvm_handle_io(cpu: CPUState, exit: Exit) -> tuple[str, ...]:
    """accel/kvm/kvm-all.c: ``count`` accesses of ``size`` bytes at ``port``, no BQL held.

    ``address_space_rw(&address_space_io, port, attrs, ptr, size,
    direction == KVM_EXIT_IO_OUT)`` per access, ``ptr`` stepping through the
    data page of ``kvm_run`` (for an IN, QEMU writes the answer right there).
    """
    io = exit.io
    assert io is not None
    f = "kvm_handle_io"
    cpu.stack = [THREAD_FN, "kvm_cpu_exec", f]
    out = io.direction == IoDirection.OUT
    _emit(cpu, "call", f"case KVM_EXIT_IO: {f}(port {io.port:#x}, "
          f"{'OUT' if out else 'IN'}, size {io.size}, count {io.count})", f, KVM_FILE)
    ctx = cpu.machine.ctx
    as_ = cpu.machine.address_space_io
    reply = bytearray()
    callbacks: list[str] = []
    for i in range(io.count):
        buf = bytearray(io.data[i * io.size:(i + 1) * io.size]) if out else bytearray(io.size)
        cpu.stack.append("address_space_rw")
        ctx.stack = list(cpu.stack)
        n = len(_trace(cpu))
        address_space_rw(as_, io.port, buf, out)
        callbacks += _callbacks(cpu, n)
        cpu.stack.pop()
        if not out:
            reply += buf
    if not out:
        cpu.vcpu_reply = bytes(reply)
        cpu.vcpu.complete(bytes(reply))
    return (f, "address_space_rw", *_unique(callbacks))


def kvm_handle_mmio(cpu: CPUState, exit: Exit) -> tuple[str, ...]:
    """accel/kvm/kvm-all.c ``case KVM_EXIT_MMIO``: ``address_space_rw(&address_space_memory,
    run->mmio.phys_addr, attrs, run->mmio.data, run->mmio.len, run->mmio.is_write)``,
    no BQL held; a read's bytes land in ``run->mmio.data``."""
    m = exit.mmio
    assert m is not None
    fn = "kvm_cpu_exec"
    cpu.stack = [THREAD_FN, fn]
    _emit(cpu, "call", f"case KVM_EXIT_MMIO: address_space_rw(&address_space_memory, "
          f"{m.phys_addr:#x}, len {m.len}, {'write' if m.is_write else 'read'})", fn, KVM_FILE)
    buf = bytearray(m.data) if m.is_write else bytearray(m.len)
    cpu.stack.append("address_space_rw")
    cpu.machine.ctx.stack = list(cpu.stack)
    n = len(_trace(cpu))
    address_space_rw(cpu.machine.address_space_memory, m.phys_addr, buf, m.is_write)
    callbacks = _callbacks(cpu, n)
    cpu.stack.pop()
    if not m.is_write:
        cpu.vcpu_reply = bytes(buf)
        cpu.vcpu.complete(bytes(buf))
    return ("address_space_rw", *_unique(callbacks))


def _callbacks(cpu: CPUState, start: int) -> list[str]:
    """The region callbacks (device or QEMU's unassigned ops) recorded since event ``start``."""
    return [e.data["fn"] for e in _trace(cpu).events[start:] if e.kind == "io"]


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def kvm_handle_internal_error(cpu: CPUState, exit: Exit | None,
                              messages: list[str]) -> tuple[int, tuple[str, ...]]:
    """accel/kvm/kvm-all.c: report the suberror; an emulation failure in the guest kernel stops QEMU.

    ``kvm_arch_stop_on_emulation_error`` is true unless the guest is in
    protected mode at CPL 3; this book's guests never leave CPL 0, so the
    model takes it as true: ``ret = -1``.
    """
    f = "kvm_handle_internal_error"
    cpu.stack = [THREAD_FN, "kvm_cpu_exec", f]
    suberror = _detail_int(exit, "suberror")
    messages.append(f"KVM internal error. Suberror: {suberror}")
    if suberror == InternalError.EMULATION:
        messages.append("emulation failure")
    _emit(cpu, "call", f"case KVM_EXIT_INTERNAL_ERROR: {f}: suberror {suberror}"
          + (" (emulation failure)" if suberror == InternalError.EMULATION else "")
          + "; ret = -1", f, KVM_FILE, suberror=suberror)
    return -1, (f,)


def kvm_arch_handle_exit(cpu: CPUState, exit_reason: int, exit: Exit | None,
                         messages: list[str]) -> tuple[int, tuple[str, ...]]:
    """target/i386/kvm/kvm.c: the x86 exits the generic switch does not know."""
    f = "kvm_arch_handle_exit"
    cpu.stack = [THREAD_FN, "kvm_cpu_exec", f]
    name = exit_name(exit_reason)
    if exit_reason == ExitReason.HLT:
        return kvm_handle_halt(cpu)
    if exit_reason in (ExitReason.SET_TPR, ExitReason.IOAPIC_EOI, ExitReason.X86_BUS_LOCK):
        # SET_TPR: nothing to do; IOAPIC_EOI: ioapic_eoi_broadcast; BUS_LOCK: done in post_run
        _emit(cpu, "call", f"{f}: case {name}: ret = 0", f, I386_FILE)
        return 0, ()
    if exit_reason == ExitReason.TPR_ACCESS:
        g = "kvm_handle_tpr_access"
        _emit(cpu, "call", f"{f}: case {name}: {g} reports it to the APIC model; returns 1 "
              "(not 0: kvm_cpu_exec leaves its loop)", f, I386_FILE)
        return 1, (g,)
    try:
        not_modelled = X86_NOT_MODELLED.get(ExitReason(exit_reason).name)
    except ValueError:
        not_modelled = None
    if not_modelled is not None:
        msg = f"{name} goes to {not_modelled} in QEMU; not modelled here"
        messages.append(msg)
        _emit(cpu, "call", f"{f}: case {msg}; the model stops (ret = -1)", f, I386_FILE)
        return -1, (not_modelled,)
    if exit_reason == ExitReason.FAIL_ENTRY:
        code = _detail_int(exit, "hardware_entry_failure_reason")
        msg = f"KVM: entry failed, hardware error {code:#x}"
    elif exit_reason == ExitReason.EXCEPTION:
        msg = (f"KVM: exception {_detail_int(exit, 'exception')} exit (error code "
               f"{_detail_int(exit, 'error_code'):#x})")
    elif exit_reason == ExitReason.HYPERCALL:
        nr = exit.hypercall.nr if exit is not None and exit.hypercall is not None else -1
        # kvm_handle_hypercall: only KVM_HC_MAP_GPA_RANGE, and only for a machine with
        # guest_memfd (confidential guests); otherwise -EINVAL
        what = "KVM_HC_MAP_GPA_RANGE" if nr == Hypercall.MAP_GPA_RANGE else f"nr {nr}"
        msg = f"kvm_handle_hypercall({what}): -EINVAL (no guest_memfd on this machine)"
        messages.append(msg)
        _emit(cpu, "call", f"{f}: case {name}: {msg}", f, I386_FILE)
        return -errno.EINVAL, ("kvm_handle_hypercall",)
    else:
        msg = f"KVM: unknown exit reason {exit_reason}"
    messages.append(msg)
    _emit(cpu, "call", f"{f}: {msg} ({name}); ret = -1", f, I386_FILE)
    return -1, ()


def kvm_handle_halt(cpu: CPUState) -> tuple[int, tuple[str, ...]]:
    """target/i386/kvm/kvm.c, under bql_lock(): halt unless an interrupt could be taken now.

    ``if (!((interrupt_request & CPU_INTERRUPT_HARD) && (eflags & IF_MASK)) &&
    !(interrupt_request & CPU_INTERRUPT_NMI)) { cs->halted = 1; return EXCP_HLT; }``
    """
    f = "kvm_handle_halt"
    cpu.stack = [THREAD_FN, "kvm_cpu_exec", "kvm_arch_handle_exit", f]
    ctx = cpu.machine.ctx
    ctx.bql = True
    if_flag = bool(cpu.vcpu.get_regs().rflags & IF_MASK)
    hard = bool(cpu.interrupt_request & CPU_INTERRUPT_HARD) and if_flag
    if not hard and not cpu.interrupt_request & CPU_INTERRUPT_NMI:
        cpu.halted = 1
        ret: int = Excp.HLT
        label = "no interrupt pending: cs->halted = 1, return EXCP_HLT"
    else:
        ret, label = 0, "an interrupt can be taken: return 0"
    _emit(cpu, "call", f"case KVM_EXIT_HLT → kvm_arch_handle_exit → {f} (BQL held): {label}",
          f, I386_FILE, interrupt_request=cpu.interrupt_request, if_flag=if_flag)
    ctx.bql = False
    return ret, (f,)


# --- where QEMU 2.0 (the Linux 3.15 era) differed ---------------------------------------------

@dataclass(frozen=True)
class Difference:
    """One way QEMU 2.0.0 (the QEMU of the Linux 3.15 era) differed from QEMU 9.2.4.

    ``now_src`` / ``then_src``: (file, a verbatim line or lines) in each tree;
    tests/test_run_loop.py checks every quote against the sources when they are
    on the machine. Nothing here is from memory.
    """

    topic: str
    now: str
    then: str
    now_src: tuple[str, str]
    then_src: tuple[str, str]


QEMU_2_0_DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "vCPU thread",
        "kvm_vcpu_thread_fn (accel/kvm/kvm-accel-ops.c): do { kvm_cpu_exec; qemu_wait_io_event }"
        " while (!cpu->unplug || cpu_can_run(cpu))",
        "qemu_kvm_cpu_thread_fn (cpus.c): while (1) { kvm_cpu_exec; qemu_kvm_wait_io_event }",
        ("accel/kvm/kvm-accel-ops.c", "static void *kvm_vcpu_thread_fn(void *arg)"),
        ("cpus.c", "static void *qemu_kvm_cpu_thread_fn(void *arg)")),
    Difference(
        "big QEMU lock",
        "dropped once before the loop (bql_unlock); the IO and MMIO cases run without it",
        "dropped only around KVM_RUN and taken back at once: the whole switch, every device "
        "callback included, ran under the lock",
        ("accel/kvm/kvm-all.c", "            /* Called outside BQL */"),
        ("kvm-all.c", "        qemu_mutex_unlock_iothread();\n\n"
                      "        run_ret = kvm_vcpu_ioctl(cpu, KVM_RUN, 0);\n\n"
                      "        qemu_mutex_lock_iothread();")),
    Difference(
        "device callbacks",
        "prepare_mmio_access takes the BQL around each callback (if the thread lacks it)",
        "no per-access locking: the lock was already held",
        ("system/physmem.c", "    if (!bql_locked()) {\n        bql_lock();"),
        ("kvm-all.c", "        address_space_rw(&address_space_io, port, ptr, size,")),
    Difference(
        "KVM_EXIT_MMIO",
        "address_space_rw(&address_space_memory, …, attrs, …) with kvm_arch_post_run's MemTxAttrs",
        "cpu_physical_memory_rw(run->mmio.phys_addr, …)",
        ("accel/kvm/kvm-all.c", "            address_space_rw(&address_space_memory,"),
        ("kvm-all.c", "            cpu_physical_memory_rw(run->mmio.phys_addr,")),
    Difference(
        "KVM_RUN fails",
        "\"error: kvm run failed\", ret = -1: the VM stops (RUN_STATE_INTERNAL_ERROR)",
        "\"error: kvm run failed\", then abort(): the QEMU process dies",
        ("accel/kvm/kvm-all.c", "#endif\n                ret = -1;\n                break;"),
        ("kvm-all.c", "                    strerror(-run_ret));\n            abort();")),
    Difference(
        "exits it knows",
        "adds KVM_EXIT_SYSTEM_EVENT, KVM_EXIT_DIRTY_RING_FULL and KVM_EXIT_MEMORY_FAULT to the "
        "switch (Linux 3.15's kvm.h has none of them: its exit reasons end at 23, KVM_EXIT_EPR)",
        "IO, MMIO, IRQ_WINDOW_OPEN, SHUTDOWN, UNKNOWN, INTERNAL_ERROR; the rest to "
        "kvm_arch_handle_exit (x86: HLT, SET_TPR, TPR_ACCESS, FAIL_ENTRY, EXCEPTION, DEBUG)",
        ("accel/kvm/kvm-all.c", "        case KVM_EXIT_SYSTEM_EVENT:"),
        ("kvm-all.c", "            DPRINTF(\"kvm_arch_handle_exit\\n\");")),
    Difference(
        "kicking a vCPU",
        "qemu_cpu_kick → cpus_kick_thread sends SIG_IPI (pthread_kill); the vCPU thread keeps "
        "SIG_IPI unblocked, and its handler kvm_ipi_signal → kvm_cpu_kick sets "
        "run->immediate_exit = 1, so a kick between two KVM_RUNs makes the next one return "
        "-EINTR without entering the guest (Linux 3.15's kvm_run has no immediate_exit, only "
        "padding1[7])",
        "qemu_cpu_kick_thread sends SIG_IPI too, but the thread kept it blocked and "
        "KVM_SET_SIGNAL_MASK (kvm_set_signal_mask) unblocked it only inside KVM_RUN: a kick "
        "between two KVM_RUNs stayed pending and stopped the next one",
        ("accel/kvm/kvm-all.c", "static void kvm_ipi_signal(int sig)\n{\n    if (current_cpu) {"
         "\n        assert(kvm_immediate_exit);\n        kvm_cpu_kick(current_cpu);"),
        ("cpus.c", "    sigdelset(&set, SIG_IPI);\n    sigdelset(&set, SIGBUS);\n"
         "    r = kvm_set_signal_mask(cpu, &set);")),
    Difference(
        "isa-debug-exit",
        "the write requests a shutdown with status (val << 1) | 1; the main loop stops the "
        "vCPUs and QEMU exits",
        "the write called exit((val << 1) | 1) right there, in the vCPU thread",
        ("hw/misc/debugexit.c",
         "    qemu_system_shutdown_request_with_code(SHUTDOWN_CAUSE_GUEST_SHUTDOWN,"),
        ("hw/misc/debugexit.c", "    exit((val << 1) | 1);")),
    Difference(
        "KVM_EXIT_SHUTDOWN",
        "qemu_system_reset_request(SHUTDOWN_CAUSE_GUEST_RESET), ret = EXCP_INTERRUPT",
        "qemu_system_reset_request() (no cause yet), ret = EXCP_INTERRUPT",
        ("accel/kvm/kvm-all.c", "            qemu_system_reset_request(SHUTDOWN_CAUSE_GUEST_RESET);"),
        ("kvm-all.c", "            qemu_system_reset_request();")),
    Difference(
        "KVM_EXIT_HLT",
        "kvm_handle_halt, the same test, between bql_lock() and bql_unlock()",
        "kvm_handle_halt, the same test (the lock was held already)",
        ("target/i386/kvm/kvm.c",
         "        bql_lock();\n        ret = kvm_handle_halt(cpu);\n        bql_unlock();"),
        ("target-i386/kvm.c", "        ret = kvm_handle_halt(cpu);")),
)


# --- the entry point ------------------------------------------------------------------------

def run(guest: Guest, backend: str = "auto", max_exits: int = 10_000,
        machine: Machine | None = None, *, budget: int | None = None,
        timeout: float | None = None, trace: TraceRecorder | None = None,
        **vcpu_kw: Any) -> LoopResult:
    """Run ``guest`` through the model of QEMU's vCPU thread on ``backend``.

    ``backend``: "unicorn", "kvm" or "auto" (see :func:`vbook.backends.pick`);
    ``max_exits`` bounds the exits. A guest that runs without exiting is
    stopped by the backend: after ``budget`` instructions on unicorn, after
    ``timeout`` seconds of one ``KVM_RUN`` on KVM (each goes only to its own
    backend; None keeps the backend's default); ``vcpu_kw`` go to the backend
    as they are. A fresh :class:`~vbook.devices.machine.Machine`
    is made unless one is given; if it has a PCI bus, its ``ram`` is the
    vCPU's memory (``vcpu.memory``) during the run, for its devices' DMA, and
    afterwards what it was before. The run always ends with a :class:`LoopResult`
    — a guest that spins, faults or triple-faults included; only a host that
    cannot complete a hypercall, or a guest fault the unicorn backend cannot
    deliver, raises (a :class:`~vbook.errors.VbookError`).
    ``trace`` is the recorder to record into (a subclass that notes extra state per
    event, such as :class:`vbook.widgets.ring.RingRecorder`); by default a fresh one.
    """
    if max_exits < 1:
        raise VbookError(f"max_exits must be at least 1, got {max_exits}")
    backend = pick(backend)
    meta = dict(title=f"{guest.name} on {backend} (QEMU 9.2.4 model)",
                guest=guest.name, backend=backend, model="qemu-9.2.4")
    if trace is None:
        rec = TraceRecorder(**meta)
    else:
        rec = trace
        for k, v in meta.items():
            rec.meta.setdefault(k, v)
    if machine is None:
        machine = Machine.with_trace(rec)
    else:
        machine.ctx.trace = rec
    handled: list[Handled] = []
    messages: list[str] = []
    if budget is not None and backend == "unicorn":
        vcpu_kw["budget"] = budget
    if timeout is not None and backend == "kvm":
        vcpu_kw["timeout"] = timeout
    with open_vcpu(guest, backend, **vcpu_kw) as vcpu:
        cpu = CPUState(vcpu, machine)
        machine.ctx.thread = cpu.thread_name
        # a board with PCI devices DMAs into the vCPU's own RAM (QEMU: the RAM region behind
        # address_space_memory); it is released with the vCPU, so it is lent for the run only
        ram = machine.ram
        if machine.pci_bus is not None:
            try:
                machine.ram = vcpu.memory
            except VbookError:  # a vCPU that gives no view of its RAM: DMA reaches nothing
                pass
        try:
            end, detail = kvm_vcpu_thread_fn(cpu, max_exits, handled, messages)
        except _Runaway as e:  # QEMU itself would print nothing: the guest just runs
            end, detail = End.BUDGET, str(e)
        finally:
            machine.ram = ram
    rs = machine.runstate
    exit_code = rs.shutdown_exit_code if rs.shutdown_requested else None
    rec.emit("qemu", "stop", end.value, detail=detail, exit_code=exit_code)
    return LoopResult(guest.name, backend, tuple(handled), end, detail, exit_code,
                      machine.serial.console, tuple(messages), rec.freeze(), machine)


__all__ = ["CPU_INTERRUPT_HARD", "CPU_INTERRUPT_NMI", "KVM_CPU_EXEC_CASES", "QEMU_2_0_DIFFERENCES",
           "X86_CASES", "X86_NOT_MODELLED", "CPUState", "Difference", "End", "Excp", "Handled",
           "InternalError", "LoopResult", "SystemEvent", "exit_name", "excp_name",
           "kvm_arch_handle_exit", "kvm_cpu_exec", "kvm_handle_halt", "kvm_handle_internal_error",
           "kvm_handle_io", "kvm_handle_mmio", "kvm_vcpu_thread_fn", "main_loop_should_exit",
           "qemu_wait_io_event", "run"]
