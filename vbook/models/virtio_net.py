"""virtio-net's header sizes under the name DESIGN.md gives them (``vbook.models.virtio_net``).

``HDR_SIZE`` = sizeof(struct virtio_net_hdr) = 10; ``HDR_SIZE_MRG`` =
sizeof(struct virtio_net_hdr_mrg_rxbuf) = 12 (linux/virtio_net.h; pinned by the C oracle
in tests/test_virtio_net.py). The rest of virtio-net's constants are in
:mod:`vbook.models.virtio_consts`; the header itself is
:class:`vbook.models.net_frames.VirtioNetHdr`.
"""

from vbook.models.virtio_consts import HDR_SIZE, HDR_SIZE_MRG, NetFeature, NetHdrFlag

__all__ = ["HDR_SIZE", "HDR_SIZE_MRG", "NetFeature", "NetHdrFlag"]
