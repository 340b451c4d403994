"""virtio_net_ping: a virtio-net driver in real-mode x86 that brings the NIC up as Linux does
and pings the host through it.

It makes the register accesses of Linux 6.1's *legacy* virtio-pci driver, in Linux's order
(each step in the listing names the kernel function it stands for). A Linux guest takes that
path only when the device has no modern interface or with ``virtio_pci.force_legacy=1``; the
board here is ``-device virtio-net-pci,disable-modern=on,vectors=0,ioeventfd=off`` (no MSI-X:
the config space is at BAR0 + 20 and the ISR is read; no ioeventfd: every kick reaches QEMU).

1. ``virtio_pci_legacy_probe`` / ``vp_legacy_probe``: find 1af4:1000 on bus 0 through
   0xCF8/0xCFC (Linux takes 0x1000-0x103f, revision 0) and read the subsystem ID, which
   becomes the virtio device ID (1: a network card — the virtio bus then matches it to
   virtio_net's ``id_table``; this guest just checks it). The guest is its own
   firmware too: it sizes BAR0 and puts it at :data:`IOBASE` (SeaBIOS's job on ``-M pc``)
   and sets I/O decoding and bus mastering (``pci_enable_device``, ``pci_set_master``).
2. ``register_virtio_device``: ``vp_reset`` (status 0, read back), ACKNOWLEDGE.
3. ``virtio_dev_probe``: DRIVER; the device's features (``vp_get_features``); the driver
   takes :data:`WANTED` of them — MAC and EVENT_IDX — and writes them back
   (``vp_finalize_features``; a legacy device has no FEATURES_OK).
4. ``virtnet_probe``: the MAC, byte by byte from the config space at BAR0 + 20
   (``virtio_cread_bytes``).
5. ``init_vqs`` → ``vp_find_vqs`` → ``setup_vq`` for receiveq (0) and transmitq (1):
   select, read QUEUE_NUM, check QUEUE_PFN is 0 (not active), then write the ring's page
   number — the moment the ring exists for QEMU (``virtio_queue_set_addr``). The rings
   (:data:`RX_RING`, :data:`TX_RING`) are laid out as ``vring_init`` does for 256 entries;
   the driver stops if the device offers another size.
6. ``virtio_device_ready``: DRIVER_OK. ``virtnet_open`` → ``try_fill_recv``:
   :data:`RX_BUFFERS` buffers of :data:`RX_BUF_LEN` bytes, one device-writable descriptor
   each (``add_recvbuf_small``), published, and a kick if ``virtqueue_kick_prepare`` says so.
   (Linux fills the whole ring, ``while (rq->vq->num_free)``: 256 buffers.)
7. For each frame of :data:`vbook.guests.net_ping.FRAMES`, ``start_xmit``:
   ``free_old_xmit_skbs`` (take back what the device used), then ``xmit_skb``: the
   10-byte ``virtio_net_hdr`` (all zero: nothing to offload) in one descriptor, the frame
   in the next (this driver does not take ANY_LAYOUT, so the header has its own buffer;
   Linux takes it — QEMU offers it — and pushes the header in front of the frame in one
   buffer, ``can_push``, or uses an indirect table),
   ``virtqueue_add_outbuf``, ``virtqueue_kick_prepare`` + ``virtqueue_notify``.
8. Wait for the answer: read ISR (``vp_interrupt``'s first step; the read clears it),
   then look at the RX used ring (``virtqueue_get_buf``); an answer of the expected
   ICMPv6 type is shown, anything else is passed over. Either way the buffer goes back
   to the ring (``try_fill_recv``) and, with EVENT_IDX, ``used_event`` is set to the next
   entry (``virtqueue_enable_cb_prepare``).

Notifications follow Linux's rules: ``virtqueue_kick_prepare`` kicks when
``vring_need_event(avail_event, new, old)`` with EVENT_IDX, else unless the device set
``VRING_USED_F_NO_NOTIFY``. TX interrupts are off from the start (``virtqueue_disable_cb``
before the first frame) — simpler than Linux, which creates the TX queue with the callback
``skb_xmit_done`` and interrupts on: with ``virtio_net.napi_tx=0`` ``skb_xmit_done`` turns them
off at the first TX interrupt, and by default TX NAPI re-arms them with
``virtqueue_enable_cb_delayed`` on each transmit that kicks. Off is, without EVENT_IDX,
``VRING_AVAIL_F_NO_INTERRUPT``; with it Linux writes ``used_event = 0`` ("this is a hack").
With EVENT_IDX QEMU interrupts for a queue's first used buffer after a reset whatever
``used_event`` says (``!signalled_used_valid`` in ``virtio_split_should_notify``); without it
the flag is obeyed. Where this driver is simpler than Linux: TX chains use descriptors 2k,
2k+1 for the k-th frame (Linux's free list would hand out 0, 1 again once they are freed), no
interrupt is taken (the ISR is polled), only MAC and EVENT_IDX are negotiated, and
``virtio_dev_probe``'s status read after the driver's probe is left out.

What it shows at port 0xE0, in order: the subsystem ID (1), the BAR0 size mask
(0xffffffe1: 32 I/O ports), the device's features, the negotiated ones, the MAC (first four
bytes, then the last two), each queue's size (256, 256), then per frame: the ISR value that
ended the wait and the length of the answer (header + frame), or :data:`~net_ping.TIMEOUT`.
"""

from __future__ import annotations

from vbook.guests import net_ping
from vbook.guests.base import Guest
from vbook.guests.ports import LOAD_ADDR, TESTDEV_PORT
from vbook.models import virtio_consts as vc
from vbook.models.virtio_consts import LegacyReg as R
from vbook.models.virtio_consts import NetFeature as NF
from vbook.models.vring_layout import Layout, RingFeature

#: where the guest puts BAR0 (its 32 legacy registers)
IOBASE = 0xC000
#: the queue size the rings below are laid out for (QEMU's default rx/tx_queue_size)
QUEUE_SIZE = 256
#: the receive and transmit rings: vring_init(num=256, align=4096) at these GPAs
RX_RING, TX_RING = 0x2000, 0x5000
#: receive buffers: RX_BUFFERS of RX_BUF_LEN bytes from RX_BUF
RX_BUF, RX_BUF_LEN, RX_BUFFERS = 0x8000, 0x800, 4
#: the feature bits this driver knows
WANTED = 1 << NF.MAC | 1 << RingFeature.EVENT_IDX
HDR_LEN = vc.HDR_SIZE

_RX, _TX = Layout(QUEUE_SIZE, RX_RING), Layout(QUEUE_SIZE, TX_RING)
assert _TX.base >= _RX.end and RX_BUF >= _TX.end

LISTING = f"""\
# virtio_net_ping - real mode: Linux's legacy virtio-pci + virtio_net bring-up, then ping.
        .intel_syntax noprefix
        .code16
        .equ LOAD_ADDR, {LOAD_ADDR:#x}
        .equ CONFIG_ADDRESS, 0xcf8          # PCI config mechanism #1 (i440FX host bridge)
        .equ CONFIG_DATA, 0xcfc
        .equ TESTDEV_PORT, {TESTDEV_PORT:#x}             # pc-testdev's latch: where the guest shows values
        .equ VIRTIO_NET_ID, 0x10001af4      # config dword 0: device 0x1000 << 16 | vendor 0x1af4
        .equ IOBASE, {IOBASE:#x}                 # where this guest maps the legacy registers
        .equ HOST_FEATURES, IOBASE + {int(R.HOST_FEATURES)}
        .equ GUEST_FEATURES, IOBASE + {int(R.GUEST_FEATURES)}
        .equ QUEUE_PFN, IOBASE + {int(R.QUEUE_PFN)}
        .equ QUEUE_NUM, IOBASE + {int(R.QUEUE_NUM)}
        .equ QUEUE_SEL, IOBASE + {int(R.QUEUE_SEL)}
        .equ QUEUE_NOTIFY, IOBASE + {int(R.QUEUE_NOTIFY)}
        .equ STATUS, IOBASE + {int(R.STATUS)}
        .equ ISR, IOBASE + {int(R.ISR)}
        .equ CONFIG_MAC, IOBASE + {vc.VIRTIO_PCI_CONFIG_OFF(False)}       # no MSI-X: config at 20
        .equ ACKNOWLEDGE, {int(vc.DeviceStatus.ACKNOWLEDGE)}
        .equ DRIVER, {int(vc.DeviceStatus.DRIVER)}
        .equ DRIVER_OK, {int(vc.DeviceStatus.DRIVER_OK)}
        .equ WANTED, {WANTED:#x}              # 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_RING_F_EVENT_IDX
        .equ EVENT_IDX_BIT, {int(RingFeature.EVENT_IDX)}
        .equ QUEUE_SIZE, {QUEUE_SIZE}
        .equ HDR_LEN, {HDR_LEN}                     # sizeof(struct virtio_net_hdr)
        .equ RX_BUF, {RX_BUF:#x}
        .equ RX_BUF_LEN, {RX_BUF_LEN:#x}
        .equ RX_BUFFERS, {RX_BUFFERS}
        .equ DESC_F_NEXT, 1
        .equ DESC_F_WRITE, 2
        .equ AVAIL_F_NO_INTERRUPT, 1
        .equ USED_F_NO_NOTIFY, 1
        .equ POLLS, {net_ping.POLLS}
        .equ TIMEOUT, {net_ping.TIMEOUT:#x}
        # struct vq (below): the ring's addresses and the driver's indices
        .equ VQ_INDEX, 0                    # queue number (QUEUE_SEL, QUEUE_NOTIFY)
        .equ VQ_DESC, 2                     # GPA of the descriptor table
        .equ VQ_AVAIL, 4                    # GPA of struct vring_avail
        .equ VQ_USED_EVENT, 6               # GPA of used_event (avail->ring[num])
        .equ VQ_USED, 8                     # GPA of struct vring_used
        .equ VQ_AVAIL_EVENT, 10             # GPA of avail_event (used->ring[num])
        .equ VQ_SHADOW, 12                  # avail_idx_shadow: the next avail->idx
        .equ VQ_ADDED, 14                   # num_added since the last kick
        .equ VQ_LAST_USED, 16               # last_used_idx
_start:
        xor   ax, ax
        mov   ds, ax
# --- virtio_pci_legacy_probe: find the device, let it decode and DMA -----------------------
        mov   eax, VIRTIO_NET_ID
        call  pci_probe
        jc    fail
        mov   al, 0x2c                      # PCI_SUBSYSTEM_VENDOR_ID: vendor | subsystem << 16
        call  pci_read
        shr   eax, 16                       # legacy: the subsystem ID is the virtio device ID
        call  show
        cmp   ax, 1                         # VIRTIO_ID_NET
        jne   fail
        mov   al, 0x10                      # PCI_BASE_ADDRESS_0: size it ...
        mov   ecx, 0xffffffff
        call  pci_write
        mov   al, 0x10
        call  pci_read
        call  show                          # 0xffffffe1: 32 bytes of I/O ports
        mov   al, 0x10                      # ... and place it (the firmware's job)
        mov   ecx, IOBASE | 1
        call  pci_write
        mov   al, 0x04                      # PCI_COMMAND = IO | MASTER
        mov   ecx, 0x0005
        call  pci_write
# --- register_virtio_device: vp_reset, then ACKNOWLEDGE -------------------------------------
        mov   dx, STATUS
        xor   al, al
        out   dx, al                        # vp_reset: status 0 ...
        in    al, dx                        # ... and read it back (flushes the write)
        mov   bl, ACKNOWLEDGE
        call  add_status
# --- virtio_dev_probe: DRIVER, features -----------------------------------------------------
        mov   bl, DRIVER
        call  add_status
        mov   dx, HOST_FEATURES
        in    eax, dx                       # vp_get_features
        call  show
        and   eax, WANTED                   # what the driver knows and the device offers
        mov   dx, GUEST_FEATURES
        out   dx, eax                       # vp_finalize_features
        call  show
        shr   eax, EVENT_IDX_BIT
        and   al, 1
        mov   byte ptr [event_idx - _start + LOAD_ADDR], al      # vq->event
# --- virtnet_probe: the MAC from the config space, a byte at a time ------------------------
        mov   dx, CONFIG_MAC
        mov   di, mac - _start + LOAD_ADDR
        mov   cx, 6
read_mac:
        in    al, dx
        mov   byte ptr [di], al
        inc   dx
        inc   di
        loop  read_mac
        mov   eax, dword ptr [mac - _start + LOAD_ADDR]
        call  show
        movzx eax, word ptr [mac - _start + LOAD_ADDR + 4]
        call  show
# --- init_vqs -> vp_find_vqs -> setup_vq: receiveq, transmitq -------------------------------
        mov   si, rxq - _start + LOAD_ADDR
        call  setup_vq
        mov   si, txq - _start + LOAD_ADDR
        call  setup_vq
        call  disable_cb                    # transmitq: no interrupts for sent frames
# --- virtio_device_ready, then virtnet_open -> try_fill_recv --------------------------------
        mov   bl, DRIVER_OK
        call  add_status
        mov   si, rxq - _start + LOAD_ADDR
        xor   bx, bx                        # descriptor i: RX_BUF + i * RX_BUF_LEN
fill:
        call  add_rx_buffer
        inc   bx
        cmp   bx, RX_BUFFERS
        jb    fill
        call  kick
# --- start_xmit, one frame at a time, each followed by the wait for its answer --------------
        mov   bp, frames - _start + LOAD_ADDR
next_frame:
        cmp   word ptr [bp], 0
        je    done
        call  start_xmit
        call  wait_answer
        add   bp, 6
        jmp   next_frame
done:
        hlt
fail:
        mov   eax, TIMEOUT
        call  show
        hlt

# --- virtio_add_status: status |= bl (read, then write) ------------------------------------
add_status:
        mov   dx, STATUS
        in    al, dx                        # vp_get_status
        or    al, bl
        out   dx, al                        # vp_set_status
        ret

# --- setup_vq (drivers/virtio/virtio_pci_legacy.c), queue si -------------------------------
setup_vq:
        mov   ax, word ptr [si + VQ_INDEX]
        mov   dx, QUEUE_SEL
        out   dx, ax                        # vp_legacy_get_queue_size: select ...
        mov   dx, QUEUE_NUM
        in    ax, dx                        # ... and read its size
        movzx eax, ax
        call  show
        cmp   ax, QUEUE_SIZE                # the layout below is vring_init(256, 4096)
        jne   fail
        mov   ax, word ptr [si + VQ_INDEX]
        mov   dx, QUEUE_SEL
        out   dx, ax                        # vp_legacy_get_queue_enable: select ...
        mov   dx, QUEUE_PFN
        in    eax, dx                       # ... a queue already active has a PFN
        test  eax, eax
        jnz   fail
        mov   ax, word ptr [si + VQ_INDEX]
        mov   dx, QUEUE_SEL
        out   dx, ax                        # vp_legacy_set_queue_address: select ...
        movzx eax, word ptr [si + VQ_DESC]
        shr   eax, 12                       # VIRTIO_PCI_QUEUE_ADDR_SHIFT
        mov   dx, QUEUE_PFN
        out   dx, eax                       # ... activate: QEMU's virtio_queue_set_addr
        ret

# --- virtqueue_disable_cb (virtio_ring.c virtqueue_disable_cb_split), queue si --------------
disable_cb:
        cmp   byte ptr [event_idx - _start + LOAD_ADDR], 0
        je    disable_cb_flag
        mov   di, word ptr [si + VQ_USED_EVENT]
        mov   word ptr [di], 0              # "this is a hack": used_event = 0
        ret
disable_cb_flag:
        mov   di, word ptr [si + VQ_AVAIL]
        mov   word ptr [di], AVAIL_F_NO_INTERRUPT
        ret

# --- virtqueue_add (virtqueue_add_split's last part): publish head ax, queue si ------------
publish:
        mov   bx, word ptr [si + VQ_SHADOW]
        mov   di, bx
        and   di, QUEUE_SIZE - 1
        shl   di, 1
        add   di, word ptr [si + VQ_AVAIL]
        mov   word ptr [di + 4], ax         # avail->ring[idx % num] = head
        inc   bx
        mov   word ptr [si + VQ_SHADOW], bx
        mov   di, word ptr [si + VQ_AVAIL]
        mov   word ptr [di + 2], bx         # avail->idx (x86 keeps stores in order: the wmb)
        inc   word ptr [si + VQ_ADDED]
        ret

# --- virtqueue_kick: virtqueue_kick_prepare_split, then vp_notify, queue si -----------------
kick:
        mov   ax, word ptr [si + VQ_SHADOW] # new
        mov   cx, ax
        sub   cx, word ptr [si + VQ_ADDED]  # old = new - num_added
        mov   word ptr [si + VQ_ADDED], 0
        cmp   byte ptr [event_idx - _start + LOAD_ADDR], 0
        je    kick_flag
        mov   di, word ptr [si + VQ_AVAIL_EVENT]
        mov   bx, ax
        sub   bx, word ptr [di]
        dec   bx                            # (u16)(new - avail_event - 1)
        sub   ax, cx                        # (u16)(new - old)
        cmp   bx, ax
        jae   kick_no                       # vring_need_event is false: no kick
        jmp   kick_yes
kick_flag:
        mov   di, word ptr [si + VQ_USED]
        test  word ptr [di], USED_F_NO_NOTIFY
        jnz   kick_no
kick_yes:
        mov   ax, word ptr [si + VQ_INDEX]
        mov   dx, QUEUE_NOTIFY
        out   dx, ax                        # vp_notify: the exit QEMU turns into virtio_queue_notify
kick_no:
        ret

# --- add_recvbuf_small: descriptor bx = RX_BUF + bx * RX_BUF_LEN, device-writable -----------
add_rx_buffer:
        push  bx
        mov   di, bx
        shl   di, 4
        add   di, word ptr [si + VQ_DESC]   # &desc[bx]
        mov   ax, bx
        shl   ax, 11                        # * RX_BUF_LEN
        add   ax, RX_BUF
        mov   word ptr [di], ax             # addr (the high bytes stay 0)
        mov   dword ptr [di + 8], RX_BUF_LEN   # len
        mov   word ptr [di + 12], DESC_F_WRITE # flags
        mov   ax, bx
        call  publish
        pop   bx
        ret

# --- start_xmit: frame table entry bp (address, length, awaited type) ----------------------
start_xmit:
        mov   si, txq - _start + LOAD_ADDR
        mov   di, word ptr [si + VQ_USED]   # free_old_xmit_skbs: virtqueue_get_buf until empty
        mov   ax, word ptr [di + 2]
        mov   word ptr [si + VQ_LAST_USED], ax
        mov   ax, word ptr [si + VQ_SHADOW] # xmit_skb: descriptors 2k (header), 2k+1 (frame)
        and   ax, QUEUE_SIZE / 2 - 1
        shl   ax, 1
        mov   bx, ax
        mov   di, ax
        shl   di, 4
        add   di, word ptr [si + VQ_DESC]
        mov   word ptr [di], hdr - _start + LOAD_ADDR     # desc[2k].addr: the virtio_net_hdr
        mov   dword ptr [di + 8], HDR_LEN                 # .len
        mov   word ptr [di + 12], DESC_F_NEXT             # .flags: the chain goes on ...
        mov   ax, bx
        inc   ax
        mov   word ptr [di + 14], ax                      # ... in .next = 2k+1
        mov   ax, word ptr [bp]
        mov   word ptr [di + 16], ax                      # desc[2k+1].addr: the frame
        movzx eax, word ptr [bp + 2]
        mov   dword ptr [di + 24], eax                    # .len
        mov   word ptr [di + 28], 0                       # .flags: device-readable, the end
        mov   ax, bx
        call  publish                                     # virtqueue_add_outbuf
        call  kick
        ret

# --- wait for the answer: poll ISR, then the RX used ring -----------------------------------
wait_answer:
        mov   si, rxq - _start + LOAD_ADDR
        mov   cx, POLLS
wait_poll:
        push  cx
        mov   dx, ISR
        in    al, dx                        # vp_interrupt: isr = ioread8 (read clears it)
        mov   byte ptr [isr - _start + LOAD_ADDR], al
        pop   cx
wait_used:
        mov   di, word ptr [si + VQ_USED]
        mov   ax, word ptr [di + 2]         # used->idx
        cmp   ax, word ptr [si + VQ_LAST_USED]
        jne   got_buf                       # virtqueue_poll: something was used
        loop  wait_poll
        mov   eax, TIMEOUT                  # nothing came
        call  show
        ret
got_buf:
        mov   bx, word ptr [si + VQ_LAST_USED]   # virtqueue_get_buf_ctx_split
        mov   di, bx
        and   di, QUEUE_SIZE - 1
        shl   di, 3
        add   di, word ptr [si + VQ_USED]
        mov   ax, word ptr [di + 4]         # used->ring[last_used % num].id: the head
        mov   edx, dword ptr [di + 8]       # .len: bytes the device wrote
        inc   bx
        mov   word ptr [si + VQ_LAST_USED], bx
        cmp   byte ptr [event_idx - _start + LOAD_ADDR], 0   # virtqueue_enable_cb_prepare:
        je    got_check                     # with EVENT_IDX, used_event = last_used_idx
        mov   di, word ptr [si + VQ_USED_EVENT]
        mov   word ptr [di], bx
got_check:
        mov   bx, ax
        mov   di, ax
        shl   di, 11
        add   di, RX_BUF + HDR_LEN          # the frame, after its virtio_net_hdr
        cmp   word ptr [di + {net_ping.OFF_ETHERTYPE}], 0xdd86     # EtherType IPv6 (big-endian)
        jne   got_other
        cmp   byte ptr [di + {net_ping.OFF_NEXT_HEADER}], 58         # next header ICMPv6
        jne   got_other
        mov   al, byte ptr [di + {net_ping.OFF_ICMP6_TYPE}]
        cmp   al, byte ptr [bp + 4]         # the type this frame waits for
        jne   got_other
        movzx eax, byte ptr [isr - _start + LOAD_ADDR]
        call  show                          # the ISR value the wait ended with
        mov   eax, edx
        call  show                          # header + frame: what virtio_net_receive wrote
        call  add_rx_buffer                 # try_fill_recv: the buffer goes back
        call  kick
        ret
got_other:
        call  add_rx_buffer                 # not the answer: recycle it and keep waiting
        call  kick
        mov   cx, POLLS
        jmp   wait_used

{net_ping.PCI_PROBE}

        .balign 2
rxq:                                        # struct vq for receiveq (queue 0)
        .word 0, {_RX.desc:#x}, {_RX.avail:#x}, {_RX.used_event:#x}
        .word {_RX.used:#x}, {_RX.avail_event:#x}, 0, 0, 0
txq:                                        # struct vq for transmitq (queue 1)
        .word 1, {_TX.desc:#x}, {_TX.avail:#x}, {_TX.used_event:#x}
        .word {_TX.used:#x}, {_TX.avail_event:#x}, 0, 0, 0
event_idx:
        .byte 0                             # EVENT_IDX negotiated
isr:
        .byte 0                             # the last ISR value read
mac:
        .byte 0, 0, 0, 0, 0, 0
hdr:                                        # struct virtio_net_hdr: nothing to offload
        .byte 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
{net_ping.frames_table()}
"""

# CODE is what GNU as makes of LISTING (python -m vbook.guests.build rewrites it)
CODE = bytes.fromhex(
    "31c08ed866b8f41a0010e887020f82c6"
    "00b02ce8ad0266c1e810e8cd0283f801"
    "0f85b300b01066b9ffffffffe8a602b0"
    "10e88f02e8b302b01066b901c00000e8"
    "9302b00466b905000000e88802ba12c0"
    "30c0eeecb301e88800b302e88300ba00"
    "c066ede88402662520000020ba04c066"
    "efe8760266c1e81d2401a21613ba14c0"
    "bf1813b90600ec88054247e2f966a118"
    "13e85602660fb7061c13e84d02bef212"
    "e84600be0413e84000e87800b304e830"
    "00bef21231dbe8d5004383fb0472f7e8"
    "9800bd2813837e0000740be8e700e836"
    "0183c506ebeff466b8adde0000e80a02"
    "f4ba12c0ec08d8eec38b04ba0ec0efba"
    "0cc0ed660fb7c0e8f0013d000175d88b"
    "04ba0ec0efba08c066ed6685c075c88b"
    "04ba0ec0ef660fb7440266c1e80cba08"
    "c066efc3803e16130074088b7c06c705"
    "0000c38b7c04c7050100c38b5c0c89df"
    "81e7ff00d1e7037c0489450443895c0c"
    "8b7c04895d02ff440ec38b440c89c12b"
    "4c0ec7440e0000803e16130074108b7c"
    "0a89c32b1d4b29c839c37311eb098b7c"
    "08f705010075068b04ba10c0efc35389"
    "dfc1e704037c0289d8c1e00b05008089"
    "0566c7450800080000c7450c020089d8"
    "e888ff5bc3be04138b7c088b45028944"
    "108b440c83e07fd1e089c389c7c1e704"
    "037c02c7051e1366c745080a000000c7"
    "450c010089d84089450e8b4600894510"
    "660fb7460266894518c7451c000089d8"
    "e838ffe854ffc3bef212b9f40151ba13"
    "c0eca21713598b7c088b45023b441075"
    "0ce2ea66b8adde0000e8be00c38b5c10"
    "89df81e7ff00c1e703037c088b450466"
    "8b550843895c10803e16130074058b7c"
    "06891d89c389c7c1e70b81c70a80817d"
    "0c86dd7524807d143a751e8a45363a46"
    "047516660fb6061713e86e006689d0e8"
    "6800e809ffe8d2fec3e802ffe8cbfeb9"
    "f401eb826689c166bb000000806689d8"
    "baf80c66efbafc0c66ed6639c8741266"
    "81c3000800006681fb0000018072def9"
    "c3f8c3660fb6c06609d8baf80c66efba"
    "fc0c66edc3660fb6c06609d8baf80c66"
    "efbafc0c6689c866efc352bae00066ef"
    "5ac30000002000300432004004480000"
    "00000000010000500060046200700478"
    "00000000000000000000000000000000"
    "00000000000000004213560088009813"
    "760081000e1476008100841476008100"
    "00003333ff00000152540012345686dd"
    "6000000000203afffe80000000000000"
    "0000000000000002ff02000000000000"
    "00000001ff0000018700f5dc00000000"
    "fe800000000000000000000000000001"
    "01015254001234560276620000015254"
    "0012345686dd6000000000403a40fe80"
    "0000000000000000000000000002fe80"
    "00000000000000000000000000018000"
    "150a7662000100010203040506070809"
    "0a0b0c0d0e0f10111213141516171819"
    "1a1b1c1d1e1f20212223242526272829"
    "2a2b2c2d2e2f30313233343536370276"
    "6200000152540012345686dd60000000"
    "00403a40fe8000000000000000000000"
    "00000002fe8000000000000000000000"
    "00000001800015097662000200010203"
    "0405060708090a0b0c0d0e0f10111213"
    "1415161718191a1b1c1d1e1f20212223"
    "2425262728292a2b2c2d2e2f30313233"
    "34353637027662000001525400123456"
    "86dd6000000000403a40fe8000000000"
    "00000000000000000002fe8000000000"
    "00000000000000000001800015087662"
    "0003000102030405060708090a0b0c0d"
    "0e0f101112131415161718191a1b1c1d"
    "1e1f202122232425262728292a2b2c2d"
    "2e2f3031323334353637"
)

GUEST = Guest(name="virtio_net_ping", mode=16, code=CODE, listing=LISTING,
              description="Linux's legacy virtio-pci / virtio_net bring-up in real mode: finds "
                          "the device on PCI, negotiates MAC and EVENT_IDX, sets up receiveq and "
                          "transmitq, posts RX buffers, sends an NS and three pings, polls ISR "
                          "for each answer",
              load_addr=LOAD_ADDR, mem_size=0x10000, stack_top=0x1000)
