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
    assert p.ignored == ("-nographic",)           # the NIC is modelled: p.net
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


def test_the_in_kernel_pit_comes_with_kernel_irqchip_on_only():
    """pc_basic_device_init: kvm_pit_init when kvm_pit_in_kernel() (irqchip on, not split)."""
    on = plan("qemu-system-x86_64 -enable-kvm").ioctls()
    assert on.count("KVM_CREATE_PIT2") == 1
    assert on.index("KVM_SET_USER_MEMORY_REGION") < on.index("KVM_CREATE_PIT2") < on.index("KVM_RUN")
    for mode in ("split", "off"):
        assert "KVM_CREATE_PIT2" not in plan(
            f"qemu-system-x86_64 -accel kvm,kernel-irqchip={mode}").ioctls()
    pit = [s for s in plan("qemu-system-x86_64 -enable-kvm").steps if s.call == "KVM_CREATE_PIT2"]
    assert pit[0].number == Ioctl.CREATE_PIT2 and pit[0].fd == "vm" and "0x40-0x43" in pit[0].why


def test_capability_probes_are_on_the_fd_qemu_uses():
    """kvm_check_extension asks /dev/kvm, kvm_vm_check_extension the VM fd (kvm-all.c 9.2.4)."""
    steps = [s for s in plan("qemu-system-x86_64 -enable-kvm").steps
             if s.call == "KVM_CHECK_EXTENSION"]
    assert [s.fd for s in steps] == ["/dev/kvm", "vm", "/dev/kvm"]
    assert "kvm_vm_check_extension" in steps[1].why and "kvm_check_extension" in steps[2].why


def test_split_irqchip_keeps_the_lapic_and_so_hlt_in_the_kernel():
    split = [s for s in plan("qemu-system-x86_64 -accel kvm,kernel-irqchip=split").steps
             if s.call == "KVM_ENABLE_CAP"]
    assert "LAPICs in the kernel (so HLT still stays there)" in split[0].why


def test_pit_and_check_extension_against_qemu_9_2_4():
    """The QEMU side of the two tests above, read in the 9.2.4 tree."""
    from _sources import QEMU_9, function_body, git_show

    kvm_all = git_show(QEMU_9, "HEAD", "accel/kvm/kvm-all.c")
    assert "kvm_ioctl(s, KVM_CHECK_EXTENSION, extension)" in function_body(
        kvm_all, "int kvm_check_extension(KVMState *s, unsigned int extension)")
    vm = function_body(kvm_all, "int kvm_vm_check_extension(KVMState *s, unsigned int extension)")
    assert "kvm_vm_ioctl(s, KVM_CHECK_EXTENSION, extension)" in vm
    assert "kvm_check_extension(s, extension)" in vm  # the fallback
    init = function_body(kvm_all, "static int kvm_init(MachineState *ms)")
    assert init.index("do_kvm_create_vm") < init.index("kvm_check_extension_list(s, kvm_required")
    assert init.index("do_kvm_create_vm") < init.index(
        "kvm_vm_check_extension(s, KVM_CAP_MULTI_ADDRESS_SPACE)")
    i8254 = git_show(QEMU_9, "HEAD", "hw/i386/kvm/i8254.c")
    assert "kvm_vm_ioctl(kvm_state, KVM_CREATE_PIT2, &config)" in function_body(
        i8254, "static void kvm_pit_realizefn(DeviceState *dev, Error **errp)")
    assert "(kvm_irqchip_in_kernel() && !kvm_irqchip_is_split())" in git_show(
        QEMU_9, "HEAD", "target/i386/kvm/kvm_i386.h").split("#define kvm_pit_in_kernel()")[1]
    pc = git_show(QEMU_9, "HEAD", "hw/i386/pc.c")
    basic = pc[pc.index("void pc_basic_device_init("):]
    assert "if (kvm_pit_in_kernel()) {\n            pit = kvm_pit_init(isa_bus, 0x40);" in basic
    piix = function_body(git_show(QEMU_9, "HEAD", "hw/i386/pc_piix.c"),
                         "static void pc_init1(MachineState *machine, const char *pci_type)")
    assert piix.index("x86_cpus_init") < piix.index("pc_memory_init") \
        < piix.index("pc_basic_device_init")


CHAPTER_01 = ("qemu-system-x86_64 -enable-kvm -m 512M -smp 2 -nographic -kernel bzImage "
              "-netdev tap,id=n0,vhost=on -device virtio-net-pci,netdev=n0")


def test_the_net_front_end_goes_into_the_timeline_in_qemus_order():
    """qemu_init: kvm_init, then qemu_create_late_backends (the taps), then the board, then
    qemu_create_cli_devices (-device), net_check_clients, and the reset (KVM_SET_REGS)."""
    p = plan(CHAPTER_01)
    assert len(p.steps) == 30 and p.net.pairs()[0][0].name == "virtio-net-pci.0"
    t = [(s.function, s.call) for s in p.timeline]
    first = {f: next(i for i, (g, _) in enumerate(t) if g == f) for f in (
        "kvm_irqchip_create", "qemu_init", "kvm_create_vcpu", "kvm_pit_realizefn",
        "qmp_x_exit_preconfig", "qemu_machine_creation_done", "kvm_arch_put_registers",
        "vhost_net_start")}
    assert list(first.values()) == sorted(first.values()), first
    # the timeline keeps every system call of steps but the tap summary, which it details
    summary = {"tap_open", "net_init_tap_one", "vhost_dev_init"}
    assert [s for s in p.timeline if s.depth == 0] == [s for s in p.steps
                                                      if s.function not in summary]
    detail = [s.call for s in p.timeline if s.number is not None and s.depth]
    assert detail[:4] == ["TUNGETFEATURES", "TUNSETVNETHDRSZ", "TUNSETIFF", "TUNSETOFFLOAD"]
    assert detail[-2:] == ["VHOST_SET_OWNER", "VHOST_GET_FEATURES"]
    # the NIC -device is modelled (its pairing is in p.net), not listed as ignored
    assert p.ignored == ("-nographic", "-kernel", "bzImage")


def test_nic_makes_a_tap_and_net_options_no_longer_hide():
    p = plan("qemu-system-x86_64 -enable-kvm -nic tap,model=e1000,script=no")
    assert p.ioctls().count("TUNSETIFF") == 1 and p.ignored == ()
    assert [c.type for c in p.net.clients] == ["tap", "nic"]
    with pytest.raises(CmdlineError, match="can't find value 'n9'"):
        plan("qemu-system-x86_64 -enable-kvm -device e1000,netdev=n9")


def test_a_chain_step_prints_as_a_tree_line():
    from vbook.models.qemu_cmdline import Step
    flat = Step("tap_open", "tun", "TUNSETIFF", 0x400454CA, "why")
    assert str(flat) == f"{'tap_open':28s} {'tun':10s} TUNSETIFF (0x400454ca)  — why"
    assert str(Step("tap_open", "tun", "TUNSETIFF", 0x400454CA, "why", depth=3)) == \
        "    tap_open: TUNSETIFF (0x400454ca) on tun  — why"
    assert str(Step("net_init_tap", "-", "net_tap_init(…)", depth=1)) == "net_init_tap: net_tap_init(…)"
