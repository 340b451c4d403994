"""The /dev/kvm user-space API as constants: exit reasons, ioctls, hypercalls.

Values are those of the Linux uapi headers (Debian ``linux-libc-dev`` 6.1,
``include/uapi/linux/kvm.h``, ``linux/kvm_para.h``, ``asm/kvm.h``) and are
pinned by ``tests/test_kvm_api_oracle.py``, which compiles C against the
installed headers.
"""

from __future__ import annotations

from enum import IntEnum

# --- ioctl number encoding: include/uapi/asm-generic/ioctl.h -----------------
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2

KVMIO = 0xAE


def _IOC(direction: int, typ: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (typ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (
        size << _IOC_SIZESHIFT
    )


def _IO(nr: int) -> int:
    return _IOC(_IOC_NONE, KVMIO, nr, 0)


def _IOR(nr: int, size: int) -> int:
    return _IOC(_IOC_READ, KVMIO, nr, size)


def _IOW(nr: int, size: int) -> int:
    return _IOC(_IOC_WRITE, KVMIO, nr, size)


def _IOWR(nr: int, size: int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, KVMIO, nr, size)


def decode_ioctl(value: int) -> tuple[int, int, int, int]:
    """Split a request number into (direction, type, nr, size) — the inverse of _IOC."""
    return (
        (value >> _IOC_DIRSHIFT) & 0x3,
        (value >> _IOC_TYPESHIFT) & 0xFF,
        (value >> _IOC_NRSHIFT) & 0xFF,
        (value >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1),
    )


# sizes of the structs the ioctls carry (x86-64, uapi 6.1; pinned by the oracle)
SIZEOF_KVM_USERSPACE_MEMORY_REGION = 32
SIZEOF_KVM_REGS = 144
SIZEOF_KVM_SREGS = 312
SIZEOF_KVM_TRANSLATION = 24
SIZEOF_KVM_ENABLE_CAP = 104
SIZEOF_KVM_PIT_CONFIG = 64  # struct kvm_pit_config: __u32 flags, __u32 pad[15]
SIZEOF_KVM_RUN = 2352


class Ioctl(IntEnum):
    """KVM_* ioctl request numbers used by vbook — include/uapi/linux/kvm.h (Linux 6.1)."""

    GET_API_VERSION = _IO(0x00)
    CREATE_VM = _IO(0x01)
    CHECK_EXTENSION = _IO(0x03)
    GET_VCPU_MMAP_SIZE = _IO(0x04)
    CREATE_VCPU = _IO(0x41)
    SET_USER_MEMORY_REGION = _IOW(0x46, SIZEOF_KVM_USERSPACE_MEMORY_REGION)
    SET_TSS_ADDR = _IO(0x47)
    CREATE_IRQCHIP = _IO(0x60)
    RUN = _IO(0x80)
    GET_REGS = _IOR(0x81, SIZEOF_KVM_REGS)
    SET_REGS = _IOW(0x82, SIZEOF_KVM_REGS)
    GET_SREGS = _IOR(0x83, SIZEOF_KVM_SREGS)
    SET_SREGS = _IOW(0x84, SIZEOF_KVM_SREGS)
    TRANSLATE = _IOWR(0x85, SIZEOF_KVM_TRANSLATION)
    ENABLE_CAP = _IOW(0xA3, SIZEOF_KVM_ENABLE_CAP)
    SET_IDENTITY_MAP_ADDR = _IOW(0x48, 8)  # __u64
    SET_CPUID2 = _IOW(0x90, 8)  # struct kvm_cpuid2 header (flexible array)
    SET_MSRS = _IOW(0x89, 8)  # struct kvm_msrs header (flexible array)
    IRQFD = _IOW(0x76, 32)  # struct kvm_irqfd
    IOEVENTFD = _IOW(0x79, 64)  # struct kvm_ioeventfd
    GET_SUPPORTED_CPUID = _IOWR(0x05, 8)  # struct kvm_cpuid2 header (flexible array)
    SET_SIGNAL_MASK = _IOW(0x8B, 4)  # struct kvm_signal_mask header (flexible array)
    CREATE_PIT2 = _IOW(0x77, SIZEOF_KVM_PIT_CONFIG)  # struct kvm_pit_config
    GET_STATS_FD = _IO(0xCE)  # returns a read-only fd of binary statistics (vbook.backends.kvm_stats)


#: which fds each ioctl may be issued on: Documentation/virt/kvm/api.rst "Type:"
#: (Linux 6.1) — "system" (the /dev/kvm fd), "vm" (KVM_CREATE_VM's fd) or "vcpu"
#: (KVM_CREATE_VCPU's fd). Two take more than one: KVM_CHECK_EXTENSION is a system
#: and a vm ioctl (kvm_dev_ioctl and kvm_vm_ioctl both have the case; the vm one
#: answers for that VM), KVM_ENABLE_CAP a vcpu ioctl and, with
#: KVM_CAP_ENABLE_CAP_VM, a vm ioctl. Grouped by fd, not in the order any VMM
#: issues them (for that see KvmVcpu._open or vbook.models.qemu_cmdline.plan).
IOCTL_FD: dict[str, tuple[str, ...]] = {
    "GET_API_VERSION": ("system",),
    "CHECK_EXTENSION": ("system", "vm"),
    "GET_VCPU_MMAP_SIZE": ("system",),
    "GET_SUPPORTED_CPUID": ("system",),
    "CREATE_VM": ("system",),
    "SET_USER_MEMORY_REGION": ("vm",),
    "SET_TSS_ADDR": ("vm",),
    "SET_IDENTITY_MAP_ADDR": ("vm",),
    "CREATE_IRQCHIP": ("vm",),
    "CREATE_PIT2": ("vm",),
    "GET_STATS_FD": ("vm", "vcpu"),
    "ENABLE_CAP": ("vcpu", "vm"),
    "IRQFD": ("vm",),
    "IOEVENTFD": ("vm",),
    "CREATE_VCPU": ("vm",),
    "SET_CPUID2": ("vcpu",),
    "SET_SIGNAL_MASK": ("vcpu",),
    "GET_REGS": ("vcpu",),
    "SET_REGS": ("vcpu",),
    "GET_SREGS": ("vcpu",),
    "SET_SREGS": ("vcpu",),
    "SET_MSRS": ("vcpu",),
    "TRANSLATE": ("vcpu",),
    "RUN": ("vcpu",),
}


class ExitReason(IntEnum):
    """KVM_EXIT_* — include/uapi/linux/kvm.h (Linux 6.1): why KVM_RUN returned."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    S390_SIEIC = 13
    S390_RESET = 14
    DCR = 15
    NMI = 16
    INTERNAL_ERROR = 17
    OSI = 18
    PAPR_HCALL = 19
    S390_UCONTROL = 20
    WATCHDOG = 21
    S390_TSCH = 22
    EPR = 23
    SYSTEM_EVENT = 24
    S390_STSI = 25
    IOAPIC_EOI = 26
    HYPERV = 27
    ARM_NISV = 28
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    AP_RESET_HOLD = 32
    X86_BUS_LOCK = 33
    XEN = 34
    RISCV_SBI = 35
    RISCV_CSR = 36
    NOTIFY = 37


def exit_name(value: int) -> str:
    """``KVM_EXIT_<NAME>`` for a known reason, ``KVM_EXIT_<value> (unknown)`` otherwise."""
    try:
        return f"KVM_EXIT_{ExitReason(value).name}"
    except ValueError:
        return f"KVM_EXIT_{value} (unknown to uapi 6.1)"


class IoDirection(IntEnum):
    """KVM_EXIT_IO_IN / KVM_EXIT_IO_OUT — include/uapi/linux/kvm.h (Linux 6.1)."""

    IN = 0
    OUT = 1


class Hypercall(IntEnum):
    """KVM_HC_* — include/uapi/linux/kvm_para.h (Linux 6.1)."""

    VAPIC_POLL_IRQ = 1
    MMU_OP = 2
    FEATURES = 3
    PPC_MAP_MAGIC_PAGE = 4
    KICK_CPU = 5
    MIPS_GET_CLOCK_FREQ = 6
    MIPS_EXIT_VM = 7
    MIPS_CONSOLE_OUTPUT = 8
    CLOCK_PAIRING = 9
    SEND_IPI = 10
    SCHED_YIELD = 11
    MAP_GPA_RANGE = 12


class HypercallError(IntEnum):
    """KVM_E* hypercall error codes — include/uapi/linux/kvm_para.h (Linux 6.1).

    The guest sees ``-value`` in RAX (as a 64-bit two's complement number).
    """

    EPERM = 1
    E2BIG = 7
    EFAULT = 14
    EINVAL = 22
    EOPNOTSUPP = 95
    ENOSYS = 1000


class Cap(IntEnum):
    """KVM_CAP_* used by vbook — include/uapi/linux/kvm.h (Linux 6.1)."""

    IRQCHIP = 0
    HLT = 1
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    COALESCED_MMIO = 15
    IRQFD = 32
    PIT2 = 33
    PIT_STATE2 = 35
    IOEVENTFD = 36
    SET_IDENTITY_MAP_ADDR = 37
    ENABLE_CAP = 54
    MAX_VCPUS = 66
    SYNC_REGS = 74
    READONLY_MEM = 81
    ENABLE_CAP_VM = 98
    CHECK_EXTENSION_VM = 105
    MULTI_ADDRESS_SPACE = 118
    SPLIT_IRQCHIP = 121
    IMMEDIATE_EXIT = 136
    NESTED_STATE = 157
    EXCEPTION_PAYLOAD = 164
    X86_USER_SPACE_MSR = 188
    EXIT_HYPERCALL = 201
    BINARY_STATS_FD = 203


KVM_API_VERSION = 12
KVM_PIO_PAGE_OFFSET = 1  # asm/kvm.h: PIO data lives in page 1 of the vCPU mmap
KVM_COALESCED_MMIO_PAGE_OFFSET = 2


#: ``offsetof(struct kvm_run, <field>)`` on x86-64 (uapi 6.1, sizeof 2352),
#: keyed by the C member path so the book reads like the header.
KVM_RUN_OFFSETS: dict[str, int] = {
    "request_interrupt_window": 0,
    "immediate_exit": 1,
    "exit_reason": 8,
    "ready_for_interrupt_injection": 12,
    "if_flag": 13,
    "flags": 14,
    "cr8": 16,
    "apic_base": 24,
    "hw.hardware_exit_reason": 32,
    "fail_entry.hardware_entry_failure_reason": 32,
    "fail_entry.cpu": 40,
    "ex.exception": 32,
    "ex.error_code": 36,
    "io.direction": 32,
    "io.size": 33,
    "io.port": 34,
    "io.count": 36,
    "io.data_offset": 40,
    "mmio.phys_addr": 32,
    "mmio.data": 40,
    "mmio.len": 48,
    "mmio.is_write": 52,
    "hypercall.nr": 32,
    "hypercall.args": 40,
    "hypercall.ret": 88,
    "hypercall.longmode": 96,
    "internal.suberror": 32,
    "internal.ndata": 36,
    "internal.data": 40,
    "system_event.type": 32,
    "system_event.ndata": 36,
    "kvm_valid_regs": 288,
    "kvm_dirty_regs": 296,
    "s": 304,
}
