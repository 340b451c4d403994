"""Linux 6.1's Microwire EEPROM read (vbook.devices.e1000_eeprom_linux) against QEMU's e1000.

The transliteration must read the words QEMU's model holds, and cost what the functions'
bodies say: acquire 5 accesses, per word 3 + 6 bits out (6 each, +2), 16 bits in (5 each, +1)
and a standby of 9, release 7 — 160 for a one-word ``e1000_read_eeprom``. The bodies are
checked in the 6.1 tree, so a change there fails here.
"""

from __future__ import annotations

import re

from _sources import LINUX_6_1, LINUX_6_1_REV, git_show

from vbook.devices.e1000_eeprom_linux import LinuxEeprom, on_model
from vbook.devices.machine import Machine
from vbook.devices.net_client import MemoryBackend


def _nic():
    return Machine(nics=[MemoryBackend()]).e1000[0]


def test_the_words_are_qemus_and_the_checksum_holds():
    s = _nic()
    hw, c = on_model(s)
    hw.init_params()
    assert (hw.word_size, hw.address_bits, hw.opcode_bits) == (64, 6, 3)
    ok, words = hw.validate_eeprom_checksum()
    assert ok and words == list(s.eeprom_data[:64])
    assert hw.read_mac_addr() == bytes.fromhex("525400123456")


def test_one_word_costs_160_register_accesses():
    hw, c = on_model(_nic())
    hw.read_eeprom(5, 1)
    acquire, release, standby = 5, 7, 9
    out = lambda bits: 1 + 6 * bits + 1                     # noqa: E731
    inn = 1 + 5 * 16
    assert c.total == acquire + out(3) + out(6) + inn + standby + release == 160
    assert c.regs == {"EECD": c.total - c.regs["STATUS"], "STATUS": 3 * 3 + 3 * 6 + 2 * 16 + 4 + 2}


def test_the_bring_up_reads_cost_10720_accesses():
    hw, c = on_model(_nic())
    hw.validate_eeprom_checksum()
    hw.read_mac_addr()
    assert c.total == 67 * 160 == 10_720


def test_a_word_past_the_end_or_no_grant_is_an_error():
    hw, c = on_model(_nic())
    assert hw.read_eeprom(64, 1) is None and c.total == 0
    reads = iter([0] * 2000)
    denied = LinuxEeprom(lambda reg: next(reads), lambda reg, v: None)   # GNT never comes
    assert denied.read_eeprom(0, 1) is None


def _body(src: str, sig: str) -> str:
    start = src.rindex(sig)
    return re.sub(r"/\*.*?\*/", "", src[start:src.index("\n}\n", start)], flags=re.S)


def test_the_functions_in_the_6_1_tree():
    src = git_show(LINUX_6_1, LINUX_6_1_REV, "drivers/net/ethernet/intel/e1000/e1000_hw.c")
    params = _body(src, "s32 e1000_init_eeprom_params(struct e1000_hw *hw)")
    case = params[params.index("case e1000_82540:"):params.index("case e1000_82541:")]
    assert "eeprom->type = e1000_eeprom_microwire;" in case and "eeprom->opcode_bits = 3;" in case
    assert "eeprom->word_size = 64;\n\t\t\teeprom->address_bits = 6;" in case
    out = _body(src, "static void e1000_shift_out_ee_bits(")
    assert re.search(r"ew32\(EECD, eecd\);\s*E1000_WRITE_FLUSH\(\);\s*udelay\(eeprom->delay_usec\);"
                     r"\s*e1000_raise_ee_clk\(hw, &eecd\);\s*e1000_lower_ee_clk\(hw, &eecd\);", out)
    inn = _body(src, "static u16 e1000_shift_in_ee_bits(")
    assert re.search(r"e1000_raise_ee_clk\(hw, &eecd\);\s*eecd = er32\(EECD\);", inn)
    for clk in ("static void e1000_raise_ee_clk(", "static void e1000_lower_ee_clk("):
        assert re.search(r"ew32\(EECD, \*eecd\);\s*E1000_WRITE_FLUSH\(\);", _body(src, clk))
    standby = _body(src, "static void e1000_standby_eeprom(")
    micro = standby[standby.index("e1000_eeprom_microwire"):standby.index("e1000_eeprom_spi")]
    assert micro.count("ew32(EECD, eecd);") == 4 and micro.count("E1000_WRITE_FLUSH();") == 4
    release = _body(src, "static void e1000_release_eeprom(")
    rel = release[release.index("e1000_eeprom_microwire"):]
    assert rel.count("ew32(EECD, eecd);") == 4 and rel.count("E1000_WRITE_FLUSH();") == 2
    acquire = _body(src, "static s32 e1000_acquire_eeprom(")
    assert "if (hw->mac_type > e1000_82544) {\n\t\teecd |= E1000_EECD_REQ;" in acquire
    read = _body(src, "static s32 e1000_do_read_eeprom(")
    assert re.search(r"e1000_shift_out_ee_bits\(hw,\s*EEPROM_READ_OPCODE_MICROWIRE,", read)
    assert "data[i] = e1000_shift_in_ee_bits(hw, 16);\n\t\t\te1000_standby_eeprom(hw);" in read
    check = _body(src, "s32 e1000_validate_eeprom_checksum(struct e1000_hw *hw)")
    assert "for (i = 0; i < (EEPROM_CHECKSUM_REG + 1); i++) {\n\t\tif (e1000_read_eeprom(hw, i, 1," in check
    main = git_show(LINUX_6_1, LINUX_6_1_REV, "drivers/net/ethernet/intel/e1000/e1000_main.c")
    for code in (src, main):                                           # EERD is never used
        code = re.sub(r"/\*.*?\*/", "", code, flags=re.S)
        assert not re.search(r"\b(?:E1000_)?EERD\b", code)
