"""What this machine offers the book: /dev/kvm, CPU flags, modules, tap, unicorn.

:func:`doctor` returns a list of :class:`Check` s — data, so a notebook can
show it and a test can look inside; ``vbook doctor`` prints it. Every check
says what the book does with or without the thing it looked for, e.g.
"no /dev/kvm: chapters run guests on unicorn". Nothing here changes the
machine: files are read, ``/dev/kvm`` is opened read-write only to ask
``KVM_GET_API_VERSION`` and ``KVM_CHECK_EXTENSION``, and closed again.

The paths looked at are fields of :class:`Paths`, so tests (and curious
readers) can point them elsewhere.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import asdict, dataclass, field
from typing import Any

#: what ``--backend`` / chapters fall back to without real KVM
FALLBACK = "chapters run guests on unicorn"


@dataclass(frozen=True)
class Paths:
    """Where :func:`doctor` looks (the defaults are the real Linux locations)."""

    dev_kvm: str = field(default_factory=lambda: os.environ.get("VBOOK_KVM_DEV") or "/dev/kvm")
    cpuinfo: str = "/proc/cpuinfo"
    modules: str = "/proc/modules"
    sys_module: str = "/sys/module"
    dev_tun: str = "/dev/net/tun"
    dev_vhost_net: str = "/dev/vhost-net"
    include: str = "/usr/include"


@dataclass(frozen=True)
class Check:
    """One thing looked at: ``ok`` is True (have it), False (don't), None (for information).

    ``value`` is what was found, ``consequence`` what the book does because of it.
    """

    name: str
    ok: bool | None
    value: str
    consequence: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# KVM_CHECK_EXTENSION questions: (Cap name, what a non-zero answer means, what 0 means)
CAPS: tuple[tuple[str, str, str], ...] = (
    ("NR_VCPUS", "recommended maximum vCPUs per VM", "no answer"),
    ("MAX_VCPUS", "hard maximum vCPUs per VM", "no answer"),
    ("NR_MEMSLOTS", "memory slots per VM (KVM_SET_USER_MEMORY_REGION)", "no answer"),
    ("IRQCHIP", "in-kernel PIC/IOAPIC/LAPIC can be created (KVM_CREATE_IRQCHIP)",
     "no in-kernel irqchip: interrupts would all go through user space"),
    ("IOEVENTFD", "a guest's notify write can signal an eventfd in the kernel (vhost chapter)",
     "no ioeventfd: every virtio notify would exit to user space; the vhost chapter is "
     "model-only"),
    ("IRQFD", "an eventfd can inject a guest interrupt (vhost chapter)",
     "no irqfd: the vhost chapter is model-only"),
    ("EXIT_HYPERCALL", "hypercalls user space may receive as KVM_EXIT_HYPERCALL (bit 12 = "
     "KVM_HC_MAP_GPA_RANGE)", "no hypercall ever exits to user space (hypercall chapter "
     "models the exit)"),
    ("NESTED_STATE", "nested state size: KVM can run a hypervisor inside a guest",
     "no nested state: the nested-EPT chapter runs on the model only"),
    ("IMMEDIATE_EXIT", "KVM_RUN can be kicked out with kvm_run.immediate_exit",
     "no immediate_exit: the kvm backend stops a stuck KVM_RUN with a signal only"),
)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _mode(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        return f"stat failed: {e.strerror}"
    owner = str(st.st_uid)
    try:
        import pwd
        owner = pwd.getpwuid(st.st_uid).pw_name
    except (ImportError, KeyError):
        pass
    group = str(st.st_gid)
    try:
        import grp
        group = grp.getgrgid(st.st_gid).gr_name
    except (ImportError, KeyError):
        pass
    return f"{stat.filemode(st.st_mode)} {owner}:{group}"


def _device(path: str, name: str, have: str, without: str) -> Check:
    if not os.path.exists(path):
        return Check(name, False, "missing", without)
    if not os.access(path, os.R_OK | os.W_OK):
        return Check(name, False, f"present ({_mode(path)}) but not accessible to this user",
                     without)
    return Check(name, True, f"present ({_mode(path)})", have)


def _kvm_checks(paths: Paths) -> list[Check]:
    path = paths.dev_kvm
    if not os.path.exists(path):
        return [Check(path, False, "missing", f"no {path}: {FALLBACK}; the 'real hardware' "
                      "sections say so and the unicorn-vs-KVM conformance tests skip")]
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        why = "permission denied" if e.errno in (errno.EACCES, errno.EPERM) else e.strerror
        return [Check(path, False, f"present ({_mode(path)}) but cannot open: {why}",
                      f"{FALLBACK}; to use real KVM join the group that owns {path} "
                      "or run as root")]
    import fcntl

    from vbook.models.kvm_api import KVM_API_VERSION, Cap, Ioctl

    out = [Check(path, True, f"present, opened read-write ({_mode(path)})",
                 "guests can also run on real KVM (--backend kvm), and the conformance "
                 "tests compare it with unicorn")]
    try:
        try:
            api = fcntl.ioctl(fd, Ioctl.GET_API_VERSION)
        except OSError as e:
            return out + [Check("KVM_GET_API_VERSION", False, f"ioctl failed: {e.strerror}",
                                f"the kvm backend cannot be used: {FALLBACK}")]
        good = api == KVM_API_VERSION
        out.append(Check("KVM_GET_API_VERSION", good, str(api),
                         "the stable API every VMM expects" if good else
                         f"expected {KVM_API_VERSION}: the kvm backend refuses this host; "
                         f"{FALLBACK}"))
        for cap, have, without in CAPS:
            try:
                r = fcntl.ioctl(fd, Ioctl.CHECK_EXTENSION, int(Cap[cap]))
            except OSError as e:
                out.append(Check(f"KVM_CAP_{cap}", False, f"ioctl failed: {e.strerror}", without))
                continue
            value = f"{r:#x}" if cap == "EXIT_HYPERCALL" else str(r)
            if cap in ("NR_VCPUS", "MAX_VCPUS", "NR_MEMSLOTS"):
                out.append(Check(f"KVM_CAP_{cap}", None, value, have))
            else:
                out.append(Check(f"KVM_CAP_{cap}", r > 0, value, have if r > 0 else without))
    finally:
        os.close(fd)
    return out


def _cpu_checks(paths: Paths) -> list[Check]:
    text = _read(paths.cpuinfo)
    if text is None:
        return [Check("cpu flags", None, f"{paths.cpuinfo} unreadable",
                      "cannot tell whether the CPU has VT-x/AMD-V; the book does not need it")]
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            flags |= set(line.split(":", 1)[1].split())
    virt = sorted(flags & {"vmx", "svm"})
    out = [Check("cpu: vmx/svm", bool(virt), ", ".join(virt) or "neither",
                 "hardware virtualization (VT-x or AMD-V): KVM's VMX/SVM paths are real here"
                 if virt else
                 "no VT-x/AMD-V flag: KVM, if present, is not hardware-assisted (e.g. kvm_pvm, "
                 "shadow paging); VMX and EPT are shown on the models")]
    hv = "hypervisor" in flags
    out.append(Check("cpu: hypervisor flag", None, "set" if hv else "not set",
                     "this machine is itself a VM: /dev/kvm here means nested virtualization "
                     "or PVM" if hv else "bare metal (or a hypervisor that hides itself)"))
    return out


KVM_MODULES = ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")


def _module_checks(paths: Paths) -> list[Check]:
    text = _read(paths.modules) or ""
    loaded = {line.split()[0] for line in text.splitlines() if line.strip()}
    found = []
    for m in KVM_MODULES:
        if m in loaded:
            found.append(m)
        elif os.path.isdir(os.path.join(paths.sys_module, m)):
            found.append(f"{m} (built-in)")
    flavour = [m.split()[0] for m in found if m.split()[0] != "kvm"]
    if flavour:
        consequence = {"kvm_intel": "KVM on Intel VMX", "kvm_amd": "KVM on AMD SVM",
                       "kvm_pvm": "KVM on PVM (no hardware virtualization: shadow paging)"
                       }[flavour[0]]
    elif found:
        consequence = "kvm core only, no vendor module: /dev/kvm cannot run guests"
    else:
        consequence = f"no KVM module loaded: {FALLBACK}"
    out = [Check("kvm modules", bool(flavour), ", ".join(found) or "none", consequence)]
    for vendor in ("kvm_intel", "kvm_amd"):
        p = os.path.join(paths.sys_module, vendor, "parameters", "nested")
        v = _read(p)
        if v is not None:
            on = v.strip() in ("Y", "1")
            out.append(Check(f"{vendor} nested", on, v.strip(),
                             "nested virtualization on: a guest can run its own KVM" if on else
                             "nested off: the nested-EPT chapter runs on the model only"))
            break
    else:
        out.append(Check("nested", None, "no kvm_intel/kvm_amd nested parameter",
                         "nested virtualization unknown here: the nested-EPT chapter runs on "
                         "the model only"))
    return out


def _unicorn_check() -> Check:
    try:
        import unicorn
    except ImportError as e:
        return Check("unicorn", False, f"not importable: {e}",
                     "guests run only on /dev/kvm; install unicorn>=2.1.4,<2.2 "
                     "(pip install -e .)")
    version = getattr(unicorn, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version
            version = dist_version("unicorn")
        except Exception:  # noqa: BLE001 - any metadata trouble: say unknown
            version = "unknown version"
    return Check("unicorn", True, str(version),
                 "the default backend: every chapter runs its guests on unicorn")


def _root_check() -> Check:
    root = os.geteuid() == 0
    return Check("root", root, f"euid {os.geteuid()}",
                 "tap devices can be created (network chapters' real-device asides)" if root else
                 "not root: creating tap devices needs root (or CAP_NET_ADMIN); those asides "
                 "skip")


def _toolchain_check(paths: Paths) -> Check:
    gcc = shutil.which("gcc")
    header = os.path.join(paths.include, "linux", "kvm.h")
    have_h = os.path.exists(header)
    ok = bool(gcc) and have_h
    value = f"gcc {'at ' + gcc if gcc else 'missing'}, {header} {'present' if have_h else 'missing'}"
    return Check("gcc + uapi headers", ok, value,
                 "the C-oracle tests compare kvm_api with the installed headers" if ok else
                 "the C-oracle tests skip (install gcc and linux-libc-dev)")


def _backend_check() -> Check:
    try:
        from vbook.backends import available
        avail = available()
    except Exception as e:  # noqa: BLE001 - a broken backend module must not break doctor
        return Check("backend auto", None, f"cannot ask the backends: {e}",
                     "--backend auto cannot be resolved")
    pick = "kvm" if avail.get("kvm") is None else "unicorn"
    why = "; ".join(f"{k}: {v}" for k, v in avail.items() if v) or "all usable"
    return Check("backend auto", None, pick, f"--backend auto runs guests on {pick} ({why})")


def _host(paths: Paths, kvm: list[Check]):
    """The :class:`vbook.host.Host` of the machine ``paths`` and the /dev/kvm checks describe."""
    from vbook.host import classify, cpu_flags, has_pvm

    usable = bool(kvm) and kvm[0].ok is True and all(
        c.ok is not False for c in kvm if c.name == "KVM_GET_API_VERSION")
    why = "" if usable else f"{kvm[0].name} {kvm[0].value}"
    return classify(usable, cpu_flags(paths.cpuinfo), has_pvm(paths.modules, paths.sys_module), why)


def _host_check(host) -> Check:
    """The one line that says which kind of KVM host real-KVM figures come from."""
    from vbook.host import MEANING

    return Check("KVM host", None, f"{host.kind} ({host.evidence})", MEANING[host.kind])


def _mmu_check(paths: Paths, host) -> Check:
    """EPT / NPT / shadow paging: what a guest's page faults turn into on this host."""
    from vbook.host import mmu_mode

    mode = mmu_mode(host.kind, paths.sys_module)
    consequence = {
        "EPT": "a guest's first touch of a page is an EPT violation KVM fixes (kvm_tdp_page_fault); "
               "chapter 06's counts can be checked here",
        "NPT": "nested page tables (AMD): the EPT chapters' model still applies in spirit",
        "shadow paging": "KVM shadows the guest's page tables: chapter 05's counters "
                         "(pf_fixed, mmu_unsync, mmu_flooded …) move here",
    }.get(mode.split(" (")[0], "no KVM MMU to look at: the memory chapters run on their models")
    return Check("KVM MMU", None, mode, consequence)


def doctor(paths: Paths | None = None) -> list[Check]:
    """Look at this machine; one :class:`Check` per thing, in a stable order.

    The first says which kind of KVM host this is (VMX, SVM, PVM, other, none):
    see :mod:`vbook.host`.
    """
    paths = paths or Paths()
    checks: list[Check] = []
    kvm = _kvm_checks(paths)
    host = _host(paths, kvm)
    checks += [_host_check(host), _mmu_check(paths, host)]
    checks += kvm
    checks += _cpu_checks(paths)
    checks += _module_checks(paths)
    checks.append(_device(paths.dev_tun, paths.dev_tun,
                          "tap devices can back virtio-net/e1000 (with root)",
                          "no tun device: network chapters use their in-memory backend"))
    checks.append(_device(paths.dev_vhost_net, paths.dev_vhost_net,
                          "vhost-net can be opened: the vhost chapter can point at the real one",
                          "no vhost-net: the vhost chapter is model-only"))
    checks.append(_unicorn_check())
    checks.append(_root_check())
    checks.append(_toolchain_check(paths))
    checks.append(_backend_check())
    return checks


_MARK = {True: "ok", False: "no", None: "--"}


def format_checks(checks: list[Check]) -> str:
    """The text ``vbook doctor`` prints: a mark, the name and value, then the consequence."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"[{_MARK[c.ok]}] {c.name:<{width}}  {c.value}")
        lines.append(f"     {'':<{width}}  -> {c.consequence}")
    return "\n".join(lines)
