"""The QEMU network front end: ``-netdev`` / ``-nic`` / ``-device`` → a NIC and its back-end, paired.

A model of QEMU 9.2.4, function by function (file names are the 9.2.4 tree's):

* ``qemu_init`` (system/vl.c) calls ``qemu_create_late_backends`` after
  ``configure_accelerators`` (so after ``kvm_init``), and that calls
  ``net_init_clients`` (net/net.c): every ``-netdev`` first (``net_init_netdev``),
  then every ``-nic`` (``net_param_nic``), then ``-net``. Each becomes
  ``net_client_init`` → ``net_client_init1`` → ``net_client_init_fun[type]``;
  for tap that is ``net_init_tap`` (net/tap.c). It calls ``net_tap_init`` →
  ``tap_open`` (net/tap-linux.c: /dev/net/tun, ``TUNGETFEATURES``,
  ``TUNSETIFF``) and the ifup script, and *then*, back in ``net_init_tap``,
  ``net_init_tap_one`` → ``net_tap_fd_init`` →
  ``qemu_new_net_client(&net_tap_info, peer=NULL, "tap", id)`` →
  ``qemu_net_client_setup``: the back-end is a net client without a peer.
* The board (``pc_init1`` → ``pc_nic_init``) creates the ``-nic`` NICs; then
  ``qemu_create_cli_devices`` adds each ``-device``: ``qdev_device_add`` →
  ``qdev_device_add_from_qdict`` creates the device, sets its properties —
  ``netdev=`` reaches ``set_netdev`` (hw/core/qdev-properties-system.c), which
  finds the back-end with ``qemu_find_net_clients_except`` and only *stores* it
  in the NIC's ``NICConf`` — and realizes it. The realize function
  (``virtio_net_device_realize`` or ``pci_e1000_realize``) calls
  ``qemu_new_nic(&net_virtio_info / &net_e1000_info, &conf, …)`` →
  ``qemu_net_client_setup``, and that is where ``nc->peer = peer;
  peer->peer = nc`` happens.
* ``qemu_machine_creation_done`` → ``net_check_clients`` warns about every
  client left without a peer; ``info network`` (``hmp_info_network``,
  net/net-hmp-cmds.c, and ``print_net_client``) prints the pairs.

Only tap back-ends opened by QEMU itself (no ``fd=``/``helper=``/``queues=``)
and the virtio-net-pci and e1000 NICs of the pc / q35 boards are modelled;
anything else that would change the pairing is a :class:`CmdlineError`, not a
guess. The host is assumed to be Linux 6.1 with no other tap devices.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from vbook.models.qemu_cmdline import (
    IFF_NO_PI,
    IFF_TAP,
    IFF_VNET_HDR,
    TUNSETIFF,
    VHOST_SET_OWNER,
    CmdlineError,
    Step,
)

#: linux/if_tun.h (uapi 6.1); the ioctl numbers are _IOR/_IOW('T', nr, …)
TUNGETFEATURES, TUNSETOFFLOAD, TUNSETSNDBUF, TUNSETVNETHDRSZ = (0x800454CF, 0x400454D0,
                                                               0x400454D4, 0x400454D8)
IFF_TUN, IFF_NAPI, IFF_NAPI_FRAGS, IFF_NO_CARRIER = 0x0001, 0x0010, 0x0020, 0x0040
IFF_MULTI_QUEUE, IFF_ONE_QUEUE = 0x0100, 0x2000
#: what Linux 6.1 answers to TUNGETFEATURES (drivers/net/tun.c: IFF_TUN | IFF_TAP |
#: IFF_NO_CARRIER | TUN_FEATURES, TUN_FEATURES = NO_PI|ONE_QUEUE|VNET_HDR|MULTI_QUEUE|NAPI|NAPI_FRAGS)
LINUX_TUN_FEATURES = (IFF_TUN | IFF_TAP | IFF_NO_CARRIER | IFF_NO_PI | IFF_ONE_QUEUE
                      | IFF_VNET_HDR | IFF_MULTI_QUEUE | IFF_NAPI | IFF_NAPI_FRAGS)
VHOST_GET_FEATURES = 0x8008AF00  #: linux/vhost.h _IOR(VHOST_VIRTIO, 0x00, __u64)
VIRTIO_NET_HDR_LEN = 10  #: sizeof(struct virtio_net_hdr), what tap_open sets with TUNSETVNETHDRSZ
IFNAMSIZ = 16  #: linux/if.h; tap_open copies the name with pstrcpy(…, IFNAMSIZ, …)
MAC_BASE = (0x52, 0x54, 0x00, 0x12, 0x34)  #: net/net.c qemu_macaddr_default_if_unset
NETDEV_ID_RANDOM = "NN"  #: id_generate's two random digits, g_random_int_range(0, 100)


@dataclass(frozen=True)
class NicModel:
    """A NIC the model builds: the ``NetClientInfo`` its realize hands to ``qemu_new_nic``."""

    type: str               # the QOM type given to -device
    prop_owner: str         # the object whose "netdev" property set_netdev runs on
    info: str               # NetClientInfo
    receive: str            # info->receive
    receive_iov: str | None
    source: str             # the file that defines info and the realize function
    realize: str            # the function that calls qemu_new_nic


#: hw/net/virtio-net.c (net_virtio_info has no receive_iov), hw/net/e1000.c (net_e1000_info)
NIC_MODELS = {
    "virtio-net-pci": NicModel("virtio-net-pci", "virtio-net-device", "net_virtio_info",
                               "virtio_net_receive", None, "hw/net/virtio-net.c",
                               "virtio_net_device_realize"),
    "e1000": NicModel("e1000", "e1000", "net_e1000_info", "e1000_receive", "e1000_receive_iov",
                      "hw/net/e1000.c", "pci_e1000_realize"),
}
#: net/tap.c net_tap_info
TAP_INFO, TAP_RECEIVE, TAP_RECEIVE_IOV = "net_tap_info", "tap_receive", "tap_receive_iov"
#: NICs QEMU has but this model does not build: naming one is an error, not a silent gap
OTHER_NICS = {"e1000e", "igb", "e1000-82544gc", "e1000-82545em", "rtl8139", "ne2k_pci",
              "ne2k_isa", "pcnet", "vmxnet3", "i82550", "i82551", "i82557b", "i82559er",
              "tulip", "usb-net", "virtio-net-device", "virtio-net-pci-transitional",
              "virtio-net-pci-non-transitional", "rocker"}
#: hw/i386/pc_piix.c and pc_q35.c: the board function, mc->default_nic, the PCI bus
BOARDS = {"pc": ("pc_init1", "e1000", "pci.0"), "q35": ("pc_q35_init", "e1000e", "pcie.0")}
TAP_KEYS = {"ifname", "script", "downscript", "vhost", "vnet_hdr"}
TAP_NOT_MODELLED = {"fd", "fds", "br", "helper", "sndbuf", "vhostfd", "vhostfds", "vhostforce",
                    "queues", "poll-us"}


@dataclass(frozen=True)
class NetClient:
    """One ``NetClientState`` on QEMU's ``net_clients`` list (net/net.c)."""

    name: str                      # nc->name
    model: str                     # nc->model: "tap", or the NIC's type ("virtio-net-pci")
    type: str                      # NetClientDriver_str(nc->info->type): "tap" or "nic"
    info: str                      # the NetClientInfo: net_tap_info, net_virtio_info …
    receive: str                   # info->receive: where a frame sent *to* this client lands
    receive_iov: str | None
    info_str: str                  # nc->info_str, printed by info network
    peer: str | None               # nc->peer->name
    option: str                    # the command-line option that made it
    chain: tuple[str, ...]         # the functions entered down to qemu_net_client_setup
    peer_lookup: tuple[str, ...] = ()   # a NIC: how its netdev= was found (set_netdev …)
    queue_index: int = 0
    is_netdev: bool = False        # set by net_client_init1 for -netdev / -nic back-ends
    ifname: str | None = None      # a tap: the host interface
    vhost: bool = False
    vnet_hdr: bool = False
    macaddr: str | None = None     # a NIC


@dataclass(frozen=True)
class NetPlan:
    """The net clients one command line makes, and the calls that made them, in order."""

    clients: tuple[NetClient, ...]
    backends: tuple[Step, ...]     # qemu_create_late_backends → net_init_clients
    board: tuple[Step, ...]        # pc_init1 → pc_nic_init (the -nic NICs)
    devices: tuple[Step, ...]      # qemu_create_cli_devices (the -device NICs)
    check: tuple[Step, ...]        # qemu_machine_creation_done → net_check_clients
    warnings: tuple[str, ...]      # what net_check_clients prints, as QEMU prints it
    default_net: bool = False      # no -netdev/-nic/-net: QEMU's implicit "-net nic -net user"

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.backends + self.board + self.devices + self.check

    def client(self, name: str) -> NetClient:
        for nc in self.clients:
            if nc.name == name:
                return nc
        raise CmdlineError(f"no net client named {name!r} (there are: "
                           f"{', '.join(c.name for c in self.clients) or 'none'})")

    def peer_of(self, name: str) -> NetClient | None:
        peer = self.client(name).peer
        return self.client(peer) if peer else None

    def pairs(self) -> list[tuple[NetClient, NetClient]]:
        """(NIC, back-end) for every NIC that has a peer, in net_clients order."""
        return [(nc, self.client(nc.peer)) for nc in self.clients if nc.type == "nic" and nc.peer]

    def info_network(self) -> str:
        """The text of HMP ``info network`` (hmp_info_network, print_net_client), newline-ended."""
        if self.default_net:
            raise CmdlineError("info network: QEMU's default network (no -netdev, -nic or -net: "
                               "\"-net nic -net user\", a NIC and slirp on hub 0) is not modelled; "
                               "give a -netdev or -nodefaults")

        def line(nc: NetClient) -> str:
            return f"{nc.name}: index={nc.queue_index},type={nc.type},{nc.info_str}\n"

        out = []
        for nc in self.clients:
            if nc.peer is None or nc.type == "nic":
                out.append(line(nc))
            if nc.peer is not None and nc.type == "nic":
                out.append(" \\ " + line(self.client(nc.peer)))
        return "".join(out)

    def __repr__(self) -> str:
        if self.default_net and not self.clients:
            return "NetPlan: QEMU's default network (-net nic -net user), not modelled"
        w = max([len(c.name) for c in self.clients] + [1])
        head = (f"NetPlan: {len(self.clients)} net client(s), {len(self.pairs())} NIC/back-end "
                f"pair(s), {len(self.steps)} steps")
        lines = [head] + (["  (and QEMU's default network, -net nic -net user: not modelled)"]
                          if self.default_net else [])
        lines += [f"  {c.name:{w}s}  type={c.type:3s}  {c.info:15s}  receive={c.receive:18s}  "
                  f"peer={c.peer}" for c in self.clients]
        lines += [f"  {x}" for x in self.warnings]
        lines += [f"  {s}" for s in self.steps]
        return "\n".join(lines)


def _parse(text: str, implied: str) -> dict[str, str]:
    """QemuOpts syntax: ``value,key=value,…``, the first bare value naming ``implied``."""
    out: dict[str, str] = {}
    for i, part in enumerate(text.split(",")):
        k, eq, v = part.partition("=")
        if eq:
            out[k] = v
        elif i == 0:
            out[implied] = k
        else:
            out[k] = "on"  # QemuOpts: a bare "flag" means flag=on
    return out


def _id_wellformed(s: str) -> bool:
    """util/id.c id_wellformed: a letter, then letters, digits, '-', '.', '_'."""
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", s))


_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")


class _Rec:
    """Records Steps with their call depth (1 for the outermost function); ``chain`` is
    the stack of entered functions."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.stack: list[str] = []

    @contextmanager
    def into(self, function: str):
        self.stack.append(function)
        try:
            yield
        finally:
            self.stack.pop()

    def __call__(self, call: str, why: str = "", fd: str = "-", number: int | None = None):
        self.steps.append(Step(self.stack[-1], fd, call, number, why, depth=len(self.stack)))

    def chain(self, last: str) -> tuple[str, ...]:
        return (*self.stack, last)

    def take(self) -> tuple[Step, ...]:
        out, self.steps = tuple(self.steps), []
        return out


@dataclass
class _Nd:
    """An nd_table[] entry (a -nic): model, MAC, the back-end's id."""

    model: str | None
    mac: str
    netdev: str
    option: str


@dataclass
class _Build:
    prog: str
    sysconfdir: str
    rec: _Rec = field(default_factory=_Rec)
    clients: list[NetClient] = field(default_factory=list)
    mac_table: dict[int, int] = field(default_factory=dict)
    ifnames: list[str] = field(default_factory=list)
    generated: int = 0   # util/id.c id_counters[ID_NET]
    nb_nics: int = 0

    def error(self, where: str, msg: str) -> CmdlineError:
        """error_report with the location of the option (util/error-report.c print_loc)."""
        return CmdlineError(f"{self.prog}: {where}: {msg}" if where else f"{self.prog}: {msg}")

    def find_netdev(self, name: str) -> NetClient | None:
        """qemu_find_netdev / qemu_find_net_clients_except(…, NET_CLIENT_DRIVER_NIC)."""
        return next((c for c in self.clients if c.type != "nic" and c.name == name), None)

    def set_peer(self, name: str, peer: str) -> None:
        self.clients = [replace(c, peer=peer) if c.name == name else c for c in self.clients]

    def mac_default_if_unset(self, mac: str | None) -> str:
        """qemu_macaddr_default_if_unset: 52:54:00:12:34:<first free from 0x56>."""
        if mac is not None:
            b = [int(x, 16) for x in re.split("[:-]", mac)]
            if tuple(b[:5]) == MAC_BASE:
                self.mac_table[b[5]] = self.mac_table.get(b[5], 0) + 1
            return ":".join(f"{x:02x}" for x in b)
        last = next(i for i in range(0x56, 0xFF) if not self.mac_table.get(i))
        self.mac_table[last] = 1
        return ":".join(f"{x:02x}" for x in (*MAC_BASE, last))

    # -- back-ends: net_client_init → … → net_init_tap ---------------------------------------
    def net_client_init(self, opts: dict[str, str], name: str | None, where: str) -> None:
        r = self.rec
        kind = opts.get("type")
        with r.into("net_client_init"):
            r("visit_type_Netdev(v, NULL, &object) → net_client_init1(object, is_netdev=true)",
              f"the options become a Netdev: type {kind}, id {name}")
            if kind != "tap":
                raise self.error(where, f"the {kind!r} back-end is not modelled (only tap)")
            for k in opts:
                if k in TAP_NOT_MODELLED:
                    raise self.error(where, f"tap option {k}= is not modelled")
                if k not in TAP_KEYS | {"type", "id"}:
                    raise self.error(where, f"Invalid parameter '{k}'")
            flags = {k: self.bool_opt(opts, k, where) for k in ("vhost", "vnet_hdr")}
            if name is None:
                raise self.error(where, "Parameter 'id' is missing")
            with r.into("net_client_init1"):
                r(f'qemu_find_netdev("{name}")', "NULL, or QEMU stops with \"Duplicate ID\"")
                if self.find_netdev(name):
                    raise self.error(where, f"Duplicate ID '{name}'")
                r(f'net_client_init_fun[NET_CLIENT_DRIVER_TAP](netdev, "{name}", peer=NULL)',
                  "= net_init_tap; a -netdev (or -nic) is never put on a hub: peer stays NULL")
                with r.into("net_init_tap"):
                    self.net_init_tap(opts, name, where, **flags)
                r(f'qemu_find_netdev("{name}")->is_netdev = true')

    def bool_opt(self, opts: dict[str, str], key: str, where: str) -> bool | None:
        """qapi_bool_parse."""
        v = opts.get(key)
        if v is None:
            return None
        if v in ("on", "yes", "true", "y"):
            return True
        if v in ("off", "no", "false", "n"):
            return False
        raise self.error(where, f"Parameter '{key}' expects 'on' or 'off'")

    def net_init_tap(self, opts: dict[str, str], name: str, where: str,
                     vhost: bool | None, vnet_hdr: bool | None) -> None:
        r = self.rec
        script = opts.get("script", f"{self.sysconfdir}/qemu-ifup")
        downscript = opts.get("downscript", f"{self.sysconfdir}/qemu-ifdown")
        given = opts.get("ifname", "")
        asked = given[:IFNAMSIZ - 1]  # pstrcpy(ifr.ifr_name, IFNAMSIZ, ifname)
        want_hdr, required = (True, False) if vnet_hdr is None else (vnet_hdr, vnet_hdr)
        r(f'net_tap_init(tap, &vnet_hdr, "{script}", ifname="{given}", mq_required=0)',
          "no fd=, fds= or helper=: QEMU makes the tap itself, one queue")
        with r.into("net_tap_init"):
            r(f"tap_open(ifname, &vnet_hdr={int(want_hdr)}, vnet_hdr_required={int(required)}, "
              "mq_required=0)", "no vnet_hdr= given: wanted, not required" if vnet_hdr is None
              else f"vnet_hdr={'on' if vnet_hdr else 'off'}")
            with r.into("tap_open"):
                r('open("/dev/net/tun", O_RDWR)', "the tun/tap clone device")
                r("TUNGETFEATURES", f"Linux answers {LINUX_TUN_FEATURES:#x}: IFF_ONE_QUEUE and "
                  "IFF_VNET_HDR are among them", "tun", TUNGETFEATURES)
                flags, names = IFF_TAP | IFF_NO_PI | IFF_ONE_QUEUE, "IFF_TAP|IFF_NO_PI|IFF_ONE_QUEUE"
                if want_hdr:
                    flags, names = flags | IFF_VNET_HDR, names + "|IFF_VNET_HDR"
                    r("TUNSETVNETHDRSZ", f"len = sizeof(struct virtio_net_hdr) = "
                      f"{VIRTIO_NET_HDR_LEN}", "tun", TUNSETVNETHDRSZ)
                ifname = asked or f"tap{next(i for i in range(1 << 16) if f'tap{i}' not in self.ifnames)}"
                if ifname in self.ifnames:
                    raise self.error(where, f"could not configure /dev/net/tun ({ifname}): "
                                     "Device or resource busy")
                self.ifnames.append(ifname)
                r("TUNSETIFF", f'ifr_name "{asked or "tap%d"}", ifr_flags {names} = {flags:#x} '
                  f"(IFF_ONE_QUEUE has no effect): the kernel makes {ifname}; needs "
                  "CAP_NET_ADMIN", "tun", TUNSETIFF)
            if script and script != "no":
                r(f'launch_script("{script}", "{ifname}", fd) → fork(); execv("{script}", '
                  f'["{script}", "{ifname}"]); waitpid()', f"typically brings {ifname} up and "
                  "adds it to a bridge; a non-zero exit status fails the netdev")
        info_str = f"ifname={ifname},script={script},downscript={downscript}"
        r(f'net_init_tap_one(tap, NULL, "tap", "{name}", "{ifname}", "{script}", '
          f'"{downscript}", vhostfdname=NULL, vnet_hdr={int(want_hdr)}, fd)')
        with r.into("net_init_tap_one"):
            r(f'net_tap_fd_init(NULL, "tap", "{name}", fd, vnet_hdr={int(want_hdr)})')
            with r.into("net_tap_fd_init"):
                r(f'qemu_new_net_client(&net_tap_info, peer=NULL, "tap", "{name}")',
                  "g_malloc0(sizeof(TAPState)): its first member is the NetClientState")
                with r.into("qemu_new_net_client"):
                    chain = r.chain("qemu_net_client_setup")
                    r(f'qemu_net_client_setup(nc, &net_tap_info, NULL, "tap", "{name}", '
                      "qemu_net_client_destructor, true)", f'nc->name = "{name}"; peer is NULL, '
                      "so nc->peer stays NULL; QTAILQ_INSERT_TAIL(&net_clients, nc)")
                self.clients.append(NetClient(
                    name, "tap", "tap", TAP_INFO, TAP_RECEIVE, TAP_RECEIVE_IOV, info_str, None,
                    where, chain, is_netdev=True, ifname=ifname, vhost=bool(vhost),
                    vnet_hdr=want_hdr))
                r("TUNSETOFFLOAD", "tap_probe_has_ufo (CSUM|UFO), tap_probe_has_uso (CSUM|USO4|USO6, "
                  "EINVAL before Linux 6.2), tap_set_offload(0, …): no offloads until the guest's "
                  "driver asks", "tun", TUNSETOFFLOAD)
                if want_hdr:
                    r("TUNSETVNETHDRSZ", f"tap_fd_set_vnet_hdr_len: {VIRTIO_NET_HDR_LEN}, in case "
                      "another QEMU changed it", "tun", TUNSETVNETHDRSZ)
                r("tap_read_poll(s, true) → qemu_set_fd_handler(fd, tap_send, NULL, s)",
                  f"the main loop polls {ifname}: a frame from the host enters at tap_send")
            r("TUNSETSNDBUF", "tap_set_sndbuf: INT_MAX (no sndbuf=)", "tun", TUNSETSNDBUF)
            r(f'qemu_set_info_str(&s->nc, "{info_str}")', "what info network prints for it")
            if vhost:
                r('open("/dev/vhost-net", O_RDWR)', "vhost=on: the in-kernel virtio-net data path")
                r("vhost_net_init(&options)", "backend_type VHOST_BACKEND_TYPE_KERNEL, "
                  "net_backend = this tap, nvqs = 2")
                with r.into("vhost_net_init"):
                    r("vhost_dev_init(&net->dev, vhostfd, VHOST_BACKEND_TYPE_KERNEL, 0)")
                    with r.into("vhost_dev_init"):
                        r("VHOST_SET_OWNER", "vhost_kernel_set_owner: the vhost worker thread, "
                          "QEMU's mm", "vhost-net", VHOST_SET_OWNER)
                        r("VHOST_GET_FEATURES", "the virtio features the kernel data path offers",
                          "vhost-net", VHOST_GET_FEATURES)

    # -- NICs: set_netdev, then realize → qemu_new_nic → qemu_net_client_setup -----------------
    def set_netdev(self, nic: NicModel, netdev: str, where: str) -> tuple[str, ...]:
        r = self.rec
        with r.into("set_netdev"):
            lookup = r.chain("qemu_find_net_clients_except")
            r(f'qemu_find_net_clients_except("{netdev}", peers, NET_CLIENT_DRIVER_NIC, '
              "MAX_QUEUE_NUM)", "every client with that name that is not a NIC: one queue")
            found = self.find_netdev(netdev)
            if found is None:  # -ENOENT → error_set_from_qdev_prop_error
                raise self.error(where, f"Property '{nic.prop_owner}.netdev' can't find value "
                                 f"'{netdev}'")
            if found.peer is not None:  # -EEXIST
                raise self.error(where, f"Property '{nic.prop_owner}.netdev' can't take value "
                                 f"'{netdev}', it's in use")
            r(f"ncs[0] = {netdev}; ncs[0]->queue_index = 0; peers_ptr->queues = 1",
              "only stored in the NIC's NICConf: the pairing waits for realize")
        return lookup

    def realize(self, nic: NicModel, dev_id: str | None, bus: str, netdev: str | None,
                mac: str | None, option: str, lookup: tuple[str, ...]) -> None:
        r = self.rec
        r(f"qdev_realize(dev, {bus})")
        with r.into("qdev_realize"), self.set_realized():
            if nic.type == "virtio-net-pci":
                r("dc->realize(dev) = virtio_pci_dc_realize")
                with r.into("virtio_pci_dc_realize"):
                    r("vpciklass->parent_dc_realize(qdev) = pci_qdev_realize")
                    with r.into("pci_qdev_realize"):
                        r("pc->realize(pci_dev) = virtio_pci_realize")
                        with r.into("virtio_pci_realize"):
                            r("k->realize(proxy) = virtio_net_pci_realize")
                            with r.into("virtio_net_pci_realize"):
                                r(f"virtio_net_set_netclient_name(&dev->vdev, "
                                  f"{_c(dev_id)}, \"virtio-net-pci\")", "so the NIC is named "
                                  "after the PCI device, not after virtio-net-device")
                                r("qdev_realize(vdev, BUS(&vpci_dev->bus))",
                                  "the virtio-backend child, a virtio-net-device")
                                with r.into("qdev_realize"), self.set_realized():
                                    r("dc->realize(dev) = virtio_device_realize")
                                    with r.into("virtio_device_realize"):
                                        r("vdc->realize(dev) = virtio_net_device_realize")
                                        with r.into("virtio_net_device_realize"):
                                            r("virtio_init(vdev, VIRTIO_ID_NET, n->config_size)")
                                            self.new_nic(nic, dev_id, netdev, mac, option, lookup,
                                                         "&n->nic_conf")
            else:
                r("dc->realize(dev) = pci_qdev_realize")
                with r.into("pci_qdev_realize"):
                    r("pc->realize(pci_dev) = pci_e1000_realize")
                    with r.into("pci_e1000_realize"):
                        r("pci_register_bar(pci_dev, 0, MEMORY, &d->mmio); pci_register_bar("
                          "pci_dev, 1, IO, &d->io)", "the registers the guest's driver programs")
                        self.new_nic(nic, dev_id, netdev, mac, option, lookup, "&d->conf")

    @contextmanager
    def set_realized(self):
        """qdev_realize → the QOM "realized" property → device_set_realized (hw/core/qdev.c)."""
        self.rec('object_property_set_bool(dev, "realized", true) → device_set_realized')
        with self.rec.into("device_set_realized"):
            yield

    def new_nic(self, nic: NicModel, dev_id: str | None, netdev: str | None, mac: str | None,
                option: str, lookup: tuple[str, ...], conf: str) -> None:
        r = self.rec
        mac = self.mac_default_if_unset(mac)
        r(f"qemu_macaddr_default_if_unset({conf}.macaddr)", f"→ {mac}")
        name = dev_id or f"{nic.type}.{sum(c.model == nic.type for c in self.clients)}"
        r(f'qemu_new_nic(&{nic.info}, {conf}, "{nic.type}", {_c(dev_id)}, …)', "one queue")
        with r.into("qemu_new_nic"):
            chain = r.chain("qemu_net_client_setup")
            pair = (f"nc->peer = {netdev}; {netdev}->peer = nc" if netdev
                    else "no netdev=: peers[0] is NULL, the NIC stays unpaired")
            r(f'qemu_net_client_setup(&nic->ncs[0], &{nic.info}, peers[0] = {netdev or "NULL"}, '
              f'"{nic.type}", {_c(dev_id)}, NULL, true)',
              (f'assign_name → "{name}"; ' if not dev_id else "") + pair)
        info_str = f"model={nic.type},macaddr={mac}"
        r("qemu_format_nic_info_str(qemu_get_queue(nic), macaddr)", f'"{info_str}"')
        self.clients.append(NetClient(name, nic.type, "nic", nic.info, nic.receive,
                                      nic.receive_iov, info_str, netdev, option, chain,
                                      peer_lookup=lookup, macaddr=mac))
        if netdev:
            self.set_peer(netdev, name)

    def property_set(self, nic: NicModel, netdev: str, where: str) -> tuple[str, ...]:
        """object_property_set(dev, "netdev") → … → set_netdev; returns the lookup's chain."""
        r = self.rec
        with r.into("object_property_set"):
            if nic.prop_owner == nic.type:
                return self.field_prop_set(nic, netdev, where)
            r("prop->set = property_set_alias", f"virtio_instance_init_common aliased every "
              f"{nic.prop_owner} property onto {nic.type}")
            with r.into("property_set_alias"):
                r('object_property_set(prop->target_obj, "netdev", alias_v)',
                  f'the child "virtio-backend", a {nic.prop_owner}')
                with r.into("object_property_set"):
                    return self.field_prop_set(nic, netdev, where)

    def field_prop_set(self, nic: NicModel, netdev: str, where: str) -> tuple[str, ...]:
        r = self.rec
        r("prop->set = field_prop_set")
        with r.into("field_prop_set"):
            r("prop->info->set = set_netdev", f"qdev_prop_netdev, on the {nic.prop_owner}")
            return self.set_netdev(nic, netdev, where)


    # -- the -nic options: net_param_nic now, pc_nic_init on the board -------------------------
    def net_param_nic(self, o: dict[str, str], where: str) -> _Nd:
        r = self.rec
        model = o.pop("model", None)
        model = "virtio-net-pci" if model == "virtio" else model
        mac = o.pop("mac", None)
        if mac is not None and not _MAC.match(mac):
            raise self.error(where, "invalid syntax for ethernet address")
        nd_id = o.get("id")
        if nd_id is None:  # util/id.c id_generate: '#', "net", id_counters[ID_NET]++, 2 digits
            nd_id = f"#net{self.generated}{NETDEV_ID_RANDOM}"
            self.generated += 1
        mac = self.mac_default_if_unset(mac)
        r(f"nd_table[{self.nb_nics}]: model {_c(model)}, id "
          f'{"" if o.get("id") else "id_generate(ID_NET) → "}"{nd_id}", '
          f"qemu_macaddr_default_if_unset → {mac}",
          "" if o.get("id") else f"{NETDEV_ID_RANDOM}: two random digits, 00-99")
        r("net_client_init(opts, is_netdev=true)", where)
        self.net_client_init({"type": o.get("type", "user"), **o}, nd_id, where)
        r(f'ni->netdev = qemu_find_netdev("{nd_id}"); ni->used = true; nb_nics++')
        self.nb_nics += 1
        return _Nd(model, mac, nd_id, where)

    def create_nic_bus_device(self, nd: _Nd, default_nic: str, bus: str) -> None:
        r = self.rec
        model = nd.model or default_nic
        nic = NIC_MODELS.get(model)
        if nic is None:
            raise self.error(nd.option, f"NIC model {model!r} is not modelled (only "
                             f"{', '.join(NIC_MODELS)})")
        r(f'qdev_new("{model}")', "nd->model" if nd.model else "no model=: the board's default")
        r("qdev_set_nic_properties(dev, nd)", f"mac={nd.mac}, netdev={nd.netdev}; "
          "nd->instantiated = 1")
        with r.into("qdev_set_nic_properties"):
            r(f'qdev_prop_set_netdev(dev, "netdev", {nd.netdev})')
            with r.into("qdev_prop_set_netdev"):
                r(f'object_property_set_str(dev, "netdev", "{nd.netdev}", &error_abort)')
                with r.into("object_property_set_str"):
                    r('object_property_set(obj, "netdev", v)')
                    lookup = self.property_set(nic, nd.netdev, nd.option)
        r(f"qdev_realize_and_unref(dev, {bus}, &error_fatal)")
        with r.into("qdev_realize_and_unref"):
            self.realize(nic, None, bus, nd.netdev, nd.mac, nd.option, lookup)

    # -- a -device NIC: system/qdev-monitor.c ------------------------------------------------
    def qdev_device_add(self, o: dict[str, str], where: str, bus: str) -> None:
        r = self.rec
        nic = NIC_MODELS[o["driver"]]
        for k in o:
            if k not in ("driver", "id", "netdev", "mac", "bus"):
                raise self.error(where, f"-device {nic.type} option {k}= is not modelled")
        if "mac" in o and not _MAC.match(o["mac"]):
            raise self.error(where, f"Property '{nic.prop_owner}.mac' doesn't take value "
                             f"'{o['mac']}'")
        r("qdev_device_add(opts, errp)", where)
        with r.into("qdev_device_add"):
            r("qdev_device_add_from_qdict(qdict, from_json=false)")
            with r.into("qdev_device_add_from_qdict"):
                r(f'qdev_new("{nic.type}")', "instance_init " + (
                    "virtio_net_pci_instance_init → virtio_instance_init_common: a child "
                    '"virtio-backend", a virtio-net-device' if nic.prop_owner != nic.type
                    else "e1000_instance_init"))
                netdev, lookup = o.get("netdev"), ()
                if netdev is not None:
                    r("object_set_properties_from_keyval(&dev->parent_obj, dev->opts, false)",
                      f"netdev={netdev}")
                    with r.into("object_set_properties_from_keyval"):
                        r("object_set_properties_from_qdict(obj, qdict, v)")
                        with r.into("object_set_properties_from_qdict"):
                            r('object_property_set(obj, "netdev", v)')
                            lookup = self.property_set(nic, netdev, where)
                self.realize(nic, o.get("id"), o.get("bus", bus), netdev, o.get("mac"), where,
                             lookup)


def _c(s: str | None) -> str:
    """A C string argument: "x" or NULL."""
    return f'"{s}"' if s is not None else "NULL"


def net_plan(args: list[tuple[str, str]], *, prog: str = "qemu-system-x86_64",
             machine: str = "pc", nodefaults: bool = False, sysconfdir: str = "/etc") -> NetPlan:
    """The net clients of ``args`` — ``(option, value)`` for each -netdev/-nic/-net/-device, in
    command-line order. ``sysconfdir`` is the build's CONFIG_SYSCONFDIR (/etc for distribution
    packages, /usr/local/etc for a default source build): where the ifup/ifdown scripts are."""
    b = _Build(prog, sysconfdir)
    r = b.rec
    board_fn, default_nic, bus = BOARDS["q35" if "q35" in machine else "pc"]
    netdevs, nics, devices, seen = [], [], [], {"netdev": set(), "nic": set(), "device": set()}
    for opt, val in args:  # qemu_init's option loop fills one QemuOptsList per option
        where = f"{opt} {val}"
        if opt == "-net":
            raise b.error(where, "-net (the legacy hub syntax) is not modelled; use -netdev or -nic")
        o = _parse(val, "driver" if opt == "-device" else "type")
        oid = o.get("id")
        if oid is not None:  # util/qemu-option.c qemu_opts_create
            if not _id_wellformed(oid):
                raise b.error(where, "Parameter 'id' expects an identifier")
            if oid in seen[opt[1:]]:
                raise b.error(where, f"Duplicate ID '{oid}' for {opt[1:]}")
            seen[opt[1:]].add(oid)
        {"-netdev": netdevs, "-nic": nics, "-device": devices}[opt].append((where, o))
    default_net = not (netdevs or nics) and not nodefaults  # vl.c: -netdev/-nic/-net clear it

    # system/vl.c qemu_init → qemu_create_late_backends → net/net.c net_init_clients
    nds: list[_Nd] = []
    if netdevs or nics:
        with r.into("qemu_init"):
            r("qemu_create_late_backends()", "after configure_accelerators: /dev/kvm and the VM "
              "exist before the first tap")
            with r.into("qemu_create_late_backends"):
                r("net_init_clients()")
                with r.into("net_init_clients"):
                    if netdevs:
                        r("qemu_opts_foreach(netdev, net_init_netdev)", "every -netdev, in "
                          "order; then every -nic (net_param_nic), then -net")
                    for where, o in netdevs:
                        with r.into("net_init_netdev"):
                            r("net_client_init(opts, is_netdev=true)", where)
                            b.net_client_init(o, o.get("id"), where)
                    if nics:
                        r("qemu_opts_foreach(nic, net_param_nic)", "every -nic: its back-end "
                          "now, its NIC when the board is built")
                    for where, o in nics:
                        if o.get("type") != "none":
                            with r.into("net_param_nic"):
                                nds.append(b.net_param_nic(o, where))
    backends = r.take()

    # hw/i386/pc_piix.c pc_init1 (pc_q35.c pc_q35_init) → hw/i386/pc.c pc_nic_init
    if nds:
        with r.into(board_fn):
            r("pc_nic_init(pcmc, isa_bus, pcms->pcibus)", "after pc_basic_device_init: the "
              "NICs of nd_table, i.e. of the -nic options")
            with r.into("pc_nic_init"):
                r(f'pci_init_nic_devices(pci_bus, mc->default_nic = "{default_nic}")')
                with r.into("pci_init_nic_devices"):
                    r(f'qemu_create_nic_bus_devices(&bus->qbus, TYPE_PCI_DEVICE, "{default_nic}", '
                      '"virtio", "virtio-net-pci")', 'model "virtio" means virtio-net-pci')
                    with r.into("qemu_create_nic_bus_devices"):
                        for nd in nds:
                            b.create_nic_bus_device(nd, default_nic, bus)
    board = r.take()

    # system/vl.c qmp_x_exit_preconfig → qemu_create_cli_devices → system/qdev-monitor.c
    nic_devices = []
    for where, o in devices:
        driver = o.get("driver")
        if driver in OTHER_NICS or (driver not in NIC_MODELS and "netdev" in o):
            raise b.error(where, f"the NIC {driver!r} is not modelled (only "
                          f"{', '.join(NIC_MODELS)})")
        if driver in NIC_MODELS:
            nic_devices.append((where, o))
    if nic_devices:
        with r.into("qmp_x_exit_preconfig"):
            r("qemu_create_cli_devices()", "after qemu_init_board: the vCPUs, RAM, the PIT and "
              "the -nic NICs exist")
            with r.into("qemu_create_cli_devices"):
                r("qemu_opts_foreach(device, device_init_func, NULL, &error_fatal)",
                  "every -device, in order")
                for where, o in nic_devices:
                    with r.into("device_init_func"):
                        b.qdev_device_add(o, where, bus)
    devices_steps = r.take()

    # system/vl.c qemu_machine_creation_done → net/net.c net_check_clients
    warnings: list[str] = []
    if not default_net:
        warnings = [f"{prog}: warning: {'nic' if c.type == 'nic' else 'netdev'} {c.name} has "
                    "no peer" for c in b.clients if c.peer is None]
        if b.clients:
            with r.into("qemu_machine_creation_done"):
                r("net_check_clients()", "; ".join(w.split("warning: ")[1] for w in warnings)
                  or "every client has its peer")
    return NetPlan(tuple(b.clients), backends, board, devices_steps, r.take(), tuple(warnings),
                   default_net)
