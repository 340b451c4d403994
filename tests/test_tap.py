"""vbook.backends.tap (+ netns): a real tap in a namespace the book makes and removes.

Without root or /dev/net/tun only the C oracle (ioctl numbers, flags, struct
sizes against linux/if_tun.h, sockios.h, if.h, ipv6.h, sched.h), the argument
checks and the "unavailable" paths run; everything else skips with the reason.
As root: the real kernel answers NS, ICMPv6 echo, ARP and ICMP echo; with a vnet
header and NEEDS_CSUM it takes a frame whose checksum is left to it; through a
bridge it fills that checksum in exactly as ``net_frames.fill_csum`` says; the
caller's namespace is never touched; the namespace is gone after close, after
an exception, after a failed set-up; and the same works for an unprivileged
user in a user+net namespace.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _oracle import need_c, printf_lines, program, run_c

from vbook.backends import netns
from vbook.backends import tap as tapmod
from vbook.backends.tap import (
    Bridge,
    SockIoctl,
    Tap,
    TapError,
    TunFlag,
    TunIoctl,
    TunOffload,
)
from vbook.errors import BackendUnavailable, VbookError
from vbook.models import net_frames as nf
from vbook.models.net_frames import VirtioNetHdr, VirtioNetHdrFlag

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- the C oracle (runs without root) -------------------------------------------------------------

HEADERS = ["linux/ioctl.h", "linux/if_tun.h", "linux/sockios.h", "linux/if.h", "linux/ipv6.h",
           "linux/sched.h", "stddef.h"]
MACROS = {
    **{f"TUN{i.name}": i for i in TunIoctl},
    **{f"IFF_{f.name}": f for f in TunFlag},
    **{f"TUN_F_{f.name}": f for f in TunOffload},
    **{f"SIOC{s.name}": s for s in SockIoctl},
    "IFNAMSIZ": tapmod.IFNAMSIZ, "IFF_UP": tapmod.IFF_UP, "IFF_RUNNING": tapmod.IFF_RUNNING,
    "CLONE_NEWNET": netns.CLONE_NEWNET, "CLONE_NEWUSER": netns.CLONE_NEWUSER,
}
EXPRS = {
    "sizeof ifreq": ("sizeof(struct ifreq)", tapmod.SIZEOF_IFREQ),
    "offsetof ifreq.ifr_flags": ("offsetof(struct ifreq, ifr_flags)", tapmod.IFNAMSIZ),
    "offsetof ifreq.ifr_ifindex": ("offsetof(struct ifreq, ifr_ifindex)", tapmod.IFNAMSIZ),
    "sizeof in6_ifreq": ("sizeof(struct in6_ifreq)", tapmod.SIZEOF_IN6_IFREQ),
    "offsetof in6_ifreq.ifr6_prefixlen": ("offsetof(struct in6_ifreq, ifr6_prefixlen)", 16),
    "offsetof in6_ifreq.ifr6_ifindex": ("offsetof(struct in6_ifreq, ifr6_ifindex)", 20),
}


@pytest.fixture(scope="module")
def c_values(tmp_path_factory):
    need_c(*(os.path.join("/usr/include", h) for h in HEADERS if h != "stddef.h"))
    body = printf_lines({k: k for k in MACROS}, guard_macros=True)
    body += printf_lines({k: expr for k, (expr, _) in EXPRS.items()})
    return run_c(tmp_path_factory.mktemp("tap_oracle"), program(HEADERS, body))


@pytest.mark.parametrize("macro", sorted(MACROS))
def test_oracle_constant(c_values, macro):
    assert c_values[macro] is not None, f"{macro} is not in the installed headers"
    assert c_values[macro] == MACROS[macro]


@pytest.mark.parametrize("key", sorted(EXPRS))
def test_oracle_struct(c_values, key):
    assert c_values[key] == EXPRS[key][1]


# --- without a tap ---------------------------------------------------------------------------------


def test_no_tun_device_is_a_clear_reason_and_no_wait(monkeypatch):
    monkeypatch.setenv("VBOOK_TUN_DEV", "/nonexistent/tun")
    with pytest.raises(BackendUnavailable, match="/nonexistent/tun does not exist") as e:
        Tap.check_available()
    assert e.value.backend == "tap"
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match="does not exist"):
        Tap.open()
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("kw, match", [
    (dict(ipv6="2001:db8::1"), "only an IPv6 link-local"),
    (dict(ipv4="192.168.1.1"), "only an IPv4 link-local"),
    (dict(ipv4="169.254.1.1", ipv4_prefix=8), "prefix 16-30"),
    (dict(ipv6=None, ipv4=None), "at least one address"),
    (dict(vnet_hdr=True, hdr_size=8), "10 or 12"),
    (dict(offload=TunOffload.CSUM), "offload needs vnet_hdr"),
    (dict(name="a-name-longer-than-15"), "bad interface name"),
    (dict(mac="01:00:5e:00:00:01"), "multicast"),
])
def test_what_could_leave_the_link_is_refused_before_anything_is_made(kw, match):
    with pytest.raises(VbookError, match=match):
        Tap.open(**kw)


def test_a_helper_that_never_answers_is_an_error_not_a_hang(monkeypatch, tmp_path):
    # the unprivileged path, with a "python" that just sleeps: BackendUnavailable after the timeout
    sleeper = tmp_path / "sleeper"
    sleeper.write_text("#!/bin/sh\nexec sleep 30\n")
    sleeper.chmod(0o755)

    def no_root(*a, **k):
        raise netns._NoUnshare(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(netns, "_create_thread", no_root)
    monkeypatch.setattr(sys, "executable", str(sleeper))
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"did not answer within 0.5 s") as e:
        netns.create(tapmod._setup, {}, timeout=0.5)
    assert time.monotonic() - t0 < 3.0
    assert e.value.reason.startswith("unshare(CLONE_NEWNET) in a thread: Operation not permitted")


# --- with a tap (root, or a user namespace) -------------------------------------------------------------


def _open(**kw) -> Tap:
    try:
        return Tap.open(**kw)
    except BackendUnavailable as e:
        pytest.skip(f"no tap here: {e.reason}")


@pytest.fixture
def tap():
    with _open() as t:
        yield t


def _answer(t, frame: bytes, timeout: float = 1.0, hdr=None) -> str | None:
    got = t.exchange(frame, timeout, hdr=hdr)
    return None if got is None else nf.describe(got)


def test_the_real_kernel_answers(tap):
    assert tap.kind == "tap" and tap.name == "vbtap0" and tap.mac == nf.HOST_MAC
    assert tap.addresses == ("fe80::1/64", "169.254.86.1/16")
    assert _answer(tap, nf.neighbour_solicitation()) == (
        "ICMPv6 neighbour advertisement fe80::1 → fe80::2 fe80::1 is-at 02:76:62:00:00:01 [S,O]")
    assert _answer(tap, nf.echo_request6(ident=7, seq=1)) == (
        "ICMPv6 echo reply fe80::1 → fe80::2 id 7 seq 1 (56 bytes)")
    assert _answer(tap, nf.arp_request()) == (
        "ARP reply 169.254.86.1 is-at 02:76:62:00:00:01 → 169.254.86.2 (52:54:00:12:34:56)")
    assert _answer(tap, nf.echo_request4(ident=7, seq=1)) == (
        "ICMP echo reply 169.254.86.1 → 169.254.86.2 id 7 seq 1 (56 bytes)")
    s = tap.snmp()
    counts = (s["Icmp6InEchos"], s["Icmp6OutEchoReplies"], s["IcmpInEchos"], s["IcmpOutEchoReps"])
    assert counts == (1, 1, 1, 1)
    assert repr(tap).startswith("Tap('vbtap0', 02:76:62:00:00:01, fe80::1/64 169.254.86.1/16, ")


def test_answers_carry_right_checksums_and_the_echo_payload(tap):
    tap.exchange(nf.neighbour_solicitation(), 1.0)
    payload = bytes(range(200)) + b"vbook"
    f = nf.parse(tap.exchange(nf.echo_request6(seq=2, payload=payload), 1.0))
    assert nf.verify(f) == [] and f.l4.payload == payload and f.net.hop_limit == 64
    tap.exchange(nf.arp_request(), 1.0)
    f = nf.parse(tap.exchange(nf.echo_request4(seq=2, payload=payload), 1.0))
    assert nf.verify(f) == [] and f.l4.payload == payload and f.net.csum_ok


def test_a_bad_checksum_is_dropped_and_counted(tap):
    tap.exchange(nf.neighbour_solicitation(), 1.0)
    bad = bytearray(nf.echo_request6(seq=3))
    bad[-1] ^= 0xFF
    before = tap.snmp()["Icmp6InCsumErrors"]
    assert tap.exchange(bytes(bad), 0.3) is None
    assert tap.snmp()["Icmp6InCsumErrors"] == before + 1


def test_recv_is_bounded_and_chatter_is_kept_not_hidden(tap):
    t0 = time.monotonic()
    assert tap.recv_answer(timeout=0.3) is None  # the kernel says nothing that is an answer
    assert 0.25 < time.monotonic() - t0 < 1.5
    for reason, frame in tap.skipped:  # what it did say on its own (MLDv2 reports, RS …)
        assert nf.kernel_chatter(frame) == reason
    t0 = time.monotonic()
    while tap.recv(0.0) is not None:  # recv(0) polls
        pass
    assert time.monotonic() - t0 < 0.5


def test_the_tap_lives_in_its_own_namespace_and_the_caller_stays_home(tap):
    def nets() -> set[int]:
        return {os.stat(f"/proc/self/task/{t}/ns/net").st_ino for t in os.listdir("/proc/self/task")}

    home = os.stat("/proc/self/ns/net").st_ino
    assert nets() == {home} and tap.netns.inode != home
    with open("/proc/self/net/dev") as f:
        assert "vbtap0" not in f.read()
    inside = tap.read_proc_net("dev")
    ifaces = sorted(line.split(":")[0].strip() for line in inside.splitlines()[2:])
    assert ifaces == ["lo", "vbtap0"]
    inet6 = tap.read_proc_net("if_inet6").split("\n")
    assert any(line.startswith("fe800000000000000000000000000001") and line.endswith("vbtap0")
               for line in inet6)
    with pytest.raises(netns.NetnsError, match="not a /proc/net file name"):
        tap.read_proc_net("../../etc/passwd")
    assert nets() == {home}


def _gone(ns: netns.NetNs) -> None:
    g = ns.wait_gone(3.0)
    if g is None:
        pytest.skip("this kernel cannot say whether a namespace is gone (nsfs file handles: 6.18+)")
    assert g is True, f"namespace {ns!r} is still there"


def test_close_removes_the_namespace():
    t = _open()
    ns = t.netns
    assert ns.gone() in (False, None)
    t.close()
    t.close()  # twice is fine
    assert t.closed and ns.fd == -1
    with pytest.raises(TapError, match="closed"):
        t.send(nf.echo_request6())
    with pytest.raises(TapError, match="closed"):
        t.recv(0.1)
    _gone(ns)


def test_an_exception_in_the_with_block_removes_it_too():
    with pytest.raises(RuntimeError, match="the reader's bug"):
        with _open() as t:
            ns = t.netns
            raise RuntimeError("the reader's bug")
    _gone(ns)


def test_a_forgotten_tap_goes_with_its_object():
    t = _open()
    ns = t.netns
    handle = ns.handle
    del t, ns
    gc.collect()
    g = netns.handle_gone(handle)
    deadline = time.monotonic() + 3.0
    while g is False and time.monotonic() < deadline:
        time.sleep(0.01)
        g = netns.handle_gone(handle)
    if g is None:
        pytest.skip("this kernel cannot say whether a namespace is gone")
    assert g is True


def test_a_failed_setup_leaves_no_namespace(monkeypatch):
    try:
        Tap.check_available()
    except BackendUnavailable as e:
        pytest.skip(e.reason)
    if os.geteuid() != 0:
        pytest.skip("the set-up runs in a helper child without root; patched here only as root")
    seen = {}

    def fail(ifname, addr, settle):
        fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        seen["handle"] = netns._ns_handle(fd)
        os.close(fd)
        raise TapError(f"{addr} on {ifname} is still tentative (injected)")

    monkeypatch.setattr(tapmod, "_wait_not_tentative", fail)
    with pytest.raises(TapError, match="injected"):
        Tap.open()
    g = netns.handle_gone(seen["handle"])
    deadline = time.monotonic() + 3.0
    while g is False and time.monotonic() < deadline:
        time.sleep(0.01)
        g = netns.handle_gone(seen["handle"])
    if g is None:
        pytest.skip("this kernel cannot say whether a namespace is gone")
    assert g is True


def test_not_a_tun_device():
    if os.geteuid() != 0:
        pytest.skip("as root the set-up reaches TUNGETFEATURES in-process")
    with pytest.raises(BackendUnavailable, match="/dev/null is not a tun device"):
        Tap.open(dev="/dev/null")


def test_two_taps_at_once_each_in_its_own_namespace():
    with _open() as a, _open() as b:
        assert a.netns.inode != b.netns.inode and a.name == b.name == "vbtap0"
        assert _answer(a, nf.neighbour_solicitation()) and _answer(b, nf.neighbour_solicitation())


def test_open_from_another_thread():
    out = {}

    def body():
        try:
            with Tap.open() as t:
                out["answer"] = _answer(t, nf.neighbour_solicitation())
        except BackendUnavailable as e:
            out["why"] = e.reason

    th = threading.Thread(target=body)
    th.start()
    th.join(10)
    if "why" in out:
        pytest.skip(f"no tap here: {out['why']}")
    assert out["answer"].startswith("ICMPv6 neighbour advertisement fe80::1 → fe80::2")


# --- vnet header --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [10, 12])
def test_vnet_header_needs_csum_lets_the_kernel_do_the_checksum(size):
    with _open(vnet_hdr=True, hdr_size=size) as t:
        assert TunFlag.VNET_HDR in t.features and t.vnet_hdr and t.hdr_size == size
        (got,) = struct.unpack("i", fcntl.ioctl(t.fd, TunIoctl.GETVNETHDRSZ, bytes(4)))
        assert got == size
        with pytest.raises(OSError) as e:  # machine.md: EINVAL for 8
            fcntl.ioctl(t.fd, TunIoctl.SETVNETHDRSZ, struct.pack("i", 8))
        assert e.value.errno == errno.EINVAL
        t.send(nf.neighbour_solicitation())
        got_hdr, na = t.recv_hdr(1.0)
        while nf.kernel_chatter(na):
            got_hdr, na = t.recv_hdr(1.0)
        assert got_hdr.pack(size) == bytes(size)  # the kernel's headers are zeros
        t.exchange(nf.arp_request(), 1.0)
        for full, key in ((nf.echo_request6(seq=5), "Icmp6InCsumErrors"),
                          (nf.echo_request4(seq=5), "IcmpInCsumErrors")):
            hdr, part = nf.partial_csum(full)
            assert hdr.csum_start == (54 if key.startswith("Icmp6") else 34) and hdr.csum_offset == 2
            reply = t.exchange(part, 1.0, hdr=hdr)
            assert reply is not None and nf.verify(reply) == [], nf.describe(full)
            before = t.snmp()[key]
            assert t.exchange(part, 0.3) is None  # the same bytes without NEEDS_CSUM: dropped
            assert t.exchange(part, 0.3, hdr=VirtioNetHdr(flags=VirtioNetHdrFlag.DATA_VALID)) is None
            assert t.snmp()[key] == before + 2


def test_a_bridge_fills_the_checksum_as_fill_csum_says():
    try:
        br = Bridge.open(dict(vnet_hdr=True), dict(), dict(vnet_hdr=True, offload=TunOffload.CSUM))
    except BackendUnavailable as e:
        pytest.skip(f"no tap here: {e.reason}")
    with br:
        a, b, c = br.ports
        assert [p.name for p in br.ports] == ["vbport0", "vbport1", "vbport2"]
        full = nf.echo_request6(dst_mac="52:54:00:00:00:99", dst="fe80::99", seq=9)
        hdr, part = nf.partial_csum(full)
        a.send(part, hdr)
        filled = b.recv_answer(1.0)  # no offload on this port: skb_checksum_help filled it in
        assert filled == full == nf.fill_csum(part, hdr)
        kept = c.recv_hdr(1.0)  # TUN_F_CSUM: the checksum is still left to the reader
        while nf.kernel_chatter(kept[1]):
            kept = c.recv_hdr(1.0)
        got_hdr, frame = kept
        assert (got_hdr.flags, got_hdr.csum_start, got_hdr.csum_offset) == (
            VirtioNetHdrFlag.NEEDS_CSUM, 54, 2)
        assert frame == part and nf.fill_csum(frame, got_hdr) == full
        ns = br.netns
    _gone(ns)


# --- without root: a user + net namespace ---------------------------------------------------------------

_NOBODY_SCRIPT = textwrap.dedent("""
    import json, os
    from vbook.backends.tap import Tap
    from vbook.models import net_frames as nf
    out = {"uid": os.getuid()}
    with Tap.open() as t:
        out["mode"] = t.netns.mode
        out["answers"] = [nf.describe(t.exchange(f, 1.0)) for f in
                          (nf.neighbour_solicitation(), nf.echo_request6(), nf.arp_request(),
                           nf.echo_request4())]
        out["echos"] = t.snmp()["Icmp6OutEchoReplies"]
        ns = t.netns
    out["gone"] = ns.wait_gone(3.0)
    print(json.dumps(out))
""")


def _as_nobody(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                           *argv], capture_output=True, text=True, timeout=timeout, cwd="/",
                          env=dict(os.environ, PYTHONPATH=REPO))


def test_an_unprivileged_user_gets_a_tap_in_a_user_namespace():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to become an unprivileged user for the test")
    probe = ("import subprocess, sys, vbook.backends.tap; "
             "subprocess.run([sys.executable, '-c', ''], check=True)")
    for py in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(py) and _as_nobody(py, "-c", probe).returncode == 0:
            break
    else:
        pytest.skip("no Python the nobody user can run (and import vbook with)")
    r = _as_nobody(py, "-c", _NOBODY_SCRIPT)
    if r.returncode != 0 and "unavailable" in r.stderr:
        pytest.skip(f"no unprivileged tap here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["uid"] == 65534 and out["mode"] == "userns"
    assert out["answers"] == [
        "ICMPv6 neighbour advertisement fe80::1 → fe80::2 fe80::1 is-at 02:76:62:00:00:01 [S,O]",
        "ICMPv6 echo reply fe80::1 → fe80::2 id 7 seq 1 (56 bytes)",
        "ARP reply 169.254.86.1 is-at 02:76:62:00:00:01 → 169.254.86.2 (52:54:00:12:34:56)",
        "ICMP echo reply 169.254.86.1 → 169.254.86.2 id 7 seq 1 (56 bytes)",
    ]
    assert out["echos"] == 1 and out["gone"] in (True, None)


# --- sysctls ------------------------------------------------------------------------------------------------


def test_a_sysctl_that_cannot_be_set_is_reported_not_fatal(monkeypatch):
    monkeypatch.setitem(tapmod.SYSCTLS, "net/ipv4/vbook_no_such_sysctl", "1")
    with _open() as t:
        assert t.sysctl_failed == ["net/ipv4/vbook_no_such_sysctl: missing"]
        assert _answer(t, nf.neighbour_solicitation()).startswith("ICMPv6 neighbour advertisement")


def test_with_dad_the_address_is_tentative_first(monkeypatch):
    # machine.md: without accept_dad=0 a new fe80:: is tentative for 1.2-2 s and answers nothing;
    # Tap.open waits for it, and the kernel's DAD probe from :: is chatter, not an answer
    monkeypatch.setitem(tapmod.SYSCTLS, "net/ipv6/conf/default/accept_dad", "1")
    t0 = time.monotonic()
    with _open() as t:
        waited = time.monotonic() - t0
        assert 0.5 < waited < 3.5
        assert _answer(t, nf.neighbour_solicitation()).startswith("ICMPv6 neighbour advertisement")
        dad = [f for r, f in t.skipped if r == "DAD neighbour solicitation from ::"]
        assert dad and nf.describe(dad[0]) == (
            "ICMPv6 neighbour solicitation :: → ff02::1:ff00:1 who-has fe80::1")
