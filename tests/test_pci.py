"""The PCI bus: config mechanism #1 through the ports, config space masks, BARs, INTx, DMA.

Offsets and bits are pinned to Linux's <linux/pci_regs.h> by a C oracle
(skipped with the reason when gcc or the header is missing); the behaviour
follows QEMU 9.2.4 hw/pci/pci_host.c, hw/pci/pci.c and hw/pci-host/i440fx.c,
whose text the ``*_source`` tests check where the tree is on the machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from _oracle import need_c, printf_lines, program, run_c
from _sources import QEMU_9, function_body, git_show
from hypothesis import given, settings
from hypothesis import strategies as st

from vbook.devices import pci
from vbook.devices.machine import Machine
from vbook.devices.net_client import MemoryBackend
from vbook.devices.pci import BaseAddress, Command, Config, PCIDevice, Status, config_address
from vbook.errors import VbookError
from vbook.memory import GuestMemory
from vbook.models.qemu_memory import (
    DeviceState,
    MemoryRegionOps,
    MemTxResult,
    address_space_rw,
    memory_region_init_io,
)
from vbook.trace import Trace, TraceRecorder

CF8, CFC = 0xCF8, 0xCFC


def out(m: Machine, port: int, value: int, size: int = 4) -> None:
    address_space_rw(m.address_space_io, port, bytearray(value.to_bytes(size, "little")), True)


def inp(m: Machine, port: int, size: int = 4) -> int:
    buf = bytearray(size)
    address_space_rw(m.address_space_io, port, buf, False)
    return int.from_bytes(buf, "little")


def cfg_read(m: Machine, slot: int, reg: int, size: int = 4, func: int = 0, bus: int = 0) -> int:
    out(m, CF8, config_address(bus, slot, func, reg))
    return inp(m, CFC + (reg & 3), size)


def cfg_write(m: Machine, slot: int, reg: int, value: int, size: int = 4, func: int = 0) -> None:
    out(m, CF8, config_address(0, slot, func, reg))
    out(m, CFC + (reg & 3), value, size)


def traced(**kw) -> tuple[Machine, TraceRecorder]:
    rec = TraceRecorder()
    m = Machine(**kw)
    m.ctx.trace = rec
    return m, rec


def last_pci(rec: TraceRecorder):
    return [e for e in rec.events if e.kind == "pci"][-1]


# --- a device of our own, to show the bus API -----------------------------------------------------

@dataclass(eq=False)
class ToyState(DeviceState):
    """The register behind the toy's I/O BAR."""

    latch: int = 0


def toy_read(s: ToyState, addr: int, size: int) -> int:
    return s.latch


def toy_write(s: ToyState, addr: int, val: int, size: int) -> None:
    s.latch = val


toy_ops = MemoryRegionOps(read=toy_read, write=toy_write, file="tests/test_pci.py")


@dataclass(eq=False)
class ToyDevice(PCIDevice):
    """A PCI device as another device model would write one: IDs, a pin, two BARs."""

    type_name = "toy"
    vendor_id = 0x1234
    device_id = 0x5678
    revision = 0x01
    class_id = 0x0880          # base system peripheral, other
    subsystem_vendor_id = 0x1234
    subsystem_id = 0x0001

    regs: ToyState | None = None

    def realize(self) -> None:
        self.config[Config.INTERRUPT_PIN] = 1
        self.regs = ToyState()
        pci.pci_register_bar(self, 0, BaseAddress.SPACE_IO,
                             memory_region_init_io("toy-io", 0x20, toy_ops, self.regs, "toy"))
        pci.pci_register_bar(self, 2, BaseAddress.SPACE_MEMORY | BaseAddress.MEM_PREFETCH,
                             memory_region_init_io("toy-mmio", 0x1000, toy_ops, self.regs, "toy"))


# --- the board --------------------------------------------------------------------------------

def test_a_board_without_pci_keeps_its_mtree_and_repr():
    m = Machine()
    assert m.pci_bus is None and m.info_pci() == ""
    assert "pci-conf" not in m.info_mtree()
    assert inp(m, CFC) == 0xFFFFFFFF  # nothing at 0xcfc: unassigned_io_read
    assert repr(m) == ("Machine(serial at 0x3f8, isa-debug-exit at 0x501, "
                       "pc-testdev at 0xe0/0xff000000)")


def test_the_host_bridge_is_an_i440fx_at_00_00_0():
    m = Machine(pci=True)
    tree = m.info_mtree()
    assert "0000000000000cf8-0000000000000cfb (prio 0, i/o): pci-conf-idx  [i440FX-pcihost]" in tree
    assert "0000000000000cfc-0000000000000cff (prio 0, i/o): pci-conf-data  [i440FX-pcihost]" in tree
    assert cfg_read(m, 0, Config.VENDOR_ID) == 0x12378086
    assert cfg_read(m, 0, Config.REVISION_ID) == 0x06000002  # class 0600 (host bridge), rev 2
    assert cfg_read(m, 0, Config.SUBSYSTEM_VENDOR_ID) == 0x11001AF4  # QEMU's default subsystem
    assert cfg_read(m, 0, pci.I440FX_SMRAM, 1) == 0x02
    assert cfg_read(m, 0, Config.HEADER_TYPE, 1) == 0
    assert m.info_pci() == ("  Bus  0, device   0, function 0:\n"
                            "    Host bridge: PCI device 8086:1237\n"
                            "      PCI subsystem 1af4:1100\n"
                            '      id ""')


# --- config mechanism #1 ------------------------------------------------------------------------

def test_config_data_at_every_size_and_offset():
    m = Machine(pci=True)
    out(m, CF8, config_address(0, 0, 0, 0))
    assert inp(m, CFC, 4) == 0x12378086
    assert (inp(m, CFC, 2), inp(m, CFC + 2, 2)) == (0x8086, 0x1237)
    assert [inp(m, CFC + k, 1) for k in range(4)] == [0x86, 0x80, 0x37, 0x12]
    # a 2-byte access at 0xcfd is not aligned: the memory core cuts it in two 1-byte ones
    assert inp(m, CFC + 1, 2) == 0x3780


def test_config_writes_at_every_size():
    m = Machine(pci=True)
    cfg_write(m, 0, Config.INTERRUPT_LINE, 0x0B, 1)           # 1 byte at 0xcfc + 0
    assert cfg_read(m, 0, Config.INTERRUPT_LINE, 1) == 0x0B
    cfg_write(m, 0, Config.CACHE_LINE_SIZE, 0x10, 1)          # 1 byte at 0xcfc + 0
    cfg_write(m, 0, Config.COMMAND, Command.MASTER, 2)        # 2 bytes at 0xcfc + 0
    assert cfg_read(m, 0, Config.COMMAND, 2) == Command.MASTER
    cfg_write(m, 0, 0x40, 0xDEADBEEF, 4)                      # device-specific: all writable
    assert cfg_read(m, 0, 0x40) == 0xDEADBEEF
    cfg_write(m, 0, 0x42, 0x1234, 2)                          # 2 bytes at 0xcfc + 2
    assert cfg_read(m, 0, 0x40) == 0x1234BEEF
    cfg_write(m, 0, 0x43, 0x99, 1)                            # 1 byte at 0xcfc + 3
    assert cfg_read(m, 0, 0x40) == 0x9934BEEF


def test_config_address_takes_only_a_4_byte_write_and_reads_back_whole():
    m = Machine(pci=True)
    out(m, CF8, 0x80000800)
    assert m.pci_host.config_reg == 0x80000800
    out(m, CF8, 0x12, 1)
    out(m, CF8, 0x3456, 2)
    out(m, CF8 + 2, 0x7788, 2)
    assert m.pci_host.config_reg == 0x80000800   # pci_host_config_write: addr != 0 || len != 4
    assert inp(m, CF8, 4) == 0x80000800
    assert inp(m, CF8, 2) == 0x0800
    # QEMU returns config_reg to any offset: a byte read of 0xcf9 gives its *low* byte
    assert inp(m, CF8 + 1, 1) == 0x00 and inp(m, CF8 + 3, 1) == 0x00
    out(m, CF8, 0x80000834)
    assert inp(m, CF8 + 1, 1) == 0x34


def test_without_the_enable_bit_config_data_is_all_ones_and_writes_vanish():
    m = Machine(pci=True)
    out(m, CF8, config_address(0, 0, 0, 0x40, enable=False))
    assert inp(m, CFC) == 0xFFFFFFFF and inp(m, CFC, 1) == 0xFF
    out(m, CFC, 0x11223344)
    assert cfg_read(m, 0, 0x40) == 0


def test_low_bits_of_config_address_add_to_the_register_like_qemu():
    m = Machine(pci=True)
    out(m, CF8, 0x80000002)               # register 0 | 2: pci_data_read(config_reg | (addr & 3))
    assert inp(m, CFC, 2) == 0x1237       # the device ID, not the vendor ID


def test_absent_slots_functions_and_buses_read_all_ones():
    m = Machine(nics=[MemoryBackend()])
    ids = [cfg_read(m, slot, 0) for slot in range(32)]
    assert ids[:2] == [0x12378086, 0x100E8086]
    assert ids[2:] == [0xFFFFFFFF] * 30
    assert cfg_read(m, 0, 0, func=1) == 0xFFFFFFFF
    assert cfg_read(m, 1, 0, bus=1) == 0xFFFFFFFF
    assert cfg_read(m, 5, 0, 2) == 0xFFFF and cfg_read(m, 5, 0, 1) == 0xFF
    cfg_write(m, 5, Config.COMMAND, 0xFFFF, 2)  # dropped, no error
    assert cfg_read(m, 5, Config.COMMAND) == 0xFFFFFFFF


def test_read_only_bits_stay_and_w1c_bits_clear():
    m = Machine(pci=True)
    cfg_write(m, 0, Config.VENDOR_ID, 0xFFFFFFFF)
    assert cfg_read(m, 0, 0) == 0x12378086                 # IDs are read-only
    cfg_write(m, 0, Config.COMMAND, 0xFFFF, 2)
    assert cfg_read(m, 0, Config.COMMAND, 2) == (Command.IO | Command.MEMORY | Command.MASTER
                                                | Command.SERR | Command.INTX_DISABLE)
    host = m.pci_bus.devices[0]
    host.config[Config.STATUS + 1] |= 0xF9                  # error bits set by "hardware"
    cfg_write(m, 0, Config.STATUS, Status.REC_MASTER_ABORT, 2)
    assert not cfg_read(m, 0, Config.STATUS, 2) & Status.REC_MASTER_ABORT
    assert cfg_read(m, 0, Config.STATUS, 2) & Status.DETECTED_PARITY


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.sampled_from([1, 2, 4]),
                          st.integers(0, 0xFFFFFFFF)), max_size=30))
def test_any_config_write_keeps_the_ids_and_the_model_consistent(writes):
    m = Machine(nics=[MemoryBackend()], ram=GuestMemory(0x10000))
    for reg, size, value in writes:
        cfg_write(m, 1, reg, value & ((1 << (8 * size)) - 1), size)
    assert cfg_read(m, 1, 0) == 0x100E8086
    assert cfg_read(m, 1, Config.REVISION_ID) == 0x02000003
    dev = m.e1000[0]
    for i, r in enumerate(dev.io_regions[:2]):
        assert r.mapped == (r.memory.container is not None)
        if r.mapped:
            assert r.addr == pci.pci_bar_address(dev, i, r.type, r.size)


# --- BARs ----------------------------------------------------------------------------------------

def test_bar_sizing_reads_back_the_size_mask_and_the_type():
    m = Machine(pci=True)
    toy = m.add_pci_device(ToyDevice())
    slot = pci.PCI_SLOT(toy.devfn)
    assert slot == 1
    expected = {0: 0xFFFFFFE1,                      # 32 I/O ports, SPACE_IO
                1: 0, 2: 0xFFFFF008,                # 4 KiB prefetchable memory
                3: 0, 4: 0, 5: 0}                   # not implemented: read 0, sizing gives 0
    for bar, mask in expected.items():
        reg = Config.BASE_ADDRESS_0 + 4 * bar
        cfg_write(m, slot, reg, 0xFFFFFFFF)
        assert cfg_read(m, slot, reg) == mask, bar
    # sizing with decoding off maps nothing
    assert not any(r.mapped for r in toy.io_regions)


def test_a_bar_is_mapped_when_programmed_and_decoding_is_on():
    m, rec = traced(pci=True)
    toy = m.add_pci_device(ToyDevice())
    cfg_write(m, 1, Config.BASE_ADDRESS_0, 0xC000)
    cfg_write(m, 1, Config.BASE_ADDRESS_2, 0xFEB00000)
    assert "toy-io" not in m.info_mtree()                        # COMMAND.IO still 0
    cfg_write(m, 1, Config.COMMAND, Command.IO, 2)
    assert "000000000000c000-000000000000c01f (prio 0, i/o): toy-io  [toy]" in m.info_mtree()
    assert "toy-mmio" not in m.info_mtree()
    out(m, 0xC004, 0x42, 1)
    assert toy.regs.latch == 0x42 and inp(m, 0xC000, 1) == 0x42
    cfg_write(m, 1, Config.COMMAND, Command.IO | Command.MEMORY, 2)
    assert "00000000feb00000-00000000feb00fff (prio 0, i/o): toy-mmio  [toy]" in m.info_mtree()
    # move BAR0: unmapped from the old address, mapped at the new one
    cfg_write(m, 1, Config.BASE_ADDRESS_0, 0xD000)
    assert "c000" not in m.info_mtree() and "000000000000d000-000000000000d01f" in m.info_mtree()
    assert inp(m, 0xC000, 1) == 0xFF
    # decoding off: both gone
    cfg_write(m, 1, Config.COMMAND, 0, 2)
    assert "toy-" not in m.info_mtree()
    labels = [e.label for e in rec.events if e.kind == "pci"]
    assert labels == [
        "pci_update_mappings_add toy 00:01.0 BAR0: 'toy-io' at io 0xc000-0xc01f",
        "pci_update_mappings_add toy 00:01.0 BAR2: 'toy-mmio' at memory 0xfeb00000-0xfeb00fff",
        "pci_update_mappings_del toy 00:01.0 BAR0: 'toy-io' off io 0xc000",
        "pci_update_mappings_add toy 00:01.0 BAR0: 'toy-io' at io 0xd000-0xd01f",
        "pci_update_mappings_del toy 00:01.0 BAR0: 'toy-io' off io 0xd000",
        "pci_update_mappings_del toy 00:01.0 BAR2: 'toy-mmio' off memory 0xfeb00000"]
    assert "BAR0: I/O (not mapped)." in m.info_pci()
    assert "BAR2: 32 bit prefetchable memory (not mapped)." in m.info_pci()


def test_pci_bar_address_refuses_what_qemu_refuses():
    m = Machine(pci=True)
    toy = m.add_pci_device(ToyDevice())
    cfg_write(m, 1, Config.COMMAND, Command.IO | Command.MEMORY, 2)
    for bar, value in ((0, 0), (2, 0)):                     # address 0: not on -M pc
        cfg_write(m, 1, Config.BASE_ADDRESS_0 + 4 * bar, value)
        assert toy.io_regions[bar].addr == pci.PCI_BAR_UNMAPPED
    cfg_write(m, 1, Config.BASE_ADDRESS_2, 0xFFFFF000)      # a 32-bit BAR ending at 4 GiB
    assert toy.io_regions[2].addr == pci.PCI_BAR_UNMAPPED
    cfg_write(m, 1, Config.BASE_ADDRESS_0, 0xFFFFFFE0)      # an I/O BAR ending at 4 GiB
    assert toy.io_regions[0].addr == pci.PCI_BAR_UNMAPPED


def test_a_bar_the_model_cannot_place_stays_unmapped_and_says_why():
    m, rec = traced(pci=True, ram=GuestMemory(0x10000))
    toy = m.add_pci_device(ToyDevice())
    cfg_write(m, 1, Config.COMMAND, Command.IO | Command.MEMORY, 2)
    cfg_write(m, 1, Config.BASE_ADDRESS_0, 0x3E0)           # 0x3e0-0x3ff covers COM1
    r = toy.io_regions[0]
    assert r.addr == 0x3E0 and not r.mapped
    assert "overlaps 'serial'" in last_pci(rec)["why"]
    assert inp(m, 0x3F8 + 5, 1) == 0x60                      # COM1's LSR still answers
    cfg_write(m, 1, Config.BASE_ADDRESS_0, 0x10000)          # past the 64 KiB of ports
    assert toy.io_regions[0].addr == 0x10000 and not toy.io_regions[0].mapped
    cfg_write(m, 1, Config.BASE_ADDRESS_2, 0x8000)           # over guest RAM
    assert not toy.io_regions[2].mapped and "guest RAM" in last_pci(rec)["why"]
    cfg_write(m, 1, Config.BASE_ADDRESS_0, 0xC000)           # somewhere free: mapped again
    assert toy.io_regions[0].mapped
    assert "BAR0: I/O at 0xc000 [0xc01f]." in m.info_pci()


def test_a_device_reset_clears_bars_command_and_line():
    m = Machine(pci=True)
    toy = m.add_pci_device(ToyDevice())
    cfg_write(m, 1, Config.BASE_ADDRESS_0, 0xC000)
    cfg_write(m, 1, Config.INTERRUPT_LINE, 11, 1)
    cfg_write(m, 1, Config.COMMAND, Command.IO, 2)
    assert toy.io_regions[0].mapped
    pci.pci_device_reset(toy)
    assert cfg_read(m, 1, Config.BASE_ADDRESS_0) == BaseAddress.SPACE_IO
    assert cfg_read(m, 1, Config.COMMAND, 2) == 0 and cfg_read(m, 1, Config.INTERRUPT_LINE, 1) == 0
    assert not toy.io_regions[0].mapped and "toy-io" not in m.info_mtree()


def test_slots_are_given_like_qemu_and_conflicts_are_refused():
    m = Machine(pci=True)
    a = m.add_pci_device(ToyDevice())
    b = m.add_pci_device(ToyDevice(), devfn=pci.PCI_DEVFN(5, 0))
    c = m.add_pci_device(ToyDevice())
    assert [d.addr for d in (a, b, c)] == ["00:01.0", "00:05.0", "00:02.0"]
    with pytest.raises(VbookError, match="slot 5 function 0 not available for toy, in use by toy"):
        m.add_pci_device(ToyDevice(), devfn=pci.PCI_DEVFN(5, 0))
    with pytest.raises(VbookError, match="single function device"):
        m.add_pci_device(ToyDevice(), devfn=pci.PCI_DEVFN(5, 1))
    assert cfg_read(m, 5, Config.SUBSYSTEM_VENDOR_ID) == 0x00011234  # its own subsystem IDs


# --- INTx ----------------------------------------------------------------------------------------

def test_pci_set_irq_drives_the_pirq_and_status_interrupt():
    m, rec = traced(pci=True)
    toy = m.add_pci_device(ToyDevice())                    # slot 1, INTA → PIRQA
    pci.pci_set_irq(toy, 1)
    assert m.pirq == [1, 0, 0, 0] and toy.irq_state == 1
    assert cfg_read(m, 1, Config.STATUS, 2) & Status.INTERRUPT
    pci.pci_set_irq(toy, 1)                                # no change: nothing new
    n = len(rec.events)
    pci.pci_set_irq(toy, 1)
    assert len(rec.events) == n
    pci.pci_set_irq(toy, 0)
    assert m.pirq == [0, 0, 0, 0] and not cfg_read(m, 1, Config.STATUS, 2) & Status.INTERRUPT
    kinds = [(e.actor, e["fn"], e["level"]) for e in rec.events if e.kind == "irq"]
    assert kinds == [("qemu", "pci_irq_handler", 1), ("qemu", "piix_set_pci_irq", 1),
                     ("qemu", "pci_irq_handler", 0), ("qemu", "piix_set_pci_irq", 0)]


def test_intx_disable_masks_the_line_and_lifting_it_reasserts():
    m = Machine(pci=True)
    toy = m.add_pci_device(ToyDevice())
    cfg_write(m, 1, Config.COMMAND, Command.INTX_DISABLE, 2)
    pci.pci_set_irq(toy, 1)
    assert m.pirq[0] == 0 and cfg_read(m, 1, Config.STATUS, 2) & Status.INTERRUPT
    cfg_write(m, 1, Config.COMMAND, 0, 2)                  # pci_update_irq_disabled
    assert m.pirq[0] == 1
    cfg_write(m, 1, Config.COMMAND, Command.INTX_DISABLE, 2)
    assert m.pirq[0] == 0


def test_devices_sharing_a_pirq_keep_it_up_until_both_lower_it():
    m = Machine(pci=True)
    a = m.add_pci_device(ToyDevice(), devfn=pci.PCI_DEVFN(1, 0))   # INTA + slot 1 - 1 → A
    b = m.add_pci_device(ToyDevice(), devfn=pci.PCI_DEVFN(5, 0))   # INTA + slot 5 - 1 → A
    c = m.add_pci_device(ToyDevice(), devfn=pci.PCI_DEVFN(2, 0))   # INTA + 1 → PIRQB
    pci.pci_set_irq(a, 1)
    pci.pci_set_irq(b, 1)
    pci.pci_set_irq(c, 1)
    assert m.pirq == [1, 1, 0, 0] and m.pci_bus.irq_count[:2] == [2, 1]
    pci.pci_set_irq(a, 0)
    assert m.pirq[0] == 1
    pci.pci_set_irq(b, 0)
    assert m.pirq[0] == 0


def test_a_device_without_a_pin_cannot_raise_intx():
    m = Machine(pci=True)
    with pytest.raises(VbookError, match="no INTx pin"):
        pci.pci_set_irq(m.pci_bus.devices[0], 1)


# --- DMA ----------------------------------------------------------------------------------------

def test_dma_needs_bus_mastering():
    ram = GuestMemory(0x10000)
    ram.write(0x2000, b"guest data")
    m, rec = traced(pci=True, ram=ram)
    toy = m.add_pci_device(ToyDevice())
    assert pci.pci_dma_read(toy, 0x2000, 10) == bytes(10)
    pci.pci_dma_write(toy, 0x2000, b"X")
    assert ram.read(0x2000, 1) == b"g"
    assert "bus master disabled" in rec.events[-1]["notes"][0]
    cfg_write(m, 1, Config.COMMAND, Command.MASTER, 2)
    assert pci.pci_dma_read(toy, 0x2000, 10) == b"guest data"
    assert pci.pci_dma_write(toy, 0x2000, b"G") == MemTxResult.OK
    assert ram.read(0x2000, 5) == b"Guest"
    ev = rec.events[-1]
    assert (ev.actor, ev.kind, ev["fn"], ev["addr"], ev["data"]) == (
        "qemu", "dma", "pci_dma_write", 0x2000, "47")


def test_dma_outside_ram_reads_zeros_and_never_raises():
    ram = GuestMemory(0x10000)
    ram.write(0xFFFC, b"ABCD")
    m, rec = traced(pci=True, ram=ram)
    toy = m.add_pci_device(ToyDevice())
    cfg_write(m, 1, Config.COMMAND, Command.MASTER, 2)
    assert pci.pci_dma_read(toy, 0xFFFC, 8) == b"ABCD" + bytes(4)   # half in RAM
    assert pci.pci_dma_read(toy, 0x1_0000_0000, 4) == bytes(4)
    assert pci.pci_dma_read(toy, 2**64 - 2, 4) == bytes(2) + b"\0\0"   # wraps to RAM at 0
    ram.write(0, b"RA")
    assert pci.pci_dma_read(toy, 2**64 - 2, 4) == bytes(2) + b"RA"
    assert pci.pci_dma_write(toy, 0x20000, b"lost") == MemTxResult.DECODE_ERROR
    # one note for the hole, not one event per 4-byte piece
    dma = [e for e in rec.events if e.kind == "dma"]
    hole = "no RAM or region there (unassigned_mem_{}, MEMTX_DECODE_ERROR)"
    assert [list(e["notes"]) for e in dma] == [
        [f"0x10000+0x4: {hole.format('read')}"],
        [f"0x100000000+0x4: {hole.format('read')}"],
        [f"0xfffffffffffffffe+0x2: {hole.format('read')}"],
        [f"0xfffffffffffffffe+0x2: {hole.format('read')}"],
        [f"0x20000+0x4: {hole.format('write')}"]]
    assert len(dma) == 5
    got = pci.pci_dma_fetch(toy, 0xFFFE, 4)                       # no event of its own
    assert (got.data, got.result, len(got.notes)) == (b"CD\0\0", MemTxResult.DECODE_ERROR, 1)


def test_dma_reaches_another_devices_mmio_but_not_its_own():
    m, rec = traced(pci=True, ram=GuestMemory(0x10000))
    toy = m.add_pci_device(ToyDevice())
    cfg_write(m, 1, Config.BASE_ADDRESS_2, 0xFEB00000)
    cfg_write(m, 1, Config.COMMAND, Command.MASTER | Command.MEMORY, 2)
    pci.pci_dma_write(toy, 0xFF000010, b"\x11\x22\x33\x44")          # pc-testdev-iomem
    assert m.testdev.iomem_buf[0x10:0x14] == b"\x11\x22\x33\x44"
    toy.regs.latch = 7
    assert pci.pci_dma_read(toy, 0xFEB00000, 4) == bytes(4)
    assert list(rec.events[-1]["notes"]) == ["Blocked re-entrant IO on MemoryRegion: toy-mmio at "
                                       "addr: 0xfeb00000 (MEMTX_ACCESS_ERROR)"]
    assert rec.events[-1]["result"] == MemTxResult.ACCESS_ERROR


def test_the_trace_of_pci_work_round_trips_as_json():
    m, rec = traced(nics=[MemoryBackend()], ram=GuestMemory(0x10000))
    cfg_read(m, 1, 0)
    cfg_write(m, 1, Config.BASE_ADDRESS_0, 0xFEBC0000)
    cfg_write(m, 1, Config.COMMAND, Command.MEMORY | Command.MASTER, 2)
    t = rec.freeze()
    assert Trace.from_json(t.to_json()) == t
    labels = [e.label for e in t.events if e.actor == "device"]
    assert labels[:2] == ["pci_host_config_write CONFIG_ADDRESS ← 0x80000800 (enable, 00:01.0 "
                          "reg 0x00 VENDOR_ID)",
                          "pci_host_data_read → pci_data_read 00:01.0 e1000 [0x00] VENDOR_ID = "
                          "0x100e8086 (len 4)"]


# --- constants: the C oracle against <linux/pci_regs.h> ------------------------------------------

PCI_REGS_H = "/usr/include/linux/pci_regs.h"


def _pci_expectations() -> dict[str, int]:
    """Linux macro -> the Python value (``__members__``: the 0-valued BAR bits too)."""
    exp = {f"PCI_{n}": int(c) for n, c in Config.__members__.items()}
    exp.update({f"PCI_COMMAND_{n}": int(c) for n, c in Command.__members__.items()})
    exp.update({f"PCI_STATUS_{n}": int(c) for n, c in Status.__members__.items() if n != "M66MHZ"})
    exp["PCI_STATUS_66MHZ"] = int(Status.M66MHZ)
    exp.update({f"PCI_BASE_ADDRESS_{n}": int(c) for n, c in BaseAddress.__members__.items()})
    exp.update({f"PCI_HEADER_TYPE_{n}": int(c) for n, c in pci.HeaderType.__members__.items()})
    exp.update({"(unsigned int)PCI_BASE_ADDRESS_MEM_MASK": pci.PCI_BASE_ADDRESS_MEM_MASK,
                "(unsigned int)PCI_BASE_ADDRESS_IO_MASK": pci.PCI_BASE_ADDRESS_IO_MASK,
                "PCI_ROM_ADDRESS_ENABLE": pci.PCI_ROM_ADDRESS_ENABLE,
                "PCI_CFG_SPACE_SIZE": pci.PCI_CFG_SPACE_SIZE,
                "PCI_STD_HEADER_SIZEOF": pci.PCI_STD_HEADER_SIZEOF,
                "PCI_STD_NUM_BARS": pci.PCI_STD_NUM_BARS})
    return exp


@pytest.fixture(scope="module")
def pci_regs_values(tmp_path_factory):
    need_c(PCI_REGS_H)
    body = printf_lines({k: k for k in _pci_expectations()})
    return run_c(tmp_path_factory.mktemp("pci_oracle"), program(["linux/pci_regs.h"], body))


@pytest.mark.parametrize("macro", sorted(_pci_expectations()))
def test_pci_constants_match_linux_pci_regs_h(pci_regs_values, macro):
    assert _pci_expectations()[macro] == pci_regs_values[macro]


# --- the QEMU 9.2.4 sources, where present -------------------------------------------------------

def qemu(path: str) -> str:
    return git_show(QEMU_9, "HEAD", path)


def test_pci_host_source():
    src = qemu("hw/pci/pci_host.c")
    body = function_body(src, "static void pci_host_config_write(")
    assert "if (addr != 0 || len != 4) {\n        return;\n    }\n    s->config_reg = val;" in body
    assert "    if (s->config_reg & (1u << 31))\n        pci_data_write(s->bus, s->config_reg " \
           "| (addr & 3), val, len);" in src
    assert "    if (!(s->config_reg & (1U << 31))) {\n        return 0xffffffff;" in src
    assert "        return ~0x0;\n    }\n\n    return pci_host_config_read_common(" in src
    i440 = qemu("hw/pci-host/i440fx.c")
    assert "memory_region_add_subregion(s->io_memory, 0xcf8, &phb->conf_mem);" in i440
    assert "memory_region_add_subregion(s->io_memory, 0xcfc, &phb->data_mem);" in i440
    assert '"pci-conf-idx", 4);' in i440 and '"pci-conf-data", 4);' in i440
    assert "k->device_id = PCI_DEVICE_ID_INTEL_82441;\n    k->revision = 0x02;" in i440
    assert "dev->config[I440FX_SMRAM] = 0x02;" in i440
    ids = qemu("include/hw/pci/pci_ids.h")
    for name, v in (("PCI_DEVICE_ID_INTEL_82441", 0x1237), ("PCI_VENDOR_ID_INTEL", 0x8086),
                    ("PCI_CLASS_NETWORK_ETHERNET", 0x0200), ("PCI_CLASS_BRIDGE_HOST", 0x0600)):
        line = next(ln for ln in ids.splitlines() if ln.startswith(f"#define {name} "))
        assert int(line.split()[2], 16) == v
    h = qemu("include/hw/pci/pci.h")
    assert "#define PCI_SUBVENDOR_ID_REDHAT_QUMRANET 0x1af4" in h
    assert "#define PCI_SUBDEVICE_ID_QEMU            0x1100" in h
    assert "#define PCI_BAR_UNMAPPED (~(pcibus_t)0)" in h


def test_pci_core_source():
    src = qemu("hw/pci/pci.c")
    wmask = function_body(src, "static void pci_init_wmask(")
    assert ("PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER |\n"
            "                 PCI_COMMAND_INTX_DISABLE);") in wmask
    assert "PCI_COMMAND_SERR" in wmask and "dev->wmask[PCI_INTERRUPT_LINE] = 0xff;" in wmask
    bar = function_body(src, "void pci_register_bar(")
    assert "wmask = ~(size - 1);" in bar
    addr = function_body(src, "pcibus_t pci_bar_address(")
    assert "(!allow_0_address && new_addr == 0)" in addr
    assert "last_addr >= UINT32_MAX" in addr
    assert "new_addr = PCI_BAR_UNMAPPED;" in src and "memory_region_add_subregion_overlap(" \
        "r->address_space,\n                                                r->addr, r->memory, 1);" in src
    piix = qemu("hw/i386/pc_piix.c")
    assert "slot_addend = PCI_SLOT(pci_dev->devfn) - 1;\n    return (pci_intx + slot_addend) & 3;" \
        in piix
