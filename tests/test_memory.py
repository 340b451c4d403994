import pytest
from hypothesis import given
from hypothesis import strategies as st

from vbook.errors import MemoryAccessError, VbookError
from vbook.memory import Access, GuestMemory


def test_little_endian_round_trip():
    m = GuestMemory(64)
    m.write_u64(8, 0x1122334455667788)
    assert m.read(8, 8) == bytes.fromhex("8877665544332211")
    assert m.read_u32(8) == 0x55667788
    assert m.read_u16(12) == 0x3344
    assert m.read_u8(15) == 0x11


def test_out_of_range_is_typed_and_names_the_address():
    m = GuestMemory(0x100)
    with pytest.raises(MemoryAccessError) as e:
        m.read_u32(0xFE)
    assert isinstance(e.value, VbookError)
    assert "0xfe" in str(e.value) and "0x100" in str(e.value)
    with pytest.raises(MemoryAccessError):
        m.write(-1, b"x")


def test_value_too_wide_rejected():
    with pytest.raises(ValueError):
        GuestMemory(16).write_u16(0, 0x10000)


def test_accesses_recorded_in_order():
    m = GuestMemory(32)
    m.write_u16(2, 7)
    m.read_u8(3)
    assert m.clear_log() == [Access("w", 2, 2), Access("r", 3, 1)]
    assert m.accesses == []
    quiet = GuestMemory(32, record=False)
    quiet.write_u8(0, 1)
    assert quiet.accesses == []


@given(st.integers(0, 56), st.integers(0, 2**64 - 1))
def test_u64_round_trip(addr, v):
    m = GuestMemory(64, record=False)
    m.write_u64(addr, v)
    assert m.read_u64(addr) == v
    assert int.from_bytes(m.read(addr, 8), "little") == v
