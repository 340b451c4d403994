"""e1000_ping: an e1000 driver in real-mode x86 that brings the NIC up as Linux's ``e1000``
driver does and pings the host through it.

It makes a subset of the register accesses of Linux 6.1's
drivers/net/ethernet/intel/e1000/e1000_main.c, in Linux's order (each step in the listing
names the function it stands for; what it leaves out is listed below):

1. ``e1000_probe``: find 8086:100e (an 82540EM, QEMU's ``-device e1000``) on bus 0 through
   0xCF8/0xCFC; size BAR0 and place it at :data:`BAR0` (SeaBIOS's job; it is below 1 MiB so
   a real-mode guest reaches the 128 KiB register file through ES); memory decoding and bus
   mastering (Linux: ``pci_enable_device`` — the 82540 is one of the parts
   ``e1000_is_need_ioport`` lists, so I/O decoding too — then ``pci_set_master``).
2. ``e1000_reset_hw`` (82540): mask every interrupt (IMC), stop RX and TX, flush (a STATUS
   read), CTRL.RST, mask again, clear ICR. (Linux writes the RST through the I/O BAR,
   ``E1000_WRITE_REG_IO``, and also updates MANC; QEMU's reset bit does nothing either way:
   ``set_ctrl`` stores ``val & ~E1000_CTRL_RST``.)
3. ``e1000_validate_eeprom_checksum``: the 64 EEPROM words must add up to 0xBABA;
   ``e1000_read_mac_addr``: the MAC is words 0-2. **Not Linux's way:** on an 82540 Linux reads
   the Microwire EEPROM by bit-banging EECD (``e1000_shift_out_ee_bits`` /
   ``e1000_shift_in_ee_bits``, which QEMU emulates in ``set_eecd`` / ``get_eecd``): 160
   register accesses per word (:mod:`vbook.devices.e1000_eeprom_linux` runs those functions
   against the model and counts); this guest reads the same words through EERD, which QEMU
   also implements (``flash_eerd_read``), at two exits a word.
4. ``e1000_open`` → ``e1000_configure``: ``e1000_configure_tx`` (TDLEN, TDBAH, TDBAL, TDT,
   TDH, TCTL without EN), ``e1000_setup_rctl`` (BAM, 2048-byte buffers; no SECRC — Linux
   takes the 4 CRC bytes off the length itself), ``e1000_configure_rx`` (RX off, RDLEN,
   RDBAH, RDBAL, RDT, RDH, RX on), ``e1000_alloc_rx_buffers`` (``E1000_DESC_UNUSED`` = 7 of
   the 8 descriptors get a buffer; RDT = 6, Linux's ``i--``), ``e1000_irq_enable`` (IMS =
   ``IMS_ENABLE_MASK``, flush). ``e1000_watchdog`` sees the link up (STATUS.LU) and sets
   TCTL.EN.
5. For each frame of :data:`vbook.guests.net_ping.FRAMES`, ``e1000_xmit_frame``: one legacy
   descriptor (EOP | IFCS | RS), then TDT — the doorbell.
6. Wait for the answer by polling ICR. A non-zero ICR is where ``e1000_intr`` would run:
   IMC = ~0 and a flush, then NAPI's ``e1000_clean`` → ``e1000_clean_rx_irq`` (every
   descriptor with DD: an answer of the expected ICMPv6 type is shown, anything else passed
   over), ``e1000_alloc_rx_buffers`` for what was cleaned (RDT), then ``e1000_irq_enable``
   (IMS, flush). That is the work Linux does per interrupt, register access for register
   access.

Left out of Linux's accesses: ``e1000_reset`` / ``e1000_init_hw`` and the PHY (MDIC reads in
``e1000_check_for_link``), ``e1000_set_rx_mode`` (the multicast table: so the card drops
multicast frames it was never told about), TIPG / TIDV / TADV and the collision distance in
``e1000_configure_tx``, RDTR / RADV / ITR and RXCSUM in ``e1000_configure_rx`` (no interrupt
moderation), the ICS write of LSC in ``e1000_open`` that starts the watchdog, statistics.
Also simpler: no interrupt is taken (ICR is polled; this board has no interrupt controller),
IDE is not set in TX descriptors, TX descriptors are reclaimed by nobody (8 of them are
plenty for four frames).

What it shows at port 0xE0, in order: the BAR0 size mask (0xfffe0000: 128 KiB of memory),
the EEPROM sum (0xbaba), the MAC (first four bytes, then the last two), STATUS at the
watchdog, then per frame: the ICR value that ended the wait and the length in the RX
descriptor (frame + 4 CRC bytes), or :data:`~net_ping.TIMEOUT`.
"""

from __future__ import annotations

from vbook.devices.e1000 import (
    E1000_EEPROM_RW_ADDR_SHIFT,
    E1000_EEPROM_RW_REG_DONE,
    E1000_EEPROM_RW_REG_START,
    Icr,
    MacReg,
    Rctl,
    Tctl,
    TxdCmd,
)
from vbook.guests import net_ping
from vbook.guests.base import Guest
from vbook.guests.ports import LOAD_ADDR, TESTDEV_PORT

#: where the guest puts BAR0 (below 1 MiB: real mode reaches it as segment BAR0 >> 4)
BAR0 = 0xE0000
#: the RX and TX descriptor rings: 8 legacy descriptors of 16 bytes each
RX_RING, TX_RING, RING_LEN = 0x2000, 0x2100, 8
#: receive buffers: one per RX descriptor, 2048 bytes (RCTL.BSIZE 0)
RX_BUF, RX_BUF_LEN = 0x8000, 0x800
#: drivers/net/ethernet/intel/e1000/e1000_hw.h IMS_ENABLE_MASK
IMS_ENABLE_MASK = int(Icr.RXT0 | Icr.TXDW | Icr.RXDMT0 | Icr.RXSEQ | Icr.LSC)
#: e1000_hw.h: E1000_TCTL_CT (collision threshold), E1000_TCTL_RTLC, E1000_COLLISION_THRESHOLD
TCTL_CT, TCTL_RTLC, COLLISION_THRESHOLD, CT_SHIFT = 0x00000FF0, 0x01000000, 15, 4
#: what e1000_configure_tx ors into TCTL
TCTL_BITS = int(Tctl.PSP) | TCTL_RTLC | COLLISION_THRESHOLD << CT_SHIFT
#: e1000_hw.h E1000_STATUS_LU
STATUS_LU = 0x2


def _reg(name: str) -> str:
    return f"        .equ {name}, {MacReg[name].offset:#x}"


LISTING = f"""\
# e1000_ping - real mode: Linux's e1000 probe and open, then ping.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ CONFIG_ADDRESS, 0xcf8          # PCI config mechanism #1 (i440FX host bridge)
        .equ CONFIG_DATA, 0xcfc
        .equ TESTDEV_PORT, {TESTDEV_PORT:#x}             # pc-testdev's latch: where the guest shows values
        .equ E1000_ID, 0x100e8086           # config dword 0 of an 82540EM: device << 16 | vendor
        .equ BAR0, {BAR0:#x}                 # where this guest maps the 128 KiB register file
{chr(10).join(_reg(n) for n in ("CTRL", "STATUS", "EERD", "ICR", "IMS", "IMC", "RCTL", "TCTL",
                                 "RDBAL", "RDBAH", "RDLEN", "RDH", "RDT",
                                 "TDBAL", "TDBAH", "TDLEN", "TDH", "TDT"))}
        .equ CTRL_RST, 0x04000000
        .equ STATUS_LU, {STATUS_LU:#x}
        .equ EERD_START, {E1000_EEPROM_RW_REG_START:#x}
        .equ EERD_DONE, {E1000_EEPROM_RW_REG_DONE:#x}
        .equ EERD_ADDR_SHIFT, {E1000_EEPROM_RW_ADDR_SHIFT}
        .equ IMS_ENABLE_MASK, {IMS_ENABLE_MASK:#x}     # RXT0 | TXDW | RXDMT0 | RXSEQ | LSC
        .equ TCTL_EN, {int(Tctl.EN):#x}
        .equ TCTL_PSP, {int(Tctl.PSP):#x}
        .equ TCTL_CT, {TCTL_CT:#x}
        .equ TCTL_BITS, {TCTL_BITS:#x}           # PSP | RTLC | 15 << CT_SHIFT
        .equ RCTL_EN, {int(Rctl.EN):#x}
        .equ RCTL_BAM, {int(Rctl.BAM):#x}
        .equ TXD_CMD, {int(TxdCmd.EOP | TxdCmd.IFCS | TxdCmd.RS):#010x}    # EOP | IFCS | RS
        .equ RXD_STAT_DD, 1
        .equ RX_RING, {RX_RING:#x}
        .equ TX_RING, {TX_RING:#x}
        .equ RING_LEN, {RING_LEN}
        .equ RX_BUF, {RX_BUF:#x}
        .equ POLLS, {net_ping.POLLS}
        .equ TIMEOUT, {net_ping.TIMEOUT:#x}
_start:
        xor   ax, ax
        mov   ds, ax
# --- e1000_probe: find the device, let it decode and DMA ------------------------------------
        mov   eax, E1000_ID
        call  pci_probe
        jc    fail
        mov   al, 0x10                      # PCI_BASE_ADDRESS_0: size it ...
        mov   ecx, 0xffffffff
        call  pci_write
        mov   al, 0x10
        call  pci_read
        call  show                          # 0xfffe0000: 128 KiB, 32-bit memory
        mov   al, 0x10                      # ... and place it (the firmware's job)
        mov   ecx, BAR0
        call  pci_write
        mov   al, 0x04                      # PCI_COMMAND = MEMORY | MASTER
        mov   ecx, 0x0006
        call  pci_write
        mov   ax, BAR0 >> 4
        mov   es, ax                        # es:[reg] is the register: pci_ioremap_bar
# --- e1000_reset_hw --------------------------------------------------------------------------
        mov   dword ptr es:[IMC], 0xffffffff   # mask every interrupt
        mov   dword ptr es:[RCTL], 0           # stop receiving
        mov   dword ptr es:[TCTL], TCTL_PSP    # stop sending
        mov   eax, dword ptr es:[STATUS]       # E1000_WRITE_FLUSH
        mov   eax, dword ptr es:[CTRL]
        or    eax, CTRL_RST
        mov   dword ptr es:[CTRL], eax         # global reset
        mov   dword ptr es:[IMC], 0xffffffff
        mov   eax, dword ptr es:[ICR]          # clear what is pending
# --- e1000_validate_eeprom_checksum, e1000_read_mac_addr ------------------------------------
        xor   si, si                           # word number
        xor   di, di                           # the sum
eeprom_sum:
        call  eerd_read
        add   di, ax
        inc   si
        cmp   si, 64
        jb    eeprom_sum
        movzx eax, di
        call  show                             # 0xbaba (Linux logs "EEPROM Checksum Is Not Valid")
        cmp   di, 0xbaba
        jne   fail
        xor   si, si
        mov   bx, mac - _start + LOAD_ADDR
read_mac:
        call  eerd_read                        # words 0, 1, 2: the MAC, low byte first
        mov   word ptr [bx], ax
        add   bx, 2
        inc   si
        cmp   si, 3
        jb    read_mac
        mov   eax, dword ptr [mac - _start + LOAD_ADDR]
        call  show
        movzx eax, word ptr [mac - _start + LOAD_ADDR + 4]
        call  show
# --- e1000_open -> e1000_configure: e1000_configure_tx ----------------------------------------
        mov   dword ptr es:[TDLEN], RING_LEN * 16
        mov   dword ptr es:[TDBAH], 0
        mov   dword ptr es:[TDBAL], TX_RING
        mov   dword ptr es:[TDT], 0
        mov   dword ptr es:[TDH], 0
        mov   eax, dword ptr es:[TCTL]
        and   eax, ~TCTL_CT
        or    eax, TCTL_BITS
        mov   dword ptr es:[TCTL], eax         # not enabled yet: the watchdog does that
# --- e1000_setup_rctl, e1000_configure_rx ------------------------------------------------------
        mov   eax, dword ptr es:[RCTL]
        or    eax, RCTL_BAM                    # broadcasts; 2048-byte buffers (BSIZE 0)
        mov   dword ptr es:[RCTL], eax
        mov   eax, dword ptr es:[RCTL]
        and   eax, ~RCTL_EN
        mov   dword ptr es:[RCTL], eax         # receiver off while the ring is set
        mov   dword ptr es:[RDLEN], RING_LEN * 16
        mov   dword ptr es:[RDBAH], 0
        mov   dword ptr es:[RDBAL], RX_RING
        mov   dword ptr es:[RDT], 0
        mov   dword ptr es:[RDH], 0
        or    eax, RCTL_EN
        mov   dword ptr es:[RCTL], eax         # receiver on
# --- e1000_alloc_rx_buffers(E1000_DESC_UNUSED = 7) -------------------------------------------
        mov   cx, RING_LEN - 1
alloc:
        call  alloc_rx_buffer
        loop  alloc
        call  write_rdt
# --- e1000_irq_enable, then e1000_watchdog: link up -> TCTL.EN --------------------------------
        mov   dword ptr es:[IMS], IMS_ENABLE_MASK
        mov   eax, dword ptr es:[STATUS]       # E1000_WRITE_FLUSH
        mov   eax, dword ptr es:[STATUS]       # e1000_check_for_link: is the link up?
        call  show
        test  al, STATUS_LU
        jz    fail
        mov   eax, dword ptr es:[TCTL]
        or    eax, TCTL_EN
        mov   dword ptr es:[TCTL], eax         # "enable transmits in the hardware"
# --- e1000_xmit_frame, one frame at a time, each followed by the wait for its answer ---------
        mov   bp, frames - _start + LOAD_ADDR
next_frame:
        cmp   word ptr [bp], 0
        je    done
        call  xmit_frame
        call  wait_answer
        add   bp, 6
        jmp   next_frame
done:
        hlt
fail:
        mov   eax, TIMEOUT
        call  show
        hlt

# --- one EEPROM word through EERD (Linux bit-bangs EECD instead): ax = word si -----------------
eerd_read:
        movzx eax, si
        shl   eax, EERD_ADDR_SHIFT
        or    eax, EERD_START
        mov   dword ptr es:[EERD], eax
eerd_poll:
        mov   eax, dword ptr es:[EERD]         # e1000_poll_eerd_eewr_done
        test  eax, EERD_DONE
        jz    eerd_poll
        shr   eax, 16                          # the data is in bits 31:16
        ret

# --- one RX descriptor gets buffer next_to_use; next_to_use++ ----------------------------------
alloc_rx_buffer:
        mov   bx, word ptr [next_to_use - _start + LOAD_ADDR]
        mov   di, bx
        shl   di, 4
        add   di, RX_RING                      # rx_desc = E1000_RX_DESC(*rx_ring, i)
        mov   ax, bx
        shl   ax, 11
        add   ax, RX_BUF
        mov   word ptr [di], ax                # buffer_addr (the high bytes stay 0)
        mov   dword ptr [di + 8], 0            # length, csum: the device writes them
        mov   dword ptr [di + 12], 0           # status, errors, special
        inc   bx
        and   bx, RING_LEN - 1
        mov   word ptr [next_to_use - _start + LOAD_ADDR], bx
        ret

write_rdt:                                     # RDT = next_to_use - 1 (Linux's i--)
        mov   ax, word ptr [next_to_use - _start + LOAD_ADDR]
        dec   ax
        and   ax, RING_LEN - 1
        movzx eax, ax
        mov   dword ptr es:[RDT], eax
        ret

# --- e1000_xmit_frame -> e1000_tx_queue: frame table entry bp -------------------------------
xmit_frame:
        mov   bx, word ptr [tx_next - _start + LOAD_ADDR]
        mov   di, bx
        shl   di, 4
        add   di, TX_RING
        mov   ax, word ptr [bp]
        mov   word ptr [di], ax                # buffer_addr
        movzx eax, word ptr [bp + 2]
        or    eax, TXD_CMD
        mov   dword ptr [di + 8], eax          # lower: length | cmd
        mov   dword ptr [di + 12], 0           # upper: status
        inc   bx
        and   bx, RING_LEN - 1
        mov   word ptr [tx_next - _start + LOAD_ADDR], bx
        movzx eax, bx
        mov   dword ptr es:[TDT], eax          # the doorbell: QEMU's set_tctl -> start_xmit
        ret

# --- wait for the answer: poll ICR; where it is non-zero, what e1000_intr and NAPI do ----------
wait_answer:
        mov   cx, POLLS
wait_poll:
        mov   eax, dword ptr es:[ICR]          # e1000_intr: icr = er32(ICR) (read clears it)
        test  eax, eax
        jnz   intr
        loop  wait_poll
        mov   eax, TIMEOUT                     # nothing came
        call  show
        ret
intr:
        mov   dword ptr [icr - _start + LOAD_ADDR], eax
        mov   dword ptr es:[IMC], 0xffffffff   # "disable interrupts, without the synchronize_irq bit"
        mov   eax, dword ptr es:[STATUS]       # E1000_WRITE_FLUSH
        mov   byte ptr [found - _start + LOAD_ADDR], 0
        xor   dx, dx                           # cleaned_count
clean_rx:                                      # e1000_clean_rx_irq
        mov   bx, word ptr [next_to_clean - _start + LOAD_ADDR]
        mov   di, bx
        shl   di, 4
        add   di, RX_RING
        test  byte ptr [di + 12], RXD_STAT_DD  # while (rx_desc->status & E1000_RXD_STAT_DD)
        jz    clean_done
        inc   dx
        inc   bx
        and   bx, RING_LEN - 1
        mov   word ptr [next_to_clean - _start + LOAD_ADDR], bx
        cmp   byte ptr [found - _start + LOAD_ADDR], 0
        jne   clean_rx                         # one answer per frame: the rest is passed over
        movzx eax, word ptr [di + 8]           # length (the CRC's 4 bytes included)
        mov   si, word ptr [di]                # the buffer
        cmp   word ptr [si + {net_ping.OFF_ETHERTYPE}], 0xdd86    # EtherType IPv6 (big-endian)
        jne   clean_rx
        cmp   byte ptr [si + {net_ping.OFF_NEXT_HEADER}], 58        # next header ICMPv6
        jne   clean_rx
        mov   bl, byte ptr [si + {net_ping.OFF_ICMP6_TYPE}]
        cmp   bl, byte ptr [bp + 4]            # the type this frame waits for
        jne   clean_rx
        mov   byte ptr [found - _start + LOAD_ADDR], 1
        push  eax
        mov   eax, dword ptr [icr - _start + LOAD_ADDR]
        call  show                             # the ICR value the wait ended with
        pop   eax
        call  show                             # the length the device wrote
        jmp   clean_rx
clean_done:
        test  dx, dx
        jz    irq_enable
        mov   cx, dx
refill:                                        # e1000_alloc_rx_buffers(cleaned_count)
        call  alloc_rx_buffer
        loop  refill
        call  write_rdt
irq_enable:                                    # napi_complete_done -> e1000_irq_enable
        mov   dword ptr es:[IMS], IMS_ENABLE_MASK
        mov   eax, dword ptr es:[STATUS]       # E1000_WRITE_FLUSH
        cmp   byte ptr [found - _start + LOAD_ADDR], 0
        jne   answered
        mov   cx, POLLS
        jmp   wait_poll
answered:
        ret

{net_ping.PCI_PROBE}

        .balign 2
next_to_use:
        .word 0
next_to_clean:
        .word 0
tx_next:
        .word 0
icr:
        .long 0
found:
        .byte 0
mac:
        .byte 0, 0, 0, 0, 0, 0
        .balign 2
{net_ping.frames_table()}
"""

# CODE is what GNU as makes of LISTING (python -m vbook.guests.build rewrites it)
CODE = bytes.fromhex(
    "31c08ed866b886800e10e8fa020f829b"
    "01b01066b9ffffffffe82c03b010e815"
    "03e83903b01066b900000e00e81903b0"
    "0466b906000000e80e03b800e08ec026"
    "66c706d800ffffffff2666c706000100"
    "0000002666c7060004080000002666a1"
    "08002666a10000660d000000042666a3"
    "00002666c706d800ffffffff2666a1c0"
    "0031f631ffe82e0101c74683fe4072f5"
    "660fb7c7e8c60281ffbaba0f850d0131"
    "f6bb7113e80f01890783c3024683fe03"
    "72f266a17113e8a402660fb7067513e8"
    "9b022666c7060838800000002666c706"
    "0438000000002666c706003800210000"
    "2666c7061838000000002666c7061038"
    "000000002666a1000466250ff0ffff66"
    "0df80000012666a300042666a1000166"
    "0d008000002666a300012666a1000166"
    "83e0fd2666a300012666c70608288000"
    "00002666c7060428000000002666c706"
    "0028002000002666c706182800000000"
    "2666c7061028000000006683c8022666"
    "a30001b90700e87000e2fbe89b002666"
    "c706d0009d0000002666a108002666a1"
    "0800e8d801a80274232666a100046683"
    "c8022666a30004bd7813837e0000740b"
    "e87700e8af0083c506ebeff466b8adde"
    "0000e8a801f4660fb7c666c1e0086683"
    "c8012666a314002666a1140066a91000"
    "000074f366c1e810c38b1e661389dfc1"
    "e70481c7002089d8c1e00b0500808905"
    "66c745080000000066c7450c00000000"
    "4383e307891e6613c3a166134883e007"
    "660fb7c02666a31828c38b1e6a1389df"
    "c1e70481c700218b46008905660fb746"
    "02660d0000000b6689450866c7450c00"
    "0000004383e307891e6a13660fb7c326"
    "66a31838c3b9f4012666a1c0006685c0"
    "750ce2f466b8adde0000e8f000c366a3"
    "6c132666c706d800ffffffff2666a108"
    "00c60670130031d28b1e681389dfc1e7"
    "0481c70020f6450c017441424383e307"
    "891e6813803e70130075dd660fb74508"
    "8b35817c0c86dd75cf807c143a75c98a"
    "5c363a5e0475c1c606701301665066a1"
    "6c13e888006658e88300ebac85d2740a"
    "89d1e8f4fee2fbe81fff2666c706d000"
    "9d0000002666a10800803e7013007506"
    "b9f401e952ffc36689c166bb00000080"
    "6689d8baf80c66efbafc0c66ed6639c8"
    "74126681c3000800006681fb00000180"
    "72def9c3f8c3660fb6c06609d8baf80c"
    "66efbafc0c66edc3660fb6c06609d8ba"
    "f80c66efbafc0c6689c866efc352bae0"
    "0066ef5ac39000000000000000000000"
    "0000000000000090921356008800e813"
    "760081005e1476008100d41476008100"
    "00003333ff00000152540012345686dd"
    "6000000000203afffe80000000000000"
    "0000000000000002ff02000000000000"
    "00000001ff0000018700f5dc00000000"
    "fe800000000000000000000000000001"
    "01015254001234560276620000015254"
    "0012345686dd6000000000403a40fe80"
    "0000000000000000000000000002fe80"
    "00000000000000000000000000018000"
    "150a7662000100010203040506070809"
    "0a0b0c0d0e0f10111213141516171819"
    "1a1b1c1d1e1f20212223242526272829"
    "2a2b2c2d2e2f30313233343536370276"
    "6200000152540012345686dd60000000"
    "00403a40fe8000000000000000000000"
    "00000002fe8000000000000000000000"
    "00000001800015097662000200010203"
    "0405060708090a0b0c0d0e0f10111213"
    "1415161718191a1b1c1d1e1f20212223"
    "2425262728292a2b2c2d2e2f30313233"
    "34353637027662000001525400123456"
    "86dd6000000000403a40fe8000000000"
    "00000000000000000002fe8000000000"
    "00000000000000000001800015087662"
    "0003000102030405060708090a0b0c0d"
    "0e0f101112131415161718191a1b1c1d"
    "1e1f202122232425262728292a2b2c2d"
    "2e2f3031323334353637"
)

GUEST = Guest(name="e1000_ping", mode=16, code=CODE, listing=LISTING,
              description="Linux's e1000 probe and open in real mode: finds the 82540EM on PCI, "
                          "resets it, checks the EEPROM, sets up the TX and RX descriptor rings, "
                          "sends an NS and three pings, polls ICR for each answer",
              load_addr=LOAD_ADDR, mem_size=0x10000, stack_top=0x1000)
