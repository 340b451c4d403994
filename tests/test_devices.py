"""Device models and QEMU's memory API: exact register behaviour, dispatch, unassigned space.

The 16550's offsets and bits are pinned to Linux's <linux/serial_reg.h> by a
C oracle (skipped with the reason when gcc or the header is missing). The
behaviour follows QEMU 9.2.4 hw/char/serial.c, hw/misc/debugexit.c,
hw/misc/pc-testdev.c, system/memory.c, system/physmem.c, system/ioport.c;
``test_*_source`` tests read that tree where it is on the machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from _oracle import need_c, printf_lines, program, run_c
from hypothesis import given
from hypothesis import strategies as st

from vbook.devices import debug_exit, pc_testdev, serial16550
from vbook.devices.machine import Machine
from vbook.devices.serial16550 import Fcr, Ier, Iir, Lcr, Lsr, Mcr, Msr, Reg, SerialState
from vbook.errors import VbookError
from vbook.models import qemu_memory as qm
from vbook.models.qemu_memory import MemTxResult, address_space_rw
from vbook.models.runstate import Runstate, ShutdownCause
from vbook.trace import TraceRecorder

COM1 = 0x3F8


def rd(s: SerialState, reg: int) -> int:
    return serial16550.serial_ioport_read(s, reg, 1)


def wr(s: SerialState, reg: int, v: int) -> None:
    serial16550.serial_ioport_write(s, reg, v, 1)


# --- the 16550 -------------------------------------------------------------------------------

def test_serial_reset_values_are_qemus():
    s = SerialState()
    assert (s.lcr, s.lsr, s.mcr, s.msr, s.ier, s.iir, s.divider, s.scr) == (
        0, 0x60, 0x08, 0xB0, 0, 0x01, 12, 0)
    assert s.params == (9600.0, "N", 5, 1)  # LCR 0: 5 data bits (QEMU: (lcr & 3) + 5)
    assert not s.irq and s.tx == b""


def test_a_polling_guest_always_sees_thre_and_temt():
    s = SerialState()
    for b in b"hi\n":
        assert rd(s, Reg.LSR) & (Lsr.THRE | Lsr.TEMT) == 0x60
        wr(s, Reg.TX, b)
        assert s.lsr == 0x60  # serial_xmit emptied the transmitter at once
    assert s.tx == b"hi\n" and s.console == "hi\n" and s.tsr == ord("\n")


def test_dlab_turns_offsets_0_and_1_into_the_divisor_latch():
    s = SerialState()
    wr(s, Reg.LCR, Lcr.DLAB)
    wr(s, Reg.DLL, 0x01)
    wr(s, Reg.DLM, 0x00)
    assert s.divider == 1 and s.tx == b"" and s.ier == 0  # nothing transmitted, IER untouched
    assert (rd(s, Reg.DLL), rd(s, Reg.DLM)) == (1, 0)
    wr(s, Reg.LCR, Lcr.WLEN8)
    assert s.params == (115200.0, "N", 8, 1)
    wr(s, Reg.TX, ord("x"))
    assert s.tx == b"x"
    wr(s, Reg.LCR, Lcr.DLAB)
    wr(s, Reg.DLM, 0x02)
    assert s.divider == 0x201 and rd(s, Reg.DLM) == 2
    label = s.take_note()["label"]
    assert label == "serial_ioport_read DLM = 0x02"


def test_zero_divisor_gives_about_3500_baud_like_qemu():
    s = SerialState()
    wr(s, Reg.LCR, Lcr.DLAB)
    wr(s, Reg.DLL, 0)
    assert s.params[0] == 3500.0


def test_thre_interrupt_iir_and_irq_line():
    s = SerialState()
    wr(s, Reg.IER, Ier.THRI)  # THRE is set: the THR-empty interrupt is pending at once
    assert s.thr_ipending == 1 and s.iir == Iir.THRI and s.irq
    assert rd(s, Reg.IIR) == Iir.THRI  # reading IIR clears a THRI interrupt
    assert s.iir == Iir.NO_INT and not s.irq
    wr(s, Reg.TX, ord("a"))  # after transmitting, THR is empty again: pending again
    assert s.iir == Iir.THRI and s.irq
    wr(s, Reg.IER, 0)
    assert s.iir == Iir.NO_INT and not s.irq


def test_fifo_enable_sets_iir_bits_and_trigger_level():
    s = SerialState()
    wr(s, Reg.FCR, Fcr.FE | Fcr.ITL_3)
    assert s.fcr == 0x81 and s.iir & 0xC0 == 0xC0 and s.recv_fifo_itl == 8
    wr(s, Reg.TX, ord("f"))
    assert s.tx == b"f" and s.lsr == 0x60 and not s.xmit_fifo
    wr(s, Reg.FCR, 0)
    assert s.iir & 0xC0 == 0


def test_loopback_sends_the_byte_back_in():
    s = SerialState()
    wr(s, Reg.MCR, Mcr.LOOP | Mcr.OUT2 | Mcr.RTS | Mcr.DTR)
    wr(s, Reg.TX, 0x5A)
    assert s.tx == b"" and s.lsr & Lsr.DR
    assert rd(s, Reg.RX) == 0x5A and not s.lsr & Lsr.DR
    # MSR in loopback: OUT2/OUT1 -> DCD/RI, RTS -> CTS, DTR -> DSR
    assert rd(s, Reg.MSR) == Msr.DCD | Msr.CTS | Msr.DSR


def test_receive_overrun_and_lsr_read_clears_it():
    s = SerialState()
    s.receive(b"ab")
    assert s.lsr & Lsr.OE and s.rbr == ord("b")
    assert rd(s, Reg.LSR) & Lsr.OE
    assert not s.lsr & Lsr.OE  # cleared by the read
    assert rd(s, Reg.RX) == ord("b")


def test_scratch_and_read_only_registers():
    s = SerialState()
    wr(s, Reg.SCR, 0xA5)
    assert rd(s, Reg.SCR) == 0xA5
    wr(s, Reg.LSR, 0)
    assert s.lsr == 0x60
    assert "read-only, ignored" in s.take_note()["label"]


@pytest.mark.parametrize(("addr", "is_write", "dlab", "name"), [
    (0, True, False, "THR"), (0, False, False, "RBR"), (0, True, True, "DLL"), (1, False, True, "DLM"),
    (1, True, False, "IER"), (2, False, False, "IIR"), (2, True, False, "FCR"), (5, False, False, "LSR"),
])
def test_register_names_depend_on_direction_and_dlab(addr, is_write, dlab, name):
    assert serial16550.reg_name(addr, is_write, dlab) == name


@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 255), st.booleans()), max_size=40))
def test_any_register_sequence_keeps_the_uart_consistent(ops):
    s = SerialState()
    for reg, val, is_write in ops:
        if is_write:
            wr(s, reg, val)
        else:
            assert 0 <= rd(s, reg) <= 0xFF
        assert 0 <= s.lsr <= 0xFF and 0 <= s.iir <= 0xFF and 0 <= s.divider <= 0xFFFF
        assert s.lsr & Lsr.THRE and s.lsr & Lsr.TEMT  # the backend takes every byte at once
        assert len(s.recv_fifo) <= serial16550.UART_FIFO_LENGTH


# --- isa-debug-exit and pc-testdev -------------------------------------------------------------

@pytest.mark.parametrize(("val", "code"), [(0, 1), (1, 3), (42, 85), (0x7F, 255), (0x80, 257)])
def test_debug_exit_status(val, code):
    rs = Runstate()
    dev = debug_exit.ISADebugExitState(runstate=rs)
    debug_exit.debug_exit_write(dev, 0, val, 1)
    assert (rs.shutdown_requested, rs.shutdown_exit_code) == (ShutdownCause.GUEST_SHUTDOWN, code)
    assert debug_exit.exit_code(val) == code
    assert debug_exit.debug_exit_read(dev, 0, 1) == 0
    assert (debug_exit.IOBASE, debug_exit.IOSIZE) == (0x501, 2)


def test_testdev_ioport_latch_keeps_bytes_by_offset():
    t = pc_testdev.PCTestdev()
    pc_testdev.test_ioport_write(t, 0, 0x11223344, 4)
    pc_testdev.test_ioport_write(t, 1, 0xAB, 1)
    assert t.ioport_data == 0x1122AB44
    assert pc_testdev.test_ioport_read(t, 2, 2) == 0x1122
    assert pc_testdev.test_ioport_read(t, 1, 1) == 0xAB


def test_testdev_iomem_is_a_buffer():
    t = pc_testdev.PCTestdev()
    pc_testdev.test_iomem_write(t, 0x10, 0xDEADBEEF, 4)
    assert pc_testdev.test_iomem_read(t, 0x10, 4) == 0xDEADBEEF
    assert pc_testdev.test_iomem_read(t, 0x12, 2) == 0xDEAD
    assert (pc_testdev.IOMEM, pc_testdev.IOMEM_LEN) == (0xFF000000, 0x10000)


# --- the memory API ------------------------------------------------------------------------------

def machine():
    rec = TraceRecorder()
    return Machine.with_trace(rec), rec


def io(m, port, data=None, size=1):
    buf = bytearray(data) if data is not None else bytearray(size)
    r = address_space_rw(m.address_space_io, port, buf, data is not None)
    return bytes(buf), r


def mem(m, addr, data=None, size=4):
    buf = bytearray(data) if data is not None else bytearray(size)
    r = address_space_rw(m.address_space_memory, addr, buf, data is not None)
    return bytes(buf), r


def test_unassigned_port_reads_all_ones_and_drops_writes():
    m, rec = machine()
    assert io(m, 0x2F8, size=1) == (b"\xff", MemTxResult.OK)
    assert io(m, 0x61, size=2) == (b"\xff\xff", MemTxResult.OK)  # odd port: two 1-byte reads
    assert io(m, 0x70, size=4) == (b"\xff" * 4, MemTxResult.OK)
    assert io(m, 0x80, b"\x01") == (b"\x01", MemTxResult.OK)
    calls = [e["fn"] for e in rec.events if e.kind == "io"]
    assert calls == ["unassigned_io_read"] * 4 + ["unassigned_io_write"]
    assert all(e.actor == "qemu" for e in rec.events if e.kind == "io")


def test_unassigned_memory_reads_zero_with_a_decode_error():
    m, rec = machine()
    assert mem(m, 0xFE000000, size=4) == (b"\0" * 4, MemTxResult.DECODE_ERROR)
    assert mem(m, 0xD0000, b"\x01\x02") == (b"\x01\x02", MemTxResult.DECODE_ERROR)
    ev = [e for e in rec.events if e.kind == "io"]
    assert [(e["fn"], e["why"], e["region"]) for e in ev] == [
        ("unassigned_mem_read", "rejected", "unassigned"),
        ("unassigned_mem_write", "rejected", "unassigned")]


def test_serial_region_splits_wide_accesses_into_bytes():
    m, rec = machine()
    io(m, COM1 + Reg.SCR - 1, b"\x03\x5a")  # 2 bytes at 0x3fe: MSR (ignored) then SCR
    assert m.serial.scr == 0x5A
    assert [(e["fn"], e["offset"], e["size"]) for e in rec.events if e.kind == "io"] == [
        ("serial_ioport_write", 6, 1), ("serial_ioport_write", 7, 1)]
    data, _ = io(m, COM1 + Reg.LSR, size=2)  # LSR, MSR
    assert data == bytes([0x60, 0xB0])


def test_testdev_regions_and_impl_splitting():
    m, rec = machine()
    io(m, 0xE0, (0xCAFEF00D).to_bytes(4, "little"))
    assert m.testdev.ioport_data == 0xCAFEF00D
    rec.events.clear()
    io(m, 0xE8, b"\x34\x12")  # impl.max_access_size = 1: two calls
    assert [(e["offset"], e["size"], e["value"]) for e in rec.events if e.kind == "io"] == [
        (0, 1, 0x34), (1, 1, 0x12)]
    assert m.testdev.ioport_data & 0xFFFF == 0x1234


def test_iomem_8_byte_access_is_two_4_byte_calls():
    m, rec = machine()
    mem(m, 0xFF000008, (0x1122334455667788).to_bytes(8, "little"))
    assert [(e["offset"], e["size"]) for e in rec.events if e.kind == "io"] == [(8, 4), (12, 4)]
    assert mem(m, 0xFF000008, size=8)[0] == (0x1122334455667788).to_bytes(8, "little")
    assert mem(m, 0xFF00000A, size=2)[0] == b"\x66\x55"


def test_a_wide_access_is_cut_where_the_region_ends():
    m, rec = machine()
    assert io(m, 0x501, b"\x01" * 8)[1] == MemTxResult.OK
    rs = m.runstate  # 2 bytes reach isa-debug-exit (0x0101), the other 6 the unassigned "io"
    assert rs.shutdown_exit_code == 0x203 and rs.shutdown_requested == ShutdownCause.GUEST_SHUTDOWN
    assert [(e["fn"], e["size"]) for e in rec.events if e.kind == "io"] == [
        ("debug_exit_write", 2), ("unassigned_io_write", 1), ("unassigned_io_write", 4),
        ("unassigned_io_write", 1)]
    mr, off, l = qm.flatview_translate(m.address_space_io, 0x501, 8)
    assert (mr.name, off, l) == ("isa-debug-exit", 0, 2)
    assert qm.memory_region_access_valid(mr, 0, 8, True) == "invalid size (min:1 max:4)"


def test_flatview_translate_cuts_at_region_and_gap_ends():
    m, _ = machine()
    as_io = m.address_space_io
    assert [(r.name, o, n) for r, o, n in [qm.flatview_translate(as_io, 0x3F0, 16)]] == [
        ("io", 0x3F0, 8)]
    r, o, n = qm.flatview_translate(as_io, 0x3FE, 8)
    assert (r.name, o, n) == ("serial", 6, 2)
    r, o, n = qm.flatview_translate(m.address_space_memory, 0xFF00FFFE, 4)
    assert (r.name, o, n) == ("pc-testdev-iomem", 0xFFFE, 2)


@pytest.mark.parametrize(("length", "addr", "max_size", "unaligned", "want"), [
    (8, 0, 0, False, 4), (3, 0, 0, False, 2), (4, 2, 0, False, 2), (4, 1, 4, True, 4),
    (8, 0, 8, False, 8), (1, 5, 0, False, 1),
])
def test_memory_access_size(length, addr, max_size, unaligned, want):
    ops = qm.MemoryRegionOps(valid=qm.AccessConstraints(max_access_size=max_size),
                             impl=qm.AccessConstraints(unaligned=unaligned))
    assert qm.memory_access_size(qm.MemoryRegion("r", 16, ops), length, addr) == want


def test_overlapping_and_oversized_regions_are_refused():
    root = qm.memory_region_init_io("io", 0x100, qm.unassigned_io_ops)
    qm.memory_region_add_subregion(root, 0x10, qm.memory_region_init_io("a", 8, qm.unassigned_io_ops))
    with pytest.raises(VbookError, match="'b' at 0x14 overlaps 'a' at 0x10-0x17"):
        qm.memory_region_add_subregion(root, 0x14, qm.memory_region_init_io("b", 8, qm.unassigned_io_ops))
    with pytest.raises(VbookError, match="does not fit"):
        qm.memory_region_add_subregion(root, 0xFC, qm.memory_region_init_io("c", 8, qm.unassigned_io_ops))
    with pytest.raises(VbookError, match="positive size"):
        qm.memory_region_init_io("d", 0, qm.unassigned_io_ops)


def test_bql_is_taken_around_callbacks_only():
    m, rec = machine()
    io(m, COM1, b"A")
    asrw, cb = [e for e in rec.events]
    assert (asrw["fn"], asrw["bql"]) == ("address_space_rw", False)
    assert (cb.actor, cb["fn"], cb["bql"], cb["tx"]) == ("device", "serial_ioport_write", True, "41")
    assert m.ctx.bql is False


def test_info_mtree():
    m, _ = machine()
    tree = m.info_mtree()
    assert "address-space: I/O" in tree and "address-space: memory" in tree
    assert "00000000000003f8-00000000000003ff (prio 0, i/o): serial  [isa-serial]" in tree
    assert "00000000ff000000-00000000ff00ffff (prio 0, i/o): pc-testdev-iomem" in tree
    assert repr(m) == ("Machine(serial at 0x3f8, isa-debug-exit at 0x501, "
                       "pc-testdev at 0xe0/0xff000000)")


# --- C oracle: <linux/serial_reg.h> ---------------------------------------------------------------

SERIAL_REG_H = "/usr/include/linux/serial_reg.h"

#: Python constant -> Linux macro (QEMU's FCR names differ from Linux's)
def _serial_expectations() -> dict[str, int]:
    exp = {f"UART_{name}": int(v) for name, v in Reg.__members__.items()}
    for cls, prefix in ((Ier, "IER"), (Lsr, "LSR"), (Mcr, "MCR"), (Msr, "MSR"), (Lcr, "LCR")):
        exp.update({f"UART_{prefix}_{m.name}": int(m) for m in cls})
    exp.update({f"UART_IIR_{m.name}": int(m) for m in Iir if m.name != "CTI"})
    exp["UART_IIR_RX_TIMEOUT"] = Iir.CTI
    exp.update({"UART_FCR_ENABLE_FIFO": Fcr.FE, "UART_FCR_CLEAR_RCVR": Fcr.RFR,
                "UART_FCR_CLEAR_XMIT": Fcr.XFR, "UART_FCR_DMA_SELECT": Fcr.DMS,
                "UART_FCR_R_TRIG_01": Fcr.ITL_2, "UART_FCR_R_TRIG_10": Fcr.ITL_3,
                "UART_FCR_R_TRIG_11": Fcr.ITL_4})
    return exp


@pytest.fixture(scope="module")
def serial_reg_values(tmp_path_factory):
    need_c(SERIAL_REG_H)
    exp = _serial_expectations()
    body = printf_lines({k: k for k in exp})
    return run_c(tmp_path_factory.mktemp("serial_oracle"), program(["linux/serial_reg.h"], body))


@pytest.mark.parametrize("macro", sorted(_serial_expectations()))
def test_serial_constants_match_linux_serial_reg_h(serial_reg_values, macro):
    assert _serial_expectations()[macro] == serial_reg_values[macro]


# --- QEMU 9.2.4 sources, where present --------------------------------------------------------------

QEMU = os.environ.get("VBOOK_QEMU_9_2_GIT", "/work/.mirror/zhouyuming+qemu-9.2.4/repo")


def qemu_source(path: str) -> str:
    if not Path(QEMU).exists():
        pytest.skip(f"no QEMU 9.2.4 tree at {QEMU} (set VBOOK_QEMU_9_2_GIT)")
    p = subprocess.run(["git", "--git-dir", QEMU, "show", f"HEAD:{path}"], capture_output=True,
                       text=True)
    if p.returncode != 0:
        pytest.skip(f"HEAD:{path} not readable in {QEMU}: {p.stderr.strip()[:200]}")
    return p.stdout


def test_serial_source():
    src = qemu_source("hw/char/serial.c")
    for name, value in (("UART_IIR_ID", serial16550.UART_IIR_ID), ("UART_IIR_FE", 0xC0),
                        ("UART_LSR_INT_ANY", serial16550.UART_LSR_INT_ANY),
                        ("UART_MSR_ANY_DELTA", serial16550.UART_MSR_ANY_DELTA),
                        ("UART_IIR_CTI", Iir.CTI), ("UART_FCR_FE", Fcr.FE)):
        assert f"#define {name}" in src and f"{value:#04X}".replace("0X", "0x") in src
    assert "s->lsr = UART_LSR_TEMT | UART_LSR_THRE;" in src
    assert "s->msr = UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS;" in src
    assert "s->divider = 0x0C;" in src and "s->mcr = UART_MCR_OUT2;" in src
    assert ".min_access_size = 1,\n        .max_access_size = 1," in src
    assert 'DEFINE_PROP_UINT32("baudbase", SerialState, baudbase, 115200)' in src
    assert "#define UART_FIFO_LENGTH    16" in qemu_source("include/hw/char/serial.h")
    isa = qemu_source("hw/char/serial-isa.c")
    assert "0x3f8, 0x2f8, 0x3e8, 0x2e8" in isa and '&serial_io_ops, s, "serial", 8);' in isa


def test_debug_exit_and_testdev_source():
    src = qemu_source("hw/misc/debugexit.c")
    assert "(val << 1) | 1);" in src and "SHUTDOWN_CAUSE_GUEST_SHUTDOWN" in src
    assert 'DEFINE_PROP_UINT32("iobase", ISADebugExitState, iobase, 0x501)' in src
    assert 'DEFINE_PROP_UINT32("iosize", ISADebugExitState, iosize, 0x02)' in src
    assert ".valid.min_access_size = 1,\n    .valid.max_access_size = 4," in src
    t = qemu_source("hw/misc/pc-testdev.c")
    assert "#define IOMEM_LEN    0x10000" in t
    for where in ("(io,  0xe0,       &dev->ioport)", "(io,  0xe8,       &dev->ioport_byte)",
                  "(mem, 0xff000000, &dev->iomem)"):
        assert "memory_region_add_subregion" + where in t


def test_memory_api_source():
    io_c = qemu_source("system/ioport.c")
    assert "static uint64_t unassigned_io_read(void *opaque, hwaddr addr, unsigned size)\n{\n" \
           "    return -1ULL;\n}" in io_c
    m = qemu_source("system/memory.c")
    assert "static uint64_t unassigned_mem_read(void *opaque, hwaddr addr,\n" in m
    assert "    return 0;\n}\n\nstatic void unassigned_mem_write" in m
    assert "static bool unassigned_mem_accepts(" in m and "    return false;\n}" in m
    assert "        access_size_max = 4;" in m  # access_with_adjusted_size's default
    p = qemu_source("system/physmem.c")
    assert '"io",\n                          65536);' in p
    assert 'address_space_init(&address_space_io, system_io, "I/O");' in p
    assert 'address_space_init(&address_space_memory, system_memory, "memory");' in p
    attrs = qemu_source("include/exec/memattrs.h")
    for name, v in (("MEMTX_ERROR", "(1U << 0)"), ("MEMTX_DECODE_ERROR", "(1U << 1)"),
                    ("MEMTX_ACCESS_ERROR", "(1U << 2)")):
        assert f"#define {name}" in attrs and v in attrs
    assert MemTxResult.DECODE_ERROR == 2
