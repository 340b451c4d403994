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


# --- GuestMemory.over: a view of memory that already exists (a vCPU's RAM) ---------------

import mmap  # noqa: E402

from vbook.memory import BufferNotUsable, MemoryReleased  # noqa: E402


def test_over_is_the_buffer_not_a_copy():
    ram = bytearray(64)
    m = GuestMemory.over(ram)
    m.write_u32(4, 0xAABBCCDD)
    assert ram[4:8] == bytes.fromhex("ddccbbaa")      # the model's write is in the buffer
    ram[16:24] = (0x1122334455667788).to_bytes(8, "little")
    assert m.read_u64(16) == 0x1122334455667788     # and the buffer's bytes are what it reads
    assert m.size == len(m) == 64 and m.buf.obj is ram


def test_over_keeps_bounds_checks_and_the_access_log():
    m = GuestMemory.over(mmap.mmap(-1, 0x1000))
    with pytest.raises(MemoryAccessError, match="0xffe"):
        m.read_u32(0xFFE)
    with pytest.raises(MemoryAccessError):
        m.write(0xFFF, b"ab")
    with pytest.raises(ValueError):
        m.write_u8(0, 256)
    m.write_u16(2, 7)
    m.read_u8(3)
    m.read(0, 4)
    assert m.clear_log() == [Access("w", 2, 2), Access("r", 3, 1), Access("r", 0, 4)]
    quiet = GuestMemory.over(bytearray(8), record=False)
    quiet.write_u64(0, 1)
    assert quiet.read_u64(0) == 1 and quiet.accesses == []


def test_over_refuses_what_is_no_writable_byte_buffer():
    for bad in (b"read-only", 12, memoryview(bytearray(8))[::2], bytearray()):
        with pytest.raises(BufferNotUsable) as e:
            GuestMemory.over(bad)
        assert isinstance(e.value, VbookError)
    words = (__import__("ctypes").c_uint64 * 4)()   # a typed buffer is seen as its bytes
    GuestMemory.over(words).write_u8(8, 1)
    assert words[1] == 1


def test_release_makes_every_access_a_typed_error_and_frees_the_export():
    backing = mmap.mmap(-1, 0x2000)
    m = GuestMemory.over(backing, owner="the test's vCPU")
    child = GuestMemory.over(m, record=False)         # released with its parent
    assert child.parent is m and child.owner == "the test's vCPU"
    child.write_u8(5, 9)
    assert m.read_u8(5) == 9
    with pytest.raises(BufferError):
        backing.close()                               # the views hold exports
    m.release()
    m.release()
    for view in (m, child):
        assert view.released and "released" in repr(view)
        for access in (lambda v: v.read_u64(0), lambda v: v.read(0, 1), lambda v: v.write(0, b"x"),
                       lambda v: v.write_u32(0, 1), lambda v: v.buf):
            with pytest.raises(MemoryReleased, match="the test's vCPU"):
                access(view)
    backing.close()                                   # nothing is exported any more


def test_release_while_someone_holds_an_export_does_not_raise():
    backing = bytearray(16)
    m = GuestMemory.over(backing)
    held = memoryview(m.buf)[0:8]                     # taken from the view itself
    m.release()
    with pytest.raises(MemoryReleased):
        m.read_u8(0)
    held[0] = 3                                       # still valid memory: the buffer lives
    assert backing[0] == 3


@given(st.integers(0, 56), st.integers(0, 2**64 - 1))
def test_over_u64_round_trip(addr, v):
    ram = bytearray(64)
    m = GuestMemory.over(ram, record=False)
    m.write_u64(addr, v)
    assert m.read_u64(addr) == v == int.from_bytes(ram[addr:addr + 8], "little")
