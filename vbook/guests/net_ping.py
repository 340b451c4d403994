"""What the two NIC driver guests share: the frames they send, the answers they wait for,
and the assembly for finding a PCI device.

The drivers (:mod:`vbook.guests.e1000_ping`, :mod:`vbook.guests.virtio_net_ping`) are
real-mode x86 programs that do what Linux's ``e1000`` and ``virtio_net`` drivers do to
bring a NIC up and move frames — and nothing of a network stack: the frames they send
are built here, in Python, with :mod:`vbook.models.net_frames`, and sit in the guest's
code as ``.byte`` lines (checksums and all, as a stack would have left them). The
workload, :data:`FRAMES`, is what ``ping -c 3 fe80::1%eth0`` does on a fresh link:

1. a neighbour solicitation for the host's address (``ndisc_send_ns``), answered by a
   neighbour advertisement;
2. :data:`PINGS` echo requests, one at a time, each answered by an echo reply.

After each frame the driver waits for the answer it expects — ICMPv6 type
:data:`EXPECT` at byte 54 of an IPv6 frame — and recycles any other frame it receives
(the host kernel's own chatter, if some gets through). It waits by polling the device's
interrupt-cause register (virtio's ISR, the e1000's ICR): the read is what Linux's
interrupt handler does first, and it is an exit, so QEMU's main loop gets its turn to
deliver the answer. No interrupt is taken: this board has no interrupt controller
(``machine.pirq`` records the line's level). After :data:`POLLS` fruitless polls the
driver gives up and shows :data:`TIMEOUT`.

What a driver *shows* (an ``out`` to the pc-testdev latch at port 0xE0, one value per
exit, so the run's exits carry them): see each driver's docstring.
"""

from __future__ import annotations

from vbook.models import net_frames as nf

#: echo requests after the neighbour solicitation
PINGS = 3
#: the echo request identifier (``ping`` uses its pid)
IDENT = 0x7662
#: polls of the interrupt-cause register before a driver gives up on an answer
POLLS = 500
#: what a driver shows when no answer came
TIMEOUT = 0xDEAD


def frames() -> list[bytes]:
    """The frames the guest sends, in order: an NS for :data:`~nf.HOST_IP6`, then the pings."""
    out = [nf.neighbour_solicitation()]
    out += [nf.echo_request6(ident=IDENT, seq=seq) for seq in range(1, PINGS + 1)]
    return out


#: the frames the drivers send
FRAMES: tuple[bytes, ...] = tuple(frames())
#: the ICMPv6 type each driver waits for after each frame (136 NA, 129 echo reply)
EXPECT: tuple[int, ...] = (nf.Icmp6Type.NEIGHBOUR_ADVERTISEMENT,) + \
    (nf.Icmp6Type.ECHO_REPLY,) * PINGS
#: where in a received frame a driver looks: EtherType, IPv6 next header, ICMPv6 type
OFF_ETHERTYPE, OFF_NEXT_HEADER, OFF_ICMP6_TYPE = 12, 20, 54


def frame_block(label: str, frame: bytes) -> str:
    """``frame`` as GNU as ``.byte`` lines under ``label``, with what it is as a comment."""
    lines = [f"{label}:                               # {nf.describe(frame)}"]
    for i in range(0, len(frame), 16):
        lines.append("        .byte " + ", ".join(f"0x{b:02x}" for b in frame[i:i + 16]))
    lines.append(f"{label}_end:")
    return "\n".join(lines)


def frames_table(frames_: tuple[bytes, ...] = FRAMES) -> str:
    """The table the drivers walk: (address, length, expected answer) per frame, then the
    frames themselves."""
    rows = ["frames:                                   # address, length, ICMPv6 type awaited"]
    for i, want in enumerate(EXPECT[:len(frames_)]):
        rows.append(f"        .word frame{i} - _start + LOAD_ADDR, frame{i}_end - frame{i}, "
                    f"{int(want)}")
    rows.append("        .word 0                           # end of the table")
    for i, f in enumerate(frames_):
        rows.append(frame_block(f"frame{i}", f))
    return "\n".join(rows)


#: ``pci_probe``: scan bus 0 for config dword 0 == EAX; CF set if absent, else EBX =
#: the CONFIG_ADDRESS of the device's dword 0 (what ``pci_scan_slot`` finds)
PCI_PROBE = """\
pci_probe:                                  # in: eax = device << 16 | vendor
        mov   ecx, eax
        mov   ebx, 0x80000000               # enable | bus 0 | device 0 | function 0 | reg 0
pci_probe_next:
        mov   eax, ebx
        mov   dx, CONFIG_ADDRESS
        out   dx, eax                       # select the device's config dword 0
        mov   dx, CONFIG_DATA
        in    eax, dx                       # vendor and device ID (all ones: nobody there)
        cmp   eax, ecx
        je    pci_probe_found
        add   ebx, 1 << 11                  # next device number
        cmp   ebx, 0x80000000 + (32 << 11)
        jb    pci_probe_next
        stc                                 # not on bus 0
        ret
pci_probe_found:
        clc
        ret

pci_read:                                   # eax = config dword at register al of the device
        movzx eax, al
        or    eax, ebx
        mov   dx, CONFIG_ADDRESS
        out   dx, eax
        mov   dx, CONFIG_DATA
        in    eax, dx
        ret

pci_write:                                  # config dword at register al = ecx
        movzx eax, al
        or    eax, ebx
        mov   dx, CONFIG_ADDRESS
        out   dx, eax
        mov   dx, CONFIG_DATA
        mov   eax, ecx
        out   dx, eax
        ret

show:                                       # the pc-testdev latch: one value per exit
        push  dx
        mov   dx, TESTDEV_PORT
        out   dx, eax
        pop   dx
        ret"""


__all__ = ["EXPECT", "FRAMES", "IDENT", "OFF_ETHERTYPE", "OFF_ICMP6_TYPE", "OFF_NEXT_HEADER",
           "PCI_PROBE", "PINGS", "POLLS", "TIMEOUT", "frame_block", "frames", "frames_table"]
