"""C struct layout by the x86-64 System V rules: why ``io.port`` is at offset 34.

A tiny layout calculator for the kvm_run exit-union members the book
discusses: each field is aligned to its natural alignment, the struct to its
largest member. ``tests/test_ctypes_layout.py`` checks it against the offsets
compiled from ``linux/kvm.h`` (``kvm_api.KVM_RUN_OFFSETS``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: size (= alignment on x86-64) of the uapi integer types
C_TYPES = {"__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8}


@dataclass(frozen=True)
class Field:
    ctype: str
    name: str
    count: int = 1  # array length

    def decl(self) -> str:
        return f"{self.ctype} {self.name}" + (f"[{self.count}]" if self.count > 1 else "") + ";"


#: exit-union members of struct kvm_run (include/uapi/linux/kvm.h, Linux 6.1)
KVM_RUN_UNION = {
    "hw": (Field("__u64", "hardware_exit_reason"),),
    "ex": (Field("__u32", "exception"), Field("__u32", "error_code")),
    "io": (Field("__u8", "direction"), Field("__u8", "size"), Field("__u16", "port"),
           Field("__u32", "count"), Field("__u64", "data_offset")),
    "mmio": (Field("__u64", "phys_addr"), Field("__u8", "data", 8), Field("__u32", "len"),
             Field("__u8", "is_write")),
    "hypercall": (Field("__u64", "nr"), Field("__u64", "args", 6), Field("__u64", "ret"),
                  Field("__u32", "longmode"), Field("__u32", "pad")),
}

#: where the exit union starts: after the 32-byte header of struct kvm_run
KVM_RUN_UNION_OFFSET = 32


def layout(fields: tuple[Field, ...], base: int = 0) -> dict[str, int]:
    """Offset of every field when the struct starts at ``base`` (aligned)."""
    off, out = 0, {}
    for f in fields:
        align = C_TYPES[f.ctype]
        off = (off + align - 1) // align * align
        out[f.name] = base + off
        off += align * f.count
    return out


def kvm_run_offset(path: str) -> int:
    """``offsetof(struct kvm_run, path)`` for an exit-union path like "io.port"."""
    member, _, field = path.partition(".")
    return layout(KVM_RUN_UNION[member], KVM_RUN_UNION_OFFSET)[field]


def declaration(member: str) -> str:
    body = "\n".join("        " + f.decl() for f in KVM_RUN_UNION[member])
    return f"    struct {{\n{body}\n    }} {member};"
