"""The exit loop against a scripted vCPU: what crosses the boundary, and in what order."""

import pytest
from _scripted import install_scripted

import vbook.runner as runner
from vbook.backends.base import Exit, IoExit, MmioExit
from vbook.bus import COM1, SimpleBus
from vbook.errors import BudgetExhausted
from vbook.guests.base import Guest
from vbook.models.kvm_api import ExitReason, IoDirection
from vbook.trace import Trace

OUT_H = Exit(ExitReason.IO, io=IoExit(IoDirection.OUT, 1, COM1, 1, b"H"))
IN_60 = Exit(ExitReason.IO, io=IoExit(IoDirection.IN, 2, 0x60, 1))
MMIO_W = Exit(ExitReason.MMIO, mmio=MmioExit(0xD0000, 4, True, (0x1234).to_bytes(4, "little")))
MMIO_R = Exit(ExitReason.MMIO, mmio=MmioExit(0xD0000, 4, False))
HLT = Exit(ExitReason.HLT)


@pytest.fixture
def scripted(monkeypatch):
    return install_scripted(monkeypatch, runner)


def guest(script):
    return Guest("t", 16, b"\xf4", "hlt", inputs={"script": script, 0x60: (0xBEEF,)})


def test_devices_answer_and_the_loop_stops_at_hlt(scripted):
    g = guest([OUT_H, IN_60, MMIO_W, MMIO_R, HLT])
    bus = SimpleBus({0x60: [0xBEEF]})
    r = runner.run_guest(g, bus=bus)
    vcpu = scripted[0]
    assert r.end == "hlt" and r.console == "H" and vcpu.closed
    assert vcpu.completed == [b"\xef\xbe", (0x1234).to_bytes(4, "little")]
    assert [e.reason.name for e in r.exits] == ["IO", "IO", "MMIO", "MMIO", "HLT"]
    kinds = [(e.actor, e.kind) for e in r.trace]
    assert kinds[:6] == [("qemu", "ioctl"), ("kvm", "entry"), ("guest", "run"), ("kvm", "exit"),
                         ("device", "io"), ("qemu", "ioctl")]
    assert kinds[-1] == ("qemu", "stop")
    assert Trace.from_json(r.trace.to_json()) == r.trace
    assert r.to_dict()["exits"][0] == {"reason": "IO", "direction": "out", "size": 1,
                                       "port": COM1, "count": 1, "data": "48"}


def test_shutdown_and_unknown_exits_end_the_run_by_name(scripted):
    assert runner.run_guest(guest([OUT_H, Exit(ExitReason.SHUTDOWN, detail="triple fault")]),
                            bus=SimpleBus()).end == "shutdown"
    r = runner.run_guest(guest([Exit(ExitReason.INTERNAL_ERROR, detail="emulation")]),
                         bus=SimpleBus())
    assert r.end == "internal_error" and str(r.exits[0]) == "INTERNAL_ERROR (emulation)"


def test_exit_budget(scripted):
    with pytest.raises(BudgetExhausted, match="3 exits"):
        runner.run_guest(guest([OUT_H] * 10), bus=SimpleBus(), max_exits=3)
    assert scripted[0].closed


def test_string_io_out_is_split_per_access():
    bus = SimpleBus()
    runner.handle(Exit(ExitReason.IO, io=IoExit(IoDirection.OUT, 1, COM1, 3, b"abc")), bus)
    assert bus.console == "abc"
    reply = runner.handle(Exit(ExitReason.IO, io=IoExit(IoDirection.IN, 1, 0x61, 2)), bus)
    assert reply == b"\xff\xff"  # floating bus: all ones


@pytest.mark.parametrize("pio_rip, exit_rip", [("vmx", 0x100B), ("pvm", 0x100C)])
def test_trace_rips_follow_where_the_backend_leaves_rip_at_an_out(pio_rip, exit_rip):
    # hello's OUT is at 0x100b: Linux 6.1/VMX leaves RIP on it (the next KVM_RUN
    # skips it), a PVM host past it; the loop records what get_regs() says
    pytest.importorskip("unicorn", reason="the unicorn package is not installed")
    from vbook.guests import ALL

    r = runner.run_guest(ALL["hello"], "unicorn", pio_rip=pio_rip)
    assert r.console == "Hello, KVM!\n" and r.end == "hlt"
    runs = [(e["rip"], e["exit_rip"]) for e in r.trace if (e.actor, e.kind) == ("guest", "run")]
    assert runs[0] == (0x1000, exit_rip)
    assert runs[1:-1] == [(exit_rip, exit_rip)] * 11
    assert runs[-1] == (exit_rip, 0x100F)  # past the HLT
