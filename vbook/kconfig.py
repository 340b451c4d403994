"""Which kernel config options KVM, vhost and virtio need — checked on a real config.

The host kernel runs KVM and the vhost back-ends; the guest kernel needs the
virtio drivers. ``check(text)`` reads a kernel ``.config`` (``/proc/config.gz``
or ``/boot/config-$(uname -r)``, see ``read_running_config``) and says, per
option, whether it is built in (y), a module (m) or missing, and what the book
loses without it.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    name: str
    side: str  # "host" or "guest"
    needed_for: str


OPTIONS = (
    Option("CONFIG_KVM", "host", "/dev/kvm itself (virt/kvm, arch/x86/kvm)"),
    Option("CONFIG_KVM_INTEL", "host", "VMX: KVM on Intel CPUs (kvm-intel.ko)"),
    Option("CONFIG_KVM_AMD", "host", "SVM: KVM on AMD CPUs (kvm-amd.ko)"),
    Option("CONFIG_EVENTFD", "host", "ioeventfd and irqfd (guest kicks and interrupts in the kernel)"),
    Option("CONFIG_VHOST_NET", "host", "/dev/vhost-net: virtio-net data path in the kernel"),
    Option("CONFIG_TUN", "host", "/dev/net/tun: tap devices for QEMU's network back-end"),
    Option("CONFIG_BRIDGE", "host", "a Linux bridge joining the VM's tap to the host network"),
    Option("CONFIG_KVM_GUEST", "guest", "paravirtual features for a Linux guest (kvmclock, PV EOI …)"),
    Option("CONFIG_VIRTIO", "guest", "the virtio core (drivers/virtio)"),
    Option("CONFIG_VIRTIO_PCI", "guest", "virtio devices on PCI (virtio-pci transport)"),
    Option("CONFIG_VIRTIO_NET", "guest", "the virtio-net driver"),
    Option("CONFIG_VIRTIO_BLK", "guest", "the virtio-blk driver"),
)


@dataclass(frozen=True)
class OptionState:
    option: Option
    value: str  # "y", "m", or "missing"

    def __repr__(self) -> str:
        return f"{self.option.name:18s} {self.value:8s} {self.option.side:5s}  {self.option.needed_for}"


_LINE = re.compile(r"^(CONFIG_[A-Z0-9_]+)=(.*)$")


def parse(text: str) -> dict[str, str]:
    """``CONFIG_X=value`` lines of a kernel config; "# … is not set" lines are absent."""
    return {m.group(1): m.group(2) for m in map(_LINE.match, text.splitlines()) if m}


def check(text: str) -> list[OptionState]:
    cfg = parse(text)
    return [OptionState(o, cfg.get(o.name, "missing")) for o in OPTIONS]


def read_running_config() -> tuple[str | None, str]:
    """(config text or None, where it came from or why it is missing)."""
    if os.path.exists("/proc/config.gz"):
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read(), "/proc/config.gz"
    path = f"/boot/config-{os.uname().release}"
    if os.path.exists(path):
        with open(path) as f:
            return f.read(), path
    return None, f"no /proc/config.gz and no {path}: the running kernel's config is not readable"
