"""``python -m vbook …`` is the ``vbook`` command."""

import sys

from vbook.cli import main

sys.exit(main())
