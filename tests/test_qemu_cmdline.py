import pytest

from vbook.models.kvm_api import Ioctl
from vbook.models.qemu_cmdline import CmdlineError, parse_size, plan


def test_minimal_kvm_start_up_order():
    p = plan("qemu-system-x86_64 -enable-kvm -m 64M")
    calls = p.ioctls()
    assert calls[:3] == ["KVM_GET_API_VERSION", "KVM_CHECK_EXTENSION", "KVM_CREATE_VM"]
    # QEMU creates the vCPU (pc_init1: x86_cpus_init) before RAM becomes a memory slot
    assert calls.index("KVM_CREATE_VCPU") < calls.index("KVM_SET_USER_MEMORY_REGION")
    assert calls[-1] == "KVM_RUN"
    assert "KVM_CREATE_IRQCHIP" in calls and p.irqchip == "on"
    assert p.ram == 64 << 20 and p.vcpus == 1
    run = [s for s in p.steps if s.call == "KVM_RUN"][0]
    assert run.number == Ioctl.RUN == 0xAE80 and run.function == "kvm_cpu_exec"


def test_smp_and_irqchip_variants():
    p = plan("qemu-system-x86_64 -accel kvm,kernel-irqchip=split -smp 3")
    assert p.ioctls().count("KVM_CREATE_VCPU") == 3 and p.ioctls().count("KVM_RUN") == 3
    assert "KVM_ENABLE_CAP" in p.ioctls() and "KVM_CREATE_IRQCHIP" not in p.ioctls()
    off = plan("qemu-system-x86_64 -machine q35,accel=kvm,kernel-irqchip=off")
    assert "KVM_CREATE_IRQCHIP" not in off.ioctls() and "KVM_ENABLE_CAP" not in off.ioctls()


def test_vhost_adds_tap_and_eventfds():
    p = plan("qemu-system-x86_64 -enable-kvm -nographic -netdev tap,id=n0,vhost=on "
             "-device virtio-net-pci,netdev=n0")
    c = p.ioctls()
    assert c.index("TUNSETIFF") < c.index("VHOST_SET_OWNER") < c.index("KVM_CREATE_VCPU")
    assert {"KVM_IOEVENTFD", "KVM_IRQFD", "VHOST_NET_SET_BACKEND"} <= set(c)
    assert p.ignored == ("-nographic", "-device", "virtio-net-pci,netdev=n0")
    assert "VHOST_SET_OWNER" not in plan("qemu-system-x86_64 -enable-kvm -netdev tap,id=n").ioctls()


@pytest.mark.parametrize("text,size", [("64M", 64 << 20), ("2G", 2 << 30), ("512", 512 << 20),
                                        ("size=1G", 1 << 30)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("cmd,msg", [
    ("qemu-system-x86_64 -m 1G", "TCG"),
    ("qemu-system-x86_64 -enable-kvm -m lots", "expected a size"),
    ("qemu-system-x86_64 -enable-kvm -smp x", "number of vCPUs"),
    ("qemu-system-x86_64 -enable-kvm -m", "needs a value"),
    ("ls -l", "qemu-system"),
    ("qemu-system-x86_64 -accel kvm,kernel-irqchip=maybe", "on, off or split"),
])
def test_bad_command_lines_are_typed(cmd, msg):
    with pytest.raises(CmdlineError, match=msg):
        plan(cmd)
