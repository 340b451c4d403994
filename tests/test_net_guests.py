"""The NIC driver guests (vbook.guests.e1000_ping, virtio_net_ping) and vbook.net_run.

Each driver brings its NIC up in Linux's order — a subset of Linux's register
accesses (each driver's docstring lists what it leaves out), checked access by
access against a list written from Linux 6.1's functions, and those
functions' bodies checked in the 6.1 tree — sends an NS and three pings, and
waits for each answer. The loopback host end makes a run deterministic, so
unicorn and /dev/kvm must give the same exits; with root here a real tap in a
namespace answers, and the kernel's own counters say it did.
"""

from __future__ import annotations

import os

import pytest
from _sources import LINUX_6_1, LINUX_6_1_REV, function_body, git_show

from vbook import net_run
from vbook.backends import available, net_available
from vbook.devices.machine import Machine
from vbook.errors import VbookError
from vbook.guests import e1000_ping, net_ping, virtio_net_ping
from vbook.models import net_frames as nf
from vbook.models import run_loop
from vbook.models.virtio_consts import LegacyReg as R

IO = virtio_net_ping.IOBASE


def _need(backend: str) -> None:
    why = available()[backend]
    if why:
        pytest.skip(f"{backend} backend: {why}")


def _ping(nic: str, backend: str, **kw) -> net_run.NetRun:
    _need(backend)
    return net_run.run_ping(nic, backend, "loopback", **kw)


def _accesses(r: net_run.NetRun) -> list[tuple]:
    """Every exit as (register, direction, value written) — port offsets from BAR0 for
    virtio, MMIO offsets from BAR0 for the e1000; the 0xE0 shows left out."""
    out = []
    for x in r.result.exits:
        if x.io is not None and x.io.port == 0xE0:
            continue
        if x.io is not None:
            val = int.from_bytes(x.io.data, "little") if x.io.data else None
            out.append((x.io.port, x.io.direction.name.lower(), val))
        elif x.mmio is not None:
            val = int.from_bytes(x.mmio.data, "little") if x.mmio.is_write else None
            out.append((x.mmio.phys_addr - e1000_ping.BAR0, "w" if x.mmio.is_write else "r", val))
    return out


# --- they answer -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["unicorn", "kvm"])
@pytest.mark.parametrize("nic", ["e1000", "virtio-net"])
def test_the_driver_sends_the_frames_and_gets_every_answer(nic, backend):
    r = _ping(nic, backend)
    assert r.answered and r.net == "loopback"
    assert r.sent == list(net_ping.FRAMES)                      # byte for byte
    kinds = [nf.parse(f).l4.type for f in r.delivered]
    assert kinds == list(net_ping.EXPECT)
    assert r.result.machine.pirq == [0, 0, 0, 0]                # the last cause read cleared it


def test_what_the_virtio_driver_shows():
    r = _ping("virtio-net", "unicorn")
    dev = next(d for d in r.result.machine.pci_bus.devices if d is not None
               and d.type_name == "virtio-net-pci")
    offered = dev.net.host_features & 0xFFFFFFFF
    lens = [nf.HDR_SIZE + len(f) for f in r.delivered]
    assert r.shown == [1, 0xFFFFFFE1, offered, offered & virtio_net_ping.WANTED,
                       0x12005452, 0x5634, 256, 256] + [v for n in lens for v in (1, n)]
    assert virtio_net_ping.WANTED >> 29 & 1 and offered >> 29 & 1      # EVENT_IDX offered, taken


def test_what_the_e1000_driver_shows():
    r = _ping("e1000", "unicorn")
    lens = [len(f) + 4 for f in r.delivered]                  # no SECRC: the CRC is counted
    status = r.shown[4]
    assert r.shown[:4] == [0xFFFE0000, 0xBABA, 0x12005452, 0x5634]
    assert status & e1000_ping.STATUS_LU
    # each wait ends on TXDW | TXQE | RXT0: the frame went out and the answer came in
    assert r.shown[5:] == [v for n in lens for v in (0x83, n)]


def test_without_event_idx_the_virtio_driver_does_without():
    r = _ping("virtio-net", "unicorn", event_idx=False)
    assert r.answered and not r.shown[3] >> 29 & 1
    assert r.counts.nic == "virtio-net"


# --- Linux's order -----------------------------------------------------------------------------

def test_the_virtio_bring_up_is_linuxs_register_for_register():
    r = _ping("virtio-net", "unicorn")
    acc = _accesses(r)
    pci = [a for a in acc if a[0] in (0xCF8, 0xCFC)]
    assert len(pci) == 2 * 3 + 2 * 4                          # probe to 00:01.0, then 4 config ops
    dev = [(p - IO, d, v) for p, d, v in acc if IO <= p < IO + 0x20]
    ST, HF, GF, SEL, NUM, PFN, NOTIFY = (R.STATUS, R.HOST_FEATURES, R.GUEST_FEATURES, R.QUEUE_SEL,
                                        R.QUEUE_NUM, R.QUEUE_PFN, R.QUEUE_NOTIFY)
    features = r.shown[3]
    linux = [
        (ST, "out", 0), (ST, "in", None),                    # vp_reset: set_status(0), get_status
        (ST, "in", None), (ST, "out", 1),                    # virtio_add_status(ACKNOWLEDGE)
        (ST, "in", None), (ST, "out", 3),                    # virtio_add_status(DRIVER)
        (HF, "in", None), (GF, "out", features),             # vp_get_features, vp_finalize_features
        *[(20 + i, "in", None) for i in range(6)],           # virtio_cread_bytes: the MAC
    ]
    for q, ring in ((0, virtio_net_ping.RX_RING), (1, virtio_net_ping.TX_RING)):
        linux += [(SEL, "out", q), (NUM, "in", None),        # vp_legacy_get_queue_size
                  (SEL, "out", q), (PFN, "in", None),        # vp_legacy_get_queue_enable
                  (SEL, "out", q), (PFN, "out", ring >> 12)]  # vp_legacy_set_queue_address
    linux += [(ST, "in", None), (ST, "out", 7),              # virtio_device_ready
              (NOTIFY, "out", 0)]                            # try_fill_recv -> virtqueue_kick
    assert dev[:len(linux)] == linux
    # then per frame: the kick of transmitq, the ISR read (the RX refill needs no kick)
    assert dev[len(linux):] == [(NOTIFY, "out", 1), (R.ISR, "in", None)] * len(net_ping.FRAMES)


def test_the_e1000_bring_up_is_linuxs_register_for_register():
    from vbook.devices.e1000 import MacReg as M
    r = _ping("e1000", "unicorn")
    acc = [a for a in _accesses(r) if a[0] not in (0xCF8 - e1000_ping.BAR0, 0xCFC - e1000_ping.BAR0)]
    mm = [(a, d, v) for a, d, v in acc if d in ("r", "w")]           # the MMIO exits

    def o(name):
        return M[name].offset
    eerd = []
    for w in list(range(64)) + [0, 1, 2]:                    # validate the checksum, read the MAC
        eerd += [(o("EERD"), "w", w << 8 | 1), (o("EERD"), "r", None)]
    linux = [
        (o("IMC"), "w", 0xFFFFFFFF), (o("RCTL"), "w", 0), (o("TCTL"), "w", 8),  # e1000_reset_hw
        (o("STATUS"), "r", None), (o("CTRL"), "r", None), (o("CTRL"), "w", None),
        (o("IMC"), "w", 0xFFFFFFFF), (o("ICR"), "r", None),
        *eerd,
        (o("TDLEN"), "w", 128), (o("TDBAH"), "w", 0), (o("TDBAL"), "w", e1000_ping.TX_RING),
        (o("TDT"), "w", 0), (o("TDH"), "w", 0), (o("TCTL"), "r", None), (o("TCTL"), "w", None),
        (o("RCTL"), "r", None), (o("RCTL"), "w", None),      # e1000_setup_rctl
        (o("RCTL"), "r", None), (o("RCTL"), "w", None),      # e1000_configure_rx
        (o("RDLEN"), "w", 128), (o("RDBAH"), "w", 0), (o("RDBAL"), "w", e1000_ping.RX_RING),
        (o("RDT"), "w", 0), (o("RDH"), "w", 0), (o("RCTL"), "w", None),
        (o("RDT"), "w", 6),                                  # e1000_alloc_rx_buffers: i-- -> 6
        (o("IMS"), "w", e1000_ping.IMS_ENABLE_MASK), (o("STATUS"), "r", None),  # e1000_irq_enable
        (o("STATUS"), "r", None), (o("TCTL"), "r", None), (o("TCTL"), "w", None),  # watchdog
    ]
    got = [(a, d, v if v is not None and linux[i][2] is not None else None)
           for i, (a, d, v) in enumerate(mm[:len(linux)])]
    assert got == linux
    per_frame = []
    for k in range(len(net_ping.FRAMES)):
        per_frame += [(o("TDT"), "w", k + 1), (o("ICR"), "r", None),       # xmit, e1000_intr
                      (o("IMC"), "w", 0xFFFFFFFF), (o("STATUS"), "r", None),
                      (o("RDT"), "w", (7 + k) % 8),                        # refill one
                      (o("IMS"), "w", e1000_ping.IMS_ENABLE_MASK), (o("STATUS"), "r", None)]
    assert mm[len(linux):] == per_frame


def _linux(path: str) -> str:
    return git_show(LINUX_6_1, LINUX_6_1_REV, path)


def _definition(src: str, signature: str) -> str:
    """The function's definition, not its prototype at the top of the file (the last match)."""
    start = src.rindex(signature)
    return src[start:src.index("\n}\n", start)]


def test_the_linux_functions_the_virtio_driver_follows():
    legacy = _linux("drivers/virtio/virtio_pci_legacy.c")
    body = function_body(legacy, "static void vp_reset(struct virtio_device *vdev)")
    assert body.index("vp_legacy_set_status(&vp_dev->ldev, 0);") < \
        body.index("vp_legacy_get_status(&vp_dev->ldev);")
    setup = function_body(legacy, "static struct virtqueue *setup_vq(")
    assert setup.index("vp_legacy_get_queue_size") < setup.index("vp_legacy_get_queue_enable") \
        < setup.index("vring_create_virtqueue") < setup.index("vp_legacy_set_queue_address")
    core = _linux("drivers/virtio/virtio.c")
    add = function_body(core, "void virtio_add_status(struct virtio_device *dev, unsigned int status)")
    assert "dev->config->set_status(dev, dev->config->get_status(dev) | status);" in add
    probe = function_body(core, "static int virtio_dev_probe(struct device *_d)")
    assert probe.index("virtio_add_status(dev, VIRTIO_CONFIG_S_DRIVER);") < \
        probe.index("dev->config->get_features(dev)")
    reg = function_body(core, "int register_virtio_device(struct virtio_device *dev)")
    assert reg.index("virtio_reset_device(dev);") < \
        reg.index("virtio_add_status(dev, VIRTIO_CONFIG_S_ACKNOWLEDGE);")
    ring = _linux("drivers/virtio/virtio_ring.c")
    dis = function_body(ring, "static void virtqueue_disable_cb_split(struct virtqueue *_vq)")
    assert "vring_used_event(&vq->split.vring) = 0x0;" in dis     # the "hack" the table shows
    ldev = _linux("drivers/virtio/virtio_pci_legacy_dev.c")
    assert "return ioread32(ldev->ioaddr + VIRTIO_PCI_QUEUE_PFN);" in ldev


def test_the_linux_functions_the_e1000_driver_follows():
    main = _linux("drivers/net/ethernet/intel/e1000/e1000_main.c")
    alloc = _definition(main, "static void e1000_alloc_rx_buffers(struct e1000_adapter *adapter,")
    assert alloc.index("if (unlikely(i-- == 0))") < alloc.index("writel(i, hw->hw_addr + rx_ring->rdt);")
    intr = _definition(main, "static irqreturn_t e1000_intr(int irq, void *data)")
    assert intr.index("u32 icr = er32(ICR);") < intr.index("ew32(IMC, ~0);") \
        < intr.index("E1000_WRITE_FLUSH();")
    en = _definition(main, "static void e1000_irq_enable(struct e1000_adapter *adapter)")
    assert "ew32(IMS, IMS_ENABLE_MASK);\n\tE1000_WRITE_FLUSH();" in en
    rx = _definition(main, "static void e1000_configure_rx(struct e1000_adapter *adapter)")
    assert rx.index("ew32(RCTL, rctl & ~E1000_RCTL_EN);") < rx.index("ew32(RDLEN, rdlen);") \
        < rx.index("ew32(RDT, 0);") < rx.index("ew32(RDH, 0);") \
        < rx.index("ew32(RCTL, rctl | E1000_RCTL_EN);")
    tx = _definition(main, "static void e1000_configure_tx(struct e1000_adapter *adapter)")
    assert tx.index("ew32(TDLEN, tdlen);") < tx.index("ew32(TDBAH, (tdba >> 32));") \
        < tx.index("ew32(TDT, 0);") < tx.index("ew32(TDH, 0);") < tx.index("ew32(TCTL, tctl);")
    assert "length -= 4;" in _definition(main, "static bool e1000_clean_rx_irq(")
    hw = _linux("drivers/net/ethernet/intel/e1000/e1000_hw.h")
    assert "#define IMS_ENABLE_MASK ( \\\n    E1000_IMS_RXT0   |    \\\n    E1000_IMS_TXDW   |" in hw


# --- the counts -------------------------------------------------------------------------------

def test_the_counts_per_packet():
    e, v, ve = (_ping("e1000", "unicorn"), _ping("virtio-net", "unicorn", event_idx=False),
                _ping("virtio-net", "unicorn"))
    frames = len(net_ping.FRAMES)
    for r in (e, v, ve):
        assert r.counts.packets == 2 * frames and r.counts.doorbells == frames
        assert r.counts.user_exits == r.counts.vm_exits
        assert r.counts.tap_bytes == sum(map(len, r.sent + r.delivered)) + \
            (2 * frames * nf.HDR_SIZE if r is not e else 0)
    assert e.counts.vm_exits == 7 * frames and e.counts.mmio_exits == 7 * frames
    assert v.counts.vm_exits == ve.counts.vm_exits == 2 * frames and v.counts.mmio_exits == 0
    # the e1000 copies every frame both ways; virtio-net only into the RX buffers
    assert e.counts.bytes_copied == sum(map(len, e.sent + e.delivered))
    assert v.counts.bytes_copied == sum(len(f) + nf.HDR_SIZE for f in v.delivered)
    # interrupts asked for: TXDW and RXT0 per frame; virtio one per RX frame, and with
    # EVENT_IDX one more: QEMU interrupts for a queue's first used buffer after reset
    # (!signalled_used_valid), and Linux's used_event = 0 does not stop it
    assert e.counts.interrupts == 2 * frames
    assert v.counts.interrupts == frames and ve.counts.interrupts == frames + 1
    irq = [ev["vq"] for ev in ve.trace.events if ev.data.get("fn") == "virtio_irq"]
    assert irq.count(1) == 1
    assert e.counts.setup_exits > v.counts.setup_exits          # 67 EEPROM words, 2 exits each
    assert e.counts.per_packet("vm_exits") == 3.5 and v.counts.row()["vm_exits"] == 1.0
    with pytest.raises(VbookError, match="no count"):
        e.counts.per_packet("bogus")


def test_counts_need_a_frame():
    _need("unicorn")
    r = run_loop.run(virtio_net_ping.GUEST, "unicorn", machine=Machine())
    assert r.end == run_loop.End.HLT and net_run.shown(r) == [net_ping.TIMEOUT]   # no device
    with pytest.raises(VbookError, match="sent no frame"):
        net_run.counts(r, "virtio-net")


def test_a_queue_size_the_driver_is_not_built_for_stops_it():
    _need("unicorn")
    from vbook.backends.loopback_net import LoopbackNet
    m = Machine()
    m.add_nic(LoopbackNet(vnet_hdr=True), model="virtio-net-pci", props={"rx_queue_size": 512})
    r = run_loop.run(virtio_net_ping.GUEST, "unicorn", machine=m)
    assert r.end == run_loop.End.HLT and net_run.shown(r)[-2:] == [512, net_ping.TIMEOUT]


def test_bad_arguments():
    with pytest.raises(VbookError, match="no NIC"):
        net_run.run_ping("rtl8139")
    with pytest.raises(VbookError, match="virtio feature"):
        net_run.run_ping("e1000", event_idx=False)


def test_a_host_that_never_answers_gets_a_timeout_not_a_hang():
    _need("unicorn")
    from vbook.devices.net_client import MemoryBackend
    m = Machine()
    be = MemoryBackend()
    m.add_nic(be)
    r = run_loop.run(e1000_ping.GUEST, "unicorn", machine=m, max_exits=100_000)
    assert r.end == run_loop.End.HLT
    # each frame waits POLLS reads of ICR, shows TIMEOUT, and the driver goes on
    assert net_run.shown(r)[5:] == [net_ping.TIMEOUT] * len(net_ping.FRAMES)
    assert be.sent == list(net_ping.FRAMES)
    icr_reads = sum(1 for x in r.exits if x.mmio is not None and not x.mmio.is_write
                    and x.mmio.phys_addr == e1000_ping.BAR0 + 0xC0)
    # + the read of the reset; per frame the TXDW cause is one non-zero read (e1000_intr
    # runs, cleans nothing), then the wait starts over: POLLS reads of 0
    assert icr_reads == 1 + len(net_ping.FRAMES) * (1 + net_ping.POLLS)


# (the same exits on unicorn and /dev/kvm: tests/test_conformance.py
# test_the_nic_drivers_give_the_same_exits)


# --- a real tap ----------------------------------------------------------------------------------

@pytest.mark.parametrize("nic", ["e1000", "virtio-net"])
def test_the_host_kernel_answers_through_a_real_tap(nic):
    why = net_available()["tap"]
    if why:
        pytest.skip(f"no tap here: {why}")
    _need("unicorn")
    from vbook.backends.tap import Tap
    with Tap.open(vnet_hdr=(nic == "virtio-net")) as tap:
        r = net_run.run_ping(nic, "unicorn", endpoint=tap)
        snmp = tap.snmp()
    assert r.answered and r.net == "tap" and r.why_not_tap is None
    assert r.sent == list(net_ping.FRAMES)
    assert snmp["Icmp6InEchos"] == snmp["Icmp6OutEchoReplies"] == net_ping.PINGS
    answers = [f for f in r.delivered if not nf.kernel_chatter(f)]
    assert [nf.parse(f).l4.type for f in answers] == list(net_ping.EXPECT)


def test_without_a_tap_the_loopback_answers_and_says_why():
    r = net_run.run_ping("virtio-net", "unicorn" if not available()["unicorn"] else "auto",
                         "loopback")
    assert r.net == "loopback" and "loopback" in r.why_not_tap and r.answered


@pytest.mark.skipif(os.environ.get("VBOOK_NET") == "tap", reason="VBOOK_NET forces the tap")
def test_vbook_net_loopback_forces_the_fallback(monkeypatch):
    monkeypatch.setenv("VBOOK_NET", "loopback")
    r = net_run.run_ping("e1000", "unicorn" if not available()["unicorn"] else "auto", "tap")
    assert r.net == "loopback" and r.why_not_tap == "VBOOK_NET=loopback"


def test_journey_follows_one_frame_through_qemu():
    r = _ping("e1000", "unicorn")
    tx = net_run.journey(r.trace, "tap_receive_iov", "set_ics",
                         {"address_space_rw", "start_xmit", "pci_dma_read", "tap_receive_iov",
                          "set_ics"}, back_to="address_space_rw")
    assert [f for f, _, _ in tx] == ["address_space_rw", "start_xmit", "pci_dma_read",
                                     "tap_receive_iov", "start_xmit", "set_ics"]   # "done, TDH = 1"
    assert {t for _, t, _ in tx} == {"CPU 0/KVM"}              # all inside the doorbell's exit
    rx = net_run.journey(r.trace, "tap_send", "set_ics", {"tap_send", "e1000_receive_iov"})
    assert [(f, t) for f, t, _ in rx] == [("tap_send", "main"), ("e1000_receive_iov", "main")]
    with pytest.raises(VbookError, match="no virtio_irq event"):
        net_run.journey(r.trace, "virtio_irq", "set_ics", set())
    with pytest.raises(VbookError, match="no bogus event before"):
        net_run.journey(r.trace, "tap_send", "set_ics", set(), back_to="bogus")
