"""The C oracle: compile a few lines against the installed uapi headers, read what they print.

Each program prints ``<key> <value>`` lines (``<key> MISSING`` for a macro the
header lacks); :func:`run_c` compiles, runs and parses them. Tests skip with
the reason when gcc or a header is missing (:func:`need_c`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def need_c(*headers: str) -> None:
    """Skip unless gcc and every header exist."""
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler: gcc not on PATH (the C oracle needs it)")
    for h in headers:
        if not os.path.exists(h):
            pytest.skip(f"uapi header {h} missing (install linux-libc-dev)")


def printf_lines(exprs: dict[str, str], guard_macros: bool = False) -> list[str]:
    """C lines printing ``key value`` for each ``key: expression``; with ``guard_macros``
    a macro the header lacks prints ``key MISSING`` instead of breaking the build."""
    out = []
    for key, expr in exprs.items():
        line = f'  printf("%s %llu\\n", "{key}", (unsigned long long)({expr}));'
        out += ([f"#ifdef {expr}", line, "#else", f'  printf("{key} MISSING\\n");', "#endif"]
                if guard_macros else [line])
    return out


def program(headers: list[str], body: list[str]) -> str:
    lines = ["#include <stdio.h>", *(f"#include <{h}>" for h in headers), "int main(void) {",
             *body, "  return 0;", "}"]
    return "\n".join(lines) + "\n"


def run_c(workdir: Path, source: str) -> dict[str, int | None]:
    """Compile ``source`` with gcc -Wall in ``workdir``, run it, parse its ``key value`` lines."""
    src, exe = workdir / "oracle.c", workdir / "oracle"
    src.write_text(source)
    cc = subprocess.run(["gcc", "-Wall", "-o", str(exe), str(src)], capture_output=True, text=True)
    if cc.returncode != 0:
        pytest.fail(f"oracle did not compile:\n{cc.stderr[-3000:]}")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    values: dict[str, int | None] = {}
    for line in out.splitlines():
        key, _, value = line.rpartition(" ")
        values[key] = None if value == "MISSING" else int(value)
    return values
