"""Re-execute chapters in place, storing outputs and widget state (what nbval checks)."""

from __future__ import annotations

import os
import sys

import nbformat
from nbclient import NotebookClient


def main(paths: list[str]) -> None:
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=True,
                       resources={"metadata": {"path": os.path.dirname(path) or "."}}).execute()
        nbformat.write(nb, path)
        print(f"executed {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
