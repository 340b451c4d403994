"""Where the guests' devices live: the I/O ports and guest-physical addresses they use.

The guest listings take these numbers from here (as ``.equ`` lines), so a
reader sees one name in the assembly, in the exits and in the device model.
On a bare one-vCPU VM with no in-kernel devices (no ``KVM_CREATE_IRQCHIP``,
no PIT), KVM hands *every* port access and every access to an address with no
memory slot to user space, so each of these is one exit per access.
"""

from __future__ import annotations

from vbook.bus import COM1

#: where a guest is loaded and starts (CS:IP = 0:LOAD_ADDR, as ``Guest.load_addr``)
LOAD_ADDR = 0x1000
#: the stack pointer a guest starts with (grows down, below the code)
STACK_TOP = 0x1000
#: bytes of RAM: one memory slot at guest-physical 0 (``Guest.mem_size``)
MEM_SIZE = 0x10000

#: i8042 keyboard controller data port (QEMU hw/input/pckbd.c): the guest reads bytes here
KBD_DATA = 0x60
#: QEMU's pc-testdev I/O port (hw/misc/pc-testdev.c, used by kvm-unit-tests):
#: 1-, 2- and 4-byte accesses, where the guests show a value they computed
TESTDEV_PORT = 0xE0
#: a device's register block at a guest-physical address with no RAM behind it:
#: every load or store there is a KVM_EXIT_MMIO (real mode reaches it as segment 0xD000)
MMIO_BASE = 0xD0000

__all__ = ["COM1", "KBD_DATA", "LOAD_ADDR", "MEM_SIZE", "MMIO_BASE", "STACK_TOP", "TESTDEV_PORT"]
