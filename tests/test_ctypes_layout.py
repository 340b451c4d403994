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


def test_every_ioctl_has_its_fd_kind():
    from vbook.models.kvm_api import IOCTL_FD, Ioctl

    assert set(IOCTL_FD) == {i.name for i in Ioctl}
    assert set(IOCTL_FD.values()) == {"system", "vm", "vcpu"}
    assert IOCTL_FD["RUN"] == "vcpu" and IOCTL_FD["CREATE_VCPU"] == "vm"
