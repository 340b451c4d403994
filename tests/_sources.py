"""Where the source-oracle tests find the Linux and QEMU trees they read.

Bare git mirrors (the search tool's ``fetch`` puts them under /work/.mirror);
each can be pointed elsewhere with an environment variable. A test that needs
a tree that is not there skips and says which.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

QEMU_9 = os.environ.get("VBOOK_QEMU_9_2_GIT", "/work/.mirror/zhouyuming+qemu-9.2.4/repo")
QEMU_2 = os.environ.get("VBOOK_QEMU_2_0_GIT", "/work/.mirror/dorapanda+qemu-2.0.0-with-fm3/repo")
QEMU_2_REV = "8b7a051"  # the import of QEMU 2.0.0 (VERSION 2.0.0), before the FM3 board
LINUX_6_1 = os.environ.get("VBOOK_LINUX_6_1_GIT", "/work/.mirror/krr-io+linux-6.1.0/repo")
LINUX_6_1_REV = "7c210bc387c3fd282b1579833bbf6b7411ef4f30"  # unmodified v6.1-rc7 import
LINUX_3_15 = os.environ.get("VBOOK_LINUX_3_15_GIT",
                            "/work/.mirror/pradeep0605+CS736_Eager_paging_linux-3.15.5/repo")
LINUX_3_15_REV = "a9bdf583"  # "Base": a 3.15.5 tree


def git_show(gitdir: str, rev: str, path: str) -> str:
    """``git show rev:path`` in a bare mirror, or skip saying what is missing."""
    if not Path(gitdir).exists():
        pytest.skip(f"no source tree at {gitdir} (set VBOOK_QEMU_*_GIT / VBOOK_LINUX_*_GIT)")
    p = subprocess.run(["git", "--git-dir", gitdir, "show", f"{rev}:{path}"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"{rev}:{path} not readable in {gitdir}: {p.stderr.strip()[:200]}")
    return p.stdout


def function_body(src: str, signature: str) -> str:
    """The C function starting at ``signature``, up to its closing brace at column 0."""
    start = src.index(signature)
    return src[start:src.index("\n}\n", start)]
