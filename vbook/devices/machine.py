"""The board the run-loop model runs a guest on: two address spaces and three devices.

Like ``qemu-system-x86_64 -machine pc -device isa-debug-exit -device
pc-testdev`` with its first serial port, cut down to what this book's guests
use: QEMU's two root regions (system/physmem.c ``memory_map_init``) —
"io", 64 KiB of ports whose own ops are ``unassigned_io_ops``, and
"system", a container of all 2**64 bytes — with

* the 16550 UART "serial" at 0x3f8 (hw/char/serial-isa.c, COM1),
* ``isa-debug-exit`` at 0x501 (hw/misc/debugexit.c defaults),
* ``pc-testdev``'s ports at 0xe0 and 0xe8 and its MMIO window at 0xff000000
  (hw/misc/pc-testdev.c).

Everything else is unassigned: an ``IN`` from another port answers all ones,
a load from another address with no RAM answers 0. QEMU's real pc board has
many more devices and, between the roots and the devices, more containers
(the ISA and PCI address spaces; compare ``info mtree`` in the QEMU monitor).
Guest RAM is a KVM memory slot, not a region here: KVM never exits for it.

**PCI** (:mod:`vbook.devices.pci`), only on a board that asks for it —
``Machine(pci=True)``, ``Machine(nics=[backend, …])``, or the first
:meth:`Machine.add_pci_device` — so the board of chapter 02 keeps its
``info mtree``: the i440FX host bridge's config ports "pci-conf-idx" (0xcf8)
and "pci-conf-data" (0xcfc), bus 0 with the i440FX at 00:00.0 (8086:1237),
and the devices added after it at the next free slots (00:01.0 …; QEMU's
``-M pc`` has its PIIX3 at 00:01.0 and VGA at 00:02.0, so an e1000 lands at
00:03.0 there). Each entry of ``nics`` is a backend with ``send(frame)`` /
``recv(timeout)`` (:class:`~vbook.devices.net_client.NetBackend`: a tap, the
loopback peer, :class:`~vbook.devices.net_client.MemoryBackend`) that gets an
e1000 in front of it, like ``-nic tap,model=e1000``; MACs are QEMU's
defaults, 52:54:00:12:34:56 and up. A BAR appears in ``info_mtree()`` once
the guest has programmed it and enabled decoding; ``info_pci()`` lists the bus
like the monitor's ``info pci``.

Devices reach guest RAM by DMA through :attr:`Machine.ram` — the vCPU's own
memory while :func:`vbook.models.run_loop.run` runs a guest (``vcpu.memory``),
or a :class:`~vbook.memory.GuestMemory` given for a test. A PCI interrupt line
ends in :attr:`Machine.pirq` (the level of PIRQ A-D) and an ``irq`` event:
the board has no interrupt controller, so nothing delivers it to the vCPU and
a driver polls its device. Frames waiting in a backend go to the guest's NIC
when the main loop polls it: :meth:`Machine.main_loop_poll` (``tap_send``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vbook.devices import debug_exit, pc_testdev, serial16550
from vbook.devices.debug_exit import ISADebugExitState
from vbook.devices.pc_testdev import PCTestdev
from vbook.devices.serial16550 import SerialState
from vbook.errors import VbookError
from vbook.models.qemu_memory import (
    UINT64_MAX,
    AddressSpace,
    RunContext,
    memory_region_add_subregion,
    memory_region_init,
    memory_region_init_io,
    mtree,
    unassigned_io_ops,
)
from vbook.models.runstate import Runstate
from vbook.trace import TraceRecorder

if TYPE_CHECKING:
    from vbook.devices.e1000 import E1000State
    from vbook.devices.net_client import NetClientState
    from vbook.devices.pci import PCIBus, PCIDevice, PCIHostState
    from vbook.memory import GuestMemory

#: COM1, where hw/char/serial-isa.c puts the first ISA serial port
SERIAL_BASE = serial16550.COM_PORTS[0]


@dataclass(eq=False)
class Machine:
    """A freshly reset board: address spaces, devices, and the main loop's requests.

    ``Machine()`` builds it (devices at their reset values); ``ctx`` is shared
    by both address spaces and says which thread accesses them, whether it
    holds the big QEMU lock, and where events are recorded.
    """

    ctx: RunContext = field(default_factory=RunContext)
    runstate: Runstate = field(default_factory=Runstate)
    serial: SerialState = field(default_factory=SerialState)
    debug_exit: ISADebugExitState = field(default_factory=ISADebugExitState)
    testdev: PCTestdev = field(default_factory=PCTestdev)
    #: backends, each getting an e1000 in front of it (``-nic tap,model=e1000``)
    nics: Sequence[Any] = ()
    #: a PCI bus (the i440FX host bridge) even without NICs
    pci: bool = False
    #: guest RAM for DMA: the vCPU's memory during a run, or one given for a test
    ram: GuestMemory | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.debug_exit.runstate = self.runstate
        system_io = memory_region_init_io("io", 65536, unassigned_io_ops)
        system_memory = memory_region_init("system", UINT64_MAX)
        self.address_space_io = AddressSpace("I/O", system_io, self.ctx)
        self.address_space_memory = AddressSpace("memory", system_memory, self.ctx)

        s = self.serial
        memory_region_add_subregion(system_io, SERIAL_BASE, memory_region_init_io(
            "serial", 8, serial16550.serial_io_ops, s, owner=s.type_name))
        d = self.debug_exit
        memory_region_add_subregion(system_io, d.iobase, memory_region_init_io(
            "isa-debug-exit", d.iosize, debug_exit.debug_exit_ops, d, owner=d.type_name))
        t = self.testdev
        memory_region_add_subregion(system_io, pc_testdev.IOPORT, memory_region_init_io(
            "pc-testdev-ioport", 4, pc_testdev.test_ioport_ops, t, owner=t.type_name))
        memory_region_add_subregion(system_io, pc_testdev.IOPORT_BYTE, memory_region_init_io(
            "pc-testdev-ioport-byte", 4, pc_testdev.test_ioport_byte_ops, t, owner=t.type_name))
        memory_region_add_subregion(system_memory, pc_testdev.IOMEM, memory_region_init_io(
            "pc-testdev-iomem", pc_testdev.IOMEM_LEN, pc_testdev.test_iomem_ops, t,
            owner=t.type_name))

        #: PIRQ A-D: the level each PCI interrupt line is at (no interrupt controller takes it)
        self.pirq: list[int] = [0, 0, 0, 0]
        self.pci_host: PCIHostState | None = None
        self.pci_bus: PCIBus | None = None
        self.e1000: list[E1000State] = []
        self.netdevs: list[NetClientState] = []
        self._macs_used: set[int] = set()
        backends = list(self.nics)
        self.nics = tuple(backends)
        if self.pci or backends:
            self._pci_init()
        for backend in backends:
            self.add_nic(backend)

    # --- PCI --------------------------------------------------------------------------------------
    def _pci_init(self) -> None:
        """``i440fx_pcihost_realize``: the config ports, bus 0, the i440FX PMC at 00:00.0."""
        from vbook.devices import pci

        bus = pci.PCIBus(self.address_space_memory.root, self.address_space_io.root,
                         self.address_space_memory, self.ctx, ram=lambda: self.ram,
                         set_irq=self._piix_set_pci_irq)
        host = pci.PCIHostState(bus)
        io = self.address_space_io.root
        memory_region_add_subregion(io, pci.PCI_CONFIG_ADDRESS_PORT, memory_region_init_io(
            "pci-conf-idx", 4, pci.pci_host_conf_le_ops, host, owner=host.type_name))
        memory_region_add_subregion(io, pci.PCI_CONFIG_DATA_PORT, memory_region_init_io(
            "pci-conf-data", 4, pci.pci_host_data_le_ops, host, owner=host.type_name))
        self.pci_host, self.pci_bus = host, bus
        bus.register(pci.PCII440FXState(ram_size=self.ram.size if self.ram else 0), devfn=0)

    def add_pci_device(self, dev: PCIDevice, devfn: int = -1) -> PCIDevice:
        """Plug ``dev`` into bus 0 (``-device …[,addr=]``): a free slot unless ``devfn`` is
        given, then realize and reset it. The first call gives the board its PCI host."""
        if self.pci_bus is None:
            self._pci_init()
        assert self.pci_bus is not None
        return self.pci_bus.register(dev, devfn)

    def add_nic(self, backend: Any, model: str = "e1000", mac: bytes | str | None = None,
                devfn: int = -1, props: dict[str, Any] | None = None) -> Any:
        """``-nic tap,model=e1000[,mac=…]`` with ``backend`` as the tap: its client and the NIC
        (``model="virtio-net-pci"``: :func:`~vbook.devices.virtio_net.add_virtio_net`, with
        ``props`` its ``-device`` properties, e.g. ``{"event_idx": False}``)."""
        from vbook.devices import e1000, net_client

        if model == "virtio-net-pci":
            from vbook.devices.virtio_net import add_virtio_net

            return add_virtio_net(self, backend, mac=mac, devfn=devfn, props=props)
        if model != "e1000":
            raise VbookError(f"NIC model {model!r} is not on this board (it has: e1000, "
                             "virtio-net-pci)")
        if props:
            raise VbookError(f"e1000: no -device properties are modelled (got {sorted(props)})")
        n = len(self.netdevs)
        nd = net_client.net_init_backend(backend, f"net{n}", self.ctx)
        macaddr = bytes.fromhex(mac.replace(":", "")) if isinstance(mac, str) else (mac or b"")
        if macaddr and len(macaddr) != 6:
            raise VbookError(f"a MAC address has 6 bytes, got {macaddr.hex(':')!r}")
        macaddr = net_client.qemu_macaddr_default_if_unset(macaddr, self._macs_used)
        dev = e1000.E1000State(macaddr=macaddr, netdev=nd,
                               nic_name=f"e1000.{len(self.e1000)}")
        self.add_pci_device(dev, devfn)
        self.netdevs.append(nd)
        self.e1000.append(dev)
        if backend not in self.nics:
            self.nics = (*self.nics, backend)
        return dev

    def _piix_set_pci_irq(self, pirq: int, level: int) -> None:
        """hw/isa/piix.c ``piix_set_pci_irq``: where a PCI interrupt line ends on this board."""
        old, self.pirq[pirq] = self.pirq[pirq], level
        if old == level:
            return
        self.ctx.emit("qemu", "irq", f"piix_set_pci_irq: PIRQ{'ABCD'[pirq]} = {level} (on -M pc "
                      "the PIIX3 routes it to an ISA IRQ of the PIC; this board has none: the "
                      "level is recorded, nothing interrupts the vCPU)", fn="piix_set_pci_irq",
                      file="hw/isa/piix.c", pirq="ABCD"[pirq], level=level)

    def main_loop_poll(self, timeout: float = 0.0) -> int:
        """One turn of QEMU's main loop (``main_loop_wait``): bottom halves the devices
        scheduled (``aio_bh_poll``: virtio-net's TX bh when it is deferred), then the fd
        handlers — frames waiting in each backend go to its NIC (``tap_send``). ``timeout``
        is how long the first read of each backend may wait. Returns how many frames were
        read."""
        from vbook.devices.net_client import net_backend_poll
        from vbook.devices.virtio import run_bottom_halves

        for dev in self.pci_bus.devices if self.pci_bus is not None else ():
            vdev = getattr(dev, "vdev", None)
            if vdev is not None and any(bh.scheduled for bh in getattr(vdev, "bhs", ())):
                run_bottom_halves(vdev)
        return sum(net_backend_poll(nd, timeout) for nd in self.netdevs)

    def info_pci(self) -> str:
        """Bus 0 as QEMU's monitor command ``info pci`` prints it ("" without PCI)."""
        if self.pci_bus is None:
            return ""
        from vbook.devices.pci import info_pci

        return info_pci(self.pci_bus)

    @classmethod
    def with_trace(cls, trace: TraceRecorder | None, thread: str = "CPU 0/KVM") -> Machine:
        """A machine whose accesses are recorded into ``trace``."""
        return cls(ctx=RunContext(trace=trace, thread=thread))

    def info_mtree(self) -> str:
        """Both address spaces as a tree, like ``info mtree`` in the QEMU monitor."""
        return mtree(self.address_space_io) + "\n\n" + mtree(self.address_space_memory)

    def __repr__(self) -> str:
        pci = ""
        if self.pci_bus is not None:
            devs = ", ".join(f"{d.name} {d.addr}" for d in self.pci_bus.devices if d is not None)
            pci = f", PCI at 0xcf8: {devs}"
        return (f"Machine(serial at {SERIAL_BASE:#x}, isa-debug-exit at {self.debug_exit.iobase:#x}, "
                f"pc-testdev at {pc_testdev.IOPORT:#x}/{pc_testdev.IOMEM:#x}{pci})")


__all__ = ["SERIAL_BASE", "Machine"]
