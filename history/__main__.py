"""``python -m history``: the history store's command (import, repack, announce); see
:mod:`history.cli`."""

from __future__ import annotations

from history.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
