"""The QEMU 9.2.4 network front end: -netdev/-nic/-device → a NIC and its back-end, paired.

Unit tests of vbook.models.qemu_net (chains, names, info network, errors, warnings),
a hypothesis property (pairing is symmetric, whatever the command line), a C oracle
for the tun/vhost numbers, and source oracles that read the 9.2.4 tree for every
function name and string the model relies on.
"""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbook.models import qemu_net
from vbook.models.qemu_cmdline import CmdlineError, plan
from vbook.models.qemu_net import NIC_MODELS, net_plan

Q = "qemu-system-x86_64 -enable-kvm "

TAP_CHAIN = ("qemu_init", "qemu_create_late_backends", "net_init_clients", "net_init_netdev",
             "net_client_init", "net_client_init1", "net_init_tap", "net_init_tap_one",
             "net_tap_fd_init", "qemu_new_net_client", "qemu_net_client_setup")
VIRTIO_CHAIN = ("qmp_x_exit_preconfig", "qemu_create_cli_devices", "device_init_func",
                "qdev_device_add", "qdev_device_add_from_qdict", "qdev_realize",
                "device_set_realized", "virtio_pci_dc_realize", "pci_qdev_realize",
                "virtio_pci_realize", "virtio_net_pci_realize", "qdev_realize",
                "device_set_realized", "virtio_device_realize", "virtio_net_device_realize",
                "qemu_new_nic", "qemu_net_client_setup")
E1000_CHAIN = ("qmp_x_exit_preconfig", "qemu_create_cli_devices", "device_init_func",
               "qdev_device_add", "qdev_device_add_from_qdict", "qdev_realize",
               "device_set_realized", "pci_qdev_realize", "pci_e1000_realize", "qemu_new_nic",
               "qemu_net_client_setup")
SCRIPTS = "script=/etc/qemu-ifup,downscript=/etc/qemu-ifdown"


def net(cmd: str):
    return plan(Q + cmd).net


def calls(steps, function=None):
    return [s.call for s in steps if function is None or s.function == function]


def where(steps, function, text):
    """Index of the first step of ``function`` whose call contains ``text``."""
    return next(i for i, s in enumerate(steps) if s.function == function and text in s.call)


# -- virtio-net-pci on a tap ----------------------------------------------------------------
def test_virtio_net_pci_on_a_tap_names_and_chains():
    n = net("-netdev tap,id=n0 -device virtio-net-pci,netdev=n0")
    tap, nic = n.clients  # net_clients order: the back-end first
    assert (tap.name, tap.model, tap.type, tap.info, tap.receive, tap.receive_iov) == (
        "n0", "tap", "tap", "net_tap_info", "tap_receive", "tap_receive_iov")
    assert (nic.name, nic.model, nic.type, nic.info, nic.receive, nic.receive_iov) == (
        "virtio-net-pci.0", "virtio-net-pci", "nic", "net_virtio_info", "virtio_net_receive", None)
    assert tap.chain == TAP_CHAIN and nic.chain == VIRTIO_CHAIN
    # netdev= goes through the alias onto the child virtio-net-device, before realize
    assert nic.peer_lookup[-6:] == ("object_property_set", "property_set_alias",
                                    "object_property_set", "field_prop_set", "set_netdev",
                                    "qemu_find_net_clients_except")
    assert (tap.peer, nic.peer) == ("virtio-net-pci.0", "n0")
    assert tap.is_netdev and not nic.is_netdev and tap.ifname == "tap0" and tap.vnet_hdr
    assert nic.macaddr == "52:54:00:12:34:56" and n.warnings == () and not n.default_net


def test_the_peer_is_looked_up_at_property_time_and_paired_at_realize():
    s = net("-netdev tap,id=n0 -device virtio-net-pci,netdev=n0").steps
    tap_setup = where(s, "qemu_new_net_client", "qemu_net_client_setup")
    lookup = where(s, "set_netdev", 'qemu_find_net_clients_except("n0"')
    realize = where(s, "qdev_device_add_from_qdict", "qdev_realize")
    nic_setup = where(s, "qemu_new_nic", "qemu_net_client_setup")
    assert tap_setup < lookup < realize < nic_setup
    assert "peer is NULL" in s[tap_setup].why
    assert "pairing waits for realize" in s[lookup + 1].why
    assert "nc->peer = n0; n0->peer = nc" in s[nic_setup].why
    assert 'assign_name → "virtio-net-pci.0"' in s[nic_setup].why
    assert where(s, "virtio_net_pci_realize", "virtio_net_set_netclient_name") < nic_setup


def test_tap_open_asks_tungetfeatures_then_tunsetiff():
    s = net("-netdev tap,id=n0").backends
    assert calls(s, "tap_open") == ['open("/dev/net/tun", O_RDWR)', "TUNGETFEATURES",
                                    "TUNSETVNETHDRSZ", "TUNSETIFF"]
    setiff = s[where(s, "tap_open", "TUNSETIFF")]
    assert setiff.number == 0x400454CA and setiff.fd == "tun"
    # Linux offers IFF_ONE_QUEUE in TUNGETFEATURES, so QEMU sets it too: 0x7002, not 0x5002
    assert "IFF_TAP|IFF_NO_PI|IFF_ONE_QUEUE|IFF_VNET_HDR = 0x7002" in setiff.why
    assert 'ifr_name "tap%d"' in setiff.why and "makes tap0" in setiff.why
    # net_tap_init runs tap_open and the script; net_tap_fd_init comes after, from net_init_tap_one
    order = [where(s, "net_init_tap", "net_tap_init("), where(s, "net_tap_init", "tap_open("),
             where(s, "net_tap_init", "launch_script"), where(s, "net_init_tap", "net_init_tap_one"),
             where(s, "net_init_tap_one", "net_tap_fd_init"),
             where(s, "net_tap_fd_init", "qemu_new_net_client(&net_tap_info, peer=NULL")]
    assert order == sorted(order)
    assert calls(s, "net_tap_fd_init")[1:] == ["TUNSETOFFLOAD", "TUNSETVNETHDRSZ",
                                               "tap_read_poll(s, true) → qemu_set_fd_handler(fd, "
                                               "tap_send, NULL, s)"]


def test_vnet_hdr_off_drops_the_flag_and_the_header_size():
    n = net("-netdev tap,id=n0,vnet_hdr=off")
    assert "TUNSETVNETHDRSZ" not in calls(n.backends)
    assert "IFF_TAP|IFF_NO_PI|IFF_ONE_QUEUE = 0x3002" in n.backends[
        where(n.backends, "tap_open", "TUNSETIFF")].why
    assert not n.clients[0].vnet_hdr


def test_script_no_and_ifname():
    n = net("-netdev tap,id=n0,ifname=vmtap0,script=no")
    assert not any("launch_script" in c for c in calls(n.backends))
    assert n.clients[0].ifname == "vmtap0"
    assert n.clients[0].info_str == "ifname=vmtap0,script=no,downscript=/etc/qemu-ifdown"
    assert 'ifr_name "vmtap0"' in n.backends[where(n.backends, "tap_open", "TUNSETIFF")].why
    default = net("-netdev tap,id=n0")
    script = calls(default.backends, "net_tap_init")[1]
    assert script.startswith('launch_script("/etc/qemu-ifup", "tap0", fd) → fork(); execv(')
    # pstrcpy(ifr.ifr_name, IFNAMSIZ, ifname): 15 characters and the NUL
    assert net("-netdev tap,id=n0,ifname=abcdefghijklmnopq").clients[0].ifname == "abcdefghijklmno"
    assert net_plan([("-netdev", "tap,id=n0")], sysconfdir="/usr/local/etc").clients[
        0].info_str == "ifname=tap0,script=/usr/local/etc/qemu-ifup,downscript=/usr/local/etc/qemu-ifdown"


# -- e1000 ----------------------------------------------------------------------------------
def test_e1000_on_a_tap():
    n = net("-netdev tap,id=n0 -device e1000,netdev=n0")
    tap, nic = n.clients
    assert (nic.name, nic.model, nic.info, nic.receive, nic.receive_iov) == (
        "e1000.0", "e1000", "net_e1000_info", "e1000_receive", "e1000_receive_iov")
    assert nic.chain == E1000_CHAIN and tap.chain == TAP_CHAIN
    assert "property_set_alias" not in nic.peer_lookup  # e1000 owns its netdev property
    assert nic.peer_lookup[-3:] == ("field_prop_set", "set_netdev", "qemu_find_net_clients_except")
    assert tap.peer == "e1000.0" and nic.peer == "n0"


def test_nic_tap_model_e1000_is_built_by_the_board():
    p = plan(Q + "-nic tap,model=e1000")
    tap, nic = p.net.clients
    assert tap.name == "#net0NN" and tap.option == "-nic tap,model=e1000" and tap.is_netdev
    assert tap.chain == TAP_CHAIN[:3] + ("net_param_nic",) + TAP_CHAIN[4:]
    assert nic.chain == ("pc_init1", "pc_nic_init", "pci_init_nic_devices",
                         "qemu_create_nic_bus_devices", "qdev_realize_and_unref", "qdev_realize",
                         "device_set_realized", "pci_qdev_realize", "pci_e1000_realize",
                         "qemu_new_nic", "qemu_net_client_setup")
    assert nic.peer_lookup[4:8] == ("qdev_set_nic_properties", "qdev_prop_set_netdev",
                                    "object_property_set_str", "object_property_set")
    assert (nic.name, nic.peer, tap.peer) == ("e1000.0", "#net0NN", "e1000.0")
    # the MAC is chosen in net_param_nic, before any -device NIC gets one
    assert "qemu_macaddr_default_if_unset → 52:54:00:12:34:56" in calls(p.net.backends,
                                                                       "net_param_nic")[0]
    assert p.net.board and not p.net.devices and "TUNSETIFF" in p.ioctls()
    assert "-nic" not in p.ignored
    t = [s.function for s in p.timeline]
    assert t.index("kvm_pit_realizefn") < t.index("pc_init1") < t.index("kvm_arch_put_registers")
    assert plan(Q + "-nic tap,model=virtio").net.clients[1].model == "virtio-net-pci"
    assert plan(Q + "-nic tap").net.clients[1].model == "e1000"  # pc's mc->default_nic


def test_netdevs_come_before_nics_whatever_the_order_on_the_command_line():
    n = net("-nic tap,model=e1000 -netdev tap,id=n0 -device virtio-net-pci,netdev=n0")
    assert [c.name for c in n.clients] == ["n0", "#net0NN", "e1000.0", "virtio-net-pci.0"]
    assert [c.ifname for c in n.clients[:2]] == ["tap0", "tap1"]
    assert n.client("e1000.0").macaddr == "52:54:00:12:34:56"
    assert n.client("virtio-net-pci.0").macaddr == "52:54:00:12:34:57"


# -- vhost ----------------------------------------------------------------------------------
def test_vhost_on_opens_vhost_net_from_net_init_tap_one():
    p = plan(Q + "-netdev tap,id=n0,vhost=on -device virtio-net-pci,netdev=n0")
    s = p.net.backends
    assert calls(s, "vhost_dev_init") == ["VHOST_SET_OWNER", "VHOST_GET_FEATURES"]
    assert [x.number for x in s if x.function == "vhost_dev_init"] == [0xAF01, 0x8008AF00]
    assert where(s, "net_init_tap_one", "net_tap_fd_init") < where(
        s, "net_init_tap_one", 'open("/dev/vhost-net"') < where(s, "vhost_net_init", "vhost_dev_init")
    assert p.net.clients[0].vhost and "VHOST_NET_SET_BACKEND" in p.ioctls()
    # an e1000 never starts vhost: VHOST_SET_OWNER at netdev time, no backend later
    e = plan(Q + "-netdev tap,id=n0,vhost=on -device e1000,netdev=n0").ioctls()
    assert "VHOST_SET_OWNER" in e and "VHOST_NET_SET_BACKEND" not in e
    assert "VHOST_NET_SET_BACKEND" not in plan(Q + "-netdev tap,id=n0,vhost=on").ioctls()


# -- two NICs, unpaired clients, info network -----------------------------------------------
def test_two_nics_on_two_netdevs_info_network():
    n = net("-netdev tap,id=n0 -netdev tap,id=n1 -device virtio-net-pci,netdev=n0 "
            "-device e1000,netdev=n1,id=nic1")
    assert [(a.name, b.name) for a, b in n.pairs()] == [("virtio-net-pci.0", "n0"), ("nic1", "n1")]
    assert n.info_network() == (
        "virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\n"
        f" \\ n0: index=0,type=tap,ifname=tap0,{SCRIPTS}\n"
        "nic1: index=0,type=nic,model=e1000,macaddr=52:54:00:12:34:57\n"
        f" \\ n1: index=0,type=tap,ifname=tap1,{SCRIPTS}\n")


def test_an_unused_netdev_is_printed_alone_and_warned_about():
    n = net("-netdev tap,id=n0 -netdev tap,id=n1 -device e1000,netdev=n0")
    assert n.warnings == ("qemu-system-x86_64: warning: netdev n1 has no peer",)
    assert n.info_network() == (
        f"n1: index=0,type=tap,ifname=tap1,{SCRIPTS}\n"
        "e1000.0: index=0,type=nic,model=e1000,macaddr=52:54:00:12:34:56\n"
        f" \\ n0: index=0,type=tap,ifname=tap0,{SCRIPTS}\n")
    assert n.peer_of("n1") is None and n.peer_of("n0").name == "e1000.0"
    assert "netdev n1 has no peer" in n.check[0].why
    alone = net("-netdev tap,id=n0")
    assert alone.warnings == ("qemu-system-x86_64: warning: netdev n0 has no peer",)


def test_a_nic_without_netdev_warns_unless_the_default_network_is_on():
    n = net("-nodefaults -device e1000")
    assert n.warnings == ("qemu-system-x86_64: warning: nic e1000.0 has no peer",)
    assert n.info_network() == "e1000.0: index=0,type=nic,model=e1000,macaddr=52:54:00:12:34:56\n"
    d = net("-device e1000")  # no -netdev/-nic/-net: QEMU adds -net nic -net user, no check
    assert d.default_net and d.warnings == () and d.check == ()
    with pytest.raises(CmdlineError, match="default network"):
        d.info_network()
    assert net("-m 64M").default_net and net("-m 64M").clients == ()
    assert net("-nodefaults").info_network() == ""


def test_repr_is_stable_and_names_the_pairs():
    text = repr(net("-netdev tap,id=n0 -device virtio-net-pci,netdev=n0"))
    assert text.startswith("NetPlan: 2 net client(s), 1 NIC/back-end pair(s)")
    assert "peer=virtio-net-pci.0" in text and "0x" not in text.split("\n")[1]
    assert "object at" not in text
    assert "      tap_open: TUNSETIFF (0x400454ca) on tun" in text


# -- errors, as QEMU prints them ------------------------------------------------------------
@pytest.mark.parametrize("cmd,msg", [
    ("-netdev tap,id=n0 -device virtio-net-pci,netdev=n1",
     "qemu-system-x86_64: -device virtio-net-pci,netdev=n1: "
     "Property 'virtio-net-device.netdev' can't find value 'n1'"),
    ("-netdev tap,id=n0 -device e1000,netdev=n1",
     "qemu-system-x86_64: -device e1000,netdev=n1: Property 'e1000.netdev' can't find value 'n1'"),
    ("-netdev tap,id=n0 -device e1000,netdev=n0 -device virtio-net-pci,netdev=n0",
     "qemu-system-x86_64: -device virtio-net-pci,netdev=n0: "
     "Property 'virtio-net-device.netdev' can't take value 'n0', it's in use"),
    ("-netdev tap,id=n0 -netdev tap,id=n0",
     "qemu-system-x86_64: -netdev tap,id=n0: Duplicate ID 'n0' for netdev"),
    ("-netdev tap,id=a -nic tap,id=a", "qemu-system-x86_64: -nic tap,id=a: Duplicate ID 'a'"),
    ("-netdev tap", "qemu-system-x86_64: -netdev tap: Parameter 'id' is missing"),
    ("-netdev tap,id=0a", "Parameter 'id' expects an identifier"),
    ("-netdev tap,id=n0,vhost=maybe", "Parameter 'vhost' expects 'on' or 'off'"),
    ("-netdev tap,id=n0,colour=red", "Invalid parameter 'colour'"),
    ("-netdev tap,id=n0,ifname=t -netdev tap,id=n1,ifname=t",
     "could not configure /dev/net/tun (t): Device or resource busy"),
    ("-device e1000,mac=nope", "Property 'e1000.mac' doesn't take value 'nope'"),
    ("-nic tap,mac=nope", "invalid syntax for ethernet address"),
    # what the model does not build is an error, not a wrong pairing
    ("-netdev user,id=u0", "'user' back-end is not modelled"),
    ("-nic model=e1000", "'user' back-end is not modelled"),
    ("-netdev tap,id=n0,fd=3", "fd= is not modelled"),
    ("-netdev tap,id=n0,queues=2", "queues= is not modelled"),
    ("-net nic", "-net (the legacy hub syntax) is not modelled"),
    ("-netdev tap,id=n0 -device e1000e,netdev=n0", "the NIC 'e1000e' is not modelled"),
    ("-M q35 -nic tap", "NIC model 'e1000e' is not modelled"),
])
def test_errors_are_qemus(cmd, msg):
    with pytest.raises(CmdlineError) as e:
        plan(Q + cmd)
    assert msg in str(e.value)


def test_the_program_name_is_argv0s_basename():
    with pytest.raises(CmdlineError, match=r"^qemu-system-x86_64: -device e1000,netdev=x: "):
        plan("/usr/bin/qemu-system-x86_64 -enable-kvm -device e1000,netdev=x")


# -- the pairing is symmetric, whatever the command line ------------------------------------
@st.composite
def cmdlines(draw):
    ids = [f"n{i}" for i in range(draw(st.integers(0, 3)))]
    args = [("-netdev", f"tap,id={i}" + draw(st.sampled_from(["", ",vhost=on", ",script=no"])))
            for i in ids]
    args += [("-nic", f"tap,model={draw(st.sampled_from(['e1000', 'virtio']))}")
             for _ in range(draw(st.integers(0, 2)))]
    for _ in range(draw(st.integers(0, 3))):
        dev = draw(st.sampled_from(sorted(NIC_MODELS)))
        target = draw(st.sampled_from(ids + ["nx", None]))
        args.append(("-device", dev + (f",netdev={target}" if target else "")))
    return draw(st.permutations(args))


@settings(max_examples=150, deadline=None)
@given(cmdlines(), st.booleans())
def test_pairing_is_symmetric(args, nodefaults):
    try:
        n = net_plan(list(args), nodefaults=nodefaults)
    except CmdlineError as e:
        assert re.search(r"can't find value 'nx'|it's in use", str(e)), e
        return
    names = [c.name for c in n.clients]
    assert len(set(names)) == len(names)
    for c in n.clients:
        if c.peer is not None:
            assert n.client(c.peer).peer == c.name       # nc->peer = peer; peer->peer = nc
            assert {c.type, n.client(c.peer).type} == {"nic", "tap"}
    taps = [c for c in n.clients if c.type == "tap"]
    assert len({c.ifname for c in taps}) == len(taps)
    unpaired = {c.name for c in n.clients if c.peer is None}
    if n.default_net:
        assert n.warnings == ()
    else:
        assert {w.split()[-4] for w in n.warnings} == unpaired
        text = n.info_network()
        assert text.count("\n") == len(n.clients) and text.count(" \\ ") == len(n.pairs())


# -- the numbers, from the uapi headers ------------------------------------------------------
def test_tun_and_vhost_numbers_against_the_headers(tmp_path):
    from _oracle import need_c, printf_lines, program, run_c

    need_c("/usr/include/linux/if_tun.h", "/usr/include/linux/vhost.h")
    names = ["TUNGETFEATURES", "TUNSETOFFLOAD", "TUNSETSNDBUF", "TUNSETVNETHDRSZ", "IFF_TUN",
             "IFF_NAPI", "IFF_NAPI_FRAGS", "IFF_NO_CARRIER", "IFF_MULTI_QUEUE", "IFF_ONE_QUEUE",
             "VHOST_GET_FEATURES"]
    got = run_c(tmp_path, program(["linux/if_tun.h", "linux/vhost.h", "linux/virtio_net.h",
                                   "net/if.h"],
                                  printf_lines({n: n for n in names} | {
                                      "hdr": "sizeof(struct virtio_net_hdr)",
                                      "IFNAMSIZ": "IFNAMSIZ"})))
    for n in names:
        assert got[n] == getattr(qemu_net, n), n
    assert got["hdr"] == qemu_net.VIRTIO_NET_HDR_LEN and got["IFNAMSIZ"] == qemu_net.IFNAMSIZ


# -- source oracles: the 9.2.4 tree has every name and string the model relies on ------------
def _q(path):
    from _sources import QEMU_9, git_show
    return git_show(QEMU_9, "HEAD", path)


def _fn(path, signature):
    from _sources import function_body
    return function_body(_q(path), signature)


def _in_order(body, *parts):
    idx = [body.index(p) for p in parts]
    assert idx == sorted(idx), list(zip(parts, idx, strict=True))


def test_qemu_init_order_of_the_network_steps():
    vl = "system/vl.c"
    init = _fn(vl, "void qemu_init(int argc, char **argv)")
    _in_order(init, "configure_accelerators(argv[0]);", "qemu_create_late_backends();",
              "qmp_x_exit_preconfig(&error_fatal);")
    assert "net_init_clients();" in _fn(vl, "static void qemu_create_late_backends(void)")
    _in_order(_fn(vl, "void qmp_x_exit_preconfig(Error **errp)"), "qemu_init_board();",
              "qemu_create_cli_devices();", "qemu_machine_creation_done(errp)")
    _in_order(_fn(vl, "static bool qemu_machine_creation_done(Error **errp)"),
              "if (!default_net", "net_check_clients();", "qdev_machine_creation_done();")
    assert "device_init_func, NULL, &error_fatal" in _fn(vl, "static void qemu_create_cli_devices(")
    assert "dev = qdev_device_add(opts, errp);" in _fn(vl, "static int device_init_func(")
    for opt in ("netdev", "nic", "net"):  # each clears default_net
        assert re.search(rf"case QEMU_OPTION_{opt}:\s+default_net = 0;", init), opt
    assert re.search(r"machine_class->default_nic", _q(vl))
    machine = _fn("hw/core/machine.c", "void qdev_machine_creation_done(void)")
    assert "qemu_system_reset(SHUTDOWN_CAUSE_NONE);" in machine  # the KVM_SET_REGS come after


def test_net_c_client_init_chain_and_pairing():
    c = "net/net.c"
    _in_order(_fn(c, "void net_init_clients(void)"), "net_init_netdev, NULL", "net_param_nic, NULL",
              "net_init_client, NULL")
    assert "return net_client_init(opts, true, errp);" in _fn(c, "static int net_init_netdev(")
    init = _fn(c, "static int net_client_init(QemuOpts *opts, bool is_netdev, Error **errp)")
    assert "if (visit_type_Netdev(v, NULL, &object, errp)) {\n        ret = net_client_init1(" in init
    init1 = _fn(c, "static int net_client_init1(const Netdev *netdev, bool is_netdev, Error **errp)")
    _in_order(init1, "nc = qemu_find_netdev(netdev->id);", "error_setg(errp, \"Duplicate ID '%s'\"",
              "net_client_init_fun[netdev->type](netdev, netdev->id, peer, errp)",
              "nc->is_netdev = true;")
    assert "peer = net_hub_add_port" in init1.split("} else {")[1]  # only for -net
    assert "[NET_CLIENT_DRIVER_TAP]       = net_init_tap," in _q(c)
    setup = _fn(c, "static void qemu_net_client_setup(NetClientState *nc,")
    _in_order(setup, "nc->name = assign_name(nc, model);", "nc->peer = peer;\n        peer->peer = nc;",
              "QTAILQ_INSERT_TAIL(&net_clients, nc, next);")
    assert 'g_strdup_printf("%s.%d", model, id)' in _fn(c, "static char *assign_name(")
    assert "qemu_net_client_setup(nc, info, peer, model, name,\n                          " \
           "qemu_net_client_destructor, true);" in _fn(c, "NetClientState *qemu_new_net_client(")
    assert "qemu_net_client_setup(&nic->ncs[i], info, peers[i], model, name,\n" in _fn(
        c, "NICState *qemu_new_nic(")
    nic = _fn(c, "static int net_param_nic(void *dummy, QemuOpts *opts, Error **errp)")
    _in_order(nic, "nd_id = id_generate(ID_NET);", "qemu_macaddr_default_if_unset(&ni->macaddr);",
              "ret = net_client_init(opts, true, errp);", "ni->netdev = qemu_find_netdev(nd_id);")
    assert 'qemu_opt_set(opts, "type", "user", &error_abort);' in nic
    mac = _fn(c, "void qemu_macaddr_default_if_unset(MACAddr *macaddr)")
    assert "{ .a = { 0x52, 0x54, 0x00, 0x12, 0x34, 0 } }" in mac
    assert "for (index = 0x56; index < 0xFF; index++)" in _fn(c, "static int qemu_macaddr_get_free(")
    assert '"model=%s,macaddr=%02x:%02x:%02x:%02x:%02x:%02x"' in _fn(
        c, "void qemu_format_nic_info_str(")
    id_c = _q("util/id.c")
    assert "#define ID_SPECIAL_CHAR '#'" in id_c and "g_random_int_range(0, 100)" in id_c
    assert '"%c%s%" PRIu64 "%02" PRId32' in id_c and '[ID_NET] = "net"' in id_c


def test_info_network_and_the_no_peer_warning():
    c = "net/net.c"
    assert 'monitor_printf(mon, "%s: index=%d,type=%s,%s\\n", nc->name,' in _fn(
        c, "void print_net_client(Monitor *mon, NetClientState *nc)")
    hmp = _fn("net/net-hmp-cmds.c", "void hmp_info_network(Monitor *mon, const QDict *qdict)")
    _in_order(hmp, "if (!peer || type == NET_CLIENT_DRIVER_NIC) {\n            print_net_client(",
              "if (peer && type == NET_CLIENT_DRIVER_NIC) {", 'monitor_printf(mon, " \\\\ ");')
    check = _fn(c, "void net_check_clients(void)")
    assert 'warn_report("%s %s has no peer",' in check and '? "nic" : "netdev"' in check
    report = _q("util/error-report.c")
    assert 'error_printf("warning: ");' in report and 'error_printf("%s:", g_get_prgname());' in report
    assert "g_set_prgname(p ? p + 1 : argv0);" in report  # the basename of argv[0]
    drivers = _q("qapi/net.json")
    assert "'data': [ 'none', 'nic', 'user', 'tap'," in drivers


def test_tap_c_and_tap_linux_c():
    t = "net/tap.c"
    info = _q(t).split("static NetClientInfo net_tap_info = {")[1].split("};")[0]
    for field in (".type = NET_CLIENT_DRIVER_TAP,", f".receive = {qemu_net.TAP_RECEIVE},",
                  f".receive_iov = {qemu_net.TAP_RECEIVE_IOV},"):
        assert field in info
    init_tap = _fn(t, "int net_init_tap(const Netdev *netdev, const char *name,")
    last = init_tap[init_tap.index("} else if (tap->helper) {"):]
    last = last[last.index("} else {"):]  # no fd=, fds=, helper=: QEMU opens the tap itself
    _in_order(last, "script = default_script = get_relocated_path(DEFAULT_NETWORK_SCRIPT);",
              "fd = net_tap_init(tap, &vnet_hdr,", 'net_init_tap_one(tap, peer, "tap", name, ifname,')
    tap_init = _fn(t, "static int net_tap_init(const NetdevTapOptions *tap, int *vnet_hdr,")
    _in_order(tap_init, "*vnet_hdr = 1;\n        vnet_hdr_required = 0;", "tap_open(ifname,",
              'strcmp(setup_script, "no") != 0', "launch_script(setup_script, ifname, fd, &err);")
    one = _fn(t, "static void net_init_tap_one(const NetdevTapOptions *tap, NetClientState *peer,")
    _in_order(one, "TAPState *s = net_tap_fd_init(peer, model, name, fd, vnet_hdr);",
              "tap_set_sndbuf(s->fd, tap, &err);",
              'qemu_set_info_str(&s->nc, "ifname=%s,script=%s,downscript=%s", ifname,',
              'vhostfd = open("/dev/vhost-net", O_RDWR);', "s->vhost_net = vhost_net_init(&options);")
    fd_init = _fn(t, "static TAPState *net_tap_fd_init(NetClientState *peer,")
    _in_order(fd_init, "nc = qemu_new_net_client(&net_tap_info, peer, model, name);",
              "s->has_ufo = tap_probe_has_ufo(s->fd);", "tap_set_offload(&s->nc, 0, 0, 0, 0, 0, 0, 0);",
              "tap_fd_set_vnet_hdr_len(s->fd, s->host_vnet_hdr_len);", "tap_read_poll(s, true);")
    script = _q(t).split("static void launch_script(")[2]  # [1] is the prototype
    _in_order(script, "pid = fork();", "execv(setup_script, args);", "waitpid(pid, &status, 0)")
    net_h = _q("include/net/net.h")
    assert '#define DEFAULT_NETWORK_SCRIPT CONFIG_SYSCONFDIR "/qemu-ifup"' in net_h
    assert '#define DEFAULT_NETWORK_DOWN_SCRIPT CONFIG_SYSCONFDIR "/qemu-ifdown"' in net_h
    lin = "net/tap-linux.c"
    tap_open = _fn(lin, "int tap_open(char *ifname, int ifname_size, int *vnet_hdr,")
    _in_order(tap_open, "open(PATH_NET_TUN, O_RDWR)", "ifr.ifr_flags = IFF_TAP | IFF_NO_PI;",
              "ioctl(fd, TUNGETFEATURES, &features)", "ifr.ifr_flags |= IFF_ONE_QUEUE;",
              "ifr.ifr_flags |= IFF_VNET_HDR;", "ioctl(fd, TUNSETVNETHDRSZ, &len);",
              'pstrcpy(ifr.ifr_name, IFNAMSIZ, "tap%d");', "ioctl(fd, TUNSETIFF, (void *) &ifr);",
              "pstrcpy(ifname, ifname_size, ifr.ifr_name);")
    assert '"could not configure %s (%s)"' in tap_open
    assert "ioctl(fd, TUNSETSNDBUF, &sndbuf)" in _fn(lin, "void tap_set_sndbuf(")
    assert "ioctl(fd, TUNGETIFF, &ifr)" in _fn(lin, "int tap_probe_vnet_hdr(int fd, Error **errp)")
    vhost = _fn("hw/virtio/vhost.c", "int vhost_dev_init(struct vhost_dev *hdev, void *opaque,")
    _in_order(vhost, "hdev->vhost_ops->vhost_set_owner(hdev);",
              "hdev->vhost_ops->vhost_get_features(hdev, &features);")
    assert "r = vhost_dev_init(&net->dev, options->opaque," in _q("hw/net/vhost_net.c")


def test_linux_offers_iff_one_queue_in_tungetfeatures():
    from _sources import LINUX_6_1, LINUX_6_1_REV, git_show

    tun = git_show(LINUX_6_1, LINUX_6_1_REV, "drivers/net/tun.c")
    assert "#define TUN_FEATURES (IFF_NO_PI | IFF_ONE_QUEUE | IFF_VNET_HDR | \\\n" \
           "\t\t      IFF_MULTI_QUEUE | IFF_NAPI | IFF_NAPI_FRAGS)" in tun
    assert "return put_user(IFF_TUN | IFF_TAP | IFF_NO_CARRIER |\n\t\t\t\tTUN_FEATURES," in tun


def test_the_netdev_property_and_its_errors():
    ps = "hw/core/qdev-properties-system.c"
    setter = _fn(ps, "static void set_netdev(Object *obj, Visitor *v, const char *name,")
    _in_order(setter, "queues = qemu_find_net_clients_except(str, peers,\n"
              "                                          NET_CLIENT_DRIVER_NIC,",
              "err = -ENOENT;", "if (peers[i]->peer) {\n            err = -EEXIST;",
              "ncs[i] = peers[i];", "error_set_from_qdev_prop_error(errp, err, obj, prop->name, str);")
    assert "qemu_find_netdev" not in setter  # the brief's guess; set_netdev does not use it
    assert ".set   = set_netdev," in _q(ps)
    nic_props = _fn(ps, "void qdev_set_nic_properties(DeviceState *dev, NICInfo *nd)")
    _in_order(nic_props, 'qdev_prop_set_macaddr(dev, "mac", nd->macaddr.a);',
              'qdev_prop_set_netdev(dev, "netdev", nd->netdev);', "nd->instantiated = 1;")
    assert "object_property_set_str(OBJECT(dev), name, value ? value->name" in _fn(
        ps, "void qdev_prop_set_netdev(DeviceState *dev, const char *name,")
    errs = _fn("hw/core/qdev-properties.c", "void error_set_from_qdev_prop_error(")
    for text in ("\"Property '%s.%s' can't take value '%s', it's in use\"",
                 "\"Property '%s.%s' doesn't take value '%s'\"",
                 "\"Property '%s.%s' can't find value '%s'\""):
        assert text in errs
    assert "return prop->info->set(obj, v, name, opaque, errp);" in _fn(
        "hw/core/qdev-properties.c", "static void field_prop_set(")
    assert "object_property_set(prop->target_obj, prop->target_name, alias_v, errp);" in _fn(
        "qom/object.c", "static void property_set_alias(")
    opts = _q("util/qemu-option.c")
    assert "\"Duplicate ID '%s' for %s\", id, list->name" in opts
    qerr = _q("include/qapi/qmp/qerror.h")
    assert "\"Parameter '%s' is missing\"" in qerr and "\"Parameter '%s' expects %s\"" in qerr
    assert "\"'on' or 'off'\"" in _q("qapi/qapi-util.c")
    assert "'*vnet_hdr':   'bool'," in _q("qapi/net.json")


def test_qdev_device_add_then_the_realize_chains():
    add = _fn("system/qdev-monitor.c", "DeviceState *qdev_device_add_from_qdict(const QDict *opts,")
    _in_order(add, "dev = qdev_new(driver);", "object_set_properties_from_keyval(&dev->parent_obj, "
              "dev->opts, from_json,", "if (!qdev_realize(dev, bus, errp)) {")
    assert "ret = qdev_device_add_from_qdict(qdict, false, errp);" in _fn(
        "system/qdev-monitor.c", "DeviceState *qdev_device_add(QemuOpts *opts, Error **errp)")
    qdev = _q("hw/core/qdev.c")
    assert 'return object_property_set_bool(OBJECT(dev), "realized", true, errp);' in qdev
    assert "dc->realize(dev, &local_err);" in _fn("hw/core/qdev.c", "static void device_set_realized(")
    pci = _q("hw/pci/pci.c")
    assert "pc->realize(pci_dev, &local_err);" in _fn("hw/pci/pci.c", "static void pci_qdev_realize(")
    assert "k->realize = pci_qdev_realize;" in pci
    vpci = _q("hw/virtio/virtio-pci.c")
    assert "k->realize = virtio_pci_realize;" in vpci
    assert "device_class_set_parent_realize(dc, virtio_pci_dc_realize," in vpci
    assert "k->realize(proxy, errp);" in _fn("hw/virtio/virtio-pci.c", "static void virtio_pci_realize(")
    vnp = "hw/virtio/virtio-net-pci.c"
    _in_order(_fn(vnp, "static void virtio_net_pci_realize(VirtIOPCIProxy *vpci_dev, Error **errp)"),
              "virtio_net_set_netclient_name(&dev->vdev, qdev->id,\n"
              "                                  object_get_typename(OBJECT(qdev)));",
              "qdev_realize(vdev, BUS(&vpci_dev->bus), errp);")
    assert "virtio_instance_init_common(obj, &dev->vdev, sizeof(dev->vdev),\n" \
           "                                TYPE_VIRTIO_NET);" in _q(vnp)
    assert 'generic_name          = "virtio-net-pci",' in _q(vnp)
    assert "vpciklass->realize = virtio_net_pci_realize;" in _q(vnp)
    virtio = _q("hw/virtio/virtio.c")
    assert "qdev_alias_all_properties(vdev, proxy_obj);" in _fn(
        "hw/virtio/virtio.c", "void virtio_instance_init_common(")
    assert "vdc->realize(dev, &err);" in _fn("hw/virtio/virtio.c", "static void virtio_device_realize(")
    assert "dc->realize = virtio_device_realize;" in virtio
    assert '#define TYPE_VIRTIO_NET "virtio-net-device"' in _q("include/hw/virtio/virtio-net.h")


@pytest.mark.parametrize("model", sorted(NIC_MODELS))
def test_each_nic_models_info_and_realize(model):
    nic = NIC_MODELS[model]
    src = _q(nic.source)
    info = src.split(f"static NetClientInfo {nic.info} = {{")[1].split("};")[0]
    assert ".type = NET_CLIENT_DRIVER_NIC," in info and f".receive = {nic.receive}," in info
    assert (f".receive_iov = {nic.receive_iov}," in info) == (nic.receive_iov is not None)
    realize = _fn(nic.source, f"static void {nic.realize}(")
    _in_order(realize, "qemu_macaddr_default_if_unset(", f"qemu_new_nic(&{nic.info},",
              "qemu_format_nic_info_str(qemu_get_queue(")
    props = {"e1000": "DEFINE_NIC_PROPERTIES(E1000State, conf),",
             "virtio-net-pci": "DEFINE_NIC_PROPERTIES(VirtIONet, nic_conf),"}
    assert props[model] in src
    if model == "e1000":
        assert "object_get_typename(OBJECT(d)), dev->id," in realize
        assert "k->realize = pci_e1000_realize;" in src and '.name      = "e1000",' in src
        _in_order(realize, "pci_register_bar(pci_dev, 0,", "qemu_new_nic(")
    else:
        assert "n->netclient_type, n->netclient_name," in realize
        assert "vdc->realize = virtio_net_device_realize;" in src


def test_the_board_makes_the_nic_nics():
    pc = _fn("hw/i386/pc.c", "void pc_nic_init(PCMachineClass *pcmc, ISABus *isa_bus, PCIBus *pci_bus)")
    assert "pci_init_nic_devices(pci_bus, mc->default_nic);" in pc
    assert 'qemu_create_nic_bus_devices(&bus->qbus, TYPE_PCI_DEVICE, default_model,\n' \
           '                                "virtio", "virtio-net-pci");' in _fn(
        "hw/pci/pci.c", "void pci_init_nic_devices(PCIBus *bus, const char *default_model)")
    bus = _fn("net/net.c", "void qemu_create_nic_bus_devices(BusState *bus, const char *parent_type,")
    _in_order(bus, "dev = qdev_new(model);", "qdev_set_nic_properties(dev, nd);",
              "qdev_realize_and_unref(dev, bus, &error_fatal);")
    piix = _fn("hw/i386/pc_piix.c", "static void pc_init1(MachineState *machine, const char *pci_type)")
    _in_order(piix, "pc_basic_device_init(", "pc_nic_init(pcmc, isa_bus, pcms->pcibus);")
    assert 'm->default_nic = "e1000";' in _q("hw/i386/pc_piix.c")
    assert 'm->default_nic = "e1000e";' in _q("hw/i386/pc_q35.c")
    assert "pc_nic_init(pcmc, isa_bus, pcms->pcibus);" in _q("hw/i386/pc_q35.c")


def test_the_cmdline_knows_the_nics_qemu_net_builds():
    from vbook.models import qemu_cmdline, qemu_net
    assert set(qemu_cmdline._NIC_DEVICES) == set(qemu_net.NIC_MODELS)
