import pytest

from vbook import backends
from vbook.errors import BackendUnavailable


def test_explicit_backend_is_kept(monkeypatch):
    monkeypatch.setenv("VBOOK_BACKEND", "kvm")
    assert backends.pick("unicorn") == "unicorn"


def test_env_forces_auto(monkeypatch):
    monkeypatch.setenv("VBOOK_BACKEND", "unicorn")
    assert backends.pick("auto") == "unicorn"
    monkeypatch.setenv("VBOOK_BACKEND", "qemu")
    with pytest.raises(BackendUnavailable, match="VBOOK_BACKEND='qemu'"):
        backends.pick()


def test_auto_prefers_kvm_when_usable(monkeypatch):
    monkeypatch.delenv("VBOOK_BACKEND", raising=False)
    monkeypatch.setattr(backends, "available", lambda: {"unicorn": None, "kvm": None})
    assert backends.pick() == "kvm"
    monkeypatch.setattr(backends, "available",
                        lambda: {"unicorn": None, "kvm": "/dev/kvm does not exist"})
    assert backends.pick() == "unicorn"


def test_unknown_backend_is_typed():
    with pytest.raises(BackendUnavailable, match="no such backend"):
        backends.open_vcpu(None, "bochs")
