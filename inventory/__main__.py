"""``python -m inventory check clients/*.yaml`` and ``python -m inventory schema -o FILE``."""

from __future__ import annotations

import sys

from inventory.cli import main

if __name__ == "__main__":
    sys.exit(main())
