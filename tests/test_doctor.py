"""vbook.doctor: what the machine offers, as data, with what the book does about it."""

from __future__ import annotations

import json
import os
import sys

import pytest

import vbook.doctor as doctor_mod
from vbook.doctor import Check, Paths, doctor, format_checks


@pytest.fixture
def bare(tmp_path) -> Paths:
    """A machine with nothing: every path points at a file that does not exist."""
    return Paths(dev_kvm=str(tmp_path / "kvm"), cpuinfo=str(tmp_path / "cpuinfo"),
                 modules=str(tmp_path / "modules"), sys_module=str(tmp_path / "sys_module"),
                 dev_tun=str(tmp_path / "tun"), dev_vhost_net=str(tmp_path / "vhost-net"),
                 include=str(tmp_path / "include"))


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_no_dev_kvm_means_unicorn(bare):
    checks = doctor(bare)
    assert all(isinstance(c, Check) for c in checks)
    kvm = by_name(checks)[bare.dev_kvm]
    assert kvm.ok is False and kvm.value == "missing"
    assert "unicorn" in kvm.consequence
    # no ioctl questions are asked without the device
    assert not any(c.name.startswith("KVM_") for c in checks)


def test_dev_kvm_that_cannot_be_opened(bare, monkeypatch, tmp_path):
    (tmp_path / "kvm").write_text("")
    real_open = os.open

    def deny(path, *a, **kw):
        if path == bare.dev_kvm:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "open", deny)
    kvm = by_name(doctor(bare))[bare.dev_kvm]
    assert kvm.ok is False
    assert "permission denied" in kvm.value
    assert "unicorn" in kvm.consequence and "root" in kvm.consequence


def test_dev_kvm_that_is_not_kvm(bare, tmp_path):
    """A file that opens but does not answer KVM ioctls (ENOTTY): not usable, say so."""
    (tmp_path / "kvm").write_text("")
    checks = by_name(doctor(bare))
    api = checks["KVM_GET_API_VERSION"]
    assert api.ok is False and api.value.startswith("ioctl failed")
    assert "unicorn" in api.consequence


def test_cpu_flags(bare, tmp_path):
    (tmp_path / "cpuinfo").write_text(
        "processor\t: 0\nflags\t\t: fpu vme vmx hypervisor\n\nprocessor\t: 1\n"
        "flags\t\t: fpu vme vmx hypervisor\n")
    c = by_name(doctor(bare))
    assert c["cpu: vmx/svm"] == Check(
        "cpu: vmx/svm", True, "vmx",
        "hardware virtualization (VT-x or AMD-V): KVM's VMX/SVM paths are real here")
    assert c["cpu: hypervisor flag"].value == "set"
    (tmp_path / "cpuinfo").write_text("flags\t\t: fpu sse2\n")
    c = by_name(doctor(bare))
    assert c["cpu: vmx/svm"].ok is False and c["cpu: vmx/svm"].value == "neither"
    assert "models" in c["cpu: vmx/svm"].consequence
    assert c["cpu: hypervisor flag"].value == "not set"


def test_unreadable_cpuinfo_is_informational(bare):
    c = by_name(doctor(bare))["cpu flags"]
    assert c.ok is None and "unreadable" in c.value


def test_modules_and_nested(bare, tmp_path):
    (tmp_path / "modules").write_text(
        "kvm_intel 413696 0 - Live 0x0000000000000000\n"
        "kvm 1327104 1 kvm_intel, Live 0x0000000000000000\n")
    nested = tmp_path / "sys_module" / "kvm_intel" / "parameters"
    nested.mkdir(parents=True)
    (nested / "nested").write_text("Y\n")
    c = by_name(doctor(bare))
    assert c["kvm modules"] == Check("kvm modules", True, "kvm, kvm_intel", "KVM on Intel VMX")
    assert c["kvm_intel nested"].ok is True and c["kvm_intel nested"].value == "Y"
    (nested / "nested").write_text("N\n")
    n = by_name(doctor(bare))["kvm_intel nested"]
    assert n.ok is False and "model only" in n.consequence


def test_builtin_modules_without_proc_modules(bare, tmp_path):
    """Kernels without module support have no /proc/modules; /sys/module still lists KVM."""
    for m in ("kvm", "kvm_pvm"):
        (tmp_path / "sys_module" / m).mkdir(parents=True)
    c = by_name(doctor(bare))["kvm modules"]
    assert c.ok is True
    assert c.value == "kvm (built-in), kvm_pvm (built-in)"
    assert "PVM" in c.consequence


def test_no_modules(bare):
    c = by_name(doctor(bare))["kvm modules"]
    assert c.ok is False and c.value == "none" and "unicorn" in c.consequence


def test_tap_and_vhost(bare, tmp_path):
    c = by_name(doctor(bare))
    assert c[bare.dev_tun].ok is False and "in-memory" in c[bare.dev_tun].consequence
    assert c[bare.dev_vhost_net].ok is False and "model-only" in c[bare.dev_vhost_net].consequence
    (tmp_path / "tun").write_text("")
    assert by_name(doctor(bare))[bare.dev_tun].ok is True


def test_unicorn_missing(bare, monkeypatch):
    monkeypatch.setitem(sys.modules, "unicorn", None)  # import unicorn -> ImportError
    c = by_name(doctor(bare))["unicorn"]
    assert c.ok is False and "not importable" in c.value
    assert "/dev/kvm" in c.consequence


def test_not_root(bare, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    c = by_name(doctor(bare))["root"]
    assert c == Check("root", False, "euid 1000",
                      "not root: creating tap devices needs root (or CAP_NET_ADMIN); those "
                      "asides skip")


def test_toolchain(bare, monkeypatch):
    monkeypatch.setattr(doctor_mod.shutil, "which", lambda name: None)
    c = by_name(doctor(bare))["gcc + uapi headers"]
    assert c.ok is False and "skip" in c.consequence


def test_check_repr_and_dict_are_stable(bare):
    c = Check("x", None, "v", "c")
    assert repr(c) == "Check(name='x', ok=None, value='v', consequence='c')"
    checks = doctor(bare)
    assert "object at 0x" not in repr(checks)
    assert json.loads(json.dumps([c.to_dict() for c in checks]))[2]["name"] == bare.dev_kvm
    assert [c.name for c in doctor(bare)] == [c.name for c in checks]


def test_format_checks_two_lines_each(bare):
    checks = doctor(bare)
    text = format_checks(checks)
    lines = text.splitlines()
    assert len(lines) == 2 * len(checks)
    assert lines[0].startswith("[--] KVM host") and "none" in lines[0]
    assert lines[2].startswith("[--] KVM MMU") and " -" in lines[2]
    assert lines[4].startswith("[no] ") and bare.dev_kvm in lines[4]
    assert lines[1].strip().startswith("-> no ")
    assert format_checks([Check("a", True, "1", "ok")]) == "[ok] a  1\n        -> ok"


def test_this_machine():
    """On the real machine: structured data, every check explained, names unique."""
    checks = doctor()
    names = [c.name for c in checks]
    assert len(names) == len(set(names))
    for c in checks:
        assert isinstance(c.value, str) and c.value
        assert isinstance(c.consequence, str) and c.consequence
        assert c.ok in (True, False, None)
    dev = Paths().dev_kvm  # /dev/kvm, or $VBOOK_KVM_DEV
    assert names[:3] == ["KVM host", "KVM MMU", dev]
    assert {"unicorn", "root", "kvm modules", "backend auto"} <= set(names)
    if os.access(dev, os.R_OK | os.W_OK):
        by = by_name(checks)
        assert by["KVM_GET_API_VERSION"] == Check("KVM_GET_API_VERSION", True, "12",
                                                  "the stable API every VMM expects")
        assert "KVM_CAP_IMMEDIATE_EXIT" in by


def test_vbook_kvm_dev_points_the_book_elsewhere(monkeypatch):
    monkeypatch.setenv("VBOOK_KVM_DEV", "/nonexistent/kvm")
    assert Paths().dev_kvm == "/nonexistent/kvm"
    host, mmu, first = doctor()[:3]
    assert mmu.value == "-"
    assert host.value.startswith("none (/nonexistent/kvm")
    assert first.name == "/nonexistent/kvm" and first.ok is False
    assert "unicorn" in first.consequence


def test_host_kind_from_the_facts():
    """VMX/SVM from the CPU flags win; PVM from kvm_pvm; none without a usable /dev/kvm."""
    from vbook.host import KINDS, MEANING, classify

    assert classify(True, {"vmx", "fpu"}, True).kind == "VMX"
    assert classify(True, {"svm"}, False).kind == "SVM"
    assert classify(True, set(), True).kind == "PVM"
    assert classify(True, set(), False).kind == "other"
    none = classify(False, {"vmx"}, False, "/dev/kvm does not exist (no KVM module ...)")
    assert none.kind == "none" and none.evidence == "/dev/kvm does not exist"
    assert set(MEANING) == set(KINDS)
    assert none.line().startswith("KVM host: none (/dev/kvm does not exist) — ")


def test_doctor_names_the_host_kind_from_its_paths(tmp_path):
    """The first check reads the same cpuinfo / modules the doctor was pointed at."""
    from vbook.host import MEANING

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu pae\n")
    modules = tmp_path / "modules"
    modules.write_text("kvm_pvm 1 0 - Live 0x0\n")
    paths = Paths(dev_kvm=str(tmp_path / "kvm"), cpuinfo=str(cpuinfo), modules=str(modules),
                  sys_module=str(tmp_path / "sys"))
    host = doctor(paths)[0]
    assert host.name == "KVM host" and host.value.startswith("none (")  # no /dev/kvm there
    assert host.consequence == MEANING["none"]


def test_mmu_mode_follows_the_kind_and_the_module_parameters(tmp_path):
    """EPT unless kvm_intel.ept=N, NPT unless kvm_amd.npt=0, PVM always shadow paging."""
    from vbook.host import mmu_mode

    assert mmu_mode("VMX", str(tmp_path)) == "EPT"  # parameter unreadable: the default, ept=Y
    (tmp_path / "kvm_intel" / "parameters").mkdir(parents=True)
    (tmp_path / "kvm_intel" / "parameters" / "ept").write_text("N\n")
    assert mmu_mode("VMX", str(tmp_path)) == "shadow paging (kvm_intel.ept=0)"
    (tmp_path / "kvm_amd" / "parameters").mkdir(parents=True)
    (tmp_path / "kvm_amd" / "parameters" / "npt").write_text("1\n")
    assert mmu_mode("SVM", str(tmp_path)) == "NPT"
    assert mmu_mode("PVM", str(tmp_path)) == "shadow paging"
    assert mmu_mode("none", str(tmp_path)) == "-" and mmu_mode("other", str(tmp_path)) == "unknown"
