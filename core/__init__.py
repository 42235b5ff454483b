"""caretaker's lowest layer: the error family (``core.errors``) and the machine's settings
(``core.settings``). Imports third-party packages only; every other layer may import it."""
