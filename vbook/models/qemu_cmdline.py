"""From a ``qemu-system-x86_64 -enable-kvm …`` command line to the ioctls QEMU issues.

A model of QEMU 9.2.4's start-up with the KVM accelerator, function by
function: ``kvm_init`` (accel/kvm/kvm-all.c) opens /dev/kvm, checks the API
version, creates the VM and probes capabilities — most of them still on
/dev/kvm (``kvm_check_extension``), a few on the VM fd
(``kvm_vm_check_extension``, which falls back to /dev/kvm); ``kvm_arch_init``
(target/i386/kvm/kvm.c) places the identity map and TSS; ``kvm_irqchip_create``
makes the in-kernel interrupt controllers. Then (system/vl.c ``qemu_init``)
the network back-ends are created (``-netdev tap``, ``vhost=on``), then the
board: each vCPU thread (``kvm_vcpu_thread_fn``) creates its vCPU and maps
``kvm_run`` (``pc_init1`` creates the CPUs before ``pc_memory_init``), the
memory listener turns RAM into memory slots, ``pc_basic_device_init`` puts
the 8254 PIT in the kernel (``KVM_CREATE_PIT2``, with ``kernel-irqchip=on``
only), reset loads the registers, and
each vCPU loops in ``kvm_cpu_exec``. Only the options below are
modelled; anything else is listed in ``Plan.ignored`` rather than guessed at.

``Plan.net`` (vbook.models.qemu_net) is the network front end of the same
command line — ``-netdev``, ``-nic`` and the ``-device`` NICs, function by
function down to the paired net clients — and ``Plan.timeline`` is ``steps``
with those calls in their places: the back-ends in ``qemu_create_late_backends``
(after ``kvm_init``), the ``-nic`` NICs on the board after the PIT, the
``-device`` NICs after the board, ``net_check_clients`` before the reset.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vbook.errors import VbookError
from vbook.models.kvm_api import Cap, Ioctl

if TYPE_CHECKING:
    from vbook.models.qemu_net import NetPlan

#: target/i386/kvm/kvm.c (QEMU 9.2.4): the EPT identity map, TSS one page above
KVM_IDENTITY_BASE = 0xFEFFC000
TUNSETIFF = 0x400454CA  #: linux/if_tun.h _IOW('T', 202, int)
IFF_TAP, IFF_NO_PI, IFF_ONE_QUEUE, IFF_VNET_HDR = 0x0002, 0x1000, 0x2000, 0x4000  #: linux/if_tun.h
VHOST_SET_OWNER = 0xAF01  #: linux/vhost.h _IO(VHOST_VIRTIO, 0x01)
VHOST_NET_SET_BACKEND = 0x4008AF30  #: linux/vhost.h _IOW(VHOST_VIRTIO, 0x30, struct vhost_vring_file)


class CmdlineError(VbookError):
    """A command line the model cannot map (no KVM accelerator, bad value …)."""


@dataclass(frozen=True)
class Step:
    """One system call QEMU makes: on which fd, from which QEMU function, and why.

    A step of a call chain (vbook.models.qemu_net) has ``depth`` ≥ 1, the number of
    functions entered, and prints as a tree line: ``function: call``; ``fd`` "-" and
    no number there mean a plain function call."""

    function: str
    fd: str
    call: str
    number: int | None = None
    why: str = ""
    depth: int = 0

    def __str__(self) -> str:
        num = f" ({self.number:#x})" if self.number is not None else ""
        if not self.depth:
            return f"{self.function:28s} {self.fd:10s} {self.call}{num}  — {self.why}"
        on = f" on {self.fd}" if self.fd != "-" else ""
        why = f"  — {self.why}" if self.why else ""
        return f"{'  ' * (self.depth - 1)}{self.function}: {self.call}{num}{on}{why}"


@dataclass(frozen=True)
class Plan:
    """The modelled start-up of one command line.

    ``steps`` are the system calls (what ``repr`` shows); ``ignored`` the options that add
    none of them — a ``-device`` NIC is among these, its pairing is in ``net``;
    ``timeline`` is ``steps`` with ``net``'s calls merged in QEMU's order."""

    cmdline: str
    ram: int
    vcpus: int
    irqchip: str
    steps: tuple[Step, ...]
    ignored: tuple[str, ...] = field(default=())
    net: NetPlan | None = None
    timeline: tuple[Step, ...] = field(default=())

    def __repr__(self) -> str:
        head = (f"Plan: {self.ram >> 20} MiB RAM, {self.vcpus} vCPU(s), irqchip={self.irqchip}, "
                f"{len(self.steps)} steps")
        lines = [head, *(f"  {s}" for s in self.steps)]
        if self.ignored:
            lines.append(f"  (not modelled: {' '.join(self.ignored)})")
        return "\n".join(lines)

    def ioctls(self) -> list[str]:
        return [s.call for s in self.steps if s.number is not None]


#: options that take no value (QEMU qemu-options.hx); every other option takes one
NO_VALUE = {"-nographic", "-no-reboot", "-no-shutdown", "-S", "-snapshot", "-daemonize",
            "-nodefaults", "-no-user-config", "-no-hpet", "-no-acpi"}

_SIZE = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """QEMU's ``-m`` syntax: a number with an optional K/M/G/T suffix (default M)."""
    m = _SIZE.match(text.split(",")[0].removeprefix("size="))
    if not m:
        raise CmdlineError(f"-m {text!r}: expected a size such as 512M or 2G")
    unit = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(m.group(1)) * unit[m.group(2).upper()]


#: the -device drivers vbook.models.qemu_net builds (its NIC_MODELS; not imported: it imports this)
_NIC_DEVICES = ("virtio-net-pci", "e1000")


def _opts(text: str) -> dict[str, str]:
    out = {}
    for i, part in enumerate(text.split(",")):
        k, eq, v = part.partition("=")
        out[k if eq or i else "_"] = v if eq else k
    return out


def plan(cmdline: str) -> Plan:
    """The ioctls ``cmdline`` makes QEMU issue, in order (see the module docstring)."""
    argv = shlex.split(cmdline)
    if not argv or "qemu-system" not in argv[0]:
        raise CmdlineError("the command line should start with qemu-system-x86_64")
    kvm, irqchip, ram, vcpus = False, "on", 128 << 20, 1
    net_args, ignored, machine, nodefaults = [], [], "pc", False
    it = iter(argv[1:])
    for arg in it:
        if arg == "-enable-kvm":
            kvm = True
            continue
        if arg in NO_VALUE:
            nodefaults = nodefaults or arg == "-nodefaults"
            ignored.append(arg)
            continue
        if not arg.startswith("-"):
            ignored.append(arg)
            continue
        try:
            val = next(it)
        except StopIteration:
            raise CmdlineError(f"{arg} needs a value") from None
        o = _opts(val)
        if arg in ("-accel", "-machine", "-M"):
            accel = o.get("_") if arg == "-accel" else o.get("accel")
            if arg != "-accel":
                machine = o.get("type", o.get("_", machine))
            kvm = kvm or accel == "kvm"
            irqchip = o.get("kernel-irqchip", irqchip)
            if irqchip not in ("on", "off", "split"):
                raise CmdlineError(f"kernel-irqchip={irqchip}: expected on, off or split")
        elif arg == "-m":
            ram = parse_size(val)
        elif arg == "-smp":
            n = o.get("cpus", o.get("_", "1"))
            if not n.isdigit() or int(n) < 1:
                raise CmdlineError(f"-smp {val!r}: expected a number of vCPUs")
            vcpus = int(n)
        elif arg in ("-netdev", "-nic", "-net"):
            net_args.append((arg, val))
        elif arg == "-device" and _opts(val).get("_", "") in _NIC_DEVICES:
            net_args.append((arg, val))           # a NIC: modelled in Plan.net
        else:
            if arg == "-device":
                net_args.append((arg, val))       # qemu_net checks any netdev= it names
            ignored += [arg, val]
    if not kvm:
        raise CmdlineError("no -enable-kvm or -accel kvm: QEMU would emulate the CPU with TCG "
                           "and never open /dev/kvm")
    from vbook.models.qemu_net import net_plan  # qemu_net imports Step from here

    net = net_plan(net_args, prog=os.path.basename(argv[0]), machine=machine,
                   nodefaults=nodefaults)
    head, taps, board, reset, later = _steps(ram, vcpus, irqchip, net)
    return Plan(cmdline, ram, vcpus, irqchip, tuple(head + taps + board + reset + later),
                tuple(ignored), net,
                tuple(head + list(net.backends) + board + list(net.board + net.devices + net.check)
                      + reset + later))


def _steps(ram: int, vcpus: int, irqchip: str, net: NetPlan) -> tuple[list[Step], ...]:
    """The system calls in five runs: kvm_init … irqchip, the taps, the board, reset and
    KVM_RUN, what happens later (vhost start); the net calls go between them."""
    s = [
        Step("kvm_init", "-", 'open("/dev/kvm", O_RDWR)', None, "the KVM accelerator starts"),
        Step("kvm_init", "/dev/kvm", "KVM_GET_API_VERSION", Ioctl.GET_API_VERSION,
             "must be 12, or QEMU refuses to run"),
        Step("kvm_init", "/dev/kvm", "KVM_CHECK_EXTENSION", Ioctl.CHECK_EXTENSION,
             f"KVM_CAP_IMMEDIATE_EXIT ({Cap.IMMEDIATE_EXIT}), KVM_CAP_NR_MEMSLOTS "
             f"({Cap.NR_MEMSLOTS}) …"),
        Step("do_kvm_create_vm", "/dev/kvm", "KVM_CREATE_VM", Ioctl.CREATE_VM,
             "returns the VM fd"),
        Step("kvm_init", "vm", "KVM_CHECK_EXTENSION", Ioctl.CHECK_EXTENSION,
             f"kvm_vm_check_extension, the VM's own answers: KVM_CAP_MULTI_ADDRESS_SPACE "
             f"({Cap.MULTI_ADDRESS_SPACE}), KVM_CAP_READONLY_MEM ({Cap.READONLY_MEM}) …"),
        Step("kvm_init", "/dev/kvm", "KVM_CHECK_EXTENSION", Ioctl.CHECK_EXTENSION,
             "kvm_check_extension, still on /dev/kvm: required capabilities, coalesced "
             "MMIO, vCPU events, nested state, irqfd …"),
        Step("kvm_arch_init", "vm", "KVM_SET_IDENTITY_MAP_ADDR", Ioctl.SET_IDENTITY_MAP_ADDR,
             f"{KVM_IDENTITY_BASE:#x}: the identity page table VMX runs a guest on while "
             "its paging is off, when the CPU lacks unrestricted guest"),
        Step("kvm_arch_init", "vm", "KVM_SET_TSS_ADDR", Ioctl.SET_TSS_ADDR,
             f"{KVM_IDENTITY_BASE + 0x1000:#x}: three pages for the real-mode TSS"),
    ]
    if irqchip == "on":
        s.append(Step("kvm_irqchip_create", "vm", "KVM_CREATE_IRQCHIP", Ioctl.CREATE_IRQCHIP,
                      "PIC, IOAPIC and LAPICs emulated in the kernel: HLT never reaches QEMU"))
    elif irqchip == "split":
        s.append(Step("kvm_arch_irqchip_create", "vm", "KVM_ENABLE_CAP", Ioctl.ENABLE_CAP,
                      f"KVM_CAP_SPLIT_IRQCHIP ({Cap.SPLIT_IRQCHIP}), 24 IOAPIC pins: LAPICs in "
                      "the kernel (so HLT still stays there), PIC/IOAPIC/PIT in QEMU"))
    head, s = s, []
    taps = [c for c in net.clients if c.type == "tap"]
    for tap in taps:  # the summary; net.backends has every call (TUNGETFEATURES … as well)
        # tap_open asks TUNGETFEATURES first and adds IFF_ONE_QUEUE when the kernel offers it
        # (Linux 6.1 TUN_FEATURES does), then IFF_VNET_HDR (net/tap-linux.c, QEMU 9.2.4)
        flags, names = IFF_TAP | IFF_NO_PI | IFF_ONE_QUEUE, "IFF_TAP|IFF_NO_PI|IFF_ONE_QUEUE"
        if tap.vnet_hdr:
            flags, names = flags | IFF_VNET_HDR, names + "|IFF_VNET_HDR"
        s.append(Step("tap_open", "-", 'open("/dev/net/tun")', None, "the tun/tap clone device"))
        s.append(Step("tap_open", "tun", "TUNSETIFF", TUNSETIFF,
                      f"{names} = {flags:#x}; creating the tap needs CAP_NET_ADMIN"))
        if tap.vhost:
            s.append(Step("net_init_tap_one", "-", 'open("/dev/vhost-net")', None,
                          "the in-kernel virtio-net data path"))
            s.append(Step("vhost_dev_init", "vhost-net", "VHOST_SET_OWNER", VHOST_SET_OWNER,
                          "binds it to QEMU's memory and starts the vhost worker"))
    tap_steps, s = s, []
    for i in range(vcpus):
        s += [
            Step("kvm_create_vcpu", "vm", "KVM_CREATE_VCPU", Ioctl.CREATE_VCPU,
                 f"vCPU {i}, on its own thread (kvm_vcpu_thread_fn); returns the vCPU fd"),
            Step("kvm_init_vcpu", "/dev/kvm", "KVM_GET_VCPU_MMAP_SIZE", Ioctl.GET_VCPU_MMAP_SIZE,
                 "size of the shared kvm_run area"),
            Step("kvm_init_vcpu", f"vcpu{i}", "mmap(kvm_run)", None,
                 "page 0 struct kvm_run, page 1 PIO data, page 2 coalesced MMIO"),
            Step("kvm_arch_init_vcpu", f"vcpu{i}", "KVM_SET_CPUID2", Ioctl.SET_CPUID2,
                 "the CPU model the guest sees in CPUID (answered by KVM, no exit)"),
        ]
    s.append(Step("kvm_set_user_memory_region", "vm", "KVM_SET_USER_MEMORY_REGION",
                  Ioctl.SET_USER_MEMORY_REGION,
                  f"one per RAM section: {ram >> 20} MiB of QEMU's anonymous memory, split "
                  "where the VGA window and the ROMs sit below 1 MiB (RAM that would reach "
                  "the PCI hole below 4 GiB moves above 4 GiB)"))
    if irqchip == "on":  # pc_init1: CPUs, then pc_memory_init, then pc_basic_device_init
        s.append(Step("kvm_pit_realizefn", "vm", "KVM_CREATE_PIT2", Ioctl.CREATE_PIT2,
                      "pc_basic_device_init → kvm_pit_init(isa_bus, 0x40) when "
                      "kvm_pit_in_kernel() (irqchip on, not split): the 8254 timer in the "
                      "kernel, ports 0x40-0x43 on KVM_PIO_BUS"))
    board, s = s, []
    for i in range(vcpus):
        s += [
            Step("kvm_arch_put_registers", f"vcpu{i}", "KVM_SET_REGS / KVM_SET_SREGS2",
                 Ioctl.SET_REGS, "reset state: real mode at 0xfffffff0 (KVM_SET_SREGS on a "
                 "kernel without KVM_CAP_SREGS2)"),
            Step("kvm_cpu_exec", f"vcpu{i}", "KVM_RUN", Ioctl.RUN,
                 "in a loop, one return per exit to user space"),
        ]
    reset, s = s, []
    for tap in taps:  # virtio_net_set_status → vhost_net_start: only a virtio-net peer starts it
        peer = net.peer_of(tap.name)
        if tap.vhost and peer is not None and peer.model == "virtio-net-pci":
            s.append(Step("vhost_net_start", "vhost-net", "VHOST_NET_SET_BACKEND",
                          VHOST_NET_SET_BACKEND, "later, while the guest runs: when its driver "
                          "sets DRIVER_OK, the tap fd becomes the backend"))
            s.append(Step("kvm_set_ioeventfd_mmio", "vm", "KVM_IOEVENTFD", Ioctl.IOEVENTFD,
                          "guest kicks signal an eventfd inside the kernel"))
            s.append(Step("kvm_irqchip_assign_irqfd", "vm", "KVM_IRQFD", Ioctl.IRQFD,
                          "vhost's call eventfd injects the guest interrupt"))
    return head, tap_steps, board, reset, s
