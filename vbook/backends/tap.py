"""A real tap device, in a network namespace the book makes and removes itself.

A tap is the host end of a guest's Ethernet: what QEMU writes to the fd
(``tap_write_packet``) the host stack receives as a frame from the wire, and
what the stack sends out of the interface QEMU reads (``tap_send``). Here the
book is the guest: :meth:`Tap.send` a frame built with
:mod:`vbook.models.net_frames`, :meth:`Tap.recv` what the real kernel answered.
The sequence, in the namespace (:mod:`vbook.backends.netns`) ::

    sysctl net.ipv6.conf.default.accept_dad=0      answer at once (no 1-2 s tentative DAD)
    sysctl net.ipv6.conf.default.addr_gen_mode=1   no EUI-64 fe80:: of its own: only ours
    sysctl net.ipv4.ip_forward=0                   route nothing
    open("/dev/net/tun")                           the tun/tap character device
    TUNSETIFF {"vbtap0", IFF_TAP|IFF_NO_PI[|IFF_VNET_HDR]}   makes the tap, binds the fd
    TUNSETVNETHDRSZ 10 | 12                        with a vnet header: its size
    TUNSETOFFLOAD  TUN_F_CSUM …                    (optional) what the reader can take
    SIOCSIFHWADDR  02:76:62:00:00:01               the host side's MAC (fixed: outputs stay alike)
    SIOCSIFADDR    169.254.86.1, SIOCSIFNETMASK /16     IPv4 link-local (AF_INET socket)
    SIOCSIFADDR    in6_ifreq fe80::1/64            IPv6 link-local (AF_INET6 socket)
    SIOCSIFFLAGS   lo up, vbtap0 up
    wait until /proc/net/if_inet6 shows fe80::1 not tentative   (milliseconds)

Only the standard library talks to the kernel (``os``, ``fcntl.ioctl``,
``struct``, ``ctypes`` for unshare/setns); no ``ip`` command is run, so
iproute2 need not be installed. A sysctl that cannot be written (a container
with a read-only /proc/sys) is listed in :attr:`Tap.sysctl_failed`, not fatal:
then DAD runs and :meth:`Tap.open` waits it out. The tap's fd is non-blocking
and every :meth:`Tap.recv` waits at most its ``timeout`` (``select``). Without
root and without a user namespace, or without ``/dev/net/tun``,
:meth:`Tap.open` raises :class:`~vbook.errors.BackendUnavailable` with the
reason; :func:`vbook.backends.loopback_net.open_net` then falls back to a
Python peer that answers the same frames. :class:`Bridge` puts taps on a
Linux bridge instead (the host as a switch).

Measured on this machine (machine.md "Network and eventfds"; tests/test_tap.py):
the kernel answers an NS with an NA (86 bytes with a target link-layer option
when the NS was multicast, 78 without), an echo with a reply, an ARP request
with a 42-byte reply. A vnet header with ``VIRTIO_NET_HDR_F_NEEDS_CSUM`` makes
it trust the frame whatever its checksum field holds (``CHECKSUM_PARTIAL``;
``DATA_VALID`` is not trusted: dropped and counted); through a bridge to a port
without offload it fills that checksum in (``skb_checksum_help``), to a port
with ``TUN_F_CSUM`` it leaves it partial. The vnet headers it writes on
frames to the reader are zero.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import select
import socket
import struct
import time
from enum import IntEnum, IntFlag
from typing import Any

from vbook.backends import netns
from vbook.errors import BackendUnavailable, VbookError
from vbook.models import net_frames as nf

#: the device node; ``$VBOOK_TUN_DEV`` overrides it (``/nonexistent`` shows a machine without)
TUN_DEV = "/dev/net/tun"
DEFAULT_NAME = "vbtap0"
#: how long making the namespace and the tap may take before it is an error (seconds)
OPEN_TIMEOUT = 10.0


def tun_dev() -> str:
    return os.environ.get("VBOOK_TUN_DEV") or TUN_DEV


class TunIoctl(IntEnum):
    """``TUN*`` ioctl request numbers — include/uapi/linux/if_tun.h (uapi 6.1), ``'T'`` group."""

    SETIFF = 0x400454CA          #: _IOW('T', 202, int): make/attach the interface
    SETPERSIST = 0x400454CB      #: _IOW('T', 203, int)
    SETOWNER = 0x400454CC        #: _IOW('T', 204, int)
    GETFEATURES = 0x800454CF     #: _IOR('T', 207, unsigned int): the IFF_* flags supported
    SETOFFLOAD = 0x400454D0      #: _IOW('T', 208, unsigned int): TUN_F_* the reader takes
    GETIFF = 0x800454D2          #: _IOR('T', 210, unsigned int)
    GETVNETHDRSZ = 0x800454D7    #: _IOR('T', 215, int)
    SETVNETHDRSZ = 0x400454D8    #: _IOW('T', 216, int): 10 or 12 (EINVAL below 10)


class TunFlag(IntFlag):
    """``IFF_*`` flags of ``TUNSETIFF`` — linux/if_tun.h (uapi 6.1)."""

    TUN = 0x0001
    TAP = 0x0002
    NO_PI = 0x1000        #: no 4-byte struct tun_pi before each frame
    VNET_HDR = 0x4000     #: a struct virtio_net_hdr before each frame
    MULTI_QUEUE = 0x0100


class TunOffload(IntFlag):
    """``TUN_F_*`` of ``TUNSETOFFLOAD`` — linux/if_tun.h (uapi 6.1)."""

    CSUM = 0x01
    TSO4 = 0x02
    TSO6 = 0x04
    TSO_ECN = 0x08
    UFO = 0x10


class SockIoctl(IntEnum):
    """``SIOC*`` interface ioctls — include/uapi/linux/sockios.h (uapi 6.1)."""

    GIFFLAGS = 0x8913
    SIFFLAGS = 0x8914
    SIFADDR = 0x8916
    SIFNETMASK = 0x891C
    SIFHWADDR = 0x8924
    GIFINDEX = 0x8933
    BRADDBR = 0x89A0     #: make a bridge (the argument: its name)
    BRDELBR = 0x89A1
    BRADDIF = 0x89A2     #: add a port (ifreq: bridge name, port ifindex)


IFF_UP = 0x1              #: linux/if.h net_device_flags
IFF_RUNNING = 0x40
IFNAMSIZ = 16             #: linux/if.h
SIZEOF_IFREQ = 40         #: struct ifreq on x86-64 (16-byte name + 24-byte union)
SIZEOF_IN6_IFREQ = 24     #: struct in6_ifreq (linux/ipv6.h): in6_addr, u32 prefixlen, int ifindex
ARPHRD_ETHER = nf.ARPHRD_ETHER

#: the sysctls set inside the namespace before the tap exists (so it inherits them)
SYSCTLS = {
    "net/ipv6/conf/default/accept_dad": "0",
    "net/ipv6/conf/default/addr_gen_mode": "1",
    "net/ipv4/ip_forward": "0",
}
#: if_inet6 flag of an address still doing duplicate address detection (IFA_F_TENTATIVE)
_IFA_F_TENTATIVE = 0x40


class TapError(VbookError):
    """An operation on an open tap failed (a write the kernel refused, a closed tap …)."""

    def __init__(self, what: str, err: int = 0, detail: str = ""):
        self.what, self.errno = what, err
        super().__init__(f"{what}{f': errno {err} ({os.strerror(err)})' if err else ''}"
                         f"{f' — {detail}' if detail else ''}")


def _ifreq(name: str, fmt: str = "", *vals: Any) -> bytes:
    data = struct.pack(f"{IFNAMSIZ}s{fmt}", name.encode(), *vals)
    return data.ljust(SIZEOF_IFREQ, b"\0")


def _sockaddr_in(addr: str) -> bytes:
    return struct.pack("HH4s8x", socket.AF_INET, 0, nf.ip4(addr).packed)


# --- set-up, run inside the namespace (a thread there, or the helper child) ----------------------


def _sysctls(ipv6: bool) -> list[str]:
    """Set :data:`SYSCTLS` in the namespace; returns those that could not be set (a container
    whose /proc/sys is read-only: then DAD runs, 1-2 s, and the tap has an EUI-64 address too)."""
    failed = []
    for key, value in SYSCTLS.items():
        path = f"/proc/sys/{key}"
        if key.startswith("net/ipv6/") and not ipv6:
            continue
        try:
            with open(path, "w") as f:
                f.write(value)
        except FileNotFoundError:
            if key.startswith("net/ipv6/"):
                raise BackendUnavailable("tap", f"{path} is missing: this kernel has no IPv6 "
                                                "(open the tap with ipv6=None)") from None
            failed.append(f"{key}: missing")
        except OSError as e:  # EROFS, EACCES
            failed.append(f"{key}: {e.strerror}")
    return failed


def _open_tun(dev: str) -> int:
    try:
        return os.open(dev, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BackendUnavailable("tap", f"{dev} does not exist (no tun driver, CONFIG_TUN, or a "
                                        "container without the device — e.g. mybinder.org)") from None
    except PermissionError:
        raise BackendUnavailable("tap", f"permission denied on {dev}") from None


def _make_tap(fd: int, s4: socket.socket, name: str, vnet_hdr: bool, hdr_size: int, offload: int,
              mac: str, dev: str = TUN_DEV) -> tuple[str, int, int]:
    """TUNSETIFF (+ TUNSETVNETHDRSZ, TUNSETOFFLOAD), SIOCSIFHWADDR on the tun fd ``fd``:
    (interface name, ifindex, TUNGETFEATURES)."""
    try:
        (features,) = struct.unpack("I", fcntl.ioctl(fd, TunIoctl.GETFEATURES, bytes(4)))
    except OSError as e:
        raise BackendUnavailable("tap", f"{dev} is not a tun device: TUNGETFEATURES "
                                        f"failed ({e.strerror})") from None
    flags = TunFlag.TAP | TunFlag.NO_PI | (TunFlag.VNET_HDR if vnet_hdr else 0)
    try:
        out = fcntl.ioctl(fd, TunIoctl.SETIFF, _ifreq(name, "H", int(flags)))
    except OSError as e:
        if e.errno == errno.EPERM:
            raise BackendUnavailable("tap", "TUNSETIFF: EPERM (making a tap needs "
                                            "CAP_NET_ADMIN)") from None
        raise
    real = out[:IFNAMSIZ].rstrip(b"\0").decode()
    if vnet_hdr:
        fcntl.ioctl(fd, TunIoctl.SETVNETHDRSZ, struct.pack("i", hdr_size))
    if offload:
        fcntl.ioctl(fd, TunIoctl.SETOFFLOAD, int(offload))
    fcntl.ioctl(s4, SockIoctl.SIFHWADDR, _ifreq(real, "H6s", ARPHRD_ETHER, nf.mac_bytes(mac)))
    ifindex = struct.unpack_from("i", fcntl.ioctl(s4, SockIoctl.GIFINDEX, _ifreq(real)), IFNAMSIZ)[0]
    return real, ifindex, features


def _up(s4: socket.socket, ifname: str) -> None:
    (cur,) = struct.unpack_from("H", fcntl.ioctl(s4, SockIoctl.GIFFLAGS, _ifreq(ifname)), IFNAMSIZ)
    fcntl.ioctl(s4, SockIoctl.SIFFLAGS, _ifreq(ifname, "H", cur | IFF_UP))


def _setup(dev: str, name: str, vnet_hdr: bool, hdr_size: int, offload: int, mac: str,
           ipv6: str | None, ipv6_prefix: int, ipv4: str | None, ipv4_prefix: int,
           settle: float) -> netns.SetupResult:
    """The module docstring's sequence. Returns ({"name", "ifindex", "features",
    "sysctl_failed"}, [tap fd])."""
    failed = _sysctls(ipv6 is not None)
    fd = _open_tun(dev)
    socks: list[socket.socket] = []
    try:
        s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        socks.append(s4)
        real_name, ifindex, features = _make_tap(fd, s4, name, vnet_hdr, hdr_size, offload, mac,
                                                  dev)
        if ipv4 is not None:
            mask = (0xFFFFFFFF << (32 - ipv4_prefix)) & 0xFFFFFFFF
            fcntl.ioctl(s4, SockIoctl.SIFADDR, _ifreq(real_name, "16s", _sockaddr_in(ipv4)))
            fcntl.ioctl(s4, SockIoctl.SIFNETMASK,
                        _ifreq(real_name, "16s", _sockaddr_in(str(nf.ip4(mask)))))
        if ipv6 is not None:
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            socks.append(s6)
            fcntl.ioctl(s6, SockIoctl.SIFADDR,
                        struct.pack("16sIi", nf.ip6(ipv6).packed, ipv6_prefix, ifindex))
        for ifname in ("lo", real_name):
            _up(s4, ifname)
        if ipv6 is not None:
            _wait_not_tentative(real_name, nf.ip6(ipv6), settle)
    except BaseException:
        os.close(fd)
        raise
    finally:
        for s in socks:
            s.close()
    return {"name": real_name, "ifindex": ifindex, "features": features,
            "sysctl_failed": failed}, [fd]


def _setup_bridge(dev: str, bridge: str, ports: list[dict[str, Any]]) -> netns.SetupResult:
    """Taps with no address of their own, all ports of one bridge (``SIOCBRADDBR``,
    ``SIOCBRADDIF``): ({"bridge", "ports": [{"name", "ifindex", "features"}…]}, [fds])."""
    _sysctls(True)
    fds: list[int] = []
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(s4, SockIoctl.BRADDBR, bridge.encode() + b"\0")
        infos = []
        for i, p in enumerate(ports):
            fds.append(_open_tun(dev))
            real, ifindex, features = _make_tap(
                fds[-1], s4, f"vbport{i}", p.get("vnet_hdr", False), p.get("hdr_size", nf.HDR_SIZE),
                p.get("offload", 0), p.get("mac", f"02:76:62:00:01:{i + 1:02x}"), dev)
            fcntl.ioctl(s4, SockIoctl.BRADDIF, _ifreq(bridge, "i", ifindex))
            infos.append({"name": real, "ifindex": ifindex, "features": features})
        for ifname in ("lo", bridge, *(i["name"] for i in infos)):
            _up(s4, ifname)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        s4.close()
    return {"bridge": bridge, "ports": infos}, fds


def _wait_not_tentative(ifname: str, addr: Any, settle: float) -> None:
    """Wait until ``addr`` is on ``ifname`` and no longer tentative (accept_dad=0 makes that
    a matter of the addrconf work queue: milliseconds), at most ``settle`` seconds."""
    want = addr.packed.hex()
    deadline = time.monotonic() + settle
    state = "absent"
    while True:
        with open("/proc/thread-self/net/if_inet6") as f:
            for line in f:
                hexaddr, _idx, _plen, _scope, flags, dev = line.split()
                if hexaddr == want and dev == ifname:
                    state = "tentative" if int(flags, 16) & _IFA_F_TENTATIVE else "ready"
        if state == "ready":
            return
        if time.monotonic() >= deadline:
            raise TapError(f"{addr} on {ifname} is still {state} after {settle:g} s")
        time.sleep(0.002)


# --- what Tap and LoopbackNet share -------------------------------------------------------------


class NetEndpoint:
    """The host end of the guest's link: :class:`Tap` (the real kernel) or
    :class:`~vbook.backends.loopback_net.LoopbackNet` (a Python peer). Frames go in with
    :meth:`send` and come back with :meth:`recv`; ``kind`` says which one this is."""

    kind = "?"
    vnet_hdr = False
    hdr_size = nf.HDR_SIZE
    why_not_tap: str | None = None  #: for a fallback: why the tap could not be used

    def __init__(self) -> None:
        #: frames :meth:`recv_answer` passed over, as (reason, frame); the last 256
        self.skipped: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=256)

    def send(self, frame: bytes, hdr: nf.VirtioNetHdr | None = None) -> int:
        raise NotImplementedError

    def recv_hdr(self, timeout: float = 1.0) -> tuple[nf.VirtioNetHdr | None, bytes] | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _pack(self, frame: bytes, hdr: nf.VirtioNetHdr | None) -> bytes:
        if self.vnet_hdr:
            return (hdr or nf.VirtioNetHdr()).pack(self.hdr_size) + bytes(frame)
        if hdr is not None:
            raise TapError("send", detail="a virtio_net_hdr was given but this end was opened "
                                          "without vnet_hdr=True")
        return bytes(frame)

    def _unpack(self, data: bytes) -> tuple[nf.VirtioNetHdr | None, bytes]:
        if not self.vnet_hdr:
            return None, data
        return nf.VirtioNetHdr.unpack(data, self.hdr_size), data[self.hdr_size:]

    def recv(self, timeout: float = 1.0) -> bytes | None:
        """The next frame (without its vnet header), or None when none came within ``timeout``."""
        got = self.recv_hdr(timeout)
        return None if got is None else got[1]

    def recv_answer(self, timeout: float = 1.0,
                    skip: Any = nf.kernel_chatter) -> bytes | None:
        """The next frame that is not the kernel talking on its own (``skip(frame)`` gives
        a reason for those: MLDv2 reports, DAD probes, router solicitations), waiting at
        most ``timeout`` in all. What was passed over is in :attr:`skipped`."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.0, deadline - time.monotonic()))
            if frame is None:
                return None
            try:
                why = skip(frame)
            except nf.FrameError as e:
                why = None if skip is None else f"unparsable: {e}"
            if not why:
                return frame
            self.skipped.append((why, frame))

    def exchange(self, frame: bytes, timeout: float = 1.0,
                 hdr: nf.VirtioNetHdr | None = None) -> bytes | None:
        """:meth:`send` ``frame``, then :meth:`recv_answer`."""
        self.send(frame, hdr)
        return self.recv_answer(timeout)

    def __enter__(self) -> NetEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the tap ------------------------------------------------------------------------------------


class Tap(NetEndpoint):
    """A tap device in a namespace of its own. Use :meth:`open` (a context manager)::

        with Tap.open() as tap:
            tap.send(net_frames.neighbour_solicitation())
            net_frames.describe(tap.recv_answer(timeout=1.0))
            # 'ICMPv6 neighbour advertisement fe80::1 → fe80::2 fe80::1 is-at 02:76:62:00:00:01 [S,O]'

    ``fd`` is the tap's fd (what QEMU's ``tap_send`` polls), ``name`` the interface
    ("vbtap0"), ``mac`` the host side's MAC, ``addresses`` its link-local addresses,
    ``netns`` the :class:`~vbook.backends.netns.NetNs` it lives in. :meth:`close`
    closes the fd and the namespace, which the kernel then removes with everything in it.
    """

    kind = "tap"

    def __init__(self, fd: int, ns: netns.NetNs, info: dict[str, Any], mac: str,
                 addresses: tuple[str, ...], vnet_hdr: bool, hdr_size: int, offload: int = 0,
                 owns_netns: bool = True):
        super().__init__()
        self.fd, self.netns, self._owns_netns = fd, ns, owns_netns
        self.name: str = info["name"]
        self.ifindex: int = info["ifindex"]
        self.features = TunFlag(info["features"])  #: TUNGETFEATURES: what this tun driver offers
        self.mac, self.addresses = mac, addresses
        self.vnet_hdr, self.hdr_size = vnet_hdr, hdr_size
        self.offload = TunOffload(offload)  #: TUNSETOFFLOAD: what this reader said it can take
        #: the :data:`SYSCTLS` that could not be set in the namespace (read-only /proc/sys)
        self.sysctl_failed: list[str] = list(info.get("sysctl_failed", []))
        self.sent = self.received = 0

    @classmethod
    def open(cls, vnet_hdr: bool = False, hdr_size: int = nf.HDR_SIZE, name: str = DEFAULT_NAME,
             mac: str = nf.HOST_MAC, ipv6: str | None = nf.HOST_IP6, ipv6_prefix: int = 64,
             ipv4: str | None = nf.HOST_IP4, ipv4_prefix: int = 16, offload: int = 0,
             timeout: float = OPEN_TIMEOUT, dev: str | None = None) -> Tap:
        """Make the namespace and the tap in it (see the module docstring).

        ``vnet_hdr`` adds ``IFF_VNET_HDR`` and ``TUNSETVNETHDRSZ(hdr_size)`` (10 or 12);
        ``offload`` (:class:`TunOffload`) is passed to ``TUNSETOFFLOAD``. Only link-local
        addresses are allowed (fe80::/10, 169.254.0.0/16), so nothing could be routed
        anywhere even if the namespace had a way out (it has none).
        """
        _check_args(vnet_hdr, hdr_size, name, mac, ipv6, ipv6_prefix, ipv4, ipv4_prefix)
        if offload and not vnet_hdr:
            raise VbookError("offload needs vnet_hdr=True (the kernel says where a checksum is "
                             "still to do in the vnet header)")
        dev = dev or tun_dev()
        if not os.path.exists(dev):
            cls.check_available(dev)  # raises with the reason
        kwargs = dict(dev=dev, name=name, vnet_hdr=vnet_hdr, hdr_size=hdr_size, offload=int(offload),
                      mac=mac, ipv6=ipv6, ipv6_prefix=ipv6_prefix, ipv4=ipv4,
                      ipv4_prefix=ipv4_prefix, settle=min(timeout, 3.0))
        ns, info, fds = netns.create(_setup, kwargs, timeout)
        addresses = tuple(a for a in (ipv6 and f"{nf.ip6(ipv6)}/{ipv6_prefix}",
                                      ipv4 and f"{nf.ip4(ipv4)}/{ipv4_prefix}") if a)
        try:
            os.set_blocking(fds[0], False)
            return cls(fds[0], ns, info, nf.mac_str(nf.mac_bytes(mac)), addresses, vnet_hdr, hdr_size,
                       offload)
        except BaseException:
            for fd in fds:
                os.close(fd)
            ns.close()
            raise

    @classmethod
    def check_available(cls, dev: str | None = None) -> None:
        """Raise :class:`~vbook.errors.BackendUnavailable` saying why no tap can be made here.
        (It does not make one: the last word is :meth:`open`'s.)"""
        dev = dev or tun_dev()
        if not os.path.exists(dev):
            raise BackendUnavailable("tap", (
                f"{dev} does not exist (no tun driver, or a container without the device — "
                "e.g. mybinder.org); the book answers with its loopback peer"))
        if not os.access(dev, os.R_OK | os.W_OK):
            raise BackendUnavailable("tap", f"permission denied on {dev} (mode "
                                            f"{os.stat(dev).st_mode & 0o777:o})")
        if os.geteuid() != 0:
            try:
                with open("/proc/sys/user/max_user_namespaces") as f:
                    n = int(f.read())
            except (OSError, ValueError):
                n = -1
            if n == 0:
                raise BackendUnavailable("tap", "not root, and user namespaces are off "
                                                "(user.max_user_namespaces = 0)")

    # --- frames ---------------------------------------------------------------------------

    def send(self, frame: bytes, hdr: nf.VirtioNetHdr | None = None) -> int:
        """Write one frame to the tap (what the guest's NIC sends). With ``vnet_hdr``,
        ``hdr`` (default: all zero) goes before it. Returns the bytes written."""
        return self.write_raw(self._pack(frame, hdr))

    def write_raw(self, data: bytes) -> int:
        """``write`` on the tap fd: ``data`` as the kernel takes it (with ``vnet_hdr``, a
        ``hdr_size``-byte vnet header and the frame — QEMU's ``tap_write_packet``)."""
        if self.fd < 0:
            raise TapError("send", detail="this tap is closed")
        try:
            n = os.write(self.fd, data)
        except OSError as e:
            raise TapError(f"write of {len(data)} bytes to {self.name}", e.errno or 0) from None
        self.sent += 1
        return n

    def recv_hdr(self, timeout: float = 1.0) -> tuple[nf.VirtioNetHdr | None, bytes] | None:
        """(vnet header or None, frame) of the next frame the kernel sent, or None after
        ``timeout`` seconds."""
        data = self.read_raw(timeout)
        return None if data is None else self._unpack(data)

    def read_raw(self, timeout: float = 1.0) -> bytes | None:
        """``read`` on the tap fd (QEMU's ``tap_read_packet``): the next frame as the kernel
        gives it (vnet header first with ``vnet_hdr``), or None after ``timeout`` seconds."""
        if self.fd < 0:
            raise TapError("recv", detail="this tap is closed")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if ready:
                try:
                    data = os.read(self.fd, 65536 + self.hdr_size)
                except BlockingIOError:
                    data = b""
                except OSError as e:
                    raise TapError(f"read from {self.name}", e.errno or 0) from None
                if data:
                    self.received += 1
                    return data
            if time.monotonic() >= deadline:
                return None

    def set_vnet_hdr_len(self, length: int) -> None:
        """``TUNSETVNETHDRSZ`` on the fd (QEMU's ``tap_fd_set_vnet_hdr_len``): the vnet header
        the kernel reads and writes is ``length`` bytes from now on (10 or 12)."""
        if not self.vnet_hdr:
            raise TapError("TUNSETVNETHDRSZ", detail="this tap was opened without vnet_hdr=True")
        try:
            fcntl.ioctl(self.fd, TunIoctl.SETVNETHDRSZ, struct.pack("i", length))
        except OSError as e:
            raise TapError(f"TUNSETVNETHDRSZ({length}) on {self.name}", e.errno or 0) from None
        self.hdr_size = length

    def drain(self, quiet: float = 0.05) -> list[bytes]:
        """Read and return every frame until none comes for ``quiet`` seconds."""
        out = []
        while (f := self.recv(quiet)) is not None:
            out.append(f)
        return out

    # --- looking inside -------------------------------------------------------------------

    def read_proc_net(self, name: str) -> str:
        """``/proc/net/<name>`` inside the tap's namespace (``snmp6``, ``snmp``, ``dev`` …)."""
        return self.netns.read_proc_net(name)

    def snmp(self) -> dict[str, int]:
        """The namespace's IP/ICMP counters: ``/proc/net/snmp6`` (``Icmp6InCsumErrors``,
        ``Icmp6OutEchoReplies`` …) and ``/proc/net/snmp`` (``IcmpInCsumErrors`` …)."""
        out: dict[str, int] = {}
        for line in self.read_proc_net("snmp6").splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                out[key] = int(value)
        lines = self.read_proc_net("snmp").splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=True):
            group, *keys = names.split()
            for k, v in zip(keys, values.split()[1:], strict=True):
                out[f"{group[:-1]}{k}"] = int(v)
        return out

    # --- teardown -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        """Close the tap fd (the kernel unregisters the tap) and the namespace fd; with no
        fd left on it the namespace is removed. Safe to call twice."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
        if self._owns_netns:
            self.netns.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.sent} sent, {self.received} received"
        hdr = f", vnet_hdr {self.hdr_size}" if self.vnet_hdr else ""
        return (f"Tap({self.name!r}, {self.mac}, {' '.join(self.addresses) or 'no address'}{hdr}, "
                f"{self.netns.mode} netns, {state})")


class Bridge:
    """Taps as ports of one Linux bridge, in a namespace of their own: the host as a switch
    (facts §13.4: a VM's tap and the NIC are ports of br0). What one port's fd writes
    comes out of the others' (flooded until the bridge learns where a MAC is), and
    the kernel does on the way what a real host does: a ``NEEDS_CSUM`` frame leaving
    through a port that took no checksum offload gets its checksum filled
    (``skb_checksum_help``); through a port with ``TUN_F_CSUM`` it stays partial.

        with Bridge.open(dict(vnet_hdr=True), dict()) as br:
            a, b = br.ports
            a.send(partial_frame, hdr)            # checksum left to the host
            b.recv_answer(1.0) == full_frame      # True: the kernel filled it in

    Ports have no addresses; ``ports[i]`` is a :class:`Tap` (``vbport0`` …), each with
    the keys of :meth:`Tap.open` it was given (vnet_hdr, hdr_size, offload, mac).
    """

    def __init__(self, ns: netns.NetNs, name: str, ports: list[Tap]):
        self.netns, self.name, self.ports = ns, name, ports

    @classmethod
    def open(cls, *ports: dict[str, Any], name: str = "vbbr0", timeout: float = OPEN_TIMEOUT,
             dev: str | None = None) -> Bridge:
        specs = [dict(p) for p in (ports or ({}, {}))]
        for i, p in enumerate(specs):
            unknown = set(p) - {"vnet_hdr", "hdr_size", "offload", "mac"}
            if unknown:
                raise VbookError(f"port {i}: unknown keys {sorted(unknown)} (vnet_hdr, hdr_size, "
                                 "offload, mac)")
            p.setdefault("mac", f"02:76:62:00:01:{i + 1:02x}")
            _check_args(p.get("vnet_hdr", False), p.get("hdr_size", nf.HDR_SIZE), "vbport0",
                        p["mac"], None, 64, None, 16, need_address=False)
            if p.get("offload") and not p.get("vnet_hdr"):
                raise VbookError(f"port {i}: offload needs vnet_hdr=True")
        dev = dev or tun_dev()
        if not os.path.exists(dev):
            Tap.check_available(dev)
        ns, info, fds = netns.create(_setup_bridge, dict(dev=dev, bridge=name, ports=specs), timeout)
        taps = [Tap(fd, ns, pinfo, nf.mac_str(nf.mac_bytes(p["mac"])), (), p.get("vnet_hdr", False),
                    p.get("hdr_size", nf.HDR_SIZE), p.get("offload", 0), owns_netns=False)
                for fd, pinfo, p in zip(fds, info["ports"], specs, strict=True)]
        return cls(ns, info["bridge"], taps)

    def close(self) -> None:
        for t in self.ports:
            t.close()
        self.netns.close()

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Bridge({self.name!r}, ports {[t.name for t in self.ports]}, {self.netns!r})"


def _check_args(vnet_hdr: bool, hdr_size: int, name: str, mac: str, ipv6: str | None,
                ipv6_prefix: int, ipv4: str | None, ipv4_prefix: int, need_address: bool = True) -> None:
    if vnet_hdr and hdr_size not in (nf.HDR_SIZE, nf.HDR_SIZE_MRG):
        raise VbookError(f"hdr_size must be {nf.HDR_SIZE} or {nf.HDR_SIZE_MRG} (TUNSETVNETHDRSZ), "
                         f"got {hdr_size}")
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or " " in name:
        raise VbookError(f"bad interface name {name!r} (1-{IFNAMSIZ - 1} bytes, no '/' or space)")
    m = nf.mac_bytes(mac)
    if m[0] & 1:
        raise VbookError(f"the tap's MAC {mac} is a multicast address")
    if ipv6 is not None:
        a = nf.ip6(ipv6)
        if not a.is_link_local or not 64 <= ipv6_prefix <= 128:
            raise VbookError(f"only an IPv6 link-local address (fe80::/10, prefix 64-128) is "
                             f"allowed, got {a}/{ipv6_prefix}")
    if ipv4 is not None:
        a4 = nf.ip4(ipv4)
        if not a4.is_link_local or not 16 <= ipv4_prefix <= 30:
            raise VbookError(f"only an IPv4 link-local address (169.254.0.0/16, prefix 16-30) is "
                             f"allowed, got {a4}/{ipv4_prefix}")
    if need_address and ipv6 is None and ipv4 is None:
        raise VbookError("give the tap at least one address (ipv6 or ipv4)")
