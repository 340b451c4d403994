import gzip

from vbook import kconfig

SAMPLE = """\
CONFIG_KVM=y
# CONFIG_KVM_INTEL is not set
CONFIG_KVM_AMD=m
CONFIG_VHOST_NET=m
CONFIG_VIRTIO=y
"""


def test_check_reports_y_m_missing():
    got = {s.option.name: s.value for s in kconfig.check(SAMPLE)}
    assert got["CONFIG_KVM"] == "y" and got["CONFIG_KVM_AMD"] == "m"
    assert got["CONFIG_KVM_INTEL"] == "missing" and got["CONFIG_TUN"] == "missing"
    assert len(got) == len(kconfig.OPTIONS)


def test_repr_is_one_stable_line():
    s = kconfig.check(SAMPLE)[0]
    assert repr(s).split() [:3] == ["CONFIG_KVM", "y", "host"]


def test_running_config_found_or_explained(monkeypatch, tmp_path):
    text, where = kconfig.read_running_config()
    assert (text is None) == ("not readable" in where)
    gz = tmp_path / "config.gz"
    real_gzip_open = gzip.open
    with real_gzip_open(gz, "wt") as f:
        f.write(SAMPLE)
    monkeypatch.setattr(kconfig.os.path, "exists", lambda p: p == "/proc/config.gz")
    monkeypatch.setattr(kconfig.gzip, "open", lambda p, mode: real_gzip_open(gz, mode))
    assert kconfig.read_running_config() == (SAMPLE, "/proc/config.gz")
    monkeypatch.setattr(kconfig.os.path, "exists", lambda p: False)
    text, where = kconfig.read_running_config()
    assert text is None and "not readable" in where
