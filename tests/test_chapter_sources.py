"""Source oracles for claims chapters 01, 02 and 04 make in prose (and list in their
"Sources" cells) that no model test already pins. Each test reads the tree the chapter
cites — Linux v6.1-rc7 (krr-io/linux-6.1.0 7c210bc38) or QEMU 9.2.4 — and skips, saying
which, where the mirror is missing.
"""

from __future__ import annotations

import re

import nbformat
import pytest
from _sources import LINUX_6_1, LINUX_6_1_REV, QEMU_9, function_body, git_show


def _linux(path: str) -> str:
    return git_show(LINUX_6_1, LINUX_6_1_REV, path)


def test_kvm_asks_vmx_to_intercept_every_in_out_and_hlt():
    """Chapter 01: IN/OUT and HLT exit because KVM sets those VM-execution controls."""
    vmx_h = _linux("arch/x86/kvm/vmx/vmx.h")
    required = vmx_h[vmx_h.index("#define __KVM_REQUIRED_VMX_CPU_BASED_VM_EXEC_CONTROL"):]
    required = required[:required.index("\n\n")]
    assert "CPU_BASED_HLT_EXITING" in required and "CPU_BASED_UNCOND_IO_EXITING" in required
    vmx_c = _linux("arch/x86/kvm/vmx/vmx.c")
    exec_control = function_body(vmx_c, "static u32 vmx_exec_control(struct vcpu_vmx *vmx)")
    # I/O exiting is never taken away; HLT exiting only when user space lets HLT run in the guest
    assert "CPU_BASED_UNCOND_IO_EXITING" not in exec_control
    assert ("if (kvm_hlt_in_guest(vmx->vcpu.kvm))\n\t\texec_control &= ~CPU_BASED_HLT_EXITING;"
            in exec_control)


def test_hlt_goes_to_user_space_only_without_an_in_kernel_lapic():
    """Chapters 01-03: a split irqchip still has the LAPIC in the kernel, so HLT stays there."""
    x86 = _linux("arch/x86/kvm/x86.c")
    halt = function_body(x86, "static int __kvm_emulate_halt(struct kvm_vcpu *vcpu, int state, int reason)")
    assert re.search(r"if \(lapic_in_kernel\(vcpu\)\) \{\n\t\tvcpu->arch.mp_state = state;"
                     r"\n\t\treturn 1;\n\t\} else \{\n\t\tvcpu->run->exit_reason = reason;"
                     r"\n\t\treturn 0;", halt)
    create = function_body(x86, "int kvm_arch_vcpu_create(struct kvm_vcpu *vcpu)")
    assert "if (irqchip_in_kernel(vcpu->kvm)) {\n\t\tr = kvm_create_lapic(" in create
    irq_h = _linux("arch/x86/kvm/irq.h")
    assert "return mode != KVM_IRQCHIP_NONE;" in function_body(
        irq_h, "static inline int irqchip_in_kernel(struct kvm *kvm)")  # split counts too


def test_qemu_split_irqchip_and_the_vmx_real_mode_pages():
    """Chapter 01's plan: kernel-irqchip=split is KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP, 24 pins);
    kvm_arch_init places the identity map and the TSS with VM ioctls."""
    kvm_c = git_show(QEMU_9, "HEAD", "target/i386/kvm/kvm.c")
    split = function_body(kvm_c, "int kvm_arch_irqchip_create(KVMState *s)")
    assert "kvm_vm_enable_cap(s, KVM_CAP_SPLIT_IRQCHIP, 0, 24);" in split
    assert "kvm_vm_ioctl(s, KVM_SET_IDENTITY_MAP_ADDR, &identity_base);" in kvm_c
    assert "kvm_vm_ioctl(s, KVM_SET_TSS_ADDR, tss_base);" in kvm_c
    assert "#define KVM_IDENTITY_BASE 0xfeffc000" in kvm_c.replace("0xfeffc000UL", "0xfeffc000")


def test_an_emulated_out_advances_rip_before_the_exit():
    """Chapter 01: why a host that emulates the OUT (PVM) shows RIP past it at the exit:
    x86_emulate_instruction keeps writeback for a PIO *out* and writes ctxt->eip back."""
    x86 = _linux("arch/x86/kvm/x86.c")
    emulate = x86[x86.index("int x86_emulate_instruction(struct kvm_vcpu *vcpu, gpa_t cr2_or_gpa,"):]
    emulate = emulate[:emulate.index("\n}\n")]
    pio = emulate[emulate.index("} else if (vcpu->arch.pio.count) {"):]
    pio = pio[:pio.index("} else if (vcpu->mmio_needed) {")]
    out_branch = pio[pio.index("if (!vcpu->arch.pio.in) {"):pio.index("} else {")]
    assert "writeback = false" not in out_branch and "r = 0;" in pio
    assert "kvm_rip_write(vcpu, ctxt->eip);" in emulate[emulate.index("if (writeback) {"):]


CHAPTERS = ("01_kvm_intro", "02_qemu_run_loop", "03_kvm_run_loop", "04_hypercall", "05_shadow_paging",
            "06_ept", "07_ept_nested", "08_emulated_nic", "09_virtio_net")


@pytest.mark.parametrize("name", CHAPTERS)
def test_every_chapter_ends_with_its_sources(name):
    """The last cell is a "Sources" cell naming the trees it read, by version."""
    nb = nbformat.read(f"chapters/{name}.ipynb", as_version=4)
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Sources")
    assert "v6.1-rc7" in last.source or "9.2.4" in last.source
    # every file it cites is a path, and every claim row names a function or a test
    assert len(re.findall(r"[a-z0-9_/.-]+\.(?:c|h|rst|S)\b", last.source)) >= 3


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapters_with_real_kvm_output_name_the_host(name):
    """Each chapter that shows real-KVM output prints the one-line host kind (vbook.host)."""
    nb = nbformat.read(f"chapters/{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any("host_line()" in c.source for c in code)
    stored = "".join(o.get("text", "") for c in code for o in c.get("outputs", []))
    assert "KVM host: " in stored


def test_the_hypercall_abi_and_who_in_qemu_asks_for_map_gpa_range():
    """Chapter 04: kvm_hypercall4's registers; QEMU enables the MAP_GPA_RANGE exit for SEV-SNP
    only and serves it in kvm_handle_hc_map_gpa_range."""
    para = _linux("arch/x86/include/asm/kvm_para.h")
    four = para[para.index("static inline long kvm_hypercall4("):]
    assert ': "a"(nr), "b"(p1), "c"(p2), "d"(p3), "S"(p4)' in four[:four.index("\n}\n")]
    sev = git_show(QEMU_9, "HEAD", "target/i386/sev.c")
    start = sev[sev.index("sev_snp_launch_start(SevCommonState *sev_common)\n{"):]
    assert "kvm_enable_hypercall(BIT_ULL(KVM_HC_MAP_GPA_RANGE))" in start[:start.index("\n}\n")]
    assert sev.count("kvm_enable_hypercall(") == 1
    kvm_c = git_show(QEMU_9, "HEAD", "target/i386/kvm/kvm.c")
    assert "return kvm_handle_hc_map_gpa_range(run);" in function_body(
        kvm_c, "static int kvm_handle_hypercall(struct kvm_run *run)")
    assert "kvm_convert_memory(gpa, size, attributes & KVM_MAP_GPA_RANGE_ENCRYPTED)" in \
        function_body(kvm_c, "static int kvm_handle_hc_map_gpa_range(struct kvm_run *run)")


def test_device_callbacks_take_the_bql_in_prepare_mmio_access():
    """Chapter 02: the IO/MMIO cases run without the BQL; the memory core takes it per access."""
    physmem = git_show(QEMU_9, "HEAD", "system/physmem.c")
    body = function_body(physmem, "bool prepare_mmio_access(MemoryRegion *mr)")
    assert "if (!bql_locked()) {\n        bql_lock();\n        release_lock = true;" in body


def test_the_out_path_chapter_03_walks_is_a_call_chain():
    """handle_io → kvm_fast_pio → kvm_fast_pio_out → emulator_pio_out → emulator_pio_in_out →
    kvm_io_bus_write, each called by the one before (the same for IN), as the model records it."""
    from vbook.models.kvm_kernel import VmExit, kvm_run

    x86 = _linux("arch/x86/kvm/x86.c")
    vmx = _linux("arch/x86/kvm/vmx/vmx.c")
    bodies = {"handle_io": function_body(vmx, "static int handle_io(struct kvm_vcpu *vcpu)")}
    for fn, sig in (("kvm_fast_pio", "int kvm_fast_pio("),
                    ("kvm_fast_pio_out", "static int kvm_fast_pio_out("),
                    ("kvm_fast_pio_in", "static int kvm_fast_pio_in("),
                    ("emulator_pio_out", "static int emulator_pio_out("),
                    ("emulator_pio_in", "static int emulator_pio_in("),
                    ("emulator_pio_in_out", "static int emulator_pio_in_out(")):
        bodies[fn] = function_body(x86, sig)
    for io in (VmExit.io(0xE0, 1, data=b"A"), VmExit.io(0x60, 1, in_=True)):
        step = kvm_run([io]).steps[0]
        chain = ["handle_io", *step.calls[:5]]
        assert chain[-1] in ("kvm_io_bus_write", "kvm_io_bus_read")
        for caller, callee in zip(chain, chain[1:], strict=False):
            assert f"{callee}(" in bodies[caller], f"{caller} does not call {callee}"


def test_a_shutdown_request_stops_the_vcpus_after_the_main_loop_returns():
    """Chapter 02: main_loop_should_exit returns true; main → qemu_cleanup → vm_shutdown →
    do_vm_stop → pause_all_vcpus (QEMU 9.2.4)."""
    runstate = git_show(QEMU_9, "HEAD", "system/runstate.c")
    should = function_body(runstate, "static bool main_loop_should_exit(int *status)")
    shutdown = should[should.index("request = qemu_shutdown_requested();"):
                      should.index("request = qemu_reset_requested();")]
    assert "qemu_system_shutdown(request);" in shutdown and "return true;" in shutdown
    assert "pause_all_vcpus" not in shutdown
    main = git_show(QEMU_9, "HEAD", "system/main.c")
    assert "status = qemu_main_loop();\n    qemu_cleanup(status);" in main
    assert "vm_shutdown();" in function_body(runstate, "void qemu_cleanup(int status)")
    cpus = git_show(QEMU_9, "HEAD", "system/cpus.c")
    assert "return do_vm_stop(RUN_STATE_SHUTDOWN, false);" in function_body(cpus, "int vm_shutdown(void)")
    stop = function_body(cpus, "static int do_vm_stop(RunState state, bool send_stop)")
    assert "pause_all_vcpus();" in stop


def test_vmx_leaves_rip_on_a_fast_out_and_skips_it_on_the_next_kvm_run():
    """Chapter 01 / the unicorn backend's pio_rip="vmx": kvm_fast_pio_out records the linear RIP
    and defers the skip to complete_fast_pio_out (only if RIP did not move); port 0x7e with
    the quirk skips at once; string I/O goes to the emulator."""
    x86 = _linux("arch/x86/kvm/x86.c")
    out = function_body(x86, "static int kvm_fast_pio_out(")
    assert "vcpu->arch.pio.linear_rip = kvm_get_linear_rip(vcpu);" in out
    assert "vcpu->arch.complete_userspace_io = complete_fast_pio_out;" in out
    quirk = out[out.index("if (port == 0x7e &&"):out.index("} else {")]
    assert "KVM_X86_QUIRK_OUT_7E_INC_RIP" in quirk and "kvm_skip_emulated_instruction(vcpu);" in quirk
    done = function_body(x86, "static int complete_fast_pio_out(struct kvm_vcpu *vcpu)")
    assert "if (unlikely(!kvm_is_linear_rip(vcpu, vcpu->arch.pio.linear_rip)))\n\t\treturn 1;" in done
    assert "return kvm_skip_emulated_instruction(vcpu);" in done
    io = function_body(_linux("arch/x86/kvm/vmx/vmx.c"), "static int handle_io(struct kvm_vcpu *vcpu)")
    assert "if (string)\n\t\treturn kvm_emulate_instruction(vcpu, 0);" in io


def test_unassigned_memory_and_the_size_of_the_system_region():
    """Chapter 02: a read nobody accepts gives unassigned_mem_read's 0 and MEMTX_DECODE_ERROR;
    a region of size UINT64_MAX is all 2**64 bytes, so `info mtree` ends system at ...ffff."""
    from vbook.devices.machine import Machine

    mem = git_show(QEMU_9, "HEAD", "system/memory.c")
    read = function_body(mem, "MemTxResult memory_region_dispatch_read(MemoryRegion *mr,")
    assert ("if (!memory_region_access_valid(mr, addr, size, false, attrs)) {\n"
            "        *pval = unassigned_mem_read(mr, addr, size);\n"
            "        return MEMTX_DECODE_ERROR;") in read
    assert "return false;" in function_body(mem, "static bool unassigned_mem_accepts(")
    init = function_body(mem, "static void memory_region_do_init(MemoryRegion *mr,")
    assert "if (size == UINT64_MAX) {\n        mr->size = int128_2_64();" in init
    mtree = Machine().info_mtree()
    assert "0000000000000000-ffffffffffffffff (prio 0, container): system" in mtree


def test_qemu_does_not_enforce_pv_cpuid_by_default():
    """Chapter 04: KICK_CPU / SEND_IPI / SCHED_YIELD are gated on PV features only when the
    VMM enables KVM_CAP_ENFORCE_PV_FEATURE_CPUID; QEMU's kvm-pv-enforce-cpuid defaults to off."""
    cpu = git_show(QEMU_9, "HEAD", "target/i386/cpu.c")
    prop = cpu[cpu.index('DEFINE_PROP_BOOL("kvm-pv-enforce-cpuid"'):]
    assert prop[:prop.index(")")].replace("\n", " ").split(",")[-1].strip() == "false"


def test_with_ept_a_guest_pf_is_the_guests_and_l0_takes_every_ept_violation_of_l2():
    """Chapter 07: with enable_ept KVM stops intercepting #PF (unless the guest's MAXPHYADDR
    is smaller than the host's); an EPT violation while L2 runs always goes to L0; nested=1 by
    default; nested_run is a vCPU stat; KVM picks the EPT page size per fault."""
    vmx_h = _linux("arch/x86/kvm/vmx/vmx.h")
    need = function_body(vmx_h, "static inline bool vmx_need_pf_intercept(struct kvm_vcpu *vcpu)")
    assert "if (!enable_ept)\n\t\treturn true;" in need
    vmx_c = _linux("arch/x86/kvm/vmx/vmx.c")
    eb = function_body(vmx_c, "void vmx_update_exception_bitmap(struct kvm_vcpu *vcpu)")
    assert "if (!vmx_need_pf_intercept(vcpu))\n\t\teb &= ~(1u << PF_VECTOR);" in eb
    assert "static bool __read_mostly nested = 1;\nmodule_param(nested, bool, S_IRUGO);" in vmx_c
    nested = _linux("arch/x86/kvm/vmx/nested.c")
    wants = function_body(nested, "static bool nested_vmx_l0_wants_exit(struct kvm_vcpu *vcpu,")
    case = wants[wants.index("case EXIT_REASON_EPT_VIOLATION:"):]
    assert case[:case.index("case EXIT_REASON_EPT_MISCONFIG:")].rstrip().endswith("return true;")
    assert "STATS_DESC_COUNTER(VCPU, nested_run)," in _linux("arch/x86/kvm/x86.c")
    mmu = _linux("arch/x86/kvm/mmu/mmu.c")
    assert "fault->req_level = kvm_mmu_max_mapping_level(vcpu->kvm, slot," in mmu
