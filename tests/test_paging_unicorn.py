"""Cross-check vbook.models.paging.walk against unicorn's MMU (QEMU's softmmu x86 walker).

The same page tables are copied into a fresh unicorn machine per probe (so no TLB
survives between probes), paging is switched on by writing CR3, CR4.PAE, EFER
(LME|LMA|NXE via msr_write 0xC0000080) and CR0.PG|PE|WP, and one access is made
through the virtual address at CPL 0:

* read  ``mov rax, [rbx]``: every qword of the data area holds its own physical
  address, so RAX names the physical address the MMU chose;
* write ``mov [rbx], rax``: the one qword that changed in the data area names it;
* fetch ``jmp rbx``: a ``mov eax, imm32; hlt`` placed at the GPA the model
  predicts must be what runs next (probe fetches stay 16 bytes clear of the
  page end: unicorn's QEMU 5 decodes ahead and would fault on the next page).

A #PF is caught with UC_HOOK_INTR (vector 14) and CR2 compared. Unicorn exposes
no #PF error code, so only fault / no fault, CR2 and the translation are
compared. Measured on unicorn 2.1.4: MAXPHYADDR is 40 (bit 40 of an entry is
reserved, bit 39 an address bit); writing CS does not change the CPL (so user
accesses are not cross-checked) and CR4.SMAP is not enforced (SMAP is not
cross-checked); SMEP, CR0.WP and EFER.NXE are.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vbook.memory import GuestMemory
from vbook.models.paging import (
    SIZE_1G,
    SIZE_2M,
    OverlappingMap,
    PageTables,
    PteFlags,
    TableOutsideMemory,
    walk,
)

unicorn = pytest.importorskip("unicorn", reason="unicorn is not installed: no cross-check against its MMU")
from unicorn import x86_const as x  # noqa: E402

P, RW, US, NX = PteFlags.P, PteFlags.RW, PteFlags.US, PteFlags.NX
MEM = 4 << 20
TABLES = (1 << 20, 2 << 20)          # page tables are allocated here
DATA = (2 << 20, 4 << 20)            # tagged: each qword holds its own address
CODE = 0x1000                        # identity-mapped, supervisor, RW, executable
PROBE_CODE = bytes.fromhex("488b03" "488903" "ffe3")   # mov rax,[rbx]; mov [rbx],rax; jmp rbx
START = {"r": CODE, "w": CODE + 3, "x": CODE + 6}
MAGIC = 0x5A5A1234
WRITTEN = 0xDEAD_0000_BEEF                # no tag looks like this
MAXPHYADDR = 40                      # unicorn 2.1.4's x86-64 CPU (measured)
_TAGS = b"".join(struct.pack("<Q", a) for a in range(*DATA, 8))


def machine():
    mem = GuestMemory(MEM)
    mem.buf[DATA[0]:DATA[1]] = _TAGS
    pt = PageTables(mem, TABLES[0], alloc_limit=TABLES[1], maxphyaddr=MAXPHYADDR)
    pt.map(CODE, CODE, flags=RW, table_flags=P | RW)
    mem.write(CODE, PROBE_CODE)
    return mem, pt


def uc_access(mem, cr3, gva, access, *, wp=True, smep=False, nxe=True, expect=None, tables_out=None):
    """Run one access on a fresh unicorn: ("ok", gpa or None) or ("pf", cr2)."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(0, MEM)
    image = bytearray(mem.buf)
    if access == "x" and expect is not None and expect + 5 <= MEM:
        image[expect:expect + 6] = b"\xb8" + struct.pack("<I", MAGIC) + b"\xf4"   # mov eax, MAGIC; hlt
    uc.mem_write(0, bytes(image))
    uc.reg_write(x.UC_X86_REG_CR3, cr3)
    uc.reg_write(x.UC_X86_REG_CR4, uc.reg_read(x.UC_X86_REG_CR4) | 1 << 5 | (1 << 20 if smep else 0))
    efer = uc.msr_read(0xC0000080) | 1 << 8 | 1 << 10
    uc.msr_write(0xC0000080, efer | 1 << 11 if nxe else efer & ~(1 << 11))
    uc.reg_write(x.UC_X86_REG_CR0, (uc.reg_read(x.UC_X86_REG_CR0) | 1 << 31 | 1)
                 & ~(1 << 16) | (1 << 16 if wp else 0))
    faults = []

    def intr(uc, intno, _):
        faults.append((intno, uc.reg_read(x.UC_X86_REG_CR2)))
        uc.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INTR, intr)
    uc.reg_write(x.UC_X86_REG_RBX, gva)
    uc.reg_write(x.UC_X86_REG_RAX, WRITTEN if access == "w" else 0)
    start = START[access]
    try:
        uc.emu_start(start, 0, count=2 if access == "x" else 1)
    except unicorn.UcError as e:
        return ("error", str(e))
    if tables_out is not None:
        tables_out.append(bytes(uc.mem_read(TABLES[0], TABLES[1] - TABLES[0])))
    if faults:
        assert faults[0][0] == 14, faults
        return ("pf", faults[0][1])
    if access == "r":
        return ("ok", uc.reg_read(x.UC_X86_REG_RAX))
    if access == "w":
        after = bytes(uc.mem_read(DATA[0], DATA[1] - DATA[0]))
        at = after.find(struct.pack("<Q", WRITTEN))
        unique = at >= 0 and at % 8 == 0 and after.count(after[at:at + 8]) == 1
        return ("ok", DATA[0] + at if unique else None)
    ok = uc.reg_read(x.UC_X86_REG_EAX) == MAGIC and uc.reg_read(x.UC_X86_REG_RIP) == gva + 5
    return ("ok", expect if ok else None)


def model(mem, cr3, gva, access, **kw):
    w = walk(mem, cr3, gva, access, maxphyaddr=MAXPHYADDR, **kw)
    return ("ok", w.address) if w.ok else ("pf", w.fault.cr2)


def test_unicorn_sees_the_same_simple_cases():
    mem, pt = machine()
    pt.map(0x7F00_0000_0000, DATA[0], flags=RW)
    pt.map(0x7F00_0000_1000, DATA[0] + 0x1000, flags=0)
    pt.map(0x4000_0000, DATA[0], SIZE_2M, flags=RW | NX)
    pt.map(0xFFFF_8000_0000_0000, 0, SIZE_1G, flags=RW)
    cases = [(0x7F00_0000_0008, "r"), (0x7F00_0000_0008, "w"), (0x7F00_0000_1010, "r"),
             (0x7F00_0000_1010, "w"), (0x4000_1238, "r"), (0x4000_1238, "x"), (0x5000_0000, "r"),
             (0xFFFF_8000_0030_0100, "w"), (0xFFFF_8000_0030_0100, "x")]
    for gva, access in cases:
        m = model(mem, pt.cr3, gva, access)
        assert uc_access(mem, pt.cr3, gva, access, expect=m[1]) == m, (hex(gva), access)


@pytest.mark.parametrize("bits,nxe", [(1 << 40, True), (1 << 39, True), (PteFlags.PS, True),
                                      (NX, False), (1 << 13, True), (1 << 20, True)])
@pytest.mark.parametrize("level", [4, 3, 2])
def test_reserved_bits_agree(bits, nxe, level):
    mem, pt = machine()
    gva = 0x7F00_0000_0000
    if level == 2:
        pt.map(gva, DATA[0], SIZE_2M, flags=RW)       # the pd entry is the 2 MiB leaf
    else:
        pt.map(gva, DATA[0] + 0x3000, flags=RW)
    s = next(s for s in walk(mem, pt.cr3, gva, maxphyaddr=MAXPHYADDR).steps if s.level == level)
    mem.write_u64(s.entry_addr, s.entry | bits)
    try:
        m = model(mem, pt.cr3, gva + 0x18, "r", efer_nxe=nxe)
    except TableOutsideMemory:                         # bit 39 is an address bit: a table at 512 GiB
        # QEMU reads unbacked physical memory as all ones: a reserved-bit #PF there (measured)
        assert uc_access(mem, pt.cr3, gva + 0x18, "r", nxe=nxe) == ("pf", gva + 0x18)
        return
    u = uc_access(mem, pt.cr3, gva + 0x18, "r", nxe=nxe, expect=m[1])
    if m[0] == "ok" and not DATA[0] <= m[1] < DATA[1]:
        assert u[0] in ("ok", "error")                # translated outside the tagged area
    else:
        assert u == m


FLAGS = st.sampled_from([0, int(RW), int(US), int(RW | US), int(RW | NX), int(RW | US | NX), int(NX)])
TABLE_FLAGS = st.sampled_from([int(P | RW | US), int(P | RW), int(P | US), int(P | RW | US | NX), int(P)])


@st.composite
def scenario(draw):
    maps = []
    for _ in range(draw(st.integers(1, 5))):
        size = draw(st.sampled_from([4096, 4096, SIZE_2M, SIZE_1G]))
        base = draw(st.sampled_from([0x7F80_0000_0000, 0xFFFF_8000_0000_0000]))
        gva = base + draw(st.integers(0, 1)) * SIZE_1G + draw(st.integers(0, 1)) * SIZE_2M \
            + draw(st.integers(0, 3)) * 4096
        gva &= ~(size - 1)
        gpa = {4096: DATA[0] + draw(st.integers(0, 511)) * 4096, SIZE_2M: DATA[0], SIZE_1G: 0}[size]
        maps.append((gva, gpa, size, draw(FLAGS), draw(TABLE_FLAGS)))
    probes = []
    for _ in range(draw(st.integers(1, 4))):
        gva, gpa, size, _, _ = draw(st.sampled_from(maps))
        off = draw(st.integers(0, size // 8 - 1)) * 8
        if size == SIZE_1G:                            # land in the tagged area
            off = DATA[0] + draw(st.integers(0, (DATA[1] - DATA[0]) // 8 - 1)) * 8
        access = draw(st.sampled_from("rwx"))
        if access == "x":          # the probe code must not run into the next page (QEMU 5 decodes ahead)
            off = off & ~0xFFF | min(off & 0xFFF, 0xFF0)
        probes.append((gva + off, access))
    probes.append((0x7F80_0000_0000 + 3 * SIZE_1G, "r"))     # never mapped
    ctl = dict(wp=draw(st.booleans()), smep=draw(st.booleans()), nxe=draw(st.booleans()))
    return maps, probes, ctl


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_random_tables_agree_with_unicorn(case):
    maps, probes, ctl = case
    mem, pt = machine()
    for gva, gpa, size, flags, table_flags in maps:
        try:
            pt.map(gva, gpa, size, flags, table_flags=table_flags)
        except OverlappingMap:                         # the builder refuses them; keep the first
            pass
    for gva, access in probes:
        w = walk(mem, pt.cr3, gva, access, maxphyaddr=MAXPHYADDR, cr0_wp=ctl["wp"],
                 cr4_smep=ctl["smep"], efer_nxe=ctl["nxe"])
        m = ("ok", w.address) if w.ok else ("pf", w.fault.cr2)
        u = uc_access(mem, pt.cr3, gva, access, expect=m[1], **ctl)
        event(f"{access} {m[0]}{' (outside tags)' if m[0] == 'ok' and not DATA[0] <= m[1] < DATA[1] else ''}")
        if m[0] == "ok" and not DATA[0] <= m[1] < DATA[1]:   # outside the tagged area: only "no #PF"
            assert u[0] == "ok", (hex(gva), access, ctl, w.table())
        else:
            assert u == m, (hex(gva), access, ctl, w.table())


def test_accessed_dirty_bits_agree_with_unicorn():
    """QEMU sets A in every entry used and D in the leaf of a write, like walk(set_ad=True)."""
    mem, pt = machine()
    pt.map(0x7F00_0000_0000, DATA[0] + 0x5000, flags=RW)
    pt.map(0x7F00_0020_0000, DATA[0], SIZE_2M, flags=RW)
    for gva, access in [(0x7F00_0000_0010, "r"), (0x7F00_0000_0010, "w"), (0x7F00_0020_1000, "w"),
                        (0x7F00_0000_0010, "x")]:
        m, out = mem_copy(mem), []
        w = walk(m, pt.cr3, gva, access, maxphyaddr=MAXPHYADDR, set_ad=True)
        u = uc_access(mem, pt.cr3, gva, access, expect=w.address, tables_out=out)
        assert u == ("ok", w.address)
        for st_ in w.steps:          # (the code page's own walk sets A in its entries too)
            got = struct.unpack_from("<Q", out[0], st_.entry_addr - TABLES[0])[0]
            assert got == m.read_u64(st_.entry_addr), (hex(gva), access, st_)


def mem_copy(mem):
    m = GuestMemory(mem.size)
    m.buf[:] = mem.buf
    return m
