"""The names DESIGN.md's table promises for the virtio models (tests outside this repo use them)."""

from __future__ import annotations

from enum import IntEnum, IntFlag


def test_virtio_names():
    from vbook.models import virtio, virtio_consts
    assert virtio.PCI_VENDOR_ID == 0x1AF4
    assert issubclass(virtio.DeviceStatus, IntFlag) and virtio.DeviceStatus.DRIVER_OK == 4
    assert issubclass(virtio.LegacyReg, IntEnum)
    assert virtio.LegacyReg is virtio_consts.LegacyReg


def test_virtio_net_names():
    from vbook.models import net_frames, virtio_net
    assert (virtio_net.HDR_SIZE, virtio_net.HDR_SIZE_MRG) == (10, 12)
    assert (net_frames.HDR_SIZE, net_frames.HDR_SIZE_MRG) == (10, 12)
