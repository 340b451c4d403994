import pytest

from vbook.models.ctypes_layout import KVM_RUN_UNION, declaration, kvm_run_offset
from vbook.models.kvm_api import KVM_RUN_OFFSETS

PATHS = [f"{m}.{f.name}" for m, fs in KVM_RUN_UNION.items() for f in fs
         if f"{m}.{f.name}" in KVM_RUN_OFFSETS]


@pytest.mark.parametrize("path", PATHS)
def test_layout_rules_give_the_compiled_offsets(path):
    assert kvm_run_offset(path) == KVM_RUN_OFFSETS[path]


def test_enough_paths_are_checked():
    assert {"io.port", "io.data_offset", "mmio.len", "mmio.is_write", "hypercall.ret"} <= set(PATHS)


def test_declaration_reads_like_the_header():
    assert "__u16 port;" in declaration("io") and "__u8 data[8];" in declaration("mmio")


def test_every_ioctl_has_its_fd_kinds():
    from vbook.models.kvm_api import IOCTL_FD, Ioctl

    assert set(IOCTL_FD) == {i.name for i in Ioctl}
    assert {k for kinds in IOCTL_FD.values() for k in kinds} == {"system", "vm", "vcpu"}
    assert IOCTL_FD["RUN"] == ("vcpu",) and IOCTL_FD["CREATE_VCPU"] == ("vm",)
    assert set(IOCTL_FD["CHECK_EXTENSION"]) == {"system", "vm"}
    assert set(IOCTL_FD["ENABLE_CAP"]) == {"vcpu", "vm"}


def _api_rst_types() -> dict[str, set[str]]:
    """ioctl name -> the fd kinds of its ":Type:" lines in Linux 6.1's api.rst."""
    import re

    from _sources import LINUX_6_1, LINUX_6_1_REV, git_show

    rst = git_show(LINUX_6_1, LINUX_6_1_REV, "Documentation/virt/kvm/api.rst")
    out: dict[str, set[str]] = {}
    # a section: "4.NN KVM_A, KVM_B" / dashes / fields until the next section
    for m in re.finditer(r"\n4\.\d+ (KVM_[A-Z0-9_, ]+)\n-+\n(.*?)(?=\n4\.\d+ KVM_|\Z)", rst, re.S):
        kinds = {k.strip().removesuffix(" ioctl").split(" (")[0]
                 for t in re.findall(r":Type: (.*)", m.group(2)) for k in t.split(",")}
        for name in m.group(1).split(","):
            out.setdefault(name.strip().removeprefix("KVM_"), set()).update(kinds)
    return out


def test_ioctl_fd_kinds_match_the_api_documentation():
    """IOCTL_FD says what Documentation/virt/kvm/api.rst (v6.1-rc7) says, for every ioctl."""
    from vbook.models.kvm_api import IOCTL_FD

    doc = _api_rst_types()
    # api.rst has no section of its own for KVM_SET_CPUID2: section 4.20 KVM_SET_CPUID
    # documents both ("should use the KVM_SET_CPUID2 ioctl if available")
    section = {"SET_CPUID2": "SET_CPUID"}
    for name, kinds in IOCTL_FD.items():
        where = section.get(name, name)
        assert where in doc, f"KVM_{where} has no section in api.rst"
        assert set(kinds) == doc[where], f"KVM_{name}: api.rst says {sorted(doc[where])}"
