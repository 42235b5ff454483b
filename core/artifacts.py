"""Prefect artifact keys: the one rule that turns names into a key Prefect accepts.

Pure and third-party free, so that every layer that publishes artifacts (the maintenance
records in ``tasks/``, the report in ``reports/``) names them the same way.
"""

from __future__ import annotations

import re

__all__ = ["artifact_key"]


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from ``parts``."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
