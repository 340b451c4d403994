"""C oracle: every constant, size and offset in vbook.models.kvm_api is what gcc
sees in the installed Linux uapi headers.

One small C program includes <linux/kvm.h>, <linux/kvm_para.h>,
<asm/vmx.h>, <asm/svm.h>, prints ``name value`` for every constant the book
defines (exit reasons, ioctls, hypercalls and their errors, capabilities,
KVM_FEATURE_* bits, struct sizes, ``offsetof(struct kvm_run, …)``), and is
compiled once per session. Each constant is its own test id, so a drift names
itself. The book is pinned to uapi 6.1 (Debian linux-libc-dev 6.1.187,
LINUX_VERSION_CODE 393659); ``test_header_version`` reports the version found.

Skips (with the reason) when gcc or the headers are missing.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from _oracle import run_c

from vbook.backends.base import Regs
from vbook.models import hypercall, kvm_api
from vbook.models.kvm_api import Cap, ExitReason, Hypercall, HypercallError, Ioctl, IoDirection

INCLUDE = "/usr/include"
KVM_H = os.path.join(INCLUDE, "linux", "kvm.h")
KVM_PARA_H = os.path.join(INCLUDE, "linux", "kvm_para.h")
HEADERS = ("linux/version.h", "linux/kvm.h", "linux/kvm_para.h", "asm/vmx.h", "asm/svm.h",
           "asm/kvm_para.h", "errno.h", "stddef.h", "stdio.h")

#: uapi version the Python values were written against (6.1.x)
PINNED = (6, 1)

# ---------------------------------------------------------------------------
# What to check: C expression -> the Python value. Keys are the test ids.

SIZES = {
    "kvm_run": kvm_api.SIZEOF_KVM_RUN,
    "kvm_regs": kvm_api.SIZEOF_KVM_REGS,
    "kvm_sregs": kvm_api.SIZEOF_KVM_SREGS,
    "kvm_userspace_memory_region": kvm_api.SIZEOF_KVM_USERSPACE_MEMORY_REGION,
    "kvm_translation": kvm_api.SIZEOF_KVM_TRANSLATION,
    "kvm_enable_cap": kvm_api.SIZEOF_KVM_ENABLE_CAP,
    "kvm_pit_config": kvm_api.SIZEOF_KVM_PIT_CONFIG,
    "kvm_clock_pairing": hypercall.SIZEOF_KVM_CLOCK_PAIRING,
}


def _expectations() -> dict[str, tuple[str, int, bool]]:
    """test id -> (C expression, Python value, is_macro)."""
    exp: dict[str, tuple[str, int, bool]] = {}

    def macro(name: str, value: int) -> None:
        exp[name] = (name, int(value), True)

    for r in ExitReason:
        macro(f"KVM_EXIT_{r.name}", r)
    for d in IoDirection:
        macro(f"KVM_EXIT_IO_{d.name}", d)
    for i in Ioctl:
        macro(f"KVM_{i.name}", i)
    for h in Hypercall:
        macro(f"KVM_HC_{h.name}", h)
    for e in HypercallError:
        macro(f"KVM_{e.name}", e)
    for c in Cap:
        macro(f"KVM_CAP_{c.name}", c)
    for f in hypercall.PvFeature:
        macro(f"KVM_FEATURE_{f.name}", f)
    macro("KVMIO", kvm_api.KVMIO)
    macro("KVM_API_VERSION", kvm_api.KVM_API_VERSION)
    macro("KVM_PIO_PAGE_OFFSET", kvm_api.KVM_PIO_PAGE_OFFSET)
    macro("KVM_COALESCED_MMIO_PAGE_OFFSET", kvm_api.KVM_COALESCED_MMIO_PAGE_OFFSET)
    macro("KVM_CLOCK_PAIRING_WALLCLOCK", hypercall.KVM_CLOCK_PAIRING_WALLCLOCK)
    macro("EXIT_REASON_VMCALL", hypercall.EXIT_REASON_VMCALL)
    macro("SVM_EXIT_VMMCALL", hypercall.SVM_EXIT_VMMCALL)
    for struct, size in SIZES.items():
        exp[f"sizeof(struct {struct})"] = (f"sizeof(struct {struct})", size, False)
    for member, off in kvm_api.KVM_RUN_OFFSETS.items():
        exp[f"offsetof(kvm_run, {member})"] = (f"offsetof(struct kvm_run, {member})", off, False)
    # the backends pack struct kvm_regs as Regs.FIELDS, 8 bytes each, in order
    for i, reg in enumerate(Regs.FIELDS):
        exp[f"offsetof(kvm_regs, {reg})"] = (f"offsetof(struct kvm_regs, {reg})", 8 * i, False)
    # the kvm backend's struct.Struct layouts (vbook/backends/kvm_structs.py)
    for key, (expr, value) in _kvm_structs().items():
        exp[key] = (expr, value, False)
    return exp


def _kvm_structs() -> dict[str, tuple[str, int]]:
    """Sizes the kvm backend packs with :mod:`struct`; empty until that module exists."""
    try:
        from vbook.backends import kvm_structs as ks
    except ImportError:
        return {}
    table = {
        "kvm_structs.REGS": ("sizeof(struct kvm_regs)", "REGS"),
        "kvm_structs.SEGMENT": ("sizeof(struct kvm_segment)", "SEGMENT"),
        "kvm_structs.DTABLE": ("sizeof(struct kvm_dtable)", "DTABLE"),
        "kvm_structs.SIZEOF_SREGS": ("sizeof(struct kvm_sregs)", "SIZEOF_SREGS"),
        "kvm_structs.MEMORY_REGION": ("sizeof(struct kvm_userspace_memory_region)",
                                      "MEMORY_REGION"),
        "kvm_structs.TRANSLATION": ("sizeof(struct kvm_translation)", "TRANSLATION"),
        "kvm_structs.CPUID2_HEADER": ("sizeof(struct kvm_cpuid2)", "CPUID2_HEADER"),
        "kvm_structs.SIZEOF_CPUID_ENTRY2": ("sizeof(struct kvm_cpuid_entry2)",
                                            "SIZEOF_CPUID_ENTRY2"),
        "kvm_structs.RUN_IO": ("sizeof(((struct kvm_run *)0)->io)", "RUN_IO"),
    }
    out = {}
    for key, (expr, attr) in table.items():
        v = getattr(ks, attr, None)
        if v is not None:
            out[key] = (expr, v if isinstance(v, int) else v.size)
    for i, seg in enumerate(getattr(ks, "SEGMENT_NAMES", ())):
        out[f"kvm_structs.SEGMENT_NAMES[{i}]"] = (f"offsetof(struct kvm_sregs, {seg})", 24 * i)
    return out


EXPECTED = _expectations()


def _c_program() -> str:
    lines = [f"#include <{h}>" for h in HEADERS]
    lines += ["int main(void) {",
              '  printf("LINUX_VERSION_CODE %llu\\n", (unsigned long long)LINUX_VERSION_CODE);']
    for key, (expr, _value, is_macro) in EXPECTED.items():
        line = f'  printf("%s %llu\\n", "{key}", (unsigned long long)({expr}));'
        if is_macro:  # a macro the header lacks prints MISSING instead of breaking the build
            lines += [f"#ifdef {expr}", line, "#else", f'  printf("{key} MISSING\\n");', "#endif"]
        else:
            lines.append(line)
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def _skip_reason() -> str | None:
    if shutil.which("gcc") is None:
        return "no C compiler: gcc not on PATH"
    for h in (KVM_H, KVM_PARA_H, os.path.join(INCLUDE, "linux", "version.h")):
        if not os.path.exists(h):
            return f"Linux uapi header {h} missing (install linux-libc-dev)"
    return None


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict[str, int | None]:
    """Compile and run the C program once; name -> value (None when the macro is missing)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    return run_c(tmp_path_factory.mktemp("kvm_oracle"), _c_program())


def _version(code: int) -> tuple[int, int, int]:
    return code >> 16, (code >> 8) & 0xFF, code & 0xFF


def test_header_version(oracle):
    """The headers are Linux 6.x; the book's values were checked against 6.1.187."""
    major, minor, sub = _version(oracle["LINUX_VERSION_CODE"])
    assert major >= 6, f"uapi headers are Linux {major}.{minor}.{sub}, older than the book's 6.1"


@pytest.mark.parametrize("key", list(EXPECTED))
def test_value_matches_header(oracle, key):
    expr, value, _ = EXPECTED[key]
    got = oracle[key]
    major, minor, sub = _version(oracle["LINUX_VERSION_CODE"])
    assert got is not None, f"{expr} is not defined in the uapi headers of Linux {major}.{minor}.{sub}"
    assert got == value, f"{expr}: header says {got} ({got:#x}), vbook says {value} ({value:#x})"


# ---------------------------------------------------------------------------
# Coverage: the enums hold *every* exit reason / hypercall of the header.

#: ``#define KVM_EXIT_*`` macros in linux/kvm.h that are NOT exit reasons:
NOT_EXIT_REASONS = {
    "IO_IN", "IO_OUT",                            # kvm_run.io.direction values
    "HYPERV_SYNIC", "HYPERV_HCALL", "HYPERV_SYNDBG",  # struct kvm_hyperv_exit.type
    "XEN_HCALL",                                  # struct kvm_xen_exit.type
}


def _defines(path: str, prefix: str) -> dict[str, int]:
    pat = re.compile(rf"^\s*#\s*define\s+{prefix}(\w+)\s+(\w+)", re.M)
    with open(path) as f:
        text = f.read()
    out = {}
    for name, value in pat.findall(text):
        out[name] = int(value, 0) if re.fullmatch(r"0[xX][0-9a-fA-F]+|\d+", value) else -1
    return out


def _pinned_or_skip(oracle, missing: set[str], what: str) -> None:
    major, minor, sub = _version(oracle["LINUX_VERSION_CODE"])
    if missing and (major, minor) > PINNED:
        pytest.skip(f"uapi headers are Linux {major}.{minor}.{sub}, newer than the book's "
                    f"{PINNED[0]}.{PINNED[1]}: {what} {sorted(missing)} not modelled yet")


def test_exit_reason_covers_header(oracle):
    header = {n: v for n, v in _defines(KVM_H, "KVM_EXIT_").items() if n not in NOT_EXIT_REASONS}
    ours = {r.name: int(r) for r in ExitReason}
    missing = set(header) - set(ours)
    _pinned_or_skip(oracle, missing, "KVM_EXIT_")
    assert not missing, f"ExitReason lacks {sorted(missing)}"
    assert header == ours
    # the exclusions are real macros of this header (a stale list would hide nothing)
    assert NOT_EXIT_REASONS <= set(_defines(KVM_H, "KVM_EXIT_"))


def test_exit_reasons_are_contiguous():
    """KVM numbers exit reasons 0, 1, 2, … with no gaps (uapi 6.1: 0..37)."""
    assert sorted(int(r) for r in ExitReason) == list(range(len(ExitReason)))


def test_hypercall_covers_header(oracle):
    header = _defines(KVM_PARA_H, "KVM_HC_")
    ours = {h.name: int(h) for h in Hypercall}
    missing = set(header) - set(ours)
    _pinned_or_skip(oracle, missing, "KVM_HC_")
    assert header == ours


def test_hypercall_errors_cover_header(oracle):
    """Every ``KVM_E*`` error of linux/kvm_para.h is a HypercallError (``KVM_ENOSYS`` -> ENOSYS)."""
    header = {"E" + n for n in _defines(KVM_PARA_H, "KVM_E")}
    assert header == {e.name for e in HypercallError}
