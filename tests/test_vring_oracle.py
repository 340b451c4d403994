"""C oracle: vbook.models.vring is what gcc sees in <linux/virtio_ring.h>.

One C program includes the installed uapi headers, prints every constant, every
``sizeof`` / ``offsetof`` of the four ring structures, and then *calls the header's
own inline functions* — ``vring_size()``, ``vring_init()`` and
``vring_need_event()`` — over a grid of inputs (every power-of-two queue size
with several alignments; event/new/old triples around 0, 0x7FFF/0x8000 and the
16-bit wrap at 0xFFFF, plus pseudo-random ones). The Python must agree on every
line. Skips with the reason when gcc or the headers are missing.
"""

from __future__ import annotations

import random

import pytest
from _oracle import need_c, printf_lines, program, run_c

from vbook.models import vring
from vbook.models.vring import (
    AvailFlag,
    DescFlag,
    Layout,
    RingAlign,
    RingFeature,
    TransportFeature,
    UsedFlag,
    need_event,
    vring_size,
)

HEADERS = ["/usr/include/linux/virtio_ring.h", "/usr/include/linux/virtio_config.h",
           "/usr/include/linux/virtio_pci.h"]

# ---- constants, sizes, offsets: C expression -> Python value --------------------------

CONSTANTS: dict[str, int] = {}
for f in DescFlag:
    CONSTANTS[f"VRING_DESC_F_{f.name}"] = f
CONSTANTS["VRING_AVAIL_F_NO_INTERRUPT"] = AvailFlag.NO_INTERRUPT
CONSTANTS["VRING_USED_F_NO_NOTIFY"] = UsedFlag.NO_NOTIFY
for f in RingFeature:
    CONSTANTS[f"VIRTIO_RING_F_{f.name}"] = f
for f in TransportFeature:
    CONSTANTS[f"VIRTIO_F_{f.name}"] = f
for a in RingAlign:
    CONSTANTS[f"VRING_{a.name}_ALIGN_SIZE"] = a
CONSTANTS["VIRTIO_PCI_VRING_ALIGN"] = vring.VIRTIO_PCI_VRING_ALIGN

LAYOUT: dict[str, int] = {
    "sizeof(struct vring_desc)": vring.SIZEOF_VRING_DESC,
    "sizeof(struct vring_avail)": vring.SIZEOF_VRING_AVAIL,
    "sizeof(struct vring_used_elem)": vring.SIZEOF_VRING_USED_ELEM,
    "sizeof(struct vring_used)": vring.SIZEOF_VRING_USED,
    "_Alignof(vring_desc_t)": RingAlign.DESC,
    "_Alignof(vring_avail_t)": RingAlign.AVAIL,
    "_Alignof(vring_used_t)": RingAlign.USED,
}
for struct, offsets in (("vring_desc", vring.VRING_DESC_OFFSETS),
                        ("vring_avail", vring.VRING_AVAIL_OFFSETS),
                        ("vring_used_elem", vring.VRING_USED_ELEM_OFFSETS),
                        ("vring_used", vring.VRING_USED_OFFSETS)):
    for member, off in offsets.items():
        LAYOUT[f"offsetof(struct {struct}, {member})"] = off
for struct, member, size in (("vring_desc", "addr", 8), ("vring_desc", "len", 4),
                             ("vring_desc", "flags", 2), ("vring_desc", "next", 2),
                             ("vring_used_elem", "id", 4), ("vring_used_elem", "len", 4),
                             ("vring_avail", "ring[0]", 2), ("vring_used", "ring[0]", 8)):
    LAYOUT[f"sizeof(((struct {struct} *)0)->{member})"] = size

# ---- inputs for the header's inline functions -----------------------------------------

NUMS = [1 << k for k in range(16)]                  # 1 .. 32768
ALIGNS = [16, 64, 512, 4096, 8192]


def _event_triples() -> list[tuple[int, int, int]]:
    edges = [0, 1, 2, 3, 0x7FFE, 0x7FFF, 0x8000, 0x8001, 0xFFFD, 0xFFFE, 0xFFFF]
    triples = [(e, n, o) for e in edges for n in edges for o in edges]
    rng = random.Random(29)                         # VIRTIO_RING_F_EVENT_IDX
    for _ in range(3000):
        old = rng.randrange(0x10000)
        new = (old + rng.choice([0, 1, 2, 5, 255, 256, 257, rng.randrange(0x10000)])) & 0xFFFF
        event = (old + rng.randrange(-300, 300)) & 0xFFFF if rng.random() < 0.7 else rng.randrange(0x10000)
        triples.append((event, new, old))
    return triples


TRIPLES = _event_triples()


def _c_source() -> str:
    body = ["  struct vring vr;"]
    body += printf_lines({name: name for name in CONSTANTS}, guard_macros=True)
    body += printf_lines({expr: expr for expr in LAYOUT})
    for num in NUMS:
        for align in ALIGNS:
            body.append(f'  printf("size_{num}_{align} %u\\n", vring_size({num}u, {align}ul));')
            body.append(f"  vring_init(&vr, {num}u, (void *)0, {align}ul);")
            for part in ("desc", "avail", "used"):
                body.append(f'  printf("init_{num}_{align}_{part} %lu\\n", (unsigned long)vr.{part});')
            body.append(f'  printf("init_{num}_{align}_used_event %lu\\n", '
                        f"(unsigned long)&vring_used_event(&vr));")
            body.append(f'  printf("init_{num}_{align}_avail_event %lu\\n", '
                        f"(unsigned long)&vring_avail_event(&vr));")
    body.append("  static const unsigned short t[][3] = {")
    body += [f"    {{{e}, {n}, {o}}}," for e, n, o in TRIPLES]
    body.append("  };")
    body.append("  for (unsigned i = 0; i < sizeof t / sizeof t[0]; i++)")
    body.append('    printf("need_%u %d\\n", i, vring_need_event(t[i][0], t[i][1], t[i][2]));')
    return program(["stddef.h", "linux/virtio_ring.h", "linux/virtio_config.h", "linux/virtio_pci.h"],
                   body)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict[str, int | None]:
    need_c(*HEADERS)
    return run_c(tmp_path_factory.mktemp("vring_oracle"), _c_source())


@pytest.mark.parametrize("name", list(CONSTANTS))
def test_constant(oracle, name):
    got = oracle[name]
    assert got is not None, f"{name} is not defined in the installed uapi headers"
    assert got == CONSTANTS[name], f"{name}: header says {got}, vbook says {int(CONSTANTS[name])}"


@pytest.mark.parametrize("expr", list(LAYOUT))
def test_struct_layout(oracle, expr):
    assert oracle[expr] == LAYOUT[expr], f"{expr}: gcc says {oracle[expr]}, vbook says {LAYOUT[expr]}"


@pytest.mark.parametrize("num", NUMS)
def test_vring_size_and_init(oracle, num):
    """vring_size(), and Layout == vring_init() at base 0, for every queue size and alignment."""
    for align in ALIGNS:
        key = f"{num}_{align}"
        assert vring_size(num, align) == oracle[f"size_{key}"], key
        lay = Layout(num, 0, align)
        got = {part: oracle[f"init_{key}_{part}"]
               for part in ("desc", "avail", "used", "used_event", "avail_event")}
        assert got == {"desc": lay.desc, "avail": lay.avail, "used": lay.used,
                       "used_event": lay.used_event, "avail_event": lay.avail_event}, key
        assert lay.size == vring_size(num, align)


def test_need_event_matches_header(oracle):
    """vring_need_event() compiled from the header, over edge and random triples (16-bit wrap)."""
    wrong = [(e, n, o, oracle[f"need_{i}"]) for i, (e, n, o) in enumerate(TRIPLES)
             if need_event(e, n, o) != bool(oracle[f"need_{i}"])]
    assert not wrong, f"{len(wrong)} of {len(TRIPLES)} differ, e.g. (event, new, old, C) = {wrong[:5]}"
    assert len(TRIPLES) > 4000


def test_facts_table():
    """The worked rows of reference facts §8.2 / §8.3 (themselves compiled)."""
    assert [vring_size(n) for n in (8, 16, 256, 1024)] == [4166, 4230, 10246, 28678]
    assert [need_event(e, 8, 4) for e in (3, 4, 5, 7, 8, 9)] == [False, True, True, True, False, False]
    assert need_event(65535, 1, 65534)
