"""``python -m history``: the history store's command (import, repack); see
:func:`history.importer.main`."""

from __future__ import annotations

from history.importer import main

if __name__ == "__main__":
    raise SystemExit(main())
