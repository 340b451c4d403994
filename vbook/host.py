"""Which kind of host gave the real-KVM figures: VMX, SVM, PVM, other, or none.

The book is about Linux 6.1 on Intel VMX. A reader's ``/dev/kvm`` may be
something else: AMD SVM, or — on the machine the book was written on — PVM
(the ``kvm_pvm`` module: KVM with no hardware virtualization at all, on
shadow paging, where every ring-0 guest instruction is emulated). Its exits
can differ from VMX in details the book teaches (where RIP is at an ``OUT``
exit, whether ``VMCALL`` completes), so every chapter that shows real-KVM
output says in one line which kind of host it came from: :func:`host_line`.

How the kind is decided (nothing here changes the machine):

* no usable ``/dev/kvm`` (``vbook.backends.available()``) → ``"none"``;
* the CPU flags in ``/proc/cpuinfo`` have ``vmx`` → ``"VMX"``, ``svm`` → ``"SVM"``;
* else a ``kvm_pvm`` module (``/proc/modules`` or ``/sys/module/kvm_pvm``) → ``"PVM"``;
* else ``"other"`` (KVM answers, but neither VT-x, AMD-V nor PVM is visible).

A CPU flag wins over ``kvm_pvm``: a host with VT-x runs KVM on VMX even if a
PVM module is also built in.

How KVM translates guest memory on the host (:func:`mmu_mode`) follows from
the kind: VMX uses EPT unless ``kvm_intel.ept=0``, SVM uses NPT unless
``kvm_amd.npt=0`` (``/sys/module/<module>/parameters``), and PVM always
uses shadow paging (it has no TDP hardware) — which is why on such a host a
guest's page faults show up in KVM's shadow-paging counters (``pf_fixed``,
``mmu_unsync`` …) and on an EPT host as EPT violations instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

KINDS = ("VMX", "SVM", "PVM", "other", "none")

#: what each kind means for the figures a chapter shows
MEANING = {
    "VMX": "Intel VT-x: the hardware this book describes (kvm_intel)",
    "SVM": "AMD-V: hardware-assisted like VMX, but AMD's exit codes and handlers (kvm_amd)",
    "PVM": "KVM without VMX/SVM (kvm_pvm): shadow paging, every ring-0 guest instruction "
           "emulated; exits can differ from VMX in detail",
    "other": "KVM answers, but no VT-x/AMD-V flag and no kvm_pvm module: an emulated or "
             "unknown kind of KVM",
    "none": "no usable /dev/kvm: guests run on unicorn, which follows Linux 6.1 on VMX",
}


@dataclass(frozen=True)
class Host:
    """The kind of host (one of :data:`KINDS`) and the evidence for it."""

    kind: str
    evidence: str

    def line(self) -> str:
        """One line for a chapter: which host real-KVM figures come from, and what that means."""
        if self.kind == "none":
            return f"KVM host: none ({self.evidence}) — {MEANING['none']}"
        return f"KVM host: {self.kind} ({self.evidence}) — {MEANING[self.kind]}"

    def __repr__(self) -> str:
        return f"Host({self.kind!r}, {self.evidence!r})"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The ``flags`` of every CPU in ``cpuinfo`` (empty if it cannot be read)."""
    flags: set[str] = set()
    for line in _read(cpuinfo).splitlines():
        if line.startswith("flags") and ":" in line:
            flags |= set(line.split(":", 1)[1].split())
    return flags


def has_pvm(modules: str = "/proc/modules", sys_module: str = "/sys/module") -> bool:
    """Is a ``kvm_pvm`` module loaded or built in?"""
    loaded = {ln.split()[0] for ln in _read(modules).splitlines() if ln.strip()}
    return "kvm_pvm" in loaded or os.path.isdir(os.path.join(sys_module, "kvm_pvm"))


def classify(kvm_usable: bool, flags: set[str], pvm: bool, why_not: str = "") -> Host:
    """The decision of the module docstring, on given facts (pure: tests feed it)."""
    if not kvm_usable:  # the reason's first clause: "/dev/kvm does not exist", ...
        return Host("none", (why_not or "/dev/kvm cannot be used").split(" (")[0].split(":")[0])
    if "vmx" in flags:
        return Host("VMX", "cpu flag vmx")
    if "svm" in flags:
        return Host("SVM", "cpu flag svm")
    if pvm:
        return Host("PVM", "kvm_pvm module, no vmx/svm cpu flag")
    return Host("other", "no vmx/svm cpu flag, no kvm_pvm module")


def detect(cpuinfo: str = "/proc/cpuinfo", modules: str = "/proc/modules",
           sys_module: str = "/sys/module") -> Host:
    """This machine's :class:`Host` (``VBOOK_KVM_DEV=/nonexistent`` makes it ``"none"``)."""
    from vbook.backends import available

    why = available().get("kvm")
    return classify(why is None, cpu_flags(cpuinfo), has_pvm(modules, sys_module), why or "")


def mmu_mode(kind: str, sys_module: str = "/sys/module") -> str:
    """How this KVM maps guest memory: "EPT", "NPT", "shadow paging" or "-" (no KVM)."""
    def param(module: str, name: str) -> str:
        return _read(os.path.join(sys_module, module, "parameters", name)).strip()

    if kind == "VMX":
        return "shadow paging (kvm_intel.ept=0)" if param("kvm_intel", "ept") in ("N", "0") \
            else "EPT"
    if kind == "SVM":
        return "shadow paging (kvm_amd.npt=0)" if param("kvm_amd", "npt") in ("N", "0") \
            else "NPT"
    if kind == "PVM":
        return "shadow paging"
    return "-" if kind == "none" else "unknown"


def why_not_shadow_paging(kind: str | None = None) -> str | None:
    """None if this host's KVM maps guest memory with shadow paging (its #PF counters are
    shadow paging's), else why not. ``kind``: a :data:`KINDS` value (default: detected)."""
    kind = detect().kind if kind is None else kind
    mode = mmu_mode(kind)
    if mode.startswith("shadow"):
        return None
    return f"this {kind} host maps guest memory with {mode}, not shadow paging"


def host_line() -> str:
    """:meth:`Host.line` of this machine."""
    return detect().line()


__all__ = ["KINDS", "MEANING", "Host", "classify", "cpu_flags", "detect", "has_pvm", "host_line",
           "mmu_mode", "why_not_shadow_paging"]
