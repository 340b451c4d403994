"""A vCPU on the real ``/dev/kvm``: the ioctl sequence every VMM issues, in Python.

Only the standard library (``os``, ``fcntl``, ``mmap``, ``ctypes``, ``struct``)
talks to the kernel, so each step reads like kvmtool or kvm-hello-world::

    open("/dev/kvm")                              the KVM subsystem (kvm fd)
    KVM_GET_API_VERSION                           must be 12
    KVM_CREATE_VM                                 vm fd
    mmap(anonymous) + KVM_SET_USER_MEMORY_REGION  guest RAM: slot 0 at GPA 0 (``memory``)
    KVM_SET_TSS_ADDR                              Intel VMX needs 3 pages for real mode
    KVM_CREATE_VCPU                               vcpu fd
    KVM_GET_SUPPORTED_CPUID + KVM_SET_CPUID2      else the guest cannot set EFER.LME
    KVM_GET_VCPU_MMAP_SIZE + mmap(vcpu fd)        struct kvm_run + the PIO data page
    KVM_SET_SREGS, KVM_SET_REGS                   real mode, CS:IP = 0:load_addr
    KVM_SET_SIGNAL_MASK                           which signals may interrupt KVM_RUN
    loop: KVM_RUN, then read kvm_run.exit_reason  (:meth:`KvmVcpu.run`)

**Guest RAM is one memory.** :attr:`KvmVcpu.memory` is a
:class:`~vbook.memory.GuestMemory` over the very mmap KVM maps into the guest:
a model's write there is what the guest reads next, the guest's stores are
there to read, no copy either way. :meth:`KvmVcpu.close` releases that view
(a later access raises :class:`~vbook.memory.MemoryReleased`) before it
unmaps; if a caller still holds a raw export of the RAM (``numpy.frombuffer``
of ``memory.buf``), ``mmap.close`` would refuse, so the mapping is left to go
with the last export instead — never unmapped under it.

**A time limit on KVM_RUN.** A guest that spins, or a hypercall the host never
finishes (VMCALL on a PVM host: KVM_RUN simply does not come back), must
become an error, not a hang. The kernel leaves KVM_RUN with ``-EINTR`` when a
signal is pending, so vbook does what QEMU does with its ``SIG_IPI``: a kick
signal (:data:`KICK_SIGNAL`) stays *blocked* in the thread, and
``KVM_SET_SIGNAL_MASK`` unblocks it only while the vCPU is inside KVM_RUN. A
periodic POSIX timer per thread (``timer_create`` with ``SIGEV_THREAD_ID``)
sends it every ``timeout / 20`` (1 ms at least). Because the signal is blocked outside KVM_RUN
it is never lost (a kick that comes between runs makes the next KVM_RUN return
at once), no Python signal handler or ``SIGALRM`` is touched, and it works on
any thread. A run reads no clock: only a kick does (:class:`_Kicker`), so a
stuck run fails between ``timeout`` and ``timeout`` + one tick after it began.

KVM_RUN itself is ``fcntl.ioctl(vcpu_fd, KVM_RUN)`` where that leaves EINTR to
vbook: CPython up to 3.13 does not retry an interrupted ``ioctl`` (PEP 475's
loops reached ``fcntl``, ``flock`` and ``lockf`` in 3.7, ``ioctl`` only in 3.14,
gh-132768), so a kicked KVM_RUN raises ``InterruptedError`` here, after any
Python signal handler has run; ``tests/test_kvm_backend.py`` pins this. Where
``fcntl.ioctl`` retries (3.14 on, and other Pythons, unchecked), KVM_RUN goes
through ``ctypes`` instead: a retry with the kick pending would spin in C for
ever. ``fcntl.ioctl`` is used because it is cheaper, *with no third argument*:
CPython 3.11 first tries an int argument as a writable, then a read-only
buffer (two TypeErrors made and dropped), so ``ioctl(fd, KVM_RUN, 0)`` costs
about 1.1 µs a call more than ``ioctl(fd, KVM_RUN)``, and a ``ctypes`` call
about 0.8 µs more (measured here on KVM_GET_API_VERSION; ``make bench`` shows
what it does to the exit rate). Ctrl-C still interrupts a run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import functools
import mmap
import os
import signal
import sys
import threading
import time
from typing import Any

from vbook.backends.base import Exit, HypercallExit, IoExit, MmioExit, Regs, VCpu, VcpuStats
from vbook.backends.kvm_structs import (
    CPUID2_HEADER,
    ENABLE_CAP,
    MEMORY_REGION,
    RUN_EX,
    RUN_EXIT_REASON,
    RUN_FAIL_ENTRY,
    RUN_HW,
    RUN_HYPERCALL,
    RUN_INTERNAL,
    RUN_IO,
    RUN_MMIO,
    RUN_MMIO_DATA,
    RUN_MSR,
    RUN_SYSTEM_EVENT,
    RUN_UNION,
    SIGNAL_MASK,
    SIZEOF_CPUID_ENTRY2,
    SIZEOF_SREGS,
    TRANSLATION,
    Sregs,
    pack_regs,
    unpack_regs,
)
from vbook.errors import (
    BackendUnavailable,
    GuestError,
    HypercallNotCompleted,
    KvmError,
    MemoryAccessError,
    RunTimeout,
    UnknownExitReason,
    VbookError,
)
from vbook.guests.base import Guest
from vbook.memory import GuestMemory
from vbook.models.kvm_api import (
    KVM_API_VERSION,
    SIZEOF_KVM_REGS,
    SIZEOF_KVM_TRANSLATION,
    Cap,
    ExitReason,
    Ioctl,
    IoDirection,
)

#: the device node; tests point it elsewhere to see the "missing" reason
KVM_DEV = "/dev/kvm"


def kvm_dev() -> str:
    """The KVM device: ``$VBOOK_KVM_DEV`` if set (``VBOOK_KVM_DEV=/nonexistent`` shows the
    book as a machine without KVM — mybinder.org — sees it), else /dev/kvm."""
    return os.environ.get("VBOOK_KVM_DEV") or KVM_DEV
#: three pages for the TSS Intel VMX uses to run real mode (kvmtool's address)
TSS_ADDR = 0xFFFBD000
#: interrupts KVM_RUN at the deadline; blocked everywhere but inside KVM_RUN
KICK_SIGNAL = signal.SIGRTMIN + 5
#: how long one KVM_RUN may take before it is an error (seconds)
DEFAULT_TIMEOUT = 1.0

VMCALL = b"\x0f\x01\xc1"  # Intel
VMMCALL = b"\x0f\x01\xd9"  # AMD

#: linux/kvm.h KVM_INTERNAL_ERROR_*
INTERNAL_SUBERRORS = {1: "EMULATION", 2: "SIMUL_EX", 3: "DELIVERY_EV", 4: "UNEXPECTED_EXIT_REASON"}
#: linux/kvm.h KVM_SYSTEM_EVENT_*
SYSTEM_EVENTS = {1: "SHUTDOWN", 2: "RESET", 3: "CRASH", 4: "WAKEUP", 5: "SUSPEND", 6: "SEV_TERM"}

_PAGE = 4096
_MASK64 = 2**64 - 1

# ---------------------------------------------------------------------------
# libc through ctypes: ioctl (for KVM_RUN's EINTR) and POSIX timers

_CLOCK_MONOTONIC = 1  # time.monotonic() reads the same clock (clock_gettime)
_TIMER_ABSTIME = 1
_SIGEV_THREAD_ID = 4  # Linux: deliver to one thread (sigev_notify_thread_id)


class _Sigevent(ctypes.Structure):
    """``struct sigevent`` (64 bytes on x86-64) with the Linux thread-id member."""

    _fields_ = [("sigev_value", ctypes.c_void_p), ("sigev_signo", ctypes.c_int),
                ("sigev_notify", ctypes.c_int), ("sigev_notify_thread_id", ctypes.c_int),
                ("_pad", ctypes.c_byte * 44)]


def _load_libc() -> tuple[Any, str | None]:
    """(libc, None), or (None, why it cannot be used)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timers = libc
        if not hasattr(libc, "timer_create"):  # glibc < 2.34 keeps POSIX timers in librt
            timers = ctypes.CDLL(ctypes.util.find_library("rt"), use_errno=True)
        libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
        libc.ioctl.restype = ctypes.c_int
        timers.timer_create.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        timers.timer_settime.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                         ctypes.c_void_p]
        timers.timer_delete.argtypes = [ctypes.c_void_p]
        libc.timer_create, libc.timer_settime, libc.timer_delete = (
            timers.timer_create, timers.timer_settime, timers.timer_delete)
        return libc, None
    except (OSError, AttributeError) as e:
        return None, f"the C library offers no ioctl/timer_create through ctypes ({e})"


_libc, _LIBC_PROBLEM = _load_libc()


def _ioctl_ulong(fd: int, request: Ioctl, arg: int) -> int:
    """An ioctl whose argument is an unsigned long (fcntl.ioctl only takes a C int)."""
    ret = _libc.ioctl(fd, request, arg)
    if ret < 0:
        err = ctypes.get_errno()
        raise KvmError(f"KVM_{request.name}", err, os.strerror(err))
    return ret


def _ioctl(fd: int, request: Ioctl, arg: Any = 0) -> Any:
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        raise KvmError(f"KVM_{request.name}", e.errno or 0, e.strerror or "") from None


class _Kicker:
    """The watchdog of one thread: a periodic POSIX timer that sends it :data:`KICK_SIGNAL`.

    One per thread that runs vCPUs, shared by all of them; it ticks every
    :attr:`period` (the smallest ``timeout / TICKS`` of its vCPUs). So a kick
    comes at most one period after any moment: either the timer fires, or its
    signal is already pending (blocked outside KVM_RUN) and the next KVM_RUN
    returns EINTR at once. The kernel re-arms a periodic timer only when its
    signal has been taken, so a thread that stops running vCPUs gets one more
    kick, not a stream. A run never reads the clock: its first kick starts its
    clock (the run began at most one period before), later kicks check it
    (:meth:`KvmVcpu._interrupted`).
    """

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {KICK_SIGNAL})
        self.was_blocked = KICK_SIGNAL in old
        ev = _Sigevent(None, KICK_SIGNAL, _SIGEV_THREAD_ID, threading.get_native_id())
        timer = ctypes.c_void_p()
        if _libc.timer_create(_CLOCK_MONOTONIC, ctypes.byref(ev), ctypes.byref(timer)) < 0:
            err = ctypes.get_errno()
            self._unblock()
            raise KvmError("timer_create", err, os.strerror(err))
        self.timer = timer
        self.period = 0.0  # seconds between kicks; 0: not started
        self.periods: dict[int, float] = {}  # id(vcpu) -> the period its timeout needs
        self._spec = (ctypes.c_long * 4)()  # struct itimerspec: it_interval, it_value
        self._spec_addr = ctypes.addressof(self._spec)

    def add(self, user: int, period: float) -> None:
        self.periods[user] = period
        self._set_period(min(self.periods.values()))

    def _set_period(self, period: float) -> None:
        if period != self.period:  # restart: the first kick one (new) period from now
            self.period = period
            self._settime(0, period)

    def fire_at(self, when: float) -> None:
        """Move the next kick to ``when`` (time.monotonic), then tick on from there."""
        self._settime(_TIMER_ABSTIME, when)

    def _settime(self, flags: int, value: float) -> None:
        spec, period = self._spec, self.period
        spec[0] = int(period)
        spec[1] = int((period - spec[0]) * 1e9)
        spec[2] = int(value)
        spec[3] = min(int((value - spec[2]) * 1e9) + 1, 999_999_999)  # never early
        if _libc.timer_settime(self.timer, flags, self._spec_addr, None) < 0:
            err = ctypes.get_errno()
            raise KvmError("timer_settime", err, os.strerror(err))

    @staticmethod
    def take() -> bool:
        """Take a pending kick off this thread (after KVM_RUN returned EINTR): was there one?"""
        return signal.sigtimedwait((KICK_SIGNAL,), 0) is not None

    def release(self, user: int) -> None:
        self.periods.pop(user, None)
        if self.periods:
            self._set_period(min(self.periods.values()))
            return
        _libc.timer_delete(self.timer)
        if _KICKERS.get(self.thread) is self:
            del _KICKERS[self.thread]
        if threading.get_ident() == self.thread:  # masks are per thread
            signal.sigtimedwait((KICK_SIGNAL,), 0)  # a kick that fired after the last run
            self._unblock()

    def _unblock(self) -> None:
        if not self.was_blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {KICK_SIGNAL})


_KICKERS: dict[int, _Kicker] = {}  # thread ident -> its kicker

# ---------------------------------------------------------------------------

_IO, _MMIO = int(ExitReason.IO), int(ExitReason.MMIO)
_IO_IN, _IO_OUT = IoDirection.IN, IoDirection.OUT
_R_IO, _R_MMIO = ExitReason.IO, ExitReason.MMIO
_EXIT_NAMES = {int(r): r.name for r in ExitReason}
_KVM_RUN = int(Ioctl.RUN)
_EXIT_CACHE_SIZE = 4096
#: kicks per timeout: a stuck run fails between ``timeout`` and ``timeout * (1 + 1/TICKS)``
TICKS = 20
#: but no more than one kick a millisecond (a tiny timeout is then a little later)
MIN_TICK = 0.001


def _kvm_run_ctypes(fd: int, request: int) -> int:
    """KVM_RUN through libc: raises OSError (EINTR too), as fcntl.ioctl does before 3.14."""
    ret = _libc.ioctl(fd, request, 0)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


#: True where fcntl.ioctl retries a call that fails with EINTR: CPython 3.14+
#: (gh-132768). KVM_RUN with the kick pending would then spin for ever in C.
IOCTL_RETRIES_EINTR = sys.implementation.name != "cpython" or sys.version_info >= (3, 14)
#: KVM_RUN, called as ``_kvm_run_ioctl(vcpu_fd, KVM_RUN)``: fcntl.ioctl where it leaves
#: EINTR to us, without the third argument (see the module docstring).
_kvm_run_ioctl = _kvm_run_ctypes if IOCTL_RETRIES_EINTR else fcntl.ioctl
_get_ident = threading.get_ident
_monotonic = time.monotonic
_KEY = slice(8, 53)  # kvm_run from exit_reason to the end of the io / mmio member


class KvmVcpu(VCpu):
    """One vCPU of a one-vCPU VM on ``/dev/kvm``, with a guest loaded in real mode.

    ``timeout`` bounds every :meth:`run` (seconds): past it, a guest sitting on
    VMCALL/VMMCALL raises :class:`~vbook.errors.HypercallNotCompleted`, any
    other :class:`~vbook.errors.RunTimeout`. The vCPU stays usable afterwards.
    """

    backend = "kvm"

    def __init__(self, guest: Guest, timeout: float = DEFAULT_TIMEOUT, dev: str | None = None,
                 hypercall_exit_enabled: int = 0):
        if not timeout > 0:
            raise VbookError(f"timeout must be a positive number of seconds, got {timeout!r}")
        _check_guest(guest)
        self.guest = guest
        self.timeout = float(timeout)
        self.hypercall_exit_enabled = hypercall_exit_enabled
        self._counts = [0] * 64  # exits by exit_reason
        self._timeouts = 0
        # kvm_run[8:53] -> (the Exit, or for an OUT what makes one; exit_reason; for an
        # OUT its Exits by data and where the data is; the pending IN / MMIO read)
        self._exits: dict[bytes, tuple] = {}
        self._thread: int | None = None  # the thread runs are set up for
        self._kicker_here: _Kicker | None = None  # that thread's kicker
        self._ready: int | None = None  # that thread, when run() may go on; None: check why
        self.mem_size = guest.mem_size
        self._kvm = self._vm = self._vcpu = -1
        self._mem: mmap.mmap | None = None
        self._memory: GuestMemory | None = None  # the view of _mem that ``memory`` gives
        self._run: mmap.mmap | None = None
        self._pending: tuple[str, int, int] | None = None  # (what, offset in kvm_run, bytes)
        self._hypercall_pending = False
        self._kickers: dict[int, _Kicker] = {}
        try:
            self._open(dev or kvm_dev())
        except BaseException:
            self.close()
            raise

    @classmethod
    def check_available(cls, dev: str | None = None) -> None:
        """Raise :class:`~vbook.errors.BackendUnavailable` saying why /dev/kvm cannot be used."""
        dev = dev or kvm_dev()
        try:
            fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BackendUnavailable("kvm", (
                f"{dev} does not exist (no KVM module, or running in a container/VM without "
                "nested virtualization — e.g. mybinder.org); the book uses unicorn")) from None
        except PermissionError:
            raise BackendUnavailable("kvm", (
                f"permission denied on {dev}: add yourself to the kvm group "
                "(sudo usermod -aG kvm $USER, then log in again) or run as root")) from None
        except OSError as e:
            hint = (" — the node exists but no KVM driver answers; load kvm_intel or kvm_amd"
                    if e.errno in (errno.ENXIO, errno.ENODEV) else "")
            raise BackendUnavailable("kvm", (
                f"cannot open {dev}: {e.strerror} (errno {e.errno}){hint}")) from None
        try:
            try:
                version = fcntl.ioctl(fd, Ioctl.GET_API_VERSION)
            except OSError as e:
                raise BackendUnavailable("kvm", (
                    f"{dev} is not a KVM device: KVM_GET_API_VERSION failed "
                    f"({e.strerror})")) from None
            if version != KVM_API_VERSION:
                raise BackendUnavailable("kvm", (
                    f"{dev} speaks KVM API version {version}; vbook needs {KVM_API_VERSION}"))
            try:
                os.close(fcntl.ioctl(fd, Ioctl.CREATE_VM, 0))
            except OSError as e:
                raise BackendUnavailable("kvm", (
                    f"KVM_CREATE_VM failed on {dev}: {e.strerror} (errno {e.errno}); is another "
                    "hypervisor holding VT-x/AMD-V, or virtualization off in the firmware?")
                ) from None
        finally:
            os.close(fd)
        if _LIBC_PROBLEM:
            raise BackendUnavailable("kvm", _LIBC_PROBLEM)

    @classmethod
    def from_guest(cls, guest: Guest, timeout: float = DEFAULT_TIMEOUT, dev: str | None = None,
                   hypercall_exit_enabled: int = 0) -> KvmVcpu:
        """A fresh VM with ``guest`` loaded and its vCPU in real mode at ``guest.load_addr``.

        ``hypercall_exit_enabled`` is the mask of hypercall numbers (bit nr) KVM
        should hand to user space as KVM_EXIT_HYPERCALL
        (``KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)``; Linux 6.1 allows only
        ``1 << KVM_HC_MAP_GPA_RANGE``).
        """
        return cls(guest, timeout=timeout, dev=dev,
                   hypercall_exit_enabled=hypercall_exit_enabled)

    # --- set-up: the ioctl sequence of the module docstring ------------------------

    def _open(self, dev: str) -> None:
        guest = self.guest
        try:
            self._kvm = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            self.check_available(dev)  # raises with the reason
            raise
        version = _ioctl(self._kvm, Ioctl.GET_API_VERSION)
        if version != KVM_API_VERSION:
            raise BackendUnavailable("kvm", f"KVM API version {version}, need {KVM_API_VERSION}")
        if _LIBC_PROBLEM:
            raise BackendUnavailable("kvm", _LIBC_PROBLEM)
        self._vm = _ioctl(self._kvm, Ioctl.CREATE_VM, 0)
        if self.hypercall_exit_enabled:
            self._enable_hypercall_exit(self.hypercall_exit_enabled)

        # guest RAM: anonymous memory of this process, slot 0 at guest-physical 0
        self._mem = mmap.mmap(-1, guest.mem_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        view = ctypes.c_char.from_buffer(self._mem)
        userspace_addr = ctypes.addressof(view)
        del view  # release the buffer export, or mmap.close() refuses later
        _ioctl(self._vm, Ioctl.SET_USER_MEMORY_REGION,
               MEMORY_REGION.pack(0, 0, 0, guest.mem_size, userspace_addr))
        self._mem[guest.load_addr:guest.load_addr + len(guest.code)] = guest.code

        if _ioctl(self._vm, Ioctl.CHECK_EXTENSION, Cap.SET_TSS_ADDR) > 0:
            _ioctl_ulong(self._vm, Ioctl.SET_TSS_ADDR, TSS_ADDR)

        self._vcpu = _ioctl(self._vm, Ioctl.CREATE_VCPU, 0)
        self._set_cpuid()
        size = _ioctl(self._kvm, Ioctl.GET_VCPU_MMAP_SIZE)
        self._run = mmap.mmap(self._vcpu, size, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE)

        # the CPU after reset, moved to CS = DS = ES = SS = 0 (guests/base.py)
        sregs = self.get_sregs()
        for seg in (sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            seg.base, seg.selector = 0, 0
        self.set_sregs(sregs)
        self.set_regs(Regs(rip=guest.load_addr, rsp=guest.stack_top, rflags=0x2))

        # inside KVM_RUN: this thread's mask, but with the kick signal let through
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        mask = sum(1 << (int(s) - 1) for s in blocked if s != KICK_SIGNAL)
        _ioctl(self._vcpu, Ioctl.SET_SIGNAL_MASK, SIGNAL_MASK.pack(8, mask))

    def _enable_hypercall_exit(self, mask: int) -> None:
        supported = _ioctl(self._vm, Ioctl.CHECK_EXTENSION, Cap.EXIT_HYPERCALL)
        if mask & ~supported:
            raise BackendUnavailable("kvm", (
                f"KVM_CAP_EXIT_HYPERCALL: this kernel hands hypercalls {supported:#x} to user "
                f"space, not {mask:#x} (bit n = hypercall nr n)"))
        _ioctl(self._vm, Ioctl.ENABLE_CAP,
               ENABLE_CAP.pack(Cap.EXIT_HYPERCALL, 0, mask, 0, 0, 0))

    def _set_cpuid(self) -> None:
        """Give the guest the CPUID KVM supports (QEMU's -cpu host, roughly).

        An empty CPUID hides long mode, and KVM then answers the guest's
        ``wrmsr`` of EFER.LME with #GP (``kvm_valid_efer``).
        """
        nent = 128
        while True:
            buf = bytearray(CPUID2_HEADER.pack(nent, 0) + bytes(nent * SIZEOF_CPUID_ENTRY2))
            try:
                fcntl.ioctl(self._kvm, Ioctl.GET_SUPPORTED_CPUID, buf)
                break
            except OSError as e:
                if e.errno != errno.E2BIG or nent >= 4096:
                    raise KvmError("KVM_GET_SUPPORTED_CPUID", e.errno or 0, e.strerror) from None
                nent *= 2
        nent = CPUID2_HEADER.unpack_from(buf)[0]
        _ioctl(self._vcpu, Ioctl.SET_CPUID2,
               bytearray(buf[:CPUID2_HEADER.size + nent * SIZEOF_CPUID_ENTRY2]))

    # --- KVM_RUN ---------------------------------------------------------------------

    def run(self) -> Exit:
        """KVM_RUN until the guest exits to user space; the exit, decoded from kvm_run."""
        if self._ready != _get_ident():  # closed, data pending, or a new thread
            self._get_ready()
        try:
            _kvm_run_ioctl(self._vcpu, _KVM_RUN)
        except OSError as e:
            self._interrupted(e)  # a kick of the time limit (or another signal, or an error)

        # Exits repeat (a loop writing one port) and Exit is immutable, so equal
        # exits share one object, found by the raw bytes of kvm_run from
        # exit_reason to the end of the io/mmio member; an OUT's bytes in the
        # PIO page are a second key. This path is kept short on purpose: right
        # after KVM_RUN every bytecode costs several times what it does in a warm
        # loop (on this PVM host; tools/bench.py compares it with a bare loop).
        run = self._run
        try:
            exit, reason, by_data, where, pending = self._exits[run[_KEY]]
        except KeyError:
            return self._decode(run[_KEY])
        self._counts[reason] += 1
        if by_data is None:
            if pending is not None:  # IN or MMIO read: complete() answers
                self._pending, self._ready = pending, None
            return exit
        data = run[where]  # KVM_EXIT_IO_OUT: the bytes in the PIO data page
        try:
            return by_data[data]
        except KeyError:
            return _cache_out(by_data, exit, data)  # (for OUT, ``exit`` makes one)

    def _decode(self, key: bytes) -> Exit:
        """Decode an exit not in the cache (``key``: kvm_run[8:53]); cache it if IO or MMIO."""
        (reason,) = RUN_EXIT_REASON.unpack_from(key)
        if reason < len(self._counts):
            self._counts[reason] += 1
        pending = entry = None
        if reason == _IO:
            direction, size, port, count, offset = RUN_IO.unpack_from(key, RUN_UNION - 8)
            n = size * count
            if direction:  # KVM_EXIT_IO_OUT: the bytes are in the PIO data page
                make = functools.partial(IoExit, _IO_OUT, size, port, count)
                by_data: dict[bytes, Exit] = {}
                entry = (make, reason, by_data, slice(offset, offset + n), None)
                exit = _cache_out(by_data, make, self._run[offset:offset + n])
            else:  # IN: user space answers into the same place
                exit = Exit(_R_IO, io=IoExit(_IO_IN, size, port, count))
                pending = ("IN", offset, n)
        elif reason == _MMIO:
            phys_addr, data, length, is_write = RUN_MMIO.unpack_from(key, RUN_UNION - 8)
            if is_write:
                exit = Exit(_R_MMIO, mmio=MmioExit(phys_addr, length, True, data[:length]))
            else:
                exit = Exit(_R_MMIO, mmio=MmioExit(phys_addr, length, False))
                pending = ("MMIO read", RUN_MMIO_DATA, length)
        else:
            return self._decode_other(reason)
        if pending is not None:
            self._pending, self._ready = pending, None
        exits = self._exits
        if len(exits) >= _EXIT_CACHE_SIZE:
            exits.clear()
        exits[key] = entry or (exit, reason, None, None, pending)
        return exit

    def _get_ready(self) -> None:
        """Why run() may not go on; else set this thread up (its kicker, made on first use)."""
        if self._run is None:
            raise VbookError("this KvmVcpu is closed")
        if self._pending is not None:
            what, _, n = self._pending
            raise VbookError(f"the {what} of the last exit is waiting for data: call "
                             f"complete(<{n} bytes>) before run()")
        ident = _get_ident()
        kicker = self._kickers.get(ident)
        if kicker is None:
            kicker = _KICKERS.get(ident)
            if kicker is None:
                kicker = _KICKERS[ident] = _Kicker()
            kicker.add(id(self), max(self.timeout / TICKS, MIN_TICK))
            self._kickers[ident] = kicker
        self._thread, self._kicker_here = ident, kicker
        self._ready = ident

    def _interrupted(self, e: OSError) -> None:
        """KVM_RUN failed with ``e``: sit out the kicks until the guest exits, or raise.

        The run began at most one kicker period before its first kick, so a
        deadline of first kick + timeout is never early and at most one period
        late. Another signal's Python handler has already run by the time the
        ioctl raised (Ctrl-C raises KeyboardInterrupt from there instead).
        """
        kicker = self._kicker_here
        assert kicker is not None
        deadline = None
        while True:
            if e.errno != errno.EINTR:
                raise KvmError("KVM_RUN", e.errno or 0, e.strerror or "")
            if kicker.take():  # our kick, not another signal
                now = _monotonic()
                if deadline is None:
                    deadline = now + self.timeout
                elif now >= deadline:
                    raise self._timeout_error()
                if deadline - now < kicker.period:
                    kicker.fire_at(deadline)
            try:
                _kvm_run_ioctl(self._vcpu, _KVM_RUN)
                return
            except OSError as again:
                e = again

    @property
    def stats(self) -> VcpuStats:
        """KVM_RUN calls that returned, and exits by reason (like KVM's per-vCPU stats)."""
        c = self._counts
        exits = {_EXIT_NAMES.get(r, str(r)): n for r, n in enumerate(c) if n}
        if self._timeouts:
            exits["TIMEOUT"] = self._timeouts
        return VcpuStats(runs=sum(c), exits=exits)

    def _decode_other(self, reason: int) -> Exit:
        run = self._run
        assert run is not None
        try:
            why = ExitReason(reason)
        except ValueError:
            rip = self.get_regs().rip
            raise UnknownExitReason(reason, (
                f"KVM_RUN returned exit_reason {reason} at RIP {rip:#x}: no KVM_EXIT_* of the "
                "uapi 6.1 headers vbook knows (a newer kernel?)")) from None
        if why == ExitReason.HLT:
            return Exit(why)
        if why == ExitReason.SHUTDOWN:
            return Exit(why, detail="triple fault")
        if why == ExitReason.HYPERCALL:
            nr, *rest = RUN_HYPERCALL.unpack_from(run, RUN_UNION)
            self._hypercall_pending = True
            return Exit(why, hypercall=HypercallExit(nr, tuple(rest[:6]), rest[7]))
        if why == ExitReason.INTERNAL_ERROR:
            suberror, ndata, *data = RUN_INTERNAL.unpack_from(run, RUN_UNION)
            words = " ".join(f"{d:#x}" for d in data[:min(ndata, 16)])
            name = INTERNAL_SUBERRORS.get(suberror, "?")
            return Exit(why, detail=f"suberror {suberror} ({name}), data [{words}]")
        if why == ExitReason.FAIL_ENTRY:
            reason_hw, cpu = RUN_FAIL_ENTRY.unpack_from(run, RUN_UNION)
            return Exit(why, detail=f"hardware_entry_failure_reason {reason_hw:#x} on cpu {cpu}")
        if why == ExitReason.UNKNOWN:
            (hw,) = RUN_HW.unpack_from(run, RUN_UNION)
            return Exit(why, detail=f"hardware_exit_reason {hw:#x}")
        if why == ExitReason.EXCEPTION:
            vector, error_code = RUN_EX.unpack_from(run, RUN_UNION)
            return Exit(why, detail=f"exception {vector} error_code {error_code:#x}")
        if why == ExitReason.SYSTEM_EVENT:
            typ, _ = RUN_SYSTEM_EVENT.unpack_from(run, RUN_UNION)
            return Exit(why, detail=f"type {typ} ({SYSTEM_EVENTS.get(typ, '?')})")
        if why in (ExitReason.X86_RDMSR, ExitReason.X86_WRMSR):
            _, msr_reason, index, data = RUN_MSR.unpack_from(run, RUN_UNION)
            return Exit(why, detail=f"msr {index:#x} data {data:#x} reason {msr_reason}")
        return Exit(why)

    def _timeout_error(self) -> RunTimeout:
        """What the vCPU was doing when its KVM_RUN ran out of time."""
        regs, sregs = self.get_regs(), self.get_sregs()
        linear = sregs.linear(regs.rip)
        gpa = self.translate(linear) if sregs.paging else linear
        insn = b""
        if gpa is not None and gpa + 3 <= self.mem_size:
            insn = self.read_memory(gpa, 3)
        self._timeouts += 1
        if insn in (VMCALL, VMMCALL):
            name = "VMCALL" if insn == VMCALL else "VMMCALL"
            return HypercallNotCompleted(
                f"this host did not complete the hypercall at RIP {regs.rip:#x} ({name}, "
                f"RAX={regs.rax:#x}); KVM_RUN did not return within {self.timeout:g} s",
                rip=regs.rip)
        where = f"{insn.hex(' ')}" if insn else "not in RAM"
        return RunTimeout(
            f"guest ran {self.timeout:g} s without an exit (runaway guest?) at RIP "
            f"{regs.rip:#x} (bytes there: {where})", rip=regs.rip)

    def complete(self, data: bytes) -> None:
        """Answer the pending IN (PIO data page) or MMIO read (``kvm_run.mmio.data``).

        KVM finishes the instruction on the next :meth:`run`
        (``vcpu->arch.complete_userspace_io``). After a HYPERCALL exit, ``data``
        (8 bytes, little-endian) becomes ``kvm_run.hypercall.ret``.
        """
        run = self._run
        if run is None:
            raise VbookError("this KvmVcpu is closed")
        data = bytes(data)
        if self._pending is None:
            # a HYPERCALL exit that was the last one (run() does not reset the flag)
            if (self._hypercall_pending and len(data) == 8
                    and RUN_EXIT_REASON.unpack_from(run, 8)[0] == ExitReason.HYPERCALL):
                run[RUN_UNION + 56:RUN_UNION + 64] = data
                self._hypercall_pending = False
                return
            raise VbookError("complete(): no IN or MMIO read is waiting for data")
        what, offset, n = self._pending
        if len(data) != n:
            raise VbookError(f"complete(): the pending {what} needs {n} bytes, got {len(data)}")
        run[offset:offset + n] = data
        self._pending = None
        self._ready = self._thread

    # --- registers and memory ------------------------------------------------------------

    def get_regs(self) -> Regs:
        return unpack_regs(_ioctl(self._vcpu, Ioctl.GET_REGS, bytes(SIZEOF_KVM_REGS)))

    def set_regs(self, regs: Regs) -> None:
        _ioctl(self._vcpu, Ioctl.SET_REGS, pack_regs(regs))

    def get_sregs(self) -> Sregs:
        return Sregs.unpack(_ioctl(self._vcpu, Ioctl.GET_SREGS, bytes(SIZEOF_SREGS)))

    def set_sregs(self, sregs: Sregs) -> None:
        _ioctl(self._vcpu, Ioctl.SET_SREGS, sregs.pack())

    def translate(self, linear: int) -> int | None:
        """KVM_TRANSLATE: the GPA the guest's page tables give ``linear``, None if unmapped."""
        buf = _ioctl(self._vcpu, Ioctl.TRANSLATE,
                     TRANSLATION.pack(linear & _MASK64, 0, 0, 0, 0).ljust(SIZEOF_KVM_TRANSLATION))
        _, physical, valid, _, _ = TRANSLATION.unpack(buf)
        return physical if valid else None

    def read_memory(self, gpa: int, n: int) -> bytes:
        if self._mem is None:
            raise VbookError("this KvmVcpu is closed")
        if gpa < 0 or n < 0 or gpa + n > self.mem_size:
            raise MemoryAccessError(gpa, n, self.mem_size)
        return self._mem[gpa:gpa + n]

    def write_memory(self, gpa: int, data: bytes) -> None:
        if self._mem is None:
            raise VbookError("this KvmVcpu is closed")
        if gpa < 0 or gpa + len(data) > self.mem_size:
            raise MemoryAccessError(gpa, len(data), self.mem_size)
        self._mem[gpa:gpa + len(data)] = data

    @property
    def memory(self) -> GuestMemory:
        """Guest RAM itself as a :class:`~vbook.memory.GuestMemory`: the ``mmap`` of memory
        slot 0, no copy. What a model writes there the guest sees at its next access
        (KVM maps this very memory into the guest: ``KVM_SET_USER_MEMORY_REGION``), and
        what the guest wrote is there to read. Access logging is off
        (``vcpu.memory.record = True`` turns it on). :meth:`close` releases it: a
        later access raises :class:`~vbook.memory.MemoryReleased`.
        """
        mem = self._memory
        if mem is None:  # made on first use (chapter 01 shows _open as the bare ioctl sequence)
            if self._mem is None:
                raise VbookError("this KvmVcpu is closed")
            mem = self._memory = GuestMemory.over(self._mem, record=False,
                                                  owner=f"KvmVcpu({self.guest.name!r})")
        return mem

    # --- teardown ------------------------------------------------------------------------

    @property
    def vm_fd(self) -> int:
        """The VM's fd (-1 once closed): for VM ioctls such as KVM_GET_STATS_FD."""
        return self._vm

    @property
    def vcpu_fd(self) -> int:
        """The vCPU's fd (-1 once closed): for vCPU ioctls such as KVM_GET_STATS_FD."""
        return self._vcpu

    @property
    def closed(self) -> bool:
        return self._kvm < 0 and self._run is None and self._mem is None and self._memory is None

    def close(self) -> None:
        """munmap kvm_run and the RAM, close the vcpu, vm and kvm fds. Safe to call twice."""
        self._ready = self._thread = self._kicker_here = None  # run(): "closed"
        kickers, self._kickers = self._kickers, {}
        for kicker in kickers.values():
            kicker.release(id(self))
        if self._run is not None:
            self._run.close()
            self._run = None
        for name in ("_vcpu", "_vm"):  # the VM holds the memory slot: close it before munmap
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)
        if self._memory is not None:  # views first: theirs are the exports that block munmap
            self._memory.release()
            self._memory = None
        if self._mem is not None:
            mem, self._mem = self._mem, None
            try:
                mem.close()
            except BufferError:
                # a caller still holds an export of the RAM (memoryview(vcpu.memory.buf),
                # numpy.frombuffer ...): munmap now would leave it pointing at nothing.
                # The mapping goes when the last export does; the VM is gone already.
                pass
        if self._kvm >= 0:
            fd, self._kvm = self._kvm, -1
            os.close(fd)
        self._pending = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may be gone
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{sum(self._counts)} runs"
        return f"KvmVcpu({self.guest.name!r}, timeout={self.timeout:g} s, {state})"


def _cache_out(by_data: dict[bytes, Exit], make: Any, data: bytes) -> Exit:
    """The Exit of an OUT of ``data`` (``make``: the IoExit without its data), now cached."""
    exit = Exit(_R_IO, io=make(data))
    if len(by_data) >= _EXIT_CACHE_SIZE:
        by_data.clear()
    by_data[data] = exit
    return exit


def _check_guest(guest: Guest) -> None:
    if guest.mem_size <= 0 or guest.mem_size % _PAGE:
        raise GuestError(f"guest {guest.name!r}: mem_size {guest.mem_size:#x} is not a positive "
                         f"multiple of the {_PAGE}-byte page KVM maps memory slots in")
    end = guest.load_addr + len(guest.code)
    if guest.load_addr < 0 or end > guest.mem_size:
        raise GuestError(f"guest {guest.name!r}: code [{guest.load_addr:#x}, {end:#x}) does "
                         f"not fit in memory [0, {guest.mem_size:#x})")
