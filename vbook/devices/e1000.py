"""The emulated Intel 82540EM (``-device e1000``), as QEMU 9.2.4 hw/net/e1000.c models it.

A PCI function 8086:100E, class 0x020000 (Ethernet), subsystem 1af4:1100
(QEMU's default), revision 3, INTA. BAR0 is the register file, 128 KiB of
MMIO (``PNPMMIO_SIZE``) whose 4-byte registers are ``mac_reg[(addr & 0x1ffff)
>> 2]``; BAR1 is 64 I/O ports (``IOPORT_SIZE``) that QEMU 9.2.4 registers but
leaves empty — ``e1000_io_read`` returns 0 and ``e1000_io_write`` ignores the
write (no IOADDR/IODATA window), so the model has the same empty ops.

**Registers** (``e1000_mmio_write`` → ``macreg_writeops[index]``,
``e1000_mmio_read`` → ``macreg_readops[index]``; QEMU's full tables, so a
register QEMU stores is stored here): CTRL (``set_ctrl``: RST self-clears),
STATUS (read-only, link up: LU|FD|SPEED_1000 at reset), EECD (the Microwire
EEPROM bit-banged by ``set_eecd`` / ``get_eecd``), EERD (``flash_eerd_read``),
MDIC (PHY registers, ``set_mdic``), ICR (read-to-clear: ``mac_icr_read``),
ICS (``set_ics``), IMS/IMC (``set_ims``/``set_imc``), RCTL (``set_rx_control``),
TCTL and TDT (both ``set_tctl`` → ``start_xmit``), RDBAL/RDBAH/TDBAL/TDBAH,
RDLEN/TDLEN (``set_dlen``: a multiple of 128), RDH/TDH (16 bits), RDT
(``set_rdt``), RA (the MAC, from the EEPROM at reset), MTA, VFTA and the
statistics counters (read-to-clear).

**Transmit** (``start_xmit``, called by every write of TCTL or TDT): while
TDH != TDT, DMA-read the 16-byte descriptor at TDBA + 16·TDH,
``process_tx_desc`` (DMA-read its buffer into ``tx.data``; at EOP
``xmit_seg`` → ``e1000_send_packet`` → ``qemu_send_packet``), write DD back if
RS was set (``txdesc_writeback``), advance TDH and wrap it at TDLEN/16; then
``set_ics(TXQE | TXDW if any write-back)`` → ``set_interrupt_cause`` →
``pci_set_irq``. A bogus ring cannot run away: the loop stops when TDH comes
back to where it started, or after one descriptor when TDH started outside
the ring (``tdh_start >= TDLEN / 16``, also TDLEN = 0) — QEMU's own check.
Context and data descriptors (checksum offload, TSO, VLAN insertion) are
handled as QEMU handles them.

**Receive** (``e1000_receive`` / ``e1000_receive_iov``, the NIC's
``NetClientInfo.receive``): only with link up, RCTL.EN and bus mastering on
(``e1000x_rx_ready``), and a free descriptor (``e1000_has_rxbufs``: RDH != RDT)
— otherwise the net layer queues the frame until RDT is written. The frame is
filtered (``receive_filter``: RA, broadcast with BAM, UPE/MPE, the MTA hash,
VLAN filter), its VLAN tag stripped when CTRL.VME, then written from RDH on,
``rxbuf_size`` bytes per descriptor; each descriptor gets its length and
status DD (and EOP|IXSM on the last). The length counts the 4-byte FCS that
QEMU never has (``e1000x_fcs_len``) unless RCTL.SECRC strips it: a 60-byte
frame gives length 64. Frames under 60 bytes arrive padded by the backend
(``eth_pad_short_frame`` in ``tap_send``), not by the device. Then RDH
advances and ``set_ics(RXT0 [| RXDMT0])``.

Bad input from the guest gets what QEMU does, never a model error:
descriptors or buffers outside RAM read as zeros (writes vanish), TDT or RDH
past the ring stop after one lap or one descriptor, TDLEN 0 handles one
descriptor, a 1-byte register write is a 4-byte write of the whole register
(``impl.min_access_size = 4``).

Every step is recorded (actor ``device``, kinds ``tx``, ``rx``, ``irq``,
``reg``) with QEMU's function names and the register and descriptor values,
plus ``dma`` events from :mod:`vbook.devices.pci` and ``net`` events from
:mod:`vbook.devices.net_client`, so a widget can show a packet's way.

Left out, because the model has no virtual clock: interrupt mitigation
(``mit_timer``: QEMU delays a second rising edge within ITR/TADV/RADV of the
first; here every edge raises the line at once), the 500 ms autonegotiation
timer (an ANRESTART through MDIC completes at once, with LSC), and the 1 s
``flush_queue_timer`` after an RCTL write (QEMU refuses frames for that
second and then flushes; here the flush is immediate). Also left out:
``mac_reg_access`` (the ``extra_mac_registers`` flag is on by default, so
every register in the tables is reachable), migration, the option ROM, and
QEMU's use of uninitialised stack bytes when a frame is shorter than 18
bytes (the filter sees zeros here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from vbook.devices import net_client as net
from vbook.devices.net_client import NetClientInfo, NetClientState
from vbook.devices.pci import (
    PCI_CLASS_NETWORK_ETHERNET,
    PCI_VENDOR_ID_INTEL,
    BaseAddress,
    Command,
    Config,
    PCIDevice,
    in_function,
    pci_default_write_config,
    pci_dma_fetch,
    pci_dma_read,
    pci_dma_write,
    pci_register_bar,
    pci_set_irq,
    range_covers_byte,
)
from vbook.models.qemu_memory import (
    AccessConstraints,
    MemoryRegion,
    MemoryRegionOps,
    memory_region_init_io,
)

FILE = "hw/net/e1000.c"
X_FILE = "hw/net/e1000x_common.c"

#: hw/net/e1000.c
IOPORT_SIZE = 0x40
PNPMMIO_SIZE = 0x20000
MAXIMUM_ETHERNET_HDR_LEN = net.ETH_HLEN + 4
#: hw/net/e1000x_regs.h
E1000_DEV_ID_82540EM = 0x100E
E1000_PHY_ID2_8254xx_DEFAULT = 0xC20
EEPROM_CHECKSUM_REG = 0x3F
EEPROM_SUM = 0xBABA
EEPROM_READ_OPCODE_MICROWIRE = 0x6
E1000_MC_TBL_SIZE = 128
E1000_VLAN_FILTER_TBL_SIZE = 128
E1000_RCTL_MO_SHIFT = 12
E1000_EEPROM_RW_REG_DATA = 16
E1000_EEPROM_RW_REG_DONE = 0x10
E1000_EEPROM_RW_REG_START = 1
E1000_EEPROM_RW_ADDR_SHIFT = 8
#: include/net/eth.h
ETH_P_VLAN = 0x8100
#: one descriptor, TX or RX (``sizeof(struct e1000_tx_desc)``)
DESC_SIZE = 16
#: ``sizeof(tp->data)``
TX_DATA_SIZE = 0x10000
#: hw/net/e1000.c: ``E1000_FLAG_MAC | E1000_FLAG_TSO | E1000_FLAG_VET`` (all default on)
COMPAT_FLAGS = (1 << 2) | (1 << 3) | (1 << 4)
E1000_FLAG_VET = 1 << 4


class MacReg(IntEnum):
    """``mac_reg[]`` indices: QEMU's ``defreg(x) = E1000_x >> 2`` (hw/net/e1000_common.h).

    The byte offset in BAR0 is ``4 * index`` (:attr:`offset`), the ``E1000_*``
    constants of hw/net/e1000_regs.h and e1000x_regs.h (QEMU 9.2.4).
    Arrays (RA, MTA, VFTA, …) are their first element.
    """

    CTRL = 0x00000 >> 2
    STATUS = 0x00008 >> 2
    EECD = 0x00010 >> 2
    EERD = 0x00014 >> 2
    MDIC = 0x00020 >> 2
    VET = 0x00038 >> 2
    ICR = 0x000C0 >> 2
    ITR = 0x000C4 >> 2
    ICS = 0x000C8 >> 2
    IMS = 0x000D0 >> 2
    IMC = 0x000D8 >> 2
    RCTL = 0x00100 >> 2
    TCTL = 0x00400 >> 2
    AIT = 0x00458 >> 2
    LEDCTL = 0x00E00 >> 2
    PBA = 0x01000 >> 2
    RDFH = 0x02410 >> 2
    RDFT = 0x02418 >> 2
    RDFHS = 0x02420 >> 2
    RDFTS = 0x02428 >> 2
    RDFPC = 0x02430 >> 2
    RDBAL = 0x02800 >> 2
    RDBAH = 0x02804 >> 2
    RDLEN = 0x02808 >> 2
    RDH = 0x02810 >> 2
    RDT = 0x02818 >> 2
    RDTR = 0x02820 >> 2
    RADV = 0x0282C >> 2
    TDFH = 0x03410 >> 2
    TDFT = 0x03418 >> 2
    TDFHS = 0x03420 >> 2
    TDFTS = 0x03428 >> 2
    TDFPC = 0x03430 >> 2
    TDBAL = 0x03800 >> 2
    TDBAH = 0x03804 >> 2
    TDLEN = 0x03808 >> 2
    TDH = 0x03810 >> 2
    TDT = 0x03818 >> 2
    TXDCTL = 0x03828 >> 2
    TADV = 0x0382C >> 2
    CRCERRS = 0x04000 >> 2
    ALGNERRC = 0x04004 >> 2
    SYMERRS = 0x04008 >> 2
    RXERRC = 0x0400C >> 2
    MPC = 0x04010 >> 2
    SCC = 0x04014 >> 2
    ECOL = 0x04018 >> 2
    MCC = 0x0401C >> 2
    LATECOL = 0x04020 >> 2
    COLC = 0x04028 >> 2
    DC = 0x04030 >> 2
    TNCRS = 0x04034 >> 2
    SEQEC = 0x04038 >> 2
    CEXTERR = 0x0403C >> 2
    RLEC = 0x04040 >> 2
    XONRXC = 0x04048 >> 2
    XONTXC = 0x0404C >> 2
    XOFFRXC = 0x04050 >> 2
    XOFFTXC = 0x04054 >> 2
    FCRUC = 0x04058 >> 2
    PRC64 = 0x0405C >> 2
    PRC127 = 0x04060 >> 2
    PRC255 = 0x04064 >> 2
    PRC511 = 0x04068 >> 2
    PRC1023 = 0x0406C >> 2
    PRC1522 = 0x04070 >> 2
    GPRC = 0x04074 >> 2
    BPRC = 0x04078 >> 2
    MPRC = 0x0407C >> 2
    GPTC = 0x04080 >> 2
    GORCL = 0x04088 >> 2
    GORCH = 0x0408C >> 2
    GOTCL = 0x04090 >> 2
    GOTCH = 0x04094 >> 2
    RNBC = 0x040A0 >> 2
    RUC = 0x040A4 >> 2
    RFC = 0x040A8 >> 2
    ROC = 0x040AC >> 2
    RJC = 0x040B0 >> 2
    MGTPRC = 0x040B4 >> 2
    MGTPDC = 0x040B8 >> 2
    MGTPTC = 0x040BC >> 2
    TORL = 0x040C0 >> 2
    TORH = 0x040C4 >> 2
    TOTL = 0x040C8 >> 2
    TOTH = 0x040CC >> 2
    TPR = 0x040D0 >> 2
    TPT = 0x040D4 >> 2
    PTC64 = 0x040D8 >> 2
    PTC127 = 0x040DC >> 2
    PTC255 = 0x040E0 >> 2
    PTC511 = 0x040E4 >> 2
    PTC1023 = 0x040E8 >> 2
    PTC1522 = 0x040EC >> 2
    MPTC = 0x040F0 >> 2
    BPTC = 0x040F4 >> 2
    TSCTC = 0x040F8 >> 2
    TSCTFC = 0x040FC >> 2
    MTA = 0x05200 >> 2
    RA = 0x05400 >> 2
    VFTA = 0x05600 >> 2
    WUC = 0x05800 >> 2
    WUFC = 0x05808 >> 2
    WUS = 0x05810 >> 2
    MANC = 0x05820 >> 2
    IPAV = 0x05838 >> 2
    IP4AT = 0x05840 >> 2
    IP6AT = 0x05880 >> 2
    WUPM = 0x05A00 >> 2
    SWSM = 0x05B50 >> 2
    FFLT = 0x05F00 >> 2
    FFMT = 0x09000 >> 2
    FFVT = 0x09800 >> 2
    PBM = 0x10000 >> 2

    @property
    def offset(self) -> int:
        """The register's byte offset in BAR0 (``E1000_<name>``)."""
        return self.value << 2


#: the register arrays: (first index, number of 32-bit registers)
ARRAYS = {MacReg.RA: 32, MacReg.MTA: E1000_MC_TBL_SIZE, MacReg.VFTA: E1000_VLAN_FILTER_TBL_SIZE,
          MacReg.IP6AT: 4, MacReg.IP4AT: 7, MacReg.FFLT: 7, MacReg.WUPM: 32, MacReg.FFMT: 255,
          MacReg.FFVT: 255, MacReg.PBM: 16384}


class Ctrl(IntEnum):
    """``E1000_CTRL_*`` — hw/net/e1000x_regs.h (QEMU 9.2.4)."""

    SLU = 0x00000040       # set link up
    SPD_1000 = 0x00000200
    SWDPIN0 = 0x00040000
    SWDPIN2 = 0x00100000
    RST = 0x04000000       # global reset (self-clearing)
    VME = 0x40000000       # VLAN mode


class Status(IntEnum):
    """``E1000_STATUS_*`` — hw/net/e1000x_regs.h, e1000_regs.h (QEMU 9.2.4)."""

    FD = 0x00000001
    LU = 0x00000002        # link up
    SPEED_1000 = 0x00000080
    ASDV = 0x00000300
    MTXCKOK = 0x00000400
    GIO_MASTER_ENABLE = 0x00080000


class Icr(IntEnum):
    """``E1000_ICR_*`` = ``E1000_ICS_*`` interrupt causes — hw/net/e1000x_regs.h (QEMU 9.2.4)."""

    TXDW = 0x00000001      # transmit descriptor written back
    TXQE = 0x00000002      # transmit queue empty
    LSC = 0x00000004       # link status change
    RXSEQ = 0x00000008
    RXDMT0 = 0x00000010    # RX descriptors below the minimum threshold
    RXO = 0x00000040       # receiver overrun
    RXT0 = 0x00000080      # receiver timer (a frame was received)
    MDAC = 0x00000200      # MDIO access complete
    INT_ASSERTED = 0x80000000


class Rctl(IntEnum):
    """``E1000_RCTL_*`` — hw/net/e1000x_regs.h (QEMU 9.2.4). SZ_* depend on BSEX."""

    EN = 0x00000002
    SBP = 0x00000004       # store bad packets
    UPE = 0x00000008       # unicast promiscuous
    MPE = 0x00000010       # multicast promiscuous
    LPE = 0x00000020       # long packets
    RDMTS_QUAT = 0x00000100
    RDMTS_EIGTH = 0x00000200
    BAM = 0x00008000       # accept broadcast
    SZ_1024 = 0x00010000   # (with BSEX: 16384)
    SZ_512 = 0x00020000    # (with BSEX: 8192)
    SZ_256 = 0x00030000    # (with BSEX: 4096)
    VFE = 0x00040000       # VLAN filter
    BSEX = 0x02000000      # buffer size extension
    SECRC = 0x04000000     # strip the Ethernet CRC


#: E1000_RCTL_SZ_2048 is 0
E1000_RCTL_SZ_2048 = 0x00000000


class Tctl(IntEnum):
    """``E1000_TCTL_*`` — hw/net/e1000x_regs.h (QEMU 9.2.4)."""

    EN = 0x00000002
    PSP = 0x00000008       # pad short packets (QEMU ignores it)


class TxdCmd(IntEnum):
    """TX descriptor ``lower.data`` bits: ``E1000_TXD_CMD_*`` and ``E1000_TXD_DTYP_D``
    (hw/net/e1000x_regs.h, QEMU 9.2.4)."""

    DTYP_D = 0x00100000    # data descriptor (with DEXT)
    EOP = 0x01000000       # end of packet
    IFCS = 0x02000000      # insert FCS
    IC = 0x04000000        # insert checksum (legacy); TSE in a data descriptor
    RS = 0x08000000        # report status
    RPS = 0x10000000       # report packet sent
    DEXT = 0x20000000      # extended descriptor (0 = legacy)
    VLE = 0x40000000       # add VLAN tag
    IDE = 0x80000000       # interrupt delay enable


#: the descriptor type bits of ``lower`` (``E1000_TXD_CMD_DEXT | E1000_TXD_DTYP_D``)
_DTYPE = int(TxdCmd.DEXT | TxdCmd.DTYP_D)

#: hw/net/e1000x_regs.h: the bits of a context descriptor's ``cmd_and_length`` (TSE also
#: of a data descriptor's ``lower``): they share values with EOP / IFCS / IC
E1000_TXD_CMD_TCP = 0x01000000
E1000_TXD_CMD_IP = 0x02000000
E1000_TXD_CMD_TSE = 0x04000000


class TxdStat(IntEnum):
    """TX descriptor ``upper.data`` status bits — ``E1000_TXD_STAT_*`` (QEMU 9.2.4)."""

    DD = 0x00000001
    EC = 0x00000002
    LC = 0x00000004
    TU = 0x00000008


class TxdPopts(IntEnum):
    """``E1000_TXD_POPTS_*`` — hw/net/e1000_regs.h: a data descriptor's ``upper >> 8``."""

    IXSM = 0x01            # insert IP checksum
    TXSM = 0x02            # insert TCP/UDP checksum


class RxdStat(IntEnum):
    """RX descriptor ``status`` bits — ``E1000_RXD_STAT_*`` (QEMU 9.2.4)."""

    DD = 0x01
    EOP = 0x02
    IXSM = 0x04
    VP = 0x08


class Eecd(IntEnum):
    """``E1000_EECD_*`` — hw/net/e1000x_regs.h (QEMU 9.2.4)."""

    SK = 0x00000001        # clock
    CS = 0x00000002        # chip select
    DI = 0x00000004        # data in
    DO = 0x00000008        # data out
    FWE_MASK = 0x00000030
    REQ = 0x00000040
    GNT = 0x00000080
    PRES = 0x00000100


class Mdic(IntEnum):
    """``E1000_MDIC_*`` — hw/net/e1000x_regs.h (QEMU 9.2.4)."""

    DATA_MASK = 0x0000FFFF
    REG_MASK = 0x001F0000
    PHY_MASK = 0x03E00000
    OP_WRITE = 0x04000000
    OP_READ = 0x08000000
    READY = 0x10000000
    INT_EN = 0x20000000
    ERROR = 0x40000000


E1000_MDIC_REG_SHIFT = 16
E1000_MDIC_PHY_SHIFT = 21
E1000_RAH_AV = 0x80000000
E1000_MANC_INIT = 0x00222300  # EN_MNG2HOST | RCV_TCO_EN | ARP_EN | 0298_EN | RMCP_EN


class Mii(IntEnum):
    """PHY registers — include/hw/net/mii.h and M88E1000_* of hw/net/e1000_regs.h (QEMU 9.2.4)."""

    BMCR = 0
    BMSR = 1
    PHYID1 = 2
    PHYID2 = 3
    ANAR = 4
    ANLPAR = 5
    ANER = 6
    CTRL1000 = 9
    STAT1000 = 10
    M88E1000_PHY_SPEC_CTRL = 0x10
    M88E1000_PHY_SPEC_STATUS = 0x11
    M88E1000_EXT_PHY_SPEC_CTRL = 0x14
    M88E1000_RX_ERR_CNTR = 0x15


MII_BMCR_RESET = 1 << 15
MII_BMCR_LOOPBACK = 1 << 14
MII_BMCR_AUTOEN = 1 << 12
MII_BMCR_ANRESTART = 1 << 9
MII_BMSR_LINK_ST = 1 << 2
MII_BMSR_AN_COMP = 1 << 5
MII_ANLPAR_ACK = 1 << 14

PHY_R, PHY_W, PHY_RW = 1, 2, 3
#: hw/net/e1000.c ``phy_regcap``
PHY_REGCAP = {Mii.BMSR: PHY_R, Mii.M88E1000_EXT_PHY_SPEC_CTRL: PHY_RW, Mii.PHYID1: PHY_R,
              Mii.M88E1000_PHY_SPEC_CTRL: PHY_RW, Mii.BMCR: PHY_RW, Mii.CTRL1000: PHY_RW,
              Mii.ANLPAR: PHY_R, Mii.STAT1000: PHY_R, Mii.ANAR: PHY_RW,
              Mii.M88E1000_RX_ERR_CNTR: PHY_R, Mii.PHYID2: PHY_R,
              Mii.M88E1000_PHY_SPEC_STATUS: PHY_R, Mii.ANER: PHY_R}
#: hw/net/e1000.c ``phy_reg_init`` (the MII_* bit names OR-ed together)
PHY_REG_INIT = {Mii.BMCR: 0x1140,          # SPEED1000 | FD | AUTOEN
                Mii.BMSR: 0x794D,          # link up, autoneg able, not yet complete
                Mii.PHYID1: 0x141,
                Mii.ANAR: 0x0DE1, Mii.ANLPAR: 0x01E0, Mii.CTRL1000: 0x0E00,
                Mii.STAT1000: 0x3C00, Mii.M88E1000_PHY_SPEC_CTRL: 0x360,
                Mii.M88E1000_PHY_SPEC_STATUS: 0xAC00, Mii.M88E1000_EXT_PHY_SPEC_CTRL: 0x0D60}
#: hw/net/e1000.c ``mac_reg_init``
MAC_REG_INIT = {MacReg.PBA: 0x00100030, MacReg.LEDCTL: 0x602,
                MacReg.CTRL: Ctrl.SWDPIN2 | Ctrl.SWDPIN0 | Ctrl.SPD_1000 | Ctrl.SLU,
                MacReg.STATUS: 0x80000000 | Status.GIO_MASTER_ENABLE | Status.ASDV
                | Status.MTXCKOK | Status.SPEED_1000 | Status.FD | Status.LU,
                MacReg.MANC: E1000_MANC_INIT}

#: hw/net/e1000.c ``e1000_eeprom_template`` (words 11 and 13 get the device ID)
E1000_EEPROM_TEMPLATE = (
    0x0000, 0x0000, 0x0000, 0x0000, 0xffff, 0x0000, 0x0000, 0x0000,
    0x3000, 0x1000, 0x6403, 0, 0x8086, 0, 0x8086, 0x3040,
    0x0008, 0x2000, 0x7e14, 0x0048, 0x1000, 0x00d8, 0x0000, 0x2700,
    0x6cc9, 0x3150, 0x0722, 0x040b, 0x0984, 0x0000, 0xc000, 0x0706,
    0x1008, 0x0000, 0x0f04, 0x7fff, 0x4d01, 0xffff, 0xffff, 0xffff,
    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
    0x0100, 0x4000, 0x121c, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0x0000,
)

U32 = 0xFFFFFFFF


def _flags(value: int, flags: type[IntEnum]) -> str:
    """The single-bit members set in ``value``, as ``A|B`` ("0" for none)."""
    names = [f.name for f in flags if f.value and not f.value & (f.value - 1) and value & f.value]
    return "|".join(names) if names else "0"


def _cmd_names(lower: int) -> str:
    names = [n for n, bit in (("EOP", TxdCmd.EOP), ("IFCS", TxdCmd.IFCS), ("IC", TxdCmd.IC),
                              ("RS", TxdCmd.RS), ("RPS", TxdCmd.RPS), ("DEXT", TxdCmd.DEXT),
                              ("VLE", TxdCmd.VLE), ("IDE", TxdCmd.IDE)) if lower & bit]
    return "|".join(names) or "0"


def reg_name(index: int) -> str:
    """The name of ``mac_reg[index]`` (``TDT``, ``RA[1]``, ``MTA[5]``), or its offset."""
    try:
        return MacReg(index).name
    except ValueError:
        pass
    for base, n in ARRAYS.items():
        if base <= index < base + n:
            return f"{base.name}[{index - base}]"
    return f"{index << 2:#07x}"


# --- state --------------------------------------------------------------------------------------

@dataclass
class TxdProps:
    """``e1000x_txd_props`` (hw/net/e1000x_common.h): what a context descriptor set."""

    ipcss: int = 0
    ipcso: int = 0
    ipcse: int = 0
    tucss: int = 0
    tucso: int = 0
    tucse: int = 0
    paylen: int = 0
    hdr_len: int = 0
    mss: int = 0
    ip: int = 0
    tcp: int = 0
    tse: int = 0


#: where ``data`` starts in :attr:`E1000Tx.vbuf`: QEMU keeps ``vlan[4]`` right before it
_D = 4


@dataclass
class E1000Tx:
    """``struct e1000_tx``: the frame being assembled from descriptors.

    ``vbuf`` is QEMU's ``vlan[4]`` followed by ``data[0x10000]`` (one buffer,
    so the VLAN insertion moves bytes exactly as QEMU's ``memmove``s do);
    ``size`` is a ``uint16_t`` as in QEMU.
    """

    header: bytearray = field(default_factory=lambda: bytearray(256), repr=False)
    vlan_header: bytearray = field(default_factory=lambda: bytearray(4), repr=False)
    vbuf: bytearray = field(default_factory=lambda: bytearray(_D + TX_DATA_SIZE), repr=False)
    size: int = 0
    vlan_needed: int = 0
    sum_needed: int = 0
    cptse: bool = False
    props: TxdProps = field(default_factory=TxdProps)
    tso_props: TxdProps = field(default_factory=TxdProps)
    tso_frames: int = 0
    busy: bool = False

    @property
    def data(self) -> bytes:
        """The ``size`` bytes assembled so far."""
        return bytes(self.vbuf[_D:_D + self.size])


@dataclass
class EecdState:
    """``eecd_state``: the Microwire EEPROM's shift registers."""

    val_in: int = 0
    bitnum_in: int = 0
    bitnum_out: int = 0
    reading: int = 0
    old_eecd: int = 0


@dataclass(frozen=True)
class TxDesc:
    """``struct e1000_tx_desc`` (legacy layout): buffer_addr @0, lower @8, upper @12."""

    buffer_addr: int
    lower: int
    upper: int
    raw: bytes

    @classmethod
    def unpack(cls, b: bytes) -> TxDesc:
        return cls(int.from_bytes(b[0:8], "little"), int.from_bytes(b[8:12], "little"),
                   int.from_bytes(b[12:16], "little"), bytes(b))

    @property
    def length(self) -> int:
        return self.lower & 0xFFFF

    @property
    def special(self) -> int:
        return self.upper >> 16

    def to_dict(self) -> dict[str, int]:
        return {"buffer_addr": self.buffer_addr, "lower": self.lower, "upper": self.upper,
                "length": self.length}


@dataclass
class RxDesc:
    """``struct e1000_rx_desc``: buffer_addr @0, length @8, csum @10, status @12,
    errors @13, special @14."""

    buffer_addr: int = 0
    length: int = 0
    csum: int = 0
    status: int = 0
    errors: int = 0
    special: int = 0

    @classmethod
    def unpack(cls, b: bytes) -> RxDesc:
        return cls(int.from_bytes(b[0:8], "little"), int.from_bytes(b[8:10], "little"),
                   int.from_bytes(b[10:12], "little"), b[12], b[13],
                   int.from_bytes(b[14:16], "little"))

    def pack(self) -> bytes:
        return (self.buffer_addr.to_bytes(8, "little") + self.length.to_bytes(2, "little")
                + self.csum.to_bytes(2, "little") + bytes([self.status, self.errors])
                + self.special.to_bytes(2, "little"))


@dataclass(eq=False)
class E1000State(PCIDevice):
    """``E1000State`` (hw/net/e1000.c) with QEMU's field names.

    ``macaddr`` is ``conf.macaddr`` (empty: QEMU's default 52:54:00:12:34:56);
    ``netdev`` the backend client it is paired with (``-nic …,netdev=``);
    ``nic`` is ``qemu_get_queue(s->nic)`` once realized. ``mac_reg``,
    ``phy_reg`` and ``eeprom_data`` are the register files.
    """

    type_name = "e1000"
    desc = "Intel Gigabit Ethernet"
    vendor_id = PCI_VENDOR_ID_INTEL
    device_id = E1000_DEV_ID_82540EM
    revision = 0x03
    class_id = PCI_CLASS_NETWORK_ETHERNET

    macaddr: bytes = b""
    netdev: NetClientState | None = field(default=None, repr=False)
    nic_name: str = "e1000.0"
    compat_flags: int = COMPAT_FLAGS
    mac_reg: list[int] = field(default_factory=lambda: [0] * 0x8000, repr=False)
    phy_reg: list[int] = field(default_factory=lambda: [0] * 0x20, repr=False)
    eeprom_data: list[int] = field(default_factory=lambda: [0] * 64, repr=False)
    rxbuf_size: int = 0
    rxbuf_min_shift: int = 1
    tx: E1000Tx = field(default_factory=E1000Tx, repr=False)
    eecd_state: EecdState = field(default_factory=EecdState, repr=False)
    mit_irq_level: int = 0
    mit_ide: int = 0
    nic: NetClientState | None = field(default=None, repr=False)
    mmio: MemoryRegion | None = field(default=None, repr=False)
    io: MemoryRegion | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        m = self.mac_reg
        where = self.addr if self.devfn >= 0 else "not plugged"
        return (f"E1000State({where}, mac {self.macaddr.hex(':') or 'unset'}, "
                f"TDH/TDT {m[MacReg.TDH]}/{m[MacReg.TDT]}, RDH/RDT {m[MacReg.RDH]}/"
                f"{m[MacReg.RDT]}, ICR {m[MacReg.ICR]:#x}, IMS {m[MacReg.IMS]:#x})")

    def __getitem__(self, reg: MacReg | str) -> int:
        """``s["TDH"]`` or ``s[MacReg.TDH]``: a register's value (no side effects)."""
        return self.mac_reg[MacReg[reg] if isinstance(reg, str) else reg]

    def ev(self, kind: str, label: str, fn: str, **data: Any) -> None:
        """A ``device`` event of this e1000."""
        self.emit("device", kind, label, fn, FILE, **data)

    # --- PCIDeviceClass ---------------------------------------------------------------------
    def realize(self) -> None:
        """``pci_e1000_realize``: config bytes, BAR0 (MMIO) and BAR1 (I/O), MAC, EEPROM, NIC."""
        self.config[Config.CACHE_LINE_SIZE] = 0x10  # "TODO: RST# value should be 0" (reset clears it)
        self.config[Config.INTERRUPT_PIN] = 1       # INTA
        e1000_mmio_setup(self)
        assert self.mmio is not None and self.io is not None
        pci_register_bar(self, 0, BaseAddress.SPACE_MEMORY, self.mmio)
        pci_register_bar(self, 1, BaseAddress.SPACE_IO, self.io)
        if not self.macaddr or not any(self.macaddr):
            self.macaddr = net.qemu_macaddr_default_if_unset(self.macaddr, set())
        e1000x_core_prepare_eeprom(self.eeprom_data, E1000_EEPROM_TEMPLATE, self.device_id,
                                   self.macaddr)
        self.nic = net.qemu_new_nic(net_e1000_info, self.netdev, self.type_name, self.nic_name,
                                    self, self.ctx)

    def config_write(self, address: int, val: int, length: int) -> None:
        """``e1000_write_config``: the default, then a flush when bus mastering is on."""
        pci_default_write_config(self, address, val, length)
        if range_covers_byte(address, length, Config.COMMAND) and \
                self.config[Config.COMMAND] & Command.MASTER and self.nic is not None:
            net.qemu_flush_queued_packets(self.nic)

    def reset(self) -> None:
        """``e1000_reset_hold``: registers to ``mac_reg_init`` / ``phy_reg_init``, RA from the MAC."""
        self.mit_irq_level = 0
        self.mit_ide = 0
        self.phy_reg[:] = [0] * 0x20
        for r, v in PHY_REG_INIT.items():
            self.phy_reg[r] = v
        self.phy_reg[Mii.PHYID2] = E1000_PHY_ID2_8254xx_DEFAULT
        self.mac_reg[:] = [0] * 0x8000
        for r, v in MAC_REG_INIT.items():
            self.mac_reg[r] = int(v)
        self.rxbuf_min_shift = 1
        self.tx = E1000Tx()
        if self.nic is not None and self.nic.link_down:
            e1000x_update_regs_on_link_down(self.mac_reg, self.phy_reg)
        e1000x_reset_mac_addr(self.mac_reg, self.macaddr)
        if self.compat_flags & E1000_FLAG_VET:
            self.mac_reg[MacReg.VET] = ETH_P_VLAN


# --- e1000x_common.c -----------------------------------------------------------------------------

def e1000x_core_prepare_eeprom(eeprom: list[int], templ: tuple[int, ...], dev_id: int,
                               macaddr: bytes) -> None:
    """hw/net/e1000x_common.c: the template, the MAC in words 0-2, the device ID, the checksum
    that makes the 64 words sum to 0xBABA."""
    eeprom[:] = list(templ)
    for i in range(3):
        eeprom[i] = (macaddr[2 * i + 1] << 8) | macaddr[2 * i]
    eeprom[11] = eeprom[13] = dev_id
    checksum = sum(eeprom[:EEPROM_CHECKSUM_REG]) & 0xFFFF
    eeprom[EEPROM_CHECKSUM_REG] = (EEPROM_SUM - checksum) & 0xFFFF


def e1000x_reset_mac_addr(mac: list[int], macaddr: bytes) -> None:
    """hw/net/e1000x_common.c: RA[0] = MAC bytes 0-3, RA[1] = bytes 4-5 | AV."""
    mac[MacReg.RA] = int.from_bytes(macaddr[0:4], "little")
    mac[MacReg.RA + 1] = E1000_RAH_AV | int.from_bytes(macaddr[4:6], "little")


def e1000x_update_regs_on_link_down(mac: list[int], phy: list[int]) -> None:
    mac[MacReg.STATUS] &= ~int(Status.LU) & U32
    phy[Mii.BMSR] &= ~MII_BMSR_LINK_ST & 0xFFFF
    phy[Mii.BMSR] &= ~MII_BMSR_AN_COMP & 0xFFFF
    phy[Mii.ANLPAR] &= ~MII_ANLPAR_ACK & 0xFFFF


def e1000x_update_regs_on_link_up(mac: list[int], phy: list[int]) -> None:
    mac[MacReg.STATUS] |= Status.LU
    phy[Mii.BMSR] |= MII_BMSR_LINK_ST


def e1000x_inc_reg_if_not_full(mac: list[int], index: int) -> None:
    if mac[index] != U32:
        mac[index] += 1


def e1000x_grow_8reg_if_not_full(mac: list[int], index: int, size: int) -> None:
    total = mac[index] | mac[index + 1] << 32
    total = 2**64 - 1 if total + size >= 2**64 else total + size
    mac[index], mac[index + 1] = total & U32, total >> 32


def e1000x_increase_size_stats(mac: list[int], size_regs: tuple[int, ...], size: int) -> None:
    if size > 1023:
        e1000x_inc_reg_if_not_full(mac, size_regs[5])
    elif size > 511:
        e1000x_inc_reg_if_not_full(mac, size_regs[4])
    elif size > 255:
        e1000x_inc_reg_if_not_full(mac, size_regs[3])
    elif size > 127:
        e1000x_inc_reg_if_not_full(mac, size_regs[2])
    elif size > 64:
        e1000x_inc_reg_if_not_full(mac, size_regs[1])
    elif size == 64:
        e1000x_inc_reg_if_not_full(mac, size_regs[0])


PTC_REGS = (MacReg.PTC64, MacReg.PTC127, MacReg.PTC255, MacReg.PTC511, MacReg.PTC1023,
            MacReg.PTC1522)
PRC_REGS = (MacReg.PRC64, MacReg.PRC127, MacReg.PRC255, MacReg.PRC511, MacReg.PRC1023,
            MacReg.PRC1522)


def e1000x_rxbufsize(rctl: int) -> int:
    """hw/net/e1000x_common.c: the receive buffer size RCTL selects (2048 by default)."""
    rctl &= Rctl.BSEX | Rctl.SZ_256
    return {Rctl.BSEX | Rctl.SZ_1024: 16384, Rctl.BSEX | Rctl.SZ_512: 8192,
            Rctl.BSEX | Rctl.SZ_256: 4096, Rctl.SZ_1024: 1024, Rctl.SZ_512: 512,
            Rctl.SZ_256: 256}.get(rctl, 2048)


def e1000x_fcs_len(mac: list[int]) -> int:
    """hw/net/e1000x_common.h: 4 bytes of FCS counted in the length, unless RCTL.SECRC."""
    return 0 if mac[MacReg.RCTL] & Rctl.SECRC else 4


def e1000x_vlan_enabled(mac: list[int]) -> bool:
    return bool(mac[MacReg.CTRL] & Ctrl.VME)


def e1000x_is_vlan_packet(buf: bytes, vet: int) -> bool:
    return int.from_bytes(buf[12:14], "big") == (vet & 0xFFFF)


def e1000x_rx_vlan_filter(mac: list[int], buf: bytes) -> bool:
    """hw/net/e1000x_common.c: with RCTL.VFE, the VLAN ID's bit in VFTA must be set."""
    if mac[MacReg.RCTL] & Rctl.VFE:
        vid = int.from_bytes(buf[14:16], "big")
        vfta = mac[MacReg.VFTA + ((vid >> 5) & 0x7F)]
        if not vfta & (1 << (vid & 0x1F)):
            return False
    return True


def is_broadcast_ether_addr(a: bytes) -> bool:
    return a[:6] == b"\xff" * 6


def is_multicast_ether_addr(a: bytes) -> bool:
    return bool(a[0] & 1)


def e1000x_rx_group_filter(mac: list[int], buf: bytes) -> tuple[bool, str]:
    """hw/net/e1000x_common.c: (accepted, why) for the destination address."""
    rctl = mac[MacReg.RCTL]
    dest = buf[0:6]
    if is_broadcast_ether_addr(dest):
        if rctl & Rctl.BAM:
            return True, "broadcast, RCTL.BAM"
    elif is_multicast_ether_addr(dest):
        if rctl & Rctl.MPE:
            return True, "multicast, RCTL.MPE"
    elif rctl & Rctl.UPE:
        return True, "unicast, RCTL.UPE"
    for n in range(16):
        rp0, rp1 = mac[MacReg.RA + 2 * n], mac[MacReg.RA + 2 * n + 1]
        if not rp1 & E1000_RAH_AV:
            continue
        if dest == rp0.to_bytes(4, "little") + (rp1 & 0xFFFF).to_bytes(2, "little"):
            return True, f"matches RA[{n}]"
    f = (4, 3, 2, 0)[(rctl >> E1000_RCTL_MO_SHIFT) & 3]
    f = (((dest[5] << 8) | dest[4]) >> f) & 0xFFF
    if mac[MacReg.MTA + (f >> 5)] & (1 << (f & 0x1F)):
        return True, f"MTA[{f >> 5}] bit {f & 0x1F}"
    return False, f"{dest.hex(':')} matches no RA entry and no MTA bit"


def e1000x_hw_rx_enabled(mac: list[int]) -> bool:
    return bool(mac[MacReg.STATUS] & Status.LU) and bool(mac[MacReg.RCTL] & Rctl.EN)


def e1000x_rx_ready(d: E1000State, mac: list[int]) -> bool:
    """hw/net/e1000x_common.c: link up, RCTL.EN and bus mastering."""
    return (bool(mac[MacReg.STATUS] & Status.LU) and bool(mac[MacReg.RCTL] & Rctl.EN)
            and bool(d.config[Config.COMMAND] & Command.MASTER))


def e1000x_is_oversized(mac: list[int], size: int) -> bool:
    """hw/net/e1000x_common.c: over 1518 bytes without RCTL.LPE (16380 with), unless SBP."""
    maximum_short_size = net.ETH_HLEN + 4 + net.ETH_MTU
    maximum_large_size = 16 * 1024 - net.ETH_FCS_LEN
    if ((size > maximum_large_size or (size > maximum_short_size
                                       and not mac[MacReg.RCTL] & Rctl.LPE))
            and not mac[MacReg.RCTL] & Rctl.SBP):
        e1000x_inc_reg_if_not_full(mac, MacReg.ROC)
        return True
    return False


def e1000x_update_rx_total_stats(mac: list[int], pkt_type: str, pkt_size: int,
                                 pkt_fcs_size: int) -> None:
    e1000x_increase_size_stats(mac, PRC_REGS, pkt_fcs_size)
    e1000x_inc_reg_if_not_full(mac, MacReg.TPR)
    e1000x_inc_reg_if_not_full(mac, MacReg.GPRC)
    e1000x_grow_8reg_if_not_full(mac, MacReg.TORL, pkt_size + 4)
    e1000x_grow_8reg_if_not_full(mac, MacReg.GORCL, pkt_size + 4)
    if pkt_type == "bcast":
        e1000x_inc_reg_if_not_full(mac, MacReg.BPRC)
    elif pkt_type == "mcast":
        e1000x_inc_reg_if_not_full(mac, MacReg.MPRC)


def e1000x_read_tx_ctx_descr(raw: bytes, props: TxdProps) -> None:
    """hw/net/e1000x_common.c: the fields of a context descriptor (``e1000_context_desc``)."""
    op = int.from_bytes(raw[8:12], "little")
    props.ipcss, props.ipcso = raw[0], raw[1]
    props.ipcse = int.from_bytes(raw[2:4], "little")
    props.tucss, props.tucso = raw[4], raw[5]
    props.tucse = int.from_bytes(raw[6:8], "little")
    props.paylen = op & 0xFFFFF
    props.hdr_len = raw[13]
    props.mss = int.from_bytes(raw[14:16], "little")
    props.ip = int(bool(op & E1000_TXD_CMD_IP))
    props.tcp = int(bool(op & E1000_TXD_CMD_TCP))
    props.tse = int(bool(op & E1000_TXD_CMD_TSE))


def get_eth_packet_type(buf: bytes) -> str:
    """include/net/eth.h: "bcast", "mcast" or "ucast" by the destination address."""
    if is_broadcast_ether_addr(buf[0:6]):
        return "bcast"
    return "mcast" if is_multicast_ether_addr(buf[0:6]) else "ucast"


# --- net/checksum.c ------------------------------------------------------------------------------

def net_checksum_add(length: int, buf: bytes | bytearray, start: int = 0) -> int:
    """net/checksum.c ``net_checksum_add``: byte sums, big-endian words (``len <= 0``: 0)."""
    sum1 = sum2 = 0
    i = 0
    while i < length - 1:
        sum1 += buf[start + i]
        sum2 += buf[start + i + 1]
        i += 2
    if i < length:
        sum1 += buf[start + i]
    return sum2 + (sum1 << 8)


def net_checksum_finish_nozero(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF) or 0xFFFF


def _ld16(b: bytearray, off: int) -> int:
    return (b[off] << 8) | b[off + 1]


def _st16(b: bytearray, off: int, v: int) -> None:
    b[off:off + 2] = (v & 0xFFFF).to_bytes(2, "big")


def putsum(data: bytearray, n: int, sloc: int, css: int, cse: int, base: int = _D) -> None:
    """hw/net/e1000.c: the ones' complement checksum of bytes css..cse stored at sloc."""
    if cse and cse < n:
        n = cse + 1
    if sloc < ((n - 1) & U32):
        total = net_checksum_add(n - css, data, base + css)
        _st16(data, base + sloc, net_checksum_finish_nozero(total))


# --- interrupts -----------------------------------------------------------------------------------

def set_interrupt_cause(s: E1000State, index: int, val: int) -> None:
    """hw/net/e1000.c: ICR = ICS = ``val``; the line is up while ICR & IMS (no mitigation here)."""
    with in_function(s.ctx, "set_interrupt_cause"):
        m = s.mac_reg
        m[MacReg.ICR] = val & U32
        m[MacReg.ICS] = val & U32
        pending_ints = m[MacReg.IMS] & m[MacReg.ICR]
        s.mit_irq_level = int(pending_ints != 0)
        if s.ctx.trace is not None:
            s.ev("irq", f"set_interrupt_cause: ICR = {val:#x} ({_flags(val, Icr)}), IMS "
                 f"{m[MacReg.IMS]:#x}, pending {pending_ints:#x} → "
                 f"pci_set_irq({s.mit_irq_level})", "set_interrupt_cause", icr=val,
                 ims=m[MacReg.IMS], pending=pending_ints, level=s.mit_irq_level)
        pci_set_irq(s, s.mit_irq_level)


def set_ics(s: E1000State, index: int, val: int) -> None:
    """hw/net/e1000.c: add causes to ICR."""
    with in_function(s.ctx, "set_ics"):
        if val:
            s.ev("irq", f"set_ics {_flags(val, Icr)} ({val:#x}), ICR {s.mac_reg[MacReg.ICR]:#x}, "
                 f"IMS {s.mac_reg[MacReg.IMS]:#x}", "set_ics", cause=val,
                 icr=s.mac_reg[MacReg.ICR], ims=s.mac_reg[MacReg.IMS])
        set_interrupt_cause(s, 0, val | s.mac_reg[MacReg.ICR])


def set_icr(s: E1000State, index: int, val: int) -> None:
    """hw/net/e1000.c: writing ICR clears the bits written as 1."""
    set_interrupt_cause(s, 0, s.mac_reg[MacReg.ICR] & ~val & U32)


def set_imc(s: E1000State, index: int, val: int) -> None:
    s.mac_reg[MacReg.IMS] &= ~val & U32
    set_ics(s, 0, 0)


def set_ims(s: E1000State, index: int, val: int) -> None:
    s.mac_reg[MacReg.IMS] |= val & U32
    set_ics(s, 0, 0)


def mac_icr_read(s: E1000State, index: int) -> int:
    """hw/net/e1000.c: reading ICR returns it and clears it (the line goes down)."""
    ret = s.mac_reg[MacReg.ICR]
    set_interrupt_cause(s, 0, 0)
    return ret


# --- simple registers -----------------------------------------------------------------------------

def mac_readreg(s: E1000State, index: int) -> int:
    return s.mac_reg[index]


def mac_read_clr4(s: E1000State, index: int) -> int:
    ret = s.mac_reg[index]
    s.mac_reg[index] = 0
    return ret


def mac_read_clr8(s: E1000State, index: int) -> int:
    ret = s.mac_reg[index]
    s.mac_reg[index] = 0
    s.mac_reg[index - 1] = 0
    return ret


def mac_writereg(s: E1000State, index: int, val: int) -> None:
    s.mac_reg[index] = val


def _low_bits(num: int):  # noqa: ANN202 — LOW_BITS_SET_FUNC(num)
    def set_nbit(s: E1000State, index: int, val: int) -> None:
        s.mac_reg[index] = val & ((1 << num) - 1)
    set_nbit.__name__ = set_nbit.__qualname__ = f"set_{num}bit"
    return set_nbit


set_4bit, set_11bit, set_13bit, set_16bit = (_low_bits(n) for n in (4, 11, 13, 16))


def set_dlen(s: E1000State, index: int, val: int) -> None:
    """hw/net/e1000.c: a ring length is a multiple of 128 bytes (8 descriptors), under 1 MiB."""
    s.mac_reg[index] = val & 0xFFF80


def set_ctrl(s: E1000State, index: int, val: int) -> None:
    """hw/net/e1000.c: RST is self-clearing (and resets nothing in QEMU's model)."""
    s.mac_reg[MacReg.CTRL] = val & ~int(Ctrl.RST) & U32


def set_rx_control(s: E1000State, index: int, val: int) -> None:
    """hw/net/e1000.c: RCTL, the buffer size and the RXDMT0 threshold; then the flush
    QEMU's ``flush_queue_timer`` does a second later (at once here)."""
    s.mac_reg[MacReg.RCTL] = val
    s.rxbuf_size = e1000x_rxbufsize(val)
    s.rxbuf_min_shift = ((val // Rctl.RDMTS_QUAT) & 3) + 1
    s.ev("reg", f"set_rx_control: RCTL = {val:#x} ({_flags(val, Rctl)}), rxbuf_size "
         f"{s.rxbuf_size}", "set_rx_control", rctl=val, rxbuf_size=s.rxbuf_size)
    if s.nic is not None:
        net.qemu_flush_queued_packets(s.nic)  # e1000_flush_queue_timer


def set_rdt(s: E1000State, index: int, val: int) -> None:
    """hw/net/e1000.c: new RX buffers: deliver what the net layer queued."""
    s.mac_reg[index] = val & 0xFFFF
    if e1000_has_rxbufs(s, 1) and s.nic is not None:
        net.qemu_flush_queued_packets(s.nic)


def set_tctl(s: E1000State, index: int, val: int) -> None:
    """hw/net/e1000.c: the handler of TCTL *and* TDT: store, then ``start_xmit``."""
    s.mac_reg[index] = val
    s.mac_reg[MacReg.TDT] &= 0xFFFF
    start_xmit(s)


def set_mdic(s: E1000State, index: int, val: int) -> None:
    """hw/net/e1000.c: a PHY register read or write through MDIC (PHY address 1 only)."""
    data = val & Mdic.DATA_MASK
    addr = (val & Mdic.REG_MASK) >> E1000_MDIC_REG_SHIFT
    if (val & Mdic.PHY_MASK) >> E1000_MDIC_PHY_SHIFT != 1:
        val = s.mac_reg[MacReg.MDIC] | Mdic.ERROR
    elif val & Mdic.OP_READ:
        if not PHY_REGCAP.get(addr, 0) & PHY_R:
            val |= Mdic.ERROR
        else:
            val = (val ^ data) | s.phy_reg[addr]
    elif val & Mdic.OP_WRITE:
        if not PHY_REGCAP.get(addr, 0) & PHY_W:
            val |= Mdic.ERROR
        elif addr == Mii.BMCR:
            set_phy_ctrl(s, index, data)
        else:
            s.phy_reg[addr] = data
    s.mac_reg[MacReg.MDIC] = int(val | Mdic.READY)
    if val & Mdic.INT_EN:
        set_ics(s, 0, Icr.MDAC)


def set_phy_ctrl(s: E1000State, index: int, val: int) -> None:
    """hw/net/e1000.c: BMCR; ANRESTART with autoneg on restarts negotiation (done at once here)."""
    s.phy_reg[Mii.BMCR] = val & ~(0x3F | MII_BMCR_RESET | MII_BMCR_ANRESTART) & 0xFFFF
    if s.phy_reg[Mii.BMCR] & MII_BMCR_AUTOEN and val & MII_BMCR_ANRESTART:
        e1000x_update_regs_on_link_down(s.mac_reg, s.phy_reg)   # e1000x_restart_autoneg
        e1000_autoneg_timer(s)                                  # 500 ms later in QEMU


def e1000_autoneg_timer(s: E1000State) -> None:
    """hw/net/e1000.c: negotiation done: link up, AN_COMP, LSC."""
    if s.nic is not None and s.nic.link_down:
        return
    e1000x_update_regs_on_link_up(s.mac_reg, s.phy_reg)
    s.phy_reg[Mii.ANLPAR] |= MII_ANLPAR_ACK
    s.phy_reg[Mii.BMSR] |= MII_BMSR_AN_COMP
    if s.nic is not None:
        net.qemu_flush_queued_packets(s.nic)
    set_ics(s, 0, Icr.LSC)


def get_eecd(s: E1000State, index: int) -> int:
    """hw/net/e1000.c: EEPROM present and granted; DO is the next bit being read out."""
    st = s.eecd_state
    ret = Eecd.PRES | Eecd.GNT | st.old_eecd
    bit = st.bitnum_out
    if not st.reading or (s.eeprom_data[(bit >> 4) & 0x3F] >> ((bit & 0xF) ^ 0xF)) & 1:
        ret |= Eecd.DO
    return int(ret)


def set_eecd(s: E1000State, index: int, val: int) -> None:
    """hw/net/e1000.c: the Microwire protocol, one clock edge per write (read opcode 110b)."""
    st = s.eecd_state
    oldval = st.old_eecd
    st.old_eecd = val & (Eecd.SK | Eecd.CS | Eecd.DI | Eecd.FWE_MASK | Eecd.REQ)
    if not val & Eecd.CS:
        return
    if Eecd.CS & (val ^ oldval):                 # CS rising edge: reset the state
        st.val_in = st.bitnum_in = st.bitnum_out = st.reading = 0
    if not Eecd.SK & (val ^ oldval):             # no clock edge
        return
    if not val & Eecd.SK:                        # falling edge
        st.bitnum_out = (st.bitnum_out + 1) & 0xFFFF
        return
    st.val_in = ((st.val_in << 1) | (1 if val & Eecd.DI else 0)) & U32
    st.bitnum_in = (st.bitnum_in + 1) & 0xFFFF
    if st.bitnum_in == 9 and not st.reading:
        st.bitnum_out = (((st.val_in & 0x3F) << 4) - 1) & 0xFFFF
        st.reading = int(((st.val_in >> 6) & 7) == EEPROM_READ_OPCODE_MICROWIRE)


def flash_eerd_read(s: E1000State, index: int) -> int:
    """hw/net/e1000.c: EERD after a START: the EEPROM word in bits 31:16, DONE."""
    eerd = s.mac_reg[MacReg.EERD]
    r = eerd & ~E1000_EEPROM_RW_REG_START & U32
    if not eerd & E1000_EEPROM_RW_REG_START:
        return eerd
    idx = r >> E1000_EEPROM_RW_ADDR_SHIFT
    if idx > EEPROM_CHECKSUM_REG:
        return E1000_EEPROM_RW_REG_DONE | r
    return ((s.eeprom_data[idx] << E1000_EEPROM_RW_REG_DATA) | E1000_EEPROM_RW_REG_DONE | r) & U32


# --- the register tables (hw/net/e1000.c macreg_readops / macreg_writeops) -------------------------

def _tables() -> tuple[dict[int, Any], dict[int, Any]]:
    R = MacReg
    readops: dict[int, Any] = {}
    for r in (R.PBA, R.RCTL, R.TDH, R.TXDCTL, R.WUFC, R.TDT, R.CTRL, R.LEDCTL, R.MANC, R.MDIC,
              R.SWSM, R.STATUS, R.TORL, R.TOTL, R.IMS, R.TCTL, R.RDH, R.RDT, R.VET, R.ICS,
              R.TDBAL, R.TDBAH, R.RDBAH, R.RDBAL, R.TDLEN, R.RDLEN, R.RDTR, R.RADV, R.TADV,
              R.ITR, R.FCRUC, R.IPAV, R.WUC, R.WUS, R.SCC, R.ECOL, R.MCC, R.LATECOL, R.COLC,
              R.DC, R.TNCRS, R.SEQEC, R.CEXTERR, R.RLEC, R.XONRXC, R.XONTXC, R.XOFFRXC,
              R.XOFFTXC, R.RFC, R.RJC, R.RNBC, R.TSCTFC, R.MGTPRC, R.MGTPDC, R.MGTPTC,
              R.GORCL, R.GOTCL, R.RDFH, R.RDFT, R.RDFHS, R.RDFTS, R.RDFPC, R.TDFH, R.TDFT,
              R.TDFHS, R.TDFTS, R.TDFPC, R.AIT):
        readops[r] = mac_readreg
    for r in (R.TOTH, R.TORH, R.GOTCH, R.GORCH):
        readops[r] = mac_read_clr8
    for r in (*PRC_REGS, *PTC_REGS, R.GPRC, R.GPTC, R.TPT, R.TPR, R.RUC, R.ROC, R.BPRC,
              R.MPRC, R.TSCTC, R.BPTC, R.MPTC):
        readops[r] = mac_read_clr4
    readops[R.ICR], readops[R.EECD], readops[R.EERD] = mac_icr_read, get_eecd, flash_eerd_read
    for i in range(R.CRCERRS, R.MPC + 1):
        readops[i] = mac_readreg
    for base in (R.IP6AT, R.IP4AT, R.FFLT, R.RA, R.WUPM, R.MTA, R.VFTA, R.FFMT, R.FFVT, R.PBM):
        for i in range(base, base + ARRAYS[base]):
            readops[i] = mac_readreg

    writeops: dict[int, Any] = {}
    for r in (R.PBA, R.EERD, R.SWSM, R.WUFC, R.TDBAL, R.TDBAH, R.TXDCTL, R.RDBAH, R.RDBAL,
              R.LEDCTL, R.VET, R.FCRUC, R.IPAV, R.WUC, R.WUS):
        writeops[r] = mac_writereg
    writeops.update({
        R.TDLEN: set_dlen, R.RDLEN: set_dlen, R.TCTL: set_tctl, R.TDT: set_tctl,
        R.MDIC: set_mdic, R.ICS: set_ics, R.TDH: set_16bit, R.RDH: set_16bit, R.RDT: set_rdt,
        R.IMC: set_imc, R.IMS: set_ims, R.ICR: set_icr, R.EECD: set_eecd,
        R.RCTL: set_rx_control, R.CTRL: set_ctrl, R.RDTR: set_16bit, R.RADV: set_16bit,
        R.TADV: set_16bit, R.ITR: set_16bit, R.TDFH: set_11bit, R.TDFT: set_11bit,
        R.TDFHS: set_13bit, R.TDFTS: set_13bit, R.TDFPC: set_13bit, R.RDFH: set_13bit,
        R.RDFT: set_13bit, R.RDFHS: set_13bit, R.RDFTS: set_13bit, R.RDFPC: set_13bit,
        R.AIT: set_16bit})
    for base, fn in ((R.IP6AT, mac_writereg), (R.IP4AT, mac_writereg), (R.FFLT, set_11bit),
                     (R.RA, mac_writereg), (R.WUPM, mac_writereg), (R.MTA, mac_writereg),
                     (R.VFTA, mac_writereg), (R.FFMT, set_4bit), (R.FFVT, mac_writereg),
                     (R.PBM, mac_writereg)):
        for i in range(base, base + ARRAYS[base]):
            writeops[i] = fn
    return readops, writeops


macreg_readops, macreg_writeops = _tables()


def e1000_mmio_write(s: E1000State, addr: int, val: int, size: int) -> None:
    """hw/net/e1000.c: a guest store to BAR0: ``macreg_writeops[(addr & 0x1ffff) >> 2]``."""
    index = (addr & 0x1FFFF) >> 2
    name = reg_name(index)
    val &= U32
    op = macreg_writeops.get(index)
    if op is not None:
        with in_function(s.ctx, "e1000_mmio_write"), in_function(s.ctx, op.__name__):
            op(s, index, val)
        s.note(label=f"e1000_mmio_write {name} ← {val:#010x} ({op.__name__})", reg=name,
               index=index, op=op.__name__, **_ring_state(s))
    elif index in macreg_readops:
        s.note(label=f"e1000_mmio_write {name} ← {val:#010x}: read-only, ignored", reg=name,
               index=index, op="ro")
    else:
        s.note(label=f"e1000_mmio_write {name} ← {val:#010x}: unknown register, ignored",
               reg=name, index=index, op="unknown")


def e1000_mmio_read(s: E1000State, addr: int, size: int) -> int:
    """hw/net/e1000.c: a guest load from BAR0 (0 for a register QEMU does not have)."""
    index = (addr & 0x1FFFF) >> 2
    name = reg_name(index)
    op = macreg_readops.get(index)
    if op is None:
        s.note(label=f"e1000_mmio_read {name} = 0: unknown register", reg=name, index=index,
               op="unknown")
        return 0
    with in_function(s.ctx, "e1000_mmio_read"), in_function(s.ctx, op.__name__):
        ret = op(s, index) & U32
    what = f" ({_flags(ret, Icr)})" if index == MacReg.ICR else ""
    s.note(label=f"e1000_mmio_read {name} = {ret:#010x}{what} ({op.__name__})", reg=name,
           index=index, op=op.__name__)
    return ret


def _ring_state(s: E1000State) -> dict[str, int]:
    m = s.mac_reg
    return {"tdh": m[MacReg.TDH], "tdt": m[MacReg.TDT], "rdh": m[MacReg.RDH],
            "rdt": m[MacReg.RDT], "icr": m[MacReg.ICR]}


#: hw/net/e1000.c ``e1000_mmio_ops``: the callbacks take exactly 4 bytes (a 1- or 2-byte
#: access becomes a 4-byte one of the whole register; an 8-byte one, two)
e1000_mmio_ops = MemoryRegionOps(read=e1000_mmio_read, write=e1000_mmio_write,
                                 impl=AccessConstraints(min_access_size=4, max_access_size=4),
                                 file=FILE)


def e1000_io_read(s: E1000State, addr: int, size: int) -> int:
    """hw/net/e1000.c (QEMU 9.2.4): the I/O BAR reads 0 — there is no IOADDR/IODATA window."""
    s.note(label=f"e1000_io_read [{addr:#x}] = 0 (QEMU's I/O BAR is empty)")
    return 0


def e1000_io_write(s: E1000State, addr: int, val: int, size: int) -> None:
    """hw/net/e1000.c (QEMU 9.2.4): writes to the I/O BAR are ignored."""
    s.note(label=f"e1000_io_write [{addr:#x}] ← {val:#x}: ignored (QEMU's I/O BAR is empty)")


e1000_io_ops = MemoryRegionOps(read=e1000_io_read, write=e1000_io_write, file=FILE)


def e1000_mmio_setup(d: E1000State) -> None:
    """hw/net/e1000.c: the regions "e1000-mmio" (128 KiB) and "e1000-io" (64 ports)."""
    d.mmio = memory_region_init_io("e1000-mmio", PNPMMIO_SIZE, e1000_mmio_ops, d,
                                   owner=d.type_name)
    d.io = memory_region_init_io("e1000-io", IOPORT_SIZE, e1000_io_ops, d, owner=d.type_name)


# --- transmit --------------------------------------------------------------------------------------

def tx_desc_base(s: E1000State) -> int:
    return (s.mac_reg[MacReg.TDBAH] << 32) + (s.mac_reg[MacReg.TDBAL] & ~0xF & U32)


def start_xmit(s: E1000State) -> None:
    """hw/net/e1000.c: send every descriptor from TDH to TDT, then ``set_ics``."""
    m = s.mac_reg
    ctx = s.ctx
    with in_function(ctx, "start_xmit"):
        if not m[MacReg.TCTL] & Tctl.EN:
            s.ev("tx", f"start_xmit: TCTL.EN clear, nothing sent (TDH {m[MacReg.TDH]}, "
                 f"TDT {m[MacReg.TDT]})", "start_xmit", tdh=m[MacReg.TDH], tdt=m[MacReg.TDT],
                 tctl=m[MacReg.TCTL], sent=False)
            return
        if s.tx.busy:
            return
        s.tx.busy = True
        tdh_start = m[MacReg.TDH]
        cause = int(Icr.TXQE)
        s.ev("tx", f"start_xmit: TDH {tdh_start} → TDT {m[MacReg.TDT]} (ring at "
             f"{tx_desc_base(s):#x}, TDLEN {m[MacReg.TDLEN]} = {m[MacReg.TDLEN] // DESC_SIZE} "
             "descriptors)", "start_xmit", tdh=tdh_start, tdt=m[MacReg.TDT],
             tdlen=m[MacReg.TDLEN], tdba=tx_desc_base(s), sent=True)
        try:
            while m[MacReg.TDH] != m[MacReg.TDT]:
                tdh = m[MacReg.TDH]
                base = tx_desc_base(s) + DESC_SIZE * tdh
                fetched = pci_dma_fetch(s, base, DESC_SIZE)     # pci_dma_read(d, base, &desc)
                desc = TxDesc.unpack(fetched.data)
                dtype = desc.lower & _DTYPE
                if ctx.trace is not None:
                    kind = ("context" if dtype == TxdCmd.DEXT else "data"
                            if dtype == _DTYPE else "legacy")
                    notes = f" — {'; '.join(fetched.notes)}" if fetched.notes else ""
                    s.ev("tx", f"start_xmit: pci_dma_read descriptor {tdh} at {base:#x}: {kind}, "
                         f"buffer {desc.buffer_addr:#x}, length {desc.length}, cmd "
                         f"{_cmd_names(desc.lower)}{notes}", "start_xmit", index=tdh, base=base,
                         dtype=kind, desc=desc.to_dict(), cmd=_cmd_names(desc.lower),
                         data=fetched.data.hex(), result=int(fetched.result),
                         notes=list(fetched.notes))
                process_tx_desc(s, desc)
                cause |= txdesc_writeback(s, base, desc)
                m[MacReg.TDH] = (m[MacReg.TDH] + 1) & U32
                if m[MacReg.TDH] * DESC_SIZE >= m[MacReg.TDLEN]:
                    m[MacReg.TDH] = 0
                if m[MacReg.TDH] == tdh_start or tdh_start >= m[MacReg.TDLEN] // DESC_SIZE:
                    s.ev("tx", f"start_xmit: TDH wraparound @{tdh_start:x}, TDT "
                         f"{m[MacReg.TDT]:x}, TDLEN {m[MacReg.TDLEN]:x}: stop (bogus TDT/TDLEN)",
                         "start_xmit", tdh=m[MacReg.TDH], tdt=m[MacReg.TDT],
                         tdlen=m[MacReg.TDLEN], wraparound=True)
                    break
        finally:
            s.tx.busy = False
        s.ev("tx", f"start_xmit: done, TDH = {m[MacReg.TDH]}", "start_xmit", tdh=m[MacReg.TDH],
             tdt=m[MacReg.TDT], cause=cause)
        set_ics(s, 0, cause)


def txdesc_writeback(s: E1000State, base: int, dp: TxDesc) -> int:
    """hw/net/e1000.c: with RS (or RPS), set DD in the descriptor's ``upper``; TXDW."""
    if not dp.lower & (TxdCmd.RS | TxdCmd.RPS):
        return 0
    txd_upper = (dp.upper | TxdStat.DD) & ~int(TxdStat.EC | TxdStat.LC | TxdStat.TU) & U32
    with in_function(s.ctx, "txdesc_writeback"):
        pci_dma_write(s, base + 12, txd_upper.to_bytes(4, "little"), "TX descriptor DD")
    s.ev("tx", f"txdesc_writeback: descriptor at {base:#x}: upper = {txd_upper:#010x} (DD)",
         "txdesc_writeback", base=base, upper=txd_upper)
    return int(Icr.TXDW)


def process_tx_desc(s: E1000State, dp: TxDesc) -> None:
    """hw/net/e1000.c: fold one descriptor into ``tx``; at EOP, send (``xmit_seg``)."""
    tp = s.tx
    txd_lower = dp.lower
    dtype = txd_lower & (TxdCmd.DEXT | TxdCmd.DTYP_D)
    split_size = txd_lower & 0xFFFF
    s.mit_ide |= txd_lower & int(TxdCmd.IDE)
    with in_function(s.ctx, "process_tx_desc"):
        if dtype == TxdCmd.DEXT:                           # context descriptor
            op = int.from_bytes(dp.raw[8:12], "little")
            props = tp.tso_props if op & E1000_TXD_CMD_TSE else tp.props
            e1000x_read_tx_ctx_descr(dp.raw, props)
            if op & E1000_TXD_CMD_TSE:
                tp.tso_frames = 0
            what = "TSO" if op & E1000_TXD_CMD_TSE else "checksum"
            s.ev("tx", f"process_tx_desc: context descriptor ({what}): {props}",
                 "process_tx_desc", context=vars(props).copy())
            return
        if dtype == TxdCmd.DEXT | TxdCmd.DTYP_D:           # data descriptor
            if tp.size == 0:
                tp.sum_needed = (dp.upper >> 8) & 0xFF
            tp.cptse = bool(txd_lower & E1000_TXD_CMD_TSE)
        else:                                              # legacy descriptor
            tp.cptse = False
        if (e1000x_vlan_enabled(s.mac_reg) and txd_lower & TxdCmd.VLE
                and (tp.cptse or txd_lower & TxdCmd.EOP)):
            tp.vlan_needed = 1
            tp.vlan_header[0:2] = (s.mac_reg[MacReg.VET] & 0xFFFF).to_bytes(2, "big")
            tp.vlan_header[2:4] = dp.special.to_bytes(2, "big")
        addr = dp.buffer_addr
        if tp.cptse:
            msh = tp.tso_props.hdr_len + tp.tso_props.mss
            hdr_len = tp.tso_props.hdr_len
            while True:
                nbytes = split_size
                if tp.size >= msh:
                    break                                  # goto eop
                if tp.size + nbytes > msh:
                    nbytes = msh - tp.size
                nbytes = min(TX_DATA_SIZE - tp.size, nbytes)
                _tx_dma(s, addr, nbytes)
                sz = tp.size + nbytes
                if sz >= hdr_len and tp.size < hdr_len:
                    tp.header[0:hdr_len] = tp.vbuf[_D:_D + hdr_len]
                tp.size = sz & 0xFFFF
                addr += nbytes
                if sz == msh:
                    xmit_seg(s)
                    tp.vbuf[_D:_D + hdr_len] = tp.header[0:hdr_len]
                    tp.size = hdr_len
                split_size -= nbytes
                if not (nbytes and split_size):
                    break
        else:
            split_size = min(TX_DATA_SIZE - tp.size, split_size)
            _tx_dma(s, addr, split_size)
            tp.size = (tp.size + split_size) & 0xFFFF
        # eop:
        if not txd_lower & TxdCmd.EOP:
            return
        if not (tp.cptse and tp.size < tp.tso_props.hdr_len):
            s.ev("tx", f"process_tx_desc: EOP, {tp.size} bytes assembled → xmit_seg",
                 "process_tx_desc", size=tp.size)
            xmit_seg(s)
        tp.tso_frames = 0
        tp.sum_needed = 0
        tp.vlan_needed = 0
        tp.size = 0
        tp.cptse = False


def _tx_dma(s: E1000State, addr: int, n: int) -> None:
    """``pci_dma_read(d, addr, tp->data + tp->size, n)``."""
    if n <= 0:
        return
    tp = s.tx
    data = pci_dma_read(s, addr, n, "TX buffer")
    tp.vbuf[_D + tp.size:_D + tp.size + n] = data


def xmit_seg(s: E1000State) -> None:
    """hw/net/e1000.c: fix up a TSO segment's headers, insert checksums and VLAN tag, send."""
    tp = s.tx
    b = tp.vbuf
    frames = tp.tso_frames
    props = tp.tso_props if tp.cptse else tp.props
    with in_function(s.ctx, "xmit_seg"):
        if tp.cptse or tp.sum_needed or tp.vlan_needed:
            what = [w for w, on in ((f"TSO segment {frames}", tp.cptse),
                                    ("checksums", tp.sum_needed), ("VLAN tag", tp.vlan_needed))
                    if on]
            s.ev("tx", f"xmit_seg: {tp.size} bytes, {', '.join(what)}", "xmit_seg", size=tp.size,
                 tso_frame=frames if tp.cptse else None, sum_needed=tp.sum_needed,
                 vlan_needed=tp.vlan_needed)
        if tp.cptse:
            css = props.ipcss
            if props.ip:                                   # IPv4: total length, identification
                _st16(b, _D + css + 2, tp.size - css)
                _st16(b, _D + css + 4, _ld16(b, _D + css + 4) + frames)
            else:                                          # IPv6: payload length
                _st16(b, _D + css + 4, tp.size - css)
            css = props.tucss
            length = (tp.size - css) & 0xFFFF
            if props.tcp:
                sofar = frames * props.mss
                seq = int.from_bytes(b[_D + css + 4:_D + css + 8], "big")
                b[_D + css + 4:_D + css + 8] = ((seq + sofar) & U32).to_bytes(4, "big")
                if ((props.paylen - sofar) & U32) > props.mss:
                    b[_D + css + 13] &= ~9 & 0xFF          # clear PSH, FIN
                elif frames:
                    e1000x_inc_reg_if_not_full(s.mac_reg, MacReg.TSCTC)
            else:                                          # UDP length
                _st16(b, _D + css + 4, length)
            if tp.sum_needed & TxdPopts.TXSM:              # pseudo-header length
                phsum = _ld16(b, _D + props.tucso) + length
                phsum = (phsum >> 16) + (phsum & 0xFFFF)
                _st16(b, _D + props.tucso, phsum)
            tp.tso_frames += 1
        if tp.sum_needed & TxdPopts.TXSM:
            putsum(b, tp.size, props.tucso, props.tucss, props.tucse)
        if tp.sum_needed & TxdPopts.IXSM:
            putsum(b, tp.size, props.ipcso, props.ipcss, props.ipcse)
        if tp.vlan_needed:
            b[0:4] = b[_D:_D + 4]                          # memmove(tp->vlan, tp->data, 4)
            b[_D:_D + 8] = b[_D + 4:_D + 12]               # memmove(tp->data, tp->data + 4, 8)
            b[_D + 8:_D + 12] = tp.vlan_header             # memcpy(tp->data + 8, vlan_header, 4)
            e1000_send_packet(s, bytes(b[0:tp.size + 4]))
        else:
            e1000_send_packet(s, bytes(b[_D:_D + tp.size]))
        m = s.mac_reg
        e1000x_inc_reg_if_not_full(m, MacReg.TPT)
        e1000x_grow_8reg_if_not_full(m, MacReg.TOTL, tp.size + 4)
        e1000x_inc_reg_if_not_full(m, MacReg.GPTC)
        e1000x_grow_8reg_if_not_full(m, MacReg.GOTCL, tp.size + 4)


def e1000_send_packet(s: E1000State, buf: bytes) -> None:
    """hw/net/e1000.c: to the peer (``qemu_send_packet``), or back in with PHY loopback."""
    assert s.nic is not None
    loop = bool(s.phy_reg[Mii.BMCR] & MII_BMCR_LOOPBACK)
    s.ev("tx", f"e1000_send_packet: {len(buf)} bytes → "
         f"{'qemu_receive_packet (PHY loopback)' if loop else 'qemu_send_packet'}",
         "e1000_send_packet", len=len(buf), frame=buf.hex(), loopback=loop)
    with in_function(s.ctx, "e1000_send_packet"):
        if loop:
            net.qemu_receive_packet(s.nic, buf)
        else:
            net.qemu_send_packet(s.nic, buf)
    if is_broadcast_ether_addr(buf[:6].ljust(6, b"\0")):
        e1000x_inc_reg_if_not_full(s.mac_reg, MacReg.BPTC)
    elif buf and is_multicast_ether_addr(buf):
        e1000x_inc_reg_if_not_full(s.mac_reg, MacReg.MPTC)
    e1000x_increase_size_stats(s.mac_reg, PTC_REGS, len(buf) + 4)


# --- receive ---------------------------------------------------------------------------------------

def rx_desc_base(s: E1000State) -> int:
    return (s.mac_reg[MacReg.RDBAH] << 32) + (s.mac_reg[MacReg.RDBAL] & ~0xF & U32)


def e1000_has_rxbufs(s: E1000State, total_size: int) -> bool:
    """hw/net/e1000.c: are there enough free descriptors (RDH..RDT) for ``total_size`` bytes?"""
    m = s.mac_reg
    if total_size <= s.rxbuf_size:
        return m[MacReg.RDH] != m[MacReg.RDT]
    if m[MacReg.RDH] < m[MacReg.RDT]:
        bufs = m[MacReg.RDT] - m[MacReg.RDH]
    elif m[MacReg.RDH] > m[MacReg.RDT]:
        bufs = m[MacReg.RDLEN] // DESC_SIZE + m[MacReg.RDT] - m[MacReg.RDH]
    else:
        return False
    return total_size <= bufs * s.rxbuf_size


def e1000_can_receive(nc: NetClientState) -> bool:
    """hw/net/e1000.c: link up, RCTL.EN, bus master, and a free descriptor."""
    s: E1000State = nc.opaque
    return e1000x_rx_ready(s, s.mac_reg) and e1000_has_rxbufs(s, 1)


def e1000_receiver_overrun(s: E1000State, size: int) -> None:
    """hw/net/e1000.c: no room: count it (RNBC, MPC) and raise RXO."""
    s.ev("rx", f"e1000_receiver_overrun: {size} bytes, RDH {s.mac_reg[MacReg.RDH]}, RDT "
         f"{s.mac_reg[MacReg.RDT]}", "e1000_receiver_overrun", size=size,
         rdh=s.mac_reg[MacReg.RDH], rdt=s.mac_reg[MacReg.RDT])
    e1000x_inc_reg_if_not_full(s.mac_reg, MacReg.RNBC)
    e1000x_inc_reg_if_not_full(s.mac_reg, MacReg.MPC)
    set_ics(s, 0, Icr.RXO)


def e1000_receive(nc: NetClientState, buf: bytes) -> int:
    """hw/net/e1000.c: ``NetClientInfo.receive`` of the e1000 (one buffer)."""
    s: E1000State = nc.opaque
    with in_function(s.ctx, "e1000_receive"):
        return e1000_receive_iov(s, bytes(buf))


def e1000_receive_iov(s: E1000State, buf: bytes) -> int:
    """hw/net/e1000.c: filter, strip the VLAN tag, write the frame into RX descriptors.

    Returns the size taken, or -1 when the frame is dropped for lack of room
    or receive being off.
    """
    m = s.mac_reg
    size = len(buf)
    with in_function(s.ctx, "e1000_receive_iov"):
        if not e1000x_hw_rx_enabled(m):
            s.ev("rx", f"e1000_receive_iov: receive disabled (STATUS.LU "
                 f"{int(bool(m[MacReg.STATUS] & Status.LU))}, RCTL.EN "
                 f"{int(bool(m[MacReg.RCTL] & Rctl.EN))}): dropped", "e1000_receive_iov",
                 len=size, dropped="rx disabled")
            return -1
        filter_buf = buf
        if size < MAXIMUM_ETHERNET_HDR_LEN:
            filter_buf = buf + bytes(MAXIMUM_ETHERNET_HDR_LEN - size)  # QEMU: min_buf
        if e1000x_is_oversized(m, size):
            s.ev("rx", f"e1000_receive_iov: {size} bytes is oversized (RCTL.LPE "
                 f"{int(bool(m[MacReg.RCTL] & Rctl.LPE))}): discarded, ROC "
                 f"{m[MacReg.ROC]}", "e1000_receive_iov", len=size, dropped="oversized")
            return size
        ok, why = receive_filter(s, filter_buf)
        if not ok:
            s.ev("rx", f"e1000_receive_iov: receive_filter drops it: {why}",
                 "e1000_receive_iov", len=size, dropped="filter", why=why)
            return size
        vlan_special = 0
        vlan_status = 0
        payload = buf
        if e1000x_vlan_enabled(m) and e1000x_is_vlan_packet(filter_buf, m[MacReg.VET]):
            vlan_special = int.from_bytes(filter_buf[14:16], "big")
            payload = buf[0:12] + buf[16:]                 # memmove(filter_buf + 4, …, 12)
            vlan_status = RxdStat.VP
            size -= 4
        pkt_type = get_eth_packet_type(filter_buf)
        rdh_start = m[MacReg.RDH]
        desc_offset = 0
        total_size = size + e1000x_fcs_len(m)
        s.ev("rx", f"e1000_receive_iov: {size} bytes ({why}), {total_size} with FCS, into the "
             f"ring at {rx_desc_base(s):#x} from RDH {rdh_start} (RDT {m[MacReg.RDT]}, "
             f"rxbuf_size {s.rxbuf_size})", "e1000_receive_iov", len=size,
             total_size=total_size, rdh=rdh_start, rdt=m[MacReg.RDT], rdlen=m[MacReg.RDLEN],
             rdba=rx_desc_base(s), frame=payload.hex())
        if not e1000_has_rxbufs(s, total_size):
            e1000_receiver_overrun(s, total_size)
            return -1
        while True:
            desc_size = min(total_size - desc_offset, s.rxbuf_size)
            rdh = m[MacReg.RDH]
            base = rx_desc_base(s) + DESC_SIZE * rdh
            fetched = pci_dma_fetch(s, base, DESC_SIZE)         # recorded in the event below
            desc = RxDesc.unpack(fetched.data)
            desc.special = vlan_special
            desc.status &= ~int(RxdStat.DD) & 0xFF
            if desc.buffer_addr:
                if desc_offset < size:
                    copy_size = min(size - desc_offset, s.rxbuf_size)
                    pci_dma_write(s, desc.buffer_addr,
                                  payload[desc_offset:desc_offset + copy_size], "RX buffer")
                desc_offset += desc_size
                desc.length = desc_size & 0xFFFF
                if desc_offset >= total_size:
                    desc.status |= RxdStat.EOP | RxdStat.IXSM
                else:
                    desc.status &= ~int(RxdStat.EOP) & 0xFF
            pci_dma_write(s, base, desc.pack(), f"RX descriptor {rdh}")
            desc.status |= vlan_status | RxdStat.DD
            pci_dma_write(s, base + 12, bytes([desc.status]), f"RX descriptor {rdh} status")
            if s.ctx.trace is not None:
                notes = f" — {'; '.join(fetched.notes)}" if fetched.notes else ""
                s.ev("rx", f"e1000_receive_iov: descriptor {rdh} at {base:#x}: "
                     + (f"buffer {desc.buffer_addr:#x}, length {desc.length}"
                        if desc.buffer_addr else "null buffer address, skipped")
                     + f", status {_flags(desc.status, RxdStat)}{notes}", "e1000_receive_iov",
                     index=rdh, base=base, buffer_addr=desc.buffer_addr, length=desc.length,
                     status=desc.status, special=desc.special, fetched=fetched.data.hex(),
                     notes=list(fetched.notes))
            m[MacReg.RDH] = (m[MacReg.RDH] + 1) & U32
            if m[MacReg.RDH] * DESC_SIZE >= m[MacReg.RDLEN]:
                m[MacReg.RDH] = 0
            if m[MacReg.RDH] == rdh_start or rdh_start >= m[MacReg.RDLEN] // DESC_SIZE:
                s.ev("rx", f"e1000_receive_iov: RDH wraparound @{rdh_start:x}, RDT "
                     f"{m[MacReg.RDT]:x}, RDLEN {m[MacReg.RDLEN]:x}", "e1000_receive_iov",
                     rdh=m[MacReg.RDH], wraparound=True)
                e1000_receiver_overrun(s, total_size)
                return -1
            if desc_offset >= total_size:
                break
        e1000x_update_rx_total_stats(m, pkt_type, size, total_size)
        n = int(Icr.RXT0)
        rdt = m[MacReg.RDT]
        if rdt < m[MacReg.RDH]:
            rdt += m[MacReg.RDLEN] // DESC_SIZE
        if ((rdt - m[MacReg.RDH]) & U32) * DESC_SIZE <= m[MacReg.RDLEN] >> s.rxbuf_min_shift:
            n |= Icr.RXDMT0
        s.ev("rx", f"e1000_receive_iov: done, RDH = {m[MacReg.RDH]}", "e1000_receive_iov",
             rdh=m[MacReg.RDH], rdt=m[MacReg.RDT], cause=n)
        set_ics(s, 0, n)
        return size


def receive_filter(s: E1000State, buf: bytes) -> tuple[bool, str]:
    """hw/net/e1000.c: the VLAN filter (for tagged frames), then the address filter."""
    m = s.mac_reg
    if e1000x_is_vlan_packet(buf, m[MacReg.VET]) and not e1000x_rx_vlan_filter(m, buf):
        return False, f"VLAN {int.from_bytes(buf[14:16], 'big') & 0xFFF} not in VFTA"
    return e1000x_rx_group_filter(m, buf)


def e1000_set_link_status(nc: NetClientState) -> None:
    """hw/net/e1000.c: the backend's link went up or down; LSC if STATUS changed."""
    s: E1000State = nc.opaque
    old_status = s.mac_reg[MacReg.STATUS]
    if nc.link_down:
        e1000x_update_regs_on_link_down(s.mac_reg, s.phy_reg)
    elif s.phy_reg[Mii.BMCR] & MII_BMCR_AUTOEN and not s.phy_reg[Mii.BMSR] & MII_BMSR_AN_COMP:
        e1000x_update_regs_on_link_down(s.mac_reg, s.phy_reg)   # e1000x_restart_autoneg
        e1000_autoneg_timer(s)
    else:
        e1000x_update_regs_on_link_up(s.mac_reg, s.phy_reg)
        net.qemu_flush_queued_packets(nc)
    if s.mac_reg[MacReg.STATUS] != old_status:
        set_ics(s, 0, Icr.LSC)


#: hw/net/e1000.c ``net_e1000_info``
net_e1000_info = NetClientInfo(type="nic", receive=e1000_receive, can_receive=e1000_can_receive,
                               link_status_changed=e1000_set_link_status,
                               receive_name="e1000_receive_iov")


__all__ = [
    "DESC_SIZE", "E1000_DEV_ID_82540EM", "E1000_EEPROM_TEMPLATE", "IOPORT_SIZE", "PNPMMIO_SIZE",
    "Ctrl", "E1000State", "E1000Tx", "Eecd", "Icr", "MacReg", "Mdic", "Mii", "Rctl", "RxDesc",
    "RxdStat", "Status", "Tctl", "TxDesc", "TxdCmd", "TxdPopts", "TxdStat", "e1000_can_receive",
    "e1000_has_rxbufs", "e1000_io_ops", "e1000_mmio_ops", "e1000_mmio_read", "e1000_mmio_write",
    "e1000_receive", "e1000_receive_iov", "e1000x_core_prepare_eeprom", "e1000x_rxbufsize",
    "macreg_readops", "macreg_writeops", "net_e1000_info", "process_tx_desc", "reg_name",
    "set_ics", "set_interrupt_cause", "start_xmit", "txdesc_writeback", "xmit_seg",
]
