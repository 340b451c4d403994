"""Cross-check vbook.models.paging.walk against unicorn's MMU (QEMU's softmmu x86 walker).

The same page tables are copied into a fresh unicorn machine per probe (so no TLB
survives between probes), which is put in 64-bit mode on them at CPL 0 or CPL 3
by :func:`vbook.backends.unicorn_cpu.enter_long_mode` (CR3, CR4.PAE (+SMEP, SMAP),
EFER.LME|LMA (+NXE), CR0.PG|PE (+WP); CS/SS loaded from a GDT by the CPU, so SS.DPL
— QEMU's CPL — is really 0 or 3), and one access is made through the virtual
address:

* read  ``mov rax, [rbx]``: every qword of the data area holds its own physical
  address, so RAX names the physical address the MMU chose;
* write ``mov [rbx], rax``: the one qword that changed in the data area names it;
* fetch ``jmp rbx``: a ``mov eax, imm32; hlt`` placed at the GPA the model
  predicts must be what runs next (probe fetches stay 16 bytes clear of the
  page end: unicorn's QEMU 5 decodes ahead and would fault on the next page).

A #PF is caught with UC_HOOK_INTR (vector 14); CR2 and the error code
(QEMU's ``env->error_code``, :func:`vbook.backends.unicorn_cpu.exception_error_code`)
are read in the hook and compared with the model's ``PageFault``. The probe code
page is supervisor-only for CPL 0 (so SMEP does not stop the probe itself) and
user-accessible for CPL 3.

Measured on unicorn 2.1.4 (and written here so that nobody weakens the model to
match it):

* MAXPHYADDR is 40 (bit 40 of an entry is reserved, bit 39 an address bit).
* ``reg_write`` of CS/SS in ``UC_MODE_64`` sets only the selector: the CPL does
  not change that way (hence ``enter_long_mode``'s ``iretq``).
* At CPL 3 every user access — U/S, R/W (whatever CR0.WP), XD with EFER.NXE,
  reserved bits — gives the model's translation or its #PF, error code (with U)
  and CR2; SMEP and SMAP do not touch user accesses, on either.
* SMEP and CR0.WP (supervisor writes) and EFER.NXE are enforced at CPL 0 with
  any CPU model.
* SMAP is enforced only by a CPU model whose CPUID has SMAP: with the default
  (``UC_CPU_X86_QEMU64``) QEMU's ``cpu_x86_update_cr4`` leaves ``HF_SMAP`` clear
  (unicorn still stores the raw CR4, so CR4.SMAP reads back set) and a supervisor
  read of a user page succeeds — :func:`test_smap_on_the_default_cpu_model` is a
  strict xfail with that reason. With ``UC_CPU_X86_BROADWELL`` (also Skylake,
  EPYC) SMAP faults with the SDM's error code, and RFLAGS.AC = 1 lifts it, so the
  random cross-checks run on Broadwell.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vbook.backends.long_mode import (
    CR0_LONG,
    CR0_WP,
    CR4_PAE,
    CR4_SMAP,
    CR4_SMEP,
    EFER_LONG,
    EFER_NXE,
    KERNEL_CS,
    KERNEL_DS,
    TSS_LIMIT,
    TSS_SEL,
    USER_CS,
    USER_DS,
    gdt_bytes,
)
from vbook.memory import GuestMemory
from vbook.models.paging import (
    SIZE_1G,
    SIZE_2M,
    OverlappingMap,
    PageTables,
    PfErr,
    PteFlags,
    TableOutsideMemory,
    walk,
)

unicorn = pytest.importorskip("unicorn", reason="unicorn is not installed: no cross-check against its MMU")
from unicorn import x86_const as x  # noqa: E402

from vbook.backends.unicorn_cpu import enter_long_mode, exception_error_code  # noqa: E402

P, RW, US, NX = PteFlags.P, PteFlags.RW, PteFlags.US, PteFlags.NX
MEM = 4 << 20
TABLES = (1 << 20, 2 << 20)          # page tables are allocated here
DATA = (2 << 20, 4 << 20)            # tagged: each qword holds its own address
CODE = 0x1000                        # identity-mapped, RW, executable; supervisor (CPL 0) or user
GDT = 0x3000                         # read by the CPU with paging off (enter_long_mode), not mapped
PROBE_CODE = bytes.fromhex("488b03" "488903" "ffe3")   # mov rax,[rbx]; mov [rbx],rax; jmp rbx
START = {"r": CODE, "w": CODE + 3, "x": CODE + 6}
MAGIC = 0x5A5A1234
WRITTEN = 0xDEAD_0000_BEEF                # no tag looks like this
MAXPHYADDR = 40                      # unicorn 2.1.4's x86-64 CPU (measured)
#: a CPU model with SMAP in CPUID (measured: the default qemu64 does not enforce CR4.SMAP)
SMAP_CPU = x.UC_CPU_X86_BROADWELL
RFLAGS_AC = 1 << 18
_TAGS = b"".join(struct.pack("<Q", a) for a in range(*DATA, 8))


def machine(cpl: int = 0):
    mem = GuestMemory(MEM)
    mem.buf[DATA[0]:DATA[1]] = _TAGS
    pt = PageTables(mem, TABLES[0], alloc_limit=TABLES[1], maxphyaddr=MAXPHYADDR)
    user = US if cpl == 3 else 0
    pt.map(CODE, CODE, flags=RW | user, table_flags=P | RW | user)
    mem.write(CODE, PROBE_CODE)
    return mem, pt


def uc_access(mem, cr3, gva, access, *, cpl=0, wp=True, smep=False, smap=False, nxe=True,
              ac=False, cpu=SMAP_CPU, expect=None, tables_out=None):
    """Run one access on a fresh unicorn: ("ok", gpa or None) or ("pf", cr2, error code)."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    if cpu is not None:
        uc.ctl_set_cpu_model(cpu)
    uc.mem_map(0, MEM)
    image = bytearray(mem.buf)
    image[GDT:GDT + len(gdt_bytes())] = gdt_bytes()
    if access == "x" and expect is not None and expect + 5 <= MEM:
        image[expect:expect + 6] = b"\xb8" + struct.pack("<I", MAGIC) + b"\xf4"   # mov eax, MAGIC; hlt
    uc.mem_write(0, bytes(image))
    start = START[access]
    cs, ds = (USER_CS, USER_DS) if cpl == 3 else (KERNEL_CS, KERNEL_DS)
    enter_long_mode(uc, gdt=GDT, gdt_limit=len(gdt_bytes()) - 1, cs=cs, ds=ds,
                    tr=(TSS_SEL, 0, TSS_LIMIT, 0x8B00), cr3=cr3,
                    cr0=CR0_LONG & ~CR0_WP | (CR0_WP if wp else 0),
                    cr4=CR4_PAE | (CR4_SMEP if smep else 0) | (CR4_SMAP if smap else 0),
                    efer=EFER_LONG | (EFER_NXE if nxe else 0),
                    rip=start, rsp=0, rflags=0x2 | (RFLAGS_AC if ac else 0))
    faults = []

    def intr(uc, intno, _):
        faults.append((intno, uc.reg_read(x.UC_X86_REG_CR2), exception_error_code(uc)))
        uc.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_INTR, intr)
    uc.reg_write(x.UC_X86_REG_RBX, gva)
    uc.reg_write(x.UC_X86_REG_RAX, WRITTEN if access == "w" else 0)
    try:
        uc.emu_start(start, 0, count=2 if access == "x" else 1)
    except unicorn.UcError as e:
        return ("error", str(e))
    if tables_out is not None:
        tables_out.append(bytes(uc.mem_read(TABLES[0], TABLES[1] - TABLES[0])))
    if faults:
        assert faults[0][0] == 14, faults
        return ("pf", faults[0][1], faults[0][2])
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
    return ("ok", w.address) if w.ok else ("pf", w.fault.cr2, int(w.fault.error_code))


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


def test_unicorn_at_cpl3_sees_the_same_user_cases():
    """One case per reason a user access faults or not, with the error code (U set)."""
    mem, pt = machine(cpl=3)
    pt.map(0x7F00_0000_0000, DATA[0], flags=RW | US)                            # user RW
    pt.map(0x7F00_0000_1000, DATA[0] + 0x1000, flags=US)                        # user RO
    pt.map(0x7F00_0000_2000, DATA[0] + 0x2000, flags=RW)                        # supervisor leaf
    pt.map(0x7F00_4000_0000, DATA[0] + 0x3000, flags=RW | US, table_flags=P | RW)   # supervisor PDPTE
    pt.map(0x7F00_0020_0000, DATA[0], SIZE_2M, flags=RW | US | NX)               # user, XD
    pt.map(0x7F00_0040_0000, DATA[0], SIZE_2M, flags=RW | US)                   # user, executable
    cases = [(0x7F00_0000_0008, "r"), (0x7F00_0000_0008, "w"), (0x7F00_0000_1010, "r"),
             (0x7F00_0000_1010, "w"), (0x7F00_0000_2018, "r"), (0x7F00_0000_2018, "x"),
             (0x7F00_4000_0020, "r"), (0x7F00_4000_0020, "w"), (0x7F00_0020_1238, "r"),
             (0x7F00_0020_1238, "x"), (0x7F00_0040_1238, "x"), (0x7F00_0000_3000, "w"),
             (0x7F00_0000_3000, "x"), (0x7F00_0000_3008, "r")]
    seen = set()
    for wp in (True, False):
        for gva, access in cases:
            m = model(mem, pt.cr3, gva, access, user=True, cr0_wp=wp)
            u = uc_access(mem, pt.cr3, gva, access, cpl=3, wp=wp, expect=m[1])
            assert u == m, (hex(gva), access, wp)
            seen.add(m[0] if m[0] == "ok" else m[2])
    U, W, I, Pp = int(PfErr.U), int(PfErr.W), int(PfErr.I), int(PfErr.P)
    assert {"ok", U, U | W, U | I, U | Pp, U | W | Pp, U | I | Pp} <= seen    # every kind happened


@pytest.mark.parametrize("cpl", [0, 3])
@pytest.mark.parametrize("bits,nxe", [(1 << 40, True), (1 << 39, True), (PteFlags.PS, True),
                                      (NX, False), (1 << 13, True), (1 << 20, True)])
@pytest.mark.parametrize("level", [4, 3, 2])
def test_reserved_bits_agree(bits, nxe, level, cpl):
    mem, pt = machine(cpl)
    gva = 0x7F00_0000_0000
    user = US if cpl == 3 else 0
    if level == 2:
        pt.map(gva, DATA[0], SIZE_2M, flags=RW | user, table_flags=P | RW | user)   # pd: the leaf
    else:
        pt.map(gva, DATA[0] + 0x3000, flags=RW | user, table_flags=P | RW | user)
    s = next(s for s in walk(mem, pt.cr3, gva, maxphyaddr=MAXPHYADDR).steps if s.level == level)
    mem.write_u64(s.entry_addr, s.entry | bits)
    try:
        m = model(mem, pt.cr3, gva + 0x18, "r", efer_nxe=nxe, user=cpl == 3)
    except TableOutsideMemory:                         # bit 39 is an address bit: a table at 512 GiB
        # the model cannot follow a table outside its memory; QEMU reads the unbacked
        # physical address as an entry with P = 0: a not-present #PF (measured: error code 0,
        # or U at CPL 3 — not RSVD, so it is not read as all ones)
        u = uc_access(mem, pt.cr3, gva + 0x18, "r", nxe=nxe, cpl=cpl)
        assert u == ("pf", gva + 0x18, int(PfErr.U) if cpl == 3 else 0)
        return
    u = uc_access(mem, pt.cr3, gva + 0x18, "r", nxe=nxe, expect=m[1], cpl=cpl)
    if m[0] == "ok" and not DATA[0] <= m[1] < DATA[1]:
        assert u[0] in ("ok", "error")                # translated outside the tagged area
    else:
        assert u == m


def test_smep_smap_wp_at_cpl0_agree():
    """The supervisor-only checks, each on and off: SMEP (fetch from a user page), SMAP
    (data access to a user page; RFLAGS.AC = 0), CR0.WP (write to a read-only page)."""
    mem, pt = machine()
    pt.map(0x7F00_0000_0000, DATA[0], flags=RW | US)                 # user RW
    pt.map(0x7F00_0000_1000, DATA[0] + 0x1000, flags=US)             # user RO
    pt.map(0x7F00_0000_2000, DATA[0] + 0x2000, flags=0)              # supervisor RO
    cases = [(0x7F00_0000_0008, "r"), (0x7F00_0000_0008, "w"), (0x7F00_0000_0010, "x"),
             (0x7F00_0000_1010, "w"), (0x7F00_0000_2018, "w"), (0x7F00_0000_2018, "r")]
    faults = set()
    for smep in (False, True):
        for smap in (False, True):
            for wp in (False, True):
                for gva, access in cases:
                    m = model(mem, pt.cr3, gva, access, cr4_smep=smep, cr4_smap=smap, cr0_wp=wp)
                    u = uc_access(mem, pt.cr3, gva, access, smep=smep, smap=smap, wp=wp,
                                  expect=m[1])
                    assert u == m, (hex(gva), access, dict(smep=smep, smap=smap, wp=wp))
                    if m[0] == "pf":
                        faults.add(walk(mem, pt.cr3, gva, access, cr4_smep=smep, cr4_smap=smap,
                                        cr0_wp=wp).fault.reason.split(":")[0])
    assert {"SMEP", "SMAP", "supervisor write to a read-only address with CR0.WP=1"} <= faults


def test_smap_is_lifted_by_rflags_ac():
    """RFLAGS.AC = 1 (``stac``) lets CPL 0 touch user pages under SMAP: the same as SMAP off
    (the model has no AC input; its ``cr4_smap`` means SMAP on *and* AC = 0)."""
    mem, pt = machine()
    pt.map(0x7F00_0000_0000, DATA[0], flags=RW | US)
    for access in "rw":
        m = model(mem, pt.cr3, 0x7F00_0000_0008, access, cr4_smap=False)
        assert m[0] == "ok"
        assert uc_access(mem, pt.cr3, 0x7F00_0000_0008, access, smap=True, ac=True) == m


@pytest.mark.xfail(strict=True, reason=(
    "unicorn 2.1.4's default CPU model (qemu64) has no SMAP in CPUID, so QEMU's "
    "cpu_x86_update_cr4 leaves HF_SMAP clear and CR4.SMAP is not enforced (measured: the "
    "supervisor read of a user page succeeds, though CR4 reads back with SMAP set); the "
    "cross-checks use UC_CPU_X86_BROADWELL, which enforces it"))
def test_smap_on_the_default_cpu_model():
    mem, pt = machine()
    pt.map(0x7F00_0000_0000, DATA[0], flags=RW | US)
    m = model(mem, pt.cr3, 0x7F00_0000_0008, "r", cr4_smap=True)
    assert m == ("pf", 0x7F00_0000_0008, int(PfErr.P))
    assert uc_access(mem, pt.cr3, 0x7F00_0000_0008, "r", smap=True, cpu=None) == m


FLAGS = st.sampled_from([0, int(RW), int(US), int(RW | US), int(RW | NX), int(RW | US | NX), int(NX)])
TABLE_FLAGS = st.sampled_from([int(P | RW | US), int(P | RW), int(P | US), int(P | RW | US | NX), int(P)])
#: for CPL 3: mostly user-accessible, so that translations are checked as often as faults
USER_FLAGS = st.sampled_from([int(US), int(RW | US), int(RW | US), int(RW | US | NX), int(US | NX),
                              int(RW), 0])
USER_TABLE_FLAGS = st.sampled_from([int(P | RW | US)] * 4 + [int(P | US), int(P | RW | US | NX),
                                                            int(P | RW)])


@st.composite
def scenario(draw, flags=FLAGS, table_flags=TABLE_FLAGS):
    maps = []
    for _ in range(draw(st.integers(1, 5))):
        size = draw(st.sampled_from([4096, 4096, SIZE_2M, SIZE_1G]))
        base = draw(st.sampled_from([0x7F80_0000_0000, 0xFFFF_8000_0000_0000]))
        gva = base + draw(st.integers(0, 1)) * SIZE_1G + draw(st.integers(0, 1)) * SIZE_2M \
            + draw(st.integers(0, 3)) * 4096
        gva &= ~(size - 1)
        gpa = {4096: DATA[0] + draw(st.integers(0, 511)) * 4096, SIZE_2M: DATA[0], SIZE_1G: 0}[size]
        maps.append((gva, gpa, size, draw(flags), draw(table_flags)))
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
    ctl = dict(wp=draw(st.booleans()), smep=draw(st.booleans()), smap=draw(st.booleans()),
               nxe=draw(st.booleans()))
    return maps, probes, ctl


def _random_tables_agree(case, cpl):
    maps, probes, ctl = case
    mem, pt = machine(cpl)
    for gva, gpa, size, flags, table_flags in maps:
        try:
            pt.map(gva, gpa, size, flags, table_flags=table_flags)
        except OverlappingMap:                         # the builder refuses them; keep the first
            pass
    for gva, access in probes:
        w = walk(mem, pt.cr3, gva, access, user=cpl == 3, maxphyaddr=MAXPHYADDR,
                 cr0_wp=ctl["wp"], cr4_smep=ctl["smep"], cr4_smap=ctl["smap"],
                 efer_nxe=ctl["nxe"])
        m = ("ok", w.address) if w.ok else ("pf", w.fault.cr2, int(w.fault.error_code))
        u = uc_access(mem, pt.cr3, gva, access, cpl=cpl, expect=m[1], **ctl)
        outside = m[0] == "ok" and not DATA[0] <= m[1] < DATA[1]
        event(f"cpl {cpl} {access} {m[0] if m[0] == 'ok' else hex(m[2])}"
              f"{' (outside tags)' if outside else ''}")
        if outside:                                    # outside the tagged area: only "no #PF"
            assert u[0] == "ok", (hex(gva), access, ctl, w.table())
        else:
            assert u == m, (hex(gva), access, ctl, w.table())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_random_tables_agree_with_unicorn(case):
    _random_tables_agree(case, cpl=0)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(USER_FLAGS, USER_TABLE_FLAGS))
def test_random_tables_agree_with_unicorn_at_cpl3(case):
    """User and supervisor tables, user accesses: U/S and R/W over all levels, XD, and
    SMEP / SMAP / CR0.WP drawn too — they must change nothing for a user access."""
    _random_tables_agree(case, cpl=3)


@pytest.mark.parametrize("cpl", [0, 3])
def test_accessed_dirty_bits_agree_with_unicorn(cpl):
    """QEMU sets A in every entry used and D in the leaf of a write, like walk(set_ad=True)."""
    mem, pt = machine(cpl)
    user = US if cpl == 3 else 0
    pt.map(0x7F00_0000_0000, DATA[0] + 0x5000, flags=RW | user, table_flags=P | RW | user)
    pt.map(0x7F00_0020_0000, DATA[0], SIZE_2M, flags=RW | user, table_flags=P | RW | user)
    for gva, access in [(0x7F00_0000_0010, "r"), (0x7F00_0000_0010, "w"), (0x7F00_0020_1000, "w"),
                        (0x7F00_0000_0010, "x")]:
        m, out = mem_copy(mem), []
        w = walk(m, pt.cr3, gva, access, user=cpl == 3, maxphyaddr=MAXPHYADDR, set_ad=True)
        u = uc_access(mem, pt.cr3, gva, access, cpl=cpl, expect=w.address, tables_out=out)
        assert u == ("ok", w.address)
        for st_ in w.steps:          # (the code page's own walk sets A in its entries too)
            got = struct.unpack_from("<Q", out[0], st_.entry_addr - TABLES[0])[0]
            assert got == m.read_u64(st_.entry_addr), (hex(gva), access, st_)


def mem_copy(mem):
    m = GuestMemory(mem.size)
    m.buf[:] = mem.buf
    return m


def test_the_probe_really_runs_at_cpl3():
    """A CPL-3 probe faults where a CPL-0 one does not (supervisor page), and HLT — privileged —
    is a #GP (13) at CPL 3: the CPL is SS.DPL, loaded by enter_long_mode's IRETQ."""
    mem, pt = machine(cpl=3)
    pt.map(0x7F00_0000_0000, DATA[0], flags=RW)
    assert uc_access(mem, pt.cr3, 0x7F00_0000_0008, "r", cpl=0) == ("ok", DATA[0] + 8)
    assert uc_access(mem, pt.cr3, 0x7F00_0000_0008, "r", cpl=3) == \
        ("pf", 0x7F00_0000_0008, int(PfErr.U | PfErr.P))
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(0, MEM)
    uc.mem_write(0, bytes(mem.buf))
    uc.mem_write(GDT, gdt_bytes())
    uc.mem_write(CODE, b"\xf4")
    enter_long_mode(uc, gdt=GDT, gdt_limit=len(gdt_bytes()) - 1, cs=USER_CS, ds=USER_DS,
                    tr=(TSS_SEL, 0, TSS_LIMIT, 0x8B00), cr0=CR0_LONG, cr3=pt.cr3, cr4=CR4_PAE,
                    efer=EFER_LONG, rip=CODE, rsp=0)
    vectors = []
    uc.hook_add(unicorn.UC_HOOK_INTR, lambda u, intno, _: (vectors.append(intno), u.emu_stop()))
    uc.emu_start(CODE, 0, count=1)
    assert vectors == [13] and uc.reg_read(x.UC_X86_REG_CS) == USER_CS
