"""A network namespace the book makes for itself, and removes with the last fd on it.

A tap device made in the reader's own network namespace would sit next to
their real interfaces, routes and firewall. So vbook makes a fresh namespace
(``CLONE_NEWNET``) that holds nothing but ``lo`` and the book's tap, and
never puts the calling process in it. Two ways, tried in this order:

**A thread that unshares (root, or CAP_SYS_ADMIN).** Namespaces belong to a
*task*, and a Linux thread is a task: ``unshare(CLONE_NEWNET)`` in one thread
moves that thread alone (``man 2 unshare``; the other threads keep their
``nsproxy``). :func:`create` starts a short-lived thread that unshares, runs the
set-up function (sysctls, ``/dev/net/tun``, ioctls), opens its own
``/proc/thread-self/ns/net`` and ends (:func:`create` returns only once that
task has left ``/proc/self/task``). What it made keeps the namespace: a
socket and a tun fd belong for life to the namespace they were created in
(``sk_alloc`` takes a reference on it), and work from any thread afterwards.
Nothing else in the process ever changes namespace, there is no fork in a
process that may run many threads (a Jupyter kernel does), and the namespace
goes when its last fd closes — also when the process dies. Later reads inside
it (``/proc/thread-self/net/snmp6`` …) are done by another short thread that
``setns()``-es into :attr:`NetNs.fd` (:meth:`NetNs.read_proc_net`).

**A child in a user + network namespace (no root).** ``unshare(CLONE_NEWUSER)``
refuses a multi-threaded caller (EINVAL), and ``setns`` into a netns needs
CAP_SYS_ADMIN in the caller's own user namespace, so without root the work
moves to a child process (``python -m vbook.backends.netns``, started by
``subprocess``: fork + exec, safe in a threaded parent). It unshares
``CLONE_NEWUSER | CLONE_NEWNET``, maps the caller's uid/gid to 0 (what
``unshare --user --map-root-user --net`` does, machine.md), runs the same
set-up, passes the fds back over a socketpair (``SCM_RIGHTS``), and stays to
answer ``read_proc_net`` until its socket closes (which the kernel does when the
parent exits, however it exits).

Either way nothing is routed out: the namespace has no interface but ``lo`` and
the tap, and the tap only link-local addresses.

Why not the usual ways: ``ip netns add`` names a namespace by bind-mounting it
under /run/netns, which outlives a crashed kernel process (and needs iproute2);
an anonymous namespace held only by fds cannot leak. Unsharing the calling
thread would move the reader's own thread (its later sockets would land in the
book's namespace). A long-lived worker thread parked in the namespace is
possible but buys nothing: the fds already carry it, and a short thread per
``read_proc_net`` keeps no task there between calls. ``os.fork()`` without exec
is unsafe in a threaded process.

:meth:`NetNs.gone` asks the kernel whether the namespace still exists: on Linux
6.18+ an nsfs *file handle* (``name_to_handle_at``) re-opens a live namespace
and gives ESTALE for one that is gone.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from vbook.errors import BackendUnavailable, VbookError

#: linux/sched.h (uapi 6.1); checked by tests/test_tap.py
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
#: nsfs "mount fd" for open_by_handle_at of a namespace file handle (linux/nsfs.h, Linux 6.18)
FD_NSFS_ROOT = -10003
_AT_EMPTY_PATH = 0x1000
_MAX_HANDLE = 128

#: what a set-up function returns: (JSON-able facts, fds to hand to the caller)
SetupResult = tuple[dict[str, Any], list[int]]

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(VbookError):
    """Something inside the book's network namespace failed after it was made."""


class _NoUnshare(PermissionError):
    """unshare(CLONE_NEWNET) itself was refused (not a failure of the set-up after it)."""


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _ns_handle(fd: int) -> bytes | None:
    """The nsfs file handle of namespace fd ``fd`` (Linux 6.18+), or None where nsfs has none."""
    buf = ctypes.create_string_buffer(8 + _MAX_HANDLE)
    struct.pack_into("I", buf, 0, _MAX_HANDLE)
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(fd, b"", buf, ctypes.byref(mount_id), _AT_EMPTY_PATH) < 0:
        return None
    (n,) = struct.unpack_from("I", buf, 0)
    return buf.raw[:8 + n]


def handle_gone(handle: bytes | None) -> bool | None:
    """Is the namespace of nsfs file handle ``handle`` gone? (None: cannot tell.) Re-opening
    a live namespace by its handle works; one the kernel freed gives ESTALE."""
    if handle is None:
        return None
    fd = _libc.open_by_handle_at(FD_NSFS_ROOT, handle, os.O_RDONLY | os.O_CLOEXEC)
    if fd >= 0:
        os.close(fd)
        return False
    return True if ctypes.get_errno() in (errno.ESTALE, errno.ENOENT) else None


class NetNs:
    """A network namespace vbook made. ``fd`` holds it (an nsfs fd), ``inode`` names it
    (``ls -l /proc/PID/task/TID/ns/net`` shows ``net:[inode]``), ``mode`` says how it
    was made: "thread" (root) or "userns" (a child in a user namespace)."""

    def __init__(self, fd: int, mode: str, child: subprocess.Popen | None = None,
                 ctl: socket.socket | None = None):
        self.fd, self.mode = fd, mode
        self.inode = os.fstat(fd).st_ino
        self.handle = _ns_handle(fd)
        self._child, self._ctl = child, ctl
        self._lock = threading.Lock()

    # --- inside --------------------------------------------------------------------------

    def run(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """``fn()`` in a fresh thread that has ``setns()``-ed into this namespace (thread mode
        only: without root, setns is not allowed). Sockets it makes belong here."""
        if self.fd < 0:
            raise NetnsError("this network namespace was closed")
        if self.mode != "thread":
            raise NetnsError("setns() into a namespace of a user namespace needs root; "
                             "only read_proc_net() works in userns mode")

        def inside() -> Any:
            _check(_libc.setns(self.fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")
            return fn()

        return _in_thread(inside, timeout, "netns.run")

    def read_proc_net(self, name: str, timeout: float = 5.0) -> str:
        """The text of ``/proc/net/<name>`` as seen inside (``snmp6``, ``dev``, ``if_inet6`` …)."""
        if not re.fullmatch(r"[a-z0-9_]+", name):
            raise NetnsError(f"not a /proc/net file name: {name!r}")
        if self.mode == "thread":
            return self.run(lambda: _read(f"/proc/thread-self/net/{name}"), timeout)
        return self._ask(f"net {name}", timeout)

    def _ask(self, request: str, timeout: float) -> str:
        with self._lock:
            if self._ctl is None:
                raise NetnsError("this network namespace was closed")
            self._ctl.settimeout(timeout)
            try:
                self._ctl.sendall(request.encode() + b"\n")
                (n,) = struct.unpack("!I", _recv_exact(self._ctl, 4))
                reply = _recv_exact(self._ctl, n).decode()
            except (OSError, TimeoutError) as e:
                raise NetnsError(f"the namespace helper did not answer {request!r}: {e}") from None
        if reply.startswith("!"):
            raise NetnsError(reply[1:])
        return reply

    # --- lifetime ------------------------------------------------------------------------

    def gone(self) -> bool | None:
        """True when the kernel no longer has this namespace, False while it does, None when
        this kernel cannot tell (no nsfs file handles before Linux 6.18)."""
        return handle_gone(self.handle)

    def wait_gone(self, timeout: float = 2.0) -> bool | None:
        """:meth:`gone`, polled until True or ``timeout`` (the kernel frees a namespace
        asynchronously, ``cleanup_net``)."""
        deadline = time.monotonic() + timeout
        while True:
            g = self.gone()
            if g is not False or time.monotonic() >= deadline:
                return g
            time.sleep(0.01)

    def close(self) -> None:
        """Drop vbook's hold on the namespace (its fd; in userns mode the helper child).
        Once the fds made inside are closed too, the kernel removes it. Safe twice."""
        if self._ctl is not None:
            ctl, self._ctl = self._ctl, None
            ctl.close()  # the child sees EOF and exits
        if self._child is not None:
            child, self._child = self._child, None
            try:
                child.communicate(timeout=2.0)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        state = "closed" if self.fd < 0 else f"net:[{self.inode}]"
        return f"NetNs({state}, mode={self.mode!r})"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise OSError(errno.EPIPE, "the namespace helper closed its socket")
        out += chunk
    return out


def _in_thread(fn: Callable[[], Any], timeout: float, name: str) -> Any:
    """Run ``fn`` in a new thread, wait at most ``timeout``, return or re-raise what it did."""
    box: dict[str, Any] = {}

    def body() -> None:
        box["tid"] = threading.get_native_id()
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=body, name=f"vbook-{name}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise NetnsError(f"{name} did not finish within {timeout:g} s")
    # join() returns a moment before the task is gone; wait for it, so that no task of this
    # process is in the namespace any more when we return (bounded: it is exiting)
    task, deadline = f"/proc/self/task/{box['tid']}", time.monotonic() + 1.0
    while os.path.exists(task) and time.monotonic() < deadline:
        time.sleep(0.0002)
    if "error" in box:
        raise box["error"]
    return box["value"]


# --- making one ------------------------------------------------------------------------------


def create(setup: Callable[..., SetupResult], kwargs: dict[str, Any],
           timeout: float = 10.0) -> tuple[NetNs, dict[str, Any], list[int]]:
    """A new network namespace with ``setup(**kwargs)`` run inside it.

    ``setup`` is a module-level function (the child must import it) that returns
    (facts, fds); it must close what it opened if it fails. Returns the
    :class:`NetNs`, the facts and the fds, now the caller's. Raises
    :class:`~vbook.errors.BackendUnavailable` naming why neither way works here.
    """
    try:
        return _create_thread(setup, kwargs, timeout)
    except _NoUnshare as e:
        why_thread = f"unshare(CLONE_NEWNET) in a thread: {e.strerror} (not root)"
    try:
        return _create_userns(setup, kwargs, timeout)
    except BackendUnavailable as e:
        raise BackendUnavailable("tap", f"{why_thread}; and {e.reason}") from None


def _create_thread(setup: Callable[..., SetupResult], kwargs: dict[str, Any],
                   timeout: float) -> tuple[NetNs, dict[str, Any], list[int]]:
    def inside() -> tuple[int, dict[str, Any], list[int]]:
        if _libc.unshare(CLONE_NEWNET) < 0:
            err = ctypes.get_errno()
            if err == errno.EPERM:
                raise _NoUnshare(err, os.strerror(err))
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        nsfd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            info, fds = setup(**kwargs)
        except BaseException:
            os.close(nsfd)
            raise
        return nsfd, info, fds

    nsfd, info, fds = _in_thread(inside, timeout, "netns-setup")
    return NetNs(nsfd, "thread"), info, fds


def _create_userns(setup: Callable[..., SetupResult], kwargs: dict[str, Any],
                   timeout: float) -> tuple[NetNs, dict[str, Any], list[int]]:
    parent, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    spec = json.dumps({"module": setup.__module__, "function": setup.__qualname__,
                       "kwargs": kwargs, "uid": os.getuid(), "gid": os.getgid()})
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "vbook.backends.netns", str(child_end.fileno()),
                                 spec], pass_fds=[child_end.fileno()], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    except OSError as e:
        parent.close()
        child_end.close()
        raise BackendUnavailable("tap", f"cannot start the namespace helper: {e}") from None
    child_end.close()
    parent.settimeout(timeout)
    try:
        msg, fds, _, _ = socket.recv_fds(parent, 65536, 8)
    except (OSError, TimeoutError) as e:
        parent.close()
        proc.kill()  # a helper that does not answer in time is not waited for
        proc.communicate()
        raise BackendUnavailable("tap", f"the namespace helper did not answer within {timeout:g} s "
                                        f"({type(e).__name__})") from None
    if not msg:  # it exited without a word: its last line of stderr says why
        parent.close()
        for fd in fds:
            os.close(fd)
        try:
            _, err = proc.communicate(timeout=2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        text = (err or b"").decode(errors="replace").strip().splitlines()
        raise BackendUnavailable("tap", "the namespace helper exited without an answer: "
                                        f"{text[-1] if text else f'status {proc.returncode}'}")
    reply = json.loads(msg.decode())
    if "error" in reply:
        for fd in fds:
            os.close(fd)
        parent.close()
        try:
            proc.communicate(timeout=2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        if reply.get("unavailable"):
            raise BackendUnavailable("tap", reply["error"])
        raise NetnsError(reply["error"])
    nsfd, fds = fds[0], fds[1:]
    return NetNs(nsfd, "userns", child=proc, ctl=parent), reply["info"], fds


# --- the helper child (python -m vbook.backends.netns FD SPEC) -----------------------------------


def _child_main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    spec = json.loads(argv[1])
    # no PR_SET_PDEATHSIG: it fires when the parent *thread* ends, and Tap.open may run in a
    # short-lived one. When the parent process goes, its end of the socket closes: EOF below.
    try:
        try:
            _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER|CLONE_NEWNET)")
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"0 {spec['uid']} 1")
            _write("/proc/self/gid_map", f"0 {spec['gid']} 1")
        except OSError as e:
            hint = ""
            try:
                if _read("/proc/sys/user/max_user_namespaces").strip() == "0":
                    hint = " (user.max_user_namespaces is 0)"
            except OSError:
                pass
            raise BackendUnavailable("tap", f"unprivileged user+net namespace: {e}{hint}") from None
        setup = getattr(importlib.import_module(spec["module"]), spec["function"])
        info, fds = setup(**spec["kwargs"])
        nsfd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        socket.send_fds(sock, [json.dumps({"info": info}).encode()], [nsfd, *fds])
        for fd in (nsfd, *fds):
            os.close(fd)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        unavailable = isinstance(e, BackendUnavailable)
        text = e.reason if unavailable else f"{type(e).__name__}: {e}"  # type: ignore[attr-defined]
        socket.send_fds(sock, [json.dumps({"error": text, "unavailable": unavailable}).encode()], [])
        return 1
    buf = b""
    while True:  # serve read_proc_net until the parent closes the socket
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            verb, _, name = line.decode().partition(" ")
            try:
                if verb != "net" or not re.fullmatch(r"[a-z0-9_]+", name):
                    raise OSError(errno.EINVAL, f"bad request {line!r}")
                reply = _read(f"/proc/self/net/{name}")
            except OSError as e:
                reply = f"!{e}"
            data = reply.encode()
            sock.sendall(struct.pack("!I", len(data)) + data)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
