"""KVM's binary statistics (vbook.backends.kvm_stats): the uapi layout (C oracle), the parser
on a synthetic stats blob (no /dev/kvm needed), the errors, and on real KVM the descriptors
of a VM and a vCPU and what the ``hello`` guest does to them.

What a run of ``hello`` must move is what /work/shared/reference/machine.md measured as
deterministic on the PVM host (every ring-0 instruction emulated): ``halt_exits`` +1,
``insn_emulation`` = the instructions executed, ``io_exits`` and ``pf_*`` never move.
Those asserts are made only on a PVM host; the rest skip with a reason elsewhere.
"""

from __future__ import annotations

import errno
import os
import re
import struct

import pytest
from _oracle import need_c, printf_lines, program, run_c

from vbook.backends import kvm_stats
from vbook.backends.kvm_stats import (
    DESC,
    HEADER,
    KVM_CAP_BINARY_STATS_FD,
    KVM_GET_STATS_FD,
    StatsBase,
    StatsFd,
    StatsFormatError,
    StatsType,
    StatsUnit,
    check_available,
    delta,
    open_stats,
    vcpu_stats,
    vm_stats,
)
from vbook.errors import BackendUnavailable, KvmError, VbookError
from vbook.guests import ALL
from vbook.guests import hello as hello_mod
from vbook.models.kvm_api import ExitReason

KVM_H = "/usr/include/linux/kvm.h"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------------------
# C oracle: the Python constants and struct layouts are what gcc sees in linux/kvm.h

MACROS = {
    "KVM_GET_STATS_FD": KVM_GET_STATS_FD,
    "KVM_CAP_BINARY_STATS_FD": KVM_CAP_BINARY_STATS_FD,
    "KVM_STATS_TYPE_SHIFT": kvm_stats.KVM_STATS_TYPE_SHIFT,
    "KVM_STATS_TYPE_MASK": kvm_stats.KVM_STATS_TYPE_MASK,
    "KVM_STATS_UNIT_SHIFT": kvm_stats.KVM_STATS_UNIT_SHIFT,
    "KVM_STATS_UNIT_MASK": kvm_stats.KVM_STATS_UNIT_MASK,
    "KVM_STATS_BASE_SHIFT": kvm_stats.KVM_STATS_BASE_SHIFT,
    "KVM_STATS_BASE_MASK": kvm_stats.KVM_STATS_BASE_MASK,
    "KVM_STATS_TYPE_MAX": max(StatsType),
    "KVM_STATS_UNIT_MAX": max(StatsUnit),
    "KVM_STATS_BASE_MAX": max(StatsBase),
    **{f"KVM_STATS_TYPE_{m.name}": int(m) for m in StatsType},
    **{f"KVM_STATS_UNIT_{m.name}": int(m) for m in StatsUnit},
    **{f"KVM_STATS_BASE_{m.name}": int(m) for m in StatsBase},
}
#: (C expression, Python value): struct sizes and every member's offset, packed by HEADER/DESC
LAYOUT = {
    "sizeof(struct kvm_stats_header)": HEADER.size,
    "sizeof(struct kvm_stats_desc)": DESC.size,  # name[] is a flexible array: not counted
    "offsetof(struct kvm_stats_desc, name)": DESC.size,
    "sizeof(((struct kvm_stats_desc *)0)->exponent)": 2,
    "sizeof(((struct kvm_stats_desc *)0)->size)": 2,
    # exponent is signed (an s16): -1 stored in it reads back below 0
    "({ struct kvm_stats_desc d = {0}; d.exponent = -1; d.exponent < 0; })": 1,
}
for _i, _f in enumerate(("flags", "name_size", "num_desc", "id_offset", "desc_offset",
                         "data_offset")):
    LAYOUT[f"offsetof(struct kvm_stats_header, {_f})"] = 4 * _i
for _f, _off in (("flags", 0), ("exponent", 4), ("size", 6), ("offset", 8), ("bucket_size", 12)):
    LAYOUT[f"offsetof(struct kvm_stats_desc, {_f})"] = _off


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict[str, int | None]:
    need_c(KVM_H)
    body = printf_lines({k: k for k in MACROS}, guard_macros=True) + printf_lines(
        {k: k for k in LAYOUT})
    return run_c(tmp_path_factory.mktemp("kvm_stats_oracle"),
                 program(["stddef.h", "linux/kvm.h"], body))


@pytest.mark.parametrize("key", list(MACROS) + list(LAYOUT))
def test_matches_header(oracle, key):
    want = MACROS.get(key, LAYOUT.get(key))
    got = oracle[key]
    assert got is not None, f"{key} is not defined in {KVM_H}"
    assert got == want, f"{key}: header says {got} ({got:#x}), vbook says {want} ({want:#x})"


def test_enums_cover_header():
    """Every KVM_STATS_{TYPE,UNIT,BASE}_* value macro of the header is a member."""
    if not os.path.exists(KVM_H):
        pytest.skip(f"uapi header {KVM_H} missing (install linux-libc-dev)")
    text = open(KVM_H).read()
    for prefix, enum in (("TYPE", StatsType), ("UNIT", StatsUnit), ("BASE", StatsBase)):
        names = set(re.findall(rf"#define\s+KVM_STATS_{prefix}_(\w+)", text)) - {"SHIFT", "MASK",
                                                                                  "MAX"}
        assert names == {m.name for m in enum}, prefix


# ---------------------------------------------------------------------------
# A synthetic stats blob, laid out as KVM lays it out, with descriptors out of offset order

NAME_SIZE = 16
#: (name, flags, exponent, size, offset, bucket_size, value(s))
SYNTH = [
    ("exits", StatsType.CUMULATIVE | StatsUnit.NONE, 0, 1, 8, 0, 1234),
    ("pages_4k", StatsType.INSTANT, 0, 1, 0, 0, 7),  # offset 0 but listed second
    ("wait_ns", StatsType.CUMULATIVE | StatsUnit.SECONDS | StatsBase.POW10, -9, 1, 16, 0, 2**63 + 5),
    ("wait_hist", StatsType.LOG_HIST | StatsUnit.SECONDS, -9, 4, 48, 0, [1, 0, 3, 2**64 - 1]),
    ("lin_hist", StatsType.LINEAR_HIST | StatsUnit.BYTES | StatsBase.POW2, 10, 2, 32, 64, [5, 6]),
    ("blocking", StatsType.INSTANT | StatsUnit.BOOLEAN, 0, 1, 80, 0, 1),
    ("one_bucket", StatsType.LOG_HIST, 0, 1, 88, 0, [9]),
]


def synth_blob(entries=SYNTH, name_size=NAME_SIZE, ident=b"kvm-42/vcpu-3") -> bytes:
    id_offset = HEADER.size
    desc_offset = id_offset + name_size
    data_offset = desc_offset + len(entries) * (DESC.size + name_size)
    descs, data = b"", bytearray(max(e[4] + 8 * e[3] for e in entries))
    for name, flags, exponent, size, offset, bucket, value in entries:
        descs += DESC.pack(int(flags), exponent, size, offset, bucket)
        descs += name.encode().ljust(name_size, b"\0")
        values = value if isinstance(value, list) else [value]
        struct.pack_into(f"<{size}Q", data, offset, *values)
    head = HEADER.pack(0, name_size, len(entries), id_offset, desc_offset, data_offset)
    return head + ident.ljust(name_size, b"\0") + descs + bytes(data)


@pytest.fixture
def blob_fd(tmp_path):
    def make(blob: bytes) -> int:
        path = tmp_path / f"stats{len(list(tmp_path.iterdir()))}"
        path.write_bytes(blob)
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return make


def test_synthetic_layout(blob_fd):
    with StatsFd(blob_fd(synth_blob())) as st:
        assert st.id == "kvm-42/vcpu-3" and st.kind == "vcpu-3"
        assert st.header.num_desc == 7 and st.header.desc_stride == DESC.size + NAME_SIZE
        assert st.names == [e[0] for e in SYNTH]  # fd order, not offset order
        w = st["wait_ns"]
        assert (w.type, w.unit, w.base, w.exponent, w.size, w.offset) == (
            StatsType.CUMULATIVE, StatsUnit.SECONDS, StatsBase.POW10, -9, 1, 16)
        assert w.scale == 1e-9 and not w.is_histogram
        h = st["lin_hist"]
        assert (h.type, h.unit, h.base, h.bucket_size, h.scale) == (
            StatsType.LINEAR_HIST, StatsUnit.BYTES, StatsBase.POW2, 64, 1024.0)
        assert st["blocking"].unit is StatsUnit.BOOLEAN and "nope" not in st and len(st) == 7
        assert repr(st) == "StatsFd('vcpu-3', 7 stats)"
        assert repr(h) == ("StatsDesc('lin_hist', LINEAR_HIST, BYTES, POW2**10, size=2, offset=32, "
                           "bucket_size=64)")


def test_synthetic_values(blob_fd):
    with StatsFd(blob_fd(synth_blob())) as st:
        values = st.read()
    assert values == {e[0]: e[6] for e in SYNTH}
    assert values["one_bucket"] == [9]  # a histogram is a list even with one bucket
    assert isinstance(values["exits"], int)


def test_vm_id_and_unknown_flags(blob_fd):
    entries = [("future", 0x9 | 0x70 | 0x300, 0, 1, 0, 0, 1)]  # values newer than uapi 6.1
    with StatsFd(blob_fd(synth_blob(entries, ident=b"kvm-42"))) as st:
        d = st["future"]
        assert (d.type, d.unit, d.base) == (9, 0x70, 0x300) and st.kind == "vm"
        assert st.read() == {"future": 1}
        assert repr(d) == "StatsDesc('future', 9, 112, 768**0, size=1, offset=0)"


def test_read_is_one_pread_of_the_data_block(blob_fd, monkeypatch):
    st = StatsFd(blob_fd(synth_blob()))
    calls = []
    real = os.pread
    monkeypatch.setattr(kvm_stats.os, "pread", lambda fd, n, off: calls.append((n, off)) or
                        real(fd, n, off))
    st.read()
    assert calls == [(96, st.header.data_offset)]
    st.close()


def test_delta():
    before = {"exits": 3, "hist": [1, 2], "pages_4k": 5, "gone": 1}
    after = {"exits": 10, "hist": [1, 4], "pages_4k": 2, "new": 1}
    assert delta(before, after) == {"exits": 7, "hist": [0, 2], "pages_4k": -3}
    assert delta(after, after, changed_only=True) == {}
    assert delta({"a": 1, "h": [0]}, {"a": 1, "h": [1]}, changed_only=True) == {"h": [1]}
    with pytest.raises(VbookError, match="'h' is \\[0\\] before and \\[1, 2\\] after"):
        delta({"h": [0]}, {"h": [1, 2]})


def _corrupt(blob: bytes, at: int, fmt: str, value) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, at, value)
    return bytes(b)


D0 = HEADER.size + NAME_SIZE  # the first descriptor


@pytest.mark.parametrize("blob, match", [
    (synth_blob()[:10], "read 10 of 24 bytes"),
    (synth_blob()[:200], "read 200 of"),
    (_corrupt(synth_blob(), 4, "<I", 0), "name_size 0"),
    (_corrupt(synth_blob(), 8, "<I", 10**6), "num_desc 1000000"),
    (_corrupt(synth_blob(), 16, "<I", 4), "desc_offset 4 points into the header"),
    (_corrupt(synth_blob(), D0 + 8, "<I", 12), "offset 12"),
    (_corrupt(synth_blob(), D0 + 6, "<H", 0), "size 0"),
    (_corrupt(synth_blob(), D0 + DESC.size, "<16s", b"x" * 16), "no NUL"),
    (_corrupt(synth_blob(), D0 + 2 * (DESC.size + NAME_SIZE) - NAME_SIZE, "<16s", b"exits"),
     "'exits' appears twice"),
])
def test_malformed_blob_is_a_typed_error_and_closes(blob_fd, blob, match):
    fd = blob_fd(blob)
    n = _open_fds()
    with pytest.raises(StatsFormatError, match=match):
        StatsFd(fd)
    assert _open_fds() == n - 1  # the fd it was given is closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_short_data_block(blob_fd):
    blob = synth_blob()
    with StatsFd(blob_fd(blob[:-8])) as st, pytest.raises(StatsFormatError, match="read 88 of 96"):
        st.read()


def test_close_is_idempotent_and_counted(blob_fd):
    n = _open_fds()
    st = StatsFd(blob_fd(synth_blob()))
    assert _open_fds() == n + 1
    st.close()
    st.close()
    assert _open_fds() == n and st.closed and repr(st) == "StatsFd('vcpu-3', 7 stats, closed)"
    with pytest.raises(VbookError, match="closed"):
        st.read()


# ---------------------------------------------------------------------------
# Errors without KVM


def test_missing_kvm_is_a_reason(monkeypatch):
    monkeypatch.setenv("VBOOK_KVM_DEV", "/nonexistent/kvm")
    with pytest.raises(BackendUnavailable, match="/nonexistent/kvm does not exist"):
        check_available()


def test_not_a_kvm_fd(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(KvmError) as e:
            open_stats(fd)
        assert e.value.ioctl == "KVM_GET_STATS_FD" and e.value.errno == errno.ENOTTY

        class NotKvm:  # has a "VM fd" that answers no KVM_CHECK_EXTENSION: cap taken as 0
            vm_fd = vcpu_fd = fd
        with pytest.raises(BackendUnavailable, match="KVM_CAP_BINARY_STATS_FD is 0"):
            vm_stats(NotKvm())
    finally:
        os.close(fd)


def test_closed_vcpu():
    class Closed:
        vm_fd = vcpu_fd = -1
    with pytest.raises(VbookError, match="closed"):
        vcpu_stats(Closed())


# ---------------------------------------------------------------------------
# Real KVM

try:
    check_available()
    UNUSABLE = None
except BackendUnavailable as e:
    UNUSABLE = e.reason

needs_kvm = pytest.mark.skipif(UNUSABLE is not None, reason=f"KVM stats: {UNUSABLE}")

VM_NAMES = {"remote_tlb_flush", "remote_tlb_flush_requests", "mmu_shadow_zapped", "mmu_pte_write",
            "mmu_pde_zapped", "mmu_flooded", "mmu_recycled", "mmu_cache_miss", "mmu_unsync",
            "pages_4k", "pages_2m", "pages_1g", "nx_lpage_splits", "max_mmu_rmap_size",
            "max_mmu_page_hash_collisions"}
VCPU_NAMES = {"exits", "io_exits", "mmio_exits", "halt_exits", "signal_exits", "irq_exits",
              "insn_emulation", "insn_emulation_fail", "hypercalls", "pf_taken", "pf_fixed",
              "pf_emulate", "pf_spurious", "pf_fast", "pf_guest", "tlb_flush", "invlpg",
              "halt_wait_ns", "halt_wait_hist", "blocking", "guest_mode"}


@pytest.fixture
def vcpu():
    from vbook.backends.kvm import KvmVcpu

    v = KvmVcpu.from_guest(ALL["hello"])
    yield v
    v.close()


def _host_kind() -> str:
    from vbook.host import detect

    return detect().kind


@needs_kvm
def test_vm_descriptors(vcpu):
    with vm_stats(vcpu) as st:
        assert VM_NAMES <= set(st.names) and st.kind == "vm"
        assert st.id == f"kvm-{os.getpid()}"
        types = {d.name: d.type for d in st.descriptors}
        assert types["mmu_shadow_zapped"] is StatsType.CUMULATIVE
        assert types["pages_4k"] is StatsType.INSTANT and types["mmu_unsync"] is StatsType.INSTANT
        assert types["max_mmu_rmap_size"] is StatsType.PEAK
        offsets = [d.offset for d in st.descriptors]
        values = st.read()
        assert set(values) == set(st.names) and all(isinstance(v, int) for v in values.values())
        if _host_kind() == "PVM":  # machine.md: 16 descriptors, data at 1096, not in offset order
            assert len(st) == 16 and st.header.data_offset == 1096 and st.header.name_size == 48
            assert offsets != sorted(offsets)


@needs_kvm
def test_vcpu_descriptors(vcpu):
    with vcpu_stats(vcpu) as st:
        assert VCPU_NAMES <= set(st.names) and st.kind == "vcpu-0"
        wait, hist = st["halt_wait_ns"], st["halt_wait_hist"]
        assert (wait.unit, wait.base, wait.exponent) == (StatsUnit.SECONDS, StatsBase.POW10, -9)
        assert hist.type is StatsType.LOG_HIST and hist.size > 1
        assert st["blocking"].unit is StatsUnit.BOOLEAN
        values = st.read()
        assert isinstance(values["halt_wait_hist"], list) and len(values["halt_wait_hist"]) == hist.size
        if _host_kind() == "PVM":
            assert len(st) == 47 and st.header.data_offset == 3080


def _run_to_hlt(v) -> int:
    for n in range(1, 100):
        if v.run().reason == ExitReason.HLT:
            return n
    raise AssertionError("hello did not reach HLT in 100 exits")


#: instructions ``hello`` executes: mov dx, mov si; per byte lodsb, test, jz, out, jmp;
#: then lodsb, test, jz (the NUL) and hlt
HELLO_INSNS = 2 + 5 * len(hello_mod.MESSAGE) + 3 + 1


@needs_kvm
def test_hello_moves_the_counters(vcpu):
    with vm_stats(vcpu) as vs, vcpu_stats(vcpu) as cs:
        vm0, cpu0 = vs.read(), cs.read()
        runs = _run_to_hlt(vcpu)
        dvm, dcpu = delta(vm0, vs.read()), delta(cpu0, cs.read())
    assert runs == len(hello_mod.MESSAGE) + 1
    assert dcpu["halt_exits"] == 1  # one HLT (no in-kernel irqchip: it returns at once)
    assert dcpu["insn_emulation_fail"] == 0 and dcpu["hypercalls"] == 0
    assert dcpu["mmio_exits"] == 0  # hello touches no MMIO
    assert dcpu["exits"] >= runs  # every return to user space is an exit
    if _host_kind() != "PVM":
        pytest.skip("the exact counts below were measured on a PVM host (machine.md); this "
                    f"host is {_host_kind()}: on VMX an OUT is an io_exit and nothing is emulated")
    assert dcpu["io_exits"] == 0  # PVM never counts io_exits, even for 12 OUTs
    assert dcpu["insn_emulation"] == HELLO_INSNS == 66  # every ring-0 instruction emulated
    for name in ("pf_taken", "pf_fixed", "pf_emulate", "pf_spurious", "pf_fast", "pf_guest"):
        assert dcpu[name] == 0, name  # ring-0 code: no shadow page faults
    assert dvm["mmu_unsync"] == 0 and dvm["mmu_flooded"] == 0 and dvm["mmu_shadow_zapped"] == 0


@needs_kvm
def test_every_fd_closed():
    from vbook.backends.kvm import KvmVcpu

    n = _open_fds()
    v = KvmVcpu.from_guest(ALL["hello"])
    opened = _open_fds()
    vs, cs = vm_stats(v), vcpu_stats(v)
    assert _open_fds() == opened + 2
    with vm_stats(v) as extra:
        extra.read()
    assert _open_fds() == opened + 2
    _run_to_hlt(v)
    cs.read()
    vs.close()
    cs.close()
    assert _open_fds() == opened
    v.close()
    assert _open_fds() == n
    with pytest.raises(VbookError, match="closed"):
        vm_stats(v)
