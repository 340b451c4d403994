"""Assemble the guest listings with GNU as and write their bytes into the modules.

Every guest module keeps its assembly source (``LISTING``) next to the machine
code it ships (``CODE``, a hex literal), so nothing is needed at run time. This
script regenerates ``CODE`` from ``LISTING``::

    python -m vbook.guests.build            # rewrite the CODE literals that changed
    python -m vbook.guests.build --check    # exit 1 if any CODE is stale

and ``tests/test_guests.py`` re-assembles every listing and compares.

How a listing becomes bytes: ``as`` (binutils, x86-64 ELF; ``.code16`` /
``.code64`` pick the instruction encoding) and ``objcopy -O binary``. There is
no linker, so the listing must need none: an absolute address is written as
``label - _start + LOAD_ADDR`` (a constant the assembler resolves), and
:func:`assemble` refuses an object file with relocations or with bytes outside
``.text``.
"""

from __future__ import annotations

import importlib
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from vbook.errors import GuestError

#: the guest modules, in ``vbook.guests``, whose CODE this script maintains
MODULES = ("hello", "in_out", "mmio", "hypercall", "triple_fault", "long_mode",
           "map_gpa_range", "spin", "unmapped_fetch", "hypercalls", "serial_hello", "debug_exit",
           "cpuid_loop", "virtio_net_ping", "e1000_ping")

TOOLS = ("as", "objcopy")

_CODE_BLOCK = re.compile(r'^CODE = bytes\.fromhex\(\n(?:    "[0-9a-f]*"\n)*\)$', re.M)
_SHT_RELA, _SHT_REL, _SHT_NOBITS = 4, 9, 8


def tools_missing() -> str | None:
    """None if GNU as and objcopy are on PATH, else a sentence saying what is missing."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return (f"{' and '.join(missing)} not found on PATH (GNU binutils: "
                "apt install binutils)")
    return None


def _sections(elf: bytes) -> list[tuple[str, int, int]]:
    """(name, sh_type, sh_size) of every section of an ELF64 little-endian object."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise GuestError("as did not produce an ELF64 little-endian object")
    e_shoff, = struct.unpack_from("<Q", elf, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    heads = [struct.unpack_from("<IIQQQQ", elf, e_shoff + i * e_shentsize)
             for i in range(e_shnum)]
    strtab_off = heads[e_shstrndx][4]

    def name(off: int) -> str:
        end = elf.index(b"\0", strtab_off + off)
        return elf[strtab_off + off:end].decode()

    return [(name(h[0]), h[1], h[5]) for h in heads]


def assemble(listing: str) -> bytes:
    """The flat machine code of a GNU as listing (Intel syntax, no linker needed).

    Raises :class:`~vbook.errors.GuestError` with the assembler's message if
    the listing does not assemble, or if it would need a linker.
    """
    missing = tools_missing()
    if missing:
        raise GuestError(f"cannot assemble: {missing}")
    with tempfile.TemporaryDirectory(prefix="vbook-as-") as tmp:
        src, obj, out = (Path(tmp, n) for n in ("guest.s", "guest.o", "guest.bin"))
        src.write_text(listing if listing.endswith("\n") else listing + "\n")
        p = subprocess.run(["as", "--64", "-o", str(obj), str(src)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise GuestError(f"as failed:\n{p.stderr.replace(str(src), 'listing').strip()}")
        for name, sh_type, size in _sections(obj.read_bytes()):
            if sh_type in (_SHT_REL, _SHT_RELA):
                raise GuestError(
                    f"the listing needs a linker (relocation section {name}): write absolute "
                    "addresses as `label - _start + LOAD_ADDR`")
            if name in (".data", ".bss") and size:
                raise GuestError(f"the listing puts {size} bytes in {name}; keep everything "
                                 "in .text so the flat binary is the whole program")
        p = subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(out)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise GuestError(f"objcopy failed:\n{p.stderr.strip()}")
        return out.read_bytes()


def code_block(code: bytes, per_line: int = 16) -> str:
    """The ``CODE = bytes.fromhex(...)`` statement a guest module ships."""
    lines = [f'    "{code[i:i + per_line].hex()}"' for i in range(0, len(code), per_line)]
    return "CODE = bytes.fromhex(\n" + "\n".join(lines) + "\n)"


def module_path(name: str) -> Path:
    return Path(__file__).with_name(f"{name}.py")


def regenerate(name: str, write: bool = True) -> bool:
    """Assemble ``vbook.guests.<name>.LISTING``; True if its CODE literal was stale.

    With ``write`` the module file is rewritten in place (only its CODE block).
    """
    module = importlib.import_module(f"vbook.guests.{name}")
    code = assemble(module.LISTING)
    path = module_path(name)
    text = path.read_text()
    blocks = _CODE_BLOCK.findall(text)
    if len(blocks) != 1:
        raise GuestError(f"{path}: expected exactly one `CODE = bytes.fromhex(...)` block, "
                         f"found {len(blocks)}")
    new = code_block(code)
    if blocks[0] == new:
        return False
    if write:
        path.write_text(text.replace(blocks[0], new))
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    stale = [name for name in MODULES if regenerate(name, write=not check)]
    for name in stale:
        print(f"{module_path(name)}: CODE {'is stale' if check else 'rewritten'}")
    return 1 if (check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
