"""Starting straight in 64-bit mode on builder tables, on both backends (issue 8).

:func:`vbook.backends.long_mode.start_in_long_mode` puts a vCPU in 64-bit mode
at CPL 0 or 3 — on KVM with ``KVM_SET_SREGS``, on unicorn by letting the CPU
load the segments from the GDT (a trampoline ending in ``iretq``, see
:func:`vbook.backends.unicorn_cpu.enter_long_mode`). The ``touch_pages``
guest then runs two passes on each backend, and both must give the same exits
(the OUT of N each pass) and leave the same guest memory — which is also what
the paging model predicts: the stores, plus the accessed/dirty bits
:func:`vbook.models.paging.walk` (``set_ad=True``) sets for the pass's accesses.

One difference is part of the prediction, not a tolerance: at CPL 3 with
IOPL 0 an ``OUT`` makes the CPU read the TSS's I/O permission bitmap (a
supervisor access, which sets the accessed bit of the TSS page's PTE). KVM
does; unicorn 2.1.4 never checks I/O permission (its ``gen_check_io``
returns at once, "Unicorn: allow all I/O instructions"; measured: an OUT to a
port the bitmap denies still reaches the OUT hook), so on unicorn that bit
stays clear. At CPL 0 (CPL <= IOPL) no bitmap is read on either.

The KVM side skips, with the reason, where /dev/kvm cannot be used
(``VBOOK_KVM_DEV=/nonexistent/kvm``).
"""

from __future__ import annotations

import pytest

from vbook.backends import available
from vbook.backends.long_mode import (
    GDT_ADDR,
    IOMAP_BASE,
    KERNEL_CS,
    TSS_ADDR,
    USER_CS,
    gdt_bytes,
    start_in_long_mode,
    tss_bytes,
)
from vbook.backends.unicorn_cpu import UnicornVcpu
from vbook.errors import GuestError, VbookError
from vbook.guests import touch_pages
from vbook.guests.ports import TESTDEV_PORT
from vbook.memory import GuestMemory, MemoryReleased
from vbook.models import paging
from vbook.models.kvm_api import ExitReason, IoDirection
from vbook.models.paging import PageTables, PteFlags

NS = (1, 4, 16)
PASSES = 2
#: unicorn's ``pio_rip`` that gives each kind of host's RIP at an OUT exit (as test_conformance)
PIO_RIP_OF_HOST = {"VMX": "vmx", "SVM": "vmx", "PVM": "pvm"}


def _kvm_cls():
    why = available()["kvm"]
    if why:
        pytest.skip(f"kvm backend: {why}")
    from vbook.backends.kvm import KvmVcpu

    return KvmVcpu


def _open(backend: str, g: touch_pages.TouchPages, **kw):
    if backend == "kvm":
        return _kvm_cls().from_guest(g.guest(), timeout=5.0)
    return UnicornVcpu.from_guest(g.guest(), **kw)


def predicted_memory(g: touch_pages.TouchPages, cpl: int, *, io_bitmap_read: bool) -> bytes:
    """Guest RAM after the passes, by the model: image + GDT + TSS, the stores, and the A/D
    bits the walks of one pass set (a second pass sets none). ``io_bitmap_read``: the OUT's
    check of the TSS I/O bitmap at CPL 3 (two bytes at the port's offset, a supervisor read)."""
    mem = GuestMemory(g.mem.size, record=False)
    mem.buf[:] = g.mem.buf
    mem.write(GDT_ADDR, gdt_bytes(TSS_ADDR))
    mem.write(TSS_ADDR, tss_bytes())
    accesses = [(gva, kind, cpl == 3) for gva, kind in g.accesses()]
    if io_bitmap_read and cpl == 3:
        accesses += [(TSS_ADDR + 0x66, "r", False),                       # the I/O map base
                     (TSS_ADDR + IOMAP_BASE + TESTDEV_PORT // 8, "r", False)]
    for gva, kind, user in accesses:
        w = paging.walk(mem, g.cr3, gva, kind, user=user, set_ad=True)
        assert w.ok, w.fault
    for i, gva in enumerate(g.touched):
        mem.write_u8(gva, len(g.touched) - i)         # ``mov [rdi], cl``: N, N-1, ..., 1
    return bytes(mem.buf)


def _run_passes(vcpu, n: int) -> list[str]:
    exits = []
    for _ in range(PASSES):
        e = vcpu.run()
        exits.append(str(e))
        assert e.reason == ExitReason.IO and e.io.direction == IoDirection.OUT, str(e)
        assert e.io.port == TESTDEV_PORT and e.io.data == n.to_bytes(4, "little"), str(e)
    return exits


def _diff(a: bytes, b: bytes) -> str:
    at = [hex(i) for i in range(min(len(a), len(b))) if a[i] != b[i]]
    return f"{len(at)} byte(s) differ, first at {at[:8]}"


# --- unicorn: runs everywhere ---------------------------------------------------------


@pytest.mark.parametrize("cpl", [3, 0])
@pytest.mark.parametrize("n", NS)
def test_touch_pages_on_unicorn_gives_the_model_memory(n, cpl):
    g = touch_pages.build(n)
    with _open("unicorn", g) as vcpu:
        start = start_in_long_mode(vcpu, g.mem, g.cr3, g.rip, g.rsp, cpl=cpl)
        assert start.cpl == cpl and vcpu.cpu_mode() == 64
        cs = vcpu.engine.reg_read(__import__("unicorn").x86_const.UC_X86_REG_CS)
        assert cs == (USER_CS if cpl == 3 else KERNEL_CS)
        exits = _run_passes(vcpu, n)
        assert exits == [f"IO out port=0xe0 size=4 count=1 data={n:02x}000000"] * PASSES
        got = bytes(vcpu.memory.buf)
    want = predicted_memory(g, cpl, io_bitmap_read=False)   # unicorn reads no I/O bitmap
    assert got == want, _diff(got, want)


def test_unicorn_cpl3_is_really_ring_3():
    """HLT is privileged: at CPL 3 it is a #GP, which an empty IDT cannot deliver (SHUTDOWN,
    as on KVM); at CPL 0 it is a HLT exit. A supervisor-only page is a #PF at CPL 3."""
    hlt = touch_pages.build(0)
    hlt.mem.write(hlt.rip, b"\xf4")
    for cpl, reason in ((3, ExitReason.SHUTDOWN), (0, ExitReason.HLT)):
        with _open("unicorn", hlt) as vcpu:
            start_in_long_mode(vcpu, hlt.mem, hlt.cr3, hlt.rip, hlt.rsp, cpl=cpl)
            assert vcpu.run().reason == reason, cpl
    g = touch_pages.build(1)
    leaf = paging.walk(g.mem, g.cr3, g.touched[0]).steps[-1]
    g.mem.write_u64(leaf.entry_addr, leaf.entry & ~int(PteFlags.US))
    with _open("unicorn", g) as vcpu:
        start_in_long_mode(vcpu, g.mem, g.cr3, g.rip, g.rsp, cpl=3)
        assert vcpu.run().reason == ExitReason.SHUTDOWN        # #PF -> #GP -> #DF: no IDT
        assert vcpu.kernel_exits[-1].reason == "TRIPLE_FAULT"
    with _open("unicorn", g) as vcpu:                          # CPL 0 may store there
        start_in_long_mode(vcpu, g.mem, g.cr3, g.rip, g.rsp, cpl=0)
        assert vcpu.run().io.data == (1).to_bytes(4, "little")


def test_a_gdt_the_cpu_refuses_is_a_typed_error():
    g = touch_pages.build(1)
    with _open("unicorn", g) as vcpu:
        start_in_long_mode(vcpu, g.mem, g.cr3, g.rip, g.rsp, cpl=3)
        vcpu.memory.write(0x1000 + (USER_CS & ~7), bytes(8))   # user CS: not present
        with pytest.raises(GuestError, match="refused"):
            vcpu.enter_long_mode(gdt=0x1000, gdt_limit=79, cs=USER_CS, ds=0x2B,
                                 tr=(0x40, TSS_ADDR, 0x2068, 0x8B00), cr0=0x80010033,
                                 cr3=g.cr3, cr4=0x20, efer=0x500, rip=g.rip, rsp=g.rsp)


# --- both backends -------------------------------------------------------------------


@pytest.mark.parametrize("cpl", [3, 0])
@pytest.mark.parametrize("n", NS)
def test_touch_pages_same_exits_and_memory_on_unicorn_and_kvm(n, cpl):
    _kvm_cls()
    from vbook.host import detect

    pio_rip = PIO_RIP_OF_HOST.get(detect().kind, "vmx")
    got, rips, exits = {}, {}, {}
    for backend in ("unicorn", "kvm"):
        g = touch_pages.build(n)
        kw = {"pio_rip": pio_rip} if backend == "unicorn" else {}
        with _open(backend, g, **kw) as vcpu:
            start_in_long_mode(vcpu, g.mem, g.cr3, g.rip, g.rsp, cpl=cpl)
            exits[backend] = _run_passes(vcpu, n)
            rips[backend] = vcpu.get_regs().rip
            got[backend] = bytes(vcpu.memory.buf)
    assert exits["kvm"] == exits["unicorn"]
    if detect().kind in PIO_RIP_OF_HOST:
        assert rips["kvm"] == rips["unicorn"], f"pio_rip={pio_rip!r}"
    assert got["kvm"] == predicted_memory(g, cpl, io_bitmap_read=True), \
        _diff(got["kvm"], predicted_memory(g, cpl, io_bitmap_read=True))
    assert got["unicorn"] == predicted_memory(g, cpl, io_bitmap_read=False)
    # so the two differ only where the CPU checked the I/O bitmap: the TSS page's PTE.A
    tss_pte = paging.walk(g.mem, g.cr3, TSS_ADDR).steps[-1].entry_addr
    differ = {i & ~7 for i in range(len(got["kvm"])) if got["kvm"][i] != got["unicorn"][i]}
    assert differ == ({tss_pte} if cpl == 3 else set())


# --- one memory, not copies -------------------------------------------------------------


def _build_in_place(mem: GuestMemory, n: int) -> PageTables:
    """touch_pages' layout, built straight into the vCPU's RAM (no image, no copy)."""
    pt = PageTables(mem, touch_pages.TABLES, alloc_limit=touch_pages.CODE_GPA)
    for gpa in range(0, touch_pages.MEM_SIZE, paging.PAGE_SIZE):
        pt.map(gpa, gpa, flags=PteFlags.RW | PteFlags.US)
    mem.write(touch_pages.CODE_GPA, touch_pages.code(n))
    return pt


@pytest.mark.parametrize("backend", ["unicorn", "kvm"])
def test_what_a_model_writes_the_guest_runs_and_what_the_guest_writes_a_model_reads(backend):
    g = touch_pages.build(3)
    with _open(backend, g) as vcpu:
        ram = vcpu.memory
        ram.write(0, bytes(ram.size))                  # forget the loaded guest
        pt = _build_in_place(ram, 3)
        start_in_long_mode(vcpu, ram, pt.cr3, g.rip, g.rsp, cpl=3)
        assert vcpu.run().io.data == (3).to_bytes(4, "little")
        # the guest's stores, read by a model through the same memory (no read_memory)
        assert [ram.read_u8(gva) for gva in g.touched] == [3, 2, 1]
        assert ram.read_u64(paging.walk(ram, pt.cr3, g.touched[0]).steps[-1].entry_addr) \
            & (PteFlags.A | PteFlags.D) == PteFlags.A | PteFlags.D    # set by the CPU
        # a model patches the code the guest is running: ``mov eax, PAGES`` shows 99 now
        ram.write_u32(g.rip + 0x1C, 99)
        assert vcpu.run().io.data == (99).to_bytes(4, "little")
        assert vcpu.read_memory(g.rip + 0x1C, 4) == (99).to_bytes(4, "little")
        vcpu.write_memory(g.rip + 0x1C, (7).to_bytes(4, "little"))   # the VMM's write, too
        assert vcpu.run().io.data == (7).to_bytes(4, "little")
        assert ram.read_u32(g.rip + 0x1C) == 7


def test_image_elsewhere_is_copied_and_left_unchanged():
    g = touch_pages.build(2)
    before = bytes(g.mem.buf)
    with _open("unicorn", g) as vcpu:
        start_in_long_mode(vcpu, g.mem, g.cr3, g.rip, g.rsp, cpl=3)
        vcpu.run()
        assert vcpu.memory.read(GDT_ADDR, 80) == gdt_bytes(TSS_ADDR)
    assert bytes(g.mem.buf) == before


@pytest.mark.parametrize("backend", ["unicorn", "kvm"])
def test_a_view_used_after_close_raises_a_typed_error(backend):
    g = touch_pages.build(1)
    vcpu = _open(backend, g)
    ram = vcpu.memory
    logged = GuestMemory.over(ram, record=True)        # a view of the view: released with it
    ram.write_u32(0x30000, 0x1234)
    assert logged.read_u32(0x30000) == 0x1234 and logged.clear_log()
    vcpu.close()
    vcpu.close()
    for view in (ram, logged):
        assert view.released
        with pytest.raises(MemoryReleased, match="released"):
            view.read_u64(0)
        with pytest.raises(MemoryReleased):
            view.write(0, b"x")
        with pytest.raises(MemoryReleased):
            _ = view.buf
    with pytest.raises(VbookError, match="closed"):
        _ = vcpu.memory


@pytest.mark.parametrize("backend", ["unicorn", "kvm"])
def test_close_with_an_export_still_held_neither_fails_nor_frees_it(backend):
    np = pytest.importorskip("numpy")
    g = touch_pages.build(1)
    vcpu = _open(backend, g)
    start_in_long_mode(vcpu, g.mem, g.cr3, g.rip, g.rsp, cpl=3)
    vcpu.run()
    words = np.frombuffer(vcpu.memory.buf, dtype="<u8")   # an export the vCPU cannot revoke
    raw = memoryview(vcpu.memory.buf)[0x20000:0x20008]
    vcpu.close()                                        # no BufferError, no munmap under them
    assert vcpu.closed
    assert words[0x20000 // 8] & 0xFF == 1 and raw[0] == 1   # the RAM as the guest left it
    del words, raw                                      # the mapping goes with them


def test_kvm_close_unmaps_when_nothing_holds_the_ram():
    g = touch_pages.build(1)
    vcpu = _open("kvm", g)
    ram_mmap = vcpu._mem
    vcpu.memory.read_u64(0)
    vcpu.close()
    assert ram_mmap.closed


def test_unicorn_drops_translated_code_only_when_code_was_written():
    """unicorn reuses translated code, and neither a store into its RAM buffer nor
    ``uc.mem_write`` invalidates it (measured): the backend flushes its translations
    before a run that follows a write into a page code ran from — and only then."""
    from vbook.guests.base import Guest

    loop = Guest("out-loop", 16, bytes.fromhex("b001" "e680" "ebfa"),   # mov al,1; out 0x80,al; jmp
                 "l: mov al, 1\nout 0x80, al\njmp l")
    with UnicornVcpu.from_guest(loop) as vcpu:
        flushes = []
        engine = vcpu.engine
        real_flush = engine.ctl_flush_tb
        engine.ctl_flush_tb = lambda: (flushes.append(1), real_flush())
        assert vcpu.run().io.data == b"\x01"
        vcpu.memory.write_u64(0x8000, 5)                 # a data page: nothing to drop
        assert vcpu.run().io.data == b"\x01" and flushes == []
        vcpu.memory.write_u8(loop.load_addr + 1, 2)      # the immediate of ``mov al, 1``
        assert vcpu.run().io.data == b"\x02" and flushes == [1]
        vcpu.write_memory(loop.load_addr + 1, b"\x03")
        assert vcpu.run().io.data == b"\x03" and flushes == [1, 1]
        assert vcpu.run().io.data == b"\x03" and flushes == [1, 1]
