"""The /dev/kvm backend against real KVM: exact exits of tiny real-mode guests,
completion of IN and MMIO reads, triple fault, the KVM_RUN time limit, the
hypercall this host may not complete, and that nothing is left behind.

Tests that need a usable /dev/kvm skip with the reason ``check_available``
gives; the ``check_available`` reasons themselves are tested everywhere.
Every guest is a few bytes of 16-bit code with its listing (checked with
``objdump -D -b binary -mi8086``), loaded at 0x1000 in 64 KiB of RAM.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import threading
import time

import pytest

from vbook.backends import kvm as kvm_mod
from vbook.backends.base import Exit, IoExit, MmioExit, Regs
from vbook.backends.kvm import KICK_SIGNAL, KvmVcpu
from vbook.errors import (
    BackendUnavailable,
    GuestError,
    HypercallNotCompleted,
    MemoryAccessError,
    RunTimeout,
    UnknownExitReason,
    VbookError,
)
from vbook.guests.base import Guest
from vbook.models.hypercall import kvm_emulate_hypercall
from vbook.models.kvm_api import KVM_API_VERSION, ExitReason, Ioctl, IoDirection

try:
    KvmVcpu.check_available()
    UNUSABLE = None
except BackendUnavailable as e:
    UNUSABLE = e.reason

needs_kvm = pytest.mark.skipif(UNUSABLE is not None, reason=f"kvm backend: {UNUSABLE}")

IN, OUT = IoDirection.IN, IoDirection.OUT
HLT = Exit(ExitReason.HLT)


def guest(hexcode: str, listing: str, name: str = "t") -> Guest:
    return Guest(name, 16, bytes.fromhex(hexcode), listing)


def io(direction: IoDirection, size: int, port: int, data: str = "", count: int = 1) -> Exit:
    return Exit(ExitReason.IO, io=IoExit(direction, size, port, count, bytes.fromhex(data)))


def mmio(addr: int, length: int, data: str | None = None) -> Exit:
    is_write = data is not None
    return Exit(ExitReason.MMIO, mmio=MmioExit(addr, length, is_write,
                                               bytes.fromhex(data or "")))


HELLO = guest("B041 BAF803 EE B042 EE F4", """\
mov al, 'A'
mov dx, 0x3f8
out dx, al
mov al, 'B'
out dx, al
hlt""", "hello")

IN_OUT = guest("66B844332211 E460 E661 6689C3 BA7000 ED BA7100 EF 66ED 66EF F4", """\
mov eax, 0x11223344
in al, 0x60        ; an 8-bit IN merges into AL
out 0x61, al
mov ebx, eax
mov dx, 0x70
in ax, dx
mov dx, 0x71
out dx, ax
in eax, dx
out dx, eax
hlt""", "in_out")

MMIO = guest("B80010 8ED8 C60610005A C70620003412 66A13000 BA8000 66EF A04000 F4", """\
mov ax, 0x1000     ; DS base 0x10000: just past the 64 KiB RAM slot
mov ds, ax
mov byte [0x10], 0x5a
mov word [0x20], 0x1234
mov eax, [0x30]
mov dx, 0x80
out dx, eax
mov al, [0x40]
hlt""", "mmio")

TRIPLE_FAULT = guest("0F011E0011 0F20C0 0C01 0F22C0 0F0B F4", """\
lidt [0x1100]      ; a zero-limit IDT (the bytes there are 0)
mov eax, cr0
or al, 1           ; CR0.PE: in protected mode the IDT limit is checked
mov cr0, eax       ; (in real mode this PVM host does not: it jumps via the IVT)
ud2                ; #UD -> #GP -> #DF -> triple fault
hlt""", "triple_fault")

SPIN = guest("EBFE F4", """\
l: jmp l
hlt""", "spin")

VMCALL = guest("66B845230100 0F01C1 E680 F4", """\
mov eax, 0x12345   ; no such hypercall
vmcall
out 0x80, al       ; the low byte of what KVM left in RAX
hlt""", "vmcall")

EFER_LME = guest("66B9800000C0 0F32 660D00010000 0F30 F4", """\
mov ecx, 0xc0000080  ; IA32_EFER
rdmsr
or eax, 0x100        ; LME
wrmsr                ; #GP unless CPUID says long mode exists
hlt""", "efer_lme")

REP_OUTSB = guest("BE0010 B90300 BA8000 F36E F4", """\
mov si, 0x1000     ; the first 3 code bytes: be 00 10
mov cx, 3
mov dx, 0x80
rep outsb
hlt""", "rep_outsb")


def run_all(vcpu: KvmVcpu, replies: list[bytes] = (), limit: int = 100) -> list[Exit]:
    """Run to HLT/SHUTDOWN, answering each IN / MMIO read with the next reply."""
    replies = list(replies)
    exits = []
    for _ in range(limit):
        e = vcpu.run()
        exits.append(e)
        if e.needs_data:
            vcpu.complete(replies.pop(0))
        elif e.io is None and e.mmio is None:
            return exits
    raise AssertionError(f"no HLT after {limit} exits: {exits[-3:]}")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def kvm_mappings() -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if "kvm" in line]


# --- check_available: typed, actionable reasons (no /dev/kvm needed) ------------------

def test_missing_device_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(kvm_mod, "KVM_DEV", str(tmp_path / "kvm"))
    with pytest.raises(BackendUnavailable) as ei:
        KvmVcpu.check_available()
    assert ei.value.backend == "kvm"
    assert "does not exist" in ei.value.reason and "mybinder.org" in ei.value.reason
    assert "unicorn" in ei.value.reason
    with pytest.raises(BackendUnavailable, match="does not exist"):
        KvmVcpu.from_guest(HELLO)


def test_permission_denied_is_reported(monkeypatch):
    def denied(path, flags, *a):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.delenv("VBOOK_KVM_DEV", raising=False)
    monkeypatch.setattr(kvm_mod.os, "open", denied)
    with pytest.raises(BackendUnavailable) as ei:
        KvmVcpu.check_available()
    assert "permission denied on /dev/kvm" in ei.value.reason
    assert "kvm group" in ei.value.reason and "root" in ei.value.reason


def test_node_without_driver_is_reported(monkeypatch):
    def no_driver(path, flags, *a):
        raise OSError(errno.ENXIO, "No such device or address", path)

    monkeypatch.setattr(kvm_mod.os, "open", no_driver)
    with pytest.raises(BackendUnavailable, match="kvm_intel or kvm_amd"):
        KvmVcpu.check_available()


def test_not_a_kvm_device_is_reported(tmp_path):
    plain = tmp_path / "kvm"
    plain.write_bytes(b"")
    with pytest.raises(BackendUnavailable, match="is not a KVM device"):
        KvmVcpu.check_available(str(plain))


@needs_kvm
def test_wrong_api_version_is_reported(monkeypatch):
    real = fcntl.ioctl

    def old_kernel(fd, request, *args):
        if request == Ioctl.GET_API_VERSION:
            return 11
        return real(fd, request, *args)

    monkeypatch.setattr(kvm_mod.fcntl, "ioctl", old_kernel)
    with pytest.raises(BackendUnavailable, match="API version 11; vbook needs 12"):
        KvmVcpu.check_available()


# --- the API and exact exits ------------------------------------------------------------

@needs_kvm
def test_api_version():
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        assert fcntl.ioctl(fd, Ioctl.GET_API_VERSION) == KVM_API_VERSION == 12
    finally:
        os.close(fd)


@needs_kvm
def test_hello_exits_exactly():
    with KvmVcpu.from_guest(HELLO) as vcpu:
        assert run_all(vcpu) == [io(OUT, 1, 0x3F8, "41"), io(OUT, 1, 0x3F8, "42"), HLT]
        assert vcpu.get_regs().rip == 0x100A  # HLT exits with RIP past the HLT
        assert vcpu.stats.exits == {"IO": 2, "HLT": 1} and vcpu.stats.runs == 3


@needs_kvm
def test_starts_in_real_mode_as_guests_base_says():
    with KvmVcpu.from_guest(HELLO) as vcpu:
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
        assert (regs.rip, regs.rsp, regs.rflags) == (0x1000, 0x1000, 0x2)
        for seg in (sregs.cs, sregs.ds, sregs.es, sregs.ss):
            assert (seg.base, seg.selector) == (0, 0)
        assert sregs.cr0 & 1 == 0 and not sregs.long_mode
        assert vcpu.read_memory(0x1000, len(HELLO.code)) == HELLO.code


@needs_kvm
def test_in_completion_reaches_al_ax_eax():
    with KvmVcpu.from_guest(IN_OUT) as vcpu:
        exits = run_all(vcpu, [b"\xab", b"\xcd\xab", b"\x01\x02\x03\x04"])
        assert exits == [
            io(IN, 1, 0x60), io(OUT, 1, 0x61, "ab"),
            io(IN, 2, 0x70), io(OUT, 2, 0x71, "cdab"),
            io(IN, 4, 0x71), io(OUT, 4, 0x71, "01020304"),
            HLT,
        ]
        regs = vcpu.get_regs()
        assert regs.rbx == 0x112233AB  # IN AL kept the upper bytes of EAX
        assert regs.rax == 0x04030201


@needs_kvm
def test_mmio_write_and_read_completion():
    with KvmVcpu.from_guest(MMIO) as vcpu:
        exits = run_all(vcpu, [bytes.fromhex("78563412"), b"\x99"])
        assert exits == [
            mmio(0x10010, 1, "5a"),
            mmio(0x10020, 2, "3412"),
            mmio(0x10030, 4),
            io(OUT, 4, 0x80, "78563412"),
            mmio(0x10040, 1),
            HLT,
        ]
        assert vcpu.get_regs().rax & 0xFF == 0x99


@needs_kvm
def test_string_io_carries_every_byte():
    with KvmVcpu.from_guest(REP_OUTSB) as vcpu:
        exits = run_all(vcpu)
        assert exits[-1] == HLT
        ios = [e.io for e in exits[:-1]]
        assert all(i.direction == OUT and i.port == 0x80 and i.size == 1 for i in ios)
        assert sum(i.count for i in ios) == 3
        assert b"".join(i.data for i in ios) == bytes.fromhex("be0010")


@needs_kvm
def test_triple_fault_is_shutdown():
    with KvmVcpu.from_guest(TRIPLE_FAULT) as vcpu:
        assert run_all(vcpu) == [Exit(ExitReason.SHUTDOWN, detail="triple fault")]


@needs_kvm
def test_guest_can_enable_long_mode_in_efer():
    """KVM_SET_CPUID2 is done: with an empty CPUID the WRMSR of EFER.LME would #GP."""
    with KvmVcpu.from_guest(EFER_LME, timeout=0.5) as vcpu:
        assert run_all(vcpu) == [HLT]
        assert vcpu.get_sregs().efer & 0x100


# --- the time limit on KVM_RUN ------------------------------------------------------------

@needs_kvm
def test_spinning_guest_raises_run_timeout_and_vcpu_stays_usable():
    with KvmVcpu.from_guest(SPIN, timeout=0.3) as vcpu:
        t = time.monotonic()
        with pytest.raises(RunTimeout) as ei:
            vcpu.run()
        assert time.monotonic() - t < 5  # a bound on "not a hang", not a timing test
        assert not isinstance(ei.value, HypercallNotCompleted)
        assert ei.value.rip == 0x1000
        assert "without an exit (runaway guest?) at RIP 0x1000" in str(ei.value)
        assert "eb fe" in str(ei.value)
        vcpu.set_regs(Regs(rip=0x1002, rsp=0x1000))  # the HLT after the loop
        assert vcpu.run() == HLT
        assert vcpu.stats.exits == {"HLT": 1, "TIMEOUT": 1}
    with KvmVcpu.from_guest(HELLO) as fresh:
        assert run_all(fresh)[-1] == HLT


@needs_kvm
def test_vmcall_completes_or_is_reported(record_property):
    """Either the host finishes the hypercall (the guest continues with RAX =
    -KVM_ENOSYS, 32-bit in real mode) or run() says it did not; never a hang."""
    with KvmVcpu.from_guest(VMCALL, timeout=0.3) as vcpu:
        try:
            exits = run_all(vcpu)
        except HypercallNotCompleted as e:
            record_property("host", f"did not complete the hypercall: {e}")
            assert e.rip == 0x1006
            assert str(e).startswith("this host did not complete the hypercall at RIP 0x1006")
            assert "VMCALL" in str(e) and "0.3 s" in str(e)
            assert vcpu.get_regs().rip == 0x1006  # still on the VMCALL
            vcpu.set_regs(Regs(rip=0x1009, rsp=0x1000))  # step over it by hand
            assert run_all(vcpu) == [io(OUT, 1, 0x80, "00"), HLT]
        else:
            expected = kvm_emulate_hypercall(0x12345, longmode=False).ret
            record_property("host", f"completed the hypercall: RAX={expected:#x}")
            assert expected == (-1000) & 0xFFFFFFFF
            assert exits == [io(OUT, 1, 0x80, f"{expected & 0xFF:02x}"), HLT]
            assert vcpu.get_regs().rax == expected


@needs_kvm
def test_a_kick_that_fires_between_runs_is_not_lost_and_not_fatal():
    with KvmVcpu.from_guest(IN_OUT, timeout=0.2) as vcpu:
        assert vcpu.run() == io(IN, 1, 0x60)
        time.sleep(0.35)  # the watchdog fires while the VMM "thinks"
        vcpu.complete(b"\xab")
        assert vcpu.run() == io(OUT, 1, 0x61, "ab")  # the IN was completed all the same
    with KvmVcpu.from_guest(SPIN, timeout=0.2) as vcpu, pytest.raises(RunTimeout):
        vcpu.run()  # and the next deadline still works


@needs_kvm
def test_run_timeout_off_the_main_thread():
    result: dict[str, object] = {}

    def work() -> None:
        try:
            with KvmVcpu.from_guest(SPIN, timeout=0.2) as vcpu:
                vcpu.run()
        except BaseException as e:  # noqa: B036 - hand it to the main thread
            result["error"] = e

    th = threading.Thread(target=work)
    th.start()
    th.join(10)
    assert not th.is_alive(), "KVM_RUN on a thread did not come back"
    assert isinstance(result.get("error"), RunTimeout), result


@needs_kvm
def test_other_signals_still_interrupt_kvm_run():
    """Ctrl-C in a notebook must stop a guest: a Python signal handler runs."""

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with KvmVcpu.from_guest(SPIN, timeout=10) as vcpu:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            t = time.monotonic()
            with pytest.raises(Interrupted):
                vcpu.run()
            assert time.monotonic() - t < 5
            vcpu.set_regs(Regs(rip=0x1002, rsp=0x1000))
            assert vcpu.run() == HLT
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- decoding exits KVM did not give us here ---------------------------------------------

@needs_kvm
def test_unknown_exit_number_is_an_error_that_names_it():
    with KvmVcpu.from_guest(HELLO) as vcpu:
        with pytest.raises(UnknownExitReason, match="exit_reason 99 at RIP 0x1000"):
            vcpu._decode_other(99)
        assert vcpu._decode_other(ExitReason.IRQ_WINDOW_OPEN) == Exit(ExitReason.IRQ_WINDOW_OPEN)


@needs_kvm
def test_internal_error_carries_suberror_and_data():
    with KvmVcpu.from_guest(HELLO) as vcpu:
        run = vcpu._run
        run[32:48] = (1).to_bytes(4, "little") + (1).to_bytes(4, "little") + (0xBEEF).to_bytes(
            8, "little")
        e = vcpu._decode_other(ExitReason.INTERNAL_ERROR)
        assert e == Exit(ExitReason.INTERNAL_ERROR, detail="suberror 1 (EMULATION), data [0xbeef]")
        run[32:40] = (0x1234).to_bytes(8, "little")
        assert vcpu._decode_other(ExitReason.UNKNOWN).detail == "hardware_exit_reason 0x1234"


# --- misuse gives typed errors ------------------------------------------------------------

@needs_kvm
def test_completion_misuse_is_reported():
    with KvmVcpu.from_guest(IN_OUT) as vcpu:
        with pytest.raises(VbookError, match="no IN or MMIO read is waiting"):
            vcpu.complete(b"\x00")
        assert vcpu.run().needs_data
        with pytest.raises(VbookError, match="IN of the last exit is waiting for data"):
            vcpu.run()
        with pytest.raises(VbookError, match="needs 1 bytes, got 2"):
            vcpu.complete(b"\x00\x00")
        with pytest.raises(MemoryAccessError):
            vcpu.read_memory(0xFFFF, 2)


def test_guest_that_does_not_fit_is_rejected():
    big = Guest("big", 16, bytes(0x10000), "", mem_size=0x10000)
    with pytest.raises(GuestError, match="does not fit"):
        KvmVcpu.from_guest(big)
    odd = Guest("odd", 16, b"\xf4", "", mem_size=0x10001)
    with pytest.raises(GuestError, match="multiple of the 4096-byte page"):
        KvmVcpu.from_guest(odd)


# --- nothing left behind ------------------------------------------------------------------

@needs_kvm
def test_close_releases_every_fd_mapping_timer_and_signal_mask():
    blocked_before = KICK_SIGNAL in signal.pthread_sigmask(signal.SIG_BLOCK, ())
    fds, maps = open_fds(), len(kvm_mappings())
    vcpu = KvmVcpu.from_guest(SPIN, timeout=0.2)
    assert open_fds() == fds + 4  # kvm, vm, vcpu, and the dup of it mmap.mmap keeps
    with pytest.raises(RunTimeout):
        vcpu.run()
    assert kvm_mod._KICKERS
    vcpu.close()
    vcpu.close()  # idempotent
    assert open_fds() == fds
    assert len(kvm_mappings()) == maps
    assert not kvm_mod._KICKERS  # the POSIX timer is deleted
    assert (KICK_SIGNAL in signal.pthread_sigmask(signal.SIG_BLOCK, ())) == blocked_before
    assert repr(vcpu) == "KvmVcpu('spin', timeout=0.2 s, closed)"
    with pytest.raises(VbookError, match="closed"):
        vcpu.run()


@needs_kvm
def test_many_vcpus_leak_nothing():
    fds = open_fds()
    for _ in range(20):
        with KvmVcpu.from_guest(HELLO) as vcpu:
            run_all(vcpu)
    assert open_fds() == fds and not kvm_mod._KICKERS


def test_vbook_kvm_dev_names_the_device(monkeypatch, tmp_path):
    missing = tmp_path / "no-kvm"
    monkeypatch.setenv("VBOOK_KVM_DEV", str(missing))
    assert kvm_mod.kvm_dev() == str(missing)
    with pytest.raises(BackendUnavailable, match=f"{missing} does not exist"):
        KvmVcpu.check_available()
    monkeypatch.delenv("VBOOK_KVM_DEV")
    assert kvm_mod.kvm_dev() == "/dev/kvm"


# --- KVM_RUN's call: fcntl.ioctl leaves EINTR to us here (the module docstring) -----------

class _Retried(Exception):
    """Raised by a SIGALRM handler: fcntl.ioctl went on retrying an interrupted KVM_RUN."""


@needs_kvm
@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal.signal needs the main thread")
def test_fcntl_ioctl_does_not_retry_an_interrupted_kvm_run():
    """With ``immediate_exit`` = 1 (kvm_run byte 1) KVM_RUN returns -EINTR at once.
    Python up to 3.13 raises it (PEP 475 never reached ioctl), so vbook calls
    fcntl.ioctl; from 3.14 fcntl.ioctl retries (gh-132768) until a signal handler
    raises, so vbook must go through ctypes there. A SIGALRM handler bounds the
    probe either way."""

    def handler(signum, frame):
        raise _Retried

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with KvmVcpu.from_guest(HELLO) as vcpu:
            vcpu._run[1] = 1  # immediate_exit
            for args in ((Ioctl.RUN,), (Ioctl.RUN, 0)):
                signal.setitimer(signal.ITIMER_REAL, 0.5)
                try:
                    fcntl.ioctl(vcpu._vcpu, *args)
                except _Retried:
                    outcome = "retried"
                except OSError as e:
                    outcome = errno.errorcode.get(e.errno or 0, str(e.errno))
                else:
                    outcome = "returned"
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                if kvm_mod.IOCTL_RETRIES_EINTR:
                    assert outcome in ("retried", "EINTR")
                else:
                    assert outcome == "EINTR", args
            vcpu._run[1] = 0
            assert run_all(vcpu) == [io(OUT, 1, 0x3F8, "41"), io(OUT, 1, 0x3F8, "42"), HLT]
    finally:
        signal.signal(signal.SIGALRM, old)
    # and the module picked its KVM_RUN call by that fact
    expected = kvm_mod._kvm_run_ctypes if kvm_mod.IOCTL_RETRIES_EINTR else fcntl.ioctl
    assert kvm_mod._kvm_run_ioctl is expected


def test_ioctl_choice_follows_the_python_version():
    import sys

    retries = sys.implementation.name != "cpython" or sys.version_info >= (3, 14)
    assert kvm_mod.IOCTL_RETRIES_EINTR is retries


# --- the exit cache: equal exits, one object, right counts ------------------------------

REPEATS = guest("B041 E680 E680 B042 E680 E460 E460 E680 F4", """\
mov al, 'A'
out 0x80, al
out 0x80, al       ; the same exit again
mov al, 'B'
out 0x80, al       ; same port, other data
in al, 0x60
in al, 0x60        ; the same IN again
out 0x80, al       ; what the second IN read
hlt""", "repeats")

MMIO_REPEATS = guest("B80010 8ED8 C60610005A C60610005A A04000 A04000 F4", """\
mov ax, 0x1000     ; DS base 0x10000: just past the 64 KiB RAM slot
mov ds, ax
mov byte [0x10], 0x5a
mov byte [0x10], 0x5a
mov al, [0x40]
mov al, [0x40]
hlt""", "mmio_repeats")

COUNT_UP = guest("31C0 E680 FEC0 3C0A 75F8 F4", """\
xor ax, ax
l: out 0x80, al    ; 0, 1, ... 9
inc al
cmp al, 10
jne l
hlt""", "count_up")


@needs_kvm
def test_repeated_exits_are_equal_and_shared():
    with KvmVcpu.from_guest(REPEATS) as vcpu:
        exits = run_all(vcpu, [b"\x11", b"\x22"])
        assert exits == [io(OUT, 1, 0x80, "41"), io(OUT, 1, 0x80, "41"), io(OUT, 1, 0x80, "42"),
                         io(IN, 1, 0x60), io(IN, 1, 0x60), io(OUT, 1, 0x80, "22"), HLT]
        assert exits[0] is exits[1] and exits[3] is exits[4]  # decoded once
        assert exits[0] is not exits[2]
        assert vcpu.stats.exits == {"IO": 6, "HLT": 1} and vcpu.stats.runs == 7
        assert repr(vcpu) == "KvmVcpu('repeats', timeout=1 s, 7 runs)"
    with KvmVcpu.from_guest(REPEATS) as fresh:  # another vCPU: equal, not the same objects
        again = run_all(fresh, [b"\x11", b"\x22"])
        assert again == exits and again[0] is not exits[0]


@needs_kvm
def test_repeated_mmio_exits_keep_read_completion():
    with KvmVcpu.from_guest(MMIO_REPEATS) as vcpu:
        e1 = vcpu.run()
        assert e1 == mmio(0x10010, 1, "5a") and not e1.needs_data
        assert vcpu.run() is e1
        r1 = vcpu.run()
        assert r1 == mmio(0x10040, 1) and r1.needs_data
        with pytest.raises(VbookError, match="MMIO read of the last exit is waiting"):
            vcpu.run()
        vcpu.complete(b"\x77")
        r2 = vcpu.run()  # (kvm_run.mmio.data now holds 77: equal, maybe not the same object)
        assert r2 == r1 and r2.needs_data
        with pytest.raises(VbookError, match="waiting for data"):
            vcpu.run()
        vcpu.complete(b"\x88")
        assert vcpu.run() == HLT
        assert vcpu.get_regs().rax & 0xFF == 0x88
        assert vcpu.stats.exits == {"MMIO": 4, "HLT": 1}


@needs_kvm
def test_a_full_exit_cache_starts_again_and_stays_right(monkeypatch):
    monkeypatch.setattr(kvm_mod, "_EXIT_CACHE_SIZE", 3)
    with KvmVcpu.from_guest(COUNT_UP) as vcpu:
        exits = run_all(vcpu)
        assert exits == [io(OUT, 1, 0x80, f"{i:02x}") for i in range(10)] + [HLT]
        assert vcpu.stats.exits == {"IO": 10, "HLT": 1}


@needs_kvm
def test_hypercall_completion_needs_the_hypercall_exit_to_be_the_last():
    """complete(8 bytes) after a HYPERCALL exit writes kvm_run.hypercall.ret, once."""
    with KvmVcpu.from_guest(HELLO) as vcpu:
        run = vcpu._run
        run[8:12] = int(ExitReason.HYPERCALL).to_bytes(4, "little")  # as KVM would leave it
        run[32:40] = (12).to_bytes(8, "little")  # nr: KVM_HC_MAP_GPA_RANGE
        e = vcpu._decode_other(ExitReason.HYPERCALL)
        assert e.hypercall is not None and e.hypercall.nr == 12
        vcpu.complete((5).to_bytes(8, "little"))
        assert run[88:96] == (5).to_bytes(8, "little")
        with pytest.raises(VbookError, match="no IN or MMIO read is waiting"):
            vcpu.complete(bytes(8))
        vcpu._decode_other(ExitReason.HYPERCALL)
        run[8:12] = int(ExitReason.IO).to_bytes(4, "little")  # a later exit replaced it
        with pytest.raises(VbookError, match="no IN or MMIO read is waiting"):
            vcpu.complete(bytes(8))


# --- the time limit with a lazy clock: never early, not much late -----------------------

@needs_kvm
def test_misbehaving_spin_guest_times_out_not_before_its_timeout():
    from vbook.guests import MISBEHAVING

    with KvmVcpu.from_guest(MISBEHAVING["spin"], timeout=0.2) as vcpu:
        for _ in range(2):
            t = time.monotonic()
            with pytest.raises(RunTimeout) as ei:
                vcpu.run()
            took = time.monotonic() - t
            assert not isinstance(ei.value, HypercallNotCompleted)
            assert took >= 0.2  # never early
            assert took < 0.2 * (1 + 1 / kvm_mod.TICKS) + 1.0  # not a hang (generous: CI)
        assert vcpu.stats.exits == {"TIMEOUT": 2}


@needs_kvm
def test_the_limit_is_per_run_not_per_loop():
    """Many short runs that add up to far more than the timeout never time out."""
    n = 10_000
    loop = guest("66B9" + n.to_bytes(4, "little").hex() + "E680 6649 75FA F4",
                 f"mov ecx, {n}\nl: out 0x80, al\ndec ecx\njnz l\nhlt", "loop")
    with KvmVcpu.from_guest(loop, timeout=0.01) as vcpu:
        t = time.monotonic()
        exits = 0
        while vcpu.run() != HLT:
            exits += 1
        assert exits == n
        assert time.monotonic() - t > vcpu.timeout  # else this would test nothing


@needs_kvm
def test_hypercall_guest_is_reported_on_a_host_that_does_not_finish_vmcall():
    from vbook.guests import get

    pvm = os.path.exists("/sys/module/kvm_pvm")
    with KvmVcpu.from_guest(get("hypercall"), timeout=0.2) as vcpu:
        try:
            exits = run_all(vcpu)
        except HypercallNotCompleted as e:
            assert str(e).startswith("this host did not complete the hypercall at RIP")
            assert "VMCALL" in str(e) and "0.2 s" in str(e)
            assert vcpu.read_memory(e.rip, 3) == b"\x0f\x01\xc1"
            assert vcpu.stats.exits.get("TIMEOUT") == 1
        else:
            assert not pvm, "a PVM host was expected not to finish the VMCALL"
            assert exits[-1] == HLT


@needs_kvm
def test_vcpus_with_different_timeouts_share_a_thread():
    with KvmVcpu.from_guest(HELLO, timeout=30) as slow, \
            KvmVcpu.from_guest(SPIN, timeout=0.2) as quick:
        assert slow.run() == io(OUT, 1, 0x3F8, "41")
        t = time.monotonic()
        with pytest.raises(RunTimeout):
            quick.run()  # kicked at its own pace, not the 30 s vCPU's
        assert 0.2 <= time.monotonic() - t < 5
        assert run_all(slow) == [io(OUT, 1, 0x3F8, "42"), HLT]
    assert not kvm_mod._KICKERS
