"""The e1000 as QEMU 9.2.4 emulates it: registers, the TX and RX rings, bad input, a real guest.

Register semantics, descriptor rings and the net layer follow hw/net/e1000.c,
hw/net/e1000x_common.c and net/net.c; the ``*_source`` tests check the
constants against that tree where it is on the machine. The last tests run a
tiny real guest (GNU as listing + its bytes) on unicorn and, when present,
/dev/kvm: it finds the e1000 through 0xCF8/0xCFC, maps BAR0, sends one frame
and polls — the frame must reach the backend byte for byte.
"""

from __future__ import annotations

import json
import re
import struct

import pytest
from _sources import QEMU_9, function_body, git_show
from hypothesis import given, settings
from hypothesis import strategies as st

from vbook.backends import available
from vbook.devices import e1000 as e
from vbook.devices import net_client as net
from vbook.devices.e1000 import Icr, MacReg, Rctl, RxdStat, Tctl, TxdCmd
from vbook.devices.machine import Machine
from vbook.devices.net_client import MemoryBackend
from vbook.devices.pci import Command, Config, config_address
from vbook.guests.base import Guest
from vbook.guests.build import assemble, tools_missing
from vbook.memory import GuestMemory
from vbook.models import run_loop
from vbook.models.qemu_memory import address_space_rw
from vbook.trace import Trace, TraceRecorder

BAR0 = 0xFEBC0000          # where SeaBIOS puts the first e1000's registers on -M pc
TX_RING, RX_RING = 0x3000, 0x5000
MAC = bytes.fromhex("525400123456")
BCAST = b"\xff" * 6


class Nic:
    """A board with one e1000 and 64 KiB of RAM, its BAR0 mapped and bus mastering on."""

    def __init__(self, command: int = Command.MEMORY | Command.MASTER, ram: int = 0x10000):
        self.rec = TraceRecorder()
        self.backend = MemoryBackend()
        self.m = Machine(nics=[self.backend], ram=GuestMemory(ram, record=False))
        self.m.ctx.trace = self.rec
        self.s = self.m.e1000[0]
        self.cfg(Config.BASE_ADDRESS_0, BAR0)
        self.cfg(Config.COMMAND, command, 2)

    @property
    def ram(self) -> GuestMemory:
        return self.m.ram

    def cfg(self, reg: int, value: int, size: int = 4) -> None:
        address_space_rw(self.m.address_space_io, 0xCF8,
                         bytearray(config_address(0, 1, 0, reg).to_bytes(4, "little")), True)
        address_space_rw(self.m.address_space_io, 0xCFC + (reg & 3),
                         bytearray(value.to_bytes(size, "little")), True)

    def w(self, reg: MacReg | int, value: int, size: int = 4) -> None:
        off = reg.offset if isinstance(reg, MacReg) else reg
        address_space_rw(self.m.address_space_memory, BAR0 + off,
                         bytearray(value.to_bytes(size, "little")), True)

    def r(self, reg: MacReg | int, size: int = 4) -> int:
        off = reg.offset if isinstance(reg, MacReg) else reg
        buf = bytearray(size)
        address_space_rw(self.m.address_space_memory, BAR0 + off, buf, False)
        return int.from_bytes(buf, "little")

    # TX ------------------------------------------------------------------------------------
    def tx_ring(self, n: int = 8, base: int = TX_RING) -> None:
        self.w(MacReg.TDBAL, base)
        self.w(MacReg.TDBAH, 0)
        self.w(MacReg.TDLEN, n * 16)
        self.w(MacReg.TDH, 0)
        self.w(MacReg.TDT, 0)
        self.w(MacReg.TCTL, Tctl.EN | Tctl.PSP)

    def txd(self, i: int, buf: int, length: int, cmd: int = TxdCmd.EOP | TxdCmd.IFCS | TxdCmd.RS,
            upper: int = 0, base: int = TX_RING) -> None:
        self.ram.write(base + 16 * i, struct.pack("<QII", buf, length | cmd, upper))

    def tx_status(self, i: int, base: int = TX_RING) -> int:
        return self.ram.read_u32(base + 16 * i + 12)

    # RX ------------------------------------------------------------------------------------
    def rx_ring(self, n: int = 8, bufs: int = 0x8000, rctl: int = Rctl.EN | Rctl.BAM,
                rdt: int | None = None, bufsize: int = 2048) -> None:
        for i in range(n):
            self.ram.write(RX_RING + 16 * i, struct.pack("<QHHBBH", bufs + bufsize * i, 0, 0,
                                                        0, 0, 0))
        self.w(MacReg.RDBAL, RX_RING)
        self.w(MacReg.RDBAH, 0)
        self.w(MacReg.RDLEN, n * 16)
        self.w(MacReg.RDH, 0)
        self.w(MacReg.RDT, n - 1 if rdt is None else rdt)
        self.w(MacReg.RCTL, rctl)

    def rxd(self, i: int) -> e.RxDesc:
        return e.RxDesc.unpack(self.ram.read(RX_RING + 16 * i, 16))

    def deliver(self, *frames: bytes) -> int:
        self.backend.put(*frames)
        return self.m.main_loop_poll()

    def fns(self, actor: str | None = None) -> list[str]:
        return [ev["fn"] for ev in self.rec.events if "fn" in ev.data
                and (actor is None or ev.actor == actor)]


def frame(payload: bytes = b"hello", dst: bytes = BCAST, src: bytes = MAC,
          ethertype: int = 0x88B5) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


# --- identity -------------------------------------------------------------------------------------

def test_pci_identity_and_bars():
    n = Nic(command=0)
    c = n.s.config
    assert c[0:4] == bytes.fromhex("86800e10")                       # 8086:100e
    assert c[Config.REVISION_ID] == 3 and c[Config.CLASS_PROG:Config.CLASS_PROG + 3] == \
        bytes.fromhex("000002")                                        # class 0x020000
    assert c[Config.SUBSYSTEM_VENDOR_ID:Config.SUBSYSTEM_VENDOR_ID + 4] == \
        bytes.fromhex("f41a0011")                                      # 1af4:1100
    assert c[Config.INTERRUPT_PIN] == 1                                # INTA
    assert c[Config.CACHE_LINE_SIZE] == 0                              # realize's 0x10, reset to 0
    n.cfg(Config.BASE_ADDRESS_0, 0xFFFFFFFF)
    n.cfg(Config.BASE_ADDRESS_1, 0xFFFFFFFF)
    assert int.from_bytes(c[0x10:0x14], "little") == 0xFFFE0000        # 128 KiB memory
    assert int.from_bytes(c[0x14:0x18], "little") == 0xFFFFFFC1        # 64 I/O ports
    assert e.PNPMMIO_SIZE == 0x20000 and e.IOPORT_SIZE == 0x40


def test_the_io_bar_is_empty_as_in_qemu():
    n = Nic(command=Command.IO | Command.MEMORY | Command.MASTER)
    n.cfg(Config.BASE_ADDRESS_1, 0xC000)
    assert "000000000000c000-000000000000c03f (prio 0, i/o): e1000-io  [e1000]" in n.m.info_mtree()
    address_space_rw(n.m.address_space_io, 0xC000, bytearray(MacReg.STATUS.offset.to_bytes(4,
                     "little")), True)
    buf = bytearray(4)
    address_space_rw(n.m.address_space_io, 0xC004, buf, False)
    assert buf == bytes(4)


def test_info_pci_and_mtree_show_the_mapped_bar():
    n = Nic()
    assert ("    00000000febc0000-00000000febdffff (prio 0, i/o): e1000-mmio  [e1000]"
            in n.m.info_mtree())
    assert n.m.info_pci().splitlines()[4:] == [
        "  Bus  0, device   1, function 0:",
        "    Ethernet controller: PCI device 8086:100e",
        "      PCI subsystem 1af4:1100",
        "      IRQ 0, pin A",
        "      BAR0: 32 bit memory at 0xfebc0000 [0xfebdffff].",
        "      BAR1: I/O (not mapped).",
        '      id ""']


def test_reset_values_are_qemus():
    n = Nic()
    assert n.r(MacReg.STATUS) == 0x80080783          # link up, full duplex, 1000 Mb/s
    assert n.r(MacReg.STATUS) & e.Status.LU
    assert n.r(MacReg.CTRL) == 0x00140240
    assert n.r(MacReg.PBA) == 0x00100030 and n.r(MacReg.LEDCTL) == 0x602
    assert n.r(MacReg.MANC) == 0x00222300 and n.r(MacReg.VET) == 0x8100
    assert n.r(MacReg.RA) == 0x12005452 and n.r(MacReg.RA.offset + 4) == 0x80005634


# --- the MAC from the EEPROM ----------------------------------------------------------------------

def test_eerd_reads_the_mac_and_the_eeprom_sums_to_0xbaba():
    n = Nic()
    words = []
    for addr in range(64):
        n.w(MacReg.EERD, (addr << 8) | 1)                  # START
        v = n.r(MacReg.EERD)
        assert v & 0x10                                     # DONE
        words.append(v >> 16)
    assert words[0:3] == [0x5452, 0x1200, 0x5634]          # 52:54 00:12 34:56
    assert words[11] == words[13] == 0x100E
    assert sum(words) & 0xFFFF == e.EEPROM_SUM
    assert words[3:11] == list(e.E1000_EEPROM_TEMPLATE[3:11])
    n.w(MacReg.EERD, (0x40 << 8) | 1)                       # past the checksum word
    assert n.r(MacReg.EERD) == (0x40 << 8) | 0x10


def test_eecd_microwire_read_gives_the_same_words():
    n = Nic()
    SK, CS, DI, DO = e.Eecd.SK, e.Eecd.CS, e.Eecd.DI, e.Eecd.DO

    def clock(di: int) -> None:
        n.w(MacReg.EECD, CS | (DI if di else 0))
        n.w(MacReg.EECD, CS | SK | (DI if di else 0))
        n.w(MacReg.EECD, CS | (DI if di else 0))

    def read_word(addr: int) -> int:
        n.w(MacReg.EECD, 0)
        n.w(MacReg.EECD, CS)                                # CS rising edge
        for bit in [1, 1, 0] + [(addr >> i) & 1 for i in range(5, -1, -1)]:
            clock(bit)                                      # opcode 110b, 6 address bits
        word = 0
        for _ in range(16):
            n.w(MacReg.EECD, CS | SK)
            word = (word << 1) | (1 if n.r(MacReg.EECD) & DO else 0)
            n.w(MacReg.EECD, CS)
        return word

    assert n.r(MacReg.EECD) & (e.Eecd.PRES | e.Eecd.GNT) == e.Eecd.PRES | e.Eecd.GNT
    assert [read_word(a) for a in (0, 1, 2, 11)] == [0x5452, 0x1200, 0x5634, 0x100E]


def test_mdic_reads_the_phy():
    n = Nic()
    phy1 = 1 << 21
    n.w(MacReg.MDIC, e.Mdic.OP_READ | phy1 | (e.Mii.PHYID1 << 16))
    v = n.r(MacReg.MDIC)
    assert v & e.Mdic.READY and not v & e.Mdic.ERROR and v & 0xFFFF == 0x141
    n.w(MacReg.MDIC, e.Mdic.OP_READ | phy1 | (e.Mii.PHYID2 << 16))
    assert n.r(MacReg.MDIC) & 0xFFFF == 0xC20
    n.w(MacReg.MDIC, e.Mdic.OP_READ | (2 << 21) | (e.Mii.PHYID1 << 16))   # PHY address 2
    assert n.r(MacReg.MDIC) & e.Mdic.ERROR


# --- interrupt registers --------------------------------------------------------------------------

def test_icr_is_read_to_clear_and_ims_imc_gate_the_line():
    n = Nic()
    n.w(MacReg.ICS, Icr.RXT0 | Icr.LSC)
    assert n.m.pirq == [0, 0, 0, 0]                          # nothing unmasked yet
    assert n.r(MacReg.ICS) == Icr.RXT0 | Icr.LSC             # ICS reads like ICR
    n.w(MacReg.IMS, Icr.RXT0)
    assert n.m.pirq[0] == 1 and n.r(MacReg.IMS) == Icr.RXT0  # slot 1 INTA → PIRQA
    n.w(MacReg.IMS, Icr.TXDW)
    assert n.r(MacReg.IMS) == Icr.RXT0 | Icr.TXDW            # IMS sets bits, never clears
    n.w(MacReg.IMC, Icr.RXT0)
    assert n.m.pirq[0] == 0 and n.r(MacReg.IMS) == Icr.TXDW
    n.w(MacReg.IMS, Icr.RXT0)
    assert n.r(MacReg.ICR) == Icr.RXT0 | Icr.LSC             # read-to-clear ...
    assert n.m.pirq[0] == 0 and n.r(MacReg.ICR) == 0         # ... and the line drops
    n.w(MacReg.ICS, Icr.RXT0 | Icr.TXQE)
    n.w(MacReg.ICR, Icr.RXT0)                                 # a write clears the 1 bits
    assert n.s["ICR"] == Icr.TXQE and n.m.pirq[0] == 0


def test_register_write_semantics():
    n = Nic()
    n.w(MacReg.CTRL, 0x04000041)                              # RST self-clears
    assert n.r(MacReg.CTRL) == 0x41
    n.w(MacReg.STATUS, 0)                                     # read-only
    assert n.r(MacReg.STATUS) == 0x80080783
    n.w(MacReg.TDLEN, 0x12345)                                # multiples of 128, < 1 MiB
    assert n.r(MacReg.TDLEN) == 0x12300
    n.w(MacReg.TDH, 0x12345)                                  # 16 bits
    assert n.r(MacReg.TDH) == 0x2345
    n.w(MacReg.MTA.offset + 4 * 5, 0xA5A5A5A5)
    assert n.r(MacReg.MTA.offset + 4 * 5) == 0xA5A5A5A5
    n.w(0x5000, 0xFFFFFFFF)                 # RXCSUM: an e1000e register, not the e1000's
    assert n.r(0x5000) == 0 and n.r(0x0004) == 0
    n.w(0x1FFFC, 0x12345678)                                  # PBM[16383]: plain storage
    assert n.r(0x1FFFC) == 0x12345678
    # impl.min_access_size = 4: a 1-byte store at TDH+1 is a 4-byte store of 0x0000007f
    n.w(MacReg.TDH.offset + 1, 0x7F, 1)
    assert n.r(MacReg.TDH) == 0x7F
    assert n.r(MacReg.TDH.offset, 2) == 0x7F


def test_statistics_registers_clear_on_read():
    n = Nic()
    n.tx_ring()
    n.ram.write(0x4000, frame(bytes(50)))
    n.txd(0, 0x4000, 64)
    n.w(MacReg.TDT, 1)
    assert n.r(MacReg.TPT) == 1 and n.r(MacReg.TPT) == 0
    assert n.r(MacReg.GPTC) == 1 and n.r(MacReg.BPTC) == 1 and n.r(MacReg.PTC127) == 1
    assert n.r(MacReg.TOTL) == 68 and n.r(MacReg.TOTH) == 0 and n.r(MacReg.TOTL) == 0


# --- transmit ---------------------------------------------------------------------------------------

def test_a_tx_ring_of_several_descriptors():
    n = Nic()
    n.tx_ring(8)
    f1, f2 = frame(b"one" * 20), frame(b"two" * 100)
    f3a, f3b = frame(b"three" * 10), b"-and-the-rest" * 4
    n.ram.write(0x4000, f1)
    n.ram.write(0x4800, f2)
    n.ram.write(0x5000, f3a)
    n.ram.write(0x5800, f3b)
    n.txd(0, 0x4000, len(f1))
    n.txd(1, 0x4800, len(f2), TxdCmd.EOP | TxdCmd.IFCS)          # no RS: no write-back
    n.txd(2, 0x5000, len(f3a), TxdCmd.IFCS | TxdCmd.RS)          # no EOP: the frame goes on
    n.txd(3, 0x5800, len(f3b))
    n.w(MacReg.IMS, Icr.TXDW)
    n.rec.events.clear()
    n.w(MacReg.TDT, 4)
    assert n.backend.sent == [f1, f2, f3a + f3b]
    assert [n.tx_status(i) & 1 for i in range(4)] == [1, 0, 1, 1]
    assert n.r(MacReg.TDH) == 4 and n.r(MacReg.TDT) == 4
    assert n.m.pirq[0] == 1
    assert n.r(MacReg.ICR) == Icr.TXDW | Icr.TXQE and n.m.pirq[0] == 0
    # one start_xmit, descriptor by descriptor, in QEMU's order
    fns = [f for f in n.fns() if f in ("start_xmit", "pci_dma_read", "process_tx_desc",
                                       "e1000_send_packet", "qemu_send_packet", "tap_receive_iov",
                                       "txdesc_writeback", "pci_dma_write", "set_ics")]
    assert fns == [
        "start_xmit",                                                   # TDH 0 → TDT 4
        "start_xmit", "pci_dma_read", "process_tx_desc", "e1000_send_packet",
        "qemu_send_packet", "tap_receive_iov", "pci_dma_write", "txdesc_writeback",   # f1, DD
        "start_xmit", "pci_dma_read", "process_tx_desc", "e1000_send_packet",
        "qemu_send_packet", "tap_receive_iov",                                         # f2, no RS
        "start_xmit", "pci_dma_read", "pci_dma_write", "txdesc_writeback",        # f3a
        "start_xmit", "pci_dma_read", "process_tx_desc", "e1000_send_packet",
        "qemu_send_packet", "tap_receive_iov", "pci_dma_write", "txdesc_writeback",   # f3a + f3b
        "start_xmit", "set_ics"]                                                  # done


def test_tdh_wraps_at_tdlen():
    n = Nic()
    n.tx_ring(8)
    for i in range(8):
        n.ram.write(0x4000 + 0x100 * i, frame(bytes([i]) * 50))
        n.txd(i, 0x4000 + 0x100 * i, 64)
    n.w(MacReg.TDH, 6)
    n.w(MacReg.TDT, 2)                                   # 6, 7, 0, 1
    assert [f[14] for f in n.backend.sent] == [6, 7, 0, 1]
    assert n.r(MacReg.TDH) == 2


def test_tctl_en_clear_sends_nothing_and_tx_starts_when_it_is_set():
    n = Nic()
    n.tx_ring()
    n.w(MacReg.TCTL, 0)
    n.ram.write(0x4000, frame())
    n.txd(0, 0x4000, len(frame()))
    n.w(MacReg.TDT, 1)
    assert n.backend.sent == [] and n.r(MacReg.TDH) == 0
    n.w(MacReg.TCTL, Tctl.EN)                            # set_tctl → start_xmit
    assert n.backend.sent == [frame()] and n.r(MacReg.TDH) == 1


def test_tx_does_not_pad_short_frames_even_with_psp():
    n = Nic()
    n.tx_ring()
    n.ram.write(0x4000, b"tiny")
    n.txd(0, 0x4000, 4)
    n.w(MacReg.TDT, 1)
    assert n.backend.sent == [b"tiny"]


def test_checksum_offload_with_a_context_descriptor():
    n = Nic()
    n.tx_ring()
    ip = bytearray(bytes.fromhex("450000220001000040110000c0a80001c0a80002"))
    udp = bytearray(bytes.fromhex("1234567800 0e0000".replace(" ", ""))) + b"payload!"[:6]
    pkt = bytearray(frame(bytes(ip + udp), ethertype=0x0800))
    n.ram.write(0x4000, bytes(pkt))
    # context: IP checksum over 14..33 at 24, UDP checksum from 34 at 40 (no pseudo header)
    ctx = struct.pack("<BBHBBHIBBH", 14, 24, 33, 34, 40, 0,
                      TxdCmd.DEXT | e.E1000_TXD_CMD_IP | len(pkt), 0, 0, 0)
    n.ram.write(TX_RING, ctx)
    n.txd(1, 0x4000, len(pkt), TxdCmd.DEXT | TxdCmd.DTYP_D | TxdCmd.EOP | TxdCmd.RS,
          upper=(e.TxdPopts.IXSM | e.TxdPopts.TXSM) << 8)
    n.w(MacReg.TDT, 2)
    (sent,) = n.backend.sent

    def csum(b: bytes) -> int:
        if len(b) % 2:
            b += b"\0"
        s = sum(struct.unpack(f">{len(b) // 2}H", b))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF or 0xFFFF

    assert sent[24:26] == csum(bytes(pkt[14:24]) + b"\0\0" + bytes(pkt[26:34])).to_bytes(2, "big")
    assert sent[40:42] == csum(bytes(pkt[34:40]) + b"\0\0" + bytes(pkt[42:])).to_bytes(2, "big")
    assert n.tx_status(0) == 0 and n.tx_status(1) & 1    # the context descriptor has no RS


def test_tso_cuts_a_tcp_stream_into_mss_sized_frames():
    n = Nic()
    n.tx_ring()
    hdr = bytearray(frame(bytes.fromhex(
        "4500000000070000400600000a0000010a000002"              # IPv4, id 7
        "04d2162e000003e8000000005018ffff00000000"), ethertype=0x0800))  # TCP seq 1000, PSH|ACK
    hdr_len, mss, paylen = len(hdr), 100, 250
    payload = bytes(range(250))
    n.ram.write(0x4000, bytes(hdr) + payload)
    ctx = struct.pack("<BBHBBHIBBH", 14, 24, 33, 34, 50, 0,
                      TxdCmd.DEXT | e.E1000_TXD_CMD_TSE | e.E1000_TXD_CMD_IP
                      | e.E1000_TXD_CMD_TCP | paylen, 0, hdr_len, mss)
    n.ram.write(TX_RING, ctx)
    n.txd(1, 0x4000, hdr_len + paylen, TxdCmd.DEXT | TxdCmd.DTYP_D | e.E1000_TXD_CMD_TSE
          | TxdCmd.EOP | TxdCmd.RS)
    n.w(MacReg.TDT, 2)
    segs = n.backend.sent
    assert [len(s) - hdr_len for s in segs] == [100, 100, 50]
    assert b"".join(s[hdr_len:] for s in segs) == payload
    ip_len = [int.from_bytes(s[16:18], "big") for s in segs]
    assert ip_len == [len(s) - 14 for s in segs]
    assert [int.from_bytes(s[18:20], "big") for s in segs] == [7, 8, 9]          # IP id + frames
    assert [int.from_bytes(s[38:42], "big") for s in segs] == [1000, 1100, 1200]  # TCP seq
    assert [s[47] & 9 for s in segs] == [0, 0, 8]          # PSH only on the last (FIN was 0)
    assert n.r(MacReg.TSCTC) == 1
    segs_ev = [ev for ev in n.rec.events if ev.data.get("fn") == "xmit_seg"]
    assert [ev["tso_frame"] for ev in segs_ev] == [0, 1, 2]


def test_vlan_tag_inserted_on_tx_and_stripped_on_rx():
    n = Nic()
    n.w(MacReg.CTRL, n.r(MacReg.CTRL) | e.Ctrl.VME)
    n.tx_ring()
    f = frame(b"tagged" * 10)
    n.ram.write(0x4000, f)
    n.txd(0, 0x4000, len(f), TxdCmd.EOP | TxdCmd.VLE | TxdCmd.RS, upper=0x2005 << 16)
    n.w(MacReg.TDT, 1)
    (sent,) = n.backend.sent
    assert sent == f[:12] + bytes.fromhex("81002005") + f[12:]
    n.rx_ring()
    n.deliver(sent)
    d = n.rxd(0)
    assert d.status & RxdStat.VP and d.special == 0x2005
    assert n.ram.read(0x8000, len(f)) == f and d.length == len(f) + 4


def test_phy_loopback_sends_the_frame_back_into_the_receive_ring():
    n = Nic()
    n.rx_ring()
    n.tx_ring()
    n.w(MacReg.MDIC, e.Mdic.OP_WRITE | (1 << 21) | (e.Mii.BMCR << 16) | 0x4140)  # LOOPBACK
    f = frame(b"loop" * 20)
    n.ram.write(0x4000, f)
    n.txd(0, 0x4000, len(f))
    n.w(MacReg.TDT, 1)
    assert n.backend.sent == []
    assert n.ram.read(0x8000, len(f)) == f and n.rxd(0).status & RxdStat.DD


# --- receive ----------------------------------------------------------------------------------------

def test_rx_writes_frames_and_descriptors_and_advances_rdh():
    n = Nic()
    n.rx_ring(8)
    n.w(MacReg.IMS, Icr.RXT0)
    f1, f2 = frame(b"a" * 100), frame(b"b" * 200)
    assert n.deliver(f1, f2) == 2
    for i, f in enumerate((f1, f2)):
        d = n.rxd(i)
        assert n.ram.read(0x8000 + 2048 * i, len(f)) == f
        assert d.length == len(f) + 4                        # the FCS QEMU never has
        assert d.status == RxdStat.DD | RxdStat.EOP | RxdStat.IXSM
    assert n.r(MacReg.RDH) == 2 and n.m.pirq[0] == 1
    assert n.r(MacReg.ICR) == Icr.RXT0
    assert n.r(MacReg.GPRC) == 2 and n.r(MacReg.BPRC) == 2


def test_rctl_secrc_strips_the_fcs_from_the_length():
    n = Nic()
    n.rx_ring(rctl=Rctl.EN | Rctl.BAM | Rctl.SECRC)
    n.deliver(frame(b"x" * 100))
    assert n.rxd(0).length == 114


def test_short_frames_are_padded_to_60_by_the_backend_side():
    n = Nic()
    n.rx_ring()
    n.deliver(frame(b"hi"))                                   # 16 bytes on the wire
    assert n.rxd(0).length == 64 and n.ram.read(0x8000, 60) == frame(b"hi") + bytes(44)
    assert "eth_pad_short_frame" in n.fns()
    n2 = Nic()
    n2.rx_ring()
    n2.s.nic.do_not_pad = True                                # a NIC that pads itself
    n2.deliver(frame(b"hi"))
    assert n2.rxd(0).length == 20


def test_a_frame_spans_descriptors_when_buffers_are_small():
    n = Nic()
    n.rx_ring(8, rctl=Rctl.EN | Rctl.BAM | Rctl.SZ_256, bufsize=256)
    assert n.s.rxbuf_size == 256
    f = frame(bytes(range(256)) * 2 + b"tail")              # 530 bytes + 4 FCS = 534
    n.deliver(f)
    lengths = [n.rxd(i).length for i in range(3)]
    statuses = [n.rxd(i).status for i in range(3)]
    assert lengths == [256, 256, 22]
    assert statuses == [RxdStat.DD, RxdStat.DD, RxdStat.DD | RxdStat.EOP | RxdStat.IXSM]
    assert b"".join(n.ram.read(0x8000 + 256 * i, [256, 256, 18][i]) for i in range(3)) == f
    assert n.r(MacReg.RDH) == 3


def test_rdh_wraps_at_rdlen():
    n = Nic()
    n.rx_ring(8)
    n.w(MacReg.RDH, 6)
    n.w(MacReg.RDT, 2)
    n.deliver(*(frame(bytes([i]) * 50) for i in range(4)))
    assert [n.ram.read(0x8000 + 2048 * i + 14, 1)[0] for i in (6, 7, 0, 1)] == [0, 1, 2, 3]
    assert n.r(MacReg.RDH) == 2


def test_the_address_filter():
    n = Nic()
    n.rx_ring(rctl=Rctl.EN)                                   # no BAM: broadcast is dropped
    n.deliver(frame(b"to everyone"))
    assert n.r(MacReg.RDH) == 0
    n.deliver(frame(b"to someone else", dst=bytes.fromhex("525400000001")))
    assert n.r(MacReg.RDH) == 0
    n.deliver(frame(b"to me", dst=MAC))                       # RA[0]
    assert n.r(MacReg.RDH) == 1
    n.w(MacReg.RCTL, Rctl.EN | Rctl.UPE)
    n.deliver(frame(b"promiscuous", dst=bytes.fromhex("525400000001")))
    assert n.r(MacReg.RDH) == 2
    mc = bytes.fromhex("01005e000001")                        # IPv4 all-hosts multicast
    n.w(MacReg.RCTL, Rctl.EN)
    n.deliver(frame(b"mc", dst=mc))
    assert n.r(MacReg.RDH) == 2
    hash_ = ((mc[5] << 8 | mc[4]) >> 4) & 0xFFF                # MO = 0: bits 47:36
    n.w(MacReg.MTA.offset + 4 * (hash_ >> 5), 1 << (hash_ & 31))
    n.deliver(frame(b"mc", dst=mc))
    assert n.r(MacReg.RDH) == 3
    drops = [ev["why"] for ev in n.rec.events if ev.data.get("dropped") == "filter"]
    assert len(drops) == 3 and "no RA entry" in drops[0]


def test_frames_wait_in_the_queue_until_rdt_gives_buffers():
    n = Nic()
    n.rx_ring(8, rdt=0)                                       # RDH == RDT: no free descriptor
    f1, f2 = frame(b"first" * 10), frame(b"second" * 10)
    n.deliver(f1)
    assert n.r(MacReg.RDH) == 0 and n.s.nic.incoming_queue.nq_count == 1
    assert not n.m.netdevs[0].read_poll                       # tap_read_poll(false)
    n.backend.put(f2)
    assert n.m.main_loop_poll() == 0                          # the fd is not polled now
    n.w(MacReg.RDT, 3)                                        # set_rdt → flush the queue
    assert n.r(MacReg.RDH) == 1 and n.s.nic.incoming_queue.nq_count == 0
    assert n.m.netdevs[0].read_poll                           # tap_send_completed
    assert n.m.main_loop_poll() == 1 and n.r(MacReg.RDH) == 2
    assert n.ram.read(0x8000, len(f1)) == f1 and n.ram.read(0x8800, len(f2)) == f2
    assert "qemu_net_queue_append" in n.fns() and "qemu_flush_queued_packets" in n.fns()


def test_receive_needs_rctl_en_link_and_bus_mastering():
    n = Nic(command=Command.MEMORY)                           # no MASTER
    n.rx_ring()
    n.deliver(frame())
    assert n.r(MacReg.RDH) == 0 and n.s.nic.incoming_queue.nq_count == 1
    n.cfg(Config.COMMAND, Command.MEMORY | Command.MASTER, 2)  # e1000_write_config flushes
    assert n.r(MacReg.RDH) == 1
    n2 = Nic()
    n2.rx_ring(rctl=0)
    n2.deliver(frame())
    assert n2.r(MacReg.RDH) == 0 and n2.s.nic.incoming_queue.nq_count == 1
    net.qemu_set_link(n2.s.nic, False)
    assert not n2.r(MacReg.STATUS) & e.Status.LU and n2.s["ICR"] & Icr.LSC


def test_oversized_frames_are_discarded_and_counted():
    n = Nic()
    n.rx_ring()
    n.deliver(frame(bytes(1600)))
    assert n.r(MacReg.RDH) == 0 and n.r(MacReg.ROC) == 1
    n.w(MacReg.RCTL, Rctl.EN | Rctl.BAM | Rctl.LPE | Rctl.BSEX | Rctl.SZ_1024)  # 16 KiB buffers
    n.deliver(frame(bytes(1600)))
    assert n.r(MacReg.RDH) == 1 and n.rxd(0).length == 1618


# --- bad input from the guest -----------------------------------------------------------------------

def test_descriptors_and_buffers_outside_ram_read_as_zeros():
    n = Nic()
    n.tx_ring()
    n.w(MacReg.TDBAL, 0x40000000)                 # the ring is nowhere: descriptors of zeros
    n.w(MacReg.TDT, 3)
    assert n.backend.sent == [] and n.r(MacReg.TDH) == 3
    n.w(MacReg.TDBAL, TX_RING)
    n.w(MacReg.TDH, 0)
    n.w(MacReg.TDT, 0)
    n.txd(0, 0xFFFFFFF000, 60)                     # a buffer outside RAM, with EOP
    n.w(MacReg.TDT, 1)
    assert n.backend.sent == [bytes(60)]           # QEMU sends what the DMA read: zeros
    assert any("no RAM or region there" in note for ev in n.rec.events
               for note in ev.data.get("notes", ()))
    n.rx_ring()
    n.ram.write(RX_RING, struct.pack("<Q", 0x7777_0000))     # RX buffer outside RAM
    n.deliver(frame(b"lost"))
    assert n.rxd(0).status & RxdStat.DD and n.r(MacReg.RDH) == 1


def test_tdlen_zero_handles_one_descriptor_and_stops():
    n = Nic()
    n.tx_ring()
    n.ram.write(0x4000, frame())
    n.txd(0, 0x4000, len(frame()))
    n.w(MacReg.TDLEN, 0)
    n.w(MacReg.TDT, 5)
    assert n.backend.sent == [frame()] and n.r(MacReg.TDH) == 0
    assert any(ev.data.get("wraparound") for ev in n.rec.events)


def test_tdt_beyond_the_ring_runs_one_lap_and_stops():
    n = Nic()
    n.tx_ring(8)
    for i in range(8):
        n.ram.write(0x4000 + 0x100 * i, frame(bytes([i]) * 50))
        n.txd(i, 0x4000 + 0x100 * i, 64)
    n.w(MacReg.TDT, 100)                            # TDH never meets it
    assert [f[14] for f in n.backend.sent] == list(range(8))
    assert n.r(MacReg.TDH) == 0 and n.r(MacReg.TDT) == 100
    big = Nic()
    big.tx_ring()
    big.w(MacReg.TDLEN, 0x8000)                     # 2048 (empty) descriptors, TDT past them
    big.rec.events.clear()
    big.w(MacReg.TDT, 0xFFFF)                       # one lap, from 0 back to 0
    assert big.r(MacReg.TDH) == 0 and big.backend.sent == []
    assert sum(1 for ev in big.rec.events if ev.data.get("dtype") == "legacy") == 2048
    n.w(MacReg.TDH, 50)                             # TDH outside the ring: one descriptor
    n.backend.sent.clear()
    n.w(MacReg.TDT, 60)
    assert n.r(MacReg.TDH) == 0 and len(n.backend.sent) <= 1


def test_rx_ring_of_length_zero_or_rdh_outside_overruns():
    n = Nic()
    n.rx_ring(8)
    n.w(MacReg.RDLEN, 0)
    n.deliver(frame())
    assert n.s["ICR"] & Icr.RXO and n.r(MacReg.RNBC) == 1 and n.r(MacReg.MPC) == 1
    n2 = Nic()
    n2.rx_ring(8)
    n2.w(MacReg.RDH, 200)
    n2.w(MacReg.RDT, 300)
    n2.deliver(frame())
    assert n2.s["ICR"] & Icr.RXO and n2.r(MacReg.RDH) == 0


def test_dma_without_bus_mastering_reaches_nothing():
    n = Nic(command=Command.MEMORY)
    n.tx_ring()
    n.ram.write(0x4000, frame())
    n.txd(0, 0x4000, len(frame()))
    n.w(MacReg.TDT, 1)
    assert n.backend.sent == [] and n.tx_status(0) == 0 and n.r(MacReg.TDH) == 1


def test_a_ring_inside_the_devices_own_bar_is_blocked_not_recursive():
    n = Nic()
    n.tx_ring()
    n.w(MacReg.TDBAL, BAR0 + MacReg.TDT.offset - 8)  # "descriptors" over its own registers
    n.w(MacReg.TDT, 1)
    assert any("Blocked re-entrant IO" in ev.label for ev in n.rec.events)
    assert n.r(MacReg.TDH) == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from([MacReg.TDBAL, MacReg.TDLEN, MacReg.TDH, MacReg.TDT, MacReg.TCTL,
                     MacReg.RDBAL, MacReg.RDLEN, MacReg.RDH, MacReg.RDT, MacReg.RCTL,
                     MacReg.IMS, MacReg.IMC, MacReg.ICR, MacReg.ICS, MacReg.CTRL, MacReg.EECD,
                     MacReg.MDIC, MacReg.EERD]),
    st.one_of(st.integers(0, 16), st.integers(0, 0xFFFFFFFF))), max_size=25),
    st.binary(min_size=0, max_size=256))
def test_any_register_sequence_and_ring_contents_never_break_the_model(writes, junk):
    n = Nic(ram=0x4000)
    n.ram.write(0, junk)
    n.ram.write(0x1000, junk)
    for reg, value in writes:
        if reg in (MacReg.TDLEN, MacReg.RDLEN):
            value &= 0x7FF                  # rings of at most 15 descriptors keep this fast;
        n.w(reg, value)                     # a full lap of a big ring has its own test
        n.deliver(frame(b"x" * 40))
    for reg in (MacReg.ICR, MacReg.TDH, MacReg.RDH, MacReg.STATUS):
        assert 0 <= n.r(reg) <= 0xFFFFFFFF
    assert n.r(MacReg.TDH) < 0x10000 and n.m.pirq[0] in (0, 1)


# --- the trace ------------------------------------------------------------------------------------

def test_every_step_is_recorded_with_qemus_names_and_round_trips():
    n = Nic()
    n.tx_ring()
    n.rx_ring()
    n.w(MacReg.IMS, Icr.TXDW | Icr.RXT0)
    n.ram.write(0x4000, frame(b"out" * 20))
    n.txd(0, 0x4000, 74)
    n.w(MacReg.TDT, 1)
    n.deliver(frame(b"in"))                                  # short: padded on the way in
    assert n.r(MacReg.ICR) == Icr.TXDW | Icr.TXQE | Icr.RXT0
    t = n.rec.freeze()
    assert Trace.from_json(t.to_json()) == t
    fns = set(n.fns())
    for fn in ("start_xmit", "process_tx_desc", "e1000_send_packet",
               "qemu_send_packet", "tap_receive_iov", "txdesc_writeback", "set_ics",
               "set_interrupt_cause", "pci_irq_handler", "piix_set_pci_irq", "pci_dma_read",
               "pci_dma_write", "tap_send", "eth_pad_short_frame", "qemu_deliver_packet_iov",
               "e1000_receive_iov", "e1000_mmio_write", "e1000_mmio_read"):
        assert fn in fns, fn
    desc = next(ev for ev in t.events
                if ev.label.startswith("start_xmit: pci_dma_read descriptor 0"))
    assert desc["desc"] == {"buffer_addr": 0x4000, "lower": 0x0B00004A, "upper": 0,
                            "length": 74}
    assert list(desc["stack"][-3:]) == ["e1000_mmio_write", "set_tctl", "start_xmit"]
    sent = next(ev for ev in t.events if ev["fn"] == "qemu_send_packet")
    assert bytes.fromhex(sent["frame"]) == frame(b"out" * 20) and sent.actor == "qemu"
    rx = next(ev for ev in t.events if ev["fn"] == "tap_send")
    assert (rx.actor, rx["thread"], rx["bql"]) == ("host", "main", True)
    mmio = next(ev for ev in t.events if ev.kind == "io" and ev.data.get("reg") == "TDT"
                and ev["value"] == 1)
    assert mmio.label == "e1000_mmio_write TDT ← 0x00000001 (set_tctl)"
    assert mmio["tdh"] == 1


# --- the QEMU 9.2.4 sources, where present ------------------------------------------------------

def qemu(path: str) -> str:
    return git_show(QEMU_9, "HEAD", path)


def test_register_offsets_match_qemus_headers():
    src = qemu("hw/net/e1000_regs.h") + qemu("hw/net/e1000x_regs.h")
    defs: dict[str, int] = {}
    for m in re.finditer(r"#define E1000_([A-Z0-9_]+)\s+(0x[0-9A-Fa-f]+)\b", src):
        defs.setdefault(m.group(1), int(m.group(2), 16))
    for r in MacReg:
        assert defs[r.name] == r.offset, r.name
    for cls, prefix in ((Icr, "ICR_"), (Rctl, "RCTL_"), (Tctl, "TCTL_"), (e.TxdStat, "TXD_STAT_"),
                        (RxdStat, "RXD_STAT_"), (e.Eecd, "EECD_"), (e.Mdic, "MDIC_"),
                        (e.Ctrl, "CTRL_"), (e.Status, "STATUS_"), (e.TxdPopts, "TXD_POPTS_")):
        for name, v in cls.__members__.items():
            assert defs[prefix + name] == v, prefix + name
    for name, v in TxdCmd.__members__.items():
        key = "TXD_DTYP_D" if name == "DTYP_D" else f"TXD_CMD_{name}"
        assert defs[key] == v, key
    for name in ("TCP", "IP", "TSE"):
        assert defs[f"TXD_CMD_{name}"] == getattr(e, f"E1000_TXD_CMD_{name}")
    assert defs["DEV_ID_82540EM"] == e.E1000_DEV_ID_82540EM == 0x100E
    assert defs["RAH_AV"] == e.E1000_RAH_AV


def test_e1000_c_source():
    src = qemu("hw/net/e1000.c")
    assert "#define IOPORT_SIZE       0x40\n#define PNPMMIO_SIZE      0x20000" in src
    template = function_body(src, "static const uint16_t e1000_eeprom_template[64] = {")
    words = [int(w, 16) for w in re.findall(r"0x([0-9a-f]{4})", template)]
    assert len(words) == 62  # two words are the DevId placeholders (0 /*DevId*/)
    assert [w for i, w in enumerate(e.E1000_EEPROM_TEMPLATE) if i not in (11, 13)] == words
    body = function_body(src, "start_xmit(E1000State *s)")
    assert "if (s->mac_reg[TDH] == tdh_start ||\n            tdh_start >= s->mac_reg[TDLEN] " \
           "/ sizeof(desc)) {" in body
    assert "[TDT]    = set_tctl" in src and "[TCTL]  = set_tctl" in src
    assert "return (mac[RCTL] & E1000_RCTL_SECRC) ? 0 : 4;" in qemu("hw/net/e1000x_common.h")
    io = function_body(src, "static uint64_t e1000_io_read(")
    assert "return 0;" in io
    assert ".min_access_size = 4,\n        .max_access_size = 4," in src
    init = src[src.index("static const uint32_t mac_reg_init[] = {"):]
    assert "[PBA]     = 0x00100030," in init and "[LEDCTL]  = 0x602," in init
    tap = qemu("net/tap.c")
    assert "if (net_peer_needs_padding(&s->nc)) {\n            if (eth_pad_short_frame(" in tap
    assert "#define ETH_ZLEN 60" in qemu("include/net/eth.h")


# --- a real guest ---------------------------------------------------------------------------------

LOAD_ADDR = 0x1000
GUEST_BAR0 = 0xE0000          # below 1 MiB, so a real-mode guest reaches it through ES
PAYLOAD = b"vbook: an e1000 frame from a real guest\n"
GUEST_FRAME = BCAST + MAC + b"\x88\xb5" + PAYLOAD

LISTING = f"""\
# e1000_tx - real mode: find the e1000 on PCI, map its BAR0, send one frame, poll.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ CONFIG_ADDRESS, 0xcf8          # PCI config mechanism #1 (i440FX host bridge)
        .equ CONFIG_DATA, 0xcfc
        .equ TESTDEV_PORT, 0xe0             # pc-testdev's latch: where the guest shows values
        .equ E1000_ID, 0x100e8086           # config dword 0 of an 82540EM: device << 16 | vendor
        .equ BAR0, {GUEST_BAR0:#x}                 # where this guest maps the 128 KiB register file
        .equ TX_RING, {TX_RING:#x}              # 8 legacy TX descriptors, 16 bytes each
        .equ TDBAL, {MacReg.TDBAL.offset:#x}
        .equ TDBAH, {MacReg.TDBAH.offset:#x}
        .equ TDLEN, {MacReg.TDLEN.offset:#x}
        .equ TDH, {MacReg.TDH.offset:#x}
        .equ TDT, {MacReg.TDT.offset:#x}
        .equ TCTL, {MacReg.TCTL.offset:#x}
        .equ ICR, {MacReg.ICR.offset:#x}
        .equ IMS, {MacReg.IMS.offset:#x}
        .equ TCTL_EN_PSP, {int(Tctl.EN | Tctl.PSP):#x}
        .equ ICR_TXDW, {int(Icr.TXDW):#x}
        .equ CMD_EOP_IFCS_RS, {int(TxdCmd.EOP | TxdCmd.IFCS | TxdCmd.RS):#010x}
_start:
        xor   ax, ax
        mov   ds, ax
        mov   ebx, 0x80000000               # enable | bus 0 | device 0 | function 0 | reg 0
probe:
        mov   eax, ebx
        mov   dx, CONFIG_ADDRESS
        out   dx, eax                       # select the device's config dword 0
        mov   dx, CONFIG_DATA
        in    eax, dx                       # vendor and device ID (all ones: nobody there)
        cmp   eax, E1000_ID
        je    found
        add   ebx, 1 << 11                  # next device number
        cmp   ebx, 0x80000000 + (32 << 11)
        jb    probe
        hlt                                 # no e1000 on bus 0
found:
        mov   eax, ebx
        or    al, 0x10                      # PCI_BASE_ADDRESS_0
        mov   dx, CONFIG_ADDRESS
        out   dx, eax
        mov   dx, CONFIG_DATA
        mov   eax, 0xffffffff
        out   dx, eax                       # BAR sizing: write all ones ...
        in    eax, dx                       # ... read back the size mask
        mov   dx, TESTDEV_PORT
        out   dx, eax                       # show it: 0xfffe0000 (128 KiB, 32-bit memory)
        mov   dx, CONFIG_DATA
        mov   eax, BAR0
        out   dx, eax                       # BAR0 = BAR0
        mov   eax, ebx
        or    al, 0x04                      # PCI_COMMAND
        mov   dx, CONFIG_ADDRESS
        out   dx, eax
        mov   dx, CONFIG_DATA
        mov   ax, 0x0006                    # MEMORY | MASTER: decode BAR0, allow DMA
        out   dx, ax                        # a 2-byte config write
        mov   dword ptr [TX_RING], frame - _start + LOAD_ADDR      # buffer_addr (low)
        mov   dword ptr [TX_RING + 4], 0                           # buffer_addr (high)
        mov   dword ptr [TX_RING + 8], (frame_end - frame) | CMD_EOP_IFCS_RS   # length, cmd
        mov   dword ptr [TX_RING + 12], 0                          # status
        mov   ax, BAR0 >> 4
        mov   es, ax                        # ES:reg = BAR0 + reg
        mov   dword ptr es:[TDBAL], TX_RING
        mov   dword ptr es:[TDBAH], 0
        mov   dword ptr es:[TDLEN], 8 * 16
        mov   dword ptr es:[TDH], 0
        mov   dword ptr es:[TDT], 0
        mov   dword ptr es:[IMS], ICR_TXDW
        mov   dword ptr es:[TCTL], TCTL_EN_PSP
        mov   dword ptr es:[TDT], 1         # the doorbell: QEMU's set_tctl -> start_xmit
wait:
        mov   eax, dword ptr es:[TDH]
        cmp   eax, 1
        jne   wait                          # poll TDH (no interrupt controller on this board)
        mov   eax, dword ptr es:[ICR]       # read-to-clear: TXDW | TXQE
        mov   dx, TESTDEV_PORT
        out   dx, eax
        mov   eax, dword ptr [TX_RING + 12]
        out   dx, eax                       # the status the device wrote back: DD
        hlt
        .balign 16
frame:
        .byte 0xff, 0xff, 0xff, 0xff, 0xff, 0xff    # destination: broadcast
        .byte 0x52, 0x54, 0x00, 0x12, 0x34, 0x56    # source: QEMU's default MAC
        .byte 0x88, 0xb5                            # EtherType: local experimental
        .ascii {json.dumps(PAYLOAD.decode())}
frame_end:
"""

# CODE is what GNU as makes of LISTING (test_the_guest_code_is_its_listing checks it)
CODE = bytes.fromhex(
    "31c08ed866bb000000806689d8baf80c"
    "66efbafc0c66ed663d86800e10741166"
    "81c3000800006681fb0000018072dbf4"
    "6689d80c10baf80c66efbafc0c66b8ff"
    "ffffff66ef66edbae00066efbafc0c66"
    "b800000e0066ef6689d80c04baf80c66"
    "efbafc0cb80600ef66c7060030001100"
    "0066c70604300000000066c706083036"
    "00000b66c7060c3000000000b800e08e"
    "c02666c7060038003000002666c70604"
    "38000000002666c70608388000000026"
    "66c7061038000000002666c706183800"
    "0000002666c706d000010000002666c7"
    "0600040a0000002666c7061838010000"
    "002666a110386683f80175f52666a1c0"
    "00bae00066ef66a10c3066eff48d7400"
    "ffffffffffff52540012345688b57662"
    "6f6f6b3a20616e206531303030206672"
    "616d652066726f6d2061207265616c20"
    "67756573740a"
)

GUEST = Guest(name="e1000_tx", mode=16, code=CODE, listing=LISTING,
              description="finds the e1000 on PCI, maps BAR0, sends one frame, polls TDH/ICR",
              load_addr=LOAD_ADDR, mem_size=0x10000, stack_top=0x1000)


def test_the_guest_code_is_its_listing():
    why = tools_missing()
    if why:
        pytest.skip(why)
    assert assemble(LISTING) == CODE


def _run(backend: str):
    why = available()[backend]
    if why:
        pytest.skip(f"{backend} backend: {why}")
    b = MemoryBackend()
    m = Machine(nics=[b])
    return run_loop.run(GUEST, backend, machine=m), b, m


@pytest.mark.parametrize("backend", ["unicorn", "kvm"])
def test_a_real_guest_sends_a_frame_through_the_e1000(backend):
    r, b, m = _run(backend)
    assert r.end == run_loop.End.HLT, r.detail
    assert b.sent == [GUEST_FRAME]                           # byte for byte
    shown = [x.io.data for x in r.exits if x.io is not None and x.io.port == 0xE0]
    assert shown == [(0xFFFE0000).to_bytes(4, "little"), (Icr.TXDW | Icr.TXQE).to_bytes(4,
                     "little"), (1).to_bytes(4, "little")]   # size mask, ICR, DD
    assert m.ram is None                                     # the vCPU's RAM was only lent
    s = m.e1000[0]
    assert (s["TDH"], s["TDT"], s["ICR"], m.pirq) == (1, 1, 0, [0, 0, 0, 0])
    assert "00000000000e0000-00000000000fffff (prio 0, i/o): e1000-mmio  [e1000]" in m.info_mtree()
    handlers = r.handlers
    assert handlers[:4] == ["pci_host_config_write", "pci_host_data_read"] * 2
    assert handlers.count("e1000_mmio_write") == 8 and handlers.count("e1000_mmio_read") == 2
    fns = [ev.data.get("fn") for ev in r.trace.events]
    i = fns.index("start_xmit")
    assert fns.index("qemu_send_packet", i) < fns.index("txdesc_writeback", i) \
        < fns.index("piix_set_pci_irq", i)
    irq = [ev for ev in r.trace.events if ev.data.get("fn") == "piix_set_pci_irq"]
    assert [ev["level"] for ev in irq] == [1, 0]             # raised by TX, lowered by the ICR read
    assert irq[0]["thread"] == "CPU 0/KVM"


def test_the_guest_gives_the_same_exits_on_unicorn_and_kvm():
    ru, bu, _ = _run("unicorn")
    rk, bk, _ = _run("kvm")
    assert [str(x) for x in ru.exits] == [str(x) for x in rk.exits]
    assert bu.sent == bk.sent == [GUEST_FRAME]
    assert ru.handlers == rk.handlers
