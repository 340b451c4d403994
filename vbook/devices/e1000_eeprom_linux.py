"""How Linux 6.1 reads an 82540's EEPROM: Microwire, bit by bit through EECD — and what it costs.

drivers/net/ethernet/intel/e1000/e1000_hw.c puts the 82540 on the Microwire path
(``e1000_init_eeprom_params``: ``case e1000_82540: … eeprom->type = e1000_eeprom_microwire;
opcode_bits = 3``; 64 words and 6 address bits unless EECD says SIZE). It never uses EERD.
Each word is ``e1000_read_eeprom(hw, offset, 1, &w)`` → ``e1000_do_read_eeprom``:
``e1000_acquire_eeprom`` (REQ, wait for GNT, then CS), per word the read opcode 110b and the
address shifted out (``e1000_shift_out_ee_bits``: per bit a write of DI, a flush, a rising
and a falling clock edge, each a write and a flush), 16 bits shifted in
(``e1000_shift_in_ee_bits``: per bit a rising edge, a read of EECD for DO, a falling edge),
``e1000_standby_eeprom``, then ``e1000_release_eeprom``. ``E1000_WRITE_FLUSH`` is a read of
STATUS. ``udelay`` and ``cond_resched`` are left out: they touch no register.

The functions here are those, transliterated: ``rd(reg)`` and ``wr(reg, value)`` are the
driver's ``er32`` / ``ew32`` (register *indices* of :class:`vbook.devices.e1000.MacReg`), so
they run against any e1000 — :func:`on_model` wires them to QEMU's model and counts every
access, each of which is an MMIO exit on KVM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vbook.devices.e1000 import E1000State, Eecd, MacReg, e1000_mmio_read, e1000_mmio_write

#: e1000_hw.h: EEPROM_READ_OPCODE_MICROWIRE (110b), EEPROM_CHECKSUM_REG, NODE_ADDRESS_SIZE
EEPROM_READ_OPCODE_MICROWIRE = 0x6
EEPROM_CHECKSUM_REG = 0x3F
NODE_ADDRESS_SIZE = 6
#: e1000_hw.h E1000_EECD_SIZE: a 256-word part (8 address bits) when set
EECD_SIZE = 0x00000200
#: e1000_hw.h E1000_EEPROM_GRANT_ATTEMPTS
EEPROM_GRANT_ATTEMPTS = 1000


@dataclass
class LinuxEeprom:
    """``struct e1000_hw`` as far as the EEPROM goes, with the register accessors."""

    rd: Callable[[int], int]
    wr: Callable[[int, int], None]
    opcode_bits: int = 3
    address_bits: int = 6
    word_size: int = 64

    def flush(self) -> None:
        """``E1000_WRITE_FLUSH``: ``er32(STATUS)``."""
        self.rd(MacReg.STATUS)

    # e1000_init_eeprom_params, the 82540 case
    def init_params(self) -> None:
        eecd = self.rd(MacReg.EECD)
        self.opcode_bits = 3
        self.word_size, self.address_bits = (256, 8) if eecd & EECD_SIZE else (64, 6)

    def raise_ee_clk(self, eecd: int) -> int:
        eecd |= Eecd.SK
        self.wr(MacReg.EECD, eecd)
        self.flush()
        return eecd

    def lower_ee_clk(self, eecd: int) -> int:
        eecd &= ~Eecd.SK
        self.wr(MacReg.EECD, eecd)
        self.flush()
        return eecd

    def shift_out_ee_bits(self, data: int, count: int) -> None:
        mask = 1 << (count - 1)
        eecd = self.rd(MacReg.EECD) & ~Eecd.DO            # microwire
        while mask:
            eecd &= ~Eecd.DI
            if data & mask:
                eecd |= Eecd.DI
            self.wr(MacReg.EECD, eecd)
            self.flush()
            eecd = self.raise_ee_clk(eecd)
            eecd = self.lower_ee_clk(eecd)
            mask >>= 1
        eecd &= ~Eecd.DI
        self.wr(MacReg.EECD, eecd)

    def shift_in_ee_bits(self, count: int) -> int:
        eecd = self.rd(MacReg.EECD) & ~(Eecd.DO | Eecd.DI)
        data = 0
        for _ in range(count):
            data <<= 1
            eecd = self.raise_ee_clk(eecd)
            eecd = self.rd(MacReg.EECD) & ~Eecd.DI
            if eecd & Eecd.DO:
                data |= 1
            eecd = self.lower_ee_clk(eecd)
        return data

    def acquire_eeprom(self) -> bool:
        eecd = self.rd(MacReg.EECD)
        eecd |= Eecd.REQ                                  # mac_type > e1000_82544
        self.wr(MacReg.EECD, eecd)
        eecd = self.rd(MacReg.EECD)
        i = 0
        while not eecd & Eecd.GNT and i < EEPROM_GRANT_ATTEMPTS:
            i += 1
            eecd = self.rd(MacReg.EECD)
        if not eecd & Eecd.GNT:
            self.wr(MacReg.EECD, eecd & ~Eecd.REQ)
            return False
        eecd &= ~(Eecd.DI | Eecd.SK)                      # microwire
        self.wr(MacReg.EECD, eecd)
        eecd |= Eecd.CS
        self.wr(MacReg.EECD, eecd)
        return True

    def standby_eeprom(self) -> None:
        eecd = self.rd(MacReg.EECD)
        eecd &= ~(Eecd.CS | Eecd.SK)
        self.wr(MacReg.EECD, eecd)
        self.flush()
        eecd |= Eecd.SK
        self.wr(MacReg.EECD, eecd)
        self.flush()
        eecd |= Eecd.CS
        self.wr(MacReg.EECD, eecd)
        self.flush()
        eecd &= ~Eecd.SK
        self.wr(MacReg.EECD, eecd)
        self.flush()

    def release_eeprom(self) -> None:
        eecd = self.rd(MacReg.EECD)
        eecd &= ~(Eecd.CS | Eecd.DI)
        self.wr(MacReg.EECD, eecd)
        eecd |= Eecd.SK
        self.wr(MacReg.EECD, eecd)
        self.flush()
        eecd &= ~Eecd.SK
        self.wr(MacReg.EECD, eecd)
        self.flush()
        self.wr(MacReg.EECD, eecd & ~Eecd.REQ)            # mac_type > e1000_82544

    def read_eeprom(self, offset: int, words: int = 1) -> list[int] | None:
        """``e1000_read_eeprom`` → ``e1000_do_read_eeprom`` (Microwire); None on an error."""
        if offset >= self.word_size or words > self.word_size - offset or words == 0:
            return None
        if not self.acquire_eeprom():
            return None
        data = []
        for i in range(words):
            self.shift_out_ee_bits(EEPROM_READ_OPCODE_MICROWIRE, self.opcode_bits)
            self.shift_out_ee_bits(offset + i, self.address_bits)
            data.append(self.shift_in_ee_bits(16))
            self.standby_eeprom()
        self.release_eeprom()
        return data

    def validate_eeprom_checksum(self) -> tuple[bool, list[int]]:
        """``e1000_validate_eeprom_checksum``: the 64 words, one ``read_eeprom`` each."""
        words = []
        for i in range(EEPROM_CHECKSUM_REG + 1):
            w = self.read_eeprom(i, 1)
            if w is None:
                return False, words
            words += w
        return sum(words) & 0xFFFF == 0xBABA, words

    def read_mac_addr(self) -> bytes:
        """``e1000_read_mac_addr``: words 0, 1, 2, low byte first."""
        mac = bytearray()
        for i in range(0, NODE_ADDRESS_SIZE, 2):
            w = self.read_eeprom(i >> 1, 1)
            if w is None:
                raise ValueError("EEPROM Read Error")
            mac += bytes((w[0] & 0xFF, w[0] >> 8))
        return bytes(mac)


@dataclass
class Counted:
    """Register accesses made through :func:`on_model`, by kind."""

    reads: int = 0
    writes: int = 0
    regs: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.reads + self.writes


def on_model(s: E1000State) -> tuple[LinuxEeprom, Counted]:
    """A :class:`LinuxEeprom` whose ``er32`` / ``ew32`` are QEMU's ``e1000_mmio_read`` /
    ``e1000_mmio_write`` on ``s``, and the :class:`Counted` they fill."""
    c = Counted()

    def rd(reg: int) -> int:
        c.reads += 1
        name = MacReg(reg).name
        c.regs[name] = c.regs.get(name, 0) + 1
        return e1000_mmio_read(s, MacReg(reg).offset, 4)

    def wr(reg: int, val: int) -> None:
        c.writes += 1
        name = MacReg(reg).name
        c.regs[name] = c.regs.get(name, 0) + 1
        e1000_mmio_write(s, MacReg(reg).offset, int(val) & 0xFFFFFFFF, 4)

    return LinuxEeprom(rd, wr), c


__all__ = ["Counted", "EEPROM_CHECKSUM_REG", "EEPROM_READ_OPCODE_MICROWIRE", "LinuxEeprom",
           "on_model"]
