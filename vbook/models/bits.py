"""Bit masks and page-size names the paging models share (paging, ept, nested).

Pure helpers, no state: ``genmask(hi, lo)`` is Linux's ``GENMASK_ULL`` and
``size_name`` spells a page size the way the chapters print it.
"""

from __future__ import annotations

SIZE_4K, SIZE_2M, SIZE_1G = 1 << 12, 1 << 21, 1 << 30


def genmask(hi: int, lo: int) -> int:
    """``GENMASK_ULL(hi, lo)`` (include/linux/bits.h): bits hi..lo set; 0 if hi < lo."""
    return ((1 << (hi + 1)) - 1) & ~((1 << lo) - 1) if hi >= lo else 0


def size_name(size: int | None) -> str:
    """``"4 KiB"``, ``"2 MiB"`` or ``"1 GiB"``; anything else as a number."""
    return {SIZE_4K: "4 KiB", SIZE_2M: "2 MiB", SIZE_1G: "1 GiB"}.get(size or 0, str(size))


__all__ = ["SIZE_1G", "SIZE_2M", "SIZE_4K", "genmask", "size_name"]
