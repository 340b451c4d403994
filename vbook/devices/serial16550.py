"""A 16550A UART, as QEMU emulates it: the serial port a guest prints on.

QEMU 9.2.4 hw/char/serial.c (``serial_ioport_write``, ``serial_ioport_read``,
``serial_xmit``, ``serial_update_irq``, ``serial_reset``) and
include/hw/char/serial.h (``SerialState``), behind the ISA port block
hw/char/serial-isa.c gives it: a region "serial" of 8 ports at 0x3f8 (COM1).
Register offsets and bits are Linux's include/uapi/linux/serial_reg.h names
(pinned by a C oracle test); QEMU's own names, where they differ, are noted.

A guest that prints does what Linux's early console does: set DLAB in LCR,
write the baud divisor into DLL/DLM (the same two ports as THR and IER while
DLAB is 1), clear DLAB with the frame format (8N1), then for each byte poll
LSR until THRE (transmit holding register empty) and write the byte to THR.
Every one of those port accesses is a ``KVM_EXIT_IO``. QEMU transmits a byte
the moment it is written (``serial_xmit`` hands it to the character
backend), so THRE and TEMT are set again before the guest can look: a
polling guest never waits.

What the model leaves out: the character backend is a byte string (``tx``;
it never refuses a byte, so ``tsr_retry`` stays 0), the receive side only
takes bytes through :meth:`SerialState.receive` (and loopback), there are no
timers (FIFO timeout, modem-status polling) and no interrupt controller — the
IRQ line's level is kept in ``irq`` for the reader, but nothing is wired to it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from vbook.models.qemu_memory import AccessConstraints, DeviceState, MemoryRegionOps

#: hw/char/serial-isa.c: ``isa_serial_io[]`` — the ISA serial ports' base ports
COM_PORTS = (0x3F8, 0x2F8, 0x3E8, 0x2E8)
#: include/hw/char/serial.h: ``UART_FIFO_LENGTH`` (16550A FIFO depth)
UART_FIFO_LENGTH = 16
#: hw/char/serial.c ``serial_properties``: "baudbase" default (the UART's clock / 16)
BAUDBASE = 115200


class Reg(IntEnum):
    """Register offsets from the base port — include/uapi/linux/serial_reg.h (Linux 6.1).

    Several share an offset: RX (read) / TX (write) at 0, IIR (read) / FCR
    (write) at 2, and while LCR.DLAB is set, DLL at 0 and DLM at 1.
    """

    RX = 0    # In:  receive buffer (RBR; QEMU s->rbr)
    TX = 0    # Out: transmit holding register (THR; QEMU s->thr)
    IER = 1   # interrupt enable
    IIR = 2   # In:  interrupt identification
    FCR = 2   # Out: FIFO control
    LCR = 3   # line control
    MCR = 4   # modem control
    LSR = 5   # In:  line status
    MSR = 6   # In:  modem status
    SCR = 7   # scratch
    DLL = 0   # divisor latch low (when LCR.DLAB)
    DLM = 1   # divisor latch high (when LCR.DLAB)


class Ier(IntEnum):
    """``UART_IER_*`` — serial_reg.h (Linux 6.1) = hw/char/serial.c (QEMU 9.2.4)."""

    RDI = 0x01    # receiver data
    THRI = 0x02   # transmitter holding register empty
    RLSI = 0x04   # receiver line status
    MSI = 0x08    # modem status


class Iir(IntEnum):
    """``UART_IIR_*`` interrupt IDs — serial_reg.h (Linux 6.1) = hw/char/serial.c (QEMU 9.2.4).

    ``CTI`` is QEMU's name for Linux's ``UART_IIR_RX_TIMEOUT``. QEMU masks the
    ID with ``UART_IIR_ID`` = 0x06; Linux's ``UART_IIR_ID`` is 0x0e.
    """

    MSI = 0x00     # modem status
    NO_INT = 0x01  # no interrupt pending
    THRI = 0x02    # transmitter holding register empty
    RDI = 0x04     # receiver data
    RLSI = 0x06    # receiver line status
    CTI = 0x0C     # character timeout


#: hw/char/serial.c: ``UART_IIR_ID`` (QEMU's mask of the ID bits)
UART_IIR_ID = 0x06
#: hw/char/serial.c: ``UART_IIR_FE`` — IIR bits 7:6 when the FIFO is enabled
UART_IIR_FE = 0xC0


class Fcr(IntEnum):
    """``UART_FCR_*`` — hw/char/serial.c (QEMU 9.2.4) names; Linux 6.1 serial_reg.h in brackets.

    FE [ENABLE_FIFO], RFR [CLEAR_RCVR], XFR [CLEAR_XMIT], DMS [DMA_SELECT];
    ITL_* are the receive trigger levels 1/4/8/14 bytes [R_TRIG_00/01/10/11].
    """

    FE = 0x01
    RFR = 0x02
    XFR = 0x04
    DMS = 0x08
    ITL_2 = 0x40
    ITL_3 = 0x80
    ITL_4 = 0xC0


class Lcr(IntEnum):
    """``UART_LCR_*`` — serial_reg.h (Linux 6.1); QEMU names only DLAB and reads the rest as bits."""

    WLEN8 = 0x03   # word length 8 (bits 1:0 = data bits - 5)
    STOP = 0x04    # 2 stop bits
    PARITY = 0x08  # parity enable
    EPAR = 0x10    # even parity
    SBC = 0x40     # set break
    DLAB = 0x80    # divisor latch access


class Mcr(IntEnum):
    """``UART_MCR_*`` — serial_reg.h (Linux 6.1) = hw/char/serial.c (QEMU 9.2.4)."""

    DTR = 0x01
    RTS = 0x02
    OUT1 = 0x04
    OUT2 = 0x08
    LOOP = 0x10


class Lsr(IntEnum):
    """``UART_LSR_*`` — serial_reg.h (Linux 6.1) = hw/char/serial.c (QEMU 9.2.4)."""

    DR = 0x01     # receiver data ready
    OE = 0x02     # overrun error
    PE = 0x04     # parity error
    FE = 0x08     # framing error
    BI = 0x10     # break interrupt
    THRE = 0x20   # transmit holding register empty
    TEMT = 0x40   # transmitter empty


#: hw/char/serial.c: ``UART_LSR_INT_ANY`` — the LSR bits that raise a line-status interrupt
UART_LSR_INT_ANY = 0x1E


class Msr(IntEnum):
    """``UART_MSR_*`` — serial_reg.h (Linux 6.1) = hw/char/serial.c (QEMU 9.2.4)."""

    DCTS = 0x01
    DDSR = 0x02
    TERI = 0x04
    DDCD = 0x08
    CTS = 0x10
    DSR = 0x20
    RI = 0x40
    DCD = 0x80


#: hw/char/serial.c: ``UART_MSR_ANY_DELTA``
UART_MSR_ANY_DELTA = 0x0F

_READ_NAMES = ("RBR", "IER", "IIR", "LCR", "MCR", "LSR", "MSR", "SCR")
_WRITE_NAMES = ("THR", "IER", "FCR", "LCR", "MCR", "LSR", "MSR", "SCR")


def reg_name(addr: int, is_write: bool, dlab: bool) -> str:
    """The register a guest reaches at offset ``addr``: depends on direction and LCR.DLAB."""
    if dlab and addr in (0, 1):
        return ("DLL", "DLM")[addr]
    return (_WRITE_NAMES if is_write else _READ_NAMES)[addr & 7]


def _flags(value: int, flags: type[IntEnum]) -> str:
    names = [f.name for f in flags if value & f == f]
    return "|".join(names) if names else "0"


def _char(b: int) -> str:
    return repr(chr(b)) if 0x20 <= b < 0x7F else repr(bytes([b]))[1:]


@dataclass(eq=False)
class SerialState(DeviceState):
    """``struct SerialState`` (include/hw/char/serial.h) with its QEMU field names.

    ``tx`` is what the character backend received (the console); ``irq`` the
    level of the interrupt line ``serial_update_irq`` would drive.
    """

    type_name = "isa-serial"

    baudbase: int = BAUDBASE
    divider: int = 0
    rbr: int = 0
    thr: int = 0
    tsr: int = 0
    ier: int = 0
    iir: int = 0
    lcr: int = 0
    mcr: int = 0
    lsr: int = 0
    msr: int = 0
    scr: int = 0
    fcr: int = 0
    thr_ipending: int = 0
    timeout_ipending: int = 0
    recv_fifo_itl: int = 1
    tsr_retry: int = 0
    irq: bool = False
    recv_fifo: deque[int] = field(default_factory=deque)
    xmit_fifo: deque[int] = field(default_factory=deque)
    tx: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        serial_reset(self)

    def __repr__(self) -> str:
        return (f"SerialState(lcr={self.lcr:#04x}, lsr={self.lsr:#04x}, divider={self.divider}, "
                f"tx={bytes(self.tx)!r})")

    @property
    def console(self) -> str:
        """What the guest printed, as text (bytes that are not UTF-8 shown escaped)."""
        return self.tx.decode("utf-8", "backslashreplace")

    @property
    def params(self) -> tuple[float, str, int, int]:
        """``serial_update_parameters``: (speed in baud, parity 'N'/'O'/'E', data bits, stop bits)."""
        parity = ("E" if self.lcr & 0x10 else "O") if self.lcr & 0x08 else "N"
        stop_bits = 2 if self.lcr & 0x04 else 1
        data_bits = (self.lcr & 0x03) + 5
        speed = 3500.0 if self.divider == 0 else self.baudbase / self.divider  # QEMU: ~3500 at 0
        return speed, parity, data_bits, stop_bits

    def receive(self, data: bytes) -> None:
        """Bytes arriving from the character backend (``serial_receive1``)."""
        for b in data:
            serial_receive1(self, b)


def serial_reset(s: SerialState) -> None:
    """hw/char/serial.c ``serial_reset``: 9600 8N1 (divider 12), LSR = TEMT|THRE, MCR = OUT2.

    MSR is DCD|DSR|CTS: the reset value, since the model's backend, like
    QEMU's stdio or file backends, reports no modem lines of its own.
    """
    s.rbr = 0
    s.ier = 0
    s.iir = Iir.NO_INT
    s.lcr = 0
    s.lsr = Lsr.TEMT | Lsr.THRE
    s.msr = Msr.DCD | Msr.DSR | Msr.CTS
    s.divider = 0x0C
    s.mcr = Mcr.OUT2
    s.scr = 0
    s.tsr_retry = 0
    s.timeout_ipending = 0
    s.recv_fifo.clear()
    s.xmit_fifo.clear()
    s.thr_ipending = 0
    s.irq = False


def serial_update_irq(s: SerialState) -> None:
    """hw/char/serial.c: compute IIR from the pending causes, in priority order; drive the line."""
    tmp_iir = Iir.NO_INT
    if (s.ier & Ier.RLSI) and (s.lsr & UART_LSR_INT_ANY):
        tmp_iir = Iir.RLSI
    elif (s.ier & Ier.RDI) and s.timeout_ipending:
        tmp_iir = Iir.CTI
    elif (s.ier & Ier.RDI) and (s.lsr & Lsr.DR) and (
            not (s.fcr & Fcr.FE) or len(s.recv_fifo) >= s.recv_fifo_itl):
        tmp_iir = Iir.RDI
    elif (s.ier & Ier.THRI) and s.thr_ipending:
        tmp_iir = Iir.THRI
    elif (s.ier & Ier.MSI) and (s.msr & UART_MSR_ANY_DELTA):
        tmp_iir = Iir.MSI
    s.iir = tmp_iir | (s.iir & 0xF0)
    s.irq = tmp_iir != Iir.NO_INT  # qemu_irq_raise / qemu_irq_lower


def serial_receive1(s: SerialState, b: int) -> None:
    """hw/char/serial.c: one byte in from the backend (or looped back): RBR or the RX FIFO."""
    if s.fcr & Fcr.FE:
        if len(s.recv_fifo) < UART_FIFO_LENGTH:  # recv_fifo_put: overruns keep the FIFO
            s.recv_fifo.append(b)
        else:
            s.lsr |= Lsr.OE
        s.lsr |= Lsr.DR
    else:
        if s.lsr & Lsr.DR:
            s.lsr |= Lsr.OE
        s.rbr = b
        s.lsr |= Lsr.DR
    serial_update_irq(s)


def serial_xmit(s: SerialState) -> None:
    """hw/char/serial.c: move THR (or the TX FIFO) through TSR to the backend, at once.

    The backend takes every byte (``qemu_chr_fe_write`` never returns 0 here),
    so the loop ends with THRE and TEMT set: the transmitter is empty again.
    """
    while True:
        if s.fcr & Fcr.FE:
            s.tsr = s.xmit_fifo.popleft()
            if not s.xmit_fifo:
                s.lsr |= Lsr.THRE
        else:
            s.tsr = s.thr
            s.lsr |= Lsr.THRE
        if (s.lsr & Lsr.THRE) and not s.thr_ipending:
            s.thr_ipending = 1
            serial_update_irq(s)
        if s.mcr & Mcr.LOOP:
            serial_receive1(s, s.tsr)  # loopback: the byte comes back in
        else:
            s.tx.append(s.tsr)  # qemu_chr_fe_write
        s.tsr_retry = 0
        if s.lsr & Lsr.THRE:
            break
    s.lsr |= Lsr.TEMT


def serial_write_fcr(s: SerialState, val: int) -> None:
    """hw/char/serial.c: store FCR's sticky bits; FIFO on/off changes IIR[7:6] and the RX trigger."""
    s.fcr = val
    if val & Fcr.FE:
        s.iir |= UART_IIR_FE
        s.recv_fifo_itl = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}[val & 0xC0]
    else:
        s.iir &= ~UART_IIR_FE


def serial_ioport_write(s: SerialState, addr: int, val: int, size: int) -> None:
    """hw/char/serial.c: a guest write to register ``addr`` (0-7) of the UART."""
    assert size == 1 and addr < 8
    name = reg_name(addr, True, bool(s.lcr & Lcr.DLAB))
    label = f"serial_ioport_write {name} ← {val:#04x}"
    if addr in (0, 1) and s.lcr & Lcr.DLAB:
        shift = 8 * addr
        s.divider = (s.divider & ~(0xFF << shift)) | (val << shift)  # deposit32
        speed = s.params[0]
        s.note(label=f"{label}: divisor {s.divider} → {speed:g} baud", reg=name)
        return
    if addr == 0:  # THR
        s.thr = val
        if s.fcr & Fcr.FE:
            if len(s.xmit_fifo) >= UART_FIFO_LENGTH:  # xmit overruns overwrite data
                s.xmit_fifo.popleft()
            s.xmit_fifo.append(s.thr)
        s.thr_ipending = 0
        s.lsr &= ~Lsr.THRE
        s.lsr &= ~Lsr.TEMT
        serial_update_irq(s)
        if s.tsr_retry == 0:
            serial_xmit(s)
        if s.mcr & Mcr.LOOP:
            s.note(label=f"{label} {_char(val)}: looped back", reg=name)
        else:
            s.note(label=f"{label} {_char(val)}: transmitted", reg=name, tx=bytes([val]).hex())
    elif addr == 1:  # IER
        changed = (s.ier ^ val) & 0x0F
        s.ier = val & 0x0F
        if changed & Ier.THRI:
            s.thr_ipending = 1 if (s.ier & Ier.THRI) and (s.lsr & Lsr.THRE) else 0
        if changed:
            serial_update_irq(s)
        s.note(label=f"{label} ({_flags(s.ier, Ier)})", reg=name)
    elif addr == 2:  # FCR
        if (val ^ s.fcr) & Fcr.FE:  # FIFO enable changed: flush both
            val |= Fcr.XFR | Fcr.RFR
        if val & Fcr.RFR:
            s.lsr &= ~(Lsr.DR | Lsr.BI)
            s.timeout_ipending = 0
            s.recv_fifo.clear()
        if val & Fcr.XFR:
            s.lsr |= Lsr.THRE
            s.thr_ipending = 1
            s.xmit_fifo.clear()
        serial_write_fcr(s, val & 0xC9)
        serial_update_irq(s)
        s.note(label=f"{label} (FIFO {'on' if s.fcr & Fcr.FE else 'off'})", reg=name)
    elif addr == 3:  # LCR
        s.lcr = val
        speed, parity, data_bits, stop_bits = s.params
        what = "DLAB=1: ports 0/1 are now DLL/DLM" if val & Lcr.DLAB else (
            f"{data_bits}{parity}{stop_bits}, {speed:g} baud")
        s.note(label=f"{label} ({what})", reg=name)
    elif addr == 4:  # MCR
        s.mcr = val & 0x1F
        s.note(label=f"{label} ({_flags(s.mcr, Mcr)})", reg=name)
    elif addr == 7:  # SCR
        s.scr = val
        s.note(label=f"{label} (scratch)", reg=name)
    else:  # LSR, MSR: read-only, writes are ignored
        s.note(label=f"{label}: read-only, ignored", reg=name)


def serial_ioport_read(s: SerialState, addr: int, size: int) -> int:
    """hw/char/serial.c: a guest read of register ``addr`` (0-7) of the UART."""
    assert size == 1 and addr < 8
    name = reg_name(addr, False, bool(s.lcr & Lcr.DLAB))
    what = ""
    if addr in (0, 1) and s.lcr & Lcr.DLAB:
        ret = (s.divider >> (8 * addr)) & 0xFF  # extract16
    elif addr == 0:  # RBR
        if s.fcr & Fcr.FE:
            ret = s.recv_fifo.popleft() if s.recv_fifo else 0
            if not s.recv_fifo:
                s.lsr &= ~(Lsr.DR | Lsr.BI)
            s.timeout_ipending = 0
        else:
            ret = s.rbr
            s.lsr &= ~(Lsr.DR | Lsr.BI)
        serial_update_irq(s)
    elif addr == 1:
        ret = s.ier
    elif addr == 2:  # IIR
        ret = s.iir
        if (ret & UART_IIR_ID) == Iir.THRI:
            s.thr_ipending = 0
            serial_update_irq(s)
    elif addr == 3:
        ret = s.lcr
    elif addr == 4:
        ret = s.mcr
    elif addr == 5:  # LSR; reading clears break and overrun
        ret = s.lsr
        what = f" ({_flags(ret, Lsr)})"
        if s.lsr & (Lsr.BI | Lsr.OE):
            s.lsr &= ~(Lsr.BI | Lsr.OE)
            serial_update_irq(s)
    elif addr == 6:  # MSR
        if s.mcr & Mcr.LOOP:  # the modem outputs are wired to the inputs
            ret = (s.mcr & 0x0C) << 4
            ret |= (s.mcr & 0x02) << 3
            ret |= (s.mcr & 0x01) << 5
        else:
            ret = s.msr
            if s.msr & UART_MSR_ANY_DELTA:
                s.msr &= 0xF0
                serial_update_irq(s)
        what = f" ({_flags(ret, Msr)})"
    else:
        ret = s.scr
    s.note(label=f"serial_ioport_read {name} = {ret:#04x}{what}", reg=name)
    return ret


#: hw/char/serial.c ``serial_io_ops``: any size and alignment is valid; the callbacks
#: take one byte, so a 2- or 4-byte access becomes 1-byte calls at consecutive offsets
serial_io_ops = MemoryRegionOps(
    read=serial_ioport_read, write=serial_ioport_write,
    valid=AccessConstraints(unaligned=True),
    impl=AccessConstraints(min_access_size=1, max_access_size=1),
    file="hw/char/serial.c",
)

__all__ = ["BAUDBASE", "COM_PORTS", "UART_FIFO_LENGTH", "Fcr", "Ier", "Iir", "Lcr", "Lsr", "Mcr",
           "Msr", "Reg", "SerialState", "reg_name", "serial_io_ops", "serial_ioport_read",
           "serial_ioport_write", "serial_reset", "serial_update_irq", "serial_xmit"]
